/**
 * The alarm lifecycle against the real PostgreSQL: repeats counted on one row, acknowledge and resolve with
 * who/when/note, invalid steps refused without changing anything, a batch's failure alarms resolving by
 * themselves (after a retry or a replay, also through the running service), the outbox rows each change
 * writes, and `npm run alarms` with --state, ack and resolve as a real child process.
 */
import { execFile } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { ValidationError } from '../../src/lib/errors.js';
import { startService } from '../../src/main.js';
import { replayBatches } from '../../src/pipeline/replay.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import {
  AlarmStateError, UnknownAlarmError, acknowledgeAlarms, resolveAlarms, resolveRecoveredBatchAlarms,
} from '../../src/store/alarm-lifecycle.js';
import { raiseAlarm, type AlarmType } from '../../src/store/alarms.js';
import { claimDomains, reopenForReplay, settleSucceeded } from '../../src/store/ledger.js';
import {
  SECPLAT_PASSWORD, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, postCallback, seedInventory,
  statusCounts, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

interface AlarmDbRow {
  id: number; state: string; occurrences: number; content: string; created_at: Date; last_seen_at: Date;
  acknowledged_at: Date | null; acknowledged_by: string | null; ack_note: string | null;
  resolved_at: Date | null; resolved_by: string | null; resolve_note: string | null;
}

describe('alarm lifecycle', function () {
  let db: pg.Pool;

  beforeEach(() => { db = testDb(); });
  afterEach(async () => { await db.end(); });

  const alarmsOf = async (id: string, type?: AlarmType) => (await db.query<AlarmDbRow>(
    `SELECT id::int, state, occurrences, content, created_at, last_seen_at, acknowledged_at, acknowledged_by, ack_note,
            resolved_at, resolved_by, resolve_note
     FROM sys_task_process_alarm WHERE message_id = $1 AND ($2::text IS NULL OR alarm_type = $2) ORDER BY id`, [id, type ?? null])).rows;
  const alarmById = async (alarmId: number) => (await db.query<AlarmDbRow>(
    `SELECT id::int, state, occurrences, content, acknowledged_at, acknowledged_by, ack_note, resolved_at, resolved_by, resolve_note
     FROM sys_task_process_alarm WHERE id = $1`, [alarmId])).rows[0]!;
  const outboxOf = async (alarmIds: number[]) => (await db.query<{ alarm_id: number; event: string; alarm_type: string }>(
    'SELECT alarm_id::int, event, alarm_type FROM alarm_notification WHERE alarm_id = ANY($1) ORDER BY id', [alarmIds])).rows;

  /** A batch with domains in the given statuses (as a worker would have left them). */
  async function seedBatch(id: string, domains: Record<string, string>): Promise<void> {
    await db.query('INSERT INTO batch (message_id, publish_pending) VALUES ($1, false)', [id]);
    for (const [domain, status] of Object.entries(domains)) {
      await db.query(
        `INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, finished_at)
         VALUES ($1, $2, $3, $4, 1, CASE WHEN $4 IN ('failed', 'unknown_domain', 'unsupported', 'succeeded') THEN now() END)`,
        [id, domain, status === 'unsupported' ? 'SELF_DOMAIN_ADD' : 'SELF_DOMAIN_DELETE', status]);
    }
  }

  async function raise(id: string, type: AlarmType, content = `${type} of ${id}`): Promise<AlarmDbRow> {
    await raiseAlarm(db, { messageId: id, type, content });
    return (await alarmsOf(id, type)).at(-1)!;
  }

  async function expectRejected(p: Promise<unknown>, type: new (...args: never[]) => ValidationError, status: number): Promise<ValidationError> {
    const err = await p.then(() => undefined, (e: unknown) => e);
    expect(err, 'the call must be refused').to.be.instanceOf(type);
    expect((err as ValidationError).status).to.equal(status);
    return err as ValidationError;
  }

  describe('raise, acknowledge, resolve', () => {
    it('when the same batch and type is raised again while open and while acknowledged, then one row counts the occurrences, moves last_seen_at, and only the first raise writes an opened notification', async () => {
      const id = messageId();
      const first = await raise(id, 'BATCH_FAILURES', 'first');
      await raise(id, 'BATCH_FAILURES', 'second');
      await acknowledgeAlarms(db, { ids: [first.id], by: 'alice' });
      await raise(id, 'BATCH_FAILURES', 'third');
      const rows = await alarmsOf(id);
      expect(rows).to.have.length(1);
      expect(rows[0]).to.include({ id: first.id, state: 'acknowledged', occurrences: 3, content: 'third' });
      expect(rows[0]!.last_seen_at.getTime()).to.be.greaterThan(rows[0]!.created_at.getTime());
      expect(await outboxOf([first.id])).to.deep.equal([{ alarm_id: first.id, event: 'opened', alarm_type: 'BATCH_FAILURES' }]);
      // Another type of the same batch is another alarm.
      const parked = await raise(id, 'JOB_PARKED');
      expect(parked.id).not.to.equal(first.id);
      expect((await outboxOf([parked.id])).map((n) => n.event)).to.deep.equal(['opened']);
    });

    it('when an alarm was resolved and the same problem comes back, then a new alarm opens with its own opened notification and the resolved one stays resolved', async () => {
      const id = messageId();
      const old = await raise(id, 'JOB_PARKED', 'parked once');
      await resolveAlarms(db, { ids: [old.id], by: 'bob', note: 'queue fixed' });
      const again = await raise(id, 'JOB_PARKED', 'parked again');
      expect(again.id).not.to.equal(old.id);
      expect((await alarmById(old.id)).state).to.equal('resolved');
      expect(again).to.include({ state: 'open', occurrences: 1 });
      expect((await outboxOf([old.id, again.id])).map((n) => [n.alarm_id, n.event])).to.deep.equal([
        [old.id, 'opened'], [old.id, 'resolved'], [again.id, 'opened'],
      ]);
    });

    it('when alarms are acknowledged, then state, who, when and the note are set without a notification, and acknowledging one again is a 409 that changes none of them', async () => {
      const [a, b] = [await raise(messageId(), 'BATCH_FAILURES'), await raise(messageId(), 'TOKEN_REJECTED')];
      const changed = await acknowledgeAlarms(db, { ids: [b.id, a.id], by: 'alice', note: 'looking at the platform' });
      expect(changed.map((r) => [r.id, r.state, r.acknowledgedBy, r.ackNote])).to.deep.equal([
        [a.id, 'acknowledged', 'alice', 'looking at the platform'], [b.id, 'acknowledged', 'alice', 'looking at the platform'],
      ].sort((x, y) => (x[0] as number) - (y[0] as number)));
      expect((await alarmById(a.id)).acknowledged_at).to.be.instanceOf(Date);
      expect((await outboxOf([a.id, b.id])).map((n) => n.event)).to.deep.equal(['opened', 'opened']);

      const c = await raise(messageId(), 'JOB_PARKED');
      const err = await expectRejected(acknowledgeAlarms(db, { ids: [c.id, a.id], by: 'carol' }), AlarmStateError, 409);
      expect(err.message).to.contain(`alarm ${a.id}: it is already acknowledged (by alice)`);
      expect(await alarmById(c.id)).to.include({ state: 'open', acknowledged_by: null });
      expect(await alarmById(a.id)).to.include({ acknowledged_by: 'alice' });
    });

    it('when alarms are resolved, then each gets who, when, the note and a resolved notification; resolving again is a 409, an unknown id a 404 and a missing note a 400, and none of those changes anything', async () => {
      const open = await raise(messageId(), 'BATCH_FAILURES');
      const acked = await raise(messageId(), 'BATCH_FAILURES');
      await acknowledgeAlarms(db, { ids: [acked.id], by: 'alice' });
      const changed = await resolveAlarms(db, { ids: [open.id, acked.id], by: 'bob', note: 'platform fixed, replayed' });
      expect(changed.map((r) => [r.id, r.state, r.resolvedBy, r.resolveNote])).to.deep.equal([
        [open.id, 'resolved', 'bob', 'platform fixed, replayed'], [acked.id, 'resolved', 'bob', 'platform fixed, replayed'],
      ]);
      expect((await alarmById(acked.id)).acknowledged_by, 'the acknowledgement is kept').to.equal('alice');
      expect((await outboxOf([open.id, acked.id])).filter((n) => n.event === 'resolved').map((n) => n.alarm_id)).to.deep.equal([open.id, acked.id]);

      const other = await raise(messageId(), 'JOB_PARKED');
      const before = await outboxOf([open.id, other.id]);
      const twice = await expectRejected(resolveAlarms(db, { ids: [other.id, open.id], by: 'carol', note: 'again' }), AlarmStateError, 409);
      expect(twice.message).to.contain(`alarm ${open.id}: it is already resolved (by bob)`);
      expect(await expectRejected(acknowledgeAlarms(db, { ids: [open.id], by: 'carol' }), AlarmStateError, 409)).to.have.property('message').that.contains('resolved');
      const unknown = await expectRejected(resolveAlarms(db, { ids: [other.id, 2_000_000_000], by: 'carol', note: 'x' }), UnknownAlarmError, 404);
      expect(unknown.message).to.contain('2000000000');
      await expectRejected(resolveAlarms(db, { ids: [other.id], by: 'carol', note: '  ' }), ValidationError, 400);
      expect(await alarmById(other.id)).to.include({ state: 'open', resolved_by: null });
      expect(await alarmById(open.id)).to.include({ resolved_by: 'bob', resolve_note: 'platform fixed, replayed' });
      expect(await outboxOf([open.id, other.id]), 'no notification for a refused step').to.deep.equal(before);
    });
  });

  describe('resolving by themselves', () => {
    it('when a batch\'s failed domains succeed after a replay, then BATCH_FAILURES and JOB_PARKED resolve by system "after a replay" with a resolved notification each, and the unsupported item\'s alarm stays open', async () => {
      const id = messageId();
      await seedBatch(id, { 'ok.example.com': 'succeeded', 'ko1.example.com': 'failed', 'ko2.example.com': 'failed', 'add.example.com': 'unsupported' });
      const failures = await raise(id, 'BATCH_FAILURES');
      const parked = await raise(id, 'JOB_PARKED');
      const unsupported = await raise(id, 'UNSUPPORTED_REQ_TYPE');
      expect(await resolveRecoveredBatchAlarms(db, id), 'nothing resolves while domains are failed').to.deep.equal([]);

      // The operator replays; a worker then deletes both.
      const reopened = await reopenForReplay(db, [id], false, false);
      expect(reopened.map((d) => d.domain)).to.deep.equal(['ko1.example.com', 'ko2.example.com']);
      expect(await resolveRecoveredBatchAlarms(db, id), 'nothing resolves while domains are pending').to.deep.equal([]);
      await claimDomains(db, id, { workerId: 'w1', leaseMs: 60_000, limit: 10, exclude: [] });
      await settleSucceeded(db, id, ['ko1.example.com', 'ko2.example.com']);

      const resolved = await resolveRecoveredBatchAlarms(db, id);
      expect(resolved.map((r) => r.id).sort()).to.deep.equal([failures.id, parked.id].sort());
      for (const alarmId of [failures.id, parked.id]) {
        const row = await alarmById(alarmId);
        expect(row).to.include({ state: 'resolved', resolved_by: 'system' });
        expect(row.resolve_note).to.equal('resolved: all 3 domains to delete succeeded after a replay (1 unsupported item(s) stay under their UNSUPPORTED_REQ_TYPE alarm)');
      }
      expect(await alarmById(unsupported.id)).to.include({ state: 'open' });
      expect((await outboxOf([failures.id, parked.id, unsupported.id])).map((n) => [n.alarm_id, n.event])).to.deep.equal([
        [failures.id, 'opened'], [parked.id, 'opened'], [unsupported.id, 'opened'], [failures.id, 'resolved'], [parked.id, 'resolved'],
      ]);
      expect(await resolveRecoveredBatchAlarms(db, id), 'a second call finds nothing to resolve').to.deep.equal([]);
    });

    it('when a batch\'s retryable domains succeed on a later retry, then its TOKEN_REJECTED alarm resolves "after a retry"', async () => {
      const id = messageId();
      await seedBatch(id, { 'a.example.com': 'succeeded', 'b.example.com': 'retryable' });
      const rejected = await raise(id, 'TOKEN_REJECTED');
      expect(await resolveRecoveredBatchAlarms(db, id)).to.deep.equal([]);
      await claimDomains(db, id, { workerId: 'w1', leaseMs: 60_000, limit: 10, exclude: [] });
      await settleSucceeded(db, id, ['b.example.com']);
      expect((await resolveRecoveredBatchAlarms(db, id)).map((r) => r.id)).to.deep.equal([rejected.id]);
      expect(await alarmById(rejected.id)).to.include({
        state: 'resolved', resolved_by: 'system', resolve_note: 'resolved: all 2 domains succeeded after a retry',
      });
    });

    describe('through the running service', () => {
      let sim: Simulator;
      let env: Record<string, string>;
      let service: Awaited<ReturnType<typeof startService>> | undefined;

      beforeEach(async () => {
        sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: 20 });
        env = testEnv({ SECPLAT_BASE_URL: (await sim.start()).url, SECPLAT_BATCH_SIZE: '5' });
      });

      afterEach(async () => {
        await service?.stop();
        service = undefined;
        await sim.stop();
        await cleanupNames(env);
      });

      it('when a failed batch is replayed and the worker deletes every domain, then its BATCH_FAILURES alarm is resolved by system "after a replay" and a resolved notification is written', async () => {
        const config = testConfig(env);
        service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
        const url = `http://127.0.0.1:${service.port}`;
        const id = messageId();
        const domains = domainsFor(id.slice(2, 10), 8);
        await seedInventory(db, domains);
        sim.setOptions({ failIds: domains.slice(0, 2).map((d) => `uid-${d}`) });
        expect((await postCallback(url, callbackBody(id, domains))).status).to.equal(200);
        const alarm = await waitFor('the BATCH_FAILURES alarm', async () => (await alarmsOf(id, 'BATCH_FAILURES'))[0]);
        expect(alarm.state).to.equal('open');
        expect(await statusCounts(db, id)).to.include({ succeeded: 6, failed: 2 });

        sim.setOptions({ failIds: [] });
        await replayBatches(service.ctx, [id], { all: false, dryRun: false });
        const resolved = await waitFor('the alarm resolved', async () => {
          const row = await alarmById(alarm.id);
          return row.state === 'resolved' ? row : undefined;
        });
        expect(resolved).to.include({ resolved_by: 'system', resolve_note: 'resolved: all 8 domains succeeded after a replay' });
        expect((await outboxOf([alarm.id])).map((n) => n.event)).to.deep.equal(['opened', 'resolved']);
      });
    });
  });

  describe('npm run alarms', function () {
    this.timeout(60_000);

    function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
      return new Promise((resolve) => {
        execFile(process.execPath, ['--import', 'tsx', 'scripts/alarms.ts', ...args], {
          cwd: ROOT, timeout: 50_000, env: { ...process.env, DATABASE_URL: process.env.DATABASE_URL, CALLBACK_AUTH: 'none' },
        }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
      });
    }

    it('when listing, then id, state, occurrences and last seen are shown for open and acknowledged alarms, and --state resolved or all shows the others', async () => {
      const [a, b, c] = [messageId(), messageId(), messageId()];
      const open = await raise(a, 'BATCH_FAILURES', 'open one');
      await raise(a, 'BATCH_FAILURES', 'open one, again');
      const acked = await raise(b, 'JOB_PARKED', 'acked one');
      await acknowledgeAlarms(db, { ids: [acked.id], by: 'alice' });
      const done = await raise(c, 'TOKEN_REJECTED', 'resolved one');
      await resolveAlarms(db, { ids: [done.id], by: 'bob', note: 'ok now' });

      const table = await cli([a, b, c]);
      expect(table.code, table.stderr).to.equal(0);
      expect(table.stdout).to.match(/ID\s+STATE\s+SEEN\s+RAISED\s+LAST SEEN\s+MESSAGEID\s+TYPE\s+CONTENT/);
      expect(table.stdout).to.match(new RegExp(`\\b${open.id}\\s+open\\s+2\\s+\\S+ \\S+\\s+\\S+ \\S+\\s+${a}\\s+BATCH_FAILURES\\s+open one, again`));
      expect(table.stdout).to.match(new RegExp(`\\b${acked.id}\\s+acknowledged\\s+1\\s`));
      expect(table.stdout).not.to.contain('resolved one');

      const json = await cli([a, b, c, '--state', 'resolved', '--json']);
      expect(json.code, json.stderr).to.equal(0);
      const out = JSON.parse(json.stdout) as { alarms: { id: number; state: string; resolvedBy: string; resolveNote: string; occurrences: number }[] };
      expect(out.alarms.map((x) => [x.id, x.state, x.resolvedBy, x.resolveNote])).to.deep.equal([[done.id, 'resolved', 'bob', 'ok now']]);

      const all = await cli([a, b, c, '--state', 'all', '--json']);
      expect((JSON.parse(all.stdout) as { alarms: { id: number }[] }).alarms.map((x) => x.id).sort()).to.deep.equal([open.id, acked.id, done.id].sort());

      const bad = await cli(['--state', 'closed']);
      expect(bad.code).to.equal(2);
      expect(bad.stderr).to.contain('--state');
    });

    it('when ack and resolve are run, then the rows record --by or the OS user and the notes; resolve without --note, resolving twice, acknowledging a resolved alarm and an unknown id exit 2 and change nothing', async () => {
      const [x, y] = [await raise(messageId(), 'BATCH_FAILURES'), await raise(messageId(), 'JOB_PARKED')];

      const ack = await cli(['ack', String(x.id), String(y.id), '--note', 'on it']);
      expect(ack.code, ack.stderr).to.equal(0);
      expect(ack.stdout).to.contain('acknowledged').and.contain('on it');
      for (const id of [x.id, y.id]) expect(await alarmById(id)).to.include({ state: 'acknowledged', acknowledged_by: os.userInfo().username, ack_note: 'on it' });

      const noNote = await cli(['resolve', String(x.id)]);
      expect(noNote.code).to.equal(2);
      expect(noNote.stderr).to.contain('--note');
      expect((await alarmById(x.id)).state).to.equal('acknowledged');

      const resolve = await cli(['resolve', String(x.id), '--note', 'replayed, all deleted', '--by', 'carol', '--json']);
      expect(resolve.code, resolve.stderr).to.equal(0);
      expect((JSON.parse(resolve.stdout) as { alarms: { id: number; state: string }[] }).alarms.map((a) => [a.id, a.state])).to.deep.equal([[x.id, 'resolved']]);
      expect(await alarmById(x.id)).to.include({ state: 'resolved', resolved_by: 'carol', resolve_note: 'replayed, all deleted' });

      for (const args of [
        ['resolve', String(x.id), String(y.id), '--note', 'again'],
        ['ack', String(x.id)],
        ['resolve', String(y.id), '999999999', '--note', 'unknown'],
      ]) {
        const r = await cli(args);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).to.equal(2);
        expect(r.stderr, args.join(' ')).to.match(/already resolved|no alarm with id 999999999/).and.contain('alarms:');
        expect(r.stderr).not.to.match(/\n\s+at /);
      }
      expect(await alarmById(y.id), 'y was in every refused call and is unchanged').to.include({ state: 'acknowledged', resolved_by: null });
      expect(await alarmById(x.id)).to.include({ resolved_by: 'carol' });
    });
  });
});
