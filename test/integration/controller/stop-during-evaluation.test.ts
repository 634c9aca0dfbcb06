/**
 * POST /stop (the catalog's switch) or PATCH /config with enabled: false racing an evaluation that
 * has already read them: once the stop has been answered, no evaluation may change a desired count.
 */
import { GetMetricDataCommand, type GetMetricDataCommandInput } from '@aws-sdk/client-cloudwatch';
import { UpdateServiceCommand } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import type { ControllerCatalog } from '../../../functions/core/scaling/ports.js';
import { freshMigratedCatalog } from '../../support/migrated-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, givenOneService, ManualClock, metricsFrom, mockControllerAws, serviceNames, topologyOf } from '../../support/scaling-fixtures.js';

const aws = mockControllerAws();
const { cw, ecs } = aws;

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const topology = topologyOf(1);
const CONFIG = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {} } };

let server: TestPostgres;
const pools: pg.Pool[] = [];
let dbCount = 0;
/** The database of the newest fresh catalog. */
let currentDatabase = '';

beforeAll(async () => {
  server = await startTestPostgres();
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server.stop();
});

async function freshCatalog(): Promise<CatalogStore> {
  // A copy of a catalog migrated once for the file (test/support/migrated-catalog.ts).
  const name = await freshMigratedCatalog(server, `stop_race_${++dbCount}`);
  currentDatabase = name;
  const pool = new pg.Pool({ connectionString: server.urlFor(name), max: 4 });
  pools.push(pool);
  return new CatalogStore(pool, { defaults: parseScalingConfig(CONFIG) });
}

/** Holds CloudWatch's answer (the evaluation has read the switches by then) until `release`. */
function holdMetrics(): { reading: Promise<void>; release: () => void } {
  let reached!: () => void;
  let release!: () => void;
  const reading = new Promise<void>((resolve) => (reached = resolve));
  const gate = new Promise<void>((resolve) => (release = resolve));
  const answer = metricsFrom(serviceNames(1), { 'svc-0': { cpu: 93, mem: 50 } });
  cw.on(GetMetricDataCommand).callsFake(async (input: GetMetricDataCommandInput) => {
    reached();
    await gate;
    return answer(input);
  });
  return { reading, release };
}

describe('stopping scaling while an evaluation runs', () => {
  const stops = [
    ['a stop of the whole controller (POST /stop)', (store: CatalogStore) => store.setSwitch({ scope: '*', enabled: false, actor: 'alice', reason: 'incident' }), 'scaling was stopped by alice'],
    ['a stop of the service (POST /stop {"service"})', (store: CatalogStore) => store.setSwitch({ scope: 'svc-0', enabled: false, actor: 'alice' }), 'scaling of svc-0 was stopped by alice'],
    ['enabled: false stored in the configuration (PATCH /config)', (store: CatalogStore) => store.putConfig({ ...CONFIG, enabled: false }, { actor: 'alice' }), 'scaling was disabled by alice (configuration version 1)'],
    [
      'enabled: false for the service in the configuration',
      (store: CatalogStore) => store.putConfig({ ...CONFIG, services: { 'svc-0': { enabled: false } } }, { actor: 'alice' }),
      'scaling was disabled by alice (configuration version 1)',
    ],
    [
      'a configuration that no longer names the service (PUT /config without it, or PATCH null on it)',
      (store: CatalogStore) => store.putConfig({ ...CONFIG, services: {} }, { actor: 'alice' }),
      'svc-0 was removed from the configuration by alice (configuration version 1)',
    ],
  ] as const;
  for (const [what, stopIt, message] of stops) {
    it(`changes no desired count once ${what} has been answered, and records the decision as blocked`, async () => {
      const store = await freshCatalog();
      givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
      const held = holdMetrics();
      const evaluation = controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
      await held.reading;

      await stopIt(store);
      held.release();
      const result = await evaluation;

      expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
      expect(result.decisions.map((d) => [d.outcome, d.to, d.blocked.map((b) => b.kind)])).toEqual([['blocked', 4, ['disabled']]]);
      expect(result.decisions[0]?.blocked[0]?.message).toBe(`${message} while this evaluation ran: nothing is changed`);
      expect((await store.listDecisions()).map((d) => d.outcome)).toEqual(['blocked']);
      expect((await store.getServiceState('svc-0'))?.events ?? []).toEqual([]);
    });
  }
});

/**
 * The evaluation's catalog, paused once the first transaction of `svc-0` has committed (its
 * change re-checked and stored as `pending`) until `release`: the moment before the orchestrator
 * is asked.
 */
function pausedAfterDeciding(store: CatalogStore): { catalog: ControllerCatalog; decided: Promise<void>; release: () => void } {
  let reached!: () => void;
  let release!: () => void;
  const decided = new Promise<void>((resolve) => (reached = resolve));
  const gate = new Promise<void>((resolve) => (release = resolve));
  let first = true;
  const catalog: ControllerCatalog = {
    acquireLease: (name, request) => store.acquireLease(name, request),
    loadControl: () => store.loadControl(),
    withServiceLock: async (service, work, options) => {
      const result = await store.withServiceLock(service, work, options);
      if (first) {
        first = false;
        reached();
        await gate;
      }
      return result;
    },
    recordDecision: (record) => store.recordDecision(record),
    getServiceState: (service) => store.getServiceState(service),
    appendBacklog: (backlog) => store.appendBacklog(backlog),
  };
  return { catalog, decided, release };
}

/** Holds UpdateService (sent: the controller has started the scale action) until `release`. */
function holdUpdate(events: string[]): { sent: Promise<void>; release: () => void } {
  let reached!: () => void;
  let release!: () => void;
  const sent = new Promise<void>((resolve) => (reached = resolve));
  const gate = new Promise<void>((resolve) => (release = resolve));
  ecs.on(UpdateServiceCommand).callsFake(async () => {
    events.push('update sent');
    reached();
    await gate;
    events.push('update answered');
    return {};
  });
  return { sent, release };
}

/** Resolves once a session of the catalog's database waits for a lock. */
async function someoneWaitsForALock(database: string): Promise<void> {
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  try {
    for (;;) {
      const { rows } = await admin.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'`, [database]);
      if ((rows[0]?.n ?? 0) > 0) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    await admin.end();
  }
}

describe('stopping or reconfiguring scaling between the re-check and the orchestrator call', () => {
  it('changes no desired count when POST /stop is answered after the change was decided and before UpdateService is sent', async () => {
    const store = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const paused = pausedAfterDeciding(store);
    const evaluation = controllerFor({ topology, catalog: paused.catalog, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    await paused.decided;

    await store.setSwitch({ scope: 'svc-0', enabled: false, actor: 'alice' });
    paused.release();
    const result = await evaluation;

    expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
    expect(result.decisions.map((d) => [d.outcome, d.to, d.blocked.map((b) => b.kind)])).toEqual([['blocked', 4, ['disabled']]]);
    expect((await store.listDecisions()).map((d) => d.outcome)).toEqual(['blocked']);
    expect((await store.getServiceState('svc-0'))?.events ?? []).toEqual([]);
  });

  it('answers POST /stop only once an UpdateService already sent has been answered, so no scale action follows the answer', async () => {
    const store = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const events: string[] = [];
    const update = holdUpdate(events);
    const evaluation = controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    await update.sent;

    const stopping = store.setSwitch({ scope: '*', enabled: false, actor: 'alice' }).then(() => events.push('stop answered'));
    await Promise.race([someoneWaitsForALock(currentDatabase), stopping]);
    update.release();
    await Promise.all([evaluation, stopping]);

    expect(events).toEqual(['update sent', 'update answered', 'stop answered']);
  });

  it('records the change as a dry run when dry_run was switched on (PATCH /config) after the change was decided', async () => {
    const store = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const paused = pausedAfterDeciding(store);
    const evaluation = controllerFor({ topology, catalog: paused.catalog, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    await paused.decided;

    await store.putConfig({ ...CONFIG, dry_run: true }, { actor: 'alice' });
    paused.release();
    const result = await evaluation;

    expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
    expect(result.decisions.map((d) => [d.outcome, d.to, d.dryRun, d.blocked.map((b) => b.kind)])).toEqual([['blocked', 4, true, ['dry_run']]]);
    expect(result.decisions[0]?.blocked[0]?.message).toBe('dry run was switched on by alice (configuration version 1) while this evaluation ran: the decision is recorded and nothing is changed');
    expect((await store.listDecisions()).map((d) => d.outcome)).toEqual(['blocked']);
  });

  it('does not scale past a max_instances lowered (PATCH /config) after the change was decided', async () => {
    const store = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const paused = pausedAfterDeciding(store);
    const evaluation = controllerFor({ topology, catalog: paused.catalog, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    await paused.decided;

    await store.putConfig({ ...CONFIG, max_instances: 3 }, { actor: 'alice' });
    paused.release();
    const result = await evaluation;

    expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
    expect(result.decisions.map((d) => [d.outcome, d.to, d.blocked.map((b) => b.kind)])).toEqual([['blocked', 4, ['bounds']]]);
    expect(result.decisions[0]?.blocked[0]?.message).toBe('the instance bounds became 2..3 (alice, configuration version 1) while this evaluation ran: 4 is outside them, nothing is changed');
  });

  it('still applies the change when a configuration change answered meanwhile leaves it allowed', async () => {
    const store = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const paused = pausedAfterDeciding(store);
    const evaluation = controllerFor({ topology, catalog: paused.catalog, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    await paused.decided;

    await store.putConfig({ ...CONFIG, max_instances: 12 }, { actor: 'alice' });
    paused.release();
    const result = await evaluation;

    expect(ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input.desiredCount)).toEqual([4]);
    expect(result.decisions.map((d) => [d.outcome, d.to])).toEqual([['applied', 4]]);
  });
});

describe('a stop seen under the lock when the catalog then fails', () => {
  it('changes no desired count when the transaction that saw the stop could not commit, and keeps the blocked decision for the catalog', async () => {
    const store = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    // The first transaction of svc-0 runs its work, then fails as a lost connection would: rolled back.
    const failing: ControllerCatalog = {
      acquireLease: (name, request) => store.acquireLease(name, request),
      loadControl: () => store.loadControl(),
      withServiceLock: (service, work, options) =>
        store.withServiceLock(
          service,
          async (session) => {
            await work(session);
            throw new Error('connection terminated unexpectedly');
          },
          options,
        ),
      recordDecision: (record) => store.recordDecision(record),
      getServiceState: (service) => store.getServiceState(service),
      appendBacklog: (backlog) => store.appendBacklog(backlog),
    };
    const held = holdMetrics();
    const controller = controllerFor({ topology, catalog: failing, fallback: CONFIG, clock: new ManualClock(T0) });
    const evaluation = controller.evaluate({ trigger: 'schedule' });
    await held.reading;

    await store.setSwitch({ scope: 'svc-0', enabled: false, actor: 'alice' });
    held.release();
    const result = await evaluation;

    expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
    expect(result.decisions.map((d) => [d.outcome, d.degraded, d.blocked.map((b) => b.kind)])).toEqual([['blocked', true, ['disabled']]]);
    expect(controller.pendingBacklog()).toEqual({ held: 1, dropped: 0 });
  });
});

describe('an evaluation starting while a stop or a configuration change waits for the evaluations in flight', () => {
  it("records the service skipped for that run, naming the lock's holders it may be, and the next evaluation decides", async () => {
    const store = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    ecs.resetHistory();
    // What a configuration write's wait (the catalog's awaitChangesInFlight) holds while its statement runs.
    const writer = new pg.Client({ connectionString: server.urlFor(currentDatabase) });
    await writer.connect();
    await writer.query(`insert into catalog.service_locks (service) values ('svc-0') on conflict do nothing`);
    await writer.query('begin');
    await writer.query('select service from catalog.service_locks for share');
    let during;
    try {
      during = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
    } finally {
      await writer.query('commit');
      await writer.end();
    }
    const after = await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0 + 60_000) }).evaluate({ trigger: 'schedule' });
    const history = await store.listDecisions({ service: 'svc-0' });

    expect(during.decisions.map((d) => [d.outcome, d.error])).toEqual([
      ['skipped', "the service's lock is held (by another evaluation, or by a stop or a configuration change waiting for one to finish): this evaluation stood aside and changed nothing; the next one decides"],
    ]);
    expect(after.decisions.map((d) => [d.from, d.to, d.outcome])).toEqual([[3, 4, 'applied']]);
    expect(history.map((d) => d.outcome)).toEqual(['applied', 'skipped']);
    expect(ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input.desiredCount)).toEqual([4]);
  });
});
