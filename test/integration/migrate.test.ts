import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationError, runMigrations, type LockRetryEvent } from '../../functions/adapters/postgres/migrate.js';
import { migrateAll } from '../../functions/handlers/shared/migrations.js';
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

  it('lets two runners of each of two sets on a fresh database apply every migration exactly once, and reads of the record go on meanwhile', async () => {
    await pool.query('create database mig_fresh');
    const fresh = new pg.Pool({ connectionString: server.urlFor('mig_fresh'), max: 8 });
    try {
      const a = await folder({ '001_a.sql': 'create table fa1 (id int);', '002_a.sql': 'select pg_sleep(0.4); create table fa2 (id int);', '003_a.sql': 'create table fa3 (id int);' });
      const b = await folder({ '001_b.sql': 'create table fb1 (id int);', '002_b.sql': 'select pg_sleep(0.4); create table fb2 (id int);' });
      const runs = Promise.all([runMigrations(fresh, 'fa', a), runMigrations(fresh, 'fb', b), runMigrations(fresh, 'fa', a), runMigrations(fresh, 'fb', b)]);
      // A reader of the record (a function's check) is not held up by a running migration.
      await new Promise((r) => setTimeout(r, 300));
      const reader = await fresh.connect();
      let read: string;
      try {
        await reader.query("set lock_timeout = '200ms'");
        read = await reader.query('select count(*) from catalog.schema_migrations').then(() => 'read', (e: { code?: string }) => String(e.code));
      } finally {
        reader.release();
      }
      const results = await runs;
      const bySet = (set: string): string[] => results.filter((r) => r.set === set).flatMap((r) => r.applied).sort();
      expect(read).toBe('read');
      expect({ fa: bySet('fa'), fb: bySet('fb') }).toEqual({ fa: ['001_a.sql', '002_a.sql', '003_a.sql'], fb: ['001_b.sql', '002_b.sql'] });
      expect(results.map((r) => r.applied.length + r.alreadyApplied)).toEqual([3, 2, 3, 2]);
      const { rows } = await fresh.query<{ n: number }>('select count(*)::int as n from catalog.schema_migrations');
      expect(rows[0]?.n).toBe(5);
      // Partly migrated: a third migration, two runners again.
      await writeFile(join(b, '003_b.sql'), 'create table fb3 (id int);');
      const again = await Promise.all([runMigrations(fresh, 'fb', b), runMigrations(fresh, 'fb', b)]);
      expect(again.flatMap((r) => r.applied)).toEqual(['003_b.sql']);
      expect(again.map((r) => r.alreadyApplied).sort()).toEqual([2, 3]);
    } finally {
      await fresh.end();
    }
  });

  it("waits for another runner's migration longer than the login's statement timeout (catalog migration 005's)", async () => {
    await pool.query('create database mig_timeout');
    await pool.query("alter role postgres in database mig_timeout set statement_timeout = '1s'");
    const db = new pg.Pool({ connectionString: server.urlFor('mig_timeout'), max: 4 });
    try {
      const dir = await folder({ '001_a.sql': 'create table tt1 (id int);', '002_slow.sql': 'select pg_sleep(2.5); create table tt2 (id int);' });
      await runMigrations(db, 'slow', await folder({ '001_a.sql': 'create table tt1 (id int);' }));
      const first = runMigrations(db, 'slow', dir);
      await new Promise((r) => setTimeout(r, 500));
      const second = await runMigrations(db, 'slow', dir).catch((e: unknown) => String(e));
      expect(await first).toEqual({ set: 'slow', applied: ['002_slow.sql'], alreadyApplied: 1 });
      expect(second).toEqual({ set: 'slow', applied: [], alreadyApplied: 2 });
    } finally {
      await db.end();
    }
  });

  it('lets two deploys migrate every set at once (catalog and sharding in the first shard\'s database), each migration applied once', async () => {
    await pool.query('create database real_1');
    await pool.query('create database real_2');
    const first = new pg.Pool({ connectionString: server.urlFor('real_1'), max: 4 });
    const second = new pg.Pool({ connectionString: server.urlFor('real_2'), max: 4 });
    try {
      const runs = await Promise.all([migrateAll({ catalog: first, shards: [first, second] }), migrateAll({ catalog: first, shards: [first, second] })]);
      const count = async (set: string): Promise<number> => (await readdir(join(import.meta.dirname, '../../functions/adapters/postgres/migrations', set))).filter((f) => f.endsWith('.sql')).length;
      const applied = new Map<string, string[]>();
      for (const s of runs.flat()) applied.set(`${s.target} ${s.set}`, [...(applied.get(`${s.target} ${s.set}`) ?? []), ...s.applied]);
      const recorded = async (db: pg.Pool, set: string): Promise<number> =>
        (await db.query<{ n: number }>('select count(*)::int as n from catalog.schema_migrations where set_name = $1', [set])).rows[0]?.n ?? 0;

      expect([await recorded(first, 'catalog'), await recorded(first, 'sharding'), await recorded(first, 'shard'), await recorded(second, 'shard')]).toEqual([
        await count('catalog'),
        await count('sharding'),
        await count('shard'),
        await count('shard'),
      ]);
      for (const [key, names] of applied) expect({ key, applied: names.sort() }).toEqual({ key, applied: [...new Set(names)].sort() });
      for (const s of runs.flat()) expect(s.applied.length + s.alreadyApplied).toBe(await count(s.set));
      expect(runs.flat().reduce((n, s) => n + s.applied.length, 0)).toBe((await count('catalog')) + (await count('sharding')) + 2 * (await count('shard')));
    } finally {
      await first.end();
      await second.end();
    }
  });

  it('fails both of two runners on a broken migration, leaving the record at the one before', async () => {
    const dir = await folder({ '001_ok.sql': 'select pg_sleep(0.2); create table t_two_ok (id int);', '002_bad.sql': 'select pg_sleep(0.2); create tabel t_two_bad (id int);' });
    const outcomes = await Promise.allSettled([runMigrations(pool, 'set-two-bad', dir), runMigrations(pool, 'set-two-bad', dir)]);
    const { rows } = await pool.query<{ name: string }>("select name from catalog.schema_migrations where set_name = 'set-two-bad' order by version");

    expect(outcomes.map((o) => (o.status === 'rejected' ? String(o.reason) : 'applied'))).toEqual([expect.stringMatching(/002_bad.sql failed: syntax error/), expect.stringMatching(/002_bad.sql failed: syntax error/)]);
    expect(rows.map((r) => r.name)).toEqual(['001_ok.sql']);
  });

  it('stops a runner that finds a migration another runner applied with other contents', async () => {
    const mine = await folder({ '001_a.sql': 'select pg_sleep(0.3); create table t_other (id int);' });
    const theirs = await folder({ '001_a.sql': 'select pg_sleep(0.3); create table t_other (id bigint);' });
    const outcomes = await Promise.allSettled([runMigrations(pool, 'set-other', mine), runMigrations(pool, 'set-other', theirs)]);
    expect(outcomes.map((o) => o.status).sort()).toEqual(['fulfilled', 'rejected']);
    const rejected = outcomes.find((o) => o.status === 'rejected');
    expect(rejected?.status === 'rejected' ? String(rejected.reason) : '').toMatch(/applied by another runner with other contents/);
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

  it('refuses to record a migration whose file ends the transaction it runs in, which would record it apart from its changes', async () => {
    const dir = await folder({ '001_wrapped.sql': 'begin; create table t_wrapped (id int); commit;' });
    const err = await runMigrations(pool, 'set-wrapped', dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/^set-wrapped: migration 001_wrapped\.sql ended the runner's transaction \(a COMMIT, ROLLBACK or END in the file\): not recorded/);
    const { rows } = await pool.query<{ n: number }>("select count(*)::int as n from catalog.schema_migrations where set_name = 'set-wrapped'");
    expect(rows[0]?.n).toBe(0);
  });

  it('rejects gaps in version numbers', async () => {
    const dir = await folder({ '001_a.sql': 'select 1;', '003_c.sql': 'select 1;' });
    await expect(runMigrations(pool, 'set-gap', dir)).rejects.toThrow(/should be version 2/);
  });

  describe('lock waits', () => {
    async function session(): Promise<{ client: pg.Client; pid: number }> {
      const client = new pg.Client({ connectionString: server.url });
      client.on('error', () => undefined);
      await client.connect();
      const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid');
      return { client, pid: rows[0]?.pid ?? 0 };
    }

    /** Polls `probe` every 10 ms until it returns something, for at most 10 s (a bound on a hang). */
    async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const value = await probe();
        if (value !== undefined) return value;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }

    async function stateOf(pid: number): Promise<string | undefined> {
      const { rows } = await pool.query<{ state: string }>('select state from pg_stat_activity where pid = $1', [pid]);
      return rows[0]?.state;
    }

    it('gives up waiting behind an idle-in-transaction session, so a writer queued behind the migration goes through', async () => {
      await pool.query('create table t_wait (id int)');
      const dir = await folder({ '001_alter.sql': 'alter table t_wait add column v text;' });
      const blocker = await session();
      const writer = await session();
      let timer: NodeJS.Timeout | undefined;
      try {
        await blocker.client.query('begin');
        await blocker.client.query('select * from t_wait');
        const retries: LockRetryEvent[] = [];
        const outcome = runMigrations(pool, 'set-wait', dir, {
          lockTimeoutMs: 1000,
          lockAttempts: 2,
          retryPauseMs: 50,
          onLockRetry: (e) => {
            retries.push(e);
          },
        }).then(
          () => 'applied',
          (e: unknown) => e,
        );
        const alterPid = await eventually('the migration to wait for its lock', async () => {
          const { rows } = await pool.query<{ pid: number }>("select pid from pg_stat_activity where wait_event_type = 'Lock' and query like 'alter table t_wait%'");
          return rows[0]?.pid;
        });
        const write = writer.client.query('insert into t_wait (id) values (1)');
        // The writer queues behind the migration's lock request, not behind the reader...
        const blockers = await eventually('the writer to queue', async () => {
          const { rows } = await pool.query<{ b: number[] }>('select pg_blocking_pids($1) as b', [writer.pid]);
          const b = rows[0]?.b ?? [];
          return b.length > 0 ? b : undefined;
        });
        expect(blockers).toEqual([alterPid]);
        // ...and goes through once the migration gives up its wait, while the reader still holds
        // its lock: without a lock_timeout it would wait as long as the reader's transaction.
        const stuck = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error('the writer was still blocked after 10 s')), 10_000);
        });
        await expect(Promise.race([write, stuck])).resolves.toMatchObject({ rowCount: 1 });
        expect(await stateOf(blocker.pid)).toBe('idle in transaction');

        const error = await outcome;
        expect(error).toBeInstanceOf(MigrationError);
        expect(retries.map((r) => r.attempt)).toEqual([1]);
        expect(retries[0]?.blockers).toContainEqual(
          expect.objectContaining({ pid: blocker.pid, state: 'idle in transaction', locks: ['public.t_wait AccessShareLock'] }),
        );
      } finally {
        clearTimeout(timer);
        await blocker.client.end();
        await writer.client.end();
      }
    });

    it('applies the migration on a retry once the blocking session has ended', async () => {
      await pool.query('create table t_retry (id int)');
      const dir = await folder({ '001_alter.sql': 'alter table t_retry add column v text;' });
      const blocker = await session();
      await blocker.client.query('begin');
      await blocker.client.query('select * from t_retry');
      const retries: LockRetryEvent[] = [];
      const result = await runMigrations(pool, 'set-retry', dir, {
        lockTimeoutMs: 200,
        lockAttempts: 5,
        retryPauseMs: 50,
        onLockRetry: async (e) => {
          retries.push(e);
          // The session ends between the first attempt and the next.
          if (retries.length === 1) await blocker.client.end();
        },
      });
      expect(result.applied).toEqual(['001_alter.sql']);
      expect(retries[0]).toMatchObject({ set: 'set-retry', migration: '001_alter.sql', attempt: 1, attempts: 5 });
      expect(retries[0]?.blockers.map((b) => b.pid)).toContain(blocker.pid);
      const { rows } = await pool.query("select column_name from information_schema.columns where table_name = 't_retry' order by ordinal_position");
      expect(rows.map((r: { column_name: string }) => r.column_name)).toEqual(['id', 'v']);
    });

    it('skips, on its retry, a migration another runner applied while it paused after a lock wait', async () => {
      await pool.query('create table t_paused (id int)');
      const dir = await folder({ '001_alter.sql': 'alter table t_paused add column v text;', '002_more.sql': 'alter table t_paused add column w text;' });
      const blocker = await session();
      await blocker.client.query('begin');
      await blocker.client.query('select * from t_paused');
      let other: Awaited<ReturnType<typeof runMigrations>> | undefined;
      const result = await runMigrations(pool, 'set-paused', dir, {
        lockTimeoutMs: 200,
        lockAttempts: 3,
        retryPauseMs: 0,
        onLockRetry: async () => {
          if (other) return;
          await blocker.client.end();
          other = await runMigrations(pool, 'set-paused', dir, { lockTimeoutMs: 200 });
        },
      });
      expect(other).toEqual({ set: 'set-paused', applied: ['001_alter.sql', '002_more.sql'], alreadyApplied: 0 });
      expect(result).toEqual({ set: 'set-paused', applied: [], alreadyApplied: 2 });
      const { rows } = await pool.query<{ n: number }>("select count(*)::int as n from catalog.schema_migrations where set_name = 'set-paused'");
      expect(rows[0]?.n).toBe(2);
    });

    it('tries a migration again when it loses a deadlock with a writer, and applies it', async () => {
      // Shard migration 013 as it first was: an index on one table, then a foreign key on the other,
      // in one transaction, against a writer that writes the second table, then the first.
      await pool.query('create table t_dl_a (id int); create table t_dl_b (id int)');
      const dir = await folder({ '001_two_tables.sql': 'lock table t_dl_a in share mode;\nlock table t_dl_b in share row exclusive mode;\nalter table t_dl_b add column v text;' });
      const writer = await session();
      try {
        await writer.client.query('begin');
        await writer.client.query('insert into t_dl_b values (1)');
        const retries: LockRetryEvent[] = [];
        // Waits for the writer's lock on t_dl_b, holding its own on t_dl_a.
        const outcome = runMigrations(pool, 'set-deadlock', dir, {
          lockTimeoutMs: 10_000,
          lockAttempts: 3,
          retryPauseMs: 50,
          onLockRetry: (e) => {
            retries.push(e);
          },
        });
        await new Promise((r) => setTimeout(r, 200));
        // The writer now wants t_dl_a: a cycle, which the migration (waiting longer) breaks by losing.
        await writer.client.query('insert into t_dl_a values (1)');
        await writer.client.query('commit');
        const result = await outcome;
        expect(result.applied).toEqual(['001_two_tables.sql']);
        expect(retries.map((r) => r.attempt)).toEqual([1]);
        const { rows } = await pool.query<{ a: number; b: number }>('select (select count(*)::int from t_dl_a) as a, (select count(*)::int from t_dl_b) as b');
        expect(rows[0]).toEqual({ a: 1, b: 1 });
      } finally {
        await writer.client.end();
      }
    });

    it('fails after the last attempt, naming the migration and the session holding the lock, with nothing of the migration applied', async () => {
      await pool.query('create table t_held (id int)');
      const dir = await folder({
        '001_ok.sql': 'create table t_before (id int);',
        '002_alter.sql': 'create table t_side (id int);\nalter table t_held add column v text;',
      });
      const blocker = await session();
      try {
        await blocker.client.query('begin');
        await blocker.client.query('select * from t_held');
        const retries: number[] = [];
        const error = await runMigrations(pool, 'set-held', dir, {
          lockTimeoutMs: 100,
          lockAttempts: 3,
          retryPauseMs: 20,
          onLockRetry: (e) => {
            retries.push(e.attempt);
          },
        }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(MigrationError);
        const message = (error as Error).message;
        expect(message).toContain('set-held: migration 002_alter.sql failed, not applied');
        expect(message).toContain('each of 3 attempts it waited more than 100 ms for a lock');
        expect(message).toContain('another session held a lock on a table it changes');
        expect(message).toContain(`pid ${blocker.pid} (idle in transaction, in a transaction for `);
        expect(message).toContain('public.t_held AccessShareLock');
        expect(((error as Error).cause as { code?: string }).code).toBe('55P03');
        expect(retries).toEqual([1, 2]);

        const { rows } = await pool.query(
          `select to_regclass('t_before') as before, to_regclass('t_side') as side,
                  (select count(*)::int from information_schema.columns where table_name = 't_held' and column_name = 'v') as v,
                  (select array_agg(version order by version) from catalog.schema_migrations where set_name = 'set-held') as versions`,
        );
        expect(rows[0]).toEqual({ before: 't_before', side: null, v: 0, versions: [1] });
        // The blocker was never disturbed.
        expect(await stateOf(blocker.pid)).toBe('idle in transaction');
      } finally {
        await blocker.client.end();
      }
    });

    it('does not retry a migration that fails for another reason', async () => {
      const dir = await folder({ '001_bad.sql': 'select 1/0;' });
      let retries = 0;
      await expect(
        runMigrations(pool, 'set-no-retry', dir, {
          lockTimeoutMs: 100,
          retryPauseMs: 0,
          onLockRetry: () => {
            retries++;
          },
        }),
      ).rejects.toThrow(/001_bad.sql failed: division by zero/);
      expect(retries).toBe(0);
    });

    it('rejects options that would disable or break the bound', async () => {
      const dir = await folder({ '001_a.sql': 'select 1;' });
      await expect(runMigrations(pool, 'set-options', dir, { lockTimeoutMs: 0 })).rejects.toThrow(/lockTimeoutMs must be a positive integer/);
      await expect(runMigrations(pool, 'set-options', dir, { lockAttempts: 0 })).rejects.toThrow(/lockAttempts must be a positive integer/);
    });
  });
});
