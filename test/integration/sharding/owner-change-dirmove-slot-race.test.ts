/**
 * Issue #15: a directory move of a key raced a map published by hand giving the key's slot away.
 * The publication locks its slots' rows of catalog.slot_pin_locks and reads their pinned keys once
 * (to keep them out of the old owner's `moved` row and mark them `moved` to their pins on the new
 * owner, OwnerChangeFences.markPinnedKeys); a pin made by hand locks the same row and is waited for
 * (sharding migration 017, owner-change-pin-slot-race.test.ts). A directory move's own pins did not:
 * its pin of the key to the source over no entry (the source's preparation) and its flip's pin to
 * the target are written with `rowsLeftOn` (the mover's word), past the store's lock. A move that
 * pinned the key after the publication's read and before its commit was in neither's sight: the
 * map committed with no `moved` row of the key on the slot's new owner, and a router whose
 * directory cache lacked the pin, routing the key by hash there, had its writes acknowledged where
 * no reader looks (a users row inserted there, out of every reader's sight). Found by
 * owner-change-torture-review.test.ts, TORTURE_SEED=-1238155181 TORTURE_RUNS=30 (path "10"): `s0u1:
 * name n125, acknowledged n128`.
 *
 * Made deterministic by holding catalog.owner_change_review FOR UPDATE (as a review of the fence
 * rows does) in a transaction of the test's: the publication waits for it after it read the slot's
 * pinned keys, holding the slot's lock, while the directory move runs. Now the move's pin over no
 * entry locks the slot's row FOR SHARE before it reads the slot's owner (docs/sharding-spec.md
 * section 9, "A pin racing a change of its slot"): it waits for the publication and then reads its
 * map (the key routing by hash to a third shard: the move is refused), or the publication, refused,
 * leaves the slot where it was and the move goes on.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { SlotMapRowsLeftError } from '../../../functions/adapters/postgres/slot-map-store.js';
import { countingStores, keysInSlot, outcomeOf, refusalOf, seedUsers, settledOrWaiting, startMoveEnv, threeShardsOf, userWriteOutcome, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** How many backends of the catalog wait on a lock now. */
async function catalogLockWaits(): Promise<number> {
  const { rows } = await env.catalog.query(`select 1 from pg_stat_activity where datname = 'catalog' and wait_event_type = 'Lock'`);
  return rows.length;
}

/**
 * Publishes by hand a map giving `slot` from its owner to another shard while a directory move of
 * a key of the slot to the third shard runs between the publication's read of the slot's pinned
 * keys and its commit. `rows`: whether the key has a users row on the slot's owner.
 */
async function raced(slot: number, rows: boolean): Promise<{ key: string; published: unknown; moved: string; from: string; to: string; third: string }> {
  const { from, to, third } = await threeShardsOf(env, slot);
  const [key] = keysInSlot(slot, 1) as [string];
  if (rows) await seedUsers(env.shards.get(from) as pg.Pool, slot, [key], 1);
  const { slotMaps } = countingStores(env);
  const review = await env.catalog.connect();
  let published: Promise<unknown> | undefined;
  let moved: Promise<string> | undefined;
  try {
    await review.query('begin');
    await review.query('select 1 from catalog.owner_change_review where id = 1 for update');
    published = refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'test: the slot given away by hand'));
    // It read the slot's pinned keys (none) under the slot's lock, and waits for the review's row.
    expect(await settledOrWaiting(env, published)).toBe('waiting');
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to: third, createdBy: 'test' });
    moved = outcomeOf(mover.run(job.id));
    let settled = false;
    void moved.finally(() => {
      settled = true;
    });
    // Before: the move ran to its end (pinned to the source, then to the target) unseen by the
    // publication. Now it waits for the slot's lock (a second waiter on the catalog).
    while (!settled && (await catalogLockWaits()) < 2) await new Promise((r) => setTimeout(r, 20));
    await review.query('commit');
  } finally {
    await review.query('rollback').catch(() => undefined);
    review.release();
  }
  return { key, published: await published, moved: await (moved as Promise<string>), from, to, third };
}

/** Where the catalog routes `key` now (its pin, else its slot's owner) and the slot's owner. */
async function routeOf(key: string, slot: number): Promise<{ route: string; owner: string }> {
  const entry = await countingStores(env).directory.entry(key);
  const owner = await env.ownerOf(slot);
  return { route: entry?.shardId ?? owner, owner };
}

describe('a directory move of a key racing a map published by hand that gives its slot away', () => {
  it('a key with rows: no write of the key routed by hash to the slot owner is acknowledged where the catalog does not route it', async () => {
    const slot = 2420;
    const { key, moved, published, from, third } = await raced(slot, true);
    const { route, owner } = await routeOf(key, slot);
    // Before: the move ended `done` (the key pinned to the third shard), the map published, and
    // the slot's new owner, with no row of the key, took a write routed there by hash.
    if (route !== owner) expect(await userWriteOutcome(env.shards.get(owner) as pg.Pool, slot, key)).toMatch(/^refused /);
    // The key's users row is where its readers look.
    const { rows } = await (env.shards.get(route) as pg.Pool).query('select 1 from users where id = $1', [key]);
    expect(rows).toHaveLength(1);
    // Now the move waited for the publication, which counted the key's rows on the slot's owner
    // (not pinned when it read) and was refused, nothing published; the move then went on.
    expect(published).toBeInstanceOf(SlotMapRowsLeftError);
    expect(moved).toBe('ended: done');
    expect({ route, owner }).toEqual({ route: third, owner: from });
  }, 90_000);

  it('a key with no rows yet: the same, the move refused where the map sent the key by hash to a third shard', async () => {
    const slot = 2421;
    const { key, published, moved, to } = await raced(slot, false);
    const { route, owner } = await routeOf(key, slot);
    if (route !== owner) expect(await userWriteOutcome(env.shards.get(owner) as pg.Pool, slot, key)).toMatch(/^refused /);
    // Nothing held the map back: it gave the slot away; the move, after it, found the key routed
    // by hash to neither of its sides.
    expect(published).toBeNull();
    expect(owner).toBe(to);
    expect(moved).toBe('ended: failed');
    expect(await countingStores(env).directory.entry(key)).toBeNull();
  }, 90_000);
});
