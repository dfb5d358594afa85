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
import { checkReadiness } from '../ops/readiness.js';
import { createAuth, sameSecret, type Auth, type AuthConfig } from './auth.js';
import { assertMessageId, mountOperatorRoutes } from './operator-api.js';
import { createConsoleRouter } from '../console/router.js';
import { batchReport, domainReport } from '../ops/reports.js';
import { acceptCallback } from '../pipeline/accept-callback.js';
import { CallbackRejectedError, MESSAGE_ID } from '../pipeline/callback-input.js';
import type { JobPublisher } from '../pipeline/publish.js';
import type { TokenManager } from '../token/token-manager.js';

export const CALLBACK_PATH = '/api/pm/pipe/callback';

export interface AppDeps {
  config: Pick<Config, 'callbackAuth' | 'callbackToken' | 'callbackAllowCidrs' | 'trustProxy' | 'callbackBodyLimit' | 'callbackMaxItems'
    | 'metricsAuth' | 'bulkReplayMaxBatches' | 'instanceId'> & AuthConfig;
  logger: Logger;
  metrics: Metrics;
  db: Db;
  redis: Pick<Redis, 'ping'>;
  broker: JobPublisher & { readonly isConnected: boolean; queueDepths(): Promise<Record<string, number> | undefined> };
  tokens: Pick<TokenManager, 'state'>;
  /** Where long-running work started by a request (bulk replays) registers its shutdown step. */
  releasers?: { add(name: string, release: () => Promise<void> | void): void };
}

/** `opsOnly` serves just health, readiness and metrics (for worker-only processes). */
export function createApp(deps: AppDeps, opts: { opsOnly?: boolean } = {}): express.Express {
  const app = express();
  app.disable('x-powered-by');
  // Answers carry caller-supplied text (callback bodies, details): never let a browser sniff them into HTML,
  // and never let a shared cache keep an operator's answer.
  app.use((req, res, next) => {
    res.set('X-Content-Type-Options', 'nosniff');
    if (req.path.startsWith('/api/') && req.path !== CALLBACK_PATH) res.set('Cache-Control', 'no-store');
    next();
  });
  // Behind a load balancer the socket address is the balancer's; the allowlist needs the caller's.
  // config.ts has checked every entry, so express gets a list it understands (never `true`).
  app.set('trust proxy', deps.config.trustProxy.length > 0 ? [...deps.config.trustProxy] : false);
  // One authenticator per app: bearer, console session cookie (parsed by auth itself) or SSO proxy header.
  const auth = createAuth({ config: deps.config, db: deps.db, logger: deps.logger.child({ component: 'auth' }) });
  if (!opts.opsOnly) {
    // The console first: it serves GET /console/login itself and passes the sign-in POSTs on to auth.
    app.use('/console', createConsoleRouter({ ...deps, auth }));
    auth.loginRoutes(app);
    mountApiRoutes(app, deps, auth);
  }

  // Open to anyone: probes must work without credentials, so they say only up or down.
  app.get('/healthz', (_req, res) => { res.json({ status: 'ok' }); });

  app.get('/readyz', async (_req, res) => {
    const checks = await checkReadiness(deps);
    const ready = Object.values(checks).every((c) => c === 'ok');
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', checks });
  });

  // Metrics show traffic and failure rates; open only when an operator says so (METRICS_AUTH=none).
  const metricsGuard: RequestHandler[] = deps.config.metricsAuth === 'none'
    ? [] : [auth.requireRole('viewer', { disabledHint: ' (or METRICS_AUTH=none to leave /metrics open)', redirectToLogin: false })];
  app.get('/metrics', ...metricsGuard, async (_req, res) => {
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });

  app.use((req: Request, res: Response) => {
    res.status(404).json({ error: `no route ${req.method} ${req.path}` });
  });
  app.use(createErrorHandler(deps.logger, deps.metrics));
  return app;
}

function mountApiRoutes(app: express.Express, deps: AppDeps, auth: Auth): void {
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

  const viewer = auth.requireRole('viewer');
  const operator = auth.requireRole('operator');

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

  // Overview, batch list, export, replays, bulk replays, alarms and the audit (src/http/operator-api.ts).
  mountOperatorRoutes(app, deps, { viewer, operator });
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

function createAllowList(cidrs: readonly Cidr[]): ((ip: string) => boolean) | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new BlockList();
  for (const { address, prefix, family } of cidrs) list.addSubnet(address, prefix, family);
  return (ip) => {
    const plain = ip.startsWith('::ffff:') ? ip.slice(7) : ip;
    return list.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6');
  };
}
