/**
 * `npm run bench`: the service's figures, measured side by side in one run (so ratios hold on a noisy
 * machine), printed as tables and written to bench/results/<timestamp>.json. One module per section:
 *
 *   ingest    sections/ingest.ts    callbacks into a spawned API process; with RabbitMQ unreachable; the PostgreSQL ceiling
 *   e2e       sections/e2e.ts       K × 50 domains as 50-domain, seed-mix and 1-domain callbacks through 1, 2, 4 workers; domains/s against Little's law
 *   token     sections/token.ts     token fetches for 1..8 workers with expiries and external invalidations
 *   baseline  sections/baseline.ts  the same workload the "seed-style" way (bench/seed-style.ts), beside ours
 *   memory    sections/memory.ts    RSS of one worker process while it works through N domains
 *   history   sections/history.ts   operator and relay reads on the empty ledger and again with a large history
 *
 * Every scenario has its own AMQP_PREFIX and REDIS_KEY_PREFIX (deleted afterwards); all use one dedicated
 * database pcp_bench_<random>, migrated by the first service start and dropped at the end. Services run with
 * their production defaults (synchronous commit, publisher confirms, LOG_LEVEL=info); knobs such as
 * SECPLAT_CONCURRENCY, SECPLAT_BATCH_SIZE, AMQP_PREFETCH and DATABASE_POOL_SIZE are taken from this
 * process's environment, as the service would. Timings are figures, never pass/fail: the exit code only
 * says whether the bench itself ran.
 */
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { loadConfig, type Config } from '../src/config.js';
import { createSimulator, type SimulatorOptions } from '../src/simulator/server.js';
import { runCli } from '../scripts/cli.js';
import { ROOT } from '../scripts/service-process.js';
import { rand } from '../test/helpers/env.js';
import { BenchDb } from './bench-db.js';
import { scenarioRunner, type BenchContext, type BenchSection } from './context.js';
import { parsePlan, type Plan } from './options.js';
import { machineBusyPercent } from './proc-stats.js';
import { renderReport, writeReport, type Machine, type Report } from './report.js';
import { killAllServices, type ProcNote } from './services.js';
import { round } from './stats.js';
import { workloadMaker } from './workload.js';
import { baseline } from './sections/baseline.js';
import { e2e } from './sections/e2e.js';
import { history } from './sections/history.js';
import { ingest } from './sections/ingest.js';
import { memory } from './sections/memory.js';
import { token } from './sections/token.js';

/** In the order they run; the baseline reuses end to end's run, and the history's rows go in last. */
const SECTIONS: readonly BenchSection<unknown>[] = [ingest, e2e, token, baseline, memory, history];

const log = (s: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${s}\n`);

/** The database, the simulator and the names every section shares; `close` drops and stops them. */
async function createContext(plan: Plan, base: Config, notes: ProcNote[]): Promise<BenchContext & { close(): Promise<void> }> {
  const bench = new BenchDb(base.databaseUrl);
  await bench.create();
  log(`database ${bench.name} created`);
  const secplatPassword = `bench-${rand(8)}`;
  const simDefaults: Partial<SimulatorOptions> = { latencyMs: plan.latencyMs, tokenTtlSec: 3600, tokenLatencyMs: 0, errorRate: 0, failIds: [], failNextDeletes: 0, rejectCredentials: false };
  const sim = createSimulator({ password: secplatPassword, ...simDefaults });
  const simUrl = (await sim.start(0, '127.0.0.1')).url;
  log(`simulator ${simUrl}`);
  const deps = { base, bench, simUrl, secplatPassword, callbackToken: `bench-${rand(8)}`, tag: rand(3), notes, log };
  return {
    ...deps, plan, sim, simDefaults, makeWorkload: workloadMaker(deps.tag), scenario: scenarioRunner(deps),
    async close() {
      await sim.stop();
      await bench.drop().catch((err: Error) => log(`could not drop ${bench.name}: ${err.message}`));
      log(`database ${bench.name} dropped`);
    },
  };
}

async function postgresSettings(databaseUrl: string): Promise<{ v: string; sc: string } | undefined> {
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    return (await c.query<{ v: string; sc: string }>("SELECT current_setting('server_version') AS v, current_setting('synchronous_commit') AS sc")).rows[0];
  } finally {
    await c.end();
  }
}

async function describeMachine(base: Config, backgroundCpuPercent: number, loadavgAtStart: number[]): Promise<Machine> {
  return {
    cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memGb: round(os.totalmem() / 2 ** 30), node: process.version,
    postgres: await postgresSettings(base.databaseUrl), backgroundCpuPercent, loadavgAtStart, loadavgAtEnd: os.loadavg(),
  };
}

/** Runs the planned sections in order; a section that fails records its error and the next one runs. */
async function runSections(ctx: BenchContext): Promise<Record<string, unknown>> {
  const results: Record<string, unknown> = {};
  // The schema comes from the service itself: its start applies the migrations to the fresh database.
  await ctx.scenario('migrate', {}, (s) => s.start('api', 'migrate'));
  log('migrations applied by a service start');
  for (const section of SECTIONS) {
    if (ctx.plan.sections.includes(section.name)) results[section.name] = await section.run(ctx, results);
  }
  return results;
}

await runCli(async () => {
  const plan = parsePlan();
  const base = loadConfig(process.env, { CALLBACK_AUTH: 'none' });
  const startedAt = new Date();
  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
  // What else keeps this machine busy (other test runs share it): CPU use over 2 s before anything starts.
  const loadavgAtStart = os.loadavg();
  const backgroundCpuPercent = await machineBusyPercent(2000);
  if (backgroundCpuPercent > 10) log(`note: the machine was already ${round(backgroundCpuPercent)} % busy before the bench started; figures will be lower than on a quiet machine`);
  const notes: ProcNote[] = [];
  const ctx = await createContext(plan, base, notes);
  const interrupted = async () => {
    log('interrupted: stopping processes and dropping the database');
    killAllServices();
    await ctx.close().catch(() => undefined);
    process.exit(130);
  };
  process.once('SIGINT', () => void interrupted());
  process.once('SIGTERM', () => void interrupted());
  process.on('exit', killAllServices);
  let results: Record<string, unknown>;
  try {
    results = await runSections(ctx);
  } finally {
    await ctx.close();
  }
  const finishedAt = new Date();
  const report: Report = {
    command, startedAt, finishedAt, durationSec: (finishedAt.getTime() - startedAt.getTime()) / 1000, plan,
    machine: await describeMachine(base, backgroundCpuPercent, loadavgAtStart),
    serviceConfig: {
      SECPLAT_CONCURRENCY: base.secplatConcurrency, SECPLAT_BATCH_SIZE: base.secplatBatchSize, AMQP_PREFETCH: base.amqpPrefetch,
      DATABASE_POOL_SIZE: base.databasePoolSize, TOKEN_MIN_FETCH_INTERVAL_MS: base.tokenMinFetchIntervalMs, DOMAIN_LEASE_MS: base.domainLeaseMs, LOG_LEVEL: 'info',
    },
    results, processes: notes,
  };
  const file = writeReport(report, path.resolve(ROOT, plan.out));
  process.stdout.write(`${renderReport(report, SECTIONS)}\n\nJSON: ${path.relative(process.cwd(), file)}\n`);
  return 0;
});
