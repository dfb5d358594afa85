/**
 * The operators' questions, answered once: the JSON API and the CLIs call these functions instead of
 * assembling the same reads themselves (like Graphile Worker's cleanup, shared by its CLI and library).
 */
import { NotFoundError, ValidationError } from '../lib/errors.js';
import { normalizeHostname } from '../pipeline/callback-input.js';
import type { Queryable } from '../store/db.js';
import { getInventory, type InventoryDetail } from '../store/inventory.js';
import {
  batchesOfDomain, countByStatus, getBatch, listDomains, type BatchRow, type DomainHistoryRow, type DomainRow, type StatusCounts,
} from '../store/ledger.js';

/** A domain the operator typed or pasted that is not a hostname. */
export class InvalidDomainError extends ValidationError {
  constructor(raw: string) { super(`${JSON.stringify(raw.slice(0, 80))} is not a valid domain name`); }
}

export interface BatchReport { messageId: string; batch: BatchRow; counts: StatusCounts; domains: DomainRow[] }

/** One batch: its row, counts by status and every domain's outcome; NotFoundError when unknown. */
export async function batchReport(db: Queryable, messageId: string): Promise<BatchReport> {
  const batch = await getBatch(db, messageId);
  if (!batch) throw new NotFoundError(`no batch with messageId ${messageId} (the callback never arrived, or the id is mistyped)`);
  const [counts, domains] = await Promise.all([countByStatus(db, [messageId]), listDomains(db, messageId)]);
  return { messageId, batch, counts: counts.get(messageId)!, domains };
}

export interface DomainReport {
  domain: string;
  /** The inventory row (how the security platform knows it, and whether and by which batch it was deleted). */
  inventory: InventoryDetail | null;
  /** Every batch that carried the domain, newest first, with the domain's outcome in it. */
  batches: DomainHistoryRow[];
}

/** Starts from a domain name: the inventory row and every batch that carried it; NotFoundError when neither knows it. */
export async function domainReport(db: Queryable, rawDomain: string): Promise<DomainReport> {
  const domain = normalizeHostname(rawDomain);
  if (!domain) throw new InvalidDomainError(rawDomain);
  const [inventory, batches] = await Promise.all([getInventory(db, domain), batchesOfDomain(db, domain)]);
  if (!inventory && batches.length === 0) throw new NotFoundError(`no batch carried ${domain} and it is not in the domain inventory`);
  return { domain, inventory: inventory ?? null, batches };
}
