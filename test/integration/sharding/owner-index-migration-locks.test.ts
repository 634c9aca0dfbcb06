/**
 * Issue #15 (review of shard migration 028): the new `documents (owner_id, slot, id)` index is built
 * holding SHARE on documents until the migration commits (writes of documents wait, reads go on).
 * As first written, 028 then dropped `documents (owner_id)` in the same transaction: the DROP asked
 * for ACCESS EXCLUSIVE while the SHARE was held. A writer that read documents during the build
 * (a keyed POST: CLAIM_KEY_SQL reads documents, then the document is inserted) held ACCESS SHARE
 * and waited for ROW EXCLUSIVE behind the SHARE: a deadlock, which the migration lost after the
 * whole build (rolled back, built again on the retry, writes waiting out each build). The drop is
 * now migration 030, after the build has committed.
 *
 * The build's moment is held open without timing: another session holds the index's name (an
 * uncommitted relation of that name), so the migration, holding SHARE on documents, waits for it
 * to end before it records the index. The writer never looks for deadlocks itself (its
 * deadlock_timeout is an hour), so the migration is the one that would find, and lose, one.
 */
import { mkdtemp, readdir, copyFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { MIGRATIONS, startTestPostgres, type TestPostgres, withAdmin } from '../../support/postgres.js';
import { runMigrations, type LockRetryEvent } from '../../../functions/adapters/postgres/migrate.js';

const BEFORE = '027_timeline_history.sql';
let server: TestPostgres;
let url: string;
let pool: pg.Pool;
let earlier: string;

beforeAll(async () => {
  server = await startTestPostgres();
  await withAdmin(server.url, (c) => c.query('create database shard'));
  url = server.urlFor('shard');
  // The shard as the version before 028 left it.
  earlier = await mkdtemp(join(tmpdir(), 'shard-027-'));
  for (const file of (await readdir(MIGRATIONS.shard)).filter((f) => f.endsWith('.sql') && f <= BEFORE)) await copyFile(join(MIGRATIONS.shard, file), join(earlier, file));
  pool = new pg.Pool({ connectionString: url, max: 1 });
  pool.on('error', () => undefined);
  await runMigrations(pool, 'shard', earlier);
}, 120_000);
afterAll(async () => {
  await pool?.end();
  await server?.stop();
  if (earlier) await rm(earlier, { recursive: true, force: true });
});

const connect = async (): Promise<pg.Client> => {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  return c;
};

/** Polls `probe` (a count query) until it answers more than 0. */
async function until(db: pg.Client, probe: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (((await db.query<{ n: number }>(probe)).rows[0]?.n ?? 0) > 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`never: ${probe}`);
}

it('builds the owner index and drops the old one without a deadlock with a writer that read documents during the build', async () => {
  const owner = randomUUID();
  const watcher = await connect();
  const name = await connect();
  const writer = await connect();
  try {
    await watcher.query(`insert into users (id, slot, email, display_name) values ($1, 7, 'w@example.com', 'writer')`, [owner]);
    await watcher.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $1, 7, 'doc' from generate_series(1, 100)`, [owner]);

    await name.query('begin');
    await name.query('create table documents_owner_slot_id_idx (x int)');
    const retries: LockRetryEvent[] = [];
    const migrated = runMigrations(pool, 'shard', MIGRATIONS.shard, {
      lockTimeoutMs: 30_000,
      lockAttempts: 2,
      retryPauseMs: 0,
      onLockRetry: (e) => {
        retries.push(e);
      },
    });
    // 028 holds SHARE on documents, waiting for the name.
    await until(watcher, `select count(*)::int as n from pg_locks where locktype = 'relation' and relation = 'documents'::regclass and mode = 'ShareLock' and granted`);
    // A keyed POST meanwhile: it reads documents (the claim's look for a legacy document), then writes one.
    await writer.query(`set deadlock_timeout = '1h'`);
    await writer.query('begin');
    await writer.query('select count(*) from documents where id = $1', [randomUUID()]);
    const wrote = writer.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, 7, 'keyed')`, [randomUUID(), owner]);
    await until(watcher, `select count(*)::int as n from pg_locks where locktype = 'relation' and relation = 'documents'::regclass and mode = 'RowExclusiveLock' and not granted`);
    await name.query('rollback');
    await wrote;
    await writer.query('commit');

    const result = await migrated;
    expect(retries.map((r) => r.attempt)).toEqual([]);
    expect(result.applied[0]).toBe('028_documents_owner_slot_id_idx.sql');
    const { rows } = await watcher.query<{ name: string }>(`select indexrelid::regclass::text as name from pg_index where indrelid = 'documents'::regclass order by 1`);
    expect(rows.map((r) => r.name)).toEqual(['documents_owner_slot_id_idx', 'documents_pkey', 'documents_slot_id_idx']);
    expect((await watcher.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [owner])).rows[0]?.n).toBe(101);
  } finally {
    await name.end().catch(() => undefined);
    await writer.end().catch(() => undefined);
    await watcher.end();
  }
}, 120_000);
