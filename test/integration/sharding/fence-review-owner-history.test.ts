/**
 * Issue #15 (the fence review's owner history): the review asks which shards owned each `fenced`
 * slot row's slot in the maps since the row's version (fence-review.ts `ownersOfSlotsSince`), and
 * read every map since the oldest row's version to answer, linear in the history
 * (bench/fence-review.ts). Sharding migrations 023 and 024 keep each slot's owner history in
 * catalog.slot_owner_history (the CAF08 trigger records the slots each map changes; updates,
 * deletes and truncates of the maps, a superuser's, are followed; 024 fills the maps published
 * before 023), and the review reads it instead. This test compares the two answers on random
 * histories (fast-check; a seed is printed on a mismatch, FENCE_OWNER_HISTORY_SEED replays one):
 * flips, maps by hand, NULL owners, other slot counts, gaps in the versions, maps inserted below
 * others, inserts skipped by ON CONFLICT DO NOTHING or rolled back, updates and deletes of one map
 * or several, truncates; and checks the table is exactly what 024's fill computes from the maps.
 * The last describe covers the fill: the maps published before 023, a deploy between 023 and 024
 * (the review reads the maps where the history lacks a slot), and a flip during the fill at each
 * default isolation level (held off by nothing, recorded by its own trigger).
 */
import { cpSync, mkdtempSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ownersOfSlotsFromHistory, ownersOfSlotsSince, ownersOfSlotsSinceByMaps } from '../../../functions/adapters/postgres/fence-review.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { MIGRATIONS, type TestPostgres } from '../../support/postgres.js';
import { databaseAtIsolation, startShardingCatalog, untilSomeoneWaits } from './fixtures/sharding-catalog.js';

const SLOTS = 6;
const OWNERS = ['shard_a', 'shard_b', 'shard_c'];

let server: TestPostgres;
let admin: pg.Pool;

beforeAll(async () => {
  ({ server, admin } = await startShardingCatalog(1));
}, 60_000);
afterAll(async () => {
  await admin?.end();
  await server?.stop();
});

/** What migration 024's fill computes from the maps, and what the table holds: the two must be equal. */
const HISTORY_FROM_MAPS = `select (u.i - 1)::integer as slot, m.version as from_version, u.owner as shard_id
  from (select version, assignments, lag(assignments) over (order by version) as before from catalog.slot_maps) m
  cross join lateral unnest(m.assignments, m.before) with ordinality as u(owner, before, i)
 where m.before is null or u.owner is distinct from u.before
 order by 1, 2`;
const HISTORY = 'select slot, from_version, shard_id from catalog.slot_owner_history order by 1, 2';

/** Every (slot, version) pair a fenced row might carry: every slot (and one past them) at every version from 0 to past the latest. */
async function everyPair(c: pg.Pool | pg.PoolClient): Promise<Array<{ slot: number; version: number }>> {
  const { rows } = await c.query<{ top: number | null; slots: number | null }>('select max(version) as top, max(slot_count) as slots from catalog.slot_maps');
  const top = rows[0]?.top ?? 0;
  const slots = rows[0]?.slots ?? SLOTS;
  return Array.from({ length: slots + 1 }, (_, slot) => Array.from({ length: top + 2 }, (_, version) => ({ slot, version }))).flat();
}

/** The history's answers and the maps', the table and 024's fill, side by side; `complete`: the history answered every pair of a slot the first map has. */
async function compare(c: pg.Pool | pg.PoolClient): Promise<{ fromHistory: unknown; fromMaps: unknown; table: unknown; fill: unknown; answered: unknown; everyKnown: unknown }> {
  const pairs = await everyPair(c);
  const sorted = (m: Map<string, string[]>) => Object.fromEntries([...m].sort(([a], [b]) => a.localeCompare(b)));
  const { owners, unknown } = await ownersOfSlotsFromHistory(c, pairs);
  const fromMaps = await ownersOfSlotsSinceByMaps(c, pairs);
  const first = (await c.query<{ n: number | null }>('select slot_count as n from catalog.slot_maps order by version limit 1')).rows[0]?.n ?? 0;
  return {
    fromHistory: sorted(await ownersOfSlotsSince(c, pairs)),
    fromMaps: sorted(fromMaps),
    // The pairs the history answered itself, as the maps answer them.
    answered: sorted(owners),
    everyKnown: sorted(new Map([...fromMaps].filter(([key]) => owners.has(key)))),
    table: (await c.query(HISTORY)).rows,
    fill: (await c.query(HISTORY_FROM_MAPS)).rows,
    ...(unknown.some((p) => p.slot < first) ? { unknownWithinFirstMap: unknown.filter((p) => p.slot < first) } : {}),
  };
}

type Op =
  | { op: 'insert'; at: 'next' | 'gap' | 'below'; flips: Array<[number, string | null]>; fresh: boolean; slots: number; conflict: boolean; rollback: boolean }
  | { op: 'update'; which: number; slot: number; owner: string | null }
  | { op: 'updateMany'; parity: number; slot: number; owner: string | null }
  | { op: 'renumber'; which: number; by: number }
  | { op: 'delete'; which: number }
  | { op: 'deleteMany'; from: number; count: number }
  | { op: 'truncate' };

const owner = fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...OWNERS) }, { weight: 1, arbitrary: fc.constant(null) });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.record({
      op: fc.constant('insert' as const),
      at: fc.constantFrom('next' as const, 'next' as const, 'next' as const, 'gap' as const, 'below' as const),
      flips: fc.array(fc.tuple(fc.integer({ min: 0, max: SLOTS + 1 }), owner), { maxLength: 3 }),
      fresh: fc.constantFrom(false, false, false, true), // A map by hand: every slot drawn again.
      slots: fc.constantFrom(SLOTS, SLOTS, SLOTS, SLOTS, SLOTS - 2, SLOTS + 2),
      conflict: fc.boolean(),
      rollback: fc.constantFrom(false, false, false, true),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('update' as const), which: fc.nat(), slot: fc.integer({ min: 0, max: SLOTS - 1 }), owner }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('updateMany' as const), parity: fc.integer({ min: 0, max: 1 }), slot: fc.integer({ min: 0, max: SLOTS - 1 }), owner }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('renumber' as const), which: fc.nat(), by: fc.integer({ min: 1, max: 5 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), which: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('deleteMany' as const), from: fc.nat(), count: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'truncate' as const }) },
);

/** Applies `op` to the maps in `c`'s transaction, as a superuser's SQL or a store's insert would. */
async function apply(c: pg.PoolClient, op: Op, fresh: () => string | null): Promise<void> {
  const { rows } = await c.query<{ version: number; assignments: (string | null)[] }>('select version, assignments from catalog.slot_maps order by version');
  const versions = rows.map((r) => r.version);
  const pickVersion = (n: number): number | undefined => versions[n % Math.max(1, versions.length)];
  switch (op.op) {
    case 'insert': {
      const top = versions.at(-1) ?? 0;
      const free = Array.from({ length: top }, (_, i) => i + 1).filter((v) => !versions.includes(v));
      const conflicting = op.conflict && versions.length > 0 && op.at === 'below';
      const version = conflicting ? (pickVersion(op.flips.length) as number) : op.at === 'next' ? top + 1 : op.at === 'gap' ? top + 3 : (free[op.flips.length % Math.max(1, free.length)] ?? top + 1);
      const base = rows.at(-1)?.assignments ?? [];
      const assignments = Array.from({ length: op.slots }, (_, slot) => (op.fresh || slot >= base.length ? fresh() : (base[slot] ?? null)));
      for (const [slot, o] of op.flips) if (slot < op.slots) assignments[slot] = o;
      if (op.rollback) await c.query('savepoint op');
      await c.query(
        `insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'test')${conflicting ? ' on conflict do nothing' : ''}`,
        [version, op.slots, assignments],
      );
      if (op.rollback) await c.query('rollback to savepoint op');
      return;
    }
    case 'update': {
      const version = pickVersion(op.which);
      if (version !== undefined) await c.query('update catalog.slot_maps set assignments[$2::int + 1] = $3 where version = $1 and slot_count > $2', [version, op.slot, op.owner]);
      return;
    }
    case 'updateMany':
      await c.query('update catalog.slot_maps set assignments[$2::int + 1] = $3 where version % 2 = $1 and slot_count > $2', [op.parity, op.slot, op.owner]);
      return;
    case 'renumber': {
      const version = pickVersion(op.which);
      // A version free above it or in a gap: the primary key refuses a taken one.
      if (version !== undefined && !versions.includes(version + op.by)) await c.query('update catalog.slot_maps set version = version + $2 where version = $1', [version, op.by]);
      return;
    }
    case 'delete': {
      const version = pickVersion(op.which);
      if (version !== undefined) await c.query('delete from catalog.slot_maps where version = $1', [version]);
      return;
    }
    case 'deleteMany': {
      const version = pickVersion(op.from);
      if (version !== undefined) await c.query('delete from catalog.slot_maps where version >= $1 and version < $1 + $2', [version, op.count]);
      return;
    }
    case 'truncate':
      await c.query('truncate catalog.slot_maps');
      return;
  }
}

const SEED = process.env['FENCE_OWNER_HISTORY_SEED'] === undefined ? 15_023 : Number(process.env['FENCE_OWNER_HISTORY_SEED']);
const RUNS = Number(process.env['FENCE_OWNER_HISTORY_RUNS'] ?? 150);

describe('the owner history answers as the maps do', () => {
  it('on random histories (flips, maps by hand, NULL owners, other slot counts, gaps, maps below others, skipped and rolled-back inserts, updates, renumbers, deletes, truncates)', async () => {
    const c = await admin.connect();
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 25 }), fc.integer({ min: 0, max: 1_000_000 }), async (ops, drawSeed) => {
          let draw = drawSeed;
          const fresh = (): string | null => {
            draw = (draw * 1_103_515_245 + 12_345) % 2_147_483_648;
            return draw % 17 === 0 ? null : (OWNERS[draw % OWNERS.length] as string);
          };
          await c.query('begin');
          try {
            await c.query(`select set_config('ca_dms.map_writer', 'by hand: test', true)`);
            for (const op of ops) await apply(c, op, fresh);
            const seen = await compare(c);
            expect(seen.fromHistory).toEqual(seen.fromMaps);
            expect(seen.answered).toEqual(seen.everyKnown);
            expect(seen.table).toEqual(seen.fill);
            expect(seen).not.toHaveProperty('unknownWithinFirstMap');
          } finally {
            await c.query('rollback');
          }
        }),
        { numRuns: RUNS, seed: SEED },
      );
    } finally {
      c.release();
    }
  }, 120_000);

  it('a flip records one row, the first map one a slot, a refused map none; the control login reads them', async () => {
    const c = await admin.connect();
    try {
      await c.query('begin');
      const insert = (version: number, owners: string[]) =>
        c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'test')`, [version, owners.length, owners]);
      const map = ['shard_a', 'shard_b', 'shard_a', 'shard_b'];
      await insert(1, map);
      await insert(2, map.map((o, i) => (i === 2 ? 'shard_c' : o)));
      await insert(3, map.map((o, i) => (i === 2 ? 'shard_c' : o)));
      // A move of slot 1 not finished: a map changing its owner is refused (CAF08), and records nothing.
      await c.query(`insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by) values ('slot', '1', 1, 'shard_b', 'shard_c', 'copying', 'test')`);
      await c.query('savepoint refused');
      await expect(insert(4, map.map((o, i) => (i === 1 ? 'shard_c' : o)))).rejects.toMatchObject({ code: 'CAF08' });
      await c.query('rollback to savepoint refused');
      expect((await c.query(HISTORY)).rows).toEqual([
        { slot: 0, from_version: 1, shard_id: 'shard_a' },
        { slot: 1, from_version: 1, shard_id: 'shard_b' },
        { slot: 2, from_version: 1, shard_id: 'shard_a' },
        { slot: 2, from_version: 2, shard_id: 'shard_c' },
        { slot: 3, from_version: 1, shard_id: 'shard_b' },
      ]);
      const { owners, unknown } = await ownersOfSlotsFromHistory(c, [{ slot: 2, version: 0 }, { slot: 2, version: 3 }, { slot: 1, version: 9 }]);
      expect({ owners: Object.fromEntries(owners), unknown }).toEqual({ owners: { '2:0': ['shard_a', 'shard_c'], '2:3': ['shard_c'], '1:9': [] }, unknown: [] });
      // The review's login (the API's control login) reads it: granted as the maps are.
      await c.query('set local role ca_dms_control');
      expect(Object.fromEntries(await ownersOfSlotsSince(c, [{ slot: 2, version: 0 }]))).toEqual({ '2:0': ['shard_a', 'shard_c'] });
    } finally {
      await c.query('rollback');
      c.release();
    }
  });
});

describe("migration 024's fill of the maps published before 023", () => {
  /** The sharding migrations up to `last` in a folder of their own (the caller removes it). */
  const upTo = (last: number): string => {
    const folder = mkdtempSync(join(tmpdir(), `sharding-${last}-`));
    cpSync(MIGRATIONS.sharding, folder, { recursive: true });
    for (const file of readdirSync(folder)) if (/^\d{3}_/.test(file) && Number(file.slice(0, 3)) > last) unlinkSync(join(folder, file));
    return folder;
  };
  const insertMap = (c: pg.Pool | pg.ClientBase, version: number, owners: readonly (string | null)[]) =>
    c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'test')`, [version, owners.length, owners]);
  const MAP = ['shard_a', 'shard_b', 'shard_c', 'shard_a', 'shard_b', 'shard_c'];
  /** Maps 1 to 6, each flipping a slot of the one before it (one a hole), inserted before 023. */
  const history = async (c: pg.Pool | pg.ClientBase): Promise<void> => {
    let map: (string | null)[] = MAP;
    for (let v = 1; v <= 6; v += 1) {
      await insertMap(c, v, map);
      map = map.map((o, i) => (i === v % SLOTS ? (v === 4 ? null : (OWNERS[(v + i) % OWNERS.length] as string)) : o));
    }
  };

  it('fills the history of the maps before 023; between 023 and 024 the review reads the maps for the slots the history lacks, with the same answers', async () => {
    const to022 = upTo(22);
    const to023 = upTo(23);
    const database = 'owner_history_fill';
    await admin.query(`create database ${database}`);
    const pool = new pg.Pool({ connectionString: server.urlFor(database), max: 1 });
    pool.on('error', () => undefined);
    try {
      await runMigrations(pool, 'sharding', to022);
      await history(pool);
      await runMigrations(pool, 'sharding', to023);
      // A deploy between 023 and 024: maps since 023 recorded, the older ones not yet.
      const six = (await pool.query<{ a: (string | null)[] }>('select assignments as a from catalog.slot_maps where version = 6')).rows[0]?.a ?? [];
      expect(six[5]).toBe('shard_b');
      await insertMap(pool, 7, six.map((o, i) => (i === 5 ? 'shard_a' : o)));
      expect((await pool.query(HISTORY)).rows).toEqual([{ slot: 5, from_version: 7, shard_id: 'shard_a' }]);
      const pairs = await everyPair(pool);
      const { owners, unknown } = await ownersOfSlotsFromHistory(pool, pairs);
      // Before 028 the catalog does not list the maps the history holds (a map inserted with the
      // triggers off is not told from one that changed nothing): every pair is read from the maps.
      expect([...owners.keys()]).toEqual([]);
      expect(unknown).toHaveLength((SLOTS + 1) * 9);
      expect(await ownersOfSlotsSince(pool, pairs)).toEqual(await ownersOfSlotsSinceByMaps(pool, pairs));
      await runMigrations(pool, 'sharding', MIGRATIONS.sharding);
      const seen = await compare(pool);
      expect(seen.table).toEqual(seen.fill);
      expect(seen.fromHistory).toEqual(seen.fromMaps);
      expect(seen.answered).toEqual(seen.everyKnown);
      expect(seen).not.toHaveProperty('unknownWithinFirstMap');
    } finally {
      await pool.end();
      await admin.query(`drop database ${database} with (force)`);
      rmSync(to022, { recursive: true, force: true });
      rmSync(to023, { recursive: true, force: true });
    }
  }, 60_000);

  it.each(['read committed', 'repeatable read', 'serializable'])('holds off no map insert, and a flip during the fill is recorded by its own trigger (the database default isolation %s)', async (isolation) => {
    const to023 = upTo(23);
    const database = `owner_history_live_${isolation.replace(' ', '_')}`;
    const { pool, connect, close } = await databaseAtIsolation(server, admin, database, isolation);
    const holder = await connect();
    const writer = await connect();
    try {
      await runMigrations(pool, 'sharding', to023);
      // The history before 023: inserted with the triggers off, so nothing of it recorded.
      await writer.query('begin');
      await writer.query('set local session_replication_role = replica');
      await history(writer);
      await writer.query('commit');
      expect((await pool.query('select count(*)::int as n from catalog.slot_owner_history')).rows[0]?.n).toBe(0);
      // The fill is held at the first map's slot 0 by an uncommitted row of it.
      await holder.query('begin');
      await holder.query(`insert into catalog.slot_owner_history values (0, 1, 'shard_x')`);
      const migrated = runMigrations(pool, 'sharding', MIGRATIONS.sharding);
      await untilSomeoneWaits(admin, database);
      // Meanwhile a flip: published, not held off, its row recorded by its trigger.
      await writer.query(`set lock_timeout = '2s'`);
      const latest = (await writer.query<{ a: string[] }>('select assignments as a from catalog.slot_maps where version = 6')).rows[0]?.a as string[];
      await insertMap(writer, 7, latest.map((o, i) => (i === 0 ? (o === 'shard_a' ? 'shard_b' : 'shard_a') : o)));
      await holder.query('rollback');
      await migrated;
      const seen = await compare(pool);
      expect(seen.table).toEqual(seen.fill);
      expect(seen.fromHistory).toEqual(seen.fromMaps);
      expect(seen).not.toHaveProperty('unknownWithinFirstMap');
    } finally {
      await close();
      rmSync(to023, { recursive: true, force: true });
    }
  }, 60_000);
});
