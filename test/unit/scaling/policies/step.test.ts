import { describe, expect, it } from 'vitest';
import { applyAdjustment, findStep, roundPercentChange, stepPolicy } from '../../../../functions/core/scaling/policies/step.js';
import { initialState } from '../../../../functions/core/scaling/types.js';
import { evaluateAt, SECOND, serviceConfig, T0, tasks, withEvents } from './harness.js';

const anchor = serviceConfig({ policy: 'step' });

function decide(cpu: number | undefined, desired = 4, state = initialState('frontend'), config = anchor) {
  return evaluateAt(stepPolicy, config, state, T0, cpu === undefined ? {} : { cpu }, tasks(desired)).decision;
}

describe('AWS rounding of PercentChangeInCapacity', () => {
  it.each([
    [12.7, 12],
    [1.5, 1],
    [0.4, 1],
    [-0.4, -1],
    [-6.67, -6],
    [3, 3],
    [0, 0],
  ])('rounds %d to %d', (change, rounded) => {
    expect(roundPercentChange(change)).toBe(rounded);
  });

  it('raises a small percentage change to MinAdjustmentMagnitude (AWS example: 25 % of 4 tasks with 2 -> +2)', () => {
    expect(applyAdjustment(4, 25, 'PercentChangeInCapacity', 2)).toBe(6);
  });

  it('ignores MinAdjustmentMagnitude for ChangeInCapacity', () => {
    expect(applyAdjustment(4, 1, 'ChangeInCapacity', 3)).toBe(5);
  });

  it('sets the count outright with ExactCapacity', () => {
    expect(applyAdjustment(4, 9, 'ExactCapacity', null)).toBe(9);
  });
});

describe('AWS step intervals', () => {
  const inSteps = [
    { lower: -10, upper: 0, adjustment: -1 },
    { lower: null, upper: -10, adjustment: -2 },
  ];
  it('includes the upper bound and excludes the lower bound below the threshold', () => {
    expect(findStep(inSteps, -10, false)?.adjustment).toBe(-2);
    expect(findStep(inSteps, 0, false)?.adjustment).toBe(-1);
  });

  it('includes the lower bound and excludes the upper bound above the threshold', () => {
    expect(findStep(anchor.step.scale_out_steps, 15, true)?.adjustment).toBe(2);
    expect(findStep(anchor.step.scale_out_steps, 14.99, true)?.adjustment).toBe(1);
  });
});

describe('step policy with the benchmark anchor (+1 at 70, +2 at 85, +3 at 95, -1 below 40)', () => {
  it.each([
    [69.9, 4],
    [70, 5],
    [84.9, 5],
    [85, 6],
    [94.9, 6],
    [95, 7],
    [40, 4],
    [39.9, 3],
  ])('at CPU %d sets 4 tasks to %d', (cpu, to) => {
    expect(decide(cpu).to).toBe(to);
  });

  it('explains the step it took', () => {
    expect(decide(90).reasons).toEqual([
      expect.objectContaining({ metric: 'cpu', value: 90, threshold: 70, rule: 'scale_out_step' }),
    ]);
  });

  it('during a scale-out cooldown a larger step adds only the difference (AWS: +2 then +3 adds 1)', () => {
    const state = withEvents([{ at: T0 - 60 * SECOND, from: 4, to: 6 }]);
    expect(decide(96, 6, state).to).toBe(7);
  });

  it('during a scale-out cooldown a step no larger than the one taken waits, saying until when', () => {
    const state = withEvents([{ at: T0 - 60 * SECOND, from: 4, to: 6 }]);
    const d = decide(88, 6, state);
    expect(d.to).toBe(6);
    expect(d.blocked).toEqual([expect.objectContaining({ kind: 'cooldown', until: T0 + 240 * SECOND })]);
  });

  it('after the 300 s cooldown steps from the current count again', () => {
    const state = withEvents([{ at: T0 - 300 * SECOND, from: 4, to: 6 }]);
    expect(decide(88, 6, state).to).toBe(8);
  });

  it('waits out the scale-in cooldown, up to the last second', () => {
    const state = withEvents([{ at: T0 - 299 * SECOND, from: 5, to: 4 }]);
    expect(decide(20, 4, state).blocked).toEqual([expect.objectContaining({ kind: 'cooldown', until: T0 + SECOND })]);
    expect(decide(20, 4, withEvents([{ at: T0 - 300 * SECOND, from: 5, to: 4 }])).to).toBe(3);
  });

  it('scales out immediately during a scale-in cooldown', () => {
    const state = withEvents([{ at: T0 - 60 * SECOND, from: 5, to: 4 }]);
    expect(decide(75, 4, state).to).toBe(5);
  });

  it('applies PercentChangeInCapacity with AWS rounding', () => {
    const config = serviceConfig({
      policy: 'step',
      max_instances: 20,
      step: {
        adjustment_type: 'PercentChangeInCapacity',
        scale_out_steps: [{ lower: 0, adjustment: 25 }],
        scale_in_steps: [{ upper: 0, adjustment: -10 }],
      },
    });
    expect(decide(80, 10, initialState('frontend'), config).to).toBe(12);
    expect(decide(20, 5, initialState('frontend'), config).to).toBe(4);
  });

  it('does nothing when the metric is missing (the alarm has insufficient data)', () => {
    const d = decide(undefined);
    expect(d.to).toBe(4);
    expect(d.reasons[0]?.rule).toBe('insufficient_data');
  });
});
