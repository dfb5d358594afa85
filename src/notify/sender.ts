/**
 * The alarm notification sender. Every service process runs one (like the relay) when ALARM_WEBHOOK_URL is
 * set. Each pass, for every alarm type with undelivered outbox rows: group the type's new rows into its next
 * message when the grouping window allows, then send the type's due message, holding the type's lock, with
 * a timeout and `Idempotency-Key: <delivery_key>`; delivered only on a confirmed answer, otherwise retried
 * with exponential backoff. See src/store/alarm-lifecycle.ts for the outbox and its locking.
 */
import { randomUUID } from 'node:crypto';
import type { Config } from '../config.js';
import type { Logger } from '../lib/logger.js';
import { redactUrl } from '../lib/logger.js';
import {
  failingDomainsOf, groupNotifications, undeliveredTypes, withDueMessage, type DeliveryOutcome, type OutboxMessage,
} from '../store/alarm-lifecycle.js';
import type { Db, Queryable } from '../store/db.js';
import { countByStatus } from '../store/ledger.js';
import {
  DOMAINS_LISTED, confirmsDelivery, consoleUrl, renderBody, replayCommand, type EventView, type NotificationView, type WebhookFormat,
} from './format.js';

export interface AlarmNotifierOptions {
  url: string;
  format: WebhookFormat;
  publicBaseUrl: string;
  timeoutMs: number;
  groupMs: number;
  intervalMs: number;
  backoffMs: number;
  backoffMaxMs: number;
}

/** Most alarm events in one message; a bigger flood continues in the next message of the type. */
export const MAX_EVENTS_PER_MESSAGE = 200;

export function notifierOptions(config: Pick<Config, 'alarmWebhookUrl' | 'alarmWebhookFormat' | 'publicBaseUrl' | 'alarmWebhookTimeoutMs'
  | 'alarmNotifyGroupMs' | 'alarmNotifyIntervalMs' | 'alarmNotifyBackoffMs' | 'alarmNotifyBackoffMaxMs'>): AlarmNotifierOptions {
  return {
    url: config.alarmWebhookUrl, format: config.alarmWebhookFormat, publicBaseUrl: config.publicBaseUrl,
    timeoutMs: config.alarmWebhookTimeoutMs, groupMs: config.alarmNotifyGroupMs, intervalMs: config.alarmNotifyIntervalMs,
    backoffMs: config.alarmNotifyBackoffMs, backoffMaxMs: config.alarmNotifyBackoffMaxMs,
  };
}

/**
 * How the webhook is named in logs: scheme and host only. Robot webhooks carry their secret in the path
 * (Slack) or the query (WeCom key=, DingTalk access_token=), and a URL may carry user:password.
 */
export function describeWebhook(url: string): string {
  const u = new URL(url);
  return redactUrl(`${u.protocol}//${u.host}${u.pathname.length > 1 || u.search ? '/…' : ''}`);
}

interface Target {
  url: string;
  authorization: string | undefined;
  display: string;
  /** Parts of the URL a receiver might echo back into an error body; never stored in last_error. */
  secrets: string[];
}

function target(url: string): Target {
  const u = new URL(url);
  // fetch refuses URLs with credentials; send them as Basic auth instead.
  const authorization = u.username || u.password
    ? `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}` : undefined;
  const secrets = [u.username, u.password, u.pathname.length > 1 ? u.pathname : '', u.search.slice(1), ...[...u.searchParams.values()]]
    .filter((s) => s.length >= 4).sort((a, b) => b.length - a.length);
  u.username = '';
  u.password = '';
  return { url: u.toString(), authorization, display: describeWebhook(url), secrets };
}

export interface AlarmNotifier {
  /** One pass over every alarm type; resolves to the number of messages the receiver confirmed. */
  runOnce(): Promise<number>;
}

/** A sender without a timer: tests drive it with runOnce(). */
export function createAlarmNotifier(deps: { db: Db; logger: Logger }, opts: AlarmNotifierOptions): AlarmNotifier {
  const to = target(opts.url);
  const log = deps.logger.child({ webhook: to.display, format: opts.format });
  // PostgreSQL ends a session idle in the send transaction for longer than this: the request's own timeout
  // plus room for the reads around it. A process that hangs mid-send cannot keep its type locked forever.
  const holdMs = opts.timeoutMs + 15_000;

  const scrub = (text: string) => to.secrets.reduce((t, s) => t.split(s).join('***'), text);

  async function post(message: OutboxMessage, client: Queryable): Promise<DeliveryOutcome> {
    const body = renderBody(opts.format, await view(client, message, opts.publicBaseUrl));
    const retryIn = (minMs = 0) => Math.min(opts.backoffMaxMs, Math.max(minMs, opts.backoffMs * 2 ** Math.min(message.attempts, 30)));
    let res: Response;
    let text: string;
    // One deadline for the whole exchange, answer included: a receiver that trickles bytes is cut too.
    const signal = AbortSignal.timeout(opts.timeoutMs);
    try {
      res = await fetch(to.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json; charset=utf-8',
          'idempotency-key': message.key,
          'user-agent': 'pipeline-callback-processor',
          ...(to.authorization ? { authorization: to.authorization } : {}),
        },
        body: JSON.stringify(body),
        redirect: 'manual',
        signal,
      });
      text = await readBounded(res, MAX_REPLY_BYTES);
    } catch (err) {
      return { delivered: false, error: scrub(describeError(err, opts.timeoutMs)), retryInMs: retryIn() };
    }
    if (res.status < 200 || res.status > 299) {
      return { delivered: false, error: scrub(`HTTP ${res.status}${text ? `: ${text.replace(/\s+/g, ' ').slice(0, 200)}` : ''}`), retryInMs: retryIn(retryAfterMs(res)) };
    }
    const confirmed = confirmsDelivery(opts.format, text);
    if (!confirmed.ok) return { delivered: false, error: scrub(`HTTP ${res.status} but not posted: ${confirmed.reason}`), retryInMs: retryIn() };
    return { delivered: true };
  }

  async function runType(alarmType: string): Promise<boolean> {
    await groupNotifications(deps.db, alarmType, { key: randomUUID(), windowMs: opts.groupMs, maxEvents: MAX_EVENTS_PER_MESSAGE });
    const done = await withDueMessage(deps.db, alarmType, { holdMs }, post);
    if (!done) return false;
    const { message, outcome } = done;
    const meta = { key: message.key, alarmType, events: message.events.length, attempt: message.attempts + 1 };
    if (outcome.delivered) {
      log.info('alarm notification delivered', meta);
      return true;
    }
    log.warn('alarm notification not confirmed; will retry with the same key', { ...meta, err: outcome.error, retryInMs: outcome.retryInMs });
    return false;
  }

  return {
    async runOnce() {
      let delivered = 0;
      for (const alarmType of await undeliveredTypes(deps.db)) {
        if (await runType(alarmType)) delivered++;
      }
      return delivered;
    },
  };
}

/**
 * Starts the sender: a pass every `intervalMs`. stop() lets a send in flight finish (bounded by its
 * timeout) so that a confirmed message is recorded as delivered rather than sent again by the next process.
 */
export function startAlarmNotifier(deps: { db: Db; logger: Logger }, opts: AlarmNotifierOptions): AlarmNotifier & { stop(): Promise<void> } {
  const notifier = createAlarmNotifier(deps, opts);
  let running: Promise<number> | undefined;
  let stopped = false;
  const tick = async () => {
    if (stopped || running) return;
    running = notifier.runOnce();
    try {
      await running;
    } catch (err) {
      deps.logger.warn('alarm notification pass failed; will try again', { err: (err as Error).message });
    } finally {
      running = undefined;
    }
  };
  const timer = setInterval(() => void tick(), opts.intervalMs);
  timer.unref();
  return {
    runOnce: notifier.runOnce,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running?.catch(() => undefined);
    },
  };
}

/** Gathers what each event needs: the alarm row (read with the message), the batch's failing domains and counts. */
async function view(db: Queryable, message: OutboxMessage, publicBaseUrl: string): Promise<NotificationView> {
  const ids = [...new Set(message.events.flatMap((e) => (e.alarm.messageId ? [e.alarm.messageId] : [])))];
  const failing = await failingDomainsOf(db, ids, DOMAINS_LISTED);
  const counts = await countByStatus(db, ids);
  const events = message.events.map((e): EventView => {
    const a = e.alarm;
    const c = a.messageId ? counts.get(a.messageId) ?? null : null;
    const known = c !== null && Object.values(c).some((n) => n > 0);
    const f = a.messageId ? failing.get(a.messageId) : undefined;
    return {
      notificationId: e.notificationId, event: e.event, at: e.at, alarmId: a.id, alarmType: a.alarmType, messageId: a.messageId,
      state: a.state, content: a.content, occurrences: a.occurrences, raisedAt: a.createdAt, lastSeenAt: a.lastSeenAt,
      resolvedAt: a.resolvedAt, resolvedBy: a.resolvedBy, resolveNote: a.resolveNote,
      failingDomains: f?.domains ?? [], failingTotal: f?.total ?? 0, counts: known ? c : null,
      // A replay re-opens failed and retryable domains; it never touches unsupported items.
      replayCommand: e.event === 'opened' && a.messageId && known && a.alarmType !== 'UNSUPPORTED_REQ_TYPE' ? replayCommand(a.messageId) : null,
      consoleUrl: a.messageId ? consoleUrl(publicBaseUrl, a.messageId) : null,
    };
  });
  return { key: message.key, alarmType: message.alarmType, events };
}

/** One line for last_error and the log: never the URL (fetch errors do not carry it; be sure anyway). */
function describeError(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return `no answer within ${timeoutMs} ms`;
  const cause = e.cause?.code ?? e.cause?.message;
  return cause ? `${e.message ?? 'request failed'}: ${cause}` : (e.message ?? String(err));
}

/** Retry-After in seconds or as an HTTP date (429 and 503 from robots and proxies). */
function retryAfterMs(res: Response): number {
  const v = res.headers.get('retry-after');
  if (!v) return 0;
  const seconds = Number(v);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(v);
  return Number.isNaN(at) ? 0 : Math.max(0, at - Date.now());
}

/** A receiver's reply is only looked at for a short status; a huge or endless one is cut, never buffered whole. */
const MAX_REPLY_BYTES = 64 * 1024;

async function readBounded(res: Response, maxBytes: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
      if (size >= maxBytes) break;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(chunks).subarray(0, maxBytes).toString('utf8');
}
