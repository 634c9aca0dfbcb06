/**
 * Issue #15, item 3, the gaps of the count of a unit's rows before an owner change outside a move:
 * - `rowsLeftOn: 'move job #<id>'` (the mover's publications) skipped the count on the caller's
 *   word: any caller could name a job (one that does not exist, of another unit, finished, or going
 *   elsewhere) and split a unit with rows. The stores now check the claim against the catalog;
 * - with `directory.override_hash` off a pin routes no key, yet a pin change was refused for rows
 *   the pin does not decide;
 * - the count ran before the catalog's own checks, and answered its error instead of theirs.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DirectoryStore} from '../../../functions/adapters/postgres/directory-store.js';
import { DirectoryError, DirectoryRowsLeftError, DirectoryVersionConflictError } from '../../../functions/adapters/postgres/directory-store.js';
import type { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { SlotMapOwnerKeptError, SlotMapRowsLeftError } from '../../../functions/adapters/postgres/slot-map-store.js';
import type { RowsLeftOn } from '../../../functions/adapters/postgres/unit-rows.js';
import { SlotMapError } from '../../../functions/core/sharding/errors.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, keysInSlot, overrideHashOffRuntime, refusalOf, seedUsers, startMoveEnv, threeShardsOf, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let directory: DirectoryStore;
let slotMaps: SlotMapStore;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  ({ directory, slotMaps } = countingStores(env));
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

const pool = (shard: string) => env.shards.get(shard) as pg.Pool;

/** A move job row as the mover leaves it (no mover runs it). */
async function job(kind: 'slot' | 'directory', unit: string, slot: number, from: string, to: string, state: string, flipped = false): Promise<`move job #${number}`> {
  const { rows } = await env.catalog.query<{ id: string }>(
    `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, flip_started_at)
     values ($1, $2, $3, $4, $5, $6, 'test', case when $7 then clock_timestamp() end) returning id`,
    [kind, unit, slot, from, to, state, flipped],
  );
  return `move job #${Number(rows[0]?.id)}`;
}

/** Publishes `next` with the catalog's map writer named as the mover names it (the trigger lets its own flip through). */
async function publishAs(writer: string, next: Parameters<SlotMapStore['publish']>[0], rowsLeftOn: RowsLeftOn): Promise<unknown> {
  const client = await env.catalog.connect();
  try {
    await client.query('begin');
    await client.query(`select set_config('ca_dms.map_writer', $1, true)`, [writer]);
    const refused = await refusalOf(slotMaps.publish(next, 'mover', 'test flip', client, { rowsLeftOn }));
    await client.query(refused === null ? 'commit' : 'rollback');
    return refused;
  } finally {
    client.release();
  }
}

describe("SlotMapStore.publish with rowsLeftOn 'move job #<id>'", () => {
  it('is refused, nothing published, where the job does not exist, moves another slot, is finished or past its flip', async () => {
    const slot = 2501;
    const { from, to } = await threeShardsOf(env, slot);
    await seedUsers(pool(from), slot, keysInSlot(slot, 1), 2);
    const before = (await slotMaps.current()).version;
    const next = moveSlots(await slotMaps.current(), [slot], to);

    const none = await refusalOf(slotMaps.publish(next, 'ops@example.com', 'by hand', undefined, { rowsLeftOn: 'move job #987654' }));
    // Before the fix: published, the slot's 1 user and 2 documents left on `from`, out of sight.
    expect(none).toBeInstanceOf(SlotMapError);
    expect((none as Error).message).toContain(`cannot publish slot map version ${before + 1}: rowsLeftOn 'move job #987654' does not account for the rows of slot(s) ${slot}: the catalog has no move job #987654`);

    const other = await job('slot', '2502', 2502, from, to, 'copying');
    const ofOther = await refusalOf(slotMaps.publish(next, 'ops@example.com', 'by hand', undefined, { rowsLeftOn: other }));
    expect((ofOther as Error).message).toContain(`${other.slice(5)} is a slot move of slot 2502 from ${from} to ${to} (copying), and the map gives slot ${slot} to ${to}, which it does not carry`);

    const finished = await job('slot', String(slot), slot, from, to, 'failed');
    expect((await refusalOf(slotMaps.publish(next, 'ops@example.com', 'by hand', undefined, { rowsLeftOn: finished })) as Error).message).toContain('(failed), no longer moving');

    const flipped = await job('slot', String(slot), slot, from, to, 'verifying', true);
    expect((await refusalOf(slotMaps.publish(next, 'ops@example.com', 'by hand', undefined, { rowsLeftOn: flipped })) as Error).message).toContain('(verifying, past its flip), no longer moving');

    const wrong = await refusalOf(slotMaps.publish(next, 'ops@example.com', 'by hand', undefined, { rowsLeftOn: 'yes' as RowsLeftOn }));
    expect((wrong as Error).message).toContain(`rowsLeftOn "yes" must be 'checked' or 'move job #<id>'`);
    expect((await slotMaps.current()).version).toBe(before);
    expect(await env.ownerOf(slot)).toBe(from);
  }, 120_000);

  it("passes for the job's own flip: an unfinished, unflipped slot move of that slot to that target; not to a third shard", async () => {
    const slot = 2511;
    const { from, to, third } = await threeShardsOf(env, slot);
    await seedUsers(pool(from), slot, keysInSlot(slot, 1), 1);
    const mine = await job('slot', String(slot), slot, from, to, 'cutover');
    const elsewhere = await publishAs(mine, moveSlots(await slotMaps.current(), [slot], third), mine);
    expect((elsewhere as Error).message).toContain(`and the map gives slot ${slot} to ${third}, which it does not carry`);
    expect(await publishAs(mine, moveSlots(await slotMaps.current(), [slot], to), mine)).toBeNull();
    expect(await env.ownerOf(slot)).toBe(to);
  }, 120_000);
});

describe("DirectoryStore with rowsLeftOn 'move job #<id>'", () => {
  it('is refused, nothing written, where the job is not a move of that key to or from that shard, and for an unpin; a pin to its source or target passes', async () => {
    const slot = 2521;
    const { from, to, third } = await threeShardsOf(env, slot);
    const [key, other] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(pool(from), slot, [key], 2);

    const none = await refusalOf(directory.set(key, to, 'ops@example.com', undefined, undefined, { rowsLeftOn: 'move job #987655' }));
    // Before the fix: pinned to `to`, the key's user and 2 documents left on `from`.
    expect(none).toBeInstanceOf(DirectoryError);
    expect((none as Error).message).toContain(`cannot pin key ${key} to ${to}: rowsLeftOn 'move job #987655' does not account for the rows of key ${key}: the catalog has no move job #987655. Nothing was written`);

    const ofOther = await job('directory', other, slot, from, to, 'copying');
    expect((await refusalOf(directory.set(key, to, 'ops@example.com', undefined, undefined, { rowsLeftOn: ofOther })) as Error).message).toContain(`a directory move of key ${other}`);
    expect((await refusalOf(directory.repinByHand(key, to, 'test', undefined, { rowsLeftOn: ofOther })) as Error).message).toContain('not of this key');
    expect(await directory.entry(key)).toBeNull();

    await env.catalog.query(`update catalog.move_jobs set state = 'cancelled' where id = $1`, [Number(ofOther.slice(10))]);
    const mine = await job('directory', key, slot, from, to, 'copying');
    expect((await refusalOf(directory.set(key, third, 'ops@example.com', undefined, undefined, { rowsLeftOn: mine })) as Error).message).toContain(`which does not take the key to ${third}`);
    // The source's pin (the mover's preparation and rollback), then the flip's.
    await directory.set(key, from, 'mover', undefined, null, { rowsLeftOn: mine });
    expect((await refusalOf(directory.delete(key, undefined, { rowsLeftOn: mine })) as Error).message).toContain('a move never unpins the key it moves');
    const client = await env.catalog.connect();
    try {
      await client.query('begin');
      await client.query(`select set_config('ca_dms.pin_writer', $1, true)`, [mine]);
      expect((await directory.set(key, to, 'mover', client, undefined, { rowsLeftOn: mine })).shardId).toBe(to);
      await client.query('commit');
    } finally {
      client.release();
    }
    expect(await directory.entry(key)).toMatchObject({ shardId: to });
  }, 120_000);
});

describe('a pin under hash_based routing with directory.override_hash off', () => {
  it("is written though the key has rows where it routes (the pin routes no key, the key stays on its slot's owner)", async () => {
    const runtime = await overrideHashOffRuntime(env);
    try {
      const slot = 2531;
      const { from, to } = await threeShardsOf(env, slot);
      const [key] = keysInSlot(slot, 1) as [string];
      await seedUsers(pool(from), slot, [key], 2);
      // Before the fix: DirectoryRowsLeftError ("its rows are on <from> ..."), though the pin sends nothing to `to`.
      expect(await refusalOf(runtime.directory.set(key, to, 'ops@example.com'))).toBeNull();
      expect(await runtime.directory.entry(key)).toMatchObject({ shardId: to });
      const route = await runtime.router.resolve(key);
      expect({ shardId: route.shardId, source: route.source }).toEqual({ shardId: from, source: 'hash' });
    } finally {
      await runtime.close();
    }
  }, 120_000);
});

describe("an owner change the catalog refuses anyway, of a unit with rows on its owner", () => {
  it("answers the catalog's error (CAF08: the slot's unfinished move), not the count's", async () => {
    const slot = 2541;
    const { from, to, third } = await threeShardsOf(env, slot);
    await seedUsers(pool(from), slot, keysInSlot(slot, 1), 1);
    await job('slot', String(slot), slot, from, to, 'planned');
    const refused = await refusalOf(slotMaps.publish(moveSlots(await slotMaps.current(), [slot], third), 'ops@example.com', 'by hand'));
    // Before the fix: SlotMapRowsLeftError, counted on the shard first, saying to move the slot (it is moving).
    expect(refused).toBeInstanceOf(SlotMapOwnerKeptError);
    expect((refused as Error).message).toContain('has not finished');
    expect(await env.ownerOf(slot)).toBe(from);
  }, 120_000);

  it('answers the compare-and-set conflict of a pin written over an entry that changed, not the count', async () => {
    const slot = 2551;
    const { from, to } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(pool(from), slot, [key], 1);
    const refused = await refusalOf(directory.set(key, to, 'ops@example.com', undefined, { shardId: to, version: 3 }));
    // Before the fix: DirectoryRowsLeftError, though the entry the caller read is not there.
    expect(refused).toBeInstanceOf(DirectoryVersionConflictError);
    expect(await directory.entry(key)).toBeNull();
  }, 120_000);

  it("refused by the count inside a caller's transaction, rolls back its own write alone (the transaction goes on); outside one, writes nothing", async () => {
    const slot = 2561;
    const { from, to } = await threeShardsOf(env, slot);
    const [key, other] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(pool(from), slot, [key], 1);
    const client = await env.catalog.connect();
    try {
      expect(await refusalOf(directory.set(key, to, 'ops@example.com', client))).toBeInstanceOf(DirectoryRowsLeftError);
      await client.query('begin');
      await directory.set(other, from, 'ops@example.com', client);
      expect(await refusalOf(directory.set(key, to, 'ops@example.com', client))).toBeInstanceOf(DirectoryRowsLeftError);
      expect(await refusalOf(slotMaps.publish(moveSlots(await slotMaps.current(client), [slot], to), 'ops@example.com', 'by hand', client))).toBeInstanceOf(SlotMapRowsLeftError);
      await client.query('commit');
    } finally {
      client.release();
    }
    expect(await directory.entry(key)).toBeNull();
    expect(await directory.entry(other)).toMatchObject({ shardId: from });
    expect(await env.ownerOf(slot)).toBe(from);
  }, 120_000);
});
