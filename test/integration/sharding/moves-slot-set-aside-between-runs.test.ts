/**
 * Issue #15 (h165): a slot move's keys set aside (PgMovePort.setAside) when a key's own row
 * changes state between two runs of the move. A key K of another slot of A owns a document under
 * slot s on A (a restore, past the triggers), with no row of its own there: the document is slot
 * s's, and a move of s to B copies it. The run stops after its copy; a writer changes the
 * document on A (captured by the move, not yet caught up); K then moves from A to B by a directory
 * move, its own row on A `moved` and on B `open`. The move of s resumed read its keys set aside
 * again and left K's document out of its catch-up, comparison and clean-up: B kept the copy from
 * before the write, live there (K's own row decides for it), the write behind K's `moved` row on A.
 * K's move (planned before the document was restored: its plan refuses such rows) now refuses them
 * at its run too, on its source and, under a slot moving in, on its target (MoveOwnerConflict,
 * rolled back as failed). The read's two forms (move-port.ts setAsideKeysSql) are checked alike.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setAsideKeysSql } from '../../../functions/adapters/postgres/move-port.js';
import { keysInSlot, type MoveEnv, pastTriggers, runStoppedAfterCopy, seedUsers, startMoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;

beforeAll(async () => {
  env = await startMoveEnv();
}, 180_000);
afterAll(async () => {
  await env?.stop();
});

async function titleOn(pool: pg.Pool, id: string): Promise<string[]> {
  const { rows } = await pool.query<{ title: string }>('select title from documents where id = $1', [id]);
  return rows.map((r) => r.title);
}

async function ownRow(pool: pg.Pool, key: string): Promise<string | undefined> {
  const { rows } = await pool.query<{ state: string }>(`select state from write_fences where kind = 'directory' and unit_id = $1`, [key]);
  return rows[0]?.state;
}

describe("a slot move resumed after a key's own row changed state keeps the key's rows right", () => {
  it("a key's move run between two runs of the slot's move, after its copy of the key's row under the slot: refused, the write made since served where the key lives, the stale copy by no shard", async () => {
    const map = await env.slotMaps.current();
    const first = 2900;
    const from = map.assignments[first] as string;
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    const mine: number[] = [];
    for (let s = first; mine.length < 2; s++) if (map.assignments[s] === from) mine.push(s);
    const [slot, keyOwn] = mine as [number, number];
    const source = env.shards.get(from) as pg.Pool;
    const target = env.shards.get(to) as pg.Pool;
    await seedUsers(source, slot, keysInSlot(slot, 2), 1);
    const [key] = keysInSlot(keyOwn, 1) as [string];
    await seedUsers(source, keyOwn, [key], 1);
    await env.directory.set(key, from, 'test');
    // K's directory move, planned before its document under s is there (its plan refuses such rows).
    const keyMove = env.mover({ readerGraceMs: 0 });
    const keyJob = await keyMove.plan({ kind: 'directory', key, to, createdBy: 'test' });
    const { rows } = await source.query<{ id: string }>('select gen_random_uuid()::text as id');
    const doc = rows[0]?.id as string;
    await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'before', '{}'::jsonb)`, [doc, key, slot]);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await runStoppedAfterCopy(env, planned.id);
    expect(await titleOn(target, doc)).toEqual(['before']);
    // A writer's change of the document on A, the slot's still (its move captures it).
    await source.query(`update documents set title = 'after' where id = $1`, [doc]);
    // K's move, run now: its plan found no row of K under another slot, its run finds two.
    const keyRun = await keyMove.run(keyJob.id);

    const job = await env.mover({ readerGraceMs: 0 }).run(planned.id);

    expect(job.state).toBe('done');
    // The write is where K's readers find it: on A, K's shard (its own row there open, its pin A).
    // B's copy from before it is behind K's own row there, 'moved' by the refused move's rollback
    // (a row of the key's own on the target sets the key aside), served by neither shard.
    expect({ a: await titleOn(source, doc), b: await titleOn(target, doc) }).toEqual({ a: ['after'], b: ['before'] });
    expect({ a: await ownRow(source, key), b: await ownRow(target, key) }).toEqual({ a: 'open', b: 'moved' });
    expect((await env.directory.entry(key))?.shardId).toBe(from);
    expect(job.error).toMatch(/left 1 row\(s\) on /);
    // K's move refused at its run what its plan refuses (its document on A, the slot move's copy
    // on B), rolled back as failed, K's rows where they were.
    expect({ state: keyRun.state, error: keyRun.error }).toEqual({
      state: 'failed',
      error: expect.stringMatching(/has rows under another slot than its id's slot .*1 in documents \(slot \d+\) on shard_.*1 in documents \(slot \d+\) on shard_/),
    });
  }, 90_000);
});

describe("the read of a slot move's keys set aside answers alike from either side", () => {
  it('from the fences (a slot of more than 32 rows a fence row) and from the slot (fewer), on the source and the target readings', async () => {
    const map = await env.slotMaps.current();
    const shard = map.assignments[3200] as string;
    const pool = env.shards.get(shard) as pg.Pool;
    const [big, small] = [3200, 3201];
    // The shard's fence rows so far (other tests'), for a big slot of more than 32 rows each.
    const before = (await pool.query<{ n: number }>(`select count(*)::int as n from write_fences where kind = 'directory' and state <> 'open'`)).rows[0]?.n ?? 0;
    const bigUsers = 32 * (before + 2) + 1;
    // Slots' users, of their own slots; a key of neither with a document under each (a restore).
    await seedUsers(pool, big, keysInSlot(big, bigUsers), 0);
    await seedUsers(pool, small, keysInSlot(small, 1), 0);
    const [moved, opened, tenant] = [...keysInSlot(3202, 2), 'tenant-a'] as [string, string, string];
    for (const [key, slot] of [[moved, big], [moved, small], [opened, big]] as const) {
      await pastTriggers(pool, `insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'restored', '{}'::jsonb)`, [key, slot]);
    }
    await pool.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('directory', $1, 'moved', 'elsewhere', 1), ('directory', $2, 'open', null, 1), ('directory', $3, 'moved', 'elsewhere', 1)`, [moved, opened, tenant]);
    // The fences' side is read where the slot holds more than 32 rows a fence row.
    const n = before + 2;
    expect({ big: bigUsers + 2 > 32 * n, small: 1 + 1 > 32 * n }).toEqual({ big: true, small: false });
    const read = async (slot: number, states: 'not open' | 'any'): Promise<string[]> => (await pool.query<{ key: string }>(setAsideKeysSql(states), [slot, []])).rows.map((r) => r.key);

    expect({
      bigSource: await read(big, 'not open'),
      bigTarget: await read(big, 'any'),
      smallSource: await read(small, 'not open'),
      smallTarget: await read(small, 'any'),
      leftOut: (await pool.query<{ key: string }>(setAsideKeysSql('any'), [big, [moved]])).rows.map((r) => r.key),
    }).toEqual({ bigSource: [moved], bigTarget: [moved, opened].sort(), smallSource: [moved], smallTarget: [moved], leftOut: [opened] });
  }, 90_000);
});
