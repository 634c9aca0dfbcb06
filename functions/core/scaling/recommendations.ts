/**
 * Scaling recommendations: advice drawn from the decision history, the recorded metrics, the
 * configuration and the shard reports, each with the evidence behind it. Pure: callers pass
 * what they read (and, for the policy comparison, the replay results).
 *
 * @example
 * ```ts
 * const advice = recommend({ now, config, decisions, shards: { statistics, rebalance, health } });
 * for (const r of advice) console.log(r.severity, r.title, r.advice);
 * ```
 */
import { resolveServiceConfig, type ScalingConfig } from './config.js';
import type { Direction, MetricsSnapshot } from './types.js';

/** The parts of a recorded decision the recommendations look at. */
export interface HistoryDecision {
  readonly at: number;
  readonly service: string;
  readonly direction: Direction;
  readonly outcome: string;
  readonly from: number;
  readonly to: number;
  readonly metrics: MetricsSnapshot | null;
}

/** How the configured policy and the others fared when the recorded demand was replayed. */
export interface PolicyReplay {
  readonly service: string;
  readonly configured: string;
  readonly minutes: number;
  readonly results: readonly { readonly policy: string; readonly sloViolationMinutes: number; readonly taskMinutes: number; readonly actions: number }[];
}

export interface ShardNodeFacts {
  readonly nodeId: string;
  readonly shardId: string;
  readonly role: string;
  readonly lagSeconds?: number | null;
  readonly lagBytes?: number | null;
  readonly connections?: number | null;
  readonly maxConnections?: number | null;
}

export interface ShardFacts {
  readonly imbalance?: number;
  readonly rebalanceNeeded?: boolean;
  /** Moves the rebalance check proposes now: none of a unit that already has an unfinished move. */
  readonly rebalanceMoves?: number;
  /** Moves started and not yet finished (planned, copying, ... rolling back). */
  readonly movesInFlight?: number;
  readonly threshold?: number;
  readonly by?: string;
  readonly nodes?: readonly ShardNodeFacts[];
  readonly maxLagSeconds?: number;
  readonly maxLagBytes?: number;
  /**
   * Why the rebalance check could not be made (so `imbalance` and the moves are missing): the
   * status `GET /shards/rebalance-check` answers (409 refused, 503 unavailable) and its message.
   */
  readonly rebalanceUnavailable?: { readonly status: number; readonly reason: string };
  /** Shards the current slot map gives slots to that are not configured (their rows can be neither reached nor measured). */
  readonly unconfigured?: readonly { readonly shardId: string; readonly slotsOwned: number }[];
}

export interface RecommendationInput {
  readonly now: number;
  readonly config: ScalingConfig;
  /** Recent decisions, any order. */
  readonly decisions: readonly HistoryDecision[];
  readonly replays?: readonly PolicyReplay[];
  readonly shards?: ShardFacts;
}

export type RecommendationCategory =
  | 'flapping'
  | 'max_reached'
  | 'min_unused'
  | 'thresholds_close'
  | 'better_policy'
  | 'shard_imbalance'
  | 'shard_rebalance_unavailable'
  | 'replica_lag'
  | 'connection_saturation';

export interface Recommendation {
  readonly id: string;
  readonly category: RecommendationCategory;
  readonly severity: 'info' | 'warning' | 'critical';
  readonly service: string | null;
  readonly shard: string | null;
  readonly title: string;
  readonly advice: string;
  readonly evidence: Record<string, unknown>;
}

/** Direction changes closer together than this count as a reversal (as the simulator scores them). */
export const REVERSAL_WINDOW_MS = 10 * 60 * 1000;
/** Reversals in the window that make a service "flapping". */
export const FLAPPING_REVERSALS = 3;
/** Share of evaluations at the max that says the max is too low. */
export const MAX_REACHED_SHARE = 0.2;
/** Distance between scale-up and scale-down thresholds (percentage points) below which they are too close. */
export const THRESHOLD_GAP_POINTS = 20;
/** Connection use above which a node is saturated. */
export const CONNECTION_SATURATION = 0.8;

function round(n: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** Counts direction reversals: an applied change opposite to the previous one within the window. */
export function countReversals(decisions: readonly HistoryDecision[], windowMs = REVERSAL_WINDOW_MS): { count: number; examples: Array<{ at: string; direction: Direction }> } {
  const applied = decisions.filter((d) => d.outcome === 'applied' && d.direction !== 'none').sort((a, b) => a.at - b.at);
  let count = 0;
  const examples: Array<{ at: string; direction: Direction }> = [];
  for (let i = 1; i < applied.length; i++) {
    const prev = applied[i - 1] as HistoryDecision;
    const cur = applied[i] as HistoryDecision;
    if (cur.direction !== prev.direction && cur.at - prev.at <= windowMs) {
      count += 1;
      if (examples.length < 5) examples.push({ at: new Date(cur.at).toISOString(), direction: cur.direction });
    }
  }
  return { count, examples };
}

function serviceAdvice(input: RecommendationInput, service: string): Recommendation[] {
  const cfg = resolveServiceConfig(input.config, service);
  const mine = input.decisions.filter((d) => d.service === service);
  const out: Recommendation[] = [];
  const evaluated = mine.filter((d) => d.outcome !== 'skipped');

  const reversals = countReversals(mine);
  if (reversals.count >= FLAPPING_REVERSALS) {
    out.push({
      id: `flapping:${service}`,
      category: 'flapping',
      severity: 'warning',
      service,
      shard: null,
      title: `${service} is flapping`,
      advice: `It reversed direction ${reversals.count} times within ${REVERSAL_WINDOW_MS / 60000} minutes of a previous change. Lengthen scale_in_cooldown (now ${cfg.cooldown_in} s) or stabilization_window (now ${cfg.stabilization_window} s), or widen the gap between the scale-up and scale-down thresholds.`,
      evidence: { reversals: reversals.count, examples: reversals.examples, scale_in_cooldown: cfg.cooldown_in, stabilization_window: cfg.stabilization_window },
    });
  }

  if (evaluated.length >= 5) {
    const atMax = evaluated.filter((d) => d.to >= cfg.max_instances).length;
    const share = atMax / evaluated.length;
    const blockedByMax = evaluated.filter((d) => d.to >= cfg.max_instances && d.metrics !== null && (d.metrics.cpu ?? 0) >= cfg.cpu_scale_up).length;
    if (share >= MAX_REACHED_SHARE && blockedByMax > 0) {
      out.push({
        id: `max_reached:${service}`,
        category: 'max_reached',
        severity: share >= 0.5 ? 'critical' : 'warning',
        service,
        shard: null,
        title: `${service} runs at its maximum of ${cfg.max_instances} tasks`,
        advice: `${Math.round(share * 100)}% of evaluations ended at max_instances, ${blockedByMax} of them with CPU still above ${cfg.cpu_scale_up}%. Raise max_instances so the controller can serve the load.`,
        evidence: { evaluations: evaluated.length, at_max: atMax, share: round(share), at_max_while_hot: blockedByMax, max_instances: cfg.max_instances },
      });
    }
    // A minimum that holds tasks idle: the service sits at min_instances while its CPU stays
    // far below the scale-down threshold, so the floor, not the load, decides the cost.
    const atMinIdle = evaluated.filter(
      (d) => d.to <= cfg.min_instances && d.metrics?.cpu !== undefined && d.metrics.cpu < cfg.cpu_scale_down / 2,
    );
    const idleShare = atMinIdle.length / evaluated.length;
    if (cfg.min_instances > 1 && idleShare >= 0.5) {
      const cpus = atMinIdle.map((d) => d.metrics?.cpu ?? 0);
      const meanCpu = cpus.reduce((a, b) => a + b, 0) / cpus.length;
      const suggested = Math.max(1, Math.ceil((cfg.min_instances * meanCpu) / cfg.cpu_scale_down));
      out.push({
        id: `min_unused:${service}`,
        category: 'min_unused',
        severity: 'info',
        service,
        shard: null,
        title: `${service}: the minimum of ${cfg.min_instances} tasks is mostly idle`,
        advice: `${Math.round(idleShare * 100)}% of evaluations found it at min_instances with CPU around ${round(meanCpu, 1)}%, under half the scale-down threshold (${cfg.cpu_scale_down}%). Lowering min_instances to ${suggested} would serve that load and cost less; keep at least 2 where availability across zones matters.`,
        evidence: { evaluations: evaluated.length, at_min_idle: atMinIdle.length, share: round(idleShare), mean_cpu: round(meanCpu, 1), min_instances: cfg.min_instances, suggested_min: suggested },
      });
    }
  }

  const pairs: Array<[string, number, number]> = [
    ['cpu', cfg.cpu_scale_down, cfg.cpu_scale_up],
    ['memory', cfg.memory_scale_down, cfg.memory_scale_up],
    ['connections', cfg.connections_scale_down, cfg.connections_scale_up],
  ];
  for (const [metric, down, up] of pairs) {
    if (up - down < THRESHOLD_GAP_POINTS) {
      out.push({
        id: `thresholds_close:${service}:${metric}`,
        category: 'thresholds_close',
        severity: 'warning',
        service,
        shard: null,
        title: `${service}: ${metric} thresholds are only ${round(up - down)} apart`,
        advice: `Scaling out at ${up} and in at ${down} leaves little room: one task more or less moves the metric across both. Keep at least ${THRESHOLD_GAP_POINTS} points between them (scaling in at ${Math.max(0, up - THRESHOLD_GAP_POINTS - 10)} or below is typical).`,
        evidence: { metric, scale_up: up, scale_down: down, gap: round(up - down) },
      });
    }
  }

  const replay = input.replays?.find((r) => r.service === service);
  if (replay) {
    const current = replay.results.find((r) => r.policy === replay.configured);
    const better = replay.results
      .filter((r) => r.policy !== replay.configured && current !== undefined && r.sloViolationMinutes < current.sloViolationMinutes && r.taskMinutes <= current.taskMinutes * 1.1)
      .sort((a, b) => a.sloViolationMinutes - b.sloViolationMinutes)[0];
    if (current && better) {
      out.push({
        id: `better_policy:${service}`,
        category: 'better_policy',
        severity: 'info',
        service,
        shard: null,
        title: `${service}: the ${better.policy} policy would have served the last ${replay.minutes} minutes better`,
        advice: `Replaying the recorded demand, ${better.policy} had ${better.sloViolationMinutes} SLO-violation minutes against ${current.sloViolationMinutes} for ${replay.configured}, for ${better.taskMinutes} task-minutes against ${current.taskMinutes}. Consider PUT /config with "services": {"${service}": {"policy": "${better.policy}"}}.`,
        evidence: { minutes: replay.minutes, configured: current, candidate: better },
      });
    }
  }
  return out;
}

/** What to do about an imbalance: start the moves that can be started, and wait for those under way. */
function shardMovesAdvice(toStart: number, inFlight: number): string {
  const waiting = inFlight > 0 ? `${inFlight} move(s) are under way (the balance is measured as it is now; the check plans only what is left once they end)` : '';
  if (toStart === 0) return inFlight > 0 ? `${waiting}; check again once they are done.` : 'GET /shards/rebalance-check says why no move fixes it.';
  const start = `GET /shards/rebalance-check lists the ${toStart} move(s) that fix it; start them with POST /shards/moves.`;
  return inFlight > 0 ? `${waiting}. ${start}` : start;
}

function shardAdvice(facts: ShardFacts): Recommendation[] {
  const out: Recommendation[] = [];
  if (facts.rebalanceNeeded === true && facts.imbalance !== undefined) {
    out.push({
      id: 'shard_imbalance',
      category: 'shard_imbalance',
      severity: facts.imbalance > 1.5 ? 'critical' : 'warning',
      service: null,
      shard: null,
      title: `shards are out of balance (max/mean ${round(facts.imbalance)})`,
      advice: `Some shard is more than ${Math.round((facts.threshold ?? 0.1) * 100)}% from the mean ${facts.by ?? 'bytes'}. ${shardMovesAdvice(facts.rebalanceMoves ?? 0, facts.movesInFlight ?? 0)}`,
      evidence: {
        imbalance: round(facts.imbalance, 3),
        threshold: facts.threshold ?? 0.1,
        by: facts.by ?? 'bytes',
        moves: facts.rebalanceMoves ?? 0,
        ...(facts.movesInFlight === undefined ? {} : { movesInFlight: facts.movesInFlight }),
      },
    });
  }
  if (facts.rebalanceUnavailable !== undefined) {
    const { status, reason } = facts.rebalanceUnavailable;
    const unconfigured = facts.unconfigured ?? [];
    out.push({
      id: 'shard_rebalance_unavailable',
      category: 'shard_rebalance_unavailable',
      // Slots owned by a shard nobody configured: their rows are out of every router's reach.
      severity: unconfigured.length > 0 ? 'critical' : 'warning',
      service: null,
      shard: unconfigured.length === 1 ? (unconfigured[0]?.shardId ?? null) : null,
      title: 'the shard balance cannot be checked',
      advice: `GET /shards/rebalance-check answers ${status}, so no imbalance or moves can be recommended: ${reason}`,
      evidence: { status, reason, ...(unconfigured.length > 0 ? { unconfigured: unconfigured.map((o) => ({ shardId: o.shardId, slotsOwned: o.slotsOwned })) } : {}) },
    });
  }
  for (const node of facts.nodes ?? []) {
    const lagS = node.lagSeconds ?? undefined;
    const lagB = node.lagBytes ?? undefined;
    const overS = lagS !== undefined && facts.maxLagSeconds !== undefined && lagS > facts.maxLagSeconds;
    const overB = lagB !== undefined && facts.maxLagBytes !== undefined && lagB > facts.maxLagBytes;
    if (node.role === 'replica' && (overS || overB)) {
      out.push({
        id: `replica_lag:${node.nodeId}`,
        category: 'replica_lag',
        severity: 'warning',
        service: null,
        shard: node.shardId,
        title: `replica ${node.nodeId} lags behind its primary`,
        advice: `It is ${lagS ?? '?'} s / ${lagB ?? '?'} bytes behind (bounds ${facts.maxLagSeconds} s / ${facts.maxLagBytes} bytes), so reads skip it. Check its instance class and I/O against the primary's write rate, or add a replica.`,
        evidence: { lag_seconds: lagS ?? null, lag_bytes: lagB ?? null, max_lag_seconds: facts.maxLagSeconds ?? null, max_lag_bytes: facts.maxLagBytes ?? null },
      });
    }
    if (node.connections != null && node.maxConnections != null && node.maxConnections > 0) {
      const use = node.connections / node.maxConnections;
      if (use >= CONNECTION_SATURATION) {
        out.push({
          id: `connection_saturation:${node.nodeId}`,
          category: 'connection_saturation',
          severity: use >= 0.95 ? 'critical' : 'warning',
          service: null,
          shard: node.shardId,
          title: `${node.nodeId} uses ${Math.round(use * 100)}% of its connections`,
          advice: 'Put the application behind a connection pooler (RDS Proxy or PgBouncer), lower per-task pool sizes, or raise max_connections with a larger instance class before more tasks are added.',
          evidence: { connections: node.connections, max_connections: node.maxConnections, use: round(use) },
        });
      }
    }
  }
  return out;
}

const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 } as const;

/** All recommendations, most severe first. */
export function recommend(input: RecommendationInput): Recommendation[] {
  const services = Object.keys(input.config.services);
  const all = [...services.flatMap((s) => serviceAdvice(input, s)), ...(input.shards ? shardAdvice(input.shards) : [])];
  return all.sort((a, b) => SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity] || a.id.localeCompare(b.id));
}
