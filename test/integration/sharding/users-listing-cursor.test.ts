/**
 * GET /api/v1/users's cursor, checked with generated listings: users sharing a created_at to the
 * microsecond, every page size from 1 to 200, users inserted between pages, and a cursor whose
 * user has been deleted since. The pages' order is PostgreSQL's `order by created_at, id`.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocumentsRoute } from '../../../functions/local/documents-api.js';
import type { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let api: { get(path: string): Promise<{ status: number; body: UsersPage }>; close(): Promise<void> };
beforeAll(async () => {
  env = await startMoveEnv();
  // The env's primaries as the documents API's replica reads (these shards have no replicas).
  const reader: Pick<ReplicaReader, 'query'> = {
    async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = []) {
      const r = await (env.shards.get(shardId) as pg.Pool).query<R>(text, values);
      return { rows: r.rows, rowCount: r.rowCount, servedBy: `${shardId}/primary` };
    },
  };
  const route = createDocumentsRoute({ writer: env.writer, reader, reads: env.reader, shardIds: [...env.shards.keys()] });
  const http = createServer((req, res) => void Promise.resolve(route(req, res)).then((handled) => (handled ? undefined : res.writeHead(404).end())));
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  api = {
    async get(path) {
      const res = await fetch(`${url}${path}`);
      return { status: res.status, body: (await res.json()) as UsersPage };
    },
    close: () => new Promise<void>((ok) => http.close(() => ok())),
  };
}, 120_000);
afterAll(async () => {
  await api?.close();
  await env?.stop();
});

interface UsersPage {
  items: { id: string; shard_id: string }[];
  next_cursor: string | null;
}
interface Seeded {
  id: string;
  /** Microseconds after a fixed instant: few distinct values, so many users share one. */
  micros: number;
}

const BASE = '2026-03-01T00:00:00Z';

async function reset(): Promise<void> {
  for (const pool of env.shards.values()) await pool.query('truncate users cascade');
}

/** Inserts each user on the shard that owns its slot, at BASE + micros. */
async function insert(users: readonly Seeded[]): Promise<void> {
  for (const u of users) {
    const slot = slotOf(u.id);
    const pool = env.shards.get(await env.ownerOf(slot)) as pg.Pool;
    await pool.query(
      `insert into users (id, slot, email, display_name, created_at) values ($1, $2, $5, 'cursor', $3::timestamptz + $4 * interval '1 microsecond')`,
      [u.id, slot, BASE, u.micros, `${u.id}@example.com`],
    );
  }
}

/** The order PostgreSQL gives (created_at, id) over the users of every shard. */
async function postgresOrder(users: readonly Seeded[]): Promise<string[]> {
  const pool = env.shards.values().next().value as pg.Pool;
  const { rows } = await pool.query<{ id: string }>(
    `select id::text from unnest($1::uuid[], $2::int[]) as u(id, micros) order by $3::timestamptz + micros * interval '1 microsecond', id`,
    [users.map((u) => u.id), users.map((u) => u.micros), BASE],
  );
  return rows.map((r) => r.id);
}

const page = (limit: number, cursor: string | null): string => `/api/v1/users?limit=${limit}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`;

const seededUsers = fc.uniqueArray(
  fc.record({ id: fc.uuid({ version: 4 }), micros: fc.integer({ min: 0, max: 3 }) }),
  { minLength: 0, maxLength: 40, selector: (u) => u.id },
);

describe('GET /users cursor (generated)', () => {
  it('lists every user exactly once across its pages, in PostgreSQL order of (created_at, id), for any page size from 1 to 200 and users sharing a microsecond', async () => {
    await fc.assert(
      fc.asyncProperty(seededUsers, fc.integer({ min: 1, max: 200 }), async (users, limit) => {
        await reset();
        await insert(users);
        const listed: string[] = [];
        let cursor: string | null = null;
        for (let pages = 0; pages <= users.length + 1; pages++) {
          const answer = await api.get(page(limit, cursor));
          expect(answer.status).toBe(200);
          expect(answer.body.items.length).toBe(Math.min(limit, users.length - listed.length));
          listed.push(...answer.body.items.map((u) => u.id));
          cursor = answer.body.next_cursor;
          if (cursor === null) break;
        }
        expect(cursor).toBeNull();
        expect(listed).toEqual(await postgresOrder(users));
      }),
      { numRuns: 15 },
    );
  }, 120_000);

  it("agrees with PostgreSQL's uuid order (bytewise) when ids differ in every position", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(fc.uuid({ version: 4 }), { minLength: 2, maxLength: 30 }), async (ids) => {
        await reset();
        const users = ids.map((id) => ({ id, micros: 0 }));
        await insert(users);
        const answer = await api.get(page(200, null));
        expect(answer.body.items.map((u) => u.id)).toEqual(await postgresOrder(users));
        expect(answer.body.items.map((u) => u.id)).toEqual([...ids].sort());
      }),
      { numRuns: 15 },
    );
  }, 120_000);

  it('goes on after a cursor whose user has been deleted since, and lists users inserted between pages once, never one twice', async () => {
    await fc.assert(
      fc.asyncProperty(
        seededUsers.filter((u) => u.length >= 2),
        seededUsers,
        fc.integer({ min: 1, max: 5 }),
        async (users, added, limit) => {
          const fresh = added.filter((a) => !users.some((u) => u.id === a.id));
          await reset();
          await insert(users);
          const order = await postgresOrder(users);
          const first = await api.get(page(limit, null));
          const seen = first.body.items.map((u) => u.id);
          if (first.body.next_cursor === null) return;
          // The user the cursor names is deleted, and new users come, before the next page.
          const lastId = seen.at(-1) as string;
          for (const pool of env.shards.values()) await pool.query('delete from users where id = $1', [lastId]);
          await insert(fresh);
          let cursor: string | null = first.body.next_cursor;
          for (let pages = 0; cursor !== null && pages <= users.length + fresh.length + 1; pages++) {
            const answer = await api.get(page(limit, cursor));
            expect(answer.status).toBe(200);
            seen.push(...answer.body.items.map((u) => u.id));
            cursor = answer.body.next_cursor;
          }
          expect(cursor).toBeNull();
          expect(new Set(seen).size).toBe(seen.length);
          // Every user there from the start is listed, in order; those added come in their place after the cursor.
          expect(seen.filter((id) => order.includes(id))).toEqual(order);
          const after = await postgresOrder([...users.filter((u) => order.indexOf(u.id) > order.indexOf(lastId)), ...fresh]);
          const positionOfLast = users.find((u) => u.id === lastId) as Seeded;
          const expectedTail = after.filter((id) => {
            const u = [...users, ...fresh].find((x) => x.id === id) as Seeded;
            return u.micros > positionOfLast.micros || (u.micros === positionOfLast.micros && id > lastId);
          });
          expect(seen.slice(first.body.items.length)).toEqual(expectedTail);
        },
      ),
      { numRuns: 12 },
    );
  }, 120_000);
});
