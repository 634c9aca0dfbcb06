/**
 * SHARD_DATABASE_URLS is read by three readers: the migrate function (functions/handlers/shared/env.ts),
 * `ca-dms-scaling migrate` and `ca-dms-scaling shards fences`. An operator sets it once: every
 * form the README documents (a JSON array, a comma-separated list, ID=URL pairs) must mean the
 * same shards, with the same ids, to each of them, including URLs whose password and query hold
 * commas and '=' (functions/handlers/shared/shard-urls.ts). Real PostgreSQL: two shard databases
 * reached with a login whose password is `p,w=1@x`, the catalog migrated, a slot map of shard_a
 * and shard_b, and a fence row on shard_b that the fences command must list under shard_b.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../../bin/commands/kit.js';
import { createMigrateCommand } from '../../../bin/commands/migrate.js';
import { createShardsCommand } from '../../../bin/commands/shards.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { parseMigrationEnv } from '../../../functions/handlers/shared/env.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

let server: TestPostgres;
let catalogUrl: string;
/** shard_a's and shard_b's URLs: a password with a comma, '=' and an escaped '@'; a query with a comma. */
let urls: { shard_a: string; shard_b: string };
/** A slot the map gives shard_b, fenced there by a hand change that did not finish. */
let fencedSlot: number;

function capture(): { io: CliIo; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { stdout: (t) => out.push(t), stderr: (t) => err.push(t), cwd: process.cwd() }, out, err };
}

beforeAll(async () => {
  server = await startTestPostgres();
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  try {
    for (const db of ['sdu_catalog', 'sdu_shard_a', 'sdu_shard_b']) await admin.query(`create database ${db}`);
    await admin.query(`create role sdu_owner login superuser password 'p,w=1@x'`);
  } finally {
    await admin.end();
  }
  const at = (db: string): string => `postgresql://sdu_owner:p,w=1%40x@127.0.0.1:${server.port}/${db}?application_name=sdu,test`;
  catalogUrl = at('sdu_catalog');
  urls = { shard_a: at('sdu_shard_a'), shard_b: at('sdu_shard_b') };
  const pools = [catalogUrl, urls.shard_a, urls.shard_b].map((connectionString) => new pg.Pool({ connectionString, max: 1 }));
  const [catalog, a, b] = pools as [pg.Pool, pg.Pool, pg.Pool];
  try {
    await migrateAll({ catalog, shards: [a, b] });
    const map = await new SlotMapStore(catalog).initialise(buildSlotMap([{ shardId: 'shard_a', weight: 1 }, { shardId: 'shard_b', weight: 1 }]), 'test', 'shard_a and shard_b');
    fencedSlot = map.assignments.indexOf('shard_b');
    await b.query(`insert into write_fences (kind, unit_id, state, map_version) values ('slot', $1, 'fenced', $2)`, [String(fencedSlot), map.version]);
  } finally {
    await Promise.all(pools.map((p) => p.end()));
  }
}, 120_000);
afterAll(async () => {
  await server?.stop();
});

const FORMS = ['a JSON array', 'a comma-separated list', 'ID=URL pairs', 'a JSON array of ID=URL pairs'] as const;

/** The same two shards in every documented form. */
function forms(): Record<(typeof FORMS)[number], string> {
  return {
    'a JSON array': JSON.stringify([urls.shard_a, urls.shard_b]),
    'a comma-separated list': `${urls.shard_a},${urls.shard_b}`,
    'ID=URL pairs': `shard_a=${urls.shard_a},shard_b=${urls.shard_b}`,
    'a JSON array of ID=URL pairs': JSON.stringify([`shard_a=${urls.shard_a}`, `shard_b=${urls.shard_b}`]),
  };
}

describe('one SHARD_DATABASE_URLS for every reader', () => {
  it.each(FORMS)('the migrate function reads %s as the two shards, in order', (form) => {
    const env = parseMigrationEnv({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: forms()[form] });

    expect(env.shards.map((s) => s.url)).toEqual([urls.shard_a, urls.shard_b]);
    expect(env.shards.map((s) => s.id)).toEqual(form.includes('ID=URL') ? ['shard_a', 'shard_b'] : [undefined, undefined]);
  });

  it.each(FORMS)('ca-dms-scaling migrate migrates the two shards given as %s, naming them as given', async (form) => {
    const { io, out } = capture();

    const code = await createMigrateCommand({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: forms()[form] }).run([], io);

    expect(code).toBe(0);
    const named = form.includes('ID=URL');
    expect(out.map((l) => l.slice(0, 10).trim())).toEqual(['catalog', 'catalog', named ? 'shard_a' : 'shard 1', named ? 'shard_b' : 'shard 2']);
    expect(out.every((l) => l.includes('up to date'))).toBe(true);
  }, 30_000);

  it.each(['ID=URL pairs', 'a JSON array of ID=URL pairs'] as const)('ca-dms-scaling shards fences reads %s as the shards they name', async (form) => {
    const { io, out } = capture();

    const code = await createShardsCommand({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: forms()[form] }).run(['fences'], io);

    expect(code).toBe(1);
    expect(out.join('')).toMatch(new RegExp(`^shard_b  slot ${fencedSlot}  fenced  job -  moved_to -  map_version 1  owner shard_b `, 'm'));
    expect(out.join('')).toMatch(/left fenced by a hand change that did not finish .*still names shard_b/);
  }, 30_000);

  it.each(['a JSON array', 'a comma-separated list'] as const)("ca-dms-scaling shards fences numbers %s by SHARDING_CONFIG_JSON's shards, as the functions pair their secrets", async (form) => {
    const sharding = JSON.stringify({ shards: [{ shard_id: 'shard_a', database_url: 'postgresql://a.invalid/x' }, { shard_id: 'shard_b', database_url: 'postgresql://b.invalid/x' }], default_shard: 'shard_a' });
    const { io, out } = capture();

    const code = await createShardsCommand({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: forms()[form], SHARDING_CONFIG_JSON: sharding }).run(['fences'], io);

    expect(code).toBe(1);
    expect(out.join('')).toMatch(new RegExp(`^shard_b  slot ${fencedSlot}  fenced  .*owner shard_b `, 'm'));
  }, 30_000);

  it('ca-dms-scaling shards fences refuses URLs without ids when nothing says which shard each is, naming the variable, and reads nothing', async () => {
    const run = createShardsCommand({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: forms()['a comma-separated list'] }).run(['fences'], capture().io);

    await expect(run).rejects.toThrow(/^SHARD_DATABASE_URLS: expected ID=URL pairs: entry 1 names no shard id, and without SHARDING_CONFIG_JSON its position names none/);
  });

  it('every reader refuses the same mix of forms, naming the variable and the entry, without the password', async () => {
    const mixed = `shard_a=${urls.shard_a},${urls.shard_b}`;
    const refusals = [
      await createMigrateCommand({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: mixed }).run([], capture().io).then(() => 'accepted', (e: Error) => e.message),
      await createShardsCommand({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: mixed }).run(['fences'], capture().io).then(() => 'accepted', (e: Error) => e.message),
      (() => {
        try {
          parseMigrationEnv({ CATALOG_DATABASE_URL: catalogUrl, SHARD_DATABASE_URLS: mixed });
          return 'accepted';
        } catch (e) {
          return (e as Error).message;
        }
      })(),
    ];

    for (const message of refusals) {
      expect(message).toMatch(/SHARD_DATABASE_URLS: entry 2 is a plain URL, but entry 1 is ID=URL: give every entry as ID=URL, or none/);
      expect(message).not.toMatch(/p,w|%40x/);
    }
  });
});
