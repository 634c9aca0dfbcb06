/**
 * The operator's review of the shards' `write_fences` rows that no live move explains (issue #15,
 * docs/sharding-spec.md section 9, "Settling the rows a hand change left"): each listed with what
 * it does to the unit's writes, and, asked to settle, the rows whose fix is provably safe fixed.
 *
 * A map published by hand (`SlotMapStore.publish` / `publishByHand` with `shardPools`) fences each
 * slot it gives away on the old owner, publishes, then turns those rows `moved` and deletes the new
 * owner's older `moved` row ({@link OwnerChangeFences}). Two outcomes leave rows only SQL fixed:
 * - a change killed between its fence and its settle leaves the old owner's row `fenced` (job_id
 *   null): the map names that shard still (died before its commit) or the new owner (after it);
 * - a change inside a caller's transaction leaves its `moved` rows as they are when the caller
 *   commits (the new owner's older `moved` row) or rolls back (the old owner's fresh `moved` row):
 *   either way a `moved` row on the shard the map names, refusing the slot's writes (`CAF02`).
 * What is settled, and under what:
 * - a `fenced` hand row where the map names another shard: set `moved` to that shard as of the
 *   latest map (what the change's own settle would have written; it only refuses more);
 * - a `fenced` hand row where the map names its shard, and a `moved` row there (a hand change's,
 *   or a move's whose job has ended): deleted (the shard takes the slot's writes again), only while
 *   the review holds `catalog.owner_change_review` FOR UPDATE (no hand change through the stores is
 *   between its fence and its commit: each holds that row FOR SHARE meanwhile), the slot has no
 *   unfinished move job, and the row was last written at least `olderThanMs` ago (a change of an
 *   older version, or through a client that holds no transaction, takes no lock);
 * - every statement is a compare-and-set on the row as read: a row a move or a change took over
 *   since is left, and reported so.
 * Rows of a live move (its job unfinished), `open` rows and a `moved` row on a shard the map does
 * not name (its writers re-route by the map) are explained and not listed (unless `all`); directory rows and a finished
 * move's `fenced` or `incoming` rows are listed and left to the operator.
 *
 * @example
 * ```ts
 * const review = await reviewFences({ catalog, shards, settle: true, olderThanMs: 15 * 60_000 });
 * for (const r of review.rows) console.log(r.shard, r.unitId, r.diagnosis, r.outcome);
 * ```
 */
import type pg from 'pg';
import { slotOf } from '../../core/sharding/hash.js';
import { checkDeadlineMs, connectBy, DEADLINE_GRACE_MS, DeadlinePassedError, holdToDeadline, queryCanceled, serverTimeoutMs, withNodeDeadline } from './deadline.js';
import { failureKind } from './sqlstate.js';

type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

/** What settling a row does. */
export type FenceAction = 'reopen' | 'set moved' | 'none';

/** One `write_fences` row of a shard, as the review read and judged it. */
export interface ReviewedFence {
  readonly shard: string;
  readonly kind: 'slot' | 'directory';
  readonly unitId: string;
  readonly state: string;
  readonly jobId: string | null;
  readonly movedTo: string | null;
  readonly mapVersion: string;
  /** Milliseconds since the row was last written, by the shard's clock. */
  readonly ageMs: number;
  /** The shard the latest map names for the slot (a directory row: its key's slot). */
  readonly owner: string | undefined;
  /** What the row does to the unit's writes, and why it is there. */
  readonly diagnosis: string;
  /** What `settle` does with it: `none` for a row left to a move or the operator. */
  readonly action: FenceAction;
  /** Why an action was not taken this time (a change in flight, too young, a move unfinished); absent where it was or would be. */
  readonly withheld?: string;
  /** With `settle`: `settled`, or why the row was left. */
  readonly outcome?: string;
}

export interface FenceReview {
  /** The latest slot map's version, read after the shards' rows (the map they are judged by). */
  readonly mapVersion: number;
  /** Rows that need the operator (or were settled), and, with `all`, every other row. */
  readonly rows: readonly ReviewedFence[];
  /** Rows not listed: `open`, a live move's, a `moved` row on a shard the map does not name. */
  readonly explained: number;
  /** Set where a hand change held `catalog.owner_change_review` (no row was reopened). */
  readonly changeInFlight?: string;
  /** Shards whose rows could not be read. */
  readonly unreachable: readonly string[];
}

export interface FenceReviewOptions {
  /** The catalog: a login that may lock `catalog.owner_change_review` FOR UPDATE (the control login, or the owner). */
  readonly catalog: pg.Pool;
  /** The shards' primaries, by shard id: a login that may write `write_fences` (the mover's, or the owner). */
  readonly shards: ReadonlyMap<string, Queryable>;
  /** Fix the rows whose fix is provably safe; without it, only list. */
  readonly settle?: boolean;
  /** A row is reopened only once last written this long ago (default 15 min). */
  readonly olderThanMs?: number;
  /** List the explained rows too. */
  readonly all?: boolean;
  /**
   * The whole review ends within this many ms (default {@link DEFAULT_REVIEW_TIMEOUT_MS}),
   * whatever bounds the pools have (none, for a plain `new pg.Pool()`): the catalog's checkout
   * and statements, every shard's read (in parallel, within half the time left, so that a silent
   * shard leaves time to settle the others' rows) and every settle share it. A shard that does
   * not answer in time is listed unreachable, a row whose settle does not is left and said so, and
   * none is begun after it; a catalog that does not answer ends the review with
   * {@link FenceReviewTimeoutError}. Each step had a bound of its own before (a pool's, the settle's
   * lock timeout), but not the whole: a caller waited on every silent shard in turn, and on a pool
   * without timeouts for ever, holding `catalog.owner_change_review` (every hand change meanwhile
   * refused) all the while.
   */
  readonly timeoutMs?: number;
}

/** {@link FenceReviewOptions.olderThanMs}'s default: far past any hand change's fence-to-commit time (its counts are bounded by 10 s a shard). */
export const DEFAULT_REVIEW_MIN_AGE_MS = 15 * 60_000;

/** {@link FenceReviewOptions.timeoutMs}'s default: a review reads each shard once and settles a row in a few ms; two minutes is far past a sound one. */
export const DEFAULT_REVIEW_TIMEOUT_MS = 120_000;

/**
 * How much of the review's time is kept for the catalog at the end (the judging reads before
 * the settles, the commit that lets the review's lock go): the shards' reads and the settles end
 * this much before the deadline, at most a quarter of it.
 */
const CATALOG_RESERVE_MS = 1_000;

/** The review did not end within its deadline because the catalog did not answer in time; see {@link FenceReviewOptions.timeoutMs}. */
export class FenceReviewTimeoutError extends Error {
  override readonly name = 'FenceReviewTimeoutError';
  constructor(
    readonly timeoutMs: number,
    options?: { cause?: unknown },
  ) {
    super(
      `the fence review did not end within ${timeoutMs} ms: the catalog did not answer in time, and the review's transaction was given up (catalog.owner_change_review is let go once the server ends it); a row settled before then stays settled, each by its own compare-and-set: run the review again once the catalog answers`,
      options,
    );
  }
}

const FINISHED = new Set(['done', 'failed', 'cancelled']);

/** SQLSTATE lock_not_available (`for update nowait`). */
const LOCK_NOT_AVAILABLE = '55P03';

interface FenceRowRead {
  kind: 'slot' | 'directory';
  unit_id: string;
  state: string;
  job_id: string | null;
  moved_to: string | null;
  map_version: string;
  age_ms: number;
}

/** Lists the fence rows no live move explains, on every shard given, and settles the safe ones with `settle`; see the module. */
export async function reviewFences(options: FenceReviewOptions): Promise<FenceReview> {
  const minAge = options.olderThanMs ?? DEFAULT_REVIEW_MIN_AGE_MS;
  const timeoutMs = options.timeoutMs ?? DEFAULT_REVIEW_TIMEOUT_MS;
  checkDeadlineMs('timeoutMs', timeoutMs);
  const deadlineAt = Date.now() + timeoutMs;
  // The shards' reads and the settles end early enough for the catalog's last statements.
  const shardsBy = deadlineAt - Math.min(CATALOG_RESERVE_MS, timeoutMs / 4);
  let catalog: pg.PoolClient;
  try {
    catalog = await connectBy(options.catalog, deadlineAt, 'catalog');
  } catch (err) {
    throw err instanceof DeadlinePassedError ? new FenceReviewTimeoutError(timeoutMs, { cause: err }) : err;
  }
  // At the deadline the catalog's statement is cancelled, and a catalog that answers not even that
  // is dropped: the review never waits on it past the deadline and its grace.
  const guard = holdToDeadline(catalog, deadlineAt);
  const quiet = quietWhileHeld(catalog);
  let failure: unknown;
  let broken = false;
  try {
    // A catalog whose path goes silent never hears the review's end: the server ends the
    // transaction itself (and lets catalog.owner_change_review go) soon after the deadline.
    await catalog.query(`begin; set local idle_in_transaction_session_timeout = ${serverTimeoutMs(timeoutMs + DEADLINE_GRACE_MS)}`);
    let changeInFlight: string | undefined;
    try {
      await catalog.query('savepoint review_lock');
      await catalog.query('select 1 from catalog.owner_change_review where id = 1 for update nowait');
      // Only a settle needs the lock held (it deletes rows); a listing only asks whether a change
      // is in flight, and lets the row go at once (a rolled-back savepoint releases its row lock):
      // held, every listing (an operator's, an API's poll) made each hand change meanwhile wait.
      await catalog.query(options.settle === true ? 'release savepoint review_lock' : 'rollback to savepoint review_lock; release savepoint review_lock');
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code !== LOCK_NOT_AVAILABLE) throw reviewLockError(err);
      await catalog.query('rollback to savepoint review_lock; release savepoint review_lock');
      changeInFlight = 'a hand change of the slot map holds catalog.owner_change_review (it is between its fence and its commit), or another review settling the rows does: no row was reopened; try again once it has ended';
    }
    // In parallel, each within half the time left: one after another, every silent shard cost the
    // next its time, and a silent shard given all of it left none to settle the others' rows. The
    // map is read after all of them (judgeRows), whatever order they answered in.
    const readMs = Math.max(0, Math.floor((shardsBy - Date.now()) / 2));
    const readsBy = Date.now() + readMs;
    const reads = await Promise.all(
      [...options.shards].map(async ([shard, pool]): Promise<{ shard: string; rows?: FenceRowRead[]; error?: string }> => {
        try {
          const late = (): Error => new Error(`no answer within ${readMs} ms, half the time the review had left of its ${timeoutMs} ms`);
          const rows = await byDeadline(pool.query<FenceRowRead>(fenceRowsSql(options.all === true)), readsBy, late);
          return { shard, rows: rows.rows };
        } catch (err) {
          return { shard, error: err instanceof Error ? err.message : String(err) };
        }
      }),
    );
    const unreachable = reads.flatMap((r) => (r.error === undefined ? [] : [`${r.shard} (${r.error})`]));
    const read = new Map(reads.flatMap((r) => (r.rows === undefined ? [] : [[r.shard, r.rows] as const])));
    // No owner change or move writes a row `moved` to the shard that holds it: such a row was read
    // through the URL of another shard (the ID=URL pairs swapped, or one URL given twice), whose
    // `moved` rows, sending writes to the map's owner, looked like rows on that owner and were
    // deleted, that other shard then taking writes where the map does not look
    // (owner-change-review.test.ts). Refused before anything is judged.
    for (const [shard, rows] of read) {
      const self = rows.filter((r) => r.state === 'moved' && r.moved_to === shard);
      const [first] = self;
      if (first === undefined) continue;
      throw new Error(
        `the write_fences rows read as ${shard}'s name ${shard} as the shard they moved to (${first.kind} ${first.unit_id}${self.length > 1 ? ` and ${self.length - 1} more` : ''}), which no move or owner change writes: the URL given for ${shard} is another shard's. Check the ID=URL pairs (--shard, SHARD_DATABASE_URLS); nothing was settled`,
      );
    }
    const { map, judged, explained } = await judgeRows(catalog, read, options.all === true, minAge, changeInFlight);
    const reviewed: ReviewedFence[] = [];
    for (const { shard, read: r, row } of judged) {
      if (options.settle !== true || row.action === 'none' || row.withheld !== undefined) {
        reviewed.push(options.settle === true && row.action !== 'none' ? { ...row, outcome: `left: ${row.withheld ?? 'nothing to do'}` } : row);
        continue;
      }
      // None begun once the time is up: the catalog's lock, which a reopen needs held, goes with it.
      const outcome = Date.now() < shardsBy ? await settleRow(options.shards.get(shard) as Queryable, r, row, map.version, shardsBy, timeoutMs) : `left: not tried: the review's ${timeoutMs} ms ran out (run it again)`;
      reviewed.push({ ...row, outcome });
    }
    await catalog.query('commit');
    return { mapVersion: map.version, rows: reviewed, explained, unreachable, ...(changeInFlight === undefined ? {} : { changeInFlight }) };
  } catch (err) {
    failure = err;
    if (!guard.expired) {
      await catalog.query('rollback').catch(() => {
        broken = true;
      });
    }
    // The catalog's statement ended by the deadline (cancelled, or its connection dropped).
    if (guard.expired || (guard.cancelSent && queryCanceled(err))) throw new FenceReviewTimeoutError(timeoutMs, { cause: err });
    throw err;
  } finally {
    guard.disarm();
    const drop = broken || !guard.reusable(failure);
    quiet.release(drop);
    catalog.release(drop || undefined);
  }
}

/** `work`, or a rejection with `late()` once `deadlineAt` (`Date.now()` ms) passes first; `work` is not waited on after. */
async function byDeadline<T>(work: Promise<T>, deadlineAt: number, late: () => Error): Promise<T> {
  work.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(late()), Math.max(0, deadlineAt - Date.now()));
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function reviewLockError(err: unknown): Error {
  const code = (err as { code?: unknown }).code;
  if (code === '42P01') return new Error('the catalog has no catalog.owner_change_review: apply the sharding migrations first (ca-dms-scaling migrate, 016_owner_change_review.sql)', { cause: err });
  if (code === '42501') return new Error("this catalog login may not lock catalog.owner_change_review: use the control login (ca_dms_control) or the catalog's owner", { cause: err });
  return err instanceof Error ? err : new Error(String(err));
}

/** Why a reopen is not done now, or undefined where it may be. */
function reopenWithheld(row: ReviewedFence, minAge: number, changeInFlight: string | undefined): string | undefined {
  if (changeInFlight !== undefined) return 'a hand change is in flight (catalog.owner_change_review held): try again once it has ended';
  if (row.ageMs < minAge) {
    return `last written ${Math.round(row.ageMs / 1000)} s ago, under --older-than ${Math.round(minAge / 1000)} s: a change through a client holding no transaction, or of an older version, takes no lock and may still be publishing`;
  }
  return undefined;
}

/** A row's diagnosis and action, or null where a live move or the map explains it. */
function judge(
  r: FenceRowRead,
  shard: string,
  owner: string | undefined,
  version: number,
  jobs: ReadonlyMap<string, { id: string; state: string }>,
  unfinished: { id: string; state: string; kind: string; unit_id: string } | undefined,
): { diagnosis: string; action: FenceAction; withheld?: string } | null {
  if (r.state === 'open') return null;
  const job = r.job_id === null ? undefined : jobs.get(r.job_id);
  // A live move's row: the move's to fence, release and clean up.
  if (job !== undefined && !FINISHED.has(job.state)) return null;
  // A `moved` row on a shard the map does not name sends the unit's writers to the map, whatever
  // its `moved_to` says (an older owner's): nothing refuses a write where the map sends it.
  if (r.state === 'moved' && owner !== undefined && shard !== owner) return null;
  const byWhom = r.job_id === null ? 'a hand change (job_id null)' : job === undefined ? `move job #${r.job_id}, which the catalog does not have` : `move job #${r.job_id} (${job.state})`;
  const refusing = r.state === 'moved' ? `CAF02, moved to ${r.moved_to ?? '?'}` : 'CAF01';
  if (r.kind === 'directory') {
    return { diagnosis: `directory key's row ${r.state} by ${byWhom}, no move of it running: refuses the key's writes here (${refusing}); a key's owner is decided by hand (docs/sharding-spec.md section 9)`, action: 'none' };
  }
  if (owner === undefined) return { diagnosis: `slot ${r.unit_id} is not in slot map version ${version}: decide by hand`, action: 'none' };
  const moving = unfinished === undefined ? undefined : `move job #${unfinished.id} of slot ${r.unit_id} is unfinished (${unfinished.state}): settle once it has ended`;
  if (r.state === 'fenced' && r.job_id === null) {
    if (shard === owner) {
      return {
        diagnosis: `left fenced by a hand change that did not finish (killed between its fence and its put-back, or its commit failed uncommitted): the map (version ${version}) still names ${shard}, which refuses the slot's writes (CAF01, none lost)`,
        action: 'reopen',
        ...(moving === undefined ? {} : { withheld: moving }),
      };
    }
    return {
      diagnosis: `left fenced by a hand change whose map was published (version ${version} names ${owner}) but whose fences were not settled: ${shard} refuses the slot's writes (CAF01) instead of sending them to ${owner} (CAF02)`,
      action: 'set moved',
      ...(moving === undefined ? {} : { withheld: moving }),
    };
  }
  if (r.state === 'moved' && (r.job_id === null || job !== undefined)) {
    return {
      diagnosis: `moved row on the shard the map names (version ${version}): refuses its writes (${refusing}) while the map sends them here; left by ${byWhom}${r.job_id === null ? ", a change in a caller's transaction (committed: the new owner's older row; rolled back: the old owner's)" : ''}`,
      action: 'reopen',
      ...(moving === undefined ? {} : { withheld: moving }),
    };
  }
  return { diagnosis: `${r.state} by ${byWhom}, no move of the slot running: refuses the slot's writes (${refusing}); decide by hand`, action: 'none' };
}

/** How long a settling statement waits for a row lock on a shard (a move's or a change's statement on the row). */
const SETTLE_LOCK_TIMEOUT_MS = 2_000;

/** Settles one row as read (compare-and-set), by `deadlineAt` (`Date.now()` ms): `settled`, or why it was left. */
async function settleRow(pool: Queryable, r: FenceRowRead, row: ReviewedFence, version: number, deadlineAt: number, timeoutMs: number): Promise<string> {
  const same = `kind = $1 and unit_id = $2 and state = $3 and job_id is not distinct from $4::bigint and moved_to is not distinct from $5 and map_version = $6::bigint`;
  const args = [r.kind, r.unit_id, r.state, r.job_id, r.moved_to, r.map_version];
  let committing = false;
  try {
    const count = await withLockTimeout(
      pool,
      row.shard,
      deadlineAt,
      async (c) =>
        row.action === 'reopen'
          ? (await c.query(`delete from write_fences where ${same}`, args)).rowCount
          : (await c.query(`update write_fences set state = 'moved', moved_to = $7, map_version = $8::bigint, updated_at = now() where ${same}`, [...args, row.owner, version])).rowCount,
      () => {
        committing = true;
      },
    );
    if (count !== 1) return 'left: the row changed since it was read (a move or a change took it over)';
    return row.action === 'reopen' ? `settled: reopened (deleted), ${row.shard} takes the slot's writes` : `settled: moved to ${row.owner ?? '?'} as of version ${version}`;
  } catch (err) {
    if (err instanceof SettleDeadlineError) {
      return committing
        ? `left: no answer by the review's deadline (${timeoutMs} ms) to the settle's commit, which may have been applied all the same: run the review again to see`
        : `left: no answer by the review's deadline (${timeoutMs} ms), nothing changed (its transaction was not committed): run the review again`;
    }
    return `left: ${err instanceof Error ? err.message : String(err)}`;
  }
}

/** A settle's shard did not answer by the review's deadline. */
class SettleDeadlineError extends Error {
  override readonly name = 'SettleDeadlineError';
}

/**
 * Runs `fn` in a transaction of its own on one of `pool`'s connections with a bounded lock wait,
 * all of it by `deadlineAt` (`Date.now()` ms): the checkout, the statements (the server's
 * `statement_timeout` is the time left; at the deadline the statement is cancelled, and a shard
 * that answers not even that has its connection dropped: never lent again). `onCommit` hears
 * when the commit is sent: from then on the statement is not cancelled (a cancelled commit may
 * still have committed), and a deadline passing means the outcome is not known. A plain query
 * where `pool` cannot lend a connection, given up at the deadline.
 */
/**
 * Keeps a checked-out connection's death from crashing the process: a connection dropped at the
 * deadline (holdToDeadline), or by the server or the network, emits 'error' on its client, and
 * the pool listens only to idle ones (fence-review-deadline.test.ts: "Connection terminated
 * unexpectedly" uncaught). Its failure reaches the review through the statement it ends. A client
 * given back to be reused stops listening; one dropped keeps the listener, as late events of its
 * dead socket may still come.
 */
function quietWhileHeld(c: pg.PoolClient): { release(drop: boolean): void } {
  const ignore = (): void => undefined;
  c.on('error', ignore);
  return {
    release: (drop) => {
      if (!drop) c.off('error', ignore);
    },
  };
}

async function withLockTimeout<T>(pool: Queryable, shard: string, deadlineAt: number, fn: (c: Queryable) => Promise<T>, onCommit: () => void): Promise<T> {
  const late = (): Error => new SettleDeadlineError(`${shard}: no answer by the review's deadline`);
  const p = pool as Partial<pg.Pool>;
  if (typeof p.connect !== 'function' || !('totalCount' in p)) return byDeadline(fn(pool), deadlineAt, late);
  let c: pg.PoolClient;
  try {
    c = await connectBy(pool as pg.Pool, deadlineAt, shard);
  } catch (err) {
    throw err instanceof DeadlinePassedError ? late() : err;
  }
  let committing = false;
  const guard = holdToDeadline(c, deadlineAt, { mayCancel: () => !committing });
  const quiet = quietWhileHeld(c);
  let failure: unknown;
  let broken = false;
  try {
    const left = deadlineAt - Date.now();
    await c.query(
      `begin; set local lock_timeout = ${serverTimeoutMs(Math.min(SETTLE_LOCK_TIMEOUT_MS, left))}; set local statement_timeout = ${serverTimeoutMs(left)}; set local idle_in_transaction_session_timeout = ${serverTimeoutMs(left + DEADLINE_GRACE_MS)}`,
    );
    const out = await fn(c);
    committing = true;
    onCommit();
    await c.query('commit');
    return out;
  } catch (err) {
    failure = err;
    if (!guard.expired && !committing) {
      await c.query('rollback').catch(() => {
        broken = true;
      });
    }
    // Cancelled at the deadline, or dropped past its grace.
    if (guard.expired || (guard.cancelSent && queryCanceled(err))) throw late();
    throw err;
  } finally {
    guard.disarm();
    const drop = broken || !guard.reusable(failure);
    quiet.release(drop);
    c.release(drop || undefined);
  }
}

/** What {@link listFences} reads with: nothing is locked, nothing written, every shard's read bounded. */
export interface FenceListingOptions {
  /**
   * The catalog: a login that may read `catalog.slot_maps` and `catalog.move_jobs` (the API's
   * control login). It need not, and is not asked to, lock `catalog.owner_change_review`.
   */
  readonly catalog: Queryable;
  /** The shards' primaries, by shard id: a login that may read `write_fences` (the monitor's, shard migration 013). */
  readonly shards: ReadonlyMap<string, pg.Pool>;
  /** Each shard's read, connect included, ends within this; a shard that does not answer in time is listed unreachable. */
  readonly timeoutMs: number;
  /** List the explained rows too. */
  readonly all?: boolean;
  /** The age `--settle` would ask of a row it reopens, for `withheld` (default {@link DEFAULT_REVIEW_MIN_AGE_MS}, `--settle`'s default). */
  readonly olderThanMs?: number;
  /** Told the driver's own error of a shard listed unreachable (its text, which the listing leaves out, is for the log). */
  readonly onFailure?: (failure: { readonly what: string; readonly shardId: string; readonly error: unknown }) => void;
}

/**
 * The listing {@link reviewFences} makes without `settle`, read without its lock: for a reader
 * that must never hold up a hand change of the slot map (`GET /shards/fences`), whose catalog
 * login may lack UPDATE on `catalog.owner_change_review`. It cannot tell whether a hand change is
 * between its fence and its commit (only that lock tells): a reopen is judged by the row's age
 * alone (`changeInFlight` is never set); `--settle` takes the lock and judges again. The shards
 * are read in parallel, each within `timeoutMs`; the catalog's reads are bounded by its login's
 * statement timeout.
 *
 * @example
 * ```ts
 * const listing = await listFences({ catalog, shards: primaries, timeoutMs: 2_000 });
 * for (const r of listing.rows) console.log(r.shard, r.unitId, r.diagnosis, r.action);
 * ```
 */
export async function listFences(options: FenceListingOptions): Promise<FenceReview> {
  const reads = await Promise.all(
    [...options.shards].map(async ([shard, pool]): Promise<{ shard: string; rows?: FenceRowRead[]; error?: string }> => {
      try {
        const rows = await withNodeDeadline(pool, options.timeoutMs, shard, async (c) => (await c.query<FenceRowRead>(fenceRowsSql(options.all === true))).rows);
        return { shard, rows };
      } catch (err) {
        options.onFailure?.({ what: 'reading write_fences', shardId: shard, error: err });
        return { shard, error: shardFailure(err) };
      }
    }),
  );
  const unreachable = reads.flatMap((r) => (r.error === undefined ? [] : [`${r.shard} (${r.error})`]));
  const read = new Map(reads.flatMap((r) => (r.rows === undefined ? [] : [[r.shard, r.rows] as const])));
  const { map, judged, explained } = await judgeRows(options.catalog, read, options.all === true, options.olderThanMs ?? DEFAULT_REVIEW_MIN_AGE_MS, undefined);
  return { mapVersion: map.version, rows: judged.map((j) => j.row), explained, unreachable };
}

/**
 * Judges the rows `read` from each shard against the latest map and the move jobs, read through
 * `catalog` after the rows (see below): the rows to list (every one with `all`, else those no live
 * move explains), each with its diagnosis, action and why a reopen is withheld, and how many were
 * explained.
 */
async function judgeRows(
  catalog: Queryable,
  read: ReadonlyMap<string, readonly FenceRowRead[]>,
  all: boolean,
  minAge: number,
  changeInFlight: string | undefined,
): Promise<{ map: { version: number; assignments: string[] }; judged: { shard: string; read: FenceRowRead; row: ReviewedFence }[]; explained: number }> {
  // The map is read after the rows, not before: a move (or a change through a client holding no
  // transaction, which takes no lock) that flipped the slot between an earlier read of the map and
  // the read of the rows left the source's row `moved`, which that older map made look like a row
  // on the shard the map names, and the review reopened the source under the new map
  // (owner-change-review.test.ts). Read after, a map that a move or a fencing change publishes
  // since the rows were read follows a write of the row judged (a move starts only from an `open`
  // row, a change's fence takes a `moved` one over and is refused by a `fenced` one), which the
  // compare-and-set below refuses.
  const { rows: maps } = await catalog.query<{ version: number; assignments: string[] }>('select version, assignments from catalog.slot_maps order by version desc limit 1');
  const map = maps[0];
  if (map === undefined) throw new Error('the catalog has no slot map yet: nothing routes to the shards, and no fence row can be judged');
  const rows = [...read.values()].flat();
  const slotsOf = (r: FenceRowRead): number => (r.kind === 'slot' ? Number(r.unit_id) : slotOf(r.unit_id));
  const { rows: jobs } = await catalog.query<{ id: string; slot: number; state: string; kind: string; unit_id: string }>(
    `select id::text, slot, state, kind, unit_id from catalog.move_jobs where id = any($1::bigint[]) or (slot = any($2::int[]) and state not in ('done', 'failed', 'cancelled'))`,
    [[...new Set(rows.flatMap((r) => (r.job_id === null ? [] : [r.job_id])))], [...new Set(rows.map(slotsOf))]],
  );
  const jobById = new Map(jobs.map((j) => [j.id, j]));
  const unfinishedBySlot = new Map(jobs.filter((j) => !FINISHED.has(j.state)).map((j) => [j.slot, j]));
  const judged: { shard: string; read: FenceRowRead; row: ReviewedFence }[] = [];
  let explained = 0;
  for (const [shard, shardRows] of read) {
    for (const r of shardRows) {
      const slot = slotsOf(r);
      const owner = map.assignments[slot];
      const verdict = judge(r, shard, owner, map.version, jobById, unfinishedBySlot.get(slot));
      if (verdict === null) {
        explained += 1;
        if (!all) continue;
      }
      const base: ReviewedFence = {
        shard,
        kind: r.kind,
        unitId: r.unit_id,
        state: r.state,
        jobId: r.job_id,
        movedTo: r.moved_to,
        mapVersion: r.map_version,
        ageMs: Math.max(0, Math.round(r.age_ms)),
        owner,
        diagnosis: verdict?.diagnosis ?? 'explained: nothing to settle',
        action: verdict?.action ?? 'none',
        ...(verdict?.withheld === undefined ? {} : { withheld: verdict.withheld }),
      };
      const withheld = base.withheld ?? (base.action === 'reopen' ? reopenWithheld(base, minAge, changeInFlight) : undefined);
      judged.push({ shard, read: r, row: withheld === undefined ? base : { ...base, withheld } });
    }
  }
  return { map, judged, explained };
}

/**
 * Why a shard's rows could not be read, in words fit for an API client: the driver's and the
 * server's own text names addresses, ports and database objects, so only its kind is told, with
 * what to do where the fix is known.
 */
function shardFailure(err: unknown): string {
  return failureKind(err, {
    '57014': 'the read ran past its time limit (statement_timeout)',
    '42501': 'this login may not read write_fences: grant it SELECT (shard migration 013 grants it to ca_dms_monitor)',
    '42P01': 'the shard has no write_fences table: apply the shard migrations (ca-dms-scaling migrate)',
  });
}

/** A shard's `write_fences` rows as {@link listFences} reads them (every row with `all`, else those not `open`). */
function fenceRowsSql(all: boolean): string {
  return `select kind, unit_id, state, job_id::text, moved_to, map_version::text, (extract(epoch from (now() - updated_at)) * 1000)::float8 as age_ms
            from write_fences ${all ? '' : `where state <> 'open'`} order by kind, unit_id`;
}
