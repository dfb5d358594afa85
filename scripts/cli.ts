/**
 * Shared plumbing of the operator CLIs: exit codes, the scoped context, plain-text tables.
 * Exit codes: 0 done, 1 failed (or a dependency is down, or config is bad), 2 usage error.
 * stdout carries only the result (tables or JSON); logs and diagnostics go to stderr.
 */
import path from 'node:path';
import { inspect } from 'node:util';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { loadConfig } from '../src/config.js';
import { createContext, type AppContext } from '../src/context.js';
import { AppError, ConfigError, DependencyUnavailableError, NotFoundError, ValidationError } from '../src/lib/errors.js';
import { createLogger, redactUrl } from '../src/lib/logger.js';
import { isConnectionError } from '../src/store/db.js';
import { DOMAIN_STATUSES, type StatusCounts } from '../src/store/ledger.js';
import { migrate } from '../src/store/migrate.js';

/** Wrong arguments or input file: exit 2, message only. */
export class UsageError extends AppError {
  constructor(message: string) { super(message, { code: 'USAGE' }); }
}

const name = path.basename(process.argv[1] ?? 'cli').replace(/\.[cm]?[jt]s$/, '');

/** Runs main and turns its result or error into an exit code; connection problems never print a stack. */
export async function runCli(main: () => Promise<number>): Promise<void> {
  let code: number;
  try {
    code = await main();
  } catch (err) {
    code = exitCodeOf(err);
  }
  process.exitCode = code;
  // A stray handle (a reconnect timer, an idle socket) must not keep a finished CLI alive.
  setTimeout(() => process.exit(code), 2000).unref();
}

function exitCodeOf(err: unknown): number {
  // commander has already printed its message; --help and --version come here with exit code 0.
  if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
  // Messages can quote input (a CSV header, a hostname): escaped like every other line the CLIs print.
  if (err instanceof UsageError || err instanceof ValidationError || err instanceof NotFoundError) {
    console.error(`${name}: ${escapeControl(err.message)}`);
    return 2;
  }
  if (err instanceof ConfigError || err instanceof DependencyUnavailableError) {
    console.error(`${name}: ${escapeControl(err.message)}`);
    return 1;
  }
  if (isConnectionError(err)) {
    console.error(`${name}: a dependency is not reachable: ${escapeControl((err as Error).message)}`);
    return 1;
  }
  console.error(`${name}: unexpected error: ${inspect(err).split('\n').map(escapeControl).join('\n')}`);
  return 1;
}

/**
 * Loads config, builds the same context as main.ts (logger at warn, on stderr), applies migrations unless
 * told not to, runs cb and always releases the context.
 */
export async function withContext<T>(cb: (ctx: AppContext) => Promise<T>, opts: { migrate?: boolean } = {}): Promise<T> {
  // CLIs never serve callbacks, so the callback-auth check (CALLBACK_TOKEN required) must not block operators.
  const config = loadConfig(process.env, { CALLBACK_AUTH: 'none' });
  const logger = createLogger({ level: 'warn', service: `pcp-${name}`, stream: process.stderr });
  const ctx = createContext(config, { logger });
  try {
    if (opts.migrate !== false) await migrate(ctx.db, logger);
    return await cb(ctx);
  } catch (err) {
    throw explainPostgresError(err, config.databaseUrl);
  } finally {
    await ctx.release();
  }
}

/** Rewrites PostgreSQL connection failures into one sentence an operator can act on. */
function explainPostgresError(err: unknown, databaseUrl: string): unknown {
  if (err instanceof DependencyUnavailableError && err.dependency !== 'postgres') return err;
  const cause = (err instanceof DependencyUnavailableError ? err.cause : err) as { code?: string; message?: string } | undefined;
  const where = redactUrl(databaseUrl);
  // 3D000 = database does not exist, 28xxx = authentication failed: the server is up but refuses us.
  if (cause?.code && /^(3D000|28\w{3})$/.test(cause.code)) {
    return new DependencyUnavailableError('postgres', `PostgreSQL at ${where} refused the connection: ${cause.message ?? cause.code}; check DATABASE_URL.`, err);
  }
  if (isConnectionError(err)) {
    const reason = cause?.code ?? cause?.message ?? 'connection failed';
    return new DependencyUnavailableError('postgres',
      `PostgreSQL is not reachable at ${where} (${reason}): start it (e.g. \`pg_ctlcluster 15 main start\`) or point DATABASE_URL at a running server.`, err);
  }
  return err;
}

/** commander parser for integer options. */
export const integer = (min: number, max = Number.MAX_SAFE_INTEGER) => (value: string): number => {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    throw new InvalidArgumentError(max === Number.MAX_SAFE_INTEGER ? `must be an integer ≥ ${min}.` : `must be an integer from ${min} to ${max}.`);
  }
  return n;
};

type Cell = string | number | boolean | Date | null | undefined;

// C0 controls, DEL, C1 controls (ESC, CR, CSI U+009B can move the cursor, rewrite or hide earlier output),
// line/paragraph separators, and the bidi embeddings, overrides and isolates that reorder what follows
// (https://trojansource.codes). Letters, accents, CJK and emoji, ZWJ sequences included, are untouched.
const CONTROL = /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069]/gu;
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * Makes caller-supplied text safe for an operator's terminal: every control character is shown as an
 * escape (`\x1b`, `\r`, `\u009b`) instead of being interpreted. JSON output needs none: JSON.stringify escapes.
 */
export function escapeControl(text: string): string {
  return text.replace(CONTROL, (c) => {
    const code = c.charCodeAt(0);
    return NAMED[c] ?? (code < 0x80 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`);
  });
}

/** UTC timestamp to the second: short enough for a table, unambiguous across hosts. */
export function formatDate(d: Date | null | undefined): string {
  return d ? `${d.toISOString().slice(0, 19).replace('T', ' ')}Z` : '';
}

/** Aligned plain-text table; numbers right-aligned, line breaks inside cells flattened, control characters escaped. */
export function formatTable(headers: string[], rows: Cell[][]): string {
  const text = (c: Cell) => (c instanceof Date ? formatDate(c) : c === null || c === undefined ? '' : escapeControl(String(c).replace(/\s*\n\s*/g, ' ')));
  const cells = rows.map((r) => headers.map((_, i) => text(r[i])));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[], raw?: Cell[]) => r
    .map((c, i) => (typeof raw?.[i] === 'number' ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
    .join('  ').trimEnd();
  return [line(headers.map((h) => h.toUpperCase())), line(widths.map((w) => '-'.repeat(w))), ...cells.map((r, i) => line(r, rows[i]))].join('\n');
}

/** "total 5: succeeded 3, failed 2" — only the statuses that occur. */
export function formatCounts(counts: StatusCounts): string {
  const total = DOMAIN_STATUSES.reduce((n, s) => n + counts[s], 0);
  const parts = DOMAIN_STATUSES.filter((s) => counts[s] > 0).map((s) => `${s} ${counts[s]}`);
  return `total ${total}${parts.length ? `: ${parts.join(', ')}` : ''}`;
}

/** A commander program whose usage errors throw (runCli maps them to exit 2) instead of exiting 1. */
export function createProgram(command: string, description: string): Command {
  return new Command(command).description(description).exitOverride().showHelpAfterError('(run with --help for usage)');
}
