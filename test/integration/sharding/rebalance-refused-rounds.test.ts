/**
 * Issue #15: the rebalance check puts its moves to the move plan's checks in at most
 * REFUSAL_ROUNDS rounds (functions/api/wiring.ts, withoutRefusedMoves), and since a refusal is
 * per (unit, target) a unit refused towards one shard is offered to the others. A unit the plan
 * refuses at its source (its fence row there says moved: every target refuses it) was asked
 * towards one target a round: on three shards each such unit took two rounds, and three of them
 * spent every round, so the check proposed nothing where a unit the plan takes was next
 * (before per-target refusals, the same check proposed that unit in its fourth round).
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
/** shard_a's slots whose fence row there says moved (2 users each), though the map gives them to shard_a. */
let refused: number[] = [];
/** shard_a's slot the plan takes (3 users). */
let movable = -1;

beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
  pools = rebalancePools(env);
  const map = await env.slotMaps.current();
  const source = env.shards.get('shard_a') as pg.Pool;
  const owned = map.assignments.flatMap((s, slot) => (s === 'shard_a' ? [slot] : []));
  refused = owned.slice(0, 3);
  movable = owned[3] as number;
  // Smaller than the movable slot, so the plan prefers each of them while it is offered.
  for (const slot of refused) {
    await seedUsers(source, slot, keysInSlot(slot, 2), 0);
    // A hand change's leftover row: the move plan refuses the slot from shard_a towards any shard.
    await source.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', $1, 'moved', 'shard_b', 1)`, [String(slot)]);
  }
  await seedUsers(source, movable, keysInSlot(movable, 3), 0);
  port = rebalancePort(env, { slotMap: map, inspector: new ShardInspector(pools, { timeoutMs: 5000 }) });
}, 180_000);

afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

describe('the rebalance check and units the move plan refuses at their source, on three shards', () => {
  it('asks a unit refused towards one shard towards another in the same round: units refused at their source do not spend the rounds, and the unit the plan takes is proposed', async () => {
    const check = await port.rebalanceCheck({ by: 'rows' });

    expect(check.summary.shards.map((s) => [s.shardId, s.before])).toEqual([
      ['shard_a', 9],
      ['shard_b', 0],
      ['shard_c', 0],
    ]);
    // Before: no move, and "1 more move was left out unchecked: ... in at most 5 rounds".
    expect(check.summary.unresolved.filter((u) => u.includes('left out unchecked'))).toEqual([]);
    expect(check.moves.map((m) => [m.unit.id, m.from])).toEqual([[String(movable), 'shard_a']]);
    // Each refused slot named towards two shards (then left out for every target), with the plan's words.
    for (const slot of refused) {
      const lines = check.summary.unresolved.filter((u) => u.startsWith(`slot ${slot} on shard_a is not proposed to move to `));
      expect(lines.map((u) => u.slice(`slot ${slot} on shard_a is not proposed to move to `.length, `slot ${slot} on shard_a is not proposed to move to shard_x`.length)).sort()).toEqual(['shard_b', 'shard_c']);
      for (const line of lines) expect(line).toMatch(/: the move plan refuses it \(POST \/shards\/moves answers 409\): /);
    }
  });
});
