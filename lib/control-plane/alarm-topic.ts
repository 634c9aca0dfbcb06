import { RemovalPolicy } from 'aws-cdk-lib';
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
      removalPolicy: RemovalPolicy.RETAIN,
    });
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchAlarmsPublish',
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
      }),
    );
    this.topic = new sns.Topic(this, 'Topic', {
      displayName,
      masterKey: this.key,
      enforceSSL: true,
    });
  }
}
