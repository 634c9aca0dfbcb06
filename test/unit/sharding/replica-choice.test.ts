import { describe, expect, it } from 'vitest';
import { freshnessBoundsFromConfig, rankReadTargets, replicaIneligibility, type FreshnessBounds, type ReplicaState } from '../../../functions/core/sharding/replica-choice.js';

const NOW = 1_000_000;
const bounds: FreshnessBounds = { maxLagSeconds: 5, maxLagBytes: 1000, maxStateAgeMs: 10_000 };
const state = (nodeId: string, over: Partial<ReplicaState> = {}): ReplicaState => ({ nodeId, up: true, lagSeconds: 0, lagBytes: 0n, replayLsn: 5000n, checkedAtMs: NOW - 100, ...over });

describe('choosing where a read goes', () => {
  it('prefers the least lagged fresh replica, then the others, then the primary', () => {
    const targets = rankReadTargets([state('r1', { lagBytes: 500n }), state('r2', { lagBytes: 10n }), state('r3', { lagBytes: 10n, lagSeconds: 1 })], bounds, { nowMs: NOW });

    expect(targets.map((t) => (t.kind === 'replica' ? t.nodeId : 'primary'))).toEqual(['r2', 'r3', 'r1', 'primary']);
  });

  it('sends reads to the primary when no replica is fresh enough', () => {
    const targets = rankReadTargets([state('r1', { lagSeconds: 6 }), state('r2', { lagBytes: 1001n })], bounds, { nowMs: NOW });

    expect(targets).toEqual([{ kind: 'primary', reason: 'no fresh replica' }]);
  });

  it('accepts a replica exactly at the bounds', () => {
    expect(replicaIneligibility(state('r1', { lagSeconds: 5, lagBytes: 1000n }), bounds, NOW)).toBeNull();
  });

  it('says why a replica gets no reads', () => {
    expect(replicaIneligibility(state('r', { up: false }), bounds, NOW)).toBe('down');
    expect(replicaIneligibility(state('r', { lagSeconds: null }), bounds, NOW)).toBe('lag unknown');
    expect(replicaIneligibility(state('r', { lagBytes: null }), bounds, NOW)).toBe('lag in bytes unknown');
    expect(replicaIneligibility(state('r', { checkedAtMs: NOW - 10_001 }), bounds, NOW)).toBe('state too old');
    expect(replicaIneligibility(state('r', { failedAtMs: NOW - 50 }), bounds, NOW)).toBe('a query failed since the last check');
  });

  it('stops trusting a probe once the replica may have aged past the bound since it', () => {
    // Measured current 4 s ago: it may have stopped replaying right after, so it is vouched for 1 s more.
    expect(replicaIneligibility(state('r', { freshAsOfMs: NOW - 4_000 }), bounds, NOW)).toBeNull();
    expect(replicaIneligibility(state('r', { freshAsOfMs: NOW - 5_001 }), bounds, NOW)).toBe('last known fresh 5.0 s ago, over 5 s');
  });

  it('gives a replica whose query failed another chance at the next check', () => {
    expect(replicaIneligibility(state('r', { failedAtMs: NOW - 200, checkedAtMs: NOW - 100 }), bounds, NOW)).toBeNull();
  });

  it('sends a read with a token first to replicas known to have replayed past it', () => {
    const targets = rankReadTargets([state('behind', { replayLsn: 4000n }), state('past', { replayLsn: 6000n, lagBytes: 500n })], bounds, { nowMs: NOW, token: 5000n });

    expect(targets).toEqual([
      { kind: 'replica', nodeId: 'past', tokenVerified: true },
      { kind: 'replica', nodeId: 'behind', tokenVerified: false },
      { kind: 'primary', reason: 'fallback after replicas' },
    ]);
  });

  it('counts a replica exactly at the token as having replayed it', () => {
    const [first] = rankReadTargets([state('r1', { replayLsn: 5000n })], bounds, { nowMs: NOW, token: 5000n });
    expect(first).toEqual({ kind: 'replica', nodeId: 'r1', tokenVerified: true });
  });

  it('takes its bounds from the sharding configuration', () => {
    expect(
      freshnessBoundsFromConfig({ max_replica_lag_seconds: 5, max_replica_lag_bytes: 16_777_216, health_check_interval_seconds: 10, health_check_timeout_seconds: 2 }),
    ).toEqual({ maxLagSeconds: 5, maxLagBytes: 16_777_216, maxStateAgeMs: 22_000 });
  });

  it('tries a replica fresh by seconds after the primary when the primary is unreachable and byte lag unknown', () => {
    const targets = rankReadTargets([state('r1', { lagBytes: null }), state('r2', { lagBytes: null, lagSeconds: 60 })], bounds, { nowMs: NOW });

    expect(targets).toEqual([
      { kind: 'primary', reason: 'no fresh replica' },
      { kind: 'replica', nodeId: 'r1', tokenVerified: true },
    ]);
  });

  it('checks a token live on such a last-resort replica', () => {
    const targets = rankReadTargets([state('r1', { lagBytes: null, replayLsn: 9000n })], bounds, { nowMs: NOW, token: 5000n });

    expect(targets.at(-1)).toEqual({ kind: 'replica', nodeId: 'r1', tokenVerified: false });
  });

  it('gives no reads to a replica on another timeline than its primary, or past its primary (it follows another server)', () => {
    expect(replicaIneligibility(state('r', { timeline: 1, primaryTimeline: 2 }), bounds, NOW)).toBe('on timeline 1, its primary on 2');
    expect(replicaIneligibility(state('r', { timeline: 2, primaryTimeline: 2, replayLsn: 5001n, primaryLsn: 5000n }), bounds, NOW)).toBe('replayed past its primary (it follows another server)');
    expect(replicaIneligibility(state('r', { timeline: 2, primaryTimeline: 2, replayLsn: 5000n, primaryLsn: 5000n }), bounds, NOW)).toBeNull();
    // Unknown on either side (no heartbeat, the primary down): not held against the replica.
    expect(replicaIneligibility(state('r', { timeline: null, primaryTimeline: 2 }), bounds, NOW)).toBeNull();
    expect(replicaIneligibility(state('r', { timeline: 1, primaryTimeline: null, primaryLsn: null }), bounds, NOW)).toBeNull();
  });

  it("verifies a token by state only on the token's timeline; otherwise the read checks it live", () => {
    const targets = rankReadTargets([state('r1', { replayLsn: 9000n, timeline: 1, primaryTimeline: 1 })], bounds, { nowMs: NOW, token: 5000n, tokenTimeline: 2 });

    expect(targets[0]).toEqual({ kind: 'replica', nodeId: 'r1', tokenVerified: false });
  });
});
