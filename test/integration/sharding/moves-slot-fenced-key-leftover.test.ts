/**
 * Issue #15 (h153): a slot's move and the rows under the slot of a key fenced there by a unit of
 * its own. A key K moved from A to B by a directory move has its own `moved` row on A, which
 * decides for every row of K there, under whatever slot (the trigger's rule, shard migration 004;
 * `rowFenceStateSql`). A row of K stored on A under another slot s than K's id's (a restore, a
 * write past the triggers) is a leftover no one owns: the census takes it off slot s's unit. A move
 * of slot s copied it all the same (its unit was slot s's rows minus its `excluded_keys`, the keys
 * pinned whose id's slot s is, and K's id hashes elsewhere), and on the slot's new owner, where
 * K's fence is open or K unknown, it was live: a stale row served as current. Seen: the slot
 * offered with 4 rows, its move copying 5. A slot's move now leaves out the rows of keys with a
 * row of their own on the source in another state than `open` (copy, catch-up, verification and
 * clean-up alike): not copied, and not deleted (not the move's to delete), the job's note saying
 * how many it left. And (h165) a key `fenced` by its own row there (a hand change stopped before
 * its put-back, a directory move's fence): the census took the `moved`/`incoming` ones off the
 * slot's unit but counted the `fenced` ones in it, offering the slot with 5 rows its move copied 4 of.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { idsUnder, keysInSlot, type MoveEnv, moveStoppedAfterRelease, pastTriggers, runStoppedAfterCopy, seedUsers, startMoveEnv, slotAndKeyOfAnother } from './fixtures/move-env.js';
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

const HASH = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' } as const;
const CONFIGURATIONS: readonly { readonly name: string; readonly routing: MoveRouting }[] = [
  { name: 'hash_based, override_hash', routing: HASH },
  { name: 'hash_based, override_hash false', routing: { ...HASH, overrideHash: false } },
  { name: 'directory_based, fallback hash', routing: { ...HASH, strategy: 'directory_based', overrideHash: false } },
];

describe("a slot's move leaves the slot's rows of a key moved away by a directory move (its own 'moved' row on the source)", () => {
  let base = 2100;
  for (const { name, routing } of CONFIGURATIONS) {
    it(`${name}: copies the slot's other rows (as many as the census offers it with), and neither copies nor deletes the moved key's leftover`, async () => {
      const map = await env.slotMaps.current();
      const from = map.assignments[base] as string;
      const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
      const mine: number[] = [];
      for (let s = base; mine.length < 2; s++) if (map.assignments[s] === from) mine.push(s);
      base += 40;
      const [slot, keyOwn] = mine as [number, number];
      const source = env.shards.get(from) as pg.Pool;
      const target = env.shards.get(to) as pg.Pool;
      // The slot's own rows: two users, a document each.
      await seedUsers(source, slot, keysInSlot(slot, 2), 1);
      // A key of another slot of the shard, pinned here, then moved away by a directory move
      // (under hash routing with overrides, before this configuration's slot move).
      const [moved] = keysInSlot(keyOwn, 1) as [string];
      await seedUsers(source, keyOwn, [moved], 1);
      await env.directory.set(moved, from, 'test');
      const earlier = env.mover({ readerGraceMs: 0 });
      expect((await earlier.run((await earlier.plan({ kind: 'directory', key: moved, to, createdBy: 'test' })).id)).state).toBe('done');
      // Its document left behind under the slot, past the triggers (a restore): the source's
      // 'moved' row of the key decides for it.
      const { rows: left } = await source.query<{ id: string }>('select gen_random_uuid()::text as id');
      const leftover = left[0]?.id as string;
      await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'left behind', '{}'::jsonb)`, [leftover, moved, slot]);
      const slotRows = [...(await idsUnder(source, 'users', slot)), ...(await idsUnder(source, 'documents', slot))].filter((id) => id !== leftover);
      expect(slotRows).toHaveLength(4);

      const directory = (await env.directory.all()).map((e) => ({ key: e.key, shardId: e.shardId }));
      const census = await inspector.rebalanceCensus({ slotMap: await env.slotMaps.current(), directory, routing });
      const unit = census.units.find((u) => u.kind === 'slot' && u.id === String(slot));
      const mover = env.mover({ readerGraceMs: 0, routing });
      const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

      expect({ state: job.state, rowsCopied: job.rowsCopied, offered: unit?.rows }).toEqual({ state: 'done', rowsCopied: 4, offered: 4 });
      // Not on the slot's new owner (where the key's fence is open: it would be live there).
      expect(await idsUnder(target, 'documents', slot)).not.toContain(leftover);
      // Every other row of the slot went, none is lost.
      expect([...(await idsUnder(target, 'users', slot)), ...(await idsUnder(target, 'documents', slot))].sort()).toEqual([...slotRows].sort());
      // Left where it was, behind the key's 'moved' row, and said so on the job.
      expect(await idsUnder(source, 'documents', slot)).toEqual([leftover]);
      expect(await idsUnder(source, 'users', slot)).toEqual([]);
      expect(job.error).toMatch(/left 1 row\(s\) on .* of keys fenced there by a unit of their own/);
    }, 90_000);
  }
});

/**
 * A slot of `from` with two users and a document each, and a document under it of a key of
 * another slot of `from` moved to `to` by a directory move (past the triggers, as a restore
 * writes it). Returns the slot, the leftover's id and the slot's other rows' ids.
 */
async function slotWithLeftover(first: number): Promise<{ slot: number; from: string; to: string; source: pg.Pool; target: pg.Pool; leftover: string; slotRows: string[] }> {
  const { from, to, slot, key: moved, source } = await slotAndKeyOfAnother(env, first);
  await env.directory.set(moved, from, 'test');
  const earlier = env.mover({ readerGraceMs: 0 });
  expect((await earlier.run((await earlier.plan({ kind: 'directory', key: moved, to, createdBy: 'test' })).id)).state).toBe('done');
  const { rows } = await source.query<{ id: string }>('select gen_random_uuid()::text as id');
  const leftover = rows[0]?.id as string;
  await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'left behind', '{}'::jsonb)`, [leftover, moved, slot]);
  const slotRows = [...(await idsUnder(source, 'users', slot)), ...(await idsUnder(source, 'documents', slot))].filter((id) => id !== leftover);
  return { slot, from, to, source, target: env.shards.get(to) as pg.Pool, leftover, slotRows };
}

describe("the moved key's leftover, in a slot move's later runs and its rollback", () => {
  it('a clean-up taken up by a later run (a new read of the keys set aside) deletes the rest of the slot and leaves the leftover, saying so', async () => {
    const { slot, to, source, target, leftover, slotRows } = await slotWithLeftover(2300);
    const id = await moveStoppedAfterRelease(env, slot, to);

    const job = await env.mover({ readerGraceMs: 0 }).run(id);

    expect({ state: job.state, rowsCopied: job.rowsCopied }).toEqual({ state: 'done', rowsCopied: 4 });
    expect([...(await idsUnder(target, 'users', slot)), ...(await idsUnder(target, 'documents', slot))].sort()).toEqual([...slotRows].sort());
    expect(await idsUnder(source, 'documents', slot)).toEqual([leftover]);
    expect(job.error).toMatch(/left 1 row\(s\) on .* of keys fenced there by a unit of their own/);
  }, 90_000);

  it('a rollback after the copy deletes the copy on the target and leaves the slot, the leftover with it, on the source', async () => {
    const { slot, to, source, target, leftover, slotRows } = await slotWithLeftover(2400);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await runStoppedAfterCopy(env, planned.id);
    expect((await env.mover().get(planned.id)).rowsCopied).toBe(4);
    await env.mover().requestCancel(planned.id);

    const job = await env.mover({ readerGraceMs: 0 }).run(planned.id);

    expect(job.state).toBe('cancelled');
    expect([...(await idsUnder(target, 'users', slot)), ...(await idsUnder(target, 'documents', slot))]).toEqual([]);
    expect([...(await idsUnder(source, 'users', slot)), ...(await idsUnder(source, 'documents', slot))].sort()).toEqual([...slotRows, leftover].sort());
  }, 90_000);
});

describe("a slot's move and the census agree on a key 'fenced' by its own row (h165)", () => {
  it("the census offers the slot without the rows under it of a key fenced there by a row of its own (a hand change stopped before its put-back), as its move leaves them", async () => {
    const { to, slot, key, source } = await slotAndKeyOfAnother(env, 2800);
    const { rows } = await source.query<{ id: string }>('select gen_random_uuid()::text as id');
    const stray = rows[0]?.id as string;
    await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'restored', '{}'::jsonb)`, [stray, key, slot]);
    // The key's own row 'fenced' with no job: a hand change of its owner stopped before its put-back.
    await source.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced')`, [key]);
    const directory = (await env.directory.all()).map((e) => ({ key: e.key, shardId: e.shardId }));
    const census = await inspector.rebalanceCensus({ slotMap: await env.slotMaps.current(), directory, routing: HASH });
    const unit = census.units.find((u) => u.kind === 'slot' && u.id === String(slot));
    const mover = env.mover({ readerGraceMs: 0, routing: HASH });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect({ state: job.state, rowsCopied: job.rowsCopied, offered: unit?.rows }).toEqual({ state: 'done', rowsCopied: 4, offered: 4 });
    expect(await idsUnder(source, 'documents', slot)).toEqual([stray]);
  }, 90_000);
});

describe("a slot's move and the census agree on a key with a row of its own on the source, in each state (h169)", () => {
  const CASES = [
    { name: "'open'", state: 'open', job: null, pinned: true },
    { name: "'fenced', no job", state: 'fenced', job: null, pinned: true },
    { name: "'incoming', no job", state: 'incoming', job: null, pinned: false },
    { name: "'moved' by a move, pinned elsewhere", state: 'moved', job: 999_001, pinned: false },
    { name: "'moved' by a hand change, pinned elsewhere", state: 'moved', job: null, pinned: false },
    { name: "'moved' by a hand change, pinned to the source", state: 'moved', job: null, pinned: true },
  ] as const;
  CASES.forEach(({ name, state, job: jobId, pinned }, i) => {
    it(`${name}: the census offers the slot with as many rows as its move copies`, async () => {
      const { from, to, slot, key, source } = await slotAndKeyOfAnother(env, 3000 + 20 * i);
      await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'restored', '{}'::jsonb)`, [key, slot]);
      await env.directory.set(key, pinned ? from : to, 'test');
      await pastTriggers(source, `insert into write_fences (kind, unit_id, state, job_id, moved_to) values ('directory', $1, $2, $3, $4)`, [key, state, jobId, state === 'moved' ? to : null]);
      const directory = (await env.directory.all()).map((e) => ({ key: e.key, shardId: e.shardId }));
      const census = await inspector.rebalanceCensus({ slotMap: await env.slotMaps.current(), directory, routing: HASH });
      const unit = census.units.find((u) => u.kind === 'slot' && u.id === String(slot));
      const mover = env.mover({ readerGraceMs: 0, routing: HASH });
      const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
      expect({ state: job.state, offered: unit?.rows }).toEqual({ state: 'done', offered: job.rowsCopied });
    }, 90_000);
  });
});
