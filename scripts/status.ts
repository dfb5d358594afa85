/**
 * npm run status -- <messageId>: what happened to every domain of one callback batch, and every
 * security-platform call made for it (the attempt history).
 */
import { batchReport } from '../src/ops/reports.js';
import { createProgram, formatCounts, formatDate, formatTable, runCli, withContext } from './cli.js';

await runCli(async () => {
  const program = createProgram('status', 'Show the per-domain outcome of one callback batch (messageId), its counts by status and its attempt history.')
    .argument('<messageId>', 'the batch\'s messageId, e.g. pm0e83d5aac99c4c7aac37a2d4f341ea26')
    .option('--json', 'print the batch report (what GET /api/batches/:messageId returns: batch, counts, domains, attempts, …) as JSON instead of tables')
    .addHelpText('after', '\nExit codes: 0 shown, 1 a dependency is down, 2 usage error or unknown messageId.')
    .parse();
  const [messageId] = program.processedArgs as [string];
  const { json } = program.opts<{ json?: boolean }>();

  return withContext(async ({ db }) => {
    // The same report as GET /api/batches/:messageId; an unknown messageId is a NotFoundError (exit 2).
    const report = await batchReport(db, messageId);
    if (json) {
      console.log(JSON.stringify(report, null, 2));
      return 0;
    }
    const { batch, counts, domains, attempts } = report;
    const published = batch.publishPending ? 'job waiting to be published' : batch.publishedAt ? `job published ${formatDate(batch.publishedAt)}` : 'no job published';
    console.log(`batch ${messageId}: received ${formatDate(batch.createdAt)}, ${batch.callbacks} callback(s), ${published}, last run ${formatDate(batch.lastRunAt) || 'never'}`);
    console.log(formatTable(
      ['domain', 'status', 'attempts', 'user_id_cdn', 'detail', 'updated'],
      domains.map((d) => [d.domain, d.status, d.attempts, d.userIdCdn, d.detail, d.updatedAt]),
    ));
    console.log(formatCounts(counts));
    console.log('');
    if (attempts.length === 0) {
      console.log('attempt history: no security-platform call made for this batch');
      return 0;
    }
    console.log(`attempt history: ${attempts.length} attempt(s), one per domain per security-platform call`);
    console.log(formatTable(
      ['domain', 'when', 'process', 'trigger', 'token generation', 'http', 'outcome', 'reason', 'ms'],
      attempts.map((a) => [a.domain, a.attemptedAt, a.instanceId, a.trigger, a.tokenGeneration, a.httpStatus, a.outcome, a.reason, a.durationMs]),
    ));
    return 0;
  });
});
