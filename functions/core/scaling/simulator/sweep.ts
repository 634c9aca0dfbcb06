/**
 * The anchor sweeps of issue #13: each anchor policy over its main setting, the way a user
 * would tune it, replayed on one trace in one run (one oracle, the same dropped minutes) with
 * the policies being judged, and the judgement of each against the anchors' envelope.
 */
import type { ServiceScalingConfig } from '../config.js';
import { getPolicy } from '../policies/index.js';
import { simulationConfig } from './anchors.js';
import type { AnchorCurve, TraceJudgement } from './criterion.js';
import { combineJudgement, judgeFrontier } from './criterion.js';
import type { FrontierPoint } from './frontier.js';
import type { SimulationModel } from './model.js';
import type { Contestant, PolicyResult, PreparedTrace } from './simulate.js';
import { contestant, simulate } from './simulate.js';

/** The anchor policies swept. */
export const SWEPT_ANCHORS = ['hpa', 'target-tracking', 'step', 'threshold'] as const;
export type SweptAnchor = (typeof SWEPT_ANCHORS)[number];

/**
 * One sweep: an anchor policy, the values of its knob and how a value sets the configuration.
 * Each sweep draws one curve of the frontier; an anchor may have several (`hpa` on CPU and
 * `hpa` on connections per task), each named by `curve`.
 */
export interface AnchorSweep {
  readonly anchor: SweptAnchor;
  /** The curve's name: the anchor's name for its main sweep, `<anchor> connections` for the sweep on connections per task. */
  readonly curve: string;
  readonly values: readonly number[];
  /** The variant spec of one value (`simulate --variant` syntax), naming the row. */
  spec(value: number): string;
  configure(base: ServiceScalingConfig, value: number): ServiceScalingConfig;
}

function range(from: number, to: number, step: number): number[] {
  const out: number[] = [];
  for (let v = from; v <= to; v += step) out.push(v);
  return out;
}

/**
 * The guide's memory and connection thresholds that say what the CPU thresholds `up` / `down`
 * say, in the simulator's metrics (`metricsFor`: connections per task = CPU % while CPU is not
 * saturated, memory % = 30 + CPU / 2). Left at the guide's defaults, they overrule the CPU
 * setting being swept: connections above 80 scale out at 80 % CPU whatever `cpu_scale_up`
 * says, and memory below 40 and connections below 20 hold every scale-in to CPU below 20, so
 * the settings from 80 up would all be one and the same.
 */
function thresholdsFollowingCpu(up: number, down: number) {
  return {
    cpu_scale_up: up,
    cpu_scale_down: down,
    memory_scale_up: 30 + up / 2,
    memory_scale_down: 30 + down / 2,
    connections_scale_up: up,
    connections_scale_down: down,
  };
}

/**
 * hpa and target-tracking: `targets.cpu` 30..90 step 5; step: `scale_out_threshold` 30..85
 * with `scale_in_threshold` 30 below; threshold: `cpu_scale_up` 50..90 with `cpu_scale_down`
 * 50 below, the memory and connection thresholds moved with them ({@link thresholdsFollowingCpu});
 * then hpa and target-tracking again on connections per task alone (`targets.cpu` null,
 * `targets.connections` 30..90 step 5). A user's HPA or target tracking can follow any metric
 * the service reports, and ca-dms reads connections per task, which keep measuring the load
 * while CPU is saturated at 100 %: the anchors may read it too.
 */
export const ANCHOR_SWEEPS: readonly AnchorSweep[] = [
  ...(['hpa', 'target-tracking'] as const).map((anchor) => ({
    anchor,
    curve: anchor,
    values: range(30, 90, 5),
    spec: (v: number) => `${anchor}:targets.cpu=${v}`,
    configure: (base: ServiceScalingConfig, v: number) => ({ ...base, targets: { ...base.targets, cpu: v } }),
  })),
  {
    anchor: 'step',
    curve: 'step',
    values: range(30, 85, 5),
    spec: (v) => `step:step.scale_out_threshold=${v},step.scale_in_threshold=${v - 30}`,
    configure: (base, v) => ({ ...base, step: { ...base.step, scale_out_threshold: v, scale_in_threshold: v - 30 } }),
  },
  {
    anchor: 'threshold',
    curve: 'threshold',
    values: range(50, 90, 5),
    spec: (v) =>
      `threshold:${Object.entries(thresholdsFollowingCpu(v, v - 50))
        .map(([path, value]) => `${path}=${value}`)
        .join(',')}`,
    configure: (base, v) => ({ ...base, ...thresholdsFollowingCpu(v, v - 50) }),
  },
  ...(['hpa', 'target-tracking'] as const).map((anchor) => ({
    anchor,
    curve: `${anchor} connections`,
    values: range(30, 90, 5),
    spec: (v: number) => `${anchor}:targets.cpu=null,targets.connections=${v}`,
    configure: (base: ServiceScalingConfig, v: number) => ({ ...base, targets: { ...base.targets, cpu: null, connections: v } }),
  })),
];

/** How many anchor settings {@link runAnchors} replays on a trace. */
export const ANCHOR_SETTINGS = ANCHOR_SWEEPS.reduce((n, s) => n + s.values.length, 0);

/**
 * ca-dms's own trade-off line: its one user-facing setting, `ca_dms.target_violation_rate`,
 * from strict to lax (the default 0.1 among them), named in `simulate --variant` syntax.
 */
export const CA_DMS_RATES: readonly number[] = [0.02, 0.05, 0.1, 0.2, 0.3];

/**
 * ca-dms replayed on `trace` at each of {@link CA_DMS_RATES}, cheapest-violating last: the curve
 * the trade-off chart draws beside the anchors'.
 *
 * @example
 * ```ts
 * caDmsCurve(trace, model).map((r) => [r.policy, r.taskMinutes, r.sloViolationMinutes]);
 * ```
 */
export function caDmsCurve(trace: PreparedTrace, model: SimulationModel): PolicyResult[] {
  const base = simulationConfig('ca-dms', model);
  const policy = getPolicy('ca-dms');
  const contestants = CA_DMS_RATES.map((rate) =>
    contestant(`ca-dms:ca_dms.target_violation_rate=${rate}`, policy, { ...base, ca_dms: { ...base.ca_dms, target_violation_rate: rate } }),
  );
  return [...simulate(trace, contestants, model).result.results];
}

/** `hpa` at its simulation defaults (`targets.cpu` 70): the actions the judged policy may not exceed. */
export const HPA_DEFAULT_SPEC = 'hpa:targets.cpu=70';

interface SweptContestant {
  readonly curve: string;
  readonly knob: number;
  readonly contestant: Contestant;
}

/** Every swept anchor setting as a contestant named by its spec. */
export function sweepContestants(model: SimulationModel): SweptContestant[] {
  return ANCHOR_SWEEPS.flatMap((sweep) => {
    const base = simulationConfig(sweep.anchor, model);
    const policy = getPolicy(sweep.anchor);
    return sweep.values.map((knob) => ({ curve: sweep.curve, knob, contestant: contestant(sweep.spec(knob), policy, sweep.configure(base, knob)) }));
  });
}

/** What the anchors did on one trace under one model. */
export interface AnchorFrontier {
  readonly trace: string;
  readonly model: SimulationModel;
  readonly oracle: PolicyResult;
  readonly curves: readonly AnchorCurve[];
  /** Every anchor row, named by its spec. */
  readonly anchors: readonly PolicyResult[];
  readonly hpaActions: number;
}

/**
 * Replays every swept anchor setting on `trace` in one simulation.
 *
 * @example
 * ```ts
 * const anchors = runAnchors(trace, model);
 * const ours = simulate(trace, [contestant('ca-dms', caDmsPolicy, simulationConfig('ca-dms', model))], model).result.results[0];
 * judgeFrontier(ours, anchors.oracle.sloViolationMinutes, anchors.curves).outcome;
 * ```
 */
export function runAnchors(trace: PreparedTrace, model: SimulationModel): AnchorFrontier {
  const swept = sweepContestants(model);
  const { result } = simulate(trace, swept.map((s) => s.contestant), model);
  const rows = new Map(result.results.map((r) => [r.policy, r]));
  const curves: AnchorCurve[] = ANCHOR_SWEEPS.map(({ curve }) => ({
    anchor: curve,
    points: swept
      .filter((s) => s.curve === curve)
      .map((s): FrontierPoint => {
        const r = rows.get(s.contestant.name) as PolicyResult;
        return { knob: s.knob, sloViolationMinutes: r.sloViolationMinutes, taskMinutes: r.taskMinutes };
      }),
  }));
  return { trace: trace.name, model, oracle: result.oracle, curves, anchors: result.results, hpaActions: (rows.get(HPA_DEFAULT_SPEC) as PolicyResult).actions };
}

/**
 * The issue's whole test for one policy's rows: its verdict against `anchors`, the actions
 * check against `hpa` at its defaults, and its verdict on the same trace with 5 % of the
 * metric minutes missing (`missing` against `missingAnchors`, anchors replayed with the same
 * dropped minutes).
 *
 * @example
 * ```ts
 * judgeTrace(anchors, ours, missingAnchors, oursMissing).outcome; // 'win' | 'tie' | 'lose'
 * ```
 */
export function judgeTrace(anchors: AnchorFrontier, ours: PolicyResult, missingAnchors: AnchorFrontier, missing: PolicyResult): TraceJudgement {
  return combineJudgement(
    judgeFrontier(ours, anchors.oracle.sloViolationMinutes, anchors.curves),
    ours.actions,
    anchors.hpaActions,
    judgeFrontier(missing, missingAnchors.oracle.sloViolationMinutes, missingAnchors.curves),
  );
}

/** The fraction of metric minutes dropped in the issue's missing-data rerun. */
export const MISSING_FRACTION = 0.05;

/** The model of the missing-data rerun: the same with 5 % of the metric minutes dropped. */
export function withMissing(model: SimulationModel): SimulationModel {
  return { ...model, missingFraction: MISSING_FRACTION };
}
