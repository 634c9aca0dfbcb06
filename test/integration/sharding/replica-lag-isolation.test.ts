import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commitHeartbeat, probeReplicaLag } from '../../../functions/adapters/postgres/replica-lag.js';
import type { ShardNode } from '../../../functions/adapters/postgres/shard-pools.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

/**
 * A node's statements under a deadline (deadline.ts, `withNodeDeadline`: the replica lag probe,
 * the owner-change counts and fences, the shard inspector) run in a transaction of their own,
 * begun READ COMMITTED whatever the login's or the database's `default_transaction_isolation`
 * (an RDS parameter group shared by the primary and its replicas, an `ALTER ROLE ... SET`;
 * issue #15). A hot standby refuses every SERIALIZABLE transaction ("cannot use serializable mode
 * in a hot standby"): begun with a SERIALIZABLE default, the probe failed at every poll, and the
 * replica, taken for one that does not answer, served no read.
 */
describe('the replica lag probe over a login defaulting to SERIALIZABLE', () => {
  let cluster: TestShardCluster;
  const pools: pg.Pool[] = [];
  const node = (role: 'primary' | 'replica', url: string): ShardNode => {
    const pool = new pg.Pool({ connectionString: url, max: 2, options: '-c default_transaction_isolation=serializable' });
    pool.on('error', () => undefined);
    pools.push(pool);
    return { nodeId: `shard_001/${role}`, shardId: 'shard_001', role, endpoint: url, pool };
  };

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: false });
  }, 120_000);
  afterAll(async () => {
    await Promise.all(pools.splice(0).map((p) => p.end()));
    await cluster?.stop();
  });

  it('measures the replica against a heartbeat of its primary', async () => {
    const shard = cluster.shards[0];
    const replica = shard?.replicas[0];
    if (!shard || !replica) throw new Error('one replica needed');
    await replica.waitForCatchUp();
    const options = { timeoutMs: 3000, waitMs: 3000 };

    const heartbeat = await commitHeartbeat(node('primary', shard.primary.url), options);
    const lag = await probeReplicaLag(node('replica', replica.url), heartbeat, options);

    // Before: undefined (the replica "did not answer"), the probe refused at its BEGIN's first statement.
    expect(heartbeat).not.toBeNull();
    expect(lag).toMatchObject({ inRecovery: true, lagSeconds: expect.any(Number) });
  }, 60_000);
});
