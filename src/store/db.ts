/**
 * PostgreSQL pool and scoped transactions.
 */
import pg from 'pg';
import type { Config } from '../config.js';
import { DependencyUnavailableError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';

export type Db = pg.Pool;
export type Queryable = pg.Pool | pg.PoolClient;

export function createDb(config: Pick<Config, 'databaseUrl' | 'databasePoolSize' | 'databaseStatementTimeoutMs'>, logger: Logger): Db {
  const pool = new pg.Pool({
    connectionString: config.databaseUrl,
    max: config.databasePoolSize,
    connectionTimeoutMillis: config.databaseStatementTimeoutMs,
    statement_timeout: config.databaseStatementTimeoutMs,
    query_timeout: config.databaseStatementTimeoutMs + 1000,
  });
  // An idle client losing its server must not crash the process; the next query reports it.
  pool.on('error', (err) => logger.warn('postgres idle client error', { err }));
  return pool;
}

/** Runs cb in one transaction; rolls back on any error. */
export async function withTransaction<T>(db: Db, cb: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await connect(db);
  // pg-pool listens for a client's errors only while it is idle: a connection reset between two statements
  // of this transaction would otherwise be an unhandled 'error' event and kill the process. The failed
  // query reports it; the broken client is destroyed on release instead of going back to the pool.
  let broken: Error | undefined;
  const onError = (err: Error) => { broken = err; };
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    const result = await cb(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    if (!broken) await client.query('ROLLBACK').catch(() => undefined);
    if (isConnectionError(err)) throw new DependencyUnavailableError('postgres', `PostgreSQL unavailable: ${(err as Error).message}`, err);
    // A deadlock or serialization failure is transient: the caller (e.g. the vendor, via a 503) retries.
    const code = (err as { code?: string }).code;
    if (code === '40P01' || code === '40001') throw new DependencyUnavailableError('postgres', `transaction conflict (${code}); retry`, err);
    throw err;
  } finally {
    client.off('error', onError);
    client.release(broken);
  }
}

async function connect(db: Db): Promise<pg.PoolClient> {
  try {
    return await db.connect();
  } catch (err) {
    throw new DependencyUnavailableError('postgres', `PostgreSQL unavailable: ${(err as Error).message}`, err);
  }
}

/** Connection-level failures (refused, reset, timeout, server shutting down), as opposed to SQL errors. */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof DependencyUnavailableError) return true;
  const e = err as { code?: string; message?: string } | undefined;
  if (!e) return false;
  if (e.code && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|ENOTFOUND|57P0[1-3]|08\d{3})$/.test(e.code)) return true;
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(e.message ?? '');
}

/**
 * A PostgreSQL failure that says nothing about the data: the server or connection is away, a statement
 * timed out (57014), or a transaction lost a deadlock or serialization conflict. Worth retrying; for a job,
 * an outage that must not use up its retries.
 */
export function isTransientDbError(err: unknown): boolean {
  if (isConnectionError(err)) return true;
  const code = (err as { code?: string } | undefined)?.code;
  return code === '57014' || code === '40P01' || code === '40001';
}

/** Runs `write` again on a transient PostgreSQL error, a few times with a short backoff, then gives up. */
export async function retryTransient<T>(write: () => Promise<T>, delaysMs: readonly number[] = [100, 500, 2000]): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await write();
    } catch (err) {
      if (i >= delaysMs.length || !isTransientDbError(err)) throw err;
      await new Promise((resolve) => setTimeout(resolve, delaysMs[i]));
    }
  }
}
