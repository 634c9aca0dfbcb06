/**
 * Values from other stacks for properties that a CloudFormation transform reads: the
 * `HostedRotationLambda` of an `AWS::SecretsManager::RotationSchedule` (the
 * `AWS::SecretsManager` transform) and the `Parameters` of an `AWS::Serverless::Application`
 * (the `AWS::Serverless` transform).
 *
 * A transform is a macro: "AWS CloudFormation resolves macros first, and then processes the
 * template", "Intrinsic functions included in the template are evaluated after any macros", and
 * "The Fn::ImportValue intrinsic function isn't currently supported in macros" ("Considerations
 * when creating AWS CloudFormation macro definitions",
 * https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/template-macros.html, to which
 * the `AWS::SecretsManager` transform's page refers for its remarks). The transform's documented
 * example passes `Ref`, `Fn::GetAtt` and `Fn::Join` of resources of the same template; no AWS
 * page says that a transform accepts `Fn::GetStackOutput`, which this app's weak cross-stack
 * references (`@aws-cdk/core:defaultCrossStackReferences: weak`) produce, nor `Fn::ImportValue`.
 * So such a value goes through a parameter of the same template: CloudFormation resolves the
 * cross-stack reference in the parameter's `Value`, an ordinary property, and the transform reads
 * `Fn::GetAtt [parameter, Value]`, the form AWS documents.
 *
 * @example
 * ```ts
 * const subnets = sameTemplateValue(this, 'RotationSubnets', vpc.selectSubnets(selection).subnetIds.join(','));
 * (rotation.node.defaultChild as CfnRotationSchedule).addPropertyOverride('HostedRotationLambda.VpcSubnetIds', subnets);
 * ```
 */
import * as ssm from 'aws-cdk-lib/aws-ssm';
import type { Construct } from 'constructs';

/** `value` (a token of another stack) as `Fn::GetAtt` of a String parameter of `scope`'s stack. */
export function sameTemplateValue(scope: Construct, id: string, value: string): string {
  const parameter = new ssm.CfnParameter(scope, id, {
    type: 'String',
    value,
    description: 'A value of another stack, for a property a CloudFormation transform reads (lib/transform-input.ts).',
  });
  return parameter.attrValue;
}
