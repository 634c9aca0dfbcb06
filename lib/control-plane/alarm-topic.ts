import { ArnFormat, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** Props of {@link AlarmTopic}. */
export interface AlarmTopicProps {
  /** The topic's display name. @default 'CA-DMS scaling alarms' */
  readonly displayName?: string;
}

/**
 * The SNS topic CloudWatch alarms publish to: encrypted with a customer-managed key whose
 * policy lets CloudWatch use it (an AWS-managed SNS key would silently drop alarm
 * notifications), and refusing any publish or subscribe that does not use TLS.
 *
 * `enforceSSL` gives the topic a policy of its own, which replaces SNS's default policy: without
 * an explicit Allow, CloudWatch could not publish at all. Both the topic's Allow and the key's are
 * for `cloudwatch.amazonaws.com` acting for an alarm of this account and region only
 * (`aws:SourceAccount` and `aws:SourceArn`, against the confused-deputy problem). The alarms live in
 * another stack with names CloudFormation generates, so the ARN pattern ends in `alarm:*`.
 *
 * @example
 * ```ts
 * const alarms = new AlarmTopic(stack, 'Alarms');
 * alarm.addAlarmAction(new cwActions.SnsAction(alarms.topic));
 * ```
 */
export class AlarmTopic extends Construct {
  readonly topic: sns.Topic;
  readonly key: kms.Key;

  constructor(scope: Construct, id: string, props: AlarmTopicProps = {}) {
    super(scope, id);
    const displayName = props.displayName ?? 'CA-DMS scaling alarms';
    validateProps('AlarmTopic', [[displayName.length > 0 && displayName.length <= 100, 'displayName must be 1..100 characters']]);
    this.key = new kms.Key(this, 'Key', {
      description: 'Encrypts the CA-DMS alarm topic',
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });
    const stack = Stack.of(this);
    const fromOwnAlarms = {
      StringEquals: { 'aws:SourceAccount': stack.account },
      ArnLike: { 'aws:SourceArn': stack.formatArn({ service: 'cloudwatch', resource: 'alarm', resourceName: '*', arnFormat: ArnFormat.COLON_RESOURCE_NAME }) },
    };
    const cloudwatch = new iam.ServicePrincipal('cloudwatch.amazonaws.com');
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchAlarmsPublish',
        principals: [cloudwatch],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
        conditions: fromOwnAlarms,
      }),
    );
    this.topic = new sns.Topic(this, 'Topic', {
      displayName,
      masterKey: this.key,
      enforceSSL: true,
    });
    this.topic.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchAlarmsPublish',
        principals: [cloudwatch],
        actions: ['sns:Publish'],
        resources: [this.topic.topicArn],
        conditions: fromOwnAlarms,
      }),
    );
  }
}
