/**
 * A directory move's check of its target (checkedIncoming, issue #15) fences the target `incoming`
 * with `check_undo` set, waits for the writers there older than that fence (the drain, bounded by
 * drainTimeoutMs), then counts the key's rows. A run that stopped in between left the row as it
 * was: every write of the key on the target refused (CAF01) until a later run finished the check.
 * For a key with no directory entry whose slot hashes to the target, every write goes there: the
 * key was unwritable (the API's 503 after its retries), and a forgotten prepared transaction on
 * the target, which makes every run's drain time out, kept it so for good.
 *
 * - A run waits for the transactions prepared on the target before it fences it (the drain would
 *   wait for each of them with the key's writes refused): a forgotten one stops the run with
 *   nothing fenced, and the key's writes there are accepted during and after the run; once it has
 *   ended, the next run fences, checks and finishes the move. (A run whose drain times out, on a
 *   writer open or prepared after that wait, puts the row back before it stops:
 *   moves-target-check-drain.test.ts, moves-target-check-prepared.test.ts.)
 * - A run that dies between the fence and the count (it cannot put anything back) leaves the row;
 *   a cancel is refused while the key routes to the target, in words that fit the step (nothing is
 *   copied yet: no "copy" to delete), and the refusal puts the row back even when the run then
 *   stops before it checks the target again (its time up, here).
 * - A run whose check found rows of the key the target took by hash stops, and so does every run
 *   after it: a cancel is refused (the key routes there), in words that name the rows on both
 *   shards and send the operator to decide the key's owner by hand, not "all on the source" nor
 *   "the move finishes on the target".
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MoverDirectory } from '../../../functions/adapters/postgres/move-port.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { deletePinPastGuard, documentsOf, keysInSlot, type MoveEnv, outcomeOf, pinnedAway, startMoveEnv, unitFenceState } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2, settings: { max_prepared_transactions: 10 } });
});
afterAll(async () => {
  await env?.stop();
});

/** The target's fence row of `key`: its state, and whether its check is pending (`check_undo`). */
async function fenceOf(pool: pg.Pool, key: string): Promise<{ state: string; unchecked: boolean } | undefined> {
  const { rows } = await pool.query<{ state: string; unchecked: boolean }>(`select state, check_undo is not null as unchecked from write_fences where kind = 'directory' and unit_id = $1`, [key]);
  return rows[0];
}

/**
 * A write of the key's user on `pool`, as a writer routed there by hash makes it, in a transaction
 * rolled back afterwards (nothing of it stays): `accepted`, or the SQLSTATE that refused it.
 */
async function userWrite(pool: pg.Pool, slot: number, key: string): Promise<string> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'by hash') on conflict (id) do nothing`, [key, slot, `${key}@example.com`]);
    return 'accepted';
  } catch (e) {
    return `refused ${(e as { code?: string }).code ?? '?'}`;
  } finally {
    await client.query('rollback').catch(() => undefined);
    client.release();
  }
}

/**
 * A key of `slot` with 3 documents, pinned to the shard that does not own its slot (`source`),
 * and a directory move of it planned to its slot's owner (`target`); then its pin is deleted past
 * the catalog's guard: it has no entry and routes by hash to the target, its rows on the source.
 */
async function unpinnedRoutedToTarget(slot: number): Promise<{ key: string; source: string; target: string; id: number }> {
  const sides = await pinnedAway(env, slot, 3);
  const { id } = await env.mover().plan({ kind: 'directory', key: sides.key, to: sides.target, createdBy: 'test' });
  expect(await deletePinPastGuard(env.catalog, sides.key)).toBe(true);
  env.directory.invalidate(sides.key);
  return { ...sides, id };
}

async function until(what: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 3000; i++) {
    if (await what()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('condition not reached');
}

/** `pool`, except that from the first count of a directory key's rows in `users` (checkedIncoming's) on, every query fails: the mover process died there. */
function diesAtCount(pool: pg.Pool): pg.Pool {
  let died = false;
  const dies = (sql: unknown): boolean => {
    if (!died && typeof sql === 'string' && /^select count\(\*\)::int as n from users where/.test(sql)) died = true;
    return died;
  };
  const dead = (): Promise<never> => Promise.reject(new Error('the mover process died here'));
  const wrap = (client: pg.PoolClient): pg.PoolClient => {
    const query = client.query.bind(client) as (...a: unknown[]) => Promise<unknown>;
    (client as unknown as { query: (...a: unknown[]) => Promise<unknown> }).query = (...args: unknown[]) => (dies(args[0]) ? dead() : query(...args));
    return client;
  };
  return new Proxy(pool, {
    get(target, prop, receiver): unknown {
      if (prop === 'connect') return async () => wrap(await target.connect());
      if (prop === 'query') return (...args: unknown[]) => (dies(args[0]) ? dead() : (target.query as (...a: unknown[]) => Promise<unknown>)(...args));
      return Reflect.get(target, prop, receiver) as unknown;
    },
  });
}

describe('a directory move of a key routed by hash to its target, whose check of the target cannot finish', () => {
  it('does not fence the target while a forgotten prepared transaction is there: the key stays writable there during and after each run; the next run finishes the move', async () => {
    const slot = 1651;
    const { key, source, target, id } = await unpinnedRoutedToTarget(slot);
    const targetPool = env.shards.get(target) as pg.Pool;
    const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 1000 });
    // A transaction prepared on the target and forgotten by its manager: another user, another slot.
    const [otherKey] = keysInSlot(1652, 1) as [string];
    const gid = `h37_forgotten_${id}`;
    const tm = await targetPool.connect();
    try {
      await tm.query('begin');
      await tm.query(`insert into users (id, slot, email, display_name) values ($1::uuid, 1652, $1::text || '@example.com', 'forgotten')`, [otherKey]);
      await tm.query(`prepare transaction '${gid}'`);
    } catch (err) {
      await tm.query('rollback').catch(() => undefined);
      throw err;
    } finally {
      tm.release();
    }
    const runs: string[] = [];
    const during: string[] = [];
    const writes: string[] = [];
    const fences: Array<{ state: string; unchecked: boolean } | undefined> = [];
    try {
      for (let i = 0; i < 2; i++) {
        const since = (await targetPool.query<{ t: Date }>('select clock_timestamp() as t')).rows[0]?.t;
        const run = outcomeOf(mover.run(id));
        // The run waits for the prepared transaction (it polls pg_prepared_xacts); a write of the key meanwhile.
        // (The pattern is split so that this query's own text, left on a pooled connection, never matches it.)
        await until(
          async () =>
            ((await targetPool.query(`select 1 from pg_stat_activity where pid <> pg_backend_pid() and query_start >= $1 and query like '%from ' || 'pg_prepared_xacts p%'`, [since])).rowCount ?? 0) > 0,
        );
        during.push(await userWrite(targetPool, slot, key));
        runs.push(await run);
        fences.push(await fenceOf(targetPool, key));
        writes.push(await userWrite(targetPool, slot, key));
      }
    } finally {
      await targetPool.query(`rollback prepared '${gid}'`).catch(() => undefined);
    }
    const after = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(id));

    // Before: each run fenced the target `incoming` (not checked), its drain waited for the prepared
    // transaction and timed out, and the row stayed: every write of the key there (where the key
    // routes) was refused, CAF01, during each run and after it, for as long as the transaction was there.
    const waited = `1 prepared transaction\\(s\\) that wrote users, documents or document_keys \\(pg_prepared_xacts\\) on ${target} still open after 1000 ms`;
    for (const run of runs) expect(run).toMatch(new RegExp(`^threw: ${waited}; the move fences the target for key ${key} and checks it for the key's rows once they have ended \\(commit or roll back a forgotten prepared transaction\\)$`));
    expect({ during, fences, writes }).toEqual({ during: ['accepted', 'accepted'], fences: [undefined, undefined], writes: ['accepted', 'accepted'] });
    // The prepared transaction ended: the next run fences, checks (nothing of the key there) and finishes.
    expect(after).toBe('ended: done');
    expect((await env.directory.entry(key))?.shardId).toBe(target);
    expect({ onSource: (await documentsOf(env.shards.get(source) as pg.Pool, [key])).size, onTarget: (await documentsOf(targetPool, [key])).size }).toEqual({ onSource: 0, onTarget: 3 });
  }, 60_000);

  it('left fenced by a run that died before its count: a cancel is refused in words that fit the step, and its refusal puts the fence back', async () => {
    const slot = 1653;
    const { key, source, target, id } = await unpinnedRoutedToTarget(slot);
    const targetPool = env.shards.get(target) as pg.Pool;
    const shards = new Map(env.shards);
    shards.set(target, diesAtCount(targetPool));
    const died = await outcomeOf(env.mover({ readerGraceMs: 0, shards }).run(id));
    const left = await fenceOf(targetPool, key);
    const writeLeft = await userWrite(targetPool, slot, key);

    // The scaling API's cancel: refused at once (the key routes to the target), nothing recorded.
    const asked = await outcomeOf(env.mover().cancel(id));
    // A cancel recorded before the key routed to the target (the API's check passed then): the
    // run's rollback refuses it. This run's time is up once the rollback has read the key's entry:
    // after the refusal it stops before the move goes on (before any new check of the target).
    await env.catalog.query('update catalog.move_jobs set cancel_requested = true where id = $1', [id]);
    const stop = new AbortController();
    const directory: MoverDirectory = {
      all: (...args) => env.directory.all(...args),
      keysInSlot: (...args) => env.directory.keysInSlot(...args),
      invalidate: (...args) => env.directory.invalidate(...args),
      set: (...args) => env.directory.set(...args),
      entry: (...args) => {
        if (args[0] === key && args[1] !== undefined) stop.abort();
        return env.directory.entry(...args);
      },
    };
    const refusing = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory, readerGraceMs: 0 });
    const refused = await outcomeOf(refusing.run(id, { stop: stop.signal }));
    const job = await env.mover().get(id);
    const fenceAfterRefusal = await fenceOf(targetPool, key);
    const writeAfterRefusal = await userWrite(targetPool, slot, key);
    const finished = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(id));

    expect(died).toMatch(new RegExp(`^threw: the mover process died here; the target's fence of key ${key} on ${target}, not checked, could not be put back \\(the mover process died here\\)`));
    expect({ left, writeLeft }).toEqual({ left: { state: 'incoming', unchecked: true }, writeLeft: 'refused CAF01' });
    // Before: "...; deleting its copy would hide its rows": nothing is copied at this step.
    const why = `key ${key} has no directory entry and routes by hash to the target ${target}, its slot ${slot}'s owner; the move has copied nothing there yet, and a cancel would leave the key's rows, all on ${source}, out of its readers' sight`;
    expect(asked).toBe(`threw: move job #${id} cannot be cancelled: ${why}; the move finishes on ${target}, where the catalog routes the unit`);
    expect({ refused, state: job.state, cancelRequested: job.cancelRequested, cancelRefused: job.cancelRefused }).toEqual({
      refused: 'ended: copying',
      state: 'copying',
      cancelRequested: false,
      cancelRefused: `cancel refused: ${why}. The move goes on to finish on ${target}, where the catalog routes the unit`,
    });
    // Before: the refusal left the row `incoming`, not checked: the key's writes there refused until a run checked it.
    expect({ fenceAfterRefusal, writeAfterRefusal }).toEqual({ fenceAfterRefusal: undefined, writeAfterRefusal: 'accepted' });
    expect(finished).toBe('ended: done');
    expect(await unitFenceState(targetPool, 'directory', key)).toBe('open');
    expect((await env.directory.entry(key))?.shardId).toBe(target);
  }, 60_000);

  it('stopped by its check, which found rows of the key the target took by hash: a cancel is refused in words that name both shards and say what to do, not "all on the source" nor "the move finishes"', async () => {
    const slot = 1655;
    const { key, source, target, id } = await unpinnedRoutedToTarget(slot);
    const targetPool = env.shards.get(target) as pg.Pool;
    // A writer routed by hash (no entry, the slot's owner) wrote the key's user on the target, acknowledged.
    await targetPool.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'by hash')`, [key, slot, `${key}@example.com`]);
    const stopped = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(id));
    // The scaling API's cancel, refused at once (the key routes to the target).
    const asked = await outcomeOf(env.mover().cancel(id));
    // A cancel recorded before the key routed to the target: the run's rollback refuses it.
    await env.catalog.query('update catalog.move_jobs set cancel_requested = true where id = $1', [id]);
    const refused = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(id));
    const job = await env.mover().get(id);

    expect(stopped).toMatch(new RegExp(`^threw: key ${key} has no directory entry and routes by hash to the target ${target}, which already holds rows of it \\(1 in users\\)`));
    // Before: "...; the move has copied nothing there yet, and a cancel would leave the key's rows,
    // all on <source>, out of its readers' sight; the move finishes on <target>": the target holds
    // the key's user, and the move cannot finish (each run stops at its check) until decided by hand.
    const why =
      `key ${key} has no directory entry and routes by hash to the target ${target}, its slot ${slot}'s owner; the move has copied nothing there yet, but ${target} already holds rows of it (1 in users) that writers sent there, besides its rows on ${source}: ` +
      `a cancel would leave those on ${source} out of its readers' sight, and the move cannot copy over these; the key's owner must be decided by hand (its rows are on ${source} and ${target}): pin it with select * from catalog.repin_by_hand('${key}', <the shard holding its rows>, <reason>) (DirectoryStore.repinByHand; docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned")`;
    expect(asked).toBe(`threw: move job #${id} cannot be cancelled: ${why}`);
    expect(refused).toMatch(new RegExp(`^threw: key ${key} has no directory entry and routes by hash to the target ${target}, which already holds rows of it \\(1 in users\\)`));
    expect({ state: job.state, cancelRequested: job.cancelRequested, cancelRefused: job.cancelRefused }).toEqual({
      state: 'copying',
      cancelRequested: false,
      cancelRefused: `cancel refused: ${why}. The move stays stopped until then`,
    });
    expect(await fenceOf(targetPool, key)).toBeUndefined();
    expect({ onSource: (await documentsOf(env.shards.get(source) as pg.Pool, [key])).size }).toEqual({ onSource: 3 });
  }, 60_000);
});
