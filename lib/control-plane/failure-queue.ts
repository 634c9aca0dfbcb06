import { Duration } from 'aws-cdk-lib';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { acknowledge } from '../nag.js';

/**
 * A dead-letter queue for events that could not be delivered or processed: encrypted, TLS
 * only, messages kept for the maximum 14 days so an operator can inspect and redrive them.
 *
 * @example
 * ```ts
 * const failed = new FailureQueue(stack, 'EvaluateFailures');
 * new targets.LambdaFunction(fn, { deadLetterQueue: failed.queue });
 * ```
 */
export class FailureQueue extends Construct {
  readonly queue: sqs.Queue;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    this.queue = new sqs.Queue(this, 'Queue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    acknowledge(
      this.queue,
      'AwsSolutions-SQS3',
      'This queue is a dead-letter queue (of an EventBridge target or an SNS subscription, and a Lambda failure destination), which cdk-nag cannot see from SQS redrive policies.',
    );
  }
}
