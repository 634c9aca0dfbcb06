/**
 * Issue #15: a first pin of a key to its slot's owner (its route unchanged: nothing fenced) raced a
 * change of its slot that reads the slot's pinned keys once (its `excluded_keys`): a slot map
 * published by hand (through a store given the shards' pools) and a slot move's plan. The pin,
 * committed after that read and before the change's commit, was not among them (each read only
 * what was committed), and both committed:
 * - a publication: the old owner's `moved` slot row did not keep the key out, and the key, pinned
 *   there, had every write refused for good (CAF02, "routing is not converging");
 * - a move's plan: the move copies and cleans up the slot by the keys it read, so the key newly
 *   pinned would have its rows copied away and deleted where its pin names;
 * - an unpin instead, the publication kept the key out and marked it `moved` to its old pin on the
 *   slot's new owner, where the key, unpinned, then routed by hash and was refused for good.
 * Found by owner-change-torture-pins.test.ts with TORTURE_SLOT_PIN_RACES=1 (seeds -205944813,
 * -209043959). Each race is made deterministic here by holding one side open in a caller's
 * transaction (the stores take one) while the other runs: the pin, or the publication. Now both
 * sides lock the slot's row of catalog.slot_pin_locks (sharding migration 017): the change waits
 * for the pin and reads it, or the pin waits for the change and is refused.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapError } from '../../../functions/core/sharding/errors.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { DirectoryError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { MoveConflictError } from '../../../functions/adapters/postgres/move-jobs.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { countingStores, keysInSlot, refusalOf, settledOrWaiting, sides, startMoveEnv, userWriteOutcome, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** A connection of the catalog in a transaction of its own, for one side of a race. */
async function openTransaction(): Promise<pg.PoolClient> {
  const c = await env.catalog.connect();
  await c.query('begin');
  return c;
}

/** The `write_fences` row of `slot` on `pool`: its state and the keys it keeps out. */
async function slotRow(pool: pg.Pool, slot: number): Promise<{ state: string; excluded_keys: string[] } | undefined> {
  const { rows } = await pool.query<{ state: string; excluded_keys: string[] }>(`select state, excluded_keys from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
  return rows[0];
}

describe('a first pin of a key to its slot owner racing a change of its slot', () => {
  it('a map published by hand while the pin is written and not yet committed waits for it and keeps the key out: its writes on the pin shard are acknowledged', async () => {
    const slot = 2301;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    const pin = await openTransaction();
    try {
      await directory.set(key, from, 'ops@example.com', pin);
      const published = refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'test: the slot given away by hand'));
      // Now it waits for the pin (before: it read the slot's pinned keys without the key and committed).
      await settledOrWaiting(env, published);
      await pin.query('commit');
      expect(await published).toBeNull();
    } finally {
      await pin.query('rollback').catch(() => undefined);
      pin.release();
    }
    expect((await directory.entry(key))?.shardId).toBe(from);
    expect(await env.ownerOf(slot)).toBe(to);
    // Before: refused CAF02 for good, the key pinned to a shard whose slot row does not keep it out.
    expect(await userWriteOutcome(source, slot, key)).toBe('acknowledged');
    expect(await slotRow(source, slot)).toMatchObject({ state: 'moved', excluded_keys: [key] });
  }, 60_000);

  it('a map published by hand while an unpin is written and not yet committed waits for it and does not keep the key out: its writes on the new owner are acknowledged', async () => {
    const slot = 2305;
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    await directory.set(key, from, 'ops@example.com');
    const unpin = await openTransaction();
    try {
      expect(await directory.delete(key, unpin)).toBe(true);
      const published = refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'test: the slot given away by hand'));
      // Now it waits for the unpin (before: it read the key still pinned and kept it out).
      await settledOrWaiting(env, published);
      await unpin.query('commit');
      expect(await published).toBeNull();
    } finally {
      await unpin.query('rollback').catch(() => undefined);
      unpin.release();
    }
    expect(await directory.entry(key)).toBeNull();
    expect(await env.ownerOf(slot)).toBe(to);
    // Before: refused CAF02 for good, the new owner holding a 'directory' row of the key moved to its old pin.
    expect(await userWriteOutcome(target, slot, key)).toBe('acknowledged');
  }, 60_000);

  it('a pin made while a map published by hand is written and not yet committed waits for it and is refused, nothing written: the map changed the slot owner', async () => {
    const slot = 2302;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory, slotMaps } = countingStores(env);
    const map = await openTransaction();
    let pinned: Promise<unknown>;
    try {
      await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'test: the slot given away by hand', map);
      pinned = refusalOf(directory.set(key, from, 'ops@example.com'));
      // Now it waits for the map (before: it committed with the slot's owner read before the map).
      await settledOrWaiting(env, pinned);
      await map.query('commit');
    } finally {
      await map.query('rollback').catch(() => undefined);
      map.release();
    }
    const refused = await pinned;
    expect(refused).toBeInstanceOf(DirectoryError);
    expect((refused as Error).message).toMatch(new RegExp(`slot ${slot} changed owner from ${from} to ${to} while the pin was made.*Nothing was written`));
    expect(await directory.entry(key)).toBeNull();
    expect(await env.ownerOf(slot)).toBe(to);
    // The key routes with its slot: its writes go to the new owner, and the old one refuses them (re-routed).
    expect(await userWriteOutcome(env.shards.get(to) as pg.Pool, slot, key)).toBe('acknowledged');
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 2)[1] as string)).toBe('refused CAF02');
  }, 60_000);

  it('a slot move planned while the pin is written and not yet committed waits for it and is refused, nothing recorded', async () => {
    const slot = 2303;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const pin = await openTransaction();
    let planned: Promise<unknown>;
    try {
      await directory.set(key, from, 'ops@example.com', pin);
      planned = refusalOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }));
      // Now it waits for the pin (before: it read the directory without the key and recorded a job
      // that would copy the key's rows to `to` and delete them on `from`, where its pin names).
      await settledOrWaiting(env, planned);
      await pin.query('commit');
    } finally {
      await pin.query('rollback').catch(() => undefined);
      pin.release();
    }
    const refused = await planned;
    expect(refused).toBeInstanceOf(MoveConflictError);
    expect((refused as Error).message).toMatch(/directory's keys in slot .* changed while this move was planned; nothing was recorded/);
    const { rows } = await env.catalog.query(`select id from catalog.move_jobs where slot = $1`, [slot]);
    expect(rows).toEqual([]);
    expect((await directory.entry(key))?.shardId).toBe(from);
    // Planned again, the move keeps the key out.
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect(job.excludedKeys).toEqual([key]);
  }, 60_000);

  it('waits within a bound: a publication by hand meeting a pin held open in a caller transaction is refused, naming the lock, nothing published; so is a pin meeting such a publication', async () => {
    const slot = 2304;
    const { from, to } = await sides(env, slot);
    const [key, other] = keysInSlot(slot, 2) as [string, string];
    const { directory } = countingStores(env);
    const hurried = { slotMaps: new SlotMapStore(env.catalog, { shardPools: env.shards, countTimeoutMs: 500 }), directory: new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: env.shards, countTimeoutMs: 500 }) };
    const before = await hurried.slotMaps.current();
    const pin = await openTransaction();
    try {
      await directory.set(key, from, 'ops@example.com', pin);
      const started = Date.now();
      const refused = await refusalOf(hurried.slotMaps.publishByHand(moveSlots(before, [slot], to), 'test: the slot given away by hand'));
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(refused).toBeInstanceOf(SlotMapError);
      expect((refused as Error).message).toMatch(/held catalog\.slot_pin_locks for more than 500 ms.*Nothing was published/);
      expect((await hurried.slotMaps.current()).version).toBe(before.version);
    } finally {
      await pin.query('rollback');
      pin.release();
    }
    const map = await openTransaction();
    try {
      await countingStores(env).slotMaps.publishByHand(moveSlots(before, [slot], to), 'test: the slot given away by hand', map);
      const refused = await refusalOf(hurried.directory.set(other, from, 'ops@example.com'));
      expect(refused).toBeInstanceOf(DirectoryError);
      expect((refused as Error).message).toMatch(/held catalog\.slot_pin_locks for more than 500 ms.*Nothing was written/);
    } finally {
      await map.query('rollback');
      map.release();
    }
    expect(await directory.entry(other)).toBeNull();
  }, 60_000);
});
