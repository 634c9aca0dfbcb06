/**
 * Issue #15 (review of sharding migration 018): 018 replaced three of 013's functions to make a
 * map by hand cheap (catalog.shard_known, catalog.publish_slot_map_by_hand and the CAF08 trigger
 * function catalog.slot_maps_owner_kept), and 019 a fourth (catalog.shard_refusal, reading
 * ca_dms.new_shards first), each promising the same answer in every case. by-hand-cost.test.ts
 * pins one case per branch; this test compares 018's functions with 013's own text (read from
 * 013_by_hand_arguments.sql and created beside them under `_013` names) on random catalogs: maps of
 * several versions, move jobs in every state (finished or not, copied or not, flipped or not, slot
 * or directory), directory entries, every kind of writer (none, a move's flip, by hand with and
 * without `ca_dms.override_moves`, a stranger), `ca_dms.new_shards`, the first map. Each case runs
 * both versions on the same rows in the same transaction, rolled back, and compares the whole
 * outcome (SQLSTATE, message, DETAIL, HINT, or the row published). A seed is printed on a mismatch;
 * BY_HAND_EQUIVALENCE_SEED replays one. Since sharding migrations 020 and 021, catalog.shard_known
 * reads "a slot map names it" from catalog.slot_map_shards, which the CAF08 trigger keeps: the
 * comparisons above cover maps recorded by that trigger; the last describe covers maps published
 * before 020 (read by 021's fill, which holds off no map insert, at any default isolation level),
 * concurrent writers (READ COMMITTED to SERIALIZABLE), a first map skipped by ON CONFLICT DO NOTHING
 * and one written after a TRUNCATE by an older snapshot.
 */
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { MIGRATIONS, sqlstateOf, startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { databaseAtIsolation, untilSomeoneWaits } from './fixtures/sharding-catalog.js';
import { mulberry32 as random } from '../../../functions/core/scaling/simulator/prng.js';

const SLOTS = 8;
const SHARDS = ['shard_001', 'shard_002', 'shard_003', 'shard_004'];
/** Owners a map by hand may name: known or not, and the malformed ones 013 refuses. */
const OWNERS = [...SHARDS, 'shard_old', 'shard_job', 'shard_dir', 'shard_005', 'shard_02', ' ', '', 'bad shard', 'x'.repeat(70)];
const ACTIVE = ['planned', 'copying', 'catching_up', 'cutover', 'verifying', 'cleaning_up'];
const FINISHED = ['done', 'failed', 'cancelled'];

let server: TestPostgres;
let admin: pg.Pool;

/** 013's text of `catalog.<name>`, created as `catalog.<name>_013`. */
function version013(name: string): string {
  const sql = readFileSync(join(MIGRATIONS.sharding, '013_by_hand_arguments.sql'), 'utf8');
  const start = sql.search(new RegExp(`create (or replace )?function catalog\\.${name}\\(`));
  if (start < 0) throw new Error(`013 does not create catalog.${name}`);
  const end = sql.indexOf('\n$$;', start);
  return sql.slice(start, end + 4).replace(`catalog.${name}(`, `catalog.${name}_013(`).replace(/^create function/, 'create or replace function');
}

beforeAll(async () => {
  server = await startTestPostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 1 });
  await runMigrations(admin, 'sharding', MIGRATIONS.sharding);
  for (const name of ['shard_known', 'shard_refusal', 'publish_slot_map_by_hand', 'slot_maps_owner_kept']) await admin.query(version013(name));
  await admin.query('create trigger slot_maps_owner_kept_013 before insert on catalog.slot_maps for each row execute function catalog.slot_maps_owner_kept_013()');
  await admin.query('alter table catalog.slot_maps disable trigger slot_maps_owner_kept_013');
}, 60_000);
afterAll(async () => {
  await admin?.end();
  await server?.stop();
});

type Rng = () => number;
const pick = <T,>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;

/** A random catalog in `c`'s transaction: 0-3 maps, move jobs, directory entries. Returns the job ids and the latest version. */
async function catalog(c: pg.PoolClient, r: Rng): Promise<{ jobs: string[]; version: number }> {
  const maps = Math.floor(r() * 4);
  for (let v = 1; v <= maps; v++) {
    const owners = Array.from({ length: SLOTS }, () => pick(r, r() < 0.2 ? [...SHARDS, 'shard_old'] : SHARDS.slice(0, 3)));
    await c.query(`select set_config('ca_dms.map_writer', 'by hand: setup', true)`);
    await c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'setup')`, [v, SLOTS, owners]);
  }
  await c.query(`select set_config('ca_dms.map_writer', '', true)`);
  const jobs: string[] = [];
  const job = async (kind: string, slot: number, state: string) => {
    const from = pick(r, [...SHARDS, 'shard_job']);
    const to = pick(r, [...SHARDS, 'shard_job'].filter((s) => s !== from));
    const { rows } = await c.query<{ id: string }>(
      `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at, flip_started_at)
       values ($1, $2, $3, $4, $5, $6, 'test', case when $7 then now() end, case when $8 then now() end) returning id`,
      [kind, kind === 'slot' ? String(slot) : `key-${slot}-${jobs.length}`, slot, from, to, state, r() < 0.5, r() < 0.3],
    );
    jobs.push(String(rows[0]?.id));
  };
  for (let slot = 0; slot < SLOTS; slot++) {
    const finished = Math.floor(r() * 3);
    for (let i = 0; i < finished; i++) await job(r() < 0.85 ? 'slot' : 'directory', slot, pick(r, FINISHED));
    if (r() < 0.5) await job(r() < 0.85 ? 'slot' : 'directory', slot, pick(r, ACTIVE));
  }
  const entries = Math.floor(r() * 3);
  for (let i = 0; i < entries; i++) {
    await c.query(`select set_config('ca_dms.pin_writer', 'by hand: setup', true)`);
    await c.query(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, 'test') on conflict do nothing`, [`key-${i}`, pick(r, [...SHARDS, 'shard_dir'])]);
  }
  return { jobs, version: maps };
}

/** `run` in a savepoint rolled back: what it answered, whole. */
async function outcome(c: pg.PoolClient, run: () => Promise<pg.QueryResult>): Promise<string> {
  await c.query('savepoint s');
  try {
    const { rows } = await run();
    return `rows ${JSON.stringify(rows.map((row: Record<string, unknown>) => ({ ...row, created_at: undefined })))}`;
  } catch (e) {
    const error = e as pg.DatabaseError;
    return `${error.code} | ${error.message} | ${error.detail} | ${error.hint}`;
  } finally {
    await c.query('rollback to savepoint s');
  }
}

/**
 * In `c`'s transaction, a catalog of one 8-slot map over three shards (version 1; answered, a
 * copy the caller may change) and 4,000 finished jobs, every slot moved from shard_001 to
 * shard_002: a history a map by hand must not read through. Nothing else (no directory entry);
 * not analyzed, so that a test may add its own jobs first.
 */
async function finishedJobsCatalog(c: pg.PoolClient): Promise<string[]> {
  await c.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
  const map = ['shard_001', 'shard_001', 'shard_002', 'shard_002', 'shard_003', 'shard_003', 'shard_003', 'shard_001'];
  await c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (1, 8, $1, 'test', 'initial')`, [map]);
  await c.query(
    `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at, flip_started_at, finished_at)
     select 'slot', (g % 8)::text, g % 8, 'shard_001', 'shard_002', 'done', 'test', now(), now(), now() from generate_series(1, 4000) g`,
  );
  return map;
}

/** The rows of catalog.move_jobs read so far in `c`'s transaction (sequential scans and index fetches): counted, not timed. */
async function jobRowsRead(c: pg.PoolClient): Promise<number> {
  return Number((await c.query<{ n: string }>(`select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n from pg_stat_xact_user_tables where schemaname = 'catalog' and relname = 'move_jobs'`)).rows[0]?.n ?? 0);
}

const CASES = Number(process.env['BY_HAND_EQUIVALENCE_CASES'] ?? 200);
const SEED = process.env['BY_HAND_EQUIVALENCE_SEED'] === undefined ? undefined : Number(process.env['BY_HAND_EQUIVALENCE_SEED']);
const seeds = SEED === undefined ? Array.from({ length: CASES }, (_, i) => 1 + i * 7919) : [SEED];

describe("sharding migration 018 answers as 013's functions did", () => {
  it('the CAF08 trigger: every insert of a map, whoever writes it, refused or published the same, word for word', async () => {
    const c = await admin.connect();
    let refused = 0;
    try {
      for (const seed of seeds) {
        const r = random(seed);
        await c.query('begin');
        try {
          const { jobs, version } = await catalog(c, r);
          const writer = pick(r, ['', 'by hand: OPS-7', 'by hand: OPS-7', 'by hand: OPS-7', `move job #${jobs.length > 0 ? pick(r, jobs) : '1'}`, `move job #${jobs.length > 0 ? pick(r, jobs) : '1'}`, 'move job #999999', 'someone']);
          await c.query(`select set_config('ca_dms.map_writer', $1, true)`, [writer]);
          if (r() < 0.6) await c.query(`select set_config('ca_dms.override_moves', $1, true)`, [jobs.filter(() => r() < 0.4).join(pick(r, [',', ', ']))]);
          const previous = (await c.query<{ assignments: string[] }>('select assignments from catalog.slot_maps order by version desc limit 1')).rows[0]?.assignments ?? SHARDS.slice(0, SLOTS).concat(SHARDS).slice(0, SLOTS);
          const next = [...previous];
          const changes = Math.floor(r() * 4);
          for (let i = 0; i < changes; i++) next[Math.floor(r() * SLOTS)] = pick(r, [...SHARDS, 'shard_job']);
          if (r() < 0.25) {
            // A move's flip as move-port.ts writes it: its slot to its target, sometimes with more.
            const { rows } = await c.query<{ id: string; slot: number; to_shard: string }>(`select id, slot, to_shard from catalog.move_jobs order by id`);
            if (rows.length > 0) {
              const flip = pick(r, rows);
              await c.query(`select set_config('ca_dms.map_writer', $1, true)`, [`move job #${flip.id}`]);
              next[flip.slot] = flip.to_shard;
            }
          }
          // Now and then another slot count (an INSERT by SQL may; the trigger zips the two maps).
          const shape = r();
          if (shape < 0.1) next.splice(SLOTS - 1, 1);
          else if (shape < 0.2) next.push(pick(r, SHARDS));
          const insert = () => c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'test') returning version, assignments`, [version + 1, next.length, next]);
          const now = await outcome(c, insert);
          await c.query('alter table catalog.slot_maps disable trigger slot_maps_owner_kept, enable trigger slot_maps_owner_kept_013');
          const before = await outcome(c, insert);
          expect(`seed ${seed}: ${now}`).toBe(`seed ${seed}: ${before}`);
          if (now.startsWith('CAF08')) refused++;
        } finally {
          await c.query('rollback');
        }
      }
    } finally {
      c.release();
    }
    // The cases reach both answers (the refusals and the maps let through).
    if (SEED === undefined) expect(refused).toBeGreaterThan(CASES / 10);
    if (SEED === undefined) expect(refused).toBeLessThan(CASES * 0.9);
  }, 240_000);

  it('catalog.shard_known, catalog.shard_refusal (019) and catalog.publish_slot_map_by_hand: the same answer for every shard and every map by hand', async () => {
    const c = await admin.connect();
    try {
      for (const seed of seeds) {
        const r = random(seed);
        await c.query('begin');
        try {
          const { version } = await catalog(c, r);
          if (r() < 0.3) await c.query(`select set_config('ca_dms.new_shards', $1, true)`, [pick(r, ['shard_005', 'shard_005, shard_02', 'shard_02', 'shard_001,shard_005'])]);
          for (const shard of OWNERS) {
            const { rows } = await c.query<{ now: string; before: string }>(
              `select concat_ws(' ', catalog.shard_known($1), catalog.shard_refusal($1)) as now, concat_ws(' ', catalog.shard_known_013($1), catalog.shard_refusal_013($1)) as before`,
              [shard],
            );
            expect(`seed ${seed} ${shard}: ${rows[0]?.now}`).toBe(`seed ${seed} ${shard}: ${rows[0]?.before}`);
          }
          const assignments: (string | null)[] = Array.from({ length: SLOTS }, () => (r() < 0.75 ? pick(r, SHARDS) : r() < 0.9 ? pick(r, OWNERS) : null));
          const args = [pick(r, [version + 1, version + 1, version + 1, version, 0]), assignments, pick(r, ['OPS-7', 'OPS-7', ' '])];
          const now = await outcome(c, () => c.query('select version, assignments, reason from catalog.publish_slot_map_by_hand($1, $2::text[], $3)', args));
          const before = await outcome(c, () => c.query('select version, assignments, reason from catalog.publish_slot_map_by_hand_013($1, $2::text[], $3)', args));
          expect(`seed ${seed}: ${now}`).toBe(`seed ${seed}: ${before}`);
        } finally {
          await c.query('rollback');
        }
      }
    } finally {
      c.release();
    }
  }, 240_000);
});

describe('sharding migrations 018 and 019 keep what 013 left of their functions', () => {
  /** What a `create or replace` could change: owner, grants, language, volatility, parallel safety, strictness, SECURITY DEFINER, SET clauses, result. */
  const attributes = async (pool: pg.Pool) =>
    (
      await pool.query(
        `select p.oid::regprocedure::text as name, p.proowner::regrole::text as owner, coalesce(p.proacl::text, 'default') as acl, l.lanname as language,
                p.provolatile as volatility, p.proparallel as parallel, p.proisstrict as strict, p.prosecdef as definer, p.proleakproof as leakproof,
                p.proconfig as config, p.proretset as returns_set, p.prorettype::regtype::text as returns, p.procost as cost, p.prorows as rows
           from pg_proc p join pg_language l on l.oid = p.prolang
          where p.oid in ('catalog.shard_known(text)'::regprocedure, 'catalog.shard_refusal(text)'::regprocedure, 'catalog.publish_slot_map_by_hand(integer, text[], text)'::regprocedure,
                          'catalog.slot_maps_owner_kept()'::regprocedure)
          order by 1`,
      )
    ).rows;

  it('the same owner, grants (none for PUBLIC: 012/013 revoked them) and attributes as after 017, and running their text again changes nothing', async () => {
    const other = await startTestPostgres();
    const pool = new pg.Pool({ connectionString: other.url, max: 1 });
    const upTo017 = mkdtempSync(join(tmpdir(), 'sharding-017-'));
    try {
      cpSync(MIGRATIONS.sharding, upTo017, { recursive: true });
      for (const file of readdirSync(upTo017)) if (/^\d{3}_/.test(file) && Number(file.slice(0, 3)) > 17) unlinkSync(join(upTo017, file));
      await pool.query('create role ca_dms_control nologin').catch(() => undefined);
      await runMigrations(pool, 'sharding', upTo017);
      const before = await attributes(pool);
      expect(before).toHaveLength(4);
      // 012/013 revoked EXECUTE from PUBLIC: no '=X/' entry in any ACL.
      expect(before.filter((f) => f.acl === 'default' || /(^|[{,])=X/.test(f.acl))).toEqual([]);
      await runMigrations(pool, 'sharding', MIGRATIONS.sharding);
      expect(await attributes(pool)).toEqual(before);
      for (const file of ['018_by_hand_cost.sql', '019_new_shards_first.sql']) await pool.query(readFileSync(join(MIGRATIONS.sharding, file), 'utf8'));
      expect(await attributes(pool)).toEqual(before);
    } finally {
      rmSync(upTo017, { recursive: true, force: true });
      await pool.end();
      await other.stop();
    }
  }, 120_000);
});

describe("sharding migration 018's reads once a session's plans are generic", () => {
  it.each([false, true])('ten maps by hand in one session read no job (finished jobs on every slot changed, owners all in the latest map); plans forced generic: %s', async (generic) => {
    // plpgsql plans a statement for its parameters five times, then may keep a generic plan: a
    // control login's pooled session publishing again must not fall back to reading every job.
    const c = await admin.connect();
    try {
      await c.query('begin');
      const map = await finishedJobsCatalog(c);
      await c.query('analyze catalog.move_jobs');
      // And with every plan generic from the first call: what a session settles on at any point.
      if (generic) await c.query(`set local plan_cache_mode = force_generic_plan`);
      const read = () => jobRowsRead(c);
      const reads: number[] = [];
      for (let v = 2; v <= 11; v++) {
        const before = await read();
        const next = map.map((o, i) => (i === v % 8 ? (o === 'shard_003' ? 'shard_001' : 'shard_003') : o));
        map.splice(0, map.length, ...next);
        await c.query(`select version from catalog.publish_slot_map_by_hand($1, $2::text[], 'OPS-7')`, [v, next]);
        reads.push((await read()) - before);
      }
      expect(reads).toEqual(Array.from({ length: 10 }, () => 0));
    } finally {
      await c.query('rollback');
      c.release();
    }
  });
});

/** A client of its own (each side of a race its own session). */
async function session(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: server.url });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** Until `pid` waits for a lock (its insert behind the other side's uncommitted map). */
async function waiting(pid: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const { rows } = await admin.query<{ w: string | null }>('select wait_event_type as w from pg_stat_activity where pid = $1', [pid]);
    if (rows[0]?.w === 'Lock') return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`session ${pid} never waited for a lock`);
}

describe('sharding migration 018: a map by hand racing another publication', () => {
  const answer = (p: Promise<unknown>) => p.then(() => 'published', (e: pg.DatabaseError) => `${e.code} ${e.message.slice(0, 80)}`);

  it("neither takes a lock 013 took: a map by hand waits behind a flip's uncommitted map of the same version and is refused (23505); a flip waits behind a map by hand and is refused; the moving slot's refusal holds while its cancel is uncommitted", async () => {
    await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
    const map = ['shard_001', 'shard_001', 'shard_002', 'shard_002', 'shard_003', 'shard_003', 'shard_003', 'shard_001'];
    await admin.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (1, 8, $1, 'test', 'initial')`, [map]);
    const job = async (slot: number) =>
      String(
        (
          await admin.query<{ id: string }>(
            `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at) values ('slot', $1::text, $1::text::integer, $2, 'shard_002', 'copying', 'test', now()) returning id`,
            [String(slot), map[slot]],
          )
        ).rows[0]?.id,
      );
    const moving5 = await job(5);
    const flip = await session();
    const hand = await session();
    try {
      const handPid = (await hand.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const flipPid = (await flip.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const withSlot = (slot: number, owner: string, from = map) => from.map((o, i) => (i === slot ? owner : o));

      // The flip's map first, uncommitted; the map by hand of the same version waits for it.
      await flip.query('begin');
      await flip.query(`select set_config('ca_dms.map_writer', $1, true)`, [`move job #${moving5}`]);
      await flip.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (2, 8, $1, 'test', 'flip')`, [withSlot(5, 'shard_002')]);
      await hand.query('begin');
      const handFirst = answer(hand.query(`select * from catalog.publish_slot_map_by_hand(2, $1::text[], 'OPS-7')`, [withSlot(0, 'shard_003')]));
      await waiting(handPid);
      await flip.query('commit');
      expect(await handFirst).toBe('23505 duplicate key value violates unique constraint "slot_maps_pkey"');
      await hand.query('rollback');
      const v2 = withSlot(5, 'shard_002');

      // A map by hand first, uncommitted; a flip's map of the same version waits for it.
      const moving6 = await job(6);
      await hand.query('begin');
      await hand.query(`select * from catalog.publish_slot_map_by_hand(3, $1::text[], 'OPS-7')`, [withSlot(0, 'shard_003', v2)]);
      await flip.query('begin');
      await flip.query(`select set_config('ca_dms.map_writer', $1, true)`, [`move job #${moving6}`]);
      const flipSecond = answer(flip.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (3, 8, $1, 'test', 'flip')`, [withSlot(6, 'shard_002', v2)]));
      await waiting(flipPid);
      await hand.query('commit');
      expect(await flipSecond).toBe('23505 duplicate key value violates unique constraint "slot_maps_pkey"');
      await flip.query('rollback');
      const v3 = withSlot(0, 'shard_003', v2);

      // The move of slot 6 cancelled in a transaction not yet committed: a map by hand giving slot
      // 6 another owner does not wait for it (no lock on the job), reads the move as unfinished
      // and is refused (CAF08); once the cancel commits, it is published.
      await flip.query('begin');
      await flip.query(`update catalog.move_jobs set state = 'cancelled', finished_at = now() where id = $1`, [moving6]);
      expect(await answer(hand.query(`select * from catalog.publish_slot_map_by_hand(4, $1::text[], 'OPS-7')`, [withSlot(6, 'shard_001', v3)]))).toMatch(/^CAF08 slot map version 4 may not change the owner of slot 6 /);
      await flip.query('commit');
      expect(await answer(hand.query(`select * from catalog.publish_slot_map_by_hand(4, $1::text[], 'OPS-7')`, [withSlot(6, 'shard_001', v3)]))).toBe('published');
      const { rows } = await admin.query<{ version: number; created_by: string }>('select version, created_by from catalog.slot_maps order by version');
      expect(rows.map((r) => `${r.version} ${r.created_by.endsWith('by hand') ? 'by hand' : r.created_by}`)).toEqual(['1 test', '2 test', '3 by hand', '4 by hand']);
    } finally {
      await flip.end();
      await hand.end();
    }
  });
});

describe('sharding migrations 020 and 021: catalog.shard_known from the table of the shards the maps name', () => {
  it("answers as 013's (and 018's) for every owner on random catalogs written before 020, once 020 and 021 filled the table from their history", async () => {
    const upTo019 = mkdtempSync(join(tmpdir(), 'sharding-019-'));
    try {
      cpSync(MIGRATIONS.sharding, upTo019, { recursive: true });
      for (const file of readdirSync(upTo019)) if (/^\d{3}_/.test(file) && Number(file.slice(0, 3)) > 19) unlinkSync(join(upTo019, file));
      for (const seed of seeds.slice(0, SEED === undefined ? 12 : 1)) {
        const database = `fill_${seed}`;
        await admin.query(`create database ${database}`);
        const pool = new pg.Pool({ connectionString: server.urlFor(database), max: 1 });
        pool.on('error', () => undefined);
        try {
          await runMigrations(pool, 'sharding', upTo019);
          for (const name of ['shard_known', 'shard_refusal']) await pool.query(version013(name));
          const c = await pool.connect();
          try {
            await c.query('begin');
            await catalog(c, random(seed));
            await c.query('commit');
          } finally {
            c.release();
          }
          await runMigrations(pool, 'sharding', MIGRATIONS.sharding);
          for (const shard of OWNERS) {
            const { rows } = await pool.query<{ now: string; before: string }>(
              `select concat_ws(' ', catalog.shard_known($1), catalog.shard_refusal($1)) as now, concat_ws(' ', catalog.shard_known_013($1), catalog.shard_refusal_013($1)) as before`,
              [shard],
            );
            expect(`seed ${seed} ${shard}: ${rows[0]?.now}`).toBe(`seed ${seed} ${shard}: ${rows[0]?.before}`);
          }
          // The table is the maps' owners, no more.
          const { rows } = await pool.query<{ extra: string[] | null; missing: string[] | null }>(
            `select (select array_agg(shard_id) from catalog.slot_map_shards k where not exists (select 1 from catalog.slot_maps m where k.shard_id = any (m.assignments))) as extra,
                    (select array_agg(distinct a) from catalog.slot_maps m, unnest(m.assignments) a where not exists (select 1 from catalog.slot_map_shards k where k.shard_id = a)) as missing`,
          );
          expect({ seed, ...rows[0] }).toEqual({ seed, extra: null, missing: null });
        } finally {
          await pool.end();
          await admin.query(`drop database ${database} with (force)`);
        }
      }
    } finally {
      rmSync(upTo019, { recursive: true, force: true });
    }
  }, 240_000);

  /** catalog.shard_known of each shard. */
  const answers = async (pool: pg.Pool, shards: readonly string[]): Promise<boolean[]> =>
    (await pool.query<{ k: boolean }>('select catalog.shard_known(s) as k from unnest($1::text[]) with ordinality u(s, i) order by i', [shards])).rows.map((r) => r.k);
  /** The shards of catalog.slot_map_shards, as the superuser sees them committed. */
  const recorded = async (): Promise<string[]> => (await admin.query<{ shard_id: string }>('select shard_id from catalog.slot_map_shards order by 1')).rows.map((r) => r.shard_id);
  const MAP = ['shard_001', 'shard_001', 'shard_002', 'shard_002', 'shard_003', 'shard_003', 'shard_003', 'shard_001'];
  const insertMap = (c: pg.Pool | pg.ClientBase, version: number, owners: readonly string[]) =>
    c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'test')`, [version, owners.length, owners]);
  const answer = (p: Promise<unknown>) => p.then(() => 'ok', (e: pg.DatabaseError) => `${e.code} ${e.message.slice(0, 80)}`);
  const pidOf = async (c: pg.Client) => (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;

  it.each(['read committed', 'repeatable read', 'serializable'])("021's fill of the maps published before 020 holds off no map insert, and leaves a shard a map's trigger recorded meanwhile as it is (the database's default isolation %s)", async (isolation) => {
    // At a default of SERIALIZABLE, the fill (which read every map) and a flip committed meanwhile
    // (which looked in the table for its new shard, which the fill then inserts) were each other's
    // read/write conflict: the migration failed with 40001 after its whole read, at every deploy
    // during which a move flipped. The runner begins each migration READ COMMITTED (migrate.ts).
    const upTo020 = mkdtempSync(join(tmpdir(), 'sharding-020-'));
    const database = `fill_live_${isolation.replace(' ', '_')}`;
    const { pool, connect, close } = await databaseAtIsolation(server, admin, database, isolation);
    const holder = await connect();
    const writer = await connect();
    try {
      cpSync(MIGRATIONS.sharding, upTo020, { recursive: true });
      for (const file of readdirSync(upTo020)) if (/^\d{3}_/.test(file) && Number(file.slice(0, 3)) > 20) unlinkSync(join(upTo020, file));
      // The history: maps published before 020 (the triggers off, so nothing of them recorded).
      await runMigrations(pool, 'sharding', upTo020);
      await writer.query('begin');
      await writer.query('set local session_replication_role = replica');
      await insertMap(writer, 1, MAP);
      await insertMap(writer, 2, MAP.map((o, i) => (i === 0 ? 'shard_old' : o)));
      await writer.query('commit');
      expect((await pool.query('select count(*)::int as n from catalog.slot_map_shards')).rows[0]?.n).toBe(0);
      // The fill is held at its first shard (in code-point order) by an uncommitted row of it.
      await holder.query('begin');
      await holder.query(`insert into catalog.slot_map_shards values ('shard_001')`);
      const migrated = runMigrations(pool, 'sharding', MIGRATIONS.sharding);
      await untilSomeoneWaits(admin, database);
      // Meanwhile a flip gives slot 4 to a shard no map named before: published, not held off.
      await writer.query(`set lock_timeout = '2s'`);
      await insertMap(writer, 3, MAP.map((o, i) => (i === 0 ? 'shard_old' : i === 4 ? 'shard_new' : o)));
      await holder.query('rollback');
      await migrated;
      expect(await answers(pool, ['shard_001', 'shard_002', 'shard_003', 'shard_old', 'shard_new', 'shard_0O2'])).toEqual([true, true, true, true, true, false]);
      expect((await pool.query<{ s: string[] }>('select array_agg(shard_id order by shard_id) as s from catalog.slot_map_shards')).rows[0]?.s).toEqual(['shard_001', 'shard_002', 'shard_003', 'shard_new', 'shard_old']);
    } finally {
      await close();
      rmSync(upTo020, { recursive: true, force: true });
    }
  }, 120_000);

  it('records the owners of every map inserted, updated, or none once the maps are truncated; a shard named only by a map rolled back is not known', async () => {
    await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
    expect(await recorded()).toEqual([]);
    await insertMap(admin, 1, MAP);
    expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003']);
    await insertMap(admin, 2, MAP.map((o, i) => (i === 0 ? 'shard_004' : o)));
    await admin.query('begin');
    await insertMap(admin, 3, MAP.map((o, i) => (i === 1 ? 'shard_005' : o)));
    await admin.query('rollback');
    expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003', 'shard_004']);
    expect((await admin.query(`select catalog.shard_known('shard_005') as k`)).rows[0]?.k).toBe(false);
    await admin.query(`update catalog.slot_maps set assignments[2] = 'shard_006' where version = 1`);
    expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003', 'shard_004', 'shard_006']);
    await admin.query('truncate catalog.slot_maps');
    expect(await recorded()).toEqual([]);
  });

  it.each(['read committed', 'repeatable read'])(
    'two transactions naming the same new shards (in either order) do not deadlock: the second waits for the first (publishes at READ COMMITTED; fails with 40001 at REPEATABLE READ, sharding 028), and records them itself if the first rolls back (%s)',
    async (isolation) => {
      await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
      await insertMap(admin, 1, MAP);
      const one = await session();
      const two = await session();
      try {
        const twoPid = await pidOf(two);
        // The first commits: the second, waiting for it, goes on and publishes at READ COMMITTED.
        // At REPEATABLE READ it fails with a serialization failure since sharding migration 028:
        // its snapshot cannot see map 2, which its owner history would otherwise have left out
        // (the map before it read as map 1; fence-review-owner-history-races.test.ts).
        await one.query(`begin isolation level ${isolation}`);
        await two.query(`begin isolation level ${isolation}`);
        await insertMap(one, 2, MAP.map((o, i) => (i === 0 ? 'shard_x' : i === 1 ? 'shard_y' : o)));
        const second = answer(insertMap(two, 3, MAP.map((o, i) => (i === 0 ? 'shard_y' : i === 1 ? 'shard_x' : o))));
        await waiting(twoPid);
        await one.query('commit');
        if (isolation === 'read committed') {
          expect(await second).toBe('ok');
          await two.query('commit');
        } else {
          expect(await second).toMatch(/^40001 could not serialize access due to concurrent update/);
          await two.query('rollback');
        }
        expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003', 'shard_x', 'shard_y']);

        // The first rolls back: the second records the shard itself.
        await one.query(`begin isolation level ${isolation}`);
        await two.query(`begin isolation level ${isolation}`);
        await insertMap(one, 4, MAP.map((o, i) => (i === 2 ? 'shard_z' : o)));
        const third = answer(insertMap(two, 5, MAP.map((o, i) => (i === 3 ? 'shard_z' : o))));
        await waiting(twoPid);
        await one.query('rollback');
        expect(await third).toBe('ok');
        await two.query('commit');
        expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003', 'shard_x', 'shard_y', 'shard_z']);

        // The same version naming a new shard: the second is refused as before 020 (23505, which
        // SlotMapStore reads as a lost compare-and-set), not with a serialization failure.
        await one.query(`begin isolation level ${isolation}`);
        await two.query(`begin isolation level ${isolation}`);
        await insertMap(one, 6, MAP.map((o, i) => (i === 4 ? 'shard_w' : o)));
        const same = answer(insertMap(two, 6, MAP.map((o, i) => (i === 4 ? 'shard_w' : o))));
        await waiting(twoPid);
        await one.query('commit');
        expect(await same).toBe('23505 duplicate key value violates unique constraint "slot_maps_pkey"');
        await two.query('rollback');
        expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003', 'shard_w', 'shard_x', 'shard_y', 'shard_z']);
      } finally {
        await one.end();
        await two.end();
      }
    },
  );

  it("a first map that lost to another process's (SlotMapStore.initialise: ON CONFLICT DO NOTHING) leaves no shard known that only it named", async () => {
    // Two processes start on a catalog with no map, configured with different shards (a deploy
    // that adds shard_004 while the old tasks still run): both find no map and insert version 1.
    // The second waits for the first's, and its insert is skipped, the statement a success: what
    // its trigger ran before the skip stays. 018 answered shard_004 unknown: no map names it.
    await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
    const one = await session();
    const two = await session();
    try {
      const twoPid = await pidOf(two);
      const shards = (ids: readonly string[]) => buildSlotMap(ids.map((shardId) => ({ shardId, weight: 1 })), { slotCount: SLOTS });
      await one.query('begin');
      await new SlotMapStore(one).initialise(shards(['shard_001', 'shard_002', 'shard_003']), 'one');
      const second = answer(new SlotMapStore(two).initialise(shards(['shard_001', 'shard_002', 'shard_003', 'shard_004']), 'two'));
      await waiting(twoPid);
      await one.query('commit');
      expect(await second).toBe('ok');
      const { rows } = await admin.query<{ created_by: string }>('select created_by from catalog.slot_maps');
      expect(rows.map((r) => r.created_by)).toEqual(['one']);
      expect(await answers(admin, ['shard_001', 'shard_002', 'shard_003', 'shard_004'])).toEqual([true, true, true, false]);
      expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003']);
    } finally {
      await one.end();
      await two.end();
    }
  });

  it('the same version naming a new shard: the second is refused with 23505 at SERIALIZABLE too, as before 020, not with a serialization failure', async () => {
    // At SERIALIZABLE, a unique violation on a key the transaction read absent is a serialization
    // failure (PostgreSQL checks SSI conflicts before it reports the violation): the second map's
    // look for shard_w in the table, then its insert of it, answered 40001 where 018 answered 23505
    // (SlotMapStore's lost compare-and-set), once the first committed.
    await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
    await insertMap(admin, 1, MAP);
    const one = await session();
    const two = await session();
    try {
      const twoPid = await pidOf(two);
      await one.query('begin isolation level serializable');
      await two.query('begin isolation level serializable');
      await insertMap(one, 2, MAP.map((o, i) => (i === 4 ? 'shard_w' : o)));
      const same = answer(insertMap(two, 2, MAP.map((o, i) => (i === 5 ? 'shard_w' : o))));
      await waiting(twoPid);
      await one.query('commit');
      expect(await same).toBe('23505 duplicate key value violates unique constraint "slot_maps_pkey"');
      await two.query('rollback');
      expect(await recorded()).toEqual(['shard_001', 'shard_002', 'shard_003', 'shard_w']);
    } finally {
      await one.end();
      await two.end();
    }
  });

  it("a first map after a TRUNCATE of the maps, by a REPEATABLE READ transaction whose snapshot is older than it, records every owner", async () => {
    // TRUNCATE is not MVCC-safe: a snapshot taken before it sees the maps gone (PostgreSQL docs,
    // TRUNCATE), so the transaction's map is a first map, whose owners are all added where the
    // table lacks them. Emptied by a DELETE, the table still showed that snapshot the shards it
    // held before, and the map's owners among them were not added: shard_001 unknown, though the
    // only map names it.
    await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
    await insertMap(admin, 1, MAP);
    const old = await session();
    try {
      await old.query('begin isolation level repeatable read');
      await old.query('select count(*) from catalog.move_jobs');
      await admin.query('truncate catalog.slot_maps');
      await insertMap(old, 1, MAP.map((o, i) => (i === 0 ? 'shard_004' : o)));
      await old.query('commit');
      expect(await answers(admin, ['shard_001', 'shard_002', 'shard_003', 'shard_004'])).toEqual([true, true, true, true]);
    } finally {
      await old.end();
    }
  });
});

describe('sharding migration 025: the shards the move jobs name, from the table of them', () => {
  it("a typo in a map by hand is refused naming every known shard (a job's among them) without reading a move job; catalog.shard_known reads none either", async () => {
    // 021 left "a move job names it" (catalog.shard_known) and the refusal's list of known shards
    // (catalog.known_shards) reading every job: 63 to 75 ms at 100,000 jobs, linear in the jobs
    // (bench/slot-map-by-hand.ts). Counted here as the rows of move_jobs read, not as time.
    const c = await admin.connect();
    try {
      await c.query('begin');
      const map = await finishedJobsCatalog(c);
      // A shard only a job names (a move to it that failed before its flip).
      await c.query(`insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by) values ('slot', '3', 3, 'shard_002', 'shard_job', 'failed', 'test')`);
      await c.query('analyze catalog.move_jobs');
      const read = () => jobRowsRead(c);
      const before = await read();
      const typo = map.map((o, i) => (i === 0 ? 'shard_0O2' : o));
      const refused = await outcome(c, () => c.query(`select version from catalog.publish_slot_map_by_hand(2, $1::text[], 'OPS-7')`, [typo]));
      const known = (await c.query<{ k: boolean[] }>(`select array[catalog.shard_known('shard_0O2'), catalog.shard_known('shard_job'), catalog.shard_known('shard_002')] as k`)).rows[0]?.k;
      const reads = (await read()) - before;
      expect(refused).toMatch(/^22023 \| .*the shard 'shard_0O2' is named by no slot map, directory entry or move job of this catalog \(known: shard_001, shard_002, shard_003, shard_job\)/);
      expect(known).toEqual([false, true, true]);
      expect(reads).toBe(0);
    } finally {
      await c.query('rollback');
      c.release();
    }
  });
});

describe('sharding migration 025: the table written by the move jobs\' writers', () => {
  it("as the control login (the plans'): a job's insert records its new shards once, a rolled-back one takes them back; a second insert naming the same new shard waits for the first and adds nothing (READ COMMITTED, REPEATABLE READ), or fails with 40001 at SERIALIZABLE", async () => {
    await admin.query(`create role move_job_shards_writer login password 'writer' in role ca_dms_control`);
    const url = new URL(server.url);
    url.username = 'move_job_shards_writer';
    url.password = 'writer';
    const control = new pg.Pool({ connectionString: url.toString(), max: 2 });
    control.on('error', () => undefined);
    const job = (c: pg.PoolClient, slot: number, to: string) =>
      c.query(`insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, created_by) values ('slot', $1, $2, 'shard_001', $3, 'test')`, [String(slot), slot, to]);
    const known = async (shard: string) => (await admin.query<{ k: boolean }>('select catalog.shard_known($1) as k', [shard])).rows[0]?.k;
    const [a, b] = [await control.connect(), await control.connect()];
    for (const c of [a, b]) c.on('error', () => undefined);
    try {
      await a.query('begin');
      await job(a, 900, 'shard_rolled_back');
      await a.query('rollback');
      expect(await known('shard_rolled_back')).toBe(false);
      // The login may neither read the table nor call the function that fills it: its trigger does.
      expect(await sqlstateOf(() => a.query('select 1 from catalog.move_job_shards'))).toBe('42501');
      expect(await sqlstateOf(() => a.query(`select catalog.move_job_shards_add(array['shard_x'])`))).toBe('42501');

      const outcomes: string[] = [];
      for (const [i, level] of ['read committed', 'repeatable read', 'serializable'].entries()) {
        const shard = `shard_new_${i}`;
        await a.query(`begin isolation level ${level}`);
        await b.query(`begin isolation level ${level}`);
        await b.query('select 1'); // its snapshot, taken before the first commits
        await job(a, 901 + 2 * i, shard);
        let waiting = true;
        const second = job(b, 902 + 2 * i, shard).then(
          () => 'recorded',
          (e: { code?: string }) => e.code ?? 'error',
        ).finally(() => {
          waiting = false;
        });
        await expect.poll(async () => (await admin.query(`select count(*)::int as n from pg_stat_activity where usename = 'move_job_shards_writer' and wait_event_type = 'Lock'`)).rows[0]?.n).toBe(1);
        expect(waiting).toBe(true);
        await a.query('commit');
        const outcome = await second;
        await b.query(outcome === 'recorded' ? 'commit' : 'rollback');
        outcomes.push(`${level}: ${outcome}`);
        expect(await known(shard)).toBe(true);
      }
      expect(outcomes).toEqual(['read committed: recorded', 'repeatable read: recorded', 'serializable: 40001']);
      expect((await admin.query(`select count(*)::int as n from catalog.move_jobs where to_shard like 'shard_new_%'`)).rows[0]?.n).toBe(5);
    } finally {
      a.release();
      b.release();
      // The jobs' shards stay known past a DELETE of the jobs (as the spec says): taken out by hand.
      await admin.query(`delete from catalog.move_jobs where slot between 900 and 910`);
      await admin.query(`delete from catalog.move_job_shards where shard_id like 'shard_new_%'`);
      await control.end();
      await admin.query('drop role move_job_shards_writer');
    }
  });
});
