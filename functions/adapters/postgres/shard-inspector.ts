/**
 * Inspects every shard: health of each primary and replica, statistics of the sharded tables,
 * and the movable units (slots, directory keys) the rebalance planner works on.
 *
 * Health checks every node in parallel, each under one per-node deadline (connect and queries),
 * so a dead node costs one timeout, not the sum. Per node it measures: reachable, role
 * (`pg_is_in_recovery()`), connections against `max_connections`, `pg_stat_database` rates
 * (from the previous sample, which the inspector keeps), cache hit ratio, deadlocks, temp
 * bytes, `pg_stat_statements` when installed, `pg_database_size`, and on replicas the replay lag
 * in seconds and bytes, measured against a heartbeat committed on the primary (replica-lag.ts)
 * as the read router measures it. The classification with reasons is the pure core's
 * (`core/sharding/health.ts`).
 *
 * @example
 * ```ts
 * const inspector = new ShardInspector(ShardPools.fromConfig(config, { max: 2 }), { timeoutMs: 2000, weights });
 * const report = await inspector.health();       // { status: 'degraded', shards: [...] }
 * const stats = await inspector.statistics({ slotMap });
 * const check = await inspector.rebalanceCheck({ slotMap, threshold: 0.1, by: 'bytes' });
 * ```
 */
import type pg from 'pg';
import {
  classifyNode,
  classifyShard,
  databaseRates,
  DEFAULT_HEALTH_THRESHOLDS,
  worstStatus,
  type DatabaseCounters,
  type HealthReason,
  type HealthStatus,
  type HealthThresholds,
  type NodeFacts,
  type NodeRole,
  type RdsFacts,
} from '../../core/sharding/health.js';
import { RebalancePlanError } from '../../core/sharding/errors.js';
import { slotOf } from '../../core/sharding/hash.js';
import { canonicalKey, keySlot } from '../../core/sharding/keys.js';
import { lsnBytesBehind, parseLsn } from '../../core/sharding/lsn.js';
import { moveUnitFor, type MoveRouting } from '../../core/sharding/move-machine.js';
import { checkRebalance, type RebalanceCheckOptions, type RebalanceCheckResult } from '../../core/sharding/rebalance-check.js';
import type { MovableUnit } from '../../core/sharding/rebalance.js';
import type { SlotMap } from '../../core/sharding/slot-map.js';
import {
  describeUnconfigured,
  slotsOwnedBy,
  summarizeShardStatistics,
  unconfiguredOwners,
  withUnitsMoved,
  type ShardMeasurement,
  type ShardStatisticsSummary,
  type TableStatistics,
  type UnconfiguredOwner,
} from '../../core/sharding/statistics.js';
import { withNodeDeadline } from './deadline.js';
import { requestTimeLeftMs } from './request-deadline.js';
import { NOT_OWNED_STATES_SQL, rowFenceByHandSql, rowFenceStateSql, rowsOfFencedUnitsSql } from './read-transaction.js';
import { commitHeartbeat, probeReplicaLag, type ReplicaLag } from './replica-lag.js';
import type { ShardNode, ShardPools } from './shard-pools.js';
import { failureKind, INSUFFICIENT_PRIVILEGE } from './sqlstate.js';

/** What {@link ShardInspector}'s measurement of a shard answers when a count to make exact needs the directory it was not given. */
const DIRECTORY_NEEDED = Symbol('directory needed');

/** The slowest statements of a node, from `pg_stat_statements`. */
export type StatementsReport =
  | { readonly available: true; readonly top: readonly StatementStat[] }
  | { readonly available: false; readonly reason: string };

export interface StatementStat {
  readonly queryId: string;
  /** The normalised text (constants replaced by $n), cut to 200 characters. */
  readonly query: string;
  readonly calls: number;
  readonly totalExecMs: number;
  readonly meanExecMs: number;
  readonly rows: number;
}

export interface NodeReport {
  readonly nodeId: string;
  readonly shardId: string;
  readonly role: NodeRole;
  /** `host:port/db`, no credentials. */
  readonly endpoint: string;
  readonly status: HealthStatus;
  readonly reasons: readonly HealthReason[];
  /** How long the check of this node took (its timeout when it did not answer). */
  readonly checkMs: number;
  readonly facts: NodeFacts;
  readonly statements?: StatementsReport;
}

export interface ShardHealthReport {
  readonly shardId: string;
  readonly status: HealthStatus;
  readonly reasons: readonly HealthReason[];
  readonly primary: NodeReport;
  readonly replicas: readonly NodeReport[];
}

export interface HealthReport {
  readonly status: HealthStatus;
  readonly checkedAt: string;
  /** Wall time of the whole check: about the slowest node, not the sum. */
  readonly durationMs: number;
  readonly shards: readonly ShardHealthReport[];
  /** Present when a cloud inventory is configured: whether its facts could be read. */
  readonly cloud?: { readonly available: boolean; readonly error?: string };
  /**
   * Present when the check was given the slot map: its version, and the shards it gives slots to
   * that are not configured (no shard report can say anything of them). Any such shard makes the
   * report `down`: the routers refuse the map, and no key of those slots can be served.
   */
  readonly slotMap?: { readonly version: number; readonly unconfigured: readonly UnconfiguredOwner[]; readonly reasons: readonly HealthReason[] };
}

/** What {@link ShardInspector.health} checks besides the nodes. */
export interface HealthOptions {
  /** The current slot map: every shard it gives slots to must be configured. */
  readonly slotMap?: SlotMap;
}

/** What a cloud inventory (RDS + CloudWatch) knows about an endpoint, keyed by `host:port`. */
export interface EndpointFactsSource {
  facts(): Promise<ReadonlyMap<string, RdsFacts>>;
}

export interface ShardInspectorOptions {
  /** Budget of one node's check (connect and all queries). */
  readonly timeoutMs: number;
  /**
   * How long the caller has left, read as each wait on a node (and on the cloud inventory)
   * begins: the wait is its budget ({@link timeoutMs}, {@link wholeTableBudgetMs}) or that,
   * whichever is less, and a node still silent then is reported as one that did not answer in
   * time. Default: what the request being served has left (request-deadline.ts; the scaling
   * API's handler sets it: API Gateway answers 504 at 29 s, and a silent shard must be named in
   * the route's own answer before that), nothing outside a request.
   */
  readonly timeLeftMs?: () => number | undefined;
  readonly thresholds?: HealthThresholds;
  /** Shard weights (fair shares for statistics); 1 for shards not listed. */
  readonly weights?: Readonly<Record<string, number>>;
  /**
   * The sharded tables: rows with a `slot` column. Default users, documents and document_keys.
   * `keys`, the owners' `Idempotency-Key` records (shard migration 021), are rows of their owner's
   * unit that a move copies with it: counted like the others, in the statistics (a table of its
   * own), a shard's and a unit's rows and live bytes, and a unit's `maxTableRows` (as the mover
   * counts them before a move). None when not given with the others, or not there (a shard not
   * yet migrated to 021).
   */
  readonly tables?: { readonly users: string; readonly documents: string; readonly keys?: string };
  /** How many statements to report from pg_stat_statements. Default 5. */
  readonly topStatements?: number;
  /** RDS/CloudWatch facts merged into health (on AWS). */
  readonly cloud?: EndpointFactsSource;
  /** The clock for `checkedAt` and check durations. Default `Date.now`. */
  readonly now?: () => number;
  /**
   * Budget on one node of the checks that read whole tables (exact statistics, the rebalance
   * check). Default ten node budgets (`timeoutMs`: exact counts of big tables take longer than a
   * health check), at most {@link MAX_WHOLE_TABLE_BUDGET_MS}.
   */
  readonly wholeTableBudgetMs?: number;
  /**
   * How many heap pages of a table an estimate reads to learn its average live row bytes (a
   * table of fewer pages is read whole). Default 300 (2.4 MB, some 10,000 rows or more: a few
   * hundred page reads, which must fit in the node budget `timeoutMs` on a cold cache too).
   */
  readonly samplePages?: number;
  /**
   * Told every failure a report or an error of the inspector states by its kind only
   * ({@link failureKind}): the driver's, the server's or the cloud's own text, which names
   * addresses, logins and relations, is for the log, never for the API's answers (README).
   */
  readonly onFailure?: (failure: InspectionFailure) => void;
}

/** A failure the inspector reports by its kind (see {@link ShardInspectorOptions.onFailure}), with the error itself. */
export interface InspectionFailure {
  /** What failed: 'health', 'pg_stat_statements', 'statistics', 'movable units', 'rebalance census', 'cloud inventory'. */
  readonly what: string;
  /** The node (health, pg_stat_statements; its shard too) or the shard (statistics, census) it is about; absent for the cloud inventory. */
  readonly nodeId?: string;
  readonly shardId?: string;
  readonly error: unknown;
}

export interface StatisticsOptions {
  /** Exact `count(*)` instead of the planner's estimates. Default false. */
  readonly exact?: boolean;
  /**
   * The current slot map, for the slots each shard owns; with it and {@link directory}, an exact
   * count takes no row of a unit the map or the directory gives the shard off its count, whatever
   * its fence row says, as the rebalance census counts (see {@link ownedRowsSql}).
   */
  readonly slotMap?: SlotMap;
  /**
   * Directory entries (key -> shard), as the rebalance census takes them, or how to read them:
   * a reader is called (once) only when some count is exact (`exact`, or a table never analysed),
   * the only answers that read the directory, so that estimates do not read every pin (the
   * directory_based strategy pins every user: 100,000 pins took 2-6 s to read, a page of 1,000 a
   * round trip, `bench/statistics-directory.ts`). Without them (the map alone cannot tell a key's
   * leftovers from its slot's rows) an exact count takes every row a fence row says the shard
   * holds without owning off its count. A reader that fails fails the report with its error;
   * it is never called inside a shard's deadline (a slow catalog is not a shard that does not
   * answer, {@link ShardInspector.statistics}).
   */
  readonly directory?: readonly { readonly key: string; readonly shardId: string }[] | (() => Promise<readonly { readonly key: string; readonly shardId: string }[]>);
  /** The configured routing, as the rebalance census takes it (which directory entries place their keys). */
  readonly routing?: MoveRouting;
}

export interface ShardStatisticsEntry {
  readonly shardId: string;
  readonly reachable: boolean;
  readonly error?: string;
}

export interface StatisticsReport extends ShardStatisticsSummary {
  /**
   * False when a shard could not be measured: unreachable, or given slots by the slot map but not
   * configured. Totals, shares and imbalance leave it out.
   */
  readonly complete: boolean;
  readonly unreachable: readonly { readonly shardId: string; readonly error: string }[];
  /**
   * Shards the slot map (when given) gives slots to that are not configured, with their slots:
   * none of their rows is measured, and `totals.slots` leaves their slots out.
   */
  readonly unconfigured: readonly UnconfiguredOwner[];
}

export interface RebalanceCheckRequest extends RebalanceCheckOptions {
  readonly slotMap: SlotMap;
  /** Directory entries (key -> shard): each is a unit of its own, and its rows leave their slot. */
  readonly directory?: readonly { readonly key: string; readonly shardId: string }[];
  /** Free storage per shard, for the planner's headroom rule. Default: from the cloud inventory, when configured. */
  readonly freeBytes?: Readonly<Record<string, number>>;
  /**
   * The configured routing: units of a kind the mover would refuse under it (every kind with
   * `range_based` or sharding disabled) are not offered, and an unbalanced plan says why.
   * Default: every unit is offered.
   */
  readonly routing?: MoveRouting;
  /**
   * Slots with an unfinished move: their units (the slot, and the directory keys hashing into it)
   * are not offered, since a move of them is refused (409) until that one ends.
   */
  readonly busySlots?: ReadonlySet<number>;
  /**
   * Moves under way that will end on their target (not being cancelled or rolled back): the plan
   * counts each unit's rows and bytes on its target already, so that whoever started the moves
   * a check proposed is not told to move the same load again while they run. Default none.
   */
  readonly pending?: readonly PendingMove[];
}

/** A move under way that will end on its target: a unit (`unitId`, the slot or the directory key) and where it goes. */
export interface PendingMove {
  readonly kind: 'slot' | 'directory';
  readonly unitId: string;
  readonly to: string;
}

/** What {@link ShardInspector.rebalanceCensus} measures from. */
export type RebalanceCensusRequest = Pick<RebalanceCheckRequest, 'slotMap' | 'directory' | 'routing' | 'busySlots' | 'pending'>;

/** Every shard's exact statistics and the units the planner may offer, for any threshold and metric. */
export interface RebalanceCensus {
  /** As measured: each row where it is now. */
  readonly statistics: ShardStatisticsSummary;
  readonly units: readonly MovableUnit[];
  /** Unit kinds the configured routing does not let the mover move, with why. */
  readonly refused: readonly { readonly kind: 'slot' | 'directory'; readonly reason: string }[];
  /** The units of {@link RebalanceCensusRequest.pending} moves still counted on another shard than their target. */
  readonly pending: readonly { readonly unit: MovableUnit; readonly to: string }[];
}

/** A shard could not be measured, so a statistic or plan would be wrong. */
export class ShardInspectionError extends Error {
  override readonly name = 'ShardInspectionError';
}

interface ProbeRow {
  in_recovery: boolean;
  max_connections: number;
  connections: number;
  database_size: number;
  sampled_at_ms: number;
  stats_reset: string | null;
  xact_commit: number;
  xact_rollback: number;
  blks_read: number;
  blks_hit: number;
  tup_returned: number;
  tup_fetched: number;
  tup_inserted: number;
  tup_updated: number;
  tup_deleted: number;
  deadlocks: number;
  temp_files: number;
  temp_bytes: number;
  conflicts: number;
  wal_lsn: string | null;
  receive_lsn: string | null;
  lag_seconds: number | null;
  replay_paused: boolean;
  streaming: boolean;
  has_pg_stat_statements: boolean;
  schema_creators: string[];
}

// float8 casts: pg returns bigint as text; these counters fit a double for centuries.
const PROBE_SQL = `select pg_is_in_recovery() as in_recovery,
  current_setting('max_connections')::int as max_connections,
  (select count(*)::int from pg_stat_activity where backend_type = 'client backend') as connections,
  pg_database_size(current_database())::float8 as database_size,
  (extract(epoch from clock_timestamp()) * 1000::numeric)::float8 as sampled_at_ms,
  d.stats_reset::text as stats_reset,
  d.xact_commit::float8 as xact_commit, d.xact_rollback::float8 as xact_rollback,
  d.blks_read::float8 as blks_read, d.blks_hit::float8 as blks_hit,
  d.tup_returned::float8 as tup_returned, d.tup_fetched::float8 as tup_fetched,
  d.tup_inserted::float8 as tup_inserted, d.tup_updated::float8 as tup_updated, d.tup_deleted::float8 as tup_deleted,
  d.deadlocks::float8 as deadlocks, d.temp_files::float8 as temp_files, d.temp_bytes::float8 as temp_bytes,
  d.conflicts::float8 as conflicts,
  case when pg_is_in_recovery() then pg_last_wal_replay_lsn()::text else pg_current_wal_insert_lsn()::text end as wal_lsn,
  pg_last_wal_receive_lsn()::text as receive_lsn,
  case when not pg_is_in_recovery() then null
    when pg_last_wal_receive_lsn() is not null and pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0
    else extract(epoch from clock_timestamp() - pg_last_xact_replay_timestamp())::float8 end as lag_seconds,
  case when pg_is_in_recovery() then pg_is_wal_replay_paused() else false end as replay_paused,
  exists (select 1 from pg_stat_wal_receiver where status = 'streaming') as streaming,
  exists (select 1 from pg_extension where extname = 'pg_stat_statements') as has_pg_stat_statements,
  array(select r.name from (values (1, 'PUBLIC', 'public'), (2, 'ca_dms_app', 'ca_dms_app')) r(n, name, role)
         where current_schema() is not null and (r.role = 'public' or pg_catalog.to_regrole(r.role) is not null)
           and pg_catalog.has_schema_privilege(r.role, current_schema(), 'CREATE') order by r.n) as schema_creators
from pg_stat_database d where d.datname = current_database()`;

const STATEMENTS_SQL = `select queryid::text as query_id, left(query, 200) as query, calls::float8 as calls,
  total_exec_time as total_exec_ms, mean_exec_time as mean_exec_ms, rows::float8 as rows
from pg_stat_statements
where dbid = (select oid from pg_database where datname = current_database())
order by total_exec_time desc
limit $1`;

interface Measured {
  readonly node: ShardNode;
  readonly checkMs: number;
  readonly row?: ProbeRow;
  /** Replay lag measured from the primary's side (replicas whose primary answered). */
  readonly lag?: ReplicaLag;
  readonly statements?: StatementsReport;
  readonly error?: string;
}

/**
 * How long a replica may take to replay the health check's heartbeat and still count as current
 * (at most half the node budget). Longer than the read router's wait: a health report is read by
 * people and alarms, and a replica that is merely busy for a moment is not degraded.
 */
const HEALTH_HEARTBEAT_WAIT_MS = 1000;

/** The header of a heap tuple (23 bytes, aligned to 24): counted once per live row in the live bytes. */
const ROW_HEADER_BYTES = 24;

/**
 * The most a check reading whole tables waits for a node by default: API Gateway answers 504 at
 * 29 s, and before that the API must have read the catalog, planned, and answered with the name of
 * the shard that did not answer (with `health_check_timeout_seconds` at 5, ten node budgets would
 * be 50 s).
 */
export const MAX_WHOLE_TABLE_BUDGET_MS = 20_000;

/** How many heap pages an estimate reads by default (see {@link ShardInspectorOptions.samplePages}). */
const SAMPLE_PAGES = 300;

/** Where the census's statement and an exact count's take the units given to the shard ({@link homesOf}'s values, in order). */
const HOMES: HomesParams = { listedKeys: '$1', homeKeys: '$2', homeSlots: '$3' };

/** A column of a sharded table: its name, and its width when it is fixed and never null. */
interface ColumnWidth {
  readonly name: string;
  readonly fixed: number | null;
}

/**
 * The columns of table `c` (pg_class) as JSON {@link ColumnWidth}s, in order. Like every call of
 * this file that a function or operator of the shard's schema with the exact argument types
 * would take over (polymorphic ones, `oid` for `regclass`, `int * real`), qualified or cast so
 * that pg_catalog's matches exactly: where the application may create in that schema
 * (PostgreSQL 14) its own would run as the monitor (test/integration/sharding/mover-sql-shadowing.test.ts).
 */
const COLUMNS_SQL = `(select coalesce(pg_catalog.json_agg(pg_catalog.json_build_object('name', a.attname, 'fixed', case when a.attlen > 0 and a.attnotnull then a.attlen end) order by a.attnum), '[]')
   from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)`;

/**
 * The on-disk size of table `c` (pg_class): heap, TOAST and indexes, of every partition of a
 * partitioned table, whose own relation holds no data (`pg_total_relation_size` of it is 0).
 */
const DISK_BYTES_SQL = `(case when c.relkind = 'p'
     then (select coalesce(sum(pg_catalog.pg_total_relation_size(p.relid)), 0) from pg_catalog.pg_partition_tree(c.oid::pg_catalog.regclass) p)
     else pg_catalog.pg_total_relation_size(c.oid::pg_catalog.regclass) end)::float8`;

/**
 * What a report or an error says of `error`: the inspector's own words (a {@link ShardInspectionError}'s
 * message names no address, login or relation of the server's), else the kind of failure only.
 */
function kindOf(error: unknown): string {
  return error instanceof ShardInspectionError ? error.message : failureKind(error);
}

/** What a node's `statements.reason` says of a pg_stat_statements that is installed and does not answer. */
const STATEMENTS_ADVICE: Readonly<Record<string, string>> = {
  // object_not_in_prerequisite_state: "pg_stat_statements must be loaded via shared_preload_libraries".
  '55000': 'the extension is installed but not loaded: add pg_stat_statements to shared_preload_libraries and restart the server',
  [INSUFFICIENT_PRIVILEGE]: 'this login may not read it: grant it pg_read_all_stats',
};

/** The cloud inventory (RDS, CloudWatch) had not answered when the request's time ran out: the report goes without its facts. */
class CloudInventoryLateError extends Error {
  override readonly name = 'CloudInventoryLateError';
  constructor(readonly waitedMs: number) {
    super(`the cloud inventory did not answer within the ${waitedMs} ms the request had left (RDS or CloudWatch slow, or throttling the function's calls); the report goes without its facts`);
  }
}

/**
 * What a report says of an unreadable cloud inventory: the call that failed (the inventory's own
 * words, `DescribeDBInstances failed`) and the SDK's error name (`AccessDeniedException`), not the
 * SDK's message, which names accounts and roles.
 */
function cloudFailure(error: unknown): string {
  const call = error instanceof Error ? /^(\w+) failed:/.exec(error.message)?.[1] : undefined;
  const cause: unknown = error instanceof Error && error.cause !== undefined ? error.cause : error;
  const name = cause instanceof Error && /^[A-Za-z][A-Za-z0-9]*$/.test(cause.name) && cause.name !== 'Error' ? cause.name : undefined;
  const what = [call === undefined ? undefined : `${call} failed`, name].filter((w) => w !== undefined).join(': ');
  return `the cloud inventory could not be read${what === '' ? '' : ` (${what})`}; the log has the SDK's message (throttling, or the function's RDS and CloudWatch permissions)`;
}

export class ShardInspector {
  readonly #pools: ShardPools;
  readonly #options: ShardInspectorOptions;
  readonly #thresholds: HealthThresholds;
  readonly #now: () => number;
  /** The previous `pg_stat_database` sample of each node, for rates. */
  readonly #previous = new Map<string, DatabaseCounters>();

  constructor(pools: ShardPools, options: ShardInspectorOptions) {
    this.#pools = pools;
    this.#options = options;
    this.#thresholds = options.thresholds ?? DEFAULT_HEALTH_THRESHOLDS;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Checks every primary and replica in parallel and classifies them, and the slot map (when
   * given) for shards it gives slots to that are not configured. Never throws for a dead node.
   */
  async health(options: HealthOptions = {}): Promise<HealthReport> {
    const started = this.#now();
    let cloudError: string | undefined;
    const cloudFacts = this.#options.cloud
      ? this.#withinTimeLeft(this.#options.cloud.facts(), (ms) => new CloudInventoryLateError(ms)).catch((error: unknown) => {
          // RDS being unreadable (or slow: the SDK retries a throttled call for many seconds)
          // must not hide what the databases themselves say.
          this.#failed({ what: 'cloud inventory', error });
          cloudError = error instanceof CloudInventoryLateError ? error.message : cloudFailure(error);
          return new Map<string, RdsFacts>();
        })
      : Promise.resolve(new Map<string, RdsFacts>());
    const lags = this.#replicaLags();
    const [measured, cloud] = await Promise.all([Promise.all(this.#pools.nodes().map((n) => this.#measure(n, lags.get(n.nodeId)))), cloudFacts]);
    const byNode = new Map(measured.map((m) => [m.node.nodeId, m]));

    const shards = this.#pools.shardIds().map((shardId): ShardHealthReport => {
      const primaryNode = this.#pools.primary(shardId);
      const primaryMeasured = byNode.get(primaryNode.nodeId) as Measured;
      const primaryLsn = primaryMeasured.row && !primaryMeasured.row.in_recovery && primaryMeasured.row.wal_lsn ? parseLsn(primaryMeasured.row.wal_lsn) : null;
      const report = (m: Measured): NodeReport => {
        const facts = this.#facts(m, primaryLsn, cloud.get(hostPort(m.node.endpoint)));
        const health = classifyNode(facts, this.#thresholds);
        return {
          nodeId: m.node.nodeId,
          shardId: m.node.shardId,
          role: m.node.role,
          endpoint: m.node.endpoint,
          status: health.status,
          reasons: health.reasons,
          checkMs: m.checkMs,
          facts,
          ...(m.statements ? { statements: m.statements } : {}),
        };
      };
      const primary = report(primaryMeasured);
      const replicas = this.#pools.replicas(shardId).map((n) => report(byNode.get(n.nodeId) as Measured));
      const shard = classifyShard(shardId, primary, replicas);
      return { shardId, status: shard.status, reasons: shard.reasons, primary, replicas };
    });
    const finished = this.#now();
    const slotMap = options.slotMap && slotMapHealth(options.slotMap, this.#pools.shardIds());
    return {
      status: worstStatus([...shards.map((s) => s.status), ...(slotMap?.reasons ?? []).map((r) => r.status)]),
      checkedAt: new Date(finished).toISOString(),
      durationMs: finished - started,
      shards,
      ...(this.#options.cloud ? { cloud: cloudError === undefined ? { available: true } : { available: false, error: cloudError } } : {}),
      ...(slotMap ? { slotMap } : {}),
    };
  }

  /**
   * Starts measuring every replica's lag from its primary's side (replica-lag.ts): one heartbeat
   * per shard, then each replica waits for it. Resolves to undefined for a replica whose primary
   * or itself did not answer; its own measure stands in then.
   */
  #replicaLags(): Map<string, Promise<ReplicaLag | undefined>> {
    const lags = new Map<string, Promise<ReplicaLag | undefined>>();
    // Each query of a heartbeat or a probe within what the caller has left as it begins.
    const options = { timeoutMs: this.#options.timeoutMs, budgetMs: () => this.#budget(this.#options.timeoutMs), now: this.#now };
    for (const shardId of this.#pools.shardIds()) {
      const replicas = this.#pools.replicas(shardId);
      if (replicas.length === 0) continue;
      const heartbeat = commitHeartbeat(this.#pools.primary(shardId), options);
      for (const replica of replicas) {
        lags.set(
          replica.nodeId,
          heartbeat.then((h) => (h === null ? undefined : probeReplicaLag(replica, h, { ...options, waitMs: Math.min(HEALTH_HEARTBEAT_WAIT_MS, options.timeoutMs / 2) }))),
        );
      }
    }
    return lags;
  }

  /** `budgetMs`, or what the caller has left where that is less ({@link ShardInspectorOptions.timeLeftMs}): a wait's budget, read as it begins. */
  #budget(budgetMs: number): number {
    const left = (this.#options.timeLeftMs ?? requestTimeLeftMs)();
    return left === undefined ? budgetMs : Math.min(budgetMs, left);
  }

  /** `work`, or `late(ms)` thrown once what the caller has left (`ms`, as it begins) has passed; `work` itself as is where there is no bound. */
  #withinTimeLeft<T>(work: Promise<T>, late: (ms: number) => Error): Promise<T> {
    const left = (this.#options.timeLeftMs ?? requestTimeLeftMs)();
    if (left === undefined) return work;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(late(left)), left);
    });
    // The loser of the race must not become an unhandled rejection.
    work.catch(() => undefined);
    return Promise.race([work, expired]).finally(() => clearTimeout(timer));
  }

  /** Hands a failure to {@link ShardInspectorOptions.onFailure}; a throwing logger must not fail the report. */
  #failed(failure: InspectionFailure): void {
    try {
      this.#options.onFailure?.(failure);
    } catch {
      // The report states the failure's kind either way.
    }
  }

  async #measure(node: ShardNode, lag: Promise<ReplicaLag | undefined> | undefined): Promise<Measured> {
    const started = this.#now();
    try {
      const { row, statements } = await withNodeDeadline(node.pool, this.#budget(this.#options.timeoutMs), node.nodeId, async (client) => {
        const { rows } = await client.query<ProbeRow>(PROBE_SQL);
        const first = rows[0];
        if (!first) throw new ShardInspectionError(`${node.nodeId}: pg_stat_database has no row for the current database`);
        return { row: first, statements: first.has_pg_stat_statements ? await this.#statements(client, node) : undefined };
      });
      const measuredLag = await lag;
      return {
        node,
        checkMs: this.#now() - started,
        row,
        ...(measuredLag ? { lag: measuredLag } : {}),
        ...(statements ? { statements } : { statements: { available: false, reason: 'the pg_stat_statements extension is not installed in this database' } }),
      };
    } catch (error) {
      this.#failed({ what: 'health', nodeId: node.nodeId, shardId: node.shardId, error });
      return { node, checkMs: this.#now() - started, error: kindOf(error) };
    }
  }

  async #statements(client: pg.PoolClient, node: ShardNode): Promise<StatementsReport> {
    // A savepoint would need a transaction; a failed query on its own leaves the session usable.
    try {
      const { rows } = await client.query<{ query_id: string; query: string; calls: number; total_exec_ms: number; mean_exec_ms: number; rows: number }>(STATEMENTS_SQL, [
        this.#options.topStatements ?? 5,
      ]);
      return {
        available: true,
        top: rows.map((r) => ({ queryId: r.query_id, query: r.query, calls: r.calls, totalExecMs: r.total_exec_ms, meanExecMs: r.mean_exec_ms, rows: r.rows })),
      };
    } catch (error) {
      // Installed but not in shared_preload_libraries: the view exists and refuses to answer.
      this.#failed({ what: 'pg_stat_statements', nodeId: node.nodeId, shardId: node.shardId, error });
      return { available: false, reason: `cannot read pg_stat_statements: ${failureKind(error, STATEMENTS_ADVICE)}` };
    }
  }

  #facts(m: Measured, primaryLsn: bigint | null, rds: RdsFacts | undefined): NodeFacts {
    const base = { nodeId: m.node.nodeId, shardId: m.node.shardId, role: m.node.role, ...(rds ? { rds } : {}) };
    const row = m.row;
    if (!row) return { ...base, reachable: false, error: m.error ?? 'no answer' };
    const counters: DatabaseCounters = {
      sampledAtMs: row.sampled_at_ms,
      statsReset: row.stats_reset,
      xactCommit: row.xact_commit,
      xactRollback: row.xact_rollback,
      blksRead: row.blks_read,
      blksHit: row.blks_hit,
      tupReturned: row.tup_returned,
      tupFetched: row.tup_fetched,
      tupInserted: row.tup_inserted,
      tupUpdated: row.tup_updated,
      tupDeleted: row.tup_deleted,
      deadlocks: row.deadlocks,
      tempFiles: row.temp_files,
      tempBytes: row.temp_bytes,
      conflicts: row.conflicts,
    };
    const rates = databaseRates(this.#previous.get(m.node.nodeId), counters);
    this.#previous.set(m.node.nodeId, counters);
    const blocks = row.blks_hit + row.blks_read;
    const replayLsn = row.in_recovery && row.wal_lsn ? parseLsn(row.wal_lsn) : null;
    return {
      ...base,
      reachable: true,
      inRecovery: row.in_recovery,
      connections: row.connections,
      maxConnections: row.max_connections,
      databaseSizeBytes: row.database_size,
      rates,
      cumulativeCacheHitRatio: blocks > 0 ? row.blks_hit / blocks : null,
      // A grant to PUBLIC is the application role's too: named once, as PUBLIC.
      ...(row.in_recovery ? {} : { schemaCreators: row.schema_creators.includes('PUBLIC') ? ['PUBLIC'] : row.schema_creators }),
      ...(row.in_recovery
        ? {
            replication: {
              ...(m.lag
                ? { lagSeconds: m.lag.lagSeconds, lagBytes: m.lag.lagBytes === null ? null : Number(m.lag.lagBytes) }
                : {
                    lagSeconds: row.lag_seconds === null ? null : Math.max(0, row.lag_seconds),
                    lagBytes: primaryLsn !== null && replayLsn !== null ? Number(lsnBytesBehind(primaryLsn, replayLsn)) : null,
                  }),
              replayLsn: row.wal_lsn,
              receiveLsn: row.receive_lsn,
              replayPaused: row.replay_paused,
              streaming: row.streaming,
            },
          }
        : {}),
    };
  }

  /**
   * Rows and live data bytes of the sharded tables on every primary, with their on-disk size
   * apart (unless `exact`, estimates: rows from `pg_class`, bytes per row from a sample of pages,
   * see {@link ShardInspectorOptions.samplePages}; a table never analysed is counted exactly, the
   * rows of one filled since `pg_class` counted it empty are scaled up from the sample, and a
   * partitioned table's are its partitions'),
   * users, documents, slots owned, shares and imbalance. Bytes are live data
   * ({@link rowBytesSql}): a table's files keep their size after a move's clean-up deletes its
   * rows, so balance judged by them would keep sending data off a source that holds its share.
   * Unreachable shards are listed and left out of the figures. An exact count leaves out the rows
   * of units the shard holds without owning them (see {@link ownedRowsSql}); an estimate and
   * the on-disk size are of the whole table.
   */
  async statistics(options: StatisticsOptions = {}): Promise<StatisticsReport> {
    const shardIds = this.#pools.shardIds();
    const given = options.directory;
    let directoryRead: Promise<{ key: string; shardId: string }[]> | undefined;
    const readDirectory = (): Promise<{ key: string; shardId: string }[]> =>
      (directoryRead ??= (typeof given === 'function' ? given() : Promise.resolve(given ?? [])).then((listed) => placingDirectory(listed, options.routing)));
    const slotMap = options.slotMap;
    // The directory is never read inside a shard's deadline: read there (a table never analysed
    // found in an estimate's transaction), a slow catalog (its directory table locked, 100,000
    // pins read 1,000 a round trip) spent the shards' own deadlines, and every shard was listed
    // unreachable ("no answer within ...") though each had answered at once, the catalog named
    // nowhere (statistics-directory-wait.test.ts). Exact counts need it on every shard: read
    // first. Estimates need it only where a table was never analysed: such a shard ends its
    // transaction saying so, and is measured again once the directory is read.
    const directory = slotMap && given !== undefined && (options.exact === true || typeof given !== 'function') ? await readDirectory() : undefined;
    const owned = options.slotMap ? slotsOwnedBy(options.slotMap.assignments, shardIds) : new Map<string, number>();
    const results = await Promise.all(
      shardIds.map(async (shardId): Promise<{ shardId: string; measurement?: ShardMeasurement; error?: string }> => {
        const measure = async (listed: readonly { readonly key: string; readonly shardId: string }[] | undefined): Promise<{ shardId: string; measurement?: ShardMeasurement; error?: string } | typeof DIRECTORY_NEEDED> => {
          try {
            const homes = slotMap && given !== undefined ? { slotMap, ...(listed === undefined ? {} : { directory: listed }) } : undefined;
            const tables = await this.#tableStatistics(this.#pools.primary(shardId), options.exact ?? false, homes);
            if (tables === DIRECTORY_NEEDED) return DIRECTORY_NEEDED;
            const find = (name: string): number => tables.find((t) => t.table === name)?.rows ?? 0;
            const names = this.#tables();
            return {
              shardId,
              measurement: {
                shardId,
                weight: this.#options.weights?.[shardId] ?? 1,
                slotsOwned: owned.get(shardId) ?? 0,
                tables,
                users: find(names.users),
                documents: find(names.documents),
              },
            };
          } catch (error) {
            this.#failed({ what: 'statistics', shardId, error });
            return { shardId, error: kindOf(error) };
          }
        };
        const first = await measure(directory);
        if (first !== DIRECTORY_NEEDED) return first;
        // Read outside the shard's try: a directory that cannot be read is the catalog's failure,
        // and fails the report with its own error, not the shard that needed it.
        const again = await measure(await readDirectory());
        if (again === DIRECTORY_NEEDED) throw new Error(`statistics of ${shardId}: the directory was given and still asked for (a defect)`);
        return again;
      }),
    );
    const measurements = results.flatMap((r) => (r.measurement ? [r.measurement] : []));
    const unreachable = results.flatMap((r) => (r.error !== undefined ? [{ shardId: r.shardId, error: r.error }] : []));
    const unconfigured = options.slotMap ? unconfiguredOwners(options.slotMap.assignments, shardIds) : [];
    return { ...summarizeShardStatistics(measurements), complete: unreachable.length === 0 && unconfigured.length === 0, unreachable, unconfigured };
  }

  /** What a check reading whole tables waits for a node (see {@link ShardInspectorOptions.wholeTableBudgetMs}). */
  get wholeTableBudgetMs(): number {
    return this.#options.wholeTableBudgetMs ?? Math.min(this.#options.timeoutMs * 10, MAX_WHOLE_TABLE_BUDGET_MS);
  }

  /** The sharded tables among `present` (names as pg_class has them), each with its owner column, escaped. */
  #ownedTables(client: pg.PoolClient, present: readonly string[]): { table: string; owner: 'id' | 'owner_id' }[] {
    const names = this.#tables();
    return [names.users, names.documents, ...(names.keys === undefined ? [] : [names.keys])]
      .filter((name) => present.includes(name))
      .map((name) => ({ table: client.escapeIdentifier(name), owner: name === names.users ? ('id' as const) : ('owner_id' as const) }));
  }

  #tables(): { users: string; documents: string; keys?: string } {
    return this.#options.tables ?? { users: 'users', documents: 'documents', keys: 'document_keys' };
  }

  async #tableStatistics(
    node: ShardNode,
    exact: boolean,
    homes?: { readonly slotMap: SlotMap; readonly directory?: readonly { readonly key: string; readonly shardId: string }[] },
  ): Promise<TableStatistics[] | typeof DIRECTORY_NEEDED> {
    const names = this.#tables();
    const wanted = [names.users, names.documents, ...(names.keys === undefined ? [] : [names.keys])];
    const budget = this.#budget(exact ? this.wholeTableBudgetMs : this.#options.timeoutMs);
    return withNodeDeadline(node.pool, budget, node.nodeId, async (client) => {
      // pages: the heap's current size (of every partition), to size the sample below.
      // pg_partition_tree lists nothing for a table that is not partitioned: its own size then.
      // counted: the rows pg_class has counted; uncounted_pages: the heap pages it has not (a
      // table analysed or vacuumed while empty and filled since, or never analysed). A
      // partitioned table's own reltuples is set only by an ANALYZE of it, which autovacuum never
      // runs (it analyses the partitions): an ANALYZE of it while empty would say 0 rows for
      // ever. Its partitions' counts are kept up to date, so they are summed instead.
      const { rows } = await client.query<{ table: string; estimate: number; counted: number; uncounted_pages: number; disk_bytes: number; pages: number; columns: ColumnWidth[] }>(
        `select c.relname as table, c.reltuples::float8 as estimate,
           (case when c.relkind = 'p'
              then (select coalesce(pg_catalog.sum(pc.reltuples) filter (where pc.relpages > 0 and pc.reltuples >= 0), 0)
                      from pg_catalog.pg_partition_tree(c.oid::pg_catalog.regclass) p join pg_catalog.pg_class pc on pc.oid = p.relid where p.isleaf)
              when c.relpages > 0 then c.reltuples else 0 end)::float8 as counted,
           (case when c.relkind = 'p'
              then (select coalesce(pg_catalog.sum(pg_catalog.pg_relation_size(p.relid)) filter (where pc.relpages <= 0 or pc.reltuples < 0), 0)
                      from pg_catalog.pg_partition_tree(c.oid::pg_catalog.regclass) p join pg_catalog.pg_class pc on pc.oid = p.relid where p.isleaf)
              when c.relpages <= 0 then pg_catalog.pg_relation_size(c.oid::pg_catalog.regclass)
              else 0 end)::float8 / pg_catalog.current_setting('block_size')::float8 as uncounted_pages,
           ${DISK_BYTES_SQL} as disk_bytes,
           (case when c.relkind = 'p'
              then (select coalesce(sum(pg_catalog.pg_relation_size(p.relid)), 0) from pg_catalog.pg_partition_tree(c.oid::pg_catalog.regclass) p)
              else pg_catalog.pg_relation_size(c.oid::pg_catalog.regclass) end)::float8
             / pg_catalog.current_setting('block_size')::float8 as pages,
           ${COLUMNS_SQL} as columns
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = current_schema() and c.relname = any($1) and c.relkind in ('r', 'p')`,
        [wanted],
      );
      const out: TableStatistics[] = [];
      // A count to make exact, and no directory yet: the caller reads it outside this deadline
      // and measures the shard again ({@link statistics}).
      if (homes !== undefined && homes.directory === undefined && rows.some((r) => exact || r.estimate < 0)) return DIRECTORY_NEEDED;
      // The units given to the shard, read once for the tables counted exactly, sent with only the
      // keys whose rows the count judges by them ({@link movedRowOwners}).
      let given: Promise<[string[], string[], number[]] | undefined> | undefined;
      const homesHere = (): Promise<[string[], string[], number[]] | undefined> =>
        (given ??=
          homes === undefined
            ? Promise.resolve(undefined)
            : movedRowOwners(client, this.#ownedTables(client, rows.map((r) => r.table))).then((owners) =>
                homesOf(node.shardId, homes.slotMap, homes.directory ?? [], (key) => owners.has(key)),
              ));
      for (const name of wanted) {
        const found = rows.find((r) => r.table === name);
        // A shard not yet migrated to 021 has no key records to count.
        if (!found && name === names.keys) continue;
        if (!found) throw new ShardInspectionError(`${node.nodeId}: sharded table ${name} does not exist (schema not migrated?)`);
        const table = client.escapeIdentifier(name);
        // reltuples is -1 until the table is first vacuumed or analysed: no estimate exists yet.
        if (exact || found.estimate < 0) {
          const owner = name === names.users ? 'id' : 'owner_id';
          const values = await homesHere();
          const { rows: counted } = await client.query<{ n: number; bytes: number }>(ownedRowsSql(table, owner, rowBytesSql(client, 'r', found.columns), values && HOMES), values);
          out.push({ table: name, rows: counted[0]?.n ?? 0, bytes: Math.round(counted[0]?.bytes ?? 0), diskBytes: found.disk_bytes, method: 'exact' });
        } else {
          // pg_class counted no page of (part of) the heap there is now (it was analysed or
          // vacuumed while empty, as after every slot of a shard moved off, and filled since): its
          // 0 rows say nothing of these pages. The sample's rows, scaled up by the share of the
          // pages it read, stand in for theirs, as the planner's own estimate scales its density
          // up to the pages.
          const uncounted = found.uncounted_pages > 0 && found.pages > 0;
          // The average live row measured as the exact count measures it ({@link rowBytesSql}), on
          // a sample of pages: pg_stats cannot say it, since it counts an out-of-line value as its
          // 18-byte pointer, and the TOAST table's chunk count keeps a deleted value's chunks until
          // VACUUM and takes a value's last chunk as full (a 2.1 kB value as 4 kB).
          let percent = Math.min(100, (100 * (this.#options.samplePages ?? SAMPLE_PAGES)) / Math.max(1, found.pages));
          let n = 0;
          let sampledBytes = 0;
          for (;;) {
            const { rows: sampled } = await client.query<{ n: number; bytes: number }>(
              `select count(*)::float8 as n, coalesce(sum(${rowBytesSql(client, 'r', found.columns)}), 0)::float8 as bytes
                 from ${table} r tablesample pg_catalog.system ($1::float4) repeatable (0)`,
              [percent],
            );
            n = sampled[0]?.n ?? 0;
            sampledBytes = sampled[0]?.bytes ?? 0;
            // Pages without a live row (deleted, not yet vacuumed, or the rows are few and far
            // between) say nothing of a row's size: rows the planner counts would weigh 0 bytes.
            // A sample ten times wider, up to the whole table, until it finds some.
            if (n > 0 || percent >= 100 || (found.counted <= 0 && !uncounted)) break;
            percent = Math.min(100, percent * 10);
          }
          // A sample of every page is a count of the live rows (of the whole table, owned or not).
          const sampledRows = (n * 100) / percent;
          const rowsEstimate =
            percent >= 100 ? n : Math.round(found.counted + (uncounted ? (sampledRows * Math.min(found.uncounted_pages, found.pages)) / found.pages : 0));
          const bytes = n > 0 ? (rowsEstimate * sampledBytes) / n : 0;
          out.push({ table: name, rows: rowsEstimate, bytes: Math.round(bytes), diskBytes: found.disk_bytes, method: 'estimate' });
        }
      }
      return out;
    });
  }

  /**
   * The units the planner may move: every slot with rows on the shard that owns it (exact row
   * counts and live data bytes per slot, {@link rowBytesSql}), and every
   * directory key with its user's rows on its shard. Rows of directory keys are not counted
   * in their hash slot, since moving the slot would not move them.
   */
  async movableUnits(slotMap: SlotMap, given: readonly { readonly key: string; readonly shardId: string }[] = []): Promise<MovableUnit[]> {
    const directory = canonicalDirectory(given);
    const keySlots = slotsOfKeys(directory);
    const perShard = await Promise.all(
      this.#pools.shardIds().map(async (shardId) => {
        try {
          return (await this.#census(shardId, slotMap, directory, keySlots)).units;
        } catch (error) {
          this.#failed({ what: 'movable units', shardId, error });
          throw new ShardInspectionError(`cannot list the movable units of ${shardId}: ${kindOf(error)}`, { cause: error });
        }
      }),
    );
    return perShard.flat();
  }

  /**
   * One shard's exact statistics (as `statistics({ exact: true })` counts them) and its movable
   * units (as {@link movableUnits} lists them) from one scan of each sharded table, in one
   * snapshot, under one deadline: the rows grouped by slot and, for a directory key, by key
   * (found by a hash join with the key list, not by a lookup per key, which cannot use the uuid
   * index and read the whole table once per key: 500 keys on 100,000 rows took 16 s). The rows
   * of units the shard holds without owning them are found as {@link ownedRowsSql} finds them.
   */
  async #census(
    shardId: string,
    slotMap: SlotMap,
    directory: readonly { readonly key: string; readonly shardId: string }[],
    keySlots: ReadonlyMap<string, number>,
  ): Promise<{ measurement: ShardMeasurement; units: MovableUnit[]; inRecovery: boolean }> {
    const names = this.#tables();
    const node = this.#pools.primary(shardId);
    return withNodeDeadline(node.pool, this.#budget(this.wholeTableBudgetMs), node.nodeId, async (client) => {
      const wanted = [names.users, names.documents, ...(names.keys === undefined ? [] : [names.keys])];
      const { rows: catalog } = await client.query<{ table: string; disk_bytes: number; columns: ColumnWidth[]; in_recovery: boolean }>(
        `select c.relname as table, ${DISK_BYTES_SQL} as disk_bytes, ${COLUMNS_SQL} as columns,
           pg_catalog.pg_is_in_recovery() as in_recovery
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = current_schema() and c.relname = any($1) and c.relkind in ('r', 'p')`,
        [wanted],
      );
      const found = (name: string): { disk_bytes: number; columns: ColumnWidth[] } => {
        const row = catalog.find((r) => r.table === name);
        if (!row) throw new ShardInspectionError(`${node.nodeId}: sharded table ${name} does not exist (schema not migrated?)`);
        return row;
      };
      // Key records where the shard has their table (see ShardInspectorOptions.tables), as #tableStatistics counts them.
      const keyTable = names.keys !== undefined && catalog.some((r) => r.table === names.keys) ? names.keys : undefined;
      const tables = [
        { name: names.users, owner: 'id' as const, ...found(names.users) },
        { name: names.documents, owner: 'owner_id' as const, ...found(names.documents) },
        ...(keyTable === undefined ? [] : [{ name: keyTable, owner: 'owner_id' as const, ...found(keyTable) }]),
      ];
      // Each table's rows grouped by slot and listed owner (`k`: the keys sent, each with its id's
      // slot and whether the directory places it here), those the shard holds without owning them
      // apart (`not_owned`), then the tables' groups of a slot and owner made one row (a column of
      // rows and of bytes a table): a row a unit or a slot with rows in several tables, not one a
      // table. With the key's slot and placement sent with it, every row says whether it stands
      // under its owner's slot (`own`) and whether its owner is placed here (`here`), so grouping it
      // into its unit below reads no hash and no directory map (each key is hashed once a census,
      // {@link slotsOfKeys}): at 100,000 pins, a group a pinned key and a table (100,000 rows a
      // shard), each key hashed twice and looked up twice in a map of the whole directory, took
      // 1.3-1.7 s a shard (at a load average of 10-14 on 2 cores) of a census of 5-7 s; grouped so,
      // 50,000 rows a shard take 40-90 ms. The statement itself (its scan, join and grouping, and
      // the rows' parsing) is most of what is left, 0.6-1 s a shard (h143,
      // `npm run bench:statistics-directory`).
      const parts = tables.flatMap((t, i) => {
        const table = client.escapeIdentifier(t.name);
        const bytes = rowBytesSql(client, 'r', t.columns);
        return [
          `select ${i} as t, r.slot, k.key, k.kslot = r.slot as own, k.here, count(*)::float8 as n, coalesce(sum(${bytes}), 0)::float8 as bytes, false as not_owned, fk.key is not null as fenced
             from ${table} r left join k on k.key = r.${t.owner}::text left join fk on fk.key = r.${t.owner}::text group by r.slot, k.key, k.kslot, k.here, fk.key`,
          `select ${i}, r.slot, k.key, k.kslot = r.slot, k.here, count(*)::float8, coalesce(sum(${bytes}), 0)::float8, true, fk.key is not null
             from (${notOwnedRowsSql(table, t.owner, HOMES)}) r left join k on k.key = r.${t.owner}::text left join fk on fk.key = r.${t.owner}::text group by r.slot, k.key, k.kslot, k.here, fk.key`,
        ];
      });
      const perTable = tables.map((_, i) => `coalesce(sum(g.n) filter (where g.t = ${i}), 0)::float8 as n${i}, coalesce(sum(g.bytes) filter (where g.t = ${i}), 0)::float8 as b${i}`).join(', ');
      // The keys that group or judge a row here: those placed here (units of their own), those of
      // a slot the map gives here (their rows are not the slot's unit), and the owners of rows
      // behind a `moved` row (judged by where their unit is given). Another shard's key whose slot
      // is another shard's decides nothing here: sent every listed key with each statement, a
      // census of 100,000 pins sent each shard 3.6 MB of keys to hash ({@link movedRowOwners}).
      const owners = await movedRowOwners(client, tables.map((t) => ({ table: client.escapeIdentifier(t.name), owner: t.owner })));
      const kept = directory.filter((d) => d.shardId === shardId || slotMap.assignments[keySlots.get(d.key) as number] === shardId || owners.has(d.key));
      // `fk`: the keys `fenced` here by a `directory` row of their own (a directory move's fence,
      // a hand change's in flight or stopped before its put-back), a handful (the partial index
      // write_fences_in_move_idx). Their rows are still this shard's (its load), but that row
      // decides for each of them, under whatever slot, so a slot's move sets them aside
      // (move-port.ts setAside, the one rule: a key with a row of its own here in another state
      // than `open`): they are in no slot's unit, as `moved` and `incoming` ones are taken off it.
      // Counted in it before, the slot was offered with rows its move leaves behind (h165). And the
      // keys `moved` here by a hand change (`job_id` null): where the map or the directory gives
      // the key to this shard, such a row takes nothing off the load (notOwnedRowsSql's `homes`),
      // and its rows were counted in the slot's unit, which the move sets them aside from as well
      // (h169: offered with 5 rows, 4 copied). A handful too (a hand change's leftovers); rows of
      // such a key taken off by notOwnedRowsSql are marked alike in both parts, so they cancel out
      // of no unit.
      const { rows: groups } = await client.query<{ slot: number | null; key: string | null; own: boolean | null; here: boolean | null; not_owned: boolean; fenced: boolean } & Record<string, number>>(
        `with k as (select * from rows from (pg_catalog.unnest($1::text[]), pg_catalog.unnest($4::int[]), pg_catalog.unnest($5::bool[])) as k(key, kslot, here)),
              fk as (select unit_id as key from write_fences where kind = 'directory' and (state = 'fenced' or (state = 'moved' and job_id is null)))
         select g.slot, g.key, g.own, g.here, g.not_owned, g.fenced, ${perTable}
           from (${parts.join('\n union all\n')}) g group by g.slot, g.key, g.own, g.here, g.not_owned, g.fenced`,
        // HomesParams' ($1 to $3, homesOf's of the keys kept), then each kept key's slot and whether it is placed here.
        [...homesOf(shardId, slotMap, kept, () => true), kept.map((d) => keySlots.get(d.key) as number), kept.map((d) => d.shardId === shardId)],
      );
      const slots = new Map<number, { rows: number; bytes: number }>();
      const keys = new Map<string, { rows: number; bytes: number }>();
      const totals = tables.map(() => ({ rows: 0, bytes: 0 }));
      // Rows per table as the mover counts a unit before moving it (checkUnitSize: a slot's rows
      // in each table, those of directory keys included; a key's rows in each table), for the
      // planner's maxUnitRows rule.
      const slotTableRows = new Map<number, number[]>();
      const keyTableRows = new Map<string, number[]>();
      const addRows = <K>(into: Map<K, number[]>, k: K, t: number, n: number): void => {
        let per = into.get(k);
        if (per === undefined) into.set(k, (per = tables.map(() => 0)));
        per[t] = (per[t] ?? 0) + n;
      };
      const add = <K>(into: Map<K, { rows: number; bytes: number }>, k: K, n: number, bytes: number): void => {
        const u = into.get(k);
        if (u === undefined) into.set(k, { rows: n, bytes });
        else {
          u.rows += n;
          u.bytes += bytes;
        }
      };
      // Keys placed here with rows here under another slot than their id's (a restore, a hand-made
      // row, a document written with a wrong slot before shard migration 015): the mover refuses to
      // plan their directory move (mover.ts checkKeySlot, 400), so they are not offered.
      const strayKeys = new Set<string>();
      // The unit whose move carries a group's rows (of `slot`, owned by `key`; null: an owner not
      // listed, or not sent, see homesOf) off this shard, as the mover copies: a key's directory
      // move, the rows of the key under its id's slot (`own`; move-port.ts unitFilterOf), where the
      // directory places the key here (`here`); a slot's move, every row of the slot but those of
      // the placed keys whose id's slot it is (`excluded_keys`, Mover.checked, wherever they are
      // placed), where the map gives the slot here. A row neither carries is in no unit: its load is
      // counted here and no move takes it (a placed key's rows under its own slot on a shard it is
      // not placed on; a row under another shard's slot), and a unit offered with it would be
      // offered with rows its move leaves behind. Before, a row of a key placed here under another
      // slot this shard owns (a stray row: a restore, a hand-made row, a document written with a
      // wrong slot before shard migration 015) was the key's (a unit not offered, its move refused)
      // while the slot's move copied it: the slot was offered with 4 rows, its maxTableRows 5 and
      // its move copying 8 (census-pinned-key-stray-rows.test.ts); and before that (h131), one of
      // another shard's key was the slot's only when the key was not sent with the statement
      // (census-stray-key-rows.test.ts).
      for (const g of groups) {
        const sign = g.not_owned ? -1 : 1;
        let n = 0;
        let bytes = 0;
        for (let t = 0; t < tables.length; t++) {
          const rows = Number(g[`n${t}`]);
          const b = Number(g[`b${t}`]);
          const total = totals[t] as { rows: number; bytes: number };
          total.rows += sign * rows;
          total.bytes += sign * b;
          n += rows;
          bytes += b;
          if (g.not_owned || rows === 0 || g.slot === null) continue;
          addRows(slotTableRows, g.slot, t, rows);
          if (g.key !== null && g.here === true) addRows(keyTableRows, g.key, t, rows);
        }
        if (g.slot === null) continue;
        if (!g.not_owned && g.key !== null && g.here === true && g.own === false) strayKeys.add(g.key);
        // Rows the shard holds without owning them are taken off the unit they were counted in,
        // as off the shard's load: a unit is offered with the rows counted here.
        if (g.key !== null && g.own === true) {
          if (g.here === true) add(keys, g.key, sign * n, sign * bytes);
        } else if (slotMap.assignments[g.slot] === shardId && !g.fenced) {
          add(slots, g.slot, sign * n, sign * bytes);
        }
      }
      const statistics: TableStatistics[] = tables.map((t, i) => ({
        table: t.name,
        rows: totals[i]?.rows ?? 0,
        bytes: Math.round(totals[i]?.bytes ?? 0),
        diskBytes: t.disk_bytes,
        method: 'exact',
      }));
      const unit = (kind: 'slot' | 'directory', id: string, u: { rows: number; bytes: number }, perTable: readonly number[] | undefined): MovableUnit => ({
        kind,
        id,
        shardId,
        rows: u.rows,
        bytes: Math.round(u.bytes),
        maxTableRows: Math.max(0, ...(perTable ?? [])),
      });
      return {
        inRecovery: catalog.some((r) => r.in_recovery),
        measurement: {
          shardId,
          weight: this.#options.weights?.[shardId] ?? 1,
          slotsOwned: slotsOwnedBy(slotMap.assignments, this.#pools.shardIds()).get(shardId) ?? 0,
          tables: statistics,
          users: statistics[0]?.rows ?? 0,
          documents: statistics[1]?.rows ?? 0,
        },
        units: [
          ...[...slots.entries()].filter(([, u]) => u.rows > 0).sort(([a], [b]) => a - b).map(([slot, u]) => unit('slot', String(slot), u, slotTableRows.get(slot))),
          ...directory.flatMap((d) => {
            const u = keys.get(d.key);
            return u && u.rows > 0 && !strayKeys.has(d.key) ? [unit('directory', d.key, u, keyTableRows.get(d.key))] : [];
          }),
        ],
      };
    });
  }

  /**
   * Statistics, movable units and the planner's moves in one call: {@link rebalanceCensus}, then
   * {@link planRebalance}. Refuses (throws {@link ShardInspectionError}) when a shard cannot be
   * measured (a plan that ignores a shard would pile data onto it or away from it blindly) or its
   * primary is in recovery.
   */
  async rebalanceCheck(request: RebalanceCheckRequest): Promise<RebalanceCheckResult> {
    const { slotMap, directory, freeBytes, routing, busySlots, pending, ...options } = request;
    const census = await this.rebalanceCensus({
      slotMap,
      ...(directory ? { directory } : {}),
      ...(routing ? { routing } : {}),
      ...(busySlots ? { busySlots } : {}),
      ...(pending ? { pending } : {}),
    });
    return this.planRebalance(census, { ...options, ...(freeBytes ? { freeBytes } : {}) });
  }

  /**
   * What the rebalance check plans from, whatever its threshold and metric: every shard's exact
   * statistics and the units that may be offered, from one scan of each shard's tables (so
   * checks of several thresholds can share one). Refuses as {@link rebalanceCheck} does.
   */
  async rebalanceCensus(request: RebalanceCensusRequest): Promise<RebalanceCensus> {
    const { slotMap, directory: listed = [], routing, busySlots = new Set<number>(), pending = [] } = request;
    // Their rows cannot be measured or moved: a plan over the configured shards alone would take
    // their slots for empty, and balance the rest as if those rows did not exist.
    const unconfigured = unconfiguredOwners(slotMap.assignments, this.#pools.shardIds());
    if (unconfigured.length > 0) {
      throw new RebalancePlanError(
        `cannot plan a rebalance: slot map version ${slotMap.version} gives slots to ${unconfigured.length === 1 ? 'a shard' : 'shards'} not in the configured shard list (${this.#pools.shardIds().join(', ')}): ${describeUnconfigured(unconfigured)}; configure ${unconfigured.length === 1 ? 'it' : 'them'}, or publish a map that gives those slots to configured shards`,
      );
    }
    // Where the directory decides nothing (hash_based, override_hash false), entries left from
    // another configuration place no key: a slot move takes every row of the slot along, those of
    // listed keys too, so their rows are counted in their slot, not left out of every unit.
    const directory = placingDirectory(listed, routing);
    // Each key hashed once for every shard's census (and the busy slots below), not once a shard and a row.
    const keySlots = slotsOfKeys(directory);
    // Where the directory places keys, one pinned to a shard not configured cannot be routed (the
    // router refuses it), and its rows, wherever they lie, belong to no unit: counted in their
    // shard's load, moved by nothing.
    const configured = new Set(this.#pools.shardIds());
    const strays = directory.filter((d) => !configured.has(d.shardId));
    if (strays.length > 0) {
      const named = strays.slice(0, 10).map((d) => `${d.key} -> ${d.shardId}`).join(', ');
      const more = strays.length > 10 ? ` and ${strays.length - 10} more` : '';
      throw new RebalancePlanError(
        `cannot plan a rebalance: the directory pins ${strays.length} key${strays.length === 1 ? '' : 's'} to ${new Set(strays.map((d) => d.shardId)).size === 1 ? 'a shard' : 'shards'} not in the configured shard list (${this.#pools.shardIds().join(', ')}): ${named}${more}; configure the shard, or pin the keys to configured shards in catalog.shard_directory (GET /shards/directory?shard=... lists them)`,
      );
    }
    const census = await Promise.all(
      this.#pools.shardIds().map((shardId) =>
        this.#census(shardId, slotMap, directory, keySlots).then(
          (c) => ({ shardId, ...c }),
          (error: unknown) => {
            this.#failed({ what: 'rebalance census', shardId, error });
            return { shardId, error: kindOf(error) };
          },
        ),
      ),
    );
    const unreachable = census.flatMap((c) => ('error' in c ? [`${c.shardId} (${c.error})`] : []));
    if (unreachable.length > 0) throw new ShardInspectionError(`cannot plan a rebalance while shards are unreachable: ${unreachable.join('; ')}`);
    // Its queries answer, but every move onto or off it would fail (a standby takes no writes).
    const readOnly = census.flatMap((c) => ('error' in c || !c.inRecovery ? [] : [c.shardId]));
    if (readOnly.length > 0) {
      throw new ShardInspectionError(`cannot plan a rebalance while the primary of ${readOnly.join(', ')} is in recovery (read-only): no move can be made onto or off it; GET /shards/health says more`);
    }
    const measured = census.flatMap((c) => ('error' in c ? [] : [c]));
    const statistics = summarizeShardStatistics(measured.map((c) => c.measurement));
    // A plan of moves the mover then refuses (422) would only mislead whoever follows it.
    const refused = routing === undefined ? [] : (['slot', 'directory'] as const).flatMap((kind) => {
      const verdict = moveUnitFor(routing, kind);
      return verdict.ok ? [] : [{ kind, reason: verdict.reason }];
    });
    const all = measured.flatMap((c) => c.units);
    const units = all.filter((u) => !refused.some((r) => r.kind === u.kind)).filter((u) => busySlots.size === 0 || !busySlots.has(u.kind === 'slot' ? Number(u.id) : (keySlots.get(u.id) ?? keySlot(u.id))));
    const shardIds = new Set(measured.map((c) => c.shardId));
    const moving = pending.flatMap((p) => {
      const id = p.kind === 'directory' ? canonicalKey(p.unitId) : p.unitId;
      // Not found: no rows, or its rows already counted where the map or directory now names its target.
      const unit = all.find((u) => u.kind === p.kind && u.id === id);
      return unit !== undefined && unit.shardId !== p.to && shardIds.has(p.to) ? [{ unit, to: p.to }] : [];
    });
    return { statistics, units, refused, pending: moving };
  }

  /**
   * The moves that bring the shards of a {@link rebalanceCensus} within `options.threshold`. They
   * and the `summary` are planned from the loads as they will be once the census's pending moves
   * end (each unit on its target): `summary.shards[].before` counts those units there already.
   * `imbalance` and `needed` are the shards as measured now, as the statistics report them. The
   * storage headroom is applied to the free storage left once the pending units have landed.
   */
  async planRebalance(census: RebalanceCensus, options: RebalanceCheckOptions & { readonly freeBytes?: Readonly<Record<string, number>> } = {}): Promise<RebalanceCheckResult> {
    const { freeBytes: given, ...planning } = options;
    const measuredFree = given ?? (await this.#freeStorageOfPrimaries(planning.headroomBytes ?? 0));
    const loads = withUnitsMoved(census.statistics, census.pending.map(({ unit, to }) => ({ from: unit.shardId, to, rows: unit.rows, bytes: unit.bytes })));
    const freeBytes = measuredFree && freeOnceLanded(measuredFree, census.pending);
    const planned = checkRebalance(loads, census.units, { ...planning, ...(freeBytes ? { freeBytes } : {}) });
    // Measured now: no units, so no moves, only the imbalance and whether it is within the threshold.
    const now = loads === census.statistics ? planned : checkRebalance(census.statistics, [], planning);
    const result = { ...planned, imbalance: now.imbalance, needed: now.needed };
    if (census.refused.length === 0 || result.summary.balancedAfter) return result;
    const why = census.refused.map((r) => `no ${r.kind} moves are offered: ${r.reason}`);
    return { ...result, summary: { ...result.summary, unresolved: [...result.summary.unresolved, ...why] } };
  }

  /**
   * Free storage of each shard's primary as the cloud inventory reports it, so the planner's
   * headroom rule works without the caller looking it up. Without an inventory there is nothing
   * to apply; with a headroom asked for and the inventory unreadable, planning would be blind.
   */
  async #freeStorageOfPrimaries(headroomBytes: number): Promise<Record<string, number> | undefined> {
    const cloud = this.#options.cloud;
    if (!cloud) return undefined;
    let facts: ReadonlyMap<string, RdsFacts>;
    try {
      facts = await cloud.facts();
    } catch (error) {
      if (headroomBytes > 0) {
        this.#failed({ what: 'cloud inventory', error });
        throw new ShardInspectionError(`cannot apply the storage headroom: free storage is unknown (${cloudFailure(error)})`, { cause: error });
      }
      return undefined;
    }
    const out: Record<string, number> = {};
    for (const shardId of this.#pools.shardIds()) {
      const free = facts.get(hostPort(this.#pools.primary(shardId).endpoint))?.freeStorageBytes;
      if (free !== undefined && free !== null) out[shardId] = free;
    }
    return out;
  }
}

/** The slot map's part of a health report: a `down` reason per shard it gives slots to that is not configured. */
function slotMapHealth(map: SlotMap, shardIds: readonly string[]): NonNullable<HealthReport['slotMap']> {
  const unconfigured = unconfiguredOwners(map.assignments, shardIds);
  return {
    version: map.version,
    unconfigured,
    reasons: unconfigured.map((o) => ({
      code: 'slot_map_unconfigured_shard',
      status: 'down' as const,
      message: `slot map version ${map.version} gives ${describeUnconfigured([o])} to a shard that is not configured: the routers refuse this map, and the rows of those slots can be neither reached nor measured`,
    })),
  };
}

/**
 * `free` (bytes per shard) as it will be once the `pending` moves' units have landed on their
 * targets: planned from loads that count them there already, the headroom rule must count their
 * bytes there too, or it would offer the target the same free storage twice. Their whole bytes
 * are taken off, even of a copy under way whose pages already take some of what was measured:
 * over-counted, never under. The sources get nothing back, as in the planner (`rebalance.ts`): their
 * rows are deleted only after the flip, and a deleted row's space is reused by the same table once
 * vacuumed, never returned to the free storage RDS reports. Shards of unknown free storage stay so.
 */
function freeOnceLanded(free: Readonly<Record<string, number>>, pending: RebalanceCensus['pending']): Record<string, number> {
  const out: Record<string, number> = { ...free };
  for (const { unit, to } of pending) {
    const f = out[to];
    if (f !== undefined) out[to] = Math.max(0, f - unit.bytes);
  }
  return out;
}

/**
 * The directory entries that place their keys' rows (none where the routing places no key by the
 * directory: see {@link ShardInspector.rebalanceCensus}), in canonical form ({@link canonicalDirectory}).
 */
function placingDirectory(listed: readonly { readonly key: string; readonly shardId: string }[], routing: MoveRouting | undefined): { key: string; shardId: string }[] {
  const slotVerdict = routing === undefined ? undefined : moveUnitFor(routing, 'slot');
  return slotVerdict?.ok === true && !slotVerdict.excludeDirectoryKeys ? [] : canonicalDirectory(listed);
}

/** Each key's slot ({@link keySlot}) of `directory`, whose keys are canonical ({@link canonicalDirectory}). */
function slotsOfKeys(directory: readonly { readonly key: string }[]): Map<string, number> {
  return new Map(directory.map((d) => [d.key, slotOf(d.key)]));
}

/**
 * The directory entries in canonical key form ({@link canonicalKey}: the form the rows' uuid
 * columns print), each key once: the census joins the rows to the keys by their text, so a key in
 * another spelling would find none of its rows, and a key listed twice would count each row twice.
 * Throws {@link RebalancePlanError} for a key listed with two shards.
 */
function canonicalDirectory(directory: readonly { readonly key: string; readonly shardId: string }[]): { key: string; shardId: string }[] {
  const homes = new Map<string, string>();
  for (const d of directory) {
    const key = canonicalKey(d.key);
    const home = homes.get(key);
    if (home !== undefined && home !== d.shardId) throw new RebalancePlanError(`directory key ${key} is listed on two shards (${home} and ${d.shardId})`);
    homes.set(key, d.shardId);
  }
  return [...homes].map(([key, shardId]) => ({ key, shardId }));
}

/** `host:port` of a `host:port/db` endpoint (how cloud facts are keyed). */
export function hostPort(endpoint: string): string {
  const slash = endpoint.indexOf('/');
  return slash < 0 ? endpoint : endpoint.slice(0, slash);
}

/**
 * The exact count and live data bytes ({@link rowBytesSql}) of a sharded table's rows whose
 * unit the shard owns. A unit being moved is held by two shards: the target holds the copy from
 * the start of the copy (`incoming`), the source the original until the clean-up has deleted it
 * (`moved`); counted on both, it skews the shares the rebalance check plans from. The rows of
 * those units, which the fence rows name (a few slots and keys), are found through the indexes
 * (`rowsOfFencedUnitsSql`), judged by the trigger's rule (`rowFenceStateSql`) and taken off the
 * table's count and bytes: the statement costs one scan of the table (counting and summing row
 * sizes) plus index scans of the units in flight, all in one snapshot.
 *
 * With `homes` (the units the slot map and the directory give to the shard, {@link HomesParams}),
 * a hand change's `moved` row (`job_id` null) of a unit given to this shard takes nothing off: a
 * `moved` row of a unit the map still gives here (a hand change's leftover row, a map published
 * past the stores) leaves the rows where the map sends them. Before, those rows were taken off the
 * shard's load while the census offered the unit with them (its units are the rows of the units
 * given to the shard), and the plan's figures and its moves disagreed (rebalance-refused-moves.test.ts:
 * 36 rows balanced against 0 with units of 40, 4 moves proposed where 5 balance the shards). A
 * move's own `moved` row takes its rows off wherever the map sends the unit: they are that move's
 * leftovers (a user its clean-up kept), its copy live on the shard the move took the unit to, as
 * the fence review judges them (docs/sharding-spec.md, section 7). Taking nothing off for them too,
 * a slot given back by hand past the stores to a shard holding such leftovers had them counted
 * there and their live copy on the other shard, each row twice, and the leftovers offered as the
 * slot's unit (census-hand-give-back.test.ts). `incoming` rows are always taken off: during a move
 * the map names the source until the flip, and after it the target's row is opened.
 */
function ownedRowsSql(table: string, owner: 'id' | 'owner_id', rowBytes: string, homes?: HomesParams): string {
  return `select a.n - f.n as n, a.bytes - f.bytes as bytes
    from (select count(*)::float8 as n, coalesce(sum(${rowBytes}), 0)::float8 as bytes from ${table} r) a,
      (select count(*)::float8 as n, coalesce(sum(${rowBytes}), 0)::float8 as bytes from (${notOwnedRowsSql(table, owner, homes)}) r) f`;
}

/**
 * The rows of a sharded table the shard holds without owning their unit, by {@link ownedRowsSql}'s
 * rule: a statement whose rows are the table's columns (and `fence_state`), for `from (...) r`.
 */
function notOwnedRowsSql(table: string, owner: 'id' | 'owner_id', homes?: HomesParams): string {
  const given = homes === undefined ? 'false' : `(${rowFenceByHandSql(`r.${owner}`, 'r.slot')} and ${homedHereSql(`r.${owner}`, 'r.slot', homes)})`;
  return `select r.* from (select u.*, ${rowFenceStateSql(`u.${owner}`, 'u.slot')} as fence_state from (${rowsOfFencedUnitsSql(table, owner, NOT_OWNED_STATES_SQL)}) u) r
    where r.fence_state in ${NOT_OWNED_STATES_SQL} and not (r.fence_state = 'moved' and ${given})`;
}

/**
 * The parameters (`$n` of the statement) naming the units the slot map and the directory give to
 * the shard being measured: `listedKeys`, every directory key that places its rows (text[],
 * canonical); `homeKeys`, those of them placed on this shard (text[]); `homeSlots`, the slots the
 * map gives it (int[]).
 */
interface HomesParams {
  readonly listedKeys: string;
  readonly homeKeys: string;
  readonly homeSlots: string;
}

/**
 * {@link HomesParams}' values for `shardId`, in the order `listedKeys`, `homeKeys`, `homeSlots`, of
 * the directory keys `matters` keeps (the keys whose rows the statement groups or judges on this
 * shard; the others are left out of both lists, as if not listed, which changes no answer there).
 */
function homesOf(
  shardId: string,
  slotMap: SlotMap,
  directory: readonly { readonly key: string; readonly shardId: string }[],
  matters: (key: string, home: string) => boolean,
): [string[], string[], number[]] {
  const kept = directory.filter((d) => matters(d.key, d.shardId));
  return [
    kept.map((d) => d.key),
    kept.filter((d) => d.shardId === shardId).map((d) => d.key),
    slotMap.assignments.flatMap((owner, slot) => (owner === shardId ? [slot] : [])),
  ];
}

/**
 * The owners (uuid text) of a shard's rows behind a `moved` fence row, in `tables` (escaped names
 * and owner columns): the only rows whose count reads the directory's keys ({@link homedHereSql},
 * {@link notOwnedRowsSql}), found through the indexes as the count finds them. A key owning none
 * is judged nowhere on this shard, so it need not be sent: at 100,000 pins the three statements of
 * an exact count each sent every shard every key (3.6 MB) to hash. Read in a statement of its own
 * (READ COMMITTED, withNodeDeadline): a `moved` row committed between it and the count (a flip
 * that moment) has its rows judged as of keys not listed, by their slot, as a count begun a moment
 * earlier would not have judged them at all.
 */
async function movedRowOwners(client: pg.PoolClient, tables: readonly { readonly table: string; readonly owner: 'id' | 'owner_id' }[]): Promise<Set<string>> {
  if (tables.length === 0) return new Set();
  const { rows } = await client.query<{ owner: string }>(
    tables.map((t) => `select f.${t.owner}::text as owner from (${rowsOfFencedUnitsSql(t.table, t.owner, `('moved')`)}) f`).join('\n union\n'),
  );
  return new Set(rows.map((r) => r.owner));
}

/**
 * Whether the unit of a row (`owner`, `slot`) is given to the shard being measured: its directory
 * key is placed here, or it has none listed and the map gives its slot here; as the census builds
 * the units it offers. Each list is hashed once (`in (select unnest(...))`, a hashed subplan), not
 * searched per row: it is read only for the rows of units a fence row names (ownedRowsSql).
 */
function homedHereSql(owner: string, slot: string, homes: HomesParams): string {
  return `(${owner}::text in (select pg_catalog.unnest(${homes.homeKeys}::text[]))
            or (${slot} in (select pg_catalog.unnest(${homes.homeSlots}::int[])) and ${owner}::text not in (select pg_catalog.unnest(${homes.listedKeys}::text[]))))`;
}

/**
 * What a heap tuple of a row costs: its header ({@link ROW_HEADER_BYTES}) and each column's
 * stored size (`pg_column_size` of the value as it lies in the tuple: short values with their
 * 1-byte header, compressed ones compressed, a TOASTed one at its stored size in the TOAST table,
 * read from its pointer without fetching it). Column by column rather than `pg_column_size(r.*)`,
 * which would build each row as a composite and fetch every TOASTed value to do so. Free space,
 * dead rows and indexes are not counted: these are the bytes a move takes with the rows.
 */
function rowBytesSql(client: pg.PoolClient, alias: string, columns: readonly ColumnWidth[]): string {
  // A NOT NULL fixed-width column always takes its width: a constant, no call per row.
  const constant = columns.reduce((sum, c) => sum + (c.fixed ?? 0), ROW_HEADER_BYTES);
  const varying = columns.filter((c) => c.fixed === null).map((c) => `coalesce(pg_catalog.pg_column_size(${alias}.${client.escapeIdentifier(c.name)}), 0)`);
  return [String(constant), ...varying].join(' + ');
}
