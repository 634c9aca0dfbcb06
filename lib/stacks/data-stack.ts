import { Annotations, CfnResource, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import type * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import type { Construct, IConstruct } from 'constructs';
import { DeploymentConfigError, type DeploymentConfig } from '../config/deployment-config.js';
import { ShardDatabase } from '../data/shard-database.js';
import { WorkQueue } from '../data/work-queue.js';
import type { Network } from '../network/network.js';
import { SUBNETS } from '../network/network.js';

/** Props of {@link DataStack}. */
export interface DataStackProps extends StackProps {
  readonly config: DeploymentConfig;
  readonly network: Network;
}

/**
 * CloudFormation's resources per stack: a hard limit, CDK refuses more at synthesis
 * (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html).
 */
export const MAX_STACK_RESOURCES = 500;

/**
 * RDS's default quota of DB instances per region, shared by every environment in the account
 * and adjustable in Service Quotas (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_Limits.html).
 */
export const DEFAULT_DB_INSTANCE_QUOTA = 40;

/** `17` of `17.6` (and of `17`). */
function majorVersion(version: string): string {
  return version.split('.')[0] as string;
}

/** The shard id of shard `index` (0-based): `shard-001`, `shard-002`, ... */
export function shardId(index: number): string {
  return `shard-${String(index + 1).padStart(3, '0')}`;
}

/**
 * The stateful stack: every shard's PostgreSQL instances, proxies and secrets, and the worker
 * service's job queue (jobs not yet done are state too). Termination protection is on and every
 * resource states what happens when it is removed.
 */
export class DataStack extends Stack {
  readonly shards: readonly ShardDatabase[];
  readonly workerQueue: WorkQueue;
  readonly key: kms.Key;
  private readonly database: DeploymentConfig['database'];

  constructor(scope: Construct, id: string, props: DataStackProps) {
    super(scope, id, { ...props, terminationProtection: true });
    const { config, network } = props;
    const db = config.database;
    const prefix = `${config.name}-${config.environment}`;

    this.key = new kms.Key(this, 'DataKey', {
      description: `${prefix}: RDS storage, backups and Performance Insights`,
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });

    const engine = rds.DatabaseInstanceEngine.postgres({
      version: rds.PostgresEngineVersion.of(db.postgresVersion, majorVersion(db.postgresVersion)),
    });
    const parameterGroup = new rds.ParameterGroup(this, 'Parameters', {
      engine,
      description: `${prefix}: pg_stat_statements, TLS only, slow-query log`,
      parameters: {
        shared_preload_libraries: 'pg_stat_statements',
        'pg_stat_statements.track': 'top',
        'rds.force_ssl': '1',
        log_min_duration_statement: '1000',
      },
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    });

    this.shards = Array.from({ length: db.shards }, (_, i) => {
      const id = shardId(i);
      return new ShardDatabase(this, `Shard${String(i + 1).padStart(3, '0')}`, {
        vpc: network.vpc,
        subnets: { subnetGroupName: SUBNETS.data },
        rotationSubnets: { subnetGroupName: SUBNETS.compute },
        shardId: id,
        namePrefix: prefix,
        engine,
        parameterGroup,
        encryptionKey: this.key,
        instanceType: new ec2.InstanceType(db.instanceClass),
        replicaInstanceType: new ec2.InstanceType(db.replicaInstanceClass ?? db.instanceClass),
        replicas: db.replicasPerShard,
        multiAz: db.multiAz ?? config.production,
        autoMinorVersionUpgrade: majorVersion(db.postgresVersion) === db.postgresVersion,
        availabilityZones: network.vpc.availabilityZones,
        databaseName: db.databaseName,
        allocatedStorageGiB: db.allocatedStorageGiB,
        maxAllocatedStorageGiB: db.maxAllocatedStorageGiB,
        backupRetention: Duration.days(db.backupRetentionDays),
        secretRotation: Duration.days(db.secretRotationDays),
        clientSecurityGroups: [network.servicesSecurityGroup, network.functionsSecurityGroup],
        proxyClientSecurityGroups: [network.functionsSecurityGroup],
        // Kept when it leaves the stack in production, except after the failed create that made
        // it: a rolled-back first deploy must leave no instance whose name the retry would reuse.
        removalPolicy: config.production ? RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE : RemovalPolicy.SNAPSHOT,
        deletionProtection: db.deletionProtection ?? config.production,
        logRetention: config.logRetentionDays as logs.RetentionDays,
        // Development environments are torn down and redeployed: their retained log groups,
        // named after the instances, would collide with the next deploy's.
        logRemovalPolicy: config.production ? RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE : RemovalPolicy.DESTROY,
        // The scaling catalog lives in the first shard's database (ControlPlaneStack).
        hostsCatalog: i === 0,
      });
    });

    this.workerQueue = new WorkQueue(this, 'WorkerQueue', {
      visibilityTimeout: Duration.seconds(config.workerQueue.visibilityTimeoutSeconds),
      maxReceiveCount: config.workerQueue.maxReceiveCount,
      // A torn-down development environment's pending jobs are worth nothing; production keeps them.
      removalPolicy: config.production ? RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE : RemovalPolicy.DESTROY,
    });
    this.database = db;
  }

  /**
   * The configuration's shards must fit one stack: past {@link MAX_STACK_RESOURCES} the error
   * names `database.shards` and how many fit, counted from the shards as built (so it follows
   * whatever a shard is made of). Call it once every stack of the stage is built: the other
   * stacks add rules to the shards' security groups, which live here. Past the default DB
   * instance quota it warns: that quota can be raised, but a new account meets it half-way
   * through the stack creation.
   */
  checkCapacity(): void {
    const { shards, replicasPerShard: replicas } = this.database;
    const resources = (scope: IConstruct) => scope.node.findAll().filter(CfnResource.isCfnResource).length;
    const inShards = this.shards.map(resources);
    // One resource more at synthesis: the AWS::CDK::Metadata CDK adds to every stack.
    const total = resources(this) + 1;
    if (total > MAX_STACK_RESOURCES) {
      const perShard = Math.min(...inShards);
      const fixed = total - inShards.reduce((a, b) => a + b, 0) + (Math.max(...inShards) - perShard);
      const fitting = Math.floor((MAX_STACK_RESOURCES - fixed) / perShard);
      throw new DeploymentConfigError([
        {
          path: 'database.shards',
          message: `${shards} shards of ${1 + replicas} instances (database.replicasPerShard ${replicas}) make ${total} resources in the data stack, ${perShard} a shard, and CloudFormation takes at most ${MAX_STACK_RESOURCES} a stack: at most ${fitting} shards with this many replicas`,
        },
      ]);
    }
    const instances = shards * (1 + replicas);
    if (instances > DEFAULT_DB_INSTANCE_QUOTA) {
      Annotations.of(this).addWarningV2(
        '@ca-dms/data:dbInstanceQuota',
        `${instances} DB instances (database.shards ${shards} x (1 primary + ${replicas} replicas)): RDS allows ${DEFAULT_DB_INSTANCE_QUOTA} a region by default, for every environment of the account together. Raise "DB instances" in Service Quotas before the first deploy, or the data stack fails half-way and rolls back; past 50, raise "DB subnet groups" too (each instance has its own).`,
      );
    }
  }
}
