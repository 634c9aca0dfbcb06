import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countSlot, documentsOf, keysInSlot, otherProcess, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * A move that is cancelled or fails leaves its target marked as not owning the unit. The target
 * may be a shard the unit left earlier, whose row said 'moved' until the move made it
 * 'incoming': processes still holding the map of that time write and read there. A missing row
 * would let them (no row means the shard owns the unit), and a later move back would then delete
 * what they were told was written.
 */
let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

async function fenceRow(pool: pg.Pool, kind: string, unit: string): Promise<{ state: string; moved_to: string | null } | null> {
  const { rows } = await pool.query<{ state: string; moved_to: string | null }>('select state, moved_to from write_fences where kind = $1 and unit_id = $2', [kind, unit]);
  return rows[0] ?? null;
}

/** A raw SQL writer (another language's, no withShardWrite) signing a user up: its SQLSTATE, or 'ok'. */
async function rawSignUp(pool: pg.Pool, user: string, slot: number): Promise<string> {
  return pool.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'raw@example.com', 'raw')`, [user, slot]).then(
    () => 'ok',
    (err: { code?: string }) => err.code ?? 'error',
  );
}

describe('a cancelled move back to a shard the unit left', () => {
  it('keeps the old home marked moved after a cancelled move back, so a writer holding the old map is sent to the owner', async () => {
    const slot = 1201;
    const home = await env.ownerOf(slot);
    const away = home === 'shard_a' ? 'shard_b' : 'shard_a';
    const homePool = env.shards.get(home) as pg.Pool;
    const awayPool = env.shards.get(away) as pg.Pool;
    const [user, newcomer, rawcomer] = keysInSlot(slot, 3) as [string, string, string];
    await seedUsers(homePool, slot, [user], 5);
    // A process that routed this slot before any move (map version 1: slot -> home).
    const stale = await otherProcess(env);
    const mover = env.mover({ readerGraceMs: 0 });

    // home -> away, done: home's fence row says moved.
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to: away, createdBy: 'test' })).id)).state).toBe('done');
    expect((await fenceRow(homePool, 'slot', String(slot)))?.state).toBe('moved');
    // away -> home, cancelled during the catch-up.
    const back = env.mover({
      readerGraceMs: 0,
      async hook(point, job) {
        if (point === 'catching_up') await env.mover().cancel(job.id);
      },
    });
    const cancelled = await back.run((await back.plan({ kind: 'slot', slot, to: home, createdBy: 'test' })).id);
    expect(cancelled.state).toBe('cancelled');
    expect(await env.ownerOf(slot)).toBe(away);

    // The old home still does not own the slot: its fence row must still send writers away.
    const rowAfter = await fenceRow(homePool, 'slot', String(slot));
    const raw = await rawSignUp(homePool, rawcomer, slot);
    // A new user signs up through the stale process: user row and first document, acknowledged.
    const write = await stale.writer.withShardWrite(newcomer, async ({ client, slot: s }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'new@example.com', 'new')`, [newcomer, s]);
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'stale writer')`, [newcomer, s]);
    });
    const read = await stale.reader.withShardRead(user, async ({ client }) => (await client.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n);
    const newcomerOnOwner = (await documentsOf(awayPool, [newcomer])).size;

    expect({
      fenceOnOldHome: rowAfter?.state ?? 'none',
      rawWriteOnOldHome: raw,
      staleWriterLandedOn: write.shardId,
      staleReaderServedBy: read.shardId,
      staleReaderSaw: read.value,
      newcomerDocsOnOwner: newcomerOnOwner,
      slotRowsOnOldHome: await countSlot(homePool, slot),
    }).toEqual({
      fenceOnOldHome: 'moved',
      rawWriteOnOldHome: 'CAF02',
      staleWriterLandedOn: away,
      staleReaderServedBy: away,
      staleReaderSaw: 5,
      newcomerDocsOnOwner: 1,
      slotRowsOnOldHome: { users: 0, documents: 0 },
    });
  });

  it('keeps the old home marked moved after a cancelled directory-key move back, so a writer with a cached route is sent to the owner', async () => {
    const slot = 1202;
    const home = await env.ownerOf(slot);
    const away = home === 'shard_a' ? 'shard_b' : 'shard_a';
    const homePool = env.shards.get(home) as pg.Pool;
    const [tenant] = keysInSlot(slot, 1) as [string];
    await seedUsers(homePool, slot, [tenant], 3);
    // A process that looked the key up before any move (not pinned: hash routing, home).
    const stale = await otherProcess(env);
    expect((await stale.writer.withShardWrite(tenant, async () => undefined)).shardId).toBe(home);
    const mover = env.mover({ readerGraceMs: 0 });

    expect((await mover.run((await mover.plan({ kind: 'directory', key: tenant, to: away, createdBy: 'test' })).id)).state).toBe('done');
    const back = env.mover({
      readerGraceMs: 0,
      async hook(point, job) {
        if (point === 'catching_up') await env.mover().cancel(job.id);
      },
    });
    expect((await back.run((await back.plan({ kind: 'directory', key: tenant, to: home, createdBy: 'test' })).id)).state).toBe('cancelled');
    expect((await env.directory.entry(tenant))?.shardId).toBe(away);

    const rowAfter = await fenceRow(homePool, 'directory', tenant);
    const write = await stale.writer.withShardWrite(tenant, async ({ client, slot: s }) => {
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'stale writer')`, [tenant, s]);
    }).then((w) => w.shardId, (err: Error) => `error: ${err.message}`);

    expect({ fenceOnOldHome: rowAfter?.state ?? 'none', staleWriterLandedOn: write }).toEqual({ fenceOnOldHome: 'moved', staleWriterLandedOn: away });
  });

  it('loses nothing a writer holding the old map acknowledged after a cancelled move back, once the unit does move back', async () => {
    const slot = 1203;
    const home = await env.ownerOf(slot);
    const away = home === 'shard_a' ? 'shard_b' : 'shard_a';
    const [user, newcomer] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(env.shards.get(home) as pg.Pool, slot, [user], 2);
    const stale = await otherProcess(env);
    const mover = env.mover({ readerGraceMs: 0 });
    await mover.run((await mover.plan({ kind: 'slot', slot, to: away, createdBy: 'test' })).id);
    const cancelling = env.mover({
      readerGraceMs: 0,
      async hook(point, job) {
        if (point === 'catching_up') await env.mover().cancel(job.id);
      },
    });
    await cancelling.run((await cancelling.plan({ kind: 'slot', slot, to: home, createdBy: 'test' })).id);

    // Acknowledged: a user signs up with a first document.
    const ack = await stale.writer.withShardWrite(newcomer, async ({ client, slot: s }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'new@example.com', 'new')`, [newcomer, s]);
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'acknowledged')`, [newcomer, s]);
      return 'committed';
    });
    // Later the slot is moved home for real.
    const done = await mover.run((await mover.plan({ kind: 'slot', slot, to: home, createdBy: 'test' })).id);

    let copies = 0;
    for (const pool of env.shards.values()) copies += (await documentsOf(pool, [newcomer])).size;
    expect(ack.value).toBe('committed');
    expect(done.state).toBe('done');
    expect({ acknowledgedOn: ack.shardId, copiesOfTheAcknowledgedDocument: copies }).toEqual({ acknowledgedOn: away, copiesOfTheAcknowledgedDocument: 1 });
  });
});


describe('a cancelled move whose source is unreachable', () => {
  it("fails its run naming the shard that could not be reached (its role in the move included), changing nothing, and rolls back once it is back", async () => {
    const slot = 1204;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    const [source, target] = [env.shards.get(from), env.shards.get(to)] as [pg.Pool, pg.Pool];
    await seedUsers(source, slot, keysInSlot(slot, 2), 2);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await env.mover().requestCancel(planned.id);
    // A port nothing listens on: the source's primary is down.
    const down = new pg.Pool({ connectionString: 'postgres://mover@127.0.0.1:1/shard', max: 1 });
    down.on('error', () => undefined);
    try {
      const outcome = await env
        .mover({ shards: new Map([[from, down], [to, target]]) })
        .run(planned.id)
        .then(
          (j) => `ended: ${j.state}`,
          (e: Error) => `threw: ${e.message}`,
        );
      const { rows } = await env.catalog.query<{ state: string; error: string | null }>('select state, error from catalog.move_jobs where id = $1', [planned.id]);

      // Before: "connect ECONNREFUSED 127.0.0.1:1", on the job too: which database, and what for, unsaid.
      const names = new RegExp(`${from}, the move's source, could not be reached`);
      expect({ outcome, state: rows[0]?.state, error: rows[0]?.error }).toEqual({
        outcome: expect.stringMatching(names) as unknown as string,
        state: 'planned',
        error: expect.stringMatching(names) as unknown as string,
      });
    } finally {
      await down.end();
    }
    expect((await env.mover().run(planned.id)).state).toBe('cancelled');
    expect({ onSource: await countSlot(source, slot), onTarget: await countSlot(target, slot) }).toEqual({ onSource: { users: 2, documents: 4 }, onTarget: { users: 0, documents: 0 } });
  }, 60_000);
});
