/**
 * What every section of the bench is given: the plan, the service's configuration, the dedicated
 * database, the simulator (in this process, steered through its own API), and `scenario`, which gives a
 * run its own queue and key names, starts its service processes and cleans all of it up afterwards.
 */
import type { Config } from '../src/config.js';
import type { Simulator, SimulatorOptions, SimulatorStats } from '../src/simulator/server.js';
import { cleanupNames } from '../test/helpers/env.js';
import type { BenchDb } from './bench-db.js';
import type { Plan, SectionName } from './options.js';
import { startBenchService, type BenchService, type ProcNote } from './services.js';
import type { Workload } from './workload.js';

export interface ScenarioRun {
  env: Record<string, string>;
  start(role: 'api' | 'worker', instance: string): Promise<BenchService>;
  startWorkers(n: number): Promise<BenchService[]>;
}

export interface BenchContext {
  plan: Plan;
  /** The service's configuration as this process's environment gives it (knobs such as SECPLAT_BATCH_SIZE). */
  base: Config;
  bench: BenchDb;
  sim: Simulator;
  simUrl: string;
  /** The simulator's options at the start of every section (latency from --latency). */
  simDefaults: Partial<SimulatorOptions>;
  secplatPassword: string;
  callbackToken: string;
  /** This run's tag: part of every messageId, queue and key name it makes. */
  tag: string;
  log(line: string): void;
  /** `callbacks` callbacks of sizes[i % sizes.length] domains (fifty each by default). */
  makeWorkload(callbacks: number, sizes?: readonly number[]): Workload;
  scenario<T>(name: string, extra: Record<string, string>, fn: (s: ScenarioRun) => Promise<T>): Promise<T>;
  /** Every service process's ending, for the report. */
  notes: ProcNote[];
}

/** user_id_cdns the simulator deleted more than once (must stay 0). */
export const deletedTwice = (s: SimulatorStats): number => Object.values(s.deletedCounts).filter((n) => n > 1).length;

/** Starts the simulator fresh with the section's options (stats cleared, token forgotten). */
export function resetSimulator(ctx: BenchContext, options: Partial<SimulatorOptions> = {}): void {
  ctx.sim.reset();
  ctx.sim.setOptions({ ...ctx.simDefaults, ...options });
}

type ScenarioDeps = Pick<BenchContext, 'base' | 'bench' | 'simUrl' | 'secplatPassword' | 'callbackToken' | 'tag' | 'notes' | 'log'>;

/** The environment of one scenario's service processes: the service's defaults, its own names. */
function scenarioEnv(d: ScenarioDeps, name: string, extra: Record<string, string>): Record<string, string> {
  const prefix = `pcpbench-${d.tag}-${name}`;
  const b = d.base;
  return {
    DATABASE_URL: d.bench.url, REDIS_URL: b.redisUrl, RABBITMQ_URL: b.rabbitmqUrl, AMQP_PREFIX: prefix, REDIS_KEY_PREFIX: prefix,
    CALLBACK_TOKEN: d.callbackToken, SECPLAT_BASE_URL: d.simUrl, SECPLAT_PASSWORD: d.secplatPassword,
    PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', RETRY_TIERS_MS: b.retryTiersMs.join(','),
    SECPLAT_CONCURRENCY: String(b.secplatConcurrency), SECPLAT_BATCH_SIZE: String(b.secplatBatchSize),
    AMQP_PREFETCH: String(b.amqpPrefetch), DATABASE_POOL_SIZE: String(b.databasePoolSize), ...extra,
  };
}

/** Runs fn with this scenario's names; stops its processes and deletes its queues and keys afterwards. */
export function scenarioRunner(d: ScenarioDeps): BenchContext['scenario'] {
  return async (name, extra, fn) => {
    const env = scenarioEnv(d, name, extra);
    const procs: BenchService[] = [];
    const start = async (role: 'api' | 'worker', instance: string) => {
      const s = await startBenchService(instance, { ...env, ROLE: role });
      procs.push(s);
      return s;
    };
    const startWorkers = (n: number) => Promise.all(Array.from({ length: n }, (_, i) => start('worker', `w${i + 1}`)));
    try {
      return await fn({ env, start, startWorkers });
    } catch (err) {
      // The last warning or error a process logged usually says why.
      const hint = procs.map((p) => [p.name, [...p.logs].reverse().find((l) => /"level":"(warn|error)"/.test(l))] as const).find(([, line]) => line);
      if (hint && err instanceof Error) err.message += ` (${hint[0]} last logged: ${hint[1]!.slice(0, 400)})`;
      throw err;
    } finally {
      const stops = await Promise.all(procs.map((p) => p.stop(10_000)));
      procs.forEach((p, i) => d.notes.push({
        scenario: name, process: p.name, warnLines: p.counts.warn, errorLines: p.counts.error, firstErrors: p.firstErrors,
        stopMs: stops[i]!.ms, killed: stops[i]!.killed, exitCode: stops[i]!.code,
      }));
      await cleanupNames(env, { rabbitmqUrl: d.base.rabbitmqUrl, redisUrl: d.base.redisUrl })
        .catch((err: Error) => d.log(`cleanup of ${name} failed: ${err.message}`));
    }
  };
}

/** A section of the bench: what it runs and how its result is printed. */
export interface BenchSection<R> {
  name: SectionName;
  /** `earlier`: results of the sections that ran before it in this run (the baseline reuses end to end's). */
  run(ctx: BenchContext, earlier: Record<string, unknown>): Promise<R>;
  render(result: R): string[];
}
