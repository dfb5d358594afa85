/**
 * Reading PostgreSQL plans in tests: "served by an index, never a scan" is checked on the plan's nodes.
 */
import type pg from 'pg';
import type { Queryable } from '../../src/store/db.js';

/** Every node of an EXPLAIN (FORMAT JSON) plan. */
export function planNodes(plan: unknown): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(visit);
    else if (v && typeof v === 'object') {
      const node = v as Record<string, unknown>;
      if (typeof node['Node Type'] === 'string') out.push(node);
      Object.values(node).forEach(visit);
    }
  };
  visit(plan);
  return out;
}

/** Runs `fn` with a Queryable that explains (and runs) the first statement it sends and passes the rest through; returns that plan. */
export async function explainFirst(client: pg.PoolClient, fn: (q: Queryable) => Promise<unknown>): Promise<unknown> {
  let plan: unknown;
  const explaining = {
    query: async (text: string, params: unknown[]) => {
      if (plan !== undefined) return client.query(text, params);
      const res = await client.query<{ 'QUERY PLAN': unknown }>(`EXPLAIN (ANALYZE, FORMAT JSON) ${text}`, params);
      plan = res.rows[0]!['QUERY PLAN'];
      return { rows: [] };
    },
  } as unknown as Queryable;
  await fn(explaining);
  return plan;
}
