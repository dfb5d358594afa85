/**
 * BASELINE: the same workload through a "seed-style" strategy (token per job, one call in flight, no retry;
 * bench/seed-style.ts) against the same simulator, with as many jobs at once as we have calls in flight,
 * beside ours (the end-to-end run with the same worker count, reused when that section ran).
 */
import { formatTable } from '../../scripts/cli.js';
import { deletedTwice, resetSimulator, type BenchContext, type BenchSection } from '../context.js';
import { runJsonChild } from '../json-child.js';
import { num } from '../report.js';
import type { SeedStyleConfig, SeedStyleResult } from '../seed-style.js';
import { DOMAINS_PER_CALLBACK } from '../workload.js';
import { runE2e, type E2eResult, type E2eRow } from './e2e.js';

type SeedStyleRow = SeedStyleResult & { domainsPerSec: number; deletedPerSec: number; simTokenFetches: number; simUnauthorized: number; deletedTwice: number };
export type BaselineResult = { error: string } | {
  workload: { callbacks: number; domainsPerCallback: number; latencyMs: number; batchSize: number; callsInFlight: number };
  seedStyle: SeedStyleRow;
  ours: E2eRow;
};

async function ours(ctx: BenchContext, earlier: Record<string, unknown>, workers: number, callbacks: number): Promise<E2eRow> {
  const e2e = earlier.e2e as E2eResult | undefined;
  const done = e2e?.runs.find((r): r is E2eRow => 'domainsPerSec' in r && r.workload === '50-domain' && r.workers === workers && r.batchSize === ctx.base.secplatBatchSize);
  if (done) return done;
  ctx.log(`baseline: first ours, ${workers} worker(s), ${callbacks} callbacks`);
  return runE2e(ctx, workers, ctx.base.secplatBatchSize, callbacks);
}

async function seedStyle(ctx: BenchContext, callbacks: number, concurrency: number): Promise<SeedStyleRow> {
  const { base } = ctx;
  ctx.log(`baseline: seed-style, ${concurrency} jobs at once (= our ${concurrency} calls in flight), ${callbacks} callbacks × ${DOMAINS_PER_CALLBACK}`);
  resetSimulator(ctx);
  const seed = await runJsonChild<SeedStyleResult>('seed-style baseline', 'bench/seed-style.ts', {
    simUrl: ctx.simUrl, clientId: base.secplatClientId, username: base.secplatUsername, password: ctx.secplatPassword, jobs: callbacks,
    domainsPerJob: DOMAINS_PER_CALLBACK, batchSize: base.secplatBatchSize, concurrency, tag: `${ctx.tag}b`,
  } satisfies SeedStyleConfig, 600_000);
  const stats = ctx.sim.stats();
  const sec = seed.elapsedMs / 1000;
  return { ...seed, domainsPerSec: seed.domains / sec, deletedPerSec: seed.deleted / sec, simTokenFetches: stats.tokenFetches, simUnauthorized: stats.unauthorized, deletedTwice: deletedTwice(stats) };
}

async function run(ctx: BenchContext, earlier: Record<string, unknown>): Promise<BaselineResult> {
  const { plan, base } = ctx;
  const workers = plan.workers.includes(2) ? 2 : plan.workers[0]!;
  const callbacks = plan.callbacksPerWorker * workers;
  const concurrency = workers * base.secplatConcurrency;
  try {
    const row = await ours(ctx, earlier, workers, callbacks);
    return {
      workload: { callbacks, domainsPerCallback: DOMAINS_PER_CALLBACK, latencyMs: plan.latencyMs, batchSize: base.secplatBatchSize, callsInFlight: concurrency },
      seedStyle: await seedStyle(ctx, callbacks, concurrency),
      ours: row,
    };
  } catch (err) {
    ctx.log(`baseline failed: ${(err as Error).message}`);
    return { error: (err as Error).message };
  }
}

function render(r: BaselineResult): string[] {
  const out = ['BASELINE  (same workload and simulator; seed-style = token per job, one call in flight per job, no retry)'];
  if ('error' in r) return [...out, `ERROR: ${r.error}`];
  const { seedStyle: s, ours: o, workload: w } = r;
  out.push(`${w.callbacks} callbacks × ${w.domainsPerCallback} domains, ${w.callsInFlight} calls in flight, batch ${w.batchSize}, ${w.latencyMs} ms per call`);
  out.push(formatTable(['strategy', 'domains', 'seconds', 'deleted/s', 'token fetches', '401s', 'domains lost', 'deleted twice'], [
    ['seed-style', num(s.domains), num(s.elapsedMs / 1000, 1), num(s.deletedPerSec, 1), num(s.simTokenFetches), num(s.simUnauthorized), num(s.lost), num(s.deletedTwice)],
    [`ours (${o.workers} workers)`, num(o.domains), num(o.elapsedSec, 1), num(o.succeeded / o.elapsedSec, 1), num(o.tokenFetches), num(o.unauthorized), num(o.lost), num(o.deletedTwice)],
  ]));
  return out;
}

export const baseline: BenchSection<BaselineResult> = { name: 'baseline', run, render };
