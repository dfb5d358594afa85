/**
 * Retention: removes what operators no longer need for batches finished longer ago than a cutoff. One
 * module serves `npm run retention` and any caller in code, the way Graphile Worker's cleanup serves its
 * CLI and its library.
 *
 * For each batch that is finished (no pending, in-progress, retryable or awaiting_pipeline domain), whose
 * last activity is older than the cutoff, that has no open or acknowledged alarm and that no running bulk
 * replay names:
 *   1. its raw callback bodies become a small placeholder (callback_audit keeps message_id, received_at,
 *      remote_addr and item_count: what came in, when and how big, stays answerable);
 *   2. then, in a transaction of its own, its attempt rows (domain_attempt), the delivered notifications of
 *      its alarms, its batch_domain rows and its batch row go.
 * Bodies go first so that a run cut off in between leaves ledger rows the next run still finds; the other
 * way round, bodies of batches no longer in the ledger would never be found again. Alarm rows stay (with
 * their resolution): sys_task_process_alarm is the table operators already query for "what went wrong with
 * pm…", and an alarm row is small next to the fifty domain rows of its batch.
 * Work goes in chunks of `chunkSize` batches, each in short transactions that take row locks with SKIP
 * LOCKED: a batch someone holds right now (a late callback merging into it, a replay) is left for the next
 * run, and retention never waits behind the service.
 */
import { DependencyUnavailableError, ValidationError } from '../lib/errors.js';
import { withTransaction, type Db, type Queryable } from '../store/db.js';

/** Shortest age accepted: anything younger may still be in someone's hands (a retry tier, a vendor's follow-up callback). */
export const MIN_RETENTION_MS = 3_600_000;

/** What a removed callback body becomes. */
export const REMOVED_BODY = { removedBy: 'retention' } as const;

const AGE = /^([0-9]{1,6})(m|h|d)$/;
const UNIT_MS = { m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** "30d", "12h", "90m" to milliseconds; a ValidationError for anything else or for less than an hour. */
export function parseAge(text: string): number {
  const m = AGE.exec(text.trim());
  if (!m) throw new ValidationError(`${JSON.stringify(text.slice(0, 40))} is not an age: give a whole number of days, hours or minutes, e.g. 30d, 12h, 90m`);
  const ms = Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
  if (ms < MIN_RETENTION_MS) throw new ValidationError(`the age must be at least 1h, not ${text.trim()}`);
  return ms;
}

export interface RetentionOptions {
  /** Batches whose last activity is older than this go. At least MIN_RETENTION_MS. */
  olderThanMs: number;
  /** Count what would go; change nothing. */
  dryRun?: boolean;
  /** Batches examined per chunk (default 1000); each chunk's changes are two short transactions. */
  chunkSize?: number;
  /** Longest wait for a row lock before the run stops (default 5000): retention never queues behind the service for long. */
  lockTimeoutMs?: number;
  /** Called after every chunk with the totals so far (progress for long runs). */
  onChunk?(totals: Readonly<RetentionCounts>): void;
}

export interface RetentionCounts {
  batches: number;
  domains: number;
  attempts: number;
  alarmNotifications: number;
  callbackBodies: number;
  /** Batches older than the cutoff kept because a domain is still open. */
  keptOpen: number;
  /** Kept because an alarm of theirs is open or acknowledged. */
  keptAlarmed: number;
  /** Kept because a running bulk replay names them. */
  keptReplaying: number;
  /** Created before the cutoff but active after it (a later callback, a replay). */
  keptRecent: number;
  /** Eligible at first sight, but someone held its rows, or it changed, before it could be locked: the next run looks again. */
  skippedBusy: number;
}

export interface RetentionResult extends RetentionCounts { cutoff: Date; dryRun: boolean; chunks: number }

interface Page { messageId: string; createdAt: string; open: boolean; alarmed: boolean; replaying: boolean; recent: boolean }
interface Tables { attempts: boolean; bulkReplay: boolean; lockTimeoutMs: number }

/** Removes (or, dry, counts) what batches finished before now − olderThanMs no longer need; see the module comment. */
export async function runRetention(db: Db, opts: RetentionOptions): Promise<RetentionResult> {
  if (!(opts.olderThanMs >= MIN_RETENTION_MS)) throw new ValidationError('the age must be at least 1h');
  const chunkSize = opts.chunkSize ?? 1000;
  // The database's clock, not this host's: the timestamps compared against it were written by the database.
  const { rows: [head] } = await db.query<{ cutoff: Date; attempts: boolean; bulkReplay: boolean }>(
    `SELECT now() - make_interval(secs => $1::double precision / 1000) AS cutoff,
            to_regclass('domain_attempt') IS NOT NULL AS attempts, to_regclass('bulk_replay') IS NOT NULL AS "bulkReplay"`,
    [opts.olderThanMs]);
  const { cutoff, ...found } = head!;
  const tables: Tables = { ...found, lockTimeoutMs: opts.lockTimeoutMs ?? 5000 };
  const totals: RetentionCounts = {
    batches: 0, domains: 0, attempts: 0, alarmNotifications: 0, callbackBodies: 0, keptOpen: 0, keptAlarmed: 0, keptReplaying: 0, keptRecent: 0, skippedBusy: 0,
  };
  let after = { createdAt: '-infinity', messageId: '' };
  let chunks = 0;
  for (;;) {
    const page = await classify(db, tables, cutoff, { after, limit: chunkSize });
    if (page.length === 0) break;
    chunks += 1;
    after = { createdAt: page.at(-1)!.createdAt, messageId: page.at(-1)!.messageId };
    const eligible = tally(page, totals);
    if (eligible.length > 0) add(totals, opts.dryRun ? await countRemovable(db, tables, eligible) : await removeChunk(db, tables, cutoff, eligible));
    opts.onChunk?.(totals);
  }
  return { ...totals, cutoff, dryRun: opts.dryRun ?? false, chunks };
}

/** Counts the kept batches of a page by their first reason; returns the rest. */
function tally(page: Page[], totals: RetentionCounts): string[] {
  const eligible: string[] = [];
  for (const b of page) {
    if (b.open) totals.keptOpen += 1;
    else if (b.alarmed) totals.keptAlarmed += 1;
    else if (b.replaying) totals.keptReplaying += 1;
    else if (b.recent) totals.keptRecent += 1;
    else eligible.push(b.messageId);
  }
  return eligible;
}

function add(totals: RetentionCounts, part: Partial<RetentionCounts>): void {
  for (const [k, v] of Object.entries(part) as [keyof RetentionCounts, number][]) totals[k] += v;
}

/**
 * Batches created before the cutoff (a keyset page in created_at order, served by batch_created), or the
 * given ones, each with why it must stay: an open domain (batch_domain_unfinished), an active alarm, a
 * running bulk replay naming it, activity after the cutoff.
 */
async function classify(db: Queryable, tables: Tables, cutoff: Date, which: { after: { createdAt: string; messageId: string }; limit: number } | { ids: string[] }): Promise<Page[]> {
  const source = 'ids' in which
    ? 'SELECT message_id, created_at, updated_at FROM batch WHERE message_id = ANY($2)'
    : `SELECT message_id, created_at, updated_at FROM batch
       WHERE created_at < $1 AND (created_at, message_id) > ($2::timestamptz, $3) ORDER BY created_at, message_id LIMIT $4`;
  const params = 'ids' in which ? [cutoff, which.ids] : [cutoff, which.after.createdAt, which.after.messageId, which.limit];
  const replaying = tables.bulkReplay ? `p.message_id IN (SELECT unnest(message_ids) FROM bulk_replay WHERE status = 'running')` : 'false';
  const { rows } = await db.query<Page>(
    `WITH p AS (${source})
     SELECT p.message_id AS "messageId", p.created_at::text AS "createdAt",
            EXISTS (SELECT 1 FROM batch_domain d WHERE d.message_id = p.message_id
                      AND d.status IN ('pending', 'in_progress', 'retryable', 'awaiting_pipeline')) AS open,
            EXISTS (SELECT 1 FROM sys_task_process_alarm a WHERE a.message_id = p.message_id AND a.state <> 'resolved') AS alarmed,
            ${replaying} AS replaying,
            p.updated_at >= $1 OR EXISTS (SELECT 1 FROM batch_domain d WHERE d.message_id = p.message_id AND d.updated_at >= $1) AS recent
     FROM p ORDER BY p.created_at, p.message_id`,
    params);
  return rows;
}

/** What removing these batches would remove (the dry run). */
async function countRemovable(db: Queryable, tables: Tables, ids: string[]): Promise<Partial<RetentionCounts>> {
  const { rows: [c] } = await db.query<Record<'domains' | 'attempts' | 'alarmNotifications' | 'callbackBodies', number>>(
    `SELECT (SELECT count(*) FROM batch_domain WHERE message_id = ANY($1))::int AS domains,
            ${tables.attempts ? '(SELECT count(*) FROM domain_attempt WHERE message_id = ANY($1))::int' : '0'} AS attempts,
            (SELECT count(*) FROM alarm_notification n JOIN sys_task_process_alarm a ON a.id = n.alarm_id
             WHERE a.message_id = ANY($1) AND n.delivered_at IS NOT NULL)::int AS "alarmNotifications",
            (SELECT count(*) FROM callback_audit WHERE message_id = ANY($1) AND body <> $2::jsonb)::int AS "callbackBodies"`,
    [ids, JSON.stringify(REMOVED_BODY)]);
  return { batches: ids.length, ...c! };
}

/** Bodies in one transaction, then the rows in another (see the module comment for the order). */
async function removeChunk(db: Db, tables: Tables, cutoff: Date, ids: string[]): Promise<Partial<RetentionCounts>> {
  try {
    const bodies = await withTransaction(db, async (c) => {
      await c.query(`SELECT set_config('lock_timeout', $1, true)`, [`${tables.lockTimeoutMs}ms`]);
      const r = await c.query('UPDATE callback_audit SET body = $2::jsonb WHERE message_id = ANY($1) AND body <> $2::jsonb', [ids, JSON.stringify(REMOVED_BODY)]);
      return r.rowCount ?? 0;
    });
    const rows = await withTransaction(db, (c) => removeRows(c, tables, cutoff, ids));
    return { callbackBodies: bodies, ...rows };
  } catch (err) {
    // 55P03 lock_not_available: the transaction that waited was rolled back whole; what earlier ones removed stays removed.
    if ((err as { code?: string }).code !== '55P03') throw err;
    throw new DependencyUnavailableError('postgres',
      `retention waited over ${tables.lockTimeoutMs} ms for a lock the service holds and stopped; run it again to go on from there`, err);
  }
}

/**
 * Locks the batches and all their domain rows without waiting (a batch whose rows someone holds is
 * skipped), checks again under the locks that each may still go, and deletes its rows. Lock order is
 * batch, then its domains: the order ingest uses.
 */
async function removeRows(c: Queryable, tables: Tables, cutoff: Date, ids: string[]): Promise<Partial<RetentionCounts>> {
  await c.query(`SELECT set_config('lock_timeout', $1, true)`, [`${tables.lockTimeoutMs}ms`]);
  const locked = (await c.query<{ id: string }>('SELECT message_id AS id FROM batch WHERE message_id = ANY($1) FOR UPDATE SKIP LOCKED', [ids])).rows.map((r) => r.id);
  // The batches some of whose domain rows we could not lock: someone holds them.
  const { rows: held } = await c.query<{ id: string }>(
    `WITH mine AS MATERIALIZED (SELECT message_id FROM batch_domain WHERE message_id = ANY($1) FOR UPDATE SKIP LOCKED),
          mine_n AS (SELECT message_id, count(*) AS n FROM mine GROUP BY message_id)
     SELECT d.message_id AS id FROM batch_domain d LEFT JOIN mine_n m USING (message_id)
     WHERE d.message_id = ANY($1) GROUP BY d.message_id, m.n HAVING count(*) > coalesce(m.n, 0)`, [locked]);
  const partly = new Set(held.map((h) => h.id));
  const whole = locked.filter((id) => !partly.has(id));
  const gone = (await classify(c, tables, cutoff, { ids: whole })).filter((b) => !b.open && !b.alarmed && !b.replaying && !b.recent).map((b) => b.messageId);
  const count = async (sql: string) => (await c.query(sql, [gone])).rowCount ?? 0;
  const attempts = tables.attempts ? await count('DELETE FROM domain_attempt WHERE message_id = ANY($1)') : 0;
  const alarmNotifications = await count(
    `DELETE FROM alarm_notification n USING sys_task_process_alarm a WHERE n.alarm_id = a.id AND a.message_id = ANY($1) AND n.delivered_at IS NOT NULL`);
  const domains = await count('DELETE FROM batch_domain WHERE message_id = ANY($1)');
  const batches = await count('DELETE FROM batch WHERE message_id = ANY($1)');
  return { batches, domains, attempts, alarmNotifications, skippedBusy: ids.length - gone.length };
}
