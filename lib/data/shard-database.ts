import { Annotations, Duration, RemovalPolicy, Resource } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import type * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import type * as sam from 'aws-cdk-lib/aws-sam';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import { functionLogGroup } from '../function-log-group.js';
import { acknowledge } from '../nag.js';
import { keepStackRootedLogicalId } from '../stack-rooted-id.js';
import { sameTemplateValue } from '../transform-input.js';
import { validateProps } from '../validate.js';

const DEFAULT_PORT_REASON =
  "PostgreSQL keeps its default port 5432: a non-standard port is obscurity, not control; the instances' security group admits only the services, the control-plane functions, the proxy and the secret-rotation functions.";

/** The name of the function that rotates a shard's admin secret. */
function adminRotationFunctionName(namePrefix: string, shardId: string): string {
  return `${namePrefix}-${shardId}-admin-rotation`;
}

/** Props of {@link ShardDatabase}. */
export interface ShardDatabaseProps {
  /** The VPC; instances and the proxy go to `subnets`. */
  readonly vpc: ec2.IVpc;
  /** Subnets for the instances and the proxy (isolated ones). */
  readonly subnets: ec2.SubnetSelection;
  /** Subnets where the rotation function runs (it needs to reach Secrets Manager). */
  readonly rotationSubnets: ec2.SubnetSelection;
  /** The shard's id as the catalog names it, e.g. `shard-001`: part of every identifier. */
  readonly shardId: string;
  /** Prefix of the physical names (instance identifiers, secret names). */
  readonly namePrefix: string;
  /** The engine, shared by every shard so they run one version. */
  readonly engine: rds.IInstanceEngine;
  /** The parameter group (with `pg_stat_statements` preloaded), shared by every shard. */
  readonly parameterGroup: rds.IParameterGroup;
  /** Encrypts storage, backups and Performance Insights. */
  readonly encryptionKey: kms.IKey;
  /** The primary's instance type. */
  readonly instanceType: ec2.InstanceType;
  /** The replicas' instance type. @default instanceType */
  readonly replicaInstanceType?: ec2.InstanceType;
  /** Read replicas of the primary (0..5). @default 1 */
  readonly replicas?: number;
  /** Multi-AZ primary. @default false */
  readonly multiAz?: boolean;
  /**
   * Let RDS apply minor engine upgrades. Only with an engine version that names no minor
   * version: otherwise RDS moves the instances past the template's version (drift). @default true
   */
  readonly autoMinorVersionUpgrade?: boolean;
  /**
   * The Availability Zones of `subnets`, in order. A single-AZ primary goes to the first and
   * replica N to zone N (round-robin), so replicas never share the single-AZ primary's zone
   * while there are two or more. @default - RDS picks every instance's zone
   */
  readonly availabilityZones?: readonly string[];
  /** The database created on the primary. @default 'ca_dms' */
  readonly databaseName?: string;
  /** Initial storage in GiB. @default 50 */
  readonly allocatedStorageGiB?: number;
  /** Storage autoscaling ceiling in GiB. @default 200 */
  readonly maxAllocatedStorageGiB?: number;
  /** Automated backup retention, at least 7 days. @default Duration.days(7) */
  readonly backupRetention?: Duration;
  /** How often the admin password is rotated. @default Duration.days(30) */
  readonly secretRotation?: Duration;
  /** Security groups admitted to every instance directly (services, functions reading replicas). */
  readonly clientSecurityGroups: readonly ec2.ISecurityGroup[];
  /** Security groups admitted to the RDS Proxy (the control-plane functions). */
  readonly proxyClientSecurityGroups: readonly ec2.ISecurityGroup[];
  /** What happens to the primary when it leaves the stack. @default RemovalPolicy.SNAPSHOT */
  readonly removalPolicy?: RemovalPolicy;
  /**
   * RDS deletion protection on every instance. It also stops CloudFormation: the rollback of a
   * failed first create cannot delete a protected instance (the stack ends in ROLLBACK_FAILED,
   * and a retry collides with the instance's name), nor can `cdk destroy`. @default true
   */
  readonly deletionProtection?: boolean;
  /** Retention of the exported PostgreSQL logs. @default logs.RetentionDays.THREE_MONTHS */
  readonly logRetention?: logs.RetentionDays;
  /** What happens to the exported logs when the shard leaves the stack. @default RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE */
  readonly logRemovalPolicy?: RemovalPolicy;
  /**
   * The scaling catalog lives in this shard's database: it gets the control plane's catalog
   * login ({@link ShardDatabase.controlSecret}), which its proxy admits. @default false
   */
  readonly hostsCatalog?: boolean;
}

/**
 * Every log RDS for PostgreSQL can export to CloudWatch Logs: the server log and the log of
 * major-version upgrades (the Control Tower rule CT.RDS.PR.14 asks for all of them).
 */
export const RDS_LOG_EXPORTS = ['postgresql', 'upgrade'] as const;

/** The application's login user on every shard (its secret: {@link ShardDatabase.appSecret}). */
export const APP_LOGIN = 'ca_dms_app_user';
/** The scaling API's login on every shard (statistics and health; {@link ShardDatabase.monitorSecret}). */
export const MONITOR_LOGIN = 'ca_dms_monitor_user';
/** The moves worker's login on every shard ({@link ShardDatabase.moverSecret}). */
export const MOVER_LOGIN = 'ca_dms_mover_user';
/** The control plane's login on the catalog ({@link ShardDatabase.controlSecret}). */
export const CONTROL_LOGIN = 'ca_dms_control_user';

const ROTATED_ELSEWHERE =
  "Rotated every database.secretRotationDays by Secrets Manager's hosted PostgreSQL multi-user (alternating users) rotation, scheduled in the control-plane stack after the migrations have created the user, which cdk-nag cannot see from this stack.";
const ROTATED_ELSEWHERE_SINGLE_USER =
  "Rotated every database.secretRotationDays by Secrets Manager's hosted PostgreSQL single-user rotation (the login is reached through RDS Proxy, which knows one user per secret), scheduled in the control-plane stack after the migrations have created the user, which cdk-nag cannot see from this stack.";

/** Characters kept out of generated passwords: they would need quoting in a connection URL. */
const SECRET_EXCLUDED_CHARACTERS = ' %+~`#$&*()|[]{}:;<>?!\'/@"\\';

/**
 * The lowest storage-autoscaling ceiling RDS accepts for `allocatedGiB`: "at least 10% more than
 * the currently allocated storage", or it refuses the instance with "Invalid max storage size"
 * (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_PIOPS.Autoscaling.html).
 */
export function minimumMaxAllocatedStorageGiB(allocatedGiB: number): number {
  // Integer arithmetic: 50 * 1.1 is 55.00000000000001 in floating point, which would round up to 56.
  return Math.ceil((allocatedGiB * 11) / 10);
}

/** Instance classes (without `db.`) without Performance Insights, as AWS documents them. */
export const CLASSES_WITHOUT_PERFORMANCE_INSIGHTS: readonly string[] = ['t2.micro', 't2.small', 't3.micro', 't3.small', 't4g.micro', 't4g.small'];

/** Whether RDS offers Performance Insights on `instanceClass` (`t4g.medium`, no `db.` prefix). */
export function supportsPerformanceInsights(instanceClass: string): boolean {
  return !CLASSES_WITHOUT_PERFORMANCE_INSIGHTS.includes(instanceClass);
}

/**
 * One shard: an encrypted RDS PostgreSQL primary with its read replicas, deletion protection
 * on every instance, automated backups of the primary (RDS for PostgreSQL does not back up
 * read replicas; they are rebuilt from the primary), Performance Insights, TLS forced by the parameter
 * group, an admin secret rotated by Secrets Manager, and an RDS Proxy in front of the primary
 * for the Lambda functions (a proxy's reader endpoint does not work with RDS instances, so
 * replicas are reached directly at their own endpoints).
 *
 * @example
 * ```ts
 * const shard = new ShardDatabase(stack, 'Shard001', {
 *   vpc, subnets: { subnetGroupName: 'data' }, rotationSubnets: { subnetGroupName: 'compute' },
 *   shardId: 'shard-001', namePrefix: 'ca-dms-dev', engine, parameterGroup, encryptionKey: key,
 *   instanceType: new ec2.InstanceType('t4g.medium'), replicas: 1,
 *   clientSecurityGroups: [servicesSg, functionsSg], proxyClientSecurityGroups: [functionsSg],
 * });
 * shard.proxy.endpoint; // what the controller connects to
 * ```
 */
export class ShardDatabase extends Construct {
  readonly shardId: string;
  readonly primary: rds.DatabaseInstance;
  readonly replicas: readonly rds.DatabaseInstanceReadReplica[];
  readonly proxy: rds.DatabaseProxy;
  /** The admin credentials (`username`, `password`, `host`, `port`, `dbname`). */
  readonly secret: secretsmanager.ISecret;
  /**
   * The application's least-privilege login (a member of `ca_dms_app`, shard migration 003):
   * `username`, `password`, `host`, `port`, `dbname`, and `masterarn` naming {@link secret}, which
   * the alternating-users rotation logs in with. The migrations create the user from it.
   */
  readonly appSecret: secretsmanager.ISecret;
  /** The scaling API's login (a member of `ca_dms_monitor`, shard migration 006), shaped like {@link appSecret}. */
  readonly monitorSecret: secretsmanager.ISecret;
  /** The moves worker's login (a member of `ca_dms_mover`, shard migration 006), shaped like {@link appSecret}. */
  readonly moverSecret: secretsmanager.ISecret;
  /**
   * With `hostsCatalog`: the control plane's catalog login (a member of `ca_dms_control`,
   * catalog migration 006), shaped like {@link appSecret} and admitted by {@link proxy}.
   */
  readonly controlSecret?: secretsmanager.ISecret;
  readonly securityGroup: ec2.SecurityGroup;
  readonly databaseName: string;

  constructor(scope: Construct, id: string, props: ShardDatabaseProps) {
    super(scope, id);
    const replicas = props.replicas ?? 1;
    const backupRetention = props.backupRetention ?? Duration.days(7);
    const allocated = props.allocatedStorageGiB ?? 50;
    const maxAllocated = props.maxAllocatedStorageGiB ?? 200;
    validateProps('ShardDatabase', [
      [/^[a-z][a-z0-9-]{0,30}$/.test(props.shardId), `shardId must be lower-case letters, digits and dashes (got "${props.shardId}")`],
      [Number.isInteger(replicas) && replicas >= 0 && replicas <= 5, `replicas must be 0..5 (got ${replicas})`],
      [backupRetention.toDays() >= 7 && backupRetention.toDays() <= 35, `backupRetention must be 7..35 days (got ${backupRetention.toDays()})`],
      [
        maxAllocated >= minimumMaxAllocatedStorageGiB(allocated),
        `maxAllocatedStorageGiB (${maxAllocated}) must be at least ${minimumMaxAllocatedStorageGiB(allocated)}, 10% above allocatedStorageGiB (${allocated}): RDS refuses a lower storage-autoscaling ceiling`,
      ],
      [props.clientSecurityGroups.length > 0, 'clientSecurityGroups must name at least one client'],
      [
        adminRotationFunctionName(props.namePrefix, props.shardId).length <= 64,
        `namePrefix and shardId make the admin rotation function's name "${adminRotationFunctionName(props.namePrefix, props.shardId)}", longer than Lambda's 64 characters`,
      ],
    ]);
    this.shardId = props.shardId;
    this.databaseName = props.databaseName ?? 'ca_dms';
    const azs = props.availabilityZones ?? [];
    const identifier = `${props.namePrefix}-${props.shardId}`;

    this.securityGroup = new ec2.SecurityGroup(this, 'Sg', {
      vpc: props.vpc,
      description: `PostgreSQL ${props.shardId}: only the services, the control-plane functions and the proxy`,
      allowAllOutbound: false,
    });
    for (const client of props.clientSecurityGroups) {
      this.securityGroup.addIngressRule(client, ec2.Port.tcp(5432), 'PostgreSQL from an admitted workload');
    }

    const instanceIds = [`${identifier}-primary`, ...Array.from({ length: replicas }, (_, i) => `${identifier}-replica-${i + 1}`)];
    // RDS would create these log groups itself, with no expiry; creating them first sets one.
    // Their names are RDS's, so they are physical: kept on stack deletion only where
    // `logRemovalPolicy` says (production); a rolled-back first deploy removes them either way
    // (RetainExceptOnCreate), so the retry does not collide with them.
    const logGroups = instanceIds.map((instanceId, i) =>
      RDS_LOG_EXPORTS.map(
        (kind) =>
          new logs.LogGroup(this, `${i === 0 ? 'Primary' : `Replica${i}`}${kind === 'postgresql' ? '' : 'Upgrade'}Logs`, {
            logGroupName: `/aws/rds/instance/${instanceId}/${kind}`,
            retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
            removalPolicy: props.logRemovalPolicy ?? RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
          }),
      ),
    );

    const common: Omit<rds.DatabaseInstanceReadReplicaProps, 'sourceDatabaseInstance' | 'instanceType'> = {
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      securityGroups: [this.securityGroup],
      parameterGroup: props.parameterGroup,
      storageType: rds.StorageType.GP3,
      maxAllocatedStorage: maxAllocated,
      deletionProtection: props.deletionProtection ?? true,
      iamAuthentication: true,
      autoMinorVersionUpgrade: props.autoMinorVersionUpgrade ?? true,
      publiclyAccessible: false,
      cloudwatchLogsExports: [...RDS_LOG_EXPORTS],
      caCertificate: rds.CaCertificate.RDS_CA_RSA2048_G1,
      copyTagsToSnapshot: true,
    };

    this.primary = new rds.DatabaseInstance(this, 'Primary', {
      ...common,
      ...this.performanceInsights(props.instanceType, props.encryptionKey),
      instanceIdentifier: instanceIds[0],
      engine: props.engine,
      instanceType: props.instanceType,
      storageEncrypted: true,
      storageEncryptionKey: props.encryptionKey,
      multiAz: props.multiAz ?? false,
      // A Multi-AZ primary's zone is RDS's to choose (and changes on failover).
      ...(!(props.multiAz ?? false) && azs.length > 0 ? { availabilityZone: azs[0] } : {}),
      allocatedStorage: allocated,
      databaseName: this.databaseName,
      credentials: rds.Credentials.fromGeneratedSecret('ca_dms_admin', {
        secretName: `${props.namePrefix}/${props.shardId}/admin`,
        excludeCharacters: SECRET_EXCLUDED_CHARACTERS,
      }),
      backupRetention,
      removalPolicy: props.removalPolicy ?? RemovalPolicy.SNAPSHOT,
    });
    this.primary.node.addDependency(...(logGroups[0] ?? []));
    acknowledge(this.primary, 'AwsSolutions-RDS11', DEFAULT_PORT_REASON);
    if (!(props.multiAz ?? false)) {
      acknowledge(
        this.primary,
        'AwsSolutions-RDS3',
        'Single-AZ primary by configuration (database.multiAz=false, the development default to halve cost); production sets Multi-AZ.',
      );
    }
    if (!this.primary.secret) throw new Error('unreachable: generated credentials always carry a secret');
    this.secret = this.primary.secret;
    // Its logical ID comes from the full construct path, which the environment's Stage is part
    // of: keep the ID it had before the stages, or the admin password would be replaced.
    keepStackRootedLogicalId(this.primary.node.findChild('Secret'));
    // CDK gives the primary's subnet group and admin secret its removal policy only for RETAIN
    // (anything else becomes DESTROY): a primary kept except on create must keep them too, or a
    // stack deletion would remove the password of the database it keeps.
    if (props.removalPolicy === RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE) {
      for (const helper of [this.primary.node.tryFindChild('SubnetGroup'), this.primary.node.tryFindChild('Secret')]) {
        if (helper instanceof Resource) helper.applyRemovalPolicy(RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE);
      }
    }

    // Each least-privilege login's secret: username, password, and (attached to the primary)
    // the engine, host, port and dbname the hosted rotation requires, with masterarn naming the
    // admin secret it clones and sets passwords with. Its rotation (alternating users) is
    // scheduled by the control plane once the migrations have created the user: a rotation
    // must log in with the current password first.
    // A login's secret opens the database as much as the admin's: kept when the primary is kept.
    const keptWithPrimary =
      props.removalPolicy === RemovalPolicy.RETAIN || props.removalPolicy === RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE ? props.removalPolicy : undefined;
    const login = (id: string, username: string, behindProxy = false): secretsmanager.ISecret => {
      const secret = new rds.DatabaseSecret(this, id, { username, masterSecret: this.secret, excludeCharacters: SECRET_EXCLUDED_CHARACTERS });
      if (keptWithPrimary) secret.applyRemovalPolicy(keptWithPrimary);
      acknowledge(secret, 'AwsSolutions-SMG4', behindProxy ? ROTATED_ELSEWHERE_SINGLE_USER : ROTATED_ELSEWHERE);
      return secret.attach(this.primary);
    };
    this.appSecret = login('AppSecret', APP_LOGIN);
    this.monitorSecret = login('MonitorSecret', MONITOR_LOGIN);
    this.moverSecret = login('MoverSecret', MOVER_LOGIN);
    if (props.hostsCatalog === true) this.controlSecret = login('ControlSecret', CONTROL_LOGIN, true);

    const adminRotation = this.primary.addRotationSingleUser({
      automaticallyAfter: props.secretRotation ?? Duration.days(30),
      vpcSubnets: props.rotationSubnets,
    });
    // The rotation function comes from the Serverless Application Repository, through the
    // AWS::Serverless transform, which reads the application's parameters before any intrinsic
    // function is evaluated: the subnets (another stack's) come through a parameter of this
    // template (lib/transform-input.ts). The function is named with the prefix, so that its log
    // group can be made first with a retention, kept or removed like the RDS log groups above.
    const application = adminRotation.node.defaultChild as sam.CfnApplication;
    const rotationFunctionName = adminRotationFunctionName(props.namePrefix, props.shardId);
    application.addPropertyOverride('Parameters.functionName', rotationFunctionName);
    application.addPropertyOverride(
      'Parameters.vpcSubnetIds',
      sameTemplateValue(this, 'RotationSubnetIds', props.vpc.selectSubnets(props.rotationSubnets).subnetIds.join(',')),
    );
    functionLogGroup(this, 'AdminRotationLogs', {
      functionName: rotationFunctionName,
      retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: props.logRemovalPolicy ?? RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
      invokedAfter: [application],
    });

    this.replicas = Array.from({ length: replicas }, (_, i) => {
      const replica = new rds.DatabaseInstanceReadReplica(this, `Replica${i + 1}`, {
        ...common,
        instanceIdentifier: instanceIds[i + 1],
        sourceDatabaseInstance: this.primary,
        instanceType: props.replicaInstanceType ?? props.instanceType,
        ...this.performanceInsights(props.replicaInstanceType ?? props.instanceType, props.encryptionKey),
        ...(azs.length > 0 ? { availabilityZone: azs[(i + 1) % azs.length] } : {}),
        // RDS for PostgreSQL keeps no automated backups of read replicas (the engine rejects a
        // retention period): the primary's backups cover the shard, and a replica holds no
        // data of its own, so removing one destroys nothing that cannot be rebuilt.
        removalPolicy: RemovalPolicy.DESTROY,
      });
      replica.node.addDependency(...(logGroups[i + 1] ?? []));
      acknowledge(replica, 'AwsSolutions-RDS11', DEFAULT_PORT_REASON);
      acknowledge(
        replica,
        'AwsSolutions-RDS3',
        "A read replica is itself the redundancy for reads: losing its AZ loses read capacity, never data (the primary holds it, Multi-AZ in production). Replicas are placed round-robin over the VPC's Availability Zones, starting after the zone of a single-AZ primary.",
      );
      acknowledge(
        replica,
        'AwsSolutions-RDS2',
        'The replica inherits the encrypted primary\'s storage encryption and key; CloudFormation forbids StorageEncrypted on a read replica.',
      );
      return replica;
    });

    const proxySecurityGroup = new ec2.SecurityGroup(this, 'ProxySg', {
      vpc: props.vpc,
      description: `RDS Proxy of ${props.shardId}: only the control-plane functions`,
      allowAllOutbound: false,
    });
    for (const client of props.proxyClientSecurityGroups) {
      proxySecurityGroup.addIngressRule(client, ec2.Port.tcp(5432), 'PostgreSQL from the control-plane functions');
    }

    // addProxy opens the primary's port to the proxy's security group (and only to it). The
    // proxy logs in as whoever the client names, with that user's secret: the admin (the
    // migrations) and, on the catalog's shard, the control plane's login. It knows only the user
    // each secret's current version names, so every secret registered here must keep its user
    // name across rotations: single-user rotation, never alternating users.
    this.proxy = this.primary.addProxy('Proxy', {
      dbProxyName: `${identifier}-proxy`,
      secrets: [this.secret, ...(this.controlSecret ? [this.controlSecret] : [])],
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      securityGroups: [proxySecurityGroup],
      requireTLS: true,
      borrowTimeout: Duration.seconds(30),
    });

    if (!(props.deletionProtection ?? true)) {
      for (const instance of [this.primary, ...this.replicas]) {
        acknowledge(
          instance,
          'AwsSolutions-RDS10',
          'Deletion protection off by configuration (database.deletionProtection, the development default): CloudFormation could neither roll back a failed first create nor run `cdk destroy` past a protected instance; production keeps it on.',
        );
      }
    }
  }

  /**
   * Performance Insights where the instance class supports it. AWS documents no Performance
   * Insights (now Database Insights) for the micro and small burstable classes, and RDS
   * refuses an instance created with it on; those get it off, with a synthesis warning.
   */
  private performanceInsights(instanceType: ec2.InstanceType, key: kms.IKey): Pick<rds.DatabaseInstanceReadReplicaProps, 'enablePerformanceInsights' | 'performanceInsightEncryptionKey' | 'performanceInsightRetention'> {
    if (!supportsPerformanceInsights(instanceType.toString())) {
      Annotations.of(this).addWarningV2(
        '@ca-dms/data:noPerformanceInsights',
        `${this.shardId}: instance class db.${instanceType.toString()} does not support Performance Insights; it is off for this shard's instances of that class.`,
      );
      return { enablePerformanceInsights: false };
    }
    return { enablePerformanceInsights: true, performanceInsightEncryptionKey: key, performanceInsightRetention: rds.PerformanceInsightRetention.DEFAULT };
  }
}
