/**
 * INGEST: fifty-domain callbacks against a spawned API process (ROLE=api) from a separate load-generator
 * process; the same with RabbitMQ unreachable (ledger-only path); and the PostgreSQL ceiling: the same rows
 * written by a pg client alone, the best of two shapes measured in the same run: one statement per callback
 * (the service's own recordCallback) and callbacks grouped into one statement (its IngestBatcher); same
 * concurrency, no HTTP, validation or RabbitMQ in the way. Then the API again, open-loop at half the rate
 * it reached in the first run, for the latency an API not pushed to its limit gives.
 */
import net from 'node:net';
import { formatTable } from '../../scripts/cli.js';
import type { BenchContext, BenchSection } from '../context.js';
import { runJsonChild } from '../json-child.js';
import type { LoadConfig, LoadResult } from '../load.js';
import { errorCell, num, pct } from '../report.js';
import { DOMAINS_PER_CALLBACK } from '../workload.js';

type IngestRow = { scenario: string; label: string; error?: string; ceilingShare?: number; stored?: number; storedMatchesAcked?: boolean; publishPending?: number } & Partial<LoadResult>;
export interface IngestResult { concurrency: number; warmupSeconds: number; seconds: number; domainsPerCallback: number; runs: IngestRow[] }

const VARIANTS = [
  { name: 'api', label: 'API (ROLE=api), RabbitMQ up' },
  { name: 'pg-ceiling', label: 'PostgreSQL alone, a statement each' },
  { name: 'pg-ceiling-grouped', label: 'PostgreSQL alone, grouped' },
  { name: 'api-no-rabbitmq', label: 'API, RabbitMQ unreachable' },
  { name: 'api-half-rate', label: 'API, RabbitMQ up, half its peak rate' },
] as const;

/** A TCP port on 127.0.0.1 that nothing listens on (taken, then released). */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

function load(ctx: BenchContext, extra: Partial<LoadConfig> & Pick<LoadConfig, 'mode'>): Promise<LoadResult> {
  const p = ctx.plan;
  return runJsonChild<LoadResult>('load generator', 'bench/load.ts', {
    concurrency: p.ingestConcurrency, warmupMs: p.ingestWarmupSeconds * 1000, durationMs: p.ingestSeconds * 1000,
    domainsPerCallback: DOMAINS_PER_CALLBACK, callbackToken: ctx.callbackToken, ...extra,
  } satisfies LoadConfig, (p.ingestWarmupSeconds + p.ingestSeconds) * 1000 + 120_000);
}

async function runVariant(ctx: BenchContext, v: (typeof VARIANTS)[number], peakPerSec: number | undefined): Promise<IngestRow> {
  if (v.name === 'pg-ceiling' || v.name === 'pg-ceiling-grouped') {
    await ctx.bench.truncate();
    const r = await load(ctx, { mode: 'pg', databaseUrl: ctx.bench.url, pgShape: v.name === 'pg-ceiling' ? 'statement' : 'grouped' });
    const s = await ctx.bench.stored();
    return { scenario: v.name, label: v.label, ...r, stored: s.batches, storedMatchesAcked: s.batches === r.okTotal };
  }
  const extra: Record<string, string> = v.name === 'api-no-rabbitmq' ? { RABBITMQ_URL: `amqp://guest:guest@127.0.0.1:${await closedPort()}` } : {};
  let ratePerSec: number | undefined;
  if (v.name === 'api-half-rate') {
    if (!peakPerSec) throw new Error('no peak rate: the first API run failed');
    ratePerSec = peakPerSec / 2;
  }
  const r = await ctx.scenario(`ingest-${v.name}`, extra, async (s) => {
    const api = await s.start('api', 'api');
    await ctx.bench.truncate();
    return load(ctx, { mode: 'http', url: api.url, watchPid: api.pid, ratePerSec });
  });
  const s = await ctx.bench.stored();
  return { scenario: v.name, label: v.label, ...r, stored: s.batches, storedMatchesAcked: s.batches === r.okTotal, publishPending: s.pending };
}

async function run(ctx: BenchContext): Promise<IngestResult> {
  const p = ctx.plan;
  const rows: IngestRow[] = [];
  for (const v of VARIANTS) {
    ctx.log(`ingest: ${v.label}, ${p.ingestConcurrency} in flight, ${p.ingestWarmupSeconds}+${p.ingestSeconds} s`);
    try {
      rows.push(await runVariant(ctx, v, rows.find((r) => r.scenario === 'api')?.perSec));
    } catch (err) {
      rows.push({ scenario: v.name, label: v.label, error: (err as Error).message });
      ctx.log(`ingest ${v.name} failed: ${(err as Error).message}`);
    }
  }
  // The ceiling is the best PostgreSQL alone did, whichever shape that was.
  const pgRates = rows.filter((r) => r.scenario.startsWith('pg-ceiling') && typeof r.perSec === 'number').map((r) => r.perSec!);
  const ceiling = pgRates.length > 0 ? Math.max(...pgRates) : undefined;
  // Not for the half-rate run: its rate was set, not reached.
  for (const r of rows) if (ceiling && typeof r.perSec === 'number' && !r.ratePerSec) r.ceilingShare = r.perSec / ceiling;
  return { concurrency: p.ingestConcurrency, warmupSeconds: p.ingestWarmupSeconds, seconds: p.ingestSeconds, domainsPerCallback: DOMAINS_PER_CALLBACK, runs: rows };
}

function render(r: IngestResult): string[] {
  return [
    `INGEST  (fifty-domain callbacks, ${r.concurrency} in flight (half rate: open loop, a request every 1/rate s, timed from when it was due), ${r.seconds} s measured; `
      + 'API CPU: one core = 100 %, machine CPU: all cores = 100 %)',
    formatTable(['scenario', 'accepted/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'stored = acked', 'of PG ceiling', 'API CPU', 'machine CPU', 'CPU ms per callback'],
      r.runs.map((x) => (x.error
        ? [x.label, errorCell(x.error)]
        : [x.ratePerSec ? `${x.label} (${num(x.ratePerSec)}/s${x.late ? `, ${num(x.late)} late` : ''})` : x.label, num(x.perSec), num(x.p50Ms, 1), num(x.p99Ms, 1), num(x.maxMs, 1), num(x.errors), x.storedMatchesAcked ? 'yes' : `NO (${String(x.stored)}/${String(x.okTotal)})`,
          pct(x.ceilingShare), typeof x.watchedCpuPercent === 'number' ? `${num(x.watchedCpuPercent)} %` : '', `${num(x.machineCpuPercent)} %`, num(x.machineCpuMsPerOp, 1)]))),
  ];
}

export const ingest: BenchSection<IngestResult> = { name: 'ingest', run, render };
