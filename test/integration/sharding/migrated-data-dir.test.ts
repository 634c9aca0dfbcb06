/**
 * The move environments start their servers from copies of data directories the migrations ran
 * in once per run (test/support/migrated-data-dir.ts, migratedServerDir in move-env.ts) instead of
 * migrating each server again. A copy must be what the migrations make on a fresh server: the
 * same databases with their ACLs, roles and their memberships and per-database settings, and in
 * each database the same schema, privileges, routines and recorded migrations.
 */
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { startTestPostgres, withAdmin, type TestPostgres } from '../../support/postgres.js';
import { migratedServerDir } from './fixtures/move-env.js';

const migrations = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations');
const servers: TestPostgres[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
});

/** What a server holds outside its databases: databases (with ACL and settings), roles, memberships, per-role-and-database settings. */
const SERVER = `
  select json_build_object(
    'databases', (select json_agg(format('%s acl=%s conn=%s limit=%s', datname, datacl, datallowconn, datconnlimit) order by datname) from pg_database where not datistemplate),
    'roles', (select json_agg(format('%s super=%s inherit=%s createrole=%s createdb=%s login=%s bypassrls=%s config=%s', rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls, rolconfig) order by rolname) from pg_roles where rolname !~ '^pg_'),
    'members', (select json_agg(format('%s in %s admin=%s', m.rolname, r.rolname, a.admin_option) order by m.rolname, r.rolname) from pg_auth_members a join pg_roles m on m.oid = a.member join pg_roles r on r.oid = a.roleid where r.rolname !~ '^pg_' or m.rolname !~ '^pg_'),
    'settings', (select json_agg(format('%s/%s %s', coalesce(d.datname, '*'), coalesce(r.rolname, '*'), s.setconfig) order by 1) from pg_db_role_setting s left join pg_database d on d.oid = s.setdatabase left join pg_roles r on r.oid = s.setrole)
  ) as f`;

/** What a database holds: schemas, relations, columns, constraints, indexes, triggers, policies, routines (their text), privileges, recorded migrations. */
const DATABASE = `
  select json_build_object(
    'schemas', (select json_agg(format('%s owner=%s acl=%s', nspname, pg_get_userbyid(nspowner), nspacl) order by nspname) from pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema'),
    'relations', (select json_agg(format('%s.%s kind=%s owner=%s acl=%s rls=%s', n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl, c.relrowsecurity) order by 1) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname !~ '^pg_' and n.nspname <> 'information_schema'),
    'columns', (select json_agg(format('%s.%s.%s %s default=%s null=%s acl=%s', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), not a.attnotnull, a.attacl) order by 1) from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum where a.attnum > 0 and not a.attisdropped and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'),
    'constraints', (select json_agg(format('%s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) order by 1) from pg_constraint where connamespace in (select oid from pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema')),
    'indexes', (select json_agg(indexdef order by indexdef) from pg_indexes where schemaname !~ '^pg_' and schemaname <> 'information_schema'),
    'triggers', (select json_agg(pg_get_triggerdef(oid) order by 1) from pg_trigger where not tgisinternal),
    'policies', (select json_agg(format('%s.%s %s %s %s %s', schemaname, tablename, policyname, cmd, roles, qual) order by 1) from pg_policies),
    'routines', (select json_agg(format('%s.%s(%s) owner=%s acl=%s config=%s md5=%s', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_userbyid(p.proowner), p.proacl, p.proconfig, md5(pg_get_functiondef(p.oid))) order by 1) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where p.prokind in ('f', 'p') and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'),
    'extensions', (select json_agg(extname order by extname) from pg_extension),
    'default acls', (select json_agg(format('%s %s %s', pg_get_userbyid(defaclrole), defaclobjtype, defaclacl) order by 1) from pg_default_acl),
    'migrations', (select json_agg(format('%s %s %s %s', set_name, version, name, checksum) order by set_name, version) from catalog.schema_migrations)
  ) as f`;

/** The server's and each named database's fingerprints. */
async function fingerprint(server: TestPostgres, databases: readonly string[]): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = { server: await withAdmin(server.url, async (c) => (await c.query<{ f: unknown }>(SERVER)).rows[0]?.f) };
  for (const db of databases) out[db] = await withAdmin(server.urlFor(db), async (c) => (await c.query<{ f: unknown }>(DATABASE)).rows[0]?.f);
  return out;
}

/** A fresh server with `databases` made and migrated as startMoveEnv did before the copies: the catalog's first. */
async function migratedHere(catalog: boolean, shardId: string): Promise<TestPostgres> {
  const server = await startTestPostgres();
  servers.push(server);
  await withAdmin(server.url, async (c) => {
    if (catalog) await c.query('create database catalog');
    await c.query(`create database ${shardId}`);
  });
  const migrate = async (db: string, set: string): Promise<void> => {
    const pool = new pg.Pool({ connectionString: server.urlFor(db), max: 1 });
    try {
      await runMigrations(pool, set, resolve(migrations, set));
    } finally {
      await pool.end();
    }
  };
  if (catalog) await migrate('catalog', 'sharding');
  await migrate(shardId, 'shard');
  return server;
}

it.each([
  { catalog: true, shardId: 'shard_a', databases: ['catalog', 'shard_a'] },
  { catalog: false, shardId: 'shard_b', databases: ['shard_b'] },
])('a server copied from the migrated directory ($databases) holds what the migrations make on a fresh one', async ({ catalog, shardId, databases }) => {
  const template = await migratedServerDir({ catalog, shardId });
  expect(template, 'no migrated directory: this file runs under the suite\'s global setup (vitest run)').toBeDefined();
  const copied = await startTestPostgres({ dataDirTemplate: template as string });
  servers.push(copied);
  const fresh = await migratedHere(catalog, shardId);

  const [want, got] = await Promise.all([fingerprint(fresh, databases), fingerprint(copied, databases)]);

  expect(got).toEqual(want);
  // The fingerprint sees what the migrations make (not an empty comparison).
  expect(JSON.stringify(want)).toContain('write_fences');
  expect(JSON.stringify(want)).toContain('ca_dms_mover');
}, 120_000);
