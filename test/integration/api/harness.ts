/**
 * The scaling API as it runs for real, for tests: real PostgreSQL (a catalog server and two
 * shards, each with a streaming replica), the real controller over the real AWS adapters whose
 * SDK clients aws-sdk-client-mock answers, the real sharding layer, and the Lambda handler served
 * over HTTP by the local adapter.
 */
import { ApplicationAutoScalingClient, DescribeScalableTargetsCommand, RegisterScalableTargetCommand } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, ECSClient, UpdateServiceCommand, type DescribeServicesCommandInput } from '@aws-sdk/client-ecs';
import { mockClient, type AwsClientStub } from 'aws-sdk-client-mock';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { AppAutoScalingRegistry } from '../../../functions/adapters/aws/app-autoscaling.js';
import { CloudWatchMetricsSource } from '../../../functions/adapters/aws/cloudwatch-metrics.js';
import { EcsScalingTarget } from '../../../functions/adapters/aws/ecs-target.js';
import { parseTopology } from '../../../functions/adapters/aws/topology.js';
import { startLocalServer, type LocalServer } from '../../../functions/adapters/http/local-server.js';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { HistoryReader } from '../../../functions/adapters/postgres/history-reader.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import type { InspectionFailure } from '../../../functions/adapters/postgres/shard-inspector.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { createScalingApiPort, shardingDepsOf } from '../../../functions/api/wiring.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { ScalingController } from '../../../functions/core/scaling/controller.js';
import { getPolicy } from '../../../functions/core/scaling/policies/index.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { migratedDataDir } from '../../support/migrated-data-dir.js';
import { startTestPostgres } from '../../support/postgres.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { ecsService, ManualClock, metricsFrom, RecordingLog, type MetricValues } from '../../support/scaling-fixtures.js';

export const SERVICES = ['backend-read', 'backend-write', 'frontend', 'worker'] as const;
const MIGRATIONS = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations');

export interface ApiHarness {
  readonly url: string;
  readonly catalogPool: pg.Pool;
  /** The catalog server's URL (a superuser login), for a test's own logins. */
  readonly catalogUrl: string;
  readonly clock: ManualClock;
  readonly controller: ScalingController;
  readonly port: ScalingApiPort;
  readonly handler: ReturnType<typeof createApiHandler>;
  readonly sharding: ShardingRuntime;
  readonly cluster: TestShardCluster;
  readonly mocks: { cloudwatch: AwsClientStub<CloudWatchClient>; ecs: AwsClientStub<ECSClient>; autoscaling: AwsClientStub<ApplicationAutoScalingClient> };
  /** Per-service metric values CloudWatch answers with (mutable). */
  readonly metricValues: MetricValues;
  /** What the inspector and the fence listing handed to the log, in order (the driver's errors the responses name by kind only). */
  readonly inspectionFailures: InspectionFailure[];
  /** Per-service ECS counts DescribeServices answers with (mutable). */
  readonly counts: Record<string, { running: number; desired: number; pending?: number }>;
  fetchJson(path: string, init?: RequestInit): Promise<{ status: number; headers: Headers; body: unknown }>;
  stop(): Promise<void>;
}

/** The catalog's migrations (`catalog`, then `sharding`), in the database `pool` reaches. */
async function migrateCatalog(pool: pg.Pool): Promise<void> {
  await runMigrations(pool, 'catalog', join(MIGRATIONS, 'catalog'));
  await runMigrations(pool, 'sharding', join(MIGRATIONS, 'sharding'));
}

export interface ApiHarnessOptions {
  /**
   * The sharding configuration the API is given, from the one pointing at the running servers: a
   * test may point a shard's login or a replica elsewhere (the servers themselves stay as started).
   */
  readonly shardingConfig?: (config: TestShardCluster['config']) => TestShardCluster['config'];
}

/** Starts everything; call `stop()` in afterAll. */
export async function startApiHarness(options: ApiHarnessOptions = {}): Promise<ApiHarness> {
  // The catalog server: a copy of a data directory the catalog's migrations ran in (made once per
  // run, test/support/migrated-data-dir.ts) when there is one; else they run in full below.
  const migrated = await migratedDataDir('api-catalog', {}, async (urlFor) => {
    const pool = new pg.Pool({ connectionString: urlFor('postgres'), max: 1 });
    try {
      await migrateCatalog(pool);
    } finally {
      await pool.end();
    }
  });
  const [catalogServer, cluster] = await Promise.all([
    startTestPostgres(migrated === undefined ? {} : { dataDirTemplate: migrated }),
    startShardCluster({ shards: 2, replicasPerShard: 1, schema: true }),
  ]);
  const catalogPool = new pg.Pool({ connectionString: catalogServer.url, max: 8 });
  catalogPool.on('error', () => undefined);
  // Up to date already in a migrated copy: the runner finds every migration applied, checksums unchanged.
  await migrateCatalog(catalogPool);

  const topology = parseTopology({
    services: Object.fromEntries(
      SERVICES.map((s, i) => [
        s,
        { cluster: 'ca-dms', ecsService: `ca-dms-${s}`, targetGroup: `targetgroup/${s}/${(i + 1).toString(16).padStart(16, '0')}`, loadBalancer: 'app/ca-dms/00000000000000aa' },
      ]),
    ),
  });
  const metricValues: MetricValues = Object.fromEntries(SERVICES.map((s) => [s, { cpu: 50, mem: 50, rt: 0.2, rpt: 100, err: 0, conn: 100 }]));
  const counts: ApiHarness['counts'] = Object.fromEntries(SERVICES.map((s) => [s, { running: 3, desired: 3 }]));
  const cloudwatch = mockClient(CloudWatchClient);
  const ecs = mockClient(ECSClient);
  const autoscaling = mockClient(ApplicationAutoScalingClient);
  cloudwatch.on(GetMetricDataCommand).callsFake(metricsFrom([...SERVICES], metricValues));
  ecs.on(DescribeServicesCommand).callsFake((input: DescribeServicesCommandInput) => ({
    services: (input.services ?? []).map((name) => {
      const service = name.replace(/^ca-dms-/, '');
      return ecsService(name, counts[service] ?? { running: 0, desired: 0 });
    }),
    failures: [],
  }));
  ecs.on(UpdateServiceCommand).callsFake((input: { service?: string; desiredCount?: number }) => {
    const service = (input.service ?? '').replace(/^ca-dms-/, '');
    const c = counts[service];
    if (c && input.desiredCount !== undefined) c.desired = input.desiredCount;
    return { service: {} };
  });
  autoscaling.on(DescribeScalableTargetsCommand).resolves({ ScalableTargets: [] });
  autoscaling.on(RegisterScalableTargetCommand).resolves({});

  const clock = new ManualClock(Date.parse('2026-11-27T10:00:00Z'));
  const defaults = parseScalingConfig({});
  const catalog = new CatalogStore(catalogPool, { defaults });
  const metrics = new CloudWatchMetricsSource({ client: new CloudWatchClient({ region: 'eu-west-1' }), topology });
  const target = new EcsScalingTarget({ client: new ECSClient({ region: 'eu-west-1' }), topology });
  const controller = new ScalingController({
    metrics,
    target,
    registry: new AppAutoScalingRegistry({ client: new ApplicationAutoScalingClient({ region: 'eu-west-1' }), topology }),
    catalog,
    clock,
    log: new RecordingLog(),
    policies: getPolicy,
    fallbackConfig: defaults,
  });
  const shardingConfig = parseShardingConfig({ ...(options.shardingConfig?.(cluster.config) ?? cluster.config), health_check_timeout_seconds: 2 });
  const inspectionFailures: InspectionFailure[] = [];
  const sharding = await createShardingRuntime({ config: shardingConfig, catalog: catalogPool, actor: 'api-test', onInspectionFailure: (f) => inspectionFailures.push(f) });
  const moves = new Set<Promise<unknown>>();
  const port = createScalingApiPort({
    catalog,
    history: new HistoryReader(async () => catalogPool),
    controller,
    target,
    metrics,
    clock,
    sharding: shardingDepsOf(sharding, (id) => {
      const run = sharding.mover.run(id).catch(() => undefined);
      moves.add(run);
      void run.finally(() => moves.delete(run));
    }),
  });
  const handler = createApiHandler(() => port);
  const server: LocalServer = await startLocalServer({ handler, port: 0 });

  return {
    url: server.url,
    catalogPool,
    catalogUrl: catalogServer.url,
    clock,
    controller,
    port,
    handler,
    sharding,
    cluster,
    mocks: { cloudwatch, ecs, autoscaling },
    metricValues,
    inspectionFailures,
    counts,
    async fetchJson(path, init) {
      const res = await fetch(`${server.url}${path}`, init);
      const text = await res.text();
      let body: unknown = text;
      try {
        body = text.length > 0 ? JSON.parse(text) : null;
      } catch {
        // Not JSON: the test sees the text.
      }
      return { status: res.status, headers: res.headers, body };
    },
    async stop() {
      await Promise.all([...moves]);
      await server.close();
      await sharding.close();
      await catalogPool.end();
      cloudwatch.restore();
      ecs.restore();
      autoscaling.restore();
      await Promise.all([cluster.stop(), catalogServer.stop()]);
    },
  };
}
