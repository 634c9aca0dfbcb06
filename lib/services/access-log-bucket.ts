import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { acknowledge } from '../nag.js';
import { validateProps } from '../validate.js';

/** Props of {@link AccessLogBucket}. */
export interface AccessLogBucketProps {
  /** Days before log objects expire. @default 90 */
  readonly expirationDays?: number;
}

/**
 * A bucket for load balancer access logs: private, encrypted (SSE-S3, the only encryption ALB
 * log delivery supports), TLS-only, objects owned by the bucket owner, expiring after
 * `expirationDays`, retained when its stack goes.
 *
 * @example
 * ```ts
 * const logs = new AccessLogBucket(stack, 'AlbLogs', { expirationDays: 30 });
 * alb.logAccessLogs(logs.bucket, 'alb');
 * ```
 */
export class AccessLogBucket extends Construct {
  readonly bucket: s3.Bucket;

  constructor(scope: Construct, id: string, props: AccessLogBucketProps = {}) {
    super(scope, id);
    const expirationDays = props.expirationDays ?? 90;
    validateProps('AccessLogBucket', [[Number.isInteger(expirationDays) && expirationDays >= 1, `expirationDays must be a whole number of at least 1 (got ${expirationDays})`]]);
    this.bucket = new s3.Bucket(this, 'Bucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      versioned: false,
      lifecycleRules: [{ expiration: Duration.days(expirationDays), abortIncompleteMultipartUploadAfter: Duration.days(1) }],
      removalPolicy: RemovalPolicy.RETAIN,
    });
    acknowledge(
      this.bucket,
      'AwsSolutions-S1',
      'This bucket is itself the access-log destination (of the load balancer); logging its own access would need another log bucket and recurse.',
    );
  }
}
