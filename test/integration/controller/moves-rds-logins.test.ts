/**
 * The moves worker's handler as it runs on AWS, end to end under RDS-like
 * privileges: migrations as RDS's master user (not a superuser), the API planning as
 * ca_dms_control on the catalog and ca_dms_monitor on the shards, the worker running as
 * ca_dms_control on the catalog and ca_dms_mover on the shards, each with the Lambda pool
 * settings (the catalog pool of `createPool`, one connection; two per shard), while the
 * application writes as ca_dms_app.
 */
import '../../support/quiet-powertools.js';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APPLICATION_ROLE, CONTROL_ROLE, ensureLogin, MONITOR_ROLE, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { Mover, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { keySlot } from '../../../functions/core/sharding/keys.js';
import { createMovesHandler } from '../../../functions/handlers/moves.js';
import { CATALOG_STATEMENT_TIMEOUT_MS, createPool } from '../../../functions/handlers/shared/db.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { sqlstateOf, startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { emulateRdsMaster } from '../../support/rds-master.js';
import { deletePinPastGuard, keysInSlot, seedUsers } from '../sharding/fixtures/move-env.js';
import { lambdaContext, tick } from '../sharding/fixtures/moves-handler.js';

const MASTER = 'ca_dms_admin';
const PASSWORD = 'rds master';
const SHARDS = ['ca_dms_1', 'ca_dms_2'] as const;
const LOGINS = { control: 'ca_dms_control_user', monitor: 'ca_dms_monitor_user', mover: 'ca_dms_mover_user', app: 'ca_dms_app_user' } as const;

let server: TestPostgres;
const pools: pg.Pool[] = [];
let api: ShardingRuntime;
let worker: ShardingRuntime;
let handler: ReturnType<typeof createMovesHandler>;

function url(user: string, database: string): string {
  return `postgresql://${user}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${server.port}/${database}`;
}
function poolAs(user: string, database: string, max = 2): pg.Pool {
  const pool = new pg.Pool({ connectionString: url(user, database), max });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
}
function configAs(user: string) {
  return parseShardingConfig({
    strategy: 'hash_based',
    shards: SHARDS.map((shard_id) => ({ shard_id, database_url: url(user, shard_id), weight: 1, read_replicas: [] })),
    default_shard: SHARDS[0],
  });
}
async function count(shard: string, slot: number): Promise<{ users: number; documents: number }> {
  const { rows } = await poolAs(MASTER, shard).query<{ users: number; documents: number }>(
    'select (select count(*)::int from users where slot = $1) as users, (select count(*)::int from documents where slot = $1) as documents',
    [slot],
  );
  return rows[0] ?? { users: -1, documents: -1 };
}

beforeAll(async () => {
  server = await startTestPostgres({ settings: { shared_preload_libraries: 'pg_stat_statements' } });
  await emulateRdsMaster(server.url, { master: MASTER, password: PASSWORD, databases: SHARDS });
  const [catalog, other] = SHARDS.map((db) => poolAs(MASTER, db)) as [pg.Pool, pg.Pool];
  await migrateAll({ catalog, shards: [catalog, other] });
  await ensureLogin(catalog, { username: LOGINS.control, password: PASSWORD }, { role: CONTROL_ROLE, settings: { statement_timeout: `${CATALOG_STATEMENT_TIMEOUT_MS}ms` } });
  for (const shard of [catalog, other]) {
    await ensureLogin(shard, { username: LOGINS.monitor, password: PASSWORD }, { role: MONITOR_ROLE });
    await ensureLogin(shard, { username: LOGINS.mover, password: PASSWORD }, { role: MOVER_ROLE });
    await ensureLogin(shard, { username: LOGINS.app, password: PASSWORD }, { role: APPLICATION_ROLE });
  }
  const apiCatalog = await createPool({ url: url(LOGINS.control, SHARDS[0]) }, undefined);
  const workerCatalog = await createPool({ url: url(LOGINS.control, SHARDS[0]) }, undefined);
  pools.push(apiCatalog, workerCatalog);
  api = await createShardingRuntime({ config: configAs(LOGINS.monitor), catalog: apiCatalog, actor: 'scaling-api', pools: { max: 2 } });
  worker = await createShardingRuntime({ config: configAs(LOGINS.mover), catalog: workerCatalog, actor: 'scaling-moves', pools: { max: 2 } });
  handler = createMovesHandler(async () => worker);
}, 120_000);

afterAll(async () => {
  await api?.close();
  await worker?.close();
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server?.stop();
});

async function sidesOf(slot: number): Promise<{ from: string; to: string }> {
  const from = (await api.slotMaps.current()).assignments[slot] as string;
  return { from, to: from === SHARDS[0] ? SHARDS[1] : SHARDS[0] };
}

describe('the moves worker on AWS-like logins and Lambda pools', () => {
  it('carries a slot move planned by the API to done while the application writes', async () => {
    const slot = 501;
    const { from, to } = await sidesOf(slot);
    const users = keysInSlot(slot, 4);
    await seedUsers(poolAs(MASTER, from), slot, users, 3);
    const planned = await api.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const app = poolAs(LOGINS.app, from, 1);
    let writing = true;
    let written = 0;
    const refused = new Set<string>();
    const writer = (async () => {
      while (writing) {
        await app.query(`update documents set title = 'w' || $2 where owner_id = $1`, [users[0], String(written)]).then(
          () => (written += 1),
          (err: unknown) => refused.add(String((err as { code?: unknown }).code)),
        );
        await new Promise((r) => setTimeout(r, 5));
      }
    })();

    const result = await handler(tick, lambdaContext);
    writing = false;
    await writer;

    expect(result.failed).toEqual([]);
    expect(result.ran).toContainEqual({ id: planned.id, state: 'done' });
    expect(await count(to, slot)).toEqual({ users: 4, documents: 12 });
    expect(await count(from, slot)).toEqual({ users: 0, documents: 0 });
    // The application's writes went through while the capture ran (as the master, who owns the
    // move log: shard migration 019), refused only by the fence.
    expect(written).toBeGreaterThan(0);
    expect([...refused].filter((code) => code !== 'CAF01' && code !== 'CAF02')).toEqual([]);
    // The mover's login read the source's timeline and its history at the fence (shard migration
    // 031 grants it timeline_history(); without it the history is NULL: sharding migration 014).
    const recorded = await poolAs(MASTER, SHARDS[0]).query<{ tl: number; history: string | null }>('select source_timeline::int as tl, source_history as history from catalog.move_jobs where id = $1', [planned.id]);
    expect(recorded.rows).toEqual([{ tl: 1, history: '' }]);
  });

  it('carries a directory-key move planned by the API to done', async () => {
    const [key] = keysInSlot(502, 1) as [string];
    const slot = keySlot(key);
    const { from, to } = await sidesOf(slot);
    await seedUsers(poolAs(MASTER, from), slot, [key], 2);
    const planned = await api.mover.plan({ kind: 'directory', key, to, createdBy: 'test' });

    const result = await handler(tick, lambdaContext);

    expect(result.failed).toEqual([]);
    expect(result.ran).toContainEqual({ id: planned.id, state: 'done' });
    expect(await count(to, slot)).toEqual({ users: 1, documents: 2 });
    // The application's login finds the move off `from` of the key's unit, and none off `to` (sharding migration 014).
    const lastMoveOff = async (shard: string) =>
      (await poolAs(LOGINS.app, SHARDS[0]).query<{ id: number; tl: number }>('select job_id::int as id, source_timeline::int as tl from catalog.last_move_off($1, $2, $3)', [shard, slot, key])).rows;
    expect({ from: await lastMoveOff(from), to: await lastMoveOff(to) }).toEqual({ from: [{ id: planned.id, tl: 1 }], to: [] });
  });

  it('rolls back a move the API cancelled after part of its copy', async () => {
    const slot = 503;
    const { from, to } = await sidesOf(slot);
    await seedUsers(poolAs(MASTER, from), slot, keysInSlot(slot, 4), 3);
    const planned = await api.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const until = Date.now() + 60_000;
    let looks = 0;
    const partial = new Mover({ catalog: poolAs(LOGINS.control, SHARDS[0], 1), shards: worker.primaries, slotMaps: worker.slotMaps, directory: worker.directory, wallClock: () => (++looks >= 5 ? until : until - 1) });
    expect((await partial.run(planned.id, { until })).state).toBe('copying');
    expect((await count(to, slot)).users).toBe(4);
    await api.mover.requestCancel(planned.id);

    const result = await handler(tick, lambdaContext);

    expect(result.failed).toEqual([]);
    expect(result.ran).toContainEqual({ id: planned.id, state: 'cancelled' });
    expect(await count(to, slot)).toEqual({ users: 0, documents: 0 });
    expect(await count(from, slot)).toEqual({ users: 4, documents: 12 });
  });

  it('answers the API with a conflict, not a database error, for a slot already moving, with the Lambda catalog pool', async () => {
    const slot = 504;
    const { to } = await sidesOf(slot);
    await api.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await expect(api.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).rejects.toMatchObject({ name: 'MoveConflictError' });
    await handler(tick, lambdaContext);
  });
});

describe('a directory move whose pin an operator deleted, flipped as ca_dms_control on the catalog', () => {
  it('takes the SHARE lock on catalog.slot_maps that its decision needs and carries the key to done', async () => {
    const [key] = keysInSlot(505, 1) as [string];
    const slot = keySlot(key);
    const { from, to } = await sidesOf(slot);
    await seedUsers(poolAs(MASTER, from), slot, [key], 2);
    const operator = new DirectoryStore(poolAs(MASTER, SHARDS[0], 1), { ttlMs: 0, shards: [...SHARDS] });
    let unpinned = false;
    // The operator deletes the move's pin under its fence: the key then routes by hash, and the
    // flip reads its slot's owner under `lock table catalog.slot_maps in share mode`. As the test
    // cluster's superuser, past sharding migration 010's guard (which refuses the master and
    // ca_dms_control that deletion, below): this test is of the flip of a pin deleted all the same.
    const superuser = new pg.Pool({ connectionString: server.urlFor(SHARDS[0]), max: 1 });
    pools.push(superuser);
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point === 'verifying' && !unpinned) unpinned = await deletePinPastGuard(superuser, key);
    };
    const mover = new Mover({ catalog: poolAs(LOGINS.control, SHARDS[0], 1), shards: worker.primaries, slotMaps: worker.slotMaps, directory: worker.directory, readerGraceMs: 0, hook });
    const planned = await api.mover.plan({ kind: 'directory', key, to, createdBy: 'test' });

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );

    expect({ unpinned, ended }).toEqual({ unpinned: true, ended: 'ended: done' });
    expect((await operator.entry(key))?.shardId).toBe(to);
    expect(await count(to, slot)).toEqual({ users: 1, documents: 2 });
    // The key's pin may not be deleted now (sharding migration 010, SQLSTATE CAF06), by the
    // catalog's owner (RDS's master, not a superuser) or the control plane's login alike: the
    // guard reads move_jobs as its owner, whatever the deleting login may read.
    const unpin = 'delete from catalog.shard_directory where key = $1';
    expect({
      master: await sqlstateOf(() => poolAs(MASTER, SHARDS[0], 1).query(unpin, [key])),
      control: await sqlstateOf(() => poolAs(LOGINS.control, SHARDS[0], 1).query(unpin, [key])),
    }).toEqual({ master: 'CAF06', control: 'CAF06' });
    expect((await operator.entry(key))?.shardId).toBe(to);
  });
});

describe("a directory move of a key pinned away from the shard its slot hashes to, checked on the target as ca_dms_mover", () => {
  /**
   * A key of `slot` pinned (by an operator) to the shard that does not own its slot, with its user
   * row and `documents` documents there; the move sends it to the slot's owner (its hash route),
   * so that fencing the target `incoming` first checks what the target holds of the key
   * (checkedIncoming: each of users, documents and document_keys locked in SHARE mode, then counts).
   */
  async function pinnedAway(slot: number, documents: number) {
    const [key] = keysInSlot(slot, 1) as [string];
    const { from: hashOwner, to: pinnedTo } = await sidesOf(slot);
    await seedUsers(poolAs(MASTER, pinnedTo), slot, [key], documents);
    await new DirectoryStore(poolAs(MASTER, SHARDS[0], 1), { ttlMs: 0, shards: [...SHARDS] }).set(key, pinnedTo, 'ops@example.com');
    const mover = new Mover({ catalog: poolAs(LOGINS.control, SHARDS[0], 1), shards: worker.primaries, slotMaps: worker.slotMaps, directory: worker.directory, readerGraceMs: 0 });
    const planned = await api.mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    const run = (): Promise<string> =>
      mover.run(planned.id).then(
        (j) => `ended: ${j.state}`,
        (e: Error) => `threw: ${e.message}`,
      );
    return { key, source: pinnedTo, target: hashOwner, planned, run };
  }
  /** How often the mover's login locked the target's users table in SHARE mode there (pg_stat_statements, read as the superuser). */
  async function shareLocksBy(login: string, database: string): Promise<number> {
    const admin = new pg.Client({ connectionString: server.urlFor(database) });
    await admin.connect();
    try {
      // The library is preloaded (it counts every statement); the view needs the extension, which
      // the emulated master may not create (shard migration 008 then leaves it out).
      await admin.query('create extension if not exists pg_stat_statements with schema public');
      const { rows } = await admin.query<{ n: number }>(
        `select coalesce(sum(s.calls), 0)::int as n from public.pg_stat_statements s join pg_roles r on r.oid = s.userid join pg_database d on d.oid = s.dbid
          where r.rolname = $1 and d.datname = $2 and s.query ~* '^lock table .*users.* in share mode'`,
        [login, database],
      );
      return rows[0]?.n ?? -1;
    } finally {
      await admin.end();
    }
  }

  it('checks the target without locking its tables (it waits for older writers as the mover login), finds nothing of the key there, and carries the key to done', async () => {
    const slot = 506;
    const { key, target, run } = await pinnedAway(slot, 2);
    const locksBefore = await shareLocksBy(LOGINS.mover, target);

    const outcome = await run();

    expect(outcome).toBe('ended: done');
    // Before the lock-free check (issue #15): one SHARE lock of each sharded table per check.
    expect(await shareLocksBy(LOGINS.mover, target)).toBe(locksBefore);
    expect((await worker.directory.entry(key))?.shardId).toBe(target);
    expect(await count(target, slot)).toEqual({ users: 1, documents: 2 });
  });

  it('stops the move, its fence of the target put back, when the target holds rows of the key written there by hash', async () => {
    const slot = 507;
    const { key, source, target, run } = await pinnedAway(slot, 2);
    // A writer that routed the key by hash (a process that had not seen the pin) wrote its user row there.
    await seedUsers(poolAs(MASTER, target), slot, [key], 0);

    const outcome = await run();

    expect(outcome).toMatch(
      new RegExp(`^threw: key ${key} was pinned to the source ${source} when this move read it, but its slot ${slot} hashes to the target ${target}, which already holds rows of it \\(1 in users\\)`),
    );
    const { rows } = await poolAs(MASTER, target).query<{ state: string }>(`select state from write_fences where kind = 'directory' and unit_id = $1`, [key]);
    expect(rows).toEqual([]);
    expect({ onSource: await count(source, slot), onTarget: await count(target, slot) }).toEqual({ onSource: { users: 1, documents: 2 }, onTarget: { users: 1, documents: 0 } });
  });
});
