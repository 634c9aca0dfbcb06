/**
 * `inTransaction` and `inClientTransaction` (functions/adapters/postgres/transaction.ts), the one
 * transaction block of the adapters (catalog store, move port, shard reads and writes,
 * migrations), against a real PostgreSQL: commit, rollback with the original error, a body that
 * asks for a rollback and hands a value back, the client back in the pool, and a connection
 * that died mid-transaction discarded without crashing the process.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inClientTransaction, inTransaction, RollbackWith } from '../../functions/adapters/postgres/transaction.js';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';

let server: TestPostgres;
let pool: pg.Pool;
let admin: pg.Pool;

beforeAll(async () => {
  server = await startTestPostgres();
  pool = new pg.Pool({ connectionString: server.url, max: 1 });
  admin = new pg.Pool({ connectionString: server.url, max: 1 });
  await admin.query('create table notes (id int primary key, body text not null)');
});
afterAll(async () => {
  await pool.end();
  await admin.end();
  await server.stop();
});

const backendPid = async (client: pg.ClientBase): Promise<number> => (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? -1;

describe('inTransaction', () => {
  it('commits what fn wrote, returns its value and gives the client back', async () => {
    const value = await inTransaction(pool, 'begin', async (client) => {
      await client.query("insert into notes values (1, 'kept')");
      return 'done';
    });
    expect(value).toBe('done');
    expect((await admin.query('select body from notes where id = 1')).rows).toEqual([{ body: 'kept' }]);
    expect([pool.totalCount, pool.idleCount]).toEqual([1, 1]);
  });

  it('opens the transaction with the given begin', async () => {
    const level = await inTransaction(pool, 'begin isolation level repeatable read', async (client) => (await client.query<{ l: string }>("select current_setting('transaction_isolation') as l")).rows[0]?.l);
    expect(level).toBe('repeatable read');
  });

  it('rolls back and rethrows fn\'s own error; the healthy connection is reused', async () => {
    const pid = await inTransaction(pool, 'begin', backendPid);
    const failure = new Error('the caller changed its mind');
    await expect(
      inTransaction(pool, 'begin', async (client) => {
        await client.query("insert into notes values (2, 'dropped')");
        throw failure;
      }),
    ).rejects.toBe(failure);
    expect((await admin.query('select count(*)::int as n from notes where id = 2')).rows).toEqual([{ n: 0 }]);
    expect(await inTransaction(pool, 'begin', backendPid)).toBe(pid);
  });

  it('rethrows a failed statement and leaves the connection usable', async () => {
    await expect(inTransaction(pool, 'begin', (client) => client.query('select * from no_such_table'))).rejects.toMatchObject({ code: '42P01' });
    expect(await inTransaction(pool, 'begin', async (client) => (await client.query<{ n: number }>('select 1 as n')).rows[0]?.n)).toBe(1);
  });

  it('discards a connection that died mid-transaction (no uncaught error), and the next transaction gets a new one', async () => {
    const before = await inTransaction(pool, 'begin', backendPid);
    await expect(
      inTransaction(pool, 'begin', async (client) => {
        const ended = new Promise((resolve) => client.once('end', resolve));
        // The server ends the session while the client is checked out and idle: the client
        // emits `error`, which nothing but inTransaction's listener would catch.
        await admin.query('select pg_terminate_backend($1)', [before]);
        await ended;
        await client.query('select 1');
      }),
    ).rejects.toThrow();
    expect(pool.totalCount).toBe(0);
    const after = await inTransaction(pool, 'begin', backendPid);
    expect(after).not.toBe(before);
  });
});

describe('a body that returns RollbackWith', () => {
  it('rolls back what it wrote and hands back its value, on a pooled client', async () => {
    const value = await inTransaction<string>(pool, 'begin', async (client) => {
      await client.query("insert into notes values (3, 'undone')");
      return new RollbackWith('fenced');
    });
    expect(value).toBe('fenced');
    expect((await admin.query('select count(*)::int as n from notes where id = 3')).rows).toEqual([{ n: 0 }]);
    expect([pool.totalCount, pool.idleCount]).toEqual([1, 1]);
  });

  it("a body's own result with a `value` field is committed, never taken for a rollback", async () => {
    const result = await inTransaction(pool, 'begin', async (client) => {
      await client.query("insert into notes values (4, 'kept')");
      return { value: 'mine' };
    });
    expect(result).toEqual({ value: 'mine' });
    expect((await admin.query('select body from notes where id = 4')).rows).toEqual([{ body: 'kept' }]);
  });
});

describe('inClientTransaction', () => {
  it('runs on a client the caller keeps: commit, rollback on RollbackWith and on an error, the session still open', async () => {
    const client = await pool.connect();
    try {
      const pid = await backendPid(client);
      await inClientTransaction(client, 'begin', async () => {
        await client.query("insert into notes values (5, 'kept')");
      });
      const verdict = await inClientTransaction<string>(client, 'begin isolation level repeatable read read only', async () => {
        const { rows } = await client.query<{ l: string }>("select current_setting('transaction_isolation') as l");
        return new RollbackWith(rows[0]?.l ?? '');
      });
      expect(verdict).toBe('repeatable read');
      let heard: Error | undefined;
      await expect(
        inClientTransaction(
          client,
          'begin',
          async () => {
            await client.query("insert into notes values (6, 'dropped')");
            await client.query('select * from no_such_table');
          },
          (e) => {
            heard = e;
          },
        ),
      ).rejects.toMatchObject({ code: '42P01' });
      // The rollback worked, so nobody was told to discard the connection; it is the same session.
      expect(heard).toBeUndefined();
      expect(await backendPid(client)).toBe(pid);
      expect((await client.query<{ s: string }>("select current_setting('transaction_isolation') as s")).rows[0]?.s).toBe('read committed');
    } finally {
      client.release();
    }
    expect((await admin.query('select id from notes where id in (5, 6) order by id')).rows).toEqual([{ id: 5 }]);
  });

  it('tells the caller when the rollback failed too, and still rethrows the first error', async () => {
    const failure = new Error('the body failed');
    const dead = { query: async (text: string): Promise<never> => Promise.reject(new Error(`connection gone (${text})`)) };
    let heard: Error | undefined;
    await expect(
      inClientTransaction(dead as unknown as pg.ClientBase, 'begin', () => Promise.reject(failure), (e) => {
        heard = e;
      }),
    ).rejects.toThrow('connection gone (begin)');
    expect(heard?.message).toBe('connection gone (rollback)');
  });
});
