/**
 * What `withShardWrite` reports when its connection dies around the COMMIT: a COMMIT that was
 * sent and not answered leaves the outcome unknown; a connection that died before the COMMIT
 * could be sent (its backend terminated while the transaction sat idle) committed nothing, and
 * must say so (a retryable failure), not `outcome-unknown`.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_DEADLINE_MS } from '../../../functions/adapters/postgres/deadline.js';
import { ShardWriteError } from '../../../functions/adapters/postgres/write-transaction.js';
import { keysInSlot, otherProcess, sides, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { SilentRelay } from './fixtures/silent-relay.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

describe('a write whose backend is terminated before its COMMIT is sent', () => {
  it.each([{ deadlineMs: undefined }, { deadlineMs: 5000 }])('fails as nothing written (not outcome-unknown), and nothing is (deadline $deadlineMs)', async ({ deadlineMs }) => {
    const slot = 77;
    const { source } = await sides(env, slot);
    const [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [owner], 0).catch(() => undefined);
    const id = randomUUID();
    const failure = await env.writer
      .withShardWrite(
        owner,
        async ({ client, slot: s }) => {
          await client.query('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [id, owner, s, 'terminated before commit']);
          const pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
          const gone = new Promise<void>((resolve) => client.once('error', () => resolve()));
          await source.query('select pg_terminate_backend($1)', [pid]);
          await Promise.race([gone, delay(5000)]);
        },
        deadlineMs === undefined ? {} : { deadlineMs },
      )
      .then(
        () => 'committed',
        (err: unknown) => (err instanceof ShardWriteError ? err.reason : 'failed'),
      );
    const stored = (await source.query('select 1 from documents where id = $1', [id])).rowCount;

    expect({ failure, stored }).toEqual({ failure: 'failed', stored: 0 });
  }, 30_000);
});

/**
 * Waits until a COMMIT on `pool`'s server waits for a synchronous standby. A backend's own
 * `synchronous_standby_names` is not enough: commits wait only once the checkpointer has applied
 * the reload and told every backend that a standby is named, and until then they commit at once
 * (on a loaded CI machine, after the write below had seen the setting: it committed without
 * waiting, twice in three runs). A probe commit is seen waiting (`SyncRep`), then cancelled.
 */
async function untilCommitsWaitForAStandby(pool: pg.Pool): Promise<void> {
  const probe = await pool.connect();
  let waited = false;
  try {
    const pid = (await probe.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? -1;
    await probe.query('set synchronous_commit = on');
    for (let i = 0; i < 50 && !waited; i++) {
      // A commit waits only if its transaction wrote WAL: a temporary table's catalog rows do.
      await probe.query('begin');
      await probe.query('create temporary table sync_probe (n int) on commit drop');
      const committing = probe.query('commit');
      for (let j = 0; j < 20 && !waited; j++) {
        await delay(10);
        waited = (await pool.query("select 1 from pg_stat_activity where pid = $1 and wait_event = 'SyncRep'", [pid])).rowCount === 1;
      }
      // Cancelled, the wait ends with a warning and the probe's (empty) commit stands.
      if (waited) await pool.query('select pg_cancel_backend($1)', [pid]);
      await committing;
    }
  } finally {
    // Its session settings must not reach the pool's next borrower.
    probe.release(true);
  }
  expect(waited, 'a COMMIT waits for the synchronous standby named').toBe(true);
}

describe('a write whose backend is terminated while its COMMIT is in flight', () => {
  it('is outcome-unknown, and the write turns out committed (a COMMIT waiting for a synchronous standby, then SIGTERM as in pg_ctl stop -m fast)', async () => {
    const slot = 78;
    const { source } = await sides(env, slot);
    const [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [owner], 0);
    const id = randomUUID();
    let pid: number | undefined;
    // Every COMMIT of a transaction that wrote now waits for a standby that never comes.
    await source.query("alter system set synchronous_standby_names = 'nobody'");
    await source.query('select pg_reload_conf()');
    await untilCommitsWaitForAStandby(source);
    let setting = '';
    try {
      const write = env.writer
        .withShardWrite(owner, async ({ client, slot: s }) => {
          // The reload reaches each backend in its own time: this one waits until it has (up to
          // 10 s: on a loaded CI machine 2 s were not always enough, and the write then committed
          // at once, its connection back in the pool before the terminate below).
          for (let i = 0; i < 500 && setting !== 'nobody'; i++) {
            if (i > 0) await delay(20);
            setting = (await client.query<{ s: string }>("select current_setting('synchronous_standby_names') as s")).rows[0]?.s ?? '';
          }
          pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
          await client.query('set local synchronous_commit = on'); // the test servers run with it off
          await client.query('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [id, owner, s, 'in flight']);
        })
        .then(
          () => 'committed',
          (err: unknown) => (err instanceof ShardWriteError ? err.reason : 'failed'),
        );
      let waiting = false;
      for (let i = 0; i < 1000 && !waiting; i++) {
        await delay(10);
        waiting = (await source.query("select 1 from pg_stat_activity where pid = $1 and wait_event = 'SyncRep'", [pid ?? -1])).rowCount === 1;
      }
      // Only a backend still waiting is terminated: one whose write ended is back in the pool,
      // where this very query could run on it and terminate itself.
      if (waiting) await source.query('select pg_terminate_backend($1)', [pid ?? -1]);
      const failure = await write;
      const stored = (await source.query('select 1 from documents where id = $1', [id])).rowCount;

      expect({ setting, waiting, failure, stored }).toEqual({ setting: 'nobody', waiting: true, failure: 'outcome-unknown', stored: 1 });
    } finally {
      await source.query('alter system reset synchronous_standby_names');
      await source.query('select pg_reload_conf()');
    }
  }, 30_000);
});

describe('a write whose COMMIT was acknowledged, then its connection reset, in a pool of one connection', () => {
  // The longest deadline accepted too: the other connection's transaction is held to it, and its
  // idle timeout (the time left and the grace) must stay within what PostgreSQL takes.
  it.each([{ deadlineMs: undefined }, { deadlineMs: 3000 }, { deadlineMs: MAX_DEADLINE_MS }])(
    'reads its token on a new connection in place of the dead one and succeeds (deadline $deadlineMs), not outcome-unknown',
    async ({ deadlineMs }) => {
      const slot = 79;
      const { from, source } = await sides(env, slot);
      const [owner] = keysInSlot(slot, 1) as [string];
      await seedUsers(source, slot, [owner], 0);
      const relay = await SilentRelay.start(Number(new URL(env.urls.shards[from] as string).port));
      // A Lambda's pool, or the demo backend's with DATABASE_POOL_SIZE=1: the write's own connection is the only one.
      const single = new pg.Pool({ connectionString: relay.url(env.urls.shards[from] as string), max: 1 });
      single.on('error', () => undefined);
      try {
        const { writer } = await otherProcess(env, { primaries: new Map([...env.shards, [from, single]]) });
        const id = randomUUID();
        // The reset comes as the read token's query is sent, after the COMMIT's answer arrived.
        relay.resetAt('pg_current_wal_insert_lsn', { delivered: true });
        const outcome = await writer
          .withShardWrite(
            owner,
            async ({ client, slot: s }) => {
              await client.query('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [id, owner, s, 'token lost, pool of one']);
            },
            deadlineMs === undefined ? {} : { deadlineMs },
          )
          .then(
            (r) => ({ result: 'committed', tokenShard: r.readToken.shardId, lsn: /^[0-9A-F]+\/[0-9A-F]+$/.test(r.token) }),
            (err: unknown) => ({ result: err instanceof ShardWriteError ? err.reason : String(err), tokenShard: undefined, lsn: false }),
          );
        const stored = (await source.query('select 1 from documents where id = $1', [id])).rowCount;

        expect({ ...outcome, stored, pooled: single.totalCount <= 1 }).toEqual({ result: 'committed', tokenShard: from, lsn: true, stored: 1, pooled: true });
      } finally {
        await single.end();
        await relay.stop();
      }
    },
    30_000,
  );
});
