/**
 * `npm run bench`: the service's figures, measured side by side in one run (so ratios hold on a noisy
 * machine), printed as tables and written to bench/results/<timestamp>.json.
 *
 *   ingest    fifty-domain callbacks against a spawned API process (ROLE=api) from a separate load-generator
 *             process; the same with RabbitMQ unreachable (ledger-only path); and the PostgreSQL ceiling: the
 *             same rows in the same transaction shape written by a pg client alone, same concurrency.
 *   e2e       K callbacks × 50 domains through 1, 2, 4 worker processes (+ one API process) against the
 *             simulator at 400 ms per call; domains/s against Little's law (calls in flight × batch ÷ latency).
 *   token     token fetches for 1..8 workers with a token lifetime shorter than the run and external
 *             invalidations; every fetch after the first must have a cause (expiry window or invalidation).
 *   baseline  the same workload through a "seed-style" strategy (token per job, one call in flight, no
 *             retry; scripts/bench/seed-style.ts) against the same simulator, beside ours.
 *   memory    RSS (/proc/<pid>/status VmRSS) of one worker process at start and while it works through N domains.
 *
 * Every scenario has its own AMQP_PREFIX and REDIS_KEY_PREFIX (deleted afterwards); all use one dedicated
 * database pcp_bench_<random>, migrated by the first service start and dropped at the end. Services run with
 * their production defaults (synchronous commit, publisher confirms, LOG_LEVEL=info); knobs such as
 * SECPLAT_CONCURRENCY, SECPLAT_BATCH_SIZE, AMQP_PREFETCH and DATABASE_POOL_SIZE are taken from this
 * process's environment, as the service would. Timings are figures, never pass/fail: the exit code only
 * says whether the bench itself ran.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError, Option } from 'commander';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import type { SimulatorStats } from '../src/simulator/server.js';
import { createProgram, formatTable, integer, runCli } from './cli.js';
import type { LoadConfig, LoadResult } from './bench/load.js';
import type { SeedStyleConfig, SeedStyleResult } from './bench/seed-style.js';
import {
  BenchDb, ROOT, callbackBody, cleanupNames, closedPort, cpuMs, killAllChildren, machineCpu, postCallbacks, rand, round,
  rssKb, runJsonChild, seedInventory, sleep, spawnTsx, startService, type Child,
} from './bench/support.js';

const SECTIONS = ['ingest', 'e2e', 'token', 'baseline', 'memory'] as const;
type Section = (typeof SECTIONS)[number];
const DOMAINS_PER_CALLBACK = 50;

const intList = (value: string): number[] => {
  const list = value.split(',').map((v) => Number(v.trim()));
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n < 1 || n > 16)) throw new InvalidArgumentError('must be a comma-separated list of integers from 1 to 16.');
  return list;
};
const sectionList = (value: string): Section[] => {
  const list = value.split(',').map((v) => v.trim());
  const bad = list.filter((s) => !(SECTIONS as readonly string[]).includes(s));
  if (bad.length) throw new InvalidArgumentError(`unknown section(s) ${bad.join(', ')}; choose from ${SECTIONS.join(', ')}.`);
  return list as Section[];
};

const program = createProgram('bench', 'Measures ingest, end-to-end throughput, token economy, a seed-style baseline and worker memory; prints tables and writes bench/results/<timestamp>.json.')
  .option('--quick', 'a short run (about 2 minutes): shorter windows, fewer callbacks, fewer token runs, 10k-domain memory run', false)
  .option('--only <sections>', `run only these sections (comma-separated: ${SECTIONS.join(', ')})`, sectionList)
  .option('--ingest-seconds <s>', 'measured window of each ingest run (default 15, quick 4)', integer(1, 600))
  .option('--ingest-concurrency <n>', 'requests (and ceiling transactions) in flight during ingest', integer(1, 512), 8)
  .option('--latency <ms>', 'simulated security-platform latency per delete call (e2e, token, baseline)', integer(1, 10_000), 400)
  .addOption(new Option('--workers <list>', 'worker process counts for end to end').argParser(intList).default([1, 2, 4], '1,2,4'))
  .option('--callbacks-per-worker <k>', 'end to end: K = this × workers callbacks of 50 domains (default 100, quick 10)', integer(1, 100_000))
  .option('--token-workers <list>', 'worker process counts for the token economy (default 1,2,4,8; quick 1,4)', intList)
  .option('--token-seconds <s>', 'how long callbacks keep arriving in each token run (default 30, quick 10)', integer(5, 600))
  .option('--memory-domains <n>', 'domains the memory run pushes through one worker (default 100000, quick 10000)', integer(1000, 10_000_000))
  .option('--out <dir>', 'where the JSON result goes', 'bench/results');

interface Options {
  quick: boolean; only?: Section[]; ingestSeconds?: number; ingestConcurrency: number; latency: number; workers: number[];
  callbacksPerWorker?: number; tokenWorkers?: number[]; tokenSeconds?: number; memoryDomains?: number; out: string;
}

/** Steers the simulator process through its admin endpoints. */
class Sim {
  constructor(readonly url: string, readonly child: Child) {}
  private async call<T>(method: string, p: string, body?: unknown): Promise<T> {
    const res = await fetch(`${this.url}/__sim${p}`, {
      method, ...(body ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}),
    });
    if (!res.ok) throw new Error(`simulator ${method} ${p} answered ${res.status}: ${await res.text()}`);
    return (res.status === 204 ? undefined : await res.json()) as T;
  }
  reset = () => this.call<void>('POST', '/reset');
  set = (options: Record<string, unknown>) => this.call<unknown>('PATCH', '/options', options);
  stats = () => this.call<SimulatorStats>('GET', '/stats');
  invalidate = () => this.call<void>('POST', '/invalidate');
}

type Service = Child & { url: string };
interface ScenarioRun { env: Record<string, string>; start(role: 'api' | 'worker', instance: string): Promise<Service>; procs: Service[] }
interface ProcNote { scenario: string; process: string; warnLines: number; errorLines: number; stopMs: number; killed: boolean; exitCode: number | null }

await runCli(async () => {
  const opts = program.parse().opts<Options>();
  const q = opts.quick;
  const plan = {
    sections: opts.only ?? [...SECTIONS],
    ingestSeconds: opts.ingestSeconds ?? (q ? 4 : 15),
    ingestWarmupSeconds: q ? 1 : 3,
    ingestConcurrency: opts.ingestConcurrency,
    latencyMs: opts.latency,
    workers: opts.workers,
    callbacksPerWorker: opts.callbacksPerWorker ?? (q ? 10 : 100),
    tokenWorkers: opts.tokenWorkers ?? (q ? [1, 4] : [1, 2, 4, 8]),
    tokenSeconds: opts.tokenSeconds ?? (q ? 10 : 30),
    tokenTtlSec: q ? 8 : 10,
    tokenRefreshBeforeMs: 2000,
    // When another client takes the token, as fractions of the arrival stretch (apart from the refresh points).
    tokenInvalidateAt: q ? [0.75] : [0.35, 0.75],
    tokenCallbacksPerSec: 2,
    memoryDomains: opts.memoryDomains ?? (q ? 10_000 : 100_000),
    memoryLatencyMs: 0,
  };
  const base = loadConfig(process.env, { CALLBACK_AUTH: 'none' });
  const tag = rand(3);
  const password = `bench-${rand(8)}`;
  const callbackToken = `bench-${rand(8)}`;
  const log = (s: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
  const startedAt = new Date();
  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;

  // What else keeps this machine busy (other test runs share it): CPU use over 2 s before anything starts.
  const idle0 = machineCpu();
  await sleep(2000);
  const idle1 = machineCpu();
  const backgroundCpuPercent = ((idle1.busy - idle0.busy) / (idle1.total - idle0.total)) * 100;
  const loadavgAtStart = os.loadavg();
  if (backgroundCpuPercent > 10) log(`note: the machine was already ${round(backgroundCpuPercent)} % busy before the bench started; figures will be lower than on a quiet machine`);
  const bench = new BenchDb(base.databaseUrl);
  await bench.create();
  log(`database ${bench.name} created`);
  let sim: Sim | undefined;
  const interrupted = async () => {
    log('interrupted: stopping processes and dropping the database');
    killAllChildren();
    await bench.drop().catch(() => undefined);
    process.exit(130);
  };
  process.once('SIGINT', () => void interrupted());
  process.once('SIGTERM', () => void interrupted());
  process.on('exit', killAllChildren);

  const notes: ProcNote[] = [];
  const results: Record<string, unknown> = {};
  try {
    const { child, match } = await spawnTsx('simulator', 'scripts/simulator.ts', ['--port', '0', '--log-level', 'warn'], {
      env: { SECPLAT_PASSWORD: password }, ready: /listening on (http:\/\/\S+)/,
    });
    sim = new Sim(match[1]!, child);
    log(`simulator ${sim.url}`);

    const knobs = {
      SECPLAT_CONCURRENCY: String(base.secplatConcurrency), SECPLAT_BATCH_SIZE: String(base.secplatBatchSize),
      AMQP_PREFETCH: String(base.amqpPrefetch), DATABASE_POOL_SIZE: String(base.databasePoolSize),
    };
    const scenarioEnv = (name: string, extra: Record<string, string>): Record<string, string> => {
      const prefix = `pcpbench-${tag}-${name}`;
      return {
        DATABASE_URL: bench.url, REDIS_URL: base.redisUrl, RABBITMQ_URL: base.rabbitmqUrl, AMQP_PREFIX: prefix,
        REDIS_KEY_PREFIX: prefix, CALLBACK_TOKEN: callbackToken, SECPLAT_BASE_URL: sim!.url, SECPLAT_PASSWORD: password,
        PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', RETRY_TIERS_MS: base.retryTiersMs.join(','), ...knobs, ...extra,
      };
    };
    /** Runs fn with this scenario's names; stops its processes and deletes its queues and keys afterwards. */
    const scenario = async <T>(name: string, extra: Record<string, string>, fn: (s: ScenarioRun) => Promise<T>): Promise<T> => {
      const env = scenarioEnv(name, extra);
      const procs: Service[] = [];
      const run: ScenarioRun = {
        env, procs,
        async start(role, instance) {
          const s = await startService(instance, { ...env, ROLE: role });
          procs.push(s);
          return s;
        },
      };
      try {
        return await fn(run);
      } finally {
        const stops = await Promise.all(procs.map((p) => p.stop(10_000)));
        procs.forEach((p, i) => notes.push({
          scenario: name, process: p.name, warnLines: p.counts.warn ?? 0, errorLines: p.counts.error ?? 0,
          stopMs: stops[i]!.ms, killed: stops[i]!.killed, exitCode: stops[i]!.code,
        }));
        await cleanupNames(base.rabbitmqUrl, base.redisUrl, env).catch((err: Error) => log(`cleanup of ${name} failed: ${err.message}`));
      }
    };
    // The schema comes from the service itself: its start applies the migrations to the fresh database.
    await scenario('migrate', {}, (s) => s.start('api', 'migrate'));
    log('migrations applied by a service start');
    const startWorkers = (s: ScenarioRun, n: number) => Promise.all(Array.from({ length: n }, (_, i) => s.start('worker', `w${i + 1}`)));
    const simDefaults = { latencyMs: plan.latencyMs, tokenTtlSec: 3600, tokenLatencyMs: 0, errorRate: 0, failIds: [], failNextDeletes: 0, rejectCredentials: false };

    const domainsOf = (hex: string) => Array.from({ length: DOMAINS_PER_CALLBACK }, (_, i) => `d${i}.${hex}.bench.example.com`);
    let workloads = 0;
    /** `callbacks` bodies with fresh messageIds (pm + 32 hex) and their domains. */
    const makeWorkload = (callbacks: number) => {
      const run = `${tag}${(workloads++).toString(16).padStart(2, '0')}`;
      const ids = Array.from({ length: callbacks }, (_, i) => run + i.toString(16).padStart(24, '0'));
      return { domains: ids.flatMap(domainsOf), bodies: ids.map((hex) => callbackBody(`pm${hex}`, domainsOf(hex))) };
    };
    const ledger = async () => {
      const { rows } = await bench.db.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM batch_domain GROUP BY status');
      return Object.fromEntries(rows.map((r) => [r.status, r.n])) as Record<string, number>;
    };
    /** Waits until `expected` domains are in the ledger and none is open; returns when the last one finished. */
    const waitDone = async (expected: number, timeoutMs: number, pollMs = 200): Promise<number> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const { rows } = await bench.db.query<{ total: number; open: number; last: Date | null }>(
          `SELECT count(*)::int AS total, count(*) FILTER (WHERE status IN ('pending', 'in_progress', 'retryable'))::int AS open,
                  max(finished_at) AS last FROM batch_domain`);
        const r = rows[0]!;
        if (r.total >= expected && r.open === 0) return r.last!.getTime();
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s: ${r.open} of ${r.total} domains still open`);
        await sleep(pollMs);
      }
    };
    const deletedTwice = (s: SimulatorStats) => Object.values(s.deletedCounts).filter((n) => n > 1).length;

    // ---------------------------------------------------------------- ingest
    if (plan.sections.includes('ingest')) {
      const load = (extra: Partial<LoadConfig> & Pick<LoadConfig, 'mode'>) => runJsonChild<LoadResult>('load generator', 'scripts/bench/load.ts', {
        concurrency: plan.ingestConcurrency, warmupMs: plan.ingestWarmupSeconds * 1000, durationMs: plan.ingestSeconds * 1000,
        domainsPerCallback: DOMAINS_PER_CALLBACK, callbackToken, ...extra,
      } satisfies LoadConfig, (plan.ingestWarmupSeconds + plan.ingestSeconds) * 1000 + 120_000);
      const stored = async () => {
        const { rows } = await bench.db.query<{ batches: number; pending: number }>(
          'SELECT count(*)::int AS batches, count(*) FILTER (WHERE publish_pending)::int AS pending FROM batch');
        return rows[0]!;
      };
      const rows: Record<string, unknown>[] = [];
      const variants = [
        { name: 'api', label: 'API (ROLE=api), RabbitMQ up' },
        { name: 'pg-ceiling', label: 'PostgreSQL alone (ceiling)' },
        { name: 'api-no-rabbitmq', label: 'API, RabbitMQ unreachable' },
      ];
      for (const v of variants) {
        log(`ingest: ${v.label}, ${plan.ingestConcurrency} in flight, ${plan.ingestWarmupSeconds}+${plan.ingestSeconds} s`);
        try {
          if (v.name === 'pg-ceiling') {
            await bench.truncate();
            const r = await load({ mode: 'pg', databaseUrl: bench.url });
            const s = await stored();
            rows.push({ scenario: v.name, label: v.label, ...r, stored: s.batches, storedMatchesAcked: s.batches === r.okTotal });
            continue;
          }
          const extra: Record<string, string> = v.name === 'api-no-rabbitmq' ? { RABBITMQ_URL: `amqp://guest:guest@127.0.0.1:${await closedPort()}` } : {};
          const r = await scenario(`ingest-${v.name}`, extra, async (s) => {
            const api = await s.start('api', 'api');
            await bench.truncate();
            return load({ mode: 'http', url: api.url, watchPid: api.pid });
          });
          const s = await stored();
          rows.push({ scenario: v.name, label: v.label, ...r, stored: s.batches, storedMatchesAcked: s.batches === r.okTotal, publishPending: s.pending });
        } catch (err) {
          rows.push({ scenario: v.name, label: v.label, error: (err as Error).message });
          log(`ingest ${v.name} failed: ${(err as Error).message}`);
        }
      }
      const ceiling = rows.find((r) => r.scenario === 'pg-ceiling')?.perSec as number | undefined;
      for (const r of rows) if (ceiling && typeof r.perSec === 'number') r.ceilingShare = r.perSec / ceiling;
      results.ingest = { concurrency: plan.ingestConcurrency, warmupSeconds: plan.ingestWarmupSeconds, seconds: plan.ingestSeconds, domainsPerCallback: DOMAINS_PER_CALLBACK, runs: rows };
    }

    // ---------------------------------------------------------------- end to end
    interface E2eRow {
      workers: number; batchSize: number; callbacks: number; domains: number; elapsedSec: number; domainsPerSec: number; steadyPerSec: number; maxConcurrentCalls: number;
      machineCpuPercent: number; workerCpuPercent: number;
      littleLimit: number; littleShare: number; packingBound: number; calls: number; entriesPerCall: number; slotUse: number;
      succeeded: number; lost: number; deletedTwice: number; unauthorized: number; tokenFetches: number; ledger: Record<string, number>;
    }
    const e2eRows: (E2eRow | { workers: number; batchSize: number; error: string })[] = [];
    const runE2e = async (workers: number, batchSize: number, callbacks: number): Promise<E2eRow> => {
      await bench.truncate();
      await sim!.reset();
      await sim!.set(simDefaults);
      const w = makeWorkload(callbacks);
      await seedInventory(bench.db, w.domains);
      return scenario(`e2e-w${workers}-b${batchSize}`, { SECPLAT_BATCH_SIZE: String(batchSize) }, async (s) => {
        const api = await s.start('api', 'api');
        const ws = await startWorkers(s, workers);
        const cpu0 = { machine: machineCpu(), workers: ws.map((x) => cpuMs(x.pid) ?? 0) };
        const t0 = Date.now();
        await postCallbacks(api.url, callbackToken, w.bodies, 8);
        const last = await waitDone(w.domains.length, Math.max(120_000, (w.domains.length / (workers * base.secplatConcurrency * batchSize / (plan.latencyMs / 1000))) * 5000));
        const cpu1 = { machine: machineCpu(), workers: ws.map((x) => cpuMs(x.pid) ?? 0) };
        const wallMs = Date.now() - t0;
        const stats = await sim!.stats();
        const counts = await ledger();
        // Steady state: the middle 80 % of the domains, without the ramp-up and the last wave.
        const { rows: [mid] } = await bench.db.query<{ p10: number; p90: number }>(
          `SELECT extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY finished_at)) * 1000 AS p10,
                  extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY finished_at)) * 1000 AS p90 FROM batch_domain`);
        const elapsedSec = (last - t0) / 1000;
        const inFlight = workers * base.secplatConcurrency;
        const littleLimit = (inFlight * batchSize) / (plan.latencyMs / 1000);
        const domainsPerSec = w.domains.length / elapsedSec;
        return {
          workers, batchSize, callbacks, domains: w.domains.length, elapsedSec, domainsPerSec, littleLimit, littleShare: domainsPerSec / littleLimit,
          steadyPerSec: (0.8 * w.domains.length) / ((Number(mid!.p90) - Number(mid!.p10)) / 1000),
          maxConcurrentCalls: stats.maxConcurrentDeletes,
          machineCpuPercent: ((cpu1.machine.busy - cpu0.machine.busy) / (cpu1.machine.total - cpu0.machine.total)) * 100,
          workerCpuPercent: ((cpu1.workers.reduce((a, b) => a + b, 0) - cpu0.workers.reduce((a, b) => a + b, 0)) / wallMs) * 100,
          packingBound: DOMAINS_PER_CALLBACK / Math.ceil(DOMAINS_PER_CALLBACK / batchSize) / batchSize,
          calls: stats.deleteCalls, entriesPerCall: stats.entriesReceived / stats.deleteCalls,
          slotUse: (stats.deleteCalls * plan.latencyMs / 1000) / (elapsedSec * inFlight),
          succeeded: counts.succeeded ?? 0, lost: w.domains.length - (counts.succeeded ?? 0), deletedTwice: deletedTwice(stats),
          unauthorized: stats.unauthorized, tokenFetches: stats.tokenFetches, ledger: counts,
        };
      });
    };
    if (plan.sections.includes('e2e')) {
      const runs = plan.workers.map((w) => ({ workers: w, batch: base.secplatBatchSize }));
      // A batch size dividing 50 shows what the 50/20 chunking costs (20+20+10 = three calls per callback).
      const divisor = [25, 10, 50].find((b) => b !== base.secplatBatchSize && DOMAINS_PER_CALLBACK % base.secplatBatchSize !== 0);
      if (!q && divisor) runs.push({ workers: Math.max(...plan.workers), batch: divisor });
      for (const r of runs) {
        const callbacks = plan.callbacksPerWorker * r.workers;
        log(`e2e: ${r.workers} worker(s), batch ${r.batch}, ${callbacks} callbacks × ${DOMAINS_PER_CALLBACK}, ${plan.latencyMs} ms per call`);
        try {
          e2eRows.push(await runE2e(r.workers, r.batch, callbacks));
        } catch (err) {
          e2eRows.push({ workers: r.workers, batchSize: r.batch, error: (err as Error).message });
          log(`e2e failed: ${(err as Error).message}`);
        }
      }
      results.e2e = { latencyMs: plan.latencyMs, secplatConcurrency: base.secplatConcurrency, amqpPrefetch: base.amqpPrefetch, runs: e2eRows };
    }

    // ---------------------------------------------------------------- token economy
    if (plan.sections.includes('token')) {
      const rows: Record<string, unknown>[] = [];
      for (const workers of plan.tokenWorkers) {
        const callbacks = plan.tokenCallbacksPerSec * plan.tokenSeconds;
        log(`token: ${workers} worker(s), ${callbacks} callbacks over ${plan.tokenSeconds} s, token lifetime ${plan.tokenTtlSec} s, ${plan.tokenInvalidateAt.length} invalidation(s)`);
        try {
          await bench.truncate();
          await sim!.reset();
          await sim!.set({ ...simDefaults, tokenTtlSec: plan.tokenTtlSec });
          const w = makeWorkload(callbacks);
          await seedInventory(bench.db, w.domains);
          rows.push(await scenario(`token-w${workers}`, { TOKEN_REFRESH_BEFORE_MS: String(plan.tokenRefreshBeforeMs) }, async (s) => {
            const api = await s.start('api', 'api');
            await startWorkers(s, workers);
            const t0 = Date.now();
            const invalidations: number[] = [];
            const timers = plan.tokenInvalidateAt.map((f) => setTimeout(() => {
              invalidations.push(Date.now());
              sim!.invalidate().catch((err: Error) => log(`invalidation failed: ${err.message}`));
            }, f * plan.tokenSeconds * 1000));
            // Callbacks arrive at a steady rate, so every worker count works over the same stretch of time.
            const posts: Promise<unknown>[] = [];
            for (let i = 0; i < callbacks; i++) {
              await sleep(Math.max(0, t0 + (i * 1000) / plan.tokenCallbacksPerSec - Date.now()));
              posts.push(postCallbacks(api.url, callbackToken, [w.bodies[i]!], 1).then(() => undefined, (err: unknown) => err));
            }
            const postError = (await Promise.all(posts)).find((e) => e !== undefined);
            if (postError) throw postError;
            const last = await waitDone(w.domains.length, 180_000);
            timers.forEach(clearTimeout);
            const stats = await sim!.stats();
            const counts = await ledger();
            const fetchTimes = [...stats.tokenRequestTimes].sort((a, b) => a - b);
            let aged = 0;
            let afterInvalidation = 0;
            let uncaused = 0;
            for (let i = 1; i < fetchTimes.length; i++) {
              const prev = fetchTimes[i - 1]!;
              const cur = fetchTimes[i]!;
              if (invalidations.some((t) => t > prev && t <= cur)) afterInvalidation += 1;
              else if (cur >= prev + plan.tokenTtlSec * 1000 - plan.tokenRefreshBeforeMs - 50) aged += 1;
              else uncaused += 1;
            }
            return {
              workers, runSec: (last - t0) / 1000, domains: w.domains.length, tokenFetches: stats.tokenFetches, tokenRequests: fetchTimes.length,
              invalidations: stats.externalInvalidations, refreshWindowsReached: aged, fetchesAfterInvalidation: afterInvalidation,
              uncausedFetches: uncaused, bound: 1 + aged + stats.externalInvalidations, unauthorized: stats.unauthorized,
              succeeded: counts.succeeded ?? 0, lost: w.domains.length - (counts.succeeded ?? 0), deletedTwice: deletedTwice(stats),
              ledger: counts, fetchOffsetsSec: fetchTimes.map((t) => round((t - t0) / 1000, 2)), invalidationOffsetsSec: invalidations.map((t) => round((t - t0) / 1000, 2)),
            };
          }));
        } catch (err) {
          rows.push({ workers, error: (err as Error).message });
          log(`token run failed: ${(err as Error).message}`);
        }
      }
      results.token = {
        tokenTtlSec: plan.tokenTtlSec, tokenRefreshBeforeMs: plan.tokenRefreshBeforeMs, tokenMinFetchIntervalMs: base.tokenMinFetchIntervalMs,
        callbacksPerSec: plan.tokenCallbacksPerSec, seconds: plan.tokenSeconds, latencyMs: plan.latencyMs, runs: rows,
      };
    }

    // ---------------------------------------------------------------- baseline
    if (plan.sections.includes('baseline')) {
      const workers = plan.workers.includes(2) ? 2 : plan.workers[0]!;
      const callbacks = plan.callbacksPerWorker * workers;
      const concurrency = workers * base.secplatConcurrency;
      try {
        let ours = e2eRows.find((r): r is E2eRow => 'domainsPerSec' in r && r.workers === workers && r.batchSize === base.secplatBatchSize);
        if (!ours) {
          log(`baseline: first ours, ${workers} worker(s), ${callbacks} callbacks`);
          ours = await runE2e(workers, base.secplatBatchSize, callbacks);
        }
        log(`baseline: seed-style, ${concurrency} jobs at once (= our ${concurrency} calls in flight), ${callbacks} callbacks × ${DOMAINS_PER_CALLBACK}`);
        await sim!.reset();
        await sim!.set(simDefaults);
        const seed = await runJsonChild<SeedStyleResult>('seed-style baseline', 'scripts/bench/seed-style.ts', {
          simUrl: sim.url, clientId: base.secplatClientId, username: base.secplatUsername, password, jobs: callbacks,
          domainsPerJob: DOMAINS_PER_CALLBACK, batchSize: base.secplatBatchSize, concurrency, tag: `${tag}b`,
        } satisfies SeedStyleConfig, 600_000);
        const stats = await sim!.stats();
        results.baseline = {
          workload: { callbacks, domainsPerCallback: DOMAINS_PER_CALLBACK, latencyMs: plan.latencyMs, batchSize: base.secplatBatchSize, callsInFlight: concurrency },
          seedStyle: { ...seed, domainsPerSec: seed.domains / (seed.elapsedMs / 1000), deletedPerSec: seed.deleted / (seed.elapsedMs / 1000), simTokenFetches: stats.tokenFetches, simUnauthorized: stats.unauthorized, deletedTwice: deletedTwice(stats) },
          ours,
        };
      } catch (err) {
        results.baseline = { error: (err as Error).message };
        log(`baseline failed: ${(err as Error).message}`);
      }
    }

    // ---------------------------------------------------------------- memory
    if (plan.sections.includes('memory')) {
      const n = Math.ceil(plan.memoryDomains / DOMAINS_PER_CALLBACK) * DOMAINS_PER_CALLBACK;
      log(`memory: one worker through ${n} domains (simulator latency ${plan.memoryLatencyMs} ms, so the worker is the bottleneck)`);
      try {
        await bench.truncate();
        await sim!.reset();
        await sim!.set({ ...simDefaults, latencyMs: plan.memoryLatencyMs });
        const w = makeWorkload(n / DOMAINS_PER_CALLBACK);
        await seedInventory(bench.db, w.domains);
        results.memory = await scenario('memory', {}, async (s) => {
          const api = await s.start('api', 'api');
          const [worker] = await startWorkers(s, 1);
          await sleep(2000);
          const startKb = rssKb(worker!.pid)!;
          const samples: { sec: number; done: number; rssKb: number }[] = [];
          const t0 = Date.now();
          const posting = postCallbacks(api.url, callbackToken, w.bodies, 4).then(() => undefined, (err: unknown) => err as Error);
          let lastLog = 0;
          for (;;) {
            const { rows } = await bench.db.query<{ done: number }>(
              `SELECT count(*)::int AS done FROM batch_domain WHERE status IN ('succeeded', 'failed', 'unknown_domain', 'unsupported')`);
            const done = rows[0]!.done;
            samples.push({ sec: round((Date.now() - t0) / 1000, 1), done, rssKb: rssKb(worker!.pid) ?? NaN });
            if (Date.now() - lastLog > 15_000) {
              log(`memory: ${done}/${n} domains, worker RSS ${round((samples.at(-1)!.rssKb) / 1024)} MB`);
              lastLog = Date.now();
            }
            if (done >= n) break;
            const failed = await Promise.race([posting, sleep(0).then(() => undefined)]);
            if (failed) throw failed;
            if (Date.now() - t0 > 900_000) throw new Error(`memory run timed out at ${done}/${n} domains`);
            await sleep(1000);
          }
          const postError = await posting;
          if (postError) throw postError;
          const last = await waitDone(n, 60_000);
          const endKb = rssKb(worker!.pid)!;
          await sleep(3000);
          const idleKb = rssKb(worker!.pid)!;
          const at = (share: number) => samples.find((x) => x.done >= share * n)?.rssKb ?? NaN;
          const counts = await ledger();
          const stats = await sim!.stats();
          return {
            domains: n, latencyMs: plan.memoryLatencyMs, elapsedSec: (last - t0) / 1000, domainsPerSec: n / ((last - t0) / 1000),
            startKb, at10Kb: at(0.1), at50Kb: at(0.5), endKb, maxKb: Math.max(...samples.map((x) => x.rssKb)), idleAfterKb: idleKb,
            changeEndVs10: endKb / at(0.1) - 1, changeEndVsStart: endKb / startKb - 1,
            succeeded: counts.succeeded ?? 0, lost: n - (counts.succeeded ?? 0), deletedTwice: deletedTwice(stats), samples,
          };
        });
      } catch (err) {
        results.memory = { error: (err as Error).message };
        log(`memory failed: ${(err as Error).message}`);
      }
    }
  } finally {
    await sim?.child.stop(5000);
    await bench.drop().catch((err: Error) => log(`could not drop ${bench.name}: ${err.message}`));
    log(`database ${bench.name} dropped`);
  }

  const finishedAt = new Date();
  const pgVersion = await (async () => {
    const c = new pg.Client({ connectionString: base.databaseUrl });
    await c.connect();
    try {
      return (await c.query<{ v: string; sc: string }>("SELECT current_setting('server_version') AS v, current_setting('synchronous_commit') AS sc")).rows[0];
    } finally {
      await c.end();
    }
  })();
  const report = {
    startedAt, finishedAt, durationSec: (finishedAt.getTime() - startedAt.getTime()) / 1000, command, plan,
    machine: {
      cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memGb: round(os.totalmem() / 2 ** 30), node: process.version,
      postgres: pgVersion, backgroundCpuPercent, loadavgAtStart, loadavgAtEnd: os.loadavg(),
    },
    serviceConfig: {
      SECPLAT_CONCURRENCY: base.secplatConcurrency, SECPLAT_BATCH_SIZE: base.secplatBatchSize, AMQP_PREFETCH: base.amqpPrefetch,
      DATABASE_POOL_SIZE: base.databasePoolSize, TOKEN_MIN_FETCH_INTERVAL_MS: base.tokenMinFetchIntervalMs, LOG_LEVEL: 'info',
    },
    ...results,
    processes: notes,
  };
  const dir = path.resolve(ROOT, opts.out);
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`${render(report as unknown as Report)}\n\nJSON: ${path.relative(process.cwd(), file)}\n`);
  return 0;
});

// ------------------------------------------------------------------ printing
interface Report {
  command: string; startedAt: Date; durationSec: number;
  machine: { cpus: number; cpuModel?: string; node: string; postgres?: { v: string; sc: string }; backgroundCpuPercent: number };
  ingest?: { concurrency: number; seconds: number; runs: Record<string, unknown>[] };
  e2e?: { latencyMs: number; secplatConcurrency: number; runs: Record<string, unknown>[] };
  token?: { tokenTtlSec: number; tokenRefreshBeforeMs: number; seconds: number; runs: Record<string, unknown>[] };
  baseline?: { error?: string; workload?: Record<string, number>; seedStyle?: SeedStyleResult & { deletedPerSec: number; simTokenFetches: number; simUnauthorized: number; deletedTwice: number }; ours?: Record<string, number> };
  memory?: Record<string, number> & { error?: string };
  processes: ProcNote[];
}

function render(r: Report): string {
  const n = (v: unknown, digits = 0) => (typeof v === 'number' && Number.isFinite(v) ? round(v, digits) : '');
  const pct = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? `${round(v * 100, 1)} %` : '');
  const mb = (kb: unknown) => (typeof kb === 'number' && Number.isFinite(kb) ? round(kb / 1024, 1) : '');
  const out: string[] = [
    `${r.command}   ${new Date(r.startedAt).toISOString()}   ${r.machine.cpus} × ${r.machine.cpuModel ?? 'cpu'}, Node ${r.machine.node}, PostgreSQL ${r.machine.postgres?.v ?? '?'} (synchronous_commit=${r.machine.postgres?.sc ?? '?'}), ${round(r.durationSec)} s, machine ${round(r.machine.backgroundCpuPercent)} % busy before start`,
  ];
  if (r.ingest) {
    out.push('', `INGEST  (fifty-domain callbacks, ${r.ingest.concurrency} in flight, ${r.ingest.seconds} s measured; API CPU: one core = 100 %, machine CPU: all cores = 100 %)`);
    out.push(formatTable(['scenario', 'accepted/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'stored = acked', 'of PG ceiling', 'API CPU', 'machine CPU', 'CPU ms per callback'],
      r.ingest.runs.map((x) => x.error
        ? [String(x.label), `ERROR: ${String(x.error).slice(0, 100)}`]
        : [String(x.label), n(x.perSec), n(x.p50Ms, 1), n(x.p99Ms, 1), n(x.maxMs, 1), n(x.errors), x.storedMatchesAcked ? 'yes' : `NO (${String(x.stored)}/${String(x.okTotal)})`,
          pct(x.ceilingShare), typeof x.watchedCpuPercent === 'number' ? `${n(x.watchedCpuPercent)} %` : '', `${n(x.machineCpuPercent)} %`, n(x.machineCpuMsPerOp, 1)])));
  }
  if (r.e2e) {
    out.push('', `END TO END  (K callbacks × 50 domains, simulator ${r.e2e.latencyMs} ms per call, ${r.e2e.secplatConcurrency} calls in flight per worker; limit = calls in flight × batch ÷ latency)`);
    out.push(formatTable(['workers', 'batch', 'domains', 'seconds', 'domains/s', 'limit/s', 'of limit', 'steady/s', 'steady of limit', 'packing bound', 'entries/call', 'slot use', 'machine CPU', 'lost', 'twice', '401s', 'token fetches'],
      r.e2e.runs.map((x) => x.error
        ? [n(x.workers), n(x.batchSize), `ERROR: ${String(x.error).slice(0, 100)}`]
        : [n(x.workers), n(x.batchSize), n(x.domains), n(x.elapsedSec, 1), n(x.domainsPerSec, 1), n(x.littleLimit), pct(x.littleShare), n(x.steadyPerSec, 1),
          pct(typeof x.steadyPerSec === 'number' ? x.steadyPerSec / (x.littleLimit as number) : NaN), pct(x.packingBound),
          n(x.entriesPerCall, 1), pct(x.slotUse), `${n(x.machineCpuPercent)} %`, n(x.lost), n(x.deletedTwice), n(x.unauthorized), n(x.tokenFetches)])));
  }
  if (r.token) {
    out.push('', `TOKEN ECONOMY  (token lifetime ${r.token.tokenTtlSec} s, refreshed ${r.token.tokenRefreshBeforeMs / 1000} s before expiry, callbacks for ${r.token.seconds} s, external invalidations by another client; every fetch after the first needs a cause)`);
    out.push(formatTable(['workers', 'seconds', 'token fetches', 'invalidations', 'lifetimes ended', '1 + ended + invalidations', 'uncaused fetches', '401s', 'domains', 'lost', 'twice'],
      r.token.runs.map((x) => x.error
        ? [n(x.workers), `ERROR: ${String(x.error).slice(0, 100)}`]
        : [n(x.workers), n(x.runSec, 1), n(x.tokenFetches), n(x.invalidations), n(x.refreshWindowsReached), n(x.bound), n(x.uncausedFetches), n(x.unauthorized), n(x.domains), n(x.lost), n(x.deletedTwice)])));
  }
  if (r.baseline) {
    out.push('', 'BASELINE  (same workload and simulator; seed-style = token per job, one call in flight per job, no retry)');
    if (r.baseline.error || !r.baseline.seedStyle || !r.baseline.ours || !r.baseline.workload) out.push(`ERROR: ${r.baseline.error ?? 'no result'}`);
    else {
      const s = r.baseline.seedStyle;
      const o = r.baseline.ours;
      const w = r.baseline.workload;
      out.push(`${w.callbacks} callbacks × ${w.domainsPerCallback} domains, ${w.callsInFlight} calls in flight, batch ${w.batchSize}, ${w.latencyMs} ms per call`);
      out.push(formatTable(['strategy', 'domains', 'seconds', 'deleted/s', 'token fetches', '401s', 'domains lost', 'deleted twice'], [
        ['seed-style', n(s.domains), n(s.elapsedMs / 1000, 1), n(s.deletedPerSec, 1), n(s.simTokenFetches), n(s.simUnauthorized), n(s.lost), n(s.deletedTwice)],
        [`ours (${o.workers} workers)`, n(o.domains), n(o.elapsedSec, 1), n(o.succeeded! / o.elapsedSec!, 1), n(o.tokenFetches), n(o.unauthorized), n(o.lost), n(o.deletedTwice)],
      ]));
    }
  }
  if (r.memory) {
    const m = r.memory;
    out.push('', `MEMORY  (one worker process, VmRSS in MB; simulator latency ${n(m.latencyMs)} ms, so the worker is CPU-bound)`);
    out.push(m.error ? `ERROR: ${m.error}` : formatTable(['domains', 'domains/s', 'start', 'at 10 %', 'at 50 %', 'end', 'max', 'idle after', 'end vs 10 %', 'end vs start', 'lost'], [
      [n(m.domains), n(m.domainsPerSec), mb(m.startKb), mb(m.at10Kb), mb(m.at50Kb), mb(m.endKb), mb(m.maxKb), mb(m.idleAfterKb), pct(m.changeEndVs10), pct(m.changeEndVsStart), n(m.lost)],
    ]));
  }
  const noisy = r.processes.filter((p) => p.errorLines > 0 || p.killed || p.exitCode !== 0);
  out.push('', noisy.length === 0
    ? `PROCESSES  ${r.processes.length} service processes, all stopped cleanly on SIGTERM (exit 0), no error log lines`
    : `PROCESSES  ${noisy.map((p) => `${p.scenario}/${p.process}: exit ${String(p.exitCode)}${p.killed ? ' (SIGKILLed after 10 s)' : ''}, ${p.errorLines} error lines, stop ${p.stopMs} ms`).join('; ')}`);
  return out.join('\n');
}
