/**
 * What the documents API tells a client whose request failed on the shard for another reason
 * than its deadline: a connection reset (a crashed or failed-over server) before or after a
 * write's COMMIT was sent, a COMMIT the server refused, a read an operator cancelled. The answer
 * must say what is known: a write that may have been committed is a 504 with a `check`, never a
 * retryable 503; a refused COMMIT wrote nothing; a cancelled read is not blamed on the deadline.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { SilentRelay } from '../sharding/fixtures/silent-relay.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

const DEADLINE_MS = 2000;
let api: DocumentsApi;
beforeAll(async () => {
  api = await startDocumentsApi(() => undefined, { relays: true, deadlineMs: DEADLINE_MS });
}, 60_000);
afterEach(() => {
  for (const relay of api.relays.values()) relay.heal();
});
afterAll(async () => {
  await api?.stop();
});

const relayOf = (shardId: string): SilentRelay => api.relayOf(shardId);
const newUser = (): Promise<{ id: string; shardId: string }> => api.newUser('Outcome');
const documentsOf = (owner: { id: string; shardId: string }): Promise<number> => api.documentsOf(owner);
/**
 * Waits until the shard has ended the reset connection's session (it runs what it was sent,
 * then sees the connection closed): no other session in a transaction or running a statement.
 */
const sessionsSettled = async (shardId: string): Promise<number> => {
  const direct = new pg.Client({ connectionString: api.server.urlFor(shardId) });
  await direct.connect();
  try {
    let busy = -1;
    for (let i = 0; i < 100 && busy !== 0; i++) {
      if (i > 0) await delay(20);
      const { rows } = await direct.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where datname = current_database() and backend_type = 'client backend' and state <> 'idle' and pid <> pg_backend_pid()",
      );
      busy = rows[0]?.n ?? -1;
    }
    return busy;
  } finally {
    await direct.end();
  }
};
type Answer = { readonly status: number; readonly type: string; readonly retryAfter: string | null; readonly check: unknown; readonly detail: string };
const answerOf = async (method: string, path: string, body?: unknown): Promise<Answer> => {
  const r = await api.request(method, path, body);
  return { status: r.status, type: String(r.body?.type), retryAfter: r.headers.get('retry-after'), check: r.body?.check, detail: String(r.body?.detail) };
};

describe('a write whose connection is reset', () => {
  it.each([
    { when: 'after its COMMIT reached the server (the write is committed)', delivered: true, written: 1, checked: 200 },
    { when: 'as its COMMIT was sent, before it reached the server (nothing is committed)', delivered: false, written: 0, checked: 404 },
  ])('answers 504 outcome-unknown, not a retryable 503, when reset $when; its check tells which', async ({ delivered, written, checked }) => {
    const owner = await newUser();
    relayOf(owner.shardId).resetAt('commit\u0000', { delivered });
    const answer = await answerOf('POST', '/api/v1/documents', { owner_id: owner.id, title: 'reset at the end' });
    relayOf(owner.shardId).heal();
    expect(await sessionsSettled(owner.shardId)).toBe(0);
    const check = typeof answer.check === 'string' ? (await api.request('GET', answer.check)).status : 'nowhere to look';

    expect({ status: answer.status, type: answer.type, retryAfter: answer.retryAfter, written: await documentsOf(owner), checked: check }).toEqual({
      status: 504,
      type: 'https://ca-dms-scaling.dev/problems/outcome-unknown',
      retryAfter: null,
      written,
      checked,
    });
  }, 30_000);

  it('answers a retryable 503 with Retry-After (nothing written) when reset before its COMMIT was sent', async () => {
    const owner = await newUser();
    relayOf(owner.shardId).resetAt('insert into documents', { delivered: true });
    const answer = await answerOf('POST', '/api/v1/documents', { owner_id: owner.id, title: 'reset midway' });
    relayOf(owner.shardId).heal();
    expect(await sessionsSettled(owner.shardId)).toBe(0);

    expect({ status: answer.status, type: answer.type, retryAfter: answer.retryAfter, written: await documentsOf(owner) }).toEqual({ status: 503, type: 'about:blank', retryAfter: '1', written: 0 });
  }, 30_000);
});

describe('a write whose COMMIT was acknowledged, then its connection reset', () => {
  it('answers 201 with a read token that finds it, not 504: the write is known to be committed', async () => {
    const owner = await newUser();
    // The reset comes as the read token's query is sent, after the COMMIT's answer arrived.
    relayOf(owner.shardId).resetAt('pg_current_wal_insert_lsn', { delivered: true });
    const answer = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'committed, token lost' });
    relayOf(owner.shardId).heal();
    const token = answer.headers.get('x-read-token');
    const read = token === null ? undefined : await api.request('GET', `/api/v1/documents/${String(answer.body?.id)}?owner=${owner.id}`, undefined, { 'x-read-after': token });

    expect({ status: answer.status, type: answer.body?.type, token, written: await documentsOf(owner), read: read?.status }).toEqual({
      status: 201,
      type: undefined,
      token: expect.stringMatching(new RegExp(`^${owner.shardId}@`)) as unknown as string,
      written: 1,
      read: 200,
    });
  }, 30_000);
});

describe('a write whose COMMIT the server refuses', () => {
  it('answers 503 with nothing written, not 504: a deferred constraint failing at commit rolls the write back', async () => {
    const owner = await newUser();
    const shard = new pg.Client({ connectionString: api.server.urlFor(owner.shardId) });
    await shard.connect();
    try {
      await shard.query(`create or replace function refuse_at_commit() returns trigger language plpgsql as $$
        begin raise exception 'refused at commit' using errcode = 'unique_violation'; end $$`);
      await shard.query(`create constraint trigger refuse_at_commit after insert on documents deferrable initially deferred for each row
        when (new.title = 'refused at commit') execute function refuse_at_commit()`);
      const answer = await answerOf('POST', '/api/v1/documents', { owner_id: owner.id, title: 'refused at commit' });

      expect({ status: answer.status, type: answer.type, retryAfter: answer.retryAfter, written: await documentsOf(owner) }).toEqual({ status: 503, type: 'about:blank', retryAfter: '1', written: 0 });
    } finally {
      await shard.query('drop trigger if exists refuse_at_commit on documents');
      await shard.end();
    }
  }, 30_000);
});

describe('a read an operator cancels before its deadline', () => {
  it.each([
    { read: "a user (withShardRead, on the owner's shard)", table: 'users', path: (u: { id: string }) => `/api/v1/users/${u.id}` },
    { read: 'a document by id (every shard, through the replica reader)', table: 'documents', path: () => `/api/v1/documents/${randomUUID()}` },
  ])('answers $read with a retryable 503 that says it was cancelled, not that the deadline passed', async ({ table, path }) => {
    const owner = await newUser();
    const shard = new pg.Pool({ connectionString: api.server.urlFor(owner.shardId), max: 2 });
    const holder = await shard.connect();
    try {
      // The read waits on a lock on its table; an operator cancels it (pg_cancel_backend).
      await holder.query('begin');
      await holder.query(`lock table ${table} in access exclusive mode`);
      const started = Date.now();
      const answer = answerOf('GET', path(owner)).then((a) => ({ ...a, ms: Date.now() - started }));
      let cancelled = false;
      for (let i = 0; i < 40 && !cancelled; i++) {
        await delay(25);
        const { rows } = await shard.query<{ ok: boolean }>(
          `select pg_cancel_backend(pid) as ok from pg_stat_activity where wait_event_type = 'Lock' and query ~* 'from ${table}' and pid <> pg_backend_pid()`,
        );
        cancelled = rows.some((r) => r.ok);
      }
      const got = await answer;
      expect({ cancelled, status: got.status, type: got.type, retryAfter: got.retryAfter, detail: got.detail, beforeDeadline: got.ms < DEADLINE_MS }).toEqual({
        cancelled: true,
        status: 503,
        type: 'about:blank',
        retryAfter: '1',
        detail: 'the shard cancelled the read before its deadline; retry',
        beforeDeadline: true,
      });
    } finally {
      await holder.query('rollback');
      holder.release();
      await shard.end();
    }
  }, 30_000);
});
