/**
 * Load generator of `npm run bench`, run as its own process so it does not share an event loop with
 * what it measures. Internal: started by bench/sections/ingest.ts with one JSON argument, prints one JSON line.
 *
 * - mode "http": POSTs fifty-domain callbacks to the API with `concurrency` requests in flight
 *   (keep-alive sockets), for `warmupMs` unmeasured and then `durationMs` measured. With `ratePerSec` it
 *   is open-loop instead: one request every 1/rate s whatever the replies do (at most OPEN_LOOP_MAX in
 *   flight), each timed from when it was due, so a slow reply cannot hide the requests queued behind it.
 * - mode "pg": the PostgreSQL ceiling: the same rows written the way the API writes them, with nothing else in
 *   the way (default synchronous_commit), `concurrency` callbacks in flight. `pgShape` "statement": the
 *   service's own recordCallback, one statement (audit + batch + one row per domain) per callback, one
 *   round trip, its own transaction; "grouped": the service's own IngestBatcher, so callbacks in flight at
 *   once share one statement and one commit (group commit). The ingest section runs both and takes the best.
 */
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { createLogger } from '../src/lib/logger.js';
import { IngestBatcher } from '../src/pipeline/ingest-batcher.js';
import { createDb } from '../src/store/db.js';
import { recordCallback } from '../src/store/ledger.js';
import { busyShare, cpuMs, machineCpu } from './proc-stats.js';
import { quantile } from './stats.js';
import { callbackPoster } from './workload.js';

export interface LoadConfig {
  mode: 'http' | 'pg';
  /** API base URL (http mode). */
  url?: string;
  callbackToken?: string;
  /** Database URL (pg mode). */
  databaseUrl?: string;
  /** pg mode: one statement per callback, or callbacks in flight grouped into one statement (default statement). */
  pgShape?: 'statement' | 'grouped';
  concurrency: number;
  /** Open loop: requests started per second, on a fixed schedule (http mode); `concurrency` is then unused. */
  ratePerSec?: number;
  /** A process (the API) whose CPU use over the measured window is reported. */
  watchPid?: number;
  warmupMs: number;
  durationMs: number;
  domainsPerCallback: number;
}

export interface LoadResult {
  mode: LoadConfig['mode'];
  concurrency: number;
  /** Open loop: the rate asked for, and requests that could not start on time (OPEN_LOOP_MAX in flight). */
  ratePerSec?: number;
  late?: number;
  windowMs: number;
  /** Successful operations completed inside the measured window. */
  measured: number;
  perSec: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Successful operations over the whole run (warm-up included): each one must be in the ledger. */
  okTotal: number;
  errors: number;
  errorSamples: string[];
  /** CPU time this generator used, as a share of one core over its run. */
  cpuPercent: number;
  /** Over the measured window: the whole machine's CPU use (all cores = 100 %) and the watched process's (one core = 100 %). */
  machineCpuPercent: number;
  watchedCpuPercent?: number;
  /** Machine CPU time (all processes, all cores) per successful operation in the window. */
  machineCpuMsPerOp: number;
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as LoadConfig;
const tag = randomBytes(4).toString('hex');
let seq = 0;
/** `pm` + 32 hex digits, unique per generator process and call. */
const nextHex = (): string => `${tag}${(seq++).toString(16).padStart(24, '0')}`;

// The body is built once as a template; only the 32-hex part changes per call.
const domainsOf = (hex: string) => Array.from({ length: cfg.domainsPerCallback }, (_, i) => `d${i}.${hex}.bench.example.com`);
const template = JSON.stringify({
  data: domainsOf('@H@').map((targetName) => ({ percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName })),
  messageId: 'pm@H@',
}).split('@H@');

// Open loop: the most requests in flight; a due request beyond it is counted late and started once one ends.
const OPEN_LOOP_MAX = 256;

function httpOp(): () => Promise<void> {
  const { post } = callbackPoster(cfg.url!, cfg.callbackToken ?? '', cfg.ratePerSec ? OPEN_LOOP_MAX : cfg.concurrency);
  return async () => {
    const { status, text } = await post(template.join(nextHex()));
    if (status !== 200 || !text.includes('"success":true')) throw new Error(`HTTP ${status}: ${text.slice(0, 200)}`);
  };
}

function pgOp(): { op: () => Promise<void>; close: () => Promise<void> } {
  const logger = createLogger({ level: 'error' });
  const db = createDb({ databaseUrl: cfg.databaseUrl!, databasePoolSize: cfg.concurrency, databaseStatementTimeoutMs: 10_000 }, logger);
  // As the API's default: INGEST_STATEMENTS_IN_FLIGHT=2 (config/default.json).
  const batcher = cfg.pgShape === 'grouped' ? new IngestBatcher({ db, logger }, 2) : undefined;
  const op = async () => {
    const hex = nextHex();
    const body = JSON.parse(template.join(hex)) as { messageId: string };
    // As parseCallback hands them to the API's ingest (percent and process as sent).
    const items = domainsOf(hex).map((domain) => ({ domain, reqType: 'SELF_DOMAIN_DELETE', supported: true, percent: 1, process: false }));
    const input = { messageId: body.messageId, remoteAddr: '127.0.0.1', body, items };
    await (batcher ? batcher.record(input) : recordCallback(db, input));
  };
  return { op, close: () => db.end() };
}

async function main(): Promise<LoadResult> {
  const { op, close } = cfg.mode === 'pg' ? pgOp() : { op: httpOp(), close: async () => undefined };
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const measureFrom = t0 + cfg.warmupMs;
  const end = measureFrom + cfg.durationMs;
  const latencies: number[] = [];
  // CPU readings at the edges of the measured window (Linux /proc).
  const reading = () => ({ at: performance.now(), machine: machineCpu(), watched: cfg.watchPid ? cpuMs(cfg.watchPid) : undefined });
  let first: ReturnType<typeof reading> | undefined;
  let last: ReturnType<typeof reading> | undefined;
  const t1 = setTimeout(() => { first = reading(); }, cfg.warmupMs);
  const t2 = setTimeout(() => { last = reading(); }, cfg.warmupMs + cfg.durationMs);
  let okTotal = 0;
  let errors = 0;
  const errorSamples: string[] = [];

  /** One operation timed from `due` (when it should have started); false when it failed. */
  const once = async (due: number): Promise<boolean> => {
    try {
      await op();
      okTotal += 1;
      const done = performance.now();
      if (done >= measureFrom && done <= end) latencies.push(done - due);
      return true;
    } catch (err) {
      errors += 1;
      if (errorSamples.length < 5) errorSamples.push((err as Error).message);
      return false;
    }
  };
  const closedLoop = async () => {
    while (performance.now() < end) {
      // A dead target must not turn into a hot loop.
      if (!await once(performance.now())) await new Promise((r) => setTimeout(r, 10));
    }
  };
  let late = 0;
  const openLoop = async (rate: number) => {
    const running = new Set<Promise<boolean>>();
    for (let i = 0; ; i++) {
      const due = t0 + (i * 1000) / rate;
      if (due >= end) break;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (running.size >= OPEN_LOOP_MAX) {
        late += 1;
        await Promise.race(running);
      }
      const p = once(due);
      running.add(p);
      void p.finally(() => running.delete(p));
    }
    await Promise.all(running);
  };
  if (cfg.ratePerSec) await openLoop(cfg.ratePerSec);
  else await Promise.all(Array.from({ length: cfg.concurrency }, closedLoop));
  const cpu = process.cpuUsage(cpu0);
  const wall = performance.now() - t0;
  clearTimeout(t1);
  clearTimeout(t2);
  first ??= reading();
  last ??= reading();
  const busy = busyShare(first.machine, last.machine);
  const windowWall = last.at - first.at;
  await close();
  latencies.sort((a, b) => a - b);
  const q = (p: number) => quantile(latencies, p);
  return {
    mode: cfg.mode, concurrency: cfg.concurrency, ratePerSec: cfg.ratePerSec, late: cfg.ratePerSec ? late : undefined,
    windowMs: cfg.durationMs, measured: latencies.length,
    perSec: latencies.length / (cfg.durationMs / 1000), p50Ms: q(0.5), p90Ms: q(0.9), p99Ms: q(0.99), maxMs: latencies.at(-1) ?? NaN,
    okTotal, errors, errorSamples, cpuPercent: ((cpu.user + cpu.system) / 1000 / wall) * 100,
    machineCpuPercent: busy * 100,
    watchedCpuPercent: first.watched !== undefined && last.watched !== undefined ? ((last.watched - first.watched) / windowWall) * 100 : undefined,
    machineCpuMsPerOp: (busy * os.cpus().length * windowWall) / Math.max(1, latencies.length),
  };
}

main().then((r) => {
  process.stdout.write(`${JSON.stringify(r)}\n`);
  process.exit(0);
}, (err: unknown) => {
  process.stderr.write(`load generator failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
