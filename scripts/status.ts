/**
 * npm run status -- <messageId>: what happened to every domain of one callback batch.
 */
import { countByStatus, getBatch, listDomains } from '../src/store/ledger.js';
import { createProgram, formatCounts, formatDate, formatTable, runCli, UsageError, withContext } from './cli.js';

await runCli(async () => {
  const program = createProgram('status', 'Show the per-domain outcome of one callback batch (messageId) and its counts by status.')
    .argument('<messageId>', 'the batch\'s messageId, e.g. pm0e83d5aac99c4c7aac37a2d4f341ea26')
    .option('--json', 'print one JSON object {batch, counts, domains} instead of tables')
    .addHelpText('after', '\nExit codes: 0 shown, 1 a dependency is down, 2 usage error or unknown messageId.')
    .parse();
  const [messageId] = program.processedArgs as [string];
  const { json } = program.opts<{ json?: boolean }>();

  return withContext(async ({ db }) => {
    const batch = await getBatch(db, messageId);
    if (!batch) throw new UsageError(`no batch with messageId ${messageId} (the callback never arrived, or the id is mistyped)`);
    const [domains, counts] = await Promise.all([listDomains(db, messageId), countByStatus(db, [messageId])]);
    const c = counts.get(messageId)!;
    if (json) {
      console.log(JSON.stringify({ batch, counts: c, domains }, null, 2));
      return 0;
    }
    const published = batch.publishPending ? 'job waiting to be published' : batch.publishedAt ? `job published ${formatDate(batch.publishedAt)}` : 'no job published';
    console.log(`batch ${messageId}: received ${formatDate(batch.createdAt)}, ${batch.callbacks} callback(s), ${published}, last run ${formatDate(batch.lastRunAt) || 'never'}`);
    console.log(formatTable(
      ['domain', 'status', 'attempts', 'user_id_cdn', 'detail', 'updated'],
      domains.map((d) => [d.domain, d.status, d.attempts, d.userIdCdn, d.detail, d.updatedAt]),
    ));
    console.log(formatCounts(c));
    return 0;
  });
});
