/**
 * Replay: re-open the failed and stuck domains of some batches and publish their jobs again. Succeeded
 * domains are never re-opened, so a replay cannot delete anything twice.
 */
import { ValidationError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Db } from '../store/db.js';
import { withTransaction } from '../store/db.js';
import { existingBatches, reopenForReplay, requestPublish, type DomainRow } from '../store/ledger.js';
import { publishBatchJob, type JobPublisher } from './publish.js';

export class UnknownBatchError extends ValidationError {
  constructor(readonly messageIds: string[]) { super(`no batch with messageId ${messageIds.join(', ')}`, 404); }
}

export interface ReplayResult { reopened: DomainRow[]; published: string[]; unpublished: string[] }

export async function replayBatches(
  deps: { db: Db; broker: JobPublisher; logger: Logger; metrics: Metrics },
  messageIds: string[],
  opts: { all: boolean; dryRun: boolean },
): Promise<ReplayResult> {
  const ids = [...new Set(messageIds)];
  const known = new Set(await existingBatches(deps.db, ids));
  const unknown = ids.filter((id) => !known.has(id));
  if (unknown.length > 0) throw new UnknownBatchError(unknown);
  if (opts.dryRun) return { reopened: await reopenForReplay(deps.db, ids, opts.all, true), published: [], unpublished: [] };

  const { reopened, versions } = await withTransaction(deps.db, async (client) => {
    const rows = await reopenForReplay(client, ids, opts.all, false);
    const touched = [...new Set(rows.map((r) => r.messageId))];
    return { reopened: rows, versions: await requestPublish(client, touched) };
  });
  const published: string[] = [];
  const unpublished: string[] = [];
  for (const [messageId, updatedAt] of versions) {
    deps.logger.info('batch replayed', { messageId, reopened: reopened.filter((r) => r.messageId === messageId).length });
    (await publishBatchJob(deps, messageId, updatedAt) ? published : unpublished).push(messageId);
  }
  return { reopened, published, unpublished };
}
