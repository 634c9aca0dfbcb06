/**
 * Issue #15 (h158, review of h153's "rows of a key fenced by its own row"): the other side of it.
 * A key K moved from A to B by a directory move has its own row on B, `open`: it decides for every
 * row of K there, under whatever slot (the trigger's rule, shard migration 004; `rowFenceStateSql`),
 * and B serves each of them (a reader lists K's documents by owner, whatever their slot). A row of
 * K stored on B under a slot s of A (a restore, a write past the triggers) is K's, live on B. A
 * move of slot s from A to B deleted it: the copy's delete of the target's unit rows before each
 * COPY (and a rollback's deletion of the copy) took every row under s there but those of s's
 * excluded keys, and K's id hashes elsewhere. Such keys are now set aside as the source's keys
 * fenced by a row of their own are (PgMovePort.setAside), on both sides: a row of K on the source
 * under s stays there too, counted in the job's note. The rows under s of a key hashing elsewhere
 * break `documents (owner_id, slot)` -> `users (id, slot)` (shard migration 015): rows from before
 * it, or a restore with `session_replication_role = replica`, which this test writes.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idsUnder, keysInSlot, type MoveEnv, pastTriggers, runStoppedAfterCopy, seedUsers, startMoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;

beforeAll(async () => {
  env = await startMoveEnv();
}, 180_000);
afterAll(async () => {
  await env?.stop();
});

/**
 * A slot of `from` with two users and a document each, and a key of another slot of `from` moved
 * to `to` by a directory move, with a document of it on `to` under the slot (past the triggers).
 */
async function slotWithTargetKeyRow(first: number): Promise<{ slot: number; to: string; source: pg.Pool; target: pg.Pool; keyRow: string; slotRows: string[] }> {
  const map = await env.slotMaps.current();
  // The slot lived on `to` first and moved to `from`: `to` keeps its 'moved' row of it (a
  // finished move's), so the plan of its move back finds no rows there out of the map's sight.
  const slot = first;
  const to = map.assignments[slot] as string;
  const from = to === 'shard_a' ? 'shard_b' : 'shard_a';
  const keyOwn = map.assignments.findIndex((owner, s) => s !== slot && owner === from);
  expect(keyOwn).toBeGreaterThanOrEqual(0);
  const source = env.shards.get(from) as pg.Pool;
  const target = env.shards.get(to) as pg.Pool;
  await seedUsers(target, slot, keysInSlot(slot, 2), 1);
  const away = env.mover({ readerGraceMs: 0 });
  expect((await away.run((await away.plan({ kind: 'slot', slot, to: from, createdBy: 'test' })).id)).state).toBe('done');
  const [moved] = keysInSlot(keyOwn, 1) as [string];
  await seedUsers(source, keyOwn, [moved], 1);
  await env.directory.set(moved, from, 'test');
  const earlier = env.mover({ readerGraceMs: 0 });
  expect((await earlier.run((await earlier.plan({ kind: 'directory', key: moved, to, createdBy: 'test' })).id)).state).toBe('done');
  // The key lives on `to`: its own row there is open (a write of it lands there).
  const { rows: own } = await target.query<{ state: string }>(`select state from write_fences where kind = 'directory' and unit_id = $1`, [moved]);
  expect(own.map((r) => r.state)).toEqual(['open']);
  const { rows } = await target.query<{ id: string }>('select gen_random_uuid()::text as id');
  const keyRow = rows[0]?.id as string;
  await pastTriggers(target, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'the key''s, on its shard', '{}'::jsonb)`, [keyRow, moved, slot]);
  const slotRows = [...(await idsUnder(source, 'users', slot)), ...(await idsUnder(source, 'documents', slot))];
  return { slot, to, source, target, keyRow, slotRows };
}

describe("a slot's move to the shard a key lives on leaves that key's rows there under the slot", () => {
  it("copies the slot and keeps the key's row on the target (its own 'open' row decides for it there)", async () => {
    const { slot, to, target, keyRow, slotRows } = await slotWithTargetKeyRow(2500);
    expect(await idsUnder(target, 'documents', slot)).toEqual([keyRow]);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect({ state: job.state, rowsCopied: job.rowsCopied }).toEqual({ state: 'done', rowsCopied: 4 });
    expect(await idsUnder(target, 'documents', slot)).toContain(keyRow);
    // Nothing of the key's on the source to leave there.
    expect(job.error).toBeNull();
    expect([...(await idsUnder(target, 'users', slot)), ...(await idsUnder(target, 'documents', slot))].filter((id) => id !== keyRow).sort()).toEqual([...slotRows].sort());
  }, 90_000);

  it("a rollback after the copy deletes its copy and keeps the key's row on the target", async () => {
    const { slot, to, source, target, keyRow, slotRows } = await slotWithTargetKeyRow(2600);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await runStoppedAfterCopy(env, planned.id);
    await env.mover().requestCancel(planned.id);

    const job = await env.mover({ readerGraceMs: 0 }).run(planned.id);

    expect(job.state).toBe('cancelled');
    expect([...(await idsUnder(target, 'users', slot)), ...(await idsUnder(target, 'documents', slot))]).toEqual([keyRow]);
    expect([...(await idsUnder(source, 'users', slot)), ...(await idsUnder(source, 'documents', slot))].sort()).toEqual([...slotRows].sort());
  }, 90_000);

  it("leaves a row of such a key on the source too (the two sides compared over the same rows), deleting neither and saying so", async () => {
    const { slot, to, source, target, keyRow, slotRows } = await slotWithTargetKeyRow(2700);
    // A row of the same key on the source under the slot, with no row of the key's own there
    // (written by hand, the key's 'moved' row deleted): the slot's by the source's fences.
    const { rows: owners } = await target.query<{ owner_id: string }>('select owner_id::text from documents where id = $1', [keyRow]);
    const key = owners[0]?.owner_id as string;
    await source.query(`delete from write_fences where kind = 'directory' and unit_id = $1`, [key]);
    const { rows } = await source.query<{ id: string }>('select gen_random_uuid()::text as id');
    const sourceRow = rows[0]?.id as string;
    await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'on the source', '{}'::jsonb)`, [sourceRow, key, slot]);
    const mover = env.mover({ readerGraceMs: 0 });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect({ state: job.state, rowsCopied: job.rowsCopied }).toEqual({ state: 'done', rowsCopied: 4 });
    expect(await idsUnder(target, 'documents', slot)).toContain(keyRow);
    expect(await idsUnder(target, 'documents', slot)).not.toContain(sourceRow);
    expect([...(await idsUnder(source, 'users', slot)), ...(await idsUnder(source, 'documents', slot))]).toEqual([sourceRow]);
    expect([...(await idsUnder(target, 'users', slot)), ...(await idsUnder(target, 'documents', slot))].filter((id) => id !== keyRow).sort()).toEqual([...slotRows].sort());
    expect(job.error).toMatch(/left 1 row\(s\) on .* holding rows under the slot on /);
  }, 90_000);
});
