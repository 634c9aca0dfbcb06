/**
 * Benchmark of the migrations runner's check for other logins' functions on its search_path
 * (migrate.ts refuseForeignRoutines), run before and after every migration: one trivial migration
 * applied by an admin login to a database whose owner (trusted: it holds every attribute and role
 * of the runner) owns `--functions` functions in public (an extension's, e.g. PostGIS's thousand),
 * on a cluster with `--roles` roles of which the runner and the owner share `--shared`. Whether the
 * owner is trusted used to be decided once per function, against every role of the cluster; it is
 * decided once per owner. With `--before DIR` the same runs with the migrate.ts of another
 * checkout (`DIR/functions/adapters/postgres/migrate.ts`, e.g. `git archive HEAD functions | tar -x
 * -C DIR`). Printed: milliseconds to apply the migration per size and implementation.
 *
 * Run: `npx tsx bench/migrate-trust.ts` (options: `--roles N`, default 3000; `--shared N`, default
 * 300; `--functions N`, default 200; `--before DIR`). The old check needed minutes at the defaults.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import type * as MigrateModule from '../functions/adapters/postgres/migrate.js';
import { startTestPostgres } from '../test/support/postgres.js';

const { values } = parseArgs({ options: { roles: { type: 'string' }, shared: { type: 'string' }, functions: { type: 'string' }, before: { type: 'string' } } });
const options = z
  .object({
    roles: z.coerce.number().int().min(1).max(100_000).default(3000),
    shared: z.coerce.number().int().min(0).default(300),
    functions: z.coerce.number().int().min(1).max(100_000).default(200),
    before: z.string().min(1).optional(),
  })
  .refine((o) => o.shared <= o.roles, { message: '--shared must not exceed --roles', path: ['shared'] })
  .parse(values);

const impls: { name: string; migrate: typeof MigrateModule }[] = [];
if (options.before !== undefined) impls.push({ name: 'before', migrate: (await import(resolve(options.before, 'functions/adapters/postgres/migrate.ts'))) as typeof MigrateModule });
impls.push({ name: 'this checkout', migrate: (await import('../functions/adapters/postgres/migrate.js')) as typeof MigrateModule });

const server = await startTestPostgres();
const dir = await mkdtemp(join(tmpdir(), 'bench-migrate-trust-'));
const pools: pg.Pool[] = [];
const pool = (database: string, login: string, password: string): pg.Pool => {
  const url = new URL(server.urlFor(database));
  url.username = login;
  url.password = password;
  const p = new pg.Pool({ connectionString: url.toString(), max: 1 });
  pools.push(p);
  return p;
};
try {
  const admin = new pg.Pool({ connectionString: server.url, max: 1 });
  pools.push(admin);
  await admin.query("create role bench_owner login createrole password 'owner'");
  await admin.query("create role bench_runner login createrole password 'runner'");
  await admin.query(`do $$ begin for i in 1..${options.roles} loop execute format('create role bench_r%s nologin', i); end loop; end $$`);
  await admin.query(`do $$ begin for i in 1..${options.shared} loop execute format('grant bench_r%s to bench_runner, bench_owner', i); end loop; end $$`);
  await writeFile(join(dir, '001_table.sql'), 'create table public.bench_probe (id int);');
  console.log(`${options.roles} roles (${options.shared} shared by the runner and the owner), ${options.functions} functions of the owner in public`);
  for (const [k, impl] of impls.entries()) {
    const database = `bench_trust_${k}`;
    await admin.query(`create database ${database} owner bench_owner`);
    await admin.query(`grant create on database ${database} to bench_runner`);
    const owner = pool(database, 'bench_owner', 'owner');
    await owner.query('grant create on schema public to bench_runner');
    await owner.query(`do $$ begin for i in 1..${options.functions} loop execute format('create function public.bench_f%s() returns int language sql as ''select 1''', i); end loop; end $$`);
    const started = performance.now();
    await impl.migrate.runMigrations(pool(database, 'bench_runner', 'runner'), 'bench', dir);
    console.log(`${impl.name.padEnd(14)} ${Math.round(performance.now() - started)} ms to apply one migration`);
  }
} finally {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server.stop();
  await rm(dir, { recursive: true, force: true });
}
