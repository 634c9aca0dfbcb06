import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  finishDecision,
  fmt,
  scaleInCooldownUntil,
  scaleOutCooldown,
  type ServicePolicyInput,
} from '../../../../functions/core/scaling/policies/common.js';
import { initialState, type TaskCounts } from '../../../../functions/core/scaling/types.js';
import { MINUTE, SECOND, serviceConfig, T0, tasks, withEvents } from './harness.js';

function inputFor(document: Record<string, unknown>, counts: TaskCounts): ServicePolicyInput {
  return { config: serviceConfig(document), state: initialState('frontend'), metrics: { at: T0 }, tasks: counts, now: T0 };
}

function finish(document: Record<string, unknown>, counts: TaskCounts, proposed: number, missing: ('cpu' | 'memory')[] = []) {
  return finishDecision({ policy: 'test', input: inputFor(document, counts), proposed, reasons: [], missing });
}

describe('finishDecision', () => {
  it('starts from the desired count and sets the direction', () => {
    const d = finish({}, tasks(4, 3), 6);
    expect([d.from, d.to, d.direction, d.at, d.service]).toEqual([4, 6, 'out', T0, 'frontend']);
  });

  it('refuses a scale-in when a metric the rule needs is missing', () => {
    const d = finish({}, tasks(5), 3, ['memory']);
    expect(d.to).toBe(5);
    expect(d.direction).toBe('none');
    expect(d.blocked).toEqual([expect.objectContaining({ kind: 'missing_data', message: expect.stringContaining('memory') })]);
  });

  it('allows a scale-out on partial data', () => {
    expect(finish({}, tasks(5), 6, ['memory']).to).toBe(6);
  });

  it('refuses a scale-in while a deployment is in progress', () => {
    const d = finish({}, tasks(5, 5, { deploymentInProgress: true }), 4);
    expect(d.to).toBe(5);
    expect(d.blocked.map((b) => b.kind)).toEqual(['deployment']);
  });

  it('clamps to max_instances and names the bound', () => {
    const d = finish({}, tasks(9), 14);
    expect(d.to).toBe(10);
    expect(d.blocked).toEqual([expect.objectContaining({ kind: 'bounds', message: expect.stringContaining('max_instances (10)') })]);
  });

  it('clamps to min_instances and names the bound', () => {
    const d = finish({ min_instances: 3 }, tasks(4), 1);
    expect(d.to).toBe(3);
    expect(d.blocked).toEqual([expect.objectContaining({ kind: 'bounds', message: expect.stringContaining('min_instances (3)') })]);
  });

  it('keeps the count of a disabled service and says so', () => {
    const d = finish({ enabled: false }, tasks(4), 6);
    expect(d.to).toBe(4);
    expect(d.blocked.map((b) => b.kind)).toEqual(['disabled']);
  });

  it('keeps the computed count in a dry run and marks it not to be applied', () => {
    const d = finish({ dry_run: true }, tasks(4), 6);
    expect(d.to).toBe(6);
    expect(d.blocked.map((b) => b.kind)).toEqual(['dry_run']);
  });
});

describe('AWS cooldown bookkeeping', () => {
  it('measures a scale-out cooldown from the last scale-out and keeps the capacity before its chain', () => {
    const state = withEvents([
      { at: T0 - 200 * SECOND, from: 3, to: 5 },
      { at: T0 - 100 * SECOND, from: 5, to: 6 },
    ]);
    expect(scaleOutCooldown(state, T0, 300 * SECOND)).toEqual({ base: 3, until: T0 + 200 * SECOND });
  });

  it('ends a scale-out cooldown exactly when its period has passed', () => {
    const state = withEvents([{ at: T0 - 300 * SECOND, from: 3, to: 5 }]);
    expect(scaleOutCooldown(state, T0, 300 * SECOND)).toBeUndefined();
  });

  it('lets a scale-out end a scale-in cooldown', () => {
    const inOnly = withEvents([{ at: T0 - MINUTE, from: 6, to: 5 }]);
    const thenOut = withEvents([...inOnly.events, { at: T0 - 30 * SECOND, from: 5, to: 6 }]);
    expect(scaleInCooldownUntil(inOnly, T0, 300 * SECOND)).toBe(T0 + 4 * MINUTE);
    expect(scaleInCooldownUntil(thenOut, T0, 300 * SECOND)).toBeUndefined();
  });
});

describe('fmt', () => {
  /** What fmt printed before it composed the string from whole hundredths: the reference it must match. */
  const reference = (v: number): string => (Number.isInteger(v) ? String(v) : String(Math.round(v * 100) / 100));

  it('prints at most two decimals, trailing zeros and a lone minus of zero dropped', () => {
    expect([85.71428, 85.70001, 0.05, -0.5, -0.004, 99.995].map(fmt)).toEqual(['85.71', '85.7', '0.05', '-0.5', '0', '100']);
  });

  it('property: the same string as String(Math.round(v * 100) / 100) for any number', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.double(), fc.double({ min: -1e4, max: 1e4 }), fc.integer({ min: -1e7, max: 1e7 }).map((h) => h / 100 + 0.005), fc.constantFrom(1e15 + 0.5, 1e21 + 0.5, -0)),
        (v) => {
          expect(fmt(v)).toBe(reference(v));
        },
      ),
      { numRuns: 5000, verbose: true },
    );
  });
});
