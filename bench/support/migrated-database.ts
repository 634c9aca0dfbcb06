/**
 * The start the database benchmarks share: a fresh test PostgreSQL (test/support/postgres.ts) with
 * one database created in it and one set of this release's migrations run there.
 *
 * @example
 * ```ts
 * const { server, url } = await startMigratedDatabase('shard', 'shard');
 * try { ... } finally { await server.stop(); }
 * ```
 */
import { migrateDatabase, startTestPostgres, withAdmin, type MIGRATIONS, type TestPostgres } from '../../test/support/postgres.js';

export interface MigratedDatabase {
  /** The server; the caller stops it. */
  readonly server: TestPostgres;
  /** The migrated database's URL. */
  readonly url: string;
}

/** Starts a server, creates `database` (a plain lower-case identifier) and runs `set`'s migrations in it; a server whose start failed is stopped. */
export async function startMigratedDatabase(database: string, set: keyof typeof MIGRATIONS): Promise<MigratedDatabase> {
  if (!/^[a-z_][a-z0-9_]*$/.test(database)) throw new Error(`startMigratedDatabase: database name ${JSON.stringify(database)} must be lower-case letters, digits and _`);
  const server = await startTestPostgres();
  try {
    await withAdmin(server.url, (admin) => admin.query(`create database ${database}`));
    await migrateDatabase(server.urlFor(database), set);
    return { server, url: server.urlFor(database) };
  } catch (error) {
    await server.stop();
    throw error;
  }
}
