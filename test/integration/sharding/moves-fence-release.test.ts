import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { PgMovePort } from '../../../functions/adapters/postgres/move-port.js';
import { MoverCatalog } from '../../../functions/adapters/postgres/mover-catalog.js';
import { Mover, MoveLeaseLostError, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { failingOnce } from './fixtures/flaky-pool.js';
import { moverKilledAt } from './fixtures/kill.js';
import { countSlot, fenceHeldMs, fenceState, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * The fence is given back whatever fails around it: a step that fails once while the fence is
 * held must not leave the unit closed to its writers until the next run of the job (a minute on
 * AWS), and a writer waiting at a fence gives up at its own deadline.
 */
let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

describe('a step that fails once under the fence', () => {
  it('after the flip: opening the target fails once, and the run still opens it (the map names the target; its writers are not held)', async () => {
    const slot = 1200;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 3);
    const flaky = failingOnce(target, /insert into write_fences \(kind, unit_id, state, map_version, job_id\) values \(\$1, \$2, 'open'/);
    const mover = new Mover({ catalog: env.catalog, shards: new Map([...env.shards, [to, flaky.pool]]), slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

    await mover.run(job.id).catch(() => undefined);

    expect(flaky.failed()).toBe(true);
    expect(await env.ownerOf(slot)).toBe(to);
    expect({ source: await fenceState(source, slot), target: await fenceState(target, slot) }).toEqual({ source: 'moved', target: 'open' });
    // Within the fence budget (2 s), not at the next run.
    const write = await env.writer.withShardWrite(user, ({ client }) => client.query(`update users set display_name = 'after the flip' where id = $1`, [user]), { deadlineMs: 3000 });
    expect(write.shardId).toBe(to);
  });

  it('a cancellation the flip answers: the rollback under the fence fails once, and the source is open again', async () => {
    const slot = 1600;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    // The second locked read of the job (the flip's is the first) is the rollback's.
    const catalog = failingOnce(env.catalog, /from catalog\.move_jobs where id = \$1 and coalesce\(lease_epoch = \d+ and lease_holder = '[^']*', false\) for update/, 2);
    const mover = new Mover({
      catalog: catalog.pool,
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory: env.directory,
      readerGraceMs: 0,
      // The operator cancels while the run holds the fence, before the flip.
      async hook(point, job) {
        if (point === 'verifying') await env.mover().requestCancel(job.id);
      },
    });
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

    await mover.run(job.id).catch(() => undefined);

    expect(catalog.failed()).toBe(true);
    expect(await fenceState(source, slot)).toBe('open');
    expect(await env.ownerOf(slot)).not.toBe(to);
    // The failure is on the job, for the worker's log and the API.
    expect((await env.mover().get(job.id)).error).toMatch(/Connection terminated/);
  });
});

describe('the flip waits on a catalog that answers, slowly', () => {
  it('a lock held on the slot maps: the flip is given up within the fence budget and the fence reopened, not held until the lock goes', async () => {
    const slot = 1210;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const locker = await env.catalog.connect();
    let fencedAt = 0;
    let unlock: Promise<void> = Promise.resolve();
    // The fence's slack shortened from its 5 s: the run's catalog bound under the fence is the budget and this slack.
    const fenceSlackMs = 2000;
    const mover = env.mover({
      fenceBudgetMs: 1000,
      fenceSlackMs,
      fenceAttempts: 1,
      async hook(point) {
        if (point === 'fenced') fencedAt = Date.now();
        if (point !== 'verifying') return;
        // An operator's (or a migration's) lock on the maps, held past the run's catalog bound
        // under the fence (the budget and the slack): the flip's read of the map waits.
        await locker.query('begin');
        await locker.query('lock table catalog.slot_maps in access exclusive mode');
        unlock = new Promise((resolve) => setTimeout(resolve, 1000 + fenceSlackMs + 1500)).then(async () => {
          await locker.query('rollback');
        });
      },
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const run = mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.name}`,
    );
    for (let i = 0; i < 400 && fencedAt === 0; i++) await new Promise((resolve) => setTimeout(resolve, 25));
    const heldMs = await fenceHeldMs(source, slot, fencedAt, 15_000);
    await unlock;
    locker.release();
    const outcome = await run;

    expect({ held: heldMs >= 0 && heldMs < 1000 + 1000 ? 'within the budget' : `${heldMs} ms`, outcome }).toEqual({ held: 'within the budget', outcome: 'threw: MoveFenceTimeoutError' });
    expect((await env.mover().run(planned.id)).state).toBe('done');
  }, 60_000);

  it('two lock waits in a row, each shorter than the budget: the flip does not publish past the budget (statement_timeout counts per statement)', async () => {
    const slot = 1220;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const [first, second] = [await env.catalog.connect(), await env.catalog.connect()];
    let fencedAt = 0;
    let unlocked: Promise<unknown> = Promise.resolve();
    const mover = env.mover({
      fenceBudgetMs: 1000,
      fenceAttempts: 1,
      async hook(point) {
        if (point === 'fenced') fencedAt = Date.now();
        if (point !== 'verifying') return;
        // The flip's read of the map waits for the first lock (0.6 s); the second, queued behind it,
        // then holds the map's writes: the flip's insert waits for it (0.6 s more). Each wait is
        // shorter than the budget left when the flip began; together they are not.
        await first.query('begin');
        await first.query('lock table catalog.slot_maps in access exclusive mode');
        await second.query('begin');
        const queued = second.query('lock table catalog.slot_maps in share mode');
        unlocked = Promise.all([
          delay(600).then(() => first.query('rollback')),
          queued.then(() => delay(600)).then(() => second.query('rollback')),
        ]);
      },
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const outcome = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.name}`,
    );
    await unlocked;
    first.release();
    second.release();
    const { rows } = await env.catalog.query<{ ms: number | null }>(
      `select (extract(epoch from flip_started_at - fenced_at) * 1000)::int as ms from catalog.move_jobs where id = $1`,
      [planned.id],
    );
    const publishedMs = rows[0]?.ms ?? null;

    // Published (if at all) within the budget, counted from the fence being recorded (after its
    // lock wait, so a little inside the budget's own start).
    expect({ published: publishedMs === null || publishedMs < 1000 ? 'not past the budget' : `${publishedMs} ms after the fence`, fencedAt: fencedAt > 0 }).toEqual({
      published: 'not past the budget',
      fencedAt: true,
    });
    expect(outcome).toBe(publishedMs === null ? 'threw: MoveFenceTimeoutError' : 'ended: done');
    if (publishedMs === null) expect((await env.mover().run(planned.id)).state).toBe('done');
  }, 60_000);
});

/**
 * A run that cannot read its job back and never sent a flip reopens its fence (`releaseOwnFence`):
 * meanwhile another run may have taken the job over and published the new owner. The shard's
 * permit must refuse the stale run's reopening, whether the new run still holds the fence after
 * its flip or has released it and finished.
 */
describe("a stale run that never sent a flip reopens its fence after another run's flip", () => {
  it('is refused by the source (the permit), with the fence held after the flip and after the move is done', async () => {
    const slot = 1230;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 4), 2);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // Each run stops dead at a point with its lease expired, as if it stalled there.
    const runUntil = (point: MoveHookPoint): Promise<unknown> => moverKilledAt(env, point).run(planned.id).catch((err: unknown) => err);
    await runUntil('fenced');
    const { rows: first } = await env.catalog.query<{ epoch: string; holder: string }>('select lease_epoch as epoch, lease_holder as holder from catalog.move_jobs where id = $1', [planned.id]);
    const stalled = await env.mover().get(planned.id);
    // The next run takes the job over, publishes the target and stops before releasing the fence.
    await runUntil('published');
    const catalog = await env.catalog.connect();
    const outcomes: unknown[] = [];
    try {
      const stale = new PgMovePort({
        catalog: new MoverCatalog(catalog),
        leaseEpoch: Number(first[0]?.epoch),
        leaseHolder: String(first[0]?.holder),
        shards: env.shards,
        slotMaps: env.slotMaps,
        directory: env.directory,
        settings: { batchRows: 50, copyBatchRows: 50, copyLanes: 1, catchUpThreshold: 5, fenceBudgetMs: 2000, drainTimeoutMs: 5000, readerGraceMs: 0, actor: 'stale' },
      });
      expect(stale.mayHavePublished()).toBe(false);
      outcomes.push(await stale.unfence(stalled).then(() => 'reopened', (err: unknown) => err), await fenceState(source, slot));
      expect((await env.mover({ readerGraceMs: 0 }).run(planned.id)).state).toBe('done');
      outcomes.push(await stale.unfence(stalled).then(() => 'reopened', (err: unknown) => err), await fenceState(source, slot));
    } finally {
      catalog.release();
    }

    expect(outcomes).toEqual([expect.any(MoveLeaseLostError), 'fenced', expect.any(MoveLeaseLostError), 'moved']);
    expect(await env.ownerOf(slot)).toBe(to);
    expect(await countSlot(target, slot)).toEqual({ users: 4, documents: 8 });
  });
});

describe('a writer at a fence', () => {
  it('gives up at its own deadline, not at the fence wait limit', async () => {
    const slot = 1400;
    const { source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    // A mover holds the unit fenced (a cutover, or a run that stopped under it).
    await source.query(`insert into write_fences (kind, unit_id, state, job_id) values ('slot', $1, 'fenced', 999)`, [String(slot)]);
    const started = Date.now();

    const outcome = await env.writer.withShardWrite(user, ({ client }) => client.query(`update users set display_name = 'x' where id = $1`, [user]), { deadlineMs: 500 }).catch((err: unknown) => err);

    expect(outcome).toMatchObject({ reason: 'deadline-exceeded' });
    expect(Date.now() - started).toBeLessThan(1500);
    await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
  });
});

describe("a writer meeting a move's copy of another unit", () => {
  /**
   * A slot of one user with two documents, its move stopped after the copy (a worker run ended),
   * and a user `v` in a slot the target owns; `x` is one of the slot's documents.
   */
  async function copiedAndStopped(slot: number) {
    const { to, source, target } = await sides(env, slot);
    const [u1] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [u1], 2);
    const x = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1 order by id limit 1', [u1])).rows[0]?.id as string;
    const targetSlot = (await env.slotMaps.current()).assignments.findIndex((s, i) => s === to && i > slot);
    const [v] = keysInSlot(targetSlot, 1) as [string];
    await seedUsers(target, targetSlot, [v], 0);
    const stopped = env.mover({ readerGraceMs: 0, hook: (point) => (point === 'catching_up' ? Promise.reject(new Error('test: stop after the copy')) : undefined) });
    const job = await stopped.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await expect(stopped.run(job.id)).rejects.toThrow(/stop after the copy/);
    /** Where `x` is now: its rows on the source and on the target. */
    const copies = () => Promise.all([source, target].map(async (p) => (await p.query<{ owner: string; slot: number }>('select owner_id::text as owner, slot from documents where id = $1', [x])).rows));
    return { to, u1, v, x, targetSlot, job, copies };
  }

  it('hands a document of a moving slot to an owner on the target (delete there, insert here): the insert waits for the catch-up, then lands once', async () => {
    const { to, u1, v, x, targetSlot, job, copies } = await copiedAndStopped(1700);
    // A genuine duplicate of a row the target owns is still refused at once.
    await expect(env.writer.withShardWrite(v, ({ client, slot: s }) => client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'dup@example.com', 'dup')`, [v, s]))).rejects.toMatchObject({ code: '23505' });

    await env.writer.withShardWrite(u1, ({ client }) => client.query('delete from documents where id = $1', [x]));
    const insert = env.writer.withShardWrite(v, ({ client, slot: s }) => client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'handed over')`, [x, v, s]));
    insert.catch(() => undefined); // (awaited below; a failure must not be an unhandled rejection meanwhile)
    await new Promise((r) => setTimeout(r, 300));
    // The next run's catch-up removes the copy of the row that left the slot.
    const done = await env.mover({ readerGraceMs: 0 }).run(job.id);

    expect((await insert).shardId).toBe(to);
    expect(done.state).toBe('done');
    expect(await copies()).toEqual([[], [{ owner: v, slot: targetSlot }]]);
  });

  it('refuses at once (23505) an id the source still holds in the moving unit: a real duplicate, not a stale copy', async () => {
    const { u1, v, x, job, copies } = await copiedAndStopped(1750);
    const started = Date.now();

    await expect(env.writer.withShardWrite(v, ({ client, slot: s }) => client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'duplicate')`, [x, v, s]))).rejects.toMatchObject({ code: '23505' });

    expect(Date.now() - started).toBeLessThan(2000);
    expect((await copies())[0]).toEqual([{ owner: u1, slot: 1750 }]);
    await env.mover({ readerGraceMs: 0 }).run(job.id);
  });

  it('an idempotent hand-over insert in the form the spec gives (on conflict (id) do update) waits for the copy and lands too', async () => {
    const { to, u1, v, x, targetSlot, job, copies } = await copiedAndStopped(1850);
    await env.writer.withShardWrite(u1, ({ client }) => client.query('delete from documents where id = $1', [x]));
    const insert = env.writer.withShardWrite(v, ({ client, slot: s }) =>
      client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'handed over') on conflict (id) do update set id = excluded.id`, [x, v, s]),
    );
    insert.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    await env.mover({ readerGraceMs: 0 }).run(job.id);

    const written = await insert;
    expect({ shard: written.shardId, rows: written.value.rowCount }).toEqual({ shard: to, rows: 1 });
    expect(await copies()).toEqual([[], [{ owner: v, slot: targetSlot }]]);
  });

  it("hands a document of a unit moved away from this shard, before the move's clean-up, back to an owner here: the insert waits for the clean-up, then lands once", async () => {
    const { here, w, d, job, where } = await handedBackBeforeCleanUp(3000);
    // d goes from u (now away) to w (here): deleted there above, inserted here.
    const insert = env.writer.withShardWrite(w, ({ client, slot }) => client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'handed back')`, [d, w, slot]));
    insert.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    // The next run (once the dead run's lease is gone) cleans up.
    expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');

    expect((await insert).shardId).toBe(here);
    expect(await where()).toEqual([[w], []]);
  });
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
    const slot = 2300;
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
