/**
 * One transaction on a pooled client, the one way the adapters open one: `begin` (or a
 * stricter form such as `begin isolation level repeatable read`), `fn`, then commit; when `fn`
 * or the commit throws, a rollback, and the original error rethrown (a failed rollback must not
 * hide what caused it). The client always goes back to the pool, and is discarded instead of
 * reused when the rollback failed too: then its connection is dead or stuck mid-transaction.
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

export async function inTransaction<T>(pool: Pick<pg.Pool, 'connect'>, begin: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  const ignore = (): void => undefined;
  client.on('error', ignore);
  let broken: Error | undefined;
  try {
    await client.query(begin);
    const result = await fn(client);
    await client.query('commit');
    return result;
  } catch (err) {
    await client.query('rollback').catch((rollbackError: unknown) => {
      broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
    });
    throw err;
  } finally {
    client.off('error', ignore);
    client.release(broken);
  }
}
