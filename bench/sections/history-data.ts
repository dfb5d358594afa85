/**
 * The data of the history section: a few probe batches the timed operations read, and a realistic
 * history around them, generated inside PostgreSQL with generate_series (no rows cross the wire).
 *
 * The history: `rows` domain rows in batches of 50 over 90 days. The oldest 95 % of the batches are
 * finished (succeeded mostly; every tenth batch has 7 failed and 4 unknown domains and a BATCH_FAILURES
 * alarm, resolved except for the newest 2 %, with its delivered notifications); each has its callback
 * (callback_audit with the whole body), an attempt row per call answered (when domain_attempt exists)
 * and inventory rows. The newest 5 % are open, as a live service's newest batches are: pending,
 * retryable, awaiting the pipeline, some succeeded, touched within the last seconds (so none is stalled),
 * and in progress only as many rows as a fleet holds at once (16 batches × 20 domains = 4 workers ×
 * 4 calls × 20 per call).
 */
import type pg from 'pg';

export interface HistoryShape {
  /** Distinguishes this history's messageIds and domains from anything else in the database. */
  tag: string;
  rows: number;
  batches: number;
  finishedBatches: number;
  /** Its timestamps are computed from this moment. */
  at: Date;
  /** Open rows were last touched at most this long before `at`. */
  freshMs: number;
  leaseMs: number;
  /** Whether domain_attempt exists (migration 007) and gets rows. */
  attempts: boolean;
}

export function historyShape(rows: number, tag: string, freshMs: number, leaseMs: number, attempts: boolean): HistoryShape {
  const batches = Math.ceil(rows / 50);
  return { tag, rows, batches, finishedBatches: Math.max(1, Math.floor(batches * 0.95)), at: new Date(), freshMs, leaseMs, attempts };
}

/** Numbered parameters by name: `p('at')` is `$1` wherever it appears, and `values` follows. */
function binder(named: Record<string, unknown>) {
  const values: unknown[] = [];
  const index = new Map<string, number>();
  const p = (name: string): string => {
    if (!(name in named)) throw new Error(`no value for ${name}`);
    if (!index.has(name)) index.set(name, values.push(named[name]));
    return `$${index.get(name)}`;
  };
  return { p, values };
}

type Part = 'finished' | 'open';

/** The batches g of [from, to]: messageId hash h, time t, domain count cnt. */
function batchesSql(s: HistoryShape, part: Part, p: (n: string) => string): string {
  const t = part === 'finished'
    ? `${p('at')}::timestamptz - interval '1 hour' - interval '90 days' * (1 - g::float8 / ${p('finishedBatches')}::int)`
    : `${p('at')}::timestamptz - make_interval(secs => ${p('freshSec')}::float8 * (${p('batches')}::int - g) / greatest(1, ${p('batches')}::int - ${p('finishedBatches')}::int))`;
  return `SELECT g, md5(${p('tag')}::text || ':' || g) AS h, ${t} AS t, least(50, ${p('rows')}::int - (g - 1) * 50) AS cnt
          FROM generate_series(${p('from')}::int, ${p('to')}::int) g`;
}

const DOMAIN = `'d' || k || '.' || substr(b.h, 1, 16) || '.hist.example.com'`;
const FINISHED_STATUS = `CASE WHEN g % 10 = 3 AND k % 7 = 0 THEN 'failed' WHEN g % 10 = 3 AND k % 11 = 0 THEN 'unknown_domain' ELSE 'succeeded' END`;
const OPEN_STATUS = (p: (n: string) => string) => `CASE WHEN g > ${p('batches')}::int - 16 AND k <= 20 THEN 'in_progress'
  WHEN k % 10 < 6 THEN 'pending' WHEN k % 10 < 8 THEN 'retryable' WHEN k % 10 = 8 THEN 'awaiting_pipeline' ELSE 'succeeded' END`;

/** Batch rows, callback_audit rows (whole bodies) of batches [from, to]. */
async function insertBatches(db: pg.Pool, s: HistoryShape, part: Part, from: number, to: number): Promise<void> {
  const { p, values } = binder({ ...s, freshSec: s.freshMs / 1000, from, to });
  const b = batchesSql(s, part, p);
  const updated = part === 'finished' ? `t + interval '3 minutes'` : 't';
  await db.query(
    `INSERT INTO batch (message_id, created_at, updated_at, callbacks, publish_pending, published_at, last_run_at)
     SELECT 'pm' || h, t - interval '1 minute', ${updated}, 1, false, t - interval '1 minute', t FROM (${b}) b`, values);
  await db.query(
    `INSERT INTO callback_audit (message_id, received_at, remote_addr, item_count, body)
     SELECT 'pm' || h, t - interval '1 minute', '10.0.0.7', cnt, jsonb_build_object('messageId', 'pm' || h, 'data',
       (SELECT jsonb_agg(jsonb_build_object('percent', 1.0, 'process', false, 'reqType', 'SELF_DOMAIN_DELETE', 'targetName', ${DOMAIN}) ORDER BY k)
        FROM generate_series(1, cnt) k))
     FROM (${b}) b`, values);
}

/** Domain rows of batches [from, to], their attempt rows (calls answered) and their inventory rows, in one statement. */
async function insertDomains(db: pg.Pool, s: HistoryShape, part: Part, from: number, to: number): Promise<void> {
  const { p, values } = binder({ ...s, freshSec: s.freshMs / 1000, leaseSec: s.leaseMs / 1000, from, to });
  const status = part === 'finished' ? FINISHED_STATUS : OPEN_STATUS(p);
  const attempts = s.attempts ? `, att AS (
       INSERT INTO domain_attempt (message_id, domain, attempted_at, duration_ms, instance_id, trigger, token_generation, http_status, outcome, reason)
       SELECT message_id, domain, updated_at - interval '400 milliseconds', 400, 'bench-history', 'first_run', 1,
              CASE WHEN status = 'retryable' THEN 503 ELSE 200 END, status,
              CASE status WHEN 'failed' THEN 'user not found' WHEN 'retryable' THEN 'SecplatUnavailableError: HTTP 503' END
       FROM ins WHERE status IN ('succeeded', 'failed', 'retryable'))` : '';
  await db.query(
    `WITH d AS (
       SELECT 'pm' || b.h AS message_id, ${DOMAIN} AS domain, ${status} AS status, b.t
       FROM (${batchesSql(s, part, p)}) b, generate_series(1, b.cnt) k),
     ins AS (
       INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, user_id_cdn, detail, claimed_by, claimed_until,
                                 created_at, updated_at, finished_at, percent, process)
       SELECT message_id, domain, 'SELF_DOMAIN_DELETE', status, (status NOT IN ('pending', 'unknown_domain', 'awaiting_pipeline'))::int,
              CASE WHEN status NOT IN ('pending', 'unknown_domain', 'awaiting_pipeline') THEN 'u-' || domain END,
              CASE status WHEN 'failed' THEN 'security platform: user not found' WHEN 'unknown_domain' THEN 'not in the domain inventory'
                          WHEN 'retryable' THEN 'security platform answered 503' WHEN 'awaiting_pipeline' THEN 'the pipeline reports it unfinished' END,
              CASE WHEN status = 'in_progress' THEN 'bench-history' END,
              CASE WHEN status = 'in_progress' THEN ${p('at')}::timestamptz + make_interval(secs => ${p('leaseSec')}::float8) END,
              t - interval '1 minute', t, CASE WHEN status IN ('succeeded', 'failed', 'unknown_domain') THEN t END,
              CASE WHEN status = 'awaiting_pipeline' THEN 0.5 ELSE 1 END, status = 'awaiting_pipeline'
       FROM d
       RETURNING message_id, domain, status, updated_at)${attempts}
     INSERT INTO cdn_domain (domain, user_id_cdn, status, deleted_at, deleted_by_message_id, imported_at)
     SELECT domain, 'u-' || domain, CASE WHEN status = 'succeeded' THEN 'deleted' ELSE 'active' END,
            CASE WHEN status = 'succeeded' THEN updated_at END, CASE WHEN status = 'succeeded' THEN message_id END, updated_at - interval '30 days'
     FROM ins WHERE status <> 'unknown_domain'`, values);
}

/** A BATCH_FAILURES alarm per finished batch with failures (resolved but for the newest 2 %), with its delivered notifications. */
async function insertAlarms(db: pg.Pool, s: HistoryShape): Promise<void> {
  const { p, values } = binder({ ...s, from: 1, to: s.finishedBatches, openFrom: Math.floor(s.finishedBatches * 0.98) });
  await db.query(
    `WITH a AS (
       INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, details, created_at, last_seen_at, state, resolved_at, resolved_by, resolve_note)
       SELECT '{"taskId":"pm' || h || '_exc","type":"DOMAIN_B_PIPE"}', 'pm' || h, 'BATCH_FAILURES',
              'batch pm' || h || ' finished with 7 failed and 4 unknown domains', jsonb_build_object('failed', 7, 'unknownDomains', 4),
              t, t, CASE WHEN g > ${p('openFrom')}::int THEN 'open' ELSE 'resolved' END,
              CASE WHEN g <= ${p('openFrom')}::int THEN t + interval '1 day' END,
              CASE WHEN g <= ${p('openFrom')}::int THEN 'bench-history' END, CASE WHEN g <= ${p('openFrom')}::int THEN 'replayed' END
       FROM (${batchesSql(s, 'finished', p)}) b WHERE g % 10 = 3
       RETURNING id, alarm_type, state, created_at, resolved_at)
     INSERT INTO alarm_notification (alarm_id, event, alarm_type, created_at, attempts, next_attempt_at, delivered_at)
     SELECT id, 'opened', alarm_type, created_at, 1, created_at, created_at FROM a
     UNION ALL SELECT id, 'resolved', alarm_type, resolved_at, 1, resolved_at, resolved_at FROM a WHERE state = 'resolved'`, values);
}

/** Loads the whole history, 4,000 batches per statement, open batches last (so they are fresh when measured), then VACUUM (ANALYZE) and CHECKPOINT. */
export async function preloadHistory(db: pg.Pool, s: HistoryShape, log: (line: string) => void): Promise<void> {
  const step = 4000;
  for (let from = 1; from <= s.finishedBatches; from += step) {
    const to = Math.min(s.finishedBatches, from + step - 1);
    await insertBatches(db, s, 'finished', from, to);
    await insertDomains(db, s, 'finished', from, to);
    log(`history: ${Math.min(s.rows, to * 50)} of ${s.rows} rows`);
  }
  await insertAlarms(db, s);
  s.at = new Date(); // the open rows are touched "now", after the long part of the load
  await insertBatches(db, s, 'open', s.finishedBatches + 1, s.batches);
  await insertDomains(db, s, 'open', s.finishedBatches + 1, s.batches);
  // A history that grew over 90 days was vacuumed long ago. Without this, autovacuum starts on the millions of
  // rows just inserted (its insert threshold) and runs while the history is timed: a few slow calls, in p99.
  await db.query('VACUUM (ANALYZE)');
  // A ledger that grew over 90 days is not busy writing out gigabytes just inserted: without this, the load's
  // last WAL-triggered checkpoint is still flushing (and the next may start) while the history is timed.
  await db.query('CHECKPOINT').catch(() => undefined); // needs superuser; skipped otherwise, as in BenchDb.truncate
}

/** Rows per table and their size on disk, indexes included. */
export async function tableSizes(db: pg.Pool): Promise<Record<string, { rows: number; mb: number }>> {
  const tables = ['batch', 'batch_domain', 'callback_audit', 'cdn_domain', 'sys_task_process_alarm', 'alarm_notification', 'domain_attempt'];
  const out: Record<string, { rows: number; mb: number }> = {};
  for (const t of tables) {
    const { rows } = await db.query<{ n: string; bytes: string | null }>(
      `SELECT (SELECT count(*) FROM ${t})::text AS n, pg_total_relation_size(to_regclass($1))::text AS bytes`, [t]).catch(() => ({ rows: [] }));
    if (rows[0]) out[t] = { rows: Number(rows[0].n), mb: Math.round(Number(rows[0].bytes) / 2 ** 20) };
  }
  return out;
}
