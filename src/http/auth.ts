/**
 * Who is calling an operator route or console page, and what they may do. Every such route goes through
 * `requireRole` of the one `createAuth` built in createApp; the handler then reads `principalOf(res)`
 * (e.g. for the audit). Three ways in, tried in this order:
 *   1. `Authorization: Bearer <ADMIN_TOKEN | VIEWER_TOKEN>` (scripts). A present but wrong Authorization
 *      header is a 401, never a fall-through to the cookie.
 *   2. a single sign-on proxy's user header (SSO_USER_HEADER), believed only from a TRUST_PROXY address.
 *   3. the `pcp_session` cookie of a CONSOLE_USERS sign-in (sessions in PostgreSQL, src/http/session.ts).
 * A cookie is ambient (the browser sends it on a cross-site form too), so every mutation by a session or
 * SSO principal must also prove it comes from our own page: an X-CSRF-Token header or `_csrf` form field
 * equal to the session's token, and an Origin (when sent) equal to our own.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import express, { type Request, type RequestHandler, type Response, type Router } from 'express';
import pLimit from 'p-limit';
import { RESERVED_NAMES, type Config, type ConsoleUser } from '../config.js';
import { ForbiddenError, UnauthorizedError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Db } from '../store/db.js';
import {
  SCRYPT_N, SESSION_TOKEN, createSession, deleteSession, hashPassword, parsePasswordHash, touchSession, verifyPassword,
  type PasswordHash,
} from './session.js';

/** viewer: read; operator: read, replay, acknowledge and resolve. */
export type Role = 'viewer' | 'operator';

/**
 * The authenticated caller: a named person (`session`: a CONSOLE_USERS sign-in, `sso`: named by the single
 * sign-on proxy), or the bearer token a script used (names 'admin-token' / 'viewer-token').
 */
export interface Principal { name: string; role: Role; via: 'bearer' | 'session' | 'sso' }

export type AuthConfig = Pick<Config, 'adminToken' | 'viewerToken' | 'consoleUsers' | 'consoleSessionTtlMs' | 'consoleSessionIdleMs'
  | 'consoleLoginMaxFailures' | 'consoleLoginWindowMs' | 'ssoUserHeader' | 'ssoOperators' | 'trustProxy' | 'publicBaseUrl'>;

export interface AuthDeps { config: AuthConfig; db: Db; logger: Logger }

export interface RequireRoleOptions {
  /** Appended to the "disabled" 403 (e.g. how to open /metrics instead). */
  disabledHint?: string;
  /**
   * false: an unauthenticated request always gets 401 JSON, even from a browser (JSON endpoints a console
   * page fetches). Default: HTML requests (/console paths, or Accept preferring text/html) get a 303 to the
   * login form.
   */
  redirectToLogin?: boolean;
}

export interface Auth {
  /**
   * Middleware: lets the request through when its caller may do `role`, with `res.locals.principal` set and,
   * for session and SSO callers, `res.locals.csrfToken` (for `<meta name="csrf-token">` and forms' `_csrf`).
   */
  requireRole(role: Role, opts?: RequireRoleOptions): RequestHandler;
  /** Mounts GET/POST /console/login and POST /console/logout. */
  loginRoutes(app: Router): void;
}

export const SESSION_COOKIE = 'pcp_session';
export const CSRF_HEADER = 'x-csrf-token';
export const CSRF_FIELD = '_csrf';
export const LOGIN_PATH = '/console/login';
export const LOGOUT_PATH = '/console/logout';
const HOME = '/console';
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const BEARER_HINT = 'missing or wrong bearer token (Authorization: Bearer <ADMIN_TOKEN or VIEWER_TOKEN>)';
const WRONG_LOGIN = 'wrong name or password';
/** Failed sign-ins allowed per address, as a multiple of those per name and address (password spraying). */
const PER_ADDRESS_FACTOR = 4;
const MAX_NAME = 128;
const MAX_PASSWORD = 1024;

/** Builds the one authenticator of a process (createApp); it holds the sign-in throttle and the dummy hash. */
export function createAuth(deps: AuthDeps): Auth {
  const { config, db, logger } = deps;
  const users = new Map(config.consoleUsers.map((u) => [u.name, { ...u, parsed: parsePasswordHash(u.hash)!, tag: userTag(u) }]));
  const ssoOperators = new Set(config.ssoOperators);
  const peerTrusted = createPeerTrust(config.trustProxy);
  const throttle = new LoginThrottle({ maxFailures: config.consoleLoginMaxFailures, windowMs: config.consoleLoginWindowMs });
  // Each check holds a libuv thread for ~50-100 ms; two at a time leaves the pool to DNS, fs and zlib
  // when someone floods the login form from many addresses.
  const scryptSlots = pLimit(2);
  const enabled = !!(config.adminToken || config.viewerToken || users.size > 0 || config.ssoUserHeader);
  const people = users.size > 0 || !!config.ssoUserHeader;
  const publicOrigin = originOf(config.publicBaseUrl);
  const sessionTimes = { ttlMs: config.consoleSessionTtlMs, idleMs: config.consoleSessionIdleMs };

  if (config.ssoUserHeader && config.trustProxy.length === 0) {
    logger.warn('SSO_USER_HEADER is set but TRUST_PROXY is empty: the header is never believed, nobody signs in through the proxy', { header: config.ssoUserHeader });
  }

  // Unknown names are checked against this, so they cost as long as a wrong password (no user enumeration
  // by timing). Its N is the one most users have. Made on first use: tests build many apps.
  let dummy: Promise<PasswordHash> | undefined;
  const dummyHash = () => (dummy ??= hashPassword(randomBytes(16).toString('hex'), commonN(users)).then((h) => parsePasswordHash(h)!));

  /** Who the request is, or null for nobody; throws for a wrong bearer. */
  async function authenticate(req: Request, res: Response): Promise<{ principal: Principal; csrfToken?: string } | null> {
    const sso = ssoIdentity(req);
    const authorization = req.get('authorization');
    if (authorization !== undefined) {
      const bearer = /^Bearer +(\S+) *$/i.exec(authorization)?.[1];
      // Both compared every time, so the timing does not tell which of the two a guess came close to.
      const isOperator = sameSecret(bearer, config.adminToken);
      const isViewer = sameSecret(bearer, config.viewerToken);
      if (isOperator) return { principal: { name: 'admin-token', role: 'operator', via: 'bearer' } };
      if (isViewer) return { principal: { name: 'viewer-token', role: 'viewer', via: 'bearer' } };
      // Some SSO proxies pass their own Authorization upstream; the proxy's word on the user still counts.
      if (!sso) throw new UnauthorizedError(BEARER_HINT);
    }
    if (sso) {
      const principal: Principal = { name: sso, role: ssoOperators.has(sso) ? 'operator' : 'viewer', via: 'sso' };
      return { principal, csrfToken: await ssoCsrfToken(req, res, sso) };
    }
    for (const token of sessionCookies(req)) {
      const s = await touchSession(db, token, sessionTimes.idleMs);
      // An SSO row only carries a CSRF token: without the proxy's header it signs nobody in.
      if (!s || s.via !== 'session') continue;
      const user = users.get(s.name);
      if (!user || user.tag !== s.userTag) {
        // CONSOLE_USERS changed since sign-in (user removed, other role, new password): the session ends now.
        await deleteSession(db, token);
        logger.info('console session ended: its user entry changed in CONSOLE_USERS', { user: s.name });
        continue;
      }
      return { principal: { name: s.name, role: user.role, via: 'session' }, csrfToken: s.csrfToken };
    }
    return null;
  }

  /** The user the SSO proxy names, when the request comes straight from a TRUST_PROXY address; else undefined. */
  function ssoIdentity(req: Request): string | undefined {
    const header = config.ssoUserHeader;
    if (!header) return undefined;
    const values = req.headersDistinct[header];
    if (!values || values.length === 0) return undefined;
    // The direct peer, not req.ip: req.ip is the browser's address when the proxy is trusted (so it would
    // refuse the proxy), and the header must come from the proxy itself, whatever X-Forwarded-For claims.
    const peer = req.socket.remoteAddress;
    if (!peerTrusted(peer)) {
      logger.warn('single sign-on header ignored: the request does not come from a TRUST_PROXY address', { header, address: peer });
      return undefined;
    }
    const name = values[0]!.trim();
    if (values.length !== 1 || !/^[^\p{Cc},]{1,256}$/u.test(name) || RESERVED_NAMES.has(name)) {
      logger.warn('single sign-on header ignored: not exactly one plausible user name', { header, address: peer });
      return undefined;
    }
    return name;
  }

  /**
   * The CSRF token of an SSO user: kept in a console_session row of via 'sso' (shared by every process,
   * expiring like any session), whose cookie the browser gets on the first page it loads. Chosen over an
   * HMAC of the name: no new shared secret to configure, and the token changes per browser and per day.
   * Only HTML GETs create one: a script going through the proxy (no cookie jar) would leave a row per call.
   */
  async function ssoCsrfToken(req: Request, res: Response, name: string): Promise<string | undefined> {
    for (const token of sessionCookies(req)) {
      const s = await touchSession(db, token, sessionTimes.idleMs);
      if (s?.via === 'sso' && s.name === name) return s.csrfToken;
    }
    if (!SAFE_METHODS.has(req.method) || !wantsHtml(req)) return undefined;
    const created = await createSession(db, { name, role: ssoOperators.has(name) ? 'operator' : 'viewer', via: 'sso', userTag: 'sso', ...sessionTimes });
    setSessionCookie(req, res, created.token);
    return created.csrfToken;
  }

  /** Cross-site request forgery: our own origin, and the session's token in a header or form field. */
  async function assertSameSite(req: Request, res: Response, csrfToken: string | undefined): Promise<void> {
    assertOwnOrigin(req, publicOrigin);
    let given = req.get(CSRF_HEADER);
    // Plain HTML forms cannot set a header. Read only now, after the caller is known to be signed in.
    if (given === undefined && req.is('application/x-www-form-urlencoded')) given = await formField(req, res, CSRF_FIELD);
    if (!csrfToken || !sameSecret(given, csrfToken)) {
      throw new ForbiddenError(`missing or wrong CSRF token: a signed-in change needs the page's token in the ${CSRF_HEADER} header or a ${CSRF_FIELD} form field`);
    }
  }

  function requireRole(role: Role, opts: RequireRoleOptions = {}): RequestHandler {
    return async (req, res, next) => {
      if (!enabled) {
        throw new ForbiddenError(`operator API disabled: set ADMIN_TOKEN or VIEWER_TOKEN (bearer tokens), CONSOLE_USERS (console sign-in) or SSO_USER_HEADER (single sign-on proxy)${opts.disabledHint ?? ''}`);
      }
      const found = await authenticate(req, res);
      if (!found) {
        if (opts.redirectToLogin !== false && wantsHtml(req)) {
          res.set('Cache-Control', 'no-store');
          res.redirect(303, loginUrl(req.originalUrl));
          return;
        }
        throw new UnauthorizedError(people ? `not signed in: send Authorization: Bearer <ADMIN_TOKEN or VIEWER_TOKEN>, or sign in at ${LOGIN_PATH}` : BEARER_HINT);
      }
      const { principal, csrfToken } = found;
      if (principal.via !== 'bearer' && !SAFE_METHODS.has(req.method)) await assertSameSite(req, res, csrfToken);
      if (role === 'operator' && principal.role !== 'operator') {
        throw new ForbiddenError(principal.via === 'bearer'
          ? 'this route needs the operator role (ADMIN_TOKEN); a viewer may only read'
          : `this route needs the operator role; ${principal.name} is a viewer and may only read`);
      }
      res.locals.principal = principal;
      if (csrfToken) res.locals.csrfToken = csrfToken;
      next();
    };
  }

  function loginRoutes(app: Router): void {
    const form = express.urlencoded({ extended: false, limit: '8kb', parameterLimit: 10 });

    app.get(LOGIN_PATH, (req, res) => {
      sendLoginPage(res, 200, { next: safeNextPath(req.query.next) ?? '', users: users.size > 0, sso: !!config.ssoUserHeader });
    });

    // The Origin check comes before the body is read: a cross-site form costs no parsing and no scrypt.
    app.post(LOGIN_PATH, (req, _res, next) => { assertOwnOrigin(req, publicOrigin); next(); }, form, async (req, res) => {
      const body = (req.body ?? {}) as Record<string, unknown>;
      const name = typeof body.name === 'string' ? body.name : '';
      const password = typeof body.password === 'string' ? body.password : '';
      const next = safeNextPath(body.next);
      const address = req.ip ?? req.socket.remoteAddress ?? '';
      const page = { next: next ?? '', users: users.size > 0, sso: !!config.ssoUserHeader };
      // The name is hashed into the key: a flood of long names must not cost memory per byte.
      const keys = [`${createHash('sha256').update(name).digest('base64url').slice(0, 22)}\u0000${address}`, `\u0000${address}`];

      const wait = Math.max(throttle.blockedFor(keys[0]!, 1), throttle.blockedFor(keys[1]!, PER_ADDRESS_FACTOR));
      if (wait > 0) {
        logger.warn('console sign-in refused: too many failed attempts', { user: users.has(name) ? name : undefined, address });
        res.set('Retry-After', String(Math.ceil(wait / 1000)));
        sendLoginPage(res, 429, { ...page, error: 'too many failed sign-ins; try again later' });
        return;
      }
      // Counted as a failure before the password is checked, in the same step as the limit check: parallel
      // guesses cannot all pass the limit while their checks wait for a scrypt slot. A success takes it back.
      for (const key of keys) throttle.fail(key);
      const user = users.get(name);
      const plausible = name.length > 0 && name.length <= MAX_NAME && password.length > 0 && password.length <= MAX_PASSWORD;
      // Always one scrypt, against a dummy hash for unknown names, so the answer time does not tell them apart.
      const hash = user?.parsed ?? await dummyHash();
      const ok = await scryptSlots(() => verifyPassword(plausible ? password : '', hash)) && !!user && plausible;
      if (!ok) {
        // A name that is not a user is not logged: people type their password into the name field.
        logger.warn('console sign-in refused: wrong name or password', { user: user ? name : undefined, address });
        sendLoginPage(res, 401, { ...page, error: WRONG_LOGIN });
        return;
      }
      throttle.reset(keys[0]!);
      throttle.forgive(keys[1]!);
      // Whatever session the browser held before (its own, or one planted on it) ends here: a sign-in
      // always issues a new id, so nobody who knew the old one rides along.
      for (const token of sessionCookies(req)) await deleteSession(db, token);
      const created = await createSession(db, { name: user.name, role: user.role, via: 'session', userTag: user.tag, ...sessionTimes });
      setSessionCookie(req, res, created.token);
      logger.info('console sign-in', { user: user.name, role: user.role, address });
      res.set('Cache-Control', 'no-store');
      res.redirect(303, next ?? HOME);
    });

    app.post(LOGOUT_PATH, form, async (req, res) => {
      for (const token of sessionCookies(req)) {
        const s = await touchSession(db, token, sessionTimes.idleMs);
        if (!s) continue;
        // A forged sign-out is a nuisance, not a breach, but it is a change all the same: same rule as any other.
        await assertSameSite(req, res, s.csrfToken);
        await deleteSession(db, token);
        logger.info('console sign-out', { user: s.name, via: s.via });
      }
      clearSessionCookie(req, res);
      res.set('Cache-Control', 'no-store');
      res.redirect(303, LOGIN_PATH);
    });
  }

  return { requireRole, loginRoutes };
}

/** The caller requireRole let through (throws if a route forgot requireRole: never act for nobody). */
export function principalOf(res: Response): Principal {
  const p = res.locals.principal as Principal | undefined;
  if (!p) throw new UnauthorizedError('no authenticated caller');
  return p;
}

/** Constant-time comparison of two secrets (hashed first so their lengths do not leak). */
export function sameSecret(given: string | undefined, expected: string | undefined): boolean {
  if (!given || !expected) return false;
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * The `next` of a sign-in, when it is a path of our own console: `/console` or below, normalised
 * (`/console/a/../b` → `/console/b`), query kept, fragment dropped. Anything else (`//evil`, `/\evil`,
 * `https://evil`, `javascript:`, `/api/...`, control characters) is null: the caller goes to /console.
 */
export function safeNextPath(next: unknown): string | null {
  if (typeof next !== 'string' || next.length === 0 || next.length > 2048) return null;
  // Browsers read "\" as "/" ("/\evil.com" is "//evil.com") and drop tabs and newlines inside URLs.
  if (!next.startsWith('/') || next.startsWith('//') || /[\\\p{Cc}\s]/u.test(next)) return null;
  let url: URL;
  try { url = new URL(next, 'http://service.invalid'); } catch { return null; }
  if (url.origin !== 'http://service.invalid') return null;
  if (url.pathname !== HOME && !url.pathname.startsWith(`${HOME}/`)) return null;
  if (url.pathname === LOGIN_PATH || url.pathname === LOGOUT_PATH) return null;
  return url.pathname + url.search;
}

/**
 * Whether an address is one of TRUST_PROXY's (as config.ts parsed it: `addr/prefix` or express's named
 * ranges loopback, linklocal, uniquelocal, with the same meaning as express's proxy-addr gives them).
 */
export function createPeerTrust(trustProxy: readonly string[]): (address: string | undefined) => boolean {
  if (trustProxy.length === 0) return () => false;
  const list = new BlockList();
  const add = (cidr: string) => {
    const [address, prefix] = cidr.split('/') as [string, string];
    list.addSubnet(address, Number(prefix), isIPv4(address) ? 'ipv4' : 'ipv6');
  };
  for (const entry of trustProxy) {
    for (const cidr of NAMED_RANGES[entry] ?? [entry]) add(cidr);
  }
  return (address) => {
    if (!address) return false;
    const plain = address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
    if (isIPv4(plain)) return list.check(plain, 'ipv4');
    return isIPv6(plain) && list.check(plain, 'ipv6');
  };
}

const NAMED_RANGES: Record<string, string[]> = {
  loopback: ['127.0.0.0/8', '::1/128'],
  linklocal: ['169.254.0.0/16', 'fe80::/10'],
  uniquelocal: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
};

/**
 * Failed sign-ins per key in fixed windows, in this process's memory: enough to turn guessing into a
 * crawl for one service; a restart forgets it, and N processes allow N times as many. Bounded in size.
 */
export class LoginThrottle {
  private readonly failures = new Map<string, { count: number; resetAt: number }>();
  private readonly maxKeys: number;
  constructor(private readonly opts: { maxFailures: number; windowMs: number; now?: () => number; maxKeys?: number }) {
    this.maxKeys = opts.maxKeys ?? 10_000;
  }

  private now(): number { return (this.opts.now ?? Date.now)(); }

  /** Milliseconds until `key` may try again (0 = now); `factor` multiplies the failures allowed. */
  blockedFor(key: string, factor = 1): number {
    const f = this.failures.get(key);
    if (!f) return 0;
    const now = this.now();
    if (f.resetAt <= now) { this.failures.delete(key); return 0; }
    return f.count >= this.opts.maxFailures * factor ? f.resetAt - now : 0;
  }

  fail(key: string): void {
    const now = this.now();
    const f = this.failures.get(key);
    if (f && f.resetAt > now) { f.count += 1; return; }
    if (this.failures.size >= this.maxKeys) this.prune(now);
    this.failures.set(key, { count: 1, resetAt: now + this.opts.windowMs });
  }

  reset(key: string): void { this.failures.delete(key); }

  /** Takes back one failure counted ahead of a check that then succeeded. */
  forgive(key: string): void {
    const f = this.failures.get(key);
    if (!f) return;
    if (f.count <= 1) this.failures.delete(key);
    else f.count -= 1;
  }

  private prune(now: number): void {
    for (const [k, f] of this.failures) if (f.resetAt <= now) this.failures.delete(k);
    // Still full: forget the oldest windows (insertion order) rather than grow without bound.
    for (const k of this.failures.keys()) {
      if (this.failures.size < this.maxKeys) break;
      this.failures.delete(k);
    }
  }
}

/** Every value of cookie `name` in a Cookie header (a browser may send two of one name, from two paths or domains). */
export function cookieValues(header: string | undefined, name: string): string[] {
  if (!header) return [];
  const out: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue;
    let value = part.slice(eq + 1).trim();
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1);
    out.push(value);
  }
  return out;
}

/** Session tokens the request carries that could be ours (well-formed; at most three looked up). */
function sessionCookies(req: Request): string[] {
  return cookieValues(req.headers.cookie, SESSION_COOKIE).filter((v) => SESSION_TOKEN.test(v)).slice(0, 3);
}

function setSessionCookie(req: Request, res: Response, token: string): void {
  // No Max-Age: the browser forgets it when closed; the row's expires_at bounds it anyway.
  res.cookie(SESSION_COOKIE, token, { httpOnly: true, sameSite: 'strict', path: '/', secure: req.secure });
}

function clearSessionCookie(req: Request, res: Response): void {
  res.clearCookie(SESSION_COOKIE, { httpOnly: true, sameSite: 'strict', path: '/', secure: req.secure });
}

/** Fingerprint of a CONSOLE_USERS entry: a session is good only while its user's entry stays the same. */
function userTag(u: ConsoleUser): string {
  return createHash('sha256').update(`${u.name}\u0000${u.role}\u0000${u.hash}`).digest('hex');
}

function commonN(users: Map<string, { parsed: PasswordHash }>): number {
  const counts = new Map<number, number>();
  for (const u of users.values()) counts.set(u.parsed.n, (counts.get(u.parsed.n) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? SCRYPT_N.default;
}

/** A page (not an API client) is asking: console paths, or a browser's Accept preferring HTML. */
function wantsHtml(req: Request): boolean {
  // Inside the router mounted at /console, req.path is relative: the full path is baseUrl + path.
  const path = req.baseUrl + req.path;
  return path === HOME || path.startsWith(`${HOME}/`) || req.accepts(['json', 'html']) === 'html';
}

function loginUrl(originalUrl: string): string {
  const next = safeNextPath(originalUrl);
  return next ? `${LOGIN_PATH}?next=${encodeURIComponent(next)}` : LOGIN_PATH;
}

function originOf(url: string): string | null {
  try { return url ? new URL(url).origin : null; } catch { return null; }
}

/**
 * A browser names the page a request comes from in Origin (every cross-origin POST) and in Sec-Fetch-Site;
 * when sent, they must say it is our own page: this host as the client reached it, or PUBLIC_BASE_URL.
 */
function assertOwnOrigin(req: Request, publicOrigin: string | null): void {
  const origin = req.get('origin');
  if (origin !== undefined) {
    const own = originOf(`${req.protocol}://${req.host}`);
    const given = origin === 'null' ? null : originOf(origin);
    if (!given || (given !== own && given !== publicOrigin)) throw new ForbiddenError('cross-site request refused: its Origin is not this service');
  }
  const site = req.get('sec-fetch-site');
  if (site !== undefined && site !== 'same-origin' && site !== 'none') throw new ForbiddenError('cross-site request refused (Sec-Fetch-Site)');
}

/** One field of a urlencoded body, parsed here (once: a later express.urlencoded sees it done). */
async function formField(req: Request, res: Response, field: string): Promise<string | undefined> {
  if (req.body === undefined) {
    await new Promise<void>((resolve, reject) => {
      express.urlencoded({ extended: false, limit: '100kb' })(req, res, (err?: unknown) => (err ? reject(err) : resolve()));
    });
  }
  const value = (req.body as Record<string, unknown> | undefined)?.[field];
  return typeof value === 'string' ? value : undefined;
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);

/** The sign-in form: server-rendered, no script, not cacheable, not frameable. */
function sendLoginPage(res: Response, status: number, p: { next: string; users: boolean; sso: boolean; error?: string }): void {
  const note = !p.users
    ? `<p>${p.sso ? 'Sign-in goes through your company&#39;s single sign-on; no console users are configured here.' : 'Console sign-in is off: no console users are configured.'}</p>`
    : '';
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · pipeline-callback-processor</title>
</head>
<body>
<main>
<h1>Sign in</h1>
${p.error ? `<p role="alert">${escapeHtml(p.error)}</p>\n` : ''}${note}<form method="post" action="${LOGIN_PATH}">
<input type="hidden" name="next" value="${escapeHtml(p.next)}">
<p><label for="name">Name</label> <input id="name" name="name" autocomplete="username" required autofocus></p>
<p><label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><button type="submit">Sign in</button></p>
</form>
</main>
</body>
</html>
`;
  res.status(status)
    .set({
      'Content-Type': 'text/html; charset=utf-8',
      'Cache-Control': 'no-store',
      'Content-Security-Policy': "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
      'X-Frame-Options': 'DENY',
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'same-origin',
    })
    .send(html);
}

