/**
 * The check of a directory move's target before its `incoming` fence (checkedIncoming) locks the
 * target's tables one statement each, each with a `lock_timeout` of what is left of a bound (the
 * fence budget, 0.8 x deadlock_timeout, the session's statement_timeout). With a bound of 1 ms,
 * what was left before the first statement was already below 1 ms (time passes between the
 * measure's start and the first look), and the check gave up before it locked anything: every
 * run stopped there as if writers had held the tables past the budget, with none in sight. With
 * less than 1 ms left a table is now taken only if free (NOWAIT, refused as 55P03 too).
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { outcomeOf, pinnedAway, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
});
afterAll(async () => {
  await env?.stop();
});

describe("a directory move's check of its target with a lock bound of 1 ms, and no writer on the target", () => {
  it('locks the tables, finds nothing of the key, and fences the target incoming', async () => {
    // Pinned away from its slot's owner and moved there: the target's tables are checked first.
    const { key, target: hashOwner } = await pinnedAway(env, 1602, 2);
    const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 1, fenceAttempts: 1, fenceRetryPauseMs: 0 });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });

    // The run may stop later (a fence of 1 ms), but not at the check of the target's tables.
    const outcome = await outcomeOf(mover.run(planned.id));
    expect(outcome).not.toMatch(/held its tables past the fence budget/);
    expect(await unitFenceState(env.shards.get(hashOwner) as pg.Pool, 'directory', key)).toBe('incoming');
  }, 60_000);

  it('with a writer holding a table, gives up at once as the budget spent, and fences nothing', async () => {
    const { key, target: hashOwner } = await pinnedAway(env, 1603, 2);
    const target = env.shards.get(hashOwner) as pg.Pool;
    const writer = await target.connect();
    try {
      // A writer's open transaction on the target (ROW EXCLUSIVE on documents, which SHARE waits for).
      await writer.query("begin; update documents set title = title where false");
      const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 1, fenceAttempts: 1, fenceRetryPauseMs: 0 });
      const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
      const outcome = await mover.run(planned.id).then(
        (j) => `ended: ${j.state}`,
        (e: Error) => `threw: ${e.message}`,
      );
      expect(outcome).toMatch(/writers on .* held its tables past the fence budget \(1 ms; 1 ms for this lock/);
      expect(await unitFenceState(target, 'directory', key)).toBeUndefined();
    } finally {
      await writer.query('rollback');
      writer.release();
    }
  }, 60_000);
});
