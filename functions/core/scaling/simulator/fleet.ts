/**
 * The simulated fleet: tasks added by a decision serve traffic `startupSeconds` later, tasks
 * removed stop at once (pending ones first, as ECS does), and the metrics one minute of demand
 * produces on the tasks that were running.
 */
import type { MetricsSnapshot } from '../types.js';
import type { SimulationModel } from './model.js';
import { tasksNeeded } from './model.js';

/** What happened, tick by tick: the input of the scores and of the report. */
export interface Timeline {
  /** Epoch ms at which tick 0 starts. */
  readonly startAt: number;
  readonly tickMs: number;
  /** Demand in task-units, per tick. */
  readonly demand: Float64Array;
  /** Tasks serving traffic during each tick (after that tick's decision). */
  readonly running: Int32Array;
  /** Tasks started but not yet serving during each tick. */
  readonly starting: Int32Array;
  /** The desired count during each tick. */
  readonly desired: Int32Array;
  /** Every applied change of the desired count. */
  readonly actions: ReadonlyArray<{ readonly tick: number; readonly from: number; readonly to: number }>;
}

/** What a controller sees at a tick before it decides. */
export interface FleetView {
  /** The tick being decided (>= 1: tick 0 runs with the initial fleet). */
  readonly tick: number;
  /** Epoch ms of the decision (the start of the tick). */
  readonly now: number;
  readonly running: number;
  readonly pending: number;
  readonly desired: number;
  /** Per-tick history so far; index `tick - 1` is the minute that just ended. */
  readonly demand: Float64Array;
  readonly pastRunning: Int32Array;
}

/**
 * Decides the desired count at a tick. Returning the current desired count means no change.
 */
export type Controller = (view: FleetView) => number;

/** A controller returned a count the fleet cannot apply. */
export class SimulationError extends Error {
  override readonly name = 'SimulationError';
}

interface Batch {
  readyAt: number;
  count: number;
}

/**
 * Replays `demand` (task-units per tick) through a controller.
 *
 * @example
 * ```ts
 * const timeline = runFleet(Float64Array.of(1, 1, 5, 5), 0, DEFAULT_MODEL, (v) => v.desired);
 * timeline.running; // Int32Array [2, 2, 2, 2]: a controller that never acts keeps the initial fleet
 * ```
 */
export function runFleet(demand: Float64Array, startAt: number, model: SimulationModel, controller: Controller): Timeline {
  const n = demand.length;
  const tickMs = model.tickSeconds * 1000;
  const startupMs = model.startupSeconds * 1000;
  const running = new Int32Array(n);
  const starting = new Int32Array(n);
  const desiredSeries = new Int32Array(n);
  const actions: Array<{ tick: number; from: number; to: number }> = [];
  let run = model.initialTasks ?? tasksNeeded(demand[0] ?? 0, model);
  let desired = run;
  const batches: Batch[] = [];
  let pending = 0;
  for (let i = 0; i < n; i++) {
    const now = startAt + i * tickMs;
    while (batches.length > 0 && (batches[0] as Batch).readyAt <= now) {
      const b = batches.shift() as Batch;
      run += b.count;
      pending -= b.count;
    }
    if (i > 0) {
      const to = controller({ tick: i, now, running: run, pending, desired, demand, pastRunning: running });
      if (!Number.isInteger(to) || to < 0) throw new SimulationError(`tick ${i}: the controller asked for ${to} tasks; a desired count is a whole number >= 0`);
      if (to > desired) {
        batches.push({ readyAt: now + startupMs, count: to - desired });
        pending += to - desired;
      } else if (to < desired) {
        let remove = desired - to;
        while (remove > 0 && batches.length > 0) {
          const last = batches[batches.length - 1] as Batch;
          const take = Math.min(remove, last.count);
          last.count -= take;
          pending -= take;
          remove -= take;
          if (last.count === 0) batches.pop();
        }
        run -= remove;
      }
      if (to !== desired) actions.push({ tick: i, from: desired, to });
      desired = to;
    }
    // A zero startup makes a new task serve in the tick that started it.
    while (batches.length > 0 && (batches[0] as Batch).readyAt <= now) {
      const b = batches.shift() as Batch;
      run += b.count;
      pending -= b.count;
    }
    running[i] = run;
    starting[i] = pending;
    desiredSeries[i] = desired;
  }
  return { startAt, tickMs, demand, running, starting, desired: desiredSeries, actions };
}

/**
 * The metrics a minute of `demand` (task-units) produces on `running` tasks, reported at `at`
 * (issue #2 section 5): CPU saturates at 100 %, connections per task do not.
 */
export function metricsFor(demand: number, running: number, at: number, model: SimulationModel): MetricsSnapshot {
  const requestCount = demand * model.requestsPerTaskUnitMinute * (model.tickSeconds / 60);
  if (running <= 0) return { at, requestCount, responseTimeMs: demand > 0 ? 5000 : 100 };
  const u = demand / running;
  const busy = Math.min(1, u);
  return {
    at,
    cpu: 100 * busy,
    memory: 30 + 50 * busy,
    responseTimeMs: u > 1 ? 5000 : 100 / (1 - Math.min(u, 0.99)),
    connectionsPerTask: 100 * u,
    requestCount,
  };
}
