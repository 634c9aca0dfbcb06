import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as rds from 'aws-cdk-lib/aws-rds';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** The namespace the controller publishes its metrics to (EMF through Powertools). */
export const CONTROLLER_NAMESPACE = 'CaDmsScaling';
/**
 * The `service` dimension Powertools adds to every controller metric (the functions'
 * `METRICS_SERVICE`); a CloudWatch metric is identified by all its dimensions, so graphs must
 * name it too.
 */
export const CONTROLLER_METRICS_SERVICE = 'ca-dms-scaling-controller';

/** One service on the dashboard. */
export interface DashboardService {
  readonly name: string;
  readonly clusterName: string;
  readonly service: ecs.FargateService;
  /** @default - no response-time graph */
  readonly targetGroup?: elbv2.ApplicationTargetGroup;
}

/** One shard on the dashboard. */
export interface DashboardShard {
  readonly shardId: string;
  readonly primary: rds.IDatabaseInstance;
  readonly replicas: readonly rds.IDatabaseInstance[];
}

/** Props of {@link ScalingDashboard}. */
export interface ScalingDashboardProps {
  readonly dashboardName: string;
  readonly services: readonly DashboardService[];
  readonly shards: readonly DashboardShard[];
  /** Control-plane functions by a readable name. */
  readonly functions: Readonly<Record<string, lambda.IFunction>>;
}

const PERIOD = Duration.minutes(1);

/**
 * The operators' dashboard: per service CPU, memory, response time, desired and running tasks
 * and the controller's desired count; the controller's decisions by direction and outcome; per shard connections, free storage and replica lag; for the
 * control plane, errors and durations of every function.
 *
 * @example
 * ```ts
 * const dash = new ScalingDashboard(stack, 'Dashboard', { dashboardName: 'ca-dms-dev', services, shards, functions });
 * ```
 */
export class ScalingDashboard extends Construct {
  readonly dashboard: cloudwatch.Dashboard;

  constructor(scope: Construct, id: string, props: ScalingDashboardProps) {
    super(scope, id);
    validateProps('ScalingDashboard', [
      [/^[A-Za-z0-9_-]{1,255}$/.test(props.dashboardName), `dashboardName must be letters, digits, - and _ (got "${props.dashboardName}")`],
      [props.services.length > 0, 'services must not be empty'],
    ]);
    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: props.dashboardName,
      defaultInterval: Duration.hours(3),
    });

    for (const s of props.services) {
      const dims = { ClusterName: s.clusterName, ServiceName: s.service.serviceName };
      const insights = (metricName: string): cloudwatch.Metric =>
        new cloudwatch.Metric({ namespace: 'ECS/ContainerInsights', metricName, dimensionsMap: dims, statistic: 'Average', period: PERIOD });
      this.dashboard.addWidgets(new cloudwatch.TextWidget({ markdown: `## Service ${s.name}`, width: 24, height: 1 }));
      this.dashboard.addWidgets(
        new cloudwatch.GraphWidget({
          title: `${s.name}: CPU and memory (%)`,
          left: [s.service.metricCpuUtilization({ period: PERIOD }), s.service.metricMemoryUtilization({ period: PERIOD })],
          leftYAxis: { min: 0, max: 100 },
          width: 6,
        }),
        new cloudwatch.GraphWidget({
          title: `${s.name}: response time (s)`,
          left: s.targetGroup
            ? [
                s.targetGroup.metrics.targetResponseTime({ period: PERIOD, statistic: 'p50', label: 'p50' }),
                s.targetGroup.metrics.targetResponseTime({ period: PERIOD, statistic: 'p95', label: 'p95' }),
              ]
            : [],
          width: 6,
        }),
        new cloudwatch.GraphWidget({
          title: `${s.name}: desired and running tasks`,
          left: [insights('DesiredTaskCount'), insights('RunningTaskCount')],
          leftYAxis: { min: 0 },
          width: 6,
        }),
        new cloudwatch.GraphWidget({
          title: `${s.name}: controller's desired count`,
          left: [
            new cloudwatch.Metric({
              namespace: CONTROLLER_NAMESPACE,
              metricName: 'DesiredCount',
              dimensionsMap: { service: CONTROLLER_METRICS_SERVICE, ScaledService: s.name },
              statistic: 'Maximum',
              period: PERIOD,
            }),
          ],
          leftYAxis: { min: 0 },
          width: 6,
        }),
      );
    }

    for (const shard of props.shards) {
      const instances = [shard.primary, ...shard.replicas];
      this.dashboard.addWidgets(new cloudwatch.TextWidget({ markdown: `## Shard ${shard.shardId}`, width: 24, height: 1 }));
      this.dashboard.addWidgets(
        new cloudwatch.GraphWidget({
          title: `${shard.shardId}: connections`,
          left: instances.map((i) => i.metricDatabaseConnections({ period: PERIOD })),
          width: 8,
        }),
        new cloudwatch.GraphWidget({
          title: `${shard.shardId}: free storage (bytes)`,
          left: instances.map((i) => i.metricFreeStorageSpace({ period: Duration.minutes(5) })),
          width: 8,
        }),
        new cloudwatch.GraphWidget({
          title: `${shard.shardId}: replica lag (s)`,
          left: shard.replicas.map((r) => r.metric('ReplicaLag', { period: PERIOD, statistic: 'Maximum' })),
          width: 8,
        }),
      );
    }

    const fns = Object.entries(props.functions);
    this.dashboard.addWidgets(new cloudwatch.TextWidget({ markdown: '## Control plane', width: 24, height: 1 }));
    // Decisions are published per direction and per outcome; SEARCH shows every value that
    // occurs without this dashboard having to know them.
    const search = (dimension: string, metricName: string, label: string): cloudwatch.MathExpression =>
      new cloudwatch.MathExpression({
        expression: `SEARCH('{${CONTROLLER_NAMESPACE},${dimension},service} MetricName="${metricName}" service="${CONTROLLER_METRICS_SERVICE}"', 'Sum', 300)`,
        label,
        period: Duration.minutes(5),
      });
    this.dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: 'Control plane: errors',
        left: fns.map(([name, fn]) => fn.metricErrors({ period: Duration.minutes(5), statistic: 'Sum', label: name })),
        width: 6,
      }),
      new cloudwatch.GraphWidget({
        title: 'Control plane: duration p95 (ms)',
        left: fns.map(([name, fn]) => fn.metricDuration({ period: Duration.minutes(5), statistic: 'p95', label: name })),
        width: 6,
      }),
      new cloudwatch.GraphWidget({ title: 'Scaling decisions by direction', left: [search('Direction', 'Decisions', 'decisions')], width: 6 }),
      new cloudwatch.GraphWidget({ title: 'Scaling decisions by outcome', left: [search('Outcome', 'DecisionOutcomes', 'outcomes')], width: 6 }),
    );
  }
}
