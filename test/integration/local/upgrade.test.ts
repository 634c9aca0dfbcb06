/**
 * A data directory kept from another version of local mode. One made by an older version (here:
 * the newest shard and catalog migrations taken back out of it, their records and their objects)
 * is brought up to date by the next start, which says which migrations it applied where; one
 * migrated by a newer version (a record of a migration this version does not have) is refused,
 * naming the migration and what to do, before anything is changed in it.
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalMode, type LocalMode } from '../../../functions/local/runtime.js';
import { quietLocalMode } from './local-options.js';
import { startCommand } from '../../../bin/commands/start.js';
import { tempDataDir } from '../../e2e/support/local-process.js';

const MIGRATIONS = join(import.meta.dirname, '../../../functions/adapters/postgres/migrations');

/** Runs `fn` on a superuser connection to `url`. */
async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

describe('a data directory of another version', () => {
  let dataDir = '';
  let latestShard = '';
  let latestCatalog = '';
  const running: LocalMode[] = [];

  beforeAll(async () => {
    dataDir = await tempDataDir();
    latestShard = (await readdir(join(MIGRATIONS, 'shard'))).sort().at(-1) ?? '';
    latestCatalog = (await readdir(join(MIGRATIONS, 'catalog'))).sort().at(-1) ?? '';
  });
  afterAll(async () => {
    for (const local of running) await local.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }, 60_000);

  const start = async (lines: string[]): Promise<LocalMode> => {
    const local = await startLocalMode(quietLocalMode(dataDir, { shards: 1, onLine: (line) => lines.push(line) }));
    running.push(local);
    return local;
  };

  it('from an older version is migrated at the next start, which says what it applied on which server', async () => {
    expect(latestShard).toBe('032_fence_lookups_by_index.sql');
    expect(latestCatalog).toBe('007_service_locks.sql');
    const fresh: string[] = [];
    const first = await start(fresh);
    const shardUrl = first.cluster.shards[0]?.primaryUrl ?? '';
    // The data as the version before shard migration 032 and catalog migration 007 left it.
    await withClient(shardUrl, async (c) => {
      await c.query('alter function enforce_write_fence() reset enable_seqscan');
      await c.query(`delete from catalog.schema_migrations where set_name = 'shard' and name = $1`, [latestShard]);
    });
    await withClient(first.cluster.catalogUrl, async (c) => {
      await c.query('drop table catalog.service_locks');
      await c.query(`delete from catalog.schema_migrations where set_name = 'catalog' and name = $1`, [latestCatalog]);
    });
    await first.stop();

    const lines: string[] = [];
    const second = await start(lines);
    const fenceConfig = await withClient(second.cluster.shards[0]?.primaryUrl ?? '', async (c) =>
      (await c.query<{ config: string[] }>(`select proconfig as config from pg_proc where oid = 'enforce_write_fence()'::regprocedure`)).rows[0]?.config,
    );
    const locks = await withClient(second.cluster.catalogUrl, async (c) => (await c.query<{ t: string | null }>(`select to_regclass('catalog.service_locks')::text as t`)).rows[0]?.t);

    expect(fresh.filter((l) => l.includes('migration'))).toEqual([]);
    expect(fenceConfig).toEqual(['search_path=pg_catalog, pg_temp', 'enable_seqscan=off']);
    expect(locks).toBe('catalog.service_locks');
    expect(lines).toContain(`  postgres: catalog: applied catalog migration ${latestCatalog}`);
    expect(lines).toContain(`  postgres: shard_001/primary: applied shard migration ${latestShard}`);
  }, 120_000);

  it('says nothing of migrations when there was none to apply', async () => {
    for (const local of running.splice(0)) await local.stop();
    const lines: string[] = [];
    await start(lines);

    expect(lines.filter((l) => l.includes('migration'))).toEqual([]);
  }, 120_000);

  it('from a newer version is refused by the CLI, naming the migration this version lacks and what to do', async () => {
    for (const local of running.splice(0)) await local.stop();
    const local = await start([]);
    const newer = '999_from_a_newer_version.sql';
    const shardUrl = local.cluster.shards[0]?.primaryUrl ?? '';
    await withClient(shardUrl, (c) => c.query(`insert into catalog.schema_migrations (set_name, version, name, checksum) values ('shard', 999, $1, 'x')`, [newer]));
    await local.stop();
    running.splice(0);

    const out: string[] = [];
    const err: string[] = [];
    const code = await startCommand.run(['--port', '0', '--data-dir', dataDir, '--shards', '1', '--replicas', '0'], { stdout: (t) => out.push(t), stderr: (t) => err.push(t), cwd: dataDir });

    expect(code).toBe(1);
    expect(err.join('')).toContain(newer);
    expect(err.join('')).toMatch(/newer version/);
    expect(err.join('')).toMatch(/--wipe/);
  }, 120_000);
});
