/**
 * Transactions, the one way the adapters open one: `begin` (or a stricter form such as
 * `begin isolation level repeatable read`), the body, then commit; when the body or the commit
 * throws, a rollback, and the original error rethrown (a failed rollback must not hide what
 * caused it). A body that finds the transaction should not commit (a fence verdict read inside
 * it, say) returns {@link RollbackWith}: the transaction is rolled back and its value returned.
 *
 * {@link inClientTransaction} runs on a client the caller holds (a session lock's client, a
 * replica chosen by the reader); {@link inTransaction} checks one out of a pool for the
 * transaction and gives it back, discarded instead of reused when the rollback failed too: then
 * its connection is dead or stuck mid-transaction.
 *
 * While the client is checked out, a connection that dies emits `error` on the client, which
 * the pool does not listen to; a listener here turns that into a failed query (which the caller
 * handles) instead of an uncaught exception that would end the process.
 *
 * @example
 * ```ts
 * const id = await inTransaction(pool, 'begin', async (client) => {
 *   await client.query('lock table catalog.scaling_config in share row exclusive mode');
 *   return (await client.query<{ v: number }>('select 1 as v')).rows[0]?.v;
 * });
 * ```
 */
import type pg from 'pg';

const ROLLBACK: unique symbol = Symbol('rollback');

/**
 * Returned by a transaction body to end the transaction with a rollback; `value` is handed back.
 * A body that may return one names its result type: `inTransaction<Verdict>(pool, ...)`.
 */
export class RollbackWith<T> {
  // A member keyed by a module-private symbol makes the type nominal: a body's own `{ value }`
  // result can never be taken for one.
  readonly [ROLLBACK] = true;
  constructor(readonly value: T) {}
}

/**
 * The transaction was rolled back, not committed: a statement in it had failed (its error caught
 * by the body), so PostgreSQL answered the COMMIT with ROLLBACK. SQLSTATE 25P02,
 * `in_failed_sql_transaction`.
 */
export class RolledBackAtCommitError extends Error {
  override readonly name = 'RolledBackAtCommitError';
  readonly code = '25P02';
  constructor() {
    super('the transaction was rolled back, not committed: a statement in it had failed (its error was handled by the transaction body)');
  }
}

/**
 * Runs `fn` in one transaction on `client`, which the caller keeps. `onRollbackFailure` hears
 * of a rollback that failed after an error (the caller should then discard the connection).
 * `onBegun` is given what `begin` answered (an array of results when it holds several
 * statements: a caller may read something in the same round trip as its BEGIN). `begin` may also
 * be a transaction already begun on `client` (`{ begun }`, what its BEGIN answered): it is not
 * sent, and `fn`'s outcome ends that transaction as it would one begun here. `atCommit.read` (one
 * statement) is sent with the COMMIT, before it in the same simple query, and `atCommit.onRead`
 * given its result: what only the transaction itself can still answer (its own `SET LOCAL`
 * settings, which the COMMIT ends) is read without a round trip of its own. In a transaction a
 * statement of which had failed, that statement fails (25P02) and the COMMIT is not run: thrown as
 * {@link RolledBackAtCommitError}, after the rollback, as the COMMIT's ROLLBACK answer would be.
 */
export async function inClientTransaction<T>(
  client: Pick<pg.ClientBase, 'query'>,
  begin: string | { readonly begun: unknown },
  fn: () => Promise<T | RollbackWith<NoInfer<T>>>,
  onRollbackFailure?: (error: Error) => void,
  onBegun?: (answer: unknown) => void,
  atCommit?: { readonly read: string; readonly onRead: (answer: pg.QueryResult) => void },
): Promise<T> {
  let abortedAtCommit = false;
  try {
    const begun: unknown = typeof begin === 'string' ? await client.query(begin) : begin.begun;
    onBegun?.(begun);
    const result = await fn();
    if (result instanceof RollbackWith) {
      await client.query('rollback');
      return result.value;
    }
    // A transaction in which a statement failed (the body handled its error, a cancellation at
    // the request's deadline, say) is aborted: PostgreSQL answers its COMMIT with ROLLBACK, not
    // an error, and nothing was committed.
    let committed: { command?: unknown } | undefined;
    if (atCommit === undefined) committed = await client.query('commit');
    else {
      let answer: unknown;
      try {
        answer = await client.query(`${atCommit.read}; commit`);
      } catch (error) {
        abortedAtCommit = (error as { code?: unknown } | null)?.code === '25P02';
        throw error;
      }
      const results = Array.isArray(answer) ? (answer as pg.QueryResult[]) : [];
      committed = results.at(-1);
      const read = results.at(-2);
      if (read !== undefined) atCommit.onRead(read);
    }
    if (committed?.command === 'ROLLBACK') throw new RolledBackAtCommitError();
    return result;
  } catch (err) {
    await client.query('rollback').catch((rollbackError: unknown) => {
      onRollbackFailure?.(rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError)));
    });
    if (abortedAtCommit) throw new RolledBackAtCommitError();
    throw err;
  }
}

/** Runs `fn` in one transaction on a client checked out of `pool` for it. */
export async function inTransaction<T>(pool: Pick<pg.Pool, 'connect'>, begin: string, fn: (client: pg.PoolClient) => Promise<T | RollbackWith<NoInfer<T>>>): Promise<T> {
  const client = await pool.connect();
  const ignore = (): void => undefined;
  client.on('error', ignore);
  let broken: Error | undefined;
  try {
    return await inClientTransaction(client, begin, () => fn(client), (rollbackError) => {
      broken = rollbackError;
    });
  } finally {
    client.off('error', ignore);
    client.release(broken);
  }
}
