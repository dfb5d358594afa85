/**
 * Validation of the vendor's callback body. Pure: no I/O, so every bad-input case is a unit test.
 */
import { ValidationError } from '../lib/errors.js';
import type { IncomingItem } from '../store/ledger.js';

export const MESSAGE_ID = /^[A-Za-z0-9_-]{1,128}$/;
export const SUPPORTED_REQ_TYPES = new Set(['SELF_DOMAIN_DELETE']);
/** The vendor's reqType vocabulary is upper-case identifiers; an unknown but well-formed one is kept as unsupported. */
export const REQ_TYPE = /^[A-Z][A-Z0-9_]{0,63}$/;

/** An item as the vendor sent it; percent and process are null when absent (absent means finished). */
export type CallbackItem = IncomingItem & { percent: number | null; process: boolean | null };

export interface CallbackInput { messageId: string; items: CallbackItem[] }

/** A ValidationError that still knows the messageId, so the error reply can echo it to the vendor. */
export class CallbackRejectedError extends ValidationError {
  constructor(message: string, readonly messageId: string | null, status = 400) { super(message, status); }
}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const MAX_DEPTH = 16;

/** Iterative (so a hostile body cannot overflow the stack while being measured). */
function depthExceeds(root: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[root, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (!v || typeof v !== 'object') continue;
    if (d > limit) return true;
    for (const child of Object.values(v)) if (child && typeof child === 'object') stack.push([child, d + 1]);
  }
  return false;
}

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
// In a /u regex a well-formed pair is one code point, so this matches only a surrogate without its partner.
const LONE_SURROGATE = /\p{Cs}/u;

/** `data[3].reqType`, `meta["odd key"]`: a JavaScript-style path the vendor can find in its own payload. */
function childPath(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  if (IDENTIFIER.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent}[${JSON.stringify(key.length > 40 ? `${key.slice(0, 40)}…` : key)}]`;
}

function unstorable(s: string): string | null {
  if (s.includes('\u0000')) return 'contains a NUL character';
  if (LONE_SURROGATE.test(s)) return 'contains an unpaired UTF-16 surrogate (not valid Unicode)';
  return null;
}

/** Where a value sits in the body: its parent and its key there (the root has neither). */
interface Place { parent?: Place; key?: string | number }

/** `data[3].reqType`: built only for the one place that is reported (recursion bounded by MAX_DEPTH, checked first). */
function pathOf(place: Place): string {
  return place.parent ? childPath(pathOf(place.parent), place.key!) : '';
}

/**
 * The first string, field name or value, anywhere in the body that PostgreSQL text/jsonb cannot hold (the
 * audit row stores the whole body, so an unknown extra field counts too). Storing it would fail with a
 * 500 that the vendor retries for ever; naming it gives a 400 instead. Iterative, in document order.
 */
function findUnstorable(root: unknown): string | null {
  const stack: { value: unknown; place: Place }[] = [{ value: root, place: {} }];
  while (stack.length > 0) {
    const { value, place } = stack.pop()!;
    const keyProblem = typeof place.key === 'string' ? unstorable(place.key) : null;
    if (keyProblem) return `${pathOf(place)} ${keyProblem}`;
    if (typeof value === 'string') {
      const problem = unstorable(value);
      if (problem) return `${pathOf(place)} ${problem}`;
    } else if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push({ value: value[i], place: { parent: place, key: i } });
    } else if (value && typeof value === 'object') {
      const entries = Object.entries(value);
      for (let i = entries.length - 1; i >= 0; i--) {
        const [k, v] = entries[i]!;
        stack.push({ value: v, place: { parent: place, key: k } });
      }
    }
  }
  return null;
}

/** Lower-cased hostname without a trailing dot, or null when it is not a valid DNS name (a leading "*." is allowed). */
export function normalizeHostname(raw: unknown): string | null {
  if (typeof raw !== 'string') return null;
  let h = raw.trim().toLowerCase();
  if (h.endsWith('.')) h = h.slice(0, -1);
  if (h.length === 0 || h.length > 253) return null;
  const labels = h.split('.');
  if (labels.length < 2) return null;
  for (let i = 0; i < labels.length; i++) if (!(i === 0 && labels[0] === '*') && !LABEL.test(labels[i]!)) return null;
  if (/^\d+$/.test(labels[labels.length - 1]!)) return null; // an IP address is not a domain
  return h;
}

/** Checks the body and returns the batch to store; domains repeated in one callback count once. */
export function parseCallback(body: unknown, maxItems: number): CallbackInput {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new CallbackRejectedError('body must be a JSON object', null);
  // The vendor's payload is 3 levels deep; a much deeper one is hostile and would overflow the stack later.
  if (depthExceeds(body, MAX_DEPTH)) throw new CallbackRejectedError(`body is nested deeper than ${MAX_DEPTH} levels`, null);
  const b = body as Record<string, unknown>;
  const rawId = b.messageId;
  const unstorableAt = findUnstorable(body);
  if (unstorableAt) throw new CallbackRejectedError(unstorableAt, typeof rawId === 'string' && MESSAGE_ID.test(rawId) ? rawId : null);
  if (rawId === undefined || rawId === null || rawId === '') throw new CallbackRejectedError('messageId is missing', null);
  if (typeof rawId !== 'string' || !MESSAGE_ID.test(rawId)) {
    throw new CallbackRejectedError('messageId must be 1 to 128 characters of A-Z, a-z, 0-9, _ or -', null);
  }
  const messageId = rawId;
  const reject = (msg: string) => new CallbackRejectedError(msg, messageId);
  if (!Array.isArray(b.data)) throw reject('data must be an array of domain items');
  if (b.data.length === 0) throw reject('data is empty');
  if (b.data.length > maxItems) throw reject(`data holds ${b.data.length} items; at most ${maxItems} are accepted per callback`);

  const items = new Map<string, CallbackItem>();
  b.data.forEach((raw, i) => {
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw reject(`data[${i}] must be an object`);
    const item = raw as Record<string, unknown>;
    const domain = normalizeHostname(item.targetName);
    if (!domain) {
      const shown = typeof item.targetName === 'string' ? JSON.stringify(item.targetName.slice(0, 80)) : `(${item.targetName === null ? 'null' : typeof item.targetName})`;
      throw reject(`data[${i}].targetName ${shown} is not a valid hostname`);
    }
    if (typeof item.reqType !== 'string' || !REQ_TYPE.test(item.reqType)) {
      throw reject(`data[${i}].reqType must be 1 to 64 characters of A-Z, 0-9 or _, starting with a letter`);
    }
    const percent = parsePercent(item, i, reject);
    const inProcess = parseProcess(item, i, reject);
    const seen = items.get(domain);
    if (!seen) {
      items.set(domain, { domain, reqType: item.reqType, supported: SUPPORTED_REQ_TYPES.has(item.reqType), percent, process: inProcess });
    } else {
      // A domain listed twice counts once; if either entry says the pipeline is not done, it is not done.
      seen.percent = seen.percent === null ? percent : percent === null ? seen.percent : Math.min(seen.percent, percent);
      seen.process = seen.process === null ? inProcess : inProcess === null ? seen.process : seen.process || inProcess;
    }
  });
  return { messageId, items: [...items.values()] };
}

/** How a refused value is shown in the reason: JSON text, bounded (Infinity is what `1e400` parses to). */
function shown(v: unknown): string {
  if (typeof v === 'number' && !Number.isFinite(v)) return String(v);
  return String(JSON.stringify(v)).slice(0, 40);
}

/**
 * `percent`: absent means finished; otherwise a finite JSON number from 0 to 1. Strict on purpose: "1.0"
 * or 100 ("100 %", or a mistake?) read the wrong way would delete a domain the pipeline is still working on.
 */
function parsePercent(item: Record<string, unknown>, i: number, reject: (msg: string) => Error): number | null {
  if (!Object.hasOwn(item, 'percent')) return null;
  const v = item.percent;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1) {
    throw reject(`data[${i}].percent must be a JSON number from 0 to 1 (1 = finished), not ${shown(v)}`);
  }
  return v;
}

/** `process`: absent means finished; otherwise a JSON boolean (true = the pipeline is still working on it). */
function parseProcess(item: Record<string, unknown>, i: number, reject: (msg: string) => Error): boolean | null {
  if (!Object.hasOwn(item, 'process')) return null;
  const v = item.process;
  if (typeof v !== 'boolean') throw reject(`data[${i}].process must be a JSON boolean (true or false), not ${shown(v)}`);
  return v;
}
