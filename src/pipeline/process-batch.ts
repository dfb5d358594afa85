/**
 * Processing one job = one batch: its open domains are deleted at the security platform by the process's
 * call packer (src/pipeline/call-packer.ts), which fills each call from every job the process holds; here,
 * each job's outcome is read back from the ledger, alarmed on, and turned into what the broker should do
 * with that job (ack, retry tier, park, requeue).
 */
import type { ConsumeMessage } from 'amqplib';
import DataLoader from 'dataloader';
import type { LimitFunction } from 'p-limit';
import { DependencyUnavailableError, TokenUnavailableError, UnrecoverableJobError, toAppError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import { JOB_TRIGGERS, type Disposition, type Job, type JobHandler, type JobTrigger } from '../messaging/broker.js';
import type { SecplatApi } from '../secplat/client.js';
import type { TokenManager } from '../token/token-manager.js';
import { isTransientDbError, type Db } from '../store/db.js';
import { raiseAlarm } from '../store/alarms.js';
import { resolveRecoveredBatchAlarms } from '../store/alarm-lifecycle.js';
import { batchProgress, countByStatus, failOpenDomains, listFailures, type BatchProgress, type StatusCounts } from '../store/ledger.js';
import { CallPacker, type PassResult } from './call-packer.js';
import { MESSAGE_ID } from './callback-input.js';

export interface ProcessDeps {
  db: Db;
  /** Connections for the call path only (claims, lookups, lease renewals), so bookkeeping never delays a call. */
  callDb: Db;
  tokens: Pick<TokenManager, 'withToken'>;
  secplat: Pick<SecplatApi, 'deleteUsers'>;
  /** The call slots: caps security-platform calls in flight in this process, across all jobs. */
  secplatLimit: LimitFunction;
  logger: Logger;
  metrics: Metrics;
  config: { instanceId: string; domainLeaseMs: number; secplatBatchSize: number; secplatConcurrency: number; retryTiersMs: readonly number[]; amqpDeliveryLimit: number };
  /** Aborted at shutdown: no new calls start, unsent domains go back to pending. */
  signal: AbortSignal;
}

export interface BatchRunResult { claimed: number; counts: StatusCounts; interrupted: boolean; blocked: boolean }

/** Parses a delivery; anything else is a poison message. */
export function parseJob(content: Buffer): Job {
  let body: unknown;
  try {
    body = JSON.parse(content.toString('utf8'));
  } catch (err) {
    throw new UnrecoverableJobError('job body is not JSON', err);
  }
  const b = body as Partial<Job> | null;
  if (!b || typeof b.messageId !== 'string' || !MESSAGE_ID.test(b.messageId)) throw new UnrecoverableJobError('job has no valid messageId');
  const attempt = b.attempt ?? 0;
  if (!Number.isInteger(attempt) || attempt < 0) throw new UnrecoverableJobError('job has an invalid attempt');
  // Absent in jobs queued before triggers existed (they count as first_run); anything else unknown is poison.
  const trigger: unknown = b.trigger;
  if (trigger === undefined) return { messageId: b.messageId, attempt };
  if (!(JOB_TRIGGERS as readonly unknown[]).includes(trigger)) throw new UnrecoverableJobError('job has an unknown trigger');
  return { messageId: b.messageId, attempt, trigger: trigger as JobTrigger };
}

/**
 * The broker-facing handler: decides ack / retry tier / park / requeue for each delivery, job by job. Its
 * `demand` (the call packer) tells the broker how many jobs to hold so that calls can be filled.
 */
export function createJobHandler(deps: ProcessDeps): JobHandler {
  const packer = new CallPacker(deps);
  // Jobs whose passes end together (the jobs of one call) read their batches' progress in one round trip.
  const progress: ProgressLoader = new DataLoader(async (ids) => {
    const found = await batchProgress(deps.db, ids);
    return ids.map((id) => found.get(id)!);
  }, { cache: false, maxBatchSize: 500 });
  const handle = async (msg: ConsumeMessage): Promise<Disposition> => {
    let job: Job;
    try {
      job = parseJob(msg.content);
    } catch (err) {
      return park(deps, null, `poison message: ${(err as Error).message}`, { body: msg.content.toString('utf8').slice(0, 500) });
    }
    const trigger = job.trigger ?? 'first_run';
    const log = deps.logger.child({ messageId: job.messageId, attempt: job.attempt, trigger });
    // Quorum queues count redeliveries; on the last one the broker would park it silently, so we park it
    // ourselves with an alarm (a worker crashing on this job again and again ends here).
    const deliveries = Number(msg.properties.headers?.['x-delivery-count'] ?? 0);
    if (deliveries >= deps.config.amqpDeliveryLimit) {
      return parkBatch(deps, job.messageId, `delivered ${deliveries + 1} times without finishing`, log);
    }
    try {
      const run = await processBatch(deps, packer, progress, job.messageId, log, trigger);
      // Domains another worker holds are its business; if it dies, the relay's stalled sweep re-publishes
      // the batch once their lease has run out.
      const open = run.counts.retryable + run.counts.pending;
      // Shutting down: what is left goes back to the queue for another worker.
      if (run.interrupted && open > 0) return { action: 'requeue' };
      if (open === 0) return { action: 'ack' };
      return retryOrPark(deps, job, log, `${open} domain(s) still open`, run.blocked);
    } catch (err) {
      // A pg error straight from a pool query is not yet an outage in our terms: make it one, so it waits.
      const e = toAppError(isTransientDbError(err) && !(err instanceof DependencyUnavailableError)
        ? new DependencyUnavailableError('postgres', `PostgreSQL unavailable: ${(err as Error).message}`, err) : err);
      if (!e.retryable) return park(deps, job.messageId, e.message, { code: e.code });
      log.warn('job failed, will retry', { err: e.message, code: e.code });
      // PostgreSQL, Redis or RabbitMQ away: wait at the last tier for as long as it takes.
      return retryOrPark(deps, job, log, e.message, e instanceof DependencyUnavailableError || e instanceof TokenUnavailableError);
    }
  };
  return Object.assign(handle, { demand: packer });
}

/**
 * Next retry tier, or park once every tier was used. An infrastructure outage (`waitOnly`) uses no
 * retry: it waits at the last tier until the dependency is back, instead of failing the domains.
 */
async function retryOrPark(deps: ProcessDeps, job: Job, log: Logger, reason: string, waitOnly = false): Promise<Disposition> {
  const tiers = deps.config.retryTiersMs.length;
  if (job.attempt < tiers || waitOnly) {
    const tier = Math.min(job.attempt, tiers - 1);
    deps.metrics.retries.inc({ tier: String(tier) });
    log.info('job scheduled for retry', { delayMs: deps.config.retryTiersMs[tier], reason });
    return { action: 'retry', tier, job: { messageId: job.messageId, attempt: Math.min(job.attempt + 1, tiers), trigger: 'retry' } };
  }
  return parkBatch(deps, job.messageId, `retries exhausted after ${job.attempt} retries: ${reason}`, log, tiers + 1);
}

/**
 * Parks a batch's job: its open domains become failed (visibly, replayable, and no longer picked up by the
 * relay's stalled-batch sweep), one alarm lists the batch's failures, one says the job was parked.
 */
async function parkBatch(deps: ProcessDeps, messageId: string, reason: string, log: Logger, minAttempts = 0): Promise<Disposition> {
  try {
    // Domains added by a later callback have not had their retries yet: they stay open for the next job.
    await failOpenDomains(deps.db, messageId, reason, minAttempts);
    const counts = (await countByStatus(deps.db, [messageId])).get(messageId)!;
    await alarmBatchFailures(deps.db, messageId, counts, 'job parked');
  } catch (err) {
    log.error('could not mark the parked batch failed', { err: (err as Error).message });
  }
  return park(deps, messageId, reason, {});
}

async function park(deps: ProcessDeps, messageId: string | null, reason: string, details: Record<string, unknown>): Promise<Disposition> {
  deps.metrics.parked.inc();
  deps.logger.error('job parked', { messageId, reason });
  await raiseAlarm(deps.db, { messageId, type: 'JOB_PARKED', content: `job parked: ${reason}`, details })
    .catch((err: Error) => deps.logger.error('could not write parked-job alarm', { messageId, err: err.message }));
  return { action: 'park', reason };
}

/**
 * One alarm row when a batch ends with failures: which domains failed and why, read from the ledger so
 * it covers every pass, not just the last one.
 */
async function alarmBatchFailures(db: Db, messageId: string, counts: StatusCounts, why: string): Promise<void> {
  // The counts say whether there is anything to list: a batch that ended well costs no further round trip.
  if (counts.failed + counts.unknown_domain === 0) return;
  const rows = await listFailures(db, messageId);
  if (rows.length === 0) return;
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const list = rows.slice(0, 50).map((f) => `${f.domain} (${f.status}: ${f.detail ?? ''})`).join('; ');
  await raiseAlarm(db, {
    messageId,
    type: 'BATCH_FAILURES',
    content: `${why}: ${rows.length} of ${total} domains failed: ${list}${rows.length > 50 ? '; …' : ''}`,
    details: { counts, failures: rows },
  });
}

/**
 * Runs one pass over a batch's open domains (through the packer, sharing calls with the other jobs held),
 * then reads the batch's counts and raises or resolves its alarms. Safe to run again at any time, and by
 * two workers at once: finished domains are skipped and each domain is claimed with a lease before its call.
 */
type ProgressLoader = DataLoader<string, BatchProgress>;

async function processBatch(deps: ProcessDeps, packer: CallPacker, progress: ProgressLoader, messageId: string, log: Logger, trigger: JobTrigger): Promise<BatchRunResult> {
  const { db } = deps;
  const run: PassResult = await packer.run(messageId, log, trigger);
  const { counts, selfResolvingAlarm } = await progress.load(messageId);
  if (run.tokenRejected) {
    await raiseAlarm(db, {
      messageId, type: 'TOKEN_REJECTED', content: 'security platform kept rejecting freshly fetched tokens (401); domains left retryable',
    });
  }
  // Domains awaiting the pipeline keep the batch unfinished (no failure alarm yet); the job is still acked
  // by the handler, as nothing can be done now, and the vendor's callback reporting them finished brings a new one.
  const finished = counts.pending + counts.retryable + counts.in_progress + counts.awaiting_pipeline === 0;
  if (run.claimed > 0 && finished) await alarmBatchFailures(db, messageId, counts, 'batch finished');
  // Also on a pass that claimed nothing: if resolving failed last time (the job was retried), it happens now.
  if (finished && counts.failed + counts.unknown_domain === 0 && selfResolvingAlarm) await resolveRecoveredBatchAlarms(db, messageId);
  log.info('batch pass finished', { claimed: run.claimed, counts });
  return { claimed: run.claimed, counts, interrupted: run.interrupted, blocked: run.blocked };
}
