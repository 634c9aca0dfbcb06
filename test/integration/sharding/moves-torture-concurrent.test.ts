import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MOVE_CRASH_POINTS } from '../../../functions/core/sharding/move-machine.js';
import { startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { concurrentTortureRun, type ConcurrentShape, type DirectoryFaults, type MoveFaults } from './fixtures/torture-concurrent.js';

/**
 * The torture test for several moves at once (`fixtures/torture-concurrent.ts`): fast-check
 * picks the shape (two slots from one shard to the other, one slot each way, or two one way and
 * one the other), whether a directory-key move of a user of the first slot runs before that
 * slot's move (and whether its pin is deleted mid-move: see `DirectoryFaults`), and, per move, the crash points its mover dies at and when (if ever) it is
 * cancelled, and whether every other writer is another process holding the map of the start;
 * writers meanwhile write and hand documents between the moving units' owners. The seed is
 * printed at the start, and a failure prints it with the schedule; `TORTURE_SEED` replays it
 * (the schedule; the interleaving is the machine's). Five schedules take about 5-10 s.
 *
 * By hand, at a larger size (20 users of 50 documents per slot, 6 writers; about 5-7 s a schedule):
 * `TORTURE_CONCURRENT_SIZE=big TORTURE_CONCURRENT_RUNS=40 [TORTURE_CONCURRENT_CRASHES=7] npx vitest run <this file>`.
 * `TORTURE_STRICT=1` also fails on what costs availability only (see `ConcurrentSchedule.strict`:
 * a handed-over document's insert refused, a move's run stopped on another move's copies; it
 * failed on every schedule before the stale-copy waits and clearing, and still fails now and then
 * at the larger size), and `TORTURE_SABOTAGE=1` tests the checks themselves (every schedule must
 * fail).
 */
const big = process.env['TORTURE_CONCURRENT_SIZE'] === 'big';
const size = big ? { users: 20, docsPerUser: 50, writers: 6 } : { users: 5, docsPerUser: 8, writers: 3 };
const numRuns = Number(process.env['TORTURE_CONCURRENT_RUNS'] ?? 5);
/** Crash points per move at most (`TORTURE_CONCURRENT_CRASHES`). */
const maxCrashes = Number(process.env['TORTURE_CONCURRENT_CRASHES'] ?? (big ? 4 : 3));
/** `TORTURE_STRICT=1`: write refusals and runs stopped on another move's copies fail the property too (see `ConcurrentSchedule.strict`). */
const strict = process.env['TORTURE_STRICT'] === '1';

const faults = (maxCrashes: number): fc.Arbitrary<MoveFaults> =>
  fc.record({
    crashes: fc.subarray([...MOVE_CRASH_POINTS], { minLength: 0, maxLength: maxCrashes }),
    // One move in four is cancelled, at some time in its first moments (most small moves take less).
    cancelAfterMs: fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: big ? 1500 : 300 }) }),
  });

/**
 * `TORTURE_PINNED_AWAY=1`: directory-key moves may also be pinned away, cancelled and unpinned
 * (see `DirectoryFaults.pinnedAway`). Off by default for time only: the default run took 45.4 s
 * on average with it against 31.2 s without (5 seeds each, 2-core machine, 2026-12-06). It once
 * failed at the big size (a refused cancel ended cancelled: a run resumed in 'copying' pinned the
 * unpinned key back to its source); that run now leaves the key routed by hash to the target
 * (`moves-directory-cas.test.ts`), and the replay passes. The operator of this variant deletes
 * the pin only once the target fences the key `incoming` (see `DirectoryFaults.pinnedAway`), so
 * "unpinned at N ms" means at N ms or later. Each run's time ends its line.
 */
const pinnedAway = process.env['TORTURE_PINNED_AWAY'] === '1';
// The directory-key move: half the time its key is pinned to the source first and the pin deleted
// at some moment of the move (the flip then takes the hash route's path, see DirectoryFaults),
// and half of those with the key pinned away from its slot's owner and the move cancelled just
// before the unpin (a rollback after it must refuse the cancel).
const directoryFaults: fc.Arbitrary<DirectoryFaults> = fc
  .tuple(faults(2), fc.option(fc.integer({ min: 0, max: big ? 1500 : 300 }), { nil: undefined }), pinnedAway ? fc.boolean() : fc.constant(false))
  .map(([f, unpinAfterMs, pinnedAway]) => ({ ...f, unpinAfterMs, pinnedAway }));

describe('the concurrent move torture test', () => {
  let env: MoveEnv;
  beforeAll(async () => {
    env = await startMoveEnv();
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('loses, duplicates and strands nothing when several moves run, die and are cancelled at once', async () => {
    let firstSlot = 100;
    let run = 0;
    // The seed is chosen here and printed, so that a schedule that only left a note (a write
    // refused, a move's run failed) can be replayed too; fc.assert prints it again on a failure.
    const seed = process.env['TORTURE_SEED'] === undefined ? (Date.now() ^ (Math.random() * 0x7fffffff)) | 0 : Number(process.env['TORTURE_SEED']);
    console.log(`concurrent move torture: seed ${seed} (TORTURE_SEED=${seed} replays), ${numRuns} runs, ${big ? 'big' : 'small'} size`);
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<ConcurrentShape>('same', 'opposite', 'three'),
        fc.array(faults(maxCrashes), { minLength: 3, maxLength: 3 }),
        fc.option(directoryFaults, { nil: undefined }),
        fc.nat(1_000_000),
        fc.boolean(),
        // Now and then a fence budget so small that cutovers time out and give the fence back.
        fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.integer({ min: 5, max: 200 }) }),
        async (shape, moves, directory, writerSeed, staleWriters, fenceBudgetMs) => {
          firstSlot += 37;
          const startedAt = Date.now();
          const report = await concurrentTortureRun(env, { firstSlot, shape, moves: moves.slice(0, shape === 'three' ? 3 : 2), directory, ...size, seed: writerSeed, strict, staleWriters, fenceBudgetMs, sabotage: process.env['TORTURE_SABOTAGE'] === '1' });
          const summary = `[run ${++run}] ${shape}${directory ? ` +directory${directory.unpinAfterMs === undefined ? '' : ` ${directory.pinnedAway === true ? 'pinned away, cancelled and ' : ''}unpinned at ${directory.unpinAfterMs} ms${report.unpinned ? '' : ' (too late)'}`}` : ''}${staleWriters ? ' +stale writers' : ''}${fenceBudgetMs === undefined ? '' : ` +fence budget ${fenceBudgetMs} ms`}: jobs ${report.jobs.map((j) => `#${j.id} ${j.kind} ${j.unitId.slice(0, 8)} ${j.from}->${j.to} ${j.state}`).join(', ')}; ${report.crashesDone} crashes, ${report.cancelsAccepted} cancels (${report.cancelsRefused} refused), ${report.acknowledged} acks, handovers ${report.handovers.inPlace} in place / ${report.handovers.crossShard} across, ${report.tokenReads} token reads, keyed ${JSON.stringify(report.keyed)}; ${((Date.now() - startedAt) / 1000).toFixed(1)} s`;
          console.log(summary);
          for (const [f, n] of report.writeFailures) console.log(`  write failure x${n}: ${f}`);
          for (const e of new Set(report.moverErrors.map((m) => m.slice(0, 240)))) console.log(`  mover error: ${e}`);
          for (const n of report.notes.slice(0, 10)) console.log(`  note: ${n}`);
          for (const v of report.violations.slice(0, 30)) console.log(`  VIOLATION: ${v}`);
          expect(report.violations).toEqual([]);
          expect(report.acknowledged).toBeGreaterThan(0);
          expect(report.keyed.created).toBeGreaterThan(0);
        },
      ),
      { numRuns, seed },
    );
  }, big ? 3_600_000 : 150_000);
});
