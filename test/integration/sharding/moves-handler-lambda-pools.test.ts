/**
 * The moves worker's handler path with the Lambda pool settings (one catalog
 * connection, one per shard) on the steps the other handler tests do not take: a directory-key
 * move, a rollback after a cancellation, two invocations at once (EventBridge delivers twice).
 */
import '../../support/quiet-powertools.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keySlot } from '../../../functions/core/sharding/keys.js';
import { cancelledInCopy, countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { lambdaContext, tick, withMovesHandler } from './fixtures/moves-handler.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

describe('the moves handler with the Lambda pool settings', () => {
  it('moves a directory key to done', async () => {
    const [key] = keysInSlot(610, 1) as [string];
    const slot = keySlot(key);
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, [key], 3);
    const planned = await env.mover().plan({ kind: 'directory', key, to, createdBy: 'test' });
    await withMovesHandler(env, async (handler) => {
      const result = await handler(tick, lambdaContext);

      expect(result.failed).toEqual([]);
      expect(result.ran).toContainEqual({ id: planned.id, state: 'done' });
    });
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 3 });
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
  });

  it('rolls a cancelled move back from the middle of its copy', async () => {
    const slot = 611;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 4), 3);
    const jobId = await cancelledInCopy(env, slot, to);
    await withMovesHandler(env, async (handler) => {
      const result = await handler(tick, lambdaContext);

      expect(result.failed).toEqual([]);
      expect(result.ran).toContainEqual({ id: jobId, state: 'cancelled' });
    });
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(source, slot)).toEqual({ users: 4, documents: 12 });
  });

  it('runs a job once when two invocations arrive at once: the second stands aside', async () => {
    const slot = 612;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 4), 3);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await withMovesHandler(env, async (first) => {
      await withMovesHandler(env, async (second) => {
        const results = await Promise.all([first(tick, lambdaContext), second(tick, lambdaContext)]);

        expect(results.flatMap((r) => r.failed)).toEqual([]);
        expect(results.flatMap((r) => r.ran)).toEqual([{ id: planned.id, state: 'done' }]);
        expect(results.filter((r) => r.skipped !== undefined)).toHaveLength(1);
      });
    });
    expect(await countSlot(target, slot)).toEqual({ users: 4, documents: 12 });
  });
});
