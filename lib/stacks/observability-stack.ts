import { CfnOutput, Duration, Stack, type StackProps } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { SERVICE_NAMES, type DeploymentConfig } from '../config/deployment-config.js';
import { resolveServiceConfig } from '../../functions/core/scaling/config.js';
import type { ShardDatabase } from '../data/shard-database.js';
import { FunctionAlarms } from '../observability/function-alarms.js';
import { CONTROLLER_METRICS_SERVICE, CONTROLLER_NAMESPACE, ScalingDashboard } from '../observability/scaling-dashboard.js';
import { ServiceAlarms } from '../observability/service-alarms.js';
import { ShardAlarms } from '../observability/shard-alarms.js';
import type { ScaledFleet, WatchedControlPlane } from './interfaces.js';
import { pascal } from './services-stack.js';

/** Props of {@link ObservabilityStack}. */
export interface ObservabilityStackProps extends StackProps {
  readonly config: DeploymentConfig;
  readonly shards: readonly ShardDatabase[];
  /** The services whose alarms and graphs it shows. */
  readonly fleet: ScaledFleet;
  readonly controlPlane: WatchedControlPlane;
  /** The worker's job queue: a backlog per task over the controller's threshold evaluates the worker at once. */
  readonly workerQueue: sqs.IQueue;
  /** Where the worker's jobs go after failing maxReceiveCount times. */
  readonly workerDeadLetterQueue: sqs.IQueue;
}

/** The dashboard and every alarm, all publishing to the control plane's alarm topic. */
export class ObservabilityStack extends Stack {
  readonly dashboard: ScalingDashboard;

  constructor(scope: Construct, id: string, props: ObservabilityStackProps) {
    super(scope, id, props);
    const { config, shards, fleet } = props;
    const prefix = `${config.name}-${config.environment}`;
    const topic = props.controlPlane.alarmTopic;
    const cp = props.controlPlane;

    for (const shard of shards) {
      new ShardAlarms(this, `${pascal(shard.shardId)}Alarms`, {
        shardId: shard.shardId,
        primary: shard.primary,
        replicas: shard.replicas,
        topic,
        cpuPercent: config.alarms.cpuPercent,
        freeStorageGiB: config.alarms.freeStorageGiB,
        replicaLagSeconds: config.alarms.replicaLagSeconds,
        maxConnections: config.alarms.databaseConnections,
      });
    }
    for (const name of SERVICE_NAMES) {
      const scaling = resolveServiceConfig(config.scaling, name);
      new ServiceAlarms(this, `${pascal(name)}Alarms`, {
        namePrefix: prefix,
        serviceName: name,
        service: fleet.services[name].service,
        ...(name === 'worker' ? {} : { targetGroup: fleet.targetGroups[name] }),
        topic,
        cpuPercent: scaling.cpu_scale_up,
        memoryPercent: scaling.memory_scale_up,
        responseTimeMs: scaling.response_time_scale_up,
      });
    }
    const functions = cp.functions;
    new FunctionAlarms(this, 'ControlPlaneAlarms', {
      functions,
      deadLetterQueues: cp.deadLetterQueues,
      topic,
      errorThreshold: config.alarms.lambdaErrors,
    });

    // The moves failure queue raises no alarm (see ControlPlaneStack.watched), so failed deliveries of its schedule do.
    const movesDelivery = new cloudwatch.Alarm(this, 'MovesScheduleFailedInvocations', {
      alarmDescription: 'control plane: EventBridge could not invoke the moves worker (planned shard moves are not progressing)',
      metric: new cloudwatch.Metric({
        namespace: 'AWS/Events',
        metricName: 'FailedInvocations',
        dimensionsMap: { RuleName: cp.movesScheduleRuleName },
        period: Duration.minutes(5),
        statistic: 'Sum',
      }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    movesDelivery.addAlarmAction(new cwActions.SnsAction(topic));

    // The moves worker's own metrics (namespace and service dimension of every controller metric),
    // each at or above its threshold in one 5-minute period, to the topic.
    const movesWorkerAlarm = (id: string, p: { description: string; metricName: string; statistic: 'Sum' | 'Maximum'; threshold: number; missing: cloudwatch.TreatMissingData }): void => {
      new cloudwatch.Alarm(this, id, {
        alarmDescription: p.description,
        metric: new cloudwatch.Metric({
          namespace: CONTROLLER_NAMESPACE,
          metricName: p.metricName,
          dimensionsMap: { service: CONTROLLER_METRICS_SERVICE },
          period: Duration.minutes(5),
          statistic: p.statistic,
        }),
        threshold: p.threshold,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: p.missing,
      }).addAlarmAction(new cwActions.SnsAction(topic));
    };
    // A failed move step leaves the job resumable and does not fail the invocation, so only the
    // worker's own metric shows it.
    movesWorkerAlarm('MoveStepFailures', {
      description: 'control plane: a shard move step failed (the job is resumable; its error is on the job: GET /shards/moves/{id})',
      metricName: 'MoveFailures',
      statistic: 'Sum',
      threshold: 1,
      missing: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    // A move that runs without failing and without moving forward (a catch-up that never gets
    // within its threshold, a verification always over its budget) raises no MoveFailures: the
    // worker reports how long the jobs it ran have gone without progress.
    movesWorkerAlarm('MoveWithoutProgress', {
      description: `control plane: a shard move has made no progress for ${config.alarms.moveStalledMinutes} minutes without failing (its state and progressedAt: GET /shards/moves/{id}; cancel it or relieve the writes or reads holding it)`,
      metricName: 'MoveSecondsWithoutProgress',
      statistic: 'Maximum',
      threshold: config.alarms.moveStalledMinutes * 60,
      // A run holds the worker for up to 13 minutes, and ticks that find it busy publish nothing:
      // a stalled move gives one datapoint per run. Missing data keeps the alarm where it is (in
      // alarm until a run reports the move progressing, finished or gone), rather than clearing
      // it between runs and paging again at each.
      missing: cloudwatch.TreatMissingData.IGNORE,
    });

    // The worker's scale-out signal, on the statistic the controller reads (Maximum) and per
    // running task like its queue_depth_scale_up: the alarm evaluates the worker at once instead
    // of at the next tick. Its ServiceName dimension names the worker for the alarm function.
    const worker = resolveServiceConfig(config.scaling, 'worker');
    const backlog = new cloudwatch.Alarm(this, 'WorkerQueueDepth', {
      alarmDescription: `worker: more than ${worker.queue_depth_scale_up} waiting jobs per running task (queue_depth_scale_up): the controller evaluates the worker now`,
      metric: new cloudwatch.MathExpression({
        expression: 'visible / IF(tasks > 0, tasks, 1)',
        usingMetrics: {
          visible: props.workerQueue.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(1), statistic: 'Maximum' }),
          tasks: new cloudwatch.Metric({
            namespace: 'ECS/ContainerInsights',
            metricName: 'RunningTaskCount',
            dimensionsMap: { ClusterName: fleet.cluster.clusterName, ServiceName: fleet.services.worker.service.serviceName },
            period: Duration.minutes(1),
            statistic: 'Average',
          }),
        },
        period: Duration.minutes(1),
        label: 'waiting jobs per running task',
      }),
      threshold: worker.queue_depth_scale_up,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 2,
      datapointsToAlarm: 2,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    backlog.addAlarmAction(new cwActions.SnsAction(topic));

    // A job lands here only after failing every receive: someone must look at it, and nothing
    // else reports it (the worker's own errors are the application's).
    const workerDeadLetters = new cloudwatch.Alarm(this, 'WorkerDeadLetters', {
      alarmDescription: 'worker: jobs failed every attempt and wait in the dead-letter queue (inspect, fix, then redrive them from the SQS console)',
      metric: props.workerDeadLetterQueue.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(5), statistic: 'Maximum' }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    workerDeadLetters.addAlarmAction(new cwActions.SnsAction(topic));

    const elb5xx = new cloudwatch.Alarm(this, 'LoadBalancer5xx', {
      alarmDescription: `load balancer: more than ${config.alarms.alb5xxPerMinute} of its own 5xx answers a minute (no healthy target, or targets failing)`,
      metric: fleet.loadBalancer.alb.metrics.httpCodeElb(elbv2.HttpCodeElb.ELB_5XX_COUNT, { period: Duration.minutes(1), statistic: 'Sum' }),
      threshold: config.alarms.alb5xxPerMinute,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 3,
      datapointsToAlarm: 2,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    elb5xx.addAlarmAction(new cwActions.SnsAction(topic));

    this.dashboard = new ScalingDashboard(this, 'Dashboard', {
      dashboardName: prefix,
      services: SERVICE_NAMES.map((name) => ({
        name,
        clusterName: fleet.cluster.clusterName,
        service: fleet.services[name].service,
        ...(name === 'worker' ? {} : { targetGroup: fleet.targetGroups[name] }),
      })),
      shards: shards.map((s) => ({ shardId: s.shardId, primary: s.primary, replicas: s.replicas })),
      functions,
    });

    new CfnOutput(this, 'DashboardUrl', {
      description: 'The CloudWatch dashboard',
      value: `https://${this.region}.console.aws.amazon.com/cloudwatch/home?region=${this.region}#dashboards:name=${prefix}`,
    });
  }
}
