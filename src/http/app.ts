/**
 * The HTTP API: the vendor's callback route, operator routes, health and metrics, and the one error
 * handler that turns every failure into a clear status and reason.
 */
import { BlockList, isIPv4 } from 'node:net';
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import type { Redis } from 'ioredis';
import {
  DependencyUnavailableError, ForbiddenError, NotFoundError, UnauthorizedError, ValidationError, toAppError,
} from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Cidr, Config } from '../config.js';
import { isConnectionError, type Db } from '../store/db.js';
import { findAlarms, parseAlarmCursor, type AlarmTrim } from '../store/alarms.js';
import { countByStatus } from '../store/ledger.js';
import { checkReadiness } from '../ops/readiness.js';
import { requireRole, sameSecret } from './auth.js';
import { batchReport, domainReport } from '../ops/reports.js';
import { acceptCallback } from '../pipeline/accept-callback.js';
import { CallbackRejectedError, MESSAGE_ID } from '../pipeline/callback-input.js';
import type { JobPublisher } from '../pipeline/publish.js';
import { replayBatches } from '../pipeline/replay.js';
import type { TokenManager } from '../token/token-manager.js';

export const CALLBACK_PATH = '/api/pm/pipe/callback';

export interface AppDeps {
  config: Pick<Config, 'callbackAuth' | 'callbackToken' | 'callbackAllowCidrs' | 'trustProxy' | 'callbackBodyLimit' | 'callbackMaxItems'
    | 'adminToken' | 'viewerToken' | 'metricsAuth'>;
  logger: Logger;
  metrics: Metrics;
  db: Db;
  redis: Pick<Redis, 'ping'>;
  broker: JobPublisher & { readonly isConnected: boolean };
  tokens: Pick<TokenManager, 'state'>;
}

/** `opsOnly` serves just health, readiness and metrics (for worker-only processes). */
export function createApp(deps: AppDeps, opts: { opsOnly?: boolean } = {}): express.Express {
  const app = express();
  app.disable('x-powered-by');
  // Behind a load balancer the socket address is the balancer's; the allowlist needs the caller's.
  // config.ts has checked every entry, so express gets a list it understands (never `true`).
  app.set('trust proxy', deps.config.trustProxy.length > 0 ? [...deps.config.trustProxy] : false);
  if (!opts.opsOnly) mountApiRoutes(app, deps);

  // Open to anyone: probes must work without credentials, so they say only up or down.
  app.get('/healthz', (_req, res) => { res.json({ status: 'ok' }); });

  app.get('/readyz', async (_req, res) => {
    const checks = await checkReadiness(deps);
    const ready = Object.values(checks).every((c) => c === 'ok');
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', checks });
  });

  // Metrics show traffic and failure rates; open only when an operator says so (METRICS_AUTH=none).
  const metricsGuard: RequestHandler[] = deps.config.metricsAuth === 'none'
    ? [] : [requireRole(deps.config, 'viewer', ' (or METRICS_AUTH=none to leave /metrics open)')];
  app.get('/metrics', ...metricsGuard, async (_req, res) => {
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });

  app.use((req: Request, res: Response) => {
    res.status(404).json({ error: `no route ${req.method} ${req.path}` });
  });
  app.use(createErrorHandler(deps.logger, deps.metrics));
  return app;
}

function mountApiRoutes(app: express.Express, deps: AppDeps): void {
  const { config, metrics } = deps;
  const allow = createAllowList(config.callbackAllowCidrs);

  app.post(CALLBACK_PATH,
    (req, _res, next) => {
      if (allow && !allow(req.ip ?? '')) throw new CallbackRejectedError('caller address is not allowed', null, 403);
      if (config.callbackAuth === 'token' && !sameSecret(req.get('x-callback-token'), config.callbackToken)) {
        throw new CallbackRejectedError('missing or wrong X-Callback-Token', null, 401);
      }
      if (!req.is('application/json')) throw new CallbackRejectedError('Content-Type must be application/json', null, 415);
      next();
    },
    express.json({ limit: config.callbackBodyLimit, type: () => true, strict: false }),
    async (req, res) => {
      const result = await acceptCallback(deps, req.body, req.ip);
      metrics.callbacks.inc({ result: 'accepted' });
      res.json({ success: true, messageId: result.messageId, message: 'OK', status: 0 });
    });

  const viewer = requireRole(config, 'viewer');
  const operator = requireRole(config, 'operator');

  app.get('/api/batches/:messageId', viewer, async (req, res) => {
    res.json(await batchReport(deps.db, assertMessageId(req.params.messageId)));
  });

  // The shared token's state without the secret: generation, age, expiry, fetches today, contention, circuit.
  app.get('/api/token', viewer, async (_req, res) => {
    res.json(await deps.tokens.state());
  });

  app.get('/api/domains/:domain', viewer, async (req, res) => {
    res.json(await domainReport(deps.db, String(req.params.domain ?? '')));
  });

  // One page of alarms, newest first; each alarm bounded (see ALARM_LIST_TRIM), the rest one `nextCursor` away.
  app.get('/api/alarms', viewer, async (req, res) => {
    const q = parseAlarmQuery(req.query);
    // One row more than asked tells whether another page exists, without a count(*).
    const rows = await findAlarms(deps.db, { ...q, limit: q.limit + 1, trim: ALARM_LIST_TRIM });
    const page = rows.slice(0, q.limit);
    const batchIds = [...new Set(page.map((a) => a.messageId).filter((id): id is string => !!id))];
    const counts = Object.fromEntries(await countByStatus(deps.db, batchIds));
    res.json({ alarms: page, counts, nextCursor: rows.length > q.limit ? page[page.length - 1]!.cursor : null });
  });

  app.get('/api/alarms/:id', viewer, async (req, res) => {
    const id = assertAlarmId(req.params.id);
    const [alarm] = await findAlarms(deps.db, { id, limit: 1 });
    if (!alarm) throw new NotFoundError(`no alarm with id ${id}`);
    const counts = alarm.messageId ? (await countByStatus(deps.db, [alarm.messageId])).get(alarm.messageId) ?? null : null;
    res.json({ alarm, counts });
  });

  // The role check runs before the body is read: an unauthenticated caller costs no parsing.
  app.post('/api/batches/:messageId/replay', operator, express.json({ limit: '10kb', type: () => true }), async (req, res) => {
    const messageId = assertMessageId(req.params.messageId);
    const { all, dryRun } = parseReplayBody(req.body);
    const result = await replayBatches(deps, [messageId], { all, dryRun });
    res.json({
      messageId, dryRun, published: result.published.length > 0,
      reopened: result.reopened.map((r) => ({ domain: r.domain, status: r.status })),
    });
  });
}

/** The list view of /api/alarms: enough to see what happened; GET /api/alarms/:id has the rest. */
const ALARM_LIST_TRIM: AlarmTrim = { arrayItems: 20, contentChars: 1000 };
const ALARM_PAGE = { default: 50, max: 200 };
const ALARM_QUERY_KEYS = ['messageId', 'since', 'limit', 'before'];
const MAX_MESSAGE_IDS = 100;

/** Checks every query parameter of GET /api/alarms; anything unknown or malformed is a 400 naming it. */
function parseAlarmQuery(query: Request['query']) {
  for (const key of Object.keys(query)) {
    // A typo such as ?messageid= would otherwise silently list every alarm.
    if (!ALARM_QUERY_KEYS.includes(key)) throw new ValidationError(`unknown query parameter ${JSON.stringify(key.slice(0, 40))}; /api/alarms takes ${ALARM_QUERY_KEYS.join(', ')}`);
  }
  const one = (name: string): string | undefined => {
    const v = query[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new ValidationError(`${name} may be given once`);
    return v;
  };
  const messageIds = [...new Set(([] as unknown[]).concat(query.messageId ?? []).map((v) => assertMessageId(v)))];
  if (messageIds.length > MAX_MESSAGE_IDS) throw new ValidationError(`at most ${MAX_MESSAGE_IDS} messageIds per request`);

  const sinceText = one('since');
  const since = sinceText === undefined ? undefined : parseSince(sinceText);

  const limitText = one('limit');
  const limitRule = `limit must be a whole number from 1 to ${ALARM_PAGE.max}`;
  if (limitText !== undefined && !/^[0-9]{1,3}$/.test(limitText)) throw new ValidationError(limitRule);
  const limit = limitText === undefined ? ALARM_PAGE.default : Number(limitText);
  if (limit < 1 || limit > ALARM_PAGE.max) throw new ValidationError(limitRule);

  const beforeText = one('before');
  const before = beforeText === undefined ? undefined : parseAlarmCursor(beforeText) ?? undefined;
  if (beforeText !== undefined && !before) throw new ValidationError('before must be a nextCursor from an earlier /api/alarms answer');
  return { messageIds, since, limit, before };
}

const SINCE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$/;
const SINCE_RULE = 'since must be a date from 1970 to 9999, e.g. 2026-11-24 or 2026-11-24T08:00:00Z (UTC unless an offset is given)';

/**
 * A date or date-time for `since`. Strict, because `new Date()` takes years up to ±275760 that PostgreSQL
 * cannot hold (a 500 before) and rolls 2026-02-30 over into March.
 */
function parseSince(text: string): Date {
  // An unencoded "+08:00" arrives as " 08:00" (a + in a query string is a space).
  const m = SINCE.exec(text.trim().replace(/ ([0-9]{2}:?[0-9]{2})$/, '+$1'));
  if (!m) throw new ValidationError(SINCE_RULE);
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const calendar = new Date(Date.UTC(year, month - 1, day));
  if (year < 1970 || calendar.getUTCMonth() !== month - 1 || calendar.getUTCDate() !== day) throw new ValidationError(SINCE_RULE);
  const hasTime = m[4] !== undefined;
  if (hasTime && (Number(m[4]) > 23 || Number(m[5]) > 59 || Number(m[6] ?? 0) > 59)) throw new ValidationError(SINCE_RULE);
  const date = new Date(hasTime && !m[7] ? `${m[0]}Z` : m[0]);
  if (Number.isNaN(date.getTime())) throw new ValidationError(SINCE_RULE);
  return date;
}

/** The replay body: only `all` and `dryRun`, each a JSON boolean; `{"dryRun":"true"}` once ran a real replay. */
function parseReplayBody(body: unknown): { all: boolean; dryRun: boolean } {
  if (body === undefined) return { all: false, dryRun: false };
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new ValidationError('body must be a JSON object such as {"all":false,"dryRun":true}');
  const fields = body as Record<string, unknown>;
  const unknown = Object.keys(fields).find((k) => k !== 'all' && k !== 'dryRun');
  if (unknown !== undefined) throw new ValidationError(`unknown field ${JSON.stringify(unknown.slice(0, 40))}; the body takes only "all" and "dryRun" (true or false)`);
  for (const name of ['all', 'dryRun']) {
    const v = fields[name];
    if (v !== undefined && typeof v !== 'boolean') {
      throw new ValidationError(`${name} must be true or false (a JSON boolean), not ${String(JSON.stringify(v)).slice(0, 40)}`);
    }
  }
  return { all: fields.all === true, dryRun: fields.dryRun === true };
}

/** The one error middleware: 4xx with a reason for bad input, 503 when a dependency is down, 500 otherwise. */
export function createErrorHandler(logger: Logger, metrics: Metrics) {
  return (err: unknown, req: Request, res: Response, _next: NextFunction): void => {
    const { status, message } = classify(err);
    if (err instanceof UnauthorizedError) res.set('WWW-Authenticate', 'Bearer');
    const isCallback = req.path === CALLBACK_PATH;
    if (status >= 500) logger.error('request failed', { method: req.method, path: req.path, status, err: toAppError(err) });
    else logger.warn('request rejected', { method: req.method, path: req.path, status, reason: message, messageId: err instanceof CallbackRejectedError ? err.messageId : undefined });
    if (isCallback) {
      metrics.callbacks.inc({ result: status >= 500 ? 'unavailable' : 'rejected' });
      const messageId = err instanceof CallbackRejectedError ? err.messageId : messageIdOf(req.body);
      res.status(status).json({ success: false, messageId, message, status: 1 });
    } else {
      res.status(status).json({ error: message });
    }
  };
}

function classify(err: unknown): { status: number; message: string } {
  if (err instanceof ValidationError) return { status: err.status, message: err.message };
  if (err instanceof UnauthorizedError) return { status: 401, message: err.message };
  if (err instanceof ForbiddenError) return { status: 403, message: err.message };
  if (err instanceof NotFoundError) return { status: 404, message: err.message };
  if (err instanceof DependencyUnavailableError) return { status: 503, message: `temporarily unavailable (${err.dependency}); please retry` };
  // A plain pool query (not inside withTransaction) fails with pg's own error when PostgreSQL is away; the
  // only connections the routes use are PostgreSQL's, and a caller should retry that, not report a bug.
  if (isConnectionError(err)) return { status: 503, message: 'temporarily unavailable (postgres); please retry' };
  const e = err as { type?: string; status?: number; message?: string };
  // body-parser's own errors
  if (e?.type === 'entity.too.large') return { status: 413, message: 'body is larger than the limit' };
  if (e?.type === 'entity.parse.failed') return { status: 400, message: 'body is not valid JSON' };
  if (e?.type === 'encoding.unsupported' || e?.type === 'charset.unsupported') return { status: 415, message: e.message ?? 'unsupported encoding' };
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500) return { status: e.status, message: e.message ?? 'bad request' };
  return { status: 500, message: 'internal error' };
}

function messageIdOf(body: unknown): string | null {
  const id = (body as { messageId?: unknown } | undefined)?.messageId;
  return typeof id === 'string' && MESSAGE_ID.test(id) ? id : null;
}

function assertMessageId(v: unknown): string {
  if (typeof v !== 'string' || !MESSAGE_ID.test(v)) throw new ValidationError('messageId must be 1 to 128 characters of A-Z, a-z, 0-9, _ or -');
  return v;
}

const MAX_ALARM_ID = 2 ** 31 - 1; // findAlarms reads id as int

function assertAlarmId(v: unknown): number {
  const id = typeof v === 'string' && /^[1-9][0-9]{0,9}$/.test(v) ? Number(v) : NaN;
  if (!(id <= MAX_ALARM_ID)) throw new ValidationError(`alarm id must be a whole number from 1 to ${MAX_ALARM_ID}`);
  return id;
}

function createAllowList(cidrs: readonly Cidr[]): ((ip: string) => boolean) | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new BlockList();
  for (const { address, prefix, family } of cidrs) list.addSubnet(address, prefix, family);
  return (ip) => {
    const plain = ip.startsWith('::ffff:') ? ip.slice(7) : ip;
    return list.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6');
  };
}

/**
 * ok/down per dependency. /readyz is open to anyone, so the answer never carries an address or error text
 * (a pg error names host:port); the reason goes to the log at warn instead.
 */
