/**
 * A fresh catalog copied from the migrated template (test/support/migrated-catalog.ts) is the
 * database a migration run leaves: the same schema and migration records, the catalog login's
 * per-database settings (which PostgreSQL does not copy with a database), and nothing shared
 * with another copy.
 */
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { freshMigratedCatalog } from '../../support/migrated-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

let server: TestPostgres;
beforeAll(async () => {
  server = await startTestPostgres();
});
afterAll(async () => {
  await server?.stop();
});

async function inDatabase<T>(database: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: server.urlFor(database) });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** The tables, columns, functions and settings a session of the catalog login sees, and the migrations recorded. */
async function shapeOf(database: string): Promise<unknown> {
  return inDatabase(database, async (c) => ({
    columns: (await c.query(`select table_schema, table_name, column_name, data_type from information_schema.columns where table_schema not in ('pg_catalog', 'information_schema') order by 1, 2, 3`)).rows,
    functions: (await c.query(`select n.nspname, p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname not in ('pg_catalog', 'information_schema') order by 1, 2`)).rows,
    statementTimeout: (await c.query('show statement_timeout')).rows[0],
  }));
}

it('copies the schema, the migration records and the login settings a migration run leaves, each copy its own', async () => {
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  await admin.query('create database migrated_directly');
  await admin.end();
  const direct = new pg.Pool({ connectionString: server.urlFor('migrated_directly'), max: 1 });
  await migrateAll({ catalog: direct, shards: [] });
  await direct.end();

  const [first, second] = [await freshMigratedCatalog(server, 'copy_one'), await freshMigratedCatalog(server, 'copy_two')];
  const directly = await shapeOf('migrated_directly');

  // The catalog migrations set the login's statement_timeout for its database (catalog 005).
  expect(directly).toMatchObject({ statementTimeout: { statement_timeout: '10s' } });
  expect(await shapeOf(first)).toEqual(directly);
  expect(await shapeOf(second)).toEqual(directly);
  // Running the migrations on a copy finds every one applied.
  const pool = new pg.Pool({ connectionString: server.urlFor(first), max: 1 });
  const again = await migrateAll({ catalog: pool, shards: [] });
  await pool.end();
  expect(again.flatMap((r) => r.applied)).toEqual([]);
  expect(again.reduce((n, r) => n + r.alreadyApplied, 0)).toBeGreaterThan(0);
  // A write to one copy is not in the other.
  await inDatabase(first, (c) => c.query(`insert into catalog.service_locks (service) values ('svc-0')`));
  expect(await inDatabase(second, async (c) => (await c.query('select count(*)::int as n from catalog.service_locks')).rows[0])).toEqual({ n: 0 });
});
