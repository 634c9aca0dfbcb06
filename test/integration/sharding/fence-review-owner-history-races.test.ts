/**
 * Issue #15 (the fence review's owner history, sharding migrations 023 and 024; review of them):
 * catalog.slot_owner_history records, for each map, the slots whose owner differs from the map
 * before it. The CAF08 trigger read "the map before it" with its own snapshot, so a map inserted
 * while another map of a lower version was inserted and not yet committed (a flip in flight and an
 * INSERT of another version, or two inserts into gaps of the versions, a superuser's) was compared
 * with the map before both, and a slot the uncommitted map changed and the later one gave back was
 * recorded nowhere: the review then answered the uncommitted map's owner for the later versions,
 * and missed the owner the later map gives the slot (a shard whose rows of the slot a reopen would
 * not count). Sharding migration 028 serializes the history's writers (the row of
 * catalog.slot_owner_history_writer updated as each map is inserted, updated or deleted): at READ
 * COMMITTED the later insert waits for the first and compares with it; at REPEATABLE READ, whose
 * snapshot cannot see it, the later insert fails with a serialization failure (40001), nothing
 * published, to be sent again (SERIALIZABLE failed one of the two at its commit already). Each case
 * checks the review's answers against a read of every map. Also: a map inserted with the triggers
 * off (the review must not trust a history that lacks it) and the logins' rights.
 */
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SlotMapVersionConflictError } from '../../../functions/core/sharding/errors.js';
import { ownersOfSlotsSince, ownersOfSlotsSinceByMaps } from '../../../functions/adapters/postgres/fence-review.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import type { TestPostgres } from '../../support/postgres.js';
import { startShardingCatalog } from './fixtures/sharding-catalog.js';

let server: TestPostgres;
let admin: pg.Pool;
const clients: pg.Client[] = [];

beforeAll(async () => {
  ({ server, admin } = await startShardingCatalog(2));
}, 60_000);
afterAll(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
  await admin?.end();
  await server?.stop();
});
beforeEach(async () => {
  await admin.query('truncate catalog.slot_maps');
});

async function connect(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: server.url });
  client.on('error', () => undefined);
  await client.connect();
  clients.push(client);
  return client;
}

const insertMap = (c: pg.Pool | pg.ClientBase, version: number, owners: readonly string[]) =>
  c.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'test', 'test')`, [version, owners.length, owners]);

/** Waits until `promise` settles or the backend `pid` waits for a lock, whichever first. */
async function settledOrWaiting(promise: Promise<unknown>, pid: number): Promise<void> {
  let settled = false;
  void promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 400 && !settled; i++) {
    const { rows } = await admin.query<{ waiting: boolean }>(`select wait_event_type = 'Lock' as waiting from pg_stat_activity where pid = $1`, [pid]);
    if (rows[0]?.waiting) return;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function pid(c: pg.Client): Promise<number> {
  return (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid as number;
}

/**
 * Ends `c`'s transaction: committed where its insert went through, else rolled back. The SQLSTATE
 * of the insert's failure, or of the commit's (SERIALIZABLE's conflicts are found there), if any.
 */
async function finish(c: pg.Client, failed: string | undefined): Promise<string | undefined> {
  if (failed !== undefined) {
    await c.query('rollback');
    return failed;
  }
  return c.query('commit').then(
    () => undefined,
    (e: { code?: string }) => e.code ?? 'error',
  );
}

/** The review's answers (history, falling back to the maps) and a read of every map, for every slot at every version. */
async function answers(): Promise<{ fromHistory: unknown; fromMaps: unknown }> {
  const { rows } = await admin.query<{ top: number }>('select coalesce(max(version), 0) as top from catalog.slot_maps');
  const top = rows[0]?.top ?? 0;
  const pairs = Array.from({ length: 4 }, (_, slot) => Array.from({ length: top + 2 }, (_, version) => ({ slot, version }))).flat();
  const sorted = (m: Map<string, string[]>) => Object.fromEntries([...m].sort(([a], [b]) => a.localeCompare(b)));
  return { fromHistory: sorted(await ownersOfSlotsSince(admin, pairs)), fromMaps: sorted(await ownersOfSlotsSinceByMaps(admin, pairs)) };
}

const A = ['shard_a', 'shard_a', 'shard_a', 'shard_a'];
const with_ = (slot: number, owner: string, base: readonly string[] = A) => base.map((o, i) => (i === slot ? owner : o));

describe.each(['read committed', 'repeatable read', 'serializable'])('two maps inserted at once, %s', (isolation) => {
  /**
   * Two sessions, each in a transaction at `isolation`; the second's snapshot taken (a read of the
   * maps) before the first writes anything, and its backend's pid, to see it wait for a lock.
   */
  async function twoTransactions(): Promise<{ first: pg.Client; second: pg.Client; secondPid: number }> {
    const first = await connect();
    const second = await connect();
    await first.query(`begin isolation level ${isolation}`);
    await second.query(`begin isolation level ${isolation}`);
    await second.query('select 1 from catalog.slot_maps limit 1'); // its snapshot, before the first's write
    return { first, second, secondPid: await pid(second) };
  }

  /**
   * `first` inserts `firstMap`, and before it commits `second` inserts `secondMap`; `first`
   * commits, then `second`. The second either fails with a serialization failure (40001, nothing
   * published) or is published; either way the review answers as the maps do.
   */
  async function race(setup: Array<[number, string[]]>, firstMap: [number, string[]], secondMap: [number, string[]]): Promise<string | undefined> {
    for (const [v, m] of setup) await insertMap(admin, v, m);
    const { first, second, secondPid } = await twoTransactions();
    await insertMap(first, ...firstMap);
    const inserted = insertMap(second, ...secondMap).then(
      () => undefined,
      (e: { code?: string }) => e.code ?? 'error',
    );
    await settledOrWaiting(inserted, secondPid);
    await first.query('commit');
    return finish(second, await inserted);
  }

  it('a flip in flight and a map of the next version after it, which gives the flipped slot back', async () => {
    const failed = await race([[1, A]], [2, with_(0, 'shard_b')], [3, with_(2, 'shard_c')]);
    expect([undefined, '40001']).toContain(failed);
    if (isolation === 'read committed') expect(failed).toBeUndefined();
    const seen = await answers();
    expect(seen.fromHistory).toEqual(seen.fromMaps);
  });

  it("two publications of the same version through the store: the second one's is a version conflict (reload and retry) at every level (SERIALIZABLE answered a raw 40001 before 028)", async () => {
    await insertMap(admin, 1, A);
    const { first, second, secondPid } = await twoTransactions();
    await new SlotMapStore(first).publish({ version: 2, slotCount: 4, assignments: with_(0, 'shard_b') }, 'test', 'first', first, { rowsLeftOn: 'checked' });
    const published = new SlotMapStore(second).publish({ version: 2, slotCount: 4, assignments: with_(1, 'shard_b') }, 'test', 'second', second, { rowsLeftOn: 'checked' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    await settledOrWaiting(published, secondPid);
    await first.query('commit');
    const failed = await published;
    await second.query('rollback');
    expect(failed).toBeInstanceOf(SlotMapVersionConflictError);
    const seen = await answers();
    expect(seen.fromHistory).toEqual(seen.fromMaps);
  });

  it('two maps inserted into a gap of the versions at once (a superuser\'s)', async () => {
    const failed = await race(
      [
        [1, A],
        [4, with_(3, 'shard_c')],
      ],
      [2, with_(0, 'shard_b')],
      [3, with_(1, 'shard_b')],
    );
    expect([undefined, '40001', '23505']).toContain(failed);
    if (isolation === 'read committed') expect(failed).toBeUndefined();
    const seen = await answers();
    expect(seen.fromHistory).toEqual(seen.fromMaps);
  });

  it('the latest map deleted (a superuser\'s) while the next one is inserted', async () => {
    for (const [v, m] of [
      [1, A],
      [2, with_(0, 'shard_b')],
    ] as Array<[number, string[]]>)
      await insertMap(admin, v, m);
    const { first, second, secondPid } = await twoTransactions();
    await first.query('delete from catalog.slot_maps where version = 2');
    const inserted = insertMap(second, 3, with_(0, 'shard_b')).then(
      () => undefined,
      (e: { code?: string }) => e.code ?? 'error',
    );
    await settledOrWaiting(inserted, secondPid);
    await first.query('commit');
    const failed = await finish(second, await inserted);
    expect([undefined, '40001']).toContain(failed);
    const seen = await answers();
    expect(seen.fromHistory).toEqual(seen.fromMaps);
  });
});

describe('a map inserted with the triggers off (session_replication_role = replica, a superuser\'s restore)', () => {
  it('is not recorded, and the review reads the maps for the slots it changed, not the history that lacks it', async () => {
    await insertMap(admin, 1, A);
    const c = await connect();
    await c.query('begin');
    await c.query('set local session_replication_role = replica');
    await insertMap(c, 2, with_(0, 'shard_b'));
    await c.query('commit');
    await insertMap(admin, 3, with_(1, 'shard_c', with_(0, 'shard_b')));
    const seen = await answers();
    expect(seen.fromHistory).toEqual(seen.fromMaps);
  });
});

describe('rights on the owner history (sharding migrations 023 and 028)', () => {
  it('the control login reads the history and inserts maps that record it, but writes neither table nor calls the functions; the application login has none of it', async () => {
    const { rows } = await admin.query<{ role: string; object: string; select: boolean; write: boolean }>(
      `select r.role, t.object,
              has_table_privilege(r.role, t.object, 'select') as select,
              has_table_privilege(r.role, t.object, 'insert, update, delete, truncate') as write
         from unnest(array['ca_dms_control', 'ca_dms_app']) as r(role),
              unnest(array['catalog.slot_owner_history', 'catalog.slot_owner_history_maps', 'catalog.slot_owner_history_writer']) as t(object)
        order by 1, 2`,
    );
    expect(rows).toEqual([
      { role: 'ca_dms_app', object: 'catalog.slot_owner_history', select: false, write: false },
      { role: 'ca_dms_app', object: 'catalog.slot_owner_history_maps', select: false, write: false },
      { role: 'ca_dms_app', object: 'catalog.slot_owner_history_writer', select: false, write: false },
      { role: 'ca_dms_control', object: 'catalog.slot_owner_history', select: true, write: false },
      { role: 'ca_dms_control', object: 'catalog.slot_owner_history_maps', select: true, write: false },
      { role: 'ca_dms_control', object: 'catalog.slot_owner_history_writer', select: false, write: false },
    ]);
    const { rows: callable } = await admin.query<{ f: string }>(
      `select p.oid::regprocedure::text as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'catalog' and (p.proname like 'slot_owner_history%' or p.proname = 'slot_maps_owner_kept')
          and (has_function_privilege('ca_dms_control', p.oid, 'execute') or has_function_privilege('ca_dms_app', p.oid, 'execute'))`,
    );
    expect(callable).toEqual([]);
    const c = await connect();
    await c.query('begin');
    try {
      await c.query('set local role ca_dms_control');
      await insertMap(c, 1, A);
      await insertMap(c, 2, with_(0, 'shard_b'));
      expect(Object.fromEntries(await ownersOfSlotsSince(c, [{ slot: 0, version: 1 }]))).toEqual({ '0:1': ['shard_a', 'shard_b'] });
      await c.query('savepoint s');
      await expect(c.query(`insert into catalog.slot_owner_history values (0, 3, 'shard_c')`)).rejects.toMatchObject({ code: '42501' });
      await c.query('rollback to savepoint s');
      await expect(c.query('select catalog.slot_owner_history_rebuild(1)')).rejects.toMatchObject({ code: '42501' });
    } finally {
      await c.query('rollback');
    }
  });
});
