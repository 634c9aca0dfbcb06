import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLogin, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { formatLsn, parseLsn } from '../../../functions/core/sharding/lsn.js';
import { clusterIdFromSystemIdentifier } from '../../../functions/core/sharding/read-token.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';
import { connectMoveEnv, firstSlotOwnedBy, keysInSlot, seedUsers, type MoveEnv } from './fixtures/move-env.js';
import { startFailoverPair, type FailoverPair } from './fixtures/failover-pair.js';
import { interceptCheckouts } from './fixtures/pool-checkouts.js';
import { documentsApiClientOver, type ApiCall } from './fixtures/move-env-api.js';

const SOURCE = 'shard_b';
const TARGET = 'shard_a';
const WRITE_LOST = { status: 410, type: 'https://ca-dms-scaling.dev/problems/write-lost' };
const FENCE_UPDATE = "update write_fences set state = 'fenced'";
const HISTORY_READ = 'from timeline_history()';

/**
 * Issue #15 (h146, review of h142's fence): the move reads the source's timeline history before
 * its fence (outside the fence's budget), with the cluster id in the same statement where the
 * mover's login may read it, and reads it again under the fence only when the fence answered
 * another timeline or cluster. Counted here, statement by statement on the source (no timing):
 * with nothing changed between the read and the fence, the fence sends no statement more than
 * before h142 (one history read, before the fence's UPDATE; nothing on the source between that
 * UPDATE's transaction and the fence's end); a failover between the two costs one read more,
 * under the fence; and a login refused pg_control_system() records the history as before
 * (judged by timeline alone, no cluster id asked or recorded).
 */
describe("the fence's reads of the source's timeline history, counted", () => {
  let pair: FailoverPair | undefined;
  let proxy: TcpProxy | undefined;
  let env: MoveEnv | undefined;
  let proxied = '';
  let version = 0;
  let fork = 0n;
  const closers: (() => Promise<void>)[] = [];

  /**
   * Every statement the mover sends on `pool`'s checkouts (its own are connects without a
   * callback), in order, with a mark where the run reached the 'fenced' hook (the fence's end).
   */
  const counting = (pool: pg.Pool): { log: string[]; restore: () => void; onHistoryRead?: (client: pg.PoolClient) => Promise<void> } => {
    const log: string[] = [];
    const counter: { log: string[]; restore: () => void; onHistoryRead?: (client: pg.PoolClient) => Promise<void> } = { log, restore: () => undefined };
    counter.restore = interceptCheckouts(pool, (sent, send, client) => {
      const text = sent ?? '(not text)';
      log.push(text);
      const hook = counter.onHistoryRead;
      if (hook === undefined || !text.includes(HISTORY_READ)) return send();
      counter.onHistoryRead = undefined;
      return (async () => {
        const answer = await send();
        client.on('error', () => undefined);
        await hook(client);
        return answer;
      })();
    }).restore;
    return counter;
  };
  /** The statements of `log` from the fence's read of the history to the fence's end, summarised. */
  const fenceStatements = (log: readonly string[], end: number): { reads: number; readBefore: boolean; readsUnderFence: number; afterFenceTransaction: string[] } => {
    const fence = log.findIndex((t) => t.includes(FENCE_UPDATE));
    const firstRead = log.findIndex((t) => t.includes(HISTORY_READ));
    const after = log.slice(fence + 1, end);
    // The fence's transaction ends with its COMMIT (inTransaction's own statement).
    const commit = after.findIndex((t) => /^\s*commit\s*$/i.test(t));
    return {
      reads: log.slice(0, end).filter((t) => t.includes(HISTORY_READ)).length,
      readBefore: firstRead >= 0 && firstRead < fence,
      readsUnderFence: after.filter((t) => t.includes(HISTORY_READ)).length,
      afterFenceTransaction: after.slice(commit + 1).map((t) => (t.includes(HISTORY_READ) ? 'history read' : t.slice(0, 40))),
    };
  };
  const moveOff = async (e: MoveEnv, from: number, counter: ReturnType<typeof counting>, shards?: Map<string, pg.Pool>): Promise<{ job: { id: number; state: string; error?: string | null }; end: number; owner: string }> => {
    const slot = await firstSlotOwnedBy(e, SOURCE, from);
    const [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(e.shards.get(SOURCE) as pg.Pool, slot, [owner], 1);
    let end = -1;
    const mover = e.mover({
      readerGraceMs: 0,
      fenceBudgetMs: 30_000,
      ...(shards === undefined ? {} : { shards }),
      hook: (point) => {
        if (point === 'fenced') end = counter.log.length;
      },
    });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' })).id);
    return { job: { id: job.id, state: job.state, error: job.error ?? null }, end, owner };
  };
  const recorded = async (jobId: number): Promise<{ tl: string | null; history: string | null; id: string | null }> =>
    (
      await (env as MoveEnv).catalog.query<{ tl: string | null; history: string | null; id: string | null }>(
        'select source_timeline::text as tl, source_history as history, source_cluster_id as id from catalog.move_jobs where id = $1',
        [jobId],
      )
    ).rows[0] ?? { tl: null, history: null, id: null };
  const judged = async (api: ApiCall, owner: string, at: bigint): Promise<{ status: number; type: unknown }> => {
    const a = await api(`/api/v1/users/${owner}/documents`, { 'x-read-after': `${SOURCE}@${formatLsn(at)};tl=1;v=${version}` });
    return { status: a.status, type: a.body?.type as unknown };
  };

  beforeAll(async () => {
    pair = await startFailoverPair({ catalogShard: TARGET, failingShard: SOURCE });
    proxy = await startTcpProxy(pair.failingServer.port);
    proxied = pair.failingServer.urlFor(SOURCE).replace(`:${pair.failingServer.port}/`, `:${proxy.port}/`);
    env = connectMoveEnv({ catalog: pair.catalogServer.urlFor('catalog'), shards: { [TARGET]: pair.catalogServer.urlFor(TARGET), [SOURCE]: proxied } });
    await env.slotMaps.initialise(buildSlotMap([TARGET, SOURCE].map((shardId) => ({ shardId, weight: 1 }))), 'test', 'two test shards');
    version = (await env.slotMaps.current()).version;
  }, 120_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await env?.stop().catch(() => undefined);
    await proxy?.close().catch(() => undefined);
    await pair?.stop();
  });

  it('sends one history read, before the fence, and nothing more on the source while the fence holds writes, when nothing changed in between', async () => {
    if (!env) throw new Error('no env');
    const counter = counting(env.shards.get(SOURCE) as pg.Pool);
    let moved;
    try {
      moved = await moveOff(env, 100, counter);
    } finally {
      counter.restore();
    }
    const statements = fenceStatements(counter.log, moved.end);
    expect({ state: moved.job.state, ...statements, askedClusterId: counter.log.some((t) => t.includes(HISTORY_READ) && t.includes('pg_control_system')) }).toEqual({
      state: 'done',
      reads: 1,
      readBefore: true,
      readsUnderFence: 0,
      afterFenceTransaction: [],
      askedClusterId: true,
    });
  }, 120_000);

  it('reads the history once more, under the fence, after a failover between its read and the fence, and records the new timeline\'s', async () => {
    if (!env || !pair || !proxy) throw new Error('no env');
    const [r, p] = [pair.replica, proxy];
    const counter = counting(env.shards.get(SOURCE) as pg.Pool);
    // The failover right after the fence's read of the history (timeline 1): A's address then
    // reaches the promoted replica (timeline 2, the same cluster).
    counter.onHistoryRead = async () => {
      await r.waitForCatchUp();
      await withClient(r.url, (c) => c.query('select pg_promote(true, 60)'));
      p.retarget(r.port);
      await p.cut();
      await p.restore();
      await new Promise((resolve) => setTimeout(resolve, 300));
    };
    let moved;
    try {
      moved = await moveOff(env, 200, counter);
    } finally {
      counter.restore();
    }
    fork = await withClient(r.url, async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      return parseLsn(/^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '')?.[1] ?? '0/0');
    });
    const row = await recorded(moved.job.id);
    const id = await withClient(r.url, async (c) => clusterIdFromSystemIdentifier((await c.query<{ id: string }>('select system_identifier::text as id from pg_control_system()')).rows[0]?.id ?? ''));
    expect({ state: moved.job.state, error: moved.job.error, ...fenceStatements(counter.log, moved.end), tl: row.tl, history: row.history?.includes(formatLsn(fork)) ?? null, id: row.id }).toEqual({
      state: 'done',
      error: null,
      reads: 2,
      readBefore: true,
      readsUnderFence: 1,
      afterFenceTransaction: ['history read'],
      tl: '2',
      history: true,
      id,
    });
  }, 180_000);

  // Last: it revokes pg_control_system() on the source (the promoted replica, timeline 2).
  it('records the history as before for a mover login refused pg_control_system(): no cluster id asked with it, a token judged by timeline and position', async () => {
    if (!env || !pair || fork === 0n) throw new Error('no env, or the failover above did not run');
    const r = pair.replica;
    const admin = new pg.Pool({ connectionString: r.urlFor(SOURCE), max: 1 });
    admin.on('error', () => undefined);
    try {
      await ensureLogin(admin, { username: 'refused_mover', password: 'mover pass' }, { role: MOVER_ROLE });
      await admin.query('revoke execute on function pg_control_system() from public');
    } finally {
      await admin.end();
    }
    const url = new URL(proxied);
    url.username = 'refused_mover';
    url.password = 'mover pass';
    const moverPool = new pg.Pool({ connectionString: url.toString(), max: 6 });
    moverPool.on('error', () => undefined);
    closers.push(() => moverPool.end());
    const counter = counting(moverPool);
    let moved;
    try {
      moved = await moveOff(env, 300, counter, new Map([[TARGET, env.shards.get(TARGET) as pg.Pool], [SOURCE, moverPool]]));
    } finally {
      counter.restore();
    }
    const row = await recorded(moved.job.id);
    expect({
      state: moved.job.state,
      error: moved.job.error,
      ...fenceStatements(counter.log, moved.end),
      askedClusterId: counter.log.some((t) => t.includes(HISTORY_READ) && t.includes('pg_control_system')),
      tl: row.tl,
      history: row.history?.includes(formatLsn(fork)) ?? null,
      id: row.id,
    }).toEqual({ state: 'done', error: null, reads: 1, readBefore: true, readsUnderFence: 0, afterFenceTransaction: [], askedClusterId: false, tl: '2', history: true, id: null });
    // Judged by the recorded history: a token of timeline 1 before the fork is held (the list),
    // one past it was lost in the failover before the move (410).
    const api: ApiCall = await documentsApiClientOver(env, closers, { defaultShard: TARGET });
    expect({ held: await judged(api, moved.owner, fork - 8n), lost: await judged(api, moved.owner, fork + 2n ** 20n) }).toEqual({ held: { status: 200, type: undefined }, lost: WRITE_LOST });
  }, 180_000);
});
