/**
 * The write-fence contract (docs/sharding-spec.md section 9) for a document handed to an
 * owner on a shard that a move of the document's old unit has just left, before that move's
 * clean-up: the shard still holds the old owner's copy of the document, in a unit `moved` there.
 * The spec's hand-over is "delete there, insert here", and its idempotent insert is
 * `on conflict (id) do update set id = excluded.id`. The delete is acknowledged first; the insert
 * must then land (once), or the document is on no shard.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { moverKilledAt } from './fixtures/kill.js';
import { keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 180_000);
afterAll(async () => {
  await env?.stop();
});

/**
 * Slot `s` (user `u`, one document `d`) moved from `here` to `away` by a mover that died before
 * its clean-up, so `d`'s old copy is still `here` in a unit `moved` there; `w` is a user of slot
 * `t`, which `here` owns. Then `d` is handed from `u` to `w`: deleted on `away` (acknowledged).
 */
async function handedBackBeforeCleanUp(from: number) {
  const map = await env.slotMaps.current();
  const here = map.assignments[from] as string;
  const [s, t] = map.assignments.flatMap((owner, slot) => (owner === here && slot >= from ? [slot] : [])) as [number, number];
  const source = env.shards.get(here) as pg.Pool;
  const away = [...env.shards.keys()].find((x) => x !== here) as string;
  const [u] = keysInSlot(s, 1) as [string];
  const [w] = keysInSlot(t, 1) as [string];
  await seedUsers(source, s, [u], 1);
  await seedUsers(source, t, [w], 1);
  const d = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1', [u])).rows[0]?.id as string;
  const killed = moverKilledAt(env, 'cleaning_up');
  const job = await killed.plan({ kind: 'slot', slot: s, to: away, createdBy: 'test' });
  await expect(killed.run(job.id)).rejects.toThrow(/killed at cleaning_up/);
  expect(await env.ownerOf(s)).toBe(away);
  await env.writer.withShardWrite(u, ({ client }) => client.query('delete from documents where id = $1', [d]));
  const where = () =>
    Promise.all([source, env.shards.get(away) as pg.Pool].map(async (p) => (await p.query<{ owner: string }>('select owner_id::text as owner from documents where id = $1', [d])).rows.map((r) => r.owner)));
  return { here, s, t, u, w, d, job, where };
}

describe('a hand-over back to the old owner of a unit, before that move is cleaned up', () => {
  it("withShardWrite with the spec's idempotent insert (on conflict (id) do update set id = excluded.id) waits for the clean-up and lands once", async () => {
    const { here, w, d, job, where } = await handedBackBeforeCleanUp(3100);
    const insert = env.writer.withShardWrite(w, ({ client, slot }) =>
      client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'handed back') on conflict (id) do update set id = excluded.id`, [d, w, slot]),
    );
    const outcome = insert.then(
      (r) => ({ ok: r.shardId }),
      (err: unknown) => ({ failed: (err as Error).message }),
    );
    await new Promise((r) => setTimeout(r, 300));
    expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');

    expect(await outcome).toEqual({ ok: here });
    expect(await where()).toEqual([[w], []]);
  }, 60_000);

  it('a plain-SQL writer that follows section 9 (plain insert) lands the document once', async () => {
    const { here, w, t, d, job, where } = await handedBackBeforeCleanUp(3300);
    const outcome = specWriter(d, w, t, 'insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)');
    await new Promise((r) => setTimeout(r, 300));
    expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');

    expect(await outcome).toBe(`ok ${here} 1`);
    expect(await where()).toEqual([[w], []]);
  }, 60_000);
});

describe("a hand-over to an owner on a move's target, while the move's copy of the document is there", () => {
  it('a plain-SQL writer whose idempotent insert is `on conflict (id) do nothing` is not acknowledged before the copy is gone, and lands once', async () => {
    const slot = 1900;
    const map = await env.slotMaps.current();
    const from = map.assignments[slot] as string;
    const to = [...env.shards.keys()].find((x) => x !== from) as string;
    const source = env.shards.get(from) as pg.Pool;
    const target = env.shards.get(to) as pg.Pool;
    const [u] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [u], 2);
    const d = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1 order by id limit 1', [u])).rows[0]?.id as string;
    const t = map.assignments.findIndex((s, i) => s === to && i > slot);
    const [w] = keysInSlot(t, 1) as [string];
    await seedUsers(target, t, [w], 0);
    const stopped = env.mover({ readerGraceMs: 0, hook: (point) => (point === 'catching_up' ? Promise.reject(new Error('test: stop after the copy')) : undefined) });
    const job = await stopped.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await expect(stopped.run(job.id)).rejects.toThrow(/stop after the copy/);
    // Delete there (acknowledged), insert here.
    await env.writer.withShardWrite(u, ({ client }) => client.query('delete from documents where id = $1', [d]));
    const outcome = specWriter(d, w, t, 'insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4) on conflict (id) do nothing');
    await new Promise((r) => setTimeout(r, 300));
    expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');

    expect(await outcome).toBe(`ok ${to} 1`);
    const rows = await Promise.all([source, target].map(async (p) => (await p.query<{ owner: string }>('select owner_id::text as owner from documents where id = $1', [d])).rows.map((r) => r.owner)));
    expect(rows).toEqual([[], [w]]);
  }, 60_000);
});

/**
 * A writer in another language following section 9 as amended: CAF01 wait and retry; CAF02
 * re-read the map and retry on the owner; 23505 on the id is no duplicate when the row holding it
 * is gone by the time it is looked up, or is of a unit whose state here is `incoming` or `moved`
 * and the shard that owns that unit no longer holds the id (wait and retry); any other 23505 is a
 * real duplicate, refused. Answers `ok <shard> <rows>` or why it stopped.
 */
async function specWriter(d: string, w: string, t: number, sql: string): Promise<string> {
  for (let attempt = 0; attempt < 250; attempt++) {
    const map = await env.slotMaps.current();
    const owner = map.assignments[t] as string;
    const c = await (env.shards.get(owner) as pg.Pool).connect();
    try {
      await c.query('begin isolation level read committed');
      const r = await c.query(sql, [d, w, t, 'handed over']);
      await c.query('commit');
      return `ok ${owner} ${r.rowCount ?? 0}`;
    } catch (err) {
      await c.query('rollback');
      const code = (err as { code?: string }).code;
      if (code === 'CAF01' || code === 'CAF02') {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      if (code !== '23505') throw err;
      const { rows } = await c.query<{ state: string | null; owner: string; slot: number }>(
        `select (select f.state from write_fences f
                  where (f.kind = 'directory' and f.unit_id = r.owner_id::text)
                     or (f.kind = 'slot' and f.unit_id = r.slot::text and not (r.owner_id::text = any (f.excluded_keys)))
                  order by f.kind = 'directory' desc limit 1) as state, r.owner_id::text as owner, r.slot
           from documents r where r.id = $1`,
        [d],
      );
      const held = rows[0];
      if (held !== undefined) {
        if (held.state !== 'incoming' && held.state !== 'moved') return `refused as a real duplicate (state ${held.state ?? 'none'})`;
        const owning = env.shards.get(map.assignments[held.slot] as string) as pg.Pool;
        if (owning !== env.shards.get(owner) && ((await owning.query('select 1 from documents where id = $1', [d])).rowCount ?? 0) > 0) return 'refused: the owning shard still holds the id';
      }
      await new Promise((r) => setTimeout(r, 20));
    } finally {
      c.release();
    }
  }
  return 'gave up';
}
