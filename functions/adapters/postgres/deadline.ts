/**
 * Bounded work on one pooled connection: connecting and every query inside `fn` share one
 * deadline. `fn` runs in a transaction whose `statement_timeout` (SET LOCAL: it ends with the
 * transaction, sets no session state and so pins no RDS Proxy connection beyond it) is the time
 * left, so the server itself cancels a statement still running at the deadline instead of
 * working on for a caller that gave up. When the deadline passes on the client (a node that
 * does not answer at all), the connection is destroyed (never returned to the pool), so a hung
 * node costs one timeout and leaves no stuck connection behind.
 *
 * @example
 * ```ts
 * const rows = await withNodeDeadline(pool, 2000, 'shard_001/replica-1', async (c) => (await c.query('select 1')).rows);
 * ```
 */
import type pg from 'pg';

/** The node did not answer within its deadline. */
export class NodeTimeoutError extends Error {
  override readonly name = 'NodeTimeoutError';
  readonly nodeId: string;
  readonly timeoutMs: number;
  constructor(nodeId: string, timeoutMs: number) {
    super(`${nodeId}: no answer within ${timeoutMs} ms (timeout)`);
    this.nodeId = nodeId;
    this.timeoutMs = timeoutMs;
  }
}

export async function withNodeDeadline<T>(pool: pg.Pool, timeoutMs: number, nodeId: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  let expired = false;
  let client: pg.PoolClient | undefined;
  let released = false;
  const release = (error?: Error): void => {
    if (!client || released) return;
    released = true;
    client.release(error);
  };
  const started = Date.now();
  const work = (async () => {
    const c = await pool.connect();
    client = c;
    if (expired) {
      release(new NodeTimeoutError(nodeId, timeoutMs));
      throw new NodeTimeoutError(nodeId, timeoutMs);
    }
    try {
      const left = Math.max(1, Math.ceil(timeoutMs - (Date.now() - started)));
      await c.query(`begin; set local statement_timeout = ${left}`);
      const result = await fn(c);
      await c.query('commit');
      release();
      return result;
    } catch (error) {
      release(error instanceof Error ? error : new Error(String(error)));
      throw error;
    }
  })();
  // The loser of the race below must not become an unhandled rejection.
  work.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      expired = true;
      release(new NodeTimeoutError(nodeId, timeoutMs));
      reject(new NodeTimeoutError(nodeId, timeoutMs));
    }, timeoutMs);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
