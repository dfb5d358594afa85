/**
 * Root hooks: one fresh PostgreSQL database per test run (migrated once), exported as DATABASE_URL so
 * in-process code and spawned processes use it; dropped at the end.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

const adminUrl = process.env.TEST_ADMIN_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const dbName = `pcp_test_${randomBytes(4).toString('hex')}`;

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(30_000);
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${dbName}`);
    await admin.end();
    const url = new URL(adminUrl);
    url.pathname = `/${dbName}`;
    process.env.DATABASE_URL = url.toString();
    const { migrate } = await import('../../src/store/migrate.js');
    const { createLogger } = await import('../../src/lib/logger.js');
    const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
    await migrate(pool, createLogger({ level: 'error' }));
    await pool.end();
  },
  async afterAll(this: Mocha.Context) {
    this.timeout(30_000);
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
  },
};
