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
 * A frozen replica under load: every pooled connection to it is held by a read waiting on it.
 * The probe then finds the pool full and takes its timeout for "busy", so no read is ever given
 * up: the reads that filled the pool hang for ever (a frozen host answers TCP keepalives).
 */
describe('a replica that stops answering while its pool is full of reads', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;
  let frozen: number[] = [];

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 2, connectionTimeoutMillis: 1000 });
  });
  afterAll(async () => {
    signal(frozen, 'SIGCONT');
    await pools?.end();
    await cluster?.stop();
  });

  it('gives up the reads that fill the frozen replica pool once probes find it down', async () => {
    const replica = cluster.shards[0]?.replicas[0];
    if (!replica) throw new Error('no replica');
    await replica.waitForCatchUp();
    const reader = new ReplicaReader(pools, { bounds: generous, intervalMs: 60_000, probeTimeoutMs: 1000 });
    try {
      await reader.refresh();
      // Two pooled connections to the replica, idle and ready.
      const warm = await Promise.all([reader.query(SHARD, 'select pg_sleep(0.2)'), reader.query(SHARD, 'select pg_sleep(0.2)')]);
      expect(warm.map((r) => r.servedBy)).toEqual([`${SHARD}/replica-1`, `${SHARD}/replica-1`]);

      frozen = processesOf(replica);
      signal(frozen, 'SIGSTOP');
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
      signal(frozen, 'SIGCONT');
      frozen = [];
    }
  }, 60_000);
});
