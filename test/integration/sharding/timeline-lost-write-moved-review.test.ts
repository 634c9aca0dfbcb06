import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { documentsApiOver } from './fixtures/move-env-api.js';

/**
 * Review of issue #15's "a write lost in a failover and then moved off its shard" (sharding
 * migration 014, docs/sharding-spec.md "A write lost in a failover"):
 *  - a mover that cannot read the source's timeline_history() before the fence (shard migration
 *    027 absent, or 031 not yet applied: refused) learns nothing more by asking again once the
 *    fence is taken: that second round trip only held the unit's writes longer, at every move;
 *  - the documents API's catalog lookup (catalog.last_move_off) of a read with another shard's
 *    token was not held to the request's deadline: a lock on move_jobs hung the read past it.
 */
describe('a move off a shard recorded for read tokens of that shard (review)', () => {
  let env: MoveEnv;
  const closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    env = await startMoveEnv();
  }, 240_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await env?.stop();
  });

  it('does not ask the source for timeline_history() again while the fence is held', async () => {
    const slot = 211;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 1);
    // The source without the function (migration 027 not applied): the read before the fence answers nothing.
    await source.query('drop function timeline_history()');

    // Every statement the mover sends to the source, in order.
    const sent: string[] = [];
    const recording = new pg.Pool({ connectionString: env.urls.shards[from], max: 12 });
    recording.on('error', () => undefined);
    recording.on('connect', (client) => {
      const query = client.query.bind(client) as (...args: unknown[]) => unknown;
      (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
        const q = args[0];
        sent.push(typeof q === 'string' ? q : ((q as { text?: string } | undefined)?.text ?? ''));
        return query(...args);
      };
    });
    closers.push(() => recording.end());
    const shards = new Map(env.shards);
    shards.set(from, recording);
    const mover = env.mover({ readerGraceMs: 0, shards });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(job.state).toBe('done');

    const fenceAt = sent.findIndex((q) => q.includes("set state = 'fenced'"));
    const asked = sent.map((q, i) => ({ i, q })).filter(({ q }) => q.includes('timeline_history()'));
    const recorded = await env.catalog.query<{ tl: string | null; history: string | null }>('select source_timeline::text as tl, source_history as history from catalog.move_jobs where id = $1', [job.id]);
    expect({
      fenced: fenceAt >= 0,
      askedBeforeFence: asked.filter(({ i }) => i < fenceAt).length,
      askedWhileFenced: asked.filter(({ i }) => i > fenceAt).length,
      // The timeline the fence ran on is still recorded (from the fence's own UPDATE), without a history.
      recorded: recorded.rows,
    }).toEqual({ fenced: true, askedBeforeFence: 1, askedWhileFenced: 0, recorded: [{ tl: '1', history: null }] });
  }, 120_000);

  it("holds the catalog lookup of a list read with another shard's token to the request's deadline: a blocked catalog answers 503, not a hung request", async () => {
    const deadlineMs = 1000;
    const url = await documentsApiOver(env, closers, { defaultShard: 'shard_a', deadlineMs });
    const [owner] = keysInSlot(300, 1) as [string];
    const ownerShard = await env.ownerOf(slotOf(owner));
    const otherShard = ownerShard === 'shard_a' ? 'shard_b' : 'shard_a';
    const read = async () => {
      const res = await fetch(`${url}/api/v1/users/${owner}/documents`, { headers: { 'x-read-after': `${otherShard}@0/1;tl=1;v=1` } });
      await res.text();
      return { status: res.status, retryAfter: res.headers.get('retry-after') !== null };
    };

    // A session holds a lock on move_jobs (a migration's, an operator's): the lookup waits behind it.
    const holder = new pg.Client({ connectionString: env.urls.catalog });
    await holder.connect();
    closers.push(() => holder.end());
    await holder.query('begin; lock table catalog.move_jobs in access exclusive mode');
    // Released well after the deadline, so that a lookup not held to it answers (200) instead of hanging the test.
    const releasing = new Promise<void>((ok) => setTimeout(() => void holder.query('rollback').then(() => ok(), () => ok()), 5 * deadlineMs));
    const blocked = await read();
    await releasing;
    const free = await read();
    expect({ blocked, free }).toEqual({ blocked: { status: 503, retryAfter: true }, free: { status: 200, retryAfter: false } });
  }, 120_000);
});
