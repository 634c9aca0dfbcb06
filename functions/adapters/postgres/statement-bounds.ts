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
