/**
 * The domain inventory (cdn_domain): which user_id_cdn the security platform knows each domain by.
 */
import type { Queryable } from './db.js';

export interface InventoryRow { domain: string; userIdCdn: string; status: 'active' | 'deleted'; deletedByMessageId: string | null }

export async function lookupDomains(db: Queryable, domains: string[]): Promise<Map<string, InventoryRow>> {
  const { rows } = await db.query<InventoryRow>(
    `SELECT domain, user_id_cdn AS "userIdCdn", status, deleted_by_message_id AS "deletedByMessageId"
     FROM cdn_domain WHERE domain = ANY($1)`,
    [domains],
  );
  return new Map(rows.map((r) => [r.domain, r]));
}

/** Inserts or updates inventory rows; an imported row is active again (the domain exists again). */
export async function upsertDomains(db: Queryable, rows: { domain: string; userIdCdn: string }[]): Promise<number> {
  if (rows.length === 0) return 0;
  const { rowCount } = await db.query(
    `INSERT INTO cdn_domain (domain, user_id_cdn)
     SELECT * FROM unnest($1::text[], $2::text[])
     ON CONFLICT (domain) DO UPDATE SET user_id_cdn = EXCLUDED.user_id_cdn, status = 'active',
       deleted_at = NULL, deleted_by_message_id = NULL, imported_at = now()`,
    [rows.map((r) => r.domain), rows.map((r) => r.userIdCdn)],
  );
  return rowCount ?? 0;
}

export interface InventoryDetail { domain: string; userIdCdn: string; status: 'active' | 'deleted'; deletedAt: Date | null; deletedByMessageId: string | null; importedAt: Date }

/** The inventory row of one domain, with when and by which batch it was deleted. */
export async function getInventory(db: Queryable, domain: string): Promise<InventoryDetail | undefined> {
  const { rows } = await db.query<InventoryDetail>(
    `SELECT domain, user_id_cdn AS "userIdCdn", status, deleted_at AS "deletedAt", deleted_by_message_id AS "deletedByMessageId",
            imported_at AS "importedAt"
     FROM cdn_domain WHERE domain = $1`,
    [domain],
  );
  return rows[0];
}
