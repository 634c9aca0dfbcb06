import { Stack, type StackProps } from 'aws-cdk-lib';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import type { DeploymentConfig } from '../config/deployment-config.js';
import { EcsServiceLinkedRole } from '../network/ecs-service-linked-role.js';
import { Network } from '../network/network.js';

/** Props of {@link NetworkStack}. */
export interface NetworkStackProps extends StackProps {
  readonly config: DeploymentConfig;
}

/**
 * The VPC, its endpoints and flow logs, the workload security groups, and the service-linked
 * roles of ECS and of Application Auto Scaling for ECS (this stack deploys first: see
 * {@link EcsServiceLinkedRole}).
 */
export class NetworkStack extends Stack {
  readonly network: Network;
  readonly ecsServiceLinkedRole: EcsServiceLinkedRole;

  constructor(scope: Construct, id: string, props: NetworkStackProps) {
    super(scope, id, props);
    const n = props.config.network;
    this.network = new Network(this, 'Network', {
      cidr: n.cidr,
      maxAzs: n.maxAzs,
      natGateways: n.natGateways,
      interfaceEndpoints: n.interfaceEndpoints,
      flowLogRetention: n.flowLogRetentionDays as logs.RetentionDays,
      handlerLogRetention: props.config.logRetentionDays as logs.RetentionDays,
    });
    this.ecsServiceLinkedRole = new EcsServiceLinkedRole(this, 'EcsServiceLinkedRole', { logRetention: props.config.logRetentionDays as logs.RetentionDays });
  }
}
