/**
 * `target-tracking`: AWS Application Auto Scaling target tracking as AWS documents it.
 *
 * For every configured target AWS keeps two alarms on one-minute datapoints: a high alarm when
 * 3 consecutive datapoints are above the target, and a low alarm when 15 consecutive datapoints
 * are below 90 % of it. The new capacity is proportional: `ceil(capacity x value / target)`.
 * With several targets the policy scales out if any target asks for it (to the largest
 * proposal) and scales in only if every target asks for it (to the largest, i.e. most
 * cautious, proposal).
 *
 * Cooldowns as AWS documents them: during a scale-out cooldown the capacity added by the
 * scale-out that started it counts toward the next scale-out (the proposal is computed from the
 * capacity before it and only a larger one is applied); a scale-in waits out the cooldown of
 * the previous scale-in; a scale-out ends a scale-in cooldown. A missing datapoint breaks the
 * consecutive run, so missing data never triggers an action.
 */
import type { ServiceScalingConfig } from '../config.js';
import type { Block, MetricKey, MetricsSnapshot, PolicyOutput, Reason, ScalingPolicy } from '../types.js';
import {
  configuredTargets,
  finishDecision,
  fmt,
  metricValue,
  scaleInCooldownUntil,
  scaleOutCooldown,
  updateState,
  type ServicePolicyInput,
} from './common.js';

/** Consecutive one-minute datapoints above the target before scaling out (AWS's high alarm). */
export const SCALE_OUT_DATAPOINTS = 3;
/** Consecutive one-minute datapoints below the scale-in line before scaling in (AWS's low alarm). */
export const SCALE_IN_DATAPOINTS = 15;
/** The low alarm's threshold as a fraction of the target. */
export const SCALE_IN_FRACTION = 0.9;

const MINUTE_MS = 60_000;

/**
 * The per-minute datapoint history with the new snapshot in it: a snapshot in the same minute
 * as the newest datapoint replaces it (the controller may evaluate more often than once a
 * minute), and only the newest {@link SCALE_IN_DATAPOINTS} are kept.
 */
function withDatapoint(history: readonly MetricsSnapshot[], snapshot: MetricsSnapshot): MetricsSnapshot[] {
  const last = history[history.length - 1];
  const sameMinute = last !== undefined && Math.floor(last.at / MINUTE_MS) === Math.floor(snapshot.at / MINUTE_MS);
  const kept = sameMinute ? history.slice(0, -1) : history;
  const start = Math.max(0, kept.length + 1 - SCALE_IN_DATAPOINTS);
  const out = kept.slice(start);
  out.push(snapshot);
  return out;
}

/**
 * True when the newest `n` datapoints fall in `n` consecutive minutes and all are strictly
 * above (`above`) or strictly below `line`.
 */
function consecutive(history: readonly MetricsSnapshot[], n: number, metric: MetricKey, above: boolean, line: number): boolean {
  if (history.length < n) return false;
  const newest = Math.floor(history[history.length - 1]!.at / MINUTE_MS);
  for (let k = 0; k < n; k++) {
    const point = history[history.length - 1 - k]!;
    if (Math.floor(point.at / MINUTE_MS) !== newest - k) return false;
    const v = metricValue(point, metric);
    if (v === undefined || (above ? v <= line : v >= line)) return false;
  }
  return true;
}

/**
 * AWS-style target tracking over every configured target (`config.targets`).
 *
 * @example
 * ```ts
 * // cpu 90 against the default target 70 for 3 minutes with 4 tasks -> ceil(4 x 90 / 70) = 6
 * let state = initialState('frontend');
 * for (const at of [60_000, 120_000, 180_000]) {
 *   ({ state } = targetTrackingPolicy.evaluate({ config, state, metrics: { at, cpu: 90 }, tasks, now: at }));
 * }
 * ```
 */
export const targetTrackingPolicy: ScalingPolicy<ServiceScalingConfig> = {
  name: 'target-tracking',
  evaluate(input: ServicePolicyInput): PolicyOutput {
    const { config, state, metrics, tasks, now } = input;
    const from = tasks.desired;
    const history = withDatapoint(state.metricsHistory, metrics);
    const nextState = updateState(state, { metricsHistory: history });
    const targets = configuredTargets(config);
    const reasons: Reason[] = [];
    const blocked: Block[] = [];

    if (targets.length === 0) {
      reasons.push({ metric: 'capacity', rule: 'no_targets', message: 'no target is configured, so nothing is tracked' });
      return { decision: finishDecision({ policy: 'target-tracking', input, proposed: from, reasons }), state: nextState };
    }

    const outCooldown = scaleOutCooldown(state, now, config.cooldown_out * 1000);
    const outBase = outCooldown ? outCooldown.base : from;
    const missing: MetricKey[] = [];
    let outProposal = -Infinity;
    let outAlarms = 0;
    let inProposal = -Infinity;
    let inAlarms = 0;

    for (const { metric, target } of targets) {
      const value = metricValue(metrics, metric);
      if (value === undefined) {
        missing.push(metric);
        reasons.push({ metric, threshold: target, rule: 'insufficient_data', message: `${metric} is missing this minute` });
        continue;
      }
      const inLine = SCALE_IN_FRACTION * target;
      if (consecutive(history, SCALE_OUT_DATAPOINTS, metric, true, target)) {
        const proposal = Math.ceil((outBase * value) / target);
        outAlarms++;
        outProposal = Math.max(outProposal, proposal);
        reasons.push({
          metric,
          value,
          threshold: target,
          rule: 'high_alarm',
          message: `${metric} above target ${fmt(target)} for ${SCALE_OUT_DATAPOINTS} consecutive minutes: ceil(${outBase} x ${fmt(value)} / ${fmt(target)}) = ${proposal}`,
        });
      } else if (consecutive(history, SCALE_IN_DATAPOINTS, metric, false, inLine)) {
        const proposal = Math.ceil((from * value) / target);
        inAlarms++;
        inProposal = Math.max(inProposal, proposal);
        reasons.push({
          metric,
          value,
          threshold: inLine,
          rule: 'low_alarm',
          message: `${metric} below ${fmt(inLine)} (90 % of target ${fmt(target)}) for ${SCALE_IN_DATAPOINTS} consecutive minutes: ceil(${from} x ${fmt(value)} / ${fmt(target)}) = ${proposal}`,
        });
      } else {
        reasons.push({ metric, value, threshold: target, rule: 'tracking', message: `${metric} ${fmt(value)} against target ${fmt(target)}: no alarm` });
      }
    }

    let proposed = from;
    if (outAlarms > 0) {
      if (outProposal > from) {
        proposed = outProposal;
      } else if (outCooldown) {
        blocked.push({
          kind: 'cooldown',
          message: `in the scale-out cooldown: capacity already added (${from}) covers the proposal ${outProposal}`,
          until: outCooldown.until,
        });
      }
    } else if (inAlarms + missing.length === targets.length && inAlarms > 0 && inProposal < from) {
      const until = scaleInCooldownUntil(state, now, config.cooldown_in * 1000);
      if (until !== undefined) {
        blocked.push({ kind: 'cooldown', message: `in the ${config.cooldown_in} s scale-in cooldown`, until });
      } else {
        proposed = inProposal;
      }
    }
    const decision = finishDecision({ policy: 'target-tracking', input, proposed, reasons, blocked, missing });
    return { decision, state: nextState };
  },
};
