/**
 * Issue #15, two slot maps published by hand at once, both giving away the same slot (review h66).
 * The first fences the slot on its old owner and waits for the writers older than its fence; the
 * second found the row `fenced` already, left it "as it is" (recording nothing of it), skipped the
 * wait and counted, while a writer's row of the slot was still uncommitted there, and published.
 * That row was then acknowledged on a shard the map no longer names, and the first change, refused
 * afterwards, put the row back (deleted it): the old owner took the slot's writes again, out of
 * every reader's sight. A fence row already `fenced` (another owner change in flight, or one that
 * died before putting it back) now refuses the change, naming the row and the way out. Also here:
 * a move refused by a hand change's fence names it (not `move job #null`); a login without
 * pg_read_all_stats (its wait for older writers saw none of another login's) is refused; and a
 * slot given back by hand to a shard whose row says `moved` by a move (it would refuse the slot's
 * writes for good while the map names it) is refused.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countSlot, fenceState, keysInSlot, refusalOf, moveStoppedAfterRelease, sides, startMoveEnv, userWriteOutcome, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

async function untilFenced(pool: pg.Pool, slot: number): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if ((await fenceState(pool, slot)) === 'fenced') return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`slot ${slot} was never fenced`);
}

describe('two hand changes of the same slot at once', () => {
  it('the second, meeting the first on the slot (its lock of catalog.slot_pin_locks, before its fence), is refused: no row acknowledged where the map no longer looks, no fence reopened', async () => {
    const slot = 1811;
    const { from, to, source } = await sides(env, slot);
    const first = new SlotMapStore(env.catalog, { shardPools: env.shards });
    // Its wait for the first's lock of the slot bounded to 1 s (the count bound), not 5 s.
    const second = new SlotMapStore(env.catalog, { shardPools: env.shards, countTimeoutMs: 1_000 });
    const before = await first.current();
    const writer = await source.connect();
    try {
      // A writer that routed with the current map: its row of the slot is in, uncommitted.
      await writer.query('begin isolation level read committed');
      await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'w@example.com', 'w')`, [keysInSlot(slot, 1)[0], slot]);
      // The first change fences the slot and waits for that writer.
      const firstOutcome = refusalOf(first.publish(moveSlots(before, [slot], to), 'ops', 'hand change one'));
      await untilFenced(source, slot);
      // The second, meanwhile (the same next version, the same slot).
      const secondOutcome = await refusalOf(second.publish(moveSlots(before, [slot], to), 'ops', 'hand change two'));
      await writer.query('commit');
      const firstResult = await firstOutcome;
      // Before: the second published (0 rows counted, the writer's row uncommitted), the writer's
      // row was acknowledged on the old owner, and the first's put-back deleted the fence row.
      expect({ owner: (await first.current()).assignments[slot], rowsOnOldOwner: (await countSlot(source, slot)).users }).toEqual({ owner: from, rowsOnOldOwner: 1 });
      // Since sharding migration 017 the first holds the slot's lock from before its fence to its
      // commit, and the second is refused there, within its bound; before, it went on to the fence
      // row and was refused finding it `fenced` already (still the refusal of a change past the
      // lock: the next test).
      expect(String(secondOutcome)).toMatch(new RegExp(`cannot publish slot map version ${before.version + 1}: another change of a slot it gives away \\(.*\\) held catalog\\.slot_pin_locks for more than 1000 ms.*Nothing was published`));
      expect(firstResult).toBeInstanceOf(SlotMapRowsLeftError);
      expect((await first.current()).version).toBe(before.version);
      expect(await fenceState(source, slot)).toBeUndefined();
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
    }
  }, 60_000);

  it("a row left fenced by a change that died before putting it back refuses the next change, naming the way out, and keeps the slot's writes refused", async () => {
    const slot = 1812;
    const { from, to, source } = await sides(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    // What a process killed between its fence and its put-back leaves.
    await source.query(`insert into write_fences (kind, unit_id, state, job_id) values ('slot', $1, 'fenced', null)`, [String(slot)]);
    const before = await store.current();
    const refused = await refusalOf(store.publish(moveSlots(before, [slot], to), 'ops', 'hand change'));
    expect(String(refused)).toMatch(new RegExp(`fenced already by another owner change .*delete from write_fences where kind = 'slot' and unit_id = '${slot}' and state = 'fenced' and job_id is null`));
    expect((await store.current()).version).toBe(before.version);
    expect(await fenceState(source, slot)).toBe('fenced');
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string)).toBe('refused CAF01');
    expect(from).not.toBe(to);
  }, 60_000);

  it("a move of a slot a hand change holds fenced on its source is refused naming the hand change, not 'move job #null'", async () => {
    const slot = 1813;
    const { to, source } = await sides(env, slot);
    // A hand change of the slot in flight (or dead before putting its fence back).
    await source.query(`insert into write_fences (kind, unit_id, state, job_id) values ('slot', $1, 'fenced', null)`, [String(slot)]);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const outcome = await mover.run(planned.id).then(
      async (j) => `${j.state}: ${(await env.catalog.query<{ e: string | null }>('select error as e from catalog.move_jobs where id = $1', [j.id])).rows[0]?.e ?? ''}`,
      (e: Error) => `threw: ${e.message}`,
    );
    expect(outcome).not.toMatch(/#null/);
    expect(outcome).toMatch(new RegExp(`slot ${slot} on \\w+ is fenced by a hand change of its owner \\(job_id null\\)`));
    expect(await fenceState(source, slot)).toBe('fenced');
  }, 60_000);

  it("through a login that may write write_fences but not read other sessions' activity (no pg_read_all_stats) is refused: its wait for older writers would see none", async () => {
    const slot = 1814;
    const { from, to, source } = await sides(env, slot);
    await source.query(`do $$ begin if not exists (select 1 from pg_roles where rolname = 'h66_fencer') then create role h66_fencer login password 'h66'; end if; end $$`);
    await source.query('grant select, insert, update, delete on write_fences to h66_fencer');
    await source.query('grant select on users, documents, document_keys to h66_fencer');
    const url = new URL(env.urls.shards[from] as string);
    url.username = 'h66_fencer';
    url.password = 'h66';
    const fencer = new pg.Pool({ connectionString: url.toString(), max: 2 });
    const writer = await source.connect();
    try {
      const store = new SlotMapStore(env.catalog, { shardPools: new Map([...env.shards, [from, fencer]]) });
      const before = (await store.current()).version;
      // A writer (another login) that routed with the current map: its row of the slot uncommitted.
      await writer.query('begin isolation level read committed');
      await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'w@example.com', 'w')`, [keysInSlot(slot, 1)[0], slot]);
      const outcome = await refusalOf(store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change of an empty slot'));
      await writer.query('commit');
      // Before: published (the wait saw no writer: their pg_stat_activity rows hide xact_start), the row acknowledged on the old owner.
      expect({ owner: (await store.current()).assignments[slot], rowsOnOldOwner: (await countSlot(source, slot)).users }).toEqual({ owner: from, rowsOnOldOwner: 1 });
      expect(String(outcome)).toMatch(new RegExp(`cannot publish slot map version ${before + 1}: .*this login \\(h66_fencer\\) lacks the privileges of pg_read_all_stats on ${from}.*Nothing was written`));
      expect(await fenceState(source, slot)).toBeUndefined();
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
      await fencer.end();
    }
  }, 60_000);

  it("giving a slot back by hand to the shard a move took it from, while that move is still cleaning up (its row there 'moved', job unfinished), is refused: that shard would refuse the slot's writes for good", async () => {
    const slot = 1815;
    const { from, to, source } = await sides(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    // An empty slot moved from -> to, the mover stopped after the flip and the release: the job
    // 'cleaning_up' (unfinished), its 'moved' row (job_id set) on `from`.
    const planned = { id: await moveStoppedAfterRelease(env, slot, to) };
    const before = await store.current();
    const outcome = await refusalOf(store.publishByHand(moveSlots(before, [slot], from), 'given back by hand'));
    // Before: published; `from` then refused every write of the slot (CAF02, moved to `to`) while the map named it: a write loop.
    expect({ owner: (await store.current()).assignments[slot], write: await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string) }).toEqual({ owner: to, write: 'refused CAF02' });
    expect(String(outcome)).toMatch(new RegExp(`cannot publish slot map version ${before.version + 1} by hand: slot ${slot}'s write_fences row on ${from}, its new owner, is 'moved' \\(move job #${planned.id}, moved to ${to}\\).*Nothing was written`));
  }, 60_000);
});
