/**
 * What every policy shares: the finishing step that turns a policy's raw proposal into a
 * {@link Decision} with the same safety rules for all five policies, and small helpers for
 * cooldowns, metric look-ups and bounded history.
 *
 * The safety rules live here, not in each policy, so that no policy can forget one: missing
 * data never scales in, a deployment in progress never scales in, the bounds always hold, a
 * disabled service never changes, and a dry run reports what it would do.
 */
import type { ServiceScalingConfig } from '../config.js';
import type {
  Block,
  Decision,
  Direction,
  MetricKey,
  MetricsSnapshot,
  PolicyInput,
  Reason,
  ScaleEvent,
  ServiceState,
} from '../types.js';

/** The input every policy receives. */
export type ServicePolicyInput = PolicyInput<ServiceScalingConfig>;

/** The `targets` keys of the configuration and the snapshot metric each one targets. */
export const TARGET_METRICS = {
  cpu: 'cpu',
  memory: 'memory',
  response_time: 'responseTimeMs',
  connections: 'connectionsPerTask',
  queue_depth: 'queueDepthPerTask',
} as const satisfies Record<keyof ServiceScalingConfig['targets'], MetricKey>;

/** One configured target: the metric and the value the policy keeps it at. */
export interface Target {
  readonly metric: MetricKey;
  readonly target: number;
}

/**
 * The targets a proportional policy tracks, in a stable order. A target of `null` is not
 * tracked; a target of 0 cannot be tracked proportionally and is skipped too.
 *
 * @example
 * ```ts
 * configuredTargets(config); // [{ metric: 'cpu', target: 70 }] with the defaults
 * ```
 */
export function configuredTargets(config: ServiceScalingConfig): Target[] {
  const cached = targetsCache.get(config.targets);
  if (cached) return cached.slice();
  const out: Target[] = [];
  for (const key of TARGET_KEYS) {
    const target = config.targets[key];
    if (target !== null && target > 0) out.push({ metric: TARGET_METRICS[key], target });
  }
  targetsCache.set(config.targets, out);
  return out.slice();
}

const TARGET_KEYS = Object.keys(TARGET_METRICS) as Array<keyof typeof TARGET_METRICS>;
/** The simulator evaluates one configuration object thousands of times; derive its targets once. */
const targetsCache = new WeakMap<ServiceScalingConfig['targets'], readonly Target[]>();

/** The metric's value, or `undefined` when absent or not a finite number. */
export function metricValue(metrics: MetricsSnapshot, key: MetricKey): number | undefined {
  const v = metrics[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/**
 * A number as a message shows it: at most two decimals, so an operator reads `cpu 85.71`, not
 * `cpu 85.71428571428571` (and the simulator does not pay for printing 17 digits every tick).
 *
 * The same string as `String(Math.round(value * 100) / 100)`, built from the whole hundredths:
 * printing a fraction (the shortest digits that read back as the same double) costs several
 * times more than printing integers, and the anchor policies print one or two every tick
 * (a tenth of a `bench:policies` job). Below 10^15 hundredths the decimal h / 100 has at most
 * 15 significant digits, so no shorter string reads back as the same double: the two agree.
 */
export function fmt(value: number): string {
  if (Number.isInteger(value)) return String(value);
  const hundredths = Math.round(value * 100);
  if (!(Math.abs(hundredths) < 1e15) || hundredths % 100 === 0) return String(hundredths / 100);
  const whole = Math.abs(hundredths);
  const cents = whole % 100;
  const decimals = cents % 10 === 0 ? String(cents / 10) : cents < 10 ? `0${cents}` : String(cents);
  return `${hundredths < 0 ? '-' : ''}${(whole - cents) / 100}.${decimals}`;
}

/**
 * The state to carry forward with some of the policy-owned parts replaced. Built as a literal of
 * one fixed shape because the simulator calls it every tick and V8 copies those much faster than
 * an object spread.
 */
export function updateState(
  state: ServiceState,
  patch: Partial<Pick<ServiceState, 'metricsHistory' | 'recommendations' | 'memory'>>,
): ServiceState {
  return {
    service: state.service,
    events: state.events,
    metricsHistory: patch.metricsHistory ?? state.metricsHistory,
    recommendations: patch.recommendations ?? state.recommendations,
    memory: patch.memory ?? state.memory,
  };
}

/** The direction of a change from one desired count to another. */
export function directionOf(from: number, to: number): Direction {
  return to > from ? 'out' : to < from ? 'in' : 'none';
}

/** The newest applied event, if any. */
export function lastEvent(state: ServiceState): ScaleEvent | undefined {
  return state.events[state.events.length - 1];
}

/** The newest applied event in one direction, if any. */
export function lastEventIn(state: ServiceState, direction: 'out' | 'in'): ScaleEvent | undefined {
  for (let i = state.events.length - 1; i >= 0; i--) {
    const e = state.events[i];
    if (e && directionOf(e.from, e.to) === direction) return e;
  }
  return undefined;
}

/**
 * The scale-out cooldown in force at `now`, AWS style: the chain of scale-outs each started
 * within the cooldown of the one before, ending with one whose cooldown has not yet expired.
 * `base` is the capacity before the chain started: AWS counts capacity added during a
 * scale-out cooldown toward the next scale-out, so a bigger proposal adds only the difference.
 */
export function scaleOutCooldown(
  state: ServiceState,
  now: number,
  cooldownMs: number,
): { base: number; until: number } | undefined {
  const events = state.events;
  let i = events.length - 1;
  while (i >= 0 && directionOf(events[i]!.from, events[i]!.to) !== 'out') i--;
  if (i < 0) return undefined;
  const latest = events[i]!;
  if (now - latest.at >= cooldownMs) return undefined;
  let first = latest;
  for (let j = i - 1; j >= 0; j--) {
    const e = events[j]!;
    if (directionOf(e.from, e.to) !== 'out' || first.at - e.at >= cooldownMs) break;
    first = e;
  }
  return { base: first.from, until: latest.at + cooldownMs };
}

/**
 * When the scale-in cooldown ends, AWS style: scale-in waits out the cooldown of the last
 * scale-in, and any scale-out after that scale-in ends it. `undefined` when none is in force.
 */
export function scaleInCooldownUntil(state: ServiceState, now: number, cooldownMs: number): number | undefined {
  const last = lastEvent(state);
  if (!last || directionOf(last.from, last.to) !== 'in') return undefined;
  const until = last.at + cooldownMs;
  return now < until ? until : undefined;
}

/** What a policy hands to {@link finishDecision}. */
export interface FinishArgs {
  readonly policy: string;
  readonly input: ServicePolicyInput;
  /** The desired count the policy's rule asks for, before the shared safety rules. */
  readonly proposed: number;
  readonly reasons: readonly Reason[];
  /** What the policy itself held back (cooldown, stabilisation). */
  readonly blocked?: readonly Block[];
  /** Metrics the rule needed but did not get; any of them blocks a scale-in. */
  readonly missing?: readonly MetricKey[];
}

/**
 * The shared finishing step of every policy. Starting from the policy's proposal it:
 * never scales in on missing data (`missing_data`) or during a deployment (`deployment`);
 * clamps to `min_instances..max_instances` (`bounds`, naming the bound; the bounds win over
 * the two holds above, so the desired count is always within them); keeps the count when the
 * service is disabled (`disabled`); and in a dry run keeps the computed count but adds a
 * `dry_run` block so the caller applies nothing.
 *
 * @example
 * ```ts
 * const decision = finishDecision({ policy: 'threshold', input, proposed: from + 1, reasons });
 * if (decision.to !== decision.from && !decision.blocked.some((b) => b.kind === 'dry_run')) apply(decision.to);
 * ```
 */
export function finishDecision(args: FinishArgs): Decision {
  const { input, reasons } = args;
  const { config, tasks, now } = input;
  const from = tasks.desired;
  const blocked: Block[] = [...(args.blocked ?? [])];
  let to = Math.round(args.proposed);

  if (to < from && args.missing && args.missing.length > 0) {
    blocked.push({
      kind: 'missing_data',
      message: `not scaling in: ${args.missing.join(', ')} missing, and missing data never causes a scale-in`,
    });
    to = from;
  }
  if (to < from && tasks.deploymentInProgress === true) {
    blocked.push({ kind: 'deployment', message: 'not scaling in while a deployment is in progress' });
    to = from;
  }
  if (to > config.max_instances) {
    blocked.push({
      kind: 'bounds',
      message: `limited to max_instances (${config.max_instances}); the rule asked for ${to}`,
    });
    to = config.max_instances;
  } else if (to < config.min_instances) {
    blocked.push({
      kind: 'bounds',
      message: `held at min_instances (${config.min_instances}); the rule asked for ${to}`,
    });
    to = config.min_instances;
  }
  if (!config.enabled) {
    blocked.push({
      kind: 'disabled',
      message: to === from ? 'scaling is disabled' : `scaling is disabled; the rule would have set ${to}`,
    });
    to = from;
  } else if (config.dry_run) {
    blocked.push({
      kind: 'dry_run',
      message: to === from ? 'dry run: no change' : `dry run: would set the desired count from ${from} to ${to}; nothing applied`,
    });
  }
  return {
    service: config.service,
    policy: args.policy,
    at: now,
    from,
    to,
    direction: directionOf(from, to),
    reasons,
    blocked,
  };
}
