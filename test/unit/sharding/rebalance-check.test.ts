import { describe, expect, it } from 'vitest';
import { RebalancePlanError } from '../../../functions/core/sharding/errors.js';
import { checkRebalance } from '../../../functions/core/sharding/rebalance-check.js';
import type { MovableUnit } from '../../../functions/core/sharding/rebalance.js';
import { summarizeShardStatistics, type ShardMeasurement } from '../../../functions/core/sharding/statistics.js';

const measured = (shardId: string, rows: number, bytes: number, weight = 1): ShardMeasurement => ({
  shardId,
  weight,
  slotsOwned: 2,
  users: 0,
  documents: rows,
  tables: [{ table: 'documents', rows, bytes, diskBytes: bytes, method: 'exact' }],
});
const slot = (id: number, shardId: string, rows: number, bytes: number): MovableUnit => ({ kind: 'slot', id: String(id), shardId, rows, bytes });

const stats = summarizeShardStatistics([measured('a', 900, 9000), measured('b', 100, 1000)]);
const units = [slot(1, 'a', 400, 4000), slot(2, 'a', 500, 5000), slot(3, 'b', 100, 1000)];

describe('rebalance check', () => {
  it('proposes the move that brings both shards within 10% of the mean by bytes by default', () => {
    const check = checkRebalance(stats, units);

    expect(check).toMatchObject({ by: 'bytes', threshold: 0.1, imbalance: 1.8, needed: true });
    expect(check.moves).toEqual([{ unit: { kind: 'slot', id: '1' }, from: 'a', to: 'b', rows: 400, bytes: 4000 }]);
    expect(check.summary.balancedAfter).toBe(true);
  });

  it('needs nothing when every shard is within the threshold', () => {
    const check = checkRebalance(summarizeShardStatistics([measured('a', 520, 5200), measured('b', 480, 4800)]), [], { threshold: 0.1 });

    expect(check.needed).toBe(false);
    expect(check.moves).toEqual([]);
  });

  it('proposes no move that would leave the target with less free storage than the headroom', () => {
    const check = checkRebalance(stats, units, { headroomBytes: 1000, freeBytes: { b: 4500 } });

    expect(check.moves).toEqual([]);
    expect(check.summary.unresolved).toEqual(expect.arrayContaining([expect.stringMatching(/less than 1000 free bytes/)]));
  });

  it('balances rows instead of bytes when asked', () => {
    const check = checkRebalance(summarizeShardStatistics([measured('a', 900, 1000), measured('b', 100, 1000)]), [slot(1, 'a', 400, 500), slot(2, 'a', 500, 500)], { by: 'rows' });

    expect(check.by).toBe('rows');
    expect(check.moves.map((m) => m.unit.id)).toEqual(['1']);
  });

  it('refuses shards of different weights instead of balancing them to equal loads', () => {
    const weighted = summarizeShardStatistics([measured('a', 900, 9000, 2), measured('b', 100, 1000, 1)]);

    expect(() => checkRebalance(weighted, units)).toThrow(RebalancePlanError);
  });
});
