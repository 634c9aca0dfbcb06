/**
 * Issue #15 (review of sharding migration 028, the owner history's list of the maps it holds): the
 * review (fence-review.ts `ownersOfSlotsFromHistory`) trusts a slot's history only above the
 * highest map not listed in catalog.slot_owner_history_maps, and reads the maps for the others.
 * - 028 listed every map there was, its rows recorded or not: a map inserted with the triggers off
 *   (`session_replication_role = replica`, a superuser's restore) after 024's fill and before 028
 *   had no rows and was listed all the same, and the review answered without the owner it gave the
 *   slot (sharding migration 029 unlists such a map and computes its rows again).
 * - A map left unlisted (inserted with the triggers off since 028) sends every slot that changed
 *   at or below it, most slots of a catalog, to the read of every map since the version asked
 *   for, for good: the slow read 023 replaced (past the API's 27 s at 20,000 maps). Migration 029's
 *   catalog.slot_owner_history_repair() computes the unlisted maps' rows again and lists them.
 *   The review says so in its output (`ownerHistory`: how many maps, how many slots read the slow
 *   way, the repair), where it was silent, seconds slower and nobody told why.
 */
import { cpSync, mkdtempSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listFences, ownersOfSlotsFromHistory, ownersOfSlotsSince, ownersOfSlotsSinceByMaps } from '../../../functions/adapters/postgres/fence-review.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { MIGRATIONS, type TestPostgres } from '../../support/postgres.js';
import { startShardingCatalog } from './fixtures/sharding-catalog.js';

let server: TestPostgres;
let admin: pg.Pool;
const folders: string[] = [];

beforeAll(async () => {
  ({ server, admin } = await startShardingCatalog(2));
}, 60_000);
afterAll(async () => {
  for (const folder of folders) rmSync(folder, { recursive: true, force: true });
  await admin?.end();
  await server?.stop();
});

/** The sharding migrations up to `last` in a folder of their own. */
function upTo(last: number): string {
  const folder = mkdtempSync(join(tmpdir(), `sharding-${last}-`));
  folders.push(folder);
  cpSync(MIGRATIONS.sharding, folder, { recursive: true });
  for (const file of readdirSync(folder)) if (/^\d{3}_/.test(file) && Number(file.slice(0, 3)) > last) unlinkSync(join(folder, file));
  return folder;
}

/** A database of its own, `fn` given a pool of it; dropped afterwards. */
async function inDatabase(name: string, fn: (pool: pg.Pool) => Promise<void>): Promise<void> {
  await admin.query(`create database ${name}`);
  const pool = new pg.Pool({ connectionString: server.urlFor(name), max: 2 });
  pool.on('error', () => undefined);
  try {
    await fn(pool);
  } finally {
    await pool.end();
    await admin.query(`drop database ${name} with (force)`);
  }
}

const SLOTS = 4;
const A = Array.from({ length: SLOTS }, () => 'shard_a');
const with_ = (slot: number, owner: string, base: readonly string[] = A) => base.map((o, i) => (i === slot ? owner : o));

const insertMap = (c: pg.Pool | pg.ClientBase, version: number, owners: readonly string[]) =>
  c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'test')`, [version, owners.length, owners]);

/** Inserts a map with the triggers off, as a superuser's restore (`pg_restore --disable-triggers`) does. */
async function insertWithTriggersOff(pool: pg.Pool, version: number, owners: readonly string[]): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query('begin');
    await c.query('set local session_replication_role = replica');
    await insertMap(c, version, owners);
    await c.query('commit');
  } finally {
    c.release();
  }
}

/** Every slot at every version from 0 to past the latest. */
async function everyPair(pool: pg.Pool): Promise<Array<{ slot: number; version: number }>> {
  const { rows } = await pool.query<{ top: number | null }>('select max(version) as top from catalog.slot_maps');
  const top = rows[0]?.top ?? 0;
  return Array.from({ length: SLOTS }, (_, slot) => Array.from({ length: top + 2 }, (_, version) => ({ slot, version }))).flat();
}

const sorted = (m: Map<string, string[]>) => Object.fromEntries([...m].sort(([a], [b]) => a.localeCompare(b)));

describe('a map inserted with the triggers off between migrations 024 and 028', () => {
  /** Each case: maps inserted after 027, `off` among them inserted with the triggers off (a restore between two deploys). */
  const cases: Array<{ name: string; maps: Array<[number, string[]]>; off: number; owners: Record<string, string[]> }> = [
    {
      name: 'the latest then (slot 0 given to shard_b, nothing recorded), a recorded map after it',
      maps: [
        [1, A],
        [2, with_(0, 'shard_b')],
        [3, with_(1, 'shard_c', with_(0, 'shard_b'))],
      ],
      off: 2,
      owners: { '0:1': ['shard_a', 'shard_b'], '0:2': ['shard_b'] },
    },
    {
      name: 'into a gap below a recorded map (compared with the map before the gap when recorded)',
      maps: [
        [1, A],
        [3, with_(1, 'shard_c')],
        [2, with_(0, 'shard_b')],
      ],
      off: 2,
      owners: { '0:2': ['shard_a', 'shard_b'], '0:3': ['shard_a'] },
    },
  ];

  it.each(cases)('$name: not trusted as recorded once the migrations have run, the review answering as the maps do', async ({ maps, off, owners }) => {
    await inDatabase('owner_history_window', async (pool) => {
      await runMigrations(pool, 'sharding', upTo(27));
      for (const [version, map] of maps) await (version === off ? insertWithTriggersOff(pool, version, map) : insertMap(pool, version, map));
      await runMigrations(pool, 'sharding', MIGRATIONS.sharding);
      const pairs = await everyPair(pool);
      const byMaps = sorted(await ownersOfSlotsSinceByMaps(pool, pairs));
      for (const [pair, expected] of Object.entries(owners)) expect(byMaps[pair]).toEqual(expected);
      expect(sorted(await ownersOfSlotsSince(pool, pairs))).toEqual(byMaps);
      // And from the history alone, not by falling back to the maps for good.
      expect((await ownersOfSlotsFromHistory(pool, pairs)).unknown).toEqual([]);
    });
  }, 60_000);
});

describe('a map inserted with the triggers off since migration 028 (a restore)', () => {
  it('sends the slots it may have changed to the maps until catalog.slot_owner_history_repair() records it; then the history answers them all, as the maps do', async () => {
    await inDatabase('owner_history_repair', async (pool) => {
      await runMigrations(pool, 'sharding', MIGRATIONS.sharding);
      await insertMap(pool, 1, A);
      await insertWithTriggersOff(pool, 2, with_(0, 'shard_b'));
      // Later flips of slot 3 alone: slots 0 to 2 last changed at or below the unlisted map 2.
      let map = with_(0, 'shard_b');
      for (let v = 3; v <= 12; v++) {
        map = with_(3, v % 2 === 0 ? 'shard_a' : 'shard_c', map);
        await insertMap(pool, v, map);
      }
      const pairs = await everyPair(pool);
      const before = await ownersOfSlotsFromHistory(pool, pairs);
      // Slots 0 to 2 at every version of a map (0 to 12; none past the latest has an owner), slot 3
      // at those up to the unlisted map: read from the maps, however long ago the restore was.
      expect(before.unknown.filter((p) => p.slot < 3)).toHaveLength(3 * 13);
      expect(before.unknown.filter((p) => p.slot === 3).map((p) => p.version).sort((a, b) => a - b)).toEqual([0, 1, 2]);
      expect(sorted(await ownersOfSlotsSince(pool, pairs))).toEqual(sorted(await ownersOfSlotsSinceByMaps(pool, pairs)));

      const { rows } = await pool.query<{ repaired: number }>('select catalog.slot_owner_history_repair() as repaired');
      expect(rows[0]?.repaired).toBe(1);
      expect((await pool.query('select version from catalog.slot_maps except select version from catalog.slot_owner_history_maps')).rows).toEqual([]);
      const after = await ownersOfSlotsFromHistory(pool, pairs);
      expect(after.unknown).toEqual([]);
      expect(sorted(await ownersOfSlotsSince(pool, pairs))).toEqual(sorted(await ownersOfSlotsSinceByMaps(pool, pairs)));
      // Nothing left to repair: a second call records nothing.
      expect((await pool.query<{ repaired: number }>('select catalog.slot_owner_history_repair() as repaired')).rows[0]?.repaired).toBe(0);
    });
  }, 60_000);

  it("says so in the review's output: how many maps are not listed, how many slots were read from the maps, and the repair; silent once repaired", async () => {
    await inDatabase('owner_history_said', async (pool) => {
      await runMigrations(pool, 'sharding', MIGRATIONS.sharding);
      await admin.query('create database owner_history_said_shard');
      const shard = new pg.Pool({ connectionString: server.urlFor('owner_history_said_shard'), max: 2 });
      shard.on('error', () => undefined);
      try {
        await runMigrations(shard, 'shard', MIGRATIONS.shard);
        await insertMap(pool, 1, A);
        await insertWithTriggersOff(pool, 2, with_(0, 'shard_b'));
        await insertWithTriggersOff(pool, 3, A);
        await insertMap(pool, 4, with_(3, 'shard_c'));
        // Two dead hand changes' rows on their slots' owner (slots 1 and 2), at version 0.
        await shard.query(`insert into write_fences (kind, unit_id, state, map_version, updated_at) select 'slot', s, 'fenced', 0, now() - interval '1 hour' from unnest(array['1', '2']) s`);
        const shards = new Map([['shard_a', shard]]);
        const listed = await listFences({ catalog: pool, shards, timeoutMs: 20_000, routing: { strategy: 'hash_based', overrideHash: true, fallback: 'hash' } });
        expect(listed.ownerHistory).toBe(
          '2 slot maps are not listed in the owner history (catalog.slot_owner_history_maps: inserted with the triggers off, a restore), so the owners of 2 slots were read from every slot map since their rows\' versions, not from their owner history (slow: linear in the maps, seconds at thousands). ' +
            'Run, as the migration login: select catalog.slot_owner_history_repair(); (docs/sharding-spec.md section 9, "Each slot\'s owner history")',
        );
        expect(listed.rows.map((r) => [r.unitId, r.action])).toEqual([
          ['1', 'reopen'],
          ['2', 'reopen'],
        ]);
        expect((await pool.query<{ repaired: number }>('select catalog.slot_owner_history_repair() as repaired')).rows[0]?.repaired).toBe(2);
        const after = await listFences({ catalog: pool, shards, timeoutMs: 20_000, routing: { strategy: 'hash_based', overrideHash: true, fallback: 'hash' } });
        expect({ ownerHistory: after.ownerHistory, rows: after.rows.length }).toEqual({ ownerHistory: undefined, rows: 2 });
      } finally {
        await shard.end();
        await admin.query('drop database owner_history_said_shard with (force)');
      }
    });
  }, 60_000);

  it('is the migration login\'s alone to call: the control and application logins may not', async () => {
    const { rows } = await admin.query<{ role: string; call: boolean }>(
      `select r.role, has_function_privilege(r.role, 'catalog.slot_owner_history_repair()', 'execute') as call
         from unnest(array['ca_dms_control', 'ca_dms_app']) as r(role) order by 1`,
    );
    expect(rows).toEqual([
      { role: 'ca_dms_app', call: false },
      { role: 'ca_dms_control', call: false },
    ]);
  });
});
