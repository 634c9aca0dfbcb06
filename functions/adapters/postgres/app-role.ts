/**
 * The CA-DMS application's login on a shard: a user that is a member of `ca_dms_app` (shard
 * migration 003, the least privileges the application needs) and nothing else. The migrations
 * function creates it from the application's secret, or resets its password to the secret's
 * when the user exists (a redeploy, a secret restored by hand).
 *
 * The password is sent as a SCRAM-SHA-256 verifier computed here, never in clear: a statement
 * log on the server (log_statement = ddl) then shows only the verifier, from which the password
 * cannot be recovered.
 *
 * @example
 * ```ts
 * await ensureApplicationLogin(shardPool, { username: 'ca_dms_app_user', password });
 * ```
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import type pg from 'pg';

/** The NOLOGIN role holding the application's grants (shard migration 003). */
export const APPLICATION_ROLE = 'ca_dms_app';

const SCRAM_ITERATIONS = 4096;

/** A SCRAM-SHA-256 password verifier as PostgreSQL stores it (RFC 5802 / RFC 7677). */
export function scramVerifier(password: string, salt: Buffer = randomBytes(16), iterations = SCRAM_ITERATIONS): string {
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** Creates the login (or resets its password) and makes it a member of {@link APPLICATION_ROLE}. */
export async function ensureApplicationLogin(pool: pg.Pool, login: { readonly username: string; readonly password: string }): Promise<'created' | 'updated'> {
  const client = await pool.connect();
  try {
    const user = client.escapeIdentifier(login.username);
    const verifier = client.escapeLiteral(scramVerifier(login.password));
    await client.query('begin');
    const { rowCount } = await client.query('select 1 from pg_roles where rolname = $1', [login.username]);
    const existed = rowCount === 1;
    await client.query(existed ? `alter role ${user} with login password ${verifier}` : `create role ${user} with login password ${verifier}`);
    await client.query(`grant ${client.escapeIdentifier(APPLICATION_ROLE)} to ${user}`);
    await client.query('commit');
    return existed ? 'updated' : 'created';
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}
