/**
 * Test helpers: isolated names per test (AMQP prefix, Redis key prefix), a config built from them,
 * real service processes, and waiting for real effects. Name cleanup, inventory seeding and the service
 * spawner are also the bench's (bench/): one copy each.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig, type Config } from '../../src/config.js';
import { createLogger, type Logger } from '../../src/lib/logger.js';
import { topologyNames } from '../../src/messaging/topology.js';

export const RABBITMQ_URL = process.env.RABBITMQ_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
export const CALLBACK_TOKEN = 'test-callback-token';
export const SECPLAT_PASSWORD = 'test-secplat-password';

export const rand = (n = 4) => randomBytes(n).toString('hex');
export const messageId = () => `pm${randomBytes(16).toString('hex')}`;

/** Environment for one test: unique names, fast retry tiers, the simulator's URL. */
export function testEnv(overrides: Record<string, string> = {}): Record<string, string> {
  const id = `t${rand()}`;
  return {
    DATABASE_URL: process.env.DATABASE_URL!,
    RABBITMQ_URL,
    REDIS_URL,
    AMQP_PREFIX: id,
    REDIS_KEY_PREFIX: id,
    CALLBACK_TOKEN,
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    RETRY_TIERS_MS: '300,600,1000',
    RELAY_INTERVAL_MS: '300',
    SECPLAT_PASSWORD,
    SECPLAT_TIMEOUT_MS: '3000',
    TOKEN_LOCK_TTL_MS: '5000',
    TOKEN_MIN_FETCH_INTERVAL_MS: '200',
    TOKEN_REFRESH_BEFORE_MS: '1000',
    SHUTDOWN_TIMEOUT_MS: '5000',
    ...overrides,
  };
}

/** A statement as it reached PostgreSQL: its text and the pooled connection that ran it. */
export interface Statement { client: pg.PoolClient; text: string }

/** Records every statement run on `pool`'s connections made from now on: pool.query and transactions alike, one per round trip. */
export function recordStatements(pool: pg.Pool): Statement[] {
  const seen: Statement[] = [];
  pool.on('connect', (client) => {
    const original = client.query.bind(client) as (...args: unknown[]) => unknown;
    (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
      const first = args[0];
      seen.push({ client, text: typeof first === 'string' ? first : ((first as { text?: string } | undefined)?.text ?? '') });
      return original(...args);
    };
  });
  return seen;
}

export function testConfig(env: Record<string, string>): Config {
  return loadConfig({}, env);
}

/** A logger whose JSON lines are kept in memory (and can be searched for secrets). */
export function captureLogger(level = 'debug'): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({ write(chunk, _enc, cb) { lines.push(String(chunk)); cb(); } });
  return { logger: createLogger({ level, stream }), lines };
}

/**
 * Deletes every queue and exchange of env's AMQP_PREFIX and every Redis key of its REDIS_KEY_PREFIX.
 * `urls` default to the test servers; env's own RABBITMQ_URL may point nowhere on purpose (a test of an
 * unreachable broker), so it is never used. Every name is tried even when one fails; then it throws.
 */
export async function cleanupNames(
  env: Record<string, string>, urls: { rabbitmqUrl?: string; redisUrl?: string } = {},
): Promise<void> {
  const t = topologyNames(env.AMQP_PREFIX!, (env.RETRY_TIERS_MS ?? '').split(',').map(Number));
  const failures: string[] = [];
  const conn = await amqp.connect(urls.rabbitmqUrl ?? RABBITMQ_URL);
  try {
    // A failed delete closes its channel: one channel per name, so one failure does not skip the rest.
    const names = [
      ...[t.jobsQueue, t.parkedQueue, ...t.retryQueues.map((r) => r.name)].map((name) => ({ kind: 'queue', name })),
      ...[t.jobsExchange, t.retryExchange, t.parkedExchange].map((name) => ({ kind: 'exchange', name })),
    ];
    for (const { kind, name } of names) {
      const ch = await conn.createChannel();
      ch.on('error', () => undefined);
      try {
        if (kind === 'queue') await ch.deleteQueue(name);
        else await ch.deleteExchange(name);
        await ch.close();
      } catch (err) {
        failures.push(`${kind} ${name}: ${(err as Error).message}`);
      }
    }
  } finally {
    await conn.close();
  }
  const redis = new Redis(urls.redisUrl ?? REDIS_URL);
  try {
    await deleteRedisKeys(redis, env.REDIS_KEY_PREFIX!);
  } finally {
    redis.disconnect();
  }
  if (failures.length) throw new Error(`cleanup of ${env.AMQP_PREFIX} left names behind: ${failures.join('; ')}`);
}

/** Deletes every key under `prefix:`; SCAN, never KEYS: KEYS blocks a shared Redis while it walks the whole keyspace. */
export async function deleteRedisKeys(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 500);
    if (keys.length) await redis.del(...keys);
    cursor = next;
  } while (cursor !== '0');
}

/** Messages waiting in a queue of this test's topology. */
export async function queueDepth(env: Record<string, string>, which: 'jobs' | 'parked'): Promise<number> {
  const t = topologyNames(env.AMQP_PREFIX!, [1]);
  const conn = await amqp.connect(RABBITMQ_URL);
  try {
    const ch = await conn.createChannel();
    return (await ch.checkQueue(which === 'jobs' ? t.jobsQueue : t.parkedQueue)).messageCount;
  } finally {
    await conn.close();
  }
}

export function testDb(): pg.Pool {
  return new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
}

/**
 * Active inventory rows for the given domains (user_id_cdn from `idOf`; a known domain becomes active again),
 * written 10,000 per statement. `analyze`: then ANALYZE cdn_domain, so a big seed (the bench's) is planned
 * like the long-lived table it stands for.
 */
export async function seedInventory(
  db: pg.Pool, domains: string[], idOf = (d: string) => `uid-${d}`, opts: { analyze?: boolean } = {},
): Promise<void> {
  for (let i = 0; i < domains.length; i += 10_000) {
    const part = domains.slice(i, i + 10_000);
    await db.query(
      `INSERT INTO cdn_domain (domain, user_id_cdn) SELECT d, u FROM unnest($1::text[], $2::text[]) AS x(d, u)
       ON CONFLICT (domain) DO UPDATE SET user_id_cdn = EXCLUDED.user_id_cdn, status = 'active', deleted_at = NULL, deleted_by_message_id = NULL`,
      [part, part.map(idOf)],
    );
  }
  if (opts.analyze) await db.query('ANALYZE cdn_domain');
}

export function domainsFor(prefix: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `d${i}.${prefix}.example.com`);
}

export function callbackBody(id: string, domains: string[], reqType = 'SELF_DOMAIN_DELETE') {
  return { data: domains.map((targetName) => ({ percent: 1.0, process: false, reqType, targetName })), messageId: id };
}

export async function postCallback(baseUrl: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${baseUrl}/api/pm/pipe/callback`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-callback-token': CALLBACK_TOKEN, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

export async function statusCounts(db: pg.Pool, id: string): Promise<Record<string, number>> {
  const { rows } = await db.query<{ status: string; n: number }>(
    'SELECT status, count(*)::int AS n FROM batch_domain WHERE message_id = $1 GROUP BY status', [id]);
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

export { spawnService, type ServiceProcess } from '../../scripts/service-process.js';
