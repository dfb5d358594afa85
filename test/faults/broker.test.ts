/**
 * Faults on the RabbitMQ side (issue 3, scenarios 1, 2 and 10): the broker unreachable while callbacks
 * arrive, the workers' connection cut mid-batch, and job bodies that cannot be parsed. The broker itself
 * is never touched: each scenario cuts its own TCP proxy in front of it.
 */
import amqp from 'amqplib';
import { expect } from 'chai';
import { topologyNames } from '../../src/messaging/topology.js';
import { RABBITMQ_URL, messageId, queueDepth, rand, waitFor } from '../helpers/env.js';
import { FaultRig, logCount, metric, readiness } from '../helpers/fault-rig.js';

describe('faults: RabbitMQ', function () {
  let rig: FaultRig | undefined;

  afterEach(async function () {
    await rig?.close(this.currentTest?.state === 'failed');
    rig = undefined;
  });

  async function queuesDrained(r: FaultRig): Promise<void> {
    await waitFor('jobs queue empty', async () => (await queueDepth(r.env, 'jobs')) === 0, 30_000);
    expect(await queueDepth(r.env, 'parked'), 'parked jobs').to.equal(0);
  }

  it('(1) when RabbitMQ is unreachable while callbacks arrive, then they are answered OK from the ledger, published once it is back, and every domain is deleted once', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 50 });
    const amqpProxy = await r.proxyFor('RABBITMQ_URL');
    const svc = await r.spawn('host-1', amqpProxy.env);

    amqpProxy.proxy.close();
    await waitFor('readiness to show RabbitMQ down', async () => (await readiness(svc.url)).checks.rabbitmq !== 'ok');
    const batches = [await r.seedBatch(15), await r.seedBatch(15), await r.seedBatch(15)];
    for (const b of batches) await r.post(svc.url, b);

    // The relay tries again while the broker is still away (each callback's own publish fails at most
    // once, so two more failures are relay passes), and everything keeps waiting in the ledger.
    await waitFor('two relay passes to fail', async () =>
      (await metric(svc.url, 'pcp_queue_publish_failures_total')) >= batches.length + 2, 30_000);
    const { rows } = await r.db.query<{ pending: boolean }>(
      'SELECT publish_pending AS pending FROM batch WHERE message_id = ANY($1)', [batches.map((b) => b.id)]);
    expect(rows.map((x) => x.pending), 'publish_pending while the broker is away').to.deep.equal([true, true, true]);
    for (const b of batches) expect(await r.counts(b.id)).to.deep.equal({ pending: 15 });
    expect(r.sim.stats().deleteCalls, 'delete calls while no job could be published').to.equal(0);

    amqpProxy.proxy.resume();
    await waitFor('every domain succeeded', () => r.allSucceeded(batches), 60_000);
    const { rows: after } = await r.db.query<{ pending: boolean }>(
      'SELECT publish_pending AS pending FROM batch WHERE message_id = ANY($1)', [batches.map((b) => b.id)]);
    expect(after.map((x) => x.pending), 'publish_pending once published').to.deep.equal([false, false, false]);
    await r.assertNothingLost(batches);
    expect(r.sim.stats().tokenFetches, 'token fetches').to.equal(1);
    expect(logCount(svc, '"rabbitmq disconnected'), 'the service saw the cut').to.be.at.least(1);
    await queuesDrained(r);
  });

  it('(2) when the workers’ RabbitMQ connection is cut while they consume, then they reconnect by themselves and every domain is deleted once', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 100 });
    const amqpProxy = await r.proxyFor('RABBITMQ_URL');
    const [api, worker] = await Promise.all([
      r.spawn('api', { ROLE: 'api' }),
      r.spawn('worker', { ...amqpProxy.env, ROLE: 'worker' }),
    ]);
    const first = await r.seedBatch(60);
    await r.post(api.url, first);
    await waitFor('the worker mid-batch', async () => ((await r.counts(first.id)).succeeded ?? 0) >= 10);

    amqpProxy.proxy.close();
    await waitFor('the worker to see the cut', async () => logCount(worker, '"rabbitmq disconnected') >= 1);
    // A callback arriving meanwhile is published by the API (its own connection) and waits in the queue.
    const second = await r.seedBatch(20);
    await r.post(api.url, second);
    await waitFor('the second job waiting in the queue', async () => (await queueDepth(r.env, 'jobs')) >= 1);
    // While the broker is away the worker keeps trying, fails, and says so on /readyz.
    await waitFor('a reconnect attempt to fail', async () => logCount(worker, '"rabbitmq connect attempt failed"') >= 1);
    expect((await readiness(worker.url)).checks.rabbitmq).to.not.equal('ok');

    amqpProxy.proxy.resume();
    await waitFor('the worker to reconnect', async () => logCount(worker, '"rabbitmq connected"') >= 2, 30_000);
    await waitFor('both batches succeeded', () => r.allSucceeded([first, second]), 60_000);
    await r.assertNothingLost([first, second]);
    expect(r.sim.stats().tokenFetches, 'token fetches').to.equal(1);
    await queuesDrained(r);
  });

  /** Publishes raw bodies straight to this test's jobs exchange, as a buggy or hostile publisher would. */
  async function publishRaw(r: FaultRig, bodies: Buffer[]): Promise<void> {
    const t = topologyNames(r.env.AMQP_PREFIX!, [1]);
    const conn = await amqp.connect(RABBITMQ_URL);
    try {
      const ch = await conn.createConfirmChannel();
      for (const body of bodies) ch.publish(t.jobsExchange, t.jobRoutingKey, body, { persistent: true });
      await ch.waitForConfirms();
    } finally {
      await conn.close();
    }
  }

  /** JOB_PARKED alarms written for the poison bodies carrying `marker`, or for jobs of `ghost`. */
  async function poisonAlarms(r: FaultRig, marker: string, ghost?: string) {
    return (await r.alarms({ type: 'JOB_PARKED' })).filter((a) =>
      (ghost !== undefined && a.messageId === ghost) || JSON.stringify(a.details ?? '').includes(marker) || a.content.includes(marker));
  }

  it('(10) when job bodies cannot be parsed, then each is parked with an alarm and the jobs behind them are still processed', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 20 });
    const svc = await r.spawn('host-1');
    const marker = `poison${rand()}`;
    const ghost = messageId(); // a well-formed job for a batch that does not exist
    const unparseable = [
      Buffer.from(`{not json ${marker}`),
      Buffer.from(JSON.stringify({ messageId: `../${marker}`, attempt: 0 })),
      Buffer.from(JSON.stringify({ messageId: ghost, attempt: -1, marker })),
      Buffer.concat([Buffer.from([0xff, 0xfe, 0xc3, 0x28]), Buffer.from(marker)]), // not UTF-8
    ];
    // Poison bodies belong to no batch: they repeat one active JOB_PARKED alarm (counted in occurrences).
    const poisonAlarm = async () => (await r.alarms({ type: 'JOB_PARKED' })).find((a) => a.messageId === null && a.state !== 'resolved');
    const occurrencesBefore = (await poisonAlarm())?.occurrences ?? 0;
    const good = [await r.seedBatch(10), await r.seedBatch(10)];
    // Poison first, good jobs in between and behind: the consumer must get past every one of them.
    await publishRaw(r, unparseable.slice(0, 3));
    await r.post(svc.url, good[0]!);
    await publishRaw(r, [...unparseable.slice(3), Buffer.from(JSON.stringify({ messageId: ghost, attempt: 0 }))]);
    await r.post(svc.url, good[1]!);

    await waitFor('the good batches succeeded', () => r.allSucceeded(good), 30_000);
    await waitFor('every poison job parked', async () => (await queueDepth(r.env, 'parked')) === unparseable.length + 1, 30_000);
    expect(await queueDepth(r.env, 'jobs'), 'jobs left in the queue').to.equal(0);

    const alarms = await poisonAlarms(r, marker, ghost);
    const active = await poisonAlarm();
    expect(active?.occurrences, 'the active JOB_PARKED alarm counts each unparseable body').to.equal(occurrencesBefore + unparseable.length);
    expect(active!.content).to.match(/^job parked: poison message: /);
    expect(JSON.stringify(active!.details) + active!.content, 'it shows the latest poison body').to.include(marker);
    expect(alarms.filter((a) => a.messageId === ghost), 'JOB_PARKED alarm for the job of an unknown batch').to.have.length(1);

    expect(svc.proc.exitCode, 'the service is still running').to.equal(null);
    expect((await readiness(svc.url)).status).to.equal(200);
    await r.assertNothingLost(good);
  });

  // A NUL byte cannot be stored in PostgreSQL text/jsonb; the alarm must still be written (raiseAlarm replaces it).
  it('(10b) when a job body holds a NUL byte, then it is parked with an alarm too', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 20 });
    const svc = await r.spawn('host-1');
    const marker = `poison${rand()}`;
    await publishRaw(r, [Buffer.concat([Buffer.from([0x00, 0x01]), Buffer.from(marker)])]);
    const good = await r.seedBatch(5);
    await r.post(svc.url, good);
    await waitFor('the good batch succeeded', () => r.allSucceeded([good]), 30_000);
    await waitFor('the poison job parked', async () => (await queueDepth(r.env, 'parked')) === 1, 30_000);
    expect(await poisonAlarms(r, marker), 'JOB_PARKED alarm for the body with a NUL byte').to.have.length(1);
  });
});
