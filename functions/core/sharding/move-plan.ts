/**
 * The life of a data move (one hash slot, or one directory key, from one shard to another) as a
 * pure state machine. The mover adapter persists a job's state in the catalog and asks this
 * module which step comes next, whether a transition is legal, and what to do with a job it
 * finds unfinished after a restart. Nothing here touches a database or a clock.
 *
 * The forward path is
 * `planned -> copying -> catching_up -> cutover -> verifying -> cleaning_up -> done`;
 * any state before the map flip can end in `failed` or `cancelled` (after a rollback), and the
 * flip is the point of no return: once the new owner has been published, the only way is
 * forwards, because writers may already have acknowledged writes on the target.
 *
 * @example
 * ```ts
 * const job = { state: 'cutover', cancelRequested: false, flipStarted: false } as const;
 * restartAction(job); // { kind: 'resume', from: 'cutover' }
 * nextState('cutover'); // 'verifying'
 * assertTransition('copying', 'done'); // throws MoveTransitionError
 * ```
 */

export const MOVE_STATES = [
  'planned',
  'copying',
  'catching_up',
  'cutover',
  'verifying',
  'cleaning_up',
  'done',
  'failed',
  'cancelled',
] as const;
export type MoveState = (typeof MOVE_STATES)[number];

export const TERMINAL_STATES: readonly MoveState[] = ['done', 'failed', 'cancelled'];

/** What moves: a hash slot (all rows whose `slot` column is that slot) or one directory key. */
export type MoveUnitKind = 'slot' | 'directory';

/**
 * The most rows, in any one sharded table, of a unit one move takes by default (the mover's
 * `maxUnitRows`): within V8's longest string (one table's row hashes of one side arrive as one
 * string, 10.3 million rows) and the moves function's memory. The rebalance planner proposes no
 * larger unit, since the mover would refuse it.
 */
export const DEFAULT_MAX_UNIT_ROWS = 10_000_000;

/** The order of the forward path. */
const FORWARD: readonly MoveState[] = ['planned', 'copying', 'catching_up', 'cutover', 'verifying', 'cleaning_up', 'done'];

/**
 * Steps in which the source is still the owner and the target copy can be thrown away, so a
 * move can still be cancelled or can fail back to where it started.
 */
const BEFORE_FLIP: readonly MoveState[] = ['planned', 'copying', 'catching_up', 'cutover', 'verifying'];

export class MoveTransitionError extends Error {
  override readonly name = 'MoveTransitionError';
  constructor(
    readonly from: MoveState,
    readonly to: MoveState,
    reason: string,
  ) {
    super(`a move cannot go from ${from} to ${to}: ${reason}`);
  }
}

export function isTerminal(state: MoveState): boolean {
  return TERMINAL_STATES.includes(state);
}

/** The next step on the forward path, or `undefined` for a terminal state. */
export function nextState(state: MoveState): MoveState | undefined {
  if (isTerminal(state)) return undefined;
  return FORWARD[FORWARD.indexOf(state) + 1];
}

/**
 * Whether `from -> to` is legal. `flipStarted` says whether the job has passed the point of no
 * return (the mover records it before publishing the new owner); after that neither `failed`
 * nor `cancelled` is reachable.
 */
export function canTransition(from: MoveState, to: MoveState, flipStarted = false): boolean {
  if (isTerminal(from)) return false;
  if (to === nextState(from)) return true;
  // A fence that could not be taken (or held) within its budget is released and the move goes
  // back to catching up, to try again later: writes must never stay blocked waiting for a move.
  // The same when the verification under the fence cannot finish within the budget (never after
  // the flip: then the target owns the unit and only the way forward is left).
  if ((from === 'cutover' || (from === 'verifying' && !flipStarted)) && to === 'catching_up') return true;
  if (to === 'failed' || to === 'cancelled') return !flipStarted && BEFORE_FLIP.includes(from);
  return false;
}

/** Throws {@link MoveTransitionError} unless `from -> to` is legal. */
export function assertTransition(from: MoveState, to: MoveState, flipStarted = false): void {
  if (canTransition(from, to, flipStarted)) return;
  const reason = isTerminal(from)
    ? `${from} is final`
    : flipStarted && (to === 'failed' || to === 'cancelled')
      ? 'the new owner has already been published, so the move can only finish'
      : `the step after ${from} is ${nextState(from) ?? 'none'}`;
  throw new MoveTransitionError(from, to, reason);
}

/** What a job needs, as far as restarting goes. */
export interface RestartView {
  readonly state: MoveState;
  /** Someone asked to cancel and the rollback may not have finished. */
  readonly cancelRequested: boolean;
  /** The mover had started publishing the new owner (point of no return). */
  readonly flipStarted: boolean;
}

export type RestartAction =
  | { readonly kind: 'none' }
  /** Run the step `from` again from its start; every step is idempotent. */
  | { readonly kind: 'resume'; readonly from: MoveState }
  /** Undo the move: unfence and stop capturing on the source, delete the target copy. */
  | { readonly kind: 'rollback'; readonly to: 'cancelled' };

/**
 * What to do with a job found unfinished (its process died, or it was never started).
 *
 * Every step is written to be re-run from its start, so the default is to resume where the job
 * stopped. A cancellation that was requested but not finished is carried out, unless the flip
 * had begun, in which case the move finishes and the cancellation is moot.
 */
export function restartAction(job: RestartView): RestartAction {
  if (isTerminal(job.state)) return { kind: 'none' };
  if (job.cancelRequested && !job.flipStarted) return { kind: 'rollback', to: 'cancelled' };
  return { kind: 'resume', from: job.state };
}

/** Whether a cancellation request can still be honoured. */
export function canCancel(job: Pick<RestartView, 'state' | 'flipStarted'>): boolean {
  return !isTerminal(job.state) && !job.flipStarted;
}
