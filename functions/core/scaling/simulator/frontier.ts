/**
 * Trade-off lines: what a policy pays in task-minutes for a given number of SLO-violation
 * minutes as one knob moves, and where that line crosses a violation limit. The goal of issue
 * #2 section 6 is a box (violations at most X, task-minutes at most Y); a policy meets it only
 * if its line passes through the box, so the question "could another setting pass?" is
 * answered by the line, not by a single run.
 *
 * The reference rule below is not a policy: it is a deliberately simple, generously calibrated
 * rule that can be given foresight, to measure how much of the cost of a trace is the price of
 * not knowing the next minutes.
 */
import type { Controller } from './fleet.js';
import type { SimulationModel } from './model.js';
import { tasksNeeded } from './model.js';

/** One point of a sweep: the knob's value and what it produced. */
export interface FrontierPoint {
  readonly knob: number;
  readonly sloViolationMinutes: number;
  readonly taskMinutes: number;
}

/**
 * The task-minutes at exactly `violationLimit` violation minutes, interpolated linearly
 * between the two neighbouring sweep points (in knob order) whose violation counts bracket
 * the limit. `undefined` when no pair brackets it (the sweep does not reach the limit).
 * When several pairs bracket it (a noisy line), the cheapest crossing is returned.
 *
 * @example
 * ```ts
 * taskMinutesAtViolations([{ knob: 1, sloViolationMinutes: 200, taskMinutes: 100 }, { knob: 2, sloViolationMinutes: 100, taskMinutes: 200 }], 150); // 150
 * ```
 */
export function taskMinutesAtViolations(points: readonly FrontierPoint[], violationLimit: number): number | undefined {
  const sorted = [...points].sort((a, b) => a.knob - b.knob);
  let best: number | undefined;
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1] as FrontierPoint;
    const b = sorted[i] as FrontierPoint;
    const lo = Math.min(a.sloViolationMinutes, b.sloViolationMinutes);
    const hi = Math.max(a.sloViolationMinutes, b.sloViolationMinutes);
    if (violationLimit < lo || violationLimit > hi) continue;
    const at =
      a.sloViolationMinutes === b.sloViolationMinutes
        ? Math.min(a.taskMinutes, b.taskMinutes)
        : a.taskMinutes + ((b.taskMinutes - a.taskMinutes) * (violationLimit - a.sloViolationMinutes)) / (b.sloViolationMinutes - a.sloViolationMinutes);
    if (best === undefined || at < best) best = at;
  }
  return best;
}

/**
 * The noise scale of a demand series measured in hindsight: the root mean square of each
 * minute's deviation from the centred mean of the `halfWindow` minutes either side, divided
 * by the square root of that mean (request-driven load is roughly Poisson: its spread grows
 * with the square root of its level). Minutes whose centred mean is below `floor` count with
 * the floor.
 *
 * @example
 * ```ts
 * hindsightNoiseScale(demand); // about 0.54 on the NASA trace
 * ```
 */
export function hindsightNoiseScale(demand: Float64Array, halfWindow = 15, floor = 0.3): number {
  const n = demand.length;
  if (n === 0) return 0;
  const prefix = new Float64Array(n + 1);
  for (let i = 0; i < n; i++) prefix[i + 1] = (prefix[i] as number) + (demand[i] as number);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const lo = Math.max(0, i - halfWindow);
    const hi = Math.min(n - 1, i + halfWindow);
    const mean = ((prefix[hi + 1] as number) - (prefix[lo] as number)) / (hi - lo + 1);
    const dev = (demand[i] as number) - mean;
    sum += (dev * dev) / Math.max(mean, floor);
  }
  return Math.sqrt(sum / n);
}

/** The reference rule's settings. */
export interface ReferenceRule {
  /** Weight of the newest minute in the exponentially weighted demand level. */
  readonly levelWeight: number;
  /** Weight of a minute below the level (default `levelWeight`): lower makes the level fall slower than it rises. */
  readonly levelWeightDown?: number;
  /** Scale in only when the tasks needed with this many tasks' worth of extra load are still fewer (default 0). */
  readonly hysteresis?: number;
  /** Headroom in multiples of `noiseScale x sqrt(level)`. */
  readonly margin: number;
  /** See {@link hindsightNoiseScale}. */
  readonly noiseScale: number;
  /**
   * Minutes of demand the rule sees beyond what the model gives a policy. 0: up to the
   * previous minute, exactly like a policy; 1: also the minute being decided (foresight no
   * metric can give); `k`: `k` minutes ahead.
   */
  readonly foresight: number;
}

/**
 * A controller for the reference rule: desired = the tasks that keep
 * `level + margin x noiseScale x sqrt(level)` within the SLO utilisation, within the bounds.
 * It reads demand straight from the trace (no metrics), so it is a measuring stick, not a
 * policy.
 *
 * @example
 * ```ts
 * const c = referenceController(demand, { levelWeight: 0.05, margin: 2, noiseScale: 0.54, foresight: 0 }, DEFAULT_MODEL);
 * scoreTimeline(runFleet(demand, 0, DEFAULT_MODEL, c), DEFAULT_MODEL);
 * ```
 */
export function referenceController(demand: Float64Array, rule: ReferenceRule, model: SimulationModel): Controller {
  const last = demand.length - 1;
  const down = rule.levelWeightDown ?? rule.levelWeight;
  const hysteresis = rule.hysteresis ?? 0;
  let level: number | undefined;
  let seen = -1;
  return ({ tick, desired }) => {
    const upTo = Math.min(last, tick - 1 + rule.foresight);
    for (let i = seen + 1; i <= upTo; i++) {
      const d = demand[i] as number;
      level = level === undefined ? d : level + (d < level ? down : rule.levelWeight) * (d - level);
    }
    seen = Math.max(seen, upTo);
    const l = Math.max(0, level ?? 0);
    const peak = l + rule.margin * rule.noiseScale * Math.sqrt(l);
    const want = tasksNeeded(peak, model);
    if (want >= desired || hysteresis === 0) return want;
    return Math.min(desired, tasksNeeded(peak + hysteresis * model.sloUtilization, model));
  };
}
