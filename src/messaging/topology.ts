/**
 * Every exchange and queue, declared in one place.
 *
 *   jobs exchange ──job──▶ jobs queue (quorum, delivery-limit) ──dead-letter──▶ parked exchange ─▶ parked queue
 *        ▲                                 │ worker: "retry in tier i"
 *        └──dead-letter (after TTL)── retry.<i> queue ◀──<i>── retry exchange
 *
 * Delays use one queue per tier with a queue-level TTL, not per-message TTL, so a short delay is never
 * stuck behind a long one.
 */
import type { Channel } from 'amqplib';

export interface Topology {
  jobsExchange: string;
  jobsQueue: string;
  retryExchange: string;
  retryQueues: { name: string; delayMs: number; routingKey: string }[];
  parkedExchange: string;
  parkedQueue: string;
  jobRoutingKey: string;
}

export function topologyNames(prefix: string, retryTiersMs: readonly number[]): Topology {
  return {
    jobsExchange: `${prefix}.jobs`,
    jobsQueue: `${prefix}.jobs`,
    retryExchange: `${prefix}.retry`,
    retryQueues: retryTiersMs.map((delayMs, i) => ({ name: `${prefix}.retry.${delayMs}ms`, delayMs, routingKey: String(i) })),
    parkedExchange: `${prefix}.parked`,
    parkedQueue: `${prefix}.parked`,
    jobRoutingKey: 'job',
  };
}

export async function declareTopology(ch: Channel, t: Topology, deliveryLimit: number): Promise<void> {
  await ch.assertExchange(t.jobsExchange, 'direct', { durable: true });
  await ch.assertExchange(t.retryExchange, 'direct', { durable: true });
  await ch.assertExchange(t.parkedExchange, 'fanout', { durable: true });

  await ch.assertQueue(t.parkedQueue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  await ch.bindQueue(t.parkedQueue, t.parkedExchange, '');

  await ch.assertQueue(t.jobsQueue, {
    durable: true,
    arguments: {
      'x-queue-type': 'quorum',
      'x-delivery-limit': deliveryLimit,
      'x-dead-letter-exchange': t.parkedExchange,
    },
  });
  await ch.bindQueue(t.jobsQueue, t.jobsExchange, t.jobRoutingKey);

  for (const q of t.retryQueues) {
    await ch.assertQueue(q.name, {
      durable: true,
      arguments: {
        'x-queue-type': 'quorum',
        'x-message-ttl': q.delayMs,
        'x-dead-letter-exchange': t.jobsExchange,
        'x-dead-letter-routing-key': t.jobRoutingKey,
        // At-least-once dead-lettering: a delayed job is not lost on its way back to the jobs queue.
        'x-dead-letter-strategy': 'at-least-once',
        'x-overflow': 'reject-publish',
      },
    });
    await ch.bindQueue(q.name, t.retryExchange, q.routingKey);
  }
}
