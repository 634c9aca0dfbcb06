/**
 * A write that waits on a fence past its writer's `maxFenceWaitMs` fails `fence-timeout`, and its
 * words name the unit it waited on (its kind and id: the key's slot, its directory key, or another
 * unit a row of the write belongs to) and what holds it: the move job its fence row names, or a
 * hand change where the row names none (docs/sharding-spec.md section 9). Until h155 every such
 * timeout said "slot X ... stayed fenced (a move is in its cutover or its mover stopped there)",
 * the key's slot, whatever the wait was on: an operator reading it looked for a move that did not
 * exist (a hand change's fence, which no mover lifts) or at the wrong unit (issue #15).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardWriteError, type ShardWriteContext } from '../../../functions/adapters/postgres/write-transaction.js';
import { firstSlotOwnedBy, keysInSlot, otherProcess, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
const pools: pg.Pool[] = [];
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await Promise.all(pools.splice(0).map((p) => p.end()));
  await env?.stop();
});

const shardA = (): pg.Pool => env.shards.get('shard_a') as pg.Pool;

/** `kind`/`unit`'s fence row on shard_a committed `fenced`, naming `jobId` (null: a hand change's), for the length of `during`. */
async function whileFenced<T>(kind: 'slot' | 'directory', unit: string, jobId: number | null, during: () => Promise<T>): Promise<T> {
  await shardA().query(
    `insert into write_fences (kind, unit_id, state, job_id) values ($1, $2, 'fenced', $3)
     on conflict (kind, unit_id) do update set state = 'fenced', job_id = excluded.job_id, updated_at = clock_timestamp()`,
    [kind, unit, jobId],
  );
  try {
    return await during();
  } finally {
    await shardA().query(`delete from write_fences where kind = $1 and unit_id = $2`, [kind, unit]);
  }
}

/** The failure a write of `key` (its body `body`) ended with, by a writer of `maxFenceWaitMs` 100 over `primaries`. */
async function failureOf(key: string, body: (ctx: ShardWriteContext) => Promise<void> = async () => undefined, primaries?: ReadonlyMap<string, pg.Pool>, maxFenceWaitMs = 100): Promise<string> {
  const { writer } = await otherProcess(env, { ttlMs: 0, maxFenceWaitMs, ...(primaries === undefined ? {} : { primaries }) });
  return writer.withShardWrite(key, body, { deadlineMs: 10_000 }).then(
    () => 'written',
    (e: unknown) => (e instanceof ShardWriteError ? `${e.reason}: ${e.message}` : `threw ${String(e)}`),
  );
}

describe("a fence-timeout's words name the unit waited on and what holds it", () => {
  it("the key's slot, fenced by a move job: the job", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 100);
    const [key] = keysInSlot(slot, 1) as [string];
    const failed = await whileFenced('slot', String(slot), 7, () => failureOf(key));
    expect(failed).toBe(`fence-timeout: slot ${slot} on shard shard_a stayed fenced for more than 100 ms, by move job #7 (in its cutover, or its mover stopped there: see the job)`);
  }, 30_000);

  it("the key's slot, fenced by a hand change (its row names no job): a hand change, not a move", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 200);
    const [key] = keysInSlot(slot, 1) as [string];
    const failed = await whileFenced('slot', String(slot), null, () => failureOf(key));
    expect(failed).toBe(
      `fence-timeout: slot ${slot} on shard shard_a stayed fenced for more than 100 ms, by a hand change (its fence row names no move job: a slot map or directory change by hand, or an operator's SQL, that has not released it)`,
    );
  }, 30_000);

  it("the key's directory key, fenced while its slot is open: the directory key, not the slot", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 300);
    const [key] = keysInSlot(slot, 1) as [string];
    const failed = await whileFenced('directory', key, 9, () => failureOf(key));
    expect(failed).toBe(`fence-timeout: directory key ${key} on shard shard_a stayed fenced for more than 100 ms, by move job #9 (in its cutover, or its mover stopped there: see the job)`);
  }, 30_000);

  it("another unit a row of the write belongs to (the fence trigger's CAF01): that unit and its job, read on the timeout's path", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 400);
    const other = await firstSlotOwnedBy(env, 'shard_a', slot + 1);
    const [key] = keysInSlot(slot, 1) as [string];
    const [otherKey] = keysInSlot(other, 1) as [string];
    await seedUsers(shardA(), slot, [key], 0);
    const failed = await whileFenced('slot', String(other), 11, () =>
      failureOf(key, async ({ client }) => {
        await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'other')`, [otherKey, other, `${otherKey}@example.com`]);
      }),
    );
    expect(failed).toBe(`fence-timeout: slot ${other} on shard shard_a stayed fenced for more than 100 ms, by move job #11 (in its cutover, or its mover stopped there: see the job)`);
  }, 30_000);

  it.each([
    { change: 'a hand change (its update names no job)', jobId: null as number | null, from: 500 },
    { change: "move job #42's fence (move-port's: its update names the job)", jobId: 42 as number | null, from: 600 },
  ])("the key's slot row held updated by an uncommitted fence change past the login's lock_timeout, $change: the unit, held uncommitted, the job its committed row names, never taken for the holder's", async ({ jobId, from }) => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', from);
    const [key] = keysInSlot(slot, 1) as [string];
    await shardA().query(`insert into write_fences (kind, unit_id) values ('slot', $1) on conflict (kind, unit_id) do nothing`, [String(slot)]);
    // A login whose role sets lock_timeout to 50 ms: each wait on the held row ends so.
    const primaries = new Map(
      Object.entries(env.urls.shards).map(([id, url]) => {
        const pool = new pg.Pool({ connectionString: url, max: 2, options: '-c lock_timeout=50' });
        pool.on('error', () => undefined);
        pools.push(pool);
        return [id, pool] as const;
      }),
    );
    const holder = await shardA().connect();
    holder.on('error', () => undefined);
    try {
      await holder.query('begin');
      await holder.query(`update write_fences set state = 'fenced', job_id = $2 where kind = 'slot' and unit_id = $1`, [String(slot), jobId]);
      const failed = await failureOf(key, undefined, primaries, 300);
      // The row as committed (open, no job) says nothing of the uncommitted change holding it: a
      // move's fence (job_id set in the same update) read as "a hand change" until h159.
      expect(failed).toBe(
        `fence-timeout: slot ${slot} on shard shard_a had its fence row held by a fence change not yet committed for more than 300 ms (each wait ended by the session's own lock_timeout; the change holding it, a move's fence or flip or a hand change, is not readable until it commits: the row as last committed names no move job; pg_stat_activity shows the transaction holding it)`,
      );
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
      await shardA().query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    }
  }, 30_000);
});

describe("a fence-timeout's read of what holds the fence keeps within the write's deadline", () => {
  // The read (readFenceHold, one bounded query on the timeout's path) was bounded by 1 s of its
  // own whatever the write's deadline had left: a write held to 300 ms answered past 1.1 s where
  // the primary's pool had no free connection (or the primary fell silent) at that moment (h159).
  // Each test observes the bound the read is given, as it reaches the server (withNodeDeadline's
  // BEGIN sets its statement_timeout to what is left of it), or that no read is sent: never how
  // long the write took (no wall-clock margin), and the read is told by the SQL it sends, not by
  // the name of a function on the stack (which a refactor or a bundler's minification changes
  // without a word; ac8b9d6 replaced the same in the mover's tests, h161).

  /** The read's own statement (by a fence row's unit, or by its tuple id). */
  const HOLD_READ = /^select kind, unit_id, job_id::text as job_id from write_fences where /;

  /**
   * Shard pools over `env`'s shards whose every connection records the text of each statement it
   * is sent, in order, in `sent` (each with its connection): patched once, as the pool connects it.
   */
  function recordingPrimaries(): { primaries: ReadonlyMap<string, pg.Pool>; sent: Array<{ readonly client: pg.PoolClient; readonly text: string }> } {
    const sent: Array<{ readonly client: pg.PoolClient; readonly text: string }> = [];
    const primaries = new Map(
      Object.entries(env.urls.shards).map(([id, url]) => {
        const pool = new pg.Pool({ connectionString: url, max: 2 });
        pool.on('error', () => undefined);
        pool.on('connect', (client) => {
          const patched = client as unknown as { query: (...args: unknown[]) => unknown };
          const query = patched.query.bind(client);
          patched.query = (...args: unknown[]) => {
            const [first] = args;
            sent.push({ client, text: typeof first === 'string' ? first : String((first as { text?: unknown } | null)?.text ?? '') });
            return query(...args);
          };
        });
        pools.push(pool);
        return [id, pool] as const;
      }),
    );
    return { primaries, sent };
  }

  /** The statement_timeout (ms) the transaction of each read of the fence row was begun with, in order. */
  function readBounds(sent: ReadonlyArray<{ readonly client: pg.PoolClient; readonly text: string }>): number[] {
    return sent.flatMap(({ client, text }, i) => {
      if (!HOLD_READ.test(text)) return [];
      const begin = sent.slice(0, i).reverse().find((s) => s.client === client)?.text ?? '';
      return [Number(/^begin isolation level read committed; set local statement_timeout = (\d+);/.exec(begin)?.[1] ?? Number.NaN)];
    });
  }

  it("is given at most what the deadline has left (less than the read's own 1 s): the holder read within it", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 700);
    const other = await firstSlotOwnedBy(env, 'shard_a', slot + 1);
    const [key] = keysInSlot(slot, 1) as [string];
    const [otherKey] = keysInSlot(other, 1) as [string];
    await seedUsers(shardA(), slot, [key], 0);
    const { primaries, sent } = recordingPrimaries();
    const { writer } = await otherProcess(env, { ttlMs: 0, maxFenceWaitMs: 100, primaries });
    // Past its 100 ms of waiting the write has less than 500 ms left: the read's bound was its
    // own 1 s (less the connect's few ms) until h159.
    const DEADLINE_MS = 600;
    const failed = await whileFenced('slot', String(other), 11, () =>
      writer
        .withShardWrite(
          key,
          async ({ client }) => {
            await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'other')`, [otherKey, other, `${otherKey}@example.com`]);
          },
          { deadlineMs: DEADLINE_MS },
        )
        .then(
          () => 'written',
          (e: unknown) => (e instanceof ShardWriteError ? `${e.reason}: ${e.message}` : `threw ${String(e)}`),
        ),
    );
    const bounds = readBounds(sent);
    expect({ failed, reads: bounds.length, withinDeadline: bounds.every((ms) => ms <= DEADLINE_MS) }).toEqual({
      failed: `fence-timeout: slot ${other} on shard shard_a stayed fenced for more than 100 ms, by move job #11 (in its cutover, or its mover stopped there: see the job)`,
      reads: 1,
      withinDeadline: true,
    });
  }, 30_000);

  it('is not sent once the deadline has passed: the holder said unread', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 800);
    const other = await firstSlotOwnedBy(env, 'shard_a', slot + 1);
    const [key] = keysInSlot(slot, 1) as [string];
    const [otherKey] = keysInSlot(other, 1) as [string];
    await seedUsers(shardA(), slot, [key], 0);
    const { primaries, sent } = recordingPrimaries();
    // No wait allowed: the first refusal (CAF01) is the fence-timeout, the read its next step.
    const { writer } = await otherProcess(env, { ttlMs: 0, maxFenceWaitMs: 0, primaries });
    const failed = await whileFenced('slot', String(other), 11, () =>
      writer
        .withShardWrite(
          key,
          async ({ client }) => {
            // What the write has left, as its BEGIN set the transaction's statement_timeout (this
            // login sets none of its own): the deadline is at most that far from now.
            const { rows } = await client.query<{ setting: string }>(`select setting from pg_settings where name = 'statement_timeout'`);
            const pastDeadline = Date.now() + Number(rows[0]?.setting) + 1;
            try {
              await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'other')`, [otherKey, other, `${otherKey}@example.com`]);
            } catch (err) {
              // The refusal is handed back only once the deadline has passed (well within its
              // grace, DEADLINE_GRACE_MS, after which the connection would be dropped): a
              // refusal whose answer took that long, as from a slow path.
              while (Date.now() < pastDeadline) await new Promise((resolve) => setTimeout(resolve, pastDeadline - Date.now()));
              throw err;
            }
          },
          { deadlineMs: 300 },
        )
        .then(
          () => 'written',
          (e: unknown) => (e instanceof ShardWriteError ? `${e.reason}: ${e.message}` : `threw ${String(e)}`),
        ),
    );
    // Read with no time left (bounded by its own 1 s whatever the deadline had left, until h159), it
    // named the job: a read the write had no time for.
    expect({ failed, reads: readBounds(sent).length }).toEqual({
      failed: `fence-timeout: slot ${other} on shard shard_a stayed fenced for more than 0 ms, by a move or a hand change (its fence row could not be read)`,
      reads: 0,
    });
  }, 30_000);
});
