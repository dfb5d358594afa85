/**
 * Numbered SQL migrations (src/store/migrations/NNN_name.sql), applied once each, in order, under an
 * advisory lock so several processes starting together do not race.
 */
import { readdirSync, readFileSync } from 'node:fs';
import type { Db } from './db.js';
import { withTransaction } from './db.js';
import type { Logger } from '../lib/logger.js';

const dir = new URL('./migrations/', import.meta.url);
const LOCK_ID = 728_341_001;

export async function migrate(db: Db, logger: Logger): Promise<string[]> {
  const files = readdirSync(dir).filter((f) => /^\d{3}_.+\.sql$/.test(f)).sort();
  return withTransaction(db, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1)', [LOCK_ID]);
    await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
    const { rows } = await client.query<{ version: string }>('SELECT version FROM schema_migrations');
    const done = new Set(rows.map((r) => r.version));
    const applied: string[] = [];
    for (const file of files) {
      if (done.has(file)) continue;
      await client.query(readFileSync(new URL(file, dir), 'utf8'));
      await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [file]);
      applied.push(file);
      logger.info('migration applied', { migration: file });
    }
    return applied;
  });
}
