/**
 * Issue #15, a review of the slot pin locks (sharding migration 017, `catalog.slot_pin_locks`) the
 * way a PostgreSQL engineer reads locks: their order against each other and against
 * `catalog.slot_maps`, and the snapshots the reads after them see.
 *
 * Lock orders (catalog side; a change's shard work runs in transactions of its own, committed
 * before it waits on the catalog again, and `catalog.owner_change_review` is only ever waited for
 * by the changes, which share it, while a review takes it NOWAIT):
 * - a pin, repin or unpin: the key's directory row, then its slot's row FOR SHARE (a tried write,
 *   rolled back to a savepoint), `owner_change_review` FOR SHARE, then the directory row and the
 *   slot's row again;
 * - a map published by hand: the rows of the slots it gives away FOR UPDATE in slot order, then
 *   `owner_change_review` FOR SHARE, then its insert into `catalog.slot_maps` (ROW EXCLUSIVE);
 * - a slot move's plan: its `catalog.move_jobs` row, its slot's row FOR UPDATE, then `catalog.slot_maps`
 *   in SHARE mode (sharding migration 008).
 * Each alone cannot cycle. A caller's transaction (the stores take one) holds the locks of its
 * earlier changes, and can: pins of a higher slot then a lower one against a map giving both away
 * (which locks the lower first); a map published, then a pin of a slot whose move is being planned
 * (the plan holds the slot and waits for `slot_maps`). PostgreSQL ends one after its
 * deadlock_timeout (a second): the one ended is refused naming the deadlock (before: "held
 * catalog.slot_pin_locks for more than 5000 ms", a wait that never happened; or, for a plan, the
 * bare "could not record the move: deadlock detected"), nothing written, the other goes on. The
 * plan's wait for `slot_maps` was unbounded while it held its slot's lock: now bounded as the others.
 *
 * Isolation: the reads after each lock (the pin's of the slot's owner and move jobs, the map's of
 * the slots' pinned keys, the plan's of the directory) must see what the other side committed
 * while it waited. In a caller's REPEATABLE READ or SERIALIZABLE transaction they read its first
 * snapshot and the race the lock closes was back; so was it in the stores' own transactions and the
 * plan's, begun with the login's default_transaction_isolation. Now a change in such a caller's
 * transaction is refused, naming the level, nothing written, and the stores' own transactions and
 * the plan's are begun READ COMMITTED.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapError } from '../../../functions/core/sharding/errors.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { DirectoryError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { MoveConflictError } from '../../../functions/adapters/postgres/move-jobs.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { countingStores, keysInSlot, refusalOf, settledOrWaiting, sides, startMoveEnv, userWriteOutcome, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
/** Sessions of the catalog whose transactions default to REPEATABLE READ (a database or login configured so). */
let repeatableRead: pg.Pool;
/**
 * Sessions of the catalog whose deadlock check runs 3 s into a lock wait (deadlock_timeout, 1 s by
 * default), for the side of a cycle that waits first and must be the one PostgreSQL ends: the
 * other side's wait then begins well before the check, even on a loaded machine (at 1 s it began
 * after it, and the other side was ended instead).
 */
let patientDeadlocks: pg.Pool;
beforeAll(async () => {
  env = await startMoveEnv();
  repeatableRead = new pg.Pool({ connectionString: env.urls.catalog, max: 4, options: '-c default_transaction_isolation=repeatable\\ read' });
  repeatableRead.on('error', () => undefined);
  patientDeadlocks = new pg.Pool({ connectionString: env.urls.catalog, max: 4, options: '-c deadlock_timeout=3s' });
  patientDeadlocks.on('error', () => undefined);
  // Every slot's row, as a catalog migrated after its first map holds them (migration 017 inserts
  // them): inserted by the first lock instead, a row committed after a REPEATABLE READ snapshot
  // fails that transaction's `insert ... on conflict do nothing` (40001), which hid the race.
  await env.catalog.query('insert into catalog.slot_pin_locks (slot) select generate_series(0, 4095) on conflict do nothing');
}, 120_000);
afterAll(async () => {
  await repeatableRead?.end();
  await patientDeadlocks?.end();
  await env?.stop();
});

/** A connection of the catalog in a transaction begun as `begin` says (a caller's transaction). */
async function openTransaction(begin = 'begin'): Promise<pg.PoolClient> {
  const c = await env.catalog.connect();
  await c.query(begin);
  return c;
}

/** Ends `c`'s transaction (if still open) and gives it back. */
async function close(c: pg.PoolClient): Promise<void> {
  await c.query('rollback').catch(() => undefined);
  c.release();
}

/** The `write_fences` row of `slot` on `pool`: its state and the keys it keeps out. */
async function slotRow(pool: pg.Pool, slot: number): Promise<{ state: string; excluded_keys: string[] } | undefined> {
  const { rows } = await pool.query<{ state: string; excluded_keys: string[] }>(`select state, excluded_keys from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
  return rows[0];
}

/** Whether a fresh transaction can lock `slots`' rows of catalog.slot_pin_locks FOR UPDATE at once: no change left one held. */
async function slotsFree(slots: readonly number[]): Promise<boolean> {
  const c = await openTransaction();
  try {
    await c.query('select slot from catalog.slot_pin_locks where slot = any($1::int[]) for update nowait', [slots]);
    return true;
  } catch {
    return false;
  } finally {
    await close(c);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('deadlocks over catalog.slot_pin_locks', () => {
  it('a caller transaction pinning a key of a higher slot, then of a lower one, while a map published by hand gives both away: PostgreSQL ends the map, refused naming the deadlock, nothing published; the pins commit, and the map published again keeps both keys out', async () => {
    const [low, high] = [2401, 2402];
    const { from, to, source } = await sides(env, low);
    expect(await env.ownerOf(high)).toBe(from);
    const [kLow] = keysInSlot(low, 1) as [string];
    const [kHigh] = keysInSlot(high, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    const patient = new SlotMapStore(patientDeadlocks, { shardPools: env.shards });
    const before = await slotMaps.current();
    const caller = await openTransaction();
    let published: Promise<unknown> | undefined;
    let pinned: Promise<unknown> | undefined;
    try {
      // The caller's own check would end it instead, were it to run first.
      await caller.query(`set local deadlock_timeout = '60s'`);
      await directory.set(kHigh, from, 'ops@example.com', caller);
      // The map locks the lower slot, then waits for the higher one (the caller's).
      published = refusalOf(patient.publishByHand(moveSlots(before, [low, high], to), 'test: two slots given away by hand'));
      expect(await settledOrWaiting(env, published)).toBe('waiting');
      // The caller then waits for the lower one (the map's): a cycle, closed before the map's
      // deadlock check, which ends it.
      pinned = refusalOf(directory.set(kLow, from, 'ops@example.com', caller));
      const refused = await published;
      expect(refused).toBeInstanceOf(SlotMapError);
      expect((refused as Error).message).toMatch(/each waited for a lock the other held, a deadlock, which PostgreSQL ended by refusing this change \(SQLSTATE 40P01\).*Nothing was published/);
      expect((refused as Error).message).not.toMatch(/for more than \d+ ms/);
      expect(await pinned).toBeNull();
      await caller.query('commit');
    } finally {
      // Each side ended before the connection goes back (a failed expectation left one running on it).
      await Promise.all([published, pinned]);
      await close(caller);
    }
    expect((await slotMaps.current()).version).toBe(before.version);
    expect(await slotRow(source, low)).toBeUndefined();
    expect(await slotRow(source, high)).toBeUndefined();
    expect(await slotsFree([low, high])).toBe(true);
    expect((await directory.entry(kLow))?.shardId).toBe(from);
    expect((await directory.entry(kHigh))?.shardId).toBe(from);
    await slotMaps.publishByHand(moveSlots(before, [low, high], to), 'test: two slots given away by hand, again');
    expect(await slotRow(source, low)).toMatchObject({ state: 'moved', excluded_keys: [kLow] });
    expect(await slotRow(source, high)).toMatchObject({ state: 'moved', excluded_keys: [kHigh] });
    expect(await userWriteOutcome(source, low, kLow)).toBe('acknowledged');
    expect(await userWriteOutcome(source, high, kHigh)).toBe('acknowledged');
  }, 60_000);

  it('the same cycle closed after the map deadlock check: PostgreSQL ends the pin, refused naming the deadlock, its write undone; the caller transaction goes on and commits its first pin, and the map, then published, keeps that key out', async () => {
    const [low, high] = [2403, 2404];
    const { from, to, source, target } = await sides(env, low);
    const [kLow] = keysInSlot(low, 1) as [string];
    const [kHigh] = keysInSlot(high, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    const before = await slotMaps.current();
    const caller = await openTransaction();
    let published: Promise<unknown> | undefined;
    try {
      await directory.set(kHigh, from, 'ops@example.com', caller);
      published = refusalOf(slotMaps.publishByHand(moveSlots(before, [low, high], to), 'test: two slots given away by hand'));
      expect(await settledOrWaiting(env, published)).toBe('waiting');
      // Past the map's deadlock_timeout (a second): its one check found no cycle, the pin's finds
      // it, at once (the map's wait is bounded: the caller must commit within it).
      await sleep(1_500);
      await caller.query(`set local deadlock_timeout = '100ms'`);
      const refused = await refusalOf(directory.set(kLow, from, 'ops@example.com', caller));
      expect(refused).toBeInstanceOf(DirectoryError);
      expect((refused as Error).message).toMatch(new RegExp(`cannot pin key ${kLow}: .*each waited for a lock the other held, a deadlock, which PostgreSQL ended by refusing this change \\(SQLSTATE 40P01\\).*Nothing was written`));
      expect((refused as Error).message).not.toMatch(/for more than \d+ ms/);
      // Back at its savepoint: the caller's transaction is usable, its first pin there, the second not.
      expect((await directory.entry(kHigh, caller))?.shardId).toBe(from);
      expect(await directory.entry(kLow, caller)).toBeNull();
      await caller.query('commit');
    } finally {
      await close(caller);
      await published;
    }
    // The map waited for the caller's commit (within its bound) and read its pin.
    expect(await published).toBeNull();
    expect(await slotsFree([low, high])).toBe(true);
    expect(await directory.entry(kLow)).toBeNull();
    expect(await slotRow(source, high)).toMatchObject({ state: 'moved', excluded_keys: [kHigh] });
    expect(await userWriteOutcome(source, high, kHigh)).toBe('acknowledged');
    expect(await userWriteOutcome(target, low, kLow)).toBe('acknowledged');
  }, 60_000);

  it('a caller transaction that published a map, then pins a key of a slot whose move is being planned: PostgreSQL ends the plan, refused naming the deadlock, nothing recorded; the caller commits both', async () => {
    const [given, planned] = [2405, 2406];
    const { from, to } = await sides(env, planned);
    const [key] = keysInSlot(planned, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const patient = new Mover({ catalog: patientDeadlocks, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0 });
    const caller = await openTransaction();
    let plan: Promise<unknown> | undefined;
    let pinned: Promise<unknown> | undefined;
    try {
      await caller.query(`set local deadlock_timeout = '60s'`);
      await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [given], to), 'test: a slot given away by hand', caller);
      // The plan locks its slot, then waits for the SHARE lock on catalog.slot_maps (the caller's map).
      plan = refusalOf(patient.plan({ kind: 'slot', slot: planned, to, createdBy: 'test' }));
      expect(await settledOrWaiting(env, plan)).toBe('waiting');
      pinned = refusalOf(directory.set(key, from, 'ops@example.com', caller));
      const refused = await plan;
      expect(refused).toBeInstanceOf(MoveConflictError);
      expect((refused as Error).message).toMatch(new RegExp(`cannot plan the move of slot ${planned}: .*a deadlock, which PostgreSQL ended by refusing this plan \\(SQLSTATE 40P01\\).*Nothing was recorded: plan it again`));
      expect(await pinned).toBeNull();
      await caller.query('commit');
    } finally {
      await Promise.all([plan, pinned]);
      await close(caller);
    }
    const { rows } = await env.catalog.query(`select id from catalog.move_jobs where slot = $1`, [planned]);
    expect(rows).toEqual([]);
    expect(await env.ownerOf(given)).toBe(to);
    expect((await directory.entry(key))?.shardId).toBe(from);
    expect(await slotsFree([given, planned])).toBe(true);
    // Planned again, the move keeps the key out.
    expect((await mover.plan({ kind: 'slot', slot: planned, to, createdBy: 'test' })).excludedKeys).toEqual([key]);
  }, 60_000);

  it('a slot move planned while a map is inserted and left uncommitted in a caller transaction waits within a bound, then is refused naming it, nothing recorded (before: it waited as long as that transaction, holding its slot lock)', async () => {
    const [given, planned] = [2407, 2408];
    const { to } = await sides(env, planned);
    const { slotMaps } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const caller = await openTransaction();
    let plan: Promise<unknown> | undefined;
    try {
      await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [given], to), 'test: a slot given away by hand', caller);
      const started = Date.now();
      plan = refusalOf(mover.plan({ kind: 'slot', slot: planned, to, createdBy: 'test' }));
      const refused = await Promise.race([plan, sleep(9_000).then(() => 'still waiting')]);
      expect(refused).toBeInstanceOf(MoveConflictError);
      expect(Date.now() - started).toBeLessThan(9_000);
      expect((refused as Error).message).toMatch(new RegExp(`cannot plan the move of slot ${planned}: a slot map inserted into catalog.slot_maps and not yet committed .* held the table for more than \\d+ ms \\(what the plan's 5000 ms for its lock waits had left\\).*Nothing was recorded`));
      // A pin of the planned slot is not held behind it.
      expect(await slotsFree([planned])).toBe(true);
    } finally {
      await close(caller);
      await plan;
    }
    const { rows } = await env.catalog.query(`select id from catalog.move_jobs where slot = $1 and state = 'planned'`, [planned]);
    expect(rows).toEqual([]);
  }, 60_000);
});

describe('isolation: the reads after the slot lock need a snapshot taken after it', () => {
  it.each(['repeatable read', 'serializable'])('a pin in a caller transaction at %s is refused naming the level, nothing written (before: a map given the slot away after its snapshot went unseen, and the key was pinned to the old owner, refused there for good)', async (level) => {
    const slot = level === 'serializable' ? 2410 : 2409;
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    const caller = await openTransaction(`begin isolation level ${level}`);
    try {
      // The caller's snapshot, taken by its first statement, before the map.
      await caller.query('select 1');
      await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'test: the slot given away by hand');
      const refused = await refusalOf(directory.set(key, from, 'ops@example.com', caller));
      await caller.query('commit');
      expect(refused).toBeInstanceOf(DirectoryError);
      expect((refused as Error).message).toMatch(new RegExp(`cannot pin key ${key}: its catalog transaction is ${level.toUpperCase()}, .*Nothing was written: make the change in a READ COMMITTED transaction`));
    } finally {
      await close(caller);
    }
    expect(await directory.entry(key)).toBeNull();
    expect(await userWriteOutcome(target, slot, key)).toBe('acknowledged');
  }, 60_000);

  it('a map published by hand in a caller transaction at repeatable read is refused naming the level, nothing published (before: a pin committed after its snapshot was not kept out, the key refused for good on its pin)', async () => {
    const slot = 2411;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    const before = await slotMaps.current();
    const caller = await openTransaction('begin isolation level repeatable read');
    try {
      await caller.query('select 1');
      await directory.set(key, from, 'ops@example.com');
      const refused = await refusalOf(slotMaps.publishByHand(moveSlots(before, [slot], to), 'test: the slot given away by hand', caller));
      await caller.query('commit');
      expect(refused).toBeInstanceOf(SlotMapError);
      expect((refused as Error).message).toMatch(/cannot publish slot map version \d+ by hand: its catalog transaction is REPEATABLE READ, .*Nothing was published: make the change in a READ COMMITTED transaction/);
    } finally {
      await close(caller);
    }
    expect((await slotMaps.current()).version).toBe(before.version);
    expect(await slotRow(source, slot)).toBeUndefined();
    expect(await userWriteOutcome(source, slot, key)).toBe('acknowledged');
  }, 60_000);

  it('a pin through a client holding no transaction, on sessions defaulting to repeatable read, is not refused for the level: each of its statements is a transaction of its own', async () => {
    const slot = 2415;
    const { from } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    expect((await directory.set(key, from, 'ops@example.com', { query: repeatableRead.query.bind(repeatableRead) })).shardId).toBe(from);
  }, 60_000);

  it('a pin through a store whose catalog sessions default to repeatable read (its own transaction) waits for a map published meanwhile and is refused: the slot changed owner, nothing written', async () => {
    const slot = 2412;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { slotMaps } = countingStores(env);
    const directory = new DirectoryStore(repeatableRead, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: env.shards });
    const map = await openTransaction();
    let pinned: Promise<unknown>;
    try {
      await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'test: the slot given away by hand', map);
      pinned = refusalOf(directory.set(key, from, 'ops@example.com'));
      expect(await settledOrWaiting(env, pinned)).toBe('waiting');
      await map.query('commit');
    } finally {
      await close(map);
    }
    const refused = await pinned;
    expect(refused).toBeInstanceOf(DirectoryError);
    expect((refused as Error).message).toMatch(new RegExp(`slot ${slot} changed owner from ${from} to ${to} while the pin was made.*Nothing was written`));
    expect(await directory.entry(key)).toBeNull();
    expect(await userWriteOutcome(env.shards.get(to) as pg.Pool, slot, key)).toBe('acknowledged');
  }, 60_000);

  it('a map published through a store whose catalog sessions default to repeatable read waits for a pin held open and keeps the key out', async () => {
    const slot = 2413;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const slotMaps = new SlotMapStore(repeatableRead, { shardPools: env.shards });
    const pin = await openTransaction();
    let published: Promise<unknown>;
    try {
      await directory.set(key, from, 'ops@example.com', pin);
      published = refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'test: the slot given away by hand'));
      expect(await settledOrWaiting(env, published)).toBe('waiting');
      await pin.query('commit');
    } finally {
      await close(pin);
    }
    expect(await published).toBeNull();
    expect(await slotRow(source, slot)).toMatchObject({ state: 'moved', excluded_keys: [key] });
    expect(await userWriteOutcome(source, slot, key)).toBe('acknowledged');
  }, 60_000);

  it('a slot move planned by a mover whose catalog sessions default to repeatable read waits for a pin held open and is refused, nothing recorded (before: recorded without the key kept out)', async () => {
    const slot = 2414;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const mover = new Mover({ catalog: repeatableRead, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0 });
    const pin = await openTransaction();
    let planned: Promise<unknown>;
    try {
      await directory.set(key, from, 'ops@example.com', pin);
      planned = refusalOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }));
      expect(await settledOrWaiting(env, planned)).toBe('waiting');
      await pin.query('commit');
    } finally {
      await close(pin);
    }
    const refused = await planned;
    expect(refused).toBeInstanceOf(MoveConflictError);
    expect((refused as Error).message).toMatch(/directory's keys in slot .* changed while this move was planned; nothing was recorded/);
    const { rows } = await env.catalog.query(`select id from catalog.move_jobs where slot = $1`, [slot]);
    expect(rows).toEqual([]);
  }, 60_000);
});
