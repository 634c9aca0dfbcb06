/**
 * The move job runner: moves one hash slot, or one directory key, from one shard to another
 * while the application keeps reading and writing, and loses nothing.
 *
 * The protocol (which step runs in which state, the named transitions, the crash points, what
 * happens when the fence cannot be taken in time) is `core/sharding/move-machine.ts`; the SQL of
 * each step is {@link PgMovePort}. This class plans jobs, refuses the ones that cannot work
 * (unknown or same shard, a slot already moving, a unit the configured strategy does not route
 * by), and runs them one connection per database at a time: one catalog connection carries
 * every catalog query of the run, so a Lambda whose pool holds one connection can run a move.
 *
 * Who runs a job is a lease on its row (sharding migration 006), not a session lock: a run claims
 * the job by compare-and-set (no holder, or the holder's lease expired by the database clock),
 * which gives it the next lease epoch; it renews the lease every third of `leaseTtlMs` (on the
 * run's catalog connection, in its turn between transactions: {@link MoverCatalog}), and every
 * write it makes to the job row requires that epoch and its holder (unique per claim). A mover
 * killed outright lets its claim lapse after at most `leaseTtlMs`; the next run claims the job and
 * resumes it, and the old mover, were it only stalled, finds its epoch gone at its next write and
 * stops ({@link MoveLeaseLostError}). The shards enforce the same epoch (shard migration 010): a
 * run claims the job's permit on both shards before its first step, and every write it makes
 * there holds that permit, so a stalled run is refused by the shards too, even between a check of
 * its lease and its write. An epoch is not unique once a catalog failover has lost a claim (it
 * committed on the old primary only: the next claim on the new one hands out the same epoch,
 * while the run that had it may still be alive), hence the holder in every catalog check; and a
 * shard gives a permit only to an epoch higher than the last that claimed it (shard migration
 * 020), so of two runs of one epoch only the first to claim writes there, and the job's next run,
 * one epoch higher, takes it over from both.
 * Nothing is held on a connection between statements, so no RDS Proxy connection is pinned.
 *
 * @example
 * ```ts
 * const mover = new Mover({ catalog, shards: new Map([['shard_001', p1], ['shard_002', p2]]), slotMaps, directory });
 * const job = await mover.plan({ kind: 'slot', slot: 1234, to: 'shard_002', createdBy: 'ops@example.com' });
 * const done = await mover.run(job.id);           // or, after a crash: await mover.resumeAll();
 * console.log(done.state, done.rowsCopied, done.fenceMs);
 * ```
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { z } from 'zod';
import type { SlotMap } from '../../core/sharding/slot-map.js';
import type { DirectoryEntry } from './directory-store.js';
import { SLOT_COUNT } from '../../core/sharding/hash.js';
import { canonicalKey, keySlot, uuidForm } from '../../core/sharding/keys.js';
import { driveMove, moveUnitFor, type MoveCrashPoint, type MoveRouting, type MoveUnitVerdict } from '../../core/sharding/move-machine.js';
import { canCancel, DEFAULT_MAX_UNIT_ROWS, isTerminal, TERMINAL_STATES } from '../../core/sharding/move-plan.js';
import { cancelStatement, connectBy, DeadlinePassedError, holdToDeadline, NodeTimeoutError, queryCanceled, SessionTimeoutError, sessionTimeoutOf, serverTimeoutMs, timeoutsAtMostSql, withNodeDeadline, type SessionTimeoutSetting } from './deadline.js';
import { ownersOfSlotsSince } from './fence-review.js';
import {
  MoveBusyError,
  MoveConflictError,
  MoveError,
  CATALOG_LOGIN_REFUSED_WHY,
  CATALOG_ROTATION_HOW_TO_TELL,
  catalogLoginRefused,
  MovePlanCatalogRefused,
  MovePlanOutOfTime,
  MovePlanShardLoginRefused,
  MovePlanOutcomeUnknown,
  MovePlanShardUnanswered,
  MoveNotCancellableError,
  MoveRequestError,
  moveRequestSchema,
  toJob,
  type JobRow,
  type MoveJob,
  type MoveRequest,
} from './move-jobs.js';
import { MoverCatalog } from './mover-catalog.js';
import { heldOnTarget, keyRowsUnderOtherSlots, LOCK_SLOT_MAPS_FOR_HASH_ROUTE, ownerRead, PgMovePort, sourceDisowns, type DisowningRow, targetFenceRow, targetHoldsCopy, targetRouteRefusal, targetRouteStops, type MoverDirectory, type MoverSlotMaps } from './move-port.js';
import { isNodeFailure } from './replica-reader.js';
import { CredentialsReadError } from './secret-pool.js';
import { failureKind, LOCK_NOT_AVAILABLE, retryingSerializationFailures, SERIALIZATION_FAILURE } from './sqlstate.js';
import { inTransaction } from './transaction.js';
import { describeRows, directoryKeysBySlot, keyRowsOn, lockSlotsForPins, SLOT_PIN_LOCK_WAIT_MS, slotLockRefused, slotsRowsOn } from './unit-rows.js';

/** SQLSTATE query_canceled (57014): a statement ended by the server's statement_timeout. */
const QUERY_CANCELED = '57014';

export * from './move-jobs.js';
export type { MoverDirectory, MoverSlotMaps } from './move-port.js';

/** Points at which {@link MoverOptions.hook} is called (see `MOVE_CRASH_POINTS`). */
export type MoveHookPoint = MoveCrashPoint;

export interface MoverOptions {
  /** The catalog database (holds `catalog.move_jobs`). One connection is enough. */
  readonly catalog: pg.Pool;
  /** Primary pool of every shard, by shard id. One connection each is enough. */
  readonly shards: ReadonlyMap<string, pg.Pool>;
  readonly slotMaps: MoverSlotMaps;
  readonly directory: MoverDirectory;
  /** How the configured strategy routes; moves of a unit it does not route by are refused. Default: hash with directory overrides. */
  readonly routing?: MoveRouting;
  /** Rows per catch-up pass and per delete batch. Default 5000. */
  readonly batchRows?: number;
  /** Rows per copy page: one COPY, one transaction on each side, one saved position. Default 20 000. */
  readonly copyBatchRows?: number;
  /**
   * Id ranges of a table copied at once, each its own source and target connection. Default 1.
   * On one 2-core machine holding source, target, mover and writers, a second lane wins a larger
   * share of the cores from 8 busy writers (13 of 18 interleaved moves faster, median 64.4k
   * against 57.1k rows/s) and loses without them (53-61k against 60-67k rows/s, and two parallel
   * sources 56-70k against 76-88k): see {@link PgMovePort.copy}. More lanes are for a source and
   * target with cores to spare (separate RDS instances), where this machine cannot measure them.
   */
  readonly copyLanes?: number;
  /** Catching up ends when a pass applies fewer changes than this (what is left is applied while fenced). Default 50. */
  readonly catchUpThreshold?: number;
  /**
   * How long writes to the unit may be held by the cutover, from the start of the fence's lock
   * wait (its `lock_timeout`) through the final catch-up and the verification to the flip. Past
   * it the fence is released and the cutover retried. Default 2000 ms.
   */
  readonly fenceBudgetMs?: number;
  /**
   * How long past the fence budget a shard or catalog statement of the fenced part may stay
   * unanswered before its connection is given up, and how long giving the fence up may take.
   * Default move-port.ts's `FENCED_STATEMENT_SLACK_MS`, 5000 ms; at least 500. Tests of a silent server
   * shorten it rather than wait out the production bound.
   */
  readonly fenceSlackMs?: number;
  /** The clock the fence budget is measured on, in ms; `performance.now` by default (tests move it). */
  readonly clock?: () => number;
  /** The wall clock a run's `until` is read on, epoch ms; `Date.now` by default (tests move it). */
  readonly wallClock?: () => number;
  /** Fence attempts per run before the job is left for the next run. Default 3. */
  readonly fenceAttempts?: number;
  /** Pause between fence attempts. Default 1000 ms. */
  readonly fenceRetryPauseMs?: number;
  /** How long to wait for writers older than the change capture. Default 30 000 ms. */
  readonly drainTimeoutMs?: number;
  /**
   * The most rows, in any one table, of a unit one move takes; larger units are refused when
   * planned. The comparison before the fence holds a hash of every row of both sides in the
   * mover's memory (measured: +363 MiB peak RSS for 2 million rows), and one table's hashes of one
   * side arrive as one string, which V8 caps at 536,870,888 characters (10.3 million rows).
   * Default {@link DEFAULT_MAX_UNIT_ROWS}, with the moves function's 2,048 MB.
   */
  readonly maxUnitRows?: number;
  /**
   * Time between the flip and deleting the source rows. Readers that go through
   * `withShardRead` (or follow the spec's read contract) check the unit's fence in their read's
   * snapshot and never need it, so it defaults to 0; it is there for readers that do not.
   */
  readonly readerGraceMs?: number;
  /**
   * How long a run keeps one shard connection checked out outside the fence (a statement, a copy
   * page, a catch-up pass, the permit claim, the comparison before the fence; a new connection's
   * start-up too) before it closes it. The server answers for none of them when it has stopped
   * answering (a frozen host, a black-holed path: no reset), and a run with no `abandonAt` (local
   * mode's background mover) would wait for ever, its lease renewed; closed, the step
   * fails and the job stays resumable, and its statement is cancelled on the server (its backend
   * terminated if that does not end it: `abandonConnection`, deadline.ts), so that it does not go
   * on holding locks and the job's permit. With `abandonAt`, the earlier of the two bounds applies.
   * Default {@link DEFAULT_SHARD_WAIT_MS}; at least 1000.
   */
  readonly shardWaitMs?: number;
  /** Name recorded as the publisher of the new map. Default `mover`. */
  readonly actor?: string;
  /**
   * How long a run's claim on a job lasts without renewal (renewed every third of it while the
   * run is alive): how long a job waits after its mover died before another run may resume it.
   * Default 30 000 ms.
   */
  readonly leaseTtlMs?: number;
  /** Recorded as the lease holder, with a random suffix per claim. Default `mover pid <pid>`. */
  readonly holder?: string;
  /** Called at each crash point; tests use it to kill the process at a chosen step. */
  readonly hook?: (point: MoveHookPoint, job: MoveJob) => Promise<void> | void;
  /**
   * Called (and awaited) at each point of {@link Mover.plan} named by {@link MovePlanHookPoint}
   * (nothing else is awaited in between); tests use it to change the catalog under the plan at a
   * chosen step (stop it, refuse its login, make it silent). Before, the tests told the plan's own
   * checkout from its checks' by the names of the calling methods on the stack, which a refactor
   * or a bundler's minification of those names silently broke (h156).
   */
  readonly planHook?: (point: MovePlanHookPoint) => Promise<void> | void;
}

/**
 * Where {@link MoverOptions.planHook} is called: `before-record-checkout`, once the plan's checks
 * have passed, right before the plan checks out the catalog connection of the job's transaction
 * (the one checkout of a plan that is not a read of its checks: each of those checks out a
 * connection of its own, {@link boundedPool}).
 */
export type MovePlanHookPoint = 'before-record-checkout';

// `$3::double precision`: an exact match for pg_catalog's `*` (see lease-store.ts's ACQUIRE).
const CLAIM = `
  update catalog.move_jobs set lease_holder = $2, lease_epoch = lease_epoch + 1, lease_expires_at = clock_timestamp() + $3::double precision * interval '1 millisecond'
   where id = $1 and (lease_expires_at is null or lease_expires_at <= clock_timestamp())
  returning *`;
// Renewed and released by epoch and holder: the holder is unique per claim, the epoch is not once
// a catalog failover has lost a claim (see PgMovePortOptions.leaseHolder).
const RENEW = `update catalog.move_jobs set lease_expires_at = clock_timestamp() + $3::double precision * interval '1 millisecond' where id = $1 and lease_epoch = $2 and lease_holder = $4`;
const RELEASE = 'update catalog.move_jobs set lease_holder = null, lease_expires_at = null where id = $1 and lease_epoch = $2 and lease_holder = $3';
/** SQLSTATE deadlock_detected: PostgreSQL ended the wait to break a deadlock. */
const DEADLOCK_DETECTED = '40P01';

const DEFAULT_ROUTING: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' };
/**
 * How long a plan's insert of its job waits for a row another transaction inserted and has not
 * committed (its `lock_timeout`; the plan's other waits set their own): the unfinished move of
 * the same slot (the one-unfinished-move-per-slot index), or the row of
 * catalog.move_job_shards of a shard no job named before, which the first plan naming it holds to
 * its commit (sharding migration 025). A healthy holder keeps it for its own bounded waits, the
 * slot's pin lock and the slot maps' SHARE lock ({@link PLAN_LOCK_WAITS_MS} for both together) and
 * a few reads; a holder whose connection was lost mid-transaction (a black-holed path, a proxy that
 * stops forwarding without closing: its server hears nothing) keeps it until its server ends the
 * session, which nothing bounded before {@link PLAN_IDLE_MS}, and the insert waited with it for
 * ever where the login set no statement_timeout (the control login's 10 s, catalog migration
 * 005, cancelled it with a bare "statement timeout"). Below that 10 s so that the refusal is this
 * one and names the row; above one of the holder's own waits.
 */
const PLAN_RECORD_WAIT_MS = 8_000;
/**
 * How long a plan's lock waits after its insert, the slot's pin lock and the SHARE lock of
 * catalog.slot_maps, may take together: the pin lock's wait is {@link SLOT_PIN_LOCK_WAIT_MS}, as
 * every pin's, and the maps' gets what is left of this. Each waited {@link SLOT_PIN_LOCK_WAIT_MS}
 * before, and a healthy plan that waited out most of both held its job's rows (a new shard's of
 * catalog.move_job_shards among them) about 10 s, past {@link PLAN_RECORD_WAIT_MS}: a second plan
 * naming that shard was refused ("another plan naming ... held its row") while the first went on
 * to record its job (h132, moves-plan-lost-holder.test.ts). Now the job's rows are held at most
 * this and the plan's few reads, well within the second plan's wait.
 */
const PLAN_LOCK_WAITS_MS = SLOT_PIN_LOCK_WAIT_MS;
/**
 * How long the plan's transaction may sit idle on the server (`SET LOCAL
 * idle_in_transaction_session_timeout`): between its statements the plan runs only its own code,
 * so a transaction idle this long has lost its client (a black-holed connection), and its server
 * ends it, taking back the job row and the shard rows it held (moves-plan-lost-holder.test.ts).
 * Longer than {@link PLAN_RECORD_WAIT_MS}: a plan that waits behind a lost one is refused, naming
 * the row, rather than left to outwait it.
 */
const PLAN_IDLE_MS = 15_000;
/**
 * How long after the request's deadline (`until`) {@link Mover.plan} cancels the statement of its
 * job's transaction still running: as long as {@link boundedPool} lets a read of its checks run
 * past it ({@link REFUSAL_READ_CUT_GRACE_MS}), well within the answer margin before API Gateway's
 * 504 (API_ANSWER_MARGIN_MS). Later than `until` so that a lock wait bounded by the time left (its
 * lock_timeout ends at `until`) is refused naming the lock's holder, not cancelled unnamed.
 */
const PLAN_CANCEL_SLACK_MS = 100;

/** How long a refused cancel waits for the target's fence row, which only chooses its words (see {@link Mover.requestCancel}). */
const TARGET_ROW_READ_MS = 2000;

/** The catalog's state {@link Mover.refusals} reads once for every request it checks. */
interface CatalogRead {
  readonly map: SlotMap;
  /**
   * The directory's keys of the slot requests' slots, by slot (DirectoryStore.keysInSlot's, for
   * all of them in one statement): not the whole directory, which the check read once a round
   * before, 1,000 keys a page (directory-slot.test.ts, "the rebalance check's refusals ...").
   */
  readonly keysBySlot: ReadonlyMap<number, readonly string[]>;
  /** The directory entries of the directory requests' keys (canonical), those pinned. */
  readonly entries: ReadonlyMap<string, DirectoryEntry>;
  /**
   * Every owner each slot had since the first map (catalog.slot_owner_history, what
   * checkFormerOwnersHoldNoSlotRows reads), keyed `${slot}:0` as ownersOfSlotsSince answers, read
   * once for every slot request checked, with the map.
   */
  readonly owners?: ReadonlyMap<string, string[]>;
}

/**
 * How many requests' reads of the shards {@link Mover.refusals} makes at a time (each a few
 * indexed reads of its source and target): within a Lambda's small pools, and the shards'
 * connections the rebalance check shares with the traffic.
 */
const REFUSAL_CHECKS_AT_ONCE = 4;

/**
 * Why {@link Mover.refusals} found a request's move refused: the plan's own message and the status
 * POST /shards/moves answers it with; or `failed`, what its checks threw that is not a refusal (a
 * shard or the catalog not answering), the move neither refused nor passed.
 */
export type MoveRefusal =
  | { readonly status: 400 | 409 | 422; readonly reason: string }
  | {
      readonly failed: unknown;
      readonly notStarted?: true;
      /**
       * The shard that did not answer, where the checks knew which (one asked beside the move's
       * source and target: {@link MovePlanShardUnanswered}), and why it was asked, in a few words:
       * for the rebalance check's `unresolved` line, which named no shard before (h132).
       */
      readonly unanswered?: { readonly shard: string; readonly asked: string };
    };

/**
 * How long after {@link Mover.refusals}' `until` a read of its checks still running is cut: later
 * than the checks' own verdict (their time-out, named by the caller's budget), so that the verdict
 * is that one and not the driver's "Query read timeout".
 */
const REFUSAL_READ_CUT_GRACE_MS = 100;


/**
 * `pool` as {@link Mover.refusals}' checks read it: each query is sent on a connection of its own
 * taken from `pool` with a client-side `query_timeout` of the time left until `until` (and a little
 * more, {@link REFUSAL_READ_CUT_GRACE_MS}); one not running by then is not sent (a
 * {@link NodeTimeoutError} of `budgetMs`). A query cut so fails, and its connection is ended, not
 * returned to the pool (pg-pool's release with an error), so the pool can open another at once.
 * Before, a late read was only dropped (its result unread): it kept its connection for as long as
 * it waited (the shards' pools set no query timeout; the catalog's statement_timeout is 10 s), and
 * a Lambda's catalog pool has one (handlers/shared/db.ts): the next check's census and any move
 * planned meanwhile waited for it and failed ("timeout exceeded when trying to connect";
 * rebalance-refused-moves.test.ts, "leaves no connection held by a read its time ran out on").
 * The statement is cancelled on the server too (deadline.ts {@link cancelStatement}, sent and not waited for): a backend waiting on a
 * lock does not notice its connection ended. A connection lost while lent is listened for, as
 * pg-pool's own query does (its 'error' event unheard ended the process).
 * Everything but `query` is the pool's own.
 */
function boundedPool(pool: pg.Pool, until: number, budgetMs: number): pg.Pool {
  const query = async (text: string | pg.QueryConfig, values?: unknown[]): Promise<pg.QueryResult> => {
    // Not sent, the deadline already passed: nothing asked of the node.
    if (until - Date.now() <= 0) throw new NodeTimeoutError("the move plan's checks", budgetMs);
    // The checkout bounded by `until` too (deadline.ts connectBy), not only by the pool's
    // connectionTimeoutMillis (2 s for the shards' pools, 3 s for a Lambda's): a node that accepts
    // TCP and never answers the startup (a silent node: a frozen host, a black-holed path) kept a
    // request with 1 s left up to 1 s past its deadline, answered with the pool's "timeout
    // exceeded when trying to connect" (h141, moves-plan-deadline-gaps.test.ts). A connection that
    // arrives after the deadline goes back to the pool (connectBy), and a silent node's connect is
    // ended by the pool at its own timeout: none is left held (a Lambda's pools have one).
    let client: pg.PoolClient;
    try {
      client = await connectBy(pool, until, "the move plan's checks");
    } catch (err) {
      // The node asked and silent until the deadline: a NodeTimeoutError as a read cut is (its
      // cause the DeadlinePassedError, which tells shardBoundedPool the node was asked).
      if (err instanceof DeadlinePassedError) throw Object.assign(new NodeTimeoutError("the move plan's checks", budgetMs), { cause: err });
      throw err;
    }
    const left = until - Date.now();
    if (left <= 0) {
      client.release();
      throw new NodeTimeoutError("the move plan's checks", budgetMs);
    }
    const config: pg.QueryConfig = typeof text === 'string' ? { text } : { ...text };
    let failed: Error | undefined;
    // As pg-pool's own query, which listens while it lends the client: pg-pool takes its idle
    // listener off a client it lends, and a connection lost under the read (no server's FATAL
    // first: a failover, a proxy or NAT dropping it) makes the client emit 'error'. Unheard, that
    // was an uncaught exception, the process ended (a Lambda's API, local mode; h127,
    // rebalance-refused-moves.test.ts, "answers where the connection of a read of the move plan's
    // checks is lost while the read runs"). The read itself fails with the same error.
    const onError = (err: Error): void => {
      failed ??= err;
    };
    client.on('error', onError);
    try {
      return await client.query({ ...config, ...(values === undefined ? {} : { values }), query_timeout: left + REFUSAL_READ_CUT_GRACE_MS } as pg.QueryConfig);
    } catch (err) {
      failed ??= err instanceof Error ? err : new Error(String(err));
      // The read cut by its query_timeout: its statement is cancelled on the server too (a backend
      // waiting on a lock does not read its socket, and waited for as long as the lock was held, one
      // more backend each check: h127, "leaves no statement of a read its time ran out on waiting").
      if (err instanceof Error && err.message === 'Query read timeout') cancelStatement(client);
      throw err;
    } finally {
      // As pg-pool's own query: a failed query's connection is ended (it may still be running one).
      client.release(failed);
      client.off('error', onError);
    }
  };
  return new Proxy(pool, {
    get(target, prop) {
      if (prop === 'query') return query;
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/**
 * `pool`, shard `shard`'s, as {@link Mover.plan}'s checks read it within a request
 * ({@link boundedPool}: each read cut at `until`, its statement cancelled on the server), a read
 * cut or not sent for want of time failing with a {@link NodeTimeoutError} naming the shard (its
 * `nodeId`), which the plan answers as the shard not answering (MovePlanShardUnanswered, a 503):
 * boundedPool's own errors name "the move plan's checks" (the rebalance check's words) or are the
 * driver's "Query read timeout", neither naming the shard. A read the shard session's own
 * statement_timeout or lock_timeout ended (the reads set none) fails with a {@link MoveError} naming
 * the shard and the setting, its cause a {@link SessionTimeoutError} (h156). Anything else is
 * thrown as it is. `refused`: "cannot plan the move of slot 5 to shard_b", for the words.
 */
function shardBoundedPool(shard: string, pool: pg.Pool, until: number, budgetMs: number, refused: () => string): pg.Pool {
  return failingInWords(boundedPool(pool, until, budgetMs), (err) => {
    // The reads set no timeout of their own: a 57014 or 55P03 in a timeout's words is the shard
    // login's (an ALTER ROLE ... SET statement_timeout, a parameter group's). Before, it reached the
    // API bare and was answered "the catalog or a shard did not answer (a statement ran past its
    // time limit); try again shortly", naming neither the shard nor the setting, where trying
    // again meets the same setting (h156, moves-plan-refusals-named.test.ts). Named as the
    // catalog's reads name it (catalogBoundedPool), its cause a SessionTimeoutError.
    checksSessionTimeout(err, refused, shard, (setting) => `the shard login's role or database setting, or its parameter group's; pg_settings' source for ${setting} on ${shard} names where it is set`);
    // A login the shard refused (class 28, 3D000), or refused with its secret pool's re-read of the
    // credentials failing (CredentialsReadError): named, the shard and its login, as the catalog's
    // is (catalogRefused). Before, both were thrown bare and answered "an internal error occurred"
    // (h168, moves-plan-catalog-lost.test.ts).
    const login = shardLoginRefused(err, shard, refused(), "a read of the plan's checks");
    if (login !== undefined) throw login;
    // The shard down or unreachable (a closed port: ECONNREFUSED; a connection lost): named too,
    // where the API answered "the catalog or a shard did not answer", naming neither (h137).
    if (!(err instanceof NodeTimeoutError) && !(err instanceof Error && err.message === 'Query read timeout')) throw isNodeFailure(err) ? new ShardNodeFailure(shard, err as Error) : err;
    // Not sent, the deadline passed before it (the checks' catalog reads took the time): the
    // shard was not asked, and "no answer within ..." would blame it (h137).
    // One whose connect was under way at the deadline (boundedPool: connectBy's DeadlinePassedError
    // its cause) did ask the shard, which did not answer: named as a read cut is.
    if (err instanceof NodeTimeoutError && !(err.cause instanceof DeadlinePassedError) && Date.now() >= until) throw new MovePlanOutOfTime(outOfTime(`before its checks read ${shard}`, until), { cause: err });
    throw Object.assign(new NodeTimeoutError(shard, budgetMs), { cause: err });
  });
}

/**
 * `bounded` (a {@link boundedPool}) whose `query` fails with what `fail` throws for each error of
 * a read: the plan's checks' reads of a shard ({@link shardBoundedPool}) and of the catalog
 * ({@link catalogBoundedPool}), each in words naming what did not answer.
 */
function failingInWords(bounded: pg.Pool, fail: (err: unknown) => never): pg.Pool {
  const query = async (text: string | pg.QueryConfig, values?: unknown[]): Promise<pg.QueryResult> => {
    try {
      return await bounded.query(text, values);
    } catch (err) {
      return fail(err);
    }
  };
  return new Proxy(bounded, {
    get(target, prop) {
      if (prop === 'query') return query;
      return Reflect.get(target, prop, target) as unknown;
    },
  });
}

/**
 * Throws, where `err` is a statement the session's own statement_timeout or lock_timeout ended
 * (sessionTimeoutOf: the plan's checks' reads set neither, so it is the login's), a
 * {@link MoveError} naming `nodeId` ('the catalog', a shard) and the setting, `origin` saying where
 * such a setting comes from on it; its cause a {@link SessionTimeoutError}. Anything else returns.
 */
function checksSessionTimeout(err: unknown, refused: () => string, nodeId: string, origin: (setting: SessionTimeoutSetting) => string): void {
  const setting = sessionTimeoutOf(err);
  if (setting === undefined) return;
  const slow = nodeId === 'the catalog' ? 'catalog' : 'shard';
  throw new MoveError(
    `${refused()}: ${nodeId} ${setting === 'statement_timeout' ? "cancelled a read of the plan's checks" : "ended a lock wait of a read of the plan's checks"} by its session's own ${setting} (${origin(setting)}), shorter than what the request had left (its deadline had not passed). A table the read needs held by a lock (a migration's ALTER TABLE, a VACUUM FULL, a LOCK TABLE left open) or a slow ${slow} keeps such a read. Nothing was recorded: plan it again once that has ended, or raise that ${setting} (ALTER ROLE ... SET ${setting})`,
    { cause: new SessionTimeoutError(nodeId, setting, err) },
  );
}

/**
 * A login node `nodeId` ('the catalog', a shard) refused (SQLSTATE class 28, or 3D000: no such
 * database) to a read of {@link Mover.refusals}' checks, the driver's error its cause (its text
 * names the role: it goes to the log, never to an answer). The rebalance check names the node and
 * its login's credentials in the move's `unresolved` line.
 */
export class NodeLoginRefused extends Error {
  override readonly name = 'NodeLoginRefused';
  constructor(
    readonly nodeId: string,
    cause: unknown,
  ) {
    super(`${nodeId} refused the login of a read of the move plan's checks (${failureKind(cause instanceof CredentialsReadError ? cause.refused : cause)})`, { cause });
  }
}

/**
 * The words for a login node `node` refused to `asked` whose secret pool's re-read of the
 * credentials (`whose`: "the catalog login's", "shard_b's login's") failed too: the refusal's kind,
 * the source's failure by its error name only (its text names the secret's ARN, an account: to the
 * log), and whether it passes by itself (throttled, a timeout) or is the deployment's to mend.
 * One wording for the plan's and the rebalance check's answers, the catalog's and a shard's.
 */
export function unreadableCredentialsWords(err: CredentialsReadError, node: string, whose: string, asked: string): string {
  const why = err.transient ? 'a failure of the source that passes by itself (throttled, or no answer in time)' : "the function's role may not read the secret (its IAM policy, the secret's KMS key), or the secret is gone or does not hold a login";
  return `${node} refused the login of ${asked} (${failureKind(err.refused)}), and ${whose} credentials could not be read again from their source (its Secrets Manager secret: ${err.sourceFailure}): ${why}`;
}

/**
 * The words for a login shard `shard` refused to `asked` ("a read of the plan's checks"), `err`
 * the driver's class-28 (or 3D000) error, or a {@link CredentialsReadError} (refused, and the secret
 * pool's re-read of the credentials failed), as the catalog's are worded ({@link catalogRefused}):
 * the failure's kind and the secret source's error name only (the role, the address and the
 * secret's ARN go to the log); undefined for any other failure. `transient`: the source's failure
 * passes by itself (throttled, a timeout: a 503); `unreadable`: the secret could not be read.
 */
export function shardLoginRefusedWords(shard: string, err: unknown, asked: string): { words: string; unreadable: boolean; transient: boolean } | undefined {
  if (err instanceof CredentialsReadError) return { words: unreadableCredentialsWords(err, shard, `${shard}'s login's`, asked), unreadable: true, transient: err.transient };
  if (!catalogLoginRefused(err)) return undefined;
  return {
    words: `${shard} refused the login of ${asked} (${failureKind(err)}): ${shard}'s login's credentials (the configuration's database URL, or the secret the function reads them from) do not match ${shard}'s, or a rotation of that secret under way has not reached every side yet, which ends within minutes`,
    unreadable: false,
    transient: false,
  };
}

/** {@link shardLoginRefusedWords} as {@link Mover.plan}'s answer, `refused` its opening words; undefined for any other failure. */
function shardLoginRefused(err: unknown, shard: string, refused: string, asked: string): MovePlanShardLoginRefused | undefined {
  const named = shardLoginRefusedWords(shard, err, asked);
  if (named === undefined) return undefined;
  const again = named.transient
    ? 'plan it again shortly'
    : named.unreadable
      ? "plan it again once the secret can be read (the function's log names it and the source's error)"
      : `plan it again once the rotation has finished (${CATALOG_ROTATION_HOW_TO_TELL}); otherwise trying again does not help until the credentials match`;
  return new MovePlanShardLoginRefused(`${refused}: ${named.words}. Nothing was recorded: ${again}`, shard, named.transient ? 'unavailable' : 'credentials', { cause: err });
}

/**
 * `bounded` (a {@link boundedPool}, node `nodeId`'s) as {@link Mover.refusals}' checks read it: a
 * read ended by the node session's own statement_timeout or lock_timeout (the reads set none: it is
 * the login's) fails with a {@link SessionTimeoutError} naming the node and the setting, and a login
 * the node refused with a {@link NodeLoginRefused}, as the plan's checks name them
 * ({@link checksSessionTimeout}, {@link catalogRefused}). Before, the first reached the rebalance
 * check's `unresolved` line as "could not be made (a statement ran past its time limit)", naming
 * neither the node nor the setting, where asking again meets the same setting; the second was
 * thrown bare, and the whole check answered "an internal error occurred" (h166,
 * moves-plan-catalog-lost.test.ts). Anything else is thrown as it is (the check judges it).
 */
function refusalReadsInWords(nodeId: string, bounded: pg.Pool): pg.Pool {
  return failingInWords(bounded, (err) => {
    const setting = sessionTimeoutOf(err);
    if (setting !== undefined) throw new SessionTimeoutError(nodeId, setting, err);
    // A login refused whose secret pool's re-read failed too (CredentialsReadError) is the node's
    // login as well: named with the node, not thrown bare and taken for the catalog's (h168).
    if (catalogLoginRefused(err) || err instanceof CredentialsReadError) throw new NodeLoginRefused(nodeId, err);
    throw err;
  });
}

/**
 * The catalog's `pool` as {@link Mover.plan}'s checks read it within a request (the slot map, the
 * directory's keys and entries, the slots' former owners, the owner read again before a refusal,
 * a fence row's job): {@link boundedPool}, as the shards' are ({@link shardBoundedPool}) and as
 * {@link Mover.refusals} reads the catalog. Before, these reads went through the stores' own pool
 * and this mover's, bounded only by the catalog pool's connection timeout (3 s in a Lambda,
 * handlers/shared/db.ts) and by the read's own bounds (the control login's 10 s statement_timeout,
 * catalog migration 005; pg's 12 s query_timeout): a catalog silent from the start of a request
 * with 1 s left (a failover's old address) answered 3.2 s later, and a table of it held ACCESS
 * EXCLUSIVE (a migration's ALTER TABLE) kept the request for as long as the lock was held, both in
 * the API's generic words, "the catalog or a shard did not answer ...; try again shortly" (h150,
 * moves-plan-deadline-review.test.ts). Now a read cut at `until`, or whose connection had not
 * opened by then, fails the plan with {@link MovePlanOutOfTime} naming the catalog (a 503, nothing
 * recorded; the read's statement cancelled on the server, its connection ended: a Lambda's pool of
 * one serves the next request), and one not sent because the deadline had already passed (the
 * shards' reads took the time) says so without blaming the catalog. A read the session's own
 * statement_timeout ended first (a login's shorter setting: the reads here set none of their own)
 * fails with a {@link MoveError} naming that setting, its cause a {@link SessionTimeoutError}
 * (deadline.ts, as the shards' reads and writes name it; the API answers 503 in its words).
 * A refused or lost connection, or a refused login, fails it with a {@link MovePlanCatalogRefused}
 * naming the catalog and the cause ({@link catalogRefused}; h156). Anything else is thrown as it
 * is. `refused`: "cannot plan the move of slot 5 to shard_b", for the words.
 */
function catalogBoundedPool(pool: pg.Pool, until: number, budgetMs: number, refused: () => string): pg.Pool {
  return failingInWords(boundedPool(pool, until, budgetMs), (err) => {
    // The reads set no timeout of their own: a 57014 or 55P03 in a timeout's words is the login's.
    checksSessionTimeout(err, refused, 'the catalog', (setting) => `the catalog login's role or database setting${setting === 'statement_timeout' ? ', 10 s for the control login by catalog migration 005' : ''}; pg_settings' source for ${setting} names where it is set`);
    const cut = err instanceof Error && err.message === 'Query read timeout';
    // Refused (nothing listens, no free connection slot, the login refused) or lost: named, the
    // catalog and the cause, where the API said "the catalog or a shard did not answer (...); try
    // again shortly", or, for a refused login, "an internal error occurred" (h156).
    if (!cut && !(err instanceof NodeTimeoutError)) throw catalogRefused(err, refused(), "a read of the plan's checks") ?? err;
    // Not sent, the deadline already passed (the checks' reads of the shards took the time): the
    // catalog was not asked, and "did not answer" would blame it.
    const connecting = err instanceof NodeTimeoutError && err.cause instanceof DeadlinePassedError;
    if (!cut && !connecting) throw new MovePlanOutOfTime(`${refused()}: ${outOfTime('before its checks read the catalog', until)}`, { cause: err });
    throw new MovePlanOutOfTime(
      `${refused()}: the catalog did not answer a read of the plan's checks by the request's deadline (API Gateway's 29 s or the function's end, less the answer margin; no answer within ${budgetMs} ms, what the request had left for its checks): ${
        connecting
          ? 'no connection to it opened by then: the catalog did not answer (failing over, restarting, or unreachable), or every connection of its pool was in use'
          : "a table it reads held by a lock (a migration's ALTER TABLE, a VACUUM FULL, a LOCK TABLE left open), or a slow or silent catalog, kept the read. The read was cancelled on the catalog"
      }. Nothing was recorded: plan it again once the catalog answers`,
      { cause: err },
    );
  });
}

/**
 * A node failure (sqlstate.ts, isNodeFailure: a refused or lost connection) of a read of shard
 * `nodeId` by {@link Mover.plan}'s checks within a request ({@link shardBoundedPool}), the driver's
 * error its cause: its code and message kept, so that it is judged (isNodeFailure, failureKind) as
 * the driver's error is, and the plan can name the shard.
 */
class ShardNodeFailure extends Error {
  override readonly name = 'ShardNodeFailure';
  readonly code: unknown;
  constructor(
    readonly nodeId: string,
    cause: Error,
  ) {
    super(cause.message, { cause });
    this.code = (cause as { code?: unknown }).code;
  }
}

/**
 * `err`, a failure of a catalog connection {@link Mover.plan} asked for (`asked`: "a read of the
 * plan's checks", "the job's transaction"), as a {@link MovePlanCatalogRefused} naming the catalog
 * and the cause where it is one (a refused or lost connection, no free connection slot, a refused
 * login); undefined for anything else (an error of a statement: the caller's to judge). `refused`:
 * "cannot plan the move of slot 5 to shard_b", for the words.
 */
function catalogRefused(err: unknown, refused: string, asked: string): MovePlanCatalogRefused | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  // The login refused and the secret pool's re-read of its credentials failed (secret-pool.ts
  // CredentialsReadError): the source named, by the failure's name only (its text names the
  // secret's ARN, an account; to the log). A 503 where it passes by itself (throttled, a timeout:
  // trying again shortly helps), else a 500 (the function's role may not read the secret, the
  // secret is gone or not a login: the deployment's to mend). Before, the source's bare error
  // reached the API, "an internal error occurred" (h166, moves-plan-catalog-lost.test.ts).
  if (err instanceof CredentialsReadError) {
    const transient = err.transient;
    return new MovePlanCatalogRefused(
      `${refused}: ${unreadableCredentialsWords(err, 'the catalog', "the catalog login's", asked)}. Nothing was recorded: ${transient ? 'plan it again shortly' : "plan it again once the secret can be read (the function's log names it and the source's error)"}`,
      transient ? 'unavailable' : 'credentials',
      { cause: err },
    );
  }
  // A 500 (the API: a client told to retry a wrong password would retry for nothing), whose words
  // name the one case where waiting mends it, a rotation of the login's secret under way
  // (CATALOG_LOGIN_REFUSED_WHY; h160).
  if (catalogLoginRefused(err)) {
    return new MovePlanCatalogRefused(
      `${refused}: the catalog refused the login of ${asked} (${failureKind(err)}): ${CATALOG_LOGIN_REFUSED_WHY}. Nothing was recorded: plan it again once the rotation has finished (${CATALOG_ROTATION_HOW_TO_TELL}); otherwise trying again does not help until the credentials match`,
      'credentials',
      { cause: err },
    );
  }
  // A serialization failure (40001, a SERIALIZABLE default) is the reads' own retry's
  // (retryingSerializationFailures), not the catalog's refusal.
  if (!isNodeFailure(err) || code === SERIALIZATION_FAILURE) return undefined;
  // What happened, in the words of what the operator looks at: a server refusing (nothing listens
  // at its address: ECONNREFUSED; starting up: 57P03; no free slot: 53300), a connection lost (a
  // reset, pg's "Connection terminated unexpectedly"), or none given in time (pg-pool's own
  // connection timeout, shorter than what the request had left).
  const slots = code === '53300';
  const timedOut = code === undefined && err instanceof Error && /timeout/i.test(err.message);
  const refusedIt = slots || code === '57P03' || (typeof code === 'string' && /^E[A-Z]+$/.test(code) && code !== 'ECONNRESET' && code !== 'EPIPE');
  const what = timedOut ? `gave no connection for ${asked} within its pool's connection timeout` : `${refusedIt ? 'refused' : 'lost'} the connection of ${asked}`;
  const why = slots
    ? 'every connection slot it allows the login (or the server) is taken'
    : timedOut
      ? 'it did not answer (failing over, restarting, or unreachable), or every connection of the pool was in use'
      : 'it is stopped, restarting or failing over, or unreachable from here (its address, a security group)';
  return new MovePlanCatalogRefused(
    `${refused}: the catalog ${what} (${failureKind(err)}): ${why}. Nothing was recorded: plan it again once the catalog answers`,
    'unavailable',
    { cause: err },
  );
}

/** A request {@link Mover.plan}'s checks before recording passed, with what they read. */
interface CheckedRequest {
  readonly req: z.output<typeof moveRequestSchema>;
  readonly unit: Extract<MoveUnitVerdict, { ok: true }>;
  readonly unitId: string;
  readonly slot: number;
  readonly from: string;
  readonly excluded: string[];
  readonly versionBefore: number;
}

/**
 * Whether `err` is an error the server sent (an ErrorResponse: its SQLSTATE and severity), not one
 * of the client or the connection (a dropped or lost connection, pg's `query_timeout`), after which
 * a statement sent may or may not have run.
 */
function fromServer(err: unknown): boolean {
  const e = err as { code?: unknown; severity?: unknown } | null;
  return typeof e === 'object' && e !== null && typeof e.severity === 'string' && typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Runs move jobs. One instance per process; any number of processes may share a catalog (a job
 * is run by one of them at a time, under a lease on its row).
 */
/** The default {@link MoverOptions.maxUnitRows}: within V8's string limit, and the moves function's memory. */
export { DEFAULT_MAX_UNIT_ROWS };

/**
 * The default {@link MoverOptions.shardWaitMs}, 15 minutes: longer than any one step of a unit
 * within {@link DEFAULT_MAX_UNIT_ROWS} holds a connection. The longest, the comparison of the
 * whole unit's row hashes before the fence, is the one that grows with the unit: 2.8 s a side for
 * 303k rows on a loaded 2-core machine, about 93 s a side for 10M if linear and perhaps twice that
 * with the sort spilling; a step that outlasts the bound fails at every run and the move never
 * progresses, so the margin is wide. Still finite: a run on a silent shard gives its job back.
 */
export const DEFAULT_SHARD_WAIT_MS = 900_000;

export class Mover {
  private readonly routing: MoveRouting;

  constructor(private readonly options: MoverOptions) {
    this.routing = options.routing ?? DEFAULT_ROUTING;
  }

  /**
   * Validates a move request and records it as a `planned` job. The source is the unit's current
   * owner. Throws {@link MoveRequestError} for a request that is malformed or cannot be carried
   * out (its `problem` says which) and {@link MoveConflictError} when the slot already has an
   * unfinished move, or when the source's own fence row of the unit says it moved away
   * (`checkSourceOwnsKey`, `checkSourceOwnsSlot`). Nothing is recorded when it throws.
   */
  async plan(request: MoveRequest, options: { readonly until?: number } = {}): Promise<MoveJob> {
    const { until } = options;
    const { req, unit, unitId, slot, from, excluded, versionBefore } = await this.checkedBy(request, until);
    // The job's transaction ends by `until` too (the request's deadline): each of its lock waits is
    // its own bound or what the request has left, the less (h137). Bounded by their own alone (8 s
    // for the insert, 5 s for the pin lock and the maps' SHARE lock together), a request whose
    // checks left it a second waited past API Gateway's 504 for a lock of the catalog (a migration's,
    // a VACUUM's, a plan's) and then recorded its job, answered to no one: the case the deadline on
    // the checks meant to end (moves-plan-shard-locked.test.ts, "... record step would wait ...").
    // None left (the checks' reads took it all: each is cut at `until`, and one not answered by
    // then fails the checks, but a read answered just at it leaves nothing), nothing is begun.
    const leftMs = (): number => (until === undefined ? Infinity : until - Date.now());
    /** `ownMs`, or what the request has left where less (at least 1 ms: 0 is no bound to PostgreSQL); and whether the deadline set it. */
    const bounded = (ownMs: number): { waitMs: number; byDeadline: boolean } => {
      const left = leftMs();
      return left < ownMs ? { waitMs: Math.max(1, Math.floor(left)), byDeadline: true } : { waitMs: ownMs, byDeadline: false };
    };
    if (until !== undefined && leftMs() <= 0) {
      throw new MovePlanOutOfTime(`cannot plan the move of ${req.kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`} from ${from} to ${req.to}: ${outOfTime('once its checks had passed', until)}`);
    }
    // The owner was read before the job is recorded: another move of the slot may have finished
    // in between (the unique index only stops one that is still unfinished). A job recorded from
    // an owner that is no longer the owner could neither run (its fence says moved) nor be
    // cancelled (the catalog names its target), and would block the slot for good. So the owner
    // is read again once the job row is in, in the same transaction: any move of the slot that
    // could still change it now conflicts with this row.
    const what = req.kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`;
    // Taken by the deadline too (deadline.ts connectBy), not only by the catalog pool's connection
    // timeout (3 s in a Lambda): a catalog that accepts TCP and never answers the startup (a
    // failover's old address, a black-holed path) once the checks had read it kept a request with
    // 1 s left until that timeout, 2 s past its deadline, answered "the catalog or a shard did not
    // answer (no answer in time); try again shortly" (h145, moves-plan-deadline-review.test.ts). A
    // connection lent after the deadline goes back to the pool unused (connectBy); the silent
    // connect is ended by the pool at its own timeout.
    await this.options.planHook?.('before-record-checkout');
    // A catalog that refuses the connection (nothing listens, no free connection slot, the login
    // refused) is named, and the cause (catalogRefused), as for the checks' reads (h156).
    const recordRefused = (err: unknown): unknown => catalogRefused(err, `cannot plan the move of ${what} from ${from} to ${req.to}`, "the job's transaction") ?? err;
    let client: pg.PoolClient;
    if (until === undefined) client = await this.options.catalog.connect().catch((err: unknown) => Promise.reject(recordRefused(err)));
    else {
      const connectMs = Math.max(0, Math.round(leftMs()));
      try {
        client = await connectBy(this.options.catalog, until, 'the catalog');
      } catch (err) {
        if (!(err instanceof DeadlinePassedError)) throw recordRefused(err);
        throw new MovePlanOutOfTime(
          `cannot plan the move of ${what} from ${from} to ${req.to}: the catalog gave no connection for the job's transaction by the request's deadline (API Gateway's 29 s or the function's end, less the answer margin; no connection within ${connectMs} ms, what the request had left after its checks): the catalog did not answer (failing over, restarting, or unreachable), or every connection of its pool was in use. Nothing was recorded: plan it again`,
          { cause: err },
        );
      }
    }
    // A connection ended under the transaction (a failover, a proxy, a terminated backend) fails
    // its statement; the client's error event that follows must not crash the process, and the
    // connection must not go back to the pool.
    let broken = false;
    /** The error the connection was lost with (the server's FATAL, a reset), heard between statements. */
    let lostWith: Error | undefined;
    const onError = (err: Error): void => {
      broken = true;
      lostWith ??= err;
    };
    client.on('error', onError);
    // Every statement of the job's transaction ends by `until` too, not only its lock waits: a
    // statement slow for another reason (a catalog under heavy I/O, a slow disk; a trigger that
    // sleeps in the test) ran past the request's deadline and then committed the job, answered to no
    // one (h141, moves-plan-deadline-gaps.test.ts: 202 after 4 s where 1 s was left). The
    // statement running at the deadline is cancelled (deadline.ts holdToDeadline: a cancel request,
    // repeated while the transaction runs on), never the commit once sent (a commit cancelled may
    // still have committed), and none is sent with no time left (below). A little after `until`
    // ({@link PLAN_CANCEL_SLACK_MS}): a lock wait bounded by what the request had left (its
    // lock_timeout, set to end at `until`) is refused naming the lock's holder, as before, rather
    // than cancelled unnamed. The server bounds each statement by the time left too (its
    // statement_timeout, never longer than the login's own), should the client go.
    let committing = false;
    const guard = until === undefined ? undefined : holdToDeadline(client, until + PLAN_CANCEL_SLACK_MS, { mayCancel: () => !committing });
    let failure: unknown;
    let recorded: JobRow;
    try {
      // READ COMMITTED whatever the login's or the database's default: the reads after the slot's
      // lock below must see a pin committed while the plan waited for it (a REPEATABLE READ
      // default read the snapshot of the insert, and the job kept out no key pinned meanwhile:
      // owner-change-pin-lock-order.test.ts).
      // Bounded on the server, in the same round trip: see PLAN_RECORD_WAIT_MS and PLAN_IDLE_MS.
      const recordWait = bounded(PLAN_RECORD_WAIT_MS);
      await client.query(
        `begin isolation level read committed; set local lock_timeout = ${recordWait.waitMs}; set local idle_in_transaction_session_timeout = ${PLAN_IDLE_MS}${until === undefined ? '' : `; ${timeoutsAtMostSql(['statement_timeout'], serverTimeoutMs(leftMs() + PLAN_CANCEL_SLACK_MS))}`}`,
      );
      try {
        const { rows } = await client.query<JobRow>(
          `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, excluded_keys, map_version_before, created_by, reason)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning *`,
          [req.kind, unitId, slot, from, req.to, excluded, versionBefore, req.createdBy, req.reason],
        );
        recorded = rows[0] as JobRow;
      } catch (err) {
        if ((err as { code?: unknown }).code !== LOCK_NOT_AVAILABLE) throw err;
        await client.query('rollback');
        throw new MoveConflictError(`cannot plan the move of ${req.kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`}: ${await this.recordWaitRefused(client, err, slot, from, req.to, recordWait)}`, { cause: err });
      }
      // A slot's owner is read under the SHARE lock a directory move's flip takes (sharding
      // migration 008): a map inserted and not yet committed is waited for and read, and one
      // inserted after it waits for this commit, when the catalog's trigger sees this job and
      // refuses it (CAF08, sharding migration 013: a slot with an unfinished move keeps its owner).
      // Without it a map giving the slot to the target could commit unseen on both sides, and
      // the move's copy then deleted what the target took by it (slot-map-moving-slot.test.ts).
      // The slot's lock before that (a publication by hand takes it before its insert into
      // catalog.slot_maps, which waits for the SHARE lock below: taken after, the two would deadlock),
      // held to the commit (sharding migration 017): a pin of a key of the slot written and not yet
      // committed is waited for, and the directory's re-read below sees it (the plan is refused);
      // one written after waits for this commit and then sees this job (the pin is refused).
      // Before, both committed unseen by each other, and the move copied and deleted the newly
      // pinned key's rows whatever its pin named.
      // The plan's lock waits below share PLAN_LOCK_WAITS_MS, counted from here: the job's rows are in.
      const waitsEnd = Date.now() + PLAN_LOCK_WAITS_MS;
      if (req.kind === 'slot' && unit.excludeDirectoryKeys) {
        const pinWait = bounded(SLOT_PIN_LOCK_WAIT_MS);
        const refusal = await lockSlotsForPins(client, [slot], 'update', pinWait.waitMs, `cannot plan the move of slot ${slot}`);
        if (refusal !== null) {
          await client.query('rollback');
          throw new MoveConflictError(
            `cannot plan the move of slot ${slot}: ${slotLockRefused(refusal, {
              other: `a pin of a key of slot ${slot} (or a slot map published by hand giving it away)`,
              waitMs: pinWait.waitMs,
              rule: "a move may not read its slot's pinned keys while one is being changed",
              nothing: 'recorded',
              again: pinWait.byDeadline ? `plan it again (the wait was what the request had left before its deadline, less than a pin lock's ${SLOT_PIN_LOCK_WAIT_MS} ms)` : 'plan it again',
            })}`,
          );
        }
      }
      if (req.kind === 'slot') await this.lockSlotMapsForPlan(client, slot, bounded(Math.max(1, Math.min(SLOT_PIN_LOCK_WAIT_MS, waitsEnd - Date.now()))));
      const entry = req.kind === 'directory' ? await this.options.directory.entry(unitId, client) : null;
      const owner = entry?.shardId ?? (await this.options.slotMaps.current(client)).assignments[slot];
      if (owner !== from) {
        await client.query('rollback');
        if (owner === req.to) throw new MoveRequestError(`${what} is already on ${req.to} (another move finished while this one was planned)`, 'same-shard');
        throw new MoveConflictError(`${what} moved from ${from} to ${owner ?? 'another shard'} while this move was planned; nothing was recorded: plan it again`);
      }
      // So may the keys the directory places in the slot (a key move of the slot that pinned its
      // key and was then cancelled): a key left out of `excluded` would be copied and deleted from
      // where the directory keeps it. From this row on, no other move of the slot can change them.
      if (req.kind === 'slot' && unit.excludeDirectoryKeys) {
        // The rows of the slot (and those whose slot is not yet filled) through the directory's slot
        // column (sharding migration 031), not the whole directory: read whole here, under the
        // slot's pin lock and the maps' SHARE lock, it held the slot's pins and every map
        // publication off while 1,000,000 keys were read (directory-slot.test.ts, "a slot move's plan ...").
        const now = await this.options.directory.keysInSlot(slot, client);
        if (now.length !== excluded.length || now.some((k) => !excluded.includes(k))) {
          await client.query('rollback');
          throw new MoveConflictError(`the directory's keys in ${what} changed while this move was planned; nothing was recorded: plan it again`);
        }
      }
      // No commit sent with no time left: the job would be recorded after the answer.
      if (until !== undefined && leftMs() <= 0) {
        await client.query('rollback');
        throw new MovePlanOutOfTime(`cannot plan the move of ${what} from ${from} to ${req.to}: ${outOfTime('while it recorded its job', until)}`);
      }
      // Between here and the COMMIT being written to the socket only microtasks run.
      committing = true;
      await client.query('commit');
    } catch (err) {
      failure = err;
      await client.query('rollback').catch(() => undefined);
      if (err instanceof MoveError) throw err;
      // A statement of the transaction cancelled at the request's deadline (the guard's cancel
      // request, or the statement_timeout of the time left) or a connection dropped then (a catalog
      // that answered nothing within the grace), before its commit was sent: nothing was recorded.
      if (guard !== undefined && until !== undefined && !committing && (guard.expired || guard.cancelledByDeadline(err) || (queryCanceled(err) && leftMs() <= 0 && !guard.cancelledByOther(err)))) {
        throw new MovePlanOutOfTime(
          `cannot plan the move of ${req.kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`} from ${from} to ${req.to}: ${outOfTime(`while it recorded its job (the catalog's statement running then was cancelled${guard.expired ? ' and its connection dropped: the catalog did not answer' : ''})`, until)}`,
          { cause: err },
        );
      }
      // The commit was sent and no answer from the server came back (the connection dropped by the
      // deadline's guard, lost, or the client's own query timeout): the catalog may have committed
      // the job, and "could not record" (answered by the API as "the catalog or a shard did not
      // answer ...; try again shortly") was untrue where it had: the job was there, planned, and run
      // by the moves worker (h145, moves-plan-deadline-review.test.ts). An error the server sent
      // (a SQLSTATE) ended the transaction, so nothing was recorded then, as below.
      if (committing && !fromServer(err)) {
        throw new MovePlanOutcomeUnknown(
          `cannot tell whether the move of ${what} from ${from} to ${req.to} was recorded: the catalog did not answer its commit (${guard?.expired ? "no answer by the request's deadline; the connection was dropped" : message(err)}), which had been sent. The job may be recorded, and if so the moves worker runs it: plan the same move again, which answers 409 naming the job (follow it with GET /shards/moves/<id>, or cancel it with DELETE) where it was recorded and is unfinished, 422 (already on ${req.to}) where it has finished, and records it where it was not`,
          { cause: err },
        );
      }
      // The session's own statement_timeout, shorter than what the request had left (the plan's SET
      // LOCAL keeps a login's shorter one: timeoutsAtMostSql), ended a statement first: not
      // the deadline, and the transaction rolled back. Answered "the catalog or a shard did not
      // answer (a statement ran past its time limit); try again shortly", naming neither the
      // catalog nor the setting, where trying again meets the same setting (h150,
      // moves-plan-deadline-review.test.ts). Named as the shards' reads and writes name it
      // (deadline.ts SessionTimeoutError, its cause; the API answers 503 in these words).
      // (Its lock waits have the plan's own lock_timeout, refused above naming the holder: only a
      // statement_timeout is the session's here.)
      if ((guard === undefined ? sessionTimeoutOf(err) : guard.sessionTimeout(err)) === 'statement_timeout') {
        throw new MoveError(
          `could not record the move of ${what} from ${from} to ${req.to}: the catalog cancelled a statement of the job's transaction by its session's own statement_timeout (the catalog login's role or database setting, 10 s for the control login by catalog migration 005; pg_settings' source for statement_timeout names where it is set), ${until === undefined ? 'the plan having no deadline' : 'shorter than what the request had left (its deadline had not passed)'}. A lock of catalog.move_jobs or catalog.slot_maps held by another transaction (a migration's, a plan's) or a slow catalog keeps such a statement. Nothing was recorded: plan it again once that has ended, or raise that statement_timeout (ALTER ROLE ... SET statement_timeout)`,
          { cause: new SessionTimeoutError('the catalog', 'statement_timeout', err) },
        );
      }
      if ((err as { code?: string }).code === '23505') {
        // The transaction rolled back: nothing of this plan's was recorded, and the answer is the
        // conflict, whatever comes of the read below, which only names the other job. On this
        // connection: a pool of one (a Lambda's) has no other to give until it is released. Still
        // held to the deadline (its answer is due by then), and a read cut by it (a lock of
        // catalog.move_jobs held past the deadline: a migration's ALTER TABLE) answers the conflict
        // without the id; its raw 57014 was answered "the catalog or a shard did not answer (...);
        // try again shortly" (h145, moves-plan-deadline-review.test.ts).
        let other: string;
        try {
          const { rows } = await client.query<{ id: string }>(`select id from catalog.move_jobs where slot = $1 and state <> all($2::text[])`, [slot, TERMINAL_STATES]);
          other = `job #${rows[0]?.id ?? '?'}`;
        } catch (readErr) {
          // What the finally below judges the connection by (a cancel request's 57014 waits for it to settle).
          failure = readErr;
          const cut = guard !== undefined && (guard.expired || guard.cancelledByDeadline(readErr));
          other = `its job's id could not be read ${cut ? "by the request's deadline" : `(${message(readErr)})`}; the same request made again names it`;
        }
        throw new MoveConflictError(`slot ${slot} already has an unfinished move (${other}); finish or cancel it first`, { cause: err });
      }
      // The connection lost mid-transaction, before its commit was sent (its backend terminated by a
      // failover or an operator, the catalog stopped, a reset), or a statement of it not answered
      // within the client's query_timeout (a silent catalog): no commit was sent, so nothing was
      // recorded (a transaction left on a silent path is ended by the catalog, PLAN_IDLE_MS). Named,
      // the catalog and the cause, a 503 (MovePlanCatalogRefused, as a connection of the checks
      // lost), where the plain MoveError below was answered "the catalog or a shard did not answer
      // (SQLSTATE 57P01); try again shortly", naming neither (h166, moves-plan-catalog-lost.test.ts).
      // A connection lost between statements fails the next one with pg's "not queryable", which
      // names no cause: the error heard on the client does.
      if (!committing && (broken || isNodeFailure(err))) {
        // The server's own word where it sent one (57P01: its backend terminated), else the client's.
        const lost = fromServer(err) ? err : (lostWith ?? err);
        const silent = !fromServer(lost) && lost instanceof Error && /timeout/i.test(lost.message);
        throw new MovePlanCatalogRefused(
          `cannot plan the move of ${what} from ${from} to ${req.to}: the catalog ${silent ? "did not answer a statement of the job's transaction within the client's query timeout" : "lost the connection of the job's transaction"} (${failureKind(lost)}), before its commit was sent: it is stopped, restarting or failing over, or unreachable from here${silent ? ' (a silent path: the catalog ends the transaction left open on its own bound)' : ''}. Nothing was recorded: plan it again once the catalog answers`,
          'unavailable',
          { cause: lost },
        );
      }
      // The server ended the connection in its answer to the commit (its backend terminated while
      // the commit ran: a deferred constraint's trigger, a failover's or an operator's
      // pg_terminate_backend; 57P01, a FATAL): an error the server sent in answer to COMMIT is a
      // commit refused, the transaction rolled back (after its commit record, the server sends no
      // error: it ends the connection unanswered, MovePlanOutcomeUnknown above). Named, the catalog
      // and the cause, where it answered "the catalog or a shard did not answer (SQLSTATE 57P01);
      // try again shortly" (h168, moves-plan-catalog-lost.test.ts).
      if (committing && fromServer(err) && isNodeFailure(err)) {
        throw new MovePlanCatalogRefused(
          `cannot plan the move of ${what} from ${from} to ${req.to}: the catalog ended the connection of the job's transaction while it ran its commit, which it refused (${failureKind(err)}): it is stopping, restarting or failing over, or an operator ended the session. Nothing was recorded: plan it again once the catalog answers`,
          'unavailable',
          { cause: err },
        );
      }
      throw new MoveError(`could not record the move: ${message(err)}`, { cause: err });
    } finally {
      guard?.disarm();
      // Cancelled at the deadline: lent again only once the cancel request has been passed on in
      // full (deadline.ts ClientDeadline.reusable): a late one would cancel the next request's statement.
      if (guard !== undefined && queryCanceled(failure)) await guard.settled();
      client.off('error', onError);
      client.release(broken || guard?.reusable(failure) === false || undefined);
    }
    return toJob(recorded);
  }

  /**
   * {@link checked} for {@link plan}, its reads of the shards ended at `until` (epoch ms) where one
   * is given: POST /shards/moves gives its request's deadline (functions/api/wiring.ts, startMove).
   * Before, those reads (the unit's size, the fence rows and rows of the unit on its source and
   * target, and on the other shards a move asks) were bounded on no side: the shards' pools set no
   * query timeout and their logins no statement_timeout, and a table of a shard held ACCESS
   * EXCLUSIVE (a migration's ALTER TABLE, a VACUUM FULL, a LOCK TABLE left open) held the request
   * for as long as the lock was held, past API Gateway's 29 s (its 504, naming nothing), the read's
   * backend still waiting after (h134, moves-plan-shard-locked.test.ts). Now each read is sent on
   * {@link boundedPool} (cut at `until`, its statement cancelled on the server, its connection
   * ended), and one cut so fails the plan with {@link MovePlanShardUnanswered} naming the shard
   * (a 503), nothing recorded. The bound is the request's whole time, not a share of it: the unit's
   * size is counted here, the one read that grows with the unit (an index count: 0.12 s for a
   * slot's 2,000,000 documents, vacuumed, on a loaded 2-core machine; more where the visibility map
   * is not yet set, h134), and a count past the request's deadline could not be answered anyway. The
   * checks' reads of the catalog end at `until` too ({@link catalogBoundedPool}: a 503 naming the
   * catalog; h150); the job's transaction after the checks ends by `until` too ({@link plan}: each lock wait its own
   * bound or what is left, the less; h137). A shard down or unreachable (a refused or lost
   * connection, {@link ShardNodeFailure}) is named as one cut is, and a request already past `until`
   * reads nothing ({@link MovePlanOutOfTime}: no shard blamed for "no answer within 0 ms").
   * Without `until` (a caller outside a request: a script, a test), the reads are as they were.
   */
  private async checkedBy(request: MoveRequest, until: number | undefined): Promise<CheckedRequest> {
    if (until === undefined) return this.checked(request);
    // Already past (the handler's deadline spent before the plan began): nothing is read. Before,
    // each shard was "not answering (no answer within 0 ms ...)", a shard blamed that was never asked (h137).
    if (until - Date.now() <= 0) throw new MovePlanOutOfTime(outOfTime('before its checks began', until));
    const budgetMs = Math.max(0, Math.round(until - Date.now()));
    // The checks' reads of the catalog too (catalogBoundedPool, h150): the slot map, the directory
    // and the owners read through the stores' own pools were bounded by the catalog pool's
    // connection timeout and the login's statement_timeout alone. Only once the request has been
    // parsed (every read comes after), so its unit can be named.
    const refused = (): string => `cannot plan the move of ${request.kind === 'slot' ? `slot ${request.slot}` : `key ${canonicalKey(String(request.key))}`} to ${request.to}`;
    const catalog = catalogBoundedPool(this.options.catalog, until, budgetMs, refused);
    const checker = new Mover({ ...this.options, catalog, shards: new Map([...this.options.shards].map(([id, pool]) => [id, shardBoundedPool(id, pool, until, budgetMs, refused)])) });
    return checker.checked(request, undefined, catalog);
  }

  /**
   * What {@link plan} checks before it records a job, everything it reads outside the job's
   * transaction: the request's shape, the routing, the target, the unit's owner and size, and the
   * fence rows and rows that refuse it (checkKeySlot, checkSourceOwnsKey, checkSourceOwnsSlot,
   * checkTargetHoldsNoSlotRows). Throws what {@link plan} throws for them; records nothing. One
   * method for both {@link plan} and {@link refusal}, so that the rebalance check asks the plan's
   * own rules, never a copy of them. `catalog`: where the slot map and the directory are read
   * (checkedBy: this mover's catalog pool, bounded by the request's deadline); the stores' own
   * pools without.
   */
  private async checked(request: MoveRequest, read?: CatalogRead, catalog?: pg.Pool): Promise<CheckedRequest> {
    /** `work` on `catalog` where given (sent again on 40001, as the stores do on their own pools), else on the store's own pool. */
    const fromCatalog = <T>(work: (q?: pg.Pool) => Promise<T>): Promise<T> => (catalog === undefined ? work() : retryingSerializationFailures(() => work(catalog)));
    const parsed = moveRequestSchema.safeParse(request);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => ({ field: i.path.join('.'), reason: i.message }));
      const detail = issues.map((i) => `${i.field || '(request)'}: ${i.reason}`).join('; ');
      throw new MoveRequestError(`invalid move request: ${detail}`, 'invalid', { cause: parsed.error, issues });
    }
    const req = parsed.data;
    const unit = moveUnitFor(this.routing, req.kind);
    if (!unit.ok) throw new MoveRequestError(`cannot move a ${req.kind === 'slot' ? 'slot' : 'directory key'}: ${unit.reason}`, 'strategy');
    const shardIds = [...this.options.shards.keys()];
    if (!this.options.shards.has(req.to)) throw new MoveRequestError(`target shard ${req.to} is not one of ${shardIds.join(', ')}`, 'unknown-shard');
    const map = read?.map ?? (await fromCatalog((q) => this.options.slotMaps.current(q)));
    let unitId: string;
    let slot: number;
    let from: string;
    let excluded: string[] = [];
    let versionBefore: number;
    let entry: Awaited<ReturnType<MoverDirectory['entry']>> = null;
    if (req.kind === 'slot') {
      if (req.slot >= map.slotCount) {
        throw new MoveRequestError(`slot ${req.slot} is outside 0..${map.slotCount - 1}`, 'invalid', { issues: [{ field: 'slot', reason: `must be a slot number from 0 to ${map.slotCount - 1}` }] });
      }
      unitId = String(req.slot);
      slot = req.slot;
      from = map.assignments[slot] as string;
      // Keys the directory places stay where it puts them; their rows do not move with the slot.
      if (unit.excludeDirectoryKeys) excluded = read ? [...(read.keysBySlot.get(slot) ?? [])] : await fromCatalog((q) => this.directoryKeysIn(slot, q));
      versionBefore = map.version;
    } else {
      unitId = canonicalKey(req.key);
      slot = keySlot(unitId);
      entry = read ? (read.entries.get(unitId) ?? null) : await fromCatalog((q) => this.options.directory.entry(unitId, q));
      from = entry?.shardId ?? (map.assignments[slot] as string);
      versionBefore = entry?.version ?? 0;
    }
    if (!this.options.shards.has(from)) throw new MoveRequestError(`the unit's owner ${from} has no primary pool in this mover`, 'unknown-shard');
    if (from === req.to) throw new MoveRequestError(`${req.kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`} is already on ${req.to}`, 'same-shard');
    const what = req.kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`;
    try {
      // Counted here unless the caller counted it (the rebalance check: its census's counts, table
      // by table, against this mover's maxUnitRows), the one read that grows with the unit.
      if (read === undefined) await this.checkUnitSize(req.kind, unitId, from);
      if (req.kind === 'directory') {
        await this.checkKeySlot(unitId, slot, from);
        await this.checkSourceOwnsKey(unitId, from, entry === null ? 'by hash' : 'pinned');
        await this.checkOtherShardsHoldNoKeyRows(unitId, slot, from, req.to, entry === null ? 'by hash' : 'pinned');
      } else {
        await this.checkSourceOwnsSlot(slot, from, map.version);
        await this.checkTargetHoldsNoSlotRows(slot, from, req.to, excluded, map.version);
        await this.checkFormerOwnersHoldNoSlotRows(slot, from, req.to, excluded, map.version, read?.owners?.get(`${slot}:0`));
      }
    } catch (err) {
      // A read of the move's source or target cut at the plan's `until` (checkedBy: the request's
      // deadline), named as a shard the plan asked beside them is (askedShard), where the API's
      // generic words ("the catalog or a shard did not answer") named neither (h134).
      // One that is down or unreachable (ShardNodeFailure, within a request) is named alike (h137).
      if (!(err instanceof NodeTimeoutError || err instanceof ShardNodeFailure) || (err.nodeId !== from && err.nodeId !== req.to)) throw err;
      const shard = err.nodeId;
      const role = shard === from ? "the move's source" : "the move's target";
      const why =
        err instanceof NodeTimeoutError
          ? `a table of it held by a lock (a migration's ALTER TABLE, a VACUUM FULL, a LOCK TABLE left open) or a slow or silent server keeps such a read waiting. The read was cancelled on ${shard}`
          : `the server is down, restarting, or unreachable from here (its address, a security group, the pool's login)`;
      throw new MovePlanShardUnanswered(
        `cannot plan the move of ${what} from ${from} to ${req.to}: ${shard} did not answer (${failureKind(err)}${err instanceof NodeTimeoutError ? ', what the request had left' : ''}): it is ${role}, which the plan's checks read before anything is recorded (${shard === from ? "the unit's size, and its fence row of the unit" : 'its fence row of the unit, and its rows of it'}); ${why}. Nothing was recorded: plan it again once ${shard} answers`,
        shard,
        { cause: err, asked: role },
      );
    }
    return { req, unit, unitId, slot, from, excluded, versionBefore };
  }

  /**
   * Why {@link plan} would refuse each of `requests` now, in its own words (its error's message,
   * and the HTTP status POST /shards/moves answers it with: 409 for a conflict with the shards' or
   * the catalog's state, 422 for a request that cannot be carried out, 400 for one the plan calls
   * invalid, a key's rows under another slot), or undefined where its
   * checks before recording pass, in the order given. The same checks ({@link checked}), nothing
   * recorded; the slot map and the directory read once for them all (the plan reads them for its
   * one request: a 4096-entry map and every pin for each move made the rebalance check's checks
   * cost as much again as the rest of it): the directory's rows of the requests' slots (by its
   * slot column, sharding migration 031) and of their keys, not the whole directory, which cost a
   * read of every pin a round (1,000 a page), and at most {@link REFUSAL_CHECKS_AT_ONCE} requests'
   * reads of the shards at a time. The unit's size is not counted again (checkUnitSize: a count of
   * up to {@link DEFAULT_MAX_UNIT_ROWS} rows a table, a move): the caller plans within
   * {@link maxUnitRows} from its own counts (the rebalance check's census, table by table, as this
   * mover counts them), and a unit grown past it since is refused by {@link plan} as ever. An unfinished move of the unit's slot (409 at plan, the job's
   * unique index) is not read here: the rebalance check leaves those slots out already, and the
   * re-read of the owner under the job row is the plan's alone (a race, not a state to report).
   * A request whose checks failed with what is not a refusal (a shard or the catalog not answering,
   * a statement timeout) gets `{ failed }`, the error, for the caller to judge: the others' verdicts
   * stand. Before, the error was thrown, and one shard that stopped answering after the rebalance
   * check's census (or one read past its statement timeout) failed the whole check (500, GET
   * /recommendations without its shard figures) where, without these checks, it had answered
   * (rebalance-refused-moves.test.ts, "answers where the move plan's checks of a move cannot read
   * a shard"). Once a request's checks failed so, no further request's are started (each gets
   * `{ failed, notStarted: true }`, the same failure): a shard that does not answer costs one wait,
   * not one per batch. `until` (epoch ms, `Date.now()`'s clock) bounds the checks: a request whose
   * checks have not ended by then gets `{ failed }`, a {@link NodeTimeoutError} of `budgetMs` (the shards' pools
   * set no query timeout: a read waiting on a lock held the rebalance check for as long, past the
   * API's request deadline, "answers while a read of the move plan's checks waits on a lock"). The
   * reads shared by every request (the slot map, the directory, the slots' former owners) are
   * bounded so too, and their failure is every request's.
   * Used by the rebalance check, so that it proposes no move the plan refuses (issue #15,
   * rebalance-refused-moves.test.ts).
   */
  async refusals(requests: readonly MoveRequest[], options: { readonly until?: number; readonly budgetMs?: number } = {}): Promise<Array<MoveRefusal | undefined>> {
    if (requests.length === 0) return [];
    // The slots and keys the requests name, as far as they are well formed (checked refuses the others before it reads them).
    const slots = new Set(requests.flatMap((r) => (r.kind === 'slot' && Number.isInteger(r.slot) && r.slot >= 0 && r.slot < SLOT_COUNT ? [r.slot] : [])));
    const keys = [...new Set(requests.flatMap((r) => (r.kind === 'directory' && typeof r.key === 'string' ? [canonicalKey(r.key)] : [])))];
    // The checks' reads bounded by `until` and cut at it (boundedPool): a read left waiting holds
    // none of the pools' connections past it.
    // A read ended by its node's own session timeout, or a login the node refused, is named with
    // the node (refusalReadsInWords), as the plan's checks name them.
    const checker =
      options.until === undefined
        ? this
        : new Mover({
            ...this.options,
            catalog: refusalReadsInWords('the catalog', boundedPool(this.options.catalog, options.until, options.budgetMs ?? Math.max(0, options.until - Date.now()))),
            shards: new Map([...this.options.shards].map(([id, pool]) => [id, refusalReadsInWords(id, boundedPool(pool, options.until as number, options.budgetMs ?? Math.max(0, (options.until as number) - Date.now())))])),
          });
    const catalog = checker.options.catalog;
    // The former owners of every slot asked, in one read (ownersOfSlotsSince takes many slots):
    // read per move, each a statement of its own over catalog.slot_owner_history and the list of
    // maps it holds (every map's row, one more with each move ever made), and where the history
    // is not complete (a catalog before sharding migration 028, or maps it does not list) over
    // every map's 4096 owners, from the first: per move, where one read answers for all.
    const shared = Promise.all([
      // On the checks' catalog (bounded and cut at `until`), not the store's own pool: read there,
      // the verdict came at `until` but the read waited on a lock of catalog.slot_maps for as long
      // as it was held, holding a connection of the store's pool, a Lambda's one (h132,
      // rebalance-refused-moves.test.ts, "leaves no read of the latest slot map waiting ...").
      retryingSerializationFailures(() => this.options.slotMaps.current(catalog)),
      retryingSerializationFailures(() => directoryKeysBySlot(catalog, slots)),
      keys.length === 0
        ? []
        : retryingSerializationFailures(() =>
            catalog.query<{ key: string; shard_id: string; version: string; updated_at: Date; updated_by: string }>(
              'select key, shard_id, version::text as version, updated_at, updated_by from catalog.shard_directory where key = any($1::text[])',
              [keys],
            ),
          ).then((r) => r.rows),
      slots.size === 0 ? new Map<string, string[]>() : ownersOfSlotsSince(catalog, [...slots].map((slot) => ({ slot, version: 0 }))),
    ] as const);
    // Named by the caller's whole budget (its failure's kind: "no answer within 5000 ms").
    const timedOut = (left: number): MoveRefusal => ({ failed: new NodeTimeoutError("the move plan's checks", options.budgetMs ?? Math.max(0, Math.round(left))) });
    /** `work`, or the time-out's verdict once `until` has passed: the work's result is dropped, and its reads still running are cut just after (boundedPool). */
    const inTime = async <T>(work: Promise<T>): Promise<T | MoveRefusal> => {
      const left = options.until === undefined ? Infinity : options.until - Date.now();
      if (left === Infinity) return work;
      if (left <= 0) return timedOut(left);
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<MoveRefusal>((resolve) => {
        timer = setTimeout(() => resolve(timedOut(left)), left);
      });
      try {
        return await Promise.race([work, late]);
      } finally {
        clearTimeout(timer);
      }
    };
    // The shared reads failing or late, no request's checks can be made: each gets the failure.
    shared.catch(() => undefined);
    let read: Awaited<typeof shared> | MoveRefusal;
    try {
      read = await inTime(shared);
    } catch (err) {
      read = { failed: err };
    }
    if (!Array.isArray(read)) {
      const failed = read;
      return requests.map(() => failed);
    }
    const [map, slotKeys, pinned, owners] = read;
    const keysBySlot = new Map<number, string[]>();
    for (const key of slotKeys) {
      const slot = keySlot(key);
      if (slots.has(slot)) keysBySlot.set(slot, [...(keysBySlot.get(slot) ?? []), key]);
    }
    const entries = new Map(pinned.map((r) => [r.key, { key: r.key, shardId: r.shard_id, version: Number(r.version), updatedAt: r.updated_at, updatedBy: r.updated_by }] as const));
    const out: Array<MoveRefusal | undefined> = [];
    const one = async (request: MoveRequest): Promise<MoveRefusal | undefined> => {
      try {
        await checker.checked(request, { map, keysBySlot, entries, owners });
        return undefined;
      } catch (err) {
        if (err instanceof MoveConflictError) return { status: 409 as const, reason: err.message };
        // As POST /shards/moves answers them (functions/api/wiring.ts, startMove): 'invalid' 400.
        if (err instanceof MoveRequestError) return { status: err.problem === 'invalid' ? (400 as const) : (422 as const), reason: err.message };
        // The rebalance check judges a node's failure by the driver's error (functions/api/wiring.ts),
        // and names the shard where the checks knew which.
        return err instanceof MovePlanShardUnanswered ? { failed: err.cause, unanswered: { shard: err.shard, asked: err.asked } } : { failed: err };
      }
    };
    // The first failure met, which stops the checks: the requests after it are not started.
    let stoppedBy: Extract<MoveRefusal, { failed: unknown }> | undefined;
    for (let i = 0; i < requests.length; i += REFUSAL_CHECKS_AT_ONCE) {
      const batch = requests.slice(i, i + REFUSAL_CHECKS_AT_ONCE);
      if (stoppedBy !== undefined) {
        const { failed, unanswered } = stoppedBy;
        out.push(...batch.map(() => ({ failed, notStarted: true as const, ...(unanswered ? { unanswered } : {}) })));
        continue;
      }
      const verdicts = await Promise.all(batch.map((request) => inTime(one(request))));
      out.push(...verdicts);
      stoppedBy = verdicts.find((v): v is Extract<MoveRefusal, { failed: unknown }> => v !== undefined && 'failed' in v);
    }
    return out;
  }

  /**
   * What the plan's insert waited for past {@link PLAN_RECORD_WAIT_MS}, after `client`'s
   * rollback: the error's context names the unique index the insert waited on (the server's
   * "while inserting index tuple ... in relation ...", under the trigger's function for
   * catalog.move_job_shards), and for
   * catalog.move_job_shards the shards of this plan the table does not hold committed are the ones
   * another plan holds (one read, on the refusal's path only).
   */
  private async recordWaitRefused(client: pg.PoolClient, err: unknown, slot: number, from: string, to: string, wait: { readonly waitMs: number; readonly byDeadline: boolean }): Promise<string> {
    const where = String((err as { where?: unknown }).where ?? '');
    // Cut by the request's deadline (Mover.plan's `until`), not by the insert's own bound: said so.
    const waited = wait.byDeadline ? `for ${wait.waitMs} ms, past the request's deadline (what it had left; the insert's own bound is ${PLAN_RECORD_WAIT_MS} ms)` : `for more than ${PLAN_RECORD_WAIT_MS} ms`;
    const after = `${waited}: a plan still running, or one whose connection was lost mid-transaction, which keeps it until its server ends the session (after at most ${PLAN_IDLE_MS} ms idle for a plan of this version; an older version's plan sets no such bound). Nothing was recorded: plan it again`;
    if (where.includes('move_job_shards')) {
      const { rows } = await client.query<{ shard_id: string }>('select shard_id from catalog.move_job_shards where shard_id = any($1::text[])', [[from, to]]);
      const held = [from, to].filter((s) => !rows.some((r) => r.shard_id === s));
      const named = held.length === 0 ? `${from} or ${to}, a shard no move job named before, held its row` : held.length === 1 ? `${held[0]}, a shard no move job named before, held its row` : `${held.join(' and ')}, shards no move job named before, held their rows`;
      return `another plan naming ${named} of catalog.move_job_shards (sharding migration 025: the first job naming a shard records it, and a second one waits for that commit) ${after}`;
    }
    // The server's context names the unique index: "while inserting index tuple (0,2) in relation "move_jobs_one_active_per_slot"".
    if (where.includes('move_jobs_one_active_per_slot')) {
      return `a move of slot ${slot} planned by another transaction and not yet committed held its row of catalog.move_jobs (one unfinished move per slot) ${after}`;
    }
    return `the insert into catalog.move_jobs waited for a lock another transaction held (the table's, a migration's say: ${where === '' ? 'no context given' : where.replace(/\s+/g, ' ')}) ${waited}. Nothing was recorded: plan it again`;
  }

  /**
   * Takes the SHARE lock on `catalog.slot_maps` a slot move's plan reads its slot's owner under
   * (sharding migration 008), with `client`, the plan's transaction, waiting at most `waitMs` (what
   * is left of {@link PLAN_LOCK_WAITS_MS} after the slot's pin lock); refused ({@link MoveConflictError}, the transaction rolled back,
   * nothing recorded) past it or where PostgreSQL ends the wait to break a deadlock. The plan holds
   * its slot's row of `catalog.slot_pin_locks` by then: unbounded, a map inserted in a caller's
   * transaction and left uncommitted held the plan, and every pin of the slot behind it, for as
   * long as that transaction; and a caller's transaction that published a map and then pinned a key
   * of the slot waited for the plan while the plan waited for it (a deadlock: the plan was ended
   * with PostgreSQL's bare "deadlock detected"; owner-change-pin-lock-order.test.ts).
   */
  private async lockSlotMapsForPlan(client: pg.PoolClient, slot: number, wait: { readonly waitMs: number; readonly byDeadline: boolean }): Promise<void> {
    const { waitMs } = wait;
    const { rows } = await client.query<{ prior: string }>(`select current_setting('lock_timeout') as prior`);
    await client.query(`select set_config('lock_timeout', $1, true)`, [`${Math.round(waitMs)}ms`]);
    try {
      await client.query(LOCK_SLOT_MAPS_FOR_HASH_ROUTE);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code !== LOCK_NOT_AVAILABLE && code !== DEADLOCK_DETECTED) throw err;
      await client.query('rollback');
      const held = wait.byDeadline
        ? `past the request's deadline (${Math.round(waitMs)} ms, what the request had left, less than the plan's ${PLAN_LOCK_WAITS_MS} ms for its lock waits)`
        : `for more than ${Math.round(waitMs)} ms (what the plan's ${PLAN_LOCK_WAITS_MS} ms for its lock waits had left)`;
      // Who held it, by the modes granted on the table (pg_locks shows every session's; a map's
      // insert holds ROW EXCLUSIVE): a VACUUM or ANALYZE (autovacuum's among them) holds SHARE
      // UPDATE EXCLUSIVE, a migration's ALTER TABLE or a LOCK TABLE a stronger mode, and the
      // refusal blamed "a slot map inserted ... and not yet committed" for them too, sending the
      // operator after a publication there was not (h137, moves-plan-shard-locked.test.ts).
      const others = code === LOCK_NOT_AVAILABLE ? await otherHoldersOf(client, 'catalog.slot_maps', SHARE_CONFLICTS_BUT_INSERTS).catch(() => []) : [];
      const what =
        code === DEADLOCK_DETECTED
          ? `this plan and a transaction holding a slot map inserted into catalog.slot_maps and not yet committed each waited for a lock the other held (the plan held its slot's row of catalog.slot_pin_locks: a caller's transaction that published a map and then changed a pin of slot ${slot}, say), a deadlock, which PostgreSQL ended by refusing this plan (SQLSTATE 40P01)`
          : others.length > 0
            ? `a transaction holding catalog.slot_maps in ${others.map((o) => `${o.mode} mode (pid ${o.pid}${o.backendType === 'client backend' || o.backendType === '' ? '' : `, ${o.backendType}`})`).join(', ')} held the table ${held}: a VACUUM or an ANALYZE (autovacuum's too) holds SHARE UPDATE EXCLUSIVE, a migration's ALTER TABLE or a LOCK TABLE a stronger mode`
            : `a slot map inserted into catalog.slot_maps and not yet committed (a map being published, in a caller's transaction, say) held the table ${held}`;
      throw new MoveConflictError(
        `cannot plan the move of slot ${slot}: ${what}, and a move reads its slot's owner under a SHARE lock of the table, so that no map giving the slot away commits unseen by the move (sharding migration 008; docs/sharding-spec.md section 9, "A pin racing a change of its slot"). Nothing was recorded: plan it again once ${others.length > 0 ? 'that transaction has ended' : 'that map is committed or rolled back'}`,
        { cause: err },
      );
    }
    await client.query(`select set_config('lock_timeout', $1, true)`, [rows[0]?.prior ?? '0']);
  }

  /**
   * Every directory key whose hash slot is `slot`: read by the directory's slot column (sharding
   * migration 031; DirectoryStore.keysInSlot), as the plan's check of them inside its transaction
   * is, not the whole directory a page at a time.
   */
  private async directoryKeysIn(slot: number, catalog?: pg.Pool): Promise<string[]> {
    return this.options.directory.keysInSlot(slot, catalog);
  }

  /** The job as recorded now. */
  async get(id: number): Promise<MoveJob> {
    // Statements of their own at the catalog's default level, sent again on 40001 (a SERIALIZABLE
    // default can end a read so: see PgMovePort.reload), as are this class's other reads outside a transaction.
    const { rows } = await retryingSerializationFailures(() => this.options.catalog.query<JobRow>('select * from catalog.move_jobs where id = $1', [id]));
    if (!rows[0]) throw new MoveRequestError(`there is no move job #${id}`, 'not-found');
    return toJob(rows[0]);
  }

  /**
   * Ends now every lease still held on an unfinished job, so the next {@link run} claims it at
   * once instead of after the lease's expiry; returns the ids of those jobs. Only for a process
   * that knows every other mover of this catalog is dead: local mode at start, which holds its
   * data directory's lock and has just started the catalog server itself (the runs holding those
   * leases died with the process before it). A mover that had only stalled would still be
   * refused: its lease epoch is behind the next claim's, at the catalog and at the shards
   * (their move permits).
   *
   * @example
   * ```ts
   * const ids = await mover.endLeasesOfDeadRuns(); // [3]: job 3 had been run by a killed process
   * ```
   */
  async endLeasesOfDeadRuns(): Promise<number[]> {
    const { rows } = await this.options.catalog.query<{ id: string }>(
      `update catalog.move_jobs set lease_holder = null, lease_expires_at = null
        where lease_expires_at > clock_timestamp() and state <> all($1::text[]) returning id`,
      [TERMINAL_STATES],
    );
    return rows.map((r) => Number(r.id)).sort((a, b) => a - b);
  }

  /** Unfinished jobs, oldest first. */
  async unfinished(): Promise<MoveJob[]> {
    const { rows } = await retryingSerializationFailures(() => this.options.catalog.query<JobRow>('select * from catalog.move_jobs where state <> all($1::text[]) order by id', [TERMINAL_STATES]));
    return rows.map(toJob);
  }

  /**
   * The most rows in one table of a unit this mover takes ({@link MoverOptions.maxUnitRows}): what
   * the rebalance check must plan within, so that it proposes no move this mover refuses.
   */
  get maxUnitRows(): number {
    return this.options.maxUnitRows ?? DEFAULT_MAX_UNIT_ROWS;
  }

  /**
   * A directory move carries the key's rows under the key's own slot only (a users row with the
   * key's id under another slot, and the rows under it, are another unit's: docs/sharding-spec.md
   * section 9). Rows of the key on the source under another slot (a restore, a hand-made row, a
   * document written with a wrong slot before shard migration 015) would be left there, fenced,
   * while the key moved, so the move is refused, naming them. Nothing is recorded.
   */
  private async checkKeySlot(key: string, slot: number, from: string): Promise<void> {
    const found = (await keyRowsUnderOtherSlots(this.options.shards.get(from) as pg.Pool, key, slot)).join(', ');
    if (found === '') return;
    const reason = `key ${key} has rows on ${from} under another slot than its id's slot ${slot}: ${found}; a restore, a hand-made row or a document written with a wrong slot before shard migration 015, which a move of the key would leave behind: correct their slot there first (docs/sharding-spec.md, section 9). Nothing was planned`;
    throw new MoveRequestError(`cannot move key ${key}: ${reason}`, 'invalid', { issues: [{ field: 'key', reason }] });
  }

  /**
   * Refuses a directory move whose source, the shard the catalog sends the key to, says by its own
   * fence row that it does not own the key (`moved`, to the shard named in `moved_to`): a finished
   * move's row, left where the catalog routes the key again because its pin was deleted past the
   * catalog's guard (CAF06, a superuser's SQL: `session_replication_role = replica`) or changed past
   * it (CAF07). Every write and read of the key there is refused already (CAF02), and such a move
   * could never run: its first run pinned the key to the source over no entry (hiding its rows on
   * the shard they moved to, and keeping the key unwritable) and then stopped on the source's fence
   * ("the catalog and the shard disagree"), the job left `copying` until cancelled, holding every
   * other move of the key's slot (issue #15, moves-directory-source-moved.test.ts). Refused here,
   * nothing recorded and nothing pinned, with the way out: the key's owner is a decision by hand,
   * `catalog.repin_by_hand` to the shard its rows moved to (then a move from there, if wanted).
   * Read before the job is recorded: a move that changes this row is of the key's slot, and the
   * plan's re-read of the owner under the job row (below) refuses a plan that raced one.
   *
   * Where the source has no row of the key, its slot's row decides for the key there ("Which row
   * applies"), and one that says `moved` (the key not among its `excluded_keys`) is refused the
   * same way: the slot moved A -> B and was given back to A by a map by hand that neither fences
   * nor opens a row (`rowsLeftOn: 'checked'`, `catalog.publish_slot_map_by_hand` straight), the
   * key's rows went to B with the slot, and a directory move of the key from A to B inserted an
   * `open` row of the key on A, copied A's none over B's and ended `done`: the key's user and
   * documents were on no shard (moves-slot-source-moved.test.ts, h101). A slot row turned `moved`
   * after the plan is judged by the run (PgMovePort.prepareSource) by where the catalog sends the
   * key then: to the target, by hash (a hand change gave the slot, empty of the key's rows, to the
   * move's target), the move rightly finishes; to the source (its pin), the run fails as here.
   * So is a row `incoming` that no unfinished move holds (the key's own, or its slot's): its run
   * failed after pinning the key to the source, where CAF06 kept it pinned for good (h107).
   */
  private async checkSourceOwnsKey(key: string, from: string, route: 'by hash' | 'pinned'): Promise<void> {
    const source = this.options.shards.get(from) as pg.Pool;
    const slot = String(keySlot(key));
    const { rows: both } = await source.query<DisowningRow & { kind: string; excluded_keys: string[] | null }>(
      `select kind, state, moved_to, map_version::text, job_id::text, excluded_keys from write_fences
        where (kind = 'directory' and unit_id = $1) or (kind = 'slot' and unit_id = $2)`,
      [key, slot],
    );
    const own = both.find((r) => r.kind === 'directory');
    const slotRow = both.find((r) => r.kind === 'slot');
    const routedBy = route === 'pinned' ? `its pin names ${from}` : `it has no pin and routes by hash to its slot's owner, ${from}`;
    if (own === undefined && slotRow?.state === 'incoming' && !(slotRow.excluded_keys ?? []).includes(key) && !(await this.unfinishedJob(slotRow.job_id))) {
      // As `moved`, below, for a slot row `incoming` that no unfinished move holds (one that does
      // holds the slot too, and the job's unique index answers for it): the source refuses the
      // key's every write (CAF01), and its run, meeting the row, failed after pinning the key to
      // the source, where CAF06 then kept it pinned for good (h107, moves-slot-source-moved.test.ts).
      throw new MoveConflictError(
        `cannot move key ${key} from ${from}: the catalog sends it to ${from} (${routedBy}), but ${from} has no fence row of the key, and the row of its slot ${slot} there, which decides for the key, says incoming (${slotRow.job_id === null ? "a hand change's or a superuser's, job_id null" : `move job #${slotRow.job_id}'s, which has ended`}): ${from} does not own the key's rows yet, or no longer knows whether it does, and refuses its every write and read (CAF01). Nothing was recorded or pinned. Decide the slot's owner by hand, by where its rows are, and settle that row (ca-dms-scaling shards fences lists it; where the slot's rows are on ${from}, delete it there: delete from write_fences where kind = 'slot' and unit_id = '${slot}' and state = 'incoming'); then move the key if wanted (docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away")`,
      );
    }
    if (own === undefined && slotRow?.state === 'moved' && !(slotRow.excluded_keys ?? []).includes(key)) {
      const there = slotRow.moved_to ?? '<the shard holding its rows>';
      const way =
        route === 'pinned'
          ? `select catalog.repin_by_hand('${key}', '${there}', '<reason>')`
          : `publish a map giving its slot ${slot} to ${there} (SlotMapStore.publishByHand given the shards' pools, which counts and fences ${from}; or select * from catalog.publish_slot_map_by_hand(<next version>, <assignments>, '<reason>'))`;
      throw new MoveConflictError(
        `cannot move key ${key} from ${from}: the catalog sends it to ${from} (${routedBy}), but ${from} has no fence row of the key, and the row of its slot ${slot} there, which decides for the key, says moved to ${there} (version ${slotRow.map_version ?? '?'}, ${slotRow.job_id === null ? "a hand change's" : `move job #${slotRow.job_id}'s`}): the key's rows went with its slot, and a move from ${from} would copy ${from}'s none over them. Nothing was recorded or pinned. Decide the key's owner by hand: where its rows are (on ${there}), ${way}; where they are on ${from} after all, give the key a row of its own there, which decides for it over its slot's: insert into write_fences (kind, unit_id) values ('directory', '${key}'); then move it if wanted (docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away")`,
      );
    }
    if (own?.state === 'incoming' && !(await this.unfinishedJob(own.job_id))) {
      // The key's own row `incoming`, of no unfinished move: its run met the row (prepareSource)
      // and failed after pinning the key to the source, kept pinned there for good (CAF06).
      throw new MoveConflictError(`cannot move key ${key} from ${from}: the catalog sends it to ${from} (${routedBy}), but ${sourceDisowns('directory', key, from, own)}. Nothing was recorded or pinned`);
    }
    const row = own?.state === 'moved' ? own : undefined;
    if (row === undefined) return;
    const there = row.moved_to ?? 'another shard';
    const routed = routedBy;
    throw new MoveConflictError(
      `cannot move key ${key} from ${from}: the catalog sends it to ${from} (${routed}), but ${from}'s fence row of the key says moved to ${there} (version ${row.map_version ?? '?'}), a finished move's: the catalog and the shard disagree, and ${from} refuses every write and read of the key (CAF02). Its pin was deleted or changed past the catalog's guard (CAF06/CAF07). Nothing was recorded or pinned. Decide the key's owner by hand: where its rows are (on ${there}, after that move), select catalog.repin_by_hand('${key}', '${there}', '<reason>'); then move it from there if wanted (docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned")`,
    );
  }

  /**
   * Refuses a slot move whose source, the shard the latest map names for the slot, says by its own
   * fence row that it does not own the slot (`moved`, to the shard named in `moved_to`): a finished
   * slot move's row (A -> B done, A's row `moved` to B) left where a map published by hand gives the
   * slot back to A without taking it (`catalog.publish_slot_map_by_hand` straight, a store without
   * the shards' pools, or `rowsLeftOn: 'checked'`: none of them fences or opens a row, CAF08 lets a
   * map by hand through for a finished move), or a hand change's (`job_id` null) that a caller's
   * transaction rolled back. Every write and read of the slot there is refused already (CAF02), and
   * such a move could never run: it was recorded, its first run stopped on the source's fence ("the
   * catalog and the shard disagree"), and the job stayed `copying`, every run stopping there again,
   * until cancelled, holding every other move of the slot and every map by hand of it (CAF08)
   * meanwhile (issue #15, moves-slot-source-moved.test.ts). Refused here, nothing recorded, with the
   * way out: the slot's owner is a decision by hand (a map giving it to where its rows are, or the
   * hand row settled where the rows are on the source). Read before the job is recorded, as for a
   * key ({@link checkSourceOwnsKey}); the run's own check stays, for a row changed after the plan.
   */
  private async checkSourceOwnsSlot(slot: number, from: string, version: number): Promise<void> {
    const source = this.options.shards.get(from) as pg.Pool;
    const { rows } = await source.query<DisowningRow>(
      `select state, moved_to, map_version::text, job_id::text from write_fences where kind = 'slot' and unit_id = $1 and state in ('moved', 'incoming')`,
      [String(slot)],
    );
    const row = rows[0];
    if (row === undefined) return;
    // An `incoming` row an unfinished move holds is that move's, which holds the slot too: the
    // job's unique index answers for it. One of no such move (a superuser's, a job ended by hand)
    // was recorded and failed at its run (h107, moves-slot-source-moved.test.ts).
    if (row.state === 'incoming' && (await this.unfinishedJob(row.job_id))) return;
    // The map read by the plan may be older than the row: a move of the slot from `from` that
    // finished after that read left the row and gave the slot away. The catalog no longer names
    // `from` then, and the plan's re-read of the owner under the job row refuses it in the words
    // that say so ("is already on ..."; "... another move finished while this one was planned");
    // read from a stale map, this refusal told the operator to decide the slot's owner by hand
    // (h107: moves-races.test.ts, "records nothing from an owner that another move of the slot
    // replaced while the plan was being made", failed since this check came in).
    if ((await this.ownerOfSlot(slot))?.shardId !== from) return;
    throw new MoveConflictError(`cannot move slot ${slot} from ${from}, which slot map version ${version} names its owner: ${sourceDisowns('slot', String(slot), from, row)}. Nothing was recorded`);
  }

  /**
   * Refuses a slot move to a shard that holds rows of the slot (less the keys the directory keeps
   * out of it, `excluded`) behind no row of the slot that says they are not its own: none, or
   * `open`. A slot move's copy deletes the target's rows of the unit in each page's range before it
   * writes the source's (its own earlier pages, a finished move's leftovers kept behind that
   * move's `moved` row there); the target is not checked for rows as a directory move's is
   * (PgMovePort.checkedIncoming), since no writer is sent there while the map names the source.
   * Rows there behind no refusing row are not leftovers, then, but rows that a change past the
   * stores left out of the map's sight: a slot moved A -> B with its rows and given back to A by a
   * map by hand that fenced and opened nothing (A's row `moved` to B), whose way out at plan
   * (checkSourceOwnsSlot) was misjudged, A's row deleted by hand as if the rows were on A. The
   * move of the slot to B, where its rows were, then deleted them page by page, copied A's none
   * and ended `done`, the slot's users and documents on no shard (h110, moves-slot-source-moved.test.ts,
   * "a slot move to a shard holding the slot's rows ..."). Refused at plan, nothing recorded, naming
   * the rows and the way out by what they are: the slot given to the target through the stores
   * (rows that are its own), stale copies deleted there, or, where the source holds rows of the slot
   * too (a split: a map with `rowsLeftOn: 'checked'` gave it the slot while the rows stayed on the
   * target, and it took writes since), the source's rows put on the target by hand first: the
   * stores' give-back counts them and refuses while any are left, so the first way alone never
   * went through a split, and the second lost the rows (owner-change-rows-left.test.ts). Read once, at plan time: while the map names the
   * source, nothing routes a writer to the target, and a row `moved`, `incoming` or `fenced` there
   * is a move's or a change's, met by the run as ever.
   */
  private async checkTargetHoldsNoSlotRows(slot: number, from: string, to: string, excluded: readonly string[], version: number): Promise<void> {
    const target = this.options.shards.get(to) as pg.Pool;
    const { rows } = await target.query<{ state: string }>(`select state from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    const state = rows[0]?.state;
    if (state !== undefined && state !== 'open') return;
    const [held] = await slotsRowsOn(target, [{ slot, excluded }]);
    if (held === undefined || held.length === 0) return;
    // As checkSourceOwnsSlot: the map read by the plan may be older than the rows. A move of the
    // slot to `to` that finished after that read put them there and gave `to` the slot; the plan's
    // re-read of the owner under the job row refuses it in the words that say so ("is already on
    // ..."), which this refusal, read from a stale map, would hide (moves-races.test.ts, "records
    // nothing from an owner that another move of the slot replaced ...").
    if ((await this.ownerOfSlot(slot))?.shardId !== from) return;
    // Source and target reaching one database (two spellings of one endpoint): the rows counted
    // are the source's own. The run's permit claim refuses such a move naming the configuration
    // (moves-permit-claim.test.ts); this refusal would send the operator after rows that are not
    // there. One server's database is told by its oid and the postmaster's start (to the
    // microsecond), which two servers do not share.
    if (await sameDatabase(this.options.shards.get(from) as pg.Pool, target)) return;
    throw new MoveConflictError(
      `cannot move slot ${slot} from ${from} to ${to}: ${to} holds rows of the slot (${describeRows(held)}${excluded.length > 0 ? `, less the ${excluded.length} key(s) the directory keeps out of it` : ''}) behind ${state === undefined ? 'no fence row of it' : 'its open fence row'}, though slot map version ${version} names ${from}: not a finished move's leftovers (they stand behind its 'moved' row), but rows the map does not send readers to, and the move's copy would delete them before writing ${from}'s. Nothing was recorded. Decide where the slot's rows are by hand: where they are the slot's own (a map given to ${from} past the stores while they stayed on ${to}, and ${from}'s 'moved' row of it deleted by hand as if they were on ${from}), give the slot to ${to} by hand through the stores (SlotMapStore.publishByHand given the shards' pools, which counts ${from}'s rows of it and fences it), and its writes land where its rows are; where both hold rows of the slot (a split: a map past the stores, rowsLeftOn 'checked' or SQL, gave the slot to ${from} while its rows stayed on ${to}, and ${from} took writes of it since), copy ${from}'s rows of the slot to ${to} by hand, delete them on ${from}, then give the slot to ${to} by hand through the stores (which refuse while ${from} still holds any, nothing published: rows written there meanwhile are not left behind); where they are stale copies of rows on ${from} (copied there by hand), delete them on ${to} (select id from users where slot = ${slot}; select id, owner_id from documents where slot = ${slot}), then plan the move again (docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away")`,
    );
  }

  /**
   * Refuses a slot move while a shard that owned the slot in an earlier map (catalog.slot_owner_history,
   * sharding migrations 023, 024 and 028: every owner since the first map), neither the source nor
   * the target ({@link checkTargetHoldsNoSlotRows} counts that one), holds rows of the slot (less the
   * keys the directory keeps out of it, `excluded`) behind no row of the slot that says they are not
   * its own: none, or `open`. The source's missing row is trusted only once no such shard is found:
   * a slot moved A -> B with its rows, given back to A by a map past the stores (rowsLeftOn 'checked',
   * SQL) that fenced and opened nothing, and A's `moved` row deleted by hand as if the rows were on A
   * (the way out checkSourceOwnsSlot names, misjudged), left A taking the slot's writes, no row
   * refusing them, while the slot's rows stayed on B. The check above counted the target alone, so
   * a move of the slot from A to a third shard C went through: it copied A's rows (the few written
   * since, or none) to C, flipped and ended `done`, B's users and documents left out of every
   * reader's sight for good, the map's history the only trace of where they were (h116,
   * moves-slot-source-moved.test.ts, "a slot move to a third shard while a shard that owned the
   * slot holds its rows ..."). A former owner's rows behind its `moved` row are a finished move's
   * leftovers (or a hand change's fence, which counted the rows before it fenced), and one behind
   * `fenced` or `incoming` a move's or a change's in flight: passed, as for the target. A shard the
   * history names that this mover has no pool for (removed from the deployment) cannot be counted
   * and is passed. Read once, at plan time, as the target's count.
   */
  private async checkFormerOwnersHoldNoSlotRows(slot: number, from: string, to: string, excluded: readonly string[], version: number, read?: readonly string[]): Promise<void> {
    // `read`: the owners the caller read for many slots at once (Mover.refusals).
    const owners = read ?? (await ownersOfSlotsSince(this.options.catalog, [{ slot, version: 0 }])).get(`${slot}:0`) ?? [];
    for (const shard of owners) {
      if (shard === from || shard === to) continue;
      const pool = this.options.shards.get(shard);
      if (pool === undefined) continue;
      // A former owner that does not answer refuses the plan in words that name it and why it was
      // asked (MovePlanShardUnanswered, a 503), as a key move's third shard does: thrown bare, the
      // driver's error named an address, which the API answered as "the catalog or a shard did not
      // answer", and the operator checked the slot's source and target, both answering (h132,
      // moves-slot-source-moved.test.ts, "a slot move while a shard that owned the slot does not answer").
      const ask = <T>(work: () => Promise<T>): Promise<T> =>
        askedShard(shard, 'which owned the slot in an earlier slot map', work, (kind) =>
          `cannot plan the move of slot ${slot} from ${from} to ${to}: ${shard} did not answer (${kind}), and it owned the slot in an earlier slot map (catalog.slot_owner_history): a slot move asks every shard that ever owned its slot, not only its source and target, whether it holds rows of the slot that no fence row there refuses (rows a map published past the stores left on ${shard} would be left out of every reader's sight by the move; docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away"). Nothing was recorded: plan it again once ${shard} answers (a shard the deployment no longer configures is not asked)`,
        );
      const { rows } = await ask(() => pool.query<{ state: string }>(`select state from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]));
      const state = rows[0]?.state;
      if (state !== undefined && state !== 'open') continue;
      const [held] = await ask(() => slotsRowsOn(pool, [{ slot, excluded }]));
      if (held === undefined || held.length === 0) continue;
      // As checkTargetHoldsNoSlotRows: a map read by the plan older than the rows (a move of the
      // slot from that shard finished since) is refused by the plan's re-read of the owner in the
      // words that say so; and a shard reaching the source's own database counted the source's rows.
      if ((await this.ownerOfSlot(slot))?.shardId !== from) return;
      if (await sameDatabase(this.options.shards.get(from) as pg.Pool, pool)) continue;
      throw new MoveConflictError(
        `cannot move slot ${slot} from ${from} to ${to}: ${shard}, which owned the slot in an earlier slot map, holds rows of it (${describeRows(held)}${excluded.length > 0 ? `, less the ${excluded.length} key(s) the directory keeps out of it` : ''}) behind ${state === undefined ? 'no fence row of it' : 'its open fence row'}, though slot map version ${version} names ${from}: not a finished move's leftovers (they stand behind its 'moved' row), but rows the map does not send readers to, and the move would copy ${from}'s rows of the slot alone to ${to}, leaving ${shard}'s out of every reader's sight for good. Nothing was recorded. ` +
          `Decide where the slot's rows are by hand: where they are the slot's own (a map gave the slot to ${from} past the stores while they stayed on ${shard}, rowsLeftOn 'checked' or SQL, and ${from}'s 'moved' row of it was deleted by hand as if they were on ${from}; ${from} has taken the slot's writes since, no row refusing them), put them together on ${shard} first: copy ${from}'s rows of the slot to ${shard} by hand (select id from users where slot = ${slot}; select id, owner_id from documents where slot = ${slot}), delete them on ${from}, give the slot to ${shard} by hand through the stores (SlotMapStore.publishByHand given the shards' pools, which counts ${from}'s rows of it, refuses while any are left, and fences it), then move it from ${shard} to ${to}; where they are stale copies of rows on ${from} (copied there by hand), delete them on ${shard}, then plan the move again (docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away")`,
      );
    }
  }

  /**
   * As {@link checkFormerOwnersHoldNoSlotRows}, for a directory move: refuses it while a shard of
   * this mover other than the source and the target holds rows of the key under its own slot (the
   * unit a directory move carries) behind no fence row that says they are not the key's own there:
   * the key's row `open`, or no row of the key and its slot's row there letting it through (none,
   * `open`, or the key among its `excluded_keys`). A key's pins keep no history, so every shard is
   * asked: one index probe a table a shard. The hole it closes (h120, moves-slot-source-moved.test.ts,
   * "a directory move to a third shard while a shard the key was pinned to holds its rows ..."):
   * the key moved A -> B by a directory move, its pin given back to A past the stores
   * (`catalog.repin_by_hand`, which counts and fences nothing), and A's `moved` row of the key
   * deleted by hand as if its rows were on A (the way out checkSourceOwnsKey names, misjudged): A
   * took the key's writes, no row refusing them, while its rows stayed on B, and a move of the key
   * from A to C copied A's rows of the key (none, or the few written since), pinned the key to C and
   * ended `done`, B's user and documents out of every reader's sight for good; the target's own
   * count (PgMovePort.checkedIncoming) counts C alone. Passed: rows behind the key's `moved`,
   * `fenced` or `incoming` row there (a finished move's leftovers, a change in flight), or behind
   * its slot's such row where the key follows it (a slot move's leftovers: a user its clean-up kept
   * for documents under another slot); a shard reaching the source's or the target's database (two
   * spellings of one endpoint: their rows are counted as theirs). Where the catalog no longer sends
   * the key to `from` (a move of it finished since the plan read its route), the plan's re-read of
   * the owner under the job row refuses it in the words that say so. Read once, at plan time. A
   * shard that does not answer refuses the plan ({@link MovePlanShardUnanswered}, a 503 naming it):
   * it may hold the key's rows. A slot move's clean-up's kept user of the key, on a shard the slot
   * came back to while the key was pinned elsewhere, stands behind the key's own `moved` row that
   * the slot move back wrote there (the key kept out), and passes (h124).
   */
  private async checkOtherShardsHoldNoKeyRows(key: string, slot: number, from: string, to: string, route: 'by hash' | 'pinned'): Promise<void> {
    // Only a key in the canonical UUID form owns rows (unit-rows.ts, keyRowsOn).
    if (uuidForm(key) === undefined) return;
    /**
     * `work`'s answer from `shard`, or, where the shard does not answer, the refusal that says so.
     * A shard that is neither the key's source nor its target, down or unreachable, holds every
     * key move up: it may hold the key's rows, and the plan cannot tell. Thrown bare, the driver's
     * error named an address ("connect ECONNREFUSED 10.0.3.17:5432"), which the API answered as
     * "the catalog or a shard did not answer": an operator then checked the key's source and
     * target, both answering (h124, moves-slot-source-moved.test.ts, "a directory move while a
     * shard neither its source nor its target does not answer").
     */
    const ask = <T>(shard: string, work: () => Promise<T>): Promise<T> =>
      askedShard(shard, "which a directory key's move asks too", work, (kind) =>
        `cannot plan the move of key ${key} from ${from} to ${to}: ${shard} did not answer (${kind}), and a directory-key move asks every shard of the deployment, not only its source and target, whether it holds rows of the key that no fence row there refuses (a key's pins keep no history: rows a hand change of its pin left on ${shard} would be left out of every reader's sight by the move; docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away"). Nothing was recorded or pinned: plan it again once ${shard} answers`,
      );
    for (const [shard, pool] of this.options.shards) {
      if (shard === from || shard === to) continue;
      const { rows: fences } = await ask(shard, () =>
        pool.query<{ kind: string; state: string; excluded_keys: string[] | null }>(
          `select kind, state, excluded_keys from write_fences where (kind = 'directory' and unit_id = $1) or (kind = 'slot' and unit_id = $2)`,
          [key, String(slot)],
        ),
      );
      const own = fences.find((f) => f.kind === 'directory');
      const slotRow = fences.find((f) => f.kind === 'slot');
      if (own !== undefined && own.state !== 'open') continue;
      if (own === undefined && slotRow !== undefined && slotRow.state !== 'open' && !(slotRow.excluded_keys ?? []).includes(key)) continue;
      const held = await ask(shard, () => keyRowsOn(pool, key, slot));
      if (held.length === 0) continue;
      const now = await retryingSerializationFailures(() => this.options.directory.entry(key, this.options.catalog));
      if ((now?.shardId ?? (await this.ownerOfSlot(slot))?.shardId) !== from) return;
      const source = this.options.shards.get(from) as pg.Pool;
      const target = this.options.shards.get(to) as pg.Pool;
      if ((await sameDatabase(source, pool)) || (await sameDatabase(target, pool))) continue;
      const behind = own !== undefined ? 'its open row of the key' : slotRow === undefined ? 'no fence row of the key or of its slot' : `no row of the key, its slot ${slot}'s row there ${slotRow.state === 'open' ? 'open' : `keeping the key out (${slotRow.state})`}`;
      const routedBy = route === 'pinned' ? `its pin names ${from}` : `it has no pin and routes by hash to its slot's owner, ${from}`;
      throw new MoveConflictError(
        `cannot move key ${key} from ${from} to ${to}: ${shard} holds rows of the key (${describeRows(held)}) behind ${behind}, though the catalog sends the key to ${from} (${routedBy}): not a finished move's leftovers (they stand behind its 'moved' row), but rows no route sends readers to, and the move would copy ${from}'s rows of the key alone to ${to} and pin it there, leaving ${shard}'s out of every reader's sight for good. Nothing was recorded or pinned. ` +
          `Decide where the key's rows are by hand: where they are the key's own (its pin given to ${from} past the stores, catalog.repin_by_hand or SQL, while they stayed on ${shard}, and ${from}'s 'moved' row of the key deleted by hand as if they were on ${from}), pin the key back there (select catalog.repin_by_hand('${key}', '${shard}', '<reason>')), first copying to ${shard} by hand any rows of the key ${from} took since (select id from users where id = '${key}'; select id from documents where owner_id = '${key}') and deleting them on ${from}, then move it from ${shard} if wanted; where they are stale copies of rows on ${from} (copied there by hand), delete them on ${shard}, then plan the move again (docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away")`,
      );
    }
  }

  /**
   * The slot's owner in the latest map, as the plan's checks read it again before a refusal: on this
   * mover's catalog pool (in {@link refusals}, its checks' pool, bounded and cut at their `until`),
   * sent again on 40001 (a statement of its own). Read through the store's own pool, the checks'
   * time did not bound it: the verdict came at `until`, but the read waited on a lock of
   * catalog.slot_maps for as long as it was held, holding a connection of that pool (h132,
   * rebalance-refused-moves.test.ts, "leaves no read of a slot's owner inside the checks waiting ...").
   */
  private ownerOfSlot(slot: number): Promise<{ shardId: string | null; version: number } | null> {
    return retryingSerializationFailures(() => this.options.slotMaps.ownerOf(slot, this.options.catalog));
  }

  /** Whether `jobId` (a fence row's `job_id`) names a move job the catalog has unfinished. */
  private async unfinishedJob(jobId: string | null): Promise<boolean> {
    if (jobId === null) return false;
    const { rows } = await retryingSerializationFailures(() => this.options.catalog.query(`select 1 from catalog.move_jobs where id = $1::bigint and state not in ('done', 'failed', 'cancelled')`, [jobId]));
    return rows.length > 0;
  }

  /** Refuses a unit with more rows in one table than {@link MoverOptions.maxUnitRows}. */
  private async checkUnitSize(kind: 'slot' | 'directory', unitId: string, from: string): Promise<void> {
    const limit = this.maxUnitRows;
    if (!Number.isSafeInteger(limit) || limit < 1) throw new MoveError(`maxUnitRows must be a whole number of rows, at least 1 (got ${limit})`);
    const source = this.options.shards.get(from) as pg.Pool;
    // Both counts read the (slot, id) or primary-key and owner indexes; keys the directory keeps
    // elsewhere are counted too, which only errs on the safe side.
    const { rows } = await source.query<{ users: string; documents: string; document_keys: string }>(
      kind === 'slot'
        ? 'select (select count(*) from users where slot = $1::int) as users, (select count(*) from documents where slot = $1::int) as documents, (select count(*) from document_keys where slot = $1::int) as document_keys'
        : 'select (select count(*) from users where id = $1::uuid) as users, (select count(*) from documents where owner_id = $1::uuid) as documents, (select count(*) from document_keys where owner_id = $1::uuid) as document_keys',
      [unitId],
    );
    const counts = rows[0];
    for (const [table, n] of Object.entries(counts ?? {})) {
      if (Number(n) > limit) {
        throw new MoveRequestError(
          `${kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`} has ${Number(n).toLocaleString('en')} rows in ${table} on ${from}; one move takes at most ${limit.toLocaleString('en')} rows per table (its comparison before the fence holds every row's hash in memory). Nothing was planned.`,
          'too-large',
        );
      }
    }
  }

  /**
   * Runs (or resumes) a job until it is done, failed or cancelled, or until `until` (epoch ms,
   * `Date.now()`'s clock) has passed: then the run stops at its next safe point (between copy
   * pages or catch-up passes, or before a step that takes the fence; never while the fence is
   * held) and returns the job where it is, for the next run to resume. `abandonAt` (same clock)
   * is when the run must be over whatever it is doing: a shard statement still unanswered then
   * (a shard gone silent: no reset, no answer) has its connection closed, the step fails and
   * the job stays resumable, instead of the run waiting, its lease renewed, until the process
   * is killed. `stop`, once aborted, stops the run at its next safe point as `until` does (a
   * process that is shutting down: local mode's stop). Throws
   * {@link MoveBusyError} when another process runs it, and {@link MoveError} when a step fails in
   * a way that leaves the job resumable (the error is recorded on the job).
   */
  async run(id: number, runOptions: { readonly until?: number; readonly abandonAt?: number; readonly stop?: AbortSignal } = {}): Promise<MoveJob> {
    const { until, abandonAt, stop } = runOptions;
    if (until !== undefined && !Number.isFinite(until)) throw new MoveError(`until must be a time in epoch milliseconds (got ${until})`);
    if (abandonAt !== undefined && !Number.isFinite(abandonAt)) throw new MoveError(`abandonAt must be a time in epoch milliseconds (got ${abandonAt})`);
    const wallClock = this.options.wallClock ?? Date.now;
    const timeUp = until === undefined && stop === undefined ? undefined : (): boolean => stop?.aborted === true || (until !== undefined && wallClock() >= until);
    const ttlMs = this.options.leaseTtlMs ?? 30_000;
    if (!Number.isInteger(ttlMs) || ttlMs < 100) throw new MoveError(`leaseTtlMs must be a whole number of ms, at least 100 (got ${ttlMs})`);
    const fenceSlackMs = this.options.fenceSlackMs;
    if (fenceSlackMs !== undefined && (!Number.isInteger(fenceSlackMs) || fenceSlackMs < 500)) throw new MoveError(`fenceSlackMs must be a whole number of ms, at least 500 (got ${fenceSlackMs})`);
    const shardWaitMs = this.options.shardWaitMs ?? DEFAULT_SHARD_WAIT_MS;
    if (!Number.isInteger(shardWaitMs) || shardWaitMs < 1000) throw new MoveError(`shardWaitMs must be a whole number of ms, at least 1000 (got ${shardWaitMs})`);
    const copyLanes = this.options.copyLanes ?? 1;
    if (!Number.isInteger(copyLanes) || copyLanes < 1 || copyLanes > 16) throw new MoveError(`copyLanes must be a whole number from 1 to 16 (got ${copyLanes})`);
    const client = await this.options.catalog.connect();
    const catalog = new MoverCatalog(client, { idleInTransactionMs: ttlMs });
    let broken = false;
    // A connection dropped mid-run (failover, proxy, a killed backend) fails the next query,
    // which leaves the job resumable; the client's error event must not crash the process.
    const onError = (): void => {
      broken = true;
    };
    client.on('error', onError);
    try {
      const holder = `${this.options.holder ?? `mover pid ${process.pid}`} ${randomUUID()}`;
      // The claim, the renewals and the release are statements of their own, at the login's or
      // the database's default_transaction_isolation, each waiting for a transaction that holds
      // the job row: a cancel request's update (an instant), or the flip of a run whose lease
      // lapsed under it (up to its fence budget), which the claim must then judge as committed.
      // At REPEATABLE READ that commit failed them with 40001 (issue #15): the claim failed the
      // worker's run, and the job waited for its next tick; the release failed unseen, leaving the
      // job claimed by a run that had ended, every run refused as busy until the lease lapsed
      // (moves-catalog-isolation.test.ts). Sent again, each judges the row as it is then (see
      // retryingSerializationFailures): the claim takes the job over if the lease is still lapsed,
      // or finds it busy where that run renewed it as soon as its flip committed (which READ
      // COMMITTED, judging the row at the flip's commit, would not have seen): either is safe.
      const { rows } = await retryingSerializationFailures(() => catalog.query<JobRow & { lease_epoch: string }>(CLAIM, [id, holder, ttlMs]));
      const claimed = rows[0];
      if (!claimed) {
        const { rows: found } = await retryingSerializationFailures(() =>
          catalog.query<{ holder: string | null; until: Date | null }>('select lease_holder as holder, lease_expires_at as until from catalog.move_jobs where id = $1', [id]),
        );
        if (!found[0]) throw new MoveRequestError(`there is no move job #${id}`, 'not-found');
        throw new MoveBusyError(`move job #${id} is being run by ${found[0].holder ?? 'another mover'} (its lease runs until ${found[0].until?.toISOString() ?? '?'})`);
      }
      const epoch = Number(claimed.lease_epoch);
      // Renewed on the run's own connection, so the run needs no second catalog connection: in
      // its turn, at a statement boundary outside the port's transactions (see MoverCatalog),
      // never inside one, where a rollback would undo it. A period that passes while a renewal
      // still waits for its turn adds none. A renewal that finds another epoch changes nothing;
      // the run learns of it at its next write of the job row.
      let renewing = false;
      const renewal = setInterval(() => {
        if (renewing) return;
        renewing = true;
        retryingSerializationFailures(() => catalog.query(RENEW, [id, epoch, ttlMs, holder]))
          .catch(() => undefined)
          .finally(() => {
            renewing = false;
          });
      }, Math.floor(ttlMs / 3));
      try {
        const port = new PgMovePort({
          catalog,
          leaseEpoch: epoch,
          leaseHolder: holder,
          shards: this.options.shards,
          slotMaps: this.options.slotMaps,
          directory: this.options.directory,
          ...(this.options.clock ? { now: this.options.clock } : {}),
          ...(timeUp ? { timeUp } : {}),
          ...(abandonAt === undefined ? {} : { abandonInMs: () => abandonAt - wallClock() }),
          checkoutBoundMs: shardWaitMs,
          settings: {
            batchRows: this.options.batchRows ?? 5000,
            copyBatchRows: this.options.copyBatchRows ?? 20_000,
            copyLanes,
            catchUpThreshold: this.options.catchUpThreshold ?? 50,
            fenceBudgetMs: this.options.fenceBudgetMs ?? 2000,
            ...(fenceSlackMs === undefined ? {} : { fenceSlackMs }),
            drainTimeoutMs: this.options.drainTimeoutMs ?? 30_000,
            readerGraceMs: this.options.readerGraceMs ?? 0,
            actor: this.options.actor ?? 'mover',
            maxUnitRows: this.maxUnitRows,
            idleInTransactionMs: ttlMs,
          },
        });
        const job = toJob(claimed);
        // The shards learn of this run before it acts on them: the run it replaces, were it only
        // stalled, is refused by both from now on.
        if (!isTerminal(job.state)) {
          // The steps record their own errors on the job; this one comes before them.
          await port.claimPermits(job).catch(async (err: unknown) => {
            await port.recordError(job, `${job.state}: ${(err as Error).message}`).catch(() => undefined);
            throw err;
          });
        }
        return await driveMove(job, port, {
          ...(this.options.fenceAttempts === undefined ? {} : { fenceAttempts: this.options.fenceAttempts }),
          ...(this.options.fenceRetryPauseMs === undefined ? {} : { fenceRetryPauseMs: this.options.fenceRetryPauseMs }),
          ...(this.options.hook ? { hook: this.options.hook } : {}),
          ...(timeUp ? { timeUp } : {}),
        });
      } finally {
        clearInterval(renewal);
        // A release that fails leaves the claim to lapse at its expiry.
        await retryingSerializationFailures(() => catalog.query(RELEASE, [id, epoch, holder])).catch(() => undefined);
      }
    } finally {
      client.off('error', onError);
      client.release(broken || catalog.dropped || undefined);
    }
  }

  /** Resumes (or finishes rolling back) every unfinished job, one after another. */
  async resumeAll(): Promise<MoveJob[]> {
    const out: MoveJob[] = [];
    for (const job of await this.unfinished()) out.push(await this.run(job.id));
    return out;
  }

  /**
   * Asks for a job to be cancelled. If no other process runs it, the rollback happens now and the
   * returned job is `cancelled`; otherwise the running mover rolls back at its next batch and the
   * returned job has `cancelRequested`. Throws {@link MoveNotCancellableError} once the new owner
   * is being published, or while the catalog routes the unit to the move's target (see
   * {@link requestCancel}); a cancel the rollback refused returns the job the run went on to (its
   * error says `cancel refused: ...`).
   */
  async cancel(id: number): Promise<MoveJob> {
    await this.requestCancel(id);
    try {
      return await this.run(id);
    } catch (err) {
      if (err instanceof MoveBusyError) return this.get(id);
      throw err;
    }
  }

  /**
   * Records a cancellation request and returns the job as it is then: the run that holds the job,
   * or the next one, rolls it back (the scaling API answers at once rather than delete a copy
   * within one request). Throws {@link MoveNotCancellableError} once the new owner is published or
   * the job is finished, or while the catalog routes the unit to the move's target (a rollback
   * would hide the rows found there: the move finishes on the target), and
   * {@link MoveRequestError} (`not-found`) for an unknown job. A request recorded just before the
   * catalog turned to the target is refused by the rollback itself: the job's error says so.
   */
  async requestCancel(id: number): Promise<MoveJob> {
    const asked = await this.get(id);
    if (canCancel({ state: asked.state, flipStarted: asked.flipStarted })) {
      const read = await ownerRead(asked, this.options.directory, this.options.slotMaps, this.options.catalog);
      if (targetRouteRefusal(asked, read) !== null) {
        // Its words say which step the move is in: its copy on the target, or nothing copied yet
        // (the target's fence row, read within TARGET_ROW_READ_MS; unread, a silent target, say,
        // the copy's words, as before), and then the key's rows the target took by hash, counted
        // within the same bound (they stop the move at its check of the target).
        const target = this.options.shards.get(asked.to);
        const step: { copied: boolean; held: string[] } =
          target === undefined
            ? { copied: true, held: [] }
            : await withNodeDeadline(target, TARGET_ROW_READ_MS, asked.to, async (c) => {
                const copied = targetHoldsCopy(await targetFenceRow(c, asked), asked);
                return { copied, held: copied ? [] : await heldOnTarget(c, asked) };
              }).catch(() => ({ copied: true, held: [] }));
        const refusal = targetRouteRefusal(asked, read, step.copied, step.held) ?? '';
        // A move that cannot finish on the target either (see targetRouteStops): its words end by
        // sending the operator to decide the key's owner by hand.
        const finishes = targetRouteStops(asked, read, step.copied, step.held) ? '' : `; the move finishes on ${asked.to}, where the catalog routes the unit`;
        throw new MoveNotCancellableError(`move job #${id} cannot be cancelled: ${refusal}${finishes}`);
      }
    }
    // In a READ COMMITTED transaction of its own, whatever the login's or the database's
    // default_transaction_isolation: the UPDATE waits for a run holding the job row (a flip, up to
    // its fence budget) and must then judge the row that run committed, as READ COMMITTED does
    // (the flip published: nothing to cancel). A statement outside a transaction runs at the
    // default level, and at REPEATABLE READ its snapshot, older than that commit, failed it with
    // "could not serialize access due to concurrent update" (40001), which the API answered 503
    // as if the catalog had not answered (moves-catalog-isolation.test.ts; issue #15).
    const rows = await inTransaction(this.options.catalog, 'begin isolation level read committed', async (client) => {
      const updated = await client.query<JobRow>(
        `update catalog.move_jobs set cancel_requested = true, updated_at = now()
          where id = $1 and flip_started_at is null and state <> all($2::text[]) returning *`,
        [id, TERMINAL_STATES],
      );
      return updated.rows;
    });
    if (!rows[0]) {
      const job = await this.get(id);
      if (canCancel({ state: job.state, flipStarted: job.flipStarted })) throw new MoveError(`move job #${id} changed while cancelling; try again`);
      throw new MoveNotCancellableError(isTerminal(job.state) ? `move job #${id} is already ${job.state}` : `move job #${id} has published the new owner; it can only finish`);
    }
    return toJob(rows[0]);
  }
}

/** The identity of the database a pool reaches: its oid and its server's start, to the microsecond. */
const DATABASE_IDENTITY_SQL = `select (select oid from pg_database where datname = current_database())::text || '@' || (extract(epoch from pg_postmaster_start_time()) * 1000000)::bigint::text as id`;

/**
 * `work`'s answer from `shard`, a shard the plan's checks ask beside the move's source and target;
 * where it does not answer (a node's failure, or its statement cancelled), a
 * {@link MovePlanShardUnanswered} in `words(kind)` (the failure's kind, sqlstate.ts failureKind:
 * never the driver's text, which names an address), `asked` saying in a few words why that shard
 * was asked. Anything else is thrown as it is.
 */
async function askedShard<T>(shard: string, asked: string, work: () => Promise<T>, words: (kind: string) => string): Promise<T> {
  try {
    return await work();
  } catch (err) {
    // Already the plan's answer (shardBoundedPool: the shard login's own statement_timeout, named;
    // the deadline passed before the read), whose words ("statement_timeout") isNodeFailure would
    // take for a node's failure.
    if (err instanceof MoveError) throw err;
    if (!isNodeFailure(err) && (err as { code?: unknown } | null)?.code !== QUERY_CANCELED) throw err;
    throw new MovePlanShardUnanswered(words(failureKind(err)), shard, { cause: err, asked });
  }
}

/** Whether two pools reach one database (see {@link DATABASE_IDENTITY_SQL}). */
async function sameDatabase(a: pg.Pool, b: pg.Pool): Promise<boolean> {
  const [x, y] = await Promise.all([a.query<{ id: string }>(DATABASE_IDENTITY_SQL), b.query<{ id: string }>(DATABASE_IDENTITY_SQL)]);
  return x.rows[0]?.id !== undefined && x.rows[0].id === y.rows[0]?.id;
}

/** Why a plan within a request stopped at `until` (epoch ms), already past, `when` it found so. */
function outOfTime(when: string, until: number): string {
  return `the request's deadline (API Gateway's 29 s or the function's end, less the answer margin) had passed ${when}${Date.now() - until >= 1 ? `, ${Math.round(Date.now() - until)} ms before` : ''}, and a job recorded after it would be answered to no one. Nothing was recorded: plan it again`;
}

/**
 * The table lock modes that conflict with SHARE (what a slot move's plan takes on catalog.slot_maps)
 * other than ROW EXCLUSIVE, a map's insert's, strongest first: a VACUUM's or ANALYZE's, a LOCK
 * TABLE's, a migration's ALTER TABLE's.
 */
const SHARE_CONFLICTS_BUT_INSERTS = ['AccessExclusiveLock', 'ExclusiveLock', 'ShareRowExclusiveLock', 'ShareUpdateExclusiveLock'] as const;

/**
 * The sessions other than `client`'s holding `table` in one of `modes` (pg_locks, which every login
 * reads; the session's backend_type from pg_stat_activity, which names an autovacuum worker to any
 * login), in the order of `modes`: for a refusal that names who held a lock it waited for.
 */
async function otherHoldersOf(client: pg.PoolClient, table: string, modes: readonly string[]): Promise<Array<{ mode: string; pid: number; backendType: string }>> {
  const { rows } = await client.query<{ mode: string; pid: number; backend_type: string | null }>(
    `select l.mode, l.pid, a.backend_type from pg_locks l left join pg_stat_activity a on a.pid = l.pid
      where l.locktype = 'relation' and l.relation = to_regclass($1) and l.granted and l.pid <> pg_backend_pid() and l.mode = any($2::text[])
      order by array_position($2::text[], l.mode), l.pid`,
    [table, modes],
  );
  return rows.map((r) => ({ mode: r.mode, pid: Number(r.pid), backendType: r.backend_type ?? '' }));
}
