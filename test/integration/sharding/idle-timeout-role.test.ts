/**
 * A login's own `idle_in_transaction_session_timeout` (ALTER ROLE ... SET, a parameter group: an
 * operator's safety limit on how long a transaction of the login may sit idle, holding its locks
 * and its snapshot) is kept by a transaction held to a deadline where it is shorter than the
 * deadline's own (the time left and the client's grace), as its statement_timeout and
 * lock_timeout are (`deadlineSettingsSql`, write-transaction.ts). Until h155 the deadline's SET
 * LOCAL replaced it: a write whose body sat idle 1 s under a role's 200 ms went through. When it
 * ends a transaction the server closes the connection (FATAL 25P03): the write says so, naming
 * the setting (`SessionTimeoutError`, deadline.ts), and its connection is not lent again; so does
 * a read through the replica reader (`withShardRead`), which tries no other node for it.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionTimeoutError } from '../../../functions/adapters/postgres/deadline.js';
import { createShardReader, ShardReadError } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { ShardWriteError } from '../../../functions/adapters/postgres/write-transaction.js';
import { firstSlotOwnedBy, keysInSlot, type MoveEnv, otherProcess, poolsWithSettings, seedUsers, startMoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
const pools: pg.Pool[] = [];
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await Promise.all(pools.splice(0).map((p) => p.end()));
  await env?.stop();
});

/** The shards' pools of a login whose role sets idle_in_transaction_session_timeout to `ms` (a startup setting: the session's own, as a role's default is). */
const poolsWithIdleTimeout = (ms: number): Map<string, pg.Pool> => poolsWithSettings(env, { idle_in_transaction_session_timeout: ms }, pools, 2);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("the idle_in_transaction_session_timeout of a write's transaction held to a 10 s deadline", () => {
  it("is the login's own where shorter (200 ms), the deadline's (the time left and the grace) where the login sets none or a longer one", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 300);
    const [key] = keysInSlot(slot, 1) as [string];
    const inForce = async (primaries?: ReadonlyMap<string, pg.Pool>): Promise<string> => {
      const { writer } = await otherProcess(env, { ttlMs: 0, ...(primaries === undefined ? {} : { primaries }) });
      const { value } = await writer.withShardWrite(key, async ({ client }) => (await client.query<{ ms: string }>(`select (extract(epoch from current_setting('idle_in_transaction_session_timeout')::interval) * 1000)::bigint::text as ms`)).rows[0]?.ms ?? '', { deadlineMs: 10_000 });
      return Number(value) > 10_000 && Number(value) <= 10_000 + 250 + 1 ? "the deadline's" : `${value} ms`;
    };
    expect({ role200: await inForce(poolsWithIdleTimeout(200)), none: await inForce(), role60s: await inForce(poolsWithIdleTimeout(60_000)) }).toEqual({
      role200: '200 ms',
      none: "the deadline's",
      role60s: "the deadline's",
    });
  }, 30_000);
});

describe("a write whose login's role sets idle_in_transaction_session_timeout to 200 ms", () => {
  it.each([
    { deadline: 'a 10 s deadline', deadlineMs: 10_000 as number | undefined, from: 100 },
    { deadline: 'no deadline', deadlineMs: undefined, from: 200 },
  ])('with $deadline, its body idle 1 s between two statements: ended by that setting, named, nothing written, its connection not lent again', async ({ deadlineMs, from }) => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', from);
    const [key] = keysInSlot(slot, 1) as [string];
    const shard = env.shards.get('shard_a') as pg.Pool;
    await seedUsers(shard, slot, [key], 0);
    const primaries = poolsWithIdleTimeout(200);
    const pool = primaries.get('shard_a') as pg.Pool;
    const { writer } = await otherProcess(env, { ttlMs: 0, primaries });
    let pid: number | undefined;
    const ended = await writer
      .withShardWrite(
        key,
        async ({ client, slot: s }) => {
          pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
          await client.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'idle', '{}')`, [key, s]);
          await sleep(1000);
          await client.query('select 1');
        },
        deadlineMs === undefined ? {} : { deadlineMs },
      )
      .then(
        () => 'written',
        (e: unknown) => {
          const cause = (e as { cause?: unknown }).cause;
          return e instanceof ShardWriteError ? `${e.reason}${cause instanceof SessionTimeoutError ? ` (${cause.setting})` : ''}` : `threw ${String(e)}`;
        },
      );
    const written = (await shard.query<{ n: number }>(`select count(*)::int as n from documents where owner_id = $1 and title = 'idle'`, [key])).rows[0]?.n;
    // The pool's connections now: none is the ended session's.
    const pids = await Promise.all(
      Array.from({ length: 2 }, async () => {
        const c = await pool.connect();
        try {
          return (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
        } finally {
          c.release();
        }
      }),
    );
    expect({ ended, written, lentAgain: pids.includes(pid) }).toEqual({ ended: 'cancelled (idle_in_transaction_session_timeout)', written: 0, lentAgain: false });
  }, 30_000);
});

describe("a read (withShardRead, through the replica reader) whose login's role sets idle_in_transaction_session_timeout to 200 ms", () => {
  it('its fn idle 1 s between two statements: ended by that setting, named, its connection not lent again', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 400);
    const [key] = keysInSlot(slot, 1) as [string];
    const url = new URL(env.urls.shards.shard_a as string);
    url.searchParams.set('options', '-c idle_in_transaction_session_timeout=200');
    const shardPools = ShardPools.fromConfig({ shards: [{ shard_id: 'shard_a', database_url: url.toString(), read_replicas: [] }] }, { max: 2 });
    const reader = new ReplicaReader(shardPools, { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000 });
    try {
      const reads = createShardReader({ router: { routeForWrite: () => Promise.resolve({ shardId: 'shard_a', slot, version: 1, viaDirectory: false }) }, reader });
      let pid: number | undefined;
      const ended = await reads
        .withShardRead(
          key,
          async ({ client }) => {
            pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
            await sleep(1000);
            await client.query('select 1');
          },
          { deadlineMs: 10_000, primary: true },
        )
        .then(
          () => 'read',
          (e: unknown) => {
            const cause = (e as { cause?: unknown }).cause;
            return e instanceof ShardReadError ? `${e.reason}${cause instanceof SessionTimeoutError ? ` (${cause.setting})` : ''}` : `threw ${String(e)}`;
          },
        );
      const pool = shardPools.primary('shard_a').pool;
      const pids = await Promise.all(
        Array.from({ length: 2 }, async () => {
          const c = await pool.connect();
          try {
            return (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
          } finally {
            c.release();
          }
        }),
      );
      expect({ ended, lentAgain: pids.includes(pid) }).toEqual({ ended: 'cancelled (idle_in_transaction_session_timeout)', lentAgain: false });
    } finally {
      reader.stop();
      await shardPools.end();
    }
  }, 30_000);
});
