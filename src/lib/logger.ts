/**
 * winston JSON logger. Secrets never reach a line: keys that name a secret are replaced, and credentials
 * inside strings (Bearer/Basic values, URL passwords, `key=value` and `"key":"value"` pairs for secret keys)
 * are masked (tested by test/unit/logger and test/integration/log-secrets).
 */
import winston from 'winston';
import type { Writable } from 'node:stream';

export type Logger = winston.Logger;

const REDACTED = '[redacted]';

// Keys are compared word by word (camelCase, "-", "_", "." and spaces split words; case ignored), so
// "passed", "compass" or "tokenizer" are not secrets while "SECPLAT_PASSWORD" and "x-api-key" are.
const SECRET_WORDS = new Set([
  'password', 'passwd', 'pwd', 'pass', 'passphrase', 'secret', 'secrets', 'token', 'tokens', 'authorization',
  'cookie', 'cookies', 'credential', 'credentials', 'jwt', 'bearer', 'session', 'csrf',
  // the same names written as one word
  'apikey', 'privatekey', 'sessionid', 'accesstoken', 'refreshtoken', 'clientsecret', 'setcookie',
]);
const SECRET_PAIRS = new Set(['api key', 'private key', 'secret key', 'access key', 'signing key', 'encryption key', 'master key']);
// A key ending in one of these words describes a secret instead of holding it: tokenGeneration,
// tokenFetches and tokenRequests (the metrics we log), token_type, jwtExpiresIn, privateKeyPath. Any
// other key with a secret word is masked: failing closed costs a hidden value, failing open a leak.
const METADATA_WORDS = new Set([
  'generation', 'fetches', 'requests', 'type', 'count', 'expires', 'expiry', 'at', 'in', 'ttl', 'length',
  'policy', 'url', 'endpoint', 'name', 'path',
]);

/** "x-API-Key" → ["x", "api", "key"]; "SECPLAT_PASSWORD" → ["secplat", "password"]. */
function wordsOf(key: string): string[] {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1 $2')
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter(Boolean);
}

/** True when a key (object property, or the left side of a pair inside a string) names a secret. */
export function isSecretKey(key: string): boolean {
  const words = wordsOf(key);
  if (words.length === 0 || METADATA_WORDS.has(words[words.length - 1]!)) return false;
  return words.some((w, i) => SECRET_WORDS.has(w) || (i > 0 && SECRET_PAIRS.has(`${words[i - 1]} ${w}`)));
}

export function redact(value: unknown, depth = 0): unknown {
  if (depth > 6) return '[deep]';
  if (typeof value === 'string') return maskString(value);
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  if (value instanceof Error) return { name: value.name, message: maskString(value.message) };
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = isSecretKey(k) && v !== undefined ? REDACTED : redact(v, depth + 1);
    }
    return out;
  }
  return value;
}

/** Hides the credentials of a URL (everything between "//" and the last "@" before the host). */
export function redactUrl(u: string): string {
  return u.replace(/\/\/\S*@/g, '//***@');
}

// "Basic <base64 of user:password>" (RFC 7617). A plain word after "basic" is prose ("basic auth failed")
// unless it decodes to user:password.
const BASIC = /\b(basic\s+)([A-Za-z0-9+/]+={0,2})(?![A-Za-z0-9+/=])/gi;
function maskBasic(match: string, prefix: string, credential: string): string {
  const word = /^[A-Za-z][a-z]*$/.test(credential);
  return word && !Buffer.from(credential, 'base64').toString('latin1').includes(':') ? match : `${prefix}${REDACTED}`;
}

// The left side of a pair: a key, bare or quoted ("k", 'k', or \"k\" inside an escaped JSON string), then
// ":" or "=". A dotted name counts by its last segment (db.password). Keys are at most 128 characters and
// start after a non-word character, so scanning stays linear.
const PAIR_KEY = /(\\?["']?)(?<![\w-])([A-Za-z][\w-]{0,127})\1\s*([:=])\s*/g;
// The right side: a quoted value (to its closing quote, or to the end when unterminated, which masks more,
// never less) or, after "=", a bare value. Groups 1-3 hold the closing quote. A bare value ends at
// whitespace, "&" or a quote; "," ";" ")" "}" "]" end it only before whitespace, a quote or the end, so
// "k=v; next" keeps its separator while a password such as "p,w;d" is masked whole.
const QUOTED_VALUE = /\\"(?:(?!\\")[\s\S])*(\\")?|"(?:[^"\\]|\\[\s\S])*(")?|'(?:[^'\\]|\\[\s\S])*(')?/y;
const BARE_VALUE = /(?:[^\s&"'\\,;)}\]]|\\(?!["'])|[,;)}\]](?![\s"'&,;)}\]]|$))+/y;

/** Masks the values of secret keys in `key=value`, `"key":"value"` and `key: 'value'` pairs. */
function maskPairs(s: string): string {
  let out = '';
  let done = 0;
  PAIR_KEY.lastIndex = 0;
  for (let key = PAIR_KEY.exec(s); key; key = PAIR_KEY.exec(s)) {
    const at = PAIR_KEY.lastIndex;
    if (!isSecretKey(key[2]!) || s.startsWith(REDACTED, at)) continue;
    QUOTED_VALUE.lastIndex = at;
    const quoted = QUOTED_VALUE.exec(s);
    let masked: string | undefined;
    let length = 0;
    if (quoted) {
      const open = quoted[0].startsWith('\\') ? '\\"' : quoted[0][0]!;
      masked = open + REDACTED + (quoted[1] ?? quoted[2] ?? quoted[3] ?? '');
      length = quoted[0].length;
    } else if (key[3] === '=') {
      // After ":" only quoted values count: "Authorization: Bearer x" is a header line whose value the
      // Bearer rule has already masked, and "token: refreshed" is prose.
      BARE_VALUE.lastIndex = at;
      length = BARE_VALUE.exec(s)?.[0].length ?? 0;
      if (length > 0) masked = REDACTED;
    }
    if (masked === undefined) continue;
    out += s.slice(done, at) + masked;
    done = at + length;
    PAIR_KEY.lastIndex = done;
  }
  return out + s.slice(done);
}

function maskString(s: string): string {
  return maskPairs(redactUrl(s)
    .replace(/(bearer\s+)[A-Za-z0-9._~+/=-]+/gi, `$1${REDACTED}`)
    .replace(BASIC, maskBasic));
}

const redactFormat = winston.format((info) => {
  for (const key of Object.keys(info)) {
    if (key === 'level') continue;
    const v = (info as Record<string, unknown>)[key];
    (info as Record<string, unknown>)[key] = isSecretKey(key) ? REDACTED : redact(v);
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
