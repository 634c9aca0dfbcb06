/**
 * The controller against a real PostgreSQL catalog (and the real AWS adapters over SDK clients
 * driven by aws-sdk-client-mock): history and state, switches, deployments, concurrency,
 * the catalog going away and coming back, and alarms in a scale-out cooldown.
 */
import { GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, TagResourceCommand, UpdateServiceCommand } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { freshMigratedCatalog } from '../../support/migrated-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, ecsService, givenOneService, ManualClock, metricsFrom, mockControllerAws, RecordingLog, topologyOf } from '../../support/scaling-fixtures.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';

const aws = mockControllerAws();
const { cw, ecs, aas } = aws;

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const topology = topologyOf(1);
const CONFIG = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {} } };

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

/** A fresh, migrated catalog database reached through the proxy. */
async function freshCatalog(): Promise<{ store: CatalogStore; pool: pg.Pool }> {
  // A copy of a catalog migrated once for the file (test/support/migrated-catalog.ts).
  const name = await freshMigratedCatalog(server, `catalog_${++dbCount}`);
  const pool = new pg.Pool({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${proxy.port}/${name}`, max: 2, connectionTimeoutMillis: 1000 });
  pool.on('error', () => undefined);
  pools.push(pool);
  return { store: new CatalogStore(pool, { defaults: parseScalingConfig(CONFIG) }), pool };
}

afterEach(async () => {
  await proxy.restore().catch(() => undefined);
});

function updates(): Array<number | undefined> {
  return ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input.desiredCount);
}

describe('controller with its catalog', () => {
  it('applies a decision, records it with its metrics and reasons, and stores the service state', async () => {
    const { store } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });

    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    const [stored] = await store.listDecisions({ service: 'svc-0' });
    expect(updates()).toEqual([4]);
    expect(stored).toMatchObject({ at: T0, trigger: 'schedule', policy: 'threshold', from: 3, to: 4, outcome: 'applied', degraded: false, metrics: { cpu: 93 } });
    expect(stored?.reasons.map((r) => r.rule)).toContain('cpu_scale_up_exceeded');
    expect((await store.getServiceState('svc-0'))?.events).toEqual([{ at: T0, from: 3, to: 4 }]);
  });

  it('honours the cooldown from the stored state, even in a new container', async () => {
    const { store } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 4, desired: 4 });

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0 + 60_000) }).evaluate({ trigger: 'schedule' });

    expect(updates()).toEqual([4]);
    expect(result.decisions[0]?.blocked.map((b) => b.kind)).toEqual(['cooldown']);
  });

  it('records who asked for an API-triggered evaluation', async () => {
    const { store } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 50, mem: 50 } }, { running: 3, desired: 3 });

    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'api', actor: 'alice' });

    expect((await store.listDecisions())[0]).toMatchObject({ trigger: 'api', actor: 'alice', outcome: 'unchanged' });
  });

  it('changes nothing while the global switch is off, only reading (and marking) the stop on the ECS services', async () => {
    const { store } = await freshCatalog();
    await store.setSwitch({ scope: '*', enabled: false, actor: 'alice', reason: 'maintenance' });
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(result.stopped).toBe(true);
    expect([cw.calls().length, aas.calls().length, ecs.commandCalls(UpdateServiceCommand).length]).toEqual([0, 0, 0]);
    expect(ecs.commandCalls(TagResourceCommand).map((c) => c.args[0].input.tags?.map((t) => t.key))).toEqual([['ca-dms-scaling:stopped-all']]);
    expect(await store.listDecisions()).toEqual([]);
  });

  it('does not touch a service whose switch is off', async () => {
    const { store } = await freshCatalog();
    await store.setSwitch({ scope: 'svc-0', enabled: false, actor: 'alice' });
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(result.decisions).toEqual([]);
    expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
    expect(ecs.commandCalls(TagResourceCommand).map((c) => c.args[0].input.tags?.map((t) => t.key))).toEqual([['ca-dms-scaling:stopped']]);
  });

  it('does not scale in while a deployment is in progress', async () => {
    const { store } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 5, mem: 10 } }, { running: 5, desired: 5, deploying: true });

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(updates()).toEqual([]);
    expect(result.decisions[0]?.blocked.map((b) => b.kind)).toContain('deployment');
    expect((await store.listDecisions())[0]?.outcome).toBe('blocked');
  });

  it('scales in a web service whose load balancer fell silent because its traffic stopped', async () => {
    // ALB publishes nothing while no request arrives; the connections it reported a minute ago
    // must not turn into missing data that blocks every scale-in from then on
    const { store } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 40, mem: 45, conn: 30, rpt: 200 } }, { running: 6, desired: 6 });
    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    givenOneService(aws, { 'svc-0': { cpu: 3, mem: 31 } }, { running: 6, desired: 6 });

    const result = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0 + 60_000) }).evaluate({ trigger: 'schedule' });

    expect(updates()).toEqual([5]);
    expect(result.decisions[0]).toMatchObject({ from: 6, to: 5, outcome: 'applied', metrics: { cpu: 3, connectionsPerTask: 0, requestCount: 0 } });
  });

  it('lets exactly one of two concurrent evaluations run; the other stands aside at once, changes nothing and says who runs', async () => {
    const { store, pool } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    // The evaluation that wins the lease stops inside UpdateService until the other has answered.
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    ecs.on(UpdateServiceCommand).callsFake(async () => {
      await gate;
      return {};
    });
    const a = controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) });
    const b = controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) });

    const pending = [a.evaluate({ trigger: 'schedule' }), b.evaluate({ trigger: 'alarm', actor: 'alarm:cpu-high' })];
    const standing = await Promise.race(pending);
    open();
    const results = await Promise.all(pending);

    expect(standing.busy?.holder).toMatch(/^scaling-controller \((schedule|alarm by alarm:cpu-high)\)$/);
    expect(standing.decisions).toEqual([]);
    expect(standing.warnings).toEqual([expect.stringContaining('another evaluation is running')]);
    expect(results.filter((r) => r.busy === undefined).map((r) => r.decisions[0]?.outcome)).toEqual(['applied']);
    expect(updates()).toEqual([4]);
    expect((await store.listDecisions()).map((d) => d.outcome)).toEqual(['applied']);
    expect((await pool.query('select count(*)::int as n from catalog.leases')).rows[0]).toEqual({ n: 0 });
  });

  it('takes over the lease of an evaluation that died holding it once the lease has lapsed', async () => {
    const { store, pool } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const dead = await store.acquireLease('scaling-evaluation', { owner: 'a container that froze', ttlMs: 60_000 });
    const blocked = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    await pool.query("update catalog.leases set acquired_at = now() - interval '2 minutes', expires_at = now() - interval '1 minute'");

    const after = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });

    expect(dead.acquired).toBe(true);
    expect(blocked.busy?.holder).toBe('a container that froze');
    expect(after.busy).toBeUndefined();
    expect(after.decisions.map((d) => d.outcome)).toEqual(['applied']);
  });

  it('lets an alarm evaluation wait for the running one instead of standing aside', async () => {
    const { store } = await freshCatalog();
    const running = await store.acquireLease('scaling-evaluation', { owner: 'scaling-evaluate (schedule)', ttlMs: 60_000 });
    const waiting = store.acquireLease('scaling-evaluation', { owner: 'scaling-alarm (alarm)', ttlMs: 60_000, waitMs: 30_000 });
    if (running.acquired) await running.release();

    const granted = await waiting;

    expect(granted.acquired).toBe(true);
  });

  it('keeps working while the catalog is down and writes what it did once it is back', async () => {
    const { store } = await freshCatalog();
    const clock = new ManualClock(T0);
    const log = new RecordingLog();
    const controller = controllerFor({ topology, catalog: store, fallback: CONFIG, clock, log });
    givenOneService(aws, { 'svc-0': { cpu: 50, mem: 50 } }, { running: 3, desired: 3 });
    await controller.evaluate({ trigger: 'schedule' });

    await proxy.cut();
    clock.advance(60_000);
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });
    const out = await controller.evaluate({ trigger: 'schedule' });
    clock.advance(400_000);
    givenOneService(aws, { 'svc-0': { cpu: 5, mem: 10 } }, { running: 4, desired: 4 });
    const wouldScaleIn = await controller.evaluate({ trigger: 'schedule' });
    await proxy.restore();
    clock.advance(60_000);
    givenOneService(aws, { 'svc-0': { cpu: 50, mem: 50 } }, { running: 4, desired: 4 });
    const back = await controller.evaluate({ trigger: 'schedule' });

    expect(out.decisions[0]).toMatchObject({ outcome: 'applied', from: 3, to: 4, degraded: true });
    expect(wouldScaleIn.decisions[0]).toMatchObject({ outcome: 'blocked', degraded: true });
    expect(updates()).toEqual([4]);
    expect(back.degraded).toBe(false);
    expect(controller.pendingBacklog()).toEqual({ held: 0, dropped: 0 });
    const history = await store.listDecisions();
    expect(history.map((d) => [d.at, d.outcome, d.degraded])).toEqual([
      [T0 + 520_000, 'unchanged', false],
      [T0 + 460_000, 'blocked', true],
      [T0 + 60_000, 'applied', true],
      [T0, 'unchanged', false],
    ]);
    expect(log.lines).toHaveLength(4);
  });

  it('keeps a decision applied just before the catalog failed, and evaluates the rest without it', async () => {
    const { store } = await freshCatalog();
    const two = topologyOf(2);
    const config = { ...CONFIG, services: { 'svc-0': {}, 'svc-1': {} } };
    await store.putConfig(config, { actor: 'alice' });
    cw.on(GetMetricDataCommand).callsFake(metricsFrom(['svc-0', 'svc-1'], { 'svc-0': { cpu: 95, mem: 50 }, 'svc-1': { cpu: 95, mem: 50 } }));
    ecs.on(DescribeServicesCommand).resolves({ services: [ecsService('ca-dms-svc-0', { running: 3, desired: 3 }), ecsService('ca-dms-svc-1', { running: 3, desired: 3 })] });
    ecs.on(UpdateServiceCommand).callsFakeOnce(async () => {
      await proxy.cut();
      return {};
    }).resolves({});
    const clock = new ManualClock(T0);
    const controller = controllerFor({ topology: two, catalog: store, fallback: config, clock });

    const during = await controller.evaluate({ trigger: 'schedule' });
    await proxy.restore();
    clock.advance(30_000);
    await controller.evaluate({ trigger: 'schedule' });

    expect(during.decisions.map((d) => [d.service, d.outcome, d.degraded])).toEqual([
      ['svc-0', 'applied', true],
      ['svc-1', 'applied', true],
    ]);
    const history = await store.listDecisions({ until: new Date(T0 + 1) });
    expect(history.map((d) => [d.service, d.outcome, d.degraded]).sort()).toEqual([
      ['svc-0', 'applied', true],
      ['svc-1', 'applied', true],
    ]);
  });

  it('shows an explicit gap in the history for decisions it could not hold while the catalog was down', async () => {
    const { store } = await freshCatalog();
    const clock = new ManualClock(T0);
    const controller = controllerFor({ topology, catalog: store, fallback: CONFIG, clock, backlogLimit: 2 });
    givenOneService(aws, { 'svc-0': { cpu: 50, mem: 50 } }, { running: 3, desired: 3 });

    await proxy.cut();
    for (let i = 0; i < 5; i++) {
      await controller.evaluate({ trigger: 'schedule' });
      clock.advance(30_000);
    }
    await proxy.restore();
    await controller.evaluate({ trigger: 'schedule' });

    expect((await store.listDecisions()).filter((d) => d.degraded)).toHaveLength(2);
    expect((await store.listGaps()).map((g) => [g.decisions, g.fromAt.getTime(), g.toAt.getTime()])).toEqual([[3, T0, T0 + 60_000]]);
  });

  it('on an alarm during a scale-out cooldown adds only the difference', async () => {
    const { store } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 2, desired: 2 });
    const clock = new ManualClock(T0);
    const controller = controllerFor({ topology, catalog: store, fallback: CONFIG, clock });
    await controller.evaluate({ trigger: 'schedule' });
    await store.putConfig({ ...CONFIG, scale_step: 3 }, { actor: 'alice' });
    clock.advance(60_000);
    givenOneService(aws, { 'svc-0': { cpu: 97, mem: 50 } }, { running: 3, desired: 3 });

    const scheduled = await controller.evaluate({ trigger: 'schedule' });
    const alarm = await controller.evaluate({ trigger: 'alarm', services: ['svc-0'], actor: 'alarm:cpu-high' });

    expect(scheduled.decisions[0]?.blocked.map((b) => b.kind)).toEqual(['cooldown']);
    expect(alarm.decisions[0]).toMatchObject({ from: 3, to: 5, outcome: 'applied', trigger: 'alarm', actor: 'alarm:cpu-high' });
    expect(alarm.decisions[0]?.reasons.map((r) => r.rule)).toContain('alarm_scale_out_during_cooldown');
    expect(updates()).toEqual([3, 5]);
  });

  it('asks ca-dms, which has no scale-out cooldown, once on an alarm: the alarm decides what the schedule (and the simulator) decides', async () => {
    // Two catalogs with the same history; at the last minute one is evaluated by the schedule, the other by an alarm.
    const config = { ...CONFIG, policy: 'ca-dms' };
    const [a, b] = [await freshCatalog(), await freshCatalog()];
    for (const { store } of [a, b]) await store.putConfig(config, { actor: 'alice' });
    const clock = new ManualClock(T0);
    const onSchedule = controllerFor({ topology, catalog: a.store, fallback: config, clock });
    const onAlarm = controllerFor({ topology, catalog: b.store, fallback: config, clock });
    // A slow climb (2 busy tasks, +0.05 a minute) measured as the simulator measures it: tasks
    // started serve two minutes later, the minute just ended was served by the tasks running then.
    let desired = 2;
    let running = 2;
    let served = 2;
    const starting: Array<{ at: number; count: number }> = [];
    const given = (minute: number): void => {
      while (starting[0] !== undefined && starting[0].at <= clock.now()) running += (starting.shift() as { count: number }).count;
      const u = (2 + 0.05 * minute) / served;
      cw.on(GetMetricDataCommand).callsFake(metricsFrom(['svc-0'], { 'svc-0': { cpu: 100 * Math.min(1, u), mem: 30 + 50 * Math.min(1, u), conn: 100 * u * running } }));
      ecs.on(DescribeServicesCommand).resolves({ services: [ecsService('ca-dms-svc-0', { running, pending: desired - running, desired })] });
    };
    for (let minute = 0; minute < 3; minute++) {
      given(minute);
      const [first] = (await onSchedule.evaluate({ trigger: 'schedule' })).decisions;
      const [second] = (await onAlarm.evaluate({ trigger: 'schedule' })).decisions;
      expect(second?.to).toBe(first?.to);
      if (first !== undefined && first.to > desired) starting.push({ at: clock.now() + 120_000, count: first.to - desired });
      desired = first?.to ?? desired;
      served = running;
      clock.advance(60_000);
    }
    // ca-dms scaled out within the last 300 s, the guide's scale_cooldown, which it does not have.
    expect((await a.store.getServiceState('svc-0'))?.events.length).toBeGreaterThan(0);
    given(3);

    const [scheduled] = (await onSchedule.evaluate({ trigger: 'schedule' })).decisions;
    const [alarm] = (await onAlarm.evaluate({ trigger: 'alarm', services: ['svc-0'], actor: 'alarm:cpu-high' })).decisions;

    expect(alarm).toMatchObject({ trigger: 'alarm', from: desired, to: scheduled?.to });
    expect(alarm?.reasons.map((r) => r.rule)).not.toContain('alarm_scale_out_during_cooldown');
  });
});
