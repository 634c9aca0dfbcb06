/**
 * Issue #15, what the count left open: a slot map published by hand counted the slot's rows on its
 * old owner, but nothing stopped a writer from adding one there (a) between the count and the
 * catalog's commit (a writer that read the old map: its insert uncommitted while counted), or (b)
 * after the commit (a router whose cached map still names the old owner). Both were acknowledged on
 * a shard the map no longer names: out of every reader's sight. The store now fences the old owner
 * first (waiting for the writers older than its fence), counts, publishes, and turns the fence
 * `moved` to the new owner, as a move's release does (`CAF02`: the writer re-routes).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countSlot, fenceState, keysInSlot, refusalOf, seedUsers, sides, startMoveEnv, userWriteOutcome, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let slotMaps: SlotMapStore;
beforeAll(async () => {
  env = await startMoveEnv();
  slotMaps = new SlotMapStore(env.catalog, { shardPools: env.shards });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** Resolves with `'settled'` once `p` settles, or `'fenced'` once `slot`'s fence row on `pool` says `fenced`, whichever comes first. */
async function fencedOrSettled(p: Promise<unknown>, pool: pg.Pool, slot: number): Promise<'fenced' | 'settled'> {
  let settled = false;
  void p.finally(() => {
    settled = true;
  });
  for (;;) {
    if (settled) return 'settled';
    if ((await fenceState(pool, slot)) === 'fenced') return 'fenced';
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('SlotMapStore.publish giving a slot away by hand, with writers of the slot on its old owner', () => {
  it('(a) a write in flight on the old owner while its rows are counted: the publication waits for it, counts it and is refused', async () => {
    const slot = 1801;
    const { from, to, source } = await sides(env, slot);
    const before = (await slotMaps.current()).version;
    const writer = await source.connect();
    try {
      // A writer that routed with the current map: its row is in, not yet committed (the count cannot see it).
      await writer.query('begin isolation level read committed');
      await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'a@example.com', 'a')`, [keysInSlot(slot, 1)[0], slot]);
      const publishing = refusalOf(slotMaps.publish(moveSlots(await slotMaps.current(), [slot], to), 'ops', 'hand change of an empty slot'));
      const seen = await fencedOrSettled(publishing, source, slot);
      await writer.query('commit');
      const outcome = await publishing;
      // Before: published (0 rows counted) before the writer's commit, acknowledged on a shard the map no longer named.
      expect({ owner: (await slotMaps.current()).assignments[slot], rowsOnOldOwner: (await countSlot(source, slot)).users }).toEqual({ owner: from, rowsOnOldOwner: 1 });
      expect(seen).toBe('fenced');
      expect(outcome).toBeInstanceOf(SlotMapRowsLeftError);
      expect((await slotMaps.current()).version).toBe(before);
      // The fence was put back: the slot's owner takes its writes again.
      expect(await fenceState(source, slot)).toBeUndefined();
      expect(await userWriteOutcome(source, slot, keysInSlot(slot, 2)[1] as string)).toBe('acknowledged');
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
    }
  }, 60_000);

  it('(b) a write sent to the old owner after the publication (a router with the older map) is refused CAF02, and giving the slot back opens it again', async () => {
    const slot = 1802;
    const { from, to, source, target } = await sides(env, slot);
    const published = await slotMaps.publish(moveSlots(await slotMaps.current(), [slot], to), 'ops', 'hand change of an empty slot');
    expect(published.map.assignments[slot]).toBe(to);
    // Before: acknowledged on the old owner, where no reader of the slot looks any more.
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string)).toBe('refused CAF02');
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    const { rows } = await source.query<{ moved_to: string; map_version: string }>(`select moved_to, map_version::text from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    expect(rows).toEqual([{ moved_to: to, map_version: String(published.map.version) }]);
    // The new owner takes them.
    expect(await userWriteOutcome(target, slot, keysInSlot(slot, 2)[1] as string)).toBe('acknowledged');
    await target.query('delete from documents where slot = $1', [slot]);
    await target.query('delete from users where slot = $1', [slot]);
    // Given back by hand (its new owner empty again): the old owner's row is no longer a refusal, the other shard's is.
    await slotMaps.publish(moveSlots(await slotMaps.current(), [slot], from), 'ops', 'hand change back');
    expect(await fenceState(source, slot)).toBeUndefined();
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 3)[2] as string)).toBe('acknowledged');
    expect(await userWriteOutcome(target, slot, keysInSlot(slot, 4)[3] as string)).toBe('refused CAF02');
  }, 60_000);

  it("(c) giving back by hand a slot a finished move took away opens the move's moved row there too: the old source takes the slot's writes, without an operator opening it first", async () => {
    const slot = 1806;
    const { from, to, source, target } = await sides(env, slot);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(job.id)).state).toBe('done');
    const { rows: left } = await source.query<{ state: string; job_id: string }>(`select state, job_id::text from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    expect(left).toEqual([{ state: 'moved', job_id: String(job.id) }]);
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], from), 'the slot back to its first shard');
    // Before: the move's row stayed `moved` on the new owner, which refused every write of the slot
    // (CAF02, re-routed back to it until "routing is not converging"); the spec had the operator
    // delete it before publishing, when writers whose maps still named that shard were acknowledged
    // there, out of sight if the publication was then refused (owner-change-torture.test.ts).
    expect(await fenceState(source, slot)).toBeUndefined();
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string)).toBe('acknowledged');
    expect(await userWriteOutcome(target, slot, keysInSlot(slot, 2)[1] as string)).toBe('refused CAF02');
  }, 60_000);

  it("with rowsLeftOn 'checked' fences nothing: the operator vouches for the slot's rows (a recovery by hand)", async () => {
    const slot = 1803;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 1), 1);
    await slotMaps.publish(moveSlots(await slotMaps.current(), [slot], to), 'ops', 'recovery', undefined, { rowsLeftOn: 'checked' });
    expect(await fenceState(source, slot)).toBeUndefined();
  }, 60_000);

  it("through a login that may not write write_fences (the application's) is refused, naming it, with nothing published or fenced", async () => {
    const slot = 1804;
    const { from, to, source } = await sides(env, slot);
    await source.query(`do $$ begin if not exists (select 1 from pg_roles where rolname = 'h65_app') then create role h65_app login password 'h65' in role ca_dms_app; end if; end $$`);
    const url = new URL(env.urls.shards[from] as string);
    url.username = 'h65_app';
    url.password = 'h65';
    const app = new pg.Pool({ connectionString: url.toString(), max: 2 });
    try {
      const store = new SlotMapStore(env.catalog, { shardPools: new Map([...env.shards, [from, app]]) });
      const before = (await store.current()).version;
      const refused = await refusalOf(store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change of an empty slot'));
      expect(String(refused)).toMatch(new RegExp(`cannot publish slot map version ${before + 1}: the change fences the unit on ${from} .*may not write write_fences on ${from}.*Nothing was written`));
      expect((await store.current()).version).toBe(before);
      expect(await fenceState(source, slot)).toBeUndefined();
    } finally {
      await app.end();
    }
  }, 60_000);

  it("refused for rows left, puts an open fence row back as it was (its job, its excluded keys)", async () => {
    const slot = 1805;
    const { to, source } = await sides(env, slot);
    const [user, kept] = keysInSlot(slot, 2) as [string, string];
    await source.query(`insert into write_fences (kind, unit_id, state, job_id, map_version, excluded_keys) values ('slot', $1, 'open', 77, 3, array[$2])`, [String(slot), kept]);
    await seedUsers(source, slot, [user], 1);
    const before = (await slotMaps.current()).version;
    expect(await refusalOf(slotMaps.publish(moveSlots(await slotMaps.current(), [slot], to), 'ops', 'hand change'))).toBeInstanceOf(SlotMapRowsLeftError);
    expect((await slotMaps.current()).version).toBe(before);
    const { rows } = await source.query(`select state, job_id::text, map_version::text, excluded_keys from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    expect(rows).toEqual([{ state: 'open', job_id: '77', map_version: '3', excluded_keys: [kept] }]);
  }, 60_000);
});

describe('a slot map published by hand through a catalog pool of one connection (the Lambdas\' pool settings)', () => {
  it('reads the move jobs through the connection it holds: published and fenced, not timed out waiting on itself', async () => {
    const slot = 1808;
    const { to, source } = await sides(env, slot);
    const one = new pg.Pool({ connectionString: env.urls.catalog, max: 1, connectionTimeoutMillis: 5000 });
    try {
      const store = new SlotMapStore(one, { shardPools: env.shards });
      const done = await store.publishByHand(moveSlots(await store.current(), [slot], to), 'through a pool of one');
      expect({ owner: done.map.assignments[slot], fence: await fenceState(source, slot) }).toEqual({ owner: to, fence: 'moved' });
    } finally {
      await one.end();
    }
  }, 60_000);
});
