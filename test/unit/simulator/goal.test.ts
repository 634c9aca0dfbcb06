import { describe, expect, it } from 'vitest';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';
import { checkGoal, GoalError } from '../../../functions/core/scaling/simulator/goal.js';
import type { PolicyResult, SimulationResult } from '../../../functions/core/scaling/simulator/simulate.js';

function row(policy: string, sloViolationMinutes: number, taskMinutes: number, actions: number): PolicyResult {
  return { policy, sloViolationMinutes, taskMinutes, actions, reversals: 0, accuracyU: 0, accuracyO: 0, timeshareU: 0, timeshareO: 0, maxTasks: 10 };
}

function result(caDms: PolicyResult): SimulationResult {
  return {
    trace: 't',
    ticks: 100,
    model: DEFAULT_MODEL,
    results: [caDms, row('threshold', 60, 1000, 30), row('target-tracking', 50, 1100, 20), row('step', 80, 900, 10), row('hpa', 70, 950, 40)],
    oracle: row('oracle', 10, 900, 50),
  };
}

describe('checkGoal', () => {
  it('compares with the anchor that has the fewest violation minutes', () => {
    expect(checkGoal(result(row('ca-dms', 30, 1000, 40))).bestAnchor).toBe('target-tracking');
  });

  it('passes at exactly half the avoidable violations, 110% of the task-minutes, hpa\'s actions and 1.3x the oracle', () => {
    // target-tracking: 40 avoidable -> at most 20, i.e. 30 minutes; 1210 task-minutes; oracle 1.3x = 1170
    const verdict = checkGoal(result(row('ca-dms', 30, 1170, 40)));
    expect(verdict.checks.map((c) => c.pass)).toEqual([true, true, true, true]);
    expect(verdict.pass).toBe(true);
  });

  it('fails each check one unit beyond its limit', () => {
    const verdict = checkGoal(result(row('ca-dms', 31, 1171, 41)));
    expect(verdict.checks.map((c) => c.pass)).toEqual([false, true, false, false]);
    expect(verdict.pass).toBe(false);
  });

  it('refuses a run without every anchor', () => {
    const r = result(row('ca-dms', 1, 1, 1));
    expect(() => checkGoal({ ...r, results: r.results.filter((x) => x.policy !== 'hpa') })).toThrow(GoalError);
  });
});
