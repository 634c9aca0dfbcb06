/**
 * Replay lag of a replica, measured from its primary's side. Shared by the read router
 * ({@link ReplicaReader}) and the health report ({@link ShardInspector}), so the two never
 * disagree about how stale a replica is.
 *
 * A replica alone measures badly in both directions:
 * - It cannot see that its WAL receiver is gone: it has replayed all it received, so it looks
 *   current while the primary moves on.
 * - Right after WAL arrives from an idle primary, it has received more than it replayed, and
 *   `now() - pg_last_xact_replay_timestamp()` is the age of the last commit it replayed, which
 *   on an idle shard is however long the shard was idle: a replica a few milliseconds behind
 *   reads as minutes behind.
 *
 * So a measure first commits a heartbeat on the primary (a transaction with an xid, committed
 * with `synchronous_commit = on`) and notes the primary's WAL position and clock. A replica that
 * replays past that position within the wait is current (lag 0, to the wait's resolution);
 * otherwise its lag is the primary's clock now minus the commit time of the last transaction it
 * replayed, which is also the primary's clock, so no clock skew between hosts enters (a primary
 * clock stepped back behind that commit time leaves the lag unknown, never 0). When the
 * primary does not answer, the replica's own measure is used (0 when everything received has
 * been replayed, otherwise the age of its last replayed commit).
 *
 * @example
 * ```ts
 * const heartbeat = await commitHeartbeat(pools.primary('shard_001'), { timeoutMs: 2000 });
 * const probe = await probeReplicaLag(pools.replicas('shard_001')[0], heartbeat, { timeoutMs: 2000, waitMs: 250 });
 * // { inRecovery: true, replayLsn: 50331976n, lagSeconds: 0 }
 * ```
 */
import type pg from 'pg';
import { lsnBytesBehind, parseLsn } from '../../core/sharding/lsn.js';
import { CLUSTER_ID_SQL, clusterIdOfRow, withClusterIdReadable } from './cluster-identity.js';
import { withNodeDeadline } from './deadline.js';
import { hasSqlState, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION } from './sqlstate.js';
import type { ShardNode } from './shard-pools.js';

/** The primary's side of a measure: the heartbeat's WAL position and the primary's clock. */
export interface Heartbeat {
  readonly lsn: bigint;
  /** The primary's clock (epoch ms) just after the heartbeat committed. */
  readonly primaryMs: number;
  /** The local clock when `primaryMs` was read: elapsed time is measured on one clock. */
  readonly localMs: number;
  /** The primary's timeline (from its current WAL file name). */
  readonly timeline: number;
  /** The primary's cluster (cluster-identity.ts); undefined when its login may not read it. */
  readonly clusterId?: string;
}

export interface LagMeasureOptions {
  /** Budget of each query (connect included). */
  readonly timeoutMs: number;
  /**
   * Each query's budget, read as its wait begins. Default `timeoutMs`. The shard inspector's
   * health check gives `timeoutMs` or the time its request has left, whichever is less
   * (request-deadline.ts): a heartbeat is two queries in a row, a probe polls, and a budget read
   * once would let the last of them run past the request's deadline.
   */
  readonly budgetMs?: () => number;
  /** The local clock. Default `Date.now`. */
  readonly now?: () => number;
}

/** The budget of the query about to begin (see {@link LagMeasureOptions.budgetMs}). */
const budgetOf = (options: LagMeasureOptions): number => options.budgetMs?.() ?? options.timeoutMs;

export interface ReplicaLagOptions extends LagMeasureOptions {
  /** How long the replica may take to replay the heartbeat and still count as current. */
  readonly waitMs: number;
  /** Pause between two polls of the replica while waiting. Default 25 ms. */
  readonly pollMs?: number;
}

export interface ReplicaLag {
  readonly inRecovery: boolean;
  readonly replayLsn: bigint | null;
  /** Null when it cannot be told (no transaction replayed since the replica started). */
  readonly lagSeconds: number | null;
  /** WAL bytes between the heartbeat and the replay position; null without a heartbeat. */
  readonly lagBytes: bigint | null;
  /**
   * The timeline the replica follows ({@link REPLICA_TIMELINE_SQL}); null when it cannot be
   * told. A replica of another timeline than its primary's follows another server (an old
   * primary after a promotion): its replay position and lag say nothing about this primary.
   */
  readonly timeline: number | null;
}

/** The control file's view of a replica's timeline (see {@link REPLICA_TIMELINE_SQL}). */
const CONTROL_FILE_TIMELINE_SQL = 'greatest((pg_control_checkpoint()).timeline_id, nullif((pg_control_recovery()).min_recovery_end_timeline, 0))';

/**
 * The timeline a replica follows, in SQL. The WAL receiver's `received_tli` is the timeline it
 * streams (and the startup process replays) now; PostgreSQL shows it only to roles with the
 * privileges of `pg_read_all_stats`, and there is no row while no receiver runs. Otherwise the
 * later of the control file's last restartpoint timeline and minimum-recovery-point timeline:
 * never ahead of the replayed timeline, though it can trail it after a timeline switch until the
 * next restartpoint (the replica then looks like it follows the old timeline: reads go elsewhere,
 * which is the safe side). `pg_walfile_name()` cannot be called during recovery.
 *
 * A login without `pg_read_all_stats` (the application's) reads `received_tli` through
 * {@link RECEIVER_TIMELINE_FUNCTION} instead, where it may: see {@link withTimelineSql}.
 */
export const REPLICA_TIMELINE_SQL = `coalesce((select received_tli from pg_stat_wal_receiver),
  ${CONTROL_FILE_TIMELINE_SQL})`;

/**
 * Shard migration 017: `received_tli` read with its owner's rights (SECURITY DEFINER, EXECUTE
 * granted to `ca_dms_app`), so the application sees a replica's new timeline as soon as it
 * streams it rather than at its next restartpoint. NULL without a WAL receiver.
 */
export const RECEIVER_TIMELINE_FUNCTION = 'wal_receiver_timeline';


/**
 * The timeline expressions a login tries, best first; null is "no timeline" (the measure stands
 * on positions alone). A login that is refused one (42501, 42883) moves to the next:
 * - the function, then the control file (the application login once migration 017 is applied);
 * - {@link REPLICA_TIMELINE_SQL} (no function, or no EXECUTE on it: the monitor and the mover,
 *   which see `received_tli` themselves, or a shard without migration 017);
 * - the function alone (a provider refused the control-file functions to the login);
 * - nothing.
 */
const TIMELINE_EXPRESSIONS: readonly (string | null)[] = [
  `coalesce(${RECEIVER_TIMELINE_FUNCTION}(), ${CONTROL_FILE_TIMELINE_SQL})`,
  REPLICA_TIMELINE_SQL,
  `${RECEIVER_TIMELINE_FUNCTION}()`,
  null,
];
/**
 * How far down {@link TIMELINE_EXPRESSIONS} each replica pool's login has been refused, and
 * whether the last refusal was a function not there (42883), which migration 017 ends, rather
 * than a right the login lacks (42501), which is for good (the monitor and the mover).
 */
const timelineStep = new WeakMap<pg.Pool, { readonly step: number; readonly absent: boolean }>();

/**
 * Runs `run` with the best timeline expression this pool's login may use (null: none), moving
 * down the list when it is refused one. Other errors are thrown as they came. With `recheck`
 * (the periodic lag probe's first poll), a pool moved down because the function was not there
 * tries from the top again: migration 017 applied, or replayed on the replica, after the
 * process's first probe (the code may be deployed first) would otherwise leave it on the control
 * file's timeline for the life of the process.
 *
 * @example
 * ```ts
 * const { rows } = await withTimelineSql(replica.pool, (tl) => client.query(`select ${tl ?? 'null::int'} as timeline`));
 * ```
 */
export async function withTimelineSql<T>(pool: pg.Pool, run: (timelineSql: string | null) => Promise<T>, options: { readonly recheck?: boolean } = {}): Promise<T> {
  let floor = options.recheck === true && timelineStep.get(pool)?.absent === true ? 0 : undefined;
  /** Whether this call's last refusal was a missing function. */
  let absentNow = false;
  for (;;) {
    const step = floor ?? timelineStep.get(pool)?.step ?? 0;
    const sql = TIMELINE_EXPRESSIONS[step] ?? null;
    try {
      const result = await run(sql);
      if (floor !== undefined) timelineStep.set(pool, { step, absent: absentNow });
      return result;
    } catch (error) {
      // Refused (no EXECUTE, or a provider that revoked the control-file functions), or
      // migration 017 not applied yet.
      if (sql === null || !hasSqlState(error, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION)) throw error;
      absentNow = hasSqlState(error, UNDEFINED_FUNCTION);
      if (floor !== undefined) floor = step + 1;
      // Concurrent probes refused the same step move down once, not once each.
      else if (step + 1 > (timelineStep.get(pool)?.step ?? 0)) timelineStep.set(pool, { step: step + 1, absent: absentNow });
    }
  }
}

// The insert position, read after the commit on the same connection, is at or past the end of
// the heartbeat's commit record. The write position (pg_current_wal_lsn) can still be short of
// it: with fsync off it stays at the start of the WAL page, so a replica that had not replayed
// the heartbeat was taken for current. `1000::numeric`: pg_catalog has no `numeric * integer`,
// and one the application created in the shard's schema (PostgreSQL 14) would be an exact match
// run as the monitor (test/integration/sharding/mover-sql-shadowing.test.ts).
const HEARTBEAT_POSITION_SQL = `select pg_current_wal_insert_lsn()::text as lsn, (extract(epoch from clock_timestamp()) * 1000::numeric)::float8 as now_ms,
  ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint as tli`;

const REPLICA_SQL_WITHOUT_TIMELINE = `select pg_is_in_recovery() as in_recovery,
  pg_last_wal_replay_lsn()::text as replay_lsn,
  (extract(epoch from pg_last_xact_replay_timestamp()) * 1000::numeric)::float8 as replay_commit_ms,
  case
    when pg_last_wal_receive_lsn() is not null and pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0
    else extract(epoch from clock_timestamp() - pg_last_xact_replay_timestamp())::float8
  end as lag_seconds,
  null::int as timeline`;
const replicaSql = (timelineSql: string | null): string =>
  timelineSql === null ? REPLICA_SQL_WITHOUT_TIMELINE : REPLICA_SQL_WITHOUT_TIMELINE.replace('null::int as timeline', `${timelineSql} as timeline`);

type HeartbeatRow = { lsn: string; now_ms: number; tli: string; cluster_id?: string };

/** Commits a heartbeat on `primary`; null when the primary does not answer within the budget. */
export async function commitHeartbeat(primary: ShardNode, options: LagMeasureOptions): Promise<Heartbeat | null> {
  const now = options.now ?? Date.now;
  try {
    // txid_current() gives the transaction an xid, so its commit is a WAL record with the
    // primary's commit time, which a replica reports once replayed. Synchronous commit makes
    // it visible to the WAL senders now rather than at the WAL writer's next round.
    await withNodeDeadline(primary.pool, budgetOf(options), primary.nodeId, async (c) => {
      await c.query('set local synchronous_commit = on');
      await c.query('select txid_current()');
    });
    // Refused the id (the grant revoked since the pool learned it may read it), the position is
    // read again without it (cluster-identity.ts): kept, every heartbeat failed, and no replica
    // was vouched for, until the process restarted. In withNodeDeadline's transaction: the id is
    // asked, and read, behind a savepoint, which a refusal rolls back to (set in the read's own round
    // trip: none more with the grant; four more, once, after a revoke: cluster-id-revoked.test.ts).
    const rows = await withNodeDeadline(primary.pool, budgetOf(options), primary.nodeId, (c) =>
      withClusterIdReadable(
        primary.pool,
        c,
        async (withClusterId) => {
          if (!withClusterId) return (await c.query<HeartbeatRow>(HEARTBEAT_POSITION_SQL)).rows;
          const answer = (await c.query(`savepoint cluster_id; ${HEARTBEAT_POSITION_SQL}, ${CLUSTER_ID_SQL} as cluster_id`)) as unknown as pg.QueryResult<HeartbeatRow>[];
          return answer.at(-1)?.rows ?? [];
        },
        { inTransaction: true, undo: () => c.query('rollback to savepoint cluster_id') },
      ),
    );
    const row = rows[0];
    const clusterId = clusterIdOfRow(row);
    return row ? { lsn: parseLsn(row.lsn), primaryMs: row.now_ms, localMs: now(), timeline: Number(row.tli), ...(clusterId === undefined ? {} : { clusterId }) } : null;
  } catch {
    return null;
  }
}

/**
 * The primary's WAL insert position now; null when it does not answer. Read after the replicas'
 * probes: a replica whose replay position is past it replays WAL this primary never wrote (it
 * follows another server, e.g. an old primary still taking writes after a promotion).
 */
export async function readPrimaryPosition(primary: ShardNode, options: LagMeasureOptions): Promise<bigint | null> {
  try {
    const { rows } = await withNodeDeadline(primary.pool, budgetOf(options), primary.nodeId, (c) => c.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn'));
    return rows[0] ? parseLsn(rows[0].lsn) : null;
  } catch {
    return null;
  }
}

/**
 * Measures `replica` against `heartbeat` (or on its own when the heartbeat is null); undefined
 * when the replica does not answer.
 */
export async function probeReplicaLag(replica: ShardNode, heartbeat: Heartbeat | null, options: ReplicaLagOptions): Promise<ReplicaLag | undefined> {
  const now = options.now ?? Date.now;
  const pollMs = options.pollMs ?? 25;
  try {
    // Counted in polls, not read from the injected clock (a test's clock need not move).
    for (let poll = 1; ; poll += 1) {
      type Row = { in_recovery: boolean; replay_lsn: string | null; replay_commit_ms: number | null; lag_seconds: number | null; timeline: number | null };
      const measure = (sql: string) => withNodeDeadline(replica.pool, budgetOf(options), replica.nodeId, (c) => c.query<Row>(sql));
      // Without the right to read the timeline, the rest of the measure still stands.
      const { rows } = await withTimelineSql(replica.pool, (timelineSql) => measure(replicaSql(timelineSql)), { recheck: poll === 1 });
      const row = rows[0];
      if (!row) return undefined;
      const replayLsn = row.replay_lsn === null ? null : parseLsn(row.replay_lsn);
      const base = {
        inRecovery: row.in_recovery,
        replayLsn,
        lagBytes: heartbeat === null || replayLsn === null ? null : lsnBytesBehind(heartbeat.lsn, replayLsn),
        timeline: row.timeline === null ? null : Number(row.timeline),
      };
      if (heartbeat === null) return { ...base, lagSeconds: row.lag_seconds === null ? null : Math.max(0, row.lag_seconds) };
      // A replica of another timeline replays another server's WAL: its position may well be past
      // the heartbeat's, and its last commit recent, without its having replayed anything of
      // this primary's since the fork. Its lag behind this primary cannot be told.
      if (base.timeline !== null && base.timeline !== heartbeat.timeline) return { ...base, lagSeconds: null };
      if (replayLsn !== null && replayLsn >= heartbeat.lsn) return { ...base, lagSeconds: 0 };
      if (poll * pollMs >= options.waitMs) {
        if (row.replay_commit_ms === null) return { ...base, lagSeconds: null };
        const primaryNowMs = heartbeat.primaryMs + (now() - heartbeat.localMs);
        // The replayed commit is before the heartbeat in the WAL, so it was stamped before the
        // heartbeat's clock reading: a primary clock that reads earlier than it was stepped back
        // since (an NTP step, a VM restored or moved). How far behind the replica is cannot then
        // be told from that clock; taken as 0, a replica whose replay had stopped would be
        // vouched for as current for as long as the clock stays behind
        // (test/integration/sharding/replica-lag-clock.test.ts).
        if (primaryNowMs < row.replay_commit_ms) return { ...base, lagSeconds: null };
        return { ...base, lagSeconds: (primaryNowMs - row.replay_commit_ms) / 1000 };
      }
      await new Promise((resolve) => setTimeout(resolve, pollMs));
    }
  } catch {
    return undefined;
  }
}
