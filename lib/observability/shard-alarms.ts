import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as rds from 'aws-cdk-lib/aws-rds';
import type * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** Props of {@link ShardAlarms}. */
export interface ShardAlarmsProps {
  readonly shardId: string;
  readonly primary: rds.IDatabaseInstance;
  readonly replicas: readonly rds.IDatabaseInstance[];
  readonly topic: sns.ITopic;
  /** @default 80 */
  readonly cpuPercent?: number;
  /** @default 10 */
  readonly freeStorageGiB?: number;
  /** @default 30 */
  readonly replicaLagSeconds?: number;
  /** @default 400 */
  readonly maxConnections?: number;
}

/**
 * One shard's alarms, all publishing to the alarm topic: CPU, free storage and connections on
 * every instance, replication lag on every replica.
 *
 * @example
 * ```ts
 * new ShardAlarms(stack, 'Shard001Alarms', { shardId: 'shard-001', primary, replicas, topic });
 * ```
 */
export class ShardAlarms extends Construct {
  readonly alarms: readonly cloudwatch.Alarm[];

  constructor(scope: Construct, id: string, props: ShardAlarmsProps) {
    super(scope, id);
    const cpu = props.cpuPercent ?? 80;
    const storage = props.freeStorageGiB ?? 10;
    const lag = props.replicaLagSeconds ?? 30;
    const connections = props.maxConnections ?? 400;
    validateProps('ShardAlarms', [
      [cpu > 0 && cpu <= 100, `cpuPercent must be 1..100 (got ${cpu})`],
      [storage > 0, `freeStorageGiB must be positive (got ${storage})`],
      [lag > 0, `replicaLagSeconds must be positive (got ${lag})`],
      [connections > 0, `maxConnections must be positive (got ${connections})`],
    ]);
    const action = new cwActions.SnsAction(props.topic);
    const alarms: cloudwatch.Alarm[] = [];
    const add = (id: string, metric: cloudwatch.IMetric, threshold: number, comparison: cloudwatch.ComparisonOperator, description: string): void => {
      const alarm = new cloudwatch.Alarm(this, id, {
        metric,
        threshold,
        comparisonOperator: comparison,
        evaluationPeriods: 3,
        datapointsToAlarm: 3,
        treatMissingData: cloudwatch.TreatMissingData.MISSING,
        alarmDescription: `${props.shardId}: ${description}`,
      });
      alarm.addAlarmAction(action);
      alarms.push(alarm);
    };
    const instances = [['Primary', props.primary] as const, ...props.replicas.map((r, i) => [`Replica${i + 1}`, r] as const)];
    for (const [name, instance] of instances) {
      add(`${name}Cpu`, instance.metricCPUUtilization({ period: Duration.minutes(1) }), cpu, cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD, `${name} CPU above ${cpu}%`);
      add(
        `${name}FreeStorage`,
        instance.metricFreeStorageSpace({ period: Duration.minutes(5) }),
        storage * 1024 ** 3,
        cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        `${name} free storage below ${storage} GiB`,
      );
      add(
        `${name}Connections`,
        instance.metricDatabaseConnections({ period: Duration.minutes(1) }),
        connections,
        cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        `${name} connections above ${connections}`,
      );
    }
    props.replicas.forEach((replica, i) => {
      add(
        `Replica${i + 1}Lag`,
        replica.metric('ReplicaLag', { period: Duration.minutes(1), statistic: 'Maximum' }),
        lag,
        cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        `Replica${i + 1} replication lag above ${lag} s`,
      );
    });
    this.alarms = alarms;
  }
}
