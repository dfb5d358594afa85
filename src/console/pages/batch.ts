/**
 * One batch (one messageId): every domain with its outcome and attempt history, the raw callbacks, its
 * alarms, export links and, for operators, the replay controls that console.js drives.
 */
import type { BatchReport, CallbackRecord } from '../../ops/reports.js';
import type { AttemptRow } from '../../store/attempts.js';
import type { DomainRow } from '../../store/ledger.js';
import { html, type Html } from '../html.js';
import { countPills, domainLink, pill, time } from '../layout.js';
import { alarmCard } from './alarms.js';

/** Statuses a replay may re-open; the server decides in the end (and says why in the preview). */
const REPLAYABLE = new Set(['failed', 'retryable', 'unknown_domain', 'pending', 'in_progress']);
const STATUS_ORDER = ['failed', 'retryable', 'unknown_domain', 'unsupported', 'awaiting_pipeline', 'in_progress', 'pending', 'succeeded'] as const;
/** Why a domain has no checkbox (the server would refuse it anyway). */
const NOT_REPLAYABLE: Record<string, string> = {
  succeeded: 'already deleted: never re-opened',
  unsupported: 'not a deletion (unsupported reqType): never re-opened',
  awaiting_pipeline: 'the pipeline has not finished it: held until it does',
};

export function batchPage(r: BatchReport, opts: { canReplay: boolean }): Html {
  const { batch } = r;
  const total = r.domains.length;
  const failing = (r.counts.failed ?? 0) + (r.counts.unknown_domain ?? 0) + (r.counts.retryable ?? 0);
  const history = groupAttempts(r.attempts ?? []);
  const cols = opts.canReplay ? 8 : 7;
  const id = encodeURIComponent(r.messageId);
  return html`
<div class="page-head">
  <div>
    <div class="crumbs"><a href="/console">Overview</a> / Batch</div>
    <h1 class="mono" data-message-id="${r.messageId}">${r.messageId}</h1>
    <div class="sub">${total} domain${total === 1 ? '' : 's'} · ${batch.callbacks} callback${batch.callbacks === 1 ? '' : 's'} · first received ${time(batch.createdAt)}</div>
  </div>
  <div class="toolbar">
    <span class="muted">Export the domains not deleted:</span>
    <a class="btn small" href="/api/batches/${id}/export?format=csv" download data-export="csv">CSV</a>
    <a class="btn small" href="/api/batches/${id}/export?format=json" download data-export="json">JSON</a>
  </div>
</div>

<div class="grid-2">
  <section class="panel">
    <h2>Outcome</h2>
    <div id="batch-counts" class="counts" data-order="${STATUS_ORDER.join(',')}">${countPills(r.counts, STATUS_ORDER)}</div>
    <p class="muted" id="batch-failing">${failing > 0 ? `${failing} domain${failing === 1 ? '' : 's'} not deleted yet (failed, unknown or retrying).` : 'Nothing is failing.'}</p>
  </section>
  <section class="panel">
    <h2>Batch</h2>
    <dl class="kv">
      <dt>Received</dt><dd>${time(batch.createdAt)}</dd>
      <dt>Last change</dt><dd>${time(batch.updatedAt)}</dd>
      <dt>Last run</dt><dd>${time(batch.lastRunAt)}</dd>
      <dt>Job</dt><dd>${batch.publishPending ? html`<span class="st st-retryable">waiting for publish</span>` : html`published ${time(batch.publishedAt)}`}</dd>
    </dl>
  </section>
</div>

<section class="panel flush" id="domains">
  <div class="panel-head">
    <h2>Domains <span class="muted">(${total})</span></h2>
    <div class="toolbar">${history.size > 0 ? html`<button type="button" class="btn small" data-expand-all>Expand all attempts</button>` : ''}</div>
  </div>
  <div class="table-wrap">
  <table class="grid" id="domain-table" data-message-id="${r.messageId}">
    <thead><tr>
      ${opts.canReplay ? html`<th class="check"><input type="checkbox" data-pick-all aria-label="Select every replayable domain"></th>` : ''}
      <th>Domain</th><th>Status</th><th class="num">Attempts</th><th>user_id_cdn</th><th>Detail</th><th>Updated</th><th>Finished</th>
    </tr></thead>
    <tbody>
    ${r.domains.map((d, i) => domainRows(d, i, history.get(d.domain) ?? [], cols, opts.canReplay))}
    </tbody>
  </table>
  </div>
  ${total === 0 ? html`<p class="empty">No domains.</p>` : ''}
  ${opts.canReplay ? replayBox(r) : ''}
</section>

<section class="panel" id="alarms">
  <h2>Alarms <span class="muted">(${r.alarms.length})</span></h2>
  ${r.alarms.length === 0 ? html`<p class="muted">No alarm was raised for this batch.</p>`
      : r.alarms.map((a) => alarmCard(a, { canChange: false, showBatch: false }))}
</section>

<section class="panel" id="callbacks">
  <h2>Callbacks received <span class="muted">(${r.callbacks.length})</span></h2>
  <p class="muted">Each callback as the vendor sent it, in order of arrival; a repeat of the messageId was merged into this batch.</p>
  ${r.callbacks.map((c, i) => callbackItem(c, i))}
</section>`;
}

function domainRows(d: DomainRow, index: number, attempts: AttemptRow[], cols: number, canReplay: boolean): Html {
  const replayable = REPLAYABLE.has(d.status);
  const historyId = `history-${index}`;
  return html`<tr data-domain="${d.domain}" data-status="${d.status}" data-index="${index}">
  ${canReplay ? html`<td class="check"><input type="checkbox" class="pick" name="domain" value="${d.domain}" form="replay-form"
      aria-label="Replay ${d.domain}"${replayable ? html` data-replayable` : html` disabled title="${NOT_REPLAYABLE[d.status] ?? 'not replayable'}"`}${d.status === 'failed' ? html` checked` : ''}></td>` : ''}
  <td class="nowrap">${domainLink(d.domain)}${d.reqType !== 'SELF_DOMAIN_DELETE' ? html`<span class="flag" title="reqType">${d.reqType}</span>` : ''}</td>
  <td class="status">${pill(d.status)}</td>
  <td class="num"><button type="button" class="linkish" data-toggle-history aria-controls="${historyId}" aria-expanded="false"
      title="Show the attempt history"${attempts.length === 0 ? html` hidden` : ''}><span data-attempt-count>${d.attempts}</span> ▸</button><span class="faint" data-attempt-count-plain${attempts.length === 0 ? '' : html` hidden`}>${d.attempts}</span></td>
  <td class="mono nowrap">${d.userIdCdn ?? html`<span class="faint">—</span>`}</td>
  <td class="detail">${d.detail ?? ''}</td>
  <td class="updated">${time(d.updatedAt, { short: true })}</td>
  <td class="finished">${time(d.finishedAt, { short: true })}</td>
</tr>
<tr class="history" id="${historyId}" data-count="${attempts.length}" hidden><td colspan="${cols}">${attemptTable(attempts)}</td></tr>`;
}

/** One domain's calls to the security platform, oldest first. */
export function attemptTable(attempts: AttemptRow[]): Html {
  if (attempts.length === 0) return html`<span class="faint">No call to the security platform yet.</span>`;
  return html`<table class="inner attempts">
  <thead><tr><th class="num">#</th><th>Sent</th><th class="num">Duration</th><th>Trigger</th><th>Instance</th><th class="num">Token gen.</th><th class="num">HTTP</th><th>Outcome</th><th>Reason</th></tr></thead>
  <tbody>${attempts.map((a, i) => html`<tr>
    <td class="num">${i + 1}</td><td>${time(a.attemptedAt, { short: true })}</td><td class="num">${a.durationMs} ms</td><td>${a.trigger}</td>
    <td class="mono">${a.instanceId}</td><td class="num">${a.tokenGeneration}</td>
    <td class="num">${a.httpStatus ?? '—'}</td><td>${pill(a.outcome)}</td><td class="detail">${a.reason ?? ''}</td></tr>`)}</tbody>
</table>`;
}

function replayBox(r: BatchReport): Html {
  const failed = r.counts.failed ?? 0;
  return html`<form id="replay-form" class="replay-box" data-message-id="${r.messageId}">
  <h3>Replay</h3>
  <p class="muted">Re-opens the selected domains and runs them again; succeeded domains are never re-opened, so nothing is deleted twice.
  The failed ones (${failed}) are preselected: change the selection in the table, then preview.</p>
  <div class="actions">
    <button type="button" class="btn small" data-pick="failed">Select failed</button>
    <button type="button" class="btn small" data-pick="all">Select all replayable</button>
    <button type="button" class="btn small" data-pick="none">Clear</button>
    <span class="muted" data-pick-count>0 selected</span>
    <button type="button" class="btn primary" id="replay-preview-btn">Preview</button>
  </div>
  <div id="replay-preview" class="preview" hidden></div>
  <div id="replay-confirm" class="reason-row" hidden>
    <label class="field">Reason (required; kept in the audit)
      <textarea id="replay-reason" name="reason" maxlength="500" required placeholder="e.g. customer ticket 4711: platform fixed the user records"></textarea></label>
    <button type="submit" class="btn primary" id="replay-start" disabled>Replay</button>
  </div>
  <div id="replay-status" aria-live="polite" hidden></div>
</form>`;
}

function callbackItem(c: CallbackRecord, index: number): Html {
  let body: string;
  try { body = JSON.stringify(c.body, null, 2) ?? ''; } catch { body = String(c.body); }
  return html`<details class="callback" data-callback="${index + 1}">
  <summary><strong>#${index + 1}</strong> ${time(c.receivedAt)} <span class="muted">from</span> <span class="mono">${c.remoteAddr ?? 'unknown'}</span>
    <span>${c.itemCount} item${c.itemCount === 1 ? '' : 's'}</span>${c.repeat ? html`<span class="flag" data-repeat>messageId came again</span>` : ''}</summary>
  <pre>${body}</pre>
</details>`;
}

function groupAttempts(attempts: AttemptRow[]): Map<string, AttemptRow[]> {
  const out = new Map<string, AttemptRow[]>();
  for (const a of attempts) {
    const list = out.get(a.domain);
    if (list) list.push(a); else out.set(a.domain, [a]);
  }
  return out;
}
