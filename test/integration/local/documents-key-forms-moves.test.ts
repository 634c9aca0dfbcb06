/**
 * The documents API with every spelling of a key (docs/sharding-spec.md section 1: upper case,
 * braces, no hyphens, `urn:uuid:`, percent-encoded), before and after the owner's unit moves, by
 * its slot and then by a directory pin: every read route finds the same rows, a read-your-writes
 * token of the first shard still sees its write, and an `Idempotency-Key` retry spelled another
 * way answers the first document on the owner's new shard without creating a second.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

let api: DocumentsApi;
beforeAll(async () => {
  api = await startDocumentsApi();
}, 60_000);
afterAll(async () => {
  await api?.stop();
});

/** Every accepted spelling of a canonical UUID, as a path segment or query value. */
function spellings(id: string): string[] {
  const upper = id.toUpperCase();
  const hex = id.replace(/-/g, '');
  return [id, upper, encodeURIComponent(`{${upper}}`), `{${id}}`, hex, `urn:uuid:${upper}`, encodeURIComponent(`urn:uuid:${id}`), `${hex.slice(0, 4)}-${hex.slice(4, 8)}-${hex.slice(8)}`];
}

const other = (shardId: string): string => (shardId === 'shard_001' ? 'shard_002' : 'shard_001');

interface Seen {
  readonly user: number[];
  readonly list: string[][];
  readonly doc: Array<[number, string | undefined]>;
}

/** Runs `tasks` (reads) eight at a time, fewer than a shard pool's connections: answers in the tasks' order. */
async function inParallel<T>(tasks: ReadonlyArray<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array<T>(tasks.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < tasks.length; i = next++) out[i] = await (tasks[i] as () => Promise<T>)();
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return out;
}

/** Every read route, with every spelling of the owner and of the document, with `token` when given. */
async function readAll(owner: string, doc: string, token?: string): Promise<Seen> {
  const headers: Record<string, string> = token === undefined ? {} : { 'x-read-after': token };
  const user = await inParallel(spellings(owner).map((o) => async () => (await api.request('GET', `/api/v1/users/${o}`, undefined, headers)).status));
  const list = await inParallel(
    spellings(owner).map((o) => async () => {
      const l = await api.request('GET', `/api/v1/users/${o}/documents`, undefined, headers);
      return l.status === 200 ? (l.body.items as Array<{ id: string }>).map((d) => d.id) : [`status ${l.status}`];
    }),
  );
  const found = await inParallel(
    spellings(doc).flatMap((d) =>
      ['', ...spellings(owner).map((o) => `?owner=${o}`)].map((q) => async (): Promise<[number, string | undefined]> => {
        const r = await api.request('GET', `/api/v1/documents/${d}${q}`, undefined, headers);
        return [r.status, r.body?.id as string | undefined];
      }),
    ),
  );
  return { user, list, doc: found };
}

function expectAllFound(seen: Seen, doc: string): void {
  expect(new Set(seen.user)).toEqual(new Set([200]));
  for (const l of seen.list) expect(l).toEqual([doc]);
  for (const d of seen.doc) expect(d).toEqual([200, doc]);
}

describe('documents API: every spelling of a key, across a slot move and a directory move', () => {
  it('refuses spellings PostgreSQL refuses too (spaces, a lone brace) with 400 naming the field', async () => {
    const id = randomUUID();
    const bad = await Promise.all([` ${id}`, `${id}%20`, `%7B${id}`, `${id.slice(0, 35)}`].map((s) => api.request('GET', `/api/v1/users/${s}`)));
    expect(bad.map((r) => r.status)).toEqual([400, 400, 400, 400]);
    for (const r of bad) expect(r.body.invalid_params[0].name).toBe('path.id');
  });

  it('finds the user and the document by every spelling before and after both moves, with the first token, and replays a key spelled by another owner spelling', async () => {
    const owner = await api.newUser('spellings');
    const body = { owner_id: `{${owner.id.toUpperCase()}}`, title: 'spelled', content: { n: 1 } };
    const created = await api.request('POST', '/api/v1/documents', body, { 'idempotency-key': 'spell-1' });
    expect(created.status).toBe(201);
    const doc = String(created.body.id);
    const token = String(created.headers.get('x-read-token'));
    expectAllFound(await readAll(owner.id, doc, token), doc);

    // The owner's slot moves to the other shard.
    const slot = (await api.primary(owner.shardId).query<{ slot: number }>('select slot from users where id = $1', [owner.id])).rows[0]?.slot;
    if (slot === undefined) throw new Error('the owner has no row');
    const mover = api.sharding.mover;
    const second = other(owner.shardId);
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to: second, createdBy: 'test' })).id)).state).toBe('done');
    expectAllFound(await readAll(owner.id, doc, token), doc);
    expectAllFound(await readAll(owner.id, doc), doc);
    const replay1 = await api.request('POST', '/api/v1/documents', { ...body, owner_id: `urn:uuid:${owner.id}` }, { 'idempotency-key': '"spell-1"' });
    expect({ status: replay1.status, id: replay1.body.id, shard: replay1.body.shard_id, replayed: replay1.headers.get('idempotent-replayed') }).toEqual({
      status: 201,
      id: doc,
      shard: second,
      replayed: 'true',
    });

    // Then the owner alone is pinned back to the first shard by a directory move named in upper case.
    const pin = await mover.plan({ kind: 'directory', key: owner.id.toUpperCase(), to: owner.shardId, createdBy: 'test' });
    expect((await mover.run(pin.id)).state).toBe('done');
    const token2 = String(replay1.headers.get('x-read-token'));
    expectAllFound(await readAll(owner.id, doc, token), doc);
    expectAllFound(await readAll(owner.id, doc, token2), doc);
    const replay2 = await api.request('POST', '/api/v1/documents', { ...body, owner_id: owner.id.replace(/-/g, '') }, { 'idempotency-key': 'spell-1' });
    expect({ status: replay2.status, id: replay2.body.id, shard: replay2.body.shard_id }).toEqual({ status: 201, id: doc, shard: owner.shardId });

    // One document and one key record, both on the owner's shard now, none left on the other.
    const count = async (shard: string, table: string): Promise<number> =>
      (await api.primary(shard).query<{ n: number }>(`select count(*)::int as n from ${table} where owner_id = $1`, [owner.id])).rows[0]?.n ?? -1;
    expect([await count(owner.shardId, 'documents'), await count(owner.shardId, 'document_keys')]).toEqual([1, 1]);
    expect([await count(second, 'documents'), await count(second, 'document_keys')]).toEqual([0, 0]);
  }, 60_000);
});
