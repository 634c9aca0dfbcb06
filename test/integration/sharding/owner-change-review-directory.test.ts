/**
 * Issue #15: a key's `directory` rows in the review of the fence rows hand changes leave
 * (`ca-dms-scaling shards fences --settle`, functions/adapters/postgres/fence-review.ts). A pin
 * changed by hand (`DirectoryStore.set`, `repinByHand`, given the shards' pools) fences the key's
 * row on its old owner as a map published by hand fences a slot's, and leaves the same rows when
 * its process dies or it runs inside a caller's transaction. Where the key routes (its pin, or its
 * slot's owner by hash) depends on whether pins override the hash, which only the sharding
 * configuration tells: given it (`routing`), the review settles a key's rows by the rules it
 * applies to a slot's, judged by the key's route; without it, or where pins route no key, it
 * leaves them to the operator and says why.
 *
 * Each rule has the harm it prevents: a stale router's write acknowledged where no reader looks
 * (a row reopened under a pin change in flight; a row judged by the slot's owner instead of the
 * key's pin), rows read again that no one had seen since (rows left behind a `moved` row), a key's
 * writes taken where its rows are not (its route changed past the stores), and a key refused for
 * good where its pin sends it (a row deleted whose slot's row then decided for it).
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../../bin/commands/kit.js';
import { createShardsCommand } from '../../../bin/commands/shards.js';
import { DirectoryRowsLeftError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { reviewFences, type FenceReviewOptions, type ReviewedFence } from '../../../functions/adapters/postgres/fence-review.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { captureIo, deployedDocument, fencesCliUrls } from './fixtures/fences-cli.js';
import { countingStores, deletePinPastGuard, documentWrittenFor, keysInSlot, lockWaitOn, moveStoppedAfterRelease, otherProcess, refusalOf, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv, dyingAfterFence as dyingAfterFenceOf } from './fixtures/move-env.js';
import { staleWriter } from './fixtures/torture-writes.js';

let env: MoveEnv;
let directory: DirectoryStore;
beforeAll(async () => {
  env = await startMoveEnv();
  directory = countingStores(env).directory;
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** The routing of hash_based with directory.override_hash on (the default, and local mode's): a pin routes its key. */
const PINS_ROUTE: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' };

function review(options: Partial<FenceReviewOptions> = {}): ReturnType<typeof reviewFences> {
  return reviewFences({ catalog: env.catalog, shards: env.shards, routing: PINS_ROUTE, ...options });
}

function keyRow(rows: readonly ReviewedFence[], shard: string, key: string): ReviewedFence | undefined {
  return rows.find((r) => r.shard === shard && r.kind === 'directory' && r.unitId === key);
}

async function directoryRow(pool: pg.Pool, key: string): Promise<{ state: string; moved_to: string | null; map_version: string; job_id: string | null } | undefined> {
  const { rows } = await pool.query<{ state: string; moved_to: string | null; map_version: string; job_id: string | null }>(
    `select state, moved_to, map_version::text, job_id::text from write_fences where kind = 'directory' and unit_id = $1`,
    [key],
  );
  return rows[0];
}

const dyingAfterFence = (shard: string): { pools: Map<string, pg.Pool>; dying: pg.Pool } => dyingAfterFenceOf(env.shards, shard, env.urls.shards[shard] as string);

/** `key`'s user written through the env's router (its pins, fences and CAF02 re-routes): where it landed. */
function userWrittenThroughRouter(key: string): Promise<string> {
  return env.writer
    .withShardWrite(key, async ({ client, slot }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'after')`, [key, slot, `${key}@example.com`]);
    })
    .then(
      (r) => `written on ${r.shardId}`,
      (e: Error) => `failed: ${e.message.slice(0, 200)}`,
    );
}

/** A write of `key`'s user straight to `pool`, as a router with a stale route makes it: `'acknowledged'` or `'refused <SQLSTATE>'`. */
function staleUserWrite(pool: pg.Pool, slot: number, key: string): Promise<string> {
  return seedUsers(pool, slot, [key], 1).then(
    () => 'acknowledged',
    (e: { code?: string }) => `refused ${e.code ?? '?'}`,
  );
}

/** What a reader routed as of now (a fresh process) reads of `key`'s user, or null where it reads none or is refused. */
async function readerSees(key: string): Promise<string | null> {
  const reader = (await otherProcess(env, { ttlMs: 0 })).reader;
  return reader
    .withShardRead(key, async ({ client }) => (await client.query<{ u: string }>('select email as u from users where id = $1', [key])).rows.map((r) => r.u))
    .then(
      ({ value }) => value[0] ?? null,
      () => null,
    );
}

/**
 * A pin change of `key` to `to` by a DirectoryStore whose process dies once `dyingOn`'s fence is
 * taken (dyingAfterFence): what the change answered (its refusal, or its error).
 */
async function pinChangeDyingAfterFence(dyingOn: string, key: string, to: string): Promise<unknown> {
  const { pools, dying } = dyingAfterFence(dyingOn);
  try {
    const store = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: pools });
    return await refusalOf(store.set(key, to, 'ops@example.com'));
  } finally {
    await dying.end();
  }
}

describe('a pin changed by hand whose process died between its fence and its put-back or settle', () => {
  it('before its commit: the old owner left fenced where the key still routes; without the configuration (or with pins routing no key) left to the operator, with it reopened, and the key\'s writes land there again', async () => {
    const slot = 2301;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 1);
    // Refused for the key's rows (after the fence), its put-back lost with the process.
    expect(await pinChangeDyingAfterFence(from, key, to)).toBeInstanceOf(DirectoryRowsLeftError);
    expect({ pin: await env.directory.get(key), fence: await unitFenceState(source, 'directory', key), write: await staleUserWrite(source, slot, keysInSlot(slot, 2)[1] as string) }).toEqual({
      pin: null,
      fence: 'fenced',
      write: 'acknowledged',
    });
    expect(await refusalOf(source.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'refused')`, [key, slot]))).toMatchObject({ code: 'CAF01' });

    const unknown = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0 });
    expect(keyRow(unknown.rows, from, key)).toMatchObject({ state: 'fenced', action: 'none' });
    expect(keyRow(unknown.rows, from, key)?.outcome).toBeUndefined();
    expect(keyRow(unknown.rows, from, key)?.diagnosis).toMatch(/not settled: the review was not given the sharding configuration.*SHARDING_CONFIG_JSON.*--local/);
    const off = await review({ routing: { ...PINS_ROUTE, overrideHash: false }, settle: true, olderThanMs: 0 });
    expect(keyRow(off.rows, from, key)?.diagnosis).toMatch(/with strategy hash_based and directory.override_hash off no pin routes the key/);
    expect(await unitFenceState(source, 'directory', key)).toBe('fenced');

    const listed = await review();
    expect(keyRow(listed.rows, from, key)).toMatchObject({ route: from, action: 'reopen' });
    expect(keyRow(listed.rows, from, key)?.diagnosis).toMatch(new RegExp(`left fenced by a hand change of the key's pin that did not finish.*still routes to ${from} \\(by hash: slot ${slot}`));
    expect(keyRow(listed.rows, from, key)?.withheld).toMatch(/^last written \d+ s ago, under --older-than 900 s/);
    const settled = await review({ settle: true, olderThanMs: 0 });
    expect(keyRow(settled.rows, from, key)?.outcome).toBe(`settled: reopened (deleted), ${from} takes the key's writes`);
    expect(await unitFenceState(source, 'directory', key)).toBeUndefined();
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
    expect((await source.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [key])).rows[0]?.n).toBe(2);
  }, 120_000);

  it('after its commit: the old owner left fenced where the key no longer routes; set moved to the pin (judged by its slot\'s owner it was reopened, and a stale router\'s write acknowledged there)', async () => {
    const slot = 2302;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    expect(String(await pinChangeDyingAfterFence(from, key, to))).toMatch(/the owner change was written, but its fences could not all be settled/);
    const pin = await env.directory.entry(key);
    expect({ pin: pin?.shardId, fence: await unitFenceState(source, 'directory', key) }).toEqual({ pin: to, fence: 'fenced' });
    // The key's slot is still `from`'s: judged by the map alone, this row looked like one on its owner.
    expect(await env.ownerOf(slot)).toBe(from);
    const settled = await review({ settle: true, olderThanMs: 0 });
    expect(await staleUserWrite(source, slot, key)).toBe('refused CAF02');
    expect(await directoryRow(source, key)).toEqual({ state: 'moved', moved_to: to, map_version: String(pin?.version), job_id: null });
    expect(keyRow(settled.rows, from, key)).toMatchObject({ owner: from, route: to, action: 'set moved', outcome: `settled: moved to ${to} as of directory version ${pin?.version ?? '?'}` });
    expect(await userWrittenThroughRouter(key)).toBe(`written on ${to}`);
  }, 120_000);
});

describe("a pin changed inside a caller's transaction", () => {
  it('that commits: the new owner\'s older moved row refuses the key where its pin sends it; reopened, the writes land there', async () => {
    const slot = 2303;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, to, 'ops@example.com');
    const client = await env.catalog.connect();
    try {
      await client.query('begin');
      await directory.set(key, from, 'ops@example.com', client);
      await client.query('commit');
    } finally {
      client.release();
    }
    expect({ pin: await env.directory.get(key), here: await directoryRow(source, key), there: (await directoryRow(target, key))?.state }).toMatchObject({ pin: from, here: { state: 'moved', moved_to: to }, there: 'moved' });
    expect(await staleUserWrite(source, slot, key)).toBe('refused CAF02');
    // Without the configuration the row on the key's pin is listed (its pin's shard), the other's not.
    const unknown = await reviewFences({ catalog: env.catalog, shards: env.shards });
    expect({ here: keyRow(unknown.rows, from, key)?.action, there: keyRow(unknown.rows, to, key) }).toEqual({ here: 'none', there: undefined });
    const settled = await review({ settle: true, olderThanMs: 0 });
    expect(keyRow(settled.rows, from, key)).toMatchObject({ route: from, action: 'reopen', outcome: `settled: reopened (deleted), ${from} takes the key's writes` });
    expect(keyRow(settled.rows, from, key)?.diagnosis).toMatch(/moved row on the shard the key routes to \(its pin, directory version \d+\)/);
    expect(keyRow(settled.rows, to, key)).toBeUndefined();
    expect(await userWrittenThroughRouter(key)).toBe(`written on ${from}`);
  }, 120_000);

  it("that rolls back, the key pinned to a shard its slot left: reopened as an open row (deleted, the slot's moved row there refused the key's writes for good)", async () => {
    const slot = 2304;
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { slotMaps } = countingStores(env);
    // The slot given to `to` and back by hand: `to` keeps a `moved` row of it that keeps no key out.
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'to the other shard');
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], from), 'and back');
    expect(await directoryRow(target, key)).toBeUndefined();
    expect((await target.query<{ state: string; excluded_keys: string[] }>(`select state, excluded_keys from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows[0]).toEqual({ state: 'moved', excluded_keys: [] });
    // The key moved there by a directory move: its own `open` row there decides for it.
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'directory', key, to, createdBy: 'test' })).id)).state).toBe('done');
    expect((await directoryRow(target, key))?.state).toBe('open');
    const client = await env.catalog.connect();
    try {
      await client.query('begin');
      await directory.repinByHand(key, from, 'back to its slot (ticket OPS-12)', client);
      await client.query('rollback');
    } finally {
      client.release();
    }
    expect({ pin: await env.directory.get(key), there: await directoryRow(target, key) }).toMatchObject({ pin: to, there: { state: 'moved', moved_to: from, job_id: null } });
    expect(await userWrittenThroughRouter(key)).toMatch(/^failed: /);
    // Without the configuration it is listed (the key's pin's shard, not its slot's owner) and left.
    expect(keyRow((await reviewFences({ catalog: env.catalog, shards: env.shards })).rows, to, key)).toMatchObject({ state: 'moved', action: 'none' });
    const settled = await review({ settle: true, olderThanMs: 0 });
    expect(await userWrittenThroughRouter(key)).toBe(`written on ${to}`);
    expect((await directoryRow(target, key))?.state).toBe('open');
    expect(keyRow(settled.rows, to, key)).toMatchObject({ route: to, action: 'reopen' });
    expect(keyRow(settled.rows, to, key)?.outcome).toMatch(new RegExp(`^settled: reopened \\(set open\\), ${to} takes the key's writes \\(deleted, its slot ${slot}'s row there, moved to ${from}, would refuse them`));
  }, 120_000);
});

describe('what the review refuses to settle of a key', () => {
  it('reopens nothing while a pin change holds the key fenced between its fence and its commit (reopened, a stale router\'s write was acknowledged on the old owner)', async () => {
    const slot = 2305;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    // A writer of another key on the old owner, uncommitted: the pin change waits for it after its fence.
    const writer = await source.connect();
    try {
      await writer.query('begin isolation level read committed');
      await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'w@example.com', 'w')`, [keysInSlot(slot + 1, 1)[0], slot + 1]);
      const change = refusalOf(directory.set(key, to, 'ops@example.com'));
      for (let i = 0; i < 500 && (await unitFenceState(source, 'directory', key)) !== 'fenced'; i++) await new Promise((r) => setTimeout(r, 20));
      expect(await unitFenceState(source, 'directory', key)).toBe('fenced');
      const settled = await review({ settle: true, olderThanMs: 0 });
      expect(await unitFenceState(source, 'directory', key)).toBe('fenced');
      expect(settled.changeInFlight).toMatch(/a hand change of the slot map holds catalog.owner_change_review/);
      expect(keyRow(settled.rows, from, key)).toMatchObject({ route: from, action: 'reopen', outcome: 'left: a hand change is in flight (catalog.owner_change_review held): try again once it has ended' });
      await writer.query('commit');
      expect(await change).toBeNull();
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
    }
    // Reopened under the change, the old owner had no row of the key once it published: a stale router's write was acknowledged there.
    expect(await staleUserWrite(source, slot, key)).toBe('refused CAF02');
    expect({ pin: await env.directory.get(key), fence: await unitFenceState(source, 'directory', key) }).toEqual({ pin: to, fence: 'moved' });
  }, 60_000);

  it("leaves a hand row of a key whose slot's move is past its flip and unfinished (its clean-up deletes the slot's rows on its source)", async () => {
    const slot = 2306;
    const { to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const job = await moveStoppedAfterRelease(env, slot, to);
    // What a pin change killed after its fence leaves on the shard the key routes to (by hash, its slot's new owner).
    await target.query(`insert into write_fences (kind, unit_id, state, job_id) values ('directory', $1, 'fenced', null)`, [key]);
    try {
      const settled = await review({ settle: true, olderThanMs: 0 });
      expect(await unitFenceState(target, 'directory', key)).toBe('fenced');
      expect(keyRow(settled.rows, to, key)).toMatchObject({ route: to, action: 'reopen', outcome: `left: move job #${job} of the key's slot ${slot} is unfinished (cleaning_up): settle once it has ended` });
    } finally {
      expect((await env.mover({ readerGraceMs: 0 }).run(job)).state).toBe('done');
      await target.query(`delete from write_fences where kind = 'directory' and unit_id = $1`, [key]);
    }
  }, 60_000);

  it("reopens a pin change's dead fence on the source of a directory move planned since, which the move's runs refuse to take over (left for the move, the key's writes were refused until someone cancelled it)", async () => {
    const slot = 2315;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 1);
    expect(await pinChangeDyingAfterFence(from, key, to)).toBeInstanceOf(DirectoryRowsLeftError);
    expect(await unitFenceState(source, 'directory', key)).toBe('fenced');
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect(String(await refusalOf(mover.run(job.id)))).toMatch(/is fenced by a hand change of its owner \(job_id null\).*this move does not take it over/);
    const settled = await review({ settle: true, olderThanMs: 0 });
    expect(keyRow(settled.rows, from, key)?.outcome).toBe(`settled: reopened (deleted), ${from} takes the key's writes`);
    expect((await mover.run(job.id)).state).toBe('done');
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
    expect((await target.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [key])).rows[0]?.n).toBe(2);
  }, 120_000);

  it("leaves a key's row where its slot's row there is fenced and does not keep the key out (deleted, that row refused the key where its pin sends it)", async () => {
    const slot = 2310;
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    // Crafted as a pin changed by hand in a caller's transaction that rolled back leaves it on the
    // key's pin, while a hand change of the key's slot, killed after its fence, holds the slot
    // there (its fence keeping no key out).
    await env.directory.set(key, to, 'ops@example.com');
    await target.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('directory', $1, 'moved', $2, 1)`, [key, from]);
    await target.query(`insert into write_fences (kind, unit_id, state) values ('slot', $1, 'fenced')`, [String(slot)]);
    try {
      const settled = await review({ settle: true, olderThanMs: 0 });
      expect(await directoryRow(target, key)).toMatchObject({ state: 'moved', moved_to: from });
      expect(keyRow(settled.rows, to, key)).toMatchObject({ route: to, action: 'reopen' });
      expect(keyRow(settled.rows, to, key)?.outcome).toBe(
        `left: ${to}'s row of the key's slot ${slot} is fenced (a hand change) and does not keep the key out: deleted, it would refuse the key's writes here; opened, the key would pass a fence of its slot: settle that row first`,
      );
    } finally {
      await target.query(`delete from write_fences where (kind = 'slot' and unit_id = $1) or (kind = 'directory' and unit_id = $2)`, [String(slot), key]);
    }
  }, 60_000);

  it("reopens no moved row with the key's rows behind it (the key pinned back past the stores): reopened, a user deleted since was read again", async () => {
    const slot = 2307;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, to, 'ops@example.com');
    await seedUsers(target, slot, [key], 1);
    // A row of the key on its old owner behind its `moved` row, written past the triggers (a
    // superuser's SQL, a restore): read by no one while the row stands.
    await source.query(`begin; set local session_replication_role = replica; insert into users (id, slot, email, display_name) values ('${key}', ${slot}, 'old@example.com', 'as it was'); commit`);
    // The account deleted where it lives, then the key pinned back by hand past the stores (which
    // refuse it for that row: counted and fenced by nothing).
    await target.query('delete from users where id = $1', [key]);
    await env.directory.set(key, from, 'ops@example.com');
    expect(await readerSees(key)).toBeNull();
    const settled = await review({ settle: true, olderThanMs: 0 });
    // Reopened, a reader routed by the pin read the deleted user again: old@example.com.
    expect(await readerSees(key)).toBeNull();
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    expect(keyRow(settled.rows, from, key)).toMatchObject({ route: from, action: 'reopen' });
    // Listed with where the row sends the key's writes and what that shard holds of it, not as
    // leftovers to delete: the review cannot tell these from the key's live rows (h116).
    expect(keyRow(settled.rows, from, key)?.outcome).toMatch(
      new RegExp(`^left: ${from} holds rows of key ${key} \\(1 in users\\) behind this row, and the key routes to ${from} \\(its pin, directory version \\d+\\).*do not delete them; ${to}, where this row sends the key's writes, holds none of the key's rows`),
    );
  }, 120_000);

  it("reopens no moved row of a key whose rows are on the shard it sends them to (unpinned past the stores): reopened, the key's writes were taken where its rows are not", async () => {
    const slot = 2308;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, to, 'ops@example.com');
    await seedUsers(target, slot, [key], 2);
    // The pin deleted past the stores (which refuse it while a shard holds a row of the key): the key routes by hash to `from` again.
    expect(await deletePinPastGuard(env.catalog, key)).toBe(true);
    const settled = await review({ settle: true, olderThanMs: 0 });
    // Reopened, the key's user was written again on `from`, its documents left on `to`: its readers (on `from`) saw none of them.
    expect(await userWrittenThroughRouter(key)).toMatch(/^failed: /);
    expect((await source.query('select 1 from users where id = $1', [key])).rows).toHaveLength(0);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    expect(keyRow(settled.rows, from, key)).toMatchObject({ route: from, action: 'reopen' });
    expect(keyRow(settled.rows, from, key)?.outcome).toMatch(new RegExp(`^left: the key's rows are on ${to} \\(1 in users, 2 in documents\\), where this row sends its writes, and ${to} has no row of the key refusing them`));
  }, 120_000);

  it("reopens no moved row of a key whose rows are on the shard it sends them to under a pin change's dead fence (unpinned past the stores): reopened, the key's writes were taken where its rows are not, and a second review did it too", async () => {
    const slot = 2312;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    // Pinned to `to` (its route changed: `from`'s row of it `moved` to `to`), then written there.
    await directory.set(key, to, 'ops@example.com');
    await seedUsers(target, slot, [key], 2);
    // A pin back whose process died after its fence on `to`: refused for the key's rows there, its put-back lost.
    expect(await pinChangeDyingAfterFence(to, key, from)).toBeInstanceOf(DirectoryRowsLeftError);
    expect({ here: (await directoryRow(source, key))?.state, there: (await directoryRow(target, key))?.state }).toEqual({ here: 'moved', there: 'fenced' });
    // The pin deleted past the stores: the key routes by hash to `from` again, its rows on `to`, under the dead change's fence.
    expect(await deletePinPastGuard(env.catalog, key)).toBe(true);
    expect(await userWrittenThroughRouter(key)).toMatch(/^failed: /);
    const settled = await review({ settle: true, olderThanMs: 0 });
    const again = await review({ settle: true, olderThanMs: 0 });
    // Reopened, `from` took the key's user while its 2 documents stayed on `to`, out of its readers' sight.
    expect(await userWrittenThroughRouter(key)).toMatch(/^failed: /);
    expect((await source.query('select 1 from users where id = $1', [key])).rows).toHaveLength(0);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    for (const r of [settled, again]) {
      expect(keyRow(r.rows, from, key)).toMatchObject({ route: from, action: 'reopen' });
      expect(keyRow(r.rows, from, key)?.outcome).toMatch(new RegExp(`^left: the key's rows are on ${to} \\(1 in users, 2 in documents\\), where this row sends its writes`));
    }
  }, 120_000);

  it("reopens no fenced row of a key whose pin change died after its commit, unpinned past the stores while its rows stayed on the shard it was pinned to: reopened, the key's writes were taken where its rows are not", async () => {
    const slot = 2316;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    // Pinned to `to` by a process that died after its fence on `from`: the pin written, `from`'s row of the key left fenced (its settle lost).
    expect(String(await pinChangeDyingAfterFence(from, key, to))).toMatch(/the owner change was written, but its fences could not all be settled/);
    expect({ pin: await env.directory.get(key), fence: await unitFenceState(source, 'directory', key) }).toEqual({ pin: to, fence: 'fenced' });
    await seedUsers(target, slot, [key], 2);
    // The pin deleted past the stores: the key routes by hash to `from` again, its rows on `to`, under the dead change's fence.
    expect(await deletePinPastGuard(env.catalog, key)).toBe(true);
    const fresh = async (): Promise<string> =>
      staleWriter(env, await env.slotMaps.current(), 0, 300)
        .withShardWrite(key, async ({ client }) => (await client.query(`update users set display_name = 'renamed' where id = $1`, [key])).rowCount)
        .then(
          (r) => `acknowledged on ${r.shardId} (${String(r.value)} row)`,
          (e: Error) => `refused: ${e.message.slice(0, 60)}`,
        );
    expect(await fresh()).toMatch(/^refused/);
    const settled = await review({ settle: true, olderThanMs: 0 });
    // Reopened, `from` acknowledged the key's update touching nothing, its user and documents on `to`, out of its readers' sight.
    expect(await fresh()).toMatch(/^refused/);
    expect(await unitFenceState(source, 'directory', key)).toBe('fenced');
    expect(keyRow(settled.rows, from, key)).toMatchObject({ route: from, action: 'reopen' });
    expect(keyRow(settled.rows, from, key)?.outcome).toMatch(new RegExp(`^left: the key's rows are on ${to} \\(1 in users, 2 in documents\\), another shard \\(a fenced row names no new owner\\), and ${to} has no row of the key refusing them`));
  }, 120_000);

  /**
   * `pool` as the review is given it, running `after` once it has read the shard's rows (before
   * anything is judged or settled there): an owner change of the slot made at that moment.
   */
  function interleaved(pool: pg.Pool, after: () => Promise<void>): pg.Pool {
    let done = false;
    return new Proxy(pool, {
      get(target, prop) {
        if (prop !== 'query') {
          const value = Reflect.get(target, prop, target) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        }
        return async (...args: unknown[]) => {
          const result = await (target.query as (...a: unknown[]) => Promise<unknown>)(...args);
          if (!done && typeof args[0] === 'string' && args[0].includes('from write_fences') && args[0].includes('order by kind, unit_id')) {
            done = true;
            await after();
          }
          return result;
        };
      },
    });
  }

  /** A key pinned to `to` whose row there a pin change left `fenced` (it died before its commit): the review deletes it, guarded by `to`'s row of the key's slot. */
  async function pinnedKeyLeftFenced(slot: number): Promise<{ key: string; from: string; to: string; target: pg.Pool }> {
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await env.directory.set(key, to, 'ops@example.com');
    await target.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced')`, [key]);
    return { key, from, to, target };
  }

  /** `to`'s row of `slot` made `moved` to `from`, keeping no key out (past the stores): it decides for every key of the slot there without a row of its own. */
  async function slotLeft(target: pg.Pool, slot: number, from: string): Promise<void> {
    await target.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', $1, 'moved', $2, 1)`, [String(slot), from]);
  }

  it("deletes a pinned key's row only while its slot's row there still lets the key through: a slot row that keeps no key out, written after the rows were read, leaves it (deleted, the key's writes were refused there for good)", async () => {
    const slot = 2313;
    const { key, from, to, target } = await pinnedKeyLeftFenced(slot);
    try {
      const first = await review({ settle: true, olderThanMs: 0, shards: new Map([...env.shards, [to, interleaved(target, () => slotLeft(target, slot, from))]]) });
      expect(keyRow(first.rows, to, key)).toMatchObject({ route: to, action: 'reopen' });
      expect(keyRow(first.rows, to, key)?.outcome).toMatch(new RegExp(`^left: ${to}'s row of the key's slot ${slot} changed since it was read and no longer lets the key through`));
      expect(await unitFenceState(target, 'directory', key)).toBe('fenced');
      // Judged again with the slot's row as it is: set open, which decides for the key over it.
      const second = await review({ settle: true, olderThanMs: 0 });
      expect(keyRow(second.rows, to, key)?.outcome).toMatch(/^settled: reopened \(set open\)/);
      expect(await userWrittenThroughRouter(key)).toBe(`written on ${to}`);
    } finally {
      await target.query(`delete from write_fences where (kind = 'slot' and unit_id = $1) or (kind = 'directory' and unit_id = $2)`, [String(slot), key]);
    }
  }, 60_000);

  it("deletes a pinned key's row only while its slot's row there still lets the key through: a slot row written while the deletion waits for the key's writers leaves it too", async () => {
    const slot = 2314;
    const { key, from, to, target } = await pinnedKeyLeftFenced(slot);
    const database = new URL(env.urls.shards[to] as string).pathname.slice(1);
    const writer = await target.connect();
    let meanwhile: Promise<void> | undefined;
    try {
      const holdKeyRow = async (): Promise<void> => {
        // A writer of the key holding its row FOR SHARE (as every writer does) while the review
        // deletes it; the slot's row written once the deletion waits, then the writer ends.
        await writer.query('begin');
        await writer.query(`select 1 from write_fences where kind = 'directory' and unit_id = $1 for share`, [key]);
        meanwhile = (async () => {
          await lockWaitOn(target, database);
          await slotLeft(target, slot, from);
          await writer.query('commit');
        })();
      };
      const first = await review({ settle: true, olderThanMs: 0, shards: new Map([...env.shards, [to, interleaved(target, holdKeyRow)]]) });
      await meanwhile;
      expect(keyRow(first.rows, to, key)?.outcome).toMatch(new RegExp(`^left: ${to}'s row of the key's slot ${slot} changed since it was read and no longer lets the key through`));
      expect(await unitFenceState(target, 'directory', key)).toBe('fenced');
      await review({ settle: true, olderThanMs: 0 });
      expect(await userWrittenThroughRouter(key)).toBe(`written on ${to}`);
    } finally {
      await meanwhile?.catch(() => undefined);
      await writer.query('rollback').catch(() => undefined);
      writer.release();
      await target.query(`delete from write_fences where (kind = 'slot' and unit_id = $1) or (kind = 'directory' and unit_id = $2)`, [String(slot), key]);
    }
  }, 60_000);

  it("leaves unlisted a pinned key's marks on its slot's shards (a moved row where the key does not route), which without the configuration are listed", async () => {
    const slot = 2309;
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { slotMaps } = countingStores(env);
    // Pinned to its slot's owner (its route unchanged: nothing fenced), then the slot given away by hand: the new owner marks the key moved to its pin.
    await directory.set(key, from, 'ops@example.com');
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'the slot to the other shard');
    expect(await directoryRow(target, key)).toMatchObject({ state: 'moved', moved_to: from });
    expect(keyRow((await review()).rows, to, key)).toBeUndefined();
    expect(keyRow((await review({ all: true })).rows, to, key)).toMatchObject({ route: from, diagnosis: 'explained: nothing to settle' });
    expect(keyRow((await reviewFences({ catalog: env.catalog, shards: env.shards })).rows, to, key)).toMatchObject({ action: 'none' });
  }, 60_000);
});

describe('the command reads the routing as the scaling API does (SHARDING_CONFIG_JSON)', () => {
  const capture = captureIo;
  const urls = (): Record<string, string> => fencesCliUrls(env);
  const config = (directory: Record<string, unknown> = {}): string => deployedDocument(env, directory);

  it("settles a key's rows with it, leaves them without it (saying how to give it), and refuses one it cannot read, naming it", async () => {
    const slot = 2311;
    const { from, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await source.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced')`, [key]);
    const without = capture();
    expect(await createShardsCommand(urls()).run(['fences', '--settle', '--older-than', '0'], without.io)).toBe(1);
    expect(without.out.join('')).toMatch(new RegExp(`${from}  directory ${key}  fenced .* route \\?  .*\\n .*not settled: the review was not given the sharding configuration`));
    const off = capture();
    expect(await createShardsCommand({ ...urls(), SHARDING_CONFIG_JSON: config({ override_hash: false }) }).run(['fences', '--settle', '--older-than', '0'], off.io)).toBe(1);
    expect(off.out.join('')).toMatch(/directory.override_hash off no pin routes the key/);
    expect(await unitFenceState(source, 'directory', key)).toBe('fenced');
    await expect(createShardsCommand({ ...urls(), SHARDING_CONFIG_JSON: '{"strategy": ' }).run(['fences'], capture().io)).rejects.toThrow(/^SHARDING_CONFIG_JSON: not valid JSON/);
    await expect(createShardsCommand({ ...urls(), SHARDING_CONFIG_JSON: config(), SHARDING_STRATEGY: 'consistent' }).run(['fences'], capture().io)).rejects.toThrow(UsageError);
    const settled = capture();
    // (Its exit code is 1 while this file's other tests leave rows to the operator.)
    await createShardsCommand({ ...urls(), SHARDING_CONFIG_JSON: config() }).run(['fences', '--settle', '--older-than', '0'], settled.io);
    expect(settled.out.join('')).toContain(`settled: reopened (deleted), ${from} takes the key's writes`);
    expect(await unitFenceState(source, 'directory', key)).toBeUndefined();
  }, 60_000);
});
