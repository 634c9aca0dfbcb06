/**
 * The one way application code writes to a shard. `withShardWrite(key, fn)` routes the key,
 * opens a transaction on the owning shard's primary, takes a SHARED lock on the write-fence
 * rows of the key's slot and directory key (table `write_fences`, shard migration 002) and only
 * then runs `fn` in that transaction. Because the mover takes the same rows EXCLUSIVELY to fence
 * a moving unit, writers already in flight finish before the final copy, writers that arrive
 * during the cutover wait, and once the unit has moved they find the fence marked `moved`,
 * refresh their routing and write on the new owner. The result carries a read-your-writes token:
 * the primary's WAL position after the commit, at or past the commit record.
 *
 * @example
 * ```ts
 * const writer = createShardWriter({ router, primaries: new Map([['shard_001', pool1], ['shard_002', pool2]]) });
 * const { value, token } = await writer.withShardWrite(userId, async ({ client, slot }) => {
 *   await client.query('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [docId, userId, slot, 'Minutes']);
 *   return docId;
 * });
 * ```
 */
import type pg from 'pg';
import { escapeLiteral } from 'pg';
import { canonicalKey } from '../../core/sharding/keys.js';
import type { ReadToken } from '../../core/sharding/read-token.js';
import type { ShardRouter } from '../../core/sharding/router.js';
import type { SlotMap } from '../../core/sharding/slot-map.js';
import type { DirectoryStore } from './directory-store.js';
import type { SlotMapStore } from './slot-map-store.js';
import { CLUSTER_ID_SQL, clusterIdOfRow, clusterIdReadable, clusterIdRefused, forgetClusterIdReadable } from './cluster-identity.js';
import {
  checkDeadlineMs,
  connectBy,
  DEADLINE_GRACE_MS,
  DeadlinePassedError,
  holdToDeadline,
  idleTimeoutOf,
  otherCancelWords,
  queryCanceled,
  serverTimeoutMs,
  SessionTimeoutError,
  sessionTimeoutOf,
  timeoutsAtMostSql,
  withNodeDeadline,
  type ClientDeadline,
  type SessionTimeoutSetting,
} from './deadline.js';
import { rowFenceStateSql } from './read-transaction.js';
import { LOCK_NOT_AVAILABLE, READ_ONLY_SQL_TRANSACTION, UNIQUE_VIOLATION } from './sqlstate.js';
import { COMMIT_SETTING_SQL, commitSettingOf, tokenPositionSql } from './token-position.js';
import { inClientTransaction, RolledBackAtCommitError, RollbackWith } from './transaction.js';

/** Where a key's writes go, as the router sees it now. */
export interface WriteRoute {
  readonly shardId: string;
  readonly slot: number;
  /** Version of the slot map (or directory entry) the route came from. */
  readonly version: number;
  /** True when a directory entry placed the key (its rows then do not move with its slot). */
  readonly viaDirectory: boolean;
  /**
   * The shard that held the key's unit before any move: the slot's owner in version 1 of the
   * slot map (also for a directory-placed key), or the routed shard under range routing or
   * with sharding disabled (nothing moves there). Undefined when unknown. A replica read uses
   * it to tell "no fence row: this shard has always owned the unit" from "no fence row yet: the
   * replica has not replayed the move that brought the unit here" (docs/sharding-spec.md, section 9).
   */
  readonly firstOwner?: string;
}

export interface RouteForWriteOptions {
  readonly fresh?: boolean;
  /** Fill in {@link WriteRoute.firstOwner} (readers ask for it; writers need not). */
  readonly firstOwner?: boolean;
}

/**
 * The routing the writer needs. `fresh: true` must bypass every cache (the writer asks for it
 * after finding a unit moved away).
 */
export interface WriteRouter {
  routeForWrite(key: string, options?: RouteForWriteOptions): Promise<WriteRoute>;
}

/**
 * The write routing of a {@link ShardRouter}: a fresh route adopts the catalog's latest slot
 * map and forgets the key's cached directory entry first.
 *
 * @example
 * ```ts
 * const writes = routerForWrites(ShardRouter.fromConfig(config, { slotMap, directory }), slotMaps, directory);
 * ```
 */
export function routerForWrites(
  router: ShardRouter,
  slotMaps: Pick<SlotMapStore, 'currentIfNewer'> & Partial<Pick<SlotMapStore, 'get'>>,
  directory?: Pick<DirectoryStore, 'invalidate'>,
): WriteRouter {
  // Version 1 never changes: read once (when the router holds a later map), kept for good.
  let first: Promise<SlotMap | null> | undefined;
  const firstMap = (): Promise<SlotMap | null> | SlotMap | null => {
    if (router.slotMap.version === 1) return router.slotMap;
    if (slotMaps.get === undefined) return null;
    first ??= slotMaps.get(1).then(
      (record) => record?.map ?? null,
      () => {
        first = undefined; // not known this time; asked again next time
        return null;
      },
    );
    return first;
  };
  return {
    async routeForWrite(key, options) {
      if (options?.fresh) {
        // Writers waiting out a fence ask for fresh routing every few ms: an index probe that
        // returns nothing until a newer map exists, not the 4096-slot map each time (under 8
        // writers those reads took more CPU than the mover's whole fenced work).
        const newer = await slotMaps.currentIfNewer(router.slotMap.version);
        if (newer) router.setSlotMap(newer);
        directory?.invalidate(key);
      }
      const route = await router.resolve(key);
      // A directory-placed key has no first owner a route can name: where its rows began is not
      // recorded (its reads on a replica rely on its own fence row, see read-transaction.ts).
      const firstOwner =
        options?.firstOwner !== true
          ? undefined
          : route.source === 'range' || route.source === 'default'
            ? route.shardId
            : route.source === 'directory'
              ? undefined
              : (await firstMap())?.assignments[route.slot];
      return {
        shardId: route.shardId,
        slot: route.slot,
        version: route.mapVersion,
        viaDirectory: route.source === 'directory',
        ...(firstOwner === undefined ? {} : { firstOwner }),
      };
    },
  };
}

export interface ShardWriterOptions {
  readonly router: WriteRouter;
  /** Primary pool of every shard, by shard id. */
  readonly primaries: ReadonlyMap<string, pg.Pool>;
  /**
   * How long a write may wait for a fenced unit before giving up (its back-offs, and its waits on
   * a fence row a lock timeout ended). Default 10 000 ms.
   */
  readonly maxFenceWaitMs?: number;
  /** How many times a write may be sent elsewhere because its unit moved. Default 5. */
  readonly maxReroutes?: number;
  /** Injected for tests; defaults to `setTimeout`. */
  readonly sleep?: (ms: number) => Promise<void>;
}

/** What `fn` gets: the open transaction and where it runs. */
export interface ShardWriteContext {
  readonly client: pg.PoolClient;
  readonly shardId: string;
  readonly slot: number;
  readonly version: number;
}

export interface ShardWriteResult<T> {
  readonly value: T;
  readonly shardId: string;
  readonly slot: number;
  /** A `pg_lsn` at or past this write's commit on the shard primary. */
  readonly token: string;
  /** The read-your-writes token of this write: the position, the primary's timeline and the map version it was routed with. */
  readonly readToken: ReadToken;
  /** 1 when the first route was right; more when the unit was fenced or had moved (or, once, when its BEGIN was refused the cluster id: cluster-identity.ts). */
  readonly attempts: number;
}

/**
 * `outcome-unknown`: the deadline passed with the primary silent after the write's commit was
 * sent (its answer lost, or the commit answered and the read token's query not): the write may
 * have been (when the message says so, was) committed. `cancelled`: a write with a deadline had a
 * statement cancelled before it by someone else's cancel request (`pg_cancel_backend`, an
 * operator), or ended by the session's own `statement_timeout` or `lock_timeout`, shorter (a
 * role's default, the write's body's SET LOCAL; `cause` a `SessionTimeoutError`, deadline.ts,
 * naming which), not by its own deadline. Every other reason: nothing was committed.
 */
export type ShardWriteErrorReason = 'unknown-shard' | 'fence-timeout' | 'too-many-reroutes' | 'deadline-exceeded' | 'outcome-unknown' | 'cancelled';

/** A write could not be placed. Nothing was committed, unless the reason is `outcome-unknown`. */
export class ShardWriteError extends Error {
  override readonly name = 'ShardWriteError';
  constructor(
    readonly reason: ShardWriteErrorReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ShardWriteOptions {
  /**
   * The request's deadline, in ms from the call. Each attempt's transaction gets a
   * `statement_timeout` and a `lock_timeout` of the time left (or the session's own, where shorter:
   * `deadlineSettingsSql`), so PostgreSQL itself stops the work when the caller stops waiting (no
   * query left running for nobody). NaN, infinite or over
   * `MAX_DEADLINE_MS` is refused (`InvalidDeadlineError`, deadline.ts).
   */
  readonly deadlineMs?: number;
}

export interface ShardWriter {
  withShardWrite<T>(key: string, fn: (ctx: ShardWriteContext) => Promise<T>, options?: ShardWriteOptions): Promise<ShardWriteResult<T>>;
}


/** SQLSTATEs of a statement or lock wait the deadline cut short. */
const DEADLINE_SQLSTATES = new Set(['57014', LOCK_NOT_AVAILABLE]);

/**
 * Whether `error` ended a wait for a row lock on a `write_fences` row (55P03, a lock timeout: pg's
 * innermost context is "while locking tuple (0,1) in relation "write_fences"", whose tuple id and
 * relation name stay as they are in every `lc_messages` language; a NOWAIT's 55P03 has no such
 * context, nor a wait for a lock on the whole table). Only a fence change holds such a row
 * updated or FOR UPDATE (a move's fence, flip, release or give-up, a hand change's fence, an
 * operator's SQL): writers hold it FOR SHARE, which never waits for another FOR SHARE. The wait is
 * the writer's own statement of its key's rows (`writerFenceRowsSql`, in the BEGIN's round trip)
 * or the fence trigger's for a row the body writes (shard migration 004).
 */
function lockWaitOnFenceRow(error: unknown): boolean {
  const e = error as { code?: unknown; where?: unknown } | null;
  if (e?.code !== LOCK_NOT_AVAILABLE || typeof e.where !== 'string') return false;
  const innermost = e.where.split('\n', 1)[0] ?? '';
  return /\(\d+,\d+\)/.test(innermost) && innermost.includes('write_fences');
}

/**
 * What a write waited on, for the words of its `fence-timeout`: the unit (`kind`, `unitId`) and
 * the move job that wrote its fence row (`jobId`; null: a row of no job, a hand change's or an
 * operator's; undefined: not read yet, see {@link readFenceHold}). `how`: `fenced`, the row read
 * `fenced` or `incoming` (the writer's own read of its key's rows, or the fence trigger's CAF01 for
 * a row its body wrote); `locked`, a lock wait on the row (a fence change held it updated and
 * uncommitted past the session's own lock_timeout), `tuple` the row's tuple id pg named, the unit
 * then unknown until read.
 */
interface FenceHold {
  readonly how: 'fenced' | 'locked';
  readonly kind?: 'slot' | 'directory';
  readonly unitId?: string;
  readonly jobId?: string | null;
  readonly tuple?: string;
}

/** The unit a fence trigger's CAF01 names ("write to slot 7 refused: ...", shard migration 021's own words, in every lc_messages). */
function fenceHoldOfRefusal(error: unknown): FenceHold {
  const found = /^write to (slot|directory) (.*) refused: /s.exec((error as { message?: unknown } | null)?.message as string);
  return found === null ? { how: 'fenced' } : { how: 'fenced', kind: found[1] as 'slot' | 'directory', unitId: found[2] };
}

/** The tuple id of the `write_fences` row a lock wait ended on (see {@link lockWaitOnFenceRow}). */
function fenceHoldOfLockWait(error: unknown): FenceHold {
  const tuple = /\((\d+,\d+)\)/.exec(((error as { where?: unknown }).where as string).split('\n', 1)[0] ?? '')?.[1];
  return tuple === undefined ? { how: 'locked' } : { how: 'locked', tuple: `(${tuple})` };
}

/**
 * The words of a `fence-timeout` after `waitedMs` on `hold` (see {@link FenceHold}): the unit, kind
 * and id, and what holds it, the move job its fence row names or a hand change (a row naming no
 * job: `catalog.publish_slot_map_by_hand`, a directory change by hand, an operator's SQL). Until
 * h155 every such timeout said "slot X ... stayed fenced (a move is in its cutover or its mover
 * stopped there)", the key's slot, even where the wait was on its directory key's row, on another
 * unit a row of the write belongs to, or on a hand change's fence, which no mover will ever lift.
 */
function fenceTimeoutWords(hold: FenceHold, shardId: string, route: WriteRoute, waitedMs: number): string {
  const unit =
    hold.kind === undefined
      ? `the fence row ${hold.tuple === undefined ? '' : `${hold.tuple} `}of slot ${route.slot}${route.viaDirectory ? '' : ' or of its directory key'}, or of a unit a row of the write belongs to,`
      : `${hold.kind === 'slot' ? 'slot' : 'directory key'} ${hold.unitId}`;
  const holder =
    hold.jobId === undefined
      ? 'a move or a hand change (its fence row could not be read)'
      : hold.jobId === null
        ? 'a hand change (its fence row names no move job: a slot map or directory change by hand, or an operator\'s SQL, that has not released it)'
        : `move job #${hold.jobId} (in its cutover, or its mover stopped there: see the job)`;
  if (hold.how === 'fenced') return `${unit} on shard ${shardId} stayed fenced for more than ${waitedMs} ms, by ${holder}`;
  // The row read here is the one last committed: the change holding it (a move's fence or flip
  // sets the row's job_id in its own uncommitted UPDATE, move-port.ts; a hand change's clears it)
  // is not readable until it commits, so the committed row's job names an earlier change, not the
  // holder. Until h159 these words said "its row names no move job: a hand change, or an
  // operator's SQL" of a move's fence held uncommitted over a unit's open row, sending the
  // operator to look for a hand change (fence-timeout-words.test.ts).
  const last =
    hold.jobId === undefined
      ? 'its row could not be read'
      : `the change holding it, a move's fence or flip or a hand change, is not readable until it commits: the row as last committed names ${hold.jobId === null ? 'no move job' : `move job #${hold.jobId}`}`;
  return `${unit} on shard ${shardId} had its fence row held by a fence change not yet committed for more than ${waitedMs} ms (each wait ended by the session's own lock_timeout; ${last}; pg_stat_activity shows the transaction holding it)`;
}

/**
 * `hold` with what its fence row says, read on `pool` where the wait did not read it (a CAF01 of
 * the fence trigger names the unit only; a lock wait, the row's tuple id only): one bounded query,
 * on the `fence-timeout` path alone, never a write's way through. Unread (the shard silent, the row
 * gone or changed since), `hold` as it was: the words say so.
 */
async function readFenceHold(pool: pg.Pool, shardId: string, hold: FenceHold, deadlineAt: number | undefined): Promise<FenceHold> {
  if (hold.kind !== undefined && hold.jobId !== undefined) return hold;
  if (hold.kind === undefined && hold.tuple === undefined) return hold;
  // Within what the write's deadline has left, too: bounded by its own 1 s alone, a write held to
  // 300 ms answered its fence-timeout past 1.1 s where the primary's pool lent no connection (or
  // the primary fell silent) just then (h159, fence-timeout-words.test.ts). Nothing left: unread.
  const boundMs = deadlineAt === undefined ? FENCE_HOLD_READ_MS : Math.min(FENCE_HOLD_READ_MS, deadlineAt - Date.now());
  if (boundMs < 1) return hold;
  try {
    const rows = await withNodeDeadline(pool, boundMs, `${shardId}/primary`, async (c) =>
      hold.kind !== undefined
        ? (await c.query<Pick<FenceRow, 'kind' | 'unit_id' | 'job_id'>>(`select kind, unit_id, job_id::text as job_id from write_fences where kind = $1 and unit_id = $2`, [hold.kind, hold.unitId])).rows
        : (await c.query<Pick<FenceRow, 'kind' | 'unit_id' | 'job_id'>>(`select kind, unit_id, job_id::text as job_id from write_fences where ctid = $1::tid`, [hold.tuple])).rows,
    );
    const row = rows[0];
    return row === undefined ? hold : { how: hold.how, kind: row.kind, unitId: row.unit_id, jobId: row.job_id };
  } catch {
    return hold;
  }
}

/** The bound of {@link readFenceHold}'s query (less where the write's deadline leaves less). */
const FENCE_HOLD_READ_MS = 1000;

interface FenceRow {
  kind: 'slot' | 'directory';
  /** The slot's number or the directory key, as text. */
  unit_id: string;
  state: 'open' | 'fenced' | 'moved' | 'incoming';
  /** The move job that wrote the row, as text; null for a hand change's row (or an operator's). */
  job_id: string | null;
  /** The shard a move in progress is taking the unit to, once its bulk copy is done (shard migration 011); a hint. */
  moving_to: string | null;
}

type FenceVerdict = 'write' | 'wait' | 'reroute';

/**
 * Every write transaction is READ COMMITTED, whatever the login's default: the fence row is read
 * and the change captured with a snapshot per statement, so a move that began during the
 * transaction is seen. The shards refuse writes at other levels (SQLSTATE `CAF05`, shard
 * migration 012; docs/sharding-spec.md section 9).
 */
const WRITE_BEGIN = 'begin isolation level read committed';

/**
 * The timeline of the server the write runs on (null on a server in recovery, where the write
 * fails anyway), read in the same round trip as {@link WRITE_BEGIN}: a read token taken on
 * another connection is good only on that timeline (see `writePosition`).
 */
const WRITE_TIMELINE_SQL = `select case when pg_is_in_recovery() then null else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint end as tli`;

/**
 * A write's first round trip, one simple query: {@link WRITE_BEGIN}, with a deadline its SET
 * LOCALs ({@link deadlineSettingsSql}) right after the BEGIN, then the timeline
 * ({@link WRITE_TIMELINE_SQL}) and last the key's fence rows ({@link writerFenceRowsSql}, the
 * slot and key as quoted literals). Each statement runs once the one before it succeeded, under
 * the timeouts set before it, as when each had a round trip of its own: the first that fails (a
 * lock wait on the fence rows cut short by `lock_timeout`, say) fails the query with its own
 * error, and the transaction is rolled back as before. `fences` is false when the key cannot be
 * a literal ({@link sqlLiteral}): its fence rows are then read apart, with parameters.
 */
function writeBeginSql(slot: number, key: string, leftMs: number | undefined, clusterId: boolean): { readonly sql: string; readonly fences: boolean } {
  const settings = leftMs === undefined ? '' : `; ${deadlineSettingsSql(leftMs, { lockTimeout: true })}`;
  // The cluster the write commits on, for its token (cluster-identity.ts), with the timeline.
  const begin = `${WRITE_BEGIN}${settings}; ${WRITE_TIMELINE_SQL}${clusterId ? `, ${CLUSTER_ID_SQL} as cluster_id` : ''}`;
  const keyLiteral = sqlLiteral(key);
  if (keyLiteral === undefined || !Number.isSafeInteger(slot)) return { sql: begin, fences: false };
  // A safe integer's decimal text needs no escaping (the column is text, as the parameter was).
  return { sql: `${begin}; ${writerFenceRowsSql(`'${slot}'`, keyLiteral)}`, fences: true };
}

/** The rows of a statement of a simple query's answer, `at` from its end (-1: the last). */
function rowsOfAnswer(answer: unknown, at: number): unknown[] | undefined {
  const results = Array.isArray(answer) ? (answer as unknown[]) : [answer];
  const rows = (results.at(at) as { rows?: unknown } | undefined)?.rows;
  return Array.isArray(rows) ? rows : undefined;
}

/** The timeline {@link writeBeginSql} answered, if it did (its last statement, or the one before the fence rows). */
function timelineOfBegin(answer: unknown, fences: boolean): number | undefined {
  const tli = (rowsOfAnswer(answer, fences ? -2 : -1)?.[0] as { tli?: unknown } | undefined)?.tli;
  return typeof tli === 'string' || typeof tli === 'number' ? Number(tli) : undefined;
}

/** The cluster id {@link writeBeginSql} answered with the timeline, if it did. */
function clusterIdOfBegin(answer: unknown, fences: boolean): string | undefined {
  return clusterIdOfRow(rowsOfAnswer(answer, fences ? -2 : -1)?.[0]);
}

/**
 * The write's connection failed after its COMMIT was acknowledged, and the shard's address now
 * reaches a server on another timeline (a failover since the write began): whether that server's
 * history holds the commit is unknown.
 */
class TimelineChangedError extends Error {
  override readonly name = 'TimelineChangedError';
}

/**
 * The fence rows of a key's slot and directory key, as readers read them: in their snapshot,
 * unlocked (docs/sharding-spec.md). `slot` and `key` are SQL expressions: `$1` and `$2`, or
 * quoted literals ({@link sqlLiteral}) where the statement goes in a simple query of several.
 * Writers lock the rows, see {@link writerFenceRowsSql}.
 */
export function readerFenceRowsSql(slot: string, key: string): string {
  return `select kind, state, map_version::text as map_version from write_fences where (kind = 'slot' and unit_id = ${slot}) or (kind = 'directory' and unit_id = ${key})`;
}

/** {@link readerFenceRowsSql} over the parameters `$1` (the slot) and `$2` (the key). */
export const READER_FENCE_ROWS_SQL = readerFenceRowsSql('$1', '$2');

/**
 * The fence rows of a key's slot and directory key for writers, locked FOR SHARE (the mover's
 * fence waits for them), with each row's `moving_to`: the destination of a
 * move taking the unit away from this shard, named once its bulk copy is done (the source's
 * capture row, shard migration 011), unless the key is one the move leaves behind. The column is read through `to_jsonb` so that a
 * shard without migration 011 answers null rather than failing every write: an upgrade deploys
 * the services before the control plane, whose custom resource runs the migrations. `slot` and
 * `key` are SQL expressions, as for {@link readerFenceRowsSql}.
 */
export function writerFenceRowsSql(slot: string, key: string): string {
  return `select w.kind, w.unit_id, w.state, w.job_id::text as job_id,
         (select to_jsonb(c) ->> 'moving_to' from move_captures c
           where c.kind = w.kind and c.unit_id = w.unit_id and to_jsonb(c) ->> 'moving_to' is not null and not (${key} = any (c.excluded_keys)) limit 1) as moving_to
    from write_fences w
   where (w.kind = 'slot' and w.unit_id = ${slot}) or (w.kind = 'directory' and w.unit_id = ${key})
     for share of w`;
}

/** {@link writerFenceRowsSql} over the parameters `$1` (the slot) and `$2` (the key). */
export const WRITER_FENCE_ROWS_SQL = writerFenceRowsSql('$1', '$2');

/**
 * `text` as a quoted SQL literal for a simple query, which takes no bind parameters: pg's
 * `escapeLiteral` (quotes doubled; with a backslash, every backslash doubled in an `E'...'`
 * literal, read alike whatever `standard_conforming_strings` says). Undefined for a text holding
 * a NUL: a simple query's text ends at its first NUL, so the statement is sent with its
 * parameters instead (it fails as it always did, 22021).
 */
export function sqlLiteral(text: string): string | undefined {
  return text.includes('\u0000') ? undefined : escapeLiteral(text);
}

/**
 * The SET LOCALs of a transaction held to a deadline `leftMs` away: `statement_timeout` (and,
 * for a write, `lock_timeout`) of the time left, so PostgreSQL stops the work when the caller
 * stops waiting, each unless the session's own is shorter ({@link timeoutsAtMostSql}: a role's or
 * database's default, which an operator sets as a safety limit on every statement of the login:
 * the deadline bounds the transaction's statements by the time left, it does not lift that limit,
 * as it did until h147 here while the replica reader's lone statements obeyed it; a statement it
 * ends before the deadline is told as the session's own, `SessionTimeoutError`, deadline.ts), and
 * `idle_in_transaction_session_timeout` of the time left and the client's grace (or, again, the
 * session's own where shorter: an operator's limit on how long a transaction of the login sits
 * idle with its locks and snapshot, which until h155 this SET LOCAL lifted for every transaction
 * held to a deadline; one it ends is told as the session's own, `SessionTimeoutError`, its
 * connection discarded: the server closed it, FATAL 25P03): a transaction whose client is gone
 * without a word (a black-holed path: its close never arrives) would otherwise stay open on the
 * server until TCP notices, hours, holding its rows and the unit's fence row FOR SHARE (a move
 * could not fence, a keyed retry would wait on its uncommitted row) or, for a read, its snapshot
 * (vacuum, a replica's replay) and its locks (DDL queues behind them). Past the deadline and the client's grace the client has given it up
 * anyway. Sent in the BEGIN's own simple query, so that no transaction is ever open on the
 * server without them (one stranded between a BEGIN and a later SET would be); the timeouts are a
 * `select` there (one row), which no caller reads.
 * Only whole numbers of ms are written into the SQL ({@link serverTimeoutMs}).
 */
export function deadlineSettingsSql(leftMs: number, options: { readonly lockTimeout: boolean }): string {
  const left = serverTimeoutMs(leftMs);
  const idle = serverTimeoutMs(left + DEADLINE_GRACE_MS);
  const settings: SessionTimeoutSetting[] = options.lockTimeout ? ['statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout'] : ['statement_timeout', 'idle_in_transaction_session_timeout'];
  return timeoutsAtMostSql(settings, left, { idle_in_transaction_session_timeout: idle });
}

const NIL_UUID = '00000000-0000-0000-0000-000000000000';

/**
 * What a connection opened ahead of a cutover runs before it goes to the pool: the writer's
 * fence-row statement and a primary-key lookup in each sharded table. A new backend loads the
 * catalog entries of every relation, index and function its first statements touch; left to the
 * write that met the fence, that was most of what remained of it once connected. Measured in
 * bench:moves under 8 writers, 9 moves each, interleaved: the slowest write that met the fence
 * took 239-394 ms with the connection alone (under 250 ms in 2 of 9), 144-339 ms with the
 * fence-row statement (8 of 9), 119-179 ms with the lookups too (9 of 9).
 */
const DESTINATION_WARM_UP: readonly { readonly sql: string; readonly params: unknown[] }[] = [
  { sql: WRITER_FENCE_ROWS_SQL, params: ['-1', NIL_UUID] },
  { sql: 'select 1 from users where id = $1', params: [NIL_UUID] },
  { sql: 'select 1 from documents where id = $1', params: [NIL_UUID] },
];

/** The shard a move is copying the key's unit to, from the rows that decide the key's fate. */
function movingTo(rows: readonly FenceRow[], viaDirectory: boolean): string | null {
  return rows.find((r) => (r.kind === 'directory' || !viaDirectory) && r.moving_to !== null)?.moving_to ?? null;
}

/**
 * `TOKEN_POSITION_SQL` (token-position.ts) (why the flush position, and when the insert position) and the
 * timeline (the first 8 hex digits of the WAL segment file name), after a commit: what a
 * read-your-writes token carries.
 */
export const WRITE_POSITION_SQL = writePositionSql(undefined);

/**
 * {@link WRITE_POSITION_SQL} for a commit whose transaction ran with `synchronous_commit` =
 * `transactionSetting` (read in the COMMIT's round trip, `COMMIT_SETTING_SQL`): with `off` (a
 * body's `SET LOCAL synchronous_commit = off`, which the session's setting read after the commit
 * no longer shows) the insert position, the commit record being perhaps not flushed yet.
 */
function writePositionSql(transactionSetting: string | undefined): string {
  return `select ${tokenPositionSql(transactionSetting)}::text as lsn, ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint as tli`;
}

/**
 * A directory-placed key answers only to its directory fence: its rows stay put when its hash
 * slot moves. A hash-placed key answers to its slot fence and also to a directory fence, which
 * exists once a move has pinned the key (the writer's cached routing may predate the pin).
 */
function verdict(rows: readonly FenceRow[], viaDirectory: boolean): FenceVerdict {
  const relevant = rows.filter((r) => r.kind === 'directory' || !viaDirectory);
  // 'incoming': the map already names this shard but the mover has not released its fence yet.
  if (relevant.some((r) => r.state === 'fenced' || r.state === 'incoming')) return 'wait';
  if (relevant.some((r) => r.state === 'moved')) return 'reroute';
  return 'write';
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * How long a write without a deadline waits for its read token on another connection when its
 * own failed after the COMMIT was acknowledged (see `writePosition`).
 */
const TOKEN_RETRY_MS = 5000;

/**
 * Whether the error a transaction's COMMIT failed with says it was not committed: the server
 * answered the COMMIT with an ERROR (a deferred constraint, a serialization failure: the
 * transaction is rolled back), or with ROLLBACK ({@link RolledBackAtCommitError}). Anything
 * else (the connection reset or closed, a FATAL as the server stops) leaves the commit's
 * outcome unknown: the server may have committed before it failed. The severity is read as the
 * server spells it: under another `lc_messages` a refused commit counts as unknown, which is safe.
 * A FATAL 25P03 (`idle_in_transaction_session_timeout`) is a refusal too, whatever its severity's
 * words: the server raises it only while the transaction sits idle, before it has read the COMMIT,
 * and ends the transaction with it.
 */
function refusedCommit(error: unknown): boolean {
  return error instanceof RolledBackAtCommitError || (error as { severity?: unknown } | null)?.severity === 'ERROR' || idleTimeoutOf(error) !== undefined;
}

/** Builds a {@link ShardWriter} over the shard primaries. */
export function createShardWriter(options: ShardWriterOptions): ShardWriter {
  const maxFenceWaitMs = options.maxFenceWaitMs ?? 10_000;
  const maxReroutes = options.maxReroutes ?? 5;
  const sleep = options.sleep ?? defaultSleep;
  /**
   * Fills the pool of `destination` in the background while a move that has copied a unit this
   * writer writes from `source` catches up: up to as many connections as the source's pool
   * holds, which is about as many as this process writes the unit with at once, each warmed (see
   * {@link DESTINATION_WARM_UP}) before it is pooled. After the cutover those writes go to the
   * destination, and without this each would open its first connection there right after
   * waiting on the fence and run its first statements on a cold backend (shard migration 011 has
   * the figures). `pool.connect()` hands out an idle connection before it opens a new one, so the
   * idle ones are checked out too (and warmed again) while the missing ones open; connections
   * being opened count in `totalCount`, so writes meanwhile open no more. A connection that
   * cannot be opened or warmed now is left to the write that needs one to report.
   */
  function prepareDestination(destination: string, source: pg.Pool): void {
    const pool = options.primaries.get(destination);
    if (!pool) return;
    const missing = Math.min(source.totalCount, pool.options.max ?? 10) - pool.totalCount;
    if (missing <= 0) return;
    for (let i = missing + pool.idleCount; i > 0; i--) {
      pool.connect().then(
        async (client) => {
          let failed: Error | undefined;
          // A connection that dies while checked out emits 'error' on the client (see transaction.ts).
          const ignore = (): void => undefined;
          client.on('error', ignore);
          try {
            for (const { sql, params } of DESTINATION_WARM_UP) await client.query(sql, params);
          } catch (err) {
            failed = err instanceof Error ? err : new Error(String(err));
          }
          // A connection whose statement failed is not kept: it may be the connection that broke.
          client.off('error', ignore);
          client.release(failed);
        },
        () => undefined,
      );
    }
  }

  /**
   * Whether `err` is a unique violation of `users` or `documents` by id against a row that is no
   * duplicate but a copy a move is about to remove, read on `client` (its transaction rolled
   * back): a row of a unit this shard holds without owning it, a move's copy coming in
   * (`incoming`, removed by that move's catch-up) or a finished move's rows waiting for its
   * clean-up (`moved`), of an id the shard that owns the unit now no longer holds (a document
   * handed to another owner: deleted there, inserted here). Also when the row is gone by the
   * time it is looked up (removed in between). So the write waits for it as for a fence. While
   * the owning shard still holds the id it is a real duplicate (ids are unique across shards).
   */
  async function conflictsWithCopy(client: pg.PoolClient, shardId: string, err: unknown): Promise<boolean> {
    const e = err as { code?: unknown; table?: unknown; constraint?: unknown; detail?: unknown };
    if (e.code !== UNIQUE_VIOLATION || (e.table !== 'users' && e.table !== 'documents') || e.constraint !== `${e.table}_pkey`) return false;
    const id = typeof e.detail === 'string' ? /^Key \(id\)=\(([0-9a-f-]{36})\)/i.exec(e.detail)?.[1] : undefined;
    if (id === undefined) return false;
    const owner = e.table === 'users' ? 'r.id' : 'r.owner_id';
    const state = rowFenceStateSql(owner, 'r.slot');
    const { rows } = await client.query<{ state: string; owner: string }>(`select ${state} as state, ${owner}::text as owner from ${e.table} r where r.id = $1`, [id]);
    const row = rows[0];
    if (row === undefined) return true;
    if (row.state !== 'incoming' && row.state !== 'moved') return false;
    const owning = await options.router.routeForWrite(canonicalKey(row.owner), { fresh: true });
    const owningPool = owning.shardId === shardId ? undefined : options.primaries.get(owning.shardId);
    if (!owningPool) return false;
    const held = await owningPool.query(`select 1 from ${e.table} where id = $1`, [id]);
    return held.rowCount === 0;
  }

  /**
   * The read token's query, run once the commit is acknowledged. A cancel request sent at the
   * deadline just before the commit went out (one at a time, none once it has: see
   * holdToDeadline) can reach this query instead of the body's statement: the write is committed
   * all the same, so the query is asked again once that request has been passed on in full (no
   * cancel request can reach it then). A connection that failed after the COMMIT's answer (a
   * reset, a terminated backend) has the query asked on another connection of the pool: the write
   * is committed, and reporting it as outcome-unknown for want of its token would send the
   * client looking (or retrying) for nothing. The dead connection is given back (`discard`) before
   * another is asked for: it still counts in the pool, and in a pool of one (a Lambda's, the demo
   * backend's at `DATABASE_POOL_SIZE=1`) the new connection would wait for it until the timeout.
   * The other connection's token counts only on the timeline the write began on: on another, the
   * address names another server now, which may not hold the commit (outcome-unknown).
   */
  async function writePosition(
    client: pg.PoolClient,
    guard: ClientDeadline | undefined,
    pool: pg.Pool,
    shardId: string,
    deadlineAt: number | undefined,
    discard: (error: Error) => void,
    timeline: number | undefined,
    positionSql: string,
  ): Promise<pg.QueryResult<{ lsn: string; tli: string }>> {
    try {
      return await client.query<{ lsn: string; tli: string }>(positionSql);
    } catch (err) {
      // After the commit no statement_timeout of the transaction is in force: a 57014 here is a
      // cancel request's (the deadline's, sent as the commit went out, or another session's),
      // whatever the message's language (a session's or role's own statement_timeout aside).
      if (guard !== undefined && queryCanceled(err)) {
        // Once the request is passed on in full (its second signal could cancel the next statement too).
        await guard.settled();
        return client.query<{ lsn: string; tli: string }>(positionSql);
      }
      // The connection failed after the COMMIT was acknowledged (a reset, a terminated backend):
      // the write is committed, and any session's insert position read from now on on that server
      // is at or past its commit record, as is its flush position when the commit was flushed
      // before it was answered (`positionSql`: the insert position for a transaction that ran with
      // synchronous_commit off, whatever the other session's setting), so another connection
      // gives a token as good. Not while the deadline
      // holds the connection dropped for silence (`expired`): that primary is not answering.
      if (guard?.expired === true) throw err;
      discard(err instanceof Error ? err : new Error(String(err)));
      const timeoutMs = deadlineAt === undefined ? TOKEN_RETRY_MS : Math.max(DEADLINE_GRACE_MS, deadlineAt - Date.now());
      let position: pg.QueryResult<{ lsn: string; tli: string }>;
      try {
        position = await withNodeDeadline(pool, timeoutMs, `${shardId}/primary`, (other) => other.query<{ lsn: string; tli: string }>(positionSql));
      } catch {
        throw err;
      }
      // Only the timeline the write ran on vouches for its commit: the address may name another
      // server now (a promoted replica, which an asynchronous commit may never have reached).
      const tli = position.rows[0]?.tli;
      if (timeline === undefined || tli === undefined || Number(tli) !== timeline) {
        throw new TimelineChangedError(
          `shard ${shardId}'s address now reaches a primary on timeline ${tli ?? 'unknown'}, the write ran on ${timeline ?? 'an unknown timeline'}: a failover since, whose new primary may not hold the commit`,
          { cause: err },
        );
      }
      return position;
    }
  }

  async function withShardWrite<T>(rawKey: string, fn: (ctx: ShardWriteContext) => Promise<T>, writeOptions: ShardWriteOptions = {}): Promise<ShardWriteResult<T>> {
    // Fence rows name directory keys in canonical form: looked up as spelled, an upper-case id
    // would miss its key's 'moved' row (docs/sharding-spec.md, sections 1 and 9).
    const key = canonicalKey(rawKey);
    checkDeadlineMs('deadlineMs', writeOptions.deadlineMs);
    const deadlineAt = writeOptions.deadlineMs === undefined ? undefined : Date.now() + writeOptions.deadlineMs;
    let fresh = false;
    let reroutes = 0;
    let waitedMs = 0;
    let backoffMs = 2;
    /**
     * The pools on which a BEGIN of this write was refused the cluster id (see the `cluster-id-refused`
     * outcome below): once per pool, not per write. A write rerouted meanwhile (a move flipped its
     * unit's owner) to another shard whose login was refused too (the same provider's revoke, its
     * pool having learned "may" before) was refused there in turn: counted once for the write, that
     * refusal failed it with 42501 (test/integration/sharding/cluster-id-revoked.test.ts, h154).
     * Bounded all the same: by the shards, each pool refused at most once.
     */
    const clusterIdRefusedOn = new Set<pg.Pool>();
    /** What the write's last wait on a fence was on, for the words of its `fence-timeout`. */
    let hold: FenceHold = { how: 'fenced' };
    for (let attempt = 1; ; attempt++) {
      /** Why this attempt waits, if it does: a fence, or a copy moving in that holds a written id. */
      let waitedFor: 'fence' | 'copy' = 'fence';
      /** When the attempt began (monotonic): a wait on a fence row it met counts toward maxFenceWaitMs. */
      const attemptStarted = performance.now();
      const route = await options.router.routeForWrite(key, { fresh });
      // As for reads: once the caller's deadline has passed, no further attempt (a 1 ms
      // statement_timeout does not reliably stop the short fence-row statement).
      if (deadlineAt !== undefined && Date.now() >= deadlineAt) {
        throw new ShardWriteError('deadline-exceeded', `the write on shard ${route.shardId} passed its ${writeOptions.deadlineMs} ms deadline before it could be placed; nothing was committed`);
      }
      const pool = options.primaries.get(route.shardId);
      if (!pool) throw new ShardWriteError('unknown-shard', `key routes to shard ${route.shardId}, which has no primary pool`);
      // The server enforces the deadline (statement_timeout below) only while it answers: a
      // silent primary is held to it here, on the client (deadline.ts).
      let client: pg.PoolClient;
      try {
        client = deadlineAt === undefined ? await pool.connect() : await connectBy(pool, deadlineAt, `${route.shardId}/primary`);
      } catch (err) {
        if (err instanceof DeadlinePassedError) throw new ShardWriteError('deadline-exceeded', `the write on shard ${route.shardId} got no connection within its ${writeOptions.deadlineMs} ms deadline; nothing was committed`, { cause: err });
        throw err;
      }
      // A connection that dies while checked out (a restart, a failover, pg_terminate_backend)
      // emits 'error' on the client, which the pool does not listen to then: unheard, it would end
      // the process. The failed query carries the error to the caller instead (see transaction.ts).
      let died = false;
      /**
       * What the client emitted as 'error', in order: a FATAL that came while it sent nothing (the
       * idle timeout's 25P03, say), then pg's "Connection terminated unexpectedly" as the server
       * closes the connection.
       */
      const diedWith: unknown[] = [];
      const onError = (error: unknown): void => {
        died = true;
        diedWith.push(error);
      };
      client.on('error', onError);
      /** `cluster-id-refused`: sent again at once, without the cluster id (see the catch below). */
      let outcome: FenceVerdict | 'cluster-id-refused';
      let broken = false;
      /** What the attempt failed with, if it did (a connection a late cancel may reach is not reused). */
      let failure: unknown;
      let committed = false;
      // Set once the body is done and the transaction's commit is about to be sent on a live connection.
      let committing = false;
      // At the deadline the statement is cancelled (never once the commit is on its way); only a
      // server that does not answer within the grace has its connection dropped.
      const guard = deadlineAt === undefined ? undefined : holdToDeadline(client, deadlineAt, { mayCancel: () => !committing });
      /** The timeline of the server the transaction runs on, read with its BEGIN. */
      let timeline: number | undefined;
      /** The cluster of that server, read with its BEGIN too (undefined: its login may not read it). */
      let clusterId: string | undefined;
      /** The transaction's own synchronous_commit, read with its COMMIT (token-position.ts, COMMIT_SETTING_SQL). */
      let commitSetting: string | undefined;
      /** Set once the connection went back to its pool as broken before the attempt's end (see `writePosition`). */
      let released = false;
      const discard = (error: Error): void => {
        if (released) return;
        released = true;
        guard?.disarm();
        client.release(error);
      };
      /** The fence rows read in the BEGIN's round trip (see `writeBeginSql`). */
      let fenceRows: FenceRow[] | undefined;
      /** Whether the BEGIN's round trip asked for the cluster id, and whether it was answered. */
      let askedClusterId = false;
      let begun = false;
      try {
        askedClusterId = await clusterIdReadable(pool, client);
        const begin = writeBeginSql(route.slot, key, deadlineAt === undefined ? undefined : deadlineAt - Date.now(), askedClusterId);
        const body = await inClientTransaction<{ verdict: 'write'; value: T } | { verdict: Exclude<FenceVerdict, 'write'> }>(
          client,
          begin.sql,
          async () => {
            // Read with the BEGIN, unless the key could not go into its simple query.
            const fences = { rows: fenceRows ?? (await client.query<FenceRow>(WRITER_FENCE_ROWS_SQL, [String(route.slot), key])).rows };
            const destination = movingTo(fences.rows, route.viaDirectory);
            if (destination !== null && destination !== route.shardId) prepareDestination(destination, pool);
            const found = verdict(fences.rows, route.viaDirectory);
            if (found === 'wait') {
              const row = fences.rows.find((r) => (r.kind === 'directory' || !route.viaDirectory) && (r.state === 'fenced' || r.state === 'incoming'));
              hold = row === undefined ? { how: 'fenced' } : { how: 'fenced', kind: row.kind, unitId: row.unit_id, jobId: row.job_id };
            }
            if (found !== 'write') return new RollbackWith({ verdict: found });
            const value = await fn({ client, shardId: route.shardId, slot: route.slot, version: route.version });
            // A connection that died before now (its backend terminated while the transaction sat
            // idle: a fast shutdown, pg_terminate_backend) is not queryable: pg refuses the COMMIT
            // without sending it, so nothing was committed. Between here and the COMMIT being
            // written to the socket only microtasks run, so no later death is missed.
            committing = !died;
            return { verdict: found, value };
          },
          // A connection that could not even roll back must not go back to the pool.
          () => {
            broken = true;
          },
          (answer) => {
            begun = true;
            timeline = timelineOfBegin(answer, begin.fences);
            clusterId = clusterIdOfBegin(answer, begin.fences);
            if (begin.fences) fenceRows = rowsOfAnswer(answer, -1) as FenceRow[] | undefined;
          },
          // The body may have lowered synchronous_commit for its transaction alone (SET LOCAL),
          // which the COMMIT ends: read with it, in its round trip, for the token's position.
          {
            read: COMMIT_SETTING_SQL,
            onRead: (answer) => {
              commitSetting = commitSettingOf(answer);
            },
          },
        );
        if (body.verdict === 'write') {
          committed = true;
          const position = await writePosition(client, guard, pool, route.shardId, deadlineAt, discard, timeline, writePositionSql(commitSetting));
          const lsn = position.rows[0]?.lsn ?? '0/0';
          // The id is the BEGIN's server's: the commit's. A position read on another connection
          // (writePosition) from another cluster of the same timeline number (a switchover since)
          // only makes the token one of another cluster there, read on its primary: never misjudged.
          const readToken = { shardId: route.shardId, lsn, timeline: Number(position.rows[0]?.tli ?? 1), mapVersion: route.version, ...(clusterId === undefined ? {} : { clusterId }) };
          return { value: body.value, shardId: route.shardId, slot: route.slot, token: lsn, readToken, attempts: attempt };
        }
        outcome = body.verdict;
      } catch (err) {
        failure = err;
        if (committed) {
          // The commit was acknowledged; only the read token's query failed.
          broken = true;
          throw new ShardWriteError(
            'outcome-unknown',
            err instanceof TimelineChangedError
              ? `shard ${route.shardId}'s primary acknowledged the write's commit, then its connection failed, and ${err.message}`
              : `shard ${route.shardId}'s primary committed the write, then failed to give its read token; the write was committed`,
            { cause: err },
          );
        }
        if (guard?.expired === true) {
          broken = true;
          throw new ShardWriteError(
            committed || committing ? 'outcome-unknown' : 'deadline-exceeded',
            committed
              ? `shard ${route.shardId}'s primary committed the write but did not answer for its read token within the ${writeOptions.deadlineMs} ms deadline; the connection was dropped`
              : committing
                ? `shard ${route.shardId}'s primary did not answer the write's commit within its ${writeOptions.deadlineMs} ms deadline; the connection was dropped and whether the write was committed is unknown`
                : `shard ${route.shardId}'s primary did not answer within the write's ${writeOptions.deadlineMs} ms deadline; the connection was dropped and nothing was committed`,
            { cause: new DeadlinePassedError(`${route.shardId}/primary`, 'query') },
          );
        }
        if (committing && !refusedCommit(err)) {
          // The commit was sent and no answer of the server's refused it: the connection failed
          // (reset, closed, the server stopping) on the way or after the server committed.
          broken = true;
          throw new ShardWriteError(
            'outcome-unknown',
            `shard ${route.shardId}'s primary was sent the write's commit, then the connection failed before it answered (${err instanceof Error ? err.message : String(err)}); whether the write was committed is unknown`,
            { cause: err },
          );
        }
        const code = (err as { code?: unknown }).code;
        // The session's own idle_in_transaction_session_timeout, shorter than the deadline's (kept
        // by deadlineSettingsSql; with no deadline in force as it is), ended the transaction while
        // the body worked between two statements: the server sent FATAL 25P03 and closed the
        // connection (discarded: `died`, or `broken` here). Named, as the other session timeouts
        // are; the deadline's own idle timeout fires only past the deadline and the client's
        // grace, by when the connection was dropped (`expired`, above). Nothing was committed: a
        // COMMIT is refused unsent once the connection failed, or met the FATAL (`refusedCommit`).
        const idleEnded = idleTimeoutOf(err, ...diedWith);
        if (idleEnded !== undefined) {
          broken = true;
          throw new ShardWriteError(
            'cancelled',
            `the write's transaction on shard ${route.shardId} sat idle longer than the session's own idle_in_transaction_session_timeout (a role's or database's setting, or one the write's own code set), ${writeOptions.deadlineMs === undefined ? 'the write having no deadline' : `before its ${writeOptions.deadlineMs} ms deadline: not the deadline`}; the server ended it and closed the connection, and nothing was committed`,
            { cause: new SessionTimeoutError(`${route.shardId}/primary`, 'idle_in_transaction_session_timeout', idleEnded) },
          );
        }
        // A cancel request the deadline did not send (57014 before the deadline, none sent: told in
        // any lc_messages language, see cancelledByOtherSession): someone else's (pg_cancel_backend).
        if (guard?.cancelledByOther(err) === true) {
          throw new ShardWriteError('cancelled', `a statement of the write on shard ${route.shardId} was cancelled on the server by ${otherCancelWords(err)} (not its ${writeOptions.deadlineMs} ms deadline); nothing was committed`, { cause: err });
        }
        // A wait on a fence row (its key's own, or the fence trigger's for a row the body writes)
        // that a lock timeout ended before the deadline: a fence change held the row (a move's
        // fence or flip until its commit, a hand change's fence transaction), and the session's
        // own lock_timeout, shorter (a role's default: the transaction keeps it, deadlineSettingsSql,
        // and with no deadline it is in force), ended the wait first. The fence's wait, not an
        // error of the write: tried again as after CAF01 (below), within maxFenceWaitMs
        // ('fence-timeout', the wait counted) and the deadline, each wait still within the role's
        // limit. Until h151 the write failed `cancelled` by its own lock_timeout wherever a fence
        // change held the row longer than the role's setting (a login at 1 ms: 6 of about 4,000
        // writes through 6 moves), a wait a login without the setting sat out
        // (fence-wait-role-lock-timeout.test.ts). At the deadline it is the deadline's, as ever.
        const fenceRowWait = lockWaitOnFenceRow(err) && (guard === undefined || guard.arrivedBeforeDeadline(err));
        if (fenceRowWait) waitedMs += Math.max(0, Math.round(performance.now() - attemptStarted));
        // The session's own statement_timeout or lock_timeout, shorter than the time left, ended a
        // statement (a lock wait) before the deadline: a role's or database's default (the
        // transaction keeps it where shorter than the time left, deadlineSettingsSql; with no
        // deadline it is in force), or the body's own SET LOCAL. Not the deadline: said so, naming
        // the setting, as the replica reader and withShardRead say it (issue #15).
        const ownTimeout = fenceRowWait ? undefined : guard === undefined ? sessionTimeoutOf(err) : guard.sessionTimeout(err);
        if (ownTimeout !== undefined) {
          throw new ShardWriteError(
            'cancelled',
            `a statement of the write on shard ${route.shardId} was ${ownTimeout === 'lock_timeout' ? 'ended, waiting for a lock,' : 'cancelled'} by the session's own ${ownTimeout} (a role's or database's setting, or one the write's own code set), ${writeOptions.deadlineMs === undefined ? 'the write having no deadline' : `before its ${writeOptions.deadlineMs} ms deadline: not the deadline`}; nothing was committed`,
            { cause: new SessionTimeoutError(`${route.shardId}/primary`, ownTimeout, err) },
          );
        }
        // A lock the body would not wait for (NOWAIT), or a lock timeout in words other than
        // English, before the deadline: not the deadline's either (its lock_timeout of the time
        // left fires at the deadline), so the server's own error, as for any other the body met.
        const beforeDeadline = code === LOCK_NOT_AVAILABLE && guard?.arrivedBeforeDeadline(err) === true;
        if (deadlineAt !== undefined && typeof code === 'string' && DEADLINE_SQLSTATES.has(code) && !beforeDeadline) {
          throw new ShardWriteError('deadline-exceeded', `the write on shard ${route.shardId} passed its ${writeOptions.deadlineMs} ms deadline; PostgreSQL cancelled it and nothing was committed`, { cause: err });
        }
        // The database enforces the fence too (shard migration 004): a row of this transaction
        // (perhaps of another owner's unit) was fenced or is owned elsewhere now. Nothing was
        // committed, so the write is retried like one that saw the fence up front.
        // A server in recovery refused the write (25006, read-only): the primary's address reached
        // a standby (after a failover, a cached DNS answer naming the old writer). The connection
        // stays on that standby for good: pooled again, it would fail every write lent it after the
        // address names the primary again, for as long as traffic keeps it from idling out.
        if (code === READ_ONLY_SQL_TRANSACTION) broken = true;
        // The BEGIN's round trip refused the cluster id it asked for (42501: the login's EXECUTE on
        // pg_control_system() revoked since its pool learned it may; 42883: the function removed):
        // its transaction was rolled back before the key's fence rows were read or `fn` ran, so
        // nothing of the write was done. The pool's answer is forgotten (cluster-identity.ts),
        // asked again on the next attempt's connection, and the write sent again at once, without
        // the id once the login is refused it: kept, every write of the pool failed so until the
        // process restarted. Once per pool: refused again there (another part of the round trip
        // was refused, the question answered yes), the error is the write's.
        if (askedClusterId && !begun && !clusterIdRefusedOn.has(pool) && clusterIdRefused(err)) {
          clusterIdRefusedOn.add(pool);
          forgetClusterIdReadable(pool);
          outcome = 'cluster-id-refused';
        } else if (code === 'CAF01' || fenceRowWait) {
          outcome = 'wait';
          hold = fenceRowWait ? fenceHoldOfLockWait(err) : fenceHoldOfRefusal(err);
        } else if (code === 'CAF02') outcome = 'reroute';
        else if (!broken && (await conflictsWithCopy(client, route.shardId, err).catch(() => false))) {
          outcome = 'wait';
          waitedFor = 'copy';
        } else throw err;
      } finally {
        guard?.disarm();
        // Cancelled at the deadline: lent again only once the cancel request has been passed on in full.
        if (guard !== undefined && queryCanceled(failure)) await guard.settled();
        client.off('error', onError);
        if (!released) client.release(broken || died || guard?.reusable(failure) === false || undefined);
      }
      if (outcome === 'cluster-id-refused') continue;
      if (outcome === 'reroute') {
        reroutes += 1;
        if (reroutes > maxReroutes) {
          throw new ShardWriteError('too-many-reroutes', `key's unit moved ${reroutes} times in a row; routing is not converging (last route: shard ${route.shardId}, slot ${route.slot})`);
        }
      } else {
        if (waitedMs >= maxFenceWaitMs) {
          throw new ShardWriteError(
            'fence-timeout',
            waitedFor === 'copy'
              ? `an id this write inserts on shard ${route.shardId} is held by a move's copy of another unit for more than ${maxFenceWaitMs} ms (the row left that unit; that move's catch-up or clean-up removes the copy): retry later`
              : fenceTimeoutWords(await readFenceHold(pool, route.shardId, hold, deadlineAt), route.shardId, route, maxFenceWaitMs),
          );
        }
        await sleep(backoffMs);
        waitedMs += backoffMs;
        backoffMs = Math.min(backoffMs * 2, 50);
      }
      fresh = true;
    }
  }

  return { withShardWrite };
}
