import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { freezeReplica, startShardCluster, type TestShardCluster } from '../../support/replica.js';

const SHARD = 'shard_001';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const bounds: FreshnessBounds = { maxLagSeconds: 2, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 120_000 };

/**
 * freshAsOfMs is "probe time less the lag", but the probe time is read once after every replica
 * of the shard answered: a sibling replica slow to answer (frozen: the probe timeout) dates the
 * lag of a paused replica seconds later than it was measured, and the paused replica serves data
 * older than max_replica_lag_seconds.
 */
describe('replica freshness measured next to a slow sibling replica', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;
  let thaw: () => void = () => undefined;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 2, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 4, connectionTimeoutMillis: 3000 });
  }, 120_000);
  afterAll(async () => {
    thaw();
    await pools?.end();
    await cluster?.stop();
  });

  it('never serves a read staler than the bound from the paused replica', async () => {
    const [paused, slow] = cluster.shards[0]?.replicas ?? [];
    if (!paused || !slow) throw new Error('two replicas needed');
    await paused.waitForCatchUp();
    await slow.waitForCatchUp();
    const reader = new ReplicaReader(pools, { bounds, intervalMs: 60_000, probeTimeoutMs: 2000 });
    try {
      await reader.refresh();
      expect(reader.replicaStates(SHARD).map((s) => s.ineligible)).toEqual([null, null]);
      await paused.pauseReplay();
      const id = randomUUID();
      await pools.primary(SHARD).pool.query("insert into users (id, slot, email, display_name) values ($1, 7, 'a@example.org', 'A')", [id]);
      const committedAt = Date.now();
      thaw = freezeReplica(slow);
      await sleep(300);
      await reader.refresh(); // the frozen sibling holds it for the probe timeout
      const wait = committedAt + bounds.maxLagSeconds * 1000 + 700 - Date.now();
      if (wait > 0) await sleep(wait);
      const staleMs = Date.now() - committedAt;
      const { rows, servedBy } = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id]);
      expect({ n: rows[0]?.n, staleMsOver: staleMs > bounds.maxLagSeconds * 1000, servedBy }).toEqual({ n: 1, staleMsOver: true, servedBy: expect.any(String) });
    } finally {
      reader.stop();
      thaw();
      await paused.resumeReplay();
    }
  }, 60_000);
});
