/**
 * Issue #15: a unit given to another shard by hand, outside a move, splits. The catalog's guards
 * (sharding migrations 010 to 013, CAF06/CAF07/CAF08) refuse owner changes of keys and slots that
 * moved or are moving, but a unit with no move history went through `DirectoryStore.set`,
 * `DirectoryStore.delete`, `DirectoryStore.repinByHand`, `SlotMapStore.publish` and
 * `SlotMapStore.publishByHand` whatever rows it held: the catalog cannot see the shards.
 * Reproduced here (each `rowsLeftOn: 'checked'` below is what the plain call did before):
 * - a user with 3 documents on its hash owner A pinned to B: its reads answered 0 documents from
 *   B, its sign-up again wrote a second user row on B (the key on two shards);
 * - a slot with 2 users and 6 documents on A given to B by a map: its reads answered 0 from B, a
 *   new user of the slot was written on B, and the slot's next move (B -> A, a move of the shard
 *   the map names) ended `done` having deleted A's 2 users and 6 documents before copying B's one
 *   user: the documents were on no shard.
 * Since then the stores given the shards' pools (the sharding runtime's are) count the unit's rows
 * on the shard it routes to now and refuse (DirectoryRowsLeftError, SlotMapRowsLeftError), nothing
 * written, naming the unit, both shards, the counts and POST /shards/moves, unless the caller
 * passes `rowsLeftOn` (docs/sharding-spec.md section 9, "An owner changed outside a move").
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { DirectoryRowsLeftError } from '../../../functions/adapters/postgres/directory-store.js';
import { MoveConflictError, Mover } from '../../../functions/adapters/postgres/mover.js';
import type { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { SlotMapRowsLeftError } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, countSlot, keysInSlot, otherProcess, refusalOf, seedUsers, startMoveEnv, threeShardsOf, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let directory: DirectoryStore;
let slotMaps: SlotMapStore;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  // As the sharding runtime builds them: with the shards' primary pools.
  ({ directory, slotMaps } = countingStores(env));
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

const pool = (shard: string) => env.shards.get(shard) as pg.Pool;
/** The key's documents, as a process started now reads them. */
const readDocs = async (key: string) =>
  (await otherProcess(env)).reader.withShardRead(key, async ({ client }) => (await client.query('select id from documents where owner_id = $1', [key])).rowCount).then(
    (r) => `read ${r.value} on ${r.shardId}`,
    (e: Error) => `failed: ${e.message.slice(0, 200)}`,
  );
/** A sign-up of the key as the documents API writes it (the user, where the router sends it). */
const signedUp = async (key: string) =>
  (await otherProcess(env)).writer.withShardWrite(key, async ({ client, slot }) => {
    await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'again') on conflict (id) do nothing`, [key, slot, `${key}@example.com`]);
  }).then(
    (r) => `written on ${r.shardId}`,
    (e: Error) => `failed: ${e.message.slice(0, 200)}`,
  );
const usersOf = async (key: string) => Object.fromEntries(await Promise.all([...env.shards.keys()].map(async (s) => [s, Number((await pool(s).query<{ n: string }>('select count(*) as n from users where id = $1', [key])).rows[0]?.n)])));

describe('a directory pin that routes a key with rows away from them, outside a move', () => {
  it('is refused by DirectoryStore.set naming the key, both shards and the counts (nothing written); with rowsLeftOn it goes through and the key splits', async () => {
    const slot = 2101;
    const { from, to, third } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(pool(from), slot, [key], 3);

    const refused = await refusalOf(directory.set(key, to, 'ops@example.com'));
    expect(refused).toBeInstanceOf(DirectoryRowsLeftError);
    expect((refused as DirectoryRowsLeftError).message).toContain(`cannot pin key ${key} to ${to}: its rows are on ${from} (1 in users, 3 in documents), where the catalog routes it now (by hash: slot ${slot})`);
    expect((refused as DirectoryRowsLeftError).message).toContain(`POST /shards/moves {"kind":"directory","unit":"${key}","to":"${to}"}`);
    expect({ from: (refused as DirectoryRowsLeftError).from, to: (refused as DirectoryRowsLeftError).to, rows: (refused as DirectoryRowsLeftError).rows }).toEqual({ from, to, rows: [{ table: 'users', rows: 1 }, { table: 'documents', rows: 3 }] });
    expect(await directory.entry(key)).toBeNull();
    expect(await readDocs(key)).toBe(`read 3 on ${from}`);

    // A pin to the shard it routes to already changes nothing and is written; a key with no rows
    // anywhere (pinned ahead of its first write) is written; a non-UUID key owns no rows.
    const [fresh] = keysInSlot(slot, 2).slice(1) as [string];
    await expect(directory.set(fresh, to, 'ops@example.com')).resolves.toMatchObject({ shardId: to });
    await expect(directory.set('tenant-42', to, 'ops@example.com')).resolves.toMatchObject({ shardId: to });

    // What the plain set did before: the key's reads went to `to` and missed its documents, and its
    // sign-up wrote it again there.
    await directory.set(key, to, 'ops@example.com', undefined, undefined, { rowsLeftOn: 'checked' });
    expect({ read: await readDocs(key), signUp: await signedUp(key), users: await usersOf(key) }).toEqual({
      read: `read 0 on ${to}`,
      signUp: `written on ${to}`,
      users: { [from]: 1, [to]: 1, [third]: 0 },
    });
  }, 120_000);

  it('is refused by DirectoryStore.delete (unpinned, the key routes by hash to its slot\'s owner) and by repinByHand without rowsLeftOn', async () => {
    const slot = 2103;
    const { from: slotOwner, to: pinnedTo, third } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, pinnedTo, 'ops@example.com');
    await seedUsers(pool(pinnedTo), slot, [key], 2);

    const unpin = await refusalOf(directory.delete(key));
    expect(unpin).toBeInstanceOf(DirectoryRowsLeftError);
    expect((unpin as Error).message).toContain(`cannot unpin key ${key}: its rows are on ${pinnedTo} (1 in users, 2 in documents), where the catalog routes it now (its pin, version 1); unpinned, it routes by hash to ${slotOwner} (slot ${slot})`);
    const byHand = await refusalOf(directory.repinByHand(key, third, 'restored (OPS-9)'));
    expect(byHand).toBeInstanceOf(DirectoryRowsLeftError);
    expect((byHand as Error).message).toContain(`cannot repin key ${key} to ${third} by hand: its rows are on ${pinnedTo} (1 in users, 2 in documents)`);
    expect((byHand as Error).message).toContain(`check first that ${third} holds its rows and that its write_fences row of the key, if any, is open, then pass { rowsLeftOn: 'checked' }`);
    expect(await directory.entry(key)).toMatchObject({ shardId: pinnedTo, version: 1 });
    expect(await readDocs(key)).toBe(`read 2 on ${pinnedTo}`);

    // Acknowledged, by hand: written, the catalog's login and reason recorded.
    await expect(directory.repinByHand(key, third, 'restored on the third shard (OPS-9)', undefined, { rowsLeftOn: 'checked' })).resolves.toMatchObject({ shardId: third });
  }, 120_000);
});

describe('a slot map that gives a slot with rows to another shard, outside a move', () => {
  it('is refused by SlotMapStore.publish and publishByHand naming the slot, both shards and the counts (nothing published); slots without rows, or with only pinned keys\' rows, are published; with rowsLeftOn the slot splits and its next move, which would delete its rows, is refused at plan', async () => {
    const slot = 2201;
    const { from, to } = await threeShardsOf(env, slot);
    const keys = keysInSlot(slot, 3);
    await seedUsers(pool(from), slot, keys.slice(0, 2), 3);
    const before = (await slotMaps.current()).version;

    const refused = await refusalOf(slotMaps.publish(moveSlots(await slotMaps.current(), [slot], to), 'ops@example.com', 'by hand'));
    expect(refused).toBeInstanceOf(SlotMapRowsLeftError);
    expect((refused as Error).message).toContain(`slot map version ${before + 1} would change the owner of 1 slot(s) whose rows are on the old owner: slot ${slot} from ${from} to ${to} (2 in users, 6 in documents on ${from})`);
    expect((refused as Error).message).toContain(`POST /shards/moves {"kind":"slot","unit":"${slot}","to":"${to}"}`);
    expect((refused as SlotMapRowsLeftError).slots).toEqual([{ slot, from, to, rows: [{ table: 'users', rows: 2 }, { table: 'documents', rows: 6 }] }]);
    const byHand = await refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'restored (OPS-9)'));
    expect(byHand).toBeInstanceOf(SlotMapRowsLeftError);
    expect((byHand as Error).message).toContain("check first that each new owner holds the slot's rows");
    expect((await slotMaps.current()).version).toBe(before);

    // An empty slot, and a slot whose only rows are a pinned key's (the map does not route it), are published.
    const empty = slot + 1;
    const pinnedOnly = slot + 2;
    const [pinned] = keysInSlot(pinnedOnly, 1) as [string];
    const pinnedOwner = await env.ownerOf(pinnedOnly);
    await directory.set(pinned, pinnedOwner, 'ops@example.com');
    await seedUsers(pool(pinnedOwner), pinnedOnly, [pinned], 1);
    await slotMaps.publish(moveSlots(await slotMaps.current(), [empty, pinnedOnly], (await threeShardsOf(env, pinnedOnly)).to), 'ops@example.com', 'by hand');
    expect((await slotMaps.current()).version).toBe(before + 1);
    expect(await readDocs(pinned)).toBe(`read 1 on ${pinnedOwner}`);

    // What the plain publish did before: the slot's reads went to `to` and missed its documents, a
    // new user of the slot was written there, and the slot's next move (back to `from`) deleted
    // `from`'s rows of the slot before copying `to`'s: its documents were on no shard.
    await slotMaps.publish(moveSlots(await slotMaps.current(), [slot], to), 'ops@example.com', 'by hand', undefined, { rowsLeftOn: 'checked' });
    const newcomer = keys[2] as string;
    expect({ read: await readDocs(keys[0] as string), signUp: await signedUp(newcomer) }).toEqual({ read: `read 0 on ${to}`, signUp: `written on ${to}` });
    // The slot's next move, back to `from`, deleted `from`'s rows of the slot page by page before
    // copying `to`'s (its documents on no shard: { from: 1 user, 0 documents; to: 0, 0 }). A slot
    // move into a target holding rows of the slot behind no fence row is now refused at plan
    // (mover.ts checkTargetHoldsNoSlotRows), nothing recorded, every row where it was.
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory, readerGraceMs: 0 });
    const back = await refusalOf(mover.plan({ kind: 'slot', slot, to: from, createdBy: 'test' }));
    expect(back).toBeInstanceOf(MoveConflictError);
    expect((back as Error).message).toContain(`cannot move slot ${slot} from ${to} to ${from}: ${from} holds rows of the slot (2 in users, 6 in documents) behind no fence row of it`);
    expect({ from: await countSlot(pool(from), slot), to: await countSlot(pool(to), slot) }).toEqual({ from: { users: 2, documents: 6 }, to: { users: 1, documents: 0 } });
    // Both shards hold live rows of the slot (a split), and the refusal's first way out, the slot
    // given to `from` by hand through the stores, is refused in its turn (`to` holds the newcomer),
    // its second (delete `from`'s rows as stale copies) would lose them: it names the split's own,
    // the source's rows put on the target by hand, then the slot given there through the stores.
    expect((back as Error).message).toContain(`where both hold rows of the slot (a split: a map past the stores, rowsLeftOn 'checked' or SQL, gave the slot to ${to} while its rows stayed on ${from}, and ${to} took writes of it since), copy ${to}'s rows of the slot to ${from} by hand, delete them on ${to}, then give the slot to ${from} by hand through the stores`);
    const giveBack = await refusalOf(slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], from), 'the split mended (OPS-10)'));
    expect(giveBack).toBeInstanceOf(SlotMapRowsLeftError);
    const moved = (await pool(to).query<{ row: unknown }>('select to_jsonb(u) as row from users u where slot = $1', [slot])).rows.map((r) => r.row);
    await pool(from).query('insert into users select * from jsonb_populate_recordset(null::users, $1::jsonb)', [JSON.stringify(moved)]);
    await pool(to).query('delete from users where slot = $1', [slot]);
    await slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], from), 'the split mended (OPS-10)');
    expect({ read: await readDocs(keys[0] as string), newcomer: (await usersOf(newcomer))[from], from: await countSlot(pool(from), slot), to: await countSlot(pool(to), slot) }).toEqual({
      read: `read 3 on ${from}`,
      newcomer: 1,
      from: { users: 3, documents: 6 },
      to: { users: 0, documents: 0 },
    });
  }, 120_000);
});

describe("the mover's publications, through stores that count rows", () => {
  it('are not refused: a slot move and a directory move of units with rows end done, their rows on the target', async () => {
    const slot = 2301;
    const { from, to } = await threeShardsOf(env, slot);
    const keys = keysInSlot(slot, 2);
    await seedUsers(pool(from), slot, keys, 2);
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory, readerGraceMs: 0 });
    const slotMove = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect((await mover.run(slotMove.id)).state).toBe('done');
    expect(await countSlot(pool(to), slot)).toEqual({ users: 2, documents: 4 });

    const [key] = keys as [string];
    const { third } = await threeShardsOf(env, slot);
    const keyMove = await mover.plan({ kind: 'directory', key, to: third, createdBy: 'test' });
    expect((await mover.run(keyMove.id)).state).toBe('done');
    expect({ pin: (await directory.entry(key))?.shardId, read: await readDocs(key) }).toEqual({ pin: third, read: `read 2 on ${third}` });
  }, 120_000);
});
