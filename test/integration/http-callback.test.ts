/**
 * The HTTP API in-process against the real PostgreSQL, Redis and RabbitMQ: every way a callback can be
 * refused (status, the vendor's reply shape, and nothing stored), the good path (rows and one job on the
 * queue), repeated callbacks, unknown reqTypes, PostgreSQL away, and the operator routes.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import pg from 'pg';
import { createContext } from '../../src/context.js';
import { CALLBACK_PATH, createApp } from '../../src/http/app.js';
import { startService } from '../../src/main.js';
import {
  CALLBACK_TOKEN, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, queueDepth, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';

type Json = Record<string, unknown>;
interface Reply { status: number; body: Json }
interface RowCounts { audit: number; batch: number; domains: number; alarms: number }

const ADMIN_TOKEN = 'test-admin-token';

describe('HTTP API', function () {
  let db: pg.Pool;
  let env: Record<string, string> | undefined;
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  let url: string;
  let cleanups: (() => Promise<void>)[] = [];

  async function start(overrides: Record<string, string> = {}): Promise<void> {
    env = testEnv({ ROLE: 'api', ...overrides });
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
    url = `http://127.0.0.1:${service.port}`;
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
        when: 'an item has no reqType', status: 400, echoId: true, message: 'data[0].reqType must be a non-empty string',
        request: (id) => ({ body: JSON.stringify({ messageId: id, data: [{ targetName: 'a.example.com' }] }) }),
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
      const { rows: batch } = await db.query<{ callbacks: number; publish_pending: boolean; published_at: Date | null }>(
        'SELECT callbacks, publish_pending, published_at FROM batch WHERE message_id = $1', [id]);
      expect(batch[0]!.callbacks).to.equal(1);
      expect(batch[0]!.publish_pending, 'the broker confirmed the job').to.equal(false);
      expect(batch[0]!.published_at).to.be.instanceOf(Date);

      await waitFor('one job on the jobs queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      await new Promise((r) => setTimeout(r, 700)); // two relay intervals: nothing publishes it again
      expect(await queueDepth(env!, 'jobs')).to.equal(1);
    });

    it('when a callback is refused and another accepted, then /metrics counts each by result', async () => {
      const id = messageId();
      expect((await send(JSON.stringify(callbackBody(id, ['a.example.com'])), { 'x-callback-token': 'nope' })).status).to.equal(401);
      expect((await send(JSON.stringify(callbackBody(id, ['a.example.com'])))).status).to.equal(200);
      const res = await fetch(`${url}/metrics`);
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

  it('when PostgreSQL is unreachable, then a callback gets 503 in the vendor shape asking to retry, and /readyz reports postgres down', async () => {
    env = testEnv({ ROLE: 'api' });
    const config = testConfig(env);
    const ctx = createContext(config, { logger: captureLogger('error').logger });
    const deadDb = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/x', connectionTimeoutMillis: 2000 });
    cleanups.push(async () => { await ctx.release(); await deadDb.end(); });
    const server = http.createServer(createApp({ ...ctx, db: deadDb }));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    const id = messageId();
    const res = await send(JSON.stringify(callbackBody(id, ['a.example.com'])));
    expectVendorError(res, 503, id, /retry/);
    expect(res.body.message).to.include('postgres');

    const ready = await request('GET', '/readyz');
    expect(ready.status).to.equal(503);
    expect((ready.body.checks as Json).postgres).to.match(/^down/);
    expect((await rowCounts(id)).forId.audit, 'nothing reached the real database').to.equal(0);
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
      const res = await request('GET', `/api/batches/${id}`);
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
      const notFound = await request('GET', `/api/batches/${unknown}`);
      expect(notFound).to.deep.equal({ status: 404, body: { error: `no batch with messageId ${unknown}` } });
      const bad = await request('GET', `/api/batches/${'a'.repeat(129)}`);
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
      const res = await request('GET', `/api/alarms?messageId=${ids[0]}`);
      expect(res.status).to.equal(200);
      const alarms = res.body.alarms as { messageId: string; alarmType: string; tag: string }[];
      expect(alarms.map((a) => [a.messageId, a.alarmType, a.tag])).to.deep.equal([
        [ids[0], 'UNSUPPORTED_REQ_TYPE', `{"taskId":"${ids[0]}_exc","type":"DOMAIN_B_PIPE"}`],
      ]);
      expect(Object.keys(res.body.counts as Json)).to.deep.equal([ids[0]]);
      expect(((res.body.counts as Json)[ids[0]!] as Json).unsupported).to.equal(1);

      const both = await request('GET', `/api/alarms?messageId=${ids[0]}&messageId=${ids[1]}`);
      expect((both.body.alarms as { messageId: string }[]).map((a) => a.messageId).sort()).to.deep.equal([...ids].sort());
      expect((await request('GET', '/api/alarms?messageId=bad%20id')).status).to.equal(400);
    });

    it('when ADMIN_TOKEN is empty, then POST /api/batches/:id/replay is 403', async () => {
      await start({ ADMIN_TOKEN: '' });
      const { id } = await storeBatch(1);
      const res = await request('POST', `/api/batches/${id}/replay`, { body: { dryRun: true }, headers: { authorization: 'Bearer ' } });
      expect(res.status).to.equal(403);
      expect(res.body.error).to.include('ADMIN_TOKEN');
    });

    it('when the admin bearer token is missing or wrong, then replay is 401 and nothing changes', async () => {
      await start({ ADMIN_TOKEN });
      const { id } = await storeBatch(2);
      await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      const before = await batchVersion(id);
      const attempts: Record<string, string>[] = [{}, { authorization: `Bearer ${ADMIN_TOKEN}x` }, { authorization: ADMIN_TOKEN }];
      for (const headers of attempts) {
        const res = await request('POST', `/api/batches/${id}/replay`, { body: {}, headers });
        expect(res.status, JSON.stringify(headers)).to.equal(401);
        expect(res.body.error).to.equal('missing or wrong admin bearer token');
      }
      expect(await batchVersion(id), 'batch not re-opened').to.equal(before);
      expect(await queueDepth(env!, 'jobs')).to.equal(1);
    });

    it('when the right admin token asks for a dry run, then the domains it would re-open are listed and no job is published', async () => {
      await start({ ADMIN_TOKEN });
      const { id, domains } = await storeBatch(3);
      await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      const before = await batchVersion(id);
      const res = await request('POST', `/api/batches/${id}/replay`, { body: { dryRun: true }, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      expect(res.status).to.equal(200);
      expect(res.body).to.deep.equal({
        messageId: id, dryRun: true, published: false,
        reopened: [...domains].sort().map((domain) => ({ domain, status: 'pending' })),
      });
      expect(await batchVersion(id), 'batch not re-opened').to.equal(before);
      await new Promise((r) => setTimeout(r, 300));
      expect(await queueDepth(env!, 'jobs')).to.equal(1);
    });

    it('when the right admin token replays for real, then a new job is published', async () => {
      await start({ ADMIN_TOKEN });
      const { id } = await storeBatch(2);
      await waitFor('the first job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      const res = await request('POST', `/api/batches/${id}/replay`, { body: {}, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      expect(res.status).to.equal(200);
      expect(res.body).to.include({ messageId: id, dryRun: false, published: true });
      await waitFor('a second job on the queue', async () => (await queueDepth(env!, 'jobs')) === 2, 5000);
    });

    it('when an unknown batch is replayed with the right token, then 404', async () => {
      await start({ ADMIN_TOKEN });
      const res = await request('POST', `/api/batches/${messageId()}/replay`, { body: {}, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      expect(res.status).to.equal(404);
    });

    it('when the service runs with every dependency up, then /healthz is 200 and /readyz is 200 with postgres, redis and rabbitmq ok', async () => {
      await start();
      expect(await request('GET', '/healthz')).to.deep.equal({ status: 200, body: { status: 'ok' } });
      expect(await request('GET', '/readyz')).to.deep.equal({
        status: 200, body: { status: 'ready', checks: { postgres: 'ok', redis: 'ok', rabbitmq: 'ok' } },
      });
      const metrics = await fetch(`${url}/metrics`);
      expect(await metrics.text()).to.include('pcp_callbacks_total');
    });

    it('when a route does not exist, then 404 names it', async () => {
      await start();
      expect(await request('GET', '/api/nothing')).to.deep.equal({ status: 404, body: { error: 'no route GET /api/nothing' } });
    });
  });
});
