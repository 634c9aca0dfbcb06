/**
 * The controller's service lock (`catalog.service_locks`) is held across the ECS call, the
 * session idle in transaction meanwhile: a client that never comes back (a Lambda timed out or
 * frozen mid-call, its connection left open) must not hold it, and every stop waiting for it,
 * beyond a bound the server itself enforces.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { ECSClient } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sdkCallBoundMs, SDK_CLIENT_OPTIONS } from '../../../functions/adapters/aws/client-options.js';
import { EcsScalingTarget, EcsUpdateError } from '../../../functions/adapters/aws/ecs-target.js';
import { CatalogError, CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { SERVICE_LOCK_IDLE_MS, serviceLockCallBoundMs } from '../../../functions/adapters/postgres/statement-bounds.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import type { TasksReading } from '../../../functions/core/scaling/ports.js';
import { freshMigratedCatalog } from '../../support/migrated-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, givenOneService, ManualClock, mockControllerAws, topologyOf } from '../../support/scaling-fixtures.js';

const CONFIG = { policy: 'threshold', services: { 'svc-0': {} } };
const aws = mockControllerAws();
const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const topology = topologyOf(1);

let server: TestPostgres;
const pools: pg.Pool[] = [];
let dbCount = 0;

beforeAll(async () => {
  server = await startTestPostgres();
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server.stop();
});

/** A fresh catalog: the evaluating controller's store (`serviceLockIdleMs`) and the API's, each on its own pool. */
async function freshCatalog(serviceLockIdleMs?: number): Promise<{ store: CatalogStore; api: CatalogStore; database: string }> {
  // A copy of the catalog the migrations ran in once on this server (as migrateAll leaves one).
  const database = await freshMigratedCatalog(server, `lock_idle_${++dbCount}`);
  const pool = new pg.Pool({ connectionString: server.urlFor(database), max: 4 });
  pool.on('error', () => undefined);
  pools.push(pool);
  const apiPool = new pg.Pool({ connectionString: server.urlFor(database), max: 2 });
  pools.push(apiPool);
  const defaults = parseScalingConfig(CONFIG);
  return { store: new CatalogStore(pool, { defaults, ...(serviceLockIdleMs === undefined ? {} : { serviceLockIdleMs }) }), api: new CatalogStore(apiPool, { defaults }), database };
}

/** A session holding `svc-0`'s lock whose client then goes quiet until `release` (the ECS call of a frozen Lambda). */
function holdLockSilently(store: CatalogStore): { held: Promise<void>; release: () => void; done: Promise<unknown> } {
  let reached!: () => void;
  let release!: () => void;
  const held = new Promise<void>((resolve) => (reached = resolve));
  const gate = new Promise<void>((resolve) => (release = resolve));
  const done = store
    .withServiceLock(
      'svc-0',
      async (session) => {
        await session.loadState();
        reached();
        await gate;
      },
      { wait: true },
    )
    .then(
      (value) => value,
      (error: unknown) => error,
    );
  return { held, release, done };
}

/** The desired count of the change stored as `svc-0`'s `pending` (undefined when none). */
async function pendingTo(database: string): Promise<number | undefined> {
  const admin = new pg.Client({ connectionString: server.urlFor(database) });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ to: number | null }>(`select (state->'pending'->>'to')::int as to from catalog.service_state where service = 'svc-0'`);
    return rows[0]?.to ?? undefined;
  } finally {
    await admin.end();
  }
}

/** What `promise` settled with, or 'still waiting' once `ms` passed (a liveness bound, not a timing assertion). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | 'still waiting'> {
  let timer: NodeJS.Timeout | undefined;
  const waiting = new Promise<'still waiting'>((resolve) => (timer = setTimeout(() => resolve('still waiting'), ms)));
  try {
    return await Promise.race([promise, waiting]);
  } finally {
    clearTimeout(timer);
  }
}

describe("the service lock's life on the server", () => {
  it('ends a transaction holding the service lock whose client went silent, so a stop is answered', async () => {
    const { store, database } = await freshCatalog(300);
    const holder = holdLockSilently(store);
    await holder.held;

    const stop = await within(
      store.setSwitch({ scope: 'svc-0', enabled: false, actor: 'alice' }).then((s) => s.enabled),
      10_000,
    );

    expect(stop).toBe(false);
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where datname = $1 and state like 'idle in transaction%'`, [database]);
      expect(rows[0]?.n).toBe(0);
    } finally {
      await admin.end();
    }
    holder.release();
    const outcome = await holder.done;
    expect(outcome).toBeInstanceOf(CatalogError);
    expect((outcome as Error).message).toMatch(/evaluating svc-0 under its lock failed/);
  });

  it('lets a transaction idle for less than the bound commit', async () => {
    const { store } = await freshCatalog(5_000);
    const holder = holdLockSilently(store);
    await holder.held;
    await new Promise((resolve) => setTimeout(resolve, 200));

    holder.release();

    expect(await holder.done).toEqual({ acquired: true, value: undefined });
  });

  it('holds the lock by default longer than the longest ECS call the SDK settings allow', () => {
    expect(sdkCallBoundMs(SDK_CLIENT_OPTIONS)).toBe(4 * (2_000 + 5_000) + (1_000 + 5_000) + (2_000 + 5_000) + (4_000 + 5_000));
    expect(SERVICE_LOCK_IDLE_MS).toBeGreaterThan(sdkCallBoundMs(SDK_CLIENT_OPTIONS));
    expect(serviceLockCallBoundMs(SERVICE_LOCK_IDLE_MS)).toBeGreaterThan(sdkCallBoundMs(SDK_CLIENT_OPTIONS));
  });
});

/**
 * ECS answering UpdateService slowly (a response trickling in: the SDK's requestTimeout only
 * counts socket silence), for `slowMs`, unless the caller's signal cuts the call first, as the
 * SDK's request handler does; what happened, in order, in `events`.
 */
class SlowEcs extends EcsScalingTarget {
  readonly events: string[] = [];
  constructor(private readonly slowMs: number) {
    super({ client: new ECSClient({ region: 'eu-west-1' }), topology });
  }
  override async setDesired(service: string, desired: number, signal?: AbortSignal): Promise<void> {
    this.events.push(`UpdateService ${desired} sent`);
    try {
      await delay(this.slowMs, undefined, signal === undefined ? {} : { signal });
    } catch (err) {
      this.events.push(`UpdateService ${desired} cut`);
      throw new EcsUpdateError(`ECS UpdateService desiredCount=${desired} failed: AbortError: Request aborted`, { cause: err });
    }
    await super.setDesired(service, desired);
    this.events.push(`UpdateService ${desired} answered`);
  }
}

describe('an evaluation whose ECS call outlasts the bound on the idle service lock', () => {
  it('cuts the call before the server ends the transaction, so a stop waiting for the lock is answered only after it', async () => {
    const { store, api } = await freshCatalog(300);
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const ecs = new SlowEcs(1_500);
    const evaluation = controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0), target: ecs }).evaluate({ trigger: 'schedule' });
    while (ecs.events.length === 0) await delay(10);

    await api.setSwitch({ scope: 'svc-0', enabled: false, actor: 'alice' });
    ecs.events.push('stop answered');
    const result = await evaluation;

    expect(ecs.events).toEqual(['UpdateService 4 sent', 'UpdateService 4 cut', 'stop answered']);
    expect(result.warnings).toEqual([]);
    expect(result.decisions[0]?.error).toMatch(/whether the change took effect is unknown, it stays pending/);
  });

  it('leaves a change whose call was cut pending, and the next evaluation records it from the count the service reports', async () => {
    const { store, database } = await freshCatalog(300);
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0), target: new SlowEcs(1_500) }).evaluate({ trigger: 'schedule' });
    const afterCut = { pending: await pendingTo(database), recorded: (await store.listDecisions({ service: 'svc-0' })).length };

    // The request had reached ECS: the service reports the new count.
    givenOneService(aws, { 'svc-0': { cpu: 60, mem: 50 } }, { running: 4, desired: 4 });
    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0 + 60_000), target: new SlowEcs(0) }).evaluate({ trigger: 'schedule' });
    const history = await store.listDecisions({ service: 'svc-0' });

    expect(afterCut).toEqual({ pending: 4, recorded: 0 });
    expect(history.map((d) => [d.from, d.to, d.outcome, d.reasons.at(-1)?.rule])).toContainEqual([3, 4, 'applied', 'recorded_after_stop']);
    expect(history.filter((d) => d.to === 4 && d.from === 3)).toHaveLength(1);
    expect(await pendingTo(database)).toBeUndefined();
  });

  it("leaves a change whose call was cut at the evaluation's deadline pending, not recorded as failed, for the next evaluation to record", async () => {
    const { store, database } = await freshCatalog();
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0), target: new SlowEcs(1_500) }).evaluate({ trigger: 'schedule', signal: AbortSignal.timeout(300) });
    const afterCut = { pending: await pendingTo(database), recorded: (await store.listDecisions({ service: 'svc-0' })).map((d) => d.outcome) };

    givenOneService(aws, { 'svc-0': { cpu: 60, mem: 50 } }, { running: 4, desired: 4 });
    await controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0 + 60_000), target: new SlowEcs(0) }).evaluate({ trigger: 'schedule' });
    const history = await store.listDecisions({ service: 'svc-0' });

    expect(afterCut).toEqual({ pending: 4, recorded: [] });
    expect(history.filter((d) => d.from === 3 && d.to === 4).map((d) => [d.outcome, d.reasons.at(-1)?.rule])).toEqual([['applied', 'recorded_after_stop']]);
  });
});

/**
 * ECS reporting a stop marked on svc-0 that the catalog no longer holds (a start whose
 * UntagResource was refused), and answering the evaluation's clearing of that mark slowly (a
 * response trickling in), unless the caller's signal cuts the call first.
 */
class SlowUntagEcs extends EcsScalingTarget {
  readonly events: string[] = [];
  constructor(private readonly slowMs: number) {
    super({ client: new ECSClient({ region: 'eu-west-1' }), topology });
  }
  override async describe(services: readonly string[], signal?: AbortSignal): Promise<ReadonlyMap<string, TasksReading>> {
    const read = await super.describe(services, signal);
    return new Map([...read].map(([name, r]) => [name, r.ok && name === 'svc-0' ? { ...r, stops: [{ scope: 'svc-0', by: 'alice at 2026-01-05T11:00:00.000Z' }] } : r]));
  }
  override async markStop(scope: string, by: string | undefined, signal?: AbortSignal): Promise<void> {
    const verb = by === undefined ? 'UntagResource' : 'TagResource';
    this.events.push(`${verb} ${scope} sent`);
    try {
      await delay(this.slowMs, undefined, signal === undefined ? {} : { signal });
    } catch (err) {
      this.events.push(`${verb} ${scope} cut`);
      throw err;
    }
    this.events.push(`${verb} ${scope} answered`);
  }
}

describe('an evaluation bringing the marks of a stop in line, whose ECS call outlasts the bound on the idle service lock', () => {
  it('cuts the call before the server ends the transaction, so a stop waiting for the lock is answered only after it, its mark never overwritten by the call', async () => {
    const { store, api } = await freshCatalog(300);
    givenOneService(aws, { 'svc-0': { cpu: 50, mem: 50 } }, { running: 3, desired: 3 });
    const ecs = new SlowUntagEcs(1_500);
    const evaluation = controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0), target: ecs }).evaluate({ trigger: 'schedule' });
    while (ecs.events.length === 0) await delay(10);

    await api.setSwitch({ scope: 'svc-0', enabled: false, actor: 'bob' });
    ecs.events.push('stop answered');
    const result = await evaluation;

    expect(ecs.events).toEqual(['UntagResource svc-0 sent', 'UntagResource svc-0 cut', 'stop answered']);
    expect(result.warnings).toEqual([expect.stringMatching(/^the marks of the stops on the orchestrator could not be brought in line with the catalog \(the next evaluation tries again\): /)]);
  });
});
