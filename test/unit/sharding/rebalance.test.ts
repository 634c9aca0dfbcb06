import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RebalancePlanError } from '../../../functions/core/sharding/errors.js';
import { DEFAULT_MAX_UNIT_ROWS } from '../../../functions/core/sharding/move-plan.js';
import { planRebalance, summaryWithout, type MovableUnit, type ShardLoad } from '../../../functions/core/sharding/rebalance.js';

const slot = (id: number, shardId: string, bytes: number, rows = bytes / 100): MovableUnit => ({ kind: 'slot', id: String(id), shardId, rows, bytes });
const totals = (units: MovableUnit[], ids: string[]): ShardLoad[] =>
  ids.map((shardId) => ({ shardId, bytes: units.filter((u) => u.shardId === shardId).reduce((a, u) => a + u.bytes, 0), rows: units.filter((u) => u.shardId === shardId).reduce((a, u) => a + u.rows, 0) }));

describe('rebalance planner', () => {
  it('proposes nothing when every shard is within the threshold', () => {
    const units = [slot(0, 'a', 1000), slot(1, 'b', 1050), slot(2, 'c', 950)];
    const plan = planRebalance({ shards: totals(units, ['a', 'b', 'c']), units });
    expect(plan.moves).toEqual([]);
    expect(plan.summary).toMatchObject({ balancedBefore: true, balancedAfter: true, movedBytes: 0 });
  });

  it('moves the smallest unit that brings the shard within the threshold', () => {
    const units = [slot(1, 'a', 500), slot(2, 'a', 400), slot(3, 'a', 20), slot(4, 'b', 100)];
    const plan = planRebalance({ shards: totals(units, ['a', 'b']), units });
    expect(plan.moves).toEqual([{ unit: { kind: 'slot', id: '2' }, from: 'a', to: 'b', rows: 4, bytes: 400 }]);
    expect(plan.summary).toMatchObject({ imbalanceBefore: 920 / 510, imbalanceAfter: 520 / 510, balancedAfter: true, movedBytes: 400 });
  });

  it('fills an empty new shard from the heaviest shards', () => {
    const units = Array.from({ length: 400 }, (_, i) => slot(i, ['a', 'b', 'c', 'd'][i % 4] as string, 100));
    const plan = planRebalance({ shards: totals(units, ['a', 'b', 'c', 'd', 'e']), units });
    expect(plan.summary.balancedAfter).toBe(true);
    expect(plan.moves.every((m) => m.to === 'e')).toBe(true);
    // The optimum moves a fifth of the data (8000 bytes); the threshold lets it stop at 10% under.
    expect(plan.summary.movedBytes).toBeGreaterThanOrEqual(7200);
    expect(plan.summary.movedBytes).toBeLessThanOrEqual(8000);
  });

  it("summaryWithout gives a plan's figures as if it had not made the moves left out: all of them, the figures before; some, the plan's of the rest", () => {
    const units = Array.from({ length: 40 }, (_, i) => slot(i, ['a', 'b'][i % 2] as string, 100));
    const plan = planRebalance({ shards: totals(units, ['a', 'b', 'c']), units });
    expect(plan.moves.length).toBeGreaterThan(2);
    expect(summaryWithout(plan.summary, [])).toBe(plan.summary);
    const none = summaryWithout(plan.summary, plan.moves);
    expect(none).toMatchObject({ movedRows: 0, movedBytes: 0, balancedAfter: plan.summary.balancedBefore, imbalanceAfter: plan.summary.imbalanceBefore });
    expect(none.shards.map((s) => s.after)).toEqual(none.shards.map((s) => s.before));
    // The first two moves kept: the figures of a plan that made those two alone.
    const kept = plan.moves.slice(0, 2);
    const some = summaryWithout(plan.summary, plan.moves.slice(2));
    const keptUnits = units.map((u) => (kept.some((m) => m.unit.id === u.id) ? { ...u, shardId: 'c' } : u));
    const alone = planRebalance({ shards: totals(keptUnits, ['a', 'b', 'c']), units: [] }).summary;
    expect(some.shards.map((s) => s.after)).toEqual(alone.shards.map((s) => s.before));
    expect(some).toMatchObject({ movedBytes: 200, movedRows: 2, balancedAfter: alone.balancedBefore, imbalanceAfter: alone.imbalanceBefore });
  });

  it('stops at maxMoves and says the plan is incomplete', () => {
    const units = Array.from({ length: 400 }, (_, i) => slot(i, ['a', 'b', 'c', 'd'][i % 4] as string, 100));
    const plan = planRebalance({ shards: totals(units, ['a', 'b', 'c', 'd', 'e']), units, maxMoves: 3 });
    expect(plan.moves).toHaveLength(3);
    expect(plan.summary.balancedAfter).toBe(false);
    expect(plan.summary.unresolved).toEqual(['planning stopped at maxMoves (3) before every shard was within the threshold']);
  });

  it('never proposes a move that does not improve balance', () => {
    const units = [slot(1, 'a', 1000)];
    const plan = planRebalance({ shards: totals(units, ['a', 'b']), units });
    expect(plan.moves).toEqual([]);
    expect(plan.summary.unresolved).toEqual([
      'a stays 100.0% above its target: none of its movable units fits on a lighter shard without overshooting',
      'b stays 100.0% below its target: no heavier shard has a movable unit that fits here without overshooting',
    ]);
  });

  it('never leaves a target with less free storage than the headroom', () => {
    const units = [slot(1, 'a', 400), slot(2, 'a', 500)];
    const shards: ShardLoad[] = [
      { shardId: 'a', bytes: 900, rows: 9, freeBytes: 10_000 },
      { shardId: 'b', bytes: 100, rows: 1, freeBytes: 300 },
      { shardId: 'c', bytes: 500, rows: 5, freeBytes: 1_000 },
    ];
    const plan = planRebalance({ shards, units, headroomBytes: 200 });
    expect(plan.moves.map((m) => m.to)).not.toContain('b');
    expect(plan.moves).toEqual([]);
    expect(plan.summary.unresolved).toContain('a stays 80.0% above its target: every move that would help leaves its target with less than 200 free bytes');
  });

  it("gives a move's source no free storage back: a later move onto it is held to its free storage as measured, and goes elsewhere", () => {
    // a gives its 200-byte slot to b, ending under its target; c's 50-byte slot would then help it.
    // a's free storage was measured with headroom + 30 bytes to spare: the 200 bytes leaving it are
    // freed only by the clean-up's DELETE, for reuse by the same tables once vacuumed; RDS's
    // FreeStorageSpace does not grow, so 50 bytes more would leave it under the headroom.
    const units = [slot(1, 'a', 50), slot(2, 'a', 200), slot(3, 'c', 50), slot(4, 'c', 300)];
    const shards: ShardLoad[] = totals(units, ['a', 'b', 'c']).map((s) => ({ ...s, freeBytes: s.shardId === 'a' ? 1_030 : 1e9 }));
    const roomy = planRebalance({ shards: totals(units, ['a', 'b', 'c']), units, headroomBytes: 1_000 });
    const plan = planRebalance({ shards, units, headroomBytes: 1_000 });
    expect(roomy.moves.map((m) => [m.unit.id, m.from, m.to])).toEqual([['2', 'a', 'b'], ['3', 'c', 'a']]);
    // Before: ['3', 'c', 'a'] too, planned against 1,230 free bytes on a (its 1,030 and the 200 leaving it).
    expect(plan.moves.map((m) => [m.unit.id, m.from, m.to])).toEqual([['2', 'a', 'b'], ['3', 'c', 'b']]);
  });

  it('never proposes a unit with more rows in one table than maxUnitRows, moving the ones that fit instead', () => {
    // Slot 1 would resolve a alone (the best fit), but has 6 rows in one table against a limit of 5.
    const units: MovableUnit[] = [
      { kind: 'slot', id: '1', shardId: 'a', rows: 8, bytes: 450, maxTableRows: 6 },
      { kind: 'slot', id: '2', shardId: 'a', rows: 4, bytes: 250, maxTableRows: 4 },
      { kind: 'slot', id: '3', shardId: 'a', rows: 4, bytes: 200, maxTableRows: 3 },
      { kind: 'slot', id: '4', shardId: 'a', rows: 2, bytes: 100, maxTableRows: 1 },
    ];
    const atItsLimit = planRebalance({ shards: totals(units, ['a', 'b']), units, maxUnitRows: 6 });
    expect(atItsLimit.moves.map((m) => m.unit.id)).toEqual(['1']);

    const plan = planRebalance({ shards: totals(units, ['a', 'b']), units, maxUnitRows: 5 });
    expect(plan.moves.map((m) => m.unit.id)).toEqual(['2', '3']);
    expect(plan.summary.balancedAfter).toBe(true);
  });

  it('says which units that would help are larger than one move takes when nothing else can', () => {
    const units: MovableUnit[] = [
      { kind: 'slot', id: '1', shardId: 'a', rows: 30, bytes: 500, maxTableRows: 20 },
      { kind: 'directory', id: 'k', shardId: 'a', rows: 25, bytes: 400 },
    ];
    const plan = planRebalance({ shards: totals(units, ['a', 'b']), units, maxUnitRows: 10 });
    expect(plan.moves).toEqual([]);
    expect(plan.summary.unresolved).toContain(
      "a stays 100.0% above its target: the units that would help are larger than one move takes (at most 10 rows in any one table, the mover's maxUnitRows): slot 1 on a (20 rows in one table), directory k on a (25 rows in one table)",
    );
  });

  it('applies the mover\'s default limit (DEFAULT_MAX_UNIT_ROWS) when none is given', () => {
    const units: MovableUnit[] = [
      { kind: 'slot', id: '1', shardId: 'a', rows: DEFAULT_MAX_UNIT_ROWS + 2, bytes: 900, maxTableRows: DEFAULT_MAX_UNIT_ROWS + 1 },
      { kind: 'slot', id: '2', shardId: 'a', rows: 20, bytes: 300, maxTableRows: 10 },
    ];
    const plan = planRebalance({ shards: totals(units, ['a', 'b']), units });
    expect(plan.moves.map((m) => m.unit.id)).toEqual(['2']);
    expect(() => planRebalance({ shards: totals(units, ['a', 'b']), units, maxUnitRows: 0 })).toThrow(/maxUnitRows/);
  });

  it('balances by rows when asked, even when the bytes are balanced', () => {
    const units: MovableUnit[] = [
      { kind: 'slot', id: '1', shardId: 'a', rows: 100, bytes: 1000 },
      { kind: 'slot', id: '2', shardId: 'a', rows: 100, bytes: 10 },
      { kind: 'slot', id: '3', shardId: 'b', rows: 10, bytes: 1010 },
    ];
    const shards = totals(units, ['a', 'b']);
    expect(planRebalance({ shards, units, by: 'bytes' }).moves).toEqual([]);
    const byRows = planRebalance({ shards, units, by: 'rows' });
    expect(byRows.moves).toHaveLength(1);
    expect(byRows.summary).toMatchObject({ by: 'rows', balancedAfter: true, movedRows: 100 });
  });

  it('moves directory keys as well as slots', () => {
    const units: MovableUnit[] = [
      { kind: 'directory', id: 'tenant-hot', shardId: 'a', rows: 9, bytes: 900 },
      slot(1, 'a', 2100),
      slot(2, 'b', 1000),
      slot(3, 'c', 1000),
    ];
    const plan = planRebalance({ shards: totals(units, ['a', 'b', 'c']), units });
    expect(plan.moves[0]).toEqual({ unit: { kind: 'directory', id: 'tenant-hot' }, from: 'a', to: 'b', rows: 9, bytes: 900 });
  });

  it('balances weighted shards towards their weighted shares', () => {
    // b weighs twice a: 1000 bytes on a and 2000 on b is perfect balance, 1500/1500 is not.
    const units = [slot(1, 'a', 500), slot(2, 'a', 1000), slot(3, 'b', 1500)];
    const shards = totals(units, ['a', 'b']).map((s) => ({ ...s, weight: s.shardId === 'b' ? 2 : 1 }));
    const plan = planRebalance({ shards, units });
    expect(plan.moves).toEqual([{ unit: { kind: 'slot', id: '1' }, from: 'a', to: 'b', rows: 5, bytes: 500 }]);
    expect(plan.summary.shards).toEqual([
      { shardId: 'a', target: 1000, before: 1500, after: 1000 },
      { shardId: 'b', target: 2000, before: 1500, after: 2000 },
    ]);
    expect(plan.summary).toMatchObject({ imbalanceBefore: 1.5, imbalanceAfter: 1 });
  });

  it('lifts a shard that is below the threshold', () => {
    const units = [slot(1, 'a', 600), slot(2, 'a', 400), slot(3, 'b', 600), slot(4, 'b', 400), slot(5, 'c', 500)];
    const plan = planRebalance({ shards: totals(units, ['a', 'b', 'c']), units, threshold: 0.05 });
    expect(plan.summary.balancedBefore).toBe(false);
    expect(plan.moves).toEqual([expect.objectContaining({ to: 'c', bytes: 400 })]);
  });

  it('only ever proposes moves that lower the variance, leaves no one worse off than the worst before and moves each unit once', () => {
    const arb = fc.record({
      units: fc.array(fc.record({ shard: fc.integer({ min: 0, max: 4 }), bytes: fc.integer({ min: 0, max: 1000 }) }), { maxLength: 60 }),
      threshold: fc.double({ min: 0.01, max: 0.5, noNaN: true }),
    });
    fc.assert(
      fc.property(arb, ({ units: raw, threshold }) => {
        const ids = ['s0', 's1', 's2', 's3', 's4'];
        const units = raw.map((u, i) => slot(i, ids[u.shard] as string, u.bytes));
        const shards = totals(units, ids);
        const plan = planRebalance({ shards, units, threshold });
        const load = new Map(shards.map((s) => [s.shardId, s.bytes]));
        const seen = new Set<string>();
        for (const m of plan.moves) {
          const from = load.get(m.from) as number;
          const to = load.get(m.to) as number;
          expect(m.bytes).toBeLessThan(from - to);
          expect(seen.has(m.unit.id)).toBe(false);
          seen.add(m.unit.id);
          load.set(m.from, from - m.bytes);
          load.set(m.to, to + m.bytes);
        }
        expect(plan.summary.imbalanceAfter).toBeLessThanOrEqual(plan.summary.imbalanceBefore);
        expect(plan.summary.shards.map((s) => s.after)).toEqual(ids.map((id) => load.get(id)));
      }),
      { numRuns: 200 },
    );
  });

  it('refuses units on unknown shards, duplicates and thresholds outside (0, 1)', () => {
    const shards: ShardLoad[] = [{ shardId: 'a', bytes: 1, rows: 1 }];
    expect(() => planRebalance({ shards, units: [slot(1, 'zz', 1)] })).toThrow(RebalancePlanError);
    expect(() => planRebalance({ shards, units: [slot(1, 'a', 1), slot(1, 'a', 1)] })).toThrow(/listed twice/);
    expect(() => planRebalance({ shards, units: [], threshold: 0 })).toThrow(/threshold/);
    expect(() => planRebalance({ shards: [...shards, ...shards], units: [] })).toThrow(/listed twice/);
  });
});

describe('rebalance planner: targets a unit is refused towards', () => {
  it('never proposes a unit towards a shard in its refusedTargets, and proposes it towards another', () => {
    const shards: ShardLoad[] = [
      { shardId: 'a', bytes: 12, rows: 12 },
      { shardId: 'b', bytes: 3, rows: 3 },
      { shardId: 'c', bytes: 4, rows: 4 },
    ];
    const units: MovableUnit[] = [1, 2, 3].map((id) => ({ kind: 'slot', id: String(id), shardId: 'a', rows: 4, bytes: 4 }));
    // Unrefused, the lightest shard b is taken first.
    expect(planRebalance({ shards, units, by: 'rows' }).moves.map((m) => m.to)).toContain('b');
    const plan = planRebalance({ shards, units: units.map((u) => ({ ...u, refusedTargets: ['b'] })), by: 'rows' });
    expect(plan.moves.filter((m) => m.to === 'b')).toEqual([]);
    expect(plan.moves.map((m) => [m.from, m.to])).toEqual([['a', 'c']]);
  });
});
