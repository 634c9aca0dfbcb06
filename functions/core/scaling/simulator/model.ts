/**
 * The simulator's model parameters. Every one can be overridden (the CLI has a flag for each)
 * and is printed with the results so that a figure always says what produced it.
 */

export interface SimulationModel {
  /** Seconds between policy evaluations; also the resolution the trace is resampled to. */
  readonly tickSeconds: number;
  /** Seconds from a scale-out decision until the new task serves traffic. */
  readonly startupSeconds: number;
  /** Bounds on the task count (the policies' min_instances / max_instances). */
  readonly minTasks: number;
  readonly maxTasks: number;
  /** The trace is rescaled so that its 99th percentile is this many task-units. */
  readonly p99TaskUnits: number;
  /** A minute violates the SLO when demand / running exceeds this utilisation. */
  readonly sloUtilization: number;
  /** Two actions in opposite directions closer than this count as a reversal. */
  readonly reversalWindowSeconds: number;
  /** Fraction (0..1) of minutes whose metrics are dropped, to exercise missing data. */
  readonly missingFraction: number;
  /** Seed of the PRNG that picks the dropped minutes (the same minutes for every policy). */
  readonly seed: number;
  /** Tasks running at the start; `null` means just enough for the first minute. */
  readonly initialTasks: number | null;
  /** Requests per minute that one task-unit of demand represents. */
  readonly requestsPerTaskUnitMinute: number;
}

/** The defaults of issue #2 section 5. */
export const DEFAULT_MODEL: SimulationModel = {
  tickSeconds: 60,
  startupSeconds: 120,
  minTasks: 2,
  maxTasks: 10,
  p99TaskUnits: 8,
  sloUtilization: 0.9,
  reversalWindowSeconds: 600,
  missingFraction: 0,
  seed: 1,
  initialTasks: null,
  requestsPerTaskUnitMinute: 6000,
};

/**
 * The tasks needed so that `demand` keeps utilisation at or below the SLO, within bounds.
 *
 * @example
 * ```ts
 * tasksNeeded(4.6, DEFAULT_MODEL); // 6: 4.6 / 6 = 0.77 <= 0.9, 4.6 / 5 = 0.92 > 0.9
 * ```
 */
export function tasksNeeded(demand: number, model: SimulationModel): number {
  const n = Math.ceil(demand / model.sloUtilization - 1e-9);
  return Math.min(model.maxTasks, Math.max(model.minTasks, n));
}
