import { CfnOutput, Duration, Stack, type StackProps } from 'aws-cdk-lib';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { SERVICE_NAMES, type DeploymentConfig } from '../config/deployment-config.js';
import { AlarmTopic } from '../control-plane/alarm-topic.js';
import { ControlPlane, type ControlPlaneEntries } from '../control-plane/control-plane.js';
import type { ShardDatabase } from '../data/shard-database.js';
import { SUBNETS, type Network } from '../network/network.js';
import { alarmServiceMap } from '../observability/alarm-names.js';
import { shardingDocument } from '../data/sharding-document.js';
import type { ServicesStack } from './services-stack.js';

/** Props of {@link ControlPlaneStack}. */
export interface ControlPlaneStackProps extends StackProps {
  readonly config: DeploymentConfig;
  readonly network: Network;
  readonly shards: readonly ShardDatabase[];
  readonly services: ServicesStack;
  readonly entries: ControlPlaneEntries;
  readonly migrationsDirectory: string;
  /** @default - found upwards from each entry */
  readonly depsLockFilePath?: string;
}

/** The scaling controller, its API, the alarm topic and the migrations custom resource. */
export class ControlPlaneStack extends Stack {
  readonly controlPlane: ControlPlane;
  readonly alarmTopic: AlarmTopic;

  constructor(scope: Construct, id: string, props: ControlPlaneStackProps) {
    super(scope, id, props);
    const { config, network, shards, services } = props;
    const prefix = `${config.name}-${config.environment}`;
    const catalogShard = shards[0];
    if (!catalogShard) throw new Error('ControlPlaneStack needs at least one shard: the catalog lives on the first');

    this.alarmTopic = new AlarmTopic(this, 'AlarmTopic', { displayName: `${prefix} scaling alarms` });
    this.controlPlane = new ControlPlane(this, 'ControlPlane', {
      namePrefix: prefix,
      vpc: network.vpc,
      subnets: { subnetGroupName: SUBNETS.compute },
      securityGroup: network.functionsSecurityGroup,
      entries: props.entries,
      migrationsDirectory: props.migrationsDirectory,
      depsLockFilePath: props.depsLockFilePath,
      cluster: services.cluster,
      services: Object.fromEntries(
        SERVICE_NAMES.map((name) => [
          name,
          {
            service: services.services[name].service,
            ...(name === 'worker' ? {} : { targetGroupFullName: services.targetGroups[name].targetGroupFullName }),
          },
        ]),
      ),
      loadBalancerFullName: services.loadBalancer.alb.loadBalancerFullName,
      // The catalog lives in the first shard's primary and is reached through its proxy.
      catalog: { secret: catalogShard.secret, host: catalogShard.proxy.endpoint },
      shardSecrets: shards.map((s) => s.secret),
      shardAppSecrets: shards.map((s) => s.appSecret),
      appSecretRotation: Duration.days(config.database.secretRotationDays),
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

    new CfnOutput(this, 'ScalingApiUrl', {
      description: 'Base URL of the scaling API (IAM/SigV4-signed requests only)',
      value: this.controlPlane.scalingApi.api.url,
    });
    new CfnOutput(this, 'AlarmTopicArn', { description: 'Alarm topic (subscribe on-call here)', value: this.alarmTopic.topic.topicArn });
  }
}
