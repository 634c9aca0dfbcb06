/**
 * The sharding configuration of local mode: every embedded shard, hash-based, with the guide's
 * sharding variables (`SHARDING_STRATEGY`, `SHARDING_ENABLED`, `DATABASE_REPLICA_URLS`) on top.
 * Light on purpose (the sharding core only): `start` checks the variables with it before it binds
 * a port or initialises PostgreSQL, so a mistake in them changes nothing.
 *
 * @example
 * ```ts
 * const config = localShardingConfig(cluster.shards, process.env); // throws ShardingConfigError
 * checkLocalShardingEnv(2, { SHARDING_STRATEGY: 'consistent' });   // throws ShardingConfigError
 * ```
 */
import { applyShardingEnv, parseShardingConfig, type ShardingConfig, type ShardingEnv } from '../core/sharding/config.js';

/** One embedded shard as the sharding configuration needs it. */
export interface LocalShard {
  readonly shardId: string;
  readonly primaryUrl: string;
  readonly replicaUrls: readonly string[];
}

/** The validated sharding configuration of local mode over `shards`. Throws ShardingConfigError. */
export function localShardingConfig(shards: readonly LocalShard[], env: ShardingEnv): ShardingConfig {
  return parseShardingConfig(
    applyShardingEnv(
      {
        strategy: 'hash_based',
        shards: shards.map((s) => ({ shard_id: s.shardId, database_url: s.primaryUrl, weight: 1, read_replicas: [...s.replicaUrls] })),
        default_shard: shards[0]?.shardId,
        health_check_interval_seconds: 1,
      },
      env,
    ),
  );
}

/**
 * Checks the sharding variables against a local mode of `shardCount` shards before any server
 * exists: the shards as the embedded cluster names them (`shard_001`, ...), on placeholder URLs.
 * Throws ShardingConfigError naming each variable at fault.
 */
export function checkLocalShardingEnv(shardCount: number, env: ShardingEnv): void {
  const shards = Array.from({ length: shardCount }, (_, i) => ({
    shardId: `shard_${String(i + 1).padStart(3, '0')}`,
    // On a reserved name (RFC 2606) no replica URL can share: the primaries take free ports once
    // they start, so a placeholder such as 127.0.0.1:5432 refused a replica there as "the same database".
    primaryUrl: `postgresql://shard-${String(i + 1).padStart(3, '0')}.local-mode.invalid/ca_dms`,
    replicaUrls: [],
  }));
  localShardingConfig(shards, env);
}
