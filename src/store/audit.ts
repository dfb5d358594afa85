/**
 * operator_audit: who changed what, when, why and exactly how. Every change an operator makes (a replay, a
 * bulk replay started or cancelled, an alarm acknowledged or resolved) writes its row inside the change's own
 * transaction, so a change is never committed without its row, nor a row without its change.
 */
import type pg from 'pg';
import { acknowledgeAlarms, resolveAlarms, type AlarmLifecycleRow } from './alarm-lifecycle.js';
import { withTransaction, type Db, type Queryable } from './db.js';

export const AUDIT_ACTIONS = ['replay', 'bulk_replay_start', 'bulk_replay_cancel', 'acknowledge', 'resolve'] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

/**
 * Who acts: an HTTP principal ({ name, role, via } from principalOf), or a CLI's OS user (via 'cli').
 * Structural on purpose, so a new way to sign in needs no change here.
 */
export interface Actor { name: string; role: string | null; via: string }

/** Code that replays without saying who (tests, scripts of our own): recorded, never silently skipped. */
export const UNATTRIBUTED: Actor = Object.freeze({ name: 'unattributed', role: null, via: 'library' });

export interface AuditEntry {
  action: AuditAction;
  actor: Actor;
  /** Why, in the operator's words (a replay's reason, an alarm's note); null when none was asked. */
  reason: string | null;
  /** What was changed: { messageId }, { bulkReplayId }, { alarmId, … }. */
  target: Record<string, unknown>;
  /** Exactly what changed, e.g. [{ domain, from: 'failed', to: 'pending' }]. */
  changes: unknown[];
}

export interface AuditRow {
  id: number;
  at: Date;
  action: AuditAction;
  actor: string;
  role: string | null;
  via: string | null;
  reason: string | null;
  target: Record<string, unknown>;
  changes: unknown[];
  /** Pass as `before` to read the rows after this one (newest first). */
  cursor: string;
}

/** Writes one audit row; call it with the transaction client of the change it records. */
export async function insertAudit(client: Queryable, entry: AuditEntry): Promise<number> {
  const { rows } = await client.query<{ id: string }>(
    `INSERT INTO operator_audit (action, actor, role, via, reason, target, changes) VALUES ($1, $2, $3, $4, $5, $6, $7)
     RETURNING id::text`,
    [entry.action, entry.actor.name, entry.actor.role, entry.actor.via, entry.reason, JSON.stringify(entry.target), JSON.stringify(entry.changes)],
  );
  return Number(rows[0]!.id);
}

/** The opaque `nextCursor` / `before` of an audit row. */
function encodeCursor(id: number): string {
  return Buffer.from(`audit_${id}`).toString('base64url');
}

/** Decodes a cursor made by listAudit; null when it is not one (the caller answers 400). */
export function parseAuditCursor(text: string): number | null {
  if (!/^[A-Za-z0-9_-]{1,40}$/.test(text)) return null;
  const m = /^audit_([1-9][0-9]{0,15})$/.exec(Buffer.from(text, 'base64url').toString('utf8'));
  const id = m ? Number(m[1]) : NaN;
  return Number.isSafeInteger(id) ? id : null;
}

export interface AuditFilter {
  /** Only rows older than this one (a row's `cursor`, decoded). */
  before?: number;
  action?: AuditAction;
  limit: number;
}

/** Newest first by id: the primary key serves it, operator_audit_action with an action. */
export async function listAudit(db: Queryable, filter: AuditFilter): Promise<AuditRow[]> {
  const { rows } = await db.query<Omit<AuditRow, 'id' | 'cursor'> & { id: string }>(
    `SELECT id::text, at, action, actor, role, via, reason, target, changes FROM operator_audit
     WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR action = $2)
     ORDER BY operator_audit.id DESC LIMIT $3`, // the column: a bare `id` would sort by the text alias above
    [filter.before ?? null, filter.action ?? null, filter.limit],
  );
  return rows.map((r) => ({ ...r, id: Number(r.id), cursor: encodeCursor(Number(r.id)) }));
}

/**
 * A Db whose transactions are savepoints inside `client`'s open transaction. Repository functions that open
 * their own (withTransaction: acknowledgeAlarms, resolveAlarms) then run inside the caller's, so their change
 * and the caller's audit row commit or roll back together. Any other transaction-control statement is
 * refused: a COMMIT passed through would silently end the caller's transaction half-way.
 */
export function nestedIn(client: pg.PoolClient): Db {
  const control: Record<string, string> = {
    BEGIN: 'SAVEPOINT pcp_nested', COMMIT: 'RELEASE SAVEPOINT pcp_nested', ROLLBACK: 'ROLLBACK TO SAVEPOINT pcp_nested',
  };
  const query = (text: unknown, ...rest: unknown[]): unknown => {
    if (typeof text === 'string') {
      const statement = text.trim().replace(/;$/, '').toUpperCase();
      const mapped = control[statement];
      if (mapped) return client.query(mapped);
      if (/^(START|BEGIN|COMMIT|END|ROLLBACK|ABORT|PREPARE TRANSACTION)\b/.test(statement)) {
        return Promise.reject(new Error(`"${text.slice(0, 40)}" cannot run inside a nested transaction`));
      }
    }
    return (client.query as (...args: unknown[]) => unknown)(text, ...rest);
  };
  const nested = new Proxy(client, {
    get(target, prop) {
      if (prop === 'query') return query;
      // The caller's withTransaction releases the connection, once.
      if (prop === 'release') return () => undefined;
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { connect: () => Promise.resolve(nested) } as unknown as Db;
}

/**
 * Acknowledges or resolves alarms (acknowledgeAlarms / resolveAlarms, `by` = the actor's name) and writes one
 * audit row per alarm, all in one transaction: all of them with their rows, or none (404 unknown id, 409 wrong
 * state, as the lifecycle functions decide).
 */
export async function auditedAlarmStep(
  db: Db, action: 'acknowledge' | 'resolve', step: { ids: number[]; note?: string }, actor: Actor,
): Promise<AlarmLifecycleRow[]> {
  return withTransaction(db, async (client) => {
    const input = { ids: step.ids, by: actor.name, note: step.note };
    const changed = action === 'acknowledge' ? await acknowledgeAlarms(nestedIn(client), input) : await resolveAlarms(nestedIn(client), input);
    for (const a of changed) {
      // Resolving keeps acknowledged_at, so a resolved alarm with one had been acknowledged first.
      const from = action === 'acknowledge' || !a.acknowledgedAt ? 'open' : 'acknowledged';
      await insertAudit(client, {
        action, actor, reason: action === 'acknowledge' ? a.ackNote : a.resolveNote,
        target: { alarmId: a.id, messageId: a.messageId, alarmType: a.alarmType },
        changes: [{ field: 'state', from, to: a.state }],
      });
    }
    return changed;
  });
}
