/**
 * Retention (src/ops/retention.ts and `npm run retention`) against a real PostgreSQL database of its own,
 * so the counts it reports are exactly this file's rows: what goes, what stays, the dry run, and the
 * order (callback bodies before ledger rows).
 */
import { execFile } from 'node:child_process';
import { expect } from 'chai';
import pg from 'pg';
import { DependencyUnavailableError } from '../../src/lib/errors.js';
import { createLogger } from '../../src/lib/logger.js';
import { REMOVED_BODY, runRetention } from '../../src/ops/retention.js';
import { migrate } from '../../src/store/migrate.js';
import type { DomainStatus } from '../../src/store/ledger.js';
import { ROOT } from '../../scripts/service-process.js';
import { messageId, rand } from '../helpers/env.js';

const THIRTY_DAYS = 30 * 86_400_000;
const FINISHED: readonly DomainStatus[] = ['succeeded', 'succeeded', 'failed', 'unknown_domain'];

interface Seed {
  /** Days since the batch's last activity. */
  daysAgo: number;
  statuses?: readonly DomainStatus[];
  alarm?: 'open' | 'acknowledged' | 'resolved';
  /** Days since one of its domains was last touched (a replay), when more recent than the batch. */
  domainTouchedDaysAgo?: number;
}

/** One batch as the service leaves it: two callbacks, its domains, an attempt per answered call, maybe an alarm with notifications. */
async function seedBatch(db: pg.Pool, s: Seed): Promise<string> {
  const id = messageId();
  const at = `${s.daysAgo} days`;
  const statuses = s.statuses ?? FINISHED;
  await db.query(`INSERT INTO batch (message_id, created_at, updated_at, callbacks, publish_pending)
                  VALUES ($1, now() - $2::interval - interval '1 hour', now() - $2::interval, 2, false)`, [id, at]);
  await db.query(
    `INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, created_at, updated_at, finished_at, claimed_by, claimed_until)
     SELECT $1, 'd' || i || '.' || $1 || '.example.com', 'SELF_DOMAIN_DELETE', st, 1, now() - $2::interval - interval '1 hour',
            CASE WHEN i = 1 AND $4::int IS NOT NULL THEN now() - make_interval(days => $4::int) ELSE now() - $2::interval END,
            CASE WHEN st IN ('succeeded', 'failed', 'unknown_domain', 'unsupported') THEN now() - $2::interval END,
            CASE WHEN st = 'in_progress' THEN 'w-dead' END, CASE WHEN st = 'in_progress' THEN now() - $2::interval END
     FROM unnest($3::text[]) WITH ORDINALITY AS x(st, i)`,
    [id, at, statuses, s.domainTouchedDaysAgo ?? null]);
  await db.query(
    `INSERT INTO domain_attempt (message_id, domain, attempted_at, duration_ms, instance_id, trigger, token_generation, http_status, outcome)
     SELECT message_id, domain, updated_at, 400, 'test', 'first_run', 1, 200, status FROM batch_domain
     WHERE message_id = $1 AND status IN ('succeeded', 'failed', 'retryable')`, [id]);
  for (const n of [1, 2]) {
    await db.query(`INSERT INTO callback_audit (message_id, received_at, remote_addr, item_count, body)
                    VALUES ($1, now() - $2::interval - interval '1 hour', '10.1.2.3', $3, $4)`,
    [id, at, statuses.length, JSON.stringify({ messageId: id, data: statuses.map((_, i) => ({ targetName: `d${i + 1}.${id}.example.com`, callback: n })) })]);
  }
  if (s.alarm) {
    const { rows: [a] } = await db.query<{ id: string }>(
      `INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, state, created_at, last_seen_at, resolved_at)
       VALUES ($1, $2, 'BATCH_FAILURES', 'failures', $3, now() - $4::interval, now() - $4::interval, CASE WHEN $3 = 'resolved' THEN now() - $4::interval END)
       RETURNING id`, [JSON.stringify({ taskId: `${id}_exc`, type: 'DOMAIN_B_PIPE' }), id, s.alarm, at]);
    // 'opened' was delivered; 'resolved' (if any) still waits for the webhook: retention must leave it to the sender.
    await db.query(`INSERT INTO alarm_notification (alarm_id, event, alarm_type, delivered_at) VALUES ($1, 'opened', 'BATCH_FAILURES', now() - $2::interval)`, [a!.id, at]);
    if (s.alarm === 'resolved') await db.query(`INSERT INTO alarm_notification (alarm_id, event, alarm_type) VALUES ($1, 'resolved', 'BATCH_FAILURES')`, [a!.id]);
  }
  return id;
}

interface Rows { batch: number; domains: number; attempts: number; alarms: number; notifications: number; callbacks: number; removedBodies: number; itemCounts: number[] }

/** Everything the database holds about one batch. */
async function rowsOf(db: pg.Pool, id: string): Promise<Rows> {
  const { rows: [r] } = await db.query<Omit<Rows, 'itemCounts'>>(
    `SELECT (SELECT count(*) FROM batch WHERE message_id = $1)::int AS batch,
            (SELECT count(*) FROM batch_domain WHERE message_id = $1)::int AS domains,
            (SELECT count(*) FROM domain_attempt WHERE message_id = $1)::int AS attempts,
            (SELECT count(*) FROM sys_task_process_alarm WHERE message_id = $1)::int AS alarms,
            (SELECT count(*) FROM alarm_notification n JOIN sys_task_process_alarm a ON a.id = n.alarm_id WHERE a.message_id = $1)::int AS notifications,
            (SELECT count(*) FROM callback_audit WHERE message_id = $1)::int AS callbacks,
            (SELECT count(*) FROM callback_audit WHERE message_id = $1 AND body = $2::jsonb)::int AS "removedBodies"`,
    [id, JSON.stringify(REMOVED_BODY)]);
  const { rows } = await db.query<{ n: number }>('SELECT item_count AS n FROM callback_audit WHERE message_id = $1 ORDER BY id', [id]);
  return { ...r!, itemCounts: rows.map((x) => x.n) };
}

/** A fingerprint of every table retention touches: equal fingerprints, equal contents. */
async function fingerprint(db: pg.Pool): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const t of ['batch', 'batch_domain', 'domain_attempt', 'sys_task_process_alarm', 'alarm_notification', 'callback_audit']) {
    const { rows } = await db.query<{ h: string | null }>(`SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) AS h FROM ${t} t`);
    out[t] = rows[0]!.h ?? 'empty';
  }
  return out;
}

function runCommand(args: string[], databaseUrl: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'scripts/retention.ts', ...args], {
      cwd: ROOT, timeout: 50_000, env: { ...process.env, DATABASE_URL: databaseUrl },
    }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
  });
}

describe('retention', function () {
  this.timeout(60_000);
  const name = `pcp_retention_${rand()}`;
  let admin: pg.Client;
  let url: string;
  let db: pg.Pool;

  before(async () => {
    admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    const u = new URL(process.env.DATABASE_URL!);
    u.pathname = `/${name}`;
    url = u.toString();
    db = new pg.Pool({ connectionString: url, max: 4 });
    await migrate(db, createLogger({ level: 'error' }));
  });

  after(async () => {
    await db.end();
    // Not WITH (FORCE): the pool's sockets may still be closing, and DROP waits (up to 5 s) for them to go;
    // a connection left open by the code under test makes it fail instead of being killed silently.
    await admin.query(`DROP DATABASE IF EXISTS ${name}`);
    await admin.end();
  });

  beforeEach(async () => {
    await db.query('TRUNCATE batch, batch_domain, domain_attempt, callback_audit, sys_task_process_alarm, alarm_notification');
  });

  it('when a batch finished longer ago than the cutoff, then its bodies become a placeholder and its domain, attempt and delivered notification rows and the batch go, while its resolved alarm and callback receipts stay', async () => {
    const old = await seedBatch(db, { daysAgo: 40, alarm: 'resolved' });
    const r = await runRetention(db, { olderThanMs: THIRTY_DAYS });
    expect(r).to.include({ batches: 1, domains: 4, attempts: 3, alarmNotifications: 1, callbackBodies: 2, skippedBusy: 0, dryRun: false });
    expect(await rowsOf(db, old)).to.deep.equal({
      batch: 0, domains: 0, attempts: 0, alarms: 1, notifications: 1, callbacks: 2, removedBodies: 2, itemCounts: [4, 4],
    });
    const { rows } = await db.query<{ event: string; delivered: boolean }>(
      `SELECT event, delivered_at IS NOT NULL AS delivered FROM alarm_notification n JOIN sys_task_process_alarm a ON a.id = n.alarm_id WHERE a.message_id = $1`, [old]);
    expect(rows, 'the undelivered notification is left to the sender').to.deep.equal([{ event: 'resolved', delivered: false }]);
  });

  it('when a batch finished after the cutoff, or was created before it but active after it, then nothing of it changes', async () => {
    const recent = await seedBatch(db, { daysAgo: 2 });
    const replayed = await seedBatch(db, { daysAgo: 40, domainTouchedDaysAgo: 3 });
    const before = [await rowsOf(db, recent), await rowsOf(db, replayed)];
    const r = await runRetention(db, { olderThanMs: THIRTY_DAYS });
    expect(r).to.include({ batches: 0, callbackBodies: 0, keptRecent: 1 });
    expect([await rowsOf(db, recent), await rowsOf(db, replayed)]).to.deep.equal(before);
    expect(before[1]).to.include({ batch: 1, domains: 4, removedBodies: 0 });
  });

  it('when an old batch still has a pending, in-progress, retryable or awaiting_pipeline domain, then nothing of it changes', async () => {
    const ids: string[] = [];
    for (const open of ['pending', 'in_progress', 'retryable', 'awaiting_pipeline'] as const) ids.push(await seedBatch(db, { daysAgo: 60, statuses: ['succeeded', open] }));
    const before = await Promise.all(ids.map((id) => rowsOf(db, id)));
    const r = await runRetention(db, { olderThanMs: THIRTY_DAYS });
    expect(r).to.include({ batches: 0, callbackBodies: 0, keptOpen: 4 });
    expect(await Promise.all(ids.map((id) => rowsOf(db, id)))).to.deep.equal(before);
  });

  it('when an old finished batch has an open or an acknowledged alarm, then nothing of it changes; a resolved one does not keep it', async () => {
    const open = await seedBatch(db, { daysAgo: 40, alarm: 'open' });
    const acked = await seedBatch(db, { daysAgo: 40, alarm: 'acknowledged' });
    const resolved = await seedBatch(db, { daysAgo: 40, alarm: 'resolved' });
    const before = [await rowsOf(db, open), await rowsOf(db, acked)];
    const r = await runRetention(db, { olderThanMs: THIRTY_DAYS });
    expect(r).to.include({ batches: 1, keptAlarmed: 2 });
    expect([await rowsOf(db, open), await rowsOf(db, acked)]).to.deep.equal(before);
    expect(await rowsOf(db, resolved)).to.include({ batch: 0, domains: 0, alarms: 1 });
  });

  it('when run dry, then it counts exactly what a real run then removes and changes nothing', async () => {
    await seedBatch(db, { daysAgo: 40, alarm: 'resolved' });
    await seedBatch(db, { daysAgo: 45 });
    await seedBatch(db, { daysAgo: 40, alarm: 'open' });
    await seedBatch(db, { daysAgo: 1 });
    const before = await fingerprint(db);
    const dry = await runRetention(db, { olderThanMs: THIRTY_DAYS, dryRun: true, chunkSize: 1 });
    expect(await fingerprint(db)).to.deep.equal(before);
    expect(dry).to.include({ dryRun: true, batches: 2, domains: 8, attempts: 6, alarmNotifications: 1, callbackBodies: 4, keptAlarmed: 1, chunks: 3 });
    const real = await runRetention(db, { olderThanMs: THIRTY_DAYS, chunkSize: 1 });
    const counts = (x: typeof dry) => [x.batches, x.domains, x.attempts, x.alarmNotifications, x.callbackBodies, x.keptAlarmed];
    expect(counts(real)).to.deep.equal(counts(dry));
  });

  it('when someone holds a batch row or one of its domain rows during a run, then its callback bodies are already replaced but its ledger rows stay, and the next run removes them', async () => {
    const batchHeld = await seedBatch(db, { daysAgo: 40 });
    const domainHeld = await seedBatch(db, { daysAgo: 40 });
    const holder = await db.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM batch WHERE message_id = $1 FOR UPDATE', [batchHeld]);
      await holder.query(`SELECT 1 FROM batch_domain WHERE message_id = $1 AND domain LIKE 'd2.%' FOR UPDATE`, [domainHeld]);
      const first = await runRetention(db, { olderThanMs: THIRTY_DAYS });
      expect(first).to.include({ batches: 0, callbackBodies: 4, skippedBusy: 2 });
      for (const id of [batchHeld, domainHeld]) expect(await rowsOf(db, id)).to.include({ batch: 1, domains: 4, attempts: 3, removedBodies: 2 });
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
    const second = await runRetention(db, { olderThanMs: THIRTY_DAYS });
    expect(second).to.include({ batches: 2, domains: 8, callbackBodies: 0, skippedBusy: 0 });
    for (const id of [batchHeld, domainHeld]) expect(await rowsOf(db, id)).to.include({ batch: 0, domains: 0, attempts: 0, callbacks: 2, removedBodies: 2 });
  });

  it('when the callback bodies cannot be replaced (one of their rows is locked), then the run stops before any ledger row is removed, and the next run removes bodies and rows', async () => {
    const old = await seedBatch(db, { daysAgo: 40 });
    const before = await rowsOf(db, old);
    const holder = await db.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM callback_audit WHERE message_id = $1 ORDER BY id LIMIT 1 FOR UPDATE', [old]);
      const failure = await runRetention(db, { olderThanMs: THIRTY_DAYS, lockTimeoutMs: 200 }).then(() => undefined, (err: unknown) => err);
      expect(failure).to.be.instanceOf(DependencyUnavailableError);
      expect(await rowsOf(db, old), 'bodies are replaced before any row goes').to.deep.equal(before);
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
    expect(await runRetention(db, { olderThanMs: THIRTY_DAYS })).to.include({ batches: 1, domains: 4, callbackBodies: 2 });
    expect(await rowsOf(db, old)).to.include({ batch: 0, domains: 0, attempts: 0, callbacks: 2, removedBodies: 2 });
  });

  it('when run as a command with --dry-run, then it prints the counts and exits 0; with an age under 1h, then it exits 2 and says why', async () => {
    const old = await seedBatch(db, { daysAgo: 40 });
    const dry = await runCommand(['--older-than', '30d', '--dry-run', '--json'], url);
    expect(dry.code, dry.stderr).to.equal(0);
    expect(JSON.parse(dry.stdout)).to.include({ dryRun: true, batches: 1, domains: 4, callbackBodies: 2 });
    expect(await rowsOf(db, old)).to.include({ batch: 1, removedBodies: 0 });
    const young = await runCommand(['--older-than', '30m'], url);
    expect(young.code).to.equal(2);
    expect(young.stderr).to.include('at least 1h');
  });
});
