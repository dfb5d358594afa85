/**
 * Runs the service (src/main.ts) as a real child process and waits until it serves HTTP. Used by the
 * demo and by the tests that need several processes.
 */
import { spawn, type ChildProcess } from 'node:child_process';

export interface ServiceProcess { proc: ChildProcess; port: number; url: string; logs: string[]; stop(signal?: NodeJS.Signals): Promise<number | null> }

/** Runs `src/main.ts` as a real process and waits until it serves HTTP. */
export async function spawnService(env: Record<string, string>, opts: { onLine?: (line: string) => void } = {}): Promise<ServiceProcess> {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: new URL('../', import.meta.url).pathname,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: string[] = [];
  let buf = '';
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      buf += chunk.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        logs.push(line);
        opts.onLine?.(line);
        if (line.includes('"http listening"')) resolve((JSON.parse(line) as { port: number }).port);
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', (c: Buffer) => logs.push(c.toString()));
    void exited.then((code) => reject(new Error(`service exited with ${code} before listening:\n${logs.join('\n')}`)));
    setTimeout(() => reject(new Error(`service did not start in 30 s:\n${logs.join('\n')}`)), 30_000).unref();
  });
  return {
    proc, port, url: `http://127.0.0.1:${port}`, logs,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      proc.kill(signal);
      return exited;
    },
  };
}
