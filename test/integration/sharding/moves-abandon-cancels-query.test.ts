/**
 * When the mover gives up a shard connection (checked out past `shardWaitMs`, or past the run's
 * abandon time) it closes the socket, which ends the run's wait but not the backend's work:
 * PostgreSQL notices a closed socket only when it next reads from or writes to the client, and a
 * backend waiting on a lock (or scanning) does neither. Left alone it keeps waiting, holding the
 * locks and the permit it took and a connection slot, until whatever it waits for ends. The mover
 * must stop it on the server too: cancel its statement, and terminate it if it ignores that.
 */
import '../../support/quiet-powertools.js';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { abandonConnection } from '../../../functions/adapters/postgres/deadline.js';
import { Mover, type MoveJob } from '../../../functions/adapters/postgres/mover.js';
import { ListeningClient } from '../../../functions/adapters/postgres/listening-client.js';
import { alternateUser, ensureLogin, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { createNodePool } from '../../../functions/adapters/postgres/shard-pools.js';
import { keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { lambdaContext, tick, withMovesHandler } from './fixtures/moves-handler.js';

let env: MoveEnv;
/** The runs' shard pools, built as the product builds them (a connection closed under a run must not crash the process). */
let shards: Map<string, pg.Pool>;
beforeAll(async () => {
  env = await startMoveEnv();
  shards = new Map(Object.entries(env.urls.shards).map(([id, url]) => [id, new pg.Pool({ connectionString: url, max: 4, Client: ListeningClient })]));
  for (const pool of shards.values()) pool.on('error', () => undefined);
});
afterAll(async () => {
  await Promise.race([Promise.all([...(shards?.values() ?? [])].map((p) => p.end().catch(() => undefined))), delay(5000)]);
  await Promise.race([env?.stop(), delay(20_000)]);
}, 60_000);

/** The bound the runs below are given; the smallest the mover takes. */
const WAIT_MS = 1000;
/** How long after the run gave up a backend of it may still be seen on the shard. */
const GONE_WITHIN_MS = 3000;

/** A session of its own on `url` that holds what `statements` take in an open transaction until `release`. */
async function holdInTransaction(url: string, statements: ReadonlyArray<readonly [string, unknown[]?]>): Promise<{ readonly pid: number; release(): Promise<void> }> {
  const holder = new pg.Client({ connectionString: url });
  holder.on('error', () => undefined);
  await holder.connect();
  const { rows } = await holder.query<{ pid: number }>('select pg_backend_pid() as pid');
  await holder.query('begin');
  for (const [sql, params] of statements) await holder.query(sql, params);
  return {
    pid: rows[0]?.pid as number,
    async release() {
      await holder.query('rollback').catch(() => undefined);
      await holder.end().catch(() => undefined);
    },
  };
}

/** The queries of the backends waiting for `holder`'s locks on `pool`'s database. */
async function waitingBehind(pool: pg.Pool, holder: number): Promise<string[]> {
  const { rows } = await pool.query<{ query: string }>('select query from pg_stat_activity where $1 = any(pg_blocking_pids(pid))', [holder]);
  return rows.map((r) => r.query);
}

/** Polls {@link waitingBehind} until nothing waits or `withinMs` passed; answers what still waits then. */
async function waitingBehindAfter(pool: pg.Pool, holder: number, withinMs: number): Promise<string[]> {
  const until = Date.now() + withinMs;
  let waiting = await waitingBehind(pool, holder);
  while (waiting.length > 0 && Date.now() < until) {
    await delay(100);
    waiting = await waitingBehind(pool, holder);
  }
  return waiting;
}

describe('a shard connection the mover gives up at shardWaitMs', () => {
  it('leaves no backend of the run waiting on the target once a copy page blocked on a lock is given up', async () => {
    const slot = 1800;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    // An uncommitted row with the id of the page's first document holds the page's COPY on the
    // target (its unique index) for as long as the test keeps it.
    const { rows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1 order by id limit 1', [slot]);
    const first = rows[0] as { id: string; owner: string };
    const holder = await holdInTransaction(env.urls.shards[to] as string, [
      ['set local session_replication_role = replica'],
      ["insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'blocker')", [first.id, first.owner, slot]],
    ]);
    try {
      const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
      const outcome = await env
        .mover({ shards, shardWaitMs: WAIT_MS, leaseTtlMs: 1500 })
        .run(planned.id)
        .then(
          (j) => `ended: ${j.state}`,
          (e: Error) => `threw: ${e.message}`,
        );
      expect(outcome).toMatch(/at the mover's shardWaitMs/);

      expect(await waitingBehindAfter(target, holder.pid, GONE_WITHIN_MS)).toEqual([]);
    } finally {
      await holder.release();
    }
  }, 60_000);

  it('leaves no backend of the run waiting on the source once a catch-up blocked on a table lock is given up', async () => {
    const slot = 1801;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // Taken once the copy is done (earlier, this transaction, which an access exclusive lock gives
    // an xid, would hold the drain of writers older than the change capture instead): the
    // catch-up's read of the source's change log waits.
    let holder: Awaited<ReturnType<typeof holdInTransaction>> | undefined;
    try {
      const outcome = await env
        .mover({
          shards,
          shardWaitMs: WAIT_MS,
          leaseTtlMs: 1500,
          hook: async (point) => {
            if (point === 'catching_up' && holder === undefined) holder = await holdInTransaction(env.urls.shards[from] as string, [['lock table move_changes in access exclusive mode']]);
          },
        })
        .run(planned.id)
        .then(
          (j) => `ended: ${j.state}`,
          (e: Error) => `threw: ${e.message}`,
        );
      expect(outcome).toMatch(/at the mover's shardWaitMs/);

      expect(await waitingBehindAfter(source, (holder as { pid: number }).pid, GONE_WITHIN_MS)).toEqual([]);
    } finally {
      await holder?.release();
    }
  }, 60_000);
});

/** A statement that swallows every cancel request: only terminating its backend ends it. */
const IGNORES_CANCEL = `do $$ begin loop begin perform pg_sleep(10); exception when query_canceled then null; end; end loop; end $$`;

/** Whether `pid` is still a backend on `pool`'s server after `withinMs` (polled: answers false as soon as it is gone). */
async function stillThereAfter(pool: pg.Pool, pid: number, withinMs: number): Promise<boolean> {
  const until = Date.now() + withinMs;
  for (;;) {
    const { rows } = await pool.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where pid = $1', [pid]);
    if (rows[0]?.n === 0) return false;
    if (Date.now() >= until) return true;
    await delay(100);
  }
}

/** A client of `pool` running {@link IGNORES_CANCEL}, once its backend is running it; with its pid. */
async function runningIgnoringCancel(pool: pg.Pool): Promise<{ client: pg.PoolClient; pid: number; checkedOutAt: number }> {
  const client = await pool.connect();
  const checkedOutAt = performance.now();
  const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid');
  const pid = rows[0]?.pid as number;
  client.query(IGNORES_CANCEL).catch(() => undefined);
  while ((await pool.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where pid = $1 and state = 'active'", [pid])).rows[0]?.n !== 1) await delay(20);
  return { client, pid, checkedOutAt };
}

describe('abandonConnection', () => {
  it('terminates the backend of a given-up connection whose statement ignores the cancel request', async () => {
    const pool = shards.get('shard_a') as pg.Pool;
    const { client, pid, checkedOutAt } = await runningIgnoringCancel(pool);

    await abandonConnection(pool, client, checkedOutAt, 'shard_a/primary', 300);
    client.release(true);

    expect(await stillThereAfter(env.shards.get('shard_a') as pg.Pool, pid, GONE_WITHIN_MS)).toBe(false);
  });

  it('does not terminate a backend that started after the checkout it is given (a pid handed out again)', async () => {
    const pool = shards.get('shard_b') as pg.Pool;
    const admin = env.shards.get('shard_b') as pg.Pool;
    const { client, pid } = await runningIgnoringCancel(pool);
    try {
      // As if the connection given up had been checked out an hour ago: this backend is younger.
      await abandonConnection(pool, client, performance.now() - 3_600_000, 'shard_b/primary', 300);
      client.release(true);

      // The cancel was swallowed and the closed socket went unnoticed; the terminate was refused.
      expect(await stillThereAfter(admin, pid, 1000)).toBe(true);
    } finally {
      await admin.query('select pg_terminate_backend($1)', [pid]);
    }
  });
});

describe('abandonConnection and the clocks', () => {
  it('terminates the backend when the wall clock steps an hour forward between the checkout and the abandonment', async () => {
    const pool = shards.get('shard_a') as pg.Pool;
    const { client, pid, checkedOutAt } = await runningIgnoringCancel(pool);
    const wall = Date.now.bind(Date);
    // An NTP step: the checkout now looks an hour old on the wall clock, older than the backend's start.
    const stepped = vi.spyOn(Date, 'now').mockImplementation(() => wall() + 3_600_000);
    try {
      await abandonConnection(pool, client, checkedOutAt, 'shard_a/primary', 300);
    } finally {
      stepped.mockRestore();
    }
    client.release(true);

    expect(await stillThereAfter(env.shards.get('shard_a') as pg.Pool, pid, GONE_WITHIN_MS)).toBe(false);
  });
});

describe('the moves handler and the connections its run gave up', () => {
  it('returns only once the backend of a connection its run gave up has been terminated (the sandbox freezes after it returns)', async () => {
    const pool = shards.get('shard_b') as pg.Pool;
    const admin = env.shards.get('shard_b') as pg.Pool;
    let pid: number | undefined;
    // The run as the mover's dropping pool ends it: the connection given up from a timer, fire
    // and forget, and the step failed at once.
    const job = { id: 990_001, state: 'copying', progressedAt: new Date() } as unknown as MoveJob; // only the fields the handler reads of a job
    const mover = new (class extends Mover {
      override async unfinished(): Promise<MoveJob[]> {
        return [job];
      }
      override async get(): Promise<MoveJob> {
        return job;
      }
      override async run(): Promise<MoveJob> {
        const running = await runningIgnoringCancel(pool);
        pid = running.pid;
        void abandonConnection(pool, running.client, running.checkedOutAt, 'shard_b/primary', 300).then(() => running.client.release(true));
        throw new Error('shard_b/primary: the mover closed this connection');
      }
    })({ catalog: env.catalog, slotMaps: env.slotMaps, directory: env.directory, shards });
    try {
      let failed: readonly number[] = [];
      await withMovesHandler(
        env,
        async (handler) => {
          failed = (await handler(tick, lambdaContext)).failed.map((f) => f.id);
        },
        { mover },
      );

      const { rows } = await admin.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where pid = $1', [pid]);
      expect({ failed, backendsLeft: rows[0]?.n }).toEqual({ failed: [job.id], backendsLeft: 0 });
    } finally {
      if (pid !== undefined) await admin.query('select pg_terminate_backend($1)', [pid]);
    }
  });
});

/** The grace {@link abandonConnection} is given below, when its other connection needs a new login. */
const ROTATED_LOGIN_GRACE_MS = 2000;

describe('abandonConnection across a rotation of the login (alternating users)', () => {
  it("terminates the backend of a connection opened as the previous user, from a connection of the pool opened as the current one", async () => {
    const admin = env.shards.get('shard_a') as pg.Pool;
    const user = 'abandon_mover';
    const clone = alternateUser(user);
    await ensureLogin(admin, { username: user, password: 'before' }, { role: MOVER_ROLE });
    await admin.query(`alter role ${clone} password 'after'`);
    // What the secret says: the previous user until the rotation below.
    let login = { username: user, password: 'before' };
    const url = new URL(env.urls.shards.shard_a as string);
    url.username = login.username;
    url.password = login.password;
    const pool = createNodePool(url.toString(), { max: 2 }, () => Promise.resolve(login));
    pool.on('error', () => undefined);
    let pid: number | undefined;
    try {
      const client = await pool.connect();
      const checkedOutAt = performance.now();
      const opened = await client.query<{ pid: number; login: string }>('select pg_backend_pid() as pid, session_user as login');
      expect(opened.rows[0]?.login).toBe(user);
      pid = opened.rows[0]?.pid as number;
      client.query(IGNORES_CANCEL).catch(() => undefined);
      // Watched from the admin's pool: an idle connection of the previous user left in `pool` would do the terminate as that user.
      while ((await admin.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where pid = $1 and state = 'active'", [pid])).rows[0]?.n !== 1) await delay(20);
      // Rotated twice while the connection is out: the secret names the clone, and the user it no longer names got a new password.
      login = { username: clone, password: 'after' };
      await admin.query(`alter role ${user} password 'rotated away'`);

      // The grace also bounds the other connection's checkout, here a new login (refused as the
      // previous user, the secret re-read, then as the clone): 300 ms, enough for an idle connection
      // of the pool, is not for two logins on a loaded machine, and the terminate is then skipped.
      // What this proves (whose login the terminate matches) does not depend on the grace's size.
      await abandonConnection(pool, client, checkedOutAt, 'shard_a/primary', ROTATED_LOGIN_GRACE_MS);
      client.release(true);

      const { rows } = await admin.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where usename = $1', [clone]);
      expect(rows[0]?.n).toBeGreaterThan(0);
      expect(await stillThereAfter(admin, pid, GONE_WITHIN_MS)).toBe(false);
    } finally {
      if (pid !== undefined) await admin.query('select pg_terminate_backend($1)', [pid]);
      await Promise.race([pool.end().catch(() => undefined), delay(5000)]);
    }
  });
});
