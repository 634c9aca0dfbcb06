/**
 * A rollback paused (time up) more than once, a cancel requested while it is paused, each part
 * run by another mover (another worker), and the state it leaves: nothing of the unit on the
 * target, the target's fence `moved` to the source, the source's open, no capture left.
 */
import '../../support/quiet-powertools.js';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

async function fence(pool: pg.Pool, slot: number): Promise<string> {
  const { rows } = await pool.query<{ state: string; moved_to: string | null }>(`select state, moved_to from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
  return rows[0] ? `${rows[0].state}${rows[0].moved_to ? ` to ${rows[0].moved_to}` : ''}` : 'none';
}
async function captures(pool: pg.Pool, job: number): Promise<number> {
  const { rows } = await pool.query<{ n: number }>('select (select count(*) from move_captures where job_id = $1)::int + (select count(*) from move_changes where job_id = $1)::int as n', [job]);
  return rows[0]?.n ?? -1;
}

describe('a rollback paused twice, run by three workers', () => {
  it('ends cancelled, with the target empty of the unit and fenced off, the source open', async () => {
    const slot = 621;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 20), 5);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const copyUntil = Date.now() + 60_000;
    let copyLooks = 0;
    await env.mover({ wallClock: () => (++copyLooks >= 7 ? copyUntil : copyUntil - 1) }).run(planned.id, { until: copyUntil });
    // A writer changes the unit on the source meanwhile.
    await source.query("update documents set title = 'changed' where slot = $1", [slot]);
    await env.mover().requestCancel(planned.id);
    const pauseAfter = (n: number) => {
      const until = Date.now() + 60_000;
      let looks = 0;
      return env.mover({ batchRows: 7, wallClock: () => (++looks >= n ? until : until - 1) }).run(planned.id, { until });
    };
    const first = await pauseAfter(2);
    const afterFirst = await countSlot(target, slot);
    await env.mover().requestCancel(planned.id);
    const second = await pauseAfter(3);
    const afterSecond = await countSlot(target, slot);
    const done = await env.mover().run(planned.id);

    expect({ first: first.state === 'cancelled', second: second.state === 'cancelled', progressed: afterSecond.users + afterSecond.documents < afterFirst.users + afterFirst.documents }).toEqual({
      first: false,
      second: false,
      progressed: true,
    });
    expect({
      state: done.state,
      onTarget: await countSlot(target, slot),
      onSource: await countSlot(source, slot),
      targetFence: await fence(target, slot),
      sourceFence: await fence(source, slot),
      captures: (await captures(source, planned.id)) + (await captures(target, planned.id)),
    }).toEqual({
      state: 'cancelled',
      onTarget: { users: 0, documents: 0 },
      onSource: { users: 20, documents: 100 },
      targetFence: `moved to ${from}`,
      sourceFence: 'open',
      captures: 0,
    });
  }, 60_000);
});
