/**
 * MEMORY: RSS (/proc/<pid>/status VmRSS) of one worker process at start and while it works through N
 * domains, with the simulator at 0 ms so the worker is CPU-bound; then once more after it has idled.
 */
import { formatTable } from '../../scripts/cli.js';
import { sleep } from '../../src/lib/timing.js';
import { seedInventory } from '../../test/helpers/env.js';
import { deletedTwice, resetSimulator, type BenchContext, type BenchSection } from '../context.js';
import { rssKb } from '../proc-stats.js';
import { mb, num, pct } from '../report.js';
import { round } from '../stats.js';
import { DOMAINS_PER_CALLBACK, postCallbacks } from '../workload.js';

interface Sample { sec: number; done: number; rssKb: number }
interface MemoryFigures {
  domains: number; latencyMs: number; elapsedSec: number; domainsPerSec: number;
  startKb: number; at10Kb: number; at50Kb: number; endKb: number; maxKb: number; idleAfterKb: number; changeEndVs10: number; changeEndVsStart: number;
  succeeded: number; lost: number; deletedTwice: number; samples: Sample[];
}
export type MemoryResult = { error: string } | MemoryFigures;

/** Samples the worker's RSS and the finished count every second until all `n` domains are done. */
async function sample(ctx: BenchContext, pid: number, n: number, posting: Promise<Error | undefined>, t0: number): Promise<Sample[]> {
  const samples: Sample[] = [];
  let lastLog = 0;
  for (;;) {
    const done = await ctx.bench.finishedCount();
    samples.push({ sec: round((Date.now() - t0) / 1000, 1), done, rssKb: rssKb(pid) ?? NaN });
    if (Date.now() - lastLog > 15_000) {
      ctx.log(`memory: ${done}/${n} domains, worker RSS ${round(samples.at(-1)!.rssKb / 1024)} MB`);
      lastLog = Date.now();
    }
    if (done >= n) return samples;
    const failed = await Promise.race([posting, sleep(0).then(() => undefined)]);
    if (failed) throw failed;
    if (Date.now() - t0 > 900_000) throw new Error(`memory run timed out at ${done}/${n} domains`);
    await sleep(1000);
  }
}

async function measure(ctx: BenchContext, n: number): Promise<MemoryFigures> {
  const w = ctx.makeWorkload(n / DOMAINS_PER_CALLBACK);
  await seedInventory(ctx.bench.db, w.domains, undefined, { analyze: true });
  return ctx.scenario('memory', {}, async (s) => {
    const api = await s.start('api', 'api');
    const [worker] = await s.startWorkers(1);
    await sleep(2000); // let the idle worker settle before its first reading
    const pid = worker!.pid;
    const startKb = rssKb(pid)!;
    const t0 = Date.now();
    const posting = postCallbacks(api.url, ctx.callbackToken, w.bodies, 4).then(() => undefined, (err: unknown) => err as Error);
    const samples = await sample(ctx, pid, n, posting, t0);
    const postError = await posting;
    if (postError) throw postError;
    const last = await ctx.bench.waitDone(n, 60_000);
    const endKb = rssKb(pid)!;
    await sleep(3000); // what it holds once idle again
    const idleKb = rssKb(pid)!;
    const at = (share: number) => samples.find((x) => x.done >= share * n)?.rssKb ?? NaN;
    const counts = await ctx.bench.statusCounts();
    return {
      domains: n, latencyMs: ctx.plan.memoryLatencyMs, elapsedSec: (last - t0) / 1000, domainsPerSec: n / ((last - t0) / 1000),
      startKb, at10Kb: at(0.1), at50Kb: at(0.5), endKb, maxKb: Math.max(...samples.map((x) => x.rssKb)), idleAfterKb: idleKb,
      changeEndVs10: endKb / at(0.1) - 1, changeEndVsStart: endKb / startKb - 1,
      succeeded: counts.succeeded ?? 0, lost: n - (counts.succeeded ?? 0), deletedTwice: deletedTwice(ctx.sim.stats()), samples,
    };
  });
}

async function run(ctx: BenchContext): Promise<MemoryResult> {
  const n = Math.ceil(ctx.plan.memoryDomains / DOMAINS_PER_CALLBACK) * DOMAINS_PER_CALLBACK;
  ctx.log(`memory: one worker through ${n} domains (simulator latency ${ctx.plan.memoryLatencyMs} ms, so the worker is the bottleneck)`);
  try {
    await ctx.bench.truncate();
    resetSimulator(ctx, { latencyMs: ctx.plan.memoryLatencyMs });
    return await measure(ctx, n);
  } catch (err) {
    ctx.log(`memory failed: ${(err as Error).message}`);
    return { error: (err as Error).message };
  }
}

function render(m: MemoryResult): string[] {
  if ('error' in m) return ['MEMORY', `ERROR: ${m.error}`];
  const r = m;
  return [
    `MEMORY  (one worker process, VmRSS in MB; simulator latency ${num(r.latencyMs)} ms, so the worker is CPU-bound)`,
    formatTable(['domains', 'domains/s', 'start', 'at 10 %', 'at 50 %', 'end', 'max', 'idle after', 'end vs 10 %', 'end vs start', 'lost'], [
      [num(r.domains), num(r.domainsPerSec), mb(r.startKb), mb(r.at10Kb), mb(r.at50Kb), mb(r.endKb), mb(r.maxKb), mb(r.idleAfterKb), pct(r.changeEndVs10), pct(r.changeEndVsStart), num(r.lost)],
    ]),
  ];
}

export const memory: BenchSection<MemoryResult> = { name: 'memory', run, render };
