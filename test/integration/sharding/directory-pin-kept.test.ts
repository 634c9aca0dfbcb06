/**
 * Issue #15, item 1: a directory move writes `directory` fence rows for its key on its source and
 * target, and nothing removes them; they decide for the key over its slot's rows on both shards
 * (docs/sharding-spec.md section 9, "Which row applies"). A pin of such a key deleted by hand,
 * outside any move (DirectoryStore.delete, or SQL), sent the key by hash; the next move of its
 * slot did not exclude it (`excluded_keys` lists only keys the directory places) and took it
 * along, and then the target's `moved` row refused every write sent there by hash (CAF02; the
 * router re-routed by hash to the same shard until "routing is not converging", the documents
 * API's 503), and the source's `open` row let writers with an older map through (the same
 * sequence as moves-directory-rollback-unpinned.test.ts, there with the pin deleted mid-move).
 * Sharding migration 010 refuses the deletion (SQLSTATE CAF06, naming the key and the move
 * jobs; DirectoryStore.delete throws DirectoryPinKeptError), for every login that may delete
 * pins, and leaves keys no move wrote rows for free to be unpinned ("A key moved by a directory
 * move stays pinned").
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryPinKeptError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { sqlstateOf } from '../../support/postgres.js';
import { documentsOf, keysInSlot, pinnedAway, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv, documentWrittenFor, controlLogin } from './fixtures/move-env.js';

let env: MoveEnv;
let control: pg.Pool;
beforeAll(async () => {
  env = await startMoveEnv();
  control = await controlLogin(env, 'pin_operator');
}, 120_000);
afterAll(async () => {
  await control?.end();
  await env?.stop();
});

/**
 * Moves `slot` to `to`, expecting the move to keep `key` out (its only excluded key) and to end
 * `done`, then writes a document of `key` and says where it landed ({@link documentWrittenFor}).
 */
async function slotMovedWithout(slot: number, to: string, key: string): Promise<string> {
  const slotMove = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot, to, createdBy: 'test' });
  expect(slotMove.excludedKeys).toEqual([key]);
  expect((await env.mover({ readerGraceMs: 0 }).run(slotMove.id)).state).toBe('done');
  env.directory.invalidate(key);
  return documentWrittenFor(env, key);
}

const entryOf = (key: string) => env.catalog.query('select key, shard_id, version::int, updated_by from catalog.shard_directory where key = $1', [key]).then((r) => r.rows);

describe('the pin of a key moved by a directory move', () => {
  it('may not be deleted, by DirectoryStore.delete or by SQL, as a superuser or a ca_dms_control login: refused with CAF06, nothing changed; the key keeps its place through its slot\'s next move', async () => {
    const slot = 1720;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 3);
    const moved = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key, to, createdBy: 'test' });
    expect((await env.mover({ readerGraceMs: 0 }).run(moved.id)).state).toBe('done');
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: 'moved', target: 'open' });
    const pinned = await entryOf(key);
    expect(pinned).toMatchObject([{ shard_id: to }]);

    const asOwner = new DirectoryStore(env.catalog, { ttlMs: 0 });
    const refusal = await asOwner.delete(key).then(
      () => null,
      (e: unknown) => e,
    );
    // Before: the pin was deleted (true), and the key routed by hash to `from`, whose `moved` row refused it.
    expect(refusal).toBeInstanceOf(DirectoryPinKeptError);
    expect((refusal as DirectoryPinKeptError).key).toBe(key);
    expect((refusal as Error).message).toContain(`the pin of key ${key} (to ${to}) may not be removed: move job(s) #${moved.id} (${from} to ${to}, done) wrote fence rows for it`);
    expect((refusal as Error).message).toContain('To give the key another owner, move it');
    await expect(new DirectoryStore(control, { ttlMs: 0 }).delete(key.toUpperCase())).rejects.toBeInstanceOf(DirectoryPinKeptError);
    expect({
      superuser: await sqlstateOf(() => env.catalog.query('delete from catalog.shard_directory where key = $1', [key])),
      control: await sqlstateOf(() => control.query('delete from catalog.shard_directory where key = $1', [key])),
      everyPin: await sqlstateOf(() => control.query('delete from catalog.shard_directory')),
      keyChanged: await sqlstateOf(() => control.query(`update catalog.shard_directory set key = key || '-x' where key = $1`, [key])),
      truncate: await sqlstateOf(() => env.catalog.query('truncate catalog.shard_directory')),
    }).toEqual({ superuser: 'CAF06', control: 'CAF06', everyPin: 'CAF06', keyChanged: 'CAF06', truncate: 'CAF06' });
    expect(await entryOf(key)).toEqual(pinned);

    // The slot's next move leaves the key where its pin and rows are, and its writes are answered there.
    expect(await slotMovedWithout(slot, to, key)).toBe(`written on ${to}`);
    expect({ from: (await documentsOf(source, [key])).size, to: (await documentsOf(target, [key])).size }).toEqual({ from: 0, to: 4 });
  }, 120_000);

  it('may not be deleted once a cancelled directory move of the key began its copy (its fence rows outlive the rollback)', async () => {
    const slot = 1721;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 2);
    await env.directory.set(key, from, 'ops@example.com');
    let asked = false;
    const planned = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key, to, createdBy: 'test' });
    const cancelling = env.mover({
      readerGraceMs: 0,
      hook: async (point) => {
        if (point === 'catching_up' && !asked) {
          asked = true;
          await env.mover().requestCancel(planned.id);
        }
      },
    });
    expect((await cancelling.run(planned.id)).state).toBe('cancelled');
    expect({ source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) }).toEqual({ source: 'open', target: 'moved' });
    expect(await sqlstateOf(() => control.query('delete from catalog.shard_directory where key = $1', [key]))).toBe('CAF06');
    expect(await entryOf(key)).toMatchObject([{ shard_id: from }]);
  }, 120_000);

  it('may not be deleted once a slot move kept the key out of its slot (sharding migration 010): the slot move\'s `moved` row on the slot\'s old owner outlives it, and the slot\'s move back would take the unpinned key there, its writes refused', async () => {
    const slot = 1723;
    // The key lives on `pinnedTo`, pinned there by an operator; its slot is `slotOwner`'s.
    const { key, source: pinnedTo, target: slotOwner } = await pinnedAway(env, slot, 3);
    const ownerPool = env.shards.get(slotOwner) as pg.Pool;
    const pinnedPool = env.shards.get(pinnedTo) as pg.Pool;
    const operator = new DirectoryStore(control, { ttlMs: 0 });
    // A slot move that kept the key out but never ran wrote nothing: the key may be unpinned.
    const neverRun = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot, to: pinnedTo, createdBy: 'test' });
    expect(neverRun.excludedKeys).toEqual([key]);
    await env.mover().requestCancel(neverRun.id);
    expect((await env.mover({ readerGraceMs: 0 }).run(neverRun.id)).state).toBe('cancelled');
    expect(await operator.delete(key)).toBe(true);
    await env.directory.set(key, pinnedTo, 'ops@example.com');

    // The slot follows its key to `pinnedTo`; the key is kept out (it is there already), and the
    // move writes the key's `directory` row `moved` (to `pinnedTo`) on the slot's old owner.
    const there = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot, to: pinnedTo, createdBy: 'test' });
    expect(there.excludedKeys).toEqual([key]);
    expect((await env.mover({ readerGraceMs: 0 }).run(there.id)).state).toBe('done');
    expect({ slotOwner: await unitFenceState(ownerPool, 'directory', key), pinnedTo: await unitFenceState(pinnedPool, 'directory', key) }).toEqual({ slotOwner: 'moved', pinnedTo: undefined });
    const pinned = await entryOf(key);

    // Without the guard: deleted (true), the key routed by hash to `pinnedTo` where its rows are, and the
    // slot's move back to `slotOwner` took it along: every write then met the `moved` row there
    // (CAF02) and failed, "routing is not converging" (the documents API's 503).
    const refusal = await operator.delete(key).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refusal).toBeInstanceOf(DirectoryPinKeptError);
    expect((refusal as Error).message).toContain(`the pin of key ${key} (to ${pinnedTo}) may not be removed: move job(s) #${there.id} (slot ${slot}, ${slotOwner} to ${pinnedTo}, done, the key kept out) wrote fence rows for it`);
    expect(await sqlstateOf(() => env.catalog.query('delete from catalog.shard_directory where key = $1', [key]))).toBe('CAF06');
    expect(await entryOf(key)).toEqual(pinned);

    // Kept pinned, the slot's move back leaves the key where its pin and rows are.
    expect(await slotMovedWithout(slot, slotOwner, key)).toBe(`written on ${pinnedTo}`);
    expect({ slotOwner: (await documentsOf(ownerPool, [key])).size, pinnedTo: (await documentsOf(pinnedPool, [key])).size }).toEqual({ slotOwner: 0, pinnedTo: 4 });
  }, 120_000);

  it('leaves a key pinned by hand, with no directory move or one that never began its copy, free to be unpinned', async () => {
    const slot = 1722;
    const { from, to } = await sides(env, slot);
    const [byHand, neverCopied, planned] = keysInSlot(slot, 3) as [string, string, string];
    for (const key of [byHand, neverCopied, planned]) await env.directory.set(key, to, 'ops@example.com');
    // A directory move cancelled before any run: its run rolls it back without preparing a shard.
    const cancelled = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key: neverCopied, to: from, createdBy: 'test' });
    await env.mover().requestCancel(cancelled.id);
    expect((await env.mover({ readerGraceMs: 0 }).run(cancelled.id)).state).toBe('cancelled');
    // A directory move planned and not run yet (it judges the deleted pin when it runs: section 9).
    await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key: planned, to: from, createdBy: 'test' });
    const operator = new DirectoryStore(control, { ttlMs: 0 });
    expect({ byHand: await operator.delete(byHand), neverCopied: await operator.delete(neverCopied), planned: await operator.delete(planned) }).toEqual({ byHand: true, neverCopied: true, planned: true });
    expect([...(await entryOf(byHand)), ...(await entryOf(neverCopied)), ...(await entryOf(planned))]).toEqual([]);
  }, 120_000);
});
