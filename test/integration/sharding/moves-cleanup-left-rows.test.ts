/**
 * Issue #15 (h68's suspicion): the rows a finished move's clean-up leaves on its source, and what
 * becomes of them when the unit comes back to that shard.
 *
 * What a done move leaves: nothing of its unit, for a slot (users, documents, key records) or a
 * directory key, with one exception: a user of the slot that still owns a document stored under
 * another slot. Since shard migrations 014/015 and 021 a document's and a key record's slot are
 * their owner's, so only a document written before 015 (its key `NOT VALID`: such rows are not
 * checked until an operator validates it), or past the triggers, is one; the clean-up deletes a
 * user only once it owns nothing (a cascade would take that document, which no verification saw),
 * keeps it, and notes it on the job. The kept row is the user as it was at the move: out of every
 * reader's sight while the slot's `moved` row stands there.
 *
 * When the slot comes back:
 * - by a move back, the copy's page deleted the target's rows of the unit before its COPY (COPY
 *   cannot upsert): with foreign keys checked (a mover login that may not skip row triggers) the
 *   cascade took the document under another slot, an acknowledged row of a slot that shard owns,
 *   and the move ended `done`; a rollback of the move back did the same whatever the login (its
 *   deletion always fires the triggers). The copy now upserts such a user, and a rollback leaves a
 *   user that still owns rows there, as the clean-up does. A page deletes the whole lane after its
 *   cursor: it spares such users past the page too, for the later page that upserts them (h77);
 * - given back by hand (`SlotMapStore.publishByHand`, given the shards' pools), once the new owner
 *   holds none of the slot's rows (the user deleted there: an account deleted), the store deleted
 *   the old owner's `moved` row of the finished move after the commit, and the kept user was read
 *   there again: a deleted user back, with its old e-mail and name. The store now counts the slot's
 *   rows on the new owner behind such a row before anything is fenced, and refuses.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLogin } from '../../../functions/adapters/postgres/app-role.js';
import type { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, countSlot, fenceState, keyRecords, keysInSlot, type MoveEnv, otherProcess, refusalOf, runStoppedAfterCopy, seedKeys, seedUsers, sides, startMoveEnv, unitFenceState } from './fixtures/move-env.js';

let env: MoveEnv;
let slotMaps: SlotMapStore;
beforeAll(async () => {
  env = await startMoveEnv();
  slotMaps = countingStores(env).slotMaps;
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** Every row of `owner` on `pool`: its user (e-mail, name, slot) and its documents' and key records' count. */
async function rowsOf(pool: pg.Pool, owner: string): Promise<{ user: string | null; documents: number; keys: number }> {
  const { rows } = await pool.query<{ user: string | null; documents: number; keys: number }>(
    `select (select email || ' / ' || display_name || ' / ' || slot from users where id = $1) as user,
            (select count(*)::int from documents where owner_id = $1) as documents,
            (select count(*)::int from document_keys where owner_id = $1) as keys`,
    [owner],
  );
  return rows[0] ?? { user: null, documents: 0, keys: 0 };
}

/** What a reader routed by the current map reads of `user` (a fresh process: its router holds the map as it is now). */
async function readerSees(user: string): Promise<string | null> {
  const reader = (await otherProcess(env)).reader;
  const { value } = await reader.withShardRead(user, async ({ client }) =>
    (await client.query<{ u: string }>(`select email || ' / ' || display_name as u from users where id = $1`, [user])).rows.map((r) => r.u),
  );
  return value[0] ?? null;
}

/**
 * Seeds `user` (slot `slot`) on `pool` with one document and one key record, plus one document
 * stored under slot `elsewhere`, as written before shard migration 015 (its foreign keys skipped).
 */
async function seedWithDocumentElsewhere(pool: pg.Pool, slot: number, user: string, elsewhere: number): Promise<string> {
  await seedUsers(pool, slot, [user], 1);
  await seedKeys(pool, slot, [user], 1);
  await pool.query(
    `begin; set local session_replication_role = replica;
     insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), '${user}', ${elsewhere}, 'before 015'); commit`,
  );
  const { rows: found } = await pool.query<{ id: string }>(`select id::text from documents where owner_id = $1 and slot = $2`, [user, elsewhere]);
  return (found[0] as { id: string }).id;
}

/** `slot`'s sides and a user of it seeded on its owner, with a document under another slot (`slot + 100`). */
async function userWithDocumentElsewhere(slot: number): Promise<Awaited<ReturnType<typeof sides>> & { user: string; elsewhere: string }> {
  const sided = await sides(env, slot);
  const [user] = keysInSlot(slot, 1) as [string];
  return { ...sided, user, elsewhere: await seedWithDocumentElsewhere(sided.source, slot, user, slot + 100) };
}


describe('what a done move leaves on its source', () => {
  it('a slot move: none of its rows (users, documents, key records), and its fence row moved to the target', async () => {
    const slot = 2101;
    const { to, source, target } = await sides(env, slot);
    const users = keysInSlot(slot, 3);
    await seedUsers(source, slot, users, 2);
    await seedKeys(source, slot, users, 2);
    const mover = env.mover({ readerGraceMs: 0 });
    const done = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'done', error: null });
    expect({ rows: await countSlot(source, slot), keys: (await keyRecords(source, slot)).length, fence: await fenceState(source, slot) }).toEqual({ rows: { users: 0, documents: 0 }, keys: 0, fence: 'moved' });
    expect({ rows: await countSlot(target, slot), keys: (await keyRecords(target, slot)).length }).toEqual({ rows: { users: 3, documents: 6 }, keys: 6 });
  }, 60_000);

  it('a directory move: none of the key\'s rows', async () => {
    const slot = 2102;
    const { to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 3);
    await seedKeys(source, slot, [key], 2);
    const mover = env.mover({ readerGraceMs: 0 });
    const done = await mover.run((await mover.plan({ kind: 'directory', key, to, createdBy: 'test' })).id);
    expect({ state: done.state, error: done.error }).toEqual({ state: 'done', error: null });
    expect(await rowsOf(source, key)).toEqual({ user: null, documents: 0, keys: 0 });
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
  }, 60_000);

  it('only a user that still owns a document stored under another slot (written before shard migration 015): kept as it was, noted on the job, read by no one', async () => {
    const slot = 2103;
    const { to, source, target, user, elsewhere } = await userWithDocumentElsewhere(slot);
    const mover = env.mover({ readerGraceMs: 0 });
    const done = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(done.state).toBe('done');
    expect(done.error).toMatch(/clean-up kept 1 user row\(s\) on .* that still own documents outside the moved unit/);
    // The user's row and the document elsewhere stay; its document and key record of the slot went.
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / user ${user} / ${slot}`, documents: 1, keys: 0 });
    expect((await source.query(`select 1 from documents where id = $1`, [elsewhere])).rowCount).toBe(1);
    expect(await rowsOf(target, user)).toEqual({ user: `${user}@example.com / user ${user} / ${slot}`, documents: 1, keys: 1 });
    // Readers go to the target; the source refuses the slot.
    await target.query(`update users set display_name = 'renamed' where id = $1`, [user]);
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed`);
    await expect(source.query(`update users set display_name = 'stale' where id = $1`, [user])).rejects.toMatchObject({ code: 'CAF02' });
  }, 60_000);
});

describe('the kept user when its slot comes back', () => {
  it('moved back: the kept row is replaced by the new owner\'s, once, and the document under another slot keeps its owner', async () => {
    const slot = 2104;
    const { from, to, source, target, user, elsewhere } = await userWithDocumentElsewhere(slot);
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    await target.query(`update users set display_name = 'renamed' where id = $1`, [user]);
    const back = await mover.run((await mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' })).id);
    expect({ state: back.state, error: back.error }).toEqual({ state: 'done', error: null });
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / renamed / ${slot}`, documents: 2, keys: 1 });
    expect((await source.query(`select owner_id::text as o from documents where id = $1`, [elsewhere])).rows).toEqual([{ o: user }]);
    expect(await rowsOf(target, user)).toEqual({ user: null, documents: 0, keys: 0 });
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed`);
  }, 60_000);

  it('given back by hand once its new owner holds none of the slot\'s rows (the user deleted there): refused, naming the kept rows, nothing published; before, the deleted user was read again on its old owner', async () => {
    const slot = 2105;
    const { from, to, source, target, user } = await userWithDocumentElsewhere(slot);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(job.state).toBe('done');
    // The user deletes the account on its new owner: the slot is empty there.
    await target.query(`delete from users where id = $1`, [user]);
    expect(await readerSees(user)).toBeNull();
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    const before = (await slotMaps.current()).version;
    const refused = await refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], from), 'the slot back to its first shard'));
    // Before: published, the finished move's `moved` row on the old owner deleted, and the deleted user read there again.
    const seen = { version: (await slotMaps.current()).version - before, reader: await readerSees(user), fences: { [from]: await fenceState(source, slot), [to]: await fenceState(target, slot) } };
    expect(seen).toEqual({ version: 0, reader: null, fences: { [from]: 'moved', [to]: 'open' } });
    expect(String(refused)).toContain(
      `cannot publish slot map version ${before + 1} by hand: slot ${slot}'s new owner ${from} holds rows of it (1 in users) behind its 'moved' row (move job #${job.id}, finished)`,
    );
    expect(String(refused)).toMatch(/rowsLeftOn: 'checked'.*Nothing was written/);
    // The operator deletes the kept user (having dealt with its document elsewhere): the give-back goes through.
    await source.query(`begin; set local session_replication_role = replica; delete from documents where owner_id = '${user}'; delete from users where id = '${user}'; commit`);
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], from), 'the slot back to its first shard');
    expect({ reader: await readerSees(user), fence: await fenceState(source, slot) }).toEqual({ reader: null, fence: undefined });
  }, 60_000);
});

describe('the kept user when a move back is rolled back', () => {
  it('by a mover that skips row triggers in its copy: the rollback (whose deletion fires them) leaves the user that still owns the document under another slot, and the document', async () => {
    const slot = 2108;
    const { from, to, source, target, user, elsewhere } = await userWithDocumentElsewhere(slot);
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    await target.query(`update users set display_name = 'renamed' where id = $1`, [user]);
    const planned = await mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' });
    await runStoppedAfterCopy(env, planned.id);
    await mover.requestCancel(planned.id);
    expect((await mover.run(planned.id)).state).toBe('cancelled');
    // Before: the rollback's deletion of the copied user cascaded to the document under another slot.
    expect((await source.query(`select owner_id::text as o from documents where id = $1`, [elsewhere])).rows).toEqual([{ o: user }]);
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / renamed / ${slot}`, documents: 1, keys: 0 });
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed`);
  }, 60_000);
});

// Last: it takes the right to skip row triggers from ca_dms_mover on both shards.
describe('the kept user when its slot comes back, moved by a mover login that may not skip row triggers (foreign keys checked)', () => {
  const moverPools = new Map<string, pg.Pool>();
  beforeAll(async () => {
    for (const [id, pool] of env.shards) {
      await ensureLogin(pool, { username: 'left_rows_mover', password: 'mover pass' }, { role: 'ca_dms_mover' });
      await pool.query('revoke set on parameter session_replication_role from ca_dms_mover; revoke execute on function mover_replica_role() from ca_dms_mover');
      const url = new URL(env.urls.shards[id] as string);
      url.username = 'left_rows_mover';
      url.password = 'mover pass';
      const moverPool = new pg.Pool({ connectionString: url.toString(), max: 4 });
      moverPool.on('error', () => undefined);
      moverPools.set(id, moverPool);
    }
  });
  afterAll(async () => {
    await Promise.all([...moverPools.values()].map((p) => p.end()));
  });

  /** A user of `slot` moved away with a document under another slot: kept on the source, renamed on the target. */
  async function movedAway(slot: number): Promise<{ user: string; elsewhere: string; from: string; source: pg.Pool; target: pg.Pool }> {
    const { from, to, source, target, user, elsewhere } = await userWithDocumentElsewhere(slot);
    const mover = env.mover({ readerGraceMs: 0, shards: moverPools });
    const away = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect({ state: away.state, error: away.error }).toEqual({ state: 'done', error: expect.stringMatching(/clean-up kept 1 user row/) as unknown });
    await target.query(`update users set display_name = 'renamed' where id = $1`, [user]);
    return { user, elsewhere, from, source, target };
  }

  it('a move back keeps the document under another slot: the copy replaces the kept user rather than delete it (before, the deletion\'s cascade took the document, and the move ended done)', async () => {
    const slot = 2106;
    const { user, elsewhere, from, source, target } = await movedAway(slot);
    const mover = env.mover({ readerGraceMs: 0, shards: moverPools });
    const back = await mover.run((await mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' })).id);
    expect({ state: back.state, error: back.error }).toEqual({ state: 'done', error: null });
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / renamed / ${slot}`, documents: 2, keys: 1 });
    expect((await source.query(`select owner_id::text as o from documents where id = $1`, [elsewhere])).rows).toEqual([{ o: user }]);
    expect(await rowsOf(target, user)).toEqual({ user: null, documents: 0, keys: 0 });
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed`);
  }, 60_000);

  it('a move back copied in pages keeps the document under another slot of a kept user past the first page (before, the first page\'s deletion of the lane took that user, and the cascade its document)', async () => {
    const slot = 2109;
    const { from, to, source, target } = await sides(env, slot);
    // Three users of the slot; the one with the document under another slot sorts last, so the
    // first page of a one-row copy is another user and the kept one lies past it in the lane.
    const users = keysInSlot(slot, 3).sort();
    const user = users[2] as string;
    await seedUsers(source, slot, users.slice(0, 2), 1);
    const elsewhere = await seedWithDocumentElsewhere(source, slot, user, slot + 100);
    const away = await env.mover({ readerGraceMs: 0, shards: moverPools }).run((await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect({ state: away.state, error: away.error }).toEqual({ state: 'done', error: expect.stringMatching(/clean-up kept 1 user row/) as unknown });
    await target.query(`update users set display_name = 'renamed' where id = $1`, [user]);
    const mover = env.mover({ readerGraceMs: 0, shards: moverPools, copyBatchRows: 1 });
    const back = await mover.run((await mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' })).id);
    expect({ state: back.state, error: back.error }).toEqual({ state: 'done', error: null });
    expect((await source.query(`select owner_id::text as o from documents where id = $1`, [elsewhere])).rows).toEqual([{ o: user }]);
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / renamed / ${slot}`, documents: 2, keys: 1 });
    expect(await countSlot(source, slot)).toEqual({ users: 3, documents: 3 });
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed`);
  }, 60_000);

  it('a move back whose copy is taken up again from its start (its cursor not saved), the target holding the copies and the kept user: copied once, the document under another slot kept', async () => {
    const slot = 2110;
    const { from, to, source, target } = await sides(env, slot);
    const users = keysInSlot(slot, 3).sort();
    const user = users[1] as string;
    await seedUsers(source, slot, [users[0] as string, users[2] as string], 1);
    const elsewhere = await seedWithDocumentElsewhere(source, slot, user, slot + 100);
    const away = await env.mover({ readerGraceMs: 0, shards: moverPools }).run((await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(away.state).toBe('done');
    await target.query(`update users set display_name = 'renamed' where id = $1`, [user]);
    const planned = await env.mover().plan({ kind: 'slot', slot, to: from, createdBy: 'test' });
    await runStoppedAfterCopy(env, planned.id, { shards: moverPools, copyBatchRows: 1 });
    // Every page committed on the target, none of its cursors saved (a crash after each commit).
    await target.query(`update users set display_name = 'renamed again' where id = $1`, [user]);
    await env.catalog.query(`update catalog.move_jobs set copy_cursor = $2 where id = $1`, [planned.id, JSON.stringify({ table: 'users', after: null })]);
    const back = await env.mover({ readerGraceMs: 0, shards: moverPools, copyBatchRows: 1 }).run(planned.id);
    expect({ state: back.state, error: back.error }).toEqual({ state: 'done', error: null });
    expect((await source.query(`select owner_id::text as o from documents where id = $1`, [elsewhere])).rows).toEqual([{ o: user }]);
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / renamed again / ${slot}`, documents: 2, keys: 1 });
    expect(await countSlot(source, slot)).toEqual({ users: 3, documents: 3 });
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed again`);
  }, 60_000);

  it('the kept user\'s key moved back alone (a directory move): its row replaced, the document under another slot kept', async () => {
    const slot = 2111;
    const { user, elsewhere, from, source, target } = await movedAway(slot);
    const mover = env.mover({ readerGraceMs: 0, shards: moverPools });
    const back = await mover.run((await mover.plan({ kind: 'directory', key: user, to: from, createdBy: 'test' })).id);
    expect({ state: back.state, error: back.error }).toEqual({ state: 'done', error: null });
    expect((await source.query(`select owner_id::text as o from documents where id = $1`, [elsewhere])).rows).toEqual([{ o: user }]);
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / renamed / ${slot}`, documents: 2, keys: 1 });
    expect(await rowsOf(target, user)).toEqual({ user: null, documents: 0, keys: 0 });
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed`);
  }, 60_000);

  it('a move back cancelled after its copy keeps the document too: the rollback leaves the user that owns it, as the clean-up does', async () => {
    const slot = 2107;
    const { user, elsewhere, from, source, target } = await movedAway(slot);
    const planned = await env.mover().plan({ kind: 'slot', slot, to: from, createdBy: 'test' });
    await runStoppedAfterCopy(env, planned.id, { shards: moverPools });
    await env.mover().requestCancel(planned.id);
    const ended = await env.mover({ readerGraceMs: 0, shards: moverPools }).run(planned.id);
    expect(ended.state).toBe('cancelled');
    // The slot stays on the target; the source keeps the user (the copy's version) and its document elsewhere.
    expect((await source.query(`select owner_id::text as o from documents where id = $1`, [elsewhere])).rows).toEqual([{ o: user }]);
    expect(await rowsOf(source, user)).toEqual({ user: `${user}@example.com / renamed / ${slot}`, documents: 1, keys: 0 });
    expect(await rowsOf(target, user)).toEqual({ user: `${user}@example.com / renamed / ${slot}`, documents: 1, keys: 1 });
    expect(await readerSees(user)).toBe(`${user}@example.com / renamed`);
  }, 60_000);
});
