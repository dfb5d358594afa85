/**
 * The vendor's own progress fields (`percent`, `process`) against the real services and the simulator: a
 * domain the pipeline reports unfinished is held as awaiting_pipeline and never sent, a later callback
 * reporting it finished releases it, a finished one is never held again, a long wait raises an alarm, and
 * malformed values are refused.
 */
import { expect } from 'chai';
import type { ConsumeMessage } from 'amqplib';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { startService } from '../../src/main.js';
import { createJobHandler } from '../../src/pipeline/process-batch.js';
import { alarmAwaitingPipeline } from '../../src/pipeline/publish.js';
import { findStalled } from '../../src/store/ledger.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import {
  SECPLAT_PASSWORD, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, postCallback, seedInventory,
  statusCounts, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';

interface Row { domain: string; status: string; percent: number | null; process: boolean | null; attempts: number; detail: string | null }
interface AlarmRow { tag: string; content: string; details: { awaitingCount: number; domains: { domain: string; percent: number | null; process: boolean | null }[] }; occurrences: number }

describe('pipeline progress fields (percent, process)', function () {
  let sim: Simulator;
  let db: pg.Pool;
  let env: Record<string, string>;
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  let url: string;

  async function start(overrides: Record<string, string> = {}): Promise<void> {
    env = { ...env, ...overrides };
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
    url = `http://127.0.0.1:${service.port}`;
  }

  async function rows(id: string): Promise<Map<string, Row>> {
    const r = await db.query<Row>('SELECT domain, status, percent, process, attempts, detail FROM batch_domain WHERE message_id = $1', [id]);
    return new Map(r.rows.map((x) => [x.domain, x]));
  }

  async function alarms(id: string, type: string): Promise<AlarmRow[]> {
    const r = await db.query<AlarmRow>(
      'SELECT tag, content, details, occurrences FROM sys_task_process_alarm WHERE message_id = $1 AND alarm_type = $2 ORDER BY id', [id, type]);
    return r.rows;
  }

  /** One delivery of a batch's job to this process's own handler, as the broker would hand it over. */
  async function deliver(id: string): Promise<unknown> {
    const ctx = service!.ctx;
    const handler = createJobHandler({ ...ctx, config: ctx.config, signal: ctx.shutdownSignal });
    // Only the fields the handler reads; a real ConsumeMessage also carries fields the handler never touches.
    const msg = { content: Buffer.from(JSON.stringify({ messageId: id, attempt: 0 })), properties: { headers: {} }, fields: {} } as unknown as ConsumeMessage;
    return handler(msg);
  }

  /** A body whose items are the seed's, with the given progress fields on some of them (undefined = field absent). */
  function bodyWith(id: string, domains: string[], fields: Record<string, { percent?: unknown; process?: unknown }>) {
    const body = callbackBody(id, domains) as { data: Record<string, unknown>[]; messageId: string };
    for (const item of body.data) {
      const f = fields[item.targetName as string];
      if (!f) continue;
      for (const key of ['percent', 'process'] as const) {
        if (key in f && f[key] !== undefined) item[key] = f[key];
        else delete item[key];
      }
    }
    return body;
  }

  beforeEach(async () => {
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 10 });
    const simUrl = (await sim.start()).url;
    db = testDb();
    env = testEnv({ SECPLAT_BASE_URL: simUrl, SECPLAT_BATCH_SIZE: '5' });
  });

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    await sim.stop();
    await db.end();
    await cleanupNames(env);
  });

  it('when a callback holds an item the pipeline reports unfinished, then it is stored awaiting_pipeline with its percent and process, never claimed nor sent, while the finished ones are deleted', async () => {
    await start();
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 4);
    await seedInventory(db, domains);
    const held = domains[3]!;
    expect((await postCallback(url, bodyWith(id, domains, { [held]: { percent: 0.5, process: true } }))).status).to.equal(200);

    await waitFor('the 3 finished domains deleted', async () => (await statusCounts(db, id)).succeeded === 3);
    // A redelivery of the job (or any later pass) finds nothing it may send.
    expect(await deliver(id)).to.deep.equal({ action: 'ack' });
    const r = await rows(id);
    expect(r.get(held)).to.include({ status: 'awaiting_pipeline', percent: 0.5, process: true, attempts: 0 });
    expect(r.get(held)!.detail).to.include('percent 0.5, process true');
    for (const d of domains.slice(0, 3)) expect(r.get(d)).to.include({ status: 'succeeded', percent: 1, process: false });
    expect(sim.stats().deletedCounts).to.deep.equal(Object.fromEntries(domains.slice(0, 3).map((d) => [`uid-${d}`, 1])));
    expect(sim.stats().entriesReceived, 'the held domain never reached the platform').to.equal(3);
  });

  it('when percent and process are absent, then the items count as finished, are deleted, and their stored progress is null', async () => {
    await start();
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 2);
    await seedInventory(db, domains);
    const body = bodyWith(id, domains, Object.fromEntries(domains.map((d) => [d, {}])));
    expect(body.data.every((i) => !('percent' in i) && !('process' in i))).to.equal(true);
    expect((await postCallback(url, body)).status).to.equal(200);
    await waitFor('both deleted', async () => (await statusCounts(db, id)).succeeded === 2);
    for (const row of (await rows(id)).values()) expect(row).to.include({ percent: null, process: null });
    expect(Object.keys(sim.stats().deletedCounts)).to.have.members(domains.map((d) => `uid-${d}`));
  });

  it('when later callbacks of the same messageId report the awaiting domain still unfinished and then finished, then its progress is updated, it stays held, and then it is deleted exactly once', async () => {
    await start();
    const id = messageId();
    const [done, held] = domainsFor(id.slice(2, 10), 2) as [string, string];
    await seedInventory(db, [done, held]);
    expect((await postCallback(url, bodyWith(id, [done, held], { [held]: { percent: 0.3, process: true } }))).status).to.equal(200);
    await waitFor('the finished domain deleted', async () => (await rows(id)).get(done)?.status === 'succeeded');

    // Still unfinished: the stored progress follows the vendor, the domain stays held (the reply means committed).
    expect((await postCallback(url, bodyWith(id, [held], { [held]: { percent: 0.6, process: false } }))).status).to.equal(200);
    expect((await rows(id)).get(held)).to.include({ status: 'awaiting_pipeline', percent: 0.6, process: false, attempts: 0 });

    expect((await postCallback(url, bodyWith(id, [done, held], { [held]: { percent: 1, process: false } }))).status).to.equal(200);
    await waitFor('the released domain deleted', async () => (await rows(id)).get(held)?.status === 'succeeded');
    expect((await rows(id)).get(held)).to.include({ percent: 1, process: false, attempts: 1 });
    expect(sim.stats().deletedCounts).to.deep.equal({ [`uid-${done}`]: 1, [`uid-${held}`]: 1 });
  });

  it('when a domain already finished is reported unfinished by a later callback, then it stays finished (succeeded or pending), its stored progress is updated, and it is never deleted twice', async () => {
    await start();
    const id = messageId();
    const [deleted, other] = domainsFor(id.slice(2, 10), 2) as [string, string];
    await seedInventory(db, [deleted, other]);
    expect((await postCallback(url, callbackBody(id, [deleted, other]))).status).to.equal(200);
    await waitFor('both deleted', async () => (await statusCounts(db, id)).succeeded === 2);
    expect((await postCallback(url, bodyWith(id, [deleted], { [deleted]: { percent: 0.2, process: true } }))).status).to.equal(200);
    expect((await rows(id)).get(deleted)).to.include({ status: 'succeeded', percent: 0.2, process: true });
    await service!.stop();

    // No worker: the domain is pending (reported finished, not yet sent) when the vendor says "unfinished".
    await start({ ROLE: 'api' });
    const id2 = messageId();
    const [pending] = domainsFor(id2.slice(2, 10), 1) as [string];
    expect((await postCallback(url, callbackBody(id2, [pending]))).status).to.equal(200);
    expect((await postCallback(url, bodyWith(id2, [pending], { [pending]: { percent: 0.9, process: true } }))).status).to.equal(200);
    expect((await rows(id2)).get(pending)).to.include({ status: 'pending', percent: 0.9, process: true });
    expect(await statusCounts(db, id2)).to.deep.equal({ pending: 1 });
    expect(sim.stats().deletedCounts).to.deep.equal({ [`uid-${deleted}`]: 1, [`uid-${other}`]: 1 });
  });

  it('when a batch\'s only open domains await the pipeline, then its job is acked without a BATCH_FAILURES alarm and the stalled sweep leaves it alone; once released, the batch finishes and the alarm is raised', async () => {
    await start({ ROLE: 'api' });
    const id = messageId();
    const [held, missing] = domainsFor(id.slice(2, 10), 2) as [string, string];
    await seedInventory(db, [held]); // `missing` is not in the inventory: a failure of this batch
    expect((await postCallback(url, bodyWith(id, [held, missing], { [held]: { percent: 0.1, process: true } }))).status).to.equal(200);

    expect(await deliver(id)).to.deep.equal({ action: 'ack' });
    expect(await statusCounts(db, id)).to.deep.equal({ unknown_domain: 1, awaiting_pipeline: 1 });
    expect(await alarms(id, 'BATCH_FAILURES'), 'not finished while a domain awaits the pipeline').to.have.length(0);

    // Untouched for a day: still not stalled, as the held domain waits for the vendor, not for a worker.
    await db.query(`UPDATE batch_domain SET updated_at = now() - interval '1 day' WHERE message_id = $1`, [id]);
    await db.query(`UPDATE batch SET updated_at = now() - interval '1 day', relayed_at = NULL, publish_pending = false WHERE message_id = $1`, [id]);
    expect((await findStalled(db, 1000, 100_000)).map((b) => b.messageId)).to.not.include(id);

    expect((await postCallback(url, bodyWith(id, [held], { [held]: { percent: 1, process: false } }))).status).to.equal(200);
    expect(await statusCounts(db, id)).to.deep.equal({ unknown_domain: 1, pending: 1 });
    expect(await deliver(id)).to.deep.equal({ action: 'ack' });
    expect(await statusCounts(db, id)).to.deep.equal({ unknown_domain: 1, succeeded: 1 });
    const failures = await alarms(id, 'BATCH_FAILURES');
    expect(failures).to.have.length(1);
    expect(failures[0]!.content).to.include(missing);
    expect(sim.stats().deletedCounts).to.deep.equal({ [`uid-${held}`]: 1 });
  });

  it('when domains are still awaiting after AWAITING_PIPELINE_ALARM_MS, then one AWAITING_PIPELINE alarm names the messageId, the first 20 domains and the count, and repeats only once per period', async () => {
    const thresholdMs = 1000;
    await start({ AWAITING_PIPELINE_ALARM_MS: String(thresholdMs) });
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 24);
    await seedInventory(db, domains);
    const held = domains.slice(1); // 23 held, sorted by name in the alarm
    const fields = Object.fromEntries(held.map((d) => [d, { percent: 0.25, process: true }]));
    expect((await postCallback(url, bodyWith(id, domains, fields))).status).to.equal(200);

    const [alarm] = await waitFor('the AWAITING_PIPELINE alarm', async () => {
      const a = await alarms(id, 'AWAITING_PIPELINE');
      return a.length > 0 ? a : undefined;
    });
    const firstTwenty = [...held].sort().slice(0, 20);
    expect(JSON.parse(alarm!.tag)).to.deep.equal({ taskId: `${id}_exc`, type: 'DOMAIN_B_PIPE' });
    expect(alarm!.content).to.include(id).and.include('23 domain(s)').and.include('and 3 more');
    for (const d of firstTwenty) expect(alarm!.content).to.include(`${d} (percent 0.25, process true)`);
    expect(alarm!.details.awaitingCount).to.equal(23);
    expect(alarm!.details.domains.map((d) => d.domain)).to.deep.equal(firstTwenty);
    // Raised only once the domains had waited the whole period (both times from PostgreSQL's clock).
    const { rows: waited } = await db.query<{ ok: boolean }>(
      `SELECT bool_and(a.created_at - d.created_at >= make_interval(secs => $2::double precision / 1000)) AS ok
       FROM sys_task_process_alarm a JOIN batch_domain d ON d.message_id = a.message_id
       WHERE a.message_id = $1 AND a.alarm_type = 'AWAITING_PIPELINE' AND d.status = 'awaiting_pipeline'`, [id, thresholdMs]);
    expect(waited[0]!.ok).to.equal(true);
    await waitFor('the finished domain deleted', async () => (await statusCounts(db, id)).succeeded === 1);
    expect(sim.stats().entriesReceived).to.equal(1);

    // The relay is stopped, so these checks run alone: no repeat within the period, one after it.
    await service!.stop();
    service = undefined;
    const deps = { db, logger: captureLogger('error').logger };
    expect((await alarmAwaitingPipeline(deps, thresholdMs)).map((b) => b.messageId)).to.not.include(id);
    expect((await alarms(id, 'AWAITING_PIPELINE')).map((a) => a.occurrences)).to.deep.equal([1]);
    await waitFor('the repeat one period later', async () => (await alarmAwaitingPipeline(deps, thresholdMs)).some((b) => b.messageId === id));
    expect((await alarms(id, 'AWAITING_PIPELINE')).map((a) => a.occurrences)).to.deep.equal([2]);
  });

  const refused: [string, Record<string, unknown>, string][] = [
    ['percent is the string "1.0"', { percent: '1.0', process: false }, 'data[1].percent must be a JSON number from 0 to 1 (1 = finished), not "1.0"'],
    ['percent is 100', { percent: 100, process: false }, 'data[1].percent must be a JSON number from 0 to 1 (1 = finished), not 100'],
    ['percent is negative', { percent: -1, process: false }, 'data[1].percent must be a JSON number from 0 to 1 (1 = finished), not -1'],
    ['process is the string "false"', { percent: 1, process: 'false' }, 'data[1].process must be a JSON boolean (true or false), not "false"'],
    ['process is 0', { percent: 1, process: 0 }, 'data[1].process must be a JSON boolean (true or false), not 0'],
  ];
  for (const [when, fields, reason] of refused) {
    it(`when ${when}, then the reply is 400 in the vendor's error shape naming the item, and nothing is stored`, async () => {
      await start({ ROLE: 'api' });
      const id = messageId();
      const domains = domainsFor(id.slice(2, 10), 2);
      const res = await postCallback(url, bodyWith(id, domains, { [domains[1]!]: fields }));
      expect(res.status).to.equal(400);
      expect(res.body).to.deep.equal({ success: false, messageId: id, message: reason, status: 1 });
      const { rows: stored } = await db.query<{ n: number }>(
        `SELECT (SELECT count(*) FROM callback_audit WHERE message_id = $1) + (SELECT count(*) FROM batch WHERE message_id = $1)
              + (SELECT count(*) FROM batch_domain WHERE message_id = $1) AS n`, [id]);
      expect(Number(stored[0]!.n)).to.equal(0);
    });
  }
});
