/**
 * The HTTP API: the vendor's callback route, operator routes, health and metrics, and the one error
 * handler that turns every failure into a clear status and reason.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Redis } from 'ioredis';
import { ConfigError, DependencyUnavailableError, ValidationError, toAppError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import type { Config } from '../config.js';
import type { Db } from '../store/db.js';
import { findAlarms } from '../store/alarms.js';
import { countByStatus, getBatch, listDomains } from '../store/ledger.js';
import { acceptCallback } from '../pipeline/accept-callback.js';
import { CallbackRejectedError, MESSAGE_ID } from '../pipeline/callback-input.js';
import type { JobPublisher } from '../pipeline/publish.js';
import { replayBatches } from '../pipeline/replay.js';

export const CALLBACK_PATH = '/api/pm/pipe/callback';

export interface AppDeps {
  config: Pick<Config, 'callbackAuth' | 'callbackToken' | 'callbackAllowCidrs' | 'trustProxy' | 'callbackBodyLimit' | 'callbackMaxItems' | 'adminToken'>;
  logger: Logger;
  metrics: Metrics;
  db: Db;
  redis: Pick<Redis, 'ping'>;
  broker: JobPublisher & { readonly isConnected: boolean };
}

/** `opsOnly` serves just health, readiness and metrics (for worker-only processes). */
export function createApp(deps: AppDeps, opts: { opsOnly?: boolean } = {}): express.Express {
  const app = express();
  app.disable('x-powered-by');
  // Behind a load balancer the socket address is the balancer's; the allowlist needs the caller's.
  app.set('trust proxy', deps.config.trustProxy || false);
  if (!opts.opsOnly) mountApiRoutes(app, deps);

  app.get('/healthz', (_req, res) => { res.json({ status: 'ok' }); });

  app.get('/readyz', async (_req, res) => {
    const checks = await readiness(deps);
    const ready = Object.values(checks).every((c) => c === 'ok');
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', checks });
  });

  app.get('/metrics', async (_req, res) => {
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

  app.get('/api/batches/:messageId', async (req, res) => {
    const messageId = assertMessageId(req.params.messageId);
    const batch = await getBatch(deps.db, messageId);
    if (!batch) throw new ValidationError(`no batch with messageId ${messageId}`, 404);
    const [counts, domains] = await Promise.all([countByStatus(deps.db, [messageId]), listDomains(deps.db, messageId)]);
    res.json({ messageId, batch, counts: counts.get(messageId), domains });
  });

  app.get('/api/alarms', async (req, res) => {
    const ids = ([] as unknown[]).concat(req.query.messageId ?? []).map((v) => assertMessageId(v));
    const since = req.query.since === undefined ? undefined : new Date(String(req.query.since));
    if (since && Number.isNaN(since.getTime())) throw new ValidationError('since must be a date, e.g. 2026-11-24 or 2026-11-24T08:00:00Z');
    const alarms = await findAlarms(deps.db, { messageIds: ids, since });
    const batchIds = [...new Set(alarms.map((a) => a.messageId).filter((id): id is string => !!id))];
    const counts = Object.fromEntries(await countByStatus(deps.db, batchIds));
    res.json({ alarms, counts });
  });

  app.post('/api/batches/:messageId/replay', express.json({ limit: '10kb', type: () => true }), async (req, res) => {
    if (!config.adminToken) throw new ValidationError('replay over HTTP is disabled: ADMIN_TOKEN is not set', 403);
    const bearer = /^Bearer (.+)$/i.exec(req.get('authorization') ?? '')?.[1];
    if (!sameSecret(bearer, config.adminToken)) throw new ValidationError('missing or wrong admin bearer token', 401);
    const messageId = assertMessageId(req.params.messageId);
    const body = (req.body ?? {}) as { all?: unknown; dryRun?: unknown };
    const result = await replayBatches(deps, [messageId], { all: body.all === true, dryRun: body.dryRun === true });
    res.json({
      messageId, dryRun: body.dryRun === true, published: result.published.length > 0,
      reopened: result.reopened.map((r) => ({ domain: r.domain, status: r.status })),
    });
  });
}

/** The one error middleware: 4xx with a reason for bad input, 503 when a dependency is down, 500 otherwise. */
export function createErrorHandler(logger: Logger, metrics: Metrics) {
  return (err: unknown, req: Request, res: Response, _next: NextFunction): void => {
    const { status, message } = classify(err);
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
  if (err instanceof DependencyUnavailableError) return { status: 503, message: `temporarily unavailable (${err.dependency}); please retry` };
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

/** Constant-time comparison of two secrets (hashed first so their lengths do not leak). */
function sameSecret(given: string | undefined, expected: string): boolean {
  if (!given || !expected) return false;
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

function createAllowList(cidrs: readonly string[]): ((ip: string) => boolean) | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [addr, bits] = cidr.split('/');
    const type = isIPv4(addr ?? '') ? 'ipv4' : isIPv6(addr ?? '') ? 'ipv6' : undefined;
    const prefix = bits === undefined ? (type === 'ipv4' ? 32 : 128) : Number(bits);
    if (!type || !Number.isInteger(prefix)) throw new ConfigError(`CALLBACK_ALLOW_CIDRS holds ${JSON.stringify(cidr)}, which is not an IP address or CIDR.`);
    list.addSubnet(addr!, prefix, type);
  }
  return (ip) => {
    const plain = ip.startsWith('::ffff:') ? ip.slice(7) : ip;
    return list.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6');
  };
}

async function readiness(deps: AppDeps): Promise<Record<string, string>> {
  const check = async (fn: () => Promise<unknown>): Promise<string> => {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([fn(), new Promise((_, rej) => { timer = setTimeout(() => rej(new Error('timeout')), 2000); })]);
      return 'ok';
    } catch (err) {
      return `down: ${(err as Error).message}`;
    } finally {
      clearTimeout(timer);
    }
  };
  return {
    postgres: await check(() => deps.db.query('SELECT 1')),
    redis: await check(() => deps.redis.ping()),
    rabbitmq: deps.broker.isConnected ? 'ok' : 'down: not connected',
  };
}
