/**
 * Issue #15 (h96's review, owner-change-torture-review.test.ts seed 44): a key moved A -> B by a
 * directory move whose pin was then deleted past the catalog's guard (CAF06, a superuser's SQL)
 * routes by hash to its slot's owner A again, where the finished move's `directory` row is `moved`
 * (to B, where its rows are). A new directory move of the key planned then (from A, the hash
 * route, to B) was recorded; its first run pinned the key to A over no entry and stopped on A's
 * fence ("the catalog and the shard disagree"), the job left `copying` until cancelled, the key
 * now pinned to the shard that refuses its every write. The plan reads the source's fence row of
 * the key and refuses such a move (MoveConflictError, the API's 409) with nothing recorded and
 * nothing pinned, naming the shard the rows moved to and the way out (catalog.repin_by_hand).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoveConflictError } from '../../../functions/adapters/postgres/move-jobs.js';
import { deletePinPastGuard, documentWrittenFor, keysInSlot, type MoveEnv, seedUsers, sides, startMoveEnv, unitFenceState } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
});
afterAll(async () => {
  await env?.stop();
});

describe('a directory move of a key whose pin was deleted past the guard after a finished move', () => {
  it('is refused at plan time, nothing recorded or pinned, naming where the rows are and the way out', async () => {
    const slot = 1701;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 3);
    const mover = env.mover({ readerGraceMs: 0 });
    const first = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect((await mover.run(first.id)).state).toBe('done');
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    expect(await deletePinPastGuard(env.catalog, key)).toBe(true);
    env.directory.invalidate(key);
    // Refused already, by the superuser's SQL and not by any move: A's `moved` row sends the
    // writer to B, the catalog sends it back to A, until "routing is not converging".
    expect(await documentWrittenFor(env, key)).toMatch(/^failed: /);
    const jobsBefore = Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n);
    const refused = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' }).then(
      (j) => j,
      (e: unknown) => e,
    );
    // Before the fix: the plan recorded job; its run stopped, the job left `copying`.
    if (!(refused instanceof Error)) {
      const job = refused as { id: number };
      const ran = await mover.run(job.id).then(
        (j) => `ended: ${j.state}`,
        (e: Error) => `threw: ${e.message}`,
      );
      const after = await mover.get(job.id);
      const pin = await env.directory.entry(key);
      expect.fail(`plan recorded job #${job.id}; run ${ran}; job state ${after.state}; key pinned to ${pin?.shardId ?? 'nothing'}`);
    }
    expect(refused).toBeInstanceOf(MoveConflictError);
    const msg = (refused as Error).message;
    expect(msg).toContain(`${from}`);
    expect(msg).toContain(`moved to ${to}`);
    expect(msg).toContain('repin_by_hand');
    expect(Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n)).toBe(jobsBefore);
    expect(await env.directory.entry(key)).toBeNull();
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    expect(await unitFenceState(target, 'directory', key)).toBe('open');
    // The way out the refusal names: pinned by hand where its rows are, the key is written there,
    // and a move of it from there plans, runs and finishes.
    await env.directory.repinByHand(key, to, 'rows moved there, pin deleted past the guard');
    env.directory.invalidate(key);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
    const back = await mover.plan({ kind: 'directory', key, to: from, createdBy: 'test' });
    expect((await mover.run(back.id)).state).toBe('done');
    expect((await env.directory.entry(key))?.shardId).toBe(from);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
  });
});
