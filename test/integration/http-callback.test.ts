/**
 * The HTTP API in-process against the real PostgreSQL, Redis and RabbitMQ: every way a callback can be
 * refused (status, the vendor's reply shape, and nothing stored), the good path (rows and one job on the
 * queue), repeated callbacks, unknown reqTypes, PostgreSQL away, the operator routes and their
 * credentials, alarm paging, and the server's own limits (stalled bodies, connection cap).
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { expect } from 'chai';
import pg from 'pg';
import { createContext, type AppContext } from '../../src/context.js';
import { CALLBACK_PATH, createApp } from '../../src/http/app.js';
import { startService } from '../../src/main.js';
import {
  CALLBACK_TOKEN, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, queueDepth, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';

type Json = Record<string, unknown>;
interface Reply { status: number; body: Json }
interface RowCounts { audit: number; batch: number; domains: number; alarms: number }

const ADMIN_TOKEN = 'test-admin-token';
const VIEWER_TOKEN = 'test-viewer-token-0001';
const asOperator = { authorization: `Bearer ${ADMIN_TOKEN}` };
const asViewer = { authorization: `Bearer ${VIEWER_TOKEN}` };

describe('HTTP API', function () {
  let db: pg.Pool;
  let env: Record<string, string> | undefined;
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  let url: string;
  let cleanups: (() => Promise<void>)[] = [];

  async function start(overrides: Record<string, string> = {}): Promise<void> {
    env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN, ...overrides });
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
    url = `http://127.0.0.1:${service.port}`;
  }

  /** Serves createApp(ctx) on a free port, stopped in afterEach; sets `url`. */
  async function serveApp(ctx: AppContext, opts: { opsOnly?: boolean } = {}): Promise<void> {
    const server = http.createServer(createApp(ctx, opts));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  /** A context whose PostgreSQL is a closed port (the real Redis and RabbitMQ stay, unstarted). */
  function contextWithDeadPostgres(overrides: Record<string, string> = {}, logger = captureLogger('error').logger): AppContext {
    env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN, ...overrides });
    const config = testConfig(env);
    const ctx = createContext(config, { logger });
    const deadDb = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/x', connectionTimeoutMillis: 2000 });
    cleanups.push(async () => { await ctx.release(); await deadDb.end(); });
    return { ...ctx, db: deadDb };
  }

  beforeEach(() => {
    db = testDb();
  });

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    for (const c of cleanups.reverse()) await c();
    cleanups = [];
    if (env) await cleanupNames(env);
    env = undefined;
    await db.end();
  });

  /** POSTs a raw body to the callback route; a header set to undefined is not sent. */
  async function send(body: string, headers: Record<string, string | undefined> = {}, base = url): Promise<Reply> {
    const all: Record<string, string | undefined> = { 'content-type': 'application/json', 'x-callback-token': CALLBACK_TOKEN, ...headers };
    const res = await fetch(`${base}${CALLBACK_PATH}`, {
      method: 'POST',
      headers: Object.fromEntries(Object.entries(all).filter((e): e is [string, string] => e[1] !== undefined)),
      body,
    });
    return { status: res.status, body: (await res.json()) as Json };
  }

  async function request(method: string, path: string, opts: { body?: unknown; headers?: Record<string, string> } = {}): Promise<Reply> {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...opts.headers },
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    return { status: res.status, body: (await res.json()) as Json };
  }

  /** Like request, plus the WWW-Authenticate challenge (null when absent) and the body as text when it is not JSON. */
  async function call(method: string, path: string, headers: Record<string, string> = {}, body?: unknown): Promise<Reply & { challenge: string | null; text: string }> {
    const res = await fetch(`${url}${path}`, {
      method, headers: { 'content-type': 'application/json', ...headers }, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: Json = {};
    try { parsed = JSON.parse(text) as Json; } catch { /* /metrics answers text */ }
    return { status: res.status, body: parsed, challenge: res.headers.get('www-authenticate'), text };
  }

  /** Rows in the ledger tables: over all messageIds, and for one. */
  async function rowCounts(id: string): Promise<{ all: RowCounts; forId: RowCounts }> {
    const { rows } = await db.query<{ scope: string; audit: number; batch: number; domains: number; alarms: number }>(
      `SELECT 'all' AS scope, (SELECT count(*)::int FROM callback_audit) AS audit, (SELECT count(*)::int FROM batch) AS batch,
              (SELECT count(*)::int FROM batch_domain) AS domains, (SELECT count(*)::int FROM sys_task_process_alarm) AS alarms
       UNION ALL
       SELECT 'id', (SELECT count(*)::int FROM callback_audit WHERE message_id = $1), (SELECT count(*)::int FROM batch WHERE message_id = $1),
              (SELECT count(*)::int FROM batch_domain WHERE message_id = $1), (SELECT count(*)::int FROM sys_task_process_alarm WHERE message_id = $1)`,
      [id],
    );
    const pick = (scope: string): RowCounts => {
      const r = rows.find((x) => x.scope === scope)!;
      return { audit: r.audit, batch: r.batch, domains: r.domains, alarms: r.alarms };
    };
    return { all: pick('all'), forId: pick('id') };
  }

  function expectVendorError(res: Reply, status: number, id: string | null, message: string | RegExp): void {
    expect(res.status, JSON.stringify(res.body)).to.equal(status);
    expect(Object.keys(res.body).sort()).to.deep.equal(['message', 'messageId', 'status', 'success']);
    expect(res.body.success).to.equal(false);
    expect(res.body.status).to.equal(1);
    expect(res.body.messageId).to.equal(id);
    if (typeof message === 'string') expect(res.body.message).to.equal(message);
    else expect(res.body.message).to.match(message);
  }

  describe('refused callbacks (CALLBACK_BODY_LIMIT=2kb, CALLBACK_MAX_ITEMS=10)', function () {
    beforeEach(() => start({ CALLBACK_BODY_LIMIT: '2kb', CALLBACK_MAX_ITEMS: '10' }));

    const items = (id: string, n: number) => callbackBody(id, domainsFor(id.slice(2, 10), n)).data;
    const cases: { when: string; status: number; echoId: boolean; message: string | RegExp; request: (id: string) => { body: string; headers?: Record<string, string | undefined> } }[] = [
      {
        when: 'the body is not valid JSON', status: 400, echoId: false, message: 'body is not valid JSON',
        request: (id) => ({ body: `{"messageId":"${id}","data":[{"targetName":"a.example.com"` }),
      },
      {
        when: 'the body is a JSON array, not an object', status: 400, echoId: false, message: 'body must be a JSON object',
        request: (id) => ({ body: JSON.stringify([callbackBody(id, ['a.example.com'])]) }),
      },
      {
        when: 'the content type is text/plain', status: 415, echoId: false, message: 'Content-Type must be application/json',
        request: (id) => ({ body: JSON.stringify(callbackBody(id, ['a.example.com'])), headers: { 'content-type': 'text/plain' } }),
      },
      {
        when: 'the body is larger than CALLBACK_BODY_LIMIT', status: 413, echoId: false, message: 'body is larger than the limit',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: items(id, 5).map((i) => ({ ...i, note: 'x'.repeat(600) })) }) }),
      },
      {
        when: 'messageId is missing', status: 400, echoId: false, message: 'messageId is missing',
        request: (id) => ({ body: JSON.stringify({ data: items(id, 2) }) }),
      },
      {
        when: 'messageId is malformed', status: 400, echoId: false, message: /^messageId must be 1 to 128 characters/,
        request: (id) => ({ body: JSON.stringify({ messageId: `${id}/../x y`, data: items(id, 2) }) }),
      },
      {
        when: 'messageId is not a string', status: 400, echoId: false, message: /^messageId must be/,
        request: (id) => ({ body: JSON.stringify({ messageId: 12345, data: items(id, 2) }) }),
      },
      {
        when: 'data is missing', status: 400, echoId: true, message: 'data must be an array of domain items',
        request: (id) => ({ body: JSON.stringify({ messageId: id }) }),
      },
      {
        when: 'data is empty', status: 400, echoId: true, message: 'data is empty',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: [] }) }),
      },
      {
        when: 'data holds more than CALLBACK_MAX_ITEMS', status: 400, echoId: true, message: 'data holds 11 items; at most 10 are accepted per callback',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: items(id, 11) }) }),
      },
      {
        when: 'item 1 has an invalid hostname', status: 400, echoId: true, message: /^data\[1\]\.targetName "bad host\.example\.com" is not a valid hostname$/,
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: [...items(id, 1), { reqType: 'SELF_DOMAIN_DELETE', targetName: 'bad host.example.com' }, ...items(id, 2)] }) }),
      },
      {
        when: 'an item has no reqType', status: 400, echoId: true, message: 'data[0].reqType must be 1 to 64 characters of A-Z, 0-9 or _, starting with a letter',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: [{ targetName: 'a.example.com' }] }) }),
      },
      {
        when: 'an item\'s reqType holds a NUL character', status: 400, echoId: true, message: 'data[0].reqType contains a NUL character',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: [{ ...items(id, 1)[0], reqType: 'SELF_DOMAIN_DELETE\u0000' }] }) }),
      },
      {
        when: 'the name of an unknown field holds a NUL character', status: 400, echoId: true, message: 'data[1]["x\\u0000"] contains a NUL character',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: items(id, 2).map((it, i) => (i === 1 ? { ...it, 'x\u0000': 1 } : it)) }) }),
      },
      {
        when: 'an unknown top-level field holds a NUL character deep inside', status: 400, echoId: true, message: 'meta.trace[2].note contains a NUL character',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: items(id, 2), meta: { trace: [{}, {}, { note: 'a\u0000b' }] } }) }),
      },
      {
        when: 'messageId holds a NUL character', status: 400, echoId: false, message: 'messageId contains a NUL character',
        request: (id) => ({ body: JSON.stringify({ messageId: `${id}\u0000`, data: items(id, 2) }) }),
      },
      {
        when: 'an item\'s reqType is lower case', status: 400, echoId: true, message: 'data[1].reqType must be 1 to 64 characters of A-Z, 0-9 or _, starting with a letter',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: items(id, 2).map((it, i) => (i === 1 ? { ...it, reqType: 'self_domain_delete' } : it)) }) }),
      },
      {
        when: 'the X-Callback-Token header is missing', status: 401, echoId: false, message: 'missing or wrong X-Callback-Token',
        request: (id) => ({ body: JSON.stringify(callbackBody(id, ['a.example.com'])), headers: { 'x-callback-token': undefined } }),
      },
      {
        when: 'the X-Callback-Token is wrong', status: 401, echoId: false, message: 'missing or wrong X-Callback-Token',
        request: (id) => ({ body: JSON.stringify(callbackBody(id, ['a.example.com'])), headers: { 'x-callback-token': `${CALLBACK_TOKEN}x` } }),
      },
    ];

    for (const c of cases) {
      it(`when ${c.when}, then the reply is ${c.status} in the vendor's error shape and nothing is stored`, async () => {
        const id = messageId();
        const before = await rowCounts(id);
        const { body, headers } = c.request(id);
        const res = await send(body, headers);
        expectVendorError(res, c.status, c.echoId ? id : null, c.message);
        const after = await rowCounts(id);
        expect(after.forId).to.deep.equal({ audit: 0, batch: 0, domains: 0, alarms: 0 });
        expect(after.all).to.deep.equal(before.all);
        expect(await queueDepth(env!, 'jobs')).to.equal(0);
      });
    }

    it('when a valid callback arrives, then the reply is exactly the vendor OK, the batch is stored and one job waits on the queue', async () => {
      const id = messageId();
      const domains = domainsFor(id.slice(2, 10), 3);
      const body = callbackBody(id, [domains[0]!, domains[1]!.toUpperCase(), `${domains[2]}.`, domains[0]!]);
      const res = await send(JSON.stringify(body));
      expect(res.status).to.equal(200);
      expect(res.body).to.deep.equal({ success: true, messageId: id, message: 'OK', status: 0 });

      expect((await rowCounts(id)).forId).to.deep.equal({ audit: 1, batch: 1, domains: 3, alarms: 0 });
      const { rows: audit } = await db.query<{ remote_addr: string; item_count: number; body: unknown }>(
        'SELECT remote_addr, item_count, body FROM callback_audit WHERE message_id = $1', [id]);
      expect(audit[0]).to.deep.equal({ remote_addr: '127.0.0.1', item_count: 3, body });
      const { rows: stored } = await db.query<{ domain: string; req_type: string; status: string }>(
        'SELECT domain, req_type, status FROM batch_domain WHERE message_id = $1 ORDER BY domain', [id]);
      expect(stored).to.deep.equal([...domains].sort().map((domain) => ({ domain, req_type: 'SELF_DOMAIN_DELETE', status: 'pending' })));
      // The publish flag is cleared in bulk after the broker's confirm, shortly after the reply.
      const batch = await waitFor('the publish flag cleared', async () => {
        const { rows } = await db.query<{ callbacks: number; publish_pending: boolean; published_at: Date | null }>(
          'SELECT callbacks, publish_pending, published_at FROM batch WHERE message_id = $1', [id]);
        return rows[0]!.publish_pending ? undefined : rows;
      }, 5000);
      expect(batch[0]!.callbacks).to.equal(1);
      expect(batch[0]!.published_at).to.be.instanceOf(Date);

      await waitFor('one job on the jobs queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      await new Promise((r) => setTimeout(r, 700)); // two relay intervals: nothing publishes it again
      expect(await queueDepth(env!, 'jobs')).to.equal(1);
    });

    it('when a callback is refused and another accepted, then /metrics counts each by result', async () => {
      const id = messageId();
      expect((await send(JSON.stringify(callbackBody(id, ['a.example.com'])), { 'x-callback-token': 'nope' })).status).to.equal(401);
      expect((await send(JSON.stringify(callbackBody(id, ['a.example.com'])))).status).to.equal(200);
      const res = await fetch(`${url}/metrics`, { headers: asViewer });
      expect(res.status).to.equal(200);
      const text = await res.text();
      expect(text).to.match(/^pcp_callbacks_total\{result="accepted"\} 1$/m);
      expect(text).to.match(/^pcp_callbacks_total\{result="rejected"\} 1$/m);
    });
  });

  it('when the caller address is not in CALLBACK_ALLOW_CIDRS, then the reply is 403 and nothing is stored', async () => {
    await start({ CALLBACK_ALLOW_CIDRS: '10.0.0.0/8' });
    const id = messageId();
    const before = await rowCounts(id);
    const res = await send(JSON.stringify(callbackBody(id, ['a.example.com'])));
    expectVendorError(res, 403, null, 'caller address is not allowed');
    const after = await rowCounts(id);
    expect(after.all).to.deep.equal(before.all);
    expect(after.forId.audit).to.equal(0);
  });

  it('when the caller address is in CALLBACK_ALLOW_CIDRS, then the callback is accepted', async () => {
    await start({ CALLBACK_ALLOW_CIDRS: '10.0.0.0/8, 127.0.0.0/8' });
    const id = messageId();
    const res = await send(JSON.stringify(callbackBody(id, ['a.example.com'])));
    expect(res.status).to.equal(200);
    expect((await rowCounts(id)).forId.audit).to.equal(1);
  });

  it('when CALLBACK_AUTH=none, then a callback without X-Callback-Token is accepted', async () => {
    await start({ CALLBACK_AUTH: 'none', CALLBACK_TOKEN: '' });
    const id = messageId();
    const res = await send(JSON.stringify(callbackBody(id, ['a.example.com'])), { 'x-callback-token': undefined });
    expect(res.body).to.deep.equal({ success: true, messageId: id, message: 'OK', status: 0 });
  });

  it('when an item has an unknown reqType, then the reply is OK, it is stored as unsupported and an alarm in the operators\' tag shape is raised', async () => {
    await start();
    const id = messageId();
    const body = {
      messageId: id,
      data: [
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: 'keep.example.com' },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_MOVE', targetName: 'odd.example.com' },
      ],
    };
    const res = await send(JSON.stringify(body));
    expect(res.body).to.deep.equal({ success: true, messageId: id, message: 'OK', status: 0 });

    const { rows: domains } = await db.query<{ domain: string; req_type: string; status: string }>(
      'SELECT domain, req_type, status FROM batch_domain WHERE message_id = $1 ORDER BY domain', [id]);
    expect(domains).to.deep.equal([
      { domain: 'keep.example.com', req_type: 'SELF_DOMAIN_DELETE', status: 'pending' },
      { domain: 'odd.example.com', req_type: 'SELF_DOMAIN_MOVE', status: 'unsupported' },
    ]);
    const { rows: alarms } = await db.query<{ tag: string; message_id: string; alarm_type: string; content: string }>(
      'SELECT tag, message_id, alarm_type, content FROM sys_task_process_alarm WHERE message_id = $1', [id]);
    expect(alarms).to.have.length(1);
    expect(alarms[0]!.alarm_type).to.equal('UNSUPPORTED_REQ_TYPE');
    expect(alarms[0]!.tag).to.equal(`{"taskId":"${id}_exc","type":"DOMAIN_B_PIPE"}`);
    expect(alarms[0]!.content).to.include('odd.example.com (SELF_DOMAIN_MOVE)');
    // Operators' existing query still finds it.
    const { rows: legacy } = await db.query('SELECT id FROM sys_task_process_alarm WHERE tag LIKE $1', [`%${id}%`]);
    expect(legacy).to.have.length(1);
  });

  it('when the same messageId is called back twice (49, then 50 domains sharing the first 49), then the batch holds 50 domains, 2 callbacks and 2 audit rows', async () => {
    await start();
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 50);
    const first = await send(JSON.stringify(callbackBody(id, domains.slice(0, 49))));
    const second = await send(JSON.stringify(callbackBody(id, domains)));
    for (const r of [first, second]) expect(r.body).to.deep.equal({ success: true, messageId: id, message: 'OK', status: 0 });

    expect((await rowCounts(id)).forId).to.deep.equal({ audit: 2, batch: 1, domains: 50, alarms: 0 });
    const { rows } = await db.query<{ callbacks: number }>('SELECT callbacks FROM batch WHERE message_id = $1', [id]);
    expect(rows[0]!.callbacks).to.equal(2);
    const { rows: items } = await db.query<{ item_count: number }>('SELECT item_count FROM callback_audit WHERE message_id = $1 ORDER BY id', [id]);
    expect(items.map((r) => r.item_count)).to.deep.equal([49, 50]);
  });

  describe('PostgreSQL away', function () {
    it('when PostgreSQL is unreachable, then a callback gets 503 in the vendor shape asking to retry, and /readyz says only "down" (the detail goes to the log at warn)', async () => {
      const { logger, lines } = captureLogger('warn');
      await serveApp(contextWithDeadPostgres({}, logger));

      const id = messageId();
      const res = await send(JSON.stringify(callbackBody(id, ['a.example.com'])));
      expectVendorError(res, 503, id, /retry/);
      expect(res.body.message).to.include('postgres');

      const ready = await call('GET', '/readyz');
      expect(ready.status).to.equal(503);
      // Redis and RabbitMQ were never connected in this context, so they are down too.
      expect(ready.body).to.deep.equal({ status: 'not ready', checks: { postgres: 'down', redis: 'down', rabbitmq: 'down' } });
      expect(ready.text, 'no address or error text').to.not.match(/127\.0\.0\.1|ECONNREFUSED|:1\b|connect/);
      const warned = lines.map((l) => JSON.parse(l) as Json).filter((l) => l.level === 'warn' && l.check === 'postgres');
      expect(warned, 'the reason is logged at warn').to.have.length.greaterThan(0);
      expect(JSON.stringify(warned[0])).to.match(/ECONNREFUSED|connect/);
      expect((await rowCounts(id)).forId.audit, 'nothing reached the real database').to.equal(0);
    });

    it('when PostgreSQL is unreachable, then the operator read routes answer 503 asking to retry, not 500', async () => {
      await serveApp(contextWithDeadPostgres());
      for (const path of [`/api/batches/${messageId()}`, '/api/alarms', `/api/alarms?messageId=${messageId()}`, '/api/alarms/1']) {
        const res = await call('GET', path, asViewer);
        expect(res.status, `${path}: ${res.text.slice(0, 300)}`).to.equal(503);
        expect(res.body.error, path).to.equal('temporarily unavailable (postgres); please retry');
      }
    });
  });

  describe('operator credentials', function () {
    const routes = (id: string): [string, string, unknown?][] => [
      ['GET', `/api/batches/${id}`], ['GET', '/api/alarms'], ['GET', '/api/alarms/1'], ['GET', '/metrics'],
      ['POST', `/api/batches/${id}/replay`, { dryRun: true }],
    ];

    it('when an operator route or /metrics is called without a bearer or with a wrong one, then 401 with a reason and a WWW-Authenticate: Bearer challenge, and nothing is re-opened', async () => {
      await start();
      const id = messageId();
      expect((await send(JSON.stringify(callbackBody(id, ['a.example.com'])))).status).to.equal(200);
      const wrong: Record<string, string>[] = [
        {}, { authorization: `Bearer ${ADMIN_TOKEN}x` }, { authorization: `Bearer ${VIEWER_TOKEN.slice(0, -1)}` }, { authorization: ADMIN_TOKEN },
        { authorization: `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}` }, { authorization: 'Bearer ' },
      ];
      for (const [method, path, body] of routes(id)) {
        for (const headers of wrong) {
          const res = await call(method, path, headers, body);
          expect(res.status, `${method} ${path} ${JSON.stringify(headers)}: ${res.text.slice(0, 300)}`).to.equal(401);
          expect(res.body.error).to.equal('missing or wrong bearer token (Authorization: Bearer <ADMIN_TOKEN or VIEWER_TOKEN>)');
          expect(res.challenge, `${method} ${path}`).to.match(/^Bearer\b/);
        }
      }
      const { rows } = await db.query<{ status: string }>('SELECT status FROM batch_domain WHERE message_id = $1', [id]);
      expect(rows.map((r) => r.status)).to.deep.equal(['pending']);
    });

    it('when neither ADMIN_TOKEN nor VIEWER_TOKEN is set, then every operator route and /metrics answer 403 "operator API disabled" even with a bearer', async () => {
      await start({ ADMIN_TOKEN: '', VIEWER_TOKEN: '' });
      for (const [method, path, body] of routes(messageId())) {
        for (const headers of [{}, asOperator]) {
          const res = await call(method, path, headers, body);
          expect(res.status, `${method} ${path}`).to.equal(403);
          expect(res.body.error, `${method} ${path}`).to.match(/^operator API disabled: set ADMIN_TOKEN or VIEWER_TOKEN/);
        }
      }
      expect((await call('GET', '/healthz')).status, '/healthz stays open').to.equal(200);
      expect((await call('GET', '/readyz')).status, '/readyz stays open').to.equal(200);
    });

    it('when the viewer token is used, then batches, alarms and /metrics answer 200, and a replay is 403 with nothing re-opened or published', async () => {
      await start();
      const id = messageId();
      expect((await send(JSON.stringify(callbackBody(id, ['a.example.com', 'b.example.com'])))).status).to.equal(200);
      await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      await db.query(`UPDATE batch_domain SET status = 'failed' WHERE message_id = $1`, [id]);

      expect((await call('GET', `/api/batches/${id}`, asViewer)).status).to.equal(200);
      expect((await call('GET', `/api/alarms?messageId=${id}`, asViewer)).status).to.equal(200);
      const metrics = await call('GET', '/metrics', asViewer);
      expect(metrics.status).to.equal(200);
      expect(metrics.text).to.include('pcp_callbacks_total');

      for (const body of [{}, { dryRun: true }]) {
        const res = await call('POST', `/api/batches/${id}/replay`, asViewer, body);
        expect(res.status).to.equal(403);
        expect(res.body.error).to.equal('this route needs the operator role (ADMIN_TOKEN); a viewer may only read');
      }
      const { rows } = await db.query<{ status: string }>('SELECT status FROM batch_domain WHERE message_id = $1', [id]);
      expect(rows.map((r) => r.status), 'nothing re-opened').to.deep.equal(['failed', 'failed']);
      expect(await queueDepth(env!, 'jobs'), 'nothing published').to.equal(1);
    });

    it('when only VIEWER_TOKEN is set, then reads work with it and a replay with any bearer is refused', async () => {
      await start({ ADMIN_TOKEN: '' });
      const id = messageId();
      expect((await send(JSON.stringify(callbackBody(id, ['a.example.com'])))).status).to.equal(200);
      expect((await call('GET', `/api/batches/${id}`, asViewer)).status).to.equal(200);
      expect((await call('POST', `/api/batches/${id}/replay`, asViewer, {})).status).to.equal(403);
      expect((await call('POST', `/api/batches/${id}/replay`, { authorization: 'Bearer x' }, {})).status).to.equal(401);
    });

    it('when METRICS_AUTH=none, then /metrics answers without a credential while the operator routes still need one', async () => {
      await start({ METRICS_AUTH: 'none' });
      const metrics = await call('GET', '/metrics');
      expect(metrics.status).to.equal(200);
      expect(metrics.text).to.include('pcp_callbacks_total');
      expect((await call('GET', '/api/alarms')).status).to.equal(401);
    });

    it('when a worker-only process serves /metrics, then it needs a bearer too unless METRICS_AUTH=none, and serves no operator route', async () => {
      env = testEnv({ ROLE: 'worker', ADMIN_TOKEN, VIEWER_TOKEN });
      const ctx = createContext(testConfig(env), { logger: captureLogger('error').logger });
      cleanups.push(() => ctx.release());
      await serveApp(ctx, { opsOnly: true });
      expect((await call('GET', '/metrics')).status).to.equal(401);
      expect((await call('GET', '/metrics', asViewer)).status).to.equal(200);
      expect((await call('GET', '/api/alarms', asViewer)).status, 'no operator routes on a worker').to.equal(404);
      expect((await call('GET', '/healthz')).status).to.equal(200);

      const openEnv = testEnv({ ROLE: 'worker', METRICS_AUTH: 'none', AMQP_PREFIX: env.AMQP_PREFIX!, REDIS_KEY_PREFIX: env.REDIS_KEY_PREFIX! });
      const open = createContext(testConfig(openEnv), { logger: captureLogger('error').logger });
      cleanups.push(() => open.release());
      await serveApp(open, { opsOnly: true });
      expect((await call('GET', '/metrics')).status).to.equal(200);
    });
  });

  describe('operator routes', function () {
    /** Changes whenever anything re-opens or re-publishes the batch (updated_at, with microseconds). */
    async function batchVersion(id: string): Promise<string> {
      const { rows } = await db.query<{ v: string }>('SELECT updated_at::text AS v FROM batch WHERE message_id = $1', [id]);
      return rows[0]!.v;
    }

    async function storeBatch(n: number): Promise<{ id: string; domains: string[] }> {
      const id = messageId();
      const domains = domainsFor(id.slice(2, 10), n);
      expect((await send(JSON.stringify(callbackBody(id, domains)))).status).to.equal(200);
      return { id, domains };
    }

    it('when a stored batch is fetched, then GET /api/batches/:id returns it with its domains and counts', async () => {
      await start();
      const { id, domains } = await storeBatch(3);
      const res = await request('GET', `/api/batches/${id}`, { headers: asViewer });
      expect(res.status).to.equal(200);
      expect(res.body.messageId).to.equal(id);
      expect((res.body.batch as Json).callbacks).to.equal(1);
      expect((res.body.counts as Json).pending).to.equal(3);
      const listed = res.body.domains as { domain: string; status: string; messageId: string }[];
      expect(listed.map((d) => [d.domain, d.status, d.messageId])).to.deep.equal([...domains].sort().map((d) => [d, 'pending', id]));
    });

    it('when an unknown or malformed messageId is fetched, then 404 and 400 with a reason', async () => {
      await start();
      const unknown = messageId();
      const notFound = await request('GET', `/api/batches/${unknown}`, { headers: asOperator });
      expect(notFound.status).to.equal(404);
      expect(notFound.body.error).to.match(new RegExp(`^no batch with messageId ${unknown}`));
      const bad = await request('GET', `/api/batches/${'a'.repeat(129)}`, { headers: asOperator });
      expect(bad.status).to.equal(400);
      expect(bad.body.error).to.match(/^messageId must be/);
    });

    it('when alarms are queried by messageId, then only that batch\'s alarms come back with its counts', async () => {
      await start();
      const ids = [messageId(), messageId()];
      for (const id of ids) {
        const res = await send(JSON.stringify({ messageId: id, data: [{ reqType: 'SELF_DOMAIN_ADD', targetName: `x.${id}.example.com` }] }));
        expect(res.status).to.equal(200);
      }
      const res = await request('GET', `/api/alarms?messageId=${ids[0]}`, { headers: asViewer });
      expect(res.status).to.equal(200);
      const alarms = res.body.alarms as { messageId: string; alarmType: string; tag: string }[];
      expect(alarms.map((a) => [a.messageId, a.alarmType, a.tag])).to.deep.equal([
        [ids[0], 'UNSUPPORTED_REQ_TYPE', `{"taskId":"${ids[0]}_exc","type":"DOMAIN_B_PIPE"}`],
      ]);
      expect(Object.keys(res.body.counts as Json)).to.deep.equal([ids[0]]);
      expect(((res.body.counts as Json)[ids[0]!] as Json).unsupported).to.equal(1);
      expect(res.body.nextCursor).to.equal(null);

      const both = await request('GET', `/api/alarms?messageId=${ids[0]}&messageId=${ids[1]}`, { headers: asViewer });
      expect((both.body.alarms as { messageId: string }[]).map((a) => a.messageId).sort()).to.deep.equal([...ids].sort());
      expect((await request('GET', '/api/alarms?messageId=bad%20id', { headers: asViewer })).status).to.equal(400);
    });

    it('when the admin bearer token is missing or wrong, then replay is 401 and nothing changes', async () => {
      await start();
      const { id } = await storeBatch(2);
      await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      const before = await batchVersion(id);
      const attempts: Record<string, string>[] = [{}, { authorization: `Bearer ${ADMIN_TOKEN}x` }, { authorization: ADMIN_TOKEN }];
      for (const headers of attempts) {
        const res = await request('POST', `/api/batches/${id}/replay`, { body: {}, headers });
        expect(res.status, JSON.stringify(headers)).to.equal(401);
        expect(res.body.error).to.match(/^missing or wrong bearer token/);
      }
      expect(await batchVersion(id), 'batch not re-opened').to.equal(before);
      expect(await queueDepth(env!, 'jobs')).to.equal(1);
    });

    it('when the right admin token asks for a dry run, then the domains it would re-open are listed and no job is published', async () => {
      await start();
      const { id, domains } = await storeBatch(3);
      await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      const before = await batchVersion(id);
      const res = await request('POST', `/api/batches/${id}/replay`, { body: { dryRun: true }, headers: asOperator });
      expect(res.status).to.equal(200);
      expect(res.body).to.deep.equal({
        messageId: id, dryRun: true, published: false,
        reopened: [...domains].sort().map((domain) => ({ domain, status: 'pending' })),
        reopen: [...domains].sort().map((domain) => ({ domain, status: 'pending', detail: null, why: 'pending and not sent yet; its job is published again' })),
        skipped: [],
        changes: [],
      });
      expect(await batchVersion(id), 'batch not re-opened').to.equal(before);
      await new Promise((r) => setTimeout(r, 300));
      expect(await queueDepth(env!, 'jobs')).to.equal(1);
    });

    const notBooleans: [string, unknown][] = [
      ['"dryRun":"true" (a string)', { dryRun: 'true' }],
      ['"dryRun":1', { dryRun: 1 }],
      ['"dryRun":null', { dryRun: null }],
      ['"all":"false" (a string)', { all: 'false', dryRun: true }],
      ['an unknown key ("dry_run")', { dry_run: true }],
      ['an unknown key next to valid ones', { dryRun: true, all: false, force: true }],
      ['a JSON array', [{ dryRun: true }]],
    ];
    for (const [what, body] of notBooleans) {
      it(`when a replay body holds ${what}, then 400 with a reason, nothing is re-opened and no job is published`, async () => {
        await start();
        const { id } = await storeBatch(2);
        await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
        await db.query(`UPDATE batch_domain SET status = 'failed' WHERE message_id = $1`, [id]);
        const before = await batchVersion(id);
        const res = await call('POST', `/api/batches/${id}/replay`, asOperator, body);
        expect(res.status, res.text.slice(0, 300)).to.equal(400);
        expect(res.body.error).to.match(/^(dryRun|all) must be true or false|^unknown field|^body must be a JSON object/);
        const { rows } = await db.query<{ status: string }>('SELECT status FROM batch_domain WHERE message_id = $1', [id]);
        expect(rows.map((r) => r.status), 'nothing re-opened').to.deep.equal(['failed', 'failed']);
        expect(await batchVersion(id)).to.equal(before);
        expect(await queueDepth(env!, 'jobs'), 'no job published').to.equal(1);
      });
    }

    it('when the right admin token replays for real, then a new job is published', async () => {
      await start();
      const { id } = await storeBatch(2);
      await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      const res = await request('POST', `/api/batches/${id}/replay`, { body: { reason: 'the platform is back' }, headers: asOperator });
      expect(res.status).to.equal(200);
      expect(res.body).to.include({ messageId: id, dryRun: false, published: true });
      await waitFor('a second job on the queue', async () => (await queueDepth(env!, 'jobs')) === 2, 5000);
    });

    it('when an unknown batch is replayed with the right token, then 404', async () => {
      await start();
      const res = await request('POST', `/api/batches/${messageId()}/replay`, { body: {}, headers: asOperator });
      expect(res.status).to.equal(404);
    });

    it('when the service runs with every dependency up, then /healthz is 200 and /readyz is 200 with postgres, redis and rabbitmq ok', async () => {
      await start();
      expect(await request('GET', '/healthz')).to.deep.equal({ status: 200, body: { status: 'ok' } });
      expect(await request('GET', '/readyz')).to.deep.equal({
        status: 200, body: { status: 'ready', checks: { postgres: 'ok', redis: 'ok', rabbitmq: 'ok' } },
      });
      const metrics = await fetch(`${url}/metrics`, { headers: asViewer });
      expect(await metrics.text()).to.include('pcp_callbacks_total');
    });

    it('when a route does not exist, then 404 names it', async () => {
      await start();
      expect(await request('GET', '/api/nothing')).to.deep.equal({ status: 404, body: { error: 'no route GET /api/nothing' } });
    });
  });

  describe('alarm list: bounded pages', function () {
    /**
     * Inserts alarms for one messageId; `at` lets several share one created_at (the id breaks the tie). They
     * are resolved ones: only one alarm per batch and type may be active, and the list shows history too.
     */
    async function insertAlarms(id: string, rows: { at: string; content: string; details?: unknown }[]): Promise<void> {
      for (const r of rows) {
        await db.query(
          `INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, details, created_at, state)
           VALUES ($1, $2, 'BATCH_FAILURES', $3, $4, $5, 'resolved')`,
          [`{"taskId":"${id}_exc","type":"DOMAIN_B_PIPE"}`, id, r.content, r.details === undefined ? null : JSON.stringify(r.details), r.at]);
      }
    }

    it('when 7 alarms (three sharing one microsecond) are read 3 at a time, then nextCursor walks them newest first with none skipped or repeated', async () => {
      await start();
      const id = messageId();
      const at = ['2026-11-24 08:00:00.000001+00', '2026-11-24 08:00:00.000002+00', '2026-11-24 08:00:00.000002+00',
        '2026-11-24 08:00:00.000002+00', '2026-11-24 08:00:00.000003+00', '2026-11-24 08:00:01+00', '2026-11-24 08:00:02+00'];
      await insertAlarms(id, at.map((t, i) => ({ at: t, content: `alarm ${i}` })));

      const seen: string[][] = [];
      let cursor: string | null = null;
      do {
        const res: Reply = await request('GET', `/api/alarms?messageId=${id}&state=resolved&limit=3${cursor ? `&before=${encodeURIComponent(cursor)}` : ''}`, { headers: asViewer });
        expect(res.status, JSON.stringify(res.body).slice(0, 300)).to.equal(200);
        seen.push((res.body.alarms as { content: string }[]).map((a) => a.content));
        cursor = res.body.nextCursor as string | null;
      } while (cursor && seen.length < 5);
      expect(seen).to.deep.equal([['alarm 6', 'alarm 5', 'alarm 4'], ['alarm 3', 'alarm 2', 'alarm 1'], ['alarm 0']]);
    });

    it('when no limit is given, then at most 50 alarms come back, and limit=200 is the most allowed', async () => {
      await start();
      const id = messageId();
      await db.query(
        `INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, state)
         SELECT $1, $2, 'BATCH_FAILURES', 'a' || g, 'resolved' FROM generate_series(1, 205) g`,
        [`{"taskId":"${id}_exc","type":"DOMAIN_B_PIPE"}`, id]);
      const page = await request('GET', `/api/alarms?messageId=${id}&state=resolved`, { headers: asViewer });
      expect((page.body.alarms as unknown[]).length).to.equal(50);
      expect(page.body.nextCursor).to.be.a('string');
      const max = await request('GET', `/api/alarms?messageId=${id}&state=resolved&limit=200`, { headers: asViewer });
      expect((max.body.alarms as unknown[]).length).to.equal(200);
    });

    it('when an alarm lists 500 failing domains and a long content, then the list shows 20 of them with failuresTotal 500 and a bounded content, and GET /api/alarms/:id returns it whole', async () => {
      await start();
      const id = messageId();
      const failures = Array.from({ length: 500 }, (_, i) => ({ domain: `d${i}.example.com`, status: 'failed', detail: `refused ${'x'.repeat(100)}` }));
      const content = `job parked: 500 of 500 domains failed: ${failures.map((f) => f.domain).join('; ')}`;
      await insertAlarms(id, [{ at: '2026-11-24 08:00:00+00', content, details: { counts: { failed: 500 }, failures } }]);

      const list = await request('GET', `/api/alarms?messageId=${id}&state=all`, { headers: asViewer });
      const [alarm] = list.body.alarms as { id: number; content: string; truncated: boolean; details: { counts: unknown; failures: unknown[]; failuresTotal: number } }[];
      expect(alarm!.details.failures).to.deep.equal(failures.slice(0, 20));
      expect(alarm!.details.failuresTotal).to.equal(500);
      expect(alarm!.details.counts).to.deep.equal({ failed: 500 });
      expect(alarm!.content.length).to.be.at.most(1001);
      expect(alarm!.content.startsWith(content.slice(0, 1000))).to.equal(true);
      expect(alarm!.truncated).to.equal(true);
      expect(JSON.stringify(list.body).length, 'the page stays small').to.be.below(10_000);

      const one = await request('GET', `/api/alarms/${alarm!.id}`, { headers: asViewer });
      expect(one.status).to.equal(200);
      const full = one.body.alarm as { content: string; details: { failures: unknown[] }; messageId: string };
      expect(full.messageId).to.equal(id);
      expect(full.content).to.equal(content);
      expect(full.details.failures).to.deep.equal(failures);
    });

    it('when an alarm id is unknown or malformed, then 404 and 400 with a reason', async () => {
      await start();
      expect(await request('GET', '/api/alarms/2147483647', { headers: asViewer })).to.deep.equal({ status: 404, body: { error: 'no alarm with id 2147483647' } });
      for (const bad of ['0', 'abc', '-1', '1.5', '2147483648', '01']) {
        const res = await request('GET', `/api/alarms/${bad}`, { headers: asViewer });
        expect(res.status, bad).to.equal(400);
        expect(res.body.error).to.match(/^alarm id must be/);
      }
    });

    const badQueries: [string, RegExp][] = [
      ['since=-271821-04-20', /^since must be/],
      ['since=275760-09-13', /^since must be/],
      ['since=1969-12-31', /^since must be/],
      ['since=10000-01-01', /^since must be/],
      ['since=2026-02-30', /^since must be/],
      ['since=yesterday', /^since must be/],
      ['since=2026-11-24&since=2026-11-25', /^since may be given once/],
      ['limit=0', /^limit must be/],
      ['limit=201', /^limit must be/],
      ['limit=abc', /^limit must be/],
      ['limit=1.5', /^limit must be/],
      ['limit=', /^limit must be/],
      ['before=garbage', /^before must be/],
      ['before=' + Buffer.from('2026-11-24T08:00:00.000000Z_x').toString('base64url'), /^before must be/],
      ['messageid=pm0', /^unknown query parameter "messageid"/],
    ];
    for (const [query, reason] of badQueries) {
      it(`when /api/alarms is asked with ${query}, then 400 with a reason`, async () => {
        await start();
        const res = await request('GET', `/api/alarms?${query}`, { headers: asViewer });
        expect(res.status, JSON.stringify(res.body).slice(0, 300)).to.equal(400);
        expect(res.body.error).to.match(reason);
      });
    }

    it('when since is a date or a date-time with an offset, then only alarms from then on come back', async () => {
      await start();
      const id = messageId();
      await insertAlarms(id, [{ at: '2026-11-23 23:59:59+00', content: 'old' }, { at: '2026-11-24 00:00:00+00', content: 'new' }]);
      for (const since of ['2026-11-24', '2026-11-24T08:00:00%2B08:00', '2026-11-24T00:00:00Z']) {
        const res = await request('GET', `/api/alarms?messageId=${id}&state=all&since=${since}`, { headers: asViewer });
        expect((res.body.alarms as { content: string }[]).map((a) => a.content), since).to.deep.equal(['new']);
      }
    });
  });

  describe('server limits', function () {
    /** Opens a socket and resolves once it is connected. */
    function connect(port: number): Promise<net.Socket> {
      return new Promise((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
        socket.once('error', reject);
      });
    }

    /** Resolves with what the server sent once it closes the socket, or rejects after `ms`. */
    function closedWithin(socket: net.Socket, ms: number): Promise<string> {
      return new Promise((resolve, reject) => {
        let got = '';
        const timer = setTimeout(() => reject(new Error(`the server kept the connection open for over ${ms} ms`)), ms);
        socket.on('data', (d: Buffer) => { got += d.toString('latin1'); });
        socket.once('close', () => { clearTimeout(timer); resolve(got); });
        socket.on('error', () => undefined);
      });
    }

    it('when a client sends headers and part of a body and then stalls, then it gets 408 and its connection is closed within HTTP_REQUEST_TIMEOUT_MS', async () => {
      await start({ HTTP_REQUEST_TIMEOUT_MS: '1000' });
      const socket = await connect(service!.port);
      cleanups.push(async () => { socket.destroy(); });
      const body = JSON.stringify(callbackBody(messageId(), ['a.example.com']));
      const started = Date.now();
      socket.write(`POST ${CALLBACK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Callback-Token: ${CALLBACK_TOKEN}\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`);
      // Timeout 1 s, checked every 250 ms: closed well before 3 s (it used to take 15 to 45 s).
      const reply = await closedWithin(socket, 3000);
      expect(Date.now() - started).to.be.at.least(900);
      expect(reply).to.match(/^HTTP\/1\.1 408/);
    });

    it('when HTTP_MAX_CONNECTIONS connections are open, then one more is closed at once and the open ones keep working', async () => {
      await start({ HTTP_MAX_CONNECTIONS: '2' });
      const port = service!.port;
      const agent = new http.Agent({ keepAlive: true, maxSockets: 2 });
      cleanups.push(async () => { agent.destroy(); });
      const get = () => new Promise<number>((resolve, reject) => {
        http.get({ port, host: '127.0.0.1', path: '/healthz', agent }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode!)); }).on('error', reject);
      });
      // Two requests at once: two kept-alive connections, both accepted.
      expect(await Promise.all([get(), get()])).to.deep.equal([200, 200]);

      const third = await connect(port);
      third.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      expect(await closedWithin(third, 2000), 'the third connection gets no answer').to.equal('');
      expect(await Promise.all([get(), get()]), 'the two open connections still serve').to.deep.equal([200, 200]);
    });
  });
});
