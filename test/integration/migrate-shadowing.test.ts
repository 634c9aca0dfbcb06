/**
 * The migrations runner where another login may create in a schema on its search_path (PUBLIC
 * may CREATE in `public` on PostgreSQL 14; shard migration 019 revokes it only where its login
 * may, so here it is granted back). The migrations call functions unqualified (`format(...)` in
 * catalog 005 and shard 013, with `name` arguments where pg_catalog's takes `VARIADIC "any"`),
 * and an overload in `public` that matches such a call exactly is preferred over pg_catalog's
 * (CVE-2018-1058's pattern): it would run as the migrations login (a superuser here, RDS's master
 * user on AWS) on the deploy that applies those migrations to a database an earlier release
 * migrated, where the application login already exists.
 */
import { cp, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureApplicationLogin } from '../../functions/adapters/postgres/app-role.js';
import { MigrationError, runMigrations } from '../../functions/adapters/postgres/migrate.js';
import { DEFAULT_MIGRATIONS_DIR } from '../../functions/handlers/shared/migrations.js';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';
import { emulateRdsMaster } from '../support/rds-master.js';

const APP = { username: 'shadowing_app', password: 'shadowing pass' };

/** Overloads of format() exactly matching the calls of catalog 005 and shard 013 and 019, each noting who ran it. */
const SHADOWS = `
  create table public.shadow_calls (what text, who name default current_user);
  grant insert on public.shadow_calls to public;
  create function public.format(f text, a name, b name, c text) returns text language sql
    as $$ insert into public.shadow_calls (what) values ('format(text, name, name, text)') returning pg_catalog.format(f, a, b, c) $$;
  create function public.format(f text, a name, b text, c name) returns text language sql
    as $$ insert into public.shadow_calls (what) values ('format(text, name, text, name)') returning pg_catalog.format(f, a, b, c) $$;
  create function public.format(f text, a name, b text) returns text language sql
    as $$ insert into public.shadow_calls (what) values ('format(text, name, text)') returning pg_catalog.format(f, a, b) $$;`;

let server: TestPostgres;
const pools: pg.Pool[] = [];
const dirs: string[] = [];

function poolOn(database: string, login?: { username: string; password: string }): pg.Pool {
  const url = new URL(server.urlFor(database));
  if (login) {
    url.username = login.username;
    url.password = login.password;
  }
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
}

/** A copy of a migration set's first `count` files: what an earlier release applied. */
async function firstOf(set: string, count: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `mig-${set}-`));
  dirs.push(dir);
  for (const f of (await readdir(join(DEFAULT_MIGRATIONS_DIR, set))).sort().slice(0, count)) await cp(join(DEFAULT_MIGRATIONS_DIR, set, f), join(dir, f));
  return dir;
}

/** A database migrated by an earlier release (shard up to 012, catalog up to 004), with the application login. */
async function earlierRelease(database: string): Promise<pg.Pool> {
  const admin = poolOn('postgres');
  await admin.query(`create database ${database}`);
  const master = poolOn(database);
  await runMigrations(master, 'shard', await firstOf('shard', 12));
  await runMigrations(master, 'catalog', await firstOf('catalog', 4));
  await ensureApplicationLogin(master, APP);
  // PostgreSQL 14's default, which shard migration 019 revokes where its login may.
  await master.query('grant create on schema public to public');
  return master;
}

async function applied(pool: pg.Pool, set: string): Promise<number> {
  return (await pool.query<{ n: number }>('select count(*)::int as n from catalog.schema_migrations where set_name = $1', [set])).rows[0]?.n ?? -1;
}

beforeAll(async () => {
  server = await startTestPostgres();
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  await server?.stop();
});

describe("the migrations runner where the application login may create in public (PostgreSQL 14)", () => {
  it("refuses a deploy while public holds the application login's overloads, runs none of them, and applies everything once they are dropped", async () => {
    const master = await earlierRelease('mig_shadowed');
    const app = poolOn('mig_shadowed', APP);
    await app.query(SHADOWS);

    const shard = await runMigrations(master, 'shard', join(DEFAULT_MIGRATIONS_DIR, 'shard')).catch((err: unknown) => err);
    const catalog = await runMigrations(master, 'catalog', join(DEFAULT_MIGRATIONS_DIR, 'catalog')).catch((err: unknown) => err);
    const calls = (await master.query<{ what: string; who: string }>('select distinct what, who from public.shadow_calls order by 1, 2')).rows;

    expect(calls).toEqual([]);
    expect(shard).toBeInstanceOf(MigrationError);
    expect((shard as Error).message).toMatch(/^shard: migration 013_pinned_search_path\.sql not applied: .*format\(text,name,name,text\) owned by shadowing_app/);
    expect(catalog).toBeInstanceOf(MigrationError);
    expect((catalog as Error).message).toMatch(/^catalog: migration 005_role_statement_timeout\.sql not applied/);
    expect({ shard: await applied(master, 'shard'), catalog: await applied(master, 'catalog') }).toEqual({ shard: 12, catalog: 4 });

    await app.query('drop function public.format(text, name, name, text), public.format(text, name, text, name), public.format(text, name, text)');
    const after = await runMigrations(master, 'shard', join(DEFAULT_MIGRATIONS_DIR, 'shard'));
    expect(after.applied[0]).toBe('013_pinned_search_path.sql');
    expect((await runMigrations(master, 'catalog', join(DEFAULT_MIGRATIONS_DIR, 'catalog'))).applied[0]).toBe('005_role_statement_timeout.sql');
  });

  it('rolls back a migration during which another login came to own a function on its search_path', async () => {
    const master = await earlierRelease('mig_shadowed_meanwhile');
    // Stands for an overload created by another session while the migration ran.
    const dir = await mkdtemp(join(tmpdir(), 'mig-meanwhile-'));
    dirs.push(dir);
    await writeFile(
      join(dir, '001_meanwhile.sql'),
      `create table public.meanwhile (id int);
       create function public.meanwhile_fn() returns int language sql as $$ select 1 $$;
       alter function public.meanwhile_fn() owner to ${APP.username};`,
    );

    const err = await runMigrations(master, 'meanwhile', dir).catch((e: unknown) => e);

    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/001_meanwhile\.sql not applied: .*\(found while it ran, so it was rolled back\): meanwhile_fn\(\) owned by shadowing_app/);
    const { rows } = await master.query("select to_regclass('public.meanwhile') as t, to_regprocedure('public.meanwhile_fn()') as f");
    expect(rows[0]).toEqual({ t: null, f: null });
    expect(await applied(master, 'meanwhile')).toBe(0);
  });

  it("refuses the overloads of a login that is a member of the runner's role without its rights (PostgreSQL 16: INHERIT FALSE, SET FALSE)", async () => {
    const master = await earlierRelease('mig_bare_member');
    const member = { username: 'mig_bare_member', password: 'member pass' };
    await master.query(`create role ${member.username} login password '${member.password}'`);
    await master.query(`do $$ begin execute pg_catalog.format('grant %I to ${member.username} with inherit false, set false', current_user); end $$`);
    // A member in name only: none of the runner's rights, nor a way to take them.
    const { rows: membership } = await master.query(
      `select pg_has_role($1, current_user, 'MEMBER') as member, pg_has_role($1, current_user, 'USAGE') as usage, pg_has_role($1, current_user, 'SET') as set`,
      [member.username],
    );
    await poolOn('mig_bare_member', member).query(SHADOWS);

    const err = await runMigrations(master, 'shard', join(DEFAULT_MIGRATIONS_DIR, 'shard')).catch((e: unknown) => e);
    const calls = (await master.query<{ what: string; who: string }>('select distinct what, who from public.shadow_calls order by 1, 2')).rows;

    expect(membership).toEqual([{ member: true, usage: false, set: false }]);
    expect(calls).toEqual([]);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/^shard: migration 013_pinned_search_path\.sql not applied: .*format\(text,name,name,text\) owned by mig_bare_member/);
  });

  it("refuses the overloads of a login that inherits the runner's privileges but may not SET ROLE to it (PostgreSQL 16: INHERIT TRUE, SET FALSE), which would gain its attributes (superuser here)", async () => {
    const master = await earlierRelease('mig_inherit_only');
    const heir = { username: 'mig_inherit_only', password: 'heir pass' };
    await master.query(`create role ${heir.username} login password '${heir.password}'`);
    await master.query(`do $$ begin execute pg_catalog.format('grant %I to ${heir.username} with inherit true, set false', current_user); end $$`);
    const heirPool = poolOn('mig_inherit_only', heir);
    // Inheriting a role's privileges is not having its attributes: the heir cannot act as a superuser.
    const createRole = await heirPool.query('create role mig_inherit_only_probe').catch((e: unknown) => e);
    await heirPool.query(SHADOWS);

    const err = await runMigrations(master, 'shard', join(DEFAULT_MIGRATIONS_DIR, 'shard')).catch((e: unknown) => e);
    const calls = (await master.query<{ what: string; who: string }>('select distinct what, who from public.shadow_calls order by 1, 2')).rows;

    expect((createRole as Error).message).toMatch(/permission denied to create role/);
    expect(calls).toEqual([]);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/^shard: migration 013_pinned_search_path\.sql not applied: .*format\(text,name,name,text\) owned by mig_inherit_only/);
  });

  it("applies migrations where public holds functions of logins that hold the runner's rights: by inheriting them with SET ROLE, or by SET ROLE alone", async () => {
    const master = await earlierRelease('mig_full_members');
    for (const [name, options] of [['mig_inherits', 'inherit true'], ['mig_sets', 'inherit false, set true']] as const) {
      await master.query(`create role ${name} login password 'pass'`);
      await master.query(`do $$ begin execute pg_catalog.format('grant %I to ${name} with ${options}', current_user); end $$`);
      await poolOn('mig_full_members', { username: name, password: 'pass' }).query(`create function public.${name}_helper() returns int language sql as $$ select 1 $$`);
    }

    const r = await runMigrations(master, 'shard', join(DEFAULT_MIGRATIONS_DIR, 'shard'));

    expect(r.applied[0]).toBe('013_pinned_search_path.sql');
  });

  it("refuses the overloads of the database's owner when the owner is an ordinary login and the runner a superuser, and runs none of them", async () => {
    const admin = poolOn('postgres');
    await admin.query("create role mig_plain_owner login password 'owner pass'");
    await admin.query('create database mig_plain_owned owner mig_plain_owner');
    const runner = poolOn('mig_plain_owned');
    await runMigrations(runner, 'shard', await firstOf('shard', 12));
    // From PostgreSQL 15 on the owner of the database owns public (pg_database_owner): no grant needed.
    await poolOn('mig_plain_owned', { username: 'mig_plain_owner', password: 'owner pass' }).query(SHADOWS);

    const err = await runMigrations(runner, 'shard', join(DEFAULT_MIGRATIONS_DIR, 'shard')).catch((e: unknown) => e);
    const calls = (await runner.query<{ what: string; who: string }>('select distinct what, who from public.shadow_calls order by 1, 2')).rows;

    expect(calls).toEqual([]);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/^shard: migration 013_pinned_search_path\.sql not applied: .*format\(text,name,name,text\) owned by mig_plain_owner/);
    expect((err as Error).message).toContain("The database's owner mig_plain_owner is among them");
    expect(await applied(runner, 'shard')).toBe(12);
  });

  it("applies migrations where public holds functions of the database's owner (the master user that ran the earlier ones) when the runner is an admin login with no attribute or membership the owner lacks", async () => {
    const admin = poolOn('postgres');
    await admin.query("create role mig_db_owner login createrole createdb password 'owner pass'");
    await admin.query("create role mig_admin login createrole password 'admin pass'");
    await admin.query('create database mig_owned owner mig_db_owner');
    await admin.query('grant create on database mig_owned to mig_admin');
    const owner = poolOn('mig_owned', { username: 'mig_db_owner', password: 'owner pass' });
    await owner.query('create function public.owner_helper() returns int language sql as $$ select 1 $$');
    const runner = poolOn('mig_owned', { username: 'mig_admin', password: 'admin pass' });

    const r = await runMigrations(runner, 'catalog', join(DEFAULT_MIGRATIONS_DIR, 'catalog'));

    expect(r.applied.length).toBeGreaterThan(4);
    expect(await applied(runner, 'catalog')).toBe(r.applied.length);
  });

  it("refuses the functions of the database's owner when the runner holds what the owner does not: an attribute (CREATEROLE) or a role (pg_write_server_files)", async () => {
    const admin = poolOn('postgres');
    await admin.query("create role mig_weak_owner login password 'owner pass'");
    await admin.query("create role mig_attr_admin login createrole password 'admin pass'");
    await admin.query("create role mig_role_admin login password 'admin pass'");
    await admin.query('grant pg_write_server_files to mig_role_admin');
    const outcomes: Record<string, string> = {};
    for (const runnerName of ['mig_attr_admin', 'mig_role_admin']) {
      const database = `${runnerName}_db`;
      await admin.query(`create database ${database} owner mig_weak_owner`);
      await admin.query(`grant create on database ${database} to ${runnerName}`);
      const owner = poolOn(database, { username: 'mig_weak_owner', password: 'owner pass' });
      await owner.query(`grant create on schema public to ${runnerName}`);
      await owner.query('create function public.owner_helper() returns int language sql as $$ select 1 $$');
      const runner = poolOn(database, { username: runnerName, password: 'admin pass' });
      const dir = await mkdtemp(join(tmpdir(), 'mig-owner-'));
      dirs.push(dir);
      await writeFile(join(dir, '001_table.sql'), 'create table public.owner_probe (id int);');
      const err = await runMigrations(runner, 'owner', dir).catch((e: unknown) => e);
      outcomes[runnerName] = err instanceof MigrationError ? (/\(found before it ran\): (.*?)\. Drop them/.exec(err.message)?.[1] ?? err.message) : String(err);
    }

    expect(outcomes).toEqual({ mig_attr_admin: 'owner_helper() owned by mig_weak_owner', mig_role_admin: 'owner_helper() owned by mig_weak_owner' });
  });

  it("refuses a migration that sets its own search_path to a schema holding another login's functions, before any of it runs", async () => {
    const master = await earlierRelease('mig_own_path');
    await master.query('create schema planted');
    await master.query(`grant usage, create on schema planted to ${APP.username}`);
    // An overload preferred over pg_catalog's format(text, variadic "any"), leaving a trace that
    // no rollback undoes: a file the server writes with the caller's rights (a superuser's here).
    await poolOn('mig_own_path', APP).query(`
      create function planted.format(f text, a text) returns text language plpgsql as $$
      begin
        execute 'copy (select current_user) to ' || pg_catalog.quote_literal(pg_catalog.current_setting('data_directory') || '/planted_evidence');
        return pg_catalog.format(f, a);
      end $$`);
    const dir = await mkdtemp(join(tmpdir(), 'mig-own-path-'));
    dirs.push(dir);
    await writeFile(join(dir, '001_own_path.sql'), "set local search_path = planted, public;\nselect format('%s', 'x'::text);");

    const err = await runMigrations(master, 'own-path', dir).catch((e: unknown) => e);
    const evidence = await master.query("select (pg_catalog.pg_stat_file('planted_evidence', true)).size is not null as written");

    expect(evidence.rows[0]).toEqual({ written: false });
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/001_own_path\.sql not applied: .*\(found before it ran\): planted\.format\(text,text\) owned by shadowing_app/);
  });

  it("applies migrations whose text merely mentions a schema off the search_path holding another login's functions (a monitoring agent's schema named in a comment)", async () => {
    const master = await earlierRelease('mig_word_schema');
    await master.query("create role mig_agent login password 'agent pass'");
    await master.query('create schema monitoring authorization mig_agent');
    await poolOn('mig_word_schema', { username: 'mig_agent', password: 'agent pass' }).query('create function monitoring.activity() returns bigint language sql as $$ select 1::bigint $$');

    const r = await runMigrations(master, 'shard', join(DEFAULT_MIGRATIONS_DIR, 'shard')).catch((e: unknown) => e);

    expect(r).not.toBeInstanceOf(Error);
    expect(await applied(master, 'shard')).toBe((await readdir(join(DEFAULT_MIGRATIONS_DIR, 'shard'))).length);
  });

  it("refuses a migration that puts a schema with an upper-case quoted name on its search_path by set_config, before any of it runs", async () => {
    const master = await earlierRelease('mig_quoted_path');
    await master.query('create schema "Planted"');
    await master.query(`grant usage, create on schema "Planted" to ${APP.username}`);
    await poolOn('mig_quoted_path', APP).query(`create function "Planted".format(f text, a text) returns text language sql as $$ select pg_catalog.format(f, a) $$`);
    const dir = await mkdtemp(join(tmpdir(), 'mig-quoted-path-'));
    dirs.push(dir);
    await writeFile(join(dir, '001_quoted_path.sql'), `create table public.quoted_probe (id int);\nselect pg_catalog.set_config('search_path', '"Planted", public', true);\nselect format('%s', 'x'::text);`);

    const err = await runMigrations(master, 'quoted-path', dir).catch((e: unknown) => e);

    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/001_quoted_path\.sql not applied: .*\(found before it ran\): "Planted"\.format\(text,text\) owned by shadowing_app/);
  });

});

describe("the migrations runner on RDS, where the master user owns the database and a login it created runs the migrations", () => {
  const MASTER = { username: 'mig_rds_master', password: 'master pass' };

  beforeAll(async () => {
    await emulateRdsMaster(server.url, { master: MASTER.username, password: MASTER.password, databases: ['mig_rds_group', 'mig_rds_granted'] });
  });

  /** The master's own function in public, a login it creates (PostgreSQL 16 on: the master gets ADMIN OPTION on it) and a migration for it to run. */
  async function masterAndRunner(database: string, runnerOptions: string): Promise<{ master: pg.Pool; runner: pg.Pool; dir: string }> {
    const master = poolOn(database, MASTER);
    const runnerName = `${database}_runner`;
    await master.query(`create role ${runnerName} login password 'runner pass' ${runnerOptions}`);
    await master.query('create function public.master_helper() returns int language sql as $$ select 1 $$');
    const dir = await mkdtemp(join(tmpdir(), 'mig-rds-runner-'));
    dirs.push(dir);
    await writeFile(join(dir, '001_table.sql'), 'create table public.rds_runner_probe (id int);');
    return { master, runner: poolOn(database, { username: runnerName, password: 'runner pass' }), dir };
  }

  it('applies migrations when the runner holds a group role the master created (ADMIN OPTION only, which lets the master grant it to itself)', async () => {
    const admin = poolOn('mig_rds_group', MASTER);
    await admin.query('create role mig_rds_deployers nologin');
    await admin.query('grant create on database mig_rds_group to mig_rds_deployers');
    await admin.query('grant usage, create on schema public to mig_rds_deployers');
    const { master, runner, dir } = await masterAndRunner('mig_rds_group', 'in role mig_rds_deployers');
    const standing = (await master.query("select pg_has_role('mig_rds_deployers', 'USAGE') as usage, pg_has_role('mig_rds_deployers', 'MEMBER WITH ADMIN OPTION') as admin")).rows;

    const r = await runMigrations(runner, 'rds-runner', dir).catch((e: unknown) => e);

    expect(standing).toEqual([{ usage: false, admin: true }]);
    expect(r).not.toBeInstanceOf(Error);
    expect(await applied(runner, 'rds-runner')).toBe(1);
    // What trusting it relies on: the master takes the group's rights whenever it likes.
    await master.query('grant mig_rds_deployers to mig_rds_master');
    expect((await master.query("select pg_has_role('mig_rds_deployers', 'USAGE') as usage")).rows).toEqual([{ usage: true }]);
  });

  it('applies migrations when the runner holds a role the master lacks (pg_read_all_data, granted by rdsadmin) but the master created the runner, so may grant itself the runner', async () => {
    const { master, runner, dir } = await masterAndRunner('mig_rds_granted', '');
    const rdsadmin = poolOn('mig_rds_granted');
    await rdsadmin.query('grant pg_read_all_data to mig_rds_granted_runner');
    await rdsadmin.query('grant create on database mig_rds_granted to mig_rds_granted_runner');
    await rdsadmin.query('grant create on schema public to mig_rds_granted_runner');
    const standing = (await master.query("select pg_has_role('pg_read_all_data', 'USAGE') as usage, pg_has_role('mig_rds_granted_runner', 'MEMBER WITH ADMIN OPTION') as admin_of_runner")).rows;

    const r = await runMigrations(runner, 'rds-runner', dir).catch((e: unknown) => e);

    expect(standing).toEqual([{ usage: false, admin_of_runner: true }]);
    expect(r).not.toBeInstanceOf(Error);
    expect(await applied(runner, 'rds-runner')).toBe(1);
    await master.query('grant mig_rds_granted_runner to mig_rds_master');
    await master.query('set role mig_rds_granted_runner');
    expect((await master.query("select pg_has_role('pg_read_all_data', 'USAGE') as usage")).rows).toEqual([{ usage: true }]);
  });
});
