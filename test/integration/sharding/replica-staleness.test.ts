import { randomUUID } from 'node:crypto';
import pg from 'pg';
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

  /**
   * A replica that applies WAL 300 ms late (recovery_min_apply_delay: a replica under steady load
   * replays a few hundred ms behind) is well within a 1 s bound. On a primary with no writes but
   * the probes' heartbeats, a probe that does not see its heartbeat replayed within 250 ms dates
   * the replica's data by the last commit it replayed: the previous heartbeat, a whole interval
   * earlier. The replica is then judged older than the bound for most of every interval.
   */
  it('keeps serving reads from it (its data is never older than the bound)', async () => {
    await replica().waitForCatchUp();
    const admin = new pg.Client({ connectionString: replica().url });
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

  /**
   * A read chooses a replica while it is fresh, then waits for one of its pooled connections
   * (the pool is busy). The replica stops replaying meanwhile. When the read finally runs, the
   * replica's data is older than the bound: the choice must be made again, not trusted.
   */
  it('never serves data staler than the bound once it gets its connection', async () => {
    await replica().waitForCatchUp();
    // One connection to the replica, which a read can wait for.
    const single = ShardPools.fromConfig(cluster.config, { max: 1, connectionTimeoutMillis: 10_000 });
    const reader = new ReplicaReader(single, { bounds: { maxLagSeconds: 1, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 120_000 }, intervalMs: 60_000, probeTimeoutMs: 1000 });
    try {
      await reader.refresh();
      expect(reader.replicaStates(SHARD).map((s) => s.ineligible)).toEqual([null]);
      // The replica's only connection busy for 2 s.
      const busy = reader.query(SHARD, 'select pg_sleep(2)');
      await sleep(100);
      await replica().pauseReplay();
      const id = randomUUID();
      await single.primary(SHARD).pool.query("insert into users (id, slot, email, display_name) values ($1, 7, 'a@example.org', 'A')", [id]);
      const committedAt = Date.now();
      const read = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id]);
      const staleMs = Date.now() - committedAt;
      await busy;
      expect({ n: read.rows[0]?.n, waitedPastBound: staleMs > 1000, servedBy: read.servedBy }).toEqual({ n: 1, waitedPastBound: true, servedBy: expect.any(String) });
    } finally {
      reader.stop();
      await single.end();
    }
  }, 60_000);
});
