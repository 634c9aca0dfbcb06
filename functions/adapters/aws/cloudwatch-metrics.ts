/**
 * The CloudWatch metrics source: every metric of every service in ONE `GetMetricData` request
 * per evaluation (a request holds up to 500 queries; more are split, keeping each service's
 * queries together), following `NextToken` when CloudWatch pages the answer.
 *
 * Per service: ECS `CPUUtilization` and `MemoryUtilization` (Average; ClusterName,
 * ServiceName); for a service behind the ALB, `TargetResponseTime` (p95, the statistic of the
 * response-time alarms too: {@link RESPONSE_TIME_STATISTIC}), `RequestCountPerTarget`,
 * `RequestCount` and `HTTPCode_Target_5XX_Count` (Sum; TargetGroup, LoadBalancer); and the
 * configured queue-depth metric. Per load balancer, once per request however many services
 * share it: `ActiveConnectionCount` and `RequestCount` (LoadBalancer).
 *
 * The window is whole periods ending at the start of the current period (`EndTime` is
 * exclusive), so the period still being filled is never read. The newest datapoint of the last
 * few periods is used; a query without datapoints (ALB metrics are not published while idle)
 * gives a missing metric, never a zero, except `HTTPCode_Target_5XX_Count`, which CloudWatch
 * omits in a minute without 5xx: it is read in the minute of the request count the error rate
 * divides it by, and is 0 when that minute has no datapoint (without a request count there is
 * no error rate to compute, and it stays missing). A failed request (after the SDK's
 * own retries with backoff) makes every service in it unavailable, so the controller takes no
 * decision for them.
 *
 * `ActiveConnectionCount` exists only per load balancer. Services that share one (the three
 * CA-DMS web services do, behind method- and path-based listener rules) would each see every
 * connection of the load balancer, so a service's connections are the load balancer's
 * apportioned by the service's share of its requests in the same minute (see
 * {@link apportionConnections}).
 *
 * An ALB publishes nothing while no request reaches it. When a load balancer has no datapoint
 * at all over the lookback window and the service's own ECS metrics did come back, the
 * service's requests, 5xx responses and connections are 0, not missing: otherwise a service
 * whose traffic stopped could never scale in (missing data blocks scale-in). Its response time
 * stays missing: no request, no latency.
 *
 * @example
 * ```ts
 * const source = new CloudWatchMetricsSource({ client: new CloudWatchClient({ maxAttempts: 4 }), topology });
 * const readings = await source.read(['backend-read', 'worker'], Date.now(), AbortSignal.timeout(10_000));
 * ```
 */
import { GetMetricDataCommand, type CloudWatchClient, type MetricDataQuery } from '@aws-sdk/client-cloudwatch';
import type { MetricsReading, MetricsSource, RawMetrics } from '../../core/scaling/ports.js';
import { RESPONSE_TIME_STATISTIC, type Topology } from './topology.js';

/** CloudWatch's limit of queries in one GetMetricData request. */
export const MAX_QUERIES_PER_REQUEST = 500;
/** How many periods back to look for the newest datapoint. */
const LOOKBACK_PERIODS = 5;

type MetricField = keyof RawMetrics;

interface PlannedQuery {
  readonly service: string;
  /** A metric of the service, or its target group's request count (used to share connections). */
  readonly field: MetricField | 'targetGroupRequests';
  /** Converts CloudWatch's unit to ours (seconds to milliseconds for the response time). */
  readonly scale: number;
  readonly query: MetricDataQuery;
}

export interface CloudWatchMetricsOptions {
  readonly client: CloudWatchClient;
  readonly topology: Topology;
  /** Split threshold; CloudWatch's limit unless a test needs smaller requests. */
  readonly maxQueriesPerRequest?: number;
}

function metricQuery(id: string, namespace: string, metricName: string, dimensions: Record<string, string>, stat: string, period: number): MetricDataQuery {
  return {
    Id: id,
    MetricStat: {
      Metric: { Namespace: namespace, MetricName: metricName, Dimensions: Object.entries(dimensions).map(([Name, Value]) => ({ Name, Value })) },
      Period: period,
      Stat: stat,
    },
    ReturnData: true,
  };
}

/** Builds the queries for one service (ids are unique within a request: `s<index>_<metric>`). */
export function planQueries(topology: Topology, service: string, index: number): PlannedQuery[] {
  const t = topology.services[service];
  if (!t) return [];
  const period = topology.periodSeconds;
  const id = (suffix: string): string => `s${index}_${suffix}`;
  const ecs = { ClusterName: t.cluster, ServiceName: t.ecsService };
  const planned: PlannedQuery[] = [
    { service, field: 'cpu', scale: 1, query: metricQuery(id('cpu'), 'AWS/ECS', 'CPUUtilization', ecs, 'Average', period) },
    { service, field: 'memory', scale: 1, query: metricQuery(id('mem'), 'AWS/ECS', 'MemoryUtilization', ecs, 'Average', period) },
  ];
  if (t.targetGroup !== undefined && t.loadBalancer !== undefined) {
    const tg = { TargetGroup: t.targetGroup, LoadBalancer: t.loadBalancer };
    planned.push(
      { service, field: 'responseTimeMs', scale: 1000, query: metricQuery(id('rt'), 'AWS/ApplicationELB', 'TargetResponseTime', tg, RESPONSE_TIME_STATISTIC, period) },
      { service, field: 'requestCountPerTarget', scale: 1, query: metricQuery(id('rpt'), 'AWS/ApplicationELB', 'RequestCountPerTarget', tg, 'Sum', period) },
      { service, field: 'errorCount', scale: 1, query: metricQuery(id('err'), 'AWS/ApplicationELB', 'HTTPCode_Target_5XX_Count', tg, 'Sum', period) },
      { service, field: 'targetGroupRequests', scale: 1, query: metricQuery(id('req'), 'AWS/ApplicationELB', 'RequestCount', tg, 'Sum', period) },
    );
  }
  if (t.queue !== undefined) {
    const dims = Object.fromEntries(t.queue.dimensions.map((d) => [d.name, d.value]));
    planned.push({ service, field: 'queueDepth', scale: 1, query: metricQuery(id('queue'), t.queue.namespace, t.queue.metricName, dims, t.queue.statistic, period) });
  }
  return planned;
}

/** The two load-balancer queries connections are shared out from (ids `lb<index>_conn`, `lb<index>_req`). */
export function planLoadBalancerQueries(loadBalancer: string, index: number, periodSeconds: number): { readonly connections: MetricDataQuery; readonly requests: MetricDataQuery } {
  const dims = { LoadBalancer: loadBalancer };
  return {
    connections: metricQuery(`lb${index}_conn`, 'AWS/ApplicationELB', 'ActiveConnectionCount', dims, 'Sum', periodSeconds),
    requests: metricQuery(`lb${index}_req`, 'AWS/ApplicationELB', 'RequestCount', dims, 'Sum', periodSeconds),
  };
}

/** A time series as read: value by timestamp (epoch ms). */
export type Series = ReadonlyMap<number, number>;

function newestOf(series: Series | undefined): { at: number; value: number } | undefined {
  let newest: { at: number; value: number } | undefined;
  for (const [at, value] of series ?? []) if (newest === undefined || at > newest.at) newest = { at, value };
  return newest;
}

/**
 * A service's share of its load balancer's active connections: the load balancer's count in
 * the newest minute that has both its connection and request counts, times the service's
 * requests in that minute over the load balancer's. A target group without a datapoint in a
 * minute the load balancer served requests had none, so its share is 0. A service alone on its
 * load balancer gets all of it. Undefined when nothing can be said (no such minute and not
 * alone): a missing metric, never a guess.
 *
 * @example
 * ```ts
 * apportionConnections(new Map([[t, 400]]), new Map([[t, 1000]]), new Map([[t, 250]]), false); // 100
 * ```
 */
export function apportionConnections(connections: Series | undefined, lbRequests: Series | undefined, tgRequests: Series | undefined, alone: boolean): number | undefined {
  let minute: number | undefined;
  for (const [at, requests] of lbRequests ?? []) {
    if (requests > 0 && connections?.has(at) === true && (minute === undefined || at > minute)) minute = at;
  }
  if (minute !== undefined) {
    const total = connections?.get(minute) as number;
    if (alone) return total;
    const share = (tgRequests?.get(minute) ?? 0) / (lbRequests?.get(minute) as number);
    return total * Math.min(1, share);
  }
  return alone ? newestOf(connections)?.value : undefined;
}

/** A request: the services' queries plus the load-balancer queries they need. */
interface PlannedRequest {
  readonly queries: PlannedQuery[];
  /** Load balancer -> index of its queries in this request. */
  readonly loadBalancers: Map<string, number>;
}

/**
 * Packs services into requests of at most `max` queries without splitting a service; each
 * request carries the two queries of every load balancer its services use, once.
 */
function packRequests(perService: PlannedQuery[][], topology: Topology, max: number, lbIndex: ReadonlyMap<string, number>): PlannedRequest[] {
  const requests: PlannedRequest[] = [];
  let current: PlannedRequest = { queries: [], loadBalancers: new Map() };
  const size = (r: PlannedRequest): number => r.queries.length + 2 * r.loadBalancers.size;
  for (const queries of perService) {
    const lb = queries[0] === undefined ? undefined : topology.services[queries[0].service]?.loadBalancer;
    const extra = lb !== undefined && !current.loadBalancers.has(lb) ? 2 : 0;
    if (current.queries.length > 0 && size(current) + queries.length + extra > max) {
      requests.push(current);
      current = { queries: [], loadBalancers: new Map() };
    }
    current.queries.push(...queries);
    if (lb !== undefined && !current.loadBalancers.has(lb)) current.loadBalancers.set(lb, lbIndex.get(lb) ?? current.loadBalancers.size);
  }
  if (current.queries.length > 0) requests.push(current);
  return requests;
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

export class CloudWatchMetricsSource implements MetricsSource {
  private readonly max: number;

  constructor(private readonly options: CloudWatchMetricsOptions) {
    this.max = Math.min(options.maxQueriesPerRequest ?? MAX_QUERIES_PER_REQUEST, MAX_QUERIES_PER_REQUEST);
  }

  async read(services: readonly string[], now: number, signal?: AbortSignal): Promise<ReadonlyMap<string, MetricsReading>> {
    const { topology } = this.options;
    const readings = new Map<string, MetricsReading>();
    const perService: PlannedQuery[][] = [];
    services.forEach((service, index) => {
      if (topology.services[service] === undefined) {
        readings.set(service, { ok: false, error: `service ${service} is missing from the scaling topology` });
      } else {
        perService.push(planQueries(topology, service, index));
      }
    });
    const periodMs = topology.periodSeconds * 1000;
    const end = new Date(Math.floor(now / periodMs) * periodMs);
    const start = new Date(end.getTime() - LOOKBACK_PERIODS * periodMs);

    // load balancers in order of first use, and how many configured services share each
    const lbIndex = new Map<string, number>();
    const sharing = new Map<string, number>();
    for (const t of Object.values(topology.services)) if (t.loadBalancer !== undefined) sharing.set(t.loadBalancer, (sharing.get(t.loadBalancer) ?? 0) + 1);
    for (const service of services) {
      const lb = topology.services[service]?.loadBalancer;
      if (lb !== undefined && !lbIndex.has(lb)) lbIndex.set(lb, lbIndex.size);
    }

    const requests = packRequests(perService, topology, this.max, lbIndex);
    const outcomes = await Promise.all(
      requests.map((r) => {
        const lbQueries = [...r.loadBalancers].flatMap(([lb, k]) => {
          const q = planLoadBalancerQueries(lb, k, topology.periodSeconds);
          return [q.connections, q.requests];
        });
        return this.fetch([...r.queries.map((q) => q.query), ...lbQueries], start, end, signal);
      }),
    );
    requests.forEach((request, i) => {
      const outcome = outcomes[i];
      const byService = new Map<string, RawMetrics>();
      const tgRequests = new Map<string, Series>();
      for (const q of request.queries) {
        if (!byService.has(q.service)) byService.set(q.service, {});
        if (outcome === undefined || 'error' in outcome) continue;
        const series = outcome.series.get(q.query.Id ?? '');
        if (q.field === 'targetGroupRequests') {
          if (series !== undefined) tgRequests.set(q.service, series);
          continue;
        }
        if (q.field === 'errorCount') {
          // Omitted when zero: the minute of the request count it is divided by, 0 if absent.
          const perTarget = outcome.series.get(q.query.Id?.replace(/_err$/, '_rpt') ?? '');
          const minute = newestOf(perTarget)?.at;
          if (minute !== undefined) byService.set(q.service, { ...byService.get(q.service), errorCount: series?.get(minute) ?? 0 });
          continue;
        }
        const value = newestOf(series)?.value;
        if (value !== undefined) byService.set(q.service, { ...byService.get(q.service), [q.field]: value * q.scale });
      }
      for (const [service, metrics] of byService) {
        if (outcome === undefined || 'error' in outcome) {
          readings.set(service, { ok: false, error: `CloudWatch GetMetricData failed: ${outcome?.error ?? 'no answer'}` });
          continue;
        }
        const lb = topology.services[service]?.loadBalancer;
        const k = lb === undefined ? undefined : request.loadBalancers.get(lb);
        if (lb === undefined || k === undefined) {
          readings.set(service, { ok: true, metrics });
          continue;
        }
        const lbConnections = outcome.series.get(`lb${k}_conn`);
        const lbRequests = outcome.series.get(`lb${k}_req`);
        if ((lbConnections?.size ?? 0) === 0 && (lbRequests?.size ?? 0) === 0 && (metrics.cpu !== undefined || metrics.memory !== undefined)) {
          readings.set(service, { ok: true, metrics: { ...metrics, requestCountPerTarget: 0, errorCount: 0, activeConnections: 0 } });
          continue;
        }
        const connections = apportionConnections(lbConnections, lbRequests, tgRequests.get(service), (sharing.get(lb) ?? 0) <= 1);
        readings.set(service, { ok: true, metrics: connections === undefined ? metrics : { ...metrics, activeConnections: connections } });
      }
    });
    return readings;
  }

  /** One logical request, following NextToken; returns every datapoint per query id. */
  private async fetch(queries: MetricDataQuery[], start: Date, end: Date, signal: AbortSignal | undefined): Promise<{ series: Map<string, Map<number, number>> } | { error: string }> {
    const series = new Map<string, Map<number, number>>();
    let nextToken: string | undefined;
    try {
      do {
        const page = await this.options.client.send(
          new GetMetricDataCommand({
            MetricDataQueries: queries,
            StartTime: start,
            EndTime: end,
            ScanBy: 'TimestampDescending',
            ...(nextToken === undefined ? {} : { NextToken: nextToken }),
          }),
          signal === undefined ? {} : { abortSignal: signal },
        );
        for (const result of page.MetricDataResults ?? []) {
          const id = result.Id;
          if (id === undefined) continue;
          const values = result.Values ?? [];
          const times = result.Timestamps ?? [];
          let points = series.get(id);
          if (points === undefined) series.set(id, (points = new Map()));
          values.forEach((value, k) => {
            if (Number.isFinite(value)) points.set(times[k]?.getTime() ?? 0, value);
          });
        }
        nextToken = page.NextToken;
      } while (nextToken !== undefined);
    } catch (err) {
      return { error: describe(err) };
    }
    return { series };
  }
}
