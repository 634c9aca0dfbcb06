/**
 * Shard health, classified from measured facts. The shard inspector (adapters/postgres) measures
 * each primary and replica; this module turns two successive samples of the cumulative
 * `pg_stat_database` counters into rates and decides, with reasons an operator can act on,
 * whether each node and each shard is `healthy`, `degraded` or `down`. Pure: no clock, no I/O.
 *
 * @example
 * ```ts
 * const thresholds = parseHealthThresholds({ maxReplicaLagSeconds: 10 });
 * const rates = databaseRates(previousCounters, currentCounters);
 * const node = classifyNode({ ...facts, rates }, thresholds);
 * // { status: 'degraded', reasons: [{ code: 'replication_lag_seconds', ... }] }
 * const shard = classifyShard('shard_001', primaryHealth, [replicaHealth]);
 * ```
 */
import { z } from 'zod';

export type HealthStatus = 'healthy' | 'degraded' | 'down';
export type NodeRole = 'primary' | 'replica';

/** Why a node or shard is not healthy. `code` is stable for alerting; `message` is for people. */
export interface HealthReason {
  readonly code: string;
  readonly status: Exclude<HealthStatus, 'healthy'>;
  readonly message: string;
  /** The node the reason is about (set on shard-level reasons). */
  readonly nodeId?: string;
}

/** Cumulative counters of one database from `pg_stat_database`, with when they were sampled. */
export interface DatabaseCounters {
  readonly sampledAtMs: number;
  /** `stats_reset`, as text; a change means the counters restarted from zero. */
  readonly statsReset: string | null;
  readonly xactCommit: number;
  readonly xactRollback: number;
  readonly blksRead: number;
  readonly blksHit: number;
  readonly tupReturned: number;
  readonly tupFetched: number;
  readonly tupInserted: number;
  readonly tupUpdated: number;
  readonly tupDeleted: number;
  readonly deadlocks: number;
  readonly tempFiles: number;
  readonly tempBytes: number;
  readonly conflicts: number;
}

/** Per-second rates over the interval between two samples. */
export interface DatabaseRates {
  readonly intervalSeconds: number;
  readonly commitsPerSecond: number;
  readonly rollbacksPerSecond: number;
  readonly rowsReadPerSecond: number;
  readonly rowsWrittenPerSecond: number;
  readonly blocksReadPerSecond: number;
  readonly tempBytesPerSecond: number;
  /** Deadlocks detected during the interval (a count, not a rate: any deadlock matters). */
  readonly deadlocks: number;
  /** Buffer cache hits over all block requests during the interval; null when there were none. */
  readonly cacheHitRatio: number | null;
  readonly blockRequests: number;
}

/**
 * Rates between two samples of the same database, or null when there is no usable previous
 * sample (first check, counters reset, server restarted, or no time elapsed).
 */
export function databaseRates(previous: DatabaseCounters | undefined, current: DatabaseCounters): DatabaseRates | null {
  if (!previous) return null;
  const seconds = (current.sampledAtMs - previous.sampledAtMs) / 1000;
  if (seconds <= 0 || previous.statsReset !== current.statsReset) return null;
  const d = (k: Exclude<keyof DatabaseCounters, 'sampledAtMs' | 'statsReset'>): number => current[k] - previous[k];
  const keys = ['xactCommit', 'xactRollback', 'blksRead', 'blksHit', 'tupReturned', 'tupFetched', 'tupInserted', 'tupUpdated', 'tupDeleted', 'deadlocks', 'tempFiles', 'tempBytes', 'conflicts'] as const;
  // Counters only grow; one that went down means the server restarted and lost its statistics.
  if (keys.some((k) => d(k) < 0)) return null;
  const blockRequests = d('blksRead') + d('blksHit');
  return {
    intervalSeconds: seconds,
    commitsPerSecond: d('xactCommit') / seconds,
    rollbacksPerSecond: d('xactRollback') / seconds,
    rowsReadPerSecond: (d('tupReturned') + d('tupFetched')) / seconds,
    rowsWrittenPerSecond: (d('tupInserted') + d('tupUpdated') + d('tupDeleted')) / seconds,
    blocksReadPerSecond: d('blksRead') / seconds,
    tempBytesPerSecond: d('tempBytes') / seconds,
    deadlocks: d('deadlocks'),
    cacheHitRatio: blockRequests > 0 ? d('blksHit') / blockRequests : null,
    blockRequests,
  };
}

/** Replication facts measured on a replica (and the primary's WAL position for bytes). */
export interface ReplicationFacts {
  /** 0 when everything received is replayed; otherwise the age of the last replayed commit. */
  readonly lagSeconds: number | null;
  /** Primary WAL position minus the replica's replay position; null when the primary is unreachable. */
  readonly lagBytes: number | null;
  readonly replayLsn: string | null;
  readonly receiveLsn: string | null;
  readonly replayPaused: boolean;
  /** The WAL receiver is connected and streaming from the primary. */
  readonly streaming: boolean;
}

/** What RDS says about the instance behind a node (when running on AWS). */
export interface RdsFacts {
  readonly status: string;
  readonly freeStorageBytes: number | null;
  readonly allocatedStorageBytes: number | null;
  readonly replicaLagSeconds: number | null;
}

/** Everything measured about one node in one health check. */
export interface NodeFacts {
  readonly nodeId: string;
  readonly shardId: string;
  /** The role the configuration gives the node. */
  readonly role: NodeRole;
  readonly reachable: boolean;
  /** Why the node could not be measured (already free of credentials). */
  readonly error?: string;
  readonly inRecovery?: boolean;
  readonly connections?: number;
  readonly maxConnections?: number;
  readonly databaseSizeBytes?: number;
  readonly rates?: DatabaseRates | null;
  /** Cache hit ratio since the counters were last reset, used until two samples exist. */
  readonly cumulativeCacheHitRatio?: number | null;
  readonly replication?: ReplicationFacts;
  readonly rds?: RdsFacts;
  /**
   * Who, besides the schema's owner, may create objects in the shard's schema (`PUBLIC`, the
   * application role `ca_dms_app`): a primary's, where set. Such a login's function or operator
   * that matches a call's argument types exactly is chosen over pg_catalog's, in every session
   * whose search_path has the schema (see shard migration 019).
   */
  readonly schemaCreators?: readonly string[];
}

const thresholdsSchema = z
  .object({
    /** Connections over max_connections at or above which a node is degraded. */
    connectionsDegradedRatio: z.number().gt(0).max(1).default(0.8),
    /** Cache hit ratio below which a node is degraded (given enough block requests). */
    minCacheHitRatio: z.number().min(0).max(1).default(0.9),
    /** Block requests in the interval below which the cache hit ratio says nothing. */
    cacheHitMinBlockRequests: z.number().int().min(0).default(1000),
    /** Deadlocks in one interval above which a node is degraded. */
    maxDeadlocksPerInterval: z.number().int().min(0).default(0),
    /** Temporary-file bytes per second above which a node is degraded. */
    maxTempBytesPerSecond: z.number().min(0).default(10 * 1024 * 1024),
    /** Replica replay lag in seconds above which a replica is degraded. */
    maxReplicaLagSeconds: z.number().min(0).default(30),
    /** Replica lag in WAL bytes above which a replica is degraded. */
    maxReplicaLagBytes: z.number().int().min(0).default(64 * 1024 * 1024),
    /** Free storage over allocated storage below which a node is degraded (RDS only). */
    minFreeStorageRatio: z.number().min(0).max(1).default(0.1),
  })
  .strict();

/** Thresholds of the classification; every field has a default. */
export type HealthThresholds = z.infer<typeof thresholdsSchema>;

/** Thrown for invalid health thresholds; `problems` names every bad field. */
export class HealthThresholdsError extends Error {
  override readonly name = 'HealthThresholdsError';
  readonly problems: readonly string[];
  constructor(problems: readonly string[], options?: { cause?: unknown }) {
    super(`invalid health thresholds: ${problems.join('; ')}`, options);
    this.problems = problems;
  }
}

/** Validates thresholds (from config or an API call), filling in the defaults. */
export function parseHealthThresholds(input: unknown = {}): HealthThresholds {
  const result = thresholdsSchema.safeParse(input ?? {});
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.length > 0 ? i.path.join('.') : '(root)'}: ${i.message}`);
    throw new HealthThresholdsError(problems, { cause: result.error });
  }
  return result.data;
}

/** The default thresholds. */
export const DEFAULT_HEALTH_THRESHOLDS: HealthThresholds = parseHealthThresholds({});

export interface NodeHealth {
  readonly nodeId: string;
  readonly shardId: string;
  readonly role: NodeRole;
  readonly status: HealthStatus;
  readonly reasons: readonly HealthReason[];
}

/** RDS instance states in which the database cannot serve at all. */
const RDS_DOWN_STATES = new Set(['stopped', 'stopping', 'failed', 'inaccessible-encryption-credentials', 'incompatible-network', 'incompatible-restore', 'deleting', 'storage-full', 'restore-error']);

const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
const mib = (bytes: number): string => `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;

/** Classifies one node; `down` wins over `degraded`, and every reason found is listed. */
export function classifyNode(facts: NodeFacts, thresholds: HealthThresholds = DEFAULT_HEALTH_THRESHOLDS): NodeHealth {
  const reasons: HealthReason[] = [];
  const add = (code: string, status: HealthReason['status'], message: string): void => {
    reasons.push({ code, status, message });
  };

  if (facts.rds && RDS_DOWN_STATES.has(facts.rds.status)) {
    add('rds_status', 'down', `RDS reports the instance as ${facts.rds.status}`);
  } else if (facts.rds && facts.rds.status !== 'available') {
    add('rds_status', 'degraded', `RDS reports the instance as ${facts.rds.status}, not available`);
  }

  if (!facts.reachable) {
    add('unreachable', 'down', `cannot query the node${facts.error ? `: ${facts.error}` : ''}`);
    return finish(facts, reasons);
  }

  if (facts.inRecovery !== undefined) {
    if (facts.role === 'primary' && facts.inRecovery) {
      add('primary_in_recovery', 'down', 'configured as primary but in recovery: it cannot accept writes');
    } else if (facts.role === 'replica' && !facts.inRecovery) {
      add('replica_not_in_recovery', 'down', 'configured as replica but not in recovery (promoted?): it no longer follows the primary');
    }
  }

  if (facts.connections !== undefined && facts.maxConnections !== undefined && facts.maxConnections > 0) {
    const ratio = facts.connections / facts.maxConnections;
    if (ratio >= thresholds.connectionsDegradedRatio) {
      add('connections', 'degraded', `${facts.connections} of ${facts.maxConnections} connections in use (${pct(ratio)}, limit ${pct(thresholds.connectionsDegradedRatio)})`);
    }
  }

  const rates = facts.rates;
  if (rates) {
    if (rates.cacheHitRatio !== null && rates.blockRequests >= thresholds.cacheHitMinBlockRequests && rates.cacheHitRatio < thresholds.minCacheHitRatio) {
      add('cache_hit_ratio', 'degraded', `cache hit ratio ${pct(rates.cacheHitRatio)} over the last ${rates.intervalSeconds.toFixed(0)} s is below ${pct(thresholds.minCacheHitRatio)}`);
    }
    if (rates.deadlocks > thresholds.maxDeadlocksPerInterval) {
      add('deadlocks', 'degraded', `${rates.deadlocks} deadlock(s) in the last ${rates.intervalSeconds.toFixed(0)} s`);
    }
    if (rates.tempBytesPerSecond > thresholds.maxTempBytesPerSecond) {
      add('temp_bytes', 'degraded', `queries spill ${mib(rates.tempBytesPerSecond)}/s to temporary files (limit ${mib(thresholds.maxTempBytesPerSecond)}/s): work_mem too small or a bad plan`);
    }
  }

  const rep = facts.replication;
  if (facts.role === 'replica' && rep) {
    if (!rep.streaming) add('not_streaming', 'degraded', 'the WAL receiver is not streaming from the primary');
    if (rep.replayPaused) add('replay_paused', 'degraded', 'WAL replay is paused (pg_wal_replay_pause)');
    if (rep.lagSeconds === null) {
      add('replication_lag_unknown', 'degraded', 'replication lag in seconds cannot be determined');
    } else if (rep.lagSeconds > thresholds.maxReplicaLagSeconds) {
      add('replication_lag_seconds', 'degraded', `replay is ${rep.lagSeconds.toFixed(1)} s behind (limit ${thresholds.maxReplicaLagSeconds} s)`);
    }
    if (rep.lagBytes !== null && rep.lagBytes > thresholds.maxReplicaLagBytes) {
      add('replication_lag_bytes', 'degraded', `replay is ${mib(rep.lagBytes)} of WAL behind the primary (limit ${mib(thresholds.maxReplicaLagBytes)})`);
    }
  }

  if (facts.role === 'primary' && facts.schemaCreators && facts.schemaCreators.length > 0) {
    add(
      'schema_open_to_create',
      'degraded',
      `${facts.schemaCreators.join(' and ')} may create objects in the shard's schema: an application login's function could shadow one that the mover or the monitor calls, with their rights (PostgreSQL 14's default; shard migration 019 revokes it where its login may). As the schema's owner: REVOKE CREATE ON SCHEMA <schema> FROM ${facts.schemaCreators.join(', ')}`,
    );
  }

  const rds = facts.rds;
  if (rds && rds.freeStorageBytes !== null && rds.allocatedStorageBytes !== null && rds.allocatedStorageBytes > 0) {
    const free = rds.freeStorageBytes / rds.allocatedStorageBytes;
    if (free < thresholds.minFreeStorageRatio) {
      add('free_storage', 'degraded', `${pct(free)} of allocated storage free (minimum ${pct(thresholds.minFreeStorageRatio)})`);
    }
  }
  if (facts.role === 'replica' && rds?.replicaLagSeconds != null && rds.replicaLagSeconds > thresholds.maxReplicaLagSeconds) {
    add('rds_replica_lag', 'degraded', `CloudWatch ReplicaLag is ${rds.replicaLagSeconds.toFixed(0)} s (limit ${thresholds.maxReplicaLagSeconds} s)`);
  }

  return finish(facts, reasons);
}

function finish(facts: NodeFacts, reasons: HealthReason[]): NodeHealth {
  const status: HealthStatus = reasons.some((r) => r.status === 'down') ? 'down' : reasons.length > 0 ? 'degraded' : 'healthy';
  return { nodeId: facts.nodeId, shardId: facts.shardId, role: facts.role, status, reasons };
}

export interface ShardHealth {
  readonly shardId: string;
  readonly status: HealthStatus;
  readonly reasons: readonly HealthReason[];
}

/**
 * A shard is down when its primary is down (writes fail), degraded when the primary is degraded
 * or any replica is not healthy (reads lose capacity), healthy otherwise.
 */
export function classifyShard(shardId: string, primary: NodeHealth, replicas: readonly NodeHealth[]): ShardHealth {
  const reasons: HealthReason[] = [];
  for (const node of [primary, ...replicas]) {
    for (const r of node.reasons) {
      // A dead replica only costs read capacity; it does not take the shard down.
      const status = node.role === 'replica' ? 'degraded' : r.status;
      reasons.push({ ...r, status, nodeId: node.nodeId });
    }
  }
  const status: HealthStatus = primary.status === 'down' ? 'down' : reasons.length > 0 ? 'degraded' : 'healthy';
  return { shardId, status, reasons };
}

/** The worst status of a set (for the overall report). */
export function worstStatus(statuses: Iterable<HealthStatus>): HealthStatus {
  let worst: HealthStatus = 'healthy';
  for (const s of statuses) {
    if (s === 'down') return 'down';
    if (s === 'degraded') worst = 'degraded';
  }
  return worst;
}
