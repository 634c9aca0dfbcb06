import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { cutWalReceiver, type TestReplica } from '../../support/replica.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';
import { connectMoveEnv, firstSlotOwnedBy, keysInSlot, seedUsers, type MoveEnv } from './fixtures/move-env.js';
import { startFailoverPair, type FailoverPair } from './fixtures/failover-pair.js';
import { documentsApiOver } from './fixtures/move-env-api.js';

const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';
/** The token's shard, which fails over between its fence and the move's flip. */
const A = 'shard_b';
/** The other shard, with the catalog. */
const B = 'shard_a';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Review of sharding migration 015 (catalog.write_copied_off): a move's fence position vouches
 * for the copy only if the source did not fail over between the fence and the flip. Here A's
 * address (a proxy, as a DNS name) moves to A's promoted replica while the move off A holds its
 * fence: the fence UPDATE ran on timeline 1 past a write W the replica never received, the final
 * catch-up, the verification and the flip ran on timeline 2, which lacks W, so B never got W.
 * The move recorded timeline 1 and the fence position (past W's token). The unit then came back
 * onto A (timeline 2) and left again (timeline 2): a list with W's token must answer 410 (W is on
 * no shard), as migration 014's rule alone did; write_copied_off answered "copied" (200 without W).
 */
describe('a failover of the source between the fence and the flip', () => {
  let pair: FailoverPair | undefined;
  let replica: TestReplica | undefined;
  let proxy: TcpProxy | undefined;
  const closers: (() => Promise<void>)[] = [];
  let env: MoveEnv;
  let slot = 0;
  let owner = '';
  let docW = '';
  /** X, written on A's timeline 2 while the move believed A's writes held, and its token. */
  let docX = '';
  let tokenX = '';
  /** The fence's WAL position (source_fence_lsn) as the fence recorded it, on timeline 1. */
  let fenceLsn = '';

  const move = async (to: string, hook?: (point: string, jobId: number) => Promise<void>): Promise<string> => {
    const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 30_000, ...(hook ? { hook: (point, job) => hook(point, job.id) } : {}) });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    if (job.state !== 'done') throw new Error(`the move of slot ${slot} to ${to} ended ${job.state}: ${job.error ?? ''}`);
    return String(job.id);
  };
  const list = async (token: string): Promise<{ status: number; type: unknown; items: unknown }> => {
    const url = await documentsApiOver(env, closers, { defaultShard: B });
    const res = await fetch(`${url}/api/v1/users/${owner}/documents`, { headers: { 'x-read-after': token } });
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read arbitrary JSON answers
    const body: any = await res.json();
    return { status: res.status, type: res.status === 200 ? undefined : body?.type, items: res.status === 200 ? (body.items as { id: string }[]).map((i) => i.id) : undefined };
  };

  beforeAll(async () => {
    pair = await startFailoverPair({ catalogShard: B, failingShard: A });
    const { catalogServer: bServer, failingServer: aServer } = pair;
    replica = pair.replica;
    proxy = await startTcpProxy(aServer.port);
    const aUrl = aServer.urlFor(A).replace(`:${aServer.port}/`, `:${proxy.port}/`);
    env = connectMoveEnv({ catalog: bServer.urlFor('catalog'), shards: { [B]: bServer.urlFor(B), [A]: aUrl } });
    await env.slotMaps.initialise(buildSlotMap([B, A].map((shardId) => ({ shardId, weight: 1 }))), 'test', 'two test shards');
    slot = await firstSlotOwnedBy(env, A, 100);
    [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(A) as pg.Pool, slot, [owner], 1);
    const r = replica;
    let committed: Promise<void> = Promise.resolve();
    await move(B, async (point, jobId) => {
      if (point === 'cutover') {
        // The replica has everything up to here (the run's permit, the capture), then stops receiving.
        await r.waitForCatchUp();
        closers.push(await cutWalReceiver(r.url));
        // W: a writer of the unit whose transaction holds the fence row (FOR SHARE, the fence
        // trigger) past the last catch-up before the fence, and commits once the fence UPDATE
        // waits for it: W is committed before the fence, after every catch-up that precedes it.
        const writer = new pg.Client({ connectionString: aServer.urlFor(A) });
        await writer.connect();
        await writer.query('begin');
        const { rows } = await writer.query<{ id: string }>(
          "insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'W', '{}'::jsonb) returning id::text as id",
          [owner, slot],
        );
        docW = rows[0]?.id ?? '';
        committed = (async () => {
          await withClient(aServer.urlFor(A), async (c) => {
            for (let i = 0; i < 2000; i += 1) {
              const { rows: waiting } = await c.query<{ n: number }>(
                "select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%set state = ''fenced''%'",
              );
              if ((waiting[0]?.n ?? 0) > 0) return;
              await sleep(10);
            }
            throw new Error('the fence never waited for the writer');
          });
          await writer.query('commit');
          await writer.end();
        })();
      }
      if (point === 'published') {
        // X: a write of the unit A's promoted replica took after the flip, before the release
        // (the replica never received the fence's commit: its fence row is open).
        const { rows } = await withClient(aUrl, (c) =>
          c.query<{ id: string; lsn: string }>(
            "insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'X', '{}'::jsonb) returning id::text as id, pg_current_wal_insert_lsn()::text as lsn",
            [owner, slot],
          ),
        );
        [docX, tokenX] = [rows[0]?.id ?? '', `${A}@${rows[0]?.lsn ?? ''};tl=2`];
      }
      if (point === 'fenced') {
        await committed;
        const recorded = await env.catalog.query<{ lsn: string | null }>('select source_fence_lsn::text as lsn from catalog.move_jobs where id = $1', [jobId]);
        fenceLsn = recorded.rows[0]?.lsn ?? '';
        // A fails over: its address now reaches the promoted replica (timeline 2, without W).
        await withClient(r.url, (c) => c.query('select pg_promote(true, 60)'));
        proxy?.retarget(r.port);
        await proxy?.cut();
        await proxy?.restore();
        await sleep(300);
      }
    });
  }, 300_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await env?.stop().catch(() => undefined);
    await proxy?.close();
    await pair?.stop();
  });

  it('tells the write lost on the new owner straight after the move, by the timeline the fence was released on', async () => {
    // Before any move back: the move off A recorded the release's timeline (2) and its history
    // (1 ends at the fork, before W's token), no fence position. Without the history (cleared with
    // the fence's timeline) a list with W's token answered 200 without W.
    const version = (await env.slotMaps.current()).version;
    expect(await list(`${A}@${fenceLsn};tl=1;v=${version}`)).toEqual({ status: 410, type: WRITE_LOST_TYPE, items: undefined });
    const { rows } = await env.catalog.query<{ timeline: string | null; history: boolean; lsn: string | null }>(
      "select source_timeline::text as timeline, source_history is not null as history, source_fence_lsn::text as lsn from catalog.move_jobs where state = 'done' and from_shard = $1 and slot = $2",
      [A, slot],
    );
    expect(rows).toEqual([{ timeline: '2', history: true, lsn: null }]);
  }, 120_000);

  it('copies a write the promoted replica took while its fence row was open, before the target opens', async () => {
    // Without the catch-up at the release X was on neither shard once the move was done, and a
    // list on B with X's token (timeline 2, the move's own) answered 200 without it.
    const held = async (pool: pg.Pool) => (await pool.query('select 1 from documents where id = $1', [docX])).rowCount;
    expect({ onB: await held(env.shards.get(B) as pg.Pool), onA: await held(env.shards.get(A) as pg.Pool) }).toEqual({ onB: 1, onA: 0 });
    const version = (await env.slotMaps.current()).version;
    const listed = await list(`${tokenX};v=${version}`);
    expect({ status: listed.status, hasX: Array.isArray(listed.items) && (listed.items as string[]).includes(docX) }).toEqual({ status: 200, hasX: true });
  }, 120_000);

  it('does not tell the write copied by a fence whose timeline the source left before the flip', async () => {
    // W's token: the insert position read after its commit, at or before the fence's (here the fence's own).
    const fork = await withClient(replica?.url ?? '', async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      return /^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '')?.[1];
    });
    const afterW = await env.catalog.query<{ past: boolean }>('select $1::pg_lsn > $2::pg_lsn as past', [fenceLsn || '0/0', fork ?? 'FFFFFFFF/0']);
    const version = (await env.slotMaps.current()).version;
    // The premise: W is on no shard (the flip ran on timeline 2, without it), the fence on timeline 1 recorded past the fork.
    const held = async (pool: pg.Pool) => (await pool.query('select 1 from documents where id = $1', [docW])).rowCount;
    expect({ onB: await held(env.shards.get(B) as pg.Pool), onA: await held(env.shards.get(A) as pg.Pool), past: afterW.rows[0]?.past }).toEqual({ onB: 0, onA: 0, past: true });

    // The unit back onto A (timeline 2) and off again (timeline 2).
    await move(A);
    await move(B);
    const token = `${A}@${fenceLsn};tl=1;v=${version}`;
    expect(await list(token)).toEqual({ status: 410, type: WRITE_LOST_TYPE, items: undefined });
  }, 120_000);
});
