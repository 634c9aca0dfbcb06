/**
 * The operator's review of the shards' `write_fences` rows that no live move explains (issue #15,
 * docs/sharding-spec.md section 9, "Settling the rows a hand change left"): each listed with what
 * it does to the unit's writes, and, asked to settle, the rows whose fix is provably safe fixed.
 *
 * A map published by hand (`SlotMapStore.publish` / `publishByHand` with `shardPools`) fences each
 * slot it gives away on the old owner, publishes, then turns those rows `moved` and deletes the new
 * owner's older `moved` row ({@link OwnerChangeFences}); a pin changed by hand (`DirectoryStore.set`
 * / `repinByHand`) does the same with the key's `directory` row. Two outcomes leave rows only SQL fixed:
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
 *   unfinished move job (a hand row on a move that has not flipped excepted: {@link movingWithheld}),
 *   and the row was last written at least `olderThanMs` ago (a change of an
 *   older version, or through a client that holds no transaction, takes no lock);
 * - a `moved` row is deleted only where no rows of the unit sit behind it on its shard (rows the
 *   unit left there when it went away, read by no one since: deleted, the row let readers find them
 *   again as the unit's, as they were then);
 * - a key's `directory` rows by the same rules, judged by the shard the key routes to (its pin, or
 *   its slot's owner by hash), which only the sharding configuration tells ({@link FenceReviewOptions.routing}:
 *   whether pins override the hash); without it, or where pins route no key, they are left to the
 *   operator, saying why. A key's `directory` row decides for the key over its slot's row on its
 *   shard, so reopening one hands the key to that slot row: deleted where the slot row lets the key
 *   through (none, `open`, the key in its `excluded_keys`) or the key follows its slot (routed by
 *   hash); set `open` where the key is pinned there and the slot row is `moved` (deleted, the slot
 *   row refused every write the pin sends there, for good); left while the slot row is `fenced` or
 *   `incoming`. A `moved` row of a key is not reopened either where the shard it sends the writes
 *   to holds the key's rows other than a finished move's leftovers (the key's route changed past
 *   the stores: reopened, its writes were taken where its rows are not). A slot's `moved` row
 *   likewise, where the shard it sends the writes to holds the slot's rows (of the keys routed by
 *   the slot), and a `fenced` hand row where another shard holds the unit's rows (a slot's: a shard
 *   that owned it in a map since; a change that died after its commit, its route changed back past
 *   the stores since);
 * - every statement is a compare-and-set on the row as read: a row a move or a change took over
 *   since is left, and reported so.
 * Rows of a live move (its job unfinished), `open` rows and a `moved` row on a shard the unit does
 * not route to (its writers re-route) are explained and not listed (unless `all`); a finished
 * move's `fenced` or `incoming` rows are listed and left to the operator.
 *
 * @example
 * ```ts
 * const review = await reviewFences({ catalog, shards, settle: true, olderThanMs: 15 * 60_000, routing: moveRoutingOf(config) });
 * for (const r of review.rows) console.log(r.shard, r.unitId, r.diagnosis, r.outcome);
 * ```
 */
import type pg from 'pg';
import { slotOf } from '../../core/sharding/hash.js';
import { shardingDisabled, type MoveRouting } from '../../core/sharding/move-machine.js';
import { checkDeadlineMs, connectBy, DEADLINE_GRACE_MS, DeadlinePassedError, holdToDeadline, queryCanceled, serverTimeoutMs, withNodeDeadline } from './deadline.js';
import { failureKind, LOCK_NOT_AVAILABLE, readRetried } from './sqlstate.js';
import { describeRows, keyRowsOn, keysRowsOn, pinnedKeysOf, slotRowsOn, slotsRowsOn, type TableRows } from './unit-rows.js';

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
  /** A directory row: the shard its key routes to (its pin, or its slot's owner by hash), where the review knows the routing. */
  readonly route?: string;
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
  /**
   * Set where the owners of slots were read from the maps, not from their owner history, because
   * the history's list lacks maps (catalog.slot_owner_history_maps: maps inserted with the triggers
   * off, a restore) or the catalog is not migrated to sharding 028: how many maps, how many slots
   * were read the slow way, and the operator's step that repairs it.
   */
  readonly ownerHistory?: string;
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
  /**
   * How the sharding configuration routes (`moveRoutingOf(config)`): whether a key's pin overrides
   * its hash slot decides which shard a `directory` row is judged against. Absent, directory rows
   * are listed and left to the operator.
   */
  readonly routing?: MoveRouting;
  /**
   * Why `routing` is absent, as each key's row left to the operator says it (the command's: no
   * configuration given, and the runtimes' recorded routings missing or disagreeing,
   * runtime-routings.ts); by default, that the review was not given the configuration.
   */
  readonly routingUnknown?: string;
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

interface FenceRowRead {
  kind: 'slot' | 'directory';
  unit_id: string;
  state: string;
  job_id: string | null;
  moved_to: string | null;
  map_version: string;
  excluded_keys: string[] | null;
  age_ms: number;
}

/** How a row is settled, beyond its {@link FenceAction}. */
interface SettlePlan {
  /** `reopen`: delete the row, or (a key pinned to a shard whose slot row is `moved`) set it `open`. */
  readonly reopenAs?: 'delete' | 'open';
  /** `reopen` of a key's row by deletion: only while its slot's row there still lets the key through (the key's slot). */
  readonly slotGuard?: number;
  /** `set moved`: the shard, and the version recorded (the map's; a key's: its entry's, 0 routed by hash). */
  readonly movedTo?: string;
  readonly movedVersion?: number;
  /** What the settled row does now, for the outcome. */
  readonly takes?: string;
  /** A key's row: how its route reaches the row's shard (its pin, or by hash), for the words of a refusal ({@link rowsBehind}). */
  readonly routeHow?: string;
  /**
   * A key's row: its slot's row on the same shard where that row does not let the key through
   * (`moved`, `fenced` or `incoming`, the key not in its `excluded_keys`), with whether the key
   * follows it (routed by hash) or its pin sends it there: what a way out by hand must do with the
   * key's row so that the shard takes its writes ({@link keyRowsBehind}).
   */
  readonly slotRowHere?: { readonly state: string; readonly movedTo: string | null; readonly jobId: string | null; readonly byPin: boolean };
}

/**
 * Counts a unit's rows on a shard for the review ({@link judgeRows}); throws where the shard does not answer.
 * `slot`: the rows a slot's row there decides for (not of `excluded`, nor of a key with a
 * `directory` row there); `slot routed`: the slot's rows of every key but `excluded` (the keys its
 * route does not send by the slot), whatever rows that shard has; `directory`: a key's.
 */
type RowCounter = (
  shard: string,
  unit: { readonly kind: 'slot' | 'slot routed'; readonly slot: number; readonly excluded: readonly string[] } | { readonly kind: 'directory'; readonly key: string },
) => Promise<TableRows[]>;

/** Counts many keys' rows on a shard at once, as {@link RowCounter} counts one's (`keysRowsOn`): by key, keys without rows absent; throws where the shard does not answer. */
type KeysCounter = (shard: string, keys: readonly string[]) => Promise<Map<string, TableRows[]>>;

/** Counts many slots' rows on a shard at once, as {@link RowCounter} counts a `slot routed` unit's (`slotsRowsOn`): the i-th list the i-th unit's; throws where the shard does not answer. */
type SlotsCounter = (shard: string, units: readonly SlotUnit[]) => Promise<TableRows[][]>;

/** A slot unit {@link SlotsCounter} counts: `slot routed` (elsewhere: the slot's rows less `excluded`) or `slot` (a `moved` row's own shard: less the keys with a `directory` row there too), as {@link countUnitRows} counts each. */
interface SlotUnit {
  readonly kind: 'slot' | 'slot routed';
  readonly slot: number;
  readonly excluded: readonly string[];
}

/** A judged row with how it would be settled. */
interface Judged {
  readonly shard: string;
  readonly read: FenceRowRead;
  readonly row: ReviewedFence;
  readonly plan: SettlePlan;
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
    // READ COMMITTED whatever the login's or the database's default: the map the rows are judged by
    // is read after the rows (judgeRows), in a statement of its own. Begun REPEATABLE READ (a
    // default_transaction_isolation so set), that read saw the snapshot of the lock below, taken
    // before the shards were read, and a move that flipped meanwhile had its source's `moved` row
    // reopened (owner-change-review.test.ts, "reopens no row of a slot a move took off its shard").
    // A catalog whose path goes silent never hears the review's end: the server ends the
    // transaction itself (and lets catalog.owner_change_review go) soon after the deadline.
    await catalog.query(`begin isolation level read committed; set local idle_in_transaction_session_timeout = ${serverTimeoutMs(timeoutMs + DEADLINE_GRACE_MS)}`);
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
    // Counted within the time the settles have: a silent shard leaves its rows withheld, not the review hung.
    const count: RowCounter = (shard, unit) =>
      byDeadline(countUnitRows(options.shards.get(shard) as Queryable, unit), shardsBy, () => new Error(`no answer by the review's deadline (${timeoutMs} ms)`));
    const countKeys: KeysCounter = (shard, keys) =>
      byDeadline(keysRowsOn(options.shards.get(shard) as Queryable, keys), shardsBy, () => new Error(`no answer by the review's deadline (${timeoutMs} ms)`));
    const countSlots: SlotsCounter = (shard, units) =>
      byDeadline(slotUnitsRowsOn(options.shards.get(shard) as Queryable, units), shardsBy, () => new Error(`no answer by the review's deadline (${timeoutMs} ms)`));
    const { map, judged, explained, ownerHistory } = await judgeRows(catalog, read, {
      all: options.all === true,
      minAge,
      changeInFlight,
      routing: options.routing,
      ...(options.routingUnknown === undefined ? {} : { routingUnknown: options.routingUnknown }),
      count,
      countKeys,
      countSlots,
      read: new Set(read.keys()),
      given: new Set(options.shards.keys()),
    });
    const reviewed: ReviewedFence[] = [];
    for (const { shard, read: r, row, plan } of judged) {
      if (options.settle !== true || row.action === 'none' || row.withheld !== undefined) {
        reviewed.push(options.settle === true && row.action !== 'none' ? { ...row, outcome: `left: ${row.withheld ?? 'nothing to do'}` } : row);
        continue;
      }
      // None begun once the time is up: the catalog's lock, which a reopen needs held, goes with it.
      const outcome = Date.now() < shardsBy ? await settleRow(options.shards.get(shard) as Queryable, r, row, plan, shardsBy, timeoutMs) : `left: not tried: the review's ${timeoutMs} ms ran out (run it again)`;
      reviewed.push({ ...row, outcome });
    }
    await catalog.query('commit');
    return { mapVersion: map.version, rows: reviewed, explained, unreachable, ...(changeInFlight === undefined ? {} : { changeInFlight }), ...(ownerHistory === undefined ? {} : { ownerHistory }) };
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

/** What the review knows of a row's unit beyond the row: the map's owner of its slot, the key's pin, the unit's unfinished move, the shard's slot row of a key's slot. */
interface UnitFacts {
  readonly owner: string | undefined;
  readonly version: number;
  readonly jobs: ReadonlyMap<string, { id: string; state: string }>;
  readonly unfinished: { id: string; state: string; kind: string; unit_id: string; flipped: boolean } | undefined;
  /** A directory row: its key's pin, if any. */
  readonly pin?: { readonly shard: string; readonly version: number };
  /** A directory row: the shard's `slot` row of the key's slot, if read (not `open`). */
  readonly slotRow?: FenceRowRead;
  readonly routing: MoveRouting | undefined;
  readonly routingUnknown?: string;
}

/** A key's route under `routing`: the shard, how it was decided and the version its `moved` rows record; or why the review cannot tell. */
function keyRoute(key: string, f: UnitFacts): { shard: string; how: string; version: number; byPin: boolean } | { unknown: string } {
  const r = f.routing;
  if (r === undefined) {
    return {
      unknown:
        f.routingUnknown ??
        "the review was not given the sharding configuration, and where the key routes depends on it (whether pins override the hash: strategy and directory.override_hash): run it with SHARDING_CONFIG_JSON set (as the scaling API's function has it) or --local, or decide by hand",
    };
  }
  if (r.enabled === false) return { unknown: `${shardingDisabled(r)}: every key routes to default_shard, whatever its pin or slot; decide by hand` };
  if (r.strategy === 'range_based') return { unknown: 'strategy range_based routes keys by the configured ranges, not by pin or slot; decide by hand' };
  if (r.strategy === 'hash_based' && !r.overrideHash) {
    return {
      unknown:
        'with strategy hash_based and directory.override_hash off no pin routes the key (it routes by its slot), and this row was written while pins routed or past the stores: turned on again, the pin routes it again; decide by hand',
    };
  }
  if (f.pin !== undefined) return { shard: f.pin.shard, how: `its pin, directory version ${f.pin.version}`, version: f.pin.version, byPin: true };
  if (r.strategy === 'directory_based' && r.fallback === 'reject') return { unknown: "the key has no pin and strategy directory_based's fallback is reject: no shard takes its writes; decide by hand" };
  if (f.owner === undefined) return { unknown: `its slot ${slotOf(key)} is not in slot map version ${f.version}: decide by hand` };
  // A key routed by hash has no directory version: its `moved` rows record 0, below any pin's, so
  // that a later pin back to the shard deletes them as a pin's settle deletes older rows.
  return { shard: f.owner, how: `by hash: slot ${slotOf(key)}, slot map version ${f.version}`, version: 0, byPin: false };
}

/**
 * Why the unit's unfinished move (a slot's, or a key's of that slot) holds `r` back, or undefined:
 * its rows are the move's to fence, release and clean up (past its flip, its clean-up deletes the
 * unit's rows on its source), whatever they say. Not a hand change's row (`job_id` null) while the
 * move has not begun its flip: no run of the move takes such a row over (its preparation, the
 * first thing it writes in write_fences, refuses one on its source, `fenced` or `moved`: "this move
 * does not take it over"; its target's `incoming` row replaces only an `open`, `moved` or
 * `incoming` one), and a hand change writes none over a prepared move's rows (a move's `fenced` row
 * refuses the change, its `incoming` or `moved` row is left as it is, and the catalog refuses most
 * such changes first: CAF07, CAF08). So the row is a change's that died (or rolled back) before
 * the move's preparation, which it stops: left to the move, which waited for it in turn, the unit's
 * writes stayed refused until someone cancelled the move (owner-change-torture-review.test.ts;
 * owner-change-review.test.ts, owner-change-review-directory.test.ts, "... on the source of a move
 * planned since ..."). Judged as without the move instead (the lock, the age, the rows behind it):
 * its settle is what the move's own error asks of the operator by hand.
 */
function movingWithheld(r: FenceRowRead, f: UnitFacts, what: string): string | undefined {
  const job = f.unfinished;
  if (job === undefined || (r.job_id === null && !job.flipped)) return undefined;
  return `move job #${job.id} of ${what} is unfinished (${job.state}): settle once it has ended`;
}

type Verdict = { diagnosis: string; action: FenceAction; withheld?: string; route?: string; plan: SettlePlan };

/** A row's diagnosis and action, or null where a live move, the map or the key's route explains it. */
function judge(r: FenceRowRead, shard: string, f: UnitFacts): Verdict | null {
  if (r.state === 'open') return null;
  const job = r.job_id === null ? undefined : f.jobs.get(r.job_id);
  // A live move's row: the move's to fence, release and clean up.
  if (job !== undefined && !FINISHED.has(job.state)) return null;
  if (r.kind === 'directory') return judgeKey(r, shard, f, job);
  const { owner, version } = f;
  // A `moved` row on a shard the map does not name sends the unit's writers to the map, whatever
  // its `moved_to` says (an older owner's): nothing refuses a write where the map sends it.
  if (r.state === 'moved' && owner !== undefined && shard !== owner) return null;
  const byWhom = r.job_id === null ? 'a hand change (job_id null)' : job === undefined ? `move job #${r.job_id}, which the catalog does not have` : `move job #${r.job_id} (${job.state})`;
  const refusing = r.state === 'moved' ? `CAF02, moved to ${r.moved_to ?? '?'}` : 'CAF01';
  if (owner === undefined) return { diagnosis: `slot ${r.unit_id} is not in slot map version ${version}: decide by hand`, action: 'none', plan: {} };
  const moving = movingWithheld(r, f, `slot ${r.unit_id}`);
  const withMoving = moving === undefined ? {} : { withheld: moving };
  const reopen: SettlePlan = { reopenAs: 'delete', takes: `${shard} takes the slot's writes` };
  if (r.state === 'fenced' && r.job_id === null) {
    if (shard === owner) {
      return {
        diagnosis: `left fenced by a hand change that did not finish (killed between its fence and its put-back, or its commit failed uncommitted): the map (version ${version}) still names ${shard}, which refuses the slot's writes (CAF01, none lost)`,
        action: 'reopen',
        plan: reopen,
        ...withMoving,
      };
    }
    return {
      diagnosis: `left fenced by a hand change whose map was published (version ${version} names ${owner}) but whose fences were not settled: ${shard} refuses the slot's writes (CAF01) instead of sending them to ${owner} (CAF02)`,
      action: 'set moved',
      plan: { movedTo: owner, movedVersion: version, takes: `as of version ${version}` },
      ...withMoving,
    };
  }
  if (r.state === 'moved' && (r.job_id === null || job !== undefined)) {
    return {
      diagnosis: `moved row on the shard the map names (version ${version}): refuses its writes (${refusing}) while the map sends them here; left by ${byWhom}${r.job_id === null ? ", a change in a caller's transaction (committed: the new owner's older row; rolled back: the old owner's)" : ''}`,
      action: 'reopen',
      plan: reopen,
      ...withMoving,
    };
  }
  return { diagnosis: `${r.state} by ${byWhom}, no move of the slot running: refuses the slot's writes (${refusing}); decide by hand`, action: 'none', plan: {} };
}

/**
 * A key's `directory` row, judged by the shard the key routes to ({@link keyRoute}), as a slot's
 * row is by the map: docs/sharding-spec.md section 9, "Settling the rows a hand change left".
 */
function judgeKey(r: FenceRowRead, shard: string, f: UnitFacts, job: { id: string; state: string } | undefined): Verdict | null {
  const key = r.unit_id;
  const route = keyRoute(key, f);
  const byWhom = r.job_id === null ? 'a hand change of its pin (job_id null)' : job === undefined ? `move job #${r.job_id}, which the catalog does not have` : `move job #${r.job_id} (${job.state})`;
  const refusing = r.state === 'moved' ? `CAF02, moved to ${r.moved_to ?? '?'}` : 'CAF01';
  if ('unknown' in route) {
    // A `moved` row on a shard that is neither the key's pin nor its slot's owner refuses only
    // writes no route sends there, whichever the configuration picks.
    if (r.state === 'moved' && shard !== f.pin?.shard && shard !== f.owner) return null;
    return { diagnosis: `directory key's row ${r.state} by ${byWhom}, no move of it running: refuses the key's writes here (${refusing}); not settled: ${route.unknown}`, action: 'none', plan: {} };
  }
  const R = route.shard;
  // A `moved` row on a shard the key does not route to sends its writers on; nothing refuses a
  // write where the key's route sends it (a pinned key's marks on its slot's shards, a pin's old owner).
  if (r.state === 'moved' && shard !== R) return null;
  const base = { route: R };
  const slot = slotOf(key);
  const moving = movingWithheld(r, f, f.unfinished?.kind === 'slot' ? `the key's slot ${slot}` : `the key (its slot ${slot})`);
  if (r.state === 'fenced' && r.job_id === null && shard !== R) {
    return {
      ...base,
      diagnosis: `left fenced by a hand change of the key's pin that was written (the key routes to ${R}: ${route.how}) but whose fences were not settled: ${shard} refuses the key's writes (CAF01) instead of sending them to ${R} (CAF02)`,
      action: 'set moved',
      plan: { movedTo: R, movedVersion: route.version, takes: route.byPin ? `as of directory version ${route.version}` : 'routed by hash (directory version 0)' },
      ...(moving === undefined ? {} : { withheld: moving }),
    };
  }
  let diagnosis: string;
  if (r.state === 'fenced' && r.job_id === null) {
    diagnosis = `left fenced by a hand change of the key's pin that did not finish (killed between its fence and its put-back, or its commit failed uncommitted): the key still routes to ${shard} (${route.how}), which refuses its writes (CAF01, none lost)`;
  } else if (r.state === 'moved' && (r.job_id === null || job !== undefined)) {
    diagnosis = `moved row on the shard the key routes to (${route.how}): refuses its writes (${refusing}) while its route sends them here; left by ${byWhom}${r.job_id === null ? ", a pin changed in a caller's transaction (committed: the new owner's older row; rolled back: the old owner's), or a pinned key's mark on its slot's shard since unpinned or pinned there past the stores" : ''}`;
  } else {
    return { ...base, diagnosis: `directory key's row ${r.state} by ${byWhom}, no move of it running: refuses the key's writes here (${refusing}); decide by hand`, action: 'none', plan: {} };
  }
  // The key's row decides for it here over its slot's row ("Which row applies"): reopened, the
  // slot's row decides, unless it keeps the key out.
  const s = f.slotRow;
  const lets = s === undefined || s.state === 'open' || (s.excluded_keys ?? []).includes(key);
  let plan: SettlePlan;
  let slotWithheld: string | undefined;
  if (lets) {
    plan = { reopenAs: 'delete', ...(route.byPin ? { slotGuard: slot } : {}), takes: `${shard} takes the key's writes` };
  } else if (!route.byPin) {
    // Routed by hash, the key follows its slot: the slot's own row there is listed (and settled) on its own.
    plan = { reopenAs: 'delete', takes: `the key follows its slot's row on ${shard} (${s.state}${s.moved_to === null ? '' : ` to ${s.moved_to}`}), listed on its own` };
  } else if (s.state === 'moved') {
    // Deleted, the slot's `moved` row there decided for the key and refused every write its pin
    // sends there (CAF02, "routing is not converging"), for good: an `open` row of the key decides instead.
    plan = { reopenAs: 'open', takes: `${shard} takes the key's writes (deleted, its slot ${slot}'s row there, moved to ${s.moved_to ?? '?'}, would refuse them: it does not keep the key out)` };
  } else {
    plan = { reopenAs: 'delete' };
    slotWithheld = `${shard}'s row of the key's slot ${slot} is ${s.state} (${s.job_id === null ? 'a hand change' : `move job #${s.job_id}`}) and does not keep the key out: deleted, it would refuse the key's writes here; opened, the key would pass a fence of its slot: settle that row first`;
  }
  const withheld = moving ?? slotWithheld;
  const slotRowHere = lets ? {} : { slotRowHere: { state: s.state, movedTo: s.moved_to, jobId: s.job_id, byPin: route.byPin } };
  return { ...base, diagnosis, action: 'reopen', plan: { ...plan, routeHow: route.how, ...slotRowHere }, ...(withheld === undefined ? {} : { withheld }) };
}

/** How long a settling statement waits for a row lock on a shard (a move's or a change's statement on the row). */
const SETTLE_LOCK_TIMEOUT_MS = 2_000;

/** Settles one row as read (compare-and-set), by `deadlineAt` (`Date.now()` ms): `settled`, or why it was left. */
async function settleRow(pool: Queryable, r: FenceRowRead, row: ReviewedFence, plan: SettlePlan, deadlineAt: number, timeoutMs: number): Promise<string> {
  const same = `kind = $1 and unit_id = $2 and state = $3 and job_id is not distinct from $4::bigint and moved_to is not distinct from $5 and map_version = $6::bigint`;
  const args = [r.kind, r.unit_id, r.state, r.job_id, r.moved_to, r.map_version];
  let committing = false;
  try {
    const count = await withLockTimeout(
      pool,
      row.shard,
      deadlineAt,
      async (c) => {
      if (row.action === 'set moved') {
        return (await c.query(`update write_fences set state = 'moved', moved_to = $7, map_version = $8::bigint, updated_at = now() where ${same}`, [...args, plan.movedTo, plan.movedVersion])).rowCount;
      }
      if (plan.reopenAs === 'open') return (await c.query(`update write_fences set state = 'open', moved_to = null, job_id = null, updated_at = now() where ${same}`, args)).rowCount;
      if (plan.slotGuard !== undefined) {
        // Only while the slot's row there still lets the key through: else, deleted, it refused the
        // key where its pin sends it. The key's row is locked first, in a statement of its own: its
        // writers hold it FOR SHARE, and a deletion that waited for them had read the slot's row
        // with the snapshot it began with, before the wait, and deleted over a slot row committed
        // meanwhile (owner-change-review-directory.test.ts, "... while the deletion waits for the
        // key's writers ..."). Read after the lock, the guard sees what committed before it.
        if ((await c.query(`select 1 from write_fences where ${same} for update`, args)).rowCount !== 1) return 0;
        const deleted = (
          await c.query(
            `delete from write_fences where ${same}
                and not exists (select 1 from write_fences s where s.kind = 'slot' and s.unit_id = $7 and s.state <> 'open' and not ($2 = any(s.excluded_keys)))`,
            [...args, String(plan.slotGuard)],
          )
        ).rowCount;
        return deleted === 1 ? 1 : 'slot row';
      }
      return (await c.query(`delete from write_fences where ${same}`, args)).rowCount;
      },
      () => {
        committing = true;
      },
    );
    if (count === 'slot row') {
      return `left: ${row.shard}'s row of the key's slot ${plan.slotGuard ?? '?'} changed since it was read and no longer lets the key through: deleted, the key's row would hand the key to it, which refuses its writes where its pin sends them; nothing changed: run the review again`;
    }
    if (count !== 1) return 'left: the row changed since it was read (a move or a change took it over)';
    if (row.action === 'set moved') return `settled: moved to ${plan.movedTo ?? '?'} ${plan.takes ?? ''}`.trimEnd();
    return `settled: reopened (${plan.reopenAs === 'open' ? 'set open' : 'deleted'}), ${plan.takes ?? `${row.shard} takes the unit's writes`}`;
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
    // READ COMMITTED whatever the default: at REPEATABLE READ the compare-and-set, waiting on a
    // writer of the row, failed with 40001 instead of finding the row changed and leaving it.
    await c.query(
      `begin isolation level read committed; set local lock_timeout = ${serverTimeoutMs(Math.min(SETTLE_LOCK_TIMEOUT_MS, left))}; set local statement_timeout = ${serverTimeoutMs(left)}; set local idle_in_transaction_session_timeout = ${serverTimeoutMs(left + DEADLINE_GRACE_MS)}`,
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
   * The catalog: a login that may read `catalog.slot_maps`, `catalog.move_jobs` and
   * `catalog.shard_directory` (the API's control login). It need not, and is not asked to, lock
   * `catalog.owner_change_review`.
   */
  readonly catalog: Queryable;
  /** The shards' primaries, by shard id: a login that may read `write_fences` and the sharded tables (the monitor's, shard migrations 006, 013, 021). */
  readonly shards: ReadonlyMap<string, pg.Pool>;
  /** Each shard's read, connect included, ends within this; a shard that does not answer in time is listed unreachable. */
  readonly timeoutMs: number;
  /** List the explained rows too. */
  readonly all?: boolean;
  /** The age `--settle` would ask of a row it reopens, for `withheld` (default {@link DEFAULT_REVIEW_MIN_AGE_MS}, `--settle`'s default). */
  readonly olderThanMs?: number;
  /** As {@link FenceReviewOptions.routing}. */
  readonly routing?: MoveRouting;
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
  // The rows a reopen would leave behind are counted as --settle counts them, each shard within the same bound.
  const count: RowCounter = async (shard, unit) => {
    const pool = options.shards.get(shard) as pg.Pool;
    try {
      return await withNodeDeadline(pool, options.timeoutMs, shard, (c) => countUnitRows(c, unit));
    } catch (err) {
      options.onFailure?.({ what: 'counting a unit\'s rows', shardId: shard, error: err });
      throw new Error(shardFailure(err), { cause: err });
    }
  };
  const countKeys: KeysCounter = async (shard, keys) => {
    const pool = options.shards.get(shard) as pg.Pool;
    try {
      return await withNodeDeadline(pool, options.timeoutMs, shard, (c) => keysRowsOn(c, keys));
    } catch (err) {
      options.onFailure?.({ what: "counting keys' rows", shardId: shard, error: err });
      throw new Error(shardFailure(err), { cause: err });
    }
  };
  const countSlots: SlotsCounter = async (shard, units) => {
    const pool = options.shards.get(shard) as pg.Pool;
    try {
      return await withNodeDeadline(pool, options.timeoutMs, shard, (c) => slotUnitsRowsOn(c, units));
    } catch (err) {
      options.onFailure?.({ what: "counting slots' rows", shardId: shard, error: err });
      throw new Error(shardFailure(err), { cause: err });
    }
  };
  const { map, judged, explained, ownerHistory } = await judgeRows(options.catalog, read, {
    all: options.all === true,
    minAge: options.olderThanMs ?? DEFAULT_REVIEW_MIN_AGE_MS,
    changeInFlight: undefined,
    routing: options.routing,
    count,
    countKeys,
    countSlots,
    read: new Set(read.keys()),
    given: new Set(options.shards.keys()),
  });
  return { mapVersion: map.version, rows: judged.map((j) => j.row), explained, unreachable, ...(ownerHistory === undefined ? {} : { ownerHistory }) };
}

/** How {@link judgeRows} judges. */
interface JudgeOptions {
  readonly all: boolean;
  readonly minAge: number;
  readonly changeInFlight: string | undefined;
  readonly routing: MoveRouting | undefined;
  /** Why `routing` is absent ({@link FenceReviewOptions.routingUnknown}). */
  readonly routingUnknown?: string;
  /** Counts the rows a reopen of a `moved` row would bring back into sight ({@link countUnitRows}, bounded by the caller). */
  readonly count: RowCounter;
  /** Counts many keys' rows on a shard at once: the keys whose rows {@link rowsBehind} may count, before it judges them. */
  readonly countKeys: KeysCounter;
  /** Counts many slots' rows on a shard at once: the slots whose rows {@link rowsBehind} may count where a map since (or a `moved` row) gave them, before it judges them. */
  readonly countSlots: SlotsCounter;
  /** The shards whose rows were read (given, and answering): a unit's rows are counted only on those. */
  readonly read: ReadonlySet<string>;
  /** The shards given to the review (read or not): the deployment's. */
  readonly given: ReadonlySet<string>;
}

/** What {@link rowsBehind} reads of the catalog: the directory's keys of a slot (read once a slot, and only where asked). */
interface CatalogFacts {
  readonly pinnedOf: (slot: number) => Promise<readonly string[]>;
  /** The shards that own `slot` in the maps from `version` on (the latest included). */
  readonly ownersSince: (slot: number, version: number) => Promise<readonly string[]>;
}

/**
 * Judges the rows `read` from each shard against the latest map, the directory and the move
 * jobs, read through `catalog` after the rows (see below): the rows to list (every one with
 * `all`, else those no live move explains), each with its diagnosis, action and why a reopen is
 * withheld, and how many were explained.
 */
async function judgeRows(
  catalog: Queryable,
  read: ReadonlyMap<string, readonly FenceRowRead[]>,
  o: JudgeOptions,
): Promise<{ map: { version: number; assignments: string[] }; judged: Judged[]; explained: number; ownerHistory?: string }> {
  // The map is read after the rows, not before: a move (or a change through a client holding no
  // transaction, which takes no lock) that flipped the slot between an earlier read of the map and
  // the read of the rows left the source's row `moved`, which that older map made look like a row
  // on the shard the map names, and the review reopened the source under the new map
  // (owner-change-review.test.ts). Read after, a map that a move or a fencing change publishes
  // since the rows were read follows a write of the row judged (a move starts only from an `open`
  // row, a change's fence takes a `moved` one over and is refused by a `fenced` one), which the
  // compare-and-set below refuses. The directory's pins likewise: a pin changed by hand since the
  // rows were read fenced (wrote) the key's row on its old owner first.
  // Each read sent again on 40001 where `catalog` is a pool, or a connection in no transaction
  // (listFences: GET /shards/fences), each statement then a transaction of its own at the login's
  // or the database's default level: at SERIALIZABLE a read can fail so (sqlstate.ts readRetried),
  // and the listing answered the 40001 (h132, moves-ssi-reads.test.ts, "the fence listing ...").
  // Sent once inside the review's own READ COMMITTED transaction, where no read fails so.
  const plain = <T>(read: () => Promise<T>): Promise<T> => readRetried(catalog, catalog, read);
  const { rows: maps } = await plain(() => catalog.query<{ version: number; assignments: string[] }>('select version, assignments from catalog.slot_maps order by version desc limit 1'));
  const map = maps[0];
  if (map === undefined) throw new Error('the catalog has no slot map yet: nothing routes to the shards, and no fence row can be judged');
  const rows = [...read.values()].flat();
  const slotsOf = (r: FenceRowRead): number => (r.kind === 'slot' ? Number(r.unit_id) : slotOf(r.unit_id));
  const { rows: jobs } = await plain(() =>
    catalog.query<{ id: string; slot: number; state: string; kind: string; unit_id: string; flipped: boolean }>(
      `select id::text, slot, state, kind, unit_id, flip_started_at is not null as flipped from catalog.move_jobs where id = any($1::bigint[]) or (slot = any($2::int[]) and state not in ('done', 'failed', 'cancelled'))`,
      [[...new Set(rows.flatMap((r) => (r.job_id === null ? [] : [r.job_id])))], [...new Set(rows.map(slotsOf))]],
    ),
  );
  const keys = [...new Set(rows.flatMap((r) => (r.kind === 'directory' && r.state !== 'open' ? [r.unit_id] : [])))];
  const pins = new Map<string, { shard: string; version: number }>();
  if (keys.length > 0) {
    const { rows: entries } = await plain(() => catalog.query<{ key: string; shard_id: string; version: string }>('select key, shard_id, version::text from catalog.shard_directory where key = any($1::text[])', [keys]));
    for (const e of entries) pins.set(e.key, { shard: e.shard_id, version: Number(e.version) });
  }
  const jobById = new Map(jobs.map((j) => [j.id, j]));
  // One unfinished move a slot (move_jobs_one_active_per_slot): a slot's, or a key's of that slot.
  const unfinishedBySlot = new Map(jobs.filter((j) => !FINISHED.has(j.state)).map((j) => [j.slot, j]));
  const rowOn = new Map([...read].map(([shard, list]) => [shard, new Map(list.map((r) => [`${r.kind}:${r.unit_id}`, r]))]));
  const pending: Array<Judged & { readonly behind: boolean }> = [];
  let explained = 0;
  // The catalog's facts rowsBehind reads, each read once for every row that may ask, not once a
  // row: a read of the whole directory a slot, and of every map since a row's version a row, cost
  // 500 dead hand changes' `fenced` slot rows two catalog round trips each (the directory's pins
  // read whole 500 times), of the API's 27 s (owner-change-review-slot-rows-elsewhere.test.ts,
  // "lists 500 hand changes' dead slot fences ..."). Where the read of all fails, each row asking
  // is told (and withheld), as when its own read failed.
  // The pins are read for the slots whose rows rowsBehind judges (`behindSlots` below), all at
  // once, through the directory's slot column (pinnedKeysOf): read for every slot, the whole
  // directory was read, 8-10 s of the listing at 1,000,000 pins (directory-slot.test.ts). A slot
  // asked for outside them is read on its own.
  let pinnedRead: Promise<Map<number, string[]>> | undefined;
  let pinnedFor: ReadonlySet<number> = new Set();
  const fencedSlots = [...new Map(rows.flatMap((r) => (r.kind === 'slot' && r.state === 'fenced' ? [[`${r.unit_id}:${r.map_version}`, { slot: Number(r.unit_id), version: Number(r.map_version) }] as const] : []))).values()];
  let ownersRead: Promise<Map<string, string[]>> | undefined;
  // The slow reads of the owners (from the maps) the history's unlisted maps cost, told to the
  // operator with the step that repairs them (ownerHistoryNote).
  const slowSlots = new Set<number>();
  let unlistedMaps: number | null | undefined;
  const slow: SlowOwnersRead = (r) => {
    for (const p of r.pairs) slowSlots.add(p.slot);
    unlistedMaps = r.unlistedMaps === null || unlistedMaps === null ? null : Math.max(unlistedMaps ?? 0, r.unlistedMaps);
  };
  const catalogFacts: CatalogFacts = {
    pinnedOf: async (slot) => {
      if (!pinnedFor.has(slot)) return plain(() => pinnedKeysOf(catalog, new Set([slot])));
      pinnedRead ??= plain(() => pinnedKeysOf(catalog, pinnedFor)).then((pinned) => {
        const bySlot = new Map<number, string[]>();
        for (const key of pinned) bySlot.set(slotOf(key), [...(bySlot.get(slotOf(key)) ?? []), key]);
        return bySlot;
      });
      return (await pinnedRead).get(slot) ?? [];
    },
    ownersSince: async (slot, version) => {
      ownersRead ??= plain(() => ownersOfSlotsSince(catalog, fencedSlots, slow));
      const known = (await ownersRead).get(`${slot}:${version}`);
      if (known !== undefined) return known;
      return (await plain(() => ownersOfSlotsSince(catalog, [{ slot, version }], slow))).get(`${slot}:${version}`) ?? [];
    },
  };
  for (const [shard, shardRows] of read) {
    for (const r of shardRows) {
      const slot = slotsOf(r);
      const owner = map.assignments[slot];
      const pin = r.kind === 'directory' ? pins.get(r.unit_id) : undefined;
      const slotRow = r.kind === 'directory' ? rowOn.get(shard)?.get(`slot:${slot}`) : undefined;
      const facts: UnitFacts = {
        owner,
        version: map.version,
        jobs: jobById,
        unfinished: unfinishedBySlot.get(slot),
        routing: o.routing,
        ...(o.routingUnknown === undefined ? {} : { routingUnknown: o.routingUnknown }),
        ...(pin === undefined ? {} : { pin }),
        ...(slotRow === undefined ? {} : { slotRow }),
      };
      const verdict = judge(r, shard, facts);
      if (verdict === null) {
        explained += 1;
        if (!o.all) continue;
      }
      // A key's route is shown for its explained rows too (`all`).
      const known = verdict === null && r.kind === 'directory' ? keyRoute(r.unit_id, facts) : undefined;
      const routeShard = verdict?.route ?? (known !== undefined && 'shard' in known ? known.shard : undefined);
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
        ...(routeShard === undefined ? {} : { route: routeShard }),
        diagnosis: verdict?.diagnosis ?? 'explained: nothing to settle',
        action: verdict?.action ?? 'none',
        ...(verdict?.withheld === undefined ? {} : { withheld: verdict.withheld }),
      };
      const withheld = base.withheld ?? (base.action === 'reopen' ? reopenWithheld(base, o.minAge, o.changeInFlight) : undefined);
      pending.push({ shard, read: r, row: withheld === undefined ? base : { ...base, withheld }, plan: verdict?.plan ?? {}, behind: withheld === undefined && base.action === 'reopen' && (r.state === 'moved' || r.state === 'fenced') });
    }
  }
  // The keys whose rows rowsBehind may count, counted first, all at once on each shard read: a
  // `fenced` key row is counted on every other shard given, and counted one key and one shard at a
  // time (three round trips each through the API's bounded connections), 2,000 such rows on three
  // shards took 24.7 s at a round trip of about 1 ms, of the API's 27 s (API Gateway's 29 s):
  // each page of GET /shards/fences, which lists the whole and answers a page, paid it again.
  // And the keys a slot's reopen may hand back to its shard that a pin once sent elsewhere (keysOnceRoutedElsewhere).
  const behindSlots = new Set(pending.flatMap((p) => (p.behind && p.read.kind === 'slot' ? [Number(p.read.unit_id)] : [])));
  pinnedFor = behindSlots;
  const behindKeys = [
    ...new Set([
      ...pending.flatMap((p) => (p.behind && p.read.kind === 'directory' ? [p.read.unit_id] : [])),
      ...(behindSlots.size === 0 ? [] : rows.flatMap((x) => (x.kind === 'directory' && x.state !== 'open' && behindSlots.has(slotOf(x.unit_id)) ? [x.unit_id] : []))),
    ]),
  ];
  const keyCounts = new Map<string, Promise<Map<string, TableRows[]>>>();
  for (const on of behindKeys.length === 0 ? [] : o.read) {
    const counting = o.countKeys(on, behindKeys);
    counting.catch(() => undefined); // Told to each row that asks (rowsBehind): none is left unhandled meanwhile.
    keyCounts.set(on, counting);
  }
  // And the slots whose rows rowsBehind counts where a map since gave them (a `fenced` row) or
  // where a `moved` row sends their writes, counted all at once on each shard read, as rowsBehind
  // would count each (its excluded keys and, where pins route, the keys the directory pins of it
  // left out): one slot and one shard at a time, with two catalog reads a row, 500 dead hand
  // changes' `fenced` slot rows took 5.6 s at a round trip of about 1 ms, of the API's 27 s
  // (owner-change-review-slot-rows-elsewhere.test.ts, "lists 500 hand changes' dead slot
  // fences ..."). The chains of `moved` rows rowsBehind follows, and a `moved` row's own shard, are
  // counted here too; a unit rowsBehind asks for that is not among these is counted on its own;
  // where a catalog read fails here, rowsBehind reads it again and says so for the row.
  const pinsRoute = pinsRouteBy(o.routing);
  const slotUnits = new Map<string, SlotUnit[]>();
  const slotUnitAt = new Map<string, number>();
  for (const p of pending) {
    if (!p.behind || p.read.kind !== 'slot') continue;
    const slot = Number(p.read.unit_id);
    let owners: readonly string[];
    let pinned: readonly string[];
    try {
      owners = p.read.state === 'moved' ? (p.read.moved_to === null ? [] : [p.read.moved_to]) : await catalogFacts.ownersSince(slot, Number(p.read.map_version));
      pinned = pinsRoute ? await catalogFacts.pinnedOf(slot) : [];
    } catch {
      continue;
    }
    const excluded = [...(p.read.excluded_keys ?? []), ...pinned];
    // And the shards the owners' `moved` rows of the slot send its writes on to, as rowsBehind
    // follows them (a chain, to its end or a cycle): counted one at a time, with the `moved` rows'
    // own shards below, 500 slots' `moved` rows whose shard's own `moved` row sent them on to a
    // third shard took 3,015 statements and 8.0-8.9 s at a round trip of about 1 ms; at once, 21
    // and 0.1 s (fence-review-slot-counts.test.ts, "... chains ...").
    const chain = [...owners];
    for (let i = 0; i < chain.length; i += 1) {
      const to = chain[i] as string;
      const theirs = rowOn.get(to)?.get(`slot:${slot}`);
      const onTo = theirs?.state === 'moved' ? theirs.moved_to : null;
      if (onTo !== null && onTo !== p.shard && !chain.includes(onTo)) chain.push(onTo);
    }
    for (const on of chain) {
      const at = slotUnitKey(on, 'slot routed', slot, excluded);
      if (on === p.shard || !o.read.has(on) || slotUnitAt.has(at)) continue;
      const units = slotUnits.get(on) ?? [];
      slotUnitAt.set(at, units.length);
      units.push({ kind: 'slot routed', slot, excluded });
      slotUnits.set(on, units);
    }
    // A `moved` row's own shard, which rowsBehind counts first (the rows the unit left there): one
    // at a time, half of the 3,015 statements above, counted at once too (slotUnitsRowsOn).
    const own = slotUnitKey(p.shard, 'slot', slot, p.read.excluded_keys ?? []);
    if (p.read.state === 'moved' && o.read.has(p.shard) && !slotUnitAt.has(own)) {
      const units = slotUnits.get(p.shard) ?? [];
      slotUnitAt.set(own, units.length);
      units.push({ kind: 'slot', slot, excluded: p.read.excluded_keys ?? [] });
      slotUnits.set(p.shard, units);
    }
  }
  const slotCounts = new Map<string, Promise<TableRows[][]>>();
  for (const [on, units] of slotUnits) {
    const counting = o.countSlots(on, units);
    counting.catch(() => undefined); // Told to each row that asks (rowsBehind), as the keys' counts are.
    slotCounts.set(on, counting);
  }
  const counts: JudgeOptions = {
    ...o,
    count: async (on, unit) => {
      if (unit.kind === 'directory' && keyCounts.has(on)) return (await keyCounts.get(on))?.get(unit.key) ?? [];
      const at = unit.kind === 'directory' ? undefined : slotUnitAt.get(slotUnitKey(on, unit.kind, unit.slot, unit.excluded));
      const counting = slotCounts.get(on);
      if (at !== undefined && counting !== undefined) return (await counting)[at] ?? [];
      return o.count(on, unit);
    },
  };
  const judged: Judged[] = [];
  for (const { behind, ...p } of pending) {
    const withheld = behind ? await rowsBehind(p.read, p.shard, rowOn, counts, catalogFacts, p.plan) : undefined;
    judged.push(withheld === undefined ? p : { ...p, row: { ...p.row, withheld } });
  }
  const ownerHistory = ownerHistoryNote(unlistedMaps, slowSlots.size);
  return { map, judged, explained, ...(ownerHistory === undefined ? {} : { ownerHistory }) };
}

/**
 * What the review tells the operator of its slow reads of the owners (from every map since a
 * row's version, not from the slot's owner history): set only where the history's list lacks maps
 * (`unlistedMaps` > 0) or the catalog has no list (null: before sharding migration 028), the
 * causes an operator can repair; a slot past the first map's length, also read from the maps,
 * needs no repair. Silent, the review took seconds where it took milliseconds (4.2-4.9 s against
 * 37-53 ms at 5,000 maps, past the API's 27 s at 20,000) and nothing said why
 * (fence-review-owner-history-repair.test.ts, "... says so ...").
 */
function ownerHistoryNote(unlistedMaps: number | null | undefined, slots: number): string | undefined {
  if (unlistedMaps === undefined || unlistedMaps === 0 || slots === 0) return undefined;
  const read = `the owners of ${slots} slot${slots === 1 ? '' : 's'} were read from every slot map since their rows' versions, not from their owner history (slow: linear in the maps, seconds at thousands)`;
  if (unlistedMaps === null) return `${read}: the catalog has no list of the maps the history holds (sharding migration 028 not applied): run the migrations (ca-dms-scaling migrate)`;
  return (
    `${unlistedMaps} slot map${unlistedMaps === 1 ? ' is' : 's are'} not listed in the owner history (catalog.slot_owner_history_maps: inserted with the triggers off, a restore), so ${read}. ` +
    'Run, as the migration login: select catalog.slot_owner_history_repair(); (docs/sharding-spec.md section 9, "Each slot\'s owner history")'
  );
}

/**
 * Why a `moved` row (or a hand change's `fenced` one) on the shard its unit routes to may not be
 * reopened for the rows it would bring back or leave out of sight, or undefined where there are none:
 * - the unit's rows on that shard behind the row: rows the unit left there when it went away (a
 *   finished move's clean-up keeps a user that still owns documents stored under another slot,
 *   written before shard migration 015; a change made with `rowsLeftOn: 'checked'`), read by no
 *   one since. Reopened, readers found them again as the unit's, as they were then (a user
 *   deleted or changed on the other shard since, back with its old data), as a hand change that
 *   would delete such a row refuses (unit-rows.ts, `refuseRowsBehindMoved`). A slot's rows are
 *   those its row decides for: not of its `excluded_keys`, nor of a key with a `directory` row there;
 *   told so only behind a slot move's row: behind a key's row ({@link keyRowsBehind}) or a hand
 *   change's row of a slot ({@link slotRowsBehindHandRow}) no move left them, and they are taken
 *   for the unit's live rows, never to be deleted;
 * - a key's: its rows on the shard the row sends its writes to (`moved_to`), unless they are a
 *   finished move's leftovers there (behind its `moved` row; a hand change's row stands over live
 *   rows, as it counts them before it fences): the key's route was changed to this shard past the stores
 *   (an unpin or a pin by SQL, which nothing counted), its rows staying there. Reopened, this
 *   shard took the key's writes while its rows, unseen by its readers here, stayed there;
 * - a slot's, likewise: its rows on `moved_to` of the keys it routes (all but those its row here
 *   keeps out, and, where pins route, those the directory pins: their pins route them, not the
 *   slot), unless they are a finished move's leftovers there: the slot was given to this shard past
 *   the stores (a map published with `rowsLeftOn: 'checked'`, which counts and fences nothing, or
 *   by SQL), its rows staying there. Reopened, this shard took the slot's writes (its new users,
 *   its users' updates touching nothing) while its rows stayed there
 *   (owner-change-review-slot-rows-elsewhere.test.ts);
 * - a hand change's `fenced` row (on the shard the unit routes to), which names no new owner: a
 *   slot's rows, counted so, on each shard that owned it in a map published since the row's
 *   `map_version`; a key's on every other shard given (its pins keep no history). A change that
 *   died after its commit, the route changed back past the stores since, looks like one that died
 *   before it (same file; owner-change-review-directory.test.ts, "... died after its commit ...").
 */
async function rowsBehind(r: FenceRowRead, shard: string, rowOn: ReadonlyMap<string, ReadonlyMap<string, FenceRowRead>>, o: JudgeOptions, catalog: CatalogFacts, plan: SettlePlan = {}): Promise<string | undefined> {
  const unit = r.kind === 'slot' ? ({ kind: 'slot', slot: Number(r.unit_id), excluded: r.excluded_keys ?? [] } as const) : ({ kind: 'directory', key: r.unit_id } as const);
  const what = r.kind === 'slot' ? `slot ${r.unit_id}` : `key ${r.unit_id}`;
  const counted = async (on: string, rows: Parameters<RowCounter>[1] = unit): Promise<TableRows[] | string> => {
    try {
      return await o.count(on, rows);
    } catch (err) {
      return `${what}'s rows on ${on} could not be counted (${err instanceof Error ? err.message : String(err)}): settle again once ${on} answers`;
    }
  };
  if (r.state === 'moved') {
    const here = await counted(shard);
    if (typeof here === 'string') return here;
    if (here.length > 0) {
      if (unit.kind === 'directory') return keyRowsBehind(r, shard, unit.key, here, plan, o, counted);
      if (r.job_id === null) return slotRowsBehindHandRow(r, shard, unit, here, o, catalog, counted);
      const find = `select id, email from users where slot = ${unit.slot}; select id, owner_id, slot from documents where owner_id in (select id from users where slot = ${unit.slot})`;
      return (
        `${shard} holds rows of ${what} (${describeRows(here)}) behind this row: rows the unit left there when it went away (a finished move's clean-up keeps a user that still owns documents stored under another slot, written before shard migration 015), read by no one since; reopened, ${shard} would serve them again as the unit's, as they were then. ` +
        `Find them on ${shard} (${find}), give each document under another slot its owner's slot or delete it, delete the rows, then settle again (docs/sharding-spec.md section 9, "What a finished move leaves on its source, and the unit coming back")`
      );
    }
  }
  const noun = unit.kind === 'slot' ? 'slot' : 'key';
  // Where else the unit's rows may be. A `moved` row names it. A hand change's `fenced` row does
  // not: a change that died after its commit gave the unit to a shard the row does not record, and
  // a route changed back past the stores since (a map published with rowsLeftOn 'checked', a pin
  // deleted by SQL) makes the row look like one the change left before its commit (the unit
  // routes to its shard). A slot's writes went to the shards that owned it in a map since the
  // row's (its `map_version` is the row's before the fence: it keeps it); a key's pins keep no
  // history, so every other shard given is asked (a key's count is one index probe a table). A
  // shard not given to the review is one the deployment no longer has.
  let elsewhere: string[];
  if (r.state === 'moved') elsewhere = r.moved_to === null || r.moved_to === shard ? [] : [r.moved_to];
  else if (unit.kind === 'slot') {
    try {
      elsewhere = (await catalog.ownersSince(unit.slot, Number(r.map_version))).filter((s) => s !== shard && o.given.has(s));
    } catch (err) {
      return `the slot maps published since this row's version ${r.map_version} could not be read (${err instanceof Error ? err.message : String(err)}): the slot's rows where they sent it could not be counted; settle again`;
    }
  } else elsewhere = [...o.given].filter((s) => s !== shard);
  // A key's row set `open` (a pinned key whose slot's row here is `moved` and does not keep it
  // out: judgeKey) takes the key's writes here over that slot row, which says where the slot's
  // rows went, the key's with them where it was routed by the slot when the slot left (not placed
  // by the directory then: not in the row's `excluded_keys`). The key's own row does not name that
  // shard (a hand change of its pin, rolled back in the caller's transaction, names the pin's new
  // shard; a superuser's row, anything): counted only where the key's row sent its writes, a key
  // pinned here past the stores while its rows stayed where its slot went had its row set `open`,
  // and this shard took its writes (a new user of the key acknowledged here) while its user and
  // documents stayed there, out of its readers' sight (h110, moves-slot-source-moved.test.ts,
  // "shards fences --settle over a pinned key's row ..."). Counted there too, as where this row
  // sends its writes, and on from there as they are.
  const slotSent = new Map<string, string>();
  if (unit.kind === 'directory' && plan.reopenAs === 'open') {
    const slotRow = rowOn.get(shard)?.get(`slot:${slotOf(unit.key)}`);
    const to = slotRow?.state === 'moved' ? slotRow.moved_to : null;
    if (to !== null && to !== undefined && to !== shard && !elsewhere.includes(to)) {
      elsewhere.push(to);
      slotSent.set(to, `where ${shard}'s row of the key's slot ${slotOf(unit.key)} sent the slot's rows (moved to ${to}, not keeping the key out)`);
    }
  }
  const where =
    r.state === 'moved'
      ? 'where this row sends its writes'
      : unit.kind === 'slot'
        ? `which a map published since this row's version ${r.map_version} gave the slot to (a fenced row names no new owner)`
        : `another shard (a fenced row names no new owner)`;
  const unread = elsewhere.filter((s) => !o.read.has(s));
  if (unread.length > 0) {
    return `${unread.join(', ')}, ${unread.every((s) => slotSent.has(s)) ? slotSent.get(unread[0] as string) : where}, ${unread.length > 1 ? 'were' : 'was'} not read (not given, or it did not answer): the ${noun}'s rows there could not be counted (its route may have changed past the stores, its rows staying there); settle again with ${unread.join(', ')}`;
  }
  // The slot's rows there are those of the keys that route by the slot, which a reopen hands to
  // this shard: not those this row keeps out (its excluded keys: their own rows decide for them
  // here), nor, where pins route, the keys the directory pins (their pins route them, wherever
  // their rows are). Where the review cannot tell whether pins route (no routing given), the
  // pinned keys' rows are counted too: with pins routing nothing, they go where the slot goes.
  const pinsRoute = pinsRouteBy(o.routing);
  // Where the unit's writes went on from a shard counted, by a `moved` row there (the shard it came from).
  const via = new Map<string, string>();
  for (let i = 0; i < elsewhere.length; i += 1) {
    const to = elsewhere[i] as string;
    const from = via.get(to);
    const whereTo = slotSent.get(to) ?? (from === undefined ? where : `${where} (moved on from ${from})`);
    if (!o.read.has(to)) {
      return `${to}, ${whereTo}, was not read (not given, or it did not answer): the ${noun}'s rows there could not be counted (its route may have changed past the stores, its rows staying there); settle again with ${to}`;
    }
    // Rows of the unit behind a move's `moved` row of it there are that move's leftovers (its clean-up
    // keeps a user that still owns documents stored under another slot), not the unit's live rows.
    // Behind any other row they are the unit's own: a hand change counts the unit's rows before it
    // fences and refuses the change where there are any, so its `fenced` row (the change died before
    // its put-back, or its commit) or its `moved` row (such a row set `moved` since, by this review)
    // stands over rows that were live when it was written. Taken for leftovers, a key unpinned past
    // the stores over a dead change's fence had its writes taken here, its rows out of sight there
    // (owner-change-review-directory.test.ts, "... under a pin change's dead fence ..."); a slot
    // given back past the stores likewise (owner-change-review-slot-rows-elsewhere.test.ts).
    const theirs = rowOn.get(to)?.get(unit.kind === 'slot' ? `slot:${unit.slot}` : `directory:${unit.key}`);
    // Its `moved` row there sent the unit's writes on, and its rows with them where a move took
    // them: counted there too. Not followed, a slot given by hand to B, moved on from B to C by a
    // move, then given back to this shard past the stores, had this row reopened (B's rows behind
    // the move's row taken for leftovers, C never counted), this shard taking the slot's writes, its
    // rows on C (owner-change-review-slot-rows-elsewhere.test.ts, "... moved the slot on ...").
    // A key with no row of its own there follows its slot's row there ("Which row applies"): a
    // `moved` one that does not keep the key out sent the key's rows on with the slot's, and they
    // are counted where it sent them too. Not followed, a key whose slot moved A -> B -> C with its
    // rows, pinned to A past the stores over a `moved` row of it naming B, had that row set `open`
    // (its rows on B, behind B's slot move row, taken for that move's leftovers, below; C never
    // counted), A taking the key's writes, its rows on C (h110, moves-slot-source-moved.test.ts,
    // "follows the slot's rows on ...").
    const slotThere = unit.kind === 'directory' && theirs === undefined ? rowOn.get(to)?.get(`slot:${slotOf(unit.key)}`) : undefined;
    const slotOnTo = slotThere?.state === 'moved' && unit.kind === 'directory' && !(slotThere.excluded_keys ?? []).includes(unit.key) ? slotThere.moved_to : null;
    const onTo = theirs?.state === 'moved' ? theirs.moved_to : slotOnTo;
    if (onTo !== null && onTo !== shard && onTo !== to && !elsewhere.includes(onTo)) {
      elsewhere.push(onTo);
      via.set(onTo, to);
    }
    if (theirs !== undefined && theirs.state === 'moved' && theirs.job_id !== null) continue;
    // A key with no row of its own there is decided for by its slot's row there ("Which row
    // applies"): behind a slot move's `moved` row that does not keep the key out, its rows are that
    // move's leftovers too (the kept user of a document stored under another slot), refused to every
    // writer since (CAF02; a pin sending the key there is refused by the stores for that row).
    // Counted as the key's live rows, a pin change's dead fence on the shard the key routes to (by
    // hash, after the slot's move there) was left for good, its writes refused there (CAF01), the
    // way out it named (pin it back there) one that reads the leftovers as they were before the move
    // (owner-change-review-slot-rows-elsewhere.test.ts, "... a finished slot move's leftovers ...").
    if (unit.kind === 'directory' && theirs === undefined) {
      const slotRow = rowOn.get(to)?.get(`slot:${slotOf(unit.key)}`);
      if (slotRow !== undefined && slotRow.state === 'moved' && slotRow.job_id !== null && !(slotRow.excluded_keys ?? []).includes(unit.key)) continue;
    }
    const over =
      theirs === undefined || theirs.state === 'open'
        ? `no row of the ${noun} refusing them`
        : theirs.job_id === null
          ? `only a hand change's '${theirs.state}' row of the ${noun} over them (not a move's leftovers: a hand change counts the ${noun}'s rows before it fences)`
          : `only move job #${theirs.job_id}'s '${theirs.state}' row of the ${noun} over them (not a finished move's leftovers, which stand behind its 'moved' row)`;
    if (unit.kind === 'directory') {
      const there = await counted(to);
      if (typeof there === 'string') return there;
      if (there.length === 0) continue;
      const how = r.state === 'moved' ? '' : `the hand change of its pin that left this row pinned it to ${to} and died after its commit (or it was pinned there since), and `;
      return (
        `the key's rows are on ${to} (${describeRows(there)}), ${whereTo}, and ${to} has ${over}: ${how}its route was changed to ${shard} past the stores (an unpin or a pin made by SQL, which nothing counts); reopened, ${shard} would take the key's writes while its rows stay on ${to}, out of its readers' sight. ` +
        `Pin it back to ${to}, or move it: pinned to ${to}, POST /shards/moves {"kind":"directory","unit":"${unit.key}","to":"${shard}"} (docs/sharding-spec.md section 9, "An owner changed outside a move")`
      );
    }
    let pinned: readonly string[];
    try {
      pinned = pinsRoute ? await catalog.pinnedOf(unit.slot) : [];
    } catch (err) {
      return `the directory's keys of slot ${unit.slot} could not be read (${err instanceof Error ? err.message : String(err)}): the slot's rows on ${to} could not be counted; settle again`;
    }
    const there = await counted(to, { kind: 'slot routed', slot: unit.slot, excluded: [...unit.excluded, ...pinned] });
    if (typeof there === 'string') return there;
    if (there.length === 0) continue;
    const pinsCounted = pinsRoute ? 'less those of keys the directory pins' : `the rows of keys the directory pins counted too, as ${o.routing === undefined ? 'the review was not given the sharding configuration (whether pins route)' : 'pins route no key under the sharding configuration'}`;
    const how = r.state === 'moved' ? '' : `the hand change that left this row gave it to ${to} and died after its commit (or a map gave it there since), and `;
    return (
      `the slot's rows are on ${to} (${describeRows(there)}; ${pinsCounted}), ${whereTo}, and ${to} has ${over}: ${how}the slot was given to ${shard} past the stores (a map published with rowsLeftOn 'checked', or by SQL, which counts and fences nothing), its rows staying on ${to}; reopened, ${shard} would take the slot's writes while its rows stay on ${to}, out of its readers' sight. ` +
      `Give the slot back to ${to} by hand through the stores (given the shards' pools: they count ${shard}'s rows of it and fence it), then, to have it on ${shard}, move it: POST /shards/moves {"kind":"slot","unit":"${unit.slot}","to":"${shard}"}; or, having put its rows on ${to} in order by hand, delete this row (docs/sharding-spec.md section 9, "An owner changed outside a move")`
    );
  }
  if (unit.kind === 'slot') return keysOnceRoutedElsewhere(shard, unit, rowOn, o, catalog, pinsRoute, counted);
  return undefined;
}

/**
 * Why a key's `moved` row on the shard the key routes to is not reopened over the key's rows there
 * ({@link rowsBehind}'s first count): they are the rows the key's readers find there once the row is
 * gone, and nothing tells the review that they are anything but the key's live, acknowledged rows.
 * Not a move's leftovers: a directory move's clean-up leaves none of its key's rows on its source
 * (a key with rows under another slot is refused at plan), and a pin changed through the stores
 * counts the key's rows where it routes before it fences there and is refused while there are
 * any. So the row was written over them past the stores (a pin change by SQL that failed half way,
 * its fence turned `moved` and its repin never made; a superuser's row), or they came behind it
 * since (a restore, rows copied back by hand after a change rolled back). Taken for leftovers, the
 * review told the operator to delete them (the key's only rows, acknowledged while its pin sent
 * it here: h116, moves-slot-source-moved.test.ts, "... a pinned key's own moved row with the key's
 * live rows behind it"). It now says where the row sends the key's writes and what that shard
 * holds of the key, and names the two ways out by where the key's rows are, neither deleting them.
 */
async function keyRowsBehind(
  r: FenceRowRead,
  shard: string,
  key: string,
  here: readonly TableRows[],
  plan: SettlePlan,
  o: JudgeOptions,
  counted: (on: string) => Promise<TableRows[] | string>,
): Promise<string> {
  const to = r.moved_to;
  let there: string;
  if (to === null || to === shard) there = 'this row names no other shard';
  else if (!o.read.has(to)) there = `${to}, where this row sends the key's writes, was not read (not given, or it did not answer): its rows of the key could not be counted`;
  else {
    const held = await counted(to);
    if (typeof held === 'string') there = held;
    else if (held.length === 0) there = `${to}, where this row sends the key's writes, holds none of the key's rows: those on ${shard} are its only ones on the shards read`;
    else there = `${to}, where this row sends the key's writes, holds rows of the key too (${describeRows(held)}): the key is split over the two shards; compare them`;
  }
  const pinTo = to === null || to === shard ? '<the shard holding its rows>' : to;
  // The row as read, so that the statement printed changes no row written since (a move's or a
  // change's); `unit_id` as the shard stores it (the canonical key).
  const same = `kind = 'directory' and unit_id = '${key}' and state = 'moved' and moved_to ${to === null ? 'is null' : `= '${to}'`} and job_id ${r.job_id === null ? 'is null' : `= ${r.job_id}`}`;
  // What the row's shard takes the key's writes by once this row is out of the way: deleted, the
  // slot's row there decides for the key ("Which row applies"). Where that row does not let the
  // key through and the key's pin sends it there, the key's own row is set `open` (as the review
  // itself settles such a row): printed as a deletion, the slot's `moved` row then refused every
  // write the pin sends there (CAF02, the router sent back by the pin: "routing is not
  // converging"), for good (h120, moves-slot-source-moved.test.ts, "... on a shard whose slot row
  // says moved"). A key routed by hash follows its slot's row, listed (and settled) on its own.
  const s = plan.slotRowHere;
  const slotRow = s === undefined ? '' : `${shard}'s row of the key's slot ${slotOf(key)} (${s.state}${s.movedTo === null ? '' : ` to ${s.movedTo}`}${s.jobId === null ? ', a hand change' : `, move job #${s.jobId}`})`;
  let keep: string;
  if (s === undefined) keep = `delete this row there (delete from write_fences where ${same}), and ${shard} takes the key's writes where its rows are`;
  else if (!s.byPin) keep = `delete this row there (delete from write_fences where ${same}); the key, routed by hash, then follows ${slotRow}, listed on its own: ${shard} takes the key's writes once that row is settled`;
  else if (s.state === 'moved') {
    keep = `open this row there (update write_fences set state = 'open', moved_to = null, job_id = null, updated_at = now() where ${same}), and ${shard} takes the key's writes where its rows are (deleted instead, ${slotRow} would decide for the key and refuse every write its pin sends there, for good)`;
  } else {
    keep = `settle ${slotRow} first (deleted, this row would hand the key to it, which refuses its writes; opened, the key would pass a fence of its slot), then delete this row there (delete from write_fences where ${same}), and ${shard} takes the key's writes where its rows are`;
  }
  return (
    `${shard} holds rows of key ${key} (${describeRows(here)}) behind this row, and the key routes to ${shard} (${plan.routeHow ?? 'its route'}): the rows its readers find there, to be taken for its live, acknowledged rows, not a move's leftovers (a directory move leaves none of its key's rows on its source, and a pin changed through the stores counts them first and is refused while there are any): the row was written over them past the stores (a pin change by SQL that failed half way, a superuser's row) or they came behind it since (a restore, rows copied back by hand). Not reopened, and do not delete them; ${there}. ` +
    `Decide by hand where the key's rows are: where they are those on ${shard}, ${keep}; where they are those on ${pinTo}, pin the key there (select catalog.repin_by_hand('${key}', '${pinTo}', '<reason>')), ${shard}'s left out of its readers' sight as they are now (docs/sharding-spec.md section 9, "Settling the rows a hand change left")`
  );
}

/**
 * As {@link keyRowsBehind}, for a slot's `moved` row of a hand change (`job_id` null) on the shard
 * the map names, over rows of the slot there (those the row decides for): not a finished move's
 * leftovers, which stand behind that move's own row (its clean-up keeps a user that still owns a
 * document stored under another slot), and a map published through the stores counts the slot's
 * rows on the shard it gives away before it fences there and is refused while there are any. So
 * the row was written over them past the stores (a change by SQL that failed half way, a
 * superuser's row), or they came behind it since (a restore, rows copied by hand): taken for
 * leftovers, the review told the operator to delete what may be the slot's live, acknowledged
 * rows (h116, moves-slot-source-moved.test.ts, "... a slot's hand row ..."). A move's row keeps
 * the leftovers' words.
 */
async function slotRowsBehindHandRow(
  r: FenceRowRead,
  shard: string,
  unit: { readonly kind: 'slot'; readonly slot: number; readonly excluded: readonly string[] },
  here: readonly TableRows[],
  o: JudgeOptions,
  catalog: CatalogFacts,
  counted: (on: string, rows: Parameters<RowCounter>[1]) => Promise<TableRows[] | string>,
): Promise<string> {
  const to = r.moved_to;
  let there: string;
  if (to === null || to === shard) there = 'this row names no other shard';
  else if (!o.read.has(to)) there = `${to}, where this row sends the slot's writes, was not read (not given, or it did not answer): its rows of the slot could not be counted`;
  else {
    let held: TableRows[] | string;
    try {
      // As the rest of rowsBehind counts it there: the keys the slot routes (where pins route, not the pinned ones).
      const pinned = pinsRouteBy(o.routing) ? await catalog.pinnedOf(unit.slot) : [];
      held = await counted(to, { kind: 'slot routed', slot: unit.slot, excluded: [...unit.excluded, ...pinned] });
    } catch (err) {
      held = `the directory's keys of slot ${unit.slot} could not be read (${err instanceof Error ? err.message : String(err)}): the slot's rows on ${to} could not be counted`;
    }
    if (typeof held === 'string') there = held;
    else if (held.length === 0) there = `${to}, where this row sends the slot's writes, holds none of the slot's rows: those on ${shard} are its only ones on the shards read`;
    else there = `${to}, where this row sends the slot's writes, holds rows of the slot too (${describeRows(held)}): the slot is split over the two shards; compare them`;
  }
  const giveTo = to === null || to === shard ? '<the shard holding its rows>' : to;
  return (
    `${shard} holds rows of slot ${unit.slot} (${describeRows(here)}) behind this row, a hand change's (job_id null), and the map names ${shard}: the rows the slot's readers find there, to be taken for its live, acknowledged rows, not a move's leftovers (those stand behind the move's own row, and a map published through the stores counts the slot's rows on the shard it gives away before it fences there and is refused while there are any): the row was written over them past the stores (a change by SQL that failed half way, a superuser's row) or they came behind it since (a restore, rows copied by hand). Not reopened, and do not delete them; ${there}. ` +
    `Decide by hand where the slot's rows are: where they are those on ${shard}, delete this row there (delete from write_fences where kind = 'slot' and unit_id = '${unit.slot}' and state = 'moved' and job_id is null), and ${shard} takes the slot's writes where its rows are; where they are those on ${giveTo}, give the slot there by hand (SlotMapStore.publishByHand with rowsLeftOn 'checked': the stores' count would refuse it for ${shard}'s rows), ${shard}'s left out of its readers' sight as they are now (docs/sharding-spec.md section 9, "Settling the rows a hand change left")`
  );
}

/** Whether the directory's pins route keys under `routing` (not known without it: taken as not, their rows counted with the slot's). */
function pinsRouteBy(routing: MoveRouting | undefined): boolean {
  return routing !== undefined && routing.enabled !== false && routing.strategy !== 'range_based' && (routing.strategy === 'directory_based' || routing.overrideHash);
}

/** Where a `slot routed` (or `slot`) count of `slot` on `on`, less `excluded`, sits in the batch {@link judgeRows} counts before judging. */
function slotUnitKey(on: string, kind: SlotUnit['kind'], slot: number, excluded: readonly string[]): string {
  return JSON.stringify([on, kind, slot, excluded]);
}

/**
 * The shards that own each slot in the maps from its version on (the latest included), for every
 * `fenced` slot row read: one statement (two where the history lacks a slot, below), keyed
 * `${slot}:${version}`.
 *
 * Read from each slot's owner history (catalog.slot_owner_history, sharding migrations 023 and
 * 024: the versions at which the slot's owner changed, and the owner from there on), not from the
 * maps: the owners since a version are the one in force at the first map at or past it and those
 * of the slot's later changes, an index probe and a few rows a slot. Reading every map since the
 * oldest row's version (ownersOfSlotsSinceByMaps) was linear in the history: 500 rows at version 0
 * listed in 0.7 s at 1,000 4096-slot maps, 4.5 s at 5,000 and 42 s at 20,000, past the API's
 * 27 s; from the history 0.07 s, 0.06 s and 0.3 s (bench/fence-review.ts, 2 loaded cores). The same answers (fence-review-owner-history.test.ts compares the
 * two on random histories: flips, maps by hand, holes, gaps in the versions, maps inserted below
 * others, updated, deleted, truncated).
 *
 * Where the history holds no owner of a slot at or below the first map at or past the version
 * asked for (a slot past the first maps' length), or holds it only at or below a map the history
 * lacks (catalog.slot_owner_history_maps, sharding migration 028: a map inserted with the triggers
 * off, a superuser's restore, until catalog.slot_owner_history_repair() of migration 029 records it
 * again), that slot is read from the maps as before, not answered with the
 * owners the history lacks: a missing owner is a shard whose rows of the slot the review would not
 * count before reopening the row. Every slot is read from the maps on a catalog not yet migrated
 * to 028 (between 023, 024 and 028 of a deploy; fence-review-owner-history-races.test.ts).
 */
export async function ownersOfSlotsSince(catalog: Queryable, pairs: ReadonlyArray<{ readonly slot: number; readonly version: number }>, slow?: SlowOwnersRead): Promise<Map<string, string[]>> {
  const { owners, unknown, unlistedMaps } = await ownersOfSlotsFromHistory(catalog, pairs);
  if (unknown.length > 0) {
    slow?.({ pairs: unknown, unlistedMaps });
    for (const [key, found] of await ownersOfSlotsSinceByMaps(catalog, unknown)) owners.set(key, found);
  }
  return owners;
}

/** Told the pairs {@link ownersOfSlotsSince} read from the maps, and how many maps the history's list lacks (null: no list, a catalog before sharding migration 028). */
export type SlowOwnersRead = (read: { readonly pairs: ReadonlyArray<{ readonly slot: number; readonly version: number }>; readonly unlistedMaps: number | null }) => void;

/**
 * {@link ownersOfSlotsSince} from catalog.slot_owner_history alone: the pairs it answers, and
 * those it cannot (no owner of the slot recorded at or below the first map at or past the
 * version, or that owner recorded at or below the highest map whose rows the history lacks: a
 * slot change of that map's would be missing; every pair before sharding migration 028). A pair
 * with no map at or past its version has no owner (answered, empty).
 */
export async function ownersOfSlotsFromHistory(
  catalog: Queryable,
  pairs: ReadonlyArray<{ readonly slot: number; readonly version: number }>,
): Promise<{ owners: Map<string, string[]>; unknown: Array<{ slot: number; version: number }>; unlistedMaps: number | null }> {
  const owners = new Map<string, string[]>();
  const unknown: Array<{ slot: number; version: number }> = [];
  if (pairs.length === 0) return { owners, unknown, unlistedMaps: 0 };
  // A catalog before 028 (a deploy's migrations in progress, 024's fill taking minutes): no list of
  // the maps recorded, so no slot's history is known complete; read every pair from the maps.
  const { rows: ready } = await catalog.query<{ ready: boolean }>(`select to_regclass('catalog.slot_owner_history_maps') is not null as ready`);
  if (!ready[0]?.ready) return { owners, unknown: pairs.map((p) => ({ slot: p.slot, version: p.version })), unlistedMaps: null };
  const { rows } = await catalog.query<{ slot: number; version: string; known: boolean; owners: string[] | null; unlisted: number }>(
    `with p as (select distinct slot, version from unnest($1::int[], $2::bigint[]) as p(slot, version)),
          f as (select p.slot, p.version, (select min(m.version) from catalog.slot_maps m where m.version >= p.version) as first from p),
          u as (select coalesce(max(m.version), 0) as below, count(*)::int as unlisted from catalog.slot_maps m
                 where not exists (select 1 from catalog.slot_owner_history_maps r where r.version = m.version))
     select f.slot, f.version::text as version,
            f.first is null
              or coalesce((select max(h.from_version) from catalog.slot_owner_history h where h.slot = f.slot and h.from_version <= f.first) > (select below from u), false) as known,
            array(select distinct o.shard_id from (
                    (select h.shard_id from catalog.slot_owner_history h where h.slot = f.slot and h.from_version <= f.first order by h.from_version desc limit 1)
                    union all
                    select h.shard_id from catalog.slot_owner_history h where h.slot = f.slot and h.from_version > f.first) o
                   where o.shard_id is not null order by 1) as owners,
            (select unlisted from u) as unlisted
       from f`,
    [pairs.map((p) => p.slot), pairs.map((p) => p.version)],
  );
  for (const r of rows) {
    if (r.known) owners.set(`${r.slot}:${r.version}`, r.owners ?? []);
    else unknown.push({ slot: r.slot, version: Number(r.version) });
  }
  return { owners, unknown, unlistedMaps: Number(rows[0]?.unlisted ?? 0) };
}

/**
 * {@link ownersOfSlotsSince} read from the maps: every map since the oldest pair's version, each
 * map's assignments read (and unnested) once. Where the owner history cannot answer, and the
 * answer it is compared with (fence-review-owner-history.test.ts).
 *
 * Each slot asked for is reduced first to its owners and the last version each owned it in (a
 * shard owned the slot in a map from a row's version on exactly when its last such version is at
 * or past it), and the other slots' assignments dropped as they are unnested: joining every
 * unnested assignment to the rows' (slot, version) pairs and sorting each pair's owners took
 * 21.5-27.9 s for 500 rows at version 0 under 5,000 maps of 4,096 slots on a loaded 2-core host
 * (GET /shards/fences' listing 15.4-18.0 s), of the API's 27 s, on every page; this 5.0-7.9 s
 * (the listing 4.5 s), against 4.3 s to unnest the maps alone (fence-review-slot-counts.test.ts).
 */
export async function ownersOfSlotsSinceByMaps(catalog: Queryable, pairs: ReadonlyArray<{ readonly slot: number; readonly version: number }>): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (pairs.length === 0) return out;
  const { rows } = await catalog.query<{ slot: number; version: string; owners: string[] | null }>(
    `with p as (select * from unnest($1::int[], $2::bigint[]) as p(slot, version)),
          w as (select distinct slot + 1 as ord from p),
          a as (select a.ord::int - 1 as slot, a.owner, max(m.version) as last
                  from catalog.slot_maps m cross join lateral unnest(m.assignments) with ordinality as a(owner, ord)
                 where m.version >= (select min(version) from p) and a.ord in (select ord from w)
                 group by 1, 2)
     select p.slot, p.version::text as version, array_agg(distinct a.owner) filter (where a.owner is not null) as owners
       from p left join a on a.slot = p.slot and a.last >= p.version
      group by p.slot, p.version`,
    [pairs.map((p) => p.slot), pairs.map((p) => p.version)],
  );
  for (const r of rows) out.set(`${r.slot}:${r.version}`, r.owners ?? []);
  return out;
}

/**
 * For a slot's row {@link rowsBehind} would reopen: the keys of the slot a reopen hands to this
 * shard (not pinned where pins route, not in the row's `excluded_keys`, which it lets through
 * already) that a pin once sent elsewhere, told by a `directory` row of theirs (not `open`) on any
 * shard read, each counted on every other shard read (not a finished move's leftovers there:
 * behind its `moved` row of the key, or of the slot where the key has no row of its own). Such a
 * key's rows there mean its pin was deleted past the stores (which refuse an unpin while its rows
 * are on the pin's shard, and while it has a `directory` row on any shard), its rows staying on the
 * shard it was pinned to: not counted, a slot given by hand to B, a key of it pinned to C through
 * the stores (B's row of the key `moved` to C), the slot given back to A and the pin deleted past
 * the stores, had A's row reopened, A then acknowledging the key's updates touching nothing, its
 * rows on C (owner-change-review-slot-rows-elsewhere.test.ts, "... unpinned past the stores ...").
 */
async function keysOnceRoutedElsewhere(
  shard: string,
  unit: { readonly kind: 'slot'; readonly slot: number; readonly excluded: readonly string[] },
  rowOn: ReadonlyMap<string, ReadonlyMap<string, FenceRowRead>>,
  o: JudgeOptions,
  catalog: CatalogFacts,
  pinsRoute: boolean,
  counted: (on: string, rows: Parameters<RowCounter>[1]) => Promise<TableRows[] | string>,
): Promise<string | undefined> {
  const once = new Set<string>();
  for (const rows of rowOn.values()) for (const x of rows.values()) if (x.kind === 'directory' && x.state !== 'open' && slotOf(x.unit_id) === unit.slot && !unit.excluded.includes(x.unit_id)) once.add(x.unit_id);
  if (once.size === 0) return undefined;
  let pinned: ReadonlySet<string>;
  try {
    pinned = new Set(pinsRoute ? await catalog.pinnedOf(unit.slot) : []);
  } catch (err) {
    return `the directory's keys of slot ${unit.slot} could not be read (${err instanceof Error ? err.message : String(err)}): the rows of its keys a pin once sent elsewhere could not be counted; settle again`;
  }
  for (const key of [...once].filter((k) => !pinned.has(k)).sort()) {
    for (const on of [...o.read].sort()) {
      if (on === shard) continue;
      const own = rowOn.get(on)?.get(`directory:${key}`);
      if (own !== undefined && own.state === 'moved' && own.job_id !== null) continue;
      const slotRow = rowOn.get(on)?.get(`slot:${unit.slot}`);
      if (own === undefined && slotRow !== undefined && slotRow.state === 'moved' && slotRow.job_id !== null && !(slotRow.excluded_keys ?? []).includes(key)) continue;
      const there = await counted(on, { kind: 'directory', key });
      if (typeof there === 'string') return there;
      if (there.length === 0) continue;
      return (
        `the rows of key ${key} of the slot are on ${on} (${describeRows(there)}), and the key routes by the slot now (${pinsRoute ? 'no pin' : 'pins route no key, or the review was not given the sharding configuration'}), though a pin once sent it elsewhere (a 'directory' row of it stands on a shard): its pin was deleted past the stores (which refuse an unpin while its rows are on the pin's shard), its rows staying on ${on}; reopened, ${shard} would take the key's writes while its rows stay on ${on}, out of its readers' sight. ` +
        `Pin it back to ${on} (then this row may be settled), or put its rows in order by hand (docs/sharding-spec.md section 9, "An owner changed outside a move")`
      );
    }
  }
  return undefined;
}

/**
 * Many slot units' rows on a shard at once ({@link SlotsCounter}), each as {@link countUnitRows}
 * counts it alone: the `slot routed` ones in one statement (`slotsRowsOn`), the `slot` ones (a
 * `moved` row's own shard) in another, which leaves out, as countUnitRows does, the keys this
 * row keeps out and those with a `directory` row on the shard (their own rows decide for them).
 */
async function slotUnitsRowsOn(c: Queryable, units: readonly SlotUnit[]): Promise<TableRows[][]> {
  const out = units.map((): TableRows[] => []);
  const routedAt = units.flatMap((u, i) => (u.kind === 'slot routed' ? [i] : []));
  const ownAt = units.flatMap((u, i) => (u.kind === 'slot' ? [i] : []));
  const routed = await slotsRowsOn(c, routedAt.map((i) => units[i] as SlotUnit));
  routedAt.forEach((at, j) => (out[at] = routed[j] ?? []));
  if (ownAt.length === 0) return out;
  const own = ownAt.map((i) => units[i] as SlotUnit);
  const { rows } = await c.query<{ t: TableRows['table']; i: number; n: number }>(
    `with u as (select * from unnest($1::int[], $2::int[]) as u(i, slot)),
          x as (select * from unnest($3::int[], $4::text[]) as x(i, key))
     select 'users' as t, u.i, count(*)::int as n from u join users r on r.slot = u.slot
       where not exists (select 1 from x where x.i = u.i and x.key = r.id::text)
         and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = r.id::text) group by u.i
     union all
     select 'documents', u.i, count(*)::int from u join documents r on r.slot = u.slot
       where not exists (select 1 from x where x.i = u.i and x.key = r.owner_id::text)
         and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = r.owner_id::text) group by u.i
     union all
     select 'document_keys', u.i, count(*)::int from u join document_keys r on r.slot = u.slot
       where not exists (select 1 from x where x.i = u.i and x.key = r.owner_id::text)
         and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = r.owner_id::text) group by u.i`,
    [own.map((_, j) => j), own.map((u) => u.slot), own.flatMap((u, j) => u.excluded.map(() => j)), own.flatMap((u) => u.excluded)],
  );
  const order: readonly TableRows['table'][] = ['users', 'documents', 'document_keys'];
  for (const r of rows) if (Number(r.n) > 0) out[ownAt[Number(r.i)] as number]?.push({ table: r.t, rows: Number(r.n) });
  for (const at of ownAt) out[at]?.sort((a, b) => order.indexOf(a.table) - order.indexOf(b.table));
  return out;
}

/** A unit's rows on a shard ({@link RowCounter}): a key's (as a pin's count), or those a slot's row decides for. */
async function countUnitRows(c: Queryable, unit: Parameters<RowCounter>[1]): Promise<TableRows[]> {
  if (unit.kind === 'directory') return keyRowsOn(c, unit.key);
  if (unit.kind === 'slot routed') return (await slotRowsOn(c, [unit.slot], unit.excluded)).get(unit.slot) ?? [];
  const { rows } = await c.query<{ users: number; documents: number; document_keys: number }>(
    `select (select count(*)::int from users u where u.slot = $1 and not (u.id::text = any($2::text[]))
               and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = u.id::text)) as users,
            (select count(*)::int from documents t where t.slot = $1 and not (t.owner_id::text = any($2::text[]))
               and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = t.owner_id::text)) as documents,
            (select count(*)::int from document_keys t where t.slot = $1 and not (t.owner_id::text = any($2::text[]))
               and not exists (select 1 from write_fences d where d.kind = 'directory' and d.unit_id = t.owner_id::text)) as document_keys`,
    [unit.slot, unit.excluded],
  );
  const r = rows[0] ?? { users: 0, documents: 0, document_keys: 0 };
  return (['users', 'documents', 'document_keys'] as const).filter((t) => Number(r[t]) > 0).map((table) => ({ table, rows: Number(r[table]) }));
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
  return `select kind, unit_id, state, job_id::text, moved_to, map_version::text, excluded_keys, (extract(epoch from (now() - updated_at)) * 1000)::float8 as age_ms
            from write_fences ${all ? '' : `where state <> 'open'`} order by kind, unit_id`;
}
