import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader, ShardUnavailableError } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';

/**
 * When its primary does not answer, a replica is judged by its own measure, which reads "current"
 * once it has replayed all it received, however long ago its WAL receiver went
 * (replica-last-resort.test.ts). A replica the reader could not reach while the primary still
 * committed heartbeats (a host cut off from the reader and from its primary alike) was never
 * measured against those heartbeats: its last measure is older than them. Reachable again after
 * the primary went, it must not pass for current because of it: it has not replayed the shard's
 * last heartbeat, so it is only as fresh as the reader last found it.
 */
const SHARD = 'shard_001';
const bounds: FreshnessBounds = { maxLagSeconds: 2, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 60_000 };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('a replica unreachable while its primary committed heartbeats, then reached when the primary is gone', () => {
  let cluster: TestShardCluster;
  let proxy: TcpProxy;
  let pools: ShardPools;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1 });
    const replica = cluster.shards[0]?.replicas[0];
    if (!replica) throw new Error('cluster has no replica');
    // The reader's path to the replica, which can be cut without cutting the replica's streaming.
    proxy = await startTcpProxy(replica.port);
    const url = new URL(replica.url);
    url.port = String(proxy.port);
    pools = ShardPools.fromConfig(
      { shards: [{ shard_id: SHARD, database_url: cluster.shards[0]?.primary.url ?? '', read_replicas: [url.toString()] }] },
      { max: 2, connectionTimeoutMillis: 1000 },
    );
    await pools.primary(SHARD).pool.query('create table notes (id int primary key)');
    await replica.waitForCatchUp();
  }, 120_000);
  afterAll(async () => {
    await pools?.end();
    await proxy?.close();
    await cluster?.stop();
  });

  it('is not served as a last resort with a row committed more than the bound before missing', async () => {
    const shard = cluster.shards[0];
    const replica = shard?.replicas[0];
    if (!shard || !replica) throw new Error('cluster has no replica');
    const reader = new ReplicaReader(pools, { bounds, intervalMs: 60_000, probeTimeoutMs: 1000 });
    await reader.refresh();
    const first = reader.replicaStates(SHARD).map((s) => s.ineligible);

    // The replica's host drops off the network: the reader cannot reach it, nor can it stream.
    const restore = await cutWalReceiver(replica.url);
    try {
      await proxy.cut();
      await pools.primary(SHARD).pool.query('insert into notes values (1)');
      await sleep(2400);
      await reader.refresh(); // a heartbeat the replica never gets; its probe fails
      const unreachable = reader.replicaStates(SHARD).map((s) => s.ineligible);

      // The primary goes; the replica's host comes back.
      await shard.primary.stop();
      await proxy.restore();
      await reader.refresh();
      const after = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from notes').then(
        (r) => ({ servedBy: r.servedBy, n: r.rows[0]?.n }),
        (error: unknown) => (error instanceof ShardUnavailableError ? 'shard unavailable' : error),
      );

      expect({ first, unreachable, after }).toEqual({
        first: [null],
        unreachable: ['down'],
        // Not { servedBy: 'shard_001/replica-1', n: 0 }: the row was committed more than the bound before.
        after: 'shard unavailable',
      });
    } finally {
      await restore();
    }
  }, 60_000);
});
