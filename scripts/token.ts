/**
 * npm run token: the shared security-platform token as every process sees it (read from Redis), never the
 * token itself: generation, age, expiry, fetches today against the budget, external invalidations, circuit.
 */
import { DependencyUnavailableError } from '../src/lib/errors.js';
import { redactUrl } from '../src/lib/logger.js';
import type { TokenState } from '../src/token/token-watch.js';
import { createProgram, escapeControl, formatDate, runCli, withContext } from './cli.js';

await runCli(async () => {
  const program = createProgram('token', 'Show the shared security-platform token\'s state (never the token itself), as stored in Redis for every process.')
    .option('--json', 'print the state as one JSON object (the same as GET /api/token)')
    .addHelpText('after', [
      '',
      'Shows: generation; when it was fetched and when it expires; token fetches this UTC day against',
      'TOKEN_DAILY_BUDGET (a TOKEN_BUDGET alarm at 80 %); external invalidations (another client fetching',
      'with our credentials) in the last hour against TOKEN_CONTENTION_MAX; the bad-credentials circuit.',
      '',
      'Exit codes: 0 shown, 1 Redis is not reachable or the configuration is invalid, 2 usage error.',
    ].join('\n'))
    .parse();
  const { json } = program.opts<{ json?: boolean }>();

  // Redis only: no migrations, and PostgreSQL may be down without hiding the token's state.
  return withContext(async ({ config, redis, tokens }) => {
    await redis.connect().catch((err: unknown) => {
      throw new DependencyUnavailableError('redis', `Redis is not reachable at ${redactUrl(config.redisUrl)} (${(err as Error).message}): `
        + 'start it (e.g. `redis-server --daemonize yes`) or point REDIS_URL at a running server.', err);
    });
    // A Redis that goes away after connecting: DependencyUnavailableError too (exit 1).
    const state = await tokens.state();
    console.log(json ? JSON.stringify(state, null, 2) : formatState(state));
    return 0;
  }, { migrate: false });
});

/** The plain-text view: one line per concern. */
function formatState(s: TokenState): string {
  const at = (iso: string | null) => formatDate(iso === null ? null : new Date(iso));
  const token = s.generation === null
    ? 'none stored (the next call fetches one)'
    : `generation ${s.generation}`
      + (s.fetchedAt && s.ageSeconds !== null ? `, fetched ${at(s.fetchedAt)} (${duration(s.ageSeconds)} ago)` : '')
      + (s.expiresAt && s.expiresInSeconds !== null
        ? `, ${s.expiresInSeconds > 0 ? `expires ${at(s.expiresAt)} (in ${duration(s.expiresInSeconds)})` : `expired ${at(s.expiresAt)}`}` : '');
  const budget = `${s.fetchesToday} today (UTC day ${s.fetchDay}) of a daily budget of ${s.dailyBudget}; alarm at ${s.budgetAlarmAt}`
    + (s.fetchesToday >= s.dailyBudget ? ' (over budget: fetching continues, the platform\'s quota decides)' : '');
  const contention = `${s.externalInvalidationsLastHour} in the last hour (alarm above ${s.contentionMax})`
    + (s.lastExternalInvalidationAt ? `; last ${at(s.lastExternalInvalidationAt)}` : '; none in the last 24 h');
  const circuit = s.circuit.open
    ? `open: no token fetches for ${duration(s.circuit.remainingSeconds)} more${s.circuit.until ? ` (until ${at(s.circuit.until)})` : ''}; ${escapeControl(s.circuit.reason ?? '')}`
    : 'closed';
  return [
    `token                   ${token}`,
    `fetches                 ${budget}`,
    `external invalidations  ${contention}`,
    `circuit                 ${circuit}`,
  ].join('\n');
}

/** 3725 → "1h 2m 5s". */
function duration(totalSeconds: number): string {
  const s = Math.max(0, Math.round(totalSeconds));
  const parts = [[Math.floor(s / 3600), 'h'], [Math.floor((s % 3600) / 60), 'm'], [s % 60, 's']] as const;
  const shown = parts.filter(([n]) => n > 0).map(([n, unit]) => `${n}${unit}`);
  return shown.length ? shown.join(' ') : '0s';
}
