import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocumentsRoute } from '../../../functions/local/documents-api.js';
import type { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { createShardReader, ShardReadError, type ShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';
import { countSlot, keysInSlot, primaryReads, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { laggingReplicaReader } from './fixtures/lagging-replica.js';

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

  it("reads a directory-placed key on the new owner's primary when the replica's snapshot predates its directory move", async () => {
    const slot = 517;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 4);
    // The target's "replica": the target itself, read in a snapshot exported before the move (what
    // a replica that has not replayed the move's 'incoming' row and copy shows).
    const holder = await target.connect();
    try {
      await holder.query('begin isolation level repeatable read read only');
      const snapshot = (await holder.query<{ s: string }>('select pg_export_snapshot() as s')).rows[0]?.s as string;
      const mover = env.mover({ readerGraceMs: 0 });
      expect((await mover.run((await mover.plan({ kind: 'directory', key: user, to, createdBy: 'test' })).id)).state).toBe('done');
      const primaries = primaryReads(env.shards);
      const laggingReplica: Pick<ReplicaReader, 'withReadClient'> = {
        async withReadClient(shardId, fn, options) {
          if (shardId !== to || options?.primary === true) return primaries.withReadClient(shardId, fn, options);
          const client = await target.connect();
          try {
            // The read's own BEGIN, then the old snapshot, as its first statement: in the BEGIN's
            // simple query, right after the BEGIN (the fence rows come in that query too).
            const query = async (text: unknown, values?: unknown): Promise<unknown> =>
              client.query(typeof text === 'string' && text.startsWith('begin') ? text.replace(/^begin[^;]*/, (begin) => `${begin}; set transaction snapshot '${snapshot}'`) : (text as string), values as unknown[]);
            const inSnapshot = new Proxy(client, { get: (t, p) => (p === 'query' ? query : (Reflect.get(t, p) as unknown)) });
            return await fn(inSnapshot, `${to}/replica-1`, { replica: true });
          } finally {
            client.release();
          }
        },
      };
      const config = parseShardingConfig({
        strategy: 'hash_based',
        shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
        default_shard: 'shard_a',
      });
      const router = ShardRouter.fromConfig(config, { slotMap: await env.slotMaps.current(), directory: env.directory });
      const reads = createShardReader({ router: routerForWrites(router, env.slotMaps, env.directory), reader: laggingReplica });

      const read = await reads.withShardRead(user, docsOf(user));

      expect({ n: read.value, shardId: read.shardId, servedBy: read.servedBy }).toEqual({ n: 4, shardId: to, servedBy: `${to}/primary` });
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  });
});

/** The env's primaries as the documents API's replica reads (these shards have no replicas: every replica read is a primary read). */
const primariesAsReplicas: Pick<ReplicaReader, 'query'> = {
  async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = []) {
    const r = await (env.shards.get(shardId) as pg.Pool).query<R>(text, values);
    return { rows: r.rows, rowCount: r.rowCount, servedBy: `${shardId}/primary` };
  },
};

/** The local documents API, its replica reads served by `reader` (the primaries by default). */
async function documentsApi(reader: Pick<ReplicaReader, 'query'> = primariesAsReplicas): Promise<{ get<T>(path: string): Promise<{ status: number; body: T }>; close(): Promise<void> }> {
  const route = createDocumentsRoute({ writer: env.writer, reader, reads: env.reader, shardIds: [...env.shards.keys()] });
  const http = createServer((req, res) => void Promise.resolve(route(req, res)).then((handled) => (handled ? undefined : res.writeHead(404).end())));
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  return {
    async get<T>(path: string) {
      const res = await fetch(`${url}${path}`);
      return { status: res.status, body: (await res.json()) as T };
    },
    close: () => new Promise<void>((ok) => http.close(() => ok())),
  };
}

interface ListedUser {
  id: string;
  shard_id: string;
}
interface FoundDocument {
  title: string;
  shard_id: string;
}

describe('documents API reads that ask every shard', () => {
  it('answer from the owner only, between a move\'s flip and its clean-up and during its copy', async () => {
    // Slot A: moved, its clean-up not yet run (the mover stopped before it: a crash, a Lambda
    // timeout, or the time the clean-up takes). Slot B: its copy on the target, not yet published.
    const [slotA, slotB] = [513, 514];
    const a = await sides(env, slotA);
    const b = await sides(env, slotB);
    const [userA] = keysInSlot(slotA, 1) as [string];
    const [userB] = keysInSlot(slotB, 1) as [string];
    await seedUsers(a.source, slotA, [userA], 1);
    await seedUsers(b.source, slotB, [userB], 1);
    const docOf = async (pool: pg.Pool, user: string): Promise<string> => (await pool.query<{ id: string }>('select id::text from documents where owner_id = $1', [user])).rows[0]?.id as string;
    const [docA, docB] = [await docOf(a.source, userA), await docOf(b.source, userB)];
    const stopAt = (at: string) =>
      env.mover({
        readerGraceMs: 0,
        hook(point) {
          if (point === at) throw new Error(`test: the mover stops at ${at}`);
        },
      });
    const moverA = stopAt('cleaning_up');
    await expect(moverA.run((await moverA.plan({ kind: 'slot', slot: slotA, to: a.to, createdBy: 'test' })).id)).rejects.toThrow(/stops at/);
    const moverB = stopAt('catching_up');
    const jobB = (await moverB.plan({ kind: 'slot', slot: slotB, to: b.to, createdBy: 'test' })).id;
    await expect(moverB.run(jobB)).rejects.toThrow(/stops at/);
    // Both shards hold each unit's rows now.
    expect([await countSlot(a.source, slotA), await countSlot(a.target, slotA), await countSlot(b.target, slotB)]).toEqual(Array(3).fill({ users: 1, documents: 1 }));
    // The owner edits A's document on its new shard.
    const write = await env.writer.withShardWrite(userA, async ({ client }) => {
      await client.query(`update documents set title = 'edited after the move' where id = $1`, [docA]);
    });
    expect(write.shardId).toBe(a.to);

    const api = await documentsApi();
    try {
      const [foundA, foundB] = [await api.get<FoundDocument>(`/api/v1/documents/${docA}`), await api.get<FoundDocument>(`/api/v1/documents/${docB}`)];
      const users = await api.get<{ items: ListedUser[] }>('/api/v1/users?limit=200');
      const listedOn = (user: string) => users.body.items.filter((u) => u.id === user).map((u) => u.shard_id);

      expect({ title: foundA.body.title, shard: foundA.body.shard_id }).toEqual({ title: 'edited after the move', shard: a.to });
      expect(foundB.body.shard_id).toBe(b.from);
      expect({ a: listedOn(userA), b: listedOn(userB) }).toEqual({ a: [a.to], b: [b.from] });
    } finally {
      await api.close();
      await moverB.cancel(jobB);
      await env.mover({ readerGraceMs: 0 }).resumeAll();
    }
  });

  it("find a document looked up without its owner when the new owner's replica has not replayed its move yet", async () => {
    const slot = 1500;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    const doc = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1', [user])).rows[0]?.id as string;
    // The target's replica reads in a snapshot taken before the move (within its lag bound, it
    // has not replayed the move in); the source's is fresh: it shows the slot moved away.
    const holder = await target.connect();
    try {
      await holder.query('begin isolation level repeatable read read only');
      const snapshot = (await holder.query<{ s: string }>('select pg_export_snapshot() as s')).rows[0]?.s as string;
      const mover = env.mover({ readerGraceMs: 0 });
      expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
      const lagging = laggingReplicaReader(env.shards, to, () => snapshot);
      const api = await documentsApi(lagging);
      try {
        const found = await api.get<FoundDocument>(`/api/v1/documents/${doc}`);

        expect({ status: found.status, shard: found.body.shard_id }).toEqual({ status: 200, shard: to });
      } finally {
        await api.close();
      }
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  });

  it('prefer the open copy to a fenced one, and ask the owner when two shards both say they own a row', async () => {
    const slot = 515;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    const doc = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1', [user])).rows[0]?.id as string;
    const mover = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'cleaning_up') throw new Error('test: the mover stops before the clean-up');
      },
    });
    await expect(mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).rejects.toThrow(/before the clean-up/);
    await env.writer.withShardWrite(user, async ({ client }) => {
      await client.query(`update documents set title = 'edited on the new owner' where id = $1`, [doc]);
    });
    // What each shard says of the slot: the source as between the target's opening and its own
    // 'moved' mark (two commits on two shards), then as a replica that has replayed none of the move.
    const sourceSays = (state: string) => source.query(`update write_fences set state = $2 where kind = 'slot' and unit_id = $1`, [String(slot), state]);
    const api = await documentsApi();
    try {
      const look = async () => {
        const found = await api.get<FoundDocument>(`/api/v1/documents/${doc}`);
        const users = await api.get<{ items: ListedUser[] }>('/api/v1/users?limit=200');
        return { doc: [found.body.title, found.body.shard_id], listedOn: users.body.items.filter((u) => u.id === user).map((u) => u.shard_id) };
      };
      await sourceSays('fenced');
      const whileFenced = await look();
      await sourceSays('open');
      const bothOpen = await look();

      const current = { doc: ['edited on the new owner', to], listedOn: [to] };
      expect({ from, whileFenced, bothOpen }).toEqual({ from, whileFenced: current, bothOpen: current });
      expect((await target.query<{ state: string }>(`select state from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows[0]?.state).toBe('open');
    } finally {
      await sourceSays('moved');
      await api.close();
      await env.mover({ readerGraceMs: 0 }).resumeAll();
    }
  });
});
