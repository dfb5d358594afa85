/** One domain: its inventory row (how the security platform knows it) and every batch that carried it. */
import type { DomainReport } from '../../ops/reports.js';
import { html, type Html } from '../html.js';
import { batchLink, pill, time } from '../layout.js';

export function domainPage(r: DomainReport): Html {
  const inv = r.inventory;
  return html`
<div class="page-head">
  <div>
    <div class="crumbs"><a href="/console">Overview</a> / Domain</div>
    <h1 class="mono" data-domain="${r.domain}">${r.domain}</h1>
    <div class="sub">${r.batches.length} batch${r.batches.length === 1 ? '' : 'es'} carried it${inv ? html` · ${inv.status === 'deleted' ? 'deleted at the security platform' : 'still active in the inventory'}` : ' · not in the domain inventory'}</div>
  </div>
</div>
<section class="panel" id="inventory">
  <h2>Inventory</h2>
  ${inv ? html`<dl class="kv">
    <dt>user_id_cdn</dt><dd class="mono">${inv.userIdCdn}</dd>
    <dt>Status</dt><dd>${pill(inv.status === 'deleted' ? 'succeeded' : 'pending', inv.status)}</dd>
    <dt>Deleted</dt><dd>${time(inv.deletedAt)}${inv.deletedByMessageId ? html` by batch ${batchLink(inv.deletedByMessageId)}` : ''}</dd>
    <dt>Imported</dt><dd>${time(inv.importedAt)}</dd>
  </dl>` : html`<p class="muted">Not in the domain inventory (cdn_domain): the security platform's user_id_cdn is unknown, so a deletion ends as <span class="st st-unknown_domain">unknown_domain</span> until it is imported.</p>`}
</section>
<section class="panel flush" id="batches">
  <div class="panel-head"><h2>Batches that carried it</h2></div>
  ${r.batches.length === 0 ? html`<p class="empty">No batch carried this domain.</p>` : html`<div class="table-wrap"><table class="grid">
    <thead><tr><th>messageId</th><th>Status here</th><th class="num">Attempts</th><th>Detail</th><th>Batch received</th><th class="num">Callbacks</th><th>Updated</th><th>Finished</th></tr></thead>
    <tbody>${r.batches.map((b) => html`<tr data-message-id="${b.messageId}">
      <td>${batchLink(b.messageId)}</td><td>${pill(b.status)}</td><td class="num">${b.attempts}</td><td class="detail">${b.detail ?? ''}</td>
      <td>${time(b.batchCreatedAt)}</td><td class="num">${b.callbacks}</td><td>${time(b.updatedAt)}</td><td>${time(b.finishedAt)}</td></tr>`)}</tbody>
  </table></div>`}
</section>`;
}
