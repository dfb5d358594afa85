/**
 * END TO END: three workloads through 1, 2, 4 worker processes (+ one API process) against the simulator at
 * --latency ms per call; domains/s against Little's law (calls in flight × batch ÷ latency). The workloads
 * carry the same number of domains (K × 50, K = --callbacks-per-worker × workers): 50-domain callbacks, the
 * seed mix (callbacks of 1, 10, 49 and 50 domains in rotation) and 1-domain callbacks. Workers pack a call
 * from every job they hold (src/pipeline/call-packer.ts), so the only packing bound left is a full call
 * (entries per call = batch size, 100 %); ENTRIES/CALL and SLOT USE show how close each run came.
 *
 * Each run first sends a tenth of its callbacks through the freshly started processes and waits until they are
 * done, uncounted (the ledger is emptied after it, the inventory kept): a service runs for days, while a
 * process spawned a second before runs its first seconds in unoptimised code.
 *
 * Where the limit is above what this machine can do (1-domain callbacks: every domain is a whole callback,
 * HTTP request, ledger write, publish and job), the same run is repeated with CEILING_CONCURRENCY calls in
 * flight per worker, so the calls are no longer the bound and only the machine is. The ceiling is the better
 * of the two runs (on a slower machine more, smaller calls cost more per domain, and the 16-calls run did
 * less than the run itself), and OF CEILING sets the run against the lower of the limit and that ceiling.
 */
import type { SimulatorStats } from '../../src/simulator/server.js';
import { formatTable } from '../../scripts/cli.js';
import { seedInventory } from '../../test/helpers/env.js';
import type { E2eWorkloadName } from '../options.js';
import { deletedTwice, resetSimulator, type BenchContext, type BenchSection } from '../context.js';
import { busyShare, cpuMs, machineCpu } from '../proc-stats.js';
import { errorCell, num, pct } from '../report.js';
import { DOMAINS_PER_CALLBACK, SEED_MIX, callbacksFor, postCallbacks } from '../workload.js';

/** The workloads of the section: a name for the table and the callback sizes in rotation. */
export const E2E_WORKLOADS = [
  { name: '50-domain', sizes: [DOMAINS_PER_CALLBACK], ceiling: false },
  { name: 'seed mix', sizes: [...SEED_MIX], ceiling: false },
  { name: '1-domain', sizes: [1], ceiling: true },
] as const satisfies readonly { name: E2eWorkloadName; sizes: readonly number[]; ceiling: boolean }[];

/** Calls in flight per worker for a ceiling run: enough that the machine, not the calls, is the bound. */
const CEILING_CONCURRENCY = 16;
/** Share of a run's callbacks sent first, uncounted, to warm up the processes it just started. */
const WARMUP_SHARE = 0.1;

export interface E2eRow {
  workload: E2eWorkloadName; callbackSizes: readonly number[];
  workers: number; batchSize: number; concurrency: number; callbacks: number; domains: number; elapsedSec: number; domainsPerSec: number; steadyPerSec: number;
  maxConcurrentCalls: number; machineCpuPercent: number; workerCpuPercent: number;
  littleLimit: number; littleShare: number; calls: number; entriesPerCall: number; slotUse: number;
  succeeded: number; lost: number; deletedTwice: number; unauthorized: number; tokenFetches: number; ledger: Record<string, number>;
  /** The same run with CEILING_CONCURRENCY calls in flight per worker (what the machine can do), where measured. */
  ceiling?: E2eRow | { error: string };
}
export type E2eRun = E2eRow | { workload: E2eWorkloadName; workers: number; batchSize: number; error: string };
export interface E2eResult { latencyMs: number; secplatConcurrency: number; amqpPrefetch: number; runs: E2eRun[] }

/** Domains/s over the middle 80 % of the domains, without the ramp-up and the last wave. */
async function steadyPerSec(ctx: BenchContext, domains: number): Promise<number> {
  const { rows: [mid] } = await ctx.bench.db.query<{ p10: number; p90: number }>(
    `SELECT extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY finished_at)) * 1000 AS p10,
            extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY finished_at)) * 1000 AS p90 FROM batch_domain`);
  return (0.8 * domains) / ((Number(mid!.p90) - Number(mid!.p10)) / 1000);
}

interface Measured { workload: E2eWorkloadName; callbackSizes: readonly number[]; workers: number; batchSize: number; concurrency: number; callbacks: number; domains: number; t0: number; last: number; wallMs: number; machinePct: number; workerCpuMs: number; stats: SimulatorStats; counts: Record<string, number> }

/** The row's figures from what one run measured. */
async function figures(ctx: BenchContext, m: Measured): Promise<E2eRow> {
  const elapsedSec = (m.last - m.t0) / 1000;
  const inFlight = m.workers * m.concurrency;
  const littleLimit = (inFlight * m.batchSize) / (ctx.plan.latencyMs / 1000);
  const domainsPerSec = m.domains / elapsedSec;
  const succeeded = m.counts.succeeded ?? 0;
  return {
    workload: m.workload, callbackSizes: m.callbackSizes, workers: m.workers, batchSize: m.batchSize, concurrency: m.concurrency, callbacks: m.callbacks, domains: m.domains, elapsedSec, domainsPerSec,
    littleLimit, littleShare: domainsPerSec / littleLimit, steadyPerSec: await steadyPerSec(ctx, m.domains),
    maxConcurrentCalls: m.stats.maxConcurrentDeletes, machineCpuPercent: m.machinePct, workerCpuPercent: (m.workerCpuMs / m.wallMs) * 100,
    calls: m.stats.deleteCalls, entriesPerCall: m.stats.entriesReceived / m.stats.deleteCalls,
    slotUse: (m.stats.deleteCalls * ctx.plan.latencyMs / 1000) / (elapsedSec * inFlight),
    succeeded, lost: m.domains - succeeded, deletedTwice: deletedTwice(m.stats),
    unauthorized: m.stats.unauthorized, tokenFetches: m.stats.tokenFetches, ledger: m.counts,
  };
}

/** Callbacks posted at once: enough that 1-domain callbacks arrive faster than 4 workers drain them. */
const postConcurrency = (sizes: readonly number[]) => (Math.min(...sizes) < 10 ? 32 : 8);

/**
 * One end-to-end run: `callbacks` callbacks (of `workload`'s sizes in rotation; 50 domains each by default)
 * through `workers` worker processes with this batch size and `concurrency` calls in flight per worker.
 */
export async function runE2e(ctx: BenchContext, workers: number, batchSize: number, callbacks: number,
  workload: (typeof E2E_WORKLOADS)[number] = E2E_WORKLOADS[0], concurrency = ctx.base.secplatConcurrency): Promise<E2eRow> {
  await ctx.bench.truncate();
  resetSimulator(ctx);
  const w = ctx.makeWorkload(callbacks, workload.sizes);
  const warmup = ctx.makeWorkload(Math.ceil(callbacks * WARMUP_SHARE), workload.sizes);
  await seedInventory(ctx.bench.db, [...warmup.domains, ...w.domains], undefined, { analyze: true });
  const expectedSec = w.domains.length / (workers * concurrency * batchSize / (ctx.plan.latencyMs / 1000));
  const slug = workload.name.replace(/[^a-z0-9]+/g, '');
  return ctx.scenario(`e2e-${slug}-w${workers}-b${batchSize}-c${concurrency}`, { SECPLAT_BATCH_SIZE: String(batchSize), SECPLAT_CONCURRENCY: String(concurrency) }, async (s) => {
    const api = await s.start('api', 'api');
    const ws = await s.startWorkers(workers);
    await postCallbacks(api.url, ctx.callbackToken, warmup.bodies, postConcurrency(workload.sizes));
    await ctx.bench.waitDone(warmup.domains.length, Math.max(120_000, expectedSec * 5000));
    await ctx.bench.truncate({ keepInventory: true });
    ctx.sim.resetStats(); // not its token: the workers go on with the one they fetched in the warm-up
    const workerCpu = () => ws.reduce((sum, x) => sum + (cpuMs(x.pid) ?? 0), 0);
    const cpu0 = { machine: machineCpu(), workers: workerCpu() };
    const t0 = Date.now();
    await postCallbacks(api.url, ctx.callbackToken, w.bodies, postConcurrency(workload.sizes));
    const last = await ctx.bench.waitDone(w.domains.length, Math.max(120_000, expectedSec * 5000));
    const cpu1 = { machine: machineCpu(), workers: workerCpu() };
    const lost = await ctx.bench.notSucceeded();
    if (lost.length > 0) ctx.log(`e2e: domains not succeeded, e.g. ${JSON.stringify(lost)}`);
    return figures(ctx, {
      workload: workload.name, callbackSizes: workload.sizes, workers, batchSize, concurrency, callbacks, domains: w.domains.length, t0, last, wallMs: Date.now() - t0,
      machinePct: busyShare(cpu0.machine, cpu1.machine) * 100, workerCpuMs: cpu1.workers - cpu0.workers,
      stats: ctx.sim.stats(), counts: await ctx.bench.statusCounts(),
    });
  });
}

async function run(ctx: BenchContext): Promise<E2eResult> {
  const { plan, base } = ctx;
  const batch = base.secplatBatchSize;
  const rows: E2eRun[] = [];
  for (const workers of plan.workers) {
    // Every workload carries (about) the domains of the 50-domain run: K × 50.
    const domains = plan.callbacksPerWorker * workers * DOMAINS_PER_CALLBACK;
    for (const wl of E2E_WORKLOADS.filter((x) => plan.e2eWorkloads.includes(x.name))) {
      const callbacks = callbacksFor(domains, wl.sizes);
      ctx.log(`e2e: ${wl.name}, ${workers} worker(s), batch ${batch}, ${callbacks} callbacks of ${wl.sizes.join('/')} domains, ${plan.latencyMs} ms per call`);
      try {
        const row = await runE2e(ctx, workers, batch, callbacks, wl);
        if (wl.ceiling) {
          ctx.log(`e2e ceiling: the same with ${CEILING_CONCURRENCY} calls in flight per worker`);
          row.ceiling = await runE2e(ctx, workers, batch, callbacks, wl, CEILING_CONCURRENCY).catch((err: Error) => ({ error: err.message }));
        }
        rows.push(row);
      } catch (err) {
        rows.push({ workload: wl.name, workers, batchSize: batch, error: (err as Error).message });
        ctx.log(`e2e failed: ${(err as Error).message}`);
      }
    }
  }
  return { latencyMs: plan.latencyMs, secplatConcurrency: base.secplatConcurrency, amqpPrefetch: base.amqpPrefetch, runs: rows };
}

/** domains/s against the lower of the limit and the machine's ceiling, when a ceiling was measured. */
const ceilingCells = (x: E2eRow): (string | number)[] => {
  if (!x.ceiling) return ['', ''];
  if ('error' in x.ceiling) return [errorCell(x.ceiling.error), ''];
  const ceiling = Math.max(x.domainsPerSec, x.ceiling.domainsPerSec);
  return [num(ceiling, 1), pct(x.domainsPerSec / Math.min(x.littleLimit, ceiling))];
};

function render(r: E2eResult): string[] {
  const rows = r.runs.filter((x): x is E2eRow => !('error' in x));
  const ceilings = rows.flatMap((x) => (x.ceiling && !('error' in x.ceiling) ? [x.ceiling] : []));
  return [
    `END TO END  (the same K × 50 domains as 50-domain callbacks, the seed mix of 1/10/49/50-domain callbacks, or 1-domain callbacks; simulator ${r.latencyMs} ms per call, `
      + `${r.secplatConcurrency} calls in flight per worker; limit = calls in flight × batch ÷ latency; calls packed across jobs, so the packing bound is a full call = 100 %; `
      + `ceiling = the better of this run and the same with ${CEILING_CONCURRENCY} calls in flight per worker, i.e. what this machine can do; of ceiling = domains/s ÷ the lower of limit and ceiling; `
      + `each run after an uncounted warm-up of a tenth of its callbacks)`,
    formatTable(['workload', 'workers', 'batch', 'callbacks', 'domains', 'seconds', 'domains/s', 'limit/s', 'of limit', 'steady/s', 'steady of limit', 'entries/call', 'slot use', 'machine CPU',
      'ceiling/s', 'of ceiling', 'lost', 'twice', '401s', 'token fetches'],
    r.runs.map((x) => ('error' in x
      ? [x.workload, x.workers, x.batchSize, errorCell(x.error)]
      : [x.workload, x.workers, x.batchSize, num(x.callbacks), num(x.domains), num(x.elapsedSec, 1), num(x.domainsPerSec, 1), num(x.littleLimit), pct(x.littleShare), num(x.steadyPerSec, 1),
        pct(x.steadyPerSec / x.littleLimit), num(x.entriesPerCall, 1), pct(x.slotUse), `${num(x.machineCpuPercent)} %`,
        ...ceilingCells(x), num(x.lost), num(x.deletedTwice), num(x.unauthorized), num(x.tokenFetches)]))),
    ...(ceilings.length === 0 ? [] : [
      '',
      `CEILING RUNS  (the same workload and workers, ${CEILING_CONCURRENCY} calls in flight per worker)`,
      formatTable(['workload', 'workers', 'domains', 'seconds', 'domains/s', 'limit/s', 'entries/call', 'machine CPU', 'lost', 'twice'],
        ceilings.map((c) => [c.workload, c.workers, num(c.domains), num(c.elapsedSec, 1), num(c.domainsPerSec, 1), num(c.littleLimit), num(c.entriesPerCall, 1),
          `${num(c.machineCpuPercent)} %`, num(c.lost), num(c.deletedTwice)])),
    ]),
  ];
}

export const e2e: BenchSection<E2eResult> = { name: 'e2e', run, render };
