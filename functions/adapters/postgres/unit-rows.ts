/**
 * The rows a unit holds on a shard, counted before its owner is changed outside a move (issue #15).
 *
 * A directory pin or a slot map changes where a unit's reads and writes go; only a move
 * (`POST /shards/moves`) takes its rows along. The catalog's guards (sharding migrations 010 to
 * 013) refuse owner changes of units that moved or are moving, but the catalog cannot see the
 * shards: a key or slot with no move history that holds rows on its owner A could be pinned or
 * mapped to B, and then split: its rows stayed on A, its reads on B missed them, its new writes
 * landed on B, and a later move of the unit deleted one side. The directory and slot map stores,
 * given the shards' primary pools (`shardPools`, as the sharding runtime gives them), count the
 * unit's rows on the shard that owns it now and refuse such a change, naming the unit, both shards
 * and the counts, unless the caller says why the rows may stay (`rowsLeftOn`).
 *
 * @example
 * ```ts
 * const directory = new DirectoryStore(catalog, { shardPools: primaries });
 * await directory.set(userId, 'shard_002', 'ops@example.com'); // DirectoryRowsLeftError when the user has rows where it routes now
 * await directory.set(userId, 'shard_002', 'ops@example.com', undefined, undefined, { rowsLeftOn: 'checked' }); // the caller checked them
 * ```
 */
import type pg from 'pg';
import { slotOf } from '../../core/sharding/hash.js';
import { uuidForm } from '../../core/sharding/keys.js';

type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

/**
 * Why an owner change may leave the unit's rows where they are, past the count:
 * - `'checked'`: the caller has checked the unit's rows itself (they are already on the new
 *   owner, or meant to stay: a recovery by hand, docs/sharding-spec.md section 9);
 * - `'move job #<id>'`: the mover's publication, whose move carries the rows.
 */
export type RowsLeftOn = 'checked' | `move job #${number}`;

/** Options of an owner change through the directory or slot map stores. */
export interface OwnerChangeOptions {
  /** Set only when the unit's rows on its current owner are accounted for (see {@link RowsLeftOn}); the count is then skipped. */
  readonly rowsLeftOn?: RowsLeftOn;
}

/** The shards' primary pools, by shard id: what an owner change counts a unit's rows with. */
export type ShardPoolsById = ReadonlyMap<string, Queryable>;

/** One sharded table's rows of a unit on a shard (only tables holding some are listed). */
export interface TableRows {
  readonly table: 'users' | 'documents' | 'document_keys';
  readonly rows: number;
}

/** `3 in users, 12 in documents`. */
export function describeRows(counts: readonly TableRows[]): string {
  return counts.map((c) => `${c.rows} in ${c.table}`).join(', ');
}

/**
 * A directory key's rows on a shard: rows whose owner is the key (`users.id`,
 * `documents.owner_id`, `document_keys.owner_id`), under any slot. Only a user id (a UUID) owns
 * rows: any other key (a tenant name) holds none, and no shard is asked.
 */
export async function keyRowsOn(pool: Queryable, key: string): Promise<TableRows[]> {
  const id = uuidForm(key);
  if (id === undefined) return [];
  const { rows } = await pool.query<{ users: number; documents: number; document_keys: number }>(
    `select (select count(*)::int from users where id = $1::uuid) as users,
            (select count(*)::int from documents where owner_id = $1::uuid) as documents,
            (select count(*)::int from document_keys where owner_id = $1::uuid) as document_keys`,
    [id],
  );
  const r = rows[0] ?? { users: 0, documents: 0, document_keys: 0 };
  return (['users', 'documents', 'document_keys'] as const).filter((t) => Number(r[t]) > 0).map((table) => ({ table, rows: Number(r[table]) }));
}

/**
 * Slots' rows on a shard, by slot, leaving out the rows of `pinnedKeys` (keys the directory
 * places, which a map does not route). Slots without rows are absent.
 */
export async function slotRowsOn(pool: Queryable, slots: readonly number[], pinnedKeys: readonly string[]): Promise<Map<number, TableRows[]>> {
  const out = new Map<number, TableRows[]>();
  if (slots.length === 0) return out;
  const { rows } = await pool.query<{ t: TableRows['table']; slot: number; n: number }>(
    `select 'users' as t, slot, count(*)::int as n from users where slot = any($1::int[]) and not (id::text = any($2::text[])) group by slot
     union all
     select 'documents', slot, count(*)::int from documents where slot = any($1::int[]) and not (owner_id::text = any($2::text[])) group by slot
     union all
     select 'document_keys', slot, count(*)::int from document_keys where slot = any($1::int[]) and not (owner_id::text = any($2::text[])) group by slot`,
    [slots, pinnedKeys],
  );
  for (const r of rows) {
    if (Number(r.n) === 0) continue;
    const list = out.get(Number(r.slot)) ?? [];
    list.push({ table: r.t, rows: Number(r.n) });
    out.set(Number(r.slot), list);
  }
  return out;
}

/** The user-id keys of the directory whose slot is one of `slots` (read in the caller's transaction when `client` is one). */
export async function pinnedKeysOf(client: Queryable, slots: ReadonlySet<number>): Promise<string[]> {
  // Only keys in the canonical UUID form own rows (the catalog cannot hash a key: the slot is
  // filtered here); tenant names and other keys are left in the catalog.
  const { rows } = await client.query<{ key: string }>(`select key from catalog.shard_directory where key ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'`);
  return rows.map((r) => r.key).filter((k) => uuidForm(k) === k && slots.has(slotOf(k)));
}
