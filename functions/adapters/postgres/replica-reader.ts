/**
 * Reads from fresh replicas. Every health interval the reader probes each shard's primary (its
 * WAL position) and replicas (replay position, replay lag, receiver state) in parallel, each
 * probe bounded by the health-check timeout. A read goes to the least lagged replica within the
 * configured bounds, in seconds and in bytes, or to the primary. A read carrying a
 * read-your-writes token (see {@link captureWriteToken}) only goes to a replica that has
 * replayed past it. A replica whose query fails with a connection-level error is set aside at
 * once and the read is retried on the next replica or the primary, so a replica going down
 * costs callers one retried query, and no error. A replica that stops answering without closing
 * its connections (a frozen host, a black-holed path) fails no query: a read waiting on it is
 * given up, and retried the same way, as soon as a probe finds the replica down.
 *
 * Replay lag in seconds is measured from the primary's side (see replica-lag.ts): every probe
 * first commits a heartbeat on the primary, and a replica that replays past it within
 * {@link HEARTBEAT_WAIT_MS} is current. The byte lag (primary WAL position minus replay
 * position) is a second bound. A probe vouches for a replica only until its data, as of the
 * probe's heartbeat, is `max_replica_lag_seconds` old (a replica may stop replaying right after
 * it); the reader probes at least every half bound, so a current replica is vouched for all along.
 *
 * @example
 * ```ts
 * const pools = ShardPools.fromConfig(config);
 * const reader = new ReplicaReader(pools, { bounds: freshnessBoundsFromConfig(config), intervalMs: 10_000 });
 * await reader.start();
 * const { token } = await writeWithToken(pools.primary('shard_001').pool, (c) => c.query('insert ...'));
 * const { rows, servedBy } = await reader.query('shard_001', 'select * from documents where id = $1', [id], { token });
 * reader.stop();
 * await pools.end();
 * ```
 */
import pg from 'pg';
import { formatLsn, isLsn, LsnError, normalizeWalPosition, parseLsn } from '../../core/sharding/lsn.js';
import { rankReadTargets, replicaIneligibility, type FreshnessBounds, type ReadTarget, type ReplicaState } from '../../core/sharding/replica-choice.js';
import { lostInFailover, parseTimelineHistory, TimelineHistoryError, type LostWrite, type TimelineSwitch } from '../../core/sharding/timeline-history.js';
import { commitHeartbeat, probeReplicaLag, readPrimaryPosition, withTimelineSql } from './replica-lag.js';
import { CLUSTER_ID_SQL, clusterIdOfRow, withClusterIdReadable } from './cluster-identity.js';
import { checkDeadlineMs, connectBy, DeadlinePassedError, holdToDeadline, idleTimeoutOf, NodeTimeoutError, otherCancelWords, queryCanceled, SessionTimeoutError, sessionTimeoutOf, type CancelledByOtherOptions, type ClientDeadline } from './deadline.js';
import { dropConnection } from './listening-client.js';
import type { ShardNode, ShardPools } from './shard-pools.js';
import { hasSqlState, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION } from './sqlstate.js';
import { COMMIT_SETTING_SQL, commitSettingOf, tokenPositionSql } from './token-position.js';
import { inClientTransaction } from './transaction.js';

/** No node of the shard could serve the read (every replica and the primary failed). */
export class ShardUnavailableError extends Error {
  override readonly name = 'ShardUnavailableError';
  readonly shardId: string;
  constructor(shardId: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.shardId = shardId;
  }
}

/**
 * The server a shard's primary address reached is in recovery: a standby, not the primary (after
 * a failover, a cached DNS answer naming the old writer, now a reader, or a configuration not yet
 * updated). What it answers may lag what is committed, so a read that went to the primary (to see
 * what is committed, or a write no replica has replayed) is not served there.
 */
export class PrimaryInRecoveryError extends Error {
  override readonly name = 'PrimaryInRecoveryError';
  /** A node failure for {@link isNodeFailure}: its connection is discarded, the read goes on to the next node, if any. */
  readonly code = 'ENOTPRIMARY';
  readonly nodeId: string;
  constructor(nodeId: string) {
    super(`${nodeId} is in recovery (a standby, not the shard's primary: its address may still name the old primary after a failover); a read of what is committed is not served there`);
    this.nodeId = nodeId;
  }
}

/** What {@link PRIMARY_CHECK_SQL} found on a server out of recovery: its timeline and start, and its WAL insert position then. */
interface PrimaryCheck {
  readonly timeline: number;
  readonly server: string;
  readonly insertLsn: bigint;
  /** The server's cluster (cluster-identity.ts); undefined when not asked, or not readable by the login. */
  readonly clusterId?: string;
}

/**
 * Connections a read found on a server out of recovery, with what the check found (null when the
 * timeline could not be told). Only an untokened read trusts it for the connection's life, and it
 * only needs "not in recovery" from it: a server never goes back into recovery without a restart,
 * which ends the connections made straight to it, and behind RDS Proxy a connection outlives
 * its server but the proxy lends it only the current writer ("The proxy automatically determines
 * the current writer instance", https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.howitworks.html).
 * A read with a token's timeline checks its connection's server again, each time
 * ({@link PrimaryCheck}, see withReadClient): which server that is can change under an open
 * connection ("the DB instance associated with the proxy changes while the connection remains
 * open", https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.examples.html).
 */
const primaryTimelineOf = new WeakMap<pg.ClientBase, PrimaryCheck | null>();

/**
 * The primary check: in recovery, or the primary's timeline (the first 8 hex digits of its
 * current WAL file's name), when the server started, and its WAL insert position. The start tells
 * servers apart that reached the same timeline number by different pasts: without a shared WAL
 * archive, two replicas of one primary promoted one after the other (the first failed too, or was
 * given up) both take timeline N + 1, each with its own switchpoint, and a history kept for the
 * first would be wrong for the second. The insert position is what a token of the server's own
 * timeline is measured against ({@link pastPrimaryEnd}): one statement, one round trip, for all four.
 */
const PRIMARY_CHECK_SQL = `select pg_is_in_recovery() as in_recovery,
  case when pg_is_in_recovery() then null else ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint end as tli,
  (extract(epoch from pg_postmaster_start_time()) * 1000000)::bigint::text as started,
  case when pg_is_in_recovery() then null else pg_current_wal_insert_lsn()::text end as lsn`;

/** {@link PRIMARY_CHECK_SQL} with the server's cluster id, for a token that carries one. */
const PRIMARY_CHECK_WITH_CLUSTER_SQL = `${PRIMARY_CHECK_SQL}, ${CLUSTER_ID_SQL} as cluster_id`;

/**
 * Runs {@link PRIMARY_CHECK_SQL} on `client`, lent on `nodeId`'s primary address: the server's
 * {@link PrimaryCheck} (null when its timeline or position cannot be read), or a
 * {@link PrimaryInRecoveryError} when it is a standby.
 */
async function checkPrimary(client: pg.ClientBase, nodeId: string, sql: string = PRIMARY_CHECK_SQL): Promise<PrimaryCheck | null> {
  const { rows } = await client.query<PrimaryCheckRow>(sql);
  return primaryCheckOf(rows[0], nodeId);
}

type PrimaryCheckRow = { in_recovery: boolean; tli: string | null; started: string; lsn: string | null; cluster_id?: string };

/** {@link checkPrimary}'s verdict on the row {@link PRIMARY_CHECK_SQL} answered. */
function primaryCheckOf(row: PrimaryCheckRow | undefined, nodeId: string): PrimaryCheck | null {
  if (row?.in_recovery === true) throw new PrimaryInRecoveryError(nodeId);
  if (row?.tli == null || row.lsn === null || !isLsn(row.lsn)) return null;
  const clusterId = clusterIdOfRow(row);
  return { timeline: Number(row.tli), server: row.started, insertLsn: parseLsn(row.lsn), ...(clusterId === undefined ? {} : { clusterId }) };
}

/**
 * The write of `token`, a token of the timeline the `primary` checked is on, when that primary
 * has not reached its position: the server that acknowledged it is not this one, though on the
 * same timeline number. Two replicas promoted one after the other without a shared WAL archive
 * both take timeline N + 1 (the first failed too, or was given up); a write the first
 * acknowledged on N + 1 is in no history of the second, whose N + 1 is its own. Read as usual,
 * the second's primary answered a miss as a 404, as if the write had never been made
 * (`test/integration/sharding/timeline-lost-write-same-timeline.test.ts`). A token this server
 * issued is never past its insert position while it runs (which only moves on; the token is its
 * flush or insert position read after the commit, or a page header before it). Nor after a crash
 * and restart on the same timeline, for a write committed with `synchronous_commit` not off: its
 * token is the flush position (`TOKEN_POSITION_SQL`, token-position.ts), which crash recovery does not take
 * back. A token of the insert position did include other sessions' WAL not yet flushed, which the
 * crash lost, and a miss with it on the server that held the write answered 410
 * (`test/integration/sharding/timeline-token-crash-restart.test.ts`). A write committed with
 * `synchronous_commit = off` keeps the insert position: such a write itself may be lost in a
 * crash, and its token past the restarted server's end then says so. The answer is still marked
 * `pastWalEnd`: a caller answers it for a miss only, never for a list that may hold the write
 * (tokens issued before the flush position was, and a session that lowered the setting for its
 * transaction alone, see `TOKEN_POSITION_SQL` in token-position.ts). Once
 * the second server's WAL passes the token's position the two cannot be told apart (the limit
 * docs/sharding-spec.md states). No query of its own: the position is the one the read's primary
 * check found ({@link PRIMARY_CHECK_SQL}), on the server the read runs on. (A position kept per
 * timeline and server, to spare a query, was the wrong server's once a proxy had moved the
 * connection: test/integration/sharding/timeline-lost-write-writer-proxy.test.ts.)
 */
function pastPrimaryEnd(shardId: string, { timeline, insertLsn }: PrimaryCheck, token: string): LostWrite | undefined {
  return parseLsn(token) <= insertLsn ? undefined : { shardId, lsn: token, timeline, forkLsn: formatLsn(insertLsn), currentTimeline: timeline, pastWalEnd: true };
}

/** Shard migration 027: the primary's timeline and its history file's text (NULL when its owner may not read it). */
const TIMELINE_HISTORY_SQL = 'select timeline::text as timeline, history from timeline_history()';

/**
 * How long "no history" (migration 027 not applied, its owner without the right to read the file,
 * a file PostgreSQL would not write) is believed before the shard is asked again: a history, once
 * read, is kept for good (a timeline's never changes), a miss is not (the migration may come later).
 */
export const TIMELINE_HISTORY_RETRY_MS = 60_000;

/**
 * The history of the timeline `client`'s primary is on, parsed; null when it cannot be had
 * (see {@link TIMELINE_HISTORY_RETRY_MS}). Other errors (the connection failed) are thrown.
 */
async function readTimelineHistory(client: pg.ClientBase, timeline: number, inTransaction = false): Promise<readonly TimelineSwitch[] | null> {
  try {
    // In the read's own transaction ({@link ReadOptions.begin}), behind a savepoint in the same
    // round trip: a history this login cannot read must not abort the read.
    const answer: unknown = await client.query(inTransaction ? `savepoint timeline_history; ${TIMELINE_HISTORY_SQL}; release savepoint timeline_history` : TIMELINE_HISTORY_SQL).catch(async (error: unknown) => {
      if (inTransaction && hasSqlState(error, UNDEFINED_FUNCTION, INSUFFICIENT_PRIVILEGE)) await client.query('rollback to savepoint timeline_history');
      throw error;
    });
    const rows = ((inTransaction ? (answer as pg.QueryResult[])[1] : (answer as pg.QueryResult)) as pg.QueryResult<{ timeline: string; history: string | null }>).rows;
    const row = rows[0];
    if (row === undefined || row.history === null || Number(row.timeline) !== timeline) return null;
    return parseTimelineHistory(row.history, timeline);
  } catch (error) {
    if (error instanceof TimelineHistoryError || hasSqlState(error, UNDEFINED_FUNCTION, INSUFFICIENT_PRIVILEGE)) return null;
    throw error;
  }
}

/**
 * `work`, another request's query this one waits for, or a {@link DeadlinePassedError} (`waited`,
 * on `nodeId`) once `deadlineAt` (`Date.now()` ms) has passed, whichever comes first; `work` itself
 * goes on (it is someone else's to end). Not `query`: that phase says the node did not answer and
 * the connection was dropped for it, when here the node may answer well and the wait was on another
 * request's statement (a lock it waits on, a slow plan). No deadline: `work` alone.
 */
async function byDeadline<T>(work: Promise<T>, deadlineAt: number | undefined, nodeId: string): Promise<T> {
  if (deadlineAt === undefined) return work;
  let timer: NodeJS.Timeout | undefined;
  const passed = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlinePassedError(nodeId, 'waited')), Math.max(0, deadlineAt - Date.now()));
  });
  try {
    return await Promise.race([work, passed]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A read was waiting on a replica that a probe has since found down (no answer within the probe
 * timeout, or no longer in recovery): its connection is dropped and the read moves on.
 */
export class ReplicaDownError extends Error {
  override readonly name = 'ReplicaDownError';
  /** A node failure for {@link isNodeFailure}: the read is retried on the next node. */
  readonly code = 'ENODEDOWN';
  readonly nodeId: string;
  constructor(nodeId: string) {
    super(`${nodeId} stopped answering its health probe while a read waited on it; the read's connection was abandoned`);
    this.nodeId = nodeId;
  }
}

/**
 * A statement of a read held to a deadline was cancelled on the server by another session's
 * request (`pg_cancel_backend`, an operator) before the deadline asked for any: the read failed,
 * not by its deadline. (On a server whose messages are not in English, in a transaction held to
 * the deadline, it may be the session's own shorter `statement_timeout` too: the message says so,
 * `otherCancelWords`, deadline.ts.) `cause` is pg's error (57014). Not retried on another node: a cancelled
 * read was stopped on purpose.
 */
export class ReadCancelledError extends Error {
  override readonly name = 'ReadCancelledError';
  constructor(
    readonly nodeId: string,
    cause: unknown,
  ) {
    super(`${nodeId}: a statement of the read was cancelled on the server by ${otherCancelWords(cause)}, before the read's deadline`, { cause });
  }
}

export interface ReplicaReaderOptions {
  readonly bounds: FreshnessBounds;
  /** Time between two probes of every replica. */
  readonly intervalMs: number;
  /** Budget of one probe (connect and query). Default 2000 ms. */
  readonly probeTimeoutMs?: number;
  /** The clock; injected so tests and the simulator can control it. Default `Date.now`. */
  readonly now?: () => number;
  /** Told about every read that had to move to another node, and why. */
  readonly onFailover?: (event: FailoverEvent) => void;
}

export interface FailoverEvent {
  readonly shardId: string;
  readonly nodeId: string;
  /** pg's message (no credentials: pools are built from URLs pg does not echo). */
  readonly error: string;
}

export interface ReadOptions {
  /**
   * A read-your-writes token from {@link captureWriteToken}: the read sees that write. With
   * `tokenTimeline`, a primary on a later timeline also checks it against its timeline history
   * ({@link ReadNode.lostWrite}), `primary` or not.
   */
  readonly token?: string;
  /**
   * The primary's timeline when the token was taken: a replica serves the token only on that
   * timeline (a position of one timeline says nothing about another's WAL).
   */
  readonly tokenTimeline?: number;
  /**
   * The cluster the token's write committed in (`ReadToken.clusterId`, cluster-identity.ts): a
   * replica serves the token only in that cluster, and a primary of another cluster never judges
   * the write lost by its position (its positions are its own).
   */
  readonly tokenClusterId?: string;
  /**
   * Read from the primary only: for a write whose position means nothing on this shard's
   * replicas (it was made on another shard, before a move).
   */
  readonly primary?: boolean;
  /**
   * The request's deadline (`Date.now()` ms). The statement running at the deadline is
   * cancelled (it fails with 57014, its connection goes back to the pool); a node that has not
   * answered shortly after it (a silent primary: no probe watches it) has its connection dropped
   * and the read fails with a {@link DeadlinePassedError}, not retried elsewhere. A statement
   * cancelled before the deadline, by another session, fails the read with a {@link ReadCancelledError}.
   * One that is NaN, infinite or more than `MAX_DEADLINE_MS` away is refused (`InvalidDeadlineError`).
   */
  readonly deadlineAt?: number;
  /**
   * The BEGIN of the transaction `withReadClient`'s `fn` reads in (a simple query: its SET LOCALs
   * and first reads may follow it), for a read whose token a primary judges: the primary check is
   * then sent in that transaction, in the same round trip ({@link ReadNode.begun}), so that the
   * verdict and the read are one server's. Through a proxy that lends each transaction whichever
   * server connection it has (RDS Proxy's multiplexing), a check that was a transaction of its own
   * could be answered by the old writer and the read by the new one across a failover
   * (timeline-lost-write-writer-proxy.test.ts). Without it, or for any other read, the check (if
   * any) is a statement of its own and `fn` begins its own transaction.
   */
  readonly begin?: string;
}

export interface ReadResult<R> {
  readonly rows: R[];
  readonly rowCount: number | null;
  /** The node that answered (`shard_001/replica-1`, `shard_001/primary`). */
  readonly servedBy: string;
  /** The token's write is not on the primary's timeline (see {@link ReadNode.lostWrite}). */
  readonly lostWrite?: LostWrite;
}

/** What the node lent to a read is. */
export interface ReadNode {
  /** A replica: its snapshot may trail the primary's by up to the freshness bound. */
  readonly replica: boolean;
  /**
   * Set on the primary when the read's token names a write of an earlier timeline past where that
   * timeline ends in the primary's (a failover lost it: {@link lostInFailover}). The read still
   * runs; what the caller answers is its own to decide (the documents API: a row found is
   * answered, a miss is a 410 instead of a 404).
   */
  readonly lostWrite?: LostWrite;
  /**
   * Set when the read's transaction is already open on the client ({@link ReadOptions.begin}): what
   * its BEGIN answered (the primary check's result taken out). `fn` must not begin another; it
   * commits or rolls back this one.
   */
  readonly begun?: { readonly begun: unknown };
}

/**
 * The transaction {@link ReplicaReader.query} runs its statement in where a primary judges its
 * token (the check is sent with it). One statement has one snapshot at any level: REPEATABLE READ,
 * as a shard read's (`createShardReader`), so that a SERIALIZABLE default adds no serialization
 * failure of its own; READ ONLY, as the query is (it may as well run on a replica).
 */
const QUERY_BEGIN = 'begin isolation level repeatable read read only';

/** Anything with pg's `query` (a pool or a client). */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/**
 * The read-your-writes token of everything this session (or anyone) committed so far: the
 * primary's WAL flush position, or its insert position when the session's `synchronous_commit`
 * is off (the commit record may not be flushed yet then, but it is inserted); see
 * `TOKEN_POSITION_SQL` (token-position.ts) for why not always the insert position (a crash
 * restart leaves the primary behind a token of a write it holds). Call it after COMMIT, on a
 * session whose `synchronous_commit` is what the commit ran with: a transaction that lowered it
 * for itself alone (`SET LOCAL synchronous_commit = off`) passes `transactionSetting: 'off'` (or
 * any spelling PostgreSQL takes for off: `false`, `no`, `0`, any case; token-position.ts)
 * (read before its COMMIT, as `writeWithToken` does in the COMMIT's round trip), or its token, the
 * flush position, may fall short of the commit record, not flushed yet.
 *
 * @example
 * ```ts
 * await client.query('commit');
 * const token = await captureWriteToken(client); // '0/3000148'
 * ```
 */
export async function captureWriteToken(db: Queryable, options: { readonly transactionSetting?: string } = {}): Promise<string> {
  const { rows } = await db.query<{ lsn: string }>(`select ${tokenPositionSql(options.transactionSetting)}::text as lsn`);
  const lsn = rows[0]?.lsn;
  if (lsn === undefined || !isLsn(lsn)) throw new LsnError('the primary returned no WAL position');
  return formatLsn(normalizeWalPosition(parseLsn(lsn)));
}

/**
 * Runs `fn` in a transaction on a primary pool and returns its result with the
 * read-your-writes token of the commit. The transaction is READ COMMITTED whatever the login's or
 * the database's `default_transaction_isolation`: a write to the sharded tables at any other level
 * is refused (CAF05, shard migration 012; docs/sharding-spec.md section 9, "Isolation"), and begun
 * with a REPEATABLE READ default every write through here was (moves-isolation.test.ts).
 */
export async function writeWithToken<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<{ result: T; token: string }> {
  const client = await pool.connect();
  let broken = false;
  /** The transaction's own synchronous_commit (a `SET LOCAL` in `fn`), read with its COMMIT. */
  let transactionSetting: string | undefined;
  try {
    const result = await inClientTransaction(
      client,
      'begin isolation level read committed',
      () => fn(client),
      () => {
        broken = true;
      },
      undefined,
      {
        read: COMMIT_SETTING_SQL,
        onRead: (answer) => {
          transactionSetting = commitSettingOf(answer);
        },
      },
    );
    return { result, token: await captureWriteToken(client, transactionSetting === undefined ? {} : { transactionSetting }) };
  } finally {
    client.release(broken || undefined);
  }
}

/** SQLSTATEs after which the same read can succeed on another node. */
const RETRIABLE_SQLSTATES = new Set([
  '57P01', // admin_shutdown: the replica is being stopped
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now: starting up, or hot standby not ready
  '53300', // too_many_connections
  '40001', // on a replica: canceled due to a conflict with recovery
]);

/**
 * The messages node-postgres (pg 8, pg-pool 3) gives the errors it raises itself, without a code,
 * when a node fails: the connection ended under a query (client.js, the connection's 'end': with
 * "unexpectedly" unless the client ended it), a query sent on a client whose connection failed or
 * was closed, the client's `query_timeout` ("Query read timeout"), its `connectionTimeoutMillis`
 * (the stream destroyed with "timeout expired"; through a pool, "Connection terminated due to
 * connection timeout", that error its cause) and the pool's wait for a connection ("timeout
 * exceeded when trying to connect"). Matched whole: until h155 any error without a code whose
 * message merely contained "timeout", "connection" or "terminated" counted (an application
 * error a read's `fn` threw, "the session timeout of user 42 expired", was taken for the node's:
 * its connection discarded and the read sent to the next node to fail again).
 */
const PG_NODE_FAILURE_MESSAGES: ReadonlySet<string> = new Set([
  'Connection terminated',
  'Connection terminated unexpectedly',
  'Connection terminated due to connection timeout',
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
  'Query read timeout',
  'timeout expired',
  'timeout exceeded when trying to connect',
]);

/**
 * True for errors about the node (connection lost, refused, shutting down), not about the SQL:
 * a SQLSTATE of class 08 or {@link RETRIABLE_SQLSTATES}; a code of Node's own (ECONNREFUSED,
 * ECONNRESET, EPIPE, ETIMEDOUT, ENOTFOUND, EHOSTUNREACH, ...: no SQLSTATE class begins with E; and
 * this module's ENOTPRIMARY, ENODEDOWN); one of node-postgres's own errors of a failed node, told
 * by its whole message ({@link PG_NODE_FAILURE_MESSAGES}); or this layer's errors of a node that
 * did not answer in time or at all (`NodeTimeoutError`, `DeadlinePassedError`, deadline.ts;
 * {@link ShardUnavailableError}), which the callers (api/wiring.ts, mover.ts, move-port.ts) answer
 * as the node's failure, a 503 "did not answer". Nothing else, whatever its message says.
 */
export function isNodeFailure(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  // Node's codes first: EPIPE is five capitals, as a SQLSTATE is, and was taken for one (of no
  // class that counts) until h155, so a write to a socket the node had closed was the SQL's fault.
  // No SQLSTATE class begins with E (sqlstate.ts failureKind reads them in this order too).
  // An errno's name (ECONNREFUSED, ECONNRESET, ETIMEDOUT, EPIPE, EHOSTUNREACH, EAI_AGAIN, ...), and
  // this module's ENOTPRIMARY, ENODEDOWN: not Node's ERR_* codes, which name a program's misuse
  // (ERR_INVALID_ARG_TYPE) or a configuration's (ERR_TLS_CERT_ALTNAME_INVALID), not a node that
  // failed: taken for one, the read went on to the next node to fail the same way, the API said
  // "did not answer, try again" of a fault no retry mends.
  if (typeof code === 'string' && /^E[A-Z0-9]+(_AGAIN)?$/.test(code)) return true;
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code.startsWith('08') || RETRIABLE_SQLSTATES.has(code);
  if (error instanceof NodeTimeoutError || error instanceof DeadlinePassedError || error instanceof ShardUnavailableError) return true;
  return PG_NODE_FAILURE_MESSAGES.has(error.message);
}

/**
 * Whether `client`'s session is still in a transaction, open ('T') or failed ('E'), as the
 * server's last ReadyForQuery said: a read whose rollback failed (a cancel request's second
 * signal cancelled it; `inClientTransaction` swallows that failure and rethrows the first), or
 * whose `fn` never ended its own. Lent again, it would fail the next read's statements (25P02)
 * or give it a stale snapshot; it is closed instead.
 */
function leftInTransaction(client: pg.ClientBase): boolean {
  const status = (client as unknown as { getTransactionStatus?: () => unknown }).getTransactionStatus?.();
  return status === 'T' || status === 'E';
}

/** The shortest time between two probes, however tight the lag bound. */
const MIN_PROBE_INTERVAL_MS = 100;

/** How long a probe waits for a replica to replay the heartbeat before measuring its lag. */
export const HEARTBEAT_WAIT_MS = 250;

export class ReplicaReader {
  readonly #pools: ShardPools;
  readonly #bounds: FreshnessBounds;
  readonly #intervalMs: number;
  readonly #probeTimeoutMs: number;
  readonly #now: () => number;
  readonly #onFailover: ((event: FailoverEvent) => void) | undefined;
  readonly #states = new Map<string, ReplicaState>();
  readonly #timelines = new Map<string, number>();
  /** Per shard, the cluster its primary was in at the last heartbeat (cluster-identity.ts; unset when its login may not read it). */
  readonly #clusterIds = new Map<string, string>();
  /**
   * Per replica, how fresh its last measure against a heartbeat found it (undefined: unknown).
   * Without a heartbeat (the primary does not answer) a replica measures itself current once it
   * has replayed all it received, which says nothing when its WAL receiver is gone: one short of
   * the shard's last heartbeat ({@link #lastHeartbeatLsn}) is no fresher than it was then.
   */
  readonly #lastMeasured = new Map<string, { readonly freshAsOfMs: number | undefined }>();
  /**
   * Per shard, the position of the last heartbeat its primary committed, whether or not each
   * replica could be measured against it: a replica the reader could not reach then (a host cut
   * off from the reader and from its primary alike) was not measured, and did not get it either.
   */
  readonly #lastHeartbeatLsn = new Map<string, bigint>();
  /** Reads waiting on each replica, told when a probe finds it down. */
  readonly #downWatchers = new Map<string, Set<(error: ReplicaDownError) => void>>();
  /**
   * Per shard, primary timeline and server start (`shard_001/2/<µs since 1970>`, see
   * {@link PRIMARY_CHECK_SQL}), its history ({@link readTimelineHistory}): one query per shard per
   * timeline and server, shared by the reads that ask at once. A miss (null) is asked again after
   * {@link TIMELINE_HISTORY_RETRY_MS}.
   */
  readonly #histories = new Map<string, { readonly history: Promise<readonly TimelineSwitch[] | null>; retryAtMs?: number }>();
  #timer: NodeJS.Timeout | undefined;
  #running = false;

  constructor(pools: ShardPools, options: ReplicaReaderOptions) {
    this.#pools = pools;
    this.#bounds = options.bounds;
    // A probe vouches for a replica for max_replica_lag_seconds from its heartbeat at most (see
    // ReplicaState.freshAsOfMs): probing at least twice in that time keeps a current replica
    // serving reads all along, even when the health interval is longer than the bound.
    this.#intervalMs = options.bounds.maxLagSeconds > 0 ? Math.min(options.intervalMs, Math.max(MIN_PROBE_INTERVAL_MS, options.bounds.maxLagSeconds * 500)) : options.intervalMs;
    this.#probeTimeoutMs = options.probeTimeoutMs ?? 2000;
    this.#now = options.now ?? Date.now;
    this.#onFailover = options.onFailover;
  }

  /**
   * The replay lag bound (max_replica_lag_seconds): a read this reader serves from a replica sees
   * data at most this old (see ReplicaState.freshAsOfMs); a read from a primary, none.
   */
  get maxLagSeconds(): number {
    return this.#bounds.maxLagSeconds;
  }

  /** Probes once, then keeps probing every interval until {@link stop}. */
  async start(): Promise<void> {
    this.#running = true;
    await this.refresh();
    this.#schedule();
  }

  /** Stops probing (in-flight probes finish on their own). */
  stop(): void {
    this.#running = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(delayMs: number = this.#intervalMs): void {
    if (!this.#running) return;
    this.#timer = setTimeout(() => {
      // The interval runs from a probe's start to the next one's: a probe lasts a heartbeat wait
      // or more, and counting it on top would leave a current replica vouched for less than its
      // bound between two probes (see freshAsOfMs).
      const startedMs = performance.now();
      void this.refresh().finally(() => this.#schedule(Math.max(MIN_PROBE_INTERVAL_MS / 2, this.#intervalMs - (performance.now() - startedMs))));
    }, delayMs);
    // Probing alone must not keep a process (a Lambda, the CLI) alive.
    this.#timer.unref();
  }

  /** Probes every shard's primary and replicas now, in parallel. */
  async refresh(): Promise<void> {
    await Promise.all(this.#pools.shardIds().map((shardId) => this.#refreshShard(shardId)));
  }

  async #refreshShard(shardId: string): Promise<void> {
    const replicas = this.#pools.replicas(shardId);
    if (replicas.length === 0) return;
    // The heartbeat first: the replicas are then measured against it.
    const options = { timeoutMs: this.#probeTimeoutMs, now: this.#now };
    // Everything committed before this instant is committed before the heartbeat: a replica that
    // replays the heartbeat was current as of this instant (not of the end of the probe).
    const heartbeatStartMs = this.#now();
    // The primary's position at that instant: a replica that has replayed up to it holds everything
    // committed before it, even when it has not replayed the heartbeat within the probe's wait (its
    // last replayed commit, on an idle primary the previous heartbeat, would date it an interval
    // earlier than it is).
    const startLsn = await readPrimaryPosition(this.#pools.primary(shardId), options);
    // A probe that found no free connection in a full pool may have timed out waiting for one:
    // then it says the pool is busy, not that the server stopped answering.
    const saturated = replicas.map((node) => node.pool.idleCount === 0 && node.pool.totalCount >= (node.pool.options.max ?? 10));
    const heartbeat = await commitHeartbeat(this.#pools.primary(shardId), options);
    if (heartbeat) {
      this.#timelines.set(shardId, heartbeat.timeline);
      if (heartbeat.clusterId === undefined) this.#clusterIds.delete(shardId);
      else this.#clusterIds.set(shardId, heartbeat.clusterId);
      this.#lastHeartbeatLsn.set(shardId, heartbeat.lsn);
    }
    const lastHeartbeatLsn = this.#lastHeartbeatLsn.get(shardId);
    // Each replica's lag is dated when its own probe answered, not when the slowest replica of
    // the shard did (one frozen sibling would date every lag a probe timeout too late).
    const measured = await Promise.all(
      replicas.map(async (node) => {
        const lag = await probeReplicaLag(node, heartbeat, { ...options, waitMs: HEARTBEAT_WAIT_MS });
        return { lag, atMs: this.#now() };
      }),
    );
    const states = measured.map((m) => m.lag);
    // Read after the replicas' replay positions: one past it follows another server.
    const primaryLsn = heartbeat ? await readPrimaryPosition(this.#pools.primary(shardId), options) : null;
    // A probe that failed on a full pool tells nothing: the pool may be full of reads waiting on a
    // replica that stopped answering. Ask the server itself, on a connection of its own.
    const silent = await Promise.all(replicas.map(async (node, i) => !states[i] && (saturated[i] !== true || !(await this.#answersOutsidePool(node)))));
    for (const [i, node] of replicas.entries()) {
      const probe = states[i];
      const checkedAtMs = this.#now();
      if (silent[i] === true || (probe && !probe.inRecovery)) {
        // Reads still waiting on it go to the next node (they only read: they may run again).
        for (const watcher of [...(this.#downWatchers.get(node.nodeId) ?? [])]) watcher(new ReplicaDownError(node.nodeId));
      }
      if (!probe) {
        this.#states.set(node.nodeId, { nodeId: node.nodeId, up: false, lagSeconds: null, lagBytes: null, replayLsn: null, checkedAtMs });
        continue;
      }
      let lagSeconds = probe.lagSeconds;
      let freshAsOfMs =
        lagSeconds === null
          ? undefined
          : heartbeat !== null && (lagSeconds === 0 || (startLsn !== null && probe.replayLsn !== null && probe.replayLsn >= startLsn))
            ? heartbeatStartMs
            : Math.min(checkedAtMs, measured[i]?.atMs ?? checkedAtMs) - lagSeconds * 1000;
      if (heartbeat !== null) {
        this.#lastMeasured.set(node.nodeId, { freshAsOfMs });
      } else if (lastHeartbeatLsn !== undefined && (probe.replayLsn === null || probe.replayLsn < lastHeartbeatLsn)) {
        // Its own measure ("replayed all it received") cannot vouch for it: it has not even
        // replayed the shard's last heartbeat (one it was measured against, or one committed while
        // it could not be reached). Only as fresh as its last measure found it (never measured: unknown).
        const lastFresh = this.#lastMeasured.get(node.nodeId)?.freshAsOfMs;
        freshAsOfMs = lastFresh === undefined || freshAsOfMs === undefined ? lastFresh : Math.min(freshAsOfMs, lastFresh);
        if (freshAsOfMs === undefined) lagSeconds = null;
        else if (lagSeconds !== null) lagSeconds = Math.max(lagSeconds, (checkedAtMs - freshAsOfMs) / 1000);
      }
      this.#states.set(node.nodeId, {
        nodeId: node.nodeId,
        up: probe.inRecovery,
        lagSeconds,
        lagBytes: probe.lagBytes,
        replayLsn: probe.replayLsn,
        checkedAtMs,
        timeline: probe.timeline,
        primaryTimeline: heartbeat?.timeline ?? null,
        primaryLsn,
        ...(freshAsOfMs === undefined ? {} : { freshAsOfMs }),
      });
    }
  }

  /**
   * The timeline of `shardId`'s primary at the last probe (undefined before the first, or for a
   * shard without replicas): a read-your-writes token of another timeline predates a failover.
   */
  primaryTimeline(shardId: string): number | undefined {
    return this.#timelines.get(shardId);
  }

  /**
   * The cluster of `shardId`'s primary at the last probe (undefined before the first, for a
   * shard without replicas, or a login that may not read it): a read-your-writes token of
   * another cluster predates a blue/green switchover (cluster-identity.ts).
   */
  primaryClusterId(shardId: string): string | undefined {
    return this.#clusterIds.get(shardId);
  }

  /** The last measured state of each replica of `shardId`, with why it gets no reads (or null). */
  replicaStates(shardId: string): { state: ReplicaState; ineligible: string | null }[] {
    const now = this.#now();
    return this.#pools
      .replicas(shardId)
      .map((n) => this.#states.get(n.nodeId))
      .filter((s): s is ReplicaState => s !== undefined)
      .map((state) => ({ state, ineligible: replicaIneligibility(state, this.#bounds, now) }));
  }

  /** The order in which a read on `shardId` would try nodes right now. */
  plan(shardId: string, options: ReadOptions = {}): ReadTarget[] {
    if (options.primary === true) return [{ kind: 'primary', reason: 'the read asked for the primary' }];
    const states = this.#pools
      .replicas(shardId)
      .map((n) => this.#states.get(n.nodeId))
      .filter((s): s is ReplicaState => s !== undefined);
    return rankReadTargets(states, this.#bounds, {
      nowMs: this.#now(),
      ...(options.token === undefined ? {} : { token: parseLsn(options.token) }),
      ...(options.tokenTimeline === undefined ? {} : { tokenTimeline: options.tokenTimeline }),
    });
  }

  /**
   * Runs one read-only query on the best node of `shardId`. SQL errors are thrown as pg raised
   * them; node failures move the read to the next node; a query past `deadlineAt` fails with
   * {@link DeadlinePassedError} (see {@link withReadClient}).
   *
   * A read whose token a primary judges runs its query in the transaction the check was sent in
   * ({@link QUERY_BEGIN}, {@link ReadOptions.begin}): one round trip more (its COMMIT) for those
   * reads only; every other read is the one statement it was. Sent as a statement of its own, the
   * check could be answered by the old writer and the query by the new one through a proxy that
   * lends each transaction a server connection across a failover: no rows and no lost write, a
   * miss for a write the failover lost (timeline-lost-write-writer-proxy.test.ts).
   */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = [], options: ReadOptions = {}): Promise<ReadResult<R>> {
    return this.withReadClient(
      shardId,
      async (client, servedBy, node) => {
        const run = async (): Promise<ReadResult<R>> => {
          const result = await client.query<R>(text, values);
          return { rows: result.rows, rowCount: result.rowCount, servedBy, ...(node.lostWrite === undefined ? {} : { lostWrite: node.lostWrite }) };
        };
        return node.begun === undefined ? run() : inClientTransaction(client, node.begun, run);
      },
      { ...options, begin: QUERY_BEGIN },
    );
  }

  /**
   * Lends a client of the best node of `shardId` to `fn`, for several statements on one
   * connection (`fn` opens a `repeatable read` transaction when they must share one snapshot).
   * `fn` may run again on another node when the first one fails, so it must only read. A
   * malformed token is rejected with an `LsnError` before any node is tried. A primary address
   * that reaches a server in recovery fails the attempt there ({@link PrimaryInRecoveryError}).
   * `held.statementTimeout`: whether `fn` runs its statements under a `statement_timeout` of the
   * time left (a transaction begun with `deadlineSettingsSql`, as `createShardReader`'s). Default
   * false: the session's own (a role's default) may then fire before the deadline, and its 57014,
   * in a language other than English, is not told from another session's cancel
   * ({@link ReadCancelledError}): it is thrown as pg raised it. A statement the read's own
   * deadline (`deadlineAt`) cancelled fails the read with {@link DeadlinePassedError} (`cancelled`,
   * pg's 57014 its `cause`), as one on a silent node does (`query`), and no other node is tried.
   * One the session's own `statement_timeout` or `lock_timeout` ended before the deadline (a role's
   * default: in force for statements `fn` sends outside a transaction of the deadline's, and kept
   * by one where shorter than the time left) fails it with a {@link SessionTimeoutError} naming
   * the setting, not retried either: the next node would end it alike.
   */
  async withReadClient<T>(shardId: string, fn: (client: pg.PoolClient, servedBy: string, node: ReadNode) => Promise<T>, options: ReadOptions = {}, held: CancelledByOtherOptions = { statementTimeout: false }): Promise<T> {
    checkDeadlineMs('deadlineAt (from now)', options.deadlineAt === undefined ? undefined : options.deadlineAt - Date.now());
    const targets = this.plan(shardId, options);
    let lastError: unknown;
    for (const target of targets) {
      const node = target.kind === 'primary' ? this.#pools.primary(shardId) : this.#pools.node(target.nodeId);
      if (!node) continue;
      let client: pg.PoolClient | undefined;
      /** Set when the read gave up on this replica (found down) while it was still connecting. */
      let abandoned: Error | undefined;
      let guard: ClientDeadline | undefined;
      /**
       * What the lent client emitted as 'error' while lent: a FATAL the server sent while the read
       * sent nothing (the session's own idle_in_transaction_session_timeout, 25P03, ending a
       * transaction `fn` left idle), which the next statement does not name ("Client has
       * encountered a connection error and is not queryable").
       */
      const emitted: unknown[] = [];
      const onEmitted = (error: unknown): void => {
        emitted.push(error);
      };
      let listened: pg.PoolClient | undefined;
      const attempt = async (): Promise<{ readonly skip: true } | { readonly skip: false; readonly value: T }> => {
        const lent = options.deadlineAt === undefined ? await node.pool.connect() : await connectBy(node.pool, options.deadlineAt, node.nodeId);
        if (abandoned !== undefined) {
          lent.release(abandoned);
          throw abandoned;
        }
        client = lent;
        listened = lent;
        lent.on('error', onEmitted);
        // A read may be cancelled at any point: it changes nothing.
        if (options.deadlineAt !== undefined) guard = holdToDeadline(lent, options.deadlineAt);
        let lostWrite: LostWrite | undefined;
        let begun: { readonly begun: unknown } | undefined;
        if (target.kind === 'primary') {
          // A read whose token can be judged (its timeline known) asks the connection's server
          // what it is now, every time: through RDS Proxy an open connection is lent the new
          // writer after a failover, and a verdict on the first server's check answered a write
          // the failover lost 404, as never made
          // (test/integration/sharding/timeline-lost-write-writer-proxy.test.ts). Any other read
          // needs only "not in recovery", which holds for the connection's life (primaryTimelineOf).
          // Where the caller gives its transaction's BEGIN, the check is sent in it, in the same
          // round trip: a proxy that lends each transaction a server connection (RDS Proxy's
          // multiplexing) could answer a check of its own from the old writer and the read's
          // transaction from the new one (ReadOptions.begin). The history, when asked, is asked in
          // it too: all from the server the read runs on.
          const judged = options.token !== undefined && options.tokenTimeline !== undefined;
          // A token of a cluster: the check tells which one the server is in (cluster-identity.ts).
          // Refused the id (the login's grant revoked since its pool learned it may read it), the
          // check is sent again without it (withClusterIdReadable): it changes nothing, and the
          // transaction begun with it is rolled back first.
          const clusterIdWanted = judged && options.tokenClusterId !== undefined;
          const checkSql = (withClusterId: boolean): string => (withClusterId ? PRIMARY_CHECK_WITH_CLUSTER_SQL : PRIMARY_CHECK_SQL);
          if (judged && options.begin !== undefined) {
            const begin = options.begin;
            const answer = await withClusterIdReadable(node.pool, lent, async (withClusterId) => (await lent.query(`${begin}; ${checkSql(withClusterId)}`)) as unknown as pg.QueryResult[], {
              wanted: clusterIdWanted,
              undo: () => lent.query('rollback'),
            });
            const results = answer.slice(0, -1);
            begun = { begun: results.length === 1 ? results[0] : results };
            try {
              primaryTimelineOf.set(lent, primaryCheckOf((answer.at(-1) as pg.QueryResult<PrimaryCheckRow> | undefined)?.rows[0], node.nodeId));
              lostWrite = await this.#lostWrite(shardId, node.nodeId, lent, primaryTimelineOf.get(lent) ?? null, options, true);
            } catch (error) {
              await lent.query('rollback').catch(() => undefined);
              throw error;
            }
          } else {
            if (judged || !primaryTimelineOf.has(lent)) {
              primaryTimelineOf.set(lent, await withClusterIdReadable(node.pool, lent, (withClusterId) => checkPrimary(lent, node.nodeId, checkSql(withClusterId)), { wanted: clusterIdWanted }));
            }
            if (judged) lostWrite = await this.#lostWrite(shardId, node.nodeId, lent, primaryTimelineOf.get(lent) ?? null, options);
          }
        }
        if (target.kind === 'replica') {
          // The replica was chosen before the wait for its connection (a busy pool can hold a read
          // for seconds): it must still be fresh enough now, when the read runs.
          // (A last resort, tried when the primary is down, has no byte lag: judged by the rest.)
          const state = this.#states.get(target.nodeId);
          if (state === undefined || replicaIneligibility(state.lagBytes === null ? { ...state, lagBytes: 0n } : state, this.#bounds, this.#now()) !== null) return { skip: true };
        }
        // The reader's probes vouch for a replica's position in the cluster its last heartbeat
        // found the primary in: for a token of another cluster (or before any heartbeat told
        // one) the replica is asked, in the check below.
        const verified = target.kind === 'replica' && target.tokenVerified && (options.tokenClusterId === undefined || this.#clusterIds.get(shardId) === options.tokenClusterId);
        if (target.kind === 'replica' && !verified && options.token !== undefined) {
          // Past the position, and on the token's timeline (a replica following an old primary
          // can be past any position of the new one), and in the token's cluster (a replica of
          // another is past positions of its own: a blue/green switchover, cluster-identity.ts).
          // With the timeline unreadable for this login, the position alone (the reader's state,
          // which then has no timeline either, never verified the token without this check).
          // Refused the id (the grant revoked since the pool learned it may read it), the check is
          // sent again without it (withClusterIdReadable), inside the timeline's fallback: outside,
          // the refusal was taken for the timeline expression's, and the pool moved down to no
          // timeline at all for its life (replica-lag.ts, withTimelineSql).
          const { rows } = await withTimelineSql(node.pool, (timelineSql) =>
            withClusterIdReadable(
              node.pool,
              lent,
              (withClusterId) => {
                const clusterId = withClusterId ? (options.tokenClusterId ?? null) : null;
                return timelineSql === null
                  ? lent.query<{ ok: boolean }>(`select pg_last_wal_replay_lsn() >= $1::pg_lsn and ($2::text is null or ${CLUSTER_ID_SQL} = $2::text) as ok`, [options.token, clusterId])
                  : lent.query<{ ok: boolean }>(
                      `select pg_last_wal_replay_lsn() >= $1::pg_lsn and ($2::bigint is null or ${timelineSql} = $2::bigint) and ($3::text is null or ${CLUSTER_ID_SQL} = $3::text) as ok`,
                      [options.token, options.tokenTimeline ?? null, clusterId],
                    );
              },
              { wanted: options.tokenClusterId !== undefined },
            ),
          );
          if (rows[0]?.ok !== true) return { skip: true };
        }
        return { skip: false, value: await fn(lent, node.nodeId, { replica: target.kind === 'replica', ...(lostWrite === undefined ? {} : { lostWrite }), ...(begun === undefined ? {} : { begun }) }) };
      };
      try {
        // A replica that stops answering (a frozen host, a black-holed path) never fails a query
        // on a connection already open: the read is given up when a probe finds it down.
        const outcome =
          target.kind === 'replica'
            ? await this.#unlessDown(node.nodeId, attempt(), (error) => {
                abandoned = error;
              })
            : await attempt();
        guard?.disarm();
        listened?.off('error', onEmitted);
        const done: pg.PoolClient | undefined = client;
        client = undefined;
        done?.release(guard?.reusable() === false || (done !== undefined && leftInTransaction(done)) || undefined);
        if (outcome.skip) continue;
        return outcome.value;
      } catch (error) {
        guard?.disarm();
        listened?.off('error', onEmitted);
        if (guard?.expired === true || error instanceof DeadlinePassedError) {
          // The deadline is spent: no other node is tried.
          const passed = error instanceof DeadlinePassedError ? error : new DeadlinePassedError(node.nodeId, 'query');
          client?.release(passed);
          throw passed;
        }
        // The session's own idle_in_transaction_session_timeout (a role's, shorter than the
        // deadline's own, which the transaction keeps: deadlineSettingsSql) ended the transaction
        // while `fn` worked between two statements: the server closed the connection (discarded
        // here). Named, as the writer names it; not a failure of the node (every node of the login
        // has the setting), so no other node is tried and the replica is not marked failed.
        const idleEnded = idleTimeoutOf(error, ...emitted);
        if (idleEnded !== undefined) {
          client?.release(idleEnded);
          throw new SessionTimeoutError(node.nodeId, 'idle_in_transaction_session_timeout', idleEnded);
        }
        if (!isNodeFailure(error)) {
          // A cancel request the deadline did not send (57014 before the deadline, none sent: told
          // in any lc_messages language, see cancelledByOtherSession): someone else's, not the
          // deadline's. Asked first, before the wait below.
          const byOther = guard?.cancelledByOther(error, held) === true;
          // The statement the deadline ended (its cancel request, or the statement_timeout of the
          // time left): the deadline's, as a silent node's is, not the driver's raw 57014, whose
          // words ("due to user request") would blame someone else in every log that prints it,
          // and which each caller had to recognise by its code (a caller that did not answered
          // it as an unexpected failure). Not retried on another node: the deadline is spent.
          const byDeadline = !byOther && guard?.cancelledByDeadline(error, held) === true;
          // The session's own statement_timeout or lock_timeout, shorter than the time left (a
          // role's default, ALTER ROLE ... SET statement_timeout: in force for a statement sent
          // outside a transaction held to the deadline, as `query`'s is, and kept by one where
          // shorter, deadlineSettingsSql), or one `fn` set: neither the deadline's nor another
          // session's, and said so, naming the setting (the writer and withShardRead tell it so
          // too). Without a deadline, any 57014 or 55P03 in those words is.
          const ownTimeout = byOther || byDeadline ? undefined : guard === undefined ? sessionTimeoutOf(error) : guard.sessionTimeout(error, held);
          // Cancelled at the deadline: lent again only once the cancel request has been passed on in full.
          if (guard !== undefined && queryCanceled(error)) await guard.settled();
          // A connection left in a transaction (its rollback failed: a cancel's second signal
          // cancelled it, say) must not be lent again: the next read's statements would fail in it.
          client?.release(guard?.reusable(error) === false || (client !== undefined && leftInTransaction(client)) || undefined);
          if (byOther) throw new ReadCancelledError(node.nodeId, error);
          if (byDeadline) throw new DeadlinePassedError(node.nodeId, 'cancelled', { cause: error });
          if (ownTimeout !== undefined) throw new SessionTimeoutError(node.nodeId, ownTimeout, error);
          throw error;
        }
        // A broken connection must not go back to the pool; one abandoned on a replica that stopped
        // answering is closed at once (ending it politely would wait on that replica).
        if (error instanceof ReplicaDownError && client !== undefined) dropConnection(client);
        client?.release(error instanceof Error ? error : true);
        lastError = error;
        if (target.kind === 'replica') this.#markFailed(node, error);
      }
    }
    throw new ShardUnavailableError(shardId, `no node of shard ${shardId} could serve the read: ${lastError instanceof Error ? lastError.message : String(lastError)}`, { cause: lastError });
  }

  /**
   * The write `options`' token names, when the primary `client` is on (on `timeline`) no longer
   * holds it: the token is of an earlier timeline, listed in this one's history, and past where
   * that timeline ends in it. Undefined otherwise, and whenever the history cannot be had: the read
   * then answers as it did before shard migration 027.
   */
  async #lostWrite(shardId: string, nodeId: string, client: pg.ClientBase, primary: PrimaryCheck | null, options: ReadOptions, inTransaction = false): Promise<LostWrite | undefined> {
    if (options.token === undefined || options.tokenTimeline === undefined || primary === null) return undefined;
    // A token of another cluster: its position and timeline say nothing about this one's WAL, and
    // this primary holds what a blue/green switchover waited for (cluster-identity.ts).
    if (options.tokenClusterId !== undefined && primary.clusterId !== undefined && primary.clusterId !== options.tokenClusterId) return undefined;
    if (primary.timeline === options.tokenTimeline) return pastPrimaryEnd(shardId, primary, options.token);
    if (primary.timeline < options.tokenTimeline) return undefined;
    const { timeline } = primary;
    const history = await this.#history(shardId, primary, client, options.deadlineAt, nodeId, inTransaction);
    if (history === null) return undefined;
    const lost = lostInFailover(history, timeline, { lsn: parseLsn(options.token), timeline: options.tokenTimeline });
    return lost === undefined ? undefined : { shardId, lsn: options.token, timeline: options.tokenTimeline, forkLsn: formatLsn(lost.forkLsn), currentTimeline: timeline };
  }

  /**
   * `shardId`'s history on `timeline`, from the cache or asked on `client` (see {@link #histories}).
   * A read that found another read's query under way waits for it, but that query's failure is
   * that read's own (its connection broke, its deadline cancelled it): the waiter then asks on its
   * own connection rather than fail with an error that is not its own. The wait is held to the
   * waiter's own deadline (`deadlineAt`): a query that outlasts it (a stuck server, a lock) fails
   * the waiter then, with {@link DeadlinePassedError} on `nodeId`, as its own query would have
   * failed at its deadline; the query itself is left to the read that sent it (and its deadline).
   */
  async #history(
    shardId: string,
    { timeline, server }: { readonly timeline: number; readonly server: string },
    client: pg.ClientBase,
    deadlineAt: number | undefined,
    nodeId: string,
    inTransaction = false,
  ): Promise<readonly TimelineSwitch[] | null> {
    const key = `${shardId}/${timeline}/${server}`;
    const cached = this.#histories.get(key);
    if (cached !== undefined && (cached.retryAtMs === undefined || this.#now() < cached.retryAtMs)) {
      try {
        return await byDeadline(cached.history, deadlineAt, nodeId);
      } catch (error) {
        // This read's own deadline (the query never throws one): it stops waiting, the query goes on.
        if (error instanceof DeadlinePassedError) throw error;
        // Another read's connection or deadline: asked again below, on this read's connection.
      }
    }
    const entry: { readonly history: Promise<readonly TimelineSwitch[] | null>; retryAtMs?: number } = { history: readTimelineHistory(client, timeline, inTransaction) };
    this.#histories.set(key, entry);
    try {
      const history = await entry.history;
      if (history === null) entry.retryAtMs = this.#now() + TIMELINE_HISTORY_RETRY_MS;
      return history;
    } catch (error) {
      // A query that failed (the connection, the deadline) says nothing: the next read asks again.
      if (this.#histories.get(key) === entry) this.#histories.delete(key);
      throw error;
    }
  }

  /** Whether `node`'s server answers `select 1` within the probe timeout on a new, unpooled connection. */
  async #answersOutsidePool(node: ShardNode): Promise<boolean> {
    const client = new pg.Client({ ...node.pool.options, connectionTimeoutMillis: this.#probeTimeoutMs });
    client.on('error', () => undefined);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), this.#probeTimeoutMs);
    });
    const answer = client
      .connect()
      .then(() => client.query('select 1'))
      .then(
        () => true,
        () => false,
      );
    const answered = await Promise.race([answer, deadline]);
    clearTimeout(timer);
    if (answered) await client.end().catch(() => undefined);
    else dropConnection(client);
    return answered;
  }

  /**
   * `work` on replica `nodeId`, or a {@link ReplicaDownError} as soon as a probe finds the
   * replica down (`onDown` is told first), whichever comes first.
   */
  async #unlessDown<R>(nodeId: string, work: Promise<R>, onDown: (error: ReplicaDownError) => void): Promise<R> {
    // The loser of the race must not become an unhandled rejection.
    work.catch(() => undefined);
    let abandon!: (error: ReplicaDownError) => void;
    const down = new Promise<never>((_, reject) => {
      abandon = reject;
    });
    const watcher = (error: ReplicaDownError): void => {
      onDown(error);
      abandon(error);
    };
    const watchers = this.#downWatchers.get(nodeId) ?? new Set<(error: ReplicaDownError) => void>();
    this.#downWatchers.set(nodeId, watchers);
    watchers.add(watcher);
    try {
      return await Promise.race([work, down]);
    } finally {
      watchers.delete(watcher);
      if (watchers.size === 0) this.#downWatchers.delete(nodeId);
    }
  }

  #markFailed(node: ShardNode, error: unknown): void {
    const state = this.#states.get(node.nodeId);
    if (state) this.#states.set(node.nodeId, { ...state, failedAtMs: this.#now() });
    this.#onFailover?.({ shardId: node.shardId, nodeId: node.nodeId, error: error instanceof Error ? error.message : String(error) });
  }
}
