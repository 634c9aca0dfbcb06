/**
 * Benchmark: one evaluation of 10 services (6 metrics each) by the scaling controller, with the
 * AWS SDK v3 clients answered by aws-sdk-client-mock (no network) and the catalog in a real
 * embedded PostgreSQL. Prints the CPU time of this process per evaluation (the PostgreSQL
 * server's CPU is another process and not counted) and the AWS calls one evaluation makes,
 * beside the naive approach that asks CloudWatch once per metric per service and ECS once per
 * service.
 *
 * Run: npm run bench:controller
 */
import { ApplicationAutoScalingClient, DescribeScalableTargetsCommand, RegisterScalableTargetCommand } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient, GetMetricDataCommand, type GetMetricDataCommandInput } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, ECSClient, UpdateServiceCommand, type DescribeServicesCommandInput } from '@aws-sdk/client-ecs';
import { mockClient } from 'aws-sdk-client-mock';
import pg from 'pg';
import { AppAutoScalingRegistry } from '../functions/adapters/aws/app-autoscaling.js';
import { CloudWatchMetricsSource, planQueries } from '../functions/adapters/aws/cloudwatch-metrics.js';
import { EcsScalingTarget } from '../functions/adapters/aws/ecs-target.js';
import type { Topology } from '../functions/adapters/aws/topology.js';
import { CatalogStore } from '../functions/adapters/postgres/catalog-store.js';
import { parseScalingConfig } from '../functions/core/scaling/config.js';
import { ScalingController } from '../functions/core/scaling/controller.js';
import { getPolicy } from '../functions/core/scaling/policies/index.js';
import type { MetricsReading, MetricsSource, RawMetrics, ScalingTarget, TasksReading } from '../functions/core/scaling/ports.js';
import { migrateAll } from '../functions/handlers/shared/migrations.js';
import { startTestPostgres } from '../test/support/postgres.js';
import { ecsService, metricAnswer, serviceNames, topologyOf } from '../test/support/scaling-fixtures.js';

const SERVICES = 10;
const WARMUP = 20;
const RUNS = 200;

const cw = mockClient(CloudWatchClient);
const ecs = mockClient(ECSClient);
const aas = mockClient(ApplicationAutoScalingClient);
const names = serviceNames(SERVICES);
const topology = topologyOf(SERVICES);

// Quiet metrics (cpu and memory between the thresholds) so every evaluation does the same work.
cw.on(GetMetricDataCommand).callsFake((input: GetMetricDataCommandInput) => ({ MetricDataResults: metricAnswer(input, (id) => (id.endsWith('_rt') ? 0.2 : 50)) }));
ecs.on(DescribeServicesCommand).callsFake((input: DescribeServicesCommandInput) => ({ services: (input.services ?? []).map((s) => ecsService(s, { running: 3, desired: 3 })) }));
ecs.on(UpdateServiceCommand).resolves({});
aas.on(DescribeScalableTargetsCommand).callsFake((input: { ResourceIds?: string[] }) => ({
  ScalableTargets: (input.ResourceIds ?? []).map((id) => ({
    ServiceNamespace: 'ecs',
    ResourceId: id,
    ScalableDimension: 'ecs:service:DesiredCount',
    MinCapacity: 2,
    MaxCapacity: 10,
    RoleARN: 'arn:aws:iam::123456789012:role/r',
    CreationTime: new Date(0),
  })),
}));
aas.on(RegisterScalableTargetCommand).resolves({});

/** The naive metrics source: one GetMetricData request per metric per service. */
class NaiveMetricsSource implements MetricsSource {
  constructor(
    private readonly client: CloudWatchClient,
    private readonly topo: Topology,
  ) {}
  async read(services: readonly string[], now: number): Promise<ReadonlyMap<string, MetricsReading>> {
    const end = new Date(Math.floor(now / 60_000) * 60_000);
    const start = new Date(end.getTime() - 300_000);
    const out = new Map<string, MetricsReading>();
    for (const [i, service] of services.entries()) {
      const metrics: Record<string, number> = {};
      for (const q of planQueries(this.topo, service, i)) {
        const page = await this.client.send(new GetMetricDataCommand({ MetricDataQueries: [q.query], StartTime: start, EndTime: end, ScanBy: 'TimestampDescending' }));
        const v = page.MetricDataResults?.[0]?.Values?.[0];
        if (v !== undefined) metrics[q.field] = v * q.scale;
      }
      out.set(service, { ok: true, metrics: metrics as RawMetrics });
    }
    return out;
  }
}

/** The naive target: one DescribeServices call per service. */
class NaiveEcsTarget implements ScalingTarget {
  private readonly inner: EcsScalingTarget;
  constructor(client: ECSClient, topo: Topology) {
    this.inner = new EcsScalingTarget({ client, topology: topo });
  }
  async describe(services: readonly string[]): Promise<ReadonlyMap<string, TasksReading>> {
    const out = new Map<string, TasksReading>();
    for (const s of services) for (const [k, v] of await this.inner.describe([s])) out.set(k, v);
    return out;
  }
  setDesired(service: string, desired: number): Promise<void> {
    return this.inner.setDesired(service, desired);
  }
}

function callCount(): number {
  return cw.calls().length + ecs.calls().length + aas.calls().length;
}

async function measure(label: string, controller: ScalingController): Promise<{ label: string; cpuMs: number; wallMs: number; calls: number; cwCalls: number }> {
  for (let i = 0; i < WARMUP; i++) await controller.evaluate({ trigger: 'schedule' });
  cw.resetHistory();
  ecs.resetHistory();
  aas.resetHistory();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < RUNS; i++) await controller.evaluate({ trigger: 'schedule' });
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const calls = callCount() / RUNS;
  return { label, cpuMs: (cpu.user + cpu.system) / 1000 / RUNS, wallMs: wall / RUNS, calls, cwCalls: cw.calls().length / RUNS };
}

const server = await startTestPostgres();
const pool = new pg.Pool({ connectionString: server.url, max: 1 });
try {
  await migrateAll({ catalog: pool, shards: [] });
  const config = parseScalingConfig({ policy: 'threshold', services: Object.fromEntries(names.map((n) => [n, {}])) });
  await new CatalogStore(pool, { defaults: config }).putConfig({ policy: 'threshold', services: Object.fromEntries(names.map((n) => [n, {}])) }, { actor: 'bench' });
  const common = {
    registry: new AppAutoScalingRegistry({ client: new ApplicationAutoScalingClient({ region: 'eu-west-1' }), topology }),
    catalog: new CatalogStore(pool, { defaults: config }),
    clock: { now: () => Date.now() },
    log: { write: () => undefined },
    policies: getPolicy,
    fallbackConfig: config,
  };
  const cwClient = new CloudWatchClient({ region: 'eu-west-1' });
  const ecsClient = new ECSClient({ region: 'eu-west-1' });
  const batched = new ScalingController({
    ...common,
    metrics: new CloudWatchMetricsSource({ client: cwClient, topology }),
    target: new EcsScalingTarget({ client: ecsClient, topology }),
  });
  const naive = new ScalingController({ ...common, metrics: new NaiveMetricsSource(cwClient, topology), target: new NaiveEcsTarget(ecsClient, topology) });

  const rows = [await measure('controller (batched)', batched), await measure('naive (per metric, per service)', naive)];
  const [ours, theirs] = rows;
  console.log(`One evaluation of ${SERVICES} services x 6 metrics; AWS answered by aws-sdk-client-mock; catalog in embedded PostgreSQL`);
  console.log(`${RUNS} evaluations after ${WARMUP} warm-up; CPU = this process (user + system), PostgreSQL server excluded\n`);
  console.log(`${'approach'.padEnd(34)}${'AWS calls'.padStart(10)}${'CloudWatch'.padStart(12)}${'CPU ms'.padStart(9)}${'wall ms'.padStart(9)}`);
  for (const r of rows) {
    console.log(`${r.label.padEnd(34)}${r.calls.toFixed(0).padStart(10)}${r.cwCalls.toFixed(0).padStart(12)}${r.cpuMs.toFixed(2).padStart(9)}${r.wallMs.toFixed(2).padStart(9)}`);
  }
  if (ours && theirs) {
    console.log(`\nbatched: ${(theirs.calls / ours.calls).toFixed(1)}x fewer AWS calls (${ours.cwCalls.toFixed(0)} GetMetricData instead of ${theirs.cwCalls.toFixed(0)}); CPU per evaluation ${ours.cpuMs.toFixed(2)} ms vs ${theirs.cpuMs.toFixed(2)} ms naive`);
  }
} finally {
  await pool.end();
  await server.stop();
}
