/**
 * The security platform failing (issue 3, scenario 9): 5xx for a while (the retry tiers carry the job to
 * success), and 5xx past the last tier (parked, alarmed, then `npm run replay` finishes the domains).
 */
import { expect } from 'chai';
import { queueDepth, waitFor } from '../helpers/env.js';
import { FaultRig, metric, runScript } from '../helpers/fault-rig.js';

describe('faults: the security platform answering 5xx', function () {
  let rig: FaultRig | undefined;

  afterEach(async function () {
    await rig?.close(this.currentTest?.state === 'failed');
    rig = undefined;
  });

  it('(9) when the security platform answers 503 for a while, then the job goes through the retry tiers and every domain is deleted once, with no alarm', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 20 });
    const svc = await r.spawn('host-1');
    const batch = await r.seedBatch(20); // 4 calls per pass
    // The first pass gets only 503s, the second half of them, the third none.
    r.sim.setOptions({ failNextDeletes: 6 });
    await r.post(svc.url, batch);

    await waitFor('every domain succeeded', () => r.allSucceeded([batch]), 30_000);
    const stats = r.sim.stats();
    expect(stats.deleteByStatus['503'], '503 answers').to.equal(6);
    expect(await metric(svc.url, 'pcp_job_retries_total'), 'jobs sent to a retry tier').to.be.at.least(2);
    expect(await r.alarms({ messageIds: [batch.id] }), 'alarms for a batch that succeeded in the end').to.deep.equal([]);
    await r.assertNothingLost([batch]);
    await waitFor('jobs queue empty', async () => (await queueDepth(r.env, 'jobs')) === 0);
    expect(await queueDepth(r.env, 'parked')).to.equal(0);
  });

  it('(9b) when the security platform answers 500 past the last retry tier, then the job is parked with alarms, and once it is healthy `npm run replay` finishes every domain', async () => {
    const r = rig = await FaultRig.create({ latencyMs: 20, errorRate: 1 });
    const svc = await r.spawn('host-1');
    const batch = await r.seedBatch(10);
    await r.post(svc.url, batch);

    await waitFor('the job parked', async () => (await queueDepth(r.env, 'parked')) === 1, 30_000);
    await waitFor('every domain failed', async () => (await r.counts(batch.id)).failed === 10, 10_000);
    const { rows } = await r.db.query<{ detail: string }>('SELECT detail FROM batch_domain WHERE message_id = $1', [batch.id]);
    for (const row of rows) expect(row.detail, 'why the domain failed').to.match(/HTTP 500/);
    const types = (await r.alarms({ messageIds: [batch.id] })).map((a) => a.alarmType);
    expect(types, 'alarms').to.include.members(['BATCH_FAILURES', 'JOB_PARKED']);
    const refused = r.sim.stats();
    // Two calls per pass: the first pass and one pass per retry tier, before giving up.
    expect(refused.deleteByStatus['500'], '500 answers').to.be.at.least(2 * (1 + r.env.RETRY_TIERS_MS!.split(',').length));
    await r.assertNothingLost([batch]);

    r.sim.setOptions({ errorRate: 0 });
    const replay = await runScript('replay', [batch.id, '--wait', '--timeout', '60', '--reason', 'fault test: the platform is fixed'], r.env);
    expect(replay.code, `replay exit code\n${replay.stdout}\n${replay.stderr}`).to.equal(0);
    expect(replay.stdout).to.match(/re-opened 10 domain\(s\)/);
    expect(await r.counts(batch.id)).to.deep.equal({ succeeded: 10 });
    await r.assertNothingLost([batch]);
    expect(svc.proc.exitCode, 'the service is still running').to.equal(null);
  });
});
