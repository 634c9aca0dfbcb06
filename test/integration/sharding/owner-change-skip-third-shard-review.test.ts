/**
 * Issue #15, h170: review of h163's refusal of a hand change that gives a unit with an unfinished,
 * unflipped move to a third shard (owner-change-skip-third-shard.test.ts). Each race is made
 * deterministic by a caller's transaction held open, the plan's hook (`before-record-checkout`)
 * and the mover's crash points; no timing.
 *
 * Found: a unit given back by hand to its move's source (or to its target, past its copy), the two
 * cases h163 lets through, was left to its move whatever its old owner: where that was a third
 * shard (the unit given there past the stores: `catalog.repin_by_hand`, a superuser's map), nothing
 * fenced it, and it acknowledged the writes of routers that still sent the unit there, out of every
 * reader's sight ("... given back ... from a third shard ..." below, a key and a slot: `staleOnZ`
 * 'acknowledged', no row of the unit on Z). Now fenced there as any, `moved` to the new owner at
 * the settle, the new owner left to the move (OwnerChangeFences.fence, `strays`).
 *
 * Checked and right: a directory move planned while a pin to a third shard sits between its
 * confirmation and its commit (neither sees the other: the plan takes no lock a pin takes, and the
 * pin's confirmation read the moves before the job committed) ends `failed` at its run, the pin's
 * fence of the old owner (as any: no move then) meeting it, nothing lost; a map by hand naming a slot
 * move and giving the slot to its target is left to the move, which ends done; a map by hand of two
 * slots, one with such a move, is refused before anything is fenced, naming that slot; an unpin
 * whose route would go to a third shard is refused (route change); a map giving a slot to a third
 * shard while an unpinned key of it has a directory move planned fails that move clean; a repin to
 * the target uncommitted while the move flips is waited for by the flip, which ends done.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countingStores, keysInSlot, outcomeOf, publishPastOwnerGuard, refusalOf, runStoppedAfterCopy, settledOrWaiting, startMoveEnv, threeShardsOf, unitFenceState, type MoveEnv, keyWrittenFor, staleWriteOutcome, publishByHandOverriding } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

async function held(): Promise<pg.PoolClient> {
  const c = await env.catalog.connect();
  c.on('error', () => undefined);
  return c;
}

describe("a key's pin to a third shard racing its directory move's plan", () => {
  it('a plan whose checks passed before the pin, recorded while the pin is uncommitted (after its confirmation), commits with it: the move then fails clean, the key writable on its pin, its old owner fenced', async () => {
    const slot = 2201;
    const { from: x, to: y, third: z } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const c = await held();
    let pinned: unknown = 'not run';
    try {
      const planner = env.mover({
        readerGraceMs: 0,
        async planHook(point) {
          if (point !== 'before-record-checkout') return;
          await c.query('begin');
          // Fenced (no move yet), written, confirmed (the job not yet inserted): uncommitted.
          pinned = await refusalOf(directory.set(key, z, 'ops@example.com', c));
        },
      });
      const planned = await refusalOf(planner.plan({ kind: 'directory', key, to: y, createdBy: 'test' }));
      await c.query('commit');
      const jobs = await env.catalog.query<{ id: string; state: string }>(`select id::text, state from catalog.move_jobs where kind = 'directory' and unit_id = $1`, [key]);
      const job = jobs.rows[0];
      const moved = job === undefined ? 'no job' : await outcomeOf(env.mover({ readerGraceMs: 0 }).run(Number(job.id)));
      const outcome = {
        pinned,
        planned: planned === null ? 'recorded' : String(planned).slice(0, 200),
        moved,
        pin: (await directory.entry(key))?.shardId,
        write: await keyWrittenFor(env, key),
        staleOnX: await staleWriteOutcome(env.shards.get(x) as pg.Pool, slot, key),
        keyOnX: await unitFenceState(env.shards.get(x) as pg.Pool, 'directory', key),
      };
      // Neither saw the other: the plan read the key's route before the pin committed, the pin's
      // confirmation read the moves before the job committed. The pin's fence of X (as any: no
      // move then) closes it: the move's run meets X's row `moved` and fails, nothing of it fenced.
      expect(outcome).toEqual({ pinned: null, planned: 'recorded', moved: 'ended: failed', pin: z, write: `written on ${z}`, staleOnX: expect.stringMatching(/^refused CAF0[12]$/) as unknown, keyOnX: 'moved' });
    } finally {
      await c.query('rollback').catch(() => undefined);
      c.release();
    }
  }, 90_000);
});

describe('allowed and refused cases around an unflipped move', () => {
  it('a map by hand naming a slot move in ca_dms.override_moves and giving the slot to its target while it copies is left to the move, which ends done', async () => {
    const slot = 2202;
    const { from: x, to: y } = await threeShardsOf(env, slot);
    const { slotMaps } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot, to: y, createdBy: 'test' });
    await runStoppedAfterCopy(env, job.id);
    const before = await slotMaps.current();
    const outcome = await publishByHandOverriding(env.catalog, slotMaps, job.id, moveSlots(before, [slot], y), 'test: to its target');
    const moved = await outcomeOf(mover.run(job.id));
    const [user] = keysInSlot(slot, 1) as [string];
    const result = { outcome: outcome === null ? null : String(outcome).slice(0, 300), moved, owner: (await slotMaps.current()).assignments[slot], write: await keyWrittenFor(env, user), staleOnX: await staleWriteOutcome(env.shards.get(x) as pg.Pool, slot, keysInSlot(slot, 1)[0] as string) };
    expect(result).toEqual({ outcome: null, moved: 'ended: done', owner: y, write: `written on ${y}`, staleOnX: expect.stringMatching(/^refused CAF0[12]$/) as unknown });
  }, 90_000);

  it('a map by hand moving two slots, one of them with an unflipped move, to a third shard is refused before anything is fenced, naming that slot', async () => {
    const [s1, s2] = [2203, 2204];
    const { from: x, to: y, third: z } = await threeShardsOf(env, s2);
    expect(await env.ownerOf(s1)).toBe(x);
    const { slotMaps } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot: s2, to: y, createdBy: 'test' });
    await runStoppedAfterCopy(env, job.id);
    const before = await slotMaps.current();
    const outcome = await publishByHandOverriding(env.catalog, slotMaps, job.id, moveSlots(before, [s1, s2], z), 'test: two slots to a third shard');
    expect(String(outcome)).toMatch(new RegExp(`slot ${s2} is being moved by move job #${job.id}`));
    expect(String(outcome)).not.toMatch(/more unit/);
    expect({ s1OnX: await unitFenceState(env.shards.get(x) as pg.Pool, 'slot', String(s1)), s1OnZ: await unitFenceState(env.shards.get(z) as pg.Pool, 'slot', String(s1)), version: (await slotMaps.current()).version }).toEqual({ s1OnX: undefined, s1OnZ: undefined, version: before.version });
    expect(await outcomeOf(mover.run(job.id))).toBe('ended: done');
  }, 90_000);

  it("an unpin of a key pinned to a move's source while its directory move to another shard is planned is refused (its route would go to a third shard)", async () => {
    const slot = 2205;
    const { from: a, to: b, third: c3 } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    // Pinned by hand to B (no rows anywhere), then its move B -> C planned, not run.
    await directory.set(key, b, 'ops@example.com');
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to: c3, createdBy: 'test' });
    const unpinned = await refusalOf(directory.delete(key));
    expect(String(unpinned)).toMatch(new RegExp(`DirectoryUnpinRefusedError: cannot unpin key ${key}: unpinned, it would route by hash to ${a} \\(slot ${slot}\\) instead of ${b}, its pin`));
    expect(await outcomeOf(mover.run(job.id))).toBe('ended: done');
    expect({ pin: (await directory.entry(key))?.shardId, write: await keyWrittenFor(env, key), staleOnB: await staleWriteOutcome(env.shards.get(b) as pg.Pool, slot, key) }).toEqual({
      pin: c3,
      write: `written on ${c3}`,
      staleOnB: expect.stringMatching(/^refused CAF0[12]$/) as unknown,
    });
  }, 90_000);

  it("a map by hand giving a slot to a third shard while a key of it, unpinned, has a directory move planned from the slot's owner: the key's route changes under its move", async () => {
    const slot = 2206;
    const { from: x, to: y, third: z } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { slotMaps, directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to: y, createdBy: 'test' });
    const before = await slotMaps.current();
    const published = await refusalOf(slotMaps.publishByHand(moveSlots(before, [slot], z), 'test: the slot to a third shard'));
    const moved = await outcomeOf(mover.run(job.id));
    const result = {
      published: published === null ? null : String(published).slice(0, 300),
      moved,
      pin: (await directory.entry(key))?.shardId,
      owner: (await slotMaps.current()).assignments[slot],
      write: await keyWrittenFor(env, key),
      staleKeyOnX: await staleWriteOutcome(env.shards.get(x) as pg.Pool, slot, key),
    };
    // Not a change of the key's owner the map can see (no pin): its move, its source never
    // prepared, finds the key routed by hash to Z and fails, nothing of it fenced; X is fenced
    // for the slot (the map's), the key written on Z.
    expect(result).toEqual({ published: null, moved: 'ended: failed', pin: undefined, owner: z, write: `written on ${z}`, staleKeyOnX: expect.stringMatching(/^refused CAF0[12]$/) as unknown });
  }, 90_000);

  it("a repin to the move's target past its copy, uncommitted in a caller's transaction while the move flips: the flip waits for it and the move ends done", async () => {
    const slot = 2207;
    const { from: x, to: y } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    const { directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'directory', key, to: y, createdBy: 'test' });
    const stopping = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'cutover') throw new Error('test: the mover stops after catching up');
      },
    });
    expect(await outcomeOf(stopping.run(job.id))).toMatch(/stops after catching up/);
    const c = await held();
    let repinned: unknown;
    let moved: string;
    try {
      await c.query('begin');
      repinned = await refusalOf(directory.repinByHand(key, y, 'test: to its target while it flips', c));
      const run = outcomeOf(mover.run(job.id));
      // The flip (or an earlier step of the run) waits for the repin's row of the entry.
      expect(await settledOrWaiting(env, run)).toBe('waiting');
      await c.query(repinned === null ? 'commit' : 'rollback');
      moved = await run;
    } finally {
      c.release();
    }
    const result = { repinned, moved, pin: (await directory.entry(key))?.shardId, write: await keyWrittenFor(env, key), staleOnX: await staleWriteOutcome(env.shards.get(x) as pg.Pool, slot, key) };
    expect(result).toEqual({ repinned: null, moved: 'ended: done', pin: y, write: `written on ${y}`, staleOnX: expect.stringMatching(/^refused CAF0[12]$/) as unknown });
  }, 90_000);

  it("a key given back to its move's source (or to its target) from a third shard it was pinned to past the stores is fenced there: the third shard's stale writes are refused", async () => {
    const { directory } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const results: Record<string, unknown> = {};
    for (const [slot, back] of [[2208, 'source'], [2209, 'target']] as const) {
      const { from: x, to: y, third: z } = await threeShardsOf(env, slot);
      const [k] = keysInSlot(slot, 1) as [string];
      const to = back === 'source' ? x : y;
      const job = await mover.plan({ kind: 'directory', key: k, to: y, createdBy: 'test' });
      if (back === 'target') {
        const stopping = env.mover({
          readerGraceMs: 0,
          hook(point) {
            if (point === 'cutover') throw new Error('test: stops after catching up');
          },
        });
        expect(await outcomeOf(stopping.run(job.id))).toMatch(/stops after catching up/);
      } else await runStoppedAfterCopy(env, job.id);
      // Pinned to Z past the stores (the catalog's own function, as an operator may call it).
      await env.catalog.query(`select * from catalog.repin_by_hand($1, $2, 'test: past the stores')`, [k, z]);
      // Given through the store to the move's source (or its target past its copy): allowed, and Z must be fenced.
      const given = await refusalOf(directory.repinByHand(k, to, 'test: back from the third shard'));
      const moved = await outcomeOf(mover.run(job.id));
      results[back] = {
        given: given === null ? null : String(given).slice(0, 200),
        staleOnZ: await staleWriteOutcome(env.shards.get(z) as pg.Pool, slot, k),
        rowOnZ: await unitFenceState(env.shards.get(z) as pg.Pool, 'directory', k),
        moved,
        write: await keyWrittenFor(env, k),
        y,
      };
    }
    for (const back of ['source', 'target']) {
      const r = results[back] as { y: string };
      expect({ back, ...r }).toEqual({ back, given: null, staleOnZ: expect.stringMatching(/^refused CAF0[12]$/) as unknown, rowOnZ: 'moved', moved: 'ended: done', write: `written on ${r.y}`, y: r.y });
    }
  }, 90_000);

  it("a slot given back to its move's source by hand from a third shard a map past the stores gave it to is fenced there: the third shard's stale writes are refused", async () => {
    const slot = 2210;
    const { from: x, to: y, third: z } = await threeShardsOf(env, slot);
    const { slotMaps } = countingStores(env);
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.plan({ kind: 'slot', slot, to: y, createdBy: 'test' });
    await runStoppedAfterCopy(env, job.id);
    // Given to Z past every guard (a superuser's publication: no trigger, no fence, no count).
    await publishPastOwnerGuard(env.catalog, env.slotMaps, moveSlots(await slotMaps.current(), [slot], z), 'test', 'test: past the stores');
    const outcome = await publishByHandOverriding(env.catalog, slotMaps, job.id, moveSlots(await slotMaps.current(), [slot], x), 'test: back to the move source');
    const [user] = keysInSlot(slot, 1) as [string];
    const result = { outcome: outcome === null ? null : String(outcome).slice(0, 300), staleOnZ: await staleWriteOutcome(env.shards.get(z) as pg.Pool, slot, user), rowOnZ: await unitFenceState(env.shards.get(z) as pg.Pool, 'slot', String(slot)) };
    expect(result).toEqual({ outcome: null, staleOnZ: expect.stringMatching(/^refused CAF0[12]$/) as unknown, rowOnZ: 'moved' });
    expect(await outcomeOf(mover.run(job.id))).toBe('ended: done');
    expect(await keyWrittenFor(env, user)).toBe(`written on ${y}`);
  }, 90_000);
});
