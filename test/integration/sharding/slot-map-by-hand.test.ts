/**
 * Issue #15: a slot map published by hand over a slot's lasting fence rows. A slot move leaves its
 * source's `slot` row `moved` (to the target) for good, and a move rolled back after its copy
 * began leaves its target's row `moved` (to the source); they decide for the slot on those shards
 * whatever the map says. A map published by hand (SlotMapStore.publish, or SQL) that changed such
 * a slot's owner went through, and (reproduced here before sharding migration 012, a slot with one
 * user and 3 documents moved A -> B):
 * - given back to A: every read and write of its keys met A's `moved` row (CAF02), was re-routed to
 *   A again and gave up, "key's unit moved 6 times in a row; routing is not converging" (the
 *   documents API's 503); the slot's next move (A -> B, where its rows are) stopped in `copying`
 *   for good ("the fence on A says slot ... is moved"), holding up every other move of the slot;
 * - given to a third shard C: reads answered an empty 200 from C (0 documents, the 3 on B out of
 *   sight), a new user signed up on C (the slot split over two shards), and the slot's next move,
 *   to B, ended `done` having deleted B's user and its 3 documents before copying C's one user:
 *   the documents were gone from every shard.
 * Since 012 such a map is refused (SQLSTATE CAF08, SlotMapOwnerKeptError), nothing published,
 * unless the transaction names its writer: a mover's flip publishing its own target, or
 * `catalog.publish_slot_map_by_hand` (docs/sharding-spec.md section 9, "A moved slot keeps its owner").
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { SlotMapOwnerKeptError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { sqlstateOf } from '../../support/postgres.js';
import { cancelledInCopy, controlLogin, countSlot, keysInSlot, otherProcess, refusalOf, seedUsers, startMoveEnv, threeShardsOf, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let control: pg.Pool;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  control = await controlLogin(env, 'map_operator');
}, 120_000);
afterAll(async () => {
  await control?.end();
  await env?.stop();
});

const pool = (shard: string) => env.shards.get(shard) as pg.Pool;
const version = async () => (await env.slotMaps.current()).version;
/** Reads the key's documents as a process started now would (its router holds the current map). */
const readDocs = async (key: string) =>
  (await otherProcess(env)).reader.withShardRead(key, async ({ client }) => (await client.query('select id from documents where owner_id = $1', [key])).rowCount).then(
    (r) => `read ${r.value} on ${r.shardId}`,
    (e: Error) => `failed: ${e.message.slice(0, 200)}`,
  );
const written = async (key: string) =>
  (await otherProcess(env)).writer
    .withShardWrite(key, async ({ client, slot }) => {
      await client.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'after', '{"rev": 0}')`, [key, slot]);
    })
    .then(
      (r) => `written on ${r.shardId}`,
      (e: Error) => `failed: ${e.message.slice(0, 300)}`,
    );
/** A map giving `slot` to `shard`, as SQL by hand: an insert of the next version. */
const insertGiving = async (db: pg.Pool | pg.PoolClient, slot: number, shard: string) => {
  const next = moveSlots(await env.slotMaps.current(), [slot], shard);
  return db.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'ops', 'by hand')`, [next.version, next.slotCount, next.assignments]);
};

/** A slot with one user and 3 documents, moved by a slot move from its owner to `to`. Returns the user and the job's id. */
async function movedSlot(slot: number, from: string, to: string): Promise<{ key: string; job: number }> {
  const [key] = keysInSlot(slot, 1) as [string];
  await seedUsers(pool(from), slot, [key], 3);
  const moved = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot, to, createdBy: 'test' });
  expect((await env.mover({ readerGraceMs: 0 }).run(moved.id)).state).toBe('done');
  return { key, job: moved.id };
}

describe('a slot map published by hand that changes the owner of a moved slot', () => {
  it('is refused with CAF08 (back to the old owner, or to a third shard; SlotMapStore.publish or SQL, superuser or control login), nothing published: reads and writes still answered where the rows are, and the slot moves on', async () => {
    const slot = 1750;
    const { from, to, third } = await threeShardsOf(env, slot);
    const { key, job } = await movedSlot(slot, from, to);
    expect({ source: await unitFenceState(pool(from), 'slot', String(slot)), target: await unitFenceState(pool(to), 'slot', String(slot)) }).toEqual({ source: 'moved', target: 'open' });
    const before = await version();

    // Before: published; the slot's keys then failed "routing is not converging" on every read and
    // write (back to `from`), or read 0 documents on `third` and wrote there (to `third`).
    const back = await refusalOf(env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], from), 'ops@example.com', 'by hand'));
    expect(back).toBeInstanceOf(SlotMapOwnerKeptError);
    expect((back as Error).message).toContain(`slot map version ${before + 1} may not change the owner of slot ${slot} from ${to} to ${from} by hand: move job(s) #${job} (${from} to ${to}, done) wrote fence rows for it`);
    expect((back as Error).message).toContain('catalog.publish_slot_map_by_hand(version, assignments, reason)');
    await expect(env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], third), 'ops@example.com', 'by hand')).rejects.toBeInstanceOf(SlotMapOwnerKeptError);
    expect({
      superuser: await sqlstateOf(() => insertGiving(env.catalog, slot, from)),
      control: await sqlstateOf(() => insertGiving(control, slot, third)),
    }).toEqual({ superuser: 'CAF08', control: 'CAF08' });
    expect(await version()).toBe(before);

    // A map that leaves the moved slot where it is and changes another (never moved) slot is published.
    const other = slot + 1;
    await env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [other], (await threeShardsOf(env, other)).to), 'ops@example.com', 'by hand');
    expect(await version()).toBe(before + 1);

    expect({ read: await readDocs(key), write: await written(key) }).toEqual({ read: `read 3 on ${to}`, write: `written on ${to}` });
    // The mover names itself: the flip of the slot's next move publishes its target.
    const next = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot, to: third, createdBy: 'test' });
    expect(next.from).toBe(to);
    expect((await env.mover({ readerGraceMs: 0 }).run(next.id)).state).toBe('done');
    expect({ owner: await env.ownerOf(slot), read: await readDocs(key), third: await countSlot(pool(third), slot) }).toEqual({ owner: third, read: `read 4 on ${third}`, third: { users: 1, documents: 4 } });
  }, 120_000);

  it("is refused for the target of a slot move rolled back after its copy began (its row turned `moved`, to the source)", async () => {
    const slot = 1752;
    const { from, to } = await threeShardsOf(env, slot);
    await seedUsers(pool(from), slot, keysInSlot(slot, 2), 2);
    const job = await cancelledInCopy(env, slot, to);
    expect((await env.mover({ readerGraceMs: 0 }).run(job)).state).toBe('cancelled');
    expect(await unitFenceState(pool(to), 'slot', String(slot))).toBe('moved');
    const refused = await refusalOf(env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], to), 'ops@example.com', 'by hand'));
    expect(refused).toBeInstanceOf(SlotMapOwnerKeptError);
    expect((refused as Error).message).toContain(`move job(s) #${job} (${from} to ${to}, cancelled)`);
  }, 120_000);

  it('is refused when the transaction names a move job that may not publish it (finished, or another slot\'s), and published by catalog.publish_slot_map_by_hand (SlotMapStore.publishByHand) for a ca_dms_control login, recording who and why', async () => {
    const slot = 1754;
    const { from, to, third } = await threeShardsOf(env, slot);
    const { job } = await movedSlot(slot, from, to);
    const otherSlot = 1755;
    const otherMove = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot: otherSlot, to: third === (await env.ownerOf(otherSlot)) ? from : third, createdBy: 'test' });
    const claiming = async (writer: string, shard: string) => {
      const client = await control.connect();
      try {
        await client.query('begin');
        await client.query(`select set_config('ca_dms.map_writer', $1, true)`, [writer]);
        return await insertGiving(client, slot, shard).then(
          () => 'published',
          (e: { code?: string }) => e.code,
        );
      } finally {
        await client.query('rollback');
        client.release();
      }
    };
    expect({ finished: await claiming(`move job #${job}`, from), anotherSlots: await claiming(`move job #${otherMove.id}`, otherMove.to), garbage: await claiming('move job #x', third) }).toEqual({
      finished: 'CAF08',
      anotherSlots: 'CAF08',
      garbage: 'CAF08',
    });
    await env.mover().requestCancel(otherMove.id);
    expect((await env.mover({ readerGraceMs: 0 }).run(otherMove.id)).state).toBe('cancelled');

    const operator = new SlotMapStore(control);
    await expect(operator.publishByHand(moveSlots(await operator.current(), [slot], from), ' ')).rejects.toThrow('a slot map published by hand records why; "reason" must not be empty');
    const current = await operator.current();
    expect(await sqlstateOf(() => control.query(`select * from catalog.publish_slot_map_by_hand($1, $2, '')`, [current.version + 1, moveSlots(current, [slot], from).assignments]))).toBe('22023');
    const record = await operator.publishByHand(moveSlots(current, [slot], from), 'restored from backup on the old owner (OPS-7)');
    expect({ version: record.map.version, owner: record.map.assignments[slot], by: record.createdBy, reason: record.reason }).toEqual({
      version: current.version + 1,
      owner: from,
      by: 'map_operator by hand',
      reason: 'restored from backup on the old owner (OPS-7)',
    });
    // The compare-and-set of publish: a stale version publishes nothing.
    await expect(operator.publishByHand(moveSlots(current, [slot], third), 'stale')).rejects.toMatchObject({ name: 'SlotMapVersionConflictError' });
    // The setting lasts only for the function's own write: a plain insert after it in the same transaction is refused.
    const client = await control.connect();
    try {
      await client.query('begin');
      const now = await operator.current(client);
      await client.query(`select * from catalog.publish_slot_map_by_hand($1, $2, 'to the target')`, [now.version + 1, moveSlots(now, [slot], to).assignments]);
      // The version after the transaction's own map: its version again is a lost compare-and-set
      // (23505), which the CAF08 trigger, fired after the insert since sharding migration 020, no
      // longer answers first.
      const after = moveSlots(await operator.current(client), [slot], third);
      expect(after.version).toBe(now.version + 2);
      expect(
        await sqlstateOf(() =>
          client.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'ops', 'by hand')`, [after.version, after.slotCount, after.assignments]),
        ),
      ).toBe('CAF08');
    } finally {
      await client.query('rollback');
      client.release();
    }
    expect(await env.ownerOf(slot)).toBe(from);
  }, 120_000);

  it('is refused from the flip of a slot\'s move on, while that move cleans up (its source\'s row is `moved` already): the move no longer judges the owner then, and ends `done`', async () => {
    // Counting only finished jobs (012's first version), a map published by hand while the
    // move was in `cleaning_up` (after its flip and its release) went through, nothing refused it
    // afterwards, the move ended `done`, and the slot was the CAF08 case again (back to the source:
    // every read failed "routing is not converging"; to a third shard: reads empty there).
    const slot = 1756;
    const { from, to, third } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(pool(from), slot, [key], 3);
    const planned = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const attempts: Record<string, string | undefined> = {};
    const byHand = async (shard: string) => {
      const refused = await refusalOf(env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], shard), 'ops@example.com', 'by hand'));
      return refused === null ? 'published' : `${(refused as Error).name}: ${(refused as Error).message.includes(`#${planned.id} (${from} to ${to}, cleaning_up)`)}`;
    };
    const hook = async (point: MoveHookPoint) => {
      if (point !== 'cleaning_up') return;
      attempts.source = await unitFenceState(pool(from), 'slot', String(slot));
      attempts.back = await byHand(from);
      attempts.third = await byHand(third);
    };
    expect((await env.mover({ readerGraceMs: 0, hook }).run(planned.id)).state).toBe('done');
    expect(attempts).toEqual({ source: 'moved', back: 'SlotMapOwnerKeptError: true', third: 'SlotMapOwnerKeptError: true' });
    expect({ owner: await env.ownerOf(slot), read: await readDocs(key), write: await written(key) }).toEqual({ owner: to, read: `read 3 on ${to}`, write: `written on ${to}` });
  }, 120_000);
});
