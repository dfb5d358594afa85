/**
 * The worker started exactly as in production (the README's `node dist/src/main.js`, and `npm start`), in a
 * process group of its own, under the signals a process manager really sends: SIGTERM to the whole group
 * (systemd's KillMode=control-group, a terminal's Ctrl-C), a second SIGTERM during the drain, and a drain
 * that runs into SHUTDOWN_TIMEOUT_MS. In every case what the platform answered is recorded before the
 * exit, and no domain is left claimed for another worker to delete a second time.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import type pg from 'pg';
import { ROOT, type StartCommand } from '../../scripts/service-process.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import {
  SECPLAT_PASSWORD, callbackBody, cleanupNames, domainsFor, messageId, postCallback, seedInventory, spawnService,
  statusCounts, testDb, testEnv, waitFor, type ServiceProcess,
} from '../helpers/env.js';

const run = promisify(execFile);
const uidOf = (d: string) => `uid-${d}`;

describe('production start under a process manager\'s signals', function () {
  let sim: Simulator;
  let db: pg.Pool;
  let env: Record<string, string>;
  let services: ServiceProcess[] = [];

  before(async function () {
    this.timeout(120_000);
    // The production command runs the compiled JavaScript; build it once, as a deployment would.
    await run('npm', ['run', '--silent', 'build'], { cwd: ROOT });
  });

  beforeEach(async () => {
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 300 });
    db = testDb();
    env = testEnv({
      SECPLAT_BASE_URL: (await sim.start()).url, SECPLAT_BATCH_SIZE: '5', SECPLAT_CONCURRENCY: '4', SHUTDOWN_TIMEOUT_MS: '10000',
    });
  });

  afterEach(async () => {
    for (const s of services) {
      if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGKILL');
      await s.exited;
    }
    services = [];
    await sim.stop();
    await db.end();
    await cleanupNames(env);
  });

  async function spawn(extra: Record<string, string>, command: StartCommand = 'sources', detached = false): Promise<ServiceProcess> {
    const s = await spawnService({ ...env, ...extra }, { command, detached });
    services.push(s);
    return s;
  }

  /** An API process, a worker started by `command` in its own process group, and a 300-domain callback in progress. */
  async function workerMidBatch(command: StartCommand) {
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 300);
    await seedInventory(db, domains, uidOf);
    const api = await spawn({ ROLE: 'api', INSTANCE_ID: 'api' });
    const worker = await spawn({ ROLE: 'worker', INSTANCE_ID: 'first' }, command, true);
    expect((await postCallback(api.url, callbackBody(id, domains))).status).to.equal(200);
    await waitFor('the worker mid-batch', async () => ((await statusCounts(db, id)).succeeded ?? 0) >= 40, 30_000);
    await waitFor('calls in flight', async () => sim.stats().inFlightDeletes > 0, 10_000);
    return { id, domains, worker };
  }

  /** Deletions the platform made for these domains, by domain. */
  function deletions(domains: string[]): Map<string, number> {
    const counts = sim.stats().deletedCounts;
    return new Map(domains.flatMap((d) => (counts[uidOf(d)] ? [[d, counts[uidOf(d)]!] as [string, number]] : [])));
  }

  async function domainRows(id: string): Promise<{ domain: string; status: string; detail: string | null }[]> {
    return (await db.query<{ domain: string; status: string; detail: string | null }>(
      'SELECT domain, status, detail FROM batch_domain WHERE message_id = $1', [id])).rows;
  }

  /**
   * Read once the worker has exited (every query it sent has been answered): nothing is left claimed and
   * the ledger's successes are exactly the platform's deletions.
   */
  async function assertRecordedAtExit(id: string, domains: string[]): Promise<number> {
    const rows = await domainRows(id);
    expect(rows.filter((r) => r.status === 'in_progress').map((r) => r.domain), 'domains left claimed').to.deep.equal([]);
    const succeeded = rows.filter((r) => r.status === 'succeeded').map((r) => r.domain).sort();
    expect(succeeded.length, 'the signal came mid-batch').to.be.below(300);
    expect([...deletions(domains).keys()].sort(), 'deletions at the platform = successes in the ledger').to.deep.equal(succeeded);
    return succeeded.length;
  }

  /** Another worker finishes the batch; nothing the first one had deleted is deleted again. */
  async function assertFinishedOnce(id: string, domains: string[]): Promise<void> {
    await spawn({ ROLE: 'worker', INSTANCE_ID: 'second' });
    await waitFor('all 300 succeeded', async () => (await statusCounts(db, id)).succeeded === 300, 60_000);
    const twice = [...deletions(domains)].filter(([, n]) => n > 1).map(([d]) => d);
    expect(twice, 'domains deleted twice').to.deep.equal([]);
    expect(deletions(domains).size).to.equal(300);
  }

  it('when the process group of `node dist/src/main.js` gets SIGTERM mid-batch, then the worker drains, records every answered call, exits 0 within the deadline, and nothing is deleted twice', async () => {
    const { id, domains, worker } = await workerMidBatch('production');
    const started = Date.now();
    worker.signalGroup('SIGTERM');
    const code = await worker.exited;
    expect(code, 'exit code (0 = graceful)').to.equal(0);
    expect(Date.now() - started, 'exit within SHUTDOWN_TIMEOUT_MS').to.be.below(Number(env.SHUTDOWN_TIMEOUT_MS));
    expect(worker.logs.join('\n')).to.not.include('release failed');
    await assertRecordedAtExit(id, domains);
    await assertFinishedOnce(id, domains);
  });

  it('when the node process gets a second SIGTERM during its drain, then the second is logged and ignored, and the drain completes with exit 0', async () => {
    const { id, domains, worker } = await workerMidBatch('production');
    const started = Date.now();
    process.kill(worker.pid, 'SIGTERM');
    // The second signal arrives once the first is being handled (two at once would merge into one).
    await waitFor('the drain started', async () => worker.logs.some((l) => l.includes('"shutting down"')), 10_000);
    process.kill(worker.pid, 'SIGTERM');
    const code = await worker.exited;
    expect(code, 'exit code (0 = graceful)').to.equal(0);
    expect(Date.now() - started, 'exit within SHUTDOWN_TIMEOUT_MS').to.be.below(Number(env.SHUTDOWN_TIMEOUT_MS));
    expect(worker.logs.filter((l) => l.includes('signal ignored')), 'the second SIGTERM').to.have.length(1);
    await assertRecordedAtExit(id, domains);
    await assertFinishedOnce(id, domains);
  });

  it('when `npm start` runs the worker and its process group gets SIGTERM, then npm goes at once but the service still drains to a clean exit and nothing is deleted twice', async function () {
    this.timeout(120_000);
    const { id, domains, worker } = await workerMidBatch('npm-start');
    worker.signalGroup('SIGTERM');
    await worker.exited;
    // npm itself ends on the signal without waiting (its status says "killed"); the service's own last
    // line says how the node process ended.
    const last = worker.logs.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { message: string; exitCode?: number }).at(-1);
    expect(last, 'the service\'s last log line').to.include({ message: 'shutdown complete', exitCode: 0 });
    await assertRecordedAtExit(id, domains);
    await assertFinishedOnce(id, domains);
  });

  it('when calls are still in flight at SHUTDOWN_TIMEOUT_MS, then they are cut and recorded retryable before the exit, nothing is left claimed, and the next worker finishes the batch', async function () {
    // Calls far slower than the deadline: the drain cannot wait them out.
    sim.setOptions({ latencyMs: 5000 });
    env = { ...env, SHUTDOWN_TIMEOUT_MS: '2000', SECPLAT_TIMEOUT_MS: '6000', TOKEN_LOCK_TTL_MS: '7000', SECPLAT_CONCURRENCY: '2' };
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 20);
    await seedInventory(db, domains, uidOf);
    const api = await spawn({ ROLE: 'api', INSTANCE_ID: 'api' });
    const worker = await spawn({ ROLE: 'worker', INSTANCE_ID: 'first' }, 'production', true);
    expect((await postCallback(api.url, callbackBody(id, domains))).status).to.equal(200);
    // Signal right after a call arrived at the platform: it cannot be answered before the deadline.
    await waitFor('a call at the platform', async () => sim.stats().inFlightDeletes > 0, 10_000);

    worker.signalGroup('SIGTERM');
    const code = await worker.exited;
    expect(code, 'exit code (0 = graceful, 1 = forced)').to.equal(0);
    expect(worker.logs.join('\n'), 'every releaser finished before the deadline').to.not.include('release failed');

    const rows = await domainRows(id);
    expect(rows.filter((r) => r.status === 'in_progress').map((r) => r.domain), 'domains left claimed').to.deep.equal([]);
    const cut = rows.filter((r) => r.status === 'retryable' && r.detail?.includes('cut at the shutdown deadline'));
    expect(cut.length, 'domains of the calls cut at the deadline').to.be.at.least(5);
    // The platform may have acted on a cut call; everything it answered before the cut is recorded.
    const succeeded = new Set(rows.filter((r) => r.status === 'succeeded').map((r) => r.domain));
    const cutDomains = new Set(cut.map((r) => r.domain));
    for (const d of deletions(domains).keys()) expect(succeeded.has(d) || cutDomains.has(d), `${d} deleted at the platform`).to.equal(true);

    sim.setOptions({ latencyMs: 5 });
    await spawn({ ROLE: 'worker', INSTANCE_ID: 'second' });
    await waitFor('all 20 succeeded', async () => (await statusCounts(db, id)).succeeded === 20, 60_000);
    const twice = [...deletions(domains)].filter(([, n]) => n > 1).map(([d]) => d);
    for (const d of twice) expect(cutDomains.has(d), `${d} deleted twice though its call was not cut`).to.equal(true);
  });
});
