/**
 * `step`: AWS Application Auto Scaling step scaling. Two alarms watch one metric: the
 * scale-out alarm fires at `metric >= scale_out_threshold`, the scale-in alarm at
 * `metric < scale_in_threshold`. The step whose interval (relative to the alarm threshold)
 * holds the breach sets the adjustment, interpreted by `adjustment_type`.
 *
 * AWS interval rules: above the threshold the lower bound is inclusive and the upper bound
 * exclusive; below it the lower bound is exclusive and the upper bound inclusive; `null` is
 * infinity. Cooldowns follow AWS: during a scale-out cooldown the capacity already added counts
 * toward the next scale-out (a larger step adds only the difference); scale-in waits out its
 * own cooldown, and a scale-out ends it.
 */
import type { ServiceScalingConfig } from '../config.js';
import type { Block, PolicyOutput, Reason, ScalingPolicy } from '../types.js';
import {
  finishDecision,
  fmt,
  metricValue,
  scaleInCooldownUntil,
  scaleOutCooldown,
  type ServicePolicyInput,
} from './common.js';

type StepSettings = ServiceScalingConfig['step'];
type StepAdjustment = StepSettings['scale_out_steps'][number];
export type AdjustmentType = StepSettings['adjustment_type'];

/**
 * Rounds a fractional percentage change the way AWS does: values above 1 round down, values
 * between 0 and 1 become 1, values between -1 and 0 become -1, values below -1 round toward
 * zero. Whole numbers are kept.
 *
 * @example
 * ```ts
 * roundPercentChange(12.7); // 12
 * roundPercentChange(0.4); // 1
 * roundPercentChange(-6.67); // -6
 * ```
 */
export function roundPercentChange(change: number): number {
  if (Number.isInteger(change)) return change;
  if (change > 1) return Math.floor(change);
  if (change > 0) return 1;
  if (change > -1) return -1;
  return Math.ceil(change);
}

/**
 * The capacity a step adjustment asks for, from `capacity`, with AWS's adjustment types.
 * `minAdjustmentMagnitude` applies to `PercentChangeInCapacity` only, as in AWS.
 *
 * @example
 * ```ts
 * applyAdjustment(4, 25, 'PercentChangeInCapacity', 2); // 6: 25 % of 4 is 1, raised to 2
 * applyAdjustment(5, 2, 'ChangeInCapacity', null); // 7
 * applyAdjustment(5, 8, 'ExactCapacity', null); // 8
 * ```
 */
export function applyAdjustment(
  capacity: number,
  adjustment: number,
  type: AdjustmentType,
  minAdjustmentMagnitude: number | null,
): number {
  switch (type) {
    case 'ChangeInCapacity':
      return capacity + adjustment;
    case 'ExactCapacity':
      return adjustment;
    case 'PercentChangeInCapacity': {
      let change = roundPercentChange((capacity * adjustment) / 100);
      if (minAdjustmentMagnitude !== null && change !== 0 && Math.abs(change) < minAdjustmentMagnitude) {
        change = Math.sign(change) * minAdjustmentMagnitude;
      }
      return capacity + change;
    }
  }
}

/**
 * The step adjustment whose interval holds `breach` (metric minus threshold), with AWS's
 * inclusive/exclusive bounds: `above` for the scale-out alarm, below for the scale-in alarm.
 */
export function findStep(steps: readonly StepAdjustment[], breach: number, above: boolean): StepAdjustment | undefined {
  return steps.find((s) => {
    const lower = s.lower ?? -Infinity;
    const upper = s.upper ?? Infinity;
    return above ? breach >= lower && breach < upper : breach > lower && breach <= upper;
  });
}

/**
 * AWS step scaling.
 *
 * @example
 * ```ts
 * // defaults: +1 at cpu >= 70, +2 at >= 85, +3 at >= 95, -1 below 40, cooldown 300 s
 * stepPolicy.evaluate({ config, state, metrics: { at, cpu: 90 }, tasks: { running: 4, pending: 0, desired: 4 }, now }).decision.to; // 6
 * ```
 */
export const stepPolicy: ScalingPolicy<ServiceScalingConfig> = {
  name: 'step',
  evaluate(input: ServicePolicyInput): PolicyOutput {
    const { config, state, metrics, tasks, now } = input;
    const s = config.step;
    const from = tasks.desired;
    const value = metricValue(metrics, s.metric);
    const reasons: Reason[] = [];
    const blocked: Block[] = [];
    let proposed = from;

    if (value === undefined) {
      reasons.push({
        metric: s.metric,
        rule: 'insufficient_data',
        message: `${s.metric} is missing, so neither step alarm can fire`,
      });
      return { decision: finishDecision({ policy: 'step', input, proposed, reasons, missing: [s.metric] }), state };
    }

    const out = value >= s.scale_out_threshold;
    const inward = value < s.scale_in_threshold;
    if (!out && !inward) {
      reasons.push({
        metric: s.metric,
        value,
        rule: 'no_alarm',
        message: `${s.metric} ${fmt(value)} is between the scale-in threshold ${s.scale_in_threshold} and the scale-out threshold ${s.scale_out_threshold}`,
      });
      return { decision: finishDecision({ policy: 'step', input, proposed, reasons }), state };
    }

    const threshold = out ? s.scale_out_threshold : s.scale_in_threshold;
    const step = findStep(out ? s.scale_out_steps : s.scale_in_steps, value - threshold, out);
    if (!step) {
      reasons.push({
        metric: s.metric,
        value,
        threshold,
        rule: out ? 'scale_out_alarm_no_step' : 'scale_in_alarm_no_step',
        message: `${s.metric} ${fmt(value)} breaches ${threshold} by ${fmt(value - threshold)}, which no configured step covers`,
      });
      return { decision: finishDecision({ policy: 'step', input, proposed, reasons }), state };
    }
    const interval = out
      ? `[${step.lower ?? '-inf'}, ${step.upper ?? '+inf'})`
      : `(${step.lower ?? '-inf'}, ${step.upper ?? '+inf'}]`;
    const describe = `${step.adjustment} (${s.adjustment_type}) for a breach in ${interval}`;
    reasons.push({
      metric: s.metric,
      value,
      threshold,
      rule: out ? 'scale_out_step' : 'scale_in_step',
      message: `${s.metric} ${fmt(value)} ${out ? '>=' : '<'} ${threshold}: step ${describe}`,
    });

    if (out) {
      const cooldown = scaleOutCooldown(state, now, config.cooldown_out * 1000);
      const base = cooldown ? cooldown.base : from;
      const target = applyAdjustment(base, step.adjustment, s.adjustment_type, s.min_adjustment_magnitude);
      if (target > from) {
        proposed = target;
      } else if (cooldown) {
        blocked.push({
          kind: 'cooldown',
          message: `in the scale-out cooldown: the step asks for ${target} from ${base}, which the ${from} already set covers`,
          until: cooldown.until,
        });
      }
    } else {
      const until = scaleInCooldownUntil(state, now, config.cooldown_in * 1000);
      const target = applyAdjustment(from, step.adjustment, s.adjustment_type, s.min_adjustment_magnitude);
      if (until !== undefined && target < from) {
        blocked.push({ kind: 'cooldown', message: `in the ${config.cooldown_in} s scale-in cooldown`, until });
      } else if (target < from) {
        proposed = target;
      }
    }
    return { decision: finishDecision({ policy: 'step', input, proposed, reasons, blocked }), state };
  },
};
