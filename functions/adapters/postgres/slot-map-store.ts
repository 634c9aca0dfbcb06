/**
 * Versioned slot maps in the catalog database (`catalog.slot_maps`, migration set `sharding`).
 * Every published map is kept, so the history of who moved which slots, and why, is a query.
 * Publishing is optimistic: version `n + 1` is written only if the latest is `n`, in one
 * statement, so two publishers racing for the same version cannot both win.
 *
 * @example
 * ```ts
 * const store = new SlotMapStore(catalogPool);
 * await store.initialise(buildSlotMap(weights), 'deploy', 'initial map');
 * const current = await store.current();
 * await store.publish(moveSlots(current, [42], 'shard_003'), 'mover', 'move slot 42');
 * ```
 */
import type pg from 'pg';
import { SlotMapError, SlotMapVersionConflictError } from '../../core/sharding/errors.js';
import { parseSlotMap, type SlotMap } from '../../core/sharding/slot-map.js';
import { hasSqlState, INVALID_PARAMETER_VALUE, readRetried, SERIALIZATION_FAILURE, SLOT_OWNER_KEPT, UNIQUE_VIOLATION } from './sqlstate.js';
import { slotOf } from '../../core/sharding/hash.js';
import { boundedCount, countedOwnerChange, OwnerChangeFences, countTimeoutOf, describeRows, lockSlotsForPins, pinnedKeysOf, refusedRowsLeftOn, SLOT_PIN_LOCK_WAIT_MS, slotLockRefused, slotRowsOn, type OwnerChangeOptions, type ShardPoolsById, type TableRows } from './unit-rows.js';

/** A pool, or a client inside a caller's transaction (to publish atomically with other catalog writes). */
export type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

/** A published map with who published it and why. */
export interface SlotMapRecord {
  readonly map: SlotMap;
  readonly createdAt: Date;
  readonly createdBy: string;
  readonly reason: string;
}

/** A published version without its assignments. */
export interface SlotMapVersionInfo {
  readonly version: number;
  readonly createdAt: Date;
  readonly createdBy: string;
  readonly reason: string;
}

interface Row {
  version: number;
  slot_count: number;
  assignments: string[];
  created_at: Date;
  created_by: string;
  reason: string;
}

const COLUMNS = 'version, slot_count, assignments, created_at, created_by, reason';

function toRecord(row: Row): SlotMapRecord {
  return {
    map: { version: row.version, slotCount: row.slot_count, assignments: row.assignments },
    createdAt: row.created_at,
    createdBy: row.created_by,
    reason: row.reason,
  };
}

/**
 * The catalog refused a map that changes the owner of a slot a slot move (finished, or past its flip) wrote lasting
 * fence rows for (SQLSTATE `CAF08`, sharding migration 012): those rows decide for the slot on
 * their shards whatever the map says (the old owner's `moved` row refuses it, `CAF02`; a shard
 * that never held it takes its writes while its rows are elsewhere). Nothing was published. To
 * give the slot another owner, move it; where its owner must be decided by hand,
 * {@link SlotMapStore.publishByHand}. Since sharding migration 013 also a map that changes the owner
 * of a slot whose slot move is unfinished and has not flipped (a map giving it to the move's target
 * sent writes there that the move's copy then deleted): cancel the move or let it finish first. The
 * message is the catalog's, naming the slot, both shards and the move jobs.
 */
export class SlotMapOwnerKeptError extends SlotMapError {
  override readonly name = 'SlotMapOwnerKeptError';
}

/** A slot whose owner a map changes while its old owner holds rows of it (see {@link SlotMapRowsLeftError}). */
export interface SlotRowsLeft {
  readonly slot: number;
  readonly from: string;
  readonly to: string;
  readonly rows: readonly TableRows[];
}

/**
 * A map would change the owner of slots whose old owner holds rows of them (issue #15): slots
 * with no move history, so the catalog's guard lets the map through, but their rows would stay on
 * the old owner, out of their readers' sight on the new one, their new writes landing there (each
 * slot split over two shards; a later move of the slot could delete one side). Counted by a store
 * given the shards' pools ({@link SlotMapStoreOptions.shardPools}), leaving out the rows of keys
 * the directory pins where pins route ({@link SlotMapStoreOptions.pinsOverrideHash}). Nothing was
 * published. Move the slots instead (`POST /shards/moves`), or pass `{ rowsLeftOn: 'checked' }`
 * once their rows are accounted for.
 */
export class SlotMapRowsLeftError extends SlotMapError {
  override readonly name = 'SlotMapRowsLeftError';
  constructor(
    readonly version: number,
    readonly slots: readonly SlotRowsLeft[],
    message: string,
  ) {
    super(message);
  }
}

export interface SlotMapStoreOptions {
  /**
   * The shards' primary pools, by shard id. When given, `publish` and `publishByHand` first count,
   * on each old owner, the rows of every slot the map gives to another shard (less the rows of keys
   * the directory pins, where {@link pinsOverrideHash}) and refuse the map with
   * {@link SlotMapRowsLeftError} where there are any, unless the caller passes `rowsLeftOn` (issue
   * #15; the sharding runtime gives them). Without them nothing is counted.
   */
  readonly shardPools?: ShardPoolsById;
  /**
   * Whether the directory's pins override hash routing under the configuration (strategy
   * `directory_based`, or `hash_based` with `directory.override_hash`); default `true`. Only then
   * does the count leave out the rows of keys the directory pins: with `override_hash` off a pinned
   * key routes by its slot like any other, and its rows go with the slot's owner (the sharding
   * runtime says which).
   */
  readonly pinsOverrideHash?: boolean;
  /**
   * How long each count of the changed slots' rows on one old owner may take (with
   * {@link shardPools}), in ms; default {@link DEFAULT_COUNT_TIMEOUT_MS} (10 s). Past it the map is
   * refused with {@link RowsCountTimeoutError} naming the shard, nothing published: a count waiting
   * on a locked table or a silent shard held the caller's catalog transaction (its snapshot, its
   * read locks of the slot maps and the directory) open with no limit. Whole ms from 1; anything
   * else is refused by the constructor.
   */
  readonly countTimeoutMs?: number;
}

/** The most slots a refusal names one by one. */
const SLOTS_NAMED = 10;

function requireText(what: string, value: string): void {
  if (value.trim() === '') throw new SlotMapError(`${what} must not be empty: every slot map records who published it and why`);
}

export class SlotMapStore {
  private readonly shardPools: ShardPoolsById | undefined;
  private readonly pinsOverrideHash: boolean;
  private readonly countTimeoutMs: number;

  constructor(
    private readonly pool: Queryable,
    options: SlotMapStoreOptions = {},
  ) {
    this.shardPools = options.shardPools;
    this.pinsOverrideHash = options.pinsOverrideHash ?? true;
    this.countTimeoutMs = countTimeoutOf('SlotMapStoreOptions.countTimeoutMs', options.countTimeoutMs);
  }

  /** The latest map. Throws {@link SlotMapError} when none was ever published (call {@link initialise}). */
  async current(client: Queryable = this.pool): Promise<SlotMap> {
    const latest = await this.latest(client);
    if (latest === null) throw new SlotMapError('no slot map has been published yet; initialise one from the configured shards');
    return latest.map;
  }

  /** The latest map with its metadata, or `null` before the first one. */
  async latest(client: Queryable = this.pool): Promise<SlotMapRecord | null> {
    // Sent again on 40001 on the store's own pool (readRetried): so are its other plain reads.
    const { rows } = await readRetried(client, this.pool, () => client.query<Row>(`select ${COLUMNS} from catalog.slot_maps order by version desc limit 1`));
    return rows[0] ? toRecord(rows[0]) : null;
  }

  /**
   * The latest map if it is newer than `knownVersion`, else `null`: a router can poll this
   * cheaply (an index probe, no 4096-entry array unless something changed).
   *
   * @example
   * ```ts
   * const next = await store.currentIfNewer(router.slotMap.version);
   * if (next) router.setSlotMap(next);
   * ```
   */
  async currentIfNewer(knownVersion: number, client: Queryable = this.pool): Promise<SlotMap | null> {
    const { rows } = await readRetried(client, this.pool, () => client.query<Row>(`select ${COLUMNS} from catalog.slot_maps where version > $1 order by version desc limit 1`, [knownVersion]));
    return rows[0] ? toRecord(rows[0]).map : null;
  }

  /**
   * Who owns `slot` in the latest map, with that map's version, without reading its other
   * assignments; `null` before the first map.
   *
   * @example
   * ```ts
   * await store.ownerOf(42); // { shardId: 'shard_002', version: 7 }
   * ```
   */
  async ownerOf(slot: number, client: Queryable = this.pool): Promise<{ shardId: string | null; version: number } | null> {
    const { rows } = await readRetried(client, this.pool, () =>
      client.query<{ version: number; owner: string | null }>('select version, assignments[$1::int + 1] as owner from catalog.slot_maps order by version desc limit 1', [slot]),
    );
    return rows[0] ? { shardId: rows[0].owner, version: Number(rows[0].version) } : null;
  }

  /** One version of the map, or `null` if it does not exist. */
  async get(version: number, client: Queryable = this.pool): Promise<SlotMapRecord | null> {
    const { rows } = await readRetried(client, this.pool, () => client.query<Row>(`select ${COLUMNS} from catalog.slot_maps where version = $1`, [version]));
    return rows[0] ? toRecord(rows[0]) : null;
  }

  /** Versions newest first, without their assignments. */
  async history(limit = 50, client: Queryable = this.pool): Promise<SlotMapVersionInfo[]> {
    const { rows } = await readRetried(client, this.pool, () =>
      client.query<Omit<Row, 'assignments' | 'slot_count'>>('select version, created_at, created_by, reason from catalog.slot_maps order by version desc limit $1', [limit]),
    );
    return rows.map((r) => ({ version: r.version, createdAt: r.created_at, createdBy: r.created_by, reason: r.reason }));
  }

  /**
   * Publishes `next`, which must be exactly one version after the latest and keep its slot
   * count. Throws {@link SlotMapVersionConflictError} otherwise (someone else published
   * first: reload, re-plan, retry) and {@link SlotMapError} for a malformed map. Throws
   * {@link SlotMapOwnerKeptError} when `next` changes the owner of a slot a slot move (finished, or past its flip)
   * wrote lasting fence rows for (sharding migration 012), or whose slot move is unfinished (013), unless the caller's transaction names
   * its writer (a mover's flip does; a recovery by hand is {@link publishByHand}). Throws
   * {@link SlotMapRowsLeftError}, nothing published, by a store given the shards' pools
   * ({@link SlotMapStoreOptions.shardPools}), when `next` gives a slot to another shard while its
   * old owner holds rows of it (less those of keys the directory pins; issue #15: the catalog cannot
   * see them, and a slot with no move history passes its guard), unless `options.rowsLeftOn` says
   * why they may stay (`'checked'`; the mover's flip names its job). Without `rowsLeftOn`, each
   * changed slot is fenced on its old owner before the count and its fence turned `moved` to the
   * new owner once the map is committed ({@link OwnerChangeFences}): a write sent there by an older
   * map is refused, never acknowledged where no reader looks; `shardPools` must then be of a login
   * that may write `write_fences` and holds `pg_read_all_stats` (the mover's, or the shards' owner);
   * a slot whose row is `fenced` already (another owner change in flight) on its old owner, or
   * whose row on its new owner would refuse its writes (a move's `moved` row, say), refuses the change.
   */
  async publish(next: SlotMap, by: string, reason: string, client: Queryable = this.pool, options: OwnerChangeOptions = {}): Promise<SlotMapRecord> {
    const map = parseSlotMap(next);
    requireText('by', by);
    requireText('reason', reason);
    return this.changeOwners(map, client, options, false, async (c) => {
      // The assignments come back from `map`, not from the database: a mover publishes while it
      // holds writes fenced, and the 4096-entry array would cross the wire a second time.
      const rows = await this.inserted(map, c, () =>
        c.query<Omit<Row, 'assignments'>>(
          `insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason)
           select $1, $2, $3, $4, $5
           where $1 = coalesce((select max(version) from catalog.slot_maps), 0) + 1
             and $2 = coalesce((select slot_count from catalog.slot_maps order by version desc limit 1), $2)
           returning version, slot_count, created_at, created_by, reason`,
          [map.version, map.slotCount, map.assignments, by, reason],
        ),
      );
      return this.published(map, rows, c);
    });
  }

  /**
   * Publishes `next` as a deliberate decision of slots' owners by hand, through
   * `catalog.publish_slot_map_by_hand` (sharding migration 012; granted to `ca_dms_control`): the
   * catalog does not refuse a change of the owner of a moved slot (but of a slot whose slot move is
   * unfinished and has not flipped, unless `client`'s transaction names the move first:
   * `set local ca_dms.override_moves = '<job id>'`, sharding migration 013), and records `<login> by hand`
   * as the publisher with `reason`. The same compare-and-set as {@link publish}. The catalog cannot
   * see the shards: check first that each changed slot's new owner holds its rows and that its
   * `write_fences` row of the slot, if any, is `open`, or `moved` by a hand change or a finished
   * move, which a store given the shards' pools deletes itself once the map is committed (not
   * given a client in a transaction of the caller's: delete it once that has committed;
   * docs/sharding-spec.md section 9). An owner
   * that is not of a shard id's form, or that no slot map, directory entry or move job names (a
   * typo), is refused by the catalog (sharding migration 013) with a {@link SlotMapError} carrying
   * its message; nothing is published. Refused with a {@link SlotMapRowsLeftError} as {@link publish}
   * is, by a store given the shards' pools, unless `options.rowsLeftOn` is `'checked'`.
   *
   * @example
   * ```ts
   * await store.publishByHand(moveSlots(await store.current(), [42], 'shard_002'), 'restored from backup (OPS-7)');
   * ```
   */
  async publishByHand(next: SlotMap, reason: string, client: Queryable = this.pool, options: OwnerChangeOptions = {}): Promise<SlotMapRecord> {
    const map = parseSlotMap(next);
    if (reason.trim() === '') throw new SlotMapError('a slot map published by hand records why; "reason" must not be empty');
    return this.changeOwners(map, client, options, true, async (c) => {
      const rows = await this.inserted(map, c, () =>
        c.query<Omit<Row, 'assignments'>>('select version, slot_count, created_at, created_by, reason from catalog.publish_slot_map_by_hand($1, $2, $3)', [map.version, map.assignments, reason]),
      );
      return this.published(map, rows, c);
    });
  }

  /**
   * Publishes `map` through `write` (with `client`, or a transaction of its own: see
   * {@link countedOwnerChange}), refused ({@link SlotMapRowsLeftError}, the insert rolled back)
   * where it changes, against the latest map read before the insert, the owner of slots whose old
   * owner holds rows of them, less the rows of keys the directory pins where its pins override hash
   * routing ({@link SlotMapStoreOptions.pinsOverrideHash}; issue #15). The catalog's own checks come
   * first: a map it refuses (a stale version, `CAF08`) answers its error, and nothing is counted.
   * Nothing is counted without {@link SlotMapStoreOptions.shardPools}, with `rowsLeftOn` (a move job
   * named there is checked against the catalog first), for a map that is not the next version, or
   * on an old owner that has no pool here (not configured: nothing reaches its rows anyway).
   */
  private async changeOwners(map: SlotMap, client: Queryable, options: OwnerChangeOptions, byHand: boolean, write: (c: Queryable) => Promise<SlotMapRecord>): Promise<SlotMapRecord> {
    if (this.shardPools === undefined) return write(client);
    if (options.rowsLeftOn !== undefined) {
      // The caller's word, or a move job the catalog must confirm carries each changed slot to its
      // new owner. The slots changed are found by the catalog (the mover's flip publishes while it
      // holds writes fenced: the 4096-entry map is not read back for this), against the latest map
      // where `map` is the next version (otherwise the insert refuses it, and nothing is checked).
      // Both arrays are unnested side by side, each read once: subscripting the stored map per slot
      // (`m.assignments[i]` over `generate_subscripts`) detoasted it once per slot, 4096 times, about
      // 200 ms of the flip's fence on every slot move (bench/owner-change-claim.ts). `'checked'`
      // needs no slot: it is not read.
      const { rows } =
        options.rowsLeftOn === 'checked'
          ? { rows: [] }
          : await client.query<{ slot: number; owner: string }>(
              `select u.i - 1 as slot, u.next as owner
                 from catalog.slot_maps m, unnest(m.assignments, $1::text[]) with ordinality as u(now, next, i)
                where m.version = (select max(version) from catalog.slot_maps) and m.version = $2::bigint - 1 and m.slot_count = $3
                  and u.now is distinct from u.next`,
              [map.assignments, map.version, map.slotCount],
            );
      const refused = await refusedRowsLeftOn(client, options, { kind: 'slot', slots: new Map(rows.map((r) => [Number(r.slot), r.owner])) });
      if (refused !== null) throw new SlotMapError(`cannot publish slot map version ${map.version}: ${refused}. Nothing was published`);
      return write(client);
    }
    const shardPools = this.shardPools;
    return countedOwnerChange(client, {
      route: async (c) => {
        const changed = await this.changedSlots(map, c);
        // The keys the directory places where its pins route: the map does not route them, and the
        // old owner's fence leaves them out (`excluded_keys`), as a slot move's does.
        const slots = new Set([...changed.values()].flat());
        // Their locks first (sharding migration 017), held to the end of the transaction: a pin of
        // a key of these slots written and not yet committed is waited for and read below, and one
        // written later waits for this commit and then finds its slot's owner changed (refused).
        // Read before, such a pin committed unseen, not kept out of the old owner's `moved` row,
        // which then refused the key's every write for good.
        if (this.pinsOverrideHash && slots.size > 0) await this.lockSlots(map, c, slots, byHand);
        const pinned = new Map<number, string[]>();
        for (const key of this.pinsOverrideHash && slots.size > 0 ? await pinnedKeysOf(c, slots) : []) pinned.set(slotOf(key), [...(pinned.get(slotOf(key)) ?? []), key]);
        // Their pins: the fence marks them on the slot's two shards (OwnerChangeFences.markPinnedKeys).
        const keys = [...pinned.values()].flat();
        const { rows: entries } =
          keys.length === 0 ? { rows: [] } : await c.query<{ key: string; shard_id: string; version: string }>('select key, shard_id, version::text from catalog.shard_directory where key = any($1::text[])', [keys]);
        const pins = new Map<number, Array<{ key: string; shard: string; version: number }>>();
        for (const e of entries) pins.set(slotOf(e.key), [...(pins.get(slotOf(e.key)) ?? []), { key: e.key, shard: e.shard_id, version: Number(e.version) }]);
        return { c, changed, pinned, pins };
      },
      write,
      refuse: ({ c, changed }) => this.refuseRowsLeft(map, changed, c, byHand),
      fences: {
        fence: new OwnerChangeFences(shardPools, this.countTimeoutMs, `cannot publish slot map version ${map.version}${byHand ? ' by hand' : ''}`, this.pool),
        of: ({ changed, pinned, pins }) =>
          [...changed].flatMap(([from, slots]) =>
            slots.map((slot) => ({ kind: 'slot' as const, unitId: String(slot), from, to: map.assignments[slot] as string, excludedKeys: pinned.get(slot) ?? [], pins: pins.get(slot) ?? [] })),
          ),
        version: (done) => done.map.version,
      },
    });
  }

  /** Locks `slots`' rows of `catalog.slot_pin_locks` FOR UPDATE with `c` ({@link lockSlotsForPins}), or refuses the publication. */
  private async lockSlots(map: SlotMap, c: Queryable, slots: ReadonlySet<number>, byHand: boolean): Promise<void> {
    const waitMs = Math.min(SLOT_PIN_LOCK_WAIT_MS, this.countTimeoutMs);
    const refused = `cannot publish slot map version ${map.version}${byHand ? ' by hand' : ''}`;
    const refusal = await lockSlotsForPins(c, slots, 'update', waitMs, refused);
    if (refusal === null) return;
    throw new SlotMapError(
      `${refused}: ${slotLockRefused(refusal, {
        other: 'another change of a slot it gives away (a pin or unpin of one of its keys, a slot move being planned, another map published by hand)',
        waitMs,
        rule: "the map may not read its slots' pinned keys (their excluded keys) while one is being changed",
        nothing: 'published',
        again: 'try again once that change has ended',
      })}`,
    );
  }

  /** The slots `map` gives away against the latest map read with `client`, by old owner (those with a pool here); empty where `map` is not its next version. */
  private async changedSlots(map: SlotMap, client: Queryable): Promise<Map<string, number[]>> {
    const changed = new Map<string, number[]>();
    const latest = await this.latest(client);
    if (latest === null || latest.map.version + 1 !== map.version || latest.map.slotCount !== map.slotCount) return changed;
    map.assignments.forEach((owner, slot) => {
      const from = latest.map.assignments[slot];
      if (from === undefined || from === owner || this.shardPools?.get(from) === undefined) return;
      const slots = changed.get(from);
      if (slots === undefined) changed.set(from, [slot]);
      else slots.push(slot);
    });
    return changed;
  }

  /**
   * Refuses ({@link SlotMapRowsLeftError}) `map` where the slots it gives away (`changed`, from
   * {@link changedSlots}) hold rows on their old owner, less the rows of keys the directory pins
   * (read with `client`) where its pins override hash routing.
   */
  private async refuseRowsLeft(map: SlotMap, changed: ReadonlyMap<string, number[]>, client: Queryable, byHand: boolean): Promise<void> {
    if (this.shardPools === undefined || changed.size === 0) return;
    // Counted first with no key left out: the directory (which grows by one pin per directory
    // move, and is read whole: the catalog cannot hash a key) is read only where a slot has rows,
    // and only when its pins route (with override_hash off a pinned key's rows go with its slot).
    const held = new Map<string, Map<number, TableRows[]>>();
    const refused = `cannot publish slot map version ${map.version}${byHand ? ' by hand' : ''}`;
    const countOn = (from: string, slots: readonly number[], pinned: readonly string[]): Promise<Map<number, TableRows[]>> =>
      boundedCount(this.shardPools?.get(from) as Queryable, from, this.countTimeoutMs, refused, (c) => slotRowsOn(c, slots, pinned));
    for (const [from, slots] of changed) {
      const counts = await countOn(from, slots, []);
      if (counts.size > 0) held.set(from, counts);
    }
    if (held.size === 0) return;
    const pinned = this.pinsOverrideHash ? await pinnedKeysOf(client, new Set([...held.values()].flatMap((c) => [...c.keys()]))) : [];
    const left: SlotRowsLeft[] = [];
    for (const [from, all] of held) {
      const counts = pinned.length === 0 ? all : await countOn(from, [...all.keys()], pinned);
      for (const [slot, rows] of counts) left.push({ slot, from, to: map.assignments[slot] as string, rows });
    }
    if (left.length === 0) return;
    left.sort((a, b) => a.slot - b.slot);
    const named = left
      .slice(0, SLOTS_NAMED)
      .map((l) => `slot ${l.slot} from ${l.from} to ${l.to} (${describeRows(l.rows)} on ${l.from})`)
      .join('; ');
    const more = left.length > SLOTS_NAMED ? `; and ${left.length - SLOTS_NAMED} more slot(s)` : '';
    const [first] = left as [SlotRowsLeft];
    const way = byHand
      ? `Deciding their owners by hand, check first that each new owner holds the slot's rows and that its write_fences row of the slot, if any, is open, then pass { rowsLeftOn: 'checked' }; where a move can, move them (POST /shards/moves {"kind":"slot","unit":"${first.slot}","to":"${first.to}"})`
      : `Move the slots instead (POST /shards/moves {"kind":"slot","unit":"${first.slot}","to":"${first.to}"}, one per slot), which takes their rows along; or, where they are accounted for (checked by hand), pass { rowsLeftOn: 'checked' }`;
    throw new SlotMapRowsLeftError(
      map.version,
      left,
      `slot map version ${map.version} would change the owner of ${left.length} slot(s) whose rows are on the old owner: ${named}${more}; the map would send their reads and writes to the new owners and leave those rows out of their sight: each slot split over two shards, and a later move of the slot could delete one side (issue #15; docs/sharding-spec.md section 9, "An owner changed outside a move"). ${way}. Nothing was published`,
    );
  }

  private async inserted(map: SlotMap, client: Queryable, insert: () => Promise<{ rows: Omit<Row, 'assignments'>[] }>): Promise<Omit<Row, 'assignments'>[]> {
    try {
      return (await insert()).rows;
    } catch (err) {
      // 23505: a concurrent publisher inserted the same version between our check and insert.
      // 40001: at REPEATABLE READ or SERIALIZABLE, a map inserted (or changed) by a transaction
      // that committed after this one's snapshot: every statement changing the maps takes the
      // owner history's writer row first (sharding migration 028), and one whose snapshot cannot
      // see the other's map may not publish against it. The same answer: reload (in a new
      // transaction) and retry.
      if (hasSqlState(err, UNIQUE_VIOLATION) || hasSqlState(err, SERIALIZATION_FAILURE)) throw new SlotMapVersionConflictError(map.version + 1, map.version, { cause: err });
      if (hasSqlState(err, SLOT_OWNER_KEPT)) throw new SlotMapOwnerKeptError((err as Error).message, { cause: err });
      // publish_slot_map_by_hand refused its arguments (sharding migration 013: an owner the catalog does not know, say).
      if (hasSqlState(err, INVALID_PARAMETER_VALUE)) throw new SlotMapError((err as Error).message, { cause: err });
      throw err;
    }
  }

  private async published(map: SlotMap, rows: readonly Omit<Row, 'assignments'>[], client: Queryable): Promise<SlotMapRecord> {
    if (rows[0]) return toRecord({ ...rows[0], assignments: [...map.assignments] });
    const latest = await this.latest(client);
    const expected = (latest?.map.version ?? 0) + 1;
    if (latest && latest.map.slotCount !== map.slotCount && expected === map.version) {
      throw new SlotMapError(`slot map version ${map.version} has ${map.slotCount} slots but the published maps have ${latest.map.slotCount}; the slot count never changes`);
    }
    throw new SlotMapVersionConflictError(expected, map.version);
  }

  /**
   * Publishes `map` as the first version if the catalog has none, and returns the current map
   * either way (so every process starting at once may call it).
   */
  async initialise(map: SlotMap, by = 'initialise', reason = 'initial slot map from the configured shard weights', client: Queryable = this.pool): Promise<SlotMap> {
    const first = parseSlotMap(map);
    if (first.version !== 1) throw new SlotMapError(`the first slot map must be version 1, got ${first.version}`);
    // Sent again on 40001 where it is a statement of its own (the store's pool): at the login's or
    // the database's default_transaction_isolation, REPEATABLE READ failed one that waited for
    // another process's first map, in flight, once that committed (its row not in the snapshot),
    // and the process's sharding layer failed to start (routing-stores.test.ts; issue #15). Sent
    // again, it finds that map. In a caller's transaction it is sent once: so is it where the store
    // was built on the caller's client, in a transaction (readRetried: sent again there, it was
    // refused, 25P02, in place of the 40001 the caller's own retry looks for; h132, moves-ssi-reads.test.ts).
    const insert = (): Promise<unknown> =>
      client.query(
        `insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason)
         select 1, $1, $2, $3, $4 where not exists (select 1 from catalog.slot_maps)
         on conflict (version) do nothing`,
        [first.slotCount, first.assignments, by, reason],
      );
    await readRetried(client, this.pool, insert);
    return this.current(client);
  }
}
