/**
 * The search box: a messageId, a domain, or a pasted list of either (whitespace, comma or semicolon
 * separated). Parsing is pure so it is tested without a browser; the router decides where to go.
 */
import { MESSAGE_ID, normalizeHostname } from '../pipeline/callback-input.js';

export type FindTerm =
  | { kind: 'messageId'; value: string }
  | { kind: 'domain'; value: string }
  | { kind: 'invalid'; value: string };

/** At most this many terms per search (a pasted list longer than that is cut, and the page says so). */
export const MAX_FIND_TERMS = 200;

/**
 * Splits and classifies: a term with a dot is a domain (normalised: lower case, no trailing dot), one
 * without a dot is a messageId (`pm` + 32 hex in production; any id the API accepts here). Duplicates
 * count once, order is kept.
 */
export function parseFind(query: string): { terms: FindTerm[]; truncated: boolean } {
  const raw = query.split(/[\s,;]+/).map((t) => t.trim().replace(/^["'<(]+|[">)']+$/g, '')).filter(Boolean);
  const seen = new Set<string>();
  const terms: FindTerm[] = [];
  for (const t of raw) {
    const term = classify(t);
    const key = `${term.kind}:${term.value}`;
    if (seen.has(key)) continue;
    seen.add(key);
    terms.push(term);
  }
  return { terms: terms.slice(0, MAX_FIND_TERMS), truncated: terms.length > MAX_FIND_TERMS };
}

function classify(t: string): FindTerm {
  if (t.includes('.')) {
    const domain = normalizeHostname(t);
    return domain ? { kind: 'domain', value: domain } : { kind: 'invalid', value: t.slice(0, 200) };
  }
  return MESSAGE_ID.test(t) ? { kind: 'messageId', value: t } : { kind: 'invalid', value: t.slice(0, 200) };
}
