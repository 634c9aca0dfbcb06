/**
 * Issue #15 (h113, review of h110's 48ef7ab): a directory move's rollback closes the key's `open`
 * row on a source whose slot row disowns the key (`PgMovePort.closeKeyRowOverDisowningSlot`) only
 * where the source holds none of the key's rows, counted after the row is locked FOR UPDATE: the
 * key's writers in flight hold it FOR SHARE, and the count is to see what they wrote once they
 * have committed. At a shard whose `default_transaction_isolation` is REPEATABLE READ (an RDS
 * parameter group, an operator's `ALTER ROLE ... SET`), the close's transaction, begun with a bare
 * `begin`, read every statement in the snapshot of its first (the permit's hold, before the lock):
 * a writer that held the row while the close waited for it committed a new user of the key unseen
 * by the count, and the row was turned `moved` over it, the acknowledged user on the source behind
 * a row saying it went where the catalog routes the key, out of every reader's sight.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { countSlot, fenceState, keysInSlot, type MoveEnv, outcomeOf, startMoveEnv, threeShardsOf, unitFenceState } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3, isolation: 'repeatable read' });
});
afterAll(async () => {
  await env?.stop();
});

/** The close's lock of the key's row, as move-port.ts words it. */
const CLOSE_LOCK = /for update of k\b/;

/**
 * `pool` whose clients run `before` once, just before the first statement matching `match` is sent
 * (the statement then waits for whatever `before` left holding the row).
 */
function beforeStatement(pool: pg.Pool, match: RegExp, before: () => Promise<void>): pg.Pool {
  let fired = false;
  return new Proxy(pool, {
    get(target, prop, receiver): unknown {
      if (prop !== 'connect') return Reflect.get(target, prop, receiver) as unknown;
      return async (): Promise<pg.PoolClient> => {
        const client = await target.connect();
        const query = client.query.bind(client) as (...a: unknown[]) => Promise<unknown>;
        (client as unknown as { query: (...a: unknown[]) => Promise<unknown> }).query = async (...args: unknown[]): Promise<unknown> => {
          const text = typeof args[0] === 'string' ? args[0] : (args[0] as { text?: string } | undefined)?.text;
          if (!fired && text !== undefined && match.test(text)) {
            fired = true;
            await before();
          }
          return query(...args);
        };
        const release = client.release.bind(client);
        client.release = (err?: Error | boolean): void => {
          (client as unknown as { query: unknown }).query = query;
          release(err);
        };
        return client;
      };
    },
  });
}

describe("a directory move's rollback closing the key's open row at a REPEATABLE READ source (h113)", () => {
  it("counts the key's rows a writer holding the row committed while the close waited for it, and leaves the row open over them: before, it turned it moved over them", async () => {
    // As moves-slot-source-moved.test.ts, "a directory move's rollback over a source whose slot
    // row had disowned the key": the key (no rows) moves A -> B; its slot is given, empty, to B by a
    // map by hand after the plan (A's slot row `moved` to B), and the run inserts the key's `open`
    // row on A. It dies after its copy; an operator pins the key to a third shard C: the next run
    // rolls the move back as failed and closes A's row, which refuses the writes no route sends there.
    const slot = 1731;
    const { from, to, third } = await threeShardsOf(env, slot);
    const source = env.shards.get(from) as pg.Pool;
    const [key] = keysInSlot(slot, 1) as [string];
    const dying = env.mover({
      readerGraceMs: 0,
      hook(point) {
        if (point === 'copied') throw new Error('test: the run dies after its copy');
      },
    });
    const job = await dying.plan({ kind: 'directory', key, to, createdBy: 'test' });
    const store = new SlotMapStore(env.catalog, { shardPools: env.shards });
    await store.publishByHand(moveSlots(await store.current(), [slot], to), 'the slot given away empty');
    expect(await fenceState(source, slot)).toBe('moved');
    await expect(dying.run(job.id)).rejects.toThrow(/dies after its copy/);
    expect(await unitFenceState(source, 'directory', key)).toBe('open');
    await env.directory.set(key, third, 'ops@example.com');

    // A writer still holding the map from before the hand change writes a new user of the key on
    // A through its `open` row (holding the row FOR SHARE, as the fence trigger does) just as the
    // close begins, and commits once the close waits for the row.
    const writer = await source.connect();
    writer.on('error', () => undefined);
    let committed: Promise<unknown> = Promise.resolve();
    let waited = false;
    const watcher = await source.connect();
    watcher.on('error', () => undefined);
    try {
      const wrapped = beforeStatement(source, CLOSE_LOCK, async () => {
        await writer.query('begin isolation level read committed');
        await writer.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'a late writer')`, [key, slot, `${key}@example.com`]);
        committed = (async () => {
          // The close's lock waits for the writer: then it commits.
          for (let i = 0; i < 600; i += 1) {
            const { rows } = await watcher.query<{ n: number }>(
              `select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%for update of k%' and datname = current_database()`,
            );
            if ((rows[0]?.n ?? 0) > 0) {
              waited = true;
              break;
            }
            await new Promise((r) => setTimeout(r, 50));
          }
          await writer.query('commit');
        })();
      });
      const mover = env.mover({ readerGraceMs: 0, shards: new Map([...env.shards].map(([id, pool]) => [id, id === from ? wrapped : pool])) });
      const ran = await outcomeOf(mover.run(job.id));
      await committed;
      // The close's lock did wait for the writer's transaction.
      expect(waited).toBe(true);
      expect(`${ran}; ${(await mover.get(job.id)).state}`).toBe('ended: failed; failed');
    } finally {
      writer.release();
      watcher.release();
    }
    // The writer's user was acknowledged on A over the key's `open` row.
    expect(await countSlot(source, slot)).toEqual({ users: 1, documents: 0 });
    // Before the fix: A's row turned `moved` to C over that user, counted in the snapshot taken
    // before the writer committed: the acknowledged user behind a row saying the key went to C,
    // where no row of it is, read by no one (CAF02). Left `open` over rows of the key, as the
    // review leaves such a row to the operator.
    expect(await unitFenceState(source, 'directory', key)).toBe('open');
  });
});
