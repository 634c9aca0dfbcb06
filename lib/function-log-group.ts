/**
 * Log groups, with a retention, for Lambda functions this app does not define itself: CDK's
 * custom-resource handlers and the rotation functions Secrets Manager's templates create. Such a
 * function writes to `/aws/lambda/<function name>`, which CloudWatch creates at its first
 * invocation with no expiry ("By default, CloudWatch automatically creates a log group named
 * /aws/lambda/<function name> for your function when it's first invoked",
 * https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-loggroups.html). Made
 * first, under that name, the group is the function's and keeps the retention.
 *
 * @example
 * ```ts
 * functionLogGroup(this, 'RotationLogs', {
 *   functionName: 'ca-dms-dev-shard-001-admin-rotation',
 *   retention: logs.RetentionDays.THREE_MONTHS,
 *   removalPolicy: RemovalPolicy.DESTROY,
 *   invokedAfter: [rotationApplication],
 * });
 * ```
 */
import type { RemovalPolicy } from 'aws-cdk-lib';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct, IConstruct } from 'constructs';

/** Props of {@link functionLogGroup}. */
export interface FunctionLogGroupProps {
  /** The function's name: a literal, or a token of a function of the same stack (`Ref`). */
  readonly functionName: string;
  readonly retention: logs.RetentionDays;
  readonly removalPolicy: RemovalPolicy;
  /**
   * What invokes the function first (a custom resource, a rotation schedule, or what creates
   * them): each is made to wait for the group, so no invocation can create it first, which would
   * make the group's own creation fail ("already exists").
   */
  readonly invokedAfter: readonly IConstruct[];
}

/** Creates `/aws/lambda/<functionName>` with a retention, before whatever invokes the function. */
export function functionLogGroup(scope: Construct, id: string, props: FunctionLogGroupProps): logs.LogGroup {
  const group = new logs.LogGroup(scope, id, {
    logGroupName: `/aws/lambda/${props.functionName}`,
    retention: props.retention,
    removalPolicy: props.removalPolicy,
  });
  for (const invoker of props.invokedAfter) invoker.node.addDependency(group);
  return group;
}
