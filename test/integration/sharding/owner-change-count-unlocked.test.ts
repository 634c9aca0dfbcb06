/**
 * Issue #15's review: an owner change by hand counts the unit's rows on the shards with none of its
 * catalog write's locks held. With fbfe55a the write was made first and held uncommitted during
 * the count: a count waiting on a shard (here a table locked there; a slow or unreachable shard
 * alike, the count has no deadline of its own) kept the slot map's insert open, and the SHARE lock
 * of `catalog.slot_maps` a directory move's flip takes (with the key's writes fenced) waited for
 * it. The catalog's checks still come first: the write is tried and undone before the count.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { keysInSlot, lockWaitOn, refusalOf, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let slotMaps: SlotMapStore;
beforeAll(async () => {
  env = await startMoveEnv();
  slotMaps = new SlotMapStore(env.catalog, { shardPools: env.shards });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

describe('SlotMapStore.publishByHand counting the rows of a slot on a shard that makes it wait', () => {
  it("holds no lock of its insert meanwhile: a directory flip's SHARE lock of catalog.slot_maps is granted", async () => {
    const slot = 1700;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 1), 1);
    const before = (await slotMaps.current()).version;
    const locker = await source.connect();
    const flip = await env.catalog.connect();
    try {
      await locker.query('begin; lock table documents in access exclusive mode');
      const publishing = refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'OPS-1700'));
      await lockWaitOn(env.catalog, from);
      // As a directory move's flip of a key without an entry takes it (move-port.ts), bounded here.
      await flip.query(`begin; set local lock_timeout = '2s'`);
      const locked = await flip.query('select catalog.lock_slot_maps_for_hash_route()').then(
        () => 'granted',
        (e: { code?: string }) => `refused ${e.code ?? '?'}`,
      );
      await flip.query('rollback');
      // Before: refused 55P03 (the hand publication's insert, uncommitted, held it until its count ended).
      expect(locked).toBe('granted');
      await locker.query('rollback');
      expect(await publishing).toBeInstanceOf(SlotMapRowsLeftError);
      expect((await slotMaps.current()).version).toBe(before);
    } finally {
      await locker.query('rollback').catch(() => undefined);
      locker.release();
      flip.release();
    }
  }, 60_000);
});
