/* The console's one script: the live parts only (replay preview and progress, bulk replay, alarm steps,
 * attempt-history toggles). Pages are rendered by the server; this file adds behaviour, never markup from
 * strings: every value goes into the page through textContent, so nothing the server sent can run.
 * Plain ES2020, no build step, loaded with `defer` from the service itself (CSP script-src 'self').
 */
/* global document, window, fetch, setTimeout, Event */
(function () {
  'use strict';

  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute('content') : '';
  /** Domain statuses a worker will still change; every other status is where a domain ends. */
  const OPEN = new Set(['pending', 'in_progress', 'retryable']);
  /** Statuses a replay may re-open (the server decides; this only keeps the checkboxes honest). */
  const REPLAYABLE = new Set(['failed', 'retryable', 'unknown_domain', 'pending', 'in_progress']);
  const POLL_MS = 1000;

  // ---------------------------------------------------------------- helpers

  /** A JSON request to the operator API with the session's CSRF token; throws Error(reason) unless 2xx. */
  async function api(method, path, body) {
    const headers = { accept: 'application/json' };
    if (csrf) headers['x-csrf-token'] = csrf;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(path, {
      method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let data;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      const reason = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status}`;
      const err = new Error(reason);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  /** Builds an element; children are nodes or text (always text, never parsed as markup). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = String(v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof window.Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function pill(status, label) {
    return el('span', { class: `st st-${String(status).replace(/[^a-z_]/gi, '')}`, 'data-status': status }, label === undefined ? status : label);
  }

  /** As the server renders times (layout.ts time()); `short` drops the year, as in the domain table. */
  function fmtTime(value, short) {
    if (!value) return el('span', { class: 'faint' }, '—');
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) return String(value);
    const iso = d.toISOString();
    return el('time', { class: 'nowrap', datetime: iso, title: iso }, `${iso.slice(short ? 5 : 0, 19).replace('T', ' ')}Z`);
  }

  function message(target, kind, text) {
    target.replaceChildren(el('div', { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text));
    target.hidden = false;
  }

  const delay = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  /** Resolves when the tab is visible (at once if it is): polling pauses while nobody looks. */
  function whenVisible() {
    if (document.visibilityState !== 'hidden') return Promise.resolve();
    return new Promise((resolve) => {
      const on = () => {
        if (document.visibilityState === 'hidden') return;
        document.removeEventListener('visibilitychange', on);
        resolve();
      };
      document.addEventListener('visibilitychange', on);
    });
  }

  /**
   * Calls `step` until it returns true. The next request starts only after the previous answer (and a
   * pause), never on a fixed timer, so a slow server is never stacked with requests; paused while hidden.
   */
  async function poll(step, onPause) {
    let failures = 0;
    for (;;) {
      if (document.visibilityState === 'hidden') {
        onPause(true);
        await whenVisible();
        onPause(false);
      }
      try {
        if (await step()) return;
        failures = 0;
      } catch (err) {
        failures += 1;
        if (err && (err.status === 401 || err.status === 403)) throw err;
      }
      await delay(failures === 0 ? POLL_MS : Math.min(10_000, POLL_MS * 2 ** failures));
    }
  }

  // ---------------------------------------------------------------- every page

  // A pasted list (one per line) must not be squashed into one word by the single-line search box.
  for (const input of document.querySelectorAll('input[data-search]')) {
    input.addEventListener('paste', (event) => {
      const text = event.clipboardData ? event.clipboardData.getData('text') : '';
      if (!/[\r\n]/.test(text)) return;
      event.preventDefault();
      const flat = text.split(/[\r\n]+/).map((s) => s.trim()).filter(Boolean).join(' ');
      const start = input.selectionStart ?? input.value.length;
      const end = input.selectionEnd ?? input.value.length;
      input.value = input.value.slice(0, start) + flat + input.value.slice(end);
      input.dispatchEvent(new Event('input', { bubbles: true }));
    });
  }

  // Sign-in: posted with fetch so a refusal is shown on this page (without script the form still works).
  const loginForm = document.getElementById('login-form');
  if (loginForm) {
    loginForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      const out = document.getElementById('login-error');
      const button = loginForm.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        // `manual`: the 303 to the console is not followed here (the cookie it sets is kept); we go there.
        const res = await fetch(loginForm.action, {
          method: 'POST', credentials: 'same-origin', redirect: 'manual',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new window.URLSearchParams(new window.FormData(loginForm)).toString(),
        });
        if (res.type === 'opaqueredirect' || (res.status >= 300 && res.status < 400)) {
          const next = loginForm.querySelector('input[name="next"]').value;
          window.location.assign(next || '/console');
          return;
        }
        const reasons = { 401: 'Wrong name or password.', 429: 'Too many failed sign-ins: wait a few minutes, then try again.' };
        message(out, 'error', reasons[res.status] || `Sign-in refused (HTTP ${res.status}).`);
      } catch (err) {
        message(out, 'error', `Sign-in failed: ${err.message}`);
      }
      button.disabled = false;
      const pw = document.getElementById('password');
      pw.value = '';
      pw.focus();
    });
  }

  // Attempt history rows under each domain.
  function toggleHistory(button, open) {
    const row = document.getElementById(button.getAttribute('aria-controls'));
    if (!row) return;
    const show = open === undefined ? row.hidden : open;
    row.hidden = !show;
    button.setAttribute('aria-expanded', String(show));
  }
  document.addEventListener('click', (event) => {
    const button = event.target instanceof window.Element ? event.target.closest('[data-toggle-history]') : null;
    if (button) toggleHistory(button);
  });
  for (const all of document.querySelectorAll('[data-expand-all]')) {
    all.addEventListener('click', () => {
      const buttons = [...document.querySelectorAll('[data-toggle-history]')];
      const open = buttons.some((b) => b.getAttribute('aria-expanded') !== 'true');
      for (const b of buttons) toggleHistory(b, open);
      all.textContent = open ? 'Collapse all attempts' : 'Expand all attempts';
    });
  }

  // ---------------------------------------------------------------- batch page

  const table = document.getElementById('domain-table');
  const replayForm = document.getElementById('replay-form');
  const messageId = table ? table.getAttribute('data-message-id') : null;

  function rowOf(domain) {
    return table ? table.querySelector(`tr[data-domain="${window.CSS.escape(domain)}"]`) : null;
  }

  /** Writes a fresh batch report (GET /api/batches/:id) into the domain table and the counts. */
  function applyReport(report) {
    const byDomain = new Map();
    for (const a of report.attempts || []) {
      if (!byDomain.has(a.domain)) byDomain.set(a.domain, []);
      byDomain.get(a.domain).push(a);
    }
    for (const d of report.domains || []) {
      const row = rowOf(d.domain);
      if (!row) continue;
      if (row.getAttribute('data-status') !== d.status) {
        row.setAttribute('data-status', d.status);
        row.querySelector('td.status').replaceChildren(pill(d.status));
        const pick = row.querySelector('input.pick');
        if (pick) pick.disabled = !pick.hasAttribute('data-replayable') || !REPLAYABLE.has(d.status);
      }
      const setText = (sel, text) => { const c = row.querySelector(sel); if (c && c.textContent !== text) c.textContent = text; };
      setText('td.detail', d.detail || '');
      const updated = row.querySelector('td.updated');
      if (updated) updated.replaceChildren(fmtTime(d.updatedAt, true));
      const finished = row.querySelector('td.finished');
      if (finished) finished.replaceChildren(fmtTime(d.finishedAt, true));
      const attempts = byDomain.get(d.domain) || [];
      for (const c of row.querySelectorAll('[data-attempt-count], [data-attempt-count-plain]')) {
        if (c.textContent !== String(d.attempts)) c.textContent = String(d.attempts);
      }
      const history = document.getElementById(`history-${row.getAttribute('data-index')}`);
      if (history && attempts.length !== Number(history.getAttribute('data-count'))) {
        history.setAttribute('data-count', String(attempts.length));
        history.querySelector('td').replaceChildren(historyTable(attempts));
        const toggle = row.querySelector('[data-toggle-history]');
        if (toggle) toggle.hidden = attempts.length === 0;
        const plain = row.querySelector('[data-attempt-count-plain]');
        if (plain) plain.hidden = attempts.length > 0;
      }
    }
    const counts = document.getElementById('batch-counts');
    if (counts && report.domains) {
      // Counted from the domains themselves, so the pills always agree with the table below them.
      const n = {};
      for (const d of report.domains) n[d.status] = (n[d.status] || 0) + 1;
      const order = (counts.getAttribute('data-order') || '').split(',');
      counts.replaceChildren(...order.filter((st) => n[st] > 0).map((st) => pill(st, `${n[st]} ${st.replace('_', ' ')}`)));
      const failing = document.getElementById('batch-failing');
      const left = (n.failed || 0) + (n.unknown_domain || 0) + (n.retryable || 0);
      if (failing) failing.textContent = left > 0 ? `${left} domain${left === 1 ? '' : 's'} not deleted yet (failed, unknown or retrying).` : 'Nothing is failing.';
    }
  }

  function historyTable(attempts) {
    if (attempts.length === 0) return el('span', { class: 'faint' }, 'No call to the security platform yet.');
    return el('table', { class: 'inner attempts' },
      el('thead', {}, el('tr', {}, ...['#', 'Sent', 'Duration', 'Trigger', 'Instance', 'Token gen.', 'HTTP', 'Outcome', 'Reason'].map((h) => el('th', {}, h)))),
      el('tbody', {}, ...attempts.map((a, i) => el('tr', {},
        el('td', { class: 'num' }, String(i + 1)),
        el('td', {}, fmtTime(a.attemptedAt, true)),
        el('td', { class: 'num' }, `${a.durationMs} ms`),
        el('td', {}, a.trigger),
        el('td', { class: 'mono' }, a.instanceId),
        el('td', { class: 'num' }, String(a.tokenGeneration)),
        el('td', { class: 'num' }, a.httpStatus === null || a.httpStatus === undefined ? '—' : String(a.httpStatus)),
        el('td', {}, pill(a.outcome)),
        el('td', { class: 'detail' }, a.reason || '')))));
  }

  if (replayForm && messageId) {
    const picks = () => [...document.querySelectorAll('input.pick')];
    const chosen = () => picks().filter((p) => p.checked && !p.disabled).map((p) => p.value);
    const countOut = replayForm.querySelector('[data-pick-count]');
    const previewOut = document.getElementById('replay-preview');
    const confirm = document.getElementById('replay-confirm');
    const reason = document.getElementById('replay-reason');
    const start = document.getElementById('replay-start');
    const previewBtn = document.getElementById('replay-preview-btn');
    const status = document.getElementById('replay-status');
    let previewed = null; // the domains the shown preview re-opens

    const refreshCount = () => {
      const n = chosen().length;
      countOut.textContent = `${n} selected`;
      previewBtn.disabled = n === 0;
    };
    const invalidate = () => {
      previewed = null;
      previewOut.hidden = true;
      confirm.hidden = true;
      refreshCount();
    };
    const refreshStart = () => {
      start.disabled = !previewed || previewed.length === 0 || reason.value.trim() === '';
    };

    for (const p of picks()) p.addEventListener('change', invalidate);
    const all = document.querySelector('input[data-pick-all]');
    if (all) all.addEventListener('change', () => { for (const p of picks()) if (!p.disabled) p.checked = all.checked; invalidate(); });
    for (const b of replayForm.querySelectorAll('button[data-pick]')) {
      b.addEventListener('click', () => {
        const which = b.getAttribute('data-pick');
        for (const p of picks()) {
          if (p.disabled) continue;
          const st = p.closest('tr').getAttribute('data-status');
          p.checked = which === 'failed' ? st === 'failed' : which === 'all';
        }
        invalidate();
      });
    }
    reason.addEventListener('input', refreshStart);
    refreshCount();

    previewBtn.addEventListener('click', async () => {
      const domains = chosen();
      status.hidden = true;
      previewBtn.disabled = true;
      try {
        const answer = await api('POST', `/api/batches/${encodeURIComponent(messageId)}/replay`, { domains, dryRun: true });
        const reopen = answer.reopen || [];
        const skipped = answer.skipped || [];
        previewed = reopen.map((r) => r.domain);
        previewOut.replaceChildren(
          el('div', { class: 'summary', 'data-preview-summary': '' },
            `${reopen.length} domain${reopen.length === 1 ? '' : 's'} will be re-opened`,
            skipped.length ? `, ${skipped.length} skipped` : ''),
          reopen.length ? previewTable(reopen, 'Will be re-opened', 'data-preview-reopen') : el('p', { class: 'muted' }, 'Nothing to re-open.'),
          skipped.length ? previewTable(skipped, 'Skipped (not re-opened)', 'data-preview-skipped') : '');
        previewOut.hidden = false;
        confirm.hidden = reopen.length === 0;
        start.textContent = `Replay ${reopen.length} domain${reopen.length === 1 ? '' : 's'}`;
        refreshStart();
        if (!confirm.hidden) reason.focus();
      } catch (err) {
        message(status, 'error', `Preview failed: ${err.message}`);
      } finally {
        previewBtn.disabled = chosen().length === 0;
      }
    });

    replayForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!previewed || reason.value.trim() === '') { refreshStart(); return; }
      start.disabled = true;
      previewBtn.disabled = true;
      try {
        const answer = await api('POST', `/api/batches/${encodeURIComponent(messageId)}/replay`, { domains: previewed, reason: reason.value.trim() });
        const reopened = Array.isArray(answer && answer.reopened) ? answer.reopened.map((r) => (typeof r === 'string' ? r : r.domain)) : previewed;
        confirm.hidden = true;
        previewOut.hidden = true;
        for (const p of picks()) p.checked = false;
        follow(reopened);
      } catch (err) {
        message(status, 'error', `Replay refused: ${err.message}`);
        start.disabled = false;
        previewBtn.disabled = false;
      }
    });

    function previewTable(rows, caption, marker) {
      return el('table', { class: 'inner', [marker]: '' },
        el('caption', { class: 'muted' }, caption),
        el('thead', {}, el('tr', {}, el('th', {}, 'Domain'), el('th', {}, 'Status now'), el('th', {}, 'Why'), el('th', {}, 'Detail'))),
        el('tbody', {}, ...rows.map((r) => el('tr', { 'data-domain': r.domain },
          el('td', { class: 'mono' }, r.domain), el('td', {}, r.status ? pill(r.status) : ''),
          el('td', {}, r.why || r.reason || ''), el('td', { class: 'detail' }, r.detail || '')))));
    }

    /** Follows the re-opened domains until each has ended, updating the table as answers come. */
    function follow(domains) {
      const watched = new Set(domains);
      const bar = el('progress', { max: String(watched.size), value: '0' });
      const text = el('span', {}, '');
      const live = el('span', { class: 'live' }, 'live');
      status.replaceChildren(el('div', { class: 'message info', 'data-replay-progress': '' }, text, ' ', bar, ' ', live));
      status.hidden = false;
      const render = (report) => {
        const statuses = new Map((report.domains || []).map((d) => [d.domain, d.status]));
        const ended = [...watched].filter((d) => statuses.has(d) && !OPEN.has(statuses.get(d)));
        const ok = ended.filter((d) => statuses.get(d) === 'succeeded').length;
        bar.value = ended.length;
        if (ended.length === watched.size) {
          status.replaceChildren(el('div', { class: `message ${ok === watched.size ? 'ok' : 'error'}`, 'data-replay-done': '' },
            `Replay finished: ${ok} of ${watched.size} succeeded`,
            ok === watched.size ? '. ' : `, ${watched.size - ok} ended otherwise (see the table). `,
            el('a', { href: window.location.pathname }, 'Reload'), ' for the alarms and the attempt counts as stored.'));
          return true;
        }
        text.textContent = `Replaying: ${ended.length} of ${watched.size} domains ended (${ok} succeeded)`;
        return false;
      };
      poll(async () => {
        const report = await api('GET', `/api/batches/${encodeURIComponent(messageId)}`);
        applyReport(report);
        return render(report);
      }, (paused) => {
        live.classList.toggle('paused', paused);
        live.textContent = paused ? 'paused while this tab is hidden' : 'live';
      }).catch((err) => message(status, 'error', `Stopped following the replay: ${err.message}`));
    }
  }

  // ---------------------------------------------------------------- alarms

  for (const form of document.querySelectorAll('form[data-alarm-step]')) {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const step = form.getAttribute('data-alarm-step');
      const id = form.getAttribute('data-alarm-id');
      const note = form.querySelector('textarea[name="note"]').value.trim();
      const out = form.querySelector('[data-step-status]');
      if (step === 'resolve' && !note) { message(out, 'error', 'Say what fixed it: a note is required to resolve.'); return; }
      const button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        await api('POST', `/api/alarms/${encodeURIComponent(id)}/${step}`, note ? { note } : {});
        message(out, 'ok', step === 'resolve' ? 'Resolved.' : 'Acknowledged.');
        // The server's page is the truth (who, when, the note): show the alarm in its new tab.
        window.location.assign(`/console/alarms?state=${step === 'resolve' ? 'resolved' : 'acknowledged'}#alarm-${encodeURIComponent(id)}`);
      } catch (err) {
        message(out, 'error', err.message);
        button.disabled = false;
      }
    });
  }

  // ---------------------------------------------------------------- bulk replay

  const bulkForm = document.getElementById('bulk-form');
  if (bulkForm) {
    const out = document.getElementById('bulk-preview');
    const confirm = document.getElementById('bulk-confirm');
    const reason = document.getElementById('bulk-reason');
    const start = document.getElementById('bulk-start');
    const status = document.getElementById('bulk-status');
    let previewedFilter = null;

    const filter = () => {
      // A bulk replay only ever re-opens failures: the checkbox is shown (checked, fixed) to say so.
      const f = { hasFailures: true };
      const fd = new window.FormData(bulkForm);
      for (const key of ['since', 'until']) {
        const v = String(fd.get(key) || '').trim();
        // The inputs are labelled UTC: "2026-11-24 08:00" is sent as 2026-11-24T08:00Z.
        if (v) f[key] = /Z$|[+-]\d\d:?\d\d$/.test(v) ? v : `${v.replace(' ', 'T')}${/T|\s/.test(v) ? '' : 'T00:00'}Z`;
      }
      const m = String(fd.get('detailMatches') || '').trim();
      if (m) f.detailMatches = m;
      return f;
    };
    const invalidate = () => { previewedFilter = null; out.hidden = true; confirm.hidden = true; };
    for (const input of bulkForm.querySelectorAll('[data-filter]')) input.addEventListener('input', invalidate);
    reason.addEventListener('input', () => { start.disabled = !previewedFilter || reason.value.trim() === ''; });

    document.getElementById('bulk-preview-btn').addEventListener('click', async () => {
      status.hidden = true;
      // A mistyped time is shown at its input (the pattern), before anything is asked of the server.
      for (const input of bulkForm.querySelectorAll('[data-filter]')) if (!input.reportValidity()) return;
      const f = filter();
      try {
        const preview = await api('POST', '/api/replays/bulk', { filter: f, dryRun: true });
        previewedFilter = f;
        const count = Number(preview.batchCount ?? preview.count ?? 0);
        const domains = Number(preview.domainCount ?? 0);
        const tooMany = preview.maxBatches !== undefined && count > preview.maxBatches;
        const parts = [el('div', { class: 'summary', 'data-bulk-count': String(count) },
          `${count} batch${count === 1 ? '' : 'es'} match, ${domains} failed domain${domains === 1 ? '' : 's'} to re-open`)];
        if (tooMany) parts.push(el('div', { class: 'message error' }, `More than ${preview.maxBatches} batches: narrow the filter (time range, detail).`));
        const sample = preview.batches || [];
        if (sample.length) {
          parts.push(el('table', { class: 'inner', 'data-bulk-batches': '' },
            el('thead', {}, el('tr', {}, el('th', {}, 'messageId'), el('th', {}, 'Received'), el('th', { class: 'num' }, 'Domains'), el('th', {}, 'For example'))),
            el('tbody', {}, ...sample.map((b) => el('tr', { 'data-message-id': b.messageId },
              el('td', {}, el('a', { class: 'mono', href: `/console/batches/${encodeURIComponent(b.messageId)}` }, b.messageId)),
              el('td', {}, fmtTime(b.createdAt)),
              el('td', { class: 'num' }, String(b.domainCount ?? '')),
              el('td', { class: 'detail' }, (b.domains || []).slice(0, 3).map((d) => `${d.domain} (${d.detail || d.status})`).join(', ')))))));
          if (count > sample.length) parts.push(el('p', { class: 'muted' }, `… and ${count - sample.length} more batches`));
        }
        out.replaceChildren(...parts);
        out.hidden = false;
        confirm.hidden = count === 0 || tooMany;
        start.disabled = reason.value.trim() === '';
      } catch (err) {
        message(status, 'error', `Preview failed: ${err.message}`);
      }
    });

    bulkForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!previewedFilter || reason.value.trim() === '') return;
      start.disabled = true;
      try {
        const answer = await api('POST', '/api/replays/bulk', { filter: previewedFilter, reason: reason.value.trim() });
        const started = answer.bulkReplay || answer;
        window.location.assign(`/console/replays/${encodeURIComponent(started.id)}`);
      } catch (err) {
        message(status, 'error', `Bulk replay refused: ${err.message}`);
        start.disabled = false;
      }
    });
  }

  const bulkProgress = document.getElementById('bulk-progress');
  if (bulkProgress) {
    const id = bulkProgress.getAttribute('data-replay-id');
    const cancel = document.getElementById('bulk-cancel');
    const live = bulkProgress.querySelector('.live');
    const set = (name, value) => {
      for (const node of bulkProgress.querySelectorAll(`[data-field="${name}"]`)) {
        if (node.tagName === 'PROGRESS') node.value = Number(value) || 0;
        else node.textContent = value === null || value === undefined ? '—' : String(value);
      }
    };
    const ended = (s) => ['done', 'cancelled', 'failed'].includes(s);
    const apply = (job) => {
      for (const [k, v] of Object.entries(job)) if (typeof v !== 'object' || v === null) set(k, v);
      for (const node of bulkProgress.querySelectorAll('[data-field-time]')) node.replaceChildren(fmtTime(job[node.getAttribute('data-field-time')]));
      const st = bulkProgress.querySelector('[data-field-status]');
      if (st && job.status) st.replaceChildren(pill(job.status));
      const bar = bulkProgress.querySelector('progress');
      if (bar && job.total !== undefined) bar.max = Math.max(1, Number(job.total));
      if (cancel) cancel.hidden = ended(job.status);
      return ended(job.status);
    };
    if (cancel) {
      cancel.addEventListener('click', async () => {
        cancel.disabled = true;
        try { apply((await api('POST', `/api/replays/bulk/${encodeURIComponent(id)}/cancel`, {})).bulkReplay); } catch (err) {
          message(document.getElementById('bulk-status'), 'error', `Cancel refused: ${err.message}`);
          cancel.disabled = false;
        }
      });
    }
    if (!ended(bulkProgress.getAttribute('data-status'))) {
      poll(async () => apply((await api('GET', `/api/replays/bulk/${encodeURIComponent(id)}`)).bulkReplay), (paused) => {
        if (!live) return;
        live.classList.toggle('paused', paused);
        live.textContent = paused ? 'paused while this tab is hidden' : 'live';
      }).then(() => { if (live) live.hidden = true; }, () => undefined);
    } else if (live) {
      live.hidden = true;
    }
  }
}());
