/**
 * A read past the request's deadline answers as a write past it does: a retryable 503 (Retry-After,
 * problem type about:blank) saying the shard did not answer within the deadline, whichever way the
 * read went (the owner's shard through `withShardRead`, every shard through the replica reader, a
 * list, with and without X-Read-After). The statement is cancelled at the deadline by the read's
 * own cancel request (57014); the reader tells that apart from another session's cancel
 * (request-outcomes.test.ts) and reports it as the deadline's (`DeadlinePassedError`), not as the
 * driver's raw 57014. (h139, issue #15)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeadlinePassedError } from '../../../functions/adapters/postgres/deadline.js';
import { ShardReadError } from '../../../functions/adapters/postgres/read-transaction.js';
import { ShardWriteError } from '../../../functions/adapters/postgres/write-transaction.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

const DEADLINE_MS = 1000;
let api: DocumentsApi;
const failures: unknown[] = [];
beforeAll(async () => {
  api = await startDocumentsApi((error) => failures.push(error), { deadlineMs: DEADLINE_MS });
}, 60_000);
afterAll(async () => {
  await api?.stop();
});

type Answer = { readonly status: number; readonly type: string; readonly retryAfter: string | null; readonly detail: string };
const answerOf = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> => {
  const r = await api.request(method, path, body, headers);
  return { status: r.status, type: String(r.body?.type), retryAfter: r.headers.get('retry-after'), detail: String(r.body?.detail) };
};
/** What the failure handed to `onError` was: the deadline's own error, or something else (named). */
const kindOf = (error: unknown): string =>
  error instanceof DeadlinePassedError || ((error instanceof ShardReadError || error instanceof ShardWriteError) && error.reason === 'deadline-exceeded')
    ? 'the deadline'
    : `${error instanceof Error ? error.name : typeof error} ${String((error as { code?: unknown } | null)?.code ?? '')}`;

describe("a read past the request's deadline (its statement waits on a lock)", () => {
  it.each([
    { read: 'a user', table: 'users', path: (u: { id: string }) => `/api/v1/users/${u.id}`, token: false },
    { read: 'a user, with X-Read-After', table: 'users', path: (u: { id: string }) => `/api/v1/users/${u.id}`, token: true },
    { read: "a user's documents", table: 'documents', path: (u: { id: string }) => `/api/v1/users/${u.id}/documents`, token: false },
    { read: 'a document by id and owner', table: 'documents', path: (u: { id: string; doc: string }) => `/api/v1/documents/${u.doc}?owner=${u.id}`, token: false },
    { read: 'a document by id (every shard, through the replica reader)', table: 'documents', path: (u: { doc: string }) => `/api/v1/documents/${u.doc}`, token: false },
    { read: 'a document by id (every shard), with X-Read-After', table: 'documents', path: (u: { doc: string }) => `/api/v1/documents/${u.doc}`, token: true },
    { read: 'the list of users (every shard, through the replica reader)', table: 'users', path: () => '/api/v1/users?limit=5', token: false },
  ])('answers $read with the retryable 503 of a deadline, as a write does', async ({ table, path, token }) => {
    const owner = await api.newUser('Deadline');
    const created = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'held' });
    if (created.status !== 201) throw new Error(`creating a document answered ${created.status}`);
    const readToken = created.headers.get('x-read-token') ?? '';
    const holder = await api.primary(owner.shardId).connect();
    failures.length = 0;
    let answer: Answer;
    try {
      await holder.query('begin');
      await holder.query(`lock table ${table} in access exclusive mode`);
      answer = await answerOf('GET', path({ id: owner.id, doc: String(created.body.id) }), undefined, token ? { 'x-read-after': readToken } : {});
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    expect({ answer, failures: failures.map(kindOf) }).toEqual({
      answer: { status: 503, type: 'about:blank', retryAfter: '1', detail: `the shard did not answer the read within the request's ${DEADLINE_MS} ms deadline; retry` },
      failures: ['the deadline'],
    });
  }, 30_000);

  it('answers a write past its deadline so (the same status, type and Retry-After)', async () => {
    const owner = await api.newUser('Deadline');
    const holder = await api.primary(owner.shardId).connect();
    failures.length = 0;
    let answer: Answer;
    try {
      await holder.query('begin');
      await holder.query('lock table documents in access exclusive mode');
      answer = await answerOf('POST', '/api/v1/documents', { owner_id: owner.id, title: 'blocked' });
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    expect({ answer, failures: failures.map(kindOf) }).toEqual({
      answer: { status: 503, type: 'about:blank', retryAfter: '1', detail: `the shard did not answer within the request's ${DEADLINE_MS} ms deadline; nothing was written; retry` },
      failures: ['the deadline'],
    });
  }, 30_000);
});
