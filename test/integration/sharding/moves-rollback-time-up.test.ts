/**
 * A run whose time is up (the moves function near its timeout) stops at its next
 * safe point in every step that deletes in batches, and the next run finishes what it began.
 */
import '../../support/quiet-powertools.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

describe('a run whose time is up during a rollback', () => {
  it('stops between delete batches of the copy, with no error, and the next run finishes the rollback', async () => {
    const slot = 620;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 20), 5);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // Copy the whole unit and stop at the catch-up (time up at the catch-up's first look).
    const copyUntil = Date.now() + 60_000;
    let copyLooks = 0;
    const copied = await env.mover({ wallClock: () => (++copyLooks >= 7 ? copyUntil : copyUntil - 1) }).run(planned.id, { until: copyUntil });
    expect(['copying', 'catching_up']).toContain(copied.state);
    const onTarget = await countSlot(target, slot);
    expect(onTarget.documents).toBeGreaterThan(0);
    await env.mover().requestCancel(planned.id);

    // The time is up once the rollback has deleted a batch (the run's first look at the clock is
    // before it; the second follows the target's document_keys, which this unit has none of).
    const until = Date.now() + 60_000;
    let looks = 0;
    const paused = await env.mover({ batchRows: 10, wallClock: () => (++looks >= 3 ? until : until - 1) }).run(planned.id, { until });

    expect(paused.state).not.toBe('cancelled');
    expect(paused.error).toBeNull();
    const left = await countSlot(target, slot);
    expect(left.users + left.documents).toBeGreaterThan(0);
    expect(left.users + left.documents).toBeLessThan(onTarget.users + onTarget.documents);

    const done = await env.mover().run(planned.id);
    expect(done.state).toBe('cancelled');
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(source, slot)).toEqual({ users: 20, documents: 100 });
  });
});
