/**
 * Alarms by state (open / acknowledged / resolved), each linked to its batch, with the acknowledge and
 * resolve forms for operators (console.js posts them to the operator API).
 */
import type { AlarmList } from '../../ops/reports.js';
import type { AlarmLifecycleRow, AlarmState } from '../../store/alarm-lifecycle.js';
import { html, type Html } from '../html.js';
import { batchLink, pill, time } from '../layout.js';

/** What an alarm card shows: the lifecycle row (the list view's rows may be trimmed: `truncated`). */
export type ConsoleAlarm = Omit<AlarmLifecycleRow, 'tag' | 'details'> & { truncated?: boolean };

export const ALARM_TABS: readonly AlarmState[] = ['open', 'acknowledged', 'resolved'];

export function alarmsPage(p: { state: AlarmState; list: AlarmList; canChange: boolean }): Html {
  const { alarms, nextCursor } = p.list;
  return html`
<div class="page-head">
  <div><div class="crumbs"><a href="/console">Overview</a> / Alarms</div><h1>Alarms</h1>
  <div class="sub">Told, then asked: acknowledge when you are on it, resolve with a note saying what fixed it.</div></div>
</div>
<nav class="tabs" aria-label="Alarm state">
  ${ALARM_TABS.map((s) => html`<a href="/console/alarms?state=${s}" data-tab="${s}"${s === p.state ? html` class="active" aria-current="page"` : ''}>${s[0]!.toUpperCase()}${s.slice(1)}</a>`)}
</nav>
<div id="alarm-list" data-state="${p.state}">
${alarms.length === 0 ? html`<div class="panel"><p class="muted">No ${p.state} alarms.</p></div>`
    : alarms.map((a) => alarmCard(a, { canChange: p.canChange, showBatch: true }))}
${nextCursor ? html`<div class="pager"><span></span><a rel="next" href="/console/alarms?${new URLSearchParams({ state: p.state, before: nextCursor }).toString()}">Older →</a></div>` : ''}
</div>`;
}

/** One alarm: what, where, who took which step, and (for operators) the next step's form. */
export function alarmCard(a: ConsoleAlarm, opts: { canChange: boolean; showBatch: boolean }): Html {
  return html`<article class="alarm" id="alarm-${a.id}" data-alarm-id="${a.id}" data-state="${a.state}">
  <div class="alarm-head">
    ${pill(a.state)}
    <span class="alarm-type">${a.alarmType}</span>
    <span class="muted">#${a.id}</span>
    ${opts.showBatch ? (a.messageId ? html`<span>batch ${batchLink(a.messageId)}</span>` : html`<span class="muted">not tied to a batch</span>`)
      : html`<a href="/console/alarms?state=${a.state}#alarm-${a.id}">on the alarms page</a>`}
    ${a.occurrences > 1 ? html`<span class="flag">${a.occurrences} occurrences</span>` : ''}
  </div>
  <div class="alarm-content">${a.content}${a.truncated ? html` <span class="faint">(shortened)</span>` : ''}</div>
  <div class="alarm-meta">
    <span>raised ${time(a.createdAt)}</span>
    ${a.occurrences > 1 ? html`<span>last seen ${time(a.lastSeenAt)}</span>` : ''}
    ${a.acknowledgedAt ? html`<span data-acknowledged>acknowledged by <strong>${a.acknowledgedBy ?? '?'}</strong> ${time(a.acknowledgedAt)}</span>` : ''}
    ${a.resolvedAt ? html`<span data-resolved>resolved by <strong>${a.resolvedBy ?? '?'}</strong> ${time(a.resolvedAt)}</span>` : ''}
  </div>
  ${a.ackNote ? html`<div class="note" data-ack-note><span class="muted">Ack note:</span> ${a.ackNote}</div>` : ''}
  ${a.resolveNote ? html`<div class="note" data-resolve-note><span class="muted">Resolution:</span> ${a.resolveNote}</div>` : ''}
  ${opts.canChange && a.state !== 'resolved' ? html`<div class="alarm-steps">
    ${a.state === 'open' ? html`<form data-alarm-step="acknowledge" data-alarm-id="${a.id}">
      <label class="field">Note (optional)<textarea name="note" maxlength="2000" placeholder="e.g. looking into it"></textarea></label>
      <div class="actions"><button type="submit" class="btn">Acknowledge</button></div>
      <div data-step-status hidden></div>
    </form>` : ''}
    <form data-alarm-step="resolve" data-alarm-id="${a.id}">
      <label class="field">Resolution note (required: what fixed it)<textarea name="note" maxlength="2000" required placeholder="e.g. replayed after the platform restored the users"></textarea></label>
      <div class="actions"><button type="submit" class="btn primary">Resolve</button></div>
      <div data-step-status hidden></div>
    </form>
  </div>` : ''}
</article>`;
}
