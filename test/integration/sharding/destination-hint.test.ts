import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createShardWriter, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { runAndKill } from './fixtures/kill.js';
import { keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * Writers of a unit that a move is copying away open connections to its destination before the
 * cutover (shard migration 011): the source's capture row names the destination, and each write
 * that reads its fence rows opens at most one more connection there, up to as many as it holds
 * on the source. Nothing is written to the destination by it, and a destination that refuses
 * connections changes nothing for the write.
 */
describe('connections to a move destination, opened ahead of the cutover', () => {
  let env: MoveEnv;
  const SLOT = 77;
  const JOB = 990_001;
  const [key, excluded] = keysInSlot(SLOT, 2) as [string, string];
  const pools: pg.Pool[] = [];

  const pool = (url: string, max = 12): pg.Pool => {
    const p = new pg.Pool({ connectionString: url, max });
    p.on('error', () => undefined);
    pools.push(p);
    return p;
  };
  /** A writer over fresh pools, every key routed to shard_a's slot 77 (hash) or directory entry. */
  const writerFor = (viaDirectory: boolean, destinationUrl = env.urls.shards['shard_b'] as string, max = 12) => {
    const source = pool(env.urls.shards['shard_a'] as string, max);
    const destination = pool(destinationUrl, max);
    const opened = { connected: 0, removed: 0 };
    destination.on('connect', () => (opened.connected += 1));
    destination.on('remove', () => (opened.removed += 1));
    const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId: 'shard_a', slot: SLOT, version: 1, viaDirectory }) };
    const writer = createShardWriter({ router, primaries: new Map([['shard_a', source], ['shard_b', destination]]) });
    const write = (k: string) => writer.withShardWrite(k, ({ client }) => client.query('update users set display_name = display_name where id = $1', [k]));
    return { source, destination, write, opened };
  };
  const shardA = (): pg.Pool => env.shards.get('shard_a') as pg.Pool;
  /** Waits for the background connections to finish opening (they count in totalCount meanwhile). */
  const settled = async (p: pg.Pool): Promise<number> => {
    for (let i = 0; i < 100 && p.idleCount < p.totalCount; i++) await new Promise((r) => setTimeout(r, 20));
    return p.totalCount;
  };

  beforeAll(async () => {
    env = await startMoveEnv();
    await seedUsers(shardA(), SLOT, [key, excluded], 1);
  }, 120_000);
  afterEach(async () => {
    await Promise.all(pools.splice(0).map((p) => p.end()));
    await shardA().query('delete from move_captures where job_id = $1', [JOB]);
    await shardA().query(`delete from write_fences where (kind = 'slot' and unit_id = $1) or (kind = 'directory' and unit_id = $2)`, [String(SLOT), key]);
  });
  afterAll(async () => {
    await env?.stop();
  });

  const capture = (kind: 'slot' | 'directory', unit: string, movingTo: string | null, excludedKeys: string[] = []) =>
    shardA().query(`insert into write_fences (kind, unit_id) values ($1, $2) on conflict do nothing`, [kind, unit]).then(() =>
      shardA().query('insert into move_captures (job_id, kind, unit_id, excluded_keys, moving_to) values ($1, $2, $3, $4, $5)', [JOB, kind, unit, excludedKeys, movingTo]),
    );

  it('fills the destination pool up to the source pool while the unit is copied, and writes nothing there', async () => {
    await capture('slot', String(SLOT), 'shard_b');
    const { source, destination, write, opened } = writerFor(false);
    // The source pool holds 4 connections (as if 4 writes ran at once); the destination holds
    // one, idle: pool.connect() would hand that one out rather than open another.
    const held = await Promise.all([1, 2, 3, 4].map(() => source.connect()));
    for (const c of held) c.release();
    (await destination.connect()).release();
    await write(key);
    expect(await settled(destination)).toBe(4);
    expect(opened.connected).toBe(4);
    // More writes never take it past the source's count.
    for (let i = 0; i < 5; i++) await write(key);
    expect(await settled(destination)).toBe(4);
    expect(opened.connected).toBe(4);
    const shardB = env.shards.get('shard_b') as pg.Pool;
    const { rows } = await shardB.query('select count(*)::int as n from users where id = $1', [key]);
    expect(rows[0]?.n).toBe(0);
    // Every one ran the warm-up (its last statement is the documents lookup) before it was pooled.
    const warmed = await shardB.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and state = 'idle' and query = 'select 1 from documents where id = $1'`,
    );
    expect(warmed.rows[0]?.n).toBe(4);
  });

  it('with the Lambda functions\' pools of one connection, opens the one and keeps writing', async () => {
    await capture('slot', String(SLOT), 'shard_b');
    const { destination, write, opened } = writerFor(false, undefined, 1);
    for (let i = 0; i < 5; i++) await write(key);
    expect(await settled(destination)).toBe(1);
    expect(opened.connected).toBe(1);
    // The warmed connection is the one a write to the destination then takes: none is opened.
    (await destination.connect()).release();
    expect(opened.connected).toBe(1);
    expect(opened.removed).toBe(0);
  });

  it.each([
    { name: 'no move in progress', setup: () => Promise.resolve(), viaDirectory: false, k: key },
    { name: 'a capture that names no destination (the target side of a move)', setup: () => capture('slot', String(SLOT), null), viaDirectory: false, k: key },
    { name: 'a key the slot move leaves behind (excluded)', setup: () => capture('slot', String(SLOT), 'shard_b', [excluded]), viaDirectory: false, k: excluded },
    { name: 'a slot move, for a key the directory places', setup: () => capture('slot', String(SLOT), 'shard_b'), viaDirectory: true, k: key },
    { name: 'a move to the shard the write goes to', setup: () => capture('slot', String(SLOT), 'shard_a'), viaDirectory: false, k: key },
  ])('opens nothing for $name', async ({ setup, viaDirectory, k }) => {
    await setup();
    const { destination, write } = writerFor(viaDirectory);
    for (let i = 0; i < 5; i++) await write(k);
    expect(await settled(destination)).toBe(0);
  });

  it("follows a directory key's own move", async () => {
    await capture('directory', key, 'shard_b');
    const { destination, write } = writerFor(true);
    await write(key);
    expect(await settled(destination)).toBe(1);
  });

  it.each([
    // A database that does not exist on a live server: every connection is refused (3D000).
    { name: 'refuses connections', database: 'no_such_database', connects: false },
    // A database without the shard schema: connections open, the warm-up statements fail (42P01).
    { name: 'cannot run the warm-up', database: 'catalog', connects: true },
  ])('leaves the write alone when the destination $name, and keeps no connection there', async ({ database, connects }) => {
    await capture('slot', String(SLOT), 'shard_b');
    const url = (env.urls.shards['shard_a'] as string).replace(/\/[^/?]+(\?|$)/, `/${database}$1`);
    const { destination, write, opened } = writerFor(false, url);
    for (let i = 0; i < 3; i++) await expect(write(key)).resolves.toMatchObject({ shardId: 'shard_a' });
    expect(await settled(destination)).toBe(0);
    if (connects) {
      // Connections were opened there, and each was discarded after its failed warm-up (the pool
      // says 'remove' once the connection has closed).
      expect(opened.connected).toBeGreaterThan(0);
      for (let i = 0; i < 100 && opened.removed < opened.connected; i++) await new Promise((r) => setTimeout(r, 20));
      expect(opened.removed).toBe(opened.connected);
    } else expect(opened.connected).toBe(0);
  });

  it('writes on a shard that has not run shard migration 011 yet (no moving_to), opening nothing', async () => {
    await shardA().query('alter table move_captures drop column moving_to');
    try {
      await shardA().query(`insert into write_fences (kind, unit_id) values ('slot', $1)`, [String(SLOT)]);
      await shardA().query(`insert into move_captures (job_id, kind, unit_id) values ($1, 'slot', $2)`, [JOB, String(SLOT)]);
      const { destination, write } = writerFor(false);
      for (let i = 0; i < 3; i++) await expect(write(key)).resolves.toMatchObject({ shardId: 'shard_a', attempts: 1 });
      expect(await settled(destination)).toBe(0);
    } finally {
      await shardA().query('delete from move_captures where job_id = $1', [JOB]);
      await shardA().query('alter table move_captures add column moving_to text');
    }
  });

  /** Runs a job, noting at each crash point what the source's capture row names (`point: moving_to`, empty with no row). */
  const runSeeingHint = async (id: number, source: pg.Pool) => {
    const seen: string[] = [];
    const done = await env
      .mover({
        async hook(point, job) {
          const { rows } = await source.query<{ moving_to: string | null }>('select moving_to from move_captures where job_id = $1', [job.id]);
          seen.push(`${point}: ${rows.map((r) => r.moving_to ?? 'null').join(',')}`);
        },
      })
      .run(id);
    return { done, seen };
  };

  it('the mover names the destination on the source capture row once the copy is done, and removes it after the cutover', async () => {
    const slot = 78;
    await seedUsers(env.shards.get(await env.ownerOf(slot)) as pg.Pool, slot, keysInSlot(slot, 3), 2);
    const { to, source } = await sides(env, slot);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const { done, seen } = await runSeeingHint(planned.id, source);
    expect(done.state).toBe('done');
    // Not during the bulk copy; from the catch-up to the cutover; gone with the capture after it.
    expect(seen.slice(0, 4)).toEqual(['copying: ', 'copied: null', 'catching_up: null', `cutover: ${to}`]);
    expect(seen).toContain(`fenced: ${to}`);
    expect(seen.at(-1)).toBe('cleaned: ');
    const { rows } = await source.query('select 1 from move_captures where job_id = $1', [planned.id]);
    expect(rows).toHaveLength(0);
  });

  it('a mover resumed at the cutover names the destination again, in the catch-up before its fence', async () => {
    const slot = 79;
    await seedUsers(env.shards.get(await env.ownerOf(slot)) as pg.Pool, slot, keysInSlot(slot, 3), 2);
    const { to, source } = await sides(env, slot);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const killed = await runAndKill(env, planned.id, 'fenced');
    expect(killed.signal).toBe('SIGKILL');
    expect((await env.mover().get(planned.id)).state).toBe('cutover');
    // The killed run named it; cleared, it shows whether the resumed run (a new process, which
    // has named nothing yet) names it before taking the fence again.
    const cleared = await source.query('update move_captures set moving_to = null where job_id = $1', [planned.id]);
    expect(cleared.rowCount).toBe(1);
    const { done, seen } = await runSeeingHint(planned.id, source);
    expect(done.state).toBe('done');
    expect(seen[0]).toBe(`fenced: ${to}`);
  });
});
