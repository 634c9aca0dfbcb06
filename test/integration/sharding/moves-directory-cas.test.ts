/**
 * A directory move publishes its key's new owner by compare-and-set against the entry it read: an
 * operator's change of the entry (DirectoryStore.set, or SQL, from another session) that commits
 * between the move's read and its write is never overwritten. The flip (and the republication of a
 * lost flip) reads the entry again and answers as it does to a change it saw: it names the change
 * and publishes nothing. An owner changed to a third shard while the move runs (a pin of its key,
 * a map someone else published) fails the move, rolled back (the unit whole on its source) and
 * never fenced again; a pin to its target is its publication; a pin to its source changes nothing.
 * The directory cache of the mover's process does not keep an owner read before the flip committed.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryStore, DirectoryVersionConflictError, type DirectoryEntry } from '../../../functions/adapters/postgres/directory-store.js';
import type { MoverDirectory } from '../../../functions/adapters/postgres/move-port.js';
import { Mover, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countSlot, documentsOf, keysInSlot, type MoveEnv, outcomeOf, publishPastOwnerGuard, seedUsers, startMoveEnv, UnguardedOperatorDirectory, unitFenceState } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
});
afterAll(async () => {
  await env?.stop();
});

/** The slot's owner (the move's source), the move's target, and a third shard an operator picks. */
async function shardsOf(slot: number): Promise<{ from: string; to: string; other: string; source: pg.Pool; target: pg.Pool }> {
  const from = await env.ownerOf(slot);
  const [to, other] = ['shard_a', 'shard_b', 'shard_c'].filter((s) => s !== from) as [string, string];
  return { from, to, other, source: env.shards.get(from) as pg.Pool, target: env.shards.get(to) as pg.Pool };
}

/**
 * The env's directory, except that the first read of `key` on the run's catalog connection once
 * `armed()` says so is followed, before the read returns, by an operator's change of the entry
 * committed from another session (`change`).
 */
function directoryWithOperator(key: string, armed: () => boolean, change: () => Promise<unknown>): MoverDirectory & { changed: boolean } {
  const wrapped = {
    changed: false,
    all: (...args: Parameters<MoverDirectory['all']>) => env.directory.all(...args),
    keysInSlot: (...args: Parameters<MoverDirectory['keysInSlot']>) => env.directory.keysInSlot(...args),
    invalidate: (...args: Parameters<MoverDirectory['invalidate']>) => env.directory.invalidate(...args),
    set: (...args: Parameters<MoverDirectory['set']>) => env.directory.set(...args),
    async entry(...args: Parameters<MoverDirectory['entry']>) {
      const read = await env.directory.entry(...args);
      if (args[0] === key && args[1] !== undefined && !wrapped.changed && armed()) {
        wrapped.changed = true;
        await change();
      }
      return read;
    },
  };
  return wrapped;
}

/**
 * A directory move of a key of `slot` (`documents` documents, on the slot's owner) whose directory
 * lets an operator pin the key to `pinTo(sides)` ({@link directoryWithOperator}) once armed: at the
 * move's `verifying` hook, or (`start`) from the run's start. `run()` runs it once and says how it ended.
 */
async function directoryMoveWithOperator(slot: number, documents: number, pinTo: (sides: Awaited<ReturnType<typeof shardsOf>>) => string, armAt: 'verifying' | 'start') {
  const sides = await shardsOf(slot);
  const [key] = keysInSlot(slot, 1) as [string];
  await seedUsers(sides.source, slot, [key], documents);
  // Its deletions go past sharding migration 010's guard (CAF06 for a key a directory move
  // wrote fence rows for): this test is of what the mover does with a pin deleted all the same.
  const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
  let armed = false;
  const directory = directoryWithOperator(
    key,
    () => armed,
    () => operator.set(key, pinTo(sides), 'ops@example.com'),
  );
  const hook = (point: string): void => {
    if (point === 'verifying') armed = true;
  };
  const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory, readerGraceMs: 0, ...(armAt === 'verifying' ? { hook } : {}) });
  const planned = await mover.plan({ kind: 'directory', key, to: sides.to, createdBy: 'test' });
  const run = (): Promise<string> => {
    if (armAt === 'start') armed = true;
    return outcomeOf(mover.run(planned.id));
  };
  return { ...sides, key, directory, mover, planned, run };
}

describe("an operator's directory change between a directory move's read of the entry and its flip", () => {
  it('is kept: the flip publishes nothing, and the move fails naming the change, the unit whole on its source', async () => {
    const { from, other, source, target, key, directory, mover, planned, run } = await directoryMoveWithOperator(1401, 4, (s) => s.other, 'verifying');

    const outcome = await run();

    // Before: the flip overwrote the operator's pin with the target and the move ended done.
    expect(directory.changed).toBe(true);
    expect(outcome).toBe('ended: failed');
    expect(await env.directory.entry(key)).toMatchObject({ shardId: other, updatedBy: 'ops@example.com' });
    const stopped = await mover.get(planned.id);
    expect(stopped.error).toMatch(new RegExp(`^key ${key} was pinned to ${other} \\(version \\d+, by ops@example.com\\) while this move ran`));
    expect({ flipped: stopped.flipStarted, sourceFence: await unitFenceState(source, 'directory', key), targetFence: await unitFenceState(target, 'directory', key) }).toEqual({
      flipped: false,
      sourceFence: 'open',
      targetFence: 'moved',
    });
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 4, onTarget: 0 });
    expect((await env.directory.entry(key))?.shardId).toBe(other);
    expect(from).not.toBe(other);
  }, 60_000);

  it('is kept when a lost flip is published again: the run refuses, naming the operator\'s shard', async () => {
    const slot = 1402;
    const { from, to, other, source, target } = await shardsOf(slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 2);
    const moved = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect((await env.mover({ readerGraceMs: 0 }).run(moved.id)).state).toBe('done');
    // A failed-over catalog lost the flip and what came after it: the entry names the source again
    // (the version before the flip), the job is just before its flip. The shards kept theirs.
    const done = await env.mover().get(moved.id);
    // (Past sharding migration 011's guard, as the lost state is no one's change: the catalog as it was before the flip.)
    await env.catalog.query(
      `begin; set local session_replication_role = replica; update catalog.shard_directory set shard_id = '${from}', version = ${Number(done.mapVersionBefore)} where key = '${key}'; commit`,
    );
    await env.catalog.query(
      `update catalog.move_jobs set state = 'verifying', flip_started_at = null, map_version_after = null, unfenced_at = null, cleaning_up_at = null,
              finished_at = null, rows_deleted = 0, lease_holder = null, lease_expires_at = null where id = $1`,
      [moved.id],
    );
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: 'moved', target: 'open' });
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    const directory = directoryWithOperator(
      key,
      () => true,
      () => operator.set(key, other, 'ops@example.com'),
    );
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory, readerGraceMs: 0 });

    const outcome = await mover.run(moved.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );

    // Before: the republication overwrote the operator's pin with the target and the move ended done.
    expect(directory.changed).toBe(true);
    expect(outcome).toMatch(new RegExp(`^threw: .*the catalog names ${other} as its owner .*neither side of the move`));
    // The recovery it asks for is named, with the key filled in.
    expect(outcome).toContain(
      `neither side of the move: the unit's owner must be decided by hand: pin it with select * from catalog.repin_by_hand('${key}', <the shard holding its rows>, <reason>) (DirectoryStore.repinByHand; docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned")`,
    );
    expect(await env.directory.entry(key)).toMatchObject({ shardId: other, updatedBy: 'ops@example.com' });
    expect((await mover.get(moved.id)).flipStarted).toBe(false);
  }, 60_000);
});

describe("an operator's pin made between a directory move's read of its unpinned key and the move's own pin", () => {
  it('is kept: the move fails before it fences anything, naming the shard the key is pinned to', async () => {
    const { other, source, target, key, directory, mover, planned, run } = await directoryMoveWithOperator(1404, 2, (s) => s.other, 'start');
    expect(await env.directory.entry(key)).toBeNull();

    const outcome = await run();

    // Before: the move pinned the key back to its source over the operator's pin, then moved it.
    expect(directory.changed).toBe(true);
    const job = await mover.get(planned.id);
    expect({ outcome, error: job.error, fencedAt: job.fencedAt }).toEqual({
      outcome: 'ended: failed',
      error: `key ${key} was pinned to ${other} (version 1, by ops@example.com) while this move ran: that shard is neither the move's source ${job.from} nor its target ${job.to}, so the move cannot publish its target without overwriting the pin; it stopped and rolled back its copy on ${job.to}; the unit's rows are on ${job.from}`,
      fencedAt: null,
    });
    expect(await env.directory.entry(key)).toMatchObject({ shardId: other, updatedBy: 'ops@example.com' });
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: undefined, target: undefined });
  }, 60_000);
});

describe('DirectoryStore.set with an expected entry', () => {
  it('writes only over the entry it expects (shard and version), or only where there is none, and names what it found otherwise', async () => {
    const store = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    const [key] = keysInSlot(1403, 1) as [string];

    const created = await store.set(key, 'shard_a', 'ops@example.com', undefined, null);
    const again = await store.set(key, 'shard_b', 'ops@example.com', undefined, null).catch((e: unknown) => e);
    const moved = await store.set(key, 'shard_b', 'mover', undefined, { shardId: 'shard_a', version: created.version });
    const stale = await store.set(key, 'shard_c', 'mover', undefined, { shardId: 'shard_a', version: created.version }).catch((e: unknown) => e);
    // Deleted and pinned again elsewhere: version 1 again, but not the entry expected.
    await store.delete(key);
    await store.set(key, 'shard_c', 'ops@example.com');
    const reborn = await store.set(key, 'shard_b', 'mover', undefined, { shardId: 'shard_a', version: 1 }).catch((e: unknown) => e);

    expect(created).toMatchObject({ shardId: 'shard_a', version: 1 });
    expect(again).toBeInstanceOf(DirectoryVersionConflictError);
    expect((again as Error).message).toBe(`the directory entry of ${key} changed: expected no entry, found shard_a (version 1, by ops@example.com); nothing was written`);
    expect(moved).toMatchObject({ shardId: 'shard_b', version: 2, updatedBy: 'mover' });
    expect(stale).toMatchObject({ actual: { shardId: 'shard_b', version: 2 } });
    expect((stale as Error).message).toBe(`the directory entry of ${key} changed: expected shard_a (version 1), found shard_b (version 2, by mover); nothing was written`);
    expect(reborn).toMatchObject({ actual: { shardId: 'shard_c', version: 1 } });
    expect(await store.entry(key)).toMatchObject({ shardId: 'shard_c', version: 1, updatedBy: 'ops@example.com' });
  });
});

describe("an operator's pin of the key to the move's own target, made while the move verifies under its fence", () => {
  it('completes the move: the flip records the operator\'s entry as the publication, the fence is released forward and the source cleaned up', async () => {
    const { from, to, source, target, key, directory, mover, planned, run } = await directoryMoveWithOperator(1405, 3, (s) => s.to, 'verifying');

    const outcome = await run();

    // Before: the flip refused ("the catalog names <target> as the owner ..., not the source"), and
    // so did every cancel ("deleting its copy would lose data"): the job was stuck for good, and
    // every write of the key, routed to the target, was refused by its 'incoming' fence.
    expect(directory.changed).toBe(true);
    expect(outcome).toBe('ended: done');
    const entry = await env.directory.entry(key);
    expect(entry).toMatchObject({ shardId: to, updatedBy: 'ops@example.com' });
    expect((await mover.get(planned.id)).mapVersionAfter).toBe(entry?.version);
    expect({ sourceFence: await unitFenceState(source, 'directory', key), targetFence: await unitFenceState(target, 'directory', key) }).toEqual({ sourceFence: 'moved', targetFence: 'open' });
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 0, onTarget: 3 });
    expect(from).not.toBe(to);
  }, 60_000);
});

describe("an operator's pin of an unpinned key to the move's own target, made before the move pins it", () => {
  it('stops the move with a message that does not send the operator to a cancel the move refuses', async () => {
    const { from, to, other, key, directory, planned, run } = await directoryMoveWithOperator(1406, 2, (s) => s.to, 'start');

    const outcome = await run();
    const cancel = await outcomeOf(env.mover({ readerGraceMs: 0 }).cancel(planned.id));

    // Before: "key ... is now pinned to <target>, not <source>; cancel this move", and the cancel refused.
    // The cancel is refused at once (the catalog names the target), nothing recorded.
    expect(directory.changed).toBe(true);
    // Nothing is copied at that step (the move stopped before it fenced the target): no copy to
    // delete. Nor does the move finish on the target (each run stops on the pin, as `outcome` says):
    // before, the refusal said "; the move finishes on <target>, where the catalog routes the unit".
    expect(cancel).toBe(
      `threw: move job #${planned.id} cannot be cancelled: the catalog names the target ${to} as the owner of directory ${key} (version 1); the move has copied nothing there yet, and a cancel would leave the key's rows, all on ${from}, out of its readers' sight; the key's owner must be decided by hand: pin it with select * from catalog.repin_by_hand('${key}', <the shard holding its rows>, <reason>) (DirectoryStore.repinByHand; docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned")`,
    );
    expect(outcome).toBe(
      `threw: key ${key} is now pinned to ${to}, this move's own target, by ops@example.com (version 1), before the move could publish it: writes of the key go to ${to} now, and this move can neither go on nor be cancelled (a cancel does not delete rows where the directory sends the key); the key's owner must be decided by hand: pin it with select * from catalog.repin_by_hand('${key}', <the shard holding its rows>, <reason>) (DirectoryStore.repinByHand; docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned")`,
    );
    expect((await env.mover().get(planned.id)).cancelRequested).toBe(false);
    expect(await env.directory.entry(key)).toMatchObject({ shardId: to, updatedBy: 'ops@example.com' });
    expect(other).not.toBe(to);
  }, 60_000);
});

/**
 * A directory move of a key of `slot` whose key an operator pins to `pinTo(sides)` from another
 * session at the move's `at` hook point (committed before the run goes on). `runs` counts, per
 * hook point, how often each was reached across every run of the returned mover.
 */
async function directoryMovePinnedAt(slot: number, documents: number, pinTo: (sides: Awaited<ReturnType<typeof shardsOf>>) => string, at: MoveHookPoint) {
  const sides = await shardsOf(slot);
  const [key] = keysInSlot(slot, 1) as [string];
  await seedUsers(sides.source, slot, [key], documents);
  const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
  const reached = new Map<string, number>();
  let pinned: DirectoryEntry | null = null;
  const hook = async (point: MoveHookPoint): Promise<void> => {
    reached.set(point, (reached.get(point) ?? 0) + 1);
    if (point === at && pinned === null) pinned = await operator.set(key, pinTo(sides), 'ops@example.com');
  };
  const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
  const planned = await mover.plan({ kind: 'directory', key, to: sides.to, createdBy: 'test' });
  return { ...sides, key, mover, planned, reached, pin: (): DirectoryEntry | null => pinned, run: () => outcomeOf(mover.run(planned.id)) };
}

describe("an operator's pin of the moving key to a third shard (neither the move's source nor its target)", () => {
  it('made under the fence: the move stops itself at its flip, failed, naming the pin, its copy on the target rolled back, and no later run fences again', async () => {
    const { other, source, target, key, mover, planned, reached, pin, run } = await directoryMovePinnedAt(1407, 3, (s) => s.other, 'verifying');

    const first = await run();
    const second = await run();

    // Before: every run threw "cannot publish its new owner" after fencing, the job stayed in
    // verifying, and the next run fenced the key's writes again (fenced twice over two runs).
    const job = await mover.get(planned.id);
    expect({ first, second, fenced: reached.get('fenced') }).toEqual({ first: 'ended: failed', second: 'ended: failed', fenced: 1 });
    expect(job.error).toBe(
      `key ${key} was pinned to ${other} (version ${pin()?.version}, by ops@example.com) while this move ran: that shard is neither the move's source ${job.from} nor its target ${job.to}, so the move cannot publish its target without overwriting the pin; it stopped and rolled back its copy on ${job.to}; the unit's rows are on ${job.from}`,
    );
    expect({ flipped: job.flipStarted, sourceFence: await unitFenceState(source, 'directory', key), targetFence: await unitFenceState(target, 'directory', key) }).toEqual({
      flipped: false,
      sourceFence: 'open',
      targetFence: 'moved',
    });
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 3, onTarget: 0 });
    expect(await env.directory.entry(key)).toMatchObject({ shardId: other, updatedBy: 'ops@example.com' });
  }, 60_000);

  it('made while the move catches up, before its fence: the move stops itself without fencing, failed, naming the pin', async () => {
    const { other, source, target, key, mover, planned, reached, pin, run } = await directoryMovePinnedAt(1408, 2, (s) => s.other, 'catching_up');

    const outcome = await run();

    const job = await mover.get(planned.id);
    expect({ outcome, fenced: reached.get('fenced') ?? 0, fencedAt: job.fencedAt }).toEqual({ outcome: 'ended: failed', fenced: 0, fencedAt: null });
    expect(job.error).toContain(`key ${key} was pinned to ${other} (version ${pin()?.version}, by ops@example.com) while this move ran`);
    expect({ sourceFence: await unitFenceState(source, 'directory', key), targetFence: await unitFenceState(target, 'directory', key) }).toEqual({ sourceFence: 'open', targetFence: 'moved' });
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 2, onTarget: 0 });
  }, 60_000);
});

describe("an operator's pin of the moving key to the move's own source, made while the move runs", () => {
  it('changes nothing of the move: the key is where the move started from, and the flip publishes the target over the pin', async () => {
    const { to, source, target, key, mover, planned, pin, run } = await directoryMovePinnedAt(1409, 2, (s) => s.from, 'verifying');

    const outcome = await run();

    const entry = await env.directory.entry(key);
    expect(outcome).toBe('ended: done');
    expect(entry).toMatchObject({ shardId: to, version: (pin()?.version ?? 0) + 1 });
    expect((await mover.get(planned.id)).mapVersionAfter).toBe(entry?.version);
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 0, onTarget: 2 });
  }, 60_000);
});

describe("the directory cache of the mover's own process across a directory move's flip", () => {
  it("does not keep the old owner that a lookup read while the flip's transaction was still open", async () => {
    const slot = 1410;
    const { from, to, source } = await shardsOf(slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 1);
    // The process's one directory, routing and moving alike; its clock stands still, so nothing it caches expires.
    const shared = new DirectoryStore(env.catalog, { ttlMs: 5_000, now: () => 0, shards: [...env.shards.keys()] });
    let duringFlip: string | null | undefined;
    const directory: MoverDirectory = {
      entry: (...args) => shared.entry(...args),
      all: (...args) => shared.all(...args),
      keysInSlot: (...args) => shared.keysInSlot(...args),
      invalidate: (...args) => shared.invalidate(...args),
      async set(...args) {
        const written = await shared.set(...args);
        // The flip's write is made, its transaction not yet committed: a request of this process routes the key now.
        if (args[1] === to) duringFlip = await shared.get(key);
        return written;
      },
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory, readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });

    const outcome = await outcomeOf(mover.run(planned.id));

    // Before: the lookup made inside the flip cached the source and the process routed the key
    // there for the cache's whole TTL after the flip, where the fence says moved.
    expect({ outcome, duringFlip }).toEqual({ outcome: 'ended: done', duringFlip: from });
    expect(await shared.get(key)).toBe(to);
  }, 60_000);
});

describe('a slot map published by someone else that gives a moving slot to a third shard', () => {
  it.each([
    ['while the move catches up, before its fence', 'catching_up', 0],
    ['under the fence, before the flip', 'verifying', 1],
  ] as const)('%s: the move fails naming the map, its copy rolled back, the slot whole on its source', async (_when, at, fences) => {
    const slot = at === 'verifying' ? 1411 : 1412;
    const { from, to, other, source, target } = await shardsOf(slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 2);
    let published = 0;
    const reached: string[] = [];
    const hook = async (point: MoveHookPoint): Promise<void> => {
      reached.push(point);
      // Past the catalog's guard (CAF08, sharding migration 013: refused while the move is
      // unfinished), as a superuser may: this is the move's own defence against such a map.
      if (point === at && published === 0) published = (await publishPastOwnerGuard(env.catalog, env.slotMaps, moveSlots(await env.slotMaps.current(), [slot], other), 'ops@example.com', 'by hand')).map.version;
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

    const outcome = await outcomeOf(mover.run(planned.id));

    // Before: the run threw "cannot publish its new owner" with the job left to fence again at its next run.
    const job = await mover.get(planned.id);
    expect({ outcome, fences: reached.filter((p) => p === 'fenced').length }).toEqual({ outcome: 'ended: failed', fences });
    expect(job.error).toBe(
      `slot ${slot} was given to ${other} (slot map version ${published}) while this move ran: that shard is neither the move's source ${from} nor its target ${to}, so the move cannot publish its target without overwriting the map; it stopped and rolled back its copy on ${to}; the unit's rows are on ${from}`,
    );
    expect({ onSource: await countSlot(source, slot), onTarget: await countSlot(target, slot), targetFence: await unitFenceState(target, 'slot', String(slot)) }).toEqual({
      onSource: { users: 2, documents: 4 },
      onTarget: { users: 0, documents: 0 },
      targetFence: 'moved',
    });
    expect((await env.slotMaps.current()).assignments[slot]).toBe(other);
  }, 60_000);
});

describe("an operator's deletion of the pin of a moving key whose slot's owner is neither side of the move", () => {
  it('stops the move without publishing its target over the hash route: the writes the key took by hash meanwhile stay where it routes', async () => {
    // The key was pinned to `other` before the move (its rows there), and its slot hashes to `from`:
    // the move runs from `other` to `to`, and a deleted pin sends the key's writes to `from`, a third shard.
    const slot = 1413;
    const { from: hashOwner, to, other } = await shardsOf(slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const source = env.shards.get(other) as pg.Pool;
    const target = env.shards.get(to) as pg.Pool;
    const byHash = env.shards.get(hashOwner) as pg.Pool;
    await seedUsers(source, slot, [key], 2);
    await env.directory.set(key, other, 'ops@example.com');
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    let deleted = false;
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point !== 'catching_up' || deleted) return;
      deleted = await operator.delete(key);
      // A writer routing the unpinned key by hash: its shard owns the slot and takes the write.
      await seedUsers(byHash, slot, [key], 1);
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect(planned.from).toBe(other);

    const outcome = await outcomeOf(mover.run(planned.id));

    // Before: the move took the missing entry for its source's, published `to` over it and ended
    // done: the key routed to `to`, and the document acknowledged on `from` was out of sight.
    const job = await mover.get(planned.id);
    expect({ deleted, outcome, flipped: job.flipStarted }).toEqual({ deleted: true, outcome: 'ended: failed', flipped: false });
    expect(job.error).toBe(
      `key ${key} was unpinned (it routes by hash to ${hashOwner}, its slot ${slot}'s owner) while this move ran: that shard is neither the move's source ${other} nor its target ${to}, so the move cannot publish its target without overwriting the hash route; it stopped and rolled back its copy on ${to}; the unit's rows are on ${other}`,
    );
    expect(await env.directory.entry(key)).toBeNull();
    expect({ byHash: (await documentsOf(byHash, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ byHash: 1, onTarget: 0 });
    expect(await unitFenceState(target, 'directory', key)).toBe('moved');
  }, 60_000);
});

describe("an operator's deletion of the pin of a moving key whose slot hashes to the move's target", () => {
  it('makes a rollback refuse to delete the target copy the key now routes to', async () => {
    // Pinned to `other` before the move (its rows there); its slot hashes to `from`, the move's target.
    const slot = 1414;
    const { hashOwner, key, target, operator } = await pinnedAwayFromHashOwner(slot);
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point !== 'catching_up') return;
      await operator.delete(key);
      throw new Error('the mover process died here');
    };
    const crashing = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await crashing.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    const crashed = await outcomeOf(crashing.run(planned.id));

    const cancel = await outcomeOf(env.mover({ readerGraceMs: 0 }).cancel(planned.id));

    // Before: the cancel deleted the copy and said `moved` to the source on the target, where the
    // unpinned key routes: its documents were out of sight, and its writes refused there for good.
    // The cancel is refused at once, nothing recorded, and the next run finishes the move on the target.
    expect(crashed).toMatch(/^threw: move job #\d+ stopped in catching_up: the mover process died here$/);
    expect(await env.directory.entry(key)).toBeNull();
    expect(cancel).toBe(
      `threw: move job #${planned.id} cannot be cancelled: key ${key} has no directory entry and routes by hash to the target ${hashOwner}, its slot ${slot}'s owner; deleting its copy would hide its rows; the move finishes on ${hashOwner}, where the catalog routes the unit`,
    );
    expect({ onTarget: (await documentsOf(target, [key])).size, targetFence: await unitFenceState(target, 'directory', key) }).toEqual({ onTarget: 3, targetFence: 'incoming' });
    expect(await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id))).toBe('ended: done');
    expect({ onTarget: (await documentsOf(target, [key])).size, targetFence: await unitFenceState(target, 'directory', key) }).toEqual({ onTarget: 3, targetFence: 'open' });
  }, 60_000);
});

/**
 * One key of `slot` with 3 documents, pinned by an operator to `other` (its rows there) though its
 * slot hashes to `hashOwner`: a directory move of it to `hashOwner` goes from `other` (`source`)
 * to `target`. `operator` is a directory store of the operator's own, without a cache.
 */
async function pinnedAwayFromHashOwner(slot: number): Promise<{ hashOwner: string; other: string; key: string; source: pg.Pool; target: pg.Pool; operator: DirectoryStore }> {
  const { from: hashOwner, other } = await shardsOf(slot);
  const [key] = keysInSlot(slot, 1) as [string];
  const source = env.shards.get(other) as pg.Pool;
  const target = env.shards.get(hashOwner) as pg.Pool;
  await seedUsers(source, slot, [key], 3);
  await env.directory.set(key, other, 'ops@example.com');
  return { hashOwner, other, key, source, target, operator: new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] }) };
}

/**
 * Resolves once a directory move's check of `key` on `target` is under way: its `incoming` row is
 * in (the lock-free check, waiting for older writers), or (the SHARE locks before it) a lock waits.
 */
async function checkUnderWay(target: pg.Pool, key: string): Promise<void> {
  for (;;) {
    const { rows } = await target.query<{ n: number }>(
      `select (select count(*)::int from pg_locks where not granted) + (select count(*)::int from write_fences where kind = 'directory' and unit_id = $1 and state = 'incoming') as n`,
      [key],
    );
    if ((rows[0]?.n ?? 0) > 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** One statement in a transaction of its own that gives up at once if it has to wait for a lock: `accepted`, or the SQLSTATE that refused it. */
async function writeWithoutWaiting(pool: pg.Pool, sql: string, params: unknown[]): Promise<string> {
  const client = await pool.connect();
  try {
    await client.query(`begin; set local lock_timeout = '100ms'`);
    await client.query(sql, params);
    await client.query('commit');
    return 'accepted';
  } catch (e) {
    await client.query('rollback');
    return `refused ${(e as { code?: string }).code ?? '?'}`;
  } finally {
    client.release();
  }
}

/**
 * `pool`, except that from the first count of a directory key's rows in `users` (checkedIncoming's
 * count) on, every query throws before it is sent, as the mover process dying there would leave
 * the shard: nothing after it (a put-back of the fence) reaches the shard either.
 */
function diesAtCount(pool: pg.Pool): { pool: pg.Pool } {
  let died = false;
  const dies = (sql: unknown): boolean => {
    if (!died && typeof sql === 'string' && /^select count\(\*\)::int as n from users where/.test(sql)) died = true;
    return died;
  };
  // A view of the pooled client, never the client itself changed: it goes back to the pool the
  // test and the next run share, where a client made to fail (pg-pool calls its query with a
  // callback, which a rejected promise never calls) hung their queries.
  const wrap = (client: pg.PoolClient): pg.PoolClient =>
    new Proxy(client, {
      get(target, prop): unknown {
        if (prop === 'query') return (...args: unknown[]) => (dies(args[0]) ? Promise.reject(new Error('the mover process died here')) : (target.query as (...a: unknown[]) => Promise<unknown>).apply(target, args));
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
  const proxy = new Proxy(pool, {
    get(target, prop, receiver): unknown {
      // A dead process opens no connection either: a connect after the death (the put-back's, a
      // rollback's) fails at once instead of waiting for a pool whose clients the dead run held.
      if (prop === 'connect') return async () => (died ? Promise.reject(new Error('the mover process died here')) : wrap(await target.connect()));
      if (prop === 'query') return (...args: unknown[]) => (dies(args[0]) ? Promise.reject(new Error('the mover process died here')) : (target.query as (...a: unknown[]) => Promise<unknown>).apply(target, args));
      return Reflect.get(target, prop, receiver) as unknown;
    },
  });
  return { pool: proxy };
}

/** A write of one document of `key` straight into a shard, as any writer routed there makes it: `accepted`, or the SQLSTATE that refused it. */
async function writeOf(pool: pg.Pool, slot: number, key: string): Promise<string> {
  return pool
    .query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'written after the cancel', '{"rev": 0}')`, [key, slot])
    .then(
      () => 'accepted',
      (e: { code?: string }) => `refused ${e.code ?? '?'}`,
    );
}

describe('a cancel whose rollback is refused because the catalog already routes the unit to the move\'s target', () => {
  it('is answered as refused on the job, cleared, and the move finishes on the target: writes of the key are accepted again', async () => {
    // Pinned to `other` before the move (its rows there); its slot hashes to the move's target.
    const slot = 1415;
    const { hashOwner, key, source, target, operator } = await pinnedAwayFromHashOwner(slot);
    let id = 0;
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point !== 'catching_up') return;
      // The scaling API's cancel, recorded for the moves worker while the key still routes to the
      // move's source; then the operator deletes the pin, and the mover dies.
      await env.mover().requestCancel(id);
      await operator.delete(key);
      throw new Error('the mover process died here');
    };
    const crashing = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await crashing.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    id = planned.id;
    await outcomeOf(crashing.run(planned.id));

    const runs: string[] = [];
    for (let i = 0; i < 3; i++) runs.push(await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id)));
    const job = await env.mover().get(planned.id);
    const write = await writeOf(target, slot, key);

    // Before: every run threw the rollback's refusal, the job stayed in catching_up with its cancel
    // request set, and the target's `incoming` fence refused every write of the key (CAF01) for good.
    expect(runs).toEqual(['ended: done', 'ended: done', 'ended: done']);
    expect({ state: job.state, cancelRequested: job.cancelRequested, write }).toEqual({ state: 'done', cancelRequested: false, write: 'accepted' });
    expect(job.error).toBe(
      `cancel refused: key ${key} has no directory entry and routes by hash to the target ${hashOwner}, its slot ${slot}'s owner; deleting its copy would hide its rows. The move goes on to finish on ${hashOwner}, where the catalog routes the unit`,
    );
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 0, onTarget: 4 });
    expect({ sourceFence: await unitFenceState(source, 'directory', key), targetFence: await unitFenceState(target, 'directory', key) }).toEqual({ sourceFence: 'moved', targetFence: 'open' });
  }, 60_000);

  it('keeps the refusal on the finished job when a later run, not the refusing one, finishes the move', async () => {
    const slot = 1417;
    const { hashOwner, key } = await pinnedAwayFromHashOwner(slot);
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    let id = 0;
    const crashAt = (at: MoveHookPoint, before?: () => Promise<unknown>) => async (point: MoveHookPoint): Promise<void> => {
      if (point !== at) return;
      await before?.();
      throw new Error(`the mover process died at ${at}`);
    };
    const withHook = (hook: (point: MoveHookPoint) => Promise<void>): Mover =>
      new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    // The cancel is recorded while the key still routes to the source; the pin is deleted; the mover dies.
    const first = withHook(crashAt('catching_up', async () => {
      await env.mover().requestCancel(id);
      await operator.delete(key);
    }));
    id = (await first.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' })).id;
    await outcomeOf(first.run(id));

    // The next run refuses the cancel and goes on, but dies before the move ends; a third finishes it.
    const refusing = await outcomeOf(withHook(crashAt('cutover')).run(id));
    const finishing = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(id));
    const job = await env.mover().get(id);

    expect({ refusing, finishing, state: job.state, cancelRequested: job.cancelRequested }).toEqual({
      refusing: `threw: move job #${id} stopped in cutover: the mover process died at cutover`,
      finishing: 'ended: done',
      state: 'done',
      cancelRequested: false,
    });
    // Before: the third run's transitions cleared the error, and the done job said nothing of the cancel.
    expect(job.cancelRefused).toBe(
      `cancel refused: key ${key} has no directory entry and routes by hash to the target ${hashOwner}, its slot ${slot}'s owner; deleting its copy would hide its rows. The move goes on to finish on ${hashOwner}, where the catalog routes the unit`,
    );
  }, 60_000);

  it('made under the fence, with an operator\'s pin of the key to the target: the flip answers the cancel, the rollback refuses it, and the same run publishes', async () => {
    const slot = 1416;
    const { to, source, target } = await shardsOf(slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 2);
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    let id = 0;
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point !== 'verifying') return;
      // Asked while the key still routes to the source (recorded), then the operator's pin.
      await env.mover().requestCancel(id);
      await operator.set(key, to, 'ops@example.com');
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    id = (await mover.plan({ kind: 'directory', key, to, createdBy: 'test' })).id;

    const outcome = await outcomeOf(mover.run(id));
    const again = await outcomeOf(mover.run(id));

    // Before: the run threw the refusal ("deleting its copy would lose data") and so did every
    // later one, the job stuck in verifying and the key's writes refused by the target's fence.
    const job = await mover.get(id);
    expect({ outcome, again, cancelRequested: job.cancelRequested, write: await writeOf(target, slot, key) }).toEqual({
      outcome: 'ended: done',
      again: 'ended: done',
      cancelRequested: false,
      write: 'accepted',
    });
    expect(job.error).toMatch(new RegExp(`^cancel refused: the catalog names the target ${to} as the owner of directory ${key} \\(version \\d+\\); deleting its copy would lose data\\. The move goes on to finish on ${to}`));
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 0, onTarget: 3 });
    expect(await env.directory.entry(key)).toMatchObject({ shardId: to, updatedBy: 'ops@example.com' });
  }, 60_000);
});

describe("a run that resumes, in its copy, the move of a key whose pin was deleted and whose slot hashes to the move's target", () => {
  it('does not pin the key back to its source: a cancel stays refused, and the move fences the source, catches up a stale writer\'s writes and publishes the target', async () => {
    // Pinned to `other` before the move (its rows there); its slot hashes to the move's target.
    const slot = 1418;
    const { hashOwner, key, source, target, operator } = await pinnedAwayFromHashOwner(slot);
    let id = 0;
    // The first run: a cancel recorded while the key still routes to the source, the pin deleted,
    // then the mover dies after its copy, the job still in `copying`.
    const dying = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'copied') return;
        await env.mover().requestCancel(id);
        await operator.delete(key);
        throw new Error('the mover process died here');
      },
    });
    id = (await dying.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' })).id;
    const died = await outcomeOf(dying.run(id));
    const [updated] = [...(await documentsOf(source, [key])).keys()] as [string];
    // The next run refuses the cancel and resumes the copy. At its cutover the operator asks for a
    // cancel again; then, once the catch-up before the fence is over (at the owner's read that
    // precedes the fence), a writer that still holds the old pin writes on the source, captured
    // there: a new document and an update. Only the catch-up under the fence can carry them over.
    let armed = false;
    let written = '';
    let cancelAgain = '';
    let entryAtCutover: DirectoryEntry | null | undefined;
    const directory = directoryWithOperator(
      key,
      () => armed,
      async () => {
        written = (await source.query<{ id: string }>(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'stale pin', '{"rev": 0}') returning id::text`, [key, slot])).rows[0]?.id ?? '';
        await source.query(`update documents set content = '{"rev": 7}' where id = $1`, [updated]);
      },
    );
    const resuming = new Mover({
      catalog: env.catalog,
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory,
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'cutover' || armed) return;
        entryAtCutover = await env.directory.entry(key);
        cancelAgain = await outcomeOf(env.mover().requestCancel(id));
        armed = true;
      },
    });
    const resumed = await outcomeOf(resuming.run(id));
    const job = await env.mover().get(id);
    const onTarget = await documentsOf(target, [key]);

    // Before: the resumed copy pinned the key back to the source, so the second cancel was
    // accepted and the move ended cancelled, its copy deleted, though a cancel had been refused.
    expect(died).toBe(`threw: move job #${id} stopped in copying: the mover process died here`);
    expect({ resumed, state: job.state, cancelRequested: job.cancelRequested, entryAtCutover }).toEqual({ resumed: 'ended: done', state: 'done', cancelRequested: false, entryAtCutover: null });
    expect({ written: directory.changed, fenced: job.fencedAt !== null }).toEqual({ written: true, fenced: true });
    expect(cancelAgain).toMatch(new RegExp(`^threw: move job #${id} cannot be cancelled: key ${key} has no directory entry and routes by hash to the target ${hashOwner}`));
    expect(job.cancelRefused).toMatch(/^cancel refused: key .* routes by hash to the target/);
    expect(await env.directory.entry(key)).toMatchObject({ shardId: hashOwner, version: job.mapVersionAfter });
    const { rows: copies } = await target.query<{ n: number }>('select count(*)::int as n from documents where id = $1', [written]);
    expect({ copiesOfTheWrite: copies[0]?.n, updatedRev: onTarget.get(updated), onTarget: onTarget.size, onSource: (await documentsOf(source, [key])).size }).toEqual({
      copiesOfTheWrite: 1,
      updatedRev: 7,
      onTarget: 4,
      onSource: 0,
    });
    expect({ sourceFence: await unitFenceState(source, 'directory', key), targetFence: await unitFenceState(target, 'directory', key) }).toEqual({ sourceFence: 'moved', targetFence: 'open' });
  }, 60_000);
});

describe("the first run of the move of a key whose pin was deleted before its copy began and whose slot hashes to the move's target", () => {
  /** A writer routed by hash to `pool` (no pin): the key's user row and a document, as the API writes them there. */
  async function writeByHash(pool: pg.Pool, slot: number, key: string): Promise<{ outcome: string; id: string }> {
    const client = await pool.connect();
    try {
      await client.query('begin');
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'written by hash') on conflict (id) do nothing`, [key, slot, `${key}@example.com`]);
      const { rows } = await client.query<{ id: string }>(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'written by hash', '{"rev": 1}') returning id::text`, [key, slot]);
      await client.query('commit');
      return { outcome: 'accepted', id: rows[0]?.id ?? '' };
    } catch (e) {
      await client.query('rollback');
      return { outcome: `refused ${(e as { code?: string }).code ?? '?'}`, id: '' };
    } finally {
      client.release();
    }
  }

  it("does not copy over the writes the target took by hash before its fence: the move stops, naming them, and they stay", async () => {
    const slot = 1419;
    const { hashOwner, key, source, target, operator } = await pinnedAwayFromHashOwner(slot);
    let written: { outcome: string; id: string } = { outcome: 'none', id: '' };
    // Between the job's start and its first prepareSource, the operator deletes the pin: the key
    // routes by hash to the target, which has no fence row for it yet and takes a writer's write.
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'copying' || written.outcome !== 'none') return;
        await operator.delete(key);
        written = await writeByHash(target, slot, key);
      },
    });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    const outcome = await outcomeOf(mover.run(planned.id));
    const again = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id));
    const job = await env.mover().get(planned.id);
    const { rows } = await target.query<{ n: number }>('select count(*)::int as n from documents where id = $1', [written.id]);

    // Before: the run left the key unpinned, fenced the target `incoming` over the write and its
    // copy deleted the target's rows of the key: the move ended done, the acknowledged write gone.
    expect(written.outcome).toBe('accepted');
    expect({ writeOnTarget: rows[0]?.n, state: job.state, flipped: job.flipStarted }).toEqual({ writeOnTarget: 1, state: 'copying', flipped: false });
    for (const run of [outcome, again]) expect(run).toMatch(new RegExp(`^threw: key ${key} has no directory entry and routes by hash to the target ${hashOwner}, which already holds rows of it`));
    expect(outcome).toContain(`the key's owner must be decided by hand (its rows are on ${planned.from} and ${hashOwner}): pin it with select * from catalog.repin_by_hand('${key}', <the shard holding its rows>, <reason>)`);
    // Nothing fenced on the target: the key's writes there go on being accepted.
    expect(await unitFenceState(target, 'directory', key)).toBeUndefined();
    expect(await env.directory.entry(key)).toBeNull();
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 3, onTarget: 1 });
  }, 60_000);

  it("waits for a writer in flight on the target, which saw no fence, before it counts: the writer's rows stop the move and stay", async () => {
    const slot = 1422;
    const { hashOwner, key, target, operator } = await pinnedAwayFromHashOwner(slot);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    // The pin deleted after the plan; a writer routed by hash, its transaction still open (it saw
    // no fence row on the target) when the run prepares the source.
    await operator.delete(key);
    const writer = await target.connect();
    let run: Promise<string> | undefined;
    let docId = '';
    try {
      await writer.query('begin');
      await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'written by hash') on conflict (id) do nothing`, [key, slot, `${key}@example.com`]);
      docId = (await writer.query<{ id: string }>(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'in flight', '{"rev": 1}') returning id::text`, [key, slot])).rows[0]?.id ?? '';
      run = outcomeOf(mover.run(planned.id));
      // The run waits for the writer's transaction (its fence in, or a lock): then it commits.
      await checkUnderWay(target, key);
      await writer.query('commit');
    } finally {
      writer.release();
    }
    const first = await run;
    const again = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id));
    const { rows } = await target.query<{ n: number }>('select count(*)::int as n from documents where id = $1', [docId]);

    // Without the wait: the count missed the uncommitted rows, the copy met the writer's user row
    // and failed, and the next run, the target `incoming` already, copied over them: gone.
    // The first run counts once the writer committed (its drain of the writers older than its
    // fence), finds its rows and puts the fence back: nothing stays fenced on the target.
    expect({ writeOnTarget: rows[0]?.n, onTargetFence: await unitFenceState(target, 'directory', key) }).toEqual({ writeOnTarget: 1, onTargetFence: undefined });
    const holds = `key ${key} has no directory entry and routes by hash to the target ${hashOwner}, which already holds rows of it \\(1 in users, 1 in documents\\)`;
    expect(first).toMatch(new RegExp(`^threw: ${holds}`));
    expect(again).toMatch(new RegExp(`^threw: ${holds}`));
  }, 60_000);

  it("does not copy over the writes the target took by hash when the pin is deleted just after the move read it, before the target's fence", async () => {
    const slot = 1423;
    const { hashOwner, other, key, source, target, operator } = await pinnedAwayFromHashOwner(slot);
    let written: { outcome: string; id: string } = { outcome: 'none', id: '' };
    // The move reads the key pinned to its source (nothing to decide); once that catalog
    // transaction has ended (the mover's cache forgets the key: `invalidate`), and before the
    // target's fence is in, the operator deletes the pin and a writer routed by hash writes there.
    let pending: Promise<void> = Promise.resolve();
    const directory: MoverDirectory = {
      all: (...args) => env.directory.all(...args),
      keysInSlot: (...args) => env.directory.keysInSlot(...args),
      set: (...args) => env.directory.set(...args),
      entry: (...args) => env.directory.entry(...args),
      invalidate(...args) {
        env.directory.invalidate(...args);
        if (args[0] !== key || written.outcome !== 'none') return;
        written = { outcome: 'pending', id: '' };
        pending = (async () => {
          await operator.delete(key);
          written = await writeByHash(target, slot, key);
        })();
      },
    };
    // A budget long enough for the deletion and the write, however slow the machine.
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory, readerGraceMs: 0, fenceBudgetMs: 30_000 });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    // Hold the source's write_fences until the deletion and the write are in: the run's fence of
    // the source, which comes after its catalog transaction and before the target's, waits.
    const holder = await source.connect();
    let outcome: Promise<string>;
    try {
      await holder.query('begin');
      await holder.query('lock table write_fences in share row exclusive mode');
      outcome = outcomeOf(mover.run(planned.id));
      for (;;) {
        if (written.outcome !== 'none' && written.outcome !== 'pending') break;
        await new Promise((r) => setTimeout(r, 10));
      }
      await pending;
    } finally {
      await holder.query('commit');
      holder.release();
    }
    const first = await outcome;
    const job = await env.mover().get(planned.id);
    const { rows } = await target.query<{ n: number }>('select count(*)::int as n from documents where id = $1', [written.id]);

    // Before: the run fenced the target `incoming` unchecked (it had read a pin), its copy deleted
    // the write, and its flip published the target over no entry: done, the acknowledged write gone.
    expect(written.outcome).toBe('accepted');
    expect({ writeOnTarget: rows[0]?.n, flipped: job.flipStarted, targetFence: await unitFenceState(target, 'directory', key) }).toEqual({ writeOnTarget: 1, flipped: false, targetFence: undefined });
    expect(first).toMatch(new RegExp(`^threw: key ${key} was pinned to the source ${other} when this move read it, but its slot ${slot} hashes to the target ${hashOwner}, which already holds rows of it \\(1 in users, 1 in documents\\)`));
    expect(first).toContain(`the key's owner must be decided by hand (its rows are on ${other} and ${hashOwner}): pin it with select * from catalog.repin_by_hand('${key}', <the shard holding its rows>, <reason>) (DirectoryStore.repinByHand; docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned")`);
  }, 60_000);

  it("holds no writer of another key on the target while it waits for the writers older than its fence", async () => {
    const slot = 1424;
    const { hashOwner, key, target, operator } = await pinnedAwayFromHashOwner(slot);
    // Another user, created on the target meanwhile. A fence budget longer than deadlock_timeout (the old lock's bound).
    const [otherKey] = keysInSlot(1430, 1) as [string];
    const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 10_000 });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    await operator.delete(key);
    // A writer of the key routed there by hash, its transaction open (it wrote before any fence):
    // the check waits for it to end.
    const held = await target.connect();
    let run: Promise<string> | undefined;
    let other = 'none';
    try {
      await held.query('begin');
      await held.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'in flight') on conflict (id) do nothing`, [key, slot, `${key}@example.com`]);
      run = outcomeOf(mover.run(planned.id));
      await checkUnderWay(target, key);
      // Meanwhile, another key's user created on the target, refused rather than queued if it has
      // to wait for a lock at all.
      other = await writeWithoutWaiting(target, `insert into users (id, slot, email, display_name) values ($1, $2, $3, 'other key')`, [otherKey, 1430, `${otherKey}@example.com`]);
      await held.query('rollback');
    } finally {
      held.release();
    }
    const outcome = await run;

    // Before: the check locked the target's tables in SHARE mode (waiting for the held writer up to
    // 0.8 x deadlock_timeout), and every writer of every key there queued behind the lock: 55P03.
    expect(other).toBe('accepted');
    // The held writer rolled back: the target holds nothing of the key, and the move goes on.
    expect(outcome).toBe('ended: done');
    expect(await env.directory.entry(key)).toMatchObject({ shardId: hashOwner });
  }, 60_000);

  it("never blocks a writer of the target that claims an Idempotency-Key, then inserts its document: it is accepted, and the move waits for it", async () => {
    const slot = 1425;
    const { hashOwner, key, target, operator } = await pinnedAwayFromHashOwner(slot);
    // Another user on the target, writing a keyed document as the API does: its key record first
    // (document_keys), then the document (documents). A fence budget longer than deadlock_timeout.
    const [writerKey] = keysInSlot(1431, 1) as [string];
    await seedUsers(target, 1431, [writerKey], 0);
    const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 10_000 });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    await operator.delete(key);
    const writer = await target.connect();
    let run: Promise<string> | undefined;
    let written = 'none';
    try {
      await writer.query('begin');
      await writer.query(`insert into document_keys (id, owner_id, slot, document_id, request_digest) values (gen_random_uuid(), $1, $2, gen_random_uuid(), pg_catalog.sha256('r'::bytea))`, [writerKey, 1431]);
      run = outcomeOf(mover.run(planned.id));
      await checkUnderWay(target, key);
      written = await writer.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'keyed', '{}')`, [writerKey, 1431]).then(
        async () => {
          await writer.query('commit');
          return 'accepted';
        },
        async (e: { code?: string }) => {
          await writer.query('rollback');
          return `refused ${e.code ?? '?'}`;
        },
      );
    } finally {
      writer.release();
    }
    const outcome = await run;

    // Before (the SHARE locks): the writer waited on the run's lock of documents while the run
    // waited on its document_keys; the run gave up first (below deadlock_timeout) and stopped.
    // Now nothing is locked: the writer goes on, the run waits for it to end, counts nothing of the
    // key, and the move finishes.
    expect(written).toBe('accepted');
    expect(outcome).toBe('ended: done');
  }, 60_000);

  it("checks again at the next run when a run stopped between its fence of the target and its count: the writes found stay, and the fence is put back", async () => {
    const slot = 1426;
    const { hashOwner, key, target, operator } = await pinnedAwayFromHashOwner(slot);
    // The first run's target pool: its first count of the key's rows there is where the process dies.
    const dying = diesAtCount(target);
    const shards = new Map(env.shards);
    shards.set(hashOwner, dying.pool);
    const mover = env.mover({ readerGraceMs: 0, shards });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    await operator.delete(key);
    // A writer routed by hash, in flight when the fence goes in: it commits during the drain.
    const writer = await target.connect();
    let first: Promise<string> | undefined;
    let docId = '';
    try {
      await writer.query('begin');
      await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'written by hash') on conflict (id) do nothing`, [key, slot, `${key}@example.com`]);
      docId = (await writer.query<{ id: string }>(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'in flight', '{"rev": 1}') returning id::text`, [key, slot])).rows[0]?.id ?? '';
      first = outcomeOf(mover.run(planned.id));
      await checkUnderWay(target, key);
      await writer.query('commit');
    } finally {
      writer.release();
    }
    const died = await first;
    const left = (await target.query<{ state: string; unchecked: boolean }>(`select state, check_undo is not null as unchecked from write_fences where kind = 'directory' and unit_id = $1`, [key])).rows[0];
    const again = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id));
    const job = await env.mover().get(planned.id);
    const { rows } = await target.query<{ n: number }>('select count(*)::int as n from documents where id = $1', [docId]);

    expect(died).toMatch(/^threw: the mover process died here; the target's fence of key .* not checked, could not be put back/);
    // The dead run's record: the target fenced, not checked (the key's writes there refused meanwhile).
    expect(left).toEqual({ state: 'incoming', unchecked: true });
    // A run that took the `incoming` row for checked would copy over the writer's rows: gone.
    expect(again).toMatch(new RegExp(`^threw: key ${key} has no directory entry and routes by hash to the target ${hashOwner}, which already holds rows of it \\(1 in users, 1 in documents\\)`));
    expect({ writeOnTarget: rows[0]?.n, targetFence: await unitFenceState(target, 'directory', key), flipped: job.flipStarted }).toEqual({ writeOnTarget: 1, targetFence: undefined, flipped: false });
  }, 60_000);

  it("puts the target's fence back, deleting nothing there, when a move cancelled after a run stopped between that fence and its count rolls back", async () => {
    const slot = 1427;
    // Pinned to the source, its slot hashing to the target: checked, and cancellable.
    const { hashOwner, other, key, source, target } = await pinnedAwayFromHashOwner(slot);
    const dying = diesAtCount(target);
    const shards = new Map(env.shards);
    shards.set(hashOwner, dying.pool);
    const planned = await env.mover().plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    // A writer that had not seen the pin (or saw it deleted and put back) wrote the key on the target.
    await seedUsers(target, slot, [key], 1);
    const died = await outcomeOf(env.mover({ readerGraceMs: 0, shards }).run(planned.id));
    const fenced = await unitFenceState(target, 'directory', key);
    const cancelled = await outcomeOf(env.mover({ readerGraceMs: 0 }).cancel(planned.id));

    expect(died).toMatch(/^threw: the mover process died here; the target's fence of key .* not checked, could not be put back/);
    expect(fenced).toBe('incoming');
    expect(cancelled).toBe('ended: cancelled');
    // Before: the rollback took the unchecked row for its copy's, deleted the key's rows on the
    // target and left its row `moved` there.
    expect({ onTarget: (await documentsOf(target, [key])).size, onSource: (await documentsOf(source, [key])).size, targetFence: await unitFenceState(target, 'directory', key) }).toEqual({
      onTarget: 1,
      onSource: 3,
      targetFence: undefined,
    });
    expect((await env.directory.entry(key))?.shardId).toBe(other);
  }, 60_000);

  it('goes on unpinned where the target holds nothing of the key, and publishes the target', async () => {
    const slot = 1420;
    const { hashOwner, key, source, target, operator } = await pinnedAwayFromHashOwner(slot);
    let deleted = false;
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'copying' || deleted) return;
        deleted = true;
        await operator.delete(key);
      },
    });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    const outcome = await outcomeOf(mover.run(planned.id));
    const job = await env.mover().get(planned.id);

    expect(outcome).toBe('ended: done');
    expect(await env.directory.entry(key)).toMatchObject({ shardId: hashOwner, version: job.mapVersionAfter });
    expect({ onSource: (await documentsOf(source, [key])).size, onTarget: (await documentsOf(target, [key])).size }).toEqual({ onSource: 0, onTarget: 3 });
  }, 60_000);
});

describe("a map published by hand giving away the slot of a moving key left unpinned, routed by hash to the move's target", () => {
  it('fails the move before its flip: the writes the key took by hash on the third shard stay in sight, and the copy on the target is rolled back', async () => {
    const slot = 1421;
    const { hashOwner, other, key, target, operator } = await pinnedAwayFromHashOwner(slot);
    const third = ['shard_a', 'shard_b', 'shard_c'].find((s) => s !== hashOwner && s !== other) as string;
    const byHash = env.shards.get(third) as pg.Pool;
    // The first run dies after its copy, its pin deleted; the next leaves the key unpinned.
    const dying = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'copied') return;
        await operator.delete(key);
        throw new Error('the mover process died here');
      },
    });
    const planned = await dying.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
    await outcomeOf(dying.run(planned.id));
    let write = '';
    const resuming = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'catching_up' || write !== '') return;
        // An operator gives the slot to a third shard; a writer routed by hash writes there.
        await env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], third), 'ops@example.com', 'by hand');
        await seedUsers(byHash, slot, [key], 1);
        write = 'accepted';
      },
    });
    const outcome = await outcomeOf(resuming.run(planned.id));
    const job = await env.mover().get(planned.id);

    expect({ write, outcome, flipped: job.flipStarted }).toEqual({ write: 'accepted', outcome: 'ended: failed', flipped: false });
    expect(job.error).toMatch(new RegExp(`^key ${key} was unpinned \\(it routes by hash to ${third}, its slot ${slot}'s owner\\) while this move ran`));
    expect(await env.directory.entry(key)).toBeNull();
    expect({ byHash: (await documentsOf(byHash, [key])).size, onTarget: (await documentsOf(target, [key])).size, targetFence: await unitFenceState(target, 'directory', key) }).toEqual({
      byHash: 1,
      onTarget: 0,
      targetFence: 'moved',
    });
  }, 60_000);
});
