import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import type * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';
import { serviceAlarmNames } from './alarm-names.js';
import { RESPONSE_TIME_STATISTIC } from '../../functions/adapters/aws/topology.js';

/** Props of {@link ServiceAlarms}. */
export interface ServiceAlarmsProps {
  readonly namePrefix: string;
  /** The scaling configuration's service name. */
  readonly serviceName: string;
  readonly service: ecs.FargateService;
  /** Present for services behind the load balancer. @default - no response-time alarm */
  readonly targetGroup?: elbv2.ApplicationTargetGroup;
  readonly topic: sns.ITopic;
  /** The scale-up thresholds of the runtime configuration. */
  readonly cpuPercent: number;
  readonly memoryPercent: number;
  readonly responseTimeMs: number;
}

/**
 * The alarms that wake the controller early for one service: CPU, memory and (behind the load
 * balancer) response time above the scale-up thresholds, named as `serviceAlarmNames` says so
 * the alarm function can tell which service to evaluate.
 *
 * @example
 * ```ts
 * new ServiceAlarms(stack, 'WorkerAlarms', { namePrefix, serviceName: 'worker', service, topic,
 *   cpuPercent: 80, memoryPercent: 85, responseTimeMs: 1000 });
 * ```
 */
export class ServiceAlarms extends Construct {
  readonly alarms: readonly cloudwatch.Alarm[];

  constructor(scope: Construct, id: string, props: ServiceAlarmsProps) {
    super(scope, id);
    validateProps('ServiceAlarms', [
      [props.cpuPercent > 0 && props.cpuPercent <= 100, `cpuPercent must be 1..100 (got ${props.cpuPercent})`],
      [props.memoryPercent > 0 && props.memoryPercent <= 100, `memoryPercent must be 1..100 (got ${props.memoryPercent})`],
      [props.responseTimeMs > 0, `responseTimeMs must be positive (got ${props.responseTimeMs})`],
    ]);
    const names = serviceAlarmNames(props.namePrefix, props.serviceName);
    const action = new cwActions.SnsAction(props.topic);
    const common = {
      evaluationPeriods: 2,
      datapointsToAlarm: 2,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    };
    const alarms = [
      new cloudwatch.Alarm(this, 'Cpu', {
        ...common,
        alarmName: names.cpu,
        alarmDescription: `${props.serviceName}: CPU above ${props.cpuPercent}% (scale-up threshold)`,
        metric: props.service.metricCpuUtilization({ period: Duration.minutes(1) }),
        threshold: props.cpuPercent,
      }),
      new cloudwatch.Alarm(this, 'Memory', {
        ...common,
        alarmName: names.memory,
        alarmDescription: `${props.serviceName}: memory above ${props.memoryPercent}% (scale-up threshold)`,
        metric: props.service.metricMemoryUtilization({ period: Duration.minutes(1) }),
        threshold: props.memoryPercent,
      }),
    ];
    if (props.targetGroup) {
      alarms.push(
        new cloudwatch.Alarm(this, 'ResponseTime', {
          ...common,
          alarmName: names.responseTime,
          alarmDescription: `${props.serviceName}: ${RESPONSE_TIME_STATISTIC} response time above ${props.responseTimeMs} ms (scale-up threshold)`,
          // The controller reads the same statistic, so the evaluation this alarm triggers sees what it saw.
          metric: props.targetGroup.metrics.targetResponseTime({ period: Duration.minutes(1), statistic: RESPONSE_TIME_STATISTIC }),
          // TargetResponseTime is in seconds.
          threshold: props.responseTimeMs / 1000,
        }),
      );
    }
    for (const alarm of alarms) alarm.addAlarmAction(action);
    this.alarms = alarms;
  }
}
