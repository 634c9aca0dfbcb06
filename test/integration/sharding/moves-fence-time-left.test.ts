import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { countSlot, fenceState, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * A run takes the fence only with time left to give it back: its `until` not passed (a run stops
 * before a step that takes the fence, never while it holds it) and its `abandonAt` (when the run
 * must be over: the moves function's timeout comes soon after) farther than what a fenced step
 * and the release may take. The comparisons that come before the fence (inside the step) can
 * take long enough to cross either.
 */
let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

/** `pool` as it is, except that `before` runs when a lent client is first sent a statement matching `pattern`. */
function onQuery(pool: pg.Pool, pattern: RegExp, before: () => void): pg.Pool {
  const wrap = (client: pg.PoolClient): pg.PoolClient =>
    new Proxy(client, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target) as unknown;
        if (prop !== 'query') return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        return (...args: unknown[]) => {
          if (typeof args[0] === 'string' && pattern.test(args[0])) before();
          return (target.query as (...a: unknown[]) => unknown)(...args);
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

/** The comparison of the changed rows just before the fence (`PgMovePort.recompare`) reads the target's change log first. */
const RECOMPARE = /^select seq, table_name as t, row_id::text as id from move_changes/;

describe('the comparison before the fence takes the run close to its end', () => {
  it.each([
    { when: 'past its until (its abandonAt far)', slot: 1280, withUntil: true, jumpTo: (until: number) => until + 1000 },
    { when: 'a run with no until, 3 s before its abandonAt (less than the fence budget and its bounds)', slot: 1281, withUntil: false, jumpTo: (_until: number, abandonAt: number) => abandonAt - 3000 },
  ])('$when: leaves the job in the cutover without taking the fence, and the next run finishes it', async ({ slot, withUntil, jumpTo }) => {
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const start = Date.now();
    const until = start + 60_000;
    const abandonAt = start + 120_000;
    // The wall clock the run reads its times on jumps when the comparison starts.
    let offset = 0;
    const shards = new Map(env.shards);
    shards.set(
      to,
      onQuery(target, RECOMPARE, () => {
        offset = jumpTo(until, abandonAt) - Date.now();
      }),
    );
    let fenced = false;
    const mover = new Mover({
      catalog: env.catalog,
      shards,
      slotMaps: env.slotMaps,
      directory: env.directory,
      readerGraceMs: 100,
      fenceBudgetMs: 1000,
      wallClock: () => Date.now() + offset,
      hook(point) {
        if (point === 'fenced') fenced = true;
      },
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const stopped = await mover.run(planned.id, withUntil ? { until, abandonAt } : { abandonAt });

    // Before: the fence was taken, and the move flipped.
    expect({ state: stopped.state, fenced, source: await fenceState(source, slot), owner: await env.ownerOf(slot) }).toEqual({ state: 'cutover', fenced: false, source: 'open', owner: from });
    expect((await env.mover().run(planned.id)).state).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 3, documents: 6 });
  }, 60_000);
});
