/**
 * A directory move publishes its key's new owner by compare-and-set against the entry it read: an
 * operator's change of the entry (DirectoryStore.set, or SQL, from another session) that commits
 * between the move's read and its write is never overwritten. The flip (and the republication of a
 * lost flip) reads the entry again and answers as it does to a change it saw: it names the change
 * and publishes nothing; the fence is given back and the unit stays whole on its source.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryStore, DirectoryVersionConflictError } from '../../../functions/adapters/postgres/directory-store.js';
import type { MoverDirectory } from '../../../functions/adapters/postgres/move-port.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { documentsOf, keysInSlot, seedUsers, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

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

/** How a run or a cancel ended, as text: `ended: <state>` or `threw: <message>`. */
function outcomeOf(job: Promise<{ state: string }>): Promise<string> {
  return job.then(
    (j) => `ended: ${j.state}`,
    (e: Error) => `threw: ${e.message}`,
  );
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
  const operator = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
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
  it('is kept: the flip publishes nothing and names the change, and a cancel leaves the unit whole on its source', async () => {
    const { from, other, source, target, key, directory, mover, planned, run } = await directoryMoveWithOperator(1401, 4, (s) => s.other, 'verifying');

    const outcome = await run();

    // Before: the flip overwrote the operator's pin with the target and the move ended done.
    expect(directory.changed).toBe(true);
    expect(outcome).toMatch(new RegExp(`^threw: move job #${planned.id} cannot publish its new owner: the catalog names ${other} as the owner of directory ${key}`));
    expect(await env.directory.entry(key)).toMatchObject({ shardId: other, updatedBy: 'ops@example.com' });
    const stopped = await mover.get(planned.id);
    expect({ flipped: stopped.flipStarted, sourceFence: await unitFenceState(source, 'directory', key), targetFence: await unitFenceState(target, 'directory', key) }).toEqual({
      flipped: false,
      sourceFence: 'open',
      targetFence: 'incoming',
    });

    expect((await env.mover({ readerGraceMs: 0 }).cancel(planned.id)).state).toBe('cancelled');
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
    await env.catalog.query('update catalog.shard_directory set shard_id = $2, version = $3 where key = $1', [key, from, done.mapVersionBefore]);
    await env.catalog.query(
      `update catalog.move_jobs set state = 'verifying', flip_started_at = null, map_version_after = null, unfenced_at = null, cleaning_up_at = null,
              finished_at = null, rows_deleted = 0, lease_holder = null, lease_expires_at = null where id = $1`,
      [moved.id],
    );
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: 'moved', target: 'open' });
    const operator = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
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
    expect(await env.directory.entry(key)).toMatchObject({ shardId: other, updatedBy: 'ops@example.com' });
    expect((await mover.get(moved.id)).flipStarted).toBe(false);
  }, 60_000);
});

describe("an operator's pin made between a directory move's read of its unpinned key and the move's own pin", () => {
  it('is kept: the move stops before it fences anything, naming the shard the key is pinned to', async () => {
    const { other, source, target, key, directory, mover, planned, run } = await directoryMoveWithOperator(1404, 2, (s) => s.other, 'start');
    expect(await env.directory.entry(key)).toBeNull();

    const outcome = await run();

    // Before: the move pinned the key back to its source over the operator's pin, then moved it.
    expect(directory.changed).toBe(true);
    expect(outcome).toBe(`threw: key ${key} is now pinned to ${other}, not ${(await mover.get(planned.id)).from}; cancel this move`);
    expect(await env.directory.entry(key)).toMatchObject({ shardId: other, updatedBy: 'ops@example.com' });
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: undefined, target: undefined });
  }, 60_000);
});

describe('DirectoryStore.set with an expected entry', () => {
  it('writes only over the entry it expects (shard and version), or only where there is none, and names what it found otherwise', async () => {
    const store = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
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
    const { to, other, key, directory, planned, run } = await directoryMoveWithOperator(1406, 2, (s) => s.to, 'start');

    const outcome = await run();
    const cancel = await outcomeOf(env.mover({ readerGraceMs: 0 }).cancel(planned.id));

    // Before: "key ... is now pinned to <target>, not <source>; cancel this move", and the cancel refused.
    expect(directory.changed).toBe(true);
    expect(cancel).toMatch(new RegExp(`^threw: the catalog names the target ${to} as the owner of directory ${key} .*deleting its copy would lose data`));
    expect(outcome).toBe(
      `threw: key ${key} is now pinned to ${to}, this move's own target, by ops@example.com (version 1), before the move could publish it: writes of the key go to ${to} now, and this move can neither go on nor be cancelled (a cancel does not delete rows where the directory sends the key); the key's owner must be decided by hand`,
    );
    expect(await env.directory.entry(key)).toMatchObject({ shardId: to, updatedBy: 'ops@example.com' });
    expect(other).not.toBe(to);
  }, 60_000);
});
