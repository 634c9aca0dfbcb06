/**
 * One simulation run: a trace prepared once, every contestant replayed on the same demand and
 * the same dropped minutes, the oracle alongside, and the scores.
 */
import type { Decision, ScalingPolicy } from '../types.js';
import { policyController } from './drive.js';
import type { Controller, Timeline } from './fleet.js';
import { runFleet } from './fleet.js';
import type { SimulationModel } from './model.js';
import { oracleController } from './oracle.js';
import { mulberry32 } from './prng.js';
import type { Scores } from './score.js';
import { scoreTimeline } from './score.js';
import type { TracePoint } from './trace.js';
import { rescaleToP99, resampleToTicks } from './trace.js';

/** A trace ready to replay: demand in task-units per tick. */
export interface PreparedTrace {
  readonly name: string;
  readonly startAt: number;
  readonly demand: Float64Array;
}

/** Something replayed through the fleet: a policy with its configuration. */
export interface Contestant {
  readonly name: string;
  controller(model: SimulationModel, dropped: Uint8Array, onDecision?: (d: Decision) => void): Controller;
}

export type PolicyResult = { readonly policy: string } & Scores;

/** The documented `--format json` shape. */
export interface SimulationResult {
  readonly trace: string;
  readonly ticks: number;
  readonly model: SimulationModel;
  readonly results: readonly PolicyResult[];
  readonly oracle: PolicyResult;
}

/** A run's result with the timelines behind it (for the report). */
export interface SimulationRun {
  readonly result: SimulationResult;
  readonly timelines: ReadonlyMap<string, Timeline>;
}

/** The name of the clairvoyant row. */
export const ORACLE = 'oracle';

/**
 * Resamples a parsed trace to the tick and rescales it to task-units.
 *
 * @example
 * ```ts
 * const trace = prepareTrace('nasa', parseTraceCsv(text), DEFAULT_MODEL);
 * ```
 */
export function prepareTrace(name: string, points: readonly TracePoint[], model: SimulationModel): PreparedTrace {
  const raw = resampleToTicks(points, model.tickSeconds * 1000);
  return { name, startAt: (points[0] as TracePoint).at, demand: rescaleToP99(raw, model.p99TaskUnits) };
}

/** The minutes whose metrics are dropped: a seeded draw, identical for every contestant. */
export function droppedMinutes(ticks: number, model: SimulationModel): Uint8Array {
  const mask = new Uint8Array(ticks);
  if (model.missingFraction <= 0) return mask;
  const random = mulberry32(model.seed);
  for (let i = 0; i < ticks; i++) mask[i] = random() < model.missingFraction ? 1 : 0;
  return mask;
}

/**
 * Wraps a policy and its configuration as a contestant.
 *
 * @example
 * ```ts
 * const contestants = [contestant('threshold', thresholdPolicy, config)];
 * ```
 */
export function contestant<C>(name: string, policy: ScalingPolicy<C>, config: C): Contestant {
  return {
    name,
    controller: (model, dropped, onDecision) => policyController(policy, config, model, dropped, onDecision),
  };
}

/**
 * Replays every contestant and the oracle on one trace and scores them.
 *
 * @example
 * ```ts
 * const { result } = simulate(trace, [contestant('ca-dms', caDmsPolicy, config)], DEFAULT_MODEL);
 * result.results[0].sloViolationMinutes;
 * ```
 */
export function simulate(trace: PreparedTrace, contestants: readonly Contestant[], model: SimulationModel): SimulationRun {
  const dropped = droppedMinutes(trace.demand.length, model);
  const timelines = new Map<string, Timeline>();
  const results = contestants.map((c) => {
    const timeline = runFleet(trace.demand, trace.startAt, model, c.controller(model, dropped));
    timelines.set(c.name, timeline);
    return { policy: c.name, ...scoreTimeline(timeline, model) };
  });
  const oracleTimeline = runFleet(trace.demand, trace.startAt, model, oracleController(trace.demand, model));
  timelines.set(ORACLE, oracleTimeline);
  return {
    result: {
      trace: trace.name,
      ticks: trace.demand.length,
      model,
      results,
      oracle: { policy: ORACLE, ...scoreTimeline(oracleTimeline, model) },
    },
    timelines,
  };
}
