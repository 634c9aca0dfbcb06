/**
 * The rebalance check while moves are under way. An operator follows `GET /shards/rebalance-check`
 * (or `/recommendations`, which says "start them with POST /shards/moves"): the moves started are
 * unfinished for a while (queued behind each other, copying), and whoever asks again meanwhile must
 * not be told to move the same load a second time. The check plans from the loads as they will
 * be once the moves under way end; a move being cancelled or rolled back ends where it began.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePools, rebalancePort } from './fixtures/rebalance-port.js';

/** Slots of shard_a with rows (2 users, 1 document each: 4 rows a slot); shard_b holds none. */
const SLOTS = 10;

let env: MoveEnv;
let pools: ShardPools;
let port: ScalingApiPort;

beforeAll(async () => {
  env = await startMoveEnv();
  pools = rebalancePools(env);
  const map = await env.slotMaps.current();
  const source = env.shards.get('shard_a');
  if (!source) throw new Error('no shard_a in the move env');
  for (const slot of map.assignments.flatMap((shard, s) => (shard === 'shard_a' ? [s] : [])).slice(0, SLOTS)) await seedUsers(source, slot, keysInSlot(slot, 2), 1);
  port = rebalancePort(env, { slotMap: map, inspector: new ShardInspector(pools, { timeoutMs: 5000 }) });
}, 180_000);
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

describe('the rebalance check with moves under way', () => {
  it('does not propose again the load that the moves it proposed, started and unfinished, are taking away', async () => {
    const first = await port.rebalanceCheck({ by: 'rows' });
    const mover = env.mover();
    const started = [];
    for (const m of first.moves) started.push(await mover.plan({ kind: 'slot', slot: Number(m.unit.id), to: m.to, createdBy: 'test' }));
    const again = await port.rebalanceCheck({ by: 'rows' });

    expect(first.moves.map((m) => [m.from, m.to, m.rows])).toEqual(Array.from({ length: SLOTS / 2 }, () => ['shard_a', 'shard_b', 4]));
    expect(started.every((j) => j.state === 'planned')).toBe(true);
    // Another five moves off shard_a would leave it empty and shard_b with all 40 rows.
    expect(again.moves).toEqual([]);
    expect(again.summary.shards.map((s) => [s.shardId, s.before])).toEqual([
      ['shard_a', 20],
      ['shard_b', 20],
    ]);
    expect(again.summary.balancedAfter).toBe(true);
    // The shards as they are now, until the moves end: as the statistics report them.
    expect({ needed: again.needed, imbalance: again.imbalance }).toEqual({ needed: true, imbalance: first.imbalance });
  });

  it('counts a move being cancelled where it began: its load is proposed to move again, by another unit', async () => {
    const mover = env.mover();
    for (const job of await mover.unfinished()) await mover.requestCancel(job.id);
    const check = await port.rebalanceCheck({ by: 'rows' });

    expect(check.needed).toBe(true);
    expect(check.summary.shards.map((s) => [s.shardId, s.before])).toEqual([
      ['shard_a', 4 * SLOTS],
      ['shard_b', 0],
    ]);
    // The cancelled moves' slots are still refused until their rollback ends (409): the other five are proposed.
    expect(check.moves).toHaveLength(SLOTS / 2);
    expect(check.summary.balancedAfter).toBe(true);
  });
});

describe("the storage headroom with moves under way", () => {
  it("counts the bytes of the moves under way against their target's free storage: no plan leaves it under the headroom", async () => {
    const inspector = new ShardInspector(pools, { timeoutMs: 5000 });
    const slotMap = await env.slotMaps.current();
    const onA = (await inspector.rebalanceCensus({ slotMap })).units.filter((u) => u.kind === 'slot' && u.shardId === 'shard_a');
    // Two of the moves a first check proposed were started (nothing copied yet); asked again:
    const started = onA.slice(0, 2);
    const census = await inspector.rebalanceCensus({
      slotMap,
      busySlots: new Set(started.map((u) => Number(u.id))),
      pending: started.map((u) => ({ kind: 'slot' as const, unitId: u.id, to: 'shard_b' })),
    });
    const pendingBytes = started.reduce((n, u) => n + u.bytes, 0);
    const smallest = Math.min(...onA.map((u) => u.bytes));
    const largest = Math.max(...onA.map((u) => u.bytes));
    const headroomBytes = 1_000_000;
    // shard_b takes the two moves under way and one more unit before it is down to the headroom.
    const free = headroomBytes + pendingBytes + largest + Math.floor(smallest / 2);

    const check = await inspector.planRebalance(census, { by: 'rows', headroomBytes, freeBytes: { shard_a: 1e12, shard_b: free } });

    const proposedToB = check.moves.filter((m) => m.to === 'shard_b');
    expect(census.pending).toHaveLength(2);
    expect(proposedToB).toHaveLength(1);
    expect(free - pendingBytes - proposedToB.reduce((n, m) => n + m.bytes, 0)).toBeGreaterThanOrEqual(headroomBytes);
    expect(check.summary.balancedAfter).toBe(false);
    expect(check.summary.unresolved.join('; ')).toMatch(/less than 1000000 free bytes/);
  });
});
