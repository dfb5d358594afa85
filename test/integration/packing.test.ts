/**
 * Calls filled across jobs (src/pipeline/call-packer.ts): a worker fills each delete_user_info call with
 * entries drawn from every job it holds, settles each outcome against its own batch, acks each job once its
 * own batch is done, fetches more jobs only while those it holds cannot fill its calls, prepares the next
 * call while one is in flight, and hands a prepared call back at shutdown. Real PostgreSQL, Redis and
 * RabbitMQ; the security platform is the simulator, reached through a gate this test controls: it records
 * every call's entries and holds calls until the test lets them through, so what is packed together never
 * depends on timing.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import amqp from 'amqplib';
import { expect } from 'chai';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { startService } from '../../src/main.js';
import type { Disposition, JobHandler } from '../../src/messaging/broker.js';
import { topologyNames } from '../../src/messaging/topology.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import { listAttempts } from '../../src/store/attempts.js';
import { claimDomains } from '../../src/store/ledger.js';
import {
  RABBITMQ_URL, SECPLAT_PASSWORD, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, postCallback, queueDepth,
  recordStatements, seedInventory, statusCounts, testConfig, testDb, testEnv, waitFor, type Statement,
} from '../helpers/env.js';

const uid = (d: string) => `uid-${d}`;

/** A callback as posted: its messageId and domains. */
interface Batch { id: string; domains: string[] }

/**
 * An HTTP proxy in front of the simulator: records the user ids of every delete call as it arrives and,
 * while closed, holds each call until `release` or `open` lets it through. Token requests pass freely.
 */
class CallGate {
  /** Every delete call in arrival order, by the user ids it carried. */
  readonly calls: string[][] = [];
  /** Delete calls waiting at the gate now. */
  held = 0;
  private closed = true;
  private permits = 0;
  private readonly waiting: (() => void)[] = [];
  private server: http.Server | undefined;

  async start(target: string): Promise<string> {
    const to = new URL(target);
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => void (async () => {
        const body = Buffer.concat(chunks);
        if (req.url === '/v1.0/delete_user_info') {
          const list = (JSON.parse(body.toString('utf8')) as { delete_user_info_list: { user_id_cdn: string }[] }).delete_user_info_list;
          this.calls.push(list.map((e) => e.user_id_cdn));
          await this.pass();
        }
        const fwd = http.request({ host: to.hostname, port: to.port, path: req.url, method: req.method, headers: req.headers }, (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        });
        fwd.on('error', () => { res.destroy(); });
        fwd.end(body);
      })());
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Lets the next `n` calls through (those waiting first). */
  release(n = 1): void {
    for (let i = 0; i < n; i++) {
      const next = this.waiting.shift();
      if (next) next();
      else this.permits++;
    }
  }

  /** Lets every call through from now on. */
  open(): void {
    this.closed = false;
    this.release(this.waiting.length);
  }

  async stop(): Promise<void> {
    this.open();
    const srv = this.server;
    this.server = undefined;
    if (!srv) return;
    await new Promise<void>((resolve) => { srv.close(() => resolve()); srv.closeAllConnections(); });
  }

  private async pass(): Promise<void> {
    if (!this.closed) return;
    if (this.permits > 0) {
      this.permits--;
      return;
    }
    this.held++;
    await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.held--;
  }
}

describe('calls filled across jobs', function () {
  let sim: Simulator;
  let simUrl: string;
  let gate: CallGate;
  let db: pg.Pool;
  let env: Record<string, string>;
  const services: Awaited<ReturnType<typeof startService>>[] = [];
  /** What each worker decided for each job it held, in order (recorded around the real handler). */
  let dispositions: { messageId: string; action: Disposition['action']; instanceId: string }[];

  /** A service process in this test process; its job dispositions are recorded. */
  async function start(overrides: Record<string, string> = {}): Promise<{
    url: string; ctx: Awaited<ReturnType<typeof startService>>['ctx']; statements: Statement[]; logs: string[];
  }> {
    // No relay pass during a test: the test database is shared, and a relay would publish other tests'
    // unconfirmed or stalled batches into this queue, spoiling the counts of jobs held and waiting.
    const config = testConfig({ ...env, RELAY_INTERVAL_MS: '3600000', ...overrides });
    const { logger, lines: logs } = captureLogger('warn');
    const ctx = createContext(config, { logger });
    const brokerStart = ctx.broker.start.bind(ctx.broker);
    ctx.broker.start = (handler?: JobHandler) => brokerStart(handler && Object.assign(async (msg: amqp.ConsumeMessage) => {
      const d = await handler(msg);
      const { messageId: id } = JSON.parse(msg.content.toString('utf8')) as { messageId: string };
      dispositions.push({ messageId: id, action: d.action, instanceId: config.instanceId });
      return d;
    }, { demand: handler.demand }));
    const statements = recordStatements(ctx.db);
    const service = await startService(config, ctx);
    services.push(service);
    return { url: `http://127.0.0.1:${service.port}`, ctx, statements, logs };
  }

  /** A callback of `n` domains known to the inventory; returns its messageId and domains. */
  async function post(url: string, n: number): Promise<Batch> {
    const id = messageId();
    const domains = domainsFor(id.slice(2, 12), n);
    await seedInventory(db, domains, uid);
    expect((await postCallback(url, callbackBody(id, domains))).status).to.equal(200);
    return { id, domains };
  }

  async function inProgress(ids: string[]): Promise<number> {
    const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM batch_domain WHERE message_id = ANY($1) AND status = 'in_progress'`, [ids]);
    return rows[0]!.n;
  }

  async function allSucceeded(batches: Batch[]): Promise<boolean> {
    for (const b of batches) if ((await statusCounts(db, b.id)).succeeded !== b.domains.length) return false;
    return true;
  }

  /** Messages waiting in this test's retry queues. */
  async function retryDepth(): Promise<number> {
    const t = topologyNames(env.AMQP_PREFIX!, env.RETRY_TIERS_MS!.split(',').map(Number));
    const conn = await amqp.connect(RABBITMQ_URL);
    try {
      const ch = await conn.createChannel();
      let n = 0;
      for (const q of t.retryQueues) n += (await ch.checkQueue(q.name)).messageCount;
      return n;
    } finally {
      await conn.close();
    }
  }

  /** Each job decided once, and acked. */
  async function eachAckedOnce(ids: string[]): Promise<void> {
    await waitFor('every job decided', async () => ids.every((id) => dispositions.some((d) => d.messageId === id)));
    for (const id of ids) {
      expect(dispositions.filter((d) => d.messageId === id).map((d) => d.action), `dispositions of ${id}`).to.deep.equal(['ack']);
    }
    await waitFor('jobs queue empty', async () => (await queueDepth(env, 'jobs')) === 0);
    expect(await queueDepth(env, 'parked'), 'parked jobs').to.equal(0);
    expect(await retryDepth(), 'jobs in the retry tiers').to.equal(0);
  }

  beforeEach(async () => {
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 5 });
    simUrl = (await sim.start()).url;
    gate = new CallGate();
    db = testDb();
    dispositions = [];
    // One call slot, so that while the gate holds a call the next one waits prepared; calls may wait at
    // the gate far longer than any timeout a test would otherwise use.
    env = testEnv({ SECPLAT_BASE_URL: await gate.start(simUrl), SECPLAT_CONCURRENCY: '1', SECPLAT_TIMEOUT_MS: '60000', TOKEN_LOCK_TTL_MS: '61000' });
  });

  afterEach(async () => {
    gate.open();
    for (const s of services.splice(0)) await s.stop();
    await gate.stop();
    await sim.stop();
    await db.end();
    await cleanupNames(env);
  });

  it('when several one-domain callbacks are held by one worker, then they go out in one call, each batch is settled and its job acked on its own, and their progress is read in one round trip', async () => {
    const { url, statements } = await start({ SECPLAT_BATCH_SIZE: '10' });
    const first = await post(url, 1);
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    const small: Batch[] = [];
    for (let i = 0; i < 5; i++) small.push(await post(url, 1));
    await waitFor('the five claimed for the next call', async () => (await inProgress(small.map((b) => b.id))) === 5);

    const from = statements.length;
    gate.open();
    await waitFor('all six batches succeeded', () => allSucceeded([first, ...small]));
    expect(gate.calls.map((c) => c.slice().sort()), 'entries of each call').to.deep.equal([[uid(first.domains[0]!)], small.map((b) => uid(b.domains[0]!)).sort()]);
    await waitFor('every job decided', async () => dispositions.length === 6);
    // After each call: the counts of its jobs' batches in one statement (no alarm to resolve, so no UPDATE),
    // not a count and an alarm UPDATE per job.
    const bookkeeping = statements.slice(from).filter((x) => /GROUP BY (message_id, )?status|resolved_by = 'system'/.test(x.text));
    expect(bookkeeping.map((x) => x.text.slice(0, 40)), 'statements reading progress or resolving alarms').to.have.length(2);
    const stats = sim.stats();
    expect([stats.deleteCalls, stats.entriesReceived], 'calls and entries the simulator received').to.deep.equal([2, 6]);
    expect(Math.max(...Object.values(stats.deletedCounts))).to.equal(1);
    // One call, one send time: the five batches' attempts are that call's, each in its own batch.
    const attempts = await Promise.all(small.map((b) => listAttempts(db, b.id)));
    for (const [i, rows] of attempts.entries()) {
      expect(rows.map((a) => [a.messageId, a.domain, a.httpStatus, a.outcome, a.trigger])).to.deep.equal([[small[i]!.id, small[i]!.domains[0], 200, 'succeeded', 'first_run']]);
    }
    expect(new Set(attempts.map((rows) => rows[0]!.attemptedAt.getTime())).size, 'send times of the five').to.equal(1);
    await eachAckedOnce([first, ...small].map((b) => b.id));
  });

  it('when a 50-domain callback (batch size 20) and ten one-domain callbacks are held, then the call after the big batch\'s second carries its last 10 domains and the ten small ones', async () => {
    const { url } = await start({ SECPLAT_BATCH_SIZE: '20' });
    const big = await post(url, 50);
    // The first call of 20 waits at the gate, the next 20 are prepared behind it.
    await waitFor('one call held and the next prepared', async () => gate.held === 1 && (await inProgress([big.id])) === 40);
    const small: Batch[] = [];
    for (let i = 0; i < 10; i++) small.push(await post(url, 1));

    gate.release(1);
    // The second call (20 more) now waits at the gate; the worker fills the third from the big batch's
    // last 10 and the small jobs it fetches for that.
    await waitFor('the second call held and the third prepared in full', async () =>
      gate.calls.length === 2 && gate.held === 1 && (await inProgress([big.id, ...small.map((b) => b.id)])) === 40);
    gate.open();
    await waitFor('all 11 batches succeeded', () => allSucceeded([big, ...small]));

    expect(gate.calls.map((c) => c.length), 'entries per call').to.deep.equal([20, 20, 20]);
    const bigUids = new Set(big.domains.map(uid));
    const third = gate.calls[2]!;
    expect(third.filter((u) => bigUids.has(u)), 'the big batch\'s entries in the third call').to.have.length(10);
    expect(third.filter((u) => !bigUids.has(u)).sort(), 'the small batches\' entries in the third call').to.deep.equal(small.map((b) => uid(b.domains[0]!)).sort());
    const stats = sim.stats();
    expect([stats.deleteCalls, stats.entriesReceived]).to.deep.equal([3, 60]);
    expect(Math.max(...Object.values(stats.deletedCounts))).to.equal(1);
    await eachAckedOnce([big, ...small].map((b) => b.id));
  });

  it('when one entry of a call mixing three batches is refused (chk_fail), then only its batch has that domain failed and a BATCH_FAILURES alarm, and the other two succeed without one', async () => {
    const { url } = await start({ SECPLAT_BATCH_SIZE: '10' });
    const first = await post(url, 1);
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    const [a, refused, c] = [await post(url, 1), await post(url, 1), await post(url, 1)] as const;
    sim.setOptions({ failIds: [uid(refused.domains[0]!)] });
    await waitFor('the three claimed for the next call', async () => (await inProgress([a.id, refused.id, c.id])) === 3);

    gate.open();
    await waitFor('every batch settled', async () => [first, a, c].every((b) => dispositions.some((d) => d.messageId === b.id))
      && (await statusCounts(db, refused.id)).failed === 1);
    expect(gate.calls[1]!.slice().sort(), 'the mixed call').to.deep.equal([a, refused, c].map((b) => uid(b.domains[0]!)).sort());
    for (const b of [first, a, c]) expect(await statusCounts(db, b.id), b.id).to.deep.equal({ succeeded: 1 });
    expect(await statusCounts(db, refused.id)).to.deep.equal({ failed: 1 });
    const { rows: detail } = await db.query<{ detail: string }>('SELECT detail FROM batch_domain WHERE message_id = $1', [refused.id]);
    expect(detail[0]!.detail).to.equal('security platform: user not found');

    await eachAckedOnce([first, a, refused, c].map((b) => b.id));
    const { rows: alarms } = await db.query<{ messageId: string; content: string }>(
      `SELECT message_id AS "messageId", content FROM sys_task_process_alarm WHERE alarm_type = 'BATCH_FAILURES' AND message_id = ANY($1)`,
      [[first, a, refused, c].map((b) => b.id)]);
    expect(alarms.map((x) => x.messageId), 'batches with a BATCH_FAILURES alarm').to.deep.equal([refused.id]);
    expect(alarms[0]!.content).to.include(refused.domains[0]);
    const attempts = await listAttempts(db, refused.id);
    expect(attempts.map((x) => [x.httpStatus, x.outcome, x.reason])).to.deep.equal([[200, 'failed', 'user not found']]);
    expect((await listAttempts(db, a.id))[0]!.attemptedAt.getTime(), 'the same call').to.equal(attempts[0]!.attemptedAt.getTime());
  });

  it('when one call carries the domains of four one-domain jobs with different triggers and one lost its lease, then one transaction settles all four, each against its own batch and claim, with attempts carrying each job\'s trigger', async () => {
    const { url, ctx, statements } = await start({ SECPLAT_BATCH_SIZE: '10' });
    const blocker = await post(url, 1);
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    const ok = await post(url, 1); // first_run
    /** A batch stored without a callback, whose job says it was caused by `trigger`. */
    const seeded = async (trigger: 'retry' | 'stalled_sweep' | 'replay'): Promise<Batch> => {
      const id = messageId();
      const domains = domainsFor(id.slice(2, 12), 1);
      await seedInventory(db, domains, uid);
      await db.query(`INSERT INTO batch (message_id, publish_pending) VALUES ($1, false)`, [id]);
      await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status) VALUES ($1, $2, 'SELF_DOMAIN_DELETE', 'pending')`, [id, domains[0]]);
      await ctx.broker.publishJob({ messageId: id, attempt: 1, trigger });
      return { id, domains };
    };
    const refused = await seeded('retry');
    const lost = await seeded('stalled_sweep');
    const replayed = await seeded('replay');
    const four = [ok, refused, lost, replayed];
    await waitFor('the four claimed for the next call', async () => (await inProgress(four.map((b) => b.id))) === 4);

    gate.release(1);
    await waitFor('the first call settled and the second held at the gate', async () =>
      gate.calls.length === 2 && gate.held === 1 && (await statusCounts(db, blocker.id)).succeeded === 1);
    // While the call is out, the lease of one domain lapses and another worker takes it over.
    await db.query(`UPDATE batch_domain SET claimed_by = 'other-host:1#0000beef', claimed_until = now() + interval '1 hour' WHERE message_id = $1`, [lost.id]);
    sim.setOptions({ failIds: [uid(refused.domains[0]!), uid(lost.domains[0]!)] });
    const from = statements.length;
    gate.open();
    await waitFor('the four jobs decided', async () => four.every((b) => dispositions.some((d) => d.messageId === b.id)));

    expect(gate.calls[1]!.slice().sort(), 'the second call').to.deep.equal(four.map((b) => uid(b.domains[0]!)).sort());
    const after = statements.slice(from);
    const settles = after.filter((s) => s.text.includes('INSERT INTO domain_attempt'));
    expect(settles, 'statements writing attempt rows').to.have.length(1);
    const own = after.filter((s) => s.client === settles[0]!.client).map((s) => s.text.trim());
    const at = own.indexOf(settles[0]!.text.trim());
    expect([own[at - 1], own[at + 1]?.includes('UPDATE cdn_domain'), own[at + 2]], 'BEGIN, ledger, inventory, COMMIT').to.deep.equal(['BEGIN', true, 'COMMIT']);

    const row = async (b: Batch) => (await db.query<{ status: string; claimedBy: string | null; detail: string | null }>(
      'SELECT status, claimed_by AS "claimedBy", detail FROM batch_domain WHERE message_id = $1', [b.id])).rows;
    expect(await row(ok)).to.deep.equal([{ status: 'succeeded', claimedBy: null, detail: null }]);
    expect(await row(replayed)).to.deep.equal([{ status: 'succeeded', claimedBy: null, detail: null }]);
    expect(await row(refused)).to.deep.equal([{ status: 'failed', claimedBy: null, detail: 'security platform: user not found' }]);
    expect(await row(lost), 'the domain taken over, untouched').to.deep.equal([{ status: 'in_progress', claimedBy: 'other-host:1#0000beef', detail: null }]);
    const attempts = await Promise.all(four.map((b) => listAttempts(db, b.id)));
    expect(attempts.map((rows) => rows.map((a) => [a.messageId, a.domain, a.trigger, a.httpStatus, a.outcome, a.reason]))).to.deep.equal([
      [[ok.id, ok.domains[0], 'first_run', 200, 'succeeded', null]],
      [[refused.id, refused.domains[0], 'retry', 200, 'failed', 'user not found']],
      [[lost.id, lost.domains[0], 'stalled_sweep', 200, 'lease_lost', 'user not found']],
      [[replayed.id, replayed.domains[0], 'replay', 200, 'succeeded', null]],
    ]);
    expect(new Set(attempts.map((rows) => rows[0]!.attemptedAt.getTime())).size, 'send times of the four').to.equal(1);
    const { rows: inventory } = await db.query<{ domain: string; status: string; by: string | null }>(
      'SELECT domain, status, deleted_by_message_id AS by FROM cdn_domain WHERE domain = ANY($1) ORDER BY domain',
      [four.map((b) => b.domains[0])]);
    expect(inventory, 'the inventory: each deletion credited to its own batch').to.deep.equal(four.map((b) => ({
      domain: b.domains[0], status: b === ok || b === replayed ? 'deleted' : 'active', by: b === ok || b === replayed ? b.id : null,
    })).sort((x, y) => (x.domain! < y.domain! ? -1 : 1)));
    await eachAckedOnce([blocker, ...four].map((b) => b.id));
  });

  it('when recording a call\'s answer keeps failing for one of its batches, then every job in the call fails as one failing job does: retried, its domains left in progress under their claims, no attempt and no inventory change', async () => {
    const { url, logs, statements } = await start({ SECPLAT_BATCH_SIZE: '10' });
    const blocker = await post(url, 1);
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    const three = [await post(url, 1), await post(url, 1), await post(url, 1)];
    const ids = three.map((b) => b.id);
    await waitFor('the three claimed for the next call', async () => (await inProgress(ids)) === 3);
    // A real PostgreSQL failure, transient by its code, on every attempt row of one of the three batches.
    const fn = `fail_attempt_${messageId().slice(2, 10)}`;
    await db.query(`CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.message_id = '${three[1]!.id}' THEN RAISE EXCEPTION 'injected conflict' USING ERRCODE = '40001'; END IF;
        RETURN NEW;
      END $$`);
    await db.query(`CREATE TRIGGER ${fn} BEFORE INSERT ON domain_attempt FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
    try {
      const from = statements.length;
      gate.open();
      await waitFor('the three jobs decided', async () => ids.every((id) => dispositions.some((d) => d.messageId === id)));
      expect(statements.slice(from).filter((x) => x.text.includes('INSERT INTO domain_attempt')), 'the settle, tried again on the transient error')
        .to.have.length(1 + 1 + 3); // the blocker's call, then the mixed call and its three retries
    } finally {
      await db.query(`DROP TRIGGER ${fn} ON domain_attempt; DROP FUNCTION ${fn}()`);
    }

    expect(ids.map((id) => dispositions.find((d) => d.messageId === id)!.action), 'each job\'s first disposition').to.deep.equal(['retry', 'retry', 'retry']);
    for (const b of three) {
      expect(logs.filter((l) => l.includes('could not record outcomes') && l.includes(b.id)), `warnings of ${b.id}`).to.have.length(1);
    }
    const { rows } = await db.query<{ status: string; claimed: boolean }>(
      'SELECT status, claimed_by IS NOT NULL AS claimed FROM batch_domain WHERE message_id = ANY($1)', [ids]);
    expect(rows, 'deleted by the platform, never made retryable: left to their claims').to.deep.equal(ids.map(() => ({ status: 'in_progress', claimed: true })));
    for (const b of three) expect(await listAttempts(db, b.id), `attempts of ${b.id}`).to.deep.equal([]);
    const { rows: inventory } = await db.query<{ status: string }>('SELECT status FROM cdn_domain WHERE domain = ANY($1)', [three.map((b) => b.domains[0])]);
    expect(inventory.map((r) => r.status)).to.deep.equal(['active', 'active', 'active']);
    for (const b of three) expect(sim.stats().deletedCounts[uid(b.domains[0]!)], b.domains[0]).to.equal(1);
    expect(await statusCounts(db, blocker.id), 'the call before, recorded').to.deep.equal({ succeeded: 1 });
  });

  it('when the worker shuts down with a call prepared behind the one in flight, then the prepared domains go back to pending unsent, their jobs are requeued, and the next worker deletes each domain once', async () => {
    const first = await start({ SECPLAT_BATCH_SIZE: '10' });
    const blocker = await post(first.url, 1);
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    const small = [await post(first.url, 1), await post(first.url, 1), await post(first.url, 1)];
    const smallIds = small.map((b) => b.id);
    await waitFor('the three claimed for the next call', async () => (await inProgress(smallIds)) === 3);

    const stopping = services.pop()!.stop();
    await waitFor('the prepared domains handed back', async () => {
      const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM batch_domain WHERE message_id = ANY($1) AND status = 'pending'`, [smallIds]);
      return rows[0]!.n === 3;
    });
    // The call in flight finishes and is recorded before the worker exits.
    gate.open();
    await stopping;

    expect(gate.calls, 'calls sent by the stopped worker').to.deep.equal([[uid(blocker.domains[0]!)]]);
    expect(await statusCounts(db, blocker.id)).to.deep.equal({ succeeded: 1 });
    const { rows } = await db.query<{ status: string; attempts: number; claimedBy: string | null }>(
      `SELECT status, attempts, claimed_by AS "claimedBy" FROM batch_domain WHERE message_id = ANY($1)`, [smallIds]);
    expect(rows, 'the handed-back domains: pending, unclaimed, never attempted').to.deep.equal(smallIds.map(() => ({ status: 'pending', attempts: 0, claimedBy: null })));
    expect(dispositions.map((d) => [d.messageId, d.action]).sort()).to.deep.equal(
      [[blocker.id, 'ack'], ...smallIds.map((id) => [id, 'requeue'])].sort());
    expect(await queueDepth(env, 'jobs'), 'jobs requeued for another worker').to.equal(3);

    await start({ SECPLAT_BATCH_SIZE: '10', ROLE: 'worker' });
    await waitFor('the next worker finished them', () => allSucceeded(small));
    const counts = sim.stats().deletedCounts;
    for (const b of [blocker, ...small]) expect(counts[uid(b.domains[0]!)], b.domains[0]).to.equal(1);
    await waitFor('no domain left claimed', async () => (await inProgress([blocker.id, ...smallIds])) === 0);
  });

  it('when the lease of a prepared call lapses and another worker claims its domain, then the lease is checked again before sending and that domain is not sent', async () => {
    // The shortest lease allowed; no stalled sweep, which would re-publish the batch of the held call.
    const { url } = await start({ SECPLAT_BATCH_SIZE: '10', DOMAIN_LEASE_MS: '1000', RELAY_INTERVAL_MS: '3600000' });
    const first = await post(url, 1);
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    const prepared = await post(url, 1);
    await waitFor('its domain claimed for the next call', async () => (await inProgress([prepared.id])) === 1);
    await waitFor('its lease lapsed', async () => {
      const { rows } = await db.query<{ lapsed: boolean }>('SELECT claimed_until < now() AS lapsed FROM batch_domain WHERE message_id = $1', [prepared.id]);
      return rows[0]!.lapsed;
    });
    const other = await claimDomains(db, prepared.id, { workerId: 'other-host:1#0000beef', leaseMs: 3_600_000, limit: 10, exclude: [] });
    expect(other.map((d) => d.domain), 'claimed by another worker').to.deep.equal(prepared.domains);

    gate.open();
    await waitFor('both jobs decided', async () => [first, prepared].every((b) => dispositions.some((d) => d.messageId === b.id)));
    expect(gate.calls, 'calls sent').to.deep.equal([[uid(first.domains[0]!)]]);
    expect(sim.stats().deletedCounts).to.not.have.property(uid(prepared.domains[0]!));
    const { rows } = await db.query<{ status: string; claimedBy: string }>('SELECT status, claimed_by AS "claimedBy" FROM batch_domain WHERE message_id = $1', [prepared.id]);
    expect(rows).to.deep.equal([{ status: 'in_progress', claimedBy: 'other-host:1#0000beef' }]);
    expect(await listAttempts(db, prepared.id), 'attempts of the domain not sent').to.deep.equal([]);
    // The held call's lease lapsed too: what the platform confirmed is recorded all the same.
    expect(await statusCounts(db, first.id)).to.deep.equal({ succeeded: 1 });
    expect((await listAttempts(db, first.id)).map((a) => a.outcome)).to.deep.equal(['succeeded']);
  });

  it('when AMQP_PREFETCH is 3, then the worker holds at most 3 jobs and fills its next call from those alone', async () => {
    const { url, ctx } = await start({ SECPLAT_BATCH_SIZE: '10', AMQP_PREFETCH: '3' });
    const first = await post(url, 1);
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    const small: Batch[] = [];
    for (let i = 0; i < 5; i++) small.push(await post(url, 1));
    // Five more entries would fill the next call, but the bound leaves three of the jobs in the queue.
    await waitFor('two held beside the first, three left in the queue', async () =>
      (await inProgress(small.map((b) => b.id))) === 2 && (await queueDepth(env, 'jobs')) === 3);
    expect(ctx.broker.consumerState.held, 'jobs held').to.equal(3);

    gate.open();
    await waitFor('all six batches succeeded', () => allSucceeded([first, ...small]));
    expect(gate.calls[1], 'the call prepared while three jobs were held').to.have.length(2);
    await eachAckedOnce([first, ...small].map((b) => b.id));
  });

  it('when the first job a worker meets carries one domain and thirty 50-domain jobs wait behind it, then it takes only what its calls need, not all of them', async () => {
    const api = await start({ ROLE: 'api', SECPLAT_BATCH_SIZE: '20' });
    const batches = [await post(api.url, 1)];
    for (let i = 0; i < 30; i++) batches.push(await post(api.url, 50));
    await waitFor('31 jobs waiting', async () => (await queueDepth(env, 'jobs')) === 31);

    const worker = await start({ ROLE: 'worker', SECPLAT_BATCH_SIZE: '20', INSTANCE_ID: 'w' });
    await waitFor('the first call held at the gate', async () => gate.held === 1);
    // One slot and a call held: 20 × (0 free slots + 2) entries are wanted, two or three 50-domain jobs. Judged
    // by the first job alone (1 entry) it wanted 40 jobs and took every one; watch what it holds for a while.
    let most = 0;
    const until = Date.now() + 1000;
    while (Date.now() < until) {
      most = Math.max(most, worker.ctx.broker.consumerState.held);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(most, 'jobs held at most').to.be.at.most(6);
    expect(await queueDepth(env, 'jobs'), 'jobs left for other workers').to.be.at.least(25);
    gate.open();
    await waitFor('every batch succeeded', () => allSucceeded(batches), 60_000);
  });

  it('when the jobs a worker holds already fill its calls, then it leaves the other jobs in the queue and a second worker takes them', async () => {
    const busy = await start({ SECPLAT_BATCH_SIZE: '5', INSTANCE_ID: 'busy' });
    const big = await post(busy.url, 40);
    await waitFor('one call held and the next prepared', async () => gate.held === 1 && (await inProgress([big.id])) === 10);
    // Holding 30 unclaimed entries, far more than one call slot needs: it keeps just the one consumer (busy).
    await waitFor('the busy worker down to the job it holds', async () => {
      const s = busy.ctx.broker.consumerState;
      return s.consumers === 1 && s.held === 1;
    });
    const small: Batch[] = [];
    for (let i = 0; i < 6; i++) small.push(await post(busy.url, 1));
    await start({ SECPLAT_BATCH_SIZE: '5', INSTANCE_ID: 'other', ROLE: 'worker', SECPLAT_BASE_URL: simUrl });

    await waitFor('the small batches deleted by the other worker', () => allSucceeded(small));
    expect(gate.calls, 'calls of the busy worker while the other worked').to.have.length(1);
    for (const b of small) {
      expect((await listAttempts(db, b.id)).map((a) => a.instanceId), b.id).to.deep.equal(['other']);
    }
    expect(busy.ctx.broker.consumerState.held, 'jobs the busy worker holds').to.equal(1);
    gate.open();
    await waitFor('the big batch succeeded', () => allSucceeded([big]));
    expect(dispositions.filter((d) => d.instanceId === 'busy').map((d) => d.messageId)).to.deep.equal([big.id]);
  });
});
