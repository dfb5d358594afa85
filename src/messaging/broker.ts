/**
 * The RabbitMQ side: one recovering connection (amqplib's own connection recovery), a confirm channel for
 * publishing and, for workers, a consumer channel. amqplib reconnects the connection; channels, topology
 * and consumers are re-created in its `setup` hook after every (re)connect.
 */
import { randomUUID } from 'node:crypto';
import amqp, { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, type Message } from 'amqplib';
import { DependencyUnavailableError } from '../lib/errors.js';
import { redactUrl, type Logger } from '../lib/logger.js';
import { declareTopology, type Topology } from './topology.js';

export interface Job { messageId: string; attempt: number }

/** What a consumer decided about one delivery. */
export type Disposition =
  | { action: 'ack' }
  | { action: 'retry'; tier: number; job: Job }   // publish to the retry tier, then ack
  | { action: 'park'; reason: string }              // dead-letter to the parked queue
  | { action: 'requeue' };                          // give it back now (counts toward the delivery limit)

export type JobHandler = (msg: ConsumeMessage) => Promise<Disposition>;

export interface BrokerOptions {
  url: string;
  topology: Topology;
  deliveryLimit: number;
  confirmTimeoutMs: number;
  prefetch: number;
  logger: Logger;
}

export class Broker {
  private connection: Awaited<ReturnType<typeof connectRecovering>> | undefined;
  private publisher: ConfirmChannel | undefined;
  private consumer: { channel: Channel; tag: string } | undefined;
  private handler: JobHandler | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly returned = new Set<string>();
  private closed = false;

  constructor(private readonly opts: BrokerOptions) {}

  /**
   * Starts connecting in the background; with a handler, this process also consumes jobs. Publishing
   * fails fast (DependencyUnavailableError) until connected.
   */
  async start(handler?: JobHandler): Promise<void> {
    this.handler = handler;
    this.connection = await connectRecovering(this.opts.url, (model) => this.setup(model));
    this.connection.on('disconnect', (err: Error) => {
      this.publisher = undefined;
      this.consumer = undefined;
      this.opts.logger.warn('rabbitmq disconnected, reconnecting', { err: err.message });
    });
    this.connection.on('connect-failed', (err: Error) => this.opts.logger.warn('rabbitmq connect attempt failed', { err: err.message }));
    this.connection.on('error', (err: Error) => this.opts.logger.warn('rabbitmq connection error', { err: err.message }));
  }

  get isConnected(): boolean { return this.publisher !== undefined; }

  /** Resolves once the broker is connected, or rejects after `timeoutMs`. */
  async waitUntilConnected(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.isConnected) {
      if (Date.now() > deadline) throw new DependencyUnavailableError('rabbitmq', `RabbitMQ not reachable at ${redactUrl(this.opts.url)} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Called by amqplib after every successful (re)connect. */
  private async setup(model: ChannelModel): Promise<void> {
    // amqplib listens on the model only after setup; until then an 'error' without a listener would
    // crash the process (e.g. a 406 when a queue argument changed). Failing setup makes it retry.
    model.on('error', (err: Error) => this.opts.logger.error('rabbitmq connection error during setup', { err: err.message }));
    // A channel can close while its connection lives on (e.g. a channel error); then recycle the whole
    // connection so recovery rebuilds everything in one known way.
    const recycle = (what: string) => () => {
      if (this.closed) return;
      this.opts.logger.warn(`rabbitmq ${what} closed, reconnecting`);
      model.close().catch(() => undefined);
    };
    const publisher = await model.createConfirmChannel();
    publisher.on('error', (err: Error) => this.opts.logger.error('rabbitmq publisher channel error', { err: err.message }));
    publisher.on('close', recycle('publisher channel'));
    // Published with `mandatory`: a job that reaches no queue comes back here before its confirm.
    publisher.on('return', (msg: Message) => this.returned.add(String(msg.properties.correlationId)));
    await declareTopology(publisher, this.opts.topology, this.opts.deliveryLimit);
    if (this.handler) {
      const channel = await model.createChannel();
      channel.on('error', (err: Error) => this.opts.logger.error('rabbitmq consumer channel error', { err: err.message }));
      channel.on('close', recycle('consumer channel'));
      await channel.prefetch(this.opts.prefetch);
      const handler = this.handler;
      const { consumerTag } = await channel.consume(this.opts.topology.jobsQueue, (msg) => {
        // null = the broker cancelled our consumer (e.g. the queue was deleted): rebuild, do not go quiet.
        if (!msg) return recycle('consumer (cancelled by the broker)')();
        this.track(this.dispatch(channel, handler, msg));
      });
      this.consumer = { channel, tag: consumerTag };
    }
    this.publisher = publisher;
    this.opts.logger.info('rabbitmq connected', { consuming: this.handler !== undefined });
  }

  /** Stops taking new jobs; deliveries already received keep running. */
  async cancelConsumer(): Promise<void> {
    this.handler = undefined;
    const c = this.consumer;
    this.consumer = undefined;
    if (c) await c.channel.cancel(c.tag).catch(() => undefined);
  }

  /** Waits for deliveries in progress (bounded by the caller's shutdown deadline). */
  async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  async publishJob(job: Job): Promise<void> {
    const t = this.opts.topology;
    await this.publish(t.jobsExchange, t.jobRoutingKey, job);
  }

  /**
   * Messages waiting in the jobs queue, each retry tier (`retry_<ms>`) and the parked queue, for /metrics;
   * undefined while not connected. Uses a short-lived channel of its own: checkQueue on a missing queue
   * closes its channel, and on the publisher's that would recycle the whole connection.
   */
  async queueDepths(): Promise<Record<string, number> | undefined> {
    if (!this.connection || !this.isConnected) return undefined;
    const t = this.opts.topology;
    const queues: [string, string][] = [
      ['jobs', t.jobsQueue], ...t.retryQueues.map((q): [string, string] => [`retry_${q.delayMs}`, q.name]), ['parked', t.parkedQueue],
    ];
    const ch = await this.connection.createChannel();
    ch.on('error', () => undefined); // a 404 closes only this channel; the caller sees the rejected checkQueue
    try {
      const depths: Record<string, number> = {};
      for (const [label, name] of queues) depths[label] = (await ch.checkQueue(name)).messageCount;
      return depths;
    } finally {
      await ch.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.connection?.close().catch(() => undefined);
  }

  /** Publishes persistently and waits for the broker's confirm, bounded by AMQP_CONFIRM_TIMEOUT_MS. */
  private async publish(exchange: string, routingKey: string, job: Job): Promise<void> {
    const ch = this.publisher;
    if (!ch) throw new DependencyUnavailableError('rabbitmq', 'RabbitMQ is not connected');
    const body = Buffer.from(JSON.stringify(job));
    const correlationId = randomUUID();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        new Promise<void>((resolve, reject) => {
          ch.publish(exchange, routingKey, body, { persistent: true, mandatory: true, contentType: 'application/json', messageId: job.messageId, correlationId },
            (err) => {
              if (err) reject(new DependencyUnavailableError('rabbitmq', 'RabbitMQ refused the message (nack)', err));
              else if (this.returned.delete(correlationId)) reject(new DependencyUnavailableError('rabbitmq', `no queue is bound for ${exchange}/${routingKey}; the job was returned`));
              else resolve();
            });
        }),
        new Promise<void>((_, reject) => {
          timer = setTimeout(() => reject(new DependencyUnavailableError('rabbitmq', `no publisher confirm within ${this.opts.confirmTimeoutMs} ms`)), this.opts.confirmTimeoutMs);
        }),
      ]);
    } catch (err) {
      if (err instanceof DependencyUnavailableError) throw err;
      throw new DependencyUnavailableError('rabbitmq', `publish failed: ${(err as Error).message}`, err);
    } finally {
      clearTimeout(timer);
      this.returned.delete(correlationId);
    }
  }

  private async dispatch(channel: Channel, handler: JobHandler, msg: ConsumeMessage): Promise<void> {
    let d: Disposition;
    try {
      d = await handler(msg);
    } catch (err) {
      this.opts.logger.error('job handler failed unexpectedly; requeueing', { err });
      d = { action: 'requeue' };
    }
    try {
      if (d.action === 'retry') {
        const tier = this.opts.topology.retryQueues[d.tier];
        if (!tier) throw new Error(`no retry tier ${d.tier}`);
        await this.publish(this.opts.topology.retryExchange, tier.routingKey, d.job);
        channel.ack(msg);
      } else if (d.action === 'ack') {
        channel.ack(msg);
      } else if (d.action === 'park') {
        channel.nack(msg, false, false);
      } else {
        // A short pause so a failing dependency does not turn into a hot redelivery loop; not while
        // shutting down (consumer cancelled), where the job goes back at once for another worker.
        if (this.handler) await new Promise((r) => setTimeout(r, 1000));
        channel.nack(msg, false, true);
      }
    } catch (err) {
      // The retry publish failed or the channel is gone: give the job back (or let the broker redeliver it).
      this.opts.logger.warn('could not settle delivery; it will be redelivered', { err: (err as Error).message });
      try { channel.nack(msg, false, true); } catch { /* channel closed: the broker redelivers */ }
    }
  }

  private track(p: Promise<void>): void {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }
}

function connectRecovering(url: string, setup: (model: ChannelModel) => Promise<void>) {
  // Heartbeats notice a dead peer within seconds; amqplib takes them from the URL.
  const withHeartbeat = /[?&]heartbeat=/.test(url) ? url : `${url}${url.includes('?') ? '&' : '?'}heartbeat=10`;
  return amqp.connect(withHeartbeat, {
    timeout: 5000,
    recovery: { initialDelay: 200, maxDelay: 5000, maxRetries: Infinity, waitForConnect: false, setup },
  });
}
