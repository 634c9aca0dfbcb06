/**
 * A slot map that changes the owner of a slot whose slot move is unfinished and has not flipped
 * (issue #15; docs/sharding-spec.md section 9, "A moved slot keeps its owner"). Before sharding
 * migration 013's amendment such a map was left to the move to judge, and (a slot move A -> B,
 * `planned`, or `copying` before its source was prepared) a map someone published giving the slot
 * to B sent its writes to B, which had no fence row for the slot and took them, acknowledged; the
 * move then fenced B `incoming`, its copy deleted B's rows of the slot before copying A's, and it
 * ended `done`: a user signed up on B in between was on no shard. The catalog now refuses such a
 * map (CAF08, nothing published), by hand too unless the transaction names the move in
 * `ca_dms.override_moves`; the move's own flip names itself in `ca_dms.map_writer`. A move
 * planned while such a map is being published reads the slot's owner under the lock a
 * publication waits for (Mover.plan), so the two cannot both commit unseen.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { controlLogin, countSlot, keysInSlot, type MoveEnv, outcomeOf, seedUsers, sides, startMoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let control: pg.Pool;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  control = await controlLogin(env, 'moving_map_operator');
});
afterAll(async () => {
  await control?.end();
  await env?.stop();
});

/** `published`, or `<error class> <SQLSTATE>: <message>` when refused. */
function attempt(publish: () => Promise<unknown>): Promise<string> {
  return publish().then(
    () => 'published',
    (e: Error & { code?: string; cause?: { code?: string } }) => `${e.constructor.name} ${e.code ?? e.cause?.code ?? '?'}: ${e.message}`,
  );
}

/** A map giving `slot` to `shard`, as SQL: an insert of the next version, on `db`. */
async function insertGiving(db: pg.Pool | pg.PoolClient, slot: number, shard: string): Promise<unknown> {
  const next = moveSlots(await env.slotMaps.current(), [slot], shard);
  return db.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'ops', 'by hand')`, [next.version, next.slotCount, next.assignments]);
}

/** `publish` on a connection of the control login, in a transaction that first sets `settings` (`set_config(name, value, true)`), rolled back: `published` or the refusal. */
async function inTransaction(settings: Record<string, string>, publish: (client: pg.PoolClient) => Promise<unknown>): Promise<string> {
  const client = await control.connect();
  try {
    await client.query('begin');
    for (const [name, value] of Object.entries(settings)) await client.query('select set_config($1, $2, true)', [name, value]);
    return await attempt(() => publish(client));
  } finally {
    await client.query('rollback');
    client.release();
  }
}

/** A writer's sign-up (a user and a first document) of `user` where the catalog routes `slot` now, as raw SQL: `accepted on <shard>` or `refused <SQLSTATE> on <shard>`. */
async function signUpWhereRouted(user: string, slot: number): Promise<string> {
  const shard = await env.ownerOf(slot);
  return (env.shards.get(shard) as pg.Pool)
    .query(
      `with u as (insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'new') returning id)
       insert into documents (id, owner_id, slot, title, content) select gen_random_uuid(), id, $2, 'first', '{"rev": 0}' from u`,
      [user, slot],
    )
    .then(
      () => `accepted on ${shard}`,
      (e: { code?: string }) => `refused ${e.code ?? '?'} on ${shard}`,
    );
}

async function version(): Promise<number> {
  return (await env.slotMaps.current()).version;
}

describe('a slot map giving a slot whose move has not flipped to the move\'s target', () => {
  it.each([
    ['planned', null, 1801, 'planned'],
    ['copying, before its target is fenced', 'copying', 1802, 'copying'],
  ] as const)('%s: refused (CAF08, naming the move), nothing published, and a user signed up where the catalog routes the slot is on the target after the move', async (_when, at, slot, state) => {
    const { from, to, target } = await sides(env, slot);
    const [a, b, newcomer] = keysInSlot(slot, 3) as [string, string, string];
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [a, b], 2);
    let published: string | null = null;
    let wrote: string | null = null;
    let before = 0;
    // Someone publishes the map a move would (the slot to its target), and a writer routed by the
    // catalog signs a user up.
    const publishAndWrite = async (): Promise<void> => {
      before = await version();
      published = await attempt(async () => env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], to), 'someone-else', 'manual edit'));
      wrote = await signUpWhereRouted(newcomer, slot);
    };
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point === at && published === null) await publishAndWrite();
    };
    const mover = env.mover({ readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    if (at === null) await publishAndWrite();

    const ended = await outcomeOf(mover.run(planned.id));
    const { rows } = await target.query<{ n: number }>('select count(*)::int as n from users where id = $1', [newcomer]);

    // Before: published, the sign-up accepted on the target, then deleted by the move's copy
    // (newcomer on the target: 0; target: users 2, documents 4), the move ended done.
    expect({ ended, wrote, newcomerOnTarget: rows[0]?.n, target: await countSlot(target, slot) }).toEqual({
      ended: 'ended: done',
      wrote: `accepted on ${from}`,
      newcomerOnTarget: 1,
      target: { users: 3, documents: 5 },
    });
    expect(published).toContain(`SlotMapOwnerKeptError CAF08: slot map version ${before + 1} may not change the owner of slot ${slot} from ${from} to ${to}: move job #${planned.id} (${from} to ${to}, ${state}) has not finished`);
    expect(published).toContain(`Nothing was published. Cancel the move (DELETE /shards/moves/${planned.id}) or let it finish first`);
  }, 60_000);
});

describe('a slot map that changes the owner of a slot whose move has not flipped', () => {
  it('is refused for every publisher and every new owner, by hand too unless the transaction names the move; the move\'s own flip to its target is let through; once the move is cancelled the map is published', async () => {
    const slot = 1803;
    const { from, to } = await sides(env, slot);
    const third = ['shard_a', 'shard_b', 'shard_c'].find((s) => s !== from && s !== to) as string;
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 1), 1);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const before = await version();
    const byHand = (shard: string) => async (client: pg.PoolClient) => new SlotMapStore(control).publishByHand(moveSlots(await env.slotMaps.current(), [slot], shard), 'OPS-9: decided by hand', client);
    const code = (outcome: string) => outcome.replace(/^(\S+ \S+):.*$/s, '$1');

    const outcomes = {
      toThird: code(await attempt(async () => env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], third), 'someone-else', 'manual edit'))),
      superuserSql: code(await attempt(() => insertGiving(env.catalog, slot, to))),
      controlSql: code(await attempt(() => insertGiving(control, slot, third))),
      byHand: code(await inTransaction({}, byHand(to))),
      byHandNamingAnotherMove: code(await inTransaction({ 'ca_dms.override_moves': `${planned.id + 1000}` }, byHand(to))),
      flip: await inTransaction({ 'ca_dms.map_writer': `move job #${planned.id}` }, (c) => insertGiving(c, slot, to)),
      flipToAnotherShard: code(await inTransaction({ 'ca_dms.map_writer': `move job #${planned.id}` }, (c) => insertGiving(c, slot, third))),
      byHandNamingTheMove: await inTransaction({ 'ca_dms.override_moves': ` 1, ${planned.id}` }, byHand(third)),
    };
    expect(outcomes).toEqual({
      toThird: 'SlotMapOwnerKeptError CAF08',
      superuserSql: 'DatabaseError CAF08',
      controlSql: 'DatabaseError CAF08',
      byHand: 'SlotMapOwnerKeptError CAF08',
      byHandNamingAnotherMove: 'SlotMapOwnerKeptError CAF08',
      flip: 'published',
      flipToAnotherShard: 'DatabaseError CAF08',
      byHandNamingTheMove: 'published',
    });
    // By hand, the refusal says how to name the move; the flip's writer naming another owner is named.
    expect(await inTransaction({}, byHand(to))).toContain(`a move that can neither finish nor be cancelled (its error says the slot's owner must be decided by hand) is overridden by naming it in the same transaction first: set local ca_dms.override_moves = '${planned.id}'`);
    expect(await inTransaction({ 'ca_dms.map_writer': `move job #${planned.id}` }, (c) => insertGiving(c, slot, third))).toContain(`(ca_dms.map_writer "move job #${planned.id}" is not the flip of move job #${planned.id} to its target)`);
    expect(await version()).toBe(before);

    // A map that changes only another slot (no move) is published meanwhile.
    const other = slot + 1;
    const otherOwner = await env.ownerOf(other);
    expect(await attempt(async () => env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [other], otherOwner === third ? from : third), 'ops', 'another slot'))).toBe('published');

    // Cancelled (it copied nothing), the move no longer keeps the slot: the map is published.
    await mover.requestCancel(planned.id);
    expect(await outcomeOf(mover.run(planned.id))).toBe('ended: cancelled');
    expect(await attempt(async () => env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], third), 'someone-else', 'after the cancel'))).toBe('published');
    expect(await env.ownerOf(slot)).toBe(third);
  }, 60_000);
});

describe('a slot move planned while a map giving its slot to the target is being published', () => {
  it('waits for the map\'s commit, reads it, and is refused: no move is recorded that the map had passed unseen', async () => {
    const slot = 1805;
    const { to } = await sides(env, slot);
    // The map is inserted (the trigger sees no move of the slot yet) and not yet committed.
    const publisher = await env.catalog.connect();
    let planning: Promise<string> | null = null;
    let waited = false;
    try {
      await publisher.query('begin');
      await insertGiving(publisher, slot, to);
      planning = env
        .mover()
        .plan({ kind: 'slot', slot, to, createdBy: 'test' })
        .then(
          (j) => `planned #${j.id} (${j.from} to ${j.to})`,
          (e: Error) => `${e.name}: ${e.message}`,
        );
      let settled = false;
      void planning.then(() => (settled = true));
      // Until the plan has ended, or waits on a lock of the catalog.
      for (;;) {
        if (settled) break;
        const { rows } = await env.catalog.query<{ n: number }>(
          `select count(*)::int as n from pg_stat_activity where pid <> pg_backend_pid() and wait_event_type = 'Lock' and query like '%lock_slot_maps_for_hash_route%'`,
        );
        if ((rows[0]?.n ?? 0) > 0) {
          waited = true;
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await publisher.query('commit');
    } finally {
      await publisher.query('rollback').catch(() => undefined);
      publisher.release();
    }
    const planned = await planning;
    const { rows } = await env.catalog.query<{ n: number }>(`select count(*)::int as n from catalog.move_jobs where slot = $1 and state not in ('done', 'failed', 'cancelled')`, [slot]);

    // Before: planned from the slot's old owner (read before the map's commit) while the map gave
    // the slot to its target: the case above, unseen by the trigger (the job not yet committed).
    expect({ waited, planned, unfinished: rows[0]?.n, owner: await env.ownerOf(slot) }).toEqual({
      waited: true,
      planned: `MoveRequestError: slot ${slot} is already on ${to} (another move finished while this one was planned)`,
      unfinished: 0,
      owner: to,
    });
  }, 60_000);
});
