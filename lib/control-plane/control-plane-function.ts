import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** Gives the ESM bundle a `require` for the CommonJS dependencies that still call it. */
export const ESM_REQUIRE_BANNER =
  "import { createRequire as __cadmsCreateRequire } from 'node:module'; const require = __cadmsCreateRequire(import.meta.url);";

/** Props of {@link ControlPlaneFunction}. */
export interface ControlPlaneFunctionProps {
  /** The handler file (TypeScript) exporting `handler`. */
  readonly entry: string;
  readonly description: string;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly securityGroup: ec2.ISecurityGroup;
  /** @default {} */
  readonly environment?: Readonly<Record<string, string>>;
  /** @default Duration.seconds(60) */
  readonly timeout?: Duration;
  /** @default 512 */
  readonly memorySize?: number;
  /** @default - unreserved */
  readonly reservedConcurrentExecutions?: number;
  /** Directories copied into the bundle: source path -> name inside the bundle. @default {} */
  readonly bundledDirectories?: Readonly<Record<string, string>>;
  /** The lock file that anchors bundling (the project root is its directory). @default - found upwards from `entry` */
  readonly depsLockFilePath?: string;
  /** @default logs.RetentionDays.THREE_MONTHS */
  readonly logRetention?: logs.RetentionDays;
  /** Where failed asynchronous invocations go. @default - none */
  readonly onFailure?: lambda.IDestination;
  /** Retries of a failed asynchronous invocation (0..2). @default 2 */
  readonly retryAttempts?: number;
  /** Oldest asynchronous event still worth processing. @default Duration.hours(6) */
  readonly maxEventAge?: Duration;
}

/**
 * A control-plane Lambda function with the project's settings: TypeScript bundled by the local
 * esbuild as ESM (with a `require` banner for CommonJS dependencies), `nodejs24.x` on arm64,
 * in private subnets, X-Ray tracing, trusting the Amazon RDS certificate authorities for TLS
 * to the databases, and its own role whose only log permissions are on its own log group.
 *
 * @example
 * ```ts
 * const fn = new ControlPlaneFunction(stack, 'Evaluate', {
 *   entry: 'functions/handlers/evaluate.ts', description: 'Scheduled evaluation',
 *   vpc, subnets: { subnetGroupName: 'compute' }, securityGroup,
 * });
 * ```
 */
export class ControlPlaneFunction extends Construct {
  readonly function: nodejs.NodejsFunction;
  readonly role: iam.Role;
  readonly logGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: ControlPlaneFunctionProps) {
    super(scope, id);
    const timeout = props.timeout ?? Duration.seconds(60);
    const retryAttempts = props.retryAttempts ?? 2;
    validateProps('ControlPlaneFunction', [
      [/\.(ts|mts|js|mjs)$/.test(props.entry), `entry must be a .ts/.mts/.js/.mjs file (got "${props.entry}")`],
      [timeout.toSeconds() >= 1 && timeout.toSeconds() <= 900, `timeout must be 1..900 seconds (got ${timeout.toSeconds()})`],
      [Number.isInteger(retryAttempts) && retryAttempts >= 0 && retryAttempts <= 2, `retryAttempts must be 0..2 (got ${retryAttempts})`],
      [
        props.reservedConcurrentExecutions === undefined || (Number.isInteger(props.reservedConcurrentExecutions) && props.reservedConcurrentExecutions >= 1),
        `reservedConcurrentExecutions must be at least 1 (got ${props.reservedConcurrentExecutions})`,
      ],
    ]);

    this.logGroup = new logs.LogGroup(this, 'Logs', {
      retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });
    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `${props.description} (Lambda execution role)`,
    });
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'OwnLogGroup',
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [this.logGroup.logGroupArn],
      }),
    );
    // Lambda manages the function's network interfaces with these calls; EC2 offers no
    // resource-level permission for them, so they cannot name a resource (cdk-nag acknowledged).
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'VpcNetworkInterfaces',
        actions: [
          'ec2:CreateNetworkInterface',
          'ec2:DescribeNetworkInterfaces',
          'ec2:DeleteNetworkInterface',
          'ec2:AssignPrivateIpAddresses',
          'ec2:UnassignPrivateIpAddresses',
        ],
        resources: ['*'],
      }),
    );

    const copies = Object.entries(props.bundledDirectories ?? {});
    this.function = new nodejs.NodejsFunction(this, 'Function', {
      entry: props.entry,
      handler: 'handler',
      description: props.description,
      runtime: lambda.Runtime.NODEJS_24_X,
      architecture: lambda.Architecture.ARM_64,
      memorySize: props.memorySize ?? 512,
      timeout,
      role: this.role,
      logGroup: this.logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
      tracing: lambda.Tracing.ACTIVE,
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      securityGroups: [props.securityGroup],
      reservedConcurrentExecutions: props.reservedConcurrentExecutions,
      onFailure: props.onFailure,
      retryAttempts,
      maxEventAge: props.maxEventAge ?? Duration.hours(6),
      depsLockFilePath: props.depsLockFilePath,
      environment: {
        ...props.environment,
        // AWS documents this file as the bundle of CA certificates (Amazon RDS ones included)
        // in the Node.js runtimes; with it, TLS to RDS and RDS Proxy verifies the server.
        NODE_EXTRA_CA_CERTS: '/var/runtime/ca-cert.pem',
        NODE_OPTIONS: '--enable-source-maps',
        AWS_NODEJS_CONNECTION_REUSE_ENABLED: '1',
      },
      bundling: {
        format: nodejs.OutputFormat.ESM,
        mainFields: ['module', 'main'],
        banner: ESM_REQUIRE_BANNER,
        minify: true,
        sourceMap: true,
        sourcesContent: false,
        // The runtime ships AWS SDK v3; pg's optional native binding is never used.
        externalModules: ['@aws-sdk/*', 'pg-native'],
        forceDockerBundling: false,
        logLevel: nodejs.LogLevel.ERROR,
        commandHooks: {
          beforeBundling: () => [],
          beforeInstall: () => [],
          afterBundling: (_inputDir: string, outputDir: string) =>
            copies.map(([source, target]) => `cp -R "${source}" "${outputDir}/${target}"`),
        },
      },
    });
  }
}
