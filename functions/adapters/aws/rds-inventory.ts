/**
 * What RDS itself says about the shard instances: `DescribeDBInstances` (status, class, allocated
 * storage, endpoint, replica topology, tags) and the newest CloudWatch `FreeStorageSpace` and
 * `ReplicaLag` datapoints from one `GetMetricData` request (split at 500 queries). The shard
 * inspector merges these facts into its health report, and {@link RdsInventory.discoverShards}
 * builds the shard list from instances tagged with their shard id instead of configuring every
 * endpoint by hand.
 *
 * @example
 * ```ts
 * const inventory = new RdsInventory({ rds: new RDSClient({}), cloudwatch: new CloudWatchClient({}) });
 * const inspector = new ShardInspector(pools, { timeoutMs: 2000, cloud: inventory });
 * const shards = await inventory.discoverShards({
 *   urlFor: (e) => `postgresql://${user}:${encodeURIComponent(password)}@${e.address}:${e.port}/ca_dms`,
 * });
 * ```
 */
import { GetMetricDataCommand, type CloudWatchClient, type MetricDataQuery } from '@aws-sdk/client-cloudwatch';
import { DescribeDBInstancesCommand, type DBInstance, type RDSClient } from '@aws-sdk/client-rds';
import type { RdsFacts } from '../../core/sharding/health.js';

/** The tag that names the shard an instance (primary or replica) belongs to. */
export const SHARD_TAG = 'ca-dms:shard-id';
const GIB = 1024 ** 3;
const MAX_QUERIES_PER_REQUEST = 500;

/** RDS or CloudWatch could not be read. */
export class RdsInventoryError extends Error {
  override readonly name = 'RdsInventoryError';
}

export interface RdsEndpoint {
  readonly address: string;
  readonly port: number;
}

export interface RdsInstance {
  readonly identifier: string;
  readonly status: string;
  readonly instanceClass: string;
  readonly engine: string;
  readonly allocatedStorageBytes: number | null;
  readonly endpoint: RdsEndpoint | null;
  readonly role: 'primary' | 'replica';
  /** For a replica: the instance it replicates. */
  readonly sourceIdentifier: string | null;
  /** For a primary: its read replicas. */
  readonly replicaIdentifiers: readonly string[];
  readonly multiAz: boolean;
  readonly availabilityZone: string | null;
  /** The value of the {@link SHARD_TAG} tag, when present. */
  readonly shardId: string | null;
  /** Newest `FreeStorageSpace` datapoint (bytes), null when CloudWatch has none. */
  readonly freeStorageBytes: number | null;
  /** Newest `ReplicaLag` datapoint (seconds) of a replica, null for a primary or without data. */
  readonly replicaLagSeconds: number | null;
}

export interface RdsInventoryOptions {
  readonly rds: RDSClient;
  readonly cloudwatch: CloudWatchClient;
  /** The clock for the CloudWatch window. Default `() => new Date()`. */
  readonly now?: () => Date;
  /** CloudWatch period in seconds. Default 60. */
  readonly periodSeconds?: number;
  /** How far back to look for the newest datapoint. Default 10 minutes. */
  readonly lookbackSeconds?: number;
}

export interface DiscoveredShard {
  readonly shard_id: string;
  readonly database_url: string;
  readonly read_replicas: string[];
}

export class RdsInventory {
  readonly #rds: RDSClient;
  readonly #cloudwatch: CloudWatchClient;
  readonly #now: () => Date;
  readonly #period: number;
  readonly #lookback: number;

  constructor(options: RdsInventoryOptions) {
    this.#rds = options.rds;
    this.#cloudwatch = options.cloudwatch;
    this.#now = options.now ?? (() => new Date());
    this.#period = options.periodSeconds ?? 60;
    this.#lookback = options.lookbackSeconds ?? 600;
  }

  /** Every PostgreSQL instance of the account and region, with its newest storage and lag metrics. */
  async instances(): Promise<RdsInstance[]> {
    const raw = await this.#describe();
    const metrics = await this.#metrics(raw);
    return raw.map((db, i) => {
      const replicaOf = db.ReadReplicaSourceDBInstanceIdentifier ?? null;
      const address = db.Endpoint?.Address;
      const port = db.Endpoint?.Port;
      return {
        identifier: db.DBInstanceIdentifier ?? '',
        status: db.DBInstanceStatus ?? 'unknown',
        instanceClass: db.DBInstanceClass ?? 'unknown',
        engine: db.Engine ?? 'unknown',
        allocatedStorageBytes: db.AllocatedStorage === undefined ? null : db.AllocatedStorage * GIB,
        endpoint: address !== undefined && port !== undefined ? { address, port } : null,
        role: replicaOf === null ? 'primary' : 'replica',
        sourceIdentifier: replicaOf,
        replicaIdentifiers: db.ReadReplicaDBInstanceIdentifiers ?? [],
        multiAz: db.MultiAZ ?? false,
        availabilityZone: db.AvailabilityZone ?? null,
        shardId: db.TagList?.find((t) => t.Key === SHARD_TAG)?.Value ?? null,
        freeStorageBytes: metrics.get(`fs${i}`) ?? null,
        replicaLagSeconds: replicaOf === null ? null : (metrics.get(`rl${i}`) ?? null),
      };
    });
  }

  /** RDS facts per `host:port`, for the shard inspector's health report. */
  async facts(): Promise<ReadonlyMap<string, RdsFacts>> {
    const out = new Map<string, RdsFacts>();
    for (const db of await this.instances()) {
      if (!db.endpoint) continue;
      out.set(`${db.endpoint.address}:${db.endpoint.port}`, {
        status: db.status,
        freeStorageBytes: db.freeStorageBytes,
        allocatedStorageBytes: db.allocatedStorageBytes,
        replicaLagSeconds: db.replicaLagSeconds,
      });
    }
    return out;
  }

  /**
   * The shards as RDS knows them: each primary tagged {@link SHARD_TAG} with its read replicas
   * (in identifier order). `urlFor` adds the credentials and database; this module never sees a
   * password. Instances without an endpoint yet (being created) are left out; shards are sorted
   * by id.
   */
  async discoverShards(options: { readonly urlFor: (endpoint: RdsEndpoint) => string }): Promise<DiscoveredShard[]> {
    const all = await this.instances();
    const byId = new Map(all.map((d) => [d.identifier, d]));
    const shards: DiscoveredShard[] = [];
    for (const db of all) {
      if (db.role !== 'primary' || db.shardId === null || db.endpoint === null) continue;
      const replicas = [...db.replicaIdentifiers]
        .sort()
        .map((id) => byId.get(id))
        .filter((r): r is RdsInstance => r !== undefined && r.endpoint !== null);
      shards.push({
        shard_id: db.shardId,
        database_url: options.urlFor(db.endpoint),
        read_replicas: replicas.map((r) => options.urlFor(r.endpoint as RdsEndpoint)),
      });
    }
    return shards.sort((a, b) => (a.shard_id < b.shard_id ? -1 : a.shard_id > b.shard_id ? 1 : 0));
  }

  async #describe(): Promise<DBInstance[]> {
    const out: DBInstance[] = [];
    let marker: string | undefined;
    try {
      do {
        const page = await this.#rds.send(
          new DescribeDBInstancesCommand({ Filters: [{ Name: 'engine', Values: ['postgres'] }], MaxRecords: 100, ...(marker ? { Marker: marker } : {}) }),
        );
        out.push(...(page.DBInstances ?? []));
        marker = page.Marker;
      } while (marker);
    } catch (error) {
      throw new RdsInventoryError(`DescribeDBInstances failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    return out;
  }

  /** Newest datapoint per query id (`fs<i>` free storage, `rl<i>` replica lag). */
  async #metrics(instances: readonly DBInstance[]): Promise<Map<string, number>> {
    const queries: MetricDataQuery[] = [];
    instances.forEach((db, i) => {
      const dims = [{ Name: 'DBInstanceIdentifier', Value: db.DBInstanceIdentifier ?? '' }];
      queries.push({ Id: `fs${i}`, MetricStat: { Metric: { Namespace: 'AWS/RDS', MetricName: 'FreeStorageSpace', Dimensions: dims }, Period: this.#period, Stat: 'Minimum' }, ReturnData: true });
      if (db.ReadReplicaSourceDBInstanceIdentifier) {
        queries.push({ Id: `rl${i}`, MetricStat: { Metric: { Namespace: 'AWS/RDS', MetricName: 'ReplicaLag', Dimensions: dims }, Period: this.#period, Stat: 'Maximum' }, ReturnData: true });
      }
    });
    const values = new Map<string, number>();
    if (queries.length === 0) return values;
    // Whole periods ending at the last complete one (EndTime is exclusive): the period still
    // being filled would report a partial minimum or maximum.
    const periodMs = this.#period * 1000;
    const end = new Date(Math.floor(this.#now().getTime() / periodMs) * periodMs);
    const start = new Date(end.getTime() - Math.ceil(this.#lookback / this.#period) * periodMs);
    try {
      for (let i = 0; i < queries.length; i += MAX_QUERIES_PER_REQUEST) {
        const batch = queries.slice(i, i + MAX_QUERIES_PER_REQUEST);
        let token: string | undefined;
        do {
          const page = await this.#cloudwatch.send(
            new GetMetricDataCommand({ MetricDataQueries: batch, StartTime: start, EndTime: end, ScanBy: 'TimestampDescending', ...(token ? { NextToken: token } : {}) }),
          );
          for (const r of page.MetricDataResults ?? []) {
            const newest = r.Values?.[0];
            // With TimestampDescending the first value is the newest; later pages hold older ones.
            if (r.Id !== undefined && newest !== undefined && !values.has(r.Id)) values.set(r.Id, newest);
          }
          token = page.NextToken;
        } while (token);
      }
    } catch (error) {
      throw new RdsInventoryError(`GetMetricData failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    return values;
  }
}
