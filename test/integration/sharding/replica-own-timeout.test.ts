/**
 * A replica's read ended by the session's own `statement_timeout` (a role's default, `ALTER ROLE
 * ... SET statement_timeout`, replicated from the primary like every catalog change) is an answer
 * of a healthy node, not a failure of it: the replica reader fails the read with
 * `SessionTimeoutError` (deadline.ts) and neither marks the replica failed (which would send the
 * shard's reads to its primary until the next probe) nor reports a failover. (h147, issue #15:
 * checked because `isNodeFailure` judges an error without a SQLSTATE by its words, and this
 * error's name the word "timeout"; it is never asked of it: the reader asks it of pg's 57014.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionTimeoutError } from '../../../functions/adapters/postgres/deadline.js';
import { ReplicaReader, type FailoverEvent } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { withAdmin } from '../../support/postgres.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

const SHARD = 'shard_001';
const REPLICA = `${SHARD}/replica-1`;

describe("a replica's read ended by a role's own statement_timeout", () => {
  let cluster: TestShardCluster;
  let pools: ShardPools | undefined;
  let reader: ReplicaReader | undefined;
  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    const shard = cluster.shards[0];
    if (shard === undefined) throw new Error('the cluster has no shard');
    await withAdmin(shard.primary.url, (c) => c.query("alter role current_user set statement_timeout = '50ms'"));
    await Promise.all(shard.replicas.map((r) => r.waitForCatchUp()));
  }, 120_000);
  afterAll(async () => {
    reader?.stop();
    await pools?.end();
    await cluster?.stop();
  });

  it('fails the read naming the setting, and the replica keeps serving reads (not marked failed, no failover reported)', async () => {
    // Opened after the role's setting: each new connection takes it.
    pools = ShardPools.fromConfig(cluster.config, { max: 2, connectionTimeoutMillis: 2000 });
    const failovers: FailoverEvent[] = [];
    reader = new ReplicaReader(pools, {
      bounds: { maxLagSeconds: 60, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 60_000 },
      intervalMs: 60_000,
      probeTimeoutMs: 2000,
      onFailover: (e) => failovers.push(e),
    });
    await reader.refresh();
    const slow = await reader.query(SHARD, 'select pg_sleep(1)', [], { deadlineAt: Date.now() + 5000 }).then(
      () => 'answered',
      (e: unknown) => (e instanceof SessionTimeoutError ? `${e.name} ${e.setting} on ${e.nodeId}` : String(e)),
    );
    const next = await reader.query(SHARD, 'select 1 as one');
    expect({ slow, next: next.servedBy, failovers, ineligible: reader.replicaStates(SHARD).map((s) => s.ineligible) }).toEqual({
      slow: `SessionTimeoutError statement_timeout on ${REPLICA}`,
      next: REPLICA,
      failovers: [],
      ineligible: [null],
    });
  }, 30_000);
});
