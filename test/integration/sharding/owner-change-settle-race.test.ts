/**
 * Issue #15, the hand fence's settle against a later hand change of the same slot. A hand change
 * (P1) giving a slot back to a shard B that still holds a `moved` row of it (B gave it away by hand
 * earlier) deletes that row in its settle, after its commit. A second hand change (P2) publishing
 * the next version, taking the slot from B to a third shard, found B's row `moved` ("refuses the
 * unit's writes already") and left it as it was: no fence of its own there, nothing settled there.
 * P1's settle, running after P2 had published, then deleted B's row: B took the slot's writes
 * again (those of routers whose map still named it, version P1's) while the map named the third
 * shard: acknowledged out of every reader's sight.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reviewFences } from '../../../functions/adapters/postgres/fence-review.js';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { fenceState, keysInSlot, lockWaitOn, refusalOf, seedUsers, startMoveEnv, threeShardsOf, userWriteOutcome, type MoveEnv } from './fixtures/move-env.js';
import { heldAtCommit } from '../../support/held-commit.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** `pool`, whose settle of a new owner's `moved` rows waits (once) for `gate`; `reached` resolves when it starts waiting. */
function stalledAtNewOwnerSettle(pool: pg.Pool): { pool: pg.Pool; reached: Promise<void>; release: () => void } {
  return stalledAt(pool, 'delete from write_fences w using jsonb_to_recordset');
}

/** `pool`, whose first statement containing `text` waits for `release`; `reached` resolves when it starts waiting. */
function stalledAt(pool: pg.Pool, text: string): { pool: pg.Pool; reached: Promise<void>; release: () => void } {
  let reach!: () => void;
  let release!: () => void;
  const reached = new Promise<void>((r) => (reach = r));
  const gate = new Promise<void>((r) => (release = r));
  let once = false;
  const wrapped = new Proxy(pool, {
    get(target, prop) {
      if (prop === 'query') {
        return async (...args: unknown[]) => {
          if (!once && typeof args[0] === 'string' && args[0].includes(text)) {
            once = true;
            reach();
            await gate;
          }
          return (target.query as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        };
      }
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { pool: wrapped, reached, release };
}

describe('SlotMapStore.publishByHand, a later hand change of the slot publishing before an earlier one has settled', () => {
  it("the earlier change's settle does not reopen the slot on the shard the later one took it from", async () => {
    const slot = 2301;
    const { from: a, to: b, third: c } = await threeShardsOf(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    // The slot away from A to B by hand and back: B keeps a hand change's `moved` row of it.
    await store.publishByHand(moveSlots(await store.current(), [slot], b), 'away');
    await store.publishByHand(moveSlots(await store.current(), [slot], a), 'back');
    const shardB = env.shards.get(b) as pg.Pool;
    expect(await fenceState(shardB, slot)).toBe('moved');

    // P1 (A to B): committed, its settle of B (the new owner) stalled before deleting B's row.
    const stalled = stalledAtNewOwnerSettle(shardB);
    const p1Store = new SlotMapStore(env.catalog, { shardPools: new Map([...env.shards, [b, stalled.pool]]) });
    const p1 = p1Store.publishByHand(moveSlots(await store.current(), [slot], b), 'to b');
    await stalled.reached;
    const p1Version = (await store.current()).version;
    expect((await store.current()).assignments[slot]).toBe(b);

    // P2 (B to C), the next version, published meanwhile.
    const p2 = await store.publishByHand(moveSlots(await store.current(), [slot], c), 'to c');
    expect(p2.map.version).toBe(p1Version + 1);
    expect(p2.map.assignments[slot]).toBe(c);

    stalled.release();
    await p1;

    // A router whose map is still P1's writes the slot to B: refused (B no longer owns it).
    // Before: B's row was deleted by P1's settle, and the write was acknowledged on B, out of sight.
    expect(await userWriteOutcome(shardB, slot, keysInSlot(slot, 1)[0] as string)).toBe('refused CAF02');
    const { rows } = await shardB.query<{ state: string; moved_to: string }>(`select state, moved_to from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    expect(rows).toEqual([{ state: 'moved', moved_to: c }]);
    // C, the owner now, takes them.
    expect(await userWriteOutcome(env.shards.get(c) as pg.Pool, slot, keysInSlot(slot, 2)[1] as string)).toBe('acknowledged');
  }, 90_000);

  it("refused for rows left, puts a hand change's moved row it took over on the old owner back as it was", async () => {
    const slot = 2302;
    const { from: a, to: b, third: c } = await threeShardsOf(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    const shardA = env.shards.get(a) as pg.Pool;
    await seedUsers(shardA, slot, keysInSlot(slot, 1), 1);
    // Another hand change's new-owner row, its settle not run yet.
    await shardA.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version, job_id) values ('slot', $1, 'moved', $2, 1, null)`, [String(slot), c]);
    const before = (await store.current()).version;
    expect(await refusalOf(store.publishByHand(moveSlots(await store.current(), [slot], b), 'to b'))).toBeInstanceOf(SlotMapRowsLeftError);
    expect((await store.current()).version).toBe(before);
    const { rows } = await shardA.query(`select state, moved_to, map_version::text, job_id from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    expect(rows).toEqual([{ state: 'moved', moved_to: c, map_version: '1', job_id: null }]);
  }, 60_000);
});

describe("SlotMapStore.publishByHand, the shards' logins defaulting to REPEATABLE READ, a review settling its fence between its commit and its settle", () => {
  it("the change's settle that waited for the review's compare-and-set finds the row settled, and the publication answers published, not that its fences stay fenced", async () => {
    const slot = 2303;
    const { from: a, to: b } = await threeShardsOf(env, slot);
    // The store's shard pools: the mover's login, its default REPEATABLE READ (an RDS parameter
    // group, an ALTER ROLE ... SET); its settle's UPDATE is a statement of its own.
    const rr = new Map<string, pg.Pool>(
      [...env.shards.keys()].map((id) => {
        const p = new pg.Pool({ connectionString: env.urls.shards[id], max: 3, options: '-c default_transaction_isolation=repeatable\\ read' });
        p.on('error', () => undefined);
        return [id, p];
      }),
    );
    const stalled = stalledAt(rr.get(a) as pg.Pool, `set state = 'moved', moved_to = u."to"`);
    const store = new SlotMapStore(env.catalog, { shardPools: new Map([...rr, [a, stalled.pool]]) });
    let reviewHeld!: () => void;
    const reviewAtCommit = new Promise<void>((r) => (reviewHeld = r));
    let letReviewCommit!: () => void;
    const reviewGate = new Promise<void>((r) => (letReviewCommit = r));
    try {
      // The change has committed (the map names B) and is about to set A's `fenced` row `moved`.
      const published = store.publishByHand(moveSlots(await store.current(), [slot], b), 'to b').then(
        (r) => `published version ${r.map.version}`,
        (e: Error) => `threw: ${e.message}`,
      );
      await stalled.reached;
      expect((await store.current()).assignments[slot]).toBe(b);
      expect(await fenceState(env.shards.get(a) as pg.Pool, slot)).toBe('fenced');
      // An operator's review (`shards fences --settle`) meanwhile: A's hand row `fenced`, the map
      // naming B, set `moved` to B by its compare-and-set, held at its commit.
      const review = reviewFences({ catalog: env.catalog, shards: new Map([...env.shards, [a, heldAtCommit(env.shards.get(a) as pg.Pool, reviewHeld, reviewGate, (sql) => /^\s*(update|delete from) write_fences/.test(sql))]]), settle: true });
      await reviewAtCommit;
      // The change's settle, sent now, waits for the review's row lock; the review then commits.
      stalled.release();
      await lockWaitOn(env.shards.get(a) as pg.Pool, a);
      letReviewCommit();
      const reviewed = await review;

      // Before: the settle's snapshot, older than the review's commit, failed it with "could not
      // serialize access due to concurrent update" (40001): the publication, committed, threw
      // "its fences could not all be settled ... stay 'fenced'", though the review had set them
      // `moved` (at READ COMMITTED the settle finds the row changed and leaves it).
      expect(reviewed.rows.find((r) => r.shard === a && r.unitId === String(slot))?.outcome).toMatch(/^settled: moved to /);
      expect(await published).toMatch(/^published version \d+$/);
      const { rows } = await env.shards.get(a)!.query<{ state: string; moved_to: string }>(`select state, moved_to from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
      expect(rows).toEqual([{ state: 'moved', moved_to: b }]);
    } finally {
      stalled.release();
      letReviewCommit();
      await Promise.all([...rr.values()].map((p) => p.end()));
    }
  }, 90_000);
});
