import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { freshnessBoundsFromConfig } from '../../../functions/core/sharding/replica-choice.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

const SHARD = 'shard_001';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A replica that applies WAL 300 ms late (recovery_min_apply_delay: a replica under steady load
 * replays a few hundred ms behind) is well within a 1 s bound. On a primary with no writes but
 * the probes' heartbeats, a probe that does not see its heartbeat replayed within 250 ms dates
 * the replica's data by the last commit it replayed: the previous heartbeat, a whole interval
 * earlier. The replica is then judged older than the bound for most of every interval.
 */
describe('a replica a few hundred ms behind an idle primary', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 4, connectionTimeoutMillis: 1000 });
  }, 120_000);
  afterAll(async () => {
    await pools?.end();
    await cluster?.stop();
  });

  it('keeps serving reads from it (its data is never older than the bound)', async () => {
    const replica = cluster.shards[0]?.replicas[0];
    if (!replica) throw new Error('no replica');
    await replica.waitForCatchUp();
    const admin = new pg.Client({ connectionString: replica.url });
    await admin.connect();
    await admin.query("alter system set recovery_min_apply_delay = '300ms'");
    await admin.query('select pg_reload_conf()');
    const config = parseShardingConfig({ ...cluster.config, max_replica_lag_seconds: 1, health_check_interval_seconds: 10 });
    const reader = new ReplicaReader(pools, { bounds: freshnessBoundsFromConfig(config), intervalMs: 10_000, probeTimeoutMs: 1000 });
    try {
      await reader.start();
      await sleep(1500);
      const served: string[] = [];
      for (let i = 0; i < 60; i += 1) {
        served.push((await reader.query(SHARD, 'select 1')).servedBy);
        await sleep(50);
      }
      const onReplica = served.filter((s) => s.endsWith('replica-1')).length;
      expect({ onReplicaAtLeast80Percent: onReplica >= 48, onReplica, of: served.length }).toEqual({ onReplicaAtLeast80Percent: true, onReplica, of: served.length });
    } finally {
      reader.stop();
      await admin.query('alter system reset recovery_min_apply_delay');
      await admin.query('select pg_reload_conf()');
      await admin.end();
    }
  }, 60_000);
});
