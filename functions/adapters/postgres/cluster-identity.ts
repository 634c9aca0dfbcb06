/**
 * Which PostgreSQL cluster a server belongs to, for read-your-writes tokens (`ReadToken.clusterId`,
 * docs/sharding-spec.md): the system identifier in its control file, which initdb chooses and a
 * physical replica copies with the base backup. WAL positions and timelines are a cluster's own.
 * An RDS blue/green deployment for a major version upgrade feeds green, another cluster, by
 * logical replication ("Amazon RDS uses logical replication instead",
 * https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/blue-green-deployments-replication-type.html),
 * and after the switchover the shard's addresses (and RDS Proxy) reach green: a token of blue's
 * position, measured against green's WAL, answered 410 "write lost" for a write green holds, or
 * was served a stale miss by a green replica already past that number
 * (test/integration/sharding/read-token-blue-green.test.ts).
 *
 * The identifier is read in a statement the write or the read sends anyway (the write's BEGIN,
 * the primary check, a replica's token check, the reader's heartbeat): no round trip of its own.
 * It is not cached per pool or connection: through a proxy, or a DNS name that a switchover moves,
 * the same pool and even the same open connection reach another cluster afterwards. Reading it
 * (`pg_control_system()` reads the control file, a few kilobytes) costs no more than the
 * statement's other functions. What is cached, per pool, is whether the login may call it: a
 * provider may revoke the control-file functions (see replica-lag.ts, `withTimelineSql`), and a
 * statement naming one would then fail. That is learned once, by one statement on a connection
 * that needs it (each of a new pool's first concurrent callers asks on its own); a login refused
 * gets tokens without the id, read as before. A grant can go later (`REVOKE EXECUTE ON FUNCTION
 * pg_control_system() FROM ...`, a switchover that puts a cluster behind the address where the
 * login lacks it): kept for the pool's life, "may" then failed every statement that named the
 * function (42501), every write, read with a token of a cluster, heartbeat, fence and release,
 * until the process restarted (test/integration/sharding/cluster-id-revoked*.test.ts). So a
 * statement that embedded {@link CLUSTER_ID_SQL} and was refused forgets the answer
 * ({@link forgetClusterIdReadable}), which is asked again, and is sent again, once, without it
 * where sending it again is safe: where nothing of the refused statement took effect (a refused
 * function is refused as the statement starts, before it reads or locks a row) and the statement
 * changes nothing, or its transaction is rolled back and no work of the caller's ran in it
 * ({@link withClusterIdReadable}). The opposite (refused, granted later: `GRANT EXECUTE ON
 * FUNCTION pg_control_system() TO ...`, a switchover back to a cluster where the login has it) was
 * kept for the pool's life: every token of the pool went without the id, and so every read with
 * one judged by position and timeline alone (a blue/green switchover not seen), until the process
 * restarted. A refusal now holds for {@link CLUSTER_ID_RECHECK_MS} (per pool,
 * {@link recheckClusterIdRefusal}): then the next caller that needs the answer asks again, once,
 * on its own connection, and the pool's other callers keep the refusal meanwhile (the question is
 * claimed as it is sent: one statement per pool per interval at most, never one per write).
 */
import type pg from 'pg';
import { hasSqlState, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION } from './sqlstate.js';

/**
 * The server's cluster id as tokens carry it (16 lower-case hex digits; PostgreSQL's `to_hex` of
 * a negative `bigint` is its 64-bit two's complement, as `clusterIdFromSystemIdentifier`'s), as
 * a SQL expression.
 */
export const CLUSTER_ID_SQL = `(select lpad(to_hex(system_identifier), 16, '0') from pg_catalog.pg_control_system())`;

/** Per pool, whether its login may read {@link CLUSTER_ID_SQL}, once a connection of it answered. */
const readable = new WeakMap<pg.Pool, boolean>();

/**
 * How long a refusal of the cluster id is kept before it is asked again (ms), unless the pool has
 * its own ({@link recheckClusterIdRefusal}). A refused question costs one failed statement (an
 * ERROR line in the server's log) and one round trip on a connection that needs the answer: once
 * every 5 minutes per pool is nothing beside the pool's traffic, and a grant given is in tokens
 * within that.
 */
export const CLUSTER_ID_RECHECK_MS = 5 * 60_000;

/** When a refusal may be asked again: an interval and the clock it is measured on (monotonic, ms). */
export interface ClusterIdRecheck {
  readonly intervalMs: number;
  readonly now: () => number;
}

const DEFAULT_RECHECK: ClusterIdRecheck = { intervalMs: CLUSTER_ID_RECHECK_MS, now: () => performance.now() };

/** Per pool, its own {@link ClusterIdRecheck} (tests: a clock of their own, no wall-clock wait). */
const rechecks = new WeakMap<pg.Pool, ClusterIdRecheck>();

/**
 * Per pool whose answer is a refusal, when (on its {@link ClusterIdRecheck}'s clock) it was
 * learned, or last claimed for asking again: the refusal holds until `intervalMs` past it.
 */
const refusedAt = new WeakMap<pg.Pool, number>();

/**
 * Sets how long `pool`'s refusals of the cluster id are kept before they are asked again, and on
 * which clock (default {@link CLUSTER_ID_RECHECK_MS} on `performance.now()`). Part settings keep
 * the rest as they were.
 */
export function recheckClusterIdRefusal(pool: pg.Pool, recheck: Partial<ClusterIdRecheck>): void {
  rechecks.set(pool, { ...(rechecks.get(pool) ?? DEFAULT_RECHECK), ...recheck });
}

/**
 * `pool`'s {@link ClusterIdRecheck}: also the interval and clock of the other per-pool refusals
 * kept alike (the mover's of `timeline_history()`, move-port.ts), so that a test sets one clock.
 */
export function refusalRecheck(pool: pg.Pool): ClusterIdRecheck {
  return rechecks.get(pool) ?? DEFAULT_RECHECK;
}

/** `pool`'s answer as known now: a refusal past its interval is not known (undefined). */
function knownNow(pool: pg.Pool): boolean | undefined {
  const known = readable.get(pool);
  if (known !== false) return known;
  const { intervalMs, now } = rechecks.get(pool) ?? DEFAULT_RECHECK;
  return now() - (refusedAt.get(pool) ?? Number.NEGATIVE_INFINITY) >= intervalMs ? undefined : false;
}

/** Keeps `pool`'s answer as a refusal, learned (or claimed for asking again) now. */
function refuse(pool: pg.Pool): void {
  readable.set(pool, false);
  refusedAt.set(pool, (rechecks.get(pool) ?? DEFAULT_RECHECK).now());
}

/**
 * Per pool, how many times its answer "may" was forgotten ({@link forgetClusterIdReadable}). A
 * question sent before a forget whose "may" is delivered after it (the statement ran before the
 * REVOKE, its answer came late: a slow connection, a busy event loop) is not kept: it was the
 * answer the refusal had just proved wrong, and kept, the refused write asked again, was told
 * "may", was refused again and failed with 42501, its one resend spent
 * (test/integration/sharding/cluster-id-revoked.test.ts, h152).
 */
const forgotten = new WeakMap<pg.Pool, number>();

/**
 * Whether `pool`'s login may read {@link CLUSTER_ID_SQL}: asked on `client` (one of its
 * connections, not in a transaction, where a refusal would abort it, unless `inTransaction` says
 * it is: then behind a savepoint) until one of the pool's
 * connections has answered, then known: "may" until a statement is refused it
 * ({@link forgetClusterIdReadable}), a refusal (42501, or 42883 where a provider removed the
 * function) for its interval ({@link recheckClusterIdRefusal}), after which the first caller asks
 * again and claims the question (the others keep the refusal, for another interval should the
 * question fail otherwise, or not come back). Another failure (the connection broke, the
 * caller's deadline cancelled it) is the caller's own, thrown, and asked again next time. Callers
 * that find no answer yet each ask on their own connection, never wait on another's question: a
 * shared question made every write and read of a new pool wait for the first connection's answer
 * (past their own deadlines, which watch their own connections) and fail with its failure, a
 * write on a healthy connection reported cancelled by another session, nothing committed
 * (test/integration/sharding/cluster-id-probe.test.ts). So a pool's first concurrent callers
 * each send it once: a short statement, on connections that are opening anyway.
 */
export async function clusterIdReadable(pool: pg.Pool, client: pg.ClientBase, options: { readonly inTransaction?: boolean } = {}): Promise<boolean> {
  const known = knownNow(pool);
  if (known !== undefined) return known;
  // A refusal past its interval: claimed, so that the pool's other callers keep it while this asks.
  if (readable.get(pool) === false) refuse(pool);
  const forgottenBefore = forgotten.get(pool) ?? 0;
  try {
    // In a transaction (`inTransaction`), behind a savepoint, which a refusal rolls back to: the
    // transaction goes on (one round trip more, on a refusal only).
    await client.query(`${options.inTransaction === true ? 'savepoint cluster_id_question; ' : ''}select ${CLUSTER_ID_SQL} as cluster_id`);
  } catch (error) {
    if (!hasSqlState(error, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION)) throw error;
    if (options.inTransaction === true) await client.query('rollback to savepoint cluster_id_question');
    refuse(pool);
    return false;
  }
  // A "may" answered before a forget since (see `forgotten`): the caller's, not the pool's.
  if ((forgotten.get(pool) ?? 0) === forgottenBefore) readable.set(pool, true);
  return true;
}

/**
 * Whether `error`, the failure of a statement that embedded {@link CLUSTER_ID_SQL}, may be its
 * refusal: 42501 (the login lost EXECUTE on `pg_control_system()`) or 42883 (a provider removed
 * it). Another part of the statement may have been refused instead: asked again alone
 * ({@link clusterIdReadable}) after {@link forgetClusterIdReadable}, the question tells which.
 */
export function clusterIdRefused(error: unknown): boolean {
  return hasSqlState(error, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION);
}

/**
 * Forgets that `pool`'s login may read the cluster id, after a statement that embedded
 * {@link CLUSTER_ID_SQL} on one of its connections was refused ({@link clusterIdRefused}): the
 * next {@link clusterIdReadable} asks again. A refusal known is kept (forgetting it would only
 * send the question again).
 */
export function forgetClusterIdReadable(pool: pg.Pool): void {
  if (readable.get(pool) === false) return;
  // Counted even when nothing is known (another caller forgot first): a question still out, sent
  // before the refusal, must not put its "may" back.
  readable.delete(pool);
  forgotten.set(pool, (forgotten.get(pool) ?? 0) + 1);
}

/**
 * Runs `run` with whether `pool`'s login may read the cluster id ({@link clusterIdReadable}, asked
 * on `client` when not known, behind a savepoint with `inTransaction`, for a `client` in a
 * transaction; not asked, and false, when `wanted` is false); when `run` was given
 * true and failed with {@link clusterIdRefused}, forgets the answer, lets `undo` leave `client`
 * out of the transaction `run` may have begun on it (or, `inTransaction`, roll it back to a
 * savepoint `run` set before its statement), asks again on `client` and runs `run` once
 * more with the new answer (false: without the id). Its second failure, or any other, is thrown.
 * Only for a `run` that may be sent again after such a failure: one that changes nothing (a read,
 * a check, a position), or one whose transaction the refusal rolled back before any of the
 * caller's work ran in it.
 */
export async function withClusterIdReadable<T>(
  pool: pg.Pool,
  client: pg.ClientBase,
  run: (readable: boolean) => Promise<T>,
  options: { readonly wanted?: boolean; readonly undo?: () => Promise<unknown>; readonly inTransaction?: boolean } = {},
): Promise<T> {
  if (options.wanted === false) return run(false);
  const inTransaction = { inTransaction: options.inTransaction === true };
  const asked = await clusterIdReadable(pool, client, inTransaction);
  if (!asked) return run(false);
  try {
    return await run(true);
  } catch (error) {
    if (!clusterIdRefused(error)) throw error;
    forgetClusterIdReadable(pool);
    await options.undo?.();
    return run(await clusterIdReadable(pool, client, inTransaction));
  }
}

/**
 * What {@link clusterIdReadable} learned for `pool` (undefined: not asked yet, or a refusal past
 * its interval, to be asked again), without asking.
 */
export function clusterIdReadableKnown(pool: pg.Pool): boolean | undefined {
  return knownNow(pool);
}

/** The cluster id in a row's `cluster_id` column, when it is one. */
export function clusterIdOfRow(row: unknown): string | undefined {
  const id = (row as { cluster_id?: unknown } | undefined)?.cluster_id;
  return typeof id === 'string' && /^[0-9a-f]{16}$/.test(id) ? id : undefined;
}
