import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** SQS's own bounds (Amazon SQS Developer Guide, quotas for queues and messages). */
const MAX_VISIBILITY_TIMEOUT_SECONDS = 12 * 60 * 60;
const MAX_RECEIVE_COUNT = 1000;

/** Props of {@link WorkQueue}. */
export interface WorkQueueProps {
  /**
   * How long a received job stays hidden from the other workers: longer than the slowest job,
   * or a job still running is handed to a second worker. @default Duration.minutes(5)
   */
  readonly visibilityTimeout?: Duration;
  /** Receives after which a job that keeps failing goes to the dead-letter queue. @default 5 */
  readonly maxReceiveCount?: number;
  /**
   * What happens to the queues when they leave the stack. Messages are jobs nobody has done
   * yet, so the default keeps them except when the creation itself failed.
   * @default RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE
   */
  readonly removalPolicy?: RemovalPolicy;
}

/**
 * The background job queue of the worker service, with a dead-letter queue for jobs that fail
 * `maxReceiveCount` times. Both are encrypted with SQS-managed keys (no key policy to keep in
 * step with the consumers) and refuse anything but TLS; jobs and failed jobs are kept for the
 * SQS maximum of 14 days, so an operator can inspect and redrive them. The controller scales the
 * worker service on the queue's `ApproximateNumberOfMessagesVisible`.
 *
 * @example
 * ```ts
 * const jobs = new WorkQueue(stack, 'WorkerQueue');
 * jobs.queue.grantConsumeMessages(taskDefinition.taskRole);
 * container.addEnvironment('WORKER_QUEUE_URL', jobs.queue.queueUrl);
 * ```
 */
export class WorkQueue extends Construct {
  readonly queue: sqs.Queue;
  readonly deadLetterQueue: sqs.Queue;
  readonly maxReceiveCount: number;

  constructor(scope: Construct, id: string, props: WorkQueueProps = {}) {
    super(scope, id);
    const visibility = props.visibilityTimeout ?? Duration.minutes(5);
    this.maxReceiveCount = props.maxReceiveCount ?? 5;
    validateProps('WorkQueue', [
      [
        visibility.toSeconds() >= 0 && visibility.toSeconds() <= MAX_VISIBILITY_TIMEOUT_SECONDS,
        `visibilityTimeout must be 0..${MAX_VISIBILITY_TIMEOUT_SECONDS} s, SQS's limit (got ${visibility.toSeconds()} s)`,
      ],
      [
        Number.isInteger(this.maxReceiveCount) && this.maxReceiveCount >= 1 && this.maxReceiveCount <= MAX_RECEIVE_COUNT,
        `maxReceiveCount must be a whole number in 1..${MAX_RECEIVE_COUNT} (got ${this.maxReceiveCount})`,
      ],
    ]);
    const removalPolicy = props.removalPolicy ?? RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE;
    const common = {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
      removalPolicy,
    };
    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetters', common);
    this.queue = new sqs.Queue(this, 'Queue', {
      ...common,
      visibilityTimeout: visibility,
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: this.maxReceiveCount },
    });
  }
}
