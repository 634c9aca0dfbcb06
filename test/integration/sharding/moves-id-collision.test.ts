/**
 * A row id of the moving unit that the target already holds under another unit (another owner,
 * slot or key): written there by another-language writer keeping a client's ids, a restore, or
 * SQL by hand (docs/sharding-spec.md section 9, "Ids are unique across shards"). The move must
 * overwrite nothing, stop with an error naming the table and the ids and saying what to do, hold
 * no fence while it waits (the unit's writes go on on the source), not count as progress at each
 * scheduled run, and roll back cleanly when cancelled: the other unit's row untouched on the
 * target, the moving unit whole on its source. Once the colliding row is resolved, the next run
 * goes on.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MoveJob } from '../../../functions/adapters/postgres/mover.js';
import { keysInSlot, outcomeOf, seedKeys, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

type Table = 'users' | 'documents' | 'document_keys';
type Kind = 'slot' | 'directory';

/** Every row of the three sharded tables held for `owner` (the users row by id), as text, per table. */
async function rowsOf(pool: pg.Pool, owner: string): Promise<Record<Table, string[]>> {
  const read = async (sql: string): Promise<string[]> => (await pool.query<{ r: string }>(sql, [owner])).rows.map((r) => r.r);
  return {
    users: await read('select t::text as r from users t where id = $1 order by id'),
    documents: await read('select t::text as r from documents t where owner_id = $1 order by id'),
    document_keys: await read('select t::text as r from document_keys t where owner_id = $1 order by id'),
  };
}

/** The row with `id` in `table` on `pool`, as text (undefined: none). */
async function rowText(pool: pg.Pool, table: Table, id: string): Promise<string | undefined> {
  return (await pool.query<{ r: string }>(`select t::text as r from ${table} t where id = $1`, [id])).rows[0]?.r;
}

/**
 * A user of `slot` on its owner (3 documents, 2 key records) and, on the other shard, a record of
 * another unit with the same id as one of the user's rows of `table`, inserted by hand: for
 * `users`, a users row with the user's id under a slot the other shard owns (a restore of a row
 * from a wrong slot); otherwise a document or key record of another user of such a slot.
 */
async function collision(slot: number, table: Table): Promise<{ user: string; id: string; from: string; to: string; source: pg.Pool; target: pg.Pool; theirs: string }> {
  const { from, to, source, target } = await sides(env, slot);
  const [user] = keysInSlot(slot, 1) as [string];
  await seedUsers(source, slot, [user], 3);
  await seedKeys(source, slot, [user], 2);
  const otherSlot = (await env.slotMaps.current()).assignments.findIndex((s, i) => s === to && i !== slot);
  const [other] = keysInSlot(otherSlot, 1) as [string];
  await target.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'other@example.com', 'other')`, [other, otherSlot]);
  let id: string;
  if (table === 'users') {
    id = user;
    await target.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'restored@example.com', 'restored from elsewhere')`, [user, otherSlot]);
  } else {
    id = String((await source.query<{ id: string }>(`select id::text from ${table} where owner_id = $1 order by id limit 1`, [user])).rows[0]?.id);
    if (table === 'documents') {
      await target.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'theirs')`, [id, other, otherSlot]);
    } else {
      await target.query(`insert into document_keys (id, owner_id, slot, document_id, request_digest) values ($1, $2, $3, $4, sha256('theirs'::bytea))`, [id, other, otherSlot, randomUUID()]);
    }
  }
  return { user, id, from, to, source, target, theirs: String(await rowText(target, table, id)) };
}

const cases: ReadonlyArray<{ table: Table; kind: Kind; slot: number }> = [
  { table: 'documents', kind: 'slot', slot: 3101 },
  { table: 'document_keys', kind: 'slot', slot: 3102 },
  { table: 'users', kind: 'slot', slot: 3103 },
  { table: 'documents', kind: 'directory', slot: 3104 },
  { table: 'document_keys', kind: 'directory', slot: 3105 },
  // A directory move selects the users row by id alone: the stray under another slot was its to overwrite (#15).
  { table: 'users', kind: 'directory', slot: 3107 },
];

describe('a row id of the moving unit held on the target by another unit', () => {
  it.each(cases)('$table, $kind move: stops the copy with a lasting error naming the ids, holds no fence, is cancelled cleanly', async ({ table, kind, slot }) => {
    const { user, id, from, to, source, target, theirs } = await collision(slot, table);
    const unit = kind === 'slot' ? String(slot) : user;
    const planned = await env.mover().plan(kind === 'slot' ? { kind, slot, to, createdBy: 'test' } : { kind, key: user, to, createdBy: 'test' });
    const said = new RegExp(`${table} id\\(s\\) ${id} of ${kind} ${unit} already belong to another unit on ${to}.*docs/sharding-spec\\.md, section 9`);

    // The first run stops in the copy, naming the table and the id; nothing on the target was overwritten.
    const first = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id));
    expect(first).toMatch(said);
    const stopped: MoveJob = await env.mover().get(planned.id);
    expect({ state: stopped.state, error: stopped.error }).toEqual({ state: 'copying', error: expect.stringMatching(said) as unknown as string });
    expect(await rowText(target, table, id)).toBe(theirs);
    // A key record's id is UUID v5 of its owner and key (section 10): the remedy is never a new id,
    // which would forget the key (a retry of it would create a second document).
    if (table === 'document_keys') expect(stopped.error).toMatch(/a key record's id is derived from its owner and its Idempotency-Key \(UUID v5, section 10\).*: delete it .*never give a key record a new id/);
    else expect(stopped.error).not.toMatch(/key record/);

    // The next scheduled run stops the same way, and is no progress.
    expect(await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id))).toMatch(said);
    const again = await env.mover().get(planned.id);
    expect({ state: again.state, error: again.error, progressedAt: again.progressedAt }).toEqual({ state: 'copying', error: stopped.error, progressedAt: stopped.progressedAt });

    // No fence is held while it waits: the unit's writes go on on its source.
    expect(await unitFenceState(source, kind, unit)).toBe('open');
    const late = randomUUID();
    const written = await env.writer.withShardWrite(user, async ({ client, shardId, slot: s }) => {
      await client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'written while stopped')`, [late, user, s]);
      return shardId;
    });
    expect(written.value).toBe(from);

    // Cancelled: the target's record untouched and no row of the unit left there; the unit whole on its source.
    const before = await rowsOf(source, user);
    const cancelled = await env.mover({ readerGraceMs: 0 }).cancel(planned.id);
    expect(cancelled.state).toBe('cancelled');
    expect(await rowText(target, table, id)).toBe(theirs);
    const left = await rowsOf(target, user);
    expect(table === 'users' ? { ...left, users: [] } : left).toEqual({ users: [], documents: [], document_keys: [] });
    expect(await rowsOf(source, user)).toEqual(before);
    expect(before.documents.some((r) => r.includes(late))).toBe(true);
    expect(await unitFenceState(source, kind, unit)).toBe('open');
    expect((await env.writer.withShardWrite(user, async ({ shardId }) => shardId)).value).toBe(from);
  });
});

describe("a directory move whose key's users row sits under another slot on the source", () => {
  it('is refused when planned, naming the row (a move would leave the user behind while its documents moved), and nothing is recorded', async () => {
    const slot = 3108;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await source.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'restored@example.com', 'restored under a wrong slot')`, [user, slot + 1]);
    const before = (await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs')).rows[0]?.n;
    await expect(env.mover().plan({ kind: 'directory', key: user, to, createdBy: 'test' })).rejects.toMatchObject({
      problem: 'invalid',
      issues: [{ field: 'key', reason: expect.stringMatching(new RegExp(`key ${user} has rows on .* under another slot than its id's slot ${slot}: 1 in users \\(slot ${slot + 1}\\)`)) as unknown as string }],
    });
    expect((await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs')).rows[0]?.n).toBe(before);
  });

  it('is refused too for a document of the key written with a wrong slot before shard migration 015 (its users row right), which the move would leave behind fenced', async () => {
    const slot = 3111;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    // As before migration 015's foreign key (added NOT VALID): triggers off for this one insert.
    const client = await source.connect();
    try {
      await client.query('begin');
      await client.query(`set local session_replication_role = replica`);
      await client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'legacy')`, [randomUUID(), user, slot + 2]);
      await client.query('commit');
    } finally {
      client.release();
    }
    await expect(env.mover().plan({ kind: 'directory', key: user, to, createdBy: 'test' })).rejects.toMatchObject({
      problem: 'invalid',
      issues: [{ field: 'key', reason: expect.stringMatching(new RegExp(`under another slot than its id's slot ${slot}: 1 in documents \\(slot ${slot + 2}\\)`)) as unknown as string }],
    });
  });
});

describe("a stray users row with the key's id under another slot on the target, with a document of its own", () => {
  it('stops a directory move of the key, and its cancel leaves the stray and its document where they are', async () => {
    const slot = 3110;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    const otherSlot = (await env.slotMaps.current()).assignments.findIndex((s, i) => s === to && i !== slot && i !== 3103 && i !== 3107);
    await target.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'restored@example.com', 'restored from elsewhere')`, [user, otherSlot]);
    const doc = randomUUID();
    await target.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'the stray''s own')`, [doc, user, otherSlot]);
    const theirs = { user: await rowText(target, 'users', user), doc: await rowText(target, 'documents', doc) };
    const planned = await env.mover().plan({ kind: 'directory', key: user, to, createdBy: 'test' });
    expect(await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id))).toMatch(new RegExp(`users id\\(s\\) ${user} of directory ${user} already belong to another unit on ${to}`));
    expect((await env.mover({ readerGraceMs: 0 }).cancel(planned.id)).state).toBe('cancelled');
    expect({ user: await rowText(target, 'users', user), doc: await rowText(target, 'documents', doc) }).toEqual(theirs);
  });
});

describe('a collision resolved as its error says', () => {
  it('met by the catch-up (a key record imported on the source after the copy): the move stops holding no fence, and the next run after the stray record is deleted finishes, the other unit\'s record kept', async () => {
    const slot = 3106;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    await seedKeys(source, slot, [user], 1);
    // A key record of another user, of a slot the target owns, already there.
    const otherSlot = (await env.slotMaps.current()).assignments.findIndex((s, i) => s === to && i !== slot);
    const [other] = keysInSlot(otherSlot, 1) as [string];
    const id = randomUUID();
    await target.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'other@example.com', 'other')`, [other, otherSlot]);
    await target.query(`insert into document_keys (id, owner_id, slot, document_id, request_digest) values ($1, $2, $3, $4, sha256('theirs'::bytea))`, [id, other, otherSlot, randomUUID()]);
    const theirs = String(await rowText(target, 'document_keys', id));
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        // After the copy, an import keeping another system's ids writes a key record of the unit with that id on the source.
        if (point !== 'catching_up') return;
        await env.writer.withShardWrite(user, ({ client, slot: s }) =>
          client.query(`insert into document_keys (id, owner_id, slot, document_id, request_digest) values ($1, $2, $3, $4, sha256('imported'::bytea))`, [id, user, s, randomUUID()]),
        );
      },
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const said = new RegExp(`document_keys id\\(s\\) ${id} of slot ${slot} already belong to another unit on ${to}.*is the stray: delete it .*never give a key record a new id`);
    expect(await outcomeOf(mover.run(planned.id))).toMatch(said);
    const stopped = await env.mover().get(planned.id);
    expect({ state: stopped.state, error: stopped.error }).toEqual({ state: 'catching_up', error: expect.stringMatching(said) as unknown as string });
    expect(await rowText(target, 'document_keys', id)).toBe(theirs);
    expect(await unitFenceState(source, 'slot', String(slot))).toBe('open');
    expect((await env.writer.withShardWrite(user, async ({ shardId }) => shardId)).value).toBe(from);

    // The operator's fix, as the error says: the stray record (the import's, on the source) is
    // deleted; a key record is never given a new id (its key would be forgotten).
    await env.writer.withShardWrite(user, ({ client }) => client.query('delete from document_keys where id = $1', [id]));
    const done = await env.mover({ readerGraceMs: 0 }).run(planned.id);
    expect(done.state).toBe('done');
    expect(await rowText(target, 'document_keys', id)).toBe(theirs);
    expect((await rowsOf(target, user)).document_keys).toHaveLength(1);
    expect(await rowsOf(source, user)).toEqual({ users: [], documents: [], document_keys: [] });
  });
});
