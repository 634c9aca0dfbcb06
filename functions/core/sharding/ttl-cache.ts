/**
 * A small TTL cache with an injected clock, used on the directory's read path so that a hot
 * key costs one catalog query per TTL per process. Misses (`null`) are cached too: a key that
 * is not in the directory is asked for as often as one that is.
 *
 * @example
 * ```ts
 * const cache = new TtlCache<string | null>(5_000, () => Date.now());
 * cache.set('user-1', 'shard_002');
 * cache.get('user-1'); // { value: 'shard_002' } until 5 s have passed, then undefined
 * ```
 */
export class TtlCache<V> {
  private readonly entries = new Map<string, { value: V; expiresAt: number }>();

  /**
   * @param ttlMs how long an entry is served; 0 disables caching.
   * @param now the clock, in milliseconds.
   * @param maxEntries bound on memory; the oldest entry is evicted first.
   */
  constructor(
    private readonly ttlMs: number,
    private readonly now: () => number,
    private readonly maxEntries = 100_000,
  ) {}

  /** The cached value wrapped in an object (so a cached `null` differs from a miss), or `undefined`. */
  get(key: string): { value: V } | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    if (this.now() >= e.expiresAt) {
      this.entries.delete(key);
      return undefined;
    }
    return { value: e.value };
  }

  set(key: string, value: V): void {
    if (this.ttlMs <= 0) return;
    this.entries.delete(key);
    if (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    this.entries.set(key, { value, expiresAt: this.now() + this.ttlMs });
  }

  /** Forgets one key, or everything. */
  invalidate(key?: string): void {
    if (key === undefined) this.entries.clear();
    else this.entries.delete(key);
  }
}
