import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { reviewFences } from '../../../functions/adapters/postgres/fence-review.js';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { buildSlotMap, moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { migrateDatabase } from '../../support/postgres.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { connectMoveEnv, dyingAfterFence, fenceState, firstSlotOwnedBy, keysInSlot, refusalOf, seedUsers, type MoveEnv } from './fixtures/move-env.js';
import { documentsApiClientOver, type ApiCall } from './fixtures/move-env-api.js';

const SOURCE = 'shard_002';
const TARGET = 'shard_001';

/**
 * A read-your-writes token issued before its key moved (a slot move, a directory move), read
 * after the move is done, through the documents API over shards WITH replicas: the target's
 * replica stopped (replay paused) before the move and never replays the copy, the source's
 * replays the move off (the unit `moved`, its rows deleted). The token is of the source shard
 * and says nothing of the target's WAL. The read must see the write, on the target's primary:
 * never a miss from the target's replica, which has no copy, nor from the source's, which has no
 * rows. (h105, issue #15: the scenario h104 did not run live. It passed as first written: no fix.)
 */
describe('a read token issued before its key moved, read after the move, replicas behind the move', () => {
  let cluster: TestShardCluster;
  let env: MoveEnv;
  const closers: (() => Promise<void>)[] = [];
  let api: ApiCall;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 2, replicasPerShard: 1, schema: true });
    const [a, b] = cluster.shards;
    if (!a || !b) throw new Error('two shards needed');
    await withClient(a.primary.url, (c) => c.query('create database catalog'));
    const catalog = a.primary.urlFor('catalog');
    await migrateDatabase(catalog, 'sharding');
    env = connectMoveEnv({ catalog, shards: { [TARGET]: a.primary.url, [SOURCE]: b.primary.url } });
    await env.slotMaps.initialise(buildSlotMap([TARGET, SOURCE].map((shardId) => ({ shardId, weight: 1 }))), 'test', 'two test shards');
    api = await documentsApiClientOver(env, closers, { defaultShard: TARGET, readReplicas: Object.fromEntries(cluster.shards.map((s) => [s.shardId, s.replicas.map((r) => r.url)])) });
  }, 240_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await env?.stop().catch(() => undefined);
    await cluster?.stop();
  });

  it("reads the write on the target after a slot move and after a directory move (200, the list holds it), the target's replica stopped before the move, the source's past it", async () => {
    const source = env.shards.get(SOURCE);
    if (!source) throw new Error('no source pool');
    const slotMoved = await firstSlotOwnedBy(env, SOURCE, 100);
    const pinnedSlot = await firstSlotOwnedBy(env, SOURCE, slotMoved + 1);
    const [bySlot] = keysInSlot(slotMoved, 1) as [string];
    const [byDirectory] = keysInSlot(pinnedSlot, 1) as [string];
    await seedUsers(source, slotMoved, [bySlot], 0);
    await seedUsers(source, pinnedSlot, [byDirectory], 0);
    await env.directory.set(byDirectory, SOURCE, 'test');
    // The writes, with their tokens, on the source.
    const tokens = new Map<string, { id: string; token: string }>();
    for (const owner of [bySlot, byDirectory]) {
      const a = await api('/api/v1/documents', {}, { owner_id: owner, title: 'written before the move' });
      if (a.status !== 201) throw new Error(`the write answered ${a.status}: ${JSON.stringify(a.body)}`);
      tokens.set(owner, { id: String(a.body?.id), token: a.headers.get('x-read-token') ?? '' });
    }
    for (const s of cluster.shards) for (const r of s.replicas) await r.waitForCatchUp();
    const [targetReplica] = cluster.shards[0]?.replicas ?? [];
    const [sourceReplica] = cluster.shards[1]?.replicas ?? [];
    if (!targetReplica || !sourceReplica) throw new Error('a replica per shard needed');
    // The target's replica stops before the move: it never replays the copy (nor the unit's opening).
    await targetReplica.pauseReplay();
    try {
      const mover = env.mover({ readerGraceMs: 0 });
      expect((await mover.run((await mover.plan({ kind: 'slot', slot: slotMoved, to: TARGET, createdBy: 'test' })).id)).state).toBe('done');
      expect((await mover.run((await mover.plan({ kind: 'directory', key: byDirectory, to: TARGET, createdBy: 'test' })).id)).state).toBe('done');
      // The source's replica replays the move off (the unit `moved`, its rows deleted).
      await sourceReplica.waitForCatchUp();

      const seen: Record<string, unknown> = {};
      for (const owner of [bySlot, byDirectory]) {
        const { id, token } = tokens.get(owner) ?? { id: '', token: '' };
        const h = { 'x-read-after': token };
        const one = await api(`/api/v1/documents/${id}?owner=${owner}`, h);
        const any = await api(`/api/v1/documents/${id}`, h);
        const list = await api(`/api/v1/users/${owner}/documents`, h);
        const user = await api(`/api/v1/users/${owner}`, h);
        seen[owner === bySlot ? 'slot' : 'directory'] = {
          token: parseReadToken(token).shardId,
          one: [one.status, one.body?.served_by],
          any: [any.status, any.body?.served_by],
          list: [list.status, list.body?.served_by, (list.body?.items as { id: string }[] | undefined)?.map((d) => d.id).includes(id)],
          user: [user.status, user.body?.served_by],
        };
      }
      const onTarget = `${TARGET}/primary`;
      const expected = { token: SOURCE, one: [200, onTarget], any: [200, onTarget], list: [200, onTarget, true], user: [200, onTarget] };
      expect(seen).toEqual({ slot: expected, directory: expected });
    } finally {
      await targetReplica.resumeReplay();
    }
  }, 120_000);

  /**
   * A hand change of the slot (a map published by hand) whose process died between its fence and
   * its put-back: the slot holds the write, so the change is refused (rows left) and the map still
   * names the source, left fenced until the operator's review reopens it. A token of the write,
   * read while the slot is fenced and after the review settled it, sees the write on the source
   * (its replica, which replayed the fence and the reopening, or its primary).
   */
  it('reads the write while a dead hand change leaves its slot fenced, and after the fence review reopened it', async () => {
    const source = env.shards.get(SOURCE);
    if (!source) throw new Error('no source pool');
    const slot = await firstSlotOwnedBy(env, SOURCE, 400);
    const [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [owner], 0);
    const written = await api('/api/v1/documents', {}, { owner_id: owner, title: 'written before the hand change' });
    if (written.status !== 201) throw new Error(`the write answered ${written.status}: ${JSON.stringify(written.body)}`);
    const id = String(written.body?.id);
    const h = { 'x-read-after': written.headers.get('x-read-token') ?? '' };
    const { pools, dying } = dyingAfterFence(env.shards, SOURCE, cluster.shards[1]?.primary.url ?? '');
    try {
      const store = new SlotMapStore(env.catalog, { shardPools: pools });
      expect(await refusalOf(store.publish(moveSlots(await store.current(), [slot], TARGET), 'ops', 'hand change'))).toBeInstanceOf(SlotMapRowsLeftError);
    } finally {
      await dying.end();
    }
    const readAll = async (): Promise<unknown> => {
      const one = await api(`/api/v1/documents/${id}?owner=${owner}`, h);
      const any = await api(`/api/v1/documents/${id}`, h);
      const list = await api(`/api/v1/users/${owner}/documents`, h);
      return { one: one.status, any: any.status, list: [list.status, (list.body?.items as { id: string }[] | undefined)?.map((d) => d.id).includes(id)] };
    };
    const fenced = { state: await fenceState(source, slot), reads: await readAll() };
    const review = await reviewFences({ catalog: env.catalog, shards: env.shards, settle: true, olderThanMs: 0 });
    for (const r of cluster.shards[1]?.replicas ?? []) await r.waitForCatchUp();
    const settled = { state: await fenceState(source, slot), reads: await readAll() };

    const seen = { one: 200, any: 200, list: [200, true] };
    expect(review.rows.find((r) => r.shard === SOURCE && r.unitId === String(slot))?.outcome).toMatch(/reopened/);
    expect({ fenced, settled }).toEqual({ fenced: { state: 'fenced', reads: seen }, settled: { state: undefined, reads: seen } });
  }, 120_000);
});
