/**
 * Worker processes under real signals (issue 3, scenarios 5 and 6): kill -9 in the middle of a 500-domain
 * batch, and SIGTERM under load.
 */
import { expect } from 'chai';
import { queueDepth, waitFor } from '../helpers/env.js';
import { FaultRig, backendCount, logCount, loggedDomains, uidOf, waitForBackendsGone } from '../helpers/fault-rig.js';

describe('faults: worker processes and signals', function () {
  let rig: FaultRig | undefined;

  afterEach(async function () {
    await rig?.close(this.currentTest?.state === 'failed');
    rig = undefined;
  });

  it('(5) when a worker is killed with SIGKILL in the middle of a 500-domain batch, then another worker finishes it and only the calls in flight at the kill are repeated', async () => {
    const batchSize = 5;
    const concurrency = 2;
    const r = rig = await FaultRig.create({ latencyMs: 30 }, {
      SECPLAT_BATCH_SIZE: String(batchSize), SECPLAT_CONCURRENCY: String(concurrency),
    });
    const [api, victim] = await Promise.all([r.spawn('api', { ROLE: 'api' }), r.spawn('victim', { ROLE: 'worker' })]);
    const batch = await r.seedBatch(500);
    await r.post(api.url, batch);
    await waitFor('the victim mid-batch', async () => ((await r.counts(batch.id)).succeeded ?? 0) >= 100, 30_000);

    expect(await backendCount(r.db, victim.dbApplicationName), 'PostgreSQL backends of the victim before the kill').to.be.above(0);
    await victim.stop('SIGKILL');
    expect(victim.proc.signalCode).to.equal('SIGKILL');
    // The victim's last COMMIT may still land after its death (its backend runs what it had received):
    // the ledger says what the victim finished only once its backends are gone.
    await waitForBackendsGone(r.db, victim.dbApplicationName);
    const finishedAtKill = new Set(await r.domainsIn(batch.id, 'succeeded'));
    const heldAtKill = await r.domainsIn(batch.id, 'in_progress');
    expect(finishedAtKill.size, 'succeeded when the victim died').to.be.below(500);
    // Calls in flight and answered calls not yet settled (at most `concurrency` each), plus the call prepared ahead.
    expect(heldAtKill.length, 'claims the victim held').to.be.at.most((2 * concurrency + 1) * batchSize);

    const rescuer = await r.spawn('rescuer', { ROLE: 'worker' });
    await waitFor('all 500 domains succeeded', () => r.allSucceeded([batch]), 90_000);
    // Repeated at most: the calls sent and not yet settled at the kill.
    const { doubles } = await r.assertNothingLost([batch], { maxDoubles: 2 * concurrency * batchSize });
    // The rescuer finished exactly what the victim had not, each domain once.
    const rescued = loggedDomains(rescuer, 'domain deleted').sort();
    const leftByVictim = batch.domains.filter((d) => !finishedAtKill.has(d)).sort();
    expect(rescued.length, 'domains the rescuer finished').to.equal(leftByVictim.length);
    expect(rescued, 'domains the rescuer finished = those the victim had not').to.deep.equal(leftByVictim);
    // Only calls in flight at the kill were repeated: every user id deleted twice was held by the victim.
    const heldUids = new Set(heldAtKill.map(uidOf));
    expect(doubles.filter((uid) => !heldUids.has(uid)), 'user ids deleted twice that the victim did not hold').to.deep.equal([]);
    expect(r.sim.stats().tokenFetches, 'the rescuer reuses the shared token').to.equal(1);
    await waitFor('jobs queue empty', async () => (await queueDepth(r.env, 'jobs')) === 0);
    expect(await queueDepth(r.env, 'parked')).to.equal(0);
  });

  it('(6) when a worker gets SIGTERM under load, then its calls in flight finish and are recorded, unfinished jobs go back to the queue, it exits within the deadline, and nothing finished is redone', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 200 }, { AMQP_PREFETCH: '4', SECPLAT_CONCURRENCY: '3' });
    const [api, first] = await Promise.all([r.spawn('api', { ROLE: 'api' }), r.spawn('first', { ROLE: 'worker' })]);
    const batches = [await r.seedBatch(40), await r.seedBatch(40), await r.seedBatch(40)];
    for (const b of batches) await r.post(api.url, b);
    await waitFor('the worker busy on every batch', async () => {
      for (const b of batches) if (((await r.counts(b.id)).succeeded ?? 0) < 5) return false;
      return true;
    }, 30_000);
    // Signal while calls are at the platform (the loops run in step, so there are short gaps between).
    await waitFor('calls in flight', async () => r.sim.stats().inFlightDeletes > 0, 10_000);

    const started = Date.now();
    const code = await first.stop('SIGTERM');
    const tookMs = Date.now() - started;
    expect(code, 'exit code (0 = graceful)').to.equal(0);
    // The deadline on the process's own clock: a shutdown step still running at SHUTDOWN_TIMEOUT_MS is cut
    // and logs "release failed". Seen from here the time also holds signal delivery and process teardown,
    // a few ms against a deadline that the calls in flight (200 ms) and the closes leave seconds away.
    expect(logCount(first, 'release failed'), 'every releaser finished within the deadline').to.equal(0);
    expect(tookMs, 'exit within SHUTDOWN_TIMEOUT_MS').to.be.below(Number(r.env.SHUTDOWN_TIMEOUT_MS));

    // Every call the platform answered was recorded before the exit: no domain left claimed, and the
    // ledger's successes match the platform's deletions one for one.
    const stats = r.sim.stats();
    expect(stats.inFlightDeletes, 'calls still open at the platform').to.equal(0);
    expect(Object.keys(stats.deleteByStatus), 'delete replies').to.deep.equal(['200']);
    const atExit = await Promise.all(batches.map((b) => r.counts(b.id)));
    for (const c of atExit) expect(c.in_progress ?? 0, 'claims left by the stopped worker').to.equal(0);
    const succeededAtExit = atExit.reduce((n, c) => n + (c.succeeded ?? 0), 0);
    const uids = new Set(batches.flatMap((b) => b.domains.map(uidOf)));
    const deletedAtExit = Object.entries(stats.deletedCounts).filter(([uid]) => uids.has(uid)).reduce((n, [, k]) => n + k, 0);
    expect(deletedAtExit, 'deletions at the platform = successes in the ledger').to.equal(succeededAtExit);
    const unfinished = atExit.filter((c) => (c.succeeded ?? 0) < 40).length;
    expect(unfinished, 'batches the signal interrupted').to.be.above(0);
    await waitFor('each unfinished job back in the queue', async () => (await queueDepth(r.env, 'jobs')) === unfinished, 10_000);

    const second = await r.spawn('second', { ROLE: 'worker' });
    await waitFor('every domain succeeded', () => r.allSucceeded(batches), 60_000);
    await r.assertNothingLost(batches);
    expect(logCount(second, '"domain deleted"'), 'domains the second worker did (only the unfinished ones)').to.equal(120 - succeededAtExit);
    await waitFor('jobs queue empty', async () => (await queueDepth(r.env, 'jobs')) === 0);
    expect(await queueDepth(r.env, 'parked')).to.equal(0);
  });
});
