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
 *
 * Within one run (h169): K's move run inside the slot move's run, after its copy, was refused, and
 * its rollback's `moved` row on B set K aside there, but the clean-up, with the list read before,
 * deleted K's document on A, where K lives (the write made since on it), its only other copy behind
 * that row on B: the clean-up reads the list again, added to the first. And K's move resumed past
 * its preparation (a row of K restored after it) flipped K to B, whose write on the slot move's copy
 * the slot move's catch-up overwrote: the key's move checks the rows again under its fence. Then the
 * read's two forms against the rule over random shapes (seeded) and at the thresholds.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setAsideKeysSql } from '../../../functions/adapters/postgres/move-port.js';
import { keysInSlot, type MoveEnv, pastTriggers, runStoppedAfterCopy, seedUsers, startMoveEnv, slotAndKeyOfAnother } from './fixtures/move-env.js';
import { mulberry32 as random } from '../../../functions/core/scaling/simulator/prng.js';

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
    const { from, to, slot, key, source, target } = await slotAndKeyOfAnother(env, 2900);
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

describe("a key's move run within one run of a slot's move, after the slot's copy of the key's row under the slot", () => {
  it("refused, its rollback's 'moved' row on the slot's target read by the clean-up: the key's row left where the key lives, with the write made on it since", async () => {
    const { from, to, slot, key, source, target } = await slotAndKeyOfAnother(env, 3300);
    await env.directory.set(key, from, 'test');
    // K's move planned before its document under s is there (its plan refuses such rows), then run
    // inside the slot move's run, after its copy (the list of keys set aside read before it).
    const keyJob = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key, to, createdBy: 'test' });
    const { rows } = await source.query<{ id: string }>('select gen_random_uuid()::text as id');
    const doc = rows[0]?.id as string;
    await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'before', '{}'::jsonb)`, [doc, key, slot]);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    let keyRun: { state: string; error: string | null } | undefined;
    const job = await env
      .mover({
        readerGraceMs: 0,
        async hook(point) {
          if (point !== 'copied' || keyRun !== undefined) return;
          // A writer's change of the document on A (the slot move's capture logs it), then K's move.
          await source.query(`update documents set title = 'after' where id = $1`, [doc]);
          keyRun = await env.mover({ readerGraceMs: 0 }).run(keyJob.id);
        },
      })
      .run(planned.id);

    expect({ state: keyRun?.state, error: keyRun?.error }).toEqual({ state: 'failed', error: expect.stringMatching(/has rows under another slot than its id's slot/) });
    expect(job.state).toBe('done');
    // K lives on A (its pin, its own row open there): its document there, with the write. The
    // slot move's clean-up, reading its keys set aside again, left it (its note counts it); B's
    // copy stays behind K's own row there, 'moved' by the refused move's rollback. Deleted by the
    // clean-up with the list read before K's move (the document on no shard that serves K).
    expect({ a: await ownRow(source, key), b: await ownRow(target, key), pin: (await env.directory.entry(key))?.shardId }).toEqual({ a: 'open', b: 'moved', pin: from });
    expect({ a: await titleOn(source, doc), b: await titleOn(target, doc) }).toEqual({ a: ['after'], b: ['after'] });
    expect(job.error).toMatch(/left 1 row\(s\) on /);
  }, 90_000);
});

describe("a key's move resumed past its preparation within one run of a slot's move, a row of the key restored under the slot since", () => {
  it('refused under its fence: no write of the key acknowledged on the target, the slot move\'s catch-up overwrites none', async () => {
    const { from, to, slot, key, source, target } = await slotAndKeyOfAnother(env, 3400);
    await env.directory.set(key, from, 'test');
    // K's move prepared and copied (nothing of K under another slot then), stopped `catching_up`.
    const keyJob = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key, to, createdBy: 'test' });
    const stopping = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'catching_up') throw new Error('test: the key mover stops after its copy');
      },
    });
    await expect(stopping.run(keyJob.id)).rejects.toThrow(/stops after its copy/);
    // Then K's document under s restored on A (past the triggers), and s moved to B.
    const { rows } = await source.query<{ id: string }>('select gen_random_uuid()::text as id');
    const doc = rows[0]?.id as string;
    await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'before', '{}'::jsonb)`, [doc, key, slot]);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    let keyRun: { state: string; error: string | null } | undefined;
    let written = '';
    const job = await env
      .mover({
        readerGraceMs: 0,
        async hook(point) {
          if (point !== 'copied' || keyRun !== undefined) return;
          // After the slot's copy (its list read before): a write on A (captured by the slot's
          // move), K's move resumed to its end, then a write of the document on B.
          await source.query(`update documents set title = 'after' where id = $1`, [doc]);
          keyRun = await env.mover({ readerGraceMs: 0 }).run(keyJob.id);
          written = await target.query(`update documents set title = 'on-target' where id = $1`, [doc]).then(
            (r) => `acknowledged ${r.rowCount ?? 0}`,
            (e: { code?: string }) => `refused ${e.code ?? '?'}`,
          );
        },
      })
      .run(planned.id);

    // Gone on (its run past the check at its preparation), K's move flipped K to B, the write on B
    // was acknowledged, and the slot move's catch-up put A's 'after' over it.
    expect({ state: keyRun?.state, error: keyRun?.error }).toEqual({ state: 'failed', error: expect.stringMatching(/verification failed: the key has rows under another slot than its id's slot \d+: 1 in documents \(slot \d+\) on shard_/) });
    expect(written).toMatch(/^refused /);
    expect(job.state).toBe('done');
    expect({ a: await ownRow(source, key), b: await ownRow(target, key), pin: (await env.directory.entry(key))?.shardId }).toEqual({ a: 'open', b: 'moved', pin: from });
    expect({ a: await titleOn(source, doc), b: await titleOn(target, doc) }).toEqual({ a: ['after'], b: ['after'] });
  }, 90_000);
});

describe("the read of a slot move's keys set aside: both forms against the rule, over random shapes", () => {
  const STATES = ['open', 'moved', 'incoming', 'fenced'] as const;
  const forced = (sql: string, side: 'fences' | 'slot'): string =>
    sql.replace('where not (select fences from side)', `where ${side === 'slot'}`).replace('where (select fences from side)', `where ${side === 'fences'}`);
  const sideOf = (sql: string): string => `${sql.slice(0, sql.indexOf(',\n          -- Materialized: only'))} select fences from side`;

  /** Runs `fn` in a transaction on a shard, past its triggers, rolled back: the shard as it was. */
  async function inRolledBack(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<void>): Promise<void> {
    const c = await pool.connect();
    try {
      await c.query('begin isolation level read committed');
      await c.query('set local session_replication_role = replica');
      await c.query(`delete from write_fences where kind = 'directory'`);
      await fn(c);
    } finally {
      await c.query('rollback').catch(() => undefined);
      c.release();
    }
  }

  async function check(c: pg.PoolClient, slot: number, excluded: string[], label: string): Promise<{ fences: boolean }> {
    for (const states of ['not open', 'any'] as const) {
      // The rule, read the plainest way: canonical keys, of a directory row (of the states), left
      // out if excluded, owning a row under the slot.
      const { rows: want } = await c.query<{ key: string }>(
        `select distinct w.unit_id as key from write_fences w
          where w.kind = 'directory'${states === 'not open' ? " and w.state <> 'open'" : ''} and not (w.unit_id = any($2::text[]))
            and (exists (select 1 from users u where u.id::text = w.unit_id and u.slot = $1)
                 or exists (select 1 from documents d where d.owner_id::text = w.unit_id and d.slot = $1)
                 or exists (select 1 from document_keys r where r.owner_id::text = w.unit_id and r.slot = $1))
          order by 1`,
        [slot, excluded],
      );
      const sql = setAsideKeysSql(states);
      const read = async (q: string): Promise<string[]> => (await c.query<{ key: string }>(q, [slot, excluded])).rows.map((r) => r.key);
      const expected = want.map((r) => r.key);
      expect({ label, states, chosen: await read(sql), fences: await read(forced(sql, 'fences')), slot: await read(forced(sql, 'slot')) }).toEqual({ label, states, chosen: expected, fences: expected, slot: expected });
    }
    const { rows } = await c.query<{ fences: boolean }>(sideOf(setAsideKeysSql('not open')), [slot]);
    return { fences: rows[0]?.fences as boolean };
  }

  it('random fence states, excluded keys, tenant names, upper-case ids, rows in each table (seeds 1-40)', async () => {
    const map = await env.slotMaps.current();
    const shard = map.assignments[3500] as string;
    const pool = env.shards.get(shard) as pg.Pool;
    const slots = [3500, 3501, 3502];
    for (let seed = 1; seed <= 40; seed++) {
      const rnd = random(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
      await inRolledBack(pool, async (c) => {
        const keys = keysInSlot(3600 + seed, 12);
        const fenced: string[] = [];
        for (const key of keys) {
          const slot = pick(slots);
          if (rnd() < 0.5) await c.query(`insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'u')`, [key, slot]);
          if (rnd() < 0.5) await c.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 't', '{}'::jsonb)`, [key, pick(slots)]);
          if (rnd() < 0.4) await c.query(`insert into document_keys (id, owner_id, slot, document_id, request_digest) values (gen_random_uuid(), $1, $2, gen_random_uuid(), decode(repeat('00', 32), 'hex'))`, [key, pick(slots)]);
          const spelling = rnd() < 0.2 ? key.toUpperCase() : key;
          if (rnd() < 0.8) {
            await c.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, $2)`, [spelling, pick(STATES)]);
            fenced.push(spelling);
          }
        }
        await c.query(`insert into write_fences (kind, unit_id, state) values ('directory', 'tenant-a', $1), ('directory', 'Tenant-B', 'moved')`, [pick(STATES)]);
        const excluded = [...fenced.filter(() => rnd() < 0.2), ...(rnd() < 0.5 ? ['tenant-a'] : []), ...(rnd() < 0.3 && fenced[0] !== undefined ? [fenced[0].toUpperCase()] : [])];
        for (const slot of slots) await check(c, slot, excluded, `seed ${seed} slot ${slot}`);
      });
    }
  }, 120_000);

  it('at the thresholds: fence rows 0, 1, 1999, 2000; slot rows 32n and 32n + 1', async () => {
    const map = await env.slotMaps.current();
    const shard = map.assignments[3500] as string;
    const pool = env.shards.get(shard) as pg.Pool;
    const slot = 3503;
    const [key, other] = keysInSlot(3700, 2) as [string, string];
    const sides: Record<string, boolean> = {};
    for (const n of [0, 1, 1999, 2000]) {
      for (const extra of [0, 1]) {
        await inRolledBack(pool, async (c) => {
          // n fence rows: `key`'s own ('moved', a document under the slot) and fillers owning nothing.
          if (n > 0) await c.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'moved')`, [key]);
          await c.query(`insert into write_fences (kind, unit_id, state) select 'directory', 'filler-' || g, 'moved' from generate_series(1, $1::int) g`, [Math.max(0, n - 1)]);
          // 32 n + extra rows under the slot: the key's document, the others users of the slot (one
          // of them with an `open` row of its own).
          const rows = 32 * n + extra;
          if (rows > 0) await c.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 't', '{}'::jsonb)`, [key, slot]);
          if (rows > 1) await c.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'o', 'u')`, [other, slot]);
          await c.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'open')`, [other]);
          const users = Math.max(0, rows - 2);
          await c.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'e' || g, 'u' from generate_series(1, $2::int) g`, [slot, users]);
          sides[`n=${n} rows=32n+${extra}`] = (await check(c, slot, [], `n ${n} extra ${extra}`)).fences;
        });
      }
    }
    // The fences' side where there are fewer than 2000 of them and more than 32 rows of the slot each.
    expect(sides).toEqual({ 'n=0 rows=32n+0': false, 'n=0 rows=32n+1': true, 'n=1 rows=32n+0': false, 'n=1 rows=32n+1': true, 'n=1999 rows=32n+0': false, 'n=1999 rows=32n+1': true, 'n=2000 rows=32n+0': false, 'n=2000 rows=32n+1': false });
  }, 120_000);
});
