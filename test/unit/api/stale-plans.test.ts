/**
 * A plan of moves is served stale while its refreshes fail only for a few lifetimes of its
 * snapshot: past that the API answers the refresh's error (503 naming the shard) instead of a
 * plan measured before the shards changed.
 */
import { describe, expect, it } from 'vitest';
import type { ApiRequest } from '../../../functions/api/http.js';
import { createRouter } from '../../../functions/api/router.js';
import { API_PREFIX, scalingRoutes, STALE_LIFETIMES } from '../../../functions/api/routes.js';
import { UnavailableError, type RebalanceCheckView, type RecommendationsView, type ScalingApiPort } from '../../../functions/api/service.js';

const get = (path: string): ApiRequest => ({ method: 'GET', path: `${API_PREFIX}${path}`, query: {}, headers: {}, body: null, identity: { actor: 'test' }, requestId: 'r1' });

/** A port whose rebalance check and recommendations answer once, then fail as a dead shard makes them. */
function failingAfterFirst(): { port: ScalingApiPort; fail: () => void } {
  let failing = false;
  const plan = { needed: true, moves: [{ slot: 7 }] } as unknown as RebalanceCheckView;
  const recommendations = { generated_at: '2026-01-01T00:00:00.000Z', items: [] } as RecommendationsView;
  const answers: Partial<ScalingApiPort> = {
    rebalanceCheck: async () => {
      if (failing) throw new UnavailableError('cannot plan a rebalance while shards are unreachable: shard_002 (timeout)');
      return plan;
    },
    recommendations: async () => {
      if (failing) throw new UnavailableError('reading the history: the catalog did not answer');
      return recommendations;
    },
  };
  const port = new Proxy(answers as ScalingApiPort, {
    get: (_target, name: string) => answers[name as keyof ScalingApiPort] ?? (() => Promise.reject(new Error(`unexpected call of ${name}`))),
  });
  return { port, fail: () => (failing = true) };
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 0));

describe('stale plans while their refreshes fail', () => {
  for (const [path, option] of [
    ['/shards/rebalance-check', 'shardsMaxAgeMs'],
    ['/recommendations', 'recommendationsMaxAgeMs'],
  ] as const) {
    it(`GET ${path} serves the last answer for fewer than ${STALE_LIFETIMES} lifetimes, then answers the refresh error as 503`, async () => {
      let now = 0;
      const { port, fail } = failingAfterFirst();
      const router = createRouter(scalingRoutes(port, { [option]: 10_000, now: () => now }), { validateResponses: false });
      expect((await router.dispatch(get(path))).status).toBe(200);

      fail();
      now = STALE_LIFETIMES * 10_000 - 1;
      const stale = await router.dispatch(get(path));
      await settle();
      now = STALE_LIFETIMES * 10_000;
      const tooOld = await router.dispatch(get(path));

      expect(stale.status).toBe(200);
      expect(stale.headers['age']).toBe(String(STALE_LIFETIMES * 10 - 1));
      expect(tooOld.status).toBe(503);
      expect(tooOld.body).toContain(path === '/recommendations' ? 'catalog did not answer' : 'shard_002');
    });
  }
});
