/**
 * The per-process call packer. Every job (one batch) this process holds is a *pass*; the packer fills each
 * delete_user_info call with up to SECPLAT_BATCH_SIZE entries drawn from all of them, so a 1-domain callback
 * no longer takes a whole call and a 50-domain one is not cut 20 + 20 + 10.
 *
 * One call goes through three phases, and only the middle one holds a call slot (SECPLAT_CONCURRENCY slots
 * per process, `secplatLimit`):
 *   1. prepare (while the calls before it are in flight): claim open domains across the passes in arrival
 *      order (claimAcross: row locks, SKIP LOCKED, a lease per domain), look them up in the inventory and
 *      settle those that are not to be sent (not a deletion, unknown, already deleted). The chunk waits as the
 *      "ready" chunk for the next free slot; jobs arriving meanwhile top it up.
 *   2. send (slot held): renew the leases (only what is still held is sent) and make the HTTP call.
 *   3. settle (slot released): the answer is settled in one transaction for every pass in the call (settleCall),
 *      each pass's share against its own batch and fenced by its own claim token, its attempts with its job's
 *      trigger. No new call is handed to a sender while 2 × SECPLAT_CONCURRENCY calls are taken and not yet
 *      settled, so a slow PostgreSQL slows the calls down instead of piling up answers. A worker thus holds at
 *      most (2 × SECPLAT_CONCURRENCY + 1) × SECPLAT_BATCH_SIZE domains in progress, and a SIGKILL repeats at
 *      most the calls sent and not settled.
 * A pass ends once nothing more can be claimed for it and every chunk carrying its domains is settled; its
 * job is then acked, retried or requeued on its own (src/pipeline/process-batch.ts).
 *
 * The packer also says whether it wants another job (JobDemand, src/messaging/broker.ts): while the entries
 * held but not yet claimed cannot fill a call for every free slot, one ready chunk and one in reserve.
 */
import { randomUUID } from 'node:crypto';
import DataLoader from 'dataloader';
import type { LimitFunction } from 'p-limit';
import {
  BadCredentialsError, SecplatRejectedError, SecplatRetryableError, TokenRejectedError, TokenUnavailableError, UnrecoverableJobError, toAppError,
} from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { JobDemand, JobTrigger } from '../messaging/broker.js';
import type { DeleteResult } from '../secplat/client.js';
import { retryTransient } from '../store/db.js';
import { lookupDomains } from '../store/inventory.js';
import {
  claimAcross, countClaimable, releaseClaims, renewClaims, settleCall, settleDomains, settleSucceeded,
  type AnsweredDomain, type DomainRow, type DomainStatus, type SentCall,
} from '../store/ledger.js';
import { SUPPORTED_REQ_TYPES } from './callback-input.js';
import type { ProcessDeps } from './process-batch.js';

/** What one pass did, for its job's disposition and alarms. */
export interface PassResult {
  /** Domains this pass claimed. */
  claimed: number;
  /** Shutdown began while it ran: what is left goes back to the queue. */
  interrupted: boolean;
  /** Some call got no token at all (infrastructure, not the domains). */
  blocked: boolean;
  /** Some call kept getting 401s even with fresh tokens. */
  tokenRejected: boolean;
}

/** A domain in a chunk: which pass holds it and what the platform knows it by. */
interface Entry { pass: Pass; domain: string; userIdCdn: string }

/** One call as sent: what its attempt rows record, and which entries it carried. */
type CallRecord = Omit<SentCall, 'instanceId'> & { entries: Entry[] };

/** A chunk never reached the platform (shutdown came first): its domains go back to pending. */
class NotSent extends Error {}

const NOTHING_SENT: DeleteResult = { succeeded: [], failed: [] };

export class CallPacker implements JobDemand {
  /** Passes in arrival order: claims serve the oldest job first, so jobs finish (and are acked) in order. */
  private readonly passes: Pass[] = [];
  private nextSeq = 0;
  /** The chunk being prepared: topped up until a sender gets a slot for it (then it is sealed). */
  private ready: Entry[] = [];
  /** A sender is waiting for a slot with `ready` (at most one: one chunk is prepared ahead). */
  private senderWaiting = false;
  /** Chunks taken by a sender (sealed) and not yet settled: at most 2 × SECPLAT_CONCURRENCY, see loop(). */
  private unsettled = 0;
  private looping = false;
  private poked = false;
  private wake: (() => void) | undefined;
  private readonly listeners: (() => void)[] = [];
  /** Jobs delivered together are counted by one query (one round trip for a burst of 1-domain jobs). */
  private readonly claimable = new DataLoader<string, number | undefined>(async (ids) => {
    const open = await countClaimable(this.deps.db, ids);
    return ids.map((id) => open.get(id));
  }, { cache: false, maxBatchSize: 500 });

  constructor(private readonly deps: ProcessDeps) {
    deps.signal.addEventListener('abort', () => {
      for (const p of [...this.passes]) this.maybeFinish(p);
      this.poke();
    }, { once: true });
  }

  /**
   * Runs one pass over a batch's open domains, packed with every other job this process holds. Safe to run
   * again at any time, and by two workers at once: finished domains are skipped and every domain is claimed
   * with a lease before it is sent. Resolves once every call carrying its domains is settled.
   */
  async run(messageId: string, log: Logger, trigger: JobTrigger): Promise<PassResult> {
    // Registered before the first await, so the broker already counts it when deciding whether to fetch more.
    // Claims are fenced per pass, so two passes in one process cannot settle each other's domains.
    const pass = new Pass(this.deps, this.nextSeq++, messageId, `${this.deps.config.instanceId}#${randomUUID().slice(0, 8)}`, trigger, log);
    this.passes.push(pass);
    try {
      const open = await this.claimable.load(messageId);
      if (open === undefined) throw new UnrecoverableJobError(`no batch ${messageId} in the ledger`);
      pass.claimable = open;
      pass.exhausted = open === 0;
    } catch (err) {
      pass.fail(err);
    }
    pass.started = true;
    this.maybeFinish(pass);
    this.poke();
    await pass.done;
    if (pass.error !== undefined) throw pass.error;
    return { claimed: pass.claimed, interrupted: this.deps.signal.aborted, blocked: pass.blocked, tokenRejected: pass.tokenRejected };
  }

  /**
   * Whether another job is wanted now: while the entries held and not yet claimed cannot fill a call for
   * every free slot plus the ready chunk and one in reserve. Not while a job's size is still being read
   * (one round trip): a consumer opened on a guess takes a job whatever its size, as idle consumers are
   * never cancelled. `surplus` once it holds more than twice that, so the broker lets a finished job's
   * consumer go instead of handing it another.
   */
  wanted(): { another: boolean; surplus: boolean } {
    if (this.deps.signal.aborted) return { another: false, surplus: true };
    const { secplatBatchSize } = this.deps.config;
    const freeSlots = Math.max(0, this.deps.secplatLimit.concurrency - this.deps.secplatLimit.activeCount);
    const want = secplatBatchSize * (freeSlots + 2);
    let have = this.ready.length;
    let sizing = false;
    for (const p of this.passes) {
      if (p.exhausted || p.stopped) continue;
      if (p.claimable === undefined) sizing = true;
      else have += p.claimable;
    }
    return { another: !sizing && have < want, surplus: have > 2 * want };
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  /** Something changed: wake the dispatcher (starting it if need be) and tell the broker. */
  private poke(): void {
    this.poked = true;
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
    if (!this.looping && this.passes.length > 0) void this.loop();
    for (const l of this.listeners) l();
  }

  private nextChange(): Promise<void> {
    if (this.poked) {
      this.poked = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.wake = () => {
        this.poked = false;
        resolve();
      };
    });
  }

  /** The dispatcher: prepares the ready chunk and hands it to a sender; one per packer, while passes exist. */
  private async loop(): Promise<void> {
    this.looping = true;
    try {
      while (this.passes.length > 0) {
        const stopping = this.deps.signal.aborted;
        // A pass that failed sends nothing more: its entries still waiting in the ready chunk go back.
        const dropped = this.ready.filter((e) => e.pass.stopped);
        if (dropped.length > 0) {
          this.ready = this.ready.filter((e) => !e.pass.stopped);
          this.handBack(dropped);
        }
        // At shutdown the ready chunk goes back, unless a sender waiting for a slot owns it (it hands it back).
        if (stopping && !this.senderWaiting && this.ready.length > 0) this.handBack(this.takeReady());
        const room = this.deps.config.secplatBatchSize - this.ready.length;
        const claimable = stopping ? [] : this.passes.filter((p) => p.started && !p.exhausted && !p.stopped);
        if (room > 0 && claimable.length > 0) {
          await this.fill(claimable, room);
          continue;
        }
        // At most SECPLAT_CONCURRENCY calls in flight (the slots) and as many answered ones waiting to be
        // settled: a slow PostgreSQL slows the calls down instead of piling up answers nobody recorded yet.
        if (!stopping && this.ready.length > 0 && !this.senderWaiting && this.unsettled < 2 * this.deps.config.secplatConcurrency) {
          this.senderWaiting = true;
          void this.send();
          continue;
        }
        await this.nextChange();
      }
    } catch (err) {
      // A bug, not an outcome: fail every pass so that no job waits forever; their claims run out.
      this.deps.logger.error('call packer failed', { err });
      for (const p of [...this.passes]) {
        p.fail(err);
        p.holds = 0;
        this.maybeFinish(p);
      }
    } finally {
      this.looping = false;
    }
    if (this.passes.length > 0) this.poke();
  }

  private takeReady(): Entry[] {
    const chunk = this.ready;
    this.ready = [];
    return chunk;
  }

  /**
   * Claims up to `room` domains across the passes (oldest first) and turns them into entries of the ready
   * chunk. A pass whose domains did not all fit is claimed from again next time; one that gave fewer than
   * asked has nothing more to claim now (exhausted).
   */
  private async fill(candidates: Pass[], room: number): Promise<void> {
    const { callDb, config } = this.deps;
    // One request per batch: two passes of one messageId in the same statement would race for its rows.
    const seen = new Set<string>();
    const passes = candidates.filter((p) => !seen.has(p.messageId) && seen.add(p.messageId));
    for (const p of passes) p.holds++;
    try {
      let rows: (DomainRow & { request: number })[];
      try {
        rows = await claimAcross(callDb, passes.map((p) => ({ messageId: p.messageId, claimToken: p.claimToken, exclude: [...p.tried] })),
          { leaseMs: config.domainLeaseMs, limit: room });
      } catch (err) {
        for (const p of passes) p.fail(err);
        return;
      }
      const last = rows.length < room ? passes.length : rows[rows.length - 1]!.request;
      for (const [i, p] of passes.entries()) if (i < last) p.exhausted = true;
      const byPass = new Map<Pass, DomainRow[]>();
      for (const r of rows) {
        const p = passes[r.request]!;
        p.tried.add(r.domain);
        p.claimed++;
        if (p.claimable !== undefined) p.claimable = Math.max(0, p.claimable - 1);
        byPass.set(p, [...(byPass.get(p) ?? []), r]);
      }
      if (byPass.size > 0) await this.buildEntries(byPass);
    } finally {
      for (const p of passes) {
        p.holds--;
        this.maybeFinish(p);
      }
      this.poke();
    }
  }

  /**
   * Where the call is built: only a requested deletion of a domain the inventory knows as active becomes an
   * entry. Checked here, not only at intake: whatever re-opened a row (a replay, the stalled sweep, a
   * redelivery, a hand-edited row), nothing else ever reaches the platform. The rest is settled at once.
   */
  private async buildEntries(byPass: Map<Pass, DomainRow[]>): Promise<void> {
    const deletions = new Map<Pass, string[]>();
    for (const [p, claimed] of byPass) {
      const notDeletions = new Map<string, string[]>(); // note → domains
      for (const c of claimed) {
        if (SUPPORTED_REQ_TYPES.has(c.reqType)) groupInto(deletions, p, c.domain);
        else groupInto(notDeletions, `unsupported reqType ${c.reqType}: never sent to the security platform`, c.domain);
      }
      await p.guard(async () => {
        for (const [note, group] of notDeletions) await p.outcome.settle(group, 'unsupported', note);
      });
    }
    if (deletions.size === 0) return;
    let inventory;
    try {
      inventory = await lookupDomains(this.deps.callDb, [...new Set([...deletions.values()].flat())]);
    } catch (err) {
      for (const [p, domains] of deletions) {
        p.fail(err);
        const unsent = domains.map((domain) => ({ pass: p, domain, userIdCdn: '' }));
        p.holds += unsent.length;
        this.handBack(unsent);
      }
      return;
    }
    for (const [p, domains] of deletions) {
      const unknown: string[] = [];
      const alreadyDeleted = new Map<string, string[]>(); // note → domains
      const toSend: Entry[] = [];
      for (const domain of domains) {
        const inv = inventory.get(domain);
        if (!inv) unknown.push(domain);
        else if (inv.status === 'deleted') groupInto(alreadyDeleted, `already deleted by ${inv.deletedByMessageId ?? 'an earlier run'}`, domain);
        else toSend.push({ pass: p, domain, userIdCdn: inv.userIdCdn });
      }
      const ok = await p.guard(async () => {
        if (unknown.length > 0) await p.outcome.settle(unknown, 'unknown_domain', 'not in the domain inventory (cdn_domain)');
        for (const [note, group] of alreadyDeleted) await p.outcome.succeeded(group, note);
      });
      if (!ok || p.stopped) {
        // The pass failed or was stopped meanwhile: what it would have sent goes back.
        p.holds += toSend.length;
        this.handBack(toSend);
        continue;
      }
      p.holds += toSend.length;
      this.ready.push(...toSend);
    }
  }

  /**
   * One call: waits for a slot with the ready chunk (which keeps being topped up until then), renews the
   * leases, sends, gives the slot back, then settles. Never throws.
   */
  private async send(): Promise<void> {
    const { tokens, secplat, secplatLimit, signal, config } = this.deps;
    let chunk: Entry[] | undefined;
    const seal = (): Entry[] => {
      if (!chunk) {
        chunk = this.takeReady();
        this.senderWaiting = false;
        this.unsettled++;
        this.poke();
      }
      return chunk;
    };
    // The last call sent (after a 401 and a refresh, the retried one): its answer is what the attempts record.
    let call: CallRecord | undefined;
    let res: DeleteResult | undefined;
    let failure: unknown;
    try {
      // The token is read before the slot is taken; a 401 refreshes it (once, cluster-wide) and comes back here.
      res = await tokens.withToken(async (token, generation) => {
        const release = await acquireSlot(secplatLimit, signal);
        try {
          const entries = seal();
          if (signal.aborted) throw new NotSent('shutting down');
          if (entries.length === 0) return NOTHING_SENT;
          // Right before sending: the prepared chunk waited (for a slot, maybe for a token), and a lease that
          // lapsed meanwhile may belong to another worker by now. Only what is still held is sent.
          const held = await renewClaims(this.deps.callDb, entries.map((e) => ({
            messageId: e.pass.messageId, claimToken: e.pass.claimToken, domain: e.domain, userIdCdn: e.userIdCdn,
          })), config.domainLeaseMs);
          const stillHeld = new Set(held.map((h) => `${h.messageId}\n${h.domain}`));
          // Several domains may share one user_id_cdn (within a batch or across batches): sent once, settled all.
          const byId = new Map<string, Entry[]>();
          for (const e of entries) if (stillHeld.has(`${e.pass.messageId}\n${e.domain}`)) groupInto(byId, e.userIdCdn, e);
          if (byId.size === 0) return NOTHING_SENT;
          // Checked last, synchronously before the request: once it is sent, it is in flight and is waited for.
          if (signal.aborted) throw new NotSent('shutting down');
          const sent: CallRecord = { sentAt: new Date(), durationMs: 0, tokenGeneration: generation, httpStatus: null, entries: [...byId.values()].flat() };
          call = sent;
          const started = performance.now();
          try {
            const answer = await secplat.deleteUsers(token, generation, [...byId.keys()]);
            sent.httpStatus = 200;
            return answer;
          } catch (err) {
            sent.httpStatus = httpStatusOf(err);
            throw err;
          } finally {
            sent.durationMs = Math.round(performance.now() - started);
          }
        } finally {
          release();
        }
      });
    } catch (err) {
      failure = err;
    }
    // Sealed here if no slot was ever reached (no token, or shutdown while waiting).
    const entries = seal();
    try {
      await this.settle(entries, call, res, failure);
    } catch (err) {
      this.deps.logger.error('settling a call failed unexpectedly', { err });
      for (const p of new Set(entries.map((e) => e.pass))) p.fail(err);
    } finally {
      this.unsettled--;
      for (const [p, n] of countByPass(entries)) {
        p.holds -= n;
        this.maybeFinish(p);
      }
      this.poke();
    }
  }

  /** Records one call's outcome, each pass's share against its own batch. Runs after the slot was given back. */
  private async settle(entries: Entry[], call: CallRecord | undefined, res: DeleteResult | undefined, failure: unknown): Promise<void> {
    const { metrics, signal } = this.deps;
    if (failure instanceof NotSent || (failure !== undefined && !call && signal.aborted)) {
      // Never sent, and shutting down: back to pending for the next worker (a 401'd call deleted nothing).
      await this.releaseEntries(entries);
      return;
    }
    if (failure !== undefined) {
      const e = toAppError(failure);
      metrics.secplatCalls.inc({ result: e.code });
      const status = e instanceof SecplatRejectedError ? 'failed' : 'retryable';
      const reason = `${failure instanceof Error ? failure.constructor.name : 'Error'}: ${e.message}`;
      const sent = new Set(call?.entries);
      const byPass = groupByPass(entries);
      for (const p of byPass.keys()) {
        if (e instanceof TokenRejectedError) p.tokenRejected = true;
        // No token to be had (Redis down, lock, circuit open): not the domains' fault, so no retry is used up.
        if (e instanceof TokenUnavailableError || e instanceof BadCredentialsError) p.blocked = true;
      }
      const answered = new Map<Pass, AnsweredDomain[]>();
      for (const x of call?.entries ?? []) groupInto(answered, x.pass, { domain: x.domain, status, detail: e.message, reason });
      const recorded = !call || (await this.recordAnswer(call, answered));
      // Entries outside the last call are no longer held by their pass (or no call was made): no attempt. A pass
      // whose share of the call could not be recorded has failed and writes nothing more, as before in one guard.
      for (const [p, mine] of byPass) {
        const rest = mine.filter((x) => !sent.has(x)).map((x) => x.domain);
        if (rest.length > 0 && (recorded || !answered.has(p))) await p.guard(() => p.outcome.settle(rest, status, e.message));
      }
      return;
    }
    metrics.secplatCalls.inc({ result: 'ok' });
    if (!call || !res) return; // nothing held any more, nothing sent
    const byId = new Map<string, Entry[]>();
    for (const x of call.entries) groupInto(byId, x.userIdCdn, x);
    const answered = new Map<Pass, AnsweredDomain[]>();
    for (const id of res.succeeded) {
      for (const x of byId.get(id) ?? []) groupInto(answered, x.pass, { domain: x.domain, status: 'succeeded', detail: null, reason: null });
    }
    for (const f of res.failed) {
      for (const x of byId.get(f.userIdCdn) ?? []) {
        groupInto(answered, x.pass, { domain: x.domain, status: 'failed', detail: `security platform: ${f.reason}`, reason: f.reason });
      }
    }
    await this.recordAnswer(call, answered);
  }

  /**
   * Records what one call answered for each pass that had domains in it, in one transaction for all of them
   * (settleCall), then counts and logs each pass's share. The platform's answer exists only in memory: a
   * blip (connection, deadlock, statement timeout) is retried a few times before giving up. Past that, a
   * database error must still not turn a confirmed deletion into "retryable": every pass of the call fails
   * as its guard would fail it alone, its job is retried, and the claims expire (the next call deletes
   * again, which the platform takes as done). False when it failed.
   */
  private async recordAnswer(call: CallRecord, answered: Map<Pass, AnsweredDomain[]>): Promise<boolean> {
    const { entries: _carried, ...sent } = call;
    const { db, config } = this.deps;
    const shares = [...answered].map(([p, list]) => ({ messageId: p.messageId, claimToken: p.claimToken, trigger: p.trigger, answered: list }));
    const ok = await guardAll([...answered.keys()], () => retryTransient(() => settleCall(db, { ...sent, instanceId: config.instanceId }, shares)));
    if (ok) for (const [p, list] of answered) p.outcome.answered(list);
    return ok;
  }

  /** Gives unsent entries back (pending) and lets their passes finish; for entries not yet in a sent chunk. */
  private handBack(entries: Entry[]): void {
    if (entries.length === 0) return;
    void this.releaseEntries(entries).finally(() => {
      for (const [p, n] of countByPass(entries)) {
        p.holds -= n;
        this.maybeFinish(p);
      }
      this.poke();
    });
  }

  private async releaseEntries(entries: Entry[]): Promise<void> {
    for (const [p, mine] of groupByPass(entries)) {
      try {
        const n = await releaseClaims(this.deps.callDb, p.messageId, p.claimToken, mine.map((x) => x.domain));
        p.log.info('claimed domains handed back unsent', { count: n, domains: mine.map((x) => x.domain) });
      } catch (err) {
        // Their lease runs out and the stalled sweep hands them to the next worker.
        p.log.warn('could not hand back unsent domains; their lease will run out', { err: (err as Error).message });
      }
    }
  }

  /** A pass is done once nothing more will be claimed for it and none of its domains is in a chunk. */
  private maybeFinish(p: Pass): void {
    if (!p.started || p.holds > 0 || !(p.exhausted || p.stopped || this.deps.signal.aborted)) return;
    const i = this.passes.indexOf(p);
    if (i < 0) return;
    this.passes.splice(i, 1);
    p.finish();
  }
}

/** One job's pass over its batch: its claim token, what it tried, and what its calls met. */
class Pass {
  readonly tried = new Set<string>();
  readonly outcome: Outcomes;
  /** Open domains not yet claimed by this pass (undefined until counted). */
  claimable: number | undefined;
  started = false;
  /** Nothing more to claim now. */
  exhausted = false;
  /** Claims no more (it failed). */
  stopped = false;
  error: unknown;
  /** Entries in chunks (ready, in a call, being settled) and claims in progress. */
  holds = 0;
  claimed = 0;
  blocked = false;
  tokenRejected = false;
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    deps: ProcessDeps, readonly seq: number, readonly messageId: string, readonly claimToken: string, readonly trigger: JobTrigger,
    readonly log: Logger,
  ) {
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    this.outcome = new Outcomes(deps, this);
  }

  /** The first failure stops this pass's claims; its job is handed back once its chunks are settled. */
  fail(err: unknown): void {
    if (this.error === undefined) this.error = err;
    this.stopped = true;
  }

  /** Runs a write for this pass; a failure fails the pass (not the others sharing the call). */
  guard(write: () => Promise<void>): Promise<boolean> {
    return guardAll([this], write);
  }

  /** A write of its outcomes failed: the pass stops, and its job is retried once its chunks are settled. */
  writeFailed(err: unknown): void {
    this.log.warn('could not record outcomes', { err: (err as Error).message });
    this.fail(err);
  }

  finish(): void {
    this.resolveDone();
  }
}

/** Records outcomes for one pass and logs one line per domain. */
class Outcomes {
  constructor(private readonly deps: ProcessDeps, private readonly pass: Pass) {}

  /** Counts and logs what one call answered for this pass's domains, once settleCall recorded it. */
  answered(domains: AnsweredDomain[]): void {
    const { deps, pass } = this;
    for (const d of domains) {
      deps.metrics.outcomes.inc({ status: d.status });
      if (d.status === 'succeeded') pass.log.info('domain deleted', { domain: d.domain });
      else pass.log.warn(`domain ${d.status}`, { domain: d.domain, detail: d.detail });
    }
  }

  async succeeded(domains: string[], detail: string | null = null): Promise<void> {
    if (domains.length === 0) return;
    await settleSucceeded(this.deps.db, this.pass.messageId, domains, detail);
    this.deps.metrics.outcomes.inc({ status: 'succeeded' }, domains.length);
    for (const domain of domains) this.pass.log.info('domain deleted', { domain, ...(detail ? { detail } : {}) });
  }

  async settle(domains: string[], status: Exclude<DomainStatus, 'in_progress' | 'succeeded'>, detail: string | null): Promise<void> {
    await settleDomains(this.deps.db, this.pass.messageId, this.pass.claimToken, domains, status, detail);
    this.deps.metrics.outcomes.inc({ status }, domains.length);
    const level = status === 'pending' ? 'info' : 'warn';
    for (const domain of domains) this.pass.log.log(level, `domain ${status}`, { domain, detail });
  }
}

/**
 * Waits for a call slot; resolves with the function that gives it back. Rejects with NotSent once shutdown
 * begins (a slot granted after that is given straight back).
 */
function acquireSlot(limit: LimitFunction, signal: AbortSignal): Promise<() => void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const onAbort = () => {
      if (settled) return;
      settled = true;
      reject(new NotSent('shutting down'));
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    void limit(() => new Promise<void>((release) => {
      signal.removeEventListener('abort', onAbort);
      if (settled) return release();
      settled = true;
      resolve(release);
    }));
  });
}

/**
 * Runs one write on behalf of several passes (a call's answer, recorded for all of them at once); a failure
 * fails each of them, as a failing write of its own would.
 */
async function guardAll(passes: Pass[], write: () => Promise<void>): Promise<boolean> {
  try {
    await write();
    return true;
  } catch (err) {
    for (const p of passes) p.writeFailed(err);
    return false;
  }
}

/** The HTTP status a failed call was answered with; null when nothing was answered (timeout, network, cut). */
function httpStatusOf(err: unknown): number | null {
  if (err instanceof TokenRejectedError) return 401;
  if (err instanceof SecplatRetryableError || err instanceof SecplatRejectedError) return err.httpStatus;
  return null;
}

function groupInto<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

function groupByPass(entries: Entry[]): Map<Pass, Entry[]> {
  const out = new Map<Pass, Entry[]>();
  for (const e of entries) groupInto(out, e.pass, e);
  return out;
}

function countByPass(entries: Entry[]): Map<Pass, number> {
  const out = new Map<Pass, number>();
  for (const e of entries) out.set(e.pass, (out.get(e.pass) ?? 0) + 1);
  return out;
}
