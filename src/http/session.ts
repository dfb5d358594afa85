/**
 * The parts of console sign-in that hold secrets: password hashes (scrypt) and sessions in PostgreSQL.
 * src/http/auth.ts decides who may do what with them; config.ts uses parsePasswordHash to refuse a bad
 * CONSOLE_USERS at start-up.
 */
import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import type { Queryable } from '../store/db.js';
import type { Role } from './auth.js';

/**
 * scrypt cost N (r = 8, p = 1 fixed). 2^15 takes ~50-100 ms and 32 MiB per check: slow for a guesser, fine
 * for a person signing in. Hashes with N from 2^14 to 2^17 are accepted (above that one check needs more
 * memory than a service process should spend on a login).
 */
export const SCRYPT_N = { default: 2 ** 15, min: 2 ** 14, max: 2 ** 17 } as const;
const SCRYPT_R = 8;
const SCRYPT_P = 1;
const SALT_BYTES = 16;
const KEY_BYTES = 32;

/** A parsed `scrypt$<N>$<salt b64>$<key b64>`. */
export interface PasswordHash { n: number; salt: Buffer; key: Buffer }

export const PASSWORD_HASH_RULE = `scrypt$<N>$<salt base64>$<key base64> with N a power of two from ${SCRYPT_N.min} to ${SCRYPT_N.max}, a salt of at least ${SALT_BYTES} bytes and a key of ${KEY_BYTES} to 64 bytes (as printed by npm run console:user)`;

const B64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Strict: canonical base64 only, so a hash mangled by a shell ("$32768" expanded away) is refused, not misread. */
function decodeBase64(text: string): Buffer | null {
  if (!B64.test(text)) return null;
  const buf = Buffer.from(text, 'base64');
  return buf.toString('base64') === text ? buf : null;
}

/** The hash in CONSOLE_USERS, or null when it is not one this service can verify. */
export function parsePasswordHash(text: string): PasswordHash | null {
  const m = /^scrypt\$([0-9]{1,7})\$([^$]+)\$([^$]+)$/.exec(text);
  if (!m) return null;
  const n = Number(m[1]);
  if (n < SCRYPT_N.min || n > SCRYPT_N.max || (n & (n - 1)) !== 0) return null;
  const salt = decodeBase64(m[2]!);
  const key = decodeBase64(m[3]!);
  if (!salt || salt.length < SALT_BYTES || !key || key.length < KEY_BYTES || key.length > 64) return null;
  return { n, salt, key };
}

function derive(password: string, salt: Buffer, n: number, keyLength: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // maxmem: scrypt needs 128·N·r bytes; node's default cap (32 MiB) is just below that for N = 2^15.
    scrypt(password.normalize('NFC'), salt, keyLength, { N: n, r: SCRYPT_R, p: SCRYPT_P, maxmem: 256 * n * SCRYPT_R }, (err, key) => {
      if (err) reject(err); else resolve(key);
    });
  });
}

/** A new `scrypt$<N>$<salt>$<key>` for CONSOLE_USERS. */
export async function hashPassword(password: string, n: number = SCRYPT_N.default): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, n, KEY_BYTES);
  return `scrypt$${n}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/** True when the password matches; compared in constant time (the derived keys have the same length). */
export async function verifyPassword(password: string, hash: PasswordHash): Promise<boolean> {
  const key = await derive(password, hash.salt, hash.n, hash.key.length);
  return timingSafeEqual(key, hash.key);
}

/** What a session cookie carries: 32 random bytes, base64url (43 characters). */
export const SESSION_TOKEN = /^[A-Za-z0-9_-]{43}$/;

/** The row id of a session token: its sha256 (the token itself is never stored). */
export function sessionIdOf(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export type SessionVia = 'session' | 'sso';

export interface StoredSession {
  name: string;
  role: Role;
  via: SessionVia;
  /** Fingerprint of the CONSOLE_USERS entry it was issued for ('sso' for single sign-on rows). */
  userTag: string;
  csrfToken: string;
  expiresAt: Date;
}

/**
 * Stores a new session and returns its token (for the cookie) and CSRF token. Every sign-in gets a new
 * one, never an existing id, so a session id planted before sign-in is worth nothing after it.
 */
export async function createSession(
  db: Queryable,
  s: { name: string; role: Role; via: SessionVia; userTag: string; ttlMs: number; idleMs: number },
): Promise<{ token: string; csrfToken: string; expiresAt: Date }> {
  // Sessions are few (people, not requests), so the sweep of ended ones can ride along with each new one.
  await db.query(`DELETE FROM console_session WHERE expires_at <= now() OR last_seen_at <= now() - $1::bigint * interval '1 millisecond'`, [s.idleMs]);
  const token = randomBytes(32).toString('base64url');
  const csrfToken = randomBytes(32).toString('base64url');
  const { rows } = await db.query<{ expires_at: Date }>(
    `INSERT INTO console_session (id, name, role, via, user_tag, csrf_token, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, now() + $7::bigint * interval '1 millisecond')
     RETURNING expires_at`,
    [sessionIdOf(token), s.name, s.role, s.via, s.userTag, csrfToken, s.ttlMs],
  );
  return { token, csrfToken, expiresAt: rows[0]!.expires_at };
}

/**
 * The live session of a token, its idle clock restarted; null when the token is malformed, unknown,
 * past its expiry or idle longer than idleMs. PostgreSQL's clock decides, the same for every process.
 */
export async function touchSession(db: Queryable, token: string, idleMs: number): Promise<StoredSession | null> {
  if (!SESSION_TOKEN.test(token)) return null;
  const { rows } = await db.query<{ name: string; role: Role; via: SessionVia; user_tag: string; csrf_token: string; expires_at: Date }>(
    `UPDATE console_session SET last_seen_at = now()
      WHERE id = $1 AND expires_at > now() AND last_seen_at > now() - $2::bigint * interval '1 millisecond'
      RETURNING name, role, via, user_tag, csrf_token, expires_at`,
    [sessionIdOf(token), idleMs],
  );
  const r = rows[0];
  return r ? { name: r.name, role: r.role, via: r.via, userTag: r.user_tag, csrfToken: r.csrf_token, expiresAt: r.expires_at } : null;
}

/** Ends a session; true when there was one. */
export async function deleteSession(db: Queryable, token: string): Promise<boolean> {
  if (!SESSION_TOKEN.test(token)) return false;
  const { rowCount } = await db.query('DELETE FROM console_session WHERE id = $1', [sessionIdOf(token)]);
  return (rowCount ?? 0) > 0;
}
