/**
 * Shared fixtures for the scaling controller's tests: a topology of N services, CloudWatch
 * answers built from the queries actually sent, and ECS service descriptions.
 */
import { ApplicationAutoScalingClient } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient, type GetMetricDataCommandInput, type MetricDataResult } from '@aws-sdk/client-cloudwatch';
import { ECSClient, type Service } from '@aws-sdk/client-ecs';
import { AppAutoScalingRegistry } from '../../functions/adapters/aws/app-autoscaling.js';
import { CloudWatchMetricsSource } from '../../functions/adapters/aws/cloudwatch-metrics.js';
import { EcsScalingTarget } from '../../functions/adapters/aws/ecs-target.js';
import { parseTopology, type Topology } from '../../functions/adapters/aws/topology.js';
import { parseScalingConfig } from '../../functions/core/scaling/config.js';
import { ScalingController } from '../../functions/core/scaling/controller.js';
import { getPolicy } from '../../functions/core/scaling/policies/index.js';
import type { Clock, ControllerCatalog, DecisionLog, DecisionRecord, PolicyLookup } from '../../functions/core/scaling/ports.js';

/** Service names `svc-0` .. `svc-(n-1)`. */
export function serviceNames(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `svc-${i}`);
}

/** N services on cluster `ca-dms`, each behind its own target group of one ALB (6 metrics each). */
export function topologyOf(n: number, extra: Partial<Record<string, object>> = {}): Topology {
  return parseTopology({
    services: Object.fromEntries(
      serviceNames(n).map((s, i) => [
        s,
        {
          cluster: 'ca-dms',
          ecsService: `ca-dms-${s}`,
          targetGroup: `targetgroup/${s}/${(i + 1).toString(16).padStart(16, '0')}`,
          loadBalancer: 'app/ca-dms/00000000000000aa',
          ...extra[s],
        },
      ]),
    ),
  });
}

/**
 * Answers a GetMetricData request: every query gets `value(id)` at the newest period, or no
 * datapoints when `value` returns undefined.
 */
export function metricAnswer(input: GetMetricDataCommandInput, value: (id: string) => number | undefined): MetricDataResult[] {
  const end = input.EndTime instanceof Date ? input.EndTime : new Date(0);
  return (input.MetricDataQueries ?? []).map((q) => {
    const v = value(q.Id ?? '');
    return {
      Id: q.Id,
      StatusCode: 'Complete',
      Timestamps: v === undefined ? [] : [new Date(end.getTime() - 60_000)],
      Values: v === undefined ? [] : [v],
    };
  });
}

/** An ECS service description as DescribeServices returns it. */
export function ecsService(name: string, counts: { running: number; pending?: number; desired: number; deploying?: boolean }): Service {
  return {
    serviceName: name,
    serviceArn: `arn:aws:ecs:eu-west-1:123456789012:service/ca-dms/${name}`,
    status: 'ACTIVE',
    runningCount: counts.running,
    pendingCount: counts.pending ?? 0,
    desiredCount: counts.desired,
    deployments:
      counts.deploying === true
        ? [
            { id: 'ecs-svc/2', status: 'PRIMARY', rolloutState: 'IN_PROGRESS' },
            { id: 'ecs-svc/1', status: 'ACTIVE', rolloutState: 'COMPLETED' },
          ]
        : [{ id: 'ecs-svc/1', status: 'PRIMARY', rolloutState: 'COMPLETED' }],
  };
}

/** A recording decision log: what the handler would write as structured log lines. */
export class RecordingLog implements DecisionLog {
  readonly lines: DecisionRecord[] = [];
  write(record: DecisionRecord): void {
    this.lines.push(record);
  }
}

/** A clock the test moves by hand. */
export class ManualClock implements Clock {
  constructor(private t: number) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

/**
 * A controller over the real AWS adapters (their clients are expected to be mocked with
 * aws-sdk-client-mock by the test) and the given catalog.
 */
export function controllerFor(opts: {
  topology: Topology;
  catalog: ControllerCatalog;
  fallback: Record<string, unknown>;
  clock: Clock;
  log?: DecisionLog;
  backlogLimit?: number;
  policies?: PolicyLookup;
}): ScalingController {
  return new ScalingController({
    metrics: new CloudWatchMetricsSource({ client: new CloudWatchClient({ region: 'eu-west-1' }), topology: opts.topology }),
    target: new EcsScalingTarget({ client: new ECSClient({ region: 'eu-west-1' }), topology: opts.topology }),
    registry: new AppAutoScalingRegistry({ client: new ApplicationAutoScalingClient({ region: 'eu-west-1' }), topology: opts.topology }),
    catalog: opts.catalog,
    clock: opts.clock,
    log: opts.log ?? new RecordingLog(),
    policies: opts.policies ?? getPolicy,
    fallbackConfig: parseScalingConfig(opts.fallback),
    ...(opts.backlogLimit === undefined ? {} : { backlogLimit: opts.backlogLimit }),
  });
}

/** Per-service metric values by CloudWatch query suffix (`cpu`, `mem`, `rt`, `rpt`, `err`, `conn`). */
export type MetricValues = Record<string, Partial<Record<'cpu' | 'mem' | 'rt' | 'rpt' | 'err' | 'conn' | 'queue', number>>>;

/** Answers GetMetricData from per-service values; `sN` ids are resolved through `services`. */
export function metricsFrom(services: readonly string[], values: MetricValues) {
  return (input: GetMetricDataCommandInput): { MetricDataResults: MetricDataResult[] } => ({
    MetricDataResults: metricAnswer(input, (id) => {
      const m = /^s(\d+)_(\w+)$/.exec(id);
      const service = services[Number(m?.[1])];
      const key = m?.[2] as keyof MetricValues[string];
      return service === undefined ? undefined : values[service]?.[key];
    }),
  });
}
