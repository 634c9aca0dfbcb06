/**
 * The shards' logins as the demo backend connects with them. From the environment they are
 * already in the URLs. From Secrets Manager (on AWS) each shard's secret is read when the task
 * connects, put into the shard's URLs, and read again by the pools whenever a login is refused
 * for its credentials ({@link SecretPool}, through the shard pools' `credentials`): the
 * alternating-users rotation changes the password of the login a task started with at the
 * rotation after the one that made it previous, so a task that only read it at start would stop
 * connecting between 30 and 60 days after it started (the rotation is every
 * `database.secretRotationDays`, 30 by default).
 *
 * @example
 * ```ts
 * const logins = await readShardLogins(settings, secretsClientFor(settings));
 * createShardingRuntime({ config: logins.sharding, pools: { credentials: logins.credentials }, ... });
 * ```
 */
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SDK_CLIENT_OPTIONS } from '../../functions/adapters/aws/client-options.js';
import { secretLogins } from '../../functions/adapters/aws/database-secret.js';
import { shardWithLogin } from '../../functions/adapters/postgres/connection-url.js';
import type { LoginCredentials } from '../../functions/adapters/postgres/secret-pool.js';
import type { ShardingConfig } from '../../functions/core/sharding/config.js';
import type { BackendSettings } from './settings.js';

export interface ShardLogins {
  /** The shards, their URLs completed with the logins. */
  readonly sharding: ShardingConfig;
  /** Where a refused login is read again; undefined when the logins are fixed (the environment). */
  readonly credentials?: (shardId: string) => Promise<LoginCredentials>;
}

/** The Secrets Manager client of a task whose logins are secrets (the task role reads them), or undefined. */
export function secretsClientFor(settings: Pick<BackendSettings, 'logins'>): SecretsManagerClient | undefined {
  if (settings.logins.kind !== 'secrets-manager') return undefined;
  return new SecretsManagerClient({ ...SDK_CLIENT_OPTIONS, region: settings.logins.region });
}

/**
 * The shards with their logins: from the settings, or every shard's secret read once now (a
 * failed read rejects with a DatabaseSecretError naming the secret; the caller retries later).
 */
export async function readShardLogins(settings: Pick<BackendSettings, 'sharding' | 'logins'>, secrets: SecretsManagerClient | undefined): Promise<ShardLogins> {
  const logins = settings.logins;
  if (logins.kind === 'environment') return { sharding: settings.sharding };
  if (secrets === undefined) throw new Error('unreachable: the shards\' logins are secrets, and no Secrets Manager client was given');
  const credentials = secretLogins(secrets, logins.secretArns);
  const shards = await Promise.all(settings.sharding.shards.map(async (shard) => shardWithLogin(shard, await credentials(shard.shard_id))));
  return { sharding: { ...settings.sharding, shards }, credentials };
}
