import { setTimeout as delay } from 'node:timers/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoveBusyError, type MoveHookPoint, type MoveJob } from '../../../functions/adapters/postgres/mover.js';
import { MOVE_CRASH_POINTS } from '../../../functions/core/sharding/move-machine.js';
import { documentsOf, keysInSlot, seedUsers, sides } from './fixtures/move-env.js';
import { expectMovedCleanly, startFaultEnv, type FaultEnv, type ShutdownMode } from './fixtures/restartable.js';
import { startWorkload } from './fixtures/workload.js';

type Db = 'source' | 'target' | 'catalog';
const DBS: readonly Db[] = (process.env.FAULT_DBS?.split(',') as Db[] | undefined) ?? ['source', 'target', 'catalog'];
const MODES: readonly ShutdownMode[] = (process.env.FAULT_MODES?.split(',') as ShutdownMode[] | undefined) ?? ['immediate', 'fast'];
const POINTS: readonly MoveHookPoint[] = (process.env.FAULT_POINTS?.split(',') as MoveHookPoint[] | undefined) ?? [...MOVE_CRASH_POINTS];
const WAIT = (process.env.FAULT_WAIT ?? 'back,down').split(',');

let env: FaultEnv;
beforeAll(async () => {
  env = await startFaultEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

function server(db: Db, from: string, to: string) {
  if (db === 'catalog') return env.servers.catalog;
  return env.servers[(db === 'source' ? from : to) as 'shard_a' | 'shard_b'];
}

/** Runs the job as the worker would, again and again, until it ends (or the deadline). */
async function resumeUntilEnded(id: number, deadlineMs = 60_000): Promise<{ job: MoveJob; errors: string[] }> {
  const errors: string[] = [];
  const until = Date.now() + deadlineMs;
  for (;;) {
    try {
      const job = await env.mover({ readerGraceMs: 0, leaseTtlMs: 1000, fenceRetryPauseMs: 100 }).run(id);
      if (['done', 'failed', 'cancelled'].includes(job.state)) return { job, errors };
    } catch (err) {
      if (!(err instanceof MoveBusyError)) errors.push((err as Error).message);
    }
    if (Date.now() > until) return { job: await env.mover().get(id), errors };
    await delay(300);
  }
}


const ALL = POINTS.flatMap((point) => DBS.flatMap((db) => MODES.flatMap((mode) => WAIT.map((wait) => ({ point, db, mode, wait })))));
// The whole matrix takes about 2.5 minutes: `npm test` runs a sample of it chosen by fast-check
// (its seed in the describe's name; FAULT_SEED replays a sample, FAULT_ALL=1 runs every case).
const SEED = process.env.FAULT_SEED === undefined ? Date.now() % 2 ** 31 : Number(process.env.FAULT_SEED);
const SAMPLE = process.env.FAULT_ALL === '1' ? ALL.length : Math.min(ALL.length, Number(process.env.FAULT_SAMPLE ?? 10));
const cases = (SAMPLE >= ALL.length ? ALL.map((c, i) => ({ ...c, i })) : (fc.sample(fc.shuffledSubarray(ALL.map((c, i) => ({ ...c, i })), { minLength: SAMPLE, maxLength: SAMPLE }), { numRuns: 1, seed: SEED })[0] ?? [])).sort((a, b) => a.i - b.i);

describe(`a move whose database restarts at a step (${cases.length} of ${ALL.length} cases, FAULT_SEED=${SEED})`, () => {
  it.each(cases.map((c) => ({ ...c, slot: 500 + c.i })))(
    '$db restarted ($mode, $wait) at $point: the move finishes and every acknowledged write is on the new owner once',
    async ({ point, db, mode, wait, slot }) => {
      const { from, to, source, target } = await sides(env, slot);
      const owners = keysInSlot(slot, 30);
      const spare = keysInSlot(slot, 20);
      await seedUsers(source, slot, owners, 5);
      const seeded = await documentsOf(source, owners);
      const { rows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1', [slot]);
      const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
      const srv = server(db, from, to);
      let restarted: Promise<void> | null = null;
      const load = startWorkload(env.writer, { owners, documents: seeded, ownerOf: new Map(rows.map((r) => [r.id, r.owner])), newUsers: spare, writers: 2, reader: env.reader });
      await delay(50);
      const mover = env.mover({
        readerGraceMs: 0,
        leaseTtlMs: 1000,
        fenceRetryPauseMs: 100,
        async hook(p) {
          if (p !== point || restarted) return;
          if (wait === 'back') {
            restarted = srv.restart(mode);
            await restarted;
          } else {
            // The database goes down under the run and comes back a little later.
            restarted = srv.down(mode).then(() => delay(400)).then(() => srv.up());
            await delay(20);
          }
        },
      });
      const first = await mover.run(planned.id).then(
        (j) => j.state,
        (err: Error) => `threw: ${err.message}`,
      );
      await restarted;
      const { job, errors } = await resumeUntilEnded(planned.id);
      await delay(100);
      const result = await load.stop();
      const ctx = `first run: ${first}; resume errors: ${errors.join(' | ')}; job error: ${job.error ?? ''}`;
      expect(job.state, ctx).toBe('done');
      await expectMovedCleanly(env, { slot, to, source, target, owners, result, job });
    },
    120_000,
  );
});
