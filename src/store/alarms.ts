/**
 * sys_task_process_alarm: the table operators already query. New rows keep its tag shape
 * ({"taskId":"<messageId>_exc","type":"DOMAIN_B_PIPE"}) and fill the indexed message_id column.
 */
import type { AlarmState } from './alarm-lifecycle.js';
import type { Queryable } from './db.js';

export type AlarmType =
  | 'BATCH_FAILURES'        // a batch run ended with failed, unknown or unsupported domains
  | 'UNSUPPORTED_REQ_TYPE'  // a callback carried a reqType we do not handle
  | 'JOB_PARKED'            // a job left the queue for the parked queue
  | 'TOKEN_REJECTED'        // repeated 401s even with a fresh token
  | 'BAD_CREDENTIALS'       // the token endpoint refused our credentials; the circuit is open
  | 'TOKEN_CONTENTION'      // another client (likely another environment) keeps taking the token with our credentials
  | 'TOKEN_BUDGET'          // token fetches today reached 80 % of TOKEN_DAILY_BUDGET
  | 'AWAITING_PIPELINE';    // domains the pipeline reported unfinished are still awaiting after AWAITING_PIPELINE_ALARM_MS

export interface AlarmRow {
  id: number;
  tag: string;
  messageId: string | null;
  alarmType: AlarmType;
  content: string;
  details: unknown;
  createdAt: Date;
  /** The lifecycle (migration 003): open -> acknowledged -> resolved, with who, when and a note for each step. */
  state: AlarmState;
  occurrences: number;
  lastSeenAt: Date;
  acknowledgedAt: Date | null;
  acknowledgedBy: string | null;
  ackNote: string | null;
  resolvedAt: Date | null;
  resolvedBy: string | null;
  resolveNote: string | null;
  /** Opaque position of this row in newest-first order; pass as `before` to read the rows after it. */
  cursor: string;
  /** Only with `trim`: true when content or an array of details was cut (GET /api/alarms/:id has it whole). */
  truncated?: boolean;
}

export function alarmTag(messageId: string | null): string {
  return JSON.stringify(messageId ? { taskId: `${messageId}_exc`, type: 'DOMAIN_B_PIPE' } : { taskId: 'secplat_token_exc', type: 'SECPLAT_TOKEN' });
}

export async function raiseAlarm(
  db: Queryable,
  alarm: { messageId: string | null; type: AlarmType; content: string; details?: unknown },
): Promise<void> {
  const details = alarm.details === undefined ? null : JSON.stringify(withoutNul(alarm.details));
  // While an alarm of the same batch and type is active (open or acknowledged), a repeat counts on it and
  // brings its content up to date instead of adding a row. A new alarm also gets its 'opened' outbox row
  // (src/notify/ delivers it) in the same statement, so an alarm is never written without its notification;
  // xmax = 0 only for a row this statement inserted, so a repeat notifies nobody.
  await db.query(
    `WITH a AS (
       INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, details) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (coalesce(message_id, ''), alarm_type) WHERE state <> 'resolved'
       DO UPDATE SET occurrences = sys_task_process_alarm.occurrences + 1, last_seen_at = now(),
                     content = EXCLUDED.content, details = EXCLUDED.details
       RETURNING id, alarm_type, (xmax = 0) AS inserted)
     INSERT INTO alarm_notification (alarm_id, event, alarm_type) SELECT id, 'opened', alarm_type FROM a WHERE inserted`,
    [alarmTag(alarm.messageId), alarm.messageId, alarm.type, withoutNul(alarm.content), details],
  );
}

/** PostgreSQL text and jsonb cannot hold NUL; an alarm about a poison message must still be written. */
function withoutNul<T>(value: T): T {
  if (typeof value === 'string') return value.replaceAll('\u0000', '\ufffd') as T;
  if (Array.isArray(value)) return value.map(withoutNul) as T;
  if (value && typeof value === 'object' && !(value instanceof Date)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [withoutNul(k), withoutNul(v)])) as T;
  }
  return value;
}

/** Where a page of alarms ended: rows older than this come next (newest first, ties broken by id). */
export interface AlarmCursor { createdAt: string; id: number }

/** How the list view bounds each row: arrays in `details` cut to `arrayItems`, `content` to `contentChars`. */
export interface AlarmTrim { arrayItems: number; contentChars: number }

export interface AlarmFilter {
  messageIds?: string[];
  since?: Date;
  limit?: number;
  /** Only this alarm. */
  id?: number;
  /** Only alarms in these states (served by sys_task_process_alarm_state); absent: every state. */
  states?: readonly AlarmState[];
  /** Keyset paging: only rows after this one in newest-first order (a row's `cursor`, decoded). */
  before?: AlarmCursor;
  /** List view: trimmed in SQL, so a huge alarm never leaves PostgreSQL whole (rows then carry `truncated`). */
  trim?: AlarmTrim;
}

// created_at as text with all six fractional digits in UTC: a JavaScript Date keeps milliseconds only, and
// a cursor that lost the microseconds would skip or repeat rows created within the same millisecond.
const CREATED_AT_TEXT = `to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;
const CURSOR_TEXT = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)_([1-9]\d{0,15})$/;

/** The opaque `nextCursor` / `before` text for a row. */
function encodeCursor(createdAt: string, id: number): string {
  return Buffer.from(`${createdAt}_${id}`).toString('base64url');
}

/** Decodes a cursor made by findAlarms; null when it is not one (the caller answers 400). */
export function parseAlarmCursor(text: string): AlarmCursor | null {
  if (!/^[A-Za-z0-9_-]{1,100}$/.test(text)) return null;
  const m = CURSOR_TEXT.exec(Buffer.from(text, 'base64url').toString('utf8'));
  if (!m) return null;
  const id = Number(m[2]);
  const createdAt = m[1]!;
  const year = Number(createdAt.slice(0, 4));
  if (!Number.isSafeInteger(id) || year < 1970 || Number.isNaN(Date.parse(createdAt))) return null;
  return { createdAt, id };
}

/**
 * The replacement for `tag LIKE '%<id>%'`: by messageIds (indexed), a start time, one id, and/or keyset
 * paging, newest first. Each row carries `cursor`, to pass back as `before` for the rows after it.
 */
export async function findAlarms(db: Queryable, filter: AlarmFilter): Promise<AlarmRow[]> {
  const where: string[] = [];
  const params: unknown[] = [];
  const param = (v: unknown) => { params.push(v); return `$${params.length}`; };
  if (filter.messageIds && filter.messageIds.length > 0) where.push(`message_id = ANY(${param(filter.messageIds)})`);
  if (filter.since) where.push(`created_at >= ${param(filter.since)}`);
  if (filter.id !== undefined) where.push(`id = ${param(filter.id)}`);
  if (filter.states) where.push(`state = ANY(${param(filter.states)}::text[])`);
  if (filter.before) where.push(`(created_at, id) < (${param(filter.before.createdAt)}::timestamptz, ${param(filter.before.id)})`);
  let content = 'content';
  let details = 'details';
  let truncated = '';
  if (filter.trim) {
    const n = param(filter.trim.arrayItems);
    const c = param(filter.trim.contentChars);
    // Every top-level array in details (failures, items) keeps its first n entries plus a <name>Total count.
    // PostgreSQL may evaluate both sides of an AND: jsonb_array_length only ever sees an array (or NULL).
    const arrayLength = `jsonb_array_length(CASE WHEN jsonb_typeof(v) = 'array' THEN v END)`;
    const isBig = `${arrayLength} > ${n}`;
    content = `CASE WHEN length(content) > ${c} THEN left(content, ${c}) || '…' ELSE content END`;
    details = `CASE WHEN jsonb_typeof(details) = 'object' THEN (
        SELECT coalesce(jsonb_object_agg(k, CASE WHEN jsonb_typeof(v) = 'array'
                          THEN jsonb_path_query_array(v, '$[0 to $last]', jsonb_build_object('last', ${n}::int - 1)) ELSE v END), '{}'::jsonb)
            || coalesce(jsonb_object_agg(k || 'Total', ${arrayLength}) FILTER (WHERE jsonb_typeof(v) = 'array'), '{}'::jsonb)
        FROM jsonb_each(details) AS e(k, v)) ELSE details END`;
    truncated = `, (length(content) > ${c} OR (jsonb_typeof(details) = 'object'
        AND EXISTS (SELECT 1 FROM jsonb_each(details) AS e(k, v) WHERE ${isBig}))) AS truncated`;
  }
  const limit = param(filter.limit ?? 500);
  const { rows } = await db.query<AlarmRow & { cursorAt: string }>(
    `SELECT id::int, tag, message_id AS "messageId", alarm_type AS "alarmType", ${content} AS content, ${details} AS details,
            state, occurrences, created_at AS "createdAt", last_seen_at AS "lastSeenAt",
            acknowledged_at AS "acknowledgedAt", acknowledged_by AS "acknowledgedBy", ack_note AS "ackNote",
            resolved_at AS "resolvedAt", resolved_by AS "resolvedBy", resolve_note AS "resolveNote",
            ${CREATED_AT_TEXT} AS "cursorAt"${truncated}
     FROM sys_task_process_alarm ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
     ORDER BY created_at DESC, id DESC LIMIT ${limit}`,
    params,
  );
  return rows.map(({ cursorAt, ...row }) => ({ ...row, cursor: encodeCursor(cursorAt, row.id) }));
}
