import { describe, expect, it } from 'vitest';
import { runFleet } from '../../../functions/core/scaling/simulator/fleet.js';
import { hindsightNoiseScale, referenceController, taskMinutesAtViolations } from '../../../functions/core/scaling/simulator/frontier.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';

const p = (knob: number, sloViolationMinutes: number, taskMinutes: number) => ({ knob, sloViolationMinutes, taskMinutes });

describe('taskMinutesAtViolations', () => {
  it('interpolates between the two sweep points that bracket the limit', () => {
    const line = [p(1, 300, 100), p(2, 200, 140), p(3, 100, 200)];
    expect(taskMinutesAtViolations(line, 150)).toBe(170);
    expect(taskMinutesAtViolations(line, 200)).toBe(140);
  });

  it('orders the points by knob, not by the order given', () => {
    expect(taskMinutesAtViolations([p(3, 100, 200), p(1, 300, 100), p(2, 200, 140)], 250)).toBe(120);
  });

  it('is undefined when the sweep never reaches the limit', () => {
    expect(taskMinutesAtViolations([p(1, 300, 100), p(2, 200, 140)], 150)).toBeUndefined();
    expect(taskMinutesAtViolations([p(1, 300, 100)], 300)).toBeUndefined();
  });

  it('takes the cheapest crossing of a line that is not monotonic', () => {
    // 150 is crossed between knobs 1-2 (at 120) and again between 3-4 (at 190)
    const line = [p(1, 200, 100), p(2, 100, 140), p(3, 200, 180), p(4, 100, 200)];
    expect(taskMinutesAtViolations(line, 150)).toBe(120);
  });

  it('takes the cheaper point of a flat stretch sitting on the limit', () => {
    expect(taskMinutesAtViolations([p(1, 7, 196_090), p(2, 7, 196_086)], 7)).toBe(196_086);
  });
});

describe('hindsightNoiseScale', () => {
  it('is zero for a constant series', () => {
    expect(hindsightNoiseScale(new Float64Array(100).fill(4))).toBe(0);
  });

  it('measures deviations from the centred mean, per square root of the level', () => {
    // 5, 3, 5, 3, ...: a 31-minute window centred on a 5 holds fifteen 5s and sixteen 3s
    // (mean 4 - 1/31, deviation 1 + 1/31), and the other way round on a 3; so the scale is
    // (1 + 1/31) / sqrt(4 -+ 1/31), which averages to (1 + 1/31) / 2 in the squares
    const d = Float64Array.from({ length: 10_000 }, (_, i) => (i % 2 === 0 ? 5 : 3));
    expect(hindsightNoiseScale(d)).toBeCloseTo((1 + 1 / 31) / 2, 3);
  });

  it('is zero for an empty series', () => {
    expect(hindsightNoiseScale(new Float64Array(0))).toBe(0);
  });
});

describe('referenceController', () => {
  const model = { ...DEFAULT_MODEL, initialTasks: 2 };
  // demand steps from 1 to 7 task-units at minute 5
  const step = Float64Array.from({ length: 10 }, (_, i) => (i < 5 ? 1 : 7));
  const rule = { levelWeight: 1, margin: 0, noiseScale: 0.5 };

  it('sees up to the previous minute without foresight, like a policy', () => {
    const t = runFleet(step, 0, model, referenceController(step, { ...rule, foresight: 0 }, model));
    // tick 5 decides on minute 4 (1 unit: 2 tasks); tick 6 sees the step: 7 / 0.9 -> 8 tasks
    expect(t.desired[5]).toBe(2);
    expect(t.desired[6]).toBe(8);
  });

  it('sees the minute being decided with one minute of foresight', () => {
    const t = runFleet(step, 0, model, referenceController(step, { ...rule, foresight: 1 }, model));
    expect(t.desired[4]).toBe(2);
    expect(t.desired[5]).toBe(8);
  });

  it('adds margin x noise scale x sqrt(level) of headroom, within the bounds', () => {
    const flat = new Float64Array(5).fill(4);
    const t = runFleet(flat, 0, model, referenceController(flat, { levelWeight: 1, margin: 2, noiseScale: 0.5, foresight: 0 }, model));
    // 4 + 2 x 0.5 x 2 = 6 busy units at 90 %: 7 tasks
    expect(t.desired[1]).toBe(7);
    const big = runFleet(flat, 0, model, referenceController(flat, { levelWeight: 1, margin: 20, noiseScale: 0.5, foresight: 0 }, model));
    expect(big.desired[1]).toBe(model.maxTasks);
  });
});

describe('referenceController options', () => {
  const model = { ...DEFAULT_MODEL, initialTasks: 2 };

  it('lets the level fall slower than it rises with a lower falling weight', () => {
    // 9 for three minutes, then 0: with weight 1 both ways the level drops to 0 at once;
    // falling at 0.5 it halves each minute (4.5 -> 5 tasks at tick 4)
    const d = Float64Array.of(9, 9, 9, 0, 0, 0);
    const fast = runFleet(d, 0, model, referenceController(d, { levelWeight: 1, margin: 0, noiseScale: 0, foresight: 0 }, model));
    const slow = runFleet(d, 0, model, referenceController(d, { levelWeight: 1, levelWeightDown: 0.5, margin: 0, noiseScale: 0, foresight: 0 }, model));
    expect(fast.desired[4]).toBe(2);
    expect(slow.desired[4]).toBe(5);
  });

  it('scales in only when the count needed with the hysteresis added is lower', () => {
    // 8.1 busy units need 9 tasks; then 7.15 needs 8 (7.15 / 0.9 = 7.94), but with 0.1 tasks
    // of hysteresis (7.15 + 0.09) / 0.9 = 8.04 still needs 9: hold; 6.2 needs 7 either way
    const d = Float64Array.of(8.1, 8.1, 7.15, 6.3);
    const rule = { levelWeight: 1, margin: 0, noiseScale: 0, foresight: 0 };
    const plain = runFleet(d, 0, model, referenceController(d, rule, model));
    const held = runFleet(d, 0, model, referenceController(d, { ...rule, hysteresis: 0.1 }, model));
    expect(Array.from(plain.desired)).toEqual([2, 9, 9, 8]);
    expect(Array.from(held.desired)).toEqual([2, 9, 9, 9]);
    const fall = Float64Array.of(8.1, 8.1, 6.2, 6.2);
    const later = runFleet(fall, 0, model, referenceController(fall, { ...rule, hysteresis: 0.1 }, model));
    expect(later.desired[3]).toBe(7);
  });
});
