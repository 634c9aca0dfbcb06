import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLogin, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { formatLsn, parseLsn } from '../../../functions/core/sharding/lsn.js';
import { clusterIdFromSystemIdentifier } from '../../../functions/core/sharding/read-token.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { migrateDatabase, startTestPostgres, withAdmin, type TestPostgres } from '../../support/postgres.js';
import { startTestReplica, type TestReplica } from '../../support/replica.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';
import { afterFirstRead, interceptCheckouts } from './fixtures/pool-checkouts.js';
import { connectMoveEnv, firstSlotOwnedBy, keysInSlot, seedUsers, type MoveEnv } from './fixtures/move-env.js';
import { startFailoverPair, type FailoverPair } from './fixtures/failover-pair.js';
import { documentsApiClientOver, type ApiCall } from './fixtures/move-env-api.js';

const SOURCE = 'shard_b';
const TARGET = 'shard_a';

/**
 * Issue #15 (h142): the move off A reads A's timeline and its history before the fence (outside
 * the fence's budget) and A's cluster id in the fence's own statement. A blue/green switchover
 * between the two (A's address, a proxy here, reaching green, another cluster) where both clusters
 * are on the same timeline number (2, each after a failover of its own) recorded blue's history
 * beside green's cluster id: the timeline matched, so nothing read it again. A token of green's
 * timeline 1 whose write green's timeline 2 holds (green forked past it) but past where blue's
 * timeline 1 ended was then judged by blue's history: 410 "write lost" on the unit's new shard for
 * a write that is there. The history is now read with the cluster id in one statement, and kept
 * only when that id is the fence's.
 */
describe("a switchover between the move's read of the source's timeline history and its fence, both clusters on timeline 2", () => {
  let pair: FailoverPair | undefined;
  let blue: TestPostgres | undefined;
  let blueReplica: TestReplica | undefined;
  const closers: (() => Promise<void>)[] = [];
  let blueFork = 0n;
  let greenFork = 0n;

  const position = (url: string): Promise<bigint> => withClient(url, async (c) => parseLsn((await c.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn')).rows[0]?.lsn ?? '0/0'));
  const clusterIdOf = (url: string): Promise<string | undefined> =>
    withClient(url, async (c) => clusterIdFromSystemIdentifier((await c.query<{ id: string }>('select system_identifier::text as id from pg_control_system()')).rows[0]?.id ?? ''));
  /** Promotes `replica` (timeline 2) and answers where its timeline 1 ended (its history file). */
  const promote = async (replica: TestReplica): Promise<bigint> => {
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    return withClient(replica.url, async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      return parseLsn(/^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '')?.[1] ?? '0/0');
    });
  };

  beforeAll(async () => {
    // Blue initdb'd on its own (another system identifier than the template's copies, green's).
    [pair, blue] = await Promise.all([startFailoverPair({ catalogShard: TARGET, failingShard: SOURCE }), startTestPostgres({ initdbFlags: [] })]);
    await withAdmin(blue.url, (c) => c.query(`create database ${SOURCE}`));
    await migrateDatabase(blue.urlFor(SOURCE), 'shard');
    blueReplica = await startTestReplica(blue);
    await blueReplica.waitForCatchUp();
    // Each cluster fails over once: both on timeline 2, blue's timeline 1 ending well before green's.
    blueFork = await promote(blueReplica);
    const green = pair.failingServer.urlFor(SOURCE);
    while ((await position(green)) <= blueFork + 2n ** 25n) {
      await withClient(green, (c) => c.query('create temp table if not exists pad (n int); insert into pad values (1); select pg_switch_wal()'));
    }
    await pair.replica.waitForCatchUp();
    greenFork = await promote(pair.replica);
  }, 240_000);
  /**
   * A's address (a proxy, as the shard's DNS name or RDS Proxy) over `b`, a move env reaching
   * shard A through it, the slot map (made by the first test to ask; a test run alone with `-t`
   * makes it), the first slot of A's from `from`, and one owner of it seeded on A. Closed with the
   * file (`closers`).
   */
  const proxiedSource = async (
    pair: FailoverPair,
    b: { readonly port: number; urlFor(database: string): string },
    from: number,
  ): Promise<{ p: TcpProxy; proxied: string; e: MoveEnv; version: number; slot: number; owner: string }> => {
    const p = await startTcpProxy(b.port);
    closers.push(() => p.close());
    const proxied = b.urlFor(SOURCE).replace(`:${b.port}/`, `:${p.port}/`);
    const e = connectMoveEnv({ catalog: pair.catalogServer.urlFor('catalog'), shards: { [TARGET]: pair.catalogServer.urlFor(TARGET), [SOURCE]: proxied } });
    closers.push(() => e.stop());
    const map = await e.slotMaps.current().catch(() => undefined);
    if (map === undefined) await e.slotMaps.initialise(buildSlotMap([TARGET, SOURCE].map((shardId) => ({ shardId, weight: 1 }))), 'test', 'two test shards');
    const version = (await e.slotMaps.current()).version;
    const slot = await firstSlotOwnedBy(e, SOURCE, from);
    const [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(e.shards.get(SOURCE) as pg.Pool, slot, [owner], 1);
    return { p, proxied, e, version, slot, owner };
  };
  /**
   * The switchover: the unit's rows, its slot's fence row and the job's permit, capture and change
   * rows copied from blue (`b`) in place of green's (`g`), as logical replication applies them (no
   * trigger of green's fires), then A's address (`p`) moved to green and its connections cut.
   */
  const switchToGreen = async (s: {
    readonly p: TcpProxy;
    readonly b: { urlFor(database: string): string };
    readonly g: { readonly port: number; urlFor(database: string): string };
    readonly owner: string;
    readonly slot: number;
    readonly jobId: string;
  }): Promise<void> => {
    const carry = async (table: string, where: string, value: string): Promise<void> => {
      const rows = await withClient(s.b.urlFor(SOURCE), async (c) => (await c.query<{ r: unknown }>(`select row_to_json(t) as r from ${table} t where ${where}`, [value])).rows.map((x) => x.r));
      await withClient(s.g.urlFor(SOURCE), async (c) => {
        await c.query("set session_replication_role = 'replica'");
        await c.query(`delete from ${table} t where ${where}`, [value]);
        for (const row of rows) await c.query(`insert into ${table} overriding system value select * from json_populate_record(null::${table}, $1::json)`, [JSON.stringify(row)]);
      });
    };
    for (const [table, column] of [['users', 'id'], ['documents', 'owner_id'], ['document_keys', 'owner_id']] as const) await carry(table, `${column} = $1::uuid`, s.owner);
    await carry('write_fences', "kind = 'slot' and unit_id = $1", String(s.slot));
    for (const table of ['move_permits', 'move_captures', 'move_changes']) await carry(table, 'job_id = $1::bigint', s.jobId);
    s.p.retarget(s.g.port);
    await s.p.cut();
    await s.p.restore();
  };
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await blueReplica?.stop().catch(() => undefined);
    await Promise.all([pair?.stop(), blue?.stop()]);
  });

  it("records the history of the cluster it fenced on: a token of green's timeline 1 whose write green's timeline 2 holds reads 200 on the new shard, not 410", async () => {
    if (!pair || !blueReplica || !blue) throw new Error('no servers');
    const [b, g] = [blueReplica, pair.replica];
    // A's address (a proxy, as the shard's DNS name or RDS Proxy) reaches blue, then green.
    const { p, e, version, slot, owner } = await proxiedSource(pair, b, 100);

    const mover = e.mover({ readerGraceMs: 0, fenceBudgetMs: 30_000 });
    const planned = await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' });
    const switchover = async (): Promise<void> => {
      await switchToGreen({ p, b, g, owner, slot, jobId: String(planned.id) });
      // The pool sees its connections to blue closed before the run sends its next statement.
      await new Promise((resolve) => setTimeout(resolve, 300));
    };
    // The switchover right after the mover's read of A's timeline history, before its fence: on
    // the connection that read it (the mover's checkouts are its pool's connect without a callback).
    const hook = afterFirstRead(e.shards.get(SOURCE) as pg.Pool, (sql) => sql.includes('timeline_history()'), switchover);
    const job = await mover.run(planned.id);
    hook.restore();
    const switched = hook.happened();
    expect({ switched, state: job.state, error: job.error ?? null }).toEqual({ switched: true, state: 'done', error: null });

    const greenId = (await clusterIdOf(g.url)) ?? '';
    const lsn = blueFork + 2n ** 24n;
    // The premise: two clusters on timeline 2; the token's position on timeline 1 past blue's fork, before green's.
    expect({ blue: (await clusterIdOf(b.url)) === greenId, past: lsn > blueFork, held: lsn < greenFork }).toEqual({ blue: false, past: true, held: true });
    const recorded = await e.catalog.query<{ tl: string | null; history: string | null; id: string | null }>(
      'select source_timeline::text as tl, source_history as history, source_cluster_id as id from catalog.move_jobs where id = $1',
      [job.id],
    );
    const row = recorded.rows[0];
    // Before: 410 "write lost" for the list that holds the write green kept and the move copied,
    // blue's history (its timeline 1 ending at blue's fork) recorded beside green's cluster id.
    const api: ApiCall = await documentsApiClientOver(e, closers, { defaultShard: TARGET });
    const list = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': `${SOURCE}@${formatLsn(lsn)};tl=1;v=${version};id=${greenId}` });
    const historyOf = (text: string | null | undefined): string | null | undefined =>
      text?.includes(formatLsn(blueFork)) ? 'blue' : text?.includes(formatLsn(greenFork)) ? 'green' : text;
    expect({ tl: row?.tl, id: row?.id, history: historyOf(row?.history), status: list.status, type: list.body?.type as unknown, items: (list.body?.items as unknown[] | undefined)?.length }).toEqual({
      tl: '2',
      id: greenId,
      history: 'green',
      status: 200,
      type: undefined,
      items: 1,
    });
    // Tokens of timeline 1 without the cluster id (issued before tokens named it) are judged by
    // position with what was recorded, as before: held before green's fork, lost past it; and a
    // token of green past its fork is lost too.
    const judged = async (at: bigint, id: string): Promise<unknown> => {
      const a = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': `${SOURCE}@${formatLsn(at)};tl=1;v=${version}${id}` });
      return { status: a.status, type: a.body?.type as unknown };
    };
    const lost = { status: 410, type: 'https://ca-dms-scaling.dev/problems/write-lost' };
    expect({ held: await judged(lsn, ''), lost: await judged(greenFork + 2n ** 20n, ''), greenLost: await judged(greenFork + 2n ** 20n, `;id=${greenId}`) }).toEqual({
      held: { status: 200, type: undefined },
      lost,
      greenLost: lost,
    });
  }, 180_000);

  // h146: the release's history read (a move released on another cluster than its fence's reads
  // the source's history once writes are let through) answered by another cluster than the one the
  // release ran on: a client that opened its connection with a DNS answer cached from before a
  // blue/green switchover (RDS's endpoint reaches green; a cached answer still names blue, which
  // stays up, renamed, and answers reads). Both on timeline 2. Kept, blue's history stood beside
  // green's id and timeline 2, and a green token whose write green held and the move copied, past
  // where blue's timeline 1 ended, answered 410 "write lost" on the unit's new shard.
  it("records no history another cluster answered after the release: a green token whose write green held reads 200 on the new shard, not 410", async () => {
    if (!pair || !blueReplica || !blue) throw new Error('no servers');
    const [b, g] = [blueReplica, pair.replica];
    const { p, proxied, e, version, slot, owner } = await proxiedSource(pair, b, 200);
    // After the release, the source's next timeline_history() read goes over a new connection
    // opened with blue's address (the stale DNS answer): the proxy sends that one connection to blue.
    const pool = e.shards.get(SOURCE) as pg.Pool;
    let released = false;
    let staleReads = 0;
    let historyReads = 0;
    const watch = interceptCheckouts(pool, (text, send) => {
      if (text === undefined || !text.includes('timeline_history()')) return send();
      historyReads += 1;
      if (!released || staleReads > 0) return send();
      staleReads += 1;
      return (async () => {
        p.retarget(b.port);
        try {
          return await withClient(proxied, (c) => c.query(text));
        } finally {
          p.retarget(g.port);
        }
      })();
    });
    const mover = e.mover({
      readerGraceMs: 0,
      fenceBudgetMs: 30_000,
      hook: async (point, job) => {
        if (point !== 'fenced') return;
        // The switchover while the move holds the fence (released on green, another cluster than
        // the fence's: the fence's history and position dropped, the history read again after).
        await switchToGreen({ p, b, g, owner, slot, jobId: String(job.id) });
        await new Promise((resolve) => setTimeout(resolve, 300));
        released = true;
      },
    });
    let job;
    try {
      job = await mover.run((await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' })).id);
    } finally {
      watch.restore();
    }
    // The fence's read (blue, the fence's cluster: not read again) and the release's (stale: blue).
    expect({ state: job.state, error: job.error ?? null, staleReads, historyReads }).toEqual({ state: 'done', error: null, staleReads: 1, historyReads: 2 });

    const greenId = (await clusterIdOf(g.url)) ?? '';
    const lsn = blueFork + 2n ** 24n;
    const recorded = await e.catalog.query<{ tl: string | null; history: string | null; id: string | null; lsn: string | null }>(
      'select source_timeline::text as tl, source_history as history, source_cluster_id as id, source_fence_lsn::text as lsn from catalog.move_jobs where id = $1',
      [job.id],
    );
    const row = recorded.rows[0];
    const historyOf = (text: string | null | undefined): string | null | undefined =>
      text?.includes(formatLsn(blueFork)) ? 'blue' : text?.includes(formatLsn(greenFork)) ? 'green' : text;
    const api: ApiCall = await documentsApiClientOver(e, closers, { defaultShard: TARGET });
    const list = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': `${SOURCE}@${formatLsn(lsn)};tl=1;v=${version};id=${greenId}` });
    // Before: blue's history beside green's id and timeline 2, and 410 "write lost" for the list
    // that holds the write green kept and the move copied. Now nothing known of the history.
    expect({ tl: row?.tl, id: row?.id, lsn: row?.lsn, history: historyOf(row?.history), status: list.status, type: list.body?.type as unknown, items: (list.body?.items as unknown[] | undefined)?.length }).toEqual({
      tl: '2',
      id: greenId,
      lsn: null,
      history: null,
      status: 200,
      type: undefined,
      items: 1,
    });
  }, 180_000);
  // h152: the switchover of the first test, where the mover's login may call pg_control_system()
  // on blue (its pool learned so with the history's read) but not on green (a cluster behind the
  // address where the login lacks it). The fence on green was refused the id, sent again without it
  // (cluster-id-revoked-move.test.ts), and with no id of the fence's to compare, the history read
  // with blue's id was kept beside green's timeline 2 and fence: a green token of timeline 1 whose
  // write green's timeline 2 holds, past where blue's timeline 1 ended, answered 410 "write lost"
  // on the unit's new shard. Last: it revokes pg_control_system() on green.
  it("keeps no history read with an id beside a fence that could not tell its cluster: a green token whose write green held reads 200, not 410", async () => {
    if (!pair || !blueReplica || !blue) throw new Error('no servers');
    const [b, g] = [blueReplica, pair.replica];
    const LOGIN = 'switch_mover';
    for (const url of [b.urlFor(SOURCE), g.urlFor(SOURCE)]) {
      const admin = new pg.Pool({ connectionString: url, max: 1 });
      admin.on('error', () => undefined);
      try {
        await ensureLogin(admin, { username: LOGIN, password: 'mover pass' }, { role: MOVER_ROLE });
      } finally {
        await admin.end();
      }
    }
    await withClient(g.urlFor(SOURCE), (c) => c.query('revoke execute on function pg_control_system() from public'));
    const { p, proxied, e, version, slot, owner } = await proxiedSource(pair, b, 300);
    // The mover's own login over A's address (the env's pools are the administrator's, never refused).
    const moverUrl = new URL(proxied);
    moverUrl.username = LOGIN;
    moverUrl.password = 'mover pass';
    const pool = new pg.Pool({ connectionString: moverUrl.toString(), max: 4 });
    pool.on('error', () => undefined);
    closers.push(() => pool.end());
    const mover = e.mover({ readerGraceMs: 0, fenceBudgetMs: 30_000, shards: new Map([[TARGET, e.shards.get(TARGET) as pg.Pool], [SOURCE, pool]]) });
    const planned = await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' });
    const hook = afterFirstRead(
      pool,
      (sql) => sql.includes('timeline_history()') && sql.includes('pg_control_system'),
      async () => {
        await switchToGreen({ p, b, g, owner, slot, jobId: String(planned.id) });
        await new Promise((resolve) => setTimeout(resolve, 300));
      },
    );
    let job;
    try {
      job = await mover.run(planned.id);
    } finally {
      hook.restore();
    }
    const switched = hook.happened();
    expect({ switched, state: job.state, error: job.error ?? null }).toEqual({ switched: true, state: 'done', error: null });

    const lsn = blueFork + 2n ** 24n;
    const recorded = await e.catalog.query<{ tl: string | null; history: string | null; id: string | null }>(
      'select source_timeline::text as tl, source_history as history, source_cluster_id as id from catalog.move_jobs where id = $1',
      [job.id],
    );
    const row = recorded.rows[0];
    const historyOf = (text: string | null | undefined): string | null | undefined =>
      text?.includes(formatLsn(blueFork)) ? 'blue' : text?.includes(formatLsn(greenFork)) ? 'green' : text;
    const api: ApiCall = await documentsApiClientOver(e, closers, { defaultShard: TARGET });
    // A token of green's timeline 1 without the id (the application's login is refused it on green too).
    const list = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': `${SOURCE}@${formatLsn(lsn)};tl=1;v=${version}` });
    expect({ tl: row?.tl, id: row?.id, history: historyOf(row?.history), status: list.status, type: list.body?.type as unknown, items: (list.body?.items as unknown[] | undefined)?.length }).toEqual({
      tl: '2',
      id: null,
      history: 'green',
      status: 200,
      type: undefined,
      items: 1,
    });
  }, 180_000);
});
