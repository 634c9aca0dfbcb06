/**
 * A pool as if a network round trip away: `rttMs` before each statement and each connection, the
 * statements sent counted in `sent.n`. For cost tests that count what a code path sends (the
 * fence review's listing) where a local server answers in microseconds and hides per-statement
 * round trips that RDS would charge.
 *
 * @example
 * ```ts
 * const sent = { n: 0 };
 * await listFences({ catalog: distant(env.catalog, 1, sent), ... });
 * expect(sent.n).toBeLessThan(100);
 * ```
 */
import type pg from 'pg';

export function distant(pool: pg.Pool, rttMs: number, sent: { n: number }): pg.Pool {
  const wait = (): Promise<void> => new Promise((r) => setTimeout(r, rttMs));
  const through = <T extends object>(target: T, query: (...a: unknown[]) => Promise<unknown>): T =>
    new Proxy(target, {
      get(t, prop) {
        if (prop === 'query')
          return async (...a: unknown[]) => {
            sent.n += 1;
            await wait();
            return query.call(t, ...a);
          };
        if (prop === 'connect' && t === (pool as object))
          return async () => {
            const c = await pool.connect();
            await wait();
            return through(c, c.query as (...a: unknown[]) => Promise<unknown>);
          };
        const value = Reflect.get(t, prop, t) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(t) : value;
      },
    });
  return through(pool, pool.query as (...a: unknown[]) => Promise<unknown>);
}
