/**
 * The one way application code reads a key's rows. `withShardRead(key, fn)` routes the key,
 * borrows a connection of the owning shard from the replica reader (a fresh replica, or the
 * primary), opens a read-only snapshot there and, in that same snapshot, reads the write-fence
 * rows of the key's slot and directory key (table `write_fences`) before running `fn`:
 *
 * - `moved`: another shard owns the unit now. The reader's routing is stale; it refreshes it
 *   from the catalog and reads again on the new owner. Because the mover marks the source
 *   `moved` before it deletes anything there, a snapshot that could miss a row the move deleted
 *   also sees `moved`: a read never returns the old owner's emptied (or stale) copy, and the
 *   mover need not wait a fixed grace period for readers holding an old map.
 * - `incoming`: a move is copying the unit here (or has just published it and not yet opened
 *   it): the copy may be incomplete, so the read waits a moment and routes again.
 * - `open`, `fenced` or no row: this shard owns the unit (a fenced unit holds its writes, so
 *   what is read is current).
 *
 * On a replica, whose snapshot may predate the move that brought the unit here, "no row" counts
 * as owned only on the unit's first owner ({@link WriteRoute.firstOwner}), and `moved` in a row
 * the route's map already knows means the unit came back since: either way the read goes to the
 * shard's primary (docs/sharding-spec.md, section 9, Readers).
 *
 * No LISTEN/NOTIFY is involved, so nothing pins an RDS Proxy connection. A read-your-writes
 * token (see {@link ReadToken}) sends the read to a node that has replayed the write: a replica
 * past its position on the shard that made it, or the primary when the token names another
 * shard (the write was made before a move) or another timeline (a failover since). A deadline
 * sets `statement_timeout` in the read's transaction, and the statement running at the deadline
 * is cancelled, so PostgreSQL stops the query when the caller stops waiting.
 *
 * @example
 * ```ts
 * const reads = createShardReader({ router: routerForWrites(router, slotMaps, directory), reader });
 * const { value } = await reads.withShardRead(userId, async ({ client }) => (await client.query('select * from users where id = $1', [userId])).rows[0], { deadlineMs: 2000 });
 * ```
 */
import type pg from 'pg';
import { canonicalKey } from '../../core/sharding/keys.js';
import type { ReadToken } from '../../core/sharding/read-token.js';
import type { LostWrite } from '../../core/sharding/timeline-history.js';
import { ReadCancelledError, type ReadOptions, type ReplicaReader } from './replica-reader.js';
import { inClientTransaction, RollbackWith } from './transaction.js';
import { checkDeadlineMs, DeadlinePassedError, otherCancelWords, SessionTimeoutError } from './deadline.js';
import { deadlineSettingsSql, READER_FENCE_ROWS_SQL, readerFenceRowsSql, sqlLiteral, type WriteRoute, type WriteRouter } from './write-transaction.js';

export interface ShardReaderOptions {
  /** The routing; `fresh: true` must bypass every cache (asked for after finding a unit moved away). */
  readonly router: WriteRouter;
  /**
   * `primaryTimeline` (when given) sends token reads to the primary after a failover;
   * `primaryClusterId`, those of another cluster (a blue/green switchover since).
   */
  readonly reader: Pick<ReplicaReader, 'withReadClient'> & Partial<Pick<ReplicaReader, 'primaryTimeline' | 'primaryClusterId'>>;
  /** How many times a read may be sent elsewhere because its unit moved. Default 5. */
  readonly maxReroutes?: number;
  /** How long a read may wait for a unit being copied in. Default 10 000 ms. */
  readonly maxIncomingWaitMs?: number;
  /** Injected for tests; defaults to `setTimeout`. */
  readonly sleep?: (ms: number) => Promise<void>;
}

/** What `fn` gets: a client inside a read-only snapshot on the key's owner. */
export interface ShardReadContext {
  readonly client: pg.PoolClient;
  readonly shardId: string;
  readonly slot: number;
  /** The node that serves the read (`shard_001/replica-1`, `shard_001/primary`). */
  readonly servedBy: string;
}

export interface ShardReadOptions {
  /** A read-your-writes token: the read sees that write. */
  readonly token?: ReadToken;
  /**
   * The request's deadline, in ms from the call: the read's `statement_timeout`, and the statement
   * still running at the deadline is cancelled then (the connection stays in the pool), so a
   * statement begun shortly before it does not outrun it (replica-reader.ts, deadline.ts). NaN,
   * infinite or over `MAX_DEADLINE_MS` is refused (`InvalidDeadlineError`).
   */
  readonly deadlineMs?: number;
  /**
   * Read on the shard primary only (every attempt, also after a reroute): what is found, or not
   * found, is what is committed. A primary that cannot be reached fails the read
   * (`ShardUnavailableError`, `deadline-exceeded`); no replica answers instead.
   */
  readonly primary?: boolean;
}

export interface ShardReadResult<T> {
  readonly value: T;
  readonly shardId: string;
  readonly servedBy: string;
  /** 1 when the first route was right; more when the unit had moved or was being copied in. */
  readonly attempts: number;
  /**
   * The token's write is not on the shard primary's timeline: a failover since lost it (see
   * `ReadNode.lostWrite`). `value` is what the primary holds; a caller that found nothing answers
   * that the write was lost, not that it never existed (docs/sharding-spec.md).
   */
  readonly lostWrite?: LostWrite;
}

/**
 * `cancelled`: a read had a statement cancelled before its deadline, not by it: by someone else's
 * cancel request (`pg_cancel_backend`, an operator; `cause` a `ReadCancelledError`), or by the
 * session's own `statement_timeout` or `lock_timeout`, shorter (a role's default, the read's own
 * code's SET LOCAL; `cause` a `SessionTimeoutError`, deadline.ts, naming which).
 */
export type ShardReadErrorReason = 'deadline-exceeded' | 'cancelled' | 'too-many-reroutes' | 'incoming-timeout';

/** A read could not be served. */
export class ShardReadError extends Error {
  override readonly name = 'ShardReadError';
  constructor(
    readonly reason: ShardReadErrorReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ShardReader {
  withShardRead<T>(key: string, fn: (ctx: ShardReadContext) => Promise<T>, options?: ShardReadOptions): Promise<ShardReadResult<T>>;
}

/** A directory key that is a UUID in canonical form, as PostgreSQL prints one (the owner keys of the sharded tables). */
const CANONICAL_UUID_SQL = `'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'`;

/**
 * The fence state that applies to one stored row, as a SQL expression over the row's owner
 * column (`owner`, a `uuid`: `u.id`, `d.owner_id`) and its `slot` column. It is the rule the
 * shards' write trigger applies to a written row (shard migration 004, docs/sharding-spec.md
 * section 9): the owner's `directory` row decides when there is one; otherwise the row's `slot`
 * row, unless the owner is one of the keys that row leaves out (`excluded_keys`); no row is
 * `open`. Reads that scan many owners at once (listings, lookups by a non-routing id) cannot
 * route per key as {@link ShardReader.withShardRead} does, so they apply this rule to each row
 * instead, in the same statement and hence the same snapshot.
 *
 * Rows outside every unit with a fence row in another state than `open`, nearly all of them,
 * are settled by two hashed look-ups in the columns' own types (each set is read once per
 * statement); only the others pay for the exact rule, the CASE making sure of that order.
 */
export function rowFenceStateSql(owner: string, slot: string): string {
  return `(case
    when ${slot} in (select unit_id::int from write_fences where kind = 'slot' and state <> 'open')
      or ${owner} in (select unit_id::uuid from write_fences where kind = 'directory' and state <> 'open' and unit_id ~ ${CANONICAL_UUID_SQL})
    then coalesce(
      (select f.state from write_fences f where f.kind = 'directory' and f.unit_id = ${owner}::text),
      (select f.state from write_fences f where f.kind = 'slot' and f.unit_id = ${slot}::text and not (${owner}::text = any (f.excluded_keys))),
      'open')
    else 'open'
  end)`;
}

/**
 * Whether the fence row that decides a stored row's state ({@link rowFenceStateSql}: the owner's
 * `directory` row, else its `slot` row unless the owner is one of its `excluded_keys`) was written
 * by a hand change (`job_id` null) rather than by a move, as a SQL boolean over the same columns;
 * true where no row decides. Read only for rows whose state is not `open` (the rebalance census:
 * rows behind a move's `moved` row are that move's leftovers, behind a hand change's they are
 * live; docs/sharding-spec.md, section 7). Kept beside {@link rowFenceStateSql}: the two must pick
 * the same row.
 */
export function rowFenceByHandSql(owner: string, slot: string): string {
  return `coalesce(
    (select f.job_id is null from write_fences f where f.kind = 'directory' and f.unit_id = ${owner}::text),
    (select f.job_id is null from write_fences f where f.kind = 'slot' and f.unit_id = ${slot}::text and not (${owner}::text = any (f.excluded_keys))),
    true)`;
}

/**
 * The rows of `table` (alias `r`) that a fence row of the shard names, by slot or by owner: a
 * superset of the rows whose fence state ({@link rowFenceStateSql}) is one of `states`, found
 * through the (slot, id) and owner indexes rather than by a scan of the table.
 */
export function rowsOfFencedUnitsSql(table: string, owner: string, states: string): string {
  return `select * from ${table} r
   where r.slot = any (array(select unit_id::int from write_fences where kind = 'slot' and state in ${states}))
      or r.${owner} = any (array(select unit_id::uuid from write_fences where kind = 'directory' and state in ${states} and unit_id ~ ${CANONICAL_UUID_SQL}))`;
}

/**
 * The fence states of a unit a shard holds rows of without owning it: `incoming` (a move is
 * still copying it here) and `moved` (another shard owns it; the rows wait for the clean-up,
 * or, on a replica, for its replay). As a SQL list, for `state in ...`.
 */
export const NOT_OWNED_STATES_SQL = `('moved', 'incoming')`;

type ReadVerdict = 'read' | 'reroute' | 'wait' | 'primary';

interface ReaderFenceRow {
  readonly kind: string;
  readonly state: string;
  readonly map_version: string;
}

/**
 * As for writes: a directory-placed key answers only to its directory fence row. On a replica
 * two answers are not to be trusted, because its snapshot may predate a move that brought the
 * unit (back) here; the read then goes to the primary (docs/sharding-spec.md, section 9):
 *
 * - no row of the unit, on a shard that is not the unit's first owner: the replica has not
 *   replayed the move's `incoming` row (nor its copy), and would answer "nothing" for rows
 *   that exist. The first owner needs no row: fence rows are never deleted, so a snapshot of it
 *   without one is from a time it owned the unit (ordinary bounded staleness). A slot's first
 *   owner is its owner in map version 1; a directory-placed key has none that can be known (a
 *   move of the key gives it a row on both its shards, so its replicas vouch once replayed);
 * - `moved` in a slot row whose map version the route's map already has, that map still naming
 *   this shard: the unit moved away and back, and the replica has not replayed its return. A
 *   directory row's version is the directory entry's, which the route does not carry: `moved`
 *   in it is checked on the primary before the read is re-routed;
 * - `incoming`: the replica may not have replayed the unit's opening yet; the primary tells
 *   whether the move is still copying (then the read waits) or has opened it (then it reads).
 */
function readVerdict(rows: readonly ReaderFenceRow[], route: WriteRoute, onReplica: boolean): ReadVerdict {
  const relevant = rows.filter((r) => r.kind === 'directory' || !route.viaDirectory);
  const moved = relevant.filter((r) => r.state === 'moved');
  if (moved.length > 0) {
    if (!onReplica) return 'reroute';
    const predatesRoute = (r: ReaderFenceRow): boolean => r.kind === 'slot' && Number(r.map_version) <= route.version;
    return route.viaDirectory || moved.every(predatesRoute) ? 'primary' : 'reroute';
  }
  // On a replica 'incoming' may be a state its primary left long ago (the move opened the unit
  // since, and the replica, within its bound, has not replayed that yet): only the primary says
  // whether the copy is still under way. Waiting here would last as long as the replica lags.
  if (relevant.some((r) => r.state === 'incoming')) return onReplica ? 'primary' : 'wait';
  if (!onReplica) return 'read';
  const unitKind = route.viaDirectory ? 'directory' : 'slot';
  if (rows.some((r) => r.kind === unitKind)) return 'read';
  // A directory-placed key's rows reach a shard by a move of the key (which writes its fence
  // rows on both shards before it copies) or of its slot before it was pinned: where they began
  // is not known, so without the key's own row only the primary can tell. A slot's rows, without
  // its row, are where they have always been only on its owner in map version 1 (a stub route
  // of map version 1 names it itself).
  if (route.viaDirectory) return 'primary';
  const firstOwner = route.firstOwner ?? (route.version === 1 ? route.shardId : undefined);
  return firstOwner === route.shardId ? 'read' : 'primary';
}

const QUERY_CANCELED = '57014';
const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Where a token sends a read on `shardId`: a replica past its position on the shard and
 * timeline that made it; otherwise the primary, which holds everything a move copied and
 * everything a failover kept. A token of this shard goes along to the primary too, which checks
 * it against its timeline's history: a write a failover lost is told apart from one that never
 * existed (`ReadNode.lostWrite`). A token of another shard (the write was made before a move)
 * says nothing about this shard's timelines. Nor does a token of another cluster than the one
 * the shard's primary was last found in (`clusterIdOf`, the reader's heartbeat): its position
 * and timeline are that cluster's (a blue/green switchover since, cluster-identity.ts), and the
 * primary holds what the switchover waited for. Otherwise its id goes along: a primary or
 * replica of another cluster is told by the id, not the position (replica-reader.ts).
 */
export function readOptionsFor(
  shardId: string,
  token: ReadToken | undefined,
  timelineOf?: (shardId: string) => number | undefined,
  clusterIdOf?: (shardId: string) => string | undefined,
): ReadOptions {
  if (token === undefined) return {};
  if (token.shardId !== shardId) return { primary: true };
  const cluster = token.clusterId === undefined ? undefined : clusterIdOf?.(shardId);
  if (cluster !== undefined && cluster !== token.clusterId) return { primary: true };
  const id = token.clusterId === undefined ? {} : { tokenClusterId: token.clusterId };
  const timeline = timelineOf?.(shardId);
  if (timeline !== undefined && timeline !== token.timeline) return { primary: true, token: token.lsn, tokenTimeline: token.timeline, ...id };
  return { token: token.lsn, tokenTimeline: token.timeline, ...id };
}

/** A read's snapshot: repeatable read, read only (the fence rows and `fn` see one state of the shard). */
const READ_BEGIN = 'begin isolation level repeatable read read only';

/**
 * A read's first round trip, one simple query: {@link READ_BEGIN}, with a deadline its SET LOCALs
 * (`statement_timeout` of the time left, `idle_in_transaction_session_timeout` of that and the
 * client's grace: {@link deadlineSettingsSql}) right after it, so that no read transaction is
 * open on the server without them, and the key's fence rows ({@link readerFenceRowsSql}, the
 * slot and key as quoted literals) last. The SET LOCALs take no snapshot: the fence rows' statement
 * takes the transaction's, as before. `fences` is false when the key cannot be a literal
 * ({@link sqlLiteral}): its fence rows are then read apart.
 */
function readBeginSql(slot: number, key: string, leftMs: number | undefined): { readonly sql: string; readonly fences: boolean } {
  const begin = leftMs === undefined ? READ_BEGIN : `${READ_BEGIN}; ${deadlineSettingsSql(leftMs, { lockTimeout: false })}`;
  const keyLiteral = sqlLiteral(key);
  if (keyLiteral === undefined || !Number.isSafeInteger(slot)) return { sql: begin, fences: false };
  return { sql: `${begin}; ${readerFenceRowsSql(`'${slot}'`, keyLiteral)}`, fences: true };
}

/** The rows of the last statement of a simple query's answer. */
function lastRows(answer: unknown): unknown[] | undefined {
  const results = Array.isArray(answer) ? (answer as unknown[]) : [answer];
  const rows = (results.at(-1) as { rows?: unknown } | undefined)?.rows;
  return Array.isArray(rows) ? rows : undefined;
}

/** Builds a {@link ShardReader} over the replica reader. */
export function createShardReader(options: ShardReaderOptions): ShardReader {
  const maxReroutes = options.maxReroutes ?? 5;
  const maxIncomingWaitMs = options.maxIncomingWaitMs ?? 10_000;
  const sleep = options.sleep ?? defaultSleep;

  async function withShardRead<T>(rawKey: string, fn: (ctx: ShardReadContext) => Promise<T>, readOptions: ShardReadOptions = {}): Promise<ShardReadResult<T>> {
    // As for writes: the fence rows are found by the canonical key, whatever spelling was given.
    const key = canonicalKey(rawKey);
    checkDeadlineMs('deadlineMs', readOptions.deadlineMs);
    const deadlineAt = readOptions.deadlineMs === undefined ? undefined : Date.now() + readOptions.deadlineMs;
    const token = readOptions.token;
    // A token written under a newer map than the router holds: route from the catalog's map.
    let fresh = false;
    let reroutes = 0;
    let waitedMs = 0;
    let backoffMs = 2;
    // Set when a replica could not vouch for the unit's ownership: the same route, on the primary.
    let primaryRoute: WriteRoute | undefined;
    for (let attempt = 1; ; attempt++) {
      let route: WriteRoute;
      if (primaryRoute !== undefined) {
        route = primaryRoute;
      } else {
        route = await options.router.routeForWrite(key, { fresh, firstOwner: true });
        if (!fresh && token !== undefined && token.mapVersion > route.version) route = await options.router.routeForWrite(key, { fresh: true, firstOwner: true });
      }
      const onPrimary = primaryRoute !== undefined;
      primaryRoute = undefined;
      let left: number | undefined;
      if (deadlineAt !== undefined) {
        left = deadlineAt - Date.now();
        if (left <= 0) throw new ShardReadError('deadline-exceeded', `the read on shard ${route.shardId} passed its ${readOptions.deadlineMs} ms deadline before it could start`);
      }
      type Outcome = { verdict: 'read'; value: T; servedBy: string; lostWrite: LostWrite | undefined } | { verdict: 'reroute' | 'wait' | 'primary' };
      let outcome: Outcome;
      const begin = readBeginSql(route.slot, key, left);
      try {
        outcome = await options.reader.withReadClient(
          route.shardId,
          (client, servedBy, node) => {
            let fenceRows: ReaderFenceRow[] | undefined;
            return inClientTransaction<Outcome>(
              client,
              // Begun by the replica reader, with the primary check, where a primary judges the token.
              node.begun ?? begin.sql,
              async () => {
                // Read with the BEGIN, unless the key could not go into its simple query.
                const fences = { rows: fenceRows ?? (await client.query<ReaderFenceRow>(READER_FENCE_ROWS_SQL, [String(route.slot), key])).rows };
                const verdict = readVerdict(fences.rows, route, node.replica);
                if (verdict !== 'read') return new RollbackWith({ verdict });
                const value = await fn({ client, shardId: route.shardId, slot: route.slot, servedBy });
                return { verdict, value, servedBy, lostWrite: node.lostWrite };
              },
              undefined,
              (answer) => {
                if (begin.fences) fenceRows = lastRows(answer) as ReaderFenceRow[] | undefined;
              },
            );
          },
          {
            // On the primary too the token goes along: the primary checks it against its timeline's history.
            ...readOptionsFor(route.shardId, token, options.reader.primaryTimeline?.bind(options.reader), options.reader.primaryClusterId?.bind(options.reader)),
            ...(onPrimary || readOptions.primary === true ? { primary: true } : {}),
            ...(deadlineAt === undefined ? {} : { deadlineAt }),
            begin: begin.sql,
          },
          // Its BEGIN sets statement_timeout to the time left (readBeginSql), or keeps the
          // session's own where shorter: told from another session's cancel by pg's words then.
          { statementTimeout: true },
        );
      } catch (err) {
        if (err instanceof DeadlinePassedError) {
          const what =
            err.phase === 'connect'
              ? `no connection to ${err.nodeId} was free before it; nothing was sent`
              : err.phase === 'cancelled'
                ? `PostgreSQL cancelled it on ${err.nodeId}`
                : err.phase === 'waited'
                  ? `it was waiting for another read's query on ${err.nodeId} (the timeline history), left running under that read's deadline`
                  : `${err.nodeId} did not answer (its connection was dropped)`;
          throw new ShardReadError('deadline-exceeded', `the read on shard ${route.shardId} passed its ${readOptions.deadlineMs} ms deadline: ${what}`, { cause: err });
        }
        if (err instanceof SessionTimeoutError) {
          throw new ShardReadError(
            'cancelled',
            `${err.setting === 'idle_in_transaction_session_timeout' ? `the read's transaction on shard ${route.shardId} was ended, idle between two statements, and its connection closed` : `a statement of the read on shard ${route.shardId} was ${err.setting === 'lock_timeout' ? 'ended, waiting for a lock,' : 'cancelled'}`} on ${err.nodeId} by the session's own ${err.setting} (a role's or database's setting, or one the read's code set), ${readOptions.deadlineMs === undefined ? 'the read having no deadline' : `before its ${readOptions.deadlineMs} ms deadline: not the deadline`}`,
            { cause: err },
          );
        }
        if (err instanceof ReadCancelledError) {
          throw new ShardReadError('cancelled', `a statement of the read on shard ${route.shardId} was cancelled on ${err.nodeId} by ${otherCancelWords(err.cause)} (not its ${readOptions.deadlineMs} ms deadline)`, { cause: err });
        }
        if (deadlineAt !== undefined && (err as { code?: unknown }).code === QUERY_CANCELED) {
          throw new ShardReadError('deadline-exceeded', `the read on shard ${route.shardId} passed its ${readOptions.deadlineMs} ms deadline; PostgreSQL cancelled it`, { cause: err });
        }
        throw err;
      }
      if (outcome.verdict === 'read') {
        return { value: outcome.value, shardId: route.shardId, servedBy: outcome.servedBy, attempts: attempt, ...(outcome.lostWrite === undefined ? {} : { lostWrite: outcome.lostWrite }) };
      }
      if (outcome.verdict === 'primary') {
        primaryRoute = route;
        continue;
      }
      if (outcome.verdict === 'reroute') {
        reroutes += 1;
        if (reroutes > maxReroutes) throw new ShardReadError('too-many-reroutes', `key's unit moved ${reroutes} times in a row; routing is not converging (last route: shard ${route.shardId}, slot ${route.slot})`);
      } else {
        if (waitedMs >= maxIncomingWaitMs) {
          throw new ShardReadError('incoming-timeout', `slot ${route.slot} on shard ${route.shardId} stayed 'incoming' (being moved in) for more than ${maxIncomingWaitMs} ms`);
        }
        await sleep(backoffMs);
        waitedMs += backoffMs;
        backoffMs = Math.min(backoffMs * 2, 50);
      }
      fresh = true;
    }
  }

  return { withShardRead };
}
