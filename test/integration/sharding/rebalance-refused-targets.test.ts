/**
 * Issue #15: the rebalance check leaves out the moves the move plan refuses (functions/api/wiring.ts,
 * withoutRefusedMoves). A refusal may hold for one target only (the target holding rows of the slot
 * behind no fence row of it: its copy would delete them); the check left the unit out for every
 * target, so a shard whose units one target refuses was never offered the others: here shard_a's
 * three slots, each refused to shard_b (which holds a stray row of each), were never proposed to
 * shard_c, and the check proposed no move with shard_a nearly twice its share.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePools, rebalancePort } from './fixtures/rebalance-port.js';

let env: MoveEnv;
let pools: ShardPools;
let port: ScalingApiPort;
/** shard_a's slots with rows (4 rows each), each with a stray row on shard_b. */
let slots: number[] = [];

beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  pools = rebalancePools(env);
  const map = await env.slotMaps.current();
  const shard = (id: string): pg.Pool => {
    const pool = env.shards.get(id);
    if (!pool) throw new Error(`no ${id} in the move env`);
    return pool;
  };
  const owned = (id: string): number[] => map.assignments.flatMap((s, slot) => (s === id ? [slot] : []));
  slots = owned('shard_a').slice(0, 3);
  // shard_a 12 rows, shard_b 3 (a stray user row of each of shard_a's slots), shard_c 4 (a slot of its own).
  for (const slot of slots) {
    await seedUsers(shard('shard_a'), slot, keysInSlot(slot, 2), 1);
    await seedUsers(shard('shard_b'), slot, keysInSlot(slot, 1), 0);
  }
  const own = owned('shard_c')[0] as number;
  await seedUsers(shard('shard_c'), own, keysInSlot(own, 2), 1);
  port = rebalancePort(env, { slotMap: map, inspector: new ShardInspector(pools, { timeoutMs: 5000 }) });
}, 180_000);

afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

describe('the rebalance check and a move one target refuses', () => {
  it('proposes a unit the move plan refuses towards one shard towards another that takes it, and names the refusal', async () => {
    const check = await port.rebalanceCheck({ by: 'rows' });

    expect(check.summary.shards.map((s) => [s.shardId, s.before])).toEqual([
      ['shard_a', 12],
      ['shard_b', 3],
      ['shard_c', 4],
    ]);
    // Each of shard_a's slots is refused towards shard_b (it holds rows of the slot behind no fence row).
    expect(check.moves.filter((m) => m.from === 'shard_a' && m.to === 'shard_b')).toEqual([]);
    // Before: no move at all (every slot left out for every target once shard_b refused it).
    const offShardA = check.moves.filter((m) => m.from === 'shard_a');
    expect(offShardA.map((m) => m.to)).toEqual(['shard_c']);
    expect(slots.map(String)).toContain(offShardA[0]?.unit.id);
    expect(check.summary.shards.find((s) => s.shardId === 'shard_a')?.after).toBe(8);
    expect(check.summary.imbalanceAfter).toBeLessThan(check.summary.imbalanceBefore);
    const refusedTo = check.summary.unresolved.filter((u) => u.includes('the move plan refuses it'));
    expect(refusedTo.length).toBeGreaterThan(0);
    for (const line of refusedTo) expect(line).toMatch(/^slot \d+ on shard_a is not proposed to move to shard_b: the move plan refuses it \(POST \/shards\/moves answers 409\): cannot move slot \d+ from shard_a to shard_b: shard_b holds rows of the slot/);
  });
});
