/**
 * Fresh, migrated catalog databases for tests that want one per test: the catalog migrations run
 * once per test server, into a template database, and each fresh catalog is a copy of it
 * (`create database … template …`, a file copy inside PostgreSQL) instead of a migration run of
 * its own. Measured on the 2-core machine at load 8-13: about 1.3 s to migrate a catalog,
 * 0.3-0.7 s to copy one.
 *
 * A copy holds everything the migrations left in the database. What they set on a role for this
 * database only (`alter role … in database … set`, e.g. the catalog login's statement_timeout)
 * is not part of a database and is not copied by PostgreSQL: {@link freshMigratedCatalog} sets
 * it on the copy too, so the copy behaves as a database the migrations ran in.
 *
 * @example
 * ```ts
 * const name = await freshMigratedCatalog(server, `catalog_${++count}`);
 * const pool = new pg.Pool({ connectionString: server.urlFor(name) });
 * ```
 */
import pg from 'pg';
import { migrateAll } from '../../functions/handlers/shared/migrations.js';
import type { TestPostgres } from './postgres.js';

/** The template database of each server, made by the first call for it. */
const templates = new WeakMap<TestPostgres, Promise<string>>();

/** The name of the template database the catalog migrations ran in. */
export const MIGRATED_CATALOG_TEMPLATE = 'migrated_catalog_template';

async function migratedTemplate(server: TestPostgres): Promise<string> {
  let made = templates.get(server);
  if (!made) {
    made = (async () => {
      const admin = new pg.Client({ connectionString: server.url });
      await admin.connect();
      try {
        await admin.query(`create database ${MIGRATED_CATALOG_TEMPLATE}`);
      } finally {
        await admin.end();
      }
      const pool = new pg.Pool({ connectionString: server.urlFor(MIGRATED_CATALOG_TEMPLATE), max: 1 });
      try {
        await migrateAll({ catalog: pool, shards: [] });
      } finally {
        // No session may stay in a template while it is copied.
        await pool.end();
      }
      return MIGRATED_CATALOG_TEMPLATE;
    })();
    // A failed attempt is not remembered: the next call tries again (and reports its own error).
    made.catch(() => templates.delete(server));
    templates.set(server, made);
  }
  return made;
}

/**
 * Creates database `name` on `server` as a catalog the migrations ran in (see the module
 * comment), and returns `name`.
 */
export async function freshMigratedCatalog(server: TestPostgres, name: string): Promise<string> {
  const template = await migratedTemplate(server);
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  try {
    await admin.query(`create database ${name} template ${template}`);
    // The template's per-database settings (every role's, and the database's own: setrole 0).
    const { rows } = await admin.query<{ role: string | null; setting: string }>(
      `select r.rolname as role, unnest(s.setconfig) as setting
         from pg_db_role_setting s
         join pg_database d on d.oid = s.setdatabase
         left join pg_roles r on r.oid = s.setrole
        where d.datname = $1`,
      [template],
    );
    for (const { role, setting } of rows) {
      const at = setting.indexOf('=');
      const [key, value] = [setting.slice(0, at), setting.slice(at + 1)];
      const target = role === null ? `database ${pg.escapeIdentifier(name)}` : `role ${pg.escapeIdentifier(role)} in database ${pg.escapeIdentifier(name)}`;
      await admin.query(`alter ${target} set ${pg.escapeIdentifier(key)} = ${pg.escapeLiteral(value)}`);
    }
  } finally {
    await admin.end();
  }
  return name;
}
