/**
 * Moves against what runs beside them: readers holding an older map while the fence is released,
 * processes whose directory cache missed a key a slot move leaves out, a plan racing another move
 * of the slot, a stalled run of a directory move, a document id the target already uses under
 * another slot, a prepared (two-phase) transaction older than the capture, an earlier run's write
 * transaction left open, the clean-up's note on rows it kept, and two moves into one target whose
 * units trade documents (each meeting the other's stale copies). Each case was shown to lose,
 * hide or misplace data (or to stall a move for good) before its fix.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover, MoveConflictError } from '../../../functions/adapters/postgres/mover.js';
import { moverKilledAt } from './fixtures/kill.js';
import { countSlot, keysInSlot, otherProcess, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  // Three shards; the servers allow prepared transactions, which an application may use.
  env = await startMoveEnv({ shards: 3, settings: { max_prepared_transactions: 10 } });
});
afterAll(async () => {
  await env?.stop();
});

const titlesOf =
  (user: string) =>
  async ({ client }: { client: pg.PoolClient }): Promise<string[]> =>
    (await client.query<{ title: string }>('select title from documents where owner_id = $1 order by title', [user])).rows.map((r) => r.title);

async function until(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Runs `sql` as a trigger body on the source's write_fences for the test, dropped afterwards. */
async function withFenceTrigger<T>(pool: pg.Pool, body: string, fn: () => Promise<T>): Promise<T> {
  await pool.query(`
    create or replace function test_fence_hook() returns trigger language plpgsql as $$ begin ${body} return new; end $$;
    create trigger test_fence_hook before update on write_fences for each row execute function test_fence_hook();
    alter table write_fences enable always trigger test_fence_hook;`);
  try {
    return await fn();
  } finally {
    await pool.query('drop trigger if exists test_fence_hook on write_fences; drop function if exists test_fence_hook()');
  }
}

describe('the release of the fence', () => {
  it('never lets a reader holding the old map miss a write the new owner acknowledged, however long the release takes', async () => {
    const slot = 600;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    await source.query(`update documents set title = 'before' where owner_id = $1`, [user]);
    const stale = await otherProcess(env);
    expect((await stale.reader.withShardRead(user, titlesOf(user))).value).toEqual(['before']);

    // The source's half of the release is slow (a slow source, a pause of the mover).
    await withFenceTrigger(source, `if new.state = 'moved' and old.state = 'fenced' then perform pg_sleep(1); end if;`, async () => {
      const mover = env.mover({ readerGraceMs: 0 });
      const run = mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
      await until('the target to open', async () => (await unitFenceState(target, 'slot', String(slot))) === 'open');
      const write = await env.writer.withShardWrite(user, async ({ client, slot: s }) => {
        await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'acknowledged')`, [user, s]);
      });
      const read = await stale.reader.withShardRead(user, titlesOf(user));
      await run;
      expect(write.shardId).toBe(to);
      expect({ shard: read.shardId, titles: read.value }).toEqual({ shard: to, titles: ['acknowledged', 'before'] });
    });
  });

  it('leaves no reader on the old copy when the mover fails between the two halves of the release', async () => {
    const slot = 603;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    await source.query(`update documents set title = 'before' where owner_id = $1`, [user]);
    const stale = await otherProcess(env);
    expect((await stale.reader.withShardRead(user, titlesOf(user))).value).toEqual(['before']);

    const mover = env.mover({ readerGraceMs: 0 });
    const id = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
    // The target refuses its opening once (a dropped connection there).
    const target = env.shards.get(to) as pg.Pool;
    const failed = await withFenceTrigger(target, `if new.state = 'open' and old.state = 'incoming' then raise exception 'test: target connection lost'; end if;`, () =>
      mover.run(id).then(
        (j) => j.state,
        (e: unknown) => (e as Error).message,
      ),
    );
    expect(failed).toMatch(/target connection lost/);
    expect(await unitFenceState(source, 'slot', String(slot))).toBe('moved');

    // Until the job resumes, a writer waits on the target ('incoming'); the old map's reader is
    // sent on, and waits there too, instead of reading the old copy.
    const write = env.writer.withShardWrite(user, async ({ client, slot: s }) => {
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'acknowledged')`, [user, s]);
    });
    const read = stale.reader.withShardRead(user, titlesOf(user));
    await new Promise((r) => setTimeout(r, 200));
    expect((await mover.run(id)).state).toBe('done');
    expect((await write).shardId).toBe(to);
    // The read began before the write was acknowledged: it may see it or not, but only from the new owner.
    expect((await read).shardId).toBe(to);
    expect((await stale.reader.withShardRead(user, titlesOf(user))).value).toEqual(['acknowledged', 'before']);
  });
});

describe('keys a slot move leaves where the directory puts them', () => {
  it('are sent on by both shards of the move to a process whose directory cache missed them, never read empty or written twice', async () => {
    const slot = 602;
    const { from, to, source } = await sides(env, slot);
    const third = [...env.shards.keys()].find((s) => s !== from && s !== to) as string;
    const [pinned, neighbour] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [pinned, neighbour], 2);
    const proc = await otherProcess(env, { ttlMs: 60_000 });
    // The process reads both keys now: the directory has no entry for them (a miss, cached).
    expect((await proc.reader.withShardRead(pinned, titlesOf(pinned))).value).toHaveLength(2);
    expect((await proc.reader.withShardRead(neighbour, titlesOf(neighbour))).value).toHaveLength(2);

    const mover = env.mover({ readerGraceMs: 0 });
    await mover.run((await mover.plan({ kind: 'directory', key: pinned, to: third, createdBy: 'test' })).id);
    const slotMove = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect({ state: slotMove.state, excluded: slotMove.excludedKeys }).toEqual({ state: 'done', excluded: [pinned] });
    for (const shard of [from, to]) expect(await unitFenceState(env.shards.get(shard) as pg.Pool, 'directory', pinned), shard).toBe('moved');

    // The process learns the new map through the neighbour, then reads and writes the pinned key.
    expect((await proc.reader.withShardRead(neighbour, titlesOf(neighbour))).shardId).toBe(to);
    const read = await proc.reader.withShardRead(pinned, titlesOf(pinned));
    const write = await proc.writer.withShardWrite(pinned, async ({ client, slot: s }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1::uuid, $2, 'again@example.com', 'again') on conflict (id) do nothing`, [pinned, s]);
    });
    const copies = await Promise.all([from, to].map(async (s) => (await (env.shards.get(s) as pg.Pool).query<{ n: number }>('select count(*)::int as n from users where id = $1', [pinned])).rows[0]?.n));
    expect({ readFrom: read.shardId, docs: read.value.length, wroteOn: write.shardId, copiesOnTheSlotsShards: copies }).toEqual({ readFrom: third, docs: 2, wroteOn: third, copiesOnTheSlotsShards: [0, 0] });
  });
});

describe('planning a move', () => {
  it('records nothing from an owner that another move of the slot replaced while the plan was being made', async () => {
    const slot = 606;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 1), 2);
    const first = env.mover({ readerGraceMs: 0 });
    const job1 = await first.plan({ kind: 'slot', slot, to, createdBy: 'request 1' });
    /**
     * A planner whose read of the slot map comes just before `other` runs to its end, as a plan
     * slowed down between reading the owner and recording its job would see it.
     */
    const plannerRacing = (other: number): Mover => {
      let ran: Promise<unknown> | undefined;
      return new Mover({
        catalog: env.catalog,
        shards: env.shards,
        directory: env.directory,
        readerGraceMs: 0,
        slotMaps: {
          current: async (...a: Parameters<typeof env.slotMaps.current>) => {
            const map = await env.slotMaps.current(...a);
            ran ??= first.run(other);
            await ran;
            return map;
          },
          publish: env.slotMaps.publish.bind(env.slotMaps),
          ownerOf: env.slotMaps.ownerOf.bind(env.slotMaps),
        },
      });
    };
    // Request 2 reads the map, then request 1's move runs to the end before request 2 records its job.
    const slowPlanner = plannerRacing(job1.id);
    // Request 2 asked for the same target: the slot is there already.
    await expect(slowPlanner.plan({ kind: 'slot', slot, to, createdBy: 'request 2' })).rejects.toThrow(/is already on .*another move finished while this one was planned/);
    const unfinished = async (): Promise<number | undefined> =>
      (await env.catalog.query<{ n: number }>(`select count(*)::int as n from catalog.move_jobs where slot = $1 and state not in ('done', 'failed', 'cancelled')`, [slot])).rows[0]?.n;
    expect(await unfinished()).toBe(0);

    // Request 3 asked for a third shard, planned from the owner it read before the slot moved back.
    const third = [...env.shards.keys()].find((s) => s !== to && s !== job1.from) as string;
    const back = await first.plan({ kind: 'slot', slot, to: job1.from, createdBy: 'request 1 again' });
    const racing = plannerRacing(back.id);
    await expect(racing.plan({ kind: 'slot', slot, to: third, createdBy: 'request 3' }).then(undefined, (e: unknown) => e)).resolves.toBeInstanceOf(MoveConflictError);
    expect(await unfinished()).toBe(0);
    // The slot's next move is planned from its real owner, and runs.
    const next = await env.mover().plan({ kind: 'slot', slot, to: third, createdBy: 'request 4' });
    expect(next.from).toBe(job1.from);
    expect((await env.mover({ readerGraceMs: 0 }).run(next.id)).state).toBe('done');
  });
});

describe('a stalled run of a directory-key move', () => {
  it('cannot pin the key back to its old shard after the run that took over has moved it', async () => {
    const slot = 605;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 2);
    const id = (await env.mover().plan({ kind: 'directory', key, to, createdBy: 'test' })).id;
    // The first run stalls inside the pin, after reading the key's entry (none).
    let reached!: () => void;
    const atPin = new Promise<void>((r) => (reached = r));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let stalled = false;
    const stallingDirectory = {
      entry: env.directory.entry.bind(env.directory),
      all: env.directory.all.bind(env.directory),
      keysInSlot: env.directory.keysInSlot.bind(env.directory),
      invalidate: env.directory.invalidate.bind(env.directory),
      async set(...args: Parameters<typeof env.directory.set>) {
        if (!stalled) {
          stalled = true;
          reached();
          await gate;
        }
        return env.directory.set(...args);
      },
    };
    const first = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: stallingDirectory, readerGraceMs: 0, leaseTtlMs: 300 });
    const firstRun = first.run(id).then(
      (j) => j.state,
      (e: unknown) => `${(e as Error).name}: ${(e as Error).message}`,
    );
    await atPin;
    // Its lease lapses (a run renews between its transactions, and the pin is one), and the next
    // run tries to take the job over. The pin holds the job row, so the takeover waits for it.
    await new Promise((r) => setTimeout(r, 700));
    const second = env
      .mover({ readerGraceMs: 0 })
      .run(id)
      .then(
        (j) => j.state,
        (e: unknown) => `${(e as Error).name}: ${(e as Error).message}`,
      );
    await new Promise((r) => setTimeout(r, 200));
    release();
    // Whichever run goes on, one of them (or the next) finishes the move, and the key stays where its rows are.
    const outcomes = [await firstRun, await second];
    expect(outcomes.filter((o) => o === 'done').length, outcomes.join(' | ')).toBeLessThanOrEqual(1);
    if (!outcomes.includes('done')) expect((await env.mover({ readerGraceMs: 0 }).run(id)).state).toBe('done');

    expect((await env.directory.entry(key))?.shardId).toBe(to);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    expect(await unitFenceState(env.shards.get(to) as pg.Pool, 'directory', key)).toBe('open');
    const read = await (await otherProcess(env, { ttlMs: 0 })).reader.withShardRead(key, titlesOf(key));
    expect({ from, read: `${read.shardId}: ${read.value.length} docs` }).toEqual({ from, read: `${to}: 2 docs` });
  });
});

describe('the catch-up', () => {
  it("stops rather than overwrite a row the target owns under another slot that has the same id, and the target's row survives", async () => {
    const slot = 2202;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 3);
    // A user of a slot the target owns, with a document: acknowledged on the target.
    const map = await env.slotMaps.current();
    const otherSlot = map.assignments.findIndex((s) => s === to);
    const [other] = keysInSlot(otherSlot, 1) as [string];
    const shared = randomUUID();
    await env.writer.withShardWrite(other, async ({ client, slot: s }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'o@example.com', 'o')`, [other, s]);
      await client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'target original')`, [shared, other, s]);
    });
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        // An import keeping the client's ids writes a document with the same id on the source.
        if (point === 'catching_up') {
          await env.writer.withShardWrite(user, async ({ client, slot: s }) => {
            await client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'source copy')`, [shared, user, s]);
          });
        }
      },
    });
    const id = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
    await expect(mover.run(id)).rejects.toThrow(new RegExp(`documents id\\(s\\) ${shared} of slot ${slot} already belong to another unit on ${to}`));
    const onTarget = await target.query<{ owner_id: string; title: string }>('select owner_id::text, title from documents where id = $1', [shared]);
    expect(onTarget.rows).toEqual([{ owner_id: other, title: 'target original' }]);
    // Cancelled, the move leaves both where they were.
    expect((await env.mover({ readerGraceMs: 0 }).cancel(id)).state).toBe('cancelled');
    expect((await target.query('select title from documents where id = $1', [shared])).rows).toEqual([{ title: 'target original' }]);
    expect((await source.query('select title from documents where id = $1', [shared])).rows).toEqual([{ title: 'source copy' }]);
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 4 });
  });
});

describe('the drain before the copy', () => {
  it('waits for a prepared transaction that wrote the unit before the capture, so its commit reaches the new owner', async () => {
    const slot = 2101;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 3);
    const doc = randomUUID();
    const app = await (env.shards.get(from) as pg.Pool).connect();
    try {
      await app.query('begin isolation level read committed');
      await app.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'two-phase')`, [doc, user, slot]);
      await app.query(`prepare transaction 'test_2pc_${slot}'`);
    } finally {
      app.release();
    }
    // The transaction manager commits it 300 ms into the move: the drain must still be waiting.
    const commit = new Promise((r) => setTimeout(r, 300)).then(() => source.query(`commit prepared 'test_2pc_${slot}'`));
    const job = await env.mover({ readerGraceMs: 0 }).run((await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    await commit;
    expect(job.state).toBe('done');
    expect((await target.query('select title from documents where id = $1', [doc])).rows).toEqual([{ title: 'two-phase' }]);
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
  });

  it('names a prepared transaction that never ends, changes nothing on the target, and goes on once it is gone', async () => {
    const slot = 2105;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    const app = await (env.shards.get(from) as pg.Pool).connect();
    try {
      await app.query('begin isolation level read committed');
      await app.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'forgotten')`, [user, slot]);
      await app.query(`prepare transaction 'test_2pc_${slot}'`);
    } finally {
      app.release();
    }
    const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 300 });
    const id = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
    await expect(mover.run(id)).rejects.toThrow(/1 prepared transaction\(s\) that wrote users, documents or document_keys/);
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    await source.query(`rollback prepared 'test_2pc_${slot}'`);
    expect((await mover.run(id)).state).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 2 });
  });
});

describe('a run resumed beside a stalled one', () => {
  it("ends an earlier run's write transaction that stays open (that run lost its lease), and finishes the move", async () => {
    const slot = 720;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 2);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // A first run stops in the copy (its time is up at its fourth look at the clock).
    const first = Date.now() + 60_000;
    let looks = 0;
    expect((await env.mover({ wallClock: () => (++looks >= 4 ? first : first - 1) }).run(planned.id, { until: first })).state).toBe('copying');
    const { rows } = await env.catalog.query<{ epoch: string }>('select lease_epoch as epoch from catalog.move_jobs where id = $1', [planned.id]);
    // A stalled run of that epoch is inside one of its write transactions on the source (or its
    // connection went silent there: the server cannot tell).
    const stalled = await (env.shards.get(from) as pg.Pool).connect();
    stalled.on('error', () => undefined);
    try {
      await stalled.query('begin');
      await stalled.query(`set local ca_dms.move_writer = 'on'`);
      await stalled.query('select move_permit_hold($1, $2)', [planned.id, Number(rows[0]?.epoch)]);
      const started = Date.now();
      expect((await env.mover({ readerGraceMs: 0 }).run(planned.id)).state).toBe('done');
      expect(Date.now() - started).toBeLessThan(10_000);
      // The stalled run's session was ended: it can change nothing more.
      await expect(stalled.query('select 1')).rejects.toThrow();
    } finally {
      stalled.release(true);
    }
  }, 60_000);
});

describe('the clean-up', () => {
  it('leaves its note on the rows it kept on the finished job', async () => {
    const slot = 730;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    // A document of this user stored under another slot (not part of the unit): its owner is kept.
    // Shard migration 015 refuses such a row now; one written before it is still there (the key
    // is not validated), so it is written as it was then, the foreign keys skipped.
    await source.query(
      `begin; set local session_replication_role = replica;
       insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), '${user}', 731, 'elsewhere'); commit`,
    );
    const done = await env.mover({ readerGraceMs: 0 }).run((await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(done.state).toBe('done');
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 0 });
    expect(done.error).toMatch(/clean-up kept 1 user row\(s\) on .* that still own documents outside the moved unit/);
  });
});

describe('the unit-size limit', () => {
  it('is checked again before the comparison, for a unit that grew past it after it was planned', async () => {
    const slot = 740;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 8);
    const mover = env.mover({ readerGraceMs: 0, maxUnitRows: 10 });
    const id = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
    await source.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $1, $2, 'later ' || g from generate_series(1, 4) g`, [user, slot]);

    await expect(mover.run(id)).rejects.toThrow(/has grown to 12 rows in documents .* one move compares at most 10 rows per table: cancel this move/);
    const stopped = await mover.get(id);
    expect(stopped.flipStarted).toBe(false);
    expect(stopped.error).toMatch(/has grown to 12 rows/);
    // Writes were never held: the unit is open on its owner, and the cancel leaves it whole there.
    expect(await unitFenceState(source, 'slot', String(slot))).toBe('open');
    expect((await mover.cancel(id)).state).toBe('cancelled');
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 12 });
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
  });
});

describe('two slots moving from one source to one target at once', () => {
  it('both finish when documents change hands between them during the catch-up, each once on its owner', async () => {
    // Two slots of one shard, both moving to another.
    const map = await env.slotMaps.current();
    const from = map.assignments[750] as string;
    const slots = map.assignments.flatMap((owner, slot) => (owner === from && slot >= 750 && slot < 900 ? [slot] : [])).slice(0, 2) as [number, number];
    const to = [...env.shards.keys()].find((s) => s !== from) as string;
    const source = env.shards.get(from) as pg.Pool;
    const target = env.shards.get(to) as pg.Pool;
    const [s, t] = slots;
    const [u] = keysInSlot(s, 1) as [string];
    const [w] = keysInSlot(t, 1) as [string];
    await seedUsers(source, s, [u], 2);
    await seedUsers(source, t, [w], 2);
    // Both copied, then stopped (a crash) once caught up: both units are incoming on the target.
    const stopAfterCopy = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'catching_up') throw new Error('test: stopped after the copy');
      },
    });
    const jobS = await stopAfterCopy.plan({ kind: 'slot', slot: s, to, createdBy: 'test' });
    const jobT = await stopAfterCopy.plan({ kind: 'slot', slot: t, to, createdBy: 'test' });
    await expect(stopAfterCopy.run(jobS.id)).rejects.toThrow(/stopped after the copy/);
    await expect(stopAfterCopy.run(jobT.id)).rejects.toThrow(/stopped after the copy/);
    // One document of each owner is handed to the other (owner and slot together, as the spec says).
    const docOf = async (owner: string): Promise<string> => (await source.query<{ id: string }>('select id::text from documents where owner_id = $1 order by id limit 1', [owner])).rows[0]?.id as string;
    const [dU, dW] = [await docOf(u), await docOf(w)];
    await env.writer.withShardWrite(u, async ({ client }) => {
      await client.query('update documents set owner_id = $1, slot = $2 where id = $3', [w, t, dU]);
      await client.query('update documents set owner_id = $1, slot = $2 where id = $3', [u, s, dW]);
    });

    // Run one after the other, as the moves worker does, until both are done.
    const mover = env.mover({ readerGraceMs: 0 });
    const states = async (): Promise<string[]> => [(await mover.get(jobS.id)).state, (await mover.get(jobT.id)).state];
    for (let round = 0; round < 4 && (await states()).some((x) => x !== 'done'); round++) {
      for (const id of [jobS.id, jobT.id]) await mover.run(id).catch(() => undefined);
    }
    expect(await states()).toEqual(['done', 'done']);
    const placed = async (pool: pg.Pool, id: string): Promise<string[]> => (await pool.query<{ o: string }>('select owner_id::text as o from documents where id = $1', [id])).rows.map((r) => r.o);
    expect({ dU: await placed(target, dU), dW: await placed(target, dW) }).toEqual({ dU: [w], dW: [u] });
    expect({ dU: await placed(source, dU), dW: await placed(source, dW) }).toEqual({ dU: [], dW: [] });
    expect([await countSlot(target, s), await countSlot(target, t)]).toEqual([
      { users: 1, documents: 2 },
      { users: 1, documents: 2 },
    ]);
  });
});

describe("the bulk copy beside another move's stale copies", () => {
  /** Two slots of one shard (in [lo, hi)), both to be moved to another shard, with `users` users of `docs` documents each. */
  async function twoSlots(lo: number, hi: number, users: number, docs: number) {
    const map = await env.slotMaps.current();
    const from = map.assignments[lo] as string;
    const [s, t] = map.assignments.flatMap((owner, slot) => (owner === from && slot >= lo && slot < hi ? [slot] : [])).slice(0, 2) as [number, number];
    const to = [...env.shards.keys()].find((x) => x !== from) as string;
    const source = env.shards.get(from) as pg.Pool;
    const target = env.shards.get(to) as pg.Pool;
    const us = keysInSlot(s, users);
    const ws = keysInSlot(t, users);
    await seedUsers(source, s, us, docs);
    await seedUsers(source, t, ws, docs);
    return { from, to, source, target, s, t, us, ws };
  }

  const stopAfterCopy = () =>
    env.mover({
      readerGraceMs: 0,
      copyBatchRows: 10,
      hook(point) {
        if (point === 'catching_up') throw new Error('test: stopped after the copy');
      },
    });

  it("copies a unit whose documents another unfinished move into the target still holds copies of (traded since), and that move's copy is left right", async () => {
    const { source, target, to, s, t, ws } = await twoSlots(950, 1100, 3, 10);
    // Slot s copied to the target, then stopped: its copy is there, incoming.
    const jobA = (await stopAfterCopy().plan({ kind: 'slot', slot: s, to, createdBy: 'test' })).id;
    const jobB = (await stopAfterCopy().plan({ kind: 'slot', slot: t, to, createdBy: 'test' })).id;
    await expect(stopAfterCopy().run(jobA)).rejects.toThrow(/stopped after the copy/);
    // Six of slot s's documents are handed to owners of slot t on the source: A's copies of them are stale.
    const { rows: traded } = await source.query<{ id: string }>('select id::text from documents where slot = $1 order by id limit 6', [s]);
    for (const [i, { id }] of traded.entries()) {
      await env.writer.withShardWrite(ws[i % ws.length] as string, async ({ client, slot: slot2 }) => {
        await client.query('update documents set owner_id = $1, slot = $2 where id = $3', [ws[i % ws.length], slot2, id]);
      });
    }
    // B's copy meets them, and goes through at its first run.
    await expect(stopAfterCopy().run(jobB)).rejects.toThrow(/stopped after the copy/);
    const ids = traded.map((r) => r.id);
    const onTarget = async () =>
      (await target.query<{ id: string; slot: number }>('select id::text, slot from documents where id = any($1::uuid[]) order by id', [ids])).rows;
    expect(await onTarget()).toEqual(ids.map((id) => ({ id, slot: t })));
    // Both finish; every document once, with its owner, on the target.
    const mover = env.mover({ readerGraceMs: 0 });
    for (let round = 0; round < 3; round++) for (const id of [jobA, jobB]) await mover.run(id).catch(() => undefined);
    expect([(await mover.get(jobA)).state, (await mover.get(jobB)).state]).toEqual(['done', 'done']);
    expect(await onTarget()).toEqual(ids.map((id) => ({ id, slot: t })));
    expect([await countSlot(target, s), await countSlot(target, t), await countSlot(source, s), await countSlot(source, t)]).toEqual([
      { users: 3, documents: 24 },
      { users: 3, documents: 36 },
      { users: 0, documents: 0 },
      { users: 0, documents: 0 },
    ]);
    const { rows: bad } = await target.query('select d.id from documents d join users u on u.id = d.owner_id where d.slot <> u.slot and d.slot = any($1::int[])', [[s, t]]);
    expect(bad).toEqual([]);
  });

  it("leaves this move's copies alone when the other move is cancelled, and finishes", async () => {
    const { source, target, to, s, t } = await twoSlots(1300, 1450, 2, 10);
    const jobA = (await stopAfterCopy().plan({ kind: 'slot', slot: s, to, createdBy: 'test' })).id;
    const jobB = (await stopAfterCopy().plan({ kind: 'slot', slot: t, to, createdBy: 'test' })).id;
    await expect(stopAfterCopy().run(jobA)).rejects.toThrow(/stopped after the copy/);
    const { rows: owners } = await source.query<{ id: string }>('select id::text from users where slot = $1 order by id limit 1', [t]);
    const w = owners[0]?.id as string;
    const { rows: traded } = await source.query<{ id: string }>('select id::text from documents where slot = $1 order by id limit 4', [s]);
    const ids = traded.map((r) => r.id);
    await env.writer.withShardWrite(w, async ({ client, slot: slot2 }) => {
      await client.query('update documents set owner_id = $1, slot = $2 where id = any($3::uuid[])', [w, slot2, ids]);
    });
    await expect(stopAfterCopy().run(jobB)).rejects.toThrow(/stopped after the copy/);
    // A is cancelled: its rollback deletes its copy, by its unit, and none of B's.
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.cancel(jobA)).state).toBe('cancelled');
    expect((await target.query<{ slot: number }>('select slot from documents where id = any($1::uuid[])', [ids])).rows.map((r) => r.slot)).toEqual([t, t, t, t]);
    expect(await countSlot(target, s)).toEqual({ users: 0, documents: 0 });
    expect((await mover.run(jobB)).state).toBe('done');
    expect([await countSlot(target, t), await countSlot(source, s), await countSlot(source, t)]).toEqual([
      { users: 2, documents: 24 },
      { users: 2, documents: 16 },
      { users: 0, documents: 0 },
    ]);
  });

  it("stops naming the id, and deletes nothing, when the id is a row's the target owns", async () => {
    const { source, target, to, t, ws } = await twoSlots(1450, 1600, 1, 3);
    const map = await env.slotMaps.current();
    const ownedSlot = map.assignments.findIndex((x) => x === to);
    const [other] = keysInSlot(ownedSlot, 1) as [string];
    const shared = randomUUID();
    await env.writer.withShardWrite(other, async ({ client, slot: x }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'o2@example.com', 'o2')`, [other, x]);
      await client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'target original')`, [shared, other, x]);
    });
    // The same id on the source in slot t (an import that kept a client's ids).
    await source.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'source copy')`, [shared, ws[0], t]);
    const mover = env.mover({ readerGraceMs: 0 });
    const id = (await mover.plan({ kind: 'slot', slot: t, to, createdBy: 'test' })).id;
    await expect(mover.run(id)).rejects.toThrow(new RegExp(`documents id\\(s\\) ${shared} of slot ${t} already belong to another unit on ${to}`));
    expect((await target.query('select owner_id::text as o, title from documents where id = $1', [shared])).rows).toEqual([{ o: other, title: 'target original' }]);
    expect((await mover.cancel(id)).state).toBe('cancelled');
    expect((await target.query('select title from documents where id = $1', [shared])).rows).toEqual([{ title: 'target original' }]);
    expect((await source.query('select title from documents where id = $1', [shared])).rows).toEqual([{ title: 'source copy' }]);
  });

  const handTo = (owner: string, id: string) =>
    env.writer.withShardWrite(owner, ({ client, slot }) => client.query('update documents set owner_id = $1, slot = $2 where id = $3', [owner, slot, id]));

  /**
   * Slots `s` (owner u) and `t` (owner w) of 3 documents each, both planned to move to one target;
   * A (slot s) copied, B too when `bothCopied`, then `handed` of u's documents handed to w, so
   * that A's copies of them on the target are stale.
   */
  async function tradedAfterCopy(slotA: number, slotB: number, handed: number, bothCopied: boolean) {
    const sides = await twoSlots(slotA, slotB, 1, 3);
    const [u, w] = [sides.us[0] as string, sides.ws[0] as string];
    const jobA = (await stopAfterCopy().plan({ kind: 'slot', slot: sides.s, to: sides.to, createdBy: 'test' })).id;
    const jobB = (await stopAfterCopy().plan({ kind: 'slot', slot: sides.t, to: sides.to, createdBy: 'test' })).id;
    await expect(stopAfterCopy().run(jobA)).rejects.toThrow(/stopped after the copy/);
    if (bothCopied) await expect(stopAfterCopy().run(jobB)).rejects.toThrow(/stopped after the copy/);
    const ids = (await sides.source.query<{ id: string }>('select id::text from documents where owner_id = $1 order by id limit $2', [u, handed])).rows.map((r) => r.id);
    for (const id of ids) await handTo(w, id);
    return { ...sides, u, w, jobA, jobB, ids };
  }

  /** The rows of slots s and t on the target, then on the source. */
  async function slotCounts(target: pg.Pool, source: pg.Pool, s: number, t: number) {
    return [await countSlot(target, s), await countSlot(target, t), await countSlot(source, s), await countSlot(source, t)];
  }

  /** Where documents `ids` are on `target` (owner and slot), by id. */
  async function placements(target: pg.Pool, ids: readonly string[]) {
    return (await target.query<{ id: string; owner: string; slot: number }>('select id::text, owner_id::text as owner, slot from documents where id = any($1::uuid[]) order by id', [ids])).rows;
  }

  it("copies on when a document whose stale copy it clears goes back to that copy's unit meanwhile", async () => {
    // d goes from u (slot s) to w (slot t): A's copy of it on the target is stale.
    const { source, target, s, t, u, jobA, jobB, ids } = await tradedAfterCopy(1100, 1200, 1, false);
    const d = ids[0] as string;

    // B's first page meets A's copy of d; while B deletes it, d goes back to u: A's copy is right again, B's page stale.
    const copied = await whileDeletesHeld(target, d, () => stopAfterCopy().run(jobB), [() => handTo(u, d).then(() => undefined)]);

    expect(copied).toMatch(/stopped after the copy/);
    const mover = env.mover({ readerGraceMs: 0 });
    for (let round = 0; round < 2; round++) for (const id of [jobA, jobB]) await mover.run(id).catch(() => undefined);
    expect([(await mover.get(jobA)).state, (await mover.get(jobB)).state]).toEqual(['done', 'done']);
    expect(await placements(target, [d])).toEqual([{ id: d, owner: u, slot: s }]);
    expect(await slotCounts(target, source, s, t)).toEqual([
      { users: 1, documents: 3 },
      { users: 1, documents: 3 },
      { users: 0, documents: 0 },
      { users: 0, documents: 0 },
    ]);
  });

  it("catches up when a document whose stale copy it clears goes back to that copy's unit meanwhile", async () => {
    // d and e go from u (slot s) to w (slot t): A's copies of them are stale, and B's catch-up upserts them.
    const { source, target, s, t, u, w, jobA, jobB, ids } = await tradedAfterCopy(1200, 1300, 2, true);
    const [d, e] = ids as [string, string];

    // B's upsert meets A's copies of d and e; while B deletes them, d goes back to u: A's copy of
    // d is right again (B's pass stale for d), A's copy of e still stale and in B's way.
    const mover = env.mover({ readerGraceMs: 0 });
    const finished = await whileDeletesHeld(target, d, () => mover.run(jobB), [() => handTo(u, d).then(() => undefined)]);

    expect(finished).toBe('done');
    expect((await mover.run(jobA)).state).toBe('done');
    expect(await placements(target, [d, e])).toEqual(
      [
        { id: d, owner: u, slot: s },
        { id: e, owner: w, slot: t },
      ].sort((x, y) => (x.id < y.id ? -1 : 1)),
    );
    expect(await slotCounts(target, source, s, t)).toEqual([
      { users: 1, documents: 2 },
      { users: 1, documents: 4 },
      { users: 0, documents: 0 },
      { users: 0, documents: 0 },
    ]);
  });

  /**
   * Holds the mover's deletes of document `id` on `target` one by one (a trigger: the n-th delete
   * waits on advisory lock `key + n`, which this session holds) while `run` goes on: once the n-th
   * is seen waiting, `steps[n - 1]` runs and that delete is let go. Answers what `run` settled
   * with (its state, or its error's message).
   */
  async function whileDeletesHeld(target: pg.Pool, id: string, run: () => Promise<{ state: string }>, steps: readonly (() => Promise<void>)[]): Promise<string> {
    const key = 0x5e7b00;
    const holder = await target.connect();
    try {
      for (let n = 1; n <= steps.length; n++) await holder.query('select pg_advisory_lock($1::bigint)', [key + n]);
      await target.query(`
        create sequence test_hold_deletes_n;
        create function test_hold_deletes() returns trigger language plpgsql as $$ begin perform pg_advisory_xact_lock(${key} + nextval('test_hold_deletes_n')); return old; end $$;
        create trigger test_hold_deletes before delete on documents for each row when (old.id = '${id}'::uuid) execute function test_hold_deletes();
        alter table documents enable always trigger test_hold_deletes;`);
      const settled = run().then(
        (j) => j.state,
        (e: unknown) => (e as Error).message,
      );
      for (const [i, step] of steps.entries()) {
        const n = key + i + 1;
        await until(`delete #${i + 1} to wait`, async () => (await target.query(`select 1 from pg_locks where locktype = 'advisory' and objid = $1 and not granted`, [n])).rows.length > 0);
        await step();
        await holder.query('select pg_advisory_unlock($1::bigint)', [n]);
      }
      return await settled;
    } finally {
      await holder.query('select pg_advisory_unlock_all()');
      holder.release();
      await target.query('drop trigger if exists test_hold_deletes on documents; drop function if exists test_hold_deletes(); drop sequence if exists test_hold_deletes_n');
    }
  }

  it("catches up when a document whose stale copy it clears leaves its unit and comes back while the clearing is retried", async () => {
    // d and e go from u (slot s) to w (slot t): A's copies of them are stale, and B's catch-up upserts them.
    const { source, target, s, t, u, w, jobA, jobB, ids } = await tradedAfterCopy(2400, 2600, 2, true);
    const [d, e] = ids as [string, string];

    // B's upsert meets A's copies of d and e. While B deletes them, d goes back to u (the delete
    // rolls back); while B deletes again, e alone, d comes back to w: A's copy of d is stale
    // again, and in B's way, though B's delete no longer names it.
    const mover = env.mover({ readerGraceMs: 0 });
    const finished = await whileDeletesHeld(target, e, () => mover.run(jobB), [() => handTo(u, d).then(() => undefined), () => handTo(w, d).then(() => undefined)]);

    expect(finished).toBe('done');
    expect((await mover.run(jobA)).state).toBe('done');
    expect(await placements(target, [d, e])).toEqual([d, e].sort().map((id) => ({ id, owner: w, slot: t })));
    expect(await slotCounts(target, source, s, t)).toEqual([
      { users: 1, documents: 1 },
      { users: 1, documents: 5 },
      { users: 0, documents: 0 },
      { users: 0, documents: 0 },
    ]);
  });

  it("copies on when a document whose stale copy it clears leaves its unit and comes back while the clearing is retried", async () => {
    // d and e go from u (slot s) to w (slot t): A's copies of them are stale, in the way of B's copy.
    const { source, target, s, t, u, w, jobA, jobB, ids } = await tradedAfterCopy(2600, 2800, 2, false);
    const [d, e] = ids as [string, string];

    // B's first page meets A's copies of d and e. While B deletes them, d goes back to u (the
    // delete rolls back); while B deletes again, e alone, d comes back to w: A's copy of d is stale
    // again, and in B's way, though B's delete no longer names it.
    const copied = await whileDeletesHeld(target, e, () => stopAfterCopy().run(jobB), [() => handTo(u, d).then(() => undefined), () => handTo(w, d).then(() => undefined)]);

    expect(copied).toMatch(/stopped after the copy/);
    const mover = env.mover({ readerGraceMs: 0 });
    for (let round = 0; round < 2; round++) for (const id of [jobA, jobB]) await mover.run(id).catch(() => undefined);
    expect([(await mover.get(jobA)).state, (await mover.get(jobB)).state]).toEqual(['done', 'done']);
    expect(await placements(target, [d, e])).toEqual([d, e].sort().map((id) => ({ id, owner: w, slot: t })));
    expect(await slotCounts(target, source, s, t)).toEqual([
      { users: 1, documents: 1 },
      { users: 1, documents: 5 },
      { users: 0, documents: 0 },
      { users: 0, documents: 0 },
    ]);
  });

  it('converges without failed copies while documents keep changing hands between the two units', async () => {
    const { source, target, to, s, t, us, ws } = await twoSlots(1600, 1800, 8, 50);
    const planner = env.mover({ readerGraceMs: 0 });
    const jobA = (await planner.plan({ kind: 'slot', slot: s, to, createdBy: 'test' })).id;
    const jobB = (await planner.plan({ kind: 'slot', slot: t, to, createdBy: 'test' })).id;
    // A is copied first and stopped, as a worker stopped by its deadline would leave it.
    await expect(stopAfterCopy().run(jobA)).rejects.toThrow(/stopped after the copy/);
    // A trader hands random documents of either unit to an owner of the other, on the source,
    // until one of the slots has moved (then the fences refuse it).
    let trading = true;
    let trades = 0;
    const owners = [...us.map((u) => ({ u, slot: s })), ...ws.map((u) => ({ u, slot: t }))];
    const trader = (async () => {
      while (trading) {
        const { rows } = await source.query<{ id: string; slot: number; owner_id: string }>('select id::text, slot, owner_id::text from documents where slot = any($1::int[]) order by random() limit 1', [[s, t]]);
        const doc = rows[0];
        if (!doc) break;
        const others = owners.filter((o) => o.slot !== doc.slot);
        const next = others[Math.floor(Math.random() * others.length)] as { u: string; slot: number };
        await env.writer
          .withShardWrite(doc.owner_id, async ({ client }) => {
            const r = await client.query('update documents set owner_id = $1, slot = $2 where id = $3', [next.u, next.slot, doc.id]);
            trades += r.rowCount ?? 0;
          })
          .catch(() => undefined);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    // A's copy goes stale for a while before B's copy starts.
    await until('trades', async () => trades >= 30);
    // The worker: small copy pages, B first, each job run in turn for a short slice of time. The
    // slice doubles every 10 rounds: on a loaded machine 150 ms may never reach the fence.
    const started = Date.now();
    const failures: string[] = [];
    let runs = 0;
    const mover = env.mover({ readerGraceMs: 0, copyBatchRows: 10, batchRows: 20 });
    const states = async (): Promise<string[]> => [(await mover.get(jobA)).state, (await mover.get(jobB)).state];
    for (let round = 0; round < 60 && (await states()).some((x) => x !== 'done'); round++) {
      for (const id of [jobB, jobA]) {
        if ((await mover.get(id)).state === 'done') continue;
        runs += 1;
        await mover.run(id, { until: Date.now() + 150 * 2 ** Math.floor(round / 10) }).catch((e: unknown) => failures.push((e as Error).message));
      }
      if ((await states()).some((x) => x === 'done')) trading = false;
    }
    trading = false;
    await trader;
    const ms = Date.now() - started;
    const copyFailures = failures.filter((f) => /duplicate key|already belong to another unit/.test(f));
    console.log(`concurrent moves with trades: ${trades} trades, ${runs} runs, ${failures.length} failed, ${copyFailures.length} on another move's stale copies, ${ms} ms to converge; states ${(await states()).join(', ')}`);
    for (const f of new Set(failures.map((x) => x.replace(/#\d+/g, '#n').replace(/[0-9a-f-]{36}/g, 'ID').slice(0, 200)))) console.log(`  failure: ${f}`);
    expect(await states()).toEqual(['done', 'done']);
    // Every document once, on the target, with an owner of its slot there.
    expect([await countSlot(source, s), await countSlot(source, t)]).toEqual([
      { users: 0, documents: 0 },
      { users: 0, documents: 0 },
    ]);
    const a = await countSlot(target, s);
    const b = await countSlot(target, t);
    expect({ users: a.users + b.users, documents: a.documents + b.documents }).toEqual({ users: 16, documents: 800 });
    const { rows: bad } = await target.query('select d.id from documents d left join users u on u.id = d.owner_id where (u.id is null or d.slot <> u.slot) and d.slot = any($1::int[])', [[s, t]]);
    expect(bad).toEqual([]);
    expect(copyFailures).toEqual([]);
  }, 120_000);

  it('both finish when each copies in two lanes and a document of each went to the other after both copied their first pages', async () => {
    const map = await env.slotMaps.current();
    const [s1, s2] = map.assignments.flatMap((owner, slot) => (owner === map.assignments[1300] && slot >= 1300 && slot < 1400 ? [slot] : [])) as [number, number];
    const { to, source, target } = await sides(env, s1);
    const [u1] = keysInSlot(s1, 1) as [string];
    const [u2] = keysInSlot(s2, 1) as [string];
    const id = (prefix: string) => `${prefix}-0000-4000-8000-000000000000`;
    // Lane 1 holds ids below 80000000-..., lane 2 the rest; X is in lane 2 of s1, Y in lane 1 of s2.
    const [X, Y] = [id('90000000'), id('20000000')];
    await source.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'u1@example.com', 'u1'), ($3, $4, 'u2@example.com', 'u2')`, [u1, s1, u2, s2]);
    await source.query(
      `insert into documents (id, owner_id, slot, title) select d, $2::uuid, $3::int, 'doc' from unnest($1::uuid[]) d
       union all select d, $5::uuid, $6::int, 'doc' from unnest($4::uuid[]) d`,
      [[id('10000000'), id('70000000'), X, id('f0000000')], u1, s1, [Y, id('78000000'), id('88000000'), id('f8000000')], u2, s2],
    );
    const mover = (deps: Partial<ConstructorParameters<typeof Mover>[0]> = {}) =>
      new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, copyLanes: 2, copyBatchRows: 1, ...deps });
    /** A run whose time is up after the first document page of each lane. */
    const pausing = () => {
      let calls = 0;
      return mover({ wallClock: () => (++calls >= 9 ? 2 : 0) });
    };
    const [m1, m2] = [await mover().plan({ kind: 'slot', slot: s1, to, createdBy: 'test' }), await mover().plan({ kind: 'slot', slot: s2, to, createdBy: 'test' })];
    const [p1, p2] = [await pausing().run(m1.id, { until: 1 }), await pausing().run(m2.id, { until: 1 })];
    expect([p1.state, p1.rowsCopied, p2.state, p2.rowsCopied]).toEqual(['copying', 3, 'copying', 3]);
    await env.writer.withShardWrite(u1, async ({ client }) => {
      await client.query('update documents set owner_id = $2, slot = $3 where id = $1', [X, u2, s2]);
      await client.query('update documents set owner_id = $2, slot = $3 where id = $1', [Y, u1, s1]);
    });

    // The worker runs unfinished jobs one after the other.
    for (let tick = 0; tick < 4; tick++) {
      for (const job of [m1, m2]) if ((await mover().get(job.id)).state !== 'done') await mover().run(job.id).catch(() => undefined);
    }

    expect([(await mover().get(m1.id)).state, (await mover().get(m2.id)).state]).toEqual(['done', 'done']);
    const onTarget = (await target.query<{ id: string; slot: number }>('select id::text, slot from documents where id = any($1::uuid[]) order by id', [[X, Y]])).rows;
    expect(onTarget).toEqual([{ id: Y, slot: s1 }, { id: X, slot: s2 }]);
  }, 120_000);

  it("clears the rows a finished move the other way left on its target for its clean-up, when one of them is now this unit's", async () => {
    const map = await env.slotMaps.current();
    const [a, b] = ['shard_a', 'shard_b'];
    // The last slot of each shard, which no other test of this file uses.
    const s = map.assignments.lastIndexOf(a);
    const t = map.assignments.lastIndexOf(b);
    const [u] = keysInSlot(s, 1) as [string];
    const [w] = keysInSlot(t, 1) as [string];
    await seedUsers(env.shards.get(a) as pg.Pool, s, [u], 1);
    await seedUsers(env.shards.get(b) as pg.Pool, t, [w], 1);
    const d = (await (env.shards.get(b) as pg.Pool).query<{ id: string }>('select id::text from documents where owner_id = $1', [w])).rows[0]?.id as string;
    // s (on a) starts moving to b and is copied; t moves from b to a, and its mover dies before
    // its clean-up: t's rows stay on b, 'moved' there.
    const stoppedAfterCopy = env.mover({ readerGraceMs: 0, hook: (point) => (point === 'catching_up' ? Promise.reject(new Error('test: stopped after the copy')) : undefined) });
    const jobS = await stoppedAfterCopy.plan({ kind: 'slot', slot: s, to: b, createdBy: 'test' });
    await expect(stoppedAfterCopy.run(jobS.id)).rejects.toThrow(/stopped after the copy/);
    const killed = moverKilledAt(env, 'cleaning_up');
    const jobT = await killed.plan({ kind: 'slot', slot: t, to: a, createdBy: 'test' });
    await expect(killed.run(jobT.id)).rejects.toThrow(/killed at cleaning_up/);
    // w and u both live on a now: d goes from w to u in one statement.
    await env.writer.withShardWrite(w, ({ client }) => client.query('update documents set owner_id = $1, slot = $2 where id = $3', [u, s, d]));

    const done = await env.mover({ readerGraceMs: 0 }).run(jobS.id);

    expect(done.state).toBe('done');
    expect((await env.mover({ readerGraceMs: 0 }).run(jobT.id)).state).toBe('done');
    const rows = await Promise.all([a, b].map(async (x) => (await (env.shards.get(x) as pg.Pool).query<{ owner: string; slot: number }>('select owner_id::text as owner, slot from documents where id = $1', [d])).rows));
    expect(rows).toEqual([[], [{ owner: u, slot: s }]]);
  });
});

describe("a move beside another move's rollback that has stopped part-way", () => {
  it("clears the rolled-back move's stale copy in its way while that rollback is paused, and both end right", async () => {
    const map = await env.slotMaps.current();
    const from = map.assignments[1850] as string;
    const [s, t] = map.assignments.flatMap((owner, slot) => (owner === from && slot >= 1850 && slot < 2000 ? [slot] : [])).slice(0, 2) as [number, number];
    const { to, source, target } = await sides(env, s);
    const [w] = keysInSlot(t, 1) as [string];
    await seedUsers(source, s, keysInSlot(s, 4), 10);
    await seedUsers(source, t, [w], 2);
    const stopAfterCopy = env.mover({ readerGraceMs: 0, hook: (point) => (point === 'catching_up' ? Promise.reject(new Error('test: stopped after the copy')) : undefined) });
    const jobA = (await stopAfterCopy.plan({ kind: 'slot', slot: s, to, createdBy: 'test' })).id;
    const jobB = (await stopAfterCopy.plan({ kind: 'slot', slot: t, to, createdBy: 'test' })).id;
    await expect(stopAfterCopy.run(jobA)).rejects.toThrow(/stopped after the copy/);
    await expect(stopAfterCopy.run(jobB)).rejects.toThrow(/stopped after the copy/);
    // s's last document (in id order: the rollback deletes it last) goes to w, of slot t: A's copy of it is stale.
    const x = (await source.query<{ id: string }>('select id::text from documents where slot = $1 order by id desc limit 1', [s])).rows[0]?.id as string;
    await env.writer.withShardWrite(w, ({ client, slot }) => client.query('update documents set owner_id = $1, slot = $2 where id = $3', [w, slot, x]));
    // A is cancelled, and its rollback stops after its first batch (the run's time is up: a
    // Lambda near its timeout): its copy of x is still on the target, until A's next run.
    await env.mover().requestCancel(jobA);
    const until = Date.now() + 60_000;
    let looks = 0;
    const paused = await env.mover({ batchRows: 10, wallClock: () => (++looks >= 2 ? until : until - 1) }).run(jobA, { until });
    expect(paused.state).not.toBe('cancelled');
    expect((await target.query<{ slot: number }>('select slot from documents where id = $1', [x])).rows).toEqual([{ slot: s }]);

    // B's catch-up meets that copy: it is a stale one of a rollback under way, not a row the target owns.
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run(jobB)).state).toBe('done');
    expect((await mover.run(jobA)).state).toBe('cancelled');
    expect((await target.query<{ owner: string; slot: number }>('select owner_id::text as owner, slot from documents where id = $1', [x])).rows).toEqual([{ owner: w, slot: t }]);
    expect((await source.query('select 1 from documents where id = $1', [x])).rows).toEqual([]);
    expect([await countSlot(target, s), await countSlot(source, s), await countSlot(target, t), await countSlot(source, t)]).toEqual([
      { users: 0, documents: 0 },
      { users: 4, documents: 39 },
      { users: 1, documents: 3 },
      { users: 0, documents: 0 },
    ]);
  });
});
