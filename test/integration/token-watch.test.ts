/**
 * Token watch against real Redis, the simulator and PostgreSQL: external invalidations counted once per
 * generation across processes, the TOKEN_CONTENTION and TOKEN_BUDGET alarm rows, the token's state (never
 * the token) through TokenManager.state(), `npm run token` and the /metrics gauges.
 * Each "host" is a full process context (createContext), so the wiring of src/context.ts is under test too.
 */
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { createApp } from '../../src/http/app.js';
import { createContext, type AppContext } from '../../src/context.js';
import { DependencyUnavailableError } from '../../src/lib/errors.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import { utcDay } from '../../src/token/token-watch.js';
import { REDIS_URL, SECPLAT_PASSWORD, captureLogger, deleteRedisKeys, testConfig, testDb, testEnv } from '../helpers/env.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CONTENTION_TEXT = 'another client, likely another environment, is fetching tokens with these credentials';

interface AlarmRowSeen { message_id: string | null; tag: string; content: string; occurrences: number }

describe('token watch', function () {
  let sim: Simulator;
  let simUrl: string;
  let env: Record<string, string>;
  let redis: Redis;
  let db: pg.Pool;
  const hosts: AppContext[] = [];

  /** One "process": its own context (Redis connection, lock, pools, metrics registry), connected to Redis. */
  async function host(overrides: Record<string, string> = {}, logger = captureLogger('error').logger): Promise<AppContext> {
    const ctx = createContext(testConfig({ ...env, ...overrides }), { logger });
    hosts.push(ctx);
    if (!overrides.REDIS_URL) await ctx.redis.connect();
    return ctx;
  }

  async function hostsOf(n: number, overrides: Record<string, string> = {}): Promise<AppContext[]> {
    return Promise.all(Array.from({ length: n }, () => host(overrides)));
  }

  const key = (suffix: string) => `${env.REDIS_KEY_PREFIX}:secplat:token${suffix}`;

  /** A delete call through the shared token, as the pipeline makes it. */
  const deleteOne = (ctx: AppContext, id: string) => ctx.tokens.withToken((t, g) => ctx.secplat.deleteUsers(t, g, [id]));

  const activeAlarms = async (type: string) => (await db.query<AlarmRowSeen>(
    `SELECT message_id, tag, content, occurrences FROM sys_task_process_alarm WHERE alarm_type = $1 AND state <> 'resolved'`, [type])).rows;

  const settled = () => Promise.all(hosts.map((h) => h.tokens.alarmsSettled()));

  const counterTotal = async (ctx: AppContext) => (await ctx.metrics.tokenExternalInvalidations.get()).values[0]?.value ?? 0;

  function sample(text: string, name: string): number | undefined {
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  }

  function npmToken(args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile('npm', ['run', '--silent', 'token', '--', ...args], {
        cwd: ROOT, timeout: 60_000, env: { ...process.env, ...env, CALLBACK_AUTH: 'none', ...extraEnv },
      }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
    });
  }

  before(() => {
    db = testDb();
  });

  after(async () => {
    await db.end();
  });

  beforeEach(async () => {
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 5 });
    simUrl = (await sim.start()).url;
    env = testEnv({ SECPLAT_BASE_URL: simUrl, TOKEN_MIN_FETCH_INTERVAL_MS: '0', TOKEN_REFRESH_BEFORE_MS: '1000' });
    redis = new Redis(REDIS_URL);
    // Token alarms carry no messageId: one active row per type for the whole database, so start from none.
    await db.query(`UPDATE sys_task_process_alarm SET state = 'resolved', resolved_at = now(), resolved_by = 'token-watch test'
                    WHERE alarm_type IN ('TOKEN_CONTENTION', 'TOKEN_BUDGET') AND state <> 'resolved'`);
  });

  afterEach(async () => {
    for (const h of hosts.splice(0)) await h.release();
    await deleteRedisKeys(redis, env.REDIS_KEY_PREFIX!);
    redis.disconnect();
    await sim.stop();
  });

  it('when twelve callers on four hosts hit a 401 together on a token another client replaced, then the invalidation is counted once', async () => {
    const four = await hostsOf(4);
    const first = await four[0]!.tokens.getToken();
    sim.invalidateToken();
    const results = await Promise.all(four.flatMap((h, i) => [0, 1, 2].map((j) => deleteOne(h, `id-${i}-${j}`))));
    expect(results.every((r) => r.succeeded.length === 1)).to.equal(true);
    expect(sim.stats().unauthorized).to.equal(12);
    expect(sim.stats().tokenFetches).to.equal(2);

    const members = await redis.zrange(key(':external-invalidations'), 0, '-1');
    expect(members).to.have.length(1);
    expect(members[0]!.startsWith(`${first.generation}:`)).to.equal(true);
    expect(await redis.exists(key(`:external:${first.generation}`))).to.equal(1);
    const totals = await Promise.all(four.map(counterTotal));
    expect(totals.reduce((a, b) => a + b, 0)).to.equal(1);
    const states = await Promise.all(four.map((h) => h.tokens.state()));
    expect(states.map((s) => s.externalInvalidationsLastHour)).to.deep.equal([1, 1, 1, 1]);
  });

  it('when a 401 comes from our own refresh (a newer generation is already stored), then it is not counted as an external invalidation', async () => {
    const [a, b] = await hostsOf(2);
    const first = await a!.tokens.getToken();
    let refreshed = false;
    const result = await a!.tokens.withToken(async (t, g) => {
      // Another host of ours refreshes between our read of the token and our call: the call gets a 401.
      if (!refreshed) { refreshed = true; await b!.tokens.refresh(g); }
      return a!.secplat.deleteUsers(t, g, ['x']);
    });
    expect(result.succeeded).to.deep.equal(['x']);
    expect(sim.stats().unauthorized).to.equal(1);
    expect(sim.stats().tokenFetches).to.equal(2);
    expect(Number(await redis.hget(key(''), 'generation'))).to.equal(first.generation + 1);

    expect(await redis.zcard(key(':external-invalidations'))).to.equal(0);
    expect(await redis.exists(key(`:external:${first.generation}`))).to.equal(0);
    expect(await counterTotal(a!) + await counterTotal(b!)).to.equal(0);
    const state = await a!.tokens.state();
    expect(state.externalInvalidationsLastHour).to.equal(0);
    expect(state.lastExternalInvalidationAt).to.equal(null);
  });

  it('when a 401 comes within one call timeout of the stored expiry, then it is taken for expiry and not counted', async () => {
    const [a] = await hostsOf(1, { TOKEN_REFRESH_BEFORE_MS: '0', SECPLAT_TIMEOUT_MS: '3000' });
    await a!.tokens.getToken();
    // Still "fresh" for us (no refresh margin), but inside the 3 s in which the platform may already have expired it.
    await redis.hset(key(''), { expiresAt: String(Date.now() + 1000) });
    sim.expireToken();
    expect((await deleteOne(a!, 'y')).succeeded).to.deep.equal(['y']);
    expect(sim.stats().unauthorized).to.equal(1);
    expect(await redis.zcard(key(':external-invalidations'))).to.equal(0);
    expect(await counterTotal(a!)).to.equal(0);
  });

  it('when external invalidations exceed TOKEN_CONTENTION_MAX within an hour, then exactly one TOKEN_CONTENTION alarm row says another client took the token and how many times', async () => {
    const two = await hostsOf(2, { TOKEN_CONTENTION_MAX: '2' });
    await two[0]!.tokens.getToken();
    for (let i = 0; i < 4; i++) {
      sim.invalidateToken();
      await deleteOne(two[i % 2]!, `c-${i}`);
      if (i === 1) {
        // Two within the hour is not more than 2: no alarm yet.
        await settled();
        expect(await activeAlarms('TOKEN_CONTENTION')).to.have.length(0);
      }
    }
    await settled();
    expect(sim.stats().externalInvalidations).to.equal(4);
    expect(await redis.zcard(key(':external-invalidations'))).to.equal(4);

    const rows = await activeAlarms('TOKEN_CONTENTION');
    expect(rows).to.have.length(1);
    const [row] = rows;
    expect(row!.message_id).to.equal(null);
    expect(JSON.parse(row!.tag)).to.deep.equal({ taskId: 'secplat_token_exc', type: 'SECPLAT_TOKEN' });
    expect(row!.content).to.include(CONTENTION_TEXT);
    expect(row!.content).to.include('4 times in the last hour');
    // Raised at the 3rd and the 4th: the repeat counts on the active row.
    expect(row!.occurrences).to.equal(2);
    expect((await two[1]!.tokens.state()).externalInvalidationsLastHour).to.equal(4);
  });

  it('when token fetches reach 80 % of TOKEN_DAILY_BUDGET, then one TOKEN_BUDGET alarm is raised and fetching continues past the budget', async () => {
    const two = await hostsOf(2, { TOKEN_DAILY_BUDGET: '5' });
    const day = utcDay(Date.now());
    let t = await two[0]!.tokens.getToken();
    for (let i = 1; i < 7; i++) {
      t = await two[i % 2]!.tokens.refresh(t.generation);
      if (i === 2) {
        // 3 fetches: below 4 (80 % of 5).
        await settled();
        expect(await activeAlarms('TOKEN_BUDGET')).to.have.length(0);
      }
    }
    await settled();
    expect(sim.stats().tokenFetches).to.equal(7);
    expect(t.generation).to.equal(7);
    expect(await redis.get(key(`:fetches:${day}`))).to.equal('7');
    expect(await redis.pttl(key(`:fetches:${day}`))).to.be.greaterThan(0);

    const rows = await activeAlarms('TOKEN_BUDGET');
    expect(rows).to.have.length(1);
    expect(rows[0]!.message_id).to.equal(null);
    expect(rows[0]!.occurrences).to.equal(1);
    expect(rows[0]!.content).to.include(`4 token fetches today (UTC day ${day}): 80 % of TOKEN_DAILY_BUDGET 5`);
    const state = await two[1]!.tokens.state();
    expect(state).to.include({ fetchesToday: 7, dailyBudget: 5, budgetAlarmAt: 4, fetchDay: day });
  });

  it('when the state is read through TokenManager.state() and `npm run token`, then it never contains the token string', async () => {
    const budget = { TOKEN_DAILY_BUDGET: '50' };
    const [a] = await hostsOf(1, { ...budget, VIEWER_TOKEN: 'test-viewer-token-0123456789' });
    const first = await a!.tokens.getToken();
    sim.invalidateToken();
    await deleteOne(a!, 'z');
    const current = (await redis.hget(key(''), 'token'))!;
    expect(current).to.have.length.greaterThan(10);
    expect(current).to.not.equal(first.token);

    const state = await a!.tokens.state();
    const stateText = JSON.stringify(state);
    for (const secret of [first.token, current]) expect(stateText).to.not.include(secret);
    expect(state).to.include({ generation: 2, fetchesToday: 2, dailyBudget: 50, externalInvalidationsLastHour: 1 });
    expect(state.circuit.open).to.equal(false);

    // GET /api/token answers the same state to a viewer, and nothing to a caller without a credential.
    const server = http.createServer(createApp(a!, { opsOnly: false })).listen(0, '127.0.0.1');
    try {
      await once(server, 'listening');
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/token`;
      const viaHttp = await fetch(url, { headers: { authorization: 'Bearer test-viewer-token-0123456789' } });
      expect(viaHttp.status).to.equal(200);
      const httpText = await viaHttp.text();
      for (const secret of [first.token, current]) expect(httpText).to.not.include(secret);
      expect(JSON.parse(httpText)).to.include({ generation: 2, fetchesToday: 2, dailyBudget: 50, externalInvalidationsLastHour: 1 });
      expect((await fetch(url)).status).to.equal(401);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }

    const json = await npmToken(['--json'], budget);
    expect(json.code, json.stderr).to.equal(0);
    const printed = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(printed).to.include({ generation: 2, fetchesToday: 2, dailyBudget: 50, externalInvalidationsLastHour: 1 });
    expect(printed.lastExternalInvalidationAt).to.equal(state.lastExternalInvalidationAt);
    const plain = await npmToken([], budget);
    expect(plain.code, plain.stderr).to.equal(0);
    expect(plain.stdout).to.include('generation 2');
    expect(plain.stdout).to.include('1 in the last hour');
    for (const out of [json.stdout, json.stderr, plain.stdout, plain.stderr]) {
      for (const secret of [first.token, current]) expect(out).to.not.include(secret);
    }
  });

  it('when `npm run token` is asked for help or Redis is unreachable, then it documents its exit codes and exits 1 naming Redis', async () => {
    const help = await npmToken(['--help']);
    expect(help.code).to.equal(0);
    expect(help.stdout).to.include('Exit codes: 0 shown, 1 Redis is not reachable');
    const down = await npmToken([], { REDIS_URL: 'redis://127.0.0.1:1' });
    expect(down.code).to.equal(1);
    expect(down.stdout).to.equal('');
    expect(down.stderr).to.include('Redis is not reachable at redis://127.0.0.1:1');
  });

  it('when /metrics is scraped, then every token gauge carries the value of the shared state, the same on every host', async () => {
    const [a, b] = await hostsOf(2, { TOKEN_DAILY_BUDGET: '50' });
    await a!.tokens.getToken();
    sim.invalidateToken();
    const invalidatedFrom = Date.now();
    await deleteOne(a!, 'm');
    const invalidatedTo = Date.now();
    const h = await redis.hgetall(key(''));
    const fetchedAt = Number(h.expiresAt) - Number(h.lifetimeMs);

    const scrapedFrom = Date.now();
    const text = await a!.metrics.registry.metrics();
    const scrapedTo = Date.now();
    expect(sample(text, 'pcp_token_generation')).to.equal(2);
    expect(sample(text, 'pcp_token_fetches_today')).to.equal(2);
    expect(sample(text, 'pcp_token_daily_budget')).to.equal(50);
    expect(sample(text, 'pcp_token_external_invalidations_last_hour')).to.equal(1);
    expect(sample(text, 'pcp_token_external_invalidations_total')).to.equal(1);
    expect(sample(text, 'pcp_token_circuit_open')).to.equal(0);
    expect(sample(text, 'pcp_token_last_external_invalidation_timestamp_seconds')).to.be.within(invalidatedFrom / 1000, invalidatedTo / 1000);
    // Bracketed by the scrape's own start and end: the value was read during the scrape, not before.
    expect(sample(text, 'pcp_token_age_seconds')).to.be.within((scrapedFrom - fetchedAt) / 1000, (scrapedTo - fetchedAt) / 1000);
    expect(sample(text, 'pcp_token_expires_in_seconds')).to.be.within((Number(h.expiresAt) - scrapedTo) / 1000, (Number(h.expiresAt) - scrapedFrom) / 1000);

    // Another process reads the same shared state; its own counter saw nothing.
    await redis.set(key(':circuit'), 'token endpoint refused the credentials (HTTP 401)', 'PX', 60_000);
    const other = await b!.metrics.registry.metrics();
    expect(sample(other, 'pcp_token_generation')).to.equal(2);
    expect(sample(other, 'pcp_token_external_invalidations_last_hour')).to.equal(1);
    expect(sample(other, 'pcp_token_external_invalidations_total')).to.equal(0);
    expect(sample(other, 'pcp_token_circuit_open')).to.equal(1);
  });

  it('when Redis is down, then the state read fails as a Redis outage and the token gauges have no sample while the rest of the scrape is served and the failure is logged at debug', async () => {
    const { logger, lines } = captureLogger('debug');
    const down = await host({ REDIS_URL: 'redis://127.0.0.1:1', TOKEN_DAILY_BUDGET: '40' }, logger);
    const text = await down.metrics.registry.metrics();
    for (const name of ['pcp_token_generation', 'pcp_token_age_seconds', 'pcp_token_expires_in_seconds', 'pcp_token_fetches_today',
      'pcp_token_external_invalidations_last_hour', 'pcp_token_last_external_invalidation_timestamp_seconds', 'pcp_token_circuit_open']) {
      expect(text, name).to.include(`# TYPE ${name} gauge`);
      expect(sample(text, name), name).to.equal(undefined);
    }
    expect(sample(text, 'pcp_token_daily_budget')).to.equal(40);
    expect(sample(text, 'process_cpu_user_seconds_total')).to.be.a('number');
    const debug = lines.map((l) => JSON.parse(l) as { level: string; message: string })
      .filter((l) => l.message.startsWith('token state unavailable for /metrics'));
    expect(debug.map((l) => l.level)).to.deep.equal(['debug']);
    // What GET /api/token gets: the error handler's 503, not a 500.
    const err = await down.tokens.state().catch((e: unknown) => e);
    expect(err).to.be.instanceOf(DependencyUnavailableError);
    expect((err as DependencyUnavailableError).dependency).to.equal('redis');
  });
});
