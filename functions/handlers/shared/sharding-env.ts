/**
 * The sharding configuration of a control-plane function, from its environment: the guide's
 * `ShardingConfig` (`SHARDING_CONFIG_JSON`, with credential-free URLs) completed with each
 * shard's credentials from Secrets Manager (`SHARD_DB_SECRET_ARNS`, one ARN per shard in the
 * same order), then the guide's `SHARDING_ENABLED` / `SHARDING_STRATEGY` /
 * `DATABASE_REPLICA_URLS` on top. Without `SHARDING_CONFIG_JSON`, sharding is off.
 *
 * @example
 * ```ts
 * const config = await shardingConfigFromEnv(process.env, awsClients().secrets);
 * if (config) { ... }
 * ```
 */
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { z } from 'zod';
import { loadShardingConfig, type ShardingConfig } from '../../core/sharding/config.js';
import { envDisables } from '../../core/sharding/move-machine.js';
import { readSecret, secretArnSchema as secretArn, secretLogins } from '../../adapters/aws/database-secret.js';
import { shardWithLogin } from '../../adapters/postgres/connection-url.js';
import type { LoginCredentials } from '../../adapters/postgres/secret-pool.js';
import { EnvironmentError } from './env.js';
import { logger } from './powertools.js';
import { parseJsonText } from '../../core/json-text.js';


const schema = z.object({
  SHARDING_CONFIG_JSON: z.string().optional(),
  SHARD_DB_SECRET_ARNS: z.string().optional(),
});

function parseJson(name: string, raw: string): unknown {
  try {
    return parseJsonText(raw);
  } catch (err) {
    throw new EnvironmentError([{ path: name, message: `not valid JSON: ${(err as Error).message}` }], { cause: err });
  }
}

/** The validated sharding configuration, or `undefined` when sharding is not configured or disabled. */
export async function shardingConfigFromEnv(env: Record<string, string | undefined>, secrets: SecretsManagerClient | undefined): Promise<ShardingConfig | undefined> {
  const e = schema.parse(env);
  if (e.SHARDING_CONFIG_JSON === undefined || e.SHARDING_CONFIG_JSON.trim() === '') return undefined;
  const raw = parseJson('SHARDING_CONFIG_JSON', e.SHARDING_CONFIG_JSON);
  let secretArns: string[] = [];
  if (e.SHARD_DB_SECRET_ARNS !== undefined) {
    const arns = z.array(secretArn).safeParse(parseJson('SHARD_DB_SECRET_ARNS', e.SHARD_DB_SECRET_ARNS));
    if (!arns.success) throw new EnvironmentError(arns.error.issues.map((i) => ({ path: `SHARD_DB_SECRET_ARNS.${i.path.join('.')}`, message: i.message })));
    secretArns = arns.data;
  }
  const doc = z.object({ shards: z.array(z.object({ database_url: z.string(), read_replicas: z.array(z.string()).default([]) }).loose()) }).loose().safeParse(raw);
  if (secretArns.length > 0 && doc.success) {
    if (secretArns.length !== doc.data.shards.length) {
      throw new EnvironmentError([{ path: 'SHARD_DB_SECRET_ARNS', message: `has ${secretArns.length} ARNs for ${doc.data.shards.length} shards; give one per shard, in the same order` }]);
    }
    if (secrets === undefined) throw new EnvironmentError([{ path: 'SHARD_DB_SECRET_ARNS', message: 'a Secrets Manager client is needed' }]);
    const creds = await Promise.all(secretArns.map((arn) => readSecret(secrets, arn)));
    const shards = doc.data.shards.map((shard, i) => {
      const c = creds[i];
      return c ? shardWithLogin(shard, c) : shard;
    });
    const config = loadShardingConfig({ ...doc.data, shards }, env);
    return config.enabled ? config : undefined;
  }
  const config = loadShardingConfig(raw, env);
  return config.enabled ? config : undefined;
}

/**
 * Why {@link shardingConfigFromEnv} gave no configuration, in the words the API's 404 uses: the
 * document not given, `SHARDING_ENABLED` saying false over it, or the document's own
 * `"enabled": false`. Only meaningful where that function returned `undefined`.
 */
export function shardingOffReason(env: Record<string, string | undefined>): string {
  const doc = env.SHARDING_CONFIG_JSON;
  if (doc === undefined || doc.trim() === '') return 'SHARDING_CONFIG_JSON is not set';
  if (envDisables(env)) return `SHARDING_ENABLED=${env.SHARDING_ENABLED?.trim() ?? 'false'}`;
  return `SHARDING_CONFIG_JSON's "enabled": false`;
}

/**
 * Where each shard's login comes from after a rotation: shard id -> re-read of its secret in
 * `SHARD_DB_SECRET_ARNS` (same order as `SHARDING_CONFIG_JSON`'s shards). `undefined` without
 * secrets (local mode, tests with URLs). Give it to the shard pools (`pools.credentials`), so a
 * warm container whose login was rotated away re-reads it instead of failing until it is recycled.
 */
export function shardCredentialsFromEnv(env: Record<string, string | undefined>, secrets: SecretsManagerClient | undefined): ((shardId: string) => Promise<LoginCredentials>) | undefined {
  const e = schema.parse(env);
  if (e.SHARDING_CONFIG_JSON === undefined || e.SHARD_DB_SECRET_ARNS === undefined || secrets === undefined) return undefined;
  const arns = z.array(secretArn).safeParse(parseJson('SHARD_DB_SECRET_ARNS', e.SHARD_DB_SECRET_ARNS));
  const doc = z.object({ shards: z.array(z.object({ shard_id: z.string() }).loose()) }).loose().safeParse(parseJson('SHARDING_CONFIG_JSON', e.SHARDING_CONFIG_JSON));
  if (!arns.success || !doc.success || arns.data.length === 0) return undefined;
  const byShard = new Map(doc.data.shards.flatMap((s, i) => (arns.data[i] === undefined ? [] : [[s.shard_id, arns.data[i]] as const])));
  const read = secretLogins(secrets, byShard);
  return async (shardId) => {
    if (!byShard.has(shardId)) throw new EnvironmentError([{ path: 'SHARD_DB_SECRET_ARNS', message: `no secret for shard ${shardId}` }]);
    return read(shardId);
  };
}

/**
 * The functions' `onRoutingNotRecorded` (sharding-runtime.ts): a runtime whose routing the catalog
 * did not record starts all the same, and says so once, at its cold start.
 */
export function logRoutingNotRecorded(error: unknown): void {
  logger.warn(
    "the routing this function runs with was not recorded in catalog.runtime_routings (sharding migration 022 not applied yet, or the login lacks its grant); it runs all the same, but `shards fences` cannot check an operator's routing against it until a cold start records it",
    { error: error instanceof Error ? error : String(error) },
  );
}
