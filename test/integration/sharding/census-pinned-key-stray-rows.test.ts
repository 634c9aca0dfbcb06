/**
 * Rows of a key the directory places on this shard, stored here under a slot this shard owns that
 * is not the key's id's (a restore, a hand-made row, a document written with a wrong slot before
 * shard migration 015). A move of that slot copies them: it leaves out only the placed keys whose
 * id's slot it is (`excluded_keys`), and a directory move of the key carries its rows under its
 * own slot only, and is refused while such rows exist (checkKeySlot, 400). So the census must
 * count them in the slot's unit, as the mover's plan counts the slot (its maxTableRows) and as the
 * move copies them. Before, they were counted in the key's unit (not offered, the key being a
 * stray): the slot was offered with 4 rows (its maxTableRows 5) and its move copied 8; the
 * shard's offered units summed to 4 where its load was 10 (6 of them its own slot's), and the
 * rebalance check planned from a unit half the size of what it moved.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { keysInSlot, readCommitted, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePools } from './fixtures/rebalance-port.js';

let env: MoveEnv;
let pools: ShardPools;
let inspector: ShardInspector;

beforeAll(async () => {
  env = await startMoveEnv();
  pools = rebalancePools(env);
  inspector = new ShardInspector(pools, { timeoutMs: 5000 });
}, 180_000);
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

/** The census's slot and key units, the shard's load and its offered units' sum, as the census gives them. */
async function census(shard: string, slot: number, key: string): Promise<{ slotUnit: unknown; keyUnit: unknown; load: number | undefined; offered: number }> {
  const slotMap = await env.slotMaps.current();
  const directory = (await env.directory.all()).map((e) => ({ key: e.key, shardId: e.shardId }));
  const c = await inspector.rebalanceCensus({ slotMap, directory });
  return {
    slotUnit: c.units.find((u) => u.kind === 'slot' && u.id === String(slot)),
    keyUnit: c.units.find((u) => u.kind === 'directory' && u.id === key),
    load: c.statistics.shards.find((s) => s.shardId === shard)?.rows,
    offered: c.units.filter((u) => u.shardId === shard).reduce((n, u) => n + u.rows, 0),
  };
}

describe("a key pinned here with rows under another slot this shard owns", () => {
  it("counts them in that slot's unit, as the move's plan counts the slot and as its move copies them", async () => {
    const slot = 1401;
    const { from, to, source } = await sides(env, slot);
    // The key's id's slot is another slot of the same shard; its user (and the user's two
    // documents) stand under `slot` (a restore that wrote them with the wrong slot).
    const [key] = keysInSlot(1402, 1) as [string];
    await seedUsers(source, slot, keysInSlot(slot, 2), 1);
    await seedUsers(source, slot, [key], 2);
    // And a document of a key pinned here whose user stands under its own slot, written under
    // `slot` before shard migration 015 tied a document's slot to its owner's (its foreign key
    // is NOT VALID: such rows may exist): inserted past the triggers, as it was then.
    const [other] = keysInSlot(1403, 1) as [string];
    await seedUsers(source, 1403, [other], 1);
    await readCommitted(source, async (c) => {
      await c.query('set local session_replication_role = replica');
      await c.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'wrong slot', '{}'::jsonb)`, [other, slot]);
    });
    await env.directory.set(key, from, 'test');
    await env.directory.set(other, from, 'test');

    const before = await census(from, slot, key);
    // 2 users and their 2 documents, the key's user and 2 documents, the other key's document.
    expect(before.slotUnit).toEqual(expect.objectContaining({ shardId: from, rows: 8, maxTableRows: 5 }));
    // The keys' directory moves are refused (rows under another slot than their id's): not offered.
    expect(before.keyUnit).toBeUndefined();
    // The other key's own rows (its user and a document under its slot) are the key's unit,
    // not offered: the shard's load holds them, its offered units do not.
    expect(before.load).toBe(10);
    expect(before.offered).toBe(8);

    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(job.state).toBe('done');
    expect(job.rowsCopied).toBe(8);

    const after = await census(to, slot, key);
    expect(after.slotUnit).toEqual(expect.objectContaining({ shardId: to, rows: 8, maxTableRows: 5 }));
    expect(after.offered).toBe(after.load);
  }, 60_000);
});
