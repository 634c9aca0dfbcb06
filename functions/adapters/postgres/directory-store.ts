/**
 * The shard directory in the catalog database (`catalog.shard_directory`): explicit key ->
 * shard pins, per user or tenant. It is the whole routing table under `directory_based` and an
 * override of `hash_based` (how a hot tenant gets its own shard). Reads go through a short TTL
 * cache with an injected clock; misses are cached too, so unknown keys do not hammer the
 * catalog. Writes through this store invalidate its own cache at once (a write made in a
 * caller's transaction, once the caller calls {@link DirectoryStore.invalidate} after its commit);
 * other processes see a change within one TTL.
 *
 * @example
 * ```ts
 * const directory = new DirectoryStore(catalogPool, { ttlMs: 5_000, shards: ['shard_001', 'shard_002'] });
 * await directory.set('tenant-42', 'shard_002', 'ops@example.com');
 * const router = ShardRouter.fromConfig(config, { slotMap, directory });
 * await router.resolve('tenant-42'); // { shardId: 'shard_002', source: 'directory', ... }
 * ```
 */
import type pg from 'pg';
import { slotOf } from '../../core/sharding/hash.js';
import { canonicalKey, uuidForm } from '../../core/sharding/keys.js';
import type { DirectoryLookup } from '../../core/sharding/router.js';
import { TtlCache } from '../../core/sharding/ttl-cache.js';
import { hasSqlState, INVALID_PARAMETER_VALUE, PIN_KEPT, PIN_OWNER_KEPT, readRetried } from './sqlstate.js';
import { boundedCount, countedOwnerChange, countTimeoutOf, describeRows, directoryKeysBySlot, keyRowsOn, lockSlotsForPins, OwnerChangeFences, refusedRowsLeftOn, SLOT_PIN_LOCK_WAIT_MS, slotLockRefused, type OwnerChangeOptions, type ShardPoolsById, type TableRows } from './unit-rows.js';

/** A directory write was refused (unknown shard, empty key or author). */
export class DirectoryError extends Error {
  override readonly name: string = 'DirectoryError';
}

/**
 * What a compare-and-set write of an entry ({@link DirectoryStore.set}) expects to find: the key
 * pinned to `shardId` at `version`, or (`null`) no entry for the key. Both the shard and the
 * version are compared: a key deleted and pinned again starts again at version 1.
 */
export type ExpectedDirectoryEntry = Pick<DirectoryEntry, 'shardId' | 'version'> | null;

/** A compare-and-set write found another entry than it expected (someone changed it since it was read); nothing was written. */
export class DirectoryVersionConflictError extends DirectoryError {
  override readonly name = 'DirectoryVersionConflictError';
  constructor(
    readonly key: string,
    readonly expected: ExpectedDirectoryEntry,
    /** The entry found instead (read after the refused write), or null when there is none. */
    readonly actual: DirectoryEntry | null,
  ) {
    const expectedText = expected === null ? 'no entry' : `${expected.shardId} (version ${expected.version})`;
    const actualText = actual === null ? 'no entry' : `${actual.shardId} (version ${actual.version}, by ${actual.updatedBy})`;
    super(`the directory entry of ${key} changed: expected ${expectedText}, found ${actualText}; nothing was written`);
  }
}

/**
 * The catalog refused to remove a pin (SQLSTATE `CAF06`, sharding migration 010): a
 * directory move of the key, or a slot move that kept the key out of its slot, wrote fence rows
 * for the key on its shards, and those rows decide for the key over its
 * slot's for good, so the key must stay placed by the directory. Nothing was changed. To give the
 * key another owner, move it (a directory move). The message is the catalog's, naming the key and
 * the move jobs.
 */
export class DirectoryPinKeptError extends DirectoryError {
  override readonly name = 'DirectoryPinKeptError';
  constructor(
    readonly key: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * The catalog refused to change the shard of a pin (SQLSTATE `CAF07`, sharding migration 011):
 * a directory move of the key, or a slot move that kept the key out of its slot, wrote fence
 * rows for the key on its shards, and those rows decide for the key whatever its pin says (a
 * shard that does not own it refuses it, `CAF02`; one that never held it takes its writes while
 * its rows are elsewhere). Nothing was changed. To give the key another owner, move it (a
 * directory move); where its owner must be decided by hand, {@link DirectoryStore.repinByHand}.
 * The message is the catalog's, naming the key, both shards and the move jobs.
 */
export class DirectoryOwnerKeptError extends DirectoryError {
  override readonly name = 'DirectoryOwnerKeptError';
  constructor(
    readonly key: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * A pin (or an unpin) would send a key's reads and writes away from the shard that holds its rows
 * (issue #15): the key has no move history, so the catalog's guards let it through, but its rows
 * would stay on `from`, out of its readers' sight on `to`, its new writes landing on `to` (the key
 * split over two shards; a later move of the key or its slot could delete one side). Counted on
 * `from` by a store given the shards' pools ({@link DirectoryStoreOptions.shardPools}). Nothing was
 * written. Move the key instead (`POST /shards/moves`), or pass `{ rowsLeftOn: 'checked' }` once
 * its rows are accounted for.
 */
export class DirectoryRowsLeftError extends DirectoryError {
  override readonly name = 'DirectoryRowsLeftError';
  constructor(
    readonly key: string,
    /** The shard the catalog routes the key to now, which holds its rows. */
    readonly from: string,
    /** The shard the change would route it to (for an unpin, its slot's owner). */
    readonly to: string,
    readonly rows: readonly TableRows[],
    message: string,
  ) {
    super(message);
  }
}

/**
 * An unpin was refused because nothing can make it sound (issue #15): it would change the key's
 * route (the pin names another shard than the key's slot's owner), which a fence cannot cover
 * without leaving a row that decides for the key once unpinned; or a shard holds such a row of the
 * key already (left by an earlier change of its pin), which must keep the key pinned. Nothing was
 * changed. Pin the key to its slot's owner instead (routes it the same, fenced), or move it.
 */
export class DirectoryUnpinRefusedError extends DirectoryError {
  override readonly name = 'DirectoryUnpinRefusedError';
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

export interface DirectoryEntry {
  readonly key: string;
  readonly shardId: string;
  /** Bumped on every change of the entry. */
  readonly version: number;
  readonly updatedAt: Date;
  readonly updatedBy: string;
}

export interface DirectoryStoreOptions {
  /** How long a lookup (hit or miss) is served from memory. Default 5000 ms; 0 disables the cache. */
  readonly ttlMs?: number;
  /** The clock for the cache, in milliseconds. Default `Date.now`. */
  readonly now?: () => number;
  /** When given, `set` refuses shard ids outside this list. */
  readonly shards?: readonly string[];
  /** Bound on cached keys. Default 100000. */
  readonly maxCachedKeys?: number;
  /**
   * The shards' primary pools, by shard id. When given, a change of the shard a key routes to
   * (`set`, `repinByHand`, `delete`) first counts the key's rows on the shard it routes to now and
   * is refused with {@link DirectoryRowsLeftError} where there are any, unless the caller passes
   * `rowsLeftOn` (issue #15; the sharding runtime gives them); a pin's change fences the key on that
   * shard first ({@link OwnerChangeFences}: the pools must be of a login that may write
   * `write_fences` and holds `pg_read_all_stats`), and an unpin that changes the route, or of a key
   * with a fence row on any shard, is refused. Without them nothing is counted or fenced.
   */
  readonly shardPools?: ShardPoolsById;
  /**
   * Whether the directory's pins route keys under the configuration (strategy `directory_based`,
   * or `hash_based` with `directory.override_hash`); default `true`, as for the slot map store
   * (the sharding runtime says which). With `override_hash` off (or `range_based`) no pin routes a
   * key: a change of a pin sends no read or write elsewhere, and nothing is counted (issue #15).
   */
  readonly pinsOverrideHash?: boolean;
  /**
   * How long the count of a key's rows on one shard may take (with {@link shardPools}), in ms;
   * default {@link DEFAULT_COUNT_TIMEOUT_MS} (10 s). Past it the change is refused with
   * {@link RowsCountTimeoutError} naming the shard, nothing written: a count waiting on a locked
   * table or a silent shard held the caller's catalog transaction (its snapshot, its read locks of
   * the directory and the slot maps) open with no limit. Whole ms from 1; anything else is refused
   * by the constructor.
   */
  readonly countTimeoutMs?: number;
}

export interface DirectoryListOptions {
  /** Only entries pinned to this shard. */
  readonly shardId?: string;
  /** Keyset pagination: entries with a key after this one (a page's `next`). */
  readonly after?: string;
  /** Entries per page, 1 to {@link MAX_DIRECTORY_PAGE}. Default 1000. */
  readonly limit?: number;
}

/** The most entries one page returns. */
export const MAX_DIRECTORY_PAGE = 1000;

/** One page of the directory, in key order (code points). */
export interface DirectoryPage {
  readonly entries: DirectoryEntry[];
  /** Pass as `after` for the next page; null when this page is the last. */
  readonly next: string | null;
}

type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

interface Row {
  key: string;
  shard_id: string;
  version: string;
  updated_at: Date;
  updated_by: string;
}

const toEntry = (r: Row): DirectoryEntry => ({ key: r.key, shardId: r.shard_id, version: Number(r.version), updatedAt: r.updated_at, updatedBy: r.updated_by });

export class DirectoryStore implements DirectoryLookup {
  private readonly cache: TtlCache<string | null>;
  private readonly shards: ReadonlySet<string> | undefined;
  private readonly shardPools: ShardPoolsById | undefined;
  private readonly pinsOverrideHash: boolean;
  private readonly countTimeoutMs: number;
  /**
   * Bumped by every invalidation. A lookup caches what it read only if none happened while it
   * read: one that read before a write committed and answers after the write was forgotten would
   * otherwise cache the old owner for a whole TTL.
   */
  private generation = 0;

  constructor(
    private readonly pool: Queryable,
    options: DirectoryStoreOptions = {},
  ) {
    this.cache = new TtlCache(options.ttlMs ?? 5_000, options.now ?? Date.now, options.maxCachedKeys);
    this.shards = options.shards ? new Set(options.shards) : undefined;
    this.shardPools = options.shardPools;
    this.pinsOverrideHash = options.pinsOverrideHash ?? true;
    this.countTimeoutMs = countTimeoutOf('DirectoryStoreOptions.countTimeoutMs', options.countTimeoutMs);
  }

  /** The shard `key` is pinned to, or `null`; served from the TTL cache when fresh. */
  async get(rawKey: string): Promise<string | null> {
    const key = canonicalKey(rawKey);
    const cached = this.cache.get(key);
    if (cached !== undefined) return cached.value;
    const generation = this.generation;
    // Sent again on 40001 (readRetried, sqlstate.ts): so are this store's other plain reads on its pool.
    const { rows } = await readRetried(this.pool, this.pool, () => this.pool.query<{ shard_id: string }>('select shard_id from catalog.shard_directory where key = $1', [key]));
    const shardId = rows[0]?.shard_id ?? null;
    if (generation === this.generation) this.cache.set(key, shardId);
    return shardId;
  }

  /**
   * Every directory key whose hash slot (that of its canonical form, keySlot) is `slot`, read from
   * the catalog (never cached; in the caller's transaction when `client` is one): the keys a slot
   * move keeps out of its slot (mover.ts). Read by the directory's slot column (sharding migration
   * 031, unit-rows.ts directoryKeysBySlot: the rows of the slot and those not yet given theirs),
   * not whole: a slot move's plan read the whole directory twice, once inside its transaction,
   * which holds the slot's pins and every map publication off meanwhile (1,000,000 keys at
   * 1,000,000 pins; directory-slot.test.ts, "a slot move's plan ..."). A key stored in another UUID
   * spelling than the canonical one, which routes nothing and keeps no row out of a move, may be
   * missed (directoryKeysBySlot says why).
   */
  async keysInSlot(slot: number, client: Queryable = this.pool): Promise<string[]> {
    const keys = await readRetried(client, this.pool, () => directoryKeysBySlot(client, new Set([slot])));
    return keys.filter((k) => slotOf(canonicalKey(k)) === slot);
  }

  /** The full entry, read from the catalog (never cached). */
  async entry(rawKey: string, client: Queryable = this.pool): Promise<DirectoryEntry | null> {
    const key = canonicalKey(rawKey);
    const { rows } = await readRetried(client, this.pool, () => client.query<Row>('select key, shard_id, version, updated_at, updated_by from catalog.shard_directory where key = $1', [key]));
    return rows[0] ? toEntry(rows[0]) : null;
  }

  /**
   * Pins `key` to `shardId` (insert or update, bumping the entry's version). With `expected`, a
   * compare-and-set: written only over that entry (or, `null`, only where the key has none), else
   * {@link DirectoryVersionConflictError} naming what was found, and nothing written. Without it,
   * the last writer wins (an operator's decision).
   *
   * Refused with {@link DirectoryOwnerKeptError}, nothing written, when the write changes the
   * shard of a key a directory move wrote (or a slot move that kept it out) fence rows for
   * (sharding migration 011), unless the transaction names the writer (the mover's publication
   * does): such a key changes owner through moves, or by {@link repinByHand}.
   *
   * Refused with {@link DirectoryRowsLeftError}, nothing written, by a store given the shards' pools
   * ({@link DirectoryStoreOptions.shardPools}), when the pin routes the key away from the shard it
   * routes to now (its pin, else its slot's owner) while that shard holds rows of the key (issue
   * #15: the catalog cannot see them, and a key with no move history passes its guards), unless
   * `options.rowsLeftOn` says why they may stay (`'checked'`; the mover names its job). Such a
   * store also fences the key on that shard before the count and turns the fence `moved` to
   * `shardId` once the pin is committed (see {@link changeOwner}): the key then stays pinned
   * ({@link delete}).
   *
   * The key's cached lookup is forgotten once the write is made. Made with a `client` in a
   * transaction, the write is not yet visible then, and a lookup of this process may cache the
   * old owner again until the commit: call {@link invalidate} for the key once the transaction
   * has ended (the mover does after each of its writes).
   *
   * @example
   * ```ts
   * const read = await directory.entry('3f2c1d9e-8a7b-4c6d-9e0f-112233445566');
   * await directory.set(read!.key, 'shard_002', 'ops@example.com', undefined, read); // refused if changed since
   * ```
   */
  async set(rawKey: string, shardId: string, by: string, client: Queryable = this.pool, expected?: ExpectedDirectoryEntry, options: OwnerChangeOptions = {}): Promise<DirectoryEntry> {
    // Stored in canonical form, the form the router looks up (a pin under an upper-case UUID would never match).
    const key = canonicalKey(rawKey);
    if (key === '') throw new DirectoryError('directory keys must not be empty');
    if (by.trim() === '') throw new DirectoryError('every directory change records who made it; "by" must not be empty');
    const unknown = this.unconfigured(shardId);
    if (unknown !== null) throw new DirectoryError(unknown);
    // Where the store read the route (it counts and fences), the pin is written only over the entry
    // it read last, unless the caller gave its own: see changeOwner.
    return this.changeOwner('pin', key, client, options, shardId, (c, read) => this.write(key, shardId, by, c, expected === undefined ? read : expected));
  }

  /** {@link set}'s write, with the catalog's checks (compare-and-set, `CAF07`). */
  private async write(key: string, shardId: string, by: string, client: Queryable, expected: ExpectedDirectoryEntry | undefined): Promise<DirectoryEntry> {
    const returning = 'returning key, shard_id, version, updated_at, updated_by';
    const refusedOwnerChange = (err: unknown): never => {
      if (hasSqlState(err, PIN_OWNER_KEPT)) throw new DirectoryOwnerKeptError(key, (err as Error).message, { cause: err });
      throw err;
    };
    // Under READ COMMITTED an update that meets a row changed since its snapshot (committed, or
    // committing while it waits for the row) re-checks its condition on the row as it is now:
    // a change made between the caller's read and this write is never overwritten.
    const { rows } = await (
      expected === undefined
        ? client.query<Row>(
            `insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, $3)
             on conflict (key) do update set shard_id = excluded.shard_id, updated_by = excluded.updated_by,
               updated_at = now(), version = catalog.shard_directory.version + 1
             ${returning}`,
            [key, shardId, by],
          )
        : expected === null
          ? client.query<Row>(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, $3) on conflict (key) do nothing ${returning}`, [key, shardId, by])
          : client.query<Row>(
              `update catalog.shard_directory set shard_id = $2, updated_by = $3, updated_at = now(), version = version + 1
                where key = $1 and shard_id = $4 and version = $5 ${returning}`,
              [key, shardId, by, expected.shardId, expected.version],
            )
    ).catch(refusedOwnerChange);
    this.forget(key);
    if (!rows[0]) throw new DirectoryVersionConflictError(key, expected ?? null, await this.entry(key, client));
    return toEntry(rows[0]);
  }

  /**
   * Makes the change `write` makes (with `client`, or a transaction of its own: see
   * {@link countedOwnerChange}), refused ({@link DirectoryRowsLeftError}, the write rolled back) where
   * it would route `key` away from the shard it routes to now (its entry's shard, else its slot's
   * owner in the latest map, read before the write) while that shard holds rows of the key (issue
   * #15). The catalog's own checks come first: a write it refuses answers its error, and nothing is
   * counted. For a pin, `to` is the shard pinned; for an unpin (`to` undefined), the slot's owner.
   * Nothing is counted without {@link DirectoryStoreOptions.shardPools}, where pins do not route
   * ({@link DirectoryStoreOptions.pinsOverrideHash}), with `rowsLeftOn` (a move job named there is
   * checked against the catalog first), for a key that is no user id (no row is owned by it), or
   * where the shard routed to now has no pool here (not configured).
   */
  private async changeOwner<T>(
    change: 'pin' | 'repin' | 'unpin',
    key: string,
    client: Queryable,
    options: OwnerChangeOptions,
    to: string | undefined,
    write: (c: Queryable, read?: ExpectedDirectoryEntry) => Promise<T>,
  ): Promise<T> {
    // Where pins do not route (override_hash off), a pin decides no key's shard: nothing to count.
    if (this.shardPools === undefined || !this.pinsOverrideHash) return write(client);
    if (options.rowsLeftOn !== undefined) {
      // The caller's word, or a move job the catalog must confirm carries the key to `to`.
      const refused = await refusedRowsLeftOn(client, options, { kind: 'directory', key, to: to ?? '', change });
      if (refused !== null) throw new DirectoryError(`cannot ${change} key ${key}${to === undefined ? '' : ` to ${to}`}: ${refused}. Nothing was written`);
      return write(client);
    }
    if (uuidForm(key) !== key) return write(client);
    const shardPools = this.shardPools;
    // The connection the change reads its route with (its transaction's, where it holds one).
    let routeReader: Queryable = client;
    // The entry as the route was last read, before the write: the write is made only over it.
    // Counted and fenced on the shard that read named, a change committed by another session
    // since (one that fences nothing: an unpin, a pin that keeps the route) would otherwise be
    // overwritten, the key then routing where a fence row of that change refuses its writes, and
    // the writes acknowledged under that change out of every reader's sight.
    let read: ExpectedDirectoryEntry | undefined;
    const sameRoute = (before: Awaited<ReturnType<DirectoryStore['routeOf']>>, now: Awaited<ReturnType<DirectoryStore['routeOf']>>): boolean =>
      before === null || now === null
        ? before === now
        : before.from === now.from && before.next === now.next && before.entry?.version === now.entry?.version && before.entry?.shardId === now.entry?.shardId;
    // The key's slot's owner in the latest map, read before the route: a map published after it
    // (its slot given away) is found by the read under the slot's lock after the write.
    let ownerRead: string | null = null;
    return countedOwnerChange(client, {
      route: async (c) => {
        routeReader = c;
        ownerRead = await this.slotOwnerOf(key, c);
        const entry = await this.entry(key, c);
        read = entry === null ? null : { shardId: entry.shardId, version: entry.version };
        return this.routeOf(change, key, c, to, { entry, slotOwner: ownerRead });
      },
      write: async (c) => {
        const done = await write(c, read);
        // The slot's lock, then the slot's owner and move jobs read again: a publication by hand
        // or a slot move's plan that read the slot's pinned keys before this write commits either
        // holds the lock (waited for, then its change read here) or waits for this pin's commit
        // and reads it (sharding migration 017).
        await this.refuseSlotChangedMeanwhile(change, key, c, ownerRead);
        // Read in the write's transaction, after it: a move planned and committed before this statement is seen.
        await this.refuseSlotMoveMembership(change, key, c);
        return done;
      },
      refuse: async (route) => {
        await this.refuseRowsLeft(change, key, route);
        // Judged on the route as it is once counted: a pin changed by another session during the
        // count is counted again where it routes now (countedOwnerChange), which answers first.
        if (change === 'unpin' && sameRoute(route, await this.routeOf(change, key, routeReader, to))) await this.refuseUnfenceableUnpin(key, route);
      },
      // A pin's change of route fences the key on the shard it routes to now, as a slot's does
      // (issue #15): a writer of the key there that routed with the old pin (or by hash), in flight
      // during the count or sent later by a stale directory cache, is refused (CAF01, then CAF02
      // and re-routed) instead of acknowledged where no reader looks. The `moved` row it leaves
      // decides for the key there over its slot's rows, so the key stays pinned (see
      // refuseUnfenceableUnpin). An unpin is not fenced: it is refused where it changes the route.
      ...(change === 'unpin'
        ? {}
        : {
            fences: {
              fence: new OwnerChangeFences(shardPools, this.countTimeoutMs, change === 'pin' ? `cannot pin key ${key} to ${to ?? '?'}` : `cannot repin key ${key} to ${to ?? '?'} by hand`, this.pool),
              of: (route: { from: string; next: string } | null) => (route === null ? [] : [{ kind: 'directory' as const, unitId: key, from: route.from, to: route.next, excludedKeys: [] }]),
              version: (done: T) => (done as DirectoryEntry).version,
            },
          }),
      // A pin's write has no check of its own but a set's compare-and-set: a change committed by
      // another session while the rows were counted has them counted again (see countedOwnerChange).
      sameRoute,
    });
  }

  /** The owner of `key`'s slot in the latest map read with `c` (null without a map). */
  private async slotOwnerOf(key: string, c: Queryable): Promise<string | null> {
    const { rows } = await c.query<{ owner: string | null }>('select assignments[$1::int + 1] as owner from catalog.slot_maps order by version desc limit 1', [slotOf(key)]);
    return rows[0]?.owner ?? null;
  }

  /**
   * Locks `key`'s slot's row of `catalog.slot_pin_locks` FOR SHARE with `c`, the pin's (or unpin's)
   * transaction, after its write (held to its end; sharding migration 017), then refuses it where the
   * slot's owner is no longer `ownerRead`, the one its route was read with: a map published by hand
   * (or a move's flip) that gave the slot away meanwhile read the slot's pinned keys without this
   * one, so its `moved` row on the old owner does not keep the key out, and the key pinned there
   * would have every write refused for good (CAF02, "routing is not converging"), an unpinned one
   * route by hash to a shard marked `moved` for it; and its count was made against the old map. A
   * publication by hand (or a slot move's plan) holding the lock is waited for, at
   * most {@link SLOT_PIN_LOCK_WAIT_MS} (or the count bound, if shorter), then refused.
   */
  private async refuseSlotChangedMeanwhile(change: 'pin' | 'repin' | 'unpin', key: string, c: Queryable, ownerRead: string | null): Promise<void> {
    const what = change === 'pin' ? 'pin' : change === 'repin' ? 'repin by hand' : 'unpin';
    const slot = slotOf(key);
    const waitMs = Math.min(SLOT_PIN_LOCK_WAIT_MS, this.countTimeoutMs);
    const refusal = await lockSlotsForPins(c, [slot], 'share', waitMs, `cannot ${what} key ${key}`);
    if (refusal !== null) {
      throw new DirectoryError(
        `cannot ${what} key ${key}: ${slotLockRefused(refusal, {
          other: `another change of its slot ${slot} (a slot map published by hand, or a slot move being planned)`,
          waitMs,
          rule: "a pin or unpin may not commit unseen by a change of its slot's pinned keys",
          nothing: 'written',
          again: 'try again once that change has ended',
        })}`,
      );
    }
    const owner = await this.slotOwnerOf(key, c);
    if (owner === ownerRead) return;
    throw new DirectoryError(
      `cannot ${what} key ${key}: its slot ${slot} changed owner from ${ownerRead ?? '(no map)'} to ${owner ?? '(no map)'} while the ${what} was made (a slot map published meanwhile, which read the slot's pinned keys as they were before this change: ${change === 'unpin' ? "the key unpinned now would route with its slot to a shard that map's change marked 'moved' for it" : "the key pinned now would be refused for good where that map's change left a 'moved' row of the slot"}, or its rows counted against the old map; issue #15; docs/sharding-spec.md section 9, "A pin racing a change of its slot"). Nothing was written: read the key's route again and try again`,
    );
  }

  /**
   * Refuses a pin or repin of a user key whose slot has an unfinished slot move that does not keep
   * the key out (`excluded_keys`, read when the move was planned), and an unpin of one it keeps
   * out: such a move copies and cleans up the slot by those keys, so it would take the newly pinned
   * key's rows away from the shard its pin names (copied to the target, deleted on the source), or
   * leave the newly unpinned key's rows on the source once its slot routes it to the target: the
   * key's acknowledged rows out of every reader's sight, whether or not the change moves its route
   * (owner-change-fenced-directory.test.ts, "a key pinned or unpinned by hand while its slot has a
   * move planned"). Read with `c`, the change's transaction, after its write and the slot's lock
   * ({@link refuseSlotChangedMeanwhile}): a plan holding the lock has committed (or given up) by
   * now, and one that locks it after waits for this change's commit and reads its pin
   * (owner-change-pin-slot-race.test.ts).
   */
  private async refuseSlotMoveMembership(change: 'pin' | 'repin' | 'unpin', key: string, c: Queryable): Promise<void> {
    const { rows } = await c.query<{ id: string; from_shard: string; to_shard: string; state: string; kept_out: boolean }>(
      `select id::text, from_shard, to_shard, state, $2 = any(excluded_keys) as kept_out from catalog.move_jobs
        where kind = 'slot' and unit_id = $1 and state not in ('done', 'failed', 'cancelled') order by id limit 1`,
      [String(slotOf(key)), key],
    );
    const job = rows[0];
    if (job === undefined || job.kept_out === (change !== 'unpin')) return;
    const what = change === 'pin' ? 'pin' : change === 'repin' ? 'repin by hand' : 'unpin';
    const harm =
      change === 'unpin'
        ? `the move keeps the key out of its copy and clean-up (it was pinned when the move was planned): unpinned, the key would route with its slot to ${job.to_shard} once the move flips while its rows stay on ${job.from_shard}`
        : `the move copies and cleans up the key's rows with the slot (it was not pinned when the move was planned): pinned, its rows would be copied to ${job.to_shard} and deleted on ${job.from_shard} whatever its pin names`;
    throw new DirectoryError(
      `cannot ${what} key ${key}: its slot ${slotOf(key)} is being moved by move job #${job.id} (${job.from_shard} to ${job.to_shard}, ${job.state}), and ${harm}, out of every reader's sight (issue #15; docs/sharding-spec.md section 9, "A pin changed by hand fences the old owner"). Try again once the move has ended (or cancel it). Nothing was written`,
    );
  }

  /** Where `key` routes now and where the change would route it (null where it does not move it). */
  private async routeOf(
    change: 'pin' | 'repin' | 'unpin',
    key: string,
    client: Queryable,
    to: string | undefined,
    known?: { readonly entry: DirectoryEntry | null; readonly slotOwner: string | null },
  ): Promise<{ from: string; next: string; entry: DirectoryEntry | null } | null> {
    const entry = known === undefined ? await this.entry(key, client) : known.entry;
    if (change === 'unpin' && entry === null) return null;
    const slotOwner = known === undefined ? await this.slotOwnerOf(key, client) : known.slotOwner;
    const from = entry?.shardId ?? slotOwner;
    const next = change === 'unpin' ? slotOwner : (to ?? null);
    if (from === null || next === null || from === next) return null;
    return { from, next, entry };
  }


  /** Counts `key`'s rows where it routes now ({@link routeOf}) and refuses the change where there are any. */
  private async refuseRowsLeft(change: 'pin' | 'repin' | 'unpin', key: string, route: { from: string; next: string; entry: DirectoryEntry | null } | null): Promise<void> {
    if (route === null) return;
    const { from, next, entry } = route;
    const pool = this.shardPools?.get(from);
    if (pool === undefined) return;
    const refused = change === 'pin' ? `cannot pin key ${key} to ${next}` : change === 'repin' ? `cannot repin key ${key} to ${next} by hand` : `cannot unpin key ${key}`;
    const rows = await boundedCount(pool, from, this.countTimeoutMs, refused, (c) => keyRowsOn(c, key));
    if (rows.length === 0) return;
    const held = `its rows are on ${from} (${describeRows(rows)}), where the catalog routes it now (${entry === null ? `by hash: slot ${slotOf(key)}` : `its pin, version ${entry.version}`})`;
    const harm = `would send its reads and writes to ${next} and leave those rows out of their sight: the key split over two shards, and a later move of the key or its slot could delete one side (issue #15; docs/sharding-spec.md section 9, "An owner changed outside a move")`;
    const move = `POST /shards/moves {"kind":"directory","unit":"${key}","to":"${next}"}`;
    const message =
      change === 'pin'
        ? `cannot pin key ${key} to ${next}: ${held}; the pin ${harm}. Move it instead (${move}), which takes its rows along; or, where they are accounted for (checked by hand), pass { rowsLeftOn: 'checked' }. Nothing was written`
        : change === 'repin'
          ? `cannot repin key ${key} to ${next} by hand: ${held}; the pin ${harm}. Where a move can, move it (${move}); deciding its owner by hand, check first that ${next} holds its rows and that its write_fences row of the key, if any, is open, then pass { rowsLeftOn: 'checked' }. Nothing was written`
          : `cannot unpin key ${key}: ${held}; unpinned, it routes by hash to ${next} (slot ${slotOf(key)}), which ${harm}. Keep the pin (a directory move changes its owner: POST /shards/moves), or, where its rows are accounted for (checked by hand), pass { rowsLeftOn: 'checked' }. Nothing was changed`;
    throw new DirectoryRowsLeftError(key, from, next, rows, message);
  }

  /**
   * Refuses an unpin a fence cannot make sound (issue #15), where the key's rows were not found on
   * the pin's shard ({@link refuseRowsLeft} counts those first):
   * - where it changes the key's route (`route` not null: its pin names another shard than its
   *   slot's owner, and that shard has a pool here): a writer of the key that routed with the pin
   *   (in flight during the count, or sent later by a stale directory cache) was acknowledged on the
   *   pin's shard, out of every reader's sight. Fenced, that shard's `moved` row of the key would
   *   outlive the pin and decide for the key there over its slot's rows: once the slot moved to
   *   that shard, every write of the key routed there by hash was refused for good (`CAF02`,
   *   "routing is not converging"), as for a directory move's key unpinned (`CAF06`). A pin to the
   *   slot's owner routes the key there as the unpin would, fenced, and keeps it pinned;
   * - where a shard holds a `directory` row of the key (a hand change's `moved` row, left by a pin
   *   changed earlier): unpinned, that row would decide for the key there as above, and an `open`
   *   one would let its writes through while its slot is fenced by a move there.
   * Every shard with a pool is read, each within the count's bound.
   */
  private async refuseUnfenceableUnpin(key: string, route: { from: string; next: string; entry: DirectoryEntry | null } | null): Promise<void> {
    const pools = this.shardPools;
    if (pools === undefined) return;
    const refused = `cannot unpin key ${key}`;
    if (route !== null && pools.get(route.from) !== undefined) {
      const { from, next } = route;
      throw new DirectoryUnpinRefusedError(
        key,
        `${refused}: unpinned, it would route by hash to ${next} (slot ${slotOf(key)}) instead of ${from}, its pin, version ${route.entry?.version ?? '?'}, and nothing can fence the change: a writer of the key that still routes with the pin (in flight now, or with a directory cache up to directory.cache_ttl_seconds old, or another language's router) would be acknowledged on ${from}, out of every reader's sight, and a fence row left on ${from} would decide for the key there for good once unpinned (issue #15; docs/sharding-spec.md section 9, "An owner changed outside a move"). Pin it to its slot's owner instead, which routes it the same and is fenced: set('${key}', '${next}', ...); or move it there (POST /shards/moves {"kind":"directory","unit":"${key}","to":"${next}"}); the key then stays pinned. Nothing was changed`,
      );
    }
    const held: string[] = [];
    for (const [shard, pool] of pools) {
      const rows = await boundedCount(pool, shard, this.countTimeoutMs, refused, async (c) =>
        (await c.query<{ state: string; moved_to: string | null; job_id: string | null }>(`select state, moved_to, job_id::text from write_fences where kind = 'directory' and unit_id = $1`, [key])).rows,
      );
      for (const r of rows) held.push(`${shard} ('${r.state}'${r.moved_to === null ? '' : ` to ${r.moved_to}`}, ${r.job_id === null ? 'a hand change' : `move job #${r.job_id}`})`);
    }
    if (held.length === 0) return;
    throw new DirectoryUnpinRefusedError(
      key,
      `${refused}: a write_fences row of the key is on ${held.join(', ')}, left by an earlier change of its pin: it decides for the key on that shard over its slot's rows, so the key must stay pinned (unpinned, it would be refused there for good once its slot went to that shard, or let through while its slot is fenced there; issue #15; docs/sharding-spec.md section 9, "An owner changed outside a move"). Keep the pin (pin it to its slot's owner to route it as by hash). Nothing was changed`,
    );
  }

  /** Why `shardId` may not be written, when this store knows the configured shards and it is not one; else null. */
  private unconfigured(shardId: string): string | null {
    return this.shards && !this.shards.has(shardId) ? `shard ${shardId} is not configured (known: ${[...this.shards].join(', ')})` : null;
  }

  /**
   * A deliberate decision of a key's owner by hand (`catalog.repin_by_hand`, sharding migration
   * 011): pins `key` to `shardId` whatever it was pinned to, past the guard on the shards of moved
   * keys, recording in the entry's `updated_by` the catalog login and `reason`. For the cases the
   * spec (section 9) and the mover's errors say "the key's owner must be decided by hand". The
   * catalog cannot see the shards: check first that `shardId` holds the key's rows and that its
   * `write_fences` row of the key (kind `directory`), if any, is `open`. Refused with a
   * {@link DirectoryError}, nothing written, for an empty key or reason and a blank shard, and by
   * the catalog (sharding migration 013, the catalog's message) for a shard that is not of a shard
   * id's form or that no slot map, directory entry or move job names (a typo). Refused with a
   * {@link DirectoryRowsLeftError} as {@link set} is, by a store given the shards' pools, where the
   * shard the key routes to now holds rows of it, unless `options.rowsLeftOn` is `'checked'`.
   *
   * @example
   * ```ts
   * await directory.repinByHand('3f2c1d9e-8a7b-4c6d-9e0f-112233445566', 'shard_002', 'move job #41 failed: rows are on shard_002 (ticket OPS-7)');
   * ```
   */
  async repinByHand(rawKey: string, shardId: string, reason: string, client: Queryable = this.pool, options: OwnerChangeOptions = {}): Promise<DirectoryEntry> {
    const key = canonicalKey(rawKey);
    const wrong = [
      key === '' ? 'the key must not be empty' : null,
      shardId.trim() === '' ? 'the shard must not be empty' : this.unconfigured(shardId),
      reason.trim() === '' ? 'a pin changed by hand records why; "reason" must not be empty' : null,
    ].filter((w): w is string => w !== null);
    if (wrong.length > 0) throw new DirectoryError(`cannot repin ${key || 'the key'} by hand: ${wrong.join('; ')}`);
    return this.changeOwner('repin', key, client, options, shardId, async (c, read) => {
      if (read !== undefined) {
        // Made only over the entry the route was read with (see changeOwner), locked until the
        // transaction ends, so no change of it commits between this check and the repin. Left
        // open: where there was none, a pin committed by another session between this read and
        // the catalog function's insert (no row to lock) is overwritten by it.
        const { rows: held } = await c.query<Row>('select key, shard_id, version, updated_at, updated_by from catalog.shard_directory where key = $1 for update', [key]);
        const now = held[0] ? toEntry(held[0]) : null;
        if ((now === null) !== (read === null) || (now !== null && read !== null && (now.shardId !== read.shardId || now.version !== read.version))) {
          throw new DirectoryVersionConflictError(key, read, now);
        }
      }
      const { rows } = await c
        .query<Row>('select key, shard_id, version, updated_at, updated_by from catalog.repin_by_hand($1, $2, $3)', [key, shardId, reason])
        .catch((err: unknown) => {
          // The catalog's own checks (sharding migration 013): a shard it does not know, say.
          if (hasSqlState(err, INVALID_PARAMETER_VALUE)) throw new DirectoryError((err as Error).message, { cause: err });
          throw err;
        });
      this.forget(key);
      return toEntry(rows[0] as Row);
    });
  }

  /**
   * Removes the pin; returns whether there was one. The key then follows the fallback. With a
   * `client` in a transaction, see {@link set} on the cache.
   *
   * Refused with {@link DirectoryPinKeptError}, nothing changed, for a key a directory move wrote
   * (or a slot move that kept it out) fence rows for (the catalog's trigger, sharding migration
   * 010): such a key stays pinned, and
   * changes owner through moves. Inside a caller's transaction the refusal aborts it, as any error.
   * Refused with {@link DirectoryRowsLeftError}, nothing changed, by a store given the shards' pools,
   * when the pin names another shard than the key's slot's owner and that shard holds rows of the
   * key (unpinned, the key would route by hash away from them), unless `options.rowsLeftOn` is given.
   * Refused with {@link DirectoryUnpinRefusedError}, nothing changed, by such a store, where the
   * unpin would change the key's route at all (nothing can fence it soundly: pin the key to its
   * slot's owner instead, or move it), or where any shard holds a `directory` fence row of the key
   * (left by an earlier change of its pin: the key must stay pinned; issue #15).
   */
  async delete(rawKey: string, client: Queryable = this.pool, options: OwnerChangeOptions = {}): Promise<boolean> {
    const key = canonicalKey(rawKey);
    return this.changeOwner('unpin', key, client, options, undefined, async (c, read) => {
      // Where the route was read (see changeOwner): no pin then, none removed (a pin made since is
      // another change, after this one); else only the pin as read, a pin changed since refused.
      if (read === null) return false;
      const { rowCount } = await (
        read === undefined
          ? c.query('delete from catalog.shard_directory where key = $1', [key])
          : c.query('delete from catalog.shard_directory where key = $1 and shard_id = $2 and version = $3', [key, read.shardId, read.version])
      ).catch((err: unknown) => {
        if (hasSqlState(err, PIN_KEPT)) throw new DirectoryPinKeptError(key, (err as Error).message, { cause: err });
        throw err;
      });
      this.forget(key);
      if (read !== undefined && (rowCount ?? 0) === 0) throw new DirectoryVersionConflictError(key, read, await this.entry(key, c));
      return (rowCount ?? 0) > 0;
    });
  }

  /**
   * One page of entries in key order (byte order of the UTF-8 text, which is code-point order),
   * optionally of one shard. A full page says where the next one starts; nothing is ever cut
   * off silently.
   *
   * @example
   * ```ts
   * for (let after: string | undefined; ; ) {
   *   const { entries, next } = await directory.page({ shardId: 'shard_002', ...(after ? { after } : {}) });
   *   handle(entries);
   *   if (next === null) break;
   *   after = next;
   * }
   * ```
   */
  async page(options: DirectoryListOptions = {}): Promise<DirectoryPage> {
    const limit = options.limit ?? MAX_DIRECTORY_PAGE;
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_DIRECTORY_PAGE) throw new DirectoryError(`a directory page holds 1 to ${MAX_DIRECTORY_PAGE} entries, not ${limit}`);
    // One row more than the page tells whether another page follows.
    const { rows } = await readRetried(this.pool, this.pool, () =>
      this.pool.query<Row>(
        `select key, shard_id, version, updated_at, updated_by from catalog.shard_directory
         where ($1::text is null or shard_id = $1) and ($2::text is null or key collate "C" > $2)
         order by key collate "C" limit $3`,
        [options.shardId ?? null, options.after ?? null, limit + 1],
      ),
    );
    const entries = rows.slice(0, limit).map(toEntry);
    return { entries, next: rows.length > limit ? (entries[entries.length - 1]?.key ?? null) : null };
  }

  /** Every entry (optionally of one shard), read a page at a time. */
  async all(options: Pick<DirectoryListOptions, 'shardId'> = {}): Promise<DirectoryEntry[]> {
    const out: DirectoryEntry[] = [];
    for (let after: string | undefined; ; ) {
      const { entries, next } = await this.page({ ...options, ...(after === undefined ? {} : { after }) });
      out.push(...entries);
      if (next === null) return out;
      after = next;
    }
  }

  /** Forgets cached lookups (one key, in any spelling, or all), e.g. after another process moved a key. */
  invalidate(rawKey?: string): void {
    // The cache holds canonical keys: forgetting `rawKey` as spelled would forget nothing.
    this.forget(rawKey === undefined ? undefined : canonicalKey(rawKey));
  }

  /** Forgets a canonical key (or all), and what lookups still reading would cache (see {@link generation}). */
  private forget(key?: string): void {
    this.generation += 1;
    this.cache.invalidate(key);
  }
}
