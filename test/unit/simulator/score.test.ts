import { describe, expect, it } from 'vitest';
import type { Timeline } from '../../../functions/core/scaling/simulator/fleet.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';
import { scoreTimeline } from '../../../functions/core/scaling/simulator/score.js';

function timeline(demand: number[], running: number[], starting: number[], actions: Timeline['actions'] = []): Timeline {
  return {
    startAt: 0,
    tickMs: 60_000,
    demand: Float64Array.from(demand),
    running: Int32Array.from(running),
    starting: Int32Array.from(starting),
    desired: Int32Array.from(running.map((r, i) => r + (starting[i] ?? 0))),
    actions,
  };
}

describe('scoreTimeline', () => {
  // demand/running: 0.5, 0.95 (violation), 0.9 (not: the SLO is "above 0.9"), 1.5 (violation)
  const t = timeline([1, 1.9, 1.8, 3], [2, 2, 2, 2], [0, 1, 1, 0]);

  it('counts the minutes with demand/running above 0.9 as SLO violations', () => {
    expect(scoreTimeline(t, DEFAULT_MODEL).sloViolationMinutes).toBe(2);
  });

  it('counts running plus starting tasks as task-minutes', () => {
    expect(scoreTimeline(t, DEFAULT_MODEL).taskMinutes).toBe(10);
    expect(scoreTimeline(t, DEFAULT_MODEL).maxTasks).toBe(3);
  });

  it('computes the SPEC accuracy and timeshare metrics with supply 0.9 x running', () => {
    // supply 1.8 every minute: over by 0.8/1 (min 1), under by 0.1/1.9 (min 2), exact (min 3), under by 1.2/3 (min 4)
    const s = scoreTimeline(t, DEFAULT_MODEL);
    expect(s.accuracyO).toBeCloseTo((100 * 0.8) / 4, 10);
    expect(s.accuracyU).toBeCloseTo((100 * (0.1 / 1.9 + 1.2 / 3)) / 4, 10);
    expect(s.timeshareU).toBe(50);
    expect(s.timeshareO).toBe(25);
  });

  it('counts a direction change within 10 minutes as a reversal, and not one after', () => {
    const actions = [
      { tick: 1, from: 2, to: 3 },
      { tick: 5, from: 3, to: 2 }, // reversal: 4 minutes after a scale-out
      { tick: 16, from: 2, to: 3 }, // 11 minutes later: not a reversal
      { tick: 17, from: 3, to: 4 }, // same direction
    ];
    const s = scoreTimeline(timeline(new Array(20).fill(1), new Array(20).fill(2), new Array(20).fill(0), actions), DEFAULT_MODEL);
    expect(s.actions).toBe(4);
    expect(s.reversals).toBe(1);
  });

  it('counts a minute with no running task and some demand as a violation', () => {
    expect(scoreTimeline(timeline([0.1, 0], [0, 0], [0, 0]), { ...DEFAULT_MODEL, minTasks: 0 }).sloViolationMinutes).toBe(1);
  });
});
