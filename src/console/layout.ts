/**
 * The page frame every console page shares (header with the search box, the signed-in user and role) and
 * the small formatting helpers the pages use (times, status pills, counts).
 */
import { html, type Html, type HtmlValue } from './html.js';

/** Who is looking, as the auth middleware left it in res.locals. */
export interface Viewer {
  name: string;
  role: 'viewer' | 'operator';
  via: string;
  /** Present for session users: sent back in X-CSRF-Token by console.js. */
  csrfToken?: string;
}

export type NavKey = 'overview' | 'alarms' | 'replays' | 'audit' | 'find' | 'none';

export interface PageOptions {
  title: string;
  viewer: Viewer;
  nav: NavKey;
  /** Names the page for console.js (`data-page` on body), e.g. "batch". */
  page: string;
  /** Pre-filled search box (what was searched). */
  query?: string;
  assetVersion: string;
}

const NAV: [Exclude<NavKey, 'find' | 'none'>, string, string][] = [
  ['overview', 'Overview', '/console'],
  ['alarms', 'Alarms', '/console/alarms'],
  ['replays', 'Bulk replay', '/console/replays'],
  ['audit', 'Audit', '/console/audit'],
];

/** A whole console page around `body`. */
export function layout(opts: PageOptions, body: Html): Html {
  const v = opts.assetVersion;
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${opts.viewer.csrfToken ? html`<meta name="csrf-token" content="${opts.viewer.csrfToken}">` : ''}
<meta name="role" content="${opts.viewer.role}">
<title>${opts.title} · PCP console</title>
<link rel="icon" href="/console/assets/favicon.svg?v=${v}" type="image/svg+xml">
<link rel="stylesheet" href="/console/assets/console.css?v=${v}">
<script src="/console/assets/console.js?v=${v}" defer></script>
</head>
<body data-page="${opts.page}">
<header class="topbar">
  <a class="brand" href="/console"><span class="brand-mark"></span>PCP console</a>
  <nav class="nav" aria-label="Main">
    ${NAV.map(([key, label, href]) => html`<a href="${href}"${opts.nav === key ? html` class="active" aria-current="page"` : ''}>${label}</a>`)}
  </nav>
  <form class="search" action="/console/find" method="get" role="search">
    <input type="search" name="q" value="${opts.query ?? ''}" data-search autocomplete="off" spellcheck="false"
      aria-label="Find a messageId or a domain" placeholder="messageId or domain (or paste a list)">
    <button type="submit">Find</button>
  </form>
  <div class="user" data-user="${opts.viewer.name}">
    <span class="name">${opts.viewer.name}</span>
    <span class="st ${opts.viewer.role === 'operator' ? 'st-in_progress' : 'st-pending'}" data-role>${opts.viewer.role}</span>
    ${opts.viewer.via !== 'bearer'
      ? html`<form method="post" action="/console/logout"><input type="hidden" name="_csrf" value="${opts.viewer.csrfToken ?? ''}"><button type="submit">Sign out</button></form>`
      : html`<span class="faint" title="signed in with a bearer token">(${opts.viewer.via})</span>`}
  </div>
</header>
<main>
${body}
</main>
</body>
</html>
`;
}

/** What the time inputs take (their `pattern`): a date, or a date and time (UTC), as a person types it. */
export const TIME_PATTERN = String.raw`\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?`;

/**
 * A UTC timestamp with the full ISO value as its title; "—" for none. `short` drops the year (dense
 * tables, where every row is recent and the title still has it all).
 */
export function time(value: Date | string | null | undefined, opts: { short?: boolean } = {}): Html {
  if (value === null || value === undefined) return html`<span class="faint">—</span>`;
  const d = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(d.getTime())) return html`${String(value)}`;
  const iso = d.toISOString();
  return html`<time class="nowrap" datetime="${iso}" title="${iso}">${iso.slice(opts.short ? 5 : 0, 19).replace('T', ' ')}Z</time>`;
}

/** "3 s", "4 min", "2 h", "5 d". */
export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  const s = Math.round(ms / 1000);
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86_400)} d`;
}

/** A status pill; the class names the status so every status has its own colour. */
export function pill(status: string, label: HtmlValue = status): Html {
  return html`<span class="st st-${status.replace(/[^a-z_]/gi, '')}" data-status="${status}">${label}</span>`;
}

/** Counts by status as pills, zeros left out, in the order given. */
export function countPills(counts: Record<string, number> | undefined | null, order: readonly string[]): Html {
  if (!counts) return html`<span class="faint">—</span>`;
  const shown = order.filter((s) => (counts[s] ?? 0) > 0);
  if (shown.length === 0) return html`<span class="faint">none</span>`;
  return html`<span class="counts">${shown.map((s) => pill(s, html`${counts[s]} ${s.replace('_', ' ')}`))}</span>`;
}

/** A messageId, monospace, linked to its batch page. */
export function batchLink(messageId: string): Html {
  return html`<a class="mono" href="/console/batches/${encodeURIComponent(messageId)}">${messageId}</a>`;
}

export function domainLink(domain: string): Html {
  return html`<a class="mono" href="/console/domains/${encodeURIComponent(domain)}">${domain}</a>`;
}

/** The small error page (unknown batch, bad input, refused). */
export function errorBody(status: number, title: string, message: string): Html {
  return html`<div class="page-head"><div><div class="crumbs">Error ${status}</div><h1>${title}</h1></div></div>
<div class="panel"><p>${message}</p><p class="muted">Search again with the box above, or go back to the <a href="/console">overview</a>.</p></div>`;
}
