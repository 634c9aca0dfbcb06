import { spawn } from 'node:child_process';
import { setTimeout as delay } from 'node:timers/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { MOVE_CRASH_POINTS } from '../../../functions/core/sharding/move-machine.js';
import { countSlot, documentsOf, keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { startWorkload } from './fixtures/workload.js';

const here = dirname(fileURLToPath(import.meta.url));
const script = resolve(here, 'fixtures/run-move.ts');

/** Runs the job in a child process that SIGKILLs itself at `killAt`; resolves with how it ended. */
function runAndKill(env: MoveEnv, jobId: number, killAt: MoveHookPoint): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((done, fail) => {
    // `node --import tsx` rather than the tsx CLI, which would run the script in a grandchild
    // and report its death as an exit code instead of the signal.
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      env: { ...process.env, CA_DMS_MOVE_ENV: JSON.stringify(env.urls), CA_DMS_MOVE_JOB: String(jobId), CA_DMS_MOVE_KILL_AT: killAt },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', fail);
    child.on('exit', (code, signal) => {
      // PostgreSQL notices a killed client's closed socket a moment later; until then the dead
      // mover's session still holds the job's advisory lock, and a new mover would stand aside.
      void waitForAdvisoryLocksReleased(env.catalog).then(() => done({ code, signal, stderr }), fail);
    });
  });
}

async function waitForAdvisoryLocksReleased(catalog: pg.Pool): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const { rows } = await catalog.query<{ n: number }>("select count(*)::int as n from pg_locks where locktype = 'advisory' and granted");
    if (rows[0]?.n === 0) return;
    await delay(20);
  }
  throw new Error('the killed mover still holds an advisory lock after 10 s');
}

/** Every crash point of the protocol (MOVE_CRASH_POINTS), with the state the job is left in. */
const POINTS: readonly { point: MoveHookPoint; stateAfterKill: string }[] = [
  { point: 'copying', stateAfterKill: 'copying' },
  { point: 'copied', stateAfterKill: 'copying' },
  { point: 'catching_up', stateAfterKill: 'catching_up' },
  { point: 'cutover', stateAfterKill: 'cutover' },
  { point: 'fenced', stateAfterKill: 'cutover' },
  { point: 'verifying', stateAfterKill: 'verifying' },
  { point: 'published', stateAfterKill: 'verifying' },
  { point: 'cleaning_up', stateAfterKill: 'cleaning_up' },
  { point: 'cleaned', stateAfterKill: 'cleaning_up' },
];

describe('a move killed at any step', () => {
  let env: MoveEnv;
  beforeAll(async () => {
    env = await startMoveEnv();
  });
  afterAll(async () => {
    await env?.stop();
  });

  it.each(POINTS.map((p, i) => ({ ...p, slot: 300 + i })))(
    'resumes after a kill right after $point, and every acknowledged write is on the new owner exactly once',
    async ({ point, stateAfterKill, slot }) => {
      const from = await env.ownerOf(slot);
      const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
      const owners = keysInSlot(slot, 60);
      const source = env.shards.get(from) as pg.Pool;
      await seedUsers(source, slot, owners, 10);
      const seeded = await documentsOf(source, owners);
      const { rows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1', [slot]);
      const mover = env.mover({ readerGraceMs: 0 });
      const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

      const killed = await runAndKill(env, planned.id, point);
      const afterKill = await mover.get(planned.id);
      const load = startWorkload(env.writer, { owners, documents: seeded, ownerOf: new Map(rows.map((r) => [r.id, r.owner])), writers: 2 });
      // What a restarted mover does: resume every unfinished job.
      const [resumed] = await Promise.allSettled([delay(100).then(async () => (await mover.resumeAll()).find((j) => j.id === planned.id))]);
      await delay(100);
      const result = await load.stop();
      if (resumed.status === 'rejected') throw resumed.reason;
      const job = resumed.value;

      expect(killed.stderr).toBe('');
      expect(killed.signal).toBe('SIGKILL');
      expect(afterKill.state).toBe(stateAfterKill);
      expect(job?.state).toBe('done');
      expect(await env.ownerOf(slot)).toBe(to);
      expect(result.errors).toEqual([]);
      expect(result.anomalies).toEqual([]);
      expect(result.acknowledged).toBeGreaterThan(0);
      const onTarget = await documentsOf(env.shards.get(to) as pg.Pool, owners);
      expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
      expect([...onTarget].sort()).toEqual([...result.live].sort());
      expect([...result.deleted].filter((id) => onTarget.has(id))).toEqual([]);
    },
  );

  it('covers every crash point the protocol names', () => {
    expect(POINTS.map((p) => p.point)).toEqual([...MOVE_CRASH_POINTS]);
  });

  it('keeps a unit fenced while its mover is dead in the cutover, so writes wait instead of landing on the old owner', async () => {
    const slot = 320;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [user], 5);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await runAndKill(env, planned.id, 'fenced');

    const write = env.writer.withShardWrite(user, async ({ client, slot: s }) => {
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'written during the outage')`, [user, s]);
    });
    await delay(300);
    const onSourceDuringOutage = (await documentsOf(env.shards.get(from) as pg.Pool, [user])).size;
    await mover.run(planned.id);

    expect(onSourceDuringOutage).toBe(5);
    expect((await write).shardId).toBe(to);
    expect((await documentsOf(env.shards.get(to) as pg.Pool, [user])).size).toBe(6);
    // About 15 s on a loaded 2-core machine (a resumed cutover under a waiting writer), so more
    // than the suite's 30 s default leaves room.
  }, 60_000);

  it('cancels a move whose mover died in the cutover: the source reopens and the target copy goes', async () => {
    const slot = 321;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 10), 10);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await runAndKill(env, planned.id, 'fenced');

    const job = await mover.cancel(planned.id);

    expect(job.state).toBe('cancelled');
    expect(await env.ownerOf(slot)).toBe(from);
    expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(env.shards.get(from) as pg.Pool, slot)).toEqual({ users: 10, documents: 100 });
  });

  it('copies a page again when a run died after the target committed it but before its position was saved', async () => {
    const slot = 330;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    const source = env.shards.get(from) as pg.Pool;
    const target = env.shards.get(to) as pg.Pool;
    await seedUsers(source, slot, keysInSlot(slot, 6), 4);
    const mover = env.mover({ readerGraceMs: 0, copyBatchRows: 4 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // What such a run leaves behind: the first page of users on the target, no saved position.
    const { rows: page } = await source.query<{ id: string; email: string }>('select id::text, email from users where slot = $1 order by id limit 4', [slot]);
    await target.query(
      `begin; set local ca_dms.move_writer = 'on';
       insert into users (id, slot, email, display_name) select u.id::uuid, ${slot}, u.email, 'stale copy' from json_to_recordset('${JSON.stringify(page)}') u(id text, email text);
       commit`,
    );

    const job = await mover.run(planned.id);

    expect(job.state).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 6, documents: 24 });
    const { rows } = await target.query<{ n: number }>(`select count(*)::int as n from users where slot = $1 and display_name = 'stale copy'`, [slot]);
    expect(rows[0]?.n).toBe(0);
  });
});
