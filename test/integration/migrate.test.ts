import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationError, runMigrations } from '../../functions/adapters/postgres/migrate.js';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';

describe('migration runner', () => {
  let server: TestPostgres;
  let pool: pg.Pool;
  beforeAll(async () => {
    server = await startTestPostgres();
    pool = new pg.Pool({ connectionString: server.url, max: 4 });
  });
  afterAll(async () => {
    await pool.end();
    await server.stop();
  });

  async function folder(files: Record<string, string>): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'mig-'));
    for (const [name, sql] of Object.entries(files)) await writeFile(join(dir, name), sql);
    return dir;
  }

  it('applies pending migrations once, in order, and records them', async () => {
    const dir = await folder({ '001_a.sql': 'create table t1 (id int);', '002_b.sql': 'alter table t1 add column v text;' });
    const first = await runMigrations(pool, 'set-order', dir);
    const second = await runMigrations(pool, 'set-order', dir);
    expect(first.applied).toEqual(['001_a.sql', '002_b.sql']);
    expect(second).toEqual({ set: 'set-order', applied: [], alreadyApplied: 2 });
  });

  it('lets concurrent runners apply each migration exactly once', async () => {
    const dir = await folder({ '001_a.sql': 'create table t_conc (id int);' });
    const results = await Promise.all([1, 2, 3].map(() => runMigrations(pool, 'set-conc', dir)));
    expect(results.flatMap((r) => r.applied)).toEqual(['001_a.sql']);
  });

  it('rolls back a failing migration and keeps earlier ones', async () => {
    const dir = await folder({ '001_ok.sql': 'create table t_ok (id int);', '002_bad.sql': 'create table t_bad (id int); select 1/0;' });
    await expect(runMigrations(pool, 'set-fail', dir)).rejects.toThrow(/002_bad.sql failed: division by zero/);
    const { rows } = await pool.query("select to_regclass('t_ok') as ok, to_regclass('t_bad') as bad");
    expect(rows[0]).toEqual({ ok: 't_ok', bad: null });
  });

  it('refuses to run when an applied migration was edited', async () => {
    const dir = await folder({ '001_a.sql': 'create table t_edit (id int);' });
    await runMigrations(pool, 'set-edit', dir);
    await writeFile(join(dir, '001_a.sql'), 'create table t_edit (id bigint);');
    await expect(runMigrations(pool, 'set-edit', dir)).rejects.toBeInstanceOf(MigrationError);
  });

  it('rejects gaps in version numbers', async () => {
    const dir = await folder({ '001_a.sql': 'select 1;', '003_c.sql': 'select 1;' });
    await expect(runMigrations(pool, 'set-gap', dir)).rejects.toThrow(/should be version 2/);
  });
});
