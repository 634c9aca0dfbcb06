import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { createMovesLookup } from '../../../functions/adapters/postgres/move-lookup.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { cutWalReceiver, type TestReplica } from '../../support/replica.js';
import { connectMoveEnv, firstSlotOwnedBy, keysInSlot, seedUsers, type MoveEnv, type MoveEnvUrls } from './fixtures/move-env.js';
import { startFailoverPair, type FailoverPair } from './fixtures/failover-pair.js';
import { documentsApiClientOver, type ApiAnswer, type ApiCall } from './fixtures/move-env-api.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';
const SOURCE = 'shard_b';
const TARGET = 'shard_a';

/**
 * Issue #15, a token of another shard than the one read: a write on shard_b (token `shard_b@…;tl=1`)
 * is lost when shard_b fails over to a replica that had not received it; its unit then moves to
 * shard_a. The move copied shard_b's timeline 2, without the write: a read with the token on
 * shard_a must answer 410 (write lost), not 404 or a list without it. A write whose unit moved
 * BEFORE the failover (the move fenced on timeline 1, after the write) was copied: it is read
 * (200). The catalog sits on shard_a's server, so that shard_b's server alone fails over.
 *
 * Before the fix (issue #15, gap B) the documents API did not check a token of another shard than
 * the one read, so the owner's reads answered 404 and the list. A move now records the source's
 * timeline and its history at its fence (sharding migration 014) and a read that misses or lists
 * consults the last move of the key's unit off the token's shard (docs/sharding-spec.md, "A write
 * lost in a failover").
 */
describe('a read token of a write lost in a failover, read on the shard its unit moved to', () => {
  let pair: FailoverPair | undefined;
  let replica: TestReplica | undefined;
  const closers: (() => Promise<void>)[] = [];
  let before: MoveEnv;
  let after: MoveEnv;
  let lostOwner = '';
  let lostDoc = '';
  let lostToken = '';
  let keptOwner = '';
  let keptDoc = '';
  let keptToken = '';
  let keptSlot = 0;
  let lostSlot = 0;
  let catalogUrl = '';
  /** A list on shard_a with the lost write's token, read once the move was flipped and released, before it was `done`. */
  let listedBeforeDone: { status: number; type: unknown } | undefined;

  /** The documents API over `env`'s shards (primaries only), on a loopback port. */
  const apiOver = (env: MoveEnv): Promise<ApiCall> => documentsApiClientOver(env, closers, { defaultShard: TARGET });
  const moveSlot = async (env: MoveEnv, slot: number, hook?: (point: string) => Promise<void>): Promise<string> => {
    const mover = env.mover({ readerGraceMs: 0, ...(hook ? { hook: (point) => hook(point) } : {}) });
    return (await mover.run((await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' })).id)).state;
  };

  beforeAll(async () => {
    pair = await startFailoverPair({ catalogShard: TARGET, failingShard: SOURCE });
    const { catalogServer: targetServer, failingServer: sourceServer } = pair;
    replica = pair.replica;
    const urls: MoveEnvUrls = { catalog: targetServer.urlFor('catalog'), shards: { [TARGET]: targetServer.urlFor(TARGET), [SOURCE]: sourceServer.urlFor(SOURCE) } };
    catalogUrl = urls.catalog;
    before = connectMoveEnv(urls);
    await before.slotMaps.initialise(buildSlotMap([TARGET, SOURCE].map((shardId) => ({ shardId, weight: 1 }))), 'test', 'two test shards');
    keptSlot = await firstSlotOwnedBy(before, SOURCE, 100);
    lostSlot = await firstSlotOwnedBy(before, SOURCE, keptSlot + 1);
    [keptOwner] = keysInSlot(keptSlot, 1) as [string];
    [lostOwner] = keysInSlot(lostSlot, 1) as [string];
    const sourcePool = before.shards.get(SOURCE) as pg.Pool;
    await seedUsers(sourcePool, keptSlot, [keptOwner], 0);
    await seedUsers(sourcePool, lostSlot, [lostOwner], 0);
    await replica.waitForCatchUp();
    // shard_b's replica stops receiving; shard_b's primary goes on acknowledging writes.
    closers.push(await cutWalReceiver(replica.url));
    const api = await apiOver(before);
    const write = async (owner: string, title: string): Promise<{ id: string; token: string }> => {
      const a = await api('/api/v1/documents', {}, { owner_id: owner, title });
      const token = a.headers.get('x-read-token');
      if (a.status !== 201 || token === null) throw new Error(`the write answered ${a.status}: ${JSON.stringify(a.body)}`);
      return { id: String(a.body.id), token };
    };
    ({ id: keptDoc, token: keptToken } = await write(keptOwner, 'moved before the failover'));
    ({ id: lostDoc, token: lostToken } = await write(lostOwner, 'lost in the failover'));
    // The kept owner's slot moves to shard_a on timeline 1, after the write: the copy holds it.
    expect(await moveSlot(before, keptSlot)).toBe('done');
    // shard_b fails over to its replica (timeline 2), which has neither write.
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    after = connectMoveEnv({ ...urls, shards: { ...urls.shards, [SOURCE]: replica.urlFor(SOURCE) } });
    // The lost owner's slot moves to shard_a on timeline 2: the copy cannot hold the lost write.
    // Once flipped and released, before `done` (the readers' grace, the source's rows deleted), a
    // list on shard_a with the lost write's token is read too.
    expect(
      await moveSlot(after, lostSlot, async (point) => {
        if (point !== 'cleaning_up') return;
        const res = await (await apiOver(after))(`/api/v1/users/${lostOwner}/documents`, { 'x-read-after': lostToken });
        listedBeforeDone = { status: res.status, type: res.body?.type as unknown };
      }),
    ).toBe('done');
  }, 240_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await before?.stop().catch(() => undefined);
    await after?.stop().catch(() => undefined);
    await pair?.stop();
  });

  it('answers 410 for a write lost on shard_b before its unit moved to shard_a, and the document of a write moved before the failover (200)', async () => {
    const api = await apiOver(after);
    const read = (path: string, token: string) => api(path, { 'x-read-after': token });
    const lostByOwner = await read(`/api/v1/documents/${lostDoc}?owner=${lostOwner}`, lostToken);
    const lostList = await read(`/api/v1/users/${lostOwner}/documents`, lostToken);
    const lostAnyOwner = await read(`/api/v1/documents/${lostDoc}`, lostToken);
    const kept = await read(`/api/v1/documents/${keptDoc}?owner=${keptOwner}`, keptToken);

    // The premise: both tokens are of shard_b on timeline 1, past where timeline 1 ends in shard_b's timeline 2.
    const fork = await withClient(replica?.url ?? '', async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      return parseLsn(/^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '')?.[1] ?? '0/0');
    });
    const [k, l] = [parseReadToken(keptToken), parseReadToken(lostToken)];
    expect({ shards: [k.shardId, l.shardId], timelines: [k.timeline, l.timeline], past: [parseLsn(k.lsn) > fork, parseLsn(l.lsn) > fork] }).toEqual({
      shards: [SOURCE, SOURCE],
      timelines: [1, 1],
      past: [true, true],
    });
    // Both owners' slots are shard_a's now.
    expect({ kept: await after.ownerOf(keptSlot), lost: await after.ownerOf(lostSlot) }).toEqual({ kept: TARGET, lost: TARGET });

    const gone = { status: 410, type: WRITE_LOST_TYPE };
    const seen = (a: ApiAnswer) => ({ status: a.status, type: a.body?.type as unknown });
    // The read of every shard reads shard_b too, whose own history tells (as before).
    expect(seen(lostAnyOwner)).toEqual(gone);
    expect({ status: kept.status, id: kept.body?.id as unknown, shard: kept.body?.shard_id as unknown }).toEqual({ status: 200, id: keptDoc, shard: TARGET });
    // The owner's shard is shard_a: the token of shard_b is checked there too.
    expect({ byOwner: seen(lostByOwner), list: seen(lostList) }).toEqual({ byOwner: gone, list: gone });
  }, 120_000);

  it('answers 410 for the lost write on shard_a once the move is published and released, before it is done', () => {
    // last_move_off counted `done` moves only: between the release and `done` (the readers'
    // grace, the source's rows deleted) the list answered 200 without the write.
    expect(listedBeforeDone).toEqual({ status: 410, type: WRITE_LOST_TYPE });
  });

  it('records the source timeline at each fence, answers the application login through catalog.last_move_off, and without a record answers as before (404, the list)', async () => {
    const recorded = await after.catalog.query<{ slot: number; tl: string | null; history: string | null }>(
      "select slot, source_timeline::text as tl, source_history as history from catalog.move_jobs where state = 'done' order by id",
    );
    // The kept owner's move fenced timeline 1 (no history), the lost owner's timeline 2 (timeline 1 ends in it).
    expect(recorded.rows.map((r) => ({ slot: r.slot, tl: r.tl, history: r.history?.replace(/\t.*$/s, '') }))).toEqual([
      { slot: keptSlot, tl: '1', history: '' },
      { slot: lostSlot, tl: '2', history: '1' },
    ]);

    // The application's login has no SELECT on move_jobs, only the function (sharding migration 014).
    await after.catalog.query("create role h46_app login password 'app pass'; grant ca_dms_app to h46_app");
    const appUrl = new URL(catalogUrl);
    appUrl.username = 'h46_app';
    appUrl.password = 'app pass';
    const appPool = new pg.Pool({ connectionString: appUrl.toString(), max: 1 });
    try {
      const lookup = createMovesLookup(appPool);
      const selectMoves = await appPool.query('select 1 from catalog.move_jobs').then(
        () => 'allowed',
        (e: { code?: string }) => e.code,
      );
      expect({ lost: (await lookup.lastMoveOff(SOURCE, lostOwner))?.timeline, kept: (await lookup.lastMoveOff(SOURCE, keptOwner))?.timeline, offTarget: await lookup.lastMoveOff(TARGET, lostOwner), selectMoves }).toEqual({
        lost: 2,
        kept: 1,
        offTarget: undefined,
        selectMoves: '42501',
      });
    } finally {
      await appPool.end();
    }

    // A move that recorded nothing (before migration 014, a mover refused timeline_history()): as before.
    await after.catalog.query('update catalog.move_jobs set source_timeline = null, source_history = null where slot = $1', [lostSlot]);
    const api = await apiOver(after);
    const byOwner = await api(`/api/v1/documents/${lostDoc}?owner=${lostOwner}`, { 'x-read-after': lostToken });
    const list = await api(`/api/v1/users/${lostOwner}/documents`, { 'x-read-after': lostToken });
    expect({ byOwner: byOwner.status, list: list.status, items: list.body?.items }).toEqual({ byOwner: 404, list: 200, items: [] });
  }, 120_000);
});
