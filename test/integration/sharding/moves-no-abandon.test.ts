/**
 * A run given no `abandonAt` (local mode's background mover, the operator CLI) against a shard
 * whose server stopped answering (SIGSTOP of its postmaster and every backend: connections
 * accepted, nothing answered, nothing reset). Without a bound of its own such a run would wait for
 * ever, its lease renewed, the job shown busy; it must instead end within the mover's
 * `shardWaitMs`, having changed nothing it cannot resume from, and the next run must finish the
 * move once the shard answers again.
 */
import '../../support/quiet-powertools.js';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ListeningClient } from '../../../functions/adapters/postgres/listening-client.js';
import type { MoveJob } from '../../../functions/adapters/postgres/mover.js';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
/** The runs' shard pools, built as the product builds them (a connection closed under a run must not crash the process). */
let shards: Map<string, pg.Pool>;
let thaw: (() => void) | undefined;
beforeAll(async () => {
  env = await startMoveEnv();
  shards = new Map(Object.entries(env.urls.shards).map(([id, url]) => [id, new pg.Pool({ connectionString: url, max: 4, Client: ListeningClient })]));
  for (const pool of shards.values()) pool.on('error', () => undefined);
});
afterEach(() => {
  thaw?.();
  thaw = undefined;
});
afterAll(async () => {
  thaw?.();
  await Promise.race([Promise.all([...(shards?.values() ?? [])].map((p) => p.end().catch(() => undefined))), delay(5000)]);
  await Promise.race([env?.stop(), delay(20_000)]);
}, 60_000);

/** The shard whose server is not the catalog's (the catalog lives beside `shard_a`). */
const FROZEN = 'shard_b';

/**
 * Freezes the server of `pool` (SIGSTOP to its postmaster and every process it started): it stops
 * answering without closing any connection. Answers the function that thaws it (safe to call twice).
 */
async function freeze(pool: pg.Pool): Promise<() => void> {
  const { rows } = await pool.query<{ dir: string }>("select current_setting('data_directory') as dir");
  const postmaster = Number(readFileSync(join(rows[0]?.dir as string, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const children = execFileSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(Number);
  const signal = (sig: NodeJS.Signals): void => {
    for (const pid of [postmaster, ...children]) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone already
      }
    }
  };
  signal('SIGSTOP');
  return () => signal('SIGCONT');
}

/** How a run ended: `ended: <state>`, `threw: <message>`, or `still running` after `withinMs`. */
const settle = (run: Promise<MoveJob>, withinMs: number): Promise<string> =>
  Promise.race([
    run.then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    ),
    delay(withinMs).then(() => 'still running'),
  ]);

/** Ten times the bound the runs below are given: a run still going then waits for the shard for ever. */
const WAIT_MS = 2000;
const HANG_MS = 10 * WAIT_MS;

describe('a run with no abandonAt against a shard that stopped answering', () => {
  it('fails its permit claim within shardWaitMs, naming the shard, with nothing changed, and the next run finishes the move', async () => {
    const slot = 1700;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    thaw = await freeze(env.shards.get(FROZEN) as pg.Pool);

    const run = env.mover({ shards, shardWaitMs: WAIT_MS, leaseTtlMs: 1500 }).run(planned.id);
    const outcome = await settle(run, HANG_MS);
    thaw();
    const role = FROZEN === from ? 'source' : 'target';
    expect(outcome).toMatch(new RegExp(`^threw: move job #${planned.id}: ${FROZEN}, the move's ${role}, could not be reached to claim this run's permit`));
    await Promise.race([run.catch(() => undefined), delay(5000)]);

    const job = await env.mover().get(planned.id);
    expect({ state: job.state, error: job.error }).toEqual({ state: 'planned', error: expect.stringContaining(`${FROZEN}, the move's ${role}, could not be reached`) as unknown as string });
    expect(await unitFenceState(source, 'slot', String(slot))).toBeUndefined();
    // Resumed once the shard answers: the lease was given back, and the move finishes.
    expect((await env.mover().run(planned.id)).state).toBe('done');
    expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 3, documents: 6 });
  }, 60_000);

  it('ends within shardWaitMs when the shard stops answering during the copy, the job left in copying with no fence, and the next run finishes it', async () => {
    const slot = 1701;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const mover = env.mover({
      shards,
      shardWaitMs: WAIT_MS,
      leaseTtlMs: 1500,
      hook: async (point) => {
        if (point === 'copying' && thaw === undefined) thaw = await freeze(env.shards.get(FROZEN) as pg.Pool);
      },
    });

    const run = mover.run(planned.id);
    const outcome = await settle(run, HANG_MS);
    const frozen = thaw !== undefined;
    thaw?.();
    expect(frozen).toBe(true);
    expect(outcome).toMatch(new RegExp(`^threw: move job #${planned.id} stopped in copying: `));
    await Promise.race([run.catch(() => undefined), delay(5000)]);

    const job = await env.mover().get(planned.id);
    expect(job.state).toBe('copying');
    expect(await unitFenceState(env.shards.get(from) as pg.Pool, 'slot', String(slot))).not.toBe('fenced');
    expect((await env.mover().run(planned.id)).state).toBe('done');
    expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 3, documents: 6 });
  }, 60_000);

  it('names shardWaitMs and the shard when it closes a copy page held past it, the page not written on the target, and the next run finishes the move', async () => {
    const slot = 1702;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    // An uncommitted row with the id of the page's first document holds the page's COPY on the
    // target (its unique index) past the bound: the shard answers, the step outlasts shardWaitMs.
    const { rows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1 order by id limit 1', [slot]);
    const first = rows[0] as { id: string; owner: string };
    const blocker = new pg.Client({ connectionString: env.urls.shards[to] });
    blocker.on('error', () => undefined);
    await blocker.connect();
    try {
      await blocker.query('begin; set local session_replication_role = replica');
      await blocker.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'blocker')`, [first.id, first.owner, slot]);
      const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });

      const outcome = await settle(env.mover({ shards, shardWaitMs: WAIT_MS, leaseTtlMs: 1500 }).run(planned.id), HANG_MS);
      const job = await env.mover().get(planned.id);
      await blocker.query('rollback');

      // Both of the page's connections are out past the bound; the first closed fails the page.
      const named = `(?:${from}|${to})/primary: the mover closed this connection, checked out for`;
      expect(outcome).toMatch(new RegExp(`^threw: move job #${planned.id} stopped in copying: .*${named} \\d+ ms, at the mover's shardWaitMs, ${WAIT_MS} ms`));
      expect({ state: job.state, error: job.error }).toEqual({ state: 'copying', error: expect.stringContaining(`at the mover's shardWaitMs, ${WAIT_MS} ms`) as unknown as string });
      expect((await countSlot(target, slot)).documents).toBe(0);
      expect((await env.mover().run(planned.id)).state).toBe('done');
      expect(await countSlot(target, slot)).toEqual({ users: 3, documents: 6 });
    } finally {
      await blocker.end();
    }
  }, 60_000);

  it('refuses a shardWaitMs that is not a whole number of ms of at least 1000, naming it', async () => {
    await expect(env.mover({ shardWaitMs: 0 }).run(999_999)).rejects.toThrow(/shardWaitMs must be a whole number of ms, at least 1000 \(got 0\)/);
    await expect(env.mover({ shardWaitMs: 1.5e3 + 0.5 }).run(999_999)).rejects.toThrow(/shardWaitMs must be/);
  });
});
