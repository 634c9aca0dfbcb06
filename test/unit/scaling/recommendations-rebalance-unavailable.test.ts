import { describe, expect, it } from 'vitest';
import { defaultScalingConfig } from '../../../functions/core/scaling/config.js';
import { recommend } from '../../../functions/core/scaling/recommendations.js';

const base = { now: Date.parse('2026-12-06T08:00:00Z'), config: defaultScalingConfig(), decisions: [] };

describe('recommendations when the rebalance check cannot be made', () => {
  it('warns with the status and reason of an unreachable shard (503), naming no shard', () => {
    const items = recommend({ ...base, shards: { rebalanceUnavailable: { status: 503, reason: 'cannot plan a rebalance while shards are unreachable: shard_002 (timeout)' } } });
    const item = items.find((i) => i.category === 'shard_rebalance_unavailable');

    expect(item).toMatchObject({ severity: 'warning', shard: null, evidence: { status: 503 } });
    expect(item?.advice).toBe('GET /shards/rebalance-check answers 503, so no imbalance or moves can be recommended: cannot plan a rebalance while shards are unreachable: shard_002 (timeout)');
  });

  it('is critical, naming the shard, when the slot map gives slots to a shard that is not configured', () => {
    const items = recommend({
      ...base,
      shards: { rebalanceUnavailable: { status: 409, reason: 'cannot plan a rebalance: ...' }, unconfigured: [{ shardId: 'shard_003', slotsOwned: 10 }] },
    });

    expect(items[0]).toMatchObject({ category: 'shard_rebalance_unavailable', severity: 'critical', shard: 'shard_003', evidence: { status: 409, unconfigured: [{ shardId: 'shard_003', slotsOwned: 10 }] } });
  });

  it('says nothing of it when the check was made', () => {
    expect(recommend({ ...base, shards: { imbalance: 1, rebalanceNeeded: false } }).some((i) => i.category === 'shard_rebalance_unavailable')).toBe(false);
  });
});
