/**
 * The alarm lifecycle (open → acknowledged → resolved, who/when/note for each step) and the notification
 * outbox (alarm_notification) it feeds. Every change that must be announced writes its outbox row in the
 * same statement or transaction, so a committed change is never left without its notification.
 */
import type pg from 'pg';
import { ValidationError } from '../lib/errors.js';
import type { AlarmRow, AlarmType } from './alarms.js';
import { withTransaction, type Db, type Queryable } from './db.js';

export const ALARM_STATES = ['open', 'acknowledged', 'resolved'] as const;
export type AlarmState = (typeof ALARM_STATES)[number];

/** An alarm row with its lifecycle columns: the list row without its paging fields. */
export type AlarmLifecycleRow = Omit<AlarmRow, 'cursor' | 'truncated'>;

const LIFECYCLE_COLUMNS = `id::int, tag, message_id AS "messageId", alarm_type AS "alarmType", content, details, state, occurrences,
  created_at AS "createdAt", last_seen_at AS "lastSeenAt", acknowledged_at AS "acknowledgedAt", acknowledged_by AS "acknowledgedBy",
  ack_note AS "ackNote", resolved_at AS "resolvedAt", resolved_by AS "resolvedBy", resolve_note AS "resolveNote"`;

/** Some ids name no alarm (HTTP 404, CLI exit 2). */
export class UnknownAlarmError extends ValidationError {
  constructor(readonly ids: number[]) { super(`no alarm with id ${ids.join(', ')}`, 404); }
}

/** An alarm is not in a state this step starts from, e.g. acknowledging a resolved one (HTTP 409, CLI exit 2). */
export class AlarmStateError extends ValidationError {
  constructor(readonly action: 'acknowledge' | 'resolve', readonly conflicts: Pick<AlarmLifecycleRow, 'id' | 'state' | 'acknowledgedBy' | 'resolvedBy'>[]) {
    super(`cannot ${action} ${conflicts.map((c) => `alarm ${c.id}: it is already ${c.state}${describeBy(c)}`).join('; ')}; nothing was changed`, 409);
  }
}

function describeBy(c: Pick<AlarmLifecycleRow, 'state' | 'acknowledgedBy' | 'resolvedBy'>): string {
  const by = c.state === 'resolved' ? c.resolvedBy : c.state === 'acknowledged' ? c.acknowledgedBy : null;
  return by ? ` (by ${by})` : '';
}

export interface AlarmStep {
  /** Alarm ids; all of them change, or none (an unknown id or a wrong state changes nothing). */
  ids: number[];
  /** Who takes the step (an operator's name; 'system' is what automatic resolution records). */
  by: string;
  note?: string;
}

const MAX_NOTE = 2000;
const MAX_BY = 200;

function checkStep(step: AlarmStep, noteRequired: boolean): { ids: number[]; by: string; note: string | null } {
  const ids = [...new Set(step.ids)];
  if (ids.length === 0) throw new ValidationError('give at least one alarm id');
  if (ids.length > 1000) throw new ValidationError('at most 1000 alarm ids at once');
  const bad = ids.filter((id) => !Number.isSafeInteger(id) || id < 1);
  if (bad.length > 0) throw new ValidationError(`alarm ids are positive whole numbers; got ${bad.slice(0, 5).join(', ')}`);
  const by = step.by.trim();
  if (!by || by.length > MAX_BY) throw new ValidationError(`"by" must name who takes the step (1 to ${MAX_BY} characters)`);
  const note = step.note?.trim() || null;
  if (noteRequired && !note) throw new ValidationError('a note is required to resolve an alarm: say what fixed it');
  if (note && note.length > MAX_NOTE) throw new ValidationError(`the note is longer than ${MAX_NOTE} characters`);
  return { ids, by, note };
}

/** Locks the alarms (in id order, so two callers never deadlock) and checks they exist and may take the step. */
async function lockForStep(client: pg.PoolClient, ids: number[], action: 'acknowledge' | 'resolve', from: AlarmState[]): Promise<void> {
  const { rows } = await client.query<Pick<AlarmLifecycleRow, 'id' | 'state' | 'acknowledgedBy' | 'resolvedBy'>>(
    `SELECT id::int, state, acknowledged_by AS "acknowledgedBy", resolved_by AS "resolvedBy" FROM sys_task_process_alarm
     WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE`,
    [ids],
  );
  const found = new Set(rows.map((r) => r.id));
  const unknown = ids.filter((id) => !found.has(id));
  if (unknown.length > 0) throw new UnknownAlarmError(unknown.sort((a, b) => a - b));
  const conflicts = rows.filter((r) => !from.includes(r.state));
  if (conflicts.length > 0) throw new AlarmStateError(action, conflicts);
}

/**
 * open → acknowledged: someone is on it. Returns the changed rows. Throws UnknownAlarmError (404) or
 * AlarmStateError (409, e.g. already acknowledged or resolved) and then changes nothing.
 */
export async function acknowledgeAlarms(db: Db, step: AlarmStep): Promise<AlarmLifecycleRow[]> {
  const { ids, by, note } = checkStep(step, false);
  return withTransaction(db, async (client) => {
    await lockForStep(client, ids, 'acknowledge', ['open']);
    const { rows } = await client.query<AlarmLifecycleRow>(
      `UPDATE sys_task_process_alarm SET state = 'acknowledged', acknowledged_at = now(), acknowledged_by = $2, ack_note = $3
       WHERE id = ANY($1::bigint[]) RETURNING ${LIFECYCLE_COLUMNS}`,
      [ids, by, note],
    );
    return rows.sort((a, b) => a.id - b.id);
  });
}

/**
 * open or acknowledged → resolved, with a required note; each resolved alarm gets a 'resolved' outbox row
 * in the same transaction. Throws UnknownAlarmError (404) or AlarmStateError (409, already resolved) and
 * then changes nothing.
 */
export async function resolveAlarms(db: Db, step: AlarmStep): Promise<AlarmLifecycleRow[]> {
  const { ids, by, note } = checkStep(step, true);
  return withTransaction(db, async (client) => {
    await lockForStep(client, ids, 'resolve', ['open', 'acknowledged']);
    const { rows } = await client.query<AlarmLifecycleRow>(
      `WITH r AS (
         UPDATE sys_task_process_alarm SET state = 'resolved', resolved_at = now(), resolved_by = $2, resolve_note = $3
         WHERE id = ANY($1::bigint[]) RETURNING *),
       n AS (INSERT INTO alarm_notification (alarm_id, event, alarm_type) SELECT id, 'resolved', alarm_type FROM r)
       SELECT ${LIFECYCLE_COLUMNS} FROM r`,
      [ids, by, note],
    );
    return rows.sort((a, b) => a.id - b.id);
  });
}

/**
 * Alarm types a batch's later success makes obsolete. UNSUPPORTED_REQ_TYPE is not one: a replay never
 * re-opens an unsupported item, so nothing can fix it but a person (who resolves it with a note).
 */
export const SELF_RESOLVING_TYPES: readonly AlarmType[] = ['BATCH_FAILURES', 'JOB_PARKED', 'TOKEN_REJECTED', 'AWAITING_PIPELINE'];

/**
 * Resolves a batch's failure alarms once none of its domains is open or failing any more (every domain to
 * delete succeeded, by a retry or a replay), with resolved_by 'system', a note that says which, and a
 * 'resolved' outbox row each, all in one statement. The ledger is checked in that statement, so calling it
 * for a batch that is not done is harmless. Returns the alarms it resolved.
 */
export async function resolveRecoveredBatchAlarms(db: Queryable, messageId: string): Promise<AlarmLifecycleRow[]> {
  const { rows } = await db.query<AlarmLifecycleRow>(
    `WITH b AS (
       SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
              count(*) FILTER (WHERE status = 'unsupported') AS unsupported,
              count(*) FILTER (WHERE status NOT IN ('succeeded', 'unsupported')) AS unfinished
       FROM batch_domain WHERE message_id = $1),
     r AS (
       UPDATE sys_task_process_alarm a SET state = 'resolved', resolved_at = now(), resolved_by = 'system',
         resolve_note = 'resolved: all ' || b.succeeded || ' domains' || CASE WHEN b.unsupported > 0 THEN ' to delete' ELSE '' END
           || ' succeeded after a '
           -- reopened_at is stamped when a replay re-opens a domain (migration 005).
           || CASE WHEN EXISTS (SELECT 1 FROM batch_domain d WHERE d.message_id = $1 AND d.reopened_at >= a.created_at)
                   THEN 'replay' ELSE 'retry' END
           || CASE WHEN b.unsupported > 0 THEN ' (' || b.unsupported || ' unsupported item(s) stay under their UNSUPPORTED_REQ_TYPE alarm)' ELSE '' END
       FROM b
       WHERE coalesce(a.message_id, '') = $1 AND a.state <> 'resolved' AND a.alarm_type = ANY($2)
         AND b.unfinished = 0 AND b.succeeded > 0
       RETURNING a.*),
     n AS (INSERT INTO alarm_notification (alarm_id, event, alarm_type) SELECT id, 'resolved', alarm_type FROM r)
     SELECT ${LIFECYCLE_COLUMNS} FROM r`,
    [messageId, SELF_RESOLVING_TYPES],
  );
  return rows;
}

// ---------------------------------------------------------------------------------------------------------
// The outbox. Rows are grouped into messages: a message is the set of rows sharing a delivery_key, fixed
// (committed) before its first attempt, so every retry, after a failure or a crash, sends the same rows
// under the same key. Per alarm type at most one message is in flight, and a new one is formed only once
// ALARM_NOTIFY_GROUP_MS has passed since the last one; the type's alarm_notification_window row is the lock
// for both, so two senders never form or send for the same type at once.
// ---------------------------------------------------------------------------------------------------------

export type NotificationEvent = 'opened' | 'resolved';

export interface OutboxEvent {
  notificationId: number;
  event: NotificationEvent;
  /** When the change happened (the outbox row's created_at). */
  at: Date;
  alarm: AlarmLifecycleRow;
}

export interface OutboxMessage {
  key: string;
  alarmType: string;
  /** Attempts made before this one. */
  attempts: number;
  events: OutboxEvent[];
}

/** What a send attempt came to: confirmed by the receiver, or not (then retried after `retryInMs`). */
export type DeliveryOutcome = { delivered: true } | { delivered: false; error: string; retryInMs: number };

/** Alarm types with undelivered outbox rows (read through the partial index alarm_notification_due). */
export async function undeliveredTypes(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ alarmType: string }>(
    'SELECT DISTINCT alarm_type AS "alarmType" FROM alarm_notification WHERE delivered_at IS NULL ORDER BY 1');
  return rows.map((r) => r.alarmType);
}

/** Locks the type's window row, creating it first if needed; false when another sender holds it. */
async function lockType(client: pg.PoolClient, alarmType: string, windowMs: number): Promise<{ windowOver: boolean } | null> {
  await client.query('INSERT INTO alarm_notification_window (alarm_type) VALUES ($1) ON CONFLICT DO NOTHING', [alarmType]);
  const { rows } = await client.query<{ windowOver: boolean }>(
    `SELECT (last_message_at IS NULL OR last_message_at <= now() - make_interval(secs => $2::double precision / 1000)) AS "windowOver"
     FROM alarm_notification_window WHERE alarm_type = $1 FOR UPDATE SKIP LOCKED`,
    [alarmType, windowMs],
  );
  return rows[0] ?? null;
}

/**
 * Forms the type's next message when allowed: none of its messages is still undelivered and the grouping
 * window has passed. Every undelivered, ungrouped row of the type (up to `maxEvents`, oldest first) gets
 * `key`. Commits before anything is sent. Returns how many rows the message holds (0: none formed).
 */
export async function groupNotifications(db: Db, alarmType: string, opts: { key: string; windowMs: number; maxEvents: number }): Promise<number> {
  return withTransaction(db, async (client) => {
    const lock = await lockType(client, alarmType, opts.windowMs);
    if (!lock?.windowOver) return 0;
    const inFlight = await client.query(
      'SELECT 1 FROM alarm_notification WHERE alarm_type = $1 AND delivered_at IS NULL AND delivery_key IS NOT NULL LIMIT 1', [alarmType]);
    if (inFlight.rows.length > 0) return 0;
    const { rowCount } = await client.query(
      `UPDATE alarm_notification SET delivery_key = $2, next_attempt_at = now()
       WHERE id IN (SELECT id FROM alarm_notification WHERE alarm_type = $1 AND delivered_at IS NULL AND delivery_key IS NULL
                    ORDER BY id LIMIT $3)`,
      [alarmType, opts.key, opts.maxEvents],
    );
    if (!rowCount) return 0;
    await client.query('UPDATE alarm_notification_window SET last_message_at = now() WHERE alarm_type = $1', [alarmType]);
    return rowCount;
  });
}

/**
 * Runs `send` for the type's message if it is due, holding the type's lock for the whole attempt, and
 * records the outcome in the same transaction: delivered_at only after the receiver confirmed. If the
 * process dies during the attempt, the transaction rolls back and the lock goes with the connection; the
 * message stays as it was and is sent again, same key. A session idle in this transaction for longer than
 * `holdMs` is ended by PostgreSQL itself, so a hung process cannot hold a type forever.
 * Returns the outcome, or null when nothing was due or another sender holds the type.
 */
export async function withDueMessage(
  db: Db,
  alarmType: string,
  opts: { holdMs: number },
  send: (message: OutboxMessage, client: pg.PoolClient) => Promise<DeliveryOutcome>,
): Promise<{ message: OutboxMessage; outcome: DeliveryOutcome } | null> {
  return withTransaction(db, async (client) => {
    // If PostgreSQL does end the session while the request is out, the client emits 'error' with no query
    // to reject; a checked-out client has no pool listener, and an unheard 'error' would end the process.
    // The next query then fails and the transaction is abandoned like any other.
    const onError = () => undefined;
    client.on('error', onError);
    try {
      return await sendDue(client, alarmType, opts.holdMs, send);
    } finally {
      client.off('error', onError);
    }
  });
}

async function sendDue(
  client: pg.PoolClient,
  alarmType: string,
  holdMs: number,
  send: (message: OutboxMessage, client: pg.PoolClient) => Promise<DeliveryOutcome>,
): Promise<{ message: OutboxMessage; outcome: DeliveryOutcome } | null> {
  await client.query(`SELECT set_config('idle_in_transaction_session_timeout', $1, true)`, [String(holdMs)]);
  if (!(await lockType(client, alarmType, 0))) return null;
  const { rows } = await client.query<{ key: string; attempts: number; notificationId: number; event: NotificationEvent; at: Date; due: boolean; alarm: Record<string, unknown> }>(
    `SELECT n.delivery_key AS key, n.attempts, n.id::int AS "notificationId", n.event, n.created_at AS at, n.next_attempt_at <= now() AS due,
            to_jsonb(a) AS alarm
     FROM alarm_notification n JOIN sys_task_process_alarm a ON a.id = n.alarm_id
     WHERE n.alarm_type = $1 AND n.delivered_at IS NULL AND n.delivery_key IS NOT NULL
     ORDER BY n.id`,
    [alarmType],
  );
  const first = rows[0];
  if (!first || !first.due) return null;
  // One message at a time per type (groupNotifications), but be strict: only the oldest key's rows.
  const mine = rows.filter((r) => r.key === first.key);
  const message: OutboxMessage = {
    key: first.key, alarmType, attempts: first.attempts,
    events: mine.map((r) => ({ notificationId: r.notificationId, event: r.event, at: r.at, alarm: alarmFromJson(r.alarm) })),
  };
  const outcome = await send(message, client);
  if (outcome.delivered) {
    await client.query(
      'UPDATE alarm_notification SET delivered_at = now(), attempts = attempts + 1 WHERE delivery_key = $1 AND delivered_at IS NULL',
      [message.key]);
  } else {
    await client.query(
      `UPDATE alarm_notification SET attempts = attempts + 1, last_error = $2,
              next_attempt_at = now() + make_interval(secs => $3::double precision / 1000)
       WHERE delivery_key = $1 AND delivered_at IS NULL`,
      [message.key, outcome.error.slice(0, 1000), outcome.retryInMs]);
  }
  return { message, outcome };
}

/** to_jsonb(row) keeps the column names; bring them to AlarmLifecycleRow's shape. */
function alarmFromJson(j: Record<string, unknown>): AlarmLifecycleRow {
  const date = (v: unknown) => (v === null || v === undefined ? null : new Date(v as string));
  return {
    id: Number(j.id), tag: j.tag as string, messageId: (j.message_id as string | null) ?? null, alarmType: j.alarm_type as AlarmType,
    content: j.content as string, details: j.details ?? null, state: j.state as AlarmState, occurrences: Number(j.occurrences),
    createdAt: date(j.created_at)!, lastSeenAt: date(j.last_seen_at)!,
    acknowledgedAt: date(j.acknowledged_at), acknowledgedBy: (j.acknowledged_by as string | null) ?? null, ackNote: (j.ack_note as string | null) ?? null,
    resolvedAt: date(j.resolved_at), resolvedBy: (j.resolved_by as string | null) ?? null, resolveNote: (j.resolve_note as string | null) ?? null,
  };
}

/** Statuses a notification lists as failing: final failures, unsupported items and domains awaiting a retry. */
const FAILING = ['failed', 'unknown_domain', 'unsupported', 'retryable'];

/** The first `limit` failing domains of each batch (by name) and how many there are in all. */
export async function failingDomainsOf(db: Queryable, messageIds: string[], limit: number): Promise<Map<string, { domains: string[]; total: number }>> {
  const out = new Map<string, { domains: string[]; total: number }>();
  if (messageIds.length === 0) return out;
  const { rows } = await db.query<{ messageId: string; domain: string; total: number }>(
    `SELECT "messageId", domain, total FROM (
       SELECT message_id AS "messageId", domain, count(*) OVER w AS total, row_number() OVER (w ORDER BY domain) AS n
       FROM batch_domain WHERE message_id = ANY($1) AND status = ANY($2)
       WINDOW w AS (PARTITION BY message_id)) x
     WHERE n <= $3 ORDER BY "messageId", domain`,
    [messageIds, FAILING, limit],
  );
  for (const r of rows) {
    const entry = out.get(r.messageId) ?? { domains: [], total: Number(r.total) };
    entry.domains.push(r.domain);
    out.set(r.messageId, entry);
  }
  return out;
}
