/**
 * Issue #15: a slot map published by hand leaves the slot's pinned keys out of its fence
 * (`excluded_keys`), as a slot move does, but, unlike a move (`markExcludedKeys`), wrote no
 * `directory` row for them on the slot's new owner. A process whose directory cache had not seen
 * the key's pin yet (a miss cached up to `directory.cache_ttl_seconds`) routed it by hash to the
 * new owner, which took its writes: acknowledged where the catalog does not route the key (its
 * pin names a third shard), out of every reader's sight; an update there touched no row and was
 * acknowledged all the same (found by owner-change-torture-pins.test.ts, seed 424242).
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, keysInSlot, shardIds, startMoveEnv, threeShardsOf, userWriteOutcome, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: shardIds(3).length });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

describe('a slot map published by hand, with a key of the slot pinned to a third shard', () => {
  for (const byHand of [false, true]) {
    it(`${byHand ? 'publishByHand' : 'publish'}: the new owner refuses the pinned key's writes (CAF02), as after a slot move; the pin's shard takes them`, async () => {
      const slot = byHand ? 2121 : 2120;
      const { from, to, third } = await threeShardsOf(env, slot);
      const [key] = keysInSlot(slot, 1) as [string];
      const { directory, slotMaps } = countingStores(env);
      await directory.set(key, third, 'ops@example.com');
      const next = moveSlots(await slotMaps.current(), [slot], to);
      if (byHand) await slotMaps.publishByHand(next, 'test: the slot given away by hand');
      else await slotMaps.publish(next, 'ops@example.com', 'test: the slot given away by hand');
      // A router whose directory cache has no pin for the key (a miss cached before the pin) routes it by hash to `to`.
      // Before: acknowledged on `to`, where the catalog does not route the key (its pin names `third`).
      expect(await userWriteOutcome(env.shards.get(to) as pg.Pool, slot, key)).toBe('refused CAF02');
      expect(await userWriteOutcome(env.shards.get(from) as pg.Pool, slot, key)).toBe('refused CAF02');
      expect(await userWriteOutcome(env.shards.get(third) as pg.Pool, slot, key)).toBe('acknowledged');
    }, 60_000);
  }
});
