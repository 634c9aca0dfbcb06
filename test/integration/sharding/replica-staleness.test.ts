import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { freshnessBoundsFromConfig } from '../../../functions/core/sharding/replica-choice.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';

/**
 * The configured bound (`max_replica_lag_seconds`) is what a platform engineer reads as "a
 * replica read is never staler than this". The reader measures every health interval (10 s by
 * default, longer than the 5 s default bound): a replica that stops replaying right after a
 * probe must not go on serving reads for the rest of the interval.
 */
const SHARD = 'shard_001';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('replica reads between two health probes', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;
  const readers: ReplicaReader[] = [];

  const replica = () => {
    const r = cluster.shards[0]?.replicas[0];
    if (!r) throw new Error('cluster has no replica');
    return r;
  };
  /** A reader built the way the runtime builds it, from the configuration: 1 s bound, 10 s interval. */
  const newReader = async (): Promise<ReplicaReader> => {
    const config = parseShardingConfig({ ...cluster.config, max_replica_lag_seconds: 1, health_check_interval_seconds: 10 });
    const reader = new ReplicaReader(pools, { bounds: freshnessBoundsFromConfig(config), intervalMs: config.health_check_interval_seconds * 1000, probeTimeoutMs: 1000 });
    readers.push(reader);
    await reader.start();
    return reader;
  };
  const insertUser = async (): Promise<string> => {
    const id = randomUUID();
    await pools.primary(SHARD).pool.query("insert into users (id, slot, email, display_name) values ($1, 7, 'a@example.org', 'A')", [id]);
    return id;
  };

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 4, connectionTimeoutMillis: 1000 });
  });
  afterEach(async () => {
    for (const r of readers.splice(0)) r.stop();
    await replica().resumeReplay();
    await replica().waitForCatchUp();
  });
  afterAll(async () => {
    await pools?.end();
    await cluster?.stop();
  });

  it('does not serve a replica whose replay stopped after the last probe once it is staler than max_replica_lag_seconds', async () => {
    await replica().waitForCatchUp();
    const reader = await newReader();
    expect(reader.replicaStates(SHARD).map((s) => s.ineligible)).toEqual([null]);
    await replica().pauseReplay();
    const id = await insertUser();
    await sleep(2500); // the write is 2.5 s old: over the 1 s bound, well inside the 10 s interval
    const { rows, servedBy } = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id]);
    expect({ n: rows[0]?.n, servedBy }).toEqual({ n: 1, servedBy: expect.any(String) });
  });

  it('keeps serving reads from a current replica past the bound, when the health interval is longer than the bound', async () => {
    await replica().waitForCatchUp();
    const reader = await newReader();
    await insertUser();
    await sleep(2500);
    // A few reads over a second, so one slow probe on a loaded machine does not decide alone.
    const servedBy: string[] = [];
    for (let i = 0; i < 5; i += 1) {
      servedBy.push((await reader.query(SHARD, 'select 1')).servedBy);
      await sleep(200);
    }
    expect(servedBy).toContain(`${SHARD}/replica-1`);
  });

  it('does not serve a replica whose WAL receiver died after the last probe once it is staler than max_replica_lag_seconds', async () => {
    await replica().waitForCatchUp();
    const reader = await newReader();
    expect(reader.replicaStates(SHARD).map((s) => s.ineligible)).toEqual([null]);
    const restore = await cutWalReceiver(replica().url);
    try {
      const id = await insertUser();
      await sleep(2500);
      const { rows } = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id]);
      expect(rows[0]?.n).toBe(1);
    } finally {
      await restore();
    }
  });
});
