/**
 * Runs the security-platform simulator as its own process (demo, benchmarks, manual testing).
 * Steer it while it runs through its admin endpoints: GET /__sim/stats, POST /__sim/reset,
 * POST /__sim/invalidate, POST /__sim/expire, PATCH /__sim/options.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger } from '../src/lib/logger.js';
import { createSimulator, SimulatorOptionsError } from '../src/simulator/server.js';

const integer = (min: number, max = Number.MAX_SAFE_INTEGER) => (value: string): number => {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    throw new InvalidArgumentError(max === Number.MAX_SAFE_INTEGER ? `must be an integer ≥ ${min}.` : `must be an integer from ${min} to ${max}.`);
  }
  return n;
};
const rate = (value: string): number => {
  const n = Number(value);
  if (value.trim() === '' || !(n >= 0 && n <= 1)) throw new InvalidArgumentError('must be a number from 0 to 1.');
  return n;
};
const idList = (value: string): string[] => value.split(',').map((s) => s.trim()).filter(Boolean);

const program = new Command('simulator')
  .description('HTTP simulator of the security platform: one valid token at a time, expiring tokens, delete_user_info')
  .option('--port <port>', 'port to listen on (0 = any free port)', integer(0, 65535), 9090)
  .option('--host <host>', 'address to bind', '127.0.0.1')
  .option('--latency <ms>', 'delay before each delete_user_info reply', integer(0), 0)
  .option('--token-latency <ms>', 'delay before each token reply', integer(0), 0)
  .option('--token-ttl <sec>', 'lifetime of an issued token', integer(1), 3600)
  .option('--fail-ids <a,b,c>', 'user_id_cdn values always reported as failed ("user not found")', idList, [])
  .option('--error-rate <0..1>', 'probability that a delete call answers 500', rate, 0)
  .option('--max-entries <n>', 'most entries accepted in one delete call (more → 400)', integer(1), 1000)
  .option('--reject-credentials', 'token endpoint refuses even the right credentials (401 invalid_grant)', false)
  .option('--client-id <id>', 'expected OAuth client_id', 'cdn-platform')
  .option('--username <name>', 'expected username', 'cdn')
  .option('--password <password>', 'expected password (default: $SECPLAT_PASSWORD, else "secret")')
  .addOption(new Option('--log-level <level>', 'log level; request logs are at debug').choices(['error', 'warn', 'info', 'debug']).default('info'))
  // Usage errors exit 2 (commander's default is 1); --help still exits 0.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
  .parse();

const flags = program.opts<{
  port: number; host: string; latency: number; tokenLatency: number; tokenTtl: number; failIds: string[];
  errorRate: number; maxEntries: number; rejectCredentials: boolean; clientId: string; username: string;
  password?: string; logLevel: string;
}>();

const logger = createLogger({ level: flags.logLevel, service: 'secplat-simulator' });
const simulator = (() => {
  try {
    return createSimulator({
      clientId: flags.clientId,
      username: flags.username,
      password: flags.password ?? process.env.SECPLAT_PASSWORD ?? 'secret',
      tokenTtlSec: flags.tokenTtl,
      latencyMs: flags.latency,
      tokenLatencyMs: flags.tokenLatency,
      failIds: flags.failIds,
      errorRate: flags.errorRate,
      rejectCredentials: flags.rejectCredentials,
      maxEntriesPerCall: flags.maxEntries,
      logger,
    });
  } catch (err) {
    if (!(err instanceof SimulatorOptionsError)) throw err;
    console.error(`simulator: ${err.message}`);
    return process.exit(2);
  }
})();

const { url } = await simulator.start(flags.port, flags.host);
console.log(`security-platform simulator listening on ${url}`);

const shutdown = (signal: string): void => {
  console.log(`simulator: ${signal} received, stopping`);
  simulator.stop().then(() => { process.exitCode = 0; }, (err: unknown) => {
    console.error('simulator: stop failed', err);
    process.exitCode = 1;
  });
};
process.once('SIGINT', shutdown);
process.once('SIGTERM', shutdown);
