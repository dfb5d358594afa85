/**
 * The attempt history: one row per domain per security-platform call that reached a final answer (or was
 * cut by a timeout or the shutdown deadline). Rows are written by `settleCall` in src/store/ledger.ts, in
 * the statement that settles the call's domains; this module reads them for operators.
 */
import type { JobTrigger } from '../messaging/broker.js';
import type { DomainStatus } from './ledger.js';
import type { Queryable } from './db.js';

/**
 * The status a call left a domain in; `lease_lost` when the answer came after this worker's lease had run
 * out and another worker held the domain, so the answer did not change it (a success is recorded anyway).
 */
export type AttemptOutcome = DomainStatus | 'lease_lost';

export interface AttemptRow {
  messageId: string;
  domain: string;
  /** When the call was sent, by the sending process's clock. */
  attemptedAt: Date;
  /** Until the answer, the timeout or the cut. */
  durationMs: number;
  /** INSTANCE_ID of the process that sent it (default host:pid). */
  instanceId: string;
  trigger: JobTrigger;
  /** Generation of the shared token the call carried (after a 401 and a refresh: the newer one). */
  tokenGeneration: number;
  /** null when nothing was answered (timeout, network failure, cut at shutdown). */
  httpStatus: number | null;
  outcome: AttemptOutcome;
  /** The chk_fail reason, or "<error class>: <message>"; null on success. */
  reason: string | null;
}

/** A batch's attempts (or one domain's), by domain then time; served by domain_attempt_lookup. */
export async function listAttempts(db: Queryable, messageId: string, domain?: string): Promise<AttemptRow[]> {
  const { rows } = await db.query<AttemptRow>(
    `SELECT message_id AS "messageId", domain, attempted_at AS "attemptedAt", duration_ms AS "durationMs",
            instance_id AS "instanceId", trigger, token_generation AS "tokenGeneration", http_status AS "httpStatus",
            outcome, reason
     FROM domain_attempt
     WHERE message_id = $1 AND ($2::text IS NULL OR domain = $2)
     ORDER BY domain, attempted_at`,
    [messageId, domain ?? null],
  );
  return rows;
}
