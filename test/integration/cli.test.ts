/**
 * The operator CLIs run as real child processes against a real PostgreSQL (and RabbitMQ for replay):
 * exit codes, stdout/stderr and the rows they leave behind are what operators depend on.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { expect } from 'chai';
import pg from 'pg';
import { topologyNames } from '../../src/messaging/topology.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/test';
const RABBITMQ_URL = 'amqp://guest:guest@127.0.0.1:5672';
const RETRY_TIERS_MS = [1000];

interface Run { code: number; stdout: string; stderr: string }

const hex = (n: number) => randomBytes(n).toString('hex');
// Control characters a terminal would act on (ESC, CR, NUL, CSI U+009B…); "\n" ends lines and is allowed.
const RAW_CONTROL = /(?!\n)\p{Cc}/u;
// What a caller could store: a screen clear and colour (ESC), a carriage return that hides what came
// before, and a C1 CSI; around it normal Unicode that must come out unchanged.
const HOSTILE = 'café 東京 🚀 \u001b[2J\u001b[31mred\rover\u009b31m';
const HOSTILE_SHOWN = 'café 東京 🚀 \\x1b[2J\\x1b[31mred\\rover\\u009b31m';
const newMessageId = () => `pm${hex(16)}`;

describe('operator CLIs', function () {
  this.timeout(60_000);
  let databaseUrl: string;
  let ownDatabase: string | undefined;
  let tmp: string;
  // One AMQP prefix per run, so replay's queues never meet another test's or the service's.
  const amqpPrefix = `pcp-cli-test-${hex(4)}`;
  let brokerTouched = false;

  /** One short-lived connection per statement: nothing stays open between tests. */
  async function sql<T extends pg.QueryResultRow = pg.QueryResultRow>(text: string, params: unknown[] = [], url = databaseUrl): Promise<T[]> {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      return (await client.query<T>(text, params)).rows;
    } finally {
      await client.end();
    }
  }

  function run(script: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
    return new Promise((resolve) => {
      execFile(process.execPath, ['--import', 'tsx', `scripts/${script}.ts`, ...args], {
        cwd: ROOT,
        timeout: 50_000,
        env: {
          ...process.env, DATABASE_URL: databaseUrl, CALLBACK_AUTH: 'none', RABBITMQ_URL, AMQP_PREFIX: amqpPrefix,
          RETRY_TIERS_MS: RETRY_TIERS_MS.join(','), ...env,
        },
      }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
    });
  }

  async function seedBatch(messageId: string, domains: { domain: string; status: string; detail?: string; claimedUntil?: string }[]): Promise<void> {
    await sql('INSERT INTO batch (message_id, publish_pending) VALUES ($1, false)', [messageId]);
    for (const d of domains) {
      await sql(
        `INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, detail, claimed_by, claimed_until)
         VALUES ($1, $2, 'SELF_DOMAIN_DELETE', $3, 1, $4, $5, $6::timestamptz)`,
        [messageId, d.domain, d.status, d.detail ?? null, d.claimedUntil ? 'other-worker' : null, d.claimedUntil ?? null],
      );
    }
  }

  const domainsOf = (messageId: string) =>
    sql<{ domain: string; status: string; claimed_by: string | null; finished_at: Date | null; updated_at: Date }>(
      'SELECT domain, status, claimed_by, finished_at, updated_at FROM batch_domain WHERE message_id = $1 ORDER BY domain', [messageId]);

  before(async () => {
    // The root hook exports a per-run database; without it, this file makes and drops its own.
    if (process.env.DATABASE_URL) {
      databaseUrl = process.env.DATABASE_URL;
    } else {
      ownDatabase = `pcp_cli_${hex(6)}`;
      await sql(`CREATE DATABASE ${ownDatabase}`, [], ADMIN_URL);
      databaseUrl = ADMIN_URL.replace(/\/test$/, `/${ownDatabase}`);
    }
    const migrated = await run('migrate', []);
    expect(migrated.code, migrated.stderr).to.equal(0);
    tmp = await mkdtemp(path.join(os.tmpdir(), 'pcp-cli-'));
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
    if (brokerTouched) {
      const conn = await amqp.connect(RABBITMQ_URL);
      const ch = await conn.createChannel();
      const t = topologyNames(amqpPrefix, RETRY_TIERS_MS);
      for (const q of [t.jobsQueue, t.parkedQueue, ...t.retryQueues.map((r) => r.name)]) await ch.deleteQueue(q);
      for (const e of [t.jobsExchange, t.retryExchange, t.parkedExchange]) await ch.deleteExchange(e);
      await conn.close();
    }
    if (ownDatabase) await sql(`DROP DATABASE IF EXISTS ${ownDatabase} WITH (FORCE)`, [], ADMIN_URL);
  });

  describe('migrate', () => {
    it('when the schema is already current, then migrate applies nothing and exits 0', async () => {
      const r = await run('migrate', []);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(/up to date/);
    });

    it('when PostgreSQL is not reachable, then one sentence names the URL and the fix, without a stack trace', async () => {
      const r = await run('migrate', [], { DATABASE_URL: 'postgres://postgres:hunter2@127.0.0.1:1/test' });
      expect(r.code).to.equal(1);
      expect(r.stderr).to.match(/PostgreSQL is not reachable at postgres:\/\/\*\*\*@127\.0\.0\.1:1\/test \(ECONNREFUSED\)/);
      expect(r.stderr).to.match(/pg_ctlcluster/);
      expect(r.stderr).not.to.match(/hunter2|\n\s+at /);
    });
  });

  describe('domains:import', () => {
    it('when the CSV has good and bad rows, then good rows are upserted, bad lines are reported by number and it exits 0', async () => {
      const s = hex(4);
      const file = path.join(tmp, `mixed-${s}.csv`);
      await writeFile(file, [
        'domain,user_id_cdn',
        `WWW.A-${s}.example.com.,uidA`, // line 2: normalised to lower case without the dot
        `not_a_host-${s},uidX`,          // line 3: bad hostname
        `b-${s}.example.com,`,           // line 4: empty user_id_cdn
        `c-${s}.example.com,uidC`,       // line 5
        `www.a-${s}.example.com,uidDup`, // line 6: duplicate of line 2
        `d-${s}.example.com,uidD,extra`, // line 7: extra column
      ].join('\n'));
      const r = await run('import-domains', [file]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout.trim()).to.equal('imported 2, rejected 4');
      expect(r.stderr).to.match(/line 3: .*not a valid hostname/);
      expect(r.stderr).to.match(/line 4: user_id_cdn is empty/);
      expect(r.stderr).to.match(/line 6: duplicate of line 2/);
      expect(r.stderr).to.match(/line 7: expected 2 columns, got 3/);
      const rows = await sql('SELECT domain, user_id_cdn, status FROM cdn_domain WHERE domain LIKE $1 ORDER BY domain', [`%${s}%`]);
      expect(rows).to.deep.equal([
        { domain: `c-${s}.example.com`, user_id_cdn: 'uidC', status: 'active' },
        { domain: `www.a-${s}.example.com`, user_id_cdn: 'uidA', status: 'active' },
      ]);
    });

    it('when a row holds a NUL or another control character, then only that line is rejected by number and the good rows are imported', async () => {
      const s = hex(4);
      const file = path.join(tmp, `control-${s}.csv`);
      await writeFile(file, [
        'domain,user_id_cdn',
        `good1-${s}.example.com,uid1`,           // line 2
        `nul-${s}.example.com,uid\u0000x`,        // line 3: NUL, which PostgreSQL text cannot hold
        `esc-${s}.example.com,uid\u001b[31mred`,  // line 4: ESC
        `c1\u0000-${s}.example.com,uid4`,         // line 5: NUL in the domain
        `csi-${s}.example.com,uid\u009bx`,        // line 6: C1 CSI
        `good2-${s}.example.com,uid2`,           // line 7
      ].join('\n'));
      const r = await run('import-domains', [file]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout.trim()).to.equal('imported 2, rejected 4');
      expect(r.stderr).to.contain('line 3: user_id_cdn contains a control character (\\x00)')
        .and.contain('line 4: user_id_cdn contains a control character (\\x1b)')
        .and.contain('line 5: domain contains a control character (\\x00)')
        .and.contain('line 6: user_id_cdn contains a control character (\\u009b)');
      expect(r.stderr).not.to.match(/\n\s+at /);
      expect(r.stderr).not.to.match(RAW_CONTROL);
      expect(await sql('SELECT domain, user_id_cdn FROM cdn_domain WHERE domain LIKE $1 ORDER BY domain', [`%${s}%`])).to.deep.equal([
        { domain: `good1-${s}.example.com`, user_id_cdn: 'uid1' },
        { domain: `good2-${s}.example.com`, user_id_cdn: 'uid2' },
      ]);
    });

    it('when a bad hostname or the header holds control characters, then stderr shows them escaped', async () => {
      const file = path.join(tmp, `echo-${hex(4)}.csv`);
      await writeFile(file, `domain,user_id_cdn\nlocalhost\u001b[2J,u1\n`);
      const row = await run('import-domains', [file]);
      expect(row.code).to.equal(1);
      expect(row.stderr).to.contain('line 2: domain contains a control character (\\x1b)');
      expect(row.stderr).not.to.match(RAW_CONTROL);

      await writeFile(file, `dom\u001b[2Jain,user_id_cdn\nok.example.com,u1\n`);
      const header = await run('import-domains', [file]);
      expect(header.code).to.equal(2);
      expect(header.stderr).to.contain('got "dom\\x1b[2Jain,user_id_cdn"');
      expect(header.stderr).not.to.match(RAW_CONTROL);
    });

    it('when a deleted domain is imported again, then it is active with the new user_id_cdn', async () => {
      const domain = `again-${hex(4)}.example.com`;
      await sql(`INSERT INTO cdn_domain (domain, user_id_cdn, status, deleted_at) VALUES ($1, 'old', 'deleted', now())`, [domain]);
      const file = path.join(tmp, `again-${hex(4)}.csv`);
      await writeFile(file, `domain,user_id_cdn\n${domain},new\n`);
      const r = await run('import-domains', [file]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await sql('SELECT user_id_cdn, status, deleted_at FROM cdn_domain WHERE domain = $1', [domain]))
        .to.deep.equal([{ user_id_cdn: 'new', status: 'active', deleted_at: null }]);
    });

    it('when every row is bad, then nothing is imported and it exits 1', async () => {
      const file = path.join(tmp, `bad-${hex(4)}.csv`);
      await writeFile(file, 'domain,user_id_cdn\nlocalhost,u1\n10.0.0.1,u2\n');
      const r = await run('import-domains', [file]);
      expect(r.code).to.equal(1);
      expect(r.stdout.trim()).to.equal('imported 0, rejected 2');
      expect(r.stderr).to.match(/line 2: .*localhost/).and.match(/line 3: .*10\.0\.0\.1/);
    });

    it('when the file is missing, has the wrong header or no argument is given, then it exits 2 and imports nothing', async () => {
      const missing = await run('import-domains', [path.join(tmp, 'nope.csv')]);
      expect(missing.code).to.equal(2);
      expect(missing.stderr).to.match(/cannot read .*nope\.csv: no such file/);

      const domain = `hdr-${hex(4)}.example.com`;
      const file = path.join(tmp, `header-${hex(4)}.csv`);
      await writeFile(file, `host,id\n${domain},u1\n`);
      const wrongHeader = await run('import-domains', [file]);
      expect(wrongHeader.code).to.equal(2);
      expect(wrongHeader.stderr).to.match(/header must be "domain,user_id_cdn", got "host,id"/);
      expect(await sql('SELECT 1 FROM cdn_domain WHERE domain = $1', [domain])).to.have.length(0);

      expect((await run('import-domains', [])).code).to.equal(2);
    });
  });

  describe('status', () => {
    it('when the messageId is unknown, then it says so and exits 2', async () => {
      const id = newMessageId();
      const r = await run('status', [id]);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.contain(`no batch with messageId ${id}`);
      expect(r.stdout).to.equal('');
    });

    it('when the batch exists, then every domain and the counts by status are shown, as a table or as JSON', async () => {
      const id = newMessageId();
      await seedBatch(id, [
        { domain: 'ok.example.com', status: 'succeeded' },
        { domain: 'ko.example.com', status: 'failed', detail: 'user not found' },
      ]);
      const table = await run('status', [id]);
      expect(table.code, table.stderr).to.equal(0);
      expect(table.stdout).to.match(/ko\.example\.com\s+failed\s+1\s+user not found/);
      expect(table.stdout).to.contain('total 2: succeeded 1, failed 1');

      const json = await run('status', [id, '--json']);
      expect(json.code, json.stderr).to.equal(0);
      const parsed = JSON.parse(json.stdout) as { batch: { messageId: string }; counts: Record<string, number>; domains: { domain: string }[] };
      expect(parsed.batch.messageId).to.equal(id);
      expect(parsed.counts).to.include({ succeeded: 1, failed: 1, pending: 0 });
      expect(parsed.domains.map((d) => d.domain)).to.deep.equal(['ko.example.com', 'ok.example.com']);
    });

    it('when a domain, its user_id_cdn or detail holds ESC, CR or C1 characters, then the table shows them escaped and keeps normal Unicode', async () => {
      const id = newMessageId();
      await seedBatch(id, [{ domain: `x\u001b[8m.example.com`, status: 'failed', detail: HOSTILE }]);
      await sql('UPDATE batch_domain SET user_id_cdn = $2 WHERE message_id = $1', [id, 'uid\r\u009b2J']);
      const r = await run('status', [id]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).not.to.match(RAW_CONTROL);
      expect(r.stdout).to.contain(HOSTILE_SHOWN).and.contain('x\\x1b[8m.example.com').and.contain('uid\\r\\u009b2J');

      const json = await run('status', [id, '--json']);
      expect((JSON.parse(json.stdout) as { domains: { detail: string }[] }).domains[0]!.detail).to.equal(HOSTILE);
    });
  });

  describe('alarms', () => {
    it('when filtered by messageIds and --since, then only those alarms are listed with each batch\'s counts and failing domains', async () => {
      const [a, b, other] = [newMessageId(), newMessageId(), newMessageId()];
      await seedBatch(a, [
        { domain: 'a-ok.example.com', status: 'succeeded' },
        { domain: 'a-ko.example.com', status: 'failed', detail: 'user not found' },
        { domain: 'a-401.example.com', status: 'retryable', detail: '401 after 3 attempts' },
      ]);
      await seedBatch(b, [{ domain: 'b-x.example.com', status: 'unsupported', detail: 'unsupported reqType X' }]);
      // Only one alarm per batch and type may be active (migration 003): the older one was resolved.
      const alarm = (id: string, type: string, content: string, age: string, state = 'open') => sql(
        `INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, created_at, state) VALUES ($1, $2, $3, $4, now() - $5::interval, $6)`,
        [JSON.stringify({ taskId: `${id}_exc`, type: 'DOMAIN_B_PIPE' }), id, type, content, age, state]);
      await alarm(a, 'BATCH_FAILURES', 'old a', '3 days', 'resolved');
      await alarm(a, 'BATCH_FAILURES', 'new a', '1 minute');
      await alarm(b, 'UNSUPPORTED_REQ_TYPE', 'new b', '2 minutes');
      await alarm(other, 'BATCH_FAILURES', 'new other', '1 minute');

      const r = await run('alarms', [a, b, '--since', '1d', '--json']);
      expect(r.code, r.stderr).to.equal(0);
      const out = JSON.parse(r.stdout) as {
        alarms: { messageId: string; content: string }[];
        batches: { messageId: string; counts: Record<string, number>; failing: { domain: string; status: string; detail: string }[] }[];
      };
      expect(out.alarms.map((x) => x.content)).to.deep.equal(['new a', 'new b']);
      const batchA = out.batches.find((x) => x.messageId === a)!;
      expect(batchA.counts).to.include({ succeeded: 1, failed: 1, retryable: 1 });
      expect(batchA.failing.map((d) => [d.domain, d.status, d.detail])).to.deep.equal([
        ['a-401.example.com', 'retryable', '401 after 3 attempts'],
        ['a-ko.example.com', 'failed', 'user not found'],
      ]);
      expect(out.batches.find((x) => x.messageId === b)!.failing).to.have.length(1);
      expect(out.batches.map((x) => x.messageId)).not.to.include(other);

      const table = await run('alarms', [a, '--state', 'all']);
      expect(table.code, table.stderr).to.equal(0);
      expect(table.stdout).to.contain('old a').and.contain('new a').and.not.contain('new b');
      expect(table.stdout).to.match(/a-ko\.example\.com\s+failed\s+1\s+user not found/);
    });

    it('when --since is not a date, then it exits 2 with a message', async () => {
      const r = await run('alarms', ['--since', 'last tuesday']);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/--since.*must be an ISO date/);
    });

    it('when --since reaches before 1970 or outside the dates JavaScript and PostgreSQL hold, then it exits 2 with one sentence and no stack trace', async () => {
      for (const [since, why] of [
        ['99999999d', /must not be before 1970/], ['1969-12-31', /must not be before 1970/], ['1970-01-01T00:00:00+01:00', /must not be before 1970/],
        ['-271821-04-20', /must be an ISO date/], ['275760-09-14', /must be an ISO date/], ['2024-02-30', /must be an ISO date/],
      ] as const) {
        const r = await run('alarms', ['--since', since]);
        expect(r.code, `${since}: ${r.stderr}`).to.equal(2);
        expect(r.stderr, since).to.match(/--since/).and.match(why).and.not.match(/\n\s+at |unexpected error/);
        expect(r.stdout, since).to.equal('');
      }
    });

    it('when --since is a date from 1970 on or a look-back of 30m, 6h or 2d, then alarms are listed', async () => {
      const id = newMessageId();
      await sql(`INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content) VALUES ($1, $2, 'JOB_PARKED', 'recent')`,
        [JSON.stringify({ taskId: `${id}_exc`, type: 'DOMAIN_B_PIPE' }), id]);
      for (const since of ['1970-01-01', '2024-05-01T08:00:00+08:00', '30m', '6h', '2d']) {
        const r = await run('alarms', [id, '--since', since, '--json']);
        expect(r.code, `${since}: ${r.stderr}`).to.equal(0);
        expect((JSON.parse(r.stdout) as { alarms: { content: string }[] }).alarms.map((a) => a.content), since).to.deep.equal(['recent']);
      }
    });

    it('when an alarm\'s messageId, type or content or a failing domain\'s detail holds ESC, CR or C1 characters, then the tables show them escaped', async () => {
      const id = `${newMessageId()}\u001b[2J`;
      await seedBatch(id, [{ domain: 'ko.example.com', status: 'failed', detail: HOSTILE }]);
      await sql(`INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content) VALUES ($1, $2, $3, $4)`,
        [JSON.stringify({ taskId: `${id}_exc`, type: 'DOMAIN_B_PIPE' }), id, 'BATCH_FAILURES\r', HOSTILE]);
      const r = await run('alarms', [id]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).not.to.match(RAW_CONTROL);
      const shownId = id.replace('\u001b', '\\x1b');
      expect(r.stdout).to.contain(`batch ${shownId}: total 1: failed 1`).and.contain('BATCH_FAILURES\\r');
      expect(r.stdout.split(HOSTILE_SHOWN)).to.have.length(3); // once as the alarm content, once as the domain detail
    });
  });

  describe('replay', () => {
    const stuckUntil = new Date(Date.now() + 3_600_000).toISOString();
    const mixed = () => [
      { domain: 'done.example.com', status: 'succeeded' },
      { domain: 'failed.example.com', status: 'failed', detail: 'user not found' },
      { domain: 'retry.example.com', status: 'retryable', detail: '401' },
      { domain: 'unknown.example.com', status: 'unknown_domain', detail: 'not in inventory' },
      { domain: 'unsupported.example.com', status: 'unsupported', detail: 'unsupported reqType X' },
      { domain: 'busy.example.com', status: 'in_progress', claimedUntil: stuckUntil }, // a live worker holds it
    ];

    it('when run with --dry-run, then it lists what would be re-opened and changes nothing', async () => {
      const id = newMessageId();
      await seedBatch(id, mixed());
      const before = await domainsOf(id);
      const r = await run('replay', [id, '--dry-run']);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.contain('would re-open 2 domain(s)').and.contain('failed.example.com').and.contain('retry.example.com');
      expect(r.stdout).not.to.contain('done.example.com');
      expect(await domainsOf(id)).to.deep.equal(before);
      expect((await sql('SELECT publish_pending FROM batch WHERE message_id = $1', [id]))[0]).to.deep.equal({ publish_pending: false });
    });

    it('when a messageId is unknown, then it names it, exits 2 and changes nothing', async () => {
      const [known, unknown] = [newMessageId(), newMessageId()];
      await seedBatch(known, [{ domain: 'failed.example.com', status: 'failed' }]);
      const r = await run('replay', [known, unknown, '--reason', 'the platform is back']);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.contain(`no batch with messageId ${unknown}`);
      expect((await domainsOf(known))[0]!.status).to.equal('failed');
    });

    it('when replayed, then only failed and retryable domains are re-opened and one job is queued', async () => {
      const id = newMessageId();
      await seedBatch(id, mixed());
      brokerTouched = true;
      const r = await run('replay', [id, '--reason', 'the platform is back']);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.contain('re-opened 2 domain(s); job published for 1 batch(es)');
      const after = Object.fromEntries((await domainsOf(id)).map((d) => [d.domain, d.status]));
      expect(after).to.deep.equal({
        'busy.example.com': 'in_progress',
        'done.example.com': 'succeeded',
        'failed.example.com': 'pending',
        'retry.example.com': 'pending',
        'unknown.example.com': 'unknown_domain',
        'unsupported.example.com': 'unsupported',
      });
      const conn = await amqp.connect(RABBITMQ_URL);
      try {
        const ch = await conn.createChannel();
        const msg = await ch.get(topologyNames(amqpPrefix, RETRY_TIERS_MS).jobsQueue, { noAck: true });
        expect(msg && JSON.parse(msg.content.toString())).to.deep.equal({ messageId: id, attempt: 0, trigger: 'replay' });
      } finally {
        await conn.close();
      }
    });

    it('when run with --all, then unknown_domain domains are re-opened too, never succeeded or unsupported ones', async () => {
      const id = newMessageId();
      await seedBatch(id, mixed());
      brokerTouched = true;
      const r = await run('replay', [id, '--all', '--reason', 'the platform is back']);
      expect(r.code, r.stderr).to.equal(0);
      const statuses = (await domainsOf(id)).map((d) => `${d.domain}=${d.status}`);
      expect(statuses).to.include.members(['done.example.com=succeeded', 'unknown.example.com=pending', 'unsupported.example.com=unsupported', 'busy.example.com=in_progress']);
    });

    it('when --wait sees the re-opened domains succeed, then it prints the final table and exits 0', async () => {
      const id = newMessageId();
      await seedBatch(id, [{ domain: 'done.example.com', status: 'succeeded' }, { domain: 'failed.example.com', status: 'failed', detail: 'user not found' }]);
      brokerTouched = true;
      const replay = run('replay', [id, '--wait', '--timeout', '30', '--reason', 'the platform is back']);
      // Play the worker: once the replay re-opened the domain, settle it as succeeded.
      const deadline = Date.now() + 20_000;
      while ((await sql('SELECT 1 FROM batch_domain WHERE message_id = $1 AND status = $2', [id, 'pending'])).length === 0) {
        if (Date.now() > deadline) throw new Error('replay never re-opened the domain');
        await new Promise((r) => setTimeout(r, 100));
      }
      await sql(`UPDATE batch_domain SET status = 'succeeded', detail = NULL, finished_at = now() WHERE message_id = $1 AND status = 'pending'`, [id]);
      const r = await replay;
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.contain('total 2: succeeded 2').and.match(/failed\.example\.com\s+succeeded/);
    });

    it('when --wait times out with domains still pending, then it exits 1', async () => {
      const id = newMessageId();
      await seedBatch(id, [{ domain: 'failed.example.com', status: 'failed' }]);
      brokerTouched = true;
      const r = await run('replay', [id, '--wait', '--timeout', '1', '--reason', 'the platform is back']);
      expect(r.code).to.equal(1);
      expect(r.stderr).to.contain('timed out after 1 s');
      expect(r.stdout).to.match(/failed\.example\.com\s+pending/);
    });
  });
});
