/**
 * Prometheus metrics, on a registry per process context (no global state, so tests can build many).
 */
import client from 'prom-client';

export function createMetrics() {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });
  const counter = (name: string, help: string, labelNames: string[] = []) =>
    new client.Counter({ name, help, labelNames, registers: [registry] });
  return {
    registry,
    callbacks: counter('pcp_callbacks_total', 'Callbacks received, by result', ['result']),
    outcomes: counter('pcp_domain_outcomes_total', 'Domain outcomes recorded, by status', ['status']),
    tokenFetches: counter('pcp_token_fetches_total', 'Token fetches at the security platform, by result', ['result']),
    unauthorized: counter('pcp_secplat_401_total', '401 answers from the security platform'),
    // Counted by the one process that recorded the invalidation in Redis: sum over processes for the total.
    tokenExternalInvalidations: counter('pcp_token_external_invalidations_total', 'Current tokens invalidated by another client, counted once per generation'),
    secplatCalls: counter('pcp_secplat_calls_total', 'delete_user_info calls, by result', ['result']),
    retries: counter('pcp_job_retries_total', 'Jobs sent to a retry tier, by tier', ['tier']),
    parked: counter('pcp_jobs_parked_total', 'Jobs sent to the parked queue'),
    publishFailures: counter('pcp_queue_publish_failures_total', 'Job publishes that were not confirmed'),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
