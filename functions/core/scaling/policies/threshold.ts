/**
 * `threshold`: the CA-DMS scaling guide's policy. Scale out by `scale_step` when any scale-up
 * threshold is exceeded; scale in by `scale_step` when every scale-down threshold is met; wait
 * out the cooldown after any applied change; stay within the bounds.
 */
import type { ServiceScalingConfig } from '../config.js';
import type { Block, MetricKey, PolicyOutput, Reason, ScalingPolicy } from '../types.js';
import { finishDecision, fmt, lastEvent, metricValue, updateState, type ServicePolicyInput } from './common.js';

interface Rule {
  readonly metric: MetricKey;
  readonly threshold: (c: ServiceScalingConfig) => number;
  readonly label: string;
  /** The rule name a reason carries when this rule fires. */
  readonly fired: string;
}

/** Exceeding any of these (strictly above) asks for a scale-out. */
const SCALE_UP: readonly Rule[] = [
  { metric: 'cpu', threshold: (c) => c.cpu_scale_up, label: 'cpu_scale_up', fired: 'cpu_scale_up_exceeded' },
  { metric: 'memory', threshold: (c) => c.memory_scale_up, label: 'memory_scale_up', fired: 'memory_scale_up_exceeded' },
  { metric: 'responseTimeMs', threshold: (c) => c.response_time_scale_up, label: 'response_time_scale_up', fired: 'response_time_scale_up_exceeded' },
  { metric: 'connectionsPerTask', threshold: (c) => c.connections_scale_up, label: 'connections_scale_up', fired: 'connections_scale_up_exceeded' },
  { metric: 'errorRate', threshold: (c) => c.error_rate_scale_up, label: 'error_rate_scale_up', fired: 'error_rate_scale_up_exceeded' },
  { metric: 'queueDepthPerTask', threshold: (c) => c.queue_depth_scale_up, label: 'queue_depth_scale_up', fired: 'queue_depth_scale_up_exceeded' },
];

/** All of these (strictly below) must hold for a scale-in. */
const SCALE_DOWN: readonly Rule[] = [
  { metric: 'cpu', threshold: (c) => c.cpu_scale_down, label: 'cpu_scale_down', fired: 'cpu_scale_down_met' },
  { metric: 'memory', threshold: (c) => c.memory_scale_down, label: 'memory_scale_down', fired: 'memory_scale_down_met' },
  { metric: 'connectionsPerTask', threshold: (c) => c.connections_scale_down, label: 'connections_scale_down', fired: 'connections_scale_down_met' },
  { metric: 'queueDepthPerTask', threshold: (c) => c.queue_depth_scale_down, label: 'queue_depth_scale_down', fired: 'queue_depth_scale_down_met' },
];

/** CPU and memory every service reports, so their absence is always missing data. */
const ALWAYS_REQUIRED: readonly MetricKey[] = ['cpu', 'memory'];

/**
 * Which scale-down metrics a service must report before it may scale in: CPU and memory, plus
 * any other scale-down metric the service has reported before (connections for web services,
 * queue depth for workers). A metric a service never reports cannot veto forever, but one that
 * went silent is missing data.
 */
function isRequiredForScaleIn(metric: MetricKey, seen: readonly string[]): boolean {
  return ALWAYS_REQUIRED.includes(metric) || seen.includes(metric);
}

/**
 * The guide's threshold policy.
 *
 * @example
 * ```ts
 * const { decision, state: next } = thresholdPolicy.evaluate({ config, state, metrics, tasks, now });
 * // cpu 85 > cpu_scale_up 80 with desired 3 and no cooldown -> decision.to === 4
 * ```
 */
export const thresholdPolicy: ScalingPolicy<ServiceScalingConfig> = {
  name: 'threshold',
  evaluate(input: ServicePolicyInput): PolicyOutput {
    const { config, state, metrics, tasks, now } = input;
    const from = tasks.desired;
    const previouslySeen = Array.isArray(state.memory['seen']) ? (state.memory['seen'] as string[]) : [];
    let seen = previouslySeen;
    for (const r of SCALE_DOWN) {
      if (metricValue(metrics, r.metric) !== undefined && !seen.includes(r.metric)) seen = [...seen, r.metric];
    }

    const reasons: Reason[] = [];
    for (const r of SCALE_UP) {
      const value = metricValue(metrics, r.metric);
      const threshold = r.threshold(config);
      if (value !== undefined && value > threshold) {
        reasons.push({
          metric: r.metric,
          value,
          threshold,
          rule: r.fired,
          message: `${r.metric} ${fmt(value)} is above ${r.label} ${fmt(threshold)}`,
        });
      }
    }
    const wantsOut = reasons.length > 0;

    // Scale in only when every required scale-down metric is reported and below its threshold;
    // when the reported ones all agree but some are missing, propose it anyway so that the
    // finishing step blocks it and says why.
    const missing: MetricKey[] = [];
    let wantsIn = false;
    if (!wantsOut) {
      const met: Reason[] = [];
      let disagree = false;
      for (const r of SCALE_DOWN) {
        if (!isRequiredForScaleIn(r.metric, seen)) continue;
        const value = metricValue(metrics, r.metric);
        const threshold = r.threshold(config);
        if (value === undefined) missing.push(r.metric);
        else if (value < threshold) {
          met.push({ metric: r.metric, value, threshold, rule: r.fired, message: `${r.metric} ${fmt(value)} is below ${r.label} ${fmt(threshold)}` });
        } else disagree = true;
      }
      wantsIn = !disagree && met.length > 0;
      if (wantsIn) reasons.push(...met);
      else if (!disagree && missing.length > 0) {
        reasons.push({
          metric: missing[0]!,
          rule: 'scale_down_metrics_missing',
          message: `no scale-up threshold is exceeded, and ${missing.join(', ')} missing, so a scale-in cannot be judged`,
        });
      } else {
        reasons.push({
          metric: 'capacity',
          value: from,
          rule: 'within_thresholds',
          message: 'no scale-up threshold is exceeded and not every scale-down threshold is met',
        });
      }
    }

    let proposed = from;
    const blocked: Block[] = [];
    if (wantsOut || wantsIn) {
      const step = wantsOut ? config.scale_step : -config.scale_step;
      const cooldownS = wantsOut ? config.cooldown_out : config.cooldown_in;
      const last = lastEvent(state);
      const until = last ? last.at + cooldownS * 1000 : undefined;
      if (until !== undefined && now < until) {
        blocked.push({
          kind: 'cooldown',
          message: `in the ${cooldownS} s cooldown after the change at ${new Date(last!.at).toISOString()}`,
          until,
        });
      } else {
        proposed = from + step;
      }
    }

    const decision = finishDecision({
      policy: 'threshold',
      input,
      proposed,
      reasons,
      blocked,
      missing,
    });
    const nextState = seen === previouslySeen ? state : updateState(state, { memory: { ...state.memory, seen } });
    return { decision, state: nextState };
  },
};
