/**
 * The OpenAPI document against the running service: every documented operation is called for real, for each
 * status it documents (successes and errors), and every answer's body is validated against the document's
 * schema for that route, status and content type (ajv, JSON Schema 2020-12, with formats). Every route the
 * app serves (outside /console) must be documented, and every documented status must have been seen.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import pg from 'pg';
import { Ajv2020 } from 'ajv/dist/2020.js';
import formats from 'ajv-formats';
import { createContext, type AppContext } from '../../src/context.js';
import { createApp } from '../../src/http/app.js';
import { openApiDocument } from '../../src/http/openapi.js';
import { startService } from '../../src/main.js';
import {
  CALLBACK_TOKEN, callbackBody, captureLogger, cleanupNames, messageId, rand, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';

const ADMIN_TOKEN = 'test-admin-token-openapi-check';
const VIEWER_TOKEN = 'test-viewer-token-openapi-check';
const asOperator = { authorization: `Bearer ${ADMIN_TOKEN}` };
const asViewer = { authorization: `Bearer ${VIEWER_TOKEN}` };
const METHODS = ['get', 'post', 'put', 'patch', 'delete'];

type Doc = typeof openApiDocument;
interface Call {
  method: string;
  path: string;
  headers?: Record<string, string>;
  /** A JSON value, or a string sent as is. */
  body?: unknown;
  status: number;
  base?: string;
}
interface Answer { status: number; contentType: string; text: string; body: unknown }

/** Path template of the document matching a concrete path ("/api/alarms/7" -> "/api/alarms/{id}"). */
function templateOf(doc: Doc, path: string): string | undefined {
  const bare = path.split('?')[0]!;
  return Object.keys(doc.paths).find((t) => new RegExp(`^${t.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(bare));
}

/** Validates answers against a document; records which (operation, status) were seen. */
function createChecker(doc: Doc) {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  // ajv-formats is CommonJS: under NodeNext its default import is module.exports, whose `default` is the plugin.
  formats.default(ajv);
  ajv.addSchema(doc as unknown as object, 'openapi');
  const seen = new Set<string>();
  const pointer = (...parts: string[]) => parts.map((p) => p.replaceAll('~', '~0').replaceAll('/', '~1')).join('/');

  function check(method: string, path: string, answer: Answer): void {
    const template = templateOf(doc, path);
    if (!template) throw new Error(`${method} ${path} is not documented`);
    const operation = (doc.paths as Record<string, Record<string, { responses: Record<string, { content?: Record<string, unknown> }> }>>)[template]![method.toLowerCase()];
    if (!operation) throw new Error(`${method} ${template} is not documented`);
    const key = String(answer.status) in operation.responses ? String(answer.status) : 'default';
    const response = operation.responses[key];
    if (!response) throw new Error(`${method} ${template} answered ${answer.status}, which is not documented (nor a default): ${answer.text.slice(0, 200)}`);
    seen.add(`${method.toLowerCase()} ${template} ${key}`);
    const content = response.content ?? {};
    if (!(answer.contentType in content)) throw new Error(`${method} ${template} ${answer.status}: content type ${answer.contentType} is not documented (${Object.keys(content).join(', ')})`);
    if (answer.contentType !== 'application/json') return;
    const validate = ajv.getSchema(`openapi#/${pointer('paths', template, method.toLowerCase(), 'responses', key, 'content', answer.contentType, 'schema')}`);
    if (!validate) throw new Error(`no schema for ${method} ${template} ${key}`);
    if (!validate(answer.body)) {
      throw new Error(`${method} ${path} ${answer.status} does not match its documented schema: ${ajv.errorsText(validate.errors, { separator: '; ' })}`);
    }
  }
  return { check, seen };
}

describe('OpenAPI document', function () {
  this.timeout(120_000);
  let db: pg.Pool;
  const envs: Record<string, string>[] = [];
  const stops: (() => Promise<void>)[] = [];

  let startedAt: Date;
  beforeEach(async () => {
    db = testDb();
    startedAt = (await db.query<{ now: Date }>('SELECT now()')).rows[0]!.now;
  });
  afterEach(async () => {
    for (const stop of stops.reverse()) await stop();
    stops.length = 0;
    // Leave no open work behind: a later test's relay would re-publish it as stalled, and its workers send it.
    await db.query(`UPDATE batch_domain SET status = 'failed', detail = 'closed at the end of a test', claimed_by = NULL, claimed_until = NULL
                    WHERE updated_at >= $1 AND status IN ('pending', 'in_progress', 'retryable')`, [startedAt]);
    for (const env of envs) await cleanupNames(env);
    envs.length = 0;
    await db.end();
  });

  async function start(overrides: Record<string, string> = {}): Promise<string> {
    const env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN, RELAY_INTERVAL_MS: '3600000', BULK_REPLAY_MAX_BATCHES: '3', ...overrides });
    envs.push(env);
    const config = testConfig(env);
    const service = await startService(config, createContext(config, { logger: captureLogger('error').logger }));
    stops.push(() => service.stop());
    return `http://127.0.0.1:${service.port}`;
  }

  /** The app over a PostgreSQL that is a closed port: the answers of a database outage. */
  async function serveWithDeadPostgres(): Promise<string> {
    const env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN });
    envs.push(env);
    const ctx = createContext(testConfig(env), { logger: captureLogger('error').logger });
    const deadDb = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/x', connectionTimeoutMillis: 2000 });
    const server = http.createServer(createApp({ ...ctx, db: deadDb } as AppContext));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    stops.push(async () => {
      await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); });
      await ctx.release();
      await deadDb.end();
    });
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function send(base: string, c: Call): Promise<Answer> {
    const res = await fetch(`${base}${c.path}`, {
      method: c.method,
      headers: { 'content-type': 'application/json', ...(c.headers ?? {}) },
      body: c.body === undefined ? undefined : typeof c.body === 'string' ? c.body : JSON.stringify(c.body),
    });
    const text = await res.text();
    const contentType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
    let body: unknown = text;
    if (contentType === 'application/json') body = JSON.parse(text);
    return { status: res.status, contentType, text, body };
  }

  /**
   * A batch that went through the callback route (so it has callbacks, one of them a repeat, and an
   * UNSUPPORTED_REQ_TYPE alarm), then as a worker would leave it: one domain succeeded, one failed, each
   * with an attempt. Every list in its report is non-empty, so each item schema is exercised.
   */
  async function seed(base: string): Promise<{ id: string; ko: string; alarm: number; acked: number; resolved: number; failedYear: number }> {
    const id = messageId();
    const [ok, ko] = [`ok-${id}.example.com`, `ko-${id}.example.com`];
    const body = { messageId: id, data: [...callbackBody(id, [ok, ko]).data, { reqType: 'SELF_DOMAIN_ADD', targetName: 'add.example.com' }] };
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${base}/api/pm/pipe/callback`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-callback-token': CALLBACK_TOKEN }, body: JSON.stringify(body) });
      expect(res.status).to.equal(200);
    }
    await db.query(
      `UPDATE batch_domain SET status = CASE domain WHEN $2 THEN 'succeeded' ELSE 'failed' END, attempts = 1, user_id_cdn = 'u-' || domain,
              detail = CASE domain WHEN $3 THEN 'user not found' END
       WHERE message_id = $1 AND domain IN ($2, $3)`, [id, ok, ko]);
    await db.query(
      `INSERT INTO domain_attempt (message_id, domain, attempted_at, duration_ms, instance_id, trigger, token_generation, http_status, outcome, reason)
       VALUES ($1, $2, now(), 420, 'host:1', 'first_run', 1, 200, 'succeeded', NULL),
              ($1, $3, now(), 390, 'host:1', 'first_run', 1, 200, 'failed', 'user not found')`, [id, ok, ko]);
    const alarm = async (state: string, type: string) => (await db.query<{ id: number }>(
      `INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, details, state) VALUES ($1, $2, $3, 'c', '{"failures":[1,2]}', $4) RETURNING id::int`,
      [JSON.stringify({ taskId: `${id}_exc`, type: 'DOMAIN_B_PIPE' }), id, type, state])).rows[0]!.id;
    // Four batches with failures in a year of their own, for the bulk replay (more than BULK_REPLAY_MAX_BATCHES=3).
    const failedYear = 2010 + Math.floor(Math.random() * 40);
    for (let i = 0; i < 4; i++) {
      const b = `oa${rand()}${i}`;
      await db.query(`INSERT INTO batch (message_id, publish_pending, created_at) VALUES ($1, false, $2)`, [b, `${failedYear}-06-0${i + 1}T00:00:00Z`]);
      await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status, detail) VALUES ($1, 'f.example.com', 'SELF_DOMAIN_DELETE', 'failed', 'timeout ${i}')`, [b]);
    }
    await db.query(`INSERT INTO cdn_domain (domain, user_id_cdn) VALUES ($1, 'u2')`, [ko]);
    return { id, ko, alarm: await alarm('open', 'BATCH_FAILURES'), acked: await alarm('acknowledged', 'JOB_PARKED'), resolved: await alarm('resolved', 'TOKEN_REJECTED'), failedYear };
  }

  it('when every documented operation is called for real (answers of success and of error), then each answer matches the schema of its route and status, every documented status is seen, and every served route is documented', async () => {
    const base = await start();
    const disabled = await start({ ADMIN_TOKEN: '', VIEWER_TOKEN: '' });
    const deadPg = await serveWithDeadPostgres();
    const served = await send(base, { method: 'GET', path: '/api/openapi.json', status: 200 });
    expect(served.body, 'the served document is the one in src/http/openapi.ts').to.deep.equal(JSON.parse(JSON.stringify(openApiDocument)));
    const doc = served.body as Doc;
    expect(doc.openapi).to.match(/^3\.1\./);
    const { check, seen } = createChecker(doc);
    const s = await seed(base);
    const year = s.failedYear;
    const bulkWindow = { hasFailures: true, since: `${year}-06-01`, until: `${year}-06-04` }; // three of the four

    const calls: Call[] = [
      // The vendor's callback and the probes.
      { method: 'POST', path: '/api/pm/pipe/callback', headers: { 'x-callback-token': CALLBACK_TOKEN }, body: callbackBody(messageId(), ['a.example.com']), status: 200 },
      { method: 'POST', path: '/api/pm/pipe/callback', headers: { 'x-callback-token': CALLBACK_TOKEN }, body: '{"messageId":', status: 400 },
      { method: 'POST', path: '/api/pm/pipe/callback', body: callbackBody(messageId(), ['a.example.com']), status: 401 },
      { method: 'POST', path: '/api/pm/pipe/callback', headers: { 'x-callback-token': CALLBACK_TOKEN }, body: JSON.stringify({ messageId: messageId(), data: [], pad: 'x'.repeat(2_000_000) }), status: 413 },
      { method: 'POST', path: '/api/pm/pipe/callback', headers: { 'x-callback-token': CALLBACK_TOKEN, 'content-type': 'text/plain' }, body: 'x', status: 415 },
      { method: 'POST', path: '/api/pm/pipe/callback', headers: { 'x-callback-token': CALLBACK_TOKEN }, body: callbackBody(messageId(), ['a.example.com']), status: 503, base: deadPg },
      { method: 'GET', path: '/healthz', status: 200 },
      { method: 'GET', path: '/readyz', status: 200 },
      { method: 'GET', path: '/readyz', status: 503, base: deadPg },
      { method: 'GET', path: '/metrics', headers: asViewer, status: 200 },
      { method: 'GET', path: '/metrics', status: 401 },
      { method: 'GET', path: '/metrics', status: 403, base: disabled },
      { method: 'GET', path: '/api/openapi.json', status: 200 },
      // Reads.
      { method: 'GET', path: '/api/overview', headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/batches?limit=2', headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/batches?hasFailures=true&open=false&limit=5', headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/batches?limit=0', headers: asViewer, status: 400 },
      { method: 'GET', path: `/api/batches/${s.id}`, headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/batches/bad%20id', headers: asViewer, status: 400 },
      { method: 'GET', path: `/api/batches/${messageId()}`, headers: asViewer, status: 404 },
      { method: 'GET', path: `/api/batches/${messageId()}`, headers: asViewer, status: 503, base: deadPg },
      { method: 'GET', path: `/api/batches/${s.id}/export?format=csv`, headers: asViewer, status: 200 },
      { method: 'GET', path: `/api/batches/${s.id}/export?format=json`, headers: asViewer, status: 200 },
      { method: 'GET', path: `/api/batches/${s.id}/export?format=xls`, headers: asViewer, status: 400 },
      { method: 'GET', path: `/api/batches/${messageId()}/export`, headers: asViewer, status: 404 },
      { method: 'GET', path: '/api/token', headers: asViewer, status: 200 },
      { method: 'GET', path: `/api/domains/${s.ko}`, headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/domains/not_a_domain', headers: asViewer, status: 400 },
      { method: 'GET', path: `/api/domains/nowhere.${rand()}.example.com`, headers: asViewer, status: 404 },
      { method: 'GET', path: `/api/alarms?messageId=${s.id}&state=all`, headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/alarms?state=closed', headers: asViewer, status: 400 },
      { method: 'GET', path: `/api/alarms/${s.alarm}`, headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/alarms/0', headers: asViewer, status: 400 },
      { method: 'GET', path: '/api/alarms/2147483647', headers: asViewer, status: 404 },
      // Changes (their audit rows feed the reads of /api/audit below).
      { method: 'POST', path: `/api/batches/${s.id}/replay`, headers: asOperator, body: { dryRun: true }, status: 200 },
      { method: 'POST', path: `/api/batches/${s.id}/replay`, headers: asOperator, body: { domains: [s.ko], reason: 'openapi check' }, status: 200 },
      { method: 'POST', path: `/api/batches/${s.id}/replay`, headers: asOperator, body: { domains: [`ok-${s.id}.example.com`], reason: 'x' }, status: 400 },
      { method: 'POST', path: `/api/batches/${messageId()}/replay`, headers: asOperator, body: { reason: 'x' }, status: 404 },
      { method: 'POST', path: `/api/alarms/${s.alarm}/acknowledge`, headers: asOperator, body: { note: 'on it' }, status: 200 },
      { method: 'POST', path: `/api/alarms/${s.alarm}/acknowledge`, headers: asOperator, body: {}, status: 409 },
      { method: 'POST', path: `/api/alarms/${s.alarm}/acknowledge`, headers: asOperator, body: { note: 7 }, status: 400 },
      { method: 'POST', path: '/api/alarms/2147483647/acknowledge', headers: asOperator, body: {}, status: 404 },
      { method: 'POST', path: `/api/alarms/${s.acked}/resolve`, headers: asOperator, body: { note: 'fixed' }, status: 200 },
      { method: 'POST', path: `/api/alarms/${s.resolved}/resolve`, headers: asOperator, body: { note: 'again' }, status: 409 },
      { method: 'POST', path: `/api/alarms/${s.alarm}/resolve`, headers: asOperator, body: {}, status: 400 },
      { method: 'POST', path: '/api/alarms/2147483647/resolve', headers: asOperator, body: { note: 'x' }, status: 404 },
      { method: 'POST', path: '/api/replays/bulk', headers: asOperator, body: { filter: bulkWindow, dryRun: true }, status: 200 },
      { method: 'POST', path: '/api/replays/bulk', headers: asOperator, body: { filter: { ...bulkWindow, until: `${year}-06-05` }, reason: 'too many' }, status: 400 },
      { method: 'POST', path: '/api/replays/bulk', headers: asOperator, body: { filter: bulkWindow, reason: 'openapi check' }, status: 202 },
      { method: 'GET', path: '/api/replays/bulk?limit=1', headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/replays/bulk?limit=x', headers: asViewer, status: 400 },
      { method: 'GET', path: '/api/replays/bulk/0', headers: asViewer, status: 400 },
      { method: 'GET', path: '/api/replays/bulk/2147483647', headers: asViewer, status: 404 },
      { method: 'POST', path: '/api/replays/bulk/0/cancel', headers: asOperator, body: {}, status: 400 },
      { method: 'POST', path: '/api/replays/bulk/2147483647/cancel', headers: asOperator, body: {}, status: 404 },
      { method: 'GET', path: '/api/audit?limit=3', headers: asViewer, status: 200 },
      { method: 'GET', path: '/api/audit?action=nope', headers: asViewer, status: 400 },
    ];
    for (const c of calls) {
      const answer = await send(c.base ?? base, c);
      expect(answer.status, `${c.method} ${c.path}: ${answer.text.slice(0, 300)}`).to.equal(c.status);
      check(c.method, c.path, answer);
    }

    // The bulk replay started above: its progress, then a cancel of a finished one (409) and a running one (200).
    const bulkId = Number((await db.query<{ id: number }>(`SELECT max(id)::int AS id FROM bulk_replay WHERE reason = 'openapi check'`)).rows[0]!.id);
    await waitFor('the bulk replay to finish', async () => (await db.query<{ status: string }>('SELECT status FROM bulk_replay WHERE id = $1', [bulkId])).rows[0]!.status === 'done', 15_000);
    for (const c of [
      { method: 'GET', path: `/api/replays/bulk/${bulkId}`, headers: asViewer, status: 200 },
      { method: 'POST', path: `/api/replays/bulk/${bulkId}/cancel`, headers: asOperator, body: {}, status: 409 },
    ]) {
      const answer = await send(base, c);
      expect(answer.status, `${c.method} ${c.path}: ${answer.text.slice(0, 300)}`).to.equal(c.status);
      check(c.method, c.path, answer);
    }
    const running = (await db.query<{ id: number }>(
      `INSERT INTO bulk_replay (filter, reason, created_by, message_ids, total, owner)
       VALUES ('{"hasFailures":true,"since":null,"until":null,"detailMatches":null}', 'r', 'someone', '{}', 0, 'elsewhere') RETURNING id::int`)).rows[0]!.id;
    const cancel = await send(base, { method: 'POST', path: `/api/replays/bulk/${running}/cancel`, headers: asOperator, body: { reason: 'not needed' }, status: 200 });
    expect(cancel.status).to.equal(200);
    check('POST', `/api/replays/bulk/${running}/cancel`, cancel);

    // Every guarded operation: 401 without a credential, 403 with the API switched off (and for a viewer, a change).
    for (const [template, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item as Record<string, { responses: Record<string, unknown> }>)) {
        if (!METHODS.includes(method) || !('401' in op.responses) || template === '/api/pm/pipe/callback') continue;
        const path = template.replace('{messageId}', s.id).replace('{id}', String(s.alarm)).replace('{domain}', s.ko);
        const body = method === 'get' ? undefined : {};
        for (const [where, headers, status] of [[base, {}, 401], [disabled, asOperator, 403], ...(method === 'post' ? [[base, asViewer, 403]] : [])] as [string, Record<string, string>, number][]) {
          const answer = await send(where, { method: method.toUpperCase(), path, headers, body, status });
          expect(answer.status, `${method} ${path} ${JSON.stringify(headers)}`).to.equal(status);
          check(method, path, answer);
        }
      }
    }

    // Every documented status was answered for real at least once (default is the catch-all of rarer ones).
    const documented = Object.entries(doc.paths).flatMap(([template, item]) => Object.entries(item as Record<string, { responses: Record<string, unknown> }>)
      .filter(([method]) => METHODS.includes(method))
      .flatMap(([method, op]) => Object.keys(op.responses).filter((k) => k !== 'default').map((k) => `${method} ${template} ${k}`)));
    expect(documented.filter((k) => !seen.has(k)), 'documented but never answered').to.deep.equal([]);

    // Every route the app serves is documented (the console's HTML pages excepted).
    const env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN });
    envs.push(env);
    const ctx = createContext(testConfig(env), { logger: captureLogger('error').logger });
    stops.push(() => ctx.release());
    const app = createApp(ctx) as unknown as { router: { stack: { route?: { path: string; methods: Record<string, boolean> } }[] } };
    const routes = app.router.stack.flatMap((l) => (l.route ? Object.keys(l.route.methods).map((m) => [m, l.route!.path] as const) : []))
      .filter(([, p]) => !p.startsWith('/console'))
      .map(([m, p]) => `${m} ${p.replace(/:([A-Za-z]+)/g, '{$1}')}`);
    const documentedOps = Object.entries(doc.paths).flatMap(([t, item]) => Object.keys(item).filter((m) => METHODS.includes(m)).map((m) => `${m} ${t}`));
    expect(routes.filter((r) => !documentedOps.includes(r)), 'served but not documented').to.deep.equal([]);
    expect(documentedOps.filter((r) => !routes.includes(r)), 'documented but not served').to.deep.equal([]);
  });

  it('when an answer does not match its documented shape, then the check fails naming the route and the field', async () => {
    const base = await start();
    const answer = await send(base, { method: 'GET', path: '/api/overview', headers: asViewer, status: 200 });
    expect(answer.status).to.equal(200);
    const { check } = createChecker(JSON.parse(JSON.stringify(openApiDocument)) as Doc);
    check('GET', '/api/overview', answer); // the real document accepts it

    // The same answer against a document that says readAt is a number, and one that misses a field.
    const wrongType = JSON.parse(JSON.stringify(openApiDocument)) as { components: { schemas: Record<string, { properties: Record<string, unknown>; required: string[] }> } };
    wrongType.components.schemas.Overview!.properties.readAt = { type: 'integer' };
    expect(() => createChecker(wrongType as unknown as Doc).check('GET', '/api/overview', answer)).to.throw(/GET \/api\/overview 200 does not match its documented schema: data\/readAt must be integer/);
    const missing = JSON.parse(JSON.stringify(openApiDocument)) as typeof wrongType;
    delete missing.components.schemas.Overview!.properties.ledgerError;
    missing.components.schemas.Overview!.required = missing.components.schemas.Overview!.required.filter((k) => k !== 'ledgerError');
    expect(() => createChecker(missing as unknown as Doc).check('GET', '/api/overview', answer)).to.throw(/must NOT have additional properties/);
    // And an answer with a status the route does not document.
    expect(() => check('GET', '/healthz', { ...answer, status: 418 })).to.throw(/answered 418, which is not documented/);
  });
});
