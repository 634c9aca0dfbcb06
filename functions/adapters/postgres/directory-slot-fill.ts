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

/** Fills every directory row whose slot is NULL, a batch of keys at a time in key order; the number filled. */
export async function fillDirectorySlots(catalog: Queryable, options: { readonly batch?: number; readonly onBatch?: (filled: number) => void } = {}): Promise<number> {
  const batch = options.batch ?? DIRECTORY_SLOT_FILL_BATCH;
  if (!Number.isInteger(batch) || batch < 1) throw new RangeError(`fillDirectorySlots: batch must be a whole number of at least 1 (got ${batch}); nothing was filled`);
  let total = 0;
  let after: string | null = null;
  for (;;) {
    const result: pg.QueryResult<{ filled: number; last_key: string | null }> = await catalog.query('select filled, last_key from catalog.shard_directory_slot_fill($1::text, $2::int)', [after, batch]);
    const r = result.rows[0];
    if (r === undefined || r.last_key === null) return total;
    after = r.last_key;
    total += r.filled;
    if (r.filled > 0) options.onBatch?.(r.filled);
  }
}
