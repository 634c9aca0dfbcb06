/**
 * The client class every pool of this project is built with (`new pg.Pool({ Client:
 * ListeningClient })`). node-postgres emits `error` on a client whose connection ends (a
 * restart, a failover, `pg_terminate_backend`), and an `error` event with no listener ends the
 * process. A pool listens on its idle clients only: a checked-out client's death, or one in the
 * race where the connection ends before `pool.connect()` resolves, took down a whole API or worker
 * process with every request in it (found by restarting shards under writers). The event needs no
 * action: the failed query already carries the error to its caller, and the pool drops a client
 * that is no longer queryable when it is released. Code that must know (transaction.ts marks the
 * client broken) adds its own listener beside this one.
 */
import pg from 'pg';

export class ListeningClient extends pg.Client {
  constructor(config?: string | pg.ClientConfig) {
    super(config);
    this.on('error', () => undefined);
    // A statement that outlived the client's `query_timeout` (the pools of the Lambda functions
    // set one) was sent and never answered: the server is silent. node-postgres fails it but
    // keeps it as the connection's active statement, so every later statement on this
    // connection queues behind it and fails by its own timeout, and the pool, which cannot tell,
    // lends it again. Closed, the connection is discarded when it is released.
    const query = this.query.bind(this) as (...args: unknown[]) => unknown;
    const onTimeout = (error: unknown): void => {
      if (error instanceof Error && error.message === QUERY_READ_TIMEOUT) dropConnection(this);
    };
    (this as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]): unknown => {
      const last = args.length - 1;
      const callback = args[last];
      if (typeof callback === 'function') {
        args[last] = (error: unknown, ...rest: unknown[]): unknown => {
          onTimeout(error);
          return (callback as (...a: unknown[]) => unknown)(error, ...rest);
        };
      }
      const result = query(...args);
      // Registered before the caller's own handlers: the connection is closed before it can be released.
      if (result instanceof Promise) result.then(undefined, onTimeout);
      return result;
    };
  }
}

/** node-postgres's message for a statement past the client's `query_timeout`. */
const QUERY_READ_TIMEOUT = 'Query read timeout';

/**
 * Closes a client's socket at once. For a connection that will never answer again, or whose
 * protocol state is lost (a COPY abandoned part-way): its pending and later queries fail now
 * instead of waiting for ever, the pool discards it on release, and the server rolls back its
 * transaction. node-postgres has no public call for this; `client.end()` waits for the server.
 */
export function dropConnection(client: pg.ClientBase): void {
  const c = client as unknown as { _queryable?: boolean; connection?: { stream?: { destroy(): void } } };
  // At once, not when the socket's close event comes round: a client released before then (the
  // caller's error path runs first) would go back to its pool as idle and be lent to the next
  // statement, which fails ("Connection terminated unexpectedly"); in a Lambda's pool of one, the
  // handler's next statement, its lease release included. A client not queryable is discarded on
  // release, and refuses a later statement at once.
  c._queryable = false;
  c.connection?.stream?.destroy();
}
