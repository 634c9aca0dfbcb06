/**
 * Issue #15: the fence review (`ca-dms-scaling shards fences --settle`,
 * functions/adapters/postgres/fence-review.ts) and a slot whose owner was changed back past the
 * stores while its rows stayed on the shard its old owner's `moved` row sends its writes to.
 *
 * A map published by hand through the stores (given the shards' pools) gives a slot from A to B:
 * A's row is fenced, then `moved` to B; the slot's writes land on B. Then a map gives the slot
 * back to A past the stores' count and fence (`rowsLeftOn: 'checked'`, a caller's word that the
 * rows are accounted for, which fences nothing; or SQL): A's `moved` row, sending the writes to
 * B, refuses them where the map now sends them, none acknowledged. That row is on the shard the
 * map names, so the review reopens it unless it counts the slot's rows where the row sends them:
 * reopened while they stayed on B, A took the slot's writes (its new users, its users' updates
 * touching nothing) out of sight of B's rows. The key's version of this was fixed before
 * (owner-change-review-directory.test.ts, "... under a pin change's dead fence ..."); these are
 * the slot's, on three shards, with the rows of keys of the slot pinned to B or to the third shard
 * (not the slot's: their pins route them) left out of the count. The same through A's `fenced`
 * row, which names no new owner: a change to B that died after its commit (its settle lost), the
 * slot given back past the stores since, looked like one that died before it, and was reopened.
 * Then what the review must follow or leave out: the slot's rows moved on from B to C by a
 * finished move (B's `moved` row sends them on), a key of the slot unpinned past the stores with
 * its rows on the shard it was pinned to, a finished slot move's leftovers (not a key's live rows),
 * chains of `moved` rows (cycles, a shard not given), and the cost of counting a key's rows on every
 * other shard (2,000 rows through the API's bounds; 20,000 keys; a shard failing the batch) and a
 * slot's where maps since gave it (500 dead hand changes' `fenced` rows).
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryRowsLeftError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { listFences, reviewFences, type ReviewedFence } from '../../../functions/adapters/postgres/fence-review.js';
import { keyRowsOn, keysRowsOn } from '../../../functions/adapters/postgres/unit-rows.js';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import type { ShardWriter } from '../../../functions/adapters/postgres/write-transaction.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { listFencesAtDistance } from './fixtures/distant-listing.js';
import { countingStores, deletePinPastGuard, dyingAfterFence, keysInSlot, refusalOf, seedUsers, startMoveEnv, threeShardsOf, unitFenceState, type MoveEnv } from './fixtures/move-env.js';
import { placementViolations, runModelWrites, staleWriter, type ModelWrites, type UserModel } from './fixtures/torture-writes.js';

/** hash_based with directory.override_hash on: the routing the stores and the writers here route by. */
const PINS_ROUTE: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' };

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 180_000);
afterAll(async () => {
  await env?.stop();
});

function rowOf(rows: readonly ReviewedFence[], shard: string, slot: number): ReviewedFence | undefined {
  return rows.find((r) => r.shard === shard && r.kind === 'slot' && r.unitId === String(slot));
}

/** A fresh writer (the current map, no directory cache), giving up on a refused unit after 300 ms. */
async function freshWriter(): Promise<ShardWriter> {
  return staleWriter(env, await env.slotMaps.current(), 0, 300);
}

/**
 * `slot` given by hand (through the stores) from its owner A to B, its first user and a document
 * written there through a router, then a second user of the slot pinned to the third shard C
 * with a document there; returns the sides, the keys and the model of the first user's rows.
 */
async function slotWrittenOnB(slot: number): Promise<{ A: string; B: string; C: string; keys: string[]; model: UserModel; ctx: ModelWrites }> {
  const { from: A, to: B, third: C } = await threeShardsOf(env, slot);
  const { slotMaps, directory } = countingStores(env);
  await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], B), 'the slot to B by hand');
  expect(await unitFenceState(env.shards.get(A) as pg.Pool, 'slot', String(slot))).toBe('moved');
  const keys = keysInSlot(slot, 3);
  const model: UserModel = { exists: false, name: '', docs: new Set() };
  const ctx: ModelWrites = { writers: [await freshWriter()], model: [[model]], keys: [keys.slice(0, 1)], slots: [slot], log: [], violations: [] };
  await runModelWrites(ctx, [
    { writer: 0, slot: 0, user: 0, op: 'insert' },
    { writer: 0, slot: 0, user: 0, op: 'doc' },
  ]);
  expect({ violations: ctx.violations, log: ctx.log.map((l) => l.replace(/ \(attempts.*$/, '')) }).toEqual({
    violations: [],
    log: [`write insert s0u0 by w0: acknowledged on ${B}`, `write doc s0u0 by w0: acknowledged on ${B}`],
  });
  // A key of the slot pinned to C, with its rows there: not the slot's (its pin routes it).
  const pinned = keys[2] as string;
  await directory.set(pinned, C, 'ops@example.com');
  await seedUsers(env.shards.get(C) as pg.Pool, slot, [pinned], 1);
  return { A, B, C, keys, model, ctx };
}

/** The slot given back to A past the stores' count and fence: a caller's word that its rows are accounted for (they are not: they are on B). */
async function givenBackPastTheStores(slot: number, A: string): Promise<void> {
  const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
  await store.publishByHand(moveSlots(await store.current(), [slot], A), 'the slot back to A, rows "checked"', env.catalog, { rowsLeftOn: 'checked' });
  expect(await env.ownerOf(slot)).toBe(A);
}

/** A new user of the slot and an update of the first user's name, through a fresh writer: where each landed or why not. */
async function writesThroughFreshRouter(slot: number, keys: readonly string[]): Promise<string[]> {
  const writer = await freshWriter();
  const insert = writer.withShardWrite(keys[1] as string, async ({ client }) => (await client.query(`insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'after')`, [keys[1], slot])).rowCount);
  const update = writer.withShardWrite(keys[0] as string, async ({ client }) => (await client.query(`update users set display_name = 'renamed' where id = $1`, [keys[0]])).rowCount);
  return Promise.all(
    [insert, update].map((p) =>
      p.then(
        (r) => `acknowledged on ${r.shardId} (${String(r.value)} row)`,
        (e: Error) => `refused: ${e.message.slice(0, 80)}`,
      ),
    ),
  );
}

const review = (): ReturnType<typeof reviewFences> => reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0, routing: PINS_ROUTE });

describe("a slot's moved row on the shard the map names, the slot's rows on the shard it sends them to", () => {
  it("reopens no moved row of a slot given back past the stores while its rows stayed where the row sends its writes: reopened, the map's owner took the slot's writes out of sight of its rows, and a second review did it too", async () => {
    const slot = 2401;
    const { A, B, keys, model } = await slotWrittenOnB(slot);
    await givenBackPastTheStores(slot, A);
    // Before the review: A's row (moved to B) refuses the slot's writes where the map sends them; none acknowledged.
    expect((await writesThroughFreshRouter(slot, keys)).every((o) => o.startsWith('refused'))).toBe(true);
    const settled = await review();
    const again = await review();
    // Reopened, A took the new user, and the first user's rename touched nothing there (its row on B, out of A's readers' sight).
    expect(await writesThroughFreshRouter(slot, keys)).toEqual([expect.stringMatching(/^refused/), expect.stringMatching(/^refused/)]);
    expect(await unitFenceState(env.shards.get(A) as pg.Pool, 'slot', String(slot))).toBe('moved');
    expect(await placementViolations(env, 'user 0', keys[0] as string, B, model)).toEqual([]);
    for (const r of [settled, again]) {
      expect(rowOf(r.rows, A, slot)).toMatchObject({ owner: A, movedTo: B, action: 'reopen' });
      expect(rowOf(r.rows, A, slot)?.outcome).toMatch(new RegExp(`^left: the slot's rows are on ${B} \\(1 in users, 1 in documents; less those of keys the directory pins\\), where this row sends its writes, and ${B} has no row of the slot refusing them`));
    }
    // What the row's outcome asks: the slot given back to B by hand through the stores; its writes land there, on its rows.
    const { slotMaps } = countingStores(env);
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], B), 'the slot back to its rows');
    expect(await writesThroughFreshRouter(slot, keys)).toEqual([`acknowledged on ${B} (1 row)`, `acknowledged on ${B} (1 row)`]);
  }, 120_000);

  it("reopens no moved row of a slot given back past the stores over a hand change's dead fence on the shard holding its rows", async () => {
    const slot = 2402;
    const { A, B, keys, model } = await slotWrittenOnB(slot);
    // A hand change giving it back to A whose process died after its fence on B: refused for the slot's rows there, its put-back lost.
    const { pools, dying } = dyingAfterFence(env.shards, B, env.urls.shards[B] as string);
    try {
      const store = new SlotMapStore(env.catalog, { shardPools: pools });
      expect(await refusalOf(store.publishByHand(moveSlots(await store.current(), [slot], A), 'the slot back to A'))).toBeInstanceOf(SlotMapRowsLeftError);
    } finally {
      await dying.end();
    }
    expect(await unitFenceState(env.shards.get(B) as pg.Pool, 'slot', String(slot))).toBe('fenced');
    await givenBackPastTheStores(slot, A);
    const settled = await review();
    const again = await review();
    // B's dead fence is set moved to A (it refuses either way); A's row stays, in both reviews.
    expect(await writesThroughFreshRouter(slot, keys)).toEqual([expect.stringMatching(/^refused/), expect.stringMatching(/^refused/)]);
    expect(await placementViolations(env, 'user 0', keys[0] as string, B, model)).toEqual([]);
    expect(rowOf(settled.rows, B, slot)?.outcome).toMatch(new RegExp(`^settled: moved to ${A}`));
    for (const r of [settled, again]) {
      expect(rowOf(r.rows, A, slot)?.outcome).toMatch(new RegExp(`^left: the slot's rows are on ${B} \\(1 in users, 1 in documents; less those of keys the directory pins\\), where this row sends its writes, and ${B} has only a hand change's '(fenced|moved)' row of the slot over them`));
    }
  }, 120_000);

  it("reopens no fenced row of a slot whose hand change died after its commit, given back past the stores while its rows stayed on the shard that change gave it to", async () => {
    const slot = 2404;
    const { from: A, to: B } = await threeShardsOf(env, slot);
    // Given to B by hand by a process that died after its fence on A: published, A's row left fenced (its settle lost).
    const { pools, dying } = dyingAfterFence(env.shards, A, env.urls.shards[A] as string);
    try {
      const published = new SlotMapStore(env.catalog, { shardPools: pools }).publishByHand(moveSlots(await env.slotMaps.current(), [slot], B), 'the slot to B by hand');
      expect(String(await refusalOf(published))).toMatch(/the owner change was written, but its fences could not all be settled/);
    } finally {
      await dying.end();
    }
    expect({ owner: await env.ownerOf(slot), fence: await unitFenceState(env.shards.get(A) as pg.Pool, 'slot', String(slot)) }).toEqual({ owner: B, fence: 'fenced' });
    const keys = keysInSlot(slot, 2);
    const model: UserModel = { exists: false, name: '', docs: new Set() };
    const ctx: ModelWrites = { writers: [await freshWriter()], model: [[model]], keys: [keys.slice(0, 1)], slots: [slot], log: [], violations: [] };
    await runModelWrites(ctx, [
      { writer: 0, slot: 0, user: 0, op: 'insert' },
      { writer: 0, slot: 0, user: 0, op: 'doc' },
    ]);
    expect(ctx.violations).toEqual([]);
    await givenBackPastTheStores(slot, A);
    const settled = await review();
    expect(await writesThroughFreshRouter(slot, keys)).toEqual([expect.stringMatching(/^refused/), expect.stringMatching(/^refused/)]);
    expect(await placementViolations(env, 'user 0', keys[0] as string, B, model)).toEqual([]);
    expect(rowOf(settled.rows, A, slot)?.outcome).toMatch(new RegExp(`^left: the slot's rows are on ${B} \\(1 in users, 1 in documents; less those of keys the directory pins\\)`));
  }, 120_000);

  it("reopens a slot's moved row whose moved_to shard holds only rows of the slot's keys pinned there or elsewhere (not the slot's: their pins route them)", async () => {
    const slot = 2403;
    const { from: A, to: B, third: C } = await threeShardsOf(env, slot);
    const { slotMaps, directory } = countingStores(env);
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], B), 'the slot to B by hand');
    const [onB, onC, after] = keysInSlot(slot, 3) as [string, string, string];
    // A key of the slot pinned to B and one pinned to C, each with its rows there.
    await directory.set(onB, B, 'ops@example.com');
    await seedUsers(env.shards.get(B) as pg.Pool, slot, [onB], 2);
    await directory.set(onC, C, 'ops@example.com');
    await seedUsers(env.shards.get(C) as pg.Pool, slot, [onC], 1);
    await givenBackPastTheStores(slot, A);
    const settled = await review();
    expect(rowOf(settled.rows, A, slot)?.outcome).toBe(`settled: reopened (deleted), ${A} takes the slot's writes`);
    const writer = await freshWriter();
    const written = await writer.withShardWrite(after, async ({ client }) => (await client.query(`insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'after')`, [after, slot])).rowCount);
    expect({ shard: written.shardId, rows: written.value }).toEqual({ shard: A, rows: 1 });
  }, 120_000);
});

describe("a slot's rows moved on from the shard its row sends them to", () => {
  it("reopens no moved row whose moved_to shard moved the slot on to a third shard by a finished move, the slot given back past the stores while its rows stayed there: reopened, the map's owner took the slot's writes out of sight of its rows", async () => {
    const slot = 2406;
    const { A, B, C, keys, model } = await slotWrittenOnB(slot);
    // The slot moved on from B to C by a move (B's row moved to C, by the job; its rows copied, B's deleted).
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to: C, createdBy: 'test' })).id)).state).toBe('done');
    expect(await unitFenceState(env.shards.get(B) as pg.Pool, 'slot', String(slot))).toBe('moved');
    await givenBackPastTheStores(slot, A);
    const settled = await review();
    // Reopened (B's rows behind its moved row taken for the move's leftovers, C never counted), A took the new user, the rename touched nothing.
    expect(await writesThroughFreshRouter(slot, keys)).toEqual([expect.stringMatching(/^refused/), expect.stringMatching(/^refused/)]);
    expect(await unitFenceState(env.shards.get(A) as pg.Pool, 'slot', String(slot))).toBe('moved');
    expect(await placementViolations(env, 'user 0', keys[0] as string, C, model)).toEqual([]);
    expect(rowOf(settled.rows, A, slot)?.outcome).toMatch(new RegExp(`^left: the slot's rows are on ${C} \\(1 in users, 1 in documents; less those of keys the directory pins\\), where this row sends its writes \\(moved on from ${B}\\)`));
  }, 120_000);
});

describe("a key of the slot unpinned past the stores, its rows on the third shard it was pinned to", () => {
  it("reopens no moved row of the slot where a key of it, pinned to a third shard through the stores, was unpinned past them, its rows staying there: reopened, the map's owner took the key's writes out of sight of its rows", async () => {
    const slot = 2407;
    const { A, B, C, keys } = await slotWrittenOnB(slot);
    const pinned = keys[2] as string;
    // The slot's own rows on B emptied (its first user deleted where it lives), then the slot given back to A past the stores: honest for the slot's rows.
    await (await freshWriter()).withShardWrite(keys[0] as string, async ({ client }) => client.query('delete from users where id = $1', [keys[0]]));
    await givenBackPastTheStores(slot, A);
    // The key pinned to C (B's row of it moved to C) unpinned past the stores' guard, which refuses it for its rows on C: it routes by the slot to A now.
    expect(await unitFenceState(env.shards.get(B) as pg.Pool, 'directory', pinned)).toBe('moved');
    expect(await deletePinPastGuard(env.catalog, pinned)).toBe(true);
    const rename = async (): Promise<string> =>
      (await freshWriter()).withShardWrite(pinned, async ({ client }) => (await client.query(`update users set display_name = 'renamed' where id = $1`, [pinned])).rowCount).then(
        (r) => `acknowledged on ${r.shardId} (${String(r.value)} row)`,
        (e: Error) => `refused: ${e.message.slice(0, 60)}`,
      );
    expect(await rename()).toMatch(/^refused/);
    const settled = await review();
    // Reopened, A acknowledged the key's rename touching nothing, its user on C, out of A's readers' sight.
    expect(await rename()).toMatch(/^refused/);
    expect(await unitFenceState(env.shards.get(A) as pg.Pool, 'slot', String(slot))).toBe('moved');
    expect(rowOf(settled.rows, A, slot)?.outcome).toMatch(new RegExp(`^left: the rows of key ${pinned} of the slot are on ${C} \\(1 in users, 1 in documents\\), and the key routes by the slot now \\(no pin\\), though a pin once sent it elsewhere`));
  }, 120_000);
});

describe("rows of the unit elsewhere that are a finished move's leftovers, not its live rows", () => {
  it("reopens a key's dead pin-change fence where the key's only rows on another shard are a finished slot move's leftovers behind that shard's moved row of the key's slot (counted as live, the key was refused for good)", async () => {
    const slot = 2405;
    const { from: A, to: B, third: C } = await threeShardsOf(env, slot);
    const [source, target] = [env.shards.get(A) as pg.Pool, env.shards.get(B) as pg.Pool];
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 1);
    // A document of the user under another slot, written before shard migration 015 (its foreign
    // keys skipped): the slot move's clean-up keeps the user on A, behind A's `moved` row of the slot.
    await source.query(`begin; set local session_replication_role = replica; insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), '${key}', ${slot + 100}, 'before 015'); commit`);
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to: B, createdBy: 'test' })).id)).state).toBe('done');
    expect({ kept: (await source.query('select 1 from users where id = $1', [key])).rows.length, fence: await unitFenceState(source, 'slot', String(slot)) }).toEqual({ kept: 1, fence: 'moved' });
    // A pin of the key to C by a process that died after its fence on B: refused for the key's rows
    // there (counted after the fence), its put-back lost; the key still routes to B by hash.
    const { pools, dying } = dyingAfterFence(env.shards, B, env.urls.shards[B] as string);
    try {
      const store = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: pools });
      expect(await refusalOf(store.set(key, C, 'ops@example.com'))).toBeInstanceOf(DirectoryRowsLeftError);
    } finally {
      await dying.end();
    }
    expect({ pin: await env.directory.get(key), fence: await unitFenceState(target, 'directory', key) }).toEqual({ pin: null, fence: 'fenced' });
    const settled = await review();
    // Left, B refused the key's writes (CAF01) for good, for rows on A no reader routes to: the
    // move's leftovers, which A's moved row of the slot keeps out of sight (and pinned back to A as
    // the row asked, the key's readers had read them as they were before the move).
    const row = settled.rows.find((r) => r.shard === B && r.kind === 'directory' && r.unitId === key);
    expect(row).toMatchObject({ route: B, action: 'reopen' });
    expect(row?.outcome).toBe(`settled: reopened (deleted), ${B} takes the key's writes`);
    const writer = await freshWriter();
    const written = await writer.withShardWrite(key, async ({ client }) => (await client.query(`update users set display_name = 'renamed' where id = $1`, [key])).rowCount);
    expect({ shard: written.shardId, rows: written.value }).toEqual({ shard: B, rows: 1 });
  }, 120_000);
});

describe("chains of moved rows the review follows: cycles, and a shard not read", () => {
  /** `moved` rows (no move's: left by hand changes) of `slot`, an hour old, at the current map's version: `[on, movedTo]` each. */
  async function movedRows(slot: number, rows: ReadonlyArray<readonly [string, string]>): Promise<() => Promise<void>> {
    const version = (await env.slotMaps.current()).version;
    for (const [on, to] of rows) {
      await (env.shards.get(on) as pg.Pool).query(
        `insert into write_fences (kind, unit_id, state, moved_to, map_version, updated_at) values ('slot', $1, 'moved', $2, $3, now() - interval '1 hour')`,
        [String(slot), to, version],
      );
    }
    return async () => {
      for (const [on] of rows) await (env.shards.get(on) as pg.Pool).query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    };
  }

  it("follows a cycle of moved rows past the one judged (A to B, B to C, C to B; A to B, B to C, C to A) to its end, withholding the reopen over the slot's rows on C, reopening where none are", async () => {
    for (const [slot, closing, rows] of [[2410, 'B', true], [2411, 'A', true], [2413, 'B', false], [2414, 'A', false]] as const) {
      const { from: A, to: B, third: C } = await threeShardsOf(env, slot);
      const key = keysInSlot(slot, 1)[0] as string;
      const onC = env.shards.get(C) as pg.Pool;
      if (rows) await seedUsers(onC, slot, [key], 1);
      const drop = await movedRows(slot, [[A, B], [B, C], [C, closing === 'B' ? B : A]]);
      try {
        const listed = await listFences({ catalog: env.catalog, shards: env.shards, timeoutMs: 10_000, routing: PINS_ROUTE });
        const row = rowOf(listed.rows, A, slot);
        expect(row, `slot ${slot}, closing on ${closing}`).toMatchObject({ action: 'reopen' });
        if (rows) expect(row?.withheld, `closing on ${closing}`).toMatch(new RegExp(`^the slot's rows are on ${C} \\(1 in users, 1 in documents; less those of keys the directory pins\\), where this row sends its writes \\(moved on from ${B}\\)`));
        else expect(row?.withheld, `closing on ${closing}`).toBeUndefined();
      } finally {
        await drop();
        await onC.query('delete from documents where owner_id = $1', [key]);
        await onC.query('delete from users where id = $1', [key]);
      }
    }
  }, 120_000);

  it("withholds the reopen where the chain passes through a shard the review was not given, naming it", async () => {
    const slot = 2412;
    const { from: A, to: B, third: C } = await threeShardsOf(env, slot);
    const drop = await movedRows(slot, [[A, B], [B, C]]);
    try {
      const given = new Map([...env.shards].filter(([id]) => id !== C));
      const listed = await listFences({ catalog: env.catalog, shards: given, timeoutMs: 10_000, routing: PINS_ROUTE });
      expect(rowOf(listed.rows, A, slot)?.withheld).toMatch(new RegExp(`^${C}, where this row sends its writes \\(moved on from ${B}\\), was not read`));
    } finally {
      await drop();
    }
  }, 120_000);
});

describe("the cost of counting the units' rows on other shards: keys on every other shard, slots where a map since gave them", () => {
  it("lists 2,000 pin changes' dead fences, each key counted on every other shard, in a few statements a shard (one a key and a shard took 24.7 s at a 1 ms round trip, of the API's 27 s)", async () => {
    const map = await env.slotMaps.current();
    const R = map.assignments[3000] as string;
    const keys = map.assignments.flatMap((o, slot) => (o === R && slot >= 3000 ? keysInSlot(slot, 2) : [])).slice(0, 2000);
    expect(keys).toHaveLength(2000);
    const pool = env.shards.get(R) as pg.Pool;
    // Left by pin changes that died after their fence, before their commit, an hour ago: each key routes to R by hash.
    await pool.query(`insert into write_fences (kind, unit_id, state) select 'directory', k, 'fenced' from unnest($1::text[]) k`, [keys]);
    try {
      await pool.query(`update write_fences set updated_at = now() - interval '1 hour' where kind = 'directory' and unit_id = any($1::text[])`, [keys]);
      const { listed, sent, tookMs } = await listFencesAtDistance(env, 10_000);
      const ours = listed.rows.filter((r) => r.shard === R && r.kind === 'directory' && keys.includes(r.unitId));
      expect({ rows: ours.length, reopen: ours.filter((r) => r.action === 'reopen' && r.withheld === undefined).length }).toEqual({ rows: 2000, reopen: 2000 });
      console.log(`listFences over 2,000 fenced key rows: ${sent.n} statements, ${tookMs} ms`);
      // The time is printed, not asserted (bench/ checks timings): the statements sent are the cost that grew.
      expect({ few: sent.n < 100 }).toEqual({ few: true });
    } finally {
      await pool.query(`delete from write_fences where kind = 'directory' and unit_id = any($1::text[])`, [keys]);
    }
  }, 120_000);

  it("counts 20,000 keys in one statement a shard, as each is counted alone, whatever their form (upper case, braces, not a UUID)", async () => {
    const slot = 2415;
    const owner = await env.ownerOf(slot);
    const pool = env.shards.get(owner) as pg.Pool;
    const [a, b, c] = keysInSlot(slot, 3) as [string, string, string];
    await seedUsers(pool, slot, [a, b, c], 2);
    try {
      const others = Array.from({ length: 19_995 }, () => randomUUID());
      const asked = [...others, a, b.toUpperCase(), `{${c}}`, 'tenant-acme', c];
      expect(asked).toHaveLength(20_000);
      const started = Date.now();
      const counted = await keysRowsOn(pool, asked);
      const tookMs = Date.now() - started;
      const alone = async (k: string): Promise<unknown> => keyRowsOn(pool, k);
      expect({ a: counted.get(a), B: counted.get(b.toUpperCase()), braced: counted.get(`{${c}}`), c: counted.get(c), tenant: counted.get('tenant-acme'), keys: counted.size }).toEqual({
        a: await alone(a),
        B: await alone(b.toUpperCase()),
        braced: await alone(`{${c}}`),
        c: await alone(c),
        tenant: undefined,
        keys: 4,
      });
      expect(counted.get(a)).toEqual([
        { table: 'users', rows: 1 },
        { table: 'documents', rows: 2 },
      ]);
      console.log(`keysRowsOn over 20,000 keys: ${tookMs} ms`);
    } finally {
      await pool.query('delete from documents where owner_id = any($1::uuid[])', [[a, b, c]]);
      await pool.query('delete from users where id = any($1::uuid[])', [[a, b, c]]);
    }
  }, 120_000);

  it("withholds every key row counted on a shard that fails the batch, saying so, and the listing still answers", async () => {
    const map = await env.slotMaps.current();
    const R = map.assignments[2416] as string;
    const F = [...env.shards.keys()].find((s) => s !== R) as string;
    const keys = keysInSlot(2416, 3);
    const pool = env.shards.get(R) as pg.Pool;
    await pool.query(`insert into write_fences (kind, unit_id, state, updated_at) select 'directory', k, 'fenced', now() - interval '1 hour' from unnest($1::text[]) k`, [keys]);
    const failing = (p: pg.Pool): pg.Pool =>
      new Proxy(p, {
        get(t, prop) {
          if (prop === 'connect')
            return async () => {
              const client = await p.connect();
              return new Proxy(client, {
                get(ct, cprop) {
                  if (cprop === 'query')
                    return async (...a: unknown[]) => {
                      if (typeof a[0] === 'string' && a[0].includes('any($1::uuid[])')) throw Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014' });
                      return (client.query as (...x: unknown[]) => Promise<unknown>).apply(client, a);
                    };
                  const value = Reflect.get(ct, cprop, ct) as unknown;
                  return typeof value === 'function' ? (value as (...x: unknown[]) => unknown).bind(ct) : value;
                },
              });
            };
          const value = Reflect.get(t, prop, t) as unknown;
          return typeof value === 'function' ? (value as (...x: unknown[]) => unknown).bind(t) : value;
        },
      });
    try {
      const failures: string[] = [];
      const listed = await listFences({
        catalog: env.catalog,
        shards: new Map([...env.shards].map(([id, p]) => [id, id === F ? failing(p) : p])),
        timeoutMs: 10_000,
        routing: PINS_ROUTE,
        onFailure: (f) => failures.push(`${f.what} on ${f.shardId}`),
      });
      const ours = listed.rows.filter((r) => r.shard === R && r.kind === 'directory' && keys.includes(r.unitId));
      expect(ours.map((r) => r.withheld).sort()).toEqual([...keys].sort().map((k) => `key ${k}'s rows on ${F} could not be counted (the read ran past its time limit (statement_timeout)): settle again once ${F} answers`));
      expect(failures).toEqual([`counting keys' rows on ${F}`]);
    } finally {
      await pool.query(`delete from write_fences where kind = 'directory' and unit_id = any($1::text[])`, [keys]);
    }
  }, 120_000);

  it("lists 500 hand changes' dead slot fences, each slot counted where a map since gave it, in a few statements a shard and on the catalog", async () => {
    const before = await env.slotMaps.current();
    const R = before.assignments[100] as string;
    const B = [...env.shards.keys()].find((s) => s !== R) as string;
    const slots = before.assignments.flatMap((o, slot) => (o === R && slot >= 100 && slot < 2400 ? [slot] : [])).slice(0, 500);
    expect(slots).toHaveLength(500);
    // Given to B and back to R past the stores (a caller's word: nothing counted, nothing fenced),
    // then rows left by hand changes of those slots that died after their fence, an hour ago, at
    // the map before: each slot counted on B (no rows there), then reopened.
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    await store.publishByHand(moveSlots(await store.current(), slots, B), '500 slots to B, rows "checked"', env.catalog, { rowsLeftOn: 'checked' });
    await store.publishByHand(moveSlots(await store.current(), slots, R), '500 slots back to R, rows "checked"', env.catalog, { rowsLeftOn: 'checked' });
    const pool = env.shards.get(R) as pg.Pool;
    const ids = slots.map(String);
    await pool.query(`insert into write_fences (kind, unit_id, state, map_version) select 'slot', s, 'fenced', $2::bigint from unnest($1::text[]) s`, [ids, before.version]);
    // Three of them with rows on B, each counted as rowsBehind counts one: a user of the first
    // there (withheld); of the second, a key the directory pins (to B: its pin routes it, not the
    // slot); of the third, a key its row keeps out (its excluded_keys).
    const [withRows, withPinned, withExcluded] = slots as [number, number, number];
    const [liveKey, pinnedKey, excludedKey] = [keysInSlot(withRows, 1)[0], keysInSlot(withPinned, 1)[0], keysInSlot(withExcluded, 1)[0]] as [string, string, string];
    const onB = env.shards.get(B) as pg.Pool;
    await seedUsers(onB, withRows, [liveKey], 2);
    await seedUsers(onB, withPinned, [pinnedKey], 1);
    await seedUsers(onB, withExcluded, [excludedKey], 1);
    await env.catalog.query(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, 'test')`, [pinnedKey, B]);
    await pool.query(`update write_fences set excluded_keys = array[$2::text] where kind = 'slot' and unit_id = $1`, [String(withExcluded), excludedKey]);
    try {
      await pool.query(`update write_fences set updated_at = now() - interval '1 hour' where kind = 'slot' and unit_id = any($1::text[])`, [ids]);
      const { listed, sent, tookMs } = await listFencesAtDistance(env, 10_000);
      const ours = listed.rows.filter((r) => r.shard === R && r.kind === 'slot' && ids.includes(r.unitId));
      expect({ rows: ours.length, reopen: ours.filter((r) => r.action === 'reopen' && r.withheld === undefined).length }).toEqual({ rows: 500, reopen: 499 });
      expect(rowOf(ours, R, withRows)?.withheld).toMatch(new RegExp(`^the slot's rows are on ${B} \\(1 in users, 2 in documents; less those of keys the directory pins\\), which a map published since this row's version ${before.version} gave the slot to`));
      expect({ pinned: rowOf(ours, R, withPinned)?.withheld, excluded: rowOf(ours, R, withExcluded)?.withheld }).toEqual({ pinned: undefined, excluded: undefined });
      console.log(`listFences over 500 fenced slot rows: ${sent.n} statements, ${tookMs} ms`);
      // 2,511 statements and 4.1 to 5.6 s here counted one at a time; 17 and about 0.1 s at once.
      expect({ sent: sent.n < 100 ? 'under 100' : sent.n }).toEqual({ sent: 'under 100' });
    } finally {
      await pool.query(`delete from write_fences where kind = 'slot' and unit_id = any($1::text[])`, [ids]);
      await env.catalog.query('delete from catalog.shard_directory where key = $1', [pinnedKey]);
      for (const key of [liveKey, pinnedKey, excludedKey]) {
        await onB.query('delete from documents where owner_id = $1', [key]);
        await onB.query('delete from users where id = $1', [key]);
      }
    }
  }, 120_000);
});
