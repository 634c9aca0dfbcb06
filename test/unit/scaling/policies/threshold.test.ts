import { describe, expect, it } from 'vitest';
import { thresholdPolicy } from '../../../../functions/core/scaling/policies/threshold.js';
import { initialState, type MetricsSnapshot } from '../../../../functions/core/scaling/types.js';
import { evaluateAt, SECOND, serviceConfig, T0, tasks, withEvents } from './harness.js';

const quiet: Omit<MetricsSnapshot, 'at'> = { cpu: 50, memory: 60, connectionsPerTask: 50, responseTimeMs: 200 };
const idle: Omit<MetricsSnapshot, 'at'> = { cpu: 20, memory: 35, connectionsPerTask: 10, responseTimeMs: 100 };
const defaults = serviceConfig();

function decide(metrics: Omit<MetricsSnapshot, 'at'>, desired = 4, state = initialState('frontend'), config = defaults) {
  return evaluateAt(thresholdPolicy, config, state, T0, metrics, tasks(desired)).decision;
}

describe('threshold policy (the CA-DMS guide)', () => {
  it('scales out by one step when CPU exceeds cpu_scale_up', () => {
    const d = decide({ ...quiet, cpu: 81 });
    expect(d.to).toBe(5);
    expect(d.reasons).toEqual([
      expect.objectContaining({ metric: 'cpu', value: 81, threshold: 80, rule: 'cpu_scale_up_exceeded' }),
    ]);
  });

  it('does not scale out at exactly the scale-up threshold', () => {
    expect(decide({ ...quiet, cpu: 80 }).to).toBe(4);
  });

  it('scales out when any one scale-up threshold is exceeded', () => {
    const d = decide({ ...quiet, responseTimeMs: 1200 });
    expect(d.to).toBe(5);
    expect(d.reasons[0]).toMatchObject({ metric: 'responseTimeMs', threshold: 1000 });
  });

  it('moves by the configured scale_step', () => {
    expect(decide({ ...quiet, memory: 90 }, 4, initialState('frontend'), serviceConfig({ scale_step: 3 })).to).toBe(7);
  });

  it('scales in by one step when every scale-down threshold is met', () => {
    const d = decide(idle);
    expect(d.to).toBe(3);
    expect(d.reasons.map((r) => r.rule)).toEqual(['cpu_scale_down_met', 'memory_scale_down_met', 'connections_scale_down_met']);
  });

  it('holds between the thresholds (hysteresis): low CPU alone does not scale in', () => {
    const d = decide({ ...idle, memory: 50 });
    expect(d.to).toBe(4);
    expect(d.reasons[0]?.rule).toBe('within_thresholds');
  });

  it('blocks a change until the cooldown after the last applied change has passed', () => {
    const state = withEvents([{ at: T0 - 299 * SECOND, from: 3, to: 4 }]);
    const d = decide({ ...quiet, cpu: 95 }, 4, state);
    expect(d.to).toBe(4);
    expect(d.blocked).toEqual([expect.objectContaining({ kind: 'cooldown', until: T0 + SECOND })]);
  });

  it('acts again exactly when the 300 s cooldown ends', () => {
    const state = withEvents([{ at: T0 - 300 * SECOND, from: 3, to: 4 }]);
    expect(decide({ ...quiet, cpu: 95 }, 4, state).to).toBe(5);
  });

  it('uses the separate scale-in cooldown for scale-in', () => {
    const config = serviceConfig({ scale_in_cooldown: 600 });
    const state = withEvents([{ at: T0 - 400 * SECOND, from: 5, to: 4 }]);
    expect(decide(idle, 4, state, config).blocked).toEqual([expect.objectContaining({ kind: 'cooldown', until: T0 + 200 * SECOND })]);
    expect(decide({ ...quiet, cpu: 95 }, 4, state, config).to).toBe(5);
  });

  it('never scales in when memory is missing', () => {
    const { memory: _memory, ...noMemory } = idle;
    const d = decide(noMemory);
    expect(d.to).toBe(4);
    expect(d.blocked).toEqual([expect.objectContaining({ kind: 'missing_data' })]);
  });

  it('treats a metric the service reported before and no longer reports as missing', () => {
    const first = evaluateAt(thresholdPolicy, defaults, initialState('frontend'), T0, quiet, tasks(4));
    const { connectionsPerTask: _c, ...noConnections } = idle;
    const d = evaluateAt(thresholdPolicy, defaults, first.state, T0 + 60 * SECOND, noConnections, tasks(4)).decision;
    expect(d.to).toBe(4);
    expect(d.blocked[0]).toMatchObject({ kind: 'missing_data', message: expect.stringContaining('connectionsPerTask') });
  });

  it('says so when the metrics a scale-in needs are all missing', () => {
    const d = decide({ responseTimeMs: 100 });
    expect(d.to).toBe(4);
    expect(d.reasons).toEqual([expect.objectContaining({ rule: 'scale_down_metrics_missing', message: expect.stringContaining('cpu, memory') })]);
  });

  it('lets a service that never reports connections (a worker) scale in on CPU and memory', () => {
    expect(decide({ cpu: 10, memory: 30 }).to).toBe(3);
  });

  it('stays at max_instances and says the bound held it', () => {
    const d = decide({ ...quiet, cpu: 99 }, 10);
    expect(d.to).toBe(10);
    expect(d.blocked.map((b) => b.kind)).toEqual(['bounds']);
  });

  it('does not scale in below min_instances', () => {
    expect(decide(idle, 2).to).toBe(2);
  });
});
