import { describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { cutWalReceiver } from '../../support/replica.js';
import { readAfterRetried, type Answer } from './fixtures/one-shard-api.js';
import { replicatedShard } from './fixtures/replicated-shard.js';
import { keptOnBothReplicas, promoteFirstBehindAddress, promoteSecondAtAddress } from './fixtures/two-promotions.js';

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
  const { cluster, closers } = replicatedShard(2);

  it('answers 410 for a write the first promoted server acknowledged, past the second one\'s WAL, and 200 for writes the second holds', async () => {
    const { first, second, serve, kept } = await keptOnBothReplicas(cluster(), closers, { email: 'kept@example.org', display_name: 'kept' });
    closers.push(await cutWalReceiver(second.url));
    closers.push(await cutWalReceiver(first.url));

    // The primary fails; the first replica is promoted (timeline 2), the address names it, and it
    // takes writes, the last one's token on timeline 2 well past where the second's WAL will be.
    const { proxy, after } = await promoteFirstBehindAddress(first, serve, closers);
    for (let i = 0; i < 10; i += 1) await after('POST', '/api/v1/users', { email: `pad${i}@example.org`, display_name: 'pad' });
    const written = await after('POST', '/api/v1/users', { email: 'on-first@example.org', display_name: 'first' });
    const token = written.headers.get('x-read-token') ?? '';
    const userId = String(written.body?.id);
    const onFirst = await after('GET', `/api/v1/users/${userId}`, undefined, { 'x-read-after': token });

    // The first fails as well; the second is promoted (timeline 2 too) and the address names it.
    await promoteSecondAtAddress(second, proxy);
    // The connections the pool held to the first are gone: the first read after may meet one (503).
    const read = (path: string, readAfter: string): Promise<Answer> => readAfterRetried(after, path, readAfter);
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
