/**
 * The scaling controller: one evaluation reads every enabled service's metrics and task counts
 * in bulk, asks the configured policy, applies what the policy decided (unless something holds
 * it back) and records every decision, whatever became of it.
 *
 * It never acts blind:
 * - metrics or task counts that cannot be read mean no decision for that service, recorded as
 *   `skipped` with the error;
 * - a refused desired-count change is recorded as `failed` and nothing is counted: the next
 *   evaluation starts again from what the orchestrator reports;
 * - without the catalog it runs from the last configuration it saw (or the one shipped with the
 *   function), may scale out but never scales in, and keeps its decisions in memory until the
 *   catalog is back (beyond `backlogLimit`, a gap row records how many were logged elsewhere);
 * - a stop (global or per service) means no action at all, and dry run means decisions are
 *   recorded while nothing changes; without the catalog, a stop the orchestrator reports (the
 *   mark the API leaves beside the catalog's switch or `enabled: false`) holds every change back,
 *   recorded `blocked`.
 *
 * @example
 * ```ts
 * const controller = new ScalingController({ metrics, target, registry, catalog, clock, log, policies: getPolicy, fallbackConfig });
 * const result = await controller.evaluate({ trigger: 'schedule' });
 * for (const d of result.decisions) console.log(d.service, d.from, d.to, d.outcome);
 * ```
 */
import { resolveServiceConfig, type ScalingConfig, type ServiceScalingConfig } from './config.js';
import { scaleOutCooldown } from './policies/common.js';
import type {
  Clock,
  ControlState,
  ControllerCatalog,
  DecisionLog,
  DecisionRecord,
  LeaseGranted,
  MetricsReading,
  MetricsSource,
  Outcome,
  PolicyLookup,
  RawMetrics,
  ScalableTargetRegistry,
  ScalingTarget,
  ServiceSession,
  Stopper,
  StopMark,
  StoredServiceState,
  Suspension,
  SwitchOff,
  TasksReading,
  Trigger,
} from './ports.js';
import { EVALUATION_LEASE } from './ports.js';
import { configMarkValue, disabledByConfig, switchMarkValue } from './stop-marks.js';
import { initialState, recordApplied, type Block, type Direction, type MetricsSnapshot, type Reason, type ScalingPolicy, type ServiceState, type TaskCounts } from './types.js';

export interface ControllerDeps {
  readonly metrics: MetricsSource;
  readonly target: ScalingTarget;
  readonly registry: ScalableTargetRegistry;
  readonly catalog: ControllerCatalog;
  readonly clock: Clock;
  readonly log: DecisionLog;
  readonly policies: PolicyLookup;
  /** The configuration shipped with the function, used until the catalog has been read once. */
  readonly fallbackConfig: ScalingConfig;
  /** How many decisions to hold in memory while the catalog is away (default 1000). */
  readonly backlogLimit?: number;
  /** Names this process as the evaluation lease's holder (e.g. the function name). */
  readonly leaseOwner?: string;
}

/** How long an evaluation holds its lease when the caller does not say (local mode, tests). */
export const DEFAULT_LEASE_TTL_MS = 60_000;

export interface EvaluateRequest {
  readonly trigger: Trigger;
  /** Restricts the evaluation to these services (an alarm's service, an API call's selection). */
  readonly services?: readonly string[];
  /** Who asked (API user, alarm name); stored with the decisions. */
  readonly actor?: string;
  /** Aborts network calls when the function's time budget runs out. */
  readonly signal?: AbortSignal;
  /**
   * How long this evaluation may hold the evaluation lease: at most its caller's remaining
   * lifetime (a Lambda's remaining time), so a container killed mid-evaluation frees it.
   * Default {@link DEFAULT_LEASE_TTL_MS}.
   */
  readonly leaseTtlMs?: number;
  /** How long to wait for a running evaluation to finish before standing aside (default 0). */
  readonly leaseWaitMs?: number;
}

/** Who held the evaluation lease when an evaluation stood aside. */
export interface BusyLease {
  readonly holder: string;
  readonly since: number;
  readonly until: number;
}

export interface EvaluationResult {
  readonly at: number;
  /** True when the global switch is off: nothing was read, decided or changed. */
  readonly stopped: boolean;
  /** True when the catalog was unreachable at some point of this evaluation. */
  readonly degraded: boolean;
  readonly configVersion?: number;
  readonly decisions: readonly DecisionRecord[];
  /** Problems that did not stop the evaluation (e.g. the scalable-target registry failed). */
  readonly warnings: readonly string[];
  /**
   * Set when another evaluation held the evaluation lease: this one read, decided and changed
   * nothing, and says who was running.
   */
  readonly busy?: BusyLease;
}

/**
 * Turns raw per-service metrics into the policy's snapshot: per-task figures are divided by the
 * running tasks, and anything that cannot be computed is left out (never zero).
 */
export function toSnapshot(raw: RawMetrics, running: number, at: number): MetricsSnapshot {
  const perTask = (v: number | undefined): number | undefined => (v === undefined || running <= 0 ? undefined : v / running);
  const requestCount = raw.requestCountPerTarget === undefined || running <= 0 ? undefined : raw.requestCountPerTarget * running;
  const errorRate = raw.errorCount === undefined || requestCount === undefined || requestCount <= 0 ? undefined : Math.min(100, (100 * raw.errorCount) / requestCount);
  const entries: Array<[string, number | undefined]> = [
    ['cpu', raw.cpu],
    ['memory', raw.memory],
    ['responseTimeMs', raw.responseTimeMs],
    ['connectionsPerTask', perTask(raw.activeConnections)],
    ['requestCount', requestCount],
    ['errorRate', errorRate],
    ['queueDepthPerTask', perTask(raw.queueDepth)],
  ];
  return { at, ...Object.fromEntries(entries.filter(([, v]) => v !== undefined && Number.isFinite(v))) } as MetricsSnapshot;
}

/** A plan to change the count, held back because scaling was stopped after the evaluation began. */
function stoppedMeanwhile(plan: Plan, stop: Stopper): Plan {
  const { change: _change, ...held } = plan;
  const by =
    stop.kind === 'config'
      ? stop.removed === true
        ? `${plan.record.service} was removed from the configuration by ${stop.changedBy} (configuration version ${stop.version})`
        : `scaling was disabled by ${stop.changedBy} (configuration version ${stop.version})`
      : stop.scope === '*'
        ? `scaling was stopped by ${stop.changedBy}`
        : `scaling of ${plan.record.service} was stopped by ${stop.changedBy}`;
  const block: Block = { kind: 'disabled', message: `${by} while this evaluation ran: nothing is changed` };
  return { ...held, record: { ...plan.record, outcome: 'blocked', blocked: [...plan.record.blocked, block] } };
}

/**
 * The signal of a call made under a service's lock: the evaluation's own, and the lock's
 * `expiring`, which fires before the catalog would end the transaction holding the lock.
 */
function underLock(signal: AbortSignal | undefined, session: ServiceSession): AbortSignal {
  return signal === undefined ? session.expiring : AbortSignal.any([signal, session.expiring]);
}

/**
 * A decision taken without the catalog for a service the orchestrator reports stopped (the mark
 * a stop leaves beside the catalog's switch): nothing is changed and the record says who stopped
 * it. The state stays as it was, as it does for a stopped service evaluated with the catalog.
 */
function markedStopped(plan: Plan, state: ServiceState, stop: StopMark): Plan {
  if (plan.record.outcome === 'skipped') return plan;
  const { change: _change, ...held } = plan;
  const by = stop.scope === '*' ? `scaling was stopped by ${stop.by}` : `scaling of ${plan.record.service} was stopped by ${stop.by}`;
  const block: Block = { kind: 'disabled', message: `${by}: the catalog is unreachable, nothing is changed` };
  return { ...held, state, record: { ...plan.record, outcome: 'blocked', blocked: [...plan.record.blocked, block] } };
}

/**
 * Blocks that forbid applying a change the decision still carries (a dry run keeps the computed
 * count so the history shows what would have happened). Other kinds (bounds, cooldown) are
 * already reflected in the decision's `to`.
 */
const HOLDING_KINDS: ReadonlySet<Block['kind']> = new Set(['dry_run', 'deployment', 'suspended', 'missing_data', 'disabled']);

function directionOf(from: number, to: number): Direction {
  if (to > from) return 'out';
  return to < from ? 'in' : 'none';
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}

interface ServiceInputs {
  readonly cfg: ServiceScalingConfig;
  readonly metrics: MetricsReading | undefined;
  readonly tasks: TasksReading | undefined;
  readonly suspension: Suspension | undefined;
  /** A stop the orchestrator reports for the service (its own, or the global one on any service): heeded without the catalog. */
  readonly stop?: StopMark | undefined;
}

interface Outcomes {
  readonly record: DecisionRecord;
  readonly state: ServiceState;
}

/** A decision before the orchestrator is asked: `change` is set when it is to be asked. */
interface Plan extends Outcomes {
  readonly change?: { readonly from: number; readonly to: number };
}

/** The evaluation service. Keep one instance per process: it carries the backlog and caches. */
export class ScalingController {
  private lastControl: ControlState | undefined;
  private readonly lastStates = new Map<string, ServiceState>();
  private backlog: DecisionRecord[] = [];
  private dropped = 0;
  private droppedFrom: number | undefined;
  private droppedTo: number | undefined;
  private readonly backlogLimit: number;
  /** A lease this process could not give back (the catalog failed under it): retried first. */
  private unreleased: LeaseGranted | undefined;
  /** Per service, the time of a change whose record this process holds in its backlog while its `pending` may still be stored. */
  private readonly heldPending = new Map<string, number>();

  constructor(private readonly deps: ControllerDeps) {
    this.backlogLimit = deps.backlogLimit ?? 1000;
  }

  /** Decisions taken without the catalog and not yet written to it (held + dropped). */
  pendingBacklog(): { held: number; dropped: number } {
    return { held: this.backlog.length, dropped: this.dropped };
  }

  /**
   * Runs one evaluation under the evaluation lease, so evaluations never overlap (whatever
   * triggered them, wherever they run). When another evaluation holds the lease this one
   * stands aside at once (after `leaseWaitMs`) and reports it in `busy`. When the catalog
   * cannot grant a lease at all, the evaluation runs without one: it is degraded anyway (scales
   * out only), and a degraded evaluation racing another sets the same absolute desired count.
   * Never throws for a single service's trouble; see {@link EvaluationResult}.
   */
  async evaluate(request: EvaluateRequest): Promise<EvaluationResult> {
    const now = this.deps.clock.now();
    const warnings: string[] = [];
    let lease: LeaseGranted | undefined;
    try {
      // Otherwise this container's own lost lease would make it stand aside until it lapses.
      if (this.unreleased) {
        await this.unreleased.release();
        this.unreleased = undefined;
      }
      const owner = `${this.deps.leaseOwner ?? 'scaling-controller'} (${request.trigger}${request.actor === undefined ? '' : ` by ${request.actor}`})`;
      const got = await this.deps.catalog.acquireLease(EVALUATION_LEASE, {
        owner,
        ttlMs: request.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
        ...(request.leaseWaitMs === undefined ? {} : { waitMs: request.leaseWaitMs }),
        ...(request.signal === undefined ? {} : { signal: request.signal }),
      });
      if (!got.acquired) {
        const busy = { holder: got.holder, since: got.since, until: got.until };
        const message = `another evaluation is running (${busy.holder}, since ${new Date(busy.since).toISOString()}): this one stood aside and changed nothing`;
        return { at: now, stopped: false, degraded: false, decisions: [], warnings: [message], busy };
      }
      lease = got;
    } catch (err) {
      warnings.push(`the evaluation lease could not be taken (catalog unreachable?), evaluating without it: ${messageOf(err)}`);
    }
    let result: EvaluationResult;
    try {
      result = await this.evaluateHeld(request, now, warnings);
    } catch (err) {
      await lease?.release().catch(() => {
        this.unreleased = lease;
      });
      throw err;
    }
    try {
      await lease?.release();
    } catch (err) {
      this.unreleased = lease;
      return { ...result, warnings: [...result.warnings, `the evaluation lease was not released (it lapses by itself): ${messageOf(err)}`] };
    }
    return result;
  }

  private async evaluateHeld(request: EvaluateRequest, now: number, warnings: string[]): Promise<EvaluationResult> {
    const { metrics, target, registry } = this.deps;
    let degraded = false;
    let control: ControlState;
    try {
      control = await this.deps.catalog.loadControl();
      this.lastControl = control;
      await this.flushBacklog(warnings);
    } catch (err) {
      degraded = true;
      warnings.push(`catalog unreachable, using the last-known configuration: ${messageOf(err)}`);
      control = this.lastControl ?? { config: this.deps.fallbackConfig, version: 0, globalEnabled: this.deps.fallbackConfig.enabled, serviceEnabled: {} };
    }
    const configVersion = control.version > 0 ? control.version : undefined;
    const base = { at: now, degraded, configVersion, warnings };
    if (!control.globalEnabled || !control.config.enabled) {
      if (!degraded) await this.reconcileMarks(control, undefined, request.signal, warnings);
      return { ...base, stopped: true, decisions: [] };
    }

    const wanted = request.services ? new Set(request.services) : undefined;
    const services = Object.keys(control.config.services)
      .filter((s) => wanted === undefined || wanted.has(s))
      .map((s) => resolveServiceConfig(control.config, s))
      .filter((cfg) => cfg.enabled && control.serviceEnabled[cfg.service] !== false);
    if (services.length === 0) {
      if (!degraded) await this.reconcileMarks(control, undefined, request.signal, warnings);
      return { ...base, stopped: false, decisions: [] };
    }

    const names = services.map((c) => c.service);
    // Where the orchestrator carries the marks of a stop, every configured service is described:
    // without the catalog, a global stop marked on only some of them (ECS refused the others)
    // must still be seen by an evaluation of one service (an alarm's); with it, the marks of the
    // stopped services are brought in line with the switches too. Same DescribeServices calls
    // (10 services each) unless an evaluation is restricted to some services.
    const described = target.markStop === undefined ? names : Object.keys(control.config.services);
    const bounds = new Map(services.map((c) => [c.service, { min: c.min_instances, max: c.max_instances }]));
    const failAll = (what: string, of: readonly string[] = names) => (err: unknown) => new Map<string, { ok: false; error: string }>(of.map((n) => [n, { ok: false, error: `${what}: ${messageOf(err)}` }]));
    const [metricReadings, taskReadings, suspensions] = await Promise.all([
      metrics.read(names, now, request.signal).catch(failAll('metrics unavailable')),
      target.describe(described, request.signal).catch(failAll('task counts unavailable', described)),
      registry.sync(bounds, request.signal).then(
        (synced) => {
          warnings.push(...synced.warnings);
          return synced.suspensions;
        },
        (err: unknown) => {
          warnings.push(`scalable targets could not be described; suspended scaling is unknown: ${messageOf(err)}`);
          return new Map<string, Suspension>();
        },
      ),
    ]);

    // The catalog's switches are what count; these marks stand in for them when it is away. The
    // global stop marks every service, so finding it on any one stops them all.
    const marks = [...taskReadings.values()].flatMap((r) => (r.ok ? (r.stops ?? []) : []));
    const globalStop = marks.find((m) => m.scope === '*');
    const decisions: DecisionRecord[] = [];
    for (const cfg of services) {
      const inputs: ServiceInputs = {
        cfg,
        metrics: metricReadings.get(cfg.service),
        tasks: taskReadings.get(cfg.service),
        suspension: suspensions.get(cfg.service),
        stop: marks.find((m) => m.scope === cfg.service) ?? globalStop,
      };
      const ctx: EvalContext = { now, request, degraded, configVersion };
      const record = degraded ? await this.evaluateWithoutCatalog(inputs, ctx) : await this.evaluateWithCatalog(inputs, ctx, warnings);
      if (record.degraded) degraded = true;
      this.deps.log.write(record);
      decisions.push(record);
    }
    if (!degraded) await this.reconcileMarks(control, taskReadings, request.signal, warnings);
    return { ...base, degraded, stopped: false, decisions };
  }

  /**
   * Brings the marks of a stop on the orchestrator in line with the catalog's stops, as read by
   * an evaluation with the catalog: the switches and `enabled: false` in the stored configuration
   * (see stop-marks.ts). A stop, a start or a configuration change answered while the
   * orchestrator refused its mark (a 503 nobody retried), a configuration written without the
   * API, or two answered at once whose marks landed in the other order, would otherwise decide the
   * next evaluation without the catalog. Costs nothing while they agree (the tags come with
   * DescribeServices); each difference is checked again under the service's lock, so a stop
   * answered meanwhile (which waits for that lock) keeps its mark. The marking calls are bounded
   * by the lock's `expiring` as UpdateService is. A failure is a warning: the next evaluation
   * tries again.
   */
  private async reconcileMarks(control: ControlState, readings: ReadonlyMap<string, TasksReading> | undefined, signal: AbortSignal | undefined, warnings: string[]): Promise<void> {
    const { target, catalog } = this.deps;
    const markStop = target.markStop?.bind(target);
    if (markStop === undefined) return;
    const all = Object.keys(control.config.services);
    try {
      const read = readings ?? (await target.describe(all, signal));
      const marked = (s: string): { readonly global: boolean; readonly own: boolean } | undefined => {
        const r = read.get(s);
        if (r?.ok !== true) return undefined;
        return { global: (r.stops ?? []).some((m) => m.scope === '*'), own: (r.stops ?? []).some((m) => m.scope === s) };
      };
      // `enabled: false` stored in the configuration stops a scope as its switch does (version 0:
      // no configuration stored, the function's own is the one an evaluation without the catalog uses).
      const byConfig = (scope: string): boolean => control.version > 0 && disabledByConfig(control.config, scope);
      const wantGlobal = !control.globalEnabled || byConfig('*');
      const drifted = all.filter((s) => {
        const m = marked(s);
        return m !== undefined && (m.global !== wantGlobal || m.own !== (control.serviceEnabled[s] === false || byConfig(s)));
      });
      let globalDone = false;
      for (const service of drifted) {
        const m = marked(service);
        if (m === undefined) continue;
        await catalog.withServiceLock(service, async (session) => {
          const off = await session.switchesOff();
          const stored = await session.configuration();
          const by = (sw: SwitchOff | undefined): string | undefined => (sw === undefined ? undefined : switchMarkValue(sw.changedBy, sw.changedAt));
          const fromConfig = (scope: string): string | undefined =>
            stored !== undefined && disabledByConfig(stored.config, scope) ? configMarkValue(stored.changedBy, stored.version) : undefined;
          const own = by(off.own) ?? fromConfig(service);
          const global = by(off.global) ?? fromConfig('*');
          // Made under the lock like UpdateService, and cut the same way before the catalog ends
          // the transaction by itself: a stop answered once the lock is freed would otherwise
          // have its mark overwritten by a call still under way (an SDK retry).
          const bounded = underLock(signal, session);
          if ((own !== undefined) !== m.own) await markStop(service, own, bounded);
          if (!globalDone && (global !== undefined) !== m.global) {
            await markStop('*', global, bounded);
            globalDone = true;
          }
        });
      }
    } catch (err) {
      warnings.push(`the marks of the stops on the orchestrator could not be brought in line with the catalog (the next evaluation tries again): ${messageOf(err)}`);
    }
  }

  /**
   * A dry-run evaluation for the API: what the controller would decide for each service right
   * now and why, or why not. It reads what `evaluate` reads (the catalog's state, metrics, task
   * counts) but changes nothing: no desired count is set, no state or decision is stored, the
   * backlog is left alone and the scalable-target registry is not touched (so suspended scaling
   * is not reported here). Stopped services are included, blocked as `disabled`.
   */
  async preview(request: Omit<EvaluateRequest, 'trigger'>): Promise<EvaluationResult> {
    const { clock, metrics, target } = this.deps;
    const now = clock.now();
    const warnings: string[] = ['preview: suspended scaling on the scalable targets is not checked'];
    let degraded = false;
    let control: ControlState;
    try {
      control = await this.deps.catalog.loadControl();
    } catch (err) {
      degraded = true;
      warnings.push(`catalog unreachable, using the last-known configuration: ${messageOf(err)}`);
      control = this.lastControl ?? { config: this.deps.fallbackConfig, version: 0, globalEnabled: this.deps.fallbackConfig.enabled, serviceEnabled: {} };
    }
    const configVersion = control.version > 0 ? control.version : undefined;
    const wanted = request.services ? new Set(request.services) : undefined;
    const globallyOn = control.globalEnabled && control.config.enabled;
    const services = Object.keys(control.config.services)
      .filter((s) => wanted === undefined || wanted.has(s))
      .map((s) => {
        const cfg = resolveServiceConfig(control.config, s);
        const enabled = globallyOn && cfg.enabled && control.serviceEnabled[s] !== false;
        return { ...cfg, enabled, dry_run: true };
      });
    const names = services.map((c) => c.service);
    const failAll = (what: string) => (err: unknown) => new Map<string, { ok: false; error: string }>(names.map((n) => [n, { ok: false, error: `${what}: ${messageOf(err)}` }]));
    const [metricReadings, taskReadings] = await Promise.all([
      metrics.read(names, now, request.signal).catch(failAll('metrics unavailable')),
      target.describe(names, request.signal).catch(failAll('task counts unavailable')),
    ]);
    const decisions: DecisionRecord[] = [];
    const ctx: EvalContext = { now, request: { ...request, trigger: 'api' }, degraded, configVersion };
    for (const cfg of services) {
      const stored = degraded ? undefined : await this.deps.catalog.getServiceState(cfg.service).catch(() => undefined);
      const state = stored ?? this.lastStates.get(cfg.service) ?? initialState(cfg.service);
      const inputs: ServiceInputs = { cfg, metrics: metricReadings.get(cfg.service), tasks: taskReadings.get(cfg.service), suspension: undefined };
      decisions.push((await this.decideAndApply(inputs, state, ctx)).record);
    }
    return { at: now, degraded, configVersion, warnings, stopped: !globallyOn, decisions };
  }

  /**
   * Evaluates one service in two transactions under its lock. The first settles what a stopped
   * evaluation left (see {@link settle}) and decides; a decision that changes nothing is
   * recorded there, one that changes the desired count is stored as the service's `pending`
   * change, committed before the orchestrator is asked. The second looks at the switches and the
   * configuration again (see {@link heldMeanwhile}), asks the orchestrator while holding the
   * lock, records the outcome and clears `pending`, with the change counted in the state (the
   * cooldown starts). A process killed in between leaves `pending` for the next evaluation,
   * which records the change and starts its cooldown if the service shows it.
   */
  private async evaluateWithCatalog(inputs: ServiceInputs, ctx: EvalContext, warnings: string[]): Promise<DecisionRecord> {
    const service = inputs.cfg.service;
    let done: Outcomes | undefined;
    let pendingStored: number | undefined;
    let heldBack: Outcomes | undefined;
    try {
      const planned = await this.deps.catalog.withServiceLock(service, async (session) => {
        const { state, settled, unsettled } = this.settle(await session.loadState(), inputs, ctx);
        if (settled !== undefined) await session.recordDecision(settled);
        const decided = this.decide(inputs, state, ctx);
        // The switches were read when the evaluation began, seconds of metric reads ago: a stop
        // answered since then holds the change back (the stop's transaction has committed).
        const stop = decided.change ? await session.stoppedBy() : undefined;
        const plan = stop === undefined ? decided : stoppedMeanwhile(decided, stop);
        if (stop !== undefined) heldBack = plan;
        const pending = plan.change ? plan.record : unsettled;
        await session.saveState(pending === undefined ? plan.state : { ...plan.state, pending });
        if (!plan.change) await session.recordDecision(plan.record);
        return plan;
      });
      if (!planned.acquired) {
        // Not always another evaluation: a stop or a configuration change holds the lock shared
        // for the instant of its wait for the evaluations in flight (longer while it waits for one).
        const aside = this.skipped(
          inputs,
          ctx,
          "the service's lock is held (by another evaluation, or by a stop or a configuration change waiting for one to finish): this evaluation stood aside and changed nothing; the next one decides",
        );
        await this.deps.catalog.recordDecision(aside);
        return aside;
      }
      const plan = planned.value;
      if (!plan.change) {
        this.lastStates.set(service, plan.state);
        return plan.record;
      }
      pendingStored = plan.record.at;
      const finished = await this.deps.catalog.withServiceLock(
        service,
        async (session) => {
          // Only an evaluation without the evaluation lease (the catalog failed it) can have
          // settled this change meanwhile; its record then stands and nothing more is changed.
          if ((await session.loadState())?.pending?.at !== plan.record.at) return undefined;
          // Looked at again under the lock that is held until the orchestrator has answered: a
          // stop or a configuration change is answered only once that lock is free (the
          // catalog's awaitChangesInFlight), so none answered before the call is missed.
          const held = await this.heldMeanwhile(plan, inputs.cfg, session);
          if (held !== undefined) heldBack = held;
          // Cut before the catalog ends this transaction by itself: the lock freed meanwhile, a
          // stop would be answered while the call (an SDK retry) could still change the count.
          const signal = underLock(ctx.request.signal, session);
          const outcome = held ?? (await this.apply(plan, { ...ctx, request: { ...ctx.request, signal } }));
          if (held === undefined && outcome.record.outcome === 'failed' && signal.aborted) {
            // Cut (by this bound or by the invocation's budget), the request may have reached ECS
            // already: whether the change took effect is unknown. `pending` stays stored, as after a
            // crash, and the next evaluation records it as applied or failed from the desired count
            // the service reports.
            const by = session.expiring.aborted ? "before the catalog would end the transaction holding the service's lock" : "at the evaluation's deadline";
            return { state: plan.state, record: { ...outcome.record, error: `${outcome.record.error ?? 'the call was cut'}: cut ${by}; whether the change took effect is unknown, it stays pending and the next evaluation records it from the desired count the service reports` } };
          }
          if (held === undefined) done = outcome;
          await session.saveState(outcome.state);
          await session.recordDecision(outcome.record);
          return outcome;
        },
        { wait: true },
      );
      const outcome = finished.acquired ? finished.value : undefined;
      if (outcome === undefined) return { ...plan.record, outcome: 'skipped', error: 'another evaluation settled this change before it was asked for: nothing is changed' };
      this.lastStates.set(service, outcome.state);
      return outcome.record;
    } catch (err) {
      // The catalog failed under us. What was applied stays applied: keep the record for the
      // catalog's history and the state for the next evaluation of this container.
      warnings.push(`catalog failed while evaluating ${service}: ${messageOf(err)}`);
      if (done !== undefined) {
        const late: DecisionRecord = { ...done.record, degraded: true };
        this.lastStates.set(service, done.state);
        // Its `pending` may still be stored: the backlog records it, so settling must not.
        this.heldPending.set(service, done.record.at);
        this.hold(late);
        return late;
      }
      // A stop or a configuration change seen under the lock holds, even if its record could not
      // be committed: deciding again from the configuration loaded before it would not see it.
      if (heldBack !== undefined) {
        const late: DecisionRecord = { ...heldBack.record, degraded: true };
        this.lastStates.set(service, heldBack.state);
        if (pendingStored !== undefined) this.heldPending.set(service, pendingStored);
        this.hold(late);
        return late;
      }
      // A `pending` stored by the first transaction is this evaluation's own: what follows decides
      // again without the catalog and holds its record, so settling must not record that too.
      if (pendingStored !== undefined) this.heldPending.set(service, pendingStored);
      return this.evaluateWithoutCatalog(inputs, { ...ctx, degraded: true });
    }
  }

  /**
   * What holds back a change decided (and re-checked) in the evaluation's first transaction,
   * looked at again just before the orchestrator is asked: a stop, `dry_run` switched on, or
   * bounds that no longer contain the new count. Another configuration change (thresholds) lets
   * the change go ahead: the next evaluation decides under it.
   */
  private async heldMeanwhile(plan: Plan, decidedUnder: ServiceScalingConfig, session: ServiceSession): Promise<Outcomes | undefined> {
    const stop = await session.stoppedBy();
    if (stop !== undefined) return stoppedMeanwhile(plan, stop);
    const stored = await session.configuration();
    if (stored === undefined) return undefined;
    const now = resolveServiceConfig(stored.config, decidedUnder.service);
    const by = `${stored.changedBy} (configuration version ${stored.version})`;
    const { change: _change, ...rest } = plan;
    const hold = (block: Block, dryRun: boolean): Outcomes => ({ state: rest.state, record: { ...rest.record, dryRun, outcome: 'blocked', blocked: [...rest.record.blocked, block] } });
    if (now.dry_run && !decidedUnder.dry_run) {
      return hold({ kind: 'dry_run', message: `dry run was switched on by ${by} while this evaluation ran: the decision is recorded and nothing is changed` }, true);
    }
    const to = plan.record.to;
    if (to > now.max_instances || to < now.min_instances) {
      return hold({ kind: 'bounds', message: `the instance bounds became ${now.min_instances}..${now.max_instances} (${stored.changedBy}, configuration version ${stored.version}) while this evaluation ran: ${to} is outside them, nothing is changed` }, plan.record.dryRun);
    }
    return undefined;
  }

  /**
   * The stored state to decide from, and what to do with a change a stopped evaluation left
   * `pending`: the service reporting its target count means the change took effect (recorded
   * as applied, counted in the state, so its cooldown holds); any other count means it did not,
   * or was undone (recorded as failed). Without task counts it stays pending.
   */
  private settle(stored: StoredServiceState | undefined, inputs: ServiceInputs, ctx: EvalContext): { state: ServiceState; settled?: DecisionRecord; unsettled?: DecisionRecord } {
    const service = inputs.cfg.service;
    if (stored === undefined) return { state: this.lastStates.get(service) ?? initialState(service) };
    const { pending, ...state } = stored;
    if (pending === undefined) return { state };
    if (this.heldPending.get(service) === pending.at) {
      this.heldPending.delete(service);
      return { state: this.lastStates.get(service) ?? state };
    }
    if (!inputs.tasks?.ok) return { state, unsettled: pending };
    const desired = inputs.tasks.tasks.desired;
    const stopped = `the evaluation that took this decision stopped before recording it; found by the evaluation of ${new Date(ctx.now).toISOString()}`;
    if (desired === pending.to) {
      const note: Reason = { metric: 'capacity', value: desired, threshold: pending.to, rule: 'recorded_after_stop', message: `${stopped}, when the service reported ${desired} desired tasks: the change took effect` };
      return { state: recordApplied(state, { at: pending.at, from: pending.from, to: pending.to }), settled: { ...pending, outcome: 'applied', reasons: [...pending.reasons, note] } };
    }
    return { state, settled: { ...pending, outcome: 'failed', error: `${stopped}, when the service reported ${desired} desired tasks, not ${pending.to}: the change did not take effect, or was undone` } };
  }

  private async evaluateWithoutCatalog(inputs: ServiceInputs, ctx: EvalContext): Promise<DecisionRecord> {
    const service = inputs.cfg.service;
    const state = this.lastStates.get(service) ?? initialState(service);
    const degraded = { ...ctx, degraded: true };
    // A stop answered after this container last read the catalog (or before a cold start) is
    // only known from its mark on the orchestrator.
    const plan = this.decide(inputs, state, degraded);
    const { record, state: next } = await this.apply(inputs.stop === undefined ? plan : markedStopped(plan, state, inputs.stop), degraded);
    this.lastStates.set(service, next);
    this.hold(record);
    return record;
  }

  private hold(record: DecisionRecord): void {
    this.backlog.push(record);
    while (this.backlog.length > this.backlogLimit) {
      const oldest = this.backlog.shift();
      if (oldest === undefined) break;
      this.dropped += 1;
      this.droppedFrom = Math.min(this.droppedFrom ?? oldest.at, oldest.at);
      this.droppedTo = Math.max(this.droppedTo ?? oldest.at, oldest.at);
    }
  }

  private async flushBacklog(warnings: string[]): Promise<void> {
    if (this.backlog.length === 0 && this.dropped === 0) return;
    const backlog = { records: this.backlog, dropped: this.dropped, droppedFrom: this.droppedFrom, droppedTo: this.droppedTo };
    try {
      await this.deps.catalog.appendBacklog(backlog);
      this.backlog = [];
      this.dropped = 0;
      this.droppedFrom = undefined;
      this.droppedTo = undefined;
    } catch (err) {
      warnings.push(`decisions taken without the catalog could not be written yet: ${messageOf(err)}`);
    }
  }

  private skipped(inputs: ServiceInputs, ctx: EvalContext, error: string): DecisionRecord {
    const desired = inputs.tasks?.ok ? inputs.tasks.tasks.desired : 0;
    return {
      at: ctx.now,
      service: inputs.cfg.service,
      trigger: ctx.request.trigger,
      policy: inputs.cfg.policy,
      from: desired,
      to: desired,
      direction: 'none',
      reasons: [],
      blocked: [],
      metrics: null,
      dryRun: inputs.cfg.dry_run,
      outcome: 'skipped',
      error,
      ...(ctx.request.actor === undefined ? {} : { actor: ctx.request.actor }),
      degraded: ctx.degraded,
      ...(ctx.configVersion === undefined ? {} : { configVersion: ctx.configVersion }),
    };
  }

  /** Decides and, unless held back, changes the desired count (previews). */
  private async decideAndApply(inputs: ServiceInputs, state: ServiceState, ctx: EvalContext): Promise<Outcomes> {
    return this.apply(this.decide(inputs, state, ctx), ctx);
  }

  /** Asks the orchestrator for the plan's change, if it has one; a refusal is recorded as `failed`. */
  private async apply(plan: Plan, ctx: EvalContext): Promise<Outcomes> {
    const { change } = plan;
    if (change === undefined) return { record: plan.record, state: plan.state };
    try {
      await this.deps.target.setDesired(plan.record.service, change.to, ctx.request.signal);
      return { record: plan.record, state: recordApplied(plan.state, { at: ctx.now, from: change.from, to: change.to }) };
    } catch (err) {
      return { record: { ...plan.record, outcome: 'failed', error: messageOf(err) }, state: plan.state };
    }
  }

  /** What the policy and the controller's own rules decide; a decision to change the count carries `change` and the outcome `applied`, to be confirmed by {@link apply}. */
  private decide(inputs: ServiceInputs, state: ServiceState, ctx: EvalContext): Plan {
    const { cfg } = inputs;
    if (!inputs.tasks?.ok) return { record: this.skipped(inputs, ctx, inputs.tasks?.error ?? 'task counts unavailable'), state };
    if (!inputs.metrics?.ok) return { record: this.skipped(inputs, ctx, inputs.metrics?.error ?? 'metrics unavailable'), state };
    const tasks = inputs.tasks.tasks;
    const snapshot = toSnapshot(inputs.metrics.metrics, tasks.running, ctx.now);
    let policy: ScalingPolicy<ServiceScalingConfig>;
    let evaluated: Evaluated;
    try {
      policy = this.deps.policies(cfg.policy);
      evaluated = this.runPolicy(policy, cfg, state, snapshot, tasks, ctx);
    } catch (err) {
      // One service's broken policy must not stop the others from being evaluated.
      return { record: { ...this.skipped(inputs, ctx, `policy ${cfg.policy} failed: ${messageOf(err)}`), metrics: snapshot }, state };
    }
    const from = tasks.desired;
    const to = evaluated.to;
    const direction = directionOf(from, to);
    // The policies already hold scale-ins during deployments and mark dry runs; the controller
    // enforces the same rules (and its own) without repeating a block the policy reported.
    const reported = new Set(evaluated.blocked.map((b) => b.kind));
    const held = this.controllerBlocks(direction, tasks, inputs.suspension, cfg, ctx).filter((b) => !reported.has(b.kind));
    const blocked: Block[] = [...evaluated.blocked, ...held];
    const holds = blocked.some((b) => HOLDING_KINDS.has(b.kind));
    const changes = direction !== 'none' && !holds;
    const outcome: Outcome = changes ? 'applied' : direction === 'none' && blocked.length === 0 ? 'unchanged' : 'blocked';
    const record: DecisionRecord = {
      at: ctx.now,
      service: cfg.service,
      trigger: ctx.request.trigger,
      policy: policy.name,
      from,
      to,
      direction,
      reasons: evaluated.reasons,
      blocked,
      metrics: snapshot,
      dryRun: cfg.dry_run,
      outcome,
      ...(ctx.request.actor === undefined ? {} : { actor: ctx.request.actor }),
      degraded: ctx.degraded,
      ...(ctx.configVersion === undefined ? {} : { configVersion: ctx.configVersion }),
    };
    return { record, state: evaluated.state, ...(changes ? { change: { from, to } } : {}) };
  }

  /**
   * Runs the policy. For an alarm during a scale-out cooldown that held the policy back it
   * applies AWS's rule: the policy is asked again as if the in-progress scale-out had not
   * happened, and only the difference between that answer and the capacity already set is added.
   * A policy that no cooldown held (ca-dms, which has none and counts pending tasks itself) is
   * asked once, as the schedule and the simulator ask it: asked again from the capacity before
   * its last scale-out, it would size for a climb from there and add a task it does not need.
   */
  private runPolicy(
    policy: ScalingPolicy<ServiceScalingConfig>,
    cfg: ServiceScalingConfig,
    state: ServiceState,
    metrics: MetricsSnapshot,
    tasks: TaskCounts,
    ctx: EvalContext,
  ): Evaluated {
    const plain = policy.evaluate({ config: cfg, state, metrics, tasks, now: ctx.now });
    const plainResult = { to: plain.decision.to, reasons: plain.decision.reasons, blocked: plain.decision.blocked, state: plain.state };
    const cooldown = scaleOutCooldown(state, ctx.now, cfg.cooldown_out * 1000);
    const heldByCooldown = plain.decision.blocked.some((b) => b.kind === 'cooldown');
    if (ctx.request.trigger !== 'alarm' || cooldown === undefined || !heldByCooldown || plain.decision.to > tasks.desired) return plainResult;
    // The chain of scale-outs in cooldown starts with the newest scale-out that left `base`.
    const chainStart = [...state.events].reverse().find((e) => e.to > e.from && e.from === cooldown.base);
    const before = { ...state, events: state.events.filter((e) => chainStart === undefined || e.at < chainStart.at) };
    const relaxed = policy.evaluate({ config: cfg, state: before, metrics, tasks: { ...tasks, desired: cooldown.base }, now: ctx.now });
    if (relaxed.decision.to <= tasks.desired) return plainResult;
    const note: Reason = {
      metric: 'capacity',
      value: tasks.desired,
      threshold: relaxed.decision.to,
      rule: 'alarm_scale_out_during_cooldown',
      message: `alarm during the scale-out cooldown: capacity added since ${cooldown.base} counts, so only the difference (${relaxed.decision.to - tasks.desired}) is added`,
    };
    return { to: relaxed.decision.to, reasons: [...relaxed.decision.reasons, note], blocked: [], state: { ...relaxed.state, events: state.events } };
  }

  private controllerBlocks(direction: Direction, tasks: TaskCounts, suspension: Suspension | undefined, cfg: ServiceScalingConfig, ctx: EvalContext): Block[] {
    if (direction === 'none') return [];
    const blocks: Block[] = [];
    if (direction === 'in' && ctx.degraded) {
      blocks.push({ kind: 'missing_data', message: 'the catalog is unreachable: without the stored state the controller never scales in' });
    }
    if (direction === 'in' && tasks.deploymentInProgress === true) {
      blocks.push({ kind: 'deployment', message: 'a deployment is in progress: no scale-in until it completes' });
    }
    if (direction === 'out' && suspension?.scaleOut === true) {
      blocks.push({ kind: 'suspended', message: 'dynamic scale-out is suspended on the scalable target' });
    }
    if (direction === 'in' && suspension?.scaleIn === true) {
      blocks.push({ kind: 'suspended', message: 'dynamic scale-in is suspended on the scalable target' });
    }
    if (cfg.dry_run) blocks.push({ kind: 'dry_run', message: 'dry run: the decision is recorded and nothing is changed' });
    return blocks;
  }
}

/** What the policy decided, after the controller's alarm-cooldown rule. */
interface Evaluated {
  readonly to: number;
  readonly reasons: readonly Reason[];
  readonly blocked: readonly Block[];
  readonly state: ServiceState;
}

interface EvalContext {
  readonly now: number;
  readonly request: EvaluateRequest;
  readonly degraded: boolean;
  readonly configVersion: number | undefined;
}
