import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError, type CliIo } from '../../../bin/commands/kit.js';
import { createMigrateCommand } from '../../../bin/commands/migrate.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

let server: TestPostgres;

beforeAll(async () => {
  server = await startTestPostgres();
  const c = new pg.Client({ connectionString: server.url });
  await c.connect();
  await c.query('create database cli_catalog');
  await c.query('create database cli_shard_a');
  await c.query('create database cli_shard_b');
  await c.end();
});
afterAll(async () => {
  await server.stop();
});

function capture(): { io: CliIo; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { stdout: (t) => out.push(t), stderr: (t) => err.push(t), cwd: process.cwd() }, out, err };
}

describe('ca-dms-scaling migrate', () => {
  it('applies every set where it belongs, then reports everything up to date', async () => {
    const command = createMigrateCommand({ CATALOG_DATABASE_URL: server.urlFor('cli_catalog'), SHARD_DATABASE_URLS: `${server.urlFor('cli_shard_a')},${server.urlFor('cli_shard_b')}` });
    const first = capture();
    const second = capture();

    const codes = [await command.run([], first.io), await command.run([], second.io)];

    expect(codes).toEqual([0, 0]);
    expect(first.out.map((l) => l.split(/\s+/).slice(0, 3).join(' '))).toEqual([
      'catalog catalog applied',
      'catalog sharding applied',
      'shard 1 shard',
      'shard 2 shard',
    ]);
    expect(second.out.every((l) => l.includes('up to date'))).toBe(true);
  });

  it('takes the URLs from flags over the environment', async () => {
    const command = createMigrateCommand({ CATALOG_DATABASE_URL: 'postgresql://nobody@127.0.0.1:1/none' });
    const { io, out } = capture();

    const code = await command.run(['--catalog-url', server.urlFor('cli_catalog'), '--shard-url', server.urlFor('cli_shard_a')], io);

    expect(code).toBe(0);
    expect(out).toHaveLength(3);
  });

  it('names the missing catalog URL', async () => {
    await expect(createMigrateCommand({}).run([], capture().io)).rejects.toThrow(new UsageError('--catalog-url: is required (or set CATALOG_DATABASE_URL)'));
  });

  it('refuses a remote URL without verified TLS, naming the flag', async () => {
    const run = createMigrateCommand({}).run(['--catalog-url', 'postgresql://u:p@db.example.com:5432/catalog'], capture().io);

    await expect(run).rejects.toThrow('--catalog-url: db.example.com is not loopback: add sslmode=verify-full (TLS is always verified)');
  });

  it('names a bad shard URL from the environment', async () => {
    const run = createMigrateCommand({ CATALOG_DATABASE_URL: server.urlFor('cli_catalog'), SHARD_DATABASE_URLS: 'mysql://x' }).run([], capture().io);

    await expect(run).rejects.toThrow('SHARD_DATABASE_URLS: entry 1: expected a postgresql:// URL, got "mysql://..."');
  });
});
