import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocumentsRoute } from '../../../functions/local/documents-api.js';
import type { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';
import { firstSlotOwnedBy, keysInSlot, primaryReads, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  // Four shards: a unit can have a former owner, a current owner and a target, all different.
  env = await startMoveEnv({ shards: 4 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** The env's primaries as the documents API's replica reads (these shards have no replicas). */
const primariesAsReplicas = (): Pick<ReplicaReader, 'query'> => ({
  async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = []) {
    const r = await (env.shards.get(shardId) as pg.Pool).query<R>(text, values);
    return { rows: r.rows, rowCount: r.rowCount, servedBy: `${shardId}/primary` };
  },
});

async function documentsApi(): Promise<{ get<T>(path: string): Promise<{ status: number; body: T }>; close(): Promise<void> }> {
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
  });
  const router = ShardRouter.fromConfig(config, { slotMap: await env.slotMaps.current(), directory: env.directory });
  // A short wait for a unit being moved in, so the test does not sit out the default 10 s.
  const reads = createShardReader({ router: routerForWrites(router, env.slotMaps, env.directory), reader: primaryReads(env.shards), maxIncomingWaitMs: 300 });
  const route = createDocumentsRoute({ writer: env.writer, reader: primariesAsReplicas(), reads, shardIds: [...env.shards.keys()], onError: () => undefined });
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

describe("a document looked up without its owner while a move's release is half done", () => {
  /**
   * The release is two commits: the source's fence says `moved`, then the target's says `open`.
   * In between (a few ms, or until the job is resumed when the mover dies between them) the
   * source says `moved` and the target `incoming`: the document exists, and is about to be
   * readable on the target. A lookup by id must not answer 404 ("no such document", final)
   * for it: either the document, or a retryable 503.
   */
  it('answers 503 (retry), not 404, and the document once the target opens', async () => {
    const slot = 731;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    const doc = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1', [user])).rows[0]?.id as string;
    const mover = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'cleaning_up') throw new Error('test: the mover stops after the release');
      },
    });
    await expect(mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).rejects.toThrow(/after the release/);
    // The state between the release's two commits: the source already 'moved', the target not yet 'open'.
    const targetSays = (state: string) => target.query(`update write_fences set state = $2 where kind = 'slot' and unit_id = $1`, [String(slot), state]);
    await targetSays('incoming');
    const api = await documentsApi();
    try {
      const between = await api.get<{ title?: string; shard_id?: string; status?: number }>(`/api/v1/documents/${doc}`);
      const withOwner = await api.get<{ status?: number }>(`/api/v1/documents/${doc}?owner=${user}`);
      await targetSays('open');
      const opened = await api.get<{ shard_id?: string }>(`/api/v1/documents/${doc}`);

      expect({ from, between: between.status, withOwner: withOwner.status }).toEqual({ from, between: 503, withOwner: 503 });
      expect({ status: opened.status, shard: opened.body.shard_id }).toEqual({ status: 200, shard: to });
    } finally {
      await targetSays('open');
      await api.close();
      await env.mover({ readerGraceMs: 0 }).resumeAll();
    }
  });
});

describe('a document looked up without its owner, copies in transit naming different owners', () => {
  /**
   * The document was owner A's (slot s1) on shard_a; s1 moved to shard_d and its clean-up on
   * shard_a has not run (a `moved` copy under A). The document was then handed to owner B
   * (slot s2, on shard_b), and s2 is now in its release to shard_c (shard_b `moved`, shard_c
   * `incoming`). The document exists: the answer is the document or a retryable 503, not 404.
   */
  it('answers 503 or the document, never 404, when the first copy in transit names a former owner', async () => {
    const s1 = await firstSlotOwnedBy(env, 'shard_d', 100);
    const s2 = await firstSlotOwnedBy(env, 'shard_b', 300);
    const shard = (id: string): pg.Pool => env.shards.get(id) as pg.Pool;
    const [ownerA] = keysInSlot(s1, 1) as [string];
    const [ownerB] = keysInSlot(s2, 1) as [string];
    await seedUsers(shard('shard_d'), s1, [ownerA], 0);
    await seedUsers(shard('shard_b'), s2, [ownerB], 1);
    const doc = (await shard('shard_b').query<{ id: string }>('select id::text from documents where owner_id = $1', [ownerB])).rows[0]?.id as string;
    // The former owner's stale copy on shard_a, of a unit that moved to shard_d (clean-up pending).
    const stale = await shard('shard_a').connect();
    try {
      await stale.query("begin; set local ca_dms.move_writer = 'on'");
      await stale.query("insert into users (id, slot, email, display_name) values ($1, $2, $3, 'a')", [ownerA, s1, `${randomUUID()}@x`]);
      await stale.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'old')", [doc, ownerA, s1]);
      await stale.query("insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', $1, 'moved', 'shard_d', 1)", [String(s1)]);
      await stale.query('commit');
    } finally {
      stale.release();
    }
    const mover = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'cleaning_up') throw new Error('test: the mover stops after the release');
      },
    });
    await expect(mover.run((await mover.plan({ kind: 'slot', slot: s2, to: 'shard_c', createdBy: 'test' })).id)).rejects.toThrow(/after the release/);
    const targetSays = (state: string) => shard('shard_c').query(`update write_fences set state = $2 where kind = 'slot' and unit_id = $1`, [String(s2), state]);
    await targetSays('incoming');
    const api = await documentsApi();
    try {
      const between = await api.get<{ title?: string; status?: number }>(`/api/v1/documents/${doc}`);
      expect([200, 503]).toContain(between.status);
    } finally {
      await targetSays('open');
      await api.close();
      await env.mover({ readerGraceMs: 0 }).resumeAll();
    }
  }, 60_000);
});
