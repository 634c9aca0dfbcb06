import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { keySpelling, spell } from '../../support/key-spellings.js';
import { documentsOf, keysInSlot, otherProcess, seedUsers, startMoveEnv, type MoveEnv, type OtherProcess } from './fixtures/move-env.js';

// Every spelling of a user id is one key (docs/sharding-spec.md, section 1) at the library's own
// entry points too, withShardWrite and withShardRead, which other TypeScript services call with
// whatever spelling they hold: same shard, same rows, same fence rows, whatever the caches say.

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

const countDocs = (user: string) => async ({ client }: { client: pg.PoolClient }) =>
  (await client.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n;

describe('every spelling of a user id reaches the same rows, across a move', () => {
  it('a reader or writer whose directory cache predates a directory move is sent to the new owner, whichever spelling it is given', async () => {
    const runs = 12;
    const slot = 530;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [user], 7);
    // Each run gets two processes that looked the key up before the move (a process that has
    // been sent elsewhere once has learnt the new place).
    const sides: OtherProcess[] = [];
    for (let i = 0; i < 2 * runs; i++) {
      const side = await otherProcess(env);
      expect(await side.directory.get(user)).toBeNull();
      sides.push(side);
    }
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'directory', key: user, to, createdBy: 'test' })).id)).state).toBe('done');

    let docs = 7;
    await fc.assert(
      fc.asyncProperty(keySpelling, keySpelling, async (writeSpelling, readSpelling) => {
        const [writerSide, readerSide] = sides.splice(0, 2) as [OtherProcess, OtherProcess];
        const write = await writerSide.writer.withShardWrite(spell(user, writeSpelling), async ({ client, slot: s }) => {
          await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'after the move')`, [user, s]);
        });
        docs += 1;
        const read = await readerSide.reader.withShardRead(spell(user, readSpelling), countDocs(user));

        expect(write.shardId).toBe(to);
        expect({ n: read.value, shardId: read.shardId }).toEqual({ n: docs, shardId: to });
      }),
      { numRuns: runs, endOnFailure: true },
    );
    expect((await documentsOf(env.shards.get(from) as pg.Pool, [user])).size).toBe(0);
  });

  it('moves a directory key named in any spelling: the job, the directory entry and the rows are those of the canonical id', async () => {
    const slot = 531;
    await fc.assert(
      fc.asyncProperty(keySpelling, async (spelling) => {
        const [user] = keysInSlot(slot, 1) as [string];
        const from = await env.ownerOf(slot);
        const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
        await seedUsers(env.shards.get(from) as pg.Pool, slot, [user], 3);
        const mover = env.mover({ readerGraceMs: 0 });

        const planned = await mover.plan({ kind: 'directory', key: spell(user, spelling), to, createdBy: 'test' });
        const job = await mover.run(planned.id);

        expect({ unit: job.unitId, state: job.state }).toEqual({ unit: user, state: 'done' });
        expect((await env.directory.entry(user))?.shardId).toBe(to);
        expect((await documentsOf(env.shards.get(to) as pg.Pool, [user])).size).toBe(3);
        expect((await documentsOf(env.shards.get(from) as pg.Pool, [user])).size).toBe(0);
      }),
      { numRuns: 4 },
    );
  });
});

describe("spellings of a user id that PostgreSQL's uuid type reads as that id", () => {
  // uuid_in also reads the 32 digits in braces and a hyphen after any group of four digits: a
  // write under such a spelling stores the canonical id, so it must route as the canonical id.
  it.each([
    { form: 'the 32 digits in braces', spell: (id: string) => `{${id.replaceAll('-', '').toUpperCase()}}` },
    { form: 'a hyphen after every four digits', spell: (id: string) => id.replaceAll('-', '').replace(/(.{4})(?!$)/g, '$1-') },
  ])('routes a write under $form to the shard and slot of the canonical id, where a read of the canonical id finds it', async ({ spell }) => {
    const slot = 532;
    const map = await env.slotMaps.current();
    const home = map.assignments[slot];
    // A user whose spelling, hashed as plain text, would land on the other shard.
    const user = keysInSlot(slot, 64).find((k) => map.assignments[slotOf(spell(k))] !== home);
    expect(user).toBeDefined();
    const id = user as string;
    const spelled = spell(id);
    const shardA = env.shards.get('shard_a') as pg.Pool;
    expect((await shardA.query<{ u: string }>('select $1::uuid::text as u', [spelled])).rows[0]?.u).toBe(id);

    const write = await env.writer.withShardWrite(spelled, async ({ client, slot: s }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'spelled@example.com', 'spelled')`, [spelled, s]);
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'first')`, [spelled, s]);
    });
    const read = await env.reader.withShardRead(id, countDocs(id));
    const readSpelled = await env.reader.withShardRead(spelled, countDocs(id));

    expect({ writtenOn: write.shardId, writtenSlot: write.slot }).toEqual({ writtenOn: home, writtenSlot: slot });
    expect({ readOn: read.shardId, docs: read.value }).toEqual({ readOn: home, docs: 1 });
    expect({ readOn: readSpelled.shardId, docs: readSpelled.value }).toEqual({ readOn: home, docs: 1 });
    const stored = await (env.shards.get(home as string) as pg.Pool).query<{ slot: number }>('select slot from users where id = $1', [id]);
    expect(stored.rows).toEqual([{ slot }]);
  });
});
