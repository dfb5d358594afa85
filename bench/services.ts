/**
 * Service processes of the bench, started with the one spawner the tests and the demo use
 * (scripts/service-process.ts) with a bounded log tail, so a long run does not keep every log line.
 * Each keeps count of its warn and error lines, stops with a grace period, and none outlives the bench.
 */
import { spawnService, type ServiceProcess } from '../test/helpers/env.js';

/** How one service process ended, for the report's PROCESSES line. */
export interface ProcNote {
  scenario: string; process: string; warnLines: number; errorLines: number; stopMs: number; killed: boolean; exitCode: number | null;
  /** The first error lines it logged (the report names what went wrong, not only how often). */
  firstErrors: string[];
}

export interface StopResult { code: number | null; killed: boolean; ms: number }

export interface BenchService {
  name: string;
  pid: number;
  url: string;
  counts: { warn: number; error: number };
  /** The first FIRST_ERRORS error lines. */
  firstErrors: string[];
  /** The last output lines, for error messages. */
  logs: string[];
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<StopResult>;
}

const running = new Set<ServiceProcess>();
const FIRST_ERRORS = 3;

/** SIGKILLs every service still running (on exit and on Ctrl-C). */
export function killAllServices(): void {
  for (const s of running) {
    if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGKILL');
  }
}

/** A service process (src/main.ts) with this environment; resolves once it serves HTTP. */
export async function startBenchService(name: string, env: Record<string, string>): Promise<BenchService> {
  const counts = { warn: 0, error: 0 };
  const firstErrors: string[] = [];
  const svc = await spawnService({ INSTANCE_ID: name, ...env }, {
    maxLogLines: 200,
    onLine: (line) => {
      if (line.includes('"level":"warn"')) counts.warn += 1;
      else if (line.includes('"level":"error"')) {
        counts.error += 1;
        if (firstErrors.length < FIRST_ERRORS) firstErrors.push(line.slice(0, 1000));
      }
    },
  });
  running.add(svc);
  void svc.exited.then(() => running.delete(svc));
  return {
    name, pid: svc.pid, url: svc.url, counts, firstErrors, logs: svc.logs,
    async stop(graceMs = 10_000) {
      const started = Date.now();
      if (svc.proc.exitCode !== null || svc.proc.signalCode !== null) return { code: svc.proc.exitCode, killed: false, ms: 0 };
      let killed = false;
      const timer = setTimeout(() => { killed = true; svc.proc.kill('SIGKILL'); }, graceMs);
      const code = await svc.stop('SIGTERM');
      clearTimeout(timer);
      return { code, killed, ms: Date.now() - started };
    },
  };
}
