/**
 * The deployment configuration of the CDK app: one zod schema, read from `config/<env>.json`
 * and overridden by the `ca-dms:config` object in the CDK context (`cdk.json` or `-c`).
 * Every field has a default suitable for a first deploy, so `{}` is a valid configuration.
 * Invalid configuration fails synthesis with a {@link DeploymentConfigError} naming every
 * offending path.
 *
 * @example
 * ```ts
 * const config = parseDeploymentConfig({ database: { shards: 4 } });
 * config.database.replicasPerShard; // 1
 * ```
 */
import * as logs from 'aws-cdk-lib/aws-logs';
import { z } from 'zod';
import { DEFAULT_SERVICES } from '../../functions/core/scaling/types.js';
import { minimumMaxAllocatedStorageGiB } from '../data/shard-database.js';
import { HEALTH_PATHS } from '../../containers/backend/health.js';
import { nginxEnvSchema } from '../../containers/nginx/render.js';
import {
  issuesOf,
  parseScalingConfig,
  resolveServiceConfig,
  ScalingConfigError,
  type ScalingConfig,
} from '../../functions/core/scaling/config.js';

/** The four Fargate services of CA-DMS, in the order they are created. */
export const SERVICE_NAMES = DEFAULT_SERVICES;
export type ServiceName = (typeof SERVICE_NAMES)[number];

const positiveInt = z.number().int().min(1);

/** CloudWatch Logs accepts only these retention periods (days). */
const RETENTION_DAYS = Object.values(logs.RetentionDays).filter((v): v is number => typeof v === 'number' && v > 0);
const retentionDays = z
  .number()
  .int()
  .refine((v) => RETENTION_DAYS.includes(v), `a CloudWatch Logs retention period: one of ${RETENTION_DAYS.join(', ')}`);

/** `db.` is added by RDS; the class is what `ec2.InstanceType` accepts, e.g. `t4g.medium`. */
const instanceClass = z
  .string()
  .regex(/^[a-z][a-z0-9-]*\.[a-z0-9]+$/, 'an instance class such as "t4g.medium" or "r7g.large" (without the "db." prefix)');

/** Fargate's valid CPU/memory pairs (MiB), checked so a typo fails at synth, not at deploy. */
const FARGATE_MEMORY: Record<number, readonly [number, number, number]> = {
  256: [512, 2048, 512],
  512: [1024, 4096, 1024],
  1024: [2048, 8192, 1024],
  2048: [4096, 16384, 1024],
  4096: [8192, 30720, 1024],
  8192: [16384, 61440, 4096],
  16384: [32768, 122880, 8192],
};

/**
 * The port nginx listens on in a task by default; the sidecar image exposes it. At least 1024,
 * since the image runs nginx unprivileged.
 */
export const DEFAULT_NGINX_PORT = 8080;

/** The host of a private Amazon ECR registry (`<account>.dkr.ecr.<region>.amazonaws.com`, `.com.cn` in China). */
const PRIVATE_ECR_HOST = /^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?\//;

const imageSchema = z.discriminatedUnion('kind', [
  /** The demo backend, built from this repository at deploy time (containers/backend). */
  z.strictObject({ kind: z.literal('demo') }),
  z.strictObject({
    kind: z.literal('ecr'),
    /** The ECR repository name in the deployment account, e.g. `ca-dms/backend`. */
    repository: z.string().regex(/^[a-z0-9][a-z0-9._\-/]{1,255}$/, 'an ECR repository name'),
    /** An immutable tag (a release or a git SHA) so a deploy is reproducible. */
    tag: z.string().regex(/^[\w][\w.-]{0,127}$/, 'a Docker image tag'),
  }),
  z.strictObject({
    kind: z.literal('registry'),
    /** A full image reference, e.g. `public.ecr.aws/org/image:1.2.3`. */
    uri: z
      .string()
      .regex(/^[a-z0-9.-]+(:\d+)?\/[\w./-]+(:[\w.-]+|@sha256:[a-f0-9]{64})$/, 'an image reference with a registry host and a tag or digest')
      // A registry image is pulled without credentials: a private ECR repository would refuse
      // the task execution role, whose pull permission names only the repositories the stack
      // knows, and every task would fail to start.
      .refine((uri) => !PRIVATE_ECR_HOST.test(uri), 'a private Amazon ECR image: use {"kind":"ecr","repository":...,"tag":...} for a repository of the deployment account, so the task execution role is granted pull on it'),
  }),
], { error: '"kind" must be "demo" (the demo backend built from containers/backend), "ecr" (with "repository" and "tag") or "registry" (with "uri")' });
export type ImageConfig = z.infer<typeof imageSchema>;

/** Task CPU units (Fargate). */
const fargateCpu = z.union([z.literal(256), z.literal(512), z.literal(1024), z.literal(2048), z.literal(4096), z.literal(8192), z.literal(16384)]);

const serviceSchema = z
  .strictObject({
    image: imageSchema,
    cpu: fargateCpu,
    /** Task memory in MiB (Fargate pairs it with the CPU). */
    memoryMiB: positiveInt,
    /** The port the application listens on inside the task (nginx proxies to it on loopback). */
    containerPort: z.number().int().min(1024).max(65535),
    /** The application's own health endpoint, used by the container health check. */
    healthCheckPath: z.string().regex(/^\/[\w\-/.]*$/, 'an absolute URL path'),
    /**
     * Whether the service connects to the shards: its task role may read the shards' login
     * secrets, and its environment names the shards. A service of your own that never touches
     * the database (a static frontend) sets false and gets neither.
     */
    databaseAccess: z.boolean(),
  })
  .superRefine((s, ctx) => {
    if (s.image.kind === 'demo' && !s.databaseAccess) {
      ctx.addIssue({ code: 'custom', path: ['databaseAccess'], message: 'the demo backend serves sharded documents and does not start without the shards: keep databaseAccess true, or name an image of your own' });
    }
    // The demo backend answers only its own health paths: another would fail the container
    // health check of every task, nginx (which waits for it) would never start, and the
    // deployment would roll back.
    if (s.image.kind === 'demo' && !(HEALTH_PATHS as readonly string[]).includes(s.healthCheckPath)) {
      ctx.addIssue({ code: 'custom', path: ['healthCheckPath'], message: `the demo backend answers health checks on ${HEALTH_PATHS.join(' and ')} only, not ${s.healthCheckPath}` });
    }
    const range = FARGATE_MEMORY[s.cpu];
    // 256 CPU units take 512, 1024 or 2048 MiB; the other sizes a range in fixed steps.
    const valid = s.cpu === 256 ? [512, 1024, 2048].includes(s.memoryMiB) : range !== undefined && s.memoryMiB >= range[0] && s.memoryMiB <= range[1] && (s.memoryMiB - range[0]) % range[2] === 0;
    if (range && !valid) {
      ctx.addIssue({
        code: 'custom',
        path: ['memoryMiB'],
        message: `Fargate with cpu ${s.cpu} accepts ${s.cpu === 256 ? '512, 1024 or 2048 MiB' : `${range[0]}..${range[1]} MiB in steps of ${range[2]}`}, not ${s.memoryMiB}`,
      });
    }
  });
export type ServiceConfig = z.infer<typeof serviceSchema>;

function service(defaults: { image: ImageConfig; port: number; health: string; cpu?: 256 | 512 | 1024; memoryMiB?: number }) {
  return {
    image: defaults.image,
    cpu: defaults.cpu ?? 512,
    memoryMiB: defaults.memoryMiB ?? 1024,
    containerPort: defaults.port,
    healthCheckPath: defaults.health,
    databaseAccess: true,
  } as const;
}

/**
 * Every service runs the demo backend this repository builds unless the configuration names
 * an image (`services.<name>.image`): no default points at an image nobody builds, and a
 * first deploy starts healthy tasks.
 */
const DEMO: ImageConfig = { kind: 'demo' };
const DEFAULT_SERVICE_CONFIG: Record<ServiceName, z.input<typeof serviceSchema>> = {
  'backend-read': service({ image: DEMO, port: 8000, health: '/health' }),
  'backend-write': service({ image: DEMO, port: 8000, health: '/health' }),
  frontend: service({ image: DEMO, port: 3000, health: '/health', cpu: 256, memoryMiB: 512 }),
  worker: service({ image: DEMO, port: 8000, health: '/health' }),
};

const serviceOverride = z.strictObject({
  image: imageSchema.optional(),
  cpu: fargateCpu.optional(),
  memoryMiB: positiveInt.optional(),
  containerPort: z.number().int().optional(),
  healthCheckPath: z.string().optional(),
  databaseAccess: z.boolean().optional(),
});

const awsRegion = z.string().regex(/^[a-z]{2}(-gov)?-[a-z]+-\d$/, 'an AWS region such as "eu-west-1"');

const deploymentSchemaObject = z.strictObject({
  /** Prefix of every physical name and stack name. */
  name: z.string().regex(/^[a-z][a-z0-9-]{1,20}$/, 'lower-case letters, digits and dashes, 2..21 characters').default('ca-dms'),
  /** The environment label (`dev`, `prod`, ...), part of the stack names. */
  environment: z.string().regex(/^[a-z][a-z0-9]{0,9}$/, 'lower-case letters and digits, at most 10').default('dev'),
  /**
   * Production posture: Multi-AZ databases, snapshots kept on stack deletion, longer log
   * retention. Development keeps the same protections against deletion.
   */
  production: z.boolean().default(false),
  /** Account and region; unset fields come from the CDK environment (CDK_DEFAULT_*). */
  account: z.string().regex(/^\d{12}$/, 'a 12-digit AWS account id').optional(),
  region: awsRegion.default('eu-west-1'),
  network: z
    .strictObject({
      cidr: z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/(1[6-9]|2[0-4])$/, 'an IPv4 CIDR between /16 and /24').default('10.40.0.0/16'),
      maxAzs: z.number().int().min(2).max(6).default(2),
      /**
       * NAT gateways: 1 saves cost in development; one per AZ survives an AZ outage. At least
       * one: SQS (the worker's queue), SSM, ECS, Application Auto Scaling and the RDS API have
       * no interface endpoint here, the compute subnets reach them through NAT.
       */
      natGateways: z
        .number()
        .int()
        .min(1, 'at least 1: the worker tasks reach SQS, and the functions SSM, ECS, Application Auto Scaling and the RDS API, only through NAT')
        .max(6)
        .default(1),
      /** Interface endpoints (ECR, Logs, Secrets Manager, CloudWatch) keep that traffic off NAT. */
      interfaceEndpoints: z.boolean().default(true),
      flowLogRetentionDays: retentionDays.default(90),
    })
    .prefault({}),
  database: z
    .strictObject({
      shards: z.number().int().min(1).max(64).default(2),
      replicasPerShard: z.number().int().min(0).max(5).default(1),
      instanceClass: instanceClass.default('t4g.medium'),
      /** Defaults to `instanceClass`. */
      replicaInstanceClass: instanceClass.optional(),
      /**
       * The PostgreSQL version: a major version (`17`, the default), which RDS keeps on its
       * newest minor with automatic minor upgrades, or a full version (`17.6`), pinned: automatic
       * minor upgrades are then off, since RDS would move the instances past the template's
       * version and every later deploy would try to take them back.
       */
      postgresVersion: z.string().regex(/^(1[4-9])(\.\d{1,2})?$/, 'a PostgreSQL major version 14 or newer ("17"), or a full version to pin ("17.6")').default('17'),
      databaseName: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/, 'a PostgreSQL identifier').default('ca_dms'),
      allocatedStorageGiB: z.number().int().min(20).max(65536).default(50),
      /** Storage autoscaling ceiling: RDS wants it at least 10% above allocatedStorageGiB. */
      maxAllocatedStorageGiB: z.number().int().min(20).max(65536).default(200),
      /** The guide asks for every shard to be backed up independently: 7..35 days. */
      backupRetentionDays: z.number().int().min(7).max(35).default(7),
      /** Defaults to `production`. */
      multiAz: z.boolean().optional(),
      /**
       * RDS deletion protection on every instance. Defaults to `production`. It stops
       * CloudFormation too: a failed first create cannot roll back past a protected instance
       * (ROLLBACK_FAILED) and `cdk destroy` fails, so a first production deploy may run with it
       * off and turn it on with the next deploy (an in-place change).
       */
      deletionProtection: z.boolean().optional(),
      secretRotationDays: z.number().int().min(1).max(365).default(30),
      /** How documents are routed to shards (range routing needs ranges this file does not carry). */
      shardingStrategy: z.enum(['hash_based', 'directory_based']).default('hash_based'),
    })
    .prefault({}),
  services: z
    .strictObject({
      'backend-read': serviceOverride.optional(),
      'backend-write': serviceOverride.optional(),
      frontend: serviceOverride.optional(),
      worker: serviceOverride.optional(),
    })
    .default({}),
  nginx: z
    .strictObject({
      /** The port nginx listens on inside the task: the task's only port mapping. */
      port: z.number().int().min(1024).max(65535).default(DEFAULT_NGINX_PORT),
      workerProcesses: z.union([z.literal('auto'), positiveInt]).default('auto'),
      workerConnections: positiveInt.default(4096),
      keepaliveTimeout: positiveInt.default(65),
    })
    .prefault({}),
  /**
   * The runtime scaling configuration (the controller's schema, see
   * `functions/core/scaling/config.ts`): thresholds, policies and the bounds per service.
   * It becomes the functions' last-known configuration and the scalable targets' bounds.
   */
  scaling: z.record(z.string(), z.unknown()).default({}),
  /** The worker service's job queue (SQS), whose depth the controller scales the worker on. */
  workerQueue: z
    .strictObject({
      /** How long a received job stays hidden from other workers: longer than the slowest job. SQS allows 0..43200. */
      visibilityTimeoutSeconds: z.number().int().min(0).max(43_200).default(300),
      /** Receives after which a failing job goes to the dead-letter queue. SQS allows 1..1000. */
      maxReceiveCount: z.number().int().min(1).max(1000).default(5),
    })
    .prefault({}),
  alarms: z
    .strictObject({
      cpuPercent: z.number().min(1).max(100).default(80),
      freeStorageGiB: z.number().min(1).default(10),
      replicaLagSeconds: z.number().min(1).default(30),
      databaseConnections: positiveInt.default(400),
      lambdaErrors: positiveInt.default(1),
      alb5xxPerMinute: positiveInt.default(10),
      /**
       * Minutes a shard move may run without moving forward (no page copied, no batch deleted, no
       * state it does not come back from) before the `MoveWithoutProgress` alarm. The catch-up,
       * fence and verification loop of a healthy move ends within minutes; one moves-worker
       * invocation lasts 13.
       */
      moveStalledMinutes: positiveInt.default(30),
    })
    .prefault({}),
  controlPlane: z
    .strictObject({
      /**
       * Reserve a concurrency of 1 for the evaluator, the alarm function and the moves worker.
       * Off by default: a new account's quota is 10 and AWS keeps 10 unreserved, so the deploy
       * would fail; the catalog lease already runs one evaluation and one moves worker at a time.
       */
      reservedConcurrency: z.boolean().default(false),
    })
    .prefault({}),
  api: z
    .strictObject({
      throttlingRateLimit: z.number().min(1).default(20),
      throttlingBurstLimit: positiveInt.default(40),
    })
    .prefault({}),
  /**
   * HTTPS for the load balancer: an ACM certificate ARN in the deployment region, or a Route 53
   * hosted zone in which the app requests a DNS-validated certificate for `domainName` and points
   * `domainName` at the load balancer. Required in production; without it a development
   * environment serves plain HTTP, with a synthesis warning.
   */
  domain: z
    .strictObject({
      certificateArn: z.string().regex(/^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate\/[\w-]+$/, 'an ACM certificate ARN').optional(),
      domainName: z.string().regex(/^([a-z0-9-]+\.)+[a-z]{2,}$/, 'a DNS name').optional(),
      hostedZone: z
        .strictObject({
          id: z.string().regex(/^Z[A-Z0-9]{1,32}$/, 'a Route 53 hosted zone id such as "Z0123456789ABCDEFGHIJ"'),
          name: z.string().regex(/^([a-z0-9-]+\.)+[a-z]{2,}$/, 'the zone\'s DNS name, e.g. "example.com"'),
        })
        .optional(),
    })
    .superRefine((d, ctx) => {
      if (d.certificateArn === undefined && d.hostedZone === undefined) {
        ctx.addIssue({ code: 'custom', path: ['certificateArn'], message: 'give a certificateArn, or a hostedZone (with domainName) to request one' });
      }
      if (d.hostedZone !== undefined && d.domainName === undefined) {
        ctx.addIssue({ code: 'custom', path: ['domainName'], message: 'required with hostedZone: the name the certificate is for and the alias record points at' });
      }
      if (d.hostedZone !== undefined && d.domainName !== undefined && d.domainName !== d.hostedZone.name && !d.domainName.endsWith(`.${d.hostedZone.name}`)) {
        ctx.addIssue({ code: 'custom', path: ['domainName'], message: `must be in the hosted zone ${d.hostedZone.name}` });
      }
    })
    .optional(),
  logRetentionDays: retentionDays.default(90),
});

/** The validated deployment configuration with every service fully resolved. */
export type DeploymentConfig = Omit<z.infer<typeof deploymentSchemaObject>, 'services' | 'scaling'> & {
  readonly services: Readonly<Record<ServiceName, ServiceConfig>>;
  /** The runtime scaling configuration after the controller's own validation. */
  readonly scaling: ScalingConfig;
  /** The evaluation interval in seconds (SCALING_CHECK_INTERVAL). */
  readonly checkIntervalSeconds: number;
  /** Resolved bounds per service, from the scaling configuration. */
  readonly bounds: Readonly<Record<ServiceName, { readonly min: number; readonly max: number }>>;
};

/** One offending path and what is wrong with it. */
export interface ConfigIssue {
  readonly path: string;
  readonly message: string;
}

/** The configuration was rejected; `issues` names every offending path. */
export class DeploymentConfigError extends Error {
  override readonly name = 'DeploymentConfigError';
  constructor(
    readonly issues: readonly ConfigIssue[],
    options?: { cause?: unknown },
  ) {
    super(`invalid deployment configuration:\n${issues.map((i) => `  - ${i.path || '(root)'}: ${i.message}`).join('\n')}`, options);
  }
}

/**
 * Validates a deployment configuration document and applies the defaults.
 * Throws {@link DeploymentConfigError} listing every problem at once, including the problems
 * the runtime scaling schema finds under `scaling.*`.
 */
export function parseDeploymentConfig(input: unknown): DeploymentConfig {
  const issues: ConfigIssue[] = [];
  const result = deploymentSchemaObject.safeParse(input ?? {});
  if (!result.success) issues.push(...issuesOf(result.error));

  let scaling: ScalingConfig | undefined;
  const scalingInput = result.success ? result.data.scaling : (input as { scaling?: unknown } | undefined)?.scaling;
  try {
    scaling = parseScalingConfig(scalingInput ?? {});
  } catch (error) {
    if (!(error instanceof ScalingConfigError)) throw error;
    issues.push(...error.issues.map((i) => ({ path: i.path ? `scaling.${i.path}` : 'scaling', message: i.message })));
  }

  // Services and scaling services are checked from the raw document too, so that one bad
  // field elsewhere does not hide theirs: the error names every offending path at once.
  const raw = isPlainObject(input) ? input : {};
  const rawServices = result.success ? result.data.services : isPlainObject(raw['services']) ? raw['services'] : {};
  const services: Partial<Record<ServiceName, ServiceConfig>> = {};
  for (const name of SERVICE_NAMES) {
    const override = rawServices[name];
    const merged = { ...DEFAULT_SERVICE_CONFIG[name], ...(isPlainObject(override) ? stripUndefined(override) : {}) };
    const parsed = serviceSchema.safeParse(merged);
    if (parsed.success) services[name] = parsed.data;
    else issues.push(...issuesOf(parsed.error).map((i) => ({ path: `services.${name}.${i.path}`, message: i.message })));
  }
  if (result.success) {
    const db = result.data.database;
    const minimumCeiling = minimumMaxAllocatedStorageGiB(db.allocatedStorageGiB);
    if (db.maxAllocatedStorageGiB < minimumCeiling) {
      issues.push({
        path: 'database.maxAllocatedStorageGiB',
        message: `must be at least ${minimumCeiling}, 10% above database.allocatedStorageGiB (${db.allocatedStorageGiB}): RDS refuses a lower storage-autoscaling ceiling ("Invalid max storage size")`,
      });
    }
    const certificateRegion = result.data.domain?.certificateArn?.split(':')[3];
    if (certificateRegion !== undefined && certificateRegion !== result.data.region) {
      // ACM certificates are regional and cannot be copied between regions: the load balancer's
      // HTTPS listener takes only one from its own region
      // (https://docs.aws.amazon.com/acm/latest/userguide/acm-regions.html).
      issues.push({
        path: 'domain.certificateArn',
        message: `is a certificate of ${certificateRegion}, but the load balancer is in ${result.data.region}: request or import the certificate in ${result.data.region} (a CloudFront certificate from us-east-1 does not serve a load balancer elsewhere), or give domain.hostedZone and domain.domainName to have one made there`,
      });
    }
    if (result.data.production && result.data.domain === undefined) {
      issues.push({
        path: 'domain',
        message: 'production serves HTTPS only: give domain.certificateArn, or domain.hostedZone and domain.domainName (e.g. -c ca-dms:config=\'{"domain":{"certificateArn":"arn:aws:acm:..."}}\')',
      });
    }
    issues.push(...sidecarIssues(result.data.nginx));
    if (result.data.network.natGateways > result.data.network.maxAzs) {
      issues.push({ path: 'network.natGateways', message: `must not exceed network.maxAzs (${result.data.network.maxAzs})` });
    }
  }
  const scalingServices = isPlainObject(scalingInput) && isPlainObject(scalingInput['services']) ? scalingInput['services'] : {};
  for (const name of Object.keys(scalingServices)) {
    if (!(SERVICE_NAMES as readonly string[]).includes(name)) {
      issues.push({ path: `scaling.services.${name}`, message: `no such service; the services are ${SERVICE_NAMES.join(', ')}` });
    }
  }

  if (issues.length > 0 || !result.success || !scaling) {
    throw new DeploymentConfigError(dedupe(issues), { cause: result.success ? undefined : result.error });
  }
  const resolvedScaling = scaling;
  const bounds = Object.fromEntries(
    SERVICE_NAMES.map((name) => {
      const s = resolveServiceConfig(resolvedScaling, name);
      return [name, { min: s.min_instances, max: s.max_instances }];
    }),
  ) as Record<ServiceName, { min: number; max: number }>;
  return {
    ...result.data,
    services: services as Record<ServiceName, ServiceConfig>,
    scaling: resolvedScaling,
    checkIntervalSeconds: resolvedScaling.check_interval,
    bounds,
  };
}

/** The configuration field each sidecar variable the stack sets comes from. */
const NGINX_VARIABLE_PATHS: Readonly<Record<string, string>> = {
  NGINX_WORKER_PROCESSES: 'nginx.workerProcesses',
  NGINX_WORKER_CONNECTIONS: 'nginx.workerConnections',
  NGINX_KEEPALIVE_TIMEOUT: 'nginx.keepaliveTimeout',
  NGINX_LISTEN_PORT: 'nginx.port',
  // Not set by the stack: its default must differ from the listen port.
  NGINX_STATUS_PORT: 'nginx.port',
};

/**
 * What the nginx sidecar would refuse at start (exit 78, containers/nginx/render.ts) among the
 * variables the stack gives it: refused here instead, since on ECS every task would fail its
 * start and the deployment roll back. Among them the client keep-alive, which must outlast the
 * load balancer's idle timeout or the load balancer answers 502 on connections nginx closed
 * (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/edit-load-balancer-attributes.html#connection-idle-timeout).
 */
function sidecarIssues(nginx: { readonly workerProcesses: number | 'auto'; readonly workerConnections: number; readonly keepaliveTimeout: number; readonly port: number }): ConfigIssue[] {
  const parsed = nginxEnvSchema.safeParse({
    NGINX_WORKER_PROCESSES: String(nginx.workerProcesses),
    NGINX_WORKER_CONNECTIONS: String(nginx.workerConnections),
    NGINX_KEEPALIVE_TIMEOUT: String(nginx.keepaliveTimeout),
    NGINX_LISTEN_PORT: String(nginx.port),
  });
  if (parsed.success) return [];
  return parsed.error.issues.map((issue) => {
    const variable = String(issue.path[0]);
    return { path: NGINX_VARIABLE_PATHS[variable] ?? 'nginx', message: `the nginx sidecar would refuse to start: ${variable} ${issue.message}` };
  });
}

function dedupe(issues: readonly ConfigIssue[]): ConfigIssue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const key = `${i.path}\u0000${i.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Deep-merges `override` onto `base`: objects merge key by key, anything else (arrays
 * included) replaces. Used to lay the CDK context over the environment's file.
 */
export function mergeConfig(base: unknown, override: unknown): unknown {
  if (isPlainObject(base) && isPlainObject(override)) {
    const out: Record<string, unknown> = { ...base };
    for (const [key, value] of Object.entries(override)) out[key] = mergeConfig(base[key], value);
    return out;
  }
  return override === undefined ? base : override;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
