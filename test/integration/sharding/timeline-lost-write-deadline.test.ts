import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeadlinePassedError } from '../../../functions/adapters/postgres/deadline.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { ShardReadError } from '../../../functions/adapters/postgres/read-transaction.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { oneShardApi, type Answer, type Api } from './fixtures/one-shard-api.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';
/** The advisory lock the test holds and the replacement of timeline_history() waits on. */
const HISTORY_LOCK = 4343;
/** The waiting reads' request deadline. */
const SHORT_DEADLINE_MS = 500;
/**
 * The first read's: far past the test's own timeout (30 s). Without a deadline of their own the
 * waiters wait as long as the first read's query, and the test times out.
 */
const LONG_DEADLINE_MS = 120_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Issue #15, review: the first read on a new timeline asks the primary for its history, and the
 * reads that ask while that query runs wait for it. A waiter is held to its own deadline: when the
 * query is stuck (here: a replacement of timeline_history() that waits on an advisory lock the
 * test holds), a waiter with a short deadline answers at that deadline what a read whose own query
 * ran out answers (503, the deadline's detail, Retry-After), while the first read is still waiting.
 */
describe('a read waiting on another read\'s timeline history query', () => {
  let cluster: TestShardCluster;
  const closers: (() => Promise<void>)[] = [];
  let promotedUrl = '';
  let lostUser = '';
  let lostUserToken = '';

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    const shard = cluster.shards[0];
    const replica = shard?.replicas[0];
    if (!shard || !replica) throw new Error('the cluster has no replica');
    const { api: before } = await oneShardApi(shard.primary.url, closers);
    const kept = await before('POST', '/api/v1/users', { email: 'kept@example.org', display_name: 'kept' });
    if (kept.status !== 201) throw new Error(`the first write answered ${kept.status}`);
    await replica.waitForCatchUp();
    closers.push(await cutWalReceiver(replica.url));
    const lost = await before('POST', '/api/v1/users', { email: 'lost@example.org', display_name: 'lost' });
    const token = lost.headers.get('x-read-token');
    if (lost.status !== 201 || token === null) throw new Error(`the lost write answered ${lost.status}`);
    lostUser = String(lost.body.id);
    lostUserToken = token;
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    promotedUrl = replica.url;
  }, 180_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await cluster?.stop();
  });

  it('ends a waiting read at its own deadline with the deadline\'s answer (503), while the first read\'s query is still stuck', async () => {
    await withClient(promotedUrl, async (c) => {
      await c.query('alter function timeline_history() rename to timeline_history_stuck_inner');
      await c.query(`create function timeline_history() returns table (timeline bigint, history text) language plpgsql as $$
        begin
          perform pg_advisory_xact_lock_shared(${HISTORY_LOCK});
          return query select * from timeline_history_stuck_inner();
        end $$`);
    });
    const holder = new pg.Client({ connectionString: promotedUrl });
    await holder.connect();
    await holder.query('select pg_advisory_lock($1)', [HISTORY_LOCK]);
    let held = true;
    const letGo = async (): Promise<void> => {
      if (!held) return;
      held = false;
      await holder.end();
    };
    try {
      const first = await oneShardApi(promotedUrl, closers, { max: 4, deadlineMs: LONG_DEADLINE_MS });
      const logged: unknown[] = [];
      const short = await oneShardApi(promotedUrl, closers, { given: { pools: first.pools, reader: first.reader }, deadlineMs: SHORT_DEADLINE_MS, onError: (error) => logged.push(error) });
      // Closed first (closers run in reverse): the stuck query then ends, and the servers can close.
      closers.push(letGo);
      const read = (api: Api, path: string): Promise<Answer> => api('GET', path, undefined, { 'x-read-after': lostUserToken });
      let firstSettled = false;
      const firstAnswer = read(first.api, `/api/v1/users/${lostUser}`).finally(() => {
        firstSettled = true;
      });
      // The first read's history query waits on the lock.
      let stuck = false;
      for (let i = 0; i < 400 && !stuck; i += 1) {
        stuck = await withClient(promotedUrl, async (c) => {
          const { rows } = await c.query("select 1 from pg_stat_activity where query like '%timeline_history()%' and wait_event_type = 'Lock' and pid <> pg_backend_pid()");
          return rows.length > 0;
        });
        if (!stuck) await sleep(25);
      }
      if (!stuck) throw new Error('the first read\'s history query did not reach the lock within 10 s');

      // Two reads with a short deadline join it: one through withShardRead (GET /users/{id}), one
      // through the reader alone (GET /documents/{id} without owner reads every shard).
      const [byOwner, everyShard] = await Promise.all([read(short.api, `/api/v1/users/${lostUser}`), read(short.api, '/api/v1/documents/6f1c1f0e-1111-4222-8333-944444444444')]);
      const firstPendingThen = !firstSettled;
      const deadlineAnswer = {
        status: 503,
        retryAfter: '1',
        detail: `the shard did not answer the read within the request's ${SHORT_DEADLINE_MS} ms deadline; retry`,
      };
      const seen = (a: Answer) => ({ status: a.status, retryAfter: a.headers.get('retry-after'), detail: a.body?.detail as unknown });
      expect({ firstPendingThen }).toEqual({ firstPendingThen: true });
      expect(seen(byOwner)).toEqual(deadlineAnswer);
      expect(seen(everyShard)).toEqual(deadlineAnswer);
      // What they log says what happened: the deadline passed while each waited on the first
      // read's query (phase 'waited'), not that the node did not answer and its connection was
      // dropped (phase 'query', as it said before h144: untrue, the primary answered every other
      // statement).
      const phaseOf = (error: unknown): string => {
        const passed = error instanceof DeadlinePassedError ? error : (error as { cause?: unknown } | null)?.cause;
        return passed instanceof DeadlinePassedError ? `${passed.phase}: ${passed.message.includes('another request') && !passed.message.includes('dropped') ? 'says it waited' : passed.message}` : String(error);
      };
      expect(logged.map(phaseOf)).toEqual(['waited: says it waited', 'waited: says it waited']);
      const byOwnerLogged = logged.find((e) => e instanceof ShardReadError);
      expect(byOwnerLogged instanceof ShardReadError ? byOwnerLogged.message : byOwnerLogged).toContain("waiting for another read's query");

      // The first read's query was left to it: once the lock is free it answers 410.
      await letGo();
      const a = await firstAnswer;
      expect({ status: a.status, type: a.body?.type as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE });
      // The history is cached now: a short-deadline read answers 410 too.
      const again = await read(short.api, `/api/v1/users/${lostUser}`);
      expect({ status: again.status, type: again.body?.type as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE });
    } finally {
      await letGo();
      await withClient(promotedUrl, async (c) => {
        await c.query('drop function timeline_history()');
        await c.query('alter function timeline_history_stuck_inner() rename to timeline_history');
      });
    }
  }, 30_000);
});
