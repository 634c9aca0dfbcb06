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
    const route = await change.route(client);
    await change.refuse(route);
    return change.write(client);
  }
  try {
    await client.query('savepoint ca_dms_owner_change');
  } catch (err) {
    if ((err as { code?: string }).code !== NO_ACTIVE_TRANSACTION) throw err;
    return ownTransaction(client, change);
  }
  try {
    const done = await catalogFirst(client, change);
    await client.query('release savepoint ca_dms_owner_change');
    return done;
  } catch (err) {
    await client.query('rollback to savepoint ca_dms_owner_change; release savepoint ca_dms_owner_change').catch(() => undefined);
    throw err;
  }
}

async function ownTransaction<R, T>(client: Queryable, change: CountedChange<R, T>, rollbackFailed: () => void = () => undefined): Promise<T> {
  await client.query('begin');
  try {
    const done = await catalogFirst(client, change);
    await client.query('commit');
    return done;
  } catch (err) {
    await client.query('rollback').catch(rollbackFailed);
    throw err;
  }
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
    await change.refuse(route);
    if (change.sameRoute === undefined) break;
    // No lock was held during the count: another session's change may have committed meanwhile.
    // A write with no check of its own would overwrite it with the count of a shard the unit no
    // longer routes to (owner-change-count-stale.test.ts).
    const now = await change.route(client);
    if (change.sameRoute(route, now)) break;
    if (counts >= MAX_COUNTS) throw new Error(`the unit's route changed ${counts} times while its rows were counted (another session changing it meanwhile); nothing was changed: try again`);
    route = now;
  }
  return change.write(client);
}
