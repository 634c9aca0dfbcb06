import { type CfnResource, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { acknowledge } from '../nag.js';
import { validateProps } from '../validate.js';

/** Props of {@link Network}. */
export interface NetworkProps {
  /** The VPC's IPv4 range. @default '10.40.0.0/16' */
  readonly cidr?: string;
  /** Availability zones to span (at least 2). @default 2 */
  readonly maxAzs?: number;
  /** NAT gateways (1..maxAzs). @default 1 */
  readonly natGateways?: number;
  /** Interface endpoints for ECR, CloudWatch Logs, Secrets Manager and CloudWatch. @default true */
  readonly interfaceEndpoints?: boolean;
  /** Retention of the VPC flow logs. @default logs.RetentionDays.THREE_MONTHS */
  readonly flowLogRetention?: logs.RetentionDays;
  /** Retention of the logs of CDK's handler that strips the default security group. @default logs.RetentionDays.THREE_MONTHS */
  readonly handlerLogRetention?: logs.RetentionDays;
}

/** Subnet group names, used by the other stacks to place their resources. */
export const SUBNETS = {
  /** Load balancer and NAT gateways. */
  public: 'public',
  /** Fargate tasks and Lambda functions: private, egress through NAT. */
  compute: 'compute',
  /** RDS instances and proxies: no route to the internet at all. */
  data: 'data',
} as const;

/**
 * The VPC of CA-DMS: public subnets for the ALB, private subnets with NAT egress for compute,
 * isolated subnets for the databases; flow logs to CloudWatch; a gateway endpoint for S3 and
 * interface endpoints for the services whose traffic would otherwise cross NAT (image pulls,
 * logs, secrets, metrics). It also owns the security groups of the load balancer and of the
 * two workloads the databases admit, so the data and services stacks can wire rules between
 * them without a stack depending on a later one.
 *
 * @example
 * ```ts
 * const network = new Network(stack, 'Network', { maxAzs: 3, natGateways: 3 });
 * network.vpc.selectSubnets({ subnetGroupName: SUBNETS.data });
 * ```
 */
export class Network extends Construct {
  readonly vpc: ec2.Vpc;
  /** Attached to the public load balancer (its listeners open it to the internet). */
  readonly loadBalancerSecurityGroup: ec2.SecurityGroup;
  /** Attached to every Fargate task. */
  readonly servicesSecurityGroup: ec2.SecurityGroup;
  /** Attached to every control-plane Lambda function. */
  readonly functionsSecurityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: NetworkProps = {}) {
    super(scope, id);
    const maxAzs = props.maxAzs ?? 2;
    const natGateways = props.natGateways ?? 1;
    validateProps('Network', [
      [Number.isInteger(maxAzs) && maxAzs >= 2, `maxAzs must be an integer of at least 2 (got ${maxAzs})`],
      [Number.isInteger(natGateways) && natGateways >= 1 && natGateways <= maxAzs, `natGateways must be 1..maxAzs (got ${natGateways})`],
    ]);

    this.vpc = new ec2.Vpc(this, 'Vpc', {
      ipAddresses: ec2.IpAddresses.cidr(props.cidr ?? '10.40.0.0/16'),
      maxAzs,
      natGateways,
      restrictDefaultSecurityGroup: true,
      subnetConfiguration: [
        { name: SUBNETS.public, subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24, mapPublicIpOnLaunch: false },
        { name: SUBNETS.compute, subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 20 },
        { name: SUBNETS.data, subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
      ],
    });

    // CDK strips the default security group's rules with a custom resource whose provider is a
    // stack-wide Lambda function CDK gives no log group: Lambda would create
    // /aws/lambda/<function name> at its first invocation, kept forever. Not a group of that name:
    // every environment deployed before this group existed has run the handler (at the VPC's
    // creation), so Lambda made that group there, the function keeps its name on update, and the
    // template's group would fail to create ("already exists"). The handler logs instead to a
    // group CloudFormation names (LoggingConfig; its role's AWSLambdaBasicExecutionRole writes to
    // any group), made before it (Ref) and so before the custom resource invokes it; kept after a
    // failed create like the stack's other log groups.
    const restrictHandler = Stack.of(this).node.findChild('Custom::VpcRestrictDefaultSGCustomResourceProvider').node.findChild('Handler') as CfnResource;
    const restrictHandlerLogs = new logs.LogGroup(this, 'RestrictDefaultSgHandlerLogs', {
      retention: props.handlerLogRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });
    restrictHandler.addPropertyOverride('LoggingConfig.LogGroup', restrictHandlerLogs.logGroupName);
    this.vpc.node.findChild('RestrictDefaultSecurityGroupCustomResource').node.addDependency(restrictHandlerLogs);

    const flowLogGroup = new logs.LogGroup(this, 'FlowLogs', {
      retention: props.flowLogRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });
    this.vpc.addFlowLog('FlowLog', {
      destination: ec2.FlowLogDestination.toCloudWatchLogs(flowLogGroup),
      trafficType: ec2.FlowLogTrafficType.ALL,
      maxAggregationInterval: ec2.FlowLogMaxAggregationInterval.ONE_MINUTE,
    });

    // Image layers come from S3: the gateway endpoint is free and carries the bulk of it.
    this.vpc.addGatewayEndpoint('S3', { service: ec2.GatewayVpcEndpointAwsService.S3 });
    if (props.interfaceEndpoints ?? true) {
      const endpoints: Record<string, ec2.InterfaceVpcEndpointAwsService> = {
        EcrApi: ec2.InterfaceVpcEndpointAwsService.ECR,
        EcrDocker: ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
        Logs: ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
        SecretsManager: ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
        Monitoring: ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
      };
      for (const [name, service] of Object.entries(endpoints)) {
        const endpoint = this.vpc.addInterfaceEndpoint(name, {
          service,
          subnets: { subnetGroupName: SUBNETS.compute },
          privateDnsEnabled: true,
        });
        acknowledge(
          endpoint,
          'AwsSolutions-EC23',
          'Interface endpoint security group admits HTTPS from the VPC CIDR only; the CIDR is a CloudFormation reference cdk-nag cannot resolve, so the rule cannot evaluate it.',
        );
      }
    }

    this.loadBalancerSecurityGroup = new ec2.SecurityGroup(this, 'LoadBalancerSg', {
      vpc: this.vpc,
      description: 'CA-DMS public load balancer (listeners add their ports)',
      allowAllOutbound: true,
    });
    acknowledge(
      this.loadBalancerSecurityGroup,
      'AwsSolutions-EC23',
      'The internet-facing load balancer must accept HTTP/HTTPS from anywhere; only the listener ports (80, 443) are opened.',
    );
    this.servicesSecurityGroup = new ec2.SecurityGroup(this, 'ServicesSg', {
      vpc: this.vpc,
      description: 'CA-DMS Fargate tasks (ingress only from the load balancer, added by the services stack)',
      allowAllOutbound: true,
    });
    this.functionsSecurityGroup = new ec2.SecurityGroup(this, 'FunctionsSg', {
      vpc: this.vpc,
      description: 'CA-DMS control-plane Lambda functions (no ingress)',
      allowAllOutbound: true,
    });
  }
}
