/**
 * Alarm notifications through the outbox, against the real PostgreSQL and a real local HTTP receiver that
 * can be down, slow, answer 500 or hold a request: nothing lost, nothing confirmed twice, the same
 * Idempotency-Key on every retry of a message (also after a stop or a SIGKILL mid-request), two senders
 * never sending the same row, floods grouped per alarm type, and each format's body.
 */
import { expect } from 'chai';
import type pg from 'pg';
import { loadConfig } from '../../src/config.js';
import { createContext } from '../../src/context.js';
import { ConfigError } from '../../src/lib/errors.js';
import { startService } from '../../src/main.js';
import {
  createAlarmNotifier, notifierOptions, startAlarmNotifier, type AlarmNotifierOptions,
} from '../../src/notify/sender.js';
import { resolveAlarms } from '../../src/store/alarm-lifecycle.js';
import { raiseAlarm, type AlarmType } from '../../src/store/alarms.js';
import {
  captureLogger, cleanupNames, messageId, spawnService, testConfig, testDb, testEnv, waitFor, type ServiceProcess,
} from '../helpers/env.js';
import { startWebhookReceiver, type ReceivedRequest, type WebhookReceiver } from '../helpers/webhook-receiver.js';

interface OutboxRow { id: number; alarm_id: number; event: string; attempts: number; delivery_key: string | null; delivered_at: Date | null; last_error: string | null }
interface JsonEvent { notificationId: number; event: string; alarmId: number; messageId: string | null; type: string }
interface JsonBody { key: string; alarmType: string; summary: string; events: JsonEvent[] }

describe('alarm notifications', function () {
  let db: pg.Pool;
  let receiver: WebhookReceiver;
  const cleanups: (() => Promise<unknown>)[] = [];

  beforeEach(async () => {
    db = testDb();
    // The test database is shared by every test file, and the others leave undelivered outbox rows behind:
    // these tests own the outbox while they run (files run one after another).
    await db.query(`UPDATE alarm_notification SET delivered_at = now(), last_error = 'set aside by alarm-notify tests' WHERE delivered_at IS NULL`);
    await db.query('DELETE FROM alarm_notification_window');
    receiver = await startWebhookReceiver();
  });

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await receiver.close();
    await db.end();
  });

  function options(over: Partial<AlarmNotifierOptions> = {}): AlarmNotifierOptions {
    return {
      url: `${receiver.origin}/hook`, format: 'json', publicBaseUrl: '', timeoutMs: 1000, groupMs: 0,
      intervalMs: 50, backoffMs: 100, backoffMaxMs: 400, ...over,
    };
  }

  function started(over: Partial<AlarmNotifierOptions> = {}, logger = captureLogger('warn').logger) {
    const n = startAlarmNotifier({ db, logger }, options(over));
    cleanups.push(() => n.stop());
    return n;
  }

  async function raise(type: AlarmType = 'BATCH_FAILURES', id: string | null = messageId(), content = `${type} test alarm`): Promise<{ alarmId: number; messageId: string | null }> {
    await raiseAlarm(db, { messageId: id, type, content });
    const { rows } = await db.query<{ id: number }>(
      `SELECT id::int FROM sys_task_process_alarm WHERE coalesce(message_id, '') = coalesce($1, '') AND alarm_type = $2 AND state <> 'resolved'`, [id, type]);
    return { alarmId: rows[0]!.id, messageId: id };
  }

  const outbox = async (alarmIds: number[]) => (await db.query<OutboxRow>(
    `SELECT id::int, alarm_id::int, event, attempts, delivery_key, delivered_at, last_error FROM alarm_notification
     WHERE alarm_id = ANY($1) ORDER BY id`, [alarmIds])).rows;
  const delivered = (alarmIds: number[]) => waitFor('the notifications delivered', async () => {
    const rows = await outbox(alarmIds);
    return rows.length > 0 && rows.every((r) => r.delivered_at) ? rows : undefined;
  });
  const undeliveredCount = async () => (await db.query<{ n: number }>('SELECT count(*)::int AS n FROM alarm_notification WHERE delivered_at IS NULL')).rows[0]!.n;
  const eventsOf = (r: ReceivedRequest) => (r.body as JsonBody).events;

  describe('delivery', () => {
    it('when the receiver is down and then comes back, then the attempts are recorded and the notification is delivered once after it is back', async () => {
      await receiver.down();
      const { alarmId, messageId: id } = await raise();
      const sender = started();
      await waitFor('two refused attempts', async () => {
        const [row] = await outbox([alarmId]);
        return row!.attempts >= 2 && !row!.delivered_at && /ECONNREFUSED/.test(row!.last_error ?? '');
      });
      expect(receiver.requests).to.have.length(0);

      await receiver.up();
      const [row] = await delivered([alarmId]);
      expect(receiver.requests).to.have.length(1);
      expect(receiver.requests[0]!.key).to.equal(row!.delivery_key);
      expect(eventsOf(receiver.requests[0]!).map((e) => [e.event, e.alarmId, e.messageId])).to.deep.equal([['opened', alarmId, id]]);
      await sender.runOnce();
      expect(receiver.requests, 'nothing is sent again once confirmed').to.have.length(1);
    });

    it('when the receiver answers 500 and then 200, then the message is retried with the same Idempotency-Key and delivered once', async () => {
      receiver.plan({ status: 500, body: 'boom' });
      const { alarmId } = await raise('JOB_PARKED');
      const sender = started();
      const [row] = await delivered([alarmId]);
      await sender.runOnce();
      expect(receiver.requests.map((r) => r.status)).to.deep.equal([500, 200]);
      expect(receiver.requests.map((r) => r.key)).to.deep.equal([row!.delivery_key, row!.delivery_key]);
      expect(receiver.confirmed()).to.have.length(1);
      expect(row).to.include({ attempts: 2, last_error: 'HTTP 500: boom' });
    });

    it('when the receiver is slower than the request timeout, then the attempt is cut, retried with the same key and delivered', async () => {
      receiver.plan({ delayMs: 120_000 });
      const { alarmId } = await raise('TOKEN_REJECTED');
      started({ timeoutMs: 300 });
      const [row] = await delivered([alarmId]);
      await waitFor('the receiver saw the first sender go away', async () => receiver.requests[0]!.senderGone);
      expect(receiver.requests).to.have.length(2);
      expect(receiver.requests.map((r) => r.key)).to.deep.equal([row!.delivery_key, row!.delivery_key]);
      expect(receiver.requests[0]!.confirmed).to.equal(false);
      expect(receiver.requests[1]!.confirmed).to.equal(true);
      expect(row!.last_error).to.equal('no answer within 300 ms');
    });

    it('when WeCom answers HTTP 200 with an errcode, then the message is not taken as delivered and is retried with the same key', async () => {
      receiver.plan({ status: 200, body: '{"errcode":45009,"errmsg":"api freq out of limit"}' });
      const { alarmId } = await raise();
      started({ format: 'wecom' });
      const [row] = await delivered([alarmId]);
      expect(receiver.requests.map((r) => r.key)).to.deep.equal([row!.delivery_key, row!.delivery_key]);
      expect(row!.last_error).to.contain('errcode 45009: api freq out of limit');
    });

    it('when two senders run at once over the same rows, then every row is in exactly one message, every message is sent once and confirmed', async () => {
      const [poolA, poolB] = [testDb(), testDb()];
      cleanups.push(() => poolA.end(), () => poolB.end());
      const logger = captureLogger('warn').logger;
      const a = createAlarmNotifier({ db: poolA, logger }, options());
      const b = createAlarmNotifier({ db: poolB, logger }, options());
      // Slow enough answers that the two passes overlap on the same types.
      receiver.setDefault({ delayMs: 30 });
      const types: AlarmType[] = ['BATCH_FAILURES', 'JOB_PARKED', 'TOKEN_REJECTED'];
      const alarmIds: number[] = [];
      const raiseRound = async () => { for (const t of types) for (let i = 0; i < 3; i++) alarmIds.push((await raise(t)).alarmId); };
      await raiseRound();
      await Promise.all([a.runOnce(), b.runOnce(), raiseRound()]);
      await waitFor('every row delivered', async () => {
        await Promise.all([a.runOnce(), b.runOnce()]);
        return (await undeliveredCount()) === 0;
      });

      const rows = await outbox(alarmIds);
      expect(rows).to.have.length(18);
      const keys = receiver.requests.map((r) => r.key);
      expect(new Set(keys).size, 'no message was sent twice').to.equal(keys.length);
      expect(receiver.confirmed()).to.have.length(receiver.requests.length);
      const sentIds = receiver.requests.flatMap((r) => eventsOf(r).map((e) => e.notificationId));
      expect([...sentIds].sort((x, y) => x - y), 'each row in exactly one message').to.deep.equal(rows.map((r) => r.id));
      for (const r of receiver.requests) {
        for (const e of eventsOf(r)) expect(rows.find((row) => row.id === e.notificationId)!.delivery_key).to.equal(r.key);
      }
    });
  });

  describe('restarts', () => {
    it('when the service is stopped while the receiver holds the request, then the next service delivers the same message with the same Idempotency-Key', async () => {
      const env = testEnv({
        ROLE: 'api', ALARM_WEBHOOK_URL: `${receiver.origin}/hook`, ALARM_WEBHOOK_TIMEOUT_MS: '1000',
        ALARM_NOTIFY_INTERVAL_MS: '50', ALARM_NOTIFY_BACKOFF_MS: '100', ALARM_NOTIFY_BACKOFF_MAX_MS: '200', ALARM_NOTIFY_GROUP_MS: '0',
      });
      cleanups.push(() => cleanupNames(env));
      const config = testConfig(env);
      receiver.plan({ hold: true });
      const { alarmId } = await raise();
      const first = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
      await receiver.waitForRequests(1);
      await first.stop();
      const [afterStop] = await outbox([alarmId]);
      expect(afterStop!.delivered_at).to.equal(null);

      const second = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
      cleanups.push(() => second.stop());
      const [row] = await delivered([alarmId]);
      expect(receiver.requests).to.have.length(2);
      expect(receiver.requests.map((r) => r.key)).to.deep.equal([row!.delivery_key, row!.delivery_key]);
      expect(receiver.confirmed().map((r) => r.key)).to.deep.equal([row!.delivery_key]);
    });

    it('when the service process is killed (SIGKILL) while the receiver holds the request, then a new process sends the same message again with the same key and it is delivered', async () => {
      const env = testEnv({
        ROLE: 'api', ALARM_WEBHOOK_URL: `${receiver.origin}/hook`, ALARM_WEBHOOK_TIMEOUT_MS: '20000',
        ALARM_NOTIFY_INTERVAL_MS: '50', ALARM_NOTIFY_BACKOFF_MS: '100', ALARM_NOTIFY_BACKOFF_MAX_MS: '200', ALARM_NOTIFY_GROUP_MS: '0',
      });
      cleanups.push(() => cleanupNames(env));
      receiver.plan({ hold: true });
      const { alarmId } = await raise();
      let proc: ServiceProcess | undefined = await spawnService(env);
      cleanups.push(() => proc?.stop() ?? Promise.resolve());
      const [held] = await receiver.waitForRequests(1);
      const [formed] = await outbox([alarmId]);
      expect(formed!.delivery_key, 'the key was committed before the request went out').to.equal(held!.key);
      proc.proc.kill('SIGKILL');
      await proc.exited;
      await waitFor('the receiver saw the killed sender go away', async () => held!.senderGone);
      const [afterKill] = await outbox([alarmId]);
      expect(afterKill).to.include({ delivered_at: null, attempts: 0 });

      proc = await spawnService(env);
      const [row] = await delivered([alarmId]);
      expect(receiver.requests.map((r) => r.key)).to.deep.equal([held!.key, held!.key]);
      expect(receiver.confirmed()).to.have.length(1);
      expect(row).to.include({ attempts: 1, delivery_key: held!.key });
    });
  });

  describe('grouping', () => {
    it('when several alarms of one type come within ALARM_NOTIFY_GROUP_MS, then the first goes out at once and the rest in one message listing them all, while another type is not held back', async () => {
      const sender = createAlarmNotifier({ db, logger: captureLogger('warn').logger }, options({ groupMs: 60_000 }));
      const first = await raise('BATCH_FAILURES');
      expect(await sender.runOnce()).to.equal(1);

      const flood = [await raise('BATCH_FAILURES'), await raise('BATCH_FAILURES'), await raise('BATCH_FAILURES')];
      const parked = await raise('JOB_PARKED');
      expect(await sender.runOnce(), 'only JOB_PARKED: BATCH_FAILURES waits for its window').to.equal(1);
      expect(receiver.requests.map((r) => (r.body as JsonBody).alarmType)).to.deep.equal(['BATCH_FAILURES', 'JOB_PARKED']);
      expect(eventsOf(receiver.requests[1]!).map((e) => e.alarmId)).to.deep.equal([parked.alarmId]);
      expect(await sender.runOnce()).to.equal(0);

      // The window has passed (moved back rather than waited for).
      await db.query(`UPDATE alarm_notification_window SET last_message_at = last_message_at - interval '61 seconds' WHERE alarm_type = 'BATCH_FAILURES'`);
      expect(await sender.runOnce()).to.equal(1);
      expect(receiver.requests).to.have.length(3);
      const grouped = receiver.requests[2]!.body as JsonBody;
      expect(grouped.summary).to.equal('pcp alarm: 3 batches failed (BATCH_FAILURES)');
      expect(grouped.events.map((e) => [e.event, e.alarmId, e.messageId])).to.deep.equal(flood.map((f) => ['opened', f.alarmId, f.messageId]));
      expect(eventsOf(receiver.requests[0]!).map((e) => e.alarmId)).to.deep.equal([first.alarmId]);
      expect(await undeliveredCount()).to.equal(0);
    });
  });

  describe('formats', () => {
    const PUBLIC = 'https://ops.example.com/pcp/';

    /** A batch with 25 failed domains and one that succeeded, and its BATCH_FAILURES alarm; returns what the texts must name. */
    async function failedBatch() {
      const id = messageId();
      const domains = Array.from({ length: 25 }, (_, i) => `d${String(i).padStart(2, '0')}.${id.slice(2, 10)}.example.com`);
      await db.query('INSERT INTO batch (message_id, publish_pending) VALUES ($1, false)', [id]);
      await db.query(
        `INSERT INTO batch_domain (message_id, domain, req_type, status, detail, attempts)
         SELECT $1, d, 'SELF_DOMAIN_DELETE', 'failed', 'user not found', 4 FROM unnest($2::text[]) AS d
         UNION ALL SELECT $1, 'ok.' || $3 || '.example.com', 'SELF_DOMAIN_DELETE', 'succeeded', NULL, 1`,
        [id, domains, id.slice(2, 10)]);
      const { alarmId } = await raise('BATCH_FAILURES', id, `batch finished: 25 of 26 domains failed: ${domains[0]} (failed: user not found); …`);
      return { id, alarmId, listed: domains.slice(0, 20), notListed: domains.slice(20), console: `https://ops.example.com/pcp/console/batches/${id}` };
    }

    async function sendWith(format: string) {
      const b = await failedBatch();
      const config = testConfig(testEnv({ ALARM_WEBHOOK_URL: `${receiver.origin}/hook`, ALARM_WEBHOOK_FORMAT: format, PUBLIC_BASE_URL: PUBLIC }));
      const sender = createAlarmNotifier({ db, logger: captureLogger('warn').logger }, notifierOptions(config));
      expect(await sender.runOnce()).to.equal(1);
      const [req] = receiver.requests;
      expect(req!.headers['content-type']).to.match(/^application\/json/);
      expect(req!.key).to.match(/^[0-9a-f-]{36}$/);
      return { ...b, req: req!, body: req!.body as Record<string, unknown> };
    }

    function expectText(text: string, b: Awaited<ReturnType<typeof sendWith>>) {
      expect(text).to.contain(b.id);
      for (const d of b.listed) expect(text).to.contain(`\`${d}\``);
      for (const d of b.notListed) expect(text).not.to.contain(d);
      expect(text).to.contain('failing domains (25)').and.contain('and 5 more');
      expect(text).to.contain(`\`npm run replay -- ${b.id} --reason "..."\``);
    }

    it('when the format is json, then the body carries the event, alarm id, type, messageId, state, content, failing domains, counts, replay command and console link', async () => {
      const b = await sendWith('json');
      expect(b.body).to.include({ source: 'pipeline-callback-processor', key: b.req.key, alarmType: 'BATCH_FAILURES', summary: 'pcp alarm: 1 batch failed (BATCH_FAILURES)' });
      const [e] = (b.body as { events: Record<string, unknown>[] }).events;
      expect(e).to.include({ event: 'opened', alarmId: b.alarmId, type: 'BATCH_FAILURES', messageId: b.id, state: 'open', failingTotal: 25,
        replayCommand: `npm run replay -- ${b.id} --reason "..."`, consoleUrl: b.console, occurrences: 1 });
      expect(e!.content).to.contain('25 of 26 domains failed');
      expect(e!.failingDomains).to.deep.equal(b.listed);
      expect(e!.counts).to.include({ failed: 25, succeeded: 1 });
      expect(b.body.text).to.contain(b.id);
    });

    it('when the format is slack, then the body is {"text"} in mrkdwn with the messageId, 20 failing domains and a count of the rest, the replay command and a <link|label>', async () => {
      const b = await sendWith('slack');
      expect(Object.keys(b.body)).to.deep.equal(['text']);
      const text = b.body.text as string;
      expectText(text, b);
      expect(text).to.match(/^\*pcp alarm: 1 batch failed \(BATCH_FAILURES\)\*/).and.contain('*opened*');
      expect(text).to.contain(`<${b.console}|open in the console>`);
    });

    it('when the format is wecom, then the body is {"msgtype":"markdown","markdown":{"content"}} within 4096 bytes with a [label](link)', async () => {
      const b = await sendWith('wecom');
      expect(b.body.msgtype).to.equal('markdown');
      const md = b.body.markdown as Record<string, string>;
      expect(Object.keys(md)).to.deep.equal(['content']);
      expectText(md.content!, b);
      expect(md.content).to.contain('**opened**').and.contain(`[open in the console](${b.console})`);
      expect(Buffer.byteLength(md.content!)).to.be.at.most(4096);
    });

    it('when the format is dingtalk, then the body is {"msgtype":"markdown","markdown":{"title","text"}} with the summary as title', async () => {
      const b = await sendWith('dingtalk');
      expect(b.body.msgtype).to.equal('markdown');
      const md = b.body.markdown as Record<string, string>;
      expect(md.title).to.equal('pcp alarm: 1 batch failed (BATCH_FAILURES)');
      expectText(md.text!, b);
      expect(md.text).to.contain(`[open in the console](${b.console})`);
    });

    it('when an alarm opens and resolves within one window, then one message carries both events and the resolution note', async () => {
      const { alarmId, messageId: id } = await raise('JOB_PARKED');
      await resolveAlarms(db, { ids: [alarmId], by: 'alice', note: 'queue drained' });
      const sender = createAlarmNotifier({ db, logger: captureLogger('warn').logger }, options({ format: 'slack' }));
      expect(await sender.runOnce()).to.equal(1);
      const text = (receiver.requests[0]!.body as { text: string }).text;
      expect(text).to.match(/^\*pcp alarm: 1 job parked, 1 resolved \(JOB_PARKED\)\*/);
      expect(text).to.contain(`*resolved* #${alarmId} \`${id}\` by alice: queue drained`);
    });
  });

  describe('configuration and secrets', () => {
    it('when the webhook URL carries a path secret, a key and a password, then no log line and no last_error holds them and the password is sent as Basic auth', async () => {
      const secrets = ['SECRETPATH-1234', 'SECRETKEY-5678', 'SECRETPASS-9012'];
      receiver.plan({ status: 403, body: `{"error":"bad key SECRETKEY-5678 for /hook/SECRETPATH-1234"}` });
      const { logger, lines } = captureLogger('debug');
      const url = `http://ops:SECRETPASS-9012@127.0.0.1:${receiver.port}/hook/SECRETPATH-1234?key=SECRETKEY-5678`;
      started({ url }, logger);
      const [row] = await delivered([(await raise()).alarmId]);
      expect(receiver.requests[0]!.path).to.equal('/hook/SECRETPATH-1234?key=SECRETKEY-5678');
      expect(receiver.requests[0]!.headers.authorization).to.equal(`Basic ${Buffer.from('ops:SECRETPASS-9012').toString('base64')}`);
      expect(row!.last_error).to.contain('HTTP 403').and.contain('***');
      expect(lines.some((l) => l.includes('not confirmed'))).to.equal(true);
      expect(lines.some((l) => l.includes('alarm notification delivered'))).to.equal(true);
      for (const s of secrets) {
        expect(row!.last_error).not.to.contain(s);
        expect(lines.filter((l) => l.includes(s)), s).to.deep.equal([]);
      }

      const bad = (() => { try { loadConfig({}, { CALLBACK_AUTH: 'none', ALARM_WEBHOOK_URL: 'ftp://host/hook?key=SECRETKEY-5678' }); } catch (e) { return e; } })();
      expect(bad).to.be.instanceOf(ConfigError);
      expect((bad as Error).message).to.contain('ALARM_WEBHOOK_URL').and.not.contain('SECRETKEY');
    });

    it('when ALARM_WEBHOOK_URL is empty, then the service says notifications are off and the outbox row stays undelivered', async () => {
      const env = testEnv({ ROLE: 'api' });
      cleanups.push(() => cleanupNames(env));
      const { alarmId } = await raise();
      const { logger, lines } = captureLogger('info');
      const config = testConfig(env);
      const service = await startService(config, createContext(config, { logger }));
      cleanups.push(() => service.stop());
      expect(lines.some((l) => l.includes('alarm notifications off'))).to.equal(true);
      expect((await outbox([alarmId]))[0]).to.include({ delivered_at: null, attempts: 0, delivery_key: null });
    });
  });
});

