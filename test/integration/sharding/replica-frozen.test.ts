import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { startShardCluster, type TestReplica, type TestShardCluster } from '../../support/replica.js';

const SHARD = 'shard_001';
const generous: FreshnessBounds = { maxLagSeconds: 60, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 120_000 };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The replica's postmaster and every process it started (backends included). */
function processesOf(replica: TestReplica): number[] {
  const postmaster = Number(readFileSync(join(replica.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const children = execFileSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(Number);
  return [postmaster, ...children];
}
const signal = (pids: readonly number[], sig: NodeJS.Signals): void => {
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
    } catch {
      // gone already
    }
  }
};

/**
 * A replica that stops answering without closing its connections (the host frozen, a network
 * path black-holed, a VM paused): a read sent to it on a pooled connection waits for an answer
 * that never comes. The reader's probe sees the replica down within its timeout; reads already
 * waiting on it, and any sent before that probe, must then go to the next node, not hang.
 */
describe('a replica that stops answering mid-read', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;
  let frozen: number[] = [];

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 4, connectionTimeoutMillis: 1000 });
  });
  afterAll(async () => {
    signal(frozen, 'SIGCONT');
    await pools?.end();
    await cluster?.stop();
  });

  it('moves a read waiting on a frozen replica to the primary once a probe finds the replica down', async () => {
    const replica = cluster.shards[0]?.replicas[0];
    if (!replica) throw new Error('no replica');
    await replica.waitForCatchUp();
    const reader = new ReplicaReader(pools, { bounds: generous, intervalMs: 60_000, probeTimeoutMs: 1000 });
    try {
      await reader.refresh();
      // A pooled connection to the replica, idle and ready.
      expect((await reader.query(SHARD, 'select 1')).servedBy).toBe(`${SHARD}/replica-1`);

      frozen = processesOf(replica);
      signal(frozen, 'SIGSTOP');
      const read = reader.query<{ one: number }>(SHARD, 'select 1 as one');
      await reader.refresh(); // times out on the replica: down
      const states = reader.replicaStates(SHARD).map((s) => s.ineligible);
      const outcome = await Promise.race([read.then((r) => ({ rows: r.rows, servedBy: r.servedBy })), sleep(5000).then(() => 'still waiting after 5 s')]);

      expect(states).toEqual(['down']);
      expect(outcome).toEqual({ rows: [{ one: 1 }], servedBy: `${SHARD}/primary` });
    } finally {
      reader.stop();
      signal(frozen, 'SIGCONT');
      frozen = [];
    }
  }, 60_000);
});
