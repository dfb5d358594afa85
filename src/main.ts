/**
 * Composition root: load config, build the context, run the API and/or the workers, and shut down
 * gracefully on SIGTERM/SIGINT.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { configKeys, loadConfig, type Config } from './config.js';
import { createContext, type AppContext } from './context.js';
import { createApp } from './http/app.js';
import { ConfigError } from './lib/errors.js';
import { createLogger, redactUrl } from './lib/logger.js';
import { withTimeout } from './lib/timing.js';
import { createJobHandler } from './pipeline/process-batch.js';
import { notifierOptions, startAlarmNotifier } from './notify/sender.js';
import { batcherFor, publishFlagsFor } from './pipeline/ingest-batcher.js';
import { startRelay, unconfirmedFor } from './pipeline/publish.js';
import { migrate } from './store/migrate.js';

/** Starts the service; resolves once it is serving. Exported so tests can run it in-process. */
export async function startService(config: Config, ctx: AppContext = createContext(config)): Promise<{ ctx: AppContext; port: number; stop(): Promise<void> }> {
  const { logger, releasers } = ctx;
  const runApi = config.role !== 'worker';
  const runWorker = config.role !== 'api';

  await migrate(ctx.db, logger).catch((err: Error) => {
    throw new StartupError(`PostgreSQL is not reachable at ${redactUrl(config.databaseUrl)} (${err.message.replace(/^PostgreSQL unavailable: /, '')}); start it with: pg_ctlcluster --skip-systemctl-redirect 15 main start`);
  });
  await ctx.redis.connect().catch((err: Error) =>
    logger.warn(`Redis is not reachable at ${redactUrl(config.redisUrl)} (${err.message}); no token can be fetched until it is. Start it with: redis-server --daemonize yes`));

  await ctx.broker.start(runWorker ? createJobHandler({ ...ctx, config, signal: ctx.shutdownSignal }) : undefined);
  await ctx.broker.waitUntilConnected(3000).catch(() =>
    logger.warn(`RabbitMQ is not reachable at ${redactUrl(config.rabbitmqUrl)}; callbacks are still stored and will be published once it is. Start it with: rabbitmq-server -detached`));

  // Built before what feeds them (callbacks, the relay), so that shutdown (last in, first out) releases them
  // after those: statements in flight finish, then publishes get their confirms, then the flags are written.
  publishFlagsFor(ctx);
  unconfirmedFor(ctx);
  batcherFor(ctx);
  const relay = startRelay(ctx, { intervalMs: config.relayIntervalMs, retryTiersMs: config.retryTiersMs, confirmTimeoutMs: config.amqpConfirmTimeoutMs });
  releasers.add('relay', () => relay.stop());
  if (config.alarmWebhookUrl) {
    const notifier = startAlarmNotifier({ db: ctx.db, logger: logger.child({ component: 'alarm-notify' }) }, notifierOptions(config));
    releasers.add('alarm notifier', () => notifier.stop());
  } else {
    logger.info('alarm notifications off (ALARM_WEBHOOK_URL is empty): alarm_notification rows are kept, undelivered');
  }

  // A client may not hold a connection by sending slowly: the whole request within HTTP_REQUEST_TIMEOUT_MS
  // (headers within 10 s of it), else 408 and close. Node checks these only every connectionsCheckingInterval
  // (30 s by default, so a 15 s limit held a stalled body up to 45 s); check often enough to keep the limit.
  const server = http.createServer({
    requestTimeout: config.httpRequestTimeoutMs,
    headersTimeout: Math.min(10_000, config.httpRequestTimeoutMs),
    connectionsCheckingInterval: Math.min(1000, Math.max(50, Math.floor(config.httpRequestTimeoutMs / 4))),
  }, createApp(ctx, { opsOnly: !runApi }));
  // Idle keep-alive connections close after 5 s; a load balancer in front must time out idle ones sooner.
  server.keepAliveTimeout = 5000;
  // Beyond this many open connections a new one is closed at once, before it can cost memory or a parser.
  server.maxConnections = config.httpMaxConnections;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  releasers.add('http server', () => new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  }));
  // Registered last so it is released first: the worker stops claiming at once, not after HTTP drains.
  if (runWorker) releasers.add('worker', () => drainWorker(ctx));

  const port = (server.address() as AddressInfo).port;
  logger.info('http listening', { port, role: config.role, instanceId: config.instanceId, pid: process.pid });
  return { ctx, port, stop: () => ctx.release() };
}

/**
 * Takes no new job and starts no new call: the call prepared ahead (claimed, not sent) goes back to pending
 * at once (src/pipeline/call-packer.ts); calls in flight finish (each has its own timeout) and are recorded,
 * and each job is then acked or, with domains still open, requeued for another worker. Shortly before
 * SHUTDOWN_TIMEOUT_MS the calls still in flight are cut, so that what the platform has answered, and the cut
 * calls as retryable, is written while PostgreSQL is still open: a lapsed claim would make another worker
 * delete them a second time.
 */
async function drainWorker(ctx: AppContext): Promise<void> {
  const { broker, config, logger } = ctx;
  await broker.cancelConsumer();
  ctx.stopWork();
  // Time kept after the cut for the settling writes and the broker's nacks.
  const reserveMs = Math.min(3000, Math.floor(config.shutdownTimeoutMs / 4));
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'deadline'>((resolve) => { timer = setTimeout(() => resolve('deadline'), config.shutdownTimeoutMs - reserveMs); });
  const drained = await Promise.race([broker.drain().then(() => 'drained' as const), deadline]);
  clearTimeout(timer);
  if (drained === 'deadline') {
    logger.warn('shutdown deadline near: cutting the security-platform calls still in flight; their domains are retried by another worker', { reserveMs });
    ctx.cutCalls();
    // Bounded too: a job still waiting for a token lock must not hold the rest of the shutdown.
    await withTimeout(broker.drain(), reserveMs).catch(() => logger.warn('jobs still running after the cut; leaving them to the broker', { reserveMs }));
  }
}

/** Lets winston write its last lines before the process exits (bounded: a stuck pipe must not hold the exit). */
async function flushLogs(logger: ReturnType<typeof createLogger>): Promise<void> {
  await Promise.race([
    new Promise<void>((resolve) => { logger.once('finish', () => resolve()); logger.end(); }),
    new Promise<void>((resolve) => { setTimeout(resolve, 1000).unref(); }),
  ]);
}

class StartupError extends Error {}

function usage(): string {
  const rows = Object.values(configKeys).map(([env, doc]) => `  ${env.padEnd(30)} ${doc}`);
  return ['Usage: node dist/src/main.js   (npm start builds first; npm run dev runs the sources with tsx)', '',
    'Runs the callback API and/or the deletion workers. Configured only through environment variables',
    '(defaults in config/default.json); SIGTERM or SIGINT shuts down gracefully.', '', 'Environment:', ...rows, ''].join('\n');
}

async function main(): Promise<void> {
  if (process.argv.slice(2).some((a) => a === '--help' || a === '-h')) {
    process.stdout.write(usage());
    return;
  }
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`configuration error: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const logger = createLogger({ level: config.logLevel });
  if (config.role !== 'worker' && config.callbackAuth === 'none') {
    logger.warn('CALLBACK_AUTH=none: the callback endpoint accepts requests from anyone. Never run like this in production.');
  }
  const ctx = createContext(config, { logger });
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    // A process manager signals the whole process group (systemd's KillMode=control-group, a terminal's
    // Ctrl-C) and wrappers forward the same signal again: a second signal must never end the drain, or the
    // calls in flight go unrecorded and another worker deletes their domains again. Only the deadline does.
    if (stopping) {
      logger.warn('already shutting down; signal ignored (SHUTDOWN_TIMEOUT_MS bounds the drain)', { signal });
      return;
    }
    stopping = true;
    logger.info('shutting down', { signal, deadlineMs: config.shutdownTimeoutMs });
    // The deadline is a promise to the orchestrator: exit even if a releaser hangs.
    setTimeout(() => {
      logger.error('shutdown did not finish in time; exiting', { exitCode: 1, afterMs: config.shutdownTimeoutMs + 2000 });
      process.exit(1);
    }, config.shutdownTimeoutMs + 2000).unref();
    void ctx.release().then(async () => {
      logger.info('shutdown complete', { exitCode: 0 });
      await flushLogs(logger);
      process.exit(0);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('unhandledRejection', (err) => logger.error('unhandled rejection', { err }));
  try {
    await startService(config, ctx);
  } catch (err) {
    logger.error(err instanceof StartupError ? err.message : `startup failed: ${(err as Error).message}`);
    await ctx.release();
    process.exit(1);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`fatal: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
