/**
 * The relay's stalled sweep (findStalled, run by startRelay every interval): what it re-publishes, through a
 * real relay and RabbitMQ, and that its plan reads only stalled rows however much finished history the
 * ledger holds (EXPLAIN ANALYZE on the real PostgreSQL).
 */
import amqp from 'amqplib';
import { expect } from 'chai';
import type pg from 'pg';
import { createContext, type AppContext } from '../../src/context.js';
import type { Job } from '../../src/messaging/broker.js';
import { topologyNames } from '../../src/messaging/topology.js';
import { startRelay } from '../../src/pipeline/publish.js';
import type { Queryable } from '../../src/store/db.js';
import { findStalled, type DomainStatus } from '../../src/store/ledger.js';
import { RABBITMQ_URL, captureLogger, cleanupNames, messageId, testConfig, testDb, testEnv } from '../helpers/env.js';
import { planNodes } from '../helpers/plan.js';

interface DomainSeed { status: DomainStatus; touched?: string; leaseEnds?: string }

/**
 * A batch whose job was published long ago (so the sweep orders it first among any other test's leftovers),
 * with these domains; `touched` and `leaseEnds` are SQL intervals from now ('-1 day', '+10 minutes').
 */
async function seedBatch(db: pg.Pool, domains: DomainSeed[]): Promise<string> {
  const id = messageId();
  await db.query(`INSERT INTO batch (message_id, publish_pending, created_at, updated_at) VALUES ($1, false, now() - interval '10 years', now() - interval '10 years')`, [id]);
  await db.query(
    `INSERT INTO batch_domain (message_id, domain, req_type, status, updated_at, claimed_by, claimed_until, finished_at)
     SELECT $1, 'd' || i || '.' || $1 || '.example.com', 'SELF_DOMAIN_DELETE', st, now() + t::interval,
            CASE WHEN st = 'in_progress' THEN 'w-test' END, CASE WHEN st = 'in_progress' THEN now() + l::interval END,
            CASE WHEN st IN ('succeeded', 'failed') THEN now() END
     FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS x(st, t, l, i)`,
    [id, domains.map((d) => d.status), domains.map((d) => d.touched ?? '0 seconds'), domains.map((d) => d.leaseEnds ?? '0 seconds')]);
  return id;
}

/** Every job waiting in this test's jobs queue (taken off it). */
async function takeJobs(env: Record<string, string>): Promise<Job[]> {
  const t = topologyNames(env.AMQP_PREFIX!, env.RETRY_TIERS_MS!.split(',').map(Number));
  const conn = await amqp.connect(RABBITMQ_URL);
  try {
    const ch = await conn.createChannel();
    const jobs: Job[] = [];
    for (let msg = await ch.get(t.jobsQueue, { noAck: true }); msg; msg = await ch.get(t.jobsQueue, { noAck: true })) {
      jobs.push(JSON.parse(msg.content.toString()) as Job);
    }
    return jobs;
  } finally {
    await conn.close();
  }
}

describe('stalled sweep', function () {
  this.timeout(60_000);
  let db: pg.Pool;

  beforeEach(() => { db = testDb(); });
  afterEach(async () => { await db.end(); });

  describe('through a real relay', () => {
    let env: Record<string, string>;
    let ctx: AppContext;

    beforeEach(async () => {
      env = testEnv();
      ctx = createContext(testConfig(env), { logger: captureLogger('warn').logger });
      await ctx.broker.start();
      await ctx.broker.waitUntilConnected(10_000);
    });

    afterEach(async () => {
      await ctx.release();
      await cleanupNames(env);
    });

    it('when a batch\'s in-progress domain\'s lease ran out, or its pending domain sat idle past the longest retry delay, then the relay re-publishes its job as stalled_sweep and marks it relayed; finished, awaiting-only, live-lease and freshly touched batches are left alone', async () => {
      const lapsed = await seedBatch(db, [{ status: 'succeeded' }, { status: 'in_progress', leaseEnds: '-1 minute' }]);
      const idle = await seedBatch(db, [{ status: 'failed' }, { status: 'pending', touched: '-1 day' }]);
      const finished = await seedBatch(db, [{ status: 'succeeded', touched: '-1 day' }, { status: 'failed', touched: '-1 day' }]);
      const awaiting = await seedBatch(db, [{ status: 'succeeded', touched: '-1 day' }, { status: 'awaiting_pipeline', touched: '-1 day' }]);
      const leased = await seedBatch(db, [{ status: 'in_progress', touched: '-1 day', leaseEnds: '+10 minutes' }]);
      const fresh = await seedBatch(db, [{ status: 'retryable' }, { status: 'pending' }]);
      const mine = [lapsed, idle, finished, awaiting, leased, fresh];

      // The timer never fires during the test (1 h): runOnce is the pass, awaited.
      const relay = startRelay(ctx, { intervalMs: 3_600_000, retryTiersMs: ctx.config.retryTiersMs, confirmTimeoutMs: ctx.config.amqpConfirmTimeoutMs });
      try {
        await relay.runOnce();
      } finally {
        await relay.stop();
      }

      const jobs = (await takeJobs(env)).filter((j) => mine.includes(j.messageId));
      expect(jobs.map((j) => [j.messageId, j.trigger]).sort()).to.deep.equal([[lapsed, 'stalled_sweep'], [idle, 'stalled_sweep']].sort());
      const { rows } = await db.query<{ id: string; relayed: boolean }>(
        'SELECT message_id AS id, relayed_at IS NOT NULL AS relayed FROM batch WHERE message_id = ANY($1)', [mine]);
      expect(Object.fromEntries(rows.map((r) => [r.id, r.relayed]))).to.deep.equal({
        [lapsed]: true, [idle]: true, [finished]: false, [awaiting]: false, [leased]: false, [fresh]: false,
      });
    });
  });

  it('when the ledger holds 50,000 finished domains and hundreds of open ones, then the sweep reads only the stalled rows, through its partial indexes, and never scans batch or batch_domain', async () => {
    // 5,000 finished batches of 10 domains, as history looks: the rows the sweep must never read.
    await db.query(`INSERT INTO batch (message_id, publish_pending, updated_at)
                    SELECT 'pm' || md5('sweep-plan' || g || $1), false, now() - interval '2 days' FROM generate_series(1, 5000) g`, [messageId()]);
    await db.query(`INSERT INTO batch_domain (message_id, domain, req_type, status, updated_at, finished_at)
                    SELECT b.message_id, 'd' || k || '.' || b.message_id || '.example.com', 'SELF_DOMAIN_DELETE',
                           CASE WHEN k = 10 THEN 'failed' ELSE 'succeeded' END, now() - interval '2 days', now() - interval '2 days'
                    FROM batch b, generate_series(1, 10) k WHERE b.message_id LIKE 'pm%' AND NOT EXISTS (SELECT 1 FROM batch_domain d WHERE d.message_id = b.message_id)`);
    // Open but not stalled (just touched, awaiting the vendor, or leased): read by a sweep that walks open rows.
    for (let i = 0; i < 20; i++) {
      await seedBatch(db, [...Array.from({ length: 20 }, () => ({ status: 'pending' as const })), { status: 'awaiting_pipeline', touched: '-1 day' },
        { status: 'in_progress', touched: '-1 day', leaseEnds: '+10 minutes' }, { status: 'retryable' }]);
    }
    await seedBatch(db, [{ status: 'pending', touched: '-1 day' }, { status: 'retryable', touched: '-1 day' }]);
    await seedBatch(db, [{ status: 'in_progress', leaseEnds: '-1 minute' }]);
    await db.query('ANALYZE batch, batch_domain');

    const client = await db.connect();
    try {
      // One transaction: now() is the same for the plan and for the count of stalled rows it is checked against.
      await client.query('BEGIN');
      const explaining = { query: (text: string, params: unknown[]) => client.query(`EXPLAIN (ANALYZE, FORMAT JSON) ${text}`, params) } as unknown as Queryable;
      const [row] = await findStalled(explaining, 3_600_000, 100) as unknown as { 'QUERY PLAN': unknown }[];
      const { rows: [stalled] } = await client.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM batch_domain WHERE (status IN ('pending', 'retryable') AND updated_at < now() - interval '1 hour')
                                                        OR (status = 'in_progress' AND claimed_until < now())`);
      await client.query('COMMIT');

      const nodes = planNodes(row!['QUERY PLAN']);
      const seqScans = nodes.filter((n) => n['Node Type'] === 'Seq Scan').map((n) => n['Relation Name']);
      expect(seqScans, 'sequential scans').to.not.include.members(['batch', 'batch_domain']);
      const indexes = new Set(nodes.map((n) => n['Index Name']).filter(Boolean));
      expect([...indexes].sort(), 'indexes read').to.include.members(['batch_domain_idle', 'batch_domain_leased']);
      expect([...indexes].filter((i) => !['batch_domain_idle', 'batch_domain_leased', 'batch_pkey'].includes(String(i))), 'other indexes read').to.deep.equal([]);
      const domainReads = nodes.filter((n) => n['Relation Name'] === 'batch_domain');
      const read = domainReads.reduce((sum, n) => sum + Number(n['Actual Rows']) * Number(n['Actual Loops']), 0);
      const discarded = domainReads.reduce((sum, n) => sum + Number(n['Rows Removed by Filter'] ?? 0) + Number(n['Rows Removed by Index Recheck'] ?? 0), 0);
      expect({ read, discarded }, 'batch_domain rows read').to.deep.equal({ read: stalled!.n, discarded: 0 });
    } finally {
      client.release();
    }
  });
});
