/**
 * Who may do what, over real HTTP against the real PostgreSQL: the console's sign-in form and its cookie,
 * sessions (fixation, sign-out, expiry, a changed CONSOLE_USERS), cross-site requests, the single sign-on
 * proxy's header (believed only from a TRUST_PROXY address), bearer tokens, the fail-closed switch, and
 * secrets kept out of logs and URLs. Tested the way an attacker would try: planted cookies, forged
 * Origins, spoofed headers from the wrong address, open redirects, timing.
 *
 * createApp is served as built for production; in front of it sit two probe routes standing in for the
 * console pages (GET: what a page sees in res.locals; POST: an operator change), guarded by the same
 * createAuth. Real changes go through the real replay route, so "nothing happened" is a row left failed.
 */
import { execFile } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import express from 'express';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { createApp, createErrorHandler } from '../../src/http/app.js';
import { SESSION_COOKIE, createAuth, principalOf } from '../../src/http/auth.js';
import { SCRYPT_N, hashPassword, sessionIdOf } from '../../src/http/session.js';
import { captureLogger, messageId, rand, testConfig, testDb, testEnv } from '../helpers/env.js';

type Json = Record<string, unknown>;
interface Reply { status: number; headers: http.IncomingHttpHeaders; text: string; body: Json; setCookie: string | undefined }
interface Served { url: string; port: number; lines: string[] }
interface SendOpts { headers?: Record<string, string | string[]>; form?: Record<string, string>; json?: unknown; from?: string }

const ADMIN_TOKEN = 'test-admin-token-console';
const VIEWER_TOKEN = 'test-viewer-token-console';
const ALICE = `alice.${rand()}`; // operator
const BOB = `bob.${rand()}`; // viewer
const ALICE_PW = 'alice correct horse 1';
const BOB_PW = 'bob correct horse 22';
const EVIL = 'https://evil.example';
const HTML = { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' };

describe('console sign-in and who may do what', function () {
  let db: pg.Pool;
  let aliceHash: string;
  let bobHash: string;
  let users: string;
  let cleanups: (() => Promise<void>)[] = [];
  let server: Served;
  let batches: string[] = [];

  before(async () => {
    [aliceHash, bobHash] = await Promise.all([hashPassword(ALICE_PW, SCRYPT_N.min), hashPassword(BOB_PW, SCRYPT_N.min)]);
    users = `${ALICE}:operator:${aliceHash},${BOB}:viewer:${bobHash}`;
  });

  beforeEach(() => {
    db = testDb();
  });

  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups = [];
    // Other suites' relays publish whatever batch looks unpublished or stalled in this shared database.
    await db.query('DELETE FROM batch_domain WHERE message_id = ANY($1)', [batches]);
    await db.query('DELETE FROM batch WHERE message_id = ANY($1)', [batches]);
    batches = [];
    await db.end();
  });

  /**
   * Serves createApp (with the probe routes in front) on 127.0.0.1; ADMIN_TOKEN, VIEWER_TOKEN and
   * CONSOLE_USERS (alice operator, bob viewer) unless overridden. Logs are kept at debug in `lines`.
   */
  async function serve(overrides: Record<string, string> = {}): Promise<Served> {
    const env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN, CONSOLE_USERS: users, LOG_LEVEL: 'debug', ...overrides });
    const config = testConfig(env);
    const { logger, lines } = captureLogger('debug');
    const ctx = createContext(config, { logger });
    const outer = express();
    outer.set('trust proxy', config.trustProxy.length > 0 ? [...config.trustProxy] : false);
    const auth = createAuth({ config, db: ctx.db, logger });
    outer.get('/console/probe', auth.requireRole('viewer'), (_req, res) => {
      res.json({ principal: principalOf(res), csrfToken: res.locals.csrfToken ?? null });
    });
    outer.post('/console/probe', auth.requireRole('operator'), express.urlencoded({ extended: false }), (_req, res) => {
      res.json({ principal: principalOf(res) });
    });
    outer.use(createApp(ctx));
    outer.use(createErrorHandler(logger, ctx.metrics));
    const httpServer = http.createServer(outer);
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      await new Promise<void>((resolve) => { httpServer.close(() => resolve()); httpServer.closeAllConnections(); });
      await ctx.release();
    });
    const port = (httpServer.address() as AddressInfo).port;
    server = { url: `http://127.0.0.1:${port}`, port, lines };
    return server;
  }

  /** One request with node:http (full control of Host, Cookie, repeated headers and the source address). */
  function send(method: string, path: string, opts: SendOpts = {}, to: Served = server): Promise<Reply> {
    const headers: Record<string, string | string[]> = { ...opts.headers };
    let payload: string | undefined;
    if (opts.form) {
      payload = new URLSearchParams(opts.form).toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else if (opts.json !== undefined) {
      payload = JSON.stringify(opts.json);
      headers['content-type'] = 'application/json';
    }
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: to.port, method, path, headers, localAddress: opts.from, agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => { text += c; });
        res.on('end', () => {
          let body: Json = {};
          try { body = JSON.parse(text) as Json; } catch { /* HTML */ }
          const setCookie = (res.headers['set-cookie'] ?? []).find((c) => c.startsWith(`${SESSION_COOKIE}=`));
          resolve({ status: res.statusCode!, headers: res.headers, text, body, setCookie });
        });
      });
      req.on('error', reject);
      req.end(payload);
    });
  }

  const tokenOf = (setCookie: string | undefined): string => /^pcp_session=([^;]*)/.exec(setCookie ?? '')?.[1] ?? '';
  const cookie = (token: string) => ({ cookie: `${SESSION_COOKIE}=${token}` });

  function login(name: string, password: string, opts: { next?: string; headers?: Record<string, string>; from?: string } = {}, to = server): Promise<Reply> {
    return send('POST', '/console/login', { form: { name, password, ...(opts.next === undefined ? {} : { next: opts.next }) }, headers: opts.headers, from: opts.from }, to);
  }

  /** Signs in and reads the page's CSRF token the way a console page gets it (res.locals.csrfToken). */
  async function signIn(name: string, password: string, to = server): Promise<{ token: string; csrf: string }> {
    const res = await login(name, password, {}, to);
    expect(res.status, res.text.slice(0, 200)).to.equal(303);
    const token = tokenOf(res.setCookie);
    const page = await send('GET', '/console/probe', { headers: cookie(token) }, to);
    expect(page.status).to.equal(200);
    return { token, csrf: page.body.csrfToken as string };
  }

  async function sessionRows(name: string): Promise<{ id: string; via: string; role: string; csrf_token: string }[]> {
    const { rows } = await db.query<{ id: string; via: string; role: string; csrf_token: string }>(
      'SELECT id, via, role, csrf_token FROM console_session WHERE name = $1 ORDER BY created_at', [name]);
    return rows;
  }

  async function sessionExists(token: string): Promise<boolean> {
    const { rowCount } = await db.query('SELECT 1 FROM console_session WHERE id = $1', [sessionIdOf(token)]);
    return rowCount === 1;
  }

  /** A batch with one failed domain: a replay that gets through re-opens it (pending). */
  async function failedBatch(): Promise<string> {
    const id = messageId();
    batches.push(id);
    await db.query('INSERT INTO batch (message_id, publish_pending) VALUES ($1, false)', [id]);
    await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status) VALUES ($1, 'a.example.com', 'SELF_DOMAIN_DELETE', 'failed')`, [id]);
    return id;
  }

  async function domainStatus(id: string): Promise<string> {
    const { rows } = await db.query<{ status: string }>('SELECT status FROM batch_domain WHERE message_id = $1', [id]);
    return rows[0]!.status;
  }

  const replay = (id: string, headers: Record<string, string> = {}) => send('POST', `/api/batches/${id}/replay`, { json: { reason: 'console-auth test' }, headers });

  describe('the sign-in form', function () {
    it('when the form is requested with a console next path, then it is server-rendered HTML that posts name, password and next (hidden) to /console/login, runs no inline script, and is neither cached nor framed', async () => {
      await serve();
      const res = await send('GET', '/console/login?next=%2Fconsole%2Fbatches%2Fpm1%3Fview%3Dall', { headers: HTML });
      expect(res.status).to.equal(200);
      expect(res.headers['content-type']).to.match(/^text\/html; charset=utf-8/);
      const form = /<form [^>]*method="post"[^>]*>([\s\S]*?)<\/form>/.exec(res.text);
      expect(form?.[0], res.text).to.match(/action="\/console\/login"/);
      expect(form![1]).to.match(/<input [^>]*name="name"/);
      expect(form![1]).to.match(/<input (?=[^>]*type="password")[^>]*name="password"/);
      expect(form![1]).to.match(/<input (?=[^>]*type="hidden")(?=[^>]*name="next")[^>]*value="\/console\/batches\/pm1\?view=all"/);
      for (const script of res.text.match(/<script\b[^>]*>[\s\S]*?<\/script>/g) ?? []) expect(script, 'only external scripts').to.match(/^<script [^>]*src="\/console\/assets\/[^"]+"[^>]*><\/script>$/);
      expect(res.text).to.not.match(/\son\w+=|javascript:/i);
      const csp = String(res.headers['content-security-policy']);
      expect(csp).to.include("frame-ancestors 'none'").and.include("form-action 'self'").and.not.include('unsafe-inline');
      expect(res.headers['cache-control']).to.equal('no-store');
      expect(res.setCookie, 'showing the form starts no session').to.equal(undefined);
    });

    it('when next is //evil, an absolute URL, a backslash trick, a javascript: URL or an API path, then the form does not carry it and a sign-in lands on /console', async () => {
      await serve();
      for (const next of ['//evil.example/console', `${EVIL}/console`, '/\\evil.example/console', 'javascript:alert(1)', '/api/alarms', '/%2F%2Fevil.example']) {
        const form = await send('GET', `/console/login?next=${encodeURIComponent(next)}`);
        expect(form.text, next).to.match(/<input (?=[^>]*name="next")[^>]*value=""/);
      }
      // The form is only a courtesy: the sign-in itself decides where the browser goes.
      for (const next of ['//evil.example/console', `${EVIL}/console`, '/\\evil.example/console', 'javascript:alert(1)', '/api/alarms', '/console/../api/alarms', '/console\t/x', '/%2F%2Fevil.example']) {
        const res = await login(ALICE, ALICE_PW, { next });
        expect(res.status, next).to.equal(303);
        expect(res.headers.location, next).to.equal('/console');
      }
      const good = await login(ALICE, ALICE_PW, { next: '/console/alarms?state=open' });
      expect(good.headers.location, 'a console path is honoured').to.equal('/console/alarms?state=open');
    });

    it('when a configured user signs in, then 303 to next and pcp_session is set with exactly HttpOnly, SameSite=Strict and Path=/ (no Secure over plain HTTP), and the row holds the sha256 of the token, never the token', async () => {
      await serve();
      const res = await login(ALICE, ALICE_PW, { next: '/console/batches' });
      expect(res.status).to.equal(303);
      expect(res.headers.location).to.equal('/console/batches');
      expect(res.headers['cache-control']).to.equal('no-store');
      const [pair, ...attrs] = res.setCookie!.split(';').map((s) => s.trim());
      const token = pair!.slice(`${SESSION_COOKIE}=`.length);
      expect(token).to.match(/^[A-Za-z0-9_-]{43}$/);
      expect(attrs.map((a) => a.toLowerCase()).sort()).to.deep.equal(['httponly', 'path=/', 'samesite=strict']);
      const rows = await sessionRows(ALICE);
      expect(rows.map((r) => r.id)).to.include(sessionIdOf(token));
      const { rowCount } = await db.query('SELECT 1 FROM console_session WHERE id = $1 OR csrf_token = $1', [token]);
      expect(rowCount, 'the token itself is stored nowhere').to.equal(0);
    });

    it('when the sign-in comes through a trusted proxy with X-Forwarded-Proto=https, then the cookie is also Secure; the same header from an untrusted address does not make it Secure', async () => {
      await serve({ TRUST_PROXY: '127.0.0.1' });
      const viaProxy = await login(ALICE, ALICE_PW, { headers: { 'x-forwarded-proto': 'https' } });
      expect(viaProxy.status).to.equal(303);
      expect(viaProxy.setCookie!.split(';').map((s) => s.trim().toLowerCase()).slice(1).sort()).to.deep.equal(['httponly', 'path=/', 'samesite=strict', 'secure']);
      const direct = await login(ALICE, ALICE_PW, { headers: { 'x-forwarded-proto': 'https' }, from: '127.0.0.2' });
      expect(direct.status).to.equal(303);
      expect(direct.setCookie!.toLowerCase()).to.not.include('secure');
    });

    it('when the password is wrong or the name unknown, then 401 with the same form and generic message, no cookie and no session row', async () => {
      await serve();
      const before = (await sessionRows(ALICE)).length;
      const wrong = await login(ALICE, `${ALICE_PW}x`, { next: '/console/alarms' });
      const unknown = await login(`nobody.${rand()}`, ALICE_PW, { next: '/console/alarms' });
      const bobWithAlicePassword = await login(BOB, ALICE_PW, { next: '/console/alarms' });
      for (const res of [wrong, unknown, bobWithAlicePassword]) {
        expect(res.status).to.equal(401);
        expect(res.setCookie).to.equal(undefined);
        expect(res.text).to.include('wrong name or password');
        expect(res.text).to.include('<input type="hidden" name="next" value="/console/alarms">');
      }
      expect(unknown.text, 'the same page whichever part was wrong').to.equal(wrong.text);
      expect(bobWithAlicePassword.text).to.equal(wrong.text);
      expect((await sessionRows(ALICE)).length).to.equal(before);
      const empty = await login(ALICE, '');
      expect(empty.status).to.equal(401);
    });

    it('when the name is unknown, then the answer takes about as long as for a wrong password (a dummy hash is checked)', async () => {
      await serve({ CONSOLE_LOGIN_MAX_FAILURES: '1000' });
      await login(`warm.${rand()}`, 'x'); // builds the dummy hash once
      const time = async (name: string) => {
        const t0 = process.hrtime.bigint();
        expect((await login(name, 'not the password')).status).to.equal(401);
        return Number(process.hrtime.bigint() - t0) / 1e6;
      };
      const known: number[] = [];
      const unknown: number[] = [];
      for (let i = 0; i < 7; i++) {
        known.push(await time(ALICE));
        unknown.push(await time(`nobody${i}.${rand()}`));
      }
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      // Skipping scrypt for unknown names would make them ~20 times faster; scheduling noise is far below 2x.
      expect(median(unknown), `known ${known.map(Math.round).join(',')} ms; unknown ${unknown.map(Math.round).join(',')} ms`)
        .to.be.greaterThan(median(known) * 0.5);
    });

    it('when a name fails CONSOLE_LOGIN_MAX_FAILURES times from one address, then even the right password gets 429 with Retry-After there, while that name from another address and another name still sign in', async () => {
      await serve({ CONSOLE_LOGIN_MAX_FAILURES: '3', CONSOLE_LOGIN_WINDOW_MS: '600000' });
      for (let i = 0; i < 3; i++) expect((await login(ALICE, 'wrong password!')).status).to.equal(401);
      const blocked = await login(ALICE, ALICE_PW);
      expect(blocked.status).to.equal(429);
      expect(blocked.setCookie).to.equal(undefined);
      expect(Number(blocked.headers['retry-after'])).to.be.within(1, 600);
      expect(blocked.text).to.include('too many failed sign-ins');
      expect((await login(BOB, BOB_PW)).status, 'another name from the same address').to.equal(303);
      expect((await login(ALICE, ALICE_PW, { from: '127.0.0.2' })).status, 'the same name from another address').to.equal(303);
    });

    it('when many guesses for one name arrive at once, then no more than CONSOLE_LOGIN_MAX_FAILURES of them are checked', async () => {
      await serve({ CONSOLE_LOGIN_MAX_FAILURES: '3', CONSOLE_LOGIN_WINDOW_MS: '600000' });
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => login(ALICE, `wrong guess ${i}`)));
      const statuses = answers.map((a) => a.status);
      expect(statuses.filter((st) => st === 401), 'guesses whose password was checked').to.have.length(3);
      expect(statuses.filter((st) => st === 429), 'guesses refused before any check').to.have.length(17);
    });

    it('when one address sprays wrong passwords over many names, then it is stopped after four times CONSOLE_LOGIN_MAX_FAILURES', async () => {
      await serve({ CONSOLE_LOGIN_MAX_FAILURES: '2' });
      for (let i = 0; i < 8; i++) expect((await login(`spray${i}.${rand()}`, 'Winter2026!', { from: '127.0.0.3' })).status, `attempt ${i + 1}`).to.equal(401);
      expect((await login(`spray.${rand()}`, 'Winter2026!', { from: '127.0.0.3' })).status).to.equal(429);
      expect((await login(ALICE, ALICE_PW, { from: '127.0.0.3' })).status, 'that address is stopped for every name').to.equal(429);
      expect((await login(ALICE, ALICE_PW)).status, 'other addresses are not').to.equal(303);
    });

    it('when a sign-in form is posted from another site (Origin or Sec-Fetch-Site), then 403 and no session starts', async () => {
      await serve();
      const before = (await sessionRows(ALICE)).length;
      const foreign: Record<string, string>[] = [{ origin: EVIL }, { origin: 'null' }, { 'sec-fetch-site': 'cross-site' }, { origin: `http://127.0.0.1:${server.port + 1}` }];
      for (const headers of foreign) {
        const res = await login(ALICE, ALICE_PW, { headers });
        expect(res.status, JSON.stringify(headers)).to.equal(403);
        expect(res.setCookie).to.equal(undefined);
      }
      expect((await sessionRows(ALICE)).length).to.equal(before);
      const own = await login(ALICE, ALICE_PW, { headers: { origin: server.url, 'sec-fetch-site': 'same-origin' } });
      expect(own.status, 'our own page').to.equal(303);
    });
  });

  describe('sessions', function () {
    it('when a session cookie is presented, then console pages see the named principal and a CSRF token, and API routes accept it', async () => {
      await serve();
      const { token, csrf } = await signIn(ALICE, ALICE_PW);
      const page = await send('GET', '/console/probe', { headers: cookie(token) });
      expect(page.body.principal).to.deep.equal({ name: ALICE, role: 'operator', via: 'session' });
      expect(csrf).to.match(/^[A-Za-z0-9_-]{43}$/);
      expect(page.body.csrfToken).to.equal(csrf);
      expect((await send('GET', '/api/alarms', { headers: cookie(token) })).status).to.equal(200);
      const bob = await signIn(BOB, BOB_PW);
      expect((await send('GET', '/console/probe', { headers: cookie(bob.token) })).body.principal).to.deep.equal({ name: BOB, role: 'viewer', via: 'session' });
      expect(bob.csrf, 'each session has its own CSRF token').to.not.equal(csrf);
    });

    it('when a cookie value we never issued is presented, then it is ignored, and signing in issues a new value and ends the session the browser held before (no fixation)', async () => {
      await serve();
      const planted = 'A'.repeat(43);
      const page = await send('GET', '/console/probe', { headers: cookie(planted) });
      expect(page.status).to.equal(303);
      expect(page.headers.location).to.equal('/console/login?next=%2Fconsole%2Fprobe');
      expect((await send('GET', '/api/alarms', { headers: cookie(planted) })).status).to.equal(401);

      const signedIn = await login(ALICE, ALICE_PW, { headers: cookie(planted) });
      expect(tokenOf(signedIn.setCookie)).to.not.equal(planted);
      expect((await send('GET', '/console/probe', { headers: cookie(planted) })).status, 'the planted value still signs nobody in').to.equal(303);

      // An attacker's own real session, planted on the victim's browser, does not become the victim's.
      const attacker = await signIn(BOB, BOB_PW);
      const victim = await login(ALICE, ALICE_PW, { headers: cookie(attacker.token) });
      const victimToken = tokenOf(victim.setCookie);
      expect(victimToken).to.match(/^[A-Za-z0-9_-]{43}$/).and.not.equal(attacker.token);
      expect(await sessionExists(attacker.token), 'the session held before sign-in is ended').to.equal(false);
      expect((await send('GET', '/console/probe', { headers: cookie(attacker.token) })).status).to.equal(303);
      expect((await send('GET', '/console/probe', { headers: cookie(victimToken) })).body.principal).to.deep.include({ name: ALICE });
    });

    it('when the user signs out, then the row is gone, the cookie is cleared and the old cookie no longer works; without the CSRF token the sign-out is refused', async () => {
      await serve();
      const { token, csrf } = await signIn(ALICE, ALICE_PW);
      const forged = await send('POST', '/console/logout', { headers: cookie(token), form: {} });
      expect(forged.status, 'a sign-out without the token').to.equal(403);
      expect(await sessionExists(token)).to.equal(true);

      const out = await send('POST', '/console/logout', { headers: cookie(token), form: { _csrf: csrf } });
      expect(out.status).to.equal(303);
      expect(out.headers.location).to.equal('/console/login');
      expect(out.setCookie).to.match(/^pcp_session=;/);
      expect(out.setCookie).to.match(/Expires=Thu, 01 Jan 1970/);
      expect(await sessionExists(token)).to.equal(false);
      expect((await send('GET', '/console/probe', { headers: cookie(token) })).status).to.equal(303);
      expect((await send('GET', '/api/alarms', { headers: cookie(token) })).status).to.equal(401);
    });

    it('when a session is past its expiry or idle longer than CONSOLE_SESSION_IDLE_MS, then it no longer works; a request restarts the idle clock; expiry is sign-in plus CONSOLE_SESSION_TTL_MS', async () => {
      await serve({ CONSOLE_SESSION_TTL_MS: '7200000', CONSOLE_SESSION_IDLE_MS: '600000' });
      const expiring = await signIn(ALICE, ALICE_PW);
      const { rows: [times] } = await db.query<{ ttl: number }>(
        'SELECT extract(epoch FROM expires_at - created_at)::int AS ttl FROM console_session WHERE id = $1', [sessionIdOf(expiring.token)]);
      expect(times!.ttl).to.equal(7200);
      await db.query(`UPDATE console_session SET expires_at = now() - interval '1 second' WHERE id = $1`, [sessionIdOf(expiring.token)]);
      expect((await send('GET', '/console/probe', { headers: cookie(expiring.token) })).status, 'expired').to.equal(303);

      const idle = await signIn(ALICE, ALICE_PW);
      await db.query(`UPDATE console_session SET last_seen_at = now() - interval '601 seconds' WHERE id = $1`, [sessionIdOf(idle.token)]);
      expect((await send('GET', '/console/probe', { headers: cookie(idle.token) })).status, 'idle too long').to.equal(303);

      const active = await signIn(ALICE, ALICE_PW);
      await db.query(`UPDATE console_session SET last_seen_at = now() - interval '590 seconds' WHERE id = $1`, [sessionIdOf(active.token)]);
      expect((await send('GET', '/console/probe', { headers: cookie(active.token) })).status).to.equal(200);
      const { rows: [seen] } = await db.query<{ ago: number }>(
        'SELECT extract(epoch FROM now() - last_seen_at) AS ago FROM console_session WHERE id = $1', [sessionIdOf(active.token)]);
      expect(Number(seen!.ago), 'the idle clock restarted').to.be.lessThan(60);
    });

    it('when CONSOLE_USERS changes (role changed, user removed, new password), then the session ends on the next request; unchanged it keeps working', async () => {
      const first = await serve();
      const sessions = [await signIn(ALICE, ALICE_PW, first), await signIn(ALICE, ALICE_PW, first), await signIn(ALICE, ALICE_PW, first), await signIn(ALICE, ALICE_PW, first)];
      const newHash = await hashPassword('alice new password', SCRYPT_N.min);
      const configs = [
        { what: 'unchanged', users, works: true },
        { what: 'demoted to viewer', users: `${ALICE}:viewer:${aliceHash},${BOB}:viewer:${bobHash}`, works: false },
        { what: 'removed', users: `${BOB}:viewer:${bobHash}`, works: false },
        { what: 'new password', users: `${ALICE}:operator:${newHash}`, works: false },
      ];
      for (const [i, c] of configs.entries()) {
        const other = await serve({ CONSOLE_USERS: c.users });
        const res = await send('GET', '/console/probe', { headers: cookie(sessions[i]!.token) }, other);
        expect(res.status, c.what).to.equal(c.works ? 200 : 303);
        expect(await sessionExists(sessions[i]!.token), `${c.what}: row kept`).to.equal(c.works);
      }
    });
  });

  describe('cross-site requests', function () {
    it('when a session POSTs without the CSRF token, with a wrong one, or from another Origin or site, then 403 and nothing is re-opened; with the right token it passes', async () => {
      await serve();
      const { token, csrf } = await signIn(ALICE, ALICE_PW);
      const id = await failedBatch();
      const refused: Record<string, string>[] = [
        {},
        { 'x-csrf-token': 'A'.repeat(43) },
        { 'x-csrf-token': `${csrf}x` },
        { 'x-csrf-token': csrf, origin: EVIL },
        { 'x-csrf-token': csrf, origin: 'null' },
        { 'x-csrf-token': csrf, origin: `http://127.0.0.1:${server.port}.evil.example` },
        { 'x-csrf-token': csrf, 'sec-fetch-site': 'cross-site' },
        { 'x-csrf-token': csrf, 'sec-fetch-site': 'same-site' },
      ];
      for (const headers of refused) {
        const res = await replay(id, { ...cookie(token), ...headers });
        expect(res.status, JSON.stringify(headers)).to.equal(403);
      }
      expect(await domainStatus(id), 'nothing re-opened').to.equal('failed');
      const ok = await replay(id, { ...cookie(token), 'x-csrf-token': csrf, origin: server.url, 'sec-fetch-site': 'same-origin' });
      expect(ok.status, ok.text).to.equal(200);
      expect(await domainStatus(id)).to.equal('pending');
    });

    it('when a plain HTML form posts the token as _csrf, then it passes; a _csrf of another session is refused', async () => {
      await serve();
      const alice = await signIn(ALICE, ALICE_PW);
      const other = await signIn(ALICE, ALICE_PW);
      const wrong = await send('POST', '/console/probe', { headers: cookie(alice.token), form: { _csrf: other.csrf } });
      expect(wrong.status).to.equal(403);
      const res = await send('POST', '/console/probe', { headers: { ...cookie(alice.token), origin: server.url }, form: { _csrf: alice.csrf, note: 'x' } });
      expect(res.status, res.text).to.equal(200);
      expect(res.body.principal).to.deep.equal({ name: ALICE, role: 'operator', via: 'session' });
    });

    it('when a viewer session sends the right CSRF token to an operator route, then 403 and nothing changes', async () => {
      await serve();
      const bob = await signIn(BOB, BOB_PW);
      const id = await failedBatch();
      const res = await replay(id, { ...cookie(bob.token), 'x-csrf-token': bob.csrf });
      expect(res.status).to.equal(403);
      expect(res.body.error).to.equal(`this route needs the operator role; ${BOB} is a viewer and may only read`);
      expect(await domainStatus(id)).to.equal('failed');
      expect((await send('POST', '/console/probe', { headers: { ...cookie(bob.token), 'x-csrf-token': bob.csrf } })).status).to.equal(403);
    });

    it('when a bearer POSTs with no CSRF token and a foreign Origin, then it passes (a bearer is no ambient credential)', async () => {
      await serve();
      const id = await failedBatch();
      const res = await replay(id, { authorization: `Bearer ${ADMIN_TOKEN}`, origin: EVIL });
      expect(res.status, res.text).to.equal(200);
      expect(await domainStatus(id)).to.equal('pending');
    });
  });

  describe('single sign-on proxy', function () {
    const SSO = { SSO_USER_HEADER: 'X-Forwarded-User', SSO_OPERATORS: 'carol,erin' };

    it('when a TRUST_PROXY=loopback proxy names a user, then that user is signed in via sso with the role from SSO_OPERATORS and gets a CSRF session, even with X-Forwarded-For naming the browser or an Authorization of the proxy\'s own', async () => {
      await serve({ ...SSO, TRUST_PROXY: 'loopback' });
      const carol = 'carol';
      const dave = `dave.${rand()}`;
      const res = await send('GET', '/console/probe', { headers: { 'x-forwarded-user': carol, 'x-forwarded-for': '203.0.113.9' } });
      expect(res.status, res.text).to.equal(200);
      expect(res.body.principal).to.deep.equal({ name: carol, role: 'operator', via: 'sso' });
      expect(res.body.csrfToken).to.match(/^[A-Za-z0-9_-]{43}$/);
      expect(res.setCookie!.split(';').map((s) => s.trim().toLowerCase()).slice(1).sort()).to.deep.equal(['httponly', 'path=/', 'samesite=strict']);
      const row = (await sessionRows(carol)).find((r) => r.id === sessionIdOf(tokenOf(res.setCookie)));
      expect(row).to.deep.include({ via: 'sso', csrf_token: res.body.csrfToken });

      const proxyAuthorization = await send('GET', '/console/probe', { headers: { 'x-forwarded-user': carol, authorization: 'Bearer the-proxy-own-id-token' } });
      expect(proxyAuthorization.body.principal, 'an Authorization the proxy passes on does not hide its user').to.deep.equal({ name: carol, role: 'operator', via: 'sso' });

      const viewer = await send('GET', '/console/probe', { headers: { 'x-forwarded-user': dave } });
      expect(viewer.body.principal).to.deep.equal({ name: dave, role: 'viewer', via: 'sso' });
      expect((await send('GET', '/api/alarms', { headers: { 'x-forwarded-user': dave } })).status, 'API reads too').to.equal(200);
      expect((await sessionRows(dave)).length, 'an API call through the proxy leaves no session row').to.equal(1);
    });

    it('when an SSO user POSTs, then the CSRF token of their SSO session is required', async () => {
      await serve({ ...SSO, TRUST_PROXY: 'loopback' });
      const page = await send('GET', '/console/probe', { headers: { 'x-forwarded-user': 'erin' } });
      const token = tokenOf(page.setCookie);
      const csrf = page.body.csrfToken as string;
      const id = await failedBatch();
      const refused: Record<string, string>[] = [
        { 'x-forwarded-user': 'erin' },
        { 'x-forwarded-user': 'erin', ...cookie(token) },
        { 'x-forwarded-user': 'erin', 'x-csrf-token': csrf },
        { 'x-forwarded-user': 'erin', ...cookie(token), 'x-csrf-token': csrf, origin: EVIL },
      ];
      for (const headers of refused) {
        expect((await replay(id, headers)).status, JSON.stringify(Object.keys(headers))).to.equal(403);
      }
      expect(await domainStatus(id)).to.equal('failed');
      const ok = await replay(id, { 'x-forwarded-user': 'erin', ...cookie(token), 'x-csrf-token': csrf });
      expect(ok.status, ok.text).to.equal(200);
      expect(await domainStatus(id)).to.equal('pending');
    });

    it('when TRUST_PROXY is empty, then the header is ignored (303 for pages, 401 for the API) and a warning names the address', async () => {
      const { lines } = await serve({ ...SSO, TRUST_PROXY: '' });
      const carol = `carol.${rand()}`;
      const page = await send('GET', '/console/probe', { headers: { 'x-forwarded-user': carol } });
      expect(page.status).to.equal(303);
      expect(page.headers.location).to.match(/^\/console\/login\?next=/);
      expect(page.setCookie).to.equal(undefined);
      const api = await send('GET', '/api/alarms', { headers: { 'x-forwarded-user': carol } });
      expect(api.status).to.equal(401);
      const warn = lines.map((l) => JSON.parse(l) as Json).find((l) => l.message === 'single sign-on header ignored: the request does not come from a TRUST_PROXY address');
      expect(warn).to.deep.include({ level: 'warn', address: '127.0.0.1', header: 'x-forwarded-user' });
      expect(await sessionRows(carol), 'no SSO session either').to.deep.equal([]);
    });

    it('when the header comes from an address not in TRUST_PROXY, even with X-Forwarded-For: 127.0.0.1, then it is ignored; from the proxy itself it is believed', async () => {
      await serve({ ...SSO, TRUST_PROXY: '127.0.0.1' });
      const headers = { 'x-forwarded-user': 'carol', 'x-forwarded-for': '127.0.0.1' };
      const spoofed = await send('GET', '/console/probe', { headers, from: '127.0.0.2' });
      expect(spoofed.status).to.equal(303);
      expect((await send('GET', '/api/alarms', { headers, from: '127.0.0.2' })).status).to.equal(401);
      const proxied = await send('GET', '/console/probe', { headers, from: '127.0.0.1' });
      expect(proxied.status).to.equal(200);
      expect(proxied.body.principal).to.deep.equal({ name: 'carol', role: 'operator', via: 'sso' });
    });

    it('when an SSO session cookie comes without the header, with another user\'s header, or the header is sent twice, then nobody is signed in as that user', async () => {
      await serve({ ...SSO, TRUST_PROXY: 'loopback' });
      const carol = await send('GET', '/console/probe', { headers: { 'x-forwarded-user': 'carol' } });
      const token = tokenOf(carol.setCookie);
      expect((await send('GET', '/console/probe', { headers: cookie(token) })).status, 'no header: the SSO row signs nobody in').to.equal(303);
      const frank = await send('GET', '/console/probe', { headers: { ...cookie(token), 'x-forwarded-user': 'frank' } });
      expect(frank.body.principal).to.deep.equal({ name: 'frank', role: 'viewer', via: 'sso' });
      expect(frank.body.csrfToken, 'carol\'s CSRF token is not handed to frank').to.not.equal(carol.body.csrfToken);
      const twice = await send('GET', '/console/probe', { headers: { 'x-forwarded-user': ['frank', 'carol'] } });
      expect(twice.status).to.equal(303);
      expect((await send('GET', '/console/probe', { headers: { 'x-forwarded-user': 'admin-token' } })).status, 'a bearer name').to.equal(303);
    });
  });

  describe('bearer tokens, the fail-closed switch, and where the unauthenticated go', function () {
    it('when ADMIN_TOKEN or VIEWER_TOKEN is sent, then console pages and API routes accept it without a CSRF token; a wrong bearer next to a valid session cookie is 401', async () => {
      await serve();
      const asAdmin = { authorization: `Bearer ${ADMIN_TOKEN}` };
      const page = await send('GET', '/console/probe', { headers: asAdmin });
      expect(page.body).to.deep.equal({ principal: { name: 'admin-token', role: 'operator', via: 'bearer' }, csrfToken: null });
      expect((await send('POST', '/console/probe', { headers: { ...asAdmin, origin: EVIL } })).status).to.equal(200);
      expect((await send('GET', '/console/probe', { headers: { authorization: `Bearer ${VIEWER_TOKEN}` } })).body.principal)
        .to.deep.equal({ name: 'viewer-token', role: 'viewer', via: 'bearer' });
      expect((await send('POST', '/console/probe', { headers: { authorization: `Bearer ${VIEWER_TOKEN}` } })).status).to.equal(403);
      expect((await send('GET', '/api/alarms', { headers: asAdmin })).status).to.equal(200);
      expect((await send('GET', '/metrics', { headers: asAdmin })).status).to.equal(200);

      const { token } = await signIn(ALICE, ALICE_PW);
      const mixed = await send('GET', '/console/probe', { headers: { ...cookie(token), authorization: 'Bearer wrong-token-000000' } });
      expect(mixed.status).to.equal(401);
      expect(mixed.headers['www-authenticate']).to.match(/^Bearer/);
    });

    it('when none of ADMIN_TOKEN, VIEWER_TOKEN, CONSOLE_USERS and SSO_USER_HEADER is set, then console pages and API routes answer 403 naming all four', async () => {
      await serve({ ADMIN_TOKEN: '', VIEWER_TOKEN: '', CONSOLE_USERS: '' });
      for (const [method, path] of [['GET', '/console/probe'], ['POST', '/console/probe'], ['GET', '/api/alarms'], ['GET', '/metrics']] as const) {
        const res = await send(method, path, { headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...HTML } });
        expect(res.status, `${method} ${path}`).to.equal(403);
        for (const key of ['ADMIN_TOKEN', 'VIEWER_TOKEN', 'CONSOLE_USERS', 'SSO_USER_HEADER']) expect(res.body.error, path).to.include(key);
      }
      const loginRes = await login(ALICE, ALICE_PW);
      expect(loginRes.status, 'nobody can sign in').to.equal(401);
    });

    it('when nobody is signed in, then a console page redirects 303 to the form with next, a browser on an API route is redirected without next, and an API client gets 401 JSON with a Bearer challenge', async () => {
      await serve();
      const page = await send('GET', '/console/probe?view=all');
      expect(page.status).to.equal(303);
      expect(page.headers.location).to.equal('/console/login?next=%2Fconsole%2Fprobe%3Fview%3Dall');
      const browser = await send('GET', '/api/alarms', { headers: HTML });
      expect(browser.status).to.equal(303);
      expect(browser.headers.location).to.equal('/console/login');
      const api = await send('GET', '/api/alarms', { headers: { accept: '*/*' } });
      expect(api.status).to.equal(401);
      expect(api.headers['www-authenticate']).to.match(/^Bearer/);
      expect(api.body.error).to.equal('not signed in: send Authorization: Bearer <ADMIN_TOKEN or VIEWER_TOKEN>, or sign in at /console/login');
      expect((await send('GET', '/metrics', { headers: HTML })).status, '/metrics never redirects').to.equal(401);
    });
  });

  describe('secrets', function () {
    it('when people sign in, fail, use CSRF tokens and sign out at debug level, then no log line and no Location header holds a session token, a CSRF token, a password or a hash', async () => {
      const { lines } = await serve({ SSO_USER_HEADER: 'X-Forwarded-User', TRUST_PROXY: 'loopback' });
      const locations: string[] = [];
      const keep = (r: Reply) => { if (r.headers.location) locations.push(r.headers.location); return r; };
      const wrongPassword = 'alice typo password 9';
      keep(await login(ALICE, wrongPassword));
      keep(await login(ALICE_PW, ALICE_PW)); // the password typed into the name field
      const signed = keep(await login(ALICE, ALICE_PW, { next: '/console/alarms' }));
      const token = tokenOf(signed.setCookie);
      const page = keep(await send('GET', '/console/probe', { headers: cookie(token) }));
      const csrf = page.body.csrfToken as string;
      const id = await failedBatch();
      keep(await replay(id, { ...cookie(token) }));
      keep(await replay(id, { ...cookie(token), 'x-csrf-token': `${csrf}x` }));
      keep(await replay(id, { ...cookie(token), 'x-csrf-token': csrf }));
      const sso = keep(await send('GET', '/console/probe', { headers: { 'x-forwarded-user': 'carol' } }));
      keep(await send('POST', '/console/logout', { headers: cookie(token), form: { _csrf: `${csrf}y` } }));
      keep(await send('POST', '/console/logout', { headers: cookie(token), form: { _csrf: csrf } }));
      keep(await send('GET', '/console/probe', { headers: cookie(token) }));

      expect(lines.join('')).to.include('console sign-in').and.include('console sign-out').and.include('missing or wrong CSRF token');
      const secrets: [string, string][] = [
        ['session token', token], ['CSRF token', csrf], ['SSO session token', tokenOf(sso.setCookie)], ['SSO CSRF token', sso.body.csrfToken as string],
        ['password', ALICE_PW], ['wrong password', wrongPassword], ['hash key', aliceHash.split('$')[3]!], ['hash salt', aliceHash.split('$')[2]!],
      ];
      for (const [what, secret] of secrets) {
        expect(secret.length, what).to.be.greaterThan(10);
        const leaking = lines.filter((l) => l.includes(secret));
        expect(leaking, `${what} in ${leaking.length} log line(s): ${leaking[0] ?? ''}`).to.deep.equal([]);
        expect(locations.filter((l) => l.includes(secret)), `${what} in a Location`).to.deep.equal([]);
      }
      const refused = lines.map((l) => JSON.parse(l) as Json).filter((l) => l.message === 'console sign-in refused: wrong name or password');
      expect(refused.map((l) => l.user), 'a name that is no user is not logged').to.deep.equal([ALICE, undefined]);
    });

    it('when npm run console:user is given a password on stdin, then it prints one entry that signs in with that password, and a bad role is a usage error', async () => {
      const name = `cli.${rand()}`;
      const password = 'piped password 12345';
      const run = (args: string[], input: string) => new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        const child = execFile(process.execPath, ['--import', 'tsx', 'scripts/console-user.ts', ...args], { cwd: process.cwd(), timeout: 60_000 },
          (err, stdout, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, stdout, stderr }));
        child.stdin!.end(input);
      });
      const out = await run([name, 'operator'], `${password}\nsecond line ignored\n`);
      expect(out.code, out.stderr).to.equal(0);
      const lines = out.stdout.split('\n').filter(Boolean);
      expect(lines).to.have.length(1);
      expect(lines[0]).to.match(new RegExp(`^${name.replace('.', '\\.')}:operator:scrypt\\$32768\\$`));
      expect(out.stdout + out.stderr).to.not.include(password);

      await serve({ CONSOLE_USERS: lines[0]! });
      expect((await login(name, 'piped password 1234')).status).to.equal(401);
      const res = await login(name, password);
      expect(res.status).to.equal(303);
      expect((await send('GET', '/console/probe', { headers: cookie(tokenOf(res.setCookie)) })).body.principal).to.deep.equal({ name, role: 'operator', via: 'session' });

      const bad = await run([name, 'admin'], `${password}\n`);
      expect(bad.code).to.equal(2);
      expect(bad.stdout).to.equal('');
      expect(bad.stderr).to.include('role must be viewer or operator');
    });
  });
});
