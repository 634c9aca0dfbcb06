import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { acknowledge } from '../nag.js';
import { validateProps } from '../validate.js';

/** The container names every task uses; the controller and the dashboards rely on them. */
export const APP_CONTAINER = 'app';
export const NGINX_CONTAINER = 'nginx';

/**
 * The unprivileged user the nginx sidecar image runs as (its Dockerfile's `USER`; the image
 * tests check they agree). Set on the container too, so the task definition says it runs as
 * non-root whatever image it is given.
 */
export const NGINX_CONTAINER_USER = '10101:10101';

/**
 * The nginx sidecar's memory hard limit (MiB): its two 20 MiB cache key zones, the workers and
 * their connection buffers, with room to spare. The application gets the rest of the task's
 * memory as its own hard limit, so a leaking application is the container the kernel stops,
 * and the stopped task says which one ran out.
 */
export const NGINX_MEMORY_MIB = 256;

/** The least memory (MiB) left for the application container beside the sidecar. */
export const MIN_APP_MEMORY_MIB = 128;

/** The unprivileged user of the demo backend image (containers/backend/Dockerfile). */
export const DEMO_BACKEND_USER = '10102:10102';

/**
 * Paths nginx writes at run time: the configuration rendered at start (`/etc/nginx`), the pid,
 * temp files and the proxy cache. Each gets a writable task volume.
 */
export const NGINX_WRITABLE_PATHS: Readonly<Record<string, string>> = {
  'nginx-conf': '/etc/nginx',
  'nginx-run': '/run',
  'nginx-temp': '/var/lib/nginx',
  'nginx-cache': '/var/cache/nginx',
  'nginx-tmp': '/tmp',
};

/** Props of {@link SidecarService}. */
export interface SidecarServiceProps {
  readonly cluster: ecs.ICluster;
  readonly appImage: ecs.ContainerImage;
  /** The application container's user, when known. @default - the image's own USER */
  readonly appUser?: string;
  readonly nginxImage: ecs.ContainerImage;
  /** Task CPU units. */
  readonly cpu: number;
  /** Task memory (MiB). */
  readonly memoryMiB: number;
  /** Where the application listens on the task's loopback. */
  readonly appPort: number;
  /** The application's health endpoint, probed by the container health check. */
  readonly appHealthCheckPath: string;
  /** nginx's listening port: the task's only port mapping. */
  readonly nginxPort: number;
  /** Plain, non-secret settings of the application. @default {} */
  readonly environment?: Readonly<Record<string, string>>;
  /** `NGINX_*` settings of the sidecar (the upstreams are set to the app's loopback port). @default {} */
  readonly nginxEnvironment?: Readonly<Record<string, string>>;
  readonly securityGroup: ec2.ISecurityGroup;
  readonly subnets: ec2.SubnetSelection;
  /** Scalable-target bounds; the controller sets the desired count inside them. */
  readonly minTasks: number;
  readonly maxTasks: number;
  /** CPU architecture of both images. @default ecs.CpuArchitecture.X86_64 */
  readonly cpuArchitecture?: ecs.CpuArchitecture;
  /** Retention of the service's log group. @default logs.RetentionDays.THREE_MONTHS */
  readonly logRetention?: logs.RetentionDays;
}

/**
 * A Fargate service whose every task runs the application and an nginx sidecar. nginx holds the
 * only port mapping and starts once the application reports HEALTHY; both containers have
 * read-only root filesystems (nginx gets ephemeral volumes for its pid, temp and cache paths,
 * the application one for `/tmp`) and log to one CloudWatch log group. The service is
 * registered as an Application Auto Scaling target with its bounds, and no desired count is
 * written into the template: the scaling controller owns it, and a redeploy must not reset it.
 *
 * @example
 * ```ts
 * const read = new SidecarService(stack, 'BackendRead', {
 *   cluster, appImage, nginxImage,
 *   cpu: 512, memoryMiB: 1024, appPort: 8000, appHealthCheckPath: '/health', nginxPort: 8080,
 *   securityGroup, subnets: { subnetGroupName: 'compute' }, minTasks: 2, maxTasks: 10,
 * });
 * listener.addAction('Reads', { action: elbv2.ListenerAction.forward([read.targetGroup(vpc, '/health/readonly')]) });
 * ```
 */
/** A deployment starts a new task beside each old one before stopping it: the tasks' peak. */
export const DEPLOYMENT_MAX_PERCENT = 200;

export class SidecarService extends Construct {
  readonly service: ecs.FargateService;
  readonly taskDefinition: ecs.FargateTaskDefinition;
  readonly scalableTarget: ecs.ScalableTaskCount;
  readonly logGroup: logs.LogGroup;
  private readonly nginxPort: number;

  constructor(scope: Construct, id: string, props: SidecarServiceProps) {
    super(scope, id);
    validateProps('SidecarService', [
      [props.appPort !== props.nginxPort, `appPort and nginxPort must differ (both ${props.appPort})`],
      [Number.isInteger(props.minTasks) && props.minTasks >= 0, `minTasks must be a whole number of at least 0 (got ${props.minTasks})`],
      [props.maxTasks >= props.minTasks && props.maxTasks >= 1, `maxTasks (${props.maxTasks}) must be at least 1 and at least minTasks (${props.minTasks})`],
      [props.appHealthCheckPath.startsWith('/'), `appHealthCheckPath must start with / (got "${props.appHealthCheckPath}")`],
      [
        props.memoryMiB - NGINX_MEMORY_MIB >= MIN_APP_MEMORY_MIB,
        `memoryMiB (${props.memoryMiB}) must leave at least ${MIN_APP_MEMORY_MIB} MiB for the application beside nginx's ${NGINX_MEMORY_MIB} MiB`,
      ],
    ]);
    this.nginxPort = props.nginxPort;

    this.logGroup = new logs.LogGroup(this, 'Logs', {
      retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });

    this.taskDefinition = new ecs.FargateTaskDefinition(this, 'Task', {
      cpu: props.cpu,
      memoryLimitMiB: props.memoryMiB,
      runtimePlatform: {
        operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
        cpuArchitecture: props.cpuArchitecture ?? ecs.CpuArchitecture.X86_64,
      },
    });

    const app = this.taskDefinition.addContainer(APP_CONTAINER, {
      image: props.appImage,
      essential: true,
      memoryLimitMiB: props.memoryMiB - NGINX_MEMORY_MIB,
      ...(props.appUser === undefined ? {} : { user: props.appUser }),
      readonlyRootFilesystem: true,
      environment: { ...props.environment },
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: APP_CONTAINER }),
      healthCheck: {
        command: ['CMD-SHELL', `curl -fsS http://127.0.0.1:${props.appPort}${props.appHealthCheckPath} || exit 1`],
        interval: Duration.seconds(15),
        timeout: Duration.seconds(5),
        retries: 3,
        startPeriod: Duration.seconds(60),
      },
    });
    this.taskDefinition.addVolume({ name: 'app-tmp' });
    app.addMountPoints({ sourceVolume: 'app-tmp', containerPath: '/tmp', readOnly: false });

    const nginx = this.taskDefinition.addContainer(NGINX_CONTAINER, {
      image: props.nginxImage,
      essential: true,
      memoryLimitMiB: NGINX_MEMORY_MIB,
      user: NGINX_CONTAINER_USER,
      readonlyRootFilesystem: true,
      portMappings: [{ containerPort: props.nginxPort, protocol: ecs.Protocol.TCP, name: 'http' }],
      environment: {
        ...props.nginxEnvironment,
        NGINX_LISTEN_PORT: String(props.nginxPort),
        NGINX_READ_UPSTREAMS: `127.0.0.1:${props.appPort}`,
        NGINX_WRITE_UPSTREAMS: `127.0.0.1:${props.appPort}`,
      },
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: NGINX_CONTAINER }),
    });
    nginx.addContainerDependencies({ container: app, condition: ecs.ContainerDependencyCondition.HEALTHY });
    for (const [volume, path] of Object.entries(NGINX_WRITABLE_PATHS)) {
      this.taskDefinition.addVolume({ name: volume });
      nginx.addMountPoints({ sourceVolume: volume, containerPath: path, readOnly: false });
    }

    // No serviceName: CloudFormation names the service. A fixed name collides when a deploy
    // that rolled back is retried while the old service still drains (ECS keeps a deleted
    // service's name until it is INACTIVE); everything that addresses the service (the
    // controller's topology, alarms, dashboard, scalable target) takes the generated name.
    this.service = new ecs.FargateService(this, 'Service', {
      cluster: props.cluster,
      taskDefinition: this.taskDefinition,
      securityGroups: [props.securityGroup],
      vpcSubnets: props.subnets,
      assignPublicIp: false,
      circuitBreaker: { enable: true, rollback: true },
      minHealthyPercent: 100,
      maxHealthyPercent: DEPLOYMENT_MAX_PERCENT,
      propagateTags: ecs.PropagatedTagSource.SERVICE,
      enableECSManagedTags: true,
    });
    acknowledge(
      this.taskDefinition,
      'AwsSolutions-ECS2',
      'Only non-secret settings (service role, shard hosts, nginx tuning, the ARNs of the login secrets) are plain environment variables; the application reads the credentials from Secrets Manager with its task role, and again after a rotation.',
    );
    acknowledge(
      this.taskDefinition.obtainExecutionRole(),
      'AwsSolutions-IAM5[Resource::*]',
      'ecr:GetAuthorizationToken has no resource-level permissions in IAM; image pulls and log writes are granted on named resources.',
    );
    this.scalableTarget = this.service.autoScaleTaskCount({ minCapacity: props.minTasks, maxCapacity: props.maxTasks });
  }

  /**
   * A target group sending traffic to nginx in every task, health-checked at `healthCheckPath`.
   */
  targetGroup(vpc: ec2.IVpc, healthCheckPath: string): elbv2.ApplicationTargetGroup {
    return new elbv2.ApplicationTargetGroup(this, 'Targets', {
      vpc,
      port: this.nginxPort,
      protocol: elbv2.ApplicationProtocol.HTTP,
      targetType: elbv2.TargetType.IP,
      targets: [this.service.loadBalancerTarget({ containerName: NGINX_CONTAINER, containerPort: this.nginxPort })],
      deregistrationDelay: Duration.seconds(30),
      healthCheck: {
        path: healthCheckPath,
        healthyHttpCodes: '200',
        interval: Duration.seconds(15),
        timeout: Duration.seconds(5),
        healthyThresholdCount: 2,
        unhealthyThresholdCount: 3,
      },
    });
  }
}
