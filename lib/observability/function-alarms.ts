import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as sns from 'aws-cdk-lib/aws-sns';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** Props of {@link FunctionAlarms}. */
export interface FunctionAlarmsProps {
  /** The functions by a readable name. */
  readonly functions: Readonly<Record<string, lambda.IFunction>>;
  /** Dead-letter queues by a readable name: any message in them is an alarm. */
  readonly deadLetterQueues: Readonly<Record<string, sqs.IQueue>>;
  readonly topic: sns.ITopic;
  /** Errors per 5 minutes that raise the alarm. @default 1 */
  readonly errorThreshold?: number;
}

/**
 * The control plane's own health: errors of each function and anything landing in a
 * dead-letter queue, published to the alarm topic.
 *
 * @example
 * ```ts
 * new FunctionAlarms(stack, 'ControlPlaneAlarms', { functions: { evaluate }, deadLetterQueues: { evaluate: dlq }, topic });
 * ```
 */
export class FunctionAlarms extends Construct {
  readonly alarms: readonly cloudwatch.Alarm[];

  constructor(scope: Construct, id: string, props: FunctionAlarmsProps) {
    super(scope, id);
    const errors = props.errorThreshold ?? 1;
    validateProps('FunctionAlarms', [[Number.isInteger(errors) && errors >= 1, `errorThreshold must be a whole number of at least 1 (got ${errors})`]]);
    const action = new cwActions.SnsAction(props.topic);
    const alarms: cloudwatch.Alarm[] = [];
    for (const [name, fn] of Object.entries(props.functions)) {
      alarms.push(
        new cloudwatch.Alarm(this, `${name}Errors`, {
          alarmDescription: `control plane: ${name} function errors`,
          metric: fn.metricErrors({ period: Duration.minutes(5), statistic: 'Sum' }),
          threshold: errors,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
      );
    }
    for (const [name, queue] of Object.entries(props.deadLetterQueues)) {
      alarms.push(
        new cloudwatch.Alarm(this, `${name}DeadLetters`, {
          alarmDescription: `control plane: failed ${name} events in the dead-letter queue`,
          metric: queue.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(5), statistic: 'Maximum' }),
          threshold: 1,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
      );
    }
    for (const alarm of alarms) alarm.addAlarmAction(action);
    this.alarms = alarms;
  }
}
