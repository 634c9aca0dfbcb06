import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import type { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { formatLsn, parseLsn } from '../../../functions/core/sharding/lsn.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { oneShardApi, readAfterRetried, type Answer, type Api } from './fixtures/one-shard-api.js';
import { replicatedShard } from './fixtures/replicated-shard.js';
import { keptOnBothReplicas, promoteFirstBehindAddress, promoteSecondAtAddress } from './fixtures/two-promotions.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';
/**
 * The start of the round trip that begins a replica reader's transaction, with its deadline's
 * settings and its primary check (replica-reader.ts, PRIMARY_CHECK_SQL), as pg_stat_activity
 * shows it (a LIKE pattern).
 */
const READ_BEGIN_LIKE = 'begin isolation level repeatable read read only; select set_config(%';
const PAGE = 8192n;


const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Review of issue #15's "a write lost in a failover answers 410" (timeline-lost-write.test.ts has
 * the change's own cases): a kept write whose commit ends exactly at a WAL page boundary, and the
 * history query one read shares with the reads that ask at the same time.
 */
describe('a read token after a failover, at the edges', () => {
  let cluster: TestShardCluster;
  const closers: (() => Promise<void>)[] = [];

  /** A documents API over `given` (a new pool set and reader on `primaryUrl` when not given), on a loopback port. */
  const apiOn = (primaryUrl: string, given?: { pools: ShardPools; reader: ReplicaReader }): Promise<{ api: Api; pools: ShardPools; reader: ReplicaReader }> =>
    oneShardApi(primaryUrl, closers, { max: 4, ...(given === undefined ? {} : { given }) });
  const tokenOf = (answer: Answer): string => {
    const token = answer.headers.get('x-read-token');
    if (answer.status !== 201 || token === null) throw new Error(`the write answered ${answer.status} without a token: ${JSON.stringify(answer.body)}`);
    return token;
  };

  let promotedUrl = '';
  let keptUser = '';
  let keptDoc = '';
  let keptDocToken = '';
  let lostUser = '';
  let lostUserToken = '';
  let fork = '';

  beforeAll(async () => {
    // No autovacuum: its WAL between a write and the receiver's cut would move the fork point.
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true, primary: { settings: { autovacuum: 'off' } } });
    const shard = cluster.shards[0];
    const replica = shard?.replicas[0];
    if (!shard || !replica) throw new Error('the cluster has no replica');
    const { api: before } = await apiOn(shard.primary.url);
    const kept = await before('POST', '/api/v1/users', { email: 'kept@example.org', display_name: 'kept' });
    tokenOf(kept);
    keptUser = String(kept.body.id);
    const primary = new pg.Client({ connectionString: shard.primary.url });
    await primary.connect();
    closers.push(() => primary.end());
    const insertLsn = async (): Promise<bigint> => parseLsn((await primary.query<{ l: string }>('select pg_current_wal_insert_lsn()::text as l')).rows[0]?.l ?? '0/0');
    /** Emits a WAL record of `bytes` bytes (a multiple of 8) from the insert position, by a logical message sized to it. */
    let messageOverhead: bigint | undefined;
    const emit = async (payload: bigint): Promise<void> => {
      await primary.query("select pg_logical_emit_message(false, 'pad', repeat('x', $1::int))", [Number(payload)]);
    };
    const measureOverhead = async (): Promise<bigint> => {
      for (;;) {
        const a = await insertLsn();
        await emit(200n);
        const b = await insertLsn();
        if (a / PAGE === b / PAGE) return b - a - 200n;
      }
    };

    // A document of the kept user whose write (through the API's writer, its commit last) ends
    // exactly at a WAL page boundary, and the replica holds exactly that much when it stops
    // receiving: the fork point is that boundary, and the write is kept.
    let writeBytes = 512n;
    for (let round = 0; ; round += 1) {
      if (round === 60) throw new Error('could not place a write at a WAL page boundary in 60 rounds');
      messageOverhead ??= await measureOverhead();
      const start = await insertLsn();
      const offset = start % PAGE;
      if (writeBytes >= PAGE - 200n) throw new Error(`the write takes ${writeBytes} bytes of WAL`);
      // The write should start at PAGE - writeBytes in some page; the padding record before it.
      let pad = (PAGE - writeBytes - offset + PAGE) % PAGE;
      if (pad < messageOverhead + 300n) {
        pad += PAGE - 24n;
      }
      // Crossing into the next page, the record is 24 bytes (a page header) shorter than the distance.
      await emit(pad - messageOverhead);
      const writeStart = await insertLsn();
      const missedBy = writeStart % PAGE - (PAGE - writeBytes);
      if (missedBy !== 0n) {
        // The padding record came out another size (its header's form depends on its length):
        // learn by how much, and pad again from where it ended.
        if (missedBy > -64n && missedBy < 64n) messageOverhead += missedBy;
        continue;
      }
      const written = await before('POST', '/api/v1/documents', { owner_id: keptUser, title: `at the boundary ${round}` });
      const token = parseReadToken(tokenOf(written));
      const end = parseLsn(token.lsn);
      const endOffset = end % PAGE;
      if (endOffset === 24n || endOffset === 40n) {
        const boundary = end - endOffset;
        await replica.waitForCatchUp();
        const restore = await cutWalReceiver(replica.url);
        const received = await withClient(replica.url, async (c) => (await c.query<{ l: string }>('select pg_last_wal_receive_lsn()::text as l')).rows[0]?.l ?? '0/0');
        if (parseLsn(received) === boundary) {
          closers.push(restore);
          keptDoc = String(written.body.id);
          keptDocToken = tokenOf(written);
          break;
        }
        // Other WAL reached the replica after the write: try again.
        await restore();
        await sleep(500);
        continue;
      }
      // Learn the write's size from this one (one page header more when it crossed a boundary).
      const used = end - writeStart;
      writeBytes = end / PAGE === writeStart / PAGE ? used : used - 24n;
    }
    // Past the fork: a write the promoted replica never receives.
    const lost = await before('POST', '/api/v1/users', { email: 'lost@example.org', display_name: 'lost' });
    lostUserToken = tokenOf(lost);
    lostUser = String(lost.body.id);
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    promotedUrl = replica.url;
    fork = await withClient(promotedUrl, async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      const m = /^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '');
      if (!m?.[1]) throw new Error(`no line for timeline 1 in the history: ${JSON.stringify(rows[0]?.text)}`);
      return m[1];
    });
  }, 180_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await cluster?.stop();
  });

  it('reads a kept write whose commit ends at a WAL page boundary, the fork point, as kept: the list holds it (200), not 410', async () => {
    const { api } = await apiOn(promotedUrl);
    const token = parseReadToken(keptDocToken);
    const list = await api('GET', `/api/v1/users/${keptUser}/documents`, undefined, { 'x-read-after': keptDocToken });
    const lostList = await api('GET', `/api/v1/users/${keptUser}/documents`, undefined, { 'x-read-after': lostUserToken });

    // The premise: the token points past the page header that follows the boundary where the
    // commit ended; the fork point is that boundary; the write is on the promoted server.
    const raw = parseLsn(token.lsn);
    expect({ offset: Number(raw % PAGE) === 24 || Number(raw % PAGE) === 40, fork: formatLsn(raw - (raw % PAGE)), timeline: token.timeline }).toEqual({ offset: true, fork, timeline: 1 });
    expect({ status: list.status, ids: (list.body.items as { id: string }[] | undefined)?.map((d) => d.id).includes(keptDoc) }).toEqual({ status: 200, ids: true });
    // A token past the fork still answers 410 on the list.
    expect({ status: lostList.status, type: lostList.body.type as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE });
  }, 60_000);

  /**
   * The history query of the first read on a new timeline is shared with the reads that ask while
   * it runs. Here it takes a while (a wrapper that sleeps first); a second read joins it; then the
   * first read's query fails for a reason of its own: cancelled (its deadline) or its connection
   * ended. The second read's own connection is fine.
   */
  it.each([
    ['was cancelled', 'pg_cancel_backend'],
    ['lost its connection', 'pg_terminate_backend'],
  ])('answers 410 on a read that joined another read\'s history query, which then %s', async (_what, how) => {
    // The read asks in its own read-only transaction (ReplicaReader, ReadOptions.begin), where a
    // sequence cannot advance: the first asker is told by an advisory lock it holds to its end, and
    // it waits on the gate this session holds until the first asker's query has been ended.
    const gate = new pg.Client({ connectionString: promotedUrl });
    gate.on('error', () => undefined);
    await gate.connect();
    await gate.query('select pg_advisory_lock(4712)');
    await withClient(promotedUrl, async (c) => {
      await c.query('alter function timeline_history() rename to timeline_history_slow_inner');
      await c.query(`create function timeline_history() returns table (timeline bigint, history text) language plpgsql as $$
        begin
          -- Only the first asker waits: the others answer at once (or, once it is gone, after the gate).
          if pg_try_advisory_xact_lock(4711) then perform pg_advisory_xact_lock_shared(4712); end if;
          return query select * from timeline_history_slow_inner();
        end $$`);
    });
    try {
      const first = await apiOn(promotedUrl);
      const second = await apiOn(promotedUrl, { pools: first.pools, reader: first.reader });
      const read = (api: Api): Promise<Answer> => api('GET', `/api/v1/users/${lostUser}`, undefined, { 'x-read-after': lostUserToken });
      const activity = async <T extends pg.QueryResultRow>(sql: string): Promise<T[]> => withClient(promotedUrl, async (c) => (await c.query<T>(sql)).rows);
      const waitFor = async (what: string, sql: string): Promise<number> => {
        for (let i = 0; i < 400; i += 1) {
          const [row] = await activity<{ pid: number }>(sql);
          if (row !== undefined) return row.pid;
          await sleep(25);
        }
        throw new Error(`no ${what} within 10 s`);
      };
      const firstAnswer = read(first.api);
      const sleeping = await waitFor('history query', "select pid from pg_stat_activity where query like '%timeline_history()%' and state = 'active' and pid <> pg_backend_pid()");
      const secondAnswer = read(second.api);
      // The second read's connection made its primary check and now waits on the first's query.
      // (In its read's transaction, begun with the check in one round trip: idle in that
      // transaction, the check has answered. Matched by the round trip's start: since the BEGIN
      // keeps a login's idle_in_transaction_session_timeout too, the round trip is longer than
      // pg_stat_activity keeps of a query, track_activity_query_size's 1024 bytes, and the check
      // at its end is cut off there.)
      await waitFor('second connection', `select pid from pg_stat_activity where query like '${READ_BEGIN_LIKE}' and state = 'idle in transaction' and pid <> ${sleeping}`);
      await sleep(200);
      await activity(`select ${how}(${sleeping})`);
      await gate.query('select pg_advisory_unlock(4712)');
      const [a, b] = await Promise.all([firstAnswer, secondAnswer]);

      expect({ first: a.status === 410 }).toEqual({ first: false });
      expect({ status: b.status, type: b.body?.type as unknown, detail: b.body?.detail as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE, detail: expect.stringContaining('this write was lost in a failover') as unknown });
    } finally {
      await withClient(promotedUrl, async (c) => {
        // The wrapper's sleeping query may still hold it: end what is left of it first.
        await c.query("select pg_terminate_backend(pid) from pg_stat_activity where query like '%timeline_history()%' and pid <> pg_backend_pid()");
        await c.query('drop function timeline_history()');
        await c.query('alter function timeline_history_slow_inner() rename to timeline_history');
      });
      await gate.end().catch(() => undefined);
    }
  }, 120_000);
});

/**
 * Without a shared WAL archive, two replicas of one primary promoted one after the other (the
 * first failed too, or was given up) both take timeline 2, each with its own switchpoint. A reader
 * process that read the first one's history must not apply it to the second: a write the first
 * had received and the second had not is lost on the second.
 */
describe('a read token after two replicas were promoted to the same timeline number', () => {
  const { cluster, closers } = replicatedShard(2);

  it('answers 410 on the second for a write the first had received, after the address moved from the first to the second', async () => {
    const { first, second, serve, before } = await keptOnBothReplicas(cluster(), closers, { email: 'both@example.org', display_name: 'both' });
    // The second replica stops receiving first; the write then reaches the first replica only.
    closers.push(await cutWalReceiver(second.url));
    const written = await before('POST', '/api/v1/users', { email: 'first-only@example.org', display_name: 'first only' });
    const token = written.headers.get('x-read-token') ?? '';
    const userId = String(written.body?.id);
    await first.waitForCatchUp();
    closers.push(await cutWalReceiver(first.url));

    // The primary fails; the first replica is promoted (timeline 2) and the address names it.
    const { proxy, after } = await promoteFirstBehindAddress(first, serve, closers);
    const onFirst = await after('GET', `/api/v1/users/${userId}`, undefined, { 'x-read-after': token });

    // The first fails as well; the second is promoted (timeline 2 too) and the address names it.
    await promoteSecondAtAddress(second, proxy);
    // The connections the pool held to the first are gone: the first read after may meet one (503).
    const onSecond = await readAfterRetried(after, `/api/v1/users/${userId}`, token);

    // The premise: both on timeline 2, the token at or before the first's fork, past the second's.
    const forkOf = async (url: string): Promise<{ timeline: number; fork: bigint }> =>
      withClient(url, async (c) => {
        const { rows } = await c.query<{ text: string; tli: string }>(
          "select pg_read_file('pg_wal/00000002.history') as text, ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint::text as tli",
        );
        const m = /^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '');
        return { timeline: Number(rows[0]?.tli), fork: parseLsn(m?.[1] ?? '0/0') };
      });
    const [a, b] = [await forkOf(first.url), await forkOf(second.url)];
    const lsn = parseLsn(parseReadToken(token).lsn);
    expect({ timelines: [a.timeline, b.timeline], keptOnFirst: lsn <= a.fork, lostOnSecond: lsn > b.fork }).toEqual({ timelines: [2, 2], keptOnFirst: true, lostOnSecond: true });

    expect({ status: onFirst.status, id: onFirst.body?.id as unknown }).toEqual({ status: 200, id: userId });
    expect({ status: onSecond.status, type: onSecond.body?.type as unknown, fork: onSecond.body?.fork_lsn as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE, fork: formatLsn(b.fork) });
  }, 180_000);
});
