/**
 * The process context: every client built once from config, each registering its own releaser.
 * main.ts and every script build this same context and release it in a finally.
 */
import { Redis } from 'ioredis';
import { Redlock } from '@sesamecare-oss/redlock';
import pLimit from 'p-limit';
import type { Config } from './config.js';
import { createLogger, type Logger } from './lib/logger.js';
import { createMetrics, type Metrics } from './lib/metrics.js';
import { Releasers } from './lib/shutdown.js';
import { Broker } from './messaging/broker.js';
import { topologyNames } from './messaging/topology.js';
import { registerPipelineMetrics } from './ops/pipeline-metrics.js';
import { createSecplatClient } from './secplat/client.js';
import { raiseAlarm } from './store/alarms.js';
import { createDb, type Db } from './store/db.js';
import { TokenManager } from './token/token-manager.js';
import { registerTokenGauges } from './token/token-watch.js';

export interface AppContext {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  db: Db;
  /** The call path's own PostgreSQL connections (claims, inventory lookups, lease renewals); see below. */
  callDb: Db;
  redis: Redis;
  broker: Broker;
  tokens: TokenManager;
  secplat: ReturnType<typeof createSecplatClient>;
  secplatLimit: ReturnType<typeof pLimit>;
  releasers: Releasers;
  /** Aborted by stopWork(): in-flight jobs stop starting new calls and hand unsent domains back. */
  shutdownSignal: AbortSignal;
  stopWork(): void;
  /** Cuts every security-platform call still in flight (shutdown's deadline); their domains become retryable. */
  cutCalls(): void;
  release(): Promise<void>;
}

/** Builds the context; nothing connects until used (pg and ioredis connect lazily, the broker on start()). */
export function createContext(config: Config, opts: { logger?: Logger } = {}): AppContext {
  const logger = opts.logger ?? createLogger({ level: config.logLevel });
  const releasers = new Releasers();
  const metrics = createMetrics();
  const abort = new AbortController();
  const cut = new AbortController();

  const db = createDb(config, logger);
  releasers.add('postgres', () => db.end());
  // Two connections of their own for what a call waits on (src/pipeline/call-packer.ts): per-job bookkeeping
  // queued on the main pool must not hold a call slot while its lease is renewed, nor delay the next call.
  const callDb = createDb({ ...config, databasePoolSize: 2 }, logger);
  releasers.add('postgres (call path)', () => callDb.end());

  const redis = new Redis(config.redisUrl, {
    lazyConnect: true,
    // Fail fast while Redis is away: no token work may queue up and then run uncoordinated.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    commandTimeout: 2000,
  });
  redis.on('error', (err: Error) => logger.debug('redis error', { err: err.message }));
  releasers.add('redis', () => { redis.disconnect(); });

  // Extend the lock well before it lapses; redlock needs the TTL to exceed this threshold by 100 ms.
  const redlock = new Redlock([redis], { driftFactor: 0.01, retryCount: 0, automaticExtensionThreshold: Math.min(1000, Math.floor(config.tokenLockTtlMs / 3)) });
  redlock.on('error', () => undefined); // lock contention is reported through acquire/using, not here

  const secplat = createSecplatClient({
    baseUrl: config.secplatBaseUrl, clientId: config.secplatClientId, username: config.secplatUsername,
    password: config.secplatPassword, timeoutMs: config.secplatTimeoutMs, maxSockets: config.secplatConcurrency * 2,
    signal: cut.signal,
  });
  releasers.add('secplat http agent', () => secplat.close());

  const tokens = new TokenManager({
    redis, redlock, client: secplat, logger: logger.child({ component: 'token' }), metrics, config,
    onCircuitOpen: (reason) => raiseAlarm(db, { messageId: null, type: 'BAD_CREDENTIALS', content: `token fetches paused: ${reason}` }),
    onAlarm: (alarm) => raiseAlarm(db, { messageId: null, ...alarm }),
  });
  // Released before PostgreSQL (last in, first out): token alarms still being written get to finish.
  releasers.add('token alarms', () => tokens.alarmsSettled());
  registerTokenGauges(metrics.registry, tokens, { dailyBudget: config.tokenDailyBudget, logger: logger.child({ component: 'token' }) });

  const broker = new Broker({
    url: config.rabbitmqUrl,
    topology: topologyNames(config.amqpPrefix, config.retryTiersMs),
    deliveryLimit: config.amqpDeliveryLimit,
    confirmTimeoutMs: config.amqpConfirmTimeoutMs,
    prefetch: config.amqpPrefetch,
    logger: logger.child({ component: 'amqp' }),
  });
  releasers.add('rabbitmq', () => broker.close());
  registerPipelineMetrics({ registry: metrics.registry, db, redis, broker, logger: logger.child({ component: 'metrics' }) });

  return {
    config, logger, metrics, db, callDb, redis, broker, tokens, secplat, releasers,
    secplatLimit: pLimit(config.secplatConcurrency),
    shutdownSignal: abort.signal,
    stopWork: () => abort.abort(),
    cutCalls: () => cut.abort(),
    release: () => releasers.releaseAll(logger, config.shutdownTimeoutMs),
  };
}
