/**
 * Accepting a callback: store it durably with one statement (one round trip, its own transaction: the
 * audit row, the batch, its domains and any UNSUPPORTED_REQ_TYPE alarm), then publish its job. The vendor is
 * told OK once the ledger holds the batch, without waiting for the broker's confirm: a job the broker did not
 * confirm (or never got, if the process died) is published by the relay, since the batch's publish flag stays
 * set until the confirm. Concurrent callbacks share one statement and one commit (group commit,
 * src/pipeline/ingest-batcher.ts); the publish flag is cleared in bulk after the confirm.
 */
import type { Config } from '../config.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Db } from '../store/db.js';
import { parseCallback } from './callback-input.js';
import { batcherFor, publishFlagsFor } from './ingest-batcher.js';
import { publishBatchJob, unconfirmedFor, type JobPublisher } from './publish.js';

export interface AcceptDeps {
  db: Db;
  broker: JobPublisher;
  logger: Logger;
  metrics: Metrics;
  /** INGEST_STATEMENTS_IN_FLIGHT and PUBLISH_FLAG_FLUSH_MS are read when present (defaults otherwise). */
  config: Pick<Config, 'callbackMaxItems'> & Partial<Pick<Config, 'ingestStatementsInFlight' | 'publishFlagFlushMs'>>;
  /** Where the batcher and the flag writer register their shutdown step (the context's releasers). */
  releasers?: { add(name: string, release: () => Promise<void> | void): void };
}

export interface AcceptResult {
  messageId: string;
  added: number;
  known: number;
  unsupported: number;
  /** Domains of this callback held as awaiting_pipeline: the pipeline reports them unfinished. */
  awaiting: number;
  /** Awaiting domains this callback reported finished: now pending, and sent by the job published below. */
  resumed: number;
  /** Resolves true once the broker confirmed the job, false when it was left to the relay; never rejects. */
  confirmed: Promise<boolean>;
}

/**
 * Validates, stores and publishes one callback. Throws CallbackRejectedError for bad input (nothing
 * stored), DependencyUnavailableError when PostgreSQL is away or the statement lost a deadlock or
 * serialization conflict (nothing stored: the vendor retries). Resolves only after the commit; waits for
 * the confirm too while too many are outstanding (UnconfirmedPublishes).
 */
export async function acceptCallback(deps: AcceptDeps, body: unknown, remoteAddr: string | undefined): Promise<AcceptResult> {
  const input = parseCallback(body, deps.config.callbackMaxItems);
  const log = deps.logger.child({ messageId: input.messageId });
  const unsupported = input.items.filter((i) => !i.supported);
  // Built with the service's logger (not this callback's child) on first use; publishBatchJob reuses it.
  publishFlagsFor(deps);

  const { added, known, awaiting, resumed, updatedAt } = await batcherFor(deps)
    .record({ messageId: input.messageId, remoteAddr, body, items: input.items });
  for (const i of unsupported) log.warn('unsupported reqType recorded and alarmed', { domain: i.domain, reqType: i.reqType });
  log.info('callback stored', { added: added.length, known: known.length, awaiting: awaiting.length, resumed: resumed.length });
  if (awaiting.length > 0) {
    log.info('domains held: the pipeline reports them unfinished; a later callback reporting them finished releases them',
      { count: awaiting.length, domains: awaiting.slice(0, 20) });
  }

  const confirmed = publishBatchJob({ ...deps, logger: log }, input.messageId, updatedAt, 'first_run');
  if (unconfirmedFor(deps).add(confirmed)) await confirmed;
  return {
    messageId: input.messageId, added: added.length, known: known.length, unsupported: unsupported.length,
    awaiting: awaiting.length, resumed: resumed.length, confirmed,
  };
}
