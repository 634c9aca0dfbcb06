/**
 * Benchmark: one evaluation of 10 services (6 metrics each) by the scaling controller, with the
 * catalog in a real embedded PostgreSQL and AWS answered without network in two ways:
 * aws-sdk-client-mock (replaces `send`, so the SDK's own work is skipped) and an in-process
 * HTTP handler behind the real SDK stack (serialisation, SigV4 signing, retries middleware and
 * response parsing all run; only the socket is missing). Prints the CPU time of this process
 * per evaluation (the PostgreSQL server's CPU is another process and not counted) and the AWS
 * calls one evaluation makes, beside the naive approach that asks CloudWatch once per metric
 * per service and ECS once per service.
 *
 * Run: npm run bench:controller
 */
import { ApplicationAutoScalingClient, DescribeScalableTargetsCommand, RegisterScalableTargetCommand } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient, GetMetricDataCommand, type GetMetricDataCommandInput, type MetricDataQuery } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, ECSClient, UpdateServiceCommand, type DescribeServicesCommandInput } from '@aws-sdk/client-ecs';
import { mockClient } from 'aws-sdk-client-mock';
import { Readable } from 'node:stream';
import pg from 'pg';
import { AppAutoScalingRegistry } from '../functions/adapters/aws/app-autoscaling.js';
import { apportionConnections, CloudWatchMetricsSource, planLoadBalancerQueries, planQueries } from '../functions/adapters/aws/cloudwatch-metrics.js';
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
    const sharing = new Map<string, number>();
    for (const t of Object.values(this.topo.services)) if (t.loadBalancer !== undefined) sharing.set(t.loadBalancer, (sharing.get(t.loadBalancer) ?? 0) + 1);
    const series = async (query: MetricDataQuery): Promise<Map<number, number>> => {
      const page = await this.client.send(new GetMetricDataCommand({ MetricDataQueries: [query], StartTime: start, EndTime: end, ScanBy: 'TimestampDescending' }));
      const r = page.MetricDataResults?.[0];
      return new Map((r?.Values ?? []).map((v, k) => [r?.Timestamps?.[k]?.getTime() ?? 0, v]));
    };
    for (const [i, service] of services.entries()) {
      const metrics: Record<string, number> = {};
      let tgRequests: Map<number, number> | undefined;
      for (const q of planQueries(this.topo, service, i)) {
        const points = await series(q.query);
        if (q.field === 'targetGroupRequests') tgRequests = points;
        else if (points.size > 0) metrics[q.field] = (points.get(Math.max(...points.keys())) as number) * q.scale;
      }
      const lb = this.topo.services[service]?.loadBalancer;
      if (lb !== undefined) {
        const q = planLoadBalancerQueries(lb, 0, 60);
        const connections = apportionConnections(await series(q.connections), await series(q.requests), tgRequests, (sharing.get(lb) ?? 0) <= 1);
        if (connections !== undefined) metrics['activeConnections'] = connections;
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

/** Answers the AWS JSON protocols in process, from the request body, like the mocks above. */
function inProcessHandler(counter: { calls: number; cw: number }) {
  const json = (body: unknown) => ({
    response: { statusCode: 200, headers: { 'content-type': 'application/x-amz-json-1.1' }, body: Readable.from([Buffer.from(JSON.stringify(body))]) },
  });
  return {
    handle: async (request: { headers: Record<string, string>; body?: unknown }) => {
      counter.calls += 1;
      const target = request.headers['x-amz-target'] ?? '';
      const raw = typeof request.body === 'string' ? request.body : request.body instanceof Uint8Array ? new TextDecoder().decode(request.body) : '{}';
      const input = JSON.parse(raw) as Record<string, unknown>;
      if (target.endsWith('.GetMetricData')) {
        counter.cw += 1;
        const queries = (input['MetricDataQueries'] as Array<{ Id: string }> | undefined) ?? [];
        const at = Math.floor(Date.now() / 60_000) * 60 - 60;
        return json({ MetricDataResults: queries.map((q) => ({ Id: q.Id, StatusCode: 'Complete', Timestamps: [at], Values: [q.Id.endsWith('_rt') ? 0.2 : 50] })) });
      }
      if (target.endsWith('.DescribeServices')) {
        const services = (input['services'] as string[] | undefined) ?? [];
        return json({ services: services.map((s) => ({ ...ecsService(s, { running: 3, desired: 3 }) })), failures: [] });
      }
      if (target.endsWith('.DescribeScalableTargets')) {
        const ids = (input['ResourceIds'] as string[] | undefined) ?? [];
        return json({ ScalableTargets: ids.map((id) => ({ ServiceNamespace: 'ecs', ResourceId: id, ScalableDimension: 'ecs:service:DesiredCount', MinCapacity: 2, MaxCapacity: 10, RoleARN: 'arn:aws:iam::123456789012:role/r', CreationTime: 0 })) });
      }
      return json({});
    },
  };
}

function callCount(): number {
  return cw.calls().length + ecs.calls().length + aas.calls().length;
}

interface Row {
  label: string;
  cpuMs: number;
  wallMs: number;
  calls: number;
  cwCalls: number;
}

async function measure(label: string, controller: ScalingController, counted: () => { calls: number; cw: number }): Promise<Row> {
  for (let i = 0; i < WARMUP; i++) await controller.evaluate({ trigger: 'schedule' });
  const before = counted();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < RUNS; i++) await controller.evaluate({ trigger: 'schedule' });
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const after = counted();
  return { label, cpuMs: (cpu.user + cpu.system) / 1000 / RUNS, wallMs: wall / RUNS, calls: (after.calls - before.calls) / RUNS, cwCalls: (after.cw - before.cw) / RUNS };
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
  const build = (cwClient: CloudWatchClient, ecsClient: ECSClient, aasClient: ApplicationAutoScalingClient, naive: boolean): ScalingController =>
    new ScalingController({
      ...common,
      registry: new AppAutoScalingRegistry({ client: aasClient, topology }),
      metrics: naive ? new NaiveMetricsSource(cwClient, topology) : new CloudWatchMetricsSource({ client: cwClient, topology }),
      target: naive ? new NaiveEcsTarget(ecsClient, topology) : new EcsScalingTarget({ client: ecsClient, topology }),
    });
  const mocked = (): { calls: number; cw: number } => ({ calls: callCount(), cw: cw.calls().length });
  const rows: Row[] = [];
  const mockedClients = [new CloudWatchClient({ region: 'eu-west-1' }), new ECSClient({ region: 'eu-west-1' }), new ApplicationAutoScalingClient({ region: 'eu-west-1' })] as const;
  rows.push(await measure('batched, aws-sdk-client-mock', build(...mockedClients, false), mocked));
  rows.push(await measure('naive, aws-sdk-client-mock', build(...mockedClients, true), mocked));

  cw.restore();
  ecs.restore();
  aas.restore();
  const counter = { calls: 0, cw: 0 };
  const sdk = { region: 'eu-west-1', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'bench' }, requestHandler: inProcessHandler(counter) };
  const fullClients = [new CloudWatchClient(sdk), new ECSClient(sdk), new ApplicationAutoScalingClient(sdk)] as const;
  rows.push(await measure('batched, full SDK stack', build(...fullClients, false), () => ({ ...counter })));
  rows.push(await measure('naive, full SDK stack', build(...fullClients, true), () => ({ ...counter })));

  console.log(`One evaluation of ${SERVICES} services x 6 metrics; catalog in embedded PostgreSQL; no network to AWS`);
  console.log(`${RUNS} evaluations after ${WARMUP} warm-up each; CPU = this process (user + system), PostgreSQL server excluded\n`);
  console.log(`${'approach'.padEnd(32)}${'AWS calls'.padStart(10)}${'CloudWatch'.padStart(12)}${'CPU ms'.padStart(9)}${'wall ms'.padStart(9)}`);
  for (const r of rows) {
    console.log(`${r.label.padEnd(32)}${r.calls.toFixed(0).padStart(10)}${r.cwCalls.toFixed(0).padStart(12)}${r.cpuMs.toFixed(2).padStart(9)}${r.wallMs.toFixed(2).padStart(9)}`);
  }
  const [mb, mn, fb, fn] = rows;
  if (mb && mn && fb && fn) {
    console.log(`\nbatched makes ${(mn.calls / mb.calls).toFixed(1)}x fewer AWS calls (${mb.cwCalls.toFixed(0)} GetMetricData instead of ${mn.cwCalls.toFixed(0)})`);
    console.log(`CPU per evaluation, full SDK stack: ${fb.cpuMs.toFixed(2)} ms batched vs ${fn.cpuMs.toFixed(2)} ms naive (${(fn.cpuMs / fb.cpuMs).toFixed(1)}x)`);
    console.log(`CPU per evaluation, client mock:    ${mb.cpuMs.toFixed(2)} ms batched vs ${mn.cpuMs.toFixed(2)} ms naive (the mock skips the SDK's per-call work)`);
  }
} finally {
  await pool.end();
  await server.stop();
}
