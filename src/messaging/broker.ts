/**
 * The RabbitMQ side: one recovering connection (amqplib's own connection recovery), a confirm channel for
 * publishing and, for workers, a consumer channel. amqplib reconnects the connection; channels, topology
 * and consumers are re-created in its `setup` hook after every (re)connect.
 *
 * How many jobs a worker holds adapts to what it needs to fill its calls (JobDemand), within AMQP_PREFETCH.
 * A quorum queue applies a prefetch change only to consumers started after it (and has no channel-wide
 * "global" prefetch), so the credit is a number of consumers instead: each takes one job at a time
 * (prefetch 1), one more is opened while the worker wants another job, and one whose job just ended is
 * cancelled (before the ack) while the worker holds more than it needs. A cancelled consumer's unacked job
 * stays on the channel and is still acked or nacked as usual. An idle consumer is never cancelled: a job
 * may be on its way to it, and a quorum queue takes such a job back as a failed delivery, so jobs came
 * back redelivered and, after AMQP_DELIVERY_LIMIT of those, went to the parked queue unseen. A consumer
 * holding its one job has nothing on its way (prefetch 1), so cancelling it is safe.
 */
import { randomUUID } from 'node:crypto';
import amqp, { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, type Message } from 'amqplib';
import { DependencyUnavailableError } from '../lib/errors.js';
import { redactUrl, type Logger } from '../lib/logger.js';
import { declareTopology, type Topology } from './topology.js';

/**
 * What caused a job: a callback (`first_run`), a retry tier (`retry`), the relay's stalled sweep
 * (`stalled_sweep`) or an operator's replay (`replay`). Recorded with every attempt it leads to.
 */
export const JOB_TRIGGERS = ['first_run', 'retry', 'stalled_sweep', 'replay'] as const;
export type JobTrigger = (typeof JOB_TRIGGERS)[number];

/** A job body. `trigger` is absent in jobs published before it existed: they count as first_run. */
export interface Job { messageId: string; attempt: number; trigger?: JobTrigger }

/** What a consumer decided about one delivery. */
export type Disposition =
  | { action: 'ack' }
  | { action: 'retry'; tier: number; job: Job }   // publish to the retry tier, then ack
  | { action: 'park'; reason: string }              // dead-letter to the parked queue
  | { action: 'requeue' };                          // give it back now (counts toward the delivery limit)

/**
 * Whether a worker wants jobs (the call packer, src/pipeline/call-packer.ts). While it wants `another`, one
 * consumer waits for a delivery; while `surplus`, the consumer of a job that ended is closed instead of
 * taking the next one. AMQP_PREFETCH bounds the jobs held either way.
 */
export interface JobDemand {
  wanted(): { another: boolean; surplus: boolean };
  /** Calls `listener` whenever `wanted()` may have changed. */
  onChange(listener: () => void): void;
}

/** Decides about one delivery; without `demand`, the worker holds AMQP_PREFETCH jobs whenever it can. */
export type JobHandler = ((msg: ConsumeMessage) => Promise<Disposition>) & { readonly demand?: JobDemand };

export interface BrokerOptions {
  url: string;
  topology: Topology;
  deliveryLimit: number;
  confirmTimeoutMs: number;
  /** Most jobs held (unacked) at once by this process's consumers. */
  prefetch: number;
  logger: Logger;
}

export class Broker {
  private connection: Awaited<ReturnType<typeof connectRecovering>> | undefined;
  private publisher: ConfirmChannel | undefined;
  private consumers: ConsumerPool | undefined;
  private consumerChannel: Channel | undefined;
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
    handler?.demand?.onChange(() => this.consumers?.reconcile());
    this.connection = await connectRecovering(this.opts.url, (model) => this.setup(model));
    this.connection.on('disconnect', (err: Error) => {
      this.publisher = undefined;
      this.consumers?.abandon();
      this.consumers = undefined;
      this.consumerChannel = undefined;
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
      // Applies to every consumer opened on this channel from now on: one unacked job each.
      await channel.prefetch(1);
      const handler = this.handler;
      const pool: ConsumerPool = new ConsumerPool({
        channel, queue: this.opts.topology.jobsQueue, max: this.opts.prefetch, demand: handler.demand, logger: this.opts.logger,
        onMessage: (msg) => this.track(this.dispatch(channel, pool, handler, msg)),
        // The broker cancelled a consumer (e.g. the queue was deleted): rebuild, do not go quiet.
        onCancelledByBroker: recycle('consumer (cancelled by the broker)'),
      });
      await pool.start();
      this.consumers = pool;
      this.consumerChannel = channel;
    }
    this.publisher = publisher;
    this.opts.logger.info('rabbitmq connected', { consuming: this.handler !== undefined });
  }

  /** Stops taking new jobs; deliveries already received keep running. */
  async cancelConsumer(): Promise<void> {
    this.handler = undefined;
    const pool = this.consumers;
    this.consumers = undefined;
    await pool?.cancelAll();
  }

  /** Consumers open and jobs held by them, for tests and diagnostics. */
  get consumerState(): { consumers: number; held: number } {
    return this.consumers?.state ?? { consumers: 0, held: 0 };
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
    // The consumer channel first, and gracefully: a quorum queue may not yet have applied the last acks when
    // the connection goes, and then hands those jobs out again (seen with an ack sent just before the close).
    await this.consumerChannel?.close().catch(() => undefined);
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

  private async dispatch(channel: Channel, pool: ConsumerPool, handler: JobHandler, msg: ConsumeMessage): Promise<void> {
    let d: Disposition;
    try {
      d = await handler(msg);
    } catch (err) {
      this.opts.logger.error('job handler failed unexpectedly; requeueing', { err });
      d = { action: 'requeue' };
    }
    const tag = msg.fields.consumerTag;
    // Before the ack: a consumer cancelled first takes no next job in its place.
    await pool.beforeSettle(tag);
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
    } finally {
      pool.settled(tag);
    }
  }

  private track(p: Promise<void>): void {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }
}

interface ConsumerPoolOptions {
  channel: Channel;
  queue: string;
  /** AMQP_PREFETCH: most consumers (so jobs) at once. */
  max: number;
  demand: JobDemand | undefined;
  logger: Logger;
  onMessage: (msg: ConsumeMessage) => void;
  onCancelledByBroker: () => void;
}

/**
 * The consumers of one channel, each holding at most one job (prefetch 1): the number of jobs a worker
 * holds is the number of its consumers, kept between 1 and AMQP_PREFETCH by its JobDemand. Consumers are
 * opened as the demand asks and closed only when their job ends (beforeSettle), never while idle (see the
 * module comment). Adjustments run one at a time, after the current turn, so a burst of deliveries or
 * demand changes makes one adjustment.
 */
class ConsumerPool {
  /** By consumer tag: jobs it holds (0 or 1), and whether it is being cancelled. */
  private readonly consumers = new Map<string, { holding: number; closing: boolean }>();
  private opening = 0;
  private adjusting = false;
  private again = false;
  private closed = false;

  constructor(private readonly o: ConsumerPoolOptions) {}

  get state(): { consumers: number; held: number } {
    let held = 0;
    for (const c of this.consumers.values()) held += c.holding;
    return { consumers: this.consumers.size, held };
  }

  /** Opens the first consumers (failing setup, so amqplib retries, if it cannot). */
  async start(): Promise<void> {
    await this.adjust();
  }

  reconcile(): void {
    if (this.closed) return;
    if (this.adjusting) {
      this.again = true;
      return;
    }
    this.adjusting = true;
    setImmediate(() => {
      void (async () => {
        try {
          do {
            this.again = false;
            await this.adjust().catch((err: Error) => this.o.logger.warn('could not adjust the consumers', { err: err.message }));
          } while (this.again && !this.closed);
        } finally {
          this.adjusting = false;
        }
      })();
    });
  }

  /**
   * Its job is done: unless this process holds more than it needs, the consumer takes the next one. Called
   * before the ack, while the consumer still holds its job, so no delivery can be on its way to it.
   */
  async beforeSettle(tag: string): Promise<void> {
    const c = this.consumers.get(tag);
    if (!c || c.closing || this.closed || !this.o.demand?.wanted().surplus || this.staying() <= 1) return;
    c.closing = true;
    await this.o.channel.cancel(tag).catch(() => undefined);
  }

  settled(tag: string): void {
    const c = this.consumers.get(tag);
    if (c) {
      c.holding = Math.max(0, c.holding - 1);
      if (c.closing && c.holding === 0) this.consumers.delete(tag);
    }
    this.reconcile();
  }

  /**
   * Stops every consumer (shutdown); jobs held keep running and are settled as usual. A job on its way to an
   * idle one goes back to the queue counted as a delivery, as it would with the channel's close.
   */
  async cancelAll(): Promise<void> {
    this.closed = true;
    const tags = [...this.consumers].filter(([, c]) => !c.closing).map(([tag]) => tag);
    for (const tag of tags) this.consumers.get(tag)!.closing = true;
    await Promise.all(tags.map((tag) => this.o.channel.cancel(tag).catch(() => undefined)));
  }

  /** The channel is gone (its jobs went back to the queue with it): adjust nothing more. */
  abandon(): void {
    this.closed = true;
  }

  /** Consumers that may still be given a job, or hold one (the bound AMQP_PREFETCH applies to these). */
  private open(): number {
    let n = this.opening;
    for (const c of this.consumers.values()) if (!c.closing || c.holding > 0) n++;
    return n;
  }

  /** Consumers not being cancelled: never fewer than one, so a worker with nothing to do takes the next job. */
  private staying(): number {
    let n = this.opening;
    for (const c of this.consumers.values()) if (!c.closing) n++;
    return n;
  }

  /**
   * Opens a consumer while the demand wants another job and none is waiting for one. One at a time: an idle
   * consumer is never cancelled, so every one opened takes a job sooner or later, and each delivery (once
   * the packer knows its size) makes the next adjustment. Without a demand, AMQP_PREFETCH wait at once.
   */
  private async adjust(): Promise<void> {
    if (this.closed) return;
    const wanted = this.o.demand ? Number(this.o.demand.wanted().another) : this.o.max;
    let waiting = this.opening;
    for (const c of this.consumers.values()) if (!c.closing && c.holding === 0) waiting++;
    const n = Math.min(wanted - waiting, this.o.max - this.open());
    if (n > 0) await Promise.all(Array.from({ length: n }, () => this.openOne()));
  }

  private async openOne(): Promise<void> {
    this.opening++;
    try {
      const { consumerTag } = await this.o.channel.consume(this.o.queue, (msg) => {
        if (!msg) return this.o.onCancelledByBroker();
        const tag = msg.fields.consumerTag;
        const c = this.consumers.get(tag) ?? { holding: 0, closing: false };
        this.consumers.set(tag, c);
        c.holding++;
        // The handler registers the job before the pool looks at the demand again.
        this.o.onMessage(msg);
        this.reconcile();
      });
      if (!this.consumers.has(consumerTag)) this.consumers.set(consumerTag, { holding: 0, closing: false });
      if (this.closed) {
        this.consumers.get(consumerTag)!.closing = true;
        await this.o.channel.cancel(consumerTag).catch(() => undefined);
      }
    } finally {
      this.opening--;
    }
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
