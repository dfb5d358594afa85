/**
 * Runs one of the bench's helper scripts (the load generator, the seed-style baseline) as its own process,
 * so it never shares an event loop with what it measures: one JSON argument in, one JSON line out.
 */
import { execFile } from 'node:child_process';
import { ROOT } from '../scripts/service-process.js';

/** Runs `node --import tsx <script> '<config as JSON>'` in the repository root; resolves with its last stdout line, parsed. */
export function runJsonChild<T>(name: string, script: string, config: unknown, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', script, JSON.stringify(config)], {
      cwd: ROOT, env: { PATH: process.env.PATH }, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL',
    }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${name} failed (${err.message.split('\n')[0]}): ${stderr.trim().split('\n').slice(-5).join(' | ')}`));
        return;
      }
      const last = stdout.trim().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(last) as T);
      } catch {
        reject(new Error(`${name} printed no JSON result: ${last.slice(0, 200)}`));
      }
    });
  });
}
