/**
 * `npm run demo`: the production incident, replayed on this machine and handled.
 *
 * Starts the security-platform simulator, imports a sample inventory, leaves an EXPIRED token in Redis,
 * starts two service processes (two "hosts"), sends one callback to each in the same second, waits,
 * and prints every domain's outcome plus what the simulator saw: one token fetch, no 401.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { hashPassword } from '../src/http/session.js';
import { createSimulator } from '../src/simulator/server.js';
import { formatTable, runCli } from './cli.js';
import { spawnService, type ServiceProcess } from './service-process.js';

const program = new Command('demo')
  .description('Replays the incident (two callbacks, two hosts, an expired token) against the simulator and prints the outcome.')
  .option('--domains <n>', 'domains per callback', (v) => Number(v), 25)
  .option('--keep-running', 'leave the service and simulator running afterwards (Ctrl-C stops them)', false)
  .option('--latency <ms>', 'simulated security-platform latency per call', (v) => Number(v), 400)
  .exitOverride();

await runCli(async () => {
  const opts = program.parse().opts<{ domains: number; keepRunning: boolean; latency: number }>();
  if (!Number.isInteger(opts.domains) || opts.domains < 1 || opts.domains > 1000) throw new Error('--domains must be 1..1000');
  const base = loadConfig(process.env, { CALLBACK_AUTH: 'none' });
  const password = 'demo-secplat-password';
  const callbackToken = 'demo-callback-token';
  // A demo credential for the operator routes (never use it outside the demo).
  const adminToken = 'demo-admin-token-0000';
  // A demo operator for the console, hashed the way `npm run console:user` does (never use it outside the demo).
  const demoUser = { name: 'demo-operator', password: 'demo-operator-password' };
  const consoleUsers = `${demoUser.name}:operator:${await hashPassword(demoUser.password)}`;
  const prefix = 'pcp-demo';
  const say = (s: string) => process.stdout.write(`${s}\n`);

  const sim = createSimulator({ password, latencyMs: opts.latency });
  const { url: simUrl } = await sim.start(0);
  say(`1. security-platform simulator on ${simUrl} (one valid token at a time, ${opts.latency} ms per call)`);

  const env: Record<string, string> = {
    DATABASE_URL: base.databaseUrl, REDIS_URL: base.redisUrl, RABBITMQ_URL: base.rabbitmqUrl,
    AMQP_PREFIX: prefix, REDIS_KEY_PREFIX: prefix, CALLBACK_TOKEN: callbackToken, SECPLAT_BASE_URL: simUrl,
    SECPLAT_PASSWORD: password, ADMIN_TOKEN: adminToken, CONSOLE_USERS: consoleUsers, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', RETRY_TIERS_MS: '1000,5000,15000',
  };

  // Sample inventory, imported with the real import command.
  const run = randomBytes(3).toString('hex');
  const ids = [`pm${randomBytes(16).toString('hex')}`, `pm${randomBytes(16).toString('hex')}`];
  const domains = ids.map((_, b) => Array.from({ length: opts.domains }, (_, i) => `www${i}.site${b}-${run}.example.com`));
  const csv = path.join(mkdtempSync(path.join(os.tmpdir(), 'pcp-demo-')), 'inventory.csv');
  // A third, small batch after the incident: the platform refuses one of its domains, so an operator has a
  // failure to find (by its domain) and replay in the console.
  const refusedId = `pm${randomBytes(16).toString('hex')}`;
  const refusedBatch = Array.from({ length: 3 }, (_, i) => `shop${i}.refused-${run}.example.com`);
  const uidOf = new Map([...domains.flat(), ...refusedBatch].map((d, i) => [d, `u${run}${i}`]));
  writeFileSync(csv, ['domain,user_id_cdn', ...[...uidOf].map(([d, u]) => `${d},${u}`)].join('\n'));
  const importOut = execFileSync(process.execPath, ['--import', 'tsx', 'scripts/import-domains.ts', csv], {
    cwd: new URL('../', import.meta.url).pathname, env: { ...process.env, ...env }, encoding: 'utf8',
  });
  say(`2. inventory: ${importOut.trim().split('\n').pop()}`);

  // The state of the incident: the shared token has expired.
  const redis = new Redis(base.redisUrl);
  await redis.hset(`${prefix}:secplat:token`, { token: 'expired', expiresAt: String(Date.now() - 1000), generation: '41' });
  redis.disconnect();
  say('3. the shared token in Redis has expired (generation 41)');

  const services: ServiceProcess[] = [];
  const stopAll = async () => {
    await Promise.all(services.map((s) => s.stop()));
    await sim.stop();
  };
  try {
    const echo = (host: string) => (line: string) => {
      if (/token fetched|token rejected|domain failed|job parked/.test(line)) say(`   [${host}] ${line}`);
    };
    services.push(await spawnService({ ...env, INSTANCE_ID: 'host-a' }, { onLine: echo('host-a') }));
    services.push(await spawnService({ ...env, INSTANCE_ID: 'host-b' }, { onLine: echo('host-b') }));
    say(`4. two service processes (API + worker each): ${services.map((s) => s.url).join(' and ')}`);

    // The load balancer sends one callback to each host, in the same second.
    const replies = await Promise.all(ids.map((id, i) => fetch(`${services[i]!.url}/api/pm/pipe/callback`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-callback-token': callbackToken },
      body: JSON.stringify({ messageId: id, data: domains[i]!.map((targetName) => ({ percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName })) }),
    }).then((r) => r.text())));
    say('5. two callbacks sent in the same second; the vendor was told:');
    for (const r of replies) say(`   ${r}`);

    const db = new pg.Pool({ connectionString: base.databaseUrl, max: 2 });
    try {
      const total = opts.domains * 2;
      const deadline = Date.now() + 120_000;
      let done = 0;
      while (Date.now() < deadline) {
        const { rows } = await db.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM batch_domain WHERE message_id = ANY($1) AND status NOT IN ('pending', 'in_progress', 'retryable')`, [ids]);
        done = rows[0]!.n;
        if (done === total) break;
        await new Promise((r) => setTimeout(r, 300));
      }
      const { rows } = await db.query<{ messageId: string; status: string; n: number }>(
        `SELECT message_id AS "messageId", status, count(*)::int AS n FROM batch_domain WHERE message_id = ANY($1)
         GROUP BY 1, 2 ORDER BY 1, 2`, [ids]);
      say('6. outcome per batch (from the ledger):');
      say(formatTable(['messageId', 'status', 'domains'], rows.map((r) => [r.messageId, r.status, String(r.n)])).replace(/^/gm, '   '));
      const stats = sim.stats();
      const deletedTwice = Object.values(stats.deletedCounts).filter((n) => n > 1).length;
      const succeeded = rows.filter((r) => r.status === 'succeeded').reduce((a, r) => a + r.n, 0);
      say('7. what the security platform saw:');
      say(`   token fetches: ${stats.tokenFetches}   401 answers: ${stats.unauthorized}   domains deleted: ${Object.keys(stats.deletedCounts).length}   deleted twice: ${deletedTwice}`);
      const ok = succeeded === total && stats.tokenFetches === 1 && stats.unauthorized === 0 && deletedTwice === 0;
      say(ok
        ? `\nIncident handled: all ${total} domains deleted, token fetched once, no 401.`
        : `\nNOT handled as expected: ${succeeded}/${total} succeeded, ${stats.tokenFetches} token fetches, ${stats.unauthorized} 401s.`);
      say(`Try: npm run status -- ${ids[0]}   |   npm run domain -- ${domains[0]![0]}   |   npm run alarms -- ${ids.join(' ')}`);

      // 8. One refused domain, then the platform is fixed: the failure waits for an operator's replay.
      const refused = refusedBatch[1]!;
      sim.setOptions({ failIds: [uidOf.get(refused)!] });
      await fetch(`${services[0]!.url}/api/pm/pipe/callback`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-callback-token': callbackToken },
        body: JSON.stringify({ messageId: refusedId, data: refusedBatch.map((targetName) => ({ percent: 1.0, process: false, reqType: 'SELF_DOMAIN_DELETE', targetName })) }),
      });
      const refusedDeadline = Date.now() + 60_000;
      while (Date.now() < refusedDeadline) {
        const { rows: open } = await db.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM batch_domain WHERE message_id = $1 AND status IN ('pending', 'in_progress', 'retryable')`, [refusedId]);
        if (open[0]!.n === 0) break;
        await new Promise((r) => setTimeout(r, 300));
      }
      sim.setOptions({ failIds: [] });
      say(`8. another batch (${refusedId}): the platform refused ${refused} (on purpose), then was fixed.`);
      say(`   Find it in the console by that domain and replay it with a reason: it will succeed.`);
      if (opts.keepRunning) {
        say(`\nStill running (Ctrl-C stops). API: ${services[0]!.url}, simulator: ${simUrl}/__sim/stats. Try:`);
        say(`  curl -s -H 'content-type: application/json' -H 'x-callback-token: ${callbackToken}' \\`);
        say(`    -d '{"messageId":"pm${'0'.repeat(32)}","data":[{"reqType":"SELF_DOMAIN_DELETE","targetName":"${domains[0]![0]}"}]}' \\`);
        say(`    ${services[0]!.url}/api/pm/pipe/callback`);
        say(`  curl -s -H 'authorization: Bearer ${adminToken}' ${services[0]!.url}/api/batches/${ids[0]}`);
        say(`  curl -s -H 'authorization: Bearer ${adminToken}' ${services[0]!.url}/api/domains/${domains[0]![0]}`);
        say(`\nConsole: ${services[0]!.url}/console   (the first batch: ${services[0]!.url}/console/batches/${ids[0]})`);
        say(`  sign in as ${demoUser.name} / ${demoUser.password} (operator: can replay, acknowledge and resolve)`);
        await new Promise<void>((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve); });
      } else {
        say(`\nConsole: ${services[0]!.url}/console   (stops with this demo now: run npm run demo -- --keep-running to keep it open)`);
        say(`  sign in as ${demoUser.name} / ${demoUser.password} (operator: can replay, acknowledge and resolve)`);
      }
      return ok ? 0 : 1;
    } finally {
      await db.end();
    }
  } finally {
    await stopAll();
  }
});
