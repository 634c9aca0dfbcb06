/**
 * Each control-plane function's own login against a real PostgreSQL, laid out as on AWS: the
 * catalog in the first shard's database, a second shard beside it. The logins are made by the
 * migrations function's code (`ensureLogin`) from the migrations' roles, and each runs its real
 * code path: the scaling API's health, statistics and rebalance check as `ca_dms_monitor`, a
 * full move as `ca_dms_mover`, a controller evaluation and the API's catalog writes as
 * `ca_dms_control`. Each is then refused what its code path must never do. A grant missing makes
 * a code path fail here; a grant too broad makes a refusal succeed.
 */
import { createHash, randomUUID } from 'node:crypto';
import { UpdateServiceCommand } from '@aws-sdk/client-ecs';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alternateUser, APPLICATION_ROLE, CONTROL_ROLE, ensureLogin, MONITOR_ROLE, MOVER_ROLE, scramVerifier } from '../../../functions/adapters/postgres/app-role.js';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { HistoryReader } from '../../../functions/adapters/postgres/history-reader.js';
import { LEASES, LeaseStore } from '../../../functions/adapters/postgres/lease-store.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { CATALOG_STATEMENT_TIMEOUT_MS } from '../../../functions/handlers/shared/db.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { shardCredentialsFromEnv } from '../../../functions/handlers/shared/sharding-env.js';
import { sqlstateOf, startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, givenOneService, ManualClock, mockControllerAws, topologyOf } from '../../support/scaling-fixtures.js';
import { keysInSlot, seedUsers } from '../sharding/fixtures/move-env.js';

const SHARDS = ['shard_a', 'shard_b'] as const;
const PASSWORD = 'least privilege';
const LOGINS = { control: 'ca_dms_control_user', monitor: 'ca_dms_monitor_user', mover: 'ca_dms_mover_user', app: 'ca_dms_app_user' } as const;
const CONFIG = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {} } };

const aws = mockControllerAws();
let server: TestPostgres;
const pools: pg.Pool[] = [];

/** A pool on `database` as `user` (the test password unless given). */
function poolAs(user: string, database: string, password = PASSWORD): pg.Pool {
  const pool = new pg.Pool({ connectionString: loginUrl(user, database, password), max: 4 });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
}

function loginUrl(user: string, database: string, password = PASSWORD): string {
  return `postgresql://${user}:${encodeURIComponent(password)}@127.0.0.1:${server.port}/${database}`;
}

/** The sharding configuration the API and the moves worker get, with `user`'s credentials in every URL. */
function shardingConfigAs(user: string) {
  return parseShardingConfig({
    strategy: 'hash_based',
    shards: SHARDS.map((shard_id) => ({ shard_id, database_url: loginUrl(user, shard_id), weight: 1, read_replicas: [] })),
    default_shard: SHARDS[0],
  });
}

beforeAll(async () => {
  server = await startTestPostgres({ settings: { shared_preload_libraries: 'pg_stat_statements' } });
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  for (const db of SHARDS) await admin.query(`create database ${db}`);
  await admin.end();
  // As on AWS: the catalog lives in the first shard's database; migrations run as the master user.
  const masters = SHARDS.map((db) => poolAs('postgres', db, 'postgres'));
  const [catalog, other] = masters as [pg.Pool, pg.Pool];
  // Shard migration 008 creates pg_stat_statements, preloaded here as by the RDS parameter group.
  await migrateAll({ catalog, shards: [catalog, other] });
  await ensureLogin(catalog, { username: LOGINS.control, password: PASSWORD }, { role: CONTROL_ROLE, settings: { statement_timeout: `${CATALOG_STATEMENT_TIMEOUT_MS}ms` } });
  for (const shard of masters) {
    await ensureLogin(shard, { username: LOGINS.monitor, password: PASSWORD }, { role: MONITOR_ROLE });
    await ensureLogin(shard, { username: LOGINS.mover, password: PASSWORD }, { role: MOVER_ROLE });
    await ensureLogin(shard, { username: LOGINS.app, password: PASSWORD }, { role: APPLICATION_ROLE });
  }
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server?.stop();
});

describe('the scaling API on the shards, as ca_dms_monitor', () => {
  let api: ShardingRuntime;
  beforeAll(async () => {
    api = await createShardingRuntime({ config: shardingConfigAs(LOGINS.monitor), catalog: poolAs(LOGINS.control, SHARDS[0]), actor: 'scaling-api', pools: { max: 2 } });
  });
  afterAll(async () => {
    await api.close();
  });

  it("reads health with other sessions' statements, statistics with exact counts, and the rebalance check", async () => {
    const [user] = keysInSlot(300, 1) as [string];
    await seedUsers(poolAs('postgres', SHARDS[0], 'postgres'), 300, [user], 3);
    const health = await api.inspector.health();
    const statistics = await api.inspector.statistics({ exact: true, slotMap: await api.slotMaps.current() });
    const check = await api.inspector.rebalanceCheck({ slotMap: await api.slotMaps.current(), directory: [] });

    const primaries = health.shards.map((s) => s.primary);
    expect(primaries.map((p) => p.facts.error)).toEqual([undefined, undefined]);
    expect(primaries.every((p) => p.facts.reachable)).toBe(true);
    const statements = primaries[0]?.statements;
    // The slowest statements are the migrations' and the seeding's, run by the master user:
    // without pg_read_all_stats (pg_monitor) their text reads '<insufficient privilege>'.
    expect(statements?.available).toBe(true);
    const texts = statements?.available === true ? statements.top.map((s) => s.query) : [];
    expect(texts.length).toBeGreaterThan(0);
    expect(texts.filter((q) => q === '<insufficient privilege>')).toEqual([]);
    expect(statistics.complete).toBe(true);
    expect(statistics.unreachable).toEqual([]);
    expect(check).toBeDefined();
  });

  it('cannot write data, change a fence, run DDL, or read the catalog', async () => {
    const monitor = poolAs(LOGINS.monitor, SHARDS[0]);
    const refused = {
      insertDocument: await sqlstateOf(() => monitor.query("insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), gen_random_uuid(), 1, 'x')")),
      deleteUsers: await sqlstateOf(() => monitor.query('delete from users')),
      openFence: await sqlstateOf(() => monitor.query("insert into write_fences (kind, unit_id) values ('slot', '1')")),
      dropTable: await sqlstateOf(() => monitor.query('drop table documents')),
      createTable: await sqlstateOf(() => monitor.query('create table scratch (id int)')),
      readJobs: await sqlstateOf(() => monitor.query('select * from catalog.move_jobs')),
      readMoveLog: await sqlstateOf(() => monitor.query('select * from move_changes')),
    };

    expect(refused).toEqual({
      insertDocument: '42501',
      deleteUsers: '42501',
      openFence: '42501',
      dropTable: '42501',
      createTable: '42501',
      readJobs: '42501',
      readMoveLog: '42501',
    });
  });

  it('records the routing it runs with in the catalog as ca_dms_control (sharding migration 022), which may not delete a record; the application login may not read them', async () => {
    const control = poolAs(LOGINS.control, SHARDS[0]);
    const app = poolAs(LOGINS.app, SHARDS[0]);
    const { rows } = await control.query<{ actor: string; routing: unknown }>(`select actor, routing from catalog.runtime_routings where actor = 'scaling-api'`);
    expect(rows).toEqual([{ actor: 'scaling-api', routing: { strategy: 'hash_based', override_hash: true, fallback: 'hash', enabled: true } }]);
    expect({
      deleteAsControl: await sqlstateOf(() => control.query('delete from catalog.runtime_routings')),
      readAsApp: await sqlstateOf(() => app.query('select * from catalog.runtime_routings')),
    }).toEqual({ deleteAsControl: '42501', readAsApp: '42501' });
  });
});

describe('the moves worker on the shards, as ca_dms_mover', () => {
  let worker: ShardingRuntime;
  beforeAll(async () => {
    worker = await createShardingRuntime({ config: shardingConfigAs(LOGINS.mover), catalog: poolAs(LOGINS.control, SHARDS[0]), actor: 'scaling-moves', pools: { max: 2 } });
  });
  afterAll(async () => {
    await worker.close();
  });

  it('carries a slot move to done: fences, capture, COPY both ways, verification and clean-up', async () => {
    const slot = 301;
    const from = (await worker.slotMaps.current()).assignments[slot] as string;
    const to = from === SHARDS[0] ? SHARDS[1] : SHARDS[0];
    await seedUsers(poolAs('postgres', from, 'postgres'), slot, keysInSlot(slot, 5), 4);
    const planned = await worker.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

    const done = await worker.mover.run(planned.id);

    expect(done.state).toBe('done');
    expect(done.sourceSummary).toEqual(done.targetSummary);
    expect(done.sourceSummary?.documents?.rows).toBe(20);
    expect(done.rowsDeleted).toBe(25);
    expect((await worker.slotMaps.current()).assignments[slot]).toBe(to);
  });

  it("skips the row triggers of its copy and clean-up where 006's grant was refused (as on RDS), through mover_replica_role(), which no other login may call", async () => {
    const slot = 302;
    const from = (await worker.slotMaps.current()).assignments[slot] as string;
    const to = from === SHARDS[0] ? SHARDS[1] : SHARDS[0];
    const masters = SHARDS.map((db) => poolAs('postgres', db, 'postgres'));
    // As on RDS: the mover's login may not set the parameter itself. A trigger of the test's own
    // counts the rows written with row triggers firing (an ORIGIN trigger: replica mode skips it).
    for (const m of masters) {
      await m.query(`revoke set on parameter session_replication_role from ${MOVER_ROLE};
        create table trigger_hits (tbl text, op text);
        create function count_trigger_hit() returns trigger language plpgsql security definer set search_path = public, pg_temp
          as $$ begin insert into trigger_hits values (tg_table_name, tg_op); return null; end $$;
        create trigger count_hits after insert or delete on users for each row execute function count_trigger_hit();
        create trigger count_hits after insert or delete on documents for each row execute function count_trigger_hit();`);
    }
    try {
      const mover = await poolAs(LOGINS.mover, from).connect();
      try {
        expect(await sqlstateOf(() => mover.query('set session_replication_role = replica'))).toBe('42501');
        await mover.query('begin');
        await mover.query('select mover_replica_role()');
        expect((await mover.query<{ role: string }>('select current_setting($1) as role', ['session_replication_role'])).rows[0]?.role).toBe('replica');
        await mover.query('commit');
        // For the transaction only.
        expect((await mover.query<{ role: string }>('select current_setting($1) as role', ['session_replication_role'])).rows[0]?.role).toBe('origin');
      } finally {
        mover.release();
      }
      for (const login of [LOGINS.app, LOGINS.monitor]) expect(await sqlstateOf(() => poolAs(login, from).query('select mover_replica_role()'))).toBe('42501');

      await seedUsers(poolAs('postgres', from, 'postgres'), slot, keysInSlot(slot, 5), 4);
      await masters[SHARDS.indexOf(from as (typeof SHARDS)[number])]?.query('truncate trigger_hits');
      const done = await worker.mover.run((await worker.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

      expect(done.state).toBe('done');
      expect(done.sourceSummary).toEqual(done.targetSummary);
      expect(done.rowsDeleted).toBe(25);
      const hits = await Promise.all(masters.map(async (m) => (await m.query<{ n: number }>('select count(*)::int as n from trigger_hits')).rows[0]?.n));
      expect(hits).toEqual([0, 0]);
    } finally {
      for (const m of masters) {
        await m.query(`drop trigger count_hits on users; drop trigger count_hits on documents; drop function count_trigger_hit(); drop table trigger_hits;
          grant set on parameter session_replication_role to ${MOVER_ROLE}`);
      }
    }
  });

  it("sees other sessions' open write transactions, which the drain before the copy waits for", async () => {
    const app = await poolAs(LOGINS.app, SHARDS[1]).connect();
    try {
      await app.query('begin');
      await app.query("insert into users (id, slot, email, display_name) values (gen_random_uuid(), 9, 'w@example.com', 'W')");
      const pid = (await app.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
      const { rows } = await poolAs(LOGINS.mover, SHARDS[1]).query<{ xact_start: Date | null; writing: boolean }>(
        'select xact_start, backend_xid is not null as writing from pg_stat_activity where pid = $1',
        [pid],
      );
      await app.query('rollback');

      expect(rows).toHaveLength(1);
      expect(rows[0]?.xact_start).toBeInstanceOf(Date);
      expect(rows[0]?.writing).toBe(true);
    } finally {
      app.release();
    }
  });

  it('cannot run DDL, truncate, or touch the catalog', async () => {
    const mover = poolAs(LOGINS.mover, SHARDS[0]);
    const refused = {
      dropTable: await sqlstateOf(() => mover.query('drop table documents')),
      createTable: await sqlstateOf(() => mover.query('create table scratch (id int)')),
      alterTable: await sqlstateOf(() => mover.query('alter table users add column x int')),
      truncate: await sqlstateOf(() => mover.query('truncate move_changes')),
      publishMap: await sqlstateOf(() => mover.query("insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (99, 1, '{x}', 'm', 'm')")),
      readJobs: await sqlstateOf(() => mover.query('select * from catalog.move_jobs')),
    };

    expect(refused).toEqual({ dropTable: '42501', createTable: '42501', alterTable: '42501', truncate: '42501', publishMap: '42501', readJobs: '42501' });
  });
});

describe('the control plane on the catalog, as ca_dms_control', () => {
  it("takes and releases a lease, runs an evaluation, records an alarm, and makes the API's configuration and switch changes", async () => {
    const control = poolAs(LOGINS.control, SHARDS[0]);
    const store = new CatalogStore(control, { defaults: parseScalingConfig(CONFIG) });
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
    const clock = new ManualClock(Date.UTC(2026, 0, 5, 12));

    const lease = await new LeaseStore(control).acquire(LEASES.movesWorker, { owner: 'test', ttlMs: 60_000 });
    await controllerFor({ topology: topologyOf(1), catalog: store, fallback: CONFIG, clock }).evaluate({ trigger: 'schedule' });
    await store.recordAlarm({ messageId: randomUUID(), alarmName: 'cpu-high', newState: 'ALARM', service: 'svc-0', reason: 'test' });
    await store.putConfig(CONFIG, { actor: 'test' });
    await store.setSwitch({ scope: 'svc-0', enabled: false, actor: 'test' });
    const history = await new HistoryReader(() => Promise.resolve(control)).page({ limit: 10 });
    if (lease.acquired) await lease.release();

    expect(aws.ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input.desiredCount)).toEqual([4]);
    expect(lease.acquired).toBe(true);
    expect((await store.listDecisions({ service: 'svc-0' }))[0]?.outcome).toBe('applied');
    expect(history.items.length).toBeGreaterThan(0);
  });

  it('cannot run DDL, rewrite the migrations record, delete history, or read shard data', async () => {
    const control = poolAs(LOGINS.control, SHARDS[0]);
    const refused = {
      createTable: await sqlstateOf(() => control.query('create table catalog.scratch (id int)')),
      dropTable: await sqlstateOf(() => control.query('drop table catalog.scaling_decisions')),
      truncate: await sqlstateOf(() => control.query('truncate catalog.scaling_decisions')),
      deleteHistory: await sqlstateOf(() => control.query('delete from catalog.scaling_decisions')),
      forgetMigration: await sqlstateOf(() => control.query('delete from catalog.schema_migrations')),
      rewriteMap: await sqlstateOf(() => control.query('update catalog.slot_maps set reason = $1', ['x'])),
      readUsers: await sqlstateOf(() => control.query('select * from users')),
    };

    expect(refused).toEqual({
      createTable: '42501',
      dropTable: '42501',
      truncate: '42501',
      deleteHistory: '42501',
      forgetMigration: '42501',
      rewriteMap: '42501',
      readUsers: '42501',
    });
  });

  it('keeps the application from altering the slot map or the directory', async () => {
    const app = poolAs(LOGINS.app, SHARDS[0]);
    const refused = {
      publishMap: await sqlstateOf(() => app.query("insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (99, 1, '{x}', 'a', 'a')")),
      pinKey: await sqlstateOf(() => app.query("insert into catalog.shard_directory (key, shard_id, updated_by) values ('k', 'shard_b', 'a')")),
      readJobs: await sqlstateOf(() => app.query('select * from catalog.move_jobs')),
      // Held, it would keep every map publication waiting (sharding migration 008).
      lockMap: await sqlstateOf(() => app.query('select catalog.lock_slot_maps_for_hash_route()')),
    };

    expect(refused).toEqual({ publishMap: '42501', pinKey: '42501', readJobs: '42501', lockMap: '42501' });
  });
});

describe("an application login on the catalog's database, where PUBLIC may create in public (PostgreSQL 14)", () => {
  /**
   * Overloads an application login can create in public that are an exact match for a call of the
   * control plane's catalog SQL (or the migrations runner's) where pg_catalog has only a
   * polymorphic, variadic or implicitly cast one. Each records who ran it and passes the call on,
   * so the code paths still work and every shadow taken shows up: run as ca_dms_control it could
   * publish a slot map or rewrite the directory (routing), as the migrations login anything.
   */
  const SHADOWS = `
    create table public.shadow_calls (what text, who name default current_user);
    grant insert, select on public.shadow_calls to public;
    create function public.shadow_mul(integer, interval) returns interval language sql
      as $$ insert into public.shadow_calls (what) values ('integer * interval') returning $2 operator(pg_catalog.*) $1::float8 $$;
    create operator public.* (leftarg = integer, rightarg = interval, function = public.shadow_mul);
    create function public.shadow_div(double precision, integer) returns double precision language sql
      as $$ insert into public.shadow_calls (what) values ('float8 / integer') returning $1 operator(pg_catalog./) $2::float8 $$;
    create operator public./ (leftarg = double precision, rightarg = integer, function = public.shadow_div);
    create function public.shadow_nmul(numeric, integer) returns numeric language sql
      as $$ insert into public.shadow_calls (what) values ('numeric * integer') returning $1 operator(pg_catalog.*) $2::numeric $$;
    create operator public.* (leftarg = numeric, rightarg = integer, function = public.shadow_nmul);
    create function public.shadow_cat8(text, bigint) returns text language sql
      as $$ insert into public.shadow_calls (what) values ('text || bigint') returning $1 operator(pg_catalog.||) $2::text $$;
    create operator public.|| (leftarg = text, rightarg = bigint, function = public.shadow_cat8);
    create function public.shadow_cat4(text, integer) returns text language sql
      as $$ insert into public.shadow_calls (what) values ('text || integer') returning $1 operator(pg_catalog.||) $2::text $$;
    create operator public.|| (leftarg = text, rightarg = integer, function = public.shadow_cat4);
    create function public.pg_try_advisory_xact_lock(text, integer) returns boolean language sql
      as $$ insert into public.shadow_calls (what) values ('pg_try_advisory_xact_lock(text, integer)') returning true $$;
    create function public.pg_advisory_xact_lock(text, integer) returns void language sql
      as $$ insert into public.shadow_calls (what) values ('pg_advisory_xact_lock(text, integer)') $$;
    create function public.pg_advisory_lock(text, text) returns void language sql
      as $$ insert into public.shadow_calls (what) values ('pg_advisory_lock(text, text)') $$;
    create function public.pg_advisory_unlock(text, text) returns boolean language sql
      as $$ insert into public.shadow_calls (what) values ('pg_advisory_unlock(text, text)') returning true $$;
    create function public.unnest(text[]) returns setof text language sql
      as $$ insert into public.shadow_calls (what) values ('unnest(text[])'); select pg_catalog.unnest($1) $$;
    create function public.jsonb_build_object(text, boolean, text, integer, text, jsonb) returns jsonb language sql
      as $$ insert into public.shadow_calls (what) values ('jsonb_build_object(decision detail)') returning pg_catalog.jsonb_build_object($1, $2, $3, $4, $5, $6) $$;
    create function public.shadow_agg(integer[], integer) returns integer[] language sql
      as $$ insert into public.shadow_calls (what) values ('array_agg(integer)') returning pg_catalog.array_append($1, $2) $$;
    create aggregate public.array_agg(integer) (sfunc = public.shadow_agg, stype = integer[], initcond = '{}');
    -- Same signatures as pg_catalog's (which hide them): a regression guard for the catalog's
    -- trigger functions and the plain calls of the stores.
    create function public.clock_timestamp() returns timestamptz language sql
      as $$ insert into public.shadow_calls (what) values ('clock_timestamp()') returning pg_catalog.clock_timestamp() $$;
    create function public.shadow_gt8(bigint, bigint) returns boolean language sql
      as $$ insert into public.shadow_calls (what) values ('bigint > bigint') returning $1 operator(pg_catalog.>) $2 $$;
    create operator public.> (leftarg = bigint, rightarg = bigint, function = public.shadow_gt8);`;
  const UNSHADOW = `
    drop aggregate public.array_agg(integer); drop function public.shadow_agg(integer[], integer);
    drop operator public.* (integer, interval); drop operator public./ (double precision, integer); drop operator public.* (numeric, integer);
    drop operator public.|| (text, bigint); drop operator public.|| (text, integer); drop operator public.> (bigint, bigint);
    drop function public.shadow_mul(integer, interval), public.shadow_div(double precision, integer), public.shadow_nmul(numeric, integer),
      public.shadow_cat8(text, bigint), public.shadow_cat4(text, integer), public.shadow_gt8(bigint, bigint), public.clock_timestamp(),
      public.pg_try_advisory_xact_lock(text, integer), public.pg_advisory_xact_lock(text, integer), public.pg_advisory_lock(text, text),
      public.pg_advisory_unlock(text, text), public.unnest(text[]), public.jsonb_build_object(text, boolean, text, integer, text, jsonb);
    drop table public.shadow_calls;`;

  it("runs none of its overloads as the control plane (leases, an evaluation, history, a move) or as the migrations' login", async () => {
    const master = poolAs('postgres', SHARDS[0], 'postgres');
    const app = poolAs(LOGINS.app, SHARDS[0]);
    // PostgreSQL 14's default, which shard migration 019 revokes where its login may.
    await master.query('grant create on schema public to public');
    await app.query(SHADOWS);
    const worker = await createShardingRuntime({ config: shardingConfigAs(LOGINS.mover), catalog: poolAs(LOGINS.control, SHARDS[0]), actor: 'scaling-moves', pools: { max: 2 } });
    try {
      const control = poolAs(LOGINS.control, SHARDS[0]);
      const store = new CatalogStore(control, { defaults: parseScalingConfig(CONFIG) });
      givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
      const clock = new ManualClock(Date.UTC(2026, 0, 6, 12));
      const history = new HistoryReader(() => Promise.resolve(control));

      const lease = await new LeaseStore(control).acquire(LEASES.evaluation, { owner: 'test', ttlMs: 60_000 });
      if (lease.acquired) await lease.release();
      await store.putConfig(CONFIG, { actor: 'test' });
      // The earlier test stopped svc-0.
      await store.setSwitch({ scope: 'svc-0', enabled: true, actor: 'test' });
      await controllerFor({ topology: topologyOf(1), catalog: store, fallback: CONFIG, clock }).evaluate({ trigger: 'schedule' });
      const waited = await store.withServiceLock('svc-0', () => Promise.resolve('held'), { wait: true });
      await store.appendBacklog({ records: [], dropped: 1, droppedFrom: clock.now() - 1000, droppedTo: clock.now() });
      const applied = await store.lastAppliedDecisions(['svc-0']);
      const page = await history.page({ limit: 50 });
      const series = await history.series({ since: new Date(clock.now() - 3_600_000), until: new Date(clock.now() + 60_000), stepSeconds: 60 });
      const slot = 303;
      const to = (await worker.slotMaps.current()).assignments[slot] === SHARDS[0] ? SHARDS[1] : SHARDS[0];
      const moved = await worker.mover.run((await worker.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
      await migrateAll({ catalog: master, shards: [master] });
      const calls = (await master.query<{ what: string; who: string }>('select distinct what, who from public.shadow_calls order by what, who')).rows;

      expect({ lease: lease.acquired, waited: waited.acquired, moved: moved.state }).toEqual({ lease: true, waited: true, moved: 'done' });
      expect(applied.get('svc-0')?.outcome).toBe('applied');
      expect(page.items.map((i) => i.type)).toEqual(expect.arrayContaining(['decision', 'gap', 'config_changed', 'started']));
      expect(series.buckets.length).toBeGreaterThan(0);
      expect(calls).toEqual([]);
    } finally {
      await worker.close();
      await app.query(UNSHADOW);
      await master.query('revoke create on schema public from public');
    }
  });
});

describe("an application login's locks on the catalog's database", () => {
  it('cannot take the lock of an evaluation (which would then stand aside) or of a switch (which would wait out its statement timeout)', async () => {
    const control = poolAs(LOGINS.control, SHARDS[0]);
    const store = new CatalogStore(control, { defaults: parseScalingConfig(CONFIG) });
    const app = await poolAs(LOGINS.app, SHARDS[0]).connect();
    try {
      // Every key either lock took in its advisory form (CatalogStore's 0x5ca1e class and the
      // switches' hashtext pair), held for the session as any login of the database may.
      await app.query("select pg_advisory_lock(x'5ca1e'::int, hashtext('svc-0')), pg_advisory_lock(hashtext('catalog.scaling_switches'), hashtext('svc-0'))");
      const evaluation = await store.withServiceLock('svc-0', () => Promise.resolve('evaluated'));
      const switched = await Promise.race([
        store.setSwitch({ scope: 'svc-0', enabled: true, actor: 'test' }).then(() => 'set'),
        new Promise<string>((resolve) => setTimeout(() => resolve('still waiting after 2 s'), 2000)),
      ]);

      expect({ evaluation, switched }).toEqual({ evaluation: { acquired: true, value: 'evaluated' }, switched: 'set' });
    } finally {
      app.release(true);
    }
  });

  it('holds a read lock on the slot map and the directory (what SELECT allows) without stalling a move', async () => {
    const worker = await createShardingRuntime({ config: shardingConfigAs(LOGINS.mover), catalog: poolAs(LOGINS.control, SHARDS[0]), actor: 'scaling-moves', pools: { max: 2 } });
    const app = await poolAs(LOGINS.app, SHARDS[0]).connect();
    try {
      await app.query('begin');
      await app.query('lock table catalog.slot_maps, catalog.shard_directory in access share mode');
      const slot = 304;
      const to = (await worker.slotMaps.current()).assignments[slot] === SHARDS[0] ? SHARDS[1] : SHARDS[0];
      const moved = await worker.mover.run((await worker.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

      expect(moved.state).toBe('done');
    } finally {
      await app.query('rollback').catch(() => undefined);
      app.release();
      await worker.close();
    }
  });

  it("cannot hold up the migrations (the deploy) by taking their lock", async () => {
    const master = poolAs('postgres', SHARDS[0], 'postgres');
    const app = await poolAs(LOGINS.app, SHARDS[0]).connect();
    try {
      // The runner's advisory key for each set: (0x0ca0d, the first 4 bytes of sha256(set name)).
      const key = (set: string): number => createHash('sha256').update(set).digest().readInt32BE(0);
      for (const set of ['catalog', 'sharding', 'shard']) await app.query('select pg_advisory_lock($1::integer, $2::integer)', [0x0ca0d, key(set)]);
      const migrated = await Promise.race([
        migrateAll({ catalog: master, shards: [master] }).then((r) => r.map((s) => s.applied.length)),
        new Promise<string>((resolve) => setTimeout(() => resolve('still waiting after 3 s'), 3000)),
      ]);

      expect(migrated).toEqual([0, 0, 0]);
    } finally {
      app.release(true);
    }
  });

  it('may not lock the rows of the slot map, the directory or the slots\' pin locks, nor read or lock the move jobs, leases or history', async () => {
    const app = poolAs(LOGINS.app, SHARDS[0]);
    const inTransaction = (sql: string) => async (): Promise<void> => {
      const c = await app.connect();
      try {
        await c.query('begin');
        await c.query(sql);
      } finally {
        await c.query('rollback').catch(() => undefined);
        c.release();
      }
    };
    const refused = {
      shareMap: await sqlstateOf(() => app.query('select version from catalog.slot_maps for share')),
      keyShareDirectory: await sqlstateOf(() => app.query('select key from catalog.shard_directory for key share')),
      updateDirectory: await sqlstateOf(() => app.query('select key from catalog.shard_directory for update')),
      // A pin's and a slot change's lock (sharding migration 017): held, it would stall both.
      shareSlotPinLocks: await sqlstateOf(() => app.query('select slot from catalog.slot_pin_locks for share')),
      lockMap: await sqlstateOf(inTransaction('lock table catalog.slot_maps in share mode')),
      lockDirectory: await sqlstateOf(inTransaction('lock table catalog.shard_directory in row exclusive mode')),
      readLeases: await sqlstateOf(() => app.query('select * from catalog.leases')),
      lockJobs: await sqlstateOf(inTransaction('lock table catalog.move_jobs in access share mode')),
      readDecisions: await sqlstateOf(() => app.query('select * from catalog.scaling_decisions')),
      readSwitches: await sqlstateOf(() => app.query('select * from catalog.scaling_switches')),
      readMigrations: await sqlstateOf(() => app.query('select * from catalog.schema_migrations')),
    };

    expect(refused).toEqual({
      shareMap: '42501',
      keyShareDirectory: '42501',
      updateDirectory: '42501',
      shareSlotPinLocks: '42501',
      lockMap: '42501',
      lockDirectory: '42501',
      readLeases: '42501',
      lockJobs: '42501',
      readDecisions: '42501',
      readSwitches: '42501',
      readMigrations: '42501',
    });
  });
});

describe('the alternating-users rotation', () => {
  it("gives the clone the role's grants and the login's own statement timeout once the rotation sets its password", async () => {
    const clone = alternateUser(LOGINS.control);
    // What the hosted rotation does to an existing alternate user: set its password, nothing else.
    await poolAs('postgres', SHARDS[0], 'postgres').query(`alter user ${clone} with password '${scramVerifier('rotated')}'`);
    const pool = poolAs(clone, SHARDS[0], 'rotated');

    const { rows } = await pool.query<{ statement_timeout: string }>('show statement_timeout');
    const leases = await sqlstateOf(() => new LeaseStore(pool).acquire('rotation-test', { owner: clone, ttlMs: 1000 }));
    const ddl = await sqlstateOf(() => pool.query('create table catalog.scratch (id int)'));

    expect(rows[0]?.statement_timeout).toBe('10s');
    expect(leases).toBe('ok');
    expect(ddl).toBe('42501');
  });

  it('leaves the password of the user the secret does not name alone on a redeploy', async () => {
    const shard = poolAs('postgres', SHARDS[1], 'postgres');
    await shard.query(`alter user ${alternateUser(LOGINS.monitor)} with password '${scramVerifier('previous')}'`);

    await ensureLogin(shard, { username: LOGINS.monitor, password: 'next' }, { role: MONITOR_ROLE });
    const previous = await sqlstateOf(() => poolAs(alternateUser(LOGINS.monitor), SHARDS[1], 'previous').query('select 1'));
    const current = await sqlstateOf(() => poolAs(LOGINS.monitor, SHARDS[1], 'next').query('select 1'));

    expect({ previous, current }).toEqual({ previous: 'ok', current: 'ok' });
  });

  it("lets a warm shard pool follow its login across rotations: a refused connection re-reads the secret and logs in as the user it names", async () => {
    const admin = poolAs('postgres', SHARDS[1], 'postgres');
    const clone = alternateUser(LOGINS.mover);
    let secret: { username: string; password: string } = { username: LOGINS.mover, password: PASSWORD };
    const config = { shards: [{ shard_id: SHARDS[1], database_url: loginUrl(LOGINS.mover, SHARDS[1]), read_replicas: [] }] };
    const following = ShardPools.fromConfig(config, { max: 1, credentials: () => Promise.resolve(secret) });
    const fixed = ShardPools.fromConfig(config, { max: 1 });
    const userOf = async (pools: ShardPools): Promise<string> => {
      const client = await pools.primary(SHARDS[1]).pool.connect();
      try {
        return (await client.query<{ u: string }>('select current_user as u')).rows[0]?.u ?? '';
      } finally {
        client.release(true); // the next query needs a new connection, i.e. a new login
      }
    };
    try {
      const before = await userOf(following);
      await userOf(fixed);
      // Two rotations: the secret names the clone with a new password, then the original user's
      // password changes too (what the second rotation does to the user a pool started with).
      await admin.query(`alter user ${clone} with password '${scramVerifier('second')}'`);
      secret = { username: clone, password: 'second' };
      await admin.query(`alter user ${LOGINS.mover} with password '${scramVerifier('third')}'`);

      const after = await userOf(following);
      const stuck = await sqlstateOf(() => userOf(fixed));

      expect({ before, after, stuck }).toEqual({ before: LOGINS.mover, after: clone, stuck: '28P01' });
    } finally {
      await admin.query(`alter user ${LOGINS.mover} with password '${scramVerifier(PASSWORD)}'`);
      await Promise.all([following.end(), fixed.end()]);
    }
  });

  it("maps each shard of the sharding document to its login's secret, in order", async () => {
    const arn = (n: number) => `arn:aws:secretsmanager:eu-west-1:123456789012:secret:shard-${n}-mover-AbCdEf`;
    const sm = mockClient(SecretsManagerClient);
    for (const n of [1, 2]) sm.on(GetSecretValueCommand, { SecretId: arn(n) }).resolves({ SecretString: JSON.stringify({ username: `mover${n}`, password: 'p', host: 'h' }) });
    const credentials = shardCredentialsFromEnv(
      { SHARDING_CONFIG_JSON: JSON.stringify({ shards: [{ shard_id: 'shard-001', database_url: 'postgresql://h/db' }, { shard_id: 'shard-002', database_url: 'postgresql://h/db' }] }), SHARD_DB_SECRET_ARNS: JSON.stringify([arn(1), arn(2)]) },
      new SecretsManagerClient({ region: 'eu-west-1' }),
    );

    const second = await credentials?.('shard-002');
    const unknown = await credentials?.('shard-009').then(() => 'ok', (err: Error) => err.message);
    sm.restore();

    expect(second?.username).toBe('mover2');
    expect(unknown).toMatch(/SHARD_DB_SECRET_ARNS: no secret for shard shard-009/);
  });
});
