/**
 * A statement ended by the session's own `statement_timeout` (a role's default, `ALTER ROLE ... IN
 * DATABASE ... SET statement_timeout = '50ms'`, or the request's own code's `SET LOCAL`), shorter
 * than what was left of the request's deadline, is not the request's deadline: nothing the caller
 * asked for ended, a setting did. The writer, `withShardRead` and the replica reader tell it alike
 * (`StatementTimeoutError`, deadline.ts, naming the setting; reason `cancelled` on the writer's and
 * `withShardRead`'s errors), and the API answers it with the 503 and Retry-After it answered before,
 * saying the shard cancelled the request before its deadline (not that the deadline passed).
 *
 * Where the request's transaction is held to the deadline (a write, a read through
 * `withShardRead`), its `SET LOCAL statement_timeout` of the time left replaces the role's, so the
 * role's never fires there: the slow statement runs to the deadline and is the deadline's. The
 * replica reader's lone statement (`ReplicaReader.query`: no transaction of its own) runs under the
 * role's. (h144, issue #15: the replica reader's raw 57014 was logged, and answered, as the
 * deadline's, 60 ms into a 1.5 s deadline; a write body's own SET LOCAL was `deadline-exceeded`.)
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeadlinePassedError, StatementTimeoutError } from '../../../functions/adapters/postgres/deadline.js';
import { ShardReadError } from '../../../functions/adapters/postgres/read-transaction.js';
import { ShardWriteError } from '../../../functions/adapters/postgres/write-transaction.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

const DEADLINE_MS = 1500;
const SHARDS = ['shard_001', 'shard_002'] as const;
let api: DocumentsApi;
const failures: unknown[] = [];
beforeAll(async () => {
  api = await startDocumentsApi((error) => failures.push(error), { deadlineMs: DEADLINE_MS });
}, 60_000);
afterAll(async () => {
  await api?.stop();
});

/** What a failure was: the deadline's, the session's own statement_timeout (its message naming the setting), or something else (named). */
const kindOf = (error: unknown): string => {
  const own = error instanceof StatementTimeoutError ? error : (error as { cause?: unknown } | null)?.cause;
  if (own instanceof StatementTimeoutError) return own.message.includes('statement_timeout') && (error === own || (error as ShardWriteError | ShardReadError).reason === 'cancelled') ? 'the own statement_timeout' : `misnamed: ${own.message}`;
  if (error instanceof DeadlinePassedError || ((error instanceof ShardReadError || error instanceof ShardWriteError) && error.reason === 'deadline-exceeded')) return 'the deadline';
  return `${error instanceof Error ? error.name : typeof error} ${String((error as { code?: unknown } | null)?.code ?? '')} ${error instanceof Error ? error.message : ''}`;
};

/** Sets (or, with null, resets) the login's statement_timeout in both shard databases, and closes the pools' idle connections so that the next ones take it. */
async function roleStatementTimeout(value: string | null): Promise<void> {
  const admin = api.primary('shard_001');
  for (const db of SHARDS) await admin.query(value === null ? `alter role current_user in database ${db} reset statement_timeout` : `alter role current_user in database ${db} set statement_timeout = '${value}'`);
  const { rows } = await admin.query<{ pid: number }>("select pid from pg_stat_activity where datname like 'shard_%' and pid <> pg_backend_pid() and state = 'idle'");
  // Waits for each to exit (pg_terminate_backend's timeout), then for the pools to hear of it: a
  // connection lent before its 'error' arrived would fail the next request.
  for (const { pid } of rows) await admin.query('select pg_terminate_backend($1, 5000)', [pid]);
  await new Promise((resolve) => setTimeout(resolve, 300));
}

type Answer = { readonly status: number; readonly retryAfter: string | null; readonly detail: string };

describe("a role's own statement_timeout (50 ms) shorter than the request's deadline, with a slow statement (a lock held)", () => {
  beforeAll(async () => {
    await roleStatementTimeout('50ms');
  }, 30_000);
  afterAll(async () => {
    await roleStatementTimeout(null);
  }, 30_000);

  const deadlineRead: Answer = { status: 503, retryAfter: '1', detail: `the shard did not answer the read within the request's ${DEADLINE_MS} ms deadline; retry` };
  const cancelledRead: Answer = { status: 503, retryAfter: '1', detail: 'the shard cancelled the read before its deadline; retry' };
  it.each([
    {
      what: 'a write (its transaction sets statement_timeout to the time left: the deadline ends it)',
      table: 'documents',
      send: (u: { id: string }) => api.request('POST', '/api/v1/documents', { owner_id: u.id, title: 'blocked' }),
      answer: { status: 503, retryAfter: '1', detail: `the shard did not answer within the request's ${DEADLINE_MS} ms deadline; nothing was written; retry` },
      failure: 'the deadline',
    },
    {
      what: 'a read on the primary through withShardRead (so does its transaction)',
      table: 'users',
      send: (u: { id: string }) => api.request('GET', `/api/v1/users/${u.id}`),
      answer: deadlineRead,
      failure: 'the deadline',
    },
    {
      what: "a read through the replica reader's lone statement (the role's setting ends it)",
      table: 'documents',
      send: (_u: { id: string }, doc: string) => api.request('GET', `/api/v1/documents/${doc}`),
      answer: cancelledRead,
      failure: 'the own statement_timeout',
    },
    {
      what: 'the list of users, through the replica reader',
      table: 'users',
      send: () => api.request('GET', '/api/v1/users?limit=5'),
      answer: cancelledRead,
      failure: 'the own statement_timeout',
    },
  ])('$what: answered and logged as what ended it', async ({ table, send, answer, failure }) => {
    const owner = await api.newUser('Own timeout');
    const created = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'held' });
    if (created.status !== 201) throw new Error(`creating a document answered ${created.status}`);
    const holder = await api.primary(owner.shardId).connect();
    failures.length = 0;
    let got: Answer;
    try {
      // The holder's own session is under the role's setting too: not its statements.
      await holder.query('set statement_timeout = 0');
      await holder.query('begin');
      await holder.query(`lock table ${table} in access exclusive mode`);
      const r = await send(owner, String(created.body.id));
      got = { status: r.status, retryAfter: r.headers.get('retry-after'), detail: String(r.body?.detail) };
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    expect({ answer: got, failures: failures.map(kindOf) }).toEqual({ answer, failures: [failure] });
  }, 30_000);
});

describe("a statement_timeout the request's own code sets (SET LOCAL), shorter than its deadline", () => {
  it('fails a write as cancelled by that statement_timeout, not as past its deadline (nothing committed)', async () => {
    const owner = await api.newUser('Own timeout');
    const error = await api.sharding.writer
      .withShardWrite(
        owner.id,
        async ({ client, slot }) => {
          await client.query("insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'never', '{}')", [randomUUID(), owner.id, slot]);
          await client.query('set local statement_timeout = 50');
          await client.query('select pg_sleep(5)');
        },
        { deadlineMs: 10_000 },
      )
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect({ failure: kindOf(error), documents: await api.documentsOf(owner) }).toEqual({ failure: 'the own statement_timeout', documents: 0 });
  }, 30_000);

  it('fails a read through withShardRead so too', async () => {
    const owner = await api.newUser('Own timeout');
    const reads = api.sharding.reads;
    if (reads === undefined) throw new Error('the runtime built no shard reader');
    const error = await reads
      .withShardRead(
        owner.id,
        async ({ client }) => {
          await client.query('set local statement_timeout = 50');
          await client.query('select pg_sleep(5)');
        },
        { deadlineMs: 10_000 },
      )
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(kindOf(error)).toBe('the own statement_timeout');
  }, 30_000);
});
