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
import { z } from 'zod';
import { slotOf } from '../../core/sharding/hash.js';
import { uuidForm } from '../../core/sharding/keys.js';
import { DEADLINE_GRACE_MS, MAX_DEADLINE_MS, NodeTimeoutError, serverTimeoutMs, withNodeDeadline } from './deadline.js';
import { LOCK_NOT_AVAILABLE, retryingSerializationFailures } from './sqlstate.js';

type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

/**
 * Why an owner change may leave the unit's rows where they are, past the count:
 * - `'checked'`: the caller has checked the unit's rows itself (they are already on the new
 *   owner, or meant to stay: a recovery by hand, docs/sharding-spec.md section 9);
 * - `'move job #<id>'`: the mover's publication, whose move carries the rows; checked against the
 *   catalog ({@link refusedRowsLeftOn}): any other caller naming a job is refused.
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

/** How long the rows of a unit may take to count on one shard before the owner change is refused ({@link boundedCount}). */
export const DEFAULT_COUNT_TIMEOUT_MS = 10_000;

/** `countTimeoutMs` as the stores take it: whole ms, positive, at most what a timer can wait. */
const countTimeoutSchema = z.number().int().positive().max(MAX_DEADLINE_MS);

/** {@link DEFAULT_COUNT_TIMEOUT_MS} where `ms` is undefined; throws a RangeError naming `option` for any other value than a whole positive number of ms. */
export function countTimeoutOf(option: string, ms: number | undefined): number {
  if (ms === undefined) return DEFAULT_COUNT_TIMEOUT_MS;
  const parsed = countTimeoutSchema.safeParse(ms);
  if (!parsed.success) throw new RangeError(`${option} must be a whole number of ms from 1 to ${MAX_DEADLINE_MS}, not ${String(ms)}`);
  return parsed.data;
}

/**
 * The rows of a unit could not be counted on `shardId` within `timeoutMs` (a table locked there,
 * the shard slow, silent or unreachable), so the owner change was refused: nothing was written.
 * Counting with no bound held the caller's catalog transaction open meanwhile (its snapshot, its
 * read locks of `catalog.shard_directory` and `catalog.slot_maps`: a catalog migration needing
 * an exclusive lock queued behind it, and every router read behind the migration).
 */
export class RowsCountTimeoutError extends Error {
  override readonly name = 'RowsCountTimeoutError';
  constructor(
    /** The shard whose count did not end in time. */
    readonly shardId: string,
    readonly timeoutMs: number,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** SQLSTATE query_canceled: here, the count's own `statement_timeout`. */
const QUERY_CANCELED = '57014';

/**
 * Runs `count` on `pool` (a shard's primary pool) within `timeoutMs`, else throws
 * {@link RowsCountTimeoutError} naming `shardId`, its message `refused` (what was refused, and why
 * nothing was written) followed by the shard and the bound. A `pg.Pool`'s count runs on one of its
 * connections in a read transaction whose `statement_timeout` is the time left (the server cancels
 * a count waiting on a lock or still scanning, and the connection goes back to the pool), held
 * {@link DEADLINE_GRACE_MS} longer on the client ({@link withNodeDeadline}: a node that does not
 * answer at all, or not even to connect, has its connection dropped). Anything else that only
 * answers `query` is raced against the bound (its statement cannot be cancelled from here).
 */
export async function boundedCount<T>(pool: Queryable, shardId: string, timeoutMs: number, refused: string, count: (c: Queryable) => Promise<T>): Promise<T> {
  const timedOut = (cause?: unknown): RowsCountTimeoutError =>
    new RowsCountTimeoutError(
      shardId,
      timeoutMs,
      `${refused}: the unit's rows on ${shardId} could not be counted within ${timeoutMs} ms (a table locked there, or the shard slow or not answering); nothing was written. Try again once ${shardId} answers`,
      cause === undefined ? undefined : { cause },
    );
  const p = pool as Partial<pg.Pool>;
  if (typeof p.connect === 'function' && 'totalCount' in p) {
    const started = performance.now();
    try {
      return await withNodeDeadline(pool as pg.Pool, timeoutMs + DEADLINE_GRACE_MS, `${shardId}/primary`, async (c) => {
        // The server's bound: the count's own time left (withNodeDeadline's includes the grace).
        await c.query(`set local statement_timeout = ${serverTimeoutMs(timeoutMs - (performance.now() - started))}`);
        return count(c);
      });
    } catch (err) {
      if (err instanceof NodeTimeoutError || (err as { code?: unknown } | null)?.code === QUERY_CANCELED) throw timedOut(err);
      throw err;
    }
  }
  let timer: NodeJS.Timeout | undefined;
  const counting = count(pool);
  counting.catch(() => undefined);
  try {
    return await Promise.race([
      counting,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(timedOut()), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** `3 in users, 12 in documents`. */
export function describeRows(counts: readonly TableRows[]): string {
  return counts.map((c) => `${c.rows} in ${c.table}`).join(', ');
}

/**
 * A directory key's rows on a shard: rows whose owner is the key (`users.id`,
 * `documents.owner_id`, `document_keys.owner_id`), under any slot, or under `slot` only where it
 * is given (the unit a directory move carries: rows under another slot are that slot's). Only a
 * user id (a UUID) owns rows: any other key (a tenant name) holds none, and no shard is asked.
 */
export async function keyRowsOn(pool: Queryable, key: string, slot?: number): Promise<TableRows[]> {
  const id = uuidForm(key);
  if (id === undefined) return [];
  const under = slot === undefined ? '' : ' and slot = $2::integer';
  const { rows } = await pool.query<{ users: number; documents: number; document_keys: number }>(
    `select (select count(*)::int from users where id = $1::uuid${under}) as users,
            (select count(*)::int from documents where owner_id = $1::uuid${under}) as documents,
            (select count(*)::int from document_keys where owner_id = $1::uuid${under}) as document_keys`,
    slot === undefined ? [id] : [id, slot],
  );
  const r = rows[0] ?? { users: 0, documents: 0, document_keys: 0 };
  return (['users', 'documents', 'document_keys'] as const).filter((t) => Number(r[t]) > 0).map((table) => ({ table, rows: Number(r[table]) }));
}

/**
 * Many keys' rows on a shard at once, as {@link keyRowsOn} counts each (one statement, an index
 * probe a key a table): by key, keys without rows absent. The fence review counts so every key
 * whose row it may reopen: one statement a shard instead of one (and, through the API, a
 * transaction of three round trips) a key and a shard, which for 2,000 `fenced` key rows on three
 * shards took 24.7 s of the API's 27 s at a round trip of about 1 ms (fence-review.ts, `judgeRows`).
 */
export async function keysRowsOn(pool: Queryable, keys: readonly string[]): Promise<Map<string, TableRows[]>> {
  const byId = new Map<string, string[]>();
  for (const key of keys) {
    const id = uuidForm(key);
    if (id === undefined) continue;
    // As PostgreSQL prints a uuid (id::text): lower case.
    byId.set(id.toLowerCase(), [...(byId.get(id.toLowerCase()) ?? []), key]);
  }
  const out = new Map<string, TableRows[]>();
  if (byId.size === 0) return out;
  const { rows } = await pool.query<{ t: TableRows['table']; id: string; n: number }>(
    `select 'users' as t, id::text as id, count(*)::int as n from users where id = any($1::uuid[]) group by id
     union all
     select 'documents', owner_id::text, count(*)::int from documents where owner_id = any($1::uuid[]) group by owner_id
     union all
     select 'document_keys', owner_id::text, count(*)::int from document_keys where owner_id = any($1::uuid[]) group by owner_id`,
    [[...byId.keys()]],
  );
  const order: readonly TableRows['table'][] = ['users', 'documents', 'document_keys'];
  for (const r of rows) {
    if (Number(r.n) === 0) continue;
    for (const key of byId.get(r.id) ?? []) out.set(key, [...(out.get(key) ?? []), { table: r.t, rows: Number(r.n) }]);
  }
  // As keyRowsOn lists them (users, documents, document_keys): the review's messages name them so.
  for (const list of out.values()) list.sort((a, b) => order.indexOf(a.table) - order.indexOf(b.table));
  return out;
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

/**
 * Many slots' rows on a shard at once, each leaving out its own keys, as {@link slotRowsOn}
 * counts one slot's (`units[i]` → the i-th list; a slot without rows: an empty list). One
 * statement whatever the number of units (their slots and excluded keys sent as arrays, not as
 * parameters each). The fence review counts so the slot rows it may reopen, each on the shards a
 * map since gave its slot to: one slot and one shard at a time (a transaction of three round trips
 * through the API's bounded connections, with a read of the maps and of the whole directory a
 * row), 500 dead hand changes' `fenced` slot rows took 5.6 s at a round trip of about 1 ms, and a
 * rebalance's 2,000 would pass the API's 27 s (fence-review.ts, `judgeRows`).
 */
export async function slotsRowsOn(pool: Queryable, units: ReadonlyArray<{ readonly slot: number; readonly excluded: readonly string[] }>): Promise<TableRows[][]> {
  const out = units.map((): TableRows[] => []);
  if (units.length === 0) return out;
  const { rows } = await pool.query<{ t: TableRows['table']; i: number; n: number }>(
    `with u as (select * from unnest($1::int[], $2::int[]) as u(i, slot)),
          x as (select * from unnest($3::int[], $4::text[]) as x(i, key))
     select 'users' as t, u.i, count(*)::int as n from u join users r on r.slot = u.slot
       where not exists (select 1 from x where x.i = u.i and x.key = r.id::text) group by u.i
     union all
     select 'documents', u.i, count(*)::int from u join documents r on r.slot = u.slot
       where not exists (select 1 from x where x.i = u.i and x.key = r.owner_id::text) group by u.i
     union all
     select 'document_keys', u.i, count(*)::int from u join document_keys r on r.slot = u.slot
       where not exists (select 1 from x where x.i = u.i and x.key = r.owner_id::text) group by u.i`,
    [units.map((_, i) => i), units.map((u) => u.slot), units.flatMap((u, i) => u.excluded.map(() => i)), units.flatMap((u) => u.excluded)],
  );
  const order: readonly TableRows['table'][] = ['users', 'documents', 'document_keys'];
  for (const r of rows) if (Number(r.n) > 0) out[Number(r.i)]?.push({ table: r.t, rows: Number(r.n) });
  // As slotRowsOn lists them (users, documents, document_keys): the review's messages name them so.
  for (const list of out) list.sort((a, b) => order.indexOf(a.table) - order.indexOf(b.table));
  return out;
}

/**
 * The user-id keys of the directory whose slot is one of `slots` (read in the caller's transaction
 * when `client` is one).
 *
 * Read by the directory's slot column (sharding migration 031: its trigger writes each key's slot,
 * catalog.key_slot, MurmurHash3 in SQL), the rows of `slots` only, through its index: read whole
 * (the catalog could not hash a key), the directory cost the fence review 0.73 s of its listing at
 * 100,000 pins and 8-10 s at 1,000,000, of the API's 27 s (bench/fence-review.ts --directory;
 * directory-slot.test.ts). The rows whose slot is NULL are read too (written before 031 and not
 * yet filled, directory-slot-fill.ts, or with the triggers off: a restore), and every key read is
 * hashed here again, as before: the TypeScript hash stays the one that decides, a key the SQL one
 * put in another slot (it does not: the test compares the two) is missed, never one taken for
 * another slot's. On a catalog before 031 (a deploy's migrations in progress) the directory is read
 * whole, as before. Only keys in the canonical UUID form own rows; tenant names and other keys
 * are left in the catalog.
 */
export async function pinnedKeysOf(client: Queryable, slots: ReadonlySet<number>): Promise<string[]> {
  const uuid = `key ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'`;
  return (await directoryKeysBySlot(client, slots, uuid)).filter((k) => uuidForm(k) === k && slots.has(slotOf(k)));
}

/**
 * The keys of the directory rows whose `slot` column (sharding migration 031) is one of `slots`,
 * or NULL (not yet filled: directory-slot-fill.ts; or written with the triggers off), that also
 * meet `where` (SQL over `key`, this module's own text, never a caller's input); every row meeting
 * `where` on a catalog before 031 (a deploy's migrations in progress). A superset: the caller
 * hashes each key again and keeps those of its slots (the TypeScript hash decides, as before 031).
 * Read in the caller's transaction when `client` is one. For {@link pinnedKeysOf} and a slot
 * move's plan (mover.ts), which read the whole directory before 031 (1,000,000 rows at 1,000,000
 * pins, twice for a plan, once inside its transaction; directory-slot.test.ts).
 *
 * A key stored in another UUID spelling than the canonical one (upper case, braces; only a writer
 * of plain SQL stores one: the stores and catalog.repin_by_hand store canonicalKey's form) has the
 * slot of its stored text here, which its canonical form's need not be: a caller that hashes
 * canonicalKey(key) misses it where the two differ. Such a pin routes nothing (the router looks
 * the canonical form up) and excludes no row from a slot move (the shards compare a row's owner as
 * uuid text, canonical, with the excluded keys): missing it changes nothing a move copies.
 */
export async function directoryKeysBySlot(client: Queryable, slots: ReadonlySet<number>, where = 'true'): Promise<string[]> {
  if (slots.size === 0) return [];
  const { rows: column } = await client.query<{ slotted: boolean }>(
    `select exists (select 1 from pg_catalog.pg_attribute where attrelid = pg_catalog.to_regclass('catalog.shard_directory') and attname = 'slot' and not attisdropped) as slotted`,
  );
  const { rows } =
    column[0]?.slotted === true
      ? await client.query<{ key: string }>(`select key from catalog.shard_directory where (slot = any($1::int[]) or slot is null) and ${where}`, [[...slots]])
      : await client.query<{ key: string }>(`select key from catalog.shard_directory where ${where}`);
  return rows.map((r) => r.key);
}

/** How long a pin, a publication by hand or a slot move's plan waits for another's lock of a slot ({@link lockSlotsForPins}). */
export const SLOT_PIN_LOCK_WAIT_MS = 5_000;

/** SQLSTATE deadlock_detected. */
const DEADLOCK_DETECTED = '40P01';

/**
 * Why {@link lockSlotsForPins} did not lock its slots: another change held one past the wait; a
 * deadlock PostgreSQL ended by refusing this wait (the transaction, or the caller's savepoint, is
 * aborted, as after any error); or the transaction is not READ COMMITTED (nothing was locked).
 */
export type SlotLockRefusal = { readonly kind: 'timeout' } | { readonly kind: 'deadlock' } | { readonly kind: 'isolation'; readonly level: string };

/** What a change refused by {@link lockSlotsForPins} says, besides its own `cannot ...:` ({@link slotLockRefused}). */
export interface SlotLockRefusalText {
  /** The other changes that lock the slots: `another change of its slot 7 (a slot map published by hand, or a slot move being planned)`. */
  readonly other: string;
  /** How long the change waited. */
  readonly waitMs: number;
  /** Why the change locks the slots: `a pin or unpin may not commit unseen by a change of its slot's pinned keys`. */
  readonly rule: string;
  /** `written`, `published`, `recorded`. */
  readonly nothing: string;
  /** What to do after a wait past its bound: `try again once that change has ended`. */
  readonly again: string;
}

const PIN_RACE_SECTION = '(issue #15; docs/sharding-spec.md section 9, "A pin racing a change of its slot")';

/**
 * The refusal's message after `cannot ...: `, naming what happened: a wait past its bound, a
 * deadlock (which the user could not tell from a wait: PostgreSQL ends it after its
 * deadlock_timeout, a second, well within the bound), or an isolation level under which the lock
 * closes no race.
 */
export function slotLockRefused(refusal: SlotLockRefusal, t: SlotLockRefusalText): string {
  if (refusal.kind === 'timeout') return `${t.other} held catalog.slot_pin_locks for more than ${t.waitMs} ms, and ${t.rule} ${PIN_RACE_SECTION}. Nothing was ${t.nothing}: ${t.again}`;
  if (refusal.kind === 'deadlock') {
    return (
      `${t.other} and this change each waited for a lock the other held, a deadlock, which PostgreSQL ended by refusing this change (SQLSTATE 40P01): a transaction holds the catalog.slot_pin_locks rows of every slot whose pins it changed, or whose map it published, until it ends, and ${t.rule} ${PIN_RACE_SECTION}. ` +
      `Nothing was ${t.nothing} (a caller's transaction is back where it was before this change, its earlier changes and locks kept): try again; in one transaction, change pins in slot order and before publishing a map, as a map locks its slots in slot order`
    );
  }
  return (
    `its catalog transaction is ${refusal.level.toUpperCase()}, and ${t.rule} ${PIN_RACE_SECTION}: once it holds the slots' rows of catalog.slot_pin_locks, the change reads what the other side committed while it waited, which a snapshot taken before the lock (${refusal.level.toUpperCase()} keeps the transaction's first) does not show, and both would commit unseen by each other. ` +
    `Nothing was ${t.nothing}: make the change in a READ COMMITTED transaction (begin isolation level read committed), or without a client (the store's own transaction is)`
  );
}

/**
 * Locks the `catalog.slot_pin_locks` rows of `slots` (sharding migration 017) with `c`, in the
 * caller's catalog transaction and held to its end: `share` by a pin changed by hand (after its
 * write), `update` by a change of the slots' pinned keys (a map published by hand, before it reads
 * them; a slot move's plan, before its re-read of the directory), so that neither commits unseen by
 * the other (issue #15; docs/sharding-spec.md section 9, "A pin racing a change of its slot").
 * Rows are locked in slot order (no deadlock between two changes of several slots); a missing row
 * is inserted first (`on conflict do nothing`: it does not wait for a lock on an existing row).
 * Waits at most `waitMs` (the transaction's `lock_timeout`, put back after). Returns null once
 * locked, else why not ({@link SlotLockRefusal}; {@link slotLockRefused} words it): another change
 * held a slot past the wait, or a deadlock ended it (the transaction is then aborted, as after any
 * error), or the transaction is not READ COMMITTED. The reads each side makes after its lock must
 * see what the other committed while it waited: at REPEATABLE READ or SERIALIZABLE they read the
 * transaction's first snapshot, older than the lock, and the race the lock closes was back (a pin
 * in a caller's REPEATABLE READ transaction committed to the old owner of a slot given away
 * meanwhile, refused there for good: owner-change-pin-lock-order.test.ts). Checked before anything
 * is locked. Refused (`refused: ...`) where the table is missing (migration 017 not applied) or the
 * login may not lock it; other errors are thrown.
 */
export async function lockSlotsForPins(c: Queryable, slots: Iterable<number>, mode: 'share' | 'update', waitMs: number, refused: string): Promise<SlotLockRefusal | null> {
  const list = [...new Set(slots)].sort((a, b) => a - b);
  if (list.length === 0) return null;
  const { rows } = await c.query<{ prior: string; level: string; alone: boolean }>(
    `select current_setting('lock_timeout') as prior, current_setting('transaction_isolation') as level, transaction_timestamp() = statement_timestamp() as alone`,
  );
  const level = rows[0]?.level ?? 'read committed';
  // READ UNCOMMITTED is READ COMMITTED in PostgreSQL: each statement takes a snapshot of its own.
  // So does a statement that is its own transaction (a client holding none, `alone`: its
  // transaction began with it), whatever the default level says; it holds no lock past itself
  // either, which the spec leaves to such callers ("A pin racing a change of its slot").
  if (level !== 'read committed' && level !== 'read uncommitted' && rows[0]?.alone !== true) return { kind: 'isolation', level };
  await c.query(`select set_config('lock_timeout', $1, true)`, [`${Math.max(1, Math.round(waitMs))}ms`]);
  try {
    await c.query('insert into catalog.slot_pin_locks (slot) select unnest($1::int[]) on conflict do nothing', [list]);
    await c.query(`select slot from catalog.slot_pin_locks where slot = any($1::int[]) order by slot for ${mode === 'share' ? 'share' : 'update'}`, [list]);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === LOCK_NOT_AVAILABLE) return { kind: 'timeout' };
    if (code === DEADLOCK_DETECTED) return { kind: 'deadlock' };
    if (code === UNDEFINED_TABLE || code === INSUFFICIENT_PRIVILEGE) {
      throw new Error(
        `${refused}: a pin and a change of its slot's pinned keys lock the slot's row of catalog.slot_pin_locks to their commit, so that neither commits unseen by the other (issue #15; docs/sharding-spec.md section 9, "A pin racing a change of its slot"), and ${code === UNDEFINED_TABLE ? 'the catalog has no such table: apply the sharding migrations (ca-dms-scaling migrate, 017_slot_pin_locks.sql)' : 'this login may not lock it: make the change through the control login (ca_dms_control), which may'}. Nothing was written`,
        { cause: err },
      );
    }
    throw err;
  }
  await c.query(`select set_config('lock_timeout', $1, true)`, [rows[0]?.prior ?? '0']);
  return null;
}

/** `rowsLeftOn` as a caller may pass it: `'checked'`, or `'move job #<id>'` with a positive id. */
const rowsLeftOnSchema = z.union([
  z.literal('checked'),
  z.string().regex(/^move job #[1-9][0-9]{0,18}$/, { message: "must be 'checked' or 'move job #<id>' (a positive job id)" }),
]);

/** What an owner change claims a move job for: the unit (a directory key, or each slot the map changes) and its new owner. */
export type MoveJobClaim =
  | { readonly kind: 'directory'; readonly key: string; readonly to: string; readonly change: 'pin' | 'repin' | 'unpin' }
  | { readonly kind: 'slot'; readonly slots: ReadonlyMap<number, string> };

interface ClaimedJob {
  id: string;
  kind: string;
  unit_id: string;
  from_shard: string;
  to_shard: string;
  state: string;
  flip_started_at: Date | null;
}

/**
 * Why `options.rowsLeftOn` may not skip the count of `claim`'s rows, or null where it may. `'checked'`
 * is the caller's word. `'move job #<id>'` is checked against the catalog, read with `client` (the
 * caller's transaction: the mover's holds the job row locked): the job exists, is a move of that unit
 * (a directory move of that key; a slot move of the one slot the map changes), is unfinished and has
 * not flipped (the mover publishes before it records its flip), and the new owner is its target (or,
 * for a directory key, its source: the mover pins the key there while it prepares or rolls back).
 * Anything else is refused: a move that carries no rows of the unit to the new owner does not
 * account for them (issue #15). A directory move never unpins its key.
 */
export async function refusedRowsLeftOn(client: Queryable, options: OwnerChangeOptions, claim: MoveJobClaim): Promise<string | null> {
  if (options.rowsLeftOn === undefined) return null;
  const parsed = rowsLeftOnSchema.safeParse(options.rowsLeftOn);
  if (!parsed.success) return `rowsLeftOn ${JSON.stringify(options.rowsLeftOn)} ${parsed.error.issues[0]?.message ?? "must be 'checked' or 'move job #<id>'"}`;
  // A map that changes no slot against the latest (or is not its next version: the insert refuses it) has no rows to account for.
  if (parsed.data === 'checked' || (claim.kind === 'slot' && claim.slots.size === 0)) return null;
  const id = parsed.data.slice('move job #'.length);
  const unit = claim.kind === 'directory' ? `key ${claim.key}` : `slot(s) ${[...claim.slots.keys()].join(', ') || '(none)'}`;
  const said = `rowsLeftOn '${parsed.data}' does not account for the rows of ${unit}`;
  const { rows } = await client.query<ClaimedJob>('select id::text, kind, unit_id, from_shard, to_shard, state, flip_started_at from catalog.move_jobs where id = $1::bigint', [id]);
  const job = rows[0];
  if (job === undefined) return `${said}: the catalog has no move job #${id}`;
  const what = `move job #${id} is a ${job.kind} move of ${job.kind === 'slot' ? 'slot' : 'key'} ${job.unit_id} from ${job.from_shard} to ${job.to_shard} (${job.state}${job.flip_started_at === null ? '' : ', past its flip'})`;
  if (['done', 'failed', 'cancelled'].includes(job.state) || job.flip_started_at !== null) return `${said}: ${what}, no longer moving the unit's rows`;
  if (claim.kind === 'directory') {
    if (job.kind !== 'directory' || job.unit_id !== claim.key) return `${said}: ${what}, not of this key`;
    if (claim.change === 'unpin') return `${said}: a move never unpins the key it moves (${what})`;
    if (claim.to !== job.to_shard && claim.to !== job.from_shard) return `${said}: ${what}, which does not take the key to ${claim.to}`;
    return null;
  }
  if (job.kind !== 'slot') return `${said}: ${what}, not a slot move`;
  const wrong = [...claim.slots].filter(([slot, to]) => String(slot) !== job.unit_id || to !== job.to_shard).map(([slot, to]) => `slot ${slot} to ${to}`);
  if (wrong.length > 0) return `${said}: ${what}, and the map gives ${wrong.slice(0, 10).join(', ')}${wrong.length > 10 ? ` and ${wrong.length - 10} more` : ''}, which it does not carry`;
  return null;
}

const NO_ACTIVE_TRANSACTION = '25P01';

/** The steps of an owner change the count applies to (see {@link countedOwnerChange}). */
export interface CountedChange<R, T> {
  /** Reads, with the connection given, what the unit routes to now (before the write changes it). */
  readonly route: (c: Queryable) => Promise<R>;
  /** The catalog's write, which its own checks may refuse (a stale version, `CAF06` to `CAF08`). */
  readonly write: (c: Queryable) => Promise<T>;
  /** Counts the unit's rows on its old owner and throws where the change would leave them there. */
  readonly refuse: (route: R) => Promise<void>;
  /**
   * Whether two routes read by {@link route} are the same. Given, the route is read again after the
   * count and, changed (another session's change committed while the rows were counted), the rows
   * are counted again where it routes now: for a write no check of its own refuses over a change
   * made since the route was read (a pin's unconditional set, its delete, `repinByHand`). Left out
   * where the write refuses it anyway (a map's version).
   */
  readonly sameRoute?: (before: R, now: R) => boolean;
  /**
   * The units the change takes from their old owners, fenced there before the count and turned
   * `moved` to their new owner once the write is made ({@link OwnerChangeFences}); left out, nothing
   * is fenced.
   */
  readonly fences?: {
    readonly of: (route: R) => readonly FencedUnit[];
    readonly fence: OwnerChangeFences;
    /** The catalog version the write published (the map's version, the entry's), recorded as the `moved` rows' `map_version`. */
    readonly version: (done: T) => number;
  };
}

/** How many times the rows are counted before a route that keeps changing refuses the change. */
const MAX_COUNTS = 3;

/**
 * Runs an owner change whose rows are counted as one step, the catalog's own checks first: the
 * route read, the write tried under a savepoint and undone (its error, if the catalog refuses it:
 * a version conflict, `CAF06`, `CAF07`, `CAF08`, answered with no count paid on the shards), then
 * the count, then the write made (a change since the route was read refuses it as any write's:
 * the map's version, a pin's compare-and-set; where the write has no such check,
 * {@link CountedChange.sameRoute} has the route read again and the rows recounted), and a refusal rolls everything back (nothing
 * published). The count runs with none of the write's locks held: held, a count waiting on a shard
 * (a table locked there, a shard slow or unreachable; each count is bounded since, {@link boundedCount}) kept
 * the slot map's insert uncommitted, and every mover's flip waiting for the map (a slot's insert,
 * a directory flip's SHARE lock of `catalog.slot_maps`) waited with its writes fenced
 * (`owner-change-count-unlocked.test.ts`). The write is made twice: only owner changes by hand
 * are counted (the mover's publications name their job).
 * - a pool (`pg.Pool`): one of its connections, in a transaction of its own;
 * - a client: under a savepoint of the caller's transaction (rolled back to it on any error: the
 *   caller's transaction goes on with nothing of the change), or, outside one, a transaction of
 *   its own on that client;
 * - anything else that only answers `query` (no transaction can be held on it): the count first,
 *   then the write, as before.
 */
export async function countedOwnerChange<R, T>(client: Queryable, change: CountedChange<R, T>): Promise<T> {
  const c = client as Partial<pg.Pool & pg.ClientBase>;
  if (typeof c.connect === 'function' && 'totalCount' in c) {
    const conn = await (client as pg.Pool).connect();
    // A connection whose rollback failed is still in the transaction: closed, not lent again.
    let broken = false;
    try {
      return await ownTransaction(conn, change, () => {
        broken = true;
      });
    } finally {
      conn.release(broken || undefined);
    }
  }
  if (typeof c.connect !== 'function') {
    change.fences?.fence.readCatalogThrough(client);
    const route = await change.route(client);
    let done: T;
    try {
      await change.fences?.fence.fence(change.fences.of(route));
      await change.refuse(route);
      // No transaction to confirm a unit left to its move in after the write: a move cancelled
      // between a confirmation and the insert let the map publish with the old owner neither
      // fenced nor `moved` (owner-change-skip-race.test.ts). Refused instead.
      change.fences?.fence.refuseSkippedOutsideTransaction();
      done = await change.write(client);
    } catch (err) {
      await change.fences?.fence.putBack();
      throw err;
    }
    await change.fences?.fence.settle(change.fences.version(done));
    return done;
  }
  try {
    await client.query('savepoint ca_dms_owner_change');
    change.fences?.fence.readCatalogThrough(client);
  } catch (err) {
    if ((err as { code?: string }).code !== NO_ACTIVE_TRANSACTION) throw err;
    return ownTransaction(client, change);
  }
  let done: T;
  try {
    done = await catalogFirst(client, change);
    await client.query('release savepoint ca_dms_owner_change');
  } catch (err) {
    await client.query('rollback to savepoint ca_dms_owner_change; release savepoint ca_dms_owner_change').catch(() => undefined);
    await change.fences?.fence.putBack();
    throw err;
  }
  // The caller's transaction commits (or not) later: the old owners' fences turn `moved` now, a
  // refusal of their writes either way (a caller that rolls back afterwards leaves them so). The
  // new owners' `moved` rows are left: deleted now, a caller that then rolled back left the new
  // owner taking the unit's writes (of routers whose maps predate its leaving) while the catalog
  // names the old one, acknowledged out of every reader's sight (owner-change-skip-race.test.ts).
  // Left, they refuse those writes (CAF02, none lost) until deleted by hand after the commit.
  await change.fences?.fence.settle(change.fences.version(done), false);
  return done;
}

async function ownTransaction<R, T>(client: Queryable, change: CountedChange<R, T>, rollbackFailed: () => void = () => undefined): Promise<T> {
  change.fences?.fence.readCatalogThrough(client);
  // READ COMMITTED whatever the login's or the database's default_transaction_isolation: the
  // change's reads after its lock of catalog.slot_pin_locks must see what the other side committed
  // while it waited (lockSlotsForPins), and the write's compare-and-set re-checks a row changed
  // meanwhile instead of failing on it. Begun with the default, a catalog whose default is
  // REPEATABLE READ read the transaction's first snapshot there, and a pin committed unseen by a
  // map published meanwhile (owner-change-pin-lock-order.test.ts).
  await client.query('begin isolation level read committed');
  let done: T;
  try {
    done = await catalogFirst(client, change);
  } catch (err) {
    await client.query('rollback').catch(rollbackFailed);
    await change.fences?.fence.putBack();
    throw err;
  }
  try {
    await client.query('commit');
  } catch (err) {
    // Committed or not, unknown: the fences stay `fenced` (writes refused there, none lost).
    throw change.fences === undefined ? err : change.fences.fence.leftFenced(err, 'its commit failed, committed or not');
  }
  await change.fences?.fence.settle(change.fences.version(done));
  return done;
}

/**
 * {@link countedOwnerChange}'s steps, in a transaction: the route read, the write tried and undone
 * (the catalog's checks first; `ROLLBACK TO SAVEPOINT` releases the locks it took), the count with
 * no lock of the write held, then the write.
 */
async function catalogFirst<R, T>(client: Queryable, change: CountedChange<R, T>): Promise<T> {
  let route = await change.route(client);
  await client.query('savepoint ca_dms_owner_change_tried');
  await change.write(client);
  await client.query('rollback to savepoint ca_dms_owner_change_tried; release savepoint ca_dms_owner_change_tried');
  for (let counts = 1; ; counts += 1) {
    // Held to the end of this transaction (the caller's, in one): a review settling the fence rows
    // a hand change left (`ca-dms-scaling shards fences --settle`) reopens none while a change is
    // between its fence and its commit (fence-review.ts).
    if (change.fences !== undefined) await change.fences.fence.holdAgainstReview(client, change.fences.of(route));
    // The old owner is fenced (its writers older than the fence waited for) before the count: no
    // row of the unit is written there between the count and the commit (issue #15).
    await change.fences?.fence.fence(change.fences.of(route));
    await change.refuse(route);
    if (change.sameRoute === undefined) break;
    // No lock was held during the count: another session's change may have committed meanwhile.
    // A write with no check of its own would overwrite it with the count of a shard the unit no
    // longer routes to (owner-change-count-stale.test.ts).
    const now = await change.route(client);
    if (change.sameRoute(route, now)) break;
    if (counts >= MAX_COUNTS) throw new Error(`the unit's route changed ${counts} times while its rows were counted (another session changing it meanwhile); nothing was changed: try again`);
    await change.fences?.fence.putBack();
    route = now;
  }
  const done = await change.write(client);
  // A unit left to its move (not fenced) whose move ended since the skip was read is refused
  // here, in the write's transaction, which rolls it back (owner-change-skip-race.test.ts).
  await change.fences?.fence.confirmSkipped(client);
  return done;
}

/** A move job of a unit, unfinished and not flipped, as {@link OwnerChangeFences} reads it. */
interface UnflippedMove {
  readonly job: string;
  readonly from: string;
  readonly to: string;
  readonly state: string;
}

/** A unit an owner change takes from `from` to `to`, fenced on `from` meanwhile ({@link OwnerChangeFences}). */
export interface FencedUnit {
  readonly kind: 'slot' | 'directory';
  /** The slot number as text, or the canonical key. */
  readonly unitId: string;
  readonly from: string;
  readonly to: string;
  /** Keys the directory places (a slot's pinned keys where pins route): left out of a slot's fence, as a slot move leaves them. */
  readonly excludedKeys: readonly string[];
  /**
   * Of {@link excludedKeys}, their pins (shard, entry version): each of the unit's two shards that
   * is not a key's pin gets a `directory` row of the key `moved` to it, as a slot move's
   * (`markExcludedKeys`) does, before the change is written.
   */
  readonly pins?: ReadonlyArray<{ readonly key: string; readonly shard: string; readonly version: number }>;
}

/** Units as the JSON list the fence queries read with `jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text)`. */
function unitList(units: readonly { readonly kind: string; readonly unitId: string }[]): string {
  return JSON.stringify(units.map((u) => ({ kind: u.kind, unit_id: u.unitId })));
}

/** A fence row as it was before {@link OwnerChangeFences.fence} turned it `fenced`: none, or `open` with these columns. */
interface FencedRow {
  readonly kind: string;
  readonly unitId: string;
  readonly to: string;
  readonly prior: null | { readonly state: string; readonly movedTo: string | null; readonly mapVersion: string; readonly jobId: string | null; readonly excludedKeys: string[] };
}

/**
 * An owner change found a unit's `write_fences` row on its old owner `fenced` already, by another
 * owner change in flight (a hand change's, `job_id` null, or a move's) or by one that died before
 * putting it back: refused, its own fences on that shard rolled back, nothing written.
 */
export class OwnerChangeFencedError extends Error {
  override readonly name = 'OwnerChangeFencedError';
  constructor(
    /** The old owner holding the row. */
    readonly shardId: string,
    message: string,
  ) {
    super(message);
  }
}

/** The states of a move job that has ended (catalog.move_jobs), as an SQL list. */
const FINISHED_JOB_STATES = `('done', 'failed', 'cancelled')`;


/** How long the fence of an owner change waits for an `open` row its writers hold (a move's fence budget, 2 s by default). */
const FENCE_LOCK_TIMEOUT_MS = 2_000;

/** How long a change waits for a review of the fence rows holding `catalog.owner_change_review` before it is refused (at most its count bound). */
const REVIEW_WAIT_MS = 5_000;

/** SQLSTATE undefined_table. */
const UNDEFINED_TABLE = '42P01';

/** SQLSTATE insufficient_privilege. */
const INSUFFICIENT_PRIVILEGE = '42501';

/** The sharded tables, as `regclass` literals (the drain's look at `pg_locks`). */
const SHARDED_TABLES = `'users'::regclass, 'documents'::regclass, 'document_keys'::regclass`;

/**
 * The old owners' side of an owner change made outside a move (issue #15): the count alone was not
 * atomic with the unit's writers. A writer that routed with the old map or pin could add a row on
 * the old owner between the count and the catalog's commit (its insert uncommitted while counted),
 * and a router whose cache still named the old owner wrote there after the commit; both were
 * acknowledged where no reader looks. So, as a move's fence does:
 * 1. {@link fence}: on each old owner, the unit's `write_fences` row is made `fenced` (inserted, or
 *    an `open` one updated; `job_id` null: a hand change's row), which refuses every later
 *    statement of its writers (`CAF01`, the writers retry), and the writers older than the fence
 *    (a transaction begun before it holding ROW EXCLUSIVE on a sharded table; any prepared
 *    transaction that wrote them) are waited for, within the count's bound; only then are the rows
 *    counted. A row that is `incoming` already refuses the unit's writes there, and is left as it
 *    is, as is a `moved` one of an unfinished move; a `moved` one of a hand change or a finished
 *    move (another change's, whose settle deletes it) is taken over as an `open` one, and put back
 *    `moved`; one `fenced` already (another owner change in flight, or one killed before
 *    its put-back) refuses the change ({@link OwnerChangeFencedError}): going on, this change
 *    skipped the wait, and the other's put-back reopened the unit where the map no longer looks.
 * 2. {@link putBack}, where the change is refused or fails before its write: each row as it was
 *    (deleted, or `open` again).
 * 3. {@link settle}, once the write is committed: each row turns `moved` to the new owner, as of
 *    the version published (writers get `CAF02` and re-route, as after a move), and a `moved` row
 *    of the unit on the new owner is deleted, so the shard takes the unit's writes again: a hand
 *    change's (`job_id` null: the unit given away by hand earlier), and, given the catalog, a
 *    move's whose job has finished.
 * The shards' pools must be of a login that may write `write_fences` (the mover's: `ca_dms_mover`,
 * or the shards' owner) holding `pg_read_all_stats` (the wait reads other logins' `xact_start`);
 * others (the application's) are refused, and the change with it, nothing written.
 */
export class OwnerChangeFences {
  private fenced: FencedRow[] = [];
  private shardsOf = new Map<string, FencedRow[]>();
  private newOwners = new Map<string, { kind: string; unitId: string }[]>();
  /** The units {@link fence} left to their unflipped move, by their move job: confirmed by {@link confirmSkipped} once the write is made. */
  private skipped = new Map<string, { unit: FencedUnit; job: string }>();
  /** Every unit the last {@link fence} was given: read again by {@link confirmSkipped} for a move to a third shard planned since. */
  private changed: readonly FencedUnit[] = [];

  constructor(
    private readonly pools: ShardPoolsById,
    /** How long fencing and the wait for older writers may take on one shard ({@link boundedCount}). */
    private readonly timeoutMs: number,
    /** What is refused where it fails: `cannot publish slot map version 7`. */
    private readonly refused: string,
    /**
     * The catalog, read by {@link settle} for the state of the move jobs whose `moved` rows the new
     * owners hold: a finished move's row there is deleted too. Without it only a hand change's is.
     */
    private readonly catalog?: Queryable,
  ) {}

  /** The change's own catalog connection, once {@link readCatalogThrough} named it; else the store's pool. */
  private through?: Queryable;

  private get catalogReader(): Queryable | undefined {
    return this.through ?? this.catalog;
  }

  /**
   * Reads the catalog (the move jobs) through `c`, the connection the change holds, not a second
   * one from the store's pool: a Lambda's pool of one connection waited on itself until its
   * connection timeout, and the change failed.
   */
  readCatalogThrough(c: Queryable): void {
    this.through = c;
  }

  /**
   * Locks the catalog's `owner_change_review` row FOR SHARE with `c`, the change's catalog
   * transaction, where any of `units` would be fenced (its old owner has a pool here and is not its
   * new owner): held until that transaction ends, it tells a review of the fence rows
   * ({@link reviewFences}) that this change may still publish, so that none of its `fenced` rows is
   * reopened under it. Refused, nothing fenced, where the catalog lacks the row (sharding migration
   * 016 not applied) or the login may not lock it, and where a review settling the rows holds it
   * past {@link REVIEW_WAIT_MS} (or the count bound, if shorter).
   */
  async holdAgainstReview(c: Queryable, units: readonly FencedUnit[]): Promise<void> {
    if (!units.some((u) => this.pools.get(u.from) !== undefined && u.from !== u.to)) return;
    // Only a review holds the row FOR UPDATE (changes share it): waited for within a bound, with
    // the transaction's own lock_timeout put back after. Unbounded, a change waited as long as a
    // review stuck on a slow shard, or died on the catalog login's statement_timeout with an error
    // that named neither the review nor what to do.
    const waitMs = Math.min(REVIEW_WAIT_MS, this.timeoutMs);
    try {
      const { rows } = await c.query<{ prior: string }>(`select current_setting('lock_timeout') as prior`);
      await c.query(`select set_config('lock_timeout', $1, true)`, [`${waitMs}ms`]);
      await c.query('select 1 from catalog.owner_change_review where id = 1 for share');
      await c.query(`select set_config('lock_timeout', $1, true)`, [rows[0]?.prior ?? '0']);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === LOCK_NOT_AVAILABLE) {
        throw new Error(
          `${this.refused}: a review of the fence rows (ca-dms-scaling shards fences --settle) held catalog.owner_change_review for more than ${waitMs} ms, and a change may not fence while it settles. Nothing was written: try again once the review has ended`,
          { cause: err },
        );
      }
      if (code === UNDEFINED_TABLE || code === INSUFFICIENT_PRIVILEGE) {
        throw new Error(
          `${this.refused}: the change holds catalog.owner_change_review while it fences the old owners (so that a review of the fence rows, ca-dms-scaling shards fences --settle, never reopens a row of a change still publishing), and ${code === UNDEFINED_TABLE ? 'the catalog has no such table: apply the sharding migrations (ca-dms-scaling migrate, 016_owner_change_review.sql)' : 'this login may not lock it: publish through the control login (ca_dms_control), which may'}. Nothing was written`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  /** Fences `units` on their old owners (those with a pool here) and waits for their older writers; see the class. */
  async fence(all: readonly FencedUnit[]): Promise<void> {
    this.changed = all;
    const moving = await this.unflippedMoves(all);
    // Refused before anything is fenced; confirmed in the write's transaction (confirmSkipped).
    this.refuseThirdShards(all, moving);
    this.skipped = new Map(
      all.flatMap((u) => {
        const move = moving.get(`${u.kind}:${u.unitId}`);
        return move === undefined || this.pools.get(u.from) === undefined || u.from === u.to ? [] : [[`${u.kind}:${u.unitId}`, { unit: u, job: move.job }] as const];
      }),
    );
    // A unit whose move has not flipped is its move's to fence and release (a map given the move's
    // target past the catalog's CAF08, by a superuser): fenced here too, the move found its source
    // `moved` and stopped for good, with the target `incoming` refusing the unit's writes
    // (moves-api.test.ts). Its writes are the move's: captured, and refused once it fences. A
    // flipped move's unit is the map's already: fenced on its new owner as any.
    const units = all.filter((u) => !moving.has(`${u.kind}:${u.unitId}`));
    // But a unit whose old owner is neither its move's source nor its target (given to a third
    // shard past the stores: `catalog.repin_by_hand`, a map by the catalog's function naming the
    // move in `ca_dms.override_moves`), which a change through the store gives back to the move's
    // source or to its target ({@link refuseThirdShards} lets those through): the move fences and
    // releases only its own two shards, and nothing fenced that third shard, which took the unit's
    // writes of routers that still sent them there, acknowledged out of every reader's sight
    // (owner-change-skip-third-shard-review.test.ts, h170). Fenced there as any (`moved` to the
    // new owner at the settle), its new owner left to the move (its rows there are the move's: the
    // source's, or the target's `incoming`), and still confirmed as left to the move (skipped).
    const strays = all.filter((u) => {
      const move = moving.get(`${u.kind}:${u.unitId}`);
      return move !== undefined && u.from !== move.from && u.from !== move.to;
    });
    const byShard = new Map<string, FencedUnit[]>();
    for (const u of [...units, ...strays]) {
      if (this.pools.get(u.from) === undefined || u.from === u.to) continue;
      byShard.set(u.from, [...(byShard.get(u.from) ?? []), u]);
      if (this.pools.get(u.to) !== undefined && !moving.has(`${u.kind}:${u.unitId}`)) this.newOwners.set(u.to, [...(this.newOwners.get(u.to) ?? []), { kind: u.kind, unitId: u.unitId }]);
    }
    await this.refuseRefusingNewOwners(units);
    await this.markPinnedKeys(units);
    for (const [shard, list] of byShard) {
      const pool = this.pools.get(shard) as Queryable;
      const to = new Map(list.map((u) => [`${u.kind}:${u.unitId}`, u.to]));
      const rows = await boundedCount(pool, shard, this.timeoutMs, this.refused, async (c) => {
        try {
          // An `open` row is held FOR SHARE by its writers in flight: its update waits for them and
          // queues new ones behind it, a fence already, bounded like a move's (the fence budget).
          await c.query(`set local lock_timeout = ${Math.min(FENCE_LOCK_TIMEOUT_MS, this.timeoutMs)}`);
          // A `moved` row on the old owner (the map names it, yet it refuses the unit) is another
          // hand change's new-owner row its settle deletes (a hand change's, or a finished move's):
          // taken over (fenced, then `moved` to this change's new owner), not left as it is. Left,
          // that settle, running after this change had published, deleted it, and the old owner took
          // the unit's writes where the map no longer looks (owner-change-settle-race.test.ts).
          const finished = await this.finishedMovedJobs(c, unitList(list));
          const { rows: fencedRows } = await c.query<{ kind: string; unit_id: string; was_open: boolean; prior_state: string | null; moved_to: string | null; map_version: string; job_id: string | null; excluded_keys: string[] | null }>(
            `with u as (select * from jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text, excluded_keys text[])),
                  prior as (select w.kind, w.unit_id, w.state, w.moved_to, w.map_version, w.job_id, w.excluded_keys from write_fences w join u using (kind, unit_id)
                             where w.state = 'open' or (w.state = 'moved' and (w.job_id is null or w.job_id = any($2::bigint[])))),
                  f as (insert into write_fences as w (kind, unit_id, state, excluded_keys, job_id)
                        select kind, unit_id, 'fenced', coalesce(excluded_keys, '{}'), null from u
                        on conflict (kind, unit_id) do update set state = 'fenced', excluded_keys = excluded.excluded_keys, job_id = null, updated_at = now()
                          where w.state = 'open' or (w.state = 'moved' and (w.job_id is null or w.job_id = any($2::bigint[])))
                        returning w.kind, w.unit_id)
             select f.kind, f.unit_id, p.unit_id is not null as was_open, p.state as prior_state, p.moved_to, p.map_version::text, p.job_id::text, p.excluded_keys
               from f left join prior p using (kind, unit_id)`,
            [JSON.stringify(list.map((u) => ({ kind: u.kind, unit_id: u.unitId, excluded_keys: u.excludedKeys }))), finished],
          );
          // The wait for older writers reads other sessions' xact_start in pg_stat_activity, NULL to
          // a login without pg_read_all_stats: it would wait for none of another login's writers
          // and count past a row being written (owner-change-fenced-race.test.ts). Refused, its
          // fence (uncommitted) rolled back with it.
          const { rows: seen } = await c.query<{ login: string; sees: boolean }>(`select current_user::text as login, pg_has_role(current_user, 'pg_read_all_stats', 'usage') as sees`);
          if (seen[0]?.sees !== true) {
            throw new Error(
              `${this.refused}: the change waits for the writers on ${shard} older than its fence by reading their pg_stat_activity rows, and this login (${seen[0]?.login ?? '?'}) lacks the privileges of pg_read_all_stats on ${shard}: it would see none of another login's writers (their xact_start hidden) and could count past a row being written. Give the store the pools of the mover's login (ca_dms_mover, which holds it) or grant pg_read_all_stats. Nothing was written`,
            );
          }
          // A row `fenced` already is another owner change's, in flight (its fence, its wait for
          // older writers, its count not done) or dead before putting it back: going on over it,
          // this change would count without its wait, and the other's put-back would reopen the
          // unit on a shard the map no longer names (owner-change-fenced-race.test.ts). Read in a
          // statement of its own: a fence committed while the one above waited is seen.
          const mine = new Set(fencedRows.map((r) => `${r.kind}:${r.unit_id}`));
          const { rows: others } = await c.query<{ kind: string; unit_id: string; job_id: string | null }>(
            `select w.kind, w.unit_id, w.job_id::text from write_fences w join jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text) using (kind, unit_id)
              where w.state = 'fenced' order by w.kind, w.unit_id`,
            [unitList(list)],
          );
          const held = others.filter((r) => !mine.has(`${r.kind}:${r.unit_id}`));
          const [h] = held;
          if (h !== undefined) {
            const by = h.job_id === null ? "a hand change's: job_id null" : `move job #${h.job_id}'s`;
            const more = held.length > 1 ? ` (and ${held.length - 1} more unit(s) fenced there)` : '';
            throw new OwnerChangeFencedError(
              shard,
              `${this.refused}: ${h.kind} ${h.unit_id}'s write_fences row on ${shard} is fenced already by another owner change (${by})${more}; nothing was written. Try again once it has ended; ` +
                (h.job_id === null
                  ? `where none is running (a change killed between its fence and its put-back) and the catalog still names ${shard} as the owner, open it again: ca-dms-scaling shards fences --settle checks both and does it, or by hand: delete from write_fences where kind = '${h.kind}' and unit_id = '${h.unit_id}' and state = 'fenced' and job_id is null (docs/sharding-spec.md section 9, "A map published by hand fences the old owner")`
                  : `let the move finish or roll back first`),
            );
          }
          return fencedRows;
        } catch (err) {
          if ((err as { code?: unknown }).code === LOCK_NOT_AVAILABLE) {
            throw new RowsCountTimeoutError(
              shard,
              this.timeoutMs,
              `${this.refused}: the unit's write_fences row on ${shard} stayed held by its writers for ${Math.min(FENCE_LOCK_TIMEOUT_MS, this.timeoutMs)} ms (long write transactions of the unit there); nothing was written. Try again`,
              { cause: err },
            );
          }
          if ((err as { code?: unknown }).code === INSUFFICIENT_PRIVILEGE) {
            throw new Error(
              `${this.refused}: the change fences the unit on ${shard} before counting its rows there (issue #15), and this login may not write write_fences on ${shard}: give the store the pools of the mover's login (ca_dms_mover) or the shards' owner. Nothing was written`,
              { cause: err },
            );
          }
          throw err;
        }
      });
      const recorded = rows.map((r) => ({
        kind: r.kind,
        unitId: r.unit_id,
        to: to.get(`${r.kind}:${r.unit_id}`) as string,
        prior: r.was_open ? { state: r.prior_state ?? 'open', movedTo: r.moved_to, mapVersion: r.map_version, jobId: r.job_id, excludedKeys: r.excluded_keys ?? [] } : null,
      }));
      this.fenced.push(...recorded);
      this.shardsOf.set(shard, [...(this.shardsOf.get(shard) ?? []), ...recorded]);
      if (recorded.length === 0) continue;
      const started = performance.now();
      const left = await boundedCount(pool, shard, this.timeoutMs, `${this.refused} (waiting for the writers older than its fence on ${shard})`, (c) =>
        drainOlderWriters(c, started + this.timeoutMs),
      );
      if (left !== null) {
        throw new RowsCountTimeoutError(
          shard,
          this.timeoutMs,
          `${this.refused}: ${left} on ${shard} still open after ${this.timeoutMs} ms, begun before the change fenced the unit there (they may be writing its rows unseen by the count); nothing was written. Try again once they have ended (commit or roll back a forgotten prepared transaction)`,
        );
      }
    }
  }

  /**
   * The keys a slot's change leaves where the directory puts them are not the slot's owner's on
   * either side: its fence excludes them, and without a row of their own a process whose directory
   * cache had not seen the key's pin (a miss cached before it) routed it by hash to the slot's new
   * owner, which took its writes, acknowledged where the catalog does not route the key
   * (owner-change-fenced-pinned-slot.test.ts). So each of the two shards gets a `directory` row of
   * the key `moved` to its pin's shard, unless it has a row for the key already or is that shard,
   * as a slot move does (`markExcludedKeys`). Written before the change: harmless if it is
   * refused (the key is pinned elsewhere; its row there refuses only writes the catalog does not
   * send there) and left then, as a move's; such a key stays pinned (an unpin through the store is
   * refused while any shard holds such a row).
   */
  private async markPinnedKeys(units: readonly FencedUnit[]): Promise<void> {
    for (const u of units) {
      if (u.from === u.to || u.pins === undefined || u.pins.length === 0) continue;
      for (const shard of [u.from, u.to]) {
        const pool = this.pools.get(shard);
        const rows = u.pins.filter((p) => p.shard !== shard);
        if (pool === undefined || rows.length === 0) continue;
        await boundedCount(pool, shard, this.timeoutMs, this.refused, (c) =>
          c.query(
            `insert into write_fences (kind, unit_id, state, moved_to, map_version)
             select 'directory', k, 'moved', s, v from unnest($1::text[], $2::text[], $3::bigint[]) as e(k, s, v)
             on conflict (kind, unit_id) do nothing`,
            [rows.map((r) => r.key), rows.map((r) => r.shard), rows.map((r) => r.version)],
          ),
        );
      }
    }
  }

  /** The units of `units` (`kind:unit_id`) with a move job the catalog (or `client`) shows unfinished and not flipped, with that job; none without the catalog. */
  private async unflippedMoves(units: readonly FencedUnit[], client: Queryable | undefined = this.catalogReader): Promise<Map<string, UnflippedMove>> {
    if (client === undefined || units.length === 0) return new Map();
    const { rows } = await client.query<{ unit: string } & UnflippedMove>(
      `select j.kind || ':' || j.unit_id as unit, j.id::text as job, j.from_shard as "from", j.to_shard as "to", j.state from catalog.move_jobs j join jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text) using (kind, unit_id)
        where j.state not in ${FINISHED_JOB_STATES} and j.flip_started_at is null`,
      [unitList(units)],
    );
    return new Map(rows.map(({ unit, ...move }) => [unit, move]));
  }

  /**
   * Refuses the change where it gives a unit whose move is unfinished and not flipped (`moving`,
   * read by {@link unflippedMoves}) to a shard that is neither that move's target nor its source
   * (issue #15, h163). Such a unit is its move's to fence and release ({@link fence} skips it), and
   * the move does so only for its own target: given a third shard, the change fenced nothing on
   * the unit's old owner and settled nothing on the new one, and the move, finding the unit's owner
   * changed to a shard it does not know, rolled back and reopened its source. The key of
   * owner-change-torture-pins.test.ts (TORTURE_SEED=-903527539) was then pinned to a shard whose
   * `moved` row of an earlier move refused its every write ("routing is not converging", for good),
   * and the move's source, `open`, acknowledged the writes of routers holding the old route, where
   * no reader looks (owner-change-skip-third-shard.test.ts). Nothing guards against it in the
   * catalog: `catalog.repin_by_hand` passes the pin guard unconditionally (sharding migration 011),
   * a first pin over no entry meets no guard (a BEFORE UPDATE trigger), and a map by hand that
   * names the move in `ca_dms.override_moves` passes `CAF08` whatever it gives the slot.
   * A change to the move's target is left to the move as before (but a key's, before its move
   * prepared its source: below); one to its source is too: the way out the mover's "the key's
   * owner must be decided by hand" names after a pin to the target made past the stores (the move
   * then goes on from its source, or may be cancelled).
   */
  private refuseThirdShards(units: readonly FencedUnit[], moving: ReadonlyMap<string, UnflippedMove>): void {
    const refused = units.flatMap((u) => {
      const move = moving.get(`${u.kind}:${u.unitId}`);
      if (move === undefined || u.from === u.to || u.to === move.from) return [];
      if (u.to !== move.to) return [{ unit: u, move, unprepared: false }];
      // A key given to its move's target before the move prepared its source (which pins the key
      // there, in state `copying`, at every run of that state): the move then stops at every run,
      // "this move's own target ... can neither go on nor be cancelled", its source left `open` to
      // the writes of routers holding the old route while the target's rows refuse the key's own
      // (owner-change-torture-pins.test.ts, TORTURE_SEED=217622814 TORTURE_RUNS=30). Past its copy
      // the state never comes back to it: a pin to the target is then the move's own outcome.
      return u.kind === 'directory' && (move.state === 'planned' || move.state === 'copying') ? [{ unit: u, move, unprepared: true }] : [];
    });
    const [first] = refused;
    if (first === undefined) return;
    const { unit: u, move: m } = first;
    const what = u.kind === 'slot' ? `slot ${u.unitId}` : `key ${u.unitId}`;
    const more = refused.length > 1 ? ` (and ${refused.length - 1} more unit(s) so)` : '';
    const again = u.kind === 'slot' ? 'publish the map again' : 'change the pin again';
    const cancel = `DELETE /api/v1/scaling/shards/moves/${m.job}`;
    if (first.unprepared) {
      throw new Error(
        `${this.refused}: ${what} is being moved to ${m.to} by move job #${m.job} (${m.from} to ${m.to}, ${m.state}), which has not prepared its source yet${more}: pinned to ${m.to} by hand before then, the move stops at every run and can neither go on nor be cancelled, ${m.from} left taking the writes of routers that still send them there, out of every reader's sight, while ${m.to} refuses the key's own. ` +
          `Nothing was changed. Let the move go on (it pins the key to ${m.to} itself at its flip; GET /api/v1/scaling/shards/moves/${m.job} shows catching_up or later once a pin to ${m.to} is left to it), or cancel it (${cancel}), then ${again} (docs/sharding-spec.md section 9, "An owner changed by hand while its move runs")`,
      );
    }
    throw new Error(
      `${this.refused}: ${what} is being moved by move job #${m.job} (${m.from} to ${m.to}, ${m.state}), unfinished and not flipped, and this change gives it to ${u.to}, not ${m.to}${more}. ` +
        `A unit whose move has not flipped is the move's to fence and release, and only for its target: written, the change would fence nothing on ${u.from}, and the move, finding its unit given to a shard it does not know, would roll back and reopen ${m.from}, taking the unit's writes of routers that still send them there, out of every reader's sight, while ${u.to} refused or lost the unit's own. ` +
        `Nothing was ${u.kind === 'slot' ? 'published' : 'changed'}. Cancel the move (${cancel}) or let it end, then ${again}, or move the unit to ${u.to} (POST /api/v1/scaling/shards/moves); a move that can neither finish nor be cancelled has its owner decided by hand between ${m.from} and ${m.to} first (docs/sharding-spec.md section 9, "An owner changed by hand while its move runs")`,
    );
  }

  /**
   * Refuses the change where a unit {@link fence} left to its move (unfinished, not flipped when
   * read) has no such move any more, read with `c`, the write's transaction, after the write: the
   * skip was decided on a read made before the fence, outside that transaction, and a move that
   * ended since (cancelled or failed: rolled back, its source's row `open` again) no longer stops
   * the catalog's insert (its CAF08 guard refuses only while the move is unfinished). Published,
   * the unit's old owner was neither fenced nor `moved`: its writers sent there by the old map
   * were acknowledged where the map no longer looks (owner-change-skip-race.test.ts). Refused, the
   * next try fences it as any. A move still unfinished here let the write through only where the
   * caller named it (`ca_dms.override_moves`) or bypassed the guard (`catalog.repin_by_hand`, a first
   * pin over no entry): its premise, a move that can neither finish nor be cancelled, is the
   * caller's, but only for the move's own two shards: a unit given to a third shard is refused here
   * too ({@link refuseThirdShards}, read again for every unit of the change).
   */
  async confirmSkipped(c: Queryable): Promise<void> {
    // Every unit of the change, not only those skipped: a move to a third shard planned since the
    // fence read the moves (the unit fenced then as any) fails as above once it finds the change.
    const still = await this.unflippedMoves(this.changed, c);
    this.refuseThirdShards(this.changed, still);
    if (this.skipped.size === 0) return;
    const ended = [...this.skipped].filter(([unit, s]) => still.get(unit)?.job !== s.job);
    const [first] = ended;
    if (first === undefined) return;
    const [, { unit, job }] = first;
    const more = ended.length > 1 ? ` (and ${ended.length - 1} more unit(s))` : '';
    throw new Error(
      `${this.refused}: ${unit.kind} ${unit.unitId} was left to its move job #${job} (unfinished, not flipped when the change began: the move fences and releases it on ${unit.from}), which has ended or flipped since${more}; published, ${unit.from} would take the unit's writes unfenced where the map no longer looks. Nothing was published: try again (the unit is then fenced as any)`,
    );
  }

  /**
   * Refuses a change made through something that only answers `query` (no transaction in which
   * {@link confirmSkipped} could follow the write) where {@link fence} left a unit to its unflipped
   * move: the move could end between any check and the insert.
   */
  refuseSkippedOutsideTransaction(): void {
    const [first] = this.skipped.values();
    if (first === undefined) return;
    throw new Error(
      `${this.refused}: ${first.unit.kind} ${first.unit.unitId} has an unfinished move (job #${first.job}) that has not flipped, and this change was given a client that holds no transaction, in which the change could confirm after its write that the move still runs (ended meanwhile, ${first.unit.from} would take the unit's writes unfenced where the map no longer looks). Nothing was published: publish through a pool or a client, or once the move has ended`,
    );
  }

  /** The move jobs of `units` the catalog shows past their flip and unfinished whose source is the unit's new owner; none without the catalog. */
  private async flippedMovesFrom(units: readonly FencedUnit[]): Promise<Array<{ kind: string; unit_id: string; id: string; from_shard: string; to_shard: string; state: string }>> {
    const list = units.filter((u) => u.from !== u.to);
    const catalog = this.catalogReader;
    if (catalog === undefined || list.length === 0) return [];
    const { rows } = await catalog.query<{ kind: string; unit_id: string; id: string; from_shard: string; to_shard: string; state: string }>(
      `select j.kind, j.unit_id, j.id::text as id, j.from_shard, j.to_shard, j.state
         from catalog.move_jobs j join jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text, new_owner text) on j.kind = u.kind and j.unit_id = u.unit_id and j.from_shard = u.new_owner
        where j.state not in ${FINISHED_JOB_STATES} and j.flip_started_at is not null
        order by j.id`,
      [JSON.stringify(list.map((u) => ({ kind: u.kind, unit_id: u.unitId, new_owner: u.to })))],
    );
    return rows;
  }

  /**
   * The jobs of the units' `moved` rows on a shard (read through `shard`, a list from
   * {@link unitList}) that the catalog shows finished: rows a change may take over or delete.
   */
  private async finishedMovedJobs(shard: Queryable, list: string): Promise<string[]> {
    const { rows } = await shard.query<{ job_id: string }>(
      `select w.job_id::text from write_fences w join jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text) using (kind, unit_id)
        where w.state = 'moved' and w.job_id is not null`,
      [list],
    );
    return this.finishedJobs(rows.map((r) => r.job_id));
  }

  /** Of the move jobs `ids`, those the catalog shows finished; none without the catalog, or where its login may not read them (the application's). */
  private async finishedJobs(ids: readonly string[]): Promise<string[]> {
    const catalog = this.catalogReader;
    if (catalog === undefined || ids.length === 0) return [];
    const { rows } = await catalog
      .query<{ id: string }>(`select id::text from catalog.move_jobs where id = any($1::bigint[]) and state in ${FINISHED_JOB_STATES}`, [ids])
      .catch(() => ({ rows: [] as { id: string }[] }));
    return rows.map((r) => r.id);
  }

  /**
   * Refuses the change where a new owner's `write_fences` row of a unit would refuse the unit's
   * writes once the map names it: `fenced` or `incoming` (another owner change in flight there), or
   * `moved` by a move the catalog shows unfinished (`job_id` set: a slot given back by hand to the
   * shard a move took it from, that move still cleaning up). {@link settle} deletes a hand change's
   * `moved` row and a finished move's; the others stayed, and the shard answered every write of the
   * unit `CAF02` (or `CAF01`) while the map sent them there, for good
   * (owner-change-fenced-race.test.ts). Read before anything is fenced: nothing to put back.
   *
   * Where {@link settle} would delete such a row, the unit's rows the new owner still holds behind
   * it are counted too (a slot's less the keys the directory places, `excludedKeys`; a key's), and
   * any refuse the change: rows the unit left there when it went away, which no reader has seen
   * since (a finished slot move's clean-up keeps a user that still owns a document stored under
   * another slot, written before shard migration 015; a change made with `rowsLeftOn: 'checked'`).
   * Deleted, the row let readers find them again as the unit's: a user deleted on the old owner
   * since, read again with its old e-mail (moves-cleanup-left-rows.test.ts).
   */
  private async refuseRefusingNewOwners(units: readonly FencedUnit[]): Promise<void> {
    const byShard = new Map<string, FencedUnit[]>();
    for (const u of units) {
      if (this.pools.get(u.from) === undefined || this.pools.get(u.to) === undefined || u.from === u.to) continue;
      byShard.set(u.to, [...(byShard.get(u.to) ?? []), u]);
    }
    for (const [shard, list] of byShard) {
      const pool = this.pools.get(shard) as Queryable;
      const all = await boundedCount(pool, shard, this.timeoutMs, this.refused, async (c) =>
        (
          await c.query<{ kind: string; unit_id: string; state: string; job_id: string | null; moved_to: string | null }>(
            `select w.kind, w.unit_id, w.state, w.job_id::text, w.moved_to from write_fences w join jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text) using (kind, unit_id)
              where w.state <> 'open' order by w.kind, w.unit_id`,
            [unitList(list)],
          )
        ).rows,
      );
      // A hand change's `moved` row, and a finished move's, are deleted by {@link settle}: no refusal.
      const finished = new Set(await this.finishedJobs(all.flatMap((r) => (r.state === 'moved' && r.job_id !== null ? [r.job_id] : []))));
      const settled = (row: (typeof all)[number]): boolean => row.state === 'moved' && (row.job_id === null || finished.has(row.job_id));
      const rows = all.filter((row) => !settled(row));
      const [r] = rows;
      if (r !== undefined) {
        const by = r.job_id === null ? "a hand change's, job_id null" : `move job #${r.job_id}`;
        const more = rows.length > 1 ? ` (and ${rows.length - 1} more unit(s) there)` : '';
        throw new Error(
          `${this.refused}: ${r.kind} ${r.unit_id}'s write_fences row on ${shard}, its new owner, is '${r.state}' (${by}${r.moved_to === null ? '' : `, moved to ${r.moved_to}`})${more}: ${shard} would refuse the unit's writes (${r.state === 'moved' ? 'CAF02' : 'CAF01'}) while the map sends them there. ` +
            (r.state === 'moved'
              ? `Let the move finish (its 'moved' row there is then deleted by the change), then publish again; or move the unit instead (a move's preparation takes that row over). Do not open the row by hand first: the move's clean-up or rollback may still delete the unit's rows there`
              : `Try again once the change in flight there has ended`) +
            ' (docs/sharding-spec.md section 9, "A map published by hand fences the old owner"). Nothing was written',
        );
      }
      await this.refuseRowsBehindMoved(shard, pool, list, all.filter(settled));
    }
    // A directory key taken to a shard its slot left (the slot's row there `moved`, by a move or a
    // hand change, or `fenced` by one in flight), the key not in that row's excluded keys (not
    // pinned when the slot left): with no `open` row of the key there (none, or a `moved` one that
    // {@link settle} deletes), the slot's row decides for the key, and the shard refused every write
    // of it (`CAF02`) while the pin sent them there, for good ("routing is not converging";
    // owner-change-fenced-directory.test.ts, "a key pinned to a shard its slot left").
    for (const [shard, list] of byShard) {
      const keys = list.filter((u) => u.kind === 'directory');
      if (keys.length === 0) continue;
      const rows = await boundedCount(this.pools.get(shard) as Queryable, shard, this.timeoutMs, this.refused, async (c) =>
        (
          await c.query<{ key: string; slot: string; state: string; job_id: string | null; moved_to: string | null }>(
            `select u.key, s.unit_id as slot, s.state, s.job_id::text, s.moved_to
               from jsonb_to_recordset($1::jsonb) as u(key text, slot text)
               join write_fences s on s.kind = 'slot' and s.unit_id = u.slot
              where s.state in ('moved', 'fenced') and not (u.key = any(s.excluded_keys))
                and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = u.key and d.state = 'open')
              order by u.key`,
            [JSON.stringify(keys.map((u) => ({ key: u.unitId, slot: String(slotOf(u.unitId)) })))],
          )
        ).rows,
      );
      const [r] = rows;
      if (r === undefined) continue;
      const by = r.job_id === null ? 'a hand change' : `move job #${r.job_id}`;
      throw new Error(
        `${this.refused}: key ${r.key}'s slot ${r.slot} left ${shard} (its write_fences row there is '${r.state}'${r.moved_to === null ? '' : ` to ${r.moved_to}`}, by ${by}, and the key is not in its excluded keys), and no 'open' row of the key there decides for it: ${shard} would refuse every write of the key (CAF02) while the pin sends them there, for good. Move the key there instead (POST /shards/moves {"kind":"directory","unit":"${r.key}","to":"${shard}"}), which writes its own row there, or move its slot there first (docs/sharding-spec.md section 9, "A pin changed by hand fences the old owner"). Nothing was written`,
      );
    }
    // A move of the unit past its flip, unfinished, from its new owner: its clean-up deletes the
    // unit's rows there, whatever that shard's row says (its `moved` row, refused above, opened by
    // hand), and so every write the map sends there meanwhile (owner-change-skip-race.test.ts).
    const [cleaning] = await this.flippedMovesFrom(units);
    if (cleaning !== undefined) {
      throw new Error(
        `${this.refused}: ${cleaning.kind} ${cleaning.unit_id}'s move job #${cleaning.id} (${cleaning.from_shard} to ${cleaning.to_shard}, ${cleaning.state}) is past its flip and unfinished: its clean-up deletes the unit's rows on ${cleaning.from_shard}, the new owner, and would delete the writes the map sends there. Let the move finish (its 'moved' row there is then deleted by the change), then publish again; or move the unit instead (docs/sharding-spec.md section 9, "A map published by hand fences the old owner"). Nothing was written`,
      );
    }
  }

  /**
   * Refuses the change where `shard`, a new owner, holds rows of a unit of `list` behind its `moved`
   * row of it (`behind`: the rows {@link settle} deletes), naming the first unit, its rows and the
   * row; see {@link refuseRefusingNewOwners}.
   */
  private async refuseRowsBehindMoved(shard: string, pool: Queryable, list: readonly FencedUnit[], behind: ReadonlyArray<{ kind: string; unit_id: string; job_id: string | null }>): Promise<void> {
    if (behind.length === 0) return;
    const units = behind.flatMap((row) => list.filter((u) => u.kind === row.kind && u.unitId === row.unit_id).map((u) => ({ unit: u, row })));
    const held = await boundedCount(pool, shard, this.timeoutMs, this.refused, async (c) => {
      const out: Array<{ unit: FencedUnit; jobId: string | null; rows: TableRows[] }> = [];
      const slots = units.filter((x) => x.unit.kind === 'slot');
      const bySlot = await slotRowsOn(
        c,
        slots.map((x) => Number(x.unit.unitId)),
        slots.flatMap((x) => x.unit.excludedKeys),
      );
      for (const x of slots) {
        const rows = bySlot.get(Number(x.unit.unitId));
        if (rows !== undefined) out.push({ unit: x.unit, jobId: x.row.job_id, rows });
      }
      for (const x of units.filter((y) => y.unit.kind === 'directory')) {
        const rows = await keyRowsOn(c, x.unit.unitId);
        if (rows.length > 0) out.push({ unit: x.unit, jobId: x.row.job_id, rows });
      }
      return out;
    });
    const [h] = held;
    if (h === undefined) return;
    const what = h.unit.kind === 'slot' ? `slot ${h.unit.unitId}` : `key ${h.unit.unitId}`;
    const by = h.jobId === null ? "a hand change's, job_id null" : `move job #${h.jobId}, finished`;
    const more = held.length > 1 ? ` (and ${held.length - 1} more unit(s) there)` : '';
    const find =
      h.unit.kind === 'slot'
        ? `select id, email from users where slot = ${h.unit.unitId}; select id, owner_id, slot from documents where owner_id in (select id from users where slot = ${h.unit.unitId})`
        : `select id, email from users where id = '${h.unit.unitId}'; select id, slot from documents where owner_id = '${h.unit.unitId}'`;
    throw new Error(
      `${this.refused}: ${what}'s new owner ${shard} holds rows of it (${describeRows(h.rows)}) behind its 'moved' row (${by})${more}: rows the unit left there when it went away (a move's clean-up keeps a user that still owns documents stored under another slot, written before shard migration 015), read by no one since. ` +
        `Published, that row would be deleted and ${shard} would serve them again as the unit's, as they were then (a user deleted or changed on ${h.unit.from} since, back with its old data). ` +
        `Find them on ${shard} (${find}), give each document under another slot its owner's slot or delete it (docs/sharding-spec.md section 9, "A document's slot is its owner's"), delete the rows, then publish again; or, having checked them, pass { rowsLeftOn: 'checked' } and delete the 'moved' row on ${shard} yourself after the commit. Nothing was written`,
    );
  }

  /** Puts every row {@link fence} changed back as it was; a shard that cannot be reached keeps its row `fenced` (its writes refused, none lost). */
  async putBack(): Promise<void> {
    const shards = [...this.shardsOf];
    this.fenced = [];
    this.shardsOf = new Map();
    this.newOwners = new Map();
    this.skipped = new Map();
    this.changed = [];
    for (const [shard, rows] of shards) {
      const pool = this.pools.get(shard) as Queryable;
      // Each statement here (and in settle) is one of its own on the shard's pool, at its login's
      // or database's default_transaction_isolation, and a compare-and-set on a row another
      // session may be changing: a review of the fence rows (`shards fences --settle`) settling
      // the same row once this change's transaction has ended. At REPEATABLE READ one that waited
      // for that session failed with 40001 once it committed, where READ COMMITTED finds the row
      // changed and leaves it: a publication that had committed threw that its fences stayed
      // `fenced`, the review having set them `moved` (owner-change-settle-race.test.ts). Sent again
      // (retryingSerializationFailures), it judges the row as READ COMMITTED does.
      await retryingSerializationFailures(() =>
        pool.query(
          `with u as (select * from jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text, prior jsonb)),
                gone as (delete from write_fences w using u where w.kind = u.kind and w.unit_id = u.unit_id and u.prior is null and w.state = 'fenced' and w.job_id is null)
           update write_fences w set state = coalesce(u.prior ->> 'state', 'open'), moved_to = u.prior ->> 'movedTo', map_version = (u.prior ->> 'mapVersion')::bigint, job_id = (u.prior ->> 'jobId')::bigint,
                  excluded_keys = array(select jsonb_array_elements_text(u.prior -> 'excludedKeys')), updated_at = now()
             from u where w.kind = u.kind and w.unit_id = u.unit_id and u.prior is not null and w.state = 'fenced' and w.job_id is null`,
          [JSON.stringify(rows.map((r) => ({ kind: r.kind, unit_id: r.unitId, prior: r.prior })))],
        ),
      ).catch(() => undefined);
    }
  }

  /**
   * Turns every row {@link fence} fenced `moved` to its new owner as of `version`, and, unless
   * `newOwners` is false (the write not committed yet: a caller's transaction), deletes a hand
   * change's or a finished move's `moved` row of the unit on its new owner; throws, naming the rows
   * left `fenced`, where a shard fails.
   */
  async settle(version: number, newOwners = true): Promise<void> {
    const failed: string[] = [];
    for (const [shard, rows] of this.shardsOf) {
      const pool = this.pools.get(shard) as Queryable;
      // Sent again on 40001: see putBack.
      await retryingSerializationFailures(() =>
        pool.query(
          `update write_fences w set state = 'moved', moved_to = u."to", map_version = $2::bigint, updated_at = now()
             from jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text, "to" text)
            where w.kind = u.kind and w.unit_id = u.unit_id and w.state = 'fenced' and w.job_id is null`,
          [JSON.stringify(rows.map((r) => ({ kind: r.kind, unit_id: r.unitId, to: r.to }))), version],
        ),
      ).catch((err: unknown) => failed.push(`${shard} (${err instanceof Error ? err.message : String(err)})`));
    }
    for (const [shard, units] of newOwners ? this.newOwners : []) {
      const pool = this.pools.get(shard) as Queryable;
      const list = unitList(units);
      await (async () => {
        // A move's `moved` row of the unit there (the unit moved away from this shard earlier, or a
        // move to it rolled back): deleted as a hand change's is once its job has finished (its
        // clean-up or rollback left the shard no row of the unit). Left, the new owner refused every
        // write of the unit (`CAF02`, re-routed back to it until "routing is not converging"), and
        // the operator's way out, deleting it before the publication, let writers whose maps still
        // named this shard be acknowledged here meanwhile, out of sight for good if the
        // publication was then refused (owner-change-torture.test.ts). An unfinished move's (past
        // its flip, cleaning up) is left.
        // Only a row older than this change's version: a later change's (which took the slot from
        // this shard after this change published: its `moved` row, as of its later version) is kept
        // (owner-change-settle-race.test.ts).
        const finished = await this.finishedMovedJobs(pool, list);
        // Sent again on 40001 (see putBack): a review deleting the same row, or a move's
        // preparation taking it over, while this waited for it.
        await retryingSerializationFailures(() =>
          pool.query(
            `delete from write_fences w using jsonb_to_recordset($1::jsonb) as u(kind text, unit_id text)
              where w.kind = u.kind and w.unit_id = u.unit_id and w.state = 'moved' and (w.job_id is null or w.job_id = any($2::bigint[]))
                and (w.map_version is null or w.map_version < $3::bigint)`,
            [list, finished, version],
          ),
        );
      })().catch((err: unknown) => failed.push(`${shard}, the new owner (${err instanceof Error ? err.message : String(err)})`));
    }
    if (failed.length > 0) throw this.leftFenced(new Error(failed.join('; ')), `its fences could not all be settled: ${failed.join('; ')}`);
  }

  /** The error of a change whose outcome leaves fences `fenced` (`why`): their units' writes are refused there until an operator settles them. */
  leftFenced(cause: unknown, why: string): Error {
    const rows = this.fenced.map((r) => `${r.kind} ${r.unitId}`).join(', ');
    return new Error(
      `the owner change was written, but ${why}: the write_fences rows of ${rows} on the old owner(s) stay 'fenced' (writes refused there, none lost) until set 'moved' to the new owner (or put back where the catalog still names the old owner): ca-dms-scaling shards fences --settle does either, checking the catalog (docs/sharding-spec.md section 9, "Settling the rows a hand change left")`,
      { cause },
    );
  }
}

/**
 * Waits, on `c` (an old owner), for the writers that may have read no fence: transactions begun
 * before this call that hold ROW EXCLUSIVE on a sharded table (taken by a statement writing it,
 * held to the transaction's end: one that has written the table, or is writing it), and any
 * prepared transaction that wrote a sharded table (conservatively, whatever its age). A
 * transaction that only locked a table (or wrote other tables) is not waited for: it cannot have
 * written the unit's rows, and a count waiting on its lock is bounded as any count.
 * Within `deadline` (a `performance.now()` time, less 200 ms: the caller's own bound is a little
 * later), else returns what is still open (null once none is).
 */
async function drainOlderWriters(c: Queryable, deadline: number): Promise<string | null> {
  const { rows } = await c.query<{ t: Date }>('select clock_timestamp() as t');
  const since = rows[0]?.t;
  for (;;) {
    // pg_stat_activity is read once per transaction (this runs in one: boundedCount's), then kept.
    await c.query('select pg_stat_clear_snapshot()');
    const { rows: left } = await c.query<{ pids: string[]; prepared: number }>(
      `select array(select a.pid || ' (' || coalesce(nullif(a.application_name, ''), a.usename::text, '?') || ', ' || coalesce(a.state, '?') || ')' from pg_stat_activity a
                where a.datname = current_database() and a.pid <> pg_backend_pid() and a.backend_type = 'client backend' and a.xact_start < $1
                  and exists (select 1 from pg_locks l where l.pid = a.pid and l.granted and l.mode = 'RowExclusiveLock' and l.relation in (${SHARDED_TABLES}))) as pids,
             (select count(*)::int from pg_prepared_xacts p
                where p.database = current_database()
                  and exists (select 1 from pg_locks x join pg_locks l on l.virtualtransaction = x.virtualtransaction
                               where x.locktype = 'transactionid' and x.transactionid = p.transaction and x.pid is null
                                 and l.locktype = 'relation' and l.mode = 'RowExclusiveLock'
                                 and l.database = (select oid from pg_database where datname = current_database())
                                 and l.relation in (${SHARDED_TABLES}))) as prepared`,
      [since],
    );
    const pids = left[0]?.pids ?? [];
    const prepared = left[0]?.prepared ?? 0;
    if (pids.length === 0 && prepared === 0) return null;
    if (performance.now() > deadline - 200) {
      return [pids.length > 0 ? `${pids.length} writer(s) (pid ${pids.slice(0, 5).join(', ')})` : '', prepared > 0 ? `${prepared} prepared transaction(s) that wrote users, documents or document_keys` : '']
        .filter(Boolean)
        .join(' and ');
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}
