/**
 * The AWS SDK clients of the control-plane functions, created once per container and traced,
 * with the retries and per-attempt timeouts of SDK_CLIENT_OPTIONS; the caller bounds the whole
 * evaluation with an abort signal derived from the remaining time.
 */
import { ApplicationAutoScalingClient } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { ECSClient } from '@aws-sdk/client-ecs';
import { RDSClient } from '@aws-sdk/client-rds';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SDK_CLIENT_OPTIONS } from '../../adapters/aws/client-options.js';
import { tracer } from './powertools.js';

/** The clients a controller runtime needs; tests pass their own (driven by aws-sdk-client-mock). */
export interface AwsClients {
  readonly cloudwatch: CloudWatchClient;
  readonly ecs: ECSClient;
  readonly autoscaling: ApplicationAutoScalingClient;
  readonly secrets: SecretsManagerClient;
}

const options = SDK_CLIENT_OPTIONS;

let clients: AwsClients | undefined;

/** The container's clients. */
export function awsClients(): AwsClients {
  clients ??= {
    cloudwatch: tracer.captureAWSv3Client(new CloudWatchClient(options)),
    ecs: tracer.captureAWSv3Client(new ECSClient(options)),
    autoscaling: tracer.captureAWSv3Client(new ApplicationAutoScalingClient(options)),
    secrets: tracer.captureAWSv3Client(new SecretsManagerClient(options)),
  };
  return clients;
}

let rds: RDSClient | undefined;

/** The RDS client, built only by the functions that ask RDS about the shards (the API). */
export function rdsClient(): RDSClient {
  rds ??= tracer.captureAWSv3Client(new RDSClient(options));
  return rds;
}
