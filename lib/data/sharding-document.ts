/**
 * The guide's `ShardingConfig` document for the deployed shards, with credential-free URLs
 * (the credentials come from each shard's secret at run time): what the application tasks
 * and the scaling API read as `SHARDING_CONFIG_JSON`.
 *
 * @example
 * ```ts
 * const doc = shardingDocument([{ id: 'shard-001', host: 'db1.example', replicas: ['db1r.example'] }], 'ca_dms', 'hash_based');
 * doc.shards[0]?.database_url; // 'postgresql://db1.example:5432/ca_dms?sslmode=verify-full'
 * ```
 */
import { loadShardingConfig } from '../../functions/core/sharding/config.js';

/** One shard's endpoints (CloudFormation tokens are fine). */
export interface ShardEndpoints {
  readonly id: string;
  readonly host: string;
  readonly replicas: readonly string[];
}

export interface ShardingDocument {
  readonly strategy: 'hash_based' | 'directory_based';
  readonly default_shard: string;
  readonly shards: ReadonlyArray<{ shard_id: string; database_url: string; weight: number; read_replicas: string[] }>;
}

const url = (host: string, database: string): string => `postgresql://${host}:5432/${database}?sslmode=verify-full`;

/** Builds the document; throws the sharding schema's `ShardingConfigError` if it rejects the shape. */
export function shardingDocument(shards: readonly ShardEndpoints[], database: string, strategy: ShardingDocument['strategy']): ShardingDocument {
  const build = (hostOf: (host: string, i: number, r?: number) => string): ShardingDocument => ({
    strategy,
    default_shard: shards[0]?.id ?? '',
    shards: shards.map((s, i) => ({
      shard_id: s.id,
      database_url: url(hostOf(s.host, i), database),
      weight: 1,
      read_replicas: s.replicas.map((r, j) => url(hostOf(r, i, j), database)),
    })),
  });
  // Endpoints are unresolved at synthesis: the shape is checked with stand-in host names.
  loadShardingConfig(build((_h, i, r) => `shard${i}${r === undefined ? '' : `-replica${r}`}.example.invalid`), {});
  return build((h) => h);
}
