/**
 * Issue #15's review of 90e86cb: an owner change by hand counts the unit's rows with none of its
 * catalog write's locks held, then makes the write again. A pin's change by another session
 * committed meanwhile (the count may wait on a shard for as long as the shard makes it) is refused
 * by a map's version and a pin's compare-and-set, but an unconditional `set`, a `delete` and
 * `repinByHand` have no such check: they overwrote the other session's pin with the count of a
 * shard the key no longer routed to, leaving the key's rows where its new pin had sent them. The
 * route is read again after the count and, changed, the rows counted where it routes now.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryRowsLeftError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { keysInSlot, lockWaitOn, refusalOf, seedUsers, startMoveEnv, threeShardsOf, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let directory: DirectoryStore;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  directory = new DirectoryStore(env.catalog, { shardPools: env.shards, ttlMs: 0 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/**
 * Runs `change` while `counted`'s documents table is locked (its count waits there); once it
 * waits, another operator pins the key to `third` ('checked') and the key's rows land there;
 * then the lock is released. Answers what `change` answered (its error, or null).
 */
async function withPinChangedDuringCount(counted: string, key: string, slot: number, third: string, change: () => Promise<unknown>): Promise<unknown> {
  const locker = await (env.shards.get(counted) as pg.Pool).connect();
  try {
    await locker.query('begin; lock table documents in access exclusive mode');
    const changing = refusalOf(change());
    await lockWaitOn(env.shards.get(counted) as pg.Pool, counted);
    await directory.set(key, third, 'operator 2', undefined, undefined, { rowsLeftOn: 'checked' });
    await seedUsers(env.shards.get(third) as pg.Pool, slot, [key], 2);
    await locker.query('rollback');
    return await changing;
  } finally {
    await locker.query('rollback').catch(() => undefined);
    locker.release();
  }
}

describe('DirectoryStore: a pin changed by another session while the rows are counted', () => {
  it('an unconditional set counts the rows where the key routes once counted, and is refused', async () => {
    const slot = 1810;
    const { from, to, third } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    // Routed by hash to `from`, which holds none of its rows: the count there finds none.
    const answer = await withPinChangedDuringCount(from, key, slot, third, () => directory.set(key, to, 'operator 1'));
    // Before: null (written), the key pinned to `to`, its 2 documents on `third` out of sight.
    expect(answer).toBeInstanceOf(DirectoryRowsLeftError);
    expect((answer as DirectoryRowsLeftError).from).toBe(third);
    expect((await directory.entry(key))?.shardId).toBe(third);
  }, 60_000);

  it('a delete (unpin) counts them too, and is refused', async () => {
    const slot = 1811;
    const { to, third } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, to, 'setup', undefined, null);
    // Pinned to `to`, which holds none of its rows; unpinned, it routes to `from`.
    const answer = await withPinChangedDuringCount(to, key, slot, third, () => directory.delete(key));
    // Before: null (unpinned), the key routed by hash to `from`, its 2 documents on `third` out of sight.
    expect(answer).toBeInstanceOf(DirectoryRowsLeftError);
    expect((answer as DirectoryRowsLeftError).from).toBe(third);
    expect((await directory.entry(key))?.shardId).toBe(third);
  }, 60_000);

  it('a set with compare-and-set is refused by its own check, as before', async () => {
    const slot = 1812;
    const { from, to, third } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const answer = await withPinChangedDuringCount(from, key, slot, third, () => directory.set(key, to, 'operator 1', undefined, null));
    expect(answer).toBeInstanceOf(Error);
    expect((await directory.entry(key))?.shardId).toBe(third);
  }, 60_000);
});
