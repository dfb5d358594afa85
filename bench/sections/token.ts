/**
 * TOKEN ECONOMY: token fetches for 1..8 workers with a token lifetime shorter than the run and external
 * invalidations (another client taking the token); every fetch after the first must have a cause: the
 * token reached its refresh window, or someone else's fetch had just invalidated ours.
 */
import { formatTable } from '../../scripts/cli.js';
import { sleep } from '../../src/lib/timing.js';
import { seedInventory } from '../../test/helpers/env.js';
import { deletedTwice, resetSimulator, type BenchContext, type BenchSection } from '../context.js';
import { errorCell, num } from '../report.js';
import { round } from '../stats.js';
import { postCallbacks, type Workload } from '../workload.js';

export type TokenRun = { workers: number; error: string } | ({ workers: number } & Record<string, unknown>);
export interface TokenResult {
  tokenTtlSec: number; tokenRefreshBeforeMs: number; tokenMinFetchIntervalMs: number; callbacksPerSec: number; seconds: number; latencyMs: number; runs: TokenRun[];
}

/** Sorts every fetch after the first by its cause; `uncaused` must stay 0. */
export function classifyFetches(fetchTimes: number[], invalidations: number[], ttlMs: number, refreshBeforeMs: number) {
  let aged = 0;
  let afterInvalidation = 0;
  let uncaused = 0;
  for (let i = 1; i < fetchTimes.length; i++) {
    const prev = fetchTimes[i - 1]!;
    const cur = fetchTimes[i]!;
    if (invalidations.some((t) => t > prev && t <= cur)) afterInvalidation += 1;
    else if (cur >= prev + ttlMs - refreshBeforeMs - 50) aged += 1;
    else uncaused += 1;
  }
  return { aged, afterInvalidation, uncaused };
}

/** Callbacks at a steady rate (so every worker count works over the same stretch of time) while the token gets taken at the planned moments. */
async function drive(ctx: BenchContext, url: string, w: Workload, t0: number): Promise<{ invalidations: number[]; last: number }> {
  const p = ctx.plan;
  const invalidations: number[] = [];
  const timers = p.tokenInvalidateAt.map((f) => setTimeout(() => {
    invalidations.push(Date.now());
    ctx.sim.invalidateToken();
  }, f * p.tokenSeconds * 1000));
  try {
    const posts: Promise<unknown>[] = [];
    for (let i = 0; i < w.bodies.length; i++) {
      await sleep(Math.max(0, t0 + (i * 1000) / p.tokenCallbacksPerSec - Date.now()));
      posts.push(postCallbacks(url, ctx.callbackToken, [w.bodies[i]!], 1).then(() => undefined, (err: unknown) => err));
    }
    const postError = (await Promise.all(posts)).find((e) => e !== undefined);
    if (postError) throw postError;
    const last = await ctx.bench.waitDone(w.domains.length, 180_000);
    return { invalidations, last };
  } finally {
    timers.forEach(clearTimeout);
  }
}

async function runWorkers(ctx: BenchContext, workers: number): Promise<TokenRun> {
  const p = ctx.plan;
  await ctx.bench.truncate();
  resetSimulator(ctx, { tokenTtlSec: p.tokenTtlSec });
  const w = ctx.makeWorkload(p.tokenCallbacksPerSec * p.tokenSeconds);
  await seedInventory(ctx.bench.db, w.domains, undefined, { analyze: true });
  return ctx.scenario(`token-w${workers}`, { TOKEN_REFRESH_BEFORE_MS: String(p.tokenRefreshBeforeMs) }, async (s) => {
    const api = await s.start('api', 'api');
    await s.startWorkers(workers);
    const t0 = Date.now();
    const { invalidations, last } = await drive(ctx, api.url, w, t0);
    const stats = ctx.sim.stats();
    const counts = await ctx.bench.statusCounts();
    const fetchTimes = [...stats.tokenRequestTimes].sort((a, b) => a - b);
    const c = classifyFetches(fetchTimes, invalidations, p.tokenTtlSec * 1000, p.tokenRefreshBeforeMs);
    return {
      workers, runSec: (last - t0) / 1000, domains: w.domains.length, tokenFetches: stats.tokenFetches, tokenRequests: fetchTimes.length,
      invalidations: stats.externalInvalidations, refreshWindowsReached: c.aged, fetchesAfterInvalidation: c.afterInvalidation,
      uncausedFetches: c.uncaused, bound: 1 + c.aged + stats.externalInvalidations, unauthorized: stats.unauthorized,
      succeeded: counts.succeeded ?? 0, lost: w.domains.length - (counts.succeeded ?? 0), deletedTwice: deletedTwice(stats), ledger: counts,
      fetchOffsetsSec: fetchTimes.map((t) => round((t - t0) / 1000, 2)), invalidationOffsetsSec: invalidations.map((t) => round((t - t0) / 1000, 2)),
    };
  });
}

async function run(ctx: BenchContext): Promise<TokenResult> {
  const p = ctx.plan;
  const runs: TokenRun[] = [];
  for (const workers of p.tokenWorkers) {
    ctx.log(`token: ${workers} worker(s), ${p.tokenCallbacksPerSec * p.tokenSeconds} callbacks over ${p.tokenSeconds} s, token lifetime ${p.tokenTtlSec} s, ${p.tokenInvalidateAt.length} invalidation(s)`);
    try {
      runs.push(await runWorkers(ctx, workers));
    } catch (err) {
      runs.push({ workers, error: (err as Error).message });
      ctx.log(`token run failed: ${(err as Error).message}`);
    }
  }
  return {
    tokenTtlSec: p.tokenTtlSec, tokenRefreshBeforeMs: p.tokenRefreshBeforeMs, tokenMinFetchIntervalMs: ctx.base.tokenMinFetchIntervalMs,
    callbacksPerSec: p.tokenCallbacksPerSec, seconds: p.tokenSeconds, latencyMs: p.latencyMs, runs,
  };
}

function render(r: TokenResult): string[] {
  return [
    `TOKEN ECONOMY  (token lifetime ${r.tokenTtlSec} s, refreshed ${r.tokenRefreshBeforeMs / 1000} s before expiry, callbacks for ${r.seconds} s, external invalidations by another client; every fetch after the first needs a cause)`,
    formatTable(['workers', 'seconds', 'token fetches', 'invalidations', 'lifetimes ended', '1 + ended + invalidations', 'uncaused fetches', '401s', 'domains', 'lost', 'twice'],
      r.runs.map((x) => ('error' in x
        ? [x.workers, errorCell(x.error)]
        : [x.workers, num(x.runSec, 1), num(x.tokenFetches), num(x.invalidations), num(x.refreshWindowsReached), num(x.bound), num(x.uncausedFetches),
          num(x.unauthorized), num(x.domains), num(x.lost), num(x.deletedTwice)]))),
  ];
}

export const token: BenchSection<TokenResult> = { name: 'token', run, render };
