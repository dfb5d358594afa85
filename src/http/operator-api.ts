/**
 * The operators' JSON API (the console's and the scripts'): overview, batches, replays, bulk replays,
 * exports, alarms and the audit. Reads go through src/ops/reports.ts, changes through replay, bulk replay and
 * the alarm lifecycle, each writing its audit row in its own transaction. Every route is behind the
 * `viewer` (read) or `operator` (change) guard createApp passes in; the guard runs before a body is read.
 * Query and body checks are strict: an unknown or malformed field is a 400 naming it.
 */
import express, { type Request, type RequestHandler, type Response, type Router } from 'express';
import type { Config } from '../config.js';
import { ValidationError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import { BulkReplays, type BulkFilter } from '../ops/bulk-replay.js';
import {
  alarmDetail, alarmList, auditTrail, batchExport, batchExportCsv, batchList, bulkReplayList, bulkReplayReport, overview,
  parseBatchCursor, type OverviewDeps,
} from '../ops/reports.js';
import { MESSAGE_ID } from '../pipeline/callback-input.js';
import type { JobPublisher } from '../pipeline/publish.js';
import { checkReason, replayBatches } from '../pipeline/replay.js';
import { ALARM_STATES, type AlarmState } from '../store/alarm-lifecycle.js';
import { parseAlarmCursor } from '../store/alarms.js';
import { AUDIT_ACTIONS, auditedAlarmStep, parseAuditCursor, type Actor, type AuditAction } from '../store/audit.js';
import type { Db } from '../store/db.js';
import { principalOf } from './auth.js';
import { openApiDocument } from './openapi.js';

export interface OperatorApiDeps extends Omit<OverviewDeps, 'db' | 'broker'> {
  config: Pick<Config, 'bulkReplayMaxBatches' | 'instanceId'>;
  db: Db;
  broker: JobPublisher & OverviewDeps['broker'];
  logger: Logger;
  metrics: Metrics;
  /** Where the bulk-replay runner registers its shutdown step (it ends its runs between two batches). */
  releasers?: { add(name: string, release: () => Promise<void> | void): void };
}

/** Mounts every route of this module; `viewer` and `operator` are the app's role guards. */
export function mountOperatorRoutes(app: Router, deps: OperatorApiDeps, guards: { viewer: RequestHandler; operator: RequestHandler }): void {
  const { db } = deps;
  const { viewer, operator } = guards;
  // The role check first, then the body: an unauthenticated caller costs no parsing.
  const body = express.json({ limit: '10kb', type: () => true });

  const bulk = new BulkReplays(deps);
  deps.releasers?.add('bulk replays', () => bulk.stop());
  // At start-up: a bulk replay left running by a process that died is marked failed (see bulk-replay.ts).
  void bulk.failAbandonedAtStart().catch((err: Error) =>
    deps.logger.warn('could not check for abandoned bulk replays; they are checked again when read', { err: err.message }));

  // The document holds no data, only shapes: open to anyone, like /healthz.
  app.get('/api/openapi.json', (_req, res) => { res.json(openApiDocument); });

  app.get('/api/overview', viewer, async (_req, res) => {
    res.json(await overview(deps));
  });

  app.get('/api/batches', viewer, async (req, res) => {
    const q = new Query(req, '/api/batches', ['hasFailures', 'open', 'since', 'until', 'before', 'limit']);
    const before = q.one('before');
    const cursor = before === undefined ? undefined : parseBatchCursor(before) ?? undefined;
    if (before !== undefined && !cursor) throw new ValidationError('before must be a nextCursor from an earlier /api/batches answer');
    res.json(await batchList(db, {
      hasFailures: q.boolean('hasFailures'), open: q.boolean('open'), since: q.time('since'), until: q.time('until'),
      before: cursor, limit: q.limit(PAGE),
    }));
  });

  app.get('/api/batches/:messageId/export', viewer, async (req, res) => {
    const messageId = assertMessageId(req.params.messageId);
    const q = new Query(req, '/api/batches/:messageId/export', ['format']);
    const format = q.one('format') ?? 'csv';
    if (format !== 'csv' && format !== 'json') throw new ValidationError('format must be csv or json');
    const exported = await batchExport(db, messageId);
    // messageId is [A-Za-z0-9_-] only (checked above), so the file name needs no quoting beyond this.
    res.set('Content-Disposition', `attachment; filename="batch-${messageId}-not-deleted.${format}"`);
    res.set('Cache-Control', 'no-store');
    if (format === 'json') res.json(exported);
    else res.type('text/csv; charset=utf-8').send(batchExportCsv(exported));
  });

  app.post('/api/batches/:messageId/replay', operator, body, async (req, res) => {
    const messageId = assertMessageId(req.params.messageId);
    const b = new Body(req.body, ['all', 'dryRun', 'domains', 'reason'], '{"dryRun":true}');
    const all = b.boolean('all');
    const dryRun = b.boolean('dryRun');
    const domains = b.stringList('domains', 1000);
    const reason = b.has('reason') ? checkReason(b.raw('reason')) : undefined;
    const result = await replayBatches(deps, [messageId], { all, dryRun, domains, reason, actor: dryRun ? undefined : actorOf(res) });
    res.json({
      messageId, dryRun, published: result.published.length > 0,
      reopened: result.reopened.map((r) => ({ domain: r.domain, status: r.status })),
      reopen: result.plan.reopen.map((p) => ({ domain: p.domain, status: p.status, detail: p.detail, why: p.why })),
      skipped: result.plan.skipped.map((p) => ({ domain: p.domain, status: p.status, why: p.why })),
      changes: result.changes.map((c) => ({ domain: c.domain, from: c.from, to: c.to })),
    });
  });

  app.get('/api/replays/bulk', viewer, async (req, res) => {
    const q = new Query(req, '/api/replays/bulk', ['limit']);
    res.json(await bulkReplayList(db, q.limit(PAGE)));
  });

  app.post('/api/replays/bulk', operator, body, async (req, res) => {
    const b = new Body(req.body, ['filter', 'dryRun', 'reason'], '{"filter":{"hasFailures":true,"since":"2026-11-24"},"dryRun":true}');
    const filter = parseBulkFilter(b.raw('filter'));
    if (b.boolean('dryRun')) {
      res.json(await bulk.preview(filter));
      return;
    }
    const reason = checkReason(b.raw('reason'));
    const started = await bulk.start(filter, reason, actorOf(res));
    res.status(202).location(`/api/replays/bulk/${started.id}`).json({ bulkReplay: started });
  });

  app.get('/api/replays/bulk/:id', viewer, async (req, res) => {
    res.json({ bulkReplay: await bulkReplayReport(db, assertId(req.params.id, 'bulk replay id')) });
  });

  app.post('/api/replays/bulk/:id/cancel', operator, body, async (req, res) => {
    const id = assertId(req.params.id, 'bulk replay id');
    const b = new Body(req.body, ['reason'], '{"reason":"wrong filter"}');
    const reason = b.has('reason') ? checkReason(b.raw('reason')) : null;
    res.json({ bulkReplay: await bulk.cancel(id, actorOf(res), reason) });
  });

  // One page of alarms, newest first; each alarm bounded (ALARM_LIST_TRIM), the rest one `nextCursor` away.
  app.get('/api/alarms', viewer, async (req, res) => {
    const q = new Query(req, '/api/alarms', ['messageId', 'since', 'limit', 'before', 'state']);
    const messageIds = [...new Set(q.many('messageId').map((v) => assertMessageId(v)))];
    if (messageIds.length > MAX_MESSAGE_IDS) throw new ValidationError(`at most ${MAX_MESSAGE_IDS} messageIds per request`);
    const beforeText = q.one('before');
    const before = beforeText === undefined ? undefined : parseAlarmCursor(beforeText) ?? undefined;
    if (beforeText !== undefined && !before) throw new ValidationError('before must be a nextCursor from an earlier /api/alarms answer');
    res.json(await alarmList(db, { messageIds, since: q.time('since'), limit: q.limit(PAGE), before, states: alarmStates(q.one('state')) }));
  });

  app.get('/api/alarms/:id', viewer, async (req, res) => {
    res.json(await alarmDetail(db, assertId(req.params.id, 'alarm id')));
  });

  for (const action of ['acknowledge', 'resolve'] as const) {
    app.post(`/api/alarms/:id/${action}`, operator, body, async (req, res) => {
      const id = assertId(req.params.id, 'alarm id');
      const b = new Body(req.body, ['note'], action === 'resolve' ? '{"note":"what fixed it"}' : '{"note":"looking into it"}');
      const note = b.has('note') ? checkNote(b.raw('note')) : undefined;
      const [alarm] = await auditedAlarmStep(db, action, { ids: [id], note }, actorOf(res));
      res.json({ alarm });
    });
  }

  app.get('/api/audit', viewer, async (req, res) => {
    const q = new Query(req, '/api/audit', ['before', 'limit', 'action']);
    const beforeText = q.one('before');
    const before = beforeText === undefined ? undefined : parseAuditCursor(beforeText) ?? undefined;
    if (beforeText !== undefined && before === undefined) throw new ValidationError('before must be a nextCursor from an earlier /api/audit answer');
    const action = q.one('action');
    if (action !== undefined && !(AUDIT_ACTIONS as readonly string[]).includes(action)) {
      throw new ValidationError(`action must be one of ${AUDIT_ACTIONS.join(', ')}`);
    }
    res.json(await auditTrail(db, { before, action: action as AuditAction | undefined, limit: q.limit(PAGE) }));
  });
}

const PAGE = { default: 50, max: 200 };
const MAX_MESSAGE_IDS = 100;
const MAX_ID = 2 ** 31 - 1; // ids are read as int
const MAX_NOTE = 2000;
const MAX_DETAIL_MATCH = 200;
const CONTROL = /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

/** The principal of the request (requireRole put it there), as the audit records it. */
function actorOf(res: Response): Actor {
  const p = principalOf(res);
  return { name: p.name, role: p.role, via: p.via };
}

export function assertMessageId(v: unknown): string {
  if (typeof v !== 'string' || !MESSAGE_ID.test(v)) throw new ValidationError('messageId must be 1 to 128 characters of A-Z, a-z, 0-9, _ or -');
  return v;
}

function assertId(v: unknown, what: string): number {
  const id = typeof v === 'string' && /^[1-9][0-9]{0,9}$/.test(v) ? Number(v) : NaN;
  if (!(id <= MAX_ID)) throw new ValidationError(`${what} must be a whole number from 1 to ${MAX_ID}`);
  return id;
}

function alarmStates(state: string | undefined): readonly AlarmState[] | undefined {
  if (state === undefined) return undefined; // the report's default: open and acknowledged
  if (state === 'all') return ALARM_STATES;
  if ((ALARM_STATES as readonly string[]).includes(state)) return [state as AlarmState];
  throw new ValidationError(`state must be one of ${ALARM_STATES.join(', ')} or all (default: open and acknowledged)`);
}

/** An alarm note: kept as written (line breaks allowed), without NUL or other controls that are not whitespace. */
function checkNote(v: unknown): string {
  if (typeof v !== 'string' || v.length > MAX_NOTE || /(?![\t\n\r])\p{Cc}/u.test(v)) {
    throw new ValidationError(`note must be text of at most ${MAX_NOTE} characters without control characters`);
  }
  return v;
}

function parseBulkFilter(v: unknown): BulkFilter {
  const f = new Body(v, ['hasFailures', 'since', 'until', 'detailMatches'], '{"hasFailures":true,"since":"2026-11-24"}', 'filter');
  if (f.raw('hasFailures') !== true) throw new ValidationError('filter.hasFailures must be true: a bulk replay re-opens failed and unknown_domain domains only');
  const time = (name: string) => {
    const t = f.raw(name);
    if (t === undefined || t === null) return null;
    if (typeof t !== 'string') throw new ValidationError(`filter.${name} must be a date or date-time string`);
    return parseTime(t, `filter.${name}`);
  };
  const since = time('since');
  const until = time('until');
  if (since && until && since >= until) throw new ValidationError('filter.since must be before filter.until');
  const match = f.raw('detailMatches');
  if (match !== undefined && match !== null
    && (typeof match !== 'string' || match.trim().length === 0 || match.length > MAX_DETAIL_MATCH || CONTROL.test(match))) {
    throw new ValidationError(`filter.detailMatches must be plain text of 1 to ${MAX_DETAIL_MATCH} characters (matched as a substring, any case; % and _ are literal)`);
  }
  return { hasFailures: true, since, until, detailMatches: typeof match === 'string' ? match : null };
}

/** A JSON body's fields: unknown ones are a 400 naming them; types are checked strictly (`"true"` is no boolean). */
class Body {
  private readonly fields: Record<string, unknown>;
  constructor(body: unknown, private readonly allowed: string[], example: string, private readonly prefix = '') {
    const what = prefix || 'body';
    if (body === undefined && !prefix) { this.fields = {}; return; }
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new ValidationError(`${what} must be a JSON object such as ${example}`);
    this.fields = body as Record<string, unknown>;
    const unknown = Object.keys(this.fields).find((k) => !allowed.includes(k));
    if (unknown !== undefined) {
      throw new ValidationError(`unknown field ${JSON.stringify(`${prefix ? `${prefix}.` : ''}${unknown.slice(0, 40)}`)}; ${what} takes only ${allowed.map((a) => `"${a}"`).join(', ')}`);
    }
  }

  has(name: string): boolean { return this.fields[name] !== undefined; }
  raw(name: string): unknown { return this.fields[name]; }

  boolean(name: string): boolean {
    const v = this.fields[name];
    if (v !== undefined && typeof v !== 'boolean') {
      throw new ValidationError(`${this.prefix ? `${this.prefix}.` : ''}${name} must be true or false (a JSON boolean), not ${String(JSON.stringify(v)).slice(0, 40)}`);
    }
    return v === true;
  }

  stringList(name: string, max: number): string[] | undefined {
    const v = this.fields[name];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.length === 0 || v.length > max || !v.every((x) => typeof x === 'string')) {
      throw new ValidationError(`${name} must be a list of 1 to ${max} domain names`);
    }
    return v as string[];
  }
}

/** A request's query parameters: unknown ones are a 400 naming them (a typo would otherwise silently widen a list). */
class Query {
  constructor(private readonly req: Request, route: string, allowed: string[]) {
    for (const key of Object.keys(req.query)) {
      if (!allowed.includes(key)) throw new ValidationError(`unknown query parameter ${JSON.stringify(key.slice(0, 40))}; ${route} takes ${allowed.join(', ')}`);
    }
  }

  one(name: string): string | undefined {
    const v = this.req.query[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new ValidationError(`${name} may be given once`);
    return v;
  }

  many(name: string): unknown[] {
    return ([] as unknown[]).concat(this.req.query[name] ?? []);
  }

  boolean(name: string): boolean | undefined {
    const v = this.one(name);
    if (v === undefined) return undefined;
    if (v !== 'true' && v !== 'false') throw new ValidationError(`${name} must be true or false`);
    return v === 'true';
  }

  time(name: string): Date | undefined {
    const v = this.one(name);
    return v === undefined ? undefined : parseTime(v, name);
  }

  limit(page: { default: number; max: number }): number {
    const text = this.one('limit');
    const rule = `limit must be a whole number from 1 to ${page.max}`;
    if (text !== undefined && !/^[0-9]{1,3}$/.test(text)) throw new ValidationError(rule);
    const limit = text === undefined ? page.default : Number(text);
    if (limit < 1 || limit > page.max) throw new ValidationError(rule);
    return limit;
  }
}

const TIME = /^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$/;

/**
 * A date or date-time (UTC unless an offset is given). Strict, because `new Date()` takes years up to
 * ±275760 that PostgreSQL cannot hold (a 500 before) and rolls 2026-02-30 over into March.
 */
export function parseTime(text: string, name: string): Date {
  const rule = `${name} must be a date from 1970 to 9999, e.g. 2026-11-24 or 2026-11-24T08:00:00Z (UTC unless an offset is given)`;
  // An unencoded "+08:00" arrives as " 08:00" (a + in a query string is a space).
  const m = TIME.exec(text.trim().replace(/ ([0-9]{2}:?[0-9]{2})$/, '+$1'));
  if (!m) throw new ValidationError(rule);
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const calendar = new Date(Date.UTC(year, month - 1, day));
  if (year < 1970 || calendar.getUTCMonth() !== month - 1 || calendar.getUTCDate() !== day) throw new ValidationError(rule);
  const hasTime = m[4] !== undefined;
  if (hasTime && (Number(m[4]) > 23 || Number(m[5]) > 59 || Number(m[6] ?? 0) > 59)) throw new ValidationError(rule);
  const date = new Date(hasTime && !m[7] ? `${m[0]}Z` : m[0]);
  if (Number.isNaN(date.getTime())) throw new ValidationError(rule);
  return date;
}
