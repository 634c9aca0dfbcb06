import fc from 'fast-check';
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

  it('reaches a fixed point: once its moves are done it needs nothing more when it said they balance, and it never makes balance worse', () => {
    const ids = ['s0', 's1', 's2', 's3'];
    const arb = fc.record({
      // Units (slots and directory keys) of any size, empty ones included, and data that cannot move.
      units: fc.array(fc.record({ shard: fc.integer({ min: 0, max: 3 }), rows: fc.integer({ min: 0, max: 50 }), bytes: fc.integer({ min: 0, max: 5000 }), directory: fc.boolean() }), { maxLength: 40 }),
      unmovable: fc.array(fc.integer({ min: 0, max: 3000 }), { minLength: 4, maxLength: 4 }),
      threshold: fc.double({ min: 0.01, max: 0.5, noNaN: true }),
      by: fc.constantFrom('bytes' as const, 'rows' as const),
      maxMoves: fc.integer({ min: 1, max: 20 }),
    });
    const checkOf = (units: MovableUnit[], unmovable: number[], options: { threshold: number; by: 'bytes' | 'rows'; maxMoves: number }) =>
      checkRebalance(
        summarizeShardStatistics(
          ids.map((id, i) => {
            const own = units.filter((u) => u.shardId === id);
            return measured(id, own.reduce((a, u) => a + u.rows, 0), own.reduce((a, u) => a + u.bytes, unmovable[i] ?? 0));
          }),
        ),
        units,
        options,
      );
    fc.assert(
      fc.property(arb, ({ units: raw, unmovable, ...options }) => {
        let units: MovableUnit[] = raw.map((u, i) => ({ kind: u.directory ? 'directory' : 'slot', id: String(i), shardId: ids[u.shard] as string, rows: u.rows, bytes: u.bytes }));
        const first = checkOf(units, unmovable, options);

        expect(first.moves.length).toBeLessThanOrEqual(options.maxMoves);
        expect(first.summary.imbalanceAfter).toBeLessThanOrEqual(first.summary.imbalanceBefore);
        const seen = new Set<string>();
        for (const m of first.moves) {
          const unit = units.find((u) => u.kind === m.unit.kind && u.id === m.unit.id);
          expect(unit?.shardId).toBe(m.from);
          expect(m.to).not.toBe(m.from);
          expect(seen.has(`${m.unit.kind}:${m.unit.id}`)).toBe(false);
          seen.add(`${m.unit.kind}:${m.unit.id}`);
          units = units.map((u) => (u === unit ? { ...u, shardId: m.to } : u));
        }
        const second = checkOf(units, unmovable, options);

        expect(second.imbalance).toBeCloseTo(first.summary.imbalanceAfter, 9);
        expect(second.needed).toBe(!first.summary.balancedAfter);
        if (first.summary.balancedAfter) expect(second.moves).toEqual([]);
      }),
      { numRuns: 500 },
    );
  });
});
