import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { startTcpProxy } from '../../support/tcp-proxy.js';
import { oneShardApi, type Answer, type Api } from './fixtures/one-shard-api.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';

/**
 * A read token of a timeline the shard's primary is on, issued by another server: two replicas
 * promoted one after the other, without a shared WAL archive, both take timeline 2, each with a
 * past of its own. A write the first acknowledged on timeline 2 is in no history of the second
 * (timeline-lost-write-review.test.ts has the token of timeline 1 read there). Read on the second
 * with that token, the miss answered 404 "no user", as if the write had never been made: the token
 * was of the primary's own timeline, so no history was asked, and no replica of the second ever
 * reaches its position, so the read went to the primary and answered from it. The primary can
 * tell: a token it issued is never past its WAL insert position, and this one is.
 */
describe('a read token of timeline 2 issued by another server than the timeline-2 primary read', () => {
  let cluster: TestShardCluster;
  const closers: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 2, schema: true });
  }, 180_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await cluster?.stop();
  });

  it('answers 410 for a write the first promoted server acknowledged, past the second one\'s WAL, and 200 for writes the second holds', async () => {
    const shard = cluster.shards[0];
    const [first, second] = shard?.replicas ?? [];
    if (!shard || !first || !second) throw new Error('the cluster has no two replicas');
    const serve = async (databaseUrl: string): Promise<Api> => (await oneShardApi(databaseUrl, closers)).api;
    const before = await serve(shard.primary.url);
    const kept = await before('POST', '/api/v1/users', { email: 'kept@example.org', display_name: 'kept' });
    if (kept.status !== 201) throw new Error(`the first write answered ${kept.status}`);
    await first.waitForCatchUp();
    await second.waitForCatchUp();
    closers.push(await cutWalReceiver(second.url));
    closers.push(await cutWalReceiver(first.url));

    // The primary fails; the first replica is promoted (timeline 2), the address names it, and it
    // takes writes, the last one's token on timeline 2 well past where the second's WAL will be.
    await withClient(first.url, (c) => c.query('select pg_promote(true, 60)'));
    const proxy = await startTcpProxy(Number(new URL(first.url).port));
    closers.push(() => proxy.close());
    const viaProxy = new URL(first.url);
    viaProxy.port = String(proxy.port);
    const after = await serve(viaProxy.toString());
    for (let i = 0; i < 10; i += 1) await after('POST', '/api/v1/users', { email: `pad${i}@example.org`, display_name: 'pad' });
    const written = await after('POST', '/api/v1/users', { email: 'on-first@example.org', display_name: 'first' });
    const token = written.headers.get('x-read-token') ?? '';
    const userId = String(written.body?.id);
    const onFirst = await after('GET', `/api/v1/users/${userId}`, undefined, { 'x-read-after': token });

    // The first fails as well; the second is promoted (timeline 2 too) and the address names it.
    await withClient(second.url, (c) => c.query('select pg_promote(true, 60)'));
    proxy.retarget(Number(new URL(second.url).port));
    await proxy.cut();
    await proxy.restore();
    // The connections the pool held to the first are gone: the first read after may meet one (503).
    const read = async (path: string, readAfter: string): Promise<Answer> => {
      let answer = await after('GET', path, undefined, { 'x-read-after': readAfter });
      for (let i = 0; i < 3 && answer.status === 503; i += 1) answer = await after('GET', path, undefined, { 'x-read-after': readAfter });
      return answer;
    };
    const lost = await read(`/api/v1/users/${userId}`, token);
    const keptRead = await read(`/api/v1/users/${String(kept.body?.id)}`, kept.headers.get('x-read-token') ?? '');
    const onSecond = await after('POST', '/api/v1/users', { email: 'on-second@example.org', display_name: 'second' });
    const ownRead = await read(`/api/v1/users/${String(onSecond.body?.id)}`, onSecond.headers.get('x-read-token') ?? '');

    // The premise: both on timeline 2, the token past the second's WAL.
    const second2 = await withClient(second.url, async (c) => (await c.query<{ lsn: string; f: string }>('select pg_current_wal_insert_lsn()::text as lsn, pg_walfile_name(pg_current_wal_insert_lsn()) as f')).rows[0]);
    expect({ tokenTimeline: parseReadToken(token).timeline, secondTimeline: Number.parseInt(second2?.f.slice(0, 8) ?? '', 16), pastSecond: parseLsn(parseReadToken(token).lsn) > parseLsn(second2?.lsn ?? '0/0') }).toEqual({
      tokenTimeline: 2,
      secondTimeline: 2,
      pastSecond: true,
    });

    expect(onFirst.status).toBe(200);
    // Before: 404 "no user ...".
    expect({ status: lost.status, type: lost.body?.type as unknown, timeline: lost.body?.timeline as unknown, current: lost.body?.current_timeline as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE, timeline: 2, current: 2 });
    expect(String(lost.body?.detail)).toMatch(/another server that took the same timeline number/);
    expect([keptRead.status, onSecond.status, ownRead.status]).toEqual([200, 201, 200]);
  }, 180_000);
});
