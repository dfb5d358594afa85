/**
 * The bench's command line and the plan it turns into (every default, quick or full, decided here).
 */
import { InvalidArgumentError, Option } from 'commander';
import { createProgram, integer } from '../scripts/cli.js';

export const SECTIONS = ['ingest', 'e2e', 'token', 'baseline', 'memory', 'history'] as const;
export type SectionName = (typeof SECTIONS)[number];
/** End-to-end workloads, by the name the table gives them (bench/sections/e2e.ts). */
export const E2E_WORKLOAD_NAMES = ['50-domain', 'seed mix', '1-domain'] as const;
export type E2eWorkloadName = (typeof E2E_WORKLOAD_NAMES)[number];

const intList = (min: number, max: number) => (value: string): number[] => {
  const list = value.split(',').map((v) => Number(v.trim()));
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n < min || n > max)) throw new InvalidArgumentError(`must be a comma-separated list of integers from ${min} to ${max}.`);
  return list;
};
const countList = intList(1, 16);
// The statement-each ceiling holds one connection per callback in flight; PostgreSQL allows 100 by default.
const MAX_INGEST_CONCURRENCY = 64;
const sectionList = (value: string): SectionName[] => {
  const list = value.split(',').map((v) => v.trim());
  const bad = list.filter((s) => !(SECTIONS as readonly string[]).includes(s));
  if (bad.length) throw new InvalidArgumentError(`unknown section(s) ${bad.join(', ')}; choose from ${SECTIONS.join(', ')}.`);
  return list as SectionName[];
};
const workloadList = (value: string): E2eWorkloadName[] => {
  const list = value.split(',').map((v) => v.trim());
  const bad = list.filter((w) => !(E2E_WORKLOAD_NAMES as readonly string[]).includes(w));
  if (bad.length) throw new InvalidArgumentError(`unknown workload(s) ${bad.join(', ')}; choose from ${E2E_WORKLOAD_NAMES.join(', ')}.`);
  return list as E2eWorkloadName[];
};

export const program = createProgram('bench', 'Measures ingest, end-to-end throughput, token economy, a seed-style baseline, worker memory and the cost of operator and relay reads as history grows; prints tables and writes bench/results/<timestamp>.json.')
  .option('--quick', 'a short run (a few minutes): shorter windows, fewer callbacks, fewer token runs, 10k-domain memory run, 100k-row history', false)
  .option('--only <sections>', `run only these sections (comma-separated: ${SECTIONS.join(', ')})`, sectionList)
  .option('--ingest-seconds <s>', 'measured window of each ingest run (default 15, quick 4)', integer(1, 600))
  .addOption(new Option('--ingest-concurrency <list>', `ingest: requests (and ceiling transactions) in flight, each level measured for the API and both ceiling shapes (at most ${MAX_INGEST_CONCURRENCY})`)
    .argParser(intList(1, MAX_INGEST_CONCURRENCY)).default([8, 32, 64], '8,32,64'))
  .option('--latency <ms>', 'simulated security-platform latency per delete call (e2e, token, baseline)', integer(1, 10_000), 400)
  .addOption(new Option('--workers <list>', 'worker process counts for end to end').argParser(countList).default([1, 2, 4], '1,2,4'))
  .option('--e2e-workloads <names>', `end to end: run only these workloads (comma-separated: ${E2E_WORKLOAD_NAMES.join(', ')})`, workloadList)
  .option('--callbacks-per-worker <k>', 'end to end: K = this × workers; each workload (50-domain, seed mix, 1-domain callbacks) carries K × 50 domains (default 100, quick 10)', integer(1, 100_000))
  .option('--token-workers <list>', 'worker process counts for the token economy (default 1,2,4,8; quick 1,4)', countList)
  .option('--token-seconds <s>', 'how long callbacks keep arriving in each token run (default 30, quick 10)', integer(5, 600))
  .option('--memory-domains <n>', 'domains the memory run pushes through one worker (default 100000, quick 10000)', integer(1000, 10_000_000))
  .option('--history <n>', 'history: domain rows preloaded before the second measurement (default 2000000, quick 100000)', integer(1000, 50_000_000))
  .option('--history-samples <n>', 'history: timed calls of each operation, on the empty ledger and again with the history (default 1000, quick 100)', integer(10, 100_000))
  .option('--out <dir>', 'where the JSON result goes', 'bench/results')
  .addHelpText('after', '\nSections run in the order listed above. Figures are measurements, never pass/fail: exit 0 when the bench ran, 1 when it could not, 2 on a usage error.');

interface Options {
  quick: boolean; only?: SectionName[]; ingestSeconds?: number; ingestConcurrency: number[]; latency: number; workers: number[]; e2eWorkloads?: E2eWorkloadName[];
  callbacksPerWorker?: number; tokenWorkers?: number[]; tokenSeconds?: number; memoryDomains?: number;
  history?: number; historySamples?: number; out: string;
}

export type Plan = ReturnType<typeof makePlan>;

/** Every knob of the run, from the command line with the quick or full defaults filled in. */
export function makePlan(opts: Options) {
  const q = opts.quick;
  return {
    quick: q,
    out: opts.out,
    sections: opts.only ?? [...SECTIONS],
    ingestSeconds: opts.ingestSeconds ?? (q ? 4 : 15),
    ingestWarmupSeconds: q ? 1 : 3,
    ingestConcurrencies: opts.ingestConcurrency,
    latencyMs: opts.latency,
    workers: opts.workers,
    e2eWorkloads: opts.e2eWorkloads ?? [...E2E_WORKLOAD_NAMES],
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
    historyRows: opts.history ?? (q ? 100_000 : 2_000_000),
    // p99 of 1000 calls is the tenth-slowest, not the third: at 300 one slow call of 1–4 ms on a busy
    // 2-core machine moved a ratio past 2× (three history-only runs at 1000: every p99 within 0.45–1.54×).
    historySamples: opts.historySamples ?? (q ? 100 : 1000),
  };
}

/** Parses argv (usage errors throw a CommanderError, which runCli maps to exit 2). */
export function parsePlan(): Plan {
  return makePlan(program.parse().opts<Options>());
}
