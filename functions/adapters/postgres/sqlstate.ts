/**
 * The PostgreSQL error codes (SQLSTATE) the adapters act on rather than pass up
 * (https://www.postgresql.org/docs/current/errcodes-appendix.html), and {@link failureKind}, what
 * the API says of a failed database call instead of the driver's or the server's own text.
 */
import { NodeTimeoutError } from './deadline.js';


/** 42501: the login may not (a privilege, a parameter, a function it may not execute). */
export const INSUFFICIENT_PRIVILEGE = '42501';
/**
 * 40001 (serialization_failure): at REPEATABLE READ or SERIALIZABLE (a login's or a database's
 * `default_transaction_isolation`), a row changed by a transaction that committed after the
 * statement's snapshot (or, SERIALIZABLE, a read/write dependency). Nothing was written. On a
 * replica, also a query cancelled for a conflict with recovery.
 */
export const SERIALIZATION_FAILURE = '40001';
/**
 * 55P03 (lock_not_available): a lock wait past `lock_timeout` (the fence's, a deadline's, a
 * session's own), or a lock NOWAIT would not wait for. (deadline.ts keeps its own copy: this module
 * imports it.)
 */
export const LOCK_NOT_AVAILABLE = '55P03';
/** 23505: a unique index refused a row. */
export const UNIQUE_VIOLATION = '23505';
/** 25006: a write refused by a read-only transaction (every transaction of a server in recovery). */
export const READ_ONLY_SQL_TRANSACTION = '25006';
/** 42883: no such function (a migration that adds it not applied yet, or not on the search_path). */
export const UNDEFINED_FUNCTION = '42883';
/** 42703: no such column (a migration that adds it not applied yet). */
export const UNDEFINED_COLUMN = '42703';
/**
 * 22023 (invalid_parameter_value): a catalog function refused its arguments, e.g. a recovery by
 * hand (`catalog.repin_by_hand`, `catalog.publish_slot_map_by_hand`, sharding migration 013) given
 * a blank reason or a shard the catalog does not know. Nothing was written.
 */
export const INVALID_PARAMETER_VALUE = '22023';
/**
 * CAF06 (sharding migration 010): the pin of a key a directory move (or a slot move that
 * kept the key out) wrote fence rows for may not
 * be removed (docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned").
 */
export const PIN_KEPT = 'CAF06';
/**
 * CAF07 (sharding migration 011): the shard of such a key's pin may not be changed but by a
 * mover's publication or `catalog.repin_by_hand` (docs/sharding-spec.md section 9, same section).
 */
export const PIN_OWNER_KEPT = 'CAF07';
/**
 * CAF08 (sharding migration 012): a slot map may not change the owner of a slot a slot move (finished,
 * or past its flip) wrote lasting fence rows for, but by that slot's unfinished move (not past its flip) publishing its target or
 * `catalog.publish_slot_map_by_hand` (docs/sharding-spec.md section 9, "A moved slot keeps its owner").
 * Since sharding migration 013 also the owner of a slot whose slot move is unfinished and has not
 * flipped, but by that move's flip to its target, or by hand in a transaction naming the move in
 * `ca_dms.override_moves` (same section, "While a slot's move is unfinished").
 */
export const SLOT_OWNER_KEPT = 'CAF08';

/** Whether `error` is a PostgreSQL error with one of `codes`. */
export function hasSqlState(error: unknown, ...codes: readonly string[]): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && codes.includes(code);
}

/**
 * How many times {@link retryingSerializationFailures} sends a statement in all: one conflict is
 * the race it is there for (a transaction that changed the row committed while the statement
 * waited for it), and each try after a conflict is a new snapshot that sees that commit; five in
 * a row means the row keeps changing under the caller, which is answered rather than waited out.
 */
export const SERIALIZATION_ATTEMPTS = 5;

/**
 * Runs `statement`, one statement that is its own transaction (sent outside any transaction:
 * autocommit), again while it fails with {@link SERIALIZATION_FAILURE}, at most `attempts` times in
 * all; then the last failure is thrown as it is (the caller decides what a row that kept changing
 * means). Nothing of a failed try was written.
 *
 * Why: a statement outside a transaction runs at the login's or the database's
 * `default_transaction_isolation` (an RDS parameter group, an `ALTER ROLE ... SET` can make it
 * REPEATABLE READ or SERIALIZABLE). There one that waits for another session's update of its row
 * (or for an insert of the same key, `on conflict`) fails with 40001 once that session commits,
 * "could not serialize access due to concurrent update", where READ COMMITTED judges the row as
 * committed. Sent again it takes a new snapshot, which holds that commit, and judges the row as
 * READ COMMITTED would have: the same answer, at no cost unless the race happened, where a READ
 * COMMITTED transaction of its own costs every call two more round trips (issue #15;
 * docs/sharding-spec.md section 9, "Catalog transactions and `default_transaction_isolation`").
 * Never inside a transaction: the failure aborts it, and the statement sent again would only be
 * refused (25P02).
 *
 * @example
 * ```ts
 * const { rows } = await retryingSerializationFailures(() => pool.query(CLAIM, [id, holder, ttlMs]));
 * ```
 */
export async function retryingSerializationFailures<T>(statement: () => Promise<T>, attempts = SERIALIZATION_ATTEMPTS): Promise<T> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await statement();
    } catch (err) {
      if (attempt >= attempts || !hasSqlState(err, SERIALIZATION_FAILURE)) throw err;
    }
  }
}

/**
 * A plain read, `statement`, sent on `client`: again on 40001 ({@link retryingSerializationFailures})
 * where `client` is the store's own `pool` and not a connection in a transaction block (each
 * statement then a transaction of its own, at the login's or the database's default level: at
 * SERIALIZABLE, serializable snapshot isolation ends
 * even a read with 40001, "could not serialize access due to read/write dependencies among
 * transactions", when a transaction that changed what it reads committed after its snapshot with a
 * conflict of its own; sent again, its new snapshot holds that commit), once as it is on a client
 * of the caller's (maybe inside the caller's transaction, which the failure aborted: a statement sent
 * again there would only be refused, 25P02).
 *
 * @example
 * ```ts
 * const { rows } = await readRetried(client, this.pool, () => client.query(LATEST));
 * ```
 */
export function readRetried<T>(client: unknown, pool: unknown, statement: () => Promise<T>): Promise<T> {
  return client === pool && !inTransactionBlock(client) ? retryingSerializationFailures(statement) : statement();
}

/**
 * Whether `client` is a connection inside a transaction block, open ('T') or failed ('E'), as its
 * server's last ReadyForQuery said (pg's `getTransactionStatus`; a pool has none: each of its
 * statements is a transaction of its own). A store may be built on a client rather than a pool
 * (`new SlotMapStore(client)`, a caller's transaction on it): its "own pool" is then the caller's
 * transaction, and a read retried there was refused (25P02) in place of the 40001 the caller's
 * own retry of its transaction looks for (moves-ssi-reads.test.ts).
 */
function inTransactionBlock(client: unknown): boolean {
  const status = (client as { getTransactionStatus?: () => unknown } | null)?.getTransactionStatus?.();
  return status === 'T' || status === 'E';
}

/**
 * What a failed call to a database (a shard's node, the catalog) is, in words fit for an API
 * response: the kind of failure and, where one is known, what to do. The driver's and the
 * server's own text names addresses and ports (`connect ECONNREFUSED 10.0.3.7:5432`), logins
 * (`password authentication failed for user "ca_dms_monitor"`) and relations, which README
 * promises no response carries: it stays with the error, for the caller to log. `advice`
 * replaces the default words for a SQLSTATE (a caller that knows which table or privilege).
 *
 * @example
 * ```ts
 * failureKind(err); // 'connection error ECONNREFUSED', 'no answer within 2000 ms', 'the login was refused (SQLSTATE 28P01: ...)'
 * ```
 */
export function failureKind(err: unknown, advice: Readonly<Record<string, string>> = {}): string {
  if (err instanceof NodeTimeoutError) return `no answer within ${err.timeoutMs} ms`;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') {
    const words = advice[code] ?? KNOWN_FAILURES[code];
    if (words !== undefined) return words;
    // Node's own codes (ECONNREFUSED, ENOTFOUND, ETIMEDOUT, ECONNRESET, EPIPE) before SQLSTATEs:
    // no SQLSTATE class begins with E.
    if (/^E[A-Z]+$/.test(code)) return `connection error ${code}`;
    if (/^[0-9A-Z]{5}$/.test(code)) return `SQLSTATE ${code}`;
    // TLS: DEPTH_ZERO_SELF_SIGNED_CERT, ERR_TLS_CERT_ALTNAME_INVALID, ...
    if (/^[A-Z][A-Z0-9_]+$/.test(code)) return `connection error ${code}: check the server's certificate and the configured CA`;
  }
  // node-postgres's own errors carry no code: "Connection terminated due to connection timeout",
  // "timeout exceeded when trying to connect", "Connection terminated unexpectedly".
  const message = err instanceof Error ? err.message : '';
  if (/timeout/i.test(message)) return 'no answer in time';
  if (/terminated|closed/i.test(message)) return 'the connection was closed';
  return 'the connection failed';
}

/** The words of {@link failureKind} for the SQLSTATEs an operator can act on. */
const KNOWN_FAILURES: Readonly<Record<string, string>> = {
  '57014': 'a statement ran past its time limit',
  '28P01': "the login was refused (SQLSTATE 28P01: wrong password): check the credentials the configuration or the login's secret gives",
  '28000': "the login was refused (SQLSTATE 28000: no such role, or pg_hba.conf refuses it): check the user name and the server's pg_hba.conf",
  '3D000': 'the database does not exist (SQLSTATE 3D000): check the database name the configuration gives',
  '53300': 'the server has no free connection slot (SQLSTATE 53300): raise max_connections or lower the pools',
  '57P03': 'the server is not accepting connections yet (SQLSTATE 57P03: starting up or in recovery)',
  [INSUFFICIENT_PRIVILEGE]: 'this login lacks a privilege the call needs (SQLSTATE 42501): apply the migrations that grant it (ca-dms-scaling migrate)',
  '42P01': 'a table is missing (SQLSTATE 42P01): apply the migrations (ca-dms-scaling migrate)',
  [UNDEFINED_FUNCTION]: 'a function is missing (SQLSTATE 42883): apply the migrations (ca-dms-scaling migrate)',
};
