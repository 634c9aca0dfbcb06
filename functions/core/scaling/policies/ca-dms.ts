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
 * 2. **Two forecasts, each with a headroom it measures itself.** A smooth forecast (Holt's
 *    linear smoothing, `level_weight` / `trend_weight`) and a quick one (the last estimate
 *    plus its recent slope) both predict demand `lead_periods` ahead, when a task started now
 *    would serve. Each tracks online the headroom its own forecast needed: the error of
 *    the forecast made `lead_periods` ago, divided by a noise scale (`level ^ noise_exponent`),
 *    moves the headroom up a large step when demand beat forecast plus headroom and down a
 *    small one when not, so it settles where demand beats it in `target_violation_rate` of
 *    periods (online quantile tracking, as in online conformal prediction; the step is
 *    `learning_rate` times the typical error, so it learns the service's noise scale as it
 *    goes). The forecast whose bound scored better recently (quantile loss) is used: the quick
 *    one wins on load that moves in straight lines between samples, the smooth one on noisy
 *    per-minute load. Where the smooth one scored better but the quick one's errors are no
 *    larger than its own, the quick one stands in whenever it foresees more than the smooth
 *    forecast plus its headroom: the smooth forecast follows a level shift or a burst's rising
 *    edge only over its time constant. A surprise raises the headroom at once and lets it fall back slowly.
 *    The service is sized so that forecast plus headroom sits at or below a line halfway from
 *    `cpu_scale_up` to saturation (90 % with the guide's 80), and so that the expected load
 *    sits at or below the CPU target (`targets.cpu`), whichever needs more tasks; for the target
 *    the expected load is the lower of the smooth and quick forecasts (the seasonal one where
 *    it is used), so that the target rule does not chase each wiggle the quick one extrapolates.
 *
 *    A third, seasonal forecast (`ca-dms-season.ts`) is for load that recurs, such as a batch
 *    every hour, which no forecast of the level sees coming: it finds the period online (the
 *    lag of 10 to 240 minutes whose demand best matches the demand one lag later, if it beats
 *    the shorter lags clearly) and forecasts the demand one period ago at that phase (the
 *    largest within 2 minutes, as edges jitter), adjusted for the level change since. It has a
 *    headroom track of its own and is used instead of the other two while its quantile loss
 *    over about 12 hours (a recurrence shows in a few minutes of each period) is below both
 *    of theirs; otherwise, as on load that does not recur, it is never used. While it is used
 *    the expected load is not below the load now (scale-in waits for the stabilisation window
 *    anyway), so a fleet comes down from a spike in one step.
 * 3. **Counts what is already coming.** It compares with the desired count, which includes
 *    pending tasks, and jumps straight to the number needed: no step, no scale-out cooldown.
 *    While the forecast is rising it sizes for `SCALE_OUT_REACH` lead times more of the climb,
 *    so that load climbing in a straight line costs one scale-out rather than one per period.
 * 4. **Scales in late, in one step, and only when every metric agrees.** Scale-in needs every
 *    metric it relies on present (the shared finishing step blocks it otherwise) and none
 *    saturated; it goes only as far as the forecast's peak still fits with `scale_in_slack` of a
 *    task to spare (without that slack, load that hovers at a boundary between two counts makes
 *    the policy start a task, stop it and start it again, paying a start-up each time) and the
 *    expected load sits 10 % below the CPU target (the HPA's tolerance; a whole task while the
 *    seasonal forecast, a single past sample, is used), and only
 *    once that count has held for two evaluations and the highest recommendation of the
 *    stabilisation window (`stabilization_window`, as the HPA has it) has come down to it, so
 *    that the fleet comes down from a burst in one action rather than a staircase.
 *
 * The shared {@link finishDecision} then applies the rules common to every policy (missing
 * data never scales in, bounds, disabled, dry run). Its memory is bounded (about
 * `3 x lead_periods + 20` numbers, and the seasonal forecast's 4 hours of per-minute demand and
 * one tracked difference per candidate lag, both as whole numbers: at most 3,261 characters of
 * JSON on the traces of `bench:policies`), so the state stays small in the catalog.
 */
import type { ServiceScalingConfig } from '../config.js';
import type { Block, MetricKey, PolicyOutput, Reason, ScalingPolicy, ServiceState } from '../types.js';
import type { ServicePolicyInput } from './common.js';
import type { Season } from './ca-dms-season.js';
import { forecast as seasonForecast, observe, period as seasonPeriod, readSeason } from './ca-dms-season.js';
import { configuredTargets, finishDecision, lastEvent, metricValue } from './common.js';

/** The policy's settings: the configuration's `ca_dms` section. */
export type CaDmsSettings = ServiceScalingConfig['ca_dms'];

/** Where forecast plus headroom may sit: this fraction of the way from `cpu_scale_up` to 100 %. */
const PEAK_POSITION = 0.5;
/** Weight of the newest period in the tracked error size and quantile loss (about 50 periods). */
const ERROR_WEIGHT = 0.02;
/**
 * When it scales out, the policy sizes for its forecast carried this many lead times further
 * along the forecast's rising slope: load that climbs in a straight line (a metric sampled
 * every few minutes and interpolated, a burst's rising edge) would otherwise need a scale-out
 * every period, each paying a start-up and counting as an action.
 */
const SCALE_OUT_REACH = 2;
/**
 * Scale-in's margin below the CPU target, as a share of it: a count is low enough for the target
 * rule when the expected load sits at or below (1 - this) x the target on it. The Kubernetes
 * HPA's default tolerance; a band this wide keeps the smoothed load from flapping at a boundary.
 */
const TARGET_TOLERANCE = 0.1;
/** Weight of the newest period in the slow quantile loss that admits the seasonal forecast (about 12 hours of minutes). */
const SLOW_WEIGHT = 1 / 720;
/** Weight of the newest change in the quick forecast's slope. */
const QUICK_SLOPE_WEIGHT = 0.5;
/** Demand below this many busy tasks is normalised as if it were this much (the scale of an idle service). */
const NOISE_FLOOR = 0.25;
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
  readonly smooth: Track;
  readonly quick: Track;
  readonly seasonal: Track;
  readonly season: Season;
  readonly last: number | undefined;
  readonly fast: number;
  /** The count the forecast needed with the scale-in slack at the previous evaluation. */
  readonly need: number | undefined;
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

/** One forecaster's record: its last forecasts, the headroom it needs and how well it did. */
interface Track {
  /** The forecasts for `lead_periods` ahead made by the last `lead_periods` evaluations. */
  readonly forecasts: readonly number[];
  /** The headroom, in units of the noise scale, that demand exceeded in about `target_violation_rate` of periods (tracked online). */
  readonly quantile: number;
  /** The typical size of a normalised forecast error (tracked online): the step of the quantile tracker. */
  readonly spread: number | undefined;
  /** The recent quantile (pinball) loss of forecast plus headroom: the lower of two forecasters is used. */
  readonly loss: number;
  /**
   * The same loss over about a day's evaluations: a recurrence shows in a few minutes of each
   * period, so whether the seasonal forecast earns its place is judged over many periods.
   */
  readonly slow: number;
}

function readTrack(raw: unknown): Track {
  const m = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>) : {};
  return { forecasts: numbers(m['forecasts']), quantile: num(m, 'quantile') ?? 0, spread: num(m, 'spread'), loss: num(m, 'loss') ?? 0, slow: num(m, 'slow') ?? 0 };
}

/**
 * Scores the forecast made `lead` periods ago against the demand `d` that came, and moves the
 * headroom by online quantile tracking (as in online conformal prediction): up by
 * (1 - rate) / rate steps when demand beat forecast plus headroom, down by one step when not,
 * so it settles where demand beats it in `target_violation_rate` of periods, on whatever
 * noise this service has. The step is `learning_rate` times the typical normalised error.
 */
function learn(track: Track, d: number, scale: number, lead: number, tuning: CaDmsSettings): Track {
  if (track.forecasts.length < lead) return track;
  const rate = tuning.target_violation_rate;
  const r = (d - (track.forecasts[track.forecasts.length - lead] as number)) / scale;
  const w = ERROR_WEIGHT;
  const spread = track.spread === undefined ? Math.abs(r) : track.spread + w * (Math.abs(r) - track.spread);
  const over = r > track.quantile;
  const pinball = over ? (r - track.quantile) * (1 - rate) : (track.quantile - r) * rate;
  const quantile = Math.max(0, track.quantile + tuning.learning_rate * spread * ((over ? 1 : 0) - rate) / rate);
  return { forecasts: track.forecasts, quantile, spread, loss: track.loss + w * (pinball - track.loss), slow: track.slow + SLOW_WEIGHT * (pinball - track.slow) };
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
    smooth: readTrack(m['smooth']),
    quick: readTrack(m['quick']),
    seasonal: readTrack(m['seasonal']),
    season: readSeason(m['season']),
    last: num(m, 'last'),
    fast: num(m, 'fast') ?? 0,
    need: num(m, 'need'),
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
 * Whether the quick forecast should stand in for the smooth one, which scored better on
 * average: when it foresees more than the smooth forecast plus the smooth one's headroom (a
 * level shift or a burst's rising edge, which the smooth forecast follows only over its time
 * constant) and its typical error is no larger than the smooth one's. That second test keeps
 * the switch to load that moves in straight lines between samples (metrics sampled every few
 * minutes and interpolated): on noisy per-minute load the quick forecast's errors are two to
 * three times the smooth one's, and there it would fire on noise and chase it.
 */
function climbing(smooth: Track, quick: Track, smoothExpected: number, quickExpected: number, noise: number): boolean {
  if (smooth.spread === undefined || quick.spread === undefined || quick.spread > smooth.spread) return false;
  return quickExpected > smoothExpected + smooth.quantile * noise;
}

/** The noise scale at a demand level: how forecast errors grow with the load. */
function noiseScale(level: number, exponent: number): number {
  return Math.pow(Math.max(level, NOISE_FLOOR), exponent);
}

function evaluate(input: ServicePolicyInput): PolicyOutput {
  const { config, state, tasks, now } = input;
  const previous = readMemory(state);
  const basis = servingBasis(input, previous);
  const continuous = previous.lastAt !== undefined && now - previous.lastAt <= MAX_GAP_MS;
  const since = continuous ? (previous.since ?? now) : now;
  const est = estimate(input, basis, previous);
  const reasons = est.reasons;
  const from = tasks.desired;
  const tuning = config.ca_dms;
  const lead = tuning.lead_periods;
  const ceiling = (config.cpu_scale_up + PEAK_POSITION * (100 - config.cpu_scale_up)) / 100;
  const target = (config.targets.cpu ?? config.cpu_scale_up) / 100;

  let level = previous.level;
  let slope = previous.trend;
  let fast = previous.fast;
  let smooth = previous.smooth;
  let quick = previous.quick;
  let seasonal = previous.seasonal;
  let season = previous.season;
  let needed = est.floorTasks;
  /** The tasks scale-in must keep for the forecast, with its margins, unrounded. */
  let scaleInExact: number | undefined;
  /** Whether scale-in holds the target rule to its tolerance rather than to the slack (not while the seasonal forecast is used). */
  let tolerant = false;
  if (est.demand !== undefined) {
    const d = est.demand;
    const scale = noiseScale(level ?? d, tuning.noise_exponent);
    if (level !== undefined) {
      smooth = learn(smooth, d, scale, lead, tuning);
      quick = learn(quick, d, scale, lead, tuning);
      seasonal = learn(seasonal, d, scale, lead, tuning);
    }
    if (level === undefined) {
      level = d;
      slope = 0;
    } else {
      const next = tuning.level_weight * d + (1 - tuning.level_weight) * (level + slope);
      slope = tuning.trend_weight * (next - level) + (1 - tuning.trend_weight) * slope;
      level = next;
    }
    const last = previous.last;
    if (last !== undefined) fast = fast + QUICK_SLOPE_WEIGHT * (d - last - fast);
    const smoothExpected = Math.max(0, level + lead * slope);
    const quickExpected = Math.max(0, d + lead * fast);
    smooth = { ...smooth, forecasts: pushBounded(smooth.forecasts, smoothExpected, lead) };
    quick = { ...quick, forecasts: pushBounded(quick.forecasts, quickExpected, lead) };
    const climb = quick.loss >= smooth.loss && climbing(smooth, quick, smoothExpected, quickExpected, noiseScale(level, tuning.noise_exponent));
    const useQuick = quick.loss < smooth.loss || climb;
    const track = useQuick ? quick : smooth;
    const baseExpected = useQuick ? quickExpected : smoothExpected;
    season = observe(season, d, now);
    const seasonLag = seasonPeriod(season, lead);
    const seasonExpected = seasonForecast(season, lead, seasonLag);
    // Until a period is measured the seasonal track scores the other forecast, so its headroom is ready when it starts.
    seasonal = { ...seasonal, forecasts: pushBounded(seasonal.forecasts, seasonExpected ?? baseExpected, lead) };
    const useSeason = seasonExpected !== undefined && seasonal.slow < Math.min(smooth.slow, quick.slow);
    const noise = noiseScale(level, tuning.noise_exponent);
    // The seasonal forecast foresees a spike's end too, but scale-in waits for the stabilisation
    // window anyway: floored at the load now, the recommendations of a spike's last minutes stay
    // at the spike's count and the fleet comes down in one step rather than two, and a spike
    // that lasts longer than last time is not scaled in under.
    const expected = useSeason ? Math.max(d, seasonExpected) : baseExpected;
    const headroom = (useSeason ? seasonal : track).quantile * noise;
    const peak = Math.max(d, expected + headroom);
    const forPeak = Math.ceil(peak / ceiling - 1e-9);
    // The CPU target is for the load the service settles at: measured on the lower of the two
    // level forecasts, it does not follow the quick forecast's extrapolation of each wiggle
    // (a task started and stopped at every turn of an interpolated series); climbs are the
    // peak rule's, which has the headroom for them.
    const targetLoad = useSeason ? expected : Math.min(smoothExpected, quickExpected);
    const forTarget = Math.ceil(targetLoad / target - 1e-9);
    const want = Math.max(forPeak, forTarget);
    /** The tasks the forecast needs, unrounded. */
    const exact = Math.max(peak / ceiling, targetLoad / target);
    // Scale-in keeps a margin on each rule. The peak rule's is `scale_in_slack` of a task: its
    // forecast follows every wiggle of the load. The target rule's load is the lower of the level
    // forecasts, which is steadier: a whole task on it (a fifth of a fleet of 5) held the fleet a
    // task above the target's count until the load fell to 56 % CPU, and a fleet scaled out for a
    // climb came down in two actions, a second one when the slack freed; the HPA's tolerance band
    // below the target keeps it from flapping at a boundary instead. The seasonal forecast is one
    // sample of the load a period ago, as noisy as the load itself, so while it is used the
    // target keeps the whole slack.
    scaleInExact = useSeason
      ? exact + tuning.scale_in_slack
      : Math.max(peak / ceiling + tuning.scale_in_slack, targetLoad / (target * (1 - TARGET_TOLERANCE)));
    tolerant = !useSeason;
    needed = Math.max(needed, want);
    if (want > from) {
      const rising = Math.max(0, useQuick ? fast : slope);
      const further = expected + rising * lead * SCALE_OUT_REACH;
      const reach = Math.max((further + headroom) / ceiling, further / target);
      if (Math.ceil(reach - 1e-9) > needed) {
        needed = Math.ceil(reach - 1e-9);
        reasons.push({
          metric: 'forecast',
          value: round1(rising),
          rule: 'scale_out_reach',
          message: `demand is rising ${round1(rising)} busy tasks a period: scaling out to ${needed}, enough for ${SCALE_OUT_REACH * lead} periods more of that climb, rather than one step each period`,
        });
      }
    }
    reasons.push({
      metric: 'forecast',
      value: round1(peak),
      threshold: round1(ceiling * 100),
      rule: 'forecast_peak',
      message: `expecting ${round1(expected)} busy tasks by the time a new task could serve (now ${round1(d)}, ${useSeason ? `seasonal forecast: the load one period (${seasonLag} min) ago at that phase` : climb ? 'quick forecast: demand climbs past the smooth forecast and its headroom' : `${useQuick ? 'quick' : 'smooth'} forecast`}), up to ${round1(peak)} with the headroom recent demand exceeded in ${round1(tuning.target_violation_rate * 100)}% of periods: ${forPeak} tasks keep that peak at or below ${round1(ceiling * 100)}% CPU, ${forTarget} keep the load it settles at (${round1(targetLoad)}, the lower forecast) at the ${round1(target * 100)}% target`,
    });
  }

  const windowMs = config.stabilization_window * 1000;
  const measured = est.demand !== undefined || est.floorTasks > 0;
  const recommendation = Math.max(config.min_instances, needed);
  const kept = state.recommendations.filter((r) => now - r.at < windowMs);
  const recommendations = measured ? [...kept, { at: now, replicas: recommendation }] : kept;

  /**
   * The fewest tasks that serve the forecast's peak with `scale_in_slack` of a task to spare and
   * hold its expected load within the tolerance below the CPU target: as low as scale-in goes.
   */
  const withSlack = scaleInExact === undefined ? recommendation : Math.max(recommendation, Math.ceil(scaleInExact - 1e-9));
  // Built only when a message needs it: most evaluations scale neither way.
  const margins = (): string =>
    `${tuning.scale_in_slack} of a task to spare${tolerant ? ` for its peak and its expected load at or below ${round1(target * (1 - TARGET_TOLERANCE) * 100)}% CPU` : ''}`;
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
    if (now - since < windowMs) {
      blocked.push({
        kind: 'stabilization',
        until: since + windowMs,
        message: `metrics ask for ${recommendation} tasks, but evaluations (re)started less than ${config.stabilization_window} s ago: watching a full window before scaling in`,
      });
    } else if (stable >= from) {
      let lastHigh = now;
      for (const r of recommendations) if (r.replicas >= from) lastHigh = r.at;
      blocked.push({
        kind: 'stabilization',
        until: lastHigh + windowMs,
        message: `metrics ask for ${recommendation} tasks, but the last ${config.stabilization_window} s asked for up to ${stable}: holding ${from}`,
      });
    } else if (withSlack >= from) {
      blocked.push({
        kind: 'stabilization',
        message: `metrics ask for ${recommendation} tasks, but with ${margins()} the forecast needs ${withSlack}: holding ${from} rather than flapping`,
      });
    } else if (stable > withSlack) {
      // Scaling in to the window's highest recommendation while it is still coming down would
      // go down a staircase, one action per step; waiting for it takes the fleet down in one.
      blocked.push({
        kind: 'stabilization',
        message: `the forecast needs ${withSlack} tasks with ${margins()}, but the last ${config.stabilization_window} s asked for up to ${stable}: scaling in once in one step when the window has come down to it`,
      });
    } else if (previous.need !== withSlack) {
      // A need still moving from one evaluation to the next (a ramp, noise at a boundary)
      // would be followed down and back up; one unchanged evaluation is the sign it has settled.
      blocked.push({
        kind: 'stabilization',
        message: `the forecast needs ${withSlack} tasks with ${margins()}, ${previous.need === undefined ? 'measured for the first time' : `${previous.need} at the previous evaluation`}: scaling in once it holds for one more evaluation`,
      });
    } else {
      proposed = withSlack;
      reasons.push({
        metric: 'capacity',
        value: proposed,
        threshold: from,
        rule: 'scale_in_all_agree',
        message: `every metric has asked for at most ${stable} tasks over the last ${config.stabilization_window} s and ${proposed} still serve the forecast with ${margins()}, as at the previous evaluation: scaling in from ${from} in one step`,
      });
    }
  }

  const decision = finishDecision({ policy: 'ca-dms', input, proposed, reasons, blocked, missing: est.missing });
  const memory: Record<string, unknown> = { lastAt: now, since, running: tasks.running, pending: tasks.pending, trend: slope, fast, smooth, quick, seasonal, season };
  if (est.demand !== undefined) memory['last'] = est.demand;
  if (measured) memory['need'] = withSlack;
  if (level !== undefined) memory['level'] = level;
  if (est.ratio !== undefined) memory['ratio'] = est.ratio;
  return { decision, state: { ...state, recommendations, memory } };
}

/**
 * The `ca-dms` policy; its settings are the configuration's `ca_dms` section.
 *
 * @example
 * ```ts
 * const { decision } = caDmsPolicy.evaluate({ config, state, metrics, tasks, now });
 * decision.reasons.map((r) => r.message); // why, metric by metric
 * ```
 */
export const caDmsPolicy: ScalingPolicy<ServiceScalingConfig> = { name: 'ca-dms', evaluate };
