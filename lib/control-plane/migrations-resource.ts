import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { CustomResource, RemovalPolicy, Stack, type CfnResource } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as cr from 'aws-cdk-lib/custom-resources';
import { Construct } from 'constructs';
import { acknowledge } from '../nag.js';
import { validateProps } from '../validate.js';

/** Props of {@link MigrationsResource}. */
export interface MigrationsResourceProps {
  /** The migration function (the provider's `onEvent` handler). */
  readonly handler: lambda.IFunction;
  /** The migrations folder; its content hash makes CloudFormation rerun the migrations when it changes. */
  readonly migrationsDirectory: string;
  /** Retention of the provider's log group. @default logs.RetentionDays.THREE_MONTHS */
  readonly logRetention?: logs.RetentionDays;
  /**
   * What the migrations run on and create (the databases' admin secrets, the logins' secrets):
   * a change reruns them, so a shard added later gets its schema and its logins before anything
   * uses them (the login rotations depend on this resource and would otherwise rotate a user
   * that does not exist). @default []
   */
  readonly targets?: readonly string[];
}

/**
 * Runs the catalog and shard migrations on every deploy that changes them or their targets: a
 * CloudFormation custom resource (through the CDK provider framework) whose `MigrationsHash`
 * property is the SHA-256 of every file under the migrations folder and whose `Targets` are the
 * secrets of the databases and logins it works on. The migration function receives the
 * provider's `onEvent` call (Create, Update, Delete) and returns `{ PhysicalResourceId }`; a
 * thrown error fails the deploy and CloudFormation rolls back.
 *
 * @example
 * ```ts
 * new MigrationsResource(stack, 'Migrations', {
 *   handler: migrate.function, migrationsDirectory: 'functions/adapters/postgres/migrations',
 * });
 * ```
 */
export class MigrationsResource extends Construct {
  readonly resource: CustomResource;
  readonly hash: string;

  constructor(scope: Construct, id: string, props: MigrationsResourceProps) {
    super(scope, id);
    const files = listFiles(props.migrationsDirectory);
    validateProps('MigrationsResource', [[files.length > 0, `migrationsDirectory holds no files: ${props.migrationsDirectory}`]]);
    this.hash = hashFiles(props.migrationsDirectory, files);

    const logGroup = new logs.LogGroup(this, 'ProviderLogs', {
      retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });
    const role = new iam.Role(this, 'ProviderRole', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: 'CA-DMS migrations custom-resource provider',
    });
    role.addToPolicy(new iam.PolicyStatement({ actions: ['logs:CreateLogStream', 'logs:PutLogEvents'], resources: [logGroup.logGroupArn] }));
    const provider = new cr.Provider(this, 'Provider', {
      onEventHandler: props.handler,
      frameworkOnEventRole: role,
      logGroup,
    });
    const fnLogicalId = Stack.of(this).getLogicalId(props.handler.node.defaultChild as CfnResource);
    acknowledge(
      role,
      `AwsSolutions-IAM5[Resource::<${fnLogicalId}.Arn>:*]`,
      'The provider framework invokes the one migration function by qualified ARN (any version); the wildcard covers versions of that function only.',
    );
    this.resource = new CustomResource(this, 'Resource', {
      serviceToken: provider.serviceToken,
      resourceType: 'Custom::CaDmsMigrations',
      properties: { MigrationsHash: this.hash, Targets: [...(props.targets ?? [])] },
    });
  }
}

function listFiles(dir: string): string[] {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  return entries.flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? listFiles(path) : [path];
  });
}

function hashFiles(root: string, files: readonly string[]): string {
  const hash = createHash('sha256');
  for (const file of [...files].sort()) {
    hash.update(relative(root, file)).update('\0').update(readFileSync(file)).update('\0');
  }
  return hash.digest('hex');
}
