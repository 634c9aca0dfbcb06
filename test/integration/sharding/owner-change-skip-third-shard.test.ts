/**
 * Issue #15, h163: a hand change of a unit's owner leaves a unit with an unfinished, unflipped move
 * to that move (OwnerChangeFences.fence skips it: "the move fences and releases it"), which is
 * sound only where the change gives the unit to the move's target. Given to any other shard, the
 * change fenced nothing on the old owner and settled nothing on the new one, and the move, finding
 * a foreign owner, rolled back and reopened its source: the key pinned (say) to shard X, whose
 * `moved` row of an earlier move (to Y) refused every write of it there, re-routed back to X
 * until "too-many-reroutes: ... routing is not converging", for good; and Y, the move's source,
 * `open` for a key the catalog no longer routes there, acknowledging the writes of a router with the
 * old route out of every reader's sight. Found by owner-change-torture-pins.test.ts,
 * TORTURE_SEED=-903527539 (and CI's -1739894861): `repinByHand` of a key while its second directory
 * move ran. The catalog's repin_by_hand passes the pin guard unconditionally (sharding migration
 * 011), and a first pin over no entry meets no guard at all (the trigger is BEFORE UPDATE), so
 * nothing refused it.
 *
 * Now refused in the change's write transaction, after its write (confirmSkipped, which reads the
 * move again there): a unit left to an unfinished, unflipped move whose target is not the change's
 * new owner, nothing changed, naming the move job and what to do (cancel it, or let it end; then
 * change the owner). A change to the move's target is still left to the move, but for a key whose
 * move has not prepared its source yet (`planned`, `copying`): pinned to its target by hand then, the
 * move stopped at every run and could neither go on nor be cancelled, its source open to stale
 * routes (TORTURE_SEED=217622814 TORTURE_RUNS=30); refused too. A change back to the move's source
 * (the way out the move names) is left to the move.
 *
 * Each move is stopped right after its copy (the crash point `copied`): unfinished, not flipped,
 * no timing involved.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, keysInSlot, outcomeOf, refusalOf, runStoppedAfterCopy, startMoveEnv, threeShardsOf, type MoveEnv, keyWrittenFor, staleWriteOutcome, publishByHandOverriding } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** Each shard's `directory` write_fences row of `key`: `state[ to moved_to][ #job]`, or `none`. */
async function keyRows(key: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [shard, pool] of env.shards) {
    const { rows } = await pool.query<{ state: string; moved_to: string | null; job_id: string | null }>(
      `select state, moved_to, job_id::text from write_fences where kind = 'directory' and unit_id = $1`,
      [key],
    );
    const r = rows[0];
    out[shard] = r === undefined ? 'none' : `${r.state}${r.moved_to === null ? '' : ` to ${r.moved_to}`}${r.job_id === null ? '' : ` #${r.job_id}`}`;
  }
  return out;
}

describe("a key's owner changed by hand while its directory move runs, unflipped, to another shard", () => {
  it('repinByHand to a third shard is refused, nothing changed, naming the move: the key stays writable and its move ends done', async () => {
    const slot = 2101;
    const { from: x, to: y, third: z } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    // Move #1, X -> Y, done: X keeps a `moved` row of the key (to Y), the key pinned to Y.
    const first = await mover.plan({ kind: 'directory', key, to: y, createdBy: 'test' });
    expect((await mover.run(first.id)).state).toBe('done');
    // Move #2, Y -> Z, stopped after its copy: unfinished, not flipped.
    const second = await mover.plan({ kind: 'directory', key, to: z, createdBy: 'test' });
    await runStoppedAfterCopy(env, second.id);
    const before = await directory.entry(key);
    const rowsBefore = await keyRows(key);

    // The key given back to X by hand (spelled upper-case, as the torture does).
    const outcome = await refusalOf(directory.repinByHand(key.toUpperCase(), x, 'torture'));
    const moved = await outcomeOf(mover.run(second.id));
    // Before: the repin committed (pin X), the move found a foreign owner and rolled back (its
    // source Y `open` again), X's `moved` row (to Y) refused the key's every write there, re-routed
    // to X again ("routing is not converging"), and Y acknowledged a write of the old route.
    const after = { moved, pin: (await directory.entry(key))?.shardId, write: await keyWrittenFor(env, key) };
    expect(after).toEqual({ moved: 'ended: done', pin: z, write: `written on ${z}` });
    expect(await staleWriteOutcome(env.shards.get(y) as pg.Pool, slot, key)).toMatch(/^refused CAF0[12]$/);
    expect(String(outcome)).toMatch(
      new RegExp(`cannot repin key ${key} to ${x} by hand: key ${key} is being moved by move job #${second.id} \\(${y} to ${z}, \\w+\\), unfinished and not flipped, and this change gives it to ${x}, not ${z}\\..*Nothing was changed\\. Cancel the move \\(DELETE /api/v1/scaling/shards/moves/${second.id}\\)`),
    );
    // Refused, it changed nothing: the entry and every shard's row as they were before the move ran on.
    expect(before?.shardId).toBe(y);
    expect(rowsBefore[x]).toBe(`moved to ${y} #${first.id}`);
  }, 90_000);

  it("set over no entry, the key's first move planned, is refused, nothing written: the move ends done and the key is writable", async () => {
    const slot = 2102;
    const { from: x, to: y, third: z } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    // The key has no entry (it routes by hash to X); its first move, X -> Y, is planned, not run.
    const job = await mover.plan({ kind: 'directory', key, to: y, createdBy: 'test' });
    expect(await directory.entry(key)).toBeNull();

    const outcome = await refusalOf(directory.set(key, z, 'ops@example.com'));
    const moved = await outcomeOf(mover.run(job.id));
    // Before: the pin committed (Z: no guard for an insert), the move found a foreign owner and
    // failed, and X, its source, stayed `open` for a key routed to Z.
    expect({ moved, pin: (await directory.entry(key))?.shardId, write: await keyWrittenFor(env, key) }).toEqual({ moved: 'ended: done', pin: y, write: `written on ${y}` });
    expect(await staleWriteOutcome(env.shards.get(x) as pg.Pool, slot, key)).toMatch(/^refused CAF0[12]$/);
    expect(String(outcome)).toMatch(new RegExp(`cannot pin key ${key} to ${z}: .*move job #${job.id} \\(${x} to ${y}, planned\\).*Nothing was changed`));
  }, 90_000);

  it("a repin to the move's target before the move prepared its source is refused (the move would stop for good); past its copy it is left to the move", async () => {
    const slot = 2103;
    const { to: y } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to: y, createdBy: 'test' });
    await runStoppedAfterCopy(env, job.id);
    // Still `copying` (the crash point comes before the transition): every run prepares the source
    // again. Before: published, and the move stopped at every run ("this move's own target ... can
    // neither go on nor be cancelled"; TORTURE_SEED=217622814 TORTURE_RUNS=30).
    expect((await mover.get(job.id)).state).toBe('copying');
    const early = await refusalOf(directory.repinByHand(key, y, 'test: given to the move target early'));
    expect(String(early)).toMatch(new RegExp(`key ${key} is being moved to ${y} by move job #${job.id} \\(.* to ${y}, copying\\), which has not prepared its source yet.*Nothing was changed`));
    // Past its copy, a pin to the target is the move's own outcome: left to it, and it ends done.
    const stopping = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'cutover') throw new Error('test: the mover stops after catching up');
      },
    });
    expect(await outcomeOf(stopping.run(job.id))).toMatch(/stops after catching up/);
    expect((await directory.repinByHand(key, y, 'test: given to the move target past its copy')).shardId).toBe(y);
    expect(await outcomeOf(mover.run(job.id))).toBe('ended: done');
    expect({ pin: (await directory.entry(key))?.shardId, write: await keyWrittenFor(env, key) }).toEqual({ pin: y, write: `written on ${y}` });
  }, 90_000);

  it("the way out the move names after a pin to its target made past the stores, the key given back to its source, is left to the move", async () => {
    const slot = 2105;
    const { from: x, to: y } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to: y, createdBy: 'test' });
    await runStoppedAfterCopy(env, job.id);
    // The catalog's function called straight (no store, no check): the move then stops and names the way out.
    await env.catalog.query(`select * from catalog.repin_by_hand($1, $2, 'test: past the stores')`, [key, y]);
    expect(await outcomeOf(mover.run(job.id))).toMatch(/this move's own target.*the key's owner must be decided by hand: pin it with select \* from catalog.repin_by_hand/);
    // That way out, the key's rows (none) on its source: given back to the source through the store, not refused.
    expect((await directory.repinByHand(key, x, 'test: given back to the move source')).shardId).toBe(x);
    expect(await outcomeOf(mover.run(job.id))).toBe('ended: done');
    expect({ pin: (await directory.entry(key))?.shardId, write: await keyWrittenFor(env, key) }).toEqual({ pin: y, write: `written on ${y}` });
  }, 90_000);
});

describe('a slot map published by hand naming an unflipped move (ca_dms.override_moves) but giving its slot to a third shard', () => {
  it('is refused, nothing published, naming the move: the slot stays writable and its move can end', async () => {
    const slot = 2104;
    const { from: x, to: y, third: z } = await threeShardsOf(env, slot);
    const { slotMaps } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot, to: y, createdBy: 'test' });
    await runStoppedAfterCopy(env, job.id);
    const before = await slotMaps.current();
    const outcome = await publishByHandOverriding(env.catalog, slotMaps, job.id, moveSlots(before, [slot], z), 'test: to a third shard');
    const moved = await outcomeOf(mover.run(job.id));
    const [user] = keysInSlot(slot, 1) as [string];
    // Before: published (Z), the move rolled back (a foreign owner), X open for a slot the map gives Z.
    expect({ moved, owner: (await slotMaps.current()).assignments[slot], staleOnX: await staleWriteOutcome(env.shards.get(x) as pg.Pool, slot, user) }).toEqual({
      moved: 'ended: done',
      owner: y,
      staleOnX: expect.stringMatching(/^refused CAF0[12]$/) as unknown,
    });
    expect(String(outcome)).toMatch(new RegExp(`cannot publish slot map version ${before.version + 1} by hand: slot ${slot} .*move job #${job.id} \\(${x} to ${y}, .*\\).*Nothing was published`));
  }, 90_000);
});
