/**
 * Shared fixtures for the scaling controller's tests: a topology of N services, CloudWatch
 * answers built from the queries actually sent, and ECS service descriptions.
 */
import type { GetMetricDataCommandInput, MetricDataResult } from '@aws-sdk/client-cloudwatch';
import type { Service } from '@aws-sdk/client-ecs';
import { parseTopology, type Topology } from '../../functions/adapters/aws/topology.js';

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
