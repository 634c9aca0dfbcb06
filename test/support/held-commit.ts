/**
 * A pool whose clients' transactions are held at their COMMIT until `gate` settles, `held` called
 * there (the transaction's statements made and its row locks taken, not committed): the instant a
 * race test needs another session to wait on those rows (a cancel request's update of a job row,
 * a fence review's settle of a `write_fences` row). With `holds`, only a transaction that sent a
 * statement it matches is held; the others commit as usual.
 *
 * @example
 * ```ts
 * const pool = heldAtCommit(env.catalog, () => updated(), gate);
 * const review = heldAtCommit(shardPool, reviewHeld, letCommit, (sql) => /^\s*update write_fences/.test(sql));
 * ```
 */
import type pg from 'pg';

export function heldAtCommit(pool: pg.Pool, held: () => void, gate: Promise<void>, holds: (sql: string) => boolean = () => true): pg.Pool {
  const bound = <T extends object>(target: T, prop: string | symbol): unknown => {
    const value = Reflect.get(target, prop) as unknown;
    return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
  };
  return new Proxy(pool, {
    get(target, prop): unknown {
      if (prop !== 'connect') return bound(target, prop);
      return async () => {
        const client = await target.connect();
        let matched = false;
        return new Proxy(client, {
          get(c, p): unknown {
            if (p !== 'query') return bound(c, p);
            return async (text: unknown, values?: unknown) => {
              if (typeof text === 'string' && text !== 'commit' && holds(text)) matched = true;
              if (text === 'commit' && matched) {
                matched = false;
                held();
                await gate;
              }
              return c.query(text as string, values as unknown[]);
            };
          },
        });
      };
    },
  });
}
