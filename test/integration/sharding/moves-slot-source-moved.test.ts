/**
 * Issue #15 (h101): a move whose source, the shard the catalog names, says by its own fence row
 * that it does not own the unit (`moved`). A slot moved A -> B (done, A's row `moved` to B) and
 * given back to A by a map by hand that neither fences nor opens a row (`catalog.publish_slot_map_by_hand`
 * straight, a store without the shards' pools, `rowsLeftOn: 'checked'`; CAF08 lets a map by hand
 * through for a finished move): a slot move of it from A was recorded, its run stopped on A's fence
 * ("the catalog and the shard disagree"), and the job stayed `copying`, every run stopping there
 * again, holding every other move of the slot until cancelled. Now refused at plan (409, nothing
 * recorded), as a directory move is (moves-directory-source-moved.test.ts). And a row that turns
 * `moved` after the plan (a hand change in a caller's transaction rolled back, a superuser's SQL)
 * now fails the move at its run (rolled back, the slot free), its error naming the way out, for
 * both kinds; `shards fences` reopens such a row only where the unit's rows are on its shard.
 * And a directory move of a key of such a slot (no row of the key on A: the slot's `moved` row
 * decides for it) ended `done` with the key's rows on no shard: now refused at plan too.
 * h107's review: the same damage from a slot row turned `moved` after a directory move's plan
 * (judged at the run by where the catalog sends the key), `incoming` rows at plan, the rollback's
 * deletion after a row turned so past the copy, and the key's `open` row a rolled-back move left on
 * a source whose slot row had disowned the key.
 * h110's review: that rollback's close of a key row the move did not insert, over the key's rows
 * (a key moved back to the source); `shards fences --settle` setting a pinned key's row `open`
 * over its slot's `moved` row while the key's rows are where that slot row sent them; and a slot
 * move to a shard holding the slot's rows behind no refusing row (the third way out misjudged),
 * whose copy deleted them.
 * h116: the review's words for a pinned key's (or a slot's hand) `moved` row over its live rows on
 * the shard it routes to (it said to delete them as leftovers), and a slot move to a third shard
 * while a shard the map's history names holds the slot's rows behind no refusing row (the third
 * way out misjudged, then the slot moved on: B's rows left out of every reader's sight).
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FenceReview, reviewFences, type ReviewedFence } from '../../../functions/adapters/postgres/fence-review.js';
import { MoveConflictError, MovePlanShardUnanswered } from '../../../functions/adapters/postgres/move-jobs.js';
import { isNodeFailure } from '../../../functions/adapters/postgres/replica-reader.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countSlot, deletePinPastGuard, documentWrittenFor, fenceState, keysInSlot, type MoveEnv, outcomeOf, readCommitted, refusalOf, seedUsers, sides, startMoveEnv, threeShardsOf, unitFenceState, userWriteOutcome } from './fixtures/move-env.js';

const PINS_ROUTE: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' };

let env: MoveEnv;
/** Three shards: a key pinned to a third shard, or its slot's rows on one shard while its pin names another (h107, h110). */
let env3: MoveEnv;
beforeAll(async () => {
  [env, env3] = await Promise.all([startMoveEnv({ shards: 2 }), startMoveEnv({ shards: 3 })]);
});
afterAll(async () => {
  await Promise.all([env?.stop(), env3?.stop()]);
});

const jobCount = async (): Promise<number> => Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n);

/** A hand change's row (`job_id` null) on `pool`, as a change in a caller's transaction rolled back leaves it (or a superuser's SQL). */
async function handRowMoved(pool: pg.Pool, kind: 'slot' | 'directory', unit: string, to: string): Promise<void> {
  await pool.query(
    `insert into write_fences (kind, unit_id, state, moved_to, map_version) values ($1, $2, 'moved', $3, 1)
     on conflict (kind, unit_id) do update set state = 'moved', moved_to = $3, map_version = 1, job_id = null`,
    [kind, unit, to],
  );
}

type Mover = ReturnType<MoveEnv['mover']>;

/** The shards of `slot` in `env`, one key of it seeded on its owner with `docs` documents, and a mover (reader grace 0). */
async function seededSides(slot: number, docs: number): Promise<Awaited<ReturnType<typeof sides>> & { key: string; mover: Mover }> {
  const shards = await sides(env, slot);
  const [key] = keysInSlot(slot, 1) as [string];
  await seedUsers(shards.source, slot, [key], docs);
  return { ...shards, key, mover: env.mover({ readerGraceMs: 0 }) };
}

/** The three shards of `slot` in `env3` (its owner A, B, C), one key of it seeded on A with two documents, and a mover (reader grace 0). */
async function seededThree(slot: number): Promise<{ from: string; to: string; third: string; a: pg.Pool; b: pg.Pool; c: pg.Pool; key: string; mover: Mover }> {
  const { from, to, third } = await threeShardsOf(env3, slot);
  const pool = (shard: string) => env3.shards.get(shard) as pg.Pool;
  const [key] = keysInSlot(slot, 1) as [string];
  await seedUsers(pool(from), slot, [key], 2);
  return { from, to, third, a: pool(from), b: pool(to), c: pool(third), key, mover: env3.mover({ readerGraceMs: 0 }) };
}

/** The slot given back to `from` by a map by hand that neither fences nor opens a row (a store without the shards' pools, `rowsLeftOn: 'checked'`; CAF08 lets it through for a finished move). */
async function givenBackPastFences(slot: number, from: string): Promise<void> {
  await env.slotMaps.publishByHand(moveSlots(await env.slotMaps.current(), [slot], from), 'restored by hand', undefined, { rowsLeftOn: 'checked' });
}

/** The slot given to `to` by a map by hand through the stores with the shards' pools (they count the shard it leaves, empty, and fence it). */
async function givenByHand(e: MoveEnv, slot: number, to: string, reason: string): Promise<void> {
  const store = new SlotMapStore(e.catalog, { shardPools: e.shards });
  await store.publishByHand(moveSlots(await store.current(), [slot], to), reason);
}

/** `shards fences --settle` (no age limit, pins honoured) over `e`'s shards. */
function settleReview(e: MoveEnv): Promise<FenceReview> {
  return reviewFences({ catalog: e.catalog, shards: e.shards, settle: true, olderThanMs: 0, routing: PINS_ROUTE });
}

/** The review's row of `unit` on `shard`, if it lists one. */
function listedRow(review: FenceReview, shard: string, kind: 'slot' | 'directory', unit: string): ReviewedFence | undefined {
  return review.rows.find((r) => r.shard === shard && r.kind === kind && r.unitId === unit);
}

/** The job the latest plan recorded, and how its run ended: for the failure message of a plan that should have been refused. */
async function latestJobRun(mover: Mover): Promise<{ rows: Array<{ id: string }>; id: number; ran: string }> {
  const { rows } = await env.catalog.query<{ id: string }>('select id::text from catalog.move_jobs order by id desc limit 1');
  const id = Number(rows[0]?.id);
  return { rows, id, ran: await outcomeOf(mover.run(id)) };
}

/** A mover whose run dies right after its copy, for a rollback by the next run. */
function dyingAfterCopy(e: MoveEnv): Mover {
  return e.mover({
    readerGraceMs: 0,
    hook(point) {
      if (point === 'copied') throw new Error('test: the run dies after its copy');
    },
  });
}

describe('a slot move from a shard whose fence row says the slot moved away', () => {
  it('is refused at plan time, nothing recorded, naming both shards and the way out, which leads to a finished move', async () => {
    const slot = 1702;
    const { from, to, source, target, key, mover } = await seededSides(slot, 3);
    const first = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(first.id)).state).toBe('done');
    // Given back to A by hand, past nothing but the operator's care: no fence taken or opened.
    await givenBackPastFences(slot, from);
    expect(await env.ownerOf(slot)).toBe(from);
    expect(await fenceState(source, slot)).toBe('moved');
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 3 });
    // `shards fences` lists A's row (it refuses the slot where the map sends it) and does not
    // reopen it: the slot's rows are where it sends the writes, B.
    const review = await settleReview(env);
    const listed = listedRow(review, from, 'slot', String(slot));
    expect(listed?.state).toBe('moved');
    expect(listed?.outcome ?? '').toContain(`left: the slot's rows are on ${to}`);
    expect(await fenceState(source, slot)).toBe('moved');

    const jobsBefore = await jobCount();
    const refused = await refusalOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }));
    if (refused === null) {
      // Before the fix: the plan recorded the job; its runs stopped on A's fence, the job left `copying`.
      const { id, ran } = await latestJobRun(mover);
      const other = await refusalOf(mover.plan({ kind: 'directory', key, to, createdBy: 'test' }));
      expect.fail(`plan recorded job #${id}; run ${ran}; job state ${(await mover.get(id)).state}; another move of the slot: ${other instanceof Error ? other.message : 'planned'}`);
    }
    expect(refused).toBeInstanceOf(MoveConflictError);
    const msg = (refused as Error).message;
    expect(msg).toContain(`cannot move slot ${slot} from ${from}`);
    expect(msg).toContain(`moved to ${to}`);
    expect(msg).toContain(`move job #${first.id}'s`);
    expect(msg).toContain('publish_slot_map_by_hand');
    expect(msg).toContain('Nothing was recorded');
    expect(await jobCount()).toBe(jobsBefore);
    expect(await fenceState(source, slot)).toBe('moved');
    expect(await fenceState(target, slot)).toBe('open');

    // The way out it names: the slot given by hand to where its rows are (the store with the
    // shards' pools counts A, empty, and fences it), its writes taken there, and a move from there
    // plans, runs and finishes.
    await givenByHand(env, slot, to, 'rows moved there, map given back past its row');
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
    const back = await mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' });
    expect((await mover.run(back.id)).state).toBe('done');
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 4 });
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
  });
});

describe("a directory move of a key whose source's slot row says the slot moved away", () => {
  it('is refused at plan time, nothing recorded or pinned: before, it ended done with the key on no shard', async () => {
    // The slot moved A -> B with the key's rows, then given back to A by a map by hand that
    // neither fences nor opens a row. A has no row of the key: its slot's `moved` row decides.
    const slot = 1705;
    const { from, to, source, target, key, mover } = await seededSides(slot, 3);
    const first = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(first.id)).state).toBe('done');
    await givenBackPastFences(slot, from);
    const jobsBefore = await jobCount();
    const refused = await refusalOf(mover.plan({ kind: 'directory', key, to, createdBy: 'test' }));
    if (refused === null) {
      // Before the fix: the move ran to `done`, its copy of A's none of the key put over B's rows.
      const { id, ran } = await latestJobRun(mover);
      expect.fail(`plan recorded job #${id}; run ${ran}; the key's rows left: ${JSON.stringify(await countSlot(source, slot))} on ${from}, ${JSON.stringify(await countSlot(target, slot))} on ${to}`);
    }
    expect(refused).toBeInstanceOf(MoveConflictError);
    const msg = (refused as Error).message;
    expect(msg).toContain(`cannot move key ${key} from ${from}`);
    expect(msg).toContain(`its slot ${slot} there, which decides for the key, says moved to ${to}`);
    expect(msg).toContain('publish_slot_map_by_hand');
    expect(await jobCount()).toBe(jobsBefore);
    expect(await env.directory.entry(key)).toBeNull();
    expect(await unitFenceState(source, 'directory', key)).toBeUndefined();
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 3 });
    // The way out: the slot given to where its rows are; the key then moves from there.
    await givenByHand(env, slot, to, 'rows moved there, map given back past its row');
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
    const back = await mover.plan({ kind: 'directory', key, to: from, createdBy: 'test' });
    expect((await mover.run(back.id)).state).toBe('done');
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 4 });
  });
});

describe("a move whose source's row turns moved after its plan", () => {
  it('a slot move fails at its run, rolled back, the slot free, its error naming the way out, which leads to a finished move', async () => {
    // An empty slot given away by a hand change in a caller's transaction that rolled back (the
    // store gives away only a slot it counted empty): its row `moved`, job_id null, the map still
    // naming A. Written here past the catalog, as only a superuser could once the move is planned
    // (CAF08 refuses the map meanwhile).
    const slot = 1703;
    const { from, to, source, target } = await sides(env, slot);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await handRowMoved(source, 'slot', String(slot), to);
    const ran = await outcomeOf(mover.run(job.id));
    const after = await mover.get(job.id);
    // Before the fix: `threw: the fence on A says slot ... is moved ...`, the job left `copying`.
    expect(`${ran}; ${after.state}`).toBe('ended: failed; failed');
    expect(after.error).toContain(`${from}'s fence row of slot ${slot} says moved to ${to}`);
    expect(after.error).toContain("a hand change's");
    expect(after.error).toContain('shards fences --settle');
    expect(after.error).toContain('publish_slot_map_by_hand');
    expect(await fenceState(target, slot)).toBeUndefined();
    // The slot is free: a new move is refused by the plan's check of the row, not by the job.
    const again = await refusalOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }));
    expect(again).toBeInstanceOf(MoveConflictError);
    expect((again as Error).message).toContain(`cannot move slot ${slot} from ${from}`);
    // The way out for a hand change's row over a slot empty on both shards: `shards fences
    // --settle` reopens it, and the move then runs to its end, the slot's new writes on B.
    const review = await settleReview(env);
    expect(review.rows.find((r) => r.shard === from && r.kind === 'slot' && r.unitId === String(slot))?.outcome).toMatch(/^settled/);
    expect(await fenceState(source, slot)).toBeUndefined();
    const next = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(next.id)).state).toBe('done');
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(target, slot, [key], 0);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
  });

  it('a directory move fails at its run likewise, its rows kept, the review leaving the row, the way out by hand leading to a finished move', async () => {
    // A superuser's SQL over a key whose rows never left A: its `directory` row `moved`.
    const slot = 1704;
    const { from, to, source, target, key, mover } = await seededSides(slot, 2);
    const job = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    await handRowMoved(source, 'directory', key, to);
    const ran = await outcomeOf(mover.run(job.id));
    const after = await mover.get(job.id);
    expect(`${ran}; ${after.state}`).toBe('ended: failed; failed');
    expect(after.error).toContain(`${from}'s fence row of key ${key} says moved to ${to}`);
    expect(after.error).toContain(`catalog.repin_by_hand('${key}', '${to}'`);
    expect(after.error).toContain(`delete from write_fences where kind = 'directory' and unit_id = '${key}' and state = 'moved'`);
    expect(await unitFenceState(target, 'directory', key)).toBeUndefined();
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 2 });
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    // Its run pinned the key where it routed (its source), as every directory move does first.
    expect((await env.directory.entry(key))?.shardId).toBe(from);
    const again = await refusalOf(mover.plan({ kind: 'directory', key, to, createdBy: 'test' }));
    expect(again).toBeInstanceOf(MoveConflictError);
    // `shards fences` lists the row and leaves it: rows of the key stand behind it on A.
    const review = await settleReview(env);
    expect(review.rows.find((r) => r.shard === from && r.kind === 'directory' && r.unitId === key)?.outcome).toMatch(/^left: .* holds rows of key/);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    // The way out for rows that never left A: the row deleted there by hand, as the error says.
    await source.query(`delete from write_fences where kind = 'directory' and unit_id = $1 and state = 'moved'`, [key]);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
    const next = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect((await mover.run(next.id)).state).toBe('done');
    env.directory.invalidate(key);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 4 });
  });
});

/** Copies `key`'s user and documents from `from` to `to` by hand and deletes them on `from`, as an operator moving a slot's rows past the mover does (pg_dump, COPY). */
async function keyRowsCopiedByHand(from: pg.Pool, to: pg.Pool, key: string): Promise<void> {
  const users = (await from.query<{ id: string; slot: number; email: string; display_name: string }>('select id, slot, email, display_name from users where id = $1', [key])).rows;
  const docs = (await from.query<{ id: string; owner_id: string; slot: number; title: string; content: unknown }>('select id, owner_id, slot, title, content from documents where owner_id = $1', [key])).rows;
  await readCommitted(to, async (c) => {
    for (const u of users) await c.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [u.id, u.slot, u.email, u.display_name]);
    for (const d of docs) await c.query('insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, $4, $5)', [d.id, d.owner_id, d.slot, d.title, d.content]);
  });
  await readCommitted(from, async (c) => {
    await c.query('delete from documents where owner_id = $1', [key]);
    await c.query('delete from users where id = $1', [key]);
  });
}

describe("a directory move whose source's row of the key's slot turns moved after its plan (h107)", () => {
  it('fails at its run, rolled back, where the catalog still sends the key to the source: before, it copied the source\'s none over the rows and ended done', async () => {
    // The key's rows taken to the target by hand after the plan, and the slot given there by hand
    // in a caller's transaction that rolled back: the store counted the source empty of the slot,
    // fenced it and turned its row `moved` to the target, and the map still names the source. The
    // source has no row of the key: its slot's row decides for the key there.
    const slot = 1706;
    const { from, to, source, target, key, mover } = await seededSides(slot, 3);
    const job = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    await keyRowsCopiedByHand(source, target, key);
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    const client = await env.catalog.connect();
    try {
      // READ COMMITTED, as the store asks of a caller's transaction (MOVE_ENV_ISOLATION='repeatable read' too).
      await client.query('begin isolation level read committed');
      await store.publishByHand(moveSlots(await store.current(), [slot], to), 'rows copied there by hand', client);
    } finally {
      await client.query('rollback');
      client.release();
    }
    expect(await env.ownerOf(slot)).toBe(from);
    expect(await fenceState(source, slot)).toBe('moved');
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 3 });

    const ran = await outcomeOf(mover.run(job.id));
    const after = await mover.get(job.id);
    // Before the fix: `ended: done`, the key's rows on neither shard ({0, 0} on the target).
    expect(`${ran}; ${after.state}; ${JSON.stringify(await countSlot(target, slot))}`).toBe(`ended: failed; failed; ${JSON.stringify({ users: 1, documents: 3 })}`);
    expect(after.error).toContain(`${from} has no fence row of key ${key}, and its row of the key's slot ${slot}, which decides for the key there, says moved to ${to}`);
    expect(after.error).toContain(`catalog.repin_by_hand('${key}', '${to}'`);
    // Nothing of the key reopened on the source, nothing fenced or deleted on the target.
    expect(await unitFenceState(source, 'directory', key)).toBeUndefined();
    expect(await unitFenceState(target, 'directory', key)).toBeUndefined();
    // The way out it names, the rows being on the target: the key pinned there by hand.
    await env.catalog.query(`select catalog.repin_by_hand($1, $2, 'rows copied there by hand')`, [key, to]);
    env.directory.invalidate(key);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 4 });
  });

  it('finishes where a hand change gave the slot, empty, to its target, the key routed there by hash', async () => {
    // h101's case: the move of a key with no rows, its slot given to the move's target by a map by
    // hand (CAF08 checks slot moves only) after the plan. The source's row of the slot says `moved`
    // to the target, which the key routes to by hash: the move publishes it there.
    const slot = 1707;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    await givenByHand(env, slot, to, 'the slot given away empty');
    expect(await fenceState(source, slot)).toBe('moved');
    expect((await mover.run(job.id)).state).toBe('done');
    expect((await env.directory.entry(key))?.shardId).toBe(to);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    await seedUsers(target, slot, [key], 0);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${to}`);
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    expect(from).not.toBe(to);
  });
});

describe("a move from a shard whose fence row says the unit is incoming there (h107)", () => {
  /** An `incoming` row of no live move on `pool` (a superuser's SQL, or a job row ended by hand), as the source's run would meet it. */
  async function handRowIncoming(pool: pg.Pool, kind: 'slot' | 'directory', unit: string): Promise<void> {
    await pool.query(
      `insert into write_fences (kind, unit_id, state) values ($1, $2, 'incoming')
       on conflict (kind, unit_id) do update set state = 'incoming', moved_to = null, job_id = null`,
      [kind, unit],
    );
  }

  it('a directory move is refused at plan time, nothing recorded or pinned, for the key\'s own row and for its slot\'s: before, its run pinned the key there for good and failed', async () => {
    const slot = 1708;
    const { from, to, source } = await sides(env, slot);
    const [own, bySlot] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [own, bySlot], 1);
    const mover = env.mover({ readerGraceMs: 0 });
    await handRowIncoming(source, 'directory', own);
    for (const key of [own, bySlot]) {
      if (key === bySlot) await handRowIncoming(source, 'slot', String(slot));
      const jobsBefore = await jobCount();
      const refused = await refusalOf(mover.plan({ kind: 'directory', key, to, createdBy: 'test' }));
      if (refused === null) {
        const { id, ran } = await latestJobRun(mover);
        expect.fail(`plan recorded job #${id} for key ${key === own ? '(own row)' : '(slot row)'}; run ${ran}; the key pinned to ${(await env.directory.entry(key))?.shardId ?? 'nothing'}`);
      }
      expect(refused).toBeInstanceOf(MoveConflictError);
      expect((refused as Error).message).toContain(`cannot move key ${key} from ${from}`);
      expect((refused as Error).message).toContain('incoming');
      expect(await jobCount()).toBe(jobsBefore);
      expect(await env.directory.entry(key)).toBeNull();
    }
    await source.query(`delete from write_fences where state = 'incoming' and job_id is null and ((kind = 'slot' and unit_id = $1) or (kind = 'directory' and unit_id = $2))`, [String(slot), own]);
  });

  it('a slot move is refused at plan time, nothing recorded: before, it was recorded and failed at its run', async () => {
    const slot = 1709;
    const { from, to, source } = await sides(env, slot);
    await handRowIncoming(source, 'slot', String(slot));
    const jobsBefore = await jobCount();
    const mover = env.mover({ readerGraceMs: 0 });
    const refused = await refusalOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }));
    if (refused === null) {
      const { rows } = await env.catalog.query<{ id: string }>('select id::text from catalog.move_jobs order by id desc limit 1');
      expect.fail(`plan recorded job #${rows[0]?.id}; run ${await outcomeOf(mover.run(Number(rows[0]?.id)))}`);
    }
    expect(refused).toBeInstanceOf(MoveConflictError);
    expect((refused as Error).message).toContain(`cannot move slot ${slot} from ${from}`);
    expect((refused as Error).message).toContain('says incoming');
    expect(await jobCount()).toBe(jobsBefore);
    await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1 and state = 'incoming' and job_id is null`, [String(slot)]);
  });
});

describe("a move whose source's row turns moved after its copy (h107)", () => {
  it('fails at its next run and deletes on the target only its own copy: the rows on the source are kept', async () => {
    // The run copied the slot to the target and died; a row `moved` to the target written on the
    // source since (a superuser's SQL). The rollback deletes what lies under its own `incoming`
    // row there, which refused every other writer since it was taken: its copy, nothing else.
    const slot = 1710;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 2);
    const dying = dyingAfterCopy(env);
    const job = await dying.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await expect(dying.run(job.id)).rejects.toThrow(/dies after its copy/);
    expect(await countSlot(target, slot)).toEqual({ users: 2, documents: 4 });
    await handRowMoved(source, 'slot', String(slot), to);
    const mover = env.mover({ readerGraceMs: 0 });
    const ran = await outcomeOf(mover.run(job.id));
    const after = await mover.get(job.id);
    expect(`${ran}; ${after.state}`).toBe('ended: failed; failed');
    expect(after.error).toContain(`${from}'s fence row of slot ${slot} says moved to ${to}`);
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(source, slot)).toEqual({ users: 2, documents: 4 });
    expect(await fenceState(target, slot)).toBe('moved');
    await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1 and state = 'moved' and job_id is null`, [String(slot)]);
  });
});

describe("a directory move's rollback over a source whose slot row had disowned the key (h107)", () => {
  it("leaves no open row of the key on the source, which refuses the key's writes again as before the move", async () => {
    // The key (no rows) moves A -> B; its slot is given, empty, to B by a map by hand after the
    // plan (A's slot row `moved` to B): the key routes by hash to B, and the move goes on, its run
    // inserting the key's `open` row on A. It dies after its copy; an operator pins the key to a
    // third shard C meanwhile: the move fails and rolls back. A writer still holding the map from
    // before the hand change writes the key on A.
    const slot = 1711;
    const { from, to, third } = await threeShardsOf(env3, slot);
    const source = env3.shards.get(from) as pg.Pool;
    const [key] = keysInSlot(slot, 1) as [string];
    const dying = dyingAfterCopy(env3);
    const job = await dying.plan({ kind: 'directory', key, to, createdBy: 'test' });
    await givenByHand(env3, slot, to, 'the slot given away empty');
    expect(await fenceState(source, slot)).toBe('moved');
    expect(await userWriteOutcome(source, slot, keysInSlot(slot, 1)[0] as string)).toBe('refused CAF02');
    await expect(dying.run(job.id)).rejects.toThrow(/dies after its copy/);
    expect(await unitFenceState(source, 'directory', key)).toBe('open');
    await env3.directory.set(key, third, 'ops@example.com');
    const mover = env3.mover({ readerGraceMs: 0 });
    const ran = await outcomeOf(mover.run(job.id));
    expect(`${ran}; ${(await mover.get(job.id)).state}`).toBe('ended: failed; failed');
    // Before the fix: the key's row on A stayed `open`, and the write was acknowledged on A, where
    // no route sends the key (its pin names C): out of every reader's sight.
    expect(await userWriteOutcome(source, slot, key)).toBe('refused CAF02');
    expect(await unitFenceState(source, 'directory', key)).not.toBe('open');
  });
});

describe("a directory move's rollback over the key's own open row on a source whose slot row had disowned the slot (h110)", () => {
  it("leaves a row the move did not insert, over the key's rows there: a key moved back to the source earlier, its pin deleted past the guard meanwhile", async () => {
    // The slot moved A -> B with the key's rows (routed by hash), then the key moved back B -> A
    // by a directory move: A's row of the key is `open` (that move's), over A's row of the slot,
    // `moved` to B, which does not keep the key out (it was not placed by the directory when the
    // slot moved); the key's rows are on A, its pin names A. A move of it A -> C dies after its
    // copy, and a superuser deletes its pin past the guard (CAF06): the key routes by hash to B, a
    // third shard, and the next run rolls the move back as failed.
    const slot = 1712;
    const { from, to, third, a, c, key, mover } = await seededThree(slot);
    const slotMove = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(slotMove.id)).state).toBe('done');
    const back = await mover.plan({ kind: 'directory', key, to: from, createdBy: 'test' });
    expect((await mover.run(back.id)).state).toBe('done');
    expect(await countSlot(a, slot)).toEqual({ users: 1, documents: 2 });
    expect(await unitFenceState(a, 'directory', key)).toBe('open');
    expect(await fenceState(a, slot)).toBe('moved');
    const dying = dyingAfterCopy(env3);
    const job = await dying.plan({ kind: 'directory', key, to: third, createdBy: 'test' });
    await expect(dying.run(job.id)).rejects.toThrow(/dies after its copy/);
    expect(await deletePinPastGuard(env3.catalog, key)).toBe(true);
    env3.directory.invalidate(key);
    const ran = await outcomeOf(mover.run(job.id));
    expect(`${ran}; ${(await mover.get(job.id)).state}`).toBe('ended: failed; failed');
    expect(await countSlot(a, slot)).toEqual({ users: 1, documents: 2 });
    expect(await countSlot(c, slot)).toEqual({ users: 0, documents: 0 });
    // Before the fix: A's row of the key, which the move did not insert, turned `moved` to B,
    // whose own row of the key says `moved` to A (the move back): the key's rows on A behind a
    // row saying they went where they never were, refused on both shards (CAF02), and the way out
    // (the key pinned by hand to where its rows are) refused there too.
    expect(await unitFenceState(a, 'directory', key)).toBe('open');
    await env3.catalog.query(`select catalog.repin_by_hand($1, $2, 'its rows are there')`, [key, from]);
    env3.directory.invalidate(key);
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${from}`);
    expect(await countSlot(a, slot)).toEqual({ users: 1, documents: 3 });
  });
});

describe("shards fences --settle over a pinned key's row on a shard whose slot row says moved (h110)", () => {
  it("does not reopen the key there while its rows are where that slot row sent them: before, it set the row open, the key's writes taken where its rows are not", async () => {
    // The slot moved A -> B with the key's rows (routed by hash); the key pinned to A past the
    // stores (a pin over no entry counts nothing), and a hand change of its pin from A to C in a
    // caller's transaction that rolled back left A's row of the key `moved` to C (job_id null).
    // A's row of the slot, `moved` to B, does not keep the key out: reopened, the key's own row
    // would be set `open` over it.
    const slot = 1713;
    const { from, to, third, a, b, key, mover } = await seededThree(slot);
    const slotMove = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(slotMove.id)).state).toBe('done');
    expect(await countSlot(b, slot)).toEqual({ users: 1, documents: 2 });
    await env3.directory.set(key, from, 'ops@example.com');
    await handRowMoved(a, 'directory', key, third);
    const review = await settleReview(env3);
    const listed = listedRow(review, from, 'directory', key);
    // Before the fix: `settled: reopened (set open)`, and a new user of the key acknowledged on A
    // while its user and documents stay on B, out of its readers' sight.
    expect(`${await unitFenceState(a, 'directory', key)}; ${listed?.outcome ?? 'not listed'}`).toMatch(new RegExp(`^moved; left: the key's rows are on ${to} \\(`));
    expect(await userWriteOutcome(a, slot, key)).toBe('refused CAF02');
    // The way out it names: the key pinned back to where its rows are.
    await env3.catalog.query(`select catalog.repin_by_hand($1, $2, 'its rows are there')`, [key, to]);
    env3.directory.invalidate(key);
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${to}`);
  });

  it("follows the slot's rows on from the shard its rows went to: the key's rows with the slot moved on from there", async () => {
    // The slot moved A -> B, then B -> C, with the key's rows (routed by hash); the key pinned to
    // A past the stores, and a hand change of its pin from A to B rolled back in its caller's
    // transaction (A's row of the key `moved` to B). On B, no row of the key: its slot's `moved`
    // row there, a move's, makes the key's rows on B that move's leftovers, and sent them on to C.
    const slot = 1715;
    const { from, to, third, a, c, key, mover } = await seededThree(slot);
    for (const next of [to, third]) {
      const move = await mover.plan({ kind: 'slot', slot, to: next, createdBy: 'test' });
      expect((await mover.run(move.id)).state).toBe('done');
    }
    expect(await countSlot(c, slot)).toEqual({ users: 1, documents: 2 });
    await env3.directory.set(key, from, 'ops@example.com');
    await handRowMoved(a, 'directory', key, to);
    const review = await settleReview(env3);
    const listed = listedRow(review, from, 'directory', key);
    // Before: `settled: reopened (set open)`, C never counted.
    expect(`${await unitFenceState(a, 'directory', key)}; ${listed?.outcome ?? 'not listed'}`).toMatch(new RegExp(`^moved; left: the key's rows are on ${third} \\(.*moved on from ${to}`));
    expect(await userWriteOutcome(a, slot, key)).toBe('refused CAF02');
  });
});

describe("a slot move to a shard holding the slot's rows behind no row refusing them (h110)", () => {
  it("is refused at plan time, nothing recorded, after the source's moved row was deleted by hand while the rows were on the target: before, the move deleted them and ended done", async () => {
    // The slot moved A -> B with its rows, given back to A by a map by hand that neither fences nor
    // opens a row (A's row `moved` to B). The plan of a move from A names three ways out by where
    // the rows are; an operator takes the third (the rows on A, the row deleted there) while they
    // are on B, then moves the slot to B, where they are.
    const slot = 1714;
    const { from, to, source, target } = await sides(env, slot);
    const keys = keysInSlot(slot, 2);
    await seedUsers(source, slot, keys, 3);
    const mover = env.mover({ readerGraceMs: 0 });
    const first = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(first.id)).state).toBe('done');
    await givenBackPastFences(slot, from);
    expect(await refusalOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }))).toBeInstanceOf(MoveConflictError);
    await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1 and state = 'moved'`, [String(slot)]);
    const jobsBefore = await jobCount();
    const refused = await refusalOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }));
    if (refused === null) {
      // Before the fix: the move's copy deleted the target's rows of the slot (A's none copied
      // over them), the map gave it the slot, and the slot's users and documents were on no shard.
      const { rows, ran } = await latestJobRun(mover);
      expect.fail(`plan recorded job #${rows[0]?.id}; run ${ran}; the slot's rows left: ${JSON.stringify(await countSlot(source, slot))} on ${from}, ${JSON.stringify(await countSlot(target, slot))} on ${to}`);
    }
    expect(refused).toBeInstanceOf(MoveConflictError);
    const msg = (refused as Error).message;
    expect(msg).toContain(`cannot move slot ${slot} from ${from} to ${to}: ${to} holds rows of the slot (2 in users, 6 in documents)`);
    expect(msg).toContain('publishByHand');
    expect(msg).toContain('Nothing was recorded');
    expect(await jobCount()).toBe(jobsBefore);
    expect(await countSlot(target, slot)).toEqual({ users: 2, documents: 6 });
    // The way out it names, the rows being on B: the slot given there by hand through the stores
    // (they count A, empty, and fence it); its writes then land where its rows are.
    await givenByHand(env, slot, to, 'its rows are there');
    expect(await documentWrittenFor(env, keys[0] as string)).toBe(`written on ${to}`);
    expect(await countSlot(target, slot)).toEqual({ users: 2, documents: 7 });
  });
});

describe("shards fences --settle over a pinned key's (or a slot's) own moved row with its live rows behind it (h116)", () => {
  it("leaves the row and says the rows are where the key's pin sends it, never to delete them: before, it called them leftovers and said to delete them", async () => {
    // The key pinned to A, its rows there acknowledged through the router; then an operator's pin
    // change from A to B made by SQL that failed half way (its fence on A turned moved to B, its
    // repin never made), as a store's change rolled back in its caller's transaction leaves the row.
    const slot = 1716;
    const { from, to, source, target, key } = await seededSides(slot, 2);
    await env.directory.set(key, from, 'ops@example.com');
    env.directory.invalidate(key);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
    await handRowMoved(source, 'directory', key, to);
    const review = await settleReview(env);
    const outcome = listedRow(review, from, 'directory', key)?.outcome ?? 'not listed';
    // Before the fix: `left: A holds rows of key ... behind this row: rows the unit left there when
    // it went away ... delete the rows, then settle again`: the key's only rows, acknowledged.
    expect(outcome).not.toMatch(/delete the rows|left there when it went away/);
    expect(outcome).toMatch(new RegExp(`^left: ${from} holds rows of key ${key} \\(1 in users, 3 in documents\\) behind this row, and the key routes to ${from} \\(its pin, directory version \\d+\\)`));
    expect(outcome).toContain('do not delete them');
    expect(outcome).toContain(`${to}, where this row sends the key's writes, holds none of the key's rows`);
    expect(outcome).toContain(`delete from write_fences where kind = 'directory' and unit_id = '${key}' and state = 'moved'`);
    expect({ row: await unitFenceState(source, 'directory', key), here: await countSlot(source, slot), there: await countSlot(target, slot) }).toEqual({
      row: 'moved',
      here: { users: 1, documents: 3 },
      there: { users: 0, documents: 0 },
    });
    // The way out it names for the key's rows here: its row deleted by hand; the key's writes land with its rows.
    await source.query(`delete from write_fences where kind = 'directory' and unit_id = $1 and state = 'moved'`, [key]);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 4 });
  });

  it("leaves a slot's hand row over the slot's rows likewise, never saying to delete them, its way out leading to the slot's writes landing with its rows", async () => {
    // The slot's rows on A, acknowledged there; a hand change's row of the slot turned moved to B
    // over them past the stores (a change by SQL that failed half way, a superuser's row).
    const slot = 1718;
    const { from, to, source, target, key } = await seededSides(slot, 2);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
    await handRowMoved(source, 'slot', String(slot), to);
    const review = await settleReview(env);
    const outcome = listedRow(review, from, 'slot', String(slot))?.outcome ?? 'not listed';
    // Before the fix: `... rows the unit left there when it went away ... delete the rows, then settle again`.
    expect(outcome).not.toMatch(/delete the rows|left there when it went away/);
    expect(outcome).toMatch(new RegExp(`^left: ${from} holds rows of slot ${slot} \\(1 in users, 3 in documents\\) behind this row, a hand change's \\(job_id null\\), and the map names ${from}`));
    expect(outcome).toContain(`do not delete them; ${to}, where this row sends the slot's writes, holds none of the slot's rows`);
    expect(outcome).toContain(`delete from write_fences where kind = 'slot' and unit_id = '${slot}' and state = 'moved'`);
    expect({ row: await fenceState(source, slot), here: await countSlot(source, slot), there: await countSlot(target, slot) }).toEqual({
      row: 'moved',
      here: { users: 1, documents: 3 },
      there: { users: 0, documents: 0 },
    });
    await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1 and state = 'moved'`, [String(slot)]);
    expect(await documentWrittenFor(env, key)).toBe(`written on ${from}`);
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 4 });
  });
});

describe("a slot move to a third shard while a shard that owned the slot holds its rows behind no refusing row (h116)", () => {
  it("is refused at plan time, nothing recorded, naming that shard: before, it copied the source's rows to the third shard and ended done, the slot's rows left out of every reader's sight", async () => {
    // The slot moved A -> B with its rows, given back to A by a map by hand that neither fences nor
    // opens a row (A's row `moved` to B); an operator takes the plan's third way out misjudged (A's
    // row deleted by hand as if the rows were on A) while they are on B. A then takes the slot's
    // writes (no row refuses them), and the slot is moved on to C: the check of 48ef7ab counts C alone.
    const slot = 1717;
    const { from, to, third, a, b, c, key, mover } = await seededThree(slot);
    const first = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(first.id)).state).toBe('done');
    await env3.slotMaps.publishByHand(moveSlots(await env3.slotMaps.current(), [slot], from), 'restored by hand', undefined, { rowsLeftOn: 'checked' });
    expect(await refusalOf(mover.plan({ kind: 'slot', slot, to: third, createdBy: 'test' }))).toBeInstanceOf(MoveConflictError);
    await a.query(`delete from write_fences where kind = 'slot' and unit_id = $1 and state = 'moved'`, [String(slot)]);
    const newcomer = keysInSlot(slot, 2)[1] as string;
    const landed = await env3.writer.withShardWrite(newcomer, async ({ client, slot: s }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'newcomer')`, [newcomer, s, `${newcomer}@example.com`]);
    });
    expect(landed.shardId).toBe(from);
    const jobsBefore = Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n);
    const refused = await refusalOf(mover.plan({ kind: 'slot', slot, to: third, createdBy: 'test' }));
    if (refused === null) {
      const { rows } = await env3.catalog.query<{ id: string }>('select id::text from catalog.move_jobs order by id desc limit 1');
      const ran = await outcomeOf(mover.run(Number(rows[0]?.id)));
      expect.fail(
        `plan recorded job #${rows[0]?.id}; run ${ran}; the slot's rows: ${JSON.stringify(await countSlot(c, slot))} on ${third} (its owner now), ${JSON.stringify(await countSlot(b, slot))} left on ${to}, out of every reader's sight`,
      );
    }
    expect(refused).toBeInstanceOf(MoveConflictError);
    const msg = (refused as Error).message;
    expect(msg).toContain(`cannot move slot ${slot} from ${from} to ${third}: ${to}, which owned the slot in an earlier slot map, holds rows of it (1 in users, 2 in documents) behind its open fence row`);
    expect(msg).toContain('Nothing was recorded');
    expect(Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n)).toBe(jobsBefore);
    expect(await countSlot(b, slot)).toEqual({ users: 1, documents: 2 });
    expect(await countSlot(c, slot)).toEqual({ users: 0, documents: 0 });
    // The way out it names (a split: rows on both): A's rows of the slot put on B by hand, the
    // slot given to B through the stores (they count A, empty, and fence it), then moved on to C.
    await keyRowsCopiedByHand(a, b, newcomer);
    await givenByHand(env3, slot, to, 'its rows are there');
    const next = await mover.plan({ kind: 'slot', slot, to: third, createdBy: 'test' });
    expect((await mover.run(next.id)).state).toBe('done');
    expect(await countSlot(c, slot)).toEqual({ users: 2, documents: 2 });
    env3.directory.invalidate(key);
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${third}`);
  });
});

describe("shards fences --settle over a pinned key's own moved row with its rows behind it, on a shard whose slot row says moved (h120)", () => {
  it("names the SQL that opens the key's row, not one that deletes it: deleted, the slot's moved row refused the key's writes where its pin sends them, for good", async () => {
    // The slot moved A -> B with the key's rows (routed by hash), then the key moved back B -> A by
    // a directory move: its rows and its pin on A, A's row of the key `open` over A's row of the
    // slot, `moved` to B, which does not keep the key out. A pin change of the key from A to C by
    // SQL that failed half way (or a store's change rolled back in its caller's transaction) left
    // A's row of the key `moved` to C, job_id null, over the key's live rows.
    const slot = 1719;
    const { from, to, third, a, c, key, mover } = await seededThree(slot);
    const slotMove = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(slotMove.id)).state).toBe('done');
    const back = await mover.plan({ kind: 'directory', key, to: from, createdBy: 'test' });
    expect((await mover.run(back.id)).state).toBe('done');
    expect(await fenceState(a, slot)).toBe('moved');
    await handRowMoved(a, 'directory', key, third);
    const review = await settleReview(env3);
    const outcome = listedRow(review, from, 'directory', key)?.outcome ?? 'not listed';
    expect(outcome).toMatch(new RegExp(`^left: ${from} holds rows of key ${key} \\(1 in users, 2 in documents\\) behind this row, and the key routes to ${from} \\(its pin, directory version \\d+\\)`));
    expect(outcome).toContain('do not delete them');
    // The way out it prints for the key's rows here, run as printed.
    const printed = /where they are those on [^,]+, (?:delete|open) this row there \(((?:delete from|update) write_fences .*?state = 'moved'(?: and moved_to (?:is null|= '[^']*') and job_id (?:is null|= \d+))?)\)/.exec(outcome)?.[1];
    expect(printed, outcome).toBeDefined();
    await a.query(printed as string);
    env3.directory.invalidate(key);
    // Before the fix: `delete from write_fences where kind = 'directory' ...`: A's row of the slot,
    // `moved` to B, then decided for the key and refused every write its pin sends to A (CAF02),
    // the router sent back to A by the pin ("routing is not converging"), until someone found it.
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${from}`);
    expect(await countSlot(a, slot)).toEqual({ users: 1, documents: 3 });
    expect(await countSlot(c, slot)).toEqual({ users: 0, documents: 0 });
  });
});

describe("a directory move to a third shard while a shard the key was pinned to holds its rows behind no refusing row (h120)", () => {
  it("is refused at plan time, nothing recorded or pinned, naming that shard: before, it moved the source's rows alone, pinned the key to the third shard and ended done, the key's rows left out of every reader's sight", async () => {
    // The key moved A -> B by a directory move (its rows and pin on B, A's row of the key `moved`
    // to B); its pin given back to A past the stores (catalog.repin_by_hand, which counts and
    // fences nothing); the plan's way out misjudged (A's row of the key deleted by hand as if its
    // rows were on A). A then takes the key's writes, no row refusing them, while its rows stay on
    // B, and the key is moved on to C: the checks count the source and the target alone.
    const slot = 1720;
    const { from, to, third, a, b, c, key, mover } = await seededThree(slot);
    const first = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect((await mover.run(first.id)).state).toBe('done');
    expect(await countSlot(b, slot)).toEqual({ users: 1, documents: 2 });
    await env3.catalog.query(`select catalog.repin_by_hand($1, $2, 'restored by hand')`, [key, from]);
    env3.directory.invalidate(key);
    expect(await refusalOf(mover.plan({ kind: 'directory', key, to: third, createdBy: 'test' }))).toBeInstanceOf(MoveConflictError);
    await a.query(`delete from write_fences where kind = 'directory' and unit_id = $1 and state = 'moved'`, [key]);
    const jobsBefore = Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n);
    const refused = await refusalOf(mover.plan({ kind: 'directory', key, to: third, createdBy: 'test' }));
    if (refused === null) {
      const { rows } = await env3.catalog.query<{ id: string }>('select id::text from catalog.move_jobs order by id desc limit 1');
      const ran = await outcomeOf(mover.run(Number(rows[0]?.id)));
      env3.directory.invalidate(key);
      expect.fail(
        `plan recorded job #${rows[0]?.id}; run ${ran}; the key's rows: ${JSON.stringify(await countSlot(c, slot))} on ${third} (its pin now: ${(await env3.directory.entry(key))?.shardId ?? 'none'}), ${JSON.stringify(await countSlot(b, slot))} left on ${to}, out of every reader's sight`,
      );
    }
    expect(refused).toBeInstanceOf(MoveConflictError);
    const msg = (refused as Error).message;
    expect(msg).toContain(`cannot move key ${key} from ${from} to ${third}: ${to} holds rows of the key (1 in users, 2 in documents) behind`);
    expect(msg).toContain('Nothing was recorded or pinned');
    expect(Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n)).toBe(jobsBefore);
    expect((await env3.directory.entry(key))?.shardId).toBe(from);
    expect(await countSlot(b, slot)).toEqual({ users: 1, documents: 2 });
    // The way out it names, the key's rows being on B: the key pinned back there by hand; its
    // writes land with its rows, and it moves on from there.
    await env3.catalog.query(`select catalog.repin_by_hand($1, $2, 'its rows are there')`, [key, to]);
    env3.directory.invalidate(key);
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${to}`);
    const next = await mover.plan({ kind: 'directory', key, to: third, createdBy: 'test' });
    expect((await mover.run(next.id)).state).toBe('done');
    env3.directory.invalidate(key);
    expect(await countSlot(c, slot)).toEqual({ users: 1, documents: 3 });
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${third}`);
  });
});

describe("a directory move while a shard holds only the user a slot move's clean-up kept there, its slot since given back (h124)", () => {
  it("is planned and finishes: the slot's move back wrote A a row of the key saying moved to its pin, which the check honours", async () => {
    // The key's user on A owns a document stored under another slot (written before shard migration
    // 015): the slot's move A -> B kept that user on A ("clean-up kept 1 user row"), behind A's
    // `moved` row of the slot. The key then moved B -> C by a directory move (pinned to C, its rows
    // there), and the slot came back B -> A by a slot move, the key kept out of it (pinned): A's
    // row of the slot no longer keeps the key out, but the move back wrote A a row of the key,
    // `moved` to its pin, C: the kept user stands behind it, and the check passes it.
    const slot = 1721;
    const { from, to, third, a, b, c, key, mover } = await seededThree(slot);
    await a.query(
      `begin; set local session_replication_role = replica;
       insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), '${key}', ${slot + 100}, 'before 015'); commit`,
    );
    const away = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect({ state: away.state, error: away.error }).toEqual({ state: 'done', error: expect.stringMatching(/clean-up kept 1 user row/) as unknown });
    expect((await mover.run((await mover.plan({ kind: 'directory', key, to: third, createdBy: 'test' })).id)).state).toBe('done');
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' })).id)).state).toBe('done');
    env3.directory.invalidate(key);
    expect((await env3.directory.entry(key))?.shardId).toBe(third);
    expect(await countSlot(a, slot)).toEqual({ users: 1, documents: 0 });
    expect(await countSlot(c, slot)).toEqual({ users: 1, documents: 2 });
    const planned = await outcomeOf(mover.plan({ kind: 'directory', key, to, createdBy: 'test' }).then((j) => mover.run(j.id)));
    expect(planned).toBe('ended: done');
    env3.directory.invalidate(key);
    expect(await countSlot(b, slot)).toEqual({ users: 1, documents: 2 });
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${to}`);
  });
});

describe("a directory move while a shard neither its source nor its target does not answer (h124)", () => {
  it("is refused, nothing recorded or pinned, by an error that names that shard and why a key's move asks it, still a node's failure (503)", async () => {
    const slot = 1722;
    const { from, to, third, key } = await seededThree(slot);
    // The third shard's primary as a pool to a port nothing listens on (loopback).
    const dead = new (await import('pg')).default.Pool({ host: '127.0.0.1', port: 1, user: 'nobody', database: third, connectionTimeoutMillis: 2_000 });
    dead.on('error', () => undefined);
    try {
      const shards = new Map(env3.shards);
      shards.set(third, dead);
      const mover = env3.mover({ readerGraceMs: 0, shards });
      const jobsBefore = Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n);
      const failure = (await refusalOf(mover.plan({ kind: 'directory', key, to, createdBy: 'test' }))) as Error | null;
      expect(failure).not.toBeNull();
      // Before: the driver's bare "connect ECONNREFUSED 127.0.0.1:1", which the API answers as
      // "starting the move: the catalog or a shard did not answer (connection error ECONNREFUSED)":
      // the operator looked at the key's source and target, both answering.
      expect((failure as Error).message).toMatch(new RegExp(`^cannot plan the move of key ${key} from ${from} to ${to}: ${third} did not answer \\(connection error ECONNREFUSED\\)`));
      expect((failure as Error).message).toContain('Nothing was recorded or pinned');
      // A node's failure, which POST /shards/moves answers with a 503 in these words (wiring.ts, reachable).
      expect(failure).toBeInstanceOf(MovePlanShardUnanswered);
      expect(isNodeFailure((failure as MovePlanShardUnanswered).cause)).toBe(true);
      expect(Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n)).toBe(jobsBefore);
      expect(await env3.directory.entry(key)).toBeNull();
    } finally {
      await dead.end();
    }
  });
});

describe("a slot move while a shard that owned the slot, neither its source nor its target, does not answer (h132)", () => {
  it("is refused, nothing recorded, by an error that names that shard and why a slot's move asks it, still a node's failure (503)", async () => {
    // The slot moved A -> B and back B -> A (catalog.slot_owner_history names B); B then stops
    // answering, and the slot is moved from A to C: the plan asks B (checkFormerOwnersHoldNoSlotRows).
    const slot = 1726;
    const { from, to, third, mover } = await seededThree(slot);
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' })).id)).state).toBe('done');
    const dead = new (await import('pg')).default.Pool({ host: '127.0.0.1', port: 1, user: 'nobody', database: to, connectionTimeoutMillis: 2_000 });
    dead.on('error', () => undefined);
    try {
      const shards = new Map(env3.shards);
      shards.set(to, dead);
      const downed = env3.mover({ readerGraceMs: 0, shards });
      const jobsBefore = Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n);
      const failure = (await refusalOf(downed.plan({ kind: 'slot', slot, to: third, createdBy: 'test' }))) as Error | null;
      expect(failure).not.toBeNull();
      // Before: the driver's bare "connect ECONNREFUSED 127.0.0.1:1", which the API answered as
      // "starting the move: the catalog or a shard did not answer (connection error ECONNREFUSED)".
      expect((failure as Error).message).toMatch(new RegExp(`^cannot plan the move of slot ${slot} from ${from} to ${third}: ${to} did not answer \\(connection error ECONNREFUSED\\), and it owned the slot in an earlier slot map`));
      expect((failure as Error).message).toContain('Nothing was recorded');
      expect((failure as Error).message).not.toContain('127.0.0.1');
      expect(failure).toBeInstanceOf(MovePlanShardUnanswered);
      expect((failure as MovePlanShardUnanswered).shard).toBe(to);
      expect(isNodeFailure((failure as MovePlanShardUnanswered).cause)).toBe(true);
      expect(Number((await env3.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n)).toBe(jobsBefore);
      // The rebalance check's refusals name it too (its `unresolved` line: wiring.ts).
      const [verdict] = await downed.refusals([{ kind: 'slot', slot, to: third, createdBy: 'test' }]);
      expect(verdict && 'failed' in verdict ? { unanswered: verdict.unanswered, node: isNodeFailure(verdict.failed) } : verdict).toEqual({
        unanswered: { shard: to, asked: 'which owned the slot in an earlier slot map' },
        node: true,
      });
    } finally {
      await dead.end();
    }
  });
});

describe("directory moves over every shard's rows of the key: no false refusal (h124)", () => {
  it("a key moved A -> B -> A -> C by directory moves, then its slot moved while it was pinned, then the key moved on: each planned and done, its rows with it", async () => {
    const slot = 1723;
    const { from, to, third, b, c, key, mover } = await seededThree(slot);
    const move = async (target: string) => {
      const outcome = await outcomeOf(mover.plan({ kind: 'directory', key, to: target, createdBy: 'test' }).then((j) => mover.run(j.id)));
      env3.directory.invalidate(key);
      return outcome;
    };
    expect([await move(to), await move(from), await move(third)]).toEqual(['ended: done', 'ended: done', 'ended: done']);
    // The slot moves A -> B while the key is pinned to C (kept out of it), and the key moves on to B.
    expect(await outcomeOf(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }).then((j) => mover.run(j.id)))).toBe('ended: done');
    expect(await countSlot(c, slot)).toEqual({ users: 1, documents: 2 });
    expect(await move(to)).toBe('ended: done');
    expect(await countSlot(b, slot)).toEqual({ users: 1, documents: 2 });
    expect(await move(from)).toBe('ended: done');
    expect(await documentWrittenFor(env3, key)).toBe(`written on ${from}`);
  });
});
