/**
 * The frontier test of issue #13: does a policy, at its defaults, do better than every anchor
 * policy set the way a user would set it? Each anchor swept over its main setting draws a
 * curve of (task-minutes, violation minutes); the lower envelope of the curves is the best any
 * anchor does for a given amount of money, and the policy's single point is judged against it.
 *
 * Pure maths on points: the runs that produce them are in `sweep.ts`.
 */
import type { FrontierPoint } from './frontier.js';

/** One anchor's swept points (piecewise linear between adjacent knob values). */
export interface AnchorCurve {
  /** The sweep's name: the anchor policy's (`hpa`), or with the metric it follows (`hpa connections`). */
  readonly anchor: string;
  readonly points: readonly FrontierPoint[];
}

/** A policy's point: what it spent and how many minutes violated the SLO. */
export interface CostPoint {
  readonly sloViolationMinutes: number;
  readonly taskMinutes: number;
}

/** Fewer than this many avoidable violation minutes on the envelope leave only the cost clause. */
export const NEAR_ORACLE_MINUTES = 5;
/** The violation clause: at most this share of the envelope's avoidable violation minutes. */
export const VIOLATION_WIN_RATIO = 0.7;
/** The cost clause: at most this share of the envelope's task-minutes for the same violations. */
export const COST_WIN_RATIO = 0.9;

const EPSILON = 1e-9;

export type Outcome = 'win' | 'tie' | 'lose';

function byKnob(points: readonly FrontierPoint[]): FrontierPoint[] {
  return [...points].sort((a, b) => a.knob - b.knob);
}

/**
 * One curve's violation minutes at `cost` task-minutes: the lowest of every swept setting that
 * costs at most `cost` and of every segment between adjacent settings (in knob order) that
 * spans `cost`, interpolated linearly. `Infinity` when no setting is that cheap.
 *
 * @example
 * ```ts
 * curveAt([{ knob: 1, sloViolationMinutes: 200, taskMinutes: 100 }, { knob: 2, sloViolationMinutes: 100, taskMinutes: 200 }], 150); // 150
 * ```
 */
export function curveAt(points: readonly FrontierPoint[], cost: number): number {
  const sorted = byKnob(points);
  let best = Infinity;
  for (const p of sorted) if (p.taskMinutes <= cost && p.sloViolationMinutes < best) best = p.sloViolationMinutes;
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1] as FrontierPoint;
    const b = sorted[i] as FrontierPoint;
    if (a.taskMinutes === b.taskMinutes) continue;
    const lo = Math.min(a.taskMinutes, b.taskMinutes);
    const hi = Math.max(a.taskMinutes, b.taskMinutes);
    if (cost < lo || cost > hi) continue;
    const v = a.sloViolationMinutes + ((b.sloViolationMinutes - a.sloViolationMinutes) * (cost - a.taskMinutes)) / (b.taskMinutes - a.taskMinutes);
    if (v < best) best = v;
  }
  return best;
}

/**
 * The fewest task-minutes at which one curve reaches `violations` violation minutes or fewer
 * (the inverse of {@link curveAt}); `Infinity` when no setting or segment gets that low.
 */
export function curveCost(points: readonly FrontierPoint[], violations: number): number {
  const sorted = byKnob(points);
  let best = Infinity;
  for (const p of sorted) if (p.sloViolationMinutes <= violations && p.taskMinutes < best) best = p.taskMinutes;
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1] as FrontierPoint;
    const b = sorted[i] as FrontierPoint;
    const [cheap, dear] = a.taskMinutes <= b.taskMinutes ? [a, b] : [b, a];
    // Only a segment that starts above the line and ends below it crosses it; a cheap end
    // already below the line counted as a point.
    if (cheap.sloViolationMinutes <= violations || dear.sloViolationMinutes > violations) continue;
    const at = cheap.taskMinutes + ((dear.taskMinutes - cheap.taskMinutes) * (cheap.sloViolationMinutes - violations)) / (cheap.sloViolationMinutes - dear.sloViolationMinutes);
    if (at < best) best = at;
  }
  return best;
}

/**
 * E(c): the lowest of the anchors' curves at `cost` task-minutes.
 *
 * @example
 * ```ts
 * envelopeAt(curves, ours.taskMinutes); // the best any anchor does for that money
 * ```
 */
export function envelopeAt(curves: readonly AnchorCurve[], cost: number): number {
  let best = Infinity;
  for (const c of curves) best = Math.min(best, curveAt(c.points, cost));
  return best;
}

/** C(v): the fewest task-minutes at which the envelope reaches `violations` or fewer. */
export function envelopeCost(curves: readonly AnchorCurve[], violations: number): number {
  let best = Infinity;
  for (const c of curves) best = Math.min(best, curveCost(c.points, violations));
  return best;
}

/** How a point stands against the envelope. */
export interface FrontierVerdict {
  readonly outcome: Outcome;
  /** (v0 - F) / (E(c0) - F); `undefined` when the envelope is at or below the oracle there. */
  readonly violationRatio: number | undefined;
  /** c0 / C(v0); 0 when no anchor setting gets down to v0 at any cost. */
  readonly costRatio: number;
  /** E(c0) (`Infinity` when every anchor setting costs more than c0). */
  readonly envelope: number;
  /** C(v0) (`Infinity` when the envelope never gets down to v0). */
  readonly envelopeCost: number;
  /** Which clause won, if any. */
  readonly clause: 'violations' | 'cost' | undefined;
}

/**
 * The verdict of issue #13 for `point` against the anchors' `curves`, with `oracleViolations`
 * the oracle's violation minutes F. Wins when `v0 - F <= 0.7 (E(c0) - F)` (not when the
 * envelope is within 5 violation minutes of F) or `c0 <= 0.9 C(v0)`; ties when on or below
 * the envelope; loses otherwise.
 *
 * @example
 * ```ts
 * judgeFrontier({ sloViolationMinutes: 50, taskMinutes: 1000 }, 10, curves).outcome; // 'win' | 'tie' | 'lose'
 * ```
 */
export function judgeFrontier(point: CostPoint, oracleViolations: number, curves: readonly AnchorCurve[]): FrontierVerdict {
  const v0 = point.sloViolationMinutes;
  const c0 = point.taskMinutes;
  const F = oracleViolations;
  const envelope = envelopeAt(curves, c0);
  const cost = envelopeCost(curves, v0);
  const avoidable = envelope - F;
  const violationRatio = avoidable > 0 && Number.isFinite(avoidable) ? (v0 - F) / avoidable : undefined;
  const costRatio = Number.isFinite(cost) ? (cost > 0 ? c0 / cost : Infinity) : 0;
  // The tolerance keeps a point exactly on a limit (0.7 x 90 is 62.99999999999999 in floating point) inside it.
  const byViolations = avoidable > NEAR_ORACLE_MINUTES && v0 - F <= VIOLATION_WIN_RATIO * avoidable + EPSILON;
  const byCost = c0 <= COST_WIN_RATIO * cost + EPSILON;
  const clause = byViolations ? 'violations' : byCost ? 'cost' : undefined;
  const outcome: Outcome = clause !== undefined ? 'win' : v0 <= envelope ? 'tie' : 'lose';
  return { outcome, violationRatio, costRatio, envelope, envelopeCost: cost, clause };
}

/** The whole test on one trace: the verdict, the actions check and the verdict with missing metrics. */
export interface TraceJudgement {
  readonly verdict: FrontierVerdict;
  readonly actions: number;
  /** `hpa`'s actions at its defaults: the most the policy may take. */
  readonly hpaActions: number;
  readonly missing: FrontierVerdict;
  /** `lose` when any part fails, else the main verdict's outcome. */
  readonly outcome: Outcome;
}

/**
 * Combines the parts of the test: the policy loses the trace if it loses either verdict or
 * takes more actions than `hpa` at its defaults; otherwise the main verdict stands.
 *
 * @example
 * ```ts
 * combineJudgement(verdict, ours.actions, hpa.actions, missingVerdict).outcome;
 * ```
 */
export function combineJudgement(verdict: FrontierVerdict, actions: number, hpaActions: number, missing: FrontierVerdict): TraceJudgement {
  const failed = verdict.outcome === 'lose' || missing.outcome === 'lose' || actions > hpaActions;
  return { verdict, actions, hpaActions, missing, outcome: failed ? 'lose' : verdict.outcome };
}
