/**
 * The least-privilege logins on a shard or on the catalog: a user that is a member of one
 * NOLOGIN role holding the grants of its code path (`ca_dms_app` for the CA-DMS application,
 * shard migration 003; `ca_dms_monitor` and `ca_dms_mover` for the scaling API and the moves
 * worker, shard migration 006; `ca_dms_control` for the control plane on the catalog, catalog
 * migration 006) and nothing else. The migrations function creates each from its secret, or
 * resets its password to the secret's when the user exists (a redeploy, a secret restored by
 * hand).
 *
 * Secrets Manager's alternating-users rotation switches the secret between `NAME` and
 * `NAME_clone`, creating the clone on its first rotation as a member of `NAME`: that clone would
 * inherit the grants but not the user's own settings (`ALTER ROLE ... SET`, e.g. the catalog
 * login's statement timeout), so from the first rotation on (which runs at creation) the
 * functions would log in without them. Both users are therefore made here, each a member of the
 * role and each with the settings; the rotation then only sets the clone's password. The user
 * the secret does not name keeps its password: it may be the previous one, still in use by
 * tasks started before the last rotation (a new clone gets a random password nobody knows until
 * the rotation sets one).
 *
 * Passwords are sent as SCRAM-SHA-256 verifiers computed here, never in clear: a statement log
 * on the server (log_statement = ddl) then shows only the verifier, from which the password
 * cannot be recovered.
 *
 * @example
 * ```ts
 * await ensureApplicationLogin(shardPool, { username: 'ca_dms_app_user', password });
 * await ensureLogin(catalogPool, { username: 'ca_dms_control_user', password }, { role: CONTROL_ROLE, settings: { statement_timeout: '10000ms' } });
 * ```
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import type pg from 'pg';
import { inTransaction } from './transaction.js';

/** The NOLOGIN role holding the application's grants (shard migration 003). */
export const APPLICATION_ROLE = 'ca_dms_app';
/** The scaling API's role on a shard: statistics and health, read only (shard migration 006). */
export const MONITOR_ROLE = 'ca_dms_monitor';
/** The moves worker's role on a shard (shard migration 006). */
export const MOVER_ROLE = 'ca_dms_mover';
/** The control plane's role on the catalog (catalog migration 006, sharding migration 005). */
export const CONTROL_ROLE = 'ca_dms_control';

/** What the alternating-users rotation appends to a user name for its second user. */
export const CLONE_SUFFIX = '_clone';

const SCRAM_ITERATIONS = 4096;

/** A SCRAM-SHA-256 password verifier as PostgreSQL stores it (RFC 5802 / RFC 7677). */
export function scramVerifier(password: string, salt: Buffer = randomBytes(16), iterations = SCRAM_ITERATIONS): string {
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** The other user of an alternating pair: `NAME` for `NAME_clone`, `NAME_clone` for `NAME`. */
export function alternateUser(username: string): string {
  return username.endsWith(CLONE_SUFFIX) ? username.slice(0, -CLONE_SUFFIX.length) : `${username}${CLONE_SUFFIX}`;
}

/** What a login is given: the role it is a member of, and its own settings in this database. */
export interface LoginGrant {
  readonly role: string;
  /** `ALTER ROLE ... IN DATABASE <this one> SET name = value`, on both users. @default {} */
  readonly settings?: Readonly<Record<string, string>>;
}

/**
 * Creates the login named by the secret (or resets its password) and its alternate user (created
 * with an unknown password when missing, its password otherwise left alone), makes both members
 * of `grant.role`, and gives both `grant.settings` in the pool's database. One transaction.
 */
export async function ensureLogin(pool: pg.Pool, login: { readonly username: string; readonly password: string }, grant: LoginGrant): Promise<'created' | 'updated'> {
  return inTransaction(pool, 'begin', async (client) => {
    const role = client.escapeIdentifier(grant.role);
    const { rows } = await client.query<{ db: string }>('select current_database() as db');
    const database = client.escapeIdentifier(rows[0]?.db ?? '');
    let outcome: 'created' | 'updated' = 'updated';
    for (const [username, password] of [
      [login.username, login.password],
      [alternateUser(login.username), undefined],
    ] as const) {
      const user = client.escapeIdentifier(username);
      const { rowCount } = await client.query('select 1 from pg_roles where rolname = $1', [username]);
      const exists = rowCount === 1;
      if (!exists) {
        const verifier = client.escapeLiteral(scramVerifier(password ?? randomBytes(32).toString('base64')));
        await client.query(`create role ${user} with login password ${verifier}`);
        if (password !== undefined) outcome = 'created';
      } else if (password !== undefined) {
        await client.query(`alter role ${user} with login password ${client.escapeLiteral(scramVerifier(password))}`);
      }
      await client.query(`grant ${role} to ${user}`);
      for (const [name, value] of Object.entries(grant.settings ?? {})) {
        await client.query(`alter role ${user} in database ${database} set ${client.escapeIdentifier(name)} = ${client.escapeLiteral(value)}`);
      }
    }
    return outcome;
  });
}

/** Creates the CA-DMS application's login (or resets its password) as a member of {@link APPLICATION_ROLE}. */
export function ensureApplicationLogin(pool: pg.Pool, login: { readonly username: string; readonly password: string }): Promise<'created' | 'updated'> {
  return ensureLogin(pool, login, { role: APPLICATION_ROLE });
}
