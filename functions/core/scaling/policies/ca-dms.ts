/**
 * `ca-dms`: the project's own policy and the default. It provisions for the load it expects
 * by the time a new task could serve, not for the load it saw.
 *
 * 1. **One demand estimate from every metric.** Busy task-units = tasks that served the last
 *    period x CPU / 100. CPU saturates at 100 % exactly when it matters most, so while CPU is
 *    saturated (or missing) the estimate comes from connections per task, converted to CPU
 *    with the ratio the policy learns while CPU is not saturated (prior:
 *    `cpu_scale_up / connections_scale_up`). A response time above `response_time_scale_up`
 *    means at least one task more than served. Configured memory, response-time and
 *    queue-depth targets add proportional proposals of their own; the largest proposal wins.
 * 2. **A forecast with a measured margin.** Holt's linear smoothing gives the expected demand
 *    when a task started now would serve (`leadPeriods` ahead). The policy remembers how far
 *    its own forecasts fell short over the last `errorPeriods` and adds `errorMargin` times
 *    that typical shortfall: noisy traffic gets headroom, smooth traffic gets none it does not need.
 *    The service is sized so that this peak sits at or below a line `peakPosition` of the way
 *    from `cpu_scale_up` to saturation (90 % with the guide's 80), and so that the expected
 *    load sits at or below the CPU target (`targets.cpu`), whichever needs more tasks.
 * 3. **Counts what is already coming.** It compares with the desired count, which includes
 *    pending tasks, and jumps straight to the number needed: no step, no scale-out cooldown.
 * 4. **Scales in late and only when every metric agrees.** Scale-in needs every metric it
 *    relies on present (the shared finishing step blocks it otherwise) and none saturated, and goes only to the highest recommendation of the
 *    stabilisation window (`stabilization_window`, as the HPA has it), and only as far as the
 *    forecast still fits with `scaleInSlack` of a task to spare. Without that slack, load that
 *    hovers at a boundary between two counts makes the policy start a task, stop it and start
 *    it again, paying a start-up each time.
 *
 * The shared {@link finishDecision} then applies the rules common to every policy (missing
 * data never scales in, bounds, disabled, dry run). Its memory is bounded (about
 * `errorPeriods + leadPeriods + 8` numbers), so the state stays small in the catalog.
 */
import type { ServiceScalingConfig } from '../config.js';
import type { Block, MetricKey, PolicyOutput, Reason, ScalingPolicy, ServiceState } from '../types.js';
import type { ServicePolicyInput } from './common.js';
import { configuredTargets, finishDecision, lastEvent, metricValue } from './common.js';

/** The knobs of the forecast; the defaults were tuned on real traces and synthetic shapes. */
export interface CaDmsTuning {
  /** Weight of the newest estimate in the demand level (Holt's linear smoothing, alpha). */
  readonly levelWeight: number;
  /** Weight of the newest change in the demand trend (Holt's beta). */
  readonly trendWeight: number;
  /** Periods from the last observed period until a task started now serves. */
  readonly leadPeriods: number;
  /** Forecast errors kept: how far the forecast made `leadPeriods` earlier missed each estimate. */
  readonly errorPeriods: number;
  /** Headroom in multiples of the root-mean-square under-forecast. */
  readonly errorMargin: number;
  /** Where the forecast peak may sit: this fraction of the way from `cpu_scale_up` to 100 %. */
  readonly peakPosition: number;
  /** Scale in only to a count that would still suffice with this fraction of a task more (hysteresis). */
  readonly scaleInSlack: number;
}

export const DEFAULT_CA_DMS_TUNING: CaDmsTuning = {
  levelWeight: 0.1,
  trendWeight: 0.01,
  leadPeriods: 3,
  errorPeriods: 120,
  errorMargin: 2.6,
  peakPosition: 0.5,
  scaleInSlack: 0.2,
};

/** CPU at or above this is saturated: it no longer measures the load. */
const CPU_SATURATED = 99;
/** Weight of a new observation in the learned connections-to-CPU ratio. */
const RATIO_WEIGHT = 0.2;
/** A gap longer than this since the previous evaluation makes its task counts stale. */
const MAX_GAP_MS = 5 * 60_000;

/** The memory the policy keeps between evaluations (JSON, bounded). */
interface CaDmsMemory {
  /** When the previous evaluation ran, and the tasks running and pending it saw. */
  readonly lastAt: number | undefined;
  /** When the current unbroken run of evaluations began (scale-in waits a window after it). */
  readonly since: number | undefined;
  readonly running: number | undefined;
  readonly pending: number | undefined;
  /** CPU percent per connection per task, learned while CPU is not saturated. */
  readonly ratio: number | undefined;
  /** Holt's smoothed demand level and trend (busy task-units, per period). */
  readonly level: number | undefined;
  readonly trend: number;
  /** The forecasts for `leadPeriods` ahead made by the last `leadPeriods` evaluations. */
  readonly forecasts: readonly number[];
  /** The last `errorPeriods` forecast errors (estimate minus what was forecast for it). */
  readonly errors: readonly number[];
}

function num(m: Readonly<Record<string, unknown>>, key: string): number | undefined {
  const v = m[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function numbers(raw: unknown): number[] {
  const out: number[] = [];
  if (Array.isArray(raw)) for (const v of raw) if (typeof v === 'number' && Number.isFinite(v)) out.push(v);
  return out;
}

function readMemory(state: ServiceState): CaDmsMemory {
  const m = state.memory;
  return {
    lastAt: num(m, 'lastAt'),
    since: num(m, 'since'),
    running: num(m, 'running'),
    pending: num(m, 'pending'),
    ratio: num(m, 'ratio'),
    level: num(m, 'level'),
    trend: num(m, 'trend') ?? 0,
    forecasts: numbers(m['forecasts']),
    errors: numbers(m['errors']),
  };
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
  const removed = event !== undefined && event.at === lastAt && event.to < event.from ? Math.max(0, event.from - event.to - pending) : 0;
  return Math.max(1, running - removed);
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

interface Estimate {
  /** Busy task-units, or undefined when no metric measured the load. */
  readonly demand: number | undefined;
  /** A lower bound on the tasks needed from saturation signals and other targets. */
  readonly floorTasks: number;
  readonly saturated: boolean;
  readonly ratio: number | undefined;
  readonly missing: MetricKey[];
  readonly reasons: Reason[];
}

function estimate(input: ServicePolicyInput, basis: number, memory: CaDmsMemory): Estimate {
  const { config, metrics } = input;
  const reasons: Reason[] = [];
  const missing: MetricKey[] = [];
  const cpu = metricValue(metrics, 'cpu');
  const conn = metricValue(metrics, 'connectionsPerTask');
  let ratio = memory.ratio;
  let demand: number | undefined;
  let saturated = false;
  let floorTasks = 0;
  if (cpu === undefined) missing.push('cpu');
  if (conn === undefined && ratio !== undefined) missing.push('connectionsPerTask');
  if (cpu !== undefined && cpu < CPU_SATURATED) {
    demand = (basis * cpu) / 100;
    if (conn !== undefined && conn > 0) ratio = ratio === undefined ? cpu / conn : ratio + RATIO_WEIGHT * (cpu / conn - ratio);
    reasons.push({
      metric: 'cpu',
      value: cpu,
      threshold: config.cpu_scale_up,
      rule: 'cpu_demand',
      message: `CPU ${round1(cpu)}% on ${basis} tasks is ${round1(demand)} busy tasks`,
    });
  } else {
    if (cpu !== undefined) {
      saturated = true;
      floorTasks = basis + 1;
    }
    if (conn !== undefined) {
      const prior = config.connections_scale_up > 0 ? config.cpu_scale_up / config.connections_scale_up : 1;
      const r = ratio ?? prior;
      demand = Math.max((basis * conn * r) / 100, cpu === undefined ? 0 : basis);
      reasons.push({
        metric: 'connectionsPerTask',
        value: conn,
        threshold: config.connections_scale_up,
        rule: cpu === undefined ? 'connections_demand_cpu_missing' : 'connections_demand_cpu_saturated',
        message: `CPU is ${cpu === undefined ? 'missing' : `saturated at ${round1(cpu)}%`}; ${round1(conn)} connections per task on ${basis} tasks is ${round1(demand)} busy tasks`,
      });
    } else if (cpu !== undefined) {
      demand = basis;
      reasons.push({
        metric: 'cpu',
        value: cpu,
        threshold: config.cpu_scale_up,
        rule: 'cpu_saturated',
        message: `CPU is saturated at ${round1(cpu)}% on ${basis} tasks and no connection count tells how far: at least one task more`,
      });
    }
  }
  const rt = metricValue(metrics, 'responseTimeMs');
  if (rt !== undefined && rt > config.response_time_scale_up) {
    saturated = true;
    floorTasks = Math.max(floorTasks, basis + 1);
    reasons.push({
      metric: 'responseTimeMs',
      value: rt,
      threshold: config.response_time_scale_up,
      rule: 'response_time_above_scale_up',
      message: `response time ${round1(rt)} ms is above ${config.response_time_scale_up} ms: at least ${basis + 1} tasks`,
    });
  }
  for (const { metric, target } of configuredTargets(config)) {
    if (metric === 'cpu' || metric === 'connectionsPerTask') continue;
    const value = metricValue(metrics, metric);
    if (value === undefined) {
      missing.push(metric);
      continue;
    }
    const want = Math.ceil((basis * value) / target - 1e-9);
    floorTasks = Math.max(floorTasks, want);
    reasons.push({
      metric,
      value,
      threshold: target,
      rule: 'proportional_target',
      message: `${metric} ${round1(value)} on ${basis} tasks needs ${want} tasks to sit at its target ${target}`,
    });
  }
  return { demand, floorTasks, saturated, ratio, missing, reasons };
}

/** Appends to a bounded list, dropping the oldest beyond `keep`. */
function pushBounded(list: readonly number[], value: number, keep: number): number[] {
  const out = list.length >= keep ? list.slice(list.length - keep + 1) : list.slice();
  out.push(value);
  return out;
}

/**
 * The typical size of an under-forecast: the root mean square of the positive errors (demand
 * above the forecast), over all kept errors. Over-forecasts cost only money, and counting
 * them would make a sudden drop in load look like noise that needs more headroom.
 */
function underForecastRms(errors: readonly number[]): number {
  if (errors.length === 0) return 0;
  let sum = 0;
  for (const e of errors) if (e > 0) sum += e * e;
  return Math.sqrt(sum / errors.length);
}

/**
 * Builds the `ca-dms` policy with the given tuning (the registry uses the defaults).
 *
 * @example
 * ```ts
 * const policy = createCaDmsPolicy({ ...DEFAULT_CA_DMS_TUNING, errorMargin: 3 });
 * const { decision } = policy.evaluate({ config, state, metrics, tasks, now });
 * decision.reasons.map((r) => r.message); // why, metric by metric
 * ```
 */
export function createCaDmsPolicy(tuning: CaDmsTuning = DEFAULT_CA_DMS_TUNING): ScalingPolicy<ServiceScalingConfig> {
  return { name: 'ca-dms', evaluate: (input) => evaluate(input, tuning) };
}

function evaluate(input: ServicePolicyInput, tuning: CaDmsTuning): PolicyOutput {
  const { config, state, tasks, now } = input;
  const previous = readMemory(state);
  const basis = servingBasis(input, previous);
  const continuous = previous.lastAt !== undefined && now - previous.lastAt <= MAX_GAP_MS;
  const since = continuous ? (previous.since ?? now) : now;
  const est = estimate(input, basis, previous);
  const reasons = est.reasons;
  const from = tasks.desired;
  const ceiling = (config.cpu_scale_up + tuning.peakPosition * (100 - config.cpu_scale_up)) / 100;
  const target = (config.targets.cpu ?? config.cpu_scale_up) / 100;

  let forecasts = previous.forecasts;
  let errors = previous.errors;
  let level = previous.level;
  let slope = previous.trend;
  let needed = est.floorTasks;
  /** The tasks the forecast needs, unrounded. */
  let exact: number | undefined;
  if (est.demand !== undefined) {
    const d = est.demand;
    if (forecasts.length >= tuning.leadPeriods) errors = pushBounded(errors, d - (forecasts[forecasts.length - tuning.leadPeriods] as number), tuning.errorPeriods);
    if (level === undefined) {
      level = d;
      slope = 0;
    } else {
      const next = tuning.levelWeight * d + (1 - tuning.levelWeight) * (level + slope);
      slope = tuning.trendWeight * (next - level) + (1 - tuning.trendWeight) * slope;
      level = next;
    }
    const expected = Math.max(0, level + tuning.leadPeriods * slope);
    forecasts = pushBounded(forecasts, expected, tuning.leadPeriods);
    const headroom = tuning.errorMargin * underForecastRms(errors);
    const peak = Math.max(d, expected + headroom);
    const forPeak = Math.ceil(peak / ceiling - 1e-9);
    const forTarget = Math.ceil(expected / target - 1e-9);
    const want = Math.max(forPeak, forTarget);
    exact = Math.max(peak / ceiling, expected / target);
    needed = Math.max(needed, want);
    reasons.push({
      metric: 'forecast',
      value: round1(peak),
      threshold: round1(ceiling * 100),
      rule: 'forecast_peak',
      message: `expecting ${round1(expected)} busy tasks by the time a new task could serve (now ${round1(d)}, trend ${round1(slope * tuning.leadPeriods)}), up to ${round1(peak)} with ${tuning.errorMargin} times the typical recent under-forecast: ${forPeak} tasks keep that peak at or below ${round1(ceiling * 100)}% CPU, ${forTarget} keep the expected load at the ${round1(target * 100)}% target`,
    });
  }

  const windowMs = config.stabilization_window * 1000;
  const measured = est.demand !== undefined || est.floorTasks > 0;
  const recommendation = Math.max(config.min_instances, needed);
  const kept = state.recommendations.filter((r) => now - r.at < windowMs);
  const recommendations = measured ? [...kept, { at: now, replicas: recommendation }] : kept;

  let proposed = from;
  const blocked: Block[] = [];
  if (!measured) {
    reasons.push({ metric: 'capacity', value: from, rule: 'no_load_metric', message: `no metric measured the load this period: holding ${from}` });
  } else if (needed > from) {
    proposed = needed;
    reasons.push({
      metric: 'capacity',
      value: needed,
      threshold: from,
      rule: 'scale_out_to_needed',
      message: `${needed} tasks needed; ${tasks.running} running and ${tasks.pending} pending make ${from}: adding ${needed - from} at once`,
    });
  } else if (!est.saturated && recommendation < from) {
    let stable = recommendation;
    for (const r of recommendations) if (r.replicas > stable) stable = r.replicas;
    const slack = tuning.scaleInSlack;
    const withSlack = exact === undefined ? recommendation : Math.max(recommendation, Math.ceil(exact + slack - 1e-9));
    if (now - since < windowMs) {
      blocked.push({
        kind: 'stabilization',
        until: since + windowMs,
        message: `metrics ask for ${recommendation} tasks, but evaluations (re)started less than ${config.stabilization_window} s ago: watching a full window before scaling in`,
      });
    } else if (stable < from && withSlack < from) {
      proposed = Math.max(stable, withSlack);
      reasons.push({
        metric: 'capacity',
        value: proposed,
        threshold: from,
        rule: 'scale_in_all_agree',
        message: `every metric has asked for at most ${stable} tasks over the last ${config.stabilization_window} s and ${proposed} still serve the forecast with ${slack} of a task to spare: scaling in from ${from}`,
      });
    } else if (stable < from) {
      blocked.push({
        kind: 'stabilization',
        message: `metrics ask for ${recommendation} tasks, but with ${slack} of a task to spare the forecast needs ${withSlack}: holding ${from} rather than flapping`,
      });
    } else {
      let lastHigh = now;
      for (const r of recommendations) if (r.replicas >= from) lastHigh = r.at;
      blocked.push({
        kind: 'stabilization',
        until: lastHigh + windowMs,
        message: `metrics ask for ${recommendation} tasks, but the last ${config.stabilization_window} s asked for up to ${stable}: holding ${from}`,
      });
    }
  }

  const decision = finishDecision({ policy: 'ca-dms', input, proposed, reasons, blocked, missing: est.missing });
  const memory: Record<string, unknown> = { lastAt: now, since, running: tasks.running, pending: tasks.pending, trend: slope, forecasts, errors };
  if (level !== undefined) memory['level'] = level;
  if (est.ratio !== undefined) memory['ratio'] = est.ratio;
  return { decision, state: { ...state, recommendations, memory } };
}

/** The `ca-dms` policy with its default tuning. */
export const caDmsPolicy: ScalingPolicy<ServiceScalingConfig> = createCaDmsPolicy();
