/**
 * npm run domain -- <domain>: start from a domain name ("www.example.com is still there"): its inventory
 * row and every batch that carried it, with the outcome, attempts and detail in each.
 */
import { domainReport } from '../src/ops/reports.js';
import { createProgram, escapeControl, formatDate, formatTable, runCli, withContext } from './cli.js';

await runCli(async () => {
  const program = createProgram('domain', 'Show a domain\'s inventory row and every callback batch that carried it, with its outcome in each.')
    .argument('<domain>', 'the domain name, e.g. www.example.com (case and a trailing dot do not matter)')
    .option('--json', 'print one JSON object {domain, inventory, batches} instead of tables')
    .addHelpText('after', `
Replay a batch's failed domains with \`npm run replay -- <messageId> --reason "..."\`.
Exit codes: 0 shown, 1 a dependency is down, 2 usage error (not a domain name, or nothing knows it).`)
    .parse();
  const [domain] = program.processedArgs as [string];
  const { json } = program.opts<{ json?: boolean }>();

  return withContext(async ({ db }) => {
    const report = await domainReport(db, domain);
    if (json) {
      console.log(JSON.stringify(report, null, 2));
      return 0;
    }
    const inv = report.inventory;
    // The inventory's user_id_cdn is imported text: shown escaped, never acted on by the terminal.
    console.log(escapeControl(inv
      ? `domain ${report.domain}: user_id_cdn ${inv.userIdCdn}, ${inv.status}${inv.status === 'deleted' ? ` at ${formatDate(inv.deletedAt)} by ${inv.deletedByMessageId ?? 'an unknown batch'}` : ''} (imported ${formatDate(inv.importedAt)})`
      : `domain ${report.domain}: not in the domain inventory (cdn_domain); it cannot be deleted until it is imported`));
    console.log(report.batches.length === 0 ? 'no batch carried it' : formatTable(
      ['messageId', 'received', 'status', 'attempts', 'reqType', 'detail', 'updated', 'finished'],
      report.batches.map((b) => [b.messageId, b.createdAt, b.status, b.attempts, b.reqType, b.detail, b.updatedAt, b.finishedAt]),
    ));
    return 0;
  });
});
