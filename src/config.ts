/**
 * Typed, validated configuration: the only module that reads process.env.
 * Defaults live in config/default.json, keyed by the environment variable that overrides them,
 * so one file shows every knob an operator can turn.
 */
import { readFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import os from 'node:os';
import { z } from 'zod';
import { ConfigError } from './lib/errors.js';
import { redactUrl } from './lib/logger.js';
import { WEBHOOK_FORMATS } from './notify/format.js';
import { PASSWORD_HASH_RULE, parsePasswordHash } from './http/session.js';

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

/** One allowlist entry: an address and how many leading bits of it must match. */
export interface Cidr { address: string; prefix: number; family: 'ipv4' | 'ipv6' }

/**
 * "10.0.0.0/8", "2001:db8::/32" or a plain address (one host); null for anything else. Strict on purpose:
 * "10.0.0.1/" once read as /0 (Number('') is 0) and let everyone in.
 */
export function parseCidr(text: string): Cidr | null {
  const m = /^([^/]+)(?:\/([0-9]{1,3}))?$/.exec(text);
  if (!m) return null;
  const address = m[1]!;
  // A zone id ("fe80::1%eth0") cannot be matched against a caller's address.
  if (address.includes('%')) return null;
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : null;
  if (!family) return null;
  const max = family === 'ipv4' ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  return prefix <= max ? { address, prefix, family } : null;
}

const commaList = (s: string) => s.split(',').map((p) => p.trim()).filter(Boolean);
const CIDR_RULE = 'IP addresses or CIDRs (IPv4 prefix 0-32, IPv6 prefix 0-128, e.g. 10.0.0.0/8, 2001:db8::/32)';
const cidrList = z.string().transform((s, ctx): Cidr[] => {
  const out: Cidr[] = [];
  for (const entry of commaList(s)) {
    const cidr = parseCidr(entry);
    if (!cidr) {
      ctx.addIssue({ code: 'custom', message: `must be a comma-separated list of ${CIDR_RULE}; ${JSON.stringify(entry)} is not one` });
      return z.NEVER;
    }
    out.push(cidr);
  }
  return out;
});

/** express's named ranges for "trust proxy" (https://expressjs.com/en/guide/behind-proxies.html). */
const PROXY_RANGES = new Set(['loopback', 'linklocal', 'uniquelocal']);
// Parsed here so a bad value stops start-up: "true" once crashed createApp, and "1" (a hop count to
// express) silently trusted the address 0.0.0.1. Trusting every hop would let callers forge their address.
const proxyList = z.string().transform((s, ctx): string[] => {
  const out: string[] = [];
  for (const entry of commaList(s)) {
    const named = entry.toLowerCase();
    const cidr = PROXY_RANGES.has(named) ? null : parseCidr(entry);
    if (!PROXY_RANGES.has(named) && !cidr) {
      ctx.addIssue({ code: 'custom', message: `must be a comma-separated list of loopback, linklocal, uniquelocal or ${CIDR_RULE}; ${JSON.stringify(entry)} is not one` });
      return z.NEVER;
    }
    out.push(cidr ? `${cidr.address}/${cidr.prefix}` : named);
  }
  return out;
});

/** Bearer secrets: empty (role off) or long enough that guessing is hopeless. */
export const MIN_SECRET_LENGTH = 16;
const bearerSecret = z.string().refine((v) => v === '' || v.length >= MIN_SECRET_LENGTH, `must be empty or at least ${MIN_SECRET_LENGTH} characters`);

/** A person who may sign in to the console (CONSOLE_USERS); `hash` is checked by parsePasswordHash. */
export interface ConsoleUser { name: string; role: 'viewer' | 'operator'; hash: string }
/** Console user names: what the audit shows. No ":" or "," (the separators), none of the bearer names. */
export const CONSOLE_USER_NAME = /^[A-Za-z0-9._@-]{1,64}$/;
export const RESERVED_NAMES = new Set(['admin-token', 'viewer-token', 'system']);
const CONSOLE_USERS_RULE = `must be comma-separated name:role:hash entries (name of 1-64 letters, digits, ".", "_", "@" or "-", not ${[...RESERVED_NAMES].join(', ')}; role viewer or operator; hash ${PASSWORD_HASH_RULE})`;
// Messages name an entry by its position and user name only: the value holds password hashes.
const consoleUserList = z.string().transform((s, ctx): ConsoleUser[] => {
  const out: ConsoleUser[] = [];
  const entries = commaList(s);
  for (const [i, entry] of entries.entries()) {
    const [name = '', role = '', ...rest] = entry.split(':');
    const hash = rest.join(':');
    const which = `entry ${i + 1}${CONSOLE_USER_NAME.test(name) ? ` (${JSON.stringify(name)})` : ''}`;
    const problem = !CONSOLE_USER_NAME.test(name) || RESERVED_NAMES.has(name) ? 'has no valid name'
      : role !== 'viewer' && role !== 'operator' ? 'has a role other than viewer or operator'
        : !parsePasswordHash(hash) ? 'has no valid hash'
          : out.some((u) => u.name === name) ? 'repeats a name'
            : undefined;
    if (problem) {
      ctx.addIssue({ code: 'custom', message: `${CONSOLE_USERS_RULE}; ${which} ${problem}` });
      return z.NEVER;
    }
    out.push(Object.freeze({ name, role: role as ConsoleUser['role'], hash }));
  }
  return out;
});
// Headers that carry something else (credentials, addresses, the CSRF token): never a user name.
const NOT_A_USER_HEADER = new Set(['authorization', 'cookie', 'host', 'origin', 'referer', 'x-csrf-token', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded', 'x-callback-token']);
const ssoHeader = z.string().trim().toLowerCase().refine((v) => v === '' || (/^[a-z0-9!#$%&'*+.^_`|~-]{1,64}$/.test(v) && !NOT_A_USER_HEADER.has(v) && !v.startsWith('content-')),
  'must be empty or an HTTP header name such as X-Forwarded-User (not Authorization, Cookie, Host, Origin or an X-Forwarded-For/Proto/Host header)');

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
  amqpPrefetch: ['AMQP_PREFETCH', 'Most jobs (messageIds) a worker process holds at once; it asks for more only while those it holds cannot fill its calls (one-domain callbacks need up to (2 × SECPLAT_CONCURRENCY + 2) × SECPLAT_BATCH_SIZE)', int(1, 1000)],
  amqpConfirmTimeoutMs: ['AMQP_CONFIRM_TIMEOUT_MS', 'How long a publish waits for the broker confirm', int(100)],
  amqpDeliveryLimit: ['AMQP_DELIVERY_LIMIT', 'Deliveries of one job before the broker parks it', int(1, 1000)],
  retryTiersMs: ['RETRY_TIERS_MS', 'Delays of the retry queues, in order', msList],
  relayIntervalMs: ['RELAY_INTERVAL_MS', 'How often the relay publishes unconfirmed jobs and re-publishes stalled batches', int(100)],
  awaitingPipelineAlarmMs: ['AWAITING_PIPELINE_ALARM_MS', 'How long a domain may stay awaiting_pipeline (reported unfinished by the pipeline) before an AWAITING_PIPELINE alarm names it; repeated once per period while it waits', int(1000)],
  callbackAuth: ['CALLBACK_AUTH', 'token = require X-Callback-Token; none = no auth (must be explicit)', z.enum(['token', 'none'])],
  callbackToken: ['CALLBACK_TOKEN', 'Shared secret the pipeline sends in X-Callback-Token (at least 16 characters)', z.string()],
  callbackAllowCidrs: ['CALLBACK_ALLOW_CIDRS', 'Comma-separated IPs or CIDRs allowed to call back, e.g. 10.0.0.0/8 (empty = any)', cidrList],
  trustProxy: ['TRUST_PROXY', 'Proxies whose X-Forwarded-For is believed, for the allowlist: comma-separated IPs, CIDRs or loopback, linklocal, uniquelocal (empty = none)', proxyList],
  callbackBodyLimit: ['CALLBACK_BODY_LIMIT', 'Largest callback body accepted', z.string().regex(/^\d+(b|kb|mb)$/i)],
  callbackMaxItems: ['CALLBACK_MAX_ITEMS', 'Most domains accepted in one callback', int(1, 100000)],
  ingestStatementsInFlight: ['INGEST_STATEMENTS_IN_FLIGHT', 'Most ingest statements one process runs at once; callbacks arriving meanwhile are stored together by the next one (group commit), each answered once it committed', int(1, 200)],
  publishFlagFlushMs: ['PUBLISH_FLAG_FLUSH_MS', 'Publish flags of jobs the broker confirmed are cleared together, by at most one UPDATE per this many ms per process (a flag not cleared yet only lets the relay publish that job again)', int(1, 500)],
  adminToken: ['ADMIN_TOKEN', 'Bearer token of the operator role: read every operator route and replay (at least 16 characters; empty = no operator)', bearerSecret],
  viewerToken: ['VIEWER_TOKEN', 'Bearer token of the viewer role: read batches, alarms and /metrics, never replay (at least 16 characters, not ADMIN_TOKEN; empty = no viewer)', bearerSecret],
  metricsAuth: ['METRICS_AUTH', 'token = /metrics needs VIEWER_TOKEN or ADMIN_TOKEN as a bearer; none = /metrics open to anyone who reaches the port (must be explicit)', z.enum(['token', 'none'])],
  consoleUsers: ['CONSOLE_USERS', 'People who may sign in at /console/login: comma-separated name:role:hash entries, role viewer or operator, hash printed by npm run console:user (empty = no console sign-in)', consoleUserList],
  consoleSessionTtlMs: ['CONSOLE_SESSION_TTL_MS', 'Longest a console session lasts after sign-in, however active', int(1000, 2_592_000_000)],
  consoleSessionIdleMs: ['CONSOLE_SESSION_IDLE_MS', 'A console session ends after this long without a request (each request restarts the clock)', int(1000, 2_592_000_000)],
  consoleLoginMaxFailures: ['CONSOLE_LOGIN_MAX_FAILURES', 'Failed sign-ins allowed per name and address (four times as many per address) within CONSOLE_LOGIN_WINDOW_MS; then 429 until the window ends. Counted in memory by each process', int(1, 1000)],
  consoleLoginWindowMs: ['CONSOLE_LOGIN_WINDOW_MS', 'The window of CONSOLE_LOGIN_MAX_FAILURES', int(1000, 86_400_000)],
  ssoUserHeader: ['SSO_USER_HEADER', 'Header in which a single sign-on proxy names the signed-in user, e.g. X-Forwarded-User; believed only from a TRUST_PROXY address (empty = no single sign-on)', ssoHeader],
  ssoOperators: ['SSO_OPERATORS', 'Comma-separated user names (exactly as the SSO proxy sends them) who are operators; everyone else the proxy lets through is a viewer', z.string().transform(commaList)],
  httpRequestTimeoutMs: ['HTTP_REQUEST_TIMEOUT_MS', 'Longest a client may take to send one whole request (headers within the first 10 s); then 408 and the connection closes', int(100, 600_000)],
  httpMaxConnections: ['HTTP_MAX_CONNECTIONS', 'Most HTTP connections open at once; a connection beyond it is closed at once', int(1, 1_000_000)],
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
  tokenContentionMax: ['TOKEN_CONTENTION_MAX', 'External token invalidations (another client fetching a token with our credentials) allowed within one hour; one more raises a TOKEN_CONTENTION alarm', int(0, 1_000_000)],
  tokenDailyBudget: ['TOKEN_DAILY_BUDGET', 'Token fetches expected per UTC calendar day across all hosts; a TOKEN_BUDGET alarm at 80 % (fetching never stops because of it)', int(1)],
  domainLeaseMs: ['DOMAIN_LEASE_MS', 'How long a worker owns a claimed domain before another may take it', int(1000)],
  shutdownTimeoutMs: ['SHUTDOWN_TIMEOUT_MS', 'Deadline for a graceful shutdown', int(100)],
  alarmWebhookUrl: ['ALARM_WEBHOOK_URL', 'Where every process POSTs a notification when an alarm opens or resolves: http or https (Slack, WeCom or DingTalk robot, or any JSON receiver); never logged; empty = notifications off (outbox rows stay undelivered)',
    z.string().refine((v) => v === '' || url(/^https?:$/).safeParse(v).success, 'must be empty or an http:// or https:// URL')],
  alarmWebhookFormat: ['ALARM_WEBHOOK_FORMAT', 'Body of the alarm notifications: json (generic), slack, wecom or dingtalk', z.enum(WEBHOOK_FORMATS)],
  alarmWebhookTimeoutMs: ['ALARM_WEBHOOK_TIMEOUT_MS', 'Longest one notification request may take, answer included; then it is retried', int(100, 120_000)],
  alarmNotifyGroupMs: ['ALARM_NOTIFY_GROUP_MS', 'At most one notification per alarm type per this period; alarm events in between go out together in the next one (0 = no grouping)', int(0, 86_400_000)],
  alarmNotifyIntervalMs: ['ALARM_NOTIFY_INTERVAL_MS', 'How often each process looks for alarm notifications to send', int(50, 600_000)],
  alarmNotifyBackoffMs: ['ALARM_NOTIFY_BACKOFF_MS', 'Wait before the first retry of a notification that was not confirmed; doubled at each further attempt', int(50, 86_400_000)],
  alarmNotifyBackoffMaxMs: ['ALARM_NOTIFY_BACKOFF_MAX_MS', 'Longest wait between two attempts of a notification (it is retried until confirmed)', int(50, 86_400_000)],
  publicBaseUrl: ['PUBLIC_BASE_URL', 'Base URL operators open the service at, for links in notifications (<PUBLIC_BASE_URL>/console/batches/<messageId>); empty = no links',
    z.string().refine((v) => v === '' || url(/^https?:$/).safeParse(v).success, 'must be empty or an http:// or https:// URL').transform((v) => v.replace(/\/+$/, ''))],
  bulkReplayMaxBatches: ['BULK_REPLAY_MAX_BATCHES', 'Most batches one bulk replay (POST /api/replays/bulk) may touch; a filter matching more is refused, asking to narrow it', int(1, 100_000)],
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
  if (config.role !== 'worker' && config.callbackAuth === 'token' && config.callbackToken.length < MIN_SECRET_LENGTH) {
    throw new ConfigError(`CALLBACK_TOKEN must be at least ${MIN_SECRET_LENGTH} characters (the secret the pipeline sends in X-Callback-Token); the one set is shorter.`);
  }
  if (config.viewerToken && config.viewerToken === config.adminToken) {
    throw new ConfigError('VIEWER_TOKEN must differ from ADMIN_TOKEN (a viewer may only read; with the same token every viewer could replay).');
  }
  if (config.ssoOperators.length > 0 && !config.ssoUserHeader) {
    throw new ConfigError('SSO_OPERATORS is set but SSO_USER_HEADER is empty: set the header your single sign-on proxy names the user in, or leave SSO_OPERATORS empty.');
  }
  // A worker calls the platform with this password; an empty one only makes sense against the simulator.
  if (config.role !== 'api' && !config.secplatPassword && !isLocalUrl(config.secplatBaseUrl)) {
    throw new ConfigError(`SECPLAT_PASSWORD must be set when SECPLAT_BASE_URL (${redactUrl(config.secplatBaseUrl)}) is not the local simulator on 127.0.0.1, ::1 or localhost.`);
  }
  if (config.alarmNotifyBackoffMaxMs < config.alarmNotifyBackoffMs) {
    throw new ConfigError(`ALARM_NOTIFY_BACKOFF_MAX_MS (${config.alarmNotifyBackoffMaxMs}) must be at least ALARM_NOTIFY_BACKOFF_MS (${config.alarmNotifyBackoffMs}).`);
  }
  if (config.tokenLockTtlMs <= config.secplatTimeoutMs) {
    throw new ConfigError(`TOKEN_LOCK_TTL_MS (${config.tokenLockTtlMs}) must be longer than SECPLAT_TIMEOUT_MS (${config.secplatTimeoutMs}) so a slow token fetch keeps its lock.`);
  }
  return Object.freeze(config);
}

function isLocalUrl(u: string): boolean {
  return ['127.0.0.1', '[::1]', 'localhost'].includes(new URL(u).hostname.toLowerCase());
}

// ALARM_WEBHOOK_URL: robot webhooks carry their secret in the path or query (Slack, WeCom key=, DingTalk access_token=).
const SECRETS = new Set(['SECPLAT_PASSWORD', 'CALLBACK_TOKEN', 'ADMIN_TOKEN', 'VIEWER_TOKEN', 'ALARM_WEBHOOK_URL', 'CONSOLE_USERS']);
function isSecret(envName: string): boolean {
  return SECRETS.has(envName);
}
