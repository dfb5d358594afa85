/**
 * npm run replay -- <messageId…>: re-open the failed and stuck domains of some batches and queue their jobs
 * again. Succeeded domains are never re-opened, so a replay cannot delete anything twice.
 */
import os from 'node:os';
import cliProgress from 'cli-progress';
import type { AppContext } from '../src/context.js';
import { DependencyUnavailableError } from '../src/lib/errors.js';
import { sleep } from '../src/lib/timing.js';
import { checkReason, replayBatches, UnknownBatchError } from '../src/pipeline/replay.js';
import { countByStatus, existingBatches, listDomains, type DomainRow, type StatusCounts } from '../src/store/ledger.js';
import { createProgram, formatCounts, formatTable, integer, runCli, UsageError, withContext } from './cli.js';

const POLL_MS = 500;
const BROKER_WAIT_MS = 10_000;

// Retryable domains are still being worked on (they wait in a retry tier).
const open = (c: StatusCounts) => c.pending + c.in_progress + c.retryable;
const total = (c: StatusCounts) => Object.values(c).reduce((a, b) => a + b, 0);

function printPlan(ids: string[], rows: DomainRow[], dryRun: boolean): void {
  for (const id of ids) {
    const mine = rows.filter((r) => r.messageId === id);
    console.log(`\nbatch ${id}: ${mine.length === 0 ? 'nothing to re-open' : `${dryRun ? 'would re-open' : 're-opened'} ${mine.length} domain(s)`}`);
    if (mine.length > 0) console.log(formatTable(['domain', 'status', 'attempts', 'detail'], mine.map((d) => [d.domain, d.status, d.attempts, d.detail])));
  }
}

/** Polls the ledger until no domain of the batches is pending or in progress; false on timeout. */
async function waitForBatches(ctx: AppContext, ids: string[], timeoutMs: number): Promise<boolean> {
  const bar = new cliProgress.SingleBar({ format: 'replay [{bar}] {value}/{total} domains finished', stream: process.stderr, clearOnComplete: false }, cliProgress.Presets.shades_classic);
  const deadline = Date.now() + timeoutMs;
  let started = false;
  try {
    for (;;) {
      const counts = [...(await countByStatus(ctx.db, ids)).values()];
      const all = counts.reduce((n, c) => n + total(c), 0);
      const done = all - counts.reduce((n, c) => n + open(c), 0);
      if (!started) bar.start(all, done);
      started = true;
      bar.update(done);
      if (done === all) return true;
      if (Date.now() >= deadline) return false;
      await sleep(POLL_MS);
    }
  } finally {
    bar.stop();
  }
}

/** The OS user running the command: who replayed, in the audit. */
function osUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    return process.env.USER ?? process.env.LOGNAME ?? 'unknown'; // a container user without a passwd entry
  }
}

await runCli(async () => {
  const program = createProgram('replay', 'Re-open the failed, retryable and stuck domains of callback batches and queue their jobs again.')
    .argument('<messageId...>', 'messageIds of the batches to replay')
    .option('--all', 'also re-open unknown_domain domains (e.g. after importing missing domains); unsupported ones (a reqType other than SELF_DOMAIN_DELETE) are never re-opened')
    .option('--dry-run', 'only show which domains would be re-opened; change nothing')
    .option('--reason <text>', 'why you replay (required unless --dry-run; kept in the audit with your OS user name)')
    .option('--wait', 'wait until the replayed batches have no pending, in-progress or retryable domain, then print their outcome')
    .option('--timeout <sec>', 'with --wait: give up after this many seconds', integer(1), 300)
    .addHelpText('after', `
Succeeded domains are never re-opened. Without --all, only failed, retryable and stuck (pending, or in
progress past their lease) domains are re-opened. If RabbitMQ is down the domains are still re-opened in
the ledger, and the running service's relay publishes the jobs once RabbitMQ is back.

Exit codes: 0 replayed (with --wait: every replayed domain succeeded), 1 some replayed domain did not
succeed or --timeout passed, or a dependency is down, 2 usage error or unknown messageId.`)
    .parse();
  const ids = [...new Set(program.processedArgs[0] as string[])];
  const opts = program.opts<{ all?: boolean; dryRun?: boolean; reason?: string; wait?: boolean; timeout: number }>();
  const all = opts.all ?? false;
  if (!opts.dryRun && opts.reason === undefined) throw new UsageError('--reason is required: say why you replay (it is kept in the audit), or use --dry-run');
  const reason = opts.reason === undefined ? undefined : checkReason(opts.reason);

  return withContext(async (ctx) => {
    // Check the ids before waiting on RabbitMQ: a typo should fail at once.
    const known = new Set(await existingBatches(ctx.db, ids));
    if (ids.some((id) => !known.has(id))) throw new UnknownBatchError(ids.filter((id) => !known.has(id)));

    const plan = await replayBatches(ctx, ids, { all, dryRun: true });
    if (opts.dryRun) {
      printPlan(ids, plan.reopened, true);
      console.log(`\ndry run: nothing changed (${plan.reopened.length} domain(s) would be re-opened)`);
      return 0;
    }
    if (plan.reopened.length === 0) {
      printPlan(ids, [], false);
      return 0;
    }

    await ctx.broker.start();
    await ctx.broker.waitUntilConnected(BROKER_WAIT_MS).catch((err: unknown) => {
      if (!(err instanceof DependencyUnavailableError)) throw err;
      console.error(`${err.message}; re-opening the domains in the ledger anyway: the service's relay publishes their jobs once RabbitMQ is back.`);
    });
    const result = await replayBatches(ctx, ids, { all, dryRun: false, reason, actor: { name: osUser(), role: null, via: 'cli' } });
    // Show what was actually re-opened; the plan above may be stale by a few milliseconds.
    const before = new Map(plan.reopened.map((r) => [`${r.messageId}\n${r.domain}`, r]));
    printPlan(ids, result.reopened.map((r) => before.get(`${r.messageId}\n${r.domain}`) ?? r), false);
    console.log(`\nre-opened ${result.reopened.length} domain(s); job published for ${result.published.length} batch(es)`
      + (result.unpublished.length ? `, not yet for ${result.unpublished.join(', ')} (the relay will publish them)` : ''));
    if (!opts.wait) return 0;

    const touched = [...new Set(result.reopened.map((r) => r.messageId))];
    const finished = await waitForBatches(ctx, touched, opts.timeout * 1000);
    if (!finished) console.error(`timed out after ${opts.timeout} s; some domains are still pending or in progress`);
    const replayed = new Set(result.reopened.map((r) => `${r.messageId}\n${r.domain}`));
    let allSucceeded = finished;
    const counts = await countByStatus(ctx.db, touched);
    for (const id of touched) {
      const domains = await listDomains(ctx.db, id);
      allSucceeded &&= domains.every((d) => !replayed.has(`${id}\n${d.domain}`) || d.status === 'succeeded');
      console.log(`\nbatch ${id}: ${formatCounts(counts.get(id)!)}`);
      console.log(formatTable(['domain', 'status', 'attempts', 'user_id_cdn', 'detail', 'updated'],
        domains.map((d) => [d.domain, d.status, d.attempts, d.userIdCdn, d.detail, d.updatedAt])));
    }
    return allSucceeded ? 0 : 1;
  });
});
