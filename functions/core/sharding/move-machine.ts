/**
 * The move protocol as a driver over a port: which step runs in which state, which named
 * transition follows it, where a crash can happen, and what happens when the fence cannot be
 * taken in time. The PostgreSQL adapter (`adapters/postgres/move-port.ts`) implements
 * {@link MovePort}; nothing here touches a database, a clock or a timer (pauses go through the
 * port), so every crash point is a name in {@link MOVE_CRASH_POINTS} and the tests kill a mover
 * at each of them.
 *
 * Transitions (each named, each a compare-and-set on the job's state in the catalog):
 *
 * | name | from | to | what was done before it |
 * |---|---|---|---|
 * | `start` | planned | copying | nothing |
 * | `copied` | copying | catching_up | fence row, change capture, drain, bulk copy |
 * | `caught_up` | catching_up | cutover | captured changes applied until few are left |
 * | `fence_timed_out` | cutover | catching_up | the fence could not be taken (or held) within its budget: released, writes flow again |
 * | `drained` | cutover | verifying | fence committed, every captured change applied |
 * | `verify_timed_out` | verifying | catching_up | the verification (or the flip) could not finish within what was left of the fence budget: released, writes flow again |
 * | `flipped` | verifying | cleaning_up | sides verified equal, new owner published (CAS on the map), fence released |
 * | `cleaned` | cleaning_up | done | capture stopped, the verified source rows deleted |
 * | `rolled_back` | any before the flip | failed / cancelled | target copy deleted, source reopened (CAS: only while the map still names the source) |
 *
 * Who the catalog names as the unit's owner while the move runs decides what becomes of it: the
 * source (whoever wrote that, an operator's pin of a directory key to it included), the move goes
 * on; the target (an operator pinned the key there), the flip records that as its publication; any
 * other shard (an operator's pin, a map someone else published), the move can only publish by
 * overwriting that change, so it stops itself: failed (`rolled_back`), the change named in its
 * error, its copy deleted, and it never fences again. That is checked at the copy's start and just
 * before each fence attempt ({@link MoveOwnerConflict}), and by the flip (`conflict`).
 *
 * @example
 * ```ts
 * const done = await driveMove(job, port, { fenceAttempts: 3, fenceRetryPauseMs: 1000, hook: (p) => log(p) });
 * ```
 */
import type { ShardingConfig } from './config.js';
import { isTerminal, restartAction, type MoveState, type MoveUnitKind } from './move-plan.js';

/** A named transition of the forward path (see the table above). */
export const MOVE_TRANSITIONS = {
  start: { from: 'planned', to: 'copying' },
  copied: { from: 'copying', to: 'catching_up' },
  caught_up: { from: 'catching_up', to: 'cutover' },
  fence_timed_out: { from: 'cutover', to: 'catching_up' },
  drained: { from: 'cutover', to: 'verifying' },
  verify_timed_out: { from: 'verifying', to: 'catching_up' },
  flipped: { from: 'verifying', to: 'cleaning_up' },
  cleaned: { from: 'cleaning_up', to: 'done' },
} as const satisfies Record<string, { from: MoveState; to: MoveState }>;
export type MoveTransitionName = keyof typeof MOVE_TRANSITIONS;

/**
 * Every point at which a mover can die between two durable effects: after each state is
 * entered, after the fence is committed (`fenced`), after the new owner is published but before
 * the fence is released (`published`), and after the source rows are deleted but before the job
 * says `done` (`cleaned`). A mover resumed from any of them must finish the move (or, before the
 * flip, roll it back on request) without losing or duplicating an acknowledged write.
 */
export const MOVE_CRASH_POINTS = ['copying', 'copied', 'catching_up', 'cutover', 'fenced', 'verifying', 'published', 'cleaning_up', 'cleaned'] as const;
export type MoveCrashPoint = (typeof MOVE_CRASH_POINTS)[number];

/** What the driver needs to know about a job. */
export interface MoveJobView {
  readonly id: number;
  readonly kind: MoveUnitKind;
  readonly unitId: string;
  readonly from: string;
  readonly to: string;
  readonly state: MoveState;
  readonly cancelRequested: boolean;
  /** The new owner has been published (point of no return). */
  readonly flipStarted: boolean;
  /** A rollback was decided (and may not have finished): it is carried out with this outcome. */
  readonly rollbackTo?: 'failed' | 'cancelled' | null;
}

/**
 * The comparison of both sides under the fence. `over_budget`: it could not finish within what
 * was left of the fence budget (or no fence of this run is held), so nothing was decided.
 */
export type VerifyOutcome = { readonly kind: 'equal' } | { readonly kind: 'differ'; readonly detail: string } | { readonly kind: 'over_budget' };

/**
 * The outcome of trying to publish the new owner, decided in one catalog transaction with the job.
 * `flipped` and `cancelled` carry the job as that transaction read (and recorded) it: the driver
 * goes on from it without reading the job back, which, still under the fence, would wait on the
 * catalog (a lock on the job table taken just after the flip's transaction ended) past the budget.
 */
export type FlipOutcome<J = MoveJobView> =
  | { readonly kind: 'flipped'; readonly job: J }
  /**
   * The fence budget ran out first: nothing was published. `detail`, when given, names what the
   * flip waited for (recorded with the fence's give-up).
   */
  | { readonly kind: 'over_budget'; readonly detail?: string }
  /** A cancellation was recorded first; the move must roll back. */
  | { readonly kind: 'cancelled'; readonly job: J }
  /**
   * The map (or directory) names neither side as the owner: someone else changed it. Nothing was
   * published; the move fails, rolled back (`detail`, naming the change, is its error).
   */
  | { readonly kind: 'conflict'; readonly detail: string };

/** The I/O of a move. Every method is idempotent: a step killed half-way is run again from its start. */
export interface MovePort<J extends MoveJobView> {
  /** The job as recorded now. */
  reload(job: J): Promise<J>;
  /**
   * Applies a named transition as a compare-and-set on the job's state; throws if the job changed,
   * and {@link MoveFenceBudgetSpent} when one made under the fence (`drained`) ran out of its budget.
   */
  transition(job: J, name: MoveTransitionName, note?: string): Promise<J>;
  /**
   * Creates the source's fence row (and the target's `incoming` row), starts change capture, waits
   * for older writers. Throws {@link MoveOwnerConflict} when the catalog names neither side as the owner.
   */
  prepareSource(job: J): Promise<void>;
  /** Copies the unit's rows in resumable batches; throws {@link MoveCancelled} when asked to stop. */
  copy(job: J): Promise<J>;
  /**
   * Applies captured changes: `few` until a pass finds few, `all` until none is left (while
   * fenced). Returns `false` when `all` could not finish within the fence budget.
   */
  catchUp(job: J, until: 'few' | 'all'): Promise<boolean>;
  /**
   * Fences the unit on the source; `false` when the lock could not be had in time (nothing
   * changed); throws {@link MoveOwnerConflict}, before taking the lock, when the catalog names
   * neither side of the move as the owner. The fence budget starts with the attempt: the lock wait, the final catch-up, the
   * verification and the flip all fit in it, or the fence is given up.
   */
  fence(job: J): Promise<boolean>;
  /** Reopens the source's fence (after a fence held too long). */
  unfence(job: J): Promise<void>;
  /** Compares the two sides within what is left of the fence budget. */
  verify(job: J): Promise<VerifyOutcome>;
  /** Publishes the target as owner, compare-and-set on the map version and on the job not being cancelled; refused past the fence budget. */
  flip(job: J): Promise<FlipOutcome<J>>;
  /** Opens the target's fence and marks the source's `moved`. */
  releaseFence(job: J): Promise<void>;
  /** Stops capture and deletes the source rows the move verified. */
  cleanUp(job: J): Promise<J>;
  /**
   * Undoes a move that has not flipped; refuses (throws) if the map names the target. A refused
   * cancellation (`to` is `cancelled`) throws {@link MoveCancelRefused}, its request cleared.
   */
  rollback(job: J, to: 'failed' | 'cancelled', error: string | null): Promise<J>;
  /**
   * Whether this run may have published the job's new owner: false only while no flip it sent can
   * commit (it sent none, or each one it sent is known rolled back: cancelled by the server, or
   * given up within its transaction). Lets a run that can no longer read its job (the catalog went
   * silent under the fence) still give back a fence no flip can follow. Absent: assumed true.
   */
  mayHavePublished?(job: J): boolean;
  /**
   * Finds a flip the catalog lost after the fence was released forward (the flip committed on a
   * catalog primary alone, then a failover to a standby that never saw it): the source's fence
   * says the unit moved to the target for this job, writers have written there since, and the job
   * records no flip. Publishes the target as the owner again and records the flip (the job in
   * `verifying`, past its point of no return), so that the run finishes the move; null when the
   * source says no such thing. Throws {@link MoveError} when the unit has left the target since (its
   * fence names a later move, lost by the catalog too): the owner is then decided by hand. Absent:
   * not looked for (such a job can then neither go on nor roll back).
   */
  recoverLostFlip?(job: J): Promise<J | null>;
  /** Records why a run stopped, leaving the job resumable. */
  recordError(job: J, error: string): Promise<void>;
  /** Waits (a timer in production, a no-op in unit tests). */
  pause(ms: number): Promise<void>;
}

/** A move failed or cannot be done; the job (if any) is left resumable. */
export class MoveError extends Error {
  override readonly name: string = 'MoveError';
}

/**
 * Thrown by a port step (before it fences anything) that found the catalog naming neither the
 * move's source nor its target as the unit's owner: an operator pinned the key to a third shard,
 * or someone published a map giving the slot to one. The move could only publish by overwriting
 * that, so the driver rolls it back as failed, this message its error, instead of leaving it to
 * fence the unit's writes again at every run until someone cancels it. Thrown too where the source
 * itself says, by its fence row of the unit (`moved` or `incoming`, not this move's), that it does
 * not own the unit the catalog names it for: the move can never run from there, and left
 * unfinished it held every other move of the slot until someone cancelled it.
 */
export class MoveOwnerConflict extends MoveError {
  override readonly name = 'MoveOwnerConflict';
}

/**
 * Thrown by {@link MovePort.rollback} of a cancellation that it refused because the catalog already
 * routes the unit to the move's target (an operator pinned the key there, or the key was unpinned
 * and its slot hashes there): deleting the target's copy would hide the rows its readers find there.
 * Before throwing, the port cleared the job's cancellation request and recorded this message (see
 * {@link cancelRefusal}) as its error, so the driver goes on to finish the move on the target, which
 * is what the catalog already says, and the target's fence opens to the unit's writes. Left set,
 * the request made every later run try the rollback again and be refused again: the job never
 * ended, and the target's `incoming` fence refused the unit's writes for good.
 */
export class MoveCancelRefused extends MoveError {
  override readonly name = 'MoveCancelRefused';
}

/**
 * The job error of a cancellation refused for `reason` (see {@link MoveCancelRefused}); `next`
 * says what the move does instead where it cannot simply go on to finish on `to` (a directory
 * move stopped by rows its target took by hash: its owner is decided by hand).
 */
export function cancelRefusal(reason: string, to: string, next = `The move goes on to finish on ${to}, where the catalog routes the unit`): string {
  return `cancel refused: ${reason}. ${next}`;
}

/** Thrown by a port step that saw a cancellation request; the driver rolls back. */
export class MoveCancelled extends Error {
  override readonly name = 'MoveCancelled';
}

/**
 * Thrown by a port step at a point where a run may stop (between copy pages, clean-up batches, catch-up
 * passes outside the fence) once the run's time is up ({@link DriveOptions.timeUp}): the driver
 * returns the job as it is, and the next run resumes it there.
 */
export class MovePaused extends Error {
  override readonly name = 'MovePaused';
}

/** States at whose start a run whose time is up stops: no fence is held there. */
const MAY_STOP_AT: ReadonlySet<MoveState> = new Set(['planned', 'copying', 'catching_up', 'cutover', 'cleaning_up']);

/** The fence could not be taken within its budget in any attempt; writes were never held past it and the job resumes later. */
export class MoveFenceTimeoutError extends MoveError {
  override readonly name = 'MoveFenceTimeoutError';
}

/**
 * A record the run makes under the fence (the `drained` transition) was cancelled at the end of the
 * fence budget, the catalog slow to answer: nothing was recorded, and the fence is given up as when
 * any other part of the fenced window runs out of time (reopened, the attempt counted, tried again).
 */
export class MoveFenceBudgetSpent extends MoveError {
  override readonly name = 'MoveFenceBudgetSpent';
}

/** Another runner claimed the job after this run's lease expired: this run stops and writes nothing more. */
export class MoveLeaseLostError extends MoveError {
  override readonly name = 'MoveLeaseLostError';
}

export interface DriveOptions<J extends MoveJobView> {
  /** How many times one run tries to fence before giving up until the next run. Default 3. */
  readonly fenceAttempts?: number;
  /** Pause between fence attempts, so the readers holding the lock can finish. Default 1000 ms. */
  readonly fenceRetryPauseMs?: number;
  /** Called at every crash point; tests kill the process there (or throw, which stops the run as a kill would). */
  readonly hook?: (point: MoveCrashPoint, job: J) => Promise<void> | void;
  /**
   * Whether the run's time is up (a Lambda invocation near its timeout). Checked before each step
   * that starts with no fence held; once true the driver returns the job where it is, resumable.
   * A step in progress stops at its next safe point by throwing {@link MovePaused}. Default: never.
   */
  readonly timeUp?: () => boolean;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Runs (or resumes) a job until it is done, failed or cancelled. Throws {@link MoveError} when a
 * step fails in a way that leaves the job resumable (the error is recorded on the job), and
 * {@link MoveFenceTimeoutError} when the fence could not be taken in any attempt.
 */
export async function driveMove<J extends MoveJobView>(start: J, port: MovePort<J>, options: DriveOptions<J> = {}): Promise<J> {
  const fenceAttempts = options.fenceAttempts ?? 3;
  const pauseMs = options.fenceRetryPauseMs ?? 1000;
  // A hook that throws stands for the process dying there: the run stops without reopening a
  // fence it holds, as a killed one would (the error is recorded all the same).
  let died = false;
  const hook = async (point: MoveCrashPoint, j: J): Promise<void> => {
    try {
      await options.hook?.(point, j);
    } catch (err) {
      died = true;
      throw err;
    }
  };
  let job = start;
  // A run resumed in the cutover or the verification (before the flip) may find the fence of
  // the run before it (killed under it) still held: writes would wait through this run's whole
  // comparison before its own fence, or until the next run if this one stops first. Nothing of
  // that run is left to finish under it.
  if ((job.state === 'cutover' || job.state === 'verifying') && !job.flipStarted && !job.rollbackTo) await port.unfence(job);
  // A run whose time is already up changes nothing, a rollback included (it deletes the whole copy).
  if (options.timeUp?.() && !isTerminal(job.state)) return job;
  // Before anything else: every step before the flip (and a rollback) refuses a unit whose source
  // says it moved, so a job whose flip the catalog lost would fail at every run, for good.
  if (!isTerminal(job.state) && !job.flipStarted && !job.rollbackTo && port.recoverLostFlip) {
    try {
      job = (await port.recoverLostFlip(job)) ?? job;
    } catch (err) {
      await port.recordError(job, `${job.state}: ${message(err)}`).catch(() => undefined);
      if (err instanceof MoveError) throw err;
      throw new MoveError(`move job #${job.id} could not check for a flip its catalog lost: ${message(err)}`, { cause: err });
    }
  }
  // A rollback stops between its batches once the time is up (MovePaused); the next run resumes it.
  const rollback = (to: 'failed' | 'cancelled', error: string | null): Promise<J> =>
    port.rollback(job, to, error).catch((err: unknown) => {
      if (err instanceof MovePaused) return port.reload(job);
      throw err;
    });
  if (!isTerminal(job.state) && job.rollbackTo) return rollback(job.rollbackTo, null);
  const action = restartAction({ state: job.state, cancelRequested: job.cancelRequested, flipStarted: job.flipStarted });
  if (action.kind === 'none') return job;
  // Set once this run's cancellation was refused (MoveCancelRefused): the note every forward
  // transition of the run records, so the finished job still says why it was not cancelled.
  let refusal: string | undefined;
  /** A cancellation's rollback, or `null` when it was refused and the move goes on (the job read again). */
  const cancel = async (run: () => Promise<J>): Promise<J | null> => {
    try {
      return await run();
    } catch (err) {
      if (!(err instanceof MoveCancelRefused)) throw err;
      refusal = err.message;
      job = await port.reload(job);
      return null;
    }
  };
  if (action.kind === 'rollback') {
    const cancelled = await cancel(() => rollback(action.to, null));
    if (cancelled) return cancelled;
  }
  const transition = (j: J, name: MoveTransitionName): Promise<J> => port.transition(j, name, refusal);
  let fenceTries = 0;
  /**
   * After a step failed in the cutover or the verification, where this run may hold the fence:
   * reopen the source rather than hold writes until the next run. Only when no flip of this run
   * can commit, or the catalog says the new owner was not published: the job is read again, and a
   * run that cannot read it (the catalog connection is gone, and a flip may have committed) leaves
   * the fence to the next run.
   */
  const releaseOwnFence = async (): Promise<void> => {
    if (died || (job.state !== 'cutover' && job.state !== 'verifying')) return;
    // Were no flip ever sent by this run, none can be published (nor by another run, whose claim
    // the shard's permit makes refuse this run's writes), so the fence is reopened at once, before
    // the job is read: that read waits on the catalog (gone silent under the fence, or holding
    // the job table locked: a migration's lock held the fence the read's own bound, 5 s, longer).
    if (!job.flipStarted && port.mayHavePublished?.(job) === false) {
      await port.unfence(job).catch(() => undefined);
      return;
    }
    const now = await port.reload(job).catch(() => undefined);
    // The catalog cannot be read, and a flip of this run may have committed: left to the next run.
    if (!now || (now.state !== 'cutover' && now.state !== 'verifying')) return;
    // Past the flip the new owner is published: the fence can only be released forward (source
    // moved, target opened; idempotent), or every write of the unit waits for the next run.
    if (now.flipStarted) {
      await port.releaseFence(now).catch(() => undefined);
      return;
    }
    await port.unfence(now).catch(() => undefined);
  };
  /** After the fence was released unused: back to catching up, and a pause before the next attempt (or the end of this run). */
  const giveUp = async (name: 'fence_timed_out' | 'verify_timed_out', what: string): Promise<J> => {
    fenceTries += 1;
    const why = `the write fence of ${job.kind} ${job.unitId} on ${job.from} ${what} (attempt ${fenceTries} of ${fenceAttempts}); writes were released`;
    const back = await port.transition(job, name, why);
    if (fenceTries >= fenceAttempts) throw new MoveFenceTimeoutError(`${why}; the move resumes at its next run`);
    await port.pause(pauseMs);
    return back;
  };
  for (;;) {
    if (isTerminal(job.state)) return job;
    if (options.timeUp?.() && MAY_STOP_AT.has(job.state)) return job;
    try {
      // Inside the try: a cancellation seen under the fence (the flip's answer) rolls back while
      // the fence is held, and a rollback that fails before reopening it must not leave it held.
      // Refused (the catalog routes the unit to the target), the request is cleared and the move
      // goes on from where it is: under the fence (the flip answered the cancellation), to its flip.
      if (job.cancelRequested && !job.flipStarted) {
        const cancelled = await cancel(() => port.rollback(job, 'cancelled', null));
        if (cancelled) return cancelled;
        continue;
      }
      switch (job.state) {
        case 'planned':
          job = await transition(job, 'start');
          await hook('copying', job);
          break;
        case 'copying':
          await port.prepareSource(job);
          job = await port.copy(job);
          await hook('copied', job);
          job = await transition(job, 'copied');
          await hook('catching_up', job);
          break;
        case 'catching_up':
          await port.catchUp(job, 'few');
          job = await transition(job, 'caught_up');
          await hook('cutover', job);
          break;
        case 'cutover': {
          let drained: J | null = null;
          if (await port.fence(job)) {
            await hook('fenced', job);
            if (await port.catchUp(job, 'all')) {
              drained = await transition(job, 'drained').catch((err: unknown) => {
                if (err instanceof MoveFenceBudgetSpent) return null;
                throw err;
              });
            }
            if (!drained) await port.unfence(job);
          }
          if (!drained) {
            job = await giveUp('fence_timed_out', 'was not held within its budget');
            break;
          }
          job = drained;
          await hook('verifying', job);
          break;
        }
        case 'verifying': {
          // Once the flip has happened writers may already write on the target, so the two sides
          // legitimately differ; the verification that allowed the flip has passed.
          if (!job.flipStarted) {
            const verdict = await port.verify(job);
            if (verdict.kind === 'differ') return await port.rollback(job, 'failed', verdict.detail);
            const flip = verdict.kind === 'equal' ? await port.flip(job) : verdict;
            if (flip.kind === 'over_budget') {
              await port.unfence(job);
              const why = verdict.kind === 'equal' ? `the flip ran out of time${'detail' in flip && flip.detail !== undefined ? `: ${flip.detail}` : ''}` : 'the verification ran out of time';
              job = await giveUp('verify_timed_out', `could not be verified and published within its budget (${why})`);
              break;
            }
            // As the flip read (and recorded) it, not read back: that read, under the fence and
            // bounded only by the run's catalog bound (the budget + 5 s), waited on a lock of the job
            // table taken once the flip's transaction ended, writes to the unit held all along; after
            // a flip, the connection closed, the run could not tell the flip had landed and left the
            // fence shut until the next run.
            if (flip.kind === 'cancelled') {
              job = flip.job;
              break;
            }
            // Nothing was published, and no later run could publish either: failed, rolled back
            // under the fence as a failed verification is (the rollback reopens the source).
            if (flip.kind === 'conflict') return await port.rollback(job, 'failed', flip.detail);
            job = flip.job;
            await hook('published', job);
          }
          await port.releaseFence(job);
          job = await transition(job, 'flipped');
          await hook('cleaning_up', job);
          break;
        }
        case 'cleaning_up':
          job = await port.cleanUp(job);
          await hook('cleaned', job);
          job = await transition(job, 'cleaned');
          break;
        default:
          return job;
      }
    } catch (caught) {
      let err = caught;
      if (err instanceof MovePaused) return port.reload(job);
      if (err instanceof MoveCancelled) {
        job = await port.reload(job);
        continue;
      }
      // Thrown before any fence of this run was taken. A rollback refused (the catalog has named
      // the target since, say) leaves the job resumable, that refusal its error.
      if (err instanceof MoveOwnerConflict) {
        try {
          return await rollback('failed', err.message);
        } catch (refused) {
          err = refused;
        }
      }
      await releaseOwnFence();
      await port.recordError(job, `${job.state}: ${message(err)}`).catch(() => undefined);
      if (err instanceof MoveError) throw err;
      throw new MoveError(`move job #${job.id} stopped in ${job.state}: ${message(err)}`, { cause: err });
    }
  }
}

/** How the configured strategy routes, as far as moves go. */
export interface MoveRouting {
  readonly strategy: 'hash_based' | 'range_based' | 'directory_based';
  /** Whether directory entries override hash routing (`directory.override_hash`). */
  readonly overrideHash: boolean;
  /** What `directory_based` does with keys not in the directory. */
  readonly fallback: 'hash' | 'reject';
  /** `false` when sharding is disabled (the configuration's `enabled`, or `SHARDING_ENABLED=false` over it); default `true`. */
  readonly enabled?: boolean;
  /**
   * Where `enabled: false` came from, as a refusal names it (`SHARDING_ENABLED=false`, the
   * document's `"enabled": false`, a runtime's record): the operator who reads "sharding is
   * disabled" must know what to change. Not part of the routing: {@link sameRouting} ignores it.
   */
  readonly disabledBy?: string;
}

/** Whether `SHARDING_ENABLED` says false, as core/sharding/config.ts reads it. */
export function envDisables(env: { readonly SHARDING_ENABLED?: string | undefined } | undefined): boolean {
  return ['false', '0', 'no'].includes(env?.SHARDING_ENABLED?.trim().toLowerCase() ?? '');
}

/**
 * The routing a sharding configuration gives the mover. `env`, the variables the configuration was
 * loaded with (they override the document), tells where a disabled routing came from; `document`
 * names the document in that message (default "the sharding configuration").
 */
export function moveRoutingOf(config: ShardingConfig, env?: { readonly SHARDING_ENABLED?: string | undefined }, document = 'the sharding configuration'): MoveRouting {
  const routing = { strategy: config.strategy, overrideHash: config.directory.override_hash, fallback: config.directory.fallback, enabled: config.enabled };
  if (config.enabled) return routing;
  return { ...routing, disabledBy: envDisables(env) ? `SHARDING_ENABLED=${env?.SHARDING_ENABLED?.trim() ?? 'false'}` : `${document}'s "enabled": false` };
}

/** `sharding is disabled (SHARDING_ENABLED=false)`: the words every refusal of a disabled routing begins with. */
export function shardingDisabled(routing: MoveRouting): string {
  return `sharding is disabled (${routing.disabledBy ?? '"enabled": false in the routing'})`;
}

/** The routing as one line for a message: `directory_based (override_hash on, fallback hash)`. */
export function describeRouting(routing: MoveRouting): string {
  return `${routing.strategy} (override_hash ${routing.overrideHash ? 'on' : 'off'}, fallback ${routing.fallback}${routing.enabled === false ? ', sharding disabled' : ''})`;
}

/** Whether two routings are the same, field by field (`enabled` absent is `true`), not merely ones that happen to route a key alike. */
export function sameRouting(a: MoveRouting, b: MoveRouting): boolean {
  return a.strategy === b.strategy && a.overrideHash === b.overrideHash && a.fallback === b.fallback && (a.enabled !== false) === (b.enabled !== false);
}

export type MoveUnitVerdict =
  | {
      readonly ok: true;
      /** Directory-placed keys hashing into a moving slot stay where the directory puts them. */
      readonly excludeDirectoryKeys: boolean;
    }
  | { readonly ok: false; readonly reason: string };

/**
 * Whether a move of this kind moves what the configured strategy routes by. A slot move under
 * range routing, or a directory move when the directory does not decide routing, would copy
 * rows the router then looks for elsewhere: the keys would be stranded. So would any move while
 * sharding is disabled (every key goes to `default_shard`). Such moves are refused.
 *
 * @example
 * ```ts
 * moveUnitFor({ strategy: 'range_based', overrideHash: true, fallback: 'hash' }, 'slot'); // { ok: false, reason: 'strategy range_based ...' }
 * ```
 */
export function moveUnitFor(routing: MoveRouting, kind: MoveUnitKind): MoveUnitVerdict {
  if (routing.enabled === false) {
    return {
      ok: false,
      reason: `${shardingDisabled(routing)}: every key routes to default_shard whatever the slot map or the directory says; a move would strand its rows on the target: enable sharding first`,
    };
  }
  if (routing.strategy === 'range_based') {
    return {
      ok: false,
      reason: 'strategy range_based routes keys by the configured ranges, not by hash slot or directory entry; a move would strand keys on the old shard: change the ranges in the sharding configuration instead',
    };
  }
  const directoryDecides = routing.strategy === 'directory_based' || routing.overrideHash;
  if (kind === 'directory') {
    if (!directoryDecides) {
      return {
        ok: false,
        reason: 'strategy hash_based with directory.override_hash false routes every key by its hash slot; a directory-key move would strand the key: move its slot instead, or turn override_hash on',
      };
    }
    return { ok: true, excludeDirectoryKeys: true };
  }
  if (routing.strategy === 'directory_based' && routing.fallback === 'reject') {
    return { ok: false, reason: 'strategy directory_based with fallback reject routes no key by hash slot; a slot move would move nothing the router uses: move directory keys instead' };
  }
  return { ok: true, excludeDirectoryKeys: directoryDecides };
}
