/**
 * Properties every anchor policy keeps whatever the metrics do: the desired count stays within
 * the bounds, missing data never scales in, and `threshold` never moves by more than its step.
 * Each run drives a policy through a random sequence of minutes the way the controller does
 * (evaluate, apply, recordApplied), so the state a policy carries is exercised too.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseScalingConfig, resolveServiceConfig, type ServiceScalingConfig } from '../../../functions/core/scaling/config.js';
import { POLICIES } from '../../../functions/core/scaling/policies/index.js';
import { initialState, recordApplied, type Decision, type MetricsSnapshot } from '../../../functions/core/scaling/types.js';

const ANCHORS = ['threshold', 'target-tracking', 'step', 'hpa'] as const;
const MINUTE = 60_000;
const T0 = Date.UTC(2026, 10, 2);

const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined, freq: 4 });

/** A minute's metrics where any metric may be missing. */
const metricsArb = fc.record({
  cpu: maybe(fc.double({ min: 0, max: 100, noNaN: true })),
  memory: maybe(fc.double({ min: 0, max: 100, noNaN: true })),
  responseTimeMs: maybe(fc.double({ min: 0, max: 5000, noNaN: true })),
  connectionsPerTask: maybe(fc.double({ min: 0, max: 300, noNaN: true })),
  errorRate: maybe(fc.double({ min: 0, max: 100, noNaN: true })),
  queueDepthPerTask: maybe(fc.double({ min: 0, max: 300, noNaN: true })),
});

/** A valid configuration document with random bounds, step and cooldowns. */
const configArb = fc
  .record({
    min: fc.integer({ min: 0, max: 5 }),
    span: fc.integer({ min: 0, max: 10 }),
    step: fc.integer({ min: 1, max: 3 }),
    cooldown: fc.integer({ min: 0, max: 600 }),
    inCooldown: fc.integer({ min: 0, max: 900 }),
  })
  .map(({ min, span, step, cooldown, inCooldown }) => ({
    min_instances: min,
    max_instances: Math.max(1, min + span),
    scale_step: step,
    scale_cooldown: cooldown,
    scale_in_cooldown: inCooldown,
  }));

const scenarioArb = fc.record({
  document: configArb,
  start: fc.double({ min: 0, max: 1, noNaN: true }),
  minutes: fc.array(fc.record({ metrics: metricsArb, deploying: fc.integer({ min: 0, max: 7 }).map((n) => n === 0) }), { minLength: 1, maxLength: 40 }),
});

interface Scenario {
  readonly document: Record<string, number>;
  readonly start: number;
  readonly minutes: ReadonlyArray<{ readonly metrics: Omit<MetricsSnapshot, 'at'>; readonly deploying: boolean }>;
}

/** Drives one policy through a scenario; tasks start one minute after they are ordered. */
function drive(name: (typeof ANCHORS)[number], scenario: Scenario, check: (d: Decision, m: MetricsSnapshot, c: ServiceScalingConfig, deploying: boolean) => void): void {
  const config = resolveServiceConfig(parseScalingConfig({ ...scenario.document, policy: name }), 'frontend');
  const policy = POLICIES[name];
  let state = initialState('frontend');
  let desired = config.min_instances + Math.round(scenario.start * (config.max_instances - config.min_instances));
  let running = desired;
  scenario.minutes.forEach(({ metrics: values, deploying }, i) => {
    const now = T0 + i * MINUTE;
    const metrics: MetricsSnapshot = { at: now, ...values };
    const out = policy.evaluate({ config, state, metrics, tasks: { running, pending: desired - running, desired, deploymentInProgress: deploying }, now });
    check(out.decision, metrics, config, deploying);
    state = out.state;
    if (out.decision.to !== desired) state = recordApplied(state, { at: now, from: desired, to: out.decision.to });
    running = Math.min(desired, out.decision.to);
    desired = out.decision.to;
  });
}

describe.each(ANCHORS)('%s policy properties', (name) => {
  it('keeps the desired count within min_instances..max_instances', () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        drive(name, scenario, (d, _m, c) => {
          expect(d.to).toBeGreaterThanOrEqual(c.min_instances);
          expect(d.to).toBeLessThanOrEqual(c.max_instances);
        });
      }),
      { numRuns: 100 },
    );
  });

  it('never scales in when CPU, which every anchor needs, is missing, nor during a deployment', () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        drive(name, scenario, (d, m, _c, deploying) => {
          if (m.cpu === undefined || deploying) expect(d.direction).not.toBe('in');
        });
      }),
      { numRuns: 100 },
    );
  });

  it('never scales in on a snapshot with no metrics at all', () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const blind = { ...scenario, minutes: scenario.minutes.map((m) => ({ ...m, metrics: {} })) };
        drive(name, blind, (d) => expect(d.direction).not.toBe('in'));
      }),
      { numRuns: 50 },
    );
  });
});

describe('threshold policy properties', () => {
  it('never moves by more than its step', () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        drive('threshold', scenario, (d, _m, c) => expect(Math.abs(d.to - d.from)).toBeLessThanOrEqual(c.scale_step));
      }),
      { numRuns: 150 },
    );
  });
});
