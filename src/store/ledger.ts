/**
 * The ledger repository: batches and their per-domain outcomes. Every state change of a domain goes
 * through here, so "what happened to domain X of message Y" always has one answer.
 */
import type { JobTrigger } from '../messaging/broker.js';
import { SELF_RESOLVING_TYPES } from './alarm-lifecycle.js';
import { alarmTag } from './alarms.js';
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

/** One callback to store: the parsed items, and the body as received for the audit row. */
export interface CallbackRecord { messageId: string; remoteAddr: string | undefined; body: unknown; items: IncomingItem[] }

/** What storing a callback did: domains added and known, resumed (awaiting -> pending), and awaiting after it. */
export interface RecordedCallback { added: string[]; known: string[]; resumed: string[]; awaiting: string[]; updatedAt: Date }

// Whether a proposed row (EXCLUDED) reports its domain finished: its status was chosen from the callback's own
// flag (pending = finished, awaiting_pipeline = not); an unsupported item's is read back from its progress.
const PROPOSED_FINISHED = `(EXCLUDED.status = 'pending' OR (EXCLUDED.status = 'unsupported'
  AND EXCLUDED.process IS NOT TRUE AND (EXCLUDED.percent IS NULL OR EXCLUDED.percent >= 1)))`;

/*
 * The ingest statement: one or more callbacks (distinct messageIds) stored by ONE statement, sent as one round
 * trip in autocommit. One statement is its own transaction: all of it is stored or none, committed (with
 * synchronous_commit) before the reply, with no BEGIN/COMMIT round trips. Every part sees the snapshot taken
 * when the statement starts:
 * - audit: one callback_audit row per callback.
 * - b: the batch rows, upserted in message_id order (the order replays and the publish-flag flusher lock them
 *   in); a repeat callback counts on the row, and one for a messageId being stored right now waits for it.
 *   `fresh`: this statement inserted it, so no domain row of it can exist yet.
 * - x: the items, each with the status its row has in the snapshot (`was`, NULL: no row yet), looked up only
 *   for a batch that is not fresh (the common first callback pays no lookup).
 * - added: items with no row are inserted (pending, unsupported, or awaiting_pipeline when unfinished). A
 *   concurrent callback of the same messageId may have inserted the row after our snapshot: ON CONFLICT sees
 *   it anyway (READ COMMITTED), so no domain is ever lost; an awaiting one is released (or given the new
 *   progress) there, a finished one keeps the progress that callback stored (both were reported at once).
 * - resumed / progressed: rows the snapshot holds, as the multi-statement version did: an awaiting domain
 *   reported finished becomes pending; others take the progress fields only when they changed, so a repeat
 *   callback locks no domain row. A finished domain is never sent back to awaiting. Non-awaiting rows keep
 *   their updated_at, which the stalled sweep reads as "last touched by a worker".
 * - placed: which items this statement inserted (all of a fresh batch's).
 * - alarm / notified: one UNSUPPORTED_REQ_TYPE alarm per callback that added unsupported items, and its
 *   outbox row: the same upsert as raiseAlarm (src/store/alarms.ts), in the same transaction as ever.
 * Every domain-row write joins b, so it runs once its batch row is locked: callbacks of one messageId are
 * serialised by that lock, and an ingest takes its locks batch first, in message_id order, never the other
 * way round (two ingests cannot deadlock).
 */
const RECORD_CALLBACKS = `
WITH cb AS MATERIALIZED (
  SELECT c.ord, c.message_id, c.remote_addr, c.item_count, c.tag, j.body
  FROM unnest($1::text[], $2::text[], $3::int[], $4::text[]) WITH ORDINALITY AS c(message_id, remote_addr, item_count, tag, ord)
  JOIN jsonb_array_elements($5::jsonb) WITH ORDINALITY AS j(body, n) ON j.n = c.ord),
audit AS (
  INSERT INTO callback_audit (message_id, remote_addr, item_count, body)
  SELECT message_id, remote_addr, item_count, body FROM cb ORDER BY ord),
b AS (
  INSERT INTO batch (message_id) SELECT message_id FROM cb ORDER BY message_id
  ON CONFLICT (message_id) DO UPDATE SET callbacks = batch.callbacks + 1, publish_pending = true,
    publish_trigger = 'first_run', updated_at = now()
  RETURNING message_id, updated_at, (xmax = 0) AS fresh),
x AS MATERIALIZED (
  SELECT b.message_id, b.fresh, i.d, i.t, i.s, i.p, i.pr, i.f, i.j, i.ord,
         CASE WHEN NOT b.fresh THEN (SELECT o.status FROM batch_domain o WHERE o.message_id = b.message_id AND o.domain = i.d) END AS was
  FROM unnest($6::int[], $7::text[], $8::text[], $9::boolean[], $10::real[], $11::boolean[], $12::boolean[], $13::text[])
       WITH ORDINALITY AS i(c, d, t, s, p, pr, f, j, ord)
  JOIN cb ON cb.ord = i.c JOIN b ON b.message_id = cb.message_id),
added AS (
  INSERT INTO batch_domain AS bd (message_id, domain, req_type, status, detail, finished_at, percent, process)
  SELECT x.message_id, x.d, x.t, CASE WHEN NOT x.s THEN 'unsupported' WHEN x.f THEN 'pending' ELSE 'awaiting_pipeline' END,
         CASE WHEN NOT x.s THEN 'unsupported reqType ' || x.t WHEN x.f THEN NULL ELSE ${awaitingDetail('x.p', 'x.pr')} END,
         CASE WHEN x.s THEN NULL ELSE now() END, x.p, x.pr
  FROM b JOIN x ON x.message_id = b.message_id
  WHERE x.was IS NULL
  ORDER BY x.message_id, x.d
  ON CONFLICT (message_id, domain) DO UPDATE SET
    status = CASE WHEN ${PROPOSED_FINISHED} THEN 'pending' ELSE bd.status END,
    detail = CASE WHEN ${PROPOSED_FINISHED} THEN NULL ELSE ${awaitingDetail('EXCLUDED.percent', 'EXCLUDED.process')} END,
    percent = EXCLUDED.percent, process = EXCLUDED.process, updated_at = now()
  WHERE bd.status = 'awaiting_pipeline'
  RETURNING bd.message_id, bd.domain, bd.status, (bd.xmax = 0) AS inserted),
resumed AS (
  UPDATE batch_domain bd SET status = 'pending', percent = x.p, process = x.pr, detail = NULL, updated_at = now()
  FROM b JOIN x ON x.message_id = b.message_id
  WHERE x.was = 'awaiting_pipeline' AND x.f AND bd.message_id = x.message_id AND bd.domain = x.d
    AND bd.status = 'awaiting_pipeline'
  RETURNING bd.message_id, bd.domain),
progressed AS (
  UPDATE batch_domain bd SET percent = x.p, process = x.pr,
         detail = CASE WHEN bd.status = 'awaiting_pipeline' THEN ${awaitingDetail('x.p', 'x.pr')} ELSE bd.detail END,
         updated_at = CASE WHEN bd.status = 'awaiting_pipeline' THEN now() ELSE bd.updated_at END
  FROM b JOIN x ON x.message_id = b.message_id
  WHERE x.was IS NOT NULL AND bd.message_id = x.message_id AND bd.domain = x.d
    AND NOT (bd.status = 'awaiting_pipeline' AND x.f)
    AND (bd.status = 'awaiting_pipeline' OR (bd.percent, bd.process) IS DISTINCT FROM (x.p, x.pr))
  RETURNING bd.message_id, bd.domain, bd.status),
-- A sublink in the select list is a hashed subplan (built only if a batch is not fresh), never a nested loop.
placed AS MATERIALIZED (
  SELECT x.message_id, x.d, x.t, x.s, x.j, x.ord,
         x.fresh OR (x.message_id, x.d) IN (SELECT message_id, domain FROM added WHERE inserted) AS new
  FROM x),
alarm AS (
  INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, details)
  SELECT cb.tag, cb.message_id, 'UNSUPPORTED_REQ_TYPE',
         count(*) || ' item(s) with an unsupported reqType were recorded, not processed: '
           || string_agg(x.d || ' (' || x.t || ')', ', ' ORDER BY x.ord),
         jsonb_build_object('items', jsonb_agg(x.j::jsonb ORDER BY x.ord))
  FROM placed x JOIN cb ON cb.message_id = x.message_id
  WHERE x.new AND NOT x.s
  GROUP BY cb.message_id, cb.tag
  ORDER BY cb.message_id
  ON CONFLICT (coalesce(message_id, ''), alarm_type) WHERE state <> 'resolved'
  DO UPDATE SET occurrences = sys_task_process_alarm.occurrences + 1, last_seen_at = now(),
                content = EXCLUDED.content, details = EXCLUDED.details
  RETURNING id, alarm_type, (xmax = 0) AS inserted),
notified AS (
  INSERT INTO alarm_notification (alarm_id, event, alarm_type) SELECT id, 'opened', alarm_type FROM alarm WHERE inserted)
SELECT b.message_id AS "messageId", b.updated_at AS "updatedAt", coalesce(k.domains, '{}') AS known,
       coalesce(r.domains, '{}') AS resumed, coalesce(w.domains, '{}') AS awaiting
FROM b
LEFT JOIN (SELECT message_id, array_agg(d ORDER BY ord) AS domains FROM placed WHERE NOT new GROUP BY message_id) k
  ON k.message_id = b.message_id
LEFT JOIN (SELECT message_id, array_agg(domain) AS domains
           FROM (SELECT message_id, domain FROM added WHERE NOT inserted AND status = 'pending'
                 UNION ALL SELECT message_id, domain FROM resumed) u
           GROUP BY message_id) r ON r.message_id = b.message_id
LEFT JOIN (SELECT message_id, array_agg(domain) AS domains
           FROM (SELECT message_id, domain FROM added WHERE status = 'awaiting_pipeline'
                 UNION ALL SELECT message_id, domain FROM progressed WHERE status = 'awaiting_pipeline') u
           GROUP BY message_id) w ON w.message_id = b.message_id`;

/**
 * Stores callbacks of distinct messageIds in one statement, one round trip, its own transaction (see
 * RECORD_CALLBACKS): per callback its audit row, its batch (merged with earlier callbacks of the same messageId),
 * one row per new domain (pending, unsupported, or awaiting_pipeline when the pipeline reports it unfinished)
 * and, when it added unsupported items, an UNSUPPORTED_REQ_TYPE alarm with its notification. Known domains keep
 * their status, except that an awaiting one the pipeline now reports finished becomes pending; every known
 * domain stores the progress fields reported now. A domain listed twice in one callback counts once (the
 * first). Results are in the order of `callbacks`. Pass a pool: inside a caller's transaction it still works,
 * but the point is to need none.
 */
export async function recordCallbacks(db: Queryable, callbacks: CallbackRecord[]): Promise<RecordedCallback[]> {
  if (callbacks.length === 0) return [];
  const ids = new Set(callbacks.map((cb) => cb.messageId));
  // ON CONFLICT may not touch one row twice in a statement: one callback per messageId (IngestBatcher sees to it).
  if (ids.size < callbacks.length) throw new Error('recordCallbacks: a messageId appears twice; store such callbacks one after the other');
  const col = { c: [] as number[], d: [] as string[], t: [] as string[], s: [] as boolean[], p: [] as (number | null)[],
    pr: [] as (boolean | null)[], f: [] as boolean[], j: [] as (string | null)[] };
  const itemsOf = callbacks.map((cb, i) => {
    const seen = new Set<string>();
    const items = cb.items.filter((item) => !seen.has(item.domain) && seen.add(item.domain));
    for (const item of items) {
      col.c.push(i + 1); col.d.push(item.domain); col.t.push(item.reqType); col.s.push(item.supported);
      col.p.push(item.percent ?? null); col.pr.push(item.process ?? null); col.f.push(finishedInPipeline(item));
      col.j.push(item.supported ? null : JSON.stringify(item));
    }
    return items;
  });
  const { rows } = await db.query<{ messageId: string; updatedAt: Date; known: string[]; resumed: string[]; awaiting: string[] }>({
    // Named: each pooled connection parses and plans it once, then only binds.
    name: 'record-callbacks',
    text: RECORD_CALLBACKS,
    values: [
      callbacks.map((cb) => cb.messageId), callbacks.map((cb) => cb.remoteAddr ?? null), callbacks.map((cb) => cb.items.length),
      callbacks.map((cb) => (cb.items.some((i) => !i.supported) ? alarmTag(cb.messageId) : null)),
      `[${callbacks.map((cb) => JSON.stringify(cb.body ?? null)).join(',')}]`,
      col.c, col.d, col.t, col.s, col.p, col.pr, col.f, col.j,
    ],
  });
  const byId = new Map(rows.map((r) => [r.messageId, r]));
  return callbacks.map((cb, i) => {
    const r = byId.get(cb.messageId);
    if (!r) throw new Error(`recordCallbacks: no batch row came back for ${cb.messageId}`);
    const known = new Set(r.known);
    return { added: itemsOf[i]!.map((item) => item.domain).filter((d) => !known.has(d)), known: r.known, resumed: r.resumed, awaiting: r.awaiting, updatedAt: r.updatedAt };
  });
}

/** Stores one callback: recordCallbacks for one. */
export async function recordCallback(db: Queryable, input: CallbackRecord): Promise<RecordedCallback> {
  return (await recordCallbacks(db, [input]))[0]!;
}

export async function markRelayed(db: Queryable, messageId: string): Promise<void> {
  await db.query('UPDATE batch SET relayed_at = now() WHERE message_id = $1', [messageId]);
}

/**
 * Clears the publish flags of batches whose jobs the broker confirmed, in one statement for all of them
 * (PublishFlagWriter calls it every PUBLISH_FLAG_FLUSH_MS), each unless a newer callback (a later updated_at
 * than the version its job was published for) arrived meanwhile. The rows are locked in message_id order,
 * the order ingest takes them in, so a bulk clear never deadlocks with a merging callback.
 */
export async function markPublished(db: Queryable, confirmed: { messageId: string; since: Date }[]): Promise<void> {
  if (confirmed.length === 0) return;
  await db.query(
    `WITH locked AS (
       SELECT b.message_id, x.since FROM batch b JOIN unnest($1::text[], $2::timestamptz[]) AS x(message_id, since) USING (message_id)
       ORDER BY b.message_id FOR UPDATE OF b)
     UPDATE batch b SET publish_pending = false, published_at = now(), publish_error = NULL
     FROM locked WHERE b.message_id = locked.message_id
       AND date_trunc('milliseconds', b.updated_at) <= locked.since`, // JS dates hold milliseconds only
    [confirmed.map((c) => c.messageId), confirmed.map((c) => c.since)],
  );
}

/**
 * Records why batches' jobs were not published, in one statement, and leaves (or sets again) their flags,
 * so the relay publishes them: a job the broker never confirmed is always the relay's to publish.
 */
export async function markPublishFailed(db: Queryable, failed: { messageId: string; error: string }[]): Promise<void> {
  if (failed.length === 0) return;
  await db.query(
    `WITH locked AS (
       SELECT b.message_id, x.error FROM batch b JOIN unnest($1::text[], $2::text[]) AS x(message_id, error) USING (message_id)
       ORDER BY b.message_id FOR UPDATE OF b)
     UPDATE batch b SET publish_pending = true, publish_error = locked.error
     FROM locked WHERE b.message_id = locked.message_id`,
    [failed.map((f) => f.messageId), failed.map((f) => f.error)],
  );
}

/**
 * Asks the relay to (re)publish a batch's job, e.g. after a replay re-opened its domains; `trigger` is what
 * the job says caused it, should the relay be the one to publish it.
 */
export async function requestPublish(db: Queryable, messageIds: string[], trigger: JobTrigger): Promise<Map<string, Date>> {
  const { rows } = await db.query<{ messageId: string; updatedAt: Date }>(
    `UPDATE batch SET publish_pending = true, publish_trigger = $2, updated_at = now() WHERE message_id = ANY($1)
     RETURNING message_id AS "messageId", updated_at AS "updatedAt"`,
    [messageIds, trigger],
  );
  return new Map(rows.map((r) => [r.messageId, r.updatedAt]));
}

/**
 * Batches whose open domains nobody is working on: pending or retryable untouched for `idleMs` (a job lost
 * between queues, or never published), or in progress past their lease (the worker died). Awaiting_pipeline
 * domains are not open: they wait for the vendor's next callback, which brings its own job.
 * Driven by the stalled rows alone (batch_domain_idle, batch_domain_leased, migration 010), then one
 * primary-key probe of batch each: the relay runs this every interval, so it must not grow with history.
 * `= ANY (ARRAY(…))`, not `IN (…)`: the planner guesses how many rows are stalled from the whole table's
 * updated_at (mostly old, finished rows), and with a large history an IN became a hash join over a Seq Scan
 * of batch; an array is always probed through batch_pkey.
 * UNION ALL, not UNION: the same guess (75,000 rows at 2 million, where a handful are stalled) sized the
 * UNION's hash table, 1.5 MB built per sweep. The array holds an id per stalled row; the btree probe sorts
 * and de-duplicates its keys, so each batch is still read once.
 */
export async function findStalled(db: Queryable, idleMs: number, limit: number): Promise<{ messageId: string; updatedAt: Date }[]> {
  const { rows } = await db.query<{ messageId: string; updatedAt: Date }>(
    `SELECT b.message_id AS "messageId", b.updated_at AS "updatedAt" FROM batch b
     WHERE b.message_id = ANY (ARRAY(
         SELECT message_id FROM batch_domain
         WHERE status IN ('pending', 'retryable') AND updated_at < now() - make_interval(secs => $1::double precision / 1000)
         UNION ALL
         SELECT message_id FROM batch_domain WHERE status = 'in_progress' AND claimed_until < now()))
       AND NOT b.publish_pending
       AND (b.relayed_at IS NULL OR b.relayed_at < now() - make_interval(secs => $1::double precision / 1000))
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

/** Batches whose job has not been confirmed by the broker for at least `olderThanMs`, with what caused the publish. */
export async function findUnpublished(
  db: Queryable, olderThanMs: number, limit: number,
): Promise<{ messageId: string; updatedAt: Date; trigger: JobTrigger }[]> {
  const { rows } = await db.query<{ messageId: string; updatedAt: Date; trigger: JobTrigger }>(
    `SELECT message_id AS "messageId", updated_at AS "updatedAt", publish_trigger AS trigger FROM batch
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

/** A batch after a pass: its counts, and whether it has an open alarm that resolves itself once it succeeds. */
export interface BatchProgress { counts: StatusCounts; selfResolvingAlarm: boolean }

/**
 * countByStatus, plus whether each batch has an alarm resolveRecoveredBatchAlarms would resolve (so a batch
 * that never had one costs no UPDATE), for many batches in one round trip.
 */
export async function batchProgress(db: Queryable, messageIds: readonly string[]): Promise<Map<string, BatchProgress>> {
  const { rows } = await db.query<{ messageId: string; counts: Partial<StatusCounts>; selfResolvingAlarm: boolean }>(
    `SELECT m AS "messageId",
            (SELECT coalesce(json_object_agg(status, n), '{}') FROM (SELECT status, count(*)::int AS n FROM batch_domain WHERE message_id = m GROUP BY status) s) AS counts,
            EXISTS (SELECT 1 FROM sys_task_process_alarm a
                    WHERE coalesce(a.message_id, '') = m AND a.alarm_type = ANY($2) AND a.state <> 'resolved') AS "selfResolvingAlarm"
     FROM unnest($1::text[]) m`,
    [messageIds, SELF_RESOLVING_TYPES],
  );
  return new Map(rows.map((r) => [r.messageId, { counts: { ...emptyCounts(), ...r.counts }, selfResolvingAlarm: r.selfResolvingAlarm }]));
}

export function emptyCounts(): StatusCounts {
  return Object.fromEntries(DOMAIN_STATUSES.map((s) => [s, 0])) as StatusCounts;
}

/**
 * Claims up to `limit` open domains of a batch for one worker, right before it sends them: pending or
 * retryable ones not yet tried in this pass (`exclude`), and in-progress ones whose lease ran out (their
 * worker died). SKIP LOCKED lets two workers share a batch; the row lock guarantees that no domain is
 * held by two workers at once. (claimAcross for one batch.)
 */
export async function claimDomains(
  db: Queryable,
  messageId: string,
  opts: { workerId: string; leaseMs: number; limit: number; exclude: string[] },
): Promise<DomainRow[]> {
  return claimAcross(db, [{ messageId, claimToken: opts.workerId, exclude: opts.exclude }], opts);
}

/** One batch pass asking for domains in a claim: its claim token and the domains it has already tried. */
export interface ClaimRequest { messageId: string; claimToken: string; exclude: string[] }

/**
 * Claims up to `limit` open domains across several batches in one statement, for the per-process call
 * packer (src/pipeline/call-packer.ts): each claimed row gets the claim token of its batch's pass. Batches
 * are served in the order given (all the claimable domains of the first, then of the second, …), so a row
 * from request i means every request before i has nothing more to claim now; `request` in each row is that
 * index. The same rules as claimDomains: open or lease-expired rows only, `exclude` per batch, row locks
 * with SKIP LOCKED, and a lease. At most one request per messageId (two would race for the same rows).
 */
export async function claimAcross(
  db: Queryable, requests: ClaimRequest[], opts: { leaseMs: number; limit: number },
): Promise<(DomainRow & { request: number })[]> {
  if (requests.length === 0 || opts.limit <= 0) return [];
  // One batch at a time (LATERAL: a nested loop, each batch read by its message_id), and status tests written
  // `(d.status || '')` so that they cannot match the stalled sweep's partial indexes (batch_domain_idle,
  // batch_domain_leased). When the statistics lagged a backlog (a burst of 1-domain callbacks), the planner
  // read one of those indexes whole for every batch asked for, or hashed every open domain of the table: 2 to
  // 7 ms a claim at 10,000 pending domains, growing with the backlog.
  //  - No ORDER BY outside: the nested loop yields the batches in request order (r keeps the array's order),
  //    each in domain order, and the LIMIT stops it as soon as the claim is full. A sort there would run every
  //    batch's subquery first, locking rows of batches the claim then drops, which another worker's claim on
  //    those batches would skip and read as "nothing to claim". Unkept rows locked are now at most the rest of
  //    the last batch read, until the statement ends.
  //  - NOT IN, not NOT EXISTS: the tried list (x) becomes one hashed subplan; NOT EXISTS was planned as a
  //    rescan of x for every candidate row, quadratic for a large batch half tried. Neither side is ever NULL.
  const excluded = requests.flatMap((r) => r.exclude.map((domain) => [r.messageId, domain] as const));
  const { rows } = await db.query<DomainRow & { request: number }>(
    `WITH r AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(message_id, claim_token, ord)),
          x AS (SELECT * FROM unnest($3::text[], $4::text[]) AS x(message_id, domain)),
          picked AS (
            SELECT d.message_id, d.domain, r.claim_token, r.ord FROM r CROSS JOIN LATERAL (
              SELECT d.message_id, d.domain FROM batch_domain d
              WHERE d.message_id = r.message_id AND d.status <> 'succeeded'
                AND ((d.status || '') IN ('pending', 'retryable') OR ((d.status || '') = 'in_progress' AND d.claimed_until < now()))
                AND (d.message_id, d.domain) NOT IN (SELECT x.message_id, x.domain FROM x)
              ORDER BY d.domain LIMIT $6
              FOR UPDATE SKIP LOCKED) d
            LIMIT $6)
     UPDATE batch_domain b SET status = 'in_progress', claimed_by = p.claim_token,
            claimed_until = now() + make_interval(secs => $5::double precision / 1000),
            attempts = b.attempts + 1, updated_at = now()
     FROM picked p WHERE b.message_id = p.message_id AND b.domain = p.domain
     RETURNING b.message_id AS "messageId", b.domain, b.req_type AS "reqType", b.status, b.attempts, b.user_id_cdn AS "userIdCdn",
               b.detail, b.percent, b.process, b.claimed_by AS "claimedBy", b.updated_at AS "updatedAt", b.finished_at AS "finishedAt",
               (p.ord - 1)::int AS request`,
    [requests.map((r) => r.messageId), requests.map((r) => r.claimToken), excluded.map((e) => e[0]), excluded.map((e) => e[1]),
      opts.leaseMs, opts.limit],
  );
  // A statement of its own, not one with the claim: ingest locks the batch row and then domain rows, so
  // holding domain rows while waiting for the batch row would deadlock with a merging callback. Batch rows
  // are locked in messageId order, so two workers touching overlapping sets cannot deadlock each other.
  const touched = [...new Set(rows.map((r) => r.messageId))];
  if (touched.length > 0) {
    await db.query(
      `UPDATE batch SET last_run_at = now()
       WHERE message_id IN (SELECT message_id FROM batch WHERE message_id = ANY($1) ORDER BY message_id FOR UPDATE)`,
      [touched],
    );
  }
  return rows.sort((a, b) => a.request - b.request || (a.domain < b.domain ? -1 : a.domain > b.domain ? 1 : 0));
}

/**
 * Open domains of each batch that a claim could take now (pending, retryable, or in progress past their
 * lease); a batch that does not exist is missing from the map. How much work a job brings the packer (which
 * asks for no further job until it knows), read for all the jobs that arrived together in one round trip.
 */
export async function countClaimable(db: Queryable, messageIds: readonly string[]): Promise<Map<string, number>> {
  const { rows } = await db.query<{ messageId: string; n: number }>(
    `SELECT b.message_id AS "messageId",
            (SELECT count(*)::int FROM batch_domain d
             WHERE d.message_id = b.message_id AND (d.status IN ('pending', 'retryable') OR (d.status = 'in_progress' AND d.claimed_until < now()))) AS n
     FROM batch b WHERE b.message_id = ANY($1)`,
    [messageIds],
  );
  return new Map(rows.map((r) => [r.messageId, r.n]));
}

/** A claimed domain about to be sent: its batch, the claim token of the pass holding it, and its user_id_cdn. */
export interface HeldDomain { messageId: string; claimToken: string; domain: string; userIdCdn: string }

/**
 * Extends the lease of claimed domains right before they are sent (and records each one's user_id_cdn for
 * operators), in one statement whatever the batches, returning those still held by the claim token they
 * were claimed with: a lease that lapsed while the chunk waited (for a call slot, for a token) may already
 * belong to another worker, and only what is still held may be sent. A normal, flushed commit: durability
 * is never traded for a figure (synchronous_commit stays on).
 */
export async function renewClaims(db: Queryable, held: HeldDomain[], leaseMs: number): Promise<{ messageId: string; domain: string }[]> {
  if (held.length === 0) return [];
  // By primary key: `(b.status || '')` keeps the planner off batch_domain_leased (see claimAcross), which it
  // read whole, every in-progress row of the table, when its statistics lagged a backlog.
  const { rows } = await db.query<{ messageId: string; domain: string }>(
    `UPDATE batch_domain b SET claimed_until = now() + make_interval(secs => $5::double precision / 1000), user_id_cdn = x.u
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(m, t, d, u)
     WHERE b.message_id = x.m AND b.domain = x.d AND (b.status || '') = 'in_progress' AND b.claimed_by = x.t
     RETURNING b.message_id AS "messageId", b.domain`,
    [held.map((h) => h.messageId), held.map((h) => h.claimToken), held.map((h) => h.domain), held.map((h) => h.userIdCdn), leaseMs],
  );
  return rows;
}

/**
 * Hands claimed domains that were never sent back to pending (shutdown, or their pass stopped), as if never
 * claimed: the attempt the claim counted is taken back. Only rows still held by `claimToken` change.
 */
export async function releaseClaims(db: Queryable, messageId: string, claimToken: string, domains: string[]): Promise<number> {
  if (domains.length === 0) return 0;
  const { rowCount } = await db.query(
    `UPDATE batch_domain SET status = 'pending', claimed_by = NULL, claimed_until = NULL, attempts = greatest(attempts - 1, 0),
            updated_at = now()
     WHERE message_id = $1 AND domain = ANY($3) AND status = 'in_progress' AND claimed_by = $2`,
    [messageId, claimToken, domains],
  );
  return rowCount ?? 0;
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

/** One security-platform call, as its attempt rows (domain_attempt, src/store/attempts.ts) record it. */
export interface SentCall {
  sentAt: Date;
  durationMs: number;
  instanceId: string;
  tokenGeneration: number;
  /** null when nothing was answered (timeout, network failure, cut at shutdown). */
  httpStatus: number | null;
}

/** What a call's answer means for one domain it carried; `reason` goes to the attempt, `detail` to the domain. */
export interface AnsweredDomain { domain: string; status: 'succeeded' | 'failed' | 'retryable'; detail: string | null; reason: string | null }

/**
 * One pass's share of a call: its batch, the claim token it holds those domains with, what caused its job
 * (the attempts' trigger) and what the call answered for them.
 */
export interface CallShare { messageId: string; claimToken: string; trigger: JobTrigger; answered: AnsweredDomain[] }

/*
 * The ledger half of settleCall, one statement for every share of a call:
 * - locked: the rows the answer changes, locked in (message_id, domain) order whatever the order of the
 *   input or the plan, so two settles of overlapping rows (a lapsed claim taken over) never deadlock. A
 *   success is taken whatever the claim (the platform's answer is the truth); any other answer only where
 *   the row is still in progress under that share's own claim token (rechecked after a wait for the lock).
 * - settled: those rows take the answer.
 * - the insert: one attempt row per answered domain, with its share's trigger; `lease_lost` where a
 *   non-success could not be applied because the claim had lapsed and another pass held the domain.
 */
const SETTLE_CALL = `
WITH x AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
    WITH ORDINALITY AS x(message_id, claim_token, trigger, domain, status, detail, reason, ord)),
locked AS (
  SELECT b.message_id, b.domain, x.status, x.detail FROM x JOIN batch_domain b ON b.message_id = x.message_id AND b.domain = x.domain
  WHERE CASE WHEN x.status = 'succeeded' THEN b.status <> 'succeeded' ELSE b.status = 'in_progress' AND b.claimed_by = x.claim_token END
  ORDER BY b.message_id, b.domain
  FOR UPDATE OF b),
settled AS (
  UPDATE batch_domain b SET status = l.status, detail = l.detail, claimed_by = NULL, claimed_until = NULL, updated_at = now(),
         finished_at = CASE WHEN l.status IN ('succeeded', 'failed') THEN now() END
  FROM locked l WHERE b.message_id = l.message_id AND b.domain = l.domain
  RETURNING b.message_id, b.domain)
INSERT INTO domain_attempt (message_id, domain, attempted_at, duration_ms, instance_id, trigger, token_generation, http_status, outcome, reason)
SELECT x.message_id, x.domain, $8, $9, $10, x.trigger, $11, $12,
       CASE WHEN x.status = 'succeeded' OR (x.message_id, x.domain) IN (SELECT message_id, domain FROM settled) THEN x.status ELSE 'lease_lost' END,
       x.reason
FROM x ORDER BY x.ord`;

/*
 * The inventory half: the deleted domains, each once (a domain in two batches of one call is credited to the
 * first messageId), locked in domain order for the same reason as above.
 */
const SETTLE_CALL_INVENTORY = `
WITH d AS (
  SELECT DISTINCT ON (domain) domain, message_id FROM unnest($1::text[], $2::text[]) AS d(message_id, domain) ORDER BY domain, message_id),
locked AS (
  SELECT c.domain, d.message_id FROM d JOIN cdn_domain c ON c.domain = d.domain WHERE c.status = 'active'
  ORDER BY c.domain
  FOR UPDATE OF c)
UPDATE cdn_domain c SET status = 'deleted', deleted_at = now(), deleted_by_message_id = l.message_id
FROM locked l WHERE c.domain = l.domain`;

/**
 * Records one call's answer for every pass that had domains in it, in one transaction: each domain is settled
 * against its own batch with its own pass's claim token, and its attempt row (with that pass's trigger) is
 * written in the same statement; when some were deleted, the inventory changes in the same transaction (one
 * statement, autocommit, when none was). As in settleSucceeded, a confirmed deletion is recorded even if the
 * claim has lapsed; other answers change a domain only while its pass's claim token still holds it, else its
 * attempt says `lease_lost`. A failure records nothing for any share.
 */
export async function settleCall(db: Db, call: SentCall, shares: CallShare[]): Promise<void> {
  const rows = shares.flatMap((s) => s.answered.map((a) => ({ ...a, messageId: s.messageId, claimToken: s.claimToken, trigger: s.trigger })));
  if (rows.length === 0) return;
  const settle = (q: Queryable) => q.query({
    // Named: each pooled connection parses and plans it once, then only binds.
    name: 'settle-call',
    text: SETTLE_CALL,
    values: [rows.map((r) => r.messageId), rows.map((r) => r.claimToken), rows.map((r) => r.trigger), rows.map((r) => r.domain),
      rows.map((r) => r.status), rows.map((r) => r.detail), rows.map((r) => r.reason),
      call.sentAt, call.durationMs, call.instanceId, call.tokenGeneration, call.httpStatus],
  });
  const deleted = rows.filter((r) => r.status === 'succeeded');
  if (deleted.length === 0) {
    await settle(db);
    return;
  }
  // Same order as settleSucceeded (ledger rows, then inventory rows), so the two never deadlock each other.
  await withTransaction(db, async (client) => {
    await settle(client);
    await client.query({
      name: 'settle-call-inventory',
      text: SETTLE_CALL_INVENTORY,
      values: [deleted.map((r) => r.messageId), deleted.map((r) => r.domain)],
    });
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
