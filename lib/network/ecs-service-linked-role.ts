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

/**
 * Makes sure the account has ECS's service-linked role before any cluster or service is created.
 *
 * ECS creates `AWSServiceRoleForECS` itself on the first `CreateCluster`, then assumes it at
 * once; IAM is eventually consistent, so in a brand-new account the cluster (or service) often
 * fails with "Unable to assume the service linked role" and the first deploy rolls back. An
 * `AWS::IAM::ServiceLinkedRole` resource cannot help: it fails wherever the role already exists,
 * which is nearly every account. So this calls `iam:CreateServiceLinkedRole` and accepts
 * "already exists" (`InvalidInput`); it sits in the network stack, deployed first, so IAM has the
 * minutes the VPC and the databases take to propagate the role before the services stack needs
 * it. Nothing is deleted with the stack: the role is the account's, shared with every other ECS
 * workload, and ECS refuses its deletion while any cluster uses it.
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
  readonly resource: cr.AwsCustomResource;

  constructor(scope: Construct, id: string, props: EcsServiceLinkedRoleProps = {}) {
    super(scope, id);
    const stack = Stack.of(this);
    this.resource = new cr.AwsCustomResource(this, 'Resource', {
      resourceType: 'Custom::EcsServiceLinkedRole',
      onCreate: {
        service: 'IAM',
        action: 'createServiceLinkedRole',
        parameters: { AWSServiceName: 'ecs.amazonaws.com' },
        physicalResourceId: cr.PhysicalResourceId.of(ECS_SERVICE_LINKED_ROLE),
        // "Service role name AWSServiceRoleForECS has been taken in this account": the usual case.
        ignoreErrorCodesMatching: 'InvalidInput',
      },
      policy: cr.AwsCustomResourcePolicy.fromStatements([
        new iam.PolicyStatement({
          actions: ['iam:CreateServiceLinkedRole'],
          resources: [stack.formatArn({ service: 'iam', region: '', resource: 'role', resourceName: `aws-service-role/ecs.amazonaws.com/${ECS_SERVICE_LINKED_ROLE}` })],
          conditions: { StringEquals: { 'iam:AWSServiceName': 'ecs.amazonaws.com' } },
        }),
      ]),
      installLatestAwsSdk: false,
    });
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
      this.resource.node.addDependency(cdkGroup);
    } else {
      if (!(handler instanceof lambda.Function)) throw new Error(`EcsServiceLinkedRole: ${handler.node.path} is not the AwsCustomResource handler function`);
      functionLogGroup(this, 'HandlerLogs', {
        functionName: handler.functionName,
        retention,
        removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
        invokedAfter: [this.resource],
      });
    }
    acknowledge(
      handler,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      "CDK's AwsCustomResource handler, which creates the ECS service-linked role once: the managed policy only lets it write its own logs, whose log group name Lambda derives from a function name CloudFormation generates.",
    );
  }
}
