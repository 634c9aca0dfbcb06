/**
 * cdk-nag acknowledgements, recorded on the narrowest construct with the reason. Every one of
 * them is listed in `docs/cdk-nag.md` (a test keeps the list and the code in step).
 *
 * @example
 * ```ts
 * acknowledge(bucket, 'AwsSolutions-S1', 'This bucket receives access logs itself.');
 * ```
 */
import { Stack, Token, Validations } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

/** Records that `ruleId` is accepted on `scope` (and its children) for `reason`. */
export function acknowledge(scope: IConstruct, ruleId: string, reason: string): void {
  Validations.of(scope).acknowledge({ id: ruleId, reason });
}

/**
 * The text cdk-nag shows for an ARN in a finding id: tokens of the stack's partition, region
 * and account become `<AWS::Partition>`, `<AWS::Region>`, `<AWS::AccountId>`.
 */
export function nagArn(scope: IConstruct, service: string, resource: string): string {
  const stack = Stack.of(scope);
  const text = (value: string, pseudo: string): string => (Token.isUnresolved(value) ? `<AWS::${pseudo}>` : value);
  return `arn:${text(stack.partition, 'Partition')}:${service}:${text(stack.region, 'Region')}:${text(stack.account, 'AccountId')}:${resource}`;
}
