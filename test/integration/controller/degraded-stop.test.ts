/**
 * A stop answered by the API while the catalog was reachable, then the catalog gone: the
 * evaluation without the catalog (degraded: scale-out only) must not scale a stopped service
 * out. The stop lives in the catalog; the API also marks the ECS services with a tag
 * (`ca-dms-scaling:stopped`, or `ca-dms-scaling:stopped-all` for the global switch) that
 * DescribeServices returns, so a degraded evaluation sees it. Real PostgreSQL catalog behind a
 * proxy the test cuts, the real API port and controller, ECS and CloudWatch through
 * aws-sdk-client-mock (ECS keeps the tags it is given, as ECS does).
 */
import { CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import {
  DescribeServicesCommand,
  ECSClient,
  TagResourceCommand,
  UntagResourceCommand,
  UpdateServiceCommand,
  type DescribeServicesCommandInput,
  type TagResourceCommandInput,
  type UntagResourceCommandInput,
} from '@aws-sdk/client-ecs';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CloudWatchMetricsSource } from '../../../functions/adapters/aws/cloudwatch-metrics.js';
import { EcsScalingTarget } from '../../../functions/adapters/aws/ecs-target.js';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { HistoryReader } from '../../../functions/adapters/postgres/history-reader.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { UnavailableError } from '../../../functions/api/service.js';
import { createScalingApiPort } from '../../../functions/api/wiring.js';
import { SimulatedFleet } from '../../../functions/adapters/sim/fleet.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import type { ScalingTarget } from '../../../functions/core/scaling/ports.js';
import { freshMigratedCatalog } from '../../support/migrated-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, ecsService, ManualClock, metricsFrom, mockControllerAws, serviceNames, topologyOf } from '../../support/scaling-fixtures.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';

const aws = mockControllerAws();
const { cw, ecs } = aws;

/** The tags a stop leaves on the services (written out: the README documents them for operators). */
const STOPPED_TAG = 'ca-dms-scaling:stopped';
const STOPPED_ALL_TAG = 'ca-dms-scaling:stopped-all';

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const topology = topologyOf(2);
const NAMES = serviceNames(2);
const CONFIG = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {}, 'svc-1': {} } };

let server: TestPostgres;
let proxy: TcpProxy;
const pools: pg.Pool[] = [];
let dbCount = 0;

beforeAll(async () => {
  server = await startTestPostgres();
  proxy = await startTcpProxy(server.port);
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await proxy.close();
  await server.stop();
});
afterEach(async () => {
  await proxy.restore().catch(() => undefined);
});

/** ECS's tags, per service ARN, as TagResource and UntagResource leave them. */
let tags: Map<string, Map<string, string>>;

/** ECS answering DescribeServices (with the tags when asked for them) and keeping tags. */
function givenEcs(counts: { running: number; desired: number }): void {
  tags = new Map();
  ecs.on(DescribeServicesCommand).callsFake((input: DescribeServicesCommandInput) => ({
    services: (input.services ?? []).map((name) => {
      const service = ecsService(name, counts);
      const own = tags.get(service.serviceArn ?? '');
      return input.include?.includes('TAGS') === true && own !== undefined ? { ...service, tags: [...own].map(([key, value]) => ({ key, value })) } : service;
    }),
  }));
  ecs.on(TagResourceCommand).callsFake((input: TagResourceCommandInput) => {
    const own = tags.get(input.resourceArn ?? '') ?? new Map<string, string>();
    for (const t of input.tags ?? []) own.set(t.key ?? '', t.value ?? '');
    tags.set(input.resourceArn ?? '', own);
    return {};
  });
  ecs.on(UntagResourceCommand).callsFake((input: UntagResourceCommandInput) => {
    for (const key of input.tagKeys ?? []) tags.get(input.resourceArn ?? '')?.delete(key);
    return {};
  });
}

function givenCpu(cpu: number): void {
  cw.on(GetMetricDataCommand).callsFake(metricsFrom(NAMES, { 'svc-0': { cpu, mem: 50 }, 'svc-1': { cpu, mem: 50 } }));
}

/** A fresh, migrated catalog reached through the proxy, and the API port over it. */
async function setup(options: { readonly statementTimeoutMs?: number; readonly target?: ScalingTarget } = {}): Promise<{ store: CatalogStore; api: ScalingApiPort }> {
  // A copy of a catalog migrated once for the file (test/support/migrated-catalog.ts).
  const name = await freshMigratedCatalog(server, `degraded_stop_${++dbCount}`);
  const pool = new pg.Pool({
    connectionString: `postgresql://postgres:postgres@127.0.0.1:${proxy.port}/${name}`,
    max: 2,
    connectionTimeoutMillis: 1000,
    // The catalog login's statement_timeout (10 s), scaled down where a test makes the wait for an evaluation run out.
    ...(options.statementTimeoutMs === undefined ? {} : { statement_timeout: options.statementTimeoutMs }),
  });
  pool.on('error', () => undefined);
  pools.push(pool);
  const store = new CatalogStore(pool, { defaults: parseScalingConfig(CONFIG) });
  const clock = new ManualClock(T0);
  const api = createScalingApiPort({
    catalog: store,
    history: new HistoryReader(async () => pool),
    controller: controllerFor({ topology, catalog: store, fallback: CONFIG, clock }),
    target: options.target ?? new EcsScalingTarget({ client: new ECSClient({ region: 'eu-west-1' }), topology }),
    metrics: new CloudWatchMetricsSource({ client: new CloudWatchClient({ region: 'eu-west-1' }), topology }),
    clock,
  });
  return { store, api };
}

function updates(): Array<[string | undefined, number | undefined]> {
  return ecs.commandCalls(UpdateServiceCommand).map((c) => [c.args[0].input.service, c.args[0].input.desiredCount]);
}

describe('an evaluation without the catalog after a stop answered by the API', () => {
  it('does not scale out a service stopped just before the catalog went down (warm container)', async () => {
    const { store, api } = await setup();
    givenEcs({ running: 3, desired: 3 });
    givenCpu(50);
    const clock = new ManualClock(T0);
    const controller = controllerFor({ topology, catalog: store, fallback: CONFIG, clock });
    await controller.evaluate({ trigger: 'schedule' });

    await api.setEnabled(false, { service: 'svc-0', reason: 'incident 42' }, 'alice');
    await proxy.cut();
    clock.advance(60_000);
    givenCpu(95);
    const result = await controller.evaluate({ trigger: 'schedule' });

    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([['ca-dms-svc-1', 4]]);
    const svc0 = result.decisions.find((d) => d.service === 'svc-0');
    expect(svc0).toMatchObject({ outcome: 'blocked', from: 3, degraded: true });
    expect(svc0?.blocked.find((b) => b.kind === 'disabled')?.message).toMatch(/^scaling of svc-0 was stopped by alice at 20\d\d-.*: the catalog is unreachable, nothing is changed$/);
  });

  it('does not scale out any service after a global stop, even in a container that never read the catalog', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    await api.setEnabled(false, {}, 'bob');
    await proxy.cut();
    givenCpu(95);

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([]);
    expect(result.decisions.map((d) => [d.service, d.outcome])).toEqual([
      ['svc-0', 'blocked'],
      ['svc-1', 'blocked'],
    ]);
    expect(result.decisions[0]?.blocked.find((b) => b.kind === 'disabled')?.message).toMatch(/^scaling was stopped by bob at /);
  });

  it('scales out again after a start, which clears the mark', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    await api.setEnabled(false, {}, 'bob');
    await api.setEnabled(false, { service: 'svc-1' }, 'bob');
    const marked = [...tags].sort(([a], [b]) => a.localeCompare(b)).map(([, t]) => [...t.keys()].sort());
    await api.setEnabled(true, {}, 'carol');
    await api.setEnabled(true, { service: 'svc-1' }, 'carol');
    await proxy.cut();
    givenCpu(95);

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(marked).toEqual([[STOPPED_ALL_TAG], [STOPPED_TAG, STOPPED_ALL_TAG]]);
    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([
      ['ca-dms-svc-0', 4],
      ['ca-dms-svc-1', 4],
    ]);
    expect([...tags.values()].every((t) => !t.has(STOPPED_TAG) && !t.has(STOPPED_ALL_TAG))).toBe(true);
  });

  it('follows the catalog while it is reachable, and clears a mark the catalog no longer holds', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    await api.setEnabled(false, { service: 'svc-0' }, 'alice');
    await store.setSwitch({ scope: 'svc-0', enabled: true, actor: 'dba' });
    givenCpu(95);

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(result.degraded).toBe(false);
    expect(updates()).toEqual([
      ['ca-dms-svc-0', 4],
      ['ca-dms-svc-1', 4],
    ]);
    expect([...tags.values()].some((t) => t.has(STOPPED_TAG))).toBe(false);
  });

  it('answers a stop ECS refused to mark with a 503 saying the stop is stored but not seen without the catalog', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    ecs.on(TagResourceCommand).rejects(Object.assign(new Error('User is not authorized to perform: ecs:TagResource'), { name: 'AccessDeniedException' }));

    const answer = await api.setEnabled(false, { service: 'svc-0' }, 'alice').catch((err: unknown) => err);

    expect(answer).toBeInstanceOf(UnavailableError);
    expect((answer as UnavailableError).message).toBe(
      'the stop is stored and in force for every evaluation that reaches the catalog, but it could not be marked on the services, where an evaluation without the catalog looks for it (EcsTagError: ECS TagResource ca-dms/ca-dms-svc-0 failed: AccessDeniedException: User is not authorized to perform: ecs:TagResource): such an evaluation would not see it; POST /stop again to retry the mark',
    );
    expect((await store.loadControl()).serviceEnabled['svc-0']).toBe(false);
  });

  it('answers a start ECS refused to unmark with a 503 saying the start is stored and the service is held while the catalog is away', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    await api.setEnabled(false, { service: 'svc-0' }, 'alice');
    ecs.on(UntagResourceCommand).rejects(Object.assign(new Error('The tag key is reserved'), { name: 'InvalidParameterException' }));

    const answer = await api.setEnabled(true, { service: 'svc-0' }, 'alice').catch((err: unknown) => err);

    expect(answer).toBeInstanceOf(UnavailableError);
    expect((answer as UnavailableError).message).toBe(
      "the start is stored and in force for every evaluation that reaches the catalog, but the stop's mark could not be cleared from the services (EcsTagError: ECS UntagResource ca-dms/ca-dms-svc-0 failed: InvalidParameterException: The tag key is reserved): an evaluation without the catalog leaves them unscaled; POST /start again to retry",
    );
    expect((await store.loadControl()).serviceEnabled['svc-0']).toBe(true);
  });
});

describe('the marks of a stop kept in line with the catalog', () => {
  it('clears a mark a start could not clear on the next evaluation with the catalog, so the next outage scales the service', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    givenCpu(50);
    await api.setEnabled(false, { service: 'svc-0' }, 'alice');
    ecs.on(UntagResourceCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));
    const refused = await api.setEnabled(true, { service: 'svc-0' }, 'alice').catch((err: unknown) => err);
    ecs.on(UntagResourceCommand).callsFake((input: UntagResourceCommandInput) => {
      for (const key of input.tagKeys ?? []) tags.get(input.resourceArn ?? '')?.delete(key);
      return {};
    });
    const clock = new ManualClock(T0);
    const controller = controllerFor({ topology, catalog: store, fallback: CONFIG, clock });

    const healthy = await controller.evaluate({ trigger: 'schedule' });
    await proxy.cut();
    clock.advance(60_000);
    givenCpu(95);
    const degraded = await controller.evaluate({ trigger: 'schedule' });

    expect(refused).toBeInstanceOf(UnavailableError);
    expect(healthy.degraded).toBe(false);
    expect([...tags.values()].some((t) => t.has(STOPPED_TAG))).toBe(false);
    expect(degraded.degraded).toBe(true);
    expect(updates()).toEqual([
      ['ca-dms-svc-0', 4],
      ['ca-dms-svc-1', 4],
    ]);
  });

  it('marks a stop ECS refused to mark on the next evaluation with the catalog, so the next outage leaves it stopped', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    givenCpu(50);
    ecs.on(TagResourceCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));
    const refused = await api.setEnabled(false, { service: 'svc-0' }, 'alice').catch((err: unknown) => err);
    ecs.on(TagResourceCommand).callsFake((input: TagResourceCommandInput) => {
      const own = tags.get(input.resourceArn ?? '') ?? new Map<string, string>();
      for (const t of input.tags ?? []) own.set(t.key ?? '', t.value ?? '');
      tags.set(input.resourceArn ?? '', own);
      return {};
    });
    const clock = new ManualClock(T0);
    const controller = controllerFor({ topology, catalog: store, fallback: CONFIG, clock });

    await controller.evaluate({ trigger: 'schedule' });
    await proxy.cut();
    givenCpu(95);
    const degraded = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock }).evaluate({ trigger: 'schedule' });

    expect(refused).toBeInstanceOf(UnavailableError);
    expect(degraded.degraded).toBe(true);
    expect(updates()).toEqual([['ca-dms-svc-1', 4]]);
    expect(degraded.decisions.find((d) => d.service === 'svc-0')?.blocked.find((b) => b.kind === 'disabled')?.message).toMatch(/^scaling of svc-0 was stopped by alice at /);
  });

  it('marks again the stops whose tags a stack update removed, on the next evaluation with the catalog', async () => {
    // CloudFormation's update of an AWS::ECS::Service lists the service's tags and may untag the
    // keys its template does not set (docs/infrastructure.md): the marks go, the switches stay.
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    givenCpu(50);
    await api.setEnabled(false, { service: 'svc-0' }, 'alice');
    await api.setEnabled(false, {}, 'bob');
    const marked = [...tags].sort(([a], [b]) => a.localeCompare(b)).map(([, t]) => [...t.keys()].sort());
    for (const own of tags.values()) own.clear();
    await api.setEnabled(true, {}, 'carol');
    const clock = new ManualClock(T0);

    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock }).evaluate({ trigger: 'schedule' });
    const remarked = [...tags].sort(([a], [b]) => a.localeCompare(b)).map(([, t]) => [...t.keys()].sort());
    await proxy.cut();
    givenCpu(95);
    const degraded = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock }).evaluate({ trigger: 'schedule' });

    expect(marked).toEqual([[STOPPED_TAG, STOPPED_ALL_TAG], [STOPPED_ALL_TAG]]);
    expect(remarked).toEqual([[STOPPED_TAG], []]);
    expect(degraded.degraded).toBe(true);
    expect(updates()).toEqual([['ca-dms-svc-1', 4]]);
    expect(degraded.decisions.find((d) => d.service === 'svc-0')?.blocked.find((b) => b.kind === 'disabled')?.message).toMatch(/^scaling of svc-0 was stopped by alice at /);
  });

  it('does not clear the mark of a stop answered while the evaluation was under way', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    givenCpu(50);
    let answered = false;
    ecs.on(DescribeServicesCommand).callsFake(async (input: DescribeServicesCommandInput) => {
      // The stop is answered (stored, then marked) after the evaluation read the switches.
      if (!answered && input.include?.includes('TAGS') === true) {
        answered = true;
        await api.setEnabled(false, { service: 'svc-0' }, 'alice');
      }
      return {
        services: (input.services ?? []).map((name) => {
          const service = ecsService(name, { running: 3, desired: 3 });
          const own = tags.get(service.serviceArn ?? '');
          return input.include?.includes('TAGS') === true && own !== undefined ? { ...service, tags: [...own].map(([key, value]) => ({ key, value })) } : service;
        }),
      };
    });

    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(answered).toBe(true);
    expect((await store.loadControl()).serviceEnabled['svc-0']).toBe(false);
    expect([...tags.values()].filter((t) => t.has(STOPPED_TAG))).toHaveLength(1);
  });
});

describe('an alarm evaluation of one service without the catalog', () => {
  it('heeds a global stop that ECS marked on another service only', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    ecs.on(TagResourceCommand, { resourceArn: 'arn:aws:ecs:eu-west-1:123456789012:service/ca-dms/ca-dms-svc-1' }).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));
    const refused = await api.setEnabled(false, {}, 'bob').catch((err: unknown) => err);
    await proxy.cut();
    givenCpu(95);

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'alarm', services: ['svc-1'] });

    expect(refused).toBeInstanceOf(UnavailableError);
    expect([...tags.values()].filter((t) => t.has(STOPPED_ALL_TAG))).toHaveLength(1);
    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([]);
    expect(result.decisions.map((d) => [d.service, d.outcome])).toEqual([['svc-1', 'blocked']]);
  });
});

describe('what an evaluation without the catalog heeds, against what the catalog says', () => {
  type Op = { readonly scope: '*' | 'svc-0' | 'svc-1'; readonly enabled: boolean };
  const ops = fc.array(fc.record({ scope: fc.constantFrom<Op['scope']>('*', 'svc-0', 'svc-1'), enabled: fc.boolean() }), { minLength: 1, maxLength: 8 });

  /** Runs the stops and starts (each ECS tag call refused when its flag says so), then compares. */
  async function stoppedBothWays(
    ctx: { api: ScalingApiPort; store: CatalogStore; db: pg.Pool },
    sequence: readonly Op[],
    refusals: readonly boolean[],
    healthyFirst: boolean,
  ): Promise<{ catalog: string[]; marks: string[] }> {
    await ctx.db.query('delete from catalog.scaling_switches');
    givenEcs({ running: 3, desired: 3 });
    ecs.resetHistory();
    let call = 0;
    const refused = (): boolean => refusals.length > 0 && refusals[call++ % refusals.length] === true;
    const throttled = Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' });
    ecs.on(TagResourceCommand).callsFake((input: TagResourceCommandInput) => {
      if (refused()) throw throttled;
      const own = tags.get(input.resourceArn ?? '') ?? new Map<string, string>();
      for (const t of input.tags ?? []) own.set(t.key ?? '', t.value ?? '');
      tags.set(input.resourceArn ?? '', own);
      return {};
    });
    ecs.on(UntagResourceCommand).callsFake((input: UntagResourceCommandInput) => {
      if (refused()) throw throttled;
      for (const key of input.tagKeys ?? []) tags.get(input.resourceArn ?? '')?.delete(key);
      return {};
    });
    for (const op of sequence) {
      await ctx.api.setEnabled(op.enabled, op.scope === '*' ? {} : { service: op.scope }, 'alice').catch((err: unknown) => {
        if (!(err instanceof UnavailableError)) throw err;
      });
    }
    call = 0;
    if (healthyFirst) {
      // ECS answers again: the next evaluation with the catalog.
      refusals = [];
      givenCpu(50);
      await controllerFor({ topology, catalog: ctx.store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    }
    const control = await ctx.store.loadControl();
    const catalog = NAMES.filter((s) => !control.globalEnabled || control.serviceEnabled[s] === false);
    await proxy.cut();
    try {
      givenCpu(95);
      const result = await controllerFor({ topology, catalog: ctx.store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
      expect(result.degraded).toBe(true);
      const marks = result.decisions.filter((d) => d.blocked.some((b) => b.kind === 'disabled')).map((d) => d.service);
      return { catalog, marks };
    } finally {
      await proxy.restore();
    }
  }

  async function context(): Promise<{ api: ScalingApiPort; store: CatalogStore; db: pg.Pool }> {
    const { api, store } = await setup();
    const db = new pg.Pool({ connectionString: server.urlFor(`degraded_stop_${dbCount}`), max: 1 });
    pools.push(db);
    return { api, store, db };
  }

  it('stops exactly the services the catalog stops after any stops and starts ECS marked', async () => {
    const ctx = await context();
    await fc.assert(
      fc.asyncProperty(ops, async (sequence) => {
        const { catalog, marks } = await stoppedBothWays(ctx, sequence, [], false);
        expect(marks).toEqual(catalog);
      }),
      { numRuns: 12 },
    );
  }, 90_000);

  it('stops exactly the services the catalog stops once an evaluation with the catalog followed stops and starts ECS partly refused to mark', async () => {
    const ctx = await context();
    await fc.assert(
      fc.asyncProperty(ops, fc.array(fc.boolean(), { minLength: 1, maxLength: 6 }), async (sequence, refusals) => {
        const { catalog, marks } = await stoppedBothWays(ctx, sequence, refusals, true);
        expect(marks).toEqual(catalog);
      }),
      { numRuns: 12 },
    );
  }, 90_000);
});

describe('enabled: false written by a configuration change, then the catalog gone', () => {
  /** The configuration in force with `patch` merged in (the services' overrides replaced as given). */
  const patched =
    (patch: Record<string, unknown>) =>
    (current: { readonly config: Record<string, unknown> }): Record<string, unknown> => ({ ...current.config, ...patch });

  it('does not scale out a service the configuration disabled, in a container that never read the catalog', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    await api.updateConfig(patched({ services: { 'svc-0': { enabled: false }, 'svc-1': {} } }), 'alice', 'PATCH /config');
    await proxy.cut();
    givenCpu(95);

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([['ca-dms-svc-1', 4]]);
    const svc0 = result.decisions.find((d) => d.service === 'svc-0');
    expect(svc0).toMatchObject({ outcome: 'blocked', from: 3, degraded: true });
    expect(svc0?.blocked.find((b) => b.kind === 'disabled')?.message).toMatch(
      /^scaling of svc-0 was stopped by alice at 20\d\d-.* with enabled=false in configuration version 1: the catalog is unreachable, nothing is changed$/,
    );
  });

  it('does not scale out any service after enabled: false for the whole controller (PUT /config)', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    await api.putConfig({ ...(await api.getConfig()).config, enabled: false }, 0, 'bob');
    await proxy.cut();
    givenCpu(95);

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([]);
    expect(result.decisions.map((d) => [d.service, d.outcome])).toEqual([
      ['svc-0', 'blocked'],
      ['svc-1', 'blocked'],
    ]);
    expect([...tags.values()].filter((t) => t.has(STOPPED_ALL_TAG))).toHaveLength(2);
  });

  it('keeps the mark while either the switch or the configuration stops the service, and clears it once neither does', async () => {
    const { api } = await setup();
    givenEcs({ running: 3, desired: 3 });
    const marked = (): boolean => [...tags.values()].some((t) => t.has(STOPPED_TAG));
    await api.updateConfig(patched({ services: { 'svc-0': { enabled: false }, 'svc-1': {} } }), 'alice', 'PATCH /config');
    await api.setEnabled(false, { service: 'svc-0' }, 'bob');
    await api.setEnabled(true, { service: 'svc-0' }, 'bob');
    const afterStart = marked();
    await api.setEnabled(false, { service: 'svc-0' }, 'bob');
    await api.updateConfig(patched({ services: { 'svc-0': {}, 'svc-1': {} } }), 'alice', 'PATCH /config');
    const afterEnable = marked();
    await api.setEnabled(true, { service: 'svc-0' }, 'bob');

    expect(afterStart).toBe(true);
    expect(afterEnable).toBe(true);
    expect(marked()).toBe(false);
  });

  it('answers a configuration change ECS refused to mark with a 503 saying the version is stored but not seen without the catalog', async () => {
    const { api, store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    ecs.on(TagResourceCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));

    const answer = await api.updateConfig(patched({ services: { 'svc-0': { enabled: false }, 'svc-1': {} } }), 'alice', 'PATCH /config').catch((err: unknown) => err);

    expect(answer).toBeInstanceOf(UnavailableError);
    expect((answer as UnavailableError).message).toBe(
      'configuration version 1 is stored and in force for every evaluation that reaches the catalog, but its enabled: false could not be marked on the services, where an evaluation without the catalog looks for it (EcsTagError: ECS TagResource ca-dms/ca-dms-svc-0 failed: ThrottlingException: Rate exceeded): such an evaluation would not see it; send the change again to retry the mark (the next evaluation with the catalog also marks it)',
    );
    expect((await store.loadControl()).config.services['svc-0']?.enabled).toBe(false);
  });

  it('marks enabled: false written to the catalog without the API on the next evaluation with the catalog', async () => {
    const { store } = await setup();
    givenEcs({ running: 3, desired: 3 });
    givenCpu(50);
    await store.putConfig({ ...CONFIG, services: { 'svc-0': {}, 'svc-1': { enabled: false } } }, { actor: 'dba' });
    const clock = new ManualClock(T0);

    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock }).evaluate({ trigger: 'schedule' });
    await proxy.cut();
    givenCpu(95);
    const degraded = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock }).evaluate({ trigger: 'schedule' });

    expect(degraded.degraded).toBe(true);
    expect(updates()).toEqual([['ca-dms-svc-0', 4]]);
    expect(degraded.decisions.find((d) => d.service === 'svc-1')?.blocked.find((b) => b.kind === 'disabled')?.message).toMatch(/^scaling of svc-1 was stopped by dba with enabled=false in configuration version 1: /);
  });
});

describe('the marks on the services against the stops the catalog holds, switch or configuration', () => {
  type Scope = '*' | 'svc-0' | 'svc-1';
  type Step = { readonly kind: 'switch' | 'config'; readonly scope: Scope; readonly enabled: boolean };
  const steps = fc.array(
    fc.record({ kind: fc.constantFrom<Step['kind']>('switch', 'config'), scope: fc.constantFrom<Scope>('*', 'svc-0', 'svc-1'), enabled: fc.boolean() }),
    { minLength: 1, maxLength: 10 },
  );
  const arnOf = (service: string): string => ecsService(`ca-dms-${service}`, { running: 3, desired: 3 }).serviceArn ?? '';

  /** Per service, [own mark, global mark] as the catalog wants them (switch or configuration) and as the target holds them. */
  async function compare(store: CatalogStore, marksOf: (service: string) => Promise<{ own: boolean; all: boolean }>): Promise<{ catalog: string[]; marks: string[] }> {
    const control = await store.loadControl();
    const catalog = NAMES.map((s) => {
      const own = control.serviceEnabled[s] === false || control.config.services[s]?.enabled === false;
      const all = !control.globalEnabled || !control.config.enabled;
      return `${s}: own=${own} all=${all}`;
    });
    const marks = await Promise.all(
      NAMES.map(async (s) => {
        const m = await marksOf(s);
        return `${s}: own=${m.own} all=${m.all}`;
      }),
    );
    return { catalog, marks };
  }

  /** ECS's tags (aws-sdk-client-mock keeping them), or local mode's simulated fleet. */
  const targets: ReadonlyArray<[string, () => { target?: ScalingTarget; marksOf: (service: string) => Promise<{ own: boolean; all: boolean }> }]> = [
    [
      'ECS',
      () => ({
        marksOf: async (s) => {
          const t = tags.get(arnOf(s));
          return { own: t?.has(STOPPED_TAG) === true, all: t?.has(STOPPED_ALL_TAG) === true };
        },
      }),
    ],
    [
      "local mode's simulated fleet",
      () => {
        const fleet = new SimulatedFleet({
          trace: [{ at: 0, value: 10 }],
          acceleration: 60,
          clock: { now: () => T0 },
          services: NAMES.map((service) => ({ service, p99TaskUnits: 8, phaseMinutes: 0 })),
        });
        return {
          target: fleet,
          marksOf: async (s) => {
            const r = (await fleet.describe([s])).get(s);
            const stops = r?.ok === true ? (r.stops ?? []) : [];
            return { own: stops.some((m) => m.scope === s), all: stops.some((m) => m.scope === '*') };
          },
        };
      },
    ],
  ];

  /** A merge patch of `enabled` on the whole controller or on one service, as PATCH /config applies it. */
  const patchEnabled =
    (scope: Scope, enabled: boolean) =>
    (current: { readonly config: Record<string, unknown> }): Record<string, unknown> => {
      if (scope === '*') return { ...current.config, enabled };
      const services = current.config['services'] as Record<string, Record<string, unknown>>;
      return { ...current.config, services: { ...services, [scope]: { ...services[scope], enabled } } };
    };

  it.each(targets)('agree right after every answered stop, start and configuration change (%s)', async (_, made) => {
    const { target, marksOf } = made();
    const { api, store } = await setup(target === undefined ? {} : { target });
    const db = new pg.Pool({ connectionString: server.urlFor(`degraded_stop_${dbCount}`), max: 1 });
    pools.push(db);
    await fc.assert(
      fc.asyncProperty(steps, async (sequence) => {
        await db.query('delete from catalog.scaling_switches');
        await store.putConfig(CONFIG, { actor: 'reset' });
        givenEcs({ running: 3, desired: 3 });
        for (const scope of ['*', ...NAMES]) await target?.markStop?.(scope, undefined);
        for (const [i, step] of sequence.entries()) {
          if (step.kind === 'switch') await api.setEnabled(step.enabled, step.scope === '*' ? {} : { service: step.scope }, 'alice');
          else await api.updateConfig(patchEnabled(step.scope, step.enabled), 'bob', 'PATCH /config');
          const { catalog, marks } = await compare(store, marksOf);
          expect({ after: sequence.slice(0, i + 1), stops: marks }).toEqual({ after: sequence.slice(0, i + 1), stops: catalog });
        }
      }),
      { numRuns: 25 },
    );
    // 25 sequences of up to a dozen API calls against a real catalog: 2-3 s at a load average of 2,
    // past the suite's default 30 s at 15 (a whole-suite run beside other work).
  }, 120_000);
});

describe('a stop or enabled: false whose wait for an evaluation in flight ran out (503: stored and in force)', () => {
  /** An evaluation holding svc-0's lock (its UpdateService under way), from its own connection, until released. */
  async function holdLock(): Promise<{ release: () => Promise<void> }> {
    const holder = new pg.Client({ connectionString: server.urlFor(`degraded_stop_${dbCount}`) });
    await holder.connect();
    await holder.query("insert into catalog.service_locks (service) values ('svc-0') on conflict (service) do nothing");
    await holder.query("begin; select service from catalog.service_locks where service = 'svc-0' for update");
    return {
      release: async () => {
        await holder.query('rollback');
        await holder.end();
      },
    };
  }

  const cases: ReadonlyArray<[string, (api: ScalingApiPort) => Promise<unknown>, RegExp]> = [
    ['POST /stop', (api) => api.setEnabled(false, { service: 'svc-0' }, 'alice'), /^the stop is stored and in force/],
    [
      'PATCH /config',
      (api) => api.updateConfig((c) => ({ ...c.config, services: { 'svc-0': { enabled: false }, 'svc-1': {} } }), 'alice', 'PATCH /config'),
      /^configuration version 1 is stored and in force/,
    ],
    ['PUT /config', async (api) => api.putConfig({ ...(await api.getConfig()).config, services: { 'svc-0': { enabled: false }, 'svc-1': {} } }, 0, 'alice'), /^configuration version 1 is stored and in force/],
  ];

  it.each(cases)('%s still marks the service, so an evaluation without the catalog leaves it unscaled', async (_, write, answered) => {
    const { api, store } = await setup({ statementTimeoutMs: 300 });
    givenEcs({ running: 3, desired: 3 });
    const held = await holdLock();
    let answer: unknown;
    try {
      answer = await write(api).catch((err: unknown) => err);
    } finally {
      await held.release();
    }
    expect(answer).toBeInstanceOf(UnavailableError);
    expect((answer as UnavailableError).message).toMatch(answered);
    expect(tags.get(ecsService('ca-dms-svc-0', { running: 3, desired: 3 }).serviceArn ?? '')?.has(STOPPED_TAG)).toBe(true);

    await proxy.cut();
    givenCpu(95);
    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([['ca-dms-svc-1', 4]]);
  });

  it('says both when ECS also refused the mark', async () => {
    const { api } = await setup({ statementTimeoutMs: 300 });
    givenEcs({ running: 3, desired: 3 });
    ecs.on(TagResourceCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));
    const held = await holdLock();
    let answer: unknown;
    try {
      answer = await api.setEnabled(false, { service: 'svc-0' }, 'alice').catch((err: unknown) => err);
    } finally {
      await held.release();
    }
    expect(answer).toBeInstanceOf(UnavailableError);
    expect((answer as UnavailableError).message).toMatch(
      /^the stop is stored and in force for every evaluation from now on, but an evaluation that decided a change before it .* may still be applied \(GET \/history shows its outcome\); besides, the stop is stored and in force for every evaluation that reaches the catalog, but it could not be marked on the services, .*ThrottlingException: Rate exceeded.*POST \/stop again to retry the mark$/,
    );
  });
});

describe('a service taken out of the configuration and put back (PUT /config)', () => {
  it('loses the mark of its old enabled: false once the configuration puts it back enabled', async () => {
    const { api } = await setup();
    givenEcs({ running: 3, desired: 3 });
    const svc0 = (): boolean => tags.get(ecsService('ca-dms-svc-0', { running: 3, desired: 3 }).serviceArn ?? '')?.has(STOPPED_TAG) === true;
    const current = async (): Promise<{ version: number; config: Record<string, unknown> }> => api.getConfig();
    let c = await current();
    await api.putConfig({ ...c.config, services: { 'svc-0': { enabled: false }, 'svc-1': {} } }, c.version, 'alice');
    const disabled = svc0();
    c = await current();
    await api.putConfig({ ...c.config, services: { 'svc-1': {} } }, c.version, 'alice');
    c = await current();
    await api.putConfig({ ...c.config, services: { 'svc-0': {}, 'svc-1': {} } }, c.version, 'alice');

    expect(disabled).toBe(true);
    expect((await current()).config['services']).toHaveProperty('svc-0');
    expect(svc0()).toBe(false);
  });
});
