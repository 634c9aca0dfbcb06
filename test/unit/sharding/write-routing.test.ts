import { describe, expect, it } from 'vitest';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { buildSlotMap, moveSlots, type SlotMap } from '../../../functions/core/sharding/slot-map.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';

const shards = ['shard_001', 'shard_002'].map((id, i) => ({ shard_id: id, database_url: `postgresql://app:pw@db${i}:5432/ca_dms` }));
const config = parseShardingConfig({ shards, default_shard: 'shard_001' });
const v1 = buildSlotMap(shards.map((s) => ({ shardId: s.shard_id, weight: 1 })));
const key = '0b9c3a52-5d0e-4f0a-9a51-3c1c8f0f2a10';

/** The slot-map store's polling side as a list of published maps: the unit under test is the write routing. */
function publishedMaps(maps: SlotMap[]): { currentIfNewer(known: number): Promise<SlotMap | null>; asked: number[] } {
  const asked: number[] = [];
  return {
    asked,
    currentIfNewer(known) {
      asked.push(known);
      const latest = maps.at(-1);
      return Promise.resolve(latest && latest.version > known ? latest : null);
    },
  };
}

describe('routerForWrites', () => {
  it('asks the catalog only for a map newer than the one it holds when a fresh route is wanted, and keeps its own when there is none', async () => {
    const store = publishedMaps([v1]);
    const writes = routerForWrites(new ShardRouter(config, v1), store);
    const route = await writes.routeForWrite(key, { fresh: true });
    expect(store.asked).toEqual([1]);
    expect(route).toMatchObject({ shardId: v1.assignments[slotOf(key)], version: 1 });
  });

  it('adopts a newer map for a fresh route, and not for a cached one', async () => {
    const slot = slotOf(key);
    const other = v1.assignments[slot] === 'shard_001' ? 'shard_002' : 'shard_001';
    const store = publishedMaps([v1, moveSlots(v1, [slot], other)]);
    const writes = routerForWrites(new ShardRouter(config, v1), store);
    expect(await writes.routeForWrite(key)).toMatchObject({ shardId: v1.assignments[slot], version: 1 });
    expect(await writes.routeForWrite(key, { fresh: true })).toMatchObject({ shardId: other, version: 2 });
    expect(store.asked).toEqual([1]);
  });
});
