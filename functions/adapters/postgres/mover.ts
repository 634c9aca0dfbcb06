/**
 * The move job runner: moves one hash slot, or one directory key, from one shard to another
 * while the application keeps reading and writing, and loses nothing.
 *
 * Steps (each recorded in `catalog.move_jobs`, each safe to run again from its start):
 *
 * 1. **copying**: create the unit's write-fence row on the source, start capturing its changes
 *    (trigger `record_move_change`, shard migration 002), wait until every transaction that
 *    began before the capture has ended, then copy the unit's rows in keyset-paginated batches
 *    (upserts, so a repeated batch is harmless). The batch position is saved after each batch.
 * 2. **catching_up**: apply captured changes until a pass finds only a few.
 * 3. **cutover**: set the fence row to `fenced`. That UPDATE waits for every writer holding the
 *    row's shared lock (see write-transaction.ts), so writes in flight finish first; the state is
 *    committed, so later writers see it and wait even if this process dies. Then apply the
 *    remaining changes until none is left.
 * 4. **verifying**: compare row counts and checksums per table on both sides; a mismatch rolls
 *    the move back (`failed`). Then pass the point of no return (unless cancelled), publish the
 *    new owner (a new slot-map version, or the directory entry), open the target's fence and
 *    mark the source's `moved`: waiting writers re-route to the target.
 * 5. **cleaning_up**: stop capturing, wait a grace period for readers holding the old map, then
 *    delete the unit's rows from the source.
 *
 * Why a capture trigger for the catch-up: an `updated_at` or `xmin` delta cannot see deletes,
 * and `updated_at` trusts every writer to set it; a trigger sees every insert, update and delete
 * (cascades included), and costs one probe of an empty table when nothing moves. The log holds
 * only row ids; the catch-up re-reads the current row, so applying an entry twice is harmless
 * and entries are consumed by deleting them (sequence order is not commit order).
 *
 * Readers never miss a key: the source keeps its rows until after the flip and the grace
 * period, and the target copy is complete and verified before the flip.
 *
 * @example
 * ```ts
 * const mover = new Mover({ catalog, shards: new Map([['shard_001', p1], ['shard_002', p2]]), slotMaps, directory });
 * const job = await mover.plan({ kind: 'slot', slot: 1234, to: 'shard_002', createdBy: 'ops@example.com' });
 * const done = await mover.run(job.id);           // or, after a crash: await mover.resumeAll();
 * console.log(done.state, done.rowsCopied, done.fenceMs);
 * ```
 */
import type pg from 'pg';
import { z } from 'zod';
import { canonicalKey, keySlot } from '../../core/sharding/keys.js';
import {
  assertTransition,
  canCancel,
  isTerminal,
  type MoveState,
  type MoveUnitKind,
  nextState,
  restartAction,
  TERMINAL_STATES,
} from '../../core/sharding/move-plan.js';
import { moveSlots } from '../../core/sharding/slot-map.js';
import type { DirectoryStore } from './directory-store.js';
import type { SlotMapStore } from './slot-map-store.js';

/** The slot-map side of the catalog the mover needs. */
export type MoverSlotMaps = Pick<SlotMapStore, 'current' | 'publish'>;

/** The directory side of the catalog the mover needs (`entry` reads are never cached). */
export type MoverDirectory = Pick<DirectoryStore, 'entry' | 'set' | 'list'>;

/** Points at which {@link MoverOptions.hook} is called: after entering a step, or inside one. */
export type MoveHookPoint = 'copying' | 'catching_up' | 'cutover' | 'fenced' | 'verifying' | 'published' | 'cleaning_up';

export interface MoverOptions {
  /** The catalog database (holds `catalog.move_jobs`). */
  readonly catalog: pg.Pool;
  /** Primary pool of every shard, by shard id. */
  readonly shards: ReadonlyMap<string, pg.Pool>;
  readonly slotMaps: MoverSlotMaps;
  readonly directory: MoverDirectory;
  /** Rows per copy batch, per catch-up pass and per delete batch. Default 5000. */
  readonly batchRows?: number;
  /** Catching up ends when a pass applies fewer changes than this (what is left is applied while fenced). Default 50. */
  readonly catchUpThreshold?: number;
  /** How long the cutover may wait for writers in flight before giving up (and retrying later). Default 10 000 ms. */
  readonly fenceLockTimeoutMs?: number;
  /** How long to wait for transactions older than the change capture. Default 30 000 ms. */
  readonly drainTimeoutMs?: number;
  /** Time between the flip and deleting the source rows, for readers holding the old map. Default 5000 ms. */
  readonly readerGraceMs?: number;
  /** Name recorded as the publisher of the new map. Default `mover`. */
  readonly actor?: string;
  /** Called at each {@link MoveHookPoint}; tests use it to kill the process at a chosen step. */
  readonly hook?: (point: MoveHookPoint, job: MoveJob) => Promise<void> | void;
}

export interface MoveJob {
  readonly id: number;
  readonly kind: MoveUnitKind;
  /** The slot (as text) or the directory key. */
  readonly unitId: string;
  readonly slot: number;
  readonly from: string;
  readonly to: string;
  readonly state: MoveState;
  readonly cancelRequested: boolean;
  readonly flipStartedAt: Date | null;
  readonly excludedKeys: readonly string[];
  readonly copyCursor: CopyCursor | null;
  readonly rowsCopied: number;
  readonly changesApplied: number;
  readonly rowsDeleted: number;
  readonly sourceSummary: TableSummaries | null;
  readonly targetSummary: TableSummaries | null;
  readonly mapVersionBefore: number | null;
  readonly mapVersionAfter: number | null;
  readonly createdBy: string;
  readonly reason: string;
  readonly error: string | null;
  readonly createdAt: Date;
  readonly fencedAt: Date | null;
  readonly unfencedAt: Date | null;
  readonly finishedAt: Date | null;
  /** How long writes to the unit were fenced, once the fence has been released. */
  readonly fenceMs: number | null;
}

export interface CopyCursor {
  readonly table: string;
  readonly after: string | null;
}

/** Per table: row count and an order-independent checksum of the rows' text. */
export type TableSummaries = Readonly<Record<string, { readonly rows: number; readonly checksum: string }>>;

/** A move failed or cannot be done; the job (if any) is left resumable. */
export class MoveError extends Error {
  override readonly name: string = 'MoveError';
}

/** The move request is invalid (unknown shard, bad slot, same source and target, ...). Nothing was recorded. */
export class MoveRequestError extends MoveError {
  override readonly name = 'MoveRequestError';
}

/** The slot (or the slot of the key) already has an unfinished move. */
export class MoveConflictError extends MoveError {
  override readonly name = 'MoveConflictError';
}

/** Another mover process is running this job right now. */
export class MoveBusyError extends MoveError {
  override readonly name = 'MoveBusyError';
}

/** The job has passed the point of no return (or is finished) and can no longer be cancelled. */
export class MoveNotCancellableError extends MoveError {
  override readonly name = 'MoveNotCancellableError';
}

const shardId = z.string().min(1, 'must not be empty');
/** A move request, as accepted from an operator (CLI, API). */
export const moveRequestSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('slot'), slot: z.number().int().min(0), to: shardId, createdBy: z.string().min(1), reason: z.string().default('') }),
  z.strictObject({
    kind: z.literal('directory'),
    // The key is hashed and compared as text (routing, fence rows, the capture trigger), so it
    // must be spelled the way PostgreSQL prints a uuid.
    key: z
      .guid('directory keys are user ids (UUIDs)')
      .refine((k) => k === k.toLowerCase(), 'directory keys must be lower-case UUIDs, as PostgreSQL prints them'),
    to: shardId,
    createdBy: z.string().min(1),
    reason: z.string().default(''),
  }),
]);
export type MoveRequest = z.input<typeof moveRequestSchema>;

/** The sharded tables, parents first; `owner` is the column holding the user id (the directory key). */
const TABLES = [
  { name: 'users', owner: 'id' },
  { name: 'documents', owner: 'owner_id' },
] as const;
type TableName = (typeof TABLES)[number]['name'];

const LOCK_CLASS = 0x0ca0en;

/** Thrown inside a step when a cancellation request is seen; the driver then rolls back. */
class CancelRequested extends Error {}
class VerificationMismatch extends Error {}

interface JobRow {
  id: string;
  kind: MoveUnitKind;
  unit_id: string;
  slot: number;
  from_shard: string;
  to_shard: string;
  state: MoveState;
  cancel_requested: boolean;
  flip_started_at: Date | null;
  excluded_keys: string[];
  copy_cursor: CopyCursor | null;
  rows_copied: string;
  changes_applied: string;
  rows_deleted: string;
  source_summary: TableSummaries | null;
  target_summary: TableSummaries | null;
  map_version_before: string | null;
  map_version_after: string | null;
  created_by: string;
  reason: string;
  error: string | null;
  created_at: Date;
  fenced_at: Date | null;
  unfenced_at: Date | null;
  finished_at: Date | null;
}

function toJob(r: JobRow): MoveJob {
  return {
    id: Number(r.id),
    kind: r.kind,
    unitId: r.unit_id,
    slot: r.slot,
    from: r.from_shard,
    to: r.to_shard,
    state: r.state,
    cancelRequested: r.cancel_requested,
    flipStartedAt: r.flip_started_at,
    excludedKeys: r.excluded_keys,
    copyCursor: r.copy_cursor,
    rowsCopied: Number(r.rows_copied),
    changesApplied: Number(r.changes_applied),
    rowsDeleted: Number(r.rows_deleted),
    sourceSummary: r.source_summary,
    targetSummary: r.target_summary,
    mapVersionBefore: r.map_version_before === null ? null : Number(r.map_version_before),
    mapVersionAfter: r.map_version_after === null ? null : Number(r.map_version_after),
    createdBy: r.created_by,
    reason: r.reason,
    error: r.error,
    createdAt: r.created_at,
    fencedAt: r.fenced_at,
    unfencedAt: r.unfenced_at,
    finishedAt: r.finished_at,
    fenceMs: r.fenced_at && r.unfenced_at ? r.unfenced_at.getTime() - r.fenced_at.getTime() : null,
  };
}

/** The step timestamp column recorded when a job enters a state. */
const ENTERED_AT: Partial<Record<MoveState, string>> = {
  copying: 'copying_at',
  catching_up: 'catching_up_at',
  cutover: 'cutover_at',
  verifying: 'verifying_at',
  cleaning_up: 'cleaning_up_at',
  done: 'finished_at',
  failed: 'finished_at',
  cancelled: 'finished_at',
};

const HOOK_STATES: readonly MoveState[] = ['copying', 'catching_up', 'cutover', 'verifying', 'cleaning_up'];
function isHookPoint(state: MoveState): state is MoveState & MoveHookPoint {
  return HOOK_STATES.includes(state);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads that must see one consistent state of the source (a page and its owners, a change batch). */
const SNAPSHOT = 'begin isolation level repeatable read read only';

/**
 * Runs `fn` in one transaction on a client of `pool`, opened with `begin`: commits when `fn`
 * resolves, rolls back when it throws (a failed rollback must not hide the error that caused
 * it), and always returns the client to the pool.
 */
async function inTransaction<T>(pool: pg.Pool, begin: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query(begin);
    const result = await fn(client);
    await client.query('commit');
    return result;
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Runs move jobs. One instance per process; any number of processes may share a catalog (a job
 * is run by one of them at a time, under a session advisory lock on the catalog).
 */
export class Mover {
  private readonly batchRows: number;
  private readonly catchUpThreshold: number;
  private readonly fenceLockTimeoutMs: number;
  private readonly drainTimeoutMs: number;
  private readonly readerGraceMs: number;
  private readonly actor: string;
  private readonly columns = new Map<TableName, readonly string[]>();

  constructor(private readonly options: MoverOptions) {
    this.batchRows = options.batchRows ?? 5000;
    this.catchUpThreshold = options.catchUpThreshold ?? 50;
    this.fenceLockTimeoutMs = options.fenceLockTimeoutMs ?? 10_000;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 30_000;
    this.readerGraceMs = options.readerGraceMs ?? 5000;
    this.actor = options.actor ?? 'mover';
  }

  /**
   * Validates a move request and records it as a `planned` job. The source is the unit's current
   * owner. Throws {@link MoveRequestError} for a bad request and {@link MoveConflictError} when
   * the slot already has an unfinished move.
   */
  async plan(request: MoveRequest): Promise<MoveJob> {
    const parsed = moveRequestSchema.safeParse(request);
    if (!parsed.success) {
      const detail = parsed.error.issues.map((i) => `${i.path.join('.') || '(request)'}: ${i.message}`).join('; ');
      throw new MoveRequestError(`invalid move request: ${detail}`, { cause: parsed.error });
    }
    const req = parsed.data;
    const map = await this.options.slotMaps.current();
    let unitId: string;
    let slot: number;
    let from: string;
    let excluded: string[] = [];
    let versionBefore: number;
    if (req.kind === 'slot') {
      if (req.slot >= map.slotCount) throw new MoveRequestError(`slot ${req.slot} is outside 0..${map.slotCount - 1}`);
      unitId = String(req.slot);
      slot = req.slot;
      from = map.assignments[slot] as string;
      // Keys the directory places stay where it puts them; their rows do not move with the slot.
      excluded = await this.directoryKeysIn(slot);
      versionBefore = map.version;
    } else {
      unitId = canonicalKey(req.key);
      slot = keySlot(unitId);
      const entry = await this.options.directory.entry(unitId);
      from = entry?.shardId ?? (map.assignments[slot] as string);
      versionBefore = entry?.version ?? 0;
    }
    if (!this.options.shards.has(req.to)) throw new MoveRequestError(`target shard ${req.to} is not one of ${[...this.options.shards.keys()].join(', ')}`);
    if (!this.options.shards.has(from)) throw new MoveRequestError(`the unit's owner ${from} has no primary pool in this mover`);
    if (from === req.to) throw new MoveRequestError(`${req.kind === 'slot' ? `slot ${unitId}` : `key ${unitId}`} is already on ${req.to}`);
    try {
      const { rows } = await this.options.catalog.query<JobRow>(
        `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, excluded_keys, map_version_before, created_by, reason)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning *`,
        [req.kind, unitId, slot, from, req.to, excluded, versionBefore, req.createdBy, req.reason],
      );
      return toJob(rows[0] as JobRow);
    } catch (err) {
      if ((err as { code?: string }).code === '23505') {
        const { rows } = await this.options.catalog.query<{ id: string }>(
          `select id from catalog.move_jobs where slot = $1 and state <> all($2::text[])`,
          [slot, TERMINAL_STATES],
        );
        throw new MoveConflictError(`slot ${slot} already has an unfinished move (job #${rows[0]?.id ?? '?'}); finish or cancel it first`, { cause: err });
      }
      throw new MoveError(`could not record the move: ${message(err)}`, { cause: err });
    }
  }

  /** Every directory key whose hash slot is `slot`. */
  private async directoryKeysIn(slot: number): Promise<string[]> {
    const keys: string[] = [];
    for (let after: string | undefined; ; ) {
      const page = await this.options.directory.list({ limit: 1000, ...(after === undefined ? {} : { after }) });
      keys.push(...page.map((e) => e.key).filter((k) => keySlot(k) === slot));
      if (page.length < 1000) return keys;
      after = page[page.length - 1]?.key;
    }
  }

  /** The job as recorded now. */
  async get(id: number): Promise<MoveJob> {
    const { rows } = await this.options.catalog.query<JobRow>('select * from catalog.move_jobs where id = $1', [id]);
    if (!rows[0]) throw new MoveRequestError(`there is no move job #${id}`);
    return toJob(rows[0]);
  }

  /** Unfinished jobs, oldest first. */
  async unfinished(): Promise<MoveJob[]> {
    const { rows } = await this.options.catalog.query<JobRow>(
      'select * from catalog.move_jobs where state <> all($1::text[]) order by id',
      [TERMINAL_STATES],
    );
    return rows.map(toJob);
  }

  /**
   * Runs (or resumes) a job until it is done, failed or cancelled. Throws {@link MoveBusyError}
   * when another process runs it, and {@link MoveError} when a step fails in a way that leaves
   * the job resumable (the error is recorded on the job).
   */
  async run(id: number): Promise<MoveJob> {
    const lock = await this.options.catalog.connect();
    let locked = false;
    try {
      const key = ((LOCK_CLASS << 32n) | BigInt(id)).toString();
      const { rows } = await lock.query<{ ok: boolean }>('select pg_try_advisory_lock($1::bigint) as ok', [key]);
      locked = rows[0]?.ok === true;
      if (!locked) throw new MoveBusyError(`move job #${id} is being run by another mover`);
      try {
        return await this.drive(await this.get(id));
      } finally {
        await lock.query('select pg_advisory_unlock($1::bigint)', [key]);
      }
    } finally {
      lock.release();
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
   * is being published.
   */
  async cancel(id: number): Promise<MoveJob> {
    const { rows } = await this.options.catalog.query<JobRow>(
      `update catalog.move_jobs set cancel_requested = true, updated_at = now()
        where id = $1 and flip_started_at is null and state <> all($2::text[]) returning *`,
      [id, TERMINAL_STATES],
    );
    if (!rows[0]) {
      const job = await this.get(id);
      if (canCancel({ state: job.state, flipStarted: job.flipStartedAt !== null })) throw new MoveError(`move job #${id} changed while cancelling; try again`);
      throw new MoveNotCancellableError(
        isTerminal(job.state) ? `move job #${id} is already ${job.state}` : `move job #${id} has published the new owner; it can only finish`,
      );
    }
    try {
      return await this.run(id);
    } catch (err) {
      if (err instanceof MoveBusyError) return this.get(id);
      throw err;
    }
  }

  private async drive(start: MoveJob): Promise<MoveJob> {
    let job = start;
    const action = restartAction({ state: job.state, cancelRequested: job.cancelRequested, flipStarted: job.flipStartedAt !== null });
    if (action.kind === 'none') return job;
    if (action.kind === 'rollback') return this.rollback(job, action.to, null);
    for (;;) {
      if (isTerminal(job.state)) return job;
      if (job.cancelRequested && job.flipStartedAt === null) return this.rollback(job, 'cancelled', null);
      try {
        job = await this.runStep(job);
      } catch (err) {
        if (err instanceof CancelRequested) {
          job = await this.get(job.id);
          continue;
        }
        if (err instanceof VerificationMismatch) return this.rollback(job, 'failed', err.message);
        await this.options.catalog
          .query('update catalog.move_jobs set error = $2, updated_at = now() where id = $1', [job.id, `${job.state}: ${message(err)}`])
          .catch(() => undefined);
        if (err instanceof MoveError) throw err;
        throw new MoveError(`move job #${job.id} stopped in ${job.state}: ${message(err)}`, { cause: err });
      }
      job = await this.advance(job);
      if (isHookPoint(job.state)) await this.options.hook?.(job.state, job);
    }
  }

  private async runStep(job: MoveJob): Promise<MoveJob> {
    switch (job.state) {
      case 'planned':
        return job;
      case 'copying':
        await this.prepareSource(job);
        return this.copy(job);
      case 'catching_up':
        await this.catchUp(job, 'few');
        return this.get(job.id);
      case 'cutover':
        await this.fence(job);
        await this.options.hook?.('fenced', job);
        await this.catchUp(job, 'none');
        return this.get(job.id);
      case 'verifying':
        // Once the flip has started, writers may already be writing on the target, so the
        // two sides legitimately differ; the verification that allowed the flip has passed.
        if (job.flipStartedAt === null) await this.verify(job);
        return this.flip(job);
      case 'cleaning_up':
        return this.cleanUp(job);
      default:
        return job;
    }
  }

  private async advance(job: MoveJob): Promise<MoveJob> {
    const to = nextState(job.state);
    if (to === undefined) return job;
    assertTransition(job.state, to, job.flipStartedAt !== null);
    return this.setState(job, to, null);
  }

  private async setState(job: MoveJob, to: MoveState, error: string | null): Promise<MoveJob> {
    const col = ENTERED_AT[to];
    const stamp = col ? `, ${col} = coalesce(${col}, clock_timestamp())` : '';
    const { rows } = await this.options.catalog.query<JobRow>(
      `update catalog.move_jobs set state = $2, error = $3, updated_at = now()${stamp} where id = $1 and state = $4 returning *`,
      [job.id, to, error, job.state],
    );
    if (!rows[0]) throw new MoveError(`move job #${job.id} was changed by someone else while in ${job.state}`);
    return toJob(rows[0]);
  }

  private pool(shard: string): pg.Pool {
    const pool = this.options.shards.get(shard);
    if (!pool) throw new MoveError(`shard ${shard} has no primary pool in this mover`);
    return pool;
  }

  private async checkCancel(job: MoveJob): Promise<void> {
    const { rows } = await this.options.catalog.query<{ c: boolean }>('select cancel_requested as c from catalog.move_jobs where id = $1', [job.id]);
    if (rows[0]?.c) throw new CancelRequested();
  }

  /** `where` clause selecting the unit's rows of a table, with its parameters from `$first`. */
  private unitFilter(job: MoveJob, table: TableName, first: number): { sql: string; params: unknown[] } {
    const owner = TABLES.find((t) => t.name === table)?.owner ?? 'id';
    if (job.kind === 'slot') {
      return { sql: `slot = $${first} and not (${owner}::text = any($${first + 1}::text[]))`, params: [Number(job.unitId), job.excludedKeys] };
    }
    return { sql: `${owner} = $${first}::uuid`, params: [job.unitId] };
  }

  private async tableColumns(table: TableName, client: pg.PoolClient | pg.Pool): Promise<readonly string[]> {
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

  /** Upserts a JSON array of rows (as produced by `jsonb_agg(t)`) into `table`. */
  private async upsert(client: pg.PoolClient, table: TableName, rowsJson: string): Promise<void> {
    const cols = (await this.tableColumns(table, client)).filter((c) => c !== 'id');
    await client.query(
      `insert into ${table} select * from jsonb_populate_recordset(null::${table}, $1::jsonb)
       on conflict (id) do update set (${cols.join(', ')}) = row(${cols.map((c) => `excluded.${c}`).join(', ')})`,
      [rowsJson],
    );
  }

  private async prepareSource(job: MoveJob): Promise<void> {
    if (job.kind === 'directory') {
      // Pin the key where it is, so that the flip is a directory change that hash routing
      // cannot override; writers routed by hash land on the same shard meanwhile.
      const pinned = (await this.options.directory.entry(job.unitId))?.shardId ?? null;
      if (pinned === null) await this.options.directory.set(job.unitId, job.from, this.actor);
      else if (pinned !== job.from) throw new MoveError(`key ${job.unitId} is now pinned to ${pinned}, not ${job.from}; cancel this move`);
    }
    const source = this.pool(job.from);
    await source.query(`insert into write_fences (kind, unit_id) values ($1, $2) on conflict (kind, unit_id) do nothing`, [job.kind, job.unitId]);
    const fence = await source.query<{ state: string; job_id: string | null }>('select state, job_id from write_fences where kind = $1 and unit_id = $2', [
      job.kind,
      job.unitId,
    ]);
    const row = fence.rows[0];
    if (row?.state === 'moved') throw new MoveError(`the fence on ${job.from} says ${job.kind} ${job.unitId} has moved away; the catalog and the shard disagree`);
    if (row?.state === 'fenced' && Number(row.job_id) !== job.id) throw new MoveError(`${job.kind} ${job.unitId} on ${job.from} is fenced by move job #${row.job_id}`);
    await source.query(
      `insert into move_captures (job_id, kind, unit_id, excluded_keys) values ($1, $2, $3, $4) on conflict (job_id) do nothing`,
      [job.id, job.kind, job.unitId, job.excludedKeys],
    );
    await this.drain(source, job);
  }

  /**
   * Waits until every transaction that began before the capture (and the fence row) existed has
   * ended: such a writer could hold no fence lock and log no change, so the copy must start
   * after it has committed.
   */
  private async drain(source: pg.Pool, job: MoveJob): Promise<void> {
    const { rows } = await source.query<{ t: Date }>('select now() as t');
    const since = rows[0]?.t;
    const deadline = Date.now() + this.drainTimeoutMs;
    for (;;) {
      const { rows: active } = await source.query<{ n: number }>(
        `select count(*)::int as n from pg_stat_activity
          where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend' and xact_start < $1`,
        [since],
      );
      if ((active[0]?.n ?? 0) === 0) return;
      if (Date.now() > deadline) throw new MoveError(`transactions on ${job.from} older than the change capture are still open after ${this.drainTimeoutMs} ms`);
      await sleep(10);
    }
  }

  private async copy(start: MoveJob): Promise<MoveJob> {
    let job = start;
    let cursor: CopyCursor = job.copyCursor ?? { table: 'users', after: null };
    const source = this.pool(job.from);
    const target = this.pool(job.to);
    for (const { name: table } of TABLES) {
      if (TABLES.findIndex((t) => t.name === table) < TABLES.findIndex((t) => t.name === cursor.table)) continue;
      if (cursor.table !== table) cursor = { table, after: null };
      for (;;) {
        await this.checkCancel(job);
        const batch = await this.readBatch(source, job, table, cursor.after);
        if (batch.n === 0) break;
        await inTransaction(target, 'begin', async (client) => {
          if (batch.ownersJson) await this.upsert(client, 'users', batch.ownersJson);
          await this.upsert(client, table, batch.rowsJson);
        });
        cursor = { table, after: batch.last };
        const { rows } = await this.options.catalog.query<JobRow>(
          `update catalog.move_jobs set copy_cursor = $2, rows_copied = rows_copied + $3, updated_at = now() where id = $1 returning *`,
          [job.id, JSON.stringify(cursor), batch.n],
        );
        job = toJob(rows[0] as JobRow);
      }
    }
    return job;
  }

  /**
   * One keyset page of a table's unit rows, with (for child tables) their owners read in the
   * same snapshot, so that the target never sees a document before its user.
   */
  private async readBatch(
    source: pg.Pool,
    job: MoveJob,
    table: TableName,
    after: string | null,
  ): Promise<{ n: number; rowsJson: string; ownersJson: string | null; last: string | null }> {
    return inTransaction(source, SNAPSHOT, async (client) => {
      const f = this.unitFilter(job, table, 3);
      const { rows } = await client.query<{ n: number; rows: string; last: string | null; owners: string[] | null }>(
        `select count(*)::int as n, coalesce(jsonb_agg(to_jsonb(t)), '[]')::text as rows,
                (array_agg(t.id order by t.id desc))[1]::text as last,
                ${table === 'users' ? 'null::text[]' : 'array_agg(distinct t.owner_id)::text[]'} as owners
           from (select * from ${table} where ${f.sql} and ($1::uuid is null or id > $1::uuid) order by id limit $2) t`,
        [after, this.batchRows, ...f.params],
      );
      const page = rows[0] ?? { n: 0, rows: '[]', last: null, owners: null };
      let ownersJson: string | null = null;
      if (page.owners && page.owners.length > 0) {
        const uf = this.unitFilter(job, 'users', 2);
        const owners = await client.query<{ rows: string }>(
          `select coalesce(jsonb_agg(to_jsonb(u)), '[]')::text as rows from users u where id = any($1::uuid[]) and ${uf.sql}`,
          [page.owners, ...uf.params],
        );
        ownersJson = owners.rows[0]?.rows ?? null;
      }
      return { n: page.n, rowsJson: page.rows, ownersJson, last: page.last };
    });
  }

  /**
   * Applies captured changes. `few` stops when a pass applies fewer than the threshold (the
   * writers are still running); `none` stops when the log is empty (the unit is fenced).
   */
  private async catchUp(job: MoveJob, until: 'few' | 'none'): Promise<void> {
    for (let pass = 0; ; pass++) {
      await this.checkCancel(job);
      const applied = await this.catchUpPass(job);
      if (until === 'none' ? applied === 0 : applied < this.catchUpThreshold) return;
      if (until === 'few' && pass >= 100) return;
      if (until === 'none' && pass >= 10_000) throw new MoveError(`changes to ${job.kind} ${job.unitId} keep arriving while it is fenced: something writes without withShardWrite`);
    }
  }

  /** One pass: re-read the current source rows of up to `batchRows` logged ids and make the target match. */
  private async catchUpPass(job: MoveJob): Promise<number> {
    const source = this.pool(job.from);
    const { rows: entries } = await source.query<{ seq: string; table_name: TableName; row_id: string }>(
      'select seq, table_name, row_id from move_changes where job_id = $1 order by seq limit $2',
      [job.id, this.batchRows],
    );
    if (entries.length === 0) return 0;
    const ids = new Map<TableName, Set<string>>(TABLES.map((t) => [t.name, new Set<string>()]));
    for (const e of entries) ids.get(e.table_name)?.add(e.row_id);
    const docIds = [...(ids.get('documents') ?? [])];
    const userIds = [...(ids.get('users') ?? [])];

    const { docs, users } = await inTransaction(source, SNAPSHOT, async (client) => {
      const df = this.unitFilter(job, 'documents', 2);
      const d = await client.query<{ rows: string; ids: string[] | null; owners: string[] | null }>(
        `select coalesce(jsonb_agg(to_jsonb(t)), '[]')::text as rows, array_agg(t.id)::text[] as ids, array_agg(distinct t.owner_id)::text[] as owners
           from documents t where id = any($1::uuid[]) and ${df.sql}`,
        [docIds, ...df.params],
      );
      const docs = { rows: d.rows[0]?.rows ?? '[]', ids: d.rows[0]?.ids ?? [], owners: d.rows[0]?.owners ?? [] };
      const uf = this.unitFilter(job, 'users', 2);
      const u = await client.query<{ rows: string; ids: string[] | null }>(
        `select coalesce(jsonb_agg(to_jsonb(t)), '[]')::text as rows, array_agg(t.id)::text[] as ids
           from users t where id = any($1::uuid[]) and ${uf.sql}`,
        [[...new Set([...userIds, ...docs.owners])], ...uf.params],
      );
      return { docs, users: { rows: u.rows[0]?.rows ?? '[]', ids: u.rows[0]?.ids ?? [] } };
    });

    const presentDocs = new Set(docs.ids);
    const presentUsers = new Set(users.ids);
    const goneDocs = docIds.filter((id) => !presentDocs.has(id));
    const goneUsers = userIds.filter((id) => !presentUsers.has(id));
    await inTransaction(this.pool(job.to), 'begin', async (target) => {
      await this.upsert(target, 'users', users.rows);
      await this.upsert(target, 'documents', docs.rows);
      const df = this.unitFilter(job, 'documents', 2);
      await target.query(`delete from documents where id = any($1::uuid[]) and ${df.sql}`, [goneDocs, ...df.params]);
      const uf = this.unitFilter(job, 'users', 2);
      await target.query(`delete from users where id = any($1::uuid[]) and ${uf.sql}`, [goneUsers, ...uf.params]);
    });
    await source.query('delete from move_changes where seq = any($1::bigint[])', [entries.map((e) => e.seq)]);
    await this.options.catalog.query('update catalog.move_jobs set changes_applied = changes_applied + $2, updated_at = now() where id = $1', [
      job.id,
      entries.length,
    ]);
    return entries.length;
  }

  /** Sets the source fence to `fenced`, waiting for writers in flight, and commits it. */
  private async fence(job: MoveJob): Promise<void> {
    await inTransaction(this.pool(job.from), 'begin', async (client) => {
      await client.query(`select set_config('lock_timeout', $1, true)`, [`${this.fenceLockTimeoutMs}ms`]);
      const res = await client.query(
        `update write_fences set state = 'fenced', job_id = $3, updated_at = clock_timestamp()
          where kind = $1 and unit_id = $2 and (state = 'open' or (state = 'fenced' and job_id = $3))`,
        [job.kind, job.unitId, job.id],
      );
      if (res.rowCount !== 1) throw new MoveError(`the fence row of ${job.kind} ${job.unitId} on ${job.from} is missing or held by another move`);
    });
    await this.options.catalog.query('update catalog.move_jobs set fenced_at = coalesce(fenced_at, clock_timestamp()), updated_at = now() where id = $1', [job.id]);
  }

  /**
   * Counts and checksums of the unit's rows, per table, on one shard. The checksum is the sum
   * of each row's 64-bit `hash_record_extended` (order-independent, so no sort; hashing the
   * binary values avoids formatting every row as text, which matters because this runs while
   * the unit is fenced). Both shards run the same PostgreSQL build, so equal rows hash equally.
   */
  private async summarise(pool: pg.Pool, job: MoveJob): Promise<TableSummaries> {
    return inTransaction(pool, SNAPSHOT, async (client) => {
      // A 100,000-row aggregate can cross jit_above_cost; compiling it would only lengthen the fence.
      await client.query(`set local jit = off`);
      const out: Record<string, { rows: number; checksum: string }> = {};
      for (const { name } of TABLES) {
        const f = this.unitFilter(job, name, 1);
        const { rows } = await client.query<{ n: string; sum: string }>(
          `select count(*) as n, coalesce(sum(hash_record_extended(t, 0)), 0)::text as sum from ${name} t where ${f.sql}`,
          f.params,
        );
        out[name] = { rows: Number(rows[0]?.n ?? 0), checksum: rows[0]?.sum ?? '0' };
      }
      return out;
    });
  }

  private async verify(job: MoveJob): Promise<void> {
    const [source, target] = await Promise.all([this.summarise(this.pool(job.from), job), this.summarise(this.pool(job.to), job)]);
    await this.options.catalog.query('update catalog.move_jobs set source_summary = $2, target_summary = $3, updated_at = now() where id = $1', [
      job.id,
      JSON.stringify(source),
      JSON.stringify(target),
    ]);
    const bad = TABLES.filter(({ name }) => source[name]?.rows !== target[name]?.rows || source[name]?.checksum !== target[name]?.checksum).map(
      ({ name }) => `${name}: source ${source[name]?.rows ?? 0} rows, target ${target[name]?.rows ?? 0} rows${source[name]?.rows === target[name]?.rows ? ' (checksums differ)' : ''}`,
    );
    if (bad.length > 0) throw new VerificationMismatch(`verification failed: ${bad.join('; ')}`);
  }

  /** Passes the point of no return, publishes the new owner and lets writers through to it. */
  private async flip(job: MoveJob): Promise<MoveJob> {
    const { rows } = await this.options.catalog.query<JobRow>(
      `update catalog.move_jobs set flip_started_at = coalesce(flip_started_at, clock_timestamp()), updated_at = now()
        where id = $1 and not cancel_requested returning *`,
      [job.id],
    );
    if (!rows[0]) throw new CancelRequested();
    const version = await this.publish(toJob(rows[0]));
    const published = await this.options.catalog.query<JobRow>('update catalog.move_jobs set map_version_after = $2, updated_at = now() where id = $1 returning *', [
      job.id,
      version,
    ]);
    const after = toJob(published.rows[0] as JobRow);
    await this.options.hook?.('published', after);
    await this.releaseFence(after);
    return this.get(job.id);
  }

  /** Publishes the target as the unit's owner, unless that already happened; returns the version that says so. */
  private async publish(job: MoveJob): Promise<number> {
    const reason = `move job #${job.id}: ${job.kind} ${job.unitId} from ${job.from} to ${job.to}`;
    if (job.kind === 'directory') {
      const entry = await this.options.directory.entry(job.unitId);
      if (entry?.shardId === job.to) return entry.version;
      return (await this.options.directory.set(job.unitId, job.to, this.actor)).version;
    }
    const slot = Number(job.unitId);
    for (let attempt = 0; attempt < 10; attempt++) {
      const map = await this.options.slotMaps.current();
      const owner = map.assignments[slot];
      if (owner === job.to) return map.version;
      if (owner !== job.from) throw new MoveError(`slot ${slot} is now assigned to ${owner ?? 'nobody'} in map version ${map.version}; expected ${job.from}`);
      try {
        await this.options.slotMaps.publish(moveSlots(map, [slot], job.to), this.actor, reason);
        return map.version + 1;
      } catch (err) {
        // Another publisher won the race for this version: read the map again and retry.
        if (attempt === 9) throw new MoveError(`could not publish slot ${slot} to ${job.to}: ${message(err)}`, { cause: err });
      }
    }
    throw new MoveError(`could not publish slot ${slot} to ${job.to}`);
  }

  /**
   * Opens the target's fence, then marks the source's `moved` (in that order, so writers sent
   * to the target never find a stale `moved` there), and records when writes were let through.
   */
  private async releaseFence(job: MoveJob): Promise<void> {
    const version = job.mapVersionAfter ?? 0;
    await this.pool(job.to).query(
      `insert into write_fences (kind, unit_id, state, map_version, job_id) values ($1, $2, 'open', $3, $4)
       on conflict (kind, unit_id) do update set state = 'open', moved_to = null, map_version = $3, job_id = $4, updated_at = clock_timestamp()`,
      [job.kind, job.unitId, version, job.id],
    );
    await Promise.all([
      this.pool(job.from).query(
        `update write_fences set state = 'moved', moved_to = $3, map_version = $4, job_id = $5, updated_at = clock_timestamp()
          where kind = $1 and unit_id = $2`,
        [job.kind, job.unitId, job.to, version, job.id],
      ),
      this.options.catalog.query('update catalog.move_jobs set unfenced_at = coalesce(unfenced_at, clock_timestamp()), updated_at = now() where id = $1', [job.id]),
    ]);
  }

  private async cleanUp(start: MoveJob): Promise<MoveJob> {
    await this.releaseFence(start);
    let job = await this.get(start.id);
    const source = this.pool(job.from);
    await source.query('delete from move_captures where job_id = $1', [job.id]);
    await source.query('delete from move_changes where job_id = $1', [job.id]);
    const since = job.unfencedAt ? Date.now() - job.unfencedAt.getTime() : 0;
    if (since < this.readerGraceMs) await sleep(this.readerGraceMs - since);
    const deleted = await this.deleteUnit(source, job);
    const { rows } = await this.options.catalog.query<JobRow>(
      'update catalog.move_jobs set rows_deleted = rows_deleted + $2, updated_at = now() where id = $1 returning *',
      [job.id, deleted],
    );
    job = toJob(rows[0] as JobRow);
    return job;
  }

  /** Deletes the unit's rows from one shard in batches, children first. */
  private async deleteUnit(pool: pg.Pool, job: MoveJob): Promise<number> {
    let total = 0;
    for (const { name } of [...TABLES].reverse()) {
      const f = this.unitFilter(job, name, 2);
      for (;;) {
        const res = await pool.query(`delete from ${name} where id in (select id from ${name} where ${f.sql} limit $1)`, [this.batchRows, ...f.params]);
        total += res.rowCount ?? 0;
        if ((res.rowCount ?? 0) === 0) break;
      }
    }
    return total;
  }

  /**
   * Undoes a move that has not flipped: the source is unfenced and stops capturing, the target
   * copy is deleted. Every part is idempotent, so a rollback interrupted by a crash is simply
   * done again on restart (the job still says `cancel_requested`).
   */
  private async rollback(job: MoveJob, to: 'failed' | 'cancelled', error: string | null): Promise<MoveJob> {
    assertTransition(job.state, to, job.flipStartedAt !== null);
    const source = this.pool(job.from);
    await source.query(
      `update write_fences set state = 'open', job_id = null, updated_at = clock_timestamp()
        where kind = $1 and unit_id = $2 and state = 'fenced' and job_id = $3`,
      [job.kind, job.unitId, job.id],
    );
    await source.query('delete from move_captures where job_id = $1', [job.id]);
    await source.query('delete from move_changes where job_id = $1', [job.id]);
    await this.deleteUnit(this.pool(job.to), job);
    const { rows } = await this.options.catalog.query<JobRow>(
      `update catalog.move_jobs set state = $2, error = $3, unfenced_at = case when fenced_at is null then null else coalesce(unfenced_at, clock_timestamp()) end,
              finished_at = clock_timestamp(), updated_at = now()
        where id = $1 returning *`,
      [job.id, to, error],
    );
    return toJob(rows[0] as JobRow);
  }
}
