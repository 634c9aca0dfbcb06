/**
 * Issue #15, the pin deleted later: a directory move's rollback re-pins its unpinned key to the
 * source in its decision (moves-directory-rollback-unpinned.test.ts), but an operator may delete
 * the pin after that decision, while the rollback deletes the target's copy (a large copy takes
 * several runs: it pauses between batches). The job is unfinished all along, yet it ended with the
 * key unpinned beside the `directory` fence rows the move left on both shards, and its slot's next
 * move took the key along: the target's `moved` row refused its writes there ("routing is not
 * converging"). The rollback's last transaction, which ends the job, now pins the key back to its
 * source as the decision does (docs/sharding-spec.md section 9, "A rollback pins an unpinned key
 * back to its source").
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { documentsOf, keysInSlot, type MoveEnv, seedUsers, sides, startMoveEnv, UnguardedOperatorDirectory, unitFenceState, documentWrittenFor } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

async function rollbackDecided(jobId: number): Promise<void> {
  for (;;) {
    const { rows } = await env.catalog.query<{ decided: boolean }>('select rollback_to is not null as decided from catalog.move_jobs where id = $1', [jobId]);
    if (rows[0]?.decided === true) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("a directory move's key whose pin an operator deletes after the rollback's decision, before the rollback ends", () => {
  it('is pinned back to its source when the job ends, so the next move of its slot leaves it where its rows are', async () => {
    const slot = 1413;
    const { from, to, source, target } = await sides(env, slot);
    const [key, other] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [key, other], 3);
    await env.directory.set(key, from, 'ops@example.com');
    // The move copies the key to the target, and its process dies as it catches up.
    const hook = (point: MoveHookPoint): void => {
      if (point === 'catching_up') throw new Error('the mover process died here');
    };
    const planned = await new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook }).plan({ kind: 'directory', key, to, createdBy: 'test' });
    await expect(new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook }).run(planned.id)).rejects.toThrow(/died here/);
    expect((await documentsOf(target, [key])).size).toBe(3);

    // The cancel's rollback decides (the key is pinned to the source: nothing to pin), then waits
    // to delete the copy, held by a lock on the target; the operator deletes the pin meanwhile.
    const holder = await target.connect();
    let rollback: Promise<string> | undefined;
    try {
      await holder.query('begin; lock table document_keys in access exclusive mode');
      await env.mover().requestCancel(planned.id);
      rollback = env
        .mover({ readerGraceMs: 0 })
        .run(planned.id)
        .then(
          (j) => j.state,
          (e: Error) => `failed: ${e.message}`,
        );
      await rollbackDecided(planned.id);
      // Its deletions go past sharding migration 010's guard (CAF06 for a key a directory move
      // wrote fence rows for): this test is of what the mover does with a pin deleted all the same.
      const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
      expect(await operator.delete(key)).toBe(true);
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    let state = await rollback;
    // A lock wait that failed the run (a timeout) leaves the rollback to the next run.
    if (state !== 'cancelled') state = (await env.mover({ readerGraceMs: 0 }).run(planned.id)).state;
    expect(state).toBe('cancelled');
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: 'open', target: 'moved' });
    env.directory.invalidate(key);
    // Before: no entry (the rows above decide for the key over its slot's on both shards).
    expect((await env.directory.entry(key))?.shardId ?? null).toBe(from);

    // The next move of the key's slot excludes it, and its writes are still taken where its rows are.
    const slotMove = env.mover({ readerGraceMs: 0 });
    const next = await slotMove.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect(next.excludedKeys).toEqual([key]);
    expect((await slotMove.run(next.id)).state).toBe('done');
    env.directory.invalidate(key);
    const written = await documentWrittenFor(env, key);
    expect(written).toBe(`written on ${from}`);
    expect({ home: (await documentsOf(source, [key])).size, away: (await documentsOf(target, [key])).size }).toEqual({ home: 4, away: 0 });
  }, 60_000);
});
