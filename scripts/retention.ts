/**
 * npm run retention -- --older-than <age> [--dry-run]: removes what operators no longer need for batches
 * finished longer ago than <age> (src/ops/retention.ts): raw callback bodies first, then ledger rows, in
 * bounded chunks. Batches with open domains, open or acknowledged alarms, or in a running bulk replay stay.
 */
import { InvalidArgumentError } from 'commander';
import { ValidationError } from '../src/lib/errors.js';
import { parseAge, runRetention, type RetentionResult } from '../src/ops/retention.js';
import { createProgram, formatDate, formatTable, integer, runCli, withContext } from './cli.js';

const age = (value: string): { text: string; ms: number } => {
  try {
    return { text: value, ms: parseAge(value) };
  } catch (err) {
    if (err instanceof ValidationError) throw new InvalidArgumentError(`${err.message}.`);
    throw err;
  }
};

function print(r: RetentionResult, olderThan: string): void {
  const verb = r.dryRun ? 'would remove' : 'removed';
  console.log(`batches finished before ${formatDate(r.cutoff)} (older than ${olderThan})${r.dryRun ? ' — dry run, nothing changed' : ''}`);
  console.log(formatTable(['what', 'count'], [
    [`${verb}: batches`, r.batches],
    [`${verb}: domain rows`, r.domains],
    [`${verb}: attempt rows`, r.attempts],
    [`${verb}: delivered alarm notifications`, r.alarmNotifications],
    [`${verb}: callback bodies (the rows stay, with time and item count)`, r.callbackBodies],
    ['kept: a domain still open', r.keptOpen],
    ['kept: an open or acknowledged alarm', r.keptAlarmed],
    ['kept: in a running bulk replay', r.keptReplaying],
    ['kept: active after the cutoff', r.keptRecent],
    ['left for the next run: busy or changed', r.skippedBusy],
  ]));
}

await runCli(async () => {
  const program = createProgram('retention', 'Remove callback bodies, then ledger rows (domains, attempts, delivered alarm notifications, the batch), of batches finished longer ago than --older-than. Alarm rows are kept.')
    .requiredOption('--older-than <age>', 'age of the last activity of a finished batch: 30d, 12h, 90m (at least 1h)', age)
    .option('--dry-run', 'count what would be removed; change nothing', false)
    .option('--chunk-size <n>', 'batches examined per chunk; each chunk commits on its own, so no lock is held long', integer(1, 100_000), 1000)
    .option('--json', 'print the counts as JSON instead of a table')
    .addHelpText('after', '\nExit codes: 0 done (also when nothing was old enough), 1 failed or a dependency is down (run it again: it resumes), 2 usage error.')
    .parse();
  const opts = program.opts<{ olderThan: { text: string; ms: number }; dryRun: boolean; chunkSize: number; json?: boolean }>();

  return withContext(async ({ db }) => {
    const result = await runRetention(db, {
      olderThanMs: opts.olderThan.ms, dryRun: opts.dryRun, chunkSize: opts.chunkSize,
      onChunk: (t) => process.stderr.write(`retention: ${opts.dryRun ? 'would remove' : 'removed'} ${t.batches} batch(es) so far\n`),
    });
    if (opts.json) console.log(JSON.stringify(result, null, 2));
    else print(result, opts.olderThan.text);
    return 0;
  });
});
