/**
 * Issue #15: a pin changed by hand to another shard. A directory move writes `directory` fence
 * rows for its key on its source (`moved`) and target, and they decide for the key on those
 * shards whatever its pin says. Sharding migration 010 refuses the removal of such a pin (CAF06,
 * directory-pin-kept.test.ts); an UPDATE of its `shard_id` went through, and (reproduced here
 * before sharding migration 011, 3 documents moved A -> B):
 * - pinned back to A by hand: every read and write met A's `moved` row (CAF02), was re-routed to
 *   A again and gave up, "key's unit moved 6 times in a row; routing is not converging" (the
 *   documents API's 503); the next directory move of the key (to B, where its rows are) stopped in
 *   `copying` for good ("the fence on A says directory <key> is moved: that shard does not own
 *   it"), and refused every other move of the key's slot ("already has an unfinished move");
 * - pinned to a third shard C by hand: reads answered an empty 200 from C (0 documents, the 3 on B
 *   out of sight), and C took the key's writes (a user created there: the key split over two shards).
 * Since 011 such a change is refused (SQLSTATE CAF07, DirectoryOwnerKeptError), nothing changed,
 * unless the transaction names its writer: a mover publishing its own target, or
 * `catalog.repin_by_hand` (docs/sharding-spec.md section 9, "A key moved by a directory move
 * stays pinned").
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryOwnerKeptError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { sqlstateOf } from '../../support/postgres.js';
import { controlLogin, documentsOf, documentWrittenFor, keysInSlot, refusalOf, seedUsers, startMoveEnv, threeShardsOf, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let control: pg.Pool;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  control = await controlLogin(env, 'repin_operator');
}, 120_000);
afterAll(async () => {
  await control?.end();
  await env?.stop();
});

const pool = (shard: string) => env.shards.get(shard) as pg.Pool;
const entryOf = (key: string) => env.catalog.query('select key, shard_id, version::int, updated_by from catalog.shard_directory where key = $1', [key]).then((r) => r.rows);
const readDocs = (key: string) =>
  env.reader.withShardRead(key, async ({ client }) => (await client.query('select id from documents where owner_id = $1', [key])).rowCount).then(
    (r) => `read ${r.value} on ${r.shardId}`,
    (e: Error) => `failed: ${e.message.slice(0, 200)}`,
  );

/** A key of `slot` with 3 documents, moved by a directory move from the slot's owner to `to`. Returns the key and the job's id. */
async function movedKey(slot: number, from: string, to: string): Promise<{ key: string; job: number }> {
  const [key] = keysInSlot(slot, 1) as [string];
  await seedUsers(pool(from), slot, [key], 3);
  const moved = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key, to, createdBy: 'test' });
  expect((await env.mover({ readerGraceMs: 0 }).run(moved.id)).state).toBe('done');
  return { key, job: moved.id };
}

describe('the pin of a key moved by a directory move, changed by hand to another shard', () => {
  it('is refused with CAF07 (back to the source, or to a third shard; DirectoryStore.set, compare-and-set or not, or SQL, superuser or control login), nothing changed: reads and writes still answered where the rows are', async () => {
    const slot = 1740;
    const { from, to, third } = await threeShardsOf(env, slot);
    const { key, job } = await movedKey(slot, from, to);
    expect({ source: await unitFenceState(pool(from), 'directory', key), target: await unitFenceState(pool(to), 'directory', key) }).toEqual({ source: 'moved', target: 'open' });
    const pinned = await entryOf(key);
    expect(pinned).toMatchObject([{ shard_id: to }]);

    const operator = new DirectoryStore(control, { ttlMs: 0 });
    // Before: written; the key then failed "routing is not converging" on every read and write (back
    // to `from`), or read 0 documents on `third` and wrote there (to `third`).
    const back = await refusalOf(operator.set(key, from, 'ops@example.com'));
    expect(back).toBeInstanceOf(DirectoryOwnerKeptError);
    expect((back as DirectoryOwnerKeptError).key).toBe(key);
    expect((back as Error).message).toContain(`the pin of key ${key} may not be changed from ${to} to ${from} by hand: move job(s) #${job} (${from} to ${to}, done) wrote fence rows for it`);
    expect((back as Error).message).toContain('catalog.repin_by_hand(key, shard, reason)');
    const read = await operator.entry(key);
    await expect(operator.set(key, third, 'ops@example.com', undefined, read)).rejects.toBeInstanceOf(DirectoryOwnerKeptError);
    await expect(new DirectoryStore(env.catalog, { ttlMs: 0 }).set(key.toUpperCase(), third, 'ops@example.com')).rejects.toBeInstanceOf(DirectoryOwnerKeptError);
    expect({
      superuser: await sqlstateOf(() => env.catalog.query('update catalog.shard_directory set shard_id = $2 where key = $1', [key, from])),
      control: await sqlstateOf(() => control.query('update catalog.shard_directory set shard_id = $2 where key = $1', [key, third])),
      everyPin: await sqlstateOf(() => control.query('update catalog.shard_directory set shard_id = $1', [third])),
      upsert: await sqlstateOf(() => control.query(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, 'x') on conflict (key) do update set shard_id = excluded.shard_id`, [key, from])),
    }).toEqual({ superuser: 'CAF07', control: 'CAF07', everyPin: 'CAF07', upsert: 'CAF07' });
    expect(await entryOf(key)).toEqual(pinned);
    // Written to the shard it names already (no change of owner): let through.
    await operator.set(key, to, 'ops@example.com');
    expect(await entryOf(key)).toMatchObject([{ shard_id: to, version: (pinned[0] as { version: number }).version + 1 }]);

    env.directory.invalidate();
    expect({ read: await readDocs(key), write: await documentWrittenFor(env, key) }).toEqual({ read: `read 3 on ${to}`, write: `written on ${to}` });
  }, 120_000);

  it('is refused when the transaction names a move job that may not publish it (finished, another key\'s, or to another shard), and a moved key still moves on: its next directory move publishes its target', async () => {
    const slot = 1741;
    const { from, to, third } = await threeShardsOf(env, slot);
    const { key, job } = await movedKey(slot, from, to);
    const [other] = keysInSlot(slot, 1) as [string];
    await env.directory.set(other, from, 'ops@example.com');
    const otherMove = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key: other, to: third, createdBy: 'test' });
    const claimingTo = async (writer: string, shard: string) => {
      const client = await control.connect();
      try {
        await client.query('begin');
        await client.query(`select set_config('ca_dms.pin_writer', $1, true)`, [writer]);
        return await client.query('update catalog.shard_directory set shard_id = $2 where key = $1', [key, shard]).then(
          () => 'changed',
          (e: { code?: string }) => e.code,
        );
      } finally {
        await client.query('rollback');
        client.release();
      }
    };
    expect({ finished: await claimingTo(`move job #${job}`, from), anotherKeys: await claimingTo(`move job #${otherMove.id}`, third), garbage: await claimingTo('move job #x', third) }).toEqual({
      finished: 'CAF07',
      anotherKeys: 'CAF07',
      garbage: 'CAF07',
    });
    await env.mover().requestCancel(otherMove.id);
    expect((await env.mover({ readerGraceMs: 0 }).run(otherMove.id)).state).toBe('cancelled');

    // The mover names itself: the flip of the key's next move changes the pin's shard.
    const next = await env.mover({ readerGraceMs: 0 }).plan({ kind: 'directory', key, to: third, createdBy: 'test' });
    expect(next.from).toBe(to);
    expect((await env.mover({ readerGraceMs: 0 }).run(next.id)).state).toBe('done');
    expect(await entryOf(key)).toMatchObject([{ shard_id: third }]);
    env.directory.invalidate();
    expect({ read: await readDocs(key), docs: { to: (await documentsOf(pool(to), [key])).size, third: (await documentsOf(pool(third), [key])).size } }).toEqual({ read: `read 3 on ${third}`, docs: { to: 0, third: 3 } });
  }, 120_000);

  it('is changed by catalog.repin_by_hand (DirectoryStore.repinByHand) for a ca_dms_control login, recording who and why; an empty reason is refused', async () => {
    const slot = 1742;
    const { from, to } = await threeShardsOf(env, slot);
    const { key } = await movedKey(slot, from, to);
    const operator = new DirectoryStore(control, { ttlMs: 0, shards: [...env.shards.keys()] });
    await expect(operator.repinByHand(key, from, ' ')).rejects.toThrow(`cannot repin ${key} by hand: a pin changed by hand records why; "reason" must not be empty`);
    await expect(operator.repinByHand(key, 'shard_z', 'x')).rejects.toThrow('shard shard_z is not configured');
    expect(await sqlstateOf(() => control.query(`select catalog.repin_by_hand($1, $2, '')`, [key, from]))).toBe('22023');
    const entry = await operator.repinByHand(key.toUpperCase(), from, 'restored from backup on the source (OPS-7)');
    expect({ key: entry.key, shardId: entry.shardId, updatedBy: entry.updatedBy }).toEqual({ key, shardId: from, updatedBy: 'repin_operator by hand: restored from backup on the source (OPS-7)' });
    // Called in SQL with another form of the key, it pins the key the routers look up, not a second one.
    const { rows: braced } = await control.query<{ key: string; shard_id: string }>(`select key, shard_id from catalog.repin_by_hand($1, $2, 'upper case')`, [`{${key.toUpperCase()}}`, to]);
    expect(braced).toEqual([{ key, shard_id: to }]);
    expect(await entryOf(key)).toMatchObject([{ shard_id: to }]);
    await operator.repinByHand(key, from, 'back to the source');
    // The setting lasts only for the function's own write: a plain update after it in the same transaction is refused.
    const client = await control.connect();
    try {
      await client.query('begin');
      await client.query(`select catalog.repin_by_hand($1, $2, 'back')`, [key, to]);
      expect(await sqlstateOf(() => client.query('update catalog.shard_directory set shard_id = $2 where key = $1', [key, from]))).toBe('CAF07');
    } finally {
      await client.query('rollback');
      client.release();
    }
    expect(await entryOf(key)).toMatchObject([{ shard_id: from }]);
  }, 120_000);

  it('leaves a key pinned by hand that no move wrote rows for free to be pinned elsewhere', async () => {
    const slot = 1743;
    const { from, to } = await threeShardsOf(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await env.directory.set(key, to, 'ops@example.com');
    await new DirectoryStore(control, { ttlMs: 0 }).set(key, from, 'ops@example.com');
    expect(await entryOf(key)).toMatchObject([{ shard_id: from, version: 2 }]);
  }, 120_000);
});
