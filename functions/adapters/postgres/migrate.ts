/**
 * A small forward-only migration runner. Each migration set (the control-plane catalog, the
 * CA-DMS shard schema) is a folder of `NNN_description.sql` files applied in order, each in its
 * own transaction, and recorded in `catalog.schema_migrations` with a checksum so an edited,
 * already-applied file is caught rather than silently ignored. A session advisory lock keyed
 * by the set name makes concurrent runners (two deploys, two local starts) wait for each other.
 *
 * @example
 * ```ts
 * await runMigrations(pool, 'catalog', catalogMigrationsDir);
 * ```
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { inClientTransaction } from './transaction.js';

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
}

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
  readonly checksum: string;
}

export interface MigrationResult {
  readonly set: string;
  readonly applied: readonly string[];
  readonly alreadyApplied: number;
}

const FILE = /^(\d{3,})_([a-z0-9_]+)\.sql$/;

/** Reads a migration folder, checking names and that versions are unique and contiguous. */
export async function loadMigrations(dir: string): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const m = FILE.exec(file);
    if (!m) throw new MigrationError(`migration file ${file} does not match NNN_name.sql`);
    const sql = await readFile(join(dir, file), 'utf8');
    migrations.push({
      version: Number(m[1]),
      name: file,
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
    });
  }
  migrations.forEach((mig, i) => {
    if (mig.version !== i + 1) throw new MigrationError(`migration ${mig.name} should be version ${i + 1}: versions are contiguous from 1`);
  });
  return migrations;
}

function lockKey(set: string): number {
  // A stable 32-bit key per migration set for pg_advisory_lock(int, int).
  return createHash('sha256').update(set).digest().readInt32BE(0);
}

/**
 * Applies the pending migrations of `set` from `dir`. Returns what was applied.
 * Throws {@link MigrationError} when an applied migration's file changed or disappeared.
 */
export async function runMigrations(pool: pg.Pool, set: string, dir: string): Promise<MigrationResult> {
  const migrations = await loadMigrations(dir);
  const client = await pool.connect();
  const LOCK_CLASS = 0x0ca0d;
  try {
    await client.query('select pg_advisory_lock($1, $2)', [LOCK_CLASS, lockKey(set)]);
    await client.query(`create schema if not exists catalog`);
    await client.query(`create table if not exists catalog.schema_migrations (
      set_name text not null,
      version integer not null,
      name text not null,
      checksum text not null,
      applied_at timestamptz not null default now(),
      primary key (set_name, version))`);
    const { rows } = await client.query<{ version: number; name: string; checksum: string }>(
      'select version, name, checksum from catalog.schema_migrations where set_name = $1 order by version',
      [set],
    );
    for (const row of rows) {
      const file = migrations[row.version - 1];
      if (!file) throw new MigrationError(`${set}: applied migration ${row.name} is missing from ${dir}`);
      if (file.checksum !== row.checksum) throw new MigrationError(`${set}: applied migration ${row.name} was edited after it ran; add a new migration instead`);
    }
    const applied: string[] = [];
    for (const mig of migrations.slice(rows.length)) {
      try {
        await inClientTransaction(client, 'begin', async () => {
          // A migration may run long (an index on a big table); the role's default statement
          // timeout (catalog migration 005) is for the functions' queries. Transaction-scoped, so
          // it neither outlives the migration nor sets session state.
          await client.query('set local statement_timeout = 0');
          await client.query(mig.sql);
          await client.query('insert into catalog.schema_migrations (set_name, version, name, checksum) values ($1, $2, $3, $4)', [
            set,
            mig.version,
            mig.name,
            mig.checksum,
          ]);
        });
        applied.push(mig.name);
      } catch (err) {
        throw new MigrationError(`${set}: migration ${mig.name} failed: ${(err as Error).message}`, { cause: err });
      }
    }
    return { set, applied, alreadyApplied: rows.length };
  } finally {
    await client.query('select pg_advisory_unlock($1, $2)', [LOCK_CLASS, lockKey(set)]).catch(() => undefined);
    client.release();
  }
}
