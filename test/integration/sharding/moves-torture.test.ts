import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MOVE_CRASH_POINTS } from '../../../functions/core/sharding/move-machine.js';
import { startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { tortureRun } from './fixtures/torture.js';

/**
 * The small torture run of `npm test` (bench:moves runs it at full size): fast-check picks which
 * crash points kill the mover and how many writers write meanwhile; a failure prints the seed
 * and the schedule (`fc.assert` reports both), and `TORTURE_SEED` replays it.
 */
describe('the move torture test', () => {
  let env: MoveEnv;
  beforeAll(async () => {
    env = await startMoveEnv();
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('loses, duplicates and strands nothing whichever steps the mover dies at', async () => {
    let slot = 900;
    const seed = process.env['TORTURE_SEED'] === undefined ? undefined : Number(process.env['TORTURE_SEED']);
    await fc.assert(
      fc.asyncProperty(fc.subarray([...MOVE_CRASH_POINTS], { minLength: 1, maxLength: 4 }), fc.integer({ min: 1, max: 3 }), async (crashes, writers) => {
        slot += 1;
        const report = await tortureRun(env, { slot, users: 12, docsPerUser: 8, writers, crashes });
        expect(report.violations).toEqual([]);
        expect(report.crashesDone).toEqual(crashes);
        expect(report.load.acknowledged).toBeGreaterThan(0);
      }),
      { numRuns: 3, ...(seed === undefined ? {} : { seed }) },
    );
  });
});
