/**
 * npm run domains:import -- <csv>: loads the domain inventory (domain → user_id_cdn) that deletions need.
 * The whole file is checked first and imported in one transaction, so a re-run after fixing the file
 * never leaves a half import behind.
 */
import { createReadStream } from 'node:fs';
import { access, constants } from 'node:fs/promises';
import { parse, CsvError } from 'csv-parse';
import { normalizeHostname } from '../src/pipeline/callback-input.js';
import { withTransaction } from '../src/store/db.js';
import { upsertDomains } from '../src/store/inventory.js';
import { createProgram, escapeControl, runCli, UsageError, withContext } from './cli.js';

const HEADER = ['domain', 'user_id_cdn'];
const CHUNK = 1000;

interface Rejected { line: number; reason: string }

// PostgreSQL text cannot hold NUL (the whole import used to fail on one), and other control characters
// in a user_id_cdn are a corrupt export, not an id the security platform knows.
const CONTROL = /\p{Cc}/u;

/** A good row, or the reason it is rejected. */
function checkRow(record: string[], seen: Map<string, number>): { domain: string; userIdCdn: string } | string {
  const [rawDomain = '', userIdCdn = ''] = record;
  if (record.length !== HEADER.length) return `expected ${HEADER.length} columns, got ${record.length}`;
  const bad = record.findIndex((field) => CONTROL.test(field));
  if (bad >= 0) return `${HEADER[bad]} contains a control character (${escapeControl(CONTROL.exec(record[bad]!)![0])})`;
  const domain = normalizeHostname(rawDomain);
  if (!domain) return `"${rawDomain}" is not a valid hostname`;
  if (userIdCdn === '') return 'user_id_cdn is empty';
  if (seen.has(domain)) return `duplicate of line ${seen.get(domain)} (${domain})`;
  return { domain, userIdCdn };
}

/** Validates every row; a domain seen earlier in the file wins, the later line is rejected. */
async function readRows(file: string): Promise<{ good: { domain: string; userIdCdn: string }[]; rejected: Rejected[] }> {
  const input = createReadStream(file);
  const parser = input.pipe(parse({ info: true, relax_column_count: true, skip_empty_lines: true, trim: true, bom: true }));
  input.once('error', (err) => parser.destroy(err)); // pipe() does not forward read errors (EISDIR, EIO)
  const seen = new Map<string, number>();
  const good: { domain: string; userIdCdn: string }[] = [];
  const rejected: Rejected[] = [];
  let header = true;
  try {
    for await (const { record, info } of parser as AsyncIterable<{ record: string[]; info: { lines: number } }>) {
      const line = info.lines;
      if (header) {
        header = false;
        if (record.join(',').toLowerCase() !== HEADER.join(',')) {
          throw new UsageError(`${file}: the header must be "${HEADER.join(',')}", got "${record.join(',')}"`);
        }
        continue;
      }
      const row = checkRow(record, seen);
      if (typeof row === 'string') rejected.push({ line, reason: row });
      else {
        seen.set(row.domain, line);
        good.push(row);
      }
    }
  } catch (err) {
    if (err instanceof CsvError) throw new UsageError(`${file} is not valid CSV: ${err.message}`);
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && code.startsWith('E')) throw new UsageError(`cannot read ${file}: ${code}`);
    throw err;
  }
  if (header) throw new UsageError(`${file} is empty; expected the header "${HEADER.join(',')}"`);
  return { good, rejected };
}

await runCli(async () => {
  const program = createProgram('domains:import', 'Import the domain inventory (which user_id_cdn the security platform knows each domain by) from a CSV file.')
    .argument('<csv>', 'CSV file with the header "domain,user_id_cdn", one domain per line')
    .addHelpText('after', `
Rows are checked first: the domain must be a valid hostname (stored lower-case, without a trailing dot),
user_id_cdn must not be empty, no field may hold a NUL or another control character, and a domain repeated
in the file keeps its first line. Good rows are inserted or updated (an imported domain is active again);
bad rows are listed on stderr by line number.

Exit codes: 0 some rows imported, 1 no good rows, 2 usage error (missing or unreadable file, wrong header).`)
    .parse();
  const [file] = program.processedArgs as [string];
  await access(file, constants.R_OK).catch((err: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.code ?? err.message}`);
  });

  const { good, rejected } = await readRows(file);
  // Reasons quote the file (a bad hostname): escape control characters before they reach the terminal.
  for (const r of rejected) console.error(escapeControl(`line ${r.line}: ${r.reason}`));
  if (good.length > 0) {
    await withContext((ctx) => withTransaction(ctx.db, async (client) => {
      for (let i = 0; i < good.length; i += CHUNK) await upsertDomains(client, good.slice(i, i + CHUNK));
    }));
  }
  if (good.length === 0 && rejected.length === 0) console.error(`${file} has a header but no rows`);
  console.log(`imported ${good.length}, rejected ${rejected.length}`);
  return good.length > 0 ? 0 : 1;
});
