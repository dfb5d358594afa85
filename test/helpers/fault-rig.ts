/**
 * The fault-injection rig: one simulator, real service processes, the test's own TCP proxies in front of
 * the shared services, and the end-of-scenario check every fault test makes — every domain succeeded or
 * visibly failed with an alarm, none lost, none deleted twice (beyond what the scenario allows).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import type pg from 'pg';
import { createSimulator, type Simulator, type SimulatorOptions, type SimulatorStats } from '../../src/simulator/server.js';
import {
  SECPLAT_PASSWORD, callbackBody, cleanupNames, domainsFor, messageId, postCallback, seedInventory, spawnService, testDb,
  testEnv, waitFor, type ServiceProcess,
} from './env.js';
import { startTcpProxy, type TcpProxy } from './tcp-proxy.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The environment variables a proxy can stand in for, with each one's default port. */
const PROXIABLE = { DATABASE_URL: 5432, REDIS_URL: 6379, RABBITMQ_URL: 5672, SECPLAT_BASE_URL: 80 } as const;
export type ProxiedUrl = keyof typeof PROXIABLE;

export interface Batch { id: string; domains: string[] }

/** Statuses a domain may end in; anything else means work was left behind. */
const FINAL = new Set(['succeeded', 'failed', 'unknown_domain', 'unsupported']);

export const uidOf = (domain: string) => `uid-${domain}`;

/** A service process of the rig; its PostgreSQL connections carry `dbApplicationName` in pg_stat_activity. */
export interface RigService extends ServiceProcess { readonly dbApplicationName: string }

export class FaultRig {
  readonly services: ServiceProcess[] = [];
  readonly proxies: TcpProxy[] = [];
  private constructor(readonly sim: Simulator, readonly simUrl: string, readonly db: pg.Pool, readonly env: Record<string, string>) {}

  /**
   * A simulator (in this process, so its stats are exact) and the base environment of the scenario: the
   * short retry tiers, leases and deadlines every fault test uses unless it says otherwise.
   */
  static async create(simOptions: Partial<SimulatorOptions> = {}, envOverrides: Record<string, string> = {}): Promise<FaultRig> {
    const sim = createSimulator({ password: SECPLAT_PASSWORD, ...simOptions });
    const simUrl = (await sim.start()).url;
    const env = testEnv({
      SECPLAT_BASE_URL: simUrl,
      SECPLAT_BATCH_SIZE: '5',
      SECPLAT_CONCURRENCY: '2',
      DOMAIN_LEASE_MS: '1500',
      AMQP_CONFIRM_TIMEOUT_MS: '1000',
      // The scenarios read the services' counters (see metric()); who may read /metrics is not their subject.
      METRICS_AUTH: 'none',
      ...envOverrides,
    });
    return new FaultRig(sim, simUrl, testDb(), env);
  }

  /**
   * Starts a service process (src/main.ts) with the rig's environment plus `extra`. Its PostgreSQL
   * connections (direct or through a proxy) are named after the scenario and `instanceId`, so a test can
   * tell when the last of them is gone (see waitForBackendsGone).
   */
  async spawn(instanceId: string, extra: Record<string, string> = {}): Promise<RigService> {
    const dbApplicationName = `${this.env.AMQP_PREFIX}-${instanceId}`;
    const env = { ...this.env, INSTANCE_ID: instanceId, ...extra };
    const svc = await spawnService(withDbApplicationName(env, dbApplicationName));
    this.services.push(svc);
    return Object.assign(svc, { dbApplicationName });
  }

  /** A proxy in front of what `variable` points at; returns it and the env override to give a service. */
  async proxyFor(variable: ProxiedUrl): Promise<{ proxy: TcpProxy; env: Record<string, string> }> {
    const target = new URL(this.env[variable]!);
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || PROXIABLE[variable]) });
    this.proxies.push(proxy);
    let url = proxy.url(this.env[variable]!);
    if (!this.env[variable]!.endsWith('/') && url.endsWith('/')) url = url.slice(0, -1);
    return { proxy, env: { [variable]: url } };
  }

  /** A new messageId with `n` domains known to the inventory. */
  async seedBatch(n: number): Promise<Batch> {
    const id = messageId();
    const domains = domainsFor(id.slice(2, 12), n);
    await seedInventory(this.db, domains, uidOf);
    return { id, domains };
  }

  /** Posts a batch as a callback and expects the vendor's OK. */
  async post(url: string, batch: Batch): Promise<void> {
    const res = await postCallback(url, callbackBody(batch.id, batch.domains));
    expect(res.status, `callback ${batch.id}: ${JSON.stringify(res.body)}`).to.equal(200);
    expect(res.body).to.deep.equal({ success: true, messageId: batch.id, message: 'OK', status: 0 });
  }

  /** The domains of a batch that are in `status` now, sorted. */
  async domainsIn(id: string, status: string): Promise<string[]> {
    const { rows } = await this.db.query<{ domain: string }>(
      'SELECT domain FROM batch_domain WHERE message_id = $1 AND status = $2 ORDER BY domain', [id, status]);
    return rows.map((r) => r.domain);
  }

  async counts(id: string): Promise<Record<string, number>> {
    const { rows } = await this.db.query<{ status: string; n: number }>(
      'SELECT status, count(*)::int AS n FROM batch_domain WHERE message_id = $1 GROUP BY status', [id]);
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  /** True once no domain of the batches is pending, in progress or retryable. */
  async settled(batches: Batch[]): Promise<boolean> {
    const { rows } = await this.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM batch_domain WHERE message_id = ANY($1) AND status IN ('pending', 'in_progress', 'retryable')`,
      [batches.map((b) => b.id)]);
    const { rows: all } = await this.db.query<{ n: number }>('SELECT count(*)::int AS n FROM batch_domain WHERE message_id = ANY($1)', [batches.map((b) => b.id)]);
    return rows[0]!.n === 0 && all[0]!.n === batches.reduce((n, b) => n + b.domains.length, 0);
  }

  async allSucceeded(batches: Batch[]): Promise<boolean> {
    for (const b of batches) if ((await this.counts(b.id)).succeeded !== b.domains.length) return false;
    return true;
  }

  async alarms(filter: { messageIds?: string[]; since?: Date; type?: string }): Promise<{ id: number; alarmType: string; messageId: string | null; content: string; details: unknown; state: string; occurrences: number }[]> {
    const { rows } = await this.db.query<{ id: number; alarmType: string; messageId: string | null; content: string; details: unknown; state: string; occurrences: number }>(
      `SELECT id::int, alarm_type AS "alarmType", message_id AS "messageId", content, details, state, occurrences FROM sys_task_process_alarm
       WHERE ($1::text[] IS NULL OR message_id = ANY($1)) AND ($2::timestamptz IS NULL OR created_at >= $2)
         AND ($3::text IS NULL OR alarm_type = $3)
       ORDER BY id`,
      [filter.messageIds ?? null, filter.since ?? null, filter.type ?? null]);
    return rows;
  }

  /**
   * The promise of the service, checked on the ledger and on what the security platform received:
   * - none lost: each batch holds exactly the domains that were sent;
   * - each domain ended succeeded, or failed / unknown / unsupported with an alarm naming it;
   * - every succeeded domain was really deleted at the platform, and no domain the platform deleted is
   *   recorded as anything but succeeded;
   * - at most `maxDoubles` user ids deleted twice (0 unless a process was killed mid-call), none three times.
   */
  async assertNothingLost(batches: Batch[], opts: { maxDoubles?: number; stats?: SimulatorStats } = {}): Promise<{ succeeded: number; failed: number; doubles: string[] }> {
    const stats = opts.stats ?? this.sim.stats();
    const ids = batches.map((b) => b.id);
    const { rows } = await this.db.query<{ messageId: string; domain: string; status: string; detail: string | null }>(
      'SELECT message_id AS "messageId", domain, status, detail FROM batch_domain WHERE message_id = ANY($1)', [ids]);
    const alarms = await this.alarms({ messageIds: ids });
    const alarmed = new Set<string>();
    for (const a of alarms) {
      const failures = (a.details as { failures?: { domain: string }[]; items?: { domain: string }[] } | null);
      for (const f of [...(failures?.failures ?? []), ...(failures?.items ?? [])]) alarmed.add(`${a.messageId}\n${f.domain}`);
    }
    let succeeded = 0;
    let failed = 0;
    for (const b of batches) {
      const mine = rows.filter((r) => r.messageId === b.id);
      expect(mine.map((r) => r.domain).sort(), `batch ${b.id}: domains in the ledger`).to.deep.equal([...b.domains].sort());
      for (const r of mine) {
        expect(FINAL.has(r.status), `${r.domain} ended ${r.status} (${r.detail ?? ''})`).to.equal(true);
        if (r.status === 'succeeded') {
          succeeded++;
          expect(stats.deletedCounts[uidOf(r.domain)] ?? 0, `${r.domain} succeeded in the ledger but the platform never deleted it`).to.be.at.least(1);
        } else {
          failed++;
          expect(alarmed.has(`${b.id}\n${r.domain}`), `${r.domain} ended ${r.status} without an alarm naming it`).to.equal(true);
          expect(stats.deletedCounts[uidOf(r.domain)] ?? 0, `${r.domain} is ${r.status} in the ledger but the platform deleted it`).to.equal(0);
        }
      }
    }
    const mineUids = new Set(batches.flatMap((b) => b.domains.map(uidOf)));
    const doubles = Object.entries(stats.deletedCounts).filter(([uid, n]) => mineUids.has(uid) && n > 1).map(([uid]) => uid);
    expect(doubles.length, `user ids deleted twice: ${doubles.slice(0, 10).join(', ')}`).to.be.at.most(opts.maxDoubles ?? 0);
    expect(Math.max(0, ...Object.values(stats.deletedCounts)), 'most deletions of one user id').to.be.at.most(2);
    return { succeeded, failed, doubles };
  }

  /** Stops everything the scenario started (processes first, so none outlives its proxies), then its names. */
  async close(failed: boolean): Promise<void> {
    const errors: unknown[] = [];
    const attempt = async (what: () => Promise<unknown>) => { try { await what(); } catch (err) { errors.push(err); } };
    if (failed) {
      // The whole logs go to files (a failing scenario is read after the fact); the tail to stderr.
      const dir = mkdtempSync(path.join(os.tmpdir(), 'pcp-faults-'));
      for (const [i, s] of this.services.entries()) {
        const file = path.join(dir, `service-${i}-pid${s.proc.pid}.log`);
        writeFileSync(file, s.logs.join('\n'));
        process.stderr.write(`\n--- last log lines of pid ${s.proc.pid} (all in ${file}) ---\n${s.logs.slice(-15).join('\n')}\n`);
      }
    }
    await Promise.all(this.services.map((s) => attempt(() => stopWithin(s, 15_000))));
    await Promise.all(this.proxies.map((p) => attempt(() => p.stop())));
    await attempt(() => this.sim.stop());
    await attempt(() => this.db.end());
    await attempt(() => cleanupNames(this.env));
    if (errors.length > 0) throw errors[0];
  }
}

/** SIGTERM, then SIGKILL if the process has not exited within `ms`. */
export async function stopWithin(svc: ServiceProcess, ms: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const killed = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), ms); });
  const code = await Promise.race([svc.stop('SIGTERM'), killed]);
  clearTimeout(timer);
  if (code === 'timeout') return svc.stop('SIGKILL');
  return code;
}

/** GET /readyz: its status and checks. */
export async function readiness(url: string): Promise<{ status: number; checks: Record<string, string> }> {
  const res = await fetch(`${url}/readyz`);
  return { status: res.status, checks: ((await res.json()) as { checks: Record<string, string> }).checks };
}

/** Sum of a Prometheus counter over all its label sets (optionally only those containing `labelMatch`). */
export async function metric(url: string, name: string, labelMatch = ''): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m && m[1] === name && (m[2] ?? '').includes(labelMatch)) sum += Number(m[3]);
  }
  return sum;
}

/** Number of log lines of a service process containing `text`. */
export const logCount = (svc: ServiceProcess, text: string) => svc.logs.filter((l) => l.includes(text)).length;

/** The `domain` of every JSON log line of a service process whose message is `message`, in log order. */
export function loggedDomains(svc: ServiceProcess, message: string): string[] {
  const out: string[] = [];
  for (const line of svc.logs) {
    let entry: { message?: unknown; domain?: unknown };
    try { entry = JSON.parse(line) as typeof entry; } catch { continue; } // stderr chunks are not JSON
    if (entry.message === message && typeof entry.domain === 'string') out.push(entry.domain);
  }
  return out;
}

/**
 * `env` with DATABASE_URL asking PostgreSQL to list its connections as `name` (node-postgres passes the
 * URL's `application_name` query parameter on as the startup parameter).
 */
export function withDbApplicationName(env: Record<string, string>, name: string): Record<string, string> {
  const url = new URL(env.DATABASE_URL!);
  url.searchParams.set('application_name', name);
  return { ...env, DATABASE_URL: url.toString() };
}

/** PostgreSQL backends of this test database serving connections named `applicationName`. */
export async function backendCount(db: pg.Pool, applicationName: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1', [applicationName]);
  return rows[0]!.n;
}

/**
 * Resolves once no PostgreSQL backend serves connections named `applicationName`. The backend of a client
 * that was killed (or cut off) still runs what it had already received, a COMMIT included, and only then
 * notices the closed socket and exits: once it is gone, what that client wrote is final.
 */
export async function waitForBackendsGone(db: pg.Pool, applicationName: string, timeoutMs = 30_000): Promise<void> {
  await waitFor(`the PostgreSQL backends of ${applicationName} to end`, async () => (await backendCount(db, applicationName)) === 0, timeoutMs);
}

/** Runs an operator script (scripts/<name>.ts) as a real process with the given environment. */
export function runScript(name: string, args: string[], env: Record<string, string>, timeoutMs = 90_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', `scripts/${name}.ts`, ...args], {
      cwd: ROOT, timeout: timeoutMs, env: { PATH: process.env.PATH, ...env }, maxBuffer: 16 * 1024 * 1024,
    }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
  });
}

/** Small seeded PRNG (mulberry32), so a fuzz failure can be replayed with FUZZ_SEED. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const sleepMs = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Resolves in the turn of the event loop in which `cond` first holds: it is checked once per turn, right
 * after that turn's I/O callbacks. With the simulator in this process, a request handler that made `cond`
 * true has then not got past its first timer (the reply delay), so the caller acts while that call is
 * still in flight. Spins (yielding to I/O) while it waits: for short waits only.
 */
export async function inTheTurnItHolds(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}
