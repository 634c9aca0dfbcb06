import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ShardWriteError } from '../../../functions/adapters/postgres/write-transaction.js';
import type { SilentRelay } from '../sharding/fixtures/silent-relay.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

describe('write deadlines stop the database too', () => {
  let api: DocumentsApi;
  beforeAll(async () => {
    api = await startDocumentsApi();
  });
  afterAll(async () => {
    await api?.stop();
  });

  it('cancels a statement past its deadline in PostgreSQL, leaving nothing running', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const write = api.sharding.writer.withShardWrite(key, ({ client }) => client.query('select pg_sleep(30) as slow_write_under_test'), { deadlineMs: 300 });
    await expect(write).rejects.toSatisfy((e: unknown) => e instanceof ShardWriteError && e.reason === 'deadline-exceeded');
    const { rows } = await api
      .primary(shardId)
      .query<{ n: number }>("select count(*)::int as n from pg_stat_activity where state = 'active' and query like '%slow_write_under_test%' and pid <> pg_backend_pid()");
    expect(rows[0]?.n).toBe(0);
  });

  it('does not report a write committed when its body swallowed the cancellation (PostgreSQL rolled it back)', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    // A body that handles a failed statement itself: the transaction is aborted, and PostgreSQL
    // answers its COMMIT with ROLLBACK, not an error.
    const outcome = await api.sharding.writer
      .withShardWrite(
        key,
        async ({ client, slot }) => {
          await client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [key, slot, `${key}@example.org`, 'swallowed']);
          try {
            await client.query('select pg_sleep(5)');
          } catch {
            // e.g. an optional refinement of the write, given up
          }
          return 'written';
        },
        { deadlineMs: 300 },
      )
      .then(
        (r) => `committed: ${String(r.value)}`,
        (e: unknown) => `failed: ${e instanceof ShardWriteError ? e.reason : String(e)}`,
      );
    const { rows } = await api.primary(shardId).query<{ n: number }>('select count(*)::int as n from users where id = $1', [key]);
    expect({ outcome: outcome.split(':')[0], rows: rows[0]?.n, detail: outcome }).toMatchObject({ outcome: 'failed', rows: 0 });
  });

  it('cancels a lock wait past its deadline', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const holder = await api.primary(shardId).connect();
    try {
      await holder.query('begin');
      await holder.query('lock table documents in access exclusive mode');
      const write = api.sharding.writer.withShardWrite(key, ({ client }) => client.query('select count(*) from documents'), { deadlineMs: 300 });
      await expect(write).rejects.toSatisfy((e: unknown) => e instanceof ShardWriteError && e.reason === 'deadline-exceeded');
    } finally {
      await holder.query('rollback');
      holder.release();
    }
  });
});

/**
 * The documents API over shard primaries that go silent (a black-holed path: no answer, no
 * reset). Every request carries the API's deadline: it must end within it (and the client side's
 * grace) with an answer that says whether the client may retry, never hang.
 */
describe('the documents API with a silent shard primary', () => {
  const DEADLINE_MS = 1000;
  /** The client's grace (250 ms) past the deadline, and room for a busy machine. */
  const WITHIN_MS = DEADLINE_MS + 600;
  let api: DocumentsApi;
  beforeAll(async () => {
    api = await startDocumentsApi(() => undefined, { relays: true, deadlineMs: DEADLINE_MS });
  });
  afterEach(() => {
    for (const relay of api.relays.values()) relay.heal();
  });
  afterAll(async () => {
    await api?.stop();
  });

  const relayOf = (shardId: string): SilentRelay => {
    const relay = api.relays.get(shardId);
    if (!relay) throw new Error(`no relay for ${shardId}`);
    return relay;
  };
  const newUser = async (): Promise<{ id: string; shardId: string }> => {
    const r = await api.request('POST', '/api/v1/users', { email: `${randomUUID()}@example.org`, display_name: 'Silent' });
    expect(r.status).toBe(201);
    return { id: String(r.body.id), shardId: String(r.body.shard_id) };
  };
  type Answer = { readonly status: number; readonly type: string; readonly retryAfter: string | null; readonly check: unknown; readonly ms: number };
  const timed = async (method: string, path: string, body?: unknown): Promise<Answer | 'still waiting after 8 s'> => {
    const started = Date.now();
    const answer = api.request(method, path, body).then((r): Answer => ({ status: r.status, type: String(r.body?.type), retryAfter: r.headers.get('retry-after'), check: r.body?.check, ms: Date.now() - started }));
    return Promise.race([answer, delay(8000).then(() => 'still waiting after 8 s' as const)]);
  };
  /** The owner's documents, read on the shard itself (not through the relay). */
  const documentsOf = async (owner: { id: string; shardId: string }): Promise<number> => {
    const direct = new pg.Pool({ connectionString: api.server.urlFor(owner.shardId), max: 1 });
    try {
      const { rows } = await direct.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [owner.id]);
      return rows[0]?.n ?? -1;
    } finally {
      await direct.end();
    }
  };

  it('answers a write that reached no answer by its deadline with a retryable 503, and nothing is written', async () => {
    const owner = await newUser();
    relayOf(owner.shardId).blackhole();
    const answer = await timed('POST', '/api/v1/documents', { owner_id: owner.id, title: 'never written' });
    relayOf(owner.shardId).heal();

    expect({ answer, written: await documentsOf(owner) }).toMatchObject({ answer: { status: 503, type: 'about:blank', retryAfter: expect.any(String) as unknown as string }, written: 0 });
    expect(answer !== 'still waiting after 8 s' && answer.ms).toBeLessThan(WITHIN_MS);
  }, 30_000);

  it('answers a write whose commit went unanswered with a 504 saying the outcome is unknown, not a retry', async () => {
    const owner = await newUser();
    // The commit reaches the server; its answer, and everything after it, does not come back.
    relayOf(owner.shardId).blackholeAfter('commit\u0000');
    const answer = await timed('POST', '/api/v1/documents', { owner_id: owner.id, title: 'committed, unconfirmed' });
    relayOf(owner.shardId).heal();
    // Where the answer says to look, once the shard answers again.
    const checked = answer !== 'still waiting after 8 s' && typeof answer.check === 'string' ? (await api.request('GET', answer.check)).status : 'nowhere to look';

    expect({ answer, written: await documentsOf(owner), checked }).toMatchObject({
      answer: { status: 504, type: 'https://ca-dms-scaling.dev/problems/outcome-unknown', retryAfter: null },
      written: 1,
      checked: 200,
    });
    expect(answer !== 'still waiting after 8 s' && answer.ms).toBeLessThan(WITHIN_MS);
  }, 30_000);

  it.each([
    { read: "a user (the owner's shard)", path: (u: { id: string }) => `/api/v1/users/${u.id}` },
    { read: "a user's documents", path: (u: { id: string }) => `/api/v1/users/${u.id}/documents` },
    { read: 'a document by id on every shard', path: () => `/api/v1/documents/${randomUUID()}` },
  ])('answers a read of $read by its deadline with a retryable 503', async ({ path }) => {
    const owner = await newUser();
    relayOf(owner.shardId).blackhole();
    const answer = await timed('GET', path(owner));

    expect(answer).toMatchObject({ status: 503, retryAfter: expect.any(String) as unknown as string });
    expect(answer !== 'still waiting after 8 s' && answer.ms).toBeLessThan(WITHIN_MS);
  }, 30_000);
});
