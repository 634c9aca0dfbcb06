import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { createShardReader, ShardReadError, type ShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';
import { keysInSlot, primaryReads, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

/** A reader whose router holds the slot map as it is now, and keeps it until told to refresh. */
async function readerWithTodaysMap(): Promise<ShardReader> {
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
  });
  const router = ShardRouter.fromConfig(config, { slotMap: await env.slotMaps.current(), directory: env.directory });
  return createShardReader({ router: routerForWrites(router, env.slotMaps, env.directory), reader: primaryReads(env.shards) });
}

const docsOf = (user: string) => async ({ client }: { client: pg.PoolClient }) =>
  (await client.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n;

describe('reads during and after a move', () => {
  it('never answers from the old owner once the move has released its fence, with no grace period and no sleep', async () => {
    const slot = 510;
    const { from, to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 7);
    // One reader per look, each holding the map from before the move (a reader that has been
    // sent elsewhere once has learnt the new map).
    const stale = new Map<string, ShardReader>();
    for (const point of ['published', 'cleaning_up', 'cleaned', 'after']) stale.set(point, await readerWithTodaysMap());
    const seen: Record<string, { n: number | undefined; shardId: string; attempts: number }> = {};
    const look = async (point: string): Promise<void> => {
      const r = await (stale.get(point) as ShardReader).withShardRead(user, docsOf(user));
      seen[point] = { n: r.value, shardId: r.shardId, attempts: r.attempts };
    };
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point === 'published' || point === 'cleaning_up' || point === 'cleaned') await look(point);
      },
    });

    await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    await look('after');

    // Published but still fenced: the old owner holds every write (they are blocked), so it may answer.
    expect(seen['published']).toEqual({ n: 7, shardId: from, attempts: 1 });
    // Fence released ('moved'), then the source rows deleted: the stale reader is sent to the new owner.
    expect(seen['cleaning_up']).toEqual({ n: 7, shardId: to, attempts: 2 });
    expect(seen['cleaned']).toEqual({ n: 7, shardId: to, attempts: 2 });
    expect(seen['after']).toEqual({ n: 7, shardId: to, attempts: 2 });
  });

  it('refreshes its map first when a read-your-writes token was issued under a newer map', async () => {
    const slot = 511;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    const stale = await readerWithTodaysMap();
    const mover = env.mover({ readerGraceMs: 0 });
    await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    const write = await env.writer.withShardWrite(user, async ({ client, slot: s }) => {
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'after the move')`, [user, s]);
    });
    const read = await stale.withShardRead(user, docsOf(user), { token: write.readToken });

    expect(write.readToken).toMatchObject({ shardId: to, mapVersion: (await env.slotMaps.current()).version });
    expect(write.readToken.timeline).toBeGreaterThanOrEqual(1);
    // Straight to the new owner: the token's map version told the reader its map was old.
    expect({ n: read.value, shardId: read.shardId, attempts: read.attempts }).toEqual({ n: 2, shardId: to, attempts: 1 });
  });

  it('cancels a read in the database when its deadline passes', async () => {
    const [user] = keysInSlot(512, 1) as [string];
    const reads = await readerWithTodaysMap();
    const shard = await env.ownerOf(512);

    const read = reads.withShardRead(user, async ({ client }) => client.query(`select pg_sleep(30), 'ca-dms deadline probe'`), { deadlineMs: 200 }).catch((e: unknown) => e);
    const error = await read;
    const { rows } = await (env.shards.get(shard) as pg.Pool).query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity where state = 'active' and query like '%ca-dms deadline probe%' and pid <> pg_backend_pid()`,
    );

    expect(error).toBeInstanceOf(ShardReadError);
    expect((error as ShardReadError).reason).toBe('deadline-exceeded');
    expect(rows[0]?.n).toBe(0);
  });
});
