/**
 * END TO END: K callbacks × 50 domains through 1, 2, 4 worker processes (+ one API process) against the
 * simulator at --latency ms per call; domains/s against Little's law (calls in flight × batch ÷ latency).
 */
import type { SimulatorStats } from '../../src/simulator/server.js';
import { formatTable } from '../../scripts/cli.js';
import { seedInventory } from '../../test/helpers/env.js';
import { deletedTwice, resetSimulator, type BenchContext, type BenchSection } from '../context.js';
import { busyShare, cpuMs, machineCpu } from '../proc-stats.js';
import { errorCell, num, pct } from '../report.js';
import { DOMAINS_PER_CALLBACK, postCallbacks } from '../workload.js';

export interface E2eRow {
  workers: number; batchSize: number; callbacks: number; domains: number; elapsedSec: number; domainsPerSec: number; steadyPerSec: number;
  maxConcurrentCalls: number; machineCpuPercent: number; workerCpuPercent: number;
  littleLimit: number; littleShare: number; packingBound: number; calls: number; entriesPerCall: number; slotUse: number;
  succeeded: number; lost: number; deletedTwice: number; unauthorized: number; tokenFetches: number; ledger: Record<string, number>;
}
export type E2eRun = E2eRow | { workers: number; batchSize: number; error: string };
export interface E2eResult { latencyMs: number; secplatConcurrency: number; amqpPrefetch: number; runs: E2eRun[] }

/** Domains/s over the middle 80 % of the domains, without the ramp-up and the last wave. */
async function steadyPerSec(ctx: BenchContext, domains: number): Promise<number> {
  const { rows: [mid] } = await ctx.bench.db.query<{ p10: number; p90: number }>(
    `SELECT extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY finished_at)) * 1000 AS p10,
            extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY finished_at)) * 1000 AS p90 FROM batch_domain`);
  return (0.8 * domains) / ((Number(mid!.p90) - Number(mid!.p10)) / 1000);
}

interface Measured { workers: number; batchSize: number; callbacks: number; domains: number; t0: number; last: number; wallMs: number; machinePct: number; workerCpuMs: number; stats: SimulatorStats; counts: Record<string, number> }

/** The row's figures from what one run measured. */
async function figures(ctx: BenchContext, m: Measured): Promise<E2eRow> {
  const elapsedSec = (m.last - m.t0) / 1000;
  const inFlight = m.workers * ctx.base.secplatConcurrency;
  const littleLimit = (inFlight * m.batchSize) / (ctx.plan.latencyMs / 1000);
  const domainsPerSec = m.domains / elapsedSec;
  const succeeded = m.counts.succeeded ?? 0;
  return {
    workers: m.workers, batchSize: m.batchSize, callbacks: m.callbacks, domains: m.domains, elapsedSec, domainsPerSec,
    littleLimit, littleShare: domainsPerSec / littleLimit, steadyPerSec: await steadyPerSec(ctx, m.domains),
    maxConcurrentCalls: m.stats.maxConcurrentDeletes, machineCpuPercent: m.machinePct, workerCpuPercent: (m.workerCpuMs / m.wallMs) * 100,
    packingBound: DOMAINS_PER_CALLBACK / Math.ceil(DOMAINS_PER_CALLBACK / m.batchSize) / m.batchSize,
    calls: m.stats.deleteCalls, entriesPerCall: m.stats.entriesReceived / m.stats.deleteCalls,
    slotUse: (m.stats.deleteCalls * ctx.plan.latencyMs / 1000) / (elapsedSec * inFlight),
    succeeded, lost: m.domains - succeeded, deletedTwice: deletedTwice(m.stats),
    unauthorized: m.stats.unauthorized, tokenFetches: m.stats.tokenFetches, ledger: m.counts,
  };
}

/** One end-to-end run: `callbacks` callbacks through `workers` worker processes with this batch size. */
export async function runE2e(ctx: BenchContext, workers: number, batchSize: number, callbacks: number): Promise<E2eRow> {
  await ctx.bench.truncate();
  resetSimulator(ctx);
  const w = ctx.makeWorkload(callbacks);
  await seedInventory(ctx.bench.db, w.domains, undefined, { analyze: true });
  const expectedSec = w.domains.length / (workers * ctx.base.secplatConcurrency * batchSize / (ctx.plan.latencyMs / 1000));
  return ctx.scenario(`e2e-w${workers}-b${batchSize}`, { SECPLAT_BATCH_SIZE: String(batchSize) }, async (s) => {
    const api = await s.start('api', 'api');
    const ws = await s.startWorkers(workers);
    const workerCpu = () => ws.reduce((sum, x) => sum + (cpuMs(x.pid) ?? 0), 0);
    const cpu0 = { machine: machineCpu(), workers: workerCpu() };
    const t0 = Date.now();
    await postCallbacks(api.url, ctx.callbackToken, w.bodies, 8);
    const last = await ctx.bench.waitDone(w.domains.length, Math.max(120_000, expectedSec * 5000));
    const cpu1 = { machine: machineCpu(), workers: workerCpu() };
    return figures(ctx, {
      workers, batchSize, callbacks, domains: w.domains.length, t0, last, wallMs: Date.now() - t0,
      machinePct: busyShare(cpu0.machine, cpu1.machine) * 100, workerCpuMs: cpu1.workers - cpu0.workers,
      stats: ctx.sim.stats(), counts: await ctx.bench.statusCounts(),
    });
  });
}

async function run(ctx: BenchContext): Promise<E2eResult> {
  const { plan, base } = ctx;
  const runs = plan.workers.map((w) => ({ workers: w, batch: base.secplatBatchSize }));
  // A batch size dividing 50 shows what the 50/20 chunking costs (20+20+10 = three calls per callback).
  const divisor = [25, 10, 50].find((b) => b !== base.secplatBatchSize && DOMAINS_PER_CALLBACK % base.secplatBatchSize !== 0);
  if (!plan.quick && divisor) runs.push({ workers: Math.max(...plan.workers), batch: divisor });
  const rows: E2eRun[] = [];
  for (const r of runs) {
    const callbacks = plan.callbacksPerWorker * r.workers;
    ctx.log(`e2e: ${r.workers} worker(s), batch ${r.batch}, ${callbacks} callbacks × ${DOMAINS_PER_CALLBACK}, ${plan.latencyMs} ms per call`);
    try {
      rows.push(await runE2e(ctx, r.workers, r.batch, callbacks));
    } catch (err) {
      rows.push({ workers: r.workers, batchSize: r.batch, error: (err as Error).message });
      ctx.log(`e2e failed: ${(err as Error).message}`);
    }
  }
  return { latencyMs: plan.latencyMs, secplatConcurrency: base.secplatConcurrency, amqpPrefetch: base.amqpPrefetch, runs: rows };
}

function render(r: E2eResult): string[] {
  return [
    `END TO END  (K callbacks × 50 domains, simulator ${r.latencyMs} ms per call, ${r.secplatConcurrency} calls in flight per worker; limit = calls in flight × batch ÷ latency)`,
    formatTable(['workers', 'batch', 'domains', 'seconds', 'domains/s', 'limit/s', 'of limit', 'steady/s', 'steady of limit', 'packing bound', 'entries/call', 'slot use', 'machine CPU', 'lost', 'twice', '401s', 'token fetches'],
      r.runs.map((x) => ('error' in x
        ? [x.workers, x.batchSize, errorCell(x.error)]
        : [x.workers, x.batchSize, num(x.domains), num(x.elapsedSec, 1), num(x.domainsPerSec, 1), num(x.littleLimit), pct(x.littleShare), num(x.steadyPerSec, 1),
          pct(x.steadyPerSec / x.littleLimit), pct(x.packingBound), num(x.entriesPerCall, 1), pct(x.slotUse), `${num(x.machineCpuPercent)} %`,
          num(x.lost), num(x.deletedTwice), num(x.unauthorized), num(x.tokenFetches)]))),
  ];
}

export const e2e: BenchSection<E2eResult> = { name: 'e2e', run, render };
