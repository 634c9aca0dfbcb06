import { RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as cr from 'aws-cdk-lib/custom-resources';
import { Construct } from 'constructs';
import { functionLogGroup } from '../function-log-group.js';
import { acknowledge } from '../nag.js';

/** The ECS service-linked role's name (fixed by AWS). */
export const ECS_SERVICE_LINKED_ROLE = 'AWSServiceRoleForECS';
/** Application Auto Scaling's service-linked role for ECS services (fixed by AWS). */
export const ECS_AUTOSCALING_SERVICE_LINKED_ROLE = 'AWSServiceRoleForApplicationAutoScaling_ECSService';

/**
 * Makes sure the account has the two service-linked roles the services stack needs before it
 * creates anything: ECS's own (`AWSServiceRoleForECS`) and Application Auto Scaling's for ECS
 * services (`AWSServiceRoleForApplicationAutoScaling_ECSService`), which every scalable target
 * names as its `RoleARN`.
 *
 * Each service creates its role itself on first use (ECS on the first `CreateCluster`,
 * Application Auto Scaling on the first `RegisterScalableTarget` for ECS) and assumes it at once;
 * IAM is eventually consistent, so in a brand-new account the cluster, a service or a scalable
 * target often fails with "Unable to assume the service linked role" / "Unable to assume IAM
 * role: ...AWSServiceRoleForApplicationAutoScaling_ECSService" and the first deploy rolls back
 * (aws/aws-cdk#4108). An `AWS::IAM::ServiceLinkedRole` resource cannot help: it fails wherever
 * the role already exists, which is nearly every account. So this calls
 * `iam:CreateServiceLinkedRole` for each and accepts "already exists" (`InvalidInput`); it sits
 * in the network stack, deployed first, so IAM has the minutes the VPC and the databases take to
 * propagate the roles before the services stack needs them. Nothing is deleted with the stack:
 * the roles are the account's, shared with every other ECS workload, and AWS refuses their
 * deletion while anything uses them.
 *
 * @example
 * ```ts
 * new EcsServiceLinkedRole(networkStack, 'EcsServiceLinkedRole');
 * ```
 */
/** Props of {@link EcsServiceLinkedRole}. */
export interface EcsServiceLinkedRoleProps {
  /** Retention of the logs of the handler that creates the role. @default logs.RetentionDays.THREE_MONTHS */
  readonly logRetention?: logs.RetentionDays;
}

export class EcsServiceLinkedRole extends Construct {
  /** Creates ECS's service-linked role. */
  readonly resource: cr.AwsCustomResource;
  /** Creates Application Auto Scaling's service-linked role for ECS services. */
  readonly autoScalingResource: cr.AwsCustomResource;

  constructor(scope: Construct, id: string, props: EcsServiceLinkedRoleProps = {}) {
    super(scope, id);
    const stack = Stack.of(this);
    const createRole = (id: string, resourceType: string, serviceName: string, roleName: string): cr.AwsCustomResource =>
      new cr.AwsCustomResource(this, id, {
        resourceType,
        onCreate: {
          service: 'IAM',
          action: 'createServiceLinkedRole',
          parameters: { AWSServiceName: serviceName },
          physicalResourceId: cr.PhysicalResourceId.of(roleName),
          // "Service role name ... has been taken in this account": the usual case.
          ignoreErrorCodesMatching: 'InvalidInput',
        },
        policy: cr.AwsCustomResourcePolicy.fromStatements([
          new iam.PolicyStatement({
            actions: ['iam:CreateServiceLinkedRole'],
            resources: [stack.formatArn({ service: 'iam', region: '', resource: 'role', resourceName: `aws-service-role/${serviceName}/${roleName}` })],
            conditions: { StringEquals: { 'iam:AWSServiceName': serviceName } },
          }),
        ]),
        installLatestAwsSdk: false,
      });
    this.resource = createRole('Resource', 'Custom::EcsServiceLinkedRole', 'ecs.amazonaws.com', ECS_SERVICE_LINKED_ROLE);
    this.autoScalingResource = createRole(
      'AutoScalingResource',
      'Custom::EcsAutoScalingServiceLinkedRole',
      'ecs.application-autoscaling.amazonaws.com',
      ECS_AUTOSCALING_SERVICE_LINKED_ROLE,
    );
    // The handler is a stack-wide singleton that AwsCustomResource creates beside the stack's root.
    const handler = stack.node.findChild(`AWS${cr.AwsCustomResource.PROVIDER_FUNCTION_UUID.replace(/-/g, '')}`);
    // CDK gives the handler a log group kept forever; kept except after a failed create like the
    // stacks' other log groups (its name follows the generated function name, so never collides).
    // Its retention is the configured one (CDK's default is two years), and the custom resource,
    // the handler's first invocation, waits for it: invoked first, the handler would create the
    // group itself and the group's own creation would then fail ("already exists"). CDK makes the
    // group under @aws-cdk/aws-lambda:useCdkManagedLogGroup (cdk.json); without it, this does.
    const retention = props.logRetention ?? logs.RetentionDays.THREE_MONTHS;
    const cdkGroup = handler.node.tryFindChild('LogGroup');
    if (cdkGroup instanceof logs.LogGroup) {
      cdkGroup.applyRemovalPolicy(RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE);
      (cdkGroup.node.defaultChild as logs.CfnLogGroup).retentionInDays = retention;
      for (const resource of [this.resource, this.autoScalingResource]) resource.node.addDependency(cdkGroup);
    } else {
      if (!(handler instanceof lambda.Function)) throw new Error(`EcsServiceLinkedRole: ${handler.node.path} is not the AwsCustomResource handler function`);
      functionLogGroup(this, 'HandlerLogs', {
        functionName: handler.functionName,
        retention,
        removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
        invokedAfter: [this.resource, this.autoScalingResource],
      });
    }
    acknowledge(
      handler,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      "CDK's AwsCustomResource handler, which creates the ECS and ECS auto scaling service-linked roles once: the managed policy only lets it write its own logs, whose log group name Lambda derives from a function name CloudFormation generates.",
    );
  }
}
