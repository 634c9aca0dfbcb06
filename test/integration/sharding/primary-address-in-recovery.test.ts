import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captureWriteToken, ReplicaReader, ShardUnavailableError } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

/**
 * After a failover the shard's primary address can reach a server in recovery for a while: a
 * client's cached DNS answer naming the old writer, now a reader (Multi-AZ DB clusters, Aurora),
 * or a configuration not yet updated. A read that must see what is committed (`primary: true`,
 * `?consistency=primary`, a read-your-writes token no replica has replayed) must not be answered
 * by that server as if it were the primary: it may lag, and "not found" there says nothing.
 */
const SHARD = 'shard_001';
const bounds: FreshnessBounds = { maxLagSeconds: 60, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 60_000 };

describe('a shard whose primary address reaches a server in recovery', () => {
  let cluster: TestShardCluster;
  let real: ShardPools;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1 });
    real = ShardPools.fromConfig(cluster.config, { max: 2, connectionTimeoutMillis: 1000 });
    await real.primary(SHARD).pool.query('create table notes (id int primary key)');
    await cluster.shards[0]?.replicas[0]?.waitForCatchUp();
  });
  afterAll(async () => {
    await cluster?.shards[0]?.replicas[0]?.resumeReplay();
    await real?.end();
    await cluster?.stop();
  });

  it('refuses a primary read and a token read there (503) rather than answer from a lagging standby', async () => {
    const standby = cluster.shards[0]?.replicas[0];
    if (!standby) throw new Error('cluster has no replica');
    await standby.pauseReplay();
    // Committed on the real primary; the standby the address now reaches never replays it.
    const { rowCount } = await real.primary(SHARD).pool.query('insert into notes values (1)');
    expect(rowCount).toBe(1);
    const token = await captureWriteToken(real.primary(SHARD).pool);
    const stale = ShardPools.fromConfig({ shards: [{ shard_id: SHARD, database_url: standby.url, read_replicas: [] }] }, { max: 2, connectionTimeoutMillis: 1000 });
    const reader = new ReplicaReader(stale, { bounds, intervalMs: 60_000, probeTimeoutMs: 1000 });
    try {
      const outcome = (options: { primary?: true; token?: string }) =>
        reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from notes where id = 1', [], options).then(
          (r) => ({ servedBy: r.servedBy, n: r.rows[0]?.n }),
          (error: unknown) => (error instanceof ShardUnavailableError ? `shard unavailable: ${error.message}` : error),
        );
      const primaryRead = await outcome({ primary: true });
      const tokenRead = await outcome({ token });

      // Not { servedBy: 'shard_001/primary', n: 0 }: the row is committed.
      expect({ primaryRead, tokenRead }).toEqual({
        primaryRead: expect.stringMatching(/^shard unavailable: .*shard_001\/primary is in recovery/),
        tokenRead: expect.stringMatching(/^shard unavailable: .*shard_001\/primary is in recovery/),
      });
    } finally {
      reader.stop();
      await stale.end();
    }
  }, 60_000);
});
