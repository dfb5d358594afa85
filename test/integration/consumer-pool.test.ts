/**
 * The worker's adaptive consumers (ConsumerPool in src/messaging/broker.ts) against a real quorum queue. A
 * quorum queue takes back a delivery that was on its way to a consumer being cancelled, and counts it as a
 * delivery: cancelling idle consumers while jobs arrived made jobs come back redelivered and, after
 * AMQP_DELIVERY_LIMIT such returns, go to the parked queue without any worker seeing them (found by
 * `npm run bench`: a one-domain batch left pending, its job parked, nothing logged). Here a worker stops
 * wanting jobs just as a burst arrives for its idle consumers, again and again; every job must reach the
 * handler exactly once, first time, and the worker must keep a consumer to take them with.
 */
import amqp, { type ConsumeMessage } from 'amqplib';
import { expect } from 'chai';
import { Broker, type JobDemand, type JobHandler } from '../../src/messaging/broker.js';
import { topologyNames } from '../../src/messaging/topology.js';
import { captureLogger, cleanupNames, messageId, queueDepth, testEnv, waitFor } from '../helpers/env.js';

/** Jobs in each burst. */
const BURST = 40;
const ROUNDS = 10;

describe('adaptive consumers on a quorum queue', function () {
  let env: Record<string, string>;
  let worker: Broker | undefined;

  beforeEach(() => {
    env = testEnv();
  });

  afterEach(async () => {
    await worker?.close();
    worker = undefined;
    await cleanupNames(env);
  });

  it('when the worker stops wanting jobs just as a burst of them arrives for its idle consumers, then every job reaches the handler once, never redelivered, and none is parked', async () => {
    let hungry = true;
    const listeners: (() => void)[] = [];
    const demand: JobDemand = {
      wanted: () => (hungry ? { another: true, surplus: false } : { another: false, surplus: true }),
      onChange: (l) => { listeners.push(l); },
    };
    const setHungry = (h: boolean) => {
      hungry = h;
      for (const l of listeners) l();
    };
    const seen: { id: string; redelivered: boolean; count: number }[] = [];
    const handle = async (msg: ConsumeMessage) => {
      const { messageId: id } = JSON.parse(msg.content.toString('utf8')) as { messageId: string };
      seen.push({ id, redelivered: msg.fields.redelivered, count: Number(msg.properties.headers?.['x-delivery-count'] ?? 0) });
      await new Promise((r) => setTimeout(r, Math.random() * 5));
      return { action: 'ack' as const };
    };
    const t = topologyNames(env.AMQP_PREFIX!, env.RETRY_TIERS_MS!.split(',').map(Number));
    // A worker's broker side alone: the handler records each delivery and acks it a few ms later.
    worker = new Broker({
      url: env.RABBITMQ_URL!, topology: t, deliveryLimit: 5, confirmTimeoutMs: 5000, prefetch: 60, logger: captureLogger('warn').logger,
    });
    await worker.start(Object.assign(handle, { demand }) as JobHandler);
    await worker.waitUntilConnected(10_000);
    const conn = await amqp.connect(env.RABBITMQ_URL!);
    try {
      const ch = await conn.createConfirmChannel();
      for (let round = 0; round < ROUNDS; round++) {
        setHungry(true);
        await waitFor('a consumer open and idle', async () => worker!.consumerState.consumers >= 1 && worker!.consumerState.held === 0);
        // Time for the worker to open every consumer its demand would have it open.
        await new Promise((r) => setTimeout(r, 100));
        // The burst goes out, and before it can arrive the worker wants nothing more.
        const ids = Array.from({ length: BURST }, () => messageId());
        for (const id of ids) ch.publish(t.jobsExchange, t.jobRoutingKey, Buffer.from(JSON.stringify({ messageId: id, attempt: 0 })), { persistent: true });
        setHungry(false);
        await ch.waitForConfirms();
        await waitFor(`round ${round}: every job handled`, async () => ids.every((id) => seen.some((s) => s.id === id)));
      }
    } finally {
      await conn.close();
    }
    await waitFor('jobs queue empty', async () => (await queueDepth(env, 'jobs')) === 0);
    expect(seen.filter((s) => s.redelivered || s.count > 0), 'deliveries that came back').to.deep.equal([]);
    expect(seen.length, 'deliveries').to.equal(ROUNDS * BURST);
    expect(await queueDepth(env, 'parked'), 'parked jobs').to.equal(0);
  });
});
