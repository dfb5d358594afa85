/**
 * Bulk replay: re-open the failures of every batch a filter matches, one batch at a time, in the background
 * of the process that accepted it. The batches are fixed when it starts (bulk_replay.message_ids) and it is
 * bounded (BULK_REPLAY_MAX_BATCHES), so an operator knows beforehand exactly how much it touches.
 *
 * Each batch goes through replayBatches, in a transaction that first locks the bulk_replay row and checks it
 * is still running, and that counts its progress: a cancel (which takes the same row lock) therefore lands
 * between two batches, never inside one, and `done` is exactly the number of batches replayed.
 *
 * A process that dies leaves its row `running`; it is marked failed, not resumed, once its heartbeat (moved
 * with every batch) is older than HEARTBEAT_LEASE_MS: when an API process starts, and whenever the row is
 * read. Not resumed on purpose: the conditions the operator judged may have changed (the crash may even have
 * come from the replay itself), and a person decides whether to start it again; its filter and how far it
 * got are kept, and a new bulk replay finds only what is still failing.
 */
import { DependencyUnavailableError, NotFoundError, ValidationError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { sleep } from '../lib/timing.js';
import { containsPattern, replayBatches, type ReplayDeps } from '../pipeline/replay.js';
import { insertAudit, type Actor } from '../store/audit.js';
import { withTransaction, type Queryable } from '../store/db.js';

/** A running bulk replay whose heartbeat is older than this belongs to a process that is gone. */
export const HEARTBEAT_LEASE_MS = 60_000;
/** A batch that meets a transient failure (PostgreSQL blip, deadlock) is tried this many times. */
const BATCH_TRIES = 3;
/** Batches shown by a dry run, and failing domains shown per batch. */
export const PREVIEW_BATCHES = 50;
const PREVIEW_DOMAINS = 20;

export const BULK_STATUSES = ['running', 'done', 'cancelled', 'failed'] as const;
export type BulkStatus = (typeof BULK_STATUSES)[number];

/** Which batches: those with a failed or unknown_domain domain, created in [since, until), whose detail contains detailMatches. */
export interface BulkFilter { hasFailures: true; since: Date | null; until: Date | null; detailMatches: string | null }

export interface BulkReplayRow {
  id: number;
  status: BulkStatus;
  filter: { hasFailures: true; since: string | null; until: string | null; detailMatches: string | null };
  reason: string;
  createdBy: string;
  createdRole: string | null;
  createdVia: string | null;
  createdAt: Date;
  /** Batches matched when it started, and how many of them were replayed so far. */
  total: number;
  done: number;
  /** Domains re-opened so far. */
  reopened: number;
  owner: string;
  heartbeatAt: Date;
  finishedAt: Date | null;
  cancelledBy: string | null;
  error: string | null;
}

export interface BulkPreview {
  dryRun: true;
  filter: BulkReplayRow['filter'];
  /** Batches and failing domains the filter matches now. */
  batchCount: number;
  domainCount: number;
  /** At most this many batches per bulk replay (BULK_REPLAY_MAX_BATCHES). */
  maxBatches: number;
  /** The first 50 batches in replay order (oldest first), each with its first 20 matching domains. */
  batches: { messageId: string; createdAt: Date; domainCount: number; domains: { domain: string; status: string; detail: string | null }[] }[];
}

const COLUMNS = `id::int, status, filter, reason, created_by AS "createdBy", created_role AS "createdRole", created_via AS "createdVia",
  created_at AS "createdAt", total, done, reopened, owner, heartbeat_at AS "heartbeatAt", finished_at AS "finishedAt",
  cancelled_by AS "cancelledBy", error`;

export function filterAsJson(f: BulkFilter): BulkReplayRow['filter'] {
  return { hasFailures: true, since: f.since?.toISOString() ?? null, until: f.until?.toISOString() ?? null, detailMatches: f.detailMatches };
}

/**
 * The batches the filter matches, in replay order (oldest first), with the total counts; at most `limit`
 * rows. Reads failing rows through batch_domain_failing; the window sums are taken before the limit.
 */
export async function matchFilter(db: Queryable, filter: BulkFilter, limit: number) {
  const { rows } = await db.query<{
    messageId: string; createdAt: Date; domainCount: number; domains: BulkPreview['batches'][number]['domains']; batchCount: number; domainTotal: number;
  }>(
    `WITH m AS (
       SELECT d.message_id, b.created_at, count(*)::int AS n,
              to_json((array_agg(json_build_object('domain', d.domain, 'status', d.status, 'detail', d.detail) ORDER BY d.domain))[1:${PREVIEW_DOMAINS}]) AS domains
       FROM batch_domain d JOIN batch b ON b.message_id = d.message_id
       WHERE d.status IN ('failed', 'unknown_domain')
         AND ($1::timestamptz IS NULL OR b.created_at >= $1) AND ($2::timestamptz IS NULL OR b.created_at < $2)
         AND ($3::text IS NULL OR d.detail ILIKE $3 ESCAPE '\\')
       GROUP BY d.message_id, b.created_at)
     SELECT message_id AS "messageId", created_at AS "createdAt", n AS "domainCount", domains,
            count(*) OVER ()::int AS "batchCount", (sum(n) OVER ())::int AS "domainTotal"
     FROM m ORDER BY created_at, message_id LIMIT $4`,
    [filter.since, filter.until, filter.detailMatches ? containsPattern(filter.detailMatches) : null, limit],
  );
  return { batchCount: rows[0]?.batchCount ?? 0, domainCount: rows[0]?.domainTotal ?? 0, batches: rows.map(({ batchCount: _b, domainTotal: _d, ...r }) => r) };
}

/** Reads one bulk replay (after marking it failed if its process is gone); NotFoundError when unknown. */
export async function getBulkReplay(db: Queryable, id: number): Promise<BulkReplayRow> {
  await failAbandoned(db, id);
  const { rows } = await db.query<BulkReplayRow>(`SELECT ${COLUMNS} FROM bulk_replay WHERE id = $1`, [id]);
  if (!rows[0]) throw new NotFoundError(`no bulk replay with id ${id}`);
  return rows[0];
}

/** The newest bulk replays, newest first. */
export async function listBulkReplays(db: Queryable, limit: number): Promise<BulkReplayRow[]> {
  await failAbandoned(db);
  const { rows } = await db.query<BulkReplayRow>(`SELECT ${COLUMNS} FROM bulk_replay ORDER BY id DESC LIMIT $1`, [limit]);
  return rows;
}

/**
 * Marks failed the running bulk replays (all, or one) whose heartbeat is older than HEARTBEAT_LEASE_MS.
 * A row being replayed right now is locked by its runner, which is alive: SKIP LOCKED leaves it alone.
 */
export async function failAbandoned(db: Queryable, id?: number): Promise<number> {
  const { rowCount } = await db.query(
    `UPDATE bulk_replay SET status = 'failed', finished_at = now(),
            error = 'the process running it stopped (no progress since ' || to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                    || ') after ' || done || ' of ' || total || ' batches; start a new bulk replay to finish'
     WHERE id IN (SELECT id FROM bulk_replay
                  WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1::double precision / 1000)
                    AND ($2::bigint IS NULL OR id = $2)
                  FOR UPDATE SKIP LOCKED)`,
    [HEARTBEAT_LEASE_MS, id ?? null],
  );
  return rowCount ?? 0;
}

/** An operation the bulk replay's state does not allow (cancelling a finished one): 409. */
export class BulkReplayStateError extends ValidationError {
  constructor(message: string) { super(message, 409); }
}

export interface BulkReplayDeps extends ReplayDeps {
  config: { bulkReplayMaxBatches: number; instanceId: string };
}

/** Starts, runs and cancels the bulk replays of one process; `stop()` ends its runs between two batches. */
export class BulkReplays {
  private readonly runs = new Map<number, Promise<void>>();
  private stopping = false;
  private readonly logger: Logger;

  constructor(private readonly deps: BulkReplayDeps) {
    this.logger = deps.logger.child({ component: 'bulk-replay' });
  }

  /** At start-up: marks failed the bulk replays whose process died (heartbeat older than HEARTBEAT_LEASE_MS). */
  async failAbandonedAtStart(): Promise<number> {
    const n = await failAbandoned(this.deps.db);
    if (n > 0) this.logger.warn('bulk replays left running by a process that stopped were marked failed', { count: n });
    return n;
  }

  /** What a bulk replay with this filter would do now: counts and the first 50 batches. */
  async preview(filter: BulkFilter): Promise<BulkPreview> {
    const m = await matchFilter(this.deps.db, filter, PREVIEW_BATCHES);
    return { dryRun: true, filter: filterAsJson(filter), batchCount: m.batchCount, domainCount: m.domainCount, maxBatches: this.deps.config.bulkReplayMaxBatches, batches: m.batches };
  }

  /**
   * Records a bulk replay (its batches fixed now) with its audit row in one transaction and starts it in
   * the background. More batches than BULK_REPLAY_MAX_BATCHES, or none, is a ValidationError (400).
   */
  async start(filter: BulkFilter, reason: string, actor: Actor): Promise<BulkReplayRow> {
    if (this.stopping) throw new DependencyUnavailableError('bulk-replay', 'the service is shutting down');
    const max = this.deps.config.bulkReplayMaxBatches;
    const row = await withTransaction(this.deps.db, async (client) => {
      const m = await matchFilter(client, filter, max + 1);
      if (m.batchCount > max) {
        throw new ValidationError(`the filter matches ${m.batchCount} batches; a bulk replay takes at most ${max} (BULK_REPLAY_MAX_BATCHES): narrow the filter (since, until, detailMatches)`);
      }
      if (m.batchCount === 0) throw new ValidationError('the filter matches no batch with failures; nothing to replay');
      const { rows } = await client.query<BulkReplayRow>(
        `INSERT INTO bulk_replay (filter, reason, created_by, created_role, created_via, message_ids, total, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ${COLUMNS}`,
        [JSON.stringify(filterAsJson(filter)), reason, actor.name, actor.role, actor.via, m.batches.map((b) => b.messageId), m.batchCount, this.deps.config.instanceId],
      );
      const created = rows[0]!;
      await insertAudit(client, {
        action: 'bulk_replay_start', actor, reason, target: { bulkReplayId: created.id },
        changes: [{ field: 'status', from: null, to: 'running', batches: m.batchCount, domains: m.domainCount, filter: created.filter }],
      });
      return created;
    });
    const run = this.run(row.id, filter, reason, actor).finally(() => this.runs.delete(row.id));
    this.runs.set(row.id, run);
    return row;
  }

  /** Cancels a running bulk replay: it stops before its next batch. 404 unknown, 409 when it already ended. */
  async cancel(id: number, actor: Actor, reason: string | null): Promise<BulkReplayRow> {
    await failAbandoned(this.deps.db, id);
    return withTransaction(this.deps.db, async (client) => {
      // Waits for the batch being replayed (its transaction holds this row): the cancel lands between two.
      const { rows } = await client.query<BulkReplayRow>(`SELECT ${COLUMNS} FROM bulk_replay WHERE id = $1 FOR UPDATE`, [id]);
      const row = rows[0];
      if (!row) throw new NotFoundError(`no bulk replay with id ${id}`);
      if (row.status !== 'running') throw new BulkReplayStateError(`bulk replay ${id} is already ${row.status}${row.cancelledBy ? ` (by ${row.cancelledBy})` : ''}; nothing was changed`);
      const updated = await client.query<BulkReplayRow>(
        `UPDATE bulk_replay SET status = 'cancelled', cancelled_by = $2, finished_at = now() WHERE id = $1 RETURNING ${COLUMNS}`, [id, actor.name]);
      await insertAudit(client, {
        action: 'bulk_replay_cancel', actor, reason, target: { bulkReplayId: id },
        changes: [{ field: 'status', from: 'running', to: 'cancelled', done: row.done, total: row.total }],
      });
      return updated.rows[0]!;
    });
  }

  /** Ends every run of this process between two batches; their rows are marked failed, saying so. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.allSettled([...this.runs.values()]);
  }

  private async run(id: number, filter: BulkFilter, reason: string, actor: Actor): Promise<void> {
    const { db } = this.deps;
    const log = this.logger.child({ bulkReplayId: id });
    try {
      const { rows } = await db.query<{ messageIds: string[] }>('SELECT message_ids AS "messageIds" FROM bulk_replay WHERE id = $1', [id]);
      const messageIds = rows[0]?.messageIds ?? [];
      log.info('bulk replay started', { batches: messageIds.length, by: actor.name });
      for (const [i, messageId] of messageIds.entries()) {
        if (this.stopping) {
          await this.finish(id, 'failed', `the service shut down after ${i} of ${messageIds.length} batches; start a new bulk replay to finish`);
          log.warn('bulk replay stopped by shutdown', { done: i, total: messageIds.length });
          return;
        }
        if (!(await this.replayOne(id, messageId, filter, reason, actor))) {
          log.info('bulk replay ended before its next batch (cancelled)', { done: i, total: messageIds.length });
          return;
        }
      }
      await this.finish(id, 'done', null);
      log.info('bulk replay done', { batches: messageIds.length });
    } catch (err) {
      log.error('bulk replay failed', { err: (err as Error).message });
      await this.finish(id, 'failed', `stopped by an error: ${(err as Error).message}`.slice(0, 1000))
        .catch((e: Error) => log.error('bulk replay could not be marked failed; it is once its heartbeat is stale', { err: e.message }));
    }
  }

  /** Replays one batch of the run; false when the run is no longer running (cancelled, or marked failed). */
  private async replayOne(id: number, messageId: string, filter: BulkFilter, reason: string, actor: Actor): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await replayBatches(this.deps, [messageId], {
          failedMatching: { detailMatches: filter.detailMatches }, actor, reason, bulkReplayId: id,
          beforeChange: async (client) => {
            const { rows } = await client.query<{ status: string }>('SELECT status FROM bulk_replay WHERE id = $1 FOR UPDATE', [id]);
            return rows[0]?.status === 'running';
          },
          afterChange: async (client, changes) => {
            await client.query('UPDATE bulk_replay SET done = done + 1, reopened = reopened + $2, heartbeat_at = now() WHERE id = $1', [id, changes.length]);
          },
        });
        return !result.abandoned;
      } catch (err) {
        // A transient failure rolled the batch back whole: try it again, a little later.
        if (!(err instanceof DependencyUnavailableError) || attempt >= BATCH_TRIES) throw err;
        await sleep(500 * attempt);
      }
    }
  }

  private async finish(id: number, status: Extract<BulkStatus, 'done' | 'failed'>, error: string | null): Promise<void> {
    await this.deps.db.query(
      `UPDATE bulk_replay SET status = $2, error = $3, finished_at = now(), heartbeat_at = now() WHERE id = $1 AND status = 'running'`,
      [id, status, error]);
  }
}
