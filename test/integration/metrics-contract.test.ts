/**
 * What operators are shown must be what the service exposes. The contract: every metric that
 * deploy/prometheus/alerts.yml and deploy/grafana/dashboard.json name appears on a real /metrics (a renamed
 * metric silently turns an alert into "never fires"). Then the scrape-time gauges of src/ops/pipeline-metrics.ts
 * against the real PostgreSQL, Redis and RabbitMQ: seeded rows and messages show up with the right values, and
 * a dependency that is away leaves its gauges unset without breaking the scrape.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import amqp from 'amqplib';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import pg from 'pg';
import client from 'prom-client';
import { createContext } from '../../src/context.js';
import { startService } from '../../src/main.js';
import { Broker } from '../../src/messaging/broker.js';
import { topologyNames } from '../../src/messaging/topology.js';
import { registerPipelineMetrics } from '../../src/ops/pipeline-metrics.js';
import { checkReadiness } from '../../src/ops/readiness.js';
import { captureLogger, cleanupNames, messageId, RABBITMQ_URL, REDIS_URL, testConfig, testDb, testEnv, waitFor } from '../helpers/env.js';

const ALERTS = new URL('../../deploy/prometheus/alerts.yml', import.meta.url);
const DASHBOARD = new URL('../../deploy/grafana/dashboard.json', import.meta.url);
const ADMIN_TOKEN = 'test-admin-token-0001';
const VIEWER_TOKEN = 'test-viewer-token-0001';

// PromQL words that look like metric names; functions are recognised by the "(" after them.
const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);
// Series Prometheus makes up itself for every target; no exporter exposes them.
const SYNTHETIC = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped', 'scrape_samples_post_metric_relabeling', 'scrape_series_added']);

/** Metric names an expression selects: no functions, label names, label values, durations or Grafana variables. */
function metricNamesInExpr(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' ')                       // string literals
    .replace(/\{[^}]*\}|\[[^\]]*\]/g, ' ')                                              // matchers, ranges
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');  // label lists
  const names = new Set<string>();
  for (const m of bare.matchAll(/(?<![\w$.:])([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    const name = m[1]!;
    if (!m[2] && !PROMQL_WORDS.has(name.toLowerCase())) names.add(name);
  }
  return [...names];
}

/**
 * Every `expr:` of the rules file. The file is read line by line (no YAML library is a dependency), so
 * each expression must stay on one line: a folded or literal block would be missed, and this throws.
 */
function ruleExprs(yamlText: string): string[] {
  const exprs = [...yamlText.matchAll(/^\s*expr:\s*(.*)$/gm)].map((m) => m[1]!.trim().replace(/^(['"])(.*)\1$/, '$2'));
  const rules = [...yamlText.matchAll(/^\s*-\s*(?:alert|record):/gm)].length;
  if (exprs.length !== rules || exprs.some((e) => e === '' || /^[|>]/.test(e))) {
    throw new Error(`alerts.yml: found ${exprs.length} one-line expr for ${rules} rules; keep every expr on one line`);
  }
  return exprs;
}

/** Every query of the dashboard: panel targets (rows' nested panels too) and query variables' label_values(). */
function dashboardExprs(dashboard: unknown): string[] {
  const out: string[] = [];
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) { node.forEach(walk); return; }
    if (!node || typeof node !== 'object') return;
    const o = node as Record<string, unknown>;
    if (Array.isArray(o.targets)) for (const t of o.targets as { expr?: unknown }[]) if (typeof t.expr === 'string') out.push(t.expr);
    for (const v of Object.values(o)) walk(v);
  };
  walk((dashboard as { panels?: unknown }).panels);
  for (const v of (dashboard as { templating?: { list?: { type?: string; query?: unknown }[] } }).templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : (v.query as { query?: string } | undefined)?.query ?? '';
    const metric = /label_values\(\s*([a-zA-Z_:][\w:]*)\s*,/.exec(q)?.[1] ?? /^\s*(?:query_result|metrics)\((.*)\)\s*$/.exec(q)?.[1];
    if (metric) out.push(metric);
  }
  return out;
}

/** `# TYPE name type` of a /metrics text: every metric family the service exposes, with or without samples. */
function exposedFamilies(metricsText: string): Map<string, string> {
  return new Map([...metricsText.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

/** The names in `used` that `exposed` lacks; a histogram's or summary's _bucket/_sum/_count counts as the family. */
function missingMetrics(used: Iterable<string>, exposed: Map<string, string>): string[] {
  const missing = new Set<string>();
  for (const name of used) {
    if (exposed.has(name) || SYNTHETIC.has(name)) continue;
    const family = /^(.*)_(?:bucket|sum|count)$/.exec(name)?.[1];
    if (family && ['histogram', 'summary'].includes(exposed.get(family) ?? '')) continue;
    missing.add(name);
  }
  return [...missing].sort();
}

/** Samples of a /metrics text: `name{a="x",b="y"}` (labels sorted) → value. */
function samples(metricsText: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of metricsText.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = [...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => `${l[1]}="${l[2]}"`).sort();
    out.set(labels.length ? `${m[1]}{${labels.join(',')}}` : m[1]!, Number(m[3]));
  }
  return out;
}

describe('metrics contract: alerts.yml and dashboard.json against /metrics', function () {
  let env: Record<string, string> | undefined;
  let service: Awaited<ReturnType<typeof startService>> | undefined;

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    if (env) await cleanupNames(env);
    env = undefined;
  });

  it('when the service runs, then every metric that alerts.yml and dashboard.json name is exposed on /metrics', async () => {
    env = testEnv({ ADMIN_TOKEN, VIEWER_TOKEN, METRICS_AUTH: 'none' });
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('error').logger }));
    const res = await fetch(`http://127.0.0.1:${service.port}/metrics`);
    expect(res.status).to.equal(200);
    const exposed = exposedFamilies(await res.text());

    const fromAlerts = ruleExprs(readFileSync(ALERTS, 'utf8')).flatMap(metricNamesInExpr);
    const fromDashboard = dashboardExprs(JSON.parse(readFileSync(DASHBOARD, 'utf8'))).flatMap(metricNamesInExpr);
    expect(missingMetrics(fromAlerts, exposed), 'metrics named in deploy/prometheus/alerts.yml but not on /metrics').to.deep.equal([]);
    expect(missingMetrics(fromDashboard, exposed), 'metrics named in deploy/grafana/dashboard.json but not on /metrics').to.deep.equal([]);
    // Guards against a parser that finds nothing and so passes vacuously.
    expect(new Set(fromAlerts).size, 'metrics found in alerts.yml').to.be.at.least(8);
    expect(fromDashboard).to.include.members(['pcp_callbacks_total', 'pcp_queue_messages', 'pcp_domain_outcomes_total', 'pcp_ready']);
  });

  it('when a rule names a metric the service does not expose, then the contract check reports it', () => {
    const rules = [
      'groups:',
      '  - name: g',
      '    rules:',
      '      - alert: A',
      '        expr: sum by (type) (rate(pcp_callbacks_total{result="accepted"}[5m])) / on() group_left max(pcp_no_such_gauge) > 0',
      '      - alert: B',
      "        expr: 'histogram_quantile(0.99, sum by (le) (rate(pcp_latency_seconds_bucket[$__rate_interval]))) > 1e-3 and absent(pcp_renamed_total)'",
    ].join('\n');
    const exposed = new Map([['pcp_callbacks_total', 'counter'], ['pcp_latency_seconds', 'histogram']]);
    const used = ruleExprs(rules).flatMap(metricNamesInExpr);
    expect(missingMetrics(used, exposed)).to.deep.equal(['pcp_no_such_gauge', 'pcp_renamed_total']);
    expect(() => ruleExprs('groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: >-\n          up == 0\n')).to.throw(/one line/);
  });
});

describe('pipeline gauges (src/ops/pipeline-metrics.ts) on /metrics', function () {
  let db: pg.Pool;
  let env: Record<string, string> | undefined;
  let service: Awaited<ReturnType<typeof startService>> | undefined;
  let seeded: string[] = [];
  let cleanups: (() => Promise<void>)[] = [];

  /** Starts the API in-process; the relay is slowed down so it does not publish the batches a test seeds. */
  async function start(overrides: Record<string, string> = {}): Promise<string> {
    env = testEnv({ ROLE: 'api', ADMIN_TOKEN, VIEWER_TOKEN, METRICS_AUTH: 'none', RELAY_INTERVAL_MS: '3600000', ...overrides });
    const config = testConfig(env);
    service = await startService(config, createContext(config, { logger: captureLogger('error').logger }));
    return `http://127.0.0.1:${service.port}`;
  }

  async function scrape(url: string): Promise<Map<string, number>> {
    const res = await fetch(`${url}/metrics`);
    expect(res.status).to.equal(200);
    return samples(await res.text());
  }

  /** A batch row of this test (removed in afterEach with its domains and alarms). */
  async function seedBatch(opts: { publishPending?: boolean; updatedAgo?: string } = {}): Promise<string> {
    const id = messageId();
    seeded.push(id);
    await db.query(
      `INSERT INTO batch (message_id, publish_pending, updated_at) VALUES ($1, $2, now() - $3::interval)`,
      [id, opts.publishPending ?? false, opts.updatedAgo ?? '0 seconds'],
    );
    return id;
  }

  beforeEach(() => {
    db = testDb();
  });

  afterEach(async () => {
    await service?.stop();
    service = undefined;
    for (const c of cleanups.reverse()) await c();
    cleanups = [];
    if (seeded.length) {
      await db.query('DELETE FROM sys_task_process_alarm WHERE message_id = ANY($1)', [seeded]);
      await db.query('DELETE FROM batch_domain WHERE message_id = ANY($1)', [seeded]);
      await db.query('DELETE FROM batch WHERE message_id = ANY($1)', [seeded]);
    }
    seeded = [];
    if (env) await cleanupNames(env);
    env = undefined;
    await db.end();
  });

  it('when alarms are open, acknowledged and resolved, then pcp_alarms_open and pcp_alarms_acknowledged count the active ones by type', async () => {
    const url = await start();
    const before = await scrape(url);
    const [a, b, c, d] = [messageId(), messageId(), messageId(), messageId()];
    seeded.push(a, b, c, d);
    await db.query(
      `INSERT INTO sys_task_process_alarm (tag, message_id, alarm_type, content, state) VALUES
         ('{"taskId":"' || $1 || '_exc","type":"DOMAIN_B_PIPE"}', $1, 'BATCH_FAILURES', 'test', 'open'),
         ('{"taskId":"' || $2 || '_exc","type":"DOMAIN_B_PIPE"}', $2, 'BATCH_FAILURES', 'test', 'open'),
         ('{"taskId":"' || $3 || '_exc","type":"DOMAIN_B_PIPE"}', $3, 'TOKEN_REJECTED', 'test', 'acknowledged'),
         ('{"taskId":"' || $4 || '_exc","type":"DOMAIN_B_PIPE"}', $4, 'BATCH_FAILURES', 'test', 'resolved')`,
      [a, b, c, d],
    );
    const after = await scrape(url);
    const delta = (key: string) => after.get(key)! - before.get(key)!;
    expect(delta('pcp_alarms_open{type="BATCH_FAILURES"}')).to.equal(2);
    expect(delta('pcp_alarms_open{type="TOKEN_REJECTED"}')).to.equal(0);
    expect(delta('pcp_alarms_acknowledged{type="TOKEN_REJECTED"}')).to.equal(1);
    expect(delta('pcp_alarms_acknowledged{type="BATCH_FAILURES"}')).to.equal(0);
    // Types without an active alarm read 0 rather than "no data".
    expect(after.has('pcp_alarms_open{type="UNSUPPORTED_REQ_TYPE"}')).to.equal(true);
  });

  it('when a batch has waited an hour to be published, then pcp_batches_publish_pending counts it and the oldest age is an hour', async () => {
    const url = await start();
    const before = await scrape(url);
    await seedBatch({ publishPending: true, updatedAgo: '1 hour' });
    await seedBatch({ publishPending: false, updatedAgo: '3 hours' }); // published: not waiting
    const after = await scrape(url);
    expect(after.get('pcp_batches_publish_pending')! - before.get('pcp_batches_publish_pending')!).to.equal(1);
    // The oldest in the whole ledger: this one, unless another test left an even older one (none does).
    expect(after.get('pcp_batches_publish_pending_oldest_seconds')).to.be.within(3600, 3600 + 600);
  });

  it('when a domain has been retryable for two hours, then pcp_domains_retryable counts it and the oldest age is two hours', async () => {
    const url = await start();
    const before = await scrape(url);
    const id = await seedBatch();
    await db.query(
      `INSERT INTO batch_domain (message_id, domain, req_type, status, created_at) VALUES
         ($1, 'a.metrics.example.com', 'SELF_DOMAIN_DELETE', 'retryable', now() - interval '2 hours'),
         ($1, 'b.metrics.example.com', 'SELF_DOMAIN_DELETE', 'retryable', now() - interval '5 minutes'),
         ($1, 'c.metrics.example.com', 'SELF_DOMAIN_DELETE', 'failed', now() - interval '9 hours')`,
      [id],
    );
    const after = await scrape(url);
    expect(after.get('pcp_domains_retryable')! - before.get('pcp_domains_retryable')!).to.equal(2);
    expect(after.get('pcp_domains_retryable_oldest_seconds')).to.be.within(7200, 7200 + 600);
  });

  it('when jobs wait in the jobs and parked queues, then pcp_queue_messages reports each queue, retry tiers included', async () => {
    const url = await start();
    const t = topologyNames(env!.AMQP_PREFIX!, [300, 600, 1000]);
    const conn = await amqp.connect(RABBITMQ_URL);
    cleanups.push(() => conn.close());
    const ch = await conn.createConfirmChannel();
    const job = Buffer.from(JSON.stringify({ messageId: messageId(), attempt: 0 }));
    for (let i = 0; i < 3; i++) ch.publish(t.jobsExchange, t.jobRoutingKey, job, { persistent: true });
    ch.publish(t.parkedExchange, '', job, { persistent: true });
    await ch.waitForConfirms();

    const m = await waitFor('queue depths on /metrics', async () => {
      const s = await scrape(url);
      return s.get('pcp_queue_messages{queue="jobs"}') === 3 && s.get('pcp_queue_messages{queue="parked"}') === 1 ? s : undefined;
    }, 10_000);
    for (const tier of ['retry_300', 'retry_600', 'retry_1000']) expect(m.get(`pcp_queue_messages{queue="${tier}"}`)).to.equal(0);
  });

  it('when every dependency answers, then pcp_ready is 1 for postgres, redis and rabbitmq', async () => {
    const s = await scrape(await start());
    expect(s.get('pcp_ready{dependency="postgres"}')).to.equal(1);
    expect(s.get('pcp_ready{dependency="redis"}')).to.equal(1);
    expect(s.get('pcp_ready{dependency="rabbitmq"}')).to.equal(1);
  });

  it('when RabbitMQ is unreachable, then pcp_ready{rabbitmq} is 0, pcp_queue_messages is left out and the ledger gauges still answer', async () => {
    const s = await scrape(await start({ RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:1' }));
    expect(s.get('pcp_ready{dependency="rabbitmq"}')).to.equal(0);
    expect(s.get('pcp_ready{dependency="postgres"}')).to.equal(1);
    expect([...s.keys()].filter((k) => k.startsWith('pcp_queue_messages'))).to.deep.equal([]);
    expect(s.has('pcp_batches_publish_pending')).to.equal(true);
  });

  it('when PostgreSQL is unreachable, then the scrape still answers, the ledger gauges are left out and pcp_ready{postgres} is 0', async () => {
    const registry = new client.Registry();
    const deadDb = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/x', connectionTimeoutMillis: 1000 });
    const redis = new Redis(REDIS_URL);
    const broker = new Broker({
      url: RABBITMQ_URL, topology: topologyNames(`t${Date.now()}`, [300]), deliveryLimit: 5, confirmTimeoutMs: 1000, prefetch: 1,
      logger: captureLogger('error').logger,
    }); // never started: RabbitMQ counts as not connected
    cleanups.push(async () => { await deadDb.end(); redis.disconnect(); await broker.close(); });
    const { logger, lines } = captureLogger('debug');
    registerPipelineMetrics({ registry, db: deadDb, redis, broker, logger });

    const s = samples(await registry.metrics());
    expect(s.get('pcp_ready{dependency="postgres"}')).to.equal(0);
    expect(s.get('pcp_ready{dependency="redis"}')).to.equal(1);
    expect(s.get('pcp_ready{dependency="rabbitmq"}')).to.equal(0);
    const ledgerGauges = [...s.keys()].filter((k) => /^pcp_(alarms|batches|domains|queue)_/.test(k));
    expect(ledgerGauges).to.deep.equal([]);
    // The reason is logged (debug for the gauges, warn for readiness), never exported.
    expect(lines.some((l) => l.includes('"metric":"pcp_alarms_open"') && l.includes('"level":"debug"'))).to.equal(true);
    expect(lines.some((l) => l.includes('readiness check failed') && l.includes('"check":"postgres"') && l.includes('"level":"warn"'))).to.equal(true);
    expect(await registry.metrics()).not.to.include('127.0.0.1');
  });

  it('when a dependency hangs, then checkReadiness answers down within its timeout and the answer carries no address', async () => {
    // A server that accepts connections and never says a word: pg waits for its greeting forever.
    const silent = net.createServer(() => undefined);
    const sockets = new Set<net.Socket>();
    silent.on('connection', (s) => sockets.add(s));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const hangingDb = new pg.Pool({ connectionString: `postgres://postgres@127.0.0.1:${port}/x` });
    const redis = new Redis(REDIS_URL);
    cleanups.push(async () => {
      redis.disconnect();
      for (const s of sockets) s.destroy();
      await hangingDb.end().catch(() => undefined);
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    });
    const { logger, lines } = captureLogger('warn');

    const started = Date.now();
    const r = await checkReadiness({ db: hangingDb, redis, broker: { isConnected: true }, logger }, { timeoutMs: 300 });
    expect(Date.now() - started).to.be.below(2000);
    expect(r).to.deep.equal({ postgres: 'down', redis: 'ok', rabbitmq: 'ok' });
    expect(JSON.stringify(r)).not.to.include(String(port));
    expect(lines.some((l) => l.includes('timeout after 300 ms'))).to.equal(true);
  });
});
