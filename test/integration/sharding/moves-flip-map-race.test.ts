/**
 * A directory move's flip of a key without a directory entry (its pin deleted while it moved)
 * decides by where the key routes by hash: its slot's owner in the latest slot map. That read and
 * the flip's commit must agree with every slot map publication: one committed between them sent
 * the key's writes to the slot's new owner while the flip still pinned it to the target, hiding
 * what was written there. The flip reads the map under a SHARE lock of `catalog.slot_maps`, which
 * every publication (an insert) waits for, so a publication lands before the read (the move then
 * sees a third shard and fails) or after the commit (the key is pinned, and the map no longer
 * decides where it goes).
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import type { MoverSlotMaps } from '../../../functions/adapters/postgres/move-port.js';
import { Mover, MoveConflictError, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { documentsOf, keysInSlot, type MoveEnv, seedUsers, startMoveEnv, UnguardedOperatorDirectory, unitFenceState } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
});
afterAll(async () => {
  await env?.stop();
});

/** Whether a publication of a slot map waits on a lock in the catalog (`pg_stat_activity`). */
async function publicationWaits(): Promise<boolean> {
  const { rows } = await env.catalog.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity
      where pid <> pg_backend_pid() and wait_event_type = 'Lock' and query like '%insert into catalog.slot_maps%'`,
  );
  return (rows[0]?.n ?? 0) > 0;
}

/** Settles with `'published'` once `publication` commits, or `'waits'` once it is seen waiting on a lock. */
async function publishedOrWaiting(publication: Promise<unknown>): Promise<'published' | 'waits'> {
  let settled = false;
  const done = publication.then(() => {
    settled = true;
    return 'published' as const;
  });
  const watch = (async (): Promise<'waits' | 'published'> => {
    for (;;) {
      if (settled) return 'published';
      if (await publicationWaits()) return 'waits';
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  })();
  return Promise.race([done, watch]);
}

/**
 * A directory key of `slot` seeded with 4 documents on the slot's owner, the two other shards, an
 * operator's directory store, and a writer that writes a document of the key where the catalog
 * routes it now (its entry, else its slot's owner), noting each shard that acknowledged one.
 */
async function keyScene(slot: number): Promise<{
  from: string;
  to: string;
  other: string;
  key: string;
  operator: DirectoryStore;
  route: () => Promise<string>;
  accepted: string[];
  write: () => Promise<void>;
}> {
  const from = await env.ownerOf(slot);
  const [to, other] = ['shard_a', 'shard_b', 'shard_c'].filter((s) => s !== from) as [string, string];
  const [key] = keysInSlot(slot, 1) as [string];
  await seedUsers(env.shards.get(from) as pg.Pool, slot, [key], 4);
  // Its deletions go past sharding migration 010's guard (CAF06 for a key a directory move
  // wrote fence rows for): this test is of what the mover does with a pin deleted all the same.
  const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
  const route = async (): Promise<string> => (await operator.entry(key))?.shardId ?? ((await env.slotMaps.ownerOf(slot))?.shardId as string);
  const accepted: string[] = [];
  const write = async (): Promise<void> => {
    const shard = await route();
    const wrote = await (env.shards.get(shard) as pg.Pool)
      .query(
        `with u as (insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'writer') on conflict (id) do nothing)
         insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1::uuid, $2, 'written by hash', '{"rev": 0}')`,
        [key, slot],
      )
      .then(
        () => true,
        // Refused by a fence (CAF01 fenced or incoming, CAF02 moved): not acknowledged, so never lost.
        (err: { code?: string }) => {
          if (err.code === 'CAF01' || err.code === 'CAF02') return false;
          throw err;
        },
      );
    if (wrote) accepted.push(shard);
  };
  return { from, to, other, key, operator, route, accepted, write };
}

describe("a slot map published between a directory move's read of where its unpinned key routes and the flip's commit", () => {
  it('is never half-seen: a document written where the published map sends the key stays where the catalog routes the key', async () => {
    const slot = 1501;
    const { from, to, other, key, operator, route, accepted, write } = await keyScene(slot);
    // The operator deletes the move's pin under its fence: the key routes by hash to its slot's
    // owner, the move's source, and the move goes on (docs/sharding-spec.md section 9).
    let unpinned = false;
    let publication: Promise<unknown> | null = null;
    let inWindow: 'published' | 'waits' | null = null;
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point === 'verifying' && !unpinned) unpinned = await operator.delete(key);
    };
    // The flip's read of the slot's owner, in its transaction (a client given), once unpinned: an
    // operator publishes a map giving the slot to a third shard from another session, and a writer
    // routed by that map writes there, before the read returns to the flip.
    const slotMaps: MoverSlotMaps = {
      current: (...args) => env.slotMaps.current(...args),
      publish: (...args) => env.slotMaps.publish(...args),
      async ownerOf(...args) {
        const read = await env.slotMaps.ownerOf(...args);
        if (args[0] === slot && args[1] !== undefined && unpinned && publication === null) {
          publication = env.slotMaps.current().then((map) => env.slotMaps.publish(moveSlots(map, [slot], other), 'ops@example.com', 'by hand'));
          inWindow = await publishedOrWaiting(publication);
          if (inWindow === 'published') await write();
        }
        return read;
      },
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    await publication;
    // A writer after both: the key is where the catalog routes it now.
    await write();

    // Before: the publication committed inside the flip, the document written by hash on the
    // third shard was acknowledged, and the flip then pinned the key to the target: ended done,
    // the key routed to the target, the document out of sight on the third shard.
    const held = Object.fromEntries(await Promise.all([...env.shards].map(async ([id, pool]) => [id, (await documentsOf(pool, [key])).size] as const)));
    const routed = await route();
    // Every acknowledged document of the key is on the shard the catalog routes it to, and nowhere else.
    expect({ ended, routed, accepted, held }).toEqual({ ended: 'ended: done', routed: to, accepted: [to], held: { [from]: 0, [to]: 5, [other]: 0 } });
    // The publication waited for the flip's commit, and then gave the slot (not the pinned key) away.
    expect({ unpinned, inWindow }).toEqual({ unpinned: true, inWindow: 'waits' });
    expect((await env.slotMaps.current()).assignments[slot]).toBe(other);
  }, 60_000);
});

describe('the slot of a key whose directory move is unfinished', () => {
  it('cannot be moved meanwhile: no other move publishes the map of the slot that the key routes by, nor pins another key of it', async () => {
    // This is what leaves a slot map published by hand the only change of a moving key's hash
    // route the flip must lock out (above): a move of the key's slot, or of another key of it,
    // would publish it, or pin keys its copy and clean-up go by.
    const slot = 1502;
    const from = await env.ownerOf(slot);
    const [to, other] = ['shard_a', 'shard_b', 'shard_c'].filter((s) => s !== from) as [string, string];
    const [key, neighbour] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [key, neighbour], 1);
    const mover = env.mover({ readerGraceMs: 0 });
    const moving = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });

    const slotMove = await mover.plan({ kind: 'slot', slot, to: other, createdBy: 'test' }).catch((e: unknown) => e);
    const keyMove = await mover.plan({ kind: 'directory', key: neighbour, to: other, createdBy: 'test' }).catch((e: unknown) => e);
    await mover.cancel(moving.id);

    expect(slotMove).toBeInstanceOf(MoveConflictError);
    expect((slotMove as Error).message).toBe(`slot ${slot} already has an unfinished move (job #${moving.id}); finish or cancel it first`);
    expect(keyMove).toBeInstanceOf(MoveConflictError);
    expect((await mover.get(moving.id)).state).toBe('cancelled');
  }, 60_000);
});

describe("a directory move's flip of an unpinned key while a slot map publication is in flight and does not end", () => {
  it('waits for it only within the fence budget: the flip gives up, nothing published, writes released, and the next run finishes', async () => {
    const slot = 1503;
    const from = await env.ownerOf(slot);
    const [to] = ['shard_a', 'shard_b', 'shard_c'].filter((s) => s !== from) as [string];
    const [key] = keysInSlot(slot, 1) as [string];
    const source = env.shards.get(from) as pg.Pool;
    await seedUsers(source, slot, [key], 2);
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    // A publisher's transaction that has inserted its map (ROW EXCLUSIVE on catalog.slot_maps) and
    // has not committed, taken under the fence once the key is unpinned.
    const publisher = await env.catalog.connect();
    let unpinned = false;
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point !== 'verifying' || unpinned) return;
      unpinned = await operator.delete(key);
      await publisher.query('begin');
      await publisher.query('lock table catalog.slot_maps in row exclusive mode');
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, fenceBudgetMs: 800, fenceAttempts: 1, hook });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    let first: string;
    try {
      first = await mover.run(planned.id).then(
        (j) => `ended: ${j.state}`,
        (e: Error) => `threw: ${e.message}`,
      );
      expect({ flipped: (await mover.get(planned.id)).flipStarted, sourceFence: await unitFenceState(source, 'directory', key), entry: await operator.entry(key) }).toEqual({
        flipped: false,
        sourceFence: 'open',
        entry: null,
      });
    } finally {
      await publisher.query('rollback');
      publisher.release();
    }

    const second = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );

    expect(unpinned).toBe(true);
    expect(first).toMatch(/could not be verified and published within its budget \(the flip ran out of time\).*the move resumes at its next run$/);
    expect(second).toBe('ended: done');
    expect((await operator.entry(key))?.shardId).toBe(to);
    expect((await documentsOf(env.shards.get(to) as pg.Pool, [key])).size).toBe(2);
  }, 60_000);
});

describe("a directory move's key whose pin an operator deleted before the move pinned it, routing by hash to a third shard", () => {
  it('is not pinned back to the source: the move fails, and what was written on the third shard stays where the key routes', async () => {
    const slot = 1504;
    const hashOwner = await env.ownerOf(slot);
    const [from, to] = ['shard_a', 'shard_b', 'shard_c'].filter((s) => s !== hashOwner) as [string, string];
    const [key] = keysInSlot(slot, 1) as [string];
    // The key lives pinned away from its slot's owner; a move of it to a second shard is planned.
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [key], 3);
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    await operator.set(key, from, 'ops@example.com');
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    // The operator deletes the pin before any run: the key routes by hash to its slot's owner, and
    // a writer routed so writes a document there (its user row too).
    await operator.delete(key);
    await (env.shards.get(hashOwner) as pg.Pool).query(
      `with u as (insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'writer') on conflict (id) do nothing)
       insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1::uuid, $2, 'written by hash', '{"rev": 0}')`,
      [key, slot],
    );

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    const routed = (await operator.entry(key))?.shardId ?? ((await env.slotMaps.ownerOf(slot))?.shardId as string);

    // Before: the run pinned the key back to the source, the move went on to the target, and the
    // document written on the slot's owner was out of sight of every reader of the key.
    expect({ ended, routed }).toEqual({ ended: 'ended: failed', routed: hashOwner });
    expect((await mover.get(planned.id)).error).toContain(`key ${key} was unpinned (it routes by hash to ${hashOwner}, its slot ${slot}'s owner)`);
  }, 60_000);
});

describe("a slot map published between a cancelled directory move's rollback reading where its unpinned key routes and the rollback's commit", () => {
  it('waits for the rollback, which pins the key back to its source under the lock: nothing is written in the window, and every document stays where the catalog routes the key', async () => {
    // The rollback pins the unpinned key back to its source (docs/sharding-spec.md section 9, "A
    // rollback pins an unpinned key back to its source": the move's `directory` fence rows outlive
    // it), so it writes a route, and reads the slot's owner under
    // catalog.lock_slot_maps_for_hash_route() as the flip does: a publication waits for its commit.
    // Unlocked, the pin hid the document written on the third shard in the window. (Before the
    // pin, the rollback wrote no route and decided without the lock: the publication landed in
    // the window, the key followed the map to the third shard, and the source's rows were left
    // out of sight there; and a key left unpinned so moved with its slot's next move while the
    // move's `directory` rows refused it there: issue #15, moves-directory-rollback-unpinned.test.ts.)
    const slot = 1505;
    const { from, to, other, key, operator, route, accepted, write } = await keyScene(slot);
    // Under the fence the operator deletes the move's pin (the key routes by hash to the source)
    // and cancels the move: the flip answers the cancel, and the rollback decides.
    let cancelled = false;
    let publication: Promise<unknown> | null = null;
    let inWindow: 'published' | 'waits' | null = null;
    const hook = async (point: MoveHookPoint, job?: { id: number }): Promise<void> => {
      if (point !== 'verifying' || cancelled || job === undefined) return;
      expect(await operator.delete(key)).toBe(true);
      await mover.requestCancel(job.id);
      cancelled = true;
    };
    // The rollback's read of the slot's owner (a client given, once cancelled): the operator
    // publishes a map giving the slot to a third shard from another session, and a writer routed
    // by it writes there, before the read returns to the rollback.
    const slotMaps: MoverSlotMaps = {
      current: (...args) => env.slotMaps.current(...args),
      publish: (...args) => env.slotMaps.publish(...args),
      async ownerOf(...args) {
        const read = await env.slotMaps.ownerOf(...args);
        if (args[0] === slot && args[1] !== undefined && cancelled && publication === null) {
          publication = env.slotMaps.current().then((map) => env.slotMaps.publish(moveSlots(map, [slot], other), 'ops@example.com', 'by hand'));
          inWindow = await publishedOrWaiting(publication);
          if (inWindow === 'published') await write();
        }
        return read;
      },
    };
    const mover: Mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    await publication;
    await write();

    const held = Object.fromEntries(await Promise.all([...env.shards].map(async ([id, pool]) => [id, (await documentsOf(pool, [key])).size] as const)));
    const routed = await route();
    // Whatever the rollback does with the route: cancelled, every document acknowledged by hash
    // is on the shard the catalog routes the key to, none was deleted, and the target's copy is gone.
    expect({ ended, everyAcceptedRouted: accepted.every((s) => s === routed), kept: (held[from] ?? 0) + (held[other] ?? 0), copy: held[to] }).toEqual({
      ended: 'ended: cancelled',
      everyAcceptedRouted: true,
      kept: 4 + accepted.length,
      copy: 0,
    });
    // As it is: the rollback reads under the lock, so the publication waits for its commit (no
    // write in the window, one after), and the key, pinned to the source, stays there with its
    // rows whatever the map published by hand says of its slot.
    expect({ inWindow, routed, held }).toEqual({ inWindow: 'waits', routed: from, held: { [from]: 5, [to]: 0, [other]: 0 } });
    expect((await env.directory.entry(key))?.shardId).toBe(from);
    expect(await unitFenceState(env.shards.get(to) as pg.Pool, 'directory', key)).toBe('moved');
  }, 60_000);
});
