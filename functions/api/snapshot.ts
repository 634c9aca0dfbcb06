/**
 * A read model refreshed at most every `maxAgeMs`: reads that change slowly and cost a round of
 * queries to every shard (shard health, statistics) or to the catalog (status) are served from
 * the last snapshot, with its age, an ETag and a Cache-Control lifetime, instead of being
 * recomputed for every request. A stale snapshot is served while one refresh runs in the
 * background (one at a time); only the very first read waits. A failed refresh keeps the last
 * snapshot (its age keeps growing, so a client sees how old it is) until it is `maxStaleMs` old:
 * from then on a read waits for a refresh, so its error reaches the caller; with no snapshot, the
 * error is thrown to the caller. Values are deep-frozen: every reader shares them.
 *
 * @example
 * ```ts
 * const health = new Snapshot(() => port.shardHealth(), { maxAgeMs: 10_000 });
 * const { value, etag, ageSeconds } = await health.read();
 * ```
 */
import { createHash } from 'node:crypto';

export interface SnapshotOptions<T = unknown> {
  /** How old a snapshot may get before a read starts a refresh. */
  readonly maxAgeMs: number;
  /**
   * How old a snapshot may get and still be served while its refreshes fail. Past it a read
   * waits for a refresh and gets its error (a plan of moves from hours ago misleads whoever
   * follows it). Default: no bound.
   */
  readonly maxStaleMs?: number;
  /** Milliseconds since the epoch (injected for tests). */
  readonly now?: () => number;
  /** The entity tag of a value (default: a hash of its JSON). A value with a version of its own names it here. */
  readonly etag?: (value: T, json: string) => string;
}

/** One snapshot as served. */
export interface SnapshotRead<T> {
  readonly value: T;
  /** The value as JSON, serialised once per snapshot. */
  readonly json: string;
  /** A strong entity tag of `json`. */
  readonly etag: string;
  /** Whole seconds since the snapshot was taken (the HTTP `Age`). */
  readonly ageSeconds: number;
  /** Whole seconds a client may keep it (what is left of `maxAgeMs`, at least 0). */
  readonly maxAgeSeconds: number;
  /**
   * Milliseconds during which a read would give this very answer (value, `Age`, max-age): until
   * either whole-second figure ticks or the snapshot falls due. 0 once it is due. A server may
   * resend the response's bytes that long (unless a change invalidates the snapshot first).
   */
  readonly reusableMs: number;
}

interface Taken<T> {
  readonly value: T;
  readonly json: string;
  readonly etag: string;
  readonly at: number;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

export class Snapshot<T> {
  private taken: Taken<T> | undefined;
  private refreshing: Promise<Taken<T>> | undefined;
  private generation = 0;
  private refreshingGeneration = -1;
  private readonly now: () => number;

  constructor(
    private readonly load: () => Promise<T>,
    private readonly options: SnapshotOptions<T>,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** The current snapshot; refreshes in the background when it is older than `maxAgeMs`. */
  async read(): Promise<SnapshotRead<T>> {
    let now = this.now();
    let taken = this.taken;
    const maxStaleMs = this.options.maxStaleMs;
    if (taken === undefined || (maxStaleMs !== undefined && now - taken.at >= maxStaleMs)) {
      taken = await this.refresh();
      // Aged while it loaded (from the start of the load, which may have begun before this read):
      // its Age and max-age are those it has when it is answered.
      now = this.now();
    } else if (now - taken.at >= this.options.maxAgeMs) void this.refresh().catch(() => undefined);
    const ageMs = Math.max(0, now - taken.at);
    const leftMs = this.options.maxAgeMs - ageMs;
    return {
      value: taken.value,
      json: taken.json,
      etag: taken.etag,
      ageSeconds: Math.floor(ageMs / 1000),
      maxAgeSeconds: Math.max(0, Math.floor(leftMs / 1000)),
      reusableMs: leftMs <= 0 ? 0 : Math.min(1000 - (ageMs % 1000), (leftMs % 1000) + 1, leftMs),
    };
  }

  /** Forgets the snapshot (after a change through the API): the next read waits for a fresh one. */
  invalidate(): void {
    this.taken = undefined;
    this.generation++;
  }

  private refresh(): Promise<Taken<T>> {
    // A refresh begun before an invalidation may have read the state before the change.
    if (this.refreshing && this.refreshingGeneration === this.generation) return this.refreshing;
    const generation = this.generation;
    this.refreshingGeneration = generation;
    const started = this.now();
    this.refreshing = (async () => {
      try {
        const value = deepFreeze(await this.load());
        const json = JSON.stringify(value);
        const etag = this.options.etag ? this.options.etag(value, json) : `"${createHash('sha1').update(json).digest('base64url').slice(0, 22)}"`;
        const taken: Taken<T> = { value, json, etag, at: started };
        if (generation === this.generation) this.taken = taken;
        return taken;
      } finally {
        if (this.refreshingGeneration === generation) this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }
}

/**
 * Snapshots of a read that takes parameters (a page of history, a time window), one per key (the
 * parameters, normalised), at most `maxKeys` of them: past that, the oldest key is dropped.
 *
 * @example
 * ```ts
 * const pages = new SnapshotMap<HistoryView>({ maxAgeMs: 1000 });
 * const read = await pages.read(JSON.stringify(query), () => port.history(query));
 * ```
 */
export class SnapshotMap<T> {
  private readonly entries = new Map<string, Snapshot<T>>();

  constructor(private readonly options: SnapshotOptions<T> & { readonly maxKeys?: number }) {}

  /** The snapshot for `key`; `load` computes it (the first read of a key decides how). */
  read(key: string, load: () => Promise<T>): Promise<SnapshotRead<T>> {
    let snapshot = this.entries.get(key);
    if (snapshot === undefined) {
      snapshot = new Snapshot(load, this.options);
      this.entries.set(key, snapshot);
      if (this.entries.size > (this.options.maxKeys ?? 64)) this.entries.delete(this.entries.keys().next().value as string);
    }
    return snapshot.read();
  }

  /** Forgets every key: the next read of each waits for a fresh snapshot. */
  invalidate(): void {
    this.entries.clear();
  }
}

/** Whether an `If-None-Match` header names `etag` (or is `*`); weak comparison, as RFC 9110 says for it. */
export function noneMatch(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  const bare = etag.replace(/^W\//, '');
  return header.split(',').some((t) => {
    const tag = t.trim();
    return tag === '*' || tag.replace(/^W\//, '') === bare;
  });
}
