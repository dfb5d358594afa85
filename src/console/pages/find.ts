/** The results of a pasted list: each term, whether it is known, a one-line answer and a link. */
import type { DomainReport } from '../../ops/reports.js';
import type { StatusCounts } from '../../store/ledger.js';
import type { FindTerm } from '../find.js';
import { MAX_FIND_TERMS } from '../find.js';
import { html, type Html } from '../html.js';
import { batchLink, countPills, domainLink, pill } from '../layout.js';

export type FindResult =
  | { term: FindTerm & { kind: 'messageId' }; counts: StatusCounts | null }
  | { term: FindTerm & { kind: 'domain' }; report: DomainReport | null }
  | { term: FindTerm & { kind: 'invalid' } };

const ORDER = ['failed', 'retryable', 'unknown_domain', 'unsupported', 'awaiting_pipeline', 'in_progress', 'pending', 'succeeded'];

export function findPage(p: { query: string; results: FindResult[]; truncated: boolean }): Html {
  const found = p.results.filter((r) => ('counts' in r && r.counts) || ('report' in r && r.report)).length;
  return html`
<div class="page-head">
  <div><div class="crumbs"><a href="/console">Overview</a> / Find</div><h1>Find</h1>
  <div class="sub">${p.results.length} term${p.results.length === 1 ? '' : 's'}, ${found} found${p.truncated ? ` (only the first ${MAX_FIND_TERMS} are looked up)` : ''}</div></div>
</div>
${p.results.length === 0 ? html`<div class="panel"><p>Type a messageId (e.g. <code>pm0e83d5aac99c4c7aac37a2d4f341ea26</code>) or a domain, or paste a list of either, separated by spaces, commas or new lines.</p></div>`
    : html`<section class="panel flush"><div class="table-wrap"><table class="grid" id="find-results">
  <thead><tr><th>Searched</th><th>Kind</th><th>Answer</th></tr></thead>
  <tbody>${p.results.map(row)}</tbody>
</table></div></section>`}`;
}

function row(r: FindResult): Html {
  const { term } = r;
  if (term.kind === 'invalid') {
    return html`<tr data-term="${term.value}"><td class="mono">${term.value}</td><td class="muted">?</td><td class="muted">neither a messageId nor a domain name</td></tr>`;
  }
  if ('counts' in r) {
    return html`<tr data-term="${term.value}"><td>${r.counts ? batchLink(term.value) : html`<span class="mono">${term.value}</span>`}</td><td>messageId</td>
      <td>${r.counts ? countPills(r.counts, ORDER) : html`<span class="muted">no batch with this messageId</span>`}</td></tr>`;
  }
  if ('report' in r) {
    const rep = r.report;
    const latest = rep?.batches[0];
    return html`<tr data-term="${term.value}"><td>${rep ? domainLink(term.value) : html`<span class="mono">${term.value}</span>`}</td><td>domain</td>
      <td>${rep ? html`${rep.inventory ? (rep.inventory.status === 'deleted' ? 'deleted' : 'active in the inventory') : 'not in the inventory'} ·
        ${rep.batches.length} batch${rep.batches.length === 1 ? '' : 'es'}${latest ? html` · latest ${batchLink(latest.messageId)} ${pill(latest.status)}` : ''}`
        : html`<span class="muted">no batch carried it and it is not in the inventory</span>`}</td></tr>`;
  }
  return html``;
}
