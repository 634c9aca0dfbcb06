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
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryPinKeptError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { sqlstateOf } from '../../support/postgres.js';
import { documentsOf, keysInSlot, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let control: pg.Pool;
beforeAll(async () => {
  env = await startMoveEnv();
  // A control-plane login as on AWS (sharding migration 005's grants through ca_dms_control):
  // neither a superuser nor the tables' owner.
  await env.catalog.query(`create role pin_operator login password 'pin operator' in role ca_dms_control`);
  const url = new URL(env.urls.catalog);
  url.username = 'pin_operator';
  url.password = 'pin operator';
  control = new pg.Pool({ connectionString: url.toString(), max: 1 });
}, 120_000);
afterAll(async () => {
  await control?.end();
  await env?.stop();
});

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
    expect((refusal as Error).message).toContain(`the pin of key ${key} (to ${to}) may not be removed: directory move job(s) #${moved.id} (${from} to ${to}, done) wrote fence rows for it`);
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
    const slotMove = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect(slotMove.excludedKeys).toEqual([key]);
    expect((await env.mover({ readerGraceMs: 0 }).run(slotMove.id)).state).toBe('done');
    env.directory.invalidate(key);
    const written = await env.writer
      .withShardWrite(key, async ({ client, slot: s }) => {
        await client.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'after', '{"rev": 0}')`, [key, s]);
      })
      .then(
        (r) => `written on ${r.shardId}`,
        (e: Error) => `failed: ${e.message.slice(0, 200)}`,
      );
    expect(written).toBe(`written on ${to}`);
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
