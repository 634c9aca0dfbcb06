/**
 * The scaling domain's shared vocabulary: metrics snapshots, per-service state, decisions and
 * the policy interface. Everything here is plain data (JSON-serialisable) so that the
 * controller can persist it in the catalog and the simulator can replay it.
 *
 * Times are epoch milliseconds, always passed in by the caller: the core never reads a clock.
 */

/** The services CA-DMS scales by default. Configuration may name others. */
export const DEFAULT_SERVICES = ['backend-read', 'backend-write', 'frontend', 'worker'] as const;

export type ServiceName = string;

/** The metric keys a snapshot can carry. */
export const METRIC_KEYS = [
  'cpu',
  'memory',
  'responseTimeMs',
  'connectionsPerTask',
  'requestCount',
  'errorRate',
  'queueDepthPerTask',
] as const;
export type MetricKey = (typeof METRIC_KEYS)[number];

/**
 * One service's metrics for the last period. Every metric is optional: a metric that
 * CloudWatch did not report is absent (never zero), and policies must treat it as unknown.
 *
 * - `cpu`, `memory`: average utilisation in percent (0..100).
 * - `responseTimeMs`: average target response time in milliseconds.
 * - `connectionsPerTask`: active connections divided by running tasks.
 * - `requestCount`: requests in the period.
 * - `errorRate`: 5xx responses as a percentage of requests (0..100).
 * - `queueDepthPerTask`: background queue backlog divided by running tasks (workers).
 */
export interface MetricsSnapshot {
  /** End of the period the metrics describe (epoch ms). */
  readonly at: number;
  readonly cpu?: number;
  readonly memory?: number;
  readonly responseTimeMs?: number;
  readonly connectionsPerTask?: number;
  readonly requestCount?: number;
  readonly errorRate?: number;
  readonly queueDepthPerTask?: number;
}

/** What the orchestrator (ECS, or the simulated fleet) reports about a service's tasks. */
export interface TaskCounts {
  /** Tasks serving traffic. */
  readonly running: number;
  /** Tasks started but not yet running. */
  readonly pending: number;
  /** The desired count currently set. */
  readonly desired: number;
  /** True while a deployment is rolling out (no scale-in then, as AWS does). */
  readonly deploymentInProgress?: boolean;
}

/** A change that was actually applied to a service's desired count. */
export interface ScaleEvent {
  readonly at: number;
  readonly from: number;
  readonly to: number;
}

/** A policy's recommendation at one evaluation, kept for stabilisation windows. */
export interface Recommendation {
  readonly at: number;
  readonly replicas: number;
}

/**
 * Per-service state carried between evaluations. The caller owns it: it passes it to the
 * policy, stores the `state` the policy returns, and appends to `events` (through
 * {@link recordApplied}) only when a change was really applied.
 */
export interface ServiceState {
  readonly service: ServiceName;
  /** Applied changes, oldest first, trimmed to the last hour by {@link recordApplied}. */
  readonly events: readonly ScaleEvent[];
  /** Recent metrics, oldest first; policies that need history (consecutive datapoints,
   * seasonality) read it. Trimmed by the policy that owns the retention it needs. */
  readonly metricsHistory: readonly MetricsSnapshot[];
  /** Recent recommendations, oldest first. */
  readonly recommendations: readonly Recommendation[];
  /** Policy-private JSON state (counters, pending step capacity, forecasts). */
  readonly memory: Readonly<Record<string, unknown>>;
}

export type Direction = 'out' | 'in' | 'none';

/** Why a policy wants what it wants: one rule that fired or held. */
export interface Reason {
  /** The metric concerned, or `capacity` for rules about task counts. */
  readonly metric: MetricKey | 'capacity' | 'forecast';
  /** The observed value (absent when the metric was missing). */
  readonly value?: number;
  /** The threshold or target it was compared with. */
  readonly threshold?: number;
  /** A short machine-friendly rule name, e.g. `cpu_above_scale_up`. */
  readonly rule: string;
  /** One sentence an operator can read at 3 a.m. */
  readonly message: string;
}

export type BlockKind =
  | 'cooldown'
  | 'stabilization'
  | 'bounds'
  | 'disabled'
  | 'dry_run'
  | 'missing_data'
  | 'deployment'
  | 'suspended';

/** Something that stopped (or limited) the change the metrics asked for. */
export interface Block {
  readonly kind: BlockKind;
  readonly message: string;
  /** When the block ends (epoch ms), when that is known. */
  readonly until?: number;
}

/** A policy's answer for one service at one evaluation. */
export interface Decision {
  readonly service: ServiceName;
  readonly policy: string;
  readonly at: number;
  /** The desired count before the decision. */
  readonly from: number;
  /** The desired count the policy sets (equal to `from` when nothing changes). */
  readonly to: number;
  readonly direction: Direction;
  /** What the metrics said. */
  readonly reasons: readonly Reason[];
  /** What held the change back or limited it. */
  readonly blocked: readonly Block[];
}

/** Everything a policy sees. Pure input: no clock, no I/O. */
export interface PolicyInput<C> {
  readonly config: C;
  readonly state: ServiceState;
  readonly metrics: MetricsSnapshot;
  readonly tasks: TaskCounts;
  readonly now: number;
}

/** A policy's output: the decision and the state to carry to the next evaluation. */
export interface PolicyOutput {
  readonly decision: Decision;
  readonly state: ServiceState;
}

/** A scaling policy: a pure, deterministic function of its input. */
export interface ScalingPolicy<C> {
  readonly name: string;
  evaluate(input: PolicyInput<C>): PolicyOutput;
}

const EVENT_RETENTION_MS = 60 * 60 * 1000;

/** A fresh state for a service that has never been evaluated. */
export function initialState(service: ServiceName): ServiceState {
  return { service, events: [], metricsHistory: [], recommendations: [], memory: {} };
}

/**
 * Records that a decision's change was applied, so cooldowns and rate limits see it.
 * Call it only after the orchestrator accepted the new desired count.
 */
export function recordApplied(state: ServiceState, event: ScaleEvent): ServiceState {
  const events = [...state.events, event].filter((e) => event.at - e.at <= EVENT_RETENTION_MS);
  return { ...state, events };
}
