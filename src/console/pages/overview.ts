/**
 * The front page: is everything up (PostgreSQL, Redis, RabbitMQ), the shared token, the queues, what waits
 * for publish, the alarms to act on; below, the recent batches with a filter and keyset paging.
 */
import type { BatchList, Overview } from '../../ops/reports.js';
import { html, type Html } from '../html.js';
import { TIME_PATTERN, batchLink, countPills, duration, pill, time } from '../layout.js';

/** The filter form's values, as typed (re-shown in the form). */
export interface BatchFilterForm { hasFailures: boolean; open: boolean; since: string; until: string }

const ORDER = ['failed', 'retryable', 'unknown_domain', 'unsupported', 'awaiting_pipeline', 'in_progress', 'pending', 'succeeded'];
const DEPENDENCY_LABEL = { postgres: 'PostgreSQL', redis: 'Redis', rabbitmq: 'RabbitMQ' } as const;

export function overviewPage(p: { state: Overview; list: BatchList; form: BatchFilterForm }): Html {
  const s = p.state;
  const openAlarms = s.alarms?.open ?? null;
  const parked = s.queues?.parked ?? null;
  const waiting = s.publish?.waiting ?? null;
  return html`
<div class="page-head">
  <div><h1>Overview</h1><div class="sub">As of ${time(s.readAt)}. Reload for fresh numbers.</div></div>
  <div class="toolbar"><a class="btn" href="/console/replays">Bulk replay by filter</a></div>
</div>

<div class="cards" id="health">
  ${(Object.keys(DEPENDENCY_LABEL) as (keyof typeof DEPENDENCY_LABEL)[]).map((dep) => html`
  <div class="card ${s.readiness[dep] === 'ok' ? 'good' : 'bad'}" data-dependency="${dep}">
    <div class="label">${DEPENDENCY_LABEL[dep]}</div><div class="value">${s.readiness[dep] === 'ok' ? 'ready' : 'down'}</div>
    <div class="hint">${s.readiness[dep] === 'ok' ? 'answering' : 'not answering: see the service log'}</div>
  </div>`)}
  <a class="card ${openAlarms ? 'bad' : ''}" href="/console/alarms?state=open" data-card="alarms">
    <div class="label">Open alarms</div><div class="value">${openAlarms ?? '?'}</div>
    <div class="hint">${s.alarms ? `${s.alarms.acknowledged} acknowledged` : s.ledgerError ?? ''}</div>
  </a>
  <div class="card ${waiting ? 'warn' : ''}" data-card="publish">
    <div class="label">Waiting for publish</div><div class="value">${waiting ?? '?'}</div>
    <div class="hint">${s.publish ? (s.publish.oldestAgeSeconds === null ? 'batches stored, job not confirmed' : `oldest ${duration(s.publish.oldestAgeSeconds * 1000)}`) : s.ledgerError ?? ''}</div>
  </div>
  <div class="card ${parked ? 'bad' : ''}" data-card="parked">
    <div class="label">Parked jobs</div><div class="value">${parked ?? '?'}</div>
    <div class="hint">${s.queues ? 'used every delivery; need a look' : s.queuesError ?? ''}</div>
  </div>
</div>

<div class="grid-2">
  <section class="panel" id="token">
    <h2>Shared token</h2>
    ${s.token ? tokenState(s.token) : html`<p class="message error">${s.tokenError ?? 'unknown'}</p>`}
  </section>
  <section class="panel" id="queues">
    <h2>Queues</h2>
    ${s.queues ? html`<table class="inner">
      <thead><tr><th>Queue</th><th class="num">Messages</th></tr></thead>
      <tbody>
        <tr data-queue="jobs"><td>jobs (waiting for a worker)</td><td class="num">${s.queues.jobs}</td></tr>
        ${s.queues.retryTiers.map((t) => html`<tr data-queue="retry_${t.delayMs}"><td>retry after ${duration(t.delayMs)}</td><td class="num">${t.messages}</td></tr>`)}
        <tr data-queue="parked"><td>parked</td><td class="num">${s.queues.parked}</td></tr>
      </tbody></table>` : html`<p class="message error">${s.queuesError ?? 'unknown'}</p>`}
  </section>
</div>

<section class="panel flush" id="recent">
  <div class="panel-head"><h2>Recent batches</h2></div>
  <form class="filters" method="get" action="/console" id="batch-filter">
    <label class="check"><input type="checkbox" name="hasFailures" value="1"${p.form.hasFailures ? html` checked` : ''}> has failures</label>
    <label class="check"><input type="checkbox" name="open" value="1"${p.form.open ? html` checked` : ''}> still open</label>
    <label>Received from (UTC)<input type="text" class="time" name="since" value="${p.form.since}" placeholder="2026-11-24 08:00" pattern="${TIME_PATTERN}"></label>
    <label>until (UTC)<input type="text" class="time" name="until" value="${p.form.until}" placeholder="2026-11-24 09:00" pattern="${TIME_PATTERN}"></label>
    <button type="submit" class="btn">Filter</button>
    ${p.form.hasFailures || p.form.open || p.form.since || p.form.until ? html`<a href="/console">clear</a>` : ''}
  </form>
  ${p.list.batches.length === 0 ? html`<p class="empty">No batch matches.</p>` : html`<div class="table-wrap"><table class="grid" id="batch-list">
    <thead><tr><th>messageId</th><th>Received</th><th class="num">Domains</th><th>By status</th><th class="num">Callbacks</th><th>State</th><th>Last change</th></tr></thead>
    <tbody>${p.list.batches.map((b) => html`<tr data-message-id="${b.messageId}">
      <td>${batchLink(b.messageId)}</td><td>${time(b.createdAt)}</td><td class="num">${b.total}</td>
      <td>${countPills(b.counts, ORDER)}</td><td class="num">${b.callbacks}${b.callbacks > 1 ? html`<span class="flag" title="the messageId came more than once">repeat</span>` : ''}</td>
      <td data-state="${b.open ? 'open' : b.hasFailures ? 'has-failures' : 'done'}">${b.open ? pill('in_progress', 'open') : b.hasFailures ? pill('failed', 'has failures') : pill('succeeded', 'done')}</td>
      <td>${time(b.updatedAt)}</td></tr>`)}</tbody>
  </table></div>`}
  ${p.list.nextCursor ? html`<div class="pager"><span class="muted">Newest first.</span><a rel="next" id="older" href="/console?${olderQuery(p.form, p.list.nextCursor)}">Older →</a></div>` : ''}
</section>`;
}

function tokenState(t: NonNullable<Overview['token']>): Html {
  const expires = t.expiresInSeconds;
  return html`<dl class="kv">
    <dt>Generation</dt><dd>${t.generation ?? html`<span class="faint">none fetched yet</span>`}</dd>
    <dt>Age</dt><dd>${t.ageSeconds === null ? '—' : duration(t.ageSeconds * 1000)}${t.fetchedAt ? html` <span class="faint">(fetched ${time(t.fetchedAt)})</span>` : ''}</dd>
    <dt>Expires</dt><dd>${expires === null ? '—' : expires < 0 ? html`<span class="st st-retryable">expired ${duration(-expires * 1000)} ago</span> <span class="faint">(refreshed on next use)</span>` : `in ${duration(expires * 1000)}`}</dd>
    <dt>Fetches today</dt><dd>${t.fetchesToday} of ${t.dailyBudget} <span class="faint">(UTC day ${t.fetchDay}; alarm at ${t.budgetAlarmAt})</span></dd>
    <dt>Taken by others</dt><dd>${t.externalInvalidationsLastHour} in the last hour <span class="faint">(alarm above ${t.contentionMax})</span></dd>
    <dt>Circuit</dt><dd>${t.circuit.open
      ? html`<span class="st st-failed">open</span> for ${duration(t.circuit.remainingSeconds * 1000)} more: ${t.circuit.reason ?? ''}`
      : html`<span class="st st-succeeded">closed</span> <span class="faint">(credentials accepted)</span>`}</dd>
  </dl>`;
}

function olderQuery(form: BatchFilterForm, cursor: string): string {
  const q = new URLSearchParams();
  if (form.hasFailures) q.set('hasFailures', '1');
  if (form.open) q.set('open', '1');
  if (form.since) q.set('since', form.since);
  if (form.until) q.set('until', form.until);
  q.set('before', cursor);
  return q.toString();
}
