/**
 * A slot given back by hand (past the stores: `catalog.publish_slot_map_by_hand`, or a store with
 * `rowsLeftOn: 'checked'`) to a shard that still holds a finished move's leftovers of it behind
 * that move's `moved` row: the census and the exact statistics count each row once, where it is
 * live, as the fence review judges such rows (docs/sharding-spec.md, section 7).
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { buildSlotMap, type SlotMap } from '../../../functions/core/sharding/slot-map.js';
import { shardServers, type ShardDatabase } from './fixtures/shard-databases.js';

const servers = shardServers(2);

/** Users of the slot (each with 2 documents) on the shard it moved to; the first was kept on its old owner too. */
const USERS = 4;

describe('a slot given back by hand to a shard holding a finished move\'s leftovers of it', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let inspector: ShardInspector;
  /** The map after the give-back: the slot on shard_001 again. */
  let givenBack: SlotMap;
  let slot: number;

  const clientOf = async (shardId: string): Promise<pg.Client> => {
    const c = new pg.Client({ connectionString: cluster.config.shards.find((s) => s.shard_id === shardId)?.database_url });
    c.on('error', () => undefined);
    await c.connect();
    return c;
  };

  beforeAll(async () => {
    cluster = await servers.database();
    const built = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    slot = built.assignments.indexOf('shard_001');
    givenBack = { ...built, version: built.version + 2 };
    const [one, two] = [await clientOf('shard_001'), await clientOf('shard_002')];
    try {
      const users = Array.from({ length: USERS }, () => randomUUID());
      // Move job #7 took the slot from shard_001 to shard_002 and ended: its copy open on shard_002 ...
      await two.query(
        `with u as (insert into users (id, slot, email, display_name) select k::uuid, $2, k || '@example.org', 'user' from unnest($1::text[]) k returning id)
         insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, $2, 'doc' from u, generate_series(1, 2)`,
        [users, slot],
      );
      await two.query(`insert into write_fences (kind, unit_id, state, map_version, job_id) values ('slot', $1, 'open', 2, 7)`, [String(slot)]);
      // ... and its clean-up left the first user on shard_001 (a kept user; its documents deleted),
      // behind the move's own `moved` row.
      await one.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'kept@example.org', 'user')`, [users[0], slot]);
      await one.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version, job_id) values ('slot', $1, 'moved', 'shard_002', 2, 7)`, [String(slot)]);
    } finally {
      await one.end();
      await two.end();
    }
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
    inspector = new ShardInspector(pools, { timeoutMs: 5000 });
  });
  afterAll(async () => {
    await pools?.end();
  });

  it('counts the kept user once, on the shard holding the slot\'s live rows, in the exact statistics and the census alike', async () => {
    const exact = await inspector.statistics({ exact: true, slotMap: givenBack, directory: [] });
    const census = await inspector.rebalanceCensus({ slotMap: givenBack, directory: [] });

    expect(exact.shards.map((s) => [s.shardId, s.users])).toEqual([
      ['shard_001', 0],
      ['shard_002', USERS],
    ]);
    expect(census.statistics.shards.map((s) => s.rows)).toEqual(exact.shards.map((s) => s.rows));
    // No unit is offered with the leftover's row: the shard's load does not hold it.
    expect(census.units.filter((u) => u.kind === 'slot' && u.id === String(slot))).toEqual([]);
  });

  it('still counts the rows behind a hand change\'s own moved row (no job) where the map gives their slot', async () => {
    const one = await clientOf('shard_001');
    try {
      await one.query(`update write_fences set job_id = null where kind = 'slot' and unit_id = $1`, [String(slot)]);
      const exact = await inspector.statistics({ exact: true, slotMap: givenBack, directory: [] });
      const census = await inspector.rebalanceCensus({ slotMap: givenBack, directory: [] });

      expect(exact.shards.map((s) => s.users)).toEqual([1, USERS]);
      expect(census.units.filter((u) => u.kind === 'slot' && u.id === String(slot))).toEqual([expect.objectContaining({ shardId: 'shard_001', rows: 1 })]);
    } finally {
      await one.query(`update write_fences set job_id = 7 where kind = 'slot' and unit_id = $1`, [String(slot)]);
      await one.end();
    }
  });
});
