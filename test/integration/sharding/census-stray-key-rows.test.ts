/**
 * Rows of a key the directory places on another shard, stored here under a slot this shard owns
 * that is not the key's id's (a restore, a hand-made row, a document written with a wrong slot
 * before shard migration 015): a move of that slot copies them (the mover leaves out only the
 * placed keys whose id's slot it is, `excluded_keys`), so the census offers them in the slot's
 * unit, whichever shard owns the key's own slot. Since 52b319a sent each shard only some keys,
 * they were in the unit when the key's id's slot was another shard's (the key not sent) and not
 * when it was this shard's (sent): the unit said 4 rows where its maxTableRows said 5, and the
 * shard's units summed to less than its load.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { buildSlotMap, type SlotMap } from '../../../functions/core/sharding/slot-map.js';
import { shardServers, type ShardDatabase } from './fixtures/shard-databases.js';

const servers = shardServers(2);

describe("another shard's keys with rows stored here under a slot this shard owns", () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let slotMap: SlotMap;
  /** The slot of shard_001 the stray rows are stored under. */
  let slot: number;
  /** Keys placed on shard_002: the first's id's slot is shard_001's, the second's shard_002's. */
  const keys: string[] = [];

  beforeAll(async () => {
    cluster = await servers.database();
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    slot = slotMap.assignments.indexOf('shard_001');
    for (const owner of ['shard_001', 'shard_002']) {
      let key: string;
      do key = randomUUID();
      while (slotMap.assignments[slotOf(key)] !== owner || slotOf(key) === slot);
      keys.push(key);
    }
    const c = new pg.Client({ connectionString: cluster.config.shards.find((s) => s.shard_id === 'shard_001')?.database_url });
    c.on('error', () => undefined);
    await c.connect();
    try {
      await c.query(`insert into users (id, slot, email, display_name) select k::uuid, $2, k || '@example.org', 'stray' from unnest($1::text[]) k`, [keys, slot]);
      await c.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'u' || i || '@example.org', 'user' from generate_series(1, 3) i`, [slot]);
    } finally {
      await c.end();
    }
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
  });
  afterAll(async () => {
    await pools?.end();
  });

  it("offers them in the slot's unit (which a move of the slot copies), as many as its load and its maxTableRows count", async () => {
    const inspector = new ShardInspector(pools, { timeoutMs: 5000 });
    const census = await inspector.rebalanceCensus({ slotMap, directory: keys.map((key) => ({ key, shardId: 'shard_002' })) });

    const load = census.statistics.shards.find((s) => s.shardId === 'shard_001')?.rows;
    expect(load).toBe(5);
    expect(census.units.filter((u) => u.kind === 'slot' && u.id === String(slot))).toEqual([expect.objectContaining({ shardId: 'shard_001', rows: 5, maxTableRows: 5 })]);
    expect(census.units.filter((u) => u.shardId === 'shard_001').reduce((n, u) => n + u.rows, 0)).toBe(load);
  });
});
