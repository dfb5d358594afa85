/**
 * Webhook message bodies for one grouped alarm message: a generic JSON document, Slack (incoming webhook,
 * mrkdwn), WeCom group robot (markdown) and DingTalk custom robot (markdown). Pure functions: the sender
 * gathers the facts (NotificationView), this module only renders them.
 */
import type { AlarmState, NotificationEvent } from '../store/alarm-lifecycle.js';
import type { StatusCounts } from '../store/ledger.js';

export const WEBHOOK_FORMATS = ['json', 'slack', 'wecom', 'dingtalk'] as const;
export type WebhookFormat = (typeof WEBHOOK_FORMATS)[number];

/** Failing domains listed per alarm; the rest are counted. */
export const DOMAINS_LISTED = 20;

/** One alarm event as the receiver sees it. */
export interface EventView {
  notificationId: number;
  event: NotificationEvent;
  at: Date;
  alarmId: number;
  alarmType: string;
  messageId: string | null;
  /** The alarm's state when the message was sent (an 'opened' event may have been resolved since). */
  state: AlarmState;
  content: string;
  occurrences: number;
  raisedAt: Date;
  lastSeenAt: Date;
  resolvedAt: Date | null;
  resolvedBy: string | null;
  resolveNote: string | null;
  /** The batch's failing domains (failed, unknown_domain, unsupported, retryable), first DOMAINS_LISTED by name. */
  failingDomains: string[];
  failingTotal: number;
  counts: StatusCounts | null;
  /** How to re-run the batch's failed domains, when a replay can help. */
  replayCommand: string | null;
  /** `<PUBLIC_BASE_URL>/console/batches/<messageId>` when PUBLIC_BASE_URL is set. */
  consoleUrl: string | null;
}

export interface NotificationView {
  /** The message's idempotency key (also sent as the Idempotency-Key header). */
  key: string;
  alarmType: string;
  events: EventView[];
}

/** The command that re-runs a batch's failed domains. */
export function replayCommand(messageId: string): string {
  return `npm run replay -- ${messageId} --reason "..."`;
}

/** The console page of a batch, or null without PUBLIC_BASE_URL. */
export function consoleUrl(publicBaseUrl: string, messageId: string): string | null {
  return publicBaseUrl ? `${publicBaseUrl.replace(/\/+$/, '')}/console/batches/${encodeURIComponent(messageId)}` : null;
}

// What a new alarm of each type means, counted: "3 batches failed".
const OPENED_PHRASE: Record<string, [string, string]> = {
  BATCH_FAILURES: ['batch failed', 'batches failed'],
  JOB_PARKED: ['job parked', 'jobs parked'],
  UNSUPPORTED_REQ_TYPE: ['callback with an unsupported reqType', 'callbacks with an unsupported reqType'],
  TOKEN_REJECTED: ['batch kept getting 401 with fresh tokens', 'batches kept getting 401 with fresh tokens'],
  BAD_CREDENTIALS: ['token fetch refused: credentials rejected', 'token fetches refused: credentials rejected'],
  TOKEN_CONTENTION: ['token taken by another client', 'token contention alarms'],
  TOKEN_BUDGET: ['token fetch budget alarm', 'token fetch budget alarms'],
  AWAITING_PIPELINE: ['batch still waiting for the pipeline', 'batches still waiting for the pipeline'],
};

/** "pcp alarm: 3 batches failed, 1 resolved (BATCH_FAILURES)" — names the word "alarm" for keyword-filtered robots. */
export function summaryLine(view: NotificationView): string {
  const opened = view.events.filter((e) => e.event === 'opened').length;
  const resolved = view.events.length - opened;
  const [one, many] = OPENED_PHRASE[view.alarmType] ?? ['alarm opened', 'alarms opened'];
  const parts: string[] = [];
  if (opened > 0) parts.push(`${opened} ${opened === 1 ? one : many}`);
  if (resolved > 0) parts.push(`${resolved} resolved`);
  return `pcp alarm: ${parts.join(', ')} (${view.alarmType})`;
}

/** The markup of one chat flavour. */
interface Markup {
  /** Text from callers or the platform, made inert. */
  text(s: string): string;
  bold(s: string): string;
  code(s: string): string;
  link(url: string, label: string): string;
  bullet: string;
}

// Control characters never reach a chat (they can hide or reorder text); line breaks inside a value too.
const CONTROL = /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069]+/gu;
const clean = (s: string) => s.replace(CONTROL, ' ');
const short = (s: string, max: number) => (s.length > max ? `${s.slice(0, max)}…` : s);

// https://api.slack.com/reference/surfaces/formatting#escaping: only &, < and > are control characters.
const slackEscape = (s: string) => clean(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const SLACK: Markup = {
  text: slackEscape,
  bold: (s) => `*${s}*`,
  code: (s) => `\`${slackEscape(s).replace(/`/g, "'")}\``,
  link: (url, label) => `<${url.replace(/[<>|]/g, encodeURIComponent)}|${slackEscape(label)}>`,
  bullet: '•',
};
// WeCom and DingTalk render a markdown subset without a reliable escape character: caller text goes
// inside code spans, or loses the characters that would start a link, a code span or an HTML-like tag
// (WeCom's <font>). Emphasis characters stay: identifiers such as SELF_DOMAIN_ADD must read as written.
const MARKDOWN_INERT: Record<string, string> = { '[': '(', ']': ')', '<': '‹', '>': '›', '`': "'" };
const MARKDOWN: Markup = {
  text: (s) => clean(s).replace(/[[\]<>`]/g, (c) => MARKDOWN_INERT[c]!),
  bold: (s) => `**${s}**`,
  code: (s) => `\`${clean(s).replace(/`/g, "'")}\``,
  link: (url, label) => `[${label.replace(/[[\]]/g, '')}](${url.replace(/[()\s]/g, encodeURIComponent)})`,
  bullet: '-',
};
const PLAIN: Markup = { text: clean, bold: (s) => s, code: clean, link: (url, label) => `${label}: ${url}`, bullet: '-' };

/** The lines about one event. */
function eventBlock(e: EventView, m: Markup): string {
  const id = e.messageId ? ` ${m.code(e.messageId)}` : '';
  if (e.event === 'resolved') {
    const note = e.resolveNote ? `: ${m.text(short(e.resolveNote, 300))}` : '';
    return `${m.bullet} ${m.bold('resolved')} #${e.alarmId}${id} by ${m.text(e.resolvedBy ?? 'unknown')}${note}`;
  }
  const lines = [`${m.bullet} ${m.bold('opened')} #${e.alarmId}${id}${e.occurrences > 1 ? ` (seen ${e.occurrences}×)` : ''}${e.state !== 'open' ? ` [now ${e.state}]` : ''}: ${m.text(short(e.content, 300))}`];
  if (e.failingTotal > 0) {
    const rest = e.failingTotal - e.failingDomains.length;
    lines.push(`  failing domains (${e.failingTotal}): ${e.failingDomains.map((d) => m.code(d)).join(', ')}${rest > 0 ? ` and ${rest} more` : ''}`);
  }
  if (e.replayCommand) lines.push(`  replay: ${m.code(e.replayCommand)}`);
  if (e.consoleUrl) lines.push(`  ${m.link(e.consoleUrl, 'open in the console')}`);
  return lines.join('\n');
}

/** UTF-8 safe cut to at most `max` bytes. */
function cutBytes(s: string, max: number): string {
  if (Buffer.byteLength(s) <= max) return s;
  let out = Buffer.from(s).subarray(0, max - 3).toString('utf8');
  if (out.endsWith('\ufffd')) out = out.slice(0, -1);
  return `${out}…`;
}

/**
 * The message text: a summary line, then one block per event while they fit in `maxBytes` (WeCom refuses
 * markdown over 4096 bytes), then a count of the events left out.
 */
function messageText(view: NotificationView, m: Markup, maxBytes: number): string {
  const head = m.bold(m.text(summaryLine(view)));
  let text = head;
  let shown = 0;
  for (const e of view.events) {
    const next = `${text}\n${eventBlock(e, m)}`;
    // Leave room for the "and N more" line.
    if (shown > 0 && Buffer.byteLength(next) > maxBytes - 200) break;
    text = next;
    shown++;
  }
  const left = view.events.length - shown;
  if (left > 0) {
    const ids = view.events.slice(shown).map((e) => `#${e.alarmId}`).join(' ');
    text += `\n${cutBytes(`… and ${left} more alarm event(s): ${ids}`, 180)} (npm run alarms -- --state all)`;
  }
  return cutBytes(text, maxBytes);
}

// Chat texts stay well under WeCom's 4096-byte markdown limit; Slack and DingTalk accept more, but an alarm
// flood is better read as a summary plus `npm run alarms` than as a wall of text.
const CHAT_MAX_BYTES = 3800;

/** The JSON body for the configured format. */
export function renderBody(format: WebhookFormat, view: NotificationView): Record<string, unknown> {
  switch (format) {
    case 'slack':
      return { text: messageText(view, SLACK, CHAT_MAX_BYTES) };
    case 'wecom':
      return { msgtype: 'markdown', markdown: { content: messageText(view, MARKDOWN, CHAT_MAX_BYTES) } };
    case 'dingtalk':
      // DingTalk shows `title` in the conversation list and `text` in the chat.
      return { msgtype: 'markdown', markdown: { title: clean(summaryLine(view)), text: messageText(view, MARKDOWN, CHAT_MAX_BYTES) } };
    case 'json':
      return {
        source: 'pipeline-callback-processor',
        key: view.key,
        alarmType: view.alarmType,
        summary: summaryLine(view),
        text: messageText(view, PLAIN, 64 * 1024),
        events: view.events.map((e) => ({
          notificationId: e.notificationId, event: e.event, at: e.at.toISOString(), alarmId: e.alarmId, type: e.alarmType,
          messageId: e.messageId, state: e.state, content: e.content, occurrences: e.occurrences,
          raisedAt: e.raisedAt.toISOString(), lastSeenAt: e.lastSeenAt.toISOString(),
          resolvedAt: e.resolvedAt?.toISOString() ?? null, resolvedBy: e.resolvedBy, resolveNote: e.resolveNote,
          failingDomains: e.failingDomains, failingTotal: e.failingTotal, counts: e.counts,
          replayCommand: e.replayCommand, consoleUrl: e.consoleUrl,
        })),
      };
  }
}

/**
 * Whether a 2xx answer confirms the message. WeCom and DingTalk answer HTTP 200 even when they refuse a
 * message (too long, rate limited: `{"errcode":45009,…}`); only errcode 0 means it was posted.
 */
export function confirmsDelivery(format: WebhookFormat, body: string): { ok: true } | { ok: false; reason: string } {
  if (format !== 'wecom' && format !== 'dingtalk') return { ok: true };
  try {
    const parsed = JSON.parse(body) as { errcode?: unknown; errmsg?: unknown };
    if (parsed.errcode === 0) return { ok: true };
    return { ok: false, reason: `errcode ${String(parsed.errcode)}: ${clean(String(parsed.errmsg ?? '')).slice(0, 200)}` };
  } catch {
    return { ok: false, reason: `answer is not the robot's JSON: ${clean(body).slice(0, 100)}` };
  }
}
