/**
 * Review of issue #15's count of a unit's rows before an owner change outside a move
 * (owner-change-rows-left.test.ts has the original cases):
 * - with `directory.override_hash` off, a pinned key routes by its hash slot like any other, but
 *   the slot map store left its rows out of the slot's count: a slot whose only rows were a pinned
 *   key's was given to another shard, and the key's reads went there and read 0 documents;
 * - a map that gives away slots without rows read the whole catalog.shard_directory all the same
 *   (it grows by one pin per directory move): it is read now only where a changed slot has rows;
 * - the refusal of an unpin read "..., which send its reads and writes to ...";
 * - (coverage) a slot with rows of both a pinned and an unpinned key is refused for the unpinned
 *   key's rows alone.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryRowsLeftError } from '../../../functions/adapters/postgres/directory-store.js';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, keysInSlot, overrideHashOffRuntime, refusalOf, seedUsers, startMoveEnv, threeShardsOf, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

const pool = (shard: string) => env.shards.get(shard) as pg.Pool;

describe('a slot map under hash_based routing with directory.override_hash off', () => {
  it("counts a pinned key's rows with its slot (the pin does not route it): the map giving the slot away is refused", async () => {
    const runtime = await overrideHashOffRuntime(env);
    try {
      const slot = 2401;
      const { from, to } = await threeShardsOf(env, slot);
      const [key] = keysInSlot(slot, 1) as [string];
      // Pinned where its rows are (a pin to the shard it routes to: nothing counted, written).
      await runtime.directory.set(key, from, 'ops@example.com');
      await seedUsers(pool(from), slot, [key], 3);
      const route = await runtime.router.resolve(key);
      expect({ shardId: route.shardId, source: route.source }).toEqual({ shardId: from, source: 'hash' });

      const before = (await runtime.slotMaps.current()).version;
      const refused = await refusalOf(runtime.slotMaps.publish(moveSlots(await runtime.slotMaps.current(), [slot], to), 'ops@example.com', 'by hand'));
      // Before the fix: published, and the key's reads (by hash) went to `to`, where it has no rows.
      expect(refused).toBeInstanceOf(SlotMapRowsLeftError);
      expect((refused as SlotMapRowsLeftError).slots).toEqual([{ slot, from, to, rows: [{ table: 'users', rows: 1 }, { table: 'documents', rows: 3 }] }]);
      expect((await runtime.slotMaps.current()).version).toBe(before);
    } finally {
      await runtime.close();
    }
  }, 120_000);
});

describe('a slot map giving away slots without rows', () => {
  // The directory is read once, whole, for the keys its pins keep out of the old owner's fence
  // (`excluded_keys`, owner-change-fenced.test.ts); before the fence, not at all.
  it('is published reading catalog.shard_directory once, not once per slot', async () => {
    const statements: string[] = [];
    const catalog = {
      query: (text: string, values?: unknown[]) => {
        statements.push(text);
        return env.catalog.query(text, values);
      },
    } as unknown as pg.Pool;
    const slotMaps = new SlotMapStore(catalog, { shardPools: env.shards });
    const slot = 2411;
    const { to } = await threeShardsOf(env, slot);
    await slotMaps.publish(moveSlots(await slotMaps.current(), [slot, slot + 1, slot + 2], to), 'ops@example.com', 'empty slots');
    expect(await env.ownerOf(slot)).toBe(to);
    // Its reads of the directory's rows; sharding migration 031's probe for the slot column
    // (pinnedKeysOf, pg_attribute) names the table but reads none of them.
    expect(statements.filter((s) => /from catalog\.shard_directory/.test(s))).toHaveLength(1);
  }, 120_000);
});

describe('a slot map giving away a slot with rows of pinned and unpinned keys', () => {
  it("is refused naming the unpinned key's rows alone (the pinned key's are left out)", async () => {
    const { directory, slotMaps } = countingStores(env);
    const slot = 2431;
    const { from, to } = await threeShardsOf(env, slot);
    const [pinned, loose] = keysInSlot(slot, 2) as [string, string];
    await directory.set(pinned, from, 'ops@example.com');
    await seedUsers(pool(from), slot, [pinned], 2);
    await seedUsers(pool(from), slot, [loose], 3);
    const refused = await refusalOf(slotMaps.publish(moveSlots(await slotMaps.current(), [slot], to), 'ops@example.com', 'by hand'));
    expect(refused).toBeInstanceOf(SlotMapRowsLeftError);
    expect((refused as SlotMapRowsLeftError).slots).toEqual([{ slot, from, to, rows: [{ table: 'users', rows: 1 }, { table: 'documents', rows: 3 }] }]);
  }, 120_000);
});

describe('the refusal of an unpin', () => {
  it('reads "which would send its reads and writes to <slot owner>", the key in its canonical form whatever spelling it was given in', async () => {
    const { directory } = countingStores(env);
    const slot = 2421;
    const { from: slotOwner, to: pinnedTo } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(`URN:UUID:${key.toUpperCase()}`, pinnedTo, 'ops@example.com');
    await seedUsers(pool(pinnedTo), slot, [key], 1);
    const unpin = await refusalOf(directory.delete(key.toUpperCase()));
    expect(unpin).toBeInstanceOf(DirectoryRowsLeftError);
    expect((unpin as Error).message).toContain(
      `cannot unpin key ${key}: its rows are on ${pinnedTo} (1 in users, 1 in documents), where the catalog routes it now (its pin, version 1); unpinned, it routes by hash to ${slotOwner} (slot ${slot}), which would send its reads and writes to ${slotOwner} and leave those rows out of their sight`,
    );
    expect(await directory.entry(key)).toMatchObject({ shardId: pinnedTo });
  }, 120_000);
});
