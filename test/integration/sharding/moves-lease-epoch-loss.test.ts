/**
 * A catalog failover that loses a claim: run A's claim of a job (lease epoch n + 1) committed on the
 * catalog's primary and was lost with it (an asynchronous standby promoted, behind that commit).
 * Run A is still alive and has claimed the job's permits on the shards with epoch n + 1. The next
 * claim on the promoted catalog hands out epoch n + 1 again, to run B. The lease epoch alone cannot
 * tell the two runs apart, at the catalog or at the shards: both runs would go on as holders, A's
 * writes accepted. So every catalog check compares the claim's holder (unique per claim) too, and a
 * shard gives a job's permit only to a higher epoch than the one that claimed it before: of two
 * claims of one epoch only the first holds the shards, and the other run stops before it writes.
 * The job's next run claims a higher epoch and takes the job over from both.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

/** How a run ends: `ended: <state>` or `threw: <name>: <message>`. */
const outcome = (run: Promise<{ state: string }>): Promise<string> =>
  run.then(
    (j) => `ended: ${j.state}`,
    (e: Error) => `threw: ${e.name}: ${e.message}`,
  );

/** A promise with its resolve function. */
function gate(): { readonly wait: Promise<void>; readonly open: () => void } {
  let open = (): void => undefined;
  const wait = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait, open };
}

describe("a shard's move permit (shard migration 020)", () => {
  it('goes only to an epoch higher than the last claim: a second claim of the same epoch is refused, naming the lost claim', async () => {
    const shard = env.shards.get('shard_a');
    if (!shard) throw new Error('no shard_a');
    const job = 9_150_001;
    const claim = (epoch: number): Promise<string> =>
      shard.query('select move_permit_claim($1::bigint, $2::bigint)', [job, epoch]).then(
        () => 'claimed',
        (e: Error & { code?: string }) => `${e.code ?? '?'}: ${e.message}`,
      );

    const first = await claim(5);
    const again = await claim(5);
    const lower = await claim(4);
    const higher = await claim(6);

    expect({ first, higher }).toEqual({ first: 'claimed', higher: 'claimed' });
    expect(again).toBe(
      `CAF04: move job ${job} with lease epoch 5 may not write on this shard: another run of the job claimed it with this same epoch (the catalog lost that claim: a failover to a standby behind it?); the job's next run claims a higher epoch`,
    );
    expect(lower).toBe(`CAF04: move job ${job} with lease epoch 4 may not write on this shard: a later run of the job holds its permit`);
    expect((await shard.query('select lease_epoch::int as epoch from move_permits where job_id = $1', [job])).rows).toEqual([{ epoch: 6 }]);
  });
});

describe('a claim of a move job lost by a catalog failover', () => {
  it('does not let two runs hold the job with one epoch: the second claim stops before it writes, the lost claim\'s run stops at its next catalog write, and the next run finishes', async () => {
    const slot = 1501;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 4);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // Run A claims the job (epoch 1) and its permits, starts it, and stalls (a GC pause, a partition).
    const aStarted = gate();
    const aGoesOn = gate();
    const runA = outcome(
      env
        .mover({
          readerGraceMs: 0,
          holder: 'run A',
          hook: async (point) => {
            if (point !== 'copying') return;
            aStarted.open();
            await aGoesOn.wait;
          },
        })
        .run(planned.id),
    );
    await aStarted.wait;
    const claimedByA = (await env.catalog.query<{ epoch: string }>('select lease_epoch as epoch from catalog.move_jobs where id = $1', [planned.id])).rows[0]?.epoch;
    // The catalog fails over to a standby that never received A's claim, nor its start.
    await env.catalog.query(
      `update catalog.move_jobs set state = 'planned', lease_epoch = lease_epoch - 1, lease_holder = null, lease_expires_at = null, copying_at = null, error = null where id = $1`,
      [planned.id],
    );
    // Run B claims the job on the promoted catalog: the same epoch as A's.
    const bStarted = gate();
    const bGoesOn = gate();
    const runB = outcome(
      env
        .mover({
          readerGraceMs: 0,
          holder: 'run B',
          hook: async (point) => {
            if (point !== 'copying') return;
            bStarted.open();
            await bGoesOn.wait;
          },
        })
        .run(planned.id),
    );
    const bClaimed = await Promise.race([bStarted.wait.then(() => 'B holds the job and started it'), runB]);
    const claimedByB = (await env.catalog.query<{ epoch: string }>('select lease_epoch as epoch from catalog.move_jobs where id = $1', [planned.id])).rows[0]?.epoch;

    // A comes back (B, if it holds the job, still stalled at the same point).
    aGoesOn.open();
    const a = await runA;
    bGoesOn.open();
    const b = await runB;

    expect(claimedByB).toBe(claimedByA);
    // Before: B's claim of the shards' permits with A's epoch was accepted (B held the job and
    // started it), and A, its claim lost, ran the whole move to done while the catalog named B
    // as the job's holder: every write A made, at the catalog and on both shards, was accepted.
    expect(bClaimed).toMatch(/^threw: MoveLeaseLostError: .*refused this run's write \(lease epoch 1\): .*another run of the job claimed it with this same epoch/);
    expect(b).toBe(bClaimed);
    expect(a).toMatch(/^threw: MoveLeaseLostError: move job #\d+: this run's lease was taken over/);
    const stopped = await env.mover().get(planned.id);
    expect({ state: stopped.state, flipped: stopped.flipStarted, owner: await env.ownerOf(slot) }).toEqual({ state: 'planned', flipped: false, owner: stopped.from });

    // The next run claims epoch 2, which both shards accept over A's, and finishes the move.
    const next = await env.mover({ readerGraceMs: 0 }).run(planned.id);

    expect(next.state).toBe('done');
    expect(await env.ownerOf(slot)).toBe(to);
    expect({ source: await countSlot(source, slot), target: await countSlot(target, slot) }).toEqual({ source: { users: 0, documents: 0 }, target: { users: 3, documents: 12 } });
    await expect(env.shards.get(to)?.query('select lease_epoch::int as epoch from move_permits where job_id = $1', [planned.id])).resolves.toMatchObject({ rows: [{ epoch: 2 }] });
  }, 60_000);
});

/**
 * The env's catalog pool, except that once the first statement matching `pattern` has been
 * answered, `then` runs (from another session) before the caller gets the answer.
 */
function afterFirst(pool: pg.Pool, pattern: RegExp, then: () => Promise<unknown>): pg.Pool {
  let done = false;
  const wrap = (client: pg.PoolClient): pg.PoolClient =>
    new Proxy(client, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target) as unknown;
        if (prop !== 'query') return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        return async (...args: unknown[]) => {
          const answer = await (target.query as (...a: unknown[]) => Promise<unknown>)(...args);
          if (!done && typeof args[0] === 'string' && pattern.test(args[0])) {
            done = true;
            await then();
          }
          return answer;
        };
      },
    });
  return new Proxy(pool, {
    get(target, prop) {
      if (prop === 'connect') return async () => wrap(await target.connect());
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

describe("a run whose lease was ended under it (its holder cleared: the release of a second run given its epoch, or endLeasesOfDeadRuns)", () => {
  it('stops at its next check between copy pages, before it copies another page', async () => {
    const slot = 1502;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 6), 0);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const catalog = afterFirst(env.catalog, /copy_cursor = \$2/, () =>
      env.catalog.query('update catalog.move_jobs set lease_holder = null, lease_expires_at = null where id = $1', [planned.id]),
    );
    const mover = new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, copyBatchRows: 1 });

    const outcome = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.name}: ${e.message}`,
    );

    // Before: the check between pages read the lease as null (epoch equal, holder null), not as
    // lost, and the run copied one more page onto the target before its cursor's write was refused.
    expect(outcome).toMatch(/^threw: MoveLeaseLostError: move job #\d+: this run's lease was taken over/);
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 0 });
  }, 60_000);
});
