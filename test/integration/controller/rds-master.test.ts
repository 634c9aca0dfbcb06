/**
 * The migrations and the logins they make, run as RDS's master user would run them: a login that
 * is NOT a superuser, member of `rds_superuser`, owner of the shard databases. What is emulated,
 * and why, is in `test/support/rds-master.ts`.
 *
 * A migration or login statement that needs a true superuser fails this test.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alternateUser, APPLICATION_ROLE, CONTROL_ROLE, ensureLogin, MONITOR_ROLE, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { CATALOG_STATEMENT_TIMEOUT_MS } from '../../../functions/handlers/shared/db.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { createShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { keysInSlot, seedUsers } from '../sharding/fixtures/move-env.js';
import { sqlstateOf, startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { emulateRdsMaster } from '../../support/rds-master.js';

const MASTER = 'ca_dms_admin';
const MASTER_PASSWORD = 'rds master';
/** As on AWS: the catalog lives in the first shard's database. */
const SHARDS = ['ca_dms_1', 'ca_dms_2'] as const;

let server: TestPostgres;
const pools: pg.Pool[] = [];

function masterPool(database: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: `postgresql://${MASTER}:${encodeURIComponent(MASTER_PASSWORD)}@127.0.0.1:${server.port}/${database}`, max: 2 });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
}

beforeAll(async () => {
  server = await startTestPostgres({ settings: { shared_preload_libraries: 'pg_stat_statements' } });
  await emulateRdsMaster(server.url, { master: MASTER, password: MASTER_PASSWORD, databases: SHARDS });
});

afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server?.stop();
});

describe("RDS's master user (rds_superuser, not a superuser)", () => {
  it('is refused what only a superuser may do, so the emulation bites', async () => {
    const master = masterPool(SHARDS[0]);
    const { rows } = await master.query<{ super: boolean }>('select rolsuper as super from pg_roles where rolname = current_user');

    expect(rows[0]?.super).toBe(false);
    expect(await sqlstateOf(() => master.query('create extension pg_stat_statements'))).toBe('42501');
    expect(await sqlstateOf(() => master.query('grant set on parameter session_replication_role to pg_monitor'))).toBe('42501');
  });

  it('runs every migration set where it belongs and makes every least-privilege login, as the migrations function does on AWS', async () => {
    const [catalog, other] = SHARDS.map(masterPool) as [pg.Pool, pg.Pool];

    const results = await migrateAll({ catalog, shards: [catalog, other] });
    await ensureLogin(catalog, { username: 'ca_dms_control_user', password: 'c' }, { role: CONTROL_ROLE, settings: { statement_timeout: `${CATALOG_STATEMENT_TIMEOUT_MS}ms` } });
    for (const shard of [catalog, other]) {
      await ensureLogin(shard, { username: 'ca_dms_app_user', password: 'a' }, { role: APPLICATION_ROLE });
      await ensureLogin(shard, { username: 'ca_dms_monitor_user', password: 'm' }, { role: MONITOR_ROLE });
      await ensureLogin(shard, { username: 'ca_dms_mover_user', password: 'v' }, { role: MOVER_ROLE });
    }

    expect(results.map((r) => `${r.target}/${r.set}`)).toEqual(['catalog/catalog', 'catalog/sharding', 'shard 1/shard', 'shard 2/shard']);
    expect(results.every((r) => r.applied.length > 0)).toBe(true);
    // The grants of predefined roles took: without them the monitor reads other sessions' rows
    // and statements as '<insufficient privilege>', and the mover's drain sees no writer.
    const { rows } = await catalog.query<{ member: string; role: string }>(
      `select m.rolname as member, r.rolname as role
         from pg_auth_members a join pg_roles m on m.oid = a.member join pg_roles r on r.oid = a.roleid
        where m.rolname in ('ca_dms_monitor', 'ca_dms_mover') and r.rolname like 'pg\\_%'
        order by 1, 2`,
    );
    expect(rows).toEqual([
      { member: 'ca_dms_monitor', role: 'pg_monitor' },
      { member: 'ca_dms_mover', role: 'pg_read_all_stats' },
      { member: 'ca_dms_mover', role: 'pg_signal_backend' },
    ]);
    const users = await catalog.query<{ rolname: string }>("select rolname from pg_roles where rolname like 'ca\\_dms\\_%\\_user%' order by 1");
    expect(users.rows.map((r) => r.rolname)).toEqual(
      ['ca_dms_app_user', 'ca_dms_control_user', 'ca_dms_monitor_user', 'ca_dms_mover_user'].flatMap((u) => [u, alternateUser(u)]).sort(),
    );
  });

  it("lets the mover's login carry a move to done with its row triggers firing where neither it nor mover_replica_role()'s owner may set session_replication_role", async () => {
    // On RDS the function's owner, the master, is a member of rds_superuser, which RDS lets set
    // the parameter; this emulation cannot, so it shows the way down: the move still finishes.
    const mover = new pg.Pool({ connectionString: `postgresql://ca_dms_mover_user:v@127.0.0.1:${server.port}/${SHARDS[0]}`, max: 1 });
    pools.push(mover);
    const { rows: owner } = await masterPool(SHARDS[0]).query<{ owner: string }>("select proowner::regrole::text as owner from pg_proc where proname = 'mover_replica_role'");
    expect(owner).toEqual([{ owner: MASTER }]);
    expect(await sqlstateOf(() => mover.query('select mover_replica_role()'))).toBe('42501');

    const config = parseShardingConfig({
      strategy: 'hash_based',
      shards: SHARDS.map((shard_id) => ({ shard_id, database_url: `postgresql://ca_dms_mover_user:v@127.0.0.1:${server.port}/${shard_id}`, weight: 1, read_replicas: [] })),
      default_shard: SHARDS[0],
    });
    const control = new pg.Pool({ connectionString: `postgresql://ca_dms_control_user:c@127.0.0.1:${server.port}/${SHARDS[0]}`, max: 2 });
    pools.push(control);
    // Each cold start records its routing as the control login (sharding migration 022's grants on
    // a catalog the master migrated): the first inserts, the next moves its seen_at (on conflict
    // update), bounded by its own lock_timeout (runtime-routings.ts), nothing told.
    const notRecorded: unknown[] = [];
    const onRoutingNotRecorded = (e: unknown): void => void notRecorded.push(e);
    await (await createShardingRuntime({ config, catalog: control, actor: 'scaling-api', pools: { max: 1 }, onRoutingNotRecorded })).close();
    await (await createShardingRuntime({ config, catalog: control, actor: 'scaling-api', pools: { max: 1 }, onRoutingNotRecorded })).close();
    const worker = await createShardingRuntime({ config, catalog: control, actor: 'scaling-moves', pools: { max: 2 }, onRoutingNotRecorded });
    expect(notRecorded).toEqual([]);
    const { rows: recorded } = await control.query<{ actor: string; updated: boolean }>('select actor, seen_at > first_seen_at as updated from catalog.runtime_routings order by actor');
    expect(recorded).toEqual([
      { actor: 'scaling-api', updated: true },
      { actor: 'scaling-moves', updated: false },
    ]);
    try {
      const slot = 301;
      const from = (await worker.slotMaps.current()).assignments[slot] as string;
      const to = from === SHARDS[0] ? SHARDS[1] : SHARDS[0];
      await seedUsers(masterPool(from), slot, keysInSlot(slot, 5), 4);

      const done = await worker.mover.run((await worker.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

      expect(done.state).toBe('done');
      expect(done.sourceSummary).toEqual(done.targetSummary);
      expect(done.sourceSummary?.documents?.rows).toBe(20);
      expect(done.rowsDeleted).toBe(25);
    } finally {
      await worker.close();
    }
  });
});
