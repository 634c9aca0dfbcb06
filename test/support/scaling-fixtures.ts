/**
 * Shared fixtures for the scaling controller's tests: a topology of N services, CloudWatch
 * answers built from the queries actually sent, ECS service descriptions, and the mocked AWS
 * clients the controller talks to.
 */
import { ApplicationAutoScalingClient, DescribeScalableTargetsCommand, RegisterScalableTargetCommand } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient, GetMetricDataCommand, type GetMetricDataCommandInput, type MetricDataResult } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, ECSClient, UpdateServiceCommand, type Service } from '@aws-sdk/client-ecs';
import { mockClient, type AwsClientStub } from 'aws-sdk-client-mock';
import { beforeEach } from 'vitest';
import { AppAutoScalingRegistry } from '../../functions/adapters/aws/app-autoscaling.js';
import { CloudWatchMetricsSource } from '../../functions/adapters/aws/cloudwatch-metrics.js';
import { EcsScalingTarget } from '../../functions/adapters/aws/ecs-target.js';
import { parseTopology, type Topology } from '../../functions/adapters/aws/topology.js';
import { parseScalingConfig } from '../../functions/core/scaling/config.js';
import { ScalingController } from '../../functions/core/scaling/controller.js';
import { getPolicy } from '../../functions/core/scaling/policies/index.js';
import type { Clock, ControllerCatalog, DecisionLog, DecisionRecord, PolicyLookup, ScalingTarget } from '../../functions/core/scaling/ports.js';

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
  /** The orchestrator; default ECS through the (mocked) SDK client. */
  target?: ScalingTarget;
}): ScalingController {
  return new ScalingController({
    metrics: new CloudWatchMetricsSource({ client: new CloudWatchClient({ region: 'eu-west-1' }), topology: opts.topology }),
    target: opts.target ?? new EcsScalingTarget({ client: new ECSClient({ region: 'eu-west-1' }), topology: opts.topology }),
    registry: new AppAutoScalingRegistry({ client: new ApplicationAutoScalingClient({ region: 'eu-west-1' }), topology: opts.topology }),
    catalog: opts.catalog,
    clock: opts.clock,
    log: opts.log ?? new RecordingLog(),
    policies: opts.policies ?? getPolicy,
    fallbackConfig: parseScalingConfig(opts.fallback),
    ...(opts.backlogLimit === undefined ? {} : { backlogLimit: opts.backlogLimit }),
  });
}

/**
 * Per-service metric values by CloudWatch query suffix (`cpu`, `mem`, `rt`, `rpt`, `err`,
 * `queue`), plus `conn`: the active connections the service should end up with, and `req`: its
 * target group's requests (default: `conn`).
 */
export type MetricValues = Record<string, Partial<Record<'cpu' | 'mem' | 'rt' | 'rpt' | 'err' | 'conn' | 'req' | 'queue', number>>>;

/**
 * Answers GetMetricData from per-service values; `sN` ids are resolved through `services`.
 * Every service is taken to share one load balancer (as in {@link topologyOf}): its
 * `lbK_conn` and `lbK_req` are the sums of the services' `conn` and `req`, so that sharing the
 * connections out by requests gives each service its own `conn` back.
 */
export function metricsFrom(services: readonly string[], values: MetricValues) {
  const req = (v: MetricValues[string] | undefined): number | undefined => v?.req ?? v?.conn;
  const sum = (pick: (v: MetricValues[string] | undefined) => number | undefined): number | undefined => {
    const parts = services.map((s) => pick(values[s])).filter((x): x is number => x !== undefined);
    return parts.length === 0 ? undefined : parts.reduce((a, b) => a + b, 0);
  };
  return (input: GetMetricDataCommandInput): { MetricDataResults: MetricDataResult[] } => ({
    MetricDataResults: metricAnswer(input, (id) => {
      if (/^lb\d+_conn$/.test(id)) return sum((v) => v?.conn);
      if (/^lb\d+_req$/.test(id)) return sum(req);
      const m = /^s(\d+)_(\w+)$/.exec(id);
      const service = services[Number(m?.[1])];
      if (service === undefined) return undefined;
      if (m?.[2] === 'req') return req(values[service]);
      const key = m?.[2] as keyof MetricValues[string];
      return key === 'conn' ? undefined : values[service]?.[key];
    }),
  });
}

/** The aws-sdk-client-mock stubs of the three clients the controller uses. */
export interface ControllerAwsMocks {
  readonly cw: AwsClientStub<CloudWatchClient>;
  readonly ecs: AwsClientStub<ECSClient>;
  readonly aas: AwsClientStub<ApplicationAutoScalingClient>;
}

/** Mocks of the three clients with no answers yet (outside vitest too: a child process of a test). */
export function mockAws(): ControllerAwsMocks {
  return { cw: mockClient(CloudWatchClient), ecs: mockClient(ECSClient), aas: mockClient(ApplicationAutoScalingClient) };
}

/**
 * Mocks CloudWatch, ECS and Application Auto Scaling for the calling test file and registers a
 * `beforeEach` that resets them to an account with no scalable targets, where registering a
 * target and UpdateService succeed. Call it at the top level of the file, before any
 * `beforeEach` that adds answers, so that the reset runs first.
 *
 * @example
 * ```ts
 * const aws = mockControllerAws();
 * const { cw, ecs } = aws;
 * it('scales out', async () => {
 *   givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });
 *   // ...
 * });
 * ```
 */
export function mockControllerAws(): ControllerAwsMocks {
  const mocks = mockAws();
  beforeEach(() => {
    mocks.cw.reset();
    mocks.ecs.reset();
    mocks.aas.reset();
    mocks.aas.on(DescribeScalableTargetsCommand).resolves({ ScalableTargets: [] });
    mocks.aas.on(RegisterScalableTargetCommand).resolves({});
    mocks.ecs.on(UpdateServiceCommand).resolves({});
  });
  return mocks;
}

/**
 * Makes CloudWatch answer `values` for the single service `svc-0` of `topologyOf(1)` and ECS
 * describe it (`ca-dms-svc-0`) with `counts`.
 *
 * @example
 * ```ts
 * givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3, deploying: true });
 * ```
 */
export function givenOneService(
  aws: ControllerAwsMocks,
  values: MetricValues,
  counts: { running: number; desired: number; deploying?: boolean },
): void {
  aws.cw.on(GetMetricDataCommand).callsFake(metricsFrom(serviceNames(1), values));
  aws.ecs.on(DescribeServicesCommand).resolves({ services: [ecsService('ca-dms-svc-0', counts)] });
}
