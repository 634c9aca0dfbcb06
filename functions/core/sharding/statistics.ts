/**
 * Shard statistics: per-shard rows and live data bytes (and on-disk size) of the sharded tables,
 * users, documents and slots owned, each shard's share of the total and the imbalance (the
 * largest shard over the mean, by rows and by live data bytes; the on-disk size plays no part).
 * Pure aggregation over what the shard inspector measured.
 *
 * @example
 * ```ts
 * const stats = summarizeShardStatistics([
 *   { shardId: 'shard_001', weight: 1, slotsOwned: 2048, tables: [{ table: 'documents', rows: 900, bytes: 9e6, diskBytes: 12e6, method: 'estimate' }], users: 10, documents: 900 },
 *   { shardId: 'shard_002', weight: 1, slotsOwned: 2048, tables: [{ table: 'documents', rows: 100, bytes: 1e6, diskBytes: 9e6, method: 'estimate' }], users: 10, documents: 100 },
 * ]);
 * stats.imbalance.bytes; // 1.8 (9 MB over a mean of 5 MB)
 * ```
 */

/**
 * One sharded table on one shard. `estimate` comes from the planner's row count (pg_class) and
 * the live bytes of a sample of the table's rows, `exact` from counting and measuring every row.
 */
export interface TableStatistics {
  readonly table: string;
  readonly rows: number;
  /**
   * Live data: the bytes of the table's live rows (tuple headers and stored values, TOASTed ones
   * at their stored size), what a move takes with them and what balance is judged by. Free space,
   * dead rows and indexes are left out: a table's files do not shrink when rows are deleted
   * (a move's clean-up) or vacuumed, so its on-disk size says little about how much it holds.
   */
  readonly bytes: number;
  /** On-disk size (`pg_total_relation_size`: heap, TOAST, indexes, free space and all): what the storage holds. */
  readonly diskBytes: number;
  readonly method: 'estimate' | 'exact';
}

/** What was measured on one shard's primary. */
export interface ShardMeasurement {
  readonly shardId: string;
  /** The shard's configured weight: its fair share is weight over the total weight. */
  readonly weight: number;
  readonly slotsOwned: number;
  readonly tables: readonly TableStatistics[];
  readonly users: number;
  readonly documents: number;
}

export interface ShardStatistics extends ShardMeasurement {
  readonly rows: number;
  /** Live data bytes of the sharded tables (see {@link TableStatistics.bytes}). */
  readonly bytes: number;
  /** On-disk size of the sharded tables: for storage headroom, not for balance. */
  readonly diskBytes: number;
  /** This shard's fraction of all rows / bytes (0 when the total is 0). */
  readonly shareOfRows: number;
  readonly shareOfBytes: number;
  /** The fraction it should hold by weight. */
  readonly targetShare: number;
}

/** Largest over mean of the weight-normalised load; 1 is perfect balance. */
export interface Imbalance {
  readonly rows: number;
  readonly bytes: number;
}

export interface ShardStatisticsSummary {
  readonly shards: readonly ShardStatistics[];
  readonly totals: { readonly rows: number; readonly bytes: number; readonly diskBytes: number; readonly users: number; readonly documents: number; readonly slots: number };
  readonly imbalance: Imbalance;
}

/**
 * Max over mean of `load / weight`, so a shard of weight 2 holding twice as much as a shard of
 * weight 1 is balanced. 1 for an empty or single-shard set.
 */
export function imbalanceOf(loads: readonly { readonly load: number; readonly weight: number }[]): number {
  if (loads.length === 0) return 1;
  const normalised = loads.map((l) => l.load / l.weight);
  const mean = normalised.reduce((a, b) => a + b, 0) / normalised.length;
  if (mean === 0) return 1;
  return Math.max(...normalised) / mean;
}

/** Sums every shard's tables and works out shares and imbalance. */
export function summarizeShardStatistics(measurements: readonly ShardMeasurement[]): ShardStatisticsSummary {
  const withTotals = measurements.map((m) => ({
    ...m,
    rows: m.tables.reduce((a, t) => a + t.rows, 0),
    bytes: m.tables.reduce((a, t) => a + t.bytes, 0),
    diskBytes: m.tables.reduce((a, t) => a + t.diskBytes, 0),
  }));
  const totals = {
    rows: withTotals.reduce((a, s) => a + s.rows, 0),
    bytes: withTotals.reduce((a, s) => a + s.bytes, 0),
    diskBytes: withTotals.reduce((a, s) => a + s.diskBytes, 0),
    users: withTotals.reduce((a, s) => a + s.users, 0),
    documents: withTotals.reduce((a, s) => a + s.documents, 0),
    slots: withTotals.reduce((a, s) => a + s.slotsOwned, 0),
  };
  const totalWeight = withTotals.reduce((a, s) => a + s.weight, 0);
  const shards = withTotals.map((s) => ({
    ...s,
    shareOfRows: totals.rows > 0 ? s.rows / totals.rows : 0,
    shareOfBytes: totals.bytes > 0 ? s.bytes / totals.bytes : 0,
    targetShare: totalWeight > 0 ? s.weight / totalWeight : 0,
  }));
  return {
    shards,
    totals,
    imbalance: {
      rows: imbalanceOf(shards.map((s) => ({ load: s.rows, weight: s.weight }))),
      bytes: imbalanceOf(shards.map((s) => ({ load: s.bytes, weight: s.weight }))),
    },
  };
}

/** A unit's rows and bytes going from one shard to another (a move under way, say). */
export interface LoadShift {
  readonly from: string;
  readonly to: string;
  readonly rows: number;
  readonly bytes: number;
}

/**
 * `summary` as it will be once `shifts` are done: each one's rows and bytes taken off `from` and
 * added to `to` (shards not in the summary are left alone), shares and imbalance worked out again.
 * Totals, users, documents and on-disk sizes stay as measured.
 */
export function withUnitsMoved(summary: ShardStatisticsSummary, shifts: readonly LoadShift[]): ShardStatisticsSummary {
  if (shifts.length === 0) return summary;
  const delta = new Map<string, { rows: number; bytes: number }>();
  const add = (shardId: string, rows: number, bytes: number): void => {
    const d = delta.get(shardId) ?? { rows: 0, bytes: 0 };
    delta.set(shardId, { rows: d.rows + rows, bytes: d.bytes + bytes });
  };
  const known = new Set(summary.shards.map((s) => s.shardId));
  for (const m of shifts) {
    if (!known.has(m.from) || !known.has(m.to)) continue;
    add(m.from, -m.rows, -m.bytes);
    add(m.to, m.rows, m.bytes);
  }
  const shards = summary.shards.map((s) => {
    const d = delta.get(s.shardId);
    if (d === undefined) return s;
    const rows = s.rows + d.rows;
    const bytes = s.bytes + d.bytes;
    return { ...s, rows, bytes, shareOfRows: summary.totals.rows > 0 ? rows / summary.totals.rows : 0, shareOfBytes: summary.totals.bytes > 0 ? bytes / summary.totals.bytes : 0 };
  });
  return {
    ...summary,
    shards,
    imbalance: {
      rows: imbalanceOf(shards.map((s) => ({ load: s.rows, weight: s.weight }))),
      bytes: imbalanceOf(shards.map((s) => ({ load: s.bytes, weight: s.weight }))),
    },
  };
}

/** Slots owned per shard, from a slot map's assignments (shards owning none get 0). */
export function slotsOwnedBy(assignments: readonly string[], shardIds: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>(shardIds.map((id) => [id, 0]));
  for (const owner of assignments) counts.set(owner, (counts.get(owner) ?? 0) + 1);
  return counts;
}

/** A shard the slot map gives slots to that is not in the configured shard list. */
export interface UnconfiguredOwner {
  readonly shardId: string;
  /** How many slots the map gives it. */
  readonly slotsOwned: number;
  /** Those slots as inclusive `[first, last]` runs, in slot order. */
  readonly slotRanges: readonly (readonly [number, number])[];
}

/**
 * The owners in a slot map's `assignments` that are not among `shardIds` (a map published for
 * another configuration, or a shard removed from the configuration before its slots were moved
 * off), each with the slots it owns. Nothing can measure, route to or move from such a shard:
 * every figure computed over the configured shards alone leaves its slots out.
 */
export function unconfiguredOwners(assignments: readonly string[], shardIds: readonly string[]): UnconfiguredOwner[] {
  const known = new Set(shardIds);
  const byOwner = new Map<string, [number, number][]>();
  assignments.forEach((owner, slot) => {
    if (known.has(owner)) return;
    const runs = byOwner.get(owner) ?? [];
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] === slot - 1) last[1] = slot;
    else runs.push([slot, slot]);
    byOwner.set(owner, runs);
  });
  return [...byOwner.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([shardId, runs]) => ({ shardId, slotsOwned: runs.reduce((n, [a, b]) => n + b - a + 1, 0), slotRanges: runs }));
}

/** `shard_x (12 slots: 0-5, 9, 11-15)`, at most `limit` runs named, for messages. */
export function describeUnconfigured(owners: readonly UnconfiguredOwner[], limit = 10): string {
  return owners
    .map((o) => {
      const runs = o.slotRanges.slice(0, limit).map(([a, b]) => (a === b ? String(a) : `${a}-${b}`));
      const more = o.slotRanges.length > limit ? ` and ${o.slotRanges.length - limit} more runs` : '';
      return `${o.shardId} (${o.slotsOwned} slot${o.slotsOwned === 1 ? '' : 's'}: ${runs.join(', ')}${more})`;
    })
    .join('; ');
}
