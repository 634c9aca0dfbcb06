/**
 * Issue #15 (review): what a slot map published by hand reads (sharding migration 018). Migration
 * 013's `catalog.publish_slot_map_by_hand` checked "a shard the catalog knows" once per slot, not
 * once per owner (PostgreSQL moved its filter on the grouped owners below the grouping), each check
 * a sequential scan of `catalog.move_jobs` for a shard no job names: on a 4096-slot map with
 * 100,000 finished move jobs, 35 to 50 s, past the control login's 10 s statement_timeout (the
 * recovery could not be published at all); and the CAF08 trigger read, and formatted, every move
 * job of every slot a map by hand changes, which only the rule by hand skips
 * (bench/slot-map-by-hand.ts has the figures). Counted here, not timed: calls of
 * `catalog.shard_refusal` (track_functions) and rows of `catalog.move_jobs` read (the
 * transaction's table statistics), which do not depend on the machine's load. And the trigger's
 * refusals, every branch, whole (message, DETAIL, HINT): 018 reads the jobs another way and must
 * refuse exactly what 013 refused, as 013 did (these pass on 013 too).
 */
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { MIGRATIONS, startTestPostgres, type TestPostgres } from '../../support/postgres.js';

const MAP = ['shard_001', 'shard_001', 'shard_002', 'shard_002', 'shard_003', 'shard_003', 'shard_003', 'shard_001'];

let server: TestPostgres;
let admin: pg.Pool;
beforeAll(async () => {
  server = await startTestPostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 1 });
  await runMigrations(admin, 'sharding', MIGRATIONS.sharding);
}, 60_000);
afterAll(async () => {
  await admin?.end();
  await server?.stop();
});
beforeEach(async () => {
  await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
  await admin.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (1, $1, $2, 'test', 'initial')`, [MAP.length, MAP]);
});

/** `run` in a transaction of `client` rolled back, and what it counted there (the transaction's statistics: pg_stat_xact_*). */
async function counted(run: (c: pg.PoolClient) => Promise<unknown>): Promise<{ refusalCalls: number; jobRowsRead: number }> {
  const client = await admin.connect();
  try {
    await client.query('begin');
    await client.query(`set local track_functions = 'all'`);
    const jobRows = async () =>
      Number((await client.query<{ n: string }>(`select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n from pg_stat_xact_user_tables where schemaname = 'catalog' and relname = 'move_jobs'`)).rows[0]?.n ?? 0);
    const before = await jobRows();
    await run(client);
    const refusalCalls = Number((await client.query<{ n: string }>(`select coalesce(sum(calls), 0) as n from pg_stat_xact_user_functions where schemaname = 'catalog' and funcname = 'shard_refusal'`)).rows[0]?.n);
    return { refusalCalls, jobRowsRead: (await jobRows()) - before };
  } finally {
    await client.query('rollback');
    client.release();
  }
}

describe('catalog.publish_slot_map_by_hand: what it reads', () => {
  it('checks each distinct owner once, not each slot (8 slots over 3 owners: 3 checks), and reads no move job for owners the latest map names', async () => {
    // Before 018: 8 calls of catalog.shard_refusal, one per slot (4096 on a real map), each of
    // them for shard_003, which no job names, a scan of every move job: 12,005 rows read here.
    await admin.query(
      `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at, flip_started_at, finished_at)
       select 'slot', '0', 0, 'shard_001', 'shard_002', 'done', 'test', now(), now(), now() from generate_series(1, 3000) g`,
    );
    await admin.query('analyze catalog.move_jobs');
    const counts = await counted((c) => c.query(`select version from catalog.publish_slot_map_by_hand(2, $1::text[], 'OPS-7')`, [MAP.map((o, i) => (i === 1 ? 'shard_002' : o))]));
    expect(counts).toEqual({ refusalCalls: 3, jobRowsRead: 0 });
  });

  it('a map by hand changing slots with thousands of finished moves reads none of those jobs in the CAF08 trigger', async () => {
    // Before 018: the trigger read (and formatted) each finished job of each slot changed, which
    // the rule by hand never uses: 4,000 rows here, linear in the catalog's history of those slots.
    await admin.query(
      `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at, flip_started_at, finished_at)
       select 'slot', (g % 4)::text, g % 4, 'shard_002', 'shard_001', 'done', 'test', now(), now(), now() from generate_series(1, 4000) g`,
    );
    await admin.query('analyze catalog.move_jobs');
    const next = MAP.map((o, i) => (i < 4 ? 'shard_003' : o));
    const { jobRowsRead } = await counted(async (c) => {
      await c.query(`select set_config('ca_dms.map_writer', 'by hand: OPS-7', true)`);
      await c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (2, $1, $2, 'test', 'OPS-7')`, [next.length, next]);
    });
    expect(jobRowsRead).toBe(0);
  });
});

describe('a shard named in ca_dms.new_shards: what a recovery by hand reads for it', () => {
  /** `run` in a transaction rolled back, after `set local ca_dms.new_shards = 'shard_new'`: calls of catalog.shard_known and rows of catalog.slot_maps read. */
  const countedNew = async (run: (c: pg.PoolClient) => Promise<unknown>): Promise<{ knownCalls: number; mapRowsRead: number; answer: string }> => {
    const client = await admin.connect();
    try {
      await client.query('begin');
      await client.query(`set local track_functions = 'all'`);
      await client.query(`set local ca_dms.new_shards = 'shard_new'`);
      const mapRows = async () =>
        Number((await client.query<{ n: string }>(`select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n from pg_stat_xact_user_tables where schemaname = 'catalog' and relname = 'slot_maps'`)).rows[0]?.n ?? 0);
      // Differences within the transaction: a session's pending function counts are not reset at
      // the end of a transaction, only when they are flushed (about once a second, idle).
      const knownCalls = async () => Number((await client.query<{ n: string }>(`select coalesce(sum(calls), 0) as n from pg_stat_xact_user_functions where schemaname = 'catalog' and funcname = 'shard_known'`)).rows[0]?.n);
      const [rowsBefore, callsBefore] = [await mapRows(), await knownCalls()];
      const answer = await run(client).then(
        () => 'done',
        (e: Error) => e.message,
      );
      return { knownCalls: (await knownCalls()) - callsBefore, mapRowsRead: (await mapRows()) - rowsBefore, answer };
    } finally {
      await client.query('rollback');
      client.release();
    }
  };

  it('is accepted without looking for it in every slot map ever published (the refusal says to name it; before: every map read, 1.5 s at 20,000 maps, about 7.5 s at 100,000)', async () => {
    // A catalog restored from before the shard was added (docs/sharding-spec.md section 9): a
    // shard no map, entry or job names, that the operator names in ca_dms.new_shards as the
    // refusal says. catalog.shard_refusal asked catalog.shard_known first, whose last resort reads
    // every slot map for it (one per slot move's flip), and only then the setting: on 2 shared
    // cores 1.5 s per such shard at 20,000 4096-slot maps, linear in the maps, so two lost shards
    // at 100,000 maps ran past the control login's 10 s statement_timeout and the recovery the
    // refusal points to could not be made.
    await admin.query(`select set_config('ca_dms.map_writer', 'by hand: setup', false)`);
    await admin.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) select g, $1, $2, 'test', 'setup' from generate_series(2, 400) g`, [MAP.length, MAP]);
    await admin.query(`select set_config('ca_dms.map_writer', '', false)`);
    await admin.query('analyze catalog.slot_maps');
    const published = await countedNew((c) => c.query(`select version from catalog.publish_slot_map_by_hand(401, $1::text[], 'OPS-7')`, [MAP.map((o, i) => (i === 0 ? 'shard_new' : o))]));
    // shard_known for the three owners the latest map names (each found there), none for shard_new.
    expect(published.answer).toBe('done');
    expect(published.knownCalls).toBe(3);
    expect(published.mapRowsRead).toBeLessThan(40);
    const repinned = await countedNew((c) => c.query(`select shard_id from catalog.repin_by_hand('key-1', 'shard_new', 'OPS-7')`));
    expect(repinned).toEqual({ knownCalls: 0, mapRowsRead: 0, answer: 'done' });
  });
});

describe('a typo in an owner: what its refusal reads (sharding migrations 020 and 021)', () => {
  /** Rows of catalog.slot_maps read by `run`, in a transaction rolled back, and what it answered. */
  const mapRowsRead = async (run: (c: pg.PoolClient) => Promise<unknown>): Promise<{ mapRowsRead: number; answer: string }> => {
    const client = await admin.connect();
    try {
      await client.query('begin');
      const mapRows = async () =>
        Number((await client.query<{ n: string }>(`select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n from pg_stat_xact_user_tables where schemaname = 'catalog' and relname = 'slot_maps'`)).rows[0]?.n ?? 0);
      const before = await mapRows();
      await client.query('savepoint s');
      const answer = await run(client).then(
        () => 'done',
        (e: pg.DatabaseError) => `${e.code} ${e.message}`,
      );
      await client.query('rollback to savepoint s');
      return { mapRowsRead: (await mapRows()) - before, answer };
    } finally {
      await client.query('rollback');
      client.release();
    }
  };

  it('is refused without reading every slot map ever published (before 021: every map, 8 to 17 s at 100,000 maps, past the control login\'s 10 s statement_timeout)', async () => {
    // 400 maps, each a flip (one slot changed); 'shard_0O2' (a letter O) is named by no map,
    // entry or job. 018's catalog.shard_known looked for it in each of them.
    await admin.query(`select set_config('ca_dms.map_writer', 'by hand: setup', false)`);
    for (let v = 2; v <= 400; v++) await admin.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'setup')`, [v, MAP.length, MAP.map((o, i) => (i === v % 8 ? 'shard_003' : o))]);
    await admin.query(`select set_config('ca_dms.map_writer', '', false)`);
    await admin.query('analyze catalog.slot_maps');
    const known = await mapRowsRead((c) => c.query(`select catalog.shard_known('shard_0O2')`));
    const published = await mapRowsRead((c) => c.query(`select version from catalog.publish_slot_map_by_hand(401, $1::text[], 'OPS-7')`, [MAP.map((o, i) => (i === 0 ? 'shard_0O2' : o))]));
    const repinned = await mapRowsRead((c) => c.query(`select shard_id from catalog.repin_by_hand('key-1', 'shard_0O2', 'OPS-7')`));

    expect(known).toEqual({ mapRowsRead: 0, answer: 'done' });
    // publish_slot_map_by_hand reads the latest map (max(version), its slot count), not every map.
    expect(published.mapRowsRead).toBeLessThan(10);
    expect(published.answer).toMatch(/^22023 catalog\.publish_slot_map_by_hand\(version, assignments, reason\): every owner must be a shard the catalog knows \(the first slot of each owner refused\): slot 0: the shard 'shard_0O2' is named by no slot map, directory entry or move job of this catalog \(known: shard_001, shard_002, shard_003\): a typo\?/);
    expect(repinned.mapRowsRead).toBeLessThan(10);
    expect(repinned.answer).toMatch(/^22023 catalog\.repin_by_hand\(key, shard, reason\): the shard 'shard_0O2' is named by no slot map/);
  });
});

describe('the CAF08 trigger refuses what 013 refused, as 013 did', () => {
  /** Jobs on the 8-slot map: slot 2 two finished moves that left fence rows and a failed one that did not; slot 5 an unfinished one; slot 6 a done one; slot 7 an unfinished directory move. */
  const jobs = async () => {
    const insert = (slot: number, kind: string, from: string, to: string, state: string, copying: boolean, flipped: boolean) =>
      admin
        .query<{ id: string }>(
          `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at, flip_started_at)
           values ($1, $2, $3, $4, $5, $6, 'test', case when $7 then now() end, case when $8 then now() end) returning id`,
          [kind, kind === 'slot' ? String(slot) : `key-of-${slot}`, slot, from, to, state, copying, flipped],
        )
        .then((r) => String(r.rows[0]?.id));
    return {
      done2: await insert(2, 'slot', 'shard_001', 'shard_002', 'done', true, true),
      failedUncopied2: await insert(2, 'slot', 'shard_002', 'shard_003', 'failed', false, false),
      cancelled2: await insert(2, 'slot', 'shard_002', 'shard_001', 'cancelled', true, false),
      moving5: await insert(5, 'slot', 'shard_003', 'shard_001', 'copying', true, false),
      done6: await insert(6, 'slot', 'shard_001', 'shard_003', 'done', true, true),
      directory7: await insert(7, 'directory', 'shard_001', 'shard_002', 'copying', true, false),
    };
  };
  /** The insert of version 2 giving `changes` (slot: owner), with `settings` first, as the superuser, rolled back: `published` or `<SQLSTATE> | <message> | <detail> | <hint>`. */
  const insert = async (changes: Record<number, string>, settings: Record<string, string> = {}): Promise<string> => {
    const next = MAP.map((o, i) => changes[i] ?? o);
    const client = await admin.connect();
    try {
      await client.query('begin');
      for (const [name, value] of Object.entries(settings)) await client.query('select set_config($1, $2, true)', [name, value]);
      await client.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (2, $1, $2, 'test', 'test')`, [next.length, next]);
      return 'published';
    } catch (e) {
      const error = e as pg.DatabaseError;
      return `${error.code} | ${error.message} | ${error.detail} | ${error.hint}`;
    } finally {
      await client.query('rollback');
      client.release();
    }
  };
  const kept = (slot: number, from: string, to: string, jobs: string, writer = '') =>
    `CAF08 | slot map version 2 may not change the owner of slot ${slot} from ${from} to ${to} by hand: move job(s) ${jobs} wrote fence rows for it on their shards, which decide for the slot whatever the map says (a shard that is not its owner refuses it, CAF02, or takes its writes while its rows are elsewhere). Nothing was published. To give the slot another owner, move it (a slot move, POST /shards/moves); where its owner must be decided by hand, call catalog.publish_slot_map_by_hand(version, assignments, reason)${writer} | slot ${slot}; from ${from} to ${to}; move jobs ${jobs} | change owners through moves; a recovery by hand: select * from catalog.publish_slot_map_by_hand(version, assignments, reason)`;
  const unfinished = (slot: number, from: string, to: string, job: string, what: string, tail = '') =>
    `CAF08 | slot map version 2 may not change the owner of slot ${slot} from ${from} to ${to}: move job ${what} has not finished, and a map published before its flip sends the slot's writes where the move does not expect them (its copy deletes what its target took meanwhile; a third shard's are left out of its rows). Nothing was published. Cancel the move (DELETE /shards/moves/${job}) or let it finish first, then publish the map${tail} | slot ${slot}; from ${from} to ${to}; unfinished move job ${what} | cancel the move (DELETE /shards/moves/{id}) or let it finish, then publish`;

  it('a plain insert: the first changed slot in slot order with jobs that left fence rows (their list in id order), or with an unfinished move; a directory move does not count', async () => {
    const j = await jobs();
    const slot2 = `#${j.done2} (shard_001 to shard_002, done), #${j.cancelled2} (shard_002 to shard_001, cancelled)`;
    expect(await insert({ 6: 'shard_002', 2: 'shard_003', 5: 'shard_002' })).toBe(kept(2, 'shard_002', 'shard_003', slot2));
    expect(await insert({ 6: 'shard_002', 5: 'shard_002' })).toBe(unfinished(5, 'shard_003', 'shard_002', j.moving5, `#${j.moving5} (shard_003 to shard_001, copying)`));
    expect(await insert({ 7: 'shard_003', 0: 'shard_002' })).toBe('published');
  });

  it("a move's flip: its own slot to its target only; any other change is refused naming the writer", async () => {
    const j = await jobs();
    const flip = { 'ca_dms.map_writer': `move job #${j.moving5}` };
    const what = `#${j.moving5} (shard_003 to shard_001, copying)`;
    expect(await insert({ 5: 'shard_001' }, flip)).toBe('published');
    expect(await insert({ 5: 'shard_002' }, flip)).toBe(unfinished(5, 'shard_003', 'shard_002', j.moving5, what, ` (ca_dms.map_writer "move job #${j.moving5}" is not the flip of move job #${j.moving5} to its target)`));
    expect(await insert({ 5: 'shard_001', 6: 'shard_002' }, flip)).toBe(
      kept(6, 'shard_003', 'shard_002', `#${j.done6} (shard_001 to shard_003, done)`, ` (ca_dms.map_writer "move job #${j.moving5}" names no unfinished move of slot 6 to shard_002)`),
    );
  });

  it('by hand: finished moves let through, an unfinished one refused unless named in ca_dms.override_moves', async () => {
    const j = await jobs();
    const byHand = { 'ca_dms.map_writer': 'by hand: OPS-7' };
    expect(await insert({ 2: 'shard_003', 6: 'shard_002' }, byHand)).toBe('published');
    expect(await insert({ 2: 'shard_003', 5: 'shard_002', 6: 'shard_002' }, byHand)).toBe(
      unfinished(
        5,
        'shard_003',
        'shard_002',
        j.moving5,
        `#${j.moving5} (shard_003 to shard_001, copying)`,
        `; a move that can neither finish nor be cancelled (its error says the slot's owner must be decided by hand) is overridden by naming it in the same transaction first: set local ca_dms.override_moves = '${j.moving5}'`,
      ),
    );
    expect(await insert({ 2: 'shard_003', 5: 'shard_002', 6: 'shard_002' }, { ...byHand, 'ca_dms.override_moves': `1, ${j.moving5}` })).toBe('published');
  });
});
