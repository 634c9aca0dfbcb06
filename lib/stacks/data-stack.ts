import { Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import type * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import type { Construct } from 'constructs';
import type { DeploymentConfig } from '../config/deployment-config.js';
import { ShardDatabase } from '../data/shard-database.js';
import { WorkQueue } from '../data/work-queue.js';
import type { Network } from '../network/network.js';
import { SUBNETS } from '../network/network.js';

/** Props of {@link DataStack}. */
export interface DataStackProps extends StackProps {
  readonly config: DeploymentConfig;
  readonly network: Network;
}

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
  }
}
