import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterIdReadable } from '../../../functions/adapters/postgres/cluster-identity.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { createMovesLookup } from '../../../functions/adapters/postgres/move-lookup.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { clusterIdFromSystemIdentifier, parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { migrateDatabase, startTestPostgres, withAdmin, type TestPostgres } from '../../support/postgres.js';
import { startTcpProxy } from '../../support/tcp-proxy.js';
import type { TestReplica } from '../../support/replica.js';
import { connectMoveEnv, firstSlotOwnedBy, keysInSlot, seedUsers, type MoveEnv, type MoveEnvUrls } from './fixtures/move-env.js';
import { startFailoverPair, type FailoverPair } from './fixtures/failover-pair.js';
import { documentsApiClientOver, type ApiAnswer, type ApiCall } from './fixtures/move-env-api.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';
const SOURCE = 'shard_b';
const TARGET = 'shard_a';

/**
 * Issue #15: a move off shard A records what A was at its fence (its timeline F and F's history,
 * sharding migrations 014/015), and a token of A read on the unit's new shard is judged by it
 * (core/sharding/lost-before-move.ts). WAL positions and timelines are a cluster's own. Here A
 * (shard_b) is first "blue", a cluster of its own (initdb'd apart); a logically replicated
 * blue/green switchover makes it "green" (the failover pair's server, another cluster, timeline 1,
 * its WAL positions of its own), green holding the write; green then fails over to its replica
 * (timeline 2, green's timeline 1 ending at green's LSN X) and the unit moves off A onto shard_a.
 * A blue token (tl=1, its LSN past X in blue's WAL) was compared with green's history: "lost
 * before the move" (410) though green held the write and the move copied it. The move now
 * records A's cluster id with the fence (sharding migration 032); a token of another cluster is
 * not judged by position.
 */
describe('a blue token read on the shard its unit moved to, after a blue/green switchover and a failover of green', () => {
  let pair: FailoverPair | undefined;
  let replica: TestReplica | undefined;
  let blue: TestPostgres | undefined;
  const closers: (() => Promise<void>)[] = [];
  let onBlue: MoveEnv;
  let after: MoveEnv;
  let owner = '';
  let doc = '';
  let token = '';
  let slot = 0;
  let fork = 0n;

  const apiOver = (env: MoveEnv): Promise<ApiCall> => documentsApiClientOver(env, closers, { defaultShard: TARGET });
  const position = (url: string): Promise<bigint> => withClient(url, async (c) => parseLsn((await c.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn')).rows[0]?.lsn ?? '0/0'));
  const clusterIdOf = (url: string): Promise<string | undefined> =>
    withClient(url, async (c) => clusterIdFromSystemIdentifier((await c.query<{ id: string }>('select system_identifier::text as id from pg_control_system()')).rows[0]?.id ?? ''));
  /** Copies `table`'s rows of `owner` from blue to green, as the deployment's logical replication does. */
  const replicate = async (from: string, to: string, table: string, column: string, value: string): Promise<void> => {
    const rows = await withClient(from, async (c) => (await c.query<{ r: unknown }>(`select row_to_json(t) as r from ${table} t where ${column} = $1`, [value])).rows.map((r) => r.r));
    for (const row of rows) await withClient(to, (c) => c.query(`insert into ${table} select * from json_populate_record(null::${table}, $1::json)`, [JSON.stringify(row)]));
  };

  beforeAll(async () => {
    // Blue: initdb'd on its own (another system identifier than the template's copies).
    [pair, blue] = await Promise.all([startFailoverPair({ catalogShard: TARGET, failingShard: SOURCE }), startTestPostgres({ initdbFlags: [] })]);
    await withAdmin(blue.url, (c) => c.query(`create database ${SOURCE}`));
    await migrateDatabase(blue.urlFor(SOURCE), 'shard');
    const { catalogServer: targetServer, failingServer: green } = pair;
    replica = pair.replica;
    const greenUrls: MoveEnvUrls = { catalog: targetServer.urlFor('catalog'), shards: { [TARGET]: targetServer.urlFor(TARGET), [SOURCE]: green.urlFor(SOURCE) } };
    onBlue = connectMoveEnv({ ...greenUrls, shards: { ...greenUrls.shards, [SOURCE]: blue.urlFor(SOURCE) } });
    await onBlue.slotMaps.initialise(buildSlotMap([TARGET, SOURCE].map((shardId) => ({ shardId, weight: 1 }))), 'test', 'two test shards');
    slot = await firstSlotOwnedBy(onBlue, SOURCE, 100);
    [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(onBlue.shards.get(SOURCE) as pg.Pool, slot, [owner], 0);
    // Blue's WAL well ahead of green's: the token lies past where green's timeline 1 will end.
    while ((await position(blue.urlFor(SOURCE))) <= (await position(green.urlFor(SOURCE))) + 2n ** 24n) {
      await withClient(blue.urlFor(SOURCE), (c) => c.query('create temp table if not exists pad (n int); insert into pad values (1); select pg_switch_wal()'));
    }
    const a = await (await apiOver(onBlue))('/api/v1/documents', {}, { owner_id: owner, title: 'written on blue' });
    token = a.headers.get('x-read-token') ?? '';
    if (a.status !== 201 || token === '') throw new Error(`the write answered ${a.status}: ${JSON.stringify(a.body)}`);
    doc = String(a.body.id);
    // The switchover: green holds what blue committed (users, documents, document keys).
    for (const [table, column] of [['users', 'id'], ['documents', 'owner_id'], ['document_keys', 'owner_id']] as const) await replicate(blue.urlFor(SOURCE), green.urlFor(SOURCE), table, column, owner);
    // Green fails over to its replica, which holds the write too (timeline 2, forked at green's X).
    await replica.waitForCatchUp();
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    after = connectMoveEnv({ ...greenUrls, shards: { ...greenUrls.shards, [SOURCE]: replica.urlFor(SOURCE) } });
    fork = await withClient(replica.url, async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      return parseLsn(/^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '')?.[1] ?? '0/0');
    });
    // The unit moves off A (green, timeline 2) onto shard_a: the copy holds the write.
    const mover = after.mover({ readerGraceMs: 0 });
    const state = (await mover.run((await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' })).id)).state;
    if (state !== 'done') throw new Error(`the move ended ${state}`);
  }, 240_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await onBlue?.stop().catch(() => undefined);
    await after?.stop().catch(() => undefined);
    await Promise.all([pair?.stop(), blue?.stop()]);
  });

  it('reads the write green held and the move copied (200, the list with it), and a miss with the blue token is 404, not 410', async () => {
    const api = await apiOver(after);
    const byOwner = await api(`/api/v1/documents/${doc}?owner=${owner}`, { 'x-read-after': token });
    const list = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': token });
    const missing = await api(`/api/v1/documents/${randomUUID()}?owner=${owner}`, { 'x-read-after': token });

    // The premise: a blue token of timeline 1, past where green's timeline 1 ends, of another cluster than green.
    const t = parseReadToken(token);
    expect({ timeline: t.timeline, past: parseLsn(t.lsn) > fork, blue: t.clusterId }).toEqual({ timeline: 1, past: true, blue: await clusterIdOf(blue?.urlFor(SOURCE) ?? '') });
    expect(t.clusterId).not.toBe(await clusterIdOf(replica?.url ?? ''));
    expect(await after.ownerOf(slot)).toBe(TARGET);

    const seen = (x: ApiAnswer) => ({ status: x.status, type: x.body?.type as unknown });
    expect({ status: byOwner.status, id: byOwner.body?.id as unknown }).toEqual({ status: 200, id: doc });
    // Before: 410 write-lost for the list (holding the write) and the miss.
    expect({ status: list.status, ids: (list.body?.items as { id: string }[] | undefined)?.map((i) => i.id) }).toEqual({ status: 200, ids: [doc] });
    expect(seen(missing)).toEqual({ status: 404, type: expect.not.stringMatching(WRITE_LOST_TYPE) as unknown });
  }, 120_000);

  it('records the source cluster with the fence, answers it through catalog.last_move_off, and judges a token of that cluster as before', async () => {
    const recorded = await after.catalog.query<{ id: string | null; tl: string | null }>("select source_cluster_id as id, source_timeline::text as tl from catalog.move_jobs where state = 'done' and slot = $1", [slot]);
    const green = await clusterIdOf(replica?.url ?? '');
    expect(recorded.rows).toEqual([{ id: green, tl: '2' }]);
    const lookup = createMovesLookup(after.catalog);
    expect((await lookup.lastMoveOff(SOURCE, owner))?.clusterId).toBe(green);
    // A token of green's own timeline 1 past X (its id green's) is a write green's failover lost: 410.
    const api = await apiOver(after);
    const greenToken = `${SOURCE}@${parseReadToken(token).lsn};tl=1;v=${parseReadToken(token).mapVersion};id=${green ?? ''}`;
    const lost = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': greenToken });
    expect({ status: lost.status, type: lost.body?.type as unknown }).toEqual({ status: 410, type: WRITE_LOST_TYPE });
  }, 120_000);

  it('tells a write copied off only by a fence of the token\'s own cluster (catalog.write_copied_off compared positions across clusters)', async () => {
    const fenced = await after.catalog.query<{ lsn: string }>("select source_fence_lsn::text as lsn from catalog.move_jobs where state = 'done' and slot = $1", [slot]);
    const at = fenced.rows[0]?.lsn ?? '';
    const green = (await clusterIdOf(replica?.url ?? '')) ?? '';
    const blueId = parseReadToken(token).clusterId ?? '';
    const lookup = createMovesLookup(after.catalog);
    // Tokens of timeline 2 at the fence's position: green's was copied by the move; blue's
    // position (the same number) is one of blue's WAL, which the fence's says nothing of.
    const at2 = (id?: string) => parseReadToken(`${SOURCE}@${at};tl=2;v=1${id === undefined ? '' : `;id=${id}`}`);
    expect({ green: await lookup.writeCopiedOff(at2(green), owner), blue: await lookup.writeCopiedOff(at2(blueId), owner), none: await lookup.writeCopiedOff(at2(), owner) }).toEqual({
      green: true,
      blue: false,
      none: true,
    });
  }, 120_000);

  it('without a recorded cluster (a move before sharding migration 032), judges no token that names one, and one that names none as before', async () => {
    await after.catalog.query('update catalog.move_jobs set source_cluster_id = null where slot = $1', [slot]);
    const green = (await clusterIdOf(replica?.url ?? '')) ?? '';
    const t = parseReadToken(token);
    const api = await apiOver(after);
    const listWith = async (text: string) => {
      const a = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': text });
      return { status: a.status, type: a.body?.type as unknown };
    };
    // Green's timeline 1 past X: lost on green, but not known to be green's by this record.
    expect(await listWith(`${SOURCE}@${t.lsn};tl=1;v=${t.mapVersion};id=${green}`)).toEqual({ status: 200, type: undefined });
    expect(await listWith(`${SOURCE}@${t.lsn};tl=1;v=${t.mapVersion};id=${t.clusterId ?? ''}`)).toEqual({ status: 200, type: undefined });
    // A token issued before tokens named their cluster: judged by position, as before.
    expect(await listWith(`${SOURCE}@${t.lsn};tl=1;v=${t.mapVersion}`)).toEqual({ status: 410, type: WRITE_LOST_TYPE });
  }, 120_000);

  it("tells a write copied off through a stay back on A only when the unit left again from the token's cluster, and asks the mover's pool once whether it may read the cluster id", async () => {
    // Runs after the tests above (the last one cleared the recorded cluster): the move off A
    // (green after its failover, timeline 2) records green again.
    const green = (await clusterIdOf(replica?.url ?? '')) ?? '';
    const blueId = parseReadToken(token).clusterId ?? '';
    await after.catalog.query("update catalog.move_jobs set source_cluster_id = $2 where slot = $1 and state = 'done'", [slot, green]);
    const [{ id: copiedId, lsn: at } = { id: '', lsn: '' }] = (await after.catalog.query<{ id: string; lsn: string }>("select id::text, source_fence_lsn::text as lsn from catalog.move_jobs where state = 'done' and slot = $1", [slot])).rows;

    // The mover's own pool of A, its answer known (a write or an earlier fence asked it): a fence
    // sends no question of its own. Each fence used to ask again: the mover's pools are wrapped
    // per call (droppingPool), and the answer was kept per wrapper, never found again.
    const source = after.shards.get(SOURCE) as pg.Pool;
    const known = await source.connect();
    try {
      expect(await clusterIdReadable(source, known)).toBe(true);
    } finally {
      known.release();
    }
    let asked = 0;
    const connect = source.connect.bind(source) as (...args: unknown[]) => Promise<pg.PoolClient>;
    const counted = new WeakSet<pg.PoolClient>();
    // Pool.query connects with a callback (passed on as it is); the mover's checkouts without.
    (source as unknown as { connect: (...args: unknown[]) => unknown }).connect = async (...args: unknown[]) => {
      if (args.length > 0) return connect(...args);
      const client = await connect();
      if (!counted.has(client)) {
        counted.add(client);
        const query = client.query.bind(client) as (...args: unknown[]) => unknown;
        (client as unknown as { query: (...args: unknown[]) => unknown }).query = (text: unknown, ...rest: unknown[]) => {
          if (typeof text === 'string' && text.startsWith('select (select lpad(to_hex(system_identifier)')) asked++;
          return query(text, ...rest);
        };
      }
      return client;
    };
    // The unit comes back onto A (green, timeline 2) and leaves it again.
    const move = async (to: string, counting: boolean): Promise<string> => {
      const mover = after.mover({ readerGraceMs: 0 });
      const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
      if (job.state !== 'done') throw new Error(`the move to ${to} ended ${job.state}`);
      if (!counting) asked = 0;
      return String(job.id);
    };
    let back = '';
    let offAgain = '';
    try {
      back = await move(SOURCE, false);
      offAgain = await move(TARGET, true);
    } finally {
      (source as unknown as { connect: (...args: unknown[]) => unknown }).connect = connect;
    }
    expect({ asked, recorded: (await after.catalog.query<{ id: string | null }>('select source_cluster_id as id from catalog.move_jobs where id = $1', [offAgain])).rows }).toEqual({
      asked: 0,
      recorded: [{ id: green }],
    });

    // The stay as migration 015 tells one safe: the copy back written on a later timeline than the
    // token's (3) and the unit gone again on that one. Recorded by hand: the servers here are on
    // timeline 2 (the copy off's); a third timeline would take another failover of green.
    await after.catalog.query('update catalog.move_jobs set target_timeline = 3 where id = $1', [back]);
    await after.catalog.query('update catalog.move_jobs set source_timeline = 3 where id = $1', [offAgain]);
    const lookup = createMovesLookup(after.catalog);
    const copied = async (): Promise<{ green: boolean; blue: boolean; none: boolean }> => {
      const at2 = (id?: string) => parseReadToken(`${SOURCE}@${at};tl=2;v=1${id === undefined ? '' : `;id=${id}`}`);
      return { green: await lookup.writeCopiedOff(at2(green), owner), blue: await lookup.writeCopiedOff(at2(blueId), owner), none: await lookup.writeCopiedOff(at2(), owner) };
    };
    // Left again from green (the token's cluster): the copy off by the first move stays green's write's.
    expect(await copied()).toEqual({ green: true, blue: false, none: true });
    // Left again from another cluster (a blue/green switchover during the stay; timeline 3 is then
    // that cluster's number, which says nothing of a failover of green during the stay), or from
    // one not recorded: not known for a token of green. A token without the id, as before.
    for (const other of [blueId, null]) {
      await after.catalog.query('update catalog.move_jobs set source_cluster_id = $2 where id = $1', [offAgain, other]);
      expect({ other, ...(await copied()) }).toEqual({ other, green: false, blue: false, none: true });
    }
    // The copy off and the leaving again both recorded of blue: then a token of blue is told
    // copied, and green's is not (the numbers are blue's).
    await after.catalog.query('update catalog.move_jobs set source_cluster_id = $2 where id = any($1::bigint[])', [[copiedId, offAgain], blueId]);
    expect(await copied()).toEqual({ green: false, blue: true, none: true });
  }, 180_000);

  it("records the cluster the fence was released on: a switchover while the move holds the fence leaves no blue cluster id beside green's timeline and history", async () => {
    if (!blue || !replica || !pair) throw new Error('no servers');
    const [b, r] = [blue, replica];
    // A's address (a proxy, as the shard's DNS name or RDS Proxy) reaches blue, then green.
    const proxy = await startTcpProxy(b.port);
    closers.push(() => proxy.close());
    const proxied = b.urlFor(SOURCE).replace(`:${b.port}/`, `:${proxy.port}/`);
    const env = connectMoveEnv({ catalog: pair.catalogServer.urlFor('catalog'), shards: { [TARGET]: pair.catalogServer.urlFor(TARGET), [SOURCE]: proxied } });
    closers.push(() => env.stop());
    const slot2 = await firstSlotOwnedBy(env, SOURCE, 100);
    const [owner2] = keysInSlot(slot2, 1) as [string];
    await seedUsers(env.shards.get(SOURCE) as pg.Pool, slot2, [owner2], 0);
    const w = await (await apiOver(env))('/api/v1/documents', {}, { owner_id: owner2, title: 'written on blue, moved during the switchover' });
    const blueToken = w.headers.get('x-read-token') ?? '';
    if (w.status !== 201 || blueToken === '') throw new Error(`the write answered ${w.status}: ${JSON.stringify(w.body)}`);
    const doc2 = String(w.body.id);
    for (const [table, column] of [['users', 'id'], ['documents', 'owner_id'], ['document_keys', 'owner_id']] as const) await replicate(b.urlFor(SOURCE), r.urlFor(SOURCE), table, column, owner2);
    /** `table`'s rows `where` on blue, put in place of green's, as the logical replication does. */
    const carry = async (table: string, where: string, value: string): Promise<void> => {
      const rows = await withClient(b.urlFor(SOURCE), async (c) => (await c.query<{ r: unknown }>(`select row_to_json(t) as r from ${table} t where ${where}`, [value])).rows.map((x) => x.r));
      await withClient(r.urlFor(SOURCE), async (c) => {
        await c.query(`delete from ${table} t where ${where}`, [value]);
        for (const row of rows) await c.query(`insert into ${table} overriding system value select * from json_populate_record(null::${table}, $1::json)`, [JSON.stringify(row)]);
      });
    };
    const mover = env.mover({
      readerGraceMs: 0,
      fenceBudgetMs: 30_000,
      hook: async (point, job) => {
        if (point !== 'fenced') return;
        // The switchover while the move holds the fence: green has what blue committed (the
        // fence row fenced by this job, its permit and capture), and A's address reaches green.
        await carry('write_fences', "kind = 'slot' and unit_id = $1", String(slot2));
        for (const table of ['move_permits', 'move_captures', 'move_changes']) await carry(table, 'job_id = $1::bigint', String(job.id));
        proxy.retarget(r.port);
        await proxy.cut();
        await proxy.restore();
        // The pools see their connections to blue closed before the run sends its next statement.
        await new Promise((resolve) => setTimeout(resolve, 300));
      },
    });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot: slot2, to: TARGET, createdBy: 'test' })).id);
    expect({ state: job.state, error: job.error ?? null }).toEqual({ state: 'done', error: null });

    const green = (await clusterIdOf(r.url)) ?? '';
    const t = parseReadToken(blueToken);
    // The premise: a blue token of timeline 1 past where green's timeline 1 ends.
    expect({ timeline: t.timeline, past: parseLsn(t.lsn) > fork, id: t.clusterId }).toEqual({ timeline: 1, past: true, id: await clusterIdOf(b.url) });
    // Released on green (timeline 2): the record is green's (its timeline, history and cluster),
    // never blue's cluster beside green's numbers, and no fence position (one of blue's WAL).
    const recorded = await env.catalog.query<{ tl: string | null; lsn: string | null; id: string | null }>(
      'select source_timeline::text as tl, source_fence_lsn::text as lsn, source_cluster_id as id from catalog.move_jobs where id = $1',
      [job.id],
    );
    // Before: blue's id beside green's history (timeline 1 ending at X), and the blue token,
    // whose write green held and the move copied, answered 410 on the new owner.
    const list = await (await apiOver(env))(`/api/v1/users/${owner2}/documents`, { 'x-read-after': blueToken });
    expect({ recorded: recorded.rows, status: list.status, type: list.body?.type as unknown, ids: (list.body?.items as { id: string }[] | undefined)?.map((i) => i.id) }).toEqual({
      recorded: [{ tl: '2', lsn: null, id: green }],
      status: 200,
      type: undefined,
      ids: [doc2],
    });
  }, 180_000);
});
