/**
 * PostgreSQL pools for the control-plane functions: one connection per container by default (a
 * Lambda handles one event at a time; callers that need more pass `max`), credentials from
 * Secrets Manager, TLS always verified against the Amazon RDS CAs shipped with the code
 * (`../../adapters/postgres/tls.ts`). Loopback hosts (local mode, tests) are the only
 * connections made without TLS.
 *
 * Credentials rotate (Secrets Manager, every 30 days, alternating users): a warm container keeps
 * its pool, so when a new connection is refused for its credentials (SQLSTATE class 28:
 * 28P01 invalid_password, 28000 invalid_authorization_specification, or the proxy's) the pool re-reads the secret,
 * takes its user name and password (the alternating-users rotation switches the user) for every
 * later connection, and retries once. Open connections are unaffected by a rotation.
 *
 * RDS Proxy: nothing here sets session state. In particular no `statement_timeout` startup
 * parameter, which RDS Proxy does not recognise (its PostgreSQL startup message accepts user,
 * database, replication, application_name, client_encoding, DateStyle, TimeZone and
 * extra_float_digits): the catalog's statement timeout is the role's default in that database
 * (catalog migration 005), which needs no statement and pins nothing.
 *
 * @example
 * ```ts
 * const pool = await createPool({ secretArn: process.env.CATALOG_DB_SECRET_ARN }, awsClients().secrets);
 * const bigger = await createPool(location, secrets, { max: 4 });
 * ```
 */
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import pg from 'pg';
import { DatabaseSecretError, readSecret } from '../../adapters/aws/database-secret.js';
import { SecretPool } from '../../adapters/postgres/secret-pool.js';
import { ListeningClient } from '../../adapters/postgres/listening-client.js';
import { withRdsTls, tlsFor } from '../../adapters/postgres/tls.js';
import { CATALOG_QUERY_TIMEOUT_MS } from '../../adapters/postgres/statement-bounds.js';

export { CredentialsReadError, isAuthenticationFailure, SecretPool } from '../../adapters/postgres/secret-pool.js';
export { DatabaseSecretError, databaseSecretSchema, readSecret, type DatabaseSecret } from '../../adapters/aws/database-secret.js';
import type { DatabaseLocation } from './env.js';

export { CATALOG_STATEMENT_TIMEOUT_MS } from '../../adapters/postgres/statement-bounds.js';

/** Pool options every function starts from; `createPool`'s `overrides` replace any of them. */
export const POOL_DEFAULTS = {
  max: 1,
  connectionTimeoutMillis: 3000,
  // Long enough to reuse the connection across warm invocations.
  idleTimeoutMillis: 120_000,
  query_timeout: CATALOG_QUERY_TIMEOUT_MS,
  keepAlive: true,
  Client: ListeningClient,
} as const satisfies pg.PoolConfig;

function withErrorListener<P extends pg.Pool>(pool: P): P {
  // An idle connection dropped while the container was frozen must not crash the process;
  // the next query reconnects.
  pool.on('error', () => undefined);
  return pool;
}

/** Builds a pool for a database location (a secret, or a URL). */
export async function createPool(location: DatabaseLocation, secrets: SecretsManagerClient | undefined, overrides: pg.PoolConfig = {}): Promise<pg.Pool> {
  if (location.url !== undefined) {
    return withErrorListener(new pg.Pool({ ...POOL_DEFAULTS, ...overrides, ...withRdsTls(location.url) }));
  }
  if (location.secretArn === undefined) throw new DatabaseSecretError('no database secret or URL configured');
  if (secrets === undefined) throw new DatabaseSecretError(`a Secrets Manager client is needed to read ${location.secretArn}`);
  const secretArn = location.secretArn;
  const secret = await readSecret(secrets, secretArn);
  const host = location.host ?? secret.host;
  return withErrorListener(
    new SecretPool(
      {
        ...POOL_DEFAULTS,
        ...overrides,
        host,
        port: secret.port,
        database: secret.dbname,
        user: secret.username,
        password: secret.password,
        ssl: tlsFor(host),
      },
      () => readSecret(secrets, secretArn),
    ),
  );
}
