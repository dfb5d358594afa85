/**
 * A claim (claimAcross, the call packer's one statement per call) reads only the batches it asks for, even
 * when PostgreSQL's statistics lag a burst: analyzed while the ledger was all finished, then thousands of
 * pending 1-domain batches arrive. EXPLAIN ANALYZE on the real PostgreSQL.
 */
import { expect } from 'chai';
import type pg from 'pg';
import { claimAcross, renewClaims } from '../../src/store/ledger.js';
import { messageId, testDb } from '../helpers/env.js';
import { explainFirst, planNodes } from '../helpers/plan.js';

describe('claim plan', function () {
  this.timeout(60_000);
  let db: pg.Pool;

  beforeEach(() => { db = testDb(); });
  afterEach(async () => { await db.end(); });

  it('when 3,000 pending 1-domain batches arrived after the last ANALYZE, then a claim over 60 of them (40 leased to another worker) reads only their rows, and neither the claim nor the lease renewal reads the stalled sweep\'s partial indexes', async () => {
    const tag = messageId().slice(2, 14);
    const ids = Array.from({ length: 3000 }, (_, i) => `pm${tag}-${String(i).padStart(4, '0')}`);
    // Statistics from before the burst: every domain of this test is not yet in them.
    await db.query('ANALYZE batch, batch_domain');
    await db.query(`INSERT INTO batch (message_id, publish_pending) SELECT id, false FROM unnest($1::text[]) id`, [ids]);
    await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status) SELECT id, 'd.' || id || '.example.com', 'SELF_DOMAIN_DELETE', 'pending'
                    FROM unnest($1::text[]) id`, [ids]);
    const asked = ids.slice(0, 60);
    await db.query(`UPDATE batch_domain SET status = 'in_progress', claimed_by = 'other-worker', claimed_until = now() + interval '10 minutes'
                    WHERE message_id = ANY($1)`, [asked.slice(0, 40)]);

    const client = await db.connect();
    try {
      await client.query('BEGIN');
      const claimPlan = await explainFirst(client, (q) => claimAcross(q, asked.map((id) => ({ messageId: id, claimToken: 'test-claim', exclude: [] })), { leaseMs: 60_000, limit: 20 }));
      const { rows: claimed } = await client.query<{ messageId: string; domain: string }>(
        `SELECT message_id AS "messageId", domain FROM batch_domain WHERE message_id = ANY($1) AND claimed_by = 'test-claim'`, [asked]);
      const renewPlan = await explainFirst(client, (q) => renewClaims(q, claimed.map((c) => ({ ...c, claimToken: 'test-claim', userIdCdn: `u-${c.domain}` })), 60_000));
      await client.query('ROLLBACK');

      expect(claimed, 'domains claimed').to.have.length(20);
      const nodes = planNodes(claimPlan);
      for (const [name, plan] of [['claim', claimPlan], ['lease renewal', renewPlan]] as const) {
        const indexes = planNodes(plan).map((n) => n['Index Name']);
        expect(indexes.filter((i) => i === 'batch_domain_idle' || i === 'batch_domain_leased'), `the stalled sweep's indexes read by the ${name}`).to.deep.equal([]);
      }
      // Picking the rows (the CTE under the update): per loop, EXPLAIN gives rows returned and removed as
      // averages; times the loops, the rows it touched. The 60 batches asked for hold one row each.
      const picking = planNodes(nodes.find((n) => n['Subplan Name'] === 'CTE picked'));
      const touched = picking.filter((n) => n['Relation Name'] === 'batch_domain').reduce((sum, n) =>
        sum + (Number(n['Actual Rows']) + Number(n['Rows Removed by Filter'] ?? 0) + Number(n['Rows Removed by Index Recheck'] ?? 0)) * Number(n['Actual Loops']), 0);
      expect(touched, 'batch_domain rows read to pick the claim').to.be.within(20, 60);
    } finally {
      client.release();
      await db.query('DELETE FROM batch_domain WHERE message_id = ANY($1)', [ids]);
      await db.query('DELETE FROM batch WHERE message_id = ANY($1)', [ids]);
    }
  });
});
