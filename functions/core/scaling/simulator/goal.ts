/**
 * The goal the `ca-dms` policy must meet on every real trace (issue #2 section 6), checked
 * against the anchor with the fewest SLO-violation minutes in the same run.
 */
import type { PolicyResult, SimulationResult } from './simulate.js';

export interface GoalCheck {
  /** What is compared, in words. */
  readonly label: string;
  readonly actual: number;
  readonly limit: number;
  readonly pass: boolean;
}

export interface GoalVerdict {
  readonly trace: string;
  readonly policy: string;
  /** The anchor with the fewest SLO-violation minutes (ties: fewer task-minutes). */
  readonly bestAnchor: string;
  readonly checks: readonly GoalCheck[];
  readonly pass: boolean;
}

/** The anchors of the benchmark. */
export const ANCHORS = ['threshold', 'target-tracking', 'step', 'hpa'] as const;

/** Thrown when a result lacks what the goal compares with. */
export class GoalError extends Error {
  override readonly name = 'GoalError';
}

/**
 * Checks the goal for `policy` in one run: at most half of the best anchor's avoidable
 * violation minutes (beyond the oracle's), at most 110 % of its task-minutes, no more actions
 * than `hpa`, task-minutes within 1.3x of the oracle.
 *
 * @example
 * ```ts
 * const verdict = checkGoal(run.result); // verdict.pass, verdict.checks[i].label
 * ```
 */
export function checkGoal(result: SimulationResult, policy = 'ca-dms'): GoalVerdict {
  const byName = new Map(result.results.map((r) => [r.policy, r]));
  const subject = byName.get(policy);
  const anchors = ANCHORS.map((a) => byName.get(a)).filter((r): r is PolicyResult => r !== undefined);
  const hpa = byName.get('hpa');
  if (!subject || !hpa || anchors.length !== ANCHORS.length) {
    throw new GoalError(`the goal needs ${policy} and every anchor (${ANCHORS.join(', ')}) in the run`);
  }
  const best = anchors.reduce((a, b) =>
    b.sloViolationMinutes < a.sloViolationMinutes || (b.sloViolationMinutes === a.sloViolationMinutes && b.taskMinutes < a.taskMinutes) ? b : a,
  );
  const oracle = result.oracle;
  const avoidable = (r: PolicyResult): number => Math.max(0, r.sloViolationMinutes - oracle.sloViolationMinutes);
  const checks: GoalCheck[] = [
    check(`avoidable violation minutes <= 50% of ${best.policy}'s`, avoidable(subject), 0.5 * avoidable(best)),
    check(`task-minutes <= 110% of ${best.policy}'s`, subject.taskMinutes, 1.1 * best.taskMinutes),
    check('scaling actions <= hpa\'s', subject.actions, hpa.actions),
    check('task-minutes <= 1.3x the oracle\'s', subject.taskMinutes, 1.3 * oracle.taskMinutes),
  ];
  return { trace: result.trace, policy, bestAnchor: best.policy, checks, pass: checks.every((c) => c.pass) };
}

function check(label: string, actual: number, limit: number): GoalCheck {
  return { label, actual, limit, pass: actual <= limit };
}
