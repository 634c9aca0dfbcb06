import { describe, expect, it } from 'vitest';
import type { ServiceScalingConfig } from '../../../../functions/core/scaling/config.js';
import { targetTrackingPolicy } from '../../../../functions/core/scaling/policies/target-tracking.js';
import { initialState, type Decision, type MetricsSnapshot, type ServiceState } from '../../../../functions/core/scaling/types.js';
import { MINUTE, SECOND, serviceConfig, T0, tasks, withEvents } from './harness.js';

const cpuOnly = serviceConfig({ policy: 'target-tracking' });

/** Feeds one datapoint a minute and returns the last decision. */
function feed(
  points: ReadonlyArray<Omit<MetricsSnapshot, 'at'>>,
  desired: number,
  config: ServiceScalingConfig = cpuOnly,
  start: ServiceState = initialState('frontend'),
): Decision {
  let state = start;
  let decision: Decision | undefined;
  points.forEach((p, i) => {
    const now = T0 + i * MINUTE;
    ({ decision, state } = targetTrackingPolicy.evaluate({ config, state, metrics: { at: now, ...p }, tasks: tasks(desired), now }));
  });
  return decision!;
}

const repeat = (p: Omit<MetricsSnapshot, 'at'>, n: number) => Array.from({ length: n }, () => p);

describe('target-tracking policy (AWS Application Auto Scaling)', () => {
  it('does not scale out on 2 datapoints above the target', () => {
    expect(feed(repeat({ cpu: 90 }, 2), 4).to).toBe(4);
  });

  it('scales out proportionally on the third consecutive datapoint above the target', () => {
    const d = feed(repeat({ cpu: 90 }, 3), 4);
    expect(d.to).toBe(Math.ceil((4 * 90) / 70));
    expect(d.reasons[0]).toMatchObject({ metric: 'cpu', value: 90, threshold: 70, rule: 'high_alarm' });
  });

  it('restarts the count after a datapoint at or below the target', () => {
    expect(feed([{ cpu: 90 }, { cpu: 70 }, { cpu: 90 }, { cpu: 90 }], 4).to).toBe(4);
  });

  it('restarts the count after a missing datapoint', () => {
    expect(feed([{ cpu: 90 }, { cpu: 90 }, {}, { cpu: 90 }, { cpu: 90 }], 4).to).toBe(4);
  });

  it('does not scale in on 14 datapoints below 90 % of the target', () => {
    expect(feed(repeat({ cpu: 30 }, 14), 6).to).toBe(6);
  });

  it('scales in proportionally on the 15th consecutive datapoint below 90 % of the target', () => {
    const d = feed(repeat({ cpu: 30 }, 15), 6);
    expect(d.to).toBe(Math.ceil((6 * 30) / 70));
    expect(d.reasons[0]).toMatchObject({ rule: 'low_alarm', threshold: 63 });
  });

  it('never scales in just below the target but above 90 % of it', () => {
    expect(feed(repeat({ cpu: 64 }, 30), 6).to).toBe(6);
  });

  describe('with several targets', () => {
    const both = serviceConfig({ policy: 'target-tracking', targets: { cpu: 70, memory: 60 } });

    it('scales out when any target says out, to the largest proposal', () => {
      expect(feed(repeat({ cpu: 80, memory: 30 }, 3), 4, both).to).toBe(5);
      expect(feed(repeat({ cpu: 80, memory: 90 }, 3), 4, both).to).toBe(6);
    });

    it('does not scale in unless every target says in', () => {
      expect(feed(repeat({ cpu: 20, memory: 58 }, 15), 6, both).to).toBe(6);
    });

    it('scales in, as little as the least idle target allows, when every target says in', () => {
      expect(feed(repeat({ cpu: 20, memory: 30 }, 15), 6, both).to).toBe(Math.ceil((6 * 30) / 60));
    });

    it('does not scale in when one target is missing, and says so', () => {
      const points = [...repeat({ cpu: 20, memory: 30 }, 14), { cpu: 20 }];
      const d = feed(points, 6, both);
      expect(d.to).toBe(6);
      expect(d.blocked).toEqual([expect.objectContaining({ kind: 'missing_data' })]);
    });
  });

  describe('AWS cooldowns', () => {
    it('counts capacity added during the scale-out cooldown toward the next scale-out', () => {
      // 4 -> 6 a minute before the last datapoint; ceil(4 x 100 / 70) = 6 is already there.
      const start = withEvents([{ at: T0 + MINUTE, from: 4, to: 6 }]);
      const d = feed(repeat({ cpu: 100 }, 3), 6, cpuOnly, start);
      expect(d.to).toBe(6);
      expect(d.blocked).toEqual([expect.objectContaining({ kind: 'cooldown', until: T0 + 6 * MINUTE })]);
    });

    it('adds only the difference when a larger scale-out is needed during the cooldown', () => {
      const start = withEvents([{ at: T0 + MINUTE, from: 4, to: 6 }]);
      expect(feed(repeat({ cpu: 140 }, 3), 6, cpuOnly, start).to).toBe(8);
    });

    it('makes a scale-in wait out the cooldown of the previous scale-in', () => {
      const start = withEvents([{ at: T0 + 10 * MINUTE, from: 7, to: 6 }]);
      const d = feed(repeat({ cpu: 30 }, 15), 6, cpuOnly, start);
      expect(d.to).toBe(6);
      expect(d.blocked).toEqual([expect.objectContaining({ kind: 'cooldown', until: T0 + 10 * MINUTE + 300 * SECOND })]);
    });

    it('scales out immediately during a scale-in cooldown', () => {
      const start = withEvents([{ at: T0 + MINUTE, from: 5, to: 4 }]);
      expect(feed(repeat({ cpu: 90 }, 3), 4, cpuOnly, start).to).toBe(6);
    });
  });

  it('treats two evaluations in the same minute as one datapoint', () => {
    let state = initialState('frontend');
    for (const at of [T0, T0 + 20 * SECOND, T0 + 40 * SECOND]) {
      ({ state } = targetTrackingPolicy.evaluate({ config: cpuOnly, state, metrics: { at, cpu: 90 }, tasks: tasks(4), now: at }));
    }
    expect(state.metricsHistory).toHaveLength(1);
  });
});
