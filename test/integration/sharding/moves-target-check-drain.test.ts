/**
 * The check of a directory move's target (checkedIncoming) commits the target's `incoming` row,
 * waits for the writers there older than it (the drain the source has, bounded by drainTimeoutMs,
 * not by the fence budget: it holds no writer), then counts the key's rows. It replaced a SHARE
 * lock of the target's tables bounded by the fence budget and 0.8 x deadlock_timeout, whose own
 * tests (a bound of 1 ms: `moves-target-check-small-bound.test.ts`, gone with it) no longer apply:
 *
 * - with a fence budget of 1 ms and no writer, the check finds nothing and the target is fenced
 *   `incoming`, checked (the 1 ms bound once gave up before its first lock);
 * - with a writer open on the target past the drain's bound, the run stops naming the writers on
 *   the target older than its fence, the row put back as it was (here: none; left `incoming` and
 *   not checked, it refused the key's writes there until a later run checked); once the writer
 *   has ended, the next run fences, checks and goes on.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { outcomeOf, pinnedAway, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
});
afterAll(async () => {
  await env?.stop();
});

/** The target's fence row of `key`: its state, and whether its check is pending (`check_undo`). */
async function fenceOf(pool: pg.Pool, key: string): Promise<{ state: string; unchecked: boolean } | undefined> {
  const { rows } = await pool.query<{ state: string; unchecked: boolean }>(`select state, check_undo is not null as unchecked from write_fences where kind = 'directory' and unit_id = $1`, [key]);
  return rows[0];
}

describe("a directory move's check of its target", () => {
  it('with a fence budget of 1 ms and no writer on the target, finds nothing of the key and fences the target incoming, checked', async () => {
    // Pinned away from its slot's owner and moved there: the target is checked.
    const { key, target: hashOwner } = await pinnedAway(env, 1602, 2);
    const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 1, fenceAttempts: 1, fenceRetryPauseMs: 0 });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });

    // The run may stop later (a fence of 1 ms), but not at the check of the target.
    const outcome = await outcomeOf(mover.run(planned.id));
    expect(outcome).not.toMatch(/on shard_\w+ still open after|rows of it/);
    expect(await fenceOf(env.shards.get(hashOwner) as pg.Pool, key)).toEqual({ state: 'incoming', unchecked: false });
  }, 60_000);

  it('with a writer open on the target past the drain bound, stops naming it, the fence put back; the next run checks and goes on', async () => {
    const { key, target: hashOwner } = await pinnedAway(env, 1603, 2);
    const target = env.shards.get(hashOwner) as pg.Pool;
    const writer = await target.connect();
    let first: string;
    try {
      // A writer's open transaction on the target (ROW EXCLUSIVE on documents), older than the fence.
      await writer.query('begin; update documents set title = title where false');
      const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 1, drainTimeoutMs: 200 });
      const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
      first = await outcomeOf(mover.run(planned.id));
      expect(first).toMatch(new RegExp(`1 writer\\(s\\) older than the target's incoming fence of key ${key} on ${hashOwner} still open after 200 ms; the target is checked for rows of the key once they have ended .*; its fence of key ${key} on ${hashOwner} was put back meanwhile`));
      expect(await fenceOf(target, key)).toBeUndefined();
      await writer.query('rollback');
      const again = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id));
      expect(again).toBe('ended: done');
      expect((await env.directory.entry(key))?.shardId).toBe(hashOwner);
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
    }
  }, 60_000);
});
