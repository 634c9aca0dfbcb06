/**
 * PostgreSQL pools for the control-plane functions: one connection per container (a Lambda
 * handles one event at a time), credentials from Secrets Manager, TLS always verified.
 *
 * RDS Proxy presents ACM certificates that Node already trusts; direct connections to RDS
 * instances need the Amazon RDS certificate authorities, which the Lambda runtime ships: the
 * CDK app sets `NODE_EXTRA_CA_CERTS=/var/runtime/ca-cert.pem`. Loopback URLs (local mode,
 * tests) are the only connections allowed without TLS.
 *
 * @example
 * ```ts
 * const pool = await createPool({ secretArn: process.env.CATALOG_DB_SECRET_ARN }, awsClients().secrets);
 * ```
 */
import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import pg from 'pg';
import { z } from 'zod';
import type { DatabaseLocation } from './env.js';

/** The database secret could not be read or does not have the expected shape. */
export class DatabaseSecretError extends Error {
  override readonly name = 'DatabaseSecretError';
}

/** The fields of an RDS-managed (or CDK-generated) database secret that we use. */
export const databaseSecretSchema = z.object({
  username: z.string().min(1),
  password: z.string().min(1),
  host: z.string().min(1),
  port: z.coerce.number().int().min(1).max(65_535).default(5432),
  dbname: z.string().min(1).default('postgres'),
});
export type DatabaseSecret = z.infer<typeof databaseSecretSchema>;

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);
/** Re-read the secret for new connections after this long, so rotation is picked up. */
const SECRET_TTL_MS = 5 * 60 * 1000;

const POOL_DEFAULTS = {
  max: 1,
  connectionTimeoutMillis: 3000,
  // Long enough to reuse the connection across warm invocations.
  idleTimeoutMillis: 120_000,
  query_timeout: 10_000,
  statement_timeout: 10_000,
  keepAlive: true,
} as const;

/** Reads and validates an RDS-style database secret. Throws {@link DatabaseSecretError}. */
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

function withErrorListener(pool: pg.Pool): pg.Pool {
  // An idle connection dropped while the container was frozen must not crash the process;
  // the next query reconnects.
  pool.on('error', () => undefined);
  return pool;
}

/** Builds a pool for a database location (a secret, or a URL). */
export async function createPool(location: DatabaseLocation, secrets: SecretsManagerClient | undefined, overrides: pg.PoolConfig = {}): Promise<pg.Pool> {
  if (location.url !== undefined) {
    const url = new URL(location.url);
    const loopback = LOOPBACK.has(url.hostname);
    url.searchParams.delete('sslmode');
    return withErrorListener(
      new pg.Pool({ ...POOL_DEFAULTS, ...overrides, connectionString: url.toString(), ssl: loopback ? false : { rejectUnauthorized: true } }),
    );
  }
  if (location.secretArn === undefined) throw new DatabaseSecretError('no database secret or URL configured');
  if (secrets === undefined) throw new DatabaseSecretError(`a Secrets Manager client is needed to read ${location.secretArn}`);
  const secretArn = location.secretArn;
  let secret = await readSecret(secrets, secretArn);
  let readAt = Date.now();
  return withErrorListener(
    new pg.Pool({
      ...POOL_DEFAULTS,
      ...overrides,
      host: location.host ?? secret.host,
      port: secret.port,
      database: secret.dbname,
      user: secret.username,
      password: async () => {
        if (Date.now() - readAt > SECRET_TTL_MS) {
          secret = await readSecret(secrets, secretArn);
          readAt = Date.now();
        }
        return secret.password;
      },
      ssl: { rejectUnauthorized: true },
    }),
  );
}
