/**
 * INGEST: fifty-domain callbacks against a spawned API process (ROLE=api) from a separate load-generator
 * process, and the PostgreSQL ceiling: the same rows written by a pg client alone in two shapes, one
 * statement per callback (the service's own recordCallback) and callbacks grouped into one statement (its
 * IngestBatcher); no HTTP, validation or RabbitMQ in the way. Each is measured at every --ingest-concurrency
 * level, because a closed loop with few requests in flight measures latency, not capacity: the API's
 * peak is its best accepted/s over the levels, the ceiling the best PostgreSQL alone stored over the same
 * levels and both shapes. Then the API with RabbitMQ unreachable (ledger-only path) at its peak's level,
 * and open loop at half the peak rate, for the latency an API not pushed to its limit gives.
 */
import net from 'node:net';
import { formatTable } from '../../scripts/cli.js';
import type { BenchContext, BenchSection } from '../context.js';
import { runJsonChild } from '../json-child.js';
import type { LoadConfig, LoadResult } from '../load.js';
import { errorCell, num, pct } from '../report.js';
import { DOMAINS_PER_CALLBACK } from '../workload.js';

const VARIANTS = {
  api: 'API (ROLE=api), RabbitMQ up',
  'pg-ceiling': 'PostgreSQL alone, a statement each',
  'pg-ceiling-grouped': 'PostgreSQL alone, grouped',
  'api-no-rabbitmq': 'API, RabbitMQ unreachable',
  'api-half-rate': 'API, RabbitMQ up, half its peak rate',
} as const;
type Variant = keyof typeof VARIANTS;
/** Measured at every concurrency level; the other two once, after them. */
const SWEPT: readonly Variant[] = ['api', 'pg-ceiling', 'pg-ceiling-grouped'];

type IngestRow = { scenario: Variant; label: string; error?: string; ceilingShare?: number; stored?: number; storedMatchesAcked?: boolean; publishPending?: number } & Partial<LoadResult>;
/** A best rate: accepted (or stored) callbacks/s, and the row that reached it. */
export interface Best { perSec: number; scenario: Variant; concurrency: number }
export interface IngestResult {
  concurrencies: number[]; warmupSeconds: number; seconds: number; domainsPerCallback: number; runs: IngestRow[];
  /** The API's best (RabbitMQ up, closed loop) and PostgreSQL alone's best, over the levels and shapes. */
  peak?: Best; ceiling?: Best;
}

/** A TCP port on 127.0.0.1 that nothing listens on (taken, then released). */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

function load(ctx: BenchContext, concurrency: number, extra: Partial<LoadConfig> & Pick<LoadConfig, 'mode'>): Promise<LoadResult> {
  const p = ctx.plan;
  return runJsonChild<LoadResult>('load generator', 'bench/load.ts', {
    concurrency, warmupMs: p.ingestWarmupSeconds * 1000, durationMs: p.ingestSeconds * 1000,
    domainsPerCallback: DOMAINS_PER_CALLBACK, callbackToken: ctx.callbackToken, ...extra,
  } satisfies LoadConfig, (p.ingestWarmupSeconds + p.ingestSeconds) * 1000 + 120_000);
}

/** One run of a variant; `ratePerSec` makes it open loop (the half-rate run). */
async function runVariant(ctx: BenchContext, v: Variant, concurrency: number, ratePerSec?: number): Promise<IngestRow> {
  const label = VARIANTS[v];
  if (v === 'pg-ceiling' || v === 'pg-ceiling-grouped') {
    await ctx.bench.truncate();
    const r = await load(ctx, concurrency, { mode: 'pg', databaseUrl: ctx.bench.url, pgShape: v === 'pg-ceiling' ? 'statement' : 'grouped' });
    const s = await ctx.bench.stored();
    return { scenario: v, label, ...r, stored: s.batches, storedMatchesAcked: s.batches === r.okTotal };
  }
  const extra: Record<string, string> = v === 'api-no-rabbitmq' ? { RABBITMQ_URL: `amqp://guest:guest@127.0.0.1:${await closedPort()}` } : {};
  const r = await ctx.scenario(`ingest-${v}-c${concurrency}`, extra, async (s) => {
    const api = await s.start('api', 'api');
    await ctx.bench.truncate();
    return load(ctx, concurrency, { mode: 'http', url: api.url, watchPid: api.pid, ratePerSec });
  });
  const s = await ctx.bench.stored();
  return { scenario: v, label, ...r, stored: s.batches, storedMatchesAcked: s.batches === r.okTotal, publishPending: s.pending };
}

/** The fastest closed-loop row among these scenarios. */
function best(rows: IngestRow[], scenarios: readonly Variant[]): Best | undefined {
  const measured = rows.filter((r) => scenarios.includes(r.scenario) && typeof r.perSec === 'number' && !r.ratePerSec);
  const top = measured.sort((a, b) => b.perSec! - a.perSec!)[0];
  return top && { perSec: top.perSec!, scenario: top.scenario, concurrency: top.concurrency! };
}

async function run(ctx: BenchContext): Promise<IngestResult> {
  const p = ctx.plan;
  const rows: IngestRow[] = [];
  const attempt = async (v: Variant, concurrency: number, ratePerSec?: number) => {
    ctx.log(`ingest: ${VARIANTS[v]}, ${ratePerSec ? `open loop at ${num(ratePerSec)}/s` : `${concurrency} in flight`}, ${p.ingestWarmupSeconds}+${p.ingestSeconds} s`);
    try {
      rows.push(await runVariant(ctx, v, concurrency, ratePerSec));
    } catch (err) {
      rows.push({ scenario: v, label: VARIANTS[v], concurrency, error: (err as Error).message });
      ctx.log(`ingest ${v} failed: ${(err as Error).message}`);
    }
  };
  for (const c of p.ingestConcurrencies) for (const v of SWEPT) await attempt(v, c);
  const peak = best(rows, ['api']);
  if (peak) {
    await attempt('api-no-rabbitmq', peak.concurrency);
    await attempt('api-half-rate', peak.concurrency, peak.perSec / 2);
  } else {
    for (const v of ['api-no-rabbitmq', 'api-half-rate'] as const) rows.push({ scenario: v, label: VARIANTS[v], error: 'no peak rate: every API run failed' });
  }
  // The ceiling is the best PostgreSQL alone did, whichever shape and level that was.
  const ceiling = best(rows, ['pg-ceiling', 'pg-ceiling-grouped']);
  // Not for the half-rate run: its rate was set, not reached.
  for (const r of rows) if (ceiling && typeof r.perSec === 'number' && !r.ratePerSec) r.ceilingShare = r.perSec / ceiling.perSec;
  return { concurrencies: p.ingestConcurrencies, warmupSeconds: p.ingestWarmupSeconds, seconds: p.ingestSeconds, domainsPerCallback: DOMAINS_PER_CALLBACK, runs: rows, peak, ceiling };
}

function render(r: IngestResult): string[] {
  const where = (b: Best) => `${num(b.perSec)}/s (${VARIANTS[b.scenario]}, ${b.concurrency} in flight)`;
  const half = r.runs.find((x) => x.scenario === 'api-half-rate' && !x.error);
  return [
    `INGEST  (fifty-domain callbacks; the API and PostgreSQL alone each at ${r.concurrencies.join(', ')} requests (or transactions) in flight, closed loop; `
      + 'peak = the API\'s best, ceiling = the best of PostgreSQL alone over both shapes and every level; RabbitMQ unreachable at the peak\'s level; '
      + `half rate: open loop, a request every 1/rate s, timed from when it was due; ${r.seconds} s measured; API CPU: one core = 100 %, machine CPU: all cores = 100 %)`,
    formatTable(['scenario', 'in flight', 'accepted/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'stored = acked', 'of PG ceiling', 'API CPU', 'machine CPU', 'CPU ms per callback'],
      r.runs.map((x) => (x.error
        ? [x.label, x.concurrency ?? '', errorCell(x.error)]
        : [x.ratePerSec ? `${x.label} (${num(x.ratePerSec)}/s${x.late ? `, ${num(x.late)} late` : ''})` : x.label, x.ratePerSec ? 'open loop' : num(x.concurrency),
          num(x.perSec), num(x.p50Ms, 1), num(x.p99Ms, 1), num(x.maxMs, 1), num(x.errors), x.storedMatchesAcked ? 'yes' : `NO (${String(x.stored)}/${String(x.okTotal)})`,
          pct(x.ceilingShare), typeof x.watchedCpuPercent === 'number' ? `${num(x.watchedCpuPercent)} %` : '', `${num(x.machineCpuPercent)} %`, num(x.machineCpuMsPerOp, 1)]))),
    r.peak && r.ceiling
      ? `API peak ${where(r.peak)} = ${pct(r.peak.perSec / r.ceiling.perSec)} of the PostgreSQL ceiling ${where(r.ceiling)}`
        + (half ? `; at half the peak rate p99 ${num(half.p99Ms, 1)} ms` : '')
      : 'no peak or no ceiling: see the errors above',
  ];
}

export const ingest: BenchSection<IngestResult> = { name: 'ingest', run, render };
