/**
 * The operators' questions, answered once: the JSON API and the CLIs call these functions instead of
 * assembling the same reads themselves (like Graphile Worker's cleanup, shared by its CLI and library).
 */
import { NotFoundError, ValidationError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { withTimeout } from '../lib/timing.js';
import { normalizeHostname } from '../pipeline/callback-input.js';
import { replayBatches, type ReplayDeps, type ReplayOptions, type ReplayPlan } from '../pipeline/replay.js';
import { ALARM_STATES, type AlarmLifecycleRow, type AlarmState } from '../store/alarm-lifecycle.js';
import { findAlarms, type AlarmCursor, type AlarmRow, type AlarmTrim } from '../store/alarms.js';
import { listAttempts, type AttemptRow } from '../store/attempts.js';
import { listAudit, type AuditAction, type AuditRow } from '../store/audit.js';
import type { Queryable } from '../store/db.js';
import { getInventory, type InventoryDetail } from '../store/inventory.js';
import {
  batchesOfDomain, countByStatus, getBatch, listDomains, type BatchRow, type DomainHistoryRow, type DomainRow, type DomainStatus, type StatusCounts,
} from '../store/ledger.js';
import type { TokenState } from '../token/token-watch.js';
import { getBulkReplay, listBulkReplays, type BulkReplayRow } from './bulk-replay.js';
import { checkReadiness, type Readiness, type ReadinessDeps } from './readiness.js';

/** A domain the operator typed or pasted that is not a hostname. */
export class InvalidDomainError extends ValidationError {
  constructor(raw: string) { super(`${JSON.stringify(raw.slice(0, 80))} is not a valid domain name`); }
}

export interface BatchReport {
  messageId: string;
  batch: BatchRow;
  counts: StatusCounts;
  domains: DomainRow[];
  /** Every security-platform call made for the batch's domains, by domain then time (see src/store/attempts.ts). */
  attempts: AttemptRow[];
  /** Every callback received for this messageId, in order of arrival. */
  callbacks: CallbackRecord[];
  /** The batch's alarms in every state, newest first (bounded like the alarm list; GET /api/alarms/:id has each whole). */
  alarms: AlarmRow[];
}

/** One callback as received (callback_audit). */
export interface CallbackRecord {
  id: number;
  receivedAt: Date;
  remoteAddr: string | null;
  itemCount: number;
  body: unknown;
  /** True when the messageId had come before: this callback was merged into the batch. */
  repeat: boolean;
}

/** The list view of alarms: enough to see what happened; GET /api/alarms/:id has the rest. */
export const ALARM_LIST_TRIM: AlarmTrim = { arrayItems: 20, contentChars: 1000 };
const BATCH_ALARMS_MAX = 100;

/** One batch: its row, counts by status, every domain's outcome and attempt history; NotFoundError when unknown. */
export async function batchReport(db: Queryable, messageId: string): Promise<BatchReport> {
  const batch = await getBatch(db, messageId);
  if (!batch) throw new NotFoundError(`no batch with messageId ${messageId} (the callback never arrived, or the id is mistyped)`);
  const [counts, domains, attempts, callbacks, alarms] = await Promise.all([
    countByStatus(db, [messageId]), listDomains(db, messageId), listAttempts(db, messageId), listCallbacks(db, messageId),
    findAlarms(db, { messageIds: [messageId], states: ALARM_STATES, limit: BATCH_ALARMS_MAX, trim: ALARM_LIST_TRIM }),
  ]);
  return { messageId, batch, counts: counts.get(messageId)!, domains, attempts, callbacks, alarms };
}

/** The callbacks of one messageId in order of arrival (callback_audit_message_id). */
export async function listCallbacks(db: Queryable, messageId: string): Promise<CallbackRecord[]> {
  const { rows } = await db.query<Omit<CallbackRecord, 'id' | 'repeat'> & { id: string }>(
    `SELECT id::text, received_at AS "receivedAt", remote_addr AS "remoteAddr", item_count AS "itemCount", body
     FROM callback_audit WHERE message_id = $1 ORDER BY callback_audit.id`, // the column: a bare `id` would sort by the text alias
    [messageId],
  );
  return rows.map((r, i) => ({ ...r, id: Number(r.id), repeat: i > 0 }));
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

// ---------------------------------------------------------------------------------------------------------
// Alarms
// ---------------------------------------------------------------------------------------------------------

/** What an alarm list shows when no state is asked for: the alarms someone still has to act on. */
export const DEFAULT_ALARM_STATES: readonly AlarmState[] = ['open', 'acknowledged'];

export interface AlarmQuery {
  messageIds?: string[];
  since?: Date;
  /** Default: open and acknowledged. */
  states?: readonly AlarmState[];
  limit: number;
  before?: AlarmCursor;
}

export interface AlarmList {
  /** Newest first, each bounded (ALARM_LIST_TRIM). */
  alarms: AlarmRow[];
  /** Counts by status of every batch the page's alarms name. */
  counts: Record<string, StatusCounts>;
  /** Pass as `before` for the next page; null on the last one. */
  nextCursor: string | null;
}

function statesFilter(states: readonly AlarmState[] | undefined): readonly AlarmState[] | undefined {
  const wanted = states ?? DEFAULT_ALARM_STATES;
  return wanted.length === ALARM_STATES.length ? undefined : wanted;
}

/** One page of alarms (findAlarms, keyset paging) with the counts of the batches they name. */
export async function alarmList(db: Queryable, q: AlarmQuery): Promise<AlarmList> {
  // One row more than asked tells whether another page exists, without a count(*).
  const rows = await findAlarms(db, { messageIds: q.messageIds, since: q.since, before: q.before, states: statesFilter(q.states), limit: q.limit + 1, trim: ALARM_LIST_TRIM });
  const alarms = rows.slice(0, q.limit);
  const batchIds = [...new Set(alarms.map((a) => a.messageId).filter((id): id is string => !!id))];
  const counts = Object.fromEntries(await countByStatus(db, batchIds));
  return { alarms, counts, nextCursor: rows.length > q.limit ? alarms[alarms.length - 1]!.cursor : null };
}

/** One alarm whole, with its batch's counts; NotFoundError when unknown. */
export async function alarmDetail(db: Queryable, id: number): Promise<{ alarm: AlarmRow; counts: StatusCounts | null }> {
  const [alarm] = await findAlarms(db, { id, limit: 1 });
  if (!alarm) throw new NotFoundError(`no alarm with id ${id}`);
  const counts = alarm.messageId ? (await countByStatus(db, [alarm.messageId])).get(alarm.messageId) ?? null : null;
  return { alarm, counts };
}

/** Statuses an operator has to look at: final failures, unsupported items and domains still waiting for a retry. */
export const FAILING_STATUSES: readonly DomainStatus[] = ['failed', 'unknown_domain', 'unsupported', 'retryable'];

export interface AlarmReport {
  alarms: AlarmLifecycleRow[];
  /** Every batch asked for or named by an alarm: its counts and its failing domains. */
  batches: { messageId: string; counts: StatusCounts; failing: DomainRow[] }[];
}

/** The alarms (whole, not paged) of some batches or of a time window, with each batch's state (npm run alarms). */
export async function alarmReport(db: Queryable, q: Omit<AlarmQuery, 'before'> & { messageIds: string[] }): Promise<AlarmReport> {
  const rows = await findAlarms(db, { messageIds: q.messageIds, since: q.since, states: statesFilter(q.states), limit: q.limit });
  const alarms = rows.map(({ cursor: _cursor, truncated: _truncated, ...a }) => a);
  const ids = [...new Set([...q.messageIds, ...alarms.flatMap((a) => (a.messageId ? [a.messageId] : []))])];
  const counts = await countByStatus(db, ids);
  const batches = await Promise.all(ids.map(async (id) => ({
    messageId: id,
    counts: counts.get(id)!,
    failing: (await listDomains(db, id)).filter((d) => FAILING_STATUSES.includes(d.status)),
  })));
  return { alarms, batches };
}

// ---------------------------------------------------------------------------------------------------------
// Token, queues, overview
// ---------------------------------------------------------------------------------------------------------

/** A dependency read that may hang (a half-open socket) is given up after this long, like readiness. */
const READ_TIMEOUT_MS = 2000;

const bounded = <T>(p: Promise<T>): Promise<T> => withTimeout(p, READ_TIMEOUT_MS);

export interface TokenReport {
  /** The shared token's state without the secret; null when Redis cannot be read. */
  token: TokenState | null;
  /** Why token is null (the detail goes to the log, not to the answer). */
  tokenError: string | null;
}

export async function tokenReport(deps: { tokens: { state(): Promise<TokenState> }; logger: Pick<Logger, 'warn'> }): Promise<TokenReport> {
  try {
    return { token: await bounded(deps.tokens.state()), tokenError: null };
  } catch (err) {
    deps.logger.warn('token state unavailable', { err: (err as Error).message });
    return { token: null, tokenError: 'the token state could not be read from Redis (is Redis down?); see the service log' };
  }
}

export interface QueueDepths {
  /** Jobs waiting for a worker. */
  jobs: number;
  /** Jobs waiting in each retry tier, shortest delay first. */
  retryTiers: { delayMs: number; messages: number }[];
  /** Jobs that used up their deliveries and wait for an operator. */
  parked: number;
}

export interface QueueReport { queues: QueueDepths | null; queuesError: string | null }

export async function queueReport(deps: { broker: { queueDepths(): Promise<Record<string, number> | undefined> }; logger: Pick<Logger, 'warn'> }): Promise<QueueReport> {
  let depths: Record<string, number> | undefined;
  try {
    depths = await bounded(deps.broker.queueDepths());
  } catch (err) {
    deps.logger.warn('queue depths unavailable', { err: (err as Error).message });
    return { queues: null, queuesError: 'the queue depths could not be read from RabbitMQ; see the service log' };
  }
  if (!depths) return { queues: null, queuesError: 'RabbitMQ is not connected' };
  const retryTiers = Object.entries(depths).flatMap(([label, messages]) => {
    const m = /^retry_(\d+)$/.exec(label);
    return m ? [{ delayMs: Number(m[1]), messages }] : [];
  }).sort((a, b) => a.delayMs - b.delayMs);
  return { queues: { jobs: depths.jobs ?? 0, retryTiers, parked: depths.parked ?? 0 }, queuesError: null };
}

export interface Overview extends TokenReport, QueueReport {
  readAt: string;
  /** ok/down per dependency (checkReadiness, the /readyz answer). */
  readiness: Readiness;
  /** Batches whose job the broker has not confirmed yet, and how long the oldest has waited. */
  publish: { waiting: number; oldestAgeSeconds: number | null } | null;
  /** Alarms someone has to act on. */
  alarms: { open: number; acknowledged: number } | null;
  /** Why publish and alarms are null (PostgreSQL could not be read). */
  ledgerError: string | null;
}

export interface OverviewDeps extends ReadinessDeps {
  db: Queryable;
  tokens: { state(): Promise<TokenState> };
  broker: ReadinessDeps['broker'] & { queueDepths(): Promise<Record<string, number> | undefined> };
}

/** The console's front page: every dependency, the token, the queues, the relay's backlog and the open alarms. */
export async function overview(deps: OverviewDeps): Promise<Overview> {
  const readAt = new Date().toISOString();
  const [readiness, token, queues, ledger] = await Promise.all([
    checkReadiness(deps), tokenReport(deps), queueReport(deps), ledgerOverview(deps),
  ]);
  return { readAt, readiness, ...token, ...queues, ...ledger };
}

async function ledgerOverview(deps: OverviewDeps): Promise<Pick<Overview, 'publish' | 'alarms' | 'ledgerError'>> {
  try {
    // Each count is served by a partial or state index (batch_publish_pending, sys_task_process_alarm_state).
    const { rows } = await bounded(deps.db.query<{ waiting: number; oldest: number | null; open: number; acknowledged: number }>(
      `SELECT (SELECT count(*)::int FROM batch WHERE publish_pending) AS waiting,
              (SELECT extract(epoch FROM now() - min(updated_at))::float8 FROM batch WHERE publish_pending) AS oldest,
              (SELECT count(*)::int FROM sys_task_process_alarm WHERE state = 'open') AS open,
              (SELECT count(*)::int FROM sys_task_process_alarm WHERE state = 'acknowledged') AS acknowledged`));
    const r = rows[0]!;
    return {
      publish: { waiting: r.waiting, oldestAgeSeconds: r.oldest === null ? null : Math.max(0, Math.round(r.oldest)) },
      alarms: { open: r.open, acknowledged: r.acknowledged },
      ledgerError: null,
    };
  } catch (err) {
    deps.logger.warn('overview: ledger unavailable', { err: (err as Error).message });
    return { publish: null, alarms: null, ledgerError: 'PostgreSQL could not be read; see the service log' };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Batch list
// ---------------------------------------------------------------------------------------------------------

// One list each, written exactly as the partial indexes of migration 008 are, so the planner sees that a
// probe is covered by batch_domain_failing / batch_domain_unfinished.
const FAILING_SQL = `status IN ('failed', 'unknown_domain')`;
const UNFINISHED_SQL = `status IN ('pending', 'in_progress', 'retryable', 'awaiting_pipeline')`;
const hasFailuresSql = `EXISTS (SELECT 1 FROM batch_domain d WHERE d.message_id = b.message_id AND d.${FAILING_SQL})`;
const isOpenSql = `EXISTS (SELECT 1 FROM batch_domain d WHERE d.message_id = b.message_id AND d.${UNFINISHED_SQL})`;
const CREATED_AT_TEXT = `to_char(b.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;
const BATCH_CURSOR = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)_([A-Za-z0-9_-]{1,128})$/;

/** Where a page of batches ended: batches older than this (created_at, then messageId) come next. */
export interface BatchCursor { createdAt: string; messageId: string }

export function parseBatchCursor(text: string): BatchCursor | null {
  if (!/^[A-Za-z0-9_-]{1,300}$/.test(text)) return null;
  const m = BATCH_CURSOR.exec(Buffer.from(text, 'base64url').toString('utf8'));
  if (!m || Number.isNaN(Date.parse(m[1]!)) || Number(m[1]!.slice(0, 4)) < 1970) return null;
  return { createdAt: m[1]!, messageId: m[2]! };
}

export interface BatchFilter {
  /** true: only batches with a failed or unknown_domain domain; false: only those without. */
  hasFailures?: boolean;
  /** true: only batches with a pending, in_progress, retryable or awaiting_pipeline domain; false: only finished ones. */
  open?: boolean;
  /** Created at or after. */
  since?: Date;
  /** Created before. */
  until?: Date;
  before?: BatchCursor;
  limit: number;
}

export type BatchListRow = BatchRow & { hasFailures: boolean; open: boolean; cursor: string };

/**
 * One page of batches, newest first (keyset on created_at, message_id); no count(*), never a scan of batch.
 *  - No filter, or only `false` ones (most batches): a backward walk of batch_created, each batch looked at
 *    probed with NOT EXISTS in a partial index, until the page is full.
 *  - `open=true` or `hasFailures=true`: driven from that partial index (batch_domain_unfinished, else
 *    batch_domain_failing): its distinct batches, each fetched by primary key, sorted, the page cut. Open
 *    domains are the work in flight, and failures what is left to deal with: both a small part of a ledger
 *    that is mostly succeeded, which a walk would have to pass whole to fill a page of them.
 *    The distinct batches are read by a "loose index scan" (one probe of the partial index per batch,
 *    https://wiki.postgresql.org/wiki/Loose_indexscan), and each batch by LATERAL ... OFFSET 0: with a plain
 *    DISTINCT and join, the planner's row estimates for a few hundred batches sometimes made a scan of all
 *    of batch_domain or batch look cheaper, and a page must not depend on that.
 */
export async function findBatches(db: Queryable, f: BatchFilter): Promise<BatchListRow[]> {
  const where: string[] = [];
  const params: unknown[] = [];
  const param = (v: unknown) => { params.push(v); return `$${params.length}`; };
  const driver = f.open ? UNFINISHED_SQL : f.hasFailures ? FAILING_SQL : null;
  if (f.since) where.push(`b.created_at >= ${param(f.since)}`);
  if (f.until) where.push(`b.created_at < ${param(f.until)}`);
  if (f.before) where.push(`(b.created_at, b.message_id) < (${param(f.before.createdAt)}::timestamptz, ${param(f.before.messageId)}::text)`);
  if (f.hasFailures !== undefined && driver !== FAILING_SQL) where.push(f.hasFailures ? hasFailuresSql : `NOT ${hasFailuresSql}`);
  if (f.open !== undefined && driver !== UNFINISHED_SQL) where.push(f.open ? isOpenSql : `NOT ${isOpenSql}`);
  const from = driver ? 'x CROSS JOIN LATERAL (SELECT * FROM batch WHERE batch.message_id = x.message_id OFFSET 0) b' : 'batch b';
  const distinct = driver
    ? `WITH RECURSIVE x(message_id) AS (
         (SELECT message_id FROM batch_domain WHERE ${driver} ORDER BY message_id LIMIT 1)
         UNION ALL
         SELECT (SELECT d.message_id FROM batch_domain d WHERE d.${driver} AND d.message_id > x.message_id ORDER BY d.message_id LIMIT 1)
         FROM x WHERE x.message_id IS NOT NULL)`
    : '';
  // The page first, then the two flags of just its rows: probes in the select list of the inner query
  // would be costed into (and could change) the choice of how the page itself is read.
  const { rows } = await db.query<BatchRow & { hasFailures: boolean; open: boolean; cursorAt: string }>(
    `${distinct}
     SELECT b.message_id AS "messageId", b.created_at AS "createdAt", b.updated_at AS "updatedAt", b.callbacks,
            b.publish_pending AS "publishPending", b.published_at AS "publishedAt", b.last_run_at AS "lastRunAt",
            ${hasFailuresSql} AS "hasFailures", ${isOpenSql} AS open, ${CREATED_AT_TEXT} AS "cursorAt"
     FROM (SELECT b.* FROM ${from} ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
           ORDER BY b.created_at DESC, b.message_id DESC LIMIT ${param(f.limit)}) b
     ORDER BY b.created_at DESC, b.message_id DESC`,
    params,
  );
  return rows.map(({ cursorAt, ...r }) => ({ ...r, cursor: Buffer.from(`${cursorAt}_${r.messageId}`).toString('base64url') }));
}

export interface BatchList {
  batches: (BatchListRow & { counts: StatusCounts; total: number })[];
  nextCursor: string | null;
}

/** Recent batches, newest first, each with its counts by status; `nextCursor` for the next page. */
export async function batchList(db: Queryable, f: BatchFilter): Promise<BatchList> {
  const rows = await findBatches(db, { ...f, limit: f.limit + 1 });
  const page = rows.slice(0, f.limit);
  const counts = await countByStatus(db, page.map((b) => b.messageId));
  return {
    batches: page.map((b) => {
      const c = counts.get(b.messageId)!;
      return { ...b, counts: c, total: Object.values(c).reduce((n, x) => n + x, 0) };
    }),
    nextCursor: rows.length > f.limit ? page[page.length - 1]!.cursor : null,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Export: a batch's domains that are not deleted, ready for the reply to the customer
// ---------------------------------------------------------------------------------------------------------

export const EXPORT_COLUMNS = ['domain', 'status', 'detail', 'user_id_cdn', 'attempts', 'updated'] as const;

export interface ExportRow { domain: string; status: DomainStatus; detail: string | null; user_id_cdn: string | null; attempts: number; updated: string }

export interface BatchExport { messageId: string; exportedAt: string; domains: ExportRow[] }

/** Every domain of the batch whose status is not succeeded, by name; NotFoundError when the batch is unknown. */
export async function batchExport(db: Queryable, messageId: string): Promise<BatchExport> {
  const batch = await getBatch(db, messageId);
  if (!batch) throw new NotFoundError(`no batch with messageId ${messageId} (the callback never arrived, or the id is mistyped)`);
  const domains = (await listDomains(db, messageId)).filter((d) => d.status !== 'succeeded').map((d) => ({
    domain: d.domain, status: d.status, detail: d.detail, user_id_cdn: d.userIdCdn, attempts: d.attempts, updated: d.updatedAt.toISOString(),
  }));
  return { messageId, exportedAt: new Date().toISOString(), domains };
}

/**
 * RFC 4180 CSV (CRLF line ends, a field with a comma, quote or line break quoted, quotes doubled) with a
 * header row. A cell starting with = + - @ (or a tab or CR) gets a leading ', so a spreadsheet shows the text
 * instead of running it as a formula (https://owasp.org/www-community/attacks/CSV_Injection).
 */
export function toCsv(header: readonly string[], rows: readonly (readonly (string | number | null)[])[]): string {
  const cell = (v: string | number | null): string => {
    let text = v === null ? '' : String(v);
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  return [header, ...rows].map((r) => r.map(cell).join(',')).join('\r\n') + '\r\n';
}

export function batchExportCsv(e: BatchExport): string {
  return toCsv(EXPORT_COLUMNS, e.domains.map((d) => EXPORT_COLUMNS.map((c) => d[c])));
}

// ---------------------------------------------------------------------------------------------------------
// Replay preview, bulk replays, audit
// ---------------------------------------------------------------------------------------------------------

/** What a replay of one batch would re-open and leave, each with why (nothing changes). */
export async function replayPreview(deps: ReplayDeps, messageId: string, opts: Pick<ReplayOptions, 'all' | 'domains'>): Promise<ReplayPlan> {
  return (await replayBatches(deps, [messageId], { ...opts, dryRun: true })).plan;
}

/** One bulk replay's progress (a run whose process died shows as failed); NotFoundError when unknown. */
export async function bulkReplayReport(db: Queryable, id: number): Promise<BulkReplayRow> {
  return getBulkReplay(db, id);
}

/** The newest bulk replays, newest first. */
export async function bulkReplayList(db: Queryable, limit: number): Promise<{ bulkReplays: BulkReplayRow[] }> {
  return { bulkReplays: await listBulkReplays(db, limit) };
}

export interface AuditTrail { entries: AuditRow[]; nextCursor: string | null }

/** Every replay, bulk replay, acknowledgement and resolution, newest first: who, when, why and what changed. */
export async function auditTrail(db: Queryable, q: { before?: number; action?: AuditAction; limit: number }): Promise<AuditTrail> {
  const rows = await listAudit(db, { ...q, limit: q.limit + 1 });
  const entries = rows.slice(0, q.limit);
  return { entries, nextCursor: rows.length > q.limit ? entries[entries.length - 1]!.cursor : null };
}
