/**
 * Ingest: one round trip, one commit. Against the real PostgreSQL and RabbitMQ, with every statement the
 * service's pool sends counted (each pooled connection's query is wrapped as it is made): an accepted
 * callback costs exactly one statement before the reply; callbacks arriving together share one; a repeated
 * messageId merges as before; publish flags are cleared in bulk after the reply, and a batch whose publish
 * failed is still published by the relay; PostgreSQL away, a deadlock or a connection killed mid-statement
 * give 503 with nothing of the callback stored; concurrent callbacks of one messageId on two hosts never
 * lose a domain.
 */
import amqp from 'amqplib';
import { expect } from 'chai';
import pg from 'pg';
import { createContext, type AppContext } from '../../src/context.js';
import { DependencyUnavailableError } from '../../src/lib/errors.js';
import { startService } from '../../src/main.js';
import { topologyNames } from '../../src/messaging/topology.js';
import { acceptCallback } from '../../src/pipeline/accept-callback.js';
import { IngestBatcher } from '../../src/pipeline/ingest-batcher.js';
import type { IncomingItem } from '../../src/store/ledger.js';
import {
  RABBITMQ_URL, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, postCallback, queueDepth, recordStatements,
  testConfig, testDb, testEnv, waitFor, type Statement,
} from '../helpers/env.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

type Service = Awaited<ReturnType<typeof startService>>;

const isIngest = (s: Statement) => s.text.includes('INSERT INTO callback_audit');
const isFlagClear = (s: Statement) => /UPDATE batch b SET publish_pending = false/.test(s.text);

/** The messageIds of the jobs waiting in this test's jobs queue (taken off it). */
async function jobsOnQueue(env: Record<string, string>): Promise<string[]> {
  const conn = await amqp.connect(RABBITMQ_URL);
  try {
    const ch = await conn.createChannel();
    const queue = topologyNames(env.AMQP_PREFIX!, [1]).jobsQueue;
    const ids: string[] = [];
    for (;;) {
      const m = await ch.get(queue, { noAck: true });
      if (!m) return ids;
      ids.push((JSON.parse(m.content.toString()) as { messageId: string }).messageId);
    }
  } finally {
    await conn.close();
  }
}

/** An item as parseCallback returns it. */
const item = (domain: string, o: Partial<IncomingItem> = {}) =>
  ({ domain, reqType: 'SELF_DOMAIN_DELETE', supported: true, percent: null, process: null, ...o });

describe('ingest: one round trip, one commit', function () {
  let db: pg.Pool;
  const envs: Record<string, string>[] = [];
  const services: Service[] = [];
  let cleanups: (() => Promise<void>)[] = [];

  /** Starts the service in-process on `env`, counting its pool's statements. */
  async function start(overrides: Record<string, string> = {}): Promise<{ svc: Service; url: string; ctx: AppContext; statements: Statement[]; env: Record<string, string> }> {
    const env = testEnv({ ROLE: 'api', ...overrides });
    // A second host (or a restart) may share the first one's names; they are cleaned up once.
    if (!envs.some((e) => e.AMQP_PREFIX === env.AMQP_PREFIX)) envs.push(env);
    const config = testConfig(env);
    const ctx = createContext(config, { logger: captureLogger('warn').logger });
    const statements = recordStatements(ctx.db);
    const svc = await startService(config, ctx);
    services.push(svc);
    return { svc, url: `http://127.0.0.1:${svc.port}`, ctx, statements, env };
  }

  async function batchRow(id: string) {
    const { rows } = await db.query<{ callbacks: number; publish_pending: boolean; publish_error: string | null; published_at: Date | null }>(
      'SELECT callbacks, publish_pending, publish_error, published_at FROM batch WHERE message_id = $1', [id]);
    return rows[0];
  }

  async function domainsOf(id: string) {
    const { rows } = await db.query<{ domain: string; status: string; percent: number | null; process: boolean | null }>(
      'SELECT domain, status, percent, process FROM batch_domain WHERE message_id = $1 ORDER BY domain', [id]);
    return rows;
  }

  async function auditCount(id: string): Promise<number> {
    const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM callback_audit WHERE message_id = $1', [id]);
    return rows[0]!.n;
  }

  beforeEach(() => {
    db = testDb();
  });

  afterEach(async () => {
    for (const s of services.splice(0).reverse()) await s.stop();
    for (const c of cleanups.reverse()) await c();
    cleanups = [];
    for (const env of envs.splice(0)) await cleanupNames(env);
    await db.end();
  });

  it('when a callback is accepted, then PostgreSQL runs exactly one statement for it before the reply (no BEGIN/COMMIT), and its flag is cleared afterwards', async () => {
    // The relay stays quiet (it would add its own statements to the count).
    const { ctx, statements, env } = await start({ RELAY_INTERVAL_MS: '600000' });
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 50);
    const body = callbackBody(id, domains);

    const before = statements.length;
    const result = await acceptCallback(ctx, body, '127.0.0.1');
    const beforeReply = statements.slice(before);
    expect(beforeReply, beforeReply.map((s) => s.text.slice(0, 60)).join(' | ')).to.have.length(1);
    expect(isIngest(beforeReply[0]!)).to.equal(true);
    expect(result).to.deep.include({ messageId: id, added: 50, known: 0 });
    // The reply does not wait for the broker's confirm; the confirm still comes, and the flag waits for it.
    expect(await result.confirmed).to.equal(true);

    // Committed before the reply: another connection sees every row at once.
    expect(await auditCount(id)).to.equal(1);
    expect((await domainsOf(id)).map((d) => d.status)).to.deep.equal(Array(50).fill('pending'));
    expect(await queueDepth(env, 'jobs')).to.equal(1);
    // The flag is cleared by the bulk writer, after the reply.
    await waitFor('the publish flag cleared', async () => (await batchRow(id))?.publish_pending === false, 5000);
    const after = statements.slice(before);
    expect(after.filter(isFlagClear)).to.have.length(1);
    expect(after.some((s) => /^\s*(BEGIN|COMMIT)/i.test(s.text))).to.equal(false);
    expect((await batchRow(id))!.published_at).to.be.instanceOf(Date);
  });

  it('when the broker is slow to confirm, then the reply still comes right after the commit, the flag stays set until the confirm, and the job reaches the queue', async () => {
    const proxy = await startTcpProxy({ port: Number(new URL(RABBITMQ_URL).port || 5672) });
    cleanups.push(() => proxy.stop());
    const { url, env } = await start({ RABBITMQ_URL: proxy.url(RABBITMQ_URL), RELAY_INTERVAL_MS: '600000', AMQP_CONFIRM_TIMEOUT_MS: '30000' });
    const id = messageId();
    proxy.stall();
    const res = await postCallback(url, callbackBody(id, domainsFor(id.slice(2, 10), 3)));
    expect(res.status).to.equal(200);
    expect(await auditCount(id), 'committed before the reply').to.equal(1);
    expect((await batchRow(id))!.publish_pending, 'no confirm yet: the relay would still publish it').to.equal(true);
    expect(await queueDepth(env, 'jobs')).to.equal(0);

    proxy.resume();
    await waitFor('the publish flag cleared after the confirm', async () => (await batchRow(id))?.publish_pending === false, 10_000);
    expect(await jobsOnQueue(env)).to.deep.equal([id]);
  });

  it('when 20 callbacks are recorded while a statement is in flight, then they share the next statement and each resolves once it committed', async () => {
    const pool = testDb();
    cleanups.push(() => pool.end());
    const statements = recordStatements(pool);
    const batcher = new IngestBatcher({ db: pool, logger: captureLogger('warn').logger }, 1);
    const ids = Array.from({ length: 21 }, () => messageId());
    const seenAtResolve: number[] = [];
    const all = ids.map((id) => batcher.record({ messageId: id, remoteAddr: '127.0.0.1', body: { messageId: id }, items: [item(`a.${id}.example.com`), item(`b.${id}.example.com`)] })
      .then(async (r) => {
        // Another connection must already see this callback's rows: the reply comes after the commit.
        const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM batch_domain WHERE message_id = $1', [id]);
        seenAtResolve.push(rows[0]!.n);
        return r;
      }));
    const results = await Promise.all(all);
    // The first went alone at once; the other 20 waited for it and went together.
    expect(statements.filter(isIngest)).to.have.length(2);
    expect(statements).to.have.length(2);
    expect(seenAtResolve).to.deep.equal(Array(21).fill(2));
    for (const r of results) expect(r.added).to.have.length(2);
    const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM batch WHERE message_id = ANY($1)', [ids]);
    expect(rows[0]!.n).to.equal(21);
    // No job was published for these: keep every later test's relay from publishing them.
    await db.query('UPDATE batch SET publish_pending = false WHERE message_id = ANY($1)', [ids]);
  });

  it('when the same messageId is called back again, then it merges as before: callbacks + 1, new domains added, known ones left alone, awaiting ones reported finished released, the unsupported alarm raised once', async () => {
    const { url } = await start({ RELAY_INTERVAL_MS: '600000' });
    const id = messageId();
    const [a, b, c, d, e, f] = domainsFor(id.slice(2, 10), 6) as [string, string, string, string, string, string];
    const first = {
      messageId: id,
      data: [
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: a },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: b },
        { percent: 0.5, process: true, reqType: 'SELF_DOMAIN_DELETE', targetName: c },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_MOVE', targetName: d },
      ],
    };
    expect((await postCallback(url, first)).status).to.equal(200);
    // A worker already dealt with a and b.
    await db.query(`UPDATE batch_domain SET status = 'succeeded', detail = 'done' WHERE message_id = $1 AND domain = $2`, [id, a]);
    await db.query(`UPDATE batch_domain SET status = 'failed', detail = 'user not found' WHERE message_id = $1 AND domain = $2`, [id, b]);

    const second = {
      messageId: id,
      data: [
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: a },
        { percent: 0.9, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: b },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: c },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_MOVE', targetName: d },
        { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: e },
        { percent: 0.2, process: true, reqType: 'SELF_DOMAIN_DELETE', targetName: f },
      ],
    };
    expect((await postCallback(url, second)).status).to.equal(200);

    expect((await batchRow(id))!.callbacks).to.equal(2);
    expect(await auditCount(id)).to.equal(2);
    const rows = await db.query<{ domain: string; status: string; detail: string | null; percent: number | null; process: boolean | null }>(
      'SELECT domain, status, detail, percent, process FROM batch_domain WHERE message_id = $1 ORDER BY domain', [id]);
    const byDomain = new Map(rows.rows.map((r) => [r.domain, r]));
    expect(byDomain.get(a)).to.deep.include({ status: 'succeeded', detail: 'done' });
    // Known and finished: keeps its status and detail, takes the progress reported now.
    expect(byDomain.get(b)).to.deep.include({ status: 'failed', detail: 'user not found', process: false });
    expect(byDomain.get(b)!.percent).to.be.closeTo(0.9, 1e-6);
    expect(byDomain.get(c)).to.deep.include({ status: 'pending', detail: null, percent: 1, process: false });
    expect(byDomain.get(d)).to.deep.include({ status: 'unsupported' });
    expect(byDomain.get(e)).to.deep.include({ status: 'pending' });
    expect(byDomain.get(f)!.status).to.equal('awaiting_pipeline');
    expect(byDomain.get(f)!.detail).to.match(/^the pipeline reports it unfinished \(percent 0\.2, process true\)/);
    expect(rows.rows).to.have.length(6);

    // d was new in the first callback only: one alarm, one notification, no repeat for the second callback.
    const { rows: alarms } = await db.query<{ id: string; content: string; occurrences: number; details: { items: unknown[] } }>(
      `SELECT id, content, occurrences, details FROM sys_task_process_alarm WHERE message_id = $1 AND alarm_type = 'UNSUPPORTED_REQ_TYPE'`, [id]);
    expect(alarms).to.have.length(1);
    expect(alarms[0]!.occurrences).to.equal(1);
    expect(alarms[0]!.content).to.equal(`1 item(s) with an unsupported reqType were recorded, not processed: ${d} (SELF_DOMAIN_MOVE)`);
    expect(alarms[0]!.details).to.deep.equal({ items: [{ domain: d, reqType: 'SELF_DOMAIN_MOVE', supported: false, percent: 1, process: false }] });
    const { rows: notes } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM alarm_notification WHERE alarm_id = $1', [alarms[0]!.id]);
    expect(notes[0]!.n).to.equal(1);
  });

  it('when 40 callbacks arrive at once, then their publish flags are cleared by far fewer UPDATEs than callbacks, after every job was confirmed', async () => {
    const { url, statements, env } = await start({ RELAY_INTERVAL_MS: '600000', PUBLISH_FLAG_FLUSH_MS: '300' });
    const ids = Array.from({ length: 40 }, () => messageId());
    const replies = await Promise.all(ids.map((id) => postCallback(url, callbackBody(id, domainsFor(id.slice(2, 10), 5)))));
    expect(replies.map((r) => r.status)).to.deep.equal(Array(40).fill(200));
    await waitFor('every flag cleared', async () => {
      const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM batch WHERE message_id = ANY($1) AND NOT publish_pending', [ids]);
      return rows[0]!.n === 40;
    }, 10_000);
    const clears = statements.filter(isFlagClear).length;
    expect(clears, `${clears} flag UPDATEs`).to.be.at.least(1).and.at.most(6);
    // Group commit too: the 40 callbacks shared statements.
    expect(statements.filter(isIngest).length).to.be.below(40);
    expect(await queueDepth(env, 'jobs')).to.equal(40);
  });

  it('when a callback\'s job cannot be published, then its flag stays set with the error, and the relay publishes it once the broker is back', async () => {
    const down = await start({ RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:1', AMQP_CONFIRM_TIMEOUT_MS: '300' });
    const id = messageId();
    expect((await postCallback(down.url, callbackBody(id, domainsFor(id.slice(2, 10), 3)))).status).to.equal(200);
    await waitFor('the publish error recorded', async () => (await batchRow(id))?.publish_error != null, 5000);
    expect((await batchRow(id))!.publish_pending).to.equal(true);
    await services.pop()!.stop();

    // Same ledger, real broker: the relay (every 300 ms) publishes what was never confirmed.
    const up = await start({ AMQP_CONFIRM_TIMEOUT_MS: '300', AMQP_PREFIX: down.env.AMQP_PREFIX!, REDIS_KEY_PREFIX: down.env.REDIS_KEY_PREFIX! });
    await waitFor('the relay published it', async () => (await batchRow(id))?.publish_pending === false, 15_000);
    expect((await batchRow(id))!.publish_error).to.equal(null);
    // The relay publishes whatever any earlier test left unconfirmed in this database too: look for ours.
    expect(await jobsOnQueue(up.env)).to.include(id);
  });

  it('when PostgreSQL cannot be reached, then accepting fails as unavailable (a 503) and the error says so', async () => {
    const { ctx } = await start({ RELAY_INTERVAL_MS: '600000' });
    const dead = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/x', connectionTimeoutMillis: 2000 });
    cleanups.push(() => dead.end());
    const err = await acceptCallback({ ...ctx, db: dead }, callbackBody(messageId(), ['a.example.com']), '127.0.0.1').then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(DependencyUnavailableError);
    expect((err as DependencyUnavailableError).dependency).to.equal('postgres');
  });

  /** Waits until a statement of this test's database storing a callback waits on a lock; returns its pid. */
  async function ingestWaitingOnLock(): Promise<number> {
    return waitFor('the ingest statement waiting on a lock', async () => {
      const { rows } = await db.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query LIKE '%INSERT INTO callback_audit%'`);
      return rows[0]?.pid;
    }, 10_000);
  }

  it('when the connection is killed while the statement waits for a lock, then the reply is 503 and nothing of that callback is stored', async () => {
    const { url } = await start({ RELAY_INTERVAL_MS: '600000' });
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 4);
    expect((await postCallback(url, callbackBody(id, domains.slice(0, 2)))).status).to.equal(200);

    const locker = await db.connect();
    cleanups.push(async () => { await locker.query('ROLLBACK').catch(() => undefined); locker.release(); });
    await locker.query('BEGIN');
    await locker.query('SELECT 1 FROM batch WHERE message_id = $1 FOR UPDATE', [id]);
    const reply = postCallback(url, callbackBody(id, domains));
    const pid = await ingestWaitingOnLock();
    await db.query('SELECT pg_terminate_backend($1)', [pid]);
    const res = await reply;
    await locker.query('ROLLBACK');

    expect(res.status).to.equal(503);
    expect(res.body).to.deep.equal({ success: false, messageId: id, message: 'temporarily unavailable (postgres); please retry', status: 1 });
    expect(await auditCount(id), 'the audit row went with the rest').to.equal(1);
    expect((await batchRow(id))!.callbacks).to.equal(1);
    expect((await domainsOf(id)).map((d) => d.domain)).to.deep.equal(domains.slice(0, 2).sort());
  });

  it('when the statement loses a deadlock, then the reply is 503 (retryable) and nothing of that callback is stored', async () => {
    const { url } = await start({ RELAY_INTERVAL_MS: '600000' });
    const id = messageId();
    const [held, other] = domainsFor(id.slice(2, 10), 2) as [string, string];
    const unfinished = { messageId: id, data: [{ percent: 0.5, process: true, reqType: 'SELF_DOMAIN_DELETE', targetName: held }] };
    expect((await postCallback(url, unfinished)).status).to.equal(200);

    // Another transaction holds the domain row the callback will release, then wants the batch row it holds.
    const locker = await db.connect();
    cleanups.push(async () => { await locker.query('ROLLBACK').catch(() => undefined); locker.release(); });
    await locker.query('BEGIN');
    await locker.query('UPDATE batch_domain SET detail = detail WHERE message_id = $1 AND domain = $2', [id, held]);
    const reply = postCallback(url, callbackBody(id, [held, other]));
    await ingestWaitingOnLock();
    // The ingest waits first, so its deadlock check (after deadlock_timeout) finds the cycle and it gives way.
    await locker.query('SELECT 1 FROM batch WHERE message_id = $1 FOR UPDATE', [id]);
    const res = await reply;
    await locker.query('ROLLBACK');

    expect(res.status).to.equal(503);
    expect(res.body).to.deep.equal({ success: false, messageId: id, message: 'temporarily unavailable (postgres); please retry', status: 1 });
    expect(await auditCount(id)).to.equal(1);
    expect((await batchRow(id))!.callbacks).to.equal(1);
    expect(await domainsOf(id)).to.deep.equal([{ domain: held, status: 'awaiting_pipeline', percent: 0.5, process: true }]);
  });

  it('when 20 callbacks of one messageId with overlapping domains arrive at once on two hosts, then the union is stored and every domain reported finished by any of them is pending (four messageIds at once)', async () => {
    const hostA = await start({ RELAY_INTERVAL_MS: '600000' });
    const hostB = await start({ RELAY_INTERVAL_MS: '600000', AMQP_PREFIX: hostA.env.AMQP_PREFIX!, REDIS_KEY_PREFIX: hostA.env.REDIS_KEY_PREFIX! });
    // Callback i carries domains i..i+10; domain j is unfinished in every callback when j % 5 = 0, and in the
    // even-numbered callbacks when j % 5 = 1: the final status must not depend on the order they commit in.
    // Which statements race depends on timing, so four messageIds race at once (each an independent chance).
    const unfinished = (i: number, j: number) => j % 5 === 0 || (j % 5 === 1 && i % 2 === 0);
    const batches = Array.from({ length: 4 }, () => {
      const id = messageId();
      const domains = domainsFor(id.slice(2, 10), 30);
      const bodies = Array.from({ length: 20 }, (_, i) => ({
        messageId: id,
        data: Array.from({ length: 11 }, (_, k) => i + k).map((j) => (unfinished(i, j)
          ? { percent: 0.5, process: true, reqType: 'SELF_DOMAIN_DELETE', targetName: domains[j]! }
          : { percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: domains[j]! })),
      }));
      return { id, domains, bodies };
    });
    const sends = batches.flatMap((b) => b.bodies.map((body, i) => () => postCallback(i % 2 === 0 ? hostA.url : hostB.url, body)));
    const replies = await Promise.all(sends.map((send) => send()));
    expect(replies.map((r) => r.status)).to.deep.equal(Array(80).fill(200));

    for (const { id, domains, bodies } of batches) {
      const expected = domains.map((domain, j) => {
        const reports = bodies.flatMap((b, i) => (b.data.some((x) => x.targetName === domain) ? [!unfinished(i, j)] : []));
        return { domain, status: reports.some(Boolean) ? 'pending' : 'awaiting_pipeline' };
      }).sort((x, y) => x.domain.localeCompare(y.domain));
      expect(expected.filter((x) => x.status === 'awaiting_pipeline').length, 'the test covers both outcomes').to.be.within(1, 29);
      expect((await domainsOf(id)).map((d) => ({ domain: d.domain, status: d.status })), id).to.deep.equal(expected);
      expect((await batchRow(id))!.callbacks).to.equal(20);
      expect(await auditCount(id)).to.equal(20);
    }
    // Both hosts stored some: the race is between two pools, not only inside one batcher.
    expect(hostA.statements.filter(isIngest).length).to.be.at.least(1);
    expect(hostB.statements.filter(isIngest).length).to.be.at.least(1);
  });
});
