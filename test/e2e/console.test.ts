/**
 * The operators' console in a real browser: Debian's Chromium driven by playwright-core against the real
 * service (in-process, API + worker, real PostgreSQL, Redis and RabbitMQ) and the security-platform
 * simulator. Every test fails on any browser console error or uncaught page error (CSP violations
 * included), and every browser and service is closed in afterEach (a test that leaves one open fails).
 * Screenshots of the main pages go to E2E_SCREENSHOT_DIR (default <tmp>/pcp-e2e-screenshots).
 */
import { readFile } from 'node:fs/promises';
import { expect } from 'chai';
import type { Page } from 'playwright-core';
import { CONSOLE_CSP } from '../../src/console/security.js';
import { callbackBody, domainsFor, messageId, postCallback, rand, waitFor } from '../helpers/env.js';
import { launchBrowser, screenshotDir, type TestBrowser } from './helpers/browser.js';
import { OPERATOR, VIEWER, startRig, type Rig } from './helpers/rig.js';

type Person = typeof OPERATOR | typeof VIEWER;
interface Report { counts: Record<string, number>; domains: { domain: string; status: string }[] }

describe('operators console in a browser', function () {
  this.timeout(120_000);
  let opened: { name: string; close(): Promise<void>; isClosed(): boolean | Promise<boolean> }[] = [];
  const shots: string[] = [];

  async function rig(overrides: Record<string, string> = {}): Promise<Rig> {
    const r = await startRig(overrides);
    opened.push({ name: 'service and simulator', close: () => r.close(), isClosed: () => r.isClosed() });
    return r;
  }

  async function browser(): Promise<TestBrowser> {
    const b = await launchBrowser();
    opened.push({ name: 'chromium', close: () => b.close(), isClosed: () => b.isClosed() });
    return b;
  }

  async function shot(b: TestBrowser, name: string): Promise<void> {
    shots.push(await b.screenshot(name));
  }

  /** The end of every test: no console error, no page error, in any page the browser opened. */
  function expectNoBrowserErrors(...browsers: TestBrowser[]): void {
    expect(browsers.flatMap((b) => b.errors), 'browser console errors / page errors').to.deep.equal([]);
  }

  afterEach(async function () {
    const all = opened;
    opened = [];
    for (const r of [...all].reverse()) await r.close();
    const left: string[] = [];
    for (const r of all) if (!(await r.isClosed())) left.push(r.name);
    // A browser or a server still open after close() is a leak: fail loudly rather than poison later tests.
    if (left.length > 0) throw new Error(`still open after "${this.currentTest?.title}": ${left.join(', ')}`);
  });

  after(() => {
    if (shots.length > 0) process.stdout.write(`\n  console screenshots (${shots.length}) in ${screenshotDir()}\n`);
  });

  async function signIn(page: Page, url: string, who: Person): Promise<void> {
    await page.goto(`${url}/console/login`);
    await page.fill('#name', who.name);
    await page.fill('#password', who.password);
    await Promise.all([page.waitForURL((u) => u.pathname.startsWith('/console') && u.pathname !== '/console/login'), page.click('#login-form button[type=submit]')]);
  }

  /** What document.visibilityState says, and the event a browser fires when a tab is hidden or shown. */
  async function setVisibility(page: Page, state: 'hidden' | 'visible'): Promise<void> {
    await page.evaluate(`Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => '${state}' });
      document.dispatchEvent(new Event('visibilitychange'));`);
  }

  async function report(r: Rig, id: string): Promise<Report> {
    const res = await r.api<Report>('GET', `/api/batches/${id}`);
    if (res.status !== 200) throw new Error(`GET /api/batches/${id}: ${res.status}`);
    return res.body;
  }

  /** Waits until no domain of the batch is pending, in progress or retryable, and returns the report. */
  function settled(r: Rig, id: string): Promise<Report> {
    return waitFor(`batch ${id} to settle`, async () => {
      const rep = await report(r, id);
      return rep.domains.every((d) => !['pending', 'in_progress', 'retryable'].includes(d.status)) ? rep : undefined;
    }, 60_000);
  }

  /** A batch whose first call answers 503 (retried) and whose `failing` domains the platform then refuses. */
  async function failingBatch(r: Rig, n: number, failing: number): Promise<{ id: string; domains: string[] }> {
    const id = messageId();
    const domains = domainsFor(`e2e-${rand()}`, n);
    r.sim.setOptions({ failIds: domains.slice(0, failing).map((d) => `uid-${d}`), failNextDeletes: 1 });
    await r.callback(id, domains);
    const rep = await settled(r, id);
    // From the domains, not `counts`: the report reads the two on separate connections, a moment apart.
    expect(rep.domains.filter((d) => d.status === 'failed').map((d) => d.domain).sort(), JSON.stringify(rep.domains)).to.deep.equal(domains.slice(0, failing).sort());
    return { id, domains };
  }

  it('when nobody is signed in and a console page is opened, then the browser is sent to the login page and comes back after signing in', async () => {
    const r = await rig();
    const b = await browser();
    const { page } = b;

    const first = await page.goto(`${r.url}/console/alarms?state=resolved`);
    expect(new URL(page.url()).pathname).to.equal('/console/login');
    expect(new URL(page.url()).searchParams.get('next')).to.equal('/console/alarms?state=resolved');
    expect(first!.status()).to.equal(200);
    expect(first!.headers()['content-security-policy']).to.equal(CONSOLE_CSP);
    await page.waitForSelector('#login-form');
    await shot(b, '01-login');

    await page.fill('#name', OPERATOR.name);
    await page.fill('#password', OPERATOR.password);
    const [landed] = await Promise.all([page.waitForURL(`${r.url}/console/alarms?state=resolved`), page.click('#login-form button[type=submit]')]);
    void landed;
    expect(await page.textContent('.user .name')).to.equal(OPERATOR.name);
    expect(await page.textContent('.user [data-role]')).to.equal('operator');
    const headers = (await page.reload())!.headers();
    expect(headers['content-security-policy']).to.equal(CONSOLE_CSP);
    expect(headers['x-content-type-options']).to.equal('nosniff');
    expect(headers['referrer-policy']).to.equal('no-referrer');
    expect(headers['cache-control']).to.equal('no-store');
    expectNoBrowserErrors(b);
  });

  it('when an operator searches a messageId and then a domain, then each opens its page, and a pasted list opens a results page', async () => {
    const r = await rig();
    const id = messageId();
    const domains = domainsFor(`e2e-${rand()}`, 3);
    await r.callback(id, domains);
    await settled(r, id);
    await postCallback(r.url, callbackBody(id, domains)); // the vendor calls the same messageId back again
    const b = await browser();
    const { page } = b;
    await signIn(page, r.url, OPERATOR);
    expect(new URL(page.url()).pathname).to.equal('/console');
    expect(await page.getAttribute(`#batch-list tr[data-message-id="${id}"]`, 'data-message-id')).to.equal(id);
    for (const dep of ['postgres', 'redis', 'rabbitmq']) expect(await page.textContent(`#health [data-dependency="${dep}"] .value`)).to.equal('ready');
    await shot(b, '02-overview');

    await page.fill('input[data-search]', id);
    await Promise.all([page.waitForURL(`${r.url}/console/batches/${id}`), page.press('input[data-search]', 'Enter')]);
    expect(await page.textContent('h1')).to.equal(id);
    expect(await page.locator('#domain-table tr[data-status="succeeded"]').count()).to.equal(3);
    expect(await page.locator('#callbacks details.callback').count()).to.equal(2);
    expect(await page.locator('#callbacks details.callback[data-callback="2"] [data-repeat]').count(), 'the second callback is flagged').to.equal(1);

    await page.fill('input[data-search]', domains[1]!);
    await Promise.all([page.waitForURL(`${r.url}/console/domains/${domains[1]}`), page.press('input[data-search]', 'Enter')]);
    expect(await page.textContent('h1')).to.equal(domains[1]);
    expect(await page.textContent('#inventory')).to.contain(`uid-${domains[1]}`).and.to.contain('deleted');
    expect(await page.locator(`#batches a[href="/console/batches/${id}"]`).count()).to.be.greaterThan(0);
    await shot(b, '04-domain');

    await page.fill('input[data-search]', `${id}, ${domains[2]!.toUpperCase()} nothing.example.org pm${'0'.repeat(32)}`);
    await Promise.all([page.waitForURL((u) => u.pathname === '/console/find'), page.press('input[data-search]', 'Enter')]);
    const rows = page.locator('#find-results tbody tr');
    expect(await rows.count()).to.equal(4);
    expect(await page.locator(`#find-results tr[data-term="${id}"] a[href="/console/batches/${id}"]`).count()).to.equal(1);
    expect(await page.locator(`#find-results tr[data-term="${domains[2]}"] a[href="/console/domains/${domains[2]}"]`).count()).to.equal(1);
    expect(await page.textContent(`#find-results tr[data-term="nothing.example.org"]`)).to.contain('not in the inventory');
    expectNoBrowserErrors(b);
  });

  it('when domains fail at the security platform, then the batch page shows them with their attempt history, and a replay with a reason makes them succeed while the page follows it', async () => {
    const r = await rig();
    const { id, domains } = await failingBatch(r, 4, 2);
    const b = await browser();
    const { page } = b;
    await signIn(page, r.url, OPERATOR);
    await page.goto(`${r.url}/console/batches/${id}`);

    const row = (d: string) => `#domain-table tr[data-domain="${d}"]`;
    for (const d of domains.slice(0, 2)) {
      expect(await page.getAttribute(row(d), 'data-status')).to.equal('failed');
      expect(await page.textContent(`${row(d)} td.detail`)).to.contain('user not found');
      expect(await page.isChecked(`${row(d)} input.pick`), 'failed domains are preselected').to.equal(true);
    }
    for (const d of domains.slice(2)) {
      expect(await page.getAttribute(row(d), 'data-status')).to.equal('succeeded');
      expect(await page.isDisabled(`${row(d)} input.pick`), 'a succeeded domain cannot be picked').to.equal(true);
    }
    // The history of a failed domain: the 503 that was retried, then the platform's refusal.
    await page.click(`${row(domains[0]!)} [data-toggle-history]`);
    const history = page.locator('#history-0 table.attempts tbody tr');
    await history.first().waitFor();
    expect(await history.count()).to.equal(2);
    expect(await history.nth(0).textContent()).to.contain('503').and.to.contain('retryable');
    expect(await history.nth(1).textContent()).to.contain('200').and.to.contain('failed').and.to.contain('user not found');
    expect(await page.textContent('#callbacks')).to.contain(`${domains.length} items`);
    expect(await page.textContent('#alarms')).to.contain('BATCH_FAILURES');
    await shot(b, '03-batch-attempts');

    // The platform is fixed: preview shows exactly the two failed domains, then the replay runs live.
    r.sim.setOptions({ failIds: [] });
    await page.click('#replay-preview-btn');
    await page.waitForSelector('[data-preview-summary]');
    expect(await page.textContent('[data-preview-summary]')).to.contain('2 domains will be re-opened');
    const reopen = await page.locator('[data-preview-reopen] tbody tr').evaluateAll((rows) => rows.map((tr) => tr.getAttribute('data-domain')));
    expect(reopen.sort()).to.deep.equal(domains.slice(0, 2).sort());
    expect(await page.isDisabled('#replay-start'), 'no replay without a reason').to.equal(true);
    await page.fill('#replay-reason', 'e2e: platform restored the users');
    await shot(b, '07-replay-preview');

    // Nobody looking: the page waits for the tab to be shown again before it asks the server anything.
    const polls: string[] = [];
    page.on('request', (req) => { if (req.method() === 'GET' && new URL(req.url()).pathname === `/api/batches/${id}`) polls.push(req.url()); });
    await setVisibility(page, 'hidden');
    await page.click('#replay-start');
    await page.waitForSelector('[data-replay-progress] .live.paused');
    expect(polls, 'requests while the tab is hidden').to.deep.equal([]);
    await setVisibility(page, 'visible');
    await page.waitForSelector('[data-replay-done]', { timeout: 60_000 });
    expect(polls.length).to.be.greaterThan(0);
    expect(await page.textContent('[data-replay-done]')).to.contain('2 of 2 succeeded');
    for (const d of domains) expect(await page.getAttribute(row(d), 'data-status')).to.equal('succeeded');
    // The page's table was updated from the live answers, and the ledger agrees.
    expect((await report(r, id)).domains.map((d) => d.status)).to.deep.equal(Array(4).fill('succeeded'));

    await page.goto(`${r.url}/console/audit`);
    const entry = page.locator('#audit-table tr[data-action="replay"]').first();
    expect(await entry.textContent()).to.contain(OPERATOR.name).and.to.contain('e2e: platform restored the users').and.to.contain(domains[0]);
    await shot(b, '06-audit');
    expectNoBrowserErrors(b);
  });

  it('when an operator acknowledges and then resolves an alarm, then each step shows who did it and the note', async () => {
    const r = await rig();
    const { id } = await failingBatch(r, 2, 1);
    const alarms = await waitFor('the BATCH_FAILURES alarm', async () => {
      const res = await r.api<{ alarms: { id: number; alarmType: string }[] }>('GET', `/api/alarms?messageId=${id}`);
      return res.body.alarms.find((a) => a.alarmType === 'BATCH_FAILURES');
    });
    const b = await browser();
    const { page } = b;
    await signIn(page, r.url, OPERATOR);
    await page.goto(`${r.url}/console/alarms`);
    const card = (state: string) => page.locator(`#alarm-list[data-state="${state}"] article[data-alarm-id="${alarms.id}"]`);
    expect(await card('open').locator(`a[href="/console/batches/${id}"]`).count()).to.equal(1);

    await card('open').locator('form[data-alarm-step="acknowledge"] textarea').fill('looking into it');
    await Promise.all([page.waitForURL((u) => u.searchParams.get('state') === 'acknowledged'), card('open').locator('form[data-alarm-step="acknowledge"] button').click()]);
    expect(await card('acknowledged').locator('[data-acknowledged]').textContent()).to.contain(OPERATOR.name);
    expect(await card('acknowledged').locator('[data-ack-note]').textContent()).to.contain('looking into it');

    await card('acknowledged').locator('form[data-alarm-step="resolve"] textarea').fill('replayed after the platform fix');
    await Promise.all([page.waitForURL((u) => u.searchParams.get('state') === 'resolved'), card('acknowledged').locator('form[data-alarm-step="resolve"] button').click()]);
    expect(await card('resolved').locator('[data-resolved]').textContent()).to.contain(OPERATOR.name);
    expect(await card('resolved').locator('[data-resolve-note]').textContent()).to.contain('replayed after the platform fix');
    expect(await card('resolved').locator('form').count(), 'a resolved alarm has no next step').to.equal(0);
    await shot(b, '05-alarms');

    const trail = await r.api<{ entries: { action: string; actor: string; reason: string | null }[] }>('GET', '/api/audit?limit=5');
    expect(trail.body.entries.slice(0, 2).map((e) => [e.action, e.actor, e.reason])).to.deep.equal([
      ['resolve', OPERATOR.name, 'replayed after the platform fix'], ['acknowledge', OPERATOR.name, 'looking into it'],
    ]);
    expectNoBrowserErrors(b);
  });

  it('when an operator exports a batch as CSV, then the downloaded file lists the domains not deleted', async () => {
    const r = await rig();
    const { id, domains } = await failingBatch(r, 3, 1);
    const b = await browser();
    const { page } = b;
    await signIn(page, r.url, OPERATOR);
    await page.goto(`${r.url}/console/batches/${id}`);
    // The overview's "has failures" filter lists it, and nothing that has none.
    await page.goto(`${r.url}/console`);
    await page.check('#batch-filter input[name="hasFailures"]');
    await Promise.all([page.waitForURL((u) => u.searchParams.get('hasFailures') === '1'), page.click('#batch-filter button[type="submit"]')]);
    expect(await page.locator(`#batch-list tr[data-message-id="${id}"]`).count()).to.equal(1);
    const states = await page.locator('#batch-list tbody td[data-state]').evaluateAll((cells) => cells.map((c) => c.getAttribute('data-state')));
    expect(states.filter((st) => st === 'done'), 'no batch without failures').to.deep.equal([]);

    await page.goto(`${r.url}/console/batches/${id}`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('a[data-export="csv"]')]);
    expect(download.suggestedFilename()).to.equal(`batch-${id}-not-deleted.csv`);
    const csv = await readFile(await download.path(), 'utf8');
    const lines = csv.trimEnd().split('\r\n');
    expect(lines[0]).to.equal('domain,status,detail,user_id_cdn,attempts,updated');
    expect(lines).to.have.length(2);
    expect(lines[1]).to.match(new RegExp(`^${domains[0]!.replaceAll('.', '\\.')},failed,security platform: user not found,uid-${domains[0]!.replaceAll('.', '\\.')},2,`));
    expectNoBrowserErrors(b);
  });

  it('when an operator previews a bulk replay by filter, then the count comes first, and once started its progress is followed to the end', async () => {
    const r = await rig();
    // Second resolution: the filter's lower bound, so batches of earlier tests (same database) stay out.
    const since = new Date(Math.floor(Date.now() / 1000) * 1000);
    const first = await failingBatch(r, 2, 1);
    const second = await failingBatch(r, 3, 2);
    const b = await browser();
    const { page } = b;
    await signIn(page, r.url, OPERATOR);
    await page.goto(`${r.url}/console/replays`);
    await page.fill('input[name="since"]', since.toISOString().slice(0, 19));
    await page.fill('input[name="detailMatches"]', 'user not found');
    await page.click('#bulk-preview-btn');
    await page.waitForSelector('[data-bulk-count]');
    expect(await page.getAttribute('[data-bulk-count]', 'data-bulk-count')).to.equal('2');
    expect(await page.textContent('[data-bulk-count]')).to.contain('3 failed domains');
    const listed = await page.locator('[data-bulk-batches] tbody tr').evaluateAll((rows) => rows.map((tr) => tr.getAttribute('data-message-id')));
    expect(listed).to.deep.equal([first.id, second.id]);
    await shot(b, '08-bulk-replay-preview');

    r.sim.setOptions({ failIds: [] });
    await page.fill('#bulk-reason', 'e2e: the platform outage is over');
    await Promise.all([page.waitForURL(/\/console\/replays\/\d+$/), page.click('#bulk-start')]);
    await page.waitForSelector('#bulk-progress [data-field-status] [data-status="done"]', { timeout: 60_000 });
    expect(await page.textContent('#bulk-progress [data-field="reopened"]')).to.equal('3');
    expect(await page.isHidden('#bulk-cancel'), 'a finished bulk replay cannot be cancelled').to.equal(true);
    await shot(b, '09-bulk-replay-progress');
    for (const { id } of [first, second]) {
      const rep = await settled(r, id);
      expect(rep.domains.filter((d) => d.status !== 'succeeded')).to.deep.equal([]);
    }
    expectNoBrowserErrors(b);
  });

  it('when callers\' text holds markup, then every page shows it as text and nothing of it runs', async () => {
    const r = await rig();
    const id = messageId();
    const [d0, d1] = domainsFor(`e2e-${rand()}`, 2) as [string, string];
    const hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>';
    await r.callback(id, [d0, d1], {
      messageId: id, note: hostile,
      data: [{ percent: 1, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName: d0 }, { percent: 1, process: false, reqType: 'SELF_DOMAIN_ADD', targetName: d1 }],
    });
    await settled(r, id);
    const alarm = await waitFor('an alarm of the batch', async () =>
      (await r.api<{ alarms: { id: number }[] }>('GET', `/api/alarms?messageId=${id}`)).body.alarms[0]);
    expect((await r.api('POST', `/api/alarms/${alarm.id}/acknowledge`, { note: 'on it <b>now</b>' })).status).to.equal(200);

    const b = await browser();
    const { page } = b;
    await signIn(page, r.url, OPERATOR);
    await page.goto(`${r.url}/console/batches/${id}`);
    expect(await page.textContent(`#domain-table tr[data-domain="${d1}"]`)).to.contain('SELF_DOMAIN_ADD');
    await page.click('#callbacks details summary');
    expect(await page.textContent('#callbacks pre')).to.contain('<img src=x onerror=').and.to.contain('<script>window.__pwned=2</script>');
    expect(await page.locator('main img, main script').count()).to.equal(0);

    await page.goto(`${r.url}/console/alarms?state=acknowledged`);
    expect(await page.textContent(`#alarm-${alarm.id} [data-ack-note]`)).to.contain('on it <b>now</b>');
    expect(await page.locator(`#alarm-${alarm.id} [data-ack-note] b`).count()).to.equal(0);

    await page.fill('input[data-search]', '<svg onload="window.__pwned=3"> x');
    await Promise.all([page.waitForURL((u) => u.pathname === '/console/find'), page.press('input[data-search]', 'Enter')]);
    expect(await page.textContent('#find-results')).to.contain('onload="window.__pwned=3');
    expect(await page.locator('main svg').count()).to.equal(0);
    expect(await page.inputValue('input[data-search]')).to.equal('<svg onload="window.__pwned=3"> x');
    expect(await page.evaluate('window.__pwned')).to.equal(undefined);
    expectNoBrowserErrors(b);
  });

  it('when a viewer opens a failed batch, then no replay control is shown and a forced replay POST is refused with 403', async () => {
    const r = await rig();
    const { id, domains } = await failingBatch(r, 2, 1);
    const b = await browser();
    const { page } = b;
    await signIn(page, r.url, VIEWER);
    await page.goto(`${r.url}/console/batches/${id}`);
    expect(await page.textContent('.user [data-role]')).to.equal('viewer');
    expect(await page.getAttribute(`#domain-table tr[data-domain="${domains[0]}"]`, 'data-status')).to.equal('failed');
    expect(await page.locator('#replay-form').count()).to.equal(0);
    expect(await page.locator('input.pick').count()).to.equal(0);

    // Forced, with the viewer's own session and CSRF token: the server refuses whatever the page shows.
    const csrf = await page.getAttribute('meta[name="csrf-token"]', 'content');
    const cookies = await b.context.cookies(r.url);
    const res = await fetch(`${r.url}/api/batches/${id}/replay`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json', 'x-csrf-token': csrf ?? '', origin: r.url,
        cookie: cookies.map((c) => `${c.name}=${c.value}`).join('; '),
      },
      body: JSON.stringify({ domains: [domains[0]], reason: 'viewer tries' }),
    });
    expect(res.status).to.equal(403);
    expect((await report(r, id)).domains.find((d) => d.domain === domains[0])!.status).to.equal('failed');
    await page.goto(`${r.url}/console/alarms`);
    expect(await page.locator('#alarm-list article').count(), 'the batch has an open alarm').to.be.greaterThan(0);
    expect(await page.locator('form[data-alarm-step]').count(), 'a viewer cannot acknowledge or resolve').to.equal(0);
    expectNoBrowserErrors(b);
  });

});
