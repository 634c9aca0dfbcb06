/**
 * A move's rollback deletes the unit's rows on its target, and turns the target's fence row
 * `moved`, only where that row is this job's `incoming` row: from its insert (before the copy)
 * the target refuses every other writer of the unit, so its rows of the unit are this move's copy.
 * A move cancelled before its source was prepared never inserted it: the target copied nothing of
 * the move, and what it holds of the unit is someone else's. Here, what a writer wrote there,
 * acknowledged, once an operator routed the unit there by hand (a map or a pin published between
 * the rollback's read of the owner and its commit, which ends as one published just after it:
 * docs/sharding-spec.md section 9). Before, the rollback deleted it.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import type { MoverDirectory, MoverSlotMaps } from '../../../functions/adapters/postgres/move-port.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countSlot, documentsOf, keysInSlot, publishPastOwnerGuard, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

async function fenceRow(pool: pg.Pool, kind: string, unit: string): Promise<string> {
  const { rows } = await pool.query<{ state: string; moved_to: string | null; job_id: string | null }>(
    'select state, moved_to, job_id::text from write_fences where kind = $1 and unit_id = $2',
    [kind, unit],
  );
  const r = rows[0];
  return r ? `${r.state}${r.moved_to ? ` to ${r.moved_to}` : ''}${r.job_id ? ` for #${r.job_id}` : ''}` : 'none';
}

/** A writer's sign-up (user and first document) of `user` on `pool`, a raw SQL writer: 'ok' or its SQLSTATE. */
async function signUp(pool: pg.Pool, user: string, slot: number): Promise<string> {
  return pool
    .query(
      `with u as (insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'writer') on conflict (id) do nothing)
       insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1::uuid, $2, 'written where routed', '{"rev": 0}')`,
      [user, slot],
    )
    .then(
      () => 'ok',
      (err: { code?: string }) => err.code ?? 'error',
    );
}

describe('a slot move cancelled before its source was prepared, the slot routed to its target by hand meanwhile', () => {
  it("keeps what was written on the target, acknowledged, and leaves the target's fence as it was", async () => {
    const slot = 1611;
    const { to, source, target } = await sides(env, slot);
    const [resident, newcomer] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [resident], 3);
    // The rollback's read of the map (in its decision's transaction, a client given): an operator
    // publishes a map giving the slot to the target from another session, and a writer routed by
    // it signs a user up there, before the read returns to the rollback.
    let armed = false;
    let wrote: string | null = null;
    const slotMaps: MoverSlotMaps = {
      ownerOf: (...args) => env.slotMaps.ownerOf(...args),
      publish: (...args) => env.slotMaps.publish(...args),
      async current(...args) {
        const read = await env.slotMaps.current(...args);
        if (armed && args[0] !== undefined && wrote === null) {
          // Past the catalog's guard (CAF08, sharding migration 013: refused while the move is
          // unfinished), as a superuser may: this is the rollback's own defence against such a map.
          await publishPastOwnerGuard(env.catalog, env.slotMaps, moveSlots(await env.slotMaps.current(), [slot], to), 'ops@example.com', 'by hand');
          wrote = await signUp(env.shards.get((await env.slotMaps.ownerOf(slot))?.shardId as string) as pg.Pool, newcomer, slot);
        }
        return read;
      },
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory: env.directory, readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await mover.requestCancel(planned.id);
    armed = true;

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );

    // Before: the rollback deleted the newcomer's user and document on the target, acknowledged
    // where the catalog routes the slot (target: users 0, documents 0).
    expect({ ended, wrote, routed: (await env.slotMaps.ownerOf(slot))?.shardId }).toEqual({ ended: 'ended: cancelled', wrote: 'ok', routed: to });
    expect({
      target: await countSlot(target, slot),
      newcomerDocs: (await documentsOf(target, [newcomer])).size,
      source: await countSlot(source, slot),
      targetFence: await fenceRow(target, 'slot', String(slot)),
      sourceFence: await fenceRow(source, 'slot', String(slot)),
    }).toEqual({
      target: { users: 1, documents: 1 },
      newcomerDocs: 1,
      source: { users: 1, documents: 3 },
      targetFence: 'none',
      sourceFence: 'none',
    });
    // The target still takes the slot's writes, as the catalog routes them there.
    expect(await signUp(target, newcomer, slot)).toBe('ok');
  }, 60_000);
});

describe('a directory move cancelled before its source was prepared, the key pinned to its target by hand meanwhile', () => {
  it('keeps the documents written on the target, acknowledged', async () => {
    const slot = 1612;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 2);
    const operator = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    await operator.set(key, from, 'ops@example.com');
    // The key's user row on the target, as an operator who routes a key by hand copies it there.
    await target.query(`insert into users (id, slot, email, display_name) values ($1::uuid, $2, 'copied@example.com', 'copied')`, [key, slot]);
    // The rollback's read of the key's entry (in its decision's transaction): the operator pins the
    // key to the target from another session, and a writer routed by the pin writes a document there.
    let armed = false;
    let wrote: string | null = null;
    const directory: MoverDirectory = {
      set: (...args) => env.directory.set(...args),
      all: (...args) => env.directory.all(...args),
      keysInSlot: (...args) => env.directory.keysInSlot(...args),
      invalidate: (...args) => env.directory.invalidate(...args),
      async entry(...args) {
        const read = await env.directory.entry(...args);
        if (armed && args[0] === key && args[1] !== undefined && wrote === null) {
          await operator.set(key, to, 'ops@example.com');
          wrote = await signUp(env.shards.get((await operator.entry(key))?.shardId as string) as pg.Pool, key, slot);
        }
        return read;
      },
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory, readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    await mover.requestCancel(planned.id);
    armed = true;

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );

    // Before: the target's user and document of the key were deleted (target: 0 documents).
    expect({ ended, wrote, routed: (await operator.entry(key))?.shardId }).toEqual({ ended: 'ended: cancelled', wrote: 'ok', routed: to });
    expect({
      targetDocs: (await documentsOf(target, [key])).size,
      sourceDocs: (await documentsOf(source, [key])).size,
      targetFence: await fenceRow(target, 'directory', key),
    }).toEqual({ targetDocs: 1, sourceDocs: 2, targetFence: 'none' });
  }, 60_000);
});

describe("a rollback whose first run turned the target's row moved and stopped before the job's last update", () => {
  it('is finished by the next run: cancelled, the target empty of the unit and still fenced off', async () => {
    const slot = 1613;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 4), 2);
    // A catalog whose update ending the rollback (the job's state set to rollback_to) fails once,
    // as a run that stopped right after turning the target's row `moved`.
    let failed = false;
    const catalog = new Proxy(env.catalog, {
      get(pool, prop, receiver): unknown {
        if (prop !== 'connect') return Reflect.get(pool, prop, receiver) as unknown;
        return async (): Promise<pg.PoolClient> => {
          const client = await pool.connect();
          return new Proxy(client, {
            get(c, p, r): unknown {
              if (p !== 'query') return Reflect.get(c, p, r) as unknown;
              return (...args: unknown[]): unknown => {
                const first = args[0];
                const text = typeof first === 'string' ? first : String((first as { text?: unknown } | null)?.text ?? '');
                if (!failed && text.includes('state = rollback_to')) {
                  failed = true;
                  return Promise.reject(new Error('the run stopped here'));
                }
                return (c.query as (...a: unknown[]) => unknown).apply(c, args);
              };
            },
          });
        };
      },
    });
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const first = new Mover({
      catalog,
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory: env.directory,
      readerGraceMs: 0,
      async hook(point, job) {
        if (point === 'catching_up' && job) await env.mover().requestCancel(job.id);
      },
    });
    const firstEnded = await first.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    const between = { failed, state: (await env.mover().get(planned.id)).state, targetFence: await fenceRow(target, 'slot', String(slot)), onTarget: await countSlot(target, slot) };

    const second = await env.mover().run(planned.id);

    expect({ firstEnded: firstEnded.startsWith('ended: cancelled'), between }).toEqual({
      firstEnded: false,
      between: { failed: true, state: 'catching_up', targetFence: `moved to ${from} for #${planned.id}`, onTarget: { users: 0, documents: 0 } },
    });
    expect({
      state: second.state,
      onTarget: await countSlot(target, slot),
      onSource: await countSlot(source, slot),
      targetFence: await fenceRow(target, 'slot', String(slot)),
      sourceFence: await fenceRow(source, 'slot', String(slot)),
    }).toEqual({
      state: 'cancelled',
      onTarget: { users: 0, documents: 0 },
      onSource: { users: 4, documents: 8 },
      targetFence: `moved to ${from} for #${planned.id}`,
      sourceFence: 'open',
    });
  }, 60_000);
});
