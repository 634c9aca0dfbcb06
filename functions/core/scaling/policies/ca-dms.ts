/**
 * `ca-dms`: the project's own policy and the default.
 *
 * 1. **Proportional, multi-metric.** Each metric with a target says how many tasks would hold
 *    it at that target (`tasks serving last period x value / target`); the largest wins.
 *    Connections per task default to the guide's `connections_scale_up` as their target when
 *    none is set, because CPU saturates at 100 % and stops telling how overloaded a service is,
 *    while connections keep growing with the load. A response time above
 *    `response_time_scale_up` is taken as saturation and asks for at least one task more.
 * 2. **Counts what is already coming.** The proposal is compared with the desired count, which
 *    includes pending tasks, and jumps straight to the number needed: no step, no scale-out
 *    cooldown, so it neither overshoots while tasks start nor crawls up a step at a time.
 * 3. **Scales out ahead of a rise.** A short trend over the recent load, projected over the
 *    time a task takes to start, raises the proposal while the load climbs steadily.
 * 4. **Scales in late and only when everyone agrees.** Scale-in needs every targeted metric
 *    present and asking for fewer tasks, and goes only to the highest recommendation of the
 *    stabilisation window (HPA-style), which gives hysteresis against noisy load.
 *
 * The shared {@link finishDecision} then applies the rules common to every policy (missing
 * data never scales in, bounds, disabled, dry run).
 */
import type { Block, MetricKey, PolicyOutput, Reason, ScalingPolicy, ServiceState } from '../types.js';
import type { ServicePolicyInput } from './common.js';
import { appendBounded, configuredTargets, finishDecision, lastEvent, metricValue } from './common.js';
import type { ServiceScalingConfig } from '../config.js';

/** Minutes of load history kept for the trend (bounded: the state is stored every period). */
const TREND_POINTS = 6;
/** How far ahead the trend is projected: a task's start-up plus one evaluation period. */
const LEAD_MS = 3 * 60_000;
/** CPU at or above this is saturated: it only says "at least this many tasks". */
const CPU_SATURATED = 99;
/** A longer gap since the previous evaluation makes its task counts stale. */
const MAX_GAP_MS = 2 * 60_000;

/** The memory the policy keeps between evaluations (JSON, bounded). */
interface CaDmsMemory {
  /** When the previous evaluation ran, and the tasks running and pending it saw. */
  readonly lastAt?: number;
  readonly running?: number;
  readonly pending?: number;
  /** Recent load estimates `[at, tasks needed]`, oldest first. */
  readonly load?: ReadonlyArray<readonly [number, number]>;
}

function readMemory(state: ServiceState): CaDmsMemory {
  const m = state.memory;
  const num = (k: string): number | undefined => (typeof m[k] === 'number' ? m[k] : undefined);
  const load = Array.isArray(m['load'])
    ? (m['load'] as unknown[]).filter(
        (p): p is [number, number] => Array.isArray(p) && p.length === 2 && typeof p[0] === 'number' && typeof p[1] === 'number',
      )
    : undefined;
  return { lastAt: num('lastAt'), running: num('running'), pending: num('pending'), load };
}

/**
 * The tasks that served the period the metrics describe. Tasks that became ready since the
 * previous evaluation did not serve it, so when that evaluation was the one just before, its
 * running count (less what its own applied scale-in removed) is the basis; otherwise the
 * tasks running now.
 */
function servingBasis(input: ServicePolicyInput, memory: CaDmsMemory): number {
  const { tasks, now, state } = input;
  const { lastAt, running, pending } = memory;
  if (lastAt === undefined || running === undefined || pending === undefined || now - lastAt > MAX_GAP_MS) {
    return Math.max(1, tasks.running);
  }
  const event = lastEvent(state);
  const removed = event && event.at === lastAt && event.to < event.from ? Math.max(0, event.from - event.to - pending) : 0;
  return Math.max(1, running - removed);
}

interface Proposal {
  readonly needed: number;
  readonly reasons: Reason[];
  readonly missing: MetricKey[];
  /** True when some metric says the service is saturated beyond what it can measure. */
  readonly saturated: boolean;
}

function proportional(input: ServicePolicyInput, basis: number): Proposal {
  const { config, metrics } = input;
  const reasons: Reason[] = [];
  const missing: MetricKey[] = [];
  let needed = 0;
  let saturated = false;
  const targets = configuredTargets(config);
  if (config.targets.connections === null && config.connections_scale_up > 0) {
    targets.push({ metric: 'connectionsPerTask', target: config.connections_scale_up });
  }
  for (const { metric, target } of targets) {
    const value = metricValue(metrics, metric);
    if (value === undefined) {
      missing.push(metric);
      continue;
    }
    const want = (basis * value) / target;
    const capped = metric === 'cpu' && value >= CPU_SATURATED;
    if (capped) saturated = true;
    needed = Math.max(needed, want);
    reasons.push({
      metric,
      value,
      threshold: target,
      rule: capped ? 'cpu_saturated' : 'proportional_target',
      message: capped
        ? `CPU is saturated at ${fmt(value)}%: at least ${fmt(want)} tasks are needed to bring it to ${fmt(target)}%`
        : `${metric} ${fmt(value)} on ${basis} tasks needs ${fmt(want)} tasks to sit at its target ${fmt(target)}`,
    });
  }
  const rt = metricValue(metrics, 'responseTimeMs');
  if (rt !== undefined && rt > config.response_time_scale_up) {
    saturated = true;
    needed = Math.max(needed, basis + 1);
    reasons.push({
      metric: 'responseTimeMs',
      value: rt,
      threshold: config.response_time_scale_up,
      rule: 'response_time_above_scale_up',
      message: `response time ${fmt(rt)} ms is above ${config.response_time_scale_up} ms: at least one task more than the ${basis} serving`,
    });
  }
  return { needed, reasons, missing, saturated };
}

/** Least-squares slope (tasks per ms) of the recent load, or 0 with too few points. */
function slope(points: ReadonlyArray<readonly [number, number]>): number {
  const n = points.length;
  if (n < 3) return 0;
  let sx = 0;
  let sy = 0;
  for (const [x, y] of points) {
    sx += x;
    sy += y;
  }
  const mx = sx / n;
  const my = sy / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) * (x - mx);
  }
  return den === 0 ? 0 : num / den;
}

function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toFixed(1);
}

/**
 * Evaluates the `ca-dms` policy.
 *
 * @example
 * ```ts
 * const { decision, state } = caDmsPolicy.evaluate({ config, state, metrics, tasks, now });
 * decision.reasons.map((r) => r.message); // why, metric by metric
 * ```
 */
export function evaluateCaDms(input: ServicePolicyInput): PolicyOutput {
  const { config, state, tasks, now } = input;
  const previous = readMemory(state);
  const basis = servingBasis(input, previous);
  const p = proportional(input, basis);
  const reasons = [...p.reasons];
  const from = tasks.desired;

  const history = p.reasons.length > 0 ? appendBounded(previous.load ?? [], [now, p.needed] as const, TREND_POINTS) : [...(previous.load ?? [])];
  const rise = Math.max(0, slope(history)) * LEAD_MS;
  let wantOut = p.needed;
  if (rise > 0 && p.reasons.length > 0) {
    wantOut = p.needed + rise;
    reasons.push({
      metric: 'forecast',
      value: p.needed + rise,
      rule: 'trend_ahead',
      message: `load is rising by ${fmt(rise)} tasks over the next ${LEAD_MS / 60_000} minutes (task start-up): provisioning ahead for ${fmt(wantOut)}`,
    });
  }
  const outTarget = Math.ceil(wantOut - 1e-9);

  const windowMs = config.stabilization_window * 1000;
  const recommendation = Math.max(config.min_instances, Math.ceil(p.needed - 1e-9));
  const recommendations = p.reasons.length > 0
    ? [...state.recommendations.filter((r) => now - r.at < windowMs), { at: now, replicas: recommendation }]
    : state.recommendations.filter((r) => now - r.at < windowMs);

  let proposed = from;
  const blocked: Block[] = [];
  if (outTarget > from) {
    proposed = outTarget;
    reasons.push({
      metric: 'capacity',
      value: outTarget,
      threshold: from,
      rule: 'scale_out_to_needed',
      message: `${outTarget} tasks needed; ${tasks.running} running and ${tasks.pending} pending make ${from}: adding ${outTarget - from} at once`,
    });
  } else if (!p.saturated && p.missing.length === 0 && recommendation < from) {
    const stable = Math.max(...recommendations.map((r) => r.replicas));
    if (stable < from) {
      proposed = stable;
      reasons.push({
        metric: 'capacity',
        value: stable,
        threshold: from,
        rule: 'scale_in_all_agree',
        message: `every metric has asked for at most ${stable} tasks over the last ${config.stabilization_window} s: scaling in from ${from}`,
      });
    } else {
      const holding = recommendations.filter((r) => r.replicas >= from);
      const until = (holding[holding.length - 1]?.at ?? now) + windowMs;
      blocked.push({
        kind: 'stabilization',
        until,
        message: `metrics ask for ${recommendation} tasks, but the last ${config.stabilization_window} s asked for up to ${stable}: holding ${from}`,
      });
    }
  }

  const decision = finishDecision({ policy: 'ca-dms', input, proposed, reasons, blocked, missing: p.missing });
  const memory: CaDmsMemory = { lastAt: now, running: tasks.running, pending: tasks.pending, load: history };
  return { decision, state: { ...state, recommendations, memory: { ...memory } } };
}

/** The `ca-dms` policy. */
export const caDmsPolicy: ScalingPolicy<ServiceScalingConfig> = { name: 'ca-dms', evaluate: evaluateCaDms };
