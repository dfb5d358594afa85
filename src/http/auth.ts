/**
 * Who is calling an operator route, and what they may do. Every operator route and console page goes
 * through requireRole; the handler then reads principalOf(res) (e.g. for the audit).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler, Response } from 'express';
import type { Config } from '../config.js';
import { ForbiddenError, UnauthorizedError } from '../lib/errors.js';

/** viewer: read; operator: read, replay, acknowledge and resolve. */
export type Role = 'viewer' | 'operator';

/** The authenticated caller: a named person, or the bearer token a script used. */
export interface Principal { name: string; role: Role; via: 'bearer' }

/**
 * Middleware for operator routes: the request must carry `Authorization: Bearer <token>` of a role that may
 * do `role` (the operator's ADMIN_TOKEN may do everything a viewer may). With neither token configured the
 * operator API is off (403): it fails closed, never open.
 */
export function requireRole(config: Pick<Config, 'adminToken' | 'viewerToken'>, role: Role, disabledHint = ''): RequestHandler {
  return (req, res, next) => {
    if (!config.adminToken && !config.viewerToken) {
      throw new ForbiddenError(`operator API disabled: set ADMIN_TOKEN or VIEWER_TOKEN${disabledHint}`);
    }
    const bearer = /^Bearer +(\S+) *$/i.exec(req.get('authorization') ?? '')?.[1];
    // Both compared every time, so the timing does not tell which of the two a guess came close to.
    const isOperator = sameSecret(bearer, config.adminToken);
    const isViewer = sameSecret(bearer, config.viewerToken);
    if (!isOperator && !isViewer) throw new UnauthorizedError('missing or wrong bearer token (Authorization: Bearer <ADMIN_TOKEN or VIEWER_TOKEN>)');
    if (role === 'operator' && !isOperator) throw new ForbiddenError('this route needs the operator role (ADMIN_TOKEN); a viewer may only read');
    const principal: Principal = isOperator ? { name: 'admin-token', role: 'operator', via: 'bearer' } : { name: 'viewer-token', role: 'viewer', via: 'bearer' };
    res.locals.principal = principal;
    next();
  };
}

/** The caller requireRole let through (throws if a route forgot requireRole: never act for nobody). */
export function principalOf(res: Response): Principal {
  const p = res.locals.principal as Principal | undefined;
  if (!p) throw new UnauthorizedError('no authenticated caller');
  return p;
}

/** Constant-time comparison of two secrets (hashed first so their lengths do not leak). */
export function sameSecret(given: string | undefined, expected: string): boolean {
  if (!given || !expected) return false;
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}
