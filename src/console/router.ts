/**
 * The operators' console under /console: server-rendered pages built from the same src/ops/reports.ts
 * functions the JSON API serves (never queries of its own), one static script for the live parts, and a
 * strict Content-Security-Policy on every response. Mutations (replay, acknowledge, resolve) are made by
 * console.js against the operator API, with the session's CSRF token; the API checks the role again.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { safeNextPath, type Auth, type Principal } from '../http/auth.js';
import { DependencyUnavailableError, ForbiddenError, NotFoundError, UnauthorizedError, ValidationError, toAppError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import {
  alarmList, auditTrail, batchList, batchReport, bulkReplayList, bulkReplayReport, domainReport, overview, parseBatchCursor, type OverviewDeps,
} from '../ops/reports.js';
import { MESSAGE_ID } from '../pipeline/callback-input.js';
import { ALARM_STATES, type AlarmState } from '../store/alarm-lifecycle.js';
import { parseAlarmCursor } from '../store/alarms.js';
import { AUDIT_ACTIONS, parseAuditCursor, type AuditAction } from '../store/audit.js';
import { isConnectionError, type Db } from '../store/db.js';
import { countByStatus } from '../store/ledger.js';
import { parseFind } from './find.js';
import type { Html } from './html.js';
import { errorBody, layout, type NavKey, type Viewer } from './layout.js';
import { alarmsPage } from './pages/alarms.js';
import { auditPage } from './pages/audit.js';
import { batchPage } from './pages/batch.js';
import { domainPage } from './pages/domain.js';
import { findPage, type FindResult } from './pages/find.js';
import { loginPage } from './pages/login.js';
import { overviewPage, type BatchFilterForm } from './pages/overview.js';
import { replayProgressPage, replaysPage } from './pages/replays.js';
import { consoleHeaders, loadAssets } from './security.js';

export interface ConsoleDeps extends OverviewDeps {
  db: Db;
  logger: Logger;
  auth: Pick<Auth, 'requireRole'>;
  config: { consoleUsers: readonly unknown[]; ssoUserHeader: string };
}

const ALARM_PAGE = 50;
const BATCH_PAGE = 50;
const AUDIT_PAGE = 50;
const FIND_CONCURRENCY = 4;

/** The console's router, to mount at /console (before auth's login routes: GET /console/login is ours). */
export function createConsoleRouter(deps: ConsoleDeps): Router {
  const router = express.Router({ strict: false });
  const { version, serve: serveAssets } = loadAssets();
  const viewer = deps.auth.requireRole('viewer');
  const log = deps.logger.child({ component: 'console' });

  router.use(consoleHeaders());
  router.get('/assets/:name', serveAssets);

  // The sign-in form; auth's POST /console/login checks it (this router passes every POST on).
  router.get('/login', (req, res) => {
    // The same rule auth applies to the POST: only a path of this console, never another site.
    const next = safeNextPath(req.query.next) ?? '';
    send(res, 200, loginPage({ next, assetVersion: version, usersConfigured: deps.config.consoleUsers.length > 0, sso: !!deps.config.ssoUserHeader }));
  });

  const page = (res: Response, p: { title: string; nav: NavKey; page: string; query?: string }, body: Html, status = 200) =>
    send(res, status, layout({ ...p, viewer: viewerOf(res), assetVersion: version }, body));

  router.get('/', viewer, async (req, res) => {
    const filter = parseBatchFilter(req.query);
    const [state, list] = await Promise.all([overview(deps), batchList(deps.db, { ...filter.query, limit: BATCH_PAGE })]);
    page(res, { title: 'Overview', nav: 'overview', page: 'overview' }, overviewPage({ state, list, form: filter.form }));
  });

  router.get('/find', viewer, async (req, res) => {
    const query = typeof req.query.q === 'string' ? req.query.q.slice(0, 20_000) : '';
    const { terms, truncated } = parseFind(query);
    // One messageId or one domain: straight to its page (an unknown one answers there, with a 404).
    if (terms.length === 1 && terms[0]!.kind !== 'invalid') {
      const t = terms[0]!;
      res.redirect(303, `/console/${t.kind === 'messageId' ? 'batches' : 'domains'}/${encodeURIComponent(t.value)}`);
      return;
    }
    const ids = terms.filter((t) => t.kind === 'messageId').map((t) => t.value);
    // The messageIds in one query; the domains a few at a time, so a pasted list of 200 does not take the whole pool.
    const counts = ids.length > 0 ? await countByStatus(deps.db, ids) : new Map();
    const results: FindResult[] = [];
    for (let i = 0; i < terms.length; i += FIND_CONCURRENCY) {
      results.push(...await Promise.all(terms.slice(i, i + FIND_CONCURRENCY).map(async (t): Promise<FindResult> => {
        if (t.kind === 'messageId') return { term: t, counts: counts.get(t.value) ?? null };
        if (t.kind === 'domain') return { term: t, report: await domainReport(deps.db, t.value).catch(notFoundAsNull) };
        return { term: t };
      })));
    }
    page(res, { title: 'Find', nav: 'find', page: 'find', query }, findPage({ query, results, truncated }));
  });

  router.get('/batches/:messageId', viewer, async (req, res) => {
    const id = String(req.params.messageId);
    if (!MESSAGE_ID.test(id)) throw new ValidationError('a messageId is 1 to 128 characters of A-Z, a-z, 0-9, _ or -');
    const report = await batchReport(deps.db, id);
    const canReplay = viewerOf(res).role === 'operator';
    page(res, { title: `Batch ${id}`, nav: 'none', page: 'batch', query: id }, batchPage(report, { canReplay }));
  });

  router.get('/domains/:domain', viewer, async (req, res) => {
    const report = await domainReport(deps.db, String(req.params.domain));
    page(res, { title: report.domain, nav: 'none', page: 'domain', query: report.domain }, domainPage(report));
  });

  router.get('/alarms', viewer, async (req, res) => {
    const asked = typeof req.query.state === 'string' ? req.query.state : 'open';
    const state: AlarmState = (ALARM_STATES as readonly string[]).includes(asked) ? asked as AlarmState : 'open';
    const beforeText = typeof req.query.before === 'string' ? req.query.before : undefined;
    const before = beforeText === undefined ? undefined : parseAlarmCursor(beforeText);
    if (before === null) throw new ValidationError('before must be the "Older" link of an alarms page');
    const list = await alarmList(deps.db, { states: [state], limit: ALARM_PAGE, before });
    page(res, { title: 'Alarms', nav: 'alarms', page: 'alarms' }, alarmsPage({ state, list, canChange: viewerOf(res).role === 'operator' }));
  });

  router.get('/audit', viewer, async (req, res) => {
    const asked = typeof req.query.action === 'string' ? req.query.action : null;
    const action = asked && (AUDIT_ACTIONS as readonly string[]).includes(asked) ? asked as AuditAction : null;
    const beforeText = typeof req.query.before === 'string' ? req.query.before : undefined;
    const before = beforeText === undefined ? undefined : parseAuditCursor(beforeText);
    if (before === null) throw new ValidationError('before must be the "Older" link of an audit page');
    const trail = await auditTrail(deps.db, { before, action: action ?? undefined, limit: AUDIT_PAGE });
    page(res, { title: 'Audit', nav: 'audit', page: 'audit' }, auditPage({ rows: trail.entries, nextCursor: trail.nextCursor, action, actions: AUDIT_ACTIONS }));
  });

  router.get('/replays', viewer, async (_req, res) => {
    const { bulkReplays } = await bulkReplayList(deps.db, 20);
    page(res, { title: 'Bulk replay', nav: 'replays', page: 'replays' }, replaysPage({ recent: bulkReplays, canReplay: viewerOf(res).role === 'operator' }));
  });

  router.get('/replays/:id', viewer, async (req, res) => {
    const text = String(req.params.id);
    if (!/^[1-9][0-9]{0,15}$/.test(text)) throw new ValidationError('a bulk replay id is a whole number');
    const row = await bulkReplayReport(deps.db, Number(text));
    page(res, { title: `Bulk replay #${row.id}`, nav: 'replays', page: 'replay' }, replayProgressPage(row, { canReplay: viewerOf(res).role === 'operator' }));
  });

  // Unknown console pages answer as pages (POSTs go on to the login and logout routes of auth).
  router.get('/{*rest}', viewer, (_req, res) => {
    page(res, { title: 'Not found', nav: 'none', page: 'error' }, errorBody(404, 'No such page', 'This console has no page at that address.'), 404);
  });

  // Errors of console pages are pages too; API-style JSON would be useless in a browser tab.
  router.use((err: unknown, req: Request, res: Response, next: NextFunction) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') { next(err); return; }
    const { status, title } = classify(err);
    if (status >= 500) log.error('console page failed', { path: req.path, err: toAppError(err) });
    const message = status === 503 ? 'A dependency (PostgreSQL, Redis or RabbitMQ) is not answering; try again in a moment.'
      : status >= 500 ? 'Something went wrong on our side; the log has the details. Try again in a moment.' : (err as Error).message;
    if (!res.locals.principal) {
      res.status(status).type('text/plain').send(message);
      return;
    }
    page(res, { title, nav: 'none', page: 'error' }, errorBody(status, title, message), status);
  });
  return router;
}

/**
 * The overview's batch filter from its GET form: has failures, still open, a time range (UTC, as the
 * datetime-local inputs send it) and the keyset cursor of the "older" link. A bad value is a 400 naming it.
 */
function parseBatchFilter(q: Request['query']): { query: Omit<Parameters<typeof batchList>[1], 'limit'>; form: BatchFilterForm } {
  const text = (name: string): string => (typeof q[name] === 'string' ? (q[name] as string).trim() : '');
  const flag = (name: string): boolean | undefined => (text(name) === '1' || text(name) === 'on' || text(name) === 'true' ? true : undefined);
  const date = (name: string): Date | undefined => {
    const v = text(name);
    if (!v) return undefined;
    const m = /^(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}:\d{2}(?::\d{2})?))?$/.exec(v);
    const d = m ? new Date(`${m[1]}T${m[2] ?? '00:00'}Z`) : null;
    if (!d || Number.isNaN(d.getTime()) || d.getUTCFullYear() < 1970) throw new ValidationError(`${name} must be a date, or a date and time, such as 2026-11-24 08:00 (UTC)`);
    return d;
  };
  const beforeText = text('before');
  const before = beforeText ? parseBatchCursor(beforeText) : undefined;
  if (before === null) throw new ValidationError('before must be the "Older" link of the overview');
  const form: BatchFilterForm = { hasFailures: flag('hasFailures') === true, open: flag('open') === true, since: text('since'), until: text('until') };
  return { query: { hasFailures: flag('hasFailures'), open: flag('open'), since: date('since'), until: date('until'), before }, form };
}

function classify(err: unknown): { status: number; title: string } {
  if (err instanceof NotFoundError) return { status: 404, title: 'Not found' };
  if (err instanceof ForbiddenError) return { status: 403, title: 'Not allowed' };
  if (err instanceof UnauthorizedError) return { status: 401, title: 'Not signed in' };
  if (err instanceof ValidationError) return { status: err.status, title: err.status === 404 ? 'Not found' : 'Not understood' };
  if (err instanceof DependencyUnavailableError || isConnectionError(err)) return { status: 503, title: 'Temporarily unavailable' };
  return { status: 500, title: 'Internal error' };
}

function notFoundAsNull(err: unknown): null {
  if (err instanceof NotFoundError) return null;
  throw err;
}

function viewerOf(res: Response): Viewer {
  const p = res.locals.principal as Principal | undefined;
  if (!p) throw new UnauthorizedError('no authenticated caller');
  const csrfToken = res.locals.csrfToken as string | undefined;
  return { name: p.name, role: p.role, via: p.via, csrfToken };
}

function send(res: Response, status: number, doc: Html): void {
  res.status(status).type('html').send(doc.value);
}
