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
  }
}

/**
 * Closes a client's socket at once. For a connection that will never answer again, or whose
 * protocol state is lost (a COPY abandoned part-way): its pending and later queries fail now
 * instead of waiting for ever, the pool discards it on release, and the server rolls back its
 * transaction. node-postgres has no public call for this; `client.end()` waits for the server.
 */
export function dropConnection(client: pg.ClientBase): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}
