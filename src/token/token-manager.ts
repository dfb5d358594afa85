/**
 * The one shared security-platform token.
 *
 * The platform keeps a single valid token per credential set: every fetch kills the previous token. So
 * the token lives in Redis for all workers on all hosts, with its expiry and a generation number, and
 * only the holder of a redlock lock may fetch. The new token is written with a compare-and-set on the
 * generation, so a refresher whose lock ran out during a slow fetch cannot overwrite a newer token.
 * A 401 seen with generation g triggers a refresh only if g is still current. See CONTEXT.md, "The
 * incident this service must make impossible". What operators are told about the token (external
 * invalidations, fetches per day, its state) is in token-watch.ts.
 */
import type { Redis } from 'ioredis';
import { ExecutionError, type Redlock } from '@sesamecare-oss/redlock';
import type { Config } from '../config.js';
import { AppError, BadCredentialsError, DependencyUnavailableError, TokenRejectedError, TokenUnavailableError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import { sleep } from '../lib/timing.js';
import type { SecplatApi } from '../secplat/client.js';
import { TokenWatch, tokenKeys, type TokenAlarm, type TokenState, type TokenWatchConfig } from './token-watch.js';

export interface SharedToken { token: string; generation: number; expiresAt: number; lifetimeMs: number }

type TokenConfig = Pick<Config, 'redisKeyPrefix' | 'tokenRefreshBeforeMs' | 'tokenMinFetchIntervalMs' | 'tokenLockTtlMs'
  | 'tokenCircuitOpenMs' | 'secplatMax401Retries' | 'secplatTimeoutMs'> & TokenWatchConfig;

export interface TokenManagerDeps {
  redis: Redis;
  redlock: Redlock;
  client: Pick<SecplatApi, 'fetchToken'>;
  logger: Logger;
  metrics?: Metrics;
  config: TokenConfig;
  /** Called once each time the circuit opens because the credentials were refused. */
  onCircuitOpen?: (reason: string) => Promise<void>;
  /** Raises TOKEN_CONTENTION and TOKEN_BUDGET (src/context.ts: raiseAlarm with messageId null). */
  onAlarm?: (alarm: TokenAlarm) => Promise<void>;
}

// Writes the new token only if the generation is still the one the refresher read under its lock.
const STORE_IF_GENERATION = `
local cur = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if cur ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'expiresAt', ARGV[3], 'lifetimeMs', ARGV[4], 'generation', cur + 1)
return cur + 1`;

/** Compare-and-set of the shared token: returns the new generation, or -1 if `expected` is no longer current. */
export async function storeTokenIfGeneration(redis: Redis, key: string, expected: number, token: string, expiresAt: number, lifetimeMs = 3_600_000): Promise<number> {
  return Number(await redis.eval(STORE_IF_GENERATION, 1, key, String(expected), token, String(expiresAt), String(lifetimeMs)));
}

export class TokenManager {
  private readonly keys: ReturnType<typeof tokenKeys>;
  private readonly inflight = new Map<number, Promise<SharedToken>>();
  private readonly watch: TokenWatch;
  private readonly pendingAlarms = new Set<Promise<void>>();

  constructor(private readonly deps: TokenManagerDeps) {
    this.keys = tokenKeys(deps.config.redisKeyPrefix);
    this.watch = new TokenWatch({ redis: deps.redis, config: deps.config });
  }

  /** A token valid for a while yet; refreshes (once, cluster-wide) when it is missing or about to expire. */
  async getToken(): Promise<SharedToken> {
    const current = await this.read();
    if (current && this.isFresh(current)) return current;
    try {
      return await this.refresh(current?.generation ?? 0);
    } catch (err) {
      // Refreshing early failed (endpoint down, circuit open): a token that has not expired still works.
      if (current && current.token !== '' && Date.now() < current.expiresAt) return current;
      throw err;
    }
  }

  /**
   * Runs `call` with the shared token; on a 401 refreshes only if that token is still the current one,
   * then retries, up to SECPLAT_MAX_401_RETRIES rejections in a row.
   */
  async withToken<T>(call: (token: string, generation: number) => Promise<T>): Promise<T> {
    let token = await this.getToken();
    for (let rejections = 1; ; rejections++) {
      try {
        return await call(token.token, token.generation);
      } catch (err) {
        if (!(err instanceof TokenRejectedError)) throw err;
        this.deps.metrics?.unauthorized.inc();
        // Before refreshing: afterwards the token used is no longer the stored one.
        await this.noteRejection(token);
        if (rejections >= this.deps.config.secplatMax401Retries) throw err;
        this.deps.logger.info('token rejected, refreshing if still current', { tokenGeneration: err.generation });
        token = await this.refresh(err.generation);
      }
    }
  }

  /** The token is stale from generation `stale` on: fetch a new one unless someone already has. */
  refresh(stale: number): Promise<SharedToken> {
    // Within one process, callers that saw the same generation share one refresh attempt.
    let p = this.inflight.get(stale);
    if (!p) {
      p = this.refreshShared(stale).finally(() => this.inflight.delete(stale));
      this.inflight.set(stale, p);
    }
    return p;
  }

  /** Current shared token, or undefined when none was ever fetched. Throws TokenUnavailableError if Redis is down. */
  async read(): Promise<SharedToken | undefined> {
    const h = await this.redis(() => this.deps.redis.hgetall(this.keys.token));
    if (!h.token) return h.generation ? { token: '', generation: Number(h.generation), expiresAt: 0, lifetimeMs: 0 } : undefined;
    return { token: h.token, generation: Number(h.generation), expiresAt: Number(h.expiresAt), lifetimeMs: Number(h.lifetimeMs ?? 0) };
  }

  /**
   * The token's state for operators (GET /api/token, `npm run token`, /metrics), never the token itself.
   * Throws DependencyUnavailableError('redis') if Redis is down: a read for operators, not a token request,
   * so the HTTP error handler answers 503 and the CLIs exit 1.
   */
  async state(): Promise<TokenState> {
    try {
      return await this.watch.state();
    } catch (err) {
      throw new DependencyUnavailableError('redis', `Redis unavailable: ${(err as Error).message}`, err);
    }
  }

  /** Resolves once every alarm raised so far is written or has failed (and was logged); a releaser waits on it. */
  async alarmsSettled(): Promise<void> {
    await Promise.allSettled([...this.pendingAlarms]);
  }

  /** Milliseconds the bad-credentials circuit stays open (0 = closed). */
  async circuitOpenFor(): Promise<number> {
    return Math.max(0, await this.redis(() => this.deps.redis.pttl(this.keys.circuit)));
  }

  private isFresh(t: SharedToken): boolean {
    // Never refresh earlier than half the token's lifetime, or short-lived tokens would be refreshed forever.
    const margin = Math.min(this.deps.config.tokenRefreshBeforeMs, (t.lifetimeMs || Infinity) / 2);
    return t.token !== '' && Date.now() < t.expiresAt - margin;
  }

  /**
   * Someone else already replaced the stale generation with a token that still works. "Different", not
   * "greater": after Redis lost its data the generation starts again from 0.
   */
  private isNewer(t: SharedToken | undefined, stale: number): boolean {
    return !!t && t.generation !== stale && t.token !== '' && Date.now() < t.expiresAt;
  }

  private async refreshShared(stale: number): Promise<SharedToken> {
    const before = await this.read();
    if (this.isNewer(before, stale)) return before!;
    await this.assertCircuitClosed();
    const { tokenLockTtlMs, tokenMinFetchIntervalMs } = this.deps.config;
    // Waiters keep trying for longer than one full refresh (lock TTL + min interval) can take.
    const retryDelay = 100;
    const retryCount = Math.ceil((2 * tokenLockTtlMs + tokenMinFetchIntervalMs) / retryDelay);
    try {
      return await this.deps.redlock.using([this.keys.lock], tokenLockTtlMs, { retryCount, retryDelay, retryJitter: 50 }, async (signal) => {
        // Re-read under the lock: the previous holder may have refreshed while we waited.
        const current = await this.read();
        if (this.isNewer(current, stale)) return current!;
        await this.assertCircuitClosed();
        if (await this.waitForMinInterval(signal)) {
          // The wait was long enough for things to change: a refresher whose lock had lapsed may have
          // stored a token, or we may have lost the lock. Fetching now would kill a good token.
          const after = await this.read();
          if (this.isNewer(after, stale)) return after!;
          if (signal.aborted) throw new TokenUnavailableError('lost the token refresh lock while waiting');
          return this.fetchAndStore(after?.generation ?? 0, signal);
        }
        return this.fetchAndStore(current?.generation ?? 0, signal);
      });
    } catch (err) {
      if (err instanceof AppError) throw err;
      if (err instanceof ExecutionError) {
        const after = await this.read();
        if (this.isNewer(after, stale)) return after!;
        throw new TokenUnavailableError('could not take the token refresh lock', err);
      }
      throw new TokenUnavailableError(`token refresh failed: ${(err as Error).message}`, err);
    }
  }

  private async fetchAndStore(generation: number, signal: AbortSignal): Promise<SharedToken> {
    if (signal.aborted) throw new TokenUnavailableError('lost the token refresh lock before fetching');
    const { redis, client, logger, metrics, config } = this.deps;
    await this.redis(() => redis.set(this.keys.lastFetch, String(Date.now()), 'PX', Math.max(1, config.tokenMinFetchIntervalMs)));
    // Counted before the request: a refused or failed request still counts against the platform's quota.
    const today = await this.redis(() => this.watch.countFetch());
    if (today.alarm) {
      logger.warn('token fetches today reached 80 % of the daily budget', { day: today.day, fetchesToday: today.fetches, dailyBudget: config.tokenDailyBudget });
      this.raise(this.watch.budgetAlarm(today.day, today.fetches));
    }
    let fetched;
    try {
      fetched = await client.fetchToken();
    } catch (err) {
      metrics?.tokenFetches.inc({ result: err instanceof BadCredentialsError ? 'bad_credentials' : 'error' });
      if (err instanceof BadCredentialsError) await this.openCircuit(err.message);
      throw err;
    }
    metrics?.tokenFetches.inc({ result: 'ok' });
    const lifetimeMs = fetched.expiresInSec * 1000;
    const expiresAt = Date.now() + lifetimeMs;
    const written = await this.redis(() => storeTokenIfGeneration(redis, this.keys.token, generation, fetched.accessToken, expiresAt, lifetimeMs));
    if (written === -1) {
      // Our lock expired and a newer refresher won: its token is the valid one (ours was killed by it, or kills it
      // — either way the stored one is what every worker will use next, and a 401 will converge).
      logger.warn('token refresh lost the compare-and-set; keeping the newer token');
      const now = await this.read();
      if (now) return now;
      throw new TokenUnavailableError('token vanished after a lost compare-and-set');
    }
    logger.info('security-platform token fetched', { tokenGeneration: written, expiresInSec: fetched.expiresInSec });
    return { token: fetched.accessToken, generation: written, expiresAt, lifetimeMs };
  }

  /** Counts a 401 on the still-current token as an external invalidation (once per generation, cluster-wide). */
  private async noteRejection(used: SharedToken): Promise<void> {
    const { logger, metrics, config } = this.deps;
    let note;
    try {
      note = await this.watch.noteRejection(used);
    } catch (err) {
      // Bookkeeping only: the refresh that follows reports an unreachable Redis as TokenUnavailableError.
      logger.warn('could not record the token rejection', { err: (err as Error).message });
      return;
    }
    if (!note.counted) return;
    metrics?.tokenExternalInvalidations.inc();
    logger.warn('token invalidated by another client (likely another environment using our credentials)',
      { tokenGeneration: used.generation, externalInvalidationsLastHour: note.lastHour });
    if (note.lastHour > config.tokenContentionMax) this.raise(this.watch.contentionAlarm(note.lastHour));
  }

  /**
   * Raises an alarm without waiting for it: the write goes to PostgreSQL, and a slow PostgreSQL must not
   * hold the token refresh lock or delay the call that saw the 401.
   */
  private raise(alarm: TokenAlarm): void {
    const { onAlarm, logger } = this.deps;
    if (!onAlarm) return;
    const p: Promise<void> = onAlarm(alarm)
      .catch((err: unknown) => { logger.error('could not raise alarm', { alarmType: alarm.type, err }); })
      .finally(() => this.pendingAlarms.delete(p));
    this.pendingAlarms.add(p);
  }

  /** Sleeps out the minimum interval since the last fetch anywhere; true if it had to wait. */
  private async waitForMinInterval(signal: AbortSignal): Promise<boolean> {
    const wait = await this.redis(() => this.deps.redis.pttl(this.keys.lastFetch));
    if (wait <= 0) return false;
    this.deps.logger.info('token fetched recently, waiting for the minimum interval', { waitMs: wait });
    await sleep(wait, signal);
    return true;
  }

  private async assertCircuitClosed(): Promise<void> {
    const open = await this.circuitOpenFor();
    if (open > 0) throw new BadCredentialsError(`token fetches paused for ${Math.ceil(open / 1000)} s: the security platform refused our credentials`);
  }

  private async openCircuit(reason: string): Promise<void> {
    const opened = await this.redis(() => this.deps.redis.set(this.keys.circuit, reason, 'PX', this.deps.config.tokenCircuitOpenMs, 'NX'));
    this.deps.logger.error('security platform refused our credentials; token fetches paused', { openMs: this.deps.config.tokenCircuitOpenMs });
    if (opened === 'OK') await this.deps.onCircuitOpen?.(reason).catch((err) => this.deps.logger.error('could not raise alarm', { err }));
  }

  /** Every Redis call goes through here: an unreachable Redis means no token, never an uncoordinated fetch. */
  private async redis<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      throw new TokenUnavailableError(`Redis unavailable: ${(err as Error).message}`, err);
    }
  }
}
