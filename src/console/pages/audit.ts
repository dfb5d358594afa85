/** Every change an operator made: replays, bulk replays, acknowledgements and resolutions, newest first. */
import type { AuditRow } from '../../store/audit.js';
import { html, type Html } from '../html.js';
import { batchLink, domainLink, pill, time } from '../layout.js';

const ACTION_LABEL: Record<string, string> = {
  replay: 'Replay',
  bulk_replay_start: 'Bulk replay started',
  bulk_replay_cancel: 'Bulk replay cancelled',
  acknowledge: 'Alarm acknowledged',
  resolve: 'Alarm resolved',
};

export function auditPage(p: { rows: AuditRow[]; nextCursor: string | null; action: string | null; actions: readonly string[] }): Html {
  return html`
<div class="page-head">
  <div><div class="crumbs"><a href="/console">Overview</a> / Audit</div><h1>Audit</h1>
  <div class="sub">Who changed what, when, why, and exactly what changed. Written in the same transaction as the change.</div></div>
</div>
<nav class="tabs" aria-label="Action">
  <a href="/console/audit"${p.action === null ? html` class="active" aria-current="page"` : ''}>All</a>
  ${p.actions.map((a) => html`<a href="/console/audit?action=${a}"${p.action === a ? html` class="active" aria-current="page"` : ''}>${ACTION_LABEL[a] ?? a}</a>`)}
</nav>
<section class="panel flush">
  ${p.rows.length === 0 ? html`<p class="empty">Nothing recorded${p.action ? ' for this action' : ''} yet.</p>` : html`<div class="table-wrap"><table class="grid" id="audit-table">
    <thead><tr><th>When</th><th>Who</th><th>Action</th><th>On</th><th>Reason / note</th><th>What changed</th></tr></thead>
    <tbody>${p.rows.map(row)}</tbody>
  </table></div>`}
  ${p.nextCursor ? html`<div class="pager"><span></span><a href="/console/audit?${new URLSearchParams({ ...(p.action ? { action: p.action } : {}), before: p.nextCursor }).toString()}" rel="next">Older →</a></div>` : ''}
</section>`;
}

function row(r: AuditRow): Html {
  return html`<tr data-audit-id="${r.id}" data-action="${r.action}">
  <td>${time(r.at)}</td>
  <td><strong>${r.actor}</strong><div class="faint">${[r.role, r.via].filter(Boolean).join(' · ')}</div></td>
  <td class="nowrap">${ACTION_LABEL[r.action] ?? r.action}</td>
  <td>${target(r.target)}</td>
  <td class="detail">${r.reason ?? html`<span class="faint">—</span>`}</td>
  <td>${changes(r.changes)}</td>
</tr>`;
}

function target(t: Record<string, unknown>): Html {
  const parts: Html[] = [];
  if (typeof t.messageId === 'string') parts.push(html`<div>batch ${batchLink(t.messageId)}</div>`);
  if (typeof t.alarmId === 'number' || typeof t.alarmId === 'string') {
    parts.push(html`<div>alarm <span class="mono">#${t.alarmId}</span>${typeof t.alarmType === 'string' ? html` <span class="muted">${t.alarmType}</span>` : ''}</div>`);
  }
  if (typeof t.bulkReplayId === 'number' || typeof t.bulkReplayId === 'string') {
    parts.push(html`<div><a href="/console/replays/${String(t.bulkReplayId)}">bulk replay #${t.bulkReplayId}</a></div>`);
  }
  return parts.length > 0 ? html`${parts}` : html`<code>${JSON.stringify(t)}</code>`;
}

/** Domain transitions as "domain: failed → pending"; anything else as compact JSON. */
function changes(list: unknown[]): Html {
  if (!Array.isArray(list) || list.length === 0) return html`<span class="faint">—</span>`;
  const shown = list.slice(0, 25);
  return html`<ul class="changes">${shown.map((c) => html`<li>${change(c)}</li>`)}</ul>${list.length > shown.length ? html`<span class="muted">… and ${list.length - shown.length} more</span>` : ''}`;
}

function change(c: unknown): Html {
  if (c && typeof c === 'object') {
    const o = c as Record<string, unknown>;
    const arrow = html`${o.from === null || o.from === undefined ? html`<span class="faint">none</span>` : pill(String(o.from))} → ${pill(String(o.to))}`;
    if (typeof o.domain === 'string') return html`${domainLink(o.domain)} ${arrow}`;
    if (typeof o.field === 'string') {
      const rest = Object.entries(o).filter(([k]) => !['field', 'from', 'to'].includes(k));
      return html`${o.field} ${arrow}${rest.length > 0 ? html` <span class="muted mono">${rest.map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(' ')}</span>` : ''}`;
    }
  }
  return html`<code>${JSON.stringify(c)}</code>`;
}
