/**
 * npm run migrate: applies the numbered SQL migrations that this database has not seen yet.
 */
import { migrate } from '../src/store/migrate.js';
import { createProgram, runCli, withContext } from './cli.js';

await runCli(async () => {
  createProgram('migrate', 'Apply pending SQL migrations (src/store/migrations/NNN_*.sql) to DATABASE_URL, in order, once each.')
    .addHelpText('after', '\nSafe to run while the service runs: an advisory lock serialises concurrent migrators.')
    .parse();
  const applied = await withContext((ctx) => migrate(ctx.db, ctx.logger), { migrate: false });
  console.log(applied.length ? `applied ${applied.length} migration(s):\n${applied.map((m) => `  ${m}`).join('\n')}` : 'database is up to date; nothing applied');
  return 0;
});
