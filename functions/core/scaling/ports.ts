/**
 * The scaling controller's ports: what it needs from the world, stated in the domain's terms.
 * AWS (CloudWatch, ECS, Application Auto Scaling), PostgreSQL (the catalog) and the simulated
 * fleet implement them in `functions/adapters/`; the controller in `controller.ts` only sees
 * these interfaces, so it runs the same against AWS, local mode and tests.
 *
 * Times are epoch milliseconds. Every port that talks to the network takes an `AbortSignal`
 * so the caller can keep all calls inside the function's time budget.
 *
 * @example
 * ```ts
 * // A metrics source for tests or local mode: a fixed reading per service.
 * const fixed: MetricsSource = {
 *   read: async (services) => new Map(services.map((s) => [s, { ok: true, metrics: { cpu: 50 } }])),
 * };
 * ```
 */
import type { PolicyName, ScalingConfig, ServiceScalingConfig } from './config.js';
import type { Block, Direction, MetricsSnapshot, Reason, ScalingPolicy, ServiceState, TaskCounts } from './types.js';

/** What triggered an evaluation. */
export type Trigger = 'schedule' | 'alarm' | 'api';

/**
 * What became of a decision.
 *
 * - `applied`: the new desired count was accepted by the orchestrator.
 * - `unchanged`: the policy asked for no change.
 * - `blocked`: the policy asked for a change that something held back (dry run, cooldown,
 *   deployment, suspended scaling, a scale-in without the catalog); see `blocked`.
 * - `failed`: the change was attempted and the orchestrator refused it; see `error`.
 * - `skipped`: no decision could be taken (metrics or task counts unavailable, or another
 *   evaluation held the service's lock); see `error`.
 */
export type Outcome = 'applied' | 'unchanged' | 'blocked' | 'failed' | 'skipped';

/** Raw per-service metrics as read from the monitoring system, before per-task division. */
export interface RawMetrics {
  readonly cpu?: number;
  readonly memory?: number;
  readonly responseTimeMs?: number;
  /** Requests per healthy target in the period. */
  readonly requestCountPerTarget?: number;
  /** 5xx responses from the targets in the period (the whole target group). */
  readonly errorCount?: number;
  /** Active connections on the service's load balancer. */
  readonly activeConnections?: number;
  /** The service's queue backlog (a whole-queue figure). */
  readonly queueDepth?: number;
}

/** One service's metrics reading: values, or why there are none. */
export type MetricsReading =
  | { readonly ok: true; readonly metrics: RawMetrics }
  | { readonly ok: false; readonly error: string };

/** Reads the latest metrics of many services at once. */
export interface MetricsSource {
  /**
   * Reads every metric of every named service for the period ending at `now`. Returns one
   * reading per requested service; a metric without datapoints is absent, never zero.
   */
  read(services: readonly string[], now: number, signal?: AbortSignal): Promise<ReadonlyMap<string, MetricsReading>>;
}

/**
 * A stop (POST /stop) as the orchestrator carries it, beside the catalog's switch: an evaluation
 * without the catalog cannot read the switch, so it reads this instead. `scope` is `*` for the
 * global switch, otherwise the service; `by` says who stopped it and when, as stored.
 */
export interface StopMark {
  readonly scope: string;
  readonly by: string;
}

/**
 * One service's task counts (with the stops marked on it, when the orchestrator keeps them), or
 * why they could not be read.
 */
export type TasksReading =
  | { readonly ok: true; readonly tasks: TaskCounts; readonly stops?: readonly StopMark[] }
  | { readonly ok: false; readonly error: string };

/** The orchestrator whose desired counts the controller changes (ECS, the simulated fleet). */
export interface ScalingTarget {
  /** Reads running, pending and desired counts and deployment state of the named services. */
  describe(services: readonly string[], signal?: AbortSignal): Promise<ReadonlyMap<string, TasksReading>>;
  /** Sets a service's desired count. Throws when the orchestrator refuses. */
  setDesired(service: string, desired: number, signal?: AbortSignal): Promise<void>;
  /**
   * Marks a stop on the orchestrator (`by` set) or clears it (`by` undefined), where
   * {@link describe} reports it in `stops`: scope `*` (the global switch) marks every service.
   * Throws when the orchestrator refuses; an orchestrator without it cannot carry stops.
   */
  markStop?(scope: string, by: string | undefined, signal?: AbortSignal): Promise<void>;
  /**
   * The services this orchestrator can scale (the deployment's topology), so that a
   * configuration naming another one (`workr` for `worker`) is refused rather than stored.
   */
  services?(): readonly string[];
}

/** Which kinds of dynamic scaling an operator suspended for a service. */
export interface Suspension {
  readonly scaleOut: boolean;
  readonly scaleIn: boolean;
}

/**
 * The registry of scalable targets (Application Auto Scaling): keeps each service's min and max
 * visible to other tools and reports suspended scaling.
 */
export interface ScalableTargetRegistry {
  /**
   * Makes the registered bounds match `bounds` (registering only what drifted) and returns each
   * service's suspension. Services the registry could not describe are absent from
   * `suspensions`; bounds it could not register are listed in `warnings`.
   */
  sync(
    bounds: ReadonlyMap<string, { min: number; max: number }>,
    signal?: AbortSignal,
  ): Promise<{ suspensions: ReadonlyMap<string, Suspension>; warnings: readonly string[] }>;
}

/** The wall clock, injected so the core stays deterministic. */
export interface Clock {
  now(): number;
}

/** One recorded decision: the policy's answer plus what the controller did with it. */
export interface DecisionRecord {
  readonly at: number;
  readonly service: string;
  readonly trigger: Trigger;
  readonly policy: string;
  readonly from: number;
  readonly to: number;
  readonly direction: Direction;
  readonly reasons: readonly Reason[];
  readonly blocked: readonly Block[];
  readonly metrics: MetricsSnapshot | null;
  readonly dryRun: boolean;
  readonly outcome: Outcome;
  readonly error?: string;
  /** Who asked, for API-triggered evaluations; the alarm name for alarms. */
  readonly actor?: string;
  /** True when the catalog was unreachable and the controller used its last-known config. */
  readonly degraded: boolean;
  /** The configuration version in force (absent when running from the shipped fallback). */
  readonly configVersion?: number;
}

/** Where decision records are written as structured log lines (always, whatever the catalog does). */
export interface DecisionLog {
  write(record: DecisionRecord): void;
}

/** The runtime configuration in force plus the operator's switches. */
export interface ControlState {
  readonly config: ScalingConfig;
  /** The catalog's configuration version (the API's ETag). */
  readonly version: number;
  /** The global switch (`false` = stopped). */
  readonly globalEnabled: boolean;
  /** Per-service switches; a service without an entry is enabled. */
  readonly serviceEnabled: Readonly<Record<string, boolean>>;
}

/**
 * A service's state as stored. `pending` is a change of desired count an evaluation decided and
 * committed before asking the orchestrator for it; the evaluation clears it when it records the
 * decision. A later evaluation that finds it knows the one before stopped in between (a Lambda
 * timed out, a process was killed) and settles it from the desired count the service reports.
 */
export interface StoredServiceState extends ServiceState {
  readonly pending?: DecisionRecord;
}

/**
 * What stops a service: a switch (scope `*` or the service), or a configuration version that
 * disables it or no longer names it (`removed`).
 */
export type Stopper =
  | { readonly kind: 'switch'; readonly scope: string; readonly changedBy: string }
  | { readonly kind: 'config'; readonly version: number; readonly changedBy: string; readonly removed?: boolean };

/** A switch that is off: who turned it off and when. */
export interface SwitchOff {
  readonly changedBy: string;
  readonly changedAt: Date;
}

/** The switches that stop a service now: the global one, the service's own. */
export interface SwitchesOff {
  readonly global?: SwitchOff | undefined;
  readonly own?: SwitchOff | undefined;
}

/** A stored configuration version and who wrote it. */
export interface StoredControlConfig {
  readonly version: number;
  readonly config: ScalingConfig;
  readonly changedBy: string;
}

/** What the controller may do with one service while it holds that service's lock. */
export interface ServiceSession {
  loadState(): Promise<StoredServiceState | undefined>;
  /**
   * What stops the service now, read under the lock: a switch (the global one or the service's
   * own, POST /stop) or the stored configuration (`enabled: false`, globally or for the service,
   * or the service removed from it);
   * `undefined` while it may be scaled. A stop answered after the evaluation loaded its control
   * state must still hold its change back.
   */
  stoppedBy(): Promise<Stopper | undefined>;
  /**
   * The switches (POST /stop) that are off now, read under the lock: the global one and the
   * service's own, each with who turned it off and when. The controller brings the marks of a
   * stop on the orchestrator in line with these; read under the lock, a stop answered meanwhile
   * waits for the lock (the catalog's awaitChangesInFlight), so its mark is never cleared.
   */
  switchesOff(): Promise<SwitchesOff>;
  /**
   * The stored configuration now, read under the lock (`undefined` while none was ever stored):
   * a `dry_run` or bounds change answered after the evaluation loaded its control state must
   * still hold its change back.
   */
  configuration(): Promise<StoredControlConfig | undefined>;
  saveState(state: StoredServiceState): Promise<void>;
  recordDecision(record: DecisionRecord): Promise<void>;
  /**
   * Aborts shortly before the catalog would end this session's transaction on its own (the
   * lock's idle bound), with time left to record and commit: a call made under the lock (the
   * orchestrator asked for a change) must end by then, or the lock is freed, and a stop
   * answered, while it is still under way.
   */
  readonly expiring: AbortSignal;
}

/** The decisions taken while the catalog was away, delivered once it is back. */
export interface Backlog {
  readonly records: readonly DecisionRecord[];
  /** Decisions logged (as structured log lines) but no longer held in memory. */
  readonly dropped: number;
  /** The span the dropped decisions fall in (epoch ms), when `dropped > 0`. */
  readonly droppedFrom?: number;
  readonly droppedTo?: number;
}

/** The lease every evaluation takes (scheduled, alarm, API, local mode). */
export const EVALUATION_LEASE = 'scaling-evaluation';

/** Someone else holds a lease: who (a label, e.g. the function and request id) and until when. */
export interface LeaseHeld {
  readonly acquired: false;
  readonly holder: string;
  /** Epoch ms. */
  readonly since: number;
  /** Epoch ms: the lease lapses then even if its holder never releases it. */
  readonly until: number;
}

/** A lease this process holds; `release` gives it back (idempotent). */
export interface LeaseGranted {
  readonly acquired: true;
  release(): Promise<void>;
}

export type LeaseOutcome = LeaseGranted | LeaseHeld;

/** How to ask for a lease. */
export interface LeaseRequest {
  /** Recorded as the holder, shown to whoever is refused (never used to decide ownership). */
  readonly owner: string;
  /** The lease lapses after this long: at most the caller's own remaining lifetime. */
  readonly ttlMs: number;
  /** Keep asking for this long while someone else holds it (default 0: answer at once). */
  readonly waitMs?: number;
  readonly signal?: AbortSignal;
}

/** The controller's view of the catalog (PostgreSQL in production and local mode). */
export interface ControllerCatalog {
  /**
   * Takes the named lease, or says who holds it. One evaluation at a time across every Lambda
   * container, local mode and API-triggered evaluations. Throws when the catalog is unreachable.
   */
  acquireLease(name: string, request: LeaseRequest): Promise<LeaseOutcome>;
  /** The configuration and switches in force. Throws when the catalog is unreachable. */
  loadControl(): Promise<ControlState>;
  /**
   * Runs `work` while holding `service`'s evaluation lock, or returns `{ acquired: false }` at
   * once when another evaluation holds it (with `wait: true`, waits for the lock instead).
   * Everything `work` writes commits together.
   */
  withServiceLock<T>(service: string, work: (session: ServiceSession) => Promise<T>, options?: { readonly wait?: boolean }): Promise<{ acquired: true; value: T } | { acquired: false }>;
  /** Records a decision outside any lock (an evaluation that stood aside). */
  recordDecision(record: DecisionRecord): Promise<void>;
  /** Reads a service's stored state without locking it (previews). */
  getServiceState(service: string): Promise<ServiceState | undefined>;
  /** Writes decisions taken while the catalog was unreachable, and a gap row for any dropped. */
  appendBacklog(backlog: Backlog): Promise<void>;
}

/** Looks a policy up by its configured name (`getPolicy` from `policies/index.ts`). */
export type PolicyLookup = (name: PolicyName) => ScalingPolicy<ServiceScalingConfig>;
