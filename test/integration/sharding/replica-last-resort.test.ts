import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader, ShardUnavailableError } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';

/**
 * When its primary does not answer, a replica serves reads as a last resort, judged by its own
 * measure of its lag (docs/sharding-spec.md section 9, replica-choice.ts `rankReadTargets`). A
 * replica cannot see that its WAL receiver is gone (it has replayed all it received: it measures
 * itself current): a replica the reader already knew to be behind, while the primary answered,
 * must not become "fresh" again because the primary then stopped answering.
 */
const SHARD = 'shard_001';
const bounds: FreshnessBounds = { maxLagSeconds: 2, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 60_000 };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('a replica known stale when its primary stops answering', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 2 });
    pools = ShardPools.fromConfig(cluster.config, { max: 2, connectionTimeoutMillis: 1000 });
    await pools.primary(SHARD).pool.query('create table notes (id int primary key)');
    await Promise.all((cluster.shards[0]?.replicas ?? []).map((r) => r.waitForCatchUp()));
  });
  afterAll(async () => {
    await pools?.end();
    await cluster?.stop();
  });

  it('is not served as a last resort with data older than the bound (it was behind before the primary went); a current one still is', async () => {
    const shard = cluster.shards[0];
    const [stale, current] = shard?.replicas ?? [];
    if (!shard || !stale || !current) throw new Error('cluster has no two replicas');
    const reader = new ReplicaReader(pools, { bounds, intervalMs: 60_000, probeTimeoutMs: 1000 });
    const restore = await cutWalReceiver(stale.url);
    try {
      // Committed on the primary after replica-1 lost its receiver: replica-1 never gets them.
      await pools.primary(SHARD).pool.query('insert into notes values (1)');
      await sleep(2400);
      await pools.primary(SHARD).pool.query('insert into notes values (2)');
      await current.waitForCatchUp();
      await reader.refresh();
      const known = reader.replicaStates(SHARD).map((s) => s.ineligible);

      await shard.primary.stop();
      await reader.refresh();
      const after = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from notes').then(
        (r) => ({ servedBy: r.servedBy, n: r.rows[0]?.n }),
        (error: unknown) => (error instanceof ShardUnavailableError ? 'shard unavailable' : error),
      );
      const states = reader.replicaStates(SHARD).map((s) => s.ineligible);
      // Without the one that can serve, the shard is unavailable rather than answered stale.
      await current.stopReplica();
      await reader.refresh();
      const onlyStale = await reader.query(SHARD, 'select 1').then(
        (r) => r.servedBy,
        (error: unknown) => (error instanceof ShardUnavailableError ? 'shard unavailable' : error),
      );

      expect({ known, after, states, onlyStale }).toEqual({
        known: [expect.stringMatching(/^lag [\d.]+ s over 2 s$/), null],
        // Not { servedBy: 'shard_001/replica-1', n: 0 }: both rows were committed more than the bound ago.
        after: { servedBy: `${SHARD}/replica-2`, n: 2 },
        // (A last resort: no byte lag without the primary.)
        states: [expect.stringMatching(/^lag [\d.]+ s over 2 s$/), 'lag in bytes unknown'],
        onlyStale: 'shard unavailable',
      });
    } finally {
      await restore();
    }
  }, 60_000);
});
