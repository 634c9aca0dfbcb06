/**
 * A run asked to stop (`Mover.run`'s `stop` signal: local mode shutting down) stops at its next
 * safe point and never takes a fence after it was asked: the process that asked waits a bounded
 * time only, and a fence still held when its servers stop holds the unit's writes until the
 * next start.
 */
import '../../support/quiet-powertools.js';
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

/** The catalog pool, whose clients call `onQuery` with each statement's text before sending it. */
function watchedCatalog(pool: pg.Pool, onQuery: (text: string) => void): pg.Pool {
  return new Proxy(pool, {
    get(target, prop, receiver): unknown {
      if (prop !== 'connect') return Reflect.get(target, prop, receiver) as unknown;
      return async (): Promise<pg.PoolClient> => {
        const client = await target.connect();
        return new Proxy(client, {
          get(c, p, r): unknown {
            if (p !== 'query') return Reflect.get(c, p, r) as unknown;
            return (...args: unknown[]): unknown => {
              const first = args[0];
              onQuery(typeof first === 'string' ? first : String((first as { text?: unknown } | null)?.text ?? ''));
              return (c.query as (...a: unknown[]) => unknown).apply(c, args);
            };
          },
        });
      };
    },
  });
}

describe('a run asked to stop', () => {
  it('does not take the fence when asked after the catch-up before it last looked: it pauses in the cutover, and the next run finishes the move', async () => {
    const slot = 733;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 20), 5);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const stop = new AbortController();
    let inCutover = false;
    // The stop arrives while the catch-up before the fence looks for a cancellation (its last
    // look at the stop): what follows is the comparison of the rows changed meanwhile, then the fence.
    const catalog = watchedCatalog(env.catalog, (text) => {
      if (inCutover && text.includes('cancel_requested or rollback_to is not null')) stop.abort();
    });
    const mover = new Mover({
      catalog,
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory: env.directory,
      hook: (point) => {
        if (point === 'cutover') inCutover = true;
      },
    });

    const paused = await mover.run(planned.id, { stop: stop.signal });

    expect(stop.signal.aborted).toBe(true);
    expect({ state: paused.state, fencedAt: paused.fencedAt, error: paused.error }).toEqual({ state: 'cutover', fencedAt: null, error: null });
    const fence = await source.query<{ state: string }>(`select state from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    expect(fence.rows[0]?.state).toBe('open');
    expect(await env.ownerOf(slot)).toBe(from);

    const done = await env.mover().run(planned.id);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'done', error: null });
    expect(await env.ownerOf(slot)).toBe(to);
  });

  it('asked during the rollback of a cancelled move, stops it between delete batches, recording no error, and the next run finishes it', async () => {
    const slot = 734;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 20), 5);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // The whole unit copied, then paused before the catch-up.
    const copied = await env.mover({ hook: (point) => (point === 'copied' ? Promise.reject(new Error('stopped after the copy by the test')) : undefined) }).run(planned.id).catch(() => env.mover().get(planned.id));
    expect(copied.state).toBe('copying');
    const onTarget = await countSlot(target, slot);
    expect(onTarget.users + onTarget.documents).toBe(120);
    await env.mover().requestCancel(planned.id);
    const stop = new AbortController();
    // The stop arrives once the rollback has deleted its first batch (and records that progress).
    const catalog = watchedCatalog(env.catalog, (text) => {
      if (text.includes('progressed_at = clock_timestamp()')) stop.abort();
    });
    const mover = new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, batchRows: 10 });

    const paused = await mover.run(planned.id, { stop: stop.signal });

    expect({ state: paused.state, rollbackTo: paused.rollbackTo, error: paused.error }).toEqual({ state: 'copying', rollbackTo: 'cancelled', error: copied.error });
    const left = await countSlot(target, slot);
    expect(left.users + left.documents).toBeGreaterThan(0);
    expect(left.users + left.documents).toBeLessThan(120);
    const done = await env.mover().run(planned.id);
    expect(done.state).toBe('cancelled');
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(source, slot)).toEqual({ users: 20, documents: 100 });
  });
});
