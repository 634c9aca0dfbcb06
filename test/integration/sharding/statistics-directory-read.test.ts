/**
 * The statistics read the directory only for the answers that need it: exact counts (GET
 * /shards/statistics?exact=true, or a table never analysed), not estimates, which every pin read
 * whole made cost seconds at 100,000 pins (bench/statistics-directory.ts).
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

describe('the directory read by the statistics', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let inspector: ShardInspector;
  let slotMap: SlotMap;
  /** A user of a slot shard_001 owns, pinned to shard_002, where its rows are. */
  let vip: string;
  let reads = 0;
  const directory = async (): Promise<{ key: string; shardId: string }[]> => {
    reads += 1;
    return [{ key: vip, shardId: 'shard_002' }];
  };

  const onShard = async (shardId: string, text: string, values?: unknown[]): Promise<void> => {
    const c = new pg.Client({ connectionString: cluster.config.shards.find((s) => s.shard_id === shardId)?.database_url });
    c.on('error', () => undefined);
    await c.connect();
    try {
      await c.query(text, values);
    } finally {
      await c.end();
    }
  };

  beforeAll(async () => {
    cluster = await servers.database();
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    do vip = randomUUID();
    while (slotMap.assignments[slotOf(vip)] !== 'shard_001');
    await onShard('shard_002', `insert into users (id, slot, email, display_name) values ($1, $2, 'vip@example.org', 'vip')`, [vip, slotOf(vip)]);
    // A directory move of the key from shard_001 ended, its leftover there behind the move's row.
    await onShard('shard_001', `insert into users (id, slot, email, display_name) values ($1, $2, 'vip@example.org', 'vip')`, [vip, slotOf(vip)]);
    await onShard('shard_001', `insert into write_fences (kind, unit_id, state, moved_to, map_version, job_id) values ('directory', $1, 'moved', 'shard_002', 1, 3)`, [vip]);
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
    inspector = new ShardInspector(pools, { timeoutMs: 5000 });
  });
  afterAll(async () => {
    await pools?.end();
  });

  it('reads it once for exact counts, and counts each row where the directory places it', async () => {
    reads = 0;
    const exact = await inspector.statistics({ exact: true, slotMap, directory });

    expect(reads).toBe(1);
    expect(exact.shards.map((s) => s.users)).toEqual([0, 1]);
  });

  it('does not read it for estimates of analysed tables', async () => {
    await onShard('shard_001', 'analyze users, documents, document_keys');
    await onShard('shard_002', 'analyze users, documents, document_keys');
    reads = 0;

    const estimates = await inspector.statistics({ slotMap, directory });

    expect(reads).toBe(0);
    expect(estimates.shards.every((s) => s.tables.every((t) => t.method === 'estimate'))).toBe(true);
  });

  it('fails the report with the directory\'s own error when it cannot be read for an exact count', async () => {
    const failing = (): Promise<never> => Promise.reject(new Error('the shard directory cannot be read right now'));

    await expect(inspector.statistics({ exact: true, slotMap, directory: failing })).rejects.toThrow('the shard directory cannot be read right now');
  });
});
