/**
 * Bounded work on one pooled connection: connecting and every query inside `fn` share one
 * deadline. `fn` runs in a transaction whose `statement_timeout` (SET LOCAL: it ends with the
 * transaction, sets no session state and so pins no RDS Proxy connection beyond it) is the time
 * left, so the server itself cancels a statement still running at the deadline instead of
 * working on for a caller that gave up, and whose `idle_in_transaction_session_timeout` is the
 * time left and {@link DEADLINE_GRACE_MS}, so the server ends a transaction whose client is gone
 * without a word. When the deadline passes on the client (a node that
 * does not answer at all), the connection is destroyed (never returned to the pool), so a hung
 * node costs one timeout and leaves no stuck connection behind.
 *
 * @example
 * ```ts
 * const rows = await withNodeDeadline(pool, 2000, 'shard_001/replica-1', async (c) => (await c.query('select 1')).rows);
 * ```
 */
import net from 'node:net';
import type pg from 'pg';
import { dropConnection } from './listening-client.js';

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
      const left = serverTimeoutMs(timeoutMs - (Date.now() - started));
      // idle_in_transaction_session_timeout: a transaction whose path goes silent (a black hole:
      // its commit and close never arrive) would otherwise stay open on the server until TCP
      // notices, hours, with its locks and, once it has written (a probe's heartbeat), its xid:
      // every move's drain waits for that, and vacuum's horizon with it.
      // READ COMMITTED whatever the login's or the database's default_transaction_isolation (an
      // RDS parameter group shared by a primary and its replicas, an ALTER ROLE ... SET): the
      // callers reason so (an owner change's fence reads, in a statement of its own, a fence
      // committed while its own waited), and a hot standby refuses every SERIALIZABLE
      // transaction ("cannot use serializable mode in a hot standby"): begun with that default,
      // the replica lag probe failed at every poll and the replica served no read
      // (replica-lag-isolation.test.ts; issue #15). No caller needs one snapshot for several
      // statements here: each was written for PostgreSQL's default, READ COMMITTED.
      await c.query(`begin isolation level read committed; set local statement_timeout = ${left}; set local idle_in_transaction_session_timeout = ${serverTimeoutMs(left + DEADLINE_GRACE_MS)}`);
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

/**
 * How long past a request's deadline the client waits before it gives the connection up: a slow
 * statement is cancelled at the deadline (by the server's own `statement_timeout`, set to the
 * time left, or by a cancel request, see {@link holdToDeadline}) and answers within this, leaving
 * the connection reusable. A server that has not answered by then is silent (a frozen host, a
 * black-holed path, a failed-over instance's old address): its connection is dropped.
 */
export const DEADLINE_GRACE_MS = 250;

/**
 * How often past the deadline the cancel request is sent again while the request still holds its
 * connection (see {@link holdToDeadline}): one that found the session between two statements was
 * ignored.
 */
export const CANCEL_REPEAT_MS = 50;

/**
 * The request's deadline passed: before a connection was lent (`connect`: nothing was sent), with
 * the node silent (`query`: its connection was dropped), or with the node answering: the statement
 * running then was cancelled on the server at the deadline (`cancelled`: by the deadline's own
 * cancel request, or by the `statement_timeout` of the time left; `cause` is pg's 57014, the
 * connection is kept), or while the request waited for another request's query on the node
 * (`waited`: a replica reader's read waiting for the timeline history another read is asking; that
 * query goes on under its own request's deadline, nothing of this request's was cancelled, and the
 * node may be answering well: `ReplicaReader`'s `#history`). A statement another session cancelled
 * is not this error (see {@link ClientDeadline.cancelledByOther}), nor one the session's own
 * `statement_timeout` or `lock_timeout` ended before the deadline ({@link SessionTimeoutError}).
 */
export class DeadlinePassedError extends Error {
  override readonly name = 'DeadlinePassedError';
  constructor(
    readonly nodeId: string,
    readonly phase: 'connect' | 'query' | 'cancelled' | 'waited',
    options?: { cause?: unknown },
  ) {
    super(
      phase === 'connect'
        ? `${nodeId}: no connection before the request's deadline`
        : phase === 'query'
          ? `${nodeId}: no answer by the request's deadline; the connection was dropped`
          : phase === 'cancelled'
            ? `${nodeId}: the statement running at the request's deadline was cancelled on the server (57014); the connection was kept`
            : `${nodeId}: the request's deadline passed while it waited for another request's query on the node (its timeline history), which was left running under that request's own deadline; nothing of this request's was cancelled`,
      options,
    );
  }
}

/**
 * The session's own timeouts a request can meet before its deadline: `statement_timeout` (57014,
 * "canceling statement due to statement timeout"), `lock_timeout` (55P03, "canceling statement
 * due to lock timeout") and `idle_in_transaction_session_timeout` (25P03, a FATAL: the server ends
 * the transaction and closes the connection), each set by a role's or database's default or by the
 * request's own code.
 */
export type SessionTimeoutSetting = 'statement_timeout' | 'lock_timeout' | 'idle_in_transaction_session_timeout';

/** SQLSTATE idle_in_transaction_session_timeout: the server ended a transaction idle past that setting, and closed its connection. */
export const IDLE_IN_TRANSACTION_TIMEOUT = '25P03';

/**
 * The FATAL 25P03 (`idle_in_transaction_session_timeout`) among `errors`, if one is: the error a
 * statement failed with (the FATAL reached it on its way), or the one the client emitted as
 * 'error' (it arrived while the client sent nothing; the next statement then fails with pg's "Client
 * has encountered a connection error and is not queryable", naming nothing). Told by its code, in
 * any `lc_messages` language: only that timeout raises it.
 */
export function idleTimeoutOf(...errors: readonly unknown[]): Error | undefined {
  return errors.find((e): e is Error => e instanceof Error && (e as { code?: unknown }).code === IDLE_IN_TRANSACTION_TIMEOUT);
}

/**
 * A statement was ended on the server by one of the session's own timeouts (`setting`:
 * `statement_timeout`, or `lock_timeout` for a lock wait), shorter than what was left of the
 * request's deadline: one the request did not set (a role's or database's default, `ALTER ROLE ...
 * SET statement_timeout`, `ALTER DATABASE ... SET lock_timeout`, the server's configuration or
 * parameter group), in force where the request runs a statement outside a transaction of its own
 * (`ReplicaReader.query`), or kept by a transaction held to a deadline, which bounds it by the time
 * left but never lengthens it ({@link timeoutsAtMostSql}); or one the caller's code set in the
 * transaction (`SET LOCAL statement_timeout`, `SET LOCAL lock_timeout` in a write's body). Not the
 * request's deadline: nothing the caller asked for ended, an operator's (or the code's) setting
 * did, and the statement would end so again on a retry while that setting stands. Told by pg's
 * words ({@link sessionTimeoutOf}), which are English only where the server's `lc_messages` is: in
 * another language such an error is left as pg raised it (a 57014 cannot then be told from another
 * session's cancel request on a path that sets no `statement_timeout` of its own). `cause` is pg's
 * error; nothing was written, and the connection was kept. (One class for both settings, named in
 * `setting` and in the message: the two are told, and answered, alike.) Also the session's own
 * `idle_in_transaction_session_timeout` (`setting`), which a transaction held to a deadline keeps
 * where shorter than the deadline's own (`deadlineSettingsSql`, write-transaction.ts): it ends the
 * whole transaction, not a statement, and the server closes the connection (FATAL 25P03), which
 * is discarded, not kept; told by its code alone ({@link idleTimeoutOf}).
 */
export class SessionTimeoutError extends Error {
  override readonly name = 'SessionTimeoutError';
  constructor(
    readonly nodeId: string,
    readonly setting: SessionTimeoutSetting,
    cause: unknown,
  ) {
    super(
      setting === 'idle_in_transaction_session_timeout'
        ? `${nodeId}: the transaction sat idle (the client's own work between two of its statements) longer than the session's own idle_in_transaction_session_timeout allows (the setting of the login's role or database, or one set by the request's own code; see pg_settings' source for idle_in_transaction_session_timeout on that node), before the request's deadline: not the deadline's doing. The server ended the transaction (nothing of it was committed) and closed the connection (FATAL 25P03), which was discarded. Raise that setting (ALTER ROLE ... SET idle_in_transaction_session_timeout) or do less between the transaction's statements`
        : setting === 'statement_timeout'
          ? `${nodeId}: the statement was cancelled by the session's own statement_timeout (the setting of the login's role or database, or one set by the request's own code; see pg_settings' source for statement_timeout on that node), before the request's deadline: not the deadline's doing. Raise that statement_timeout (ALTER ROLE ... SET statement_timeout) or make the statement faster`
          : `${nodeId}: the statement waited for a lock longer than the session's own lock_timeout allows (the setting of the login's role or database, or one set by the request's own code; see pg_settings' source for lock_timeout on that node), before the request's deadline: not the deadline's doing. Raise that lock_timeout (ALTER ROLE ... SET lock_timeout) or find what holds the lock so long (pg_locks, pg_stat_activity)`,
      { cause },
    );
  }
}

/**
 * How long before the deadline a session timeout must arrive to be told the session's own
 * ({@link ClientDeadline.sessionTimeout}): the deadline's own `statement_timeout` and
 * `lock_timeout` of the time left are whole ms rounded up from `Date.now()`, whole ms too, so they
 * can fire up to about 2 ms off the guard's (monotonic) deadline; one so near it is the
 * deadline's, as it was always told. (Neither fires earlier: each counts from the start of its
 * statement, or of its lock wait, all after the transaction's BEGIN.)
 */
const OWN_TIMEOUT_SLACK_MS = 5;

/** SQLSTATE lock_not_available: a lock wait past `lock_timeout`, or a lock NOWAIT would not wait for. */
const LOCK_NOT_AVAILABLE = '55P03';

/**
 * Which of the session's own timeouts ended the statement `error` failed (see
 * {@link SessionTimeoutError}), if one did: a 57014 or a 55P03 in pg's English words for a
 * statement timeout, or a lock timeout (a 55P03 of NOWAIT, "could not obtain lock", is none). The
 * caller asks only once it knows the deadline neither sent a cancel request for it nor had passed
 * when it arrived ({@link ClientDeadline.sessionTimeout}): the `statement_timeout` and
 * `lock_timeout` of the time left, set with the request's transaction, fire at the deadline, in
 * the same words.
 */
export function sessionTimeoutOf(error: unknown): SessionTimeoutSetting | undefined {
  if (!(error instanceof Error)) return undefined;
  if (queryCanceled(error) && error.message.includes('statement timeout')) return 'statement_timeout';
  if ((error as { code?: unknown }).code === LOCK_NOT_AVAILABLE && error.message.includes('lock timeout')) return 'lock_timeout';
  return undefined;
}

/**
 * SQL setting the transaction's `settings` (SET LOCAL's scope: `set_config(..., true)`) to `ms`,
 * each unless the session's own is shorter and not 0 (a role's or database's default, `ALTER ROLE
 * ... SET statement_timeout`, the control login's 10 s of catalog migration 005): the request's
 * time left bounds each statement (each lock wait) on the server too, never beyond the bound the
 * operator gave the login. One statement, no round trip of its own (it goes in the BEGIN's simple
 * query); it answers one row, each setting's value as set. `ms` whole, as {@link serverTimeoutMs}
 * gives it; `msOf` another such bound for a setting of its own (`idle_in_transaction_session_timeout`:
 * the time left and the client's grace).
 */
export function timeoutsAtMostSql(settings: readonly SessionTimeoutSetting[], ms: number, msOf: Readonly<Partial<Record<SessionTimeoutSetting, number>>> = {}): string {
  const chosen = settings.map((s) => {
    const at = msOf[s] ?? ms;
    return `set_config('${s}', (case when s.${s} > 0 and s.${s} < ${at} then s.${s} else ${at} end)::bigint::text, true) as ${s}`;
  });
  const own = settings.map((s) => `extract(epoch from current_setting('${s}')::interval) * 1000 as ${s}`);
  return `select ${chosen.join(', ')} from (select ${own.join(', ')}) s`;
}

/**
 * Who cancelled a statement {@link cancelledByOtherSession} told another session's, in words for an
 * error's message: "another session's request" where pg's English words say so ("due to user
 * request"); otherwise (a server whose `lc_messages` is another language) that, or the session's
 * own `statement_timeout`, which a transaction held to a deadline keeps where shorter than the
 * time left (a role's default, `timeoutsAtMostSql`; or the request's own code's SET LOCAL): before
 * the deadline, with no cancel request of the deadline's sent, the two are told apart by the words
 * alone. Either way the statement was cancelled before the deadline, not by it.
 */
export function otherCancelWords(error: unknown): string {
  return error instanceof Error && error.message.includes('user request')
    ? "another session's request"
    : "another session's request, or by the session's own statement_timeout, shorter than the deadline (the server's words, not in English, do not tell which)";
}

/**
 * The longest deadline held: Node's timers wait at most 2^31 - 1 ms (about 24.8 days), and run
 * one asked to wait longer (or NaN) after 1 ms, which would end every request at once.
 */
export const MAX_DEADLINE_MS = 2 ** 31 - 1;

/** INT_MAX: the largest value of PostgreSQL's millisecond timeouts. */
const PG_MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * `ms` as the value of one of PostgreSQL's millisecond timeouts (`statement_timeout`,
 * `lock_timeout`, `idle_in_transaction_session_timeout`): whole ms, at least 1 (0 turns the
 * timeout off), at most INT_MAX, the largest the server takes (a longer one fails the statement
 * setting it: "invalid value for parameter"), which a deadline of up to {@link MAX_DEADLINE_MS}
 * and its {@link DEADLINE_GRACE_MS} would pass.
 */
export function serverTimeoutMs(ms: number): number {
  return Math.min(PG_MAX_TIMEOUT_MS, Math.max(1, Math.ceil(ms)));
}

/** A deadline that is no number of ms a timer can wait (NaN, infinite, over {@link MAX_DEADLINE_MS}): refused, nothing sent. */
export class InvalidDeadlineError extends RangeError {
  override readonly name = 'InvalidDeadlineError';
  constructor(
    readonly option: string,
    readonly value: number,
  ) {
    super(`${option} must be a finite number of ms, at most ${MAX_DEADLINE_MS} (about 24.8 days), not ${value}`);
  }
}

/**
 * Throws {@link InvalidDeadlineError} naming `option` unless `ms` (a deadline in ms from now) is
 * finite and at most {@link MAX_DEADLINE_MS}; undefined (no deadline) passes. Zero or less is a
 * deadline already passed, not an error.
 */
export function checkDeadlineMs(option: string, ms: number | undefined): void {
  if (ms !== undefined && !(Number.isFinite(ms) && ms <= MAX_DEADLINE_MS)) throw new InvalidDeadlineError(option, ms);
}

/**
 * A checkout bounded by an absolute deadline (`Date.now()` ms): the pool's own
 * `connectionTimeoutMillis` may be longer than the time left. A connection that arrives after
 * the caller gave up goes back to the pool (it is new and healthy; a silent server never gets
 * this far), and so does one lent at or past the deadline (the timer and the checkout can settle
 * in the same turn, or the timer fire late on a busy process): nothing is sent on it, and the
 * caller fails {@link DeadlinePassedError} `connect`, its request never begun, rather than start
 * a transaction with no time left (a write that began then could still commit past its deadline).
 */
export async function connectBy(pool: pg.Pool, deadlineAt: number, nodeId: string): Promise<pg.PoolClient> {
  const left = deadlineAt - Date.now();
  checkDeadlineMs('deadlineAt (from now)', left);
  if (left <= 0) throw new DeadlinePassedError(nodeId, 'connect');
  let timedOut = false;
  const connecting = pool.connect();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(new DeadlinePassedError(nodeId, 'connect'));
    }, left);
  });
  connecting.then(
    (client) => {
      if (timedOut) client.release();
    },
    () => undefined,
  );
  let client: pg.PoolClient;
  try {
    client = await Promise.race([connecting, expired]);
  } finally {
    clearTimeout(timer);
  }
  if (Date.now() >= deadlineAt) {
    client.release();
    throw new DeadlinePassedError(nodeId, 'connect');
  }
  return client;
}

/** A checked-out client held to a deadline by {@link holdToDeadline}. */
export interface ClientDeadline {
  /** True once the deadline passed and the connection was dropped. */
  readonly expired: boolean;
  /**
   * True once a cancel request was sent for the deadline: a statement cancelled before then was
   * cancelled by someone else (`pg_cancel_backend`, an operator; see
   * {@link ClientDeadline.cancelledByOther}).
   */
  readonly cancelSent: boolean;
  /**
   * Whether `error` is a statement cancelled by another session's request (`pg_cancel_backend`,
   * an operator), not by the deadline: see {@link cancelledByOtherSession}. Told as of the moment
   * the server's error arrived (recorded then, while the guard is armed; asked after `disarm` too), not
   * of the moment asked: a transaction's rollback makes its round trip first, and the deadline may
   * pass meanwhile. An error the guard saw no arrival of is told as of now.
   */
  cancelledByOther(error: unknown, options?: CancelledByOtherOptions): boolean;
  /**
   * Whether `error` is the statement the deadline ended: a 57014 that is not another session's
   * ({@link ClientDeadline.cancelledByOther}) and arrived once the deadline had sent its cancel
   * request, or at or past the deadline (the `statement_timeout` of the time left fires then, and
   * can beat the request). Told as of its arrival, as `cancelledByOther` is. A 57014 before the
   * deadline with none sent (a session's or role's own `statement_timeout`, shorter) is neither.
   */
  cancelledByDeadline(error: unknown, options?: CancelledByOtherOptions): boolean;
  /**
   * Which of the session's own timeouts ended the statement `error` failed before the deadline, if
   * one did (a role's or database's default, or the caller's own SET LOCAL): `statement_timeout`,
   * a 57014 that is neither another session's ({@link ClientDeadline.cancelledByOther}) nor the
   * deadline's ({@link ClientDeadline.cancelledByDeadline}), or `lock_timeout`, a 55P03; either
   * saying so in pg's English words ({@link sessionTimeoutOf}; in another language it is none),
   * and having arrived more than a few ms before the deadline
   * ({@link ClientDeadline.arrivedBeforeDeadline}). Told as of its arrival, as the others are. See
   * {@link SessionTimeoutError}.
   */
  sessionTimeout(error: unknown, options?: CancelledByOtherOptions): SessionTimeoutSetting | undefined;
  /**
   * Whether the server's `error` arrived more than a few ms before the deadline
   * ({@link OWN_TIMEOUT_SLACK_MS}) with no cancel request of the deadline's sent by then: no
   * timeout the deadline set (the time left) can have raised it. Told as of its arrival (of now,
   * for an error the guard saw no arrival of).
   */
  arrivedBeforeDeadline(error: unknown): boolean;
  /**
   * Stops the timers and the listening to the connection's errors (call before releasing the
   * client, on every path: a guard never disarmed leaves its listener on a pooled connection,
   * which keeps it and its request's closure for as long as the connection lives). Idempotent.
   */
  disarm(): void;
  /**
   * Whether the connection may go back to the pool, the request having ended with `failure`
   * (its error; undefined when it succeeded): not once dropped, nor after a cancel request was
   * sent unless `failure` is a cancelled statement (57014, {@link queryCanceled}) and that one
   * request has been passed on in full (see {@link ClientDeadline.settled}; not one whose
   * connection failed or timed out: the server may yet take it). A cancel request
   * travels on a connection of its own and can reach the server after the statement it was sent
   * for has ended: it would then cancel the statement of the next request lent the connection.
   * Any 57014 will do, not only the one the request caused ("due to user request"): the message
   * is worded in the server's `lc_messages` language, and the same statement's `statement_timeout`
   * (set to the time left: it fires at the deadline too) can win the race. Either way the server
   * has sent the request's signals once it closed the request's connection, and a signal that
   * finds the session with no statement running (its error's recovery, idle) is dropped, so it
   * can reach no statement sent after that.
   */
  reusable(failure?: unknown): boolean;
  /**
   * Resolves once no cancel request is on its way: the server has closed its connection, having
   * passed it on (or it failed, timed out). PostgreSQL passes one request on as two signals (to
   * the backend, then to its process group), and the second can cancel the statement after the
   * one the first cancelled: a connection whose statement a cancel request failed is lent again
   * only after this (see {@link ClientDeadline.reusable}).
   */
  settled(): Promise<void>;
}

/** What {@link ClientDeadline.cancelledByOther} is told of the statement that failed. */
export interface CancelledByOtherOptions {
  /**
   * Whether a `statement_timeout` of the request's own (the time left, set with its transaction:
   * `deadlineSettingsSql`) was in force for the statement. Default true. False on a path that sets
   * none (one statement outside a transaction, `ReplicaReader.query`): the session's own (a role's
   * or database's default, `ALTER ROLE ... SET statement_timeout`) may be shorter than the deadline
   * and fire before it, so a 57014 then is another session's only by its English words. (True
   * leaves one case to the words too: the transaction keeps the session's own where shorter than
   * the time left, and a 57014 that one raised before the deadline, in another language than
   * English, is taken for another session's cancel; the request fails as cancelled before its
   * deadline either way, which is true of both, and its message names both: {@link otherCancelWords}.)
   */
  readonly statementTimeout?: boolean;
}

/** SQLSTATE query_canceled: a statement ended by `statement_timeout` or by a cancel request. */
const QUERY_CANCELED = '57014';

/**
 * Whether `error` is a statement PostgreSQL cancelled (57014): by `statement_timeout` or by a
 * cancel request (the deadline's or another session's), which only its message tells apart, in
 * the server's `lc_messages` language.
 */
export function queryCanceled(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === QUERY_CANCELED;
}

/**
 * Whether `error`, caught at `now` on a connection held to `deadlineAt` (ms on one clock: `Date.now()`
 * by default; {@link holdToDeadline}'s guard asks on the monotonic clock, `performance.now()`, which
 * a step of the wall clock does not move) whose
 * deadline had sent no cancel request by then (`cancelSent`), is a statement cancelled by another
 * session's request (`pg_cancel_backend`, an operator), not by the deadline. Told by the
 * deadline's own record, not by the message's words, which are in the server's `lc_messages`
 * language ("storniere Anfrage wegen Benutzeraufforderung" in German): 57014 caught before the
 * deadline with none sent. No `statement_timeout` of the time left the request's transaction set
 * can have fired by then: it is set when the transaction began (`deadlineSettingsSql`) and counts
 * from each statement's own start. English words refine it where they can: "due to statement
 * timeout" is a timeout (a session's or role's own, shorter than the deadline: on a path that sets
 * none, or kept by the transaction where shorter than the time left), and "due to user request" is another session's past the deadline too, when the deadline
 * sent none (a write's commit was on its way, the transaction had failed); in another language a
 * statement cancelled then counts as the deadline's (nothing was committed either way).
 */
export function cancelledByOtherSession(error: unknown, deadlineAt: number, cancelSent: boolean, now: number = Date.now(), options: CancelledByOtherOptions = {}): boolean {
  if (cancelSent || !queryCanceled(error)) return false;
  const message = error instanceof Error ? error.message : '';
  if (message.includes('statement timeout')) return false;
  // With no statement_timeout of the request's own, the session's may have fired before the
  // deadline: only the words tell (in another language, not another session's: the 57014 as is).
  if (options.statementTimeout === false) return message.includes('user request');
  return now < deadlineAt || message.includes('user request');
}

export interface HoldToDeadlineOptions {
  /**
   * Whether the statement running at the deadline may be cancelled (asked then). Default: always.
   * A write answers false once its commit is on its way: a cancelled commit may still have
   * committed, and the caller must not be told otherwise.
   */
  readonly mayCancel?: () => boolean;
  /** How long past the deadline a silent connection is dropped. Default {@link DEADLINE_GRACE_MS}. */
  readonly graceMs?: number;
}

/**
 * Holds `client`, checked out for one request, to the request's deadline on the client side.
 * `statement_timeout` counts from each statement's own start, so a statement begun shortly
 * before the deadline would outrun it: at the deadline the server is asked to cancel the
 * statement running then ({@link cancelStatement}; it fails with 57014 and the connection stays
 * usable), and asked again every {@link CANCEL_REPEAT_MS} while the connection is held (a cancel
 * that finds the session between two statements is ignored by the server), but not while the
 * session's transaction has failed (the rollback of the statement cancelled then is running).
 * A connection still checked out {@link DEADLINE_GRACE_MS} after the deadline belongs to a server that answered neither (a frozen host, a black-holed path): it is dropped
 * ({@link dropConnection}), every query pending on it fails at once, and the caller (seeing
 * `expired`) releases it as broken, so the pool discards it instead of lending a connection that
 * will never answer to the next request. A connection a cancel request may still reach is not
 * lent again either (see {@link ClientDeadline.reusable}).
 *
 * @example
 * ```ts
 * const guard = holdToDeadline(client, deadlineAt);
 * let failure: unknown;
 * try { await client.query(sql); } catch (error) { failure = error; throw error; } finally { guard.disarm(); client.release(!guard.reusable(failure) || undefined); }
 * ```
 */
export function holdToDeadline(client: pg.ClientBase, deadlineAt: number, options: HoldToDeadlineOptions = {}): ClientDeadline {
  checkDeadlineMs('deadlineAt (from now)', deadlineAt - Date.now());
  // The deadline on the monotonic clock, as the timers below count it: whether a 57014 came
  // before it is asked on that clock, not the wall clock, which a step (an NTP correction) moves.
  const deadlineAtMonotonic = performance.now() + (deadlineAt - Date.now());
  let expired = false;
  let cancelsSent = 0;
  /** A cancel request on its way (its connection open): the server has not taken it yet. */
  let cancelling = false;
  /** A cancel request whose connection failed or timed out: the server may take it yet, or never. */
  let unanswered = false;
  let onSettled: Array<() => void> = [];
  let canceller: NodeJS.Timeout | undefined;
  /** The statement the last cancel request was sent for (null: none was running). */
  let sentFor: unknown;
  // Each error the server sends, with when it arrived (the monotonic clock) and whether a cancel
  // request of the deadline's had been sent by then: asked by cancelledByOther, which is often
  // asked later (a write's, a read's rollback first makes its round trip), maybe past the deadline.
  const arrivals = new WeakMap<object, { readonly at: number; readonly cancelSent: boolean }>();
  const connection = (client as unknown as { connection?: { on?: unknown; off?: unknown } }).connection;
  const onErrorMessage = (error: unknown): void => {
    if (typeof error === 'object' && error !== null) arrivals.set(error, { at: performance.now(), cancelSent: cancelsSent > 0 });
  };
  // pg's own listener (registered when the client connected) hands the error to its query before
  // this one runs, but the query's caller resumes only on a later microtask: the record is there first.
  const listening = typeof connection?.on === 'function' && typeof connection.off === 'function';
  if (listening) (connection as unknown as NodeJS.EventEmitter).on('errorMessage', onErrorMessage);
  // The server ignores a cancel request that finds the session idle (between two statements of
  // the transaction: the client is busy with one's result, or the next is on its way): the next
  // statement would then run on past the deadline until the connection is dropped, and on the
  // server after that. So the request is repeated while the client still holds the connection,
  // once it runs another statement than the one the last request was sent for (a request that
  // did cancel its statement is not repeated while the client has yet to read the error: on a
  // busy machine that can take longer than the repeat interval, and a second request would cost
  // a healthy connection). Nor is one sent while the session's transaction has failed (the last
  // statement's answer said so: the one cancelled at the deadline, say): the statement running
  // then is its rollback (any other fails at once), which nothing is gained by cancelling, and a
  // request sent for it would cost the healthy connection (see reusable) when the rollback's round
  // trip outlasts the repeat interval (a loaded machine, a slow path).
  const cancel = (): void => {
    canceller = undefined;
    if (expired || options.mayCancel?.() === false) return;
    const running = runningStatement(client);
    // Not again while the last one is on its way (a slow path, a silent server: one socket, not one per repeat).
    if (!cancelling && !inFailedTransaction(client) && (cancelsSent === 0 || (running !== null && running !== sentFor))) {
      cancelsSent += 1;
      sentFor = running;
      cancelling = true;
      cancelStatement(client, (passedOn) => {
        cancelling = false;
        if (!passedOn) unanswered = true;
        const waiting = onSettled;
        onSettled = [];
        for (const resolve of waiting) resolve();
      });
    }
    canceller = setTimeout(cancel, CANCEL_REPEAT_MS);
  };
  canceller = setTimeout(cancel, Math.max(0, deadlineAt - Date.now()));
  // Held to what a timer can wait: past it, Node runs the timer after 1 ms, which would drop the
  // connection of a request whose deadline is within the grace of MAX_DEADLINE_MS at once.
  const dropper = setTimeout(
    () => {
      expired = true;
      dropConnection(client);
    },
    Math.min(MAX_DEADLINE_MS, Math.max(0, deadlineAt + (options.graceMs ?? DEADLINE_GRACE_MS) - Date.now())),
  );
  // As of the error's arrival when it came from the server while held: not after the rollback's
  // round trip (or anything else awaited since), by when the deadline may have passed.
  const arrivalOf = (error: unknown): { readonly at: number; readonly cancelSent: boolean } | undefined => (typeof error === 'object' && error !== null ? arrivals.get(error) : undefined);
  const byOther = (error: unknown, byOtherOptions?: CancelledByOtherOptions): boolean => {
    const arrived = arrivalOf(error);
    return cancelledByOtherSession(error, deadlineAtMonotonic, arrived?.cancelSent ?? cancelsSent > 0, arrived?.at ?? performance.now(), byOtherOptions);
  };
  const byDeadline = (error: unknown, byOtherOptions?: CancelledByOtherOptions): boolean => {
    if (!queryCanceled(error) || byOther(error, byOtherOptions)) return false;
    const arrived = arrivalOf(error);
    return (arrived?.cancelSent ?? cancelsSent > 0) || (arrived?.at ?? performance.now()) >= deadlineAtMonotonic;
  };
  // Not within OWN_TIMEOUT_SLACK_MS of the deadline: the statement_timeout and lock_timeout of the
  // time left (written in whole ms, rounded up, from the wall clock, which this guard's monotonic
  // deadline was derived from at another instant) fire at the deadline, give or take a millisecond
  // of those roundings, and are the deadline's; left to the callers' rule for them.
  const beforeDeadline = (error: unknown): boolean => {
    const arrived = arrivalOf(error);
    return !(arrived?.cancelSent ?? cancelsSent > 0) && (arrived?.at ?? performance.now()) < deadlineAtMonotonic - OWN_TIMEOUT_SLACK_MS;
  };
  return {
    get expired() {
      return expired;
    },
    get cancelSent() {
      return cancelsSent > 0;
    },
    cancelledByOther: byOther,
    cancelledByDeadline: byDeadline,
    sessionTimeout(error, byOtherOptions) {
      const setting = sessionTimeoutOf(error);
      return setting !== undefined && !byOther(error, byOtherOptions) && !byDeadline(error, byOtherOptions) && beforeDeadline(error) ? setting : undefined;
    },
    arrivedBeforeDeadline: beforeDeadline,
    disarm() {
      clearTimeout(canceller);
      canceller = undefined;
      clearTimeout(dropper);
      if (listening) (connection as unknown as NodeJS.EventEmitter).off('errorMessage', onErrorMessage);
    },
    reusable(failure) {
      // After two cancel requests, one that failed the statement leaves the other on its way;
      // one still on its way may yet signal the backend again.
      return !expired && (cancelsSent === 0 || (cancelsSent === 1 && !cancelling && !unanswered && queryCanceled(failure)));
    },
    settled() {
      return cancelling ? new Promise<void>((resolve) => onSettled.push(resolve)) : Promise.resolve();
    },
  };
}

/**
 * Whether the session's transaction has failed, as the server's last ReadyForQuery said ('E'):
 * until a rollback ends it, every statement but that fails at once (25P02), so none can run past
 * a deadline.
 */
function inFailedTransaction(client: pg.ClientBase): boolean {
  const status = (client as unknown as { getTransactionStatus?: () => unknown }).getTransactionStatus?.();
  return status === 'E';
}

/** The statement `client` is running (pg's own record of it), or null between statements. */
function runningStatement(client: pg.ClientBase): unknown {
  return (client as unknown as { _activeQuery?: unknown })._activeQuery ?? null;
}

/**
 * Asks the server to cancel the statement `client` is running (a protocol CancelRequest on a
 * connection of its own, as `pg_cancel_backend` would): `statement_timeout` bounds each statement
 * from its own start, so a statement begun shortly before a request's deadline would run past
 * it. Cancelled, it fails with 57014 and the connection stays usable. Fire and forget: a server
 * that is silent never gets it ({@link holdToDeadline} drops the connection then). A cancel that
 * arrives while the session is idle is ignored by the server. `onClosed` hears when the request's
 * connection is closed: `passedOn` true when the server closed it (it has passed the request on),
 * false when it failed or timed out, or nothing was sent (no key to send).
 */
export function cancelStatement(client: pg.ClientBase, onClosed?: (passedOn: boolean) => void): void {
  const c = client as unknown as { processID?: unknown; secretKey?: unknown; host?: unknown; port?: unknown };
  const { processID, secretKey, host, port } = c;
  if (typeof processID !== 'number' || typeof secretKey !== 'number' || typeof port !== 'number') {
    onClosed?.(false);
    return;
  }
  const socket = typeof host === 'string' && host.startsWith('/') ? net.connect(`${host}/.s.PGSQL.${port}`) : net.connect(port, typeof host === 'string' ? host : 'localhost');
  socket.on('error', () => undefined);
  // The server closes the connection once it has passed the request on (or it timed out, failed).
  // The server answers a cancel request with nothing but its close: read on, to hear it ('end').
  let passedOn = false;
  socket.once('end', () => {
    passedOn = true;
  });
  socket.resume();
  if (onClosed) socket.once('close', () => onClosed(passedOn));
  socket.setTimeout(DEADLINE_GRACE_MS * 4, () => socket.destroy());
  socket.on('connect', () => {
    const request = Buffer.alloc(16);
    request.writeInt32BE(16, 0);
    request.writeInt32BE(80877102, 4);
    request.writeInt32BE(processID, 8);
    request.writeInt32BE(secretKey, 12);
    socket.end(request);
  });
}

/**
 * How long the backend of a connection given up by {@link abandonConnection} has to end after its
 * statement was cancelled before it is terminated.
 */
export const ABANDONED_BACKEND_GRACE_MS = 1000;

/** Abandonments under way in this process (see {@link settleAbandonments}). */
const abandoning = new Set<Promise<void>>();

/**
 * Resolves once every abandonment begun in this process ({@link abandonConnection}, most of them
 * fire-and-forget from a timer) has ended, or `withinMs` later, whichever comes first; answers how
 * many were still under way then. A Lambda handler awaits this before it returns: the sandbox is
 * frozen once the handler has answered, and an abandonment frozen before its cancel request or its
 * terminate went out would leave the given-up backend holding its locks, its transaction and a
 * connection slot until the next invocation thawed it, if one ever comes.
 *
 * @example
 * ```ts
 * try { return await run(); } finally { await settleAbandonments(ABANDONMENTS_SETTLE_MS); }
 * ```
 */
export async function settleAbandonments(withinMs: number): Promise<number> {
  checkDeadlineMs('withinMs', withinMs);
  let timer: NodeJS.Timeout | undefined;
  let late = false;
  const bound = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      late = true;
      resolve();
    }, Math.max(0, withinMs));
  });
  try {
    // One begun while the others were awaited (a timer that fired meanwhile) is awaited too.
    while (abandoning.size > 0 && !late) await Promise.race([Promise.all([...abandoning]), bound]);
  } finally {
    clearTimeout(timer);
  }
  return abandoning.size;
}

/**
 * The longest {@link abandonConnection} takes with its default grace: the cancel request's own
 * bound, the grace, the other connection's checkout and its terminate (a grace each); what a
 * handler gives {@link settleAbandonments}.
 */
export const ABANDONMENTS_SETTLE_MS = DEADLINE_GRACE_MS * 4 + ABANDONED_BACKEND_GRACE_MS * 3;

/**
 * Gives up `client`, checked out of `pool` at `checkedOutAt` (`performance.now()` ms: a monotonic
 * clock, so that a step of the wall clock, an NTP correction, neither skips the terminate below nor
 * lets it reach a younger backend) and held past its bound, on both sides. Closing the socket ({@link dropConnection}) ends the client's wait at once,
 * but not the backend's work: PostgreSQL notices a closed socket only when it next reads from or
 * writes to it, and a backend waiting on a lock, or scanning, does neither, so it would go on
 * holding its locks, its transaction and a connection slot until whatever it waits for ends
 * (another session's transaction: for ever, for all the server knows). So its statement is
 * cancelled too ({@link cancelStatement}: the protocol's CancelRequest, with the connection's
 * secret key, so it cannot reach another session), after which the backend finds its client gone
 * and exits; one still there `graceMs` later (a statement that does not heed a cancel) is
 * terminated from another connection of `pool`: only the same backend (its pid, of the login it was
 * opened with, which after a rotation of the secret is not that of the pool's new connections,
 * started before the checkout: not a later session that was given the pid again), within a bound
 * of its own (a server that stopped answering gets neither request, and the attempt ends).
 *
 * Resolves once done; never rejects (the caller has already failed the work it gave up). Callers
 * that do not await it are awaited by {@link settleAbandonments}.
 *
 * @example
 * ```ts
 * setTimeout(() => void abandonConnection(pool, client, checkedOutAt, 'shard_a/primary'), boundMs);
 * ```
 */
export function abandonConnection(pool: pg.Pool, client: pg.ClientBase, checkedOutAt: number, nodeId: string, graceMs: number = ABANDONED_BACKEND_GRACE_MS): Promise<void> {
  const done = abandon(pool, client, checkedOutAt, nodeId, graceMs).catch(() => undefined);
  abandoning.add(done);
  void done.then(() => abandoning.delete(done));
  return done;
}

async function abandon(pool: pg.Pool, client: pg.ClientBase, checkedOutAt: number, nodeId: string, graceMs: number): Promise<void> {
  const { processID: pid, user: login } = client as unknown as { processID?: unknown; user?: unknown };
  // Awaited (the server closes the request's connection once it has passed it on, or its own
  // bound ends it): a sandbox frozen before it went out would leave the statement running.
  const cancelled = new Promise<void>((resolve) => cancelStatement(client, () => resolve()));
  dropConnection(client);
  await cancelled;
  if (typeof pid !== 'number' || typeof login !== 'string') return;
  await new Promise((resolve) => setTimeout(resolve, graceMs));
  let other: pg.PoolClient;
  try {
    other = await connectBy(pool, Date.now() + graceMs, nodeId);
  } catch {
    return;
  }
  const bound = setTimeout(() => dropConnection(other), graceMs);
  let broken: Error | undefined;
  try {
    // Elapsed on the client, by its monotonic clock, compared on the server's clock: no clock of
    // two hosts is compared, and no step of the wall clock counts. The login is the given-up
    // connection's own, not this one's: after a rotation of the secret (alternating users) the
    // pool opens its new connections as the other user.
    // With a timeout (PostgreSQL 14+, the oldest the stacks deploy): the call returns once the
    // backend has exited, or after the timeout with a warning, so that the abandonment, and the
    // handler that awaits it before its sandbox freezes, ends with the backend gone, not only
    // signalled (at load 15 a backend signalled was still listed when the moves handler returned:
    // moves-abandon-cancels-query.test.ts). Within the bound below, which ends this connection.
    await other.query(
      `select pg_terminate_backend(a.pid, $4::bigint) from pg_stat_activity a
        where a.pid = $1 and a.usename = $3 and a.backend_start < clock_timestamp() - $2::double precision * interval '1 millisecond'`,
      [pid, performance.now() - checkedOutAt, login, Math.max(1, Math.floor(graceMs * 0.8))],
    );
  } catch (error) {
    broken = error instanceof Error ? error : new Error(String(error));
  } finally {
    clearTimeout(bound);
    other.release(broken);
  }
}
