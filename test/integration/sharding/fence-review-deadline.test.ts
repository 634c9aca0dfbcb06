/**
 * The fence review as a library (`reviewFences`, fence-review.ts, what `ca-dms-scaling shards
 * fences --settle` runs) ends within its overall deadline whatever its pools do: a caller's pools
 * need not bound anything themselves (these have no connection or query timeout, as a plain
 * `new pg.Pool()`). A shard that goes silent (SilentRelay: a black-holed path, accepted and never
 * answered) before its read, or while a row of it is being settled, is reported and the review
 * answers by the deadline; a silent catalog ends the review with FenceReviewTimeoutError by then.
 */
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FenceReviewTimeoutError, reviewFences } from '../../../functions/adapters/postgres/fence-review.js';
import { fenceState, firstSlotOwnedBy, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { SilentRelay } from './fixtures/silent-relay.js';

/** The review's deadline in these tests. */
const TIMEOUT_MS = 3_000;
/** Far past it: a review still running then would hang. */
const HANG_MS = 25_000;

let env: MoveEnv;
const relays: SilentRelay[] = [];
const pools: pg.Pool[] = [];
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  for (const r of relays) await r.stop();
  // A pool with a silent connection may wait on it: not longer than this.
  await Promise.race([Promise.all(pools.map((p) => p.end().catch(() => undefined))), delay(5_000)]);
  await env?.stop();
}, 60_000);

/** A pool without bounds of its own (no connection or query timeout) through a relay to `url`. */
async function throughRelay(url: string): Promise<{ relay: SilentRelay; pool: pg.Pool }> {
  const relay = await SilentRelay.start(Number(new URL(url).port));
  relays.push(relay);
  const pool = new pg.Pool({ connectionString: relay.url(url), max: 2 });
  pool.on('error', () => undefined);
  pools.push(pool);
  return { relay, pool };
}

/** What the review answers within HANG_MS, and after how long. */
async function timed<T>(run: Promise<T>): Promise<{ outcome: T | Error | 'still running'; ms: number }> {
  const started = performance.now();
  const outcome = await Promise.race([run.catch((e: unknown) => (e instanceof Error ? e : new Error(String(e)))), delay(HANG_MS).then(() => 'still running' as const)]);
  return { outcome, ms: performance.now() - started };
}

/** A hand change's `fenced` row left on `shard` for a slot the map gives it: `--settle` reopens it. */
async function leftFenced(shard: string, from: number): Promise<number> {
  const slot = await firstSlotOwnedBy(env, shard, from);
  const version = (await env.slotMaps.current()).version;
  await env.shards.get(shard)?.query(`insert into write_fences (kind, unit_id, state, map_version, updated_at) values ('slot', $1, 'fenced', $2, now() - interval '1 hour')`, [String(slot), version]);
  return slot;
}

/** Whether catalog.owner_change_review can be locked now (no review holds it). */
async function reviewLockFree(): Promise<boolean> {
  const c = await env.catalog.connect();
  try {
    await c.query('begin');
    await c.query('select 1 from catalog.owner_change_review where id = 1 for update nowait');
    return true;
  } catch {
    return false;
  } finally {
    await c.query('rollback').catch(() => undefined);
    c.release();
  }
}

describe('the fence review ends within its deadline', () => {
  it.each([
    ['before its read (every new connection accepted, never answered)', 100, (r: SilentRelay) => r.blackhole()],
    ['once its read is sent', 150, (r: SilentRelay) => r.blackholeAfter('from write_fences')],
  ])('a shard silent %s is listed unreachable by the deadline; the other shard is reviewed and settled', async (_when, from, silence) => {
    const slot = await leftFenced('shard_a', from);
    const { relay, pool } = await throughRelay(env.urls.shards['shard_b'] as string);
    silence(relay);

    const { outcome, ms } = await timed(reviewFences({ catalog: env.catalog, shards: new Map([['shard_a', env.shards.get('shard_a') as pg.Pool], ['shard_b', pool]]), settle: true, olderThanMs: 0, timeoutMs: TIMEOUT_MS }));

    expect(outcome).not.toBe('still running');
    expect(outcome).not.toBeInstanceOf(Error);
    const review = outcome as Exclude<typeof outcome, Error | 'still running'>;
    expect(review.unreachable).toEqual([expect.stringMatching(/^shard_b \(no answer within \d+ ms, half the time the review had left of its 3000 ms\)$/)]);
    expect(review.rows.find((r) => r.shard === 'shard_a' && r.unitId === String(slot))?.outcome).toBe("settled: reopened (deleted), shard_a takes the slot's writes");
    expect(await fenceState(env.shards.get('shard_a') as pg.Pool, slot)).toBeUndefined();
    expect(ms).toBeLessThan(TIMEOUT_MS + 2_000);
  }, 60_000);

  it('a shard silent while its row is being settled leaves that row, said so, by the deadline; the catalog lock is let go', async () => {
    const slot = await leftFenced('shard_b', 200);
    const { relay, pool } = await throughRelay(env.urls.shards['shard_b'] as string);
    relay.blackholeAfter('delete from write_fences');

    const { outcome, ms } = await timed(reviewFences({ catalog: env.catalog, shards: new Map([['shard_a', env.shards.get('shard_a') as pg.Pool], ['shard_b', pool]]), settle: true, olderThanMs: 0, timeoutMs: TIMEOUT_MS }));

    expect(outcome).not.toBe('still running');
    expect(outcome).not.toBeInstanceOf(Error);
    const review = outcome as Exclude<typeof outcome, Error | 'still running'>;
    expect(review.rows.find((r) => r.shard === 'shard_b' && r.unitId === String(slot))?.outcome).toMatch(/^left: no answer by the review's deadline \(3000 ms\)/);
    expect(ms).toBeLessThan(TIMEOUT_MS + 2_000);
    // The review's lock on catalog.owner_change_review is gone: a hand change would not wait on it.
    expect(await reviewLockFree()).toBe(true);
    // Settled by hand for the next test: the row is left as it was.
    expect(await fenceState(env.shards.get('shard_b') as pg.Pool, slot)).toBe('fenced');
    await env.shards.get('shard_b')?.query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
  }, 60_000);

  it('a silent catalog ends the review with FenceReviewTimeoutError by the deadline, nothing settled', async () => {
    const slot = await leftFenced('shard_a', 300);
    const { relay, pool } = await throughRelay(env.urls.catalog);
    relay.blackhole();

    const { outcome, ms } = await timed(reviewFences({ catalog: pool, shards: env.shards, settle: true, olderThanMs: 0, timeoutMs: TIMEOUT_MS }));

    expect(outcome).toBeInstanceOf(FenceReviewTimeoutError);
    expect((outcome as Error).message).toMatch(/^the fence review did not end within 3000 ms: the catalog did not answer/);
    expect(ms).toBeLessThan(TIMEOUT_MS + 2_000);
    expect(await fenceState(env.shards.get('shard_a') as pg.Pool, slot)).toBe('fenced');
  }, 60_000);
});
