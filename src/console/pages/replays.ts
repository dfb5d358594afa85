/**
 * Bulk replay by filter: the form (console.js previews it, count first, then starts it with a reason), the
 * recent bulk replays, and one bulk replay's progress (followed live, with cancel).
 */
import type { BulkReplayRow } from '../../ops/bulk-replay.js';
import { html, type Html } from '../html.js';
import { TIME_PATTERN, pill, time } from '../layout.js';

export function replaysPage(p: { recent: BulkReplayRow[]; canReplay: boolean }): Html {
  return html`
<div class="page-head">
  <div><div class="crumbs"><a href="/console">Overview</a> / Bulk replay</div><h1>Bulk replay</h1>
  <div class="sub">Re-open the failed domains of every batch a filter matches, one batch at a time. Succeeded domains are never re-opened.</div></div>
</div>
${p.canReplay ? html`<section class="panel">
  <h2>By filter</h2>
  <form id="bulk-form" autocomplete="off">
    <div class="filters">
      <label class="check"><input type="checkbox" name="hasFailures" checked disabled> has failed or unknown domains</label>
      <label>Received from (UTC)<input type="text" class="time" name="since" placeholder="2026-11-24 08:00" pattern="${TIME_PATTERN}" data-filter></label>
      <label>until (UTC)<input type="text" class="time" name="until" placeholder="2026-11-24 09:00" pattern="${TIME_PATTERN}" data-filter></label>
      <label>Detail contains<input type="text" name="detailMatches" maxlength="200" placeholder="e.g. user not found" data-filter></label>
      <button type="button" class="btn primary" id="bulk-preview-btn">Preview</button>
    </div>
    <div id="bulk-preview" class="preview" hidden></div>
    <div id="bulk-confirm" class="reason-row" hidden>
      <label class="field">Reason (required; kept in the audit)<textarea id="bulk-reason" name="reason" maxlength="500" required placeholder="e.g. platform outage 08:00-08:40 UTC is over"></textarea></label>
      <button type="submit" class="btn primary" id="bulk-start" disabled>Start bulk replay</button>
    </div>
    <div id="bulk-status" aria-live="polite" hidden></div>
  </form>
</section>` : html`<div class="message info">Viewers can follow bulk replays; starting one needs the operator role.</div>`}
<section class="panel flush">
  <div class="panel-head"><h2>Recent bulk replays</h2></div>
  ${p.recent.length === 0 ? html`<p class="empty">None yet.</p>` : html`<div class="table-wrap"><table class="grid">
    <thead><tr><th>#</th><th>Status</th><th>Started</th><th>By</th><th class="num">Batches</th><th class="num">Domains re-opened</th><th>Filter</th><th>Reason</th></tr></thead>
    <tbody>${p.recent.map((r) => html`<tr data-replay-id="${r.id}">
      <td><a href="/console/replays/${r.id}">#${r.id}</a></td><td>${pill(r.status)}</td><td>${time(r.createdAt)}</td><td>${r.createdBy}</td>
      <td class="num">${r.done} / ${r.total}</td><td class="num">${r.reopened}</td><td>${filterText(r.filter)}</td><td class="detail">${r.reason}</td></tr>`)}</tbody>
  </table></div>`}
</section>`;
}

export function replayProgressPage(r: BulkReplayRow, opts: { canReplay: boolean }): Html {
  return html`
<div class="page-head">
  <div><div class="crumbs"><a href="/console">Overview</a> / <a href="/console/replays">Bulk replay</a> / #${r.id}</div>
  <h1>Bulk replay #${r.id}</h1>
  <div class="sub">started by <strong>${r.createdBy}</strong> ${time(r.createdAt)} · ${filterText(r.filter)}</div></div>
  ${opts.canReplay ? html`<div class="toolbar"><button type="button" class="btn danger" id="bulk-cancel"${r.status === 'running' ? '' : html` hidden`}>Cancel</button></div>` : ''}
</div>
<section class="panel" id="bulk-progress" data-replay-id="${r.id}" data-status="${r.status}">
  <h2>Progress <span class="live">live</span></h2>
  <dl class="kv">
    <dt>Status</dt><dd data-field-status>${pill(r.status)}</dd>
    <dt>Batches</dt><dd><span data-field="done">${r.done}</span> of <span data-field="total">${r.total}</span> replayed
      <progress max="${Math.max(1, r.total)}" value="${r.done}" data-field="done"></progress></dd>
    <dt>Domains re-opened</dt><dd data-field="reopened">${r.reopened}</dd>
    <dt>Reason</dt><dd>${r.reason}</dd>
    <dt>Finished</dt><dd data-field-time="finishedAt">${time(r.finishedAt)}</dd>
    <dt>Cancelled by</dt><dd data-field="cancelledBy">${r.cancelledBy ?? '—'}</dd>
    <dt>Error</dt><dd data-field="error">${r.error ?? '—'}</dd>
  </dl>
  <div id="bulk-status" aria-live="polite" hidden></div>
</section>`;
}

function filterText(f: BulkReplayRow['filter']): Html {
  const parts = ['has failures'];
  if (f.since) parts.push(`from ${f.since.replace('T', ' ').replace(/\.000Z$/, 'Z')}`);
  if (f.until) parts.push(`until ${f.until.replace('T', ' ').replace(/\.000Z$/, 'Z')}`);
  if (f.detailMatches) parts.push(`detail contains "${f.detailMatches}"`);
  return html`<span class="muted">${parts.join(' · ')}</span>`;
}
