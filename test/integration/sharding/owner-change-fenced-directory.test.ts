/**
 * Issue #15, the directory's side of what the count left open: a pin changed by hand
 * (`DirectoryStore.set`, `repinByHand`) counted the key's rows on the shard it routed to, but
 * nothing stopped a writer from adding one there (a) between the count and the catalog's commit (a
 * writer that routed with the old pin or by hash: its insert uncommitted while counted), or (b)
 * after the commit (a router whose directory cache, `directory.cache_ttl_seconds`, still names the
 * old owner). Both were acknowledged on a shard the catalog no longer routes the key to: out of
 * every reader's sight. The store now fences the key's `directory` row on the old owner first
 * (waiting for the writers older than its fence), counts, writes the pin, and turns the row `moved`
 * to the new owner (`CAF02`: the writer re-routes), as {@link OwnerChangeFences} does for a slot.
 * The row it leaves decides for the key on that shard over its slot's rows, so such a key stays
 * pinned: an unpin is refused while any shard holds a `directory` row of the key, and an unpin
 * that would change the key's route (it cannot be fenced without leaving such a row) is refused,
 * naming the pin or the move that does the same soundly.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryRowsLeftError, DirectoryStore, DirectoryVersionConflictError } from '../../../functions/adapters/postgres/directory-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, keysInSlot, lockWaitOn, refusalOf, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let directory: DirectoryStore;
beforeAll(async () => {
  env = await startMoveEnv();
  directory = new DirectoryStore(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: env.shards });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** Resolves with `'settled'` once `p` settles, or `'fenced'` once `key`'s directory fence row on `pool` says `fenced`, whichever comes first. */
async function fencedOrSettled(p: Promise<unknown>, pool: pg.Pool, key: string): Promise<'fenced' | 'settled'> {
  let settled = false;
  void p.finally(() => {
    settled = true;
  });
  for (;;) {
    if (settled) return 'settled';
    if ((await unitFenceState(pool, 'directory', key)) === 'fenced') return 'fenced';
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A write of `key` straight to `pool` (its user where the shard has none, and a document), as a
 * router with a stale route makes it: `'acknowledged'` or `'refused <SQLSTATE>'`.
 */
async function keyWriteOutcome(pool: pg.Pool, slot: number, key: string): Promise<string> {
  const { rows } = await pool.query('select 1 from users where id = $1::uuid', [key]);
  const write =
    rows.length === 0
      ? seedUsers(pool, slot, [key], 1)
      : pool.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'late', '{}'::jsonb)`, [key, slot]);
  return write.then(
    () => 'acknowledged',
    (e: { code?: string }) => `refused ${e.code ?? '?'}`,
  );
}

async function keyRows(pool: pg.Pool, key: string): Promise<number> {
  const { rows } = await pool.query<{ n: number }>('select count(*)::int as n from users where id = $1::uuid', [key]);
  return rows[0]?.n ?? 0;
}

/** `begin`s a writer on `pool` that inserts `key`'s user, uncommitted. */
async function writerInFlight(pool: pg.Pool, slot: number, key: string): Promise<pg.PoolClient> {
  const writer = await pool.connect();
  await writer.query('begin isolation level read committed');
  await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'a@example.com', 'a')`, [key, slot]);
  return writer;
}

describe('a directory pin changed by hand, with writers of the key on its old owner', () => {
  it('(a) set: a first row of the key in flight on the shard it routes to by hash while it is counted: the pin waits for it, counts it and is refused', async () => {
    const slot = 2101;
    const { to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const writer = await writerInFlight(source, slot, key);
    try {
      const pinning = refusalOf(directory.set(key, to, 'ops@example.com'));
      const seen = await fencedOrSettled(pinning, source, key);
      await writer.query('commit');
      const outcome = await pinning;
      // Before: pinned (0 rows counted) before the writer's commit: the user acknowledged on a shard the catalog no longer routed the key to.
      expect({ pin: await directory.get(key), rowsOnOldOwner: await keyRows(source, key) }).toEqual({ pin: null, rowsOnOldOwner: 1 });
      expect(seen).toBe('fenced');
      expect(outcome).toBeInstanceOf(DirectoryRowsLeftError);
      // The fence was put back: the key's owner takes its writes again.
      expect(await unitFenceState(source, 'directory', key)).toBeUndefined();
      expect(await keyWriteOutcome(source, slot, key)).toBe('acknowledged');
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
    }
  }, 60_000);

  it('(b) set: a write sent to the old owner after the pin (a router with a stale directory cache) is refused CAF02, and pinning back opens it again', async () => {
    const slot = 2102;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const pinned = await directory.set(key, to, 'ops@example.com');
    // Before: acknowledged on the old owner, where no reader of the key looks any more.
    expect(await keyWriteOutcome(source, slot, key)).toBe('refused CAF02');
    expect(await keyRows(source, key)).toBe(0);
    const { rows } = await source.query<{ state: string; moved_to: string; map_version: string }>(`select state, moved_to, map_version::text from write_fences where kind = 'directory' and unit_id = $1`, [key]);
    expect(rows).toEqual([{ state: 'moved', moved_to: to, map_version: String(pinned.version) }]);
    // The new owner takes them (its slot is not its own there: the key's pin decides).
    expect(await keyWriteOutcome(target, slot, key)).toBe('acknowledged');
    await target.query('delete from documents where owner_id = $1', [key]);
    await target.query('delete from users where id = $1', [key]);
    // Pinned back by hand (the new owner empty again): the old owner takes the key's writes, the other shard refuses them.
    await directory.set(key, from, 'ops@example.com');
    expect(await unitFenceState(source, 'directory', key)).toBeUndefined();
    expect(await keyWriteOutcome(source, slot, key)).toBe('acknowledged');
    expect(await keyWriteOutcome(target, slot, key)).toBe('refused CAF02');
  }, 60_000);

  it('(a) repinByHand: a row of the key in flight on its pinned shard while it is counted: waited for, counted, refused', async () => {
    const slot = 2103;
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, to, 'ops@example.com');
    const writer = await writerInFlight(target, slot, key);
    try {
      const repinning = refusalOf(directory.repinByHand(key, from, 'back to its slot (ticket OPS-9)'));
      const seen = await fencedOrSettled(repinning, target, key);
      await writer.query('commit');
      const outcome = await repinning;
      expect({ pin: await directory.get(key), rowsOnPinned: await keyRows(target, key) }).toEqual({ pin: to, rowsOnPinned: 1 });
      expect(seen).toBe('fenced');
      expect(outcome).toBeInstanceOf(DirectoryRowsLeftError);
      expect(await unitFenceState(target, 'directory', key)).toBeUndefined();
    } finally {
      await writer.query('rollback').catch(() => undefined);
      writer.release();
    }
  }, 60_000);

  it('(b) repinByHand: a write sent to the old pin after the change is refused CAF02', async () => {
    const slot = 2104;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, to, 'ops@example.com');
    await directory.repinByHand(key, from, 'back to its slot (ticket OPS-9)');
    // Before: acknowledged on the old pin's shard, out of every reader's sight.
    expect(await keyWriteOutcome(target, slot, key)).toBe('refused CAF02');
    expect(await keyWriteOutcome(source, slot, key)).toBe('acknowledged');
  }, 60_000);
});

describe('a directory pin removed by hand', () => {
  it('that would change the key\'s route is refused, naming the pin or the move to use: a write on the pinned shard stays where the catalog routes', async () => {
    const slot = 2105;
    const { from, to, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    // A key pinned (before any write) away from its slot's owner; unpinned, it would route by hash to `from`.
    await directory.set(key, to, 'ops@example.com');
    const outcome = await refusalOf(directory.delete(key));
    // A router whose cache still names the pin writes there.
    const late = await keyWriteOutcome(target, slot, key);
    // The pin stays: the write on its shard is where the catalog routes the key.
    expect({ pin: await directory.get(key), late }).toEqual({ pin: to, late: 'acknowledged' });
    expect(String(outcome)).toMatch(new RegExp(`cannot unpin key ${key}: unpinned, it would route by hash to ${from}.*set\\(.*${from}.*POST /shards/moves`));
  }, 60_000);

  it('is refused while a shard holds a directory fence row of the key, even where the route stays (the row would decide for it over its slot\'s)', async () => {
    const slot = 2106;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, to, 'ops@example.com');
    await directory.set(key, from, 'ops@example.com');
    // `to` now holds the key's `moved` row; unpinned, the key would route by hash to `from`, and to `to` once its slot went there.
    const outcome = await refusalOf(directory.delete(key));
    expect(await directory.get(key)).toBe(from);
    expect(String(outcome)).toMatch(new RegExp(`cannot unpin key ${key}: .*write_fences row.*${to}`));
    expect(await keyWriteOutcome(source, slot, key)).toBe('acknowledged');
  }, 60_000);

  it('that leaves the route as it is, with no fence row of the key anywhere, goes through', async () => {
    const slot = 2107;
    const { from } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, from, 'ops@example.com');
    expect(await directory.delete(key)).toBe(true);
    expect(await directory.get(key)).toBeNull();
  }, 60_000);
});

/**
 * Another session's change of the key's pin, uncommitted while `change` reads the key's route,
 * committed once `change` waits on its row: `change`'s outcome and the pin left.
 */
async function changedMeanwhile(sql: string, values: unknown[], change: () => Promise<unknown>): Promise<unknown> {
  const other = await env.catalog.connect();
  try {
    await other.query('begin');
    await other.query(sql, values);
    const outcome = refusalOf(change());
    await lockWaitOn(env.catalog, 'catalog');
    await other.query('commit');
    return await outcome;
  } finally {
    other.release();
  }
}

describe('a pin change that fences nothing, while another session changes the pin', () => {
  // Counted and checked against the route it read, such a change wrote over whatever was committed
  // meanwhile: a pin made since sent the key's writes to its shard, the change then routed the key
  // back where that pin's fence row refuses them, and the writes acknowledged under it were out of
  // every reader's sight. It is now made only over the entry it read.
  it('an unpin removes only the pin it read: a pin changed since is kept, and the unpin refused', async () => {
    const slot = 2109;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const read = await directory.set(key, from, 'ops@example.com');
    const outcome = await changedMeanwhile('update catalog.shard_directory set shard_id = $2, version = version + 1 where key = $1', [key, to], () => directory.delete(key));
    expect(outcome).toBeInstanceOf(DirectoryVersionConflictError);
    expect(String(outcome)).toContain(`expected ${from} (version ${read.version}), found ${to} (version ${read.version + 1}`);
    expect(await directory.get(key)).toBe(to);
  }, 60_000);

  it('a pin that keeps the key where it routes is written only over the entry it read: a pin made since is kept', async () => {
    const slot = 2110;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const outcome = await changedMeanwhile(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, 'other')`, [key, to], () => directory.set(key, from, 'ops@example.com'));
    expect(outcome).toBeInstanceOf(DirectoryVersionConflictError);
    expect(await directory.get(key)).toBe(to);
  }, 60_000);

  it('a repin by hand is made only over the entry it read', async () => {
    const slot = 2111;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, from, 'ops@example.com');
    const outcome = await changedMeanwhile('update catalog.shard_directory set shard_id = $2, version = version + 1 where key = $1', [key, to], () =>
      directory.repinByHand(key, from, 'rows checked on the slot owner (test)'),
    );
    expect(outcome).toBeInstanceOf(DirectoryVersionConflictError);
    expect(await directory.get(key)).toBe(to);
  }, 60_000);
});

describe("a pin changed by hand through a catalog pool of one connection (the Lambdas' pool settings)", () => {
  it('reads the move jobs through the connection it holds: pinned and fenced, not timed out waiting on itself', async () => {
    const slot = 2108;
    const { to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const one = new pg.Pool({ connectionString: env.urls.catalog, max: 1, connectionTimeoutMillis: 5000 });
    try {
      const store = new DirectoryStore(one, { ttlMs: 0, shards: [...env.shards.keys()], shardPools: env.shards });
      const entry = await store.set(key, to, 'ops@example.com');
      expect({ pin: entry.shardId, fence: await unitFenceState(source, 'directory', key) }).toEqual({ pin: to, fence: 'moved' });
    } finally {
      await one.end();
    }
  }, 60_000);
});

describe('a key pinned to a shard its slot left (the slot row there says moved)', () => {
  /** The key's user written by a fresh writer: where it landed, or why it was refused. */
  async function freshWrite(key: string, slot: number): Promise<string> {
    env.directory.invalidate(key);
    return env.writer
      .withShardWrite(key, ({ client }) => client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'f@example.com', 'f')`, [key, slot]))
      .then(
        (r) => `acknowledged on ${r.shardId}`,
        (e: Error) => `refused: ${e.message}`,
      );
  }

  for (const how of ['a slot map published by hand', 'a slot move'] as const) {
    it(`set after ${how}: refused, nothing changed, or the key takes its writes where it is pinned; never refused for good`, async () => {
      const slot = how === 'a slot move' ? 2106 : 2105;
      const { from, to } = await sides(env, slot);
      const [key] = keysInSlot(slot, 1) as [string];
      const stores = countingStores(env);
      if (how === 'a slot move') {
        const mover = env.mover({ readerGraceMs: 0 });
        expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
      } else {
        const current = await stores.slotMaps.current();
        await stores.slotMaps.publishByHand(moveSlots(current, [slot], to), 'test: the slot given away by hand');
      }
      // The slot's row on `from` is `moved` to `to`; the key (not pinned then) is not in its excluded keys.
      expect(await unitFenceState(env.shards.get(from) as pg.Pool, 'slot', String(slot))).toBe('moved');
      const refused = await refusalOf(stores.directory.set(key, from, 'ops@example.com'));
      const route = (await directory.get(key)) ?? to;
      // Before: pinned (no rows of the key anywhere), and every write of the key refused for good
      // on `from` (CAF02: its slot's `moved` row there decides for it), "routing is not converging".
      expect({ route, write: await freshWrite(key, slot) }).toEqual({ route: refused === null ? from : to, write: `acknowledged on ${route}` });
    }, 60_000);
  }
});

describe('a key pinned or unpinned by hand while its slot has a move planned', () => {
  it('set to the shard it routes to now (nothing to fence): refused, or the key and its rows stay where the catalog routes it', async () => {
    const slot = 2107;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [key], 1);
    const mover = env.mover({ readerGraceMs: 0 });
    // Planned before the pin: its excluded keys (the slot's pinned keys) do not name the key.
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const refused = await refusalOf(directory.set(key, from, 'ops@example.com'));
    expect((await mover.run(job.id)).state).toBe('done');
    const route = (await directory.get(key)) ?? (await env.ownerOf(slot));
    // Before: pinned to `from` (the route unchanged: not counted, not fenced), the move copied the
    // key's rows to `to` and deleted them on `from`: the user acknowledged, on no shard its readers look at.
    expect({ refused: refused instanceof Error, route, rowsWhereRouted: await keyRows(env.shards.get(route) as pg.Pool, key) }).toEqual({ refused: true, route: to, rowsWhereRouted: 1 });
  }, 60_000);

  it('unpin of a key pinned to its slot owner and kept out of the planned move: refused, or its rows stay where the catalog routes it', async () => {
    const slot = 2108;
    const { from, to } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [key], 1);
    await directory.set(key, from, 'ops@example.com');
    const mover = env.mover({ readerGraceMs: 0 });
    // Planned while pinned: the key is kept out of the slot's copy and clean-up.
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const refused = await refusalOf(directory.delete(key));
    expect((await mover.run(job.id)).state).toBe('done');
    const route = (await directory.get(key)) ?? (await env.ownerOf(slot));
    // Before: unpinned (the route unchanged then), the move left the key's rows on `from` and the key then routed by hash to `to`.
    expect({ refused: refused instanceof Error, route, rowsWhereRouted: await keyRows(env.shards.get(route) as pg.Pool, key) }).toEqual({ refused: true, route: from, rowsWhereRouted: 1 });
  }, 60_000);
});
