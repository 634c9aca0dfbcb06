import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Mover, MoveJob } from '../../../functions/adapters/postgres/mover.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countSlot, fenceState, keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * A catalog that fails over to a standby further behind than one flip (an asynchronous replica
 * promoted): it has lost a move's flip and everything after it, a later move of the same unit
 * included. The source's fence still says the unit moved to the first move's target for that job;
 * that target, though, no longer holds the unit: the later move took it on to a third shard.
 */
let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
});
afterAll(async () => {
  await env?.stop();
});

/** Slot `slot`'s three shards (its owner a, then b and c) with their pools, a user seeded on a with 2 documents, and a move a to b run to done. */
async function movedToB(slot: number): Promise<{ a: string; b: string; c: string; source: pg.Pool; first: pg.Pool; last: pg.Pool; user: string; moved: MoveJob; mover: Mover }> {
  const a = await env.ownerOf(slot);
  const [b, c] = ['shard_a', 'shard_b', 'shard_c'].filter((s) => s !== a) as [string, string];
  const [source, first, last] = [a, b, c].map((s) => env.shards.get(s)) as [pg.Pool, pg.Pool, pg.Pool];
  const [user] = keysInSlot(slot, 1) as [string];
  await seedUsers(source, slot, [user], 2);
  const mover = env.mover({ readerGraceMs: 100 });
  const moved = await mover.plan({ kind: 'slot', slot, to: b, createdBy: 'test' });
  expect((await mover.run(moved.id)).state).toBe('done');
  return { a, b, c, source, first, last, user, moved, mover };
}

/** The catalog as a failover to a standby further behind left it: `moved` just before its flip, the later job `lost` and every map after `moved`'s first gone. */
async function loseFlips(moved: MoveJob, lost: MoveJob): Promise<void> {
  await env.catalog.query('delete from catalog.move_jobs where id = $1', [lost.id]);
  await env.catalog.query('delete from catalog.slot_maps where version > (select map_version_before from catalog.move_jobs where id = $1)', [moved.id]);
  await env.catalog.query(
    `update catalog.move_jobs set state = 'verifying', flip_started_at = null, map_version_after = null, unfenced_at = null, cleaning_up_at = null,
            finished_at = null, rows_deleted = 0, lease_holder = null, lease_expires_at = null where id = $1`,
    [moved.id],
  );
}

/** How a fresh mover's run of `id` ends: `ended: <state>` or `threw: <name>: <message>`. */
const resume = (id: number): Promise<string> =>
  env
    .mover()
    .run(id)
    .then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.name}: ${e.message}`,
    );

describe('a lost flip whose unit was moved on again by a later move the catalog lost too', () => {
  it("is not published again on the first move's target (which no longer holds the unit): the run refuses, naming the later move", async () => {
    const slot = 1301;
    // The unit moves a to b, then b to c; a writer writes on c since.
    const { a, c, source, first, last, user, moved, mover } = await movedToB(slot);
    const movedOn = await mover.plan({ kind: 'slot', slot, to: c, createdBy: 'test' });
    expect((await mover.run(movedOn.id)).state).toBe('done');
    await last.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'after the second move', '{}')`, [user, slot]);
    // The failed-over catalog has the first move as it was just before its flip, and not the second.
    await loseFlips(moved, movedOn);
    expect({ owner: await env.ownerOf(slot), a: await fenceState(source, slot), b: await fenceState(first, slot), c: await fenceState(last, slot) }).toEqual({ owner: a, a: 'moved', b: 'moved', c: 'open' });

    const resumed = await resume(moved.id);

    // Before: b was published again and its fence opened, empty: the unit's rows (and the write
    // acknowledged on c) no longer found, and new writes made on b.
    expect({ resumed, owner: await env.ownerOf(slot), b: await fenceState(first, slot), onB: await countSlot(first, slot), onC: await countSlot(last, slot) }).toEqual({
      resumed: expect.stringMatching(new RegExp(`^threw: MoveError: .*move job #${movedOn.id}`)) as unknown as string,
      owner: a,
      b: 'moved',
      onB: { users: 0, documents: 0 },
      onC: { users: 1, documents: 3 },
    });
    // The refusal names the recovery by hand, the slot filled in, and the spec's paragraph.
    expect(resumed).toContain(
      `the unit's owner must be decided by hand: publish a map giving slot ${slot} to the shard holding its rows in a transaction that names this unfinished move first: begin; set local ca_dms.override_moves = '${moved.id}'; select * from catalog.publish_slot_map_by_hand(<next version>, <assignments>, <reason>); commit (SlotMapStore.publishByHand with that transaction's client; docs/sharding-spec.md section 9, "A moved slot keeps its owner")`,
    );
  }, 60_000);

  it("is published again when a later move from the target was fenced there and rolled back (the unit never left it; its fence says open, for no job)", async () => {
    const slot = 1302;
    const { a, b, c, source, first, last, user, moved, mover } = await movedToB(slot);
    // A later move b to c takes b's fence, and is cancelled under it: the flip finds the request,
    // the rollback reopens b's fence (open, for no job). The unit stays on b, written there since.
    const later = await mover.plan({ kind: 'slot', slot, to: c, createdBy: 'test' });
    const cancelling = env.mover({
      readerGraceMs: 100,
      hook: async (point) => {
        if (point === 'verifying') await env.catalog.query('update catalog.move_jobs set cancel_requested = true where id = $1', [later.id]);
      },
    });
    expect((await cancelling.run(later.id)).state).toBe('cancelled');
    await first.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'after the cancelled move', '{}')`, [user, slot]);
    // The failed-over catalog has the first move as it was just before its flip, and not the later one.
    await loseFlips(moved, later);
    expect({ owner: await env.ownerOf(slot), a: await fenceState(source, slot), b: await fenceState(first, slot), c: await fenceState(last, slot) }).toEqual({ owner: a, a: 'moved', b: 'open', c: 'moved' });

    const resumed = await resume(moved.id);

    // Before: refused ("b's fence says open: the unit has left b since"), the catalog naming a,
    // whose fence says moved: the unit could be neither read nor written until decided by hand.
    expect({ resumed, owner: await env.ownerOf(slot), b: await fenceState(first, slot), onB: await countSlot(first, slot) }).toEqual({
      resumed: 'ended: done',
      owner: b,
      b: 'open',
      onB: { users: 1, documents: 3 },
    });
  }, 60_000);

  it('is not rolled back over when the catalog recorded a rollback: the refusal names the target to publish and the recovery by hand', async () => {
    const slot = 1303;
    const { a, b, source, first, moved } = await movedToB(slot);
    // The failed-over catalog has the move just before its flip with its rollback decided (the
    // lost flip is not published again once a rollback is recorded).
    await env.catalog.query('delete from catalog.slot_maps where version > (select map_version_before from catalog.move_jobs where id = $1)', [moved.id]);
    await env.catalog.query(
      `update catalog.move_jobs set state = 'verifying', flip_started_at = null, map_version_after = null, unfenced_at = null, cleaning_up_at = null,
              finished_at = null, rows_deleted = 0, lease_holder = null, lease_expires_at = null, rollback_to = 'failed' where id = $1`,
      [moved.id],
    );

    const resumed = await resume(moved.id);

    expect({ owner: await env.ownerOf(slot), a: await fenceState(source, slot), b: await fenceState(first, slot), onB: await countSlot(first, slot) }).toEqual({
      owner: a,
      a: 'moved',
      b: 'open',
      onB: { users: 1, documents: 2 },
    });
    expect(resumed).toMatch(new RegExp(`^threw: MoveError: the fence of slot ${slot} on the source ${a} says it moved to ${b} for this job, though the catalog names ${a} `));
    expect(resumed).toContain(
      `Publish ${b} as the owner instead: publish a map giving slot ${slot} to ${b} in a transaction that names this unfinished move first: begin; set local ca_dms.override_moves = '${moved.id}'; select * from catalog.publish_slot_map_by_hand(<next version>, <assignments>, <reason>); commit (SlotMapStore.publishByHand with that transaction's client; docs/sharding-spec.md section 9, "A moved slot keeps its owner")`,
    );
    // The recovery it names: by hand alone is refused while the move is unfinished (CAF08,
    // sharding migration 013), the refusal naming the setting; with the move named, published.
    const next = moveSlots(await env.slotMaps.current(), [slot], b);
    const unnamed = await env.slotMaps.publishByHand(next, 'the lost flip of the move, published by hand').catch((e: unknown) => e);
    expect(unnamed).toMatchObject({ name: 'SlotMapOwnerKeptError' });
    expect((unnamed as Error).message).toContain(`move job #${moved.id} (${a} to ${b}, verifying) has not finished`);
    expect((unnamed as Error).message).toContain(`set local ca_dms.override_moves = '${moved.id}'`);
    const client = await env.catalog.connect();
    try {
      await client.query('begin');
      await client.query(`select set_config('ca_dms.override_moves', $1, true)`, [String(moved.id)]);
      await env.slotMaps.publishByHand(next, 'the lost flip of the move, published by hand', client);
      await client.query('commit');
    } finally {
      await client.query('rollback').catch(() => undefined);
      client.release();
    }
    expect(await env.ownerOf(slot)).toBe(b);
  }, 60_000);
});
