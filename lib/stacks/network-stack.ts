import { Stack, type StackProps } from 'aws-cdk-lib';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import type { DeploymentConfig } from '../config/deployment-config.js';
import { Network } from '../network/network.js';

/** Props of {@link NetworkStack}. */
export interface NetworkStackProps extends StackProps {
  readonly config: DeploymentConfig;
}

/** The VPC, its endpoints and flow logs, and the workload security groups. */
export class NetworkStack extends Stack {
  readonly network: Network;

  constructor(scope: Construct, id: string, props: NetworkStackProps) {
    super(scope, id, props);
    const n = props.config.network;
    this.network = new Network(this, 'Network', {
      cidr: n.cidr,
      maxAzs: n.maxAzs,
      natGateways: n.natGateways,
      interfaceEndpoints: n.interfaceEndpoints,
      flowLogRetention: n.flowLogRetentionDays as logs.RetentionDays,
    });
  }
}
