/**
 * Replay: re-open the failed and stuck domains of some batches and publish their jobs again. Succeeded
 * domains are never re-opened, so a replay cannot delete anything twice. The preview (dryRun) and the real
 * run share one plan, so the preview states exactly what the real run does (unless a worker moves a domain
 * in between); the real run plans under row locks and writes its audit row in the same transaction.
 */
import type pg from 'pg';
import { ValidationError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Metrics } from '../lib/metrics.js';
import { insertAudit, UNATTRIBUTED, type Actor } from '../store/audit.js';
import type { Db, Queryable } from '../store/db.js';
import { withTransaction } from '../store/db.js';
import { existingBatches, listDomains, requestPublish, type DomainRow, type DomainStatus } from '../store/ledger.js';
import { normalizeHostname } from './callback-input.js';
import { publishBatchJob, type JobPublisher } from './publish.js';

export class UnknownBatchError extends ValidationError {
  constructor(readonly messageIds: string[]) { super(`no batch with messageId ${messageIds.join(', ')}`, 404); }
}

/** A replay asked for something it may not do (a domain of another batch, one that can never be re-opened). */
export class InvalidReplayError extends ValidationError {}

/** One domain of the plan: what it is now and why the replay re-opens or leaves it. */
export interface PlannedDomain { messageId: string; domain: string; status: DomainStatus; detail: string | null; why: string }

export interface ReplayPlan { reopen: PlannedDomain[]; skipped: PlannedDomain[] }

/** One re-opened domain, as the audit records it. */
export interface ReplayChange { messageId: string; domain: string; from: DomainStatus; to: 'pending' }

export interface ReplayResult {
  /** The domains re-opened (dryRun: that would be), as they are after the replay (dryRun: now). */
  reopened: DomainRow[];
  published: string[];
  unpublished: string[];
  plan: ReplayPlan;
  /** Real runs: each re-opened domain's status before and after. */
  changes: ReplayChange[];
  /** True when `beforeChange` said no: nothing was changed or published. */
  abandoned: boolean;
}

export interface ReplayOptions {
  /** Also re-open unknown_domain domains (e.g. after an inventory import). */
  all?: boolean;
  dryRun?: boolean;
  /**
   * Only these domains. Each must belong to the batch (else InvalidReplayError naming it); succeeded,
   * unsupported and awaiting_pipeline ones can never be re-opened (InvalidReplayError naming them and why).
   * Naming an unknown_domain domain re-opens it, as `all` would.
   */
  domains?: string[];
  /** A bulk replay's selection: only failed and unknown_domain domains whose detail contains this text (null: any). */
  failedMatching?: { detailMatches: string | null };
  /** Who replays; absent: recorded as unattributed (code of our own, tests). */
  actor?: Actor;
  /** Why (1-500 characters, one line); required with an actor, unless dryRun. */
  reason?: string | null;
  /** Recorded in the audit target when this replay is one batch of a bulk replay. */
  bulkReplayId?: number;
  /** In the replay's transaction, before anything changes; false abandons the replay. */
  beforeChange?: (client: pg.PoolClient) => Promise<boolean>;
  /** In the replay's transaction, after the re-open (e.g. a bulk replay's progress). */
  afterChange?: (client: pg.PoolClient, changes: ReplayChange[]) => Promise<void>;
}

export interface ReplayDeps { db: Db; broker: JobPublisher; logger: Logger; metrics: Metrics }

const MAX_REASON = 500;
// C0/C1 controls (newlines too: a reason is one line), line separators and bidi overrides (as cli.ts escapes).
const CONTROL = /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

/** The reason of a replay: 1 to 500 characters, no control characters; returns it trimmed. */
export function checkReason(reason: unknown): string {
  const rule = `reason must say why, in 1 to ${MAX_REASON} characters without control characters (it is kept in the audit)`;
  if (typeof reason !== 'string') throw new InvalidReplayError(rule);
  const text = reason.trim();
  if (text.length === 0 || text.length > MAX_REASON || CONTROL.test(text)) throw new InvalidReplayError(rule);
  return text;
}

/**
 * Re-opens (or with dryRun, plans) the replay of some batches and publishes their jobs. Throws
 * UnknownBatchError (404) for an unknown messageId, InvalidReplayError (400) for a request it may not do.
 */
export async function replayBatches(deps: ReplayDeps, messageIds: string[], opts: ReplayOptions): Promise<ReplayResult> {
  const ids = [...new Set(messageIds)];
  const known = new Set(await existingBatches(deps.db, ids));
  const unknown = ids.filter((id) => !known.has(id));
  if (unknown.length > 0) throw new UnknownBatchError(unknown);
  const named = opts.domains && namedDomains(opts.domains);
  const like = opts.failedMatching?.detailMatches ? containsPattern(opts.failedMatching.detailMatches) : null;
  if (opts.dryRun) {
    const plan = planReplay(await readCandidates(deps.db, ids, { lock: false, like }), { ...opts, named });
    return { reopened: await rowsOf(deps.db, ids, plan.reopen), published: [], unpublished: [], plan, changes: [], abandoned: false };
  }
  const actor = opts.actor ?? UNATTRIBUTED;
  const reason = opts.actor ? checkReason(opts.reason) : opts.reason ?? null;

  const outcome = await withTransaction(deps.db, async (client) => {
    if (opts.beforeChange && !(await opts.beforeChange(client))) return null;
    // Batch rows first, then their domains: the order a merging callback takes them in (no deadlock).
    await client.query('SELECT 1 FROM batch WHERE message_id = ANY($1) ORDER BY message_id FOR UPDATE', [ids]);
    const plan = planReplay(await readCandidates(client, ids, { lock: true, like }), { ...opts, named });
    const changes = await reopen(client, plan.reopen);
    for (const id of ids) {
      const mine = changes.filter((c) => c.messageId === id);
      if (mine.length === 0) continue;
      await insertAudit(client, {
        action: 'replay', actor, reason,
        target: opts.bulkReplayId === undefined ? { messageId: id } : { messageId: id, bulkReplayId: opts.bulkReplayId },
        changes: mine.map((c) => ({ domain: c.domain, from: c.from, to: c.to })),
      });
    }
    await opts.afterChange?.(client, changes);
    const touched = [...new Set(changes.map((c) => c.messageId))];
    const reopened = await rowsOf(client, touched, changes);
    return { plan, changes, reopened, versions: await requestPublish(client, touched, 'replay') };
  });
  if (!outcome) return { reopened: [], published: [], unpublished: [], plan: { reopen: [], skipped: [] }, changes: [], abandoned: true };

  const { reopened, versions } = outcome;
  const published: string[] = [];
  const unpublished: string[] = [];
  for (const [messageId, updatedAt] of versions) {
    deps.logger.info('batch replayed', { messageId, reopened: reopened.filter((r) => r.messageId === messageId).length, by: actor.name });
    (await publishBatchJob(deps, messageId, updatedAt, 'replay') ? published : unpublished).push(messageId);
  }
  return { reopened, published, unpublished, plan: outcome.plan, changes: outcome.changes, abandoned: false };
}

/**
 * An ILIKE pattern (ESCAPE '\') matching text that contains `text` literally: a caller's % and _ match
 * themselves, never "anything" (a filter is a plain substring, never a pattern or a regex from the caller).
 */
export function containsPattern(text: string): string {
  return `%${text.replace(/[\\%_]/g, '\\$&')}%`;
}

/** The named domains, normalised as callbacks store them; a name that is no hostname is a 400 naming it. */
function namedDomains(raw: string[]): Set<string> {
  const out = new Set<string>();
  for (const r of raw) {
    const d = normalizeHostname(r);
    if (!d) throw new InvalidReplayError(`${JSON.stringify(String(r).slice(0, 80))} is not a valid domain name`);
    out.add(d);
  }
  if (out.size === 0) throw new InvalidReplayError('domains must name at least one domain (or leave it out to replay the whole batch)');
  return out;
}

interface Candidate {
  messageId: string;
  domain: string;
  status: DomainStatus;
  reqType: string;
  detail: string | null;
  claimedUntil: Date | null;
  /** In progress past its lease, by PostgreSQL's clock (the one leases are written with). */
  leaseOver: boolean;
  /** Its detail matches the bulk replay's `like` pattern (true when there is none). */
  detailMatches: boolean;
}

/**
 * Every domain of the batches; `lock` (inside the replay's transaction) holds them until it commits. The
 * detail is matched here, with the very ILIKE the bulk replay's count used, so both agree on every text.
 */
async function readCandidates(db: Queryable, ids: string[], opts: { lock: boolean; like: string | null }): Promise<Candidate[]> {
  const { rows } = await db.query<Candidate>(
    `SELECT message_id AS "messageId", domain, status, req_type AS "reqType", detail, claimed_until AS "claimedUntil",
            (status = 'in_progress' AND claimed_until < now()) AS "leaseOver",
            ($2::text IS NULL OR detail ILIKE $2 ESCAPE '\\') AS "detailMatches"
     FROM batch_domain WHERE message_id = ANY($1) ORDER BY message_id, domain${opts.lock ? ' FOR UPDATE' : ''}`,
    [ids, opts.like],
  );
  return rows;
}

/** Why a domain can never be re-opened, or undefined when a replay may re-open it. */
function neverReopened(c: Candidate): string | undefined {
  if (c.status === 'succeeded') return 'already deleted at the security platform; never re-opened, so nothing is deleted twice';
  if (c.status === 'unsupported') return `reqType ${c.reqType} is not a deletion; never re-opened or sent`;
  if (c.status === 'awaiting_pipeline') return 'the pipeline reports it unfinished; it waits for the pipeline\'s callback saying it is finished';
  return undefined;
}

/** Decides, per domain, whether the replay re-opens it and why. */
function planReplay(candidates: Candidate[], opts: ReplayOptions & { named?: Set<string> }): ReplayPlan {
  const plan: ReplayPlan = { reopen: [], skipped: [] };
  const entry = (c: Candidate, why: string): PlannedDomain => ({ messageId: c.messageId, domain: c.domain, status: c.status, detail: c.detail, why });
  const skip = (c: Candidate, why: string) => plan.skipped.push(entry(c, why));
  const take = (c: Candidate, why: string) => plan.reopen.push(entry(c, why));

  if (opts.named) {
    const byName = new Map(candidates.map((c) => [c.domain, c]));
    const missing = [...opts.named].filter((d) => !byName.has(d));
    if (missing.length > 0) {
      const batch = [...new Set(candidates.map((c) => c.messageId))].join(', ');
      throw new InvalidReplayError(`${missing.slice(0, 20).join(', ')}${missing.length > 20 ? ` and ${missing.length - 20} more` : ''} `
        + `${missing.length === 1 ? 'is' : 'are'} not in batch ${batch}; nothing was changed`);
    }
    const refused = [...opts.named].map((d) => byName.get(d)!).filter((c) => neverReopened(c));
    if (refused.length > 0) {
      throw new InvalidReplayError(`cannot re-open ${refused.slice(0, 20).map((c) => `${c.domain} (${c.status}: ${neverReopened(c)})`).join('; ')}`
        + `${refused.length > 20 ? `; and ${refused.length - 20} more` : ''}; nothing was changed`);
    }
  }
  const filtered = !!opts.failedMatching?.detailMatches;

  for (const c of candidates) {
    if (opts.named && !opts.named.has(c.domain)) continue;
    const never = neverReopened(c);
    if (never) { skip(c, never); continue; }
    if (c.status === 'in_progress' && !c.leaseOver) {
      skip(c, `a worker is sending it now (its lease runs until ${c.claimedUntil?.toISOString() ?? 'unknown'})`);
      continue;
    }
    if (opts.failedMatching) {
      const failure = c.status === 'failed' || c.status === 'unknown_domain';
      if (failure && c.detailMatches) take(c, `${c.status}${filtered ? ' with a detail matching the filter' : ''}; matched by the bulk replay`);
      else skip(c, 'not a failure matched by the bulk replay\'s filter');
      continue;
    }
    switch (c.status) {
      case 'failed': take(c, 'failed; it is sent again'); break;
      case 'retryable': take(c, 'waiting for a retry; it is sent now'); break;
      case 'pending': take(c, 'pending and not sent yet; its job is published again'); break;
      case 'in_progress': take(c, 'in progress past its lease (its worker stopped); it is sent again'); break;
      case 'unknown_domain':
        if (opts.named) take(c, 'not in the domain inventory when tried; named in the request, so it is looked up again');
        else if (opts.all) take(c, 'not in the domain inventory when tried; all: true, so it is looked up again');
        else skip(c, 'not in the domain inventory; import it, then replay with all: true (or name it)');
        break;
      default: skip(c, `status ${String(c.status)} is not replayed`);
    }
  }
  return plan;
}

/** Re-opens the planned domains (their rows are locked by readCandidates); returns what changed. */
async function reopen(client: pg.PoolClient, planned: PlannedDomain[]): Promise<ReplayChange[]> {
  if (planned.length === 0) return [];
  const { rows } = await client.query<{ messageId: string; domain: string }>(
    `UPDATE batch_domain b SET status = 'pending', claimed_by = NULL, claimed_until = NULL, finished_at = NULL, updated_at = now()
     FROM unnest($1::text[], $2::text[]) AS x(m, d)
     WHERE b.message_id = x.m AND b.domain = x.d AND b.status NOT IN ('succeeded', 'unsupported', 'awaiting_pipeline')
     RETURNING b.message_id AS "messageId", b.domain`,
    [planned.map((p) => p.messageId), planned.map((p) => p.domain)],
  );
  const before = new Map(planned.map((p) => [`${p.messageId}\n${p.domain}`, p.status]));
  return rows
    .map((r) => ({ messageId: r.messageId, domain: r.domain, from: before.get(`${r.messageId}\n${r.domain}`)!, to: 'pending' as const }))
    .sort((a, b) => a.messageId.localeCompare(b.messageId) || a.domain.localeCompare(b.domain));
}

/** The ledger rows of the given domains, ordered by messageId then domain. */
async function rowsOf(db: Queryable, ids: string[], which: { messageId: string; domain: string }[]): Promise<DomainRow[]> {
  const wanted = new Set(which.map((w) => `${w.messageId}\n${w.domain}`));
  const out: DomainRow[] = [];
  for (const id of [...ids].sort()) {
    if (!which.some((w) => w.messageId === id)) continue;
    out.push(...(await listDomains(db, id)).filter((d) => wanted.has(`${d.messageId}\n${d.domain}`)));
  }
  return out;
}
