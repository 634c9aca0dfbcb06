/**
 * The shard router: maps a key (a user id; documents route by their owner) to a shard, its
 * slot and the slot-map version it was decided with, under the configured strategy:
 *
 * - `hash_based`: `slot = murmur3(key) mod 4096`, shard = the slot map's owner of that slot.
 *   Directory entries override it when `directory.override_hash` is on (a hot tenant on its own shard).
 * - `range_based`: the configured range holding the key.
 * - `directory_based`: the catalog directory; keys not in it fall back to hash or are rejected.
 *
 * Every key is first normalised by {@link canonicalKey} (a UUID in any accepted spelling becomes
 * its lowercase form), here and nowhere else on the routing path, so every spelling of a key
 * lands in one slot. `route()` is synchronous and allocation-light (the hot path); `resolve()` first asks the
 * directory (through the {@link DirectoryLookup} port, cached by the adapter) when the
 * strategy needs it. The slot is always the hash slot of the key, whatever the strategy: it is
 * what the reference schema stores on users and documents so that moves can find rows by slot.
 *
 * @example
 * ```ts
 * const router = ShardRouter.fromConfig(config, { slotMap: await slotMaps.current(), directory });
 * const r = router.route('3f2c1d9e-8a7b-4c6d-9e0f-112233445566');
 * // { shardId: 'shard_002', slot: 1234, mapVersion: 7, strategy: 'hash_based', source: 'hash' }
 * const doc = await router.resolveDocument({ ownerId: user.id }); // same shard as the owner
 * ```
 */
import type { ShardConfig, ShardingConfig, ShardingStrategy } from './config.js';
import { RoutingError, SlotMapError } from './errors.js';
import { SLOT_COUNT, slotOf } from './hash.js';
import { canonicalKey, canonicalUuid } from './keys.js';
import { buildSlotMap, type SlotMap } from './slot-map.js';
import { compileRanges, findRange, normaliseRangeValue, type CompiledRange, type RangeKey } from './strategies/range.js';

/** Where the decision came from; `default` means sharding is disabled and everything goes to `default_shard`. */
export type RouteSource = 'hash' | 'range' | 'directory' | 'default';

export interface Route {
  readonly shardId: string;
  /** The key's hash slot (`murmur3(key) mod 4096`), whatever the strategy. */
  readonly slot: number;
  /** Version of the slot map the router held when it decided. */
  readonly mapVersion: number;
  readonly strategy: ShardingStrategy;
  readonly source: RouteSource;
}

export interface RouteOptions {
  /**
   * The directory's answer for this key, when the caller already has it: a shard id, or `null`
   * for "not in the directory". `resolve()` fills it in; `route()` needs it under `directory_based`.
   */
  readonly directoryShard?: string | null;
}

/** The read side of the directory (implemented by the catalog's `DirectoryStore`). */
export interface DirectoryLookup {
  /** The shard a key is pinned to, or `null` when the key is not in the directory. */
  get(key: string): Promise<string | null>;
}

/** A document, for co-location: it lives with its owner. */
export interface DocumentRef {
  readonly ownerId: string;
}

export { canonicalKey } from './keys.js';

export class ShardRouter {
  private map: SlotMap;
  private readonly shards: ReadonlyMap<string, ShardConfig>;
  private readonly ranges: readonly CompiledRange[];

  /**
   * @param config a validated configuration ({@link parseShardingConfig}).
   * @param slotMap the current slot map; every shard it names must be configured.
   * @param directory the directory port, needed by `resolve()` under `directory_based` and for overrides.
   */
  constructor(
    readonly config: ShardingConfig,
    slotMap: SlotMap,
    private readonly directory?: DirectoryLookup,
  ) {
    this.shards = new Map(config.shards.map((s) => [s.shard_id, s]));
    this.ranges = config.strategy === 'range_based' ? compileRanges(config.range_key_type, config.ranges) : [];
    this.checkMap(slotMap);
    this.map = slotMap;
  }

  /** Builds a router; without a slot map, version 1 is built from the configured weights. */
  static fromConfig(config: ShardingConfig, options: { slotMap?: SlotMap; directory?: DirectoryLookup } = {}): ShardRouter {
    const map = options.slotMap ?? buildSlotMap(config.shards.map((s) => ({ shardId: s.shard_id, weight: s.weight })));
    return new ShardRouter(config, map, options.directory);
  }

  get slotMap(): SlotMap {
    return this.map;
  }

  /** Adopts a newer slot map (after a move or a rebalance). Older or equal versions are ignored; returns whether it was adopted. */
  setSlotMap(next: SlotMap): boolean {
    if (next.version <= this.map.version) return false;
    this.checkMap(next);
    this.map = next;
    return true;
  }

  /** The configuration of a shard (its primary URL and replicas). */
  shard(shardId: string): ShardConfig {
    const s = this.shards.get(shardId);
    if (s === undefined) throw new RoutingError('unknown-shard', `shard ${shardId} is not configured`);
    return s;
  }

  /** Whether `resolve()` consults the directory for a key under this configuration. */
  get usesDirectory(): boolean {
    if (!this.config.enabled) return false;
    return this.config.strategy === 'directory_based' || (this.config.strategy === 'hash_based' && this.config.directory.override_hash && this.directory !== undefined);
  }

  /** Routes a key synchronously. Throws {@link RoutingError} when the key cannot be routed. */
  route(key: RangeKey, options?: RouteOptions): Route {
    // The one place keys are normalised: every spelling of a key must hash to the same slot.
    const text = canonicalKey(key);
    const slot = slotOf(text);
    const { strategy } = this.config;
    if (!this.config.enabled) return { shardId: this.config.default_shard, slot, mapVersion: this.map.version, strategy, source: 'default' };
    const pinned = options?.directoryShard;
    if (strategy === 'range_based') return this.routeRange(typeof key === 'string' && this.config.range_key_type === 'string' ? text : key, slot);
    if (typeof pinned === 'string' && (strategy === 'directory_based' || this.config.directory.override_hash)) {
      if (!this.shards.has(pinned)) throw new RoutingError('unknown-shard', `the directory pins key ${JSON.stringify(String(key))} to shard ${pinned}, which is not configured`);
      return { shardId: pinned, slot, mapVersion: this.map.version, strategy, source: 'directory' };
    }
    if (strategy === 'directory_based') {
      if (pinned === undefined) throw new RoutingError('directory-unavailable', 'directory_based routing needs the directory: call resolve(), or pass directoryShard');
      if (this.config.directory.fallback === 'reject') throw new RoutingError('not-in-directory', `key ${JSON.stringify(String(key))} is not in the shard directory and the fallback is reject`);
    }
    return { shardId: this.map.assignments[slot] as string, slot, mapVersion: this.map.version, strategy, source: 'hash' };
  }

  /** Co-location: a document routes exactly like its owner's user id, which must be a UUID (any accepted form). */
  routeDocument(doc: DocumentRef, options?: RouteOptions): Route {
    return this.route(canonicalUuid(doc.ownerId), options);
  }

  /** Routes a key, asking the directory first when the strategy needs it. */
  async resolve(key: RangeKey, options?: RouteOptions): Promise<Route> {
    if (!this.usesDirectory || options?.directoryShard !== undefined) return this.route(key, options);
    if (this.directory === undefined) throw new RoutingError('directory-unavailable', 'directory_based routing is configured but the router has no directory');
    let directoryShard: string | null;
    try {
      directoryShard = await this.directory.get(canonicalKey(key));
    } catch (err) {
      throw new RoutingError('directory-unavailable', `the shard directory could not be read: ${(err as Error).message}`, { cause: err });
    }
    return this.route(key, { directoryShard });
  }

  /** Co-location, asynchronous form of {@link routeDocument}. */
  async resolveDocument(doc: DocumentRef, options?: RouteOptions): Promise<Route> {
    return this.resolve(canonicalUuid(doc.ownerId), options);
  }

  private routeRange(key: RangeKey, slot: number): Route {
    const norm = normaliseRangeValue(this.config.range_key_type, key);
    if (!norm.ok) throw new RoutingError('invalid-key', `range key ${JSON.stringify(String(key))} ${norm.why} (range_key_type ${this.config.range_key_type})`);
    const range = findRange(this.ranges, norm.value);
    if (range === undefined) throw new RoutingError('out-of-range', `key ${JSON.stringify(String(key))} is outside every configured range`);
    return { shardId: range.shardId, slot, mapVersion: this.map.version, strategy: 'range_based', source: 'range' };
  }

  private checkMap(map: SlotMap): void {
    if (map.slotCount !== SLOT_COUNT) throw new SlotMapError(`slot map version ${map.version} has ${map.slotCount} slots; routing uses ${SLOT_COUNT}`);
    if (map.assignments.length !== map.slotCount) throw new SlotMapError(`slot map version ${map.version} has ${map.assignments.length} assignments for ${map.slotCount} slots`);
    const unknown = new Set(map.assignments.filter((id) => !this.shards.has(id)));
    if (unknown.size > 0) throw new SlotMapError(`slot map version ${map.version} assigns slots to shards that are not configured: ${[...unknown].join(', ')}`);
  }
}
