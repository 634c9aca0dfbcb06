/**
 * Which node serves a read: a replica that is up, in recovery, fresh (lag within the bounds in
 * seconds and in bytes) and, for a read carrying a read-your-writes token, known to have
 * replayed past it; the least lagged such replica first, the primary when there is none. Pure:
 * the replica reader (adapters/postgres) measures the states and passes the time in.
 *
 * @example
 * ```ts
 * const order = rankReadTargets(states, freshnessBoundsFromConfig(config), {
 *   nowMs: Date.now(),
 *   token: parseLsn('0/3000148'),
 * });
 * // [{ kind: 'replica', nodeId: 'shard_001/replica-1' }, { kind: 'primary', reason: 'fallback' }]
 * ```
 */
import type { ShardingConfig } from './config.js';

/** The last measured state of one replica. */
export interface ReplicaState {
  readonly nodeId: string;
  /** Answered the last probe, in recovery, WAL receiver known. */
  readonly up: boolean;
  readonly lagSeconds: number | null;
  readonly lagBytes: bigint | null;
  readonly replayLsn: bigint | null;
  /** When the state was measured (ms since the epoch, from the caller's clock). */
  readonly checkedAtMs: number;
  /** Set by the reader when a query on the replica failed after the last probe. */
  readonly failedAtMs?: number;
  /** The timeline the replica follows (null or absent: unknown). */
  readonly timeline?: number | null;
  /** Its primary's timeline at the same probe (null or absent: the primary did not answer). */
  readonly primaryTimeline?: number | null;
  /** Its primary's WAL insert position read after the replica's probe (null or absent: unknown). */
  readonly primaryLsn?: bigint | null;
  /**
   * The caller's clock (ms) at which the replica was last known to hold everything its primary
   * had committed (absent: not tracked). A replica's data can only age from there: if it stops
   * replaying right after a probe, it is `nowMs - freshAsOfMs` stale at a read, however small
   * the lag the probe measured.
   */
  readonly freshAsOfMs?: number;
}

/** How fresh a replica must be to serve reads. */
export interface FreshnessBounds {
  readonly maxLagSeconds: number;
  readonly maxLagBytes: number;
  /** A state older than this is not trusted (the probes stopped answering). */
  readonly maxStateAgeMs: number;
}

/**
 * The bounds the (already validated) sharding configuration sets. A state is trusted for two
 * health intervals plus one probe timeout, so one slow probe does not push every read to the
 * primary, while a reader whose probes stopped altogether stops trusting its replicas.
 */
export function freshnessBoundsFromConfig(
  config: Pick<ShardingConfig, 'max_replica_lag_seconds' | 'max_replica_lag_bytes' | 'health_check_interval_seconds' | 'health_check_timeout_seconds'>,
): FreshnessBounds {
  return {
    maxLagSeconds: config.max_replica_lag_seconds,
    maxLagBytes: config.max_replica_lag_bytes,
    maxStateAgeMs: Math.round((2 * config.health_check_interval_seconds + config.health_check_timeout_seconds) * 1000),
  };
}

export type ReadTarget =
  | { readonly kind: 'replica'; readonly nodeId: string; readonly tokenVerified: boolean }
  | { readonly kind: 'primary'; readonly reason: string };

export interface ReadRequest {
  readonly nowMs: number;
  /** Read-your-writes token: the replica must have replayed at least this position. */
  readonly token?: bigint;
  /** The token's timeline: a replica is known past the token only on that timeline. */
  readonly tokenTimeline?: number;
}

/** Why a replica may not serve a read now; null when it may. */
export function replicaIneligibility(state: ReplicaState, bounds: FreshnessBounds, nowMs: number): string | null {
  if (!state.up) return 'down';
  if (state.failedAtMs !== undefined && state.failedAtMs >= state.checkedAtMs) return 'a query failed since the last check';
  // A replica that follows another server than its primary (an old primary, after a promotion,
  // that a stale client still writes to) is not behind this primary but beside it: its lag
  // measures nothing, and what it answers may never have been committed here.
  if (state.timeline != null && state.primaryTimeline != null && state.timeline !== state.primaryTimeline) {
    return `on timeline ${state.timeline}, its primary on ${state.primaryTimeline}`;
  }
  if (state.replayLsn !== null && state.primaryLsn != null && state.replayLsn > state.primaryLsn) return 'replayed past its primary (it follows another server)';
  if (nowMs - state.checkedAtMs > bounds.maxStateAgeMs) return 'state too old';
  if (state.lagSeconds === null) return 'lag unknown';
  if (state.lagSeconds > bounds.maxLagSeconds) return `lag ${state.lagSeconds.toFixed(1)} s over ${bounds.maxLagSeconds} s`;
  // The measure holds at the probe; by now the replica may have stopped replaying since (a
  // receiver gone, replay paused): it is only known to be as fresh as it was then.
  if (state.freshAsOfMs !== undefined && nowMs - state.freshAsOfMs > bounds.maxLagSeconds * 1000) {
    return `last known fresh ${((nowMs - state.freshAsOfMs) / 1000).toFixed(1)} s ago, over ${bounds.maxLagSeconds} s`;
  }
  if (state.lagBytes === null) return 'lag in bytes unknown';
  if (state.lagBytes > BigInt(bounds.maxLagBytes)) return `lag ${state.lagBytes} bytes over ${bounds.maxLagBytes}`;
  return null;
}

/**
 * The order in which to try nodes for a read: eligible replicas, least lagged first (bytes, then
 * seconds, then id for a stable order), then the primary. A replica whose known replay position
 * is behind the token (or not known to be on the token's timeline) comes after those that are
 * known to be past it, as `tokenVerified: false`:
 * the reader checks it live, since the state may be up to one health interval old, and moves on
 * when it is still behind.
 */
export function rankReadTargets(states: readonly ReplicaState[], bounds: FreshnessBounds, request: ReadRequest): ReadTarget[] {
  const eligible = states
    .filter((s) => replicaIneligibility(s, bounds, request.nowMs) === null)
    .sort((a, b) => {
      const ab = a.lagBytes ?? 0n;
      const bb = b.lagBytes ?? 0n;
      if (ab !== bb) return ab < bb ? -1 : 1;
      const as = a.lagSeconds ?? 0;
      const bs = b.lagSeconds ?? 0;
      if (as !== bs) return as - bs;
      return a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0;
    });
  const targets: ReadTarget[] = [];
  if (request.token === undefined) {
    for (const s of eligible) targets.push({ kind: 'replica', nodeId: s.nodeId, tokenVerified: true });
  } else {
    const token = request.token;
    const tokenTimeline = request.tokenTimeline;
    const verified = eligible.filter((s) => s.replayLsn !== null && s.replayLsn >= token && (tokenTimeline === undefined || s.timeline === tokenTimeline));
    for (const s of verified) targets.push({ kind: 'replica', nodeId: s.nodeId, tokenVerified: true });
    // The state may be one interval old: a live check (one round trip) beats the primary's load.
    for (const s of eligible) if (!verified.includes(s)) targets.push({ kind: 'replica', nodeId: s.nodeId, tokenVerified: false });
  }
  targets.push({ kind: 'primary', reason: targets.length > 0 ? 'fallback after replicas' : eligible.length > 0 ? 'no replica has replayed the token' : 'no fresh replica' });
  // When the primary is unreachable the byte lag cannot be measured; rather than fail the read,
  // a replica that is up and fresh by seconds serves it, after the primary has been tried. A
  // token is then always checked live on the replica itself.
  const lastResort = states.filter((s) => s.lagBytes === null && replicaIneligibility({ ...s, lagBytes: 0n }, bounds, request.nowMs) === null);
  for (const s of lastResort) targets.push({ kind: 'replica', nodeId: s.nodeId, tokenVerified: request.token === undefined });
  return targets;
}
