import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocumentsRoute } from '../../../functions/local/documents-api.js';
import type { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { laggingReplicaReader } from './fixtures/lagging-replica.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** The env's primaries as the documents API's replica reads (these shards have no replicas). */
const primariesAsReplicas: Pick<ReplicaReader, 'query'> = {
  async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = []) {
    const r = await (env.shards.get(shardId) as pg.Pool).query<R>(text, values);
    return { rows: r.rows, rowCount: r.rowCount, servedBy: `${shardId}/primary` };
  },
};

interface Answer<T> {
  status: number;
  headers: Headers;
  text: string;
  body: T;
}

async function documentsApi(reader: Pick<ReplicaReader, 'query'> = primariesAsReplicas): Promise<{ request<T>(method: string, path: string): Promise<Answer<T>>; close(): Promise<void> }> {
  const route = createDocumentsRoute({ writer: env.writer, reader, reads: env.reader, shardIds: [...env.shards.keys()] });
  const http = createServer((req, res) => void Promise.resolve(route(req, res)).then((handled) => (handled ? undefined : res.writeHead(404).end())));
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  return {
    async request<T>(method: string, path: string) {
      const res = await fetch(`${url}${path}`, { method });
      const text = await res.text();
      return { status: res.status, headers: res.headers, text, body: (text === '' ? undefined : JSON.parse(text)) as T };
    },
    close: () => new Promise<void>((ok) => http.close(() => ok())),
  };
}

interface ListedUser {
  id: string;
  shard_id: string;
}
interface UsersPage {
  items: ListedUser[];
  next_cursor: string | null;
}

/** Every user of the listing, page after page of `limit`, with the size of each page. */
async function everyPage(api: Awaited<ReturnType<typeof documentsApi>>, limit: number): Promise<{ ids: string[]; sizes: number[] }> {
  const ids: string[] = [];
  const sizes: number[] = [];
  let cursor: string | null = null;
  for (let pages = 0; pages < 50; pages += 1) {
    const page: Answer<UsersPage> = await api.request<UsersPage>('GET', `/api/v1/users?limit=${limit}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`);
    expect(page.status).toBe(200);
    ids.push(...page.body.items.map((u) => u.id));
    sizes.push(page.body.items.length);
    cursor = page.body.next_cursor;
    if (cursor === null) break;
  }
  return { ids, sizes };
}

describe('GET /users lists pages', () => {
  it('answers a full page of N users when N exist, though they all live on one shard, and a cursor leads through the rest', async () => {
    // Every user of the env lives on the shard that owns slot 700: the other shard has none.
    const users = keysInSlot(700, 7);
    const { from, source } = await sides(env, 700);
    await seedUsers(source, 700, users, 0);
    const api = await documentsApi();
    try {
      const first = await api.request<UsersPage>('GET', '/api/v1/users?limit=4');

      expect(first.body.items.map((u) => u.shard_id)).toEqual(Array(4).fill(from));
      expect(first.body.next_cursor).toEqual(expect.any(String));
      const all = await everyPage(api, 3);
      // One statement seeded them all (one created_at): the pages go on by id, each user once.
      expect(all).toEqual({ ids: [...users].sort(), sizes: [3, 3, 1] });
    } finally {
      await api.close();
    }
  });

  it('refuses a cursor it did not hand out, naming the parameter', async () => {
    const api = await documentsApi();
    try {
      const r = await api.request<{ invalid_params: { name: string; reason: string }[] }>('GET', '/api/v1/users?cursor=bm90LWEtY3Vyc29y');

      expect(r.status).toBe(400);
      expect(r.body.invalid_params).toEqual([{ name: 'query.cursor', reason: expect.stringContaining('next_cursor of an earlier page') }]);
    } finally {
      await api.close();
    }
  });
});

describe('GET /users while replicas lag a move', () => {
  it.each([
    ['has replayed the copy and its incoming fence', 'published'],
    ['has replayed none of the move', 'before'],
  ] as const)("lists a moved user when the source's replica says moved and the target's %s", async (_what, at) => {
    const slot = at === 'published' ? 701 : 702;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    // The target's replica: the target read in a snapshot exported at `at` (what a replica that
    // has replayed only that far shows); the source's replica is fresh (it says `moved`).
    const holder = await target.connect();
    let snapshot: string | undefined;
    const exportSnapshot = async (): Promise<void> => {
      await holder.query('begin isolation level repeatable read read only');
      snapshot = (await holder.query<{ s: string }>('select pg_export_snapshot() as s')).rows[0]?.s as string;
    };
    try {
      if (at === 'before') await exportSnapshot();
      const mover = env.mover({
        readerGraceMs: 0,
        async hook(point) {
          if (point === at) await exportSnapshot();
        },
      });
      expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
      const lagging = laggingReplicaReader(env.shards, to, () => snapshot as string);
      const api = await documentsApi(lagging);
      try {
        const users = await api.request<UsersPage>('GET', '/api/v1/users?limit=200');

        expect(users.body.items.filter((u) => u.id === user).map((u) => u.shard_id)).toEqual([to]);
      } finally {
        await api.close();
      }
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  });
});

describe('GET /users once replicas have replayed the moves', () => {
  it('reads every shard on its replicas only, though units have moved (the primaries are for units no replica owns)', async () => {
    const slot = 704;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 0);
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    const asked: boolean[] = [];
    const recording: Pick<ReplicaReader, 'query'> = {
      async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = [], options?: { readonly primary?: boolean }) {
        asked.push(options?.primary === true);
        return primariesAsReplicas.query<R>(shardId, text, values);
      },
    };
    const api = await documentsApi(recording);
    try {
      const users = await api.request<UsersPage>('GET', '/api/v1/users?limit=200');

      expect(users.body.items.filter((u) => u.id === user).map((u) => u.shard_id)).toEqual([to]);
      expect(asked).toEqual([false, false]);
    } finally {
      await api.close();
    }
  });
});

describe('HEAD on the documents API', () => {
  it.each(['/api/v1/users?limit=2', '/api/v1/users/{user}', '/api/v1/users/{user}/documents', '/api/v1/documents/{doc}'])('answers HEAD %s as its GET, without the body', async (template) => {
    const [user] = keysInSlot(703, 1) as [string];
    const { source } = await sides(env, 703);
    await seedUsers(source, 703, [user], 1);
    const doc = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1', [user])).rows[0]?.id as string;
    const path = template.replace('{user}', user).replace('{doc}', doc);
    const api = await documentsApi();
    try {
      const get = await api.request('GET', path);
      const head = await api.request('HEAD', path);

      expect({ status: head.status, type: head.headers.get('content-type'), body: head.text }).toEqual({ status: get.status, type: 'application/json', body: '' });
      expect(get.status).toBe(200);
      expect(head.headers.get('content-length')).toBe(String(Buffer.byteLength(get.text)));
    } finally {
      await api.close();
    }
  });

  it('names HEAD among the allowed methods of a GET route', async () => {
    const api = await documentsApi();
    try {
      const r = await api.request('DELETE', '/api/v1/users');

      expect(r.status).toBe(405);
      expect(r.headers.get('allow')).toBe('GET, HEAD, POST');
    } finally {
      await api.close();
    }
  });
});
