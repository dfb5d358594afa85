/**
 * Accepting a callback: store it durably with one statement (one round trip, its own transaction: the
 * audit row, the batch, its domains and any UNSUPPORTED_REQ_TYPE alarm), then publish its job and wait for
 * the broker's confirm. The vendor is told OK once the ledger holds the batch; a job the broker did not
 * confirm is published by the relay. Concurrent callbacks share one statement and one commit (group commit,
 * src/pipeline/ingest-batcher.ts); the publish flag is cleared in bulk after the reply.
 */
import type { Config } from '../config.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Db } from '../store/db.js';
import { parseCallback } from './callback-input.js';
import { batcherFor, publishFlagsFor } from './ingest-batcher.js';
import { publishBatchJob, type JobPublisher } from './publish.js';

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
  published: boolean;
}

/**
 * Validates, stores and publishes one callback. Throws CallbackRejectedError for bad input (nothing
 * stored), DependencyUnavailableError when PostgreSQL is away or the statement lost a deadlock or
 * serialization conflict (nothing stored: the vendor retries). Resolves only after the commit.
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

  const published = await publishBatchJob({ ...deps, logger: log }, input.messageId, updatedAt, 'first_run');
  return {
    messageId: input.messageId, added: added.length, known: known.length, unsupported: unsupported.length,
    awaiting: awaiting.length, resumed: resumed.length, published,
  };
}
