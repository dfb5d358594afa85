/**
 * Accepting a callback: store it durably (one transaction), then try to publish its job. The vendor is
 * told OK once the ledger holds the batch; a job the broker did not confirm is published by the relay.
 */
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Db } from '../store/db.js';
import { withTransaction } from '../store/db.js';
import { recordCallback } from '../store/ledger.js';
import { raiseAlarm } from '../store/alarms.js';
import { parseCallback } from './callback-input.js';
import { publishBatchJob, type JobPublisher } from './publish.js';

export interface AcceptDeps { db: Db; broker: JobPublisher; logger: Logger; metrics: Metrics; config: { callbackMaxItems: number } }

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

export async function acceptCallback(deps: AcceptDeps, body: unknown, remoteAddr: string | undefined): Promise<AcceptResult> {
  const input = parseCallback(body, deps.config.callbackMaxItems);
  const log = deps.logger.child({ messageId: input.messageId });
  const unsupported = input.items.filter((i) => !i.supported);

  const { added, known, awaiting, resumed, updatedAt } = await withTransaction(deps.db, async (client) => {
    const stored = await recordCallback(client, { messageId: input.messageId, remoteAddr, body, items: input.items });
    const newUnsupported = unsupported.filter((i) => stored.added.includes(i.domain));
    if (newUnsupported.length > 0) {
      await raiseAlarm(client, {
        messageId: input.messageId,
        type: 'UNSUPPORTED_REQ_TYPE',
        content: `${newUnsupported.length} item(s) with an unsupported reqType were recorded, not processed: `
          + newUnsupported.map((i) => `${i.domain} (${i.reqType})`).join(', '),
        details: { items: newUnsupported },
      });
    }
    return stored;
  });
  for (const i of unsupported) log.warn('unsupported reqType recorded and alarmed', { domain: i.domain, reqType: i.reqType });
  log.info('callback stored', { added: added.length, known: known.length, awaiting: awaiting.length, resumed: resumed.length });
  if (awaiting.length > 0) {
    log.info('domains held: the pipeline reports them unfinished; a later callback reporting them finished releases them',
      { count: awaiting.length, domains: awaiting.slice(0, 20) });
  }

  const published = await publishBatchJob({ ...deps, logger: log }, input.messageId, updatedAt);
  return {
    messageId: input.messageId, added: added.length, known: known.length, unsupported: unsupported.length,
    awaiting: awaiting.length, resumed: resumed.length, published,
  };
}
