import { describe, expect, it } from 'vitest';
import { hpaNormalize, hpaPolicy, hpaReplicas, type HpaNormalizeInput } from '../../../../functions/core/scaling/policies/hpa.js';
import { initialState, type ServiceState } from '../../../../functions/core/scaling/types.js';
import { evaluateAt, SECOND, serviceConfig, T0, tasks } from './harness.js';

describe('hpaReplicas (the Kubernetes replica calculator)', () => {
  it('3 replicas at 50 % utilisation against a 30 % target -> 5', () => {
    expect(hpaReplicas({ currentReplicas: 3, metrics: [{ kind: 'utilization', currentPercent: 50, targetPercent: 30 }] })).toBe(5);
  });

  it('an object value of 20000 against 15000 with 3 ready replicas -> 4', () => {
    expect(hpaReplicas({ currentReplicas: 3, metrics: [{ kind: 'value', current: 20000, target: 15000, readyReplicas: 3 }] })).toBe(4);
  });

  it('an external total of 8600 against a target average of 2150 -> 4', () => {
    expect(hpaReplicas({ currentReplicas: 3, metrics: [{ kind: 'totalAverageValue', total: 8600, targetAverage: 2150 }] })).toBe(4);
  });

  it('scales down to ceil(ratio x replicas): 5 replicas at 28 % against 50 % -> 3', () => {
    expect(hpaReplicas({ currentReplicas: 5, metrics: [{ kind: 'utilization', currentPercent: 28, targetPercent: 50 }] })).toBe(3);
  });

  it('keeps the count inside the default 10 % tolerance (102 % against 100 %)', () => {
    expect(hpaReplicas({ currentReplicas: 3, metrics: [{ kind: 'utilization', currentPercent: 102, targetPercent: 100 }] })).toBe(3);
  });

  it('moves outside a tighter tolerance', () => {
    expect(hpaReplicas({ currentReplicas: 3, tolerance: 0.01, metrics: [{ kind: 'utilization', currentPercent: 102, targetPercent: 100 }] })).toBe(4);
  });

  it('scales a per-pod average value by the current replicas', () => {
    expect(hpaReplicas({ currentReplicas: 3, metrics: [{ kind: 'averageValue', current: 20000, target: 15000 }] })).toBe(4);
  });

  it('scales an object value by the ready replicas, not the current ones', () => {
    expect(hpaReplicas({ currentReplicas: 5, metrics: [{ kind: 'value', current: 300, target: 100, readyReplicas: 2 }] })).toBe(6);
  });

  it('takes the largest proposal over several metrics', () => {
    const metrics = [
      { kind: 'utilization', currentPercent: 20, targetPercent: 50 },
      { kind: 'averageValue', current: 200, target: 100 },
    ] as const;
    expect(hpaReplicas({ currentReplicas: 4, metrics })).toBe(8);
  });

  it('keeps the current count without metrics', () => {
    expect(hpaReplicas({ currentReplicas: 4, metrics: [] })).toBe(4);
  });
});

describe('hpaNormalize (Kubernetes stabilisation, behavior rate limits, bounds)', () => {
  const base = { minReplicas: 1, maxReplicas: 1000, behavior: {} } as const;
  const norm = (input: Partial<HpaNormalizeInput> & Pick<HpaNormalizeInput, 'currentReplicas' | 'prenormalizedDesired'>) =>
    hpaNormalize({ ...base, ...input });

  it('10 -> 50 with the default behavior is limited to 20 (max of +4 pods and +100 % per 15 s)', () => {
    expect(norm({ currentReplicas: 10, prenormalizedDesired: 50 })).toEqual({ replicas: 20, reason: 'ScaleUpLimit' });
  });

  it('100 -> 3 with a 180 s scale-down window and recommendations 4 and 5 in it -> 5', () => {
    const result = norm({
      currentReplicas: 100,
      prenormalizedDesired: 3,
      behavior: { scaleDown: { stabilizationWindowSeconds: 180 } },
      pastRecommendations: [
        { replicas: 4, secondsAgo: 120 },
        { replicas: 5, secondsAgo: 60 },
      ],
    });
    expect(result.replicas).toBe(5);
  });

  it('ignores a recommendation exactly one window old', () => {
    const result = norm({
      currentReplicas: 10,
      prenormalizedDesired: 3,
      behavior: { scaleDown: { stabilizationWindowSeconds: 180 } },
      pastRecommendations: [{ replicas: 8, secondsAgo: 180 }],
    });
    expect(result.replicas).toBe(3);
  });

  it('stabilises a scale-up to the lowest recommendation of its window', () => {
    const result = norm({
      currentReplicas: 5,
      prenormalizedDesired: 10,
      behavior: { scaleUp: { stabilizationWindowSeconds: 300 }, scaleDown: { stabilizationWindowSeconds: 600 } },
      pastRecommendations: [
        { replicas: 8, secondsAgo: 120 },
        { replicas: 7, secondsAgo: 240 },
      ],
    });
    expect(result).toEqual({ replicas: 7, reason: 'DesiredWithinRange' });
  });

  it('counts replicas already added in the period against a Pods policy', () => {
    const result = norm({
      currentReplicas: 5,
      prenormalizedDesired: 10,
      behavior: { scaleUp: { policies: [{ type: 'Pods', value: 2, periodSeconds: 60 }] } },
      scaleUpEvents: [{ replicaChange: 2, secondsAgo: 20 }],
    });
    expect(result).toEqual({ replicas: 5, reason: 'ScaleUpLimit' });
  });

  it('lets replicas removed in the period raise the scale-up allowance', () => {
    const result = norm({
      currentReplicas: 5,
      prenormalizedDesired: 12,
      behavior: { scaleUp: { policies: [{ type: 'Pods', value: 1, periodSeconds: 15 }] } },
      scaleDownEvents: [{ replicaChange: 3, secondsAgo: 10 }],
    });
    expect(result.replicas).toBe(9);
  });

  it('with selectPolicy Min takes the smaller allowance', () => {
    const result = norm({ currentReplicas: 10, prenormalizedDesired: 50, behavior: { scaleUp: { selectPolicy: 'Min' } } });
    expect(result).toEqual({ replicas: 14, reason: 'ScaleUpLimit' });
  });

  it('with selectPolicy Disabled does not scale up at all', () => {
    const result = norm({ currentReplicas: 10, prenormalizedDesired: 50, behavior: { scaleUp: { selectPolicy: 'Disabled' } } });
    expect(result).toEqual({ replicas: 10, reason: 'ScaleUpLimit' });
  });

  it('limits a scale-down by a Percent policy, rounding the allowance down', () => {
    const result = norm({
      currentReplicas: 8,
      prenormalizedDesired: 2,
      behavior: { scaleDown: { stabilizationWindowSeconds: 300, policies: [{ type: 'Percent', value: 50, periodSeconds: 60 }] } },
    });
    expect(result).toEqual({ replicas: 4, reason: 'ScaleDownLimit' });
  });

  it('stops at maxReplicas with TooManyReplicas', () => {
    const result = hpaNormalize({
      currentReplicas: 5,
      prenormalizedDesired: 15,
      minReplicas: 1,
      maxReplicas: 10,
      behavior: { scaleUp: { stabilizationWindowSeconds: 300, policies: [{ type: 'Percent', value: 200, periodSeconds: 60 }] } },
    });
    expect(result).toEqual({ replicas: 10, reason: 'TooManyReplicas' });
  });

  it('stops at minReplicas with TooFewReplicas', () => {
    const result = hpaNormalize({
      currentReplicas: 5,
      prenormalizedDesired: 1,
      minReplicas: 2,
      maxReplicas: 10,
      behavior: { scaleDown: { stabilizationWindowSeconds: 0 } },
    });
    expect(result).toEqual({ replicas: 2, reason: 'TooFewReplicas' });
  });

  it('brings a current count above the maximum back within bounds', () => {
    expect(hpaNormalize({ currentReplicas: 12, prenormalizedDesired: 12, minReplicas: 1, maxReplicas: 10, behavior: {} })).toEqual({
      replicas: 10,
      reason: 'TooManyReplicas',
    });
  });
});

describe('hpa policy', () => {
  const config = serviceConfig({ policy: 'hpa' });

  it('scales to ceil(replicas x utilisation / target) and records the recommendation', () => {
    const { decision, state } = evaluateAt(hpaPolicy, config, initialState('frontend'), T0, { cpu: 90 }, tasks(4));
    expect(decision.to).toBe(Math.ceil((4 * 90) / 70));
    expect(state.recommendations).toEqual([{ at: T0, replicas: 6 }]);
  });

  it('holds a scale-in for the 300 s stabilisation window and says until when', () => {
    const state: ServiceState = { ...initialState('frontend'), recommendations: [{ at: T0 - 60 * SECOND, replicas: 6 }] };
    const { decision } = evaluateAt(hpaPolicy, config, state, T0, { cpu: 30 }, tasks(6));
    expect(decision.to).toBe(6);
    expect(decision.blocked).toEqual([expect.objectContaining({ kind: 'stabilization', until: T0 + 240 * SECOND })]);
  });

  it('scales in once the higher recommendations have left the window', () => {
    const state: ServiceState = { ...initialState('frontend'), recommendations: [{ at: T0 - 300 * SECOND, replicas: 6 }] };
    expect(evaluateAt(hpaPolicy, config, state, T0, { cpu: 30 }, tasks(6)).decision.to).toBe(3);
  });

  it('counts starting tasks as idle, so capacity on its way is not ordered twice', () => {
    // 4 running at 90 % and 2 starting: (90 x 4 + 0 x 2) / 6 = 60 % < 70 %, so no change.
    expect(evaluateAt(hpaPolicy, config, initialState('frontend'), T0, { cpu: 90 }, tasks(6, 4)).decision.to).toBe(6);
  });

  it('does not scale in when the targeted metric is missing', () => {
    const { decision, state } = evaluateAt(hpaPolicy, config, initialState('frontend'), T0, { memory: 10 }, tasks(6));
    expect(decision.to).toBe(6);
    expect(state.recommendations).toEqual([]);
  });

  it('forgets recommendations older than the longest stabilisation window', () => {
    const old: ServiceState = { ...initialState('frontend'), recommendations: [{ at: T0 - 301 * SECOND, replicas: 9 }] };
    expect(evaluateAt(hpaPolicy, config, old, T0, { cpu: 70 }, tasks(4)).state.recommendations).toEqual([{ at: T0, replicas: 4 }]);
  });
});
