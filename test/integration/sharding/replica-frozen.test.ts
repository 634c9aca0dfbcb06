import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { freezeReplica, startShardCluster, type TestShardCluster } from '../../support/replica.js';

const SHARD = 'shard_001';
const generous: FreshnessBounds = { maxLagSeconds: 60, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 120_000 };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A replica that stops answering without closing its connections (the host frozen, a network
 * path black-holed, a VM paused): a read sent to it on a pooled connection waits for an answer
 * that never comes. The reader's probe sees the replica down within its timeout; reads already
 * waiting on it, and any sent before that probe, must then go to the next node, not hang.
 */
describe('a replica that stops answering mid-read', () => {
  let cluster: TestShardCluster;
  const pools: ShardPools[] = [];
  /** Thaws the replica a test froze (a no-op otherwise). */
  let thaw: () => void = () => undefined;
  const poolsOf = (max: number): ShardPools => {
    const made = ShardPools.fromConfig(cluster.config, { max, connectionTimeoutMillis: 1000 });
    pools.push(made);
    return made;
  };

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
  });
  afterEach(async () => {
    thaw();
    for (const p of pools.splice(0)) await p.end();
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('moves a read waiting on a frozen replica to the primary once a probe finds the replica down', async () => {
    const replica = cluster.shards[0]?.replicas[0];
    if (!replica) throw new Error('no replica');
    await replica.waitForCatchUp();
    const shardPools = poolsOf(4);
    const reader = new ReplicaReader(shardPools, { bounds: generous, intervalMs: 60_000, probeTimeoutMs: 1000 });
    try {
      await reader.refresh();
      // A pooled connection to the replica, idle and ready.
      expect((await reader.query(SHARD, 'select 1')).servedBy).toBe(`${SHARD}/replica-1`);

      thaw = freezeReplica(replica);
      const read = reader.query<{ one: number }>(SHARD, 'select 1 as one');
      await reader.refresh(); // times out on the replica: down
      const states = reader.replicaStates(SHARD).map((s) => s.ineligible);
      const outcome = await Promise.race([read.then((r) => ({ rows: r.rows, servedBy: r.servedBy })), sleep(5000).then(() => 'still waiting after 5 s')]);

      expect(states).toEqual(['down']);
      expect(outcome).toEqual({ rows: [{ one: 1 }], servedBy: `${SHARD}/primary` });
    } finally {
      reader.stop();
      thaw();
    }
  }, 60_000);

  // Under load every pooled connection to the frozen replica is held by a read waiting on it: the
  // probe then finds the pool full, which alone says "busy", not "down" (a frozen host answers
  // TCP keepalives); it asks the server on a connection of its own before it gives the reads up.
  it('gives up the reads that fill the frozen replica pool once probes find it down', async () => {
    const replica = cluster.shards[0]?.replicas[0];
    if (!replica) throw new Error('no replica');
    await replica.waitForCatchUp();
    const shardPools = poolsOf(2);
    const reader = new ReplicaReader(shardPools, { bounds: generous, intervalMs: 60_000, probeTimeoutMs: 1000 });
    try {
      await reader.refresh();
      // Two pooled connections to the replica, idle and ready.
      const warm = await Promise.all([reader.query(SHARD, 'select pg_sleep(0.2)'), reader.query(SHARD, 'select pg_sleep(0.2)')]);
      expect(warm.map((r) => r.servedBy)).toEqual([`${SHARD}/replica-1`, `${SHARD}/replica-1`]);

      thaw = freezeReplica(replica);
      const reads = [reader.query<{ one: number }>(SHARD, 'select 1 as one'), reader.query<{ one: number }>(SHARD, 'select 1 as one')];
      await sleep(50);
      await reader.refresh();
      await reader.refresh();
      const states = reader.replicaStates(SHARD).map((s) => s.ineligible);
      const outcome = await Promise.race([
        Promise.all(reads).then((rs) => rs.map((r) => r.servedBy)),
        sleep(5000).then(() => 'still waiting 5 s after two probes found the replica down'),
      ]);

      expect(states).toEqual(['down']);
      expect(outcome).toEqual([`${SHARD}/primary`, `${SHARD}/primary`]);
    } finally {
      reader.stop();
      thaw();
    }
  }, 60_000);
});
