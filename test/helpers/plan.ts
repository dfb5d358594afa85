/**
 * Reading PostgreSQL plans in tests: "served by an index, never a scan" is checked on the plan's nodes.
 */

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
