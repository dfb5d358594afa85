/**
 * Starting from a domain name: `npm run domain` (a real process) and the report behind it, against the
 * real PostgreSQL; and the lookup's plan on a large ledger (an index, never a scan of batch_domain).
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { startService } from '../../src/main.js';
import { batchesOfDomain } from '../../src/store/ledger.js';
import type { Queryable } from '../../src/store/db.js';
import { captureLogger, cleanupNames, messageId, rand, seedInventory, testConfig, testDb, testEnv } from '../helpers/env.js';
import { planNodes } from '../helpers/plan.js';

const VIEWER_TOKEN = 'test-viewer-token-0123456789';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

interface Run { code: number; stdout: string; stderr: string }

function runDomain(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'scripts/domain.ts', ...args], {
      cwd: ROOT, timeout: 50_000, env: { ...process.env, DATABASE_URL: process.env.DATABASE_URL },
    }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
  });
}

describe('lookup by domain', function () {
  this.timeout(60_000);
  let db: pg.Pool;

  beforeEach(() => { db = testDb(); });
  afterEach(async () => { await db.end(); });

  /** Two batches carried the domain: the first failed it, the second deleted it. */
  async function seedHistory() {
    const domain = `www.${rand()}.example.com`;
    const [first, second] = [messageId(), messageId()];
    await seedInventory(db, [domain], () => 'u-lookup');
    for (const id of [first, second]) await db.query('INSERT INTO batch (message_id, publish_pending) VALUES ($1, false)', [id]);
    await db.query(
      `INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, detail, created_at, finished_at)
       VALUES ($1, $3, 'SELF_DOMAIN_DELETE', 'failed', 4, 'security platform: user not found', now() - interval '2 hours', now() - interval '1 hour'),
              ($2, $3, 'SELF_DOMAIN_DELETE', 'succeeded', 1, NULL, now() - interval '10 minutes', now())`,
      [first, second, domain]);
    await db.query(`UPDATE cdn_domain SET status = 'deleted', deleted_at = now(), deleted_by_message_id = $1 WHERE domain = $2`, [second, domain]);
    return { domain, first, second };
  }

  it('when an operator looks up a domain (any case, trailing dot), then the inventory row and every batch that carried it are shown, newest first', async () => {
    const h = await seedHistory();
    const r = await runDomain([`${h.domain.toUpperCase()}.`, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const report = JSON.parse(r.stdout) as { domain: string; inventory: Record<string, unknown>; batches: Record<string, unknown>[] };
    expect(report.domain).to.equal(h.domain);
    expect(report.inventory).to.include({ userIdCdn: 'u-lookup', status: 'deleted', deletedByMessageId: h.second });
    expect(report.batches.map((b) => [b.messageId, b.status, b.attempts, b.detail])).to.deep.equal([
      [h.second, 'succeeded', 1, null],
      [h.first, 'failed', 4, 'security platform: user not found'],
    ]);

    const table = await runDomain([h.domain]);
    expect(table.code, table.stderr).to.equal(0);
    expect(table.stdout).to.include(`deleted at`).and.include(`by ${h.second}`);
    expect(table.stdout).to.include(h.first).and.include('user not found');
  });

  it('when GET /api/domains/:domain is called with the viewer credential, then it answers the same report; without one, 401', async () => {
    const h = await seedHistory();
    const env = testEnv({ ROLE: 'api', VIEWER_TOKEN });
    const config = testConfig(env);
    const service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
    try {
      const base = `http://127.0.0.1:${service.port}/api/domains`;
      const res = await fetch(`${base}/${encodeURIComponent(h.domain.toUpperCase())}`, { headers: { authorization: `Bearer ${VIEWER_TOKEN}` } });
      expect(res.status).to.equal(200);
      const body = await res.json() as { domain: string; inventory: Record<string, unknown>; batches: { messageId: string; status: string }[] };
      expect(body.domain).to.equal(h.domain);
      expect(body.inventory).to.include({ status: 'deleted', deletedByMessageId: h.second });
      expect(body.batches.map((b) => [b.messageId, b.status])).to.deep.equal([[h.second, 'succeeded'], [h.first, 'failed']]);
      expect((await fetch(`${base}/${h.domain}`)).status).to.equal(401);
      const unknown = await fetch(`${base}/nowhere.${rand()}.example.com`, { headers: { authorization: `Bearer ${VIEWER_TOKEN}` } });
      expect(unknown.status).to.equal(404);
      const bad = await fetch(`${base}/not_a_domain`, { headers: { authorization: `Bearer ${VIEWER_TOKEN}` } });
      expect(bad.status).to.equal(400);
    } finally {
      await service.stop();
      await cleanupNames(env);
    }
  });

  it('when the domain is unknown or not a domain name, then the command says so and exits 2', async () => {
    const unknown = await runDomain([`nowhere.${rand()}.example.com`]);
    expect(unknown.code).to.equal(2);
    expect(unknown.stderr).to.include('no batch carried');
    const bad = await runDomain(['not a domain']);
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.include('is not a valid domain name');
  });

  it('when the ledger holds many domains, then the lookup is served by an index, not a scan of batch_domain', async () => {
    const h = await seedHistory();
    // A large batch of other domains, so that the planner's choice is the one a big ledger gets.
    const bulk = messageId();
    await db.query('INSERT INTO batch (message_id, publish_pending) VALUES ($1, false)', [bulk]);
    await db.query(
      `INSERT INTO batch_domain (message_id, domain, req_type, status)
       SELECT $1, 'd' || g || '.bulk.example.com', 'SELF_DOMAIN_DELETE', 'succeeded' FROM generate_series(1, 50000) g`, [bulk]);
    await db.query('ANALYZE batch_domain');
    // The very statement the report runs, explained instead of executed.
    const explaining: Queryable = { query: (text: string, params: unknown[]) => db.query(`EXPLAIN (FORMAT JSON) ${text}`, params) } as unknown as Queryable;
    const [row] = await batchesOfDomain(explaining, h.domain) as unknown as { 'QUERY PLAN': unknown }[];
    const scans = planNodes(row!['QUERY PLAN']).filter((n) => n['Relation Name'] === 'batch_domain');
    expect(scans.map((n) => n['Node Type']), 'how batch_domain is read').to.not.include('Seq Scan');
    expect(scans.map((n) => n['Index Name'])).to.include('batch_domain_domain');
  });
});
