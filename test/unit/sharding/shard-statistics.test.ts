import { describe, expect, it } from 'vitest';
import { describeUnconfigured, imbalanceOf, slotsOwnedBy, summarizeShardStatistics, unconfiguredOwners, withUnitsMoved, type ShardMeasurement } from '../../../functions/core/sharding/statistics.js';

const shard = (shardId: string, rows: number, bytes: number, weight = 1): ShardMeasurement => ({
  shardId,
  weight,
  slotsOwned: 0,
  users: rows / 10,
  documents: rows - rows / 10,
  tables: [
    { table: 'users', rows: rows / 10, bytes: bytes / 10, diskBytes: bytes / 5, method: 'estimate' },
    { table: 'documents', rows: rows - rows / 10, bytes: bytes - bytes / 10, diskBytes: 2 * bytes - bytes / 5, method: 'estimate' },
  ],
});

describe('shard statistics', () => {
  it('sums the tables of each shard and the totals', () => {
    const s = summarizeShardStatistics([shard('a', 900, 9000), shard('b', 100, 1000)]);

    expect(s.shards.map((x) => [x.rows, x.bytes])).toEqual([
      [900, 9000],
      [100, 1000],
    ]);
    expect(s.totals).toEqual({ rows: 1000, bytes: 10_000, diskBytes: 20_000, users: 100, documents: 900, slots: 0 });
  });

  it('gives each shard its share of the total and its fair share by weight', () => {
    const s = summarizeShardStatistics([shard('a', 900, 9000), shard('b', 100, 1000, 3)]);

    expect(s.shards.map((x) => [x.shareOfRows, x.shareOfBytes, x.targetShare])).toEqual([
      [0.9, 0.9, 0.25],
      [0.1, 0.1, 0.75],
    ]);
  });

  it('measures imbalance as the largest shard over the mean', () => {
    expect(summarizeShardStatistics([shard('a', 900, 9000), shard('b', 100, 1000)]).imbalance).toEqual({ rows: 1.8, bytes: 1.8 });
  });

  it('counts a shard holding its weighted share as balanced', () => {
    expect(imbalanceOf([{ load: 200, weight: 2 }, { load: 100, weight: 1 }])).toBe(1);
  });

  it('calls an empty or absent data set balanced rather than dividing by zero', () => {
    expect(summarizeShardStatistics([shard('a', 0, 0), shard('b', 0, 0)]).imbalance).toEqual({ rows: 1, bytes: 1 });
    expect(summarizeShardStatistics([]).imbalance).toEqual({ rows: 1, bytes: 1 });
  });

  it('counts a unit on its target once moved: loads, shares and imbalance, the totals as measured', () => {
    const measured = summarizeShardStatistics([shard('a', 900, 9000), shard('b', 100, 1000)]);
    const moved = withUnitsMoved(measured, [{ from: 'a', to: 'b', rows: 400, bytes: 4000 }]);

    expect(moved.shards.map((x) => [x.shardId, x.rows, x.bytes, x.shareOfRows])).toEqual([
      ['a', 500, 5000, 0.5],
      ['b', 500, 5000, 0.5],
    ]);
    expect(moved.imbalance).toEqual({ rows: 1, bytes: 1 });
    expect(moved.totals).toEqual(measured.totals);
  });

  it('leaves the loads alone for a move to or from a shard it does not list', () => {
    const measured = summarizeShardStatistics([shard('a', 900, 9000), shard('b', 100, 1000)]);

    expect(withUnitsMoved(measured, [{ from: 'a', to: 'gone', rows: 400, bytes: 4000 }]).shards).toEqual(measured.shards);
  });

  it('counts the slots each shard owns, including shards owning none', () => {
    expect(slotsOwnedBy(['a', 'b', 'a', 'a'], ['a', 'b', 'c'])).toEqual(
      new Map([
        ['a', 3],
        ['b', 1],
        ['c', 0],
      ]),
    );
  });
});

describe('unconfiguredOwners', () => {
  it('names each owner of the map that is not configured, with its slots as runs, and nothing for a map of configured shards', () => {
    const assignments = ['a', 'x', 'x', 'b', 'x', 'w', 'a', 'x'];

    const owners = unconfiguredOwners(assignments, ['a', 'b']);

    expect(owners).toEqual([
      { shardId: 'w', slotsOwned: 1, slotRanges: [[5, 5]] },
      { shardId: 'x', slotsOwned: 4, slotRanges: [[1, 2], [4, 4], [7, 7]] },
    ]);
    expect(describeUnconfigured(owners)).toBe('w (1 slot: 5); x (4 slots: 1-2, 4, 7)');
    expect(unconfiguredOwners(assignments, ['a', 'b', 'w', 'x'])).toEqual([]);
  });
});
