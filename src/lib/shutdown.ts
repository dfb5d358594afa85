/**
 * Releasers: every resource registers how to release itself when it is created; shutdown runs them
 * last-in first-out, continues past failures, is safe to call twice and is forced after a deadline.
 */
import type { Logger } from './logger.js';

type Releaser = { name: string; release: () => Promise<void> | void };

export class Releasers {
  private readonly stack: Releaser[] = [];
  private closing: Promise<void> | undefined;

  add(name: string, release: () => Promise<void> | void): void {
    this.stack.push({ name, release });
  }

  /** Runs every releaser once, newest first; a second call returns the same promise. */
  releaseAll(logger?: Logger, deadlineMs = 20_000): Promise<void> {
    this.closing ??= this.run(logger, deadlineMs);
    return this.closing;
  }

  private async run(logger: Logger | undefined, deadlineMs: number): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    while (this.stack.length > 0) {
      const r = this.stack.pop()!;
      const left = Math.max(1, deadline - Date.now());
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          Promise.resolve().then(r.release),
          new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${left} ms`)), left); }),
        ]);
      } catch (err) {
        logger?.warn('release failed, continuing', { resource: r.name, err });
      } finally {
        clearTimeout(timer);
      }
    }
  }
}
