/**
 * GET /recommendations when the rebalance check cannot be made: it says why the shard balance
 * figures are missing instead of leaving them out without a word.
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';

describe('GET /recommendations without a rebalance check', () => {
  let h: ApiHarness;
  beforeAll(async () => {
    h = await startApiHarness();
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  it('names the slot map shard that is not configured, which keeps the rebalance check from planning (its 409), instead of dropping the shard figures silently', async () => {
    const current = await h.sharding.slotMaps.current();
    // shard_003 is published in the map before being configured (or removed from the
    // configuration before its slots were moved off): slots 0-9 go to it.
    const assignments = current.assignments.map((owner, slot) => (slot < 10 ? 'shard_003' : owner));
    await h.sharding.slotMaps.publish({ ...current, version: current.version + 1, assignments }, 'ops@example.com', 'shard_003 published before it was configured');
    try {
      const check = await h.fetchJson(`${API}/shards/rebalance-check`);
      expect(check.status).toBe(409);

      const res = await h.fetchJson(`${API}/recommendations`);
      expect(res.status).toBe(200);
      const items = (res.body as { items: { id: string; category: string; severity: string; title: string; advice: string; evidence: Record<string, unknown> }[] }).items;
      // Before: no item at all about the shards; the check's refusal was swallowed.
      const item = items.find((i) => i.category === 'shard_rebalance_unavailable');
      expect(item, JSON.stringify(items)).toBeDefined();
      expect(item?.severity).toBe('critical');
      expect(item?.advice).toMatch(/shard_003 \(10 slots: 0-9\)/);
      expect(item?.evidence).toMatchObject({ status: 409 });
    } finally {
      const latest = await h.sharding.slotMaps.current();
      await h.sharding.slotMaps.publish({ ...latest, version: latest.version + 1, assignments: current.assignments }, 'ops@example.com', 'restored');
    }
  }, 60_000);
});
