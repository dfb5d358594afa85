/**
 * Token watch: what operators are told about the shared token without having to ask.
 *
 * - External invalidations: a 401 on the token that is still the stored one (same generation, same token,
 *   not about to expire) means another client fetched a token with our credentials, since the platform
 *   keeps one valid token per credential set. Each generation is counted once across all processes, and
 *   the times are kept in Redis so every process reports the same count.
 * - Fetches per UTC calendar day, shared in Redis, against TOKEN_DAILY_BUDGET (an early warning before the
 *   platform's own quota; see CONTEXT.md, "exceeded the vendor's daily quota").
 * - The token's state without the secret, for GET /api/token, `npm run token` and the /metrics gauges.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import client from 'prom-client';
import type { Config } from '../config.js';
import type { Logger } from '../lib/logger.js';
import type { AlarmType } from '../store/alarms.js';

export type TokenWatchConfig = Pick<Config, 'redisKeyPrefix' | 'tokenContentionMax' | 'tokenDailyBudget' | 'secplatTimeoutMs'
  | 'secplatClientId' | 'secplatUsername'>;

const HOUR_MS = 3_600_000;
/** External invalidations are kept this long (the state shows the last one within it). */
const KEEP_MS = 24 * HOUR_MS;
/** A day's fetch count outlives its day, so yesterday's can still be read after midnight UTC. */
const DAY_KEY_TTL_MS = 2 * KEEP_MS;
/** Share of TOKEN_DAILY_BUDGET at which the TOKEN_BUDGET alarm is raised. */
export const BUDGET_ALARM_RATIO = 0.8;

/** Every Redis key of the shared token, in one place. */
export function tokenKeys(prefix: string) {
  const p = `${prefix}:secplat:token`;
  return {
    token: p,
    lock: `${p}:lock`,
    lastFetch: `${p}:last-fetch`,
    circuit: `${p}:circuit`,
    /** Sorted set: one member "<generation>:<ms>" per externally invalidated generation, scored by <ms>. */
    externalInvalidations: `${p}:external-invalidations`,
    /** Marker that generation g was already counted (SET NX). */
    externalOf: (generation: number) => `${p}:external:${generation}`,
    fetchesOn: (day: string) => `${p}:fetches:${day}`,
    budgetAlarmOn: (day: string) => `${p}:budget-alarm:${day}`,
  };
}

/** "2026-11-24": the UTC calendar day the fetch budget counts against. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The shared token as operators see it: never the token itself. */
export interface TokenState {
  /** When this state was read. */
  readAt: string;
  /** Generation of the stored token; null when none was ever fetched (or Redis lost it). */
  generation: number | null;
  fetchedAt: string | null;
  ageSeconds: number | null;
  expiresAt: string | null;
  /** Negative once the token has expired. */
  expiresInSeconds: number | null;
  /** The UTC calendar day `fetchesToday` counts (requests to the token endpoint, refused ones included). */
  fetchDay: string;
  fetchesToday: number;
  dailyBudget: number;
  /** Fetches today at which the TOKEN_BUDGET alarm is raised (80 % of the budget). */
  budgetAlarmAt: number;
  /** Current tokens invalidated by another client within the last hour, across all processes. */
  externalInvalidationsLastHour: number;
  /** More than this within one hour raises TOKEN_CONTENTION. */
  contentionMax: number;
  lastExternalInvalidationAt: string | null;
  /** The bad-credentials circuit: while open, no process fetches a token. */
  circuit: { open: boolean; reason: string | null; remainingSeconds: number; until: string | null };
}

export interface TokenAlarm {
  type: Extract<AlarmType, 'TOKEN_CONTENTION' | 'TOKEN_BUDGET'>;
  content: string;
  details: Record<string, unknown>;
}

export type RejectionNote =
  | { counted: true; lastHour: number }
  /** `already-counted`: another caller recorded this generation; `not-current`: expired, about to, or already replaced. */
  | { counted: false; reason: 'already-counted' | 'not-current' };

// Atomic with the compare-and-set that stores tokens: the 401 is external only if the token used is still
// the stored one. The token is compared by SHA-1 so it never travels to Redis again (nor into its slowlog).
const NOTE_REJECTION = `
local h = redis.call('HMGET', KEYS[1], 'generation', 'token', 'expiresAt')
if tonumber(h[1] or '-1') ~= tonumber(ARGV[1]) or not h[2] or redis.sha1hex(h[2]) ~= ARGV[2] then return -1 end
if tonumber(h[3] or '0') <= tonumber(ARGV[3]) then return -1 end
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[6]) then return 0 end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1] .. ':' .. ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return redis.call('ZCOUNT', KEYS[3], ARGV[7], '+inf')`;

// One INCR per request to the token endpoint; the alarm marker is set by exactly one process per day.
const COUNT_FETCH = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local alarm = 0
if n >= tonumber(ARGV[2]) and redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[1]) then alarm = 1 end
return {n, alarm}`;

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
const seconds = (ms: number): number => Math.round(ms) / 1000;

/**
 * The Redis side of the watch. Methods throw Redis errors as they come; TokenManager turns them into
 * TokenUnavailableError like every other Redis call of the token.
 */
export class TokenWatch {
  private readonly keys: ReturnType<typeof tokenKeys>;

  constructor(private readonly deps: { redis: Redis; config: TokenWatchConfig }) {
    this.keys = tokenKeys(deps.config.redisKeyPrefix);
  }

  /** Fetches today at which TOKEN_BUDGET is raised. */
  get budgetAlarmAt(): number {
    return Math.max(1, Math.ceil(this.deps.config.tokenDailyBudget * BUDGET_ALARM_RATIO));
  }

  /**
   * After a 401 on `used`: records an external invalidation when `used` is still the stored token and not
   * about to expire, once per generation across all processes.
   */
  async noteRejection(used: { token: string; generation: number }, now = Date.now()): Promise<RejectionNote> {
    // Our expiresAt is taken when the token reply arrived; the platform started the clock when it issued
    // it, up to one call timeout earlier. A 401 inside that margin may be plain expiry.
    const expiredBy = now + this.deps.config.secplatTimeoutMs;
    const r = Number(await this.deps.redis.eval(NOTE_REJECTION, 3,
      this.keys.token, this.keys.externalOf(used.generation), this.keys.externalInvalidations,
      String(used.generation), sha1(used.token), String(expiredBy), String(now), String(now - KEEP_MS), String(KEEP_MS),
      String(now - HOUR_MS)));
    if (r === -1) return { counted: false, reason: 'not-current' };
    if (r === 0) return { counted: false, reason: 'already-counted' };
    return { counted: true, lastHour: r };
  }

  /** Counts one request to the token endpoint today (UTC); `alarm` is true for the one call that crossed 80 %. */
  async countFetch(now = Date.now()): Promise<{ day: string; fetches: number; alarm: boolean }> {
    const day = utcDay(now);
    const [n, alarm] = await this.deps.redis.eval(COUNT_FETCH, 2, this.keys.fetchesOn(day), this.keys.budgetAlarmOn(day),
      String(DAY_KEY_TTL_MS), String(this.budgetAlarmAt), String(now)) as [number, number];
    return { day, fetches: Number(n), alarm: Number(alarm) === 1 };
  }

  /** The state, read in one MULTI so its parts agree. Never reads the token itself. */
  async state(now = Date.now()): Promise<TokenState> {
    const { redis, config } = this.deps;
    const day = utcDay(now);
    const replies = await redis.multi()
      .hmget(this.keys.token, 'generation', 'expiresAt', 'lifetimeMs')
      .get(this.keys.fetchesOn(day))
      .zcount(this.keys.externalInvalidations, String(now - HOUR_MS), '+inf')
      // The last member by score; members are "<generation>:<ms>", so no WITHSCORES (its shape differs in RESP3).
      .zrange(this.keys.externalInvalidations, '-1', '-1')
      .get(this.keys.circuit)
      .pttl(this.keys.circuit)
      .exec();
    if (!replies) throw new Error('Redis discarded the token state transaction');
    const values = replies.map(([err, value]) => {
      if (err) throw err;
      return value;
    });
    const [tokenFields, fetches, lastHour, last, reason, circuitTtl] = values as
      [(string | null)[], string | null, number, string[], string | null, number];
    const [generation, expiresAt, lifetimeMs] = tokenFields.map((v) => (v === null || v === '' ? null : Number(v)));
    const expiry = expiresAt || null; // 0: a generation kept without a token
    const fetchedAt = expiry !== null && lifetimeMs ? expiry - lifetimeMs : null;
    const lastMs = last[0] === undefined ? NaN : Number(last[0].slice(last[0].indexOf(':') + 1));
    const lastAt = Number.isFinite(lastMs) ? lastMs : null;
    const open = circuitTtl > 0 || (reason !== null && circuitTtl === -1);
    return {
      readAt: new Date(now).toISOString(),
      generation: generation ?? null,
      fetchedAt: iso(fetchedAt),
      ageSeconds: fetchedAt === null ? null : seconds(now - fetchedAt),
      expiresAt: iso(expiry),
      expiresInSeconds: expiry === null ? null : seconds(expiry - now),
      fetchDay: day,
      fetchesToday: Number(fetches ?? 0),
      dailyBudget: config.tokenDailyBudget,
      budgetAlarmAt: this.budgetAlarmAt,
      externalInvalidationsLastHour: Number(lastHour),
      contentionMax: config.tokenContentionMax,
      lastExternalInvalidationAt: iso(lastAt),
      circuit: {
        open,
        reason: open ? reason : null,
        remainingSeconds: open && circuitTtl > 0 ? seconds(circuitTtl) : 0,
        until: open && circuitTtl > 0 ? iso(now + circuitTtl) : null,
      },
    };
  }

  /** TOKEN_CONTENTION: another client keeps taking the token. */
  contentionAlarm(lastHour: number): TokenAlarm {
    const { tokenContentionMax: max, secplatClientId: clientId, secplatUsername: user } = this.deps.config;
    return {
      type: 'TOKEN_CONTENTION',
      content: `another client, likely another environment, is fetching tokens with these credentials (client_id ${clientId}, user ${user}): `
        + `our current token was invalidated ${lastHour} times in the last hour (more than TOKEN_CONTENTION_MAX ${max}). `
        + 'Every fetch there kills our token and every refresh here kills theirs; give each environment its own credentials.',
      details: { externalInvalidationsLastHour: lastHour, contentionMax: max, clientId, user },
    };
  }

  /** TOKEN_BUDGET: fetches today reached 80 % of the budget. */
  budgetAlarm(day: string, fetches: number): TokenAlarm {
    const budget = this.deps.config.tokenDailyBudget;
    return {
      type: 'TOKEN_BUDGET',
      content: `${fetches} token fetches today (UTC day ${day}): ${Math.round((fetches / budget) * 100)} % of TOKEN_DAILY_BUDGET ${budget}. `
        + 'Fetching continues; the security platform\'s own daily quota decides when it stops. Many fetches usually mean '
        + 'the token keeps being invalidated (see TOKEN_CONTENTION and `npm run token`).',
      details: { day, fetchesToday: fetches, dailyBudget: budget },
    };
  }
}

function sha1(text: string): string {
  return createHash('sha1').update(text).digest('hex');
}

/**
 * The token gauges of /metrics, read from Redis at scrape time. Separate from createMetrics() because they
 * need a TokenManager; src/context.ts calls this once both exist. A failed read (Redis down) leaves the
 * Redis-backed gauges without a sample and is logged at debug: the rest of the scrape is served.
 */
export function registerTokenGauges(
  registry: client.Registry,
  source: { state(): Promise<TokenState> },
  opts: { dailyBudget: number; logger: Logger },
): void {
  // prom-client collects every metric of a scrape concurrently: the gauges share one Redis read.
  let inflight: Promise<TokenState | null> | undefined;
  const read = (): Promise<TokenState | null> => (inflight ??= source.state()
    .catch((err: unknown) => {
      opts.logger.debug('token state unavailable for /metrics; token gauges left unset', { err: (err as Error).message });
      return null;
    })
    .finally(() => { inflight = undefined; }));

  const gauge = (name: string, help: string, pick: (s: TokenState) => number | null) => new client.Gauge({
    name, help, registers: [registry],
    async collect() {
      const state = await read();
      const value = state ? pick(state) : null;
      // No sample rather than a stale or made-up one: an absent series reads as "unknown".
      if (value === null) this.remove();
      else this.set(value);
    },
  });
  const unixSeconds = (text: string | null) => (text === null ? null : Date.parse(text) / 1000);

  gauge('pcp_token_generation', 'Generation of the shared token stored in Redis', (s) => s.generation);
  gauge('pcp_token_age_seconds', 'Seconds since the shared token was fetched', (s) => s.ageSeconds);
  gauge('pcp_token_expires_in_seconds', 'Seconds until the shared token expires (negative once expired)', (s) => s.expiresInSeconds);
  gauge('pcp_token_fetches_today', 'Requests to the token endpoint this UTC day, across all processes', (s) => s.fetchesToday);
  gauge('pcp_token_external_invalidations_last_hour', 'Current tokens invalidated by another client in the last hour, across all processes',
    (s) => s.externalInvalidationsLastHour);
  gauge('pcp_token_last_external_invalidation_timestamp_seconds', 'When a current token was last invalidated by another client (Unix time, within 24 h)',
    (s) => unixSeconds(s.lastExternalInvalidationAt));
  gauge('pcp_token_circuit_open', '1 while the bad-credentials circuit stops token fetches, else 0', (s) => (s.circuit.open ? 1 : 0));
  // From config, not Redis: always present.
  new client.Gauge({ name: 'pcp_token_daily_budget', help: 'TOKEN_DAILY_BUDGET: token fetches expected per UTC day', registers: [registry] })
    .set(opts.dailyBudget);
}
