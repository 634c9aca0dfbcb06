import { setTimeout as delay } from 'node:timers/promises';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoveConflictError, MoveNotCancellableError, MoveRequestError, Mover, type MoverSlotMaps } from '../../../functions/adapters/postgres/mover.js';
import { countSlot, documentsOf, keysInSlot, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';
import { startWorkload } from './fixtures/workload.js';

/** Every document of `owners` on every shard: id -> shards holding it. */
async function placements(env: MoveEnv, owners: readonly string[]): Promise<Map<string, { shard: string; rev: number }[]>> {
  const out = new Map<string, { shard: string; rev: number }[]>();
  for (const [shard, pool] of env.shards) {
    for (const [id, rev] of await documentsOf(pool, owners)) out.set(id, [...(out.get(id) ?? []), { shard, rev }]);
  }
  return out;
}

describe('moves that lose nothing', () => {
  let env: MoveEnv;
  beforeAll(async () => {
    env = await startMoveEnv();
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('moves a slot of 50,000 rows under concurrent writers; every acknowledged write ends up exactly once on the new owner', async () => {
    const slot = 100;
    const { from, to, source, target } = await sides(env, slot);
    const owners = keysInSlot(slot, 500);
    const newUsers = keysInSlot(slot, 40);
    await seedUsers(source, slot, owners, 99);
    const seeded = await documentsOf(source, owners);
    const { rows: ownerRows } = await source.query<{ id: string; owner: string }>(
      'select id::text, owner_id::text as owner from documents where slot = $1',
      [slot],
    );
    const load = startWorkload(env.writer, {
      owners,
      documents: seeded,
      ownerOf: new Map(ownerRows.map((r) => [r.id, r.owner])),
      newUsers,
      writers: 4,
    });
    const mover = env.mover({ readerGraceMs: 200 });

    const seededRows = await countSlot(source, slot);
    const [moved] = await Promise.allSettled([mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }).then((planned) => mover.run(planned.id))]);
    await delay(300);
    const result = await load.stop();
    if (moved.status === 'rejected') throw moved.reason;
    const job = moved.value;

    expect(job.state).toBe('done');
    expect(seededRows.users + seededRows.documents).toBe(50_000);
    expect(result.errors).toEqual([]);
    expect(result.anomalies).toEqual([]);
    expect(result.byShard.get(from)).toBeGreaterThan(0);
    expect(result.byShard.get(to)).toBeGreaterThan(0);
    expect(await env.ownerOf(slot)).toBe(to);
    const allOwners = [...owners, ...result.createdUsers];
    const found = await placements(env, allOwners);
    const misplaced = [...found].filter(([, where]) => where.length !== 1 || where[0]?.shard !== to);
    expect(misplaced).toEqual([]);
    const lost = [...result.live].filter(([id, rev]) => found.get(id)?.[0]?.rev !== rev);
    expect(lost).toEqual([]);
    const resurrected = [...result.deleted].filter((id) => found.has(id));
    expect(resurrected).toEqual([]);
    const unexpected = [...found.keys()].filter((id) => !result.live.has(id) && !result.uncertain.has(id));
    expect(unexpected).toEqual([]);
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    expect((await countSlot(target, slot)).users).toBe(owners.length + result.createdUsers.size);
    // Seeding and moving 50,000 rows under 4 writers takes 10-25 s on a shared 2-core machine.
  }, 120_000);

  it('records counts and checksums of both sides, the map versions and how long writes were fenced', async () => {
    const slot = 101;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 20), 5);
    const before = (await env.slotMaps.current()).version;
    const mover = env.mover({ readerGraceMs: 0 });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test', reason: 'balance' })).id);

    expect(job.sourceSummary).toEqual(job.targetSummary);
    expect(job.sourceSummary?.users?.rows).toBe(20);
    expect(job.sourceSummary?.documents?.rows).toBe(100);
    expect(job.mapVersionBefore).toBe(before);
    expect(job.mapVersionAfter).toBe(before + 1);
    expect(job.fenceMs).toBeGreaterThanOrEqual(0);
    expect(job.rowsDeleted).toBe(120);
    expect(await unitFenceState(source, 'slot', String(slot))).toBe('moved');
    expect(await unitFenceState(target, 'slot', String(slot))).toBe('open');
  });

  it('reads the 4096-slot map once per run of a slot move: the flip checks the owner and builds the next version from one read', async () => {
    const slot = 113;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    let reads = 0;
    const slotMaps: MoverSlotMaps = {
      current: (client) => ((reads += 1), env.slotMaps.current(client)),
      publish: (next, by, reason, client) => env.slotMaps.publish(next, by, reason, client),
      ownerOf: (slot, client) => env.slotMaps.ownerOf(slot, client),
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory: env.directory, readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    reads = 0;

    const job = await mover.run(planned.id);

    expect(job.state).toBe('done');
    expect(reads).toBe(1);
  });

  it('moves a slot back to the shard it left, and writes follow it both ways', async () => {
    const slot = 112;
    const home = await env.ownerOf(slot);
    const away = home === 'shard_a' ? 'shard_b' : 'shard_a';
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(home) as pg.Pool, slot, [user], 4);
    const mover = env.mover({ readerGraceMs: 0 });
    const insert = (title: string) =>
      env.writer.withShardWrite(user, async ({ client, slot: s }) => {
        await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, $3)`, [user, s, title]);
      });

    await mover.run((await mover.plan({ kind: 'slot', slot, to: away, createdBy: 'test' })).id);
    const whileAway = await insert('away');
    const back = await mover.run((await mover.plan({ kind: 'slot', slot, to: home, createdBy: 'test' })).id);
    const afterReturn = await insert('home again');

    expect(back.state).toBe('done');
    expect(whileAway.shardId).toBe(away);
    expect(afterReturn.shardId).toBe(home);
    expect((await documentsOf(env.shards.get(home) as pg.Pool, [user])).size).toBe(6);
    expect(await countSlot(env.shards.get(away) as pg.Pool, slot)).toEqual({ users: 0, documents: 0 });
  });

  it('moves one directory key and leaves the rest of its slot where it was', async () => {
    const slot = 102;
    const { to, source, target } = await sides(env, slot);
    const [tenant, neighbour] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [tenant, neighbour], 50);
    const mover = env.mover({ readerGraceMs: 0 });

    const job = await mover.run((await mover.plan({ kind: 'directory', key: tenant, to, createdBy: 'test' })).id);
    const write = await env.writer.withShardWrite(tenant, async ({ client, slot: s }) => {
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'after the move')`, [tenant, s]);
    });

    expect(job.state).toBe('done');
    expect((await env.directory.entry(tenant))?.shardId).toBe(to);
    expect(write.shardId).toBe(to);
    expect((await documentsOf(target, [tenant])).size).toBe(51);
    expect((await documentsOf(source, [tenant])).size).toBe(0);
    expect((await documentsOf(source, [neighbour])).size).toBe(50);
  });

  it('leaves directory-pinned keys where the directory puts them when their slot moves', async () => {
    const slot = 103;
    const { from, to, source, target } = await sides(env, slot);
    const [pinned, plain] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [pinned], 10);
    await seedUsers(source, slot, [plain], 10);
    await env.directory.set(pinned, from, 'test');
    const mover = env.mover({ readerGraceMs: 0 });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect(job.state).toBe('done');
    expect(job.excludedKeys).toEqual([pinned]);
    expect((await documentsOf(source, [pinned])).size).toBe(10);
    expect((await documentsOf(target, [plain])).size).toBe(10);
    expect((await env.writer.withShardWrite(pinned, async () => undefined)).shardId).toBe(from);
  });

  it('cancels a running move: the target copy is removed and writes stay on the source', async () => {
    const slot = 104;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 30);
    const versionBefore = (await env.slotMaps.current()).version;
    let requested: { cancelRequested: boolean } | undefined;
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point, job) {
        if (point === 'catching_up') requested = await env.mover().cancel(job.id);
      },
    });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    const write = await env.writer.withShardWrite(user, async () => undefined);

    expect(requested?.cancelRequested).toBe(true);
    expect(job.state).toBe('cancelled');
    expect((await env.slotMaps.current()).version).toBe(versionBefore);
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 30 });
    expect(write.shardId).toBe(from);
  });

  it('refuses to cancel a move that has published its new owner, and finishes it', async () => {
    const slot = 105;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 1), 3);
    let refusal: unknown;
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point, job) {
        if (point === 'published') refusal = await env.mover().cancel(job.id).catch((e: unknown) => e);
      },
    });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect(refusal).toBeInstanceOf(MoveNotCancellableError);
    expect(job.state).toBe('done');
    expect(await env.ownerOf(slot)).toBe(to);
  });

  // Before the fence ('cutover'), the verification prepared then finds the difference; after it
  // ('fenced'), the target's own change capture names the tampered row's bucket for a rescan.
  it.each([
    { point: 'cutover', slot: 106 },
    { point: 'fenced', slot: 108 },
  ] as const)('fails a move whose copy does not verify (target changed at $point), rolls it back and reopens the source', async ({ point, slot }) => {
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 10);
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(hookPoint) {
        // Corrupt the target copy behind the mover's back.
        // (As a mover would write: the target refuses other writers until the flip.)
        if (hookPoint === point) {
          await target.query(
            `begin; set local ca_dms.move_writer = 'on'; update documents set title = 'tampered' where id in (select id from documents where slot = ${slot} limit 1); commit`,
          );
        }
      },
    });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/documents: source 10 rows, target 10 rows \(checksums differ\)/);
    expect(await env.ownerOf(slot)).toBe(from);
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await unitFenceState(source, 'slot', String(slot))).toBe('open');
    expect((await env.writer.withShardWrite(user, async () => undefined)).shardId).toBe(from);
  });

  it('allows one unfinished move per slot', async () => {
    const slot = 107;
    const { to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const mover = env.mover();
    const first = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

    await expect(mover.plan({ kind: 'directory', key, to, createdBy: 'test' })).rejects.toThrow(MoveConflictError);
    await expect(mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).rejects.toThrow(new RegExp(`job #${first.id}`));
    await mover.cancel(first.id);
  });

  it('returns a read-your-writes token past the WAL position the shard had before the write', async () => {
    const [user] = keysInSlot(110, 1) as [string];
    const owner = env.shards.get(await env.ownerOf(110)) as pg.Pool;
    const before = (await owner.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn')).rows[0]?.lsn;

    const write = await env.writer.withShardWrite(user, async ({ client, slot }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'ryw@example.com', 'ryw')`, [user, slot]);
    });

    const { rows } = await owner.query<{ after: boolean }>('select $1::pg_lsn > $2::pg_lsn as after', [write.token, before]);
    expect(rows[0]?.after).toBe(true);
  });

  it('commits nothing when the write function throws, and passes its error on', async () => {
    const [user] = keysInSlot(111, 1) as [string];
    const owner = env.shards.get(await env.ownerOf(111)) as pg.Pool;

    const failed = env.writer.withShardWrite(user, async ({ client, slot }) => {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'x@example.com', 'x')`, [user, slot]);
      throw new Error('validation failed after the insert');
    });

    await expect(failed).rejects.toThrow('validation failed after the insert');
    expect(await countSlot(owner, 111)).toEqual({ users: 0, documents: 0 });
  });

  it('rejects invalid move requests, naming the problem, and records nothing', async () => {
    const mover = env.mover();
    const { rows } = await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs');

    await expect(mover.plan({ kind: 'slot', slot: 5000, to: 'shard_b', createdBy: 'test' })).rejects.toThrow(/slot 5000 is outside 0..4095/);
    await expect(mover.plan({ kind: 'slot', slot: 1, to: 'shard_x', createdBy: 'test' })).rejects.toThrow(/target shard shard_x is not one of shard_a, shard_b/);
    await expect(mover.plan({ kind: 'directory', key: 'not-a-uuid', to: 'shard_b', createdBy: 'test' })).rejects.toThrow(MoveRequestError);
    // Nearly a uuid, but PostgreSQL refuses it too (one brace), so it is no spelling of one.
    await expect(mover.plan({ kind: 'directory', key: '{a0eebc999c0b4ef8bb6d6bb9bd380a11', to: 'shard_b', createdBy: 'test' })).rejects.toThrow(/key: directory keys are user ids/);
    await expect(mover.plan({ kind: 'slot', slot: 1, to: await env.ownerOf(1), createdBy: 'test' })).rejects.toThrow(/already on/);
    // The field at fault, apart from the message, so that a caller can name it in its own terms (the API's body.unit).
    const issuesOf = (e: unknown) => (e as MoveRequestError).issues;
    expect(issuesOf(await mover.plan({ kind: 'slot', slot: 4096, to: 'shard_b', createdBy: 'test' }).catch((e: unknown) => e))).toEqual([{ field: 'slot', reason: 'must be a slot number from 0 to 4095' }]);
    expect(issuesOf(await mover.plan({ kind: 'directory', key: 'tenant-42', to: 'shard_b', createdBy: 'test' }).catch((e: unknown) => e))).toEqual([{ field: 'key', reason: expect.stringMatching(/^directory keys are user ids/) }]);
    const after = await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs');
    expect(after.rows[0]?.n).toBe(rows[0]?.n);
  });
});
