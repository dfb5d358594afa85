/**
 * Getting a batch's job onto the queue, and the relay that guarantees it gets there eventually.
 */
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Job, JobTrigger } from '../messaging/broker.js';
import { raiseAlarm } from '../store/alarms.js';
import { withTransaction, type Db } from '../store/db.js';
import { findAwaitingOverdue, findStalled, findUnpublished, markRelayed, type AwaitingBatch } from '../store/ledger.js';
import { publishFlagsFor } from './ingest-batcher.js';

const STALLED_SWEEP_LOCK = 728_341_002;
const AWAITING_CHECK_LOCK = 728_341_003;

export interface JobPublisher { publishJob(job: Job): Promise<void> }

interface PublishDeps { db: Db; broker: JobPublisher; logger: Logger; metrics: Metrics }

// Most callback publishes a process lets run on after the reply; past it, replies wait for their confirm.
const UNCONFIRMED_MAX = 1000;

/**
 * Callback publishes whose confirm the reply does not wait for (acceptCallback): the commit is what makes a
 * callback safe, since the relay publishes any stored batch whose confirm never came. Counted, so that a slow
 * broker slows the replies again instead of filling memory, and shutdown waits for them before RabbitMQ closes.
 */
export class UnconfirmedPublishes {
  private readonly pending = new Set<Promise<boolean>>();

  /** Tracks a publish; true when the caller should wait for it (too many unconfirmed already). */
  add(publish: Promise<boolean>): boolean {
    this.pending.add(publish);
    void publish.finally(() => this.pending.delete(publish));
    return this.pending.size > UNCONFIRMED_MAX;
  }

  async drain(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }
}

const unconfirmed = new WeakMap<JobPublisher, UnconfirmedPublishes>();

/** The broker's UnconfirmedPublishes, built on first use; its drain runs at shutdown before the broker closes. */
export function unconfirmedFor(deps: { broker: JobPublisher; releasers?: { add(name: string, release: () => Promise<void>): void } }): UnconfirmedPublishes {
  let u = unconfirmed.get(deps.broker);
  if (!u) {
    const made = u = new UnconfirmedPublishes();
    unconfirmed.set(deps.broker, made);
    deps.releasers?.add('unconfirmed publishes', () => made.drain());
  }
  return u;
}

/**
 * Publishes a batch's job and waits for the broker's confirm. A failure is logged and left to the relay: the
 * batch is already in the ledger (its publish flag set), so the caller may still answer OK. `trigger` says
 * what caused the job (a callback, a replay); the relay re-publishes with the one stored on the batch.
 * The outcome reaches the batch row in bulk, after this returns (PublishFlagWriter: one UPDATE for every
 * confirm of the last PUBLISH_FLAG_FLUSH_MS instead of a commit per job); until then the flag stays set,
 * which the relay leaves alone for AMQP_CONFIRM_TIMEOUT_MS + 1 s.
 */
export async function publishBatchJob(deps: PublishDeps, messageId: string, updatedAt: Date, trigger: JobTrigger): Promise<boolean> {
  const flags = publishFlagsFor(deps);
  try {
    await deps.broker.publishJob({ messageId, attempt: 0, trigger });
  } catch (err) {
    deps.metrics.publishFailures.inc();
    deps.logger.warn('job not published; the relay will publish it', { messageId, err: (err as Error).message });
    flags.failed(messageId, (err as Error).message);
    return false;
  }
  flags.confirmed(messageId, updatedAt);
  return true;
}

export interface RelayOptions { intervalMs: number; retryTiersMs: readonly number[]; confirmTimeoutMs: number }

/** The relay also checks on domains awaiting the pipeline; AWAITING_PIPELINE_ALARM_MS comes from the config. */
export interface RelayDeps extends PublishDeps { config: { awaitingPipelineAlarmMs: number } }

/**
 * Every interval: publishes batches whose job the broker never confirmed, re-publishes batches whose
 * open domains nobody has touched for longer than the longest retry delay (a lost or parked job, a dead
 * worker), and raises an AWAITING_PIPELINE alarm for batches whose domains the pipeline has reported
 * unfinished for longer than AWAITING_PIPELINE_ALARM_MS. Jobs are idempotent, so publishing one twice
 * costs a no-op, never a double delete.
 */
export function startRelay(deps: RelayDeps, opts: RelayOptions): { stop(): Promise<void>; runOnce(): Promise<number> } {
  // Leave a batch to the request that stored it until that request's publish has surely ended.
  const unpublishedAfterMs = opts.confirmTimeoutMs + 1000;
  const stalledAfterMs = Math.max(...opts.retryTiersMs) + 60_000;
  let running: Promise<number> | undefined;
  let stopped = false;

  const runOnce = async (): Promise<number> => {
    let published = 0;
    for (const b of await findUnpublished(deps.db, unpublishedAfterMs, 200)) {
      if (await publishBatchJob(deps, b.messageId, b.updatedAt, b.trigger)) published++;
      else break; // broker down: try again next interval
    }
    // Their flags in one UPDATE before the pass ends, so the next pass does not see them again.
    await publishFlagsFor(deps).flush();
    // The stalled sweep reads only stalled rows (findStalled, migration 010), never the finished history;
    // one process at a time is enough (every process runs a relay).
    const stalled = await withTransaction(deps.db, async (client) => {
      const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS ok', [STALLED_SWEEP_LOCK]);
      return rows[0]!.ok ? findStalled(client, stalledAfterMs, 100) : [];
    });
    for (const b of stalled) {
      try {
        await deps.broker.publishJob({ messageId: b.messageId, attempt: 0, trigger: 'stalled_sweep' });
        await markRelayed(deps.db, b.messageId);
        deps.logger.warn('stalled batch re-published', { messageId: b.messageId });
        published++;
      } catch {
        break;
      }
    }
    // Its own step: a failure here must not cost the publishing above, nor the other way round.
    await alarmAwaitingPipeline(deps, deps.config.awaitingPipelineAlarmMs)
      .catch((err: Error) => deps.logger.warn('awaiting-pipeline check failed; will try again', { err: err.message }));
    return published;
  };

  const tick = async () => {
    if (stopped || running) return;
    running = runOnce();
    try {
      await running;
    } catch (err) {
      deps.logger.warn('relay pass failed; will try again', { err: (err as Error).message });
    } finally {
      running = undefined;
    }
  };
  const timer = setInterval(() => void tick(), opts.intervalMs);
  timer.unref();
  return {
    runOnce,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running?.catch(() => undefined);
    },
  };
}

/**
 * One AWAITING_PIPELINE alarm per batch whose domains have awaited the pipeline longer than `thresholdMs`,
 * naming the first 20 of them and their count; repeated once per period while they wait (raiseAlarm counts
 * a repeat of an active alarm as an occurrence). One process at a time: the check and the alarm writes
 * share a transaction holding the lock, so two relays cannot both see a batch as not yet alarmed.
 */
export async function alarmAwaitingPipeline(deps: Pick<PublishDeps, 'db' | 'logger'>, thresholdMs: number): Promise<AwaitingBatch[]> {
  const alarmed = await withTransaction(deps.db, async (client) => {
    const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS ok', [AWAITING_CHECK_LOCK]);
    if (!rows[0]!.ok) return [];
    const overdue = await findAwaitingOverdue(client, thresholdMs, 100);
    for (const b of overdue) {
      const listed = b.domains.map((d) => `${d.domain} (percent ${d.percent ?? 'not sent'}, process ${d.process ?? 'not sent'})`).join(', ');
      await raiseAlarm(client, {
        messageId: b.messageId,
        type: 'AWAITING_PIPELINE',
        content: `${b.count} domain(s) of ${b.messageId} reported unfinished by the pipeline for over ${formatDuration(thresholdMs)} `
          + `(since ${b.since.toISOString()}), not deleted until a callback reports them finished: ${listed}`
          + `${b.count > b.domains.length ? `, and ${b.count - b.domains.length} more` : ''}`,
        // Not `domainsTotal`: the alarm list view adds <array>Total itself, from the array it holds.
        details: { awaitingCount: b.count, domains: b.domains, since: b.since, thresholdMs },
      });
    }
    return overdue;
  });
  for (const b of alarmed) deps.logger.warn('domains still awaiting the pipeline; alarm raised', { messageId: b.messageId, count: b.count });
  return alarmed;
}

function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000} h`;
  if (ms % 60_000 === 0) return `${ms / 60_000} min`;
  return `${ms / 1000} s`;
}
