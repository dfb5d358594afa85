/**
 * A real HTTP simulator of the security platform for tests, the demo and benchmarks. It enforces the
 * platform's rules that caused the incident: only one token is valid at a time (issuing one invalidates
 * the previous one at once), tokens expire, and a delete with a bad token gets the platform's exact 401.
 * It records what it received so tests can assert on effects ("no user_id_cdn was deleted twice").
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type NextFunction, type Request, type Response } from 'express';
import { z } from 'zod';
import type { Logger } from '../lib/logger.js';

const optionsSchema = z.strictObject({
  clientId: z.string().min(1),
  username: z.string().min(1),
  password: z.string().min(1),
  tokenTtlSec: z.number().int().positive(),
  latencyMs: z.number().int().nonnegative(),
  tokenLatencyMs: z.number().int().nonnegative(),
  failIds: z.array(z.string().min(1)),
  errorRate: z.number().min(0).max(1),
  failNextDeletes: z.number().int().nonnegative(),
  rejectCredentials: z.boolean(),
  maxEntriesPerCall: z.number().int().positive(),
});

export interface SimulatorOptions {
  /** Expected OAuth client_id. */
  clientId: string;
  username: string;
  password: string;
  /** Lifetime of an issued token. */
  tokenTtlSec: number;
  /** Delay before each delete_user_info reply. */
  latencyMs: number;
  /** Delay before each token reply. */
  tokenLatencyMs: number;
  /** user_id_cdn values always reported in chk_fail_dict_l ("user not found"). */
  failIds: string[];
  /** Probability (0..1) that a delete call answers 500. */
  errorRate: number;
  /** The next N delete calls answer 503, then calls are normal again. */
  failNextDeletes: number;
  /** The token endpoint refuses even the right credentials (401 invalid_grant). */
  rejectCredentials: boolean;
  /** More entries than this in one delete call → 400. */
  maxEntriesPerCall: number;
  /** Request logs at debug level, without secrets. Not settable over HTTP. */
  logger?: Logger;
}

export interface SimulatorStats {
  /** Tokens issued by the token endpoint. */
  tokenFetches: number;
  /** Token requests refused (400 or 401). */
  tokenRejected: number;
  /** Arrival time (ms since epoch) of every token request, refused ones included, for rate checks. */
  tokenRequestTimes: number[];
  /** Times invalidateToken() simulated another client taking the token. */
  externalInvalidations: number;
  deleteCalls: number;
  /** Delete replies by HTTP status, e.g. { "200": 3, "401": 1, "503": 2 }. */
  deleteByStatus: Record<string, number>;
  /** Delete calls answered 401. */
  unauthorized: number;
  /** Entries in delete calls that were processed (answered 200). */
  entriesReceived: number;
  /** Successful deletions per user_id_cdn (> 1 means the same id was deleted twice). */
  deletedCounts: Record<string, number>;
  /** Entries reported in chk_fail_dict_l. */
  failedEntries: number;
  maxConcurrentDeletes: number;
  inFlightDeletes: number;
}

export interface Simulator {
  start(port?: number, host?: string): Promise<{ url: string; port: number }>;
  /** Idempotent; also closes keep-alive sockets so it never waits on an idle client. */
  stop(): Promise<void>;
  stats(): SimulatorStats;
  /** Clears stats, deletion records and the current token; options are kept. */
  reset(): void;
  /** Clears stats and deletion records only: the current token stays valid (the end of a bench's warm-up). */
  resetStats(): void;
  /** Validates and applies a partial update; throws SimulatorOptionsError on a bad value. */
  setOptions(partial: Partial<SimulatorOptions>): void;
  /** Options without the password. */
  options(): Omit<SimulatorOptions, 'password' | 'logger'>;
  /** Another client fetched a token: ours stops working, the new one is never revealed. */
  invalidateToken(): void;
  /** The current token is treated as expired from now on. */
  expireToken(): void;
}

export class SimulatorOptionsError extends Error {
  override name = 'SimulatorOptionsError';
}

export const DEFAULT_SIMULATOR_OPTIONS: Readonly<Omit<SimulatorOptions, 'logger'>> = Object.freeze({
  clientId: 'cdn-platform',
  username: 'cdn',
  password: 'secret',
  tokenTtlSec: 3600,
  latencyMs: 0,
  tokenLatencyMs: 0,
  failIds: [],
  errorRate: 0,
  failNextDeletes: 0,
  rejectCredentials: false,
  maxEntriesPerCall: 1000,
});

/** The platform's 401 body, byte for byte (it is Werkzeug's Unauthorized text wrapped by Eve). */
export const UNAUTHORIZED_BODY = {
  _status: 'ERR',
  _error: {
    message: 'The server could not verify that you are authorized to access the URL requested. You either supplied the wrong credentials (e.g. a bad password), or your browser doesn\'t understand how to supply the credentials required.',
    code: 401,
  },
} as const;

/** Checks a partial options object (from code or JSON); throws SimulatorOptionsError naming the bad keys. */
export function parseSimulatorOptions(input: unknown): Partial<Omit<SimulatorOptions, 'logger'>> {
  const result = optionsSchema.partial().safeParse(input);
  if (!result.success) throw new SimulatorOptionsError(z.prettifyError(result.error).replace(/\n\s*/g, ' '));
  return result.data;
}

interface CurrentToken { value: string; expiresAt: number }

function emptyStats(): SimulatorStats {
  return {
    tokenFetches: 0, tokenRejected: 0, tokenRequestTimes: [], externalInvalidations: 0, deleteCalls: 0,
    deleteByStatus: {}, unauthorized: 0, entriesReceived: 0, deletedCounts: {}, failedEntries: 0,
    maxConcurrentDeletes: 0, inFlightDeletes: 0,
  };
}

const randomToken = (): string => randomBytes(24).toString('base64url');

// unref: a pending reply delay must not keep a stopping process alive.
const sleep = (ms: number): Promise<void> => (ms > 0 ? new Promise((r) => setTimeout(r, ms).unref()) : Promise.resolve());

/** Creates a stopped simulator; call start() to listen. */
export function createSimulator(options: Partial<SimulatorOptions> = {}): Simulator {
  const { logger: parentLogger, ...rest } = options;
  const logger = parentLogger?.child({ component: 'secplat-simulator' });
  let opts: Omit<SimulatorOptions, 'logger'> = { ...DEFAULT_SIMULATOR_OPTIONS, ...parseSimulatorOptions(rest) };
  let stats = emptyStats();
  let current: CurrentToken | null = null;
  let server: http.Server | null = null;
  let stopping: Promise<void> | null = null;

  const issueToken = (): string => {
    const value = randomToken();
    current = { value, expiresAt: Date.now() + opts.tokenTtlSec * 1000 };
    return value;
  };

  const tokenIsValid = (header: string | undefined): boolean => {
    const match = /^Bearer\s+(\S+)$/i.exec(header ?? '');
    return !!match && current !== null && match[1] === current.value && Date.now() < current.expiresAt;
  };

  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  // Bodies are parsed by hand so malformed ones still count as delete calls and get a JSON reason.
  const rawText = express.text({ type: () => true, limit: '20mb' });

  app.use((req, res, next) => {
    const started = Date.now();
    // Path and status only: headers, bodies and query strings may carry tokens and passwords.
    const path = req.originalUrl.split('?')[0];
    res.on('finish', () => logger?.debug('simulator request', {
      method: req.method, path, status: res.statusCode, ms: Date.now() - started,
    }));
    next();
  });

  app.post('/oauth/token', rawText, async (req, res) => {
    stats.tokenRequestTimes.push(Date.now());
    await sleep(opts.tokenLatencyMs);
    const form = new URLSearchParams(typeof req.body === 'string' ? req.body : '');
    const field = (name: string): string => form.get(name) ?? '';
    const refuse = (status: number, error: string, description: string): void => {
      stats.tokenRejected += 1;
      res.status(status).json({ error, error_description: description });
    };
    const missing = ['client_id', 'grant_type', 'username', 'password'].filter((name) => !field(name));
    if (missing.length > 0) return refuse(400, 'invalid_request', `missing: ${missing.join(', ')}`);
    if (field('grant_type') !== 'password') return refuse(400, 'unsupported_grant_type', 'only grant_type=password is supported');
    if (field('client_id') !== opts.clientId) return refuse(401, 'invalid_client', 'Invalid client_id.');
    if (opts.rejectCredentials || field('username') !== opts.username || field('password') !== opts.password) {
      return refuse(401, 'invalid_grant', 'Invalid credentials given.');
    }
    stats.tokenFetches += 1;
    res.json({ access_token: issueToken(), token_type: 'Bearer', expires_in: opts.tokenTtlSec, refresh_token: randomToken(), scope: '' });
  });

  app.post('/v1.0/delete_user_info', rawText, async (req, res) => {
    stats.deleteCalls += 1;
    stats.inFlightDeletes += 1;
    stats.maxConcurrentDeletes = Math.max(stats.maxConcurrentDeletes, stats.inFlightDeletes);
    const statsAtArrival = stats;
    // Decided on arrival, like the real platform checks auth before doing the work: a call that arrived
    // with the then-current token succeeds even if a new token is issued while it is being processed.
    const authorized = tokenIsValid(req.headers.authorization);
    const injected = opts.failNextDeletes > 0 ? 503 : Math.random() < opts.errorRate ? 500 : 0;
    if (injected === 503) opts = { ...opts, failNextDeletes: opts.failNextDeletes - 1 };
    const reply = (status: number, body: unknown): void => {
      // A reset() during the delay starts fresh stats; this call belongs to the old ones.
      if (stats !== statsAtArrival) return void res.status(status).json(body);
      stats.deleteByStatus[status] = (stats.deleteByStatus[status] ?? 0) + 1;
      if (status === 401) stats.unauthorized += 1;
      res.status(status).json(body);
    };
    try {
      await sleep(opts.latencyMs);
      if (injected === 503) return reply(503, { _status: 'ERR', _error: { message: 'Service Unavailable (simulated)', code: 503 } });
      if (injected === 500) return reply(500, { _status: 'ERR', _error: { message: 'Internal Server Error (simulated)', code: 500 } });
      if (!authorized) return reply(401, UNAUTHORIZED_BODY);
      const parsed = parseDeleteBody(req.body, opts.maxEntriesPerCall);
      if ('error' in parsed) return reply(400, { _status: 'ERR', _error: { message: parsed.error, code: 400 } });
      const failIds = new Set(opts.failIds);
      const failed = parsed.ids.filter((id) => failIds.has(id)).map((id) => ({ user_id_cdn: id, reason: 'user not found' }));
      const succeeded = parsed.ids.filter((id) => !failIds.has(id));
      if (stats === statsAtArrival) {
        stats.entriesReceived += parsed.ids.length;
        stats.failedEntries += failed.length;
        for (const id of succeeded) stats.deletedCounts[id] = (stats.deletedCounts[id] ?? 0) + 1;
      }
      reply(200, { status: 0, code: 0, chk_fail_dict_l: failed, success_num: succeeded.length });
    } finally {
      statsAtArrival.inFlightDeletes -= 1;
    }
  });

  const sim: Simulator = {
    async start(port = 0, host = '127.0.0.1') {
      if (server) throw new Error('simulator already started');
      const srv = http.createServer(app);
      server = srv;
      stopping = null;
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(port, host, () => { srv.off('error', reject); resolve(); });
      }).catch((err: unknown) => { server = null; throw err; });
      const actualPort = (srv.address() as AddressInfo).port;
      const url = `http://${host.includes(':') ? `[${host}]` : host}:${actualPort}`;
      logger?.debug('security-platform simulator listening', { url });
      return { url, port: actualPort };
    },

    stop() {
      if (!server) return stopping ?? Promise.resolve();
      const srv = server;
      server = null;
      stopping = new Promise<void>((resolve) => {
        // ERR_SERVER_NOT_RUNNING cannot happen here; resolve regardless so stop() never rejects.
        srv.close(() => resolve());
        srv.closeAllConnections();
      });
      return stopping;
    },

    stats() {
      return structuredClone(stats);
    },

    reset() {
      stats = emptyStats();
      current = null;
    },

    resetStats() {
      stats = emptyStats();
    },

    setOptions(partial) {
      const { logger: _ignored, ...rest } = partial;
      opts = { ...opts, ...parseSimulatorOptions(rest) };
    },

    options() {
      const { password: _secret, ...visible } = opts;
      return structuredClone(visible);
    },

    invalidateToken() {
      issueToken();
      stats.externalInvalidations += 1;
    },

    expireToken() {
      if (current) current.expiresAt = Date.now();
    },
  };

  // Admin endpoints, so other processes (demo, benchmarks) can steer a simulator they did not start.
  const admin = express.Router();
  admin.get('/stats', (_req, res) => { res.json(sim.stats()); });
  admin.post('/reset', (_req, res) => { sim.reset(); res.status(204).end(); });
  admin.post('/invalidate', (_req, res) => { sim.invalidateToken(); res.status(204).end(); });
  admin.post('/expire', (_req, res) => { sim.expireToken(); res.status(204).end(); });
  admin.get('/options', (_req, res) => { res.json(sim.options()); });
  admin.patch('/options', express.json({ type: () => true }), (req, res) => {
    sim.setOptions(parseSimulatorOptions(req.body ?? {}));
    res.json(sim.options());
  });
  app.use('/__sim', admin);

  app.use((req, res) => { res.status(404).json({ error: 'not_found', message: `no route for ${req.method} ${req.path}` }); });
  // Express 5 forwards rejected promises here; body-parser errors carry their own 4xx status.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const status = err instanceof SimulatorOptionsError ? 400 : httpStatusOf(err);
    if (status >= 500) logger?.error('simulator error', { err });
    res.status(status).json({ error: status < 500 ? 'bad_request' : 'internal', message: err instanceof Error ? err.message : String(err) });
  });

  return sim;
}

function httpStatusOf(err: unknown): number {
  const status = (err as { status?: unknown } | null)?.status;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500;
}

function parseDeleteBody(raw: unknown, maxEntries: number): { ids: string[] } | { error: string } {
  let body: unknown;
  try {
    body = JSON.parse(typeof raw === 'string' ? raw : '');
  } catch {
    return { error: 'body is not valid JSON' };
  }
  const list = (body as { delete_user_info_list?: unknown } | null)?.delete_user_info_list;
  if (!Array.isArray(list)) return { error: 'delete_user_info_list must be an array' };
  if (list.length === 0) return { error: 'delete_user_info_list must not be empty' };
  if (list.length > maxEntries) return { error: `delete_user_info_list holds ${list.length} entries; at most ${maxEntries} allowed` };
  const ids: string[] = [];
  for (const [i, entry] of list.entries()) {
    const id = (entry as { user_id_cdn?: unknown } | null)?.user_id_cdn;
    if (typeof id !== 'string' || id === '') return { error: `delete_user_info_list[${i}].user_id_cdn must be a non-empty string` };
    ids.push(id);
  }
  return { ids };
}
