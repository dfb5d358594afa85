/**
 * Readiness: can this process do its work right now? One answer, used by /readyz and by the
 * `pcp_ready{dependency}` gauge, so the probe and the alert never disagree.
 */
import type { Logger } from '../lib/logger.js';
import { withTimeout } from '../lib/timing.js';

export type Dependency = 'postgres' | 'redis' | 'rabbitmq';
export type CheckResult = 'ok' | 'down';
export type Readiness = Record<Dependency, CheckResult>;

/** Only what the checks need, so a test can pass fakes and the HTTP layer its own deps. */
export interface ReadinessDeps {
  db: { query(sql: string): Promise<unknown> };
  redis: { ping(): Promise<unknown> };
  broker: { readonly isConnected: boolean };
  logger: Pick<Logger, 'warn'>;
}

export const DEPENDENCIES: readonly Dependency[] = ['postgres', 'redis', 'rabbitmq'];
export const READINESS_TIMEOUT_MS = 2000;

/**
 * ok/down per dependency, the checks run at once, each bounded by `timeoutMs` (2 s), so a whole check takes
 * at most that long. The answer is served to anyone (/readyz) and exported as a metric, so it never carries
 * an address or error text (a pg error names host:port); the detail goes to the log at warn instead.
 */
export async function checkReadiness(deps: ReadinessDeps, opts: { timeoutMs?: number } = {}): Promise<Readiness> {
  const timeoutMs = opts.timeoutMs ?? READINESS_TIMEOUT_MS;
  const check = async (dependency: Dependency, fn: () => Promise<unknown>): Promise<CheckResult> => {
    try {
      await withTimeout(Promise.resolve().then(fn), timeoutMs);
      return 'ok';
    } catch (err) {
      deps.logger.warn('readiness check failed', { check: dependency, err: (err as Error).message });
      return 'down';
    }
  };
  const [postgres, redis, rabbitmq] = await Promise.all([
    check('postgres', () => deps.db.query('SELECT 1')),
    check('redis', () => deps.redis.ping()),
    // amqplib reconnects on its own; "connected" means the channels and topology are rebuilt too.
    check('rabbitmq', async () => { if (!deps.broker.isConnected) throw new Error('not connected'); }),
  ]);
  return { postgres, redis, rabbitmq };
}
