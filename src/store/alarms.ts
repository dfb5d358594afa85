/**
 * sys_task_process_alarm: the table operators already query. New rows keep its tag shape
 * ({"taskId":"<messageId>_exc","type":"DOMAIN_B_PIPE"}) and fill the indexed message_id column.
 */
import type { Queryable } from './db.js';

export type AlarmType =
  | 'BATCH_FAILURES'        // a batch run ended with failed, unknown or unsupported domains
  | 'UNSUPPORTED_REQ_TYPE'  // a callback carried a reqType we do not handle
  | 'JOB_PARKED'            // a job left the queue for the parked queue
  | 'TOKEN_REJECTED'        // repeated 401s even with a fresh token
  | 'BAD_CREDENTIALS';      // the token endpoint refused our credentials; the circuit is open

export interface AlarmRow {
  id: number;
  tag: string;
  messageId: string | null;
  alarmType: AlarmType;
  content: string;
  details: unknown;
  createdAt: Date;
}

export function alarmTag(messageId: string | null): string {
  return JSON.stringify(messageId ? { taskId: `${messageId}_exc`, type: 'DOMAIN_B_PIPE' } : { taskId: 'secplat_token_exc', type: 'SECPLAT_TOKEN' });
}

export async function raiseAlarm(
  db: Queryable,
  alarm: { messageId: string | null; type: AlarmType; content: string; details?: unknown },
): Promise<void> {
  const details = alarm.details === undefined ? null : JSON.stringify(withoutNul(alarm.details));
  await db.query(
    'INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, details) VALUES ($1, $2, $3, $4, $5)',
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

/** The replacement for `tag LIKE '%<id>%'`: by messageIds (indexed) and/or a start time. */
export async function findAlarms(db: Queryable, filter: { messageIds?: string[]; since?: Date; limit?: number }): Promise<AlarmRow[]> {
  const where: string[] = [];
  const params: unknown[] = [];
  if (filter.messageIds && filter.messageIds.length > 0) { params.push(filter.messageIds); where.push(`message_id = ANY($${params.length})`); }
  if (filter.since) { params.push(filter.since); where.push(`created_at >= $${params.length}`); }
  params.push(filter.limit ?? 500);
  const { rows } = await db.query<AlarmRow>(
    `SELECT id::int, tag, message_id AS "messageId", alarm_type AS "alarmType", content, details, created_at AS "createdAt"
     FROM sys_task_process_alarm ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
     ORDER BY created_at DESC, id DESC LIMIT $${params.length}`,
    params,
  );
  return rows;
}
