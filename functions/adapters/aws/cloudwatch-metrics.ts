/**
 * The CloudWatch metrics source: every metric of every service in ONE `GetMetricData` request
 * per evaluation (a request holds up to 500 queries; more are split, keeping each service's
 * queries together), following `NextToken` when CloudWatch pages the answer.
 *
 * Per service: ECS `CPUUtilization` and `MemoryUtilization` (ClusterName, ServiceName); for a
 * service behind the ALB, `TargetResponseTime`, `RequestCountPerTarget` and
 * `HTTPCode_Target_5XX_Count` (TargetGroup, LoadBalancer) and `ActiveConnectionCount`
 * (LoadBalancer); and the configured queue-depth metric. The newest datapoint of the last few
 * periods is used; a query without datapoints (ALB metrics are not published while idle) gives
 * a missing metric, never a zero. A failed request (after the SDK's own retries with backoff)
 * makes every service in it unavailable, so the controller takes no decision for them.
 *
 * @example
 * ```ts
 * const source = new CloudWatchMetricsSource({ client: new CloudWatchClient({ maxAttempts: 4 }), topology });
 * const readings = await source.read(['backend-read', 'worker'], Date.now(), AbortSignal.timeout(10_000));
 * ```
 */
import { GetMetricDataCommand, type CloudWatchClient, type MetricDataQuery } from '@aws-sdk/client-cloudwatch';
import type { MetricsReading, MetricsSource, RawMetrics } from '../../core/scaling/ports.js';
import type { Topology } from './topology.js';

/** CloudWatch's limit of queries in one GetMetricData request. */
export const MAX_QUERIES_PER_REQUEST = 500;
/** How many periods back to look for the newest datapoint. */
const LOOKBACK_PERIODS = 5;

type MetricField = keyof RawMetrics;

interface PlannedQuery {
  readonly service: string;
  readonly field: MetricField;
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
      { service, field: 'responseTimeMs', scale: 1000, query: metricQuery(id('rt'), 'AWS/ApplicationELB', 'TargetResponseTime', tg, 'Average', period) },
      { service, field: 'requestCountPerTarget', scale: 1, query: metricQuery(id('rpt'), 'AWS/ApplicationELB', 'RequestCountPerTarget', tg, 'Sum', period) },
      { service, field: 'errorCount', scale: 1, query: metricQuery(id('err'), 'AWS/ApplicationELB', 'HTTPCode_Target_5XX_Count', tg, 'Sum', period) },
      {
        service,
        field: 'activeConnections',
        scale: 1,
        query: metricQuery(id('conn'), 'AWS/ApplicationELB', 'ActiveConnectionCount', { LoadBalancer: t.loadBalancer }, 'Sum', period),
      },
    );
  }
  if (t.queue !== undefined) {
    const dims = Object.fromEntries(t.queue.dimensions.map((d) => [d.name, d.value]));
    planned.push({ service, field: 'queueDepth', scale: 1, query: metricQuery(id('queue'), t.queue.namespace, t.queue.metricName, dims, t.queue.statistic, period) });
  }
  return planned;
}

/** Packs services into requests of at most `max` queries without splitting a service. */
function packRequests(perService: PlannedQuery[][], max: number): PlannedQuery[][] {
  const requests: PlannedQuery[][] = [];
  let current: PlannedQuery[] = [];
  for (const queries of perService) {
    if (current.length > 0 && current.length + queries.length > max) {
      requests.push(current);
      current = [];
    }
    current.push(...queries);
  }
  if (current.length > 0) requests.push(current);
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

    const requests = packRequests(perService, this.max);
    const outcomes = await Promise.all(requests.map((queries) => this.fetch(queries, start, end, signal)));
    requests.forEach((queries, i) => {
      const outcome = outcomes[i];
      const byService = new Map<string, RawMetrics>();
      for (const q of queries) {
        if (!byService.has(q.service)) byService.set(q.service, {});
        if (outcome === undefined || 'error' in outcome) continue;
        const value = outcome.latest.get(q.query.Id ?? '');
        if (value !== undefined) byService.set(q.service, { ...byService.get(q.service), [q.field]: value * q.scale });
      }
      for (const [service, metrics] of byService) {
        readings.set(service, outcome === undefined || 'error' in outcome ? { ok: false, error: `CloudWatch GetMetricData failed: ${outcome?.error ?? 'no answer'}` } : { ok: true, metrics });
      }
    });
    return readings;
  }

  /** One logical request, following NextToken; returns the newest value per query id. */
  private async fetch(queries: PlannedQuery[], start: Date, end: Date, signal: AbortSignal | undefined): Promise<{ latest: Map<string, number> } | { error: string }> {
    const newest = new Map<string, { at: number; value: number }>();
    let nextToken: string | undefined;
    try {
      do {
        const page = await this.options.client.send(
          new GetMetricDataCommand({
            MetricDataQueries: queries.map((q) => q.query),
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
          values.forEach((value, k) => {
            const at = times[k]?.getTime() ?? 0;
            const seen = newest.get(id);
            if (Number.isFinite(value) && (seen === undefined || at > seen.at)) newest.set(id, { at, value });
          });
        }
        nextToken = page.NextToken;
      } while (nextToken !== undefined);
    } catch (err) {
      return { error: describe(err) };
    }
    return { latest: new Map([...newest].map(([id, v]) => [id, v.value])) };
  }
}
