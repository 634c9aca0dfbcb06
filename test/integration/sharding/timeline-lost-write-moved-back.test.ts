import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { formatLsn, normalizeWalPosition, parseLsn } from '../../../functions/core/sharding/lsn.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { cutWalReceiver, type TestReplica } from '../../support/replica.js';
import { connectMoveEnv, firstSlotOwnedBy, keysInSlot, seedUsers, type MoveEnv, type MoveEnvUrls } from './fixtures/move-env.js';
import { startFailoverPair, type FailoverPair } from './fixtures/failover-pair.js';
import { documentsApiClientOver, type ApiCall } from './fixtures/move-env-api.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';
/** The token's shard, which fails over (its replica stops receiving first). */
const A = 'shard_b';
/** The other shard, with the catalog. */
const B = 'shard_a';

/**
 * Issue #15, item 2: a token of shard A (`A@L;tl=1`) judged on B by the newest move off A alone
 * (sharding migration 014). Reachable on real PostgreSQL: the write's unit moves A -> B fenced on
 * timeline 1 past L (the copy holds the write); A fails over to a replica that never received the
 * write (timeline 2, timeline 1 ending before L) while the unit is on B; the unit comes back
 * B -> A (now on timeline 2, with the row) and leaves again A -> B fenced on timeline 2. The
 * newest move off A then says F = 2 > T = 1 with timeline 1 ending before L: 410, though B holds
 * the row (before the fix, the list answered 410). Told apart by the fence's WAL position and the
 * target's timeline (sharding migration 015, catalog.write_copied_off).
 *
 * (The brief's own order, back on A BEFORE the failover, is a genuine loss: the copy back lies on
 * timeline 1 past the first fence, so past L, and the failover cut timeline 1 before L: A's
 * timeline 2 has the unit as it was before the write, and so has B after the move off A. That
 * chain must stay 410, and is one of the cases below.)
 */
describe('a write copied off its shard before a failover, the unit back on the shard and off again', () => {
  let pair: FailoverPair | undefined;
  let replica: TestReplica | undefined;
  const closers: (() => Promise<void>)[] = [];
  let before: MoveEnv;
  let after: MoveEnv;
  const units: Record<'away' | 'backOnT' | 'noFailover' | 'lost', { slot: number; owner: string; doc: string; token: string }> = {} as never;
  let firstMoveOff = '';

  type Answer = { status: number; type: unknown; items: unknown };
  const apiOver = (env: MoveEnv): Promise<ApiCall> => documentsApiClientOver(env, closers, { defaultShard: B });
  const move = async (env: MoveEnv, slot: number, to: string): Promise<string> => {
    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    if (job.state !== 'done') throw new Error(`the move of slot ${slot} to ${to} ended ${job.state}: ${job.error ?? ''}`);
    return String(job.id);
  };
  const list = async (env: MoveEnv, unit: keyof typeof units): Promise<Answer> => {
    const api = await apiOver(env);
    const { owner, token } = units[unit];
    const a = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': token });
    return { status: a.status, type: a.status === 200 ? undefined : a.body?.type, items: a.status === 200 ? (a.body?.items as { id: string }[]).map((i) => i.id) : undefined };
  };

  beforeAll(async () => {
    pair = await startFailoverPair({ catalogShard: B, failingShard: A });
    const { catalogServer: bServer, failingServer: aServer } = pair;
    replica = pair.replica;
    const urls: MoveEnvUrls = { catalog: bServer.urlFor('catalog'), shards: { [B]: bServer.urlFor(B), [A]: aServer.urlFor(A) } };
    before = connectMoveEnv(urls);
    await before.slotMaps.initialise(buildSlotMap([B, A].map((shardId) => ({ shardId, weight: 1 }))), 'test', 'two test shards');
    await replica.waitForCatchUp();
    // A's replica stops receiving; A's primary goes on acknowledging writes (timeline 1).
    closers.push(await cutWalReceiver(replica.url));
    const api = await apiOver(before);
    let from = 100;
    for (const unit of ['away', 'backOnT', 'noFailover', 'lost'] as const) {
      const slot = await firstSlotOwnedBy(before, A, from);
      from = slot + 1;
      const [owner] = keysInSlot(slot, 1) as [string];
      await seedUsers(before.shards.get(A) as pg.Pool, slot, [owner], 0);
      const w = await api('/api/v1/documents', {}, { owner_id: owner, title: unit });
      const token = w.headers.get('x-read-token');
      if (w.status !== 201 || token === null) throw new Error(`the write answered ${w.status}: ${JSON.stringify(w.body)}`);
      units[unit] = { slot, owner, doc: String(w.body.id), token };
    }
    // Timeline 1, after the writes: away copied off; backOnT copied off and back on A; noFailover
    // away, back and away again.
    firstMoveOff = await move(before, units.away.slot, B);
    await move(before, units.backOnT.slot, B);
    await move(before, units.backOnT.slot, A);
    await move(before, units.noFailover.slot, B);
    await move(before, units.noFailover.slot, A);
    await move(before, units.noFailover.slot, B);
    // A fails over to its replica (timeline 2), which has none of the writes.
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    after = connectMoveEnv({ ...urls, shards: { ...urls.shards, [A]: replica.urlFor(A) } });
    // Timeline 2: away comes back onto A (with its row, from B) and leaves again; backOnT and lost leave A.
    await move(after, units.away.slot, A);
    await move(after, units.away.slot, B);
    await move(after, units.backOnT.slot, B);
    await move(after, units.lost.slot, B);
  }, 300_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await before?.stop().catch(() => undefined);
    await after?.stop().catch(() => undefined);
    await pair?.stop();
  });

  it('answers the list of a unit copied off before the failover and back on A after it (200 with the row), and 410 where the write is gone', async () => {
    // The premise: every token is A's on timeline 1, past where timeline 1 ends in A's timeline 2.
    const fork = await withClient(replica?.url ?? '', async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      return parseLsn(/^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '')?.[1] ?? '0/0');
    });
    const tokens = Object.values(units).map((u) => parseReadToken(u.token));
    expect(tokens.map((t) => ({ shard: t.shardId, tl: t.timeline, past: parseLsn(t.lsn) > fork }))).toEqual(tokens.map(() => ({ shard: A, tl: 1, past: true })));
    // The last move off A of away and backOnT fenced timeline 2; every unit is on B.
    const lastOff = await after.catalog.query<{ slot: number; tl: string }>(
      "select distinct on (slot) slot, source_timeline::text as tl from catalog.move_jobs where state = 'done' and from_shard = $1 order by slot, finished_at desc",
      [A],
    );
    expect(Object.fromEntries(lastOff.rows.map((r) => [r.slot, r.tl]))).toEqual({ [units.away.slot]: '2', [units.backOnT.slot]: '2', [units.noFailover.slot]: '1', [units.lost.slot]: '2' });
    for (const u of Object.values(units)) expect(await after.ownerOf(u.slot)).toBe(B);

    const gone = { status: 410, type: WRITE_LOST_TYPE, items: undefined };
    expect({
      away: await list(after, 'away'),
      backOnT: await list(after, 'backOnT'),
      noFailover: await list(after, 'noFailover'),
      lost: await list(after, 'lost'),
    }).toEqual({
      // The row is on B: copied off A on timeline 1 at or past the token, back on A on timeline 2.
      away: { status: 200, type: undefined, items: [units.away.doc] },
      // Copied off, back on A on timeline 1 (past the fence, so past the token): the failover lost it.
      backOnT: gone,
      // Never on A when it failed over... nor judged by timeline 2 at all: the newest move off A fenced timeline 1.
      noFailover: { status: 200, type: undefined, items: [units.noFailover.doc] },
      // Never copied off A before the failover.
      lost: gone,
    });
  }, 120_000);

  it('tells copied by the fence position at or past the token only, not from moves that recorded nothing (before migration 015), nor across a stay back on A that a second failover cut short', async () => {
    const token = parseReadToken(units.away.token);
    const at = normalizeWalPosition(parseLsn(token.lsn));
    const recorded = await after.catalog.query<{ lsn: string | null; tl: string | null }>('select source_fence_lsn::text as lsn, source_timeline::text as tl from catalog.move_jobs where id = $1', [firstMoveOff]);
    expect({ tl: recorded.rows[0]?.tl, atOrPast: parseLsn(recorded.rows[0]?.lsn ?? '0/0') >= at }).toEqual({ tl: '1', atOrPast: true });
    const setFence = (lsn: string | null) => after.catalog.query('update catalog.move_jobs set source_fence_lsn = $2::pg_lsn where id = $1', [firstMoveOff, lsn]);
    const backOn = await after.catalog.query<{ id: string; tl: string | null }>("select id::text as id, target_timeline::text as tl from catalog.move_jobs where state = 'done' and slot = $1 and to_shard = $2", [units.away.slot, A]);
    expect(backOn.rows.map((r) => r.tl)).toEqual(['2']);

    const seen: Record<string, number> = {};
    await setFence(formatLsn(at));
    seen.equal = (await list(after, 'away')).status;
    await setFence(formatLsn(at - 1n));
    seen.justBefore = (await list(after, 'away')).status;
    await setFence(null);
    seen.fenceNotRecorded = (await list(after, 'away')).status;
    await setFence(recorded.rows[0]?.lsn ?? null);
    await after.catalog.query('update catalog.move_jobs set target_timeline = null where id = $1', [backOn.rows[0]?.id]);
    seen.backOnNotRecorded = (await list(after, 'away')).status;
    await after.catalog.query('update catalog.move_jobs set target_timeline = 2 where id = $1', [backOn.rows[0]?.id]);
    seen.restored = (await list(after, 'away')).status;
    // A second failover of A while the unit was back on it (timeline 2, cut short: left on 3): the copy back may be gone.
    const lastOff = await after.catalog.query<{ id: string; history: string }>(
      "select id::text as id, source_history as history from catalog.move_jobs where state = 'done' and slot = $1 and from_shard = $2 order by finished_at desc limit 1",
      [units.away.slot, A],
    );
    const [{ id: lastOffId, history } = { id: '', history: '' }] = lastOff.rows;
    await after.catalog.query("update catalog.move_jobs set source_timeline = 3, source_history = rtrim($2, E'\\n') || E'\\n2\\tFF/0\\tno recovery target specified\\n' where id = $1", [lastOffId, history]);
    seen.failedOverAgainWhileBack = (await list(after, 'away')).status;
    await after.catalog.query('update catalog.move_jobs set source_timeline = 2, source_history = $2 where id = $1', [lastOffId, history]);
    seen.restoredAgain = (await list(after, 'away')).status;
    // As last_move_off (014): SECURITY DEFINER, search_path pinned, EXECUTE for the application and control logins only.
    const fn = await after.catalog.query<{ definer: boolean; config: string[]; app: boolean; control: boolean; others: boolean; anyone: boolean }>(
      `select p.prosecdef as definer, p.proconfig as config, has_function_privilege('ca_dms_app', p.oid, 'execute') as app,
              has_function_privilege('ca_dms_control', p.oid, 'execute') as control,
              exists (select 1 from aclexplode(p.proacl) a where a.grantee = 0) as anyone,
              exists (select 1 from aclexplode(p.proacl) a where a.grantee not in ('ca_dms_app'::regrole, 'ca_dms_control'::regrole, p.proowner)) as others
         from pg_proc p where p.oid in ('catalog.write_copied_off(text, integer, text, bigint, pg_lsn)'::regprocedure, 'catalog.write_copied_off(text, integer, text, bigint, pg_lsn, text)'::regprocedure)`,
    );
    // Both: migration 015's, and 032's for a token that names its cluster.
    const guarded = { definer: true, config: ['search_path=pg_catalog, pg_temp'], app: true, control: true, others: false, anyone: false };
    expect(fn.rows).toEqual([guarded, guarded]);
    // A done move without finished_at (set by hand) has no place in the order: backOnT's first
    // move off A, so ordered after the copy back on timeline 1, would vouch for a lost write.
    const firstOffBackOnT = await after.catalog.query<{ id: string; at: Date }>(
      "select id::text as id, finished_at as at from catalog.move_jobs where state = 'done' and slot = $1 and from_shard = $2 order by finished_at limit 1",
      [units.backOnT.slot, A],
    );
    await after.catalog.query('update catalog.move_jobs set finished_at = null where id = $1', [firstOffBackOnT.rows[0]?.id]);
    seen.backOnTUnordered = (await list(after, 'backOnT')).status;
    await after.catalog.query('update catalog.move_jobs set finished_at = $2 where id = $1', [firstOffBackOnT.rows[0]?.id, firstOffBackOnT.rows[0]?.at]);
    // Code deployed before migration 015 (the function absent): as before, 410. The tokens name
    // their cluster, so migration 032's function is the one asked: both dropped.
    await after.catalog.query('drop function catalog.write_copied_off(text, integer, text, bigint, pg_lsn, text)');
    await after.catalog.query('drop function catalog.write_copied_off(text, integer, text, bigint, pg_lsn)');
    seen.noFunction = (await list(after, 'away')).status;
    expect(seen).toEqual({ equal: 200, justBefore: 410, fenceNotRecorded: 410, backOnNotRecorded: 410, restored: 200, failedOverAgainWhileBack: 410, restoredAgain: 200, backOnTUnordered: 410, noFunction: 410 });
  }, 120_000);
});
