/**
 * The attempt history: one row per domain per security-platform call, written with the outcome, carrying
 * when, which process, the platform's answer, the token generation and what triggered the job. Real
 * PostgreSQL, Redis and RabbitMQ; the security platform is the project's simulator.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import type pg from 'pg';
import { createContext } from '../../src/context.js';
import { UnrecoverableJobError } from '../../src/lib/errors.js';
import { startService } from '../../src/main.js';
import { parseJob } from '../../src/pipeline/process-batch.js';
import { replayBatches } from '../../src/pipeline/replay.js';
import { createSimulator, type Simulator } from '../../src/simulator/server.js';
import { listAttempts, type AttemptRow } from '../../src/store/attempts.js';
import {
  RABBITMQ_URL, SECPLAT_PASSWORD, callbackBody, captureLogger, cleanupNames, domainsFor, messageId, postCallback,
  seedInventory, statusCounts, testConfig, testDb, testEnv, waitFor,
} from '../helpers/env.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const LATENCY_MS = 50;
const uid = (d: string) => `uid-${d}`;

/** [trigger, http status, outcome, reason] per attempt: what an operator reads first. */
const shape = (rows: AttemptRow[]) => rows.map((a) => [a.trigger, a.httpStatus, a.outcome, a.reason]);

function byDomain(rows: AttemptRow[]): Map<string, AttemptRow[]> {
  const out = new Map<string, AttemptRow[]>();
  for (const r of rows) out.set(r.domain, [...(out.get(r.domain) ?? []), r]);
  return out;
}

describe('attempt history', function () {
  let sim: Simulator;
  let db: pg.Pool;
  let env: Record<string, string>;
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  let url: string;

  async function start(overrides: Record<string, string> = {}): Promise<void> {
    env = { ...env, ...overrides };
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('warn').logger }));
    url = `http://127.0.0.1:${service.port}`;
  }

  /** Batch rows as a worker that died mid-call leaves them: in progress, lease run out, never settled. */
  async function seedBatch(id: string, domains: string[], status: 'in_progress' | 'failed'): Promise<void> {
    await db.query(`INSERT INTO batch (message_id, publish_pending, updated_at) VALUES ($1, false, now() - interval '1 hour')`, [id]);
    await db.query(
      `INSERT INTO batch_domain (message_id, domain, req_type, status, attempts, claimed_by, claimed_until, detail, updated_at)
       SELECT $1, d, 'SELF_DOMAIN_DELETE', $3, 1,
              CASE WHEN $3::text = 'in_progress' THEN 'dead-host:1#00000000' END,
              CASE WHEN $3::text = 'in_progress' THEN now() - interval '1 minute' END,
              CASE WHEN $3::text = 'failed' THEN 'security platform: user not found' END,
              now() - interval '1 hour'
       FROM unnest($2::text[]) d`,
      [id, domains, status],
    );
  }

  beforeEach(async () => {
    sim = createSimulator({ password: SECPLAT_PASSWORD, latencyMs: LATENCY_MS });
    const simUrl = (await sim.start()).url;
    db = testDb();
    env = testEnv({ SECPLAT_BASE_URL: simUrl, SECPLAT_BATCH_SIZE: '5' });
  });

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    await sim.stop();
    await db.end();
    await cleanupNames(env);
  });

  it('when some entries fail (chk_fail) and the first two calls answer 503, then each domain shows its attempts with HTTP status, reason, process, token generation and trigger first_run then retry', async () => {
    await start();
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 20);
    await seedInventory(db, domains);
    const failing = domains.slice(0, 3);
    sim.setOptions({ failIds: failing.map(uid), failNextDeletes: 2 });
    const sentAfter = new Date();

    expect((await postCallback(url, callbackBody(id, domains))).status).to.equal(200);
    await waitFor('17 succeeded and 3 failed', async () => {
      const c = await statusCounts(db, id);
      return c.succeeded === 17 && c.failed === 3;
    });
    expect(sim.stats().deleteByStatus['503']).to.equal(2);
    const generation = (await service!.ctx.tokens.read())!.generation;
    const attempts = await listAttempts(db, id);
    const perDomain = byDomain(attempts);
    expect([...perDomain.keys()].sort()).to.deep.equal([...domains].sort(), 'every domain was sent');

    for (const a of attempts) {
      expect(a.messageId).to.equal(id);
      expect(a.instanceId).to.equal(service!.ctx.config.instanceId);
      expect(a.tokenGeneration).to.equal(generation);
      expect(a.attemptedAt.getTime()).to.be.at.least(sentAfter.getTime());
      // Every reply, 503s included, comes after the simulator's latency (a bound that cannot flake upwards).
      expect(a.durationMs).to.be.a('number').and.at.least(LATENCY_MS - 5);
    }
    const final = (d: string) => (failing.includes(d) ? ['failed', 'user not found'] : ['succeeded', null]);
    const hit503 = domains.filter((d) => perDomain.get(d)![0]!.httpStatus === 503);
    expect(hit503, 'two calls of 5 domains answered 503').to.have.length(10);
    for (const d of domains) {
      const rows = perDomain.get(d)!;
      if (hit503.includes(d)) {
        expect(shape(rows), d).to.deep.equal([
          ['first_run', 503, 'retryable', 'SecplatRetryableError: delete_user_info answered HTTP 503'],
          ['retry', 200, ...final(d)],
        ]);
        expect(rows[1]!.attemptedAt.getTime()).to.be.greaterThan(rows[0]!.attemptedAt.getTime());
      } else {
        expect(shape(rows), d).to.deep.equal([['first_run', 200, ...final(d)]]);
      }
    }
    // One call, one send time for all the domains it carried: the two 503 calls are two groups of five.
    const calls503 = new Map<number, number>();
    for (const d of hit503) {
      const t = perDomain.get(d)![0]!.attemptedAt.getTime();
      calls503.set(t, (calls503.get(t) ?? 0) + 1);
    }
    expect([...calls503.values()]).to.deep.equal([5, 5]);
    expect(await listAttempts(db, id, failing[0]!)).to.deep.equal(perDomain.get(failing[0]!));
  });

  it('when an operator replays the failed domains, then their new attempts carry trigger replay and the others keep their single first_run', async () => {
    await start();
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 4);
    await seedInventory(db, domains);
    const failing = domains.slice(0, 2);
    sim.setOptions({ failIds: failing.map(uid) });
    expect((await postCallback(url, callbackBody(id, domains))).status).to.equal(200);
    await waitFor('2 succeeded and 2 failed', async () => {
      const c = await statusCounts(db, id);
      return c.succeeded === 2 && c.failed === 2;
    });

    sim.setOptions({ failIds: [] });
    const result = await replayBatches(service!.ctx, [id], { all: false, dryRun: false });
    expect(result.published).to.deep.equal([id]);
    await waitFor('all 4 succeeded', async () => (await statusCounts(db, id)).succeeded === 4);

    const perDomain = byDomain(await listAttempts(db, id));
    for (const d of failing) {
      expect(shape(perDomain.get(d)!), d).to.deep.equal([['first_run', 200, 'failed', 'user not found'], ['replay', 200, 'succeeded', null]]);
    }
    for (const d of domains.slice(2)) expect(shape(perDomain.get(d)!), d).to.deep.equal([['first_run', 200, 'succeeded', null]]);
  });

  it('when a replay\'s job could not reach the broker, then the relay publishes it later and its attempts still carry trigger replay', async () => {
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 3);
    await seedInventory(db, domains);
    await seedBatch(id, domains, 'failed');
    await start({ RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:1', ROLE: 'api', AMQP_CONFIRM_TIMEOUT_MS: '300' });
    const result = await replayBatches(service!.ctx, [id], { all: false, dryRun: false });
    expect(result.unpublished).to.deep.equal([id]);
    const { rows } = await db.query<{ publish_pending: boolean; publish_trigger: string }>(
      'SELECT publish_pending, publish_trigger FROM batch WHERE message_id = $1', [id]);
    expect(rows[0]).to.deep.equal({ publish_pending: true, publish_trigger: 'replay' });
    await service!.stop();

    // The broker is back: the relay publishes the stored batch with the cause it stored.
    await start({ RABBITMQ_URL, ROLE: 'all' });
    await waitFor('all 3 succeeded', async () => (await statusCounts(db, id)).succeeded === 3);
    const attempts = await listAttempts(db, id);
    expect(attempts.map((a) => [a.domain, a.trigger, a.httpStatus, a.outcome])).to.deep.equal(
      [...domains].sort().map((d) => [d, 'replay', 200, 'succeeded']));
  });

  it('when a worker died holding domains and their lease ran out, then the stalled sweep\'s job sends them and the attempts carry trigger stalled_sweep', async () => {
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 3);
    await seedInventory(db, domains);
    await seedBatch(id, domains, 'in_progress');
    await start();

    await waitFor('all 3 succeeded', async () => (await statusCounts(db, id)).succeeded === 3);
    const attempts = await listAttempts(db, id);
    expect(attempts.map((a) => [a.domain, a.trigger, a.httpStatus, a.outcome, a.instanceId])).to.deep.equal(
      [...domains].sort().map((d) => [d, 'stalled_sweep', 200, 'succeeded', service!.ctx.config.instanceId]));
    const { rows } = await db.query<{ relayed: boolean }>('SELECT relayed_at IS NOT NULL AS relayed FROM batch WHERE message_id = $1', [id]);
    expect(rows[0]!.relayed).to.equal(true);
  });

  it('when another client took the token (401) and the call is retried with a fresh one, then one attempt per domain records the final 200 and the newer generation', async () => {
    await start();
    const first = messageId();
    const firstDomains = domainsFor(first.slice(2, 10), 2);
    await seedInventory(db, firstDomains);
    expect((await postCallback(url, callbackBody(first, firstDomains))).status).to.equal(200);
    await waitFor('first batch succeeded', async () => (await statusCounts(db, first)).succeeded === 2);
    const before = (await service!.ctx.tokens.read())!.generation;

    sim.invalidateToken();
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 2);
    await seedInventory(db, domains);
    expect((await postCallback(url, callbackBody(id, domains))).status).to.equal(200);
    await waitFor('second batch succeeded', async () => (await statusCounts(db, id)).succeeded === 2);

    expect(sim.stats().unauthorized).to.equal(1);
    const after = (await service!.ctx.tokens.read())!.generation;
    expect(after).to.be.greaterThan(before);
    const attempts = await listAttempts(db, id);
    expect(attempts.map((a) => [a.domain, a.trigger, a.httpStatus, a.outcome, a.tokenGeneration])).to.deep.equal(
      [...domains].sort().map((d) => [d, 'first_run', 200, 'succeeded', after]));
  });

  it('when a call times out, then its attempt has no HTTP status and the error class as reason, and the retry that succeeds follows it', async () => {
    // Retry tiers long enough that the simulator is fast again before the retry's call.
    await start({ SECPLAT_TIMEOUT_MS: '300', RETRY_TIERS_MS: '1500,1500,1500' });
    sim.setOptions({ latencyMs: 2000 });
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 2);
    await seedInventory(db, domains);
    expect((await postCallback(url, callbackBody(id, domains))).status).to.equal(200);
    await waitFor('the timed-out attempts', async () => (await listAttempts(db, id)).length === 2);
    sim.setOptions({ latencyMs: 0 });
    await waitFor('both succeeded', async () => (await statusCounts(db, id)).succeeded === 2);

    for (const [d, rows] of byDomain(await listAttempts(db, id))) {
      const [cut, ...later] = rows;
      expect([cut!.trigger, cut!.httpStatus, cut!.outcome], d).to.deep.equal(['first_run', null, 'retryable']);
      expect(cut!.reason, d).to.match(/^SecplatRetryableError: delete_user_info failed: /);
      expect(cut!.durationMs, d).to.be.at.least(250);
      expect(shape(later.slice(-1)), d).to.deep.equal([['retry', 200, 'succeeded', null]]);
    }
  });

  it('when a domain is not in the inventory or its reqType is not a deletion, then it has no attempt and the known domains have one each', async () => {
    await start();
    const id = messageId();
    const known = domainsFor(id.slice(2, 10), 2);
    await seedInventory(db, known);
    const body = callbackBody(id, [...known, `missing.${id.slice(2, 10)}.example.org`]);
    body.data.push({ percent: 1, process: false, reqType: 'SELF_DOMAIN_ADD', targetName: `new.${id.slice(2, 10)}.example.org` });
    expect((await postCallback(url, body)).status).to.equal(200);
    await waitFor('settled', async () => {
      const c = await statusCounts(db, id);
      return c.succeeded === 2 && c.unknown_domain === 1 && c.unsupported === 1;
    });
    expect((await listAttempts(db, id)).map((a) => a.domain)).to.deep.equal([...known].sort());
    expect(await listAttempts(db, id, `missing.${id.slice(2, 10)}.example.org`)).to.deep.equal([]);
    expect(sim.stats().entriesReceived).to.equal(2);
  });

  it('when npm run status is asked about a batch, then the attempt history follows the domain table (escaped) and --json includes attempts', async () => {
    await start();
    const id = messageId();
    const domains = domainsFor(id.slice(2, 10), 2);
    await seedInventory(db, domains);
    sim.setOptions({ failIds: [uid(domains[0]!)] });
    expect((await postCallback(url, callbackBody(id, domains))).status).to.equal(200);
    await waitFor('settled', async () => {
      const c = await statusCounts(db, id);
      return c.succeeded === 1 && c.failed === 1;
    });
    // A reason holding terminal control characters, as a hostile platform reply could.
    await db.query(
      `INSERT INTO domain_attempt (message_id, domain, attempted_at, duration_ms, instance_id, trigger, token_generation, http_status, outcome, reason)
       VALUES ($1, $2, now(), 7, 'other-host:42', 'replay', 9, 200, 'failed', $3)`,
      [id, domains[1], 'bad\u001b[2Jreply\r'],
    );

    const table = await runStatus([id]);
    expect(table.code, table.stderr).to.equal(0);
    expect(table.stdout).not.to.match(/(?!\n)\p{Cc}/u);
    const lines = table.stdout.split('\n');
    const header = lines.findIndex((l) => /^DOMAIN\s+WHEN\s+PROCESS\s+TRIGGER\s+TOKEN GENERATION\s+HTTP\s+OUTCOME\s+REASON\s+MS$/.test(l));
    expect(header, table.stdout).to.be.greaterThan(lines.findIndex((l) => l.startsWith('total 2:')));
    const history = lines.slice(header + 2).filter((l) => l.trim() !== '');
    const instance = service!.ctx.config.instanceId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const when = '\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ';
    expect(history).to.have.length(3);
    expect(history[0]).to.match(new RegExp(`^${domains[0]!.replace(/\./g, '\\.')}\\s+${when}\\s+${instance}\\s+first_run\\s+\\d+\\s+200\\s+failed\\s+user not found\\s+\\d+$`));
    expect(history[1]).to.match(new RegExp(`^${domains[1]!.replace(/\./g, '\\.')}\\s+${when}\\s+${instance}\\s+first_run\\s+\\d+\\s+200\\s+succeeded\\s+\\d+$`));
    expect(history[2]).to.contain('other-host:42').and.contain('bad\\x1b[2Jreply\\r');

    const json = await runStatus([id, '--json']);
    expect(json.code, json.stderr).to.equal(0);
    const parsed = JSON.parse(json.stdout) as { domains: unknown[]; attempts: { domain: string; trigger: string; httpStatus: number | null; reason: string | null }[] };
    expect(parsed.domains).to.have.length(2);
    expect(parsed.attempts.map((a) => [a.domain, a.trigger, a.httpStatus, a.reason])).to.deep.equal([
      [domains[0], 'first_run', 200, 'user not found'],
      [domains[1], 'first_run', 200, null],
      [domains[1], 'replay', 200, 'bad\u001b[2Jreply\r'],
    ]);
  });
});

describe('job trigger on the wire', () => {
  it('when a job names a known trigger, then it is kept; when it names none, then it is an old job (first_run)', () => {
    expect(parseJob(Buffer.from('{"messageId":"pm01","attempt":1,"trigger":"retry"}'))).to.deep.equal({ messageId: 'pm01', attempt: 1, trigger: 'retry' });
    expect(parseJob(Buffer.from('{"messageId":"pm01","attempt":0}')).trigger).to.equal(undefined);
  });

  for (const body of ['{"messageId":"pm01","trigger":"sweep"}', '{"messageId":"pm01","trigger":null}', '{"messageId":"pm01","trigger":1}']) {
    it(`when a job carries an unknown trigger (${body}), then it is unrecoverable (parked, not retried)`, () => {
      expect(() => parseJob(Buffer.from(body))).to.throw(UnrecoverableJobError, /unknown trigger/);
    });
  }
});

function runStatus(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'scripts/status.ts', ...args], {
      cwd: ROOT, timeout: 50_000, env: { ...process.env, DATABASE_URL: process.env.DATABASE_URL },
    }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
  });
}
