/**
 * The operators' JSON API in-process against the real PostgreSQL, Redis and RabbitMQ: the overview, the
 * batch list (and its plan on 100,000 batches), the batch report, replay by domain with its preview and
 * audit, exports, the alarm states and steps, the audit trail, bulk replays (progress, bound, cancel between
 * two batches, a run whose process died), the roles, and `npm run replay --reason` as a real child process.
 */
import { execFile } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import pg from 'pg';
import { createContext } from '../../src/context.js';
import { startService } from '../../src/main.js';
import { findBatches } from '../../src/ops/reports.js';
import type { Queryable } from '../../src/store/db.js';
import {
  CALLBACK_TOKEN, RABBITMQ_URL, callbackBody, captureLogger, cleanupNames, messageId, queueDepth, rand, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';
import { planNodes } from '../helpers/plan.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const ADMIN_TOKEN = 'test-admin-token-operator-api';
const VIEWER_TOKEN = 'test-viewer-token-operator-api';
const asOperator = { authorization: `Bearer ${ADMIN_TOKEN}` };
const asViewer = { authorization: `Bearer ${VIEWER_TOKEN}` };
const REASON = 'the customer asked again; the platform is fixed';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- answers are JSON checked field by field below
type Body = any;
interface Reply { status: number; body: Body; text: string; headers: Headers }

interface SeedDomain {
  domain: string;
  status: string;
  detail?: string | null;
  reqType?: string;
  userIdCdn?: string | null;
  /** in_progress: its lease ends this many seconds from now (negative: it ran out). */
  leaseSeconds?: number;
}

describe('operator API', function () {
  this.timeout(120_000);
  let db: pg.Pool;
  let env: Record<string, string> | undefined;
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  let url: string;
  let cleanups: (() => Promise<void>)[] = [];

  async function start(overrides: Record<string, string> = {}): Promise<void> {
    // ROLE=api: no worker moves the domains the tests set up; a relay that never ticks leaves publish flags alone.
    env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN, RELAY_INTERVAL_MS: '3600000', ...overrides });
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
    url = `http://127.0.0.1:${service.port}`;
  }

  let startedAt: Date;
  beforeEach(async () => {
    db = testDb();
    startedAt = (await db.query<{ now: Date }>('SELECT now()')).rows[0]!.now;
  });

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    // Leave no open work behind: a later test's relay would re-publish it as stalled, and its workers send it.
    await db.query(`UPDATE batch_domain SET status = 'failed', detail = 'closed at the end of a test', claimed_by = NULL, claimed_until = NULL
                    WHERE updated_at >= $1 AND status IN ('pending', 'in_progress', 'retryable')`, [startedAt]);
    for (const c of cleanups.reverse()) await c();
    cleanups = [];
    if (env) await cleanupNames(env);
    env = undefined;
    await db.end();
  });

  async function api(method: string, path: string, opts: { body?: unknown; as?: Record<string, string> } = {}): Promise<Reply> {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(opts.as ?? asOperator) },
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    const text = await res.text();
    let body: Body = null;
    try { body = JSON.parse(text); } catch { /* CSV */ }
    return { status: res.status, body, text, headers: res.headers };
  }

  /** A batch as a worker would have left it (publish flag cleared), created at `createdAt` (default now). */
  async function seedBatch(id: string, domains: SeedDomain[], createdAt?: string): Promise<void> {
    await db.query(`INSERT INTO batch (message_id, publish_pending, created_at) VALUES ($1, false, coalesce($2::timestamptz, now()))`, [id, createdAt ?? null]);
    for (const d of domains) {
      await db.query(
        `INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, detail, user_id_cdn, claimed_by, claimed_until, created_at)
         VALUES ($1, $2, $3, $4, 1, $5, $6, $7, now() + make_interval(secs => $8::double precision), coalesce($9::timestamptz, now()))`,
        [id, d.domain, d.reqType ?? (d.status === 'unsupported' ? 'SELF_DOMAIN_ADD' : 'SELF_DOMAIN_DELETE'), d.status, d.detail ?? null,
          d.userIdCdn ?? null, d.leaseSeconds === undefined ? null : 'other-worker', d.leaseSeconds ?? null, createdAt ?? null]);
    }
  }

  async function statusesOf(id: string): Promise<Record<string, string>> {
    const { rows } = await db.query<{ domain: string; status: string }>('SELECT domain, status FROM batch_domain WHERE message_id = $1', [id]);
    return Object.fromEntries(rows.map((r) => [r.domain, r.status]));
  }

  async function auditOf(id: string): Promise<{ action: string; actor: string; role: string | null; via: string | null; reason: string | null; target: Body; changes: Body }[]> {
    const { rows } = await db.query(
      `SELECT action, actor, role, via, reason, target, changes FROM operator_audit WHERE target->>'messageId' = $1 ORDER BY id`, [id]);
    return rows;
  }

  async function insertAlarm(id: string | null, type: string, state: string, content = `${type} ${state}`): Promise<number> {
    const { rows } = await db.query<{ id: number }>(
      `INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, state) VALUES ($1, $2, $3, $4, $5) RETURNING id::int`,
      [JSON.stringify({ taskId: `${id}_exc`, type: 'DOMAIN_B_PIPE' }), id, type, content, state]);
    return rows[0]!.id;
  }

  describe('overview', function () {
    it('when every dependency is up, then GET /api/overview reports readiness, the token state, jobs, each retry tier and parked, the publish backlog with its oldest age, and the open and acknowledged alarm counts', async () => {
      await start();
      const waiting = messageId();
      await db.query(`INSERT INTO batch (message_id, publish_pending, updated_at) VALUES ($1, true, now() - interval '1 day')`, [waiting]);
      cleanups.push(async () => { await db.query('DELETE FROM batch WHERE message_id = $1', [waiting]); });
      const [a, b] = [messageId(), messageId()];
      await insertAlarm(a, 'BATCH_FAILURES', 'open');
      await insertAlarm(b, 'BATCH_FAILURES', 'acknowledged');
      await service!.ctx.broker.publishJob({ messageId: messageId(), attempt: 0 });
      await waitFor('one job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);

      const expected = async () => (await db.query<{ waiting: number; open: number; acknowledged: number }>(
        `SELECT (SELECT count(*)::int FROM batch WHERE publish_pending) AS waiting,
                (SELECT count(*)::int FROM sys_task_process_alarm WHERE state = 'open') AS open,
                (SELECT count(*)::int FROM sys_task_process_alarm WHERE state = 'acknowledged') AS acknowledged`)).rows[0]!;
      const before = await expected();
      const res = await api('GET', '/api/overview', { as: asViewer });
      expect(res.status, res.text.slice(0, 300)).to.equal(200);
      expect(await expected(), 'nothing moved meanwhile').to.deep.equal(before);
      expect(res.body.readiness).to.deep.equal({ postgres: 'ok', redis: 'ok', rabbitmq: 'ok' });
      expect(res.body.tokenError).to.equal(null);
      expect(res.body.token).to.include({ generation: null, fetchesToday: 0 });
      expect(res.body.queuesError).to.equal(null);
      expect(res.body.queues).to.deep.equal({
        jobs: 1, parked: 0, retryTiers: [{ delayMs: 300, messages: 0 }, { delayMs: 600, messages: 0 }, { delayMs: 1000, messages: 0 }],
      });
      expect(res.body.publish.waiting).to.equal(before.waiting).and.to.be.at.least(1);
      expect(res.body.publish.oldestAgeSeconds).to.be.at.least(86_390);
      expect(res.body.alarms).to.deep.equal({ open: before.open, acknowledged: before.acknowledged });
      expect(before.open).to.be.at.least(1);
      expect(res.body.ledgerError).to.equal(null);
    });

    it('when Redis and RabbitMQ are down, then the overview still answers 200: token and queues null with a reason, readiness down for both, the ledger parts read', async () => {
      await start({ REDIS_URL: 'redis://127.0.0.1:1', RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:1' });
      const res = await api('GET', '/api/overview', { as: asViewer });
      expect(res.status, res.text.slice(0, 300)).to.equal(200);
      expect(res.body.readiness).to.deep.equal({ postgres: 'ok', redis: 'down', rabbitmq: 'down' });
      expect(res.body.token).to.equal(null);
      expect(res.body.tokenError).to.match(/token state could not be read from Redis/);
      expect(res.body.queues).to.equal(null);
      expect(res.body.queuesError).to.equal('RabbitMQ is not connected');
      expect(res.body.publish.waiting).to.be.a('number');
      expect(res.text, 'no address in the answer').to.not.match(/127\.0\.0\.1|ECONNREFUSED/);
    });
  });

  describe('batch list', function () {
    it('when batches are listed with hasFailures, open, since and until, then only matching ones come back newest first with counts, and nextCursor walks every page without skipping or repeating (ties on created_at too)', async () => {
      await start();
      const tag = rand();
      const ids = Array.from({ length: 7 }, (_, i) => `list${tag}${i}`);
      const at = ['2001-03-01T00:00:01Z', '2001-03-01T00:00:02Z', '2001-03-01T00:00:02Z', '2001-03-01T00:00:02Z', '2001-03-01T00:00:03Z',
        '2001-03-01T00:00:04Z', '2001-03-01T00:00:05Z'];
      const shapes: SeedDomain[][] = [
        [{ domain: 'a.example.com', status: 'failed' }, { domain: 'b.example.com', status: 'succeeded' }],
        [{ domain: 'a.example.com', status: 'pending' }],
        [{ domain: 'a.example.com', status: 'succeeded' }],
        [{ domain: 'a.example.com', status: 'unknown_domain' }, { domain: 'b.example.com', status: 'retryable' }],
        [{ domain: 'a.example.com', status: 'awaiting_pipeline' }],
        [{ domain: 'a.example.com', status: 'succeeded' }, { domain: 'b.example.com', status: 'unsupported' }],
        [{ domain: 'a.example.com', status: 'in_progress', leaseSeconds: 60 }],
      ];
      for (const [i, id] of ids.entries()) await seedBatch(id, shapes[i]!, at[i]);
      // Newest first; ties on created_at broken by messageId, descending.
      const newestFirst = ids.map((id, i) => ({ id, at: at[i]! })).sort((x, y) => y.at.localeCompare(x.at) || y.id.localeCompare(x.id)).map((x) => x.id);
      const window = 'since=2001-03-01&until=2001-03-02';

      const seen: string[][] = [];
      let cursor: string | null = null;
      do {
        const res: Reply = await api('GET', `/api/batches?${window}&limit=3${cursor ? `&before=${cursor}` : ''}`, { as: asViewer });
        expect(res.status, res.text.slice(0, 300)).to.equal(200);
        seen.push(res.body.batches.map((b: Body) => b.messageId));
        cursor = res.body.nextCursor;
      } while (cursor && seen.length < 5);
      expect(seen).to.deep.equal([newestFirst.slice(0, 3), newestFirst.slice(3, 6), newestFirst.slice(6)]);

      const list = async (q: string) => (await api('GET', `/api/batches?${window}&${q}`, { as: asViewer })).body.batches.map((b: Body) => b.messageId);
      expect(await list('hasFailures=true')).to.deep.equal([ids[3], ids[0]]);
      expect(await list('hasFailures=false')).to.have.members([ids[1], ids[2], ids[4], ids[5], ids[6]]);
      expect(await list('open=true')).to.deep.equal([ids[6], ids[4], ids[3], ids[1]]);
      expect(await list('open=false&hasFailures=false')).to.have.members([ids[2], ids[5]]);
      expect(await list('hasFailures=true&open=true')).to.deep.equal([ids[3]]);
      const narrow = await api('GET', '/api/batches?since=2001-03-01T00:00:02Z&until=2001-03-01T00:00:03Z', { as: asViewer });
      expect(narrow.body.batches.map((b: Body) => b.messageId)).to.have.members([ids[1], ids[2], ids[3]]);

      const one = (await api('GET', `/api/batches?${window}&hasFailures=true&open=true`, { as: asViewer })).body.batches[0];
      expect(one).to.include({ messageId: ids[3], hasFailures: true, open: true, total: 2, createdAt: '2001-03-01T00:00:02.000Z' });
      expect(one.counts).to.include({ unknown_domain: 1, retryable: 1, failed: 0 });

      for (const [q, reason] of [['hasFailures=yes', /^hasFailures must be true or false/], ['limit=0', /^limit must be/], ['limit=201', /^limit must be/],
        ['before=garbage', /^before must be a nextCursor/], ['since=2001-02-30', /^since must be a date/], ['until=tomorrow', /^until must be a date/],
        ['hasfailures=true', /^unknown query parameter "hasfailures"/], ['open=true&open=false', /^open may be given once/]] as const) {
        const res = await api('GET', `/api/batches?${q}`, { as: asViewer });
        expect(res.status, q).to.equal(400);
        expect(res.body.error, q).to.match(reason);
      }
    });

    it('when the ledger holds 100,000 batches, then every page of the list is read through indexes (batch_created or the primary key, and the partial indexes), never a Seq Scan of batch or batch_domain', async () => {
      const prefix = `plan${rand()}`;
      cleanups.push(async () => {
        await db.query('DELETE FROM batch_domain WHERE message_id LIKE $1', [`${prefix}%`]);
        await db.query('DELETE FROM batch WHERE message_id LIKE $1', [`${prefix}%`]);
      });
      await db.query(
        `INSERT INTO batch (message_id, created_at, updated_at, publish_pending)
         SELECT $1 || g, timestamptz '2030-01-01' + g * interval '1 second', now(), false FROM generate_series(1, 100000) g`, [prefix]);
      // Some of them failed, a few are still open, most succeeded: what a ledger looks like after a while.
      await db.query(
        `INSERT INTO batch_domain (message_id, domain, req_type, status)
         SELECT $1 || g, 'd.example.com', 'SELF_DOMAIN_DELETE',
                CASE WHEN g % 100 = 0 THEN 'failed' WHEN g % 250 = 1 THEN 'pending' ELSE 'succeeded' END
         FROM generate_series(1, 100000) g`, [prefix]);
      // As autovacuum leaves a table it has visited: statistics, and the visibility map index-only scans rely on.
      await db.query('VACUUM ANALYZE batch');
      await db.query('VACUUM ANALYZE batch_domain');

      // The very statement the list runs, explained instead of executed.
      const explaining = { query: (text: string, params: unknown[]) => db.query(`EXPLAIN (FORMAT JSON) ${text}`, params) } as unknown as Queryable;
      const cursor = { createdAt: '2030-01-01T12:00:00.000000Z', messageId: `${prefix}43200` };
      const pages: [string, Parameters<typeof findBatches>[1]][] = [
        ['first page', { limit: 51 }],
        ['a later page', { limit: 51, before: cursor }],
        ['hasFailures=true', { limit: 51, hasFailures: true }],
        ['hasFailures=false', { limit: 51, hasFailures: false, before: cursor }],
        ['open=true', { limit: 51, open: true }],
        ['open=false', { limit: 51, open: false }],
        ['since and until', { limit: 51, since: new Date('2030-01-01T01:00:00Z'), until: new Date('2030-01-01T02:00:00Z'), hasFailures: true }],
      ];
      for (const [what, filter] of pages) {
        const [row] = await findBatches(explaining, filter) as unknown as { 'QUERY PLAN': unknown }[];
        const nodes = planNodes(row!['QUERY PLAN']);
        const reads = nodes.filter((n) => n['Relation Name'] === 'batch' || n['Relation Name'] === 'batch_domain');
        expect(reads.filter((n) => n['Node Type'] === 'Seq Scan').map((n) => n['Relation Name']), `${what}: ${JSON.stringify(reads.map((n) => [n['Node Type'], n['Index Name']]))}`).to.deep.equal([]);
        const batchReads = reads.filter((n) => n['Relation Name'] === 'batch').map((n) => n['Index Name']);
        expect(batchReads.length, what).to.be.above(0);
        expect(batchReads.every((i) => i === 'batch_created' || i === 'batch_pkey'), `${what}: ${String(batchReads)}`).to.equal(true);
        // A filter that is true drives from its partial index; a walk of batch_created serves the others.
        const driven = filter.open ? 'batch_domain_unfinished' : filter.hasFailures ? 'batch_domain_failing' : null;
        if (driven) expect(reads.map((n) => n['Index Name']), what).to.include(driven);
        else expect(batchReads, what).to.include('batch_created');
      }
    });
  });

  describe('batch report', function () {
    it('when a messageId is called back twice, then GET /api/batches/:id lists both callbacks in order (the second marked repeat) and the batch\'s alarms in every state', async () => {
      await start();
      const id = messageId();
      const first = callbackBody(id, ['a.example.com', 'b.example.com']);
      const second = { messageId: id, data: [...callbackBody(id, ['a.example.com', 'c.example.com']).data, { reqType: 'SELF_DOMAIN_ADD', targetName: 'x.example.com' }] };
      for (const body of [first, second]) {
        const res = await fetch(`${url}/api/pm/pipe/callback`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-callback-token': CALLBACK_TOKEN }, body: JSON.stringify(body) });
        expect(res.status).to.equal(200);
      }
      const resolved = await insertAlarm(id, 'JOB_PARKED', 'resolved');

      const res = await api('GET', `/api/batches/${id}`, { as: asViewer });
      expect(res.status).to.equal(200);
      expect(res.body.callbacks.map((c: Body) => [c.itemCount, c.repeat, c.remoteAddr])).to.deep.equal([[2, false, '127.0.0.1'], [3, true, '127.0.0.1']]);
      expect(res.body.callbacks.map((c: Body) => c.body)).to.deep.equal([first, second]);
      expect(res.body.callbacks[0].id).to.be.below(res.body.callbacks[1].id);
      expect(res.body.alarms.map((a: Body) => [a.alarmType, a.state])).to.have.deep.members([['UNSUPPORTED_REQ_TYPE', 'open'], ['JOB_PARKED', 'resolved']]);
      expect(res.body.alarms.find((a: Body) => a.id === resolved).messageId).to.equal(id);
      expect(res.body.domains.map((d: Body) => d.domain)).to.deep.equal(['a.example.com', 'b.example.com', 'c.example.com', 'x.example.com']);
    });
  });

  describe('replay from a batch', function () {
    it('when a replay names domains, then only those are re-opened, the job is published, and one audit row records who, why and each domain\'s from and to', async () => {
      await start();
      const id = messageId();
      await seedBatch(id, [
        { domain: 'a.example.com', status: 'failed', detail: 'user not found' }, { domain: 'b.example.com', status: 'failed' },
        { domain: 'c.example.com', status: 'retryable' }, { domain: 'd.example.com', status: 'succeeded' },
      ]);
      const res = await api('POST', `/api/batches/${id}/replay`, { body: { domains: ['A.Example.com.', 'c.example.com'], reason: REASON } });
      expect(res.status, res.text.slice(0, 300)).to.equal(200);
      expect(res.body).to.include({ messageId: id, dryRun: false, published: true });
      expect(res.body.changes).to.deep.equal([
        { domain: 'a.example.com', from: 'failed', to: 'pending' }, { domain: 'c.example.com', from: 'retryable', to: 'pending' },
      ]);
      expect(await statusesOf(id)).to.deep.equal({ 'a.example.com': 'pending', 'b.example.com': 'failed', 'c.example.com': 'pending', 'd.example.com': 'succeeded' });
      await waitFor('the replay\'s job on the queue', async () => (await queueDepth(env!, 'jobs')) === 1, 5000);
      expect(await auditOf(id)).to.deep.equal([{
        action: 'replay', actor: 'admin-token', role: 'operator', via: 'bearer', reason: REASON, target: { messageId: id },
        changes: [{ domain: 'a.example.com', from: 'failed', to: 'pending' }, { domain: 'c.example.com', from: 'retryable', to: 'pending' }],
      }]);
    });

    it('when a replay names a domain of another batch, or ones that can never be re-opened, then 400 names them and why, and nothing is changed, published or audited', async () => {
      await start();
      const id = messageId();
      await seedBatch(id, [
        { domain: 'done.example.com', status: 'succeeded' }, { domain: 'add.example.com', status: 'unsupported' },
        { domain: 'wait.example.com', status: 'awaiting_pipeline' }, { domain: 'ko.example.com', status: 'failed' },
      ]);
      const before = await statusesOf(id);
      const other = await api('POST', `/api/batches/${id}/replay`, { body: { domains: ['ko.example.com', 'elsewhere.example.com'], reason: REASON } });
      expect(other.status).to.equal(400);
      expect(other.body.error).to.equal(`elsewhere.example.com is not in batch ${id}; nothing was changed`);
      const never = await api('POST', `/api/batches/${id}/replay`, {
        body: { domains: ['done.example.com', 'add.example.com', 'wait.example.com', 'ko.example.com'], reason: REASON },
      });
      expect(never.status).to.equal(400);
      expect(never.body.error).to.match(/^cannot re-open /)
        .and.include('done.example.com (succeeded: already deleted at the security platform')
        .and.include('add.example.com (unsupported: reqType SELF_DOMAIN_ADD is not a deletion')
        .and.include('wait.example.com (awaiting_pipeline: the pipeline reports it unfinished')
        .and.not.include('ko.example.com');
      const preview = await api('POST', `/api/batches/${id}/replay`, { body: { domains: ['done.example.com'], dryRun: true } });
      expect(preview.status, 'a preview refuses the same').to.equal(400);
      const notAName = await api('POST', `/api/batches/${id}/replay`, { body: { domains: ['not a domain'], reason: REASON } });
      expect(notAName.body.error).to.equal('"not a domain" is not a valid domain name');
      expect(await statusesOf(id)).to.deep.equal(before);
      expect(await auditOf(id)).to.deep.equal([]);
      expect(await queueDepth(env!, 'jobs')).to.equal(0);
    });

    it('when a real replay has no reason, a blank one, one with a control character or one over 500 characters, then 400 and nothing changes; a dry run needs none', async () => {
      await start();
      const id = messageId();
      await seedBatch(id, [{ domain: 'ko.example.com', status: 'failed' }]);
      for (const body of [{}, { reason: '  ' }, { reason: 'line one\nline two' }, { reason: 'x\u001b[2J' }, { reason: 'x'.repeat(501) }, { reason: 42 }]) {
        const res = await api('POST', `/api/batches/${id}/replay`, { body });
        expect(res.status, JSON.stringify(body).slice(0, 60)).to.equal(400);
        expect(res.body.error).to.match(/^reason must say why, in 1 to 500 characters/);
      }
      expect(await statusesOf(id)).to.deep.equal({ 'ko.example.com': 'failed' });
      expect(await auditOf(id)).to.deep.equal([]);
      const dry = await api('POST', `/api/batches/${id}/replay`, { body: { dryRun: true } });
      expect(dry.status).to.equal(200);
      const ok = await api('POST', `/api/batches/${id}/replay`, { body: { reason: 'x'.repeat(500) } });
      expect(ok.status).to.equal(200);
      expect(await statusesOf(id)).to.deep.equal({ 'ko.example.com': 'pending' });
    });

    it('when a dry run is asked, then it states which domains would be re-opened and which are left, each with why, and the real replay re-opens exactly those', async () => {
      await start();
      const id = messageId();
      await seedBatch(id, [
        { domain: 'failed.example.com', status: 'failed', detail: 'user not found' },
        { domain: 'retry.example.com', status: 'retryable', detail: '503' },
        { domain: 'pending.example.com', status: 'pending' },
        { domain: 'stale.example.com', status: 'in_progress', leaseSeconds: -60 },
        { domain: 'busy.example.com', status: 'in_progress', leaseSeconds: 3600 },
        { domain: 'unknown.example.com', status: 'unknown_domain', detail: 'not in inventory' },
        { domain: 'unsupported.example.com', status: 'unsupported' },
        { domain: 'done.example.com', status: 'succeeded' },
        { domain: 'wait.example.com', status: 'awaiting_pipeline' },
      ]);
      const before = await statusesOf(id);
      const dry = await api('POST', `/api/batches/${id}/replay`, { body: { dryRun: true } });
      expect(dry.status).to.equal(200);
      expect(await statusesOf(id), 'a dry run changes nothing').to.deep.equal(before);
      expect(dry.body.changes).to.deep.equal([]);
      const why = (list: Body[]) => Object.fromEntries(list.map((p: Body) => [p.domain, p.why]));
      expect(why(dry.body.reopen)).to.deep.equal({
        'failed.example.com': 'failed; it is sent again',
        'pending.example.com': 'pending and not sent yet; its job is published again',
        'retry.example.com': 'waiting for a retry; it is sent now',
        'stale.example.com': 'in progress past its lease (its worker stopped); it is sent again',
      });
      expect(dry.body.reopen.find((p: Body) => p.domain === 'failed.example.com')).to.deep.equal(
        { domain: 'failed.example.com', status: 'failed', detail: 'user not found', why: 'failed; it is sent again' });
      const skipped = why(dry.body.skipped);
      expect(Object.keys(skipped).sort()).to.deep.equal(['busy.example.com', 'done.example.com', 'unknown.example.com', 'unsupported.example.com', 'wait.example.com']);
      expect(skipped['busy.example.com']).to.match(/^a worker is sending it now \(its lease runs until \d{4}-/);
      expect(skipped['unknown.example.com']).to.equal('not in the domain inventory; import it, then replay with all: true (or name it)');
      expect(skipped['done.example.com']).to.match(/never re-opened, so nothing is deleted twice/);

      const withAll = await api('POST', `/api/batches/${id}/replay`, { body: { dryRun: true, all: true } });
      expect(withAll.body.reopen.map((p: Body) => p.domain)).to.include('unknown.example.com');

      const real = await api('POST', `/api/batches/${id}/replay`, { body: { reason: REASON } });
      expect(real.status).to.equal(200);
      expect(real.body.changes.map((c: Body) => c.domain)).to.deep.equal(dry.body.reopen.map((p: Body) => p.domain));
      expect(real.body.changes.map((c: Body) => c.from)).to.deep.equal(dry.body.reopen.map((p: Body) => p.status));
      const after = await statusesOf(id);
      for (const [d, s] of Object.entries(before)) expect(after[d], d).to.equal(dry.body.reopen.some((p: Body) => p.domain === d) ? 'pending' : s);
    });

    it('when the audit row cannot be written, then the replay changes nothing and publishes nothing (the change and its row share one transaction)', async () => {
      await start();
      const id = messageId();
      await seedBatch(id, [{ domain: 'ko.example.com', status: 'failed' }]);
      const poison = `the audit must fail ${rand()}`;
      const fn = `audit_fails_${rand()}`;
      await db.query(`CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.reason = '${poison}' THEN RAISE EXCEPTION 'audit refused'; END IF; RETURN NEW; END $$`);
      await db.query(`CREATE TRIGGER ${fn} BEFORE INSERT ON operator_audit FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
      cleanups.push(async () => {
        await db.query(`DROP TRIGGER ${fn} ON operator_audit`);
        await db.query(`DROP FUNCTION ${fn}()`);
      });
      const before = (await db.query<{ v: string }>('SELECT updated_at::text AS v FROM batch WHERE message_id = $1', [id])).rows[0]!.v;
      const res = await api('POST', `/api/batches/${id}/replay`, { body: { reason: poison } });
      expect(res.status).to.equal(500);
      expect(await statusesOf(id)).to.deep.equal({ 'ko.example.com': 'failed' });
      expect((await db.query<{ v: string }>('SELECT updated_at::text AS v FROM batch WHERE message_id = $1', [id])).rows[0]!.v).to.equal(before);
      expect(await queueDepth(env!, 'jobs')).to.equal(0);
      // And with the same trigger in place, a replay that may be audited goes through.
      expect((await api('POST', `/api/batches/${id}/replay`, { body: { reason: REASON } })).status).to.equal(200);
      expect(await statusesOf(id)).to.deep.equal({ 'ko.example.com': 'pending' });
    });
  });

  describe('export', function () {
    it('when a batch is exported as CSV, then its not-deleted domains come with a header row, RFC 4180 quoting and formula cells defused, as an attachment; as JSON the same rows', async () => {
      await start();
      const id = messageId();
      await seedBatch(id, [
        { domain: 'a.example.com', status: 'failed', detail: '=HYPERLINK("http://evil.example","click")', userIdCdn: 'u1' },
        { domain: 'b.example.com', status: 'unknown_domain', detail: 'not in inventory, "really"\r\nsecond line', userIdCdn: null },
        { domain: 'c.example.com', status: 'retryable', detail: '+1 retry', userIdCdn: '-u3' },
        { domain: 'd.example.com', status: 'failed', detail: '@SUM(A1)', userIdCdn: 'u4' },
        { domain: 'e.example.com', status: 'succeeded', detail: 'deleted', userIdCdn: 'u5' },
      ]);
      const { rows } = await db.query<{ domain: string; updated: string }>(
        `SELECT domain, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated FROM batch_domain WHERE message_id = $1`, [id]);
      const updated = Object.fromEntries(rows.map((r) => [r.domain, r.updated]));

      const res = await fetch(`${url}/api/batches/${id}/export?format=csv`, { headers: asViewer });
      expect(res.status).to.equal(200);
      expect(res.headers.get('content-type')).to.equal('text/csv; charset=utf-8');
      expect(res.headers.get('content-disposition')).to.equal(`attachment; filename="batch-${id}-not-deleted.csv"`);
      expect(await res.text()).to.equal([
        'domain,status,detail,user_id_cdn,attempts,updated',
        `a.example.com,failed,"'=HYPERLINK(""http://evil.example"",""click"")",u1,1,${updated['a.example.com']}`,
        `b.example.com,unknown_domain,"not in inventory, ""really""\r\nsecond line",,1,${updated['b.example.com']}`,
        `c.example.com,retryable,'+1 retry,'-u3,1,${updated['c.example.com']}`,
        `d.example.com,failed,'@SUM(A1),u4,1,${updated['d.example.com']}`,
        '',
      ].join('\r\n'));

      const json = await api('GET', `/api/batches/${id}/export?format=json`, { as: asViewer });
      expect(json.headers.get('content-disposition')).to.equal(`attachment; filename="batch-${id}-not-deleted.json"`);
      expect(json.body.messageId).to.equal(id);
      expect(json.body.domains).to.deep.equal([
        { domain: 'a.example.com', status: 'failed', detail: '=HYPERLINK("http://evil.example","click")', user_id_cdn: 'u1', attempts: 1, updated: updated['a.example.com'] },
        { domain: 'b.example.com', status: 'unknown_domain', detail: 'not in inventory, "really"\r\nsecond line', user_id_cdn: null, attempts: 1, updated: updated['b.example.com'] },
        { domain: 'c.example.com', status: 'retryable', detail: '+1 retry', user_id_cdn: '-u3', attempts: 1, updated: updated['c.example.com'] },
        { domain: 'd.example.com', status: 'failed', detail: '@SUM(A1)', user_id_cdn: 'u4', attempts: 1, updated: updated['d.example.com'] },
      ]);
      expect((await api('GET', `/api/batches/${messageId()}/export`, { as: asViewer })).status).to.equal(404);
      const xml = await api('GET', `/api/batches/${id}/export?format=xml`, { as: asViewer });
      expect([xml.status, xml.body.error]).to.deep.equal([400, 'format must be csv or json']);
    });
  });

  describe('alarms', function () {
    it('when alarms are listed without a state, then open and acknowledged ones come back; state=resolved, state=all and a bad state do what they say', async () => {
      await start();
      const id = messageId();
      const open = await insertAlarm(id, 'BATCH_FAILURES', 'open');
      const acked = await insertAlarm(id, 'JOB_PARKED', 'acknowledged');
      const resolved = await insertAlarm(id, 'TOKEN_REJECTED', 'resolved');
      const ids = async (q: string) => (await api('GET', `/api/alarms?messageId=${id}${q}`, { as: asViewer })).body.alarms.map((a: Body) => a.id);
      expect(await ids('')).to.deep.equal([acked, open]);
      expect(await ids('&state=open')).to.deep.equal([open]);
      expect(await ids('&state=resolved')).to.deep.equal([resolved]);
      expect(await ids('&state=all')).to.deep.equal([resolved, acked, open]);
      const list = await api('GET', `/api/alarms?messageId=${id}&state=all`, { as: asViewer });
      expect(list.body.alarms.map((a: Body) => a.state)).to.deep.equal(['resolved', 'acknowledged', 'open']);
      const bad = await api('GET', '/api/alarms?state=closed', { as: asViewer });
      expect([bad.status, bad.body.error]).to.deep.equal([400, 'state must be one of open, acknowledged, resolved or all (default: open and acknowledged)']);
    });

    it('when an operator acknowledges and then resolves an alarm, then each step is taken by the principal and audited; a repeat is 409, an unknown id 404, a viewer 403 and a resolve without a note 400, none audited', async () => {
      await start();
      const id = messageId();
      const alarm = await insertAlarm(id, 'BATCH_FAILURES', 'open');
      const audited = async () => (await db.query(
        `SELECT action, actor, role, via, reason, target, changes FROM operator_audit WHERE target->>'alarmId' = $1 ORDER BY id`, [String(alarm)])).rows;

      expect((await api('POST', `/api/alarms/${alarm}/acknowledge`, { as: asViewer, body: {} })).status).to.equal(403);
      const ack = await api('POST', `/api/alarms/${alarm}/acknowledge`, { body: { note: 'looking at the platform' } });
      expect(ack.status, ack.text.slice(0, 300)).to.equal(200);
      expect(ack.body.alarm).to.include({ id: alarm, state: 'acknowledged', acknowledgedBy: 'admin-token', ackNote: 'looking at the platform' });
      const again = await api('POST', `/api/alarms/${alarm}/acknowledge`, { body: {} });
      expect([again.status, again.body.error]).to.deep.equal([409, `cannot acknowledge alarm ${alarm}: it is already acknowledged (by admin-token); nothing was changed`]);

      const noNote = await api('POST', `/api/alarms/${alarm}/resolve`, { body: {} });
      expect([noNote.status, noNote.body.error]).to.deep.equal([400, 'a note is required to resolve an alarm: say what fixed it']);
      const resolve = await api('POST', `/api/alarms/${alarm}/resolve`, { body: { note: 'credentials rotated' } });
      expect(resolve.status).to.equal(200);
      expect(resolve.body.alarm).to.include({ state: 'resolved', resolvedBy: 'admin-token', resolveNote: 'credentials rotated' });
      expect((await api('POST', `/api/alarms/${alarm}/resolve`, { body: { note: 'again' } })).status).to.equal(409);
      const unknown = await api('POST', '/api/alarms/2147483647/resolve', { body: { note: 'x' } });
      expect([unknown.status, unknown.body.error]).to.deep.equal([404, 'no alarm with id 2147483647']);
      expect((await api('POST', `/api/alarms/${alarm}/resolve`, { body: { note: 'x', by: 'someone else' } })).status, 'by is the principal, never the body').to.equal(400);

      const target = { alarmId: alarm, messageId: id, alarmType: 'BATCH_FAILURES' };
      expect(await audited()).to.deep.equal([
        { action: 'acknowledge', actor: 'admin-token', role: 'operator', via: 'bearer', reason: 'looking at the platform', target, changes: [{ field: 'state', from: 'open', to: 'acknowledged' }] },
        { action: 'resolve', actor: 'admin-token', role: 'operator', via: 'bearer', reason: 'credentials rotated', target, changes: [{ field: 'state', from: 'acknowledged', to: 'resolved' }] },
      ]);
    });
  });

  describe('audit trail', function () {
    it('when the audit is paged with limit and action, then nextCursor walks it newest first, exactly as stored, and action filters it', async () => {
      await start();
      const id = messageId();
      for (let i = 0; i < 3; i++) {
        const alarm = await insertAlarm(`${id}${i}`, 'BATCH_FAILURES', 'open');
        expect((await api('POST', `/api/alarms/${alarm}/acknowledge`, { body: { note: `n${i}` } })).status).to.equal(200);
        expect((await api('POST', `/api/alarms/${alarm}/resolve`, { body: { note: `fixed ${i}` } })).status).to.equal(200);
      }
      const walk = async (q: string) => {
        const ids: number[] = [];
        let cursor: string | null = null;
        do {
          const res: Reply = await api('GET', `/api/audit?limit=2${q}${cursor ? `&before=${cursor}` : ''}`, { as: asViewer });
          expect(res.status, res.text.slice(0, 300)).to.equal(200);
          expect(res.body.entries.length).to.be.at.most(2);
          ids.push(...res.body.entries.map((e: Body) => e.id));
          cursor = res.body.nextCursor;
        } while (cursor);
        return ids;
      };
      const stored = async (action: string | null) => (await db.query<{ id: number }>(
        'SELECT id::int FROM operator_audit WHERE ($1::text IS NULL OR action = $1) ORDER BY id DESC', [action])).rows.map((r) => r.id);
      expect(await walk('&action=resolve')).to.deep.equal(await stored('resolve'));
      expect(await walk('')).to.deep.equal(await stored(null));
      const newest = (await api('GET', '/api/audit?limit=1&action=resolve', { as: asViewer })).body.entries[0];
      expect(newest).to.include({ action: 'resolve', actor: 'admin-token', role: 'operator', via: 'bearer', reason: 'fixed 2' });
      expect(newest.at).to.be.a('string');
      for (const [q, reason] of [['before=xyz', /^before must be a nextCursor/], ['action=delete', /^action must be one of replay,/], ['limit=500', /^limit must be/]] as const) {
        const res = await api('GET', `/api/audit?${q}`, { as: asViewer });
        expect([res.status, res.body.error], q).to.satisfy(([s, e]: [number, string]) => s === 400 && reason.test(e));
      }
    });
  });

  describe('bulk replay', function () {
    /** `n` batches created in `year`, each with one failed domain (detail from `detail(i)`) and one succeeded. */
    async function seedFailures(year: number, n: number, detail: (i: number) => string = () => 'user not found'): Promise<string[]> {
      const ids = Array.from({ length: n }, (_, i) => `bulk${rand()}${String(i).padStart(3, '0')}`);
      for (const [i, id] of ids.entries()) {
        const at = new Date(Date.UTC(year, 0, 1, 0, 0, i)).toISOString();
        await seedBatch(id, [{ domain: `ko${i}.example.com`, status: 'failed', detail: detail(i) }, { domain: `ok${i}.example.com`, status: 'succeeded' }], at);
      }
      return ids;
    }
    const window = (year: number) => ({ hasFailures: true, since: `${year}-01-01`, until: `${year + 1}-01-01` });

    it('when a bulk replay is previewed, then it counts the batches and failing domains the filter matches and lists the first 50 oldest first; detailMatches is a plain substring (% and _ match only themselves)', async () => {
      await start();
      const ids = await seedFailures(2002, 55, (i) => (i % 5 === 0 ? 'token rejected 100% of calls' : i % 5 === 1 ? 'user_not_found' : i % 5 === 2 ? 'userXnotYfound' : 'timeout'));
      const preview = async (filter: Record<string, unknown>) => {
        const res = await api('POST', '/api/replays/bulk', { body: { filter, dryRun: true } });
        expect(res.status, res.text.slice(0, 300)).to.equal(200);
        return res.body;
      };
      const all = await preview(window(2002));
      expect(all).to.include({ dryRun: true, batchCount: 55, domainCount: 55, maxBatches: 1000 });
      expect(all.batches.map((b: Body) => b.messageId)).to.deep.equal(ids.slice(0, 50));
      expect(all.batches[0]).to.deep.include({ domainCount: 1, domains: [{ domain: 'ko0.example.com', status: 'failed', detail: 'token rejected 100% of calls' }] });
      expect(all.filter).to.deep.equal({ hasFailures: true, since: '2002-01-01T00:00:00.000Z', until: '2003-01-01T00:00:00.000Z', detailMatches: null });

      const ofDetail = async (detailMatches: string) => (await preview({ ...window(2002), detailMatches })).batches.map((b: Body) => b.domains[0].detail);
      expect(new Set(await ofDetail('100%'))).to.deep.equal(new Set(['token rejected 100% of calls']));
      expect(new Set(await ofDetail('USER_not'))).to.deep.equal(new Set(['user_not_found']));
      expect(await ofDetail('%')).to.have.length(11);
      expect(await ofDetail('_')).to.have.length(11);
      expect(await ofDetail('.*')).to.deep.equal([]);
      expect(await statusesOf(ids[0]!), 'a preview changes nothing').to.deep.equal({ 'ko0.example.com': 'failed', 'ok0.example.com': 'succeeded' });
    });

    it('when a bulk replay runs, then every matched batch\'s failures are re-opened batch by batch and published, its progress reaches done, and the start and each batch are audited', async () => {
      await start();
      const ids = await seedFailures(2003, 5);
      const res = await api('POST', '/api/replays/bulk', { body: { filter: window(2003), reason: REASON } });
      expect(res.status, res.text.slice(0, 300)).to.equal(202);
      const bulkId = res.body.bulkReplay.id;
      expect(res.headers.get('location')).to.equal(`/api/replays/bulk/${bulkId}`);
      expect(res.body.bulkReplay).to.include({ status: 'running', total: 5, createdBy: 'admin-token', reason: REASON });
      const done = await waitFor('the bulk replay to finish', async () => {
        const r = await api('GET', `/api/replays/bulk/${bulkId}`, { as: asViewer });
        return r.body.bulkReplay.status === 'done' ? r.body.bulkReplay : undefined;
      }, 20_000);
      expect(done).to.include({ total: 5, done: 5, reopened: 5, error: null });
      for (const [i, id] of ids.entries()) expect(await statusesOf(id)).to.deep.equal({ [`ko${i}.example.com`]: 'pending', [`ok${i}.example.com`]: 'succeeded' });
      await waitFor('five jobs on the queue', async () => (await queueDepth(env!, 'jobs')) === 5, 5000);

      const { rows } = await db.query<{ action: string; target: Body; changes: Body; reason: string }>(
        `SELECT action, target, changes, reason FROM operator_audit WHERE (target->>'bulkReplayId')::bigint = $1 ORDER BY id`, [bulkId]);
      expect(rows.map((r) => r.action)).to.deep.equal(['bulk_replay_start', 'replay', 'replay', 'replay', 'replay', 'replay']);
      expect(rows.slice(1).map((r) => r.target)).to.deep.equal(ids.map((id) => ({ messageId: id, bulkReplayId: bulkId })));
      expect(rows[1]!.changes).to.deep.equal([{ domain: 'ko0.example.com', from: 'failed', to: 'pending' }]);
      expect(rows.every((r) => r.reason === REASON)).to.equal(true);

      const listed = await api('GET', '/api/replays/bulk?limit=5', { as: asViewer });
      expect(listed.body.bulkReplays[0]).to.include({ id: bulkId, status: 'done' });
      const cancelDone = await api('POST', `/api/replays/bulk/${bulkId}/cancel`, { body: {} });
      expect([cancelDone.status, cancelDone.body.error]).to.deep.equal([409, `bulk replay ${bulkId} is already done; nothing was changed`]);
      expect((await api('GET', '/api/replays/bulk/2147483647', { as: asViewer })).status).to.equal(404);
    });

    it('when a filter matches more batches than BULK_REPLAY_MAX_BATCHES, or a body is not what the route takes, then 400 says why and nothing starts', async () => {
      await start({ BULK_REPLAY_MAX_BATCHES: '3' });
      const ids = await seedFailures(2005, 4);
      const started = async () => Number((await db.query<{ n: number }>('SELECT count(*)::int AS n FROM bulk_replay')).rows[0]!.n);
      const before = await started();
      const cases: [unknown, RegExp][] = [
        [{ filter: window(2005), reason: REASON }, /^the filter matches 4 batches; a bulk replay takes at most 3 \(BULK_REPLAY_MAX_BATCHES\): narrow the filter/],
        [{ filter: window(2005) }, /^reason must say why/],
        [{ filter: { ...window(2005), hasFailures: false }, dryRun: true }, /^filter.hasFailures must be true/],
        [{ filter: { since: '2005-01-01' }, dryRun: true }, /^filter.hasFailures must be true/],
        [{ filter: { ...window(2005), detailMatches: 'a\u0000b' }, dryRun: true }, /^filter.detailMatches must be plain text/],
        [{ filter: { ...window(2005), status: 'failed' }, dryRun: true }, /^unknown field "filter.status"/],
        [{ filter: { ...window(2005), since: '2005-02-30' }, dryRun: true }, /^filter.since must be a date/],
        [{ filter: { ...window(2005), since: '2006-01-01' }, dryRun: true }, /^filter.since must be before filter.until/],
        [{ filter: window(2005), dryRun: 'true' }, /^dryRun must be true or false/],
        [{ filter: { ...window(2005), since: '2001-01-01', until: '2001-01-02' }, reason: REASON }, /^the filter matches no batch with failures/],
      ];
      for (const [body, reason] of cases) {
        const res = await api('POST', '/api/replays/bulk', { body });
        expect(res.status, JSON.stringify(body)).to.equal(400);
        expect(res.body.error, JSON.stringify(body)).to.match(reason);
      }
      expect(await started()).to.equal(before);
      for (const id of ids) expect(Object.values(await statusesOf(id))).to.have.members(['failed', 'succeeded']);
    });

    it('when a running bulk replay is cancelled, then it stops between two batches: those before are replayed, the rest untouched, and the cancel is audited', async () => {
      await start();
      const ids = await seedFailures(2004, 6);
      // Hold the third batch's row: the run replays two batches, then waits inside the third one's transaction.
      const holder = new pg.Client({ connectionString: process.env.DATABASE_URL });
      await holder.connect();
      cleanups.push(async () => { await holder.end(); });
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM batch WHERE message_id = $1 FOR UPDATE', [ids[2]]);
      const waitingOn = (pattern: string) => waitFor(`a session waiting for a lock in ${pattern}`, async () => (await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
        [pattern])).rows[0]!.n > 0, 15_000);

      const res = await api('POST', '/api/replays/bulk', { body: { filter: window(2004), reason: REASON } });
      expect(res.status).to.equal(202);
      const bulkId = res.body.bulkReplay.id;
      await waitingOn('SELECT 1 FROM batch WHERE message_id = ANY($1) ORDER BY message_id FOR UPDATE%');
      // The cancel waits for the batch in flight (its transaction holds the bulk_replay row), then lands.
      const cancel = api('POST', `/api/replays/bulk/${bulkId}/cancel`, { body: { reason: 'wrong window' } });
      await waitingOn('%cancelled_by AS "cancelledBy"%FOR UPDATE');
      await holder.query('COMMIT');
      const cancelled = await cancel;
      expect(cancelled.status, cancelled.text.slice(0, 300)).to.equal(200);
      expect(cancelled.body.bulkReplay).to.include({ status: 'cancelled', total: 6, done: 3, reopened: 3, cancelledBy: 'admin-token' });

      for (const [i, id] of ids.entries()) {
        expect((await statusesOf(id))[`ko${i}.example.com`], id).to.equal(i < 3 ? 'pending' : 'failed');
      }
      const { rows } = await db.query<{ action: string; reason: string; actor: string; changes: Body }>(
        `SELECT action, reason, actor, changes FROM operator_audit WHERE (target->>'bulkReplayId')::bigint = $1 ORDER BY id`, [bulkId]);
      expect(rows.map((r) => r.action)).to.deep.equal(['bulk_replay_start', 'replay', 'replay', 'replay', 'bulk_replay_cancel']);
      expect(rows[4]).to.deep.include({ reason: 'wrong window', actor: 'admin-token', changes: [{ field: 'status', from: 'running', to: 'cancelled', done: 3, total: 6 }] });
      const shown = await api('GET', `/api/replays/bulk/${bulkId}`, { as: asViewer });
      expect(shown.body.bulkReplay).to.include({ status: 'cancelled', done: 3 });
    });

    it('when a bulk replay was left running by a process that died, then the next start-up marks it failed, saying so (and a read does too)', async () => {
      const insertRunning = async () => (await db.query<{ id: number }>(
        `INSERT INTO bulk_replay (filter, reason, created_by, message_ids, total, done, owner, heartbeat_at)
         VALUES ('{"hasFailures":true,"since":null,"until":null,"detailMatches":null}', 'r', 'someone', '{a,b,c}', 3, 1, 'dead-host:1', now() - interval '10 minutes')
         RETURNING id::int`)).rows[0]!.id;
      const alive = (await db.query<{ id: number }>(
        `INSERT INTO bulk_replay (filter, reason, created_by, message_ids, total, owner)
         VALUES ('{"hasFailures":true,"since":null,"until":null,"detailMatches":null}', 'r', 'someone', '{a}', 1, 'live-host:1')
         RETURNING id::int`)).rows[0]!.id;
      cleanups.push(async () => { await db.query('DELETE FROM bulk_replay WHERE id = $1', [alive]); });
      const dead = await insertRunning();
      await start();
      const row = await waitFor('the start-up to mark it failed', async () => {
        const { rows } = await db.query<{ status: string; error: string; finished_at: Date | null }>('SELECT status, error, finished_at FROM bulk_replay WHERE id = $1', [dead]);
        return rows[0]!.status === 'failed' ? rows[0] : undefined;
      }, 10_000);
      expect(row.error).to.match(/^the process running it stopped \(no progress since \d{4}-\d{2}-\d{2}T[0-9:]+Z\) after 1 of 3 batches; start a new bulk replay to finish$/);
      expect(row.finished_at).to.be.instanceOf(Date);
      expect((await db.query<{ status: string }>('SELECT status FROM bulk_replay WHERE id = $1', [alive])).rows[0]!.status, 'a live heartbeat is left alone').to.equal('running');

      const later = await insertRunning();
      const read = await api('GET', `/api/replays/bulk/${later}`, { as: asViewer });
      expect(read.body.bulkReplay).to.include({ id: later, status: 'failed' });
    });
  });

  describe('roles', function () {
    it('when a viewer or nobody calls a change route, then 403 or 401 and nothing changes; a viewer reads every read route', async () => {
      await start();
      const id = messageId();
      await seedBatch(id, [{ domain: 'ko.example.com', status: 'failed' }], '2006-01-01T00:00:00Z');
      const alarm = await insertAlarm(id, 'BATCH_FAILURES', 'open');
      const audits = async () => (await db.query<{ n: number }>('SELECT count(*)::int AS n FROM operator_audit')).rows[0]!.n;
      const before = await audits();
      const changes: [string, unknown][] = [
        [`/api/batches/${id}/replay`, { reason: REASON }],
        ['/api/replays/bulk', { filter: { hasFailures: true, since: '2006-01-01', until: '2006-01-02' }, reason: REASON }],
        ['/api/replays/bulk/1/cancel', {}],
        [`/api/alarms/${alarm}/acknowledge`, {}],
        [`/api/alarms/${alarm}/resolve`, { note: 'x' }],
      ];
      for (const [path, body] of changes) {
        const asV = await api('POST', path, { body, as: asViewer });
        expect([asV.status, asV.body.error], path).to.deep.equal([403, 'this route needs the operator role (ADMIN_TOKEN); a viewer may only read']);
        expect((await api('POST', path, { body, as: {} })).status, path).to.equal(401);
      }
      expect(await statusesOf(id)).to.deep.equal({ 'ko.example.com': 'failed' });
      expect((await db.query<{ state: string }>('SELECT state FROM sys_task_process_alarm WHERE id = $1', [alarm])).rows[0]!.state).to.equal('open');
      expect(await audits()).to.equal(before);
      expect(await queueDepth(env!, 'jobs')).to.equal(0);

      for (const path of ['/api/overview', '/api/batches', `/api/batches/${id}`, `/api/batches/${id}/export`, '/api/alarms', `/api/alarms/${alarm}`, '/api/audit', '/api/replays/bulk']) {
        expect((await api('GET', path, { as: asViewer })).status, path).to.equal(200);
        expect((await api('GET', path, { as: {} })).status, path).to.equal(401);
      }
    });
  });

  describe('npm run replay', function () {
    function runReplay(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
      return new Promise((resolve) => {
        execFile(process.execPath, ['--import', 'tsx', 'scripts/replay.ts', ...args], {
          cwd: ROOT, timeout: 50_000,
          env: { ...process.env, DATABASE_URL: process.env.DATABASE_URL, CALLBACK_AUTH: 'none', RABBITMQ_URL, AMQP_PREFIX: env!.AMQP_PREFIX!, RETRY_TIERS_MS: env!.RETRY_TIERS_MS! },
        }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
      });
    }

    it('when npm run replay has no --reason, then it exits 2 and changes nothing; with one, the audit row names the OS user and the reason', async () => {
      env = testEnv();
      const id = messageId();
      await seedBatch(id, [{ domain: 'ko.example.com', status: 'failed' }]);
      const missing = await runReplay([id]);
      expect(missing.code).to.equal(2);
      expect(missing.stderr).to.contain('--reason is required');
      expect(await statusesOf(id)).to.deep.equal({ 'ko.example.com': 'failed' });
      expect((await runReplay([id, '--reason', 'bad\u0007bell'])).code, 'a control character').to.equal(2);
      expect((await runReplay([id, '--dry-run'])).code).to.equal(0);
      expect(await auditOf(id)).to.deep.equal([]);

      const ok = await runReplay([id, '--reason', REASON]);
      expect(ok.code, ok.stderr).to.equal(0);
      expect(await statusesOf(id)).to.deep.equal({ 'ko.example.com': 'pending' });
      expect(await auditOf(id)).to.deep.equal([{
        action: 'replay', actor: os.userInfo().username, role: null, via: 'cli', reason: REASON, target: { messageId: id },
        changes: [{ domain: 'ko.example.com', from: 'failed', to: 'pending' }],
      }]);
    });
  });
});
