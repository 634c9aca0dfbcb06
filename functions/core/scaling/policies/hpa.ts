/**
 * `hpa`: the Kubernetes HorizontalPodAutoscaler algorithm on aggregate metrics, with the
 * `behavior` API and its defaults. Written from the algorithm Kubernetes documents (the
 * replica calculator and the controller's normalisation), not ported code.
 *
 * Two pure functions carry the algorithm so that it can be checked against Kubernetes' own
 * test tables: {@link hpaReplicas} (the desired count the metrics ask for) and
 * {@link hpaNormalize} (stabilisation, rate limits and bounds). {@link hpaPolicy} wraps them
 * behind the common policy interface.
 */
import type { ServiceScalingConfig } from '../config.js';
import type { Block, MetricKey, PolicyOutput, Reason, Recommendation, ScalingPolicy } from '../types.js';
import { configuredTargets, directionOf, finishDecision, fmt, metricValue, updateState, type ServicePolicyInput } from './common.js';

/** One metric as the HPA sees it. */
export type HpaMetric =
  /** A resource's average utilisation over the pods, in percent of the request. */
  | { readonly kind: 'utilization'; readonly currentPercent: number; readonly targetPercent: number }
  /** A per-pod average value (Pods metrics, or resource AverageValue targets). */
  | { readonly kind: 'averageValue'; readonly current: number; readonly target: number }
  /** An Object or External metric's value; the ratio scales the ready replicas. */
  | { readonly kind: 'value'; readonly current: number; readonly target: number; readonly readyReplicas?: number }
  /** An External metric's total against a per-pod target average. */
  | { readonly kind: 'totalAverageValue'; readonly total: number; readonly targetAverage: number };

export interface HpaReplicasInput {
  readonly currentReplicas: number;
  /** The tolerance around a ratio of 1 inside which nothing changes (default 0.1). */
  readonly tolerance?: number;
  readonly metrics: readonly HpaMetric[];
}

export const DEFAULT_TOLERANCE = 0.1;

function proposalFor(metric: HpaMetric, current: number, tolerance: number): number {
  // `ratio` decides whether to move (tolerance); `scaled` is where to move to.
  let ratio: number;
  let scaled: number;
  switch (metric.kind) {
    case 'utilization':
      ratio = metric.currentPercent / metric.targetPercent;
      scaled = ratio * current;
      break;
    case 'averageValue':
      ratio = metric.current / metric.target;
      scaled = ratio * current;
      break;
    case 'value':
      ratio = metric.current / metric.target;
      scaled = ratio * (metric.readyReplicas ?? current);
      break;
    case 'totalAverageValue':
      ratio = metric.total / (metric.targetAverage * current);
      scaled = metric.total / metric.targetAverage;
      break;
  }
  // With no replicas there is no ratio to keep; Kubernetes then scales to the raw ratio.
  if (current === 0) return Math.ceil(metric.kind === 'totalAverageValue' ? scaled : ratio);
  if (Math.abs(1 - ratio) <= tolerance) return current;
  return Math.ceil(scaled);
}

/**
 * The replica count the metrics ask for, before normalisation: for each metric the ratio of
 * current to target (inside the tolerance: keep the current count, otherwise scale the
 * replicas by it and round up), and the largest proposal wins. No metrics: the current count.
 *
 * @example
 * ```ts
 * hpaReplicas({ currentReplicas: 3, metrics: [{ kind: 'utilization', currentPercent: 50, targetPercent: 30 }] }); // 5
 * hpaReplicas({ currentReplicas: 3, metrics: [{ kind: 'totalAverageValue', total: 8600, targetAverage: 2150 }] }); // 4
 * ```
 */
export function hpaReplicas(input: HpaReplicasInput): number {
  const tolerance = input.tolerance ?? DEFAULT_TOLERANCE;
  let best: number | undefined;
  for (const m of input.metrics) {
    const p = proposalFor(m, input.currentReplicas, tolerance);
    if (best === undefined || p > best) best = p;
  }
  return best ?? input.currentReplicas;
}

/** One rate-limit policy of the behavior API. */
export interface HpaScalingPolicy {
  readonly type: 'Pods' | 'Percent';
  readonly value: number;
  readonly periodSeconds: number;
}

/** One direction's rules of the behavior API; absent fields take the Kubernetes defaults. */
export interface HpaScalingRules {
  readonly stabilizationWindowSeconds?: number;
  readonly selectPolicy?: 'Max' | 'Min' | 'Disabled';
  readonly policies?: readonly HpaScalingPolicy[];
}

export interface HpaBehavior {
  readonly scaleUp?: HpaScalingRules;
  readonly scaleDown?: HpaScalingRules;
}

export interface HpaNormalizeInput {
  readonly currentReplicas: number;
  readonly prenormalizedDesired: number;
  readonly minReplicas: number;
  readonly maxReplicas: number;
  readonly behavior: HpaBehavior;
  /** Past scale-ups: replicas added and how long ago. */
  readonly scaleUpEvents?: ReadonlyArray<{ readonly replicaChange: number; readonly secondsAgo: number }>;
  /** Past scale-downs: replicas removed (a positive number) and how long ago. */
  readonly scaleDownEvents?: ReadonlyArray<{ readonly replicaChange: number; readonly secondsAgo: number }>;
  /** Past unstabilised recommendations and how long ago they were made. */
  readonly pastRecommendations?: ReadonlyArray<{ readonly replicas: number; readonly secondsAgo: number }>;
}

/** The Kubernetes condition reasons a normalisation can end with. */
export type HpaLimitReason = 'ScaleUpLimit' | 'ScaleDownLimit' | 'TooManyReplicas' | 'TooFewReplicas' | 'DesiredWithinRange';

/** The behavior defaults Kubernetes applies (autoscaling/v2). */
export const HPA_DEFAULT_SCALE_UP: Required<HpaScalingRules> = {
  stabilizationWindowSeconds: 0,
  selectPolicy: 'Max',
  policies: [
    { type: 'Pods', value: 4, periodSeconds: 15 },
    { type: 'Percent', value: 100, periodSeconds: 15 },
  ],
};
export const HPA_DEFAULT_SCALE_DOWN: Required<HpaScalingRules> = {
  stabilizationWindowSeconds: 300,
  selectPolicy: 'Max',
  policies: [{ type: 'Percent', value: 100, periodSeconds: 15 }],
};

/** A direction's rules with the Kubernetes defaults filled in field by field. */
export function withDefaults(rules: HpaScalingRules | undefined, defaults: Required<HpaScalingRules>): Required<HpaScalingRules> {
  return {
    stabilizationWindowSeconds: rules?.stabilizationWindowSeconds ?? defaults.stabilizationWindowSeconds,
    selectPolicy: rules?.selectPolicy ?? defaults.selectPolicy,
    policies: rules?.policies ?? defaults.policies,
  };
}

type Events = NonNullable<HpaNormalizeInput['scaleUpEvents']>;

function changeInPeriod(periodSeconds: number, events: Events): number {
  let sum = 0;
  for (const e of events) if (e.secondsAgo < periodSeconds) sum += e.replicaChange;
  return sum;
}

function scaleUpLimit(current: number, up: Events, down: Events, rules: Required<HpaScalingRules>): number {
  if (rules.selectPolicy === 'Disabled') return current;
  const pick = rules.selectPolicy === 'Min' ? Math.min : Math.max;
  let result = rules.selectPolicy === 'Min' ? Infinity : -Infinity;
  for (const p of rules.policies) {
    const start = current - changeInPeriod(p.periodSeconds, up) + changeInPeriod(p.periodSeconds, down);
    const proposed = p.type === 'Pods' ? start + p.value : Math.ceil(start * (1 + p.value / 100));
    result = pick(result, proposed);
  }
  return result;
}

function scaleDownLimit(current: number, up: Events, down: Events, rules: Required<HpaScalingRules>): number {
  if (rules.selectPolicy === 'Disabled') return current;
  const pick = rules.selectPolicy === 'Min' ? Math.max : Math.min;
  let result = rules.selectPolicy === 'Min' ? -Infinity : Infinity;
  for (const p of rules.policies) {
    const start = current - changeInPeriod(p.periodSeconds, up) + changeInPeriod(p.periodSeconds, down);
    const proposed = p.type === 'Pods' ? start - p.value : Math.trunc(start * (1 - p.value / 100));
    result = pick(result, proposed);
  }
  return result;
}

/** {@link hpaNormalize}'s answer with the intermediate step the policy explains itself with. */
export interface HpaNormalizeDetail {
  readonly replicas: number;
  readonly reason: HpaLimitReason;
  /** The recommendation after stabilisation, before rate limits and bounds. */
  readonly stabilized: number;
}

/** {@link hpaNormalize} with the stabilised recommendation exposed. */
export function hpaNormalizeDetail(input: HpaNormalizeInput): HpaNormalizeDetail {
  return normalizeWith(
    input,
    withDefaults(input.behavior.scaleUp, HPA_DEFAULT_SCALE_UP),
    withDefaults(input.behavior.scaleDown, HPA_DEFAULT_SCALE_DOWN),
  );
}

function normalizeWith(input: HpaNormalizeInput, up: Required<HpaScalingRules>, down: Required<HpaScalingRules>): HpaNormalizeDetail {
  const current = input.currentReplicas;
  const desired = input.prenormalizedDesired;

  // Stabilisation: scale up no further than the lowest recommendation of the up window and
  // down no further than the highest of the down window (this recommendation included).
  let upRecommendation = desired;
  let downRecommendation = desired;
  for (const r of input.pastRecommendations ?? []) {
    if (r.secondsAgo < up.stabilizationWindowSeconds) upRecommendation = Math.min(upRecommendation, r.replicas);
    if (r.secondsAgo < down.stabilizationWindowSeconds) downRecommendation = Math.max(downRecommendation, r.replicas);
  }
  let stabilized = current;
  if (stabilized < upRecommendation) stabilized = upRecommendation;
  if (stabilized > downRecommendation) stabilized = downRecommendation;

  const upEvents = input.scaleUpEvents ?? [];
  const downEvents = input.scaleDownEvents ?? [];
  let replicas = stabilized;
  let reason: HpaLimitReason = 'DesiredWithinRange';
  if (stabilized > current) {
    const limit = Math.max(current, scaleUpLimit(current, upEvents, downEvents, up));
    const allowed = Math.min(input.maxReplicas, limit);
    if (stabilized > allowed) {
      replicas = allowed;
      reason = input.maxReplicas > limit ? 'ScaleUpLimit' : 'TooManyReplicas';
    }
  } else if (stabilized < current) {
    const limit = Math.min(current, scaleDownLimit(current, upEvents, downEvents, down));
    const allowed = Math.max(input.minReplicas, limit);
    if (stabilized < allowed) {
      replicas = allowed;
      reason = input.minReplicas < limit ? 'ScaleDownLimit' : 'TooFewReplicas';
    }
  }
  // The bounds hold even when the count does not move (a current count outside them).
  if (replicas > input.maxReplicas) {
    replicas = input.maxReplicas;
    reason = 'TooManyReplicas';
  } else if (replicas < input.minReplicas) {
    replicas = input.minReplicas;
    reason = 'TooFewReplicas';
  }
  return { replicas, reason, stabilized };
}

/**
 * Kubernetes' normalisation of a desired replica count: stabilisation over the past
 * recommendations plus this one, then the behavior's rate-limit policies over the scale events
 * of each policy's period, then the bounds. `reason` is the Kubernetes condition reason.
 *
 * @example
 * ```ts
 * hpaNormalize({ currentReplicas: 10, prenormalizedDesired: 50, minReplicas: 1, maxReplicas: 1000, behavior: {} });
 * // { replicas: 20, reason: 'ScaleUpLimit' }: the default scale-up allows max(+4 pods, +100 %) per 15 s
 * ```
 */
export function hpaNormalize(input: HpaNormalizeInput): { replicas: number; reason: HpaLimitReason } {
  const { replicas, reason } = hpaNormalizeDetail(input);
  return { replicas, reason };
}

/** Maps a configured target to the HPA metric kind that fits it. */
const KIND_OF: Record<MetricKey, 'utilization' | 'averageValue' | 'value'> = {
  cpu: 'utilization',
  memory: 'utilization',
  responseTimeMs: 'value',
  connectionsPerTask: 'averageValue',
  queueDepthPerTask: 'averageValue',
  requestCount: 'value',
  errorRate: 'value',
};

/**
 * The per-task metric as Kubernetes would average it over all desired tasks, counting tasks
 * that are still starting (which report nothing) the way it counts pods without metrics: as
 * idle when the ready ones ask for more, and as at their target (at least 100 % for
 * utilisation) when they ask for less, so a scale-in never rests on tasks not yet serving.
 */
function withStartingTasks(value: number, target: number, kind: 'utilization' | 'averageValue', running: number, desired: number): number {
  if (running <= 0 || running >= desired) return value;
  const starting = desired - running;
  const fallback = value > target ? 0 : kind === 'utilization' ? Math.max(100, target) : target;
  return (value * running + fallback * starting) / desired;
}

/**
 * The Kubernetes HPA behind the policy interface: `config.targets` are its metrics,
 * `config.hpa` its tolerance and behavior; past recommendations are kept in
 * `state.recommendations` and scale events come from `state.events`.
 *
 * @example
 * ```ts
 * const { decision, state: next } = hpaPolicy.evaluate({ config, state, metrics: { at: now, cpu: 90 }, tasks, now });
 * ```
 */
export const hpaPolicy: ScalingPolicy<ServiceScalingConfig> = {
  name: 'hpa',
  evaluate(input: ServicePolicyInput): PolicyOutput {
    const { config, state, metrics, tasks, now } = input;
    const current = tasks.desired;
    const reasons: Reason[] = [];
    const missing: MetricKey[] = [];
    const hpaMetrics: HpaMetric[] = [];
    const tolerance = config.hpa.tolerance;

    for (const { metric, target } of configuredTargets(config)) {
      const value = metricValue(metrics, metric);
      if (value === undefined) {
        missing.push(metric);
        reasons.push({ metric, threshold: target, rule: 'metric_missing', message: `${metric} is missing; it cannot vote` });
        continue;
      }
      const kind = KIND_OF[metric];
      let m: HpaMetric;
      if (kind === 'value') {
        m = { kind, current: value, target, readyReplicas: tasks.running > 0 ? tasks.running : current };
      } else {
        const adjusted = withStartingTasks(value, target, kind, tasks.running, current);
        // As Kubernetes does, counting starting tasks must not flip the direction.
        const flips = (value > target && adjusted < target) || (value < target && adjusted > target);
        const used = flips ? target : adjusted;
        m = kind === 'utilization' ? { kind, currentPercent: used, targetPercent: target } : { kind, current: used, target };
      }
      const proposal = proposalFor(m, current, tolerance);
      hpaMetrics.push(m);
      reasons.push({
        metric,
        value,
        threshold: target,
        rule: proposal > current ? 'above_target' : proposal < current ? 'below_target' : 'within_tolerance',
        message: `${metric} ${fmt(value)} against target ${fmt(target)} (tolerance ${tolerance}) asks for ${proposal} tasks`,
      });
    }

    if (hpaMetrics.length === 0) {
      reasons.push({ metric: 'capacity', value: current, rule: 'no_metrics', message: 'no targeted metric reported; keeping the count' });
      return { decision: finishDecision({ policy: 'hpa', input, proposed: current, reasons, missing }), state };
    }

    const prenormalized = hpaReplicas({ currentReplicas: current, tolerance, metrics: hpaMetrics });
    const behavior = config.hpa.behavior;
    const up = withDefaults(behavior.scaleUp, HPA_DEFAULT_SCALE_UP);
    const down = withDefaults(behavior.scaleDown, HPA_DEFAULT_SCALE_DOWN);
    const scaleUpEvents: Array<{ replicaChange: number; secondsAgo: number }> = [];
    const scaleDownEvents: Array<{ replicaChange: number; secondsAgo: number }> = [];
    for (const e of state.events) {
      const dir = directionOf(e.from, e.to);
      if (dir === 'out') scaleUpEvents.push({ replicaChange: e.to - e.from, secondsAgo: (now - e.at) / 1000 });
      else if (dir === 'in') scaleDownEvents.push({ replicaChange: e.from - e.to, secondsAgo: (now - e.at) / 1000 });
    }
    const pastRecommendations: Array<{ replicas: number; secondsAgo: number }> = [];
    for (const r of state.recommendations) pastRecommendations.push({ replicas: r.replicas, secondsAgo: (now - r.at) / 1000 });
    const detail = normalizeWith({
      currentReplicas: current,
      prenormalizedDesired: prenormalized,
      minReplicas: config.min_instances,
      maxReplicas: config.max_instances,
      behavior,
      scaleUpEvents,
      scaleDownEvents,
      pastRecommendations,
    }, up, down);

    const blocked: Block[] = [];
    if (detail.stabilized !== prenormalized) {
      const scalingDown = prenormalized < current;
      const windowS = scalingDown ? down.stabilizationWindowSeconds : up.stabilizationWindowSeconds;
      let newest = -Infinity;
      for (const r of state.recommendations) if (r.replicas === detail.stabilized) newest = Math.max(newest, r.at);
      blocked.push({
        kind: 'stabilization',
        message: `${scalingDown ? 'scale-down' : 'scale-up'} stabilisation window of ${windowS} s holds ${detail.stabilized} instead of ${prenormalized}`,
        ...(Number.isFinite(newest) ? { until: newest + windowS * 1000 } : {}),
      });
    }
    if (detail.reason === 'ScaleUpLimit' || detail.reason === 'ScaleDownLimit') {
      const isUp = detail.reason === 'ScaleUpLimit';
      let longest = 0;
      for (const p of (isUp ? up : down).policies) longest = Math.max(longest, p.periodSeconds);
      let oldestInPeriod = Infinity;
      for (const e of state.events) if (now - e.at < longest * 1000) oldestInPeriod = Math.min(oldestInPeriod, e.at);
      blocked.push({
        kind: 'cooldown',
        message: `${detail.reason}: the desired count is ${isUp ? 'increasing' : 'decreasing'} faster than the behavior's rate limit allows`,
        ...(Number.isFinite(oldestInPeriod) ? { until: oldestInPeriod + longest * 1000 } : {}),
      });
    }
    reasons.push({
      metric: 'capacity',
      value: prenormalized,
      rule: detail.reason,
      message: `Kubernetes HPA: metrics ask for ${prenormalized}, stabilised ${detail.stabilized}, normalised to ${detail.replicas} (${detail.reason})`,
    });

    const keepS = Math.max(up.stabilizationWindowSeconds, down.stabilizationWindowSeconds);
    const recommendations: Recommendation[] = [];
    for (const r of state.recommendations) if (now - r.at < keepS * 1000) recommendations.push(r);
    recommendations.push({ at: now, replicas: prenormalized });
    const nextState = updateState(state, { recommendations });

    const decision = finishDecision({ policy: 'hpa', input, proposed: detail.replicas, reasons, blocked, missing });
    return { decision, state: nextState };
  },
};
