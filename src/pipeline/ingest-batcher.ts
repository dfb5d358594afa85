/**
 * The ingest path's two writes, batched without weakening either:
 *
 * - IngestBatcher (group commit): every callback is stored by one statement (recordCallbacks: audit row,
 *   batch, domains, alarm; one round trip, its own transaction). While INGEST_STATEMENTS_IN_FLIGHT such
 *   statements are running, callbacks that arrive wait and then share the next statement, one commit for
 *   all of them. Each caller is answered only once the statement holding its callback has committed (with
 *   synchronous_commit as configured, on by default). An idle process sends a callback at once, alone.
 * - PublishFlagWriter: the publish flag (batch.publish_pending, set by the ingest statement) of a batch whose
 *   job the broker confirmed is cleared by one UPDATE for every confirm of the last PUBLISH_FLAG_FLUSH_MS,
 *   written after the reply instead of a second commit per callback. The flag is only a note for the relay;
 *   one not cleared yet (or never, if the process dies first) costs at most a duplicate job, which the worker
 *   acks with nothing to do. It never loses one: the relay publishes every batch whose flag is still set
 *   once it is older than AMQP_CONFIRM_TIMEOUT_MS + 1 s, which a confirmed batch's flag never gets to.
 *
 * One of each per pool, built on first use (batcherFor / publishFlagsFor); the service's context passes the
 * config and its releasers, so shutdown flushes both before the pool closes.
 */
import type { Config } from '../config.js';
import { DependencyUnavailableError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { isConnectionError, type Db } from '../store/db.js';
import { markPublished, markPublishFailed, recordCallbacks, type CallbackRecord, type RecordedCallback } from '../store/ledger.js';

/** Defaults when the caller's config does not say (mirrors config/default.json). */
const DEFAULT_STATEMENTS_IN_FLIGHT = 2;
const DEFAULT_FLAG_FLUSH_MS = 10;
// Bounds of one group: a statement of a few hundred rows takes a few ms; a huge callback goes alone.
const GROUP_MAX_CALLBACKS = 64;
const GROUP_MAX_ITEMS = 5000;
// Most flags one UPDATE clears; more wait for the next flush.
const FLAGS_PER_FLUSH = 1000;

/** Where a component registers its shutdown step (the context's Releasers). */
interface ReleaserSink { add(name: string, release: () => Promise<void> | void): void }

/**
 * What the batcher and the flag writer need. `config` and `releasers` are read when present: callers pass
 * their own deps (the context, the HTTP app's, the relay's), whose config holds other keys too.
 */
export interface IngestDeps {
  db: Db;
  logger: Logger;
  config?: Partial<Pick<Config, 'ingestStatementsInFlight' | 'publishFlagFlushMs'>> & { readonly [key: string]: unknown };
  releasers?: ReleaserSink;
}

interface Waiting { input: CallbackRecord; resolve(r: RecordedCallback): void; reject(err: unknown): void; alone?: boolean }

/** Group commit of callbacks; see the module comment. */
export class IngestBatcher {
  private readonly queue: Waiting[] = [];
  private inFlight = 0;
  private readonly idle = new Set<() => void>();

  constructor(private readonly deps: Pick<IngestDeps, 'db' | 'logger'>, private readonly statementsInFlight: number) {}

  /** Stores one callback; resolves once the statement that carried it has committed. */
  record(input: CallbackRecord): Promise<RecordedCallback> {
    return new Promise((resolve, reject) => {
      this.queue.push({ input, resolve, reject });
      this.pump();
    });
  }

  /** Resolves once nothing is queued or in flight. */
  drain(): Promise<void> {
    if (this.inFlight === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.add(resolve));
  }

  private pump(): void {
    while (this.inFlight < this.statementsInFlight && this.queue.length > 0) {
      const group = this.takeGroup();
      this.inFlight++;
      void this.run(group).finally(() => {
        this.inFlight--;
        this.pump();
        if (this.inFlight === 0 && this.queue.length === 0) for (const done of this.idle) { this.idle.delete(done); done(); }
      });
    }
  }

  /**
   * The oldest waiting callbacks, in arrival order, within the group bounds. A messageId goes at most once
   * per statement (ON CONFLICT may not touch a row twice); a second callback of it waits for the next one.
   */
  private takeGroup(): Waiting[] {
    const group: Waiting[] = [];
    const ids = new Set<string>();
    let items = 0;
    for (let i = 0; i < this.queue.length && group.length < GROUP_MAX_CALLBACKS;) {
      const w = this.queue[i]!;
      const fits = group.length === 0 || (!w.alone && items + w.input.items.length <= GROUP_MAX_ITEMS && !ids.has(w.input.messageId));
      if (!fits) { i++; continue; }
      group.push(w);
      this.queue.splice(i, 1);
      ids.add(w.input.messageId);
      items += w.input.items.length;
      if (w.alone) break;
    }
    return group;
  }

  private async run(group: Waiting[]): Promise<void> {
    let results: RecordedCallback[];
    try {
      results = await recordCallbacks(this.deps.db, group.map((w) => w.input));
    } catch (err) {
      const e = asIngestError(err);
      if (e instanceof DependencyUnavailableError || group.length === 1) {
        for (const w of group) w.reject(e);
        return;
      }
      // Refused for a reason of its own (one callback PostgreSQL would not store): nothing of the statement
      // was written (one statement, one transaction), so each callback is tried alone and only that one fails.
      this.deps.logger.warn('grouped ingest statement failed; storing its callbacks one by one', { callbacks: group.length, err: (err as Error).message });
      this.queue.unshift(...group.map((w) => ({ ...w, alone: true })));
      return;
    }
    group.forEach((w, i) => w.resolve(results[i]!));
  }
}

/**
 * PostgreSQL away, or a transaction conflict (deadlock, serialization): the callback may be sent again, so
 * the vendor gets a 503 and retries. The same meaning withTransaction gives these errors.
 */
function asIngestError(err: unknown): unknown {
  if (isConnectionError(err)) {
    return err instanceof DependencyUnavailableError ? err : new DependencyUnavailableError('postgres', `PostgreSQL unavailable: ${(err as Error).message}`, err);
  }
  const code = (err as { code?: string } | undefined)?.code;
  if (code === '40P01' || code === '40001') return new DependencyUnavailableError('postgres', `transaction conflict (${code}); retry`, err);
  return err;
}

type FlagNote = { confirmedSince: Date } | { error: string };

/** Publish flags written in bulk after the reply; see the module comment. */
export class PublishFlagWriter {
  // Latest note per messageId, in arrival order: a later confirm or failure of the same batch replaces it.
  private readonly notes = new Map<string, FlagNote>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private lastFlushAt = 0;

  constructor(private readonly deps: Pick<IngestDeps, 'db' | 'logger'>, private readonly flushMs: number) {}

  /** The broker confirmed the job published for the batch as it was at `since` (its updated_at). */
  confirmed(messageId: string, since: Date): void {
    const prev = this.notes.get(messageId);
    // Two confirms: the newer version wins (markPublished clears only up to it).
    const newer = prev && 'confirmedSince' in prev && prev.confirmedSince > since ? prev.confirmedSince : since;
    this.notes.delete(messageId);
    this.notes.set(messageId, { confirmedSince: newer });
    this.schedule();
  }

  /** The job was not published (or not confirmed): the flag stays set, and the error is kept for operators. */
  failed(messageId: string, error: string): void {
    this.notes.delete(messageId);
    this.notes.set(messageId, { error });
    this.schedule();
  }

  /** Writes every note now (shutdown, tests); resolves once written, or once writing failed (logged). */
  async flush(): Promise<void> {
    for (;;) {
      if (this.flushing) { await this.flushing; continue; }
      if (this.timer) { clearTimeout(this.timer); this.timer = undefined; }
      if (this.notes.size === 0) return;
      await this.startWrite();
    }
  }

  /**
   * At most one UPDATE per flushMs: the first note after a quiet spell goes out at once (right after the
   * reply that caused it), later ones wait for the rest of the interval and go together.
   */
  private schedule(): void {
    if (this.timer || this.flushing) return;
    const wait = Math.max(0, this.lastFlushAt + this.flushMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.startWrite();
    }, wait);
    this.timer.unref();
  }

  private startWrite(): Promise<void> {
    this.flushing = this.writeSome().finally(() => {
      this.flushing = undefined;
      if (this.notes.size > 0) this.schedule();
    });
    return this.flushing;
  }

  private async writeSome(): Promise<void> {
    this.lastFlushAt = Date.now();
    const taken = [...this.notes].slice(0, FLAGS_PER_FLUSH);
    for (const [id] of taken) this.notes.delete(id);
    const confirmed = taken.flatMap(([messageId, n]) => ('confirmedSince' in n ? [{ messageId, since: n.confirmedSince }] : []));
    const failed = taken.flatMap(([messageId, n]) => ('error' in n ? [{ messageId, error: n.error }] : []));
    try {
      await markPublished(this.deps.db, confirmed);
      await markPublishFailed(this.deps.db, failed);
    } catch (err) {
      // Dropped, not retried: a flag left set only makes the relay publish that job once more (harmless).
      this.deps.logger.warn('publish flags not written; the relay may publish those jobs again (harmless)',
        { confirmed: confirmed.length, failed: failed.length, err: (err as Error).message });
    }
  }
}

// One batcher and one flag writer per pool. They belong in the context (src/context.ts) next to the pool;
// until then they are built on first use and register their shutdown step with the caller's releasers.
const batchers = new WeakMap<Db, IngestBatcher>();
const flagWriters = new WeakMap<Db, PublishFlagWriter>();

/** The pool's IngestBatcher, built on first use with INGEST_STATEMENTS_IN_FLIGHT. */
export function batcherFor(deps: IngestDeps): IngestBatcher {
  let b = batchers.get(deps.db);
  if (!b) {
    const made = b = new IngestBatcher(deps, deps.config?.ingestStatementsInFlight ?? DEFAULT_STATEMENTS_IN_FLIGHT);
    batchers.set(deps.db, made);
    deps.releasers?.add('ingest statements', () => made.drain());
  }
  return b;
}

/** The pool's PublishFlagWriter, built on first use with PUBLISH_FLAG_FLUSH_MS. */
export function publishFlagsFor(deps: IngestDeps): PublishFlagWriter {
  let w = flagWriters.get(deps.db);
  if (!w) {
    const made = w = new PublishFlagWriter(deps, deps.config?.publishFlagFlushMs ?? DEFAULT_FLAG_FLUSH_MS);
    flagWriters.set(deps.db, made);
    deps.releasers?.add('publish flags', () => made.flush());
  }
  return w;
}
