/**
 * How long a catalog statement may run: the same bound for the Lambda functions' pools
 * (`handlers/shared/db.ts`) and local mode's (`local/runtime.ts`), in one place that loads
 * neither the AWS SDK nor anything else.
 *
 * @example
 * ```ts
 * const pool = new pg.Pool({ connectionString, query_timeout: CATALOG_QUERY_TIMEOUT_MS });
 * ```
 */

/**
 * The statement timeout the catalog role gets by default (catalog migration 005). The client's
 * own `query_timeout` ({@link CATALOG_QUERY_TIMEOUT_MS}) is a little longer: it only fires when
 * the server cannot answer at all (a dead network, a stopped server), since the server cancels a
 * slow statement first.
 */
export const CATALOG_STATEMENT_TIMEOUT_MS = 10_000;

/** The client's bound on a catalog statement: the server's, plus time for its cancellation to arrive. */
export const CATALOG_QUERY_TIMEOUT_MS = CATALOG_STATEMENT_TIMEOUT_MS + 2000;

/**
 * How long the controller's transaction holding a service's lock (`catalog.service_locks`) may
 * sit idle before the server ends it (`idle_in_transaction_session_timeout`, SET LOCAL in that
 * transaction only). The transaction asks ECS for the change while it holds the lock, so the
 * session is "idle in transaction" for the whole call, which no `statement_timeout` bounds: an
 * evaluation whose Lambda timed out or was frozen mid-call, its connection left open (RDS Proxy
 * keeps a client connection for its idle client timeout, 30 min by default), would hold the lock
 * until the server noticed, and every stop and configuration write would answer 503 until then.
 * Longer than the longest ECS call the SDK's retry settings allow (`sdkCallBoundMs`, 50 s;
 * test/integration/controller/service-lock-idle-bound.test.ts holds the two apart), so a healthy slow call is never cut.
 */
export const SERVICE_LOCK_IDLE_MS = 55_000;

/**
 * What a transaction holding a service's lock keeps of its idle bound after the call made under
 * it has been cut (`ServiceSession.expiring`): the client-side gaps before its last statements and
 * its commit, on a live connection (the server counts only idle time, not a running statement).
 * At most a third of the bound (a short one, in tests). With {@link SERVICE_LOCK_IDLE_MS}, the
 * call is cut 51 s after the lock was taken: later than the slowest call the SDK's retry settings
 * allow (`sdkCallBoundMs`, 50 s).
 */
export const SERVICE_LOCK_COMMIT_MARGIN_MS = 4_000;

/** When, after its lock was taken, a call made under a service's lock held `idleMs` at most is cut. */
export function serviceLockCallBoundMs(idleMs: number): number {
  return idleMs - Math.min(SERVICE_LOCK_COMMIT_MARGIN_MS, Math.floor(idleMs / 3));
}
