/**
 * Faults on the state stores (issue 3, scenarios 3 and 4): Redis unreachable (refused, then a black hole)
 * and PostgreSQL unreachable from a worker (before the job arrives, then mid-batch). Each store is reached
 * through the test's own TCP proxy, which is cut or stalled; the shared servers are never touched.
 */
import { expect } from 'chai';
import { queueDepth, waitFor } from '../helpers/env.js';
import { FaultRig, metric, readiness, uidOf, waitForBackendsGone } from '../helpers/fault-rig.js';

// Retry tiers long enough in total (7.5 s) to outlast each outage below, as production's (5 s, 30 s, 5 min)
// outlast a short failover: the point is that jobs wait, not that they run out of retries.
const WAITING_TIERS = '500,1000,2000,4000';

describe('faults: Redis and PostgreSQL', function () {
  let rig: FaultRig | undefined;

  afterEach(async function () {
    await rig?.close(this.currentTest?.state === 'failed');
    rig = undefined;
  });

  async function retryableDetails(r: FaultRig, id: string): Promise<string[]> {
    const { rows } = await r.db.query<{ detail: string }>(
      `SELECT DISTINCT detail FROM batch_domain WHERE message_id = $1 AND status = 'retryable'`, [id]);
    return rows.map((x) => x.detail);
  }

  for (const fault of ['close', 'stall'] as const) {
    const how = fault === 'close' ? 'refuses connections' : 'stops answering (a black hole)';
    it(`(3${fault === 'stall' ? 'b' : ''}) when Redis ${how}, then no token is fetched while it is gone, readiness is red and jobs wait; once it is back every domain is deleted once`, async () => {
      const r = rig = await FaultRig.create({ latencyMs: 50 }, { RETRY_TIERS_MS: WAITING_TIERS });
      const redisProxy = await r.proxyFor('REDIS_URL');
      const svc = await r.spawn('host-1', redisProxy.env);

      redisProxy.proxy[fault]();
      await waitFor('readiness to turn red', async () => {
        const ready = await readiness(svc.url);
        return ready.status === 503 && ready.checks.redis !== 'ok';
      }, 20_000);
      const batch = await r.seedBatch(20);
      await r.post(svc.url, batch);
      await waitFor('the job to go through two retry tiers', async () => (await metric(svc.url, 'pcp_job_retries_total')) >= 2, 30_000);

      const during = r.sim.stats();
      expect(during.tokenRequestTimes, 'token requests while Redis is unreachable').to.deep.equal([]);
      expect(during.deleteCalls, 'delete calls while Redis is unreachable').to.equal(0);
      expect((await r.counts(batch.id)).succeeded ?? 0).to.equal(0);
      const details = await retryableDetails(r, batch.id);
      expect(details.length, 'domains left retryable with the reason').to.be.above(0);
      for (const d of details) expect(d).to.match(/Redis unavailable|token/i);

      const back = Date.now();
      redisProxy.proxy.resume();
      await waitFor('every domain succeeded', () => r.allSucceeded([batch]), 60_000);
      const stats = r.sim.stats();
      expect(stats.tokenFetches, 'token fetches').to.equal(1);
      for (const t of stats.tokenRequestTimes) expect(t, 'token requested only after Redis was back').to.be.at.least(back);
      await r.assertNothingLost([batch]);
      await waitFor('readiness green again', async () => (await readiness(svc.url)).status === 200, 20_000);
    });
  }

  it('(4) when PostgreSQL is unreachable from a worker, then its job is not lost but retried later, and once it is back every domain is deleted once', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 50 }, { RETRY_TIERS_MS: WAITING_TIERS });
    const pgProxy = await r.proxyFor('DATABASE_URL');
    const [api, worker] = await Promise.all([
      r.spawn('api', { ROLE: 'api' }),
      r.spawn('worker', { ...pgProxy.env, ROLE: 'worker' }),
    ]);

    pgProxy.proxy.close();
    await waitFor('the worker’s readiness to show PostgreSQL down', async () => (await readiness(worker.url)).checks.postgres !== 'ok');
    const batch = await r.seedBatch(20);
    await r.post(api.url, batch);
    await waitFor('the job to go through two retry tiers', async () => (await metric(worker.url, 'pcp_job_retries_total')) >= 2, 30_000);
    expect(r.sim.stats().deleteCalls, 'delete calls while the worker cannot record them').to.equal(0);
    expect(await r.counts(batch.id), 'the ledger while the worker is cut off').to.deep.equal({ pending: 20 });
    expect(await metric(worker.url, 'pcp_jobs_parked_total'), 'parked jobs').to.equal(0);

    pgProxy.proxy.resume();
    await waitFor('every domain succeeded', () => r.allSucceeded([batch]), 60_000);
    await r.assertNothingLost([batch]);
    expect(r.sim.stats().tokenFetches, 'token fetches').to.equal(1);
    await waitFor('jobs queue empty', async () => (await queueDepth(r.env, 'jobs')) === 0);
    expect(await queueDepth(r.env, 'parked')).to.equal(0);
  });

  it('(4b) when PostgreSQL goes away from a worker mid-batch, then only the calls in flight at that moment are repeated and every domain is deleted', async () => {
    const batchSize = 5;
    const concurrency = 2;
    const r = rig = await FaultRig.create({ latencyMs: 200 }, {
      RETRY_TIERS_MS: WAITING_TIERS, SECPLAT_BATCH_SIZE: String(batchSize), SECPLAT_CONCURRENCY: String(concurrency),
    });
    const pgProxy = await r.proxyFor('DATABASE_URL');
    const [api, worker] = await Promise.all([
      r.spawn('api', { ROLE: 'api' }),
      r.spawn('worker', { ...pgProxy.env, ROLE: 'worker' }),
    ]);
    const batch = await r.seedBatch(60);
    await r.post(api.url, batch);
    await waitFor('the worker mid-batch', async () => ((await r.counts(batch.id)).succeeded ?? 0) >= 10);

    const retriesBefore = await metric(worker.url, 'pcp_job_retries_total');
    pgProxy.proxy.close();
    await waitFor('the worker’s readiness to show PostgreSQL down', async () => (await readiness(worker.url)).checks.postgres !== 'ok');
    // Its connections are cut, not closed: once their backends are gone, the ledger holds everything
    // the worker will ever have written before the cut.
    await waitForBackendsGone(r.db, worker.dbApplicationName);
    const heldAtCut = await r.domainsIn(batch.id, 'in_progress');
    // Calls in flight and answered calls not yet settled (at most `concurrency` each), plus the call prepared ahead.
    expect(heldAtCut.length, 'claims the worker held at the cut').to.be.at.most((2 * concurrency + 1) * batchSize);
    // The job meets the outage twice (it fails, waits a tier, fails again) and the worker stays up.
    await waitFor('the job to be retried twice during the outage', async () =>
      (await metric(worker.url, 'pcp_job_retries_total')) >= retriesBefore + 2, 30_000);
    expect(worker.proc.exitCode, 'the worker stays up').to.equal(null);
    expect(await metric(worker.url, 'pcp_jobs_parked_total'), 'parked jobs').to.equal(0);
    pgProxy.proxy.resume();

    await waitFor('every domain succeeded', () => r.allSucceeded([batch]), 60_000);
    // A call that reached the platform but whose outcome could not be written is sent again: only the
    // calls in flight when PostgreSQL went away, i.e. domains the worker held at the cut.
    const { doubles } = await r.assertNothingLost([batch], { maxDoubles: 2 * concurrency * batchSize });
    const heldUids = new Set(heldAtCut.map(uidOf));
    expect(doubles.filter((uid) => !heldUids.has(uid)), 'user ids deleted twice that were not held at the cut').to.deep.equal([]);
  });
});
