import { Annotations, ArnFormat, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sns from 'aws-cdk-lib/aws-sns';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { STOPPED_ALL_TAG, STOPPED_TAG, type QueueMetric } from '../../functions/adapters/aws/topology.js';
import { parseScalingConfig, ScalingConfigError, type ScalingConfig } from '../../functions/core/scaling/config.js';
import { functionLogGroup } from '../function-log-group.js';
import { acknowledge, nagArn } from '../nag.js';
import { sameTemplateValue } from '../transform-input.js';
import { validateProps } from '../validate.js';
import { ConfigParameters } from './config-parameters.js';
import { ControlPlaneFunction } from './control-plane-function.js';
import { FailureQueue } from './failure-queue.js';
import { MigrationsResource } from './migrations-resource.js';
import { ScalingApi } from './scaling-api.js';

/** The five handler files. */
export interface ControlPlaneEntries {
  /** EventBridge schedule -> one evaluation of every service. */
  readonly evaluate: string;
  /** SNS (CloudWatch alarm) -> an immediate evaluation. */
  readonly alarm: string;
  /** API Gateway REST proxy -> the scaling API. */
  readonly api: string;
  /** CloudFormation custom resource -> catalog and shard migrations. */
  readonly migrate: string;
  /** EventBridge schedule (every minute) -> runs the shard moves the API planned. */
  readonly moves: string;
}

/** A service the controller scales. */
export interface ScaledService {
  readonly service: ecs.IBaseService;
  /** The target group's ARN suffix (`targetgroup/NAME/ID`), for response-time metrics. @default - none */
  readonly targetGroupFullName?: string;
  /** The SQS queue whose visible messages are the service's queue depth. @default - none */
  readonly queue?: sqs.IQueue;
}

/**
 * The queue-depth metric the controller reads for a service fed by `queue`: the jobs waiting to
 * be received (`ApproximateNumberOfMessagesVisible`, not those in flight: a running job needs no
 * new task). Its `Maximum` over the period, the backlog at its worst, as SQS publishes the
 * metric once a minute per queue.
 */
export function sqsQueueDepth(queue: sqs.IQueue): QueueMetric {
  return {
    namespace: 'AWS/SQS',
    metricName: 'ApproximateNumberOfMessagesVisible',
    dimensions: [{ name: 'QueueName', value: queue.queueName }],
    statistic: 'Maximum',
  };
}

/** Props of {@link ControlPlane}. */
export interface ControlPlaneProps {
  readonly namePrefix: string;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly securityGroup: ec2.ISecurityGroup;
  readonly entries: ControlPlaneEntries;
  /** Copied into the migration bundle as `migrations/` (catalog/, sharding/, shard/). */
  readonly migrationsDirectory: string;
  /** The lock file anchoring bundling. @default - found upwards from each entry */
  readonly depsLockFilePath?: string;
  readonly cluster: ecs.ICluster;
  /** The scaled services by name (the names of the scaling configuration). */
  readonly services: Readonly<Record<string, ScaledService>>;
  /** The load balancer's ARN suffix (`app/NAME/ID`). @default - none */
  readonly loadBalancerFullName?: string;
  /**
   * Where the catalog lives: its admin secret (the migrations only), the control plane's own
   * login there (`ca_dms_control`: the evaluator, the alarm function, the API and the moves
   * worker), and the host to use instead of the secrets' (the proxy, which must admit both). The
   * moves worker uses the secret's own host (the primary): it cancels statements, which RDS
   * Proxy does not pass on.
   */
  readonly catalog: { readonly secret: secretsmanager.ISecret; readonly controlSecret: secretsmanager.ISecret; readonly host: string };
  /** Every shard primary's admin secret, in shard order: the migrations function's alone. */
  readonly shardSecrets: readonly secretsmanager.ISecret[];
  /**
   * Every shard's least-privilege logins, in shard order: the CA-DMS application's (the ECS
   * tasks), the scaling API's (`ca_dms_monitor`) and the moves worker's (`ca_dms_mover`). The
   * migrations create each user, and each is rotated with alternating users (Secrets Manager's
   * hosted PostgreSQL multi-user rotation, logging in with the admin secret of its database) once
   * the migrations have run. The catalog's control login, behind RDS Proxy, rotates single-user.
   */
  readonly shardLogins: ReadonlyArray<{ readonly app: secretsmanager.ISecret; readonly monitor: secretsmanager.ISecret; readonly mover: secretsmanager.ISecret }>;
  /** How often the least-privilege logins rotate. @default Duration.days(30) */
  readonly loginRotation?: Duration;
  /** The guide's `ShardingConfig` JSON with credential-free URLs, in the same shard order (the API's shard endpoints). */
  readonly shardingConfigJson: string;
  /** CloudWatch alarms publish here; the alarm function is subscribed. */
  readonly alarmTopic: sns.ITopic;
  /** The runtime scaling configuration: the functions' last-known configuration. */
  readonly scalingConfig: ScalingConfig;
  /** Alarm names to service names, for alarms whose dimensions do not name the service. @default {} */
  readonly alarmServiceMap?: Readonly<Record<string, string>>;
  /**
   * Reserve a concurrency of 1 for the evaluator, the alarm function and the moves worker. The
   * catalog lease already keeps one evaluation and one moves run at a time; this only stops
   * surplus containers from starting. @default false
   */
  readonly reservedConcurrency?: boolean;
  /** @default 20 */
  readonly apiThrottlingRateLimit?: number;
  /** @default 40 */
  readonly apiThrottlingBurstLimit?: number;
  /** @default logs.RetentionDays.THREE_MONTHS */
  readonly logRetention?: logs.RetentionDays;
}

/** Shortest interval EventBridge schedules can fire at. */
export const EVENTBRIDGE_MIN_INTERVAL_SECONDS = 60;

/**
 * The schedule rate for a configured check interval: EventBridge cannot fire more often than
 * once a minute, so shorter intervals, and intervals that are not whole minutes, are rounded
 * up to the next whole minute.
 */
export function scheduleMinutes(checkIntervalSeconds: number): number {
  return Math.max(1, Math.ceil(checkIntervalSeconds / EVENTBRIDGE_MIN_INTERVAL_SECONDS));
}

/**
 * The serverless scaling controller: the evaluator on an EventBridge schedule, the alarm
 * function subscribed to the alarm topic, the scaling API behind API Gateway, the moves worker
 * on a one-minute schedule (the API only plans shard moves, because a Lambda invocation cannot
 * outlive its response, and the worker carries them out), and the migrations custom resource.
 * Evaluations and moves runs never overlap because each takes a lease row in the catalog;
 * reserved concurrency is opt-in (`reservedConcurrency`). Every
 * event-invoked function has a dead-letter queue for undeliverable events and a failure
 * destination for failed invocations. IAM names resources wherever AWS allows it.
 *
 * @example
 * ```ts
 * new ControlPlane(stack, 'ControlPlane', {
 *   namePrefix: 'ca-dms-dev', vpc, subnets, securityGroup, cluster, services, alarmTopic,
 *   entries: { evaluate: 'functions/handlers/evaluate.ts', alarm: '...', api: '...', migrate: '...', moves: '...' },
 *   migrationsDirectory: 'functions/adapters/postgres/migrations',
 *   catalog: { secret, controlSecret, host: proxy.endpoint }, shardSecrets, shardLogins, shardingConfigJson, scalingConfig,
 * });
 * ```
 */
export class ControlPlane extends Construct {
  readonly evaluate: ControlPlaneFunction;
  readonly alarm: ControlPlaneFunction;
  readonly api: ControlPlaneFunction;
  readonly migrate: ControlPlaneFunction;
  readonly moves: ControlPlaneFunction;
  readonly scalingApi: ScalingApi;
  /** Invokes the evaluator at the check interval. */
  readonly schedule: events.Rule;
  /** Invokes the moves worker every minute. */
  readonly movesSchedule: events.Rule;
  readonly migrations: MigrationsResource;
  /** The configuration that grows with the deployment, read by the functions at cold start. */
  readonly config: ConfigParameters;
  readonly failureQueues: { readonly evaluate: FailureQueue; readonly alarm: FailureQueue; readonly moves: FailureQueue };
  /**
   * The rotation of every least-privilege login: the catalog's control login (single user: it is
   * reached through RDS Proxy), then each shard's (alternating users).
   */
  readonly loginRotations: readonly secretsmanager.RotationSchedule[];

  constructor(scope: Construct, id: string, props: ControlPlaneProps) {
    super(scope, id);
    const serviceNames = Object.keys(props.services);
    const configProblems = checkScalingConfig(props.scalingConfig);
    validateProps('ControlPlane', [
      [serviceNames.length > 0, 'services must name at least one service'],
      [
        props.shardLogins.length === props.shardSecrets.length,
        `shardLogins must have one entry per shard, like shardSecrets (got ${props.shardLogins.length} and ${props.shardSecrets.length})`,
      ],
      ...configProblems.map((p) => [false, p] as const),
      ...Object.keys(props.scalingConfig.services)
        .filter((s) => !serviceNames.includes(s))
        .map((s) => [false, `scalingConfig.services.${s} has no entry in services`] as const),
      ...Object.entries(props.alarmServiceMap ?? {})
        .filter(([, s]) => !serviceNames.includes(s))
        .map(([alarm, s]) => [false, `alarmServiceMap.${alarm} names an unknown service "${s}"`] as const),
    ]);

    const stack = Stack.of(this);
    const reserved = props.reservedConcurrency === true ? 1 : undefined;
    const minutes = scheduleMinutes(props.scalingConfig.check_interval);
    if (props.scalingConfig.check_interval !== minutes * 60) {
      Annotations.of(this).addWarningV2(
        '@ca-dms/control-plane:scheduleRounded',
        `SCALING_CHECK_INTERVAL is ${props.scalingConfig.check_interval} s but EventBridge schedules fire at most once a minute in whole minutes: evaluations run every ${minutes} min. Alarms still trigger immediate evaluations through SNS.`,
      );
    }

    const topology = {
      periodSeconds: 60,
      services: Object.fromEntries(
        Object.entries(props.services).map(([name, s]) => [
          name,
          {
            cluster: props.cluster.clusterName,
            ecsService: s.service.serviceName,
            ...(s.targetGroupFullName && props.loadBalancerFullName
              ? { targetGroup: s.targetGroupFullName, loadBalancer: props.loadBalancerFullName }
              : {}),
            ...(s.queue ? { queue: sqsQueueDepth(s.queue) } : {}),
          },
        ]),
      ),
    };
    const common = {
      vpc: props.vpc,
      subnets: props.subnets,
      securityGroup: props.securityGroup,
      depsLockFilePath: props.depsLockFilePath,
      logRetention: props.logRetention,
    };
    // What grows with the deployment (services, shards, alarms) goes to SSM Parameter Store:
    // Lambda refuses an environment over 4 KB. The rest stays in the environment.
    const config = new ConfigParameters(this, 'Config', {
      values: {
        SCALING_CONFIG_JSON: JSON.stringify(props.scalingConfig),
        SCALING_TARGETS_JSON: stack.toJsonString(topology),
        ALARM_SERVICE_MAP_JSON: JSON.stringify(props.alarmServiceMap ?? {}),
        SHARD_DB_SECRET_ARNS: stack.toJsonString(props.shardSecrets.map((s) => s.secretArn)),
        SHARD_APP_SECRET_ARNS: stack.toJsonString(props.shardLogins.map((s) => s.app.secretArn)),
        SHARD_MONITOR_SECRET_ARNS: stack.toJsonString(props.shardLogins.map((s) => s.monitor.secretArn)),
        SHARD_MOVER_SECRET_ARNS: stack.toJsonString(props.shardLogins.map((s) => s.mover.secretArn)),
        SHARDING_CONFIG_JSON: props.shardingConfigJson,
      },
    });
    this.config = config;
    // Only the migrations log in with admin secrets. Every other function reaches the catalog
    // (through the proxy) as the control plane's login, and the shards as its own: the API as
    // the monitor (statistics, health), the moves worker as the mover. Both read their shard
    // logins' ARNs as SHARD_DB_SECRET_ARNS, the variable the sharding runtime takes them from.
    const controlEnv = { CATALOG_DB_SECRET_ARN: props.catalog.controlSecret.secretArn, CATALOG_DB_HOST: props.catalog.host };
    const controllerParameters = ['SCALING_CONFIG_JSON', 'SCALING_TARGETS_JSON', 'ALARM_SERVICE_MAP_JSON'];
    // The API and the moves worker build the same sharding runtime over the catalog pool.
    const apiParameters = [...controllerParameters, 'SHARD_MONITOR_SECRET_ARNS', 'SHARDING_CONFIG_JSON'];
    const movesParameters = [...controllerParameters, 'SHARD_MOVER_SECRET_ARNS', 'SHARDING_CONFIG_JSON'];
    const migrateParameters = ['SHARD_DB_SECRET_ARNS', 'SHARD_APP_SECRET_ARNS', 'SHARD_MONITOR_SECRET_ARNS', 'SHARD_MOVER_SECRET_ARNS'];
    const controllerEnv = {
      ...controlEnv,
      ...config.environment(controllerParameters),
      POWERTOOLS_METRICS_NAMESPACE: 'CaDmsScaling',
      SCALING_CHECK_INTERVAL: String(props.scalingConfig.check_interval),
    };
    const apiEnv = { ...controllerEnv, ...config.environment(apiParameters, { SHARD_MONITOR_SECRET_ARNS: 'SHARD_DB_SECRET_ARNS' }) };
    // The moves worker alone reaches the catalog at the primary's own endpoint (the host its
    // control-login secret names), not through the proxy: the flip holds the fence to its budget
    // by cancelling its running catalog statement with a protocol CancelRequest, sent on a new
    // connection to the same host and port (functions/adapters/postgres/deadline.ts), and "For
    // PostgreSQL, RDS Proxy doesn't currently support canceling a query from a client by issuing a
    // CancelRequest" (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.html#rds-proxy.limits).
    // The primary admits the functions' security group on 5432; one run holds the moves lease,
    // so the worker adds a connection or two to the primary, not a container's worth.
    const { CATALOG_DB_HOST: _viaProxy, ...directControllerEnv } = controllerEnv;
    const movesEnv = { ...directControllerEnv, ...config.environment(movesParameters, { SHARD_MOVER_SECRET_ARNS: 'SHARD_DB_SECRET_ARNS' }) };

    const evaluateFailures = new FailureQueue(this, 'EvaluateFailures');
    const alarmFailures = new FailureQueue(this, 'AlarmFailures');
    const movesFailures = new FailureQueue(this, 'MovesFailures');
    this.failureQueues = { evaluate: evaluateFailures, alarm: alarmFailures, moves: movesFailures };

    this.evaluate = new ControlPlaneFunction(this, 'Evaluate', {
      ...common,
      entry: props.entries.evaluate,
      description: 'CA-DMS scaling controller: scheduled evaluation of every service',
      environment: { ...controllerEnv, POWERTOOLS_SERVICE_NAME: 'scaling-evaluate' },
      timeout: Duration.seconds(55),
      reservedConcurrentExecutions: reserved,
      onFailure: new destinations.SqsDestination(evaluateFailures.queue),
      // A scheduled evaluation older than the next tick is worthless: the next one supersedes it.
      retryAttempts: 0,
      maxEventAge: Duration.minutes(2),
    });
    this.alarm = new ControlPlaneFunction(this, 'Alarm', {
      ...common,
      entry: props.entries.alarm,
      description: 'CA-DMS scaling controller: immediate evaluation on a CloudWatch alarm',
      environment: { ...controllerEnv, POWERTOOLS_SERVICE_NAME: 'scaling-alarm' },
      timeout: Duration.seconds(55),
      reservedConcurrentExecutions: reserved,
      onFailure: new destinations.SqsDestination(alarmFailures.queue),
      retryAttempts: 2,
      maxEventAge: Duration.minutes(10),
    });
    this.api = new ControlPlaneFunction(this, 'Api', {
      ...common,
      entry: props.entries.api,
      description: 'CA-DMS scaling REST API',
      environment: { ...apiEnv, POWERTOOLS_SERVICE_NAME: 'scaling-api' },
      timeout: Duration.seconds(29),
    });
    this.moves = new ControlPlaneFunction(this, 'Moves', {
      ...common,
      entry: props.entries.moves,
      description: 'CA-DMS shard moves worker: runs every planned or unfinished move job',
      environment: { ...movesEnv, POWERTOOLS_SERVICE_NAME: 'scaling-moves' },
      // Copying a unit can take long; a run stops 2 minutes before the timeout at a safe point
      // and the next tick resumes it.
      timeout: Duration.minutes(15),
      // The comparison before a move's fence holds a hash of every row of the unit, both sides
      // (+363 MiB peak RSS for 2 million rows): 2,048 MB carries the largest unit the mover
      // plans (DEFAULT_MAX_UNIT_ROWS, 10 million rows per table), and Lambda gives it more CPU.
      memorySize: 2048,
      reservedConcurrentExecutions: reserved,
      onFailure: new destinations.SqsDestination(movesFailures.queue),
      // Jobs are resumable and the next tick picks up whatever is unfinished: a retried or
      // late tick adds nothing.
      retryAttempts: 0,
      maxEventAge: Duration.minutes(2),
    });
    this.migrate = new ControlPlaneFunction(this, 'Migrate', {
      ...common,
      entry: props.entries.migrate,
      description: 'CA-DMS catalog and shard migrations (custom resource)',
      environment: {
        CATALOG_DB_SECRET_ARN: props.catalog.secret.secretArn,
        CATALOG_DB_HOST: props.catalog.host,
        CATALOG_CONTROL_SECRET_ARN: props.catalog.controlSecret.secretArn,
        ...config.environment(migrateParameters),
        POWERTOOLS_SERVICE_NAME: 'scaling-migrate',
        MIGRATIONS_DIR: '/var/task/migrations',
      },
      // A minute short of the provider framework's own 15 minutes: the framework invokes this
      // function synchronously and must still be alive to report its timeout to CloudFormation,
      // which would otherwise wait for the custom resource's one-hour ServiceTimeout
      // (test/infra/migrations-resource.test.ts).
      timeout: Duration.minutes(14),
      memorySize: 1024,
      bundledDirectories: { [props.migrationsDirectory]: 'migrations' },
    });

    // Reading metrics: GetMetricData has no resource-level permissions in IAM.
    const readMetrics = new iam.PolicyStatement({ sid: 'ReadMetrics', actions: ['cloudwatch:GetMetricData'], resources: ['*'] });
    const serviceArns = Object.values(props.services).map((s) => s.service.serviceArn);
    // DescribeServices with include: ['TAGS'] reads the stop marks (ECS adapter). AWS names no
    // second action for the tags (neither API_DescribeServices nor the operations table of the
    // Service Authorization Reference) but does not rule one out either, so the read of the same
    // services' tags is granted too: read-only, on the scaled services only.
    const describeServices = new iam.PolicyStatement({
      sid: 'DescribeScaledServices',
      actions: ['ecs:DescribeServices', 'ecs:ListTagsForResource'],
      resources: serviceArns,
    });
    const updateServices = new iam.PolicyStatement({ sid: 'SetDesiredCount', actions: ['ecs:UpdateService'], resources: serviceArns });
    // DescribeScalableTargets has no resource-level permissions in IAM.
    const describeTargets = new iam.PolicyStatement({
      sid: 'DescribeScalableTargets',
      actions: ['application-autoscaling:DescribeScalableTargets'],
      resources: ['*'],
    });
    // Scalable-target ARNs carry an id AWS generates at registration, unknown at synthesis:
    // the statement is bounded to this account and region.
    const registerTargets = new iam.PolicyStatement({
      sid: 'RegisterScalableTargets',
      actions: ['application-autoscaling:RegisterScalableTarget'],
      resources: [stack.formatArn({ service: 'application-autoscaling', resource: 'scalable-target', resourceName: '*' })],
    });
    // POST /stop and /start mark the stop on the scaled services (where an evaluation without the
    // catalog reads it, through DescribeServices' tags), and an evaluation with the catalog brings
    // those marks in line with the switches (one the API could not set or clear): these two tag
    // keys only. No more than the evaluators already hold: they set the desired counts themselves.
    // ecs:TagResource and ecs:UntagResource both take aws:TagKeys (the keys of the request; Service
    // Authorization Reference for ECS). The Null test keeps the statement closed should a request
    // ever carry no aws:TagKeys: ForAllValues alone would then be true, and grant any key.
    const markStops = new iam.PolicyStatement({
      sid: 'MarkStopsOnScaledServices',
      actions: ['ecs:TagResource', 'ecs:UntagResource'],
      resources: serviceArns,
      conditions: {
        'ForAllValues:StringEquals': { 'aws:TagKeys': [STOPPED_TAG, STOPPED_ALL_TAG] },
        Null: { 'aws:TagKeys': 'false' },
      },
    });
    for (const fn of [this.evaluate, this.alarm]) {
      for (const statement of [readMetrics, describeServices, updateServices, describeTargets, registerTargets, markStops]) fn.role.addToPolicy(statement);
      acknowledge(
        fn.role,
        `AwsSolutions-IAM5[Resource::${nagArn(this, 'application-autoscaling', 'scalable-target/*')}]`,
        'RegisterScalableTarget: scalable-target ARNs end in an id AWS generates at registration, unknown at synthesis; the statement is bounded to this account and region, and ECS itself only accepts changes to the services named in the ECS statements.',
      );
    }
    for (const fn of [this.moves, this.migrate]) {
      acknowledge(
        fn.role,
        'AwsSolutions-IAM5[Resource::*]',
        'Actions without resource-level permissions in IAM: X-Ray PutTraceSegments/PutTelemetryRecords and the EC2 network-interface calls Lambda makes for a function in a VPC (the moves worker and the migrations read no metrics and touch no scalable target).',
      );
    }
    for (const fn of [this.evaluate, this.alarm]) {
      acknowledge(
        fn.role,
        'AwsSolutions-IAM5[Resource::*]',
        'Actions without resource-level permissions in IAM: cloudwatch:GetMetricData, application-autoscaling:DescribeScalableTargets, X-Ray PutTraceSegments/PutTelemetryRecords, and the EC2 network-interface calls Lambda makes for a function in a VPC.',
      );
    }
    acknowledge(
      this.api.role,
      'AwsSolutions-IAM5[Resource::*]',
      'Actions without resource-level permissions in IAM: cloudwatch:GetMetricData, X-Ray PutTraceSegments/PutTelemetryRecords, and the EC2 network-interface calls Lambda makes for a function in a VPC.',
    );
    // The API only previews evaluations (controller.preview): it reads metrics and task counts,
    // and never sets a desired count nor touches the scalable targets (test/infra/iam-coverage).
    for (const statement of [readMetrics, describeServices]) this.api.role.addToPolicy(statement);
    this.api.role.addToPolicy(markStops);
    // Shard health on AWS merges what RDS says (status, storage, replica topology) by endpoint.
    this.api.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'DescribeShardInstances',
        actions: ['rds:DescribeDBInstances'],
        resources: [stack.formatArn({ service: 'rds', resource: 'db', resourceName: '*', arnFormat: ArnFormat.COLON_RESOURCE_NAME })],
      }),
    );
    acknowledge(
      this.api.role,
      `AwsSolutions-IAM5[Resource::${nagArn(this, 'rds', 'db:*')}]`,
      'DescribeDBInstances with an engine filter lists the instances of this account and region (read-only); the shard instances get their identifiers from CloudFormation, and the inventory matches them by endpoint.',
    );
    // Each function reads the secrets it logs in with, and only those; the migrations read the
    // admin secrets and every login's (they create the users from them).
    for (const fn of [this.evaluate, this.alarm, this.api, this.moves]) props.catalog.controlSecret.grantRead(fn.role);
    for (const fn of [this.evaluate, this.alarm]) config.grantRead(fn.role, controllerParameters);
    config.grantRead(this.api.role, apiParameters);
    config.grantRead(this.moves.role, movesParameters);
    config.grantRead(this.migrate.role, migrateParameters);
    for (const [i, login] of props.shardLogins.entries()) {
      login.monitor.grantRead(this.api.role);
      login.mover.grantRead(this.moves.role);
      for (const secret of [props.shardSecrets[i], login.app, login.monitor, login.mover]) secret?.grantRead(this.migrate.role);
    }
    for (const secret of [props.catalog.secret, props.catalog.controlSecret]) secret.grantRead(this.migrate.role);

    this.schedule = new events.Rule(this, 'Schedule', {
      description: `Evaluates the CA-DMS services every ${minutes} min (SCALING_CHECK_INTERVAL ${props.scalingConfig.check_interval} s)`,
      schedule: events.Schedule.rate(Duration.minutes(minutes)),
      targets: [
        new targets.LambdaFunction(this.evaluate.function, {
          deadLetterQueue: evaluateFailures.queue,
          retryAttempts: 2,
          maxEventAge: Duration.minutes(2),
        }),
      ],
    });
    this.movesSchedule = new events.Rule(this, 'MovesSchedule', {
      description: 'Runs the planned and unfinished CA-DMS shard moves every minute',
      schedule: events.Schedule.rate(Duration.minutes(1)),
      targets: [
        new targets.LambdaFunction(this.moves.function, {
          deadLetterQueue: movesFailures.queue,
          retryAttempts: 2,
          maxEventAge: Duration.minutes(2),
        }),
      ],
    });
    const alarmSubscription = props.alarmTopic.addSubscription(new subscriptions.LambdaSubscription(this.alarm.function, { deadLetterQueue: alarmFailures.queue }));

    this.scalingApi = new ScalingApi(this, 'ScalingApi', {
      handler: this.api.function,
      restApiName: `${props.namePrefix}-scaling`,
      throttlingRateLimit: props.apiThrottlingRateLimit,
      throttlingBurstLimit: props.apiThrottlingBurstLimit,
      logRetention: props.logRetention,
    });
    this.migrations = new MigrationsResource(this, 'Migrations', {
      handler: this.migrate.function,
      migrationsDirectory: props.migrationsDirectory,
      logRetention: props.logRetention,
      // A shard added later, or a login secret replaced, reruns the migrations for it.
      targets: [
        props.catalog.secret.secretArn,
        props.catalog.controlSecret.secretArn,
        ...props.shardSecrets.map((s) => s.secretArn),
        ...props.shardLogins.flatMap((l) => [l.app.secretArn, l.monitor.secretArn, l.mover.secretArn]),
      ],
    });
    // Nothing invokes the controller or the moves worker before the catalog and shard schemas
    // exist: on a first deploy a tick would fail (and land in a failure queue) until then.
    for (const trigger of [this.schedule, this.movesSchedule, alarmSubscription]) trigger.node.addDependency(this.migrations.resource);
    // Nor does CloudFormation create or update a function before the migrations its code needs
    // have run. A trigger's dependency orders only the trigger itself: on an upgrade it is left
    // alone and keeps invoking the function, whose new code would otherwise go live while the
    // shards are still at the previous migration (the moves worker's statements on a column a
    // new shard migration adds fail with 42703). Each of these four reads a migrated schema: the
    // moves worker the sharding catalog and every shard's (as the mover); the API the same (as
    // the monitor: move plans, shard statistics); the evaluator and the alarm function the
    // catalog's scaling tables (leases, decisions, configuration). The migrations are forward
    // only and additive, so the previous code keeps working while they run. No cycle: the
    // migrations resource depends only on its provider and the migration function, never on
    // these functions (test/infra/stacks.test.ts).
    for (const fn of [this.evaluate, this.alarm, this.api, this.moves]) fn.function.node.addDependency(this.migrations.resource);

    // Every least-privilege login the functions or tasks reach directly rotates with alternating
    // users, so a task or pool holding the previous password keeps working until the next
    // rotation; the hosted rotation logs in with the admin secret of the login's database (its
    // masterarn). The catalog's control login is different: the functions reach it through RDS
    // Proxy, which authenticates a client against the one user the secret's AWSCURRENT version
    // names and has no credentials for the other user of an alternating pair (aws/aws-cdk#25568),
    // so it rotates single-user: its user name never changes, the proxy re-reads the password
    // from the secret, and a pool refused with the old one re-reads it too
    // (docs/infrastructure.md, "Rotation behind RDS Proxy"). The first rotation runs when the
    // schedule is created: after the migrations, which create the users it must log in as.
    const logins: Array<{ id: string; secret: secretsmanager.ISecret; master?: secretsmanager.ISecret }> = [{ id: 'ControlSecretRotation', secret: props.catalog.controlSecret }];
    for (const [i, login] of props.shardLogins.entries()) {
      const master = props.shardSecrets[i];
      if (!master) throw new Error('unreachable: validated above, one admin secret per shard');
      logins.push(
        { id: `AppSecretRotation${i + 1}`, secret: login.app, master },
        { id: `MonitorSecretRotation${i + 1}`, secret: login.monitor, master },
        { id: `MoverSecretRotation${i + 1}`, secret: login.mover, master },
      );
    }
    const rotationNetwork = {
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      // The functions' group: the shard instances admit it, and it reaches Secrets Manager.
      securityGroups: [props.securityGroup],
    };
    // The AWS::SecretsManager transform reads HostedRotationLambda before any intrinsic function
    // is evaluated, so it gets no reference to another stack (lib/transform-input.ts): the
    // subnets, the group and each shard's admin secret come through parameters of this template.
    const transformInputs = {
      VpcSubnetIds: sameTemplateValue(this, 'RotationSubnetIds', props.vpc.selectSubnets(props.subnets).subnetIds.join(',')),
      VpcSecurityGroupIds: sameTemplateValue(this, 'RotationSecurityGroupId', props.securityGroup.securityGroupId),
    };
    const masterArns = new Map(props.shardSecrets.map((s, i) => [s, sameTemplateValue(this, `RotationMasterSecretArn${i + 1}`, s.secretArn)] as const));
    this.loginRotations = logins.map(({ id, secret, master }) => {
      // Named, so that its log group can be made first with a retention (lib/function-log-group.ts).
      const functionName = `${props.namePrefix}-${id}`;
      const rotation = new secretsmanager.RotationSchedule(this, id, {
        secret,
        hostedRotation:
          master === undefined
            ? secretsmanager.HostedRotation.postgreSqlSingleUser({ ...rotationNetwork, functionName })
            : secretsmanager.HostedRotation.postgreSqlMultiUser({ masterSecret: master, ...rotationNetwork, functionName }),
        automaticallyAfter: props.loginRotation ?? Duration.days(30),
      });
      const cfn = rotation.node.defaultChild as secretsmanager.CfnRotationSchedule;
      for (const [property, value] of Object.entries(transformInputs)) cfn.addPropertyOverride(`HostedRotationLambda.${property}`, value);
      if (master !== undefined) cfn.addPropertyOverride('HostedRotationLambda.MasterSecretArn', masterArns.get(master));
      rotation.node.addDependency(this.migrations.resource);
      // The schedule's creation runs the first rotation; the function's log group exists by then.
      // Removed with the stack: its name is fixed, and this stack must be replaceable.
      functionLogGroup(this, `${id}Logs`, {
        functionName,
        retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
        removalPolicy: RemovalPolicy.DESTROY,
        invokedAfter: [rotation],
      });
      return rotation;
    });
  }
}

/** Re-validates the runtime configuration with the controller's own schema (no drift at deploy). */
function checkScalingConfig(config: ScalingConfig): string[] {
  try {
    parseScalingConfig(JSON.parse(JSON.stringify(config)));
    return [];
  } catch (error) {
    if (error instanceof ScalingConfigError) return error.issues.map((i) => `scalingConfig.${i.path}: ${i.message}`);
    throw error;
  }
}
