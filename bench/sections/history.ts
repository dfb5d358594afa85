/**
 * HISTORY: what operators and the relay pay per call as the ledger grows. Times five operations on the
 * (nearly) empty ledger, preloads a realistic history (history-data.ts: loaded, vacuumed, analyzed), and
 * times them again in the same run: a batch report, the alarm list's first page, a domain lookup, the
 * relay's stalled sweep, and a claim on an open batch. Each should stay within 2× of its empty-ledger figure.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { formatTable } from '../../scripts/cli.js';
import { alarmList, batchReport, domainReport } from '../../src/ops/reports.js';
import { claimDomains, findStalled } from '../../src/store/ledger.js';
import type { BenchContext, BenchSection } from '../context.js';
import { errorCell, num } from '../report.js';
import { round, summarize, type Summary } from '../stats.js';
import { historyShape, preloadHistory, tableSizes } from './history-data.js';

interface Probes { report: string; stalled: string; claim: string; domain: string }
interface OpRow { operation: string; empty: Summary; history: Summary; p50Ratio: number; p99Ratio: number; withinTwice: boolean }
export type HistoryResult = { error: string } | {
  rows: number; batches: number; loadSeconds: number; samples: number; stalledAfterMs: number;
  tables: Record<string, { rows: number; mb: number }>; operations: OpRow[];
};

/** The alarm list's page size in the timed call. */
const ALARM_PAGE = 50;

const probeId = (tag: string, name: string) => `pm${createHash('md5').update(`${tag}:probe:${name}`).digest('hex')}`;

/**
 * Three batches the operations read: one finished with failures (report, lookup, alarm), one stalled, one open;
 * and a full first page of open alarms (seedAlarmPage).
 */
async function seedProbes(db: pg.Pool, tag: string, attempts: boolean): Promise<Probes> {
  const p: Probes = { report: probeId(tag, 'report'), stalled: probeId(tag, 'stalled'), claim: probeId(tag, 'claim'), domain: `d0.${tag}.probe.example.com` };
  // $1 the batch, $2 its first domain; the other 49 are named after the batch.
  const domains = () => `SELECT $1::text AS id, CASE WHEN k = 0 THEN $2 ELSE 'd' || k || '.' || substr($1, 3, 12) || '.probe.example.com' END AS domain, k FROM generate_series(0, 49) k`;
  await db.query(`INSERT INTO batch (message_id, publish_pending, created_at, updated_at) VALUES ($1, false, now() - interval '1 hour', now() - interval '50 minutes'),
                  ($2, false, now() - interval '1 day', now() - interval '1 day'), ($3, false, now(), now())`, [p.report, p.stalled, p.claim]);
  await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, user_id_cdn, detail, finished_at, updated_at)
                  SELECT id, domain, 'SELF_DOMAIN_DELETE', CASE WHEN k % 10 = 9 THEN 'failed' ELSE 'succeeded' END, 1, 'u-' || domain,
                         CASE WHEN k % 10 = 9 THEN 'security platform: user not found' END, now() - interval '50 minutes', now() - interval '50 minutes'
                  FROM (${domains()}) d`, [p.report, p.domain]);
  for (const [id, age] of [[p.stalled, '1 day'], [p.claim, '0 seconds']] as const) {
    await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status, updated_at)
                    SELECT id, domain, 'SELF_DOMAIN_DELETE', 'pending', now() - $3::interval FROM (${domains()}) d`, [id, `d0.${id}.probe.example.com`, age]);
  }
  if (attempts) {
    await db.query(`INSERT INTO domain_attempt (message_id, domain, attempted_at, duration_ms, instance_id, trigger, token_generation, http_status, outcome, reason)
                    SELECT message_id, domain, finished_at, 400, 'bench-probe', 'first_run', 1, 200, status, detail FROM batch_domain WHERE message_id = $1`, [p.report]);
  }
  await db.query(`INSERT INTO callback_audit (message_id, item_count, body) VALUES ($1, 50, $2)`, [p.report, JSON.stringify({ messageId: p.report, data: [] })]);
  await db.query(`WITH a AS (INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content) VALUES ($1, $2, 'BATCH_FAILURES', 'probe') RETURNING id)
                  INSERT INTO alarm_notification (alarm_id, event, alarm_type, delivered_at) SELECT id, 'opened', 'BATCH_FAILURES', now() FROM a`,
  [JSON.stringify({ taskId: `${p.report}_exc`, type: 'DOMAIN_B_PIPE' }), p.report]);
  await seedAlarmPage(db, tag);
  return p;
}

/**
 * ALARM_PAGE more open alarms, each on a finished 50-domain batch with failures, 1 to 50 minutes old: after the
 * report probe's and before any of the history's (an hour old or more), so both figures read the same full page
 * (with a next page). Without them the empty figure was of a one-row page, which the history's open alarms (76
 * at 2 million rows) then filled: the ratio measured 50 rows against 1, not the history.
 */
async function seedAlarmPage(db: pg.Pool, tag: string): Promise<void> {
  const ids = Array.from({ length: ALARM_PAGE }, (_, i) => probeId(tag, `alarm-${i}`));
  await db.query(`INSERT INTO batch (message_id, publish_pending, created_at, updated_at)
                  SELECT id, false, now() - interval '2 hours', now() - interval '1 hour' FROM unnest($1::text[]) id`, [ids]);
  await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, detail, finished_at, updated_at)
                  SELECT id, 'd' || k || '.' || substr(id, 3, 12) || '.probe.example.com', 'SELF_DOMAIN_DELETE',
                         CASE WHEN k % 7 = 0 THEN 'failed' WHEN k % 11 = 0 THEN 'unknown_domain' ELSE 'succeeded' END, 1,
                         CASE WHEN k % 7 = 0 THEN 'security platform: user not found' END, now() - interval '1 hour', now() - interval '1 hour'
                  FROM unnest($1::text[]) id, generate_series(1, 50) k`, [ids]);
  await db.query(`WITH a AS (
                    INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, details, created_at, last_seen_at)
                    SELECT '{"taskId":"' || id || '_exc","type":"DOMAIN_B_PIPE"}', id, 'BATCH_FAILURES', 'batch ' || id || ' finished with 7 failed and 4 unknown domains',
                           jsonb_build_object('failed', 7, 'unknownDomains', 4), now() - interval '1 minute' * n, now() - interval '1 minute' * n
                    FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n)
                    RETURNING id, created_at)
                  INSERT INTO alarm_notification (alarm_id, event, alarm_type, created_at, attempts, delivered_at)
                  SELECT id, 'opened', 'BATCH_FAILURES', created_at, 1, created_at FROM a`, [ids]);
}

interface Op { name: string; time(): Promise<number> }

/** Times fn; `check` throws when the answer is not the one the probes make (a timing of the wrong thing is worse than none). */
const timed = <T>(name: string, fn: () => Promise<T>, check: (r: T) => boolean): Op => ({
  name,
  async time() {
    const t0 = performance.now();
    const r = await fn();
    const ms = performance.now() - t0;
    if (!check(r)) throw new Error(`${name} did not return what the probes hold`);
    return ms;
  },
});

function operations(ctx: BenchContext, p: Probes, stalledAfterMs: number): Op[] {
  const db = ctx.bench.db;
  const claimLimit = ctx.base.secplatBatchSize;
  return [
    timed('batch report', () => batchReport(db, p.report), (r) => r.domains.length === 50),
    timed('alarm list (first page)', () => alarmList(db, { limit: ALARM_PAGE }),
      (r) => r.alarms.length === ALARM_PAGE && r.nextCursor !== null && r.alarms.some((a) => a.messageId === p.report)),
    timed('domain lookup', () => domainReport(db, p.domain), (r) => r.batches.length === 1),
    timed('stalled sweep', () => findStalled(db, stalledAfterMs, 100), (r) => r.some((b) => b.messageId === p.stalled)),
    {
      // A claim changes rows: each one runs in a transaction that is rolled back, so every sample claims the same rows.
      name: 'claim (open batch)',
      async time() {
        const client = await db.connect();
        try {
          await client.query('BEGIN');
          const t0 = performance.now();
          const rows = await claimDomains(client, p.claim, { workerId: 'bench-claim', leaseMs: ctx.base.domainLeaseMs, limit: claimLimit, exclude: [] });
          const ms = performance.now() - t0;
          if (rows.length !== Math.min(50, claimLimit)) throw new Error('claim (open batch) did not claim what the probes hold');
          return ms;
        } finally {
          await client.query('ROLLBACK').catch(() => undefined);
          client.release();
        }
      },
    },
  ];
}

/** `samples` timings of each operation, taken round-robin (so background noise hits all alike), after 5 warm-up calls each. */
async function measure(ops: Op[], samples: number): Promise<Map<string, Summary>> {
  for (const op of ops) for (let i = 0; i < 5; i++) await op.time();
  const times = new Map(ops.map((op) => [op.name, [] as number[]]));
  for (let i = 0; i < samples; i++) for (const op of ops) times.get(op.name)!.push(await op.time());
  return new Map([...times].map(([name, t]) => [name, summarize(t)]));
}

function compare(empty: Map<string, Summary>, history: Map<string, Summary>): OpRow[] {
  return [...empty].map(([operation, e]) => {
    const h = history.get(operation)!;
    const p50Ratio = h.p50Ms / e.p50Ms;
    const p99Ratio = h.p99Ms / e.p99Ms;
    return { operation, empty: e, history: h, p50Ratio, p99Ratio, withinTwice: p50Ratio <= 2 && p99Ratio <= 2 };
  });
}

async function run(ctx: BenchContext): Promise<HistoryResult> {
  const { plan, bench } = ctx;
  // The relay's own threshold (src/pipeline/publish.ts): idle longer than the longest retry delay plus a minute.
  const stalledAfterMs = Math.max(...ctx.base.retryTiersMs) + 60_000;
  try {
    await bench.truncate();
    const attempts = (await bench.db.query<{ ok: boolean }>(`SELECT to_regclass('domain_attempt') IS NOT NULL AS ok`)).rows[0]!.ok;
    const probes = await seedProbes(bench.db, ctx.tag, attempts);
    await bench.db.query('ANALYZE');
    const ops = operations(ctx, probes, stalledAfterMs);
    ctx.log(`history: timing ${ops.length} operations on the empty ledger, ${plan.historySamples} samples each`);
    const empty = await measure(ops, plan.historySamples);
    const shape = historyShape(plan.historyRows, ctx.tag, Math.min(30_000, stalledAfterMs / 4), ctx.base.domainLeaseMs, attempts);
    ctx.log(`history: loading ${shape.rows} domain rows in ${shape.batches} batches`);
    const t0 = Date.now();
    await preloadHistory(bench.db, shape, ctx.log);
    const loadSeconds = (Date.now() - t0) / 1000;
    ctx.log(`history: loaded in ${round(loadSeconds)} s; timing again`);
    const history = await measure(ops, plan.historySamples);
    return {
      rows: shape.rows, batches: shape.batches, loadSeconds, samples: plan.historySamples, stalledAfterMs,
      tables: await tableSizes(bench.db), operations: compare(empty, history),
    };
  } catch (err) {
    ctx.log(`history failed: ${(err as Error).message}`);
    return { error: (err as Error).message };
  }
}

const ratio = (r: number) => `${round(r, 2)}×`;
/** "yes", or which figure grew more than 2×. */
const mark = (o: OpRow) => {
  const over = [o.p50Ratio > 2 ? 'p50' : '', o.p99Ratio > 2 ? 'p99' : ''].filter(Boolean);
  return over.length === 0 ? 'yes' : `NO (${over.join(', ')})`;
};

function render(r: HistoryResult): string[] {
  if ('error' in r) return ['HISTORY', errorCell(r.error)];
  const sizes = Object.entries(r.tables).map(([t, s]) => `${t} ${s.rows} rows / ${s.mb} MB`).join(', ');
  return [
    `HISTORY  (ms per call, ${r.samples} calls each: on the empty ledger, then with ${r.rows} domain rows of history in ${r.batches} batches, 95 % finished; flat = within 2× on p50 and p99)`,
    formatTable(['operation', 'empty p50', 'empty p99', 'history p50', 'history p99', 'p50 ratio', 'p99 ratio', 'within 2×'],
      r.operations.map((o) => [o.operation, num(o.empty.p50Ms, 2), num(o.empty.p99Ms, 2), num(o.history.p50Ms, 2), num(o.history.p99Ms, 2),
        ratio(o.p50Ratio), ratio(o.p99Ratio), mark(o)])),
    `history loaded in ${round(r.loadSeconds)} s: ${sizes}`,
  ];
}

export const history: BenchSection<HistoryResult> = { name: 'history', run, render };
