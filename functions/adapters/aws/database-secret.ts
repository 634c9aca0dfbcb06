/**
 * Database logins kept in Secrets Manager: reading and validating an RDS-style secret, and the
 * re-read a {@link SecretPool} does after a rotation. The control-plane functions
 * (functions/handlers/shared/db.ts, sharding-env.ts) and the demo backend's ECS tasks
 * (containers/backend) read their logins here, so a rotation reaches both the same way.
 *
 * @example
 * ```ts
 * const secret = await readSecret(client, process.env.CATALOG_DB_SECRET_ARN);
 * const loginOf = secretLogins(client, new Map([['shard-001', arn1]]));
 * const pools = ShardPools.fromConfig(config, { credentials: loginOf });
 * ```
 */
import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { z } from 'zod';
import type { LoginCredentials } from '../postgres/secret-pool.js';

/** The database secret could not be read or does not have the expected shape. */
export class DatabaseSecretError extends Error {
  override readonly name = 'DatabaseSecretError';
}

/** A Secrets Manager secret's ARN, as the environment of a function or task gives it. */
export const secretArnSchema = z.string().regex(/^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+$/, 'expected a Secrets Manager secret ARN');

/** The fields of an RDS-managed (or CDK-generated) database secret that we use. */
export const databaseSecretSchema = z.object({
  username: z.string().min(1),
  password: z.string().min(1),
  host: z.string().min(1),
  port: z.coerce.number().int().min(1).max(65_535).default(5432),
  dbname: z.string().min(1).default('postgres'),
});
export type DatabaseSecret = z.infer<typeof databaseSecretSchema>;

/** Reads and validates an RDS-style database secret (its AWSCURRENT version). Throws {@link DatabaseSecretError}. */
export async function readSecret(secrets: SecretsManagerClient, secretArn: string): Promise<DatabaseSecret> {
  let raw: string | undefined;
  try {
    raw = (await secrets.send(new GetSecretValueCommand({ SecretId: secretArn }))).SecretString;
  } catch (err) {
    throw new DatabaseSecretError(`reading database secret ${secretArn} failed: ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(raw ?? '');
  } catch (err) {
    throw new DatabaseSecretError(`database secret ${secretArn} is not JSON`, { cause: err });
  }
  const parsed = databaseSecretSchema.safeParse(json);
  if (!parsed.success) {
    throw new DatabaseSecretError(`database secret ${secretArn} lacks ${parsed.error.issues.map((i) => i.path.join('.')).join(', ')}`, { cause: parsed.error });
  }
  return parsed.data;
}

/**
 * Each shard's login, read from its secret (`secretOf`: shard id -> ARN) on every call, for the
 * shard pools' `credentials` and their first read. Reads of one secret that overlap share one
 * GetSecretValue: a rotation refuses the primary's, the replicas', the inspector's and the
 * catalog's pools of a shard at about the same moment, and they all want the same answer.
 */
export function secretLogins(secrets: SecretsManagerClient, secretOf: ReadonlyMap<string, string>): (shardId: string) => Promise<LoginCredentials> {
  const inFlight = new Map<string, Promise<LoginCredentials>>();
  return (shardId) => {
    const arn = secretOf.get(shardId);
    if (arn === undefined) return Promise.reject(new DatabaseSecretError(`no secret is configured for shard ${shardId}`));
    let read = inFlight.get(arn);
    if (read === undefined) {
      read = readSecret(secrets, arn).finally(() => inFlight.delete(arn));
      inFlight.set(arn, read);
    }
    return read;
  };
}
