import { CfnOutput, Duration, Stack, type StackProps } from 'aws-cdk-lib';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { SERVICE_NAMES, type DeploymentConfig } from '../config/deployment-config.js';
import { AlarmTopic } from '../control-plane/alarm-topic.js';
import { ControlPlane, type ControlPlaneEntries } from '../control-plane/control-plane.js';
import type { ShardDatabase } from '../data/shard-database.js';
import { SUBNETS, type Network } from '../network/network.js';
import { alarmServiceMap } from '../observability/alarm-names.js';
import { shardingDocument } from '../data/sharding-document.js';
import type { ScaledFleet, WatchedControlPlane } from './interfaces.js';

/** Props of {@link ControlPlaneStack}. */
export interface ControlPlaneStackProps extends StackProps {
  readonly config: DeploymentConfig;
  readonly network: Network;
  readonly shards: readonly ShardDatabase[];
  /** The services the controller scales. */
  readonly fleet: ScaledFleet;
  /** The worker service's job queue: the controller scales the worker on its depth. */
  readonly workerQueue: sqs.IQueue;
  readonly entries: ControlPlaneEntries;
  readonly migrationsDirectory: string;
  /** @default - found upwards from each entry */
  readonly depsLockFilePath?: string;
}

/** The scaling controller, its API, the alarm topic and the migrations custom resource. */
export class ControlPlaneStack extends Stack {
  readonly controlPlane: ControlPlane;
  readonly alarmTopic: AlarmTopic;
  /** What the observability stack watches and alarms to. */
  readonly watched: WatchedControlPlane;

  constructor(scope: Construct, id: string, props: ControlPlaneStackProps) {
    super(scope, id, props);
    const { config, network, shards, fleet } = props;
    const prefix = `${config.name}-${config.environment}`;
    const catalogShard = shards[0];
    if (!catalogShard) throw new Error('ControlPlaneStack needs at least one shard: the catalog lives on the first');
    if (!catalogShard.controlSecret) throw new Error('ControlPlaneStack: the first shard hosts the catalog and must be made with hostsCatalog (its control-plane login)');

    this.alarmTopic = new AlarmTopic(this, 'AlarmTopic', { displayName: `${prefix} scaling alarms` });
    this.controlPlane = new ControlPlane(this, 'ControlPlane', {
      namePrefix: prefix,
      vpc: network.vpc,
      subnets: { subnetGroupName: SUBNETS.compute },
      securityGroup: network.functionsSecurityGroup,
      entries: props.entries,
      migrationsDirectory: props.migrationsDirectory,
      depsLockFilePath: props.depsLockFilePath,
      cluster: fleet.cluster,
      services: Object.fromEntries(
        SERVICE_NAMES.map((name) => [
          name,
          {
            service: fleet.services[name].service,
            ...(name === 'worker' ? { queue: props.workerQueue } : { targetGroupFullName: fleet.targetGroups[name].targetGroupFullName }),
          },
        ]),
      ),
      loadBalancerFullName: fleet.loadBalancer.alb.loadBalancerFullName,
      // The catalog lives in the first shard's primary and is reached through its proxy.
      catalog: { secret: catalogShard.secret, controlSecret: catalogShard.controlSecret, host: catalogShard.proxy.endpoint },
      shardSecrets: shards.map((s) => s.secret),
      shardLogins: shards.map((s) => ({ app: s.appSecret, monitor: s.monitorSecret, mover: s.moverSecret })),
      loginRotation: Duration.days(config.database.secretRotationDays),
      shardingConfigJson: this.toJsonString(
        shardingDocument(
          shards.map((s) => ({ id: s.shardId, host: s.primary.dbInstanceEndpointAddress, replicas: s.replicas.map((r) => r.dbInstanceEndpointAddress) })),
          config.database.databaseName,
          config.database.shardingStrategy,
        ),
      ),
      alarmTopic: this.alarmTopic.topic,
      scalingConfig: config.scaling,
      alarmServiceMap: alarmServiceMap(prefix, SERVICE_NAMES, ['backend-read', 'backend-write', 'frontend']),
      reservedConcurrency: config.controlPlane.reservedConcurrency,
      apiThrottlingRateLimit: config.api.throttlingRateLimit,
      apiThrottlingBurstLimit: config.api.throttlingBurstLimit,
      logRetention: config.logRetentionDays as logs.RetentionDays,
    });

    const cp = this.controlPlane;
    this.watched = {
      alarmTopic: this.alarmTopic.topic,
      functions: { Evaluate: cp.evaluate.function, Alarm: cp.alarm.function, Api: cp.api.function, Migrate: cp.migrate.function, Moves: cp.moves.function },
      // Not the moves queue: with the opt-in reserved concurrency, while one long move runs every
      // later tick is throttled until its maximum event age and then lands there by design
      // (EventAgeExceeded). The worker's timeouts and crashes raise its Errors alarm instead.
      deadLetterQueues: { Evaluate: cp.failureQueues.evaluate.queue, Alarm: cp.failureQueues.alarm.queue },
      movesScheduleRuleName: cp.movesSchedule.ruleName,
    };

    new CfnOutput(this, 'ScalingApiUrl', {
      description: 'Base URL of the scaling API (IAM/SigV4-signed requests only)',
      value: this.controlPlane.scalingApi.api.url,
    });
    new CfnOutput(this, 'AlarmTopicArn', { description: 'Alarm topic (subscribe on-call here)', value: this.alarmTopic.topic.topicArn });
  }
}
