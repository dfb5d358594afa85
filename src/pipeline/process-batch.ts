/**
 * Processing one job = one batch: claim its open domains, delete them at the security platform with the
 * shared token, record every outcome, alarm on failures, and tell the broker what to do with the job.
 */
import { randomUUID } from 'node:crypto';
import type { ConsumeMessage } from 'amqplib';
import type { LimitFunction } from 'p-limit';
import {
  BadCredentialsError, DependencyUnavailableError, SecplatRejectedError, TokenUnavailableError, TokenRejectedError, UnrecoverableJobError, toAppError,
} from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Disposition, Job } from '../messaging/broker.js';
import type { DeleteResult, SecplatApi } from '../secplat/client.js';
import type { TokenManager } from '../token/token-manager.js';
import type { Db } from '../store/db.js';
import { raiseAlarm } from '../store/alarms.js';
import { resolveRecoveredBatchAlarms } from '../store/alarm-lifecycle.js';
import { lookupDomains } from '../store/inventory.js';
import {
  claimDomains, countByStatus, failOpenDomains, getBatch, listFailures, renewClaims, settleDomains, settleSucceeded,
  type DomainRow, type DomainStatus, type StatusCounts,
} from '../store/ledger.js';
import { MESSAGE_ID, SUPPORTED_REQ_TYPES } from './callback-input.js';

export interface ProcessDeps {
  db: Db;
  tokens: Pick<TokenManager, 'withToken'>;
  secplat: Pick<SecplatApi, 'deleteUsers'>;
  /** Caps security-platform calls in flight in this process, across all jobs. */
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
  return { messageId: b.messageId, attempt };
}

/** The broker-facing handler: decides ack / retry tier / park for each delivery. */
export function createJobHandler(deps: ProcessDeps): (msg: ConsumeMessage) => Promise<Disposition> {
  return async (msg) => {
    let job: Job;
    try {
      job = parseJob(msg.content);
    } catch (err) {
      return park(deps, null, `poison message: ${(err as Error).message}`, { body: msg.content.toString('utf8').slice(0, 500) });
    }
    const log = deps.logger.child({ messageId: job.messageId, attempt: job.attempt });
    // Quorum queues count redeliveries; on the last one the broker would park it silently, so we park it
    // ourselves with an alarm (a worker crashing on this job again and again ends here).
    const deliveries = Number(msg.properties.headers?.['x-delivery-count'] ?? 0);
    if (deliveries >= deps.config.amqpDeliveryLimit) {
      return parkBatch(deps, job.messageId, `delivered ${deliveries + 1} times without finishing`, log);
    }
    try {
      const run = await processBatch(deps, job.messageId, log);
      // Domains another worker holds are its business; if it dies, the relay's stalled sweep re-publishes
      // the batch once their lease has run out.
      const open = run.counts.retryable + run.counts.pending;
      // Shutting down: what is left goes back to the queue for another worker.
      if (run.interrupted && open > 0) return { action: 'requeue' };
      if (open === 0) return { action: 'ack' };
      return retryOrPark(deps, job, log, `${open} domain(s) still open`, run.blocked);
    } catch (err) {
      const e = toAppError(err);
      if (!e.retryable) return park(deps, job.messageId, e.message, { code: e.code });
      log.warn('job failed, will retry', { err: e.message, code: e.code });
      // PostgreSQL, Redis or RabbitMQ away: wait at the last tier for as long as it takes.
      return retryOrPark(deps, job, log, e.message, e instanceof DependencyUnavailableError || e instanceof TokenUnavailableError);
    }
  };
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
    return { action: 'retry', tier, job: { messageId: job.messageId, attempt: Math.min(job.attempt + 1, tiers) } };
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
 * Runs one pass over a batch's open domains. Safe to run again at any time, and by two workers at once:
 * finished domains are skipped and each domain is claimed just before its call, a chunk at a time.
 */
export async function processBatch(deps: ProcessDeps, messageId: string, log: Logger): Promise<BatchRunResult> {
  const { db, config } = deps;
  if (!(await getBatch(db, messageId))) throw new UnrecoverableJobError(`no batch ${messageId} in the ledger`);
  // Claims are fenced per pass, so two passes in one process cannot settle each other's domains.
  const outcome = new Outcomes(deps, messageId, `${config.instanceId}#${randomUUID().slice(0, 8)}`, log);
  // The first failure stops this pass's other loops before the job is handed back, so nothing keeps
  // sending for a job the broker already considers settled.
  const pass = new AbortController();
  const stopped = () => deps.signal.aborted || pass.signal.aborted;
  const tried: string[] = [];
  let claimedTotal = 0;
  // One loop per call slot; the process-wide limiter decides how many actually run at once across jobs.
  const loop = async (): Promise<void> => {
    while (!stopped()) {
      const more = await deps.secplatLimit(async () => {
        if (stopped()) return false;
        const claimed = await claimDomains(db, messageId, {
          workerId: outcome.claimer, leaseMs: config.domainLeaseMs, limit: config.secplatBatchSize, exclude: tried,
        });
        if (claimed.length === 0) return false;
        claimedTotal += claimed.length;
        tried.push(...claimed.map((d) => d.domain));
        await processChunk(deps, outcome, claimed);
        return true;
      });
      if (!more) return;
    }
  };
  const results = await Promise.allSettled(Array.from({ length: config.secplatConcurrency }, () => loop().catch((err: unknown) => {
    pass.abort();
    throw err;
  })));
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;
  const counts = (await countByStatus(db, [messageId])).get(messageId)!;
  await outcome.alarmIfTokenRejected();
  // Domains awaiting the pipeline keep the batch unfinished (no failure alarm yet); the job is still acked
  // below, as nothing can be done now, and the vendor's callback reporting them finished brings a new one.
  const finished = counts.pending + counts.retryable + counts.in_progress + counts.awaiting_pipeline === 0;
  if (claimedTotal > 0 && finished) await alarmBatchFailures(db, messageId, counts, 'batch finished');
  // Also on a pass that claimed nothing: if resolving failed last time (the job was retried), it happens now.
  if (finished && counts.failed + counts.unknown_domain === 0) await resolveRecoveredBatchAlarms(db, messageId);
  log.info('batch pass finished', { claimed: claimedTotal, counts });
  return { claimed: claimedTotal, counts, interrupted: deps.signal.aborted, blocked: outcome.blocked };
}

/** Resolves the claimed domains against the inventory and deletes the known ones in one call. */
async function processChunk(deps: ProcessDeps, outcome: Outcomes, claimed: Pick<DomainRow, 'domain' | 'reqType'>[]): Promise<void> {
  // Checked here, where the call is built, not only at intake: whatever re-opened a row (a replay, the
  // stalled sweep, a redelivery, a hand-edited row), only a requested deletion ever reaches the platform.
  const notDeletions = new Map<string, string[]>(); // note → domains
  const domains: string[] = [];
  for (const c of claimed) {
    if (SUPPORTED_REQ_TYPES.has(c.reqType)) domains.push(c.domain);
    else groupInto(notDeletions, `unsupported reqType ${c.reqType}: never sent to the security platform`, c.domain);
  }
  for (const [note, group] of notDeletions) await outcome.settle(group, 'unsupported', note);
  if (domains.length === 0) return;
  const inventory = await lookupDomains(deps.db, domains);
  const unknown: string[] = [];
  const alreadyDeleted = new Map<string, string[]>(); // note → domains
  const toSend: { domain: string; userIdCdn: string }[] = [];
  for (const domain of domains) {
    const inv = inventory.get(domain);
    if (!inv) unknown.push(domain);
    else if (inv.status === 'deleted') groupInto(alreadyDeleted, `already deleted by ${inv.deletedByMessageId ?? 'an earlier run'}`, domain);
    else toSend.push({ domain, userIdCdn: inv.userIdCdn });
  }
  if (unknown.length > 0) await outcome.settle(unknown, 'unknown_domain', 'not in the domain inventory (cdn_domain)');
  for (const [note, group] of alreadyDeleted) await outcome.succeeded(group, note);
  if (toSend.length > 0) await sendChunk(deps, outcome, toSend);
}

async function sendChunk(deps: ProcessDeps, outcome: Outcomes, chunk: { domain: string; userIdCdn: string }[]): Promise<void> {
  const domains = chunk.map((c) => c.domain);
  // Several domains may share one user_id_cdn: send it once, settle them all.
  let byId = new Map<string, string[]>();
  let res: DeleteResult;
  try {
    res = await deps.tokens.withToken(async (token, generation) => {
      // Getting a token can take a while; send only what this pass still holds, with a fresh lease.
      const held = new Set(await renewClaims(deps.db, outcome.messageId, outcome.claimer, chunk, deps.config.domainLeaseMs));
      byId = new Map();
      for (const c of chunk) if (held.has(c.domain)) groupInto(byId, c.userIdCdn, c.domain);
      if (byId.size === 0) return { succeeded: [], failed: [] };
      return deps.secplat.deleteUsers(token, generation, [...byId.keys()]);
    });
    deps.metrics.secplatCalls.inc({ result: 'ok' });
  } catch (err) {
    const e = toAppError(err);
    deps.metrics.secplatCalls.inc({ result: e.code });
    if (e instanceof SecplatRejectedError) return outcome.settle(domains, 'failed', e.message);
    if (e instanceof TokenRejectedError) outcome.tokenRejected = true;
    // No token to be had (Redis down, lock, circuit open): not the domains' fault, so no retry is used up.
    if (e instanceof TokenUnavailableError || e instanceof BadCredentialsError) outcome.blocked = true;
    return outcome.settle(domains, 'retryable', e.message);
  }
  // Recorded outside the try: a database error here must not turn a confirmed deletion into "retryable";
  // it propagates, the job is retried, and the claim expires.
  await outcome.succeeded(res.succeeded.flatMap((id) => byId.get(id) ?? []));
  const failedByReason = new Map<string, string[]>();
  for (const f of res.failed) for (const d of byId.get(f.userIdCdn) ?? []) groupInto(failedByReason, `security platform: ${f.reason}`, d);
  for (const [reason, group] of failedByReason) await outcome.settle(group, 'failed', reason);
}

function groupInto<K>(map: Map<K, string[]>, key: K, value: string): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/** Records outcomes for one batch pass, logs one line per domain and remembers what needs an alarm. */
class Outcomes {
  tokenRejected = false;
  /** Some call could not get a token at all (infrastructure, not the domains). */
  blocked = false;

  constructor(private readonly deps: ProcessDeps, readonly messageId: string, readonly claimer: string, private readonly log: Logger) {}

  async succeeded(domains: string[], detail: string | null = null): Promise<void> {
    if (domains.length === 0) return;
    await settleSucceeded(this.deps.db, this.messageId, domains, detail);
    this.deps.metrics.outcomes.inc({ status: 'succeeded' }, domains.length);
    for (const domain of domains) this.log.info('domain deleted', { domain, ...(detail ? { detail } : {}) });
  }

  async settle(domains: string[], status: Exclude<DomainStatus, 'in_progress' | 'succeeded'>, detail: string | null): Promise<void> {
    await settleDomains(this.deps.db, this.messageId, this.claimer, domains, status, detail);
    this.deps.metrics.outcomes.inc({ status }, domains.length);
    const level = status === 'pending' ? 'info' : 'warn';
    for (const domain of domains) this.log.log(level, `domain ${status}`, { domain, detail });
  }

  /** Alarm for a run that kept getting 401s even with fresh tokens (the domains stay retryable). */
  async alarmIfTokenRejected(): Promise<void> {
    if (!this.tokenRejected) return;
    await raiseAlarm(this.deps.db, {
      messageId: this.messageId, type: 'TOKEN_REJECTED',
      content: 'security platform kept rejecting freshly fetched tokens (401); domains left retryable',
    });
  }
}
