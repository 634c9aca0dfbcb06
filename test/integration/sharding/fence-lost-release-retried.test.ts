import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { fenceState, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * Review of 0b4844d (issue #15): a source whose fence row is `open` at the release (a promoted
 * replica that never received the fence's commit) took writes of the unit after the final
 * catch-up; the release drains the source's change log into the target before it opens. That
 * decision rested on the release UPDATE's `held` alone, which a release repeated after its own
 * drain failed (the run's release-forward after an error, or a resumed run) answers true: the
 * row is then `moved` by this job. Such a repeat opened the target without the drain, and the
 * logged write was on neither shard once the source was cleaned up.
 *
 * The lost fence commit is stood in for on one server: the fence row set back to `open` after
 * the flip (as the promoted replica has it), a write taken there (logged by the capture, still
 * on), and one statement of the drain on the target failing as a dropped connection.
 */
let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

/** `pool`, except that the first `insert into documents` sent on a lent client once `armed()` fails as a dropped connection. */
function failingWhenArmed(pool: pg.Pool, armed: () => boolean): { pool: pg.Pool; failed: () => boolean } {
  let failed = false;
  const wrap = (client: pg.PoolClient): pg.PoolClient =>
    new Proxy(client, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target) as unknown;
        if (prop !== 'query') return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        return (...args: unknown[]) => {
          if (!failed && armed() && typeof args[0] === 'string' && /^\s*insert into documents /.test(args[0])) {
            failed = true;
            return Promise.reject(new Error('test: Connection terminated unexpectedly'));
          }
          return (target.query as (...a: unknown[]) => unknown)(...args);
        };
      },
    });
  const proxy = new Proxy(pool, {
    get(target, prop) {
      if (prop === 'connect') return async () => wrap(await target.connect());
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { pool: proxy, failed: () => failed };
}

describe('a release whose drain failed, repeated', () => {
  it('still drains the write the source took with its fence row open before the target opens', async () => {
    const slot = 1330;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    let armed = false;
    let docX = '';
    const flaky = failingWhenArmed(target, () => armed);
    const mover = new Mover({
      catalog: env.catalog,
      shards: new Map([...env.shards, [to, flaky.pool]]),
      slotMaps: env.slotMaps,
      directory: env.directory,
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'published') return;
        // The source as a replica promoted without the fence's commit: the fence row open, and a
        // write of the unit taken after the final catch-up (the capture logs it).
        await source.query("update write_fences set state = 'open', job_id = null where kind = 'slot' and unit_id = $1", [String(slot)]);
        const { rows } = await source.query<{ id: string }>(
          "insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'X', '{}'::jsonb) returning id::text as id",
          [user, slot],
        );
        docX = rows[0]?.id ?? '';
        armed = true;
      },
    });
    const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

    // The drain's upsert on the target fails once: the run releases forward again and stops.
    await mover.run(job.id).catch(() => undefined);
    expect(flaky.failed()).toBe(true);
    // Resumed (a later run of the job): done.
    const done = await env.mover({ readerGraceMs: 0 }).run(job.id);
    expect(done.state).toBe('done');

    const held = async (pool: pg.Pool) => (await pool.query('select 1 from documents where id = $1', [docX])).rowCount;
    expect({ source: await fenceState(source, slot), target: await fenceState(target, slot) }).toEqual({ source: 'moved', target: 'open' });
    // Without the drain on the repeat, X was on neither shard.
    expect({ onTarget: await held(target), onSource: await held(source) }).toEqual({ onTarget: 1, onSource: 0 });
  }, 120_000);
});
