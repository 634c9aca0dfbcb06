/**
 * Scores of a replay: what an operator pays (task-minutes, actions), what users feel
 * (SLO-violation minutes), how calm the policy is (reversals), and the SPEC Research Group
 * elasticity metrics.
 */
import type { Timeline } from './fleet.js';
import type { SimulationModel } from './model.js';

export interface Scores {
  /** Minutes with demand / running above the SLO utilisation. */
  readonly sloViolationMinutes: number;
  /** Running plus starting tasks, summed over minutes. */
  readonly taskMinutes: number;
  /** Applied changes of the desired count. */
  readonly actions: number;
  /** Actions whose direction differs from the previous action's, within the reversal window. */
  readonly reversals: number;
  /**
   * SPEC RG elasticity metrics (Herbst et al., "Quantifying Cloud Performance and
   * Dependability", ACM TOMPECS 2018), in percent, with supply = SLO utilisation x running:
   * accuracy_U / accuracy_O are the mean under- / over-provisioned share of demand,
   * timeshare_U / timeshare_O the share of time under- / over-provisioned.
   */
  readonly accuracyU: number;
  readonly accuracyO: number;
  readonly timeshareU: number;
  readonly timeshareO: number;
  /** The most tasks (running plus starting) at any minute. */
  readonly maxTasks: number;
}

/**
 * Whether a tick violates the SLO: demand above the SLO utilisation of the running tasks (any
 * demand with none running).
 *
 * @example
 * ```ts
 * violatesSlo(4.6, 5, 0.9); // true: 0.92 > 0.9
 * ```
 */
export function violatesSlo(demand: number, running: number, sloUtilization: number): boolean {
  return running === 0 ? demand > 0 : demand / running > sloUtilization;
}

/**
 * Demand below this many task-units is normalised by it in the accuracy metrics, so that an
 * idle minute does not make over-provisioning infinite.
 */
export const ACCURACY_DEMAND_FLOOR = 0.01;

/**
 * Scores a timeline.
 *
 * @example
 * ```ts
 * const { sloViolationMinutes, taskMinutes } = scoreTimeline(timeline, DEFAULT_MODEL);
 * ```
 */
export function scoreTimeline(t: Timeline, model: SimulationModel): Scores {
  const n = t.demand.length;
  const minutesPerTick = model.tickSeconds / 60;
  let violations = 0;
  let tasks = 0;
  let maxTasks = 0;
  let underAcc = 0;
  let overAcc = 0;
  let underTime = 0;
  let overTime = 0;
  for (let i = 0; i < n; i++) {
    const d = t.demand[i] as number;
    const r = t.running[i] as number;
    const all = r + (t.starting[i] as number);
    if (violatesSlo(d, r, model.sloUtilization)) violations++;
    tasks += all;
    if (all > maxTasks) maxTasks = all;
    const supply = model.sloUtilization * r;
    const base = Math.max(d, ACCURACY_DEMAND_FLOOR);
    if (d > supply) {
      underAcc += (d - supply) / base;
      underTime++;
    } else if (supply > d) {
      overAcc += (supply - d) / base;
      overTime++;
    }
  }
  let reversals = 0;
  const windowTicks = model.reversalWindowSeconds / model.tickSeconds;
  for (let k = 1; k < t.actions.length; k++) {
    const a = t.actions[k - 1];
    const b = t.actions[k];
    if (a === undefined || b === undefined) continue;
    if (Math.sign(a.to - a.from) !== Math.sign(b.to - b.from) && b.tick - a.tick <= windowTicks) reversals++;
  }
  const pct = (x: number): number => (n === 0 ? 0 : (100 * x) / n);
  return {
    sloViolationMinutes: violations * minutesPerTick,
    taskMinutes: tasks * minutesPerTick,
    actions: t.actions.length,
    reversals,
    accuracyU: pct(underAcc),
    accuracyO: pct(overAcc),
    timeshareU: pct(underTime),
    timeshareO: pct(overTime),
    maxTasks,
  };
}
