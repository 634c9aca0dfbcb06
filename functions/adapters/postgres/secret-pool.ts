/**
 * A pg pool whose credentials can change under it (Secrets Manager rotation, alternating users):
 * a new connection refused for its credentials (SQLSTATE class 28: 28P01 invalid_password,
 * 28000 invalid_authorization_specification) re-reads them once, for any number of connections
 * refused together, takes the user name and password they name for every later connection, and
 * retries the connection once. Open connections are unaffected by a rotation. The control-plane
 * functions' catalog pool (`functions/handlers/shared/db.ts`), the shard pools (`shard-pools.ts`)
 * and the demo backend's pools (containers/backend) use it.
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

/**
 * Whether `err` is a login refused for its credentials: SQLSTATE class 28, invalid authorization
 * specification. PostgreSQL sends 28P01 for a wrong password and 28000 for no such user (the
 * alternating user not there yet, or gone); RDS Proxy documents neither code for its own
 * refusals (docs/infrastructure.md, "Rotation behind RDS Proxy"), so the whole class counts.
 */
export function isAuthenticationFailure(err: unknown): boolean {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && /^28[0-9A-Z]{3}$/.test(code);
}

/**
 * A login refused for its credentials (`refused`, the server's class-28 error) whose re-read of
 * them failed (`cause`: the source's error, Secrets Manager's throttling, a timeout, access denied,
 * a secret that is not a login). Thrown by {@link SecretPool.connect} in place of the source's bare
 * error, which named neither the refused login nor the pool, and reached the API as "an internal
 * error occurred" (h166, moves-plan-catalog-lost.test.ts). Its message keeps the source's text
 * (a secret's ARN, an account): for the log, not an answer; {@link sourceFailure} and
 * {@link transient} are what an answer may say. No `code`: it is neither the node's refusal nor a
 * node's failure (sqlstate.ts, replica-reader.ts isNodeFailure read `code`).
 */
export class CredentialsReadError extends Error {
  override readonly name = 'CredentialsReadError';
  constructor(
    readonly refused: unknown,
    cause: unknown,
  ) {
    super(`a login was refused for its credentials and re-reading them from their source failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }

  /**
   * Whether the source's failure passes by itself: throttled (ThrottlingException, 429), its
   * service failing (InternalServiceError, a 5xx), or no answer in time or a connection lost on the
   * way (a timeout, ECONNRESET, ETIMEDOUT, EAI_AGAIN). Anything else (access denied, no such
   * secret, a key it cannot be decrypted with, a value that is not a login) needs the deployment mended.
   */
  get transient(): boolean {
    return causes(this.cause).some((e) => {
      const { name, code, $metadata, $retryable } = e as { name?: unknown; code?: unknown; $metadata?: { httpStatusCode?: unknown }; $retryable?: unknown };
      const status = typeof $metadata?.httpStatusCode === 'number' ? $metadata.httpStatusCode : undefined;
      return (
        $retryable !== undefined ||
        (status !== undefined && (status === 429 || status >= 500)) ||
        (typeof name === 'string' && TRANSIENT_SOURCE_FAILURES.test(name)) ||
        (typeof code === 'string' && ['ECONNRESET', 'ETIMEDOUT', 'ECONNREFUSED', 'EAI_AGAIN', 'EPIPE'].includes(code))
      );
    });
  }

  /**
   * The source's failure in words that name no secret, role or account: the service's error name
   * (ThrottlingException, AccessDeniedException, TimeoutError) where one is given, else what was
   * wrong with the secret's value.
   */
  get sourceFailure(): string {
    const named = causes(this.cause).find((e) => typeof (e as { name?: unknown }).name === 'string' && !['Error', 'DatabaseSecretError', 'ZodError', 'SyntaxError'].includes((e as Error).name));
    if (named !== undefined) return (named as Error).name;
    const parseError = causes(this.cause).some((e) => e instanceof SyntaxError || (e as Error).name === 'ZodError');
    return parseError ? "its value is not a database login's JSON (username and password)" : 'the read failed';
  }
}

/** Names of a source's errors that pass by themselves (AWS SDK error names; a client-side timeout). */
const TRANSIENT_SOURCE_FAILURES = /^(ThrottlingException|Throttling|TooManyRequestsException|RequestLimitExceeded|InternalServiceError|InternalFailure|ServiceUnavailable(Exception)?|RequestTimeout(Exception)?|TimeoutError)$/;

/** `err` and its causes, outermost first (at most a few: a cycle must not loop). */
function causes(err: unknown): unknown[] {
  const out: unknown[] = [];
  for (let e = err; e !== undefined && e !== null && out.length < 8; e = (e as { cause?: unknown }).cause) out.push(e);
  return out;
}

type ConnectCallback = (err: Error | undefined, client: pg.PoolClient | undefined, done: (release?: unknown) => void) => void;

/** How often a {@link SecretPool} may re-read its credentials. */
export interface SecretPoolOptions {
  /**
   * After a re-read, logins refused within this many milliseconds fail with their own error
   * instead of reading again: a secret that still names a refused login (a password changed by
   * hand, a rotation that failed half-way) costs one GetSecretValue per interval, not one per
   * connection. Default 1000.
   */
  readonly minRefreshIntervalMs?: number;
  /**
   * After a re-read that failed (Secrets Manager unreachable, access denied), the next one waits
   * `minRefreshIntervalMs` doubled for each failure in a row, at most this long; until then a
   * refused login fails with the re-read's error. Default 60000.
   */
  readonly maxRefreshBackoffMs?: number;
  /** The clock, in milliseconds (tests move it). Default `Date.now`. */
  readonly now?: () => number;
}

/**
 * A pool whose credentials come from a secret: a login refused for its credentials re-reads the
 * secret (once for any number of connections refused together, and at most once per interval,
 * backing off while the re-read fails) and retries with what it says. Only the connection is
 * retried, never a statement: `pool.query` goes through `connect`, so a query whose login was
 * refused runs once, on the retried connection, and a statement that failed for any other
 * reason fails as it did.
 */
export class SecretPool extends pg.Pool {
  #refreshing: Promise<void> | undefined;
  /** Bumped by every refresh: a login that started before it tried the old credentials. */
  #generation = 0;
  /** No re-read before this instant (ms). */
  #notBefore = Number.NEGATIVE_INFINITY;
  #failuresInARow = 0;
  #lastFailure: unknown;
  readonly #minIntervalMs: number;
  readonly #maxBackoffMs: number;
  readonly #now: () => number;

  constructor(
    config: pg.PoolConfig,
    private readonly reload: () => Promise<LoginCredentials>,
    options: SecretPoolOptions = {},
  ) {
    super(config);
    this.#minIntervalMs = options.minRefreshIntervalMs ?? 1000;
    this.#maxBackoffMs = options.maxRefreshBackoffMs ?? 60_000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Re-reads the secret and uses its user and password for every new connection; shared by
   * concurrent callers. Within the interval after the last re-read it reads nothing: it resolves
   * after a success, and rejects with the last failure after a failure.
   */
  async refreshCredentials(): Promise<void> {
    if (this.#refreshing) return this.#refreshing;
    if (this.#now() < this.#notBefore) {
      if (this.#failuresInARow > 0) throw this.#lastFailure;
      return;
    }
    this.#refreshing = (async () => {
      try {
        const secret = await this.reload();
        this.options.user = secret.username;
        this.options.password = secret.password;
        this.#generation += 1;
        this.#failuresInARow = 0;
        this.#lastFailure = undefined;
        this.#notBefore = this.#now() + this.#minIntervalMs;
      } catch (err) {
        this.#failuresInARow += 1;
        this.#lastFailure = err;
        this.#notBefore = this.#now() + Math.min(this.#maxBackoffMs, this.#minIntervalMs * 2 ** (this.#failuresInARow - 1));
        throw err;
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
        // A re-read that failed is named with the login it was for (CredentialsReadError).
        if (generation === this.#generation) await this.refreshCredentials().catch((readErr: unknown) => Promise.reject(new CredentialsReadError(err, readErr)));
        // Nothing new to log in with (re-read moments ago): the same login would be refused again.
        if (generation === this.#generation) throw err;
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
