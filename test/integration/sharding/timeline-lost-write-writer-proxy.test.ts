import { describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { readOptionsFor } from '../../../functions/adapters/postgres/read-transaction.js';
import { cutWalReceiver } from '../../support/replica.js';
import { startWriterProxy } from '../../support/writer-proxy.js';
import { ONE_SHARD, oneShardApi, type Answer } from './fixtures/one-shard-api.js';
import { replicatedShard } from './fixtures/replicated-shard.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';

/**
 * A shard address through RDS Proxy: the proxy keeps client connections open across a failover
 * and lends them the new writer (test/support/writer-proxy.ts, with the AWS pages it follows). The
 * reader checked each pooled connection's server once (in recovery? timeline, server start) and
 * judged read tokens against that check for the connection's life. After the failover the same
 * connection reached the promoted replica, on timeline 2, while the reader still took it for the
 * timeline-1 primary it had checked: a token of a write that primary acknowledged and the
 * failover lost was judged on timeline 1, found behind the position a read had seen timeline 1's
 * server at, and the miss answered 404 "no user", as if the write had never been made.
 */
describe('a read token through a proxy that keeps its client connections across a failover', () => {
  const { cluster, closers } = replicatedShard(1);

  it('answers 410 for a write lost in the failover, on the connection the proxy moved to the promoted replica', async () => {
    // One connection: every request below is served on the same pooled client.
    const { replica, proxy, api, pools } = await apiThroughWriterProxy(cluster, closers);
    const tokenOf = (answer: Answer): string => {
      const token = answer.headers.get('x-read-token');
      if (answer.status !== 201 || token === null) throw new Error(`the write answered ${answer.status} without a token: ${JSON.stringify(answer.body)}`);
      return token;
    };
    const read = (path: string, token?: string): Promise<Answer> => api('GET', path, undefined, token === undefined ? {} : { 'x-read-after': token });

    const kept = await api('POST', '/api/v1/users', { email: 'kept@example.org', display_name: 'kept' });
    const keptToken = tokenOf(kept);
    await replica.waitForCatchUp();
    // The replica stops receiving; the primary acknowledges a write it never gets.
    closers.push(await cutWalReceiver(replica.url));
    const lost = await api('POST', '/api/v1/users', { email: 'lost@example.org', display_name: 'lost' });
    const lostToken = tokenOf(lost);
    const lostId = String(lost.body.id);
    // Read your write, on the primary that made it.
    const beforeFailover = await read(`/api/v1/users/${lostId}`, lostToken);

    // The primary fails; the replica is promoted (timeline 2); the proxy's writer is now the
    // replica, and the client connection the pool holds stays open.
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    await proxy.failover(Number(new URL(replica.url).port));
    const afterFailover = await read(`/api/v1/users/${lostId}`, lostToken);
    const keptRead = await read(`/api/v1/users/${String(kept.body.id)}`, keptToken);
    const onPromoted = await api('POST', '/api/v1/users', { email: 'promoted@example.org', display_name: 'promoted' });
    const ownRead = await read(`/api/v1/users/${String(onPromoted.body?.id)}`, tokenOf(onPromoted));
    const withoutToken = await read(`/api/v1/users/${lostId}`);

    // The premise: one pooled connection all along, moved once by the proxy; the token of
    // timeline 1, past where timeline 1 ends in the promoted replica's history.
    const fork = await withClient(replica.url, async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      return /^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '')?.[1] ?? '';
    });
    const token = parseReadToken(lostToken);
    expect({ connections: pools.primary(ONE_SHARD).pool.totalCount, moved: proxy.moved(), timeline: token.timeline, pastFork: parseLsn(token.lsn) > parseLsn(fork) }).toEqual({
      connections: 1,
      moved: 1,
      timeline: 1,
      pastFork: true,
    });

    expect({ status: beforeFailover.status, id: beforeFailover.body?.id as unknown }).toEqual({ status: 200, id: lostId });
    // Before: 404 "no user ...", judged against the connection's first server.
    expect({ status: afterFailover.status, type: afterFailover.body?.type as unknown, lsn: afterFailover.body?.lsn as unknown, fork: afterFailover.body?.fork_lsn as unknown, current: afterFailover.body?.current_timeline as unknown }).toEqual({
      status: 410,
      type: WRITE_LOST_TYPE,
      lsn: token.lsn,
      fork,
      current: 2,
    });
    expect([keptRead.status, onPromoted.status, ownRead.status, withoutToken.status]).toEqual([200, 201, 200, 404]);
  }, 120_000);
});

/**
 * The same proxy lending each transaction whichever server connection it has (multiplexing, RDS
 * Proxy's default), the failover falling between two transactions of one read: the primary check
 * (in recovery? timeline, server start, WAL position) was a statement of its own, and the read's
 * snapshot another transaction, so the check could be answered by the old writer and the read by
 * the new one. The verdict on the token was then the old server's (the write there: no loss) and
 * the miss the new one's, answered 404 "no user", as if the write had never been made. The check
 * now runs in the read's own transaction (its BEGIN's round trip): both come from one server.
 */
describe('a read token through a proxy that fails over between two transactions of one read', () => {
  const { cluster, closers } = replicatedShard(1);

  it("never answers 404 for a write it judged from another server's check", async () => {
    const { api, proxy, lost, lostToken } = await lostWriteFailingOverAfterCheck(cluster, closers);
    const read = await api('GET', `/api/v1/users/${String(lost.body.id)}`, undefined, { 'x-read-after': lostToken });
    const next = await api('GET', `/api/v1/users/${String(lost.body.id)}`, undefined, { 'x-read-after': lostToken });

    expect(proxy.moved()).toBe(1);
    // Judged and read on the old primary (the write is there), or both on the promoted one (410); never 404.
    expect({ status: read.status, id: read.body?.id as unknown }).toEqual({ status: 200, id: lost.body.id });
    expect({ status: next.status, type: next.body?.type as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE });
  }, 120_000);
});

/**
 * The same failover between two transactions, through `ReplicaReader.query` (one statement, the
 * library's documented read, and GET /api/v1/documents/:id's read of every shard without an owner):
 * its primary check was still a statement of its own, outside the read's BEGIN that
 * `createShardReader` now sends it in, so the verdict on the token was the old writer's (no loss)
 * and the miss the new one's: no rows and no lost write, a miss the caller answers 404.
 */
describe('ReplicaReader.query with a token through a proxy that fails over between two transactions of one read', () => {
  const { cluster, closers } = replicatedShard(1);

  it("never answers a miss for a write it judged from another server's check", async () => {
    const { reader, proxy, lost, lostToken } = await lostWriteFailingOverAfterCheck(cluster, closers);
    const options = readOptionsFor(ONE_SHARD, parseReadToken(lostToken));
    const read = await reader.query<{ id: string }>(ONE_SHARD, 'select id::text as id from users where id = $1', [lost.body.id], options);
    const next = await reader.query<{ id: string }>(ONE_SHARD, 'select id::text as id from users where id = $1', [lost.body.id], options);
    const seen = (r: typeof read) => ({ ids: r.rows.map((row) => row.id), lost: r.lostWrite?.currentTimeline });

    expect(proxy.moved()).toBe(1);
    // Before: { ids: [], lost: undefined } for the first (checked on the old writer, read on the new one).
    expect({ read: seen(read), next: seen(next) }).toEqual({ read: { ids: [lost.body.id], lost: undefined }, next: { ids: [], lost: 2 } });
  }, 120_000);
});

/**
 * A one-shard API through a writer proxy, its replica cut off from the primary's WAL, a user
 * written (its row on the old primary only), the replica promoted, and the proxy set to move its
 * connection to the promoted server once the transaction holding the primary check has ended
 * (the old primary still answers: it has not noticed).
 */
async function lostWriteFailingOverAfterCheck(cluster: ReturnType<typeof replicatedShard>['cluster'], closers: ReturnType<typeof replicatedShard>['closers']) {
  const { replica, proxy, api, reader } = await apiThroughWriterProxy(cluster, closers);
  await replica.waitForCatchUp();
  closers.push(await cutWalReceiver(replica.url));
  const lost = await api('POST', '/api/v1/users', { email: 'lost@example.org', display_name: 'lost' });
  const lostToken = lost.headers.get('x-read-token');
  if (lost.status !== 201 || lostToken === null) throw new Error(`the write answered ${lost.status} without a token`);
  await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
  proxy.failoverAfter('pg_is_in_recovery() as in_recovery', Number(new URL(replica.url).port));
  return { api, reader, proxy, lost, lostToken };
}

/** The one-shard API over the cluster's primary through a writer proxy, on one pooled connection. */
async function apiThroughWriterProxy(cluster: ReturnType<typeof replicatedShard>['cluster'], closers: ReturnType<typeof replicatedShard>['closers']) {
  const shard = cluster().shards[0];
  const replica = shard?.replicas[0];
  if (!shard || !replica) throw new Error('the cluster has no replica');
  const proxy = await startWriterProxy(Number(new URL(shard.primary.url).port));
  closers.push(() => proxy.close());
  const viaProxy = new URL(shard.primary.url);
  viaProxy.port = String(proxy.port);
  return { shard, replica, proxy, ...(await oneShardApi(viaProxy.toString(), closers, { max: 1 })) };
}
