/**
 * The rebalance check: is the data spread within the threshold, and if not, which moves (slot
 * or directory key, from, to, rows, bytes) bring it back while moving the least data. Composes
 * the measured statistics with the planner (`rebalance.ts`). Pure.
 *
 * @example
 * ```ts
 * const stats = summarizeShardStatistics(measurements);
 * const check = checkRebalance(stats, units, { threshold: 0.1, by: 'bytes', headroomBytes: 10e9, freeBytes: { shard_002: 50e9 } });
 * if (check.needed) for (const m of check.moves) console.log(`${m.unit.kind} ${m.unit.id}: ${m.from} -> ${m.to}`);
 * ```
 */
import { RebalancePlanError } from './errors.js';
import { planRebalance, type MovableUnit, type PlannedMove, type RebalanceSummary } from './rebalance.js';
import type { ShardStatisticsSummary } from './statistics.js';

export interface RebalanceCheckOptions {
  /** Allowed deviation from the mean, as a fraction. Default 0.10. */
  readonly threshold?: number;
  /** Balance bytes (default) or rows. */
  readonly by?: 'bytes' | 'rows';
  /** Free storage a target must keep after a move. Default 0. */
  readonly headroomBytes?: number;
  /** Upper bound on the moves proposed. */
  readonly maxMoves?: number;
  /** The most rows in any one table of a unit a move takes (the mover's `maxUnitRows`); larger units are not proposed. Default `DEFAULT_MAX_UNIT_ROWS`. */
  readonly maxUnitRows?: number;
}

export interface RebalanceCheckResult {
  readonly by: 'bytes' | 'rows';
  readonly threshold: number;
  /** Max over mean of the chosen metric now. */
  readonly imbalance: number;
  /** Some shard lies outside `mean * (1 ± threshold)`. */
  readonly needed: boolean;
  readonly moves: readonly PlannedMove[];
  readonly summary: RebalanceSummary;
}

/**
 * Plans the moves for `statistics` with `units` as the movable pieces. Throws
 * {@link RebalancePlanError} when shard weights differ: the planner balances towards equal
 * loads, which would be wrong for shards meant to hold different shares.
 */
export function checkRebalance(
  statistics: ShardStatisticsSummary,
  units: readonly MovableUnit[],
  options: RebalanceCheckOptions & { readonly freeBytes?: Readonly<Record<string, number>> } = {},
): RebalanceCheckResult {
  const weights = new Set(statistics.shards.map((s) => s.weight));
  if (weights.size > 1) {
    throw new RebalancePlanError(`the rebalance check balances shards towards equal loads, but their weights differ (${statistics.shards.map((s) => `${s.shardId}=${s.weight}`).join(', ')})`);
  }
  const plan = planRebalance({
    shards: statistics.shards.map((s) => {
      const free = options.freeBytes?.[s.shardId];
      return { shardId: s.shardId, bytes: s.bytes, rows: s.rows, ...(free === undefined ? {} : { freeBytes: free }) };
    }),
    units: [...units],
    ...(options.threshold === undefined ? {} : { threshold: options.threshold }),
    ...(options.by === undefined ? {} : { by: options.by }),
    ...(options.headroomBytes === undefined ? {} : { headroomBytes: options.headroomBytes }),
    ...(options.maxMoves === undefined ? {} : { maxMoves: options.maxMoves }),
    ...(options.maxUnitRows === undefined ? {} : { maxUnitRows: options.maxUnitRows }),
  });
  return {
    by: plan.summary.by,
    threshold: plan.summary.threshold,
    imbalance: plan.summary.imbalanceBefore,
    needed: !plan.summary.balancedBefore,
    moves: plan.moves,
    summary: plan.summary,
  };
}
