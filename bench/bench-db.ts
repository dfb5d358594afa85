/**
 * The bench's own database: created empty as pcp_bench_<random>, migrated by the first service that
 * starts, emptied between scenarios, dropped at the end; and the ledger reads the sections wait on.
 */
import pg from 'pg';
import { sleep } from '../src/lib/timing.js';
import { rand } from '../test/helpers/env.js';

/** Statuses in which a domain still has work ahead of it (awaiting_pipeline waits for the vendor instead). */
const OPEN = `('pending', 'in_progress', 'retryable')`;

export class BenchDb {
  readonly name = `pcp_bench_${rand()}`;
  readonly url: string;
  private pool: pg.Pool | undefined;

  constructor(private readonly adminUrl: string) {
    const u = new URL(adminUrl);
    u.pathname = `/${this.name}`;
    this.url = u.toString();
  }

  async create(): Promise<void> {
    await this.admin(`CREATE DATABASE ${this.name}`);
  }

  get db(): pg.Pool {
    this.pool ??= new pg.Pool({ connectionString: this.url, max: 4 });
    return this.pool;
  }

  /**
   * Empties the ledger, inventory and alarms so each scenario starts from the same state; `keepInventory`
   * leaves the domain inventory (cdn_domain) as it is.
   */
  async truncate(opts: { keepInventory?: boolean } = {}): Promise<void> {
    const { rows } = await this.db.query<{ present: boolean }>(`SELECT to_regclass('domain_attempt') IS NOT NULL AS present`);
    const attempts = rows[0]!.present ? ', domain_attempt' : '';
    const inventory = opts.keepInventory ? '' : ', cdn_domain';
    await this.db.query(`TRUNCATE callback_audit, batch_domain, batch${inventory}, sys_task_process_alarm${attempts} CASCADE`);
    // Flush dirty pages now rather than in the middle of the next measurement. (No ANALYZE here: statistics
    // taken of empty tables make the planner scan them sequentially while they fill, e.g. in the foreign-key
    // check of every batch_domain insert, which halves the ingest rate until autovacuum re-analyzes.)
    await this.db.query('CHECKPOINT').catch(() => undefined); // needs superuser; skipped otherwise
  }

  async drop(): Promise<void> {
    await this.pool?.end().catch(() => undefined);
    this.pool = undefined;
    await this.admin(`DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`);
  }

  /** Domains by status over the whole ledger. */
  async statusCounts(): Promise<Record<string, number>> {
    const { rows } = await this.db.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM batch_domain GROUP BY status');
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  /** Batches stored, and how many of them still wait for their job to be published. */
  async stored(): Promise<{ batches: number; pending: number }> {
    const { rows } = await this.db.query<{ batches: number; pending: number }>(
      'SELECT count(*)::int AS batches, count(*) FILTER (WHERE publish_pending)::int AS pending FROM batch');
    return rows[0]!;
  }

  /** Waits until `expected` domains are in the ledger and none is open; returns when the last one finished (ms). */
  async waitDone(expected: number, timeoutMs: number, pollMs = 200): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { rows } = await this.db.query<{ total: number; open: number; last: Date | null }>(
        `SELECT count(*)::int AS total, count(*) FILTER (WHERE status IN ${OPEN})::int AS open,
                max(finished_at) AS last FROM batch_domain`);
      const r = rows[0]!;
      if (r.total >= expected && r.open === 0) return r.last!.getTime();
      if (Date.now() > deadline) {
        // What the open ones look like says where they got stuck (never published, claimed and left, retrying).
        const { rows: open } = await this.db.query(
          `SELECT d.message_id, d.domain, d.status, d.attempts, d.claimed_by, d.claimed_until, d.updated_at, b.publish_pending, b.publish_error,
                  b.published_at, b.relayed_at, (SELECT count(*)::int FROM domain_attempt a WHERE a.message_id = d.message_id AND a.domain = d.domain) AS attempt_rows
           FROM batch_domain d JOIN batch b USING (message_id) WHERE d.status IN ${OPEN} LIMIT 3`);
        throw new Error(`timed out after ${timeoutMs / 1000} s: ${r.open} of ${r.total} domains still open, e.g. ${JSON.stringify(open)}`);
      }
      await sleep(pollMs);
    }
  }

  /** A few domains that did not end succeeded, with their attempts: why a run lost some. */
  async notSucceeded(limit = 3): Promise<unknown[]> {
    const { rows } = await this.db.query(
      `SELECT d.message_id, d.domain, d.status, d.detail, d.attempts,
              (SELECT json_agg(json_build_object('at', a.attempted_at, 'by', a.instance_id, 'trigger', a.trigger, 'http', a.http_status, 'outcome', a.outcome, 'reason', a.reason)
                       ORDER BY a.attempted_at) FROM domain_attempt a WHERE a.message_id = d.message_id AND a.domain = d.domain) AS attempt_rows
       FROM batch_domain d WHERE d.status <> 'succeeded' LIMIT $1`, [limit]);
    return rows;
  }

  /** Domains in a final status. */
  async finishedCount(): Promise<number> {
    const { rows } = await this.db.query<{ done: number }>(
      `SELECT count(*)::int AS done FROM batch_domain WHERE status IN ('succeeded', 'failed', 'unknown_domain', 'unsupported')`);
    return rows[0]!.done;
  }

  private async admin(sql: string): Promise<void> {
    const c = new pg.Client({ connectionString: this.adminUrl });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  }
}
