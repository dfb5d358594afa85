/**
 * Gauges of the pipeline's state, read when Prometheus scrapes (prom-client's async `collect()`), so they
 * are never stale and cost nothing between scrapes: open alarms, queue depths, batches waiting to be
 * published, domains waiting to be retried, readiness. deploy/prometheus/alerts.yml alerts on them.
 *
 * A read that fails (PostgreSQL down, broker away) leaves its gauges without a value for that scrape
 * instead of failing the scrape or repeating an old value; `pcp_ready` says why.
 */
import client, { type Gauge, type Registry } from 'prom-client';
import type { Logger } from '../lib/logger.js';
import type { Queryable } from '../store/db.js';
import type { AlarmType } from '../store/alarms.js';
import { withTimeout } from '../lib/timing.js';
import { checkReadiness, DEPENDENCIES, type ReadinessDeps } from './readiness.js';

export interface PipelineMetricsDeps extends ReadinessDeps {
  registry: Registry;
  db: Pick<Queryable, 'query'>;
  broker: ReadinessDeps['broker'] & { queueDepths(): Promise<Record<string, number> | undefined> };
  logger: Pick<Logger, 'warn' | 'debug'>;
  /** Bound on each read, so a slow dependency cannot hold the scrape past Prometheus' scrape timeout. */
  readTimeoutMs?: number;
}

// Reported as 0 when none is active, so a dashboard shows 0 instead of "no data". `satisfies` makes a new
// AlarmType a compile error here until it is listed.
const ALARM_TYPES = Object.keys({
  BATCH_FAILURES: 1, UNSUPPORTED_REQ_TYPE: 1, JOB_PARKED: 1, TOKEN_REJECTED: 1, BAD_CREDENTIALS: 1, TOKEN_CONTENTION: 1, TOKEN_BUDGET: 1, AWAITING_PIPELINE: 1,
} satisfies Record<AlarmType, 1>);

export interface LedgerGauges {
  alarms: { type: string; state: 'open' | 'acknowledged'; count: number }[];
  publishPending: { count: number; oldestSeconds: number };
  retryable: { count: number; oldestSeconds: number };
}

/**
 * Everything the ledger gauges need, in one round trip on one pooled connection. Each part is served by a
 * small index: sys_task_process_alarm_state (state, …), batch_publish_pending (updated_at) WHERE
 * publish_pending, batch_domain_retryable (created_at) WHERE status = 'retryable' (migration 004). Ages
 * use the database's clock, the one that wrote the timestamps.
 */
export async function readLedgerGauges(db: Pick<Queryable, 'query'>): Promise<LedgerGauges> {
  const { rows } = await db.query<{ kind: string; label: string | null; n: number; oldest: number | null }>(`
    SELECT 'alarm:' || state AS kind, alarm_type AS label, count(*)::int AS n, NULL::float8 AS oldest
      FROM sys_task_process_alarm WHERE state IN ('open', 'acknowledged') GROUP BY state, alarm_type
    UNION ALL
    SELECT 'publish_pending', NULL, count(*)::int, extract(epoch FROM now() - min(updated_at))::float8
      FROM batch WHERE publish_pending
    UNION ALL
    SELECT 'retryable', NULL, count(*)::int, extract(epoch FROM now() - min(created_at))::float8
      FROM batch_domain WHERE status = 'retryable'`);
  const out: LedgerGauges = { alarms: [], publishPending: { count: 0, oldestSeconds: 0 }, retryable: { count: 0, oldestSeconds: 0 } };
  for (const r of rows) {
    // A clock step back could make "now - oldest" negative for a moment; an age is never below 0.
    const summary = { count: r.n, oldestSeconds: Math.max(0, r.oldest ?? 0) };
    if (r.kind === 'publish_pending') out.publishPending = summary;
    else if (r.kind === 'retryable') out.retryable = summary;
    else out.alarms.push({ type: r.label ?? '', state: r.kind === 'alarm:open' ? 'open' : 'acknowledged', count: r.n });
  }
  return out;
}

/** Joins concurrent callers onto the read in flight: the gauges fed by one query cost one query per scrape. */
function shared<T>(read: () => Promise<T>): () => Promise<T> {
  let inFlight: Promise<T> | undefined;
  return () => (inFlight ??= read().finally(() => { inFlight = undefined; }));
}

/** Registers the scrape-time gauges on `deps.registry` (the context's), each reading through `deps`. */
export function registerPipelineMetrics(deps: PipelineMetricsDeps): void {
  const { registry, logger } = deps;
  const timeoutMs = deps.readTimeoutMs ?? 2000;

  /** A gauge filled at scrape time: `read` (bounded by the caller) → reset → `apply`; a failed or empty read leaves it unset. */
  function gauge<T, L extends string = never>(name: string, help: string, labelNames: L[], read: () => Promise<T | undefined>,
    apply: (g: Gauge<L>, value: T) => void): void {
    const g: Gauge<L> = new client.Gauge<L>({
      name, help, labelNames, registers: [registry],
      collect: async () => {
        let value: T | undefined;
        try {
          value = await read();
        } catch (err) {
          // Not a warning: PostgreSQL or RabbitMQ being away is already logged at warn by readiness.
          logger.debug('metric read failed; gauge left unset for this scrape', { metric: name, err: (err as Error).message });
        }
        // Reset after the read, not before: two scrapes at once must not see each other's half-filled gauge.
        // reset() puts a gauge without labels back to 0, which would read as a real value: remove it instead.
        g.reset();
        if (value !== undefined) apply(g, value);
        else if (labelNames.length === 0) g.remove();
      },
    });
  }

  const ledgerRead = shared(() => readLedgerGauges(deps.db));
  const ledger = () => withTimeout(ledgerRead(), timeoutMs);
  const alarmsIn = (state: 'open' | 'acknowledged') => (g: Gauge<'type'>, v: LedgerGauges) => {
    for (const type of ALARM_TYPES) g.set({ type }, 0);
    for (const a of v.alarms) if (a.state === state) g.set({ type: a.type }, a.count);
  };
  gauge('pcp_alarms_open', 'Alarms in state open (sys_task_process_alarm), by alarm type; npm run alarms lists them', ['type'], ledger, alarmsIn('open'));
  gauge('pcp_alarms_acknowledged', 'Alarms acknowledged but not resolved, by alarm type', ['type'], ledger, alarmsIn('acknowledged'));
  gauge('pcp_batches_publish_pending', 'Batches stored but not yet confirmed by RabbitMQ (the relay publishes them)', [], ledger,
    (g, v) => g.set(v.publishPending.count));
  gauge('pcp_batches_publish_pending_oldest_seconds', 'Seconds since the oldest publish-pending batch was last updated (0 when none)', [], ledger,
    (g, v) => g.set(v.publishPending.oldestSeconds));
  gauge('pcp_domains_retryable', 'Domains in status retryable (waiting for a retry tier)', [], ledger, (g, v) => g.set(v.retryable.count));
  gauge('pcp_domains_retryable_oldest_seconds', 'Seconds since the oldest retryable domain was stored, i.e. how long it has waited to be deleted (0 when none)', [], ledger,
    (g, v) => g.set(v.retryable.oldestSeconds));

  const queueDepths = shared(() => deps.broker.queueDepths());
  gauge('pcp_queue_messages', 'Messages waiting in a queue: jobs, retry_<ms> per tier, parked (unset while RabbitMQ is not connected)', ['queue'],
    () => withTimeout(queueDepths(), timeoutMs),
    (g, depths) => { for (const [queue, n] of Object.entries(depths)) g.set({ queue }, n); });

  // checkReadiness bounds each check itself and never rejects; an outer bound could only turn "down" into unset.
  gauge('pcp_ready', 'Whether a dependency answers (1) or not (0): postgres, redis, rabbitmq; the same checks as /readyz', ['dependency'],
    () => checkReadiness(deps, { timeoutMs }),
    (g, r) => { for (const dependency of DEPENDENCIES) g.set({ dependency }, r[dependency] === 'ok' ? 1 : 0); });
}
