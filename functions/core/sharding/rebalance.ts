/**
 * The rebalance planner, in the spirit of Citus's rebalance plan: given each shard's size and
 * the units that can move (hash slots and directory keys, with their rows and bytes), it
 * proposes the moves that bring every shard within `threshold` of its target while moving as
 * little data as it can. A shard's target is its weighted share of the total (`total * weight /
 * sum of weights`; the mean when weights are equal, the default). Pure: the caller supplies the
 * statistics and carries out the moves.
 *
 * The algorithm is greedy (a bin-balancing problem is NP-hard in general, and the slot
 * granularity, 1/4096 of the data on average, makes greedy close to the optimum in practice):
 *
 * 1. `lo = target * (1 - threshold)`, `hi = target * (1 + threshold)` per shard; a shard's
 *    excess is how far its load lies outside `[lo, hi]`.
 * 2. Take the shard with the largest excess (ties: listed order). If it is over `hi`,
 *    candidates are its units towards any shard less loaded relative to its weight; if it is
 *    under `lo`, units of any relatively heavier shard towards it.
 * 3. A candidate is admissible only if it strictly lowers the total excess, strictly lowers
 *    the weighted variance `sum(load^2 / weight)` (for equal weights: `size < load(from) -
 *    load(to)`; so no move ever makes balance worse and the plan cannot cycle), leaves the
 *    receiving shard at least `headroomBytes` of free storage when its free storage is known
 *    (less what the plan's earlier moves send it; one they take units off gets none back: the
 *    clean-up's DELETE frees space for the same tables to reuse once vacuumed, not the free
 *    storage RDS reports),
 *    moves a unit not moved before, and moves a unit the mover takes: no more than `maxUnitRows`
 *    rows in any one table (`maxTableRows`; `rows` when that is not given).
 * 4. Among admissible candidates, if some resolve the shard completely, take the one moving the
 *    least data (best fit); otherwise the one that lowers the excess most (ties: less data, the
 *    lighter target, then ids). Apply it and repeat.
 * 5. A shard with no admissible candidate is set aside (until the next move changes the loads);
 *    planning stops when every shard is within bounds or none can be helped, and the shards
 *    left outside are reported in `unresolved` with the reason (naming the units that would have
 *    helped but are larger than the mover takes, when that is why).
 *
 * @example
 * ```ts
 * const plan = planRebalance({
 *   shards: [{ shardId: 'a', bytes: 900, rows: 9 }, { shardId: 'b', bytes: 100, rows: 1 }],
 *   units: [{ kind: 'slot', id: '7', shardId: 'a', rows: 4, bytes: 400 }, { kind: 'slot', id: '8', shardId: 'a', rows: 5, bytes: 500 }],
 * });
 * plan.moves; // [{ unit: { kind: 'slot', id: '7' }, from: 'a', to: 'b', rows: 4, bytes: 400 }]
 * plan.summary.imbalanceAfter; // 1.0
 * ```
 */
import { z } from 'zod';
import { RebalancePlanError } from './errors.js';
import { DEFAULT_MAX_UNIT_ROWS } from './move-plan.js';

const size = z.number().finite().min(0);

export const rebalanceInputSchema = z.strictObject({
  shards: z
    .array(z.strictObject({ shardId: z.string().min(1), bytes: size, rows: size, freeBytes: size.optional(), weight: z.number().finite().positive().default(1) }))
    .min(1, 'at least one shard is required'),
  units: z.array(
    z.strictObject({
      kind: z.enum(['slot', 'directory']),
      id: z.string().min(1),
      shardId: z.string().min(1),
      rows: size,
      bytes: size,
      /** The most rows the unit has in any one sharded table, as the mover counts them before a move. Default: `rows`, never less. */
      maxTableRows: size.optional(),
      /**
       * Shards the unit is not proposed to move to (the API's check: those the move plan refuses
       * it towards, functions/api/wiring.ts, withoutRefusedMoves); it may still move to others.
       * Default none.
       */
      refusedTargets: z.array(z.string().min(1)).optional(),
    }),
  ),
  /** Allowed deviation from each shard's target, as a fraction. Default 0.10 (10%). */
  threshold: z.number().gt(0).lt(1).default(0.1),
  by: z.enum(['bytes', 'rows']).default('bytes'),
  /** Free storage a target must keep after a move (applies where `freeBytes` is known). Default 0. */
  headroomBytes: size.default(0),
  /**
   * The most rows in any one table of a unit a move takes (the mover's `maxUnitRows`): a larger
   * unit is never proposed, since the mover would refuse it. Default {@link DEFAULT_MAX_UNIT_ROWS}.
   */
  maxUnitRows: z.number().int().min(1).default(DEFAULT_MAX_UNIT_ROWS),
  /** Safety bound on the number of moves proposed. Default 10000. */
  maxMoves: z.number().int().min(1).default(10_000),
});

export type RebalanceInput = z.input<typeof rebalanceInputSchema>;
export type ShardLoad = RebalanceInput['shards'][number];
export type MovableUnit = RebalanceInput['units'][number];
type ShardLoadParsed = z.output<typeof rebalanceInputSchema>['shards'][number];

export interface PlannedMove {
  readonly unit: { readonly kind: 'slot' | 'directory'; readonly id: string };
  readonly from: string;
  readonly to: string;
  readonly rows: number;
  readonly bytes: number;
}

export interface ShardBalance {
  readonly shardId: string;
  /** The shard's weighted share of the total: what perfect balance would give it. */
  readonly target: number;
  readonly before: number;
  readonly after: number;
}

export interface RebalanceSummary {
  readonly by: 'bytes' | 'rows';
  readonly threshold: number;
  /** Total over the number of shards. */
  readonly mean: number;
  /** The largest load over target (max over mean when weights are equal); 1 is perfect balance. */
  readonly imbalanceBefore: number;
  readonly imbalanceAfter: number;
  readonly balancedBefore: boolean;
  readonly balancedAfter: boolean;
  readonly movedRows: number;
  readonly movedBytes: number;
  readonly shards: readonly ShardBalance[];
  /** Shards left outside the threshold, each with the reason (the API's check adds the units the move plan refuses or could not check: functions/api/wiring.ts, withoutRefusedMoves). */
  readonly unresolved: readonly string[];
}

export interface RebalancePlan {
  readonly moves: readonly PlannedMove[];
  readonly summary: RebalanceSummary;
}

/** How many of the units too large to move an unresolved shard's reason names. */
const TOO_LARGE_NAMED = 5;

interface Candidate {
  unit: MovableUnit;
  from: string;
  to: string;
  gain: number;
  size: number;
  resolves: boolean;
  /** The receiving shard's load relative to its target before the move. */
  toRelative: number;
}

/** How far `v` lies outside the band of `threshold` around `target` (0 within it). */
function excessOver(target: number, v: number, threshold: number): number {
  return Math.max(0, v - target * (1 + threshold)) + Math.max(0, target * (1 - threshold) - v);
}

/** Load `v` over `target`; 1 when the shard holds exactly its share. */
function relativeLoad(target: number, v: number): number {
  return target === 0 ? (v === 0 ? 1 : Infinity) : v / target;
}

/**
 * `summary`, a plan's, as if the plan had not made `leftOut`, moves of it that are not proposed
 * after all: each shard's after-figure, the imbalance and balance after, and the rows and bytes
 * moved, computed as {@link planRebalance} computes them. The API's check leaves out the moves
 * the move plan refuses or could not check once it stops planning again (functions/api/wiring.ts,
 * withoutRefusedMoves); before, its summary still counted them, and a check proposing no move
 * said the shards would be balanced after it (`balancedAfter: true`, the rows of moves it did not
 * propose counted as moved: rebalance-refused-moves.test.ts).
 */
export function summaryWithout(summary: RebalanceSummary, leftOut: readonly PlannedMove[]): RebalanceSummary {
  if (leftOut.length === 0) return summary;
  const metric = (x: { bytes: number; rows: number }): number => (summary.by === 'bytes' ? x.bytes : x.rows);
  const after = new Map(summary.shards.map((s) => [s.shardId, s.after]));
  for (const m of leftOut) {
    after.set(m.from, (after.get(m.from) ?? 0) + metric(m));
    after.set(m.to, (after.get(m.to) ?? 0) - metric(m));
  }
  const shards = summary.shards.map((s) => ({ ...s, after: after.get(s.shardId) as number }));
  const total = shards.reduce((a, s) => a + s.target, 0);
  return {
    ...summary,
    imbalanceAfter: total === 0 ? 1 : Math.max(...shards.map((s) => relativeLoad(s.target, s.after))),
    balancedAfter: shards.every((s) => excessOver(s.target, s.after, summary.threshold) === 0),
    movedRows: summary.movedRows - leftOut.reduce((a, m) => a + m.rows, 0),
    movedBytes: summary.movedBytes - leftOut.reduce((a, m) => a + m.bytes, 0),
    shards,
  };
}

/** Plans the moves; throws {@link RebalancePlanError} for inconsistent input. */
export function planRebalance(input: RebalanceInput): RebalancePlan {
  const parsed = rebalanceInputSchema.safeParse(input);
  if (!parsed.success) {
    throw new RebalancePlanError(`invalid rebalance input: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`, { cause: parsed.error });
  }
  const { shards, units, threshold, by, headroomBytes, maxUnitRows, maxMoves } = parsed.data;
  const ids = new Set<string>();
  for (const s of shards) {
    if (ids.has(s.shardId)) throw new RebalancePlanError(`shard ${s.shardId} is listed twice`);
    ids.add(s.shardId);
  }
  const unitKeys = new Set<string>();
  for (const u of units) {
    if (!ids.has(u.shardId)) throw new RebalancePlanError(`${u.kind} ${u.id} is on shard ${u.shardId}, which is not in the shard list`);
    const k = `${u.kind}:${u.id}`;
    if (unitKeys.has(k)) throw new RebalancePlanError(`${u.kind} ${u.id} is listed twice`);
    unitKeys.add(k);
  }

  const metric = (x: { bytes: number; rows: number }): number => (by === 'bytes' ? x.bytes : x.rows);
  const load = new Map(shards.map((s) => [s.shardId, metric(s)]));
  const free = new Map(shards.map((s) => [s.shardId, s.freeBytes]));
  const total = shards.reduce((acc, s) => acc + metric(s), 0);
  const mean = total / shards.length;
  const weightSum = shards.reduce((acc, s) => acc + s.weight, 0);
  const weight = new Map(shards.map((s) => [s.shardId, s.weight]));
  const target = new Map(shards.map((s) => [s.shardId, (total * s.weight) / weightSum]));
  const targetOf = (id: string): number => target.get(id) as number;
  const weightOf = (id: string): number => weight.get(id) as number;
  const excess = (id: string, v: number): number => excessOver(targetOf(id), v, threshold);
  const loadOf = (id: string): number => load.get(id) as number;
  /** Load over target; 1 when the shard holds exactly its share. */
  const relative = (id: string, v: number = loadOf(id)): number => relativeLoad(targetOf(id), v);
  const order = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
  const tableRowsOf = (u: MovableUnit): number => u.maxTableRows ?? u.rows;

  const home = new Map(units.map((u) => [`${u.kind}:${u.id}`, u.shardId]));
  const moved = new Set<string>();
  const moves: PlannedMove[] = [];
  const unresolved = new Map<string, string>();
  /** Units that would have helped at some step but are larger than a move takes, by key. */
  const withheld = new Map<string, MovableUnit>();
  const sizeOf = (list: readonly MovableUnit[]): string => {
    const named = list.slice(0, TOO_LARGE_NAMED).map((u) => `${u.kind} ${u.id} on ${u.shardId} (${tableRowsOf(u).toLocaleString('en')} rows in one table)`);
    return `${named.join(', ')}${list.length > TOO_LARGE_NAMED ? ` and ${list.length - TOO_LARGE_NAMED} more` : ''}`;
  };
  const tooLargeWhy = (list: readonly MovableUnit[]): string =>
    `larger than one move takes (at most ${maxUnitRows.toLocaleString('en')} rows in any one table, the mover's maxUnitRows): ${sizeOf(list)}`;

  const admissible = (u: MovableUnit, from: string, to: string, problem: string): Candidate | undefined => {
    const sz = metric(u);
    const lf = loadOf(from);
    const lt = loadOf(to);
    const wf = weightOf(from);
    const wt = weightOf(to);
    // sum(load^2 / weight) falls iff size * (1/wf + 1/wt) < 2 * (lf/wf - lt/wt).
    if (sz <= 0 || sz * (1 / wf + 1 / wt) >= 2 * (lf / wf - lt / wt)) return undefined;
    const gain = excess(from, lf) + excess(to, lt) - excess(from, lf - sz) - excess(to, lt + sz);
    if (gain <= 0) return undefined;
    const f = free.get(to);
    if (f !== undefined && f - u.bytes < headroomBytes) return undefined;
    const resolves = problem === from ? excess(from, lf - sz) === 0 : excess(to, lt + sz) === 0;
    return { unit: u, from, to, gain, size: sz, resolves, toRelative: relative(to, lt) };
  };

  const better = (a: Candidate, b: Candidate | undefined): boolean => {
    if (b === undefined) return true;
    if (a.resolves !== b.resolves) return a.resolves;
    if (a.resolves) {
      if (a.size !== b.size) return a.size < b.size;
      if (a.gain !== b.gain) return a.gain > b.gain;
    } else {
      if (a.gain !== b.gain) return a.gain > b.gain;
      if (a.size !== b.size) return a.size < b.size;
    }
    if (a.toRelative !== b.toRelative) return a.toRelative < b.toRelative;
    return order(`${a.to}\u0000${a.unit.kind}:${a.unit.id}`, `${b.to}\u0000${b.unit.kind}:${b.unit.id}`) < 0;
  };

  while (moves.length < maxMoves) {
    let problem: string | undefined;
    for (const s of shards) {
      if (unresolved.has(s.shardId) || excess(s.shardId, loadOf(s.shardId)) === 0) continue;
      if (problem === undefined || excess(s.shardId, loadOf(s.shardId)) > excess(problem, loadOf(problem))) problem = s.shardId;
    }
    if (problem === undefined) break;
    const over = loadOf(problem) > targetOf(problem);
    let best: Candidate | undefined;
    let blockedByHeadroom = false;
    // Units that would help but that the mover refuses (more rows in one table than it takes).
    const tooLarge: MovableUnit[] = [];
    for (const u of units) {
      const key = `${u.kind}:${u.id}`;
      if (moved.has(key)) continue;
      const at = home.get(key) as string;
      if (over ? at !== problem : at === problem) continue;
      const targets = over ? shards.map((s) => s.shardId) : [problem];
      for (const t of targets) {
        if (t === at || u.refusedTargets?.includes(t)) continue;
        const c = admissible(u, at, t, problem);
        if (c !== undefined && tableRowsOf(u) > maxUnitRows) {
          if (!tooLarge.includes(u)) tooLarge.push(u);
          withheld.set(key, u);
          continue;
        }
        if (c !== undefined) {
          if (better(c, best)) best = c;
          continue;
        }
        const f = free.get(t);
        if (f !== undefined && f - u.bytes < headroomBytes && metric(u) > 0 && relative(at) > relative(t)) blockedByHeadroom = true;
      }
    }
    if (best === undefined) {
      const pct = ((relative(problem) - 1) * 100).toFixed(1);
      const where = over ? `${pct}% above` : `${(-Number(pct)).toFixed(1)}% below`;
      const why = blockedByHeadroom
        ? `every move that would help leaves its target with less than ${headroomBytes} free bytes`
        : tooLarge.length > 0
          ? `the units that would help are ${tooLargeWhy(tooLarge)}`
          : over
          ? 'none of its movable units fits on a lighter shard without overshooting'
          : 'no heavier shard has a movable unit that fits here without overshooting';
      unresolved.set(problem, `${problem} stays ${where} its target: ${why}`);
      continue;
    }
    const key = `${best.unit.kind}:${best.unit.id}`;
    moved.add(key);
    home.set(key, best.to);
    load.set(best.from, loadOf(best.from) - best.size);
    load.set(best.to, loadOf(best.to) + best.size);
    // The source gets no free storage back: its rows are deleted only after the flip, and a
    // deleted row's space is reused by the same table once vacuumed, never returned to the
    // storage RDS reports free (FreeStorageSpace) short of a VACUUM FULL. A later move onto it is
    // held to what was measured.
    const ft = free.get(best.to);
    if (ft !== undefined) free.set(best.to, ft - best.unit.bytes);
    moves.push({ unit: { kind: best.unit.kind, id: best.unit.id }, from: best.from, to: best.to, rows: best.unit.rows, bytes: best.unit.bytes });
    // A move changes the loads, so a shard given up on may now have a way out.
    unresolved.clear();
  }

  // A unit left out at an earlier step may be why the plan took a path that ends outside the
  // threshold, though no shard's last step could use it: said once, for whoever reads the plan.
  const unbalanced = shards.some((s) => excess(s.shardId, loadOf(s.shardId)) > 0);
  if (unbalanced && withheld.size > 0 && ![...unresolved.values()].some((r) => r.includes("the mover's maxUnitRows"))) {
    unresolved.set('(too large)', `not proposed, being ${tooLargeWhy([...withheld.values()])}`);
  }
  if (moves.length >= maxMoves && shards.some((s) => excess(s.shardId, loadOf(s.shardId)) > 0)) unresolved.set('(limit)', `planning stopped at maxMoves (${maxMoves}) before every shard was within the threshold`);
  const imbalance = (values: number[]): number => (total === 0 ? 1 : Math.max(...values.map((v, i) => relative((shards[i] as ShardLoadParsed).shardId, v))));
  const beforeValues = shards.map((s) => metric(s));
  const afterValues = shards.map((s) => loadOf(s.shardId));
  return {
    moves,
    summary: {
      by,
      threshold,
      mean,
      imbalanceBefore: imbalance(beforeValues),
      imbalanceAfter: imbalance(afterValues),
      balancedBefore: beforeValues.every((v, i) => excess((shards[i] as ShardLoadParsed).shardId, v) === 0),
      balancedAfter: afterValues.every((v, i) => excess((shards[i] as ShardLoadParsed).shardId, v) === 0),
      movedRows: moves.reduce((a, m) => a + m.rows, 0),
      movedBytes: moves.reduce((a, m) => a + m.bytes, 0),
      shards: shards.map((s) => ({ shardId: s.shardId, target: targetOf(s.shardId), before: metric(s), after: loadOf(s.shardId) })),
      unresolved: [...unresolved.values()],
    },
  };
}
