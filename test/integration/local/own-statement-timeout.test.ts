/**
 * A statement ended by one of the session's own timeouts, `statement_timeout` or `lock_timeout` (a
 * role's default, `ALTER ROLE ... IN DATABASE ... SET statement_timeout = '50ms'`, or the request's
 * own code's `SET LOCAL`), shorter than what was left of the request's deadline, is not the
 * request's deadline: nothing the caller asked for ended, a setting did. The writer,
 * `withShardRead` and the replica reader tell it alike (`SessionTimeoutError`, deadline.ts, naming
 * the setting; reason `cancelled` on the writer's and `withShardRead`'s errors), and the API
 * answers it with the 503 and Retry-After it answered before, saying the shard cancelled the
 * request before its deadline (not that the deadline passed, nor that the shard could not serve).
 *
 * Where the request's transaction is held to the deadline (a write, a read through
 * `withShardRead`), its timeouts are the time left or the role's, whichever is shorter
 * (`deadlineSettingsSql`): a role's setting is an operator's safety limit on every statement of
 * the login, which the deadline does not lift. The replica reader's lone statement
 * (`ReplicaReader.query`: no transaction of its own) runs under the role's as it is. (h144, issue
 * #15: the replica reader's raw 57014 was logged, and answered, as the deadline's, 60 ms into a
 * 1.5 s deadline; a write body's own SET LOCAL was `deadline-exceeded`. h147: a role's lock_timeout
 * gave the replica reader's and withShardRead's reads a raw 55P03, answered as an unexpected
 * failure; a write body's own SET LOCAL lock_timeout, and a NOWAIT, was `deadline-exceeded`; a
 * write's and withShardRead's transaction replaced a role's shorter statement_timeout and
 * lock_timeout with the time left, so a statement ran 1.5 s where the role allowed 50 ms.)
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeadlinePassedError, SessionTimeoutError } from '../../../functions/adapters/postgres/deadline.js';
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

/** What a failure was: the deadline's, the session's own timeout setting (its message naming the setting), or something else (named). */
const kindOf = (error: unknown): string => {
  const own = error instanceof SessionTimeoutError ? error : (error as { cause?: unknown } | null)?.cause;
  if (own instanceof SessionTimeoutError) {
    const { setting } = own;
    return own.message.includes(setting) && (error === own || (error as ShardWriteError | ShardReadError).reason === 'cancelled') ? `the own ${setting}` : `misnamed: ${own.message}`;
  }
  if (error instanceof DeadlinePassedError || ((error instanceof ShardReadError || error instanceof ShardWriteError) && error.reason === 'deadline-exceeded')) return 'the deadline';
  return `${error instanceof Error ? error.name : typeof error} ${String((error as { code?: unknown } | null)?.code ?? '')} ${error instanceof Error ? error.message : ''}`;
};

/** Sets (or, with null, resets) the login's `setting` in both shard databases, and closes the pools' idle connections so that the next ones take it. */
async function roleSetting(setting: 'statement_timeout' | 'lock_timeout', value: string | null): Promise<void> {
  const admin = api.primary('shard_001');
  for (const db of SHARDS) await admin.query(value === null ? `alter role current_user in database ${db} reset ${setting}` : `alter role current_user in database ${db} set ${setting} = '${value}'`);
  const { rows } = await admin.query<{ pid: number }>("select pid from pg_stat_activity where datname like 'shard_%' and pid <> pg_backend_pid() and state = 'idle'");
  // Waits for each to exit (pg_terminate_backend's timeout), then for the pools to hear of it: a
  // connection lent before its 'error' arrived would fail the next request.
  for (const { pid } of rows) await admin.query('select pg_terminate_backend($1, 5000)', [pid]);
  await new Promise((resolve) => setTimeout(resolve, 300));
}

/** Sends `send` while another session holds `table` in ACCESS EXCLUSIVE mode (its own timeouts off); what the API answered, and what it logged. */
async function whileLocked(table: string, send: (u: { id: string }, doc: string) => Promise<{ status: number; body: any; headers: Headers }>): Promise<{ answer: Answer; failures: string[] }> { // eslint-disable-line @typescript-eslint/no-explicit-any -- the harness's answers
  const owner = await api.newUser('Own timeout');
  const created = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'held' });
  if (created.status !== 201) throw new Error(`creating a document answered ${created.status}`);
  const holder = await api.primary(owner.shardId).connect();
  failures.length = 0;
  let answer: Answer;
  try {
    // The holder's own session is under the role's settings too: not its statements.
    await holder.query('set statement_timeout = 0; set lock_timeout = 0');
    await holder.query('begin');
    await holder.query(`lock table ${table} in access exclusive mode`);
    const r = await send(owner, String(created.body.id));
    answer = { status: r.status, retryAfter: r.headers.get('retry-after'), detail: String(r.body?.detail) };
  } finally {
    await holder.query('rollback');
    holder.release();
  }
  return { answer, failures: failures.map(kindOf) };
}

type Answer = { readonly status: number; readonly retryAfter: string | null; readonly detail: string };

const cancelledRead: Answer = { status: 503, retryAfter: '1', detail: 'the shard cancelled the read before its deadline; retry' };
const cancelledWrite: Answer = { status: 503, retryAfter: '1', detail: 'the shard cancelled the write before its deadline; nothing was written; retry' };
/** A request of each path, and the table a lock on which makes its statement wait. */
const requests = [
  {
    what: 'a write (its transaction keeps the shorter of the role\'s setting and the time left)',
    table: 'documents',
    send: (u: { id: string }) => api.request('POST', '/api/v1/documents', { owner_id: u.id, title: 'blocked' }),
    answer: cancelledWrite,
  },
  {
    what: 'a read on the primary through withShardRead (so does its transaction)',
    table: 'users',
    send: (u: { id: string }) => api.request('GET', `/api/v1/users/${u.id}`),
    answer: cancelledRead,
  },
  {
    what: "a read through the replica reader's lone statement",
    table: 'documents',
    send: (_u: { id: string }, doc: string) => api.request('GET', `/api/v1/documents/${doc}`),
    answer: cancelledRead,
  },
  {
    what: 'the list of users, through the replica reader',
    table: 'users',
    send: () => api.request('GET', '/api/v1/users?limit=5'),
    answer: cancelledRead,
  },
];

describe.each(['statement_timeout', 'lock_timeout'] as const)("a role's own %s (50 ms), shorter than the request's deadline, with a statement waiting on a lock", (setting) => {
  beforeAll(async () => {
    await roleSetting(setting, '50ms');
  }, 30_000);
  afterAll(async () => {
    await roleSetting(setting, null);
  }, 30_000);

  it.each(requests)("$what: ended by the role's setting, not the deadline, and answered and logged so", async ({ table, send, answer }) => {
    expect(await whileLocked(table, send)).toEqual({ answer, failures: [`the own ${setting}`] });
  }, 30_000);
});

describe("a role's own statement_timeout and lock_timeout longer than the request's deadline (10 s)", () => {
  beforeAll(async () => {
    await roleSetting('statement_timeout', '10s');
    await roleSetting('lock_timeout', '10s');
  }, 30_000);
  afterAll(async () => {
    await roleSetting('statement_timeout', null);
    await roleSetting('lock_timeout', null);
  }, 30_000);

  it("ends a write waiting on a lock at the request's deadline, the time left being the shorter", async () => {
    const write = requests[0];
    if (write === undefined) throw new Error('no write request');
    expect(await whileLocked(write.table, write.send)).toEqual({
      answer: { status: 503, retryAfter: '1', detail: `the shard did not answer within the request's ${DEADLINE_MS} ms deadline; nothing was written; retry` },
      failures: ['the deadline'],
    });
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

describe("a lock_timeout the request's own code sets (SET LOCAL), shorter than its deadline, or a lock it will not wait for (NOWAIT)", () => {
  /** `body` while another session holds `holdSql`'s lock on the owner's shard (its own timeouts off); what `body` failed with. */
  async function whileHeld(owner: { id: string; shardId: string }, holdSql: string, body: () => Promise<unknown>): Promise<unknown> {
    const holder = await api.primary(owner.shardId).connect();
    try {
      await holder.query('set statement_timeout = 0; set lock_timeout = 0');
      await holder.query('begin');
      await holder.query(holdSql, holdSql.includes('$1') ? [owner.id] : []);
      return await body().then(
        () => undefined,
        (e: unknown) => e,
      );
    } finally {
      await holder.query('rollback');
      holder.release();
    }
  }
  // The holder's lock lets the write's own insert check its owner (FOR KEY SHARE); the body's
  // FOR UPDATE waits on it.
  const HELD_USER_ROW = 'select 1 from users where id = $1 for no key update';
  const USER_ROW = 'select 1 from users where id = $1 for update';

  it('fails a write as ended by that lock_timeout, not as past its deadline (nothing committed)', async () => {
    const owner = await api.newUser('Own timeout');
    const error = await whileHeld(owner, HELD_USER_ROW, () =>
      api.sharding.writer.withShardWrite(
        owner.id,
        async ({ client, slot }) => {
          await client.query("insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, 'never', '{}')", [randomUUID(), owner.id, slot]);
          await client.query('set local lock_timeout = 50');
          await client.query(USER_ROW, [owner.id]);
        },
        { deadlineMs: 10_000 },
      ),
    );
    expect({ failure: kindOf(error), documents: await api.documentsOf(owner) }).toEqual({ failure: 'the own lock_timeout', documents: 0 });
  }, 30_000);

  it('fails a read through withShardRead so too', async () => {
    const owner = await api.newUser('Own timeout');
    const reads = api.sharding.reads;
    if (reads === undefined) throw new Error('the runtime built no shard reader');
    const error = await whileHeld(owner, 'lock table users in access exclusive mode', () =>
      reads.withShardRead(
        owner.id,
        async ({ client }) => {
          await client.query('set local lock_timeout = 50');
          await client.query('select 1 from users where id = $1', [owner.id]);
        },
        { deadlineMs: 10_000 },
      ),
    );
    expect(kindOf(error)).toBe('the own lock_timeout');
  }, 30_000);

  it("fails a write whose body will not wait for a lock (NOWAIT) with the server's own error, not as past its deadline", async () => {
    const owner = await api.newUser('Own timeout');
    const error = await whileHeld(owner, HELD_USER_ROW, () => api.sharding.writer.withShardWrite(owner.id, async ({ client }) => client.query(`${USER_ROW} nowait`, [owner.id]), { deadlineMs: 10_000 }));
    expect(kindOf(error)).toMatch(/^error 55P03 could not obtain lock on row/);
  }, 30_000);
});
