/**
 * Issue #15: a directory move's FLIP over no entry racing a map published by hand that gives the
 * key's slot to a third shard. owner-change-dirmove-slot-race.test.ts times the publication against
 * the source's preparation; here it comes between the preparation and the flip, once the source is
 * fenced. The key had no pin before the move (the preparation pinned it to the source) and its pin
 * was deleted meanwhile (past sharding migration 010's guard, as a superuser may), so the flip
 * publishes the target over no entry: it locks the key's slot's row of catalog.slot_pin_locks FOR
 * SHARE before it reads the slot's owner (docs/sharding-spec.md section 9, "A pin racing a change
 * of its slot"), and a publication holding that row FOR UPDATE (reading the slot's pinned keys,
 * then counting the slot's rows on its owner: seconds on a large slot) holds the flip, with the
 * write fence on the source held all along.
 *
 * The slot's row is held at that point by a publication by hand, itself held by a transaction of
 * the test's holding catalog.owner_change_review FOR UPDATE (as a review of the fence rows does;
 * the publication's own wait for it ends at 5 s), or by a transaction of the test's holding the row
 * FOR UPDATE (as a publication counting a large slot's rows does). Checked: no acknowledged write
 * lost or out of its readers' sight (placementViolations, a writer whose router holds the map from
 * before the move and no pin writing the key under the fence); the move ends `done`, or `failed`
 * and rolled back where the publication sent the key by hash to a third shard; nothing left
 * waiting on a lock. And the flip's wait, with the fence held, is bounded by what is left of the
 * fence budget, not by the lock's own 5 s (docs/sharding-spec.md section 9): past it the flip gives
 * its fence up as over budget, the job's record naming the slot's lock, and the run tries again at
 * its next fence attempt; within it the flip waits (a budget of 8 s). Before, a wait ended at 5 s
 * failed the run (a MoveError: the move stopped until its next run, with a budget of 5.5 or 8 s),
 * and one cut at the budget was recorded as "the flip ran out of time" alone. Figures are printed.
 *
 * The same lock held against the two other publications of a move over no entry: the rollback's
 * pin back to the source under the fence (a cancellation the flip answered), whose wait is held to
 * the fence deadline and refused naming the lock (before, cut by the deadline's cancel, the run
 * said only "canceling statement due to user request"); and the publication again of a flip the
 * catalog lost (no fence held: the lock's own 5 s, then refused, the next run publishing it).
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { moveSlots, type SlotMap } from '../../../functions/core/sharding/slot-map.js';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { SlotMapRowsLeftError } from '../../../functions/adapters/postgres/slot-map-store.js';
import { countingStores, deletePinPastGuard, keysInSlot, outcomeOf, refusalOf, seedUsers, settledOrWaiting, startMoveEnv, threeShardsOf, unitFenceState, type MoveEnv } from './fixtures/move-env.js';
import { placementViolations, staleWriter, type UserModel } from './fixtures/torture-writes.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** Backends of the catalog and the shards waiting on a lock now. */
async function lockWaits(): Promise<number> {
  let n = 0;
  for (const pool of [env.catalog, ...env.shards.values()]) {
    const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and pid <> pg_backend_pid()`);
    n += rows.length;
  }
  return n;
}

interface Raced {
  readonly key: string;
  readonly from: string;
  readonly to: string;
  readonly third: string;
  /** How the move's first run ended (`ended: <state>` or `threw: <message>`), and its last. */
  readonly firstRun: string;
  readonly moved: string;
  /** What the publication by hand was refused with (null: published; undefined: none was made). */
  readonly published: unknown;
  /** What the job recorded when its first fence was given up (read at the next `cutover` point), if it was. */
  readonly gaveUp: string | null;
  /** How long the source's fence of the key was `fenced` while the slot's lock was held (ms, polled every 10 ms). */
  readonly fencedMs: number;
  /** How long a write of the key sent under that fence waited before it was acknowledged (ms). */
  readonly writeWaitMs: number;
  readonly violations: string[];
}

/**
 * Moves a fresh key of `slot` (rows on the slot's owner, no pin) to another shard with a fence
 * budget of `fenceBudgetMs`; at the move's `verifying` point (the source fenced, the flip next)
 * deletes the key's pin and holds the slot's row of catalog.slot_pin_locks for `holdMs`: by a
 * publication by hand giving the slot to the third shard, held after its lock by the review row
 * (`publication`: the publication's own wait for it ends at 5 s), or FOR UPDATE in a transaction
 * of the test's (`lock`: a publication counting a large slot's rows on the shards, which holds it
 * as long). Meanwhile a writer holding the map from before the move updates the key.
 */
async function raced(slot: number, fenceBudgetMs: number, holdMs: number, holder: 'publication' | 'lock', rows = true, cancel = false): Promise<Raced> {
  const { from, to, third } = await threeShardsOf(env, slot);
  const [key] = keysInSlot(slot, 1) as [string];
  const source = env.shards.get(from) as pg.Pool;
  if (rows) await seedUsers(source, slot, [key], 1);
  const before: SlotMap = await env.slotMaps.current();
  const docs = await source.query<{ id: string }>('select id::text from documents where owner_id = $1', [key]);
  const model: UserModel = { exists: rows, name: `user ${key}`, docs: new Set(docs.rows.map((r) => r.id)) };
  const { slotMaps } = countingStores(env);
  const holding = await env.catalog.connect();
  let published: Promise<unknown> | undefined;
  let write: Promise<number> | undefined;
  let held: Promise<void> | undefined;
  let fencedMs = 0;
  let gaveUp: string | null = null;
  let watched: Promise<void> | undefined;
  let armed = false;
  let jobId = 0;
  const hook = async (point: MoveHookPoint): Promise<void> => {
    if (point !== 'verifying' || armed) return;
    armed = true;
    expect(await deletePinPastGuard(env.catalog, key)).toBe(true);
    await holding.query('begin');
    if (holder === 'publication') {
      await holding.query('select 1 from catalog.owner_change_review where id = 1 for update');
      published = refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], third), 'test: the slot given away by hand'));
      // It holds the slot's row of catalog.slot_pin_locks FOR UPDATE and waits for the review's row.
      expect(await settledOrWaiting(env, published)).toBe('waiting');
    } else {
      await holding.query('insert into catalog.slot_pin_locks (slot) values ($1) on conflict do nothing', [slot]);
      await holding.query('select slot from catalog.slot_pin_locks where slot = $1 for update', [slot]);
    }
    // A cancellation, requested now: the flip answers it, and the run rolls back under its fence.
    if (cancel) expect(await mover.requestCancel(jobId)).toMatchObject({ cancelRequested: true });
    const t0 = Date.now();
    // A write sent now, by a router that holds the map from before the move and no pin: the source,
    // fenced; it waits for the fence to open (or the key to move) and is acknowledged then.
    const sql = rows ? 'update users set display_name = $2 where id = $1' : `insert into users (id, slot, email, display_name) values ($1::uuid, $3, $1::text || '@example.com', $2)`;
    write = staleWriter(env, before, 0)
      .withShardWrite(key, async ({ client }) => (await client.query(sql, rows ? [key, 'written under the fence'] : [key, 'written under the fence', slot])).rowCount)
      .then((r) => {
        expect(r.value).toBe(1);
        Object.assign(model, { exists: true, name: 'written under the fence' });
        return Date.now() - t0;
      });
    watched = (async () => {
      while ((await unitFenceState(source, 'directory', key)) === 'fenced') await new Promise((r) => setTimeout(r, 10));
      fencedMs = Date.now() - t0;
      // A fence given up is recorded on the job (`verify_timed_out`) until its next catch-up
      // (the retry's pause, 200 ms, comes first): read it then.
      for (let i = 0; i < 40 && gaveUp === null; i++) {
        const { rows } = await env.catalog.query<{ error: string | null }>(`select error from catalog.move_jobs where id = $1 and state = 'catching_up'`, [jobId]);
        gaveUp = rows[0]?.error ?? null;
        if (gaveUp === null) await new Promise((r) => setTimeout(r, 10));
      }
    })();
    held = new Promise<void>((r) => setTimeout(r, holdMs)).then(async () => {
      await holding.query('commit');
    });
  };
  const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs, fenceRetryPauseMs: 200, hook });
  const job = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
  jobId = job.id;
  let firstRun: string;
  let moved: string;
  try {
    firstRun = await outcomeOf(mover.run(job.id));
    moved = firstRun;
    await held;
    // A run that stopped (its fence attempts spent, or its step refused) is resumed by the next.
    for (let run = 0; run < 3 && !/^ended: (done|failed|cancelled)$/.test(moved); run++) moved = await outcomeOf(mover.run(job.id));
  } finally {
    await held?.catch(() => undefined);
    await holding.query('rollback').catch(() => undefined);
    holding.release();
  }
  const writeWaitMs = await (write as Promise<number>);
  await watched;
  const entry = await countingStores(env).directory.entry(key);
  const route = entry?.shardId ?? (await env.ownerOf(slot));
  const violations = await placementViolations(env, 'the key', key, route, model);
  return { key, from, to, third, firstRun, moved, published: await published, gaveUp, fencedMs, writeWaitMs, violations };
}

function figures(r: Raced, budget: number, hold: number): string {
  return `fence held ${r.fencedMs} ms, a write sent under it waited ${r.writeWaitMs} ms (budget ${budget} ms, slot held ${hold} ms); first run ${r.firstRun}; gave up: ${r.gaveUp ?? 'no'}`;
}

describe("a directory move's flip over no entry racing a map published by hand that gives the key's slot away", () => {
  it('a publication holding the slot past the fence budget: the flip gives its wait up within the budget, its fence released, and the move ends done', async () => {
    const r = await raced(2440, 2000, 4000, 'publication');
    console.log(figures(r, 2000, 4000));
    // The publication, released, counted the key's rows on the source (unpinned when it read) and was refused.
    expect(r.published).toBeInstanceOf(SlotMapRowsLeftError);
    expect(r.violations).toEqual([]);
    expect(r.firstRun).toBe('ended: done');
    expect(await countingStores(env).directory.entry(r.key)).toMatchObject({ shardId: r.to });
    // Writes to the key were held no longer than the budget (and the time to give the fence up).
    expect(r.fencedMs).toBeLessThan(2000 + 1000);
    expect(r.writeWaitMs).toBeLessThan(2000 + 1000);
    expect(r.gaveUp).toMatch(/could not be verified and published within its budget \(the flip ran out of time: cannot pin key .* for its move: another change of its slot 2440 .* held catalog\.slot_pin_locks for more than \d+ ms.*the flip gave its fence up as over budget/);
    expect(await lockWaits()).toBe(0);
  }, 120_000);

  it('a key with no rows yet, the publication committed while the flip waits: the flip reads its map, the move fails rolled back, and the write sent under the fence lands where the key routes', async () => {
    const r = await raced(2443, 2000, 500, 'publication', false);
    console.log(figures(r, 2000, 500));
    expect(r.published).toBeNull();
    expect(r.violations).toEqual([]);
    expect(r.firstRun).toBe('ended: failed');
    expect(await env.ownerOf(2443)).toBe(r.third);
    expect(await countingStores(env).directory.entry(r.key)).toBeNull();
    expect(r.gaveUp).toBeNull();
    expect(await lockWaits()).toBe(0);
  }, 120_000);

  it('the slot held for 6.5 s under a fence budget of 8 s: the flip waits within its budget, not the lock bound of 5 s, and the first run ends done', async () => {
    const r = await raced(2441, 8000, 6500, 'lock');
    console.log(figures(r, 8000, 6500));
    // Before: the flip's wait ended at 5 s (the lock's own bound), a MoveError: the run stopped,
    // its fence given back, the move left for its next run though its budget allowed the wait.
    expect(r.firstRun).toBe('ended: done');
    expect(r.gaveUp).toBeNull();
    expect(r.violations).toEqual([]);
    expect(r.fencedMs).toBeGreaterThanOrEqual(6500);
    expect(r.fencedMs).toBeLessThan(8000 + 1000);
    expect(await countingStores(env).directory.entry(r.key)).toMatchObject({ shardId: r.to });
    expect(await lockWaits()).toBe(0);
  }, 120_000);

  it('the slot held past a fence budget longer than 5 s: the flip gives the wait up at its budget as over budget, and the run goes on to its next fence attempt', async () => {
    const r = await raced(2442, 5500, 7000, 'lock');
    console.log(figures(r, 5500, 7000));
    expect(r.firstRun).toBe('ended: done');
    // Over budget, the run going on: on a quiet machine the budget runs out in the wait for the
    // slot's pin lock, which the record names ("the flip ran out of time: cannot pin key ...");
    // on one loaded past a load of 13 the fence's steps before the wait may use the budget up
    // first, and the record says only that the flip ran out of time. Either is the outcome this
    // test is for (before: a MoveError at the lock's own 5 s, the run stopped); the lock's naming
    // is checked by the 2 s budget's test above.
    expect(r.gaveUp).toMatch(/within its budget \(the flip ran out of time/);
    expect(r.violations).toEqual([]);
    expect(r.fencedMs).toBeLessThan(5500 + 1000);
    expect(await lockWaits()).toBe(0);
  }, 120_000);
});

describe("a directory move's rollback under its fence, its key unpinned and its slot's pin lock held", () => {
  it('a cancellation answered by the flip while a change of the slot holds its pin lock past the budget: writes to the key are held no longer than the budget, and the next run rolls back', async () => {
    const r = await raced(2444, 2000, 4000, 'lock', true, true);
    console.log(`${figures(r, 2000, 4000)}; in the end ${r.moved}`);
    expect(r.violations).toEqual([]);
    expect(r.fencedMs).toBeLessThan(2000 + 1000);
    expect(r.writeWaitMs).toBeLessThan(2000 + 1000);
    // Before: the wait, cut by the fence deadline's cancel, failed the run with "canceling
    // statement due to user request" (the job's record too), with no word of the slot's lock.
    expect(r.firstRun).toMatch(/^threw: cannot pin key .* for its move: another change of its slot 2444 .* held catalog\.slot_pin_locks for more than \d+ ms.*the run gave its fence back with nothing decided/);
    expect(r.moved).toBe('ended: cancelled');
    expect(await countingStores(env).directory.entry(r.key)).toMatchObject({ shardId: r.from });
    expect(await lockWaits()).toBe(0);
  }, 120_000);
});

describe("a directory move's flip the catalog lost, published again over no entry while a change of the key's slot holds its pin lock", () => {
  it('the recovery waits the lock bound (5 s) with no write of the key held, is refused naming the lock, and the next run publishes the flip again', async () => {
    const slot = 2445;
    const { from, to } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const [source, target] = [env.shards.get(from), env.shards.get(to)] as [pg.Pool, pg.Pool];
    await seedUsers(source, slot, [key], 1);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect(await outcomeOf(mover.run(job.id))).toBe('ended: done');
    // A catalog failed over to a standby further behind: the job just before its flip, and the
    // key's pin gone (an operator deleted it during the move, past sharding migration 010's guard).
    await env.catalog.query(
      `update catalog.move_jobs set state = 'verifying', flip_started_at = null, map_version_after = null, unfenced_at = null, cleaning_up_at = null,
              finished_at = null, rows_deleted = 0, lease_holder = null, lease_expires_at = null where id = $1`,
      [job.id],
    );
    expect(await deletePinPastGuard(env.catalog, key)).toBe(true);
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: 'moved', target: 'open' });
    const holding = await env.catalog.connect();
    try {
      await holding.query('begin');
      await holding.query('insert into catalog.slot_pin_locks (slot) values ($1) on conflict do nothing', [slot]);
      await holding.query('select slot from catalog.slot_pin_locks where slot = $1 for update', [slot]);
      const t0 = Date.now();
      const refused = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(job.id));
      const waitedMs = Date.now() - t0;
      // With no fence of the run's held meanwhile: the key's writes go where its fences send them (the target).
      const during = { source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) };
      await holding.query('commit');
      const resumed = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(job.id));
      console.log(`lost flip: the recovery waited ${waitedMs} ms for the slot's pin lock and was refused; then ${resumed}`);

      expect(refused).toMatch(/^threw: cannot pin key .* for its move: another change of its slot 2445 .* held catalog\.slot_pin_locks for more than 5000 ms.*the move tries again on its next run/);
      expect(waitedMs).toBeGreaterThanOrEqual(4900);
      expect(during).toEqual({ source: 'moved', target: 'open' });
      expect(resumed).toBe('ended: done');
      expect(await countingStores(env).directory.entry(key)).toMatchObject({ shardId: to });
      expect(await lockWaits()).toBe(0);
    } finally {
      await holding.query('rollback').catch(() => undefined);
      holding.release();
    }
  }, 120_000);
});
