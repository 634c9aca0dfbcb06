import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MOVE_CRASH_POINTS } from '../../../functions/core/sharding/move-machine.js';
import { startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import type { KeyedWrite } from './fixtures/keyed-writes.js';
import { tortureRun } from './fixtures/torture.js';

/**
 * The small torture run of `npm test` (bench:moves runs it at full size): fast-check picks which
 * crash points kill the mover, whether each kill is a SIGKILL of a mover process or a run in
 * this process stopped dead with its lease expired, and how many writers write meanwhile (every
 * third write read back at once with its read-your-writes token, one in five a keyed document
 * write through the documents API, checked with the key records after the move: see
 * `fixtures/keyed-writes.ts`); a failure prints the seed and
 * the schedule (`fc.assert` reports both), and `TORTURE_SEED` replays it. `MOVE_ENV_ISOLATION='repeatable
 * read'` (or `serializable`) runs it with every catalog and shard database at that default level.
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
      fc.asyncProperty(
        fc.subarray([...MOVE_CRASH_POINTS], { minLength: 1, maxLength: 4 }),
        // At most one SIGKILL per schedule here (a mover process costs seconds to start on a
        // loaded machine); bench:moves may SIGKILL at every crash.
        fc.option(fc.nat(3), { nil: undefined }),
        fc.integer({ min: 1, max: 3 }),
        async (crashes, killed, writers) => {
          slot += 1;
          const sigkill = crashes.map((_, i) => i === killed);
          const report = await tortureRun(env, { slot, users: 12, docsPerUser: 8, writers, crashes, sigkill });
          expect(report.violations).toEqual([]);
          expect(report.crashesDone).toEqual(crashes);
          expect(report.load.acknowledged).toBeGreaterThan(0);
          expect(report.load.keyed.counts.created).toBeGreaterThan(0);
        },
      ),
      { numRuns: 3, ...(seed === undefined ? {} : { seed }) },
    );
    // Three schedules, up to three SIGKILLed mover processes: about 40 s at load 18.
  }, 120_000);

  it('keeps every Idempotency-Key answer and record when the mover dies at each crash point in turn, keyed writes between the runs', async () => {
    let round = 0;
    let previous: KeyedWrite | undefined;
    const report = await tortureRun(env, {
      slot: 950,
      users: 6,
      docsPerUser: 4,
      writers: 1,
      crashes: [...MOVE_CRASH_POINTS],
      // While the mover is dead (a fence it held waits for the next run): a new key, the same
      // request again, another request with the key, the previous round's key again across the
      // run, its document deleted and the key sent once more.
      async betweenRuns(_point, keyed, owners) {
        round += 1;
        const key = await keyed.create(owners[round % owners.length] as string, round);
        await keyed.retry(key, round + 1);
        await keyed.retryOther(key, round);
        if (previous !== undefined) await keyed.retry(previous, round);
        if (key.answer !== undefined) {
          await keyed.deleteDocument(key, round);
          await keyed.retry(key, round + 2);
        }
        previous = key;
      },
    });

    expect(report.violations).toEqual([]);
    expect(report.crashesDone).toEqual([...MOVE_CRASH_POINTS]);
    expect(report.betweenKeyed.keys.size).toBe(MOVE_CRASH_POINTS.length);
    const { created, replayed, conflicts, misused, deletes } = report.betweenKeyed.counts;
    expect({ created: created > 0, replayed: replayed > 0, conflicts: conflicts > 0, misused: misused > 0, deletes: deletes > 0 }).toEqual({ created: true, replayed: true, conflicts: true, misused: true, deletes: true });
    expect(report.load.keyed.counts.created).toBeGreaterThan(0);
  }, 60_000);
});
