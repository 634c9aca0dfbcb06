/**
 * The controller's service lock (`catalog.service_locks`) is held across the ECS call, the
 * session idle in transaction meanwhile: a client that never comes back (a Lambda timed out or
 * frozen mid-call, its connection left open) must not hold it, and every stop waiting for it,
 * beyond a bound the server itself enforces.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sdkCallBoundMs, SDK_CLIENT_OPTIONS } from '../../../functions/adapters/aws/client-options.js';
import { CatalogError, CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { SERVICE_LOCK_IDLE_MS } from '../../../functions/adapters/postgres/statement-bounds.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

const CONFIG = { policy: 'threshold', services: { 'svc-0': {} } };

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

async function freshCatalog(serviceLockIdleMs?: number): Promise<{ store: CatalogStore; database: string }> {
  const database = `lock_idle_${++dbCount}`;
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  await admin.query(`create database ${database}`);
  await admin.end();
  const pool = new pg.Pool({ connectionString: server.urlFor(database), max: 4 });
  pool.on('error', () => undefined);
  pools.push(pool);
  await migrateAll({ catalog: pool, shards: [] });
  return { store: new CatalogStore(pool, { defaults: parseScalingConfig(CONFIG), ...(serviceLockIdleMs === undefined ? {} : { serviceLockIdleMs }) }), database };
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
  });
});
