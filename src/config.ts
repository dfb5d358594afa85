/**
 * Typed, validated configuration: the only module that reads process.env.
 * Defaults live in config/default.json, keyed by the environment variable that overrides them,
 * so one file shows every knob an operator can turn.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { z } from 'zod';
import { ConfigError } from './lib/errors.js';
import { redactUrl } from './lib/logger.js';

const int = (min: number, max = Number.MAX_SAFE_INTEGER) => {
  const msg = `must be a whole number${max === Number.MAX_SAFE_INTEGER ? ` of at least ${min}` : ` from ${min} to ${max}`}`;
  return z.string().trim().regex(/^-?\d+$/, msg).transform(Number).refine((n) => n >= min && n <= max, msg);
};
const url = (protocols: RegExp) => z.string().refine((v) => {
  try { return protocols.test(new URL(v).protocol); } catch { return false; }
}, 'must be a URL');
const msList = z.string().transform((s, ctx) => {
  const parts = s.split(',').map((p) => Number(p.trim()));
  if (parts.length === 0 || parts.some((n) => !Number.isInteger(n) || n <= 0)) {
    ctx.addIssue({ code: 'custom', message: 'must be a comma-separated list of positive milliseconds' });
    return z.NEVER;
  }
  return parts;
});
const cidrList = z.string().transform((s) => s.split(',').map((p) => p.trim()).filter(Boolean));

/** Every key: [environment variable, one-line doc, schema]. README's config table mirrors this. */
export const configKeys = {
  role: ['ROLE', 'Which parts run in this process: all, api or worker', z.enum(['all', 'api', 'worker'])],
  port: ['PORT', 'HTTP port of the API (0 = any free port)', int(0, 65535)],
  host: ['HOST', 'HTTP bind address', z.string().min(1)],
  logLevel: ['LOG_LEVEL', 'winston log level', z.enum(['error', 'warn', 'info', 'debug'])],
  instanceId: ['INSTANCE_ID', 'Name of this process in logs and domain claims (default: host:pid)', z.string()],
  databaseUrl: ['DATABASE_URL', 'PostgreSQL connection URL', url(/^postgres(ql)?:$/)],
  databasePoolSize: ['DATABASE_POOL_SIZE', 'PostgreSQL pool size per process', int(1, 200)],
  databaseStatementTimeoutMs: ['DATABASE_STATEMENT_TIMEOUT_MS', 'Statement and connect timeout for PostgreSQL', int(100)],
  redisUrl: ['REDIS_URL', 'Redis URL holding the shared token and its lock', url(/^rediss?:$/)],
  redisKeyPrefix: ['REDIS_KEY_PREFIX', 'Prefix of every Redis key (isolates environments)', z.string().min(1)],
  rabbitmqUrl: ['RABBITMQ_URL', 'RabbitMQ URL', url(/^amqps?:$/)],
  amqpPrefix: ['AMQP_PREFIX', 'Prefix of every exchange and queue name', z.string().regex(/^[A-Za-z0-9_.-]+$/)],
  amqpPrefetch: ['AMQP_PREFETCH', 'Jobs (messageIds) in flight per worker process', int(1, 1000)],
  amqpConfirmTimeoutMs: ['AMQP_CONFIRM_TIMEOUT_MS', 'How long a publish waits for the broker confirm', int(100)],
  amqpDeliveryLimit: ['AMQP_DELIVERY_LIMIT', 'Deliveries of one job before the broker parks it', int(1, 1000)],
  retryTiersMs: ['RETRY_TIERS_MS', 'Delays of the retry queues, in order', msList],
  relayIntervalMs: ['RELAY_INTERVAL_MS', 'How often the relay publishes unconfirmed jobs and re-publishes stalled batches', int(100)],
  callbackAuth: ['CALLBACK_AUTH', 'token = require X-Callback-Token; none = no auth (must be explicit)', z.enum(['token', 'none'])],
  callbackToken: ['CALLBACK_TOKEN', 'Shared secret the pipeline sends in X-Callback-Token', z.string()],
  callbackAllowCidrs: ['CALLBACK_ALLOW_CIDRS', 'Comma-separated CIDRs allowed to call back (empty = any)', cidrList],
  trustProxy: ['TRUST_PROXY', 'Proxies whose X-Forwarded-For is believed, for the allowlist (express "trust proxy": e.g. loopback, 10.0.0.0/8; empty = none)', z.string()],
  callbackBodyLimit: ['CALLBACK_BODY_LIMIT', 'Largest callback body accepted', z.string().regex(/^\d+(b|kb|mb)$/i)],
  callbackMaxItems: ['CALLBACK_MAX_ITEMS', 'Most domains accepted in one callback', int(1, 100000)],
  adminToken: ['ADMIN_TOKEN', 'Bearer token for POST /api/batches/:id/replay (empty = endpoint disabled)', z.string()],
  secplatBaseUrl: ['SECPLAT_BASE_URL', 'Security platform base URL', url(/^https?:$/)],
  secplatClientId: ['SECPLAT_CLIENT_ID', 'Security platform OAuth client_id', z.string().min(1)],
  secplatUsername: ['SECPLAT_USERNAME', 'Security platform user name', z.string().min(1)],
  secplatPassword: ['SECPLAT_PASSWORD', 'Security platform password', z.string()],
  secplatTimeoutMs: ['SECPLAT_TIMEOUT_MS', 'Timeout of every security-platform call', int(100)],
  secplatBatchSize: ['SECPLAT_BATCH_SIZE', 'Entries per delete_user_info call', int(1, 500)],
  secplatConcurrency: ['SECPLAT_CONCURRENCY', 'Security-platform calls in flight per worker process, across jobs', int(1, 256)],
  secplatMax401Retries: ['SECPLAT_MAX_401_RETRIES', '401s in a row before a call gives up (domain stays retryable)', int(1, 20)],
  tokenRefreshBeforeMs: ['TOKEN_REFRESH_BEFORE_MS', 'Refresh the token this long before it expires', int(0)],
  tokenMinFetchIntervalMs: ['TOKEN_MIN_FETCH_INTERVAL_MS', 'Least time between two token fetches, across all hosts', int(0)],
  tokenLockTtlMs: ['TOKEN_LOCK_TTL_MS', 'Refresher lock TTL (extended while the fetch runs)', int(500)],
  tokenCircuitOpenMs: ['TOKEN_CIRCUIT_OPEN_MS', 'How long token fetches stop after the credentials are rejected', int(1000)],
  domainLeaseMs: ['DOMAIN_LEASE_MS', 'How long a worker owns a claimed domain before another may take it', int(1000)],
  shutdownTimeoutMs: ['SHUTDOWN_TIMEOUT_MS', 'Deadline for a graceful shutdown', int(100)],
} as const;

type Keys = typeof configKeys;
export type Config = Readonly<{ [K in keyof Keys]: z.output<Keys[K][2]> }>;

const defaultsPath = new URL('../config/default.json', import.meta.url);

/** Reads config/default.json overridden by env; throws ConfigError naming the bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Record<string, string>> = {}): Config {
  const defaults = JSON.parse(readFileSync(defaultsPath, 'utf8')) as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [key, [envName, doc, schema]] of Object.entries(configKeys)) {
    const raw = overrides[envName] ?? env[envName] ?? defaults[envName];
    if (raw === undefined) throw new ConfigError(`${envName} is not set and has no default in config/default.json (${doc}).`);
    const parsed = (schema as z.ZodType).safeParse(typeof raw === 'number' ? String(raw) : raw);
    if (!parsed.success) {
      const reason = parsed.error.issues[0]?.message ?? 'is invalid';
      throw new ConfigError(`${envName} ${reason.startsWith('must') ? reason : `is invalid: ${reason}`} (${doc}); got ${JSON.stringify(isSecret(envName) ? '***' : redactUrl(String(raw)))}.`);
    }
    out[key] = parsed.data;
  }
  const config = out as Config & { instanceId: string };
  if (!config.instanceId) config.instanceId = `${os.hostname()}:${process.pid}`;
  if (config.role !== 'worker' && config.callbackAuth === 'token' && !config.callbackToken) {
    throw new ConfigError('CALLBACK_TOKEN must be set (the secret the pipeline sends in X-Callback-Token), or set CALLBACK_AUTH=none to run without callback auth.');
  }
  if (config.tokenLockTtlMs <= config.secplatTimeoutMs) {
    throw new ConfigError(`TOKEN_LOCK_TTL_MS (${config.tokenLockTtlMs}) must be longer than SECPLAT_TIMEOUT_MS (${config.secplatTimeoutMs}) so a slow token fetch keeps its lock.`);
  }
  return Object.freeze(config);
}

const SECRETS = new Set(['SECPLAT_PASSWORD', 'CALLBACK_TOKEN', 'ADMIN_TOKEN']);
function isSecret(envName: string): boolean {
  return SECRETS.has(envName);
}
