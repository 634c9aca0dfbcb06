/**
 * The PostgreSQL side of a move: the SQL of each step the move protocol
 * (`core/sharding/move-machine.ts`) asks for. One port serves one run of one job and uses one
 * catalog connection (the run's) and the shards' pools one connection at a time, so a Lambda
 * whose pools hold a single connection can run a move. Every write of the job row is a
 * compare-and-set on the run's lease epoch and holder (sharding migration 006): a run whose lease
 * expired and was claimed by another runner changes nothing more ({@link MoveLeaseLostError}).
 *
 * - Change capture by trigger (`record_move_change`, shard migration 002) rather than by
 *   `updated_at` or `xmin`: those cannot see deletes, and `updated_at` trusts every writer. The
 *   log holds only row ids; the catch-up re-reads the current row, so applying an entry twice
 *   is harmless, and entries are consumed by deleting them (sequence order is not commit order).
 * - The write fence is a row of `write_fences` on each side, enforced for every writer by a
 *   trigger (shard migration 004). The mover's own writes mark their transaction with
 *   `ca_dms.move_writer` and pass.
 * - The flip and the rollback are compare-and-set in one catalog transaction with the job row
 *   (locked FOR UPDATE): the flip publishes only while the map still names the source and no
 *   rollback was decided; a rollback is decided only while the map still names the source and
 *   the flip has not happened. So a rollback can never delete the new owner's copy.
 * - The shard's schema is in this login's search_path, and where the application may create in
 *   it (PostgreSQL 14's public schema, when migration 019 could not revoke that) a function,
 *   aggregate or operator of its own that matches a call's argument types exactly is chosen over
 *   pg_catalog's polymorphic or record-taking one, and runs with the mover's rights (its hashes
 *   would answer the verification). So those are called as `pg_catalog.` (`to_jsonb`,
 *   `jsonb_agg`, `array_agg`, `cardinality`, `jsonb_populate_recordset`, `hash_record_extended`,
 *   `unnest`, `operator(pg_catalog.=)` on arrays), and the shard's own functions with arguments
 *   of their exact types (`::bigint`), so that no overload is a better match. A new call of that
 *   kind must be written the same way (test/integration/sharding/mover-sql-shadowing.test.ts).
 *
 * @example
 * ```ts
 * const port = new PgMovePort({ catalog: new MoverCatalog(client), leaseEpoch, leaseHolder, shards, slotMaps, directory, settings });
 * const done = await driveMove(job, port);
 * ```
 */
import { pipeline } from 'node:stream/promises';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { z } from 'zod';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { cancelRefusal, MoveCancelled, MoveCancelRefused, MoveError, MoveFenceBudgetSpent, MoveLeaseLostError, MoveOwnerConflict, MovePaused, type FlipOutcome, type MovePort, type MoveTransitionName, type VerifyOutcome, MOVE_TRANSITIONS } from '../../core/sharding/move-machine.js';
import { assertTransition } from '../../core/sharding/move-plan.js';
import { keySlot } from '../../core/sharding/keys.js';
import { SlotMapVersionConflictError } from '../../core/sharding/errors.js';
import { moveSlots, type SlotMap } from '../../core/sharding/slot-map.js';
import { DirectoryVersionConflictError, type DirectoryEntry, type DirectoryStore, type ExpectedDirectoryEntry } from './directory-store.js';
import { abandonConnection, connectBy, DEADLINE_GRACE_MS, holdToDeadline, type ClientDeadline } from './deadline.js';
import { dropConnection } from './listening-client.js';
import { CLUSTER_ID_SQL, clusterIdOfRow, clusterIdReadable, clusterIdReadableKnown, clusterIdRefused, forgetClusterIdReadable, refusalRecheck } from './cluster-identity.js';
import { differingIds, HASH_RUN_SQL, HashRun, hashValue } from './move-hashes.js';
import { isNodeFailure } from './replica-reader.js';
import { toJob, type CopyCursor, type JobRow, type MoveJob, type TableSummaries } from './move-jobs.js';
import type { Queryable, SlotMapStore } from './slot-map-store.js';
import { withIdleBound, type MoverCatalog } from './mover-catalog.js';
import { hasSqlState, INSUFFICIENT_PRIVILEGE, LOCK_NOT_AVAILABLE, retryingSerializationFailures, UNDEFINED_FUNCTION, UNIQUE_VIOLATION } from './sqlstate.js';
import { inTransaction, RollbackWith } from './transaction.js';
import { lockSlotsForPins, SLOT_PIN_LOCK_WAIT_MS, slotLockRefused, type SlotLockRefusal } from './unit-rows.js';

/** The slot-map side of the catalog the mover needs. */
export type MoverSlotMaps = Pick<SlotMapStore, 'current' | 'publish' | 'ownerOf'>;

/**
 * The directory side of the catalog the mover needs (`entry` reads are never cached). `invalidate`
 * is called once each transaction of the mover that wrote the entry has ended: the process's
 * lookups (the same store routes its requests) must not keep an owner read before that commit.
 */
export type MoverDirectory = Pick<DirectoryStore, 'entry' | 'set' | 'all' | 'keysInSlot' | 'invalidate'>;

/** What a move recorded of its source (sharding migrations 014, 015), as the catalog returns it (bigint as text). */
interface RecordedSource {
  readonly source_timeline: string | null;
  readonly source_history: string | null;
  readonly source_fence_lsn: string | null;
}

/**
 * The source's timeline and its history as one statement read them (`PgMovePort.sourceTimeline`),
 * with the id of the cluster that answered when it was asked (`clusterId` absent: not asked; null:
 * asked, none answered).
 */
interface SourceTimeline {
  readonly timeline: number | null;
  readonly history: string | null;
  readonly clusterId?: string | null;
}

export interface MoveSettings {
  /**
   * How long a transaction of the run may sit idle on a shard before the server ends it
   * (`SET LOCAL idle_in_transaction_session_timeout`, see `withIdleBound`): a connection that
   * went silent mid-transaction must not hold this run's permit (and the locks it took) for as
   * long as the server keeps the session, or no later run could claim the job there (a
   * transaction stuck mid-statement, a COPY FROM STDIN whose data stopped coming, is ended by
   * the claim instead: {@link PgMovePort.claimPermits}). Absent: no bound.
   */
  readonly idleInTransactionMs?: number;
  /** Rows per catch-up pass and per delete batch. */
  readonly batchRows: number;
  /** Rows per copy page (one COPY each; the copy resumes from the last page saved). */
  readonly copyBatchRows: number;
  /** Id ranges copied at once (see {@link PgMovePort.copy}). */
  readonly copyLanes: number;
  /** Catching up ends when a pass applies fewer changes than this. */
  readonly catchUpThreshold: number;
  /** How long writes to the unit may be held by the fence: lock wait plus the final catch-up. */
  readonly fenceBudgetMs: number;
  /** How long past the fence budget a fenced statement may stay unanswered, and the bound of giving the fence up. Default {@link FENCED_STATEMENT_SLACK_MS}. */
  readonly fenceSlackMs?: number;
  /** How long to wait for writers older than the change capture. */
  readonly drainTimeoutMs: number;
  /** Time between the flip and deleting the source rows, for readers holding the old map. */
  readonly readerGraceMs: number;
  /** Recorded as the publisher of the new map. */
  readonly actor: string;
  /** The most rows of one table a unit may have when it is compared (see {@link PgMovePort.preVerify}); unlimited when absent. */
  readonly maxUnitRows?: number;
}

export interface PgMovePortOptions {
  /** The run's catalog connection, shared with the run's lease renewal one holder at a time. */
  readonly catalog: MoverCatalog;
  /** The epoch of the run's lease on the job (see `Mover.run`): every write of the job row requires it. */
  readonly leaseEpoch: number;
  /**
   * The holder the run's claim recorded (unique per claim): every write of the job row requires it
   * too. An epoch alone is not unique: a claim lost by a catalog failover (committed on the old
   * primary only) is handed out again, with the same epoch, to the next run on the new primary.
   */
  readonly leaseHolder: string;
  readonly shards: ReadonlyMap<string, pg.Pool>;
  readonly slotMaps: MoverSlotMaps;
  readonly directory: MoverDirectory;
  readonly settings: MoveSettings;
  /** Injected for tests; a timer by default. */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Injected clock in milliseconds (the fence budget); `performance.now` by default. */
  readonly now?: () => number;
  /** Whether the run's time is up: the copy and the catch-up stop at their next page or pass, the cutover before it takes the fence ({@link MovePaused}). */
  readonly timeUp?: () => boolean;
  /**
   * How long until the run must be over (ms from now, read at each checkout): a shard connection
   * still checked out then has its socket closed ({@link PgMovePort.pool}). Absent: no bound.
   */
  readonly abandonInMs?: () => number;
  /**
   * The longest a shard connection is checked out outside the fence, whatever `abandonInMs` says
   * (see `MoverOptions.shardWaitMs`): a run with no abandon time must not wait on a silent shard
   * for ever. Absent: no bound but `abandonInMs`.
   */
  readonly checkoutBoundMs?: number;
}

/** Rows of a unit that met rows of the target with the same ids in another unit (see `upsert` and `copyPage`); nothing was overwritten. */
class UnitCollision extends MoveError {
  constructor(
    readonly table: TableName,
    readonly ids: readonly string[],
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * The error a move records when rows of its unit have the ids of rows another unit holds on its
 * target (docs/sharding-spec.md section 9, "Ids are unique across shards"): the table, the ids
 * (the first five, and how many), that nothing was overwritten and the unit's writes go on on its
 * source, and what an operator does. It stays the job's error: every run stops there until the
 * collision is resolved (a document given a new id, a stray users or key record deleted), or the
 * move is cancelled.
 */
function collisionMessage(job: Pick<MoveJob, 'id' | 'kind' | 'unitId' | 'from' | 'to'>, table: TableName, ids: readonly string[]): string {
  const shown = ids.slice(0, 5).join(', ') || '(unknown)';
  const more = ids.length > 5 ? ` (${ids.length} in all)` : '';
  return (
    `${table} id(s) ${shown}${more} of ${job.kind} ${job.unitId} already belong to another unit on ${job.to}; nothing on ${job.to} was overwritten and the move stops here, ` +
    `at this and every later run, holding no fence: the unit's reads and writes go on on ${job.from}. Ids must be unique across shards (docs/sharding-spec.md, section 9, ` +
    `"Ids are unique across shards", has the query that lists them): ` +
    (table === 'users'
      ? `a user's id is its routing key, so the users row ${job.to} holds under another slot than its id's is the stray: delete or correct it there, and the next run goes on`
      : table === 'document_keys'
        ? // A key record's id is UUID v5 of its owner and its Idempotency-Key (section 10): given a
          // new id, the record is never found again, and a retry of its key creates a second document.
          `a key record's id is derived from its owner and its Idempotency-Key (UUID v5, section 10), so two owners' records cannot share one: one of the two was written by hand, a restore or an import, and is the stray: delete it (the unit's on ${job.from} or the other unit's on ${job.to}), never give a key record a new id (its key would be forgotten: a retry of it would create a second document), and the next run goes on`
        : `give one of the two rows of each id a new random id (UUID v4), the unit's on ${job.from} or the other unit's on ${job.to}, and the next run goes on`) +
    `; or cancel the move (DELETE /shards/moves/${job.id}), which deletes only its own copy from ${job.to}` +
    // A document handed between owners of two units moving into one target from two sources: the
    // other move's copy is stale until its next catch-up pass, which this move cannot clear.
    (table === 'documents' ? `. A document another move into ${job.to} copied before it was handed to an owner of this unit is not another record: that move's next catch-up removes its copy, and this move goes on by itself` : '')
  );
}

/** What {@link PgMovePort.drain} waits for, for its messages: the shard, what the writers are older than, and what comes once they have ended. */
interface DrainOf {
  readonly shard: string;
  readonly since: string;
  readonly then: string;
  /**
   * What is drained is read by a BEFORE trigger (the target's fence), not an AFTER one (the
   * source's capture): a writer reads it before its row takes a transaction id, so a prepared
   * transaction's id tells nothing of when it read it (see {@link PgMovePort.drain}).
   */
  readonly readBeforeWrite?: boolean;
}

/** Which unit a move moves: the job's own, or another's as a target's fence row names it. */
type UnitRef = Pick<MoveJob, 'kind' | 'unitId' | 'excludedKeys'>;

/**
 * The sharded tables, parents first; `owner` is the column holding the user id (the directory
 * key). Every one has a uuid `id` primary key (what the change capture logs and the catch-up,
 * the comparison and the deletions go by) and a `slot` tied to its owner's. `document_keys`
 * (shard migration 021) are an owner's `Idempotency-Key` records: they never change owner, so
 * never change units (unlike documents, which an owner may hand over).
 */
const TABLES = [
  { name: 'users', owner: 'id' },
  { name: 'documents', owner: 'owner_id' },
  { name: 'document_keys', owner: 'owner_id' },
] as const;
type TableName = (typeof TABLES)[number]['name'];

/** The tables whose rows belong to a user (every one but `users`), children of `users`. */
const CHILD_TABLES = TABLES.filter((t) => t.name !== 'users').map((t) => t.name);

/** A deletion's extra filter (alias `x`) on `users`: the user owns no row of a child table here (see `deleteVerified`). */
const OWNS_NOTHING = CHILD_TABLES.map((table) => ` and not exists (select 1 from ${table} c where c.owner_id = x.id)`).join('');

/** The sharded tables' names ({@link TABLES}), for messages. */
const TABLE_LIST = TABLES.map((t) => t.name).join(', ').replace(/, ([^,]+)$/, ' or $1');

/** `regclass` literals of the sharded tables, for the drain's look at `pg_locks`. */
const TABLE_REGCLASSES = TABLES.map((t) => `'${t.name}'::regclass`).join(', ');
/**
 * Whether the prepared transaction `p` (a pg_prepared_xacts row) holds ROW EXCLUSIVE on a sharded
 * table of this database: it wrote, or may still write, the unit's rows. A prepared transaction's
 * locks belong to no backend (pid null); its own transaction id lock names its virtual transaction.
 */
const PREPARED_WROTE_TABLES = `exists (select 1 from pg_locks x join pg_locks l on l.virtualtransaction = x.virtualtransaction
  where x.locktype = 'transactionid' and x.transactionid = p.transaction and x.pid is null
    and l.locktype = 'relation' and l.mode = 'RowExclusiveLock'
    and l.database = (select oid from pg_database where datname = current_database())
    and l.relation in (${TABLE_REGCLASSES}))`;

/**
 * One batch of a unit's deletion (the clean-up on the source, a rollback's on the target): the
 * next `$1` rows of `table` matching `filter` (with its parameters from `$3`; `x` is the table's
 * alias), in id order after `$2` when `after` is set, deleted; answers how many it picked
 * (`found`), how many it deleted (`n`) and the last id deleted. The first batch names `$2` too,
 * as null, so both forms take the same parameters. It runs after {@link DELETE_BATCH_SETTINGS}.
 *
 * Both keep each batch on indexes. Unordered and with sequential scans allowed, the planner
 * read the unit with a sequential scan whenever it was a few percent of the table, and a unit
 * written last sits at the end of the heap: every batch read the whole table (a 50,000-row slot
 * on a shard of 850,000 documents: 10 sequential scans, 2.4 s). After `$2`, a batch also starts
 * past the index entries of the rows the batches before it deleted. The rows are deleted by the
 * tuple ids the index scan found (a TID scan), not looked up again by primary key: on a small
 * shard, 100k rows in 1.24-1.77 s against 1.48-1.81 s with the lookups. A row updated between
 * the two has a new tuple id and is not deleted by this batch; `found` (rows picked) against `n`
 * (rows deleted) lets the caller see that and pick it again (none should be: the fence refuses
 * every other writer of the unit on both shards).
 */
/** Batches in a row that may pick rows without deleting any before a deletion gives up (see `deleteUnit`). */
const UNDELETABLE_RETRIES = 20;

/** How a deletion batch's transaction plans (see {@link unitDeleteBatchSql}). */
export const DELETE_BATCH_SETTINGS = 'set local enable_seqscan = off';

export function unitDeleteBatchSql(table: TableName, filter: string, after: boolean): string {
  return `with picked as materialized (
            select array(select x.ctid from ${table} x where ${filter}${after ? ' and x.id > $2::uuid' : ' and $2::uuid is null'} order by x.id limit $1) as tids),
          gone as (delete from ${table} where ctid = any((select tids from picked)::tid[]) returning id)
          select (select pg_catalog.cardinality(tids) from picked) as found, count(*)::int as n, (pg_catalog.array_agg(id order by id desc))[1]::text as last from gone`;
}

/** Each unit row's 64-bit `hash_record_extended`, in id order, per table (see `move-hashes.ts`). */
type RowHashes = Record<TableName, HashRun>;

/** Per table: how many rows were hashed and the sum of their hashes. */
type HashTotals = Record<TableName, { rows: number; sum: bigint }>;

/** Row ids per table. */
type RowIds = Record<TableName, Set<string>>;

function rowIds(...from: readonly Readonly<Record<TableName, ReadonlySet<string>>>[]): RowIds {
  return perTable((name) => new Set(from.flatMap((f) => [...f[name]])));
}

/** A record of every sharded table's value. */
function perTable<T>(value: (name: TableName) => T): Record<TableName, T> {
  return Object.fromEntries(TABLES.map(({ name }) => [name, value(name)])) as Record<TableName, T>;
}

/** No row id of any table. */
const noRowIds = (): RowIds => rowIds();

/**
 * One side's row hashes as last compared: those of the full comparison, with the rows compared
 * again since replacing them, and their per-table count and sum kept up to date as rows are
 * replaced, so that the totals under the fence cost what changed, not the unit's size (summing
 * 100,000 hashes there took tens of ms of the fence).
 */
class SideHashes {
  /** Rows compared again since the full comparison: their hash now (null: the row is gone). */
  private readonly replaced: Record<TableName, Map<string, string | null>> = perTable(() => new Map());

  /** @param totals the count and sum of `base`, as the database computed them with the hashes. */
  constructor(
    private readonly base: RowHashes,
    readonly totals: HashTotals,
  ) {}

  private hashOf(table: TableName, id: string): string | undefined {
    const replaced = this.replaced[table];
    return replaced.has(id) ? (replaced.get(id) ?? undefined) : this.base[table].get(id);
  }

  private add(table: TableName, h: string, sign: 1 | -1 = 1): void {
    this.totals[table].rows += sign;
    this.totals[table].sum += BigInt(sign) * hashValue(h);
  }

  /** Replaces the rows named in `ids` by what `now` says of them (absent: the row is gone). */
  replace(ids: RowIds, now: RowHashes): void {
    for (const { name } of TABLES) {
      for (const id of ids[name]) {
        const before = this.hashOf(name, id);
        if (before !== undefined) this.add(name, before, -1);
        const after = now[name].get(id);
        this.replaced[name].set(id, after ?? null);
        if (after !== undefined) this.add(name, after);
      }
    }
  }

  /** The totals with the rows named in `ids` replaced by `now`, leaving these hashes as they are. */
  totalsWith(ids: RowIds, now: RowHashes): TableSummaries {
    const out: Record<string, { rows: number; checksum: string }> = {};
    for (const { name } of TABLES) {
      let { rows, sum } = this.totals[name];
      for (const id of ids[name]) {
        const before = this.hashOf(name, id);
        if (before !== undefined) {
          rows -= 1;
          sum -= hashValue(before);
        }
      }
      for (const h of now[name].hashes()) {
        rows += 1;
        sum += hashValue(h);
      }
      out[name] = { rows, checksum: sum.toString() };
    }
    return out;
  }
}

/**
 * Both sides compared row by row before the fence (see {@link PgMovePort.preVerify}, brought
 * forward by {@link PgMovePort.recompare}): each side's row hashes then, and the rows to compare
 * again under the fence (those that differed, or had a change not yet applied, then).
 */
interface PreVerified {
  readonly jobId: number;
  readonly source: SideHashes;
  readonly target: SideHashes;
  recheck: RowIds;
}

/**
 * Past this many changes written on the target since the comparison before the fence, a new
 * comparison is made before the next fence attempt: the rows compared under the fence are
 * those changes, and they must fit in the fence budget.
 */
const RECHECK_LIMIT = 10_000;

/** How long a run waits for the write transactions of the run it replaces before it gives up (see {@link PgMovePort.claimPermits}). */
export const PERMIT_CLAIM_WAIT_MS = 10_000;

/** How long a permit claim waits for an earlier run's transactions before it ends them (see {@link PgMovePort.claimPermits}). */
export const STALE_RUN_GRACE_MS = 250;

/** At most this many comparisons of the changed rows before each fence attempt (see {@link PgMovePort.recompare}). */
const RECOMPARE_ROUNDS = 3;

/**
 * How long past the fence budget a shard statement of the fenced part may stay unanswered before
 * its connection is closed (see {@link PgMovePort.droppingPool}): well past what the server's own
 * bounds within the budget leave, so only a connection that went silent is closed. The default of
 * {@link MoveSettings.fenceSlackMs}.
 */
export const FENCED_STATEMENT_SLACK_MS = 5000;

/** Reads that must see one consistent state of the source (a page and its owners, a change batch). */
const SNAPSHOT = 'begin isolation level repeatable read read only';
/**
 * A copy page's snapshot. The page is a keyset range of the (slot, id) index, which returns it in
 * id order; with statistics older than the slot's growth (a slot filled since the last analyze)
 * the planner chose a bitmap scan and a sort of the whole slot instead, which spilled to disk
 * past `work_mem` and read the slot at half the speed (100k rows: 1.8-2.3 s against 0.9-1.0 s).
 */
const PAGE_SNAPSHOT = `${SNAPSHOT}; set local enable_sort = off`;
/** Writes by the mover itself, which the write-fence trigger lets through. */
const MOVER_WRITE = "begin; set local ca_dms.move_writer = 'on'";
/**
 * {@link MOVER_WRITE} at READ COMMITTED whatever the login's or the database's
 * `default_transaction_isolation`: for a write that locks a fence row and then reads what the
 * writers that held it committed meanwhile (each statement a snapshot of its own). Begun bare at a
 * REPEATABLE READ default, every statement read the snapshot of the transaction's first (the
 * permit's hold, before the lock), and the rows a writer holding the row committed while the lock
 * waited for it were not seen (moves-rollback-close-isolation.test.ts).
 */
const MOVER_WRITE_READ_COMMITTED = "begin isolation level read committed; set local ca_dms.move_writer = 'on'";
/**
 * How a run's catalog transactions with its job row locked begin ({@link PgMovePort} `withLockedJob`):
 * READ COMMITTED whatever the login's or the database's `default_transaction_isolation` (an RDS
 * parameter group, an `ALTER ROLE ... SET`). Each reads where the unit routes after it has locked
 * the job row and, for a key without a directory entry, `catalog.slot_maps` ({@link ownerRead}),
 * and must see what committed while it waited for those locks. Begun REPEATABLE READ, those reads
 * used the snapshot of the job row's locking, older than the lock of the map: a map published
 * between the two (by hand, giving the key's slot to a third shard) went unseen, the flip pinned
 * the key to its target over it, and a document written where that map sent the key was out of
 * every reader's sight (moves-catalog-isolation.test.ts; issue #15).
 */
const LOCKED_JOB_BEGIN = 'begin isolation level read committed';
/** The primary's timeline (from its current WAL file's name), as replica-reader.ts reads it: recorded with a move's fence. */
const CURRENT_TIMELINE_SQL = "('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint::text";

/**
 * What the mover's publication of a directory key sets `ca_dms.pin_writer` to (sharding migration
 * 011), and of a slot `ca_dms.map_writer` (sharding migration 012): `move job #<id>`, checked by
 * the catalog against an unfinished move of the unit to the shard written.
 */
function publisherOf(job: Pick<MoveJob, 'id'>): `move job #${number}` {
  return `move job #${job.id}`;
}


/**
 * How long before its fence deadline a flip gives up its wait for its key's slot's pin lock
 * (`flipLocked`): enough for the server's lock_timeout to answer before the run's cancel at the
 * deadline, so that the fence's give-up names the lock.
 */
const FLIP_SLOT_LOCK_MARGIN_MS = 100;

/**
 * A move's `incoming` row on its target: inserted, or over a row of the unit that says `moved`,
 * `incoming` or `open` (never `fenced`: another move's cutover). `$5` is `check_undo` (shard
 * migration 026): null, or what the row replaced while the target is not checked yet (see
 * `PgMovePort.checkedIncoming`).
 */
const INCOMING_UPSERT = `insert into write_fences (kind, unit_id, state, job_id, excluded_keys, check_undo) values ($1, $2, 'incoming', $3, $4, $5::jsonb)
   on conflict (kind, unit_id) do update set state = 'incoming', moved_to = null, job_id = $3, excluded_keys = $4, check_undo = $5::jsonb, updated_at = clock_timestamp()
     where write_fences.state in ('moved', 'incoming', 'open')
   returning state`;

/** A target's fence row before a move's unchecked `incoming` row replaced it (`check_undo.prior`). */
const PriorFenceSchema = z.object({
  state: z.enum(['open', 'fenced', 'moved', 'incoming']),
  moved_to: z.string().nullable(),
  map_version: z.string().regex(/^-?\d+$/, 'map_version must be an integer written as text'),
  job_id: z.string().regex(/^\d+$/, 'job_id must be an integer written as text').nullable(),
  excluded_keys: z.array(z.string()),
});
type PriorFence = z.infer<typeof PriorFenceSchema>;
const CheckUndoSchema = z.object({ prior: PriorFenceSchema.nullable() });
type CheckUndo = z.infer<typeof CheckUndoSchema>;

/** A target row's `check_undo`, validated: a record the mover cannot read stops the run, naming the row, rather than be put back wrong. */
function parseCheckUndo(value: unknown, job: Pick<MoveJob, 'kind' | 'unitId' | 'to'>): CheckUndo {
  const parsed = CheckUndoSchema.safeParse(value);
  if (parsed.success) return parsed.data;
  const what = parsed.error.issues.map((i) => `${i.path.join('.') || '(record)'}: ${i.message}`).join('; ');
  throw new MoveError(`the fence row of ${job.kind} ${job.unitId} on ${job.to} records what it replaced (write_fences.check_undo) in a form this mover cannot read (${what}): it is left as it is, the unit's writes there refused; correct or clear it by hand`);
}
/** An error's message, for a message that names it. */
function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
/** A shard refused a write of this run: a later run of the job holds its permit there (shard migration 010). */
const PERMIT_REFUSED = 'CAF04';
const QUERY_CANCELED = '57014';
/**
 * The ways a mover's transaction may set `session_replication_role = replica` (see
 * `PgMovePort.bulkBegin`): `set`, its login may set it; `definer`, through shard migration 016's
 * function; null, neither.
 */
type ReplicaRoleBy = 'set' | 'definer' | null;
const REPLICA_ROLE_SQL = { set: 'set local session_replication_role = replica', definer: 'select mover_replica_role()' } as const;

/** Step timestamp column recorded when a job enters a state. */
const ENTERED_AT: Partial<Record<string, string>> = {
  copying: 'copying_at',
  catching_up: 'catching_up_at',
  cutover: 'cutover_at',
  verifying: 'verifying_at',
  cleaning_up: 'cleaning_up_at',
  done: 'finished_at',
};

/** One lane of the copy: ids from `from` (inclusive) to `to` (exclusive); null is no bound. */
interface LaneBounds {
  readonly from: string | null;
  readonly to: string | null;
}

/**
 * What the catalog says of a move's unit: `owner` and `version` are the slot map's, or the key's
 * directory entry (`null`, version 0, without one); `routesTo` is the shard writers are sent to,
 * which for a key without an entry is its slot's owner in the map (hash routing).
 */
interface OwnerRead {
  readonly owner: string | null;
  readonly version: number;
  readonly by: string | null;
  readonly routesTo: string | null;
}

/**
 * Taken by a transaction that publishes a directory key's owner on the strength of where the key
 * routes by hash (no entry: its slot's owner), before it reads that owner. SHARE conflicts with
 * the ROW EXCLUSIVE lock of every insert into `catalog.slot_maps` (a publication, by
 * `SlotMapStore.publish` or by hand): one in flight commits before the read, which then sees it
 * (at READ COMMITTED each statement reads anew), and a later one waits for the transaction's end.
 * Routers' reads (ACCESS SHARE) do not wait, nor do other such transactions (SHARE is
 * self-compatible). Never taken by a transaction that publishes a map itself: two of them would
 * each wait on the other's SHARE lock to insert (a deadlock). Taken through a function of the
 * table's owner (sharding migration 008): SHARE mode needs UPDATE, DELETE or TRUNCATE on the
 * table, which the control plane's login (`ca_dms_control`, SELECT and INSERT) must not have.
 */
export const LOCK_SLOT_MAPS_FOR_HASH_ROUTE = 'select catalog.lock_slot_maps_for_hash_route()';

/**
 * Locks the `catalog.slot_pin_locks` row of a directory move's key's slot FOR SHARE with `client`,
 * the transaction that may pin the key on the strength of its route by hash (the source's
 * preparation pinning it to the source, a rollback pinning it back there, the flip or a lost flip's
 * recovery publishing the target over no entry), held to its end (sharding migration 017), as a
 * pin made by hand locks it (DirectoryStore). A map published by hand reads its slots' pinned keys
 * once, under their rows FOR UPDATE, to keep them out of the old owner's `moved` row and mark them
 * `moved` to their pins on the new owner (OwnerChangeFences.markPinnedKeys); a move's pins are
 * written with `rowsLeftOn` (the job's word), past the store's lock, so one written after that read
 * and before the map's commit was in neither's sight: the map committed with no row of the key on
 * the slot's new owner, and a router whose directory cache lacked the pin sent the key's writes
 * there by hash, acknowledged where no reader looks (owner-change-dirmove-slot-race.test.ts; issue
 * #15, owner-change-torture-review.test.ts seed -1238155181). Now a publication holding the row is
 * waited for, and the slot's owner read after it (under the map's SHARE lock) is its map's: a key
 * routed by hash to a third shard is refused as any (MoveOwnerConflict); one that locks the row
 * after this waits for the pin's commit and reads it. Waited for at most `waitMs`
 * ({@link SLOT_PIN_LOCK_WAIT_MS} outside the fence; the flip passes what is left of its fence
 * budget, see {@link PgMovePort} `flipLocked`), then refused ({@link MoveSlotLockBusy}, a
 * {@link MoveError}: nothing written, the transaction rolls back; the move tries again on its next
 * run, or the flip gives its fence up as over budget and tries again at its next fence attempt).
 * The transaction must be READ COMMITTED (the read after the lock must see what the publication
 * committed): refused otherwise, naming its level.
 */
async function lockSlotOfPinOverNoEntry(job: Pick<MoveJob, 'kind' | 'unitId' | 'slot'>, client: Queryable, waitMs: number, again: string): Promise<void> {
  const refused = `cannot pin key ${job.unitId} for its move`;
  const refusal = await lockSlotsForPins(client, [job.slot], 'share', waitMs, refused);
  if (refusal === null) return;
  throw new MoveSlotLockBusy(
    `${refused}: ${slotLockRefused(refusal, {
      other: `another change of its slot ${job.slot} (a slot map published by hand, or a slot move being planned)`,
      waitMs: Math.max(1, Math.round(waitMs)),
      rule: "a move may not pin its key unseen by a change of its slot's pinned keys",
      nothing: 'written',
      again,
    })}`,
    refusal.kind,
  );
}

/**
 * A directory move's pin over no entry refused by {@link lockSlotOfPinOverNoEntry}: `refusal`
 * says why (another change of the slot held its lock past the wait, a deadlock, the transaction's
 * isolation level). The flip answers a wait past its bound as over budget (see `flipLocked`).
 */
export class MoveSlotLockBusy extends MoveError {
  override readonly name = 'MoveSlotLockBusy';
  constructor(
    message: string,
    readonly refusal: SlotLockRefusal['kind'],
  ) {
    super(message);
  }
}

/**
 * How {@link ownerRead} locks a key without an entry: `true` for the lock's own bound
 * ({@link SLOT_PIN_LOCK_WAIT_MS}), or the flip's bound and words (`waitMs`, what is left of its
 * fence budget; `again`, what the move does after a refusal).
 */
export type HashRouteLock = boolean | { readonly waitMs: number; readonly again: string };

/**
 * Who the catalog names as a move's unit's owner now (see {@link PgMovePort} `currentOwner`): a
 * directory key's entry, else its slot's owner (`routesTo`); a slot's owner in the current map.
 * With `lockHashRoute` (in a transaction, at READ COMMITTED), a key without an entry has its
 * slot's row of `catalog.slot_pin_locks` locked FOR SHARE (see {@link lockSlotOfPinOverNoEntry})
 * and then its slot's owner read under {@link LOCK_SLOT_MAPS_FOR_HASH_ROUTE}: no map can be
 * published between that read and the transaction's end, and none that read the slot's pinned
 * keys before the caller's pin commits unseen by it.
 */
export async function ownerRead(job: Pick<MoveJob, 'kind' | 'unitId' | 'slot'>, directory: MoverDirectory, slotMaps: MoverSlotMaps, client: Queryable, lockHashRoute: HashRouteLock = false): Promise<OwnerRead> {
  if (job.kind === 'directory') {
    const entry = await directory.entry(job.unitId, client);
    if (entry === null && lockHashRoute) {
      // The slot's pin lock first, then the SHARE lock on the map: the order a publication by hand
      // (slot rows FOR UPDATE, then its insert into catalog.slot_maps) and a slot move's plan (its
      // slot FOR UPDATE, then the SHARE lock) take them in; the other way round, this transaction
      // and a publication would each wait for the other's lock (a deadlock).
      const bound = lockHashRoute === true ? { waitMs: SLOT_PIN_LOCK_WAIT_MS, again: 'the move tries again on its next run' } : lockHashRoute;
      await lockSlotOfPinOverNoEntry(job, client, bound.waitMs, bound.again);
      await client.query(LOCK_SLOT_MAPS_FOR_HASH_ROUTE);
    }
    const routesTo = entry?.shardId ?? (await slotMaps.ownerOf(job.slot, client))?.shardId ?? null;
    return { owner: entry?.shardId ?? null, version: entry?.version ?? 0, by: entry?.updatedBy ?? null, routesTo };
  }
  const read = await slotMaps.ownerOf(Number(job.unitId), client);
  const owner = read?.shardId ?? null;
  return { owner, version: read?.version ?? 0, by: null, routesTo: owner };
}

/**
 * Why a move that has not flipped cannot be rolled back without hiding rows: the catalog already
 * routes its unit to the target (an operator pinned the key there, or unpinned it and its slot
 * hashes there; a map someone else published gave the slot there), where the readers find the
 * target's copy. Null when the unit routes elsewhere. `copied` says which step the move is in:
 * true once the target's fence row is the job's own `incoming` row, checked (see
 * {@link targetHoldsCopy}): the rollback would delete the copy there; false before (nothing
 * copied, a directory move's check of its target pending): the rollback would delete nothing
 * there, and the move is still the only way the unit's rows, all on the source, reach the shard
 * its readers are sent to. Unless `held` (see {@link heldOnTarget}) names rows of the key the
 * target took by hash: then they are on both shards and the words say so. Where the move cannot
 * go on to finish on the target either ({@link targetRouteStops}), the words end by sending the
 * operator to decide the key's owner by hand.
 */
export function targetRouteRefusal(job: Pick<MoveJob, 'kind' | 'unitId' | 'slot' | 'from' | 'to' | 'state'>, read: OwnerRead, copied = true, held: readonly string[] = []): string | null {
  const nothingCopied =
    held.length === 0
      ? `the move has copied nothing there yet, and a cancel would leave the ${job.kind === 'directory' ? "key's" : "unit's"} rows, all on ${job.from}, out of its readers' sight`
      : `the move has copied nothing there yet, but ${job.to} already holds rows of it (${held.join(', ')}) that writers sent there, besides its rows on ${job.from}: a cancel would leave those on ${job.from} out of its readers' sight, and the move cannot copy over these`;
  const byHand = targetRouteStops(job, read, copied, held) ? `; the key's owner must be decided by hand${held.length > 0 ? ` (its rows are on ${job.from} and ${job.to})` : ''}${decideByHand(job)}` : '';
  if (read.owner === job.to) return `the catalog names the target ${job.to} as the owner of ${job.kind} ${job.unitId} (version ${read.version}); ${copied ? 'deleting its copy would lose data' : nothingCopied}${byHand}`;
  // An unpinned key routes by hash: to the target, its copy is all its readers would find.
  if (read.routesTo === job.to) return `key ${job.unitId} has no directory entry and routes by hash to the target ${job.to}, its slot ${job.slot}'s owner; ${copied ? 'deleting its copy would hide its rows' : nothingCopied}${byHand}`;
  return null;
}

/**
 * Whether a directory move whose cancel {@link targetRouteRefusal} refuses cannot go on to finish
 * on its target either, so that no refusal may say it does: its target holds rows of the key
 * that writers sent there by hash and nothing is copied (`held`: the move's check of its target,
 * `PgMovePort.checkedIncoming`, stops every run rather than copy over them), or the key is pinned
 * to the target while the move still has to prepare its source (`planned`, `copying`: that step
 * stops every run on a pin to its own target). Either way the key's owner is decided by hand.
 */
export function targetRouteStops(job: Pick<MoveJob, 'kind' | 'to' | 'state'>, read: OwnerRead, copied: boolean, held: readonly string[]): boolean {
  if (job.kind !== 'directory') return false;
  if (!copied && held.length > 0) return true;
  return read.owner === job.to && (job.state === 'planned' || job.state === 'copying');
}

/** `where` clause selecting the unit's rows of a table, with its parameters from `$first`. */
function unitFilterOf(job: UnitRef, table: TableName, first: number, alias = ''): { sql: string; params: unknown[] } {
  const owner = `${alias}${TABLES.find((t) => t.name === table)?.owner ?? 'id'}`;
  if (job.kind === 'slot') {
    // With no excluded key (the usual case) the clause folds away when planned, so that the
    // (slot, id) index answers the copy's page bounds alone, without visiting the rows.
    const excluded = `$${first + 1}::text[]`;
    return { sql: `${alias}slot = $${first} and (pg_catalog.cardinality(${excluded}) = 0 or not (${owner}::text = any(${excluded})))`, params: [Number(job.unitId), job.excludedKeys] };
  }
  // A key's rows are those under the key's own slot (a user's slot is its id's, a document's and
  // a key record's their owner's): a users row with the key's id under another slot, and the rows
  // under it, are another unit's (a stray: a restore, a hand-made row), which the move must meet
  // as a collision, never overwrite, and its rollback never delete (section 9).
  return { sql: `${owner} = $${first}::uuid and ${alias}slot = $${first + 1}::integer`, params: [job.unitId, keySlot(job.unitId)] };
}

/**
 * How many of the slot's rows the read of {@link setAsideKeysSql} reads from the slot's side for
 * the cost of one of the shard's `directory` rows read from the fences' side: a row of the slot,
 * hashed against the fences, costs 0.2-0.75 us; a fence row, three owner-index probes, 5-9 us
 * (bench/set-aside-keys.ts, h165, on a loaded 2-core machine).
 */
const SET_ASIDE_ROWS_PER_FENCE = 32;

/**
 * The most `directory` rows {@link setAsideKeysSql} counts: from as many, the fences' side costs as
 * much as 64,000 rows of the slot or more, and the slot's side, whose cost grows a row of the slot
 * at a time, is read (counting them all took 20-40 ms at 100,000 rows).
 */
const SET_ASIDE_FENCES_COUNTED = 2000;

/**
 * The statement of {@link keysFencedByOwnRow} (`$1` the slot, `$2` the keys left out). Its cost was
 * three owner-index probes for every `directory` row of the shard, whatever the slot: 479 ms on the
 * source and 695 ms on the target with 100,000 `moved` rows (the leftovers of directory moves away,
 * which accumulate), for a slot of 12,000 rows (issue #15, h165). Read from the slot's side (its rows
 * by the (slot, id) indexes, each owner looked up in the fences' primary key) it is a row of the slot
 * each: 21 ms there, but 243 ms for a slot of 240,000 rows where the shard has few such rows. So it
 * reads from the cheaper side: the shard's `directory` rows counted up to
 * {@link SET_ASIDE_FENCES_COUNTED}, and the slot's rows up to {@link SET_ASIDE_ROWS_PER_FENCE} of
 * them a fence row (the (slot, id) indexes alone), the fences' side is read only where there are
 * fewer fence rows than that and the slot has more rows (both counts bounded, a few ms). Both
 * forms are in the statement, each under a condition of the two counts alone (a one-time filter:
 * the other is never run), so the choice is made with figures of this moment, in one round trip.
 * Both answer the same keys (bench/set-aside-keys.ts checks it): the canonical UUIDs (a tenant name
 * owns no row) with such a row, less those left out, owning a row under the slot.
 */
export function setAsideKeysSql(states: 'not open' | 'any'): string {
  const state = states === 'not open' ? " and state <> 'open'" : '';
  return `with nf as materialized (select count(*) as n from (select 1 from write_fences where kind = 'directory'${state} limit ${SET_ASIDE_FENCES_COUNTED}) f),
          ns as materialized (select count(*) as n from (select 1 from users where slot = $1::int
                                                           union all select 1 from documents where slot = $1::int
                                                           union all select 1 from document_keys where slot = $1::int
                                                           limit (select ${SET_ASIDE_ROWS_PER_FENCE} * n + 1 from nf)) s),
          side as materialized (select nf.n < ${SET_ASIDE_FENCES_COUNTED} and ns.n > ${SET_ASIDE_ROWS_PER_FENCE} * nf.n as fences from nf, ns),
          -- Materialized: only keys in the canonical UUID form (a tenant name owns no row) are cast.
          f as materialized (select unit_id as key from write_fences
                              where kind = 'directory'${state} and unit_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' and not (unit_id = any($2::text[]))),
          k as materialized (select key, key::uuid as id from f),
          -- Materialized, so that its plan (parallel, on a large slot) starts no worker unless read.
          o as materialized (select w.unit_id as key
                               from (select id as owner from users where slot = $1::int
                                     union all select owner_id from documents where slot = $1::int
                                     union all select owner_id from document_keys where slot = $1::int) o
                               join write_fences w on w.kind = 'directory' and w.unit_id = o.owner::text
                              where true${state.replace('state', 'w.state')} and not (w.unit_id = any($2::text[])))
     select k.key from k
      where (select fences from side)
        and (exists (select 1 from users u where u.id = k.id and u.slot = $1::int)
             or exists (select 1 from documents d where d.owner_id = k.id and d.slot = $1::int)
             or exists (select 1 from document_keys r where r.owner_id = k.id and r.slot = $1::int))
     union
     select o.key from o where not (select fences from side)
     order by 1`;
}

/**
 * The keys with a `directory` row of their own on a shard (`states`: in another state than `open`,
 * or in any) owning rows under `slot` there, less `excluded` (see PgMovePort.setAside).
 */
async function keysFencedByOwnRow(pool: Queryable, slot: number, excluded: readonly string[], states: 'not open' | 'any'): Promise<string[]> {
  const { rows } = await pool.query<{ key: string }>(setAsideKeysSql(states), [slot, excluded]);
  return rows.map((r) => r.key);
}

/**
 * A key's rows on a shard under another slot than its id's `slot` (`under`: any, or only the slots
 * moving in there, their `slot` row `incoming`), as `<n> in <table> (slot <s>, ...)` for each
 * sharded table holding some: a restore, a hand-made row, a document written with a wrong slot
 * before shard migration 015, or a slot move's copy of such a row. A move of the key carries its
 * rows under its own slot only (docs/sharding-spec.md section 9): its plan refuses such rows on its
 * source (mover.ts checkKeySlot), and its run on its source, and on its target under slots moving
 * in there ({@link PgMovePort.prepareSource}). One definition for both.
 */
export async function keyRowsUnderOtherSlots(pool: Queryable, key: string, slot: number, under: 'any slot' | 'incoming slots' = 'any slot'): Promise<string[]> {
  const incoming = under === 'incoming slots' ? ` where s::text in (select unit_id from write_fences where kind = 'slot' and state = 'incoming')` : '';
  const { rows } = await pool.query<{ t: string; n: number; slots: number[] }>(
    `select t, count(*)::int as n, array_agg(distinct s order by s) as slots from (
       select 'users' as t, slot as s from users where id = $1::uuid and slot <> $2::integer
       union all select 'documents', slot from documents where owner_id = $1::uuid and slot <> $2::integer
       union all select 'document_keys', slot from document_keys where owner_id = $1::uuid and slot <> $2::integer) r${incoming}
     group by t order by t desc`,
    [key, slot],
  );
  return rows.map((r) => `${r.n} in ${r.t} (slot ${r.slots.slice(0, 5).join(', ')})`);
}

/**
 * A directory key's rows on a move's target where the move copied nothing there (see
 * {@link targetHoldsCopy}), as `<n> in <table>` for each sharded table holding some: writes sent
 * there by hash, which the move's check of its target (`PgMovePort.checkedIncoming`) stops at
 * for as long as they are there. Empty for a slot move (its target is not checked).
 */
export async function heldOnTarget(pool: Queryable, job: UnitRef): Promise<string[]> {
  if (job.kind !== 'directory') return [];
  const held: string[] = [];
  for (const { name: table } of TABLES) {
    const unit = unitFilterOf(job, table, 1);
    const { rows } = await pool.query<{ n: number }>(`select count(*)::int as n from ${table} where ${unit.sql}`, unit.params);
    if ((rows[0]?.n ?? 0) > 0) held.push(`${rows[0]?.n} in ${table}`);
  }
  return held;
}

/** A unit's fence row on a move's target, as {@link targetHoldsCopy} reads it. */
export interface TargetFenceRow {
  readonly state: string;
  readonly job_id: string | null;
  readonly unchecked: boolean;
}

/**
 * Whether the target may hold a copy of this move's, by its fence row there (see "What a rollback
 * deletes on the target", docs/sharding-spec.md section 9): the job's own row, but for an
 * `incoming` row whose check is pending (a directory move's, see `PgMovePort.checkedIncoming`),
 * under which nothing was copied. No row, or another job's or none's: nothing of this move.
 */
export function targetHoldsCopy(row: TargetFenceRow | undefined, job: Pick<MoveJob, 'id'>): boolean {
  if (row === undefined || row.job_id === null || Number(row.job_id) !== job.id) return false;
  return !(row.state === 'incoming' && row.unchecked);
}

/** The unit's fence row on the move's target, read for {@link targetHoldsCopy}. */
export async function targetFenceRow(pool: Queryable, job: Pick<MoveJob, 'kind' | 'unitId'>): Promise<TargetFenceRow | undefined> {
  const { rows } = await pool.query<TargetFenceRow>('select state, job_id::text, check_undo is not null as unchecked from write_fences where kind = $1 and unit_id = $2', [job.kind, job.unitId]);
  return rows[0];
}

/**
 * Whether the shard the catalog sends a move's unit to is neither of its sides: a third shard (an
 * operator's pin, a map someone else published, or a directory key unpinned whose slot hashes to
 * another shard). A key with no entry whose slot the source owns is the source's (the move
 * publishes its target over no entry just as well); one whose slot another shard owns took its
 * writes there since the pin was deleted, and publishing the target would hide them.
 */
function isForeignOwner(job: MoveJob, read: Pick<OwnerRead, 'routesTo'>): boolean {
  return read.routesTo !== job.from && read.routesTo !== job.to;
}

/** The error of a move that stops because the catalog names a third shard as its unit's owner (see {@link isForeignOwner}). */
/**
 * Where a message says a unit's owner "must be decided by hand" (or names the owner to publish):
 * the recovery that decides it, with the unit (and `shard`, when the message knows it) filled in,
 * and the spec's paragraph on it (docs/sharding-spec.md section 9). A pin or a map written any
 * other way is refused for a moved unit (CAF07, CAF08).
 */
function decideByHand(job: Pick<MoveJob, 'kind' | 'unitId'> & Partial<Pick<MoveJob, 'id'>>, shard?: string): string {
  // A slot's job is unfinished and has not flipped where this is said: the catalog refuses a map by
  // hand for its slot unless the transaction names it (CAF08, sharding migration 013).
  return job.kind === 'directory'
    ? `: pin it with select * from catalog.repin_by_hand('${job.unitId}', ${shard === undefined ? '<the shard holding its rows>' : `'${shard}'`}, <reason>) (DirectoryStore.repinByHand; docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned")`
    : `: publish a map giving slot ${job.unitId} to ${shard ?? 'the shard holding its rows'} in a transaction that names this unfinished move first: begin; set local ca_dms.override_moves = '${job.id ?? '<the move job id>'}'; select * from catalog.publish_slot_map_by_hand(<next version>, <assignments>, <reason>); commit (SlotMapStore.publishByHand with that transaction's client; docs/sharding-spec.md section 9, "A moved slot keeps its owner")`;
}

/** A source's fence row of its unit that says it does not own the unit, as {@link sourceDisowns} words it. */
export interface DisowningRow {
  readonly state: string;
  readonly moved_to: string | null;
  readonly map_version: string | null;
  readonly job_id: string | null;
}

/**
 * Why a move cannot take its unit from `from`, whose own fence row of the unit says `moved` (or
 * `incoming`) though the catalog names `from` as the owner, and the way out: the unit's owner
 * decided by hand where its rows are. Said by the plan (a slot's row, `checkSourceOwnsSlot`) and by
 * the run that meets such a row made after the plan (prepareSource): both name the row, whose it
 * is, and the two decisions an operator has, by where the rows are (docs/sharding-spec.md section
 * 9, "A move is not planned from a shard whose row says the unit moved away").
 */
export function sourceDisowns(kind: 'slot' | 'directory', unitId: string, from: string, row: DisowningRow): string {
  const unit = `${kind === 'slot' ? 'slot' : 'key'} ${unitId}`;
  const whose = row.job_id === null ? "a hand change's (job_id null: a change in a caller's transaction rolled back, or one that died)" : `move job #${row.job_id}'s`;
  const says = `${row.state}${row.moved_to === null ? '' : ` to ${row.moved_to}`} (version ${row.map_version ?? '?'}), ${whose}`;
  const there = row.moved_to ?? '<the shard holding its rows>';
  const owner =
    kind === 'slot'
      ? `publish a map giving slot ${unitId} to ${there} (SlotMapStore.publishByHand given the shards' pools, which counts and fences ${from}; or select * from catalog.publish_slot_map_by_hand(<next version>, <assignments>, '<reason>'))`
      : `select * from catalog.repin_by_hand('${unitId}', '${there}', '<reason>')`;
  const unitSql = `kind = '${kind}' and unit_id = '${unitId}' and state = '${row.state}'`;
  return `${from}'s fence row of ${unit} says ${says}: ${from} does not own it, though the catalog names it (the catalog and the shard disagree), and refuses every write and read of it there (${row.state === 'moved' ? 'CAF02' : 'CAF01'}). Decide its owner by hand, by where its rows are: on ${there} (after a finished move's row: they moved there), ${owner}; on no shard (a hand change's row, over a unit it gave away empty), ca-dms-scaling shards fences --settle, which reopens the row only where neither shard holds rows of it; on ${from} (the row written past the stores over rows that never left), delete it there: delete from write_fences where ${unitSql}. Then move it from its owner if wanted (docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away")`;
}

/**
 * Why a directory move cannot take its key from `from`, which has no fence row of the key while
 * its row of the key's slot, deciding for the key there, says `moved` (or `incoming`) and does not
 * keep the key out, though the catalog sends the key to `from` (its pin): said by the run that meets
 * such a row made after the plan (prepareSource; the plan's own words are mover.ts
 * checkSourceOwnsKey's), with the ways out by where the key's rows are.
 */
export function keyFollowsDisowningSlot(key: string, slot: number, from: string, row: DisowningRow): string {
  const whose = row.job_id === null ? "a hand change's (job_id null: a change in a caller's transaction rolled back, or one that died)" : `move job #${row.job_id}'s`;
  const there = row.moved_to ?? '<the shard holding its rows>';
  return `${from} has no fence row of key ${key}, and its row of the key's slot ${slot}, which decides for the key there, says ${row.state}${row.moved_to === null ? '' : ` to ${row.moved_to}`} (version ${row.map_version ?? '?'}, ${whose}): ${from} refuses the key's every write and read (${row.state === 'moved' ? 'CAF02' : 'CAF01'}) though the catalog sends the key there (its pin), and a move from ${from} would reopen the key there and copy ${from}'s rows of it, maybe none, over those on ${row.moved_to ?? 'the shard holding them'}. Nothing of the key was reopened on ${from}. Decide the key's owner by hand, by where its rows are: on ${there} (the slot's rows went there), select catalog.repin_by_hand('${key}', '${there}', '<reason>'); on ${from} after all, give the key a row of its own there, which decides for it over its slot's: insert into write_fences (kind, unit_id) values ('directory', '${key}'); then move it if wanted (docs/sharding-spec.md section 9, "A move is not planned from a shard whose row says the unit moved away")`;
}

function foreignOwnerMessage(job: MoveJob, read: OwnerRead): string {
  const change =
    job.kind === 'directory'
      ? read.owner === null
        ? `key ${job.unitId} was unpinned (it routes by hash to ${read.routesTo ?? 'no shard'}, its slot ${job.slot}'s owner)`
        : `key ${job.unitId} was pinned to ${read.owner} (version ${read.version}${read.by === null ? '' : `, by ${read.by}`})`
      : `slot ${job.unitId} was given to ${read.owner ?? 'nobody'} (slot map version ${read.version})`;
  return `${change} while this move ran: that shard is neither the move's source ${job.from} nor its target ${job.to}, so the move cannot publish its target without overwriting the ${job.kind === 'slot' ? 'map' : read.owner === null ? 'hash route' : 'pin'}; it stopped and rolled back its copy on ${job.to}; the unit's rows are on ${job.from}`;
}

/**
 * Per shard pool (the mover's own, never a bounded wrapper: see `clusterIdReadable` in the port),
 * when its login was last refused the source's history (`timeline_history()`: 42501 where the
 * grant of shard migration 031 is missing or revoked, 42883 where migration 027 is not there), on
 * the pool's refusal clock ({@link refusalRecheck}): not read again until that interval has
 * passed. Read again at every move, the refused read cost a failed statement (an ERROR in the
 * source's log) and, where the login may read the cluster id, the id's question sent again (the
 * read's refusal forgot its answer): two statements a move, outside the fence, for a history
 * that was never had (test/integration/sharding/cluster-id-revoked-move.test.ts, h154). Kept,
 * the move records no history, as a refused read records none: nothing known, reads answer as
 * before shard migration 014; a grant given later is read at the first move past the interval.
 */
const historyRefusedAt = new WeakMap<pg.Pool, number>();

/**
 * The id ranges of `n` copy lanes: equal shares of the UUID space, cut on its first 32 bits
 * (row ids are random UUIDs, so each lane holds about as many rows).
 *
 * @example
 * ```ts
 * laneBounds(2); // [{ from: null, to: '80000000-0000-0000-0000-000000000000' }, { from: '80000000-0000-0000-0000-000000000000', to: null }]
 * ```
 */
export function laneBounds(n: number): LaneBounds[] {
  const cut = (i: number): string => `${Math.floor((i * 2 ** 32) / n).toString(16).padStart(8, '0')}-0000-0000-0000-000000000000`;
  return Array.from({ length: n }, (_, i) => ({ from: i === 0 ? null : cut(i), to: i === n - 1 ? null : cut(i + 1) }));
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export class PgMovePort implements MovePort<MoveJob> {
  private readonly catalog: MoverCatalog;
  private readonly settings: MoveSettings;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly now: () => number;
  private readonly columns = new Map<TableName, readonly string[]>();
  /** Per shard: how the mover's login sets `session_replication_role`, if it may (see {@link bulkBegin}). */
  private readonly replicaRole = new Map<string, Promise<ReplicaRoleBy>>();
  private pre: PreVerified | null = null;
  /** The job whose destination this run has named on the source's capture row (see {@link nameDestination}). */
  private hinted: number | null = null;
  /** By job, the keys a slot move leaves on its source ({@link setAside}). */
  private readonly keysSetAside = new Map<number, readonly string[]>();
  /** The condition every write of the job row carries: the run's lease (its epoch and its holder) is still the job's. */
  private readonly mine: string;
  /** The run's lease epoch, which its writes on the shards carry too (see {@link write}). */
  private readonly epoch: number;
  /** When the fence this run holds (or is taking) must be given up: the fence budget, from the attempt's start. */
  private fenceDeadline: number | null = null;
  /** Set while this run gives a fence up (reopens or releases it): its writes get the fence's slack ({@link MoveSettings.fenceSlackMs}). */
  private releasingFence = false;
  /**
   * Set once this run has sent a statement that publishes a new owner, until that flip's
   * transaction is known not to have committed (see {@link mayHavePublished}).
   */
  private publishing = false;

  constructor(private readonly options: PgMovePortOptions) {
    this.catalog = options.catalog;
    this.settings = options.settings;
    this.epoch = Math.trunc(options.leaseEpoch);
    // Never null: a holder cleared (a release, endLeasesOfDeadRuns) made `lease_holder = ...` null,
    // which the checks between steps (`mine === false`) took for a lease still held.
    this.mine = `coalesce(lease_epoch = ${this.epoch} and lease_holder = ${pg.escapeLiteral(options.leaseHolder)}, false)`;
    this.sleep = options.sleep ?? defaultSleep;
    this.now = options.now ?? (() => performance.now());
    // While the fence is held, the catalog's statements are bounded as the shards' are (see
    // droppingPool): a silent catalog connection would hold writes to the unit until the client's
    // query timeout, statement after statement, and then the fence until the next run.
    this.catalog.boundBy(() => (this.fenceDeadline === null ? undefined : this.budgetLeft() + this.slackMs));
  }

  mayHavePublished(): boolean {
    return this.publishing;
  }

  /**
   * Sent again on a serialization failure, as are {@link assertLease}'s and {@link checkCancel}'s
   * reads: each is a statement of its own at the catalog's default level, and at SERIALIZABLE
   * serializable snapshot isolation ends even a read with 40001 ("read/write dependencies among
   * transactions") where a transaction that changed the row committed after the read's snapshot
   * with a conflict of its own; the step then failed with it (moves-ssi-reads.test.ts). Sent again,
   * the read's new snapshot holds that commit. Inside the port's READ COMMITTED transactions
   * (`withLockedJob`), where `assertLease` is also called, no read fails so, and nothing is resent.
   */
  async reload(job: MoveJob): Promise<MoveJob> {
    const { rows } = await retryingSerializationFailures(() => this.catalog.query<JobRow>('select * from catalog.move_jobs where id = $1', [job.id]));
    if (!rows[0]) throw new MoveError(`move job #${job.id} has disappeared from the catalog`);
    return toJob(rows[0]);
  }

  async transition(job: MoveJob, name: MoveTransitionName, note?: string): Promise<MoveJob> {
    const { from, to } = MOVE_TRANSITIONS[name];
    if (job.state !== from) throw new MoveError(`move job #${job.id} is in ${job.state}; transition ${name} needs ${from}`);
    assertTransition(from, to, job.flipStarted);
    const col = ENTERED_AT[to];
    const stamp = col ? `, ${col} = coalesce(${col}, clock_timestamp())` : '';
    const extra = name === 'fence_timed_out' || name === 'verify_timed_out' ? ', fence_timeouts = fence_timeouts + 1, fenced_at = null' : '';
    // Under the fence (`drained`), held to its deadline: see heldToFence. Cancelled there, it
    // recorded nothing (a COMMIT cancelled past its commit record only warns), and the driver
    // gives the fence up.
    // A statement of its own (as recordError's and updateJobRow's outside the run's transactions),
    // at the login's or the database's default_transaction_isolation: one that waited for a cancel
    // request's update of the job row (or another run's claim, its lease lapsed) failed at
    // REPEATABLE READ with 40001 once that committed (issue #15), and the run with it, the
    // cancellation left to the next run (moves-catalog-isolation.test.ts). Sent again, it judges the
    // row as READ COMMITTED does: the cancel request kept (the run then rolls back), another
    // run's claim found (this one's lease lost). Not a READ COMMITTED transaction of its own: two
    // more round trips for every write of the job, the fence's among them.
    const fenced = this.fenceDeadline !== null;
    return this.heldToFence(async () => {
      const { rows } = await retryingSerializationFailures(() =>
        this.catalog.query<JobRow>(
          // A transition clears the last error, except the clean-up's note on the rows it kept, which
          // the finished job keeps (see cleanUp).
          `update catalog.move_jobs set state = $2, error = ${name === 'cleaned' ? 'coalesce($3, error)' : '$3'}, updated_at = now()${stamp}${extra} where id = $1 and state = $4 and ${this.mine} returning *`,
          [job.id, to, note ?? null, from],
        ),
      );
      if (!rows[0]) {
        await this.assertLease(job);
        throw new MoveError(`move job #${job.id} was changed by someone else while in ${from}`);
      }
      return toJob(rows[0]);
    }).catch((err: unknown) => {
      if (!fenced || (err as { code?: string }).code !== QUERY_CANCELED) throw err;
      throw new MoveFenceBudgetSpent(
        `move job #${job.id}: the catalog did not record the transition ${name} (${from} to ${to}) within the fence budget (${this.settings.fenceBudgetMs} ms); it was cancelled and recorded nothing`,
        { cause: err },
      );
    });
  }

  /**
   * Runs `fn`, catalog statements of this run under the fence before its flip (the fence's
   * `fenced_at`, the final catch-up's `changes_applied`, the `drained` transition, the
   * verification's summary), held to the fence deadline on the client side as the flip is: at the
   * deadline the statement running on the run's catalog connection is cancelled. The run's catalog
   * bound (the budget and {@link FENCED_STATEMENT_SLACK_MS}) is for a catalog that does not answer;
   * one that answers slowly held the fence to it: a lock on the job table (another session's, a
   * migration's) held the `drained` transition, and a COMMIT waiting for a synchronous standby
   * that is away (no server timeout bounds it) held it too, 6.0 s for a 1 s budget. Cancelled, a
   * lock wait fails (57014) and the caller gives the fence up; a standby wait ends with the
   * statement committed on the catalog (a warning), and the next step finds the budget spent.
   * Armed before the run's turn on the connection: a lease renewal queued before it and waiting on
   * the same lock is cancelled too (it fails harmlessly; the lease lasts its TTL). Once a cancel
   * was sent, the next statement is sent only after it was passed on (see ClientDeadline.settled),
   * and after a rollback: the cancel's second signal can fail the rollback of a transaction of
   * `fn` (the rollback's decision), which would leave it open and failed under the run's next
   * statements (outside a transaction the rollback only warns). `atLeastMs`: the least time `fn`
   * is given, the budget spent or not. Outside the fence: `fn` as it is.
   */
  private async heldToFence<T>(fn: () => Promise<T>, atLeastMs = 0): Promise<T> {
    if (this.fenceDeadline === null) return fn();
    // The connection itself is the run's catalog bound's to close (see the constructor).
    const guard = holdToDeadline(this.catalog.client, Date.now() + Math.max(atLeastMs, this.budgetLeft()), { graceMs: this.slackMs + DEADLINE_GRACE_MS });
    try {
      return await this.catalog.use(async () => {
        try {
          return await fn();
        } finally {
          guard.disarm();
          if (guard.cancelSent) {
            await guard.settled();
            await this.catalog.query('rollback').catch(() => undefined);
          }
        }
      });
    } finally {
      guard.disarm();
      await guard.settled();
    }
  }

  async recordError(job: MoveJob, error: string): Promise<void> {
    await retryingSerializationFailures(() => this.catalog.query(`update catalog.move_jobs set error = $2, updated_at = now() where id = $1 and ${this.mine}`, [job.id, error]));
  }

  /**
   * In a transaction writing the unit on the target: the target's fence row, locked FOR SHARE,
   * must still say the unit is moving in for this job. After the flip the mover that took over
   * opens it (waiting for this lock), so a stalled run's late catch-up can never overwrite what
   * writers wrote on the new owner with older rows of the source.
   */
  private async assertIncoming(target: pg.PoolClient, job: MoveJob): Promise<void> {
    const { rows } = await target.query<{ state: string }>('select state from write_fences where kind = $1 and unit_id = $2 and job_id = $3 for share', [job.kind, job.unitId, job.id]);
    if (rows[0]?.state !== 'incoming') throw new MoveError(`${job.kind} ${job.unitId} on ${job.to} is no longer moving in for move job #${job.id} (fence ${rows[0]?.state ?? 'gone'}); this run stops`);
  }

  /** Throws {@link MoveLeaseLostError} when another run has claimed the job since this one did. */
  private async assertLease(job: MoveJob): Promise<void> {
    // Sent again on 40001, see reload.
    const { rows } = await retryingSerializationFailures(() =>
      this.catalog.query<{ mine: boolean; holder: string | null }>(`select ${this.mine} as mine, lease_holder as holder from catalog.move_jobs where id = $1`, [job.id]),
    );
    if (rows[0] && !rows[0].mine) throw new MoveLeaseLostError(`move job #${job.id}: this run's lease was taken over by ${rows[0].holder ?? 'another run'} after it expired; this run stops and changes nothing more`);
  }

  /** One write of the job row, compare-and-set on the run's lease (`where id = $1` and the lease are added). */
  private async updateJob(set: string, params: readonly unknown[], job: MoveJob): Promise<MoveJob> {
    return toJob(await this.updateJobRow(set, params, job));
  }

  /**
   * {@link updateJob}'s row as the catalog returned it (with the columns {@link toJob} leaves out).
   * Sent again on a serialization failure (see {@link PgMovePort.transition}).
   */
  private async updateJobRow(set: string, params: readonly unknown[], job: MoveJob): Promise<JobRow & RecordedSource> {
    const { rows } = await retryingSerializationFailures(() =>
      this.catalog.query<JobRow & RecordedSource>(`update catalog.move_jobs set ${set}, updated_at = now() where id = $1 and ${this.mine} returning *`, [job.id, ...params]),
    );
    if (!rows[0]) {
      await this.assertLease(job);
      throw new MoveError(`move job #${job.id} has disappeared from the catalog`);
    }
    return rows[0];
  }

  /**
   * One shard's permit claim. A claim that waits is waiting for write transactions of a run
   * that has lost its lease (this run holds it now): alive, they would be refused at their next
   * write anyway. Left to end by themselves they may never end: a transaction whose connection
   * went silent (a black-holed path: the server sees no reset) mid-statement, a COPY FROM STDIN
   * whose data stopped coming, is not idle, so no server timeout ends it, and it holds the
   * permit for as long as the server keeps the session. So after {@link STALE_RUN_GRACE_MS} the
   * backends that block the claim (holders of the permit row: that run's transactions only) are
   * terminated from a second connection, which rolls their work back as a crash of that run
   * would. Without a second connection (a pool of one) the claim waits its bound as before.
   */
  private async claimPermit(job: MoveJob, shard: string): Promise<string> {
    const pool = this.pool(shard);
    const client = await pool.connect();
    let broken: Error | undefined;
    try {
      const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid');
      await client.query(`begin; set local lock_timeout = '${PERMIT_CLAIM_WAIT_MS}ms'`);
      const claim = client.query('select move_permit_claim($1::bigint, $2::bigint)', [job.id, this.epoch]);
      const settled = claim.then(
        () => true,
        () => true,
      );
      const waiter = rows[0]?.pid;
      // The earlier run may have several transactions holding the permit row (copy lanes, the
      // source and the target on one shard): the claim waits for them one at a time, so each
      // round ends the one it waits for now, until the claim settles or its own bound ends it.
      const giveUpAt = Date.now() + PERMIT_CLAIM_WAIT_MS;
      while (waiter !== undefined && Date.now() < giveUpAt && !(await Promise.race([settled, delay(STALE_RUN_GRACE_MS).then(() => false)]))) {
        await this.endStaleRun(pool, shard, waiter).catch(() => undefined);
      }
      try {
        await claim;
        // The claim's own stamp (clock_timestamp(), to the microsecond): what tells this database's
        // permit row from another's (see claimPermits).
        const { rows: stamped } = await client.query<{ at: string }>('select updated_at::text as at from move_permits where job_id = $1', [job.id]);
        await client.query('commit');
        return stamped[0]?.at ?? '';
      } catch (err) {
        await client.query('rollback').catch((rollbackError: unknown) => {
          broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
        });
        throw err;
      }
    } finally {
      client.release(broken);
    }
  }

  /**
   * Terminates the backends that block `waiter`'s permit claim on the job's permit row (see
   * {@link claimPermit}): only while the claim waits for a row locker's transaction (a lock of
   * type `transactionid`; the claim's statement touches this job's permit row only), and only
   * sessions of the waiter's own login. A claim that waits for a lock on the table (an operator's
   * `lock table`, a migration's `alter table`, a `vacuum full`) ends nobody: it waits its bound.
   */
  private async endStaleRun(pool: pg.Pool, shard: string, waiter: number): Promise<void> {
    const other = await connectBy(pool, Date.now() + STALE_RUN_GRACE_MS * 4, `${shard}/primary`);
    try {
      await other.query(
        `select pg_terminate_backend(a.pid)
           from pg_catalog.unnest(pg_blocking_pids($1)) as b(pid)
           join pg_stat_activity a on a.pid = b.pid
          where a.usename = (select w.usename from pg_stat_activity w where w.pid = $1)
            and exists (select 1 from pg_locks l where l.pid = $1 and not l.granted and l.locktype = 'transactionid')`,
        [waiter],
      );
    } finally {
      other.release();
    }
  }

  pause(ms: number): Promise<void> {
    return this.sleep(ms);
  }

  /**
   * Claims the job's permit on both shards for this run (shard migration 010): a compare-and-set
   * that refuses an epoch lower than one that claimed it before, and waits for the write
   * transactions in flight of the run it replaces. From then on that run can change nothing on
   * either shard, whatever its own view of its lease. Called once the run holds the lease, before
   * any step.
   */
  async claimPermits(job: MoveJob): Promise<void> {
    const claimed = new Map<string, string>();
    for (const shard of new Set([job.from, job.to])) {
      try {
        // The claim waits for the write transactions of the run it replaces; one left open by a
        // run that hung would make it wait for ever, past this run's deadline, renewing a lease
        // that shows the job busy. So the wait is bounded and the run fails, naming the shard.
        claimed.set(shard, await this.claimPermit(job, shard));
      } catch (err) {
        // Refused the epoch this run has just claimed on the other shard, with that claim's own
        // stamp: both shard ids reach one database (two spellings of one endpoint, say), where
        // every run of the job would be refused so, blamed on a catalog failover, for ever.
        const same = (err as { code?: string }).code === PERMIT_REFUSED ? await this.sameDatabaseAs(job, shard, claimed) : undefined;
        if (same !== undefined) {
          throw new MoveError(
            `move job #${job.id}: ${same} and ${shard}, the move's source and target, reach one database (the permit claimed on ${same} is found on ${shard}); a move between them would copy the unit onto itself. Give each shard its own database in the sharding configuration, then cancel this move`,
            { cause: err },
          );
        }
        if ((err as { code?: string }).code === LOCK_NOT_AVAILABLE) {
          throw new MoveError(
            `move job #${job.id}: an earlier run's write transaction on ${shard} is still open after ${PERMIT_CLAIM_WAIT_MS} ms (see pg_stat_activity for the mover's sessions there); this run changed nothing and the job is tried again at its next run`,
            { cause: err },
          );
        }
        const lost = this.permitLost(err, job, shard);
        if (lost !== err || !isNodeFailure(err)) throw lost;
        // The first a run asks of the shards: a refused or dropped connection said only "connect
        // ECONNREFUSED 127.0.0.1:5432", on the job too, whatever the run was to do (a rollback too).
        throw new MoveError(
          `move job #${job.id}: ${shard}, the move's ${shard === job.from ? 'source' : 'target'}, could not be reached to claim this run's permit (${(err as Error).message}); this run changed nothing, and the job (a rollback too: it writes on both shards) waits until ${shard} answers again`,
          { cause: err },
        );
      }
    }
  }

  /** The shard of `claimed` whose claim stamp `shard`'s permit row of the job carries too, if any. */
  private async sameDatabaseAs(job: MoveJob, shard: string, claimed: ReadonlyMap<string, string>): Promise<string | undefined> {
    if (claimed.size === 0) return undefined;
    const { rows } = await this.pool(shard)
      .query<{ at: string }>('select updated_at::text as at from move_permits where job_id = $1', [job.id])
      .catch(() => ({ rows: [] as Array<{ at: string }> }));
    const at = rows[0]?.at;
    return at === undefined ? undefined : [...claimed].find(([, stamp]) => stamp === at)?.[0];
  }

  /** How this run's write transactions on a shard begin: `begin` (the mover's own by default), then holding the job's permit there. */
  private permitted(job: MoveJob, begin: string = MOVER_WRITE): string {
    return `${withIdleBound(begin, this.settings.idleInTransactionMs)}; select move_permit_hold(${Math.trunc(job.id)}::bigint, ${this.epoch}::bigint)`;
  }

  /**
   * Runs `fn` in a write transaction on `shard` that first holds this run's permit there (FOR
   * SHARE, so a later run's claim waits for it to end). Every write of the mover on a shard goes
   * through here or begins with {@link permitted}: a run whose lease was taken over is refused by
   * the shard itself ({@link MoveLeaseLostError}), even if it stalled after checking its lease.
   */
  private async write<T>(job: MoveJob, shard: string, fn: (client: pg.PoolClient) => Promise<T | RollbackWith<NoInfer<T>>>, begin: string = MOVER_WRITE): Promise<T> {
    try {
      return await inTransaction(this.pool(shard), this.permitted(job, begin), fn);
    } catch (err) {
      throw this.permitLost(err, job, shard);
    }
  }

  /** A shard's refusal of this run's permit as a {@link MoveLeaseLostError}; any other error as it is. */
  private permitLost(err: unknown, job: MoveJob, shard: string): unknown {
    if ((err as { code?: string }).code !== PERMIT_REFUSED) return err;
    return new MoveLeaseLostError(`move job #${job.id}: ${shard} refused this run's write (lease epoch ${this.epoch}): ${(err as Error).message}; this run stops and changes nothing more`, { cause: err });
  }

  private pool(shard: string): pg.Pool {
    const pool = this.options.shards.get(shard);
    if (!pool) throw new MoveError(`shard ${shard} has no primary pool in this mover`);
    if (this.fenceDeadline !== null) return this.droppingPool(pool, shard, this.budgetLeft() + this.slackMs, `the fence budget, ${this.settings.fenceBudgetMs} ms, and ${this.slackMs} ms more`);
    // Giving the fence up writes to the source too: a silent source must not hold that for ever.
    if (this.releasingFence) return this.droppingPool(pool, shard, this.slackMs, `${this.slackMs} ms, the bound of giving the fence up`);
    // Outside the fence the server answers for nothing either: a shard that went silent during the
    // permit claim, the copy or the catch-up (no fence held, the lease renewed by a healthy
    // catalog connection) would hold the job until the function's timeout, or for ever in a run
    // with no abandon time. Past the run's abandon time, or once a checkout has lasted its bound,
    // its connection is closed, the step fails, and the run ends and gives its lease back.
    const abandonIn = this.options.abandonInMs?.();
    const bound = this.options.checkoutBoundMs;
    if (bound !== undefined && (abandonIn === undefined || bound <= abandonIn)) return this.droppingPool(pool, shard, bound, `the mover's shardWaitMs, ${bound} ms`);
    return abandonIn === undefined ? pool : this.droppingPool(pool, shard, abandonIn, "the run's abandon time");
  }

  /**
   * `pool` whose clients (and their checkouts) are bounded to `afterMs` from now: a client still
   * out then has its socket closed. While this run holds the fence the bound is the fence budget
   * and {@link FENCED_STATEMENT_SLACK_MS} more; while it gives the fence up, that slack; otherwise
   * the earlier of the run's abandon time (when given) and `shardWaitMs` from the checkout; `bound`
   * names which, in the error of the statements it fails. The server bounds the fenced statements (`lock_timeout`, `statement_timeout`
   * within the budget) only while it can answer: on a connection that went silent (a network
   * path that drops packets without a reset, the old address of a failed-over instance) a
   * statement would wait for ever, and writes to the unit with it, until the function's timeout.
   * Closed, the statement fails, and the run reopens the fence and stays resumable; on the server
   * the statement is cancelled, and its backend terminated if it does not end by then
   * ({@link abandonConnection}), so that it does not go on holding its locks and the job's permit.
   */
  private droppingPool(pool: pg.Pool, shard: string, afterMs: number, bound: string): pg.Pool {
    const connect = async (): Promise<pg.PoolClient> => {
      // The connection itself is bounded too: a new connection to an address that answers nothing
      // (a failed-over instance's old one) never completes its start-up.
      const deadline = Date.now() + afterMs;
      const client = await connectBy(pool, deadline, `${shard}/primary`);
      // Monotonic: abandonConnection measures the checkout's age with it (a wall-clock step must not count).
      const checkedOut = performance.now();
      const timer = setTimeout(() => {
        // node-postgres fails every query of the client, COPY streams included, with the one error
        // it emits here first (their handlers run on the next tick): named, the job's error says
        // the mover closed it, after how long and by which bound, instead of "Connection terminated
        // unexpectedly", which reads as a shard or network fault and hides a step (the comparison
        // of a large unit, say) that outlasts the bound on every run.
        client.once('error', (err: Error) => {
          err.message = `${shard}/primary: the mover closed this connection, checked out for ${Math.round(performance.now() - checkedOut)} ms, at ${bound} (${err.message})`;
        });
        // Closed, the socket no longer holds the run, but the backend would go on with the
        // statement (a lock wait, a scan), its locks and the job's permit held: it is stopped too.
        void abandonConnection(pool, client, checkedOut, `${shard}/primary`);
      }, Math.max(0, deadline - Date.now()));
      const release = client.release.bind(client);
      client.release = (err?: Error | boolean): void => {
        clearTimeout(timer);
        release(err);
      };
      return client;
    };
    const query = async (...args: unknown[]): Promise<unknown> => {
      const client = await connect();
      let broken: Error | undefined;
      try {
        return await (client.query as (...a: unknown[]) => Promise<unknown>)(...args);
      } catch (err) {
        broken = err as Error;
        throw err;
      } finally {
        client.release(broken);
      }
    };
    return new Proxy(pool, {
      get(target, prop, receiver): unknown {
        if (prop === 'connect') return connect;
        if (prop === 'query') return query;
        return Reflect.get(target, prop, receiver) as unknown;
      },
    });
  }

  /** Between copy pages and catch-up passes (no fence held): a cancellation, or the run's time being up. */
  private async checkCancel(job: MoveJob): Promise<void> {
    if (this.options.timeUp?.()) throw new MovePaused(`move job #${job.id}: this run's time is up in ${job.state}; the next run resumes it there`);
    // Sent again on 40001, see reload.
    const { rows } = await retryingSerializationFailures(() =>
      this.catalog.query<{ c: boolean; mine: boolean }>(`select cancel_requested or rollback_to is not null as c, ${this.mine} as mine from catalog.move_jobs where id = $1`, [job.id]),
    );
    if (rows[0]?.mine === false) await this.assertLease(job);
    if (rows[0]?.c) throw new MoveCancelled();
  }

  /**
   * `where` clause selecting the unit's rows of a table, with its parameters from `$first` (see
   * {@link unitFilterOf}): for a slot move of this port's, less the rows of the keys it sets aside
   * on its source ({@link setAside}), on either side.
   */
  private unitFilter(job: UnitRef, table: TableName, first: number, alias = ''): { sql: string; params: unknown[] } {
    return unitFilterOf(this.withSetAside(job), table, first, alias);
  }

  /** `job` with the keys {@link setAside} found for it on its source added to its excluded keys, for the row filters alone (never written to a fence row or a capture). */
  private withSetAside<J extends UnitRef>(job: J): J {
    const id = (job as Partial<MoveJob>).id;
    const aside = job.kind === 'slot' && id !== undefined ? this.keysSetAside.get(id) : undefined;
    return aside === undefined || aside.length === 0 ? job : { ...job, excludedKeys: [...job.excludedKeys, ...aside] };
  }

  /**
   * The keys whose rows under a slot a move of it leaves on its source (issue #15, h153): keys
   * with a `directory` fence row of their own there in another state than `open` (`moved` by a
   * directory move or a hand change, `incoming` to a move of the key, `fenced` by one), owning
   * rows under the slot (their id's slot another: a restore, a write past the triggers; or a key
   * of the slot not pinned to it any more). That row decides for each of their rows there, under
   * whatever slot (the trigger's rule, shard migration 004; `rowFenceStateSql`): they are not the
   * slot's, and the census takes them off its unit (shard-inspector.ts: `notOwnedRowsSql` for
   * `moved` and `incoming`, its `fk` for `fenced`, h165). The
   * slot's excluded keys (the keys pinned whose id's slot it is) left out rows only of the keys
   * hashing to the slot, so the copy took such a row to the slot's new owner, where the key's
   * fence is open or the key unknown: a stale row served there as current (a user deleted or
   * changed on the shard the key moved to, back with its old data). Left out of the copy, the
   * catch-up, the comparison and the clean-up alike (one filter, {@link unitFilter}), and never
   * deleted: not the move's to delete (the clean-up's note counts them).
   *
   * And the target's keys alike (h158): a key with a `directory` row of its own on the target,
   * in any state, owning rows under the slot there. That row decides for them there too: `open`
   * (a key moved to the target by a directory move, or pinned there), they are the key's, live
   * and served (a reader lists a key's documents by owner, whatever their slot); `moved`, a
   * leftover of the key's own, not the slot's. The copy's delete of the target's unit rows before
   * each COPY, and a rollback's deletion of the copy, took every row under the slot there but
   * those of its excluded keys: a move of the slot to the shard such a key lives on deleted the
   * key's live row (moves-slot-target-own-key.test.ts). The same keys are left out on the source
   * (the two sides compared over the same rows): a row there of such a key, the slot's by the
   * source's fences (the key has no row of its own there), stays with the key's others on the
   * source and the clean-up's note counts it, to be put by hand where the key lives.
   *
   * Read once per job and run, on the first step that reads the unit's rows, and kept for the
   * run (read again by the clean-up alone, added to it: {@link cleanUp}, h169): the comparison
   * under the fence reads no more, and the two sides are always compared
   * over the same rows (one list, read from both, applied to both). A later run reads them
   * again. A key's row changed between two runs moves its rows into or out of the unit with no
   * write the capture logs: one that came in (the key's row opened: a move of the key back) is
   * missing on the target, and the comparison fails the move, which rolls back (nothing lost);
   * one that went out (the key moved away meanwhile) kept its copy on the target, served there
   * as the key's where the key moved to the target, without the writes made on the source since
   * (issue #15, h165). A key's move is what turns such a key's row (a key with rows under another
   * slot than its id's), and its run now refuses such rows on either side as its plan does
   * ({@link checkKeySlotOnBothSides}). Such keys are a handful (a key is fenced on a shard only
   * while moving, or as the leftover of a move), read from the cheaper side ({@link setAsideKeysSql});
   * sent with the unit's excluded keys, an anti-join on a short array.
   */
  private async setAside(job: MoveJob, again = false): Promise<void> {
    if (job.kind !== 'slot') return;
    const before = this.keysSetAside.get(job.id);
    if (before !== undefined && !again) return;
    const slot = Number(job.unitId);
    // Both read before either is kept: a side not answering leaves the list unread, and the next
    // step that needs it reads both again.
    const [source, target] = await Promise.all([keysFencedByOwnRow(this.pool(job.from), slot, job.excludedKeys, 'not open'), keysFencedByOwnRow(this.pool(job.to), slot, job.excludedKeys, 'any')]);
    // Read again (`again`, the clean-up): the keys read before stay set aside too (the
    // verification, which covered only the rows it read, left theirs out).
    this.keysSetAside.set(job.id, [...new Set([...(before ?? []), ...source, ...target])].sort());
  }

  async prepareSource(job: MoveJob): Promise<void> {
    // How the target's `incoming` fence is checked (checkedIncoming): `unpinned` where the key has
    // no entry and routes by hash to the target (see below); `pinned` where it was pinned when read
    // but its slot hashes to the target, so that a deletion of the pin after this read (before the
    // fence is in) sends its writes there by hash just the same; null where neither (a slot move).
    let checkTarget: 'unpinned' | 'pinned' | null = null;
    if (job.kind === 'directory') {
      // Pin the key where it is, so that the flip is a directory change that hash routing
      // cannot override; writers routed by hash land on the same shard meanwhile. Read and set
      // with the job row locked on this run's lease: a run whose lease lapsed (another finished
      // the move meanwhile) must not pin the key back to its old shard.
      await this.forgettingCachedOwner(job, () =>
        this.withLockedJob(job, async () => {
          await this.catalog.use(async (catalog) => {
            let pinned = await this.options.directory.entry(job.unitId, catalog);
            if (pinned === null) {
              // No pin (none yet, or an operator deleted it): the key routes by hash, read under
              // the lock no map publication passes until this transaction ends (see ownerRead).
              // Routed to a third shard (neither side), it has taken its writes there since the
              // pin was deleted, and a pin to the source would hide them: the move cannot go on.
              const read = await ownerRead(job, this.options.directory, this.options.slotMaps, catalog, true);
              if (read.owner === null && isForeignOwner(job, read)) throw new MoveOwnerConflict(foreignOwnerMessage(job, read));
              // Routed to the target (an operator deleted the pin, and the key's slot hashes there):
              // the move publishes the target, and a cancel is refused meanwhile (see
              // targetRouteRefusal). A pin to the source would undo that: a cancel refused before
              // would be accepted after it. So the key stays unpinned; the target's fence
              // (`incoming`, below) refuses the writes sent there by hash until the flip, which
              // still fences the source, catches up what writers holding the old pin wrote there,
              // and publishes the target over no entry. Until that fence exists, though, the target
              // took the key's writes sent there by hash: its insert checks that it holds none
              // (checkedIncoming, below).
              if (read.owner === null && read.routesTo === job.to) {
                checkTarget = 'unpinned';
                return;
              }
            } else if (pinned.shardId === job.from && (await this.options.slotMaps.ownerOf(job.slot, catalog))?.shardId === job.to) {
              // Pinned to the source, its slot the target's: an operator may delete the pin once
              // this transaction ends, before the target's fence is in, and the target takes the
              // key's writes by hash meanwhile: the fence's insert checks for them too.
              checkTarget = 'pinned';
            }
            // Only where there is still no pin: an operator's pin made since the read is theirs to keep.
            if (pinned === null) {
              const pin = await this.pinToSourceOverNoEntry(job, catalog);
              pinned = 'pinned' in pin ? pin.pinned : pin.kept;
            }
            if (pinned?.shardId === job.to) {
              // A cancel would be refused (a rollback never deletes rows where the catalog sends the
              // unit), so the message must not send the operator there.
              throw new MoveError(
                `key ${job.unitId} is now pinned to ${job.to}, this move's own target, by ${pinned.updatedBy} (version ${pinned.version}), before the move could publish it: writes of the key go to ${job.to} now, and this move can neither go on nor be cancelled (a cancel does not delete rows where the directory sends the key); the key's owner must be decided by hand${decideByHand(job)}`,
              );
            }
            if (pinned !== null && pinned.shardId !== job.from) throw new MoveOwnerConflict(foreignOwnerMessage(job, { owner: pinned.shardId, version: pinned.version, by: pinned.updatedBy, routesTo: pinned.shardId }));
            if (pinned === null) throw new MoveError(`key ${job.unitId} is pinned to nothing, not ${job.from}: its pin was deleted as the move made it; the move starts again on its next run`);
          });
        }),
      );
    }
    const source = this.pool(job.from);
    const excluded = job.kind === 'slot' ? job.excludedKeys : [];
    // Updating an existing fence row waits for every writer of the unit in flight (they hold it
    // FOR SHARE) and queues every new one behind it: a fence taken before the move has begun.
    // So the row is updated only when its excluded keys change (a unit moved here earlier
    // already has its row, usually with the same keys), and then within the fence budget; a
    // writer that holds the row longer makes this step fail and the job is resumed later, with
    // writes never held past the budget (the drain below waits for old writers without blocking
    // new ones).
    const bounded = `${MOVER_WRITE}; set local lock_timeout = '${Math.max(1, Math.round(this.settings.fenceBudgetMs))}ms'`;
    await this.write(
      job,
      job.from,
      async (c) => {
        const inserted = await c.query(`insert into write_fences (kind, unit_id, excluded_keys) values ($1, $2, $3) on conflict (kind, unit_id) do nothing`, [job.kind, job.unitId, excluded]);
        if (job.kind === 'directory' && inserted.rowCount === 1 && checkTarget !== 'unpinned') {
          // The source had no row of the key: its slot's row decided for the key there ("Which row
          // applies"), and the `open` row just inserted decides instead. Where that slot row says
          // the slot left (or has not come yet), the key's rows are not the source's to give: the
          // plan refuses such a row (checkSourceOwnsKey), and this one turned so after it, while the
          // catalog still sends the key here (pinned to the source, by this run or an operator).
          // Going on, the move reopened the key on a shard that had disowned it, copied its none of
          // the key over the target's rows and ended `done`: the key's user and documents on no
          // shard, where an operator had copied the slot's rows to the target by hand and the
          // slot's map by hand (which counted the source empty, fenced it and turned its row
          // `moved`) was rolled back in the caller's transaction (h107,
          // moves-slot-source-moved.test.ts). Refused in this transaction, the insert undone. A key
          // routed by hash to the target ('unpinned') is the case that goes on: a map by hand gave
          // the slot, empty of the key's rows, to the move's target, and the target's check
          // (checkedIncoming) stops the move at any row of the key it holds.
          const { rows: slotRows } = await c.query<DisowningRow & { excluded_keys: string[] | null }>(
            `select state, job_id::text, moved_to, map_version::text, excluded_keys from write_fences where kind = 'slot' and unit_id = $1`,
            [String(job.slot)],
          );
          const slotRow = slotRows[0];
          if ((slotRow?.state === 'moved' || slotRow?.state === 'incoming') && !(slotRow.excluded_keys ?? []).includes(job.unitId)) {
            throw new MoveOwnerConflict(
              `move job #${job.id} cannot take key ${job.unitId} from ${job.from}, and was rolled back as failed (nothing of it fenced on ${job.from}; its copy on ${job.to}, if any, deleted): ${keyFollowsDisowningSlot(job.unitId, job.slot, job.from, slotRow)}`,
            );
          }
        }
        const fence = await c.query<DisowningRow>('select state, job_id::text, moved_to, map_version::text from write_fences where kind = $1 and unit_id = $2', [job.kind, job.unitId]);
        const row = fence.rows[0];
        if (row?.state === 'moved' || row?.state === 'incoming') {
          // Changed after the plan (whose check refuses such a row: mover.ts checkSourceOwnsSlot,
          // checkSourceOwnsKey): a hand change in a caller's transaction rolled back, a superuser's
          // SQL. This job's own `moved` row (a lost flip) was taken by recoverLostFlip before any
          // step. The move can never run from here, and this run fenced nothing of its own on the
          // source: a MoveOwnerConflict, which the driver answers by rolling the move back as
          // failed (this job's copy on the target deleted, if any; a rollback that would delete
          // rows where the catalog routes the unit is refused as ever). Thrown as a plain MoveError
          // before (issue #15, moves-slot-source-moved.test.ts), the job stayed `copying`, every
          // run stopping here again, until someone cancelled it, holding every other move of the
          // slot (and, for a slot, every map by hand of it: CAF08), its error naming no way out.
          throw new MoveOwnerConflict(`move job #${job.id} cannot take ${job.kind === 'slot' ? 'slot' : 'key'} ${job.unitId} from ${job.from}, and was rolled back as failed (nothing of it fenced on ${job.from}; its copy on ${job.to}, if any, deleted): ${sourceDisowns(job.kind, job.unitId, job.from, row)}`);
        }
        if (row?.state === 'fenced' && row.job_id === null) {
          // A slot map published by hand fences the old owner with no job (OwnerChangeFences).
          throw new MoveError(
            `${job.kind} ${job.unitId} on ${job.from} is fenced by a hand change of its owner (job_id null): a slot map being published by hand, or one that stopped before putting its fence back; this move does not take it over. Where no change is running and the catalog still names ${job.from}, open it by hand: delete from write_fences where kind = '${job.kind}' and unit_id = '${job.unitId}' and state = 'fenced' and job_id is null (docs/sharding-spec.md section 9, "A map published by hand fences the old owner")`,
          );
        }
        if (row?.state === 'fenced' && Number(row.job_id) !== job.id) throw new MoveError(`${job.kind} ${job.unitId} on ${job.from} is fenced by move job #${row.job_id}`);
        await c.query('update write_fences set excluded_keys = $3 where kind = $1 and unit_id = $2 and not (excluded_keys operator(pg_catalog.=) $3::text[])', [job.kind, job.unitId, excluded]).catch((err: unknown) => {
          if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw err;
          throw new MoveError(`writers of ${job.kind} ${job.unitId} on ${job.from} held its fence row past the fence budget (${this.settings.fenceBudgetMs} ms) while the move set its excluded keys; nothing changed, the move starts again on its next run`, { cause: err });
        });
      },
      bounded,
    );
    // The target does not own the unit until the flip: writes that reach it early are refused.
    if (checkTarget !== null) {
      await this.checkedIncoming(job, excluded, checkTarget, bounded);
    } else {
      const target = await this.write(job, job.to, (c) => c.query(INCOMING_UPSERT, [job.kind, job.unitId, job.id, excluded, null]));
      if (target.rowCount !== 1) throw new MoveError(`${job.kind} ${job.unitId} on ${job.to} is fenced by another move`);
    }
    if (job.kind === 'directory') await this.checkKeySlotOnBothSides(job);
    await this.markExcludedKeys(job);
    await this.write(job, job.from, (c) =>
      c.query(`insert into move_captures (job_id, kind, unit_id, excluded_keys) values ($1, $2, $3, $4) on conflict (job_id) do nothing`, [job.id, job.kind, job.unitId, job.excludedKeys]),
    );
    await this.drain(source, job);
  }

  /**
   * A directory move's run refuses, as its plan does (mover.ts checkKeySlot), a key with rows
   * under another slot than its id's on its source, and on its target under a slot moving in there
   * (its `slot` row `incoming`: a slot move's copy of such a row of the key, the slot's by its
   * source's fences, which moves with it) (issue #15, h165). Checked at each run's preparation once
   * the key's rows on both sides are its own row's (the source's row of the key in, the target's
   * `incoming`), for what came after the plan. A row of the key under a slot the target owns (a
   * restore there) is another unit's, met by the copy as a collision, which stops the move with a
   * lasting error to be resolved (moves-id-collision.test.ts), as before. Gone on, the key's move turned its own row `moved` on the source and `open` on
   * the target, which decide for each of its rows there, under whatever slot: the slot's move,
   * resumed, read its keys set aside again (PgMovePort.setAside) and left the key out of its
   * catch-up, so the copy it had made before kept its earlier data, live as the key's on the
   * target, a write to the row on the source since lost behind the `moved` row
   * (moves-slot-set-aside-between-runs.test.ts). Refused as a MoveOwnerConflict: the move is rolled
   * back as failed (its copy on the target, if any, deleted; its rows' slots are a hand correction
   * first), rather than stay `copying`, stopping here every run, holding every other move of its slot.
   */
  private async checkKeySlotOnBothSides(job: MoveJob): Promise<void> {
    const found = await this.keyRowsUnderOtherSlotsOnBothSides(job);
    if (found === null) return;
    throw new MoveOwnerConflict(`move job #${job.id} cannot move key ${job.unitId}, and was rolled back as failed (its copy on ${job.to}, if any, deleted): ${found}`);
  }

  /** What {@link checkKeySlotOnBothSides} refuses (the reason, from "the key has rows"), or null where the key has no such row. */
  private async keyRowsUnderOtherSlotsOnBothSides(job: MoveJob): Promise<string | null> {
    const [source, target] = await Promise.all([keyRowsUnderOtherSlots(this.pool(job.from), job.unitId, job.slot), keyRowsUnderOtherSlots(this.pool(job.to), job.unitId, job.slot, 'incoming slots')]);
    const found = [...source.map((r) => `${r} on ${job.from}`), ...target.map((r) => `${r} on ${job.to}`)];
    if (found.length === 0) return null;
    return `the key has rows under another slot than its id's slot ${job.slot}: ${found.join(', ')}; a restore, a hand-made row, a document written with a wrong slot before shard migration 015, or a slot move's copy of one, which this move would leave behind while its own rows decided for them (its 'moved' row on ${job.from}, its 'open' one on ${job.to}): correct their slot first (or let the slot's move finish), then plan the move again (docs/sharding-spec.md, section 9)`;
  }

  /**
   * Fences the target `incoming` for a directory move whose key may have taken writes there by hash
   * (a key with no entry that routes by hash to the target, its pin deleted; or one pinned to the
   * source whose slot hashes to the target, its pin deletable until the fence is in), and checks
   * that the target holds no row of the key a writer sent there by hash. Until that fence exists,
   * nothing refused those writes (no row, or `open`, lets them through), and the copy deletes the
   * target's rows of the unit page by page before writing the source's: the move ended done with
   * the acknowledged writes gone, and a pin back to the source (the rule before) hid them the same
   * way. Lock-free, in three steps (issue #15; it used to lock the target's three tables in SHARE
   * mode around the insert, which held every writer of every key on that shard for up to 0.8 x
   * deadlock_timeout):
   *
   * 1. The `incoming` row is committed, with `check_undo` (shard migration 026) recording what it
   *    replaced (no row, or the `open` row's columns): the row says the target is not checked yet.
   *    From then on every statement of a writer of the key there is refused (READ COMMITTED, shard
   *    migration 012: each statement reads the fence anew). An `open` row is updated within the
   *    fence budget, as the source's is (its writers hold it FOR SHARE).
   * 2. The writers older than that commit end ({@link drain}, as on the source: a transaction
   *    that has written, or holds ROW EXCLUSIVE on a sharded table, begun before the row was
   *    committed; prepared ones too). Only they can have written the key without seeing the fence.
   *    Nothing is locked meanwhile: writers of other keys go on, and new ones are not waited for.
   * 3. The key's rows are counted. None: `check_undo` is cleared, and the move goes on. Some: the
   *    row is put back as it was (deleted, or `open` again) and the move stops, naming them; it can
   *    neither copy over them nor publish the target without the source's rows, and a cancel is
   *    refused while the key routes there; the key's owner must be decided by hand.
   *
   * Before 1, where the row will need the check, the transactions prepared on the target that
   * wrote its sharded tables are waited for without a fence ({@link preparedOnTarget}): 2 would
   * wait for each of them with the key's writes refused.
   *
   * A run that cannot finish 2 and 3 (the drain's timeout, its time up, a failed count) puts the
   * row back as it was before it stops ({@link uncheckedStop}), as a count that found rows does:
   * left `incoming` and not checked, it refused every write of the key on the target until a later
   * run finished the check, and a key routed there by hash (all its writes go there) was
   * unwritable meanwhile, for good where a forgotten prepared transaction on the target made every
   * run's drain time out. The next run fences and checks anew. Only a run that dies there (killed,
   * or one that cannot reach the target to put it back) leaves the row `incoming` with
   * `check_undo` set: the key's writes on the target are refused until the job's next run (once
   * its lease has lapsed) does 1 to 3 again, keeping the record of what the row replaced and never
   * taking the row for checked; or until a rollback, or a cancel refused while the key routes to
   * the target, puts it back (see {@link rollback}).
   * A row found `incoming` and checked (a run that fenced it already) or `moved` (the key left this
   * shard and its writes were refused since): what the target holds of the unit is a move's copy
   * or stale, and nothing is checked.
   */
  private async checkedIncoming(job: MoveJob, excluded: readonly string[], why: 'unpinned' | 'pinned', bounded: string): Promise<void> {
    // A fence that will need the check waits, before it is in, for the transactions prepared on
    // the target that wrote its sharded tables: the drain would wait for every one of them with
    // the key's writes there refused, and a forgotten one (its manager gone) made every run hold
    // the key unwritable for the drain's whole timeout. Stopped here, nothing is fenced (a row
    // left by a run that died before its count is put back).
    try {
      await this.preparedOnTarget(job);
    } catch (err) {
      throw await this.uncheckedStop(job, err);
    }
    const fenced = await this.write(
      job,
      job.to,
      async (c) => {
        // Only movers write the row, one run of the job at a time (its permit).
        const { rows } = await c.query<PriorFence & { check_undo: unknown }>(
          `select state, moved_to, map_version::text as map_version, job_id::text as job_id, excluded_keys, check_undo from write_fences where kind = $1 and unit_id = $2 for update`,
          [job.kind, job.unitId],
        );
        const prior = rows[0];
        const checked = prior?.state === 'moved' || (prior?.state === 'incoming' && prior.check_undo === null);
        // A run that stopped before its count left the record of what its row replaced: kept.
        const undo =
          prior?.state === 'incoming' && prior.check_undo !== null
            ? parseCheckUndo(prior.check_undo, job)
            : { prior: prior ? { state: prior.state, moved_to: prior.moved_to, map_version: prior.map_version, job_id: prior.job_id, excluded_keys: prior.excluded_keys } : null };
        const r = await c.query(INCOMING_UPSERT, [job.kind, job.unitId, job.id, excluded, checked ? null : JSON.stringify(undo)]);
        return { rowCount: r.rowCount, checked };
      },
      bounded,
    ).catch((err: unknown) => {
      if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw err;
      throw new MoveError(
        `writers of key ${job.unitId} on ${job.to} held its fence row there past the fence budget (${this.settings.fenceBudgetMs} ms) while the move fenced the target; nothing changed, the move starts again on its next run`,
        { cause: err },
      );
    });
    if (fenced.rowCount !== 1) throw new MoveError(`${job.kind} ${job.unitId} on ${job.to} is fenced by another move`);
    if (fenced.checked) return;
    const target = this.pool(job.to);
    const counts: string[] = [];
    try {
      await this.drain(target, job, { shard: job.to, since: `the target's incoming fence of key ${job.unitId}`, then: 'the target is checked for rows of the key', readBeforeWrite: true });
      counts.push(...(await heldOnTarget(target, job)));
      if (counts.length === 0) {
        const done = await this.write(job, job.to, (c) =>
          c.query(`update write_fences set check_undo = null where kind = $1 and unit_id = $2 and state = 'incoming' and job_id = $3 and check_undo is not null`, [job.kind, job.unitId, job.id]),
        );
        if (done.rowCount !== 1) throw new MoveError(`${job.kind} ${job.unitId} on ${job.to} is no longer moving in unchecked for move job #${job.id}; this run stops`);
        return;
      }
    } catch (err) {
      throw await this.uncheckedStop(job, err);
    }
    await this.undoUncheckedFence(job);
    if (why === 'pinned') {
      throw new MoveError(
        `key ${job.unitId} was pinned to the source ${job.from} when this move read it, but its slot ${job.slot} hashes to the target ${job.to}, which already holds rows of it (${counts.join(', ')}) that writers sent there by hash (its pin deleted since, or a process that had not seen the pin) before this move fenced it: the copy would delete them; nothing stays fenced (its fence there was put back), and while the key routes to ${job.to} this move can neither go on nor be cancelled: the key's owner must be decided by hand (its rows are on ${job.from} and ${job.to})${decideByHand(job)}`,
      );
    }
    throw new MoveError(
      `key ${job.unitId} has no directory entry and routes by hash to the target ${job.to}, which already holds rows of it (${counts.join(', ')}) that writers sent there by hash before this move fenced it: the copy would delete them, and a pin to the source ${job.from} would hide them; nothing stays fenced (its fence there was put back), and this move can neither go on nor be cancelled while the key routes there: the key's owner must be decided by hand (its rows are on ${job.from} and ${job.to})${decideByHand(job)}`,
    );
  }

  /**
   * Waits, within the drain's timeout, until the target holds no prepared transaction that wrote
   * its sharded tables, where the row checkedIncoming is about to commit will need the check (not
   * `moved`, nor `incoming` and checked): every such transaction is older than that fence, and the
   * drain after it would wait for it, the key's writes on the target refused all along. Read
   * without a lock: one prepared after this read, before the fence, is waited for by the drain.
   */
  private async preparedOnTarget(job: MoveJob): Promise<void> {
    const target = this.pool(job.to);
    const { rows: fence } = await target.query<{ state: string; unchecked: boolean }>('select state, check_undo is not null as unchecked from write_fences where kind = $1 and unit_id = $2', [job.kind, job.unitId]);
    const row = fence[0];
    if (row?.state === 'moved' || (row?.state === 'incoming' && !row.unchecked)) return;
    const deadline = this.now() + this.settings.drainTimeoutMs;
    for (;;) {
      const { rows } = await target.query<{ n: number }>(
        `select count(*)::int as n from pg_prepared_xacts p
          where p.database = current_database()
            and ${PREPARED_WROTE_TABLES}`,
      );
      const prepared = rows[0]?.n ?? 0;
      if (prepared === 0) return;
      if (this.options.timeUp?.()) throw new MovePaused(`move job #${job.id}: this run's time is up while waiting for the transactions prepared on the target ${job.to} before its fence of key ${job.unitId}; the next run resumes it`);
      if (this.now() > deadline) {
        throw new MoveError(
          `${prepared} prepared transaction(s) that wrote ${TABLE_LIST} (pg_prepared_xacts) on ${job.to} still open after ${this.settings.drainTimeoutMs} ms; the move fences the target for key ${job.unitId} and checks it for the key's rows once they have ended (commit or roll back a forgotten prepared transaction)`,
        );
      }
      await this.sleep(10);
    }
  }

  /**
   * What a run that cannot finish the check of its target (checkedIncoming: the drain's timeout,
   * its time up, a failed count) throws, once it has put the target's fence row back as it was
   * (undoUncheckedFence): left `incoming` and not checked, it refused every write of the key on
   * the target until a later run of the job checked, and for a key routed there by hash (its
   * writes all go there) that was the key unwritable for as long as no run could finish the check
   * (a forgotten prepared transaction on the target: every run's drain timed out, for good). The
   * next run fences and checks anew: the fence records what it replaces again, and the writers it
   * waits for are those older than that new fence. A move error says what was put back; a pause
   * ({@link MovePaused}) and any other error are rethrown as they are. Where the row cannot be put
   * back (the target gone, this run's permit taken by another run), the error says so: the key's
   * writes there stay refused until a run of the job checks again.
   */
  private async uncheckedStop(job: MoveJob, err: unknown): Promise<Error> {
    const as = err instanceof Error ? err : new MoveError(String(err));
    let putBack: boolean;
    try {
      putBack = await this.undoUncheckedFence(job);
    } catch (undoErr) {
      // Another run holds the job now (its permit refused this one's write): the row is its own.
      if (undoErr instanceof MoveLeaseLostError) return as;
      return new MoveError(
        `${errorText(err)}; the target's fence of key ${job.unitId} on ${job.to}, not checked, could not be put back (${errorText(undoErr)}): the key's writes there are refused until a run of move job #${job.id} checks it again`,
        { cause: err },
      );
    }
    if (putBack && err instanceof MoveError && err.constructor === MoveError) {
      return new MoveError(`${err.message}; its fence of key ${job.unitId} on ${job.to} was put back meanwhile: the key's writes there are accepted until the next run fences and checks it again`, { cause: err });
    }
    return as;
  }

  /**
   * The keys a slot move leaves where the directory puts them are not the slot's owner's, on
   * either side: its fence rows exclude them, and without a row of their own a process whose
   * directory cache has not seen the key yet would route it by hash and read nothing there, or
   * write a second copy of it. So each shard of the move gets a `directory` row saying `moved`,
   * to the shard the directory names, unless it has a row for the key already (a move of the key
   * made it) or is that shard itself.
   */
  private async markExcludedKeys(job: MoveJob): Promise<void> {
    if (job.kind !== 'slot' || job.excludedKeys.length === 0) return;
    const elsewhere: Array<{ key: string; shard: string; version: number }> = [];
    for (const key of job.excludedKeys) {
      const entry = await this.catalog.use((catalog) => this.options.directory.entry(key, catalog));
      if (entry) elsewhere.push({ key, shard: entry.shardId, version: entry.version });
    }
    for (const shard of [job.from, job.to]) {
      const rows = elsewhere.filter((e) => e.shard !== shard);
      if (rows.length === 0) continue;
      await this.write(job, shard, (c) =>
        c.query(
          `insert into write_fences (kind, unit_id, state, moved_to, map_version)
           select 'directory', k, 'moved', s, v from unnest($1::text[], $2::text[], $3::bigint[]) as e(k, s, v)
           on conflict (kind, unit_id) do nothing`,
          [rows.map((r) => r.key), rows.map((r) => r.shard), rows.map((r) => r.version)],
        ),
      );
    }
  }

  /**
   * Puts the target's fence row of the unit back as it was before this job's unchecked `incoming`
   * row replaced it (its `check_undo`): deleted where there was none, its columns again otherwise.
   * Only this job's `incoming` row with the record; anything else is left as it is.
   */
  private async undoUncheckedFence(job: MoveJob): Promise<boolean> {
    return this.write(job, job.to, async (c) => {
      const { rows } = await c.query<{ check_undo: unknown }>(
        `select check_undo from write_fences where kind = $1 and unit_id = $2 and state = 'incoming' and job_id = $3 and check_undo is not null for update`,
        [job.kind, job.unitId, job.id],
      );
      if (rows.length === 0) return false;
      const { prior } = parseCheckUndo(rows[0]?.check_undo, job);
      if (prior === null) {
        await c.query('delete from write_fences where kind = $1 and unit_id = $2 and job_id = $3', [job.kind, job.unitId, job.id]);
        return true;
      }
      await c.query(
        `update write_fences set state = $4, moved_to = $5, map_version = $6::bigint, job_id = $7::bigint, excluded_keys = $8, check_undo = null, updated_at = clock_timestamp()
          where kind = $1 and unit_id = $2 and job_id = $3`,
        [job.kind, job.unitId, job.id, prior.state, prior.moved_to, prior.map_version, prior.job_id, prior.excluded_keys],
      );
      return true;
    });
  }

  /**
   * Waits until every writer whose transaction began before the capture (and the fence row)
   * existed has ended: such a writer could hold no fence lock and log no change, so the copy
   * must start after it has committed. Only transactions that have written (an xid) or are
   * writing (a row-exclusive lock on a sharded table) count: a long read-only transaction such
   * as pg_dump writes nothing the copy could miss. Prepared (two-phase) transactions count too:
   * they have left `pg_stat_activity`, and one that wrote before the capture commits later
   * through `COMMIT PREPARED`, a row the copy never saw and the capture never logged. Those
   * counted are the ones with a transaction id older than the capture (below the xmax of a
   * snapshot taken after it: their first write came before it) that hold row-exclusive locks on
   * the sharded tables (kept in `pg_locks` with no backend, beside their transaction id's lock).
   * A newer one wrote with the capture in place, and was logged. The check of a directory move's
   * target waits the same way (`waited`: the target, for writers older than its `incoming` row;
   * see checkedIncoming), with one more rule (`readBeforeWrite`): the fence is a BEFORE trigger,
   * read before the row takes its transaction id, so a writer that read no fence before the row's
   * commit and then waited (an `on conflict` insert waiting for another insert of its id) can take
   * an id newer than the snapshot, and prepare. While it runs it is counted as an older writer
   * (its row-exclusive lock); once no such writer is left (at `ended`, read after that count),
   * every prepared transaction that holds row-exclusive locks on the sharded tables and was
   * prepared before `ended` is waited for too, whatever its id (a finite set: one prepared later
   * began after the fence, or was counted as an older writer at `ended`).
   */
  private async drain(source: pg.Pool, job: MoveJob, waited: DrainOf = { shard: job.from, since: 'the change capture', then: 'the copy starts' }): Promise<void> {
    const { rows } = await source.query<{ t: Date; xmax: string }>('select now() as t, pg_snapshot_xmax(pg_current_snapshot())::text as xmax');
    const since = rows[0]?.t;
    // Transactions given an id before this snapshot's xmax may have written before the capture.
    const xmax = rows[0]?.xmax ?? '0';
    const deadline = this.now() + this.settings.drainTimeoutMs;
    // readBeforeWrite: the server's time once no older writer was left in pg_stat_activity.
    let ended: Date | null = null;
    for (;;) {
      const { rows: active } = await source.query<{ n: number; prepared: number }>(
        `select (select count(*)::int from pg_stat_activity a
                  where a.datname = current_database() and a.pid <> pg_backend_pid() and a.backend_type = 'client backend' and a.xact_start < $1
                    and (a.backend_xid is not null
                         or exists (select 1 from pg_locks l where l.pid = a.pid and l.mode = 'RowExclusiveLock'
                                     and l.relation in (${TABLE_REGCLASSES})))) as n,
                (select count(*)::int from pg_prepared_xacts p
                  where p.database = current_database()
                    and (age(p.transaction) > age(($2::bigint % 4294967296)::text::xid) or p.prepared <= $3::timestamptz)
                    and ${PREPARED_WROTE_TABLES}) as prepared`,
        [since, xmax, ended],
      );
      const open = active[0]?.n ?? 0;
      const prepared = active[0]?.prepared ?? 0;
      if (waited.readBeforeWrite && open === 0 && ended === null) {
        // Read after that count: an older writer it no longer saw had prepared (or ended) before.
        const { rows: now } = await source.query<{ t: Date }>('select clock_timestamp() as t');
        ended = now[0]?.t ?? null;
        continue;
      }
      if (open + prepared === 0) return;
      // Nothing is copied yet: a run whose time is up stops here, and the next one waits again.
      if (this.options.timeUp?.()) throw new MovePaused(`move job #${job.id}: this run's time is up while waiting for writers older than ${waited.since}; the next run resumes it`);
      if (this.now() > deadline) {
        const what = [open > 0 ? `${open} writer(s) older than ${waited.since}` : '', prepared > 0 ? `${prepared} prepared transaction(s) that wrote ${TABLE_LIST} (pg_prepared_xacts)` : '']
          .filter(Boolean)
          .join(' and ');
        throw new MoveError(`${what} on ${waited.shard} still open after ${this.settings.drainTimeoutMs} ms; ${waited.then} once they have ended (commit or roll back a forgotten prepared transaction)`);
      }
      await this.sleep(10);
    }
  }

  /**
   * Copies the unit's rows, parents first, each table in {@link MoveSettings.copyLanes} id ranges
   * at once (see {@link laneBounds}): one lane is one source backend reading and one target
   * backend writing, and the target's index maintenance is the copy's longest part. Whether a
   * second lane pays depends on idle cores: on one 2-core machine holding source, target and
   * writers, two lanes beat one in 13 of 18 interleaved moves under 8 writers (median 64.4k
   * against 57.1k rows/s), and lost without writers (one source 53-61k against 60-67k, two
   * sources 56-70k against 76-88k), so the default is one lane. Each lane pages through its range in
   * id order and its position is saved after each page; the number of lanes is the cursor's, so
   * a resumed copy keeps the split it began with. With pools of one connection (a Lambda) the
   * lanes take turns: each holds its source connection before asking for its target's.
   */
  async copy(start: MoveJob): Promise<MoveJob> {
    let job = start;
    await this.setAside(job);
    let cursor: CopyCursor = job.copyCursor ?? this.freshCursor('users');
    const source = this.pool(job.from);
    const target = this.pool(job.to);
    // The target's timeline before anything is copied into it (sharding migration 015; a resumed
    // run keeps the first: rows copied then may lie on it). Timelines only grow, so every row of
    // the unit this move writes on the target lies on that timeline or a later one: a token of
    // the target whose write was copied off it and lost there in a failover is not told copied
    // once the unit came back on the timeline the failover cut short (catalog.write_copied_off).
    const { rows: tli } = await target.query<{ tli: string | null }>(`select ${CURRENT_TIMELINE_SQL} as tli`);
    job = await this.updateJob('target_timeline = coalesce(target_timeline, $2)', [tli[0]?.tli ?? null], job);
    for (const { name: table } of TABLES) {
      if (TABLES.findIndex((t) => t.name === table) < TABLES.findIndex((t) => t.name === cursor.table)) continue;
      if (cursor.table !== table) cursor = this.freshCursor(table);
      // A cursor saved before lanes existed is one lane.
      const lanes = cursor.lanes && cursor.lanes.length > 0 ? [...cursor.lanes] : [cursor.after];
      const bounds = laneBounds(lanes.length);
      // Every lane ends before the copy returns or throws (none may outlive the run's
      // connection); once one has failed, the others stop at their next page.
      let failing = false;
      const ended = await Promise.allSettled(
        lanes.map(async (_, lane) => {
          for (;;) {
            if (failing) return;
            await this.checkCancel(job);
            const batch = await this.copyPage(source, target, job, table, { after: lanes[lane] ?? null, ...(bounds[lane] as LaneBounds) }).catch((err: unknown) => {
              throw this.permitLost(err, job, job.to);
            });
            if (batch.n === 0) return;
            lanes[lane] = batch.last;
            // The lanes share the run's one catalog connection and take turns on it: the cursor
            // is built when this lane's turn comes, with every lane's position as it is then, so
            // each save holds every page committed before it.
            job = await this.catalog.use(() => {
              cursor = lanes.length === 1 ? { table, after: lanes[0] ?? null } : { table, after: null, lanes: [...lanes] };
              return this.updateJob('copy_cursor = $2, rows_copied = rows_copied + $3', [JSON.stringify(cursor), batch.n], job);
            });
            // A short page was the lane's last.
            if (batch.n < this.settings.copyBatchRows) return;
          }
        }).map((lane) =>
          lane.catch((err: unknown) => {
            failing = true;
            throw err;
          }),
        ),
      );
      const failed = ended.find((e) => e.status === 'rejected');
      if (failed) throw failed.reason;
    }
    return job;
  }

  /**
   * One page of the copy ({@link copyBatch}), and when the target already holds one of the page's
   * document ids outside the unit, the stale copies among them cleared ({@link clearStaleCopies})
   * and the page copied again. Two units moving from one source to one target at once trade
   * documents (one handed to an owner of the other slot): the target then holds the first move's
   * copy of a document the second move's page now holds, until the first move's catch-up removes
   * it, and the second move's COPY failed on the primary key meanwhile, every run, while the first
   * could stall in its turn on the second's stale copies (each catch-up pass refused, see
   * {@link catchUpPass}): measured, two such moves under a trader often never finished. What is
   * not a stale copy of another move from this source (a row the target owns, say) is left as it
   * is and the move stops, naming the ids, as the catch-up's guard does.
   */
  private async copyPage(source: pg.Pool, target: pg.Pool, job: MoveJob, table: TableName, page: LaneBounds & { readonly after: string | null }): Promise<{ n: number; last: string | null }> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.copyBatch(source, target, job, table, page);
      } catch (err) {
        if (!hasSqlState(err, UNIQUE_VIOLATION)) throw err;
        const ids = await inTransaction(source, PAGE_SNAPSHOT, async (from) => {
          const { rows } = await from.query<{ id: string }>(`select id::text as id from ${table} where ${this.pageWhere(job, table, page, from)} order by id limit ${Math.max(1, Math.floor(this.settings.copyBatchRows))}`);
          return rows.map((r) => r.id);
        });
        const outside = this.unitFilter(job, table, 2, 't.');
        const { rows: met } = await target.query<{ id: string }>(`select t.id::text as id from ${table} t where t.id = any($1::uuid[]) and not (${outside.sql}) order by t.id`, [ids, ...outside.params]);
        // None met any more (the other move removed its copies meanwhile): the page again, or
        // another unique key than the id's, as it is.
        if (met.length === 0) {
          if (attempt <= 3) continue;
          throw err;
        }
        // Users and key records never change units (a user's slot is its id's, a key record never
        // changes owner), so no other move's copy of them can be stale: another record has the id.
        // Thrown as it was, the COPY's bare "duplicate key" named neither the ids nor what to do.
        if (table !== 'documents') {
          throw new UnitCollision(
            table,
            met.map((r) => r.id),
            collisionMessage(job, table, met.map((r) => r.id)),
            { cause: err },
          );
        }
        const { inTheWay } = await this.clearStaleCopies(job, table, met.map((r) => r.id));
        // Still in the way is not yet proof of another record: a document that left the unit
        // while its stale copy was being deleted (the delete rolled back, then tried again without
        // it) and came back before it was read again is in the way, and stale again. The page is
        // tried again, and so cleared, while attempts remain; what stays in the way stops the copy.
        if (attempt <= 3) continue;
        const stuck = inTheWay.length > 0 ? inTheWay : met.map((r) => r.id);
        throw new UnitCollision(table, stuck, collisionMessage(job, table, stuck), { cause: err });
      }
    }
  }

  /**
   * Deletes from the target the stale copies, among the rows named by `ids`, that stand in the
   * way of rows this move's unit holds on the source now (a document handed from an owner of
   * another unit to one of this unit since the copy in the way was made), and answers how many it
   * deleted, which of `ids` are still in the way after it (held on the target outside the unit
   * and by the source in the unit; none: the page or pass can be written again; another move may
   * have removed its copy meanwhile) and which are held on the target outside the unit but have
   * left the unit on the source since the caller read them (`leftUnit`: in nobody's way, to be
   * left out of the caller's rows, the copy on the target kept). Two kinds of copies:
   * another unfinished move's from this source into this target (it would delete the row itself
   * at its next catch-up pass: the source logged its leaving that unit), and the rows a finished
   * move left on this target, its old owner, for its clean-up (a unit `moved` here: a move the
   * other way, whose clean-up has not run). A row is deleted only
   *
   * - if it is in a unit whose fence row on the target says `moved`, or `incoming` for another
   *   job and checked (an `incoming` row whose check is pending, `check_undo`, covers no copy:
   *   see checkedIncoming), locked FOR SHARE here (the other move cannot open it before this commits): never a row
   *   of a unit the target owns (`open`, or no row);
   * - for `incoming`, if that job captures changes on this source now (its `move_captures` row):
   *   the row's leaving its unit was logged there (a rollback keeps the capture until it has
   *   deleted its copy, so a paused rollback's copies are cleared too; a `moved` unit's rows here
   *   are read by no one and wait only to be deleted);
   * - by the other unit's own filter and id (and, for a slot, not of a key with a directory row
   *   here, whose row decides the key's rows): this move's copy of the id, in its own unit, is never
   *   matched, nor is it by the other move's later deletes, which match by id and unit too;
   * - if the source, read after the delete (the row locked here), holds it in this move's unit:
   *   then the source does not hold it in the other unit, so the other move's copy is stale, and
   *   that move cannot have compared it equal under a fence (a fenced unit keeps its rows on the
   *   source until it is cleaned up, after its fence row here opens, which waits for this lock).
   *
   * Otherwise nothing is deleted. The deletes fire the target's triggers, so that a move
   * comparing its unit there (its capture on the target, see {@link preVerify}) compares the rows
   * again. Documents only: a user's slot is its id's, so no user changes units.
   */
  private async clearStaleCopies(
    job: MoveJob,
    table: TableName,
    ids: readonly string[],
  ): Promise<{ readonly cleared: number; readonly inTheWay: readonly string[]; readonly leftUnit: readonly string[] }> {
    const outsideHere = this.unitFilter(job, table, 2, 't.');
    const cleared = await this.deleteStaleCopies(job, table, ids);
    const met = (await this.pool(job.to).query<{ id: string }>(`select t.id::text as id from ${table} t where t.id = any($1::uuid[]) and not (${outsideHere.sql}) order by t.id`, [ids, ...outsideHere.params])).rows.map((r) => r.id);
    // A row met that the source no longer holds in this unit (the document changed hands again
    // since the page or pass read it, so the other move's copy is no longer stale and was kept)
    // stands in the way of nothing: read again, the page or pass leaves it out. Counted as in the
    // way, it failed the run (1 of 6 runs of two such moves under a trader).
    const held = met.length === 0 ? new Set<string>() : await this.inUnitOnSource(job, table, met);
    return { cleared, inTheWay: met.filter((id) => held.has(id)), leftUnit: met.filter((id) => !held.has(id)) };
  }

  /** Which of `ids` the source holds in this move's unit now. */
  private async inUnitOnSource(job: MoveJob, table: TableName, ids: readonly string[]): Promise<Set<string>> {
    const mine = this.unitFilter(job, table, 2, 't.');
    const { rows } = await this.pool(job.from).query<{ id: string }>(`select t.id::text as id from ${table} t where t.id = any($1::uuid[]) and ${mine.sql}`, [ids, ...mine.params]);
    return new Set(rows.map((r) => r.id));
  }

  /** The deletes of {@link clearStaleCopies}; answers how many rows it deleted. */
  private async deleteStaleCopies(job: MoveJob, table: TableName, ids: readonly string[]): Promise<number> {
    if (table !== 'documents' || ids.length === 0) return 0;
    const source = this.pool(job.from);
    const capturing = async (jobs: readonly string[]): Promise<Set<string>> =>
      new Set((await source.query<{ job_id: string }>('select job_id::text from move_captures where job_id = any($1::bigint[])', [jobs])).rows.map((r) => r.job_id));
    // A row that changed hands again before the delete committed rolls the whole delete back,
    // and the others are still stale copies in the way: the delete is tried again (three times in
    // all) with the rows the source holds in this unit then. Not tried again, those others were
    // taken as in the way and failed the run (1 of 3 runs of two such moves under a trader).
    for (let attempt = 1; ; attempt++) {
      const cleared = await this.deleteStaleCopiesOnce(job, table, [...(await this.inUnitOnSource(job, table, ids))], capturing);
      if (cleared !== null || attempt >= 3) return cleared ?? 0;
    }
  }

  /**
   * One transaction of {@link deleteStaleCopies}, deleting among `candidates` (rows the source
   * held in this unit); answers how many rows it deleted, or null when it rolled back because the
   * source no longer holds one of them in this unit (or the other move stopped capturing).
   */
  private async deleteStaleCopiesOnce(job: MoveJob, table: TableName, candidates: readonly string[], capturing: (jobs: readonly string[]) => Promise<Set<string>>): Promise<number | null> {
    if (candidates.length === 0) return 0;
    return this.write<number | null>(job, job.to, async (target) => {
      await this.assertIncoming(target, job);
      const outside = this.unitFilter(job, table, 3, 'c.');
      const { rows: fences } = await target.query<{ kind: 'slot' | 'directory'; unit_id: string; state: string; job_id: string | null; excluded_keys: string[] }>(
        `select w.kind, w.unit_id, w.state, w.job_id::text as job_id, w.excluded_keys from write_fences w
          where ((w.state = 'incoming' and w.job_id is not null and w.job_id <> $2 and w.check_undo is null) or w.state = 'moved')
            and exists (select 1 from ${table} c
                         where c.id = any($1::uuid[]) and not (${outside.sql})
                           and ((w.kind = 'slot' and w.unit_id = c.slot::text and not (c.owner_id::text = any (w.excluded_keys)))
                                or (w.kind = 'directory' and w.unit_id = c.owner_id::text)))
          order by w.kind, w.unit_id
          for share`,
        [candidates, job.id, ...outside.params],
      );
      const live = await capturing(fences.flatMap((f) => (f.state === 'incoming' && f.job_id !== null ? [f.job_id] : [])));
      const deleted: string[] = [];
      const from: string[] = [];
      for (const f of fences) {
        const incoming = f.state === 'incoming' && f.job_id !== null ? f.job_id : null;
        if (f.state === 'incoming' && (incoming === null || !live.has(incoming))) continue;
        const other = this.unitFilter({ kind: f.kind, unitId: f.unit_id, excludedKeys: f.excluded_keys }, table, 2, 'x.');
        // A row of a slot whose owner has a directory row here is that row's, whatever its slot says.
        const pinned = f.kind === 'slot' ? " and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = x.owner_id::text)" : '';
        const { rows } = await target.query<{ id: string }>(`delete from ${table} x where x.id = any($1::uuid[]) and ${other.sql}${pinned} returning x.id::text as id`, [candidates, ...other.params]);
        if (rows.length > 0 && incoming !== null) from.push(incoming);
        deleted.push(...rows.map((r) => r.id));
      }
      if (deleted.length === 0) return 0;
      // Read again now that the rows are deleted here (and locked until this commits).
      const [still, stillCapturing] = [await this.inUnitOnSource(job, table, deleted), await capturing(from)];
      if (!deleted.every((id) => still.has(id)) || !from.every((j) => stillCapturing.has(j))) return new RollbackWith(null);
      return deleted.length;
    });
  }

  /** The `where` clause of a copy page: the unit's rows of `table` in the lane's bounds, after the page's `after`. */
  private pageWhere(job: MoveJob, table: TableName, page: LaneBounds & { readonly after: string | null }, client: pg.ClientBase): string {
    const unit = this.unitFilterLiteral(job, table, client);
    const after = page.after === null ? null : `id > ${client.escapeLiteral(page.after)}::uuid`;
    return [unit, page.from === null ? null : `id >= '${page.from}'::uuid`, page.to === null ? null : `id < '${page.to}'::uuid`, after].filter((c) => c !== null).join(' and ');
  }

  /** The cursor at the start of a table: no row copied in any lane. */
  private freshCursor(table: TableName): CopyCursor {
    const n = Math.max(1, Math.floor(this.settings.copyLanes));
    return n === 1 ? { table, after: null } : { table, after: null, lanes: Array.from({ length: n }, () => null) };
  }

  /**
   * Copies one keyset page of a table's unit rows in one lane, the first `copyBatchRows` in id
   * order after `after` (and within the lane's bounds), with the COPY protocol:
   * `COPY (select ... limit n) TO STDOUT` on the source piped into `COPY ... FROM STDIN` on the
   * target, in binary (both sides run the same schema and build), so no row is formatted as text
   * or JSON on either side or parsed in Node, and the page's rows are read once, by the COPY (a
   * separate query for the page's bounds read them twice, and cost as much as the copy under
   * writers). The page's last id is then read back on the target.
   *
   * When the target's foreign keys are checked (a login without `session_replication_role`, see
   * {@link bulkBegin}), a document page's owners are upserted first from the same source
   * snapshot, in id order (two lanes may upsert the same owners; one order means one waits for
   * the other rather than both deadlocking), so the target never holds a document before its
   * user. Otherwise a user created on the source after the users pass reaches the target
   * through the change capture, before the fence.
   *
   * COPY cannot upsert, so the target transaction first deletes the unit's rows of the lane
   * after `after`: after a crash between the target's commit and the cursor's save in the
   * catalog, the copy resumes from the saved cursor with the source as it is now. Only the mover
   * writes the unit on the target during the copy (its fence says `incoming`), each lane only
   * its own range, and the users pass ends before any document is copied, so that delete removes
   * nothing but the lane's own earlier copy, and the users an earlier move's clean-up kept there,
   * which it spares in the whole lane after `after` ({@link keptOwners}).
   */
  private async copyBatch(source: pg.Pool, target: pg.Pool, job: MoveJob, table: TableName, page: LaneBounds & { readonly after: string | null }): Promise<{ n: number; last: string | null }> {
    const begin = await this.bulkBegin(job.to, target);
    const checkedKeys = (await this.skipsTriggers(job.to, target)) === null;
    return inTransaction(source, PAGE_SNAPSHOT, async (from) => {
      const where = this.pageWhere(job, table, page, from);
      const rows = `select * from ${table} where ${where} order by id limit ${Math.max(1, Math.floor(this.settings.copyBatchRows))}`;
      let ownersJson: string | null = null;
      if (checkedKeys && table !== 'users') {
        const owners = await from.query<{ rows: string }>(
          `select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(u) order by u.id), '[]')::text as rows from users u
            where u.id in (select owner_id from (${rows}) p) and ${this.unitFilterLiteral(job, 'users', from)}`,
        );
        ownersJson = owners.rows[0]?.rows ?? null;
      }
      const cols = (await this.tableColumns(table, from)).join(', ');
      return inTransaction(target, this.permitted(job, begin), async (to) => {
        if (ownersJson) await this.upsert(to, job, 'users', ownersJson, (JSON.parse(ownersJson) as unknown[]).length);
        const { kept, later } = table === 'users' ? await this.keptOwners(from, to, where, rows) : { kept: [], later: [] };
        const keptIds = `array[${kept.map((id) => to.escapeLiteral(id)).join(', ')}]::uuid[]`;
        const spared = [...kept, ...later];
        await to.query(`delete from ${table} where ${where}${spared.length === 0 ? '' : ' and id <> all($1::uuid[])'}`, spared.length === 0 ? [] : [spared]);
        if (kept.length > 0) {
          const { rows: json } = await from.query<{ rows: string }>(`select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(p) order by p.id), '[]')::text as rows from (${rows}) p where p.id = any($1::uuid[])`, [kept]);
          await this.upsert(to, job, 'users', json[0]?.rows ?? '[]', kept.length);
        }
        const sink = to.query(copyFrom(`copy ${table} (${cols}) from stdin with (format binary)`));
        try {
          await pipeline(from.query(copyTo(`copy (select ${cols} from (${rows}) p${kept.length === 0 ? '' : ` where p.id <> all(${keptIds})`}) to stdout with (format binary)`)), sink);
        } catch (err) {
          // The COPY TO stream reads the source's socket only as fast as the sink takes its rows;
          // destroyed part-way (the target's session went), it reads it no more, and the source
          // client waits for the end of a COPY it will never see: its rollback (and the run) would
          // hang for ever, the source transaction open and the lease renewed. Closing the socket
          // fails that client's queries now; the pool discards it and the server rolls back.
          dropConnection(from);
          throw err;
        }
        const n = sink.rowCount + kept.length;
        if (n === 0) return { n: 0, last: null };
        // The page's last id: the kept users past the page, spared, are not the page's.
        const { rows: last } = await to.query<{ last: string }>(
          `select id::text as last from ${table} where ${where}${later.length === 0 ? '' : ' and id <> all($1::uuid[])'} order by id desc limit 1`,
          later.length === 0 ? [] : [later],
        );
        return { n, last: last[0]?.last ?? null };
      });
    });
  }

  /**
   * The users of the copy's page (`rows`, read on the source through `from`) that the target (`to`)
   * holds already in the unit's lane (`where`) and that own a document or key record there under
   * another slot than theirs: a user an earlier move's clean-up kept on this shard when the unit
   * left it, for such a row written before shard migration 015 (see {@link deleteVerified}). The
   * page's deletion before its COPY spares them and the page upserts them instead: deleted with
   * foreign keys checked (a mover login that may not skip row triggers), the cascade took that
   * document, a record of a unit this shard owns, which no verification covers; with the triggers
   * skipped it was left without its owner until the COPY put the user back
   * (moves-cleanup-left-rows.test.ts). Such a user the source no longer holds is deleted as any.
   * Almost always none: the target's lane of the unit is empty, or holds only this move's own copy.
   *
   * `kept`: those of the page, upserted by it; `later`: those the source holds in the lane past the
   * page, which the page's deletion (of the whole lane after its cursor) spares too and a later
   * page upserts: deleted by the first page of a lane copied in several, the cascade took their
   * documents under another slot just the same ("copied in pages", moves-cleanup-left-rows.test.ts).
   */
  private async keptOwners(from: pg.PoolClient, to: pg.PoolClient, where: string, rows: string): Promise<{ kept: string[]; later: string[] }> {
    // `slot < ... or slot > ...` rather than `slot <> ...`: two range scans of the (owner_id, slot,
    // id) indexes (shard migrations 028, 029) per user rather than every row of its owner, on a page
    // taken up again over its earlier copy (measured, 1,000 users of 99 documents each: 3.5 ms
    // rather than 58 ms; an empty lane, a normal move's, 0.2 ms either way).
    const otherSlot = (table: string): string =>
      `exists (select 1 from ${table} c where c.owner_id = users.id and c.slot < users.slot) or exists (select 1 from ${table} c where c.owner_id = users.id and c.slot > users.slot)`;
    const { rows: held } = await to.query<{ id: string }>(`select id::text as id from users where ${where} and (${otherSlot('documents')} or ${otherSlot('document_keys')})`);
    if (held.length === 0) return { kept: [], later: [] };
    const { rows: onSource } = await from.query<{ id: string; in_page: boolean }>(
      `select id::text as id, id in (select p.id from (${rows}) p) as in_page from users where id = any($1::uuid[]) and ${where}`,
      [held.map((r) => r.id)],
    );
    return { kept: onSource.filter((r) => r.in_page).map((r) => r.id), later: onSource.filter((r) => !r.in_page).map((r) => r.id) };
  }

  /**
   * How the mover's bulk transactions begin (the copy's pages on the target, the clean-up's
   * deletes on the source). Row triggers cost more than the COPY itself (measured: 99,000
   * documents in 0.9 s into a table without triggers, 7-13 s with the fence, capture and
   * foreign-key triggers under load; a whole move's copy under 8 writers about 5 times slower,
   * `bench:moves --mover-login unprivileged`), so where the mover's login may, these run with
   * `session_replication_role = replica`, which skips row triggers for that transaction only:
   * set directly by a superuser or a login granted `set on parameter session_replication_role`
   * (shard migration 006), or through `mover_replica_role()` (shard migration 016), a function
   * of the migrations' login that only ca_dms_mover may call, for RDS, where only members of
   * `rds_superuser` may set the parameter and 006's grant is refused.
   * Nothing is lost by it: the fence lets the mover through anyway, and still refuses every
   * other writer; the target captures no change of a unit moving in (one unfinished move per
   * slot); a copied page's owners are upserted before its documents and the verification
   * compares both sides before the flip; the clean-up deletes documents before their users and
   * only users left without documents, so no cascade is needed. A login that may do neither
   * runs the same statements with the triggers firing.
   */
  private async bulkBegin(shard: string, pool: pg.Pool): Promise<string> {
    const by = await this.skipsTriggers(shard, pool);
    return by === null ? MOVER_WRITE : `${MOVER_WRITE}; ${REPLICA_ROLE_SQL[by]}`;
  }

  /** How the mover's bulk transactions on `shard` skip row triggers, or null: they may not (see {@link bulkBegin}). */
  private skipsTriggers(shard: string, pool: pg.Pool): Promise<ReplicaRoleBy> {
    let by = this.replicaRole.get(shard);
    if (!by) {
      by = (async () => {
        for (const way of ['set', 'definer'] as const) {
          try {
            await inTransaction(pool, 'begin', (c) => c.query(REPLICA_ROLE_SQL[way]));
            return way;
          } catch (err) {
            // Refused, or (for the function) shard migration 016 not applied yet.
            if (!hasSqlState(err, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION)) throw err;
          }
        }
        return null;
      })();
      // A probe that failed otherwise (a dropped connection) is asked again by the next transaction.
      by.catch(() => this.replicaRole.delete(shard));
      this.replicaRole.set(shard, by);
    }
    return by;
  }

  /** {@link unitFilter} with its values written as SQL literals, for COPY (which takes no parameters). */
  private unitFilterLiteral(start: MoveJob, table: TableName, client: pg.ClientBase): string {
    const job = this.withSetAside(start);
    const owner = TABLES.find((t) => t.name === table)?.owner ?? 'id';
    if (job.kind === 'slot') {
      const slot = Number(job.unitId);
      if (!Number.isSafeInteger(slot) || slot < 0) throw new MoveError(`slot move with unit ${job.unitId}, not a slot number`);
      if (job.excludedKeys.length === 0) return `slot = ${slot}`;
      const excluded = job.excludedKeys.map((k) => client.escapeLiteral(k)).join(', ');
      return `slot = ${slot} and not (${owner}::text = any(array[${excluded}]::text[]))`;
    }
    return `${owner} = ${client.escapeLiteral(job.unitId)}::uuid and slot = ${keySlot(job.unitId)}`;
  }

  async catchUp(job: MoveJob, until: 'few' | 'all'): Promise<boolean> {
    await this.setAside(job);
    if (this.hinted !== job.id) {
      await this.nameDestination(job);
      this.hinted = job.id;
    }
    for (let pass = 0; ; pass++) {
      if (until === 'few') await this.checkCancel(job);
      let applied: number;
      try {
        applied = await this.catchUpPass(job);
      } catch (err) {
        // Under the fence, a statement cancelled at the budget's end (see heldToFence): give it up.
        if (until === 'all' && (err as { code?: string }).code === QUERY_CANCELED) return false;
        throw err;
      }
      // Under the fence no writer of the unit can log a change on the source any more (the fence
      // waited for those in flight, whose capture ran inside their transactions), so a pass that
      // found less than a batch found the last of them: no pass to confirm an empty log.
      if (until === 'all' ? applied < this.settings.batchRows : applied < this.settings.catchUpThreshold) return true;
      if (until === 'few' && pass >= 100) return true;
      // While fenced, every pass holds writers: past the budget, give the fence up.
      if (until === 'all' && this.budgetLeft() <= 0) return false;
    }
  }

  /**
   * Names the destination on the source's capture row (shard migration 011), so that the unit's
   * writers open and warm connections there before the cutover instead of after it (see
   * `withShardWrite`). Done once the bulk copy is over, when the catch-up starts, so that those
   * connections are not opened during the copy (nor closed idle and opened again over a long
   * one), and well before the fence: the catch-up and the comparison before it take hundreds of
   * milliseconds. Idempotent; the row goes with the capture, after the cutover or a rollback.
   */
  private async nameDestination(job: MoveJob): Promise<void> {
    await this.write(job, job.from, (c) => c.query('update move_captures set moving_to = $2 where job_id = $1 and moving_to is distinct from $2', [job.id, job.to]));
  }

  /**
   * One pass: re-read the current source rows of up to `batchRows` logged ids and make the target
   * match. The source is read by one statement (one snapshot, no transaction to open and close)
   * and the target written in one transaction, statements with nothing to do skipped: under the
   * fence every round trip holds writers.
   */
  private async catchUpPass(job: MoveJob): Promise<number> {
    const source = this.pool(job.from);
    const { rows: entries } = await source.query<{ seq: string; table_name: TableName; row_id: string }>(
      'select seq, table_name, row_id from move_changes where job_id = $1 order by seq limit $2',
      [job.id, this.settings.batchRows],
    );
    if (entries.length === 0) return 0;
    const ids = new Map<TableName, Set<string>>(TABLES.map((t) => [t.name, new Set<string>()]));
    for (const e of entries) ids.get(e.table_name)?.add(e.row_id);
    const docIds = [...(ids.get('documents') ?? [])];
    const userIds = [...(ids.get('users') ?? [])];
    const keyIds = [...(ids.get('document_keys') ?? [])];

    const df = this.unitFilter(job, 'documents', 4, 't.');
    const uf = this.unitFilter(job, 'users', 4 + df.params.length, 't.');
    const kf = this.unitFilter(job, 'document_keys', 4 + df.params.length + uf.params.length, 't.');
    // The changed documents' owners that did not change themselves are only there so that a
    // new document's (or key record's) owner exists on the target (its foreign key): they are inserted when
    // missing, not rewritten. Rewriting them (about one owner per changed document under 8
    // writers) doubled the rows each pass wrote, each a new version with its index entries and
    // a change logged on the target, to be compared again before the fence.
    const { rows: read } = await source.query<{
      docs: string;
      doc_ids: string[] | null;
      users: string;
      user_ids: string[] | null;
      keys: string;
      key_ids: string[] | null;
      owners: string | null;
    }>(
      `with d as (select t.* from documents t where t.id = any($1::uuid[]) and ${df.sql}),
            u as (select t.* from users t where t.id = any($2::uuid[]) and ${uf.sql}),
            k as (select t.* from document_keys t where t.id = any($3::uuid[]) and ${kf.sql}),
            o as (select t.* from users t where t.id in (select owner_id from d union select owner_id from k) and not (t.id = any($2::uuid[])) and ${uf.sql})
       select (select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(d)), '[]')::text from d) as docs, (select pg_catalog.array_agg(d.id)::text[] from d) as doc_ids,
              (select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(u)), '[]')::text from u) as users, (select pg_catalog.array_agg(u.id)::text[] from u) as user_ids,
              (select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(k)), '[]')::text from k) as keys, (select pg_catalog.array_agg(k.id)::text[] from k) as key_ids,
              (select pg_catalog.jsonb_agg(pg_catalog.to_jsonb(o))::text from o) as owners`,
      [docIds, userIds, keyIds, ...df.params, ...uf.params, ...kf.params],
    );
    const presentDocs = new Set(read[0]?.doc_ids ?? []);
    const presentUsers = new Set(read[0]?.user_ids ?? []);
    const presentKeys = new Set(read[0]?.key_ids ?? []);
    const goneDocs = docIds.filter((id) => !presentDocs.has(id));
    const goneUsers = userIds.filter((id) => !presentUsers.has(id));
    const goneKeys = keyIds.filter((id) => !presentKeys.has(id));
    // The rows that left the unit go first, in a transaction of their own. Two units moving from
    // one source to one target at once can trade rows (a document handed to an owner of the other
    // slot): each move's upsert then meets the other's stale copy of the row and refuses it (see
    // upsert), and with the deletes in the same transaction neither move could ever remove its
    // own stale copy; both stalled for good. Committed first, each pass removes its stale copies
    // whatever its upserts meet, and the refused upsert goes through at a later pass.
    if (goneDocs.length > 0 || goneUsers.length > 0 || goneKeys.length > 0) {
      await this.write(job, job.to, async (target) => {
        await this.assertIncoming(target, job);
        if (goneDocs.length > 0) {
          const f = this.unitFilter(job, 'documents', 2);
          await target.query(`delete from documents where id = any($1::uuid[]) and ${f.sql}`, [goneDocs, ...f.params]);
        }
        if (goneKeys.length > 0) {
          const f = this.unitFilter(job, 'document_keys', 2);
          await target.query(`delete from document_keys where id = any($1::uuid[]) and ${f.sql}`, [goneKeys, ...f.params]);
        }
        if (goneUsers.length > 0) {
          const f = this.unitFilter(job, 'users', 2);
          await target.query(`delete from users where id = any($1::uuid[]) and ${f.sql}`, [goneUsers, ...f.params]);
        }
      });
    }
    const owners = read[0]?.owners;
    if (presentUsers.size > 0 || owners || presentDocs.size > 0 || presentKeys.size > 0) {
      const upsertAll = (skip: ReadonlySet<string>): Promise<void> =>
        this.write(job, job.to, async (target) => {
          await this.assertIncoming(target, job);
          if (presentUsers.size > 0) await this.upsert(target, job, 'users', read[0]?.users ?? '[]', presentUsers.size);
          if (owners) await target.query('insert into users select * from pg_catalog.jsonb_populate_recordset(null::users, $1::jsonb) on conflict (id) do nothing', [owners]);
          if (presentDocs.size > skip.size) await this.upsert(target, job, 'documents', read[0]?.docs ?? '[]', presentDocs.size - skip.size, [...skip]);
          if (presentKeys.size > 0) await this.upsert(target, job, 'document_keys', read[0]?.keys ?? '[]', presentKeys.size);
        });
      // A refused document may be another unfinished move's stale copy (see clearStaleCopies):
      // cleared, the pass is written again. Without it, with more changes logged than one pass
      // takes, each of two such moves could be refused for good on the other's stale copies, their
      // own stale copies logged past the pass that kept failing. A refused document the source no
      // longer holds in the unit left it after this pass read it (its copy in the way kept, and
      // right): it is left out, its leaving logged after the entries this pass removes. Written
      // again as read, it was refused again and failed the run.
      const skip = new Set<string>();
      for (let attempt = 1; ; attempt++) {
        try {
          await upsertAll(skip);
          break;
        } catch (err) {
          if (!(err instanceof UnitCollision) || err.table !== 'documents' || attempt > 3) throw err;
          const { inTheWay, leftUnit } = await this.clearStaleCopies(job, 'documents', err.ids);
          // A document still in the way may have left the unit while its stale copy was being
          // deleted (that delete rolled back, then tried again without it) and come back before it
          // was read again: stale again, it is cleared when the pass is written again. Taken for
          // another record at once, it failed the run. What stays in the way to the last attempt does.
          if (inTheWay.length > 0 && attempt >= 3) throw err;
          for (const id of leftUnit) skip.add(id);
        }
      }
    }
    await this.write(job, job.from, (c) => c.query('delete from move_changes where seq = any($1::bigint[])', [entries.map((e) => e.seq)]));
    await this.heldToFence(() => this.updateJob('changes_applied = changes_applied + $2', [entries.length], job));
    return entries.length;
  }

  /** The fence's slack: {@link MoveSettings.fenceSlackMs}, else {@link FENCED_STATEMENT_SLACK_MS}. */
  private get slackMs(): number {
    return this.settings.fenceSlackMs ?? FENCED_STATEMENT_SLACK_MS;
  }

  /** Milliseconds left of the fence budget; 0 when this run holds no fence. */
  private budgetLeft(): number {
    return this.fenceDeadline === null ? 0 : Math.max(0, this.fenceDeadline - this.now());
  }

  /**
   * Sets the source fence to `fenced`, waiting at most the fence budget for writers in flight
   * (`lock_timeout`): while the UPDATE waits, later writers queue behind it, so an unbounded
   * wait would block every write to the unit. On timeout nothing has changed. The budget starts
   * here and bounds everything until the flip: the final catch-up, the verification and the
   * flip are given up when it runs out (see `verify_timed_out`).
   *
   * Before the fence, both sides are compared row by row while the catch-up keeps running, and
   * the catch-up is brought down to a few changes, so that the fence holds writes only for the
   * last changes and the comparison of the rows changed since.
   */
  async fence(job: MoveJob): Promise<boolean> {
    await this.setAside(job);
    if (this.pre?.jobId !== job.id || (await this.targetChanges(job)) > RECHECK_LIMIT) await this.whileCatchingUp(job, () => this.preVerify(job));
    // The full comparison leaves behind every change applied while it read both sides (thousands
    // under 8 writers, 185-204 ms of a 255-300 ms fence to compare again). Each round compares
    // those rows again outside the fence, leaving only what changed during the round.
    // The catch-up runs alongside each round, so the fence that follows the last one at once
    // finds few changes to apply, and the rows it compares again are those the last round saw
    // change: comparing a row by id costs less than applying it while writes are held.
    await this.catchUp(job, 'few');
    for (let round = 0; round < RECOMPARE_ROUNDS; round++) {
      if ((await this.whileCatchingUp(job, () => this.recompare(job))) <= this.settings.catchUpThreshold) break;
    }
    // The comparisons above last as long as the unit is large: a run whose time ran out, or that
    // was asked to stop (a process shutting down, which waits for its runs a bounded time and then
    // stops its servers), meanwhile stops here rather than hold writes after it should have ended.
    this.checkTimeForFence(job);
    // A unit the catalog gave a third shard meanwhile could never be published: the fence would
    // hold its writes for nothing (the flip refuses), at every run.
    const read = await this.ownerBeforeFence(job);
    if (isForeignOwner(job, read)) throw new MoveOwnerConflict(foreignOwnerMessage(job, read));
    // Which cluster the source is (sharding migration 032), read in the fence's own statement
    // below, when the mover's login may read the control file (known per pool and asked here, before
    // the fence, where not known: a refusal is kept CLUSTER_ID_RECHECK_MS, then asked again, so the
    // release may be told otherwise and follows the job's record instead, job.sourceClusterId):
    // timelines and positions are a cluster's own, and a blue/green switchover puts another cluster
    // behind the shard's address (cluster-identity.ts).
    let clusterReadable = await this.clusterIdReadable(job.from);
    // The source's timeline and its history, read before the fence (outside its budget) and
    // recorded with the fence: a read with a token of the source whose write a failover of the
    // source lost before this move tells so on the unit's new shard (sharding migration 014).
    // Read with the cluster id in the same statement (so of the one server that answered it), and
    // recorded only beside the fence's own cluster id: a switchover between this read and the
    // fence, both clusters on the same timeline number (each after a failover of its own), had
    // blue's history recorded beside green's id and timeline, and a token of green whose write
    // green held and the move copied, past where blue's timeline 1 ended, answered 410 "write
    // lost" on the unit's new shard
    // (test/integration/sharding/timeline-lost-write-switchover-fence.test.ts).
    let source = await this.sourceTimeline(job.from, clusterReadable);
    // Asked again by the read above when it was refused the id (a grant revoked since): known, no round trip.
    clusterReadable = await this.clusterIdReadable(job.from);
    let fencedCluster: string | null = null;
    this.fenceDeadline = this.now() + this.settings.fenceBudgetMs;
    let fencedOn: number | null;
    let fencedAt: string | null = null;
    try {
      // Refused the id (a grant revoked since the pool learned it may read it), the fence's
      // transaction was rolled back, nothing fenced: taken again, once, without it
      // (withClusterId). The first answer kept, every fence of the source failed so, until the
      // process restarted.
      fencedOn = await this.withClusterId(job.from, clusterReadable, (withClusterId) => {
        clusterReadable = withClusterId;
        // The lock wait is bounded from the transaction's first statement (a whole number of ms
        // written into the text), the permit's too: by what is left of the budget, the whole of
        // it for the first attempt. A fence sent again (withClusterId) was bounded by the whole
        // budget again, the first attempt's time (its round trip, the question asked again) not
        // taken off it: fence and resend together could hold the unit's writers past the budget
        // (test/integration/sharding/cluster-id-revoked-move.test.ts, h154). Spent, 1 ms: the
        // wait ends at once (LOCK_NOT_AVAILABLE, the fence not taken, as a fence the budget ran out on).
        const bounded = `${MOVER_WRITE}; set local lock_timeout = '${Math.max(1, Math.round(this.budgetLeft()))}ms'`;
        return this.write(
          job,
          job.from,
          async (client) => {
            // The timeline in the same round trip: the one the fence was taken on. And the WAL
            // insert position then (sharding migration 015): RETURNING is evaluated once the UPDATE
            // holds the fence row, so after every writer of the unit that took the row before it
            // committed (a later one waits for the fence and is refused): every commit record of a
            // write of the unit acknowledged before the fence was inserted before this position.
            // A token is the flush or the insert position read after its commit (TOKEN_POSITION_SQL
            // in token-position.ts), at most the insert position then (the flush position trails
            // it), and the insert position never goes back on a timeline, so a token read before
            // the fence is at or before it.
            // pg_current_wal_lsn() (the write position) may trail records already inserted (and
            // commits acknowledged with synchronous_commit off), so a token read just before the
            // fence could lie past it. Both are the raw insert position (past a page header when
            // the last record ended at a page boundary): compared with a token moved back to that
            // boundary (normalizeWalPosition), the fence position is at or past it all the same.
            // A token past this position names no write this stay of the unit took on this
            // timeline (a write of the unit after the fence is refused), so at or past it copied it.
            const res = await client.query<{ tli: string | null; lsn: string | null }>(
              `update write_fences set state = 'fenced', job_id = $3, updated_at = clock_timestamp()
                where kind = $1 and unit_id = $2 and (state = 'open' or (state = 'fenced' and job_id = $3))
                returning ${CURRENT_TIMELINE_SQL} as tli, pg_current_wal_insert_lsn()::text as lsn${withClusterId ? `, ${CLUSTER_ID_SQL} as cluster_id` : ''}`,
              [job.kind, job.unitId, job.id],
            );
            if (res.rowCount !== 1) throw new MoveError(`the fence row of ${job.kind} ${job.unitId} on ${job.from} is missing or held by another move`);
            const tli = res.rows[0]?.tli;
            fencedAt = res.rows[0]?.lsn ?? null;
            fencedCluster = clusterIdOfRow(res.rows[0]) ?? null;
            return tli === null || tli === undefined ? null : Number(tli);
          },
          bounded,
        );
      });
    } catch (err) {
      this.fenceDeadline = null;
      if ((err as { code?: string }).code === LOCK_NOT_AVAILABLE) return false;
      throw err;
    }
    // Taken without the id: recorded without it below (`source_cluster_id` NULL), and released
    // without it too, by whichever run releases it (see releaseFenceForward).
    // The source failed over between the read and the fence (rare): the history is read again,
    // waited for at most what is left of the budget (the fence is held meanwhile); not had by then
    // (an error, the budget spent) or of another timeline again, the timeline is recorded without
    // it (nothing known). A source that answered no timeline before the fence (the function absent
    // or refused, the mover without shard migration 031) would answer none again: it is not asked
    // while the fence holds the unit's writes.
    // Likewise a switchover between the two (another cluster answered the fence than the read):
    // the history is read again, kept only when of the fence's cluster and timeline, else none is
    // recorded (the timeline and cluster id are the fence's: nothing known of the history).
    // And a fence refused the id and taken again without it (withClusterId: a grant revoked, or a
    // switchover to a cluster where the login lacks it, since the read) after a read that carried
    // one: which cluster the fence ran on is not known, so the read's is not taken for it; the
    // history is read again, as for another cluster, without the id (the pool now refused it), and
    // kept by timeline alone as a login refused from the start keeps it. Taken for the fence's,
    // blue's history (read before a switchover) stood beside green's timeline 2 and fence, and a
    // green token whose write green held, past where blue's timeline 1 ended, answered 410 on the
    // unit's new shard (test/integration/sharding/timeline-lost-write-switchover-fence.test.ts, h152).
    const ofFence = (read: SourceTimeline): boolean => read.timeline === fencedOn && (clusterReadable ? read.clusterId === fencedCluster : read.clusterId === undefined);
    if (!ofFence(source) && fencedOn !== null && source.timeline !== null) {
      const unknown: SourceTimeline = { timeline: null, history: null };
      source = await this.withinBudget(
        this.sourceTimeline(job.from, clusterReadable).catch(() => unknown),
        unknown,
      );
    }
    if (!ofFence(source)) source = { timeline: fencedOn, history: null };
    try {
      // A fence taken again (a resumed run) overwrites what the last one recorded.
      await this.heldToFence(() =>
        this.updateJob(
          'fenced_at = coalesce(fenced_at, clock_timestamp()), source_timeline = $2, source_history = $3, source_fence_lsn = $4::pg_lsn, source_cluster_id = $5',
          [source.timeline, source.history, fencedAt, fencedCluster],
          job,
        ),
      );
    } catch (err) {
      if ((err as { code?: string }).code !== QUERY_CANCELED) throw err;
      // The budget ran out on the catalog (see heldToFence): no flip was sent, the fence goes back.
      await this.unfence(job);
      return false;
    }
    return true;
  }

  /** `work`, or `otherwise` once the fence budget is spent (`work` goes on, its result unused). */
  private async withinBudget<T>(work: Promise<T>, otherwise: T): Promise<T> {
    work.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    const spent = new Promise<T>((resolve) => {
      timer = setTimeout(() => resolve(otherwise), this.budgetLeft());
    });
    try {
      return await Promise.race([work, spent]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Whether the mover's login may read `shard`'s cluster id ({@link clusterIdReadable}, known per
   * pool: a "may" kept, a refusal kept CLUSTER_ID_RECHECK_MS and then asked again, so not always
   * the answer the fence had: the release follows job.sourceClusterId, not this). The answer is kept for the shard's own pool, never for the bounded wrapper
   * {@link pool} makes at each call (a new one every time): kept for the wrapper, it was never
   * found again, and every fence sent the question again (a round trip before each fence, and
   * where the login is refused, a failed statement in the shard's log at each one;
   * test/integration/sharding/timeline-lost-write-blue-green.test.ts). Known, no connection is
   * taken (the release asks too, while the fence is held); not known, the question is sent on a
   * connection of the wrapper, bounded as the run's other checkouts.
   */
  private async clusterIdReadable(shard: string): Promise<boolean> {
    const pool = this.pool(shard);
    const own = this.options.shards.get(shard) ?? pool;
    const known = clusterIdReadableKnown(own);
    if (known !== undefined) return known;
    const client = await pool.connect();
    let broken: Error | undefined;
    try {
      return await clusterIdReadable(own, client);
    } catch (error) {
      broken = error instanceof Error ? error : new Error(String(error));
      throw error;
    } finally {
      client.release(broken);
    }
  }

  /**
   * `run` (a statement in a write transaction of its own on `shard`) with `readable`, whether the
   * mover's login may read `shard`'s cluster id ({@link clusterIdReadable}); when given true and
   * refused ({@link clusterIdRefused}: 42501, the grant revoked since the pool learned it; 42883),
   * the answer is forgotten, asked again, and `run` sent once more with the new one (false:
   * without the id). Sending it again is safe: the refusal failed its statement and rolled its
   * transaction back, nothing of it was done. Refused again (another part of the statement was,
   * the question answered yes), the error is thrown as before.
   */
  private async withClusterId<T>(shard: string, readable: boolean, run: (readable: boolean) => Promise<T>): Promise<T> {
    if (!readable) return run(false);
    try {
      return await run(true);
    } catch (error) {
      if (!clusterIdRefused(error)) throw error;
      forgetClusterIdReadable(this.options.shards.get(shard) ?? this.pool(shard));
      return run(await this.clusterIdReadable(shard));
    }
  }

  /**
   * `shard`'s primary timeline and its history file's text (shard migration 027's
   * timeline_history(), which the mover may execute from shard migration 031 on). Nulls when it
   * cannot be had: the function absent (42883) or refused (42501), a NULL history (its owner may
   * not read the file); other errors (the connection) are thrown, as any of the move's queries.
   * `withClusterId` (the login may read the control file): with the cluster id of the server that
   * answered, in the same statement (null when it answered none), so that the history is never
   * paired with another cluster's id read by another statement.
   */
  private async sourceTimeline(shard: string, withClusterId: boolean): Promise<SourceTimeline> {
    const own = this.options.shards.get(shard) ?? this.pool(shard);
    // The history refused the mover's login lately (see `historyRefusedAt`): not asked again yet.
    const recheck = refusalRecheck(own);
    if (recheck.now() - (historyRefusedAt.get(own) ?? Number.NEGATIVE_INFINITY) < recheck.intervalMs) return { timeline: null, history: null };
    try {
      const { rows } = await this.pool(shard).query<{ timeline: string | null; history: string | null; cluster_id?: string }>(
        `select timeline::text as timeline, history${withClusterId ? `, ${CLUSTER_ID_SQL} as cluster_id` : ''} from timeline_history()`,
      );
      const row = rows[0];
      return row === undefined || row.timeline === null
        ? { timeline: null, history: null }
        : { timeline: Number(row.timeline), history: row.history, ...(withClusterId ? { clusterId: clusterIdOfRow(row) ?? null } : {}) };
    } catch (err) {
      if (!hasSqlState(err, UNDEFINED_FUNCTION, INSUFFICIENT_PRIVILEGE)) throw err;
      // Refused the cluster id (a grant revoked since the pool learned it may read it), or the
      // history itself: the answer is forgotten and asked again; refused the id now, the history
      // is read again without it (kept, the fence that follows failed too, and the history was
      // lost to the move's record; cluster-identity.ts).
      if (withClusterId) {
        forgetClusterIdReadable(own);
        if (!(await this.clusterIdReadable(shard))) return this.sourceTimeline(shard, false);
      }
      // The history itself was refused (read without the id, or the id asked again and allowed):
      // kept for the pool, as a refusal of the id is (see `historyRefusedAt`).
      historyRefusedAt.set(own, recheck.now());
      return { timeline: null, history: null };
    }
  }

  /**
   * Throws {@link MovePaused} (no fence taken) unless the run has the time to hold a fence and give
   * it back: its time not up (the driver checks that before the step, but the comparisons inside
   * it, before the fence, can cross it), and its abandon time farther than the fenced part's own
   * bound (the budget and {@link FENCED_STATEMENT_SLACK_MS}) and the release's (that slack again):
   * a fence taken 3 s before it held writes past it, with the function's timeout close behind.
   */
  private checkTimeForFence(job: MoveJob): void {
    const abandonIn = this.options.abandonInMs?.();
    const needed = this.settings.fenceBudgetMs + 2 * this.slackMs;
    if (this.options.timeUp?.() || (abandonIn !== undefined && abandonIn < needed)) {
      throw new MovePaused(`move job #${job.id}: this run has too little time left to fence ${job.kind} ${job.unitId} (it needs ${needed} ms before it is abandoned); the next run resumes it in ${job.state}`);
    }
  }

  async unfence(job: MoveJob): Promise<void> {
    await this.givingFenceUp(() => this.reopenFence(job));
  }

  /** Runs `work`, which gives this run's fence up (reopens or releases it), with the slack of {@link releasingFence}. */
  private async givingFenceUp(work: () => Promise<void>): Promise<void> {
    this.fenceDeadline = null;
    this.releasingFence = true;
    try {
      await work();
    } finally {
      this.releasingFence = false;
    }
  }

  private async reopenFence(job: MoveJob): Promise<void> {
    // The fence row names the job, not the run: a run that lost its lease must not open a fence
    // that the run holding the job now has taken. The shard refuses it (the permit).
    await this.write(job, job.from, (c) =>
      c.query(
        `update write_fences set state = 'open', job_id = null, updated_at = clock_timestamp()
          where kind = $1 and unit_id = $2 and state = 'fenced' and job_id = $3`,
        [job.kind, job.unitId, job.id],
      ),
    );
  }

  /** Changes logged on the target since its capture started (see {@link preVerify}). */
  private async targetChanges(job: MoveJob): Promise<number> {
    const { rows } = await this.pool(job.to).query<{ n: number }>('select count(*)::int as n from move_changes where job_id = $1', [job.id]);
    return rows[0]?.n ?? 0;
  }

  /**
   * Brings the comparison before the fence forward: the rows it left to compare again, and the
   * rows the target's log names now (entries W), are read again on both sides by id, in one
   * snapshot each taken after W was read, with the source's pending changes; the rows to compare
   * under the fence become those that differ now or have a change pending, and W is consumed.
   * Returns how many rows are left to compare again (plus target changes logged since).
   *
   * It keeps the invariant {@link preVerify} sets up, that a row neither left to compare again
   * nor named by the target's log is equal on both sides and unchanged since: a row compared
   * here equal, with no source change pending, that changes later on the target is logged there
   * after W was read (so not consumed); a later source change is either pending under the fence
   * or applied by the catch-up, which writes the target after W was read and is logged there. A
   * row not compared here was covered before and is not in W.
   */
  private async recompare(job: MoveJob): Promise<number> {
    const pre = this.pre;
    if (pre?.jobId !== job.id) return Number.POSITIVE_INFINITY;
    const target = this.pool(job.to);
    const { rows: logged } = await target.query<{ seq: string; t: TableName; id: string }>('select seq, table_name as t, row_id::text as id from move_changes where job_id = $1', [job.id]);
    const ids = rowIds(pre.recheck);
    for (const { t, id } of logged) ids[t]?.add(id);
    const [source, now] = await Promise.all([
      inTransaction(this.pool(job.from), SNAPSHOT, async (client) => {
        const { rows } = await client.query<{ t: TableName; id: string }>('select table_name as t, row_id::text as id from move_changes where job_id = $1', [job.id]);
        return { pending: rows, hashes: (await this.rowHashes(client, job, ids)).hashes };
      }),
      inTransaction(target, SNAPSHOT, async (client) => (await this.rowHashes(client, job, ids)).hashes),
    ]);
    pre.source.replace(ids, source.hashes);
    pre.target.replace(ids, now);
    const recheck = noRowIds();
    for (const { t, id } of source.pending) recheck[t]?.add(id);
    for (const { name } of TABLES) for (const id of ids[name]) if (source.hashes[name].get(id) !== now[name].get(id)) recheck[name].add(id);
    pre.recheck = recheck;
    await this.write(job, job.to, (c) => c.query('delete from move_changes where seq = any($1::bigint[])', [logged.map((l) => l.seq)]));
    return TABLES.reduce((n, { name }) => n + recheck[name].size, 0) + (await this.targetChanges(job));
  }

  /**
   * Counts and checksums of the unit's rows, per table, on one shard, within `timeoutMs`. The
   * checksum is the sum of each row's 64-bit `hash_record_extended` (order-independent, so no
   * sort; hashing the binary values avoids formatting every row as text). Both shards run the
   * same PostgreSQL build, so equal rows hash equally.
   */
  private async summarise(pool: pg.Pool, job: MoveJob, timeoutMs: number): Promise<TableSummaries> {
    return inTransaction(pool, SNAPSHOT, async (client) => {
      // A 100,000-row aggregate can cross jit_above_cost; compiling it would only lengthen the fence.
      await client.query(`select set_config('jit', 'off', true), set_config('statement_timeout', $1, true)`, [`${Math.max(1, Math.ceil(timeoutMs))}ms`]);
      const out: Record<string, { rows: number; checksum: string }> = {};
      for (const { name } of TABLES) {
        const f = this.unitFilter(job, name, 1, 't.');
        const { rows } = await client.query<{ n: string; sum: string }>(
          `select count(*) as n, coalesce(sum(pg_catalog.hash_record_extended(t, 0)), 0)::text as sum from ${name} t where ${f.sql}`,
          f.params,
        );
        out[name] = { rows: Number(rows[0]?.n ?? 0), checksum: rows[0]?.sum ?? '0' };
      }
      return out;
    });
  }

  /**
   * Runs a comparison while the catch-up keeps applying changes: a comparison reads the unit's
   * rows on both sides, and changes that waited for it would all be applied under the fence.
   * Rows the catch-up writes meanwhile are logged on the target and compared again.
   */
  private async whileCatchingUp<T>(job: MoveJob, comparison: () => Promise<T>): Promise<T> {
    let comparing = true;
    const compared = comparison().finally(() => {
      comparing = false;
    });
    const catchingUp = (async () => {
      while (comparing) {
        if ((await this.catchUpPass(job)) < this.settings.catchUpThreshold) await this.sleep(10);
      }
    })();
    const [a, b] = await Promise.allSettled([compared, catchingUp]);
    if (a.status === 'rejected') throw a.reason;
    if (b.status === 'rejected') throw b.reason;
    return a.value;
  }

  /**
   * Compares both sides row by row before the fence, so that the comparison under the fence
   * need only look at the rows changed since: its cost is bounded by what changed, not by the
   * size of the unit (the full count-and-checksum scan of 100,000 rows on both shards was the
   * longest part of the fence).
   *
   * First the target starts capturing its own changes to the unit (a `move_captures` row on the
   * target, the same trigger as on the source), so that every write there from now on, the
   * catch-up's or anyone's, is logged. The source is read in one snapshot S, with its change log
   * as S sees it, and the target in one snapshot. A row is compared again under the fence if
   * it differed here, or had a change logged on the source visible to S (not yet applied), or
   * is named by the target's log then. Every other row was equal here and has not changed on
   * either side since: a source change after S is logged, applied by the catch-up (all of it,
   * under the fence) and so logged on the target; a target change after its snapshot is logged
   * on the target. A mover resumed after a crash compares again from the start.
   */
  private async preVerify(job: MoveJob): Promise<void> {
    this.pre = null;
    await this.checkUnitSize(job);
    const targetPool = this.pool(job.to);
    await this.write(job, job.to, async (c) => {
      await c.query(`insert into move_captures (job_id, kind, unit_id, excluded_keys) values ($1, $2, $3, $4) on conflict (job_id) do nothing`, [job.id, job.kind, job.unitId, job.excludedKeys]);
      await c.query('delete from move_changes where job_id = $1', [job.id]);
    });
    const [source, target] = await Promise.all([
      inTransaction(this.pool(job.from), SNAPSHOT, async (client) => {
        const { rows } = await client.query<{ t: TableName; id: string }>('select table_name as t, row_id::text as id from move_changes where job_id = $1', [job.id]);
        return { pending: rows, ...(await this.rowHashes(client, job, null)) };
      }),
      inTransaction(targetPool, SNAPSHOT, (client) => this.rowHashes(client, job, null)),
    ]);
    const recheck = noRowIds();
    for (const { t, id } of source.pending) recheck[t]?.add(id);
    for (const { name } of TABLES) for (const id of differingIds(source.hashes[name], target.hashes[name])) recheck[name].add(id);
    this.pre = { jobId: job.id, source: new SideHashes(source.hashes, source.totals), target: new SideHashes(target.hashes, target.totals), recheck };
  }

  /**
   * The unit's size was checked when the move was planned; it may have grown since (a long copy
   * under writers). The comparison holds every row's hash of both sides in memory, in one string
   * per table and side: past the limit it would run the worker out of memory, or past V8's
   * longest string, on every run. So it stops here, before reading, naming the counts.
   */
  private async checkUnitSize(job: MoveJob): Promise<void> {
    const limit = this.settings.maxUnitRows;
    if (limit === undefined) return;
    const params: unknown[] = [];
    const counts = TABLES.map(({ name }) => {
      const f = this.unitFilter(job, name, 1 + params.length);
      params.push(...f.params);
      return `(select count(*) from ${name} where ${f.sql}) as ${name}`;
    });
    const { rows } = await this.pool(job.from).query<Record<TableName, string>>(`select ${counts.join(', ')}`, params);
    for (const [table, n] of Object.entries(rows[0] ?? {})) {
      if (Number(n) > limit) {
        throw new MoveError(
          `${job.kind} ${job.unitId} has grown to ${Number(n).toLocaleString('en')} rows in ${table} on ${job.from} since it was planned; one move compares at most ${limit.toLocaleString('en')} rows per table: cancel this move (DELETE /shards/moves/${job.id}) and move the unit's keys in smaller units`,
        );
      }
    }
  }

  /**
   * Per table, the hash of each of the unit's rows (`only` null), or of the given rows only
   * (looked up by id), with their count and sum; one statement for both tables, each table's
   * hashes one text value in id order (see `move-hashes.ts` for why not a row each).
   */
  private async rowHashes(client: pg.PoolClient, job: MoveJob, only: RowIds | null): Promise<{ hashes: RowHashes; totals: HashTotals }> {
    const hashes: RowHashes = perTable(() => new HashRun(''));
    const totals: HashTotals = perTable(() => ({ rows: 0, sum: 0n }));
    const params: unknown[] = [];
    const parts: string[] = [];
    for (const { name } of TABLES) {
      const ids = only === null ? null : [...only[name]];
      if (ids !== null && ids.length === 0) continue;
      const f = this.unitFilter(job, name, params.length + 2, 'x.');
      parts.push(
        `select '${name}' as t, count(*)::int as n, coalesce(sum(h), 0)::text as sum, ${HASH_RUN_SQL} as run
           from (select x.id, pg_catalog.hash_record_extended(x, 0) as h from ${name} x
                  where ($${params.length + 1}::uuid[] is null or x.id = any($${params.length + 1}::uuid[])) and ${f.sql}) r`,
      );
      params.push(ids, ...f.params);
    }
    if (parts.length === 0) return { hashes, totals };
    const { rows } = await client.query<{ t: TableName; n: number; sum: string; run: string }>(parts.join(' union all '), params);
    for (const r of rows) {
      totals[r.t] = { rows: r.n, sum: BigInt(r.sum) };
      hashes[r.t] = new HashRun(r.run);
    }
    return { hashes, totals };
  }

  async verify(job: MoveJob): Promise<VerifyOutcome> {
    // Read already by the catch-up before the fence (one round trip more, held under it, only in a
    // run that began here).
    await this.setAside(job);
    const left = this.budgetLeft();
    if (left <= 0) return { kind: 'over_budget' };
    // A directory move's key: its rows under another slot than its id's, read again under the
    // fence, alongside the comparison (two owner-index probes, no round trip more). Checked at the
    // run's preparation only (checkKeySlotOnBothSides), a run resumed past it (the job
    // `catching_up`) did not see a row of the key restored under a slot s after it: a move of s
    // copied it to the key's target, the key's flip then made that copy the key's live row there,
    // and the slot move's catch-up, its list of keys set aside read before the flip, put the
    // source's older row over a write made to it on the target since (issue #15, h169,
    // moves-slot-set-aside-between-runs.test.ts). Found, the move is rolled back as failed under
    // its fence, the key's writes never sent to the target.
    const keyRows = job.kind === 'directory' ? this.keyRowsUnderOtherSlotsOnBothSides(job) : Promise.resolve(null);
    keyRows.catch(() => undefined);
    const pre = this.pre?.jobId === job.id ? this.pre : null;
    let source: TableSummaries;
    let target: TableSummaries;
    let differing = 0;
    try {
      if (pre) {
        const changed = await this.verifyChanged(job, pre, left);
        [source, target, differing] = [changed.source, changed.target, changed.differing];
      } else {
        [source, target] = await Promise.all([this.summarise(this.pool(job.from), job, left), this.summarise(this.pool(job.to), job, left)]);
      }
    } catch (err) {
      if ((err as { code?: string }).code === QUERY_CANCELED) return { kind: 'over_budget' };
      throw err;
    }
    const keyRowsFound = await keyRows;
    if (keyRowsFound !== null) return { kind: 'differ', detail: `verification failed: ${keyRowsFound}` };
    if (this.budgetLeft() <= 0) return { kind: 'over_budget' };
    try {
      await this.heldToFence(() => this.updateJob('source_summary = $2, target_summary = $3', [JSON.stringify(source), JSON.stringify(target)], job));
    } catch (err) {
      // Cancelled at the budget's end (see heldToFence): nothing was decided.
      if ((err as { code?: string }).code === QUERY_CANCELED) return { kind: 'over_budget' };
      throw err;
    }
    const bad = TABLES.filter(({ name }) => source[name]?.rows !== target[name]?.rows || source[name]?.checksum !== target[name]?.checksum).map(
      ({ name }) => `${name}: source ${source[name]?.rows ?? 0} rows, target ${target[name]?.rows ?? 0} rows${source[name]?.rows === target[name]?.rows ? ' (checksums differ)' : ''}`,
    );
    if (bad.length === 0 && differing === 0) return { kind: 'equal' };
    return { kind: 'differ', detail: `verification failed: ${bad.length > 0 ? bad.join('; ') : `${differing} row(s) differ`}` };
  }

  /**
   * The fenced half of a comparison prepared by {@link preVerify}: the rows it named, and the
   * rows the target's log names now, are read on both sides (by id) and compared one by one;
   * the totals recorded are the earlier totals with those rows replaced by what they are now.
   */
  private async verifyChanged(job: MoveJob, pre: PreVerified, timeoutMs: number): Promise<{ source: TableSummaries; target: TableSummaries; differing: number }> {
    const { rows: written } = await this.pool(job.to).query<{ t: TableName; id: string }>('select distinct table_name as t, row_id::text as id from move_changes where job_id = $1', [job.id]);
    const ids = rowIds(pre.recheck);
    for (const { t, id } of written) ids[t]?.add(id);
    const [source, target] = (await Promise.all(
      [job.from, job.to].map((shard) =>
        // The timeout is a whole number of ms written into the text: one round trip with the begin.
        inTransaction(this.pool(shard), `${SNAPSHOT}; set local statement_timeout = '${Math.max(1, Math.ceil(timeoutMs))}ms'`, async (client) => (await this.rowHashes(client, job, ids)).hashes),
      ),
    )) as [RowHashes, RowHashes];
    let differing = 0;
    for (const { name } of TABLES) for (const id of ids[name]) if (source[name].get(id) !== target[name].get(id)) differing += 1;
    return { source: pre.source.totalsWith(ids, source), target: pre.target.totalsWith(ids, target), differing };
  }

  /**
   * Runs `transaction`, a catalog transaction that may write a directory move's entry, and then,
   * the transaction ended (committed or rolled back) whatever its outcome, forgets the key's cached
   * lookup in this process: one made while the transaction was open read the entry it replaced.
   */
  private async forgettingCachedOwner<T>(job: MoveJob, transaction: () => Promise<T>): Promise<T> {
    try {
      return await transaction();
    } finally {
      if (job.kind === 'directory') this.options.directory.invalidate(job.unitId);
    }
  }

  /**
   * Pins a directory move's key to its source where it has no entry, in the caller's catalog
   * transaction: `{ pinned }` the new entry, or `{ kept }` the entry an operator wrote since the
   * caller read none (theirs to keep; null if it was deleted again meanwhile).
   */
  private async pinToSourceOverNoEntry(job: MoveJob, catalog: pg.ClientBase): Promise<{ readonly pinned: DirectoryEntry } | { readonly kept: DirectoryEntry | null }> {
    return this.options.directory.set(job.unitId, job.from, this.settings.actor, catalog, null, { rowsLeftOn: publisherOf(job) }).then(
      (pinned) => ({ pinned }),
      (err: unknown) => {
        if (!(err instanceof DirectoryVersionConflictError)) throw err;
        return { kept: err.actual };
      },
    );
  }

  /**
   * Runs `fn` in a catalog transaction with the job row locked; rolls back when it throws. READ
   * COMMITTED whatever the login's or the database's default: a pin over no entry reads the slot's
   * owner after waiting for the slot's pin lock (see {@link ownerRead}), and must see the map a
   * publication committed meanwhile (a REPEATABLE READ default read the transaction's first snapshot;
   * {@link LOCKED_JOB_BEGIN}).
   */
  private async withLockedJob<T>(job: MoveJob, fn: (row: MoveJob) => Promise<T | RollbackWith<NoInfer<T>>>, begin = LOCKED_JOB_BEGIN, onBegun?: () => void): Promise<T> {
    return this.catalog.transaction<T>(begin, async () => {
      onBegun?.();
      const { rows } = await this.catalog.query<JobRow>(`select * from catalog.move_jobs where id = $1 and ${this.mine} for update`, [job.id]);
      if (!rows[0]) {
        await this.assertLease(job);
        throw new MoveError(`move job #${job.id} has disappeared from the catalog`);
      }
      return fn(toJob(rows[0]));
    });
  }

  /**
   * Who the catalog names as the unit's owner now, with the version that says so, and for a slot
   * the map read (the flip builds the next version from it: one read of the 4096-slot map per
   * flip, not one to check and one to build). A directory key without an entry routes by hash:
   * `routesTo` is then its slot's owner (an operator who deleted the move's pin sent the key's
   * writes there, a shard that may be neither side of the move). `publishing`: the caller's
   * transaction publishes the key's entry on the strength of that answer, so the slot's owner is
   * read under a lock no map publication passes until it ends (see {@link ownerRead}): a map
   * published between the read and the commit sent the key's writes by hash to a third shard
   * while the flip pinned it to the target, out of sight of its readers.
   */
  private currentOwner(job: MoveJob, publishing: HashRouteLock = false): Promise<OwnerRead & { map: SlotMap | null }> {
    return this.catalog.use(async (catalog) => {
      if (job.kind === 'directory') return { ...(await ownerRead(job, this.options.directory, this.options.slotMaps, catalog, publishing)), map: null };
      const map = await this.options.slotMaps.current(catalog);
      const owner = map.assignments[Number(job.unitId)] ?? null;
      return { owner, version: map.version, by: null, routesTo: owner, map };
    });
  }

  /** As {@link currentOwner}, without the slot map: a slot's owner alone (a slot move reads the whole map once per run, at its flip). */
  private ownerBeforeFence(job: MoveJob): Promise<OwnerRead> {
    return this.catalog.use((catalog) => ownerRead(job, this.options.directory, this.options.slotMaps, catalog));
  }

  /**
   * Publishes `job.to` as the unit's owner, compare-and-set against the owner read (`read`, from
   * {@link currentOwner}): the next slot map version built from the map read, or the directory
   * entry written only over the entry read. A change made since the read (another publisher's map,
   * an operator's directory change: nothing locks the entry between the read and the write) fails
   * it ({@link SlotMapVersionConflictError}, {@link DirectoryVersionConflictError}) and nothing is
   * published; the caller reads the owner again. Answers the version published.
   */
  private async publishOwner(job: MoveJob, read: { owner: string | null; version: number; map: SlotMap | null }, reason: string): Promise<number> {
    return this.catalog.use(async (catalog) => {
      // Names this job as the writer of the map or the pin, for this transaction alone (every
      // caller publishes in one, the job row locked): sharding migrations 011 (a moved key's pin,
      // CAF07) and 012 (a moved slot's owner, CAF08) refuse the change by anyone else, and let this
      // one through while the job is unfinished and publishes its own target for its own unit.
      await catalog.query(`select set_config('ca_dms.map_writer', $1, true), set_config('ca_dms.pin_writer', $1, true)`, [publisherOf(job)]);
      // The move carries the unit's rows: the stores' count of the rows left on the old owner
      // (issue #15, for owner changes outside a move) does not apply.
      const moving = { rowsLeftOn: publisherOf(job) };
      if (read.map !== null) return (await this.options.slotMaps.publish(moveSlots(read.map, [Number(job.unitId)], job.to), this.settings.actor, reason, catalog, moving)).map.version;
      const expected: ExpectedDirectoryEntry = read.owner === null ? null : { shardId: read.owner, version: read.version };
      return (await this.options.directory.set(job.unitId, job.to, this.settings.actor, catalog, expected, moving)).version;
    });
  }

  async flip(job: MoveJob): Promise<FlipOutcome<MoveJob>> {
    const reason = `move job #${job.id}: ${job.kind} ${job.unitId} from ${job.from} to ${job.to}`;
    for (let attempt = 1; ; attempt++) {
      // Held to the fence deadline on the client side too (see holdToDeadline): at the deadline
      // the statement running then is cancelled. `statement_timeout` counts from each statement's
      // own start: the locked read of the job and the read of the map, each waiting on a lock for
      // less than what was left when the flip began, held the fence for both waits together (1 s +
      // the budget left, past a 1.5 s budget). And it does not bound the COMMIT at all: a commit
      // waiting for a synchronous standby that is away waited until the run's catalog bound closed
      // the connection (the budget + 5 s), the flip then unresolved, and the fence stayed shut
      // until the next run could tell. Cancelled, that wait ends with the commit made on the
      // catalog (PostgreSQL answers COMMIT with a warning: committed locally, maybe not yet on the
      // standby): the flip is known to have landed and the fence is released forward. A commit
      // cancelled before its commit record fails (57014) and committed nothing. No cancel is sent
      // at the rollback of a flip given up: it would leave the connection in the failed transaction.
      // Armed before the flip's turn on the connection, as heldToFence is: a lease renewal queued
      // ahead of it and waiting on a lock of the job table held the flip's BEGIN, unguarded, until
      // the run's catalog bound closed the connection (6.0 s for a 1 s budget). Cancelled, that
      // renewal fails harmlessly (the lease lasts its TTL), and so may the flip's BEGIN then (over budget).
      let cancellable = true;
      // The connection itself is the run's catalog bound's to close (see the constructor).
      const guard: ClientDeadline = holdToDeadline(this.catalog.client, Date.now() + this.budgetLeft(), { mayCancel: () => cancellable, graceMs: this.slackMs + DEADLINE_GRACE_MS });
      try {
        // The rollback after a cancel is made in the flip's own turn: queued after it, it waited
        // behind a lease renewal sent meanwhile (and waiting on the same lock), unguarded.
        const outcome = await this.catalog.use(async () => {
          try {
            return await this.forgettingCachedOwner(job, () =>
              this.withLockedJob<FlipOutcome<MoveJob>>(
                job,
                async (row) => {
                  try {
                    const result = await this.flipLocked(job, row, reason);
                    cancellable = !(result instanceof RollbackWith) && result.kind === 'flipped';
                    return result;
                  } catch (err) {
                    cancellable = false;
                    throw err;
                  }
                },
                `${LOCKED_JOB_BEGIN}; set local statement_timeout = '${Math.max(1, Math.ceil(this.budgetLeft()))}ms'`,
              ),
            );
          } finally {
            guard.disarm();
            if (guard.cancelSent) {
              // The server passes a cancel request on as two signals (see ClientDeadline.settled):
              // the second can fail the transaction's rollback, which would leave it open and failed
              // under the run's next statements. Once none is on its way, any such transaction is
              // ended (a rollback outside one only warns).
              await guard.settled();
              await this.catalog.query('rollback').catch(() => undefined);
            }
          }
        });
        // Anything but a flip was rolled back (or published nothing): no flip of this run can
        // commit now, and a later fence attempt that loses the catalog may give its fence back.
        if (outcome.kind !== 'flipped') this.publishing = false;
        return outcome;
      } catch (err) {
        // Cancelled (by the server's statement timeout or this run's request, in a statement or in
        // the commit before it committed: see above): rolled back, nothing published.
        if ((err as { code?: string }).code === QUERY_CANCELED) {
          this.publishing = false;
          return { kind: 'over_budget' };
        }
        // Another publisher (a move from another source) took this map version, or someone changed
        // the directory entry since the flip read it: read it again (the change decides the outcome).
        if (!(err instanceof SlotMapVersionConflictError || err instanceof DirectoryVersionConflictError) || attempt >= 20) throw err;
        // Refused, the publication inserted nothing.
        this.publishing = false;
      } finally {
        // Also when the flip never had its turn (the connection closed under the holder before it).
        guard.disarm();
        await guard.settled();
      }
    }
  }

  /**
   * The body of one flip attempt, with the job row locked. The server ends a statement of the
   * flip (a lock wait on the map, say) within what is left of the budget: a catalog that is slow
   * but answers fails it as over budget, its transaction rolled back. `statement_timeout` counts
   * from each statement's own start, though: so the publication gets what is left when it is
   * sent, the transaction commits only while the budget lasts, and the client cancels what runs
   * at the deadline (see {@link flip}).
   */
  private async flipLocked(job: MoveJob, row: MoveJob, reason: string): Promise<FlipOutcome<MoveJob> | RollbackWith<FlipOutcome<MoveJob>>> {
    // An outcome that publishes nothing rolls back rather than commit: the row lock gave the
    // transaction an id, so its COMMIT would wait for a synchronous standby of the catalog that is
    // away, and only a commit that publishes is cancelled at the deadline (see flip). A cancelled
    // move held its fence 6.0 s (budget 1 s) on that COMMIT, until the run's bound closed the connection.
    if (row.flipStarted) return new RollbackWith<FlipOutcome<MoveJob>>({ kind: 'flipped', job: row });
    if (row.cancelRequested || row.rollbackTo !== null) return new RollbackWith<FlipOutcome<MoveJob>>({ kind: 'cancelled', job: row });
    if (this.budgetLeft() <= 0) return new RollbackWith<FlipOutcome<MoveJob>>({ kind: 'over_budget' });
    // A key without an entry (its pin deleted since the source's preparation) is published over no
    // entry, under its slot's pin lock (see ownerRead), which a map published by hand holds FOR
    // UPDATE through its fence and its count of the slot's rows on the shards: seconds on a large
    // slot, each shard within its count bound. The flip waits for it with the source fenced, so it
    // waits no longer than what is left of its fence budget, the bound of every other wait of the
    // flip (the job row, the map's SHARE lock: the statement timeout above), and not the lock's own
    // 5 s (SLOT_PIN_LOCK_WAIT_MS), the bound of pins made with no fence held: with the default
    // budget (2 s) the statement timeout ended the wait first, as over budget, but a budget past 5
    // s had the wait fail the run at 5 s (a MoveError: the fence given back and the move stopped
    // until its next run, though its budget allowed the wait, or a retry at its next fence attempt
    // would have found the lock free). Not shorter: the lock conflicts only with a change of the
    // slot's pinned keys (a publication by hand, a slot move's plan, which holds it for a read of
    // the directory), rare and mostly brief, and giving the fence up costs a new fence, catch-up
    // and verification, writes held again. A wait that ends unlocked is a flip over budget, as a
    // lock wait cut by the statement timeout is: nothing published, the transaction rolled back,
    // the fence given back, and the cutover tried again at its next fence attempt (the next run,
    // attempts spent), when the publication has decided: a key it sent by hash to a third shard
    // fails the move (owner-change-dirmove-flip-slot-race.test.ts; docs/sharding-spec.md section
    // 9). The wait ends FLIP_SLOT_LOCK_MARGIN_MS before the deadline, by its own lock_timeout: at
    // the deadline itself the run's cancel (see flip) ended it first, the same outcome, but
    // recorded as "the flip ran out of time" with no word of the slot's lock it waited for.
    let read: OwnerRead & { map: SlotMap | null };
    try {
      read = await this.currentOwner(row, { waitMs: Math.max(1, this.budgetLeft() - FLIP_SLOT_LOCK_MARGIN_MS), again: 'the flip gave its fence up as over budget and tries again at its next fence attempt' });
    } catch (err) {
      if (err instanceof MoveSlotLockBusy && err.refusal === 'timeout') return new RollbackWith<FlipOutcome<MoveJob>>({ kind: 'over_budget', detail: err.message });
      throw err;
    }
    const { owner, version } = read;
    // Someone else already names the target (an operator pinned the key there, another publisher
    // gave it the slot) while this run verified the sides equal under its fence: no write of the
    // unit was taken on the target meanwhile (its fence says incoming), so that change is this
    // move's publication, and the flip is recorded over it. Refused as a conflict, the job could
    // neither flip nor be cancelled (a rollback is refused while the catalog names the target),
    // and every write of the unit, routed to the target, was refused for good.
    const publishedAlready = owner === job.to;
    if (isForeignOwner(job, read)) return new RollbackWith<FlipOutcome<MoveJob>>({ kind: 'conflict', detail: foreignOwnerMessage(job, read) });
    const left = this.budgetLeft();
    if (left <= 0) return new RollbackWith<FlipOutcome<MoveJob>>({ kind: 'over_budget' });
    await this.catalog.query(`set local statement_timeout = '${Math.max(1, Math.ceil(left))}ms'`);
    // Set even when nothing is published: the flip's record commits with this transaction.
    this.publishing = true;
    const after = publishedAlready ? version : await this.publishOwner(job, read, reason);
    const flipped = await this.updateJob('flip_started_at = clock_timestamp(), map_version_after = $2', [after], job);
    // Past the budget the run gives the fence up: nothing may be published then.
    if (this.budgetLeft() <= 0) return new RollbackWith<FlipOutcome<MoveJob>>({ kind: 'over_budget' });
    return { kind: 'flipped', job: flipped };
  }

  /**
   * Marks the source's fence `moved`, then opens the target's, and records when writes were let
   * through. In that order because readers take a `fenced` source as current (nothing can be
   * written anywhere while it holds): were the target opened first, a write acknowledged there
   * would be missing from what a reader holding the old map reads on the source until the
   * second commit (or, should the mover die between the two, until the job is resumed). This
   * way a reader or writer sent to either shard in between finds `moved` or `incoming`, and
   * waits for the target to open.
   */
  async releaseFence(job: MoveJob): Promise<void> {
    // Read by the catch-up before the fence in a run that got there; in one that begins here (past
    // the flip) a source not answering must not keep the fence from being given up: its last
    // catch-up then filters by the excluded keys alone (the rows set aside take no write through
    // the triggers, so none is captured), and the clean-up reads them again.
    await this.setAside(job).catch(() => undefined);
    await this.givingFenceUp(() => this.releaseFenceForward(job));
  }

  private async releaseFenceForward(job: MoveJob): Promise<void> {
    const version = job.mapVersionAfter ?? 0;
    // The source's timeline now, in the same round trip: a source that failed over since the
    // fence (its address reaching a promoted replica) ran the final catch-up, the verification
    // and the flip on a timeline that may lack writes acknowledged before the fence, so the
    // fence's position no longer vouches for the copy (sharding migration 015's
    // write_copied_off would tell such a write copied). Recorded below.
    // And whether the fence row was still this job's (`fenced`, or `moved` by a run of this job
    // that released already): the statement's snapshot, taken before the UPDATE waited for the
    // writers holding the row. A replica promoted in the source's place that never received the
    // fence's commit has the row `open`: it took writes of the unit after the final catch-up.
    // And whether the source's change log of the job held anything then (`logged`, same
    // snapshot): a release repeated after its drain below failed (this run's release forward
    // after the error, or a resumed run) finds the row `moved` by this job (`held`) while the
    // writes the first one found are still logged; it drained nothing and opened the target
    // without them, on neither shard once the source was cleaned up. The row `moved` before
    // that snapshot, no writer of the unit logs anything later. Empty after a fence that held
    // (the final catch-up emptied it under the fence): nothing of it then.
    // And which cluster it was released on (sharding migration 032), in the same RETURNING: a
    // blue/green switchover while the fence is held puts another cluster behind the source's
    // address, whose timeline and history the record below takes. Whether the login may read it
    // is known by now (the fence asked, for the shard's pool); a resumed run in a new process
    // that only releases asks it here, once.
    // Refused the id (a grant revoked since the fence asked), the release's transaction was rolled
    // back, nothing released: sent again, once, without it (withClusterId). The first answer
    // kept, the release failed at every try, the unit fenced for good (its writes refused after
    // the flip) until the process restarted.
    // A fence the job records without the id (`source_cluster_id` NULL: its login refused it then,
    // or a fence recorded before 032) is released without it, whatever the pool answers now, and
    // nothing is asked: read, the id was taken for a release on another cluster than the fence's
    // (not known), and the fence position was dropped from the record (source_fence_lsn NULL, never
    // told copied, write_copied_off) of a move that never left its cluster. So it went when a
    // refusal expired while the fence was held, the grant given back (h157), and when the run that
    // released was not the one that fenced (the mover died past its flip; the run that resumed it,
    // in a new process whose pool may read the id, released): a rule of the run's own (39cf252)
    // missed that one (test/integration/sharding/cluster-id-revoked-move.test.ts, h162). The job
    // row is read with the id in every statement that hands the run its job (the claim, every
    // compare-and-set of the row, `returning *`): the fence's record is in hand, no round trip more.
    // Without the id, the release is judged by timeline alone, as the fence was. A release
    // repeated after one that recorded none (released without the id) is sent without it again.
    let clusterReadable = job.sourceClusterId === null ? false : await this.clusterIdReadable(job.from);
    const { rows: released } = await this.withClusterId(job.from, clusterReadable, (withClusterId) => {
      clusterReadable = withClusterId;
      return this.write(job, job.from, (c) =>
        c.query<{ tli: string | null; held: boolean | null; logged: boolean; cluster_id?: string }>(
          `update write_fences w set state = 'moved', moved_to = $3, map_version = $4, job_id = $5, updated_at = clock_timestamp()
             from (select state as was, job_id as was_job from write_fences where kind = $1 and unit_id = $2) o
            where w.kind = $1 and w.unit_id = $2
            returning ${CURRENT_TIMELINE_SQL} as tli, o.was in ('fenced', 'moved') and o.was_job is not distinct from $5::bigint as held,
                      exists (select 1 from move_changes where job_id = $5) as logged${withClusterId ? `, ${CLUSTER_ID_SQL} as cluster_id` : ''}`,
          [job.kind, job.unitId, job.to, version, job.id],
        ),
      );
    });
    // Those writes committed before the UPDATE above took the row (every writer of the unit holds
    // it while it writes), logged by the source's capture (still on): applied to the target
    // before it opens, writes still held there (only on this path: a fence that held costs nothing).
    if (released[0]?.held === false || released[0]?.logged === true) {
      while ((await this.catchUpPass(job)) > 0);
    }
    // The target's capture stops in the statement that opens its fence (one round trip while
    // writes are held): no writer's change there is logged for a move that is over.
    await this.write(job, job.to, (c) =>
      c.query(
        `with captures as (delete from move_captures where job_id = $4), changes as (delete from move_changes where job_id = $4)
         insert into write_fences (kind, unit_id, state, map_version, job_id) values ($1, $2, 'open', $3, $4)
         on conflict (kind, unit_id) do update set state = 'open', moved_to = null, map_version = $3, job_id = $4, updated_at = clock_timestamp()`,
        [job.kind, job.unitId, version, job.id],
      ),
    );
    // Released on another timeline than the fence's (or not known): the fence position is
    // dropped (not told copied) and the history with it (nothing known by migration 014's rule,
    // as a move before it); the timeline is the release's, so a stay the unit began on the source
    // is not taken for one it left on the same timeline (write_copied_off). In the same UPDATE.
    // Likewise released on another cluster than the fence's (a switchover while the fence was
    // held), or one not known where the fence recorded one: the timeline, history and position
    // recorded are then another cluster's numbers, and the cluster recorded is the release's
    // (NULL: not known). Kept, the fence's cluster (blue) stood beside the release's timeline
    // and history (green's): a blue token past where green's timeline 1 ends, whose write green
    // held and the move copied, answered 410 on the new owner
    // (test/integration/sharding/timeline-lost-write-blue-green.test.ts).
    const releasedOn = released[0]?.tli ?? null;
    const releasedCluster = clusterIdOfRow(released[0]) ?? null;
    const recorded = await this.updateJobRow(
      `unfenced_at = coalesce(unfenced_at, clock_timestamp()),
       source_fence_lsn = case when source_timeline = $2::bigint and source_cluster_id is not distinct from $3::text then source_fence_lsn end,
       source_history = case when ($2::bigint is null or source_timeline = $2::bigint) and source_cluster_id is not distinct from $3::text then source_history end,
       source_timeline = coalesce($2::bigint, source_timeline),
       source_cluster_id = $3::text`,
      [releasedOn, releasedCluster],
      job,
    );
    // Released on another timeline F' than the fence's F, the move copied F' (the final catch-up
    // ran there): the history of F', read now that writes are let through (outside the fence; a
    // resumed run repeating the release reads it again while it is missing), lets migration
    // 014's rule tell a token of F whose write F' lacks (F' > F, F ends before its LSN: 410)
    // on the unit's new shard straight after this move. Recorded only with that timeline: the
    // read failing (the function absent or refused, the source unreachable) or answering
    // another timeline (a second failover) leaves it NULL (nothing known, as before). No fence
    // position is recorded with it: never told copied (write_copied_off). Nor when another
    // cluster answered the read than the release (a switchover in between, both on the same
    // timeline number): read with its cluster id in one statement, as the fence's. That check
    // (`now.clusterId === releasedCluster`) is what keeps it out: the UPDATE's own condition on
    // source_cluster_id always holds (this run's record above set it, and every write of the job
    // row is compared-and-set on the run's lease). Without it, a read that reached blue (a
    // connection opened with a DNS answer cached from before the switchover) after a release on
    // green recorded blue's history beside green's id, and a green token whose write green held
    // answered 410 on the unit's new shard
    // (test/integration/sharding/timeline-lost-write-switchover-fence.test.ts).
    if (releasedOn !== null && recorded.source_timeline !== null && String(recorded.source_timeline) === releasedOn && recorded.source_history === null && recorded.source_fence_lsn === null) {
      const now: SourceTimeline = await this.sourceTimeline(job.from, clusterReadable).catch(() => ({ timeline: null, history: null }));
      if (now.timeline !== null && String(now.timeline) === releasedOn && now.history !== null && (!clusterReadable || now.clusterId === releasedCluster)) {
        await this.updateJob(
          `source_history = case when source_timeline = $2::bigint and source_fence_lsn is null and source_cluster_id is not distinct from $4::text then coalesce(source_history, $3) else source_history end`,
          [releasedOn, now.history, releasedCluster],
          job,
        );
      }
    }
  }

  /** Ends the capture {@link preVerify} started on the target (before writers may write there). */
  private async stopTargetCapture(job: MoveJob): Promise<void> {
    await this.stopCapture(job, job.to);
  }

  /** Ends the change capture on the source. */
  private async stopSourceCapture(job: MoveJob): Promise<void> {
    await this.stopCapture(job, job.from);
  }

  /**
   * Ends a job's change capture on a shard, and sweeps the changes of captures already ended. A
   * writer whose trigger saw the capture row logs its change uncommitted; committed after this
   * delete, the change stays, of a job that no longer captures, and nothing reads it (the
   * concurrent torture found a few such rows after most schedules). Any later stop on the shard
   * removes them; a capture being started is not yet visible to any writer, so has no changes.
   */
  private async stopCapture(job: MoveJob, shard: string): Promise<void> {
    await this.write(job, shard, async (c) => {
      await c.query('delete from move_captures where job_id = $1', [job.id]);
      await c.query('delete from move_changes c where c.job_id = $1 or not exists (select 1 from move_captures m where m.job_id = c.job_id)', [job.id]);
    });
  }

  async cleanUp(start: MoveJob): Promise<MoveJob> {
    const job = await this.reload(start);
    const source = this.pool(job.from);
    // Read again, even in the run that read them for its copy, catch-up and verification, and
    // added to those: a key's own row changed within the run turns its rows out of the unit with no
    // write the capture logs (issue #15, h169). A directory move of a key with a row under the slot,
    // run once the slot move had read its list and copied the row, is refused at its preparation
    // (checkKeySlotOnBothSides), and its rollback leaves the slot's target a `moved` row of the
    // key, which sets the key aside there: with the list of before, the clean-up deleted the
    // key's row on the source, where the key lives (its row there `open`, its pin), written since
    // the copy, and the only other copy of it was behind that `moved` row, served by no shard
    // (moves-slot-set-aside-between-runs.test.ts). A key set aside since the verification keeps
    // its rows on the source (counted in the note), never deletes more than the verification
    // covered. The comparison under the fence reads no more (the flip is decided on one list).
    await this.setAside(job, true);
    await this.stopSourceCapture(job);
    // The target's capture stopped as its fence opened; this sweeps what ended captures left there.
    await this.stopTargetCapture(job);
    const since = job.unfencedAt ? Date.now() - job.unfencedAt.getTime() : 0;
    if (since < this.settings.readerGraceMs) await this.sleep(this.settings.readerGraceMs - since);
    // Each batch is counted on the job as it commits (progress the stalled-move alarm sees), and
    // a run whose time is up stops between batches: the next run deletes on from the start, and
    // only rows the verification covered are ever picked.
    const kept = await this.deleteVerified(source, job, async (n) => {
      if (n > 0) await this.updateJob('rows_deleted = rows_deleted + $2', [n], job);
      if (this.options.timeUp?.()) throw new MovePaused(`move job #${job.id}: this run's time is up in the clean-up; the next run resumes it`);
    });
    const aside = await this.leftAside(source, job);
    const notes = [
      ...(kept > 0 ? [`clean-up kept ${kept} user row(s) on ${job.from} that still own documents outside the moved unit`] : []),
      ...(aside > 0
        ? [
            `clean-up left ${aside} row(s) on ${job.from} of keys fenced there by a unit of their own (a 'moved', 'incoming' or 'fenced' directory row), or holding rows under the slot on ${job.to} by a directory row of their own there: rows of the key, not the slot's, neither copied nor deleted; put them by hand where the key lives, under its own slot (docs/sharding-spec.md section 9, "Rows of a key fenced by its own row")`,
          ]
        : []),
    ];
    const note = notes.length > 0 ? notes.join('; ') : null;
    // Errors of earlier attempts are moot once the clean-up has finished; the note is not.
    return this.updateJob('error = $2', [note], job);
  }

  /**
   * Deletes the unit's rows of `table` on `shard` (that also match `extra`, on alias `x`) in
   * batches of `batchRows` (see {@link unitDeleteBatchSql}), each its own transaction, and answers
   * how many. Each batch starts after the last id the one before deleted; once one picks nothing,
   * a batch from the start confirms it, and the deletion ends only when such a batch picks
   * nothing. So a row the ordered pass stepped over, or one a batch picked but could not delete
   * (updated meanwhile), is picked again (none should be: the unit's fence refuses every other
   * writer on both shards). Rows picked and never deleted (a trigger of the shard's owner that
   * skips the delete, say) end the run with a {@link MoveError} after
   * {@link UNDELETABLE_RETRIES} batches in a row, rather than picking them forever; the job
   * resumes from its state later. `afterBatch`, when given, is called after each batch commits,
   * with how many rows it deleted; what it throws ends the deletion there.
   */
  private async deleteUnit(job: MoveJob, shard: string, table: TableName, begin: string = MOVER_WRITE, extra = '', afterBatch?: (deleted: number) => Promise<void>): Promise<number> {
    const filter = this.unitFilter(job, table, 3, 'x.');
    let deleted = 0;
    let after: string | null = null;
    let stuck = 0;
    for (;;) {
      const from: string | null = after;
      const { rows }: pg.QueryResult<{ found: number | null; n: number; last: string | null }> = await this.write(
        job,
        shard,
        (c) => c.query<{ found: number | null; n: number; last: string | null }>(unitDeleteBatchSql(table, `${filter.sql}${extra}`, from !== null), [this.settings.batchRows, from, ...filter.params]),
        `${begin}; ${DELETE_BATCH_SETTINGS}`,
      );
      const found = rows[0]?.found ?? 0;
      const n = rows[0]?.n ?? 0;
      deleted += n;
      await afterBatch?.(n);
      stuck = n === 0 && found > 0 ? stuck + 1 : 0;
      if (stuck >= UNDELETABLE_RETRIES) {
        throw new MoveError(`${found} ${table} row(s) of ${job.kind} ${job.unitId} on ${shard} were picked for deletion ${stuck} times in a row and never deleted (a trigger or policy on ${table} skips the delete?); the move stops here and resumes from ${job.state}`);
      }
      if (n > 0) after = rows[0]?.last ?? null;
      else if (found > 0) continue;
      else if (from === null) return deleted;
      else after = null;
    }
  }

  /**
   * Deletes the unit's rows from the source in batches, children first, and only the rows the
   * verification covered: the unit's documents and key records (`CHILD_TABLES`), then its users
   * that no longer own any row of them here. A user deleted by cascade could take with it a document that was never part of the
   * unit (stored under another slot), which no verification saw; such users are kept, and their
   * number is the answer. `afterBatch` is called after each batch commits, with its count.
   */
  private async deleteVerified(pool: pg.Pool, job: MoveJob, afterBatch: (deleted: number) => Promise<void>): Promise<number> {
    const begin = await this.bulkBegin(job.from, pool);
    for (const table of CHILD_TABLES) await this.deleteUnit(job, job.from, table, begin, '', afterBatch);
    await this.deleteUnit(job, job.from, 'users', begin, OWNS_NOTHING, afterBatch);
    const left = this.unitFilter(job, 'users', 1, 'u.');
    const { rows } = await pool.query<{ n: number }>(`select count(*)::int as n from users u where ${left.sql}`, left.params);
    return rows[0]?.n ?? 0;
  }

  /** How many rows of the slot's keys set aside ({@link setAside}) are left on `pool` (the source, after its clean-up). */
  private async leftAside(pool: pg.Pool, job: MoveJob): Promise<number> {
    await this.setAside(job);
    const keys = job.kind === 'slot' ? (this.keysSetAside.get(job.id) ?? []) : [];
    if (keys.length === 0) return 0;
    const { rows } = await pool.query<{ n: number }>(
      `select ((select count(*) from users where slot = $1::int and id::text = any($2::text[]))
             + (select count(*) from documents where slot = $1::int and owner_id::text = any($2::text[]))
             + (select count(*) from document_keys where slot = $1::int and owner_id::text = any($2::text[])))::int as n`,
      [Number(job.unitId), keys],
    );
    return rows[0]?.n ?? 0;
  }

  /** Deletes the unit's copy from the target (a rollback), children first. */
  private async deleteCopy(job: MoveJob): Promise<void> {
    // A copy is as large as the unit: a run whose time is up (a Lambda near its timeout) stops
    // between batches rather than be killed mid-statement; the next run takes up the rollback
    // (`rollback_to` is recorded) and deletes on.
    // Each batch deleted is progress, as a clean-up batch is (sharding migration 007's trigger
    // sees only the source's `rows_deleted`): a rollback of a large copy, paused at invocation
    // after invocation, must not read as a move without progress (`MoveWithoutProgress`).
    const between = async (deleted: number): Promise<void> => {
      if (deleted > 0) await this.updateJob('progressed_at = clock_timestamp()', [], job);
      if (this.options.timeUp?.()) throw new MovePaused(`move job #${job.id}: this run's time is up in the rollback; the next run resumes it`);
    };
    // Children first; then the unit's users that own nothing left here: one that still owns a
    // document or key record under another slot (a user an earlier move's clean-up kept here, which
    // this copy replaced, see keptOwners) is left, as the clean-up leaves it: deleted with foreign
    // keys checked, the cascade took that record, which the unit's copy never held.
    for (const { name } of [...TABLES].reverse()) await this.deleteUnit(job, job.to, name, MOVER_WRITE, name === 'users' ? OWNS_NOTHING : '', between);
  }

  /**
   * Undoes a move that has not flipped. The decision is a compare-and-set in the catalog: the job
   * row is locked, the flip must not have happened and the catalog must not name the target as
   * the owner; `rollback_to` is then recorded, so a flip can never follow. Only then is the
   * target copy deleted. Every part after the decision is idempotent, so a rollback interrupted
   * by a crash is simply done again on restart.
   */
  async rollback(job: MoveJob, to: 'failed' | 'cancelled', error: string | null): Promise<MoveJob> {
    // Under the fence (a cancellation the flip answered, a verification that failed), the decision
    // is held to the fence deadline (see heldToFence): its COMMIT waiting for a synchronous standby
    // of the catalog that is away held the fence until the run's catalog bound (6.0 s, budget 1 s).
    // Cancelled in a lock wait, it fails and the driver reopens the fence; the next run rolls back.
    // A verdict found at the budget's very end still gets a moment to be decided on.
    const movedAtSource = await this.sourceSaysMoved(job);
    // A directory move leaves `directory` fence rows for its key (the source's from prepareSource,
    // the target's turned `moved` below), and they take precedence over the slot's rows on both
    // shards. A key that keeps them must stay placed by the directory (the decision's pin, below).
    // The target's row says which step the move is in, for a refusal's words (targetRouteRefusal):
    // its copy there, or nothing copied yet. Read once, after this run claimed the job's permit on
    // both shards (no other run writes it meanwhile).
    const targetBefore = await this.fenceRowOn(job.to, job);
    const copied = targetHoldsCopy(targetBefore, job);
    // Nothing copied: the key's rows the target took by hash (they stop the move at its check).
    const held = copied ? [] : await heldOnTarget(this.pool(job.to), job);
    const keyFenced = job.kind === 'directory' && ((await this.fenceRowOn(job.from, job)) !== undefined || targetBefore !== undefined);
    // The decision may pin the key (below): this process's directory cache forgets it afterwards.
    const decided = await this.forgettingCachedOwner(job, () =>
      this.heldToFence(
        () =>
          this.withLockedJob(job, async (row) => {
            if (row.flipStarted) return { refused: `move job #${job.id} has published its new owner; it can only finish` };
            // Read without the flip's lock on the map (see ownerRead), and needing none: this
            // transaction writes the job row alone, nothing a router reads, and what follows touches
            // only the target, so a map or pin committed between this read and the commit ends as
            // one committed just after it. Except where it may pin the key back to its source
            // (below): then it writes a route, and reads with `publishing` as the flip does
            // (docs/sharding-spec.md section 9).
            const read = await this.currentOwner(row, keyFenced && row.rollbackTo === null ? this.pinBackLock() : false);
            const { owner } = read;
            let { version } = read;
            const toTarget = targetRouteRefusal(job, read, copied, held);
            if (toTarget !== null) {
              // A cancellation (not one decided already) is answered as refused, and its request
              // cleared: the move finishes on the target, where the catalog routes the unit. Left
              // set, every later run tried this rollback again, was refused again, and the target's
              // `incoming` fence refused the unit's writes for good.
              if (to !== 'cancelled' || row.rollbackTo !== null) return { refused: toTarget };
              const why = cancelRefusal(toTarget, job.to, targetRouteStops(job, read, copied, held) ? 'The move stays stopped until then' : undefined);
              await this.updateJob('cancel_requested = false, error = $2, cancel_refused = $2', [why], job);
              return { refused: why, cancelRefused: true };
            }
            if (movedAtSource) {
              return {
                refused: `the fence of ${job.kind} ${job.unitId} on the source ${job.from} says it moved to ${job.to} for this job, though the catalog names ${owner ?? 'nobody'} (version ${version}): the flip was lost by the catalog (a failover?); deleting the target's copy would lose the writes made there since. Publish ${job.to} as the owner instead${decideByHand(job, job.to)}`,
              };
            }
            // The key has no entry and routes by hash to the source (an operator deleted the pin
            // while the move ran): the move's `directory` fence rows outlive the rollback, on the
            // source (`open`) and the target (`moved` to the source), and decide for the key over
            // its slot's rows. Left unpinned, the key would move with its slot's next move (which
            // excludes only keys the directory places), while those rows kept the source taking
            // its writes after that move (`open`: accepted there, or refused 23503 once the clean-up
            // deleted its user) and the target refusing them (`moved`: every write and read
            // bounced between the shards until it gave up). So the rollback pins the key back to
            // its source, where it routes already (nothing is sent elsewhere), as the move's own
            // pin had it: a key with directory rows stays placed by the directory, and slot moves
            // leave it where it is. Over no entry only: an operator's pin made since is theirs.
            if (keyFenced && row.rollbackTo === null && owner === null && read.routesTo === job.from) {
              const pin = await this.catalog.use((catalog) => this.pinToSourceOverNoEntry(job, catalog));
              if (!('pinned' in pin)) {
                throw new MoveError(`key ${job.unitId} was pinned to ${pin.kept?.shardId ?? 'nothing'} while move job #${job.id}'s rollback pinned it back to its source ${job.from}; nothing was decided, the next run decides again`);
              }
              version = pin.pinned.version;
            }
            const outcome = row.rollbackTo ?? to;
            await this.updateJob('rollback_to = $2, error = coalesce($3, error)', [outcome, error], job);
            return { outcome, version };
          }),
        DEADLINE_GRACE_MS,
      ),
    );
    if ('refused' in decided) {
      // Refused, the move goes on (a cancel) or stays stopped (a failure): either way a fence of
      // the target whose check is pending (a run killed between that fence and its count) must
      // not keep refusing the key's writes there meanwhile. Nothing was copied under it; it is
      // put back as the check records it, and the move's next check fences the target anew.
      if (targetBefore?.state === 'incoming' && targetBefore.unchecked && Number(targetBefore.job_id) === job.id) await this.undoUncheckedFence(job);
      if ('cancelRefused' in decided) throw new MoveCancelRefused(decided.refused);
      throw new MoveError(decided.refused ?? 'rollback refused');
    }
    await this.unfence(job);
    await this.stopTargetCapture(job);
    // The target's rows of the unit are this move's copy only while its fence row is this job's
    // `incoming` row: from its insert (prepareSource, before the copy) every other writer of the
    // unit there is refused, so nothing else can have been acknowledged there since. Without it
    // (cancelled before the source was prepared, a prepare that failed before that insert, a row
    // another move or an operator's route left) the target copied nothing of this move, and its
    // rows of the unit are someone else's: written where a map or pin published by hand sent the
    // unit (even one published after this decision), or left by an earlier move. Those rows and
    // that row stay as they are: deleting would lose acknowledged writes, and turning the row
    // `moved` would refuse the writes of an owner. A row this job's rollback turned `moved`
    // already (a run that stopped before the job's last update) comes after the copy was deleted:
    // nothing is left to delete, and the job only ends. Read once per run: this run claimed the
    // job's permit on both shards at its start (claimPermits), so an older run of this job still
    // preparing the source can no longer insert the row, and no other job writes it while this
    // one is unfinished (one unfinished move per slot).
    //
    // Except an `incoming` row not checked yet (a run that died between its insert and the
    // count, see checkedIncoming): nothing was copied under it, and the target's rows of the unit
    // are writes sent there by hash before it, acknowledged. They stay; the row is put back as it
    // was before this job (no row, or `open`), as a count that found them does, so that no fence
    // of a finished job refuses the key's writes there. (A refusal above puts it back too.)
    const targetRow = await this.fenceRowOn(job.to, job);
    const ours = targetRow?.state === 'incoming' && Number(targetRow.job_id) === job.id;
    if (ours && targetRow.unchecked) await this.undoUncheckedFence(job);
    const ownCopy = ours && !targetRow.unchecked;
    if (ownCopy) {
      // The target's rows of keys the source fences by a row of their own are no part of the copy
      // (see setAside): a key moved to the target holds them there as its own.
      await this.setAside(job);
      await this.deleteCopy(job);
    }
    // The source's capture ends only once the copy is gone: while it runs, another move from this
    // source whose rows meet this copy's stale rows on the target (documents handed between the
    // units) may clear them (see clearStaleCopies); stopped first, it would be stopped on them
    // until this rollback ends, which a run whose time is up leaves to the next run.
    await this.stopSourceCapture(job);
    // The target does not own the unit, and a missing row would say it does: a shard the unit
    // once left (its row said 'moved' until this move made it 'incoming') would take the writes
    // and reads of every process still holding the map of that time. So the row says 'moved', to
    // the owner, whatever it said before the move. Only this job's `incoming` row (see above).
    if (ownCopy) {
      await this.write(job, job.to, (c) =>
        c.query(
          `update write_fences set state = 'moved', moved_to = $4, map_version = $5, updated_at = clock_timestamp()
            where kind = $1 and unit_id = $2 and state = 'incoming' and job_id = $3`,
          [job.kind, job.unitId, job.id, job.from, decided.version],
        ),
      );
    }
    const finish = (): Promise<MoveJob> =>
      this.updateJob(
        'state = rollback_to, unfenced_at = case when fenced_at is null then null else coalesce(unfenced_at, clock_timestamp()) end, finished_at = clock_timestamp()',
        [],
        job,
      );
    if (!keyFenced) return finish();
    // The pin may have been deleted since the decision (an operator, while the copy was deleted,
    // a run paused between its batches or killed): the job ends only with the key placed by the
    // directory, pinned back to its source as the decision does, in the transaction that ends it
    // and under the same lock. Over no entry only (an operator's pin made since is theirs, and
    // kept); a key routed by hash to any other shard is left as the decision left it.
    return this.forgettingCachedOwner(job, () =>
      this.withLockedJob(job, async (row) => {
        const read = await this.currentOwner(row, true);
        if (read.owner === null && read.routesTo === job.from) {
          await this.catalog.use((catalog) => this.pinToSourceOverNoEntry(job, catalog));
        }
        const routesTo = read.owner ?? read.routesTo;
        if (routesTo !== null && routesTo !== job.from) await this.closeKeyRowOverDisowningSlot(job, routesTo, read.version);
        return finish();
      }),
    );
  }

  /**
   * At the end of a directory move's rollback where the catalog routes the key elsewhere than the
   * source (`routesTo`, as of directory version `version`): the source's `open` row of the key, which
   * this move's preparation inserted where its slot's row there says `moved` (or `incoming`) and does
   * not keep the key out, turns `moved` to that shard, so that the source refuses the key's writes
   * again (CAF02) as its slot's row did before the move. The move goes on from such a source only
   * where the key routed by hash to its target (a map by hand gave the slot, empty of the key's rows,
   * to the target after the plan: prepareSource); rolled back (the key pinned to a third shard
   * meanwhile), that `open` row was left, and a writer still holding the map from before the hand
   * change was acknowledged on the source, where no route sends the key, out of every reader's
   * sight (h107, moves-slot-source-moved.test.ts, "a directory move's rollback over a source whose
   * slot row had disowned the key"). Only over such a slot row: where the source's slot row lets the
   * key through, its own `open` row changes nothing a router's route does not.
   *
   * And only over no row of the key on the source. Such a row is not always this move's: a key
   * moved back to the source by an earlier directory move after its slot left (its rows routed by
   * the slot then, so that the slot's `moved` row there does not keep it out) has that move's `open`
   * row over the slot's, and its rows there; so has a key given a row of its own by hand where its
   * rows were on the source after all (the way out checkSourceOwnsKey names). Turned `moved` to
   * wherever the catalog routes the key at this rollback's end (a pin deleted past the guard, the
   * key routed by hash to its slot's owner), that row said the key's rows went where they never
   * were: they stayed on the source behind it, refused there (CAF02) and, routed back to the
   * shard the key had come from, refused there too by that move's `moved` row, and the way out
   * (catalog.repin_by_hand to where the rows are) was refused on the source as well (h110,
   * moves-slot-source-moved.test.ts, "a directory move's rollback over the key's own open row
   * ..."). The rollback puts back only what this move made: where the source holds rows of the
   * key (counted after the row is locked: the key's writers in flight, which hold it FOR SHARE,
   * have committed or been refused), the row is left as it was before the move; where it holds
   * none, the row hides nothing, whoever inserted it, and refuses the writes no route sends there.
   * A key this move's source took over no row of its own holds rows there only where a writer
   * holding the map from before the hand change wrote them before the move fenced it: they are
   * the key's, out of sight where the catalog routes it, and stay open on the source, as the
   * review (`shards fences`) leaves a row over such rows to the operator. Compare-and-set on the
   * shard, in the transaction that locked the row: a row changed since (a later move's, an
   * operator's) is left.
   */
  private async closeKeyRowOverDisowningSlot(job: MoveJob, routesTo: string, version: number): Promise<void> {
    if (job.kind !== 'directory') return;
    const over = `k.kind = 'directory' and k.unit_id = $1 and k.state = 'open'
            and exists (select 1 from write_fences s where s.kind = 'slot' and s.unit_id = $2 and s.state in ('moved', 'incoming')
                         and not ($1 = any(coalesce(s.excluded_keys, '{}'::text[]))))`;
    // READ COMMITTED whatever the shard's default: the count reads after the lock, in a snapshot
    // of its own. At a REPEATABLE READ default it read the snapshot of the permit's hold, taken
    // before the lock waited for a writer holding the row, whose new user of the key (committed
    // meanwhile, acknowledged) it did not see: the row turned `moved` over that user, out of every
    // reader's sight (h113, moves-rollback-close-isolation.test.ts).
    await this.write(
      job,
      job.from,
      async (c) => {
        const locked = await c.query(`select 1 from write_fences k where ${over} for update of k`, [job.unitId, String(job.slot)]);
        if (locked.rowCount !== 1) return;
        if ((await heldOnTarget(c, job)).length > 0) return;
        await c.query(`update write_fences k set state = 'moved', moved_to = $3, map_version = $4, updated_at = clock_timestamp() where ${over}`, [job.unitId, String(job.slot), routesTo, version]);
      },
      MOVER_WRITE_READ_COMMITTED,
    );
  }

  /**
   * How a rollback's decision waits for its key's slot's pin lock before it may pin the key back
   * to its source over no entry (see {@link ownerRead}): with no fence held, the lock's own bound
   * ({@link SLOT_PIN_LOCK_WAIT_MS}). Under the fence (a cancellation the flip answered, a failed
   * verification) the decision is held to the fence deadline (heldToFence), which cut a wait for
   * a change of the slot holding the lock (a publication by hand counting the slot's rows) with a
   * cancel: the run failed and recorded "canceling statement due to user request", with no word
   * of the lock or of what follows (owner-change-dirmove-flip-slot-race.test.ts). So, as the flip's
   * wait (`flipLocked`), it ends FLIP_SLOT_LOCK_MARGIN_MS before that deadline by its own
   * lock_timeout, the refusal naming the lock; never longer than the lock's own bound. Either way
   * nothing is decided: the driver gives the fence back, and the next run decides again.
   */
  private pinBackLock(): HashRouteLock {
    if (this.fenceDeadline === null) return true;
    const untilDeadline = Math.max(this.budgetLeft(), DEADLINE_GRACE_MS) - FLIP_SLOT_LOCK_MARGIN_MS;
    return {
      waitMs: Math.max(1, Math.min(SLOT_PIN_LOCK_WAIT_MS, untilDeadline)),
      again: 'the run gave its fence back with nothing decided, and the next run decides again',
    };
  }

  /**
   * See {@link MovePort.recoverLostFlip}. The source's fence row is the flip's record: it says
   * `moved` (to this job's target, for this job) only once a flip the catalog had recorded was
   * released forward. Published again as the flip is, with the job row locked on this run's lease,
   * while the catalog names the source (or already the target: then only recorded).
   */
  async recoverLostFlip(job: MoveJob): Promise<MoveJob | null> {
    if (!(await this.sourceSaysMoved(job))) return null;
    // The source's row says where the unit went for this job, not that it is still there: a later
    // move of the unit from the target, lost by the catalog too (a standby further behind promoted),
    // took it on, and the target's row names that move. Published again, the target's fence would
    // be opened on an empty unit, the rows and the writes acknowledged where they went out of sight.
    // An `open` row says the target holds the unit, whatever job it names: this one's release, a
    // later move from the target that fenced it and gave the fence back (no job: rolled back, or
    // its fence timed out), or one that took the unit away and brought it back. Only this job's
    // `incoming` row (a release cut off between its two writes) says so too.
    const target = await this.fenceRowOn(job.to, job);
    if (target?.state !== 'open' && !(target?.state === 'incoming' && Number(target.job_id) === job.id)) {
      const says = target ? `${target.state}${target.moved_to === null ? '' : ` to ${target.moved_to}`}${target.job_id === null ? '' : ` for move job #${target.job_id}`}` : 'nothing (no fence row)';
      throw new MoveError(
        `${job.from}'s fence says ${job.kind} ${job.unitId} moved to ${job.to} for move job #${job.id}, a flip the catalog lost, but ${job.to}'s fence says ${says}, not open: the unit has left ${job.to} since, or a later move holds it there (a move the catalog lost too?), so it is not published there again; the unit's owner must be decided by hand${decideByHand(job)}`,
      );
    }
    const reason = `move job #${job.id}: ${job.kind} ${job.unitId} from ${job.from} to ${job.to}, published again: ${job.from}'s fence says the unit moved there for this job, a flip the catalog lost`;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.forgettingCachedOwner(job, () =>
          this.withLockedJob(job, async (row) => {
            if (row.flipStarted) return row;
            const read = await this.currentOwner(row, true);
            const { owner, version } = read;
            let after = version;
            if (owner !== job.to) {
              if (isForeignOwner(job, read)) {
                throw new MoveError(
                  `${job.from}'s fence says ${job.kind} ${job.unitId} moved to ${job.to} for move job #${job.id}, but the catalog names ${owner ?? `nobody (the key routes by hash to ${read.routesTo ?? 'no shard'})`} as its owner (version ${version}), neither side of the move: the unit's owner must be decided by hand${decideByHand(job)}`,
                );
              }
              after = await this.publishOwner(job, read, reason);
            }
            // Straight to the verification's end: what comes after the flip (the fence released
            // forward again, the clean-up) is what is left to do.
            return this.updateJob(
              `state = 'verifying', flip_started_at = clock_timestamp(), map_version_after = $2, error = $3, verifying_at = coalesce(verifying_at, clock_timestamp())`,
              [after, `the flip was lost by the catalog and published again (version ${after})`],
              job,
            );
          }),
        );
      } catch (err) {
        // Another publisher (a move from another source) took this map version, or someone changed
        // the directory entry since it was read: read it again.
        if (!(err instanceof SlotMapVersionConflictError || err instanceof DirectoryVersionConflictError) || attempt >= 20) throw err;
      }
    }
  }

  /**
   * Whether the source's fence row says the unit moved for this job: it does only once a flip was
   * released forward, so a catalog that no longer records that flip lost it (committed on the
   * primary alone, its standby wait cancelled at the budget's end, then a failover to that
   * standby), and the target has taken writes since; a rollback would delete them with the copy.
   * Asked before the rollback's decision, not inside its transaction: a silent source held the job
   * row locked there (an operator's cancellation request, another run's claim waited on it) until
   * the run's abandon time. The answer cannot change in between: the row turns `moved` only after
   * a flip the catalog recorded, and no flip but one of this run's lease can be recorded while it
   * holds the lease, which the decision requires. Outside the fence the question is bounded as
   * giving the fence up is (the rollback gives it up next, with the same bound); under it, as the
   * fenced part is.
   */
  private async sourceSaysMoved(job: MoveJob): Promise<boolean> {
    const releasing = this.releasingFence;
    this.releasingFence = true;
    try {
      const { rows } = await this.pool(job.from).query<{ state: string }>('select state from write_fences where kind = $1 and unit_id = $2 and job_id = $3 and moved_to = $4', [
        job.kind,
        job.unitId,
        job.id,
        job.to,
      ]);
      return rows[0]?.state === 'moved';
    } finally {
      this.releasingFence = releasing;
    }
  }

  /** The unit's fence row on `shard`, read with the bound {@link sourceSaysMoved} has. */
  private async fenceRowOn(shard: string, job: MoveJob): Promise<{ state: string; job_id: string | null; moved_to: string | null; unchecked: boolean } | undefined> {
    const releasing = this.releasingFence;
    this.releasingFence = true;
    try {
      const { rows } = await this.pool(shard).query<{ state: string; job_id: string | null; moved_to: string | null; unchecked: boolean }>(
        'select state, job_id::text, moved_to, check_undo is not null as unchecked from write_fences where kind = $1 and unit_id = $2',
        [job.kind, job.unitId],
      );
      return rows[0];
    } finally {
      this.releasingFence = releasing;
    }
  }

  private async tableColumns(table: TableName, client: pg.PoolClient): Promise<readonly string[]> {
    const known = this.columns.get(table);
    if (known) return known;
    const { rows } = await client.query<{ c: string }>(
      `select column_name as c from information_schema.columns
        where table_schema = current_schema() and table_name = $1 order by ordinal_position`,
      [table],
    );
    const cols = rows.map((r) => r.c);
    this.columns.set(table, cols);
    return cols;
  }

  /**
   * Upserts a JSON array of rows of the unit (as produced by `jsonb_agg(t)`) into `table`, but
   * those whose ids are in `skip`: `count` rows, without them. A row of the target with the same
   * id overwrites only when it is itself a row of the unit (a copy made earlier): a row the target owns under another slot or key is another record with
   * the same id, and overwriting it would take it from its owner (and a rollback would then
   * delete it). Such a collision stops the move, naming the ids.
   */
  private async upsert(client: pg.PoolClient, job: MoveJob, table: TableName, rowsJson: string, count: number, skip: readonly string[] = []): Promise<void> {
    const cols = (await this.tableColumns(table, client)).filter((c) => c !== 'id');
    const unit = this.unitFilter(job, table, 2, `${table}.`);
    const skipped = skip.length === 0 ? '' : ` where r.id <> all($${2 + unit.params.length}::uuid[])`;
    const res = await client.query(
      `insert into ${table} select * from pg_catalog.jsonb_populate_recordset(null::${table}, $1::jsonb) r${skipped}
       on conflict (id) do update set (${cols.join(', ')}) = row(${cols.map((c) => `excluded.${c}`).join(', ')})
         where ${unit.sql}`,
      [rowsJson, ...unit.params, ...(skip.length === 0 ? [] : [skip])],
    );
    if (res.rowCount === count) return;
    const outside = this.unitFilter(job, table, 2, 't.');
    const { rows } = await client.query<{ id: string }>(
      `select t.id::text as id from ${table} t
        where t.id in (select (r ->> 'id')::uuid from jsonb_array_elements($1::jsonb) r) and t.id <> all($${2 + outside.params.length}::uuid[]) and not (${outside.sql})
        order by t.id`,
      [rowsJson, ...outside.params, skip],
    );
    // Another unfinished move's stale copies of documents were cleared before this is thrown for
    // good (see catchUpPass and copyPage): what is left is another record with the same id.
    const ids = rows.map((r) => r.id);
    throw new UnitCollision(table, ids, collisionMessage(job, table, ids));
  }
}

