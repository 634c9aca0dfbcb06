/**
 * The run's one catalog connection, handed out one holder at a time. A move run has a single
 * catalog connection (a Lambda's pool holds one), shared by the port's statements, its copy lanes
 * and the lease renewal. A pg client must never be handed a query while it is busy: pg 8 queues
 * it with a deprecation warning (pg 9 refuses), and a query queued while the port is inside a
 * transaction runs inside that transaction (a lease renewal there would be rolled back with it,
 * or commit half of the port's work early). So every use goes through {@link MoverCatalog}:
 * {@link MoverCatalog.transaction} holds the client from `begin` to `commit`/`rollback`, and a
 * statement outside one waits its turn, at a statement boundary outside every transaction.
 *
 * Statements issued by a holder's own body (the body of a transaction, say) run on the client
 * directly: the holder is known through the async context of its body (AsyncLocalStorage), so
 * code called from inside a transaction needs no separate handle.
 *
 * @example
 * ```ts
 * const catalog = new MoverCatalog(await pool.connect());
 * await catalog.transaction('begin', async (client) => {
 *   await catalog.query('select 1');            // inside: runs in the transaction
 *   await directory.entry(key, client);         // code that takes a client gets the held one
 * });
 * await catalog.query(RENEW, [id, epoch, ttl]); // outside: waits for the transaction to end
 * ```
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type pg from 'pg';
import { dropConnection } from './listening-client.js';
import { inClientTransaction, type RollbackWith } from './transaction.js';

export class MoverCatalog {
  /** Settles when the current holder (and every one queued before the next caller) is done. */
  private tail: Promise<void> = Promise.resolve();
  /** Set in the async context of the current holder's body. */
  private readonly holding = new AsyncLocalStorage<MoverCatalog>();
  /** See {@link boundBy}. */
  private bound: (() => number | undefined) | undefined;
  /**
   * Set once a holder outlived its bound and the connection was closed, or a transaction's
   * rollback failed (the session left in it): it must not go back to its pool.
   */
  dropped = false;
  /** Why a transaction's rollback failed, once one did: every later holder is refused with it. */
  private rollbackFailure: Error | undefined;

  /**
   * `idleInTransactionMs`: the server ends a transaction of the run left idle longer than this
   * (`SET LOCAL idle_in_transaction_session_timeout`: nothing outlives the transaction, nothing
   * is pinned). A connection that went silent mid-transaction (a black-holed path: the server
   * sees no reset) would otherwise keep the job row locked for as long as the server keeps the
   * session, and no other run could claim the job. Give the lease's TTL: the renewal waits for
   * the transaction, so a transaction idle that long has lost its lease anyway.
   */
  constructor(
    readonly client: pg.ClientBase,
    private readonly options: { readonly idleInTransactionMs?: number } = {},
  ) {}

  /** Whether the caller runs inside a holder's body (then it already has the client). */
  private held(): boolean {
    return this.holding.getStore() === this;
  }

  /**
   * Runs `fn` with the client to itself: after every holder queued before, and with nobody else
   * given the client until it settles. Called from inside a holder's body, it runs at once.
   */
  use<T>(fn: (client: pg.ClientBase) => Promise<T>): Promise<T> {
    if (this.held()) return fn(this.client);
    const boundMs = this.bound?.();
    // A session left in its failed transaction answers every later statement with 25P02 ("current
    // transaction is aborted"), which names neither the rollback that failed nor the error before
    // it: where that answer became the run's error (a rollback or reload after a cancellation or an
    // owner conflict), the run said nothing of why. Refused here, naming the cause.
    // A session a later rollback ended (the fence's paths roll back once their cancel request has
    // settled, inside their holder) is idle again, and goes on.
    const run = this.tail.then(() => {
      const failure = this.rollbackFailure;
      if (failure !== undefined && (this.client as { getTransactionStatus?: () => unknown }).getTransactionStatus?.() === 'I') this.rollbackFailure = undefined;
      else if (failure !== undefined) {
        throw new Error(`the move run's catalog connection is unusable: the rollback of one of its transactions failed (${failure.message}), leaving the session in that transaction; the connection is closed at the end of the run, and the job resumes at its next run`, { cause: failure });
      }
      return this.holding.run(this, () => fn(this.client));
    });
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    if (boundMs === undefined) return run;
    // Counted from the call, the wait for the holders before it included: one of them stuck on a
    // silent connection is as much a hang as this one.
    const timer = setTimeout(
      () => {
        this.dropped = true;
        dropConnection(this.client);
      },
      Math.max(0, boundMs),
    );
    return run.finally(() => clearTimeout(timer));
  }

  /**
   * Bounds every holder from now on: `ms()`, read when a holder asks for the client, is how long it
   * may take, its wait in the queue included (undefined: no bound). A holder still unsettled then
   * has the connection closed under it, which fails it and every holder after it ({@link dropped}).
   * The server's own timeouts end a slow statement only while it can answer: a connection that
   * went silent (a black-holed path, a failed-over catalog's old address) would hold its holder
   * until the client's `query_timeout` (12 s in the Lambda pools, none by default), and the move
   * would hold its write fence that long (see `PgMovePort`).
   */
  boundBy(ms: () => number | undefined): void {
    this.bound = ms;
  }

  /** One statement, in its turn (see {@link use}). */
  query<R extends pg.QueryResultRow>(text: string, values?: readonly unknown[]): Promise<pg.QueryResult<R>> {
    return this.use((client) => client.query<R>(text, values === undefined ? undefined : [...values]));
  }

  /** One transaction holding the client from its `begin` to its end (see `transaction.ts`). */
  transaction<T>(begin: string, fn: (client: pg.ClientBase) => Promise<T | RollbackWith<NoInfer<T>>>): Promise<T> {
    // A rollback that failed (a cancel request's second signal, sent by the fence budget on this
    // client, can cancel the ROLLBACK itself) leaves the session in its failed transaction: every
    // later statement of the run fails on it (25P02), and it must not go back to its pool.
    return this.use((client) =>
      inClientTransaction(
        client,
        withIdleBound(begin, this.options.idleInTransactionMs),
        () => fn(client),
        (rollbackError) => {
          this.dropped = true;
          this.rollbackFailure ??= rollbackError;
        },
      ),
    );
  }
}

/**
 * `begin` (a statement that opens a transaction, without parameters) followed by a bound on how
 * long the transaction may sit idle on the server; `begin` as it is without a bound.
 */
export function withIdleBound(begin: string, idleMs: number | undefined): string {
  if (idleMs === undefined) return begin;
  return `${begin}; set local idle_in_transaction_session_timeout = ${Math.max(1, Math.ceil(idleMs))}`;
}
