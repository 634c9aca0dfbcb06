/**
 * Issue #15, review h68 of a1754ab: a slot map published by hand leaves a slot whose move has not
 * flipped to that move (not fenced on its old owner: the move fences and releases it). The skip
 * was decided on a catalog read made before the fence, outside the map's transaction: a move that
 * ended (cancelled, or failed, rolled back) after that read and before the map's insert no longer
 * stopped the insert (the catalog's CAF08 guard refuses a map only while the move is unfinished),
 * and the slot was published with its old owner neither fenced nor `moved`: a writer sent there by
 * the old map was acknowledged where the map no longer looks. The skip is now confirmed in the
 * map's transaction, after its insert: a move that ended meanwhile refuses the change, nothing
 * published, and the next try fences the slot.
 *
 * Also: inside a caller's transaction, the store deleted the new owner's `moved` row (a hand
 * change's, or since a1754ab a finished move's) before the caller's commit: a caller that then
 * rolled back left that shard taking the slot's writes while the catalog named the other one. It
 * is left now, for the operator to delete once committed. And: a slot given back by hand to the
 * source of its move past the flip, still cleaning up, was refused for the move's `moved` row there
 * with a message saying to open that row by hand and publish again; done, the publication went
 * through, a write was acknowledged there, and the move's clean-up (resumed) deleted it. Refused
 * now whatever the row says, and the message says to let the move finish.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { fenceState, keysInSlot, refusalOf, moveStoppedAfterRelease, sides, startMoveEnv, userWriteOutcome, movedThenGivenBackInTransaction, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/**
 * `pool`, whose `query`, and that of every client it lends, runs `before` and `after` around the
 * first statement matching `when`, once.
 */
function catalogCalling(pool: pg.Pool, when: RegExp, before: () => Promise<unknown>, after: () => Promise<unknown>): pg.Pool {
  let done = false;
  const hooking = <Q extends object>(target: Q): Q =>
    new Proxy(target, {
      get(t, prop) {
        if (prop === 'query') {
          return async (text: string, values?: unknown[]) => {
            const hooked = !done && typeof text === 'string' && when.test(text);
            done ||= hooked;
            if (hooked) await before();
            const answer: unknown = await (t as unknown as pg.ClientBase).query(text, values);
            if (hooked) await after();
            return answer;
          };
        }
        if (prop === 'connect' && t === (pool as object)) return async () => hooking(await pool.connect());
        const v: unknown = Reflect.get(t, prop, t);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
  return hooking(pool);
}

describe('a slot left to its unflipped move by a hand change', () => {
  it('whose move is cancelled before the map is written is refused, not published unfenced: no write acknowledged on the old owner after', async () => {
    const slot = 1821;
    const { from, to, source } = await sides(env, slot);
    const mover = env.mover({ readerGraceMs: 0 });
    // A move of the slot is recorded once the change has tried its write (the catalog's checks,
    // undone), just before it reads the unflipped moves, and cancelled (rolled back) right after.
    // Recorded as Mover.plan records it, past its lock of the slot (sharding migration 017): a plan
    // through the Mover now waits for the publication's commit, which holds that lock, so only a
    // job inserted by SQL can come in between.
    let planned: { id: number } | undefined;
    const catalog = catalogCalling(
      env.catalog,
      /flip_started_at is null/,
      async () => {
        const { rows } = await env.catalog.query<{ id: string }>(
          `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, excluded_keys, map_version_before, created_by)
           select 'slot', $1::text, $2::int, $3, $4, '{}', max(version), 'test' from catalog.slot_maps returning id::text`,
          [String(slot), slot, from, to],
        );
        planned = { id: Number(rows[0]?.id) };
      },
      () => mover.cancel((planned as { id: number }).id),
    );
    const store = new SlotMapStore(catalog, { shardPools: env.shards });
    const before = await store.current();
    const outcome = await refusalOf(store.publishByHand(moveSlots(before, [slot], to), 'given to the move target by hand'));
    if (planned === undefined) throw new Error('the move was never planned');
    expect((await mover.get(planned.id)).state).toBe('cancelled');
    // Before: published, the slot's row on `from` never fenced (no row at all).
    expect({ owner: (await store.current()).assignments[slot], fence: await fenceState(source, slot) }).toEqual({ owner: from, fence: undefined });
    expect(String(outcome)).toMatch(
      new RegExp(`cannot publish slot map version ${before.version + 1} by hand: slot ${slot} was left to its move job #${planned.id} .*which has ended or flipped since.*Nothing was published`),
    );
    // Published again, the slot is fenced as any: a writer sent to `from` by the old map is refused.
    await store.publishByHand(moveSlots(await store.current(), [slot], to), 'given to the move target by hand, again');
    expect({ owner: (await store.current()).assignments[slot], write: await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string) }).toEqual({ owner: to, write: 'refused CAF02' });
  }, 60_000);
});

describe('a slot left to its unflipped move by a hand change through a client that holds no transaction', () => {
  it('is refused before the write: a move cancelled between any check and the insert would leave the map published unfenced', async () => {
    const slot = 1825;
    const { from, to, source } = await sides(env, slot);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // Something that only answers `query` (no transaction can be held on it); the move is
    // cancelled just before the map's insert reaches the catalog.
    const hooked = catalogCalling(env.catalog, /publish_slot_map_by_hand/, () => mover.cancel(planned.id), () => Promise.resolve());
    const queryOnly = { query: (text: string, values?: unknown[]) => hooked.query(text, values) } as unknown as pg.Pool;
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    const before = await store.current();
    const outcome = await refusalOf(store.publishByHand(moveSlots(before, [slot], to), 'given to the move target by hand', queryOnly));
    // Before: the check passed with the move planned, the move was cancelled, the insert went
    // through (CAF08 refuses only while a move is unfinished): owner `to`, `from` never fenced, and
    // a writer sent there by the old map acknowledged where the map no longer looks.
    expect({ owner: (await store.current()).assignments[slot], write: await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string) }).toEqual({ owner: from, write: 'acknowledged' });
    expect(String(outcome)).toMatch(new RegExp(`cannot publish slot map version ${before.version + 1} by hand: slot ${slot} has an unfinished move \\(job #${planned.id}\\).*holds no transaction.*Nothing was published`));
    await mover.cancel(planned.id).catch(() => undefined);
  }, 60_000);
});

describe("a slot given back by hand inside a caller's transaction", () => {
  it("that then rolls back leaves the new owner's moved row: the shard the slot moved off takes no write while the catalog names the other", async () => {
    const slot = 1822;
    // The caller's transaction fails after the store returned.
    const { to, source, store } = await movedThenGivenBackInTransaction(env, slot, 'rollback');
    expect((await store.current()).assignments[slot]).toBe(to);
    // A router whose map predates the move (naming `from`). Before: `from`'s moved row was deleted
    // before the caller's commit, and the write acknowledged there while the catalog names `to`.
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string)).toBe('refused CAF02');
  }, 60_000);

  it("that commits keeps the new owner's moved row, refusing the slot's writes (none lost) until deleted by hand", async () => {
    const slot = 1823;
    const { from, source, store } = await movedThenGivenBackInTransaction(env, slot, 'commit');
    expect((await store.current()).assignments[slot]).toBe(from);
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string)).toBe('refused CAF02');
    // The way out the spec names, once the caller's transaction has committed.
    await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1 and state = 'moved'`, [String(slot)]);
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string)).toBe('acknowledged');
  }, 60_000);
});

describe('a slot given back by hand to the source of its move past the flip, still cleaning up', () => {
  it("is refused even with that shard's moved row opened by hand: the move's clean-up would delete the writes taken there", async () => {
    const slot = 1824;
    const { from, to, source } = await sides(env, slot);
    const job = { id: await moveStoppedAfterRelease(env, slot, to) };
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    // Refused for the move's moved row on `from` (a1754ab); its message no longer says to open it by hand.
    const first = await refusalOf(store.publishByHand(moveSlots(await store.current(), [slot], from), 'given back by hand'));
    expect(String(first)).toMatch(/is 'moved' \(move job #\d+, moved to \w+\).*Let the move finish/);
    expect(String(first)).not.toMatch(/update write_fences set state = 'open'/);
    // What its message said before: open the row by hand and publish again.
    await source.query(`update write_fences set state = 'open', moved_to = null where kind = 'slot' and unit_id = $1`, [String(slot)]);
    const before = await store.current();
    const second = await refusalOf(store.publishByHand(moveSlots(before, [slot], from), 'given back by hand, the row opened'));
    // Before: published; a write on `from` was acknowledged, then the move's clean-up (resumed below) deleted it.
    expect((await store.current()).version).toBe(before.version);
    expect(String(second)).toMatch(
      new RegExp(`cannot publish slot map version ${before.version + 1} by hand: slot ${slot}'s move job #${job.id} \\(${from} to ${to}, cleaning_up\\) is past its flip and unfinished.*Nothing was written`),
    );
    // The way out: the move finishes, then the slot is given back, and its writes there are kept.
    expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');
    await store.publishByHand(moveSlots(await store.current(), [slot], from), 'given back by hand, the move done');
    const [user] = keysInSlot(slot, 1) as [string];
    expect(await userWriteOutcome(source, slot, user)).toBe('acknowledged');
    expect((await source.query<{ n: number }>('select count(*)::int as n from users where id = $1', [user])).rows[0]?.n).toBe(1);
  }, 60_000);
});
