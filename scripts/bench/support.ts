/**
 * Plumbing of `npm run bench`: child processes (service, simulator, load generator) with their RSS, the
 * dedicated benchmark database, per-scenario queue and key names and their cleanup, inventory seeding,
 * and small statistics helpers. Nothing here is used by the service itself.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import pg from 'pg';
import { topologyNames } from '../../src/messaging/topology.js';

export const ROOT = new URL('../../', import.meta.url).pathname;

const children = new Set<ChildProcess>();

/** SIGKILLs every child still running (used on exit and on Ctrl-C, so no service outlives the bench). */
export function killAllChildren(): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}

export interface Child {
  name: string;
  proc: ChildProcess;
  pid: number;
  /** The last lines of stdout and stderr, for error messages. */
  tail: string[];
  /** Lines matching `count` patterns given at spawn time. */
  counts: Record<string, number>;
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with how it ended. */
  stop(graceMs?: number): Promise<{ code: number | null; killed: boolean; ms: number }>;
}

export interface SpawnOptions {
  env: Record<string, string>;
  /** Resolves the spawn once a line matches; the match is passed to `parse`. */
  ready: RegExp;
  readyTimeoutMs?: number;
  /** Named patterns counted over the child's output lines (e.g. warnings). */
  count?: Record<string, RegExp>;
}

/** Spawns `node --import tsx <script> ...args` in the repository root and waits for its ready line. */
export async function spawnTsx(name: string, script: string, args: string[], opts: SpawnOptions): Promise<{ child: Child; match: RegExpExecArray }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  const tail: string[] = [];
  const counts: Record<string, number> = Object.fromEntries(Object.keys(opts.count ?? {}).map((k) => [k, 0]));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => {
    children.delete(proc);
    resolve(code);
  }));
  let onLine: (line: string) => void = () => undefined;
  const lines = (stream: NodeJS.ReadableStream) => {
    let buf = '';
    stream.on('data', (chunk: Buffer) => {
      buf += chunk.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        tail.push(line);
        if (tail.length > 200) tail.shift();
        for (const [k, re] of Object.entries(opts.count ?? {})) if (re.test(line)) counts[k]! += 1;
        onLine(line);
      }
    });
  };
  lines(proc.stdout!);
  lines(proc.stderr!);
  const match = await new Promise<RegExpExecArray>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${name} did not get ready in ${opts.readyTimeoutMs ?? 60_000} ms:\n${tail.slice(-20).join('\n')}`));
    }, opts.readyTimeoutMs ?? 60_000);
    onLine = (line) => {
      const m = opts.ready.exec(line);
      if (m) {
        clearTimeout(timer);
        onLine = () => undefined;
        resolve(m);
      }
    };
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before it was ready:\n${tail.slice(-20).join('\n')}`));
    });
  });
  const child: Child = {
    name, proc, pid: proc.pid!, tail, counts, exited,
    async stop(graceMs = 10_000) {
      const started = Date.now();
      if (proc.exitCode !== null || proc.signalCode !== null) return { code: proc.exitCode, killed: false, ms: 0 };
      proc.kill('SIGTERM');
      let killed = false;
      const timer = setTimeout(() => { killed = true; proc.kill('SIGKILL'); }, graceMs);
      const code = await exited;
      clearTimeout(timer);
      return { code, killed, ms: Date.now() - started };
    },
  };
  return { child, match };
}

/** A service process (src/main.ts) with the given environment; resolves once it serves HTTP. */
export async function startService(name: string, env: Record<string, string>): Promise<Child & { url: string }> {
  const { child, match } = await spawnTsx(name, 'src/main.ts', [], {
    env: { INSTANCE_ID: name, ...env },
    ready: /^\{.*"http listening".*\}$/,
    count: { warn: /"level":"warn"/, error: /"level":"error"/ },
  });
  const { port } = JSON.parse(match[0]) as { port: number };
  return Object.assign(child, { url: `http://127.0.0.1:${port}` });
}

/** Resident set size of a process in kB, from /proc/<pid>/status (VmRSS). */
export function rssKb(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** A TCP port on 127.0.0.1 that nothing listens on (taken, then released). */
export async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

export const rand = (bytes = 4): string => randomBytes(bytes).toString('hex');
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The dedicated database: created empty, migrated by the first service that starts, dropped at the end. */
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

  /** Empties the ledger, inventory and alarms so each scenario starts from the same state. */
  async truncate(): Promise<void> {
    await this.db.query('TRUNCATE callback_audit, batch_domain, batch, cdn_domain, sys_task_process_alarm CASCADE');
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

/** Inventory rows for the given domains (user_id_cdn = `u-` + domain), in chunks, then analyzed like a long-lived table. */
export async function seedInventory(db: pg.Pool, domains: string[]): Promise<void> {
  for (let i = 0; i < domains.length; i += 10_000) {
    const part = domains.slice(i, i + 10_000);
    await db.query(
      `INSERT INTO cdn_domain (domain, user_id_cdn) SELECT d, 'u-' || d FROM unnest($1::text[]) AS d
       ON CONFLICT (domain) DO UPDATE SET status = 'active', deleted_at = NULL, deleted_by_message_id = NULL`,
      [part],
    );
  }
  await db.query('ANALYZE cdn_domain');
}

/** Deletes every queue and exchange of an AMQP prefix and every Redis key of a key prefix. */
export async function cleanupNames(rabbitmqUrl: string, redisUrl: string, env: Record<string, string>): Promise<void> {
  const t = topologyNames(env.AMQP_PREFIX!, env.RETRY_TIERS_MS!.split(',').map(Number));
  const conn = await amqp.connect(rabbitmqUrl);
  try {
    // A failed delete closes the channel; use a fresh one per name so one failure does not skip the rest.
    for (const [kind, name] of [
      ...[t.jobsQueue, t.parkedQueue, ...t.retryQueues.map((r) => r.name)].map((n) => ['queue', n] as const),
      ...[t.jobsExchange, t.retryExchange, t.parkedExchange].map((n) => ['exchange', n] as const),
    ]) {
      const ch = await conn.createChannel();
      ch.on('error', () => undefined);
      try {
        if (kind === 'queue') await ch.deleteQueue(name);
        else await ch.deleteExchange(name);
        await ch.close();
      } catch { /* already gone */ }
    }
  } finally {
    await conn.close().catch(() => undefined);
  }
  const redis = new Redis(redisUrl);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${env.REDIS_KEY_PREFIX}:*`, 'COUNT', 500);
      if (keys.length) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

export function callbackBody(messageId: string, domains: string[]): string {
  return JSON.stringify({
    data: domains.map((targetName) => ({ percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName })),
    messageId,
  });
}

/** Posts callbacks with bounded concurrency; throws on the first reply other than 200. */
export async function postCallbacks(url: string, token: string, bodies: string[], concurrency = 8): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < bodies.length) {
      const body = bodies[next++]!;
      const res = await fetch(`${url}/api/pm/pipe/callback`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-callback-token': token }, body,
      });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`callback answered ${res.status}: ${text}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

/** The value at quantile q (0..1) of a sorted array (nearest rank). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

export const round = (n: number, digits = 1): number => (Number.isFinite(n) ? Math.round(n * 10 ** digits) / 10 ** digits : n);

/** Runs a bench child that prints one JSON line and exits; returns that line parsed. */
export async function runJsonChild<T>(name: string, script: string, config: unknown, timeoutMs: number): Promise<T> {
  const { child, match } = await spawnTsx(name, script, [JSON.stringify(config)], { env: {}, ready: /^\{.*\}$/, readyTimeoutMs: timeoutMs });
  await child.exited;
  return JSON.parse(match[0]) as T;
}

/** CPU time (user + system) a process has used, in ms, from /proc/<pid>/stat (clock ticks of 10 ms). */
export function cpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime, stime (fields 14 and 15 of the file)
  } catch {
    return undefined;
  }
}

/** Busy and total jiffies of the whole machine, from /proc/stat; two readings give its CPU use. */
export function machineCpu(): { busy: number; total: number } {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.reduce((a, b) => a + b, 0);
  const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0);
  return { busy: total - idle, total };
}
