/**
 * Issue #15: the write_fences rows a slot map published by hand leaves behind, and the operator's
 * review that lists and settles them (`ca-dms-scaling shards fences [--settle]`,
 * functions/adapters/postgres/fence-review.ts). Each row is produced through the stores: (a) a
 * change whose process died between its fence and its put-back or settle (its old owner's pool
 * answering nothing more after the fence), before its commit (the map names the old owner) or
 * after it (the map names the new one); (b) a slot given back by hand inside a caller's
 * transaction that commits (the new owner's older `moved` row) or rolls back (the old owner's
 * fresh one). Then the review lists them, settles them, and a write through the router lands on
 * the shard the map names, none lost. Refused: reopening a row while a hand change is in flight,
 * a row younger than the bound, a row of a slot whose move is unfinished; a live move's rows are
 * never touched; bad flags.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError, type CliIo } from '../../../bin/commands/kit.js';
import { createShardsCommand } from '../../../bin/commands/shards.js';
import { reviewFences, type ReviewedFence } from '../../../functions/adapters/postgres/fence-review.js';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { controlLogin, countSlot, fenceState, keysInSlot, moveStoppedAfterRelease, otherProcess, refusalOf, seedUsers, sides, startMoveEnv, userWriteOutcome, movedThenGivenBackInTransaction, type MoveEnv, dyingAfterFence as dyingAfterFenceOf } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

const dyingAfterFence = (shard: string): { pools: Map<string, pg.Pool>; dying: pg.Pool } => dyingAfterFenceOf(env.shards, shard, env.urls.shards[shard] as string);

/** A new user of `slot` written through the env's router (its fences, CAF02 re-routes): where it landed. */
async function writtenThroughRouter(slot: number, user: string): Promise<string> {
  return env.writer
    .withShardWrite(user, async ({ client, slot: s }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'after')`, [user, s, `${user}@example.com`]);
    })
    .then(
      (r) => `written on ${r.shardId} (slot ${r.slot === slot ? 'as expected' : r.slot})`,
      (e: Error) => `failed: ${e.message.slice(0, 300)}`,
    );
}

async function usersOn(pool: pg.Pool, users: readonly string[]): Promise<number> {
  return (await pool.query<{ n: number }>('select count(*)::int as n from users where id = any($1::uuid[])', [users])).rows[0]?.n ?? 0;
}

function rowOf(rows: readonly ReviewedFence[], shard: string, slot: number): ReviewedFence | undefined {
  return rows.find((r) => r.shard === shard && r.kind === 'slot' && r.unitId === String(slot));
}

function capture(): { io: CliIo; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { stdout: (t) => out.push(t), stderr: (t) => err.push(t), cwd: process.cwd() }, out, err };
}

function cliEnv(): Record<string, string> {
  return { CATALOG_DATABASE_URL: env.urls.catalog, SHARD_DATABASE_URLS: Object.entries(env.urls.shards).map(([id, url]) => `${id}=${url}`).join(',') };
}

describe('(a) a hand change whose process died between its fence and its put-back or settle', () => {
  it('before its commit: the old owner left fenced while the map names it; the review lists it, reopens it through the CLI, and the writes land there again, none lost', async () => {
    const slot = 1901;
    const { from, to, source } = await sides(env, slot);
    const [kept, after] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [kept], 1);
    const { pools, dying } = dyingAfterFence(from);
    try {
      const store = new SlotMapStore(env.catalog, { shardPools: pools });
      const before = await store.current();
      // Refused for the row left (after the fence), its put-back lost with the process.
      expect(await refusalOf(store.publish(moveSlots(before, [slot], to), 'ops', 'hand change'))).toBeInstanceOf(SlotMapRowsLeftError);
      expect({ version: (await store.current()).version, fence: await fenceState(source, slot), write: await userWriteOutcome(source, slot, keysInSlot(slot, 3)[2] as string) }).toEqual({
        version: before.version,
        fence: 'fenced',
        write: 'refused CAF01',
      });
    } finally {
      await dying.end();
    }
    const listed = capture();
    expect(await createShardsCommand(cliEnv()).run(['fences'], listed.io)).toBe(1);
    expect(listed.out.join('')).toMatch(new RegExp(`${from}  slot ${slot}  fenced  job -  moved_to -  .*owner ${from}.*\\n +left fenced by a hand change that did not finish.*still names ${from}.*CAF01.*\\n +action: reopen \\(withheld: last written \\d+ s ago, under --older-than 900 s`));
    expect(await fenceState(source, slot)).toBe('fenced');

    const settled = capture();
    await createShardsCommand(cliEnv()).run(['fences', '--settle', '--older-than', '0'], settled.io);
    expect(settled.out.join('')).toMatch(new RegExp(`${from}  slot ${slot}  fenced[^\\n]*\\n[^\\n]*\\n +action: reopen\\n +settled: reopened \\(deleted\\), ${from} takes the slot's writes`));
    expect(await fenceState(source, slot)).toBeUndefined();
    expect(await writtenThroughRouter(slot, after)).toBe(`written on ${from} (slot as expected)`);
    expect(await usersOn(source, [kept, after])).toBe(2);
  }, 120_000);

  it('after its commit: the old owner left fenced while the map names the new one; settled, it sends the writes on (CAF02) and they land on the new owner', async () => {
    const slot = 1902;
    const { from, to, source, target } = await sides(env, slot);
    const { pools, dying } = dyingAfterFence(from);
    try {
      const store = new SlotMapStore(env.catalog, { shardPools: pools });
      const outcome = await refusalOf(store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change of an empty slot'));
      expect(String(outcome)).toMatch(/the owner change was written, but its fences could not all be settled/);
      expect({ owner: await env.ownerOf(slot), fence: await fenceState(source, slot) }).toEqual({ owner: to, fence: 'fenced' });
    } finally {
      await dying.end();
    }
    const review = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true });
    const row = rowOf(review.rows, from, slot);
    expect(row).toMatchObject({ state: 'fenced', jobId: null, owner: to, action: 'set moved', outcome: `settled: moved to ${to} as of version ${review.mapVersion}` });
    expect(row?.diagnosis).toMatch(/left fenced by a hand change whose map was published/);
    const moved = (await source.query<{ state: string; moved_to: string; map_version: string }>(`select state, moved_to, map_version::text from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows[0];
    expect(moved).toEqual({ state: 'moved', moved_to: to, map_version: String(review.mapVersion) });
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 2)[1] as string)).toBe('refused CAF02');
    const [user] = keysInSlot(slot, 1) as [string];
    expect(await writtenThroughRouter(slot, user)).toBe(`written on ${to} (slot as expected)`);
    expect({ onNew: await usersOn(target, [user]), onOld: (await countSlot(source, slot)).users }).toEqual({ onNew: 1, onOld: 0 });
  }, 120_000);
});

describe("(b) a slot given back by hand inside a caller's transaction", () => {
  it("that commits: the new owner's older moved row (the finished move's) refuses its writes; the review reopens it and the writes land there", async () => {
    const slot = 1903;
    const { from, to, source, job } = await movedThenGivenBackInTransaction(env, slot, 'commit');
    expect(await env.ownerOf(slot)).toBe(from);
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 3)[2] as string)).toBe('refused CAF02');
    const listed = await reviewFences({ catalog: env.catalog, shards: env.shards });
    expect(rowOf(listed.rows, from, slot)).toMatchObject({ state: 'moved', jobId: job, movedTo: to, owner: from, action: 'reopen' });
    expect(rowOf(listed.rows, from, slot)?.diagnosis).toMatch(new RegExp(`moved row on the shard the map names .*CAF02, moved to ${to}.*move job #${job} \\(done\\)`));
    // The old owner's row (moved to the map's owner) is explained: not listed.
    expect(rowOf(listed.rows, to, slot)).toBeUndefined();
    const settled = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0 });
    expect(rowOf(settled.rows, from, slot)?.outcome).toBe(`settled: reopened (deleted), ${from} takes the slot's writes`);
    const [user] = keysInSlot(slot, 1) as [string];
    expect(await writtenThroughRouter(slot, user)).toBe(`written on ${from} (slot as expected)`);
    expect(await usersOn(source, [user])).toBe(1);
  }, 120_000);

  it("that rolls back: the old owner's fresh moved row (job_id null) refuses its writes while the map names it; the review reopens it", async () => {
    const slot = 1904;
    const { to, target } = await movedThenGivenBackInTransaction(env, slot, 'rollback');
    expect(await env.ownerOf(slot)).toBe(to);
    const settled = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0 });
    expect(rowOf(settled.rows, to, slot)).toMatchObject({ state: 'moved', jobId: null, owner: to, action: 'reopen', outcome: `settled: reopened (deleted), ${to} takes the slot's writes` });
    const [user] = keysInSlot(slot, 1) as [string];
    expect(await writtenThroughRouter(slot, user)).toBe(`written on ${to} (slot as expected)`);
    expect(await usersOn(target, [user])).toBe(1);
  }, 120_000);
});

describe('what the review refuses to settle', () => {
  it("reopens nothing while a hand change holds the slot fenced between its fence and its commit (it holds catalog.owner_change_review)", async () => {
    const slot = 1905;
    const { to, source } = await sides(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    const writer = await source.connect();
    try {
      // A writer that routed with the current map: its row uncommitted, the change waits for it after its fence.
      await writer.query('begin');
      await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'w@example.com', 'w')`, [keysInSlot(slot, 1)[0], slot]);
      const change = refusalOf(store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change'));
      for (let i = 0; i < 500 && (await fenceState(source, slot)) !== 'fenced'; i++) await new Promise((r) => setTimeout(r, 20));
      expect(await fenceState(source, slot)).toBe('fenced');
      const review = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0 });
      // Without the change holding the row, the review reopened (deleted) the fence under it: the
      // change could then publish with its old owner open, taking writes where the map no longer looks.
      expect(await fenceState(source, slot)).toBe('fenced');
      expect(review.changeInFlight).toMatch(/a hand change of the slot map holds catalog.owner_change_review/);
      expect(rowOf(review.rows, await env.ownerOf(slot), slot)).toMatchObject({ action: 'reopen', outcome: 'left: a hand change is in flight (catalog.owner_change_review held): try again once it has ended' });
      await writer.query('commit');
      expect(await change).toBeInstanceOf(SlotMapRowsLeftError);
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
    }
  }, 60_000);

  it("never touches a live move's rows, and leaves a hand row of a slot whose move is unfinished", async () => {
    const slot = 1906;
    const { from, to, source, target } = await sides(env, slot);
    const job = await moveStoppedAfterRelease(env, slot, to);
    // What a hand change killed after its fence leaves on the shard the map names now.
    await target.query(
      `insert into write_fences (kind, unit_id, state, job_id) values ('slot', $1, 'fenced', null)
       on conflict (kind, unit_id) do update set state = 'fenced', job_id = null, moved_to = null, updated_at = now()`,
      [String(slot)],
    );
    const rowsBefore = (await source.query(`select state, job_id::text, moved_to from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows;
    const review = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0, all: true });
    expect(rowOf(review.rows, from, slot)).toMatchObject({ state: 'moved', jobId: String(job), action: 'none', diagnosis: 'explained: nothing to settle' });
    expect(rowOf(review.rows, to, slot)).toMatchObject({ state: 'fenced', action: 'reopen', outcome: `left: move job #${job} of slot ${slot} is unfinished (cleaning_up): settle once it has ended` });
    expect((await source.query(`select state, job_id::text, moved_to from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows).toEqual(rowsBefore);
    expect(await fenceState(target, slot)).toBe('fenced');
  }, 120_000);

  it("reopens a hand change's dead fence on the source of a move planned since, which the move's runs refuse to take over (left for the move, the slot's writes were refused until someone cancelled it)", async () => {
    const slot = 1916;
    const { from, to, source, target } = await sides(env, slot);
    const [kept, after] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [kept], 1);
    const { pools, dying } = dyingAfterFence(from);
    try {
      const store = new SlotMapStore(env.catalog, { shardPools: pools });
      expect(await refusalOf(store.publishByHand(moveSlots(await store.current(), [slot], to), 'hand change'))).toBeInstanceOf(SlotMapRowsLeftError);
    } finally {
      await dying.end();
    }
    expect(await fenceState(source, slot)).toBe('fenced');
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect(String(await refusalOf(mover.run(job.id)))).toMatch(/is fenced by a hand change of its owner \(job_id null\).*this move does not take it over/);
    const review = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0 });
    expect(rowOf(review.rows, from, slot)?.outcome).toBe(`settled: reopened (deleted), ${from} takes the slot's writes`);
    expect((await mover.run(job.id)).state).toBe('done');
    expect(await writtenThroughRouter(slot, after)).toBe(`written on ${to} (slot as expected)`);
    expect(await usersOn(target, [kept, after])).toBe(2);
  }, 120_000);

  it('reopens no row last written under --older-than (a change through a client holding no transaction takes no lock)', async () => {
    const slot = 1907;
    const { from, source } = await sides(env, slot);
    await source.query(`insert into write_fences (kind, unit_id, state, job_id) values ('slot', $1, 'fenced', null)`, [String(slot)]);
    const review = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true });
    expect(rowOf(review.rows, from, slot)?.outcome).toMatch(/^left: last written \d+ s ago, under --older-than 900 s/);
    expect(await fenceState(source, slot)).toBe('fenced');
    await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
  }, 60_000);

  it("works through the control login as on AWS (a hand change takes the review row, the review locks it); the application's login may not review", async () => {
    const slot = 1908;
    const { from, to, source } = await sides(env, slot);
    const control = await controlLogin(env, 'h71_fence_operator');
    await env.catalog.query(`do $$ begin if not exists (select 1 from pg_roles where rolname = 'h71_app') then create role h71_app login password 'h71' in role ca_dms_app; end if; end $$`);
    const appUrl = new URL(env.urls.catalog);
    appUrl.username = 'h71_app';
    appUrl.password = 'h71';
    const app = new pg.Pool({ connectionString: appUrl.toString(), max: 1 });
    try {
      const store = new SlotMapStore(control, { shardPools: env.shards });
      await store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change through the control login');
      expect({ owner: await env.ownerOf(slot), old: await fenceState(source, slot) }).toEqual({ owner: to, old: 'moved' });
      // What a change killed after its fence leaves: reopened by the control login's review.
      await source.query(`update write_fences set state = 'fenced', moved_to = null where kind = 'slot' and unit_id = $1`, [String(slot)]);
      const review = await reviewFences({ catalog: control, shards: env.shards, settle: true });
      expect(rowOf(review.rows, from, slot)).toMatchObject({ action: 'set moved', outcome: `settled: moved to ${to} as of version ${review.mapVersion}` });
      await expect(reviewFences({ catalog: app, shards: env.shards })).rejects.toThrow(
        "this catalog login may not lock catalog.owner_change_review: use the control login (ca_dms_control) or the catalog's owner",
      );
    } finally {
      await control.end();
      await app.end();
    }
  }, 60_000);

  it('reopens no row of a slot a move took off its shard while the review read the shards (the map it judges by is read after the rows)', async () => {
    const slot = 1911;
    const { from, to, source } = await sides(env, slot);
    // The move runs between the review's first statements and its read of the shards: done, the
    // source's row is the move's `moved` row (job finished) and the map names the target.
    let job = '';
    const racing = new Proxy(source, {
      get(t, p) {
        if (p === 'query') {
          return async (...args: Parameters<pg.Pool['query']>) => {
            if (job === '' && typeof args[0] === 'string' && /from write_fences/.test(args[0])) {
              const mover = env.mover({ readerGraceMs: 0 });
              const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
              job = String(planned.id);
              expect((await mover.run(planned.id)).state).toBe('done');
            }
            return (t.query as (...a: unknown[]) => unknown)(...args);
          };
        }
        const v = Reflect.get(t, p, t) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    const review = await reviewFences({ catalog: env.catalog, shards: new Map([...env.shards, [from, racing as pg.Pool]]), settle: true, olderThanMs: 0 });
    expect(job).not.toBe('');
    expect(await env.ownerOf(slot)).toBe(to);
    // Judged by the map read before the move flipped, the source's `moved` row looked like one on
    // the shard the map names, and was deleted: the source took the writes of routers whose maps
    // still named it, out of every reader's sight.
    expect({ fence: await fenceState(source, slot), staleWrite: await userWriteOutcome(source, slot, keysInSlot(slot, 2)[1] as string) }).toEqual({ fence: 'moved', staleWrite: 'refused CAF02' });
    expect(rowOf(review.rows, from, slot)?.outcome ?? 'not settled').not.toMatch(/^settled/);
  }, 120_000);

  it('reopens no row of a slot a hand change through a bare client took off its shard while the review read the shards, its catalog sessions defaulting to REPEATABLE READ', async () => {
    const slot = 1921;
    const { from, to, source } = await sides(env, slot);
    // A catalog (or login) whose default_transaction_isolation is REPEATABLE READ: a review begun
    // with the default read the map in the snapshot of its lock, taken before the shards were read.
    const repeatableRead = new pg.Pool({ connectionString: env.urls.catalog, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
    // The change runs between the review's lock and its read of the shards, through something that
    // only answers `query` (no transaction, so no lock a review would see): the source's row is
    // then `moved` (job_id null) and the map names the target.
    let changed = false;
    const racing = new Proxy(source, {
      get(t, p) {
        if (p === 'query') {
          return async (...args: Parameters<pg.Pool['query']>) => {
            if (!changed && typeof args[0] === 'string' && /from write_fences/.test(args[0])) {
              changed = true;
              const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
              await store.publishByHand(moveSlots(await store.current(), [slot], to), 'test: given away through a bare client', { query: env.catalog.query.bind(env.catalog) });
            }
            return (t.query as (...a: unknown[]) => unknown)(...args);
          };
        }
        const v = Reflect.get(t, p, t) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    const review = await reviewFences({ catalog: repeatableRead, shards: new Map([...env.shards, [from, racing as pg.Pool]]), settle: true, olderThanMs: 0 }).finally(() => repeatableRead.end());
    expect(changed).toBe(true);
    expect(await env.ownerOf(slot)).toBe(to);
    // Judged by the map of the review's first snapshot, the source's `moved` row looked like one on
    // the shard the map names, and was deleted: the source took the writes of routers whose maps
    // still named it, out of every reader's sight.
    expect({ fence: await fenceState(source, slot), staleWrite: await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string) }).toEqual({ fence: 'moved', staleWrite: 'refused CAF02' });
    expect(rowOf(review.rows, from, slot)?.outcome ?? 'not settled').not.toMatch(/^settled/);
  }, 120_000);

  it('a hand change waits for a review in progress only within a bound, then is refused naming it, nothing fenced or published', async () => {
    const slot = 1912;
    const { from, to, source } = await sides(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    const before = (await store.current()).version;
    const review = await env.catalog.connect();
    try {
      // What a review holds for its whole run (a slow one: many rows, a shard slow to answer).
      await review.query('begin');
      await review.query('select 1 from catalog.owner_change_review where id = 1 for update nowait');
      const refused = await refusalOf(store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change during a review'));
      expect(String(refused)).toMatch(/a review of the fence rows \(ca-dms-scaling shards fences --settle\) held catalog.owner_change_review for more than 5000 ms.*Nothing was written: try again once the review has ended/);
    } finally {
      await review.query('rollback').catch(() => undefined);
      review.release();
    }
    expect({ owner: await env.ownerOf(slot), version: (await store.current()).version, fence: await fenceState(source, slot) }).toEqual({ owner: from, version: before, fence: undefined });
    // The review over, the same change goes through.
    await store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change after the review');
    expect({ owner: await env.ownerOf(slot), fence: await fenceState(source, slot) }).toEqual({ owner: to, fence: 'moved' });
  }, 90_000);

  it('a listing (no --settle) holds nothing a hand change waits for: a change made while it reads the shards is published', async () => {
    const slot = 1913;
    const { from, to, source } = await sides(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    // The change runs while the listing reads its first shard (a slow shard, or many rows).
    let change: Promise<unknown> | undefined;
    const slow = new Proxy(source, {
      get(t, p) {
        if (p === 'query') {
          return async (...args: Parameters<pg.Pool['query']>) => {
            if (change === undefined && typeof args[0] === 'string' && /from write_fences/.test(args[0])) {
              change = refusalOf(store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change during a listing'));
              await change;
            }
            return (t.query as (...a: unknown[]) => unknown)(...args);
          };
        }
        const v = Reflect.get(t, p, t) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    const listing = await reviewFences({ catalog: env.catalog, shards: new Map([...env.shards, [from, slow as pg.Pool]]) });
    expect(await change).toBeNull();
    expect(listing.changeInFlight).toBeUndefined();
    expect({ owner: await env.ownerOf(slot), fence: await fenceState(source, slot) }).toEqual({ owner: to, fence: 'moved' });
  }, 90_000);

  it('refuses to judge a shard given by the URL of another (the ID=URL pairs swapped): no moved row is reopened where the map does not send the writes', async () => {
    const slot = 1914;
    const { from, to, source } = await sides(env, slot);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    await store.publish(moveSlots(await store.current(), [slot], to), 'ops', 'hand change');
    expect({ owner: await env.ownerOf(slot), old: await fenceState(source, slot) }).toEqual({ owner: to, old: 'moved' });
    // The operator swapped the pairs: the old owner's moved row (moved to the map's owner) looks
    // like one on the shard the map names.
    const swapped = new Map([
      [from, env.shards.get(to) as pg.Pool],
      [to, source],
    ]);
    const refused = await refusalOf(reviewFences({ catalog: env.catalog, shards: swapped, settle: true, olderThanMs: 0 }));
    expect({ fence: await fenceState(source, slot), staleWrite: await userWriteOutcome(source, slot, keysInSlot(slot, 2)[1] as string) }).toEqual({ fence: 'moved', staleWrite: 'refused CAF02' });
    expect(String(refused)).toMatch(/the write_fences rows read as (shard_[ab])'s name \1 as the shard they moved to \(slot \d+.*\), which no move or owner change writes: the URL given for \1 is another shard's\. Check the ID=URL pairs .*nothing was settled/);
  }, 90_000);

  it("reopens no moved row with rows of the slot behind it (a finished move's kept user, the slot given back past the stores): reopened, a user deleted since was read again", async () => {
    const slot = 1915;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    // A document of the user under another slot, written before shard migration 015 (its foreign
    // keys skipped): the move's clean-up keeps the user on its source, as it was.
    await source.query(`begin; set local session_replication_role = replica; insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), '${user}', ${slot + 100}, 'before 015'); commit`);
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    expect((await source.query('select 1 from users where id = $1', [user])).rows).toHaveLength(1);
    // The account deleted where it lives, then the slot given back by hand past the stores (a
    // store without the shards' pools counts and fences nothing, and leaves the source's row).
    await target.query('delete from users where id = $1', [user]);
    await env.slotMaps.publishByHand(moveSlots(await env.slotMaps.current(), [slot], from), 'back to its first shard (ticket OPS-14)');
    expect({ owner: await env.ownerOf(slot), fence: await fenceState(source, slot) }).toEqual({ owner: from, fence: 'moved' });
    const review = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0 });
    // Reopened, a reader routed by the map read the deleted user again, with its e-mail as of the move.
    const read = await (await otherProcess(env, { ttlMs: 0 })).reader.withShardRead(user, async ({ client }) => (await client.query<{ email: string }>('select email from users where id = $1', [user])).rows.map((r) => r.email)).then(
      ({ value }) => value,
      () => 'refused',
    );
    expect(read).toBe('refused');
    expect(await fenceState(source, slot)).toBe('moved');
    expect(rowOf(review.rows, from, slot)).toMatchObject({ state: 'moved', action: 'reopen' });
    expect(rowOf(review.rows, from, slot)?.outcome).toMatch(new RegExp(`^left: ${from} holds rows of slot ${slot} \\(1 in users\\) behind this row: rows the unit left there when it went away.*select id, email from users where slot = ${slot}`));
  }, 120_000);

  it('refuses bad flags, naming them', async () => {
    const command = createShardsCommand(cliEnv());
    await expect(command.run([], capture().io)).rejects.toThrow(new UsageError('a subcommand is required: fences'));
    await expect(command.run(['fence'], capture().io)).rejects.toThrow(new UsageError('unknown subcommand "fence"; valid subcommands: fences'));
    await expect(command.run(['fences', '--older-than', '-1'], capture().io)).rejects.toThrow('--older-than: expected a whole number of seconds from 0 to 31536000, got "-1"');
    // 0 would leave out every record, the check against the runtimes' routings turned off unsaid.
    await expect(command.run(['fences', '--recorded-within', '0'], capture().io)).rejects.toThrow('--recorded-within: expected a whole number of seconds from 1 to 31536000, got "0"');
    // Read on top of SHARDING_CONFIG_JSON only: without it they were dropped unsaid.
    await expect(createShardsCommand({ ...cliEnv(), SHARDING_STRATEGY: 'hash_based', SHARDING_ENABLED: 'true' }).run(['fences'], capture().io)).rejects.toThrow(
      new UsageError(
        'SHARDING_STRATEGY, SHARDING_ENABLED: set without SHARDING_CONFIG_JSON, on top of which the review reads them (as the scaling API\'s function does): set SHARDING_CONFIG_JSON too, or unset them to have the review judge by the routing the runtimes recorded in the catalog',
      ),
    );
    await expect(command.run(['fences', '--settel'], capture().io)).rejects.toThrow(/Unknown option '--settel'.*accepted flags: --settle/);
    await expect(command.run(['fences', '--shard', env.urls.catalog], capture().io)).rejects.toThrow(/--shard: expected ID=URL/);
    await expect(command.run(['fences', '--shard', 'shard_a=postgresql://u:p@db.example.com/x'], capture().io)).rejects.toThrow('--shard: shard shard_a: db.example.com is not loopback: add sslmode=verify-full');
    await expect(createShardsCommand({}).run(['fences'], capture().io)).rejects.toThrow(new UsageError('--catalog-url: is required (or set CATALOG_DATABASE_URL, or use --local for local mode)'));
    await expect(createShardsCommand({ CATALOG_DATABASE_URL: env.urls.catalog }).run(['fences'], capture().io)).rejects.toThrow('SHARD_DATABASE_URLS: no shard given');
  }, 30_000);
});
