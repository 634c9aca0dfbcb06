/**
 * A pg pool whose credentials can change under it (Secrets Manager rotation, alternating users):
 * a new connection refused for its credentials (SQLSTATE 28P01 invalid_password or 28000
 * invalid_authorization_specification) re-reads them once, for any number of connections
 * refused together, takes the user name and password they name for every later connection, and
 * retries. Open connections are unaffected by a rotation. The control-plane functions' catalog
 * pool (`functions/handlers/shared/db.ts`) and their shard pools (`shard-pools.ts`) use it.
 *
 * @example
 * ```ts
 * const pool = new SecretPool({ host, user, password }, async () => readSecret(client, arn));
 * ```
 */
import pg from 'pg';

/** What a login needs; a database secret has more. */
export interface LoginCredentials {
  readonly username: string;
  readonly password: string;
}

/** SQLSTATEs of a refused login: wrong password, or no such user (the alternating user not there yet or gone). */
const AUTH_FAILURES = new Set(['28P01', '28000']);

/** Whether `err` is PostgreSQL refusing the credentials. */
export function isAuthenticationFailure(err: unknown): boolean {
  return typeof err === 'object' && err !== null && AUTH_FAILURES.has(String((err as { code?: unknown }).code));
}

type ConnectCallback = (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void;

/**
 * A pool whose credentials come from a secret: a login refused for its credentials re-reads the
 * secret (once for any number of connections refused together) and retries with what it says.
 * `pool.query` goes through `connect`, so both are covered.
 */
export class SecretPool extends pg.Pool {
  #refreshing: Promise<void> | undefined;
  /** Bumped by every refresh: a login that started before it tried the old credentials. */
  #generation = 0;

  constructor(
    config: pg.PoolConfig,
    private readonly reload: () => Promise<LoginCredentials>,
  ) {
    super(config);
  }

  /** Re-reads the secret and uses its user and password for every new connection. */
  async refreshCredentials(): Promise<void> {
    this.#refreshing ??= (async () => {
      try {
        const secret = await this.reload();
        this.options.user = secret.username;
        this.options.password = secret.password;
        this.#generation += 1;
      } finally {
        this.#refreshing = undefined;
      }
    })();
    return this.#refreshing;
  }

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: ConnectCallback): void;
  override connect(callback?: ConnectCallback): Promise<pg.PoolClient> | undefined {
    const attempt = async (): Promise<pg.PoolClient> => {
      const generation = this.#generation;
      try {
        return await super.connect();
      } catch (err) {
        if (!isAuthenticationFailure(err)) throw err;
        // Logins refused together, or after another one already re-read the secret, share it.
        if (generation === this.#generation) await this.refreshCredentials();
        return super.connect();
      }
    };
    const connected = attempt();
    if (callback === undefined) return connected;
    connected.then(
      (client) => callback(undefined, client, (release) => client.release(release as Error | boolean | undefined)),
      (err: unknown) => callback(err instanceof Error ? err : new Error(String(err)), undefined, () => undefined),
    );
    return undefined;
  }
}
