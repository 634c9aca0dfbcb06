import { describe, expect, it } from 'vitest';
import {
  classifyNode,
  classifyShard,
  HealthThresholdsError,
  parseHealthThresholds,
  worstStatus,
  type DatabaseRates,
  type NodeFacts,
} from '../../../functions/core/sharding/health.js';

const primary: NodeFacts = { nodeId: 's1/primary', shardId: 's1', role: 'primary', reachable: true, inRecovery: false, connections: 10, maxConnections: 100, databaseSizeBytes: 1e9 };
const replica: NodeFacts = {
  nodeId: 's1/replica-1',
  shardId: 's1',
  role: 'replica',
  reachable: true,
  inRecovery: true,
  connections: 5,
  maxConnections: 100,
  replication: { lagSeconds: 0, lagBytes: 0, replayLsn: '0/3000000', receiveLsn: '0/3000000', replayPaused: false, streaming: true },
};
const quietRates: DatabaseRates = {
  intervalSeconds: 10,
  commitsPerSecond: 100,
  rollbacksPerSecond: 0,
  rowsReadPerSecond: 1000,
  rowsWrittenPerSecond: 10,
  blocksReadPerSecond: 1,
  tempBytesPerSecond: 0,
  deadlocks: 0,
  cacheHitRatio: 0.99,
  blockRequests: 100_000,
};
const codes = (facts: NodeFacts, thresholds = parseHealthThresholds()) => classifyNode(facts, thresholds).reasons.map((r) => r.code);

describe('node health classification', () => {
  it('calls a reachable primary within every threshold healthy, with no reasons', () => {
    expect(classifyNode({ ...primary, rates: quietRates })).toEqual({ nodeId: 's1/primary', shardId: 's1', role: 'primary', status: 'healthy', reasons: [] });
  });

  it('calls an unreachable node down and says why', () => {
    const health = classifyNode({ nodeId: 's1/primary', shardId: 's1', role: 'primary', reachable: false, error: 'connect ECONNREFUSED 127.0.0.1:5432' });

    expect(health.status).toBe('down');
    expect(health.reasons).toEqual([{ code: 'unreachable', status: 'down', message: 'cannot query the node: connect ECONNREFUSED 127.0.0.1:5432' }]);
  });

  it('calls a configured primary that is in recovery down: it cannot take writes', () => {
    expect(classifyNode({ ...primary, inRecovery: true }).status).toBe('down');
  });

  it('calls a configured replica that left recovery down: it no longer follows the primary', () => {
    expect(codes({ ...replica, inRecovery: false })).toEqual(['replica_not_in_recovery']);
  });

  it('degrades a node at 80% of max_connections, not below', () => {
    expect(codes({ ...primary, connections: 80 })).toEqual(['connections']);
    expect(codes({ ...primary, connections: 79 })).toEqual([]);
  });

  it('degrades a node whose cache hit ratio fell below 90% over enough block requests', () => {
    expect(codes({ ...primary, rates: { ...quietRates, cacheHitRatio: 0.8 } })).toEqual(['cache_hit_ratio']);
    expect(codes({ ...primary, rates: { ...quietRates, cacheHitRatio: 0.8, blockRequests: 10 } })).toEqual([]);
  });

  it('degrades a node that had a deadlock since the previous check', () => {
    expect(codes({ ...primary, rates: { ...quietRates, deadlocks: 1 } })).toEqual(['deadlocks']);
  });

  it('degrades a node spilling more than 10 MiB/s to temporary files', () => {
    expect(codes({ ...primary, rates: { ...quietRates, tempBytesPerSecond: 11 * 1024 * 1024 } })).toEqual(['temp_bytes']);
  });

  it('degrades a replica lagging more seconds or more bytes than allowed, naming each', () => {
    const lagging: NodeFacts = { ...replica, replication: { ...replica.replication!, lagSeconds: 31, lagBytes: 65 * 1024 * 1024 } };

    expect(codes(lagging)).toEqual(['replication_lag_seconds', 'replication_lag_bytes']);
  });

  it('degrades a replica whose lag cannot be determined, is not streaming or has replay paused', () => {
    const stuck: NodeFacts = { ...replica, replication: { ...replica.replication!, lagSeconds: null, streaming: false, replayPaused: true } };

    expect(codes(stuck)).toEqual(['not_streaming', 'replay_paused', 'replication_lag_unknown']);
  });

  it('calls an instance RDS reports as storage-full down even though it answers', () => {
    expect(classifyNode({ ...primary, rds: { status: 'storage-full', freeStorageBytes: 0, allocatedStorageBytes: 100, replicaLagSeconds: null } }).status).toBe('down');
  });

  it('degrades an instance RDS reports as modifying, or with less than 10% storage free', () => {
    expect(codes({ ...primary, rds: { status: 'modifying', freeStorageBytes: 50, allocatedStorageBytes: 100, replicaLagSeconds: null } })).toEqual(['rds_status']);
    expect(codes({ ...primary, rds: { status: 'available', freeStorageBytes: 9, allocatedStorageBytes: 100, replicaLagSeconds: null } })).toEqual(['free_storage']);
  });

  it('degrades a replica whose CloudWatch ReplicaLag exceeds the bound', () => {
    expect(codes({ ...replica, rds: { status: 'available', freeStorageBytes: null, allocatedStorageBytes: null, replicaLagSeconds: 45 } })).toEqual(['rds_replica_lag']);
  });

  it('uses configured thresholds instead of the defaults', () => {
    expect(codes({ ...primary, connections: 50 }, parseHealthThresholds({ connectionsDegradedRatio: 0.5 }))).toEqual(['connections']);
  });
});

describe('health thresholds', () => {
  it('fills every default', () => {
    expect(parseHealthThresholds()).toEqual({
      connectionsDegradedRatio: 0.8,
      minCacheHitRatio: 0.9,
      cacheHitMinBlockRequests: 1000,
      maxDeadlocksPerInterval: 0,
      maxTempBytesPerSecond: 10 * 1024 * 1024,
      maxReplicaLagSeconds: 30,
      maxReplicaLagBytes: 64 * 1024 * 1024,
      minFreeStorageRatio: 0.1,
    });
  });

  it('names every invalid field, and unknown ones', () => {
    let error: unknown;
    try {
      parseHealthThresholds({ minCacheHitRatio: 2, maxReplicaLagSeconds: -1, maxLag: 3 });
    } catch (e) {
      error = e;
    }

    expect(error).toBeInstanceOf(HealthThresholdsError);
    const problems = (error as HealthThresholdsError).problems;
    expect(problems).toHaveLength(3);
    expect(problems).toEqual(
      expect.arrayContaining([expect.stringMatching(/^\(root\): .*maxLag/), expect.stringMatching(/^minCacheHitRatio: /), expect.stringMatching(/^maxReplicaLagSeconds: /)]),
    );
  });
});

describe('shard health', () => {
  const healthy = (facts: NodeFacts) => classifyNode(facts);

  it('is down when its primary is down', () => {
    const shard = classifyShard('s1', healthy({ ...primary, reachable: false }), [healthy(replica)]);
    expect(shard.status).toBe('down');
  });

  it('is degraded, not down, when only a replica is down, and names the replica', () => {
    const shard = classifyShard('s1', healthy(primary), [healthy({ ...replica, reachable: false })]);

    expect(shard.status).toBe('degraded');
    expect(shard.reasons).toEqual([expect.objectContaining({ code: 'unreachable', status: 'degraded', nodeId: 's1/replica-1' })]);
  });

  it('is healthy when every node is', () => {
    expect(classifyShard('s1', healthy(primary), [healthy(replica)])).toEqual({ shardId: 's1', status: 'healthy', reasons: [] });
  });

  it('reports the worst status of a set', () => {
    expect(worstStatus(['healthy', 'degraded', 'healthy'])).toBe('degraded');
    expect(worstStatus(['degraded', 'down'])).toBe('down');
    expect(worstStatus([])).toBe('healthy');
  });
});
