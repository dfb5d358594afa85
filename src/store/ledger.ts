/**
 * The ledger repository: batches and their per-domain outcomes. Every state change of a domain goes
 * through here, so "what happened to domain X of message Y" always has one answer.
 */
import type pg from 'pg';
import type { Db, Queryable } from './db.js';
import { withTransaction } from './db.js';

export const DOMAIN_STATUSES = ['pending', 'in_progress', 'succeeded', 'failed', 'retryable', 'unsupported', 'unknown_domain', 'awaiting_pipeline'] as const;
export type DomainStatus = (typeof DOMAIN_STATUSES)[number];

/**
 * One domain of a callback. `percent` and `process` are the vendor's progress fields as sent; absent (or
 * null here) means finished.
 */
export interface IncomingItem { domain: string; reqType: string; supported: boolean; percent?: number | null; process?: boolean | null }

/** The pipeline is done with a domain unless it says it is still working on it (process) or not at 100 %. */
export function finishedInPipeline(item: Pick<IncomingItem, 'percent' | 'process'>): boolean {
  return item.process !== true && (item.percent == null || item.percent >= 1);
}

export interface DomainRow {
  messageId: string;
  domain: string;
  reqType: string;
  status: DomainStatus;
  attempts: number;
  userIdCdn: string | null;
  detail: string | null;
  /** The vendor's progress fields from the latest callback of this messageId (null: not sent). */
  percent: number | null;
  process: boolean | null;
  claimedBy: string | null;
  updatedAt: Date;
  finishedAt: Date | null;
}

export interface BatchRow {
  messageId: string;
  createdAt: Date;
  updatedAt: Date;
  callbacks: number;
  publishPending: boolean;
  publishedAt: Date | null;
  lastRunAt: Date | null;
}

export type StatusCounts = Record<DomainStatus, number>;

const DOMAIN_COLUMNS = `message_id AS "messageId", domain, req_type AS "reqType", status, attempts,
  user_id_cdn AS "userIdCdn", detail, percent, process, claimed_by AS "claimedBy", updated_at AS "updatedAt", finished_at AS "finishedAt"`;

/** The note an awaiting_pipeline row carries, from SQL expressions for its percent and process. */
const awaitingDetail = (percent: string, process: string) => `'the pipeline reports it unfinished (percent '
  || coalesce(${percent}::text, 'not sent') || ', process ' || coalesce(${process}::text, 'not sent')
  || '); held until a callback of this messageId reports it finished'`;

/**
 * Stores one callback in the caller's transaction: audit row, batch (merged with an earlier callback of
 * the same messageId), and one row per new domain: pending, unsupported, or awaiting_pipeline when the
 * pipeline reports it unfinished. Known domains keep their status, except that an awaiting one the
 * pipeline now reports finished becomes pending; every known domain stores the progress fields reported now.
 * Returns the domains added, known, resumed (awaiting -> pending) and awaiting after this callback.
 */
export async function recordCallback(
  client: pg.PoolClient,
  input: { messageId: string; remoteAddr: string | undefined; body: unknown; items: IncomingItem[] },
): Promise<{ added: string[]; known: string[]; resumed: string[]; awaiting: string[]; updatedAt: Date }> {
  await client.query(
    'INSERT INTO callback_audit (message_id, remote_addr, item_count, body) VALUES ($1, $2, $3, $4)',
    [input.messageId, input.remoteAddr ?? null, input.items.length, JSON.stringify(input.body)],
  );
  const batch = await client.query<{ updatedAt: Date }>(
    `INSERT INTO batch (message_id) VALUES ($1)
     ON CONFLICT (message_id) DO UPDATE SET callbacks = batch.callbacks + 1, publish_pending = true, updated_at = now()
     RETURNING updated_at AS "updatedAt"`,
    [input.messageId],
  );
  const percents = input.items.map((i) => i.percent ?? null);
  const processes = input.items.map((i) => i.process ?? null);
  const finished = input.items.map(finishedInPipeline);
  // An unsupported reqType is never a deletion, finished or not: it stays unsupported whatever the progress.
  const { rows } = await client.query<{ domain: string; status: DomainStatus }>(
    `INSERT INTO batch_domain (message_id, domain, req_type, status, detail, finished_at, percent, process)
     SELECT $1, d, t, CASE WHEN NOT s THEN 'unsupported' WHEN f THEN 'pending' ELSE 'awaiting_pipeline' END,
            CASE WHEN NOT s THEN 'unsupported reqType ' || t WHEN f THEN NULL ELSE ${awaitingDetail('p', 'pr')} END,
            CASE WHEN s THEN NULL ELSE now() END, p, pr
     FROM unnest($2::text[], $3::text[], $4::boolean[], $5::real[], $6::boolean[], $7::boolean[]) AS x(d, t, s, p, pr, f)
     ON CONFLICT (message_id, domain) DO NOTHING
     RETURNING domain, status`,
    [input.messageId, input.items.map((i) => i.domain), input.items.map((i) => i.reqType), input.items.map((i) => i.supported),
      percents, processes, finished],
  );
  const added = new Set(rows.map((r) => r.domain));
  const awaiting = rows.filter((r) => r.status === 'awaiting_pipeline').map((r) => r.domain);
  const knownIdx = input.items.flatMap((item, i) => (added.has(item.domain) ? [] : [i]));
  const resumed: string[] = [];
  if (knownIdx.length > 0) {
    // Two updates of disjoint rows in one round trip. Awaiting rows are changed only here, and callbacks of
    // one messageId are serialised by the batch row locked above, so their status cannot move meanwhile.
    // A finished domain is never sent back to awaiting: once the pipeline said "done" it may be deleted.
    // Other rows are written only when their progress fields changed (a repeat callback stays cheap), and
    // keep their updated_at, which the stalled sweep reads as "last touched by a worker".
    const known = await client.query<{ domain: string; status: DomainStatus; resumed: boolean }>(
      `WITH x AS (SELECT * FROM unnest($2::text[], $3::real[], $4::boolean[], $5::boolean[]) AS x(d, p, pr, f)),
       resumed AS (
         UPDATE batch_domain b SET status = 'pending', percent = x.p, process = x.pr, detail = NULL, updated_at = now()
         FROM x WHERE b.message_id = $1 AND b.domain = x.d AND b.status = 'awaiting_pipeline' AND x.f
         RETURNING b.domain, b.status),
       progressed AS (
         UPDATE batch_domain b SET percent = x.p, process = x.pr,
                detail = CASE WHEN b.status = 'awaiting_pipeline' THEN ${awaitingDetail('x.p', 'x.pr')} ELSE b.detail END,
                updated_at = CASE WHEN b.status = 'awaiting_pipeline' THEN now() ELSE b.updated_at END
         FROM x WHERE b.message_id = $1 AND b.domain = x.d AND NOT (b.status = 'awaiting_pipeline' AND x.f)
           AND (b.status = 'awaiting_pipeline' OR (b.percent, b.process) IS DISTINCT FROM (x.p, x.pr))
         RETURNING b.domain, b.status)
       SELECT domain, status, true AS resumed FROM resumed
       UNION ALL SELECT domain, status, false FROM progressed`,
      [input.messageId, knownIdx.map((i) => input.items[i]!.domain), knownIdx.map((i) => percents[i]),
        knownIdx.map((i) => processes[i]), knownIdx.map((i) => finished[i])],
    );
    for (const r of known.rows) {
      if (r.resumed) resumed.push(r.domain);
      else if (r.status === 'awaiting_pipeline') awaiting.push(r.domain);
    }
  }
  return {
    added: [...added],
    known: input.items.map((i) => i.domain).filter((d) => !added.has(d)),
    resumed,
    awaiting,
    updatedAt: batch.rows[0]!.updatedAt,
  };
}

export async function markRelayed(db: Queryable, messageId: string): Promise<void> {
  await db.query('UPDATE batch SET relayed_at = now() WHERE message_id = $1', [messageId]);
}

/** Clears the publish flag unless a newer callback (a later updated_at) arrived meanwhile. */
export async function markPublished(db: Queryable, messageId: string, since: Date): Promise<void> {
  await db.query(
    `UPDATE batch SET publish_pending = false, published_at = now(), publish_error = NULL
     WHERE message_id = $1 AND date_trunc('milliseconds', updated_at) <= $2`, // JS dates hold milliseconds only
    [messageId, since],
  );
}

export async function markPublishFailed(db: Queryable, messageId: string, error: string): Promise<void> {
  await db.query('UPDATE batch SET publish_error = $2 WHERE message_id = $1', [messageId, error]);
}

/** Asks the relay to (re)publish a batch's job, e.g. after a replay re-opened its domains. */
export async function requestPublish(db: Queryable, messageIds: string[]): Promise<Map<string, Date>> {
  const { rows } = await db.query<{ messageId: string; updatedAt: Date }>(
    `UPDATE batch SET publish_pending = true, updated_at = now() WHERE message_id = ANY($1)
     RETURNING message_id AS "messageId", updated_at AS "updatedAt"`,
    [messageIds],
  );
  return new Map(rows.map((r) => [r.messageId, r.updatedAt]));
}

/**
 * Batches whose open domains nobody is working on: pending or retryable untouched for `idleMs` (a job lost
 * between queues, or never published), or in progress past their lease (the worker died). Awaiting_pipeline
 * domains are not open: they wait for the vendor's next callback, which brings its own job.
 */
export async function findStalled(db: Queryable, idleMs: number, limit: number): Promise<{ messageId: string; updatedAt: Date }[]> {
  const { rows } = await db.query<{ messageId: string; updatedAt: Date }>(
    `SELECT b.message_id AS "messageId", b.updated_at AS "updatedAt" FROM batch b
     WHERE NOT b.publish_pending
       AND (b.relayed_at IS NULL OR b.relayed_at < now() - make_interval(secs => $1::double precision / 1000))
       AND EXISTS (
       SELECT 1 FROM batch_domain d WHERE d.message_id = b.message_id AND (
         (d.status IN ('pending', 'retryable') AND d.updated_at < now() - make_interval(secs => $1::double precision / 1000))
         OR (d.status = 'in_progress' AND d.claimed_until < now())))
     ORDER BY b.updated_at LIMIT $2`,
    [idleMs, limit],
  );
  return rows;
}

/** A batch with domains the pipeline has reported unfinished for too long. */
export interface AwaitingBatch {
  messageId: string;
  /** How many of its domains have been awaiting longer than the threshold. */
  count: number;
  /** The first 20 of them, by name, with the progress last reported. */
  domains: { domain: string; percent: number | null; process: boolean | null }[];
  /** When the longest-waiting of them was stored. */
  since: Date;
}

/**
 * Batches with domains awaiting the pipeline for longer than `olderThanMs` that were not alarmed about in
 * the last `olderThanMs` (so a batch is named again once per period while it waits, not at every check,
 * and not again right after an operator resolved its alarm). Served by batch_domain_awaiting, which holds
 * awaiting rows only, and the alarm table's message_id index.
 */
export async function findAwaitingOverdue(db: Queryable, olderThanMs: number, limit: number): Promise<AwaitingBatch[]> {
  const { rows } = await db.query<AwaitingBatch>(
    `SELECT d.message_id AS "messageId", count(*)::int AS count, min(d.created_at) AS since,
            to_json((array_agg(json_build_object('domain', d.domain, 'percent', d.percent, 'process', d.process) ORDER BY d.domain))[1:20]) AS domains
     FROM batch_domain d
     WHERE d.status = 'awaiting_pipeline' AND d.created_at < now() - make_interval(secs => $1::double precision / 1000)
       AND NOT EXISTS (SELECT 1 FROM sys_task_process_alarm a
                       WHERE a.message_id = d.message_id AND a.alarm_type = 'AWAITING_PIPELINE'
                         AND a.last_seen_at >= now() - make_interval(secs => $1::double precision / 1000))
     GROUP BY d.message_id ORDER BY min(d.created_at) LIMIT $2`,
    [olderThanMs, limit],
  );
  return rows;
}

/** Batches whose job has not been confirmed by the broker for at least `olderThanMs`. */
export async function findUnpublished(db: Queryable, olderThanMs: number, limit: number): Promise<{ messageId: string; updatedAt: Date }[]> {
  const { rows } = await db.query<{ messageId: string; updatedAt: Date }>(
    `SELECT message_id AS "messageId", updated_at AS "updatedAt" FROM batch
     WHERE publish_pending AND updated_at < now() - make_interval(secs => $1::double precision / 1000)
     ORDER BY updated_at LIMIT $2`,
    [olderThanMs, limit],
  );
  return rows;
}

export async function getBatch(db: Queryable, messageId: string): Promise<BatchRow | undefined> {
  const { rows } = await db.query<BatchRow>(
    `SELECT message_id AS "messageId", created_at AS "createdAt", updated_at AS "updatedAt", callbacks,
            publish_pending AS "publishPending", published_at AS "publishedAt", last_run_at AS "lastRunAt"
     FROM batch WHERE message_id = $1`,
    [messageId],
  );
  return rows[0];
}

export async function listDomains(db: Queryable, messageId: string): Promise<DomainRow[]> {
  const { rows } = await db.query<DomainRow>(`SELECT ${DOMAIN_COLUMNS} FROM batch_domain WHERE message_id = $1 ORDER BY domain`, [messageId]);
  return rows;
}

export async function countByStatus(db: Queryable, messageIds: string[]): Promise<Map<string, StatusCounts>> {
  const { rows } = await db.query<{ messageId: string; status: DomainStatus; n: number }>(
    `SELECT message_id AS "messageId", status, count(*)::int AS n FROM batch_domain
     WHERE message_id = ANY($1) GROUP BY message_id, status`,
    [messageIds],
  );
  const out = new Map<string, StatusCounts>();
  for (const id of messageIds) out.set(id, emptyCounts());
  for (const r of rows) out.get(r.messageId)![r.status] = r.n;
  return out;
}

export function emptyCounts(): StatusCounts {
  return Object.fromEntries(DOMAIN_STATUSES.map((s) => [s, 0])) as StatusCounts;
}

/**
 * Claims up to `limit` open domains of a batch for one worker, right before it sends them: pending or
 * retryable ones not yet tried in this pass (`exclude`), and in-progress ones whose lease ran out (their
 * worker died). SKIP LOCKED lets two workers share a batch; the row lock guarantees that no domain is
 * held by two workers at once.
 */
export async function claimDomains(
  db: Queryable,
  messageId: string,
  opts: { workerId: string; leaseMs: number; limit: number; exclude: string[] },
): Promise<DomainRow[]> {
  const { rows } = await db.query<DomainRow>(
    `UPDATE batch_domain SET status = 'in_progress', claimed_by = $2,
            claimed_until = now() + make_interval(secs => $3::double precision / 1000),
            attempts = attempts + 1, updated_at = now()
     WHERE (message_id, domain) IN (
       SELECT message_id, domain FROM batch_domain
       WHERE message_id = $1 AND NOT (domain = ANY($5))
         AND (status IN ('pending', 'retryable') OR (status = 'in_progress' AND claimed_until < now()))
       ORDER BY domain LIMIT $4 FOR UPDATE SKIP LOCKED)
     RETURNING ${DOMAIN_COLUMNS}`,
    [messageId, opts.workerId, opts.leaseMs, opts.limit, opts.exclude],
  );
  // A statement of its own, not one with the claim: ingest locks the batch row and then domain rows, so
  // holding domain rows while waiting for the batch row would deadlock with a merging callback.
  if (rows.length > 0) await db.query('UPDATE batch SET last_run_at = now() WHERE message_id = $1', [messageId]);
  return rows;
}

/**
 * Extends a claimer's lease right before it sends (and records each domain's user_id_cdn for operators),
 * returning the domains it still holds: a lease that lapsed while the worker waited (e.g. for a token) may
 * already belong to another worker.
 */
export async function renewClaims(
  db: Queryable, messageId: string, claimer: string, chunk: { domain: string; userIdCdn: string }[], leaseMs: number,
): Promise<string[]> {
  const { rows } = await db.query<{ domain: string }>(
    `UPDATE batch_domain b SET claimed_until = now() + make_interval(secs => $5::double precision / 1000), user_id_cdn = x.u
     FROM unnest($2::text[], $3::text[]) AS x(d, u)
     WHERE b.message_id = $1 AND b.domain = x.d AND b.status = 'in_progress' AND b.claimed_by = $4
     RETURNING b.domain`,
    [messageId, chunk.map((c) => c.domain), chunk.map((c) => c.userIdCdn), claimer, leaseMs],
  );
  return rows.map((r) => r.domain);
}

/** Moves claimed domains to a final or retryable status; only rows still held by this claimer change. */
export async function settleDomains(
  db: Queryable,
  messageId: string,
  workerId: string,
  domains: string[],
  status: Exclude<DomainStatus, 'in_progress' | 'succeeded'>,
  detail: string | null,
): Promise<number> {
  if (domains.length === 0) return 0;
  const finished = status === 'failed' || status === 'unknown_domain' || status === 'unsupported';
  const { rowCount } = await db.query(
    `UPDATE batch_domain SET status = $4, detail = $5, claimed_by = NULL, claimed_until = NULL, updated_at = now(),
            finished_at = CASE WHEN $6 THEN now() ELSE NULL END
     WHERE message_id = $1 AND domain = ANY($3) AND status = 'in_progress' AND claimed_by = $2`,
    [messageId, workerId, domains, status, detail, finished],
  );
  return rowCount ?? 0;
}

/** Pending and retryable domains become failed (retries exhausted or job parked); the reason is kept. */
export async function failOpenDomains(db: Queryable, messageId: string, reason: string, minAttempts = 0): Promise<void> {
  await db.query(
    `UPDATE batch_domain SET status = 'failed', detail = $2 || coalesce(' (last error: ' || detail || ')', ''),
            finished_at = now(), updated_at = now()
     WHERE message_id = $1 AND status IN ('pending', 'retryable') AND attempts >= $3`,
    [messageId, reason, minAttempts],
  );
}

/** The domains of a batch that ended badly, with why. */
export async function listFailures(db: Queryable, messageId: string): Promise<{ domain: string; status: DomainStatus; detail: string | null }[]> {
  const { rows } = await db.query<{ domain: string; status: DomainStatus; detail: string | null }>(
    `SELECT domain, status, detail FROM batch_domain WHERE message_id = $1 AND status IN ('failed', 'unknown_domain')
     ORDER BY domain`, [messageId]);
  return rows;
}

/**
 * Success: the outcome rows and the inventory rows change together, or not at all. A confirmed deletion
 * is recorded even if this worker's claim has lapsed meanwhile: the platform's answer is the truth.
 */
export async function settleSucceeded(db: Db, messageId: string, domains: string[], detail: string | null = null): Promise<void> {
  if (domains.length === 0) return;
  await withTransaction(db, async (client) => {
    await client.query(
      `UPDATE batch_domain SET status = 'succeeded', detail = $3, claimed_by = NULL, claimed_until = NULL,
              updated_at = now(), finished_at = now()
       WHERE message_id = $1 AND domain = ANY($2) AND status <> 'succeeded'`,
      [messageId, domains, detail],
    );
    await client.query(
      `UPDATE cdn_domain SET status = 'deleted', deleted_at = now(), deleted_by_message_id = $1
       WHERE domain = ANY($2) AND status = 'active'`,
      [messageId, domains],
    );
  });
}

/**
 * Re-opens domains for a replay: failed, retryable and stuck ones (in progress past their lease, or
 * pending); with `all`, also unknown_domain (e.g. after an inventory import). Succeeded domains are never
 * re-opened, and neither are unsupported ones: the vendor did not ask for a deletion (e.g. SELF_DOMAIN_ADD).
 */
export async function reopenForReplay(db: Queryable, messageIds: string[], all: boolean, dryRun: boolean): Promise<DomainRow[]> {
  const statuses = all ? ['failed', 'retryable', 'unknown_domain'] : ['failed', 'retryable'];
  const where = `message_id = ANY($1) AND (status = ANY($2) OR status = 'pending'
                 OR (status = 'in_progress' AND claimed_until < now()))`;
  if (dryRun) {
    const { rows } = await db.query<DomainRow>(`SELECT ${DOMAIN_COLUMNS} FROM batch_domain WHERE ${where} ORDER BY message_id, domain`, [messageIds, statuses]);
    return rows;
  }
  const { rows } = await db.query<DomainRow>(
    `UPDATE batch_domain SET status = 'pending', claimed_by = NULL, claimed_until = NULL, finished_at = NULL, updated_at = now()
     WHERE ${where} RETURNING ${DOMAIN_COLUMNS}`,
    [messageIds, statuses],
  );
  return rows.sort((a, b) => a.messageId.localeCompare(b.messageId) || a.domain.localeCompare(b.domain));
}

export type DomainHistoryRow = DomainRow & { createdAt: Date; batchCreatedAt: Date; callbacks: number };

/** One row per batch that carried the domain, newest first (served by batch_domain_domain, never a scan). */
export async function batchesOfDomain(db: Queryable, domain: string, limit = 200): Promise<DomainHistoryRow[]> {
  const { rows } = await db.query<DomainHistoryRow>(
    `SELECT x.*, b.created_at AS "batchCreatedAt", b.callbacks
     FROM (SELECT ${DOMAIN_COLUMNS}, created_at AS "createdAt" FROM batch_domain
           WHERE domain = $1 ORDER BY created_at DESC LIMIT $2) x
     JOIN batch b ON b.message_id = x."messageId"
     ORDER BY x."createdAt" DESC`,
    [domain, limit],
  );
  return rows;
}

export async function existingBatches(db: Queryable, messageIds: string[]): Promise<string[]> {
  const { rows } = await db.query<{ messageId: string }>('SELECT message_id AS "messageId" FROM batch WHERE message_id = ANY($1)', [messageIds]);
  return rows.map((r) => r.messageId);
}
