/**
 * Gives each directory row written without its slot (before sharding migration 031, or with the
 * triggers off: a restore) its slot, in batches of their own transactions: 031 keeps each key's
 * slot in `catalog.shard_directory.slot` (its trigger computes it for every writer), so the fence
 * review and a map published by hand read the pins of their slots only (unit-rows.ts
 * `pinnedKeysOf`), not the whole directory; the rows still without a slot are read by them too,
 * and hashed as before, so a pin is never missed meanwhile, only read where it need not be.
 *
 * One transaction a batch (`catalog.shard_directory_slot_fill`, the keys in primary-key order,
 * SKIP LOCKED): a batch holds off only the pins of its own rows, for its own time, never the
 * directory as a whole, which a fill in a migration's one transaction (or an index on the hash, or
 * a generated column) would, for the whole fill: 1,000,000 rows took 100 s, 100,000 12 s, on 2
 * shared cores at load 10-15 (bench/directory-slot-fill.ts; docs/sharding-spec.md section 2, "The
 * hash in SQL"). Run by the migrations (migrations.ts, local mode's start) after the sharding set,
 * as the migration login (the function is the catalog owner's alone); run again, it fills what is
 * left (a row a pin in flight held, one restored with the triggers off since).
 *
 * @example
 * ```ts
 * const filled = await fillDirectorySlots(migrationPool, { onBatch: (n) => log(`${n} pins given their slot`) });
 * ```
 */
import type pg from 'pg';

type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

/** Keys a batch walks (and gives their slot where it is NULL): 10,000 held a pin written meanwhile up to 0.97 s on 2 cores at load 10-15, 2,000 up to 0.14 s at load 9-10 (bench/directory-slot-fill.ts). */
export const DIRECTORY_SLOT_FILL_BATCH = 2_000;

/** How {@link fillDirectorySlots} runs. */
export interface DirectorySlotFillOptions {
  /** Keys a batch walks; default {@link DIRECTORY_SLOT_FILL_BATCH}. */
  readonly batch?: number;
  /** Told the rows each batch filled. */
  readonly onBatch?: (filled: number) => void;
  /**
   * When to stop (epoch ms, read between batches): the fill is left for the next run, which starts
   * where the NULL slots start. The migrations function gives its own time less a margin: a fill
   * of several million pins (100-135 s a million on 2 loaded cores, bench/directory-slot-fill.ts)
   * would otherwise outlast the function, and a CloudFormation custom resource that never answers
   * holds the stack update for an hour. Readers take the NULL rows as their slot's, so a fill left
   * half done costs reads, not answers.
   */
  readonly until?: number;
  /** Told the rows filled when {@link until} stopped the fill with rows left (not called when it finished). */
  readonly onTimeUp?: (filled: number) => void;
  /** The clock {@link until} is read on; default Date.now. */
  readonly now?: () => number;
}

/** Fills every directory row whose slot is NULL, a batch of keys at a time in key order from the first such key (none: one statement), until done or `until`; the number filled. */
export async function fillDirectorySlots(catalog: Queryable, options: DirectorySlotFillOptions = {}): Promise<number> {
  const batch = options.batch ?? DIRECTORY_SLOT_FILL_BATCH;
  if (!Number.isInteger(batch) || batch < 1) throw new RangeError(`fillDirectorySlots: batch must be a whole number of at least 1 (got ${batch}); nothing was filled`);
  // Where the walk starts: just before the first key whose slot is NULL, and nowhere where none
  // is (a catalog filled, the triggers on). The fill is run by every deploy and every start of
  // local mode; walked from the first key, a run with nothing to fill cost a statement a batch
  // of keys, 501 at 1,000,000 pins, 0.44-2.2 s against 0.8-3.5 ms (bench/directory-slot-fill.ts, "fill again"; the test
  // "walks no key where no row lacks its slot ..."), and a run cut short (the migrations
  // function's time up) walked again the keys filled before. The NULL rows are found through the
  // slot's index (031 indexes NULL too), once a run: not a batch (the walk's own reason, in 031).
  // `offset 0` keeps min(key) from being planned as a walk of the primary key in key order,
  // filtered by `slot is null`: the whole directory read where every slot is filled.
  const { rows: start } = await catalog.query<{ first: string | null; after: string | null }>(
    `with f as (select min(n.key) as first from (select key from catalog.shard_directory where slot is null offset 0) n)
     select f.first, (select max(d.key) from catalog.shard_directory d where d.key < f.first) as after from f`,
  );
  if (start[0]?.first == null) return 0;
  let total = 0;
  let after: string | null = start[0].after;
  const now = options.now ?? Date.now;
  for (;;) {
    if (options.until !== undefined && now() >= options.until) {
      options.onTimeUp?.(total);
      return total;
    }
    const result: pg.QueryResult<{ filled: number; last_key: string | null }> = await catalog.query('select filled, last_key from catalog.shard_directory_slot_fill($1::text, $2::int)', [after, batch]);
    const r = result.rows[0];
    if (r === undefined || r.last_key === null) return total;
    after = r.last_key;
    total += r.filled;
    if (r.filled > 0) options.onBatch?.(r.filled);
  }
}
