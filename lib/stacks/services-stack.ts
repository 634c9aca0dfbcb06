import { Annotations, CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import * as acm from 'aws-cdk-lib/aws-certificatemanager';
import * as route53 from 'aws-cdk-lib/aws-route53';
import * as route53Targets from 'aws-cdk-lib/aws-route53-targets';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { DeploymentConfigError, SERVICE_NAMES, type DeploymentConfig, type ImageConfig, type ServiceName } from '../config/deployment-config.js';
import type { ShardDatabase } from '../data/shard-database.js';
import { SUBNETS, type Network } from '../network/network.js';
import { AccessLogBucket } from '../services/access-log-bucket.js';
import { LoadBalancer } from '../services/load-balancer.js';
import { connectionBudget } from '../services/connection-budget.js';
import { DEMO_BACKEND_USER, DEPLOYMENT_MAX_PERCENT, SidecarService } from '../services/sidecar-service.js';
import { shardingDocument } from '../data/sharding-document.js';

/** Props of {@link ServicesStack}. */
export interface ServicesStackProps extends StackProps {
  readonly config: DeploymentConfig;
  readonly network: Network;
  readonly shards: readonly ShardDatabase[];
  /** The worker service's job queue: its tasks get its URL and name, and may send, receive and delete. */
  readonly workerQueue: sqs.IQueue;
  /** How to build the nginx sidecar image. */
  readonly nginxImage: ImageBuildContext;
  /** How to build the demo backend image, run by services whose image is `{ "kind": "demo" }`. */
  readonly demoBackendImage: ImageBuildContext;
}

/** A Docker build of an image this repository owns (staged by `containers/stage.ts`). */
export interface ImageBuildContext {
  /** The build context directory. */
  readonly directory: string;
  /** The Dockerfile, relative to `directory`. */
  readonly file: string;
}

/** Which health endpoint the load balancer probes for each pool. */
const LB_HEALTH_PATH: Record<Exclude<ServiceName, 'worker'>, string> = {
  'backend-read': '/health/readonly',
  'backend-write': '/health',
  frontend: '/health',
};

/**
 * The stateless application tier: the ECS cluster, the four Fargate services with their nginx
 * sidecars, and the load balancer routing between them.
 */
export class ServicesStack extends Stack {
  readonly cluster: ecs.Cluster;
  readonly services: Readonly<Record<ServiceName, SidecarService>>;
  readonly targetGroups: Readonly<Record<Exclude<ServiceName, 'worker'>, elbv2.ApplicationTargetGroup>>;
  readonly loadBalancer: LoadBalancer;

  constructor(scope: Construct, id: string, props: ServicesStackProps) {
    super(scope, id, props);
    const { config, network, shards } = props;

    // CloudFormation names the cluster (`<stack>-Cluster…-<suffix>`): a fixed name would collide
    // with a second deployment of the same name and environment in the account and region. The
    // controller, alarms and dashboard take the generated name; the ClusterName output shows it.
    this.cluster = new ecs.Cluster(this, 'Cluster', {
      vpc: network.vpc,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });

    // Images this repository owns are CDK assets: built by `cdk deploy` and pushed to the
    // bootstrap repository, so a first deploy needs no image built by hand. One asset each,
    // shared by every service that runs it.
    const asset = (context: ImageBuildContext): ecs.ContainerImage =>
      ecs.ContainerImage.fromAsset(context.directory, { file: context.file, platform: Platform.LINUX_AMD64 });
    const nginxImage = asset(props.nginxImage);
    let demoBackend: ecs.ContainerImage | undefined;
    const repositories = new Map<string, ecr.IRepository>();
    const imageOf = (image: ImageConfig): ecs.ContainerImage => {
      if (image.kind === 'demo') return (demoBackend ??= asset(props.demoBackendImage));
      if (image.kind === 'registry') return ecs.ContainerImage.fromRegistry(image.uri);
      let repository = repositories.get(image.repository);
      if (!repository) {
        repository = ecr.Repository.fromRepositoryName(this, `Repo${repositories.size}`, image.repository);
        repositories.set(image.repository, repository);
      }
      return ecs.ContainerImage.fromEcrRepository(repository, image.tag);
    };

    // The application learns its shards from plain settings, and where each shard's login is:
    // the ARN of its least-privilege application login's secret (never the master's: the tasks
    // only read and write documents, shard migration 003, sharding migration 004). The
    // application reads the secret with its task role when it connects, and again whenever a
    // login is refused: the secret rotates with alternating users, and a login injected once at
    // task start (ECS `secrets`) would stop working at the second rotation after the task started.
    const sharding = shardingDocument(
      shards.map((s) => ({ id: s.shardId, host: s.primary.dbInstanceEndpointAddress, replicas: s.replicas.map((r) => r.dbInstanceEndpointAddress) })),
      config.database.databaseName,
      config.database.shardingStrategy,
    );
    const loginSecrets: Record<string, string> = {};
    for (const s of shards) loginSecrets[`${s.shardId.toUpperCase().replace(/-/g, '_')}_DB_SECRET_ARN`] = s.appSecret.secretArn;

    // Each task's pool per database instance, so that every service at its maximum, during a
    // deployment, stays within the instances' default max_connections (connection-budget.ts).
    const connected = SERVICE_NAMES.filter((name) => config.services[name].databaseAccess);
    const budget = connectionBudget({
      instanceClasses: [config.database.instanceClass, ...(config.database.replicasPerShard > 0 ? [config.database.replicaInstanceClass ?? config.database.instanceClass] : [])],
      maxTasks: connected.reduce((n, name) => n + config.bounds[name].max, 0),
      surgePercent: DEPLOYMENT_MAX_PERCENT,
    });
    if (budget.poolSize < 1) {
      throw new DeploymentConfigError([
        {
          path: 'database.instanceClass',
          message: `${budget.peakTasks} tasks at the services' max_instances during a deployment (${connected.join(', ')}) cannot hold even one connection each within the ${budget.maxConnections} connections ${config.database.instanceClass} allows by default (estimated from below): choose a larger instance class or lower scaling max_instances`,
        },
      ]);
    }
    if (budget.maxConnections === undefined) {
      Annotations.of(this).addWarningV2(
        '@ca-dms/services:unknownInstanceClass',
        `the default max_connections of ${config.database.instanceClass} is not known here: the tasks get DATABASE_POOL_SIZE ${budget.poolSize}, unchecked against it (${budget.peakTasks} tasks at the largest)`,
      );
    }

    const services: Partial<Record<ServiceName, SidecarService>> = {};
    for (const name of SERVICE_NAMES) {
      const svc = config.services[name];
      services[name] = new SidecarService(this, pascal(name), {
        cluster: this.cluster,
        appImage: imageOf(svc.image),
        // The demo image's user; other images run as their own USER says.
        ...(svc.image.kind === 'demo' ? { appUser: DEMO_BACKEND_USER } : {}),
        nginxImage,
        cpu: svc.cpu,
        memoryMiB: svc.memoryMiB,
        appPort: svc.containerPort,
        appHealthCheckPath: svc.healthCheckPath,
        nginxPort: config.nginx.port,
        environment: {
          // Where the application listens: the port nginx proxies to and the health check probes.
          PORT: String(svc.containerPort),
          CA_DMS_SERVICE: name,
          // The read pool serves only GET/HEAD (the load balancer guarantees it) from replicas.
          ...(svc.databaseAccess
            ? {
                DATABASE_READ_ONLY: String(name === 'backend-read'),
                DATABASE_POOL_SIZE: String(budget.poolSize),
                SHARDING_ENABLED: 'true',
                SHARDING_STRATEGY: config.database.shardingStrategy,
                // The guide's ShardingConfig with credential-free URLs; the SHARD_NNN_DB_SECRET_ARN logins complete them.
                SHARDING_CONFIG_JSON: this.toJsonString(sharding),
                ...loginSecrets,
                // The catalog (slot maps, directory) lives on the first shard's primary, as the control plane's.
                CATALOG_SHARD_ID: shards[0]?.shardId ?? '',
              }
            : {}),
          ...(name === 'worker' ? { WORKER_QUEUE_URL: props.workerQueue.queueUrl, WORKER_QUEUE_NAME: props.workerQueue.queueName } : {}),
        },
        nginxEnvironment: {
          NGINX_WORKER_PROCESSES: String(config.nginx.workerProcesses),
          NGINX_WORKER_CONNECTIONS: String(config.nginx.workerConnections),
          NGINX_KEEPALIVE_TIMEOUT: String(config.nginx.keepaliveTimeout),
          NGINX_TRUSTED_PROXY_CIDRS: network.vpc.vpcCidrBlock,
        },
        securityGroup: network.servicesSecurityGroup,
        subnets: { subnetGroupName: SUBNETS.compute },
        minTasks: config.bounds[name].min,
        maxTasks: config.bounds[name].max,
        logRetention: config.logRetentionDays as logs.RetentionDays,
      });
    }
    this.services = services as Record<ServiceName, SidecarService>;
    // Each task reads its shards' login secrets itself (GetSecretValue, with DescribeSecret that
    // comes with the grant), so its task role holds the grant; the execution role, which only
    // pulls the images and ships the logs, reads no secret. The secrets are encrypted with the
    // AWS managed key of Secrets Manager, which needs no kms grant.
    // Only services with databaseAccess: a frontend of your own that never connects gets no grant.
    for (const name of SERVICE_NAMES) {
      if (!config.services[name].databaseAccess) continue;
      for (const s of shards) s.appSecret.grantRead(this.services[name].taskDefinition.taskRole);
    }
    // The worker takes jobs off its queue (receive, delete, extend visibility) and may queue
    // follow-up jobs; no other service touches it.
    const workerRole = this.services.worker.taskDefinition.taskRole;
    props.workerQueue.grantConsumeMessages(workerRole);
    props.workerQueue.grantSendMessages(workerRole);

    this.targetGroups = {
      'backend-read': this.services['backend-read'].targetGroup(network.vpc, LB_HEALTH_PATH['backend-read']),
      'backend-write': this.services['backend-write'].targetGroup(network.vpc, LB_HEALTH_PATH['backend-write']),
      frontend: this.services.frontend.targetGroup(network.vpc, LB_HEALTH_PATH.frontend),
    };

    const accessLogs = new AccessLogBucket(this, 'AlbAccessLogs', { expirationDays: config.logRetentionDays });
    this.loadBalancer = new LoadBalancer(this, 'LoadBalancer', {
      vpc: network.vpc,
      subnets: { subnetGroupName: SUBNETS.public },
      securityGroup: network.loadBalancerSecurityGroup,
      accessLogBucket: accessLogs.bucket,
      readTargets: this.targetGroups['backend-read'],
      writeTargets: this.targetGroups['backend-write'],
      defaultTargets: this.targetGroups.frontend,
      certificateArn: this.certificateArn(config),
      deletionProtection: config.production,
    });
    const zone = config.domain?.hostedZone;
    if (zone && config.domain?.domainName) {
      new route53.ARecord(this, 'DomainAlias', {
        zone: this.hostedZone(config),
        recordName: config.domain.domainName,
        target: route53.RecordTarget.fromAlias(new route53Targets.LoadBalancerTarget(this.loadBalancer.alb)),
      });
    }
    if (!config.domain) {
      Annotations.of(this.loadBalancer).addWarningV2(
        '@ca-dms/services:httpOnly',
        'No domain configured: the load balancer serves plain HTTP only. Set domain.certificateArn, or domain.hostedZone and domain.domainName, for HTTPS (required when production is true).',
      );
    }

    new CfnOutput(this, 'LoadBalancerDnsName', {
      description: 'DNS name of the load balancer (point the CA-DMS domain here)',
      value: this.loadBalancer.alb.loadBalancerDnsName,
    });
    new CfnOutput(this, 'ClusterName', {
      description: 'The ECS cluster of the services (named by CloudFormation)',
      value: this.cluster.clusterName,
    });
  }

  private zone?: route53.IHostedZone;

  /** The configured hosted zone, by id and name (no lookup: synthesis stays offline). */
  private hostedZone(config: DeploymentConfig): route53.IHostedZone {
    const zone = config.domain?.hostedZone;
    if (!zone) throw new Error('hostedZone() needs domain.hostedZone');
    this.zone ??= route53.HostedZone.fromHostedZoneAttributes(this, 'Zone', { hostedZoneId: zone.id, zoneName: zone.name });
    return this.zone;
  }

  /** The configured certificate, or one requested for domain.domainName and validated in the hosted zone. */
  private certificateArn(config: DeploymentConfig): string | undefined {
    const domain = config.domain;
    if (!domain) return undefined;
    if (domain.certificateArn) return domain.certificateArn;
    if (!domain.domainName) return undefined;
    return new acm.Certificate(this, 'Certificate', {
      domainName: domain.domainName,
      validation: acm.CertificateValidation.fromDns(this.hostedZone(config)),
    }).certificateArn;
  }
}

/** `backend-read` -> `BackendRead`: construct ids. */
export function pascal(name: string): string {
  return name.replace(/(^|-)([a-z])/g, (_m, _d: string, c: string) => c.toUpperCase());
}
