import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { BadCredentialsError, SecplatRetryableError, TokenRejectedError } from '../../src/lib/errors.js';
import { createLogger } from '../../src/lib/logger.js';
import { createSecplatClient, type SecplatApi } from '../../src/secplat/client.js';
import { createSimulator, type Simulator, type SimulatorOptions } from '../../src/simulator/server.js';
import { waitFor } from '../helpers/env.js';
import { inTheTurnItHolds } from '../helpers/fault-rig.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';

// The platform's 401 body exactly as observed; kept literal here so a drift in the simulator shows up.
const PLATFORM_401 = '{"_status":"ERR","_error":{"message":"The server could not verify that you are authorized to access the URL requested. You either supplied the wrong credentials (e.g. a bad password), or your browser doesn\'t understand how to supply the credentials required.","code":401}}';

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

describe('security-platform simulator', () => {
  // A random password per test, so a leak check cannot pass by luck.
  let password: string;
  let sim: Simulator | undefined;
  let url: string;
  let clients: { close(): void }[] = [];
  let proxies: TcpProxy[] = [];

  async function startSim(opts: Partial<SimulatorOptions> = {}): Promise<Simulator> {
    sim = createSimulator({ password, ...opts });
    ({ url } = await sim.start());
    return sim;
  }

  function client(overrides: { password?: string; clientId?: string } = {}): SecplatApi {
    const c = createSecplatClient({ baseUrl: url, clientId: 'cdn-platform', username: 'cdn', password, timeoutMs: 5000, ...overrides });
    clients.push(c);
    return c;
  }

  async function request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
    const res = await fetch(url + path, {
      method,
      headers: { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, text, json: (text ? JSON.parse(text) : undefined) as Record<string, unknown> | undefined };
  }

  beforeEach(() => { password = `pw-${randomBytes(8).toString('hex')}`; });

  afterEach(async () => {
    for (const c of clients) c.close();
    clients = [];
    for (const p of proxies) await p.stop();
    proxies = [];
    await sim?.stop();
    sim = undefined;
  });

  describe('tokens', () => {
    it('when the credentials are right, then a token is issued and a delete with it succeeds', async () => {
      const s = await startSim();
      const api = client();
      const before = Date.now();
      const token = await api.fetchToken();
      expect(token.accessToken).to.be.a('string').with.length.greaterThan(20);
      expect(token.expiresInSec).to.equal(3600);
      expect(await api.deleteUsers(token.accessToken, 1, ['bxzDRnTEM'])).to.deep.equal({ succeeded: ['bxzDRnTEM'], failed: [] });
      const stats = s.stats();
      expect(stats.tokenFetches).to.equal(1);
      expect(stats.tokenRequestTimes).to.have.length(1);
      expect(stats.tokenRequestTimes[0]).to.be.within(before, Date.now());
      expect(stats.deleteByStatus).to.deep.equal({ 200: 1 });
    });

    it('when the token endpoint answers, then the reply has the platform\'s OAuth shape', async () => {
      await startSim({ tokenTtlSec: 120 });
      const form = new URLSearchParams({ client_id: 'cdn-platform', grant_type: 'password', username: 'cdn', password });
      const res = await request('POST', '/oauth/token', form.toString(), { 'content-type': 'application/x-www-form-urlencoded' });
      expect(res.status).to.equal(200);
      expect(Object.keys(res.json ?? {})).to.have.members(['access_token', 'token_type', 'expires_in', 'refresh_token', 'scope']);
      expect(res.json).to.include({ token_type: 'Bearer', expires_in: 120, scope: '' });
    });

    it('when a second token is fetched, then the first is rejected and the second works', async () => {
      const s = await startSim();
      const api = client();
      const first = await api.fetchToken();
      const second = await api.fetchToken();
      expect(second.accessToken).to.not.equal(first.accessToken);
      const err = await rejectionOf(api.deleteUsers(first.accessToken, 1, ['a']));
      expect(err).to.be.instanceOf(TokenRejectedError);
      expect((err as TokenRejectedError).generation).to.equal(1);
      expect(await api.deleteUsers(second.accessToken, 2, ['a'])).to.deep.equal({ succeeded: ['a'], failed: [] });
      expect(s.stats()).to.include({ tokenFetches: 2, unauthorized: 1 });
      expect(s.stats().deletedCounts).to.deep.equal({ a: 1 });
    });

    it('when another client takes a token (invalidateToken), then ours is rejected and a fresh fetch works', async () => {
      const s = await startSim();
      const api = client();
      const ours = await api.fetchToken();
      s.invalidateToken();
      expect(await rejectionOf(api.deleteUsers(ours.accessToken, 1, ['a']))).to.be.instanceOf(TokenRejectedError);
      const fresh = await api.fetchToken();
      expect((await api.deleteUsers(fresh.accessToken, 2, ['a'])).succeeded).to.deep.equal(['a']);
      expect(s.stats()).to.include({ externalInvalidations: 1, tokenFetches: 2, unauthorized: 1 });
    });

    it('when the token is expired (expireToken), then a delete gets the platform\'s exact 401', async () => {
      const s = await startSim();
      const api = client();
      const { accessToken } = await api.fetchToken();
      s.expireToken();
      expect(await rejectionOf(api.deleteUsers(accessToken, 1, ['a']))).to.be.instanceOf(TokenRejectedError);
      const raw = await request('POST', '/v1.0/delete_user_info', { delete_user_info_list: [{ user_id_cdn: 'a' }] }, { authorization: `Bearer ${accessToken}` });
      expect(raw.status).to.equal(401);
      expect(raw.text).to.equal(PLATFORM_401);
      expect(s.stats().deletedCounts).to.deep.equal({});
    });

    it('when tokenTtlSec has passed, then the token is rejected', async function () {
      this.timeout(5000);
      await startSim({ tokenTtlSec: 1 });
      const api = client();
      const { accessToken, expiresInSec } = await api.fetchToken();
      // Issued before this line ran, so it has expired by this time plus its lifetime.
      const expiredBy = Date.now() + expiresInSec * 1000;
      expect(expiresInSec).to.equal(1);
      expect((await api.deleteUsers(accessToken, 1, ['a'])).succeeded).to.deep.equal(['a']);
      // Waiting for the clock is the scenario here; +1 ms because timers may fire up to 1 ms early.
      await new Promise((r) => setTimeout(r, Math.max(0, expiredBy - Date.now()) + 1));
      expect(await rejectionOf(api.deleteUsers(accessToken, 1, ['b']))).to.be.instanceOf(TokenRejectedError);
    });

    it('when the token is missing or unknown, then the delete gets the platform\'s exact 401', async () => {
      const s = await startSim();
      await client().fetchToken();
      const body = { delete_user_info_list: [{ user_id_cdn: 'a' }] };
      const attempts: Record<string, string>[] = [{}, { authorization: 'Bearer not-a-token' }, { authorization: 'Basic abc' }];
    for (const headers of attempts) {
        const res = await request('POST', '/v1.0/delete_user_info', body, headers);
        expect(res.status).to.equal(401);
        expect(res.text).to.equal(PLATFORM_401);
      }
      expect(s.stats()).to.include({ unauthorized: 3, deleteCalls: 3 });
    });

    it('when rejectCredentials is set, then the right credentials get BadCredentialsError and an OAuth error', async () => {
      const s = await startSim({ rejectCredentials: true });
      expect(await rejectionOf(client().fetchToken())).to.be.instanceOf(BadCredentialsError);
      const form = new URLSearchParams({ client_id: 'cdn-platform', grant_type: 'password', username: 'cdn', password });
      const res = await request('POST', '/oauth/token', form.toString(), { 'content-type': 'application/x-www-form-urlencoded' });
      expect(res.status).to.equal(401);
      expect(res.json).to.include({ error: 'invalid_grant' });
      expect(res.text).to.not.include(password);
      expect(s.stats()).to.include({ tokenFetches: 0, tokenRejected: 2 });
    });

    it('when the password or client id is wrong, then the client gets BadCredentialsError', async () => {
      const s = await startSim();
      expect(await rejectionOf(client({ password: 'wrong' }).fetchToken())).to.be.instanceOf(BadCredentialsError);
      expect(await rejectionOf(client({ clientId: 'other' }).fetchToken())).to.be.instanceOf(BadCredentialsError);
      expect(s.stats()).to.include({ tokenFetches: 0, tokenRejected: 2 });
    });

    it('when grant_type is wrong or a field is missing, then the token endpoint answers 400', async () => {
      const s = await startSim();
      const form = { 'content-type': 'application/x-www-form-urlencoded' };
      const badGrant = new URLSearchParams({ client_id: 'cdn-platform', grant_type: 'client_credentials', username: 'cdn', password });
      const noPassword = new URLSearchParams({ client_id: 'cdn-platform', grant_type: 'password', username: 'cdn' });
      expect((await request('POST', '/oauth/token', badGrant.toString(), form)).json).to.include({ error: 'unsupported_grant_type' });
      const missing = await request('POST', '/oauth/token', noPassword.toString(), form);
      expect(missing.status).to.equal(400);
      expect(missing.json).to.include({ error: 'invalid_request' });
      expect(s.stats()).to.include({ tokenFetches: 0, tokenRejected: 2 });
    });
  });

  describe('deletes', () => {
    it('when an id is in failIds, then the client reports it failed with the reason and the rest succeed', async () => {
      const s = await startSim({ failIds: ['gone'] });
      const api = client();
      const { accessToken } = await api.fetchToken();
      const result = await api.deleteUsers(accessToken, 1, ['a', 'gone', 'b']);
      expect(result).to.deep.equal({ succeeded: ['a', 'b'], failed: [{ userIdCdn: 'gone', reason: 'user not found' }] });
      expect(s.stats()).to.include({ entriesReceived: 3, failedEntries: 1 });
      expect(s.stats().deletedCounts).to.deep.equal({ a: 1, b: 1 });
    });

    it('when the same id is deleted twice, then deletedCounts shows 2 for it', async () => {
      const s = await startSim();
      const api = client();
      const { accessToken } = await api.fetchToken();
      await api.deleteUsers(accessToken, 1, ['a', 'b']);
      await api.deleteUsers(accessToken, 1, ['a']);
      expect(s.stats().deletedCounts).to.deep.equal({ a: 2, b: 1 });
    });

    it('when failNextDeletes is 2, then two calls get SecplatRetryableError (503) and the third succeeds', async () => {
      const s = await startSim({ failNextDeletes: 2 });
      const api = client();
      const { accessToken } = await api.fetchToken();
      expect(await rejectionOf(api.deleteUsers(accessToken, 1, ['a']))).to.be.instanceOf(SecplatRetryableError);
      expect(await rejectionOf(api.deleteUsers(accessToken, 1, ['a']))).to.be.instanceOf(SecplatRetryableError);
      expect((await api.deleteUsers(accessToken, 1, ['a'])).succeeded).to.deep.equal(['a']);
      expect(s.stats().deleteByStatus).to.deep.equal({ 503: 2, 200: 1 });
      expect(s.stats().deletedCounts).to.deep.equal({ a: 1 });
      expect(s.options().failNextDeletes).to.equal(0);
    });

    it('when errorRate is 1, then every delete gets SecplatRetryableError (500) and nothing is deleted', async () => {
      const s = await startSim({ errorRate: 1 });
      const api = client();
      const { accessToken } = await api.fetchToken();
      expect(await rejectionOf(api.deleteUsers(accessToken, 1, ['a']))).to.be.instanceOf(SecplatRetryableError);
      expect(s.stats().deleteByStatus).to.deep.equal({ 500: 1 });
      expect(s.stats().deletedCounts).to.deep.equal({});
    });

    it('when the body is malformed or too large, then the answer is 400 with a JSON reason', async () => {
      const s = await startSim({ maxEntriesPerCall: 2 });
      const { accessToken } = await client().fetchToken();
      const auth = { authorization: `Bearer ${accessToken}` };
      const bodies: unknown[] = [
        '{not json', {}, { delete_user_info_list: [] }, { delete_user_info_list: [{ user_id_cdn: 7 }] },
        { delete_user_info_list: [{ user_id_cdn: 'a' }, { user_id_cdn: 'b' }, { user_id_cdn: 'c' }] },
      ];
      for (const body of bodies) {
        const res = await request('POST', '/v1.0/delete_user_info', body, auth);
        expect(res.status, JSON.stringify(body)).to.equal(400);
        expect((res.json?._error as { message?: unknown } | undefined)?.message).to.be.a('string');
      }
      expect(s.stats().deleteByStatus).to.deep.equal({ 400: 5 });
      expect(s.stats().deletedCounts).to.deep.equal({});
    });

    it('when deletes overlap under latency, then maxConcurrentDeletes counts them and none stays in flight', async () => {
      const s = await startSim({ latencyMs: 100 });
      // The calls go through a proxy that holds them until all five are sent, then delivers them at once:
      // they overlap however slowly this machine gets them out.
      const proxy = await startTcpProxy({ port: Number(new URL(url).port) });
      proxies.push(proxy);
      url = proxy.url(url).replace(/\/$/, '');
      const api = client();
      const { accessToken } = await api.fetchToken();
      const ids = ['a', 'b', 'c', 'd', 'e'];
      proxy.stall();
      const started = Date.now();
      const calls = Promise.all(ids.map((id) => api.deleteUsers(accessToken, 1, [id])));
      await waitFor('every call held at the proxy', async () => proxy.holding === ids.length, 10_000);
      proxy.resume();
      await calls;
      // Each reply waits latencyMs on the simulator's timer (which fires at most 1 ms early).
      expect(Date.now() - started).to.be.at.least(99);
      expect(s.stats()).to.include({ maxConcurrentDeletes: 5, inFlightDeletes: 0, deleteCalls: 5 });
    });

    it('when a new token is issued while a delete is in flight, then that delete still succeeds (auth is checked on arrival)', async () => {
      const s = await startSim({ latencyMs: 150 });
      const api = client();
      const { accessToken } = await api.fetchToken();
      const inFlight = api.deleteUsers(accessToken, 1, ['a']);
      // Another client takes a token the moment the call has arrived, well before its reply is due.
      await inTheTurnItHolds('the delete to arrive', () => s.stats().deleteCalls === 1);
      s.invalidateToken();
      expect(s.stats().inFlightDeletes, 'the delete still in flight when the new token was issued').to.equal(1);
      expect((await inFlight).succeeded).to.deep.equal(['a']);
      expect(await rejectionOf(api.deleteUsers(accessToken, 1, ['b']))).to.be.instanceOf(TokenRejectedError);
      expect(s.stats().deletedCounts).to.deep.equal({ a: 1 });
    });
  });

  describe('admin endpoints and lifecycle', () => {
    it('when the admin endpoints are called over HTTP, then they steer and report the simulator', async () => {
      await startSim();
      const api = client();
      const first = await api.fetchToken();

      expect((await request('POST', '/__sim/invalidate')).status).to.equal(204);
      expect(await rejectionOf(api.deleteUsers(first.accessToken, 1, ['a']))).to.be.instanceOf(TokenRejectedError);

      const second = await api.fetchToken();
      expect((await request('POST', '/__sim/expire')).status).to.equal(204);
      expect(await rejectionOf(api.deleteUsers(second.accessToken, 2, ['a']))).to.be.instanceOf(TokenRejectedError);

      const patched = await request('PATCH', '/__sim/options', { failNextDeletes: 1, failIds: ['x'] });
      expect(patched.status).to.equal(200);
      expect(patched.json).to.include({ failNextDeletes: 1 }).and.not.have.property('password');
      const third = await api.fetchToken();
      expect(await rejectionOf(api.deleteUsers(third.accessToken, 3, ['a']))).to.be.instanceOf(SecplatRetryableError);
      expect((await api.deleteUsers(third.accessToken, 3, ['a', 'x'])).failed).to.deep.equal([{ userIdCdn: 'x', reason: 'user not found' }]);

      const stats = await request('GET', '/__sim/stats');
      expect(stats.json).to.include({ tokenFetches: 3, externalInvalidations: 1, unauthorized: 2, failedEntries: 1 });
      expect(stats.json?.deleteByStatus).to.deep.equal({ 401: 2, 503: 1, 200: 1 });
      expect(stats.json?.deletedCounts).to.deep.equal({ a: 1 });

      expect((await request('POST', '/__sim/reset')).status).to.equal(204);
      expect((await request('GET', '/__sim/stats')).json).to.include({ tokenFetches: 0, deleteCalls: 0 });
      // reset forgets the current token as well.
      expect(await rejectionOf(api.deleteUsers(third.accessToken, 3, ['a']))).to.be.instanceOf(TokenRejectedError);
    });

    it('when only the stats are reset (resetStats), then they start from zero and the current token still works', async () => {
      const s = await startSim();
      const api = client();
      const { accessToken } = await api.fetchToken();
      await api.deleteUsers(accessToken, 1, ['a']);
      s.resetStats();
      expect(s.stats()).to.include({ tokenFetches: 0, deleteCalls: 0, entriesReceived: 0 });
      expect((await api.deleteUsers(accessToken, 1, ['b'])).succeeded).to.deep.equal(['b']);
      expect(s.stats()).to.include({ tokenFetches: 0, deleteCalls: 1, unauthorized: 0 });
      expect(s.stats().deletedCounts).to.deep.equal({ b: 1 });
    });

    it('when PATCH /__sim/options gets a bad value, an unknown key or bad JSON, then it answers 400 and changes nothing', async () => {
      const s = await startSim();
      for (const body of [{ errorRate: 2 }, { latencyMs: -1 }, { failIds: 'a' }, { passwrd: 'x' }, '{bad']) {
        const res = await request('PATCH', '/__sim/options', body);
        expect(res.status, JSON.stringify(body)).to.equal(400);
        expect(res.json?.message).to.be.a('string');
      }
      expect(s.options()).to.include({ errorRate: 0, latencyMs: 0 });
      expect(() => s.setOptions({ tokenTtlSec: 0 })).to.throw(/tokenTtlSec/);
    });

    it('when requests are logged at debug, then no password or token reaches the log', async () => {
      const lines: string[] = [];
      const stream = new Writable({ write(chunk: Buffer, _enc, done) { lines.push(chunk.toString()); done(); } });
      const s = await startSim({ logger: createLogger({ level: 'debug', stream }) });
      const api = client();
      const { accessToken } = await api.fetchToken();
      await api.deleteUsers(accessToken, 1, ['a']);
      await rejectionOf(client({ password: `${password}-wrong` }).fetchToken());
      await request('PATCH', '/__sim/options', { password: 'new-secret-value' });
      s.expireToken();
      await rejectionOf(api.deleteUsers(accessToken, 1, ['a']));
      const log = lines.join('');
      expect(log).to.include('/v1.0/delete_user_info').and.include('/oauth/token');
      for (const secret of [password, accessToken, 'new-secret-value']) expect(log).to.not.include(secret);
      expect(JSON.stringify(s.options())).to.not.include('new-secret-value');
    });

    it('when stop is called twice with a keep-alive connection open, then both resolve promptly and the port is closed', async () => {
      const s = await startSim();
      const api = client();
      await api.fetchToken(); // leaves an idle keep-alive socket in the client's agent
      const started = Date.now();
      await Promise.all([s.stop(), s.stop()]);
      await s.stop();
      // A stop that waited on the idle socket would end only when the server's keep-alive timeout (Node's
      // default, 5 s) closed it; half of that tells the two apart with seconds to spare either way.
      expect(Date.now() - started, 'stop did not wait out the keep-alive timeout').to.be.below(2500);
      expect(await rejectionOf(api.fetchToken())).to.be.instanceOf(SecplatRetryableError);
    });
  });
});
