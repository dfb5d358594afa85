/**
 * winston JSON logger. Secrets never reach a line: keys that name a secret are replaced, and
 * bearer tokens or URL passwords inside strings are masked (tested by test/integration/log-secrets).
 */
import winston from 'winston';
import type { Writable } from 'node:stream';

export type Logger = winston.Logger;

const SECRET_KEY = /pass(word)?|secret|token|authorization|cookie|credential/i;
// Keys that contain "token" but only ever hold non-secret metadata.
const SAFE_KEYS = new Set(['tokenGeneration', 'generation', 'tokenFetches', 'tokenRequests']);

export function redact(value: unknown, depth = 0): unknown {
  if (depth > 6) return '[deep]';
  if (typeof value === 'string') return maskString(value);
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  if (value instanceof Error) return { name: value.name, message: maskString(value.message) };
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = SECRET_KEY.test(k) && !SAFE_KEYS.has(k) && v !== undefined ? '[redacted]' : redact(v, depth + 1);
    }
    return out;
  }
  return value;
}

/** Hides the credentials of a URL (everything between "//" and the last "@" before the host). */
export function redactUrl(u: string): string {
  return u.replace(/\/\/\S*@/g, '//***@');
}

function maskString(s: string): string {
  return redactUrl(s)
    .replace(/(bearer\s+)[A-Za-z0-9._~+/=-]+/gi, '$1[redacted]')
    .replace(/((?:password|access_token|refresh_token)=)[^&\s]+/gi, '$1[redacted]');
}

const redactFormat = winston.format((info) => {
  for (const key of Object.keys(info)) {
    if (key === 'level') continue;
    const v = (info as Record<string, unknown>)[key];
    (info as Record<string, unknown>)[key] = SECRET_KEY.test(key) && !SAFE_KEYS.has(key) ? '[redacted]' : redact(v);
  }
  return info;
});

/** Creates the root logger; pass `stream` to capture output (tests). */
export function createLogger(opts: { level: string; service?: string; stream?: Writable }): Logger {
  const transport = opts.stream
    ? new winston.transports.Stream({ stream: opts.stream })
    : new winston.transports.Console({ stderrLevels: [] });
  return winston.createLogger({
    level: opts.level,
    defaultMeta: { service: opts.service ?? 'pcp' },
    format: winston.format.combine(winston.format.timestamp(), redactFormat(), winston.format.json()),
    transports: [transport],
  });
}
