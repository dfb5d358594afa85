/**
 * Runs the service as a real child process and waits until it serves HTTP. Used by the demo, the bench
 * (bench/services.ts) and the tests that need several processes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * How the service is started:
 * - `sources`: `node --import tsx src/main.ts` (development, tests, demo);
 * - `production`: `node dist/src/main.js`, the README's production command (run `npm run build` first);
 * - `npm-start`: `npm start`, which builds and then runs the production command under npm.
 */
export type StartCommand = 'sources' | 'production' | 'npm-start';

export interface ServiceProcess {
  /** The spawned process: node itself, or npm for `npm-start`. */
  proc: ChildProcess;
  /** The pid of the node process that runs the service (from its "http listening" line). */
  pid: number;
  port: number;
  url: string;
  /** Output lines (stderr as it came); only the last `maxLogLines` of them when that option is given. */
  logs: string[];
  /** Resolves when the service's node process has exited (its output closed), with the spawned process's exit code. */
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Signals the whole process group, as systemd (KillMode=control-group) and a terminal's Ctrl-C do; needs `detached`. */
  signalGroup(signal: NodeJS.Signals): void;
}

export const ROOT = fileURLToPath(new URL('../', import.meta.url));

const COMMANDS: Record<StartCommand, [string, string[]]> = {
  sources: [process.execPath, ['--import', 'tsx', 'src/main.ts']],
  production: [process.execPath, ['dist/src/main.js']],
  'npm-start': ['npm', ['start']],
};

/**
 * Runs the service and waits until it serves HTTP. `detached` puts it in a process group of its own;
 * `maxLogLines` keeps only that many of the latest output lines (long runs such as the bench: `onLine`
 * still sees every line).
 */
export async function spawnService(
  env: Record<string, string>,
  opts: { onLine?: (line: string) => void; command?: StartCommand; detached?: boolean; maxLogLines?: number } = {},
): Promise<ServiceProcess> {
  const [cmd, args] = COMMANDS[opts.command ?? 'sources'];
  const proc = spawn(cmd, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: opts.detached ?? false,
  });
  const logs: string[] = [];
  const keep = (line: string) => {
    logs.push(line);
    if (opts.maxLogLines !== undefined && logs.length > opts.maxLogLines) logs.splice(0, logs.length - opts.maxLogLines);
  };
  let buf = '';
  const exitCode = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  // Under npm the node process may outlive npm (npm exits at once on SIGTERM): its stdout closing tells
  // when the service itself has gone.
  const outputClosed = new Promise<void>((resolve) => proc.stdout!.once('close', () => resolve()));
  const exited = Promise.all([exitCode, outputClosed]).then(([code]) => code);
  const started = await new Promise<{ port: number; pid: number }>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      buf += chunk.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        keep(line);
        opts.onLine?.(line);
        if (line.includes('"http listening"')) {
          const { port, pid } = JSON.parse(line) as { port: number; pid: number };
          resolve({ port, pid });
        }
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', (c: Buffer) => keep(c.toString()));
    void exitCode.then((code) => reject(new Error(`service exited with ${code} before listening:\n${logs.join('\n')}`)));
    setTimeout(() => reject(new Error(`service did not start in 60 s:\n${logs.join('\n')}`)), 60_000).unref();
  });
  return {
    proc, ...started, url: `http://127.0.0.1:${started.port}`, logs, exited,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      proc.kill(signal);
      return exited;
    },
    signalGroup(signal) {
      process.kill(-proc.pid!, signal);
    },
  };
}
