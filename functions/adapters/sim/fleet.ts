/**
 * The simulated fleet of local mode: the four CA-DMS services as an orchestrator
 * ({@link ScalingTarget}, {@link ScalableTargetRegistry}) and a monitoring system
 * ({@link MetricsSource}) for the real
 * {@link ScalingController}. Demand comes from a workload trace replayed time-accelerated, tasks
 * behave as in the simulator's fleet model (a task added serves `startupSeconds` of trace time
 * later; removing tasks drops pending ones first, as ECS does), and metrics follow the simulator's
 * formulas (`metricsFor`): CPU saturates at 100 %, response time climbs with utilisation.
 *
 * Time: the wall clock is injected; trace time runs `acceleration` times faster from the trace's
 * first point and wraps around at its end, so a long run keeps showing the daily pattern. Each
 * service sees the same trace with its own size (99th percentile in task-units) and phase.
 *
 * @example
 * ```ts
 * const fleet = new SimulatedFleet({ trace: (await readTraceFile(path)).points, acceleration: 60, clock });
 * const controller = new ScalingController({ metrics: fleet, target: fleet, ... });
 * fleet.view(clock.now()); // per service: demand, running, pending, desired, cpu
 * ```
 */
import type { Clock, MetricsReading, MetricsSource, RawMetrics, ScalableTargetRegistry, ScalingTarget, Suspension, TasksReading } from '../../core/scaling/ports.js';
import { metricsFor } from '../../core/scaling/simulator/fleet.js';
import { DEFAULT_MODEL, tasksNeeded, type SimulationModel } from '../../core/scaling/simulator/model.js';
import { rescaleToP99, resampleToTicks, type TracePoint } from '../../core/scaling/simulator/trace.js';
import type { MetricsSnapshot } from '../../core/scaling/types.js';

/** How one simulated service reads the shared trace. */
export interface FleetServiceSpec {
  readonly service: string;
  /** The trace is rescaled so its 99th percentile is this many task-units for this service. */
  readonly p99TaskUnits: number;
  /** Minutes of trace time this service runs ahead of the trace (a different phase per service). */
  readonly phaseMinutes: number;
}

/**
 * The four services of CA-DMS: reads carry the most load, the write pool less, the frontend
 * follows the readers a little earlier, the worker trails the writes.
 */
export const CA_DMS_FLEET: readonly FleetServiceSpec[] = [
  { service: 'backend-read', p99TaskUnits: 9, phaseMinutes: 0 },
  { service: 'backend-write', p99TaskUnits: 4, phaseMinutes: 20 },
  { service: 'frontend', p99TaskUnits: 6, phaseMinutes: -15 },
  { service: 'worker', p99TaskUnits: 3, phaseMinutes: 45 },
];

export interface SimulatedFleetOptions {
  /** The workload trace (any step; resampled to the model's tick). */
  readonly trace: readonly TracePoint[];
  /** Seconds of trace time per second of wall-clock time (60: a trace minute per second). */
  readonly acceleration: number;
  readonly clock: Clock;
  /** The simulator's model: tick, task start-up time (trace seconds), bounds, requests per unit. */
  readonly model?: SimulationModel;
  readonly services?: readonly FleetServiceSpec[];
  /** Demand (task-units) added to the trace's at wall-clock `now`: live traffic (see `LiveLoad`). */
  readonly extraDemand?: (service: string, now: number) => number;
}

/** A service the fleet does not run. */
export class UnknownFleetServiceError extends Error {
  override readonly name = 'UnknownFleetServiceError';
  constructor(readonly service: string) {
    super(`the simulated fleet has no service ${service}`);
  }
}

/** One service right now, for the dashboard and the status lines. */
export interface FleetServiceView {
  readonly service: string;
  /** Demand in task-units (how many fully busy tasks it would take). */
  readonly demand: number;
  readonly running: number;
  readonly pending: number;
  readonly desired: number;
  readonly metrics: MetricsSnapshot;
}

export interface FleetView {
  readonly at: number;
  /** The trace time being replayed (epoch ms). */
  readonly traceAt: number;
  readonly acceleration: number;
  readonly services: readonly FleetServiceView[];
}

interface Batch {
  readyAt: number;
  count: number;
}

interface ServiceSim {
  readonly spec: FleetServiceSpec;
  readonly demand: Float64Array;
  running: number;
  desired: number;
  readonly batches: Batch[];
}

export class SimulatedFleet implements ScalingTarget, MetricsSource, ScalableTargetRegistry {
  private readonly model: SimulationModel;
  private readonly sims = new Map<string, ServiceSim>();
  private readonly startedAt: number;
  private readonly traceStart: number;
  private readonly tickMs: number;
  /** Stops marked on the fleet (as ECS tags carry them), by scope: `*` or a service. */
  private readonly stopMarks = new Map<string, string>();

  constructor(private readonly options: SimulatedFleetOptions) {
    if (!(options.acceleration > 0) || !Number.isFinite(options.acceleration)) throw new RangeError(`acceleration must be a positive number, got ${options.acceleration}`);
    this.model = options.model ?? DEFAULT_MODEL;
    this.tickMs = this.model.tickSeconds * 1000;
    this.startedAt = options.clock.now();
    const first = options.trace[0];
    if (first === undefined) throw new RangeError('the trace has no points');
    this.traceStart = first.at;
    const raw = resampleToTicks(options.trace, this.tickMs);
    for (const spec of options.services ?? CA_DMS_FLEET) {
      const demand = rescaleToP99(raw, spec.p99TaskUnits);
      const sim: ServiceSim = { spec, demand, running: 0, desired: 0, batches: [] };
      const initial = tasksNeeded(this.demandOf(sim, this.startedAt), this.model);
      sim.running = initial;
      sim.desired = initial;
      this.sims.set(spec.service, sim);
    }
  }

  services(): readonly string[] {
    return [...this.sims.keys()].sort();
  }

  /** Trace time (epoch ms) replayed at wall-clock time `now`. */
  traceTimeAt(now: number): number {
    return this.traceStart + (now - this.startedAt) * this.options.acceleration;
  }

  /** Demand in task-units, interpolated between ticks, wrapping around the trace. */
  private demandOf(sim: ServiceSim, now: number): number {
    const n = sim.demand.length;
    const position = ((now - this.startedAt) * this.options.acceleration) / this.tickMs + sim.spec.phaseMinutes * (60_000 / this.tickMs);
    const wrapped = ((position % n) + n) % n;
    const i = Math.floor(wrapped);
    const a = sim.demand[i] ?? 0;
    const b = sim.demand[(i + 1) % n] ?? a;
    return a + (b - a) * (wrapped - i) + (this.options.extraDemand?.(sim.spec.service, now) ?? 0);
  }

  /** Moves tasks whose start-up is over from pending to running. */
  private advance(sim: ServiceSim, now: number): void {
    while (sim.batches.length > 0 && (sim.batches[0] as Batch).readyAt <= now) {
      sim.running += (sim.batches.shift() as Batch).count;
    }
  }

  private sim(service: string): ServiceSim {
    const sim = this.sims.get(service);
    if (!sim) throw new UnknownFleetServiceError(service);
    return sim;
  }

  private pendingOf(sim: ServiceSim): number {
    return sim.batches.reduce((n, b) => n + b.count, 0);
  }

  /**
   * One reading per service, each taken after its start-ups due by `now` are over. An unknown
   * service gets a failed reading rather than an exception, as the controller's ports require,
   * so one bad name does not hide the others.
   */
  private readEach<R>(services: readonly string[], now: number, reading: (sim: ServiceSim) => R): Map<string, R | { ok: false; error: string }> {
    const out = new Map<string, R | { ok: false; error: string }>();
    for (const service of services) {
      const sim = this.sims.get(service);
      if (!sim) {
        out.set(service, { ok: false, error: new UnknownFleetServiceError(service).message });
        continue;
      }
      this.advance(sim, now);
      out.set(service, reading(sim));
    }
    return out;
  }

  async describe(services: readonly string[]): Promise<ReadonlyMap<string, TasksReading>> {
    return this.readEach<TasksReading>(services, this.options.clock.now(), (sim) => {
      const stops = ['*', sim.spec.service].flatMap((scope) => {
        const by = this.stopMarks.get(scope);
        return by === undefined ? [] : [{ scope, by }];
      });
      return {
        ok: true,
        tasks: { running: sim.running, pending: this.pendingOf(sim), desired: sim.desired, deploymentInProgress: false },
        ...(stops.length === 0 ? {} : { stops }),
      };
    });
  }

  /** Marks a stop (or clears it) as the ECS tags do: {@link describe} reports it. */
  async markStop(scope: string, by: string | undefined): Promise<void> {
    if (scope !== '*') this.sim(scope);
    if (by === undefined) this.stopMarks.delete(scope);
    else this.stopMarks.set(scope, by);
  }

  async setDesired(service: string, desired: number): Promise<void> {
    if (!Number.isInteger(desired) || desired < 0) throw new RangeError(`a desired count is a whole number >= 0, got ${desired}`);
    const sim = this.sim(service);
    const now = this.options.clock.now();
    this.advance(sim, now);
    if (desired > sim.desired) {
      // Start-up takes model seconds of trace time, so it shrinks with the acceleration.
      sim.batches.push({ readyAt: now + (this.model.startupSeconds * 1000) / this.options.acceleration, count: desired - sim.desired });
    } else {
      let remove = sim.desired - desired;
      while (remove > 0 && sim.batches.length > 0) {
        const last = sim.batches[sim.batches.length - 1] as Batch;
        const take = Math.min(remove, last.count);
        last.count -= take;
        remove -= take;
        if (last.count === 0) sim.batches.pop();
      }
      sim.running -= remove;
    }
    sim.desired = desired;
  }

  async read(services: readonly string[], now: number): Promise<ReadonlyMap<string, MetricsReading>> {
    return this.readEach<MetricsReading>(services, now, (sim) => {
      const demand = this.demandOf(sim, now);
      return { ok: true, metrics: toRaw(metricsFor(demand, sim.running, now, this.model), demand, sim.running) };
    });
  }

  /** Local mode has no Application Auto Scaling: bounds live in the config alone and nothing is suspended. */
  async sync(bounds: ReadonlyMap<string, { min: number; max: number }>): Promise<{ suspensions: ReadonlyMap<string, Suspension>; warnings: readonly string[] }> {
    return { suspensions: new Map([...bounds.keys()].map((s) => [s, { scaleOut: false, scaleIn: false }])), warnings: [] };
  }

  /** Every service as it is at `now`. */
  view(now: number = this.options.clock.now()): FleetView {
    const services = [...this.sims.values()].map((sim): FleetServiceView => {
      this.advance(sim, now);
      const demand = this.demandOf(sim, now);
      return { service: sim.spec.service, demand, running: sim.running, pending: this.pendingOf(sim), desired: sim.desired, metrics: metricsFor(demand, sim.running, now, this.model) };
    });
    return { at: now, traceAt: this.traceTimeAt(now), acceleration: this.options.acceleration, services };
  }
}

/**
 * The monitoring system's whole-service figures behind a per-task snapshot (the controller
 * divides again). Requests beyond the running tasks' capacity fail: that share of the requests
 * is the 5xx count.
 */
function toRaw(m: MetricsSnapshot, demand: number, running: number): RawMetrics {
  const shed = running <= 0 ? 1 : Math.max(0, 1 - running / Math.max(demand, running));
  return {
    ...(m.cpu === undefined ? {} : { cpu: m.cpu }),
    ...(m.memory === undefined ? {} : { memory: m.memory }),
    ...(m.responseTimeMs === undefined ? {} : { responseTimeMs: m.responseTimeMs }),
    ...(m.requestCount === undefined || running <= 0 ? {} : { requestCountPerTarget: m.requestCount / running }),
    ...(m.connectionsPerTask === undefined ? {} : { activeConnections: m.connectionsPerTask * running }),
    ...(m.requestCount === undefined ? {} : { errorCount: m.requestCount * shed }),
  };
}
