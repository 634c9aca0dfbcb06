/**
 * Live traffic as demand of the simulated fleet: local mode counts the requests its documents
 * API serves (what `npm run load` sends), per CA-DMS service that would carry them, and the
 * fleet adds that rate to the trace's demand. So a load test makes the controller scale out, and
 * back in once it ends, exactly as real traffic would.
 *
 * @example
 * ```ts
 * const load = new LiveLoad({ clock, requestsPerTask: 20 });
 * const fleet = new SimulatedFleet({ trace, acceleration, clock, extraDemand: (s, now) => load.taskUnits(s, now) });
 * startLocalServer({ handler, extraRoutes: [load.route(), ...] });
 * ```
 */
import type { IncomingMessage } from 'node:http';
import type { Clock } from '../../core/scaling/ports.js';
import type { ExtraRoute } from '../http/local-server.js';

export interface LiveLoadOptions {
  readonly clock: Clock;
  /** Requests per second of live traffic that keep one task fully busy. */
  readonly requestsPerTask: number;
  /** Seconds the rate is averaged over (default 10): a metric period, as CloudWatch would give. */
  readonly windowSeconds?: number;
}

/**
 * The services a documents-API request loads: every request passes the frontend; reads are
 * served by the read pool; a write by the write pool, and it leaves work for the worker.
 * Anything else (the scaling API, the dashboard) is the operator's, not CA-DMS traffic.
 */
export function servicesLoadedBy(method: string, path: string): readonly string[] {
  if (!/^\/api\/v1\/(users|documents)(\/|$)/.test(path)) return [];
  return method === 'GET' || method === 'HEAD' ? ['frontend', 'backend-read'] : ['frontend', 'backend-write', 'worker'];
}

/** Requests counted per service in one-second buckets over a sliding window. */
export class LiveLoad {
  private readonly window: number;
  /** service -> second (epoch s) -> requests. */
  private readonly counts = new Map<string, Map<number, number>>();

  constructor(private readonly options: LiveLoadOptions) {
    if (!(options.requestsPerTask > 0)) throw new RangeError(`requestsPerTask must be positive, got ${options.requestsPerTask}`);
    this.window = options.windowSeconds ?? 10;
  }

  /** Counts one request at the clock's now. */
  record(method: string, path: string): void {
    const second = Math.floor(this.options.clock.now() / 1000);
    for (const service of servicesLoadedBy(method, path)) {
      let buckets = this.counts.get(service);
      if (!buckets) this.counts.set(service, (buckets = new Map()));
      buckets.set(second, (buckets.get(second) ?? 0) + 1);
      // Forget seconds that left the window, so memory stays bounded however long it runs.
      for (const s of buckets.keys()) if (s <= second - this.window) buckets.delete(s);
    }
  }

  /** Requests per second reaching `service`, averaged over the window's full seconds before `now`. */
  rate(service: string, now: number): number {
    const buckets = this.counts.get(service);
    if (!buckets) return 0;
    const current = Math.floor(now / 1000);
    let sum = 0;
    for (const [s, n] of buckets) if (s < current && s >= current - this.window) sum += n;
    return sum / this.window;
  }

  /** The live demand on `service` in task-units (fully busy tasks). */
  taskUnits(service: string, now: number): number {
    return this.rate(service, now) / this.options.requestsPerTask;
  }

  /** A route for the local server that counts each request and lets it through. */
  route(): ExtraRoute {
    return (req: IncomingMessage) => {
      const path = (req.url ?? '/').split('?')[0] ?? '/';
      this.record(req.method ?? 'GET', path);
      return false;
    };
  }
}
