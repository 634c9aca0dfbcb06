import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

const SHARD = 'shard_001';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const bounds: FreshnessBounds = { maxLagSeconds: 1, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 120_000 };

/**
 * A read chooses a replica while it is fresh, then waits for one of its pooled connections
 * (the pool is busy). The replica stops replaying meanwhile. When the read finally runs, the
 * replica's data is older than the bound: the choice must be made again, not trusted.
 */
describe('a read that waited for a replica connection', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 1, connectionTimeoutMillis: 10_000 });
  }, 120_000);
  afterAll(async () => {
    await pools?.end();
    await cluster?.stop();
  });

  it('never serves data staler than the bound once it gets its connection', async () => {
    const replica = cluster.shards[0]?.replicas[0];
    if (!replica) throw new Error('no replica');
    await replica.waitForCatchUp();
    const reader = new ReplicaReader(pools, { bounds, intervalMs: 60_000, probeTimeoutMs: 1000 });
    try {
      await reader.refresh();
      expect(reader.replicaStates(SHARD).map((s) => s.ineligible)).toEqual([null]);
      // The replica's only connection busy for 2 s.
      const busy = reader.query(SHARD, 'select pg_sleep(2)');
      await sleep(100);
      await replica.pauseReplay();
      const id = randomUUID();
      await pools.primary(SHARD).pool.query("insert into users (id, slot, email, display_name) values ($1, 7, 'a@example.org', 'A')", [id]);
      const committedAt = Date.now();
      const read = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id]);
      const staleMs = Date.now() - committedAt;
      await busy;
      expect({ n: read.rows[0]?.n, waitedPastBound: staleMs > 1000, servedBy: read.servedBy }).toEqual({ n: 1, waitedPastBound: true, servedBy: expect.any(String) });
    } finally {
      reader.stop();
      await replica.resumeReplay();
    }
  }, 60_000);
});
