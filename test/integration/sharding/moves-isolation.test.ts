import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeWithToken } from '../../../functions/adapters/postgres/replica-reader.js';
import { countSlot, documentsOf, keysInSlot, type MoveEnv, otherProcess, poolsWithSettings, seedUsers, startMoveEnv } from './fixtures/move-env.js';

/**
 * Writes to the sharded tables run at READ COMMITTED (shard migration 012, docs/sharding-spec.md
 * section 9). The fence and capture triggers read their tables with the writing transaction's
 * snapshot; at REPEATABLE READ or SERIALIZABLE that is the snapshot of its first statement, which
 * cannot see a fence or capture created after it, so such a write could be neither refused nor
 * captured, and a move's clean-up would delete it after it was acknowledged.
 */
describe('writes and transaction isolation', () => {
  let env: MoveEnv;
  const pools: pg.Pool[] = [];
  /** Pools whose login defaults to `isolation`, as an application's might. */
  const poolsAt = (isolation: string, max = 4): Map<string, pg.Pool> => poolsWithSettings(env, { default_transaction_isolation: isolation }, pools, max);
  const sides = async (slot: number) => {
    const home = await env.ownerOf(slot);
    const away = home === 'shard_a' ? 'shard_b' : 'shard_a';
    return { home, away, homePool: env.shards.get(home) as pg.Pool };
  };
  const copiesOf = async (owner: string): Promise<number> => {
    let n = 0;
    for (const pool of env.shards.values()) n += (await documentsOf(pool, [owner])).size;
    return n;
  };

  beforeAll(async () => {
    env = await startMoveEnv();
  }, 120_000);
  afterAll(async () => {
    await Promise.all(pools.splice(0).map((p) => p.end()));
    await env?.stop();
  });

  it.each([
    { isolation: 'read committed', slot: 1402 },
    { isolation: 'repeatable read', slot: 1401 },
    { isolation: 'serializable', slot: 1404 },
  ])('withShardWrite over a login defaulting to $isolation: a write that began before a move and writes after it lands on the new owner', async ({ isolation, slot }) => {
    const { home, away, homePool } = await sides(slot);
    const [user, newcomer] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(homePool, slot, [user], 2);
    const { writer } = await otherProcess(env, { ttlMs: 0, primaries: poolsAt(isolation) });
    let moved!: () => void;
    const moveDone = new Promise<void>((resolve) => (moved = resolve));
    let began!: () => void;
    const writerBegan = new Promise<void>((resolve) => (began = resolve));
    // A sign-up whose transaction reads first (on the old owner), and writes once the move is over.
    const signUp = writer.withShardWrite(newcomer, async ({ client, slot: s }) => {
      await client.query('select count(*) from documents where owner_id = $1', [user]);
      began();
      await moveDone;
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'new@example.com', 'new')`, [newcomer, s]);
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'acknowledged')`, [newcomer, s]);
    });
    await writerBegan;
    const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 5000 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to: away, createdBy: 'test' })).id);
    moved();
    const written = await signUp;
    expect(job.state).toBe('done');
    expect(written.shardId).toBe(away);
    expect(written.attempts).toBeGreaterThan(1);
    expect(await copiesOf(newcomer)).toBe(1);
    expect(await countSlot(homePool, slot)).toEqual({ users: 0, documents: 0 });
    expect(home).not.toBe(away);
  });

  it('refuses a raw REPEATABLE READ write that began before the move and commits while the source is fenced, and nothing is lost', async () => {
    const slot = 1403;
    const { away, homePool } = await sides(slot);
    const [user, newcomer] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(homePool, slot, [user], 2);
    const rr = poolsAt('repeatable read', 1).get(await env.ownerOf(slot)) as pg.Pool;
    const client = await rr.connect();
    try {
      // A writer in another language: its transaction reads before the move starts.
      await client.query('begin');
      await client.query('select count(*) from documents where owner_id = $1', [user]);
      let outcome: string | undefined;
      const mover = env.mover({
        readerGraceMs: 0,
        drainTimeoutMs: 5000,
        async hook(point) {
          // The new owner is published and the source is still fenced: the writer signs a user up.
          if (point !== 'published') return;
          outcome = await client
            .query(
              `insert into users (id, slot, email, display_name) values ('${newcomer}', ${slot}, 'new@example.com', 'new');
               insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), '${newcomer}', ${slot}, 'acknowledged'); commit`,
            )
            .then(
              () => 'committed',
              async (err: { code?: string }) => {
                await client.query('rollback');
                return `refused ${err.code ?? ''}`;
              },
            );
        },
      });
      const job = await mover.run((await mover.plan({ kind: 'slot', slot, to: away, createdBy: 'test' })).id);
      expect(job.state).toBe('done');
      expect(outcome).toBe('refused CAF05');
      expect(await copiesOf(newcomer)).toBe(0);
      expect((await documentsOf(env.shards.get(away) as pg.Pool, [user])).size).toBe(2);
    } finally {
      client.release();
    }
  });

  it.each(['repeatable read', 'serializable'])('writeWithToken over a login defaulting to %s writes at READ COMMITTED and answers its token', async (isolation) => {
    const slot = isolation === 'serializable' ? 1407 : 1406;
    const { home, homePool } = await sides(slot);
    const [user] = keysInSlot(slot, 1) as [string];
    const pool = poolsAt(isolation, 1).get(home) as pg.Pool;

    const written = await writeWithToken(pool, async (c) => {
      await c.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'w@example.com', 'w')`, [user, slot]);
      return (await c.query<{ level: string }>(`select current_setting('transaction_isolation') as level`)).rows[0]?.level;
    });

    // Before: begun with the login's default, the write was refused (CAF05, shard migration 012).
    expect(written.result).toBe('read committed');
    expect(written.token).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(await countSlot(homePool, slot)).toEqual({ users: 1, documents: 0 });
  });

  it('refuses raw writes at REPEATABLE READ and SERIALIZABLE even with no move, names the level, and still serves reads at any level', async () => {
    const slot = 1405;
    const { home, homePool } = await sides(slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(homePool, slot, [user], 1);
    for (const isolation of ['repeatable read', 'serializable']) {
      const pool = poolsAt(isolation, 1).get(home) as pg.Pool;
      const refused = await pool.query(`update documents set title = 'changed' where owner_id = $1`, [user]).then(
        () => null,
        (err: { code?: string; message: string }) => err,
      );
      expect(refused?.code).toBe('CAF05');
      expect(refused?.message).toContain(isolation.toUpperCase());
      const { rows } = await pool.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user]);
      expect(rows[0]?.n).toBe(1);
    }
    const { rows } = await homePool.query<{ title: string }>('select title from documents where owner_id = $1', [user]);
    expect(rows.map((r) => r.title)).not.toContain('changed');
  });
});
