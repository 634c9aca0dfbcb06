import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DirectoryError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { SlotMapError, SlotMapVersionConflictError } from '../../../functions/core/sharding/errors.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { buildSlotMap, moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

const SHARDING_MIGRATIONS = fileURLToPath(new URL('../../../functions/adapters/postgres/migrations/sharding', import.meta.url));
const SHARD_MIGRATIONS = fileURLToPath(new URL('../../../functions/adapters/postgres/migrations/shard', import.meta.url));
const SHARDS = ['shard_001', 'shard_002', 'shard_003'];
const config = (extra: Record<string, unknown> = {}) =>
  parseShardingConfig({ shards: SHARDS.map((id, i) => ({ shard_id: id, database_url: `postgresql://app:pw@db${i}:5432/ca_dms` })), default_shard: 'shard_001', ...extra });
const initial = buildSlotMap(SHARDS.map((shardId) => ({ shardId, weight: 1 })));

describe('catalog stores for routing (real PostgreSQL)', () => {
  let server: TestPostgres;
  let pool: pg.Pool;

  beforeAll(async () => {
    server = await startTestPostgres();
    pool = new pg.Pool({ connectionString: server.url, max: 6 });
    await runMigrations(pool, 'sharding', SHARDING_MIGRATIONS);
  });
  afterAll(async () => {
    await pool.end();
    await server.stop();
  });
  beforeEach(async () => {
    await pool.query('truncate catalog.slot_maps, catalog.shard_directory');
  });

  describe('SlotMapStore', () => {
    it('initialises the first version once, however many processes start together', async () => {
      const store = new SlotMapStore(pool);
      const maps = await Promise.all([1, 2, 3, 4].map(() => store.initialise(initial, 'boot', 'initial map')));
      expect(maps.every((m) => m.version === 1)).toBe(true);
      const { rows } = await pool.query('select count(*)::int as n from catalog.slot_maps');
      expect(rows[0]).toEqual({ n: 1 });
    });

    it("initialises the first version once while another process's first map is being committed, its login defaulting to REPEATABLE READ", async () => {
      // Every process of a deployment starting on a new catalog (the API's, the moves worker's)
      // initialises the map; the other's insert is in flight, not yet committed.
      const repeatable = new pg.Pool({ connectionString: server.url, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
      const other = await pool.connect();
      try {
        await other.query('begin');
        await new SlotMapStore(pool).initialise(initial, 'boot', 'initial map', other);
        const starting = new SlotMapStore(repeatable).initialise(initial, 'boot', 'initial map').catch((e: unknown) => e);
        for (let i = 0; i < 500; i++) {
          const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%catalog.slot_maps%'`);
          if (rows.length > 0) break;
          await new Promise((r) => setTimeout(r, 10));
        }
        await other.query('commit');

        // Before: the insert's snapshot did not hold the row it conflicted with: 40001, and the
        // process failed to start its sharding layer.
        expect(await starting).toEqual(initial);
      } finally {
        other.release();
        await repeatable.end();
      }
    });

    it('returns the latest published map exactly as it was published', async () => {
      const store = new SlotMapStore(pool);
      await store.initialise(initial);
      const v2 = moveSlots(initial, [0, 1, 2], 'shard_003');
      await store.publish(v2, 'mover', 'move slots 0-2');
      expect(await store.current()).toEqual(v2);
      expect((await store.latest())?.createdBy).toBe('mover');
    });

    it('hands a polling router the latest map only when there is a newer one', async () => {
      const store = new SlotMapStore(pool);
      await store.initialise(initial);
      expect(await store.currentIfNewer(1)).toBeNull();
      const v2 = moveSlots(initial, [9], 'shard_002');
      await store.publish(v2, 'mover', 'move slot 9');
      expect(await store.currentIfNewer(1)).toEqual(v2);
    });

    it('refuses a version that does not follow the current one', async () => {
      const store = new SlotMapStore(pool);
      await store.initialise(initial);
      const skipping = { ...moveSlots(initial, [5], 'shard_002'), version: 3 };
      await expect(store.publish(skipping, 'mover', 'skip')).rejects.toMatchObject({ name: 'SlotMapVersionConflictError', expectedVersion: 2, attemptedVersion: 3 });
      expect((await store.current()).version).toBe(1);
    });

    it('lets exactly one of two racing publishers win', async () => {
      const store = new SlotMapStore(pool);
      await store.initialise(initial);
      const results = await Promise.allSettled([
        store.publish(moveSlots(initial, [10], 'shard_002'), 'mover-a', 'race'),
        store.publish(moveSlots(initial, [11], 'shard_003'), 'mover-b', 'race'),
      ]);
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      const loser = results.find((r) => r.status === 'rejected');
      expect(loser?.status === 'rejected' && loser.reason).toBeInstanceOf(SlotMapVersionConflictError);
      expect((await store.current()).version).toBe(2);
    });

    it('publishes inside the caller transaction, so a rollback publishes nothing', async () => {
      const store = new SlotMapStore(pool);
      await store.initialise(initial);
      const client = await pool.connect();
      try {
        await client.query('begin');
        await store.publish(moveSlots(initial, [1], 'shard_003'), 'mover', 'abandoned', client);
        await client.query('rollback');
      } finally {
        client.release();
      }
      expect((await store.current()).version).toBe(1);
    });

    it('refuses a malformed map and one without an author', async () => {
      const store = new SlotMapStore(pool);
      await store.initialise(initial);
      await expect(store.publish({ version: 2, slotCount: 4096, assignments: ['shard_001'] }, 'x', 'y')).rejects.toBeInstanceOf(SlotMapError);
      await expect(store.publish(moveSlots(initial, [1], 'shard_002'), ' ', 'why')).rejects.toThrow(/by must not be empty/);
    });

    it('says so when no map was ever published', async () => {
      await expect(new SlotMapStore(pool).current()).rejects.toThrow(/no slot map has been published yet/);
    });

    it('keeps every version with who published it and why', async () => {
      const store = new SlotMapStore(pool);
      await store.initialise(initial, 'boot', 'first');
      await store.publish(moveSlots(initial, [1], 'shard_002'), 'mover', 'second');
      expect((await store.history()).map((h) => [h.version, h.createdBy, h.reason])).toEqual([
        [2, 'mover', 'second'],
        [1, 'boot', 'first'],
      ]);
      expect((await store.get(1))?.map).toEqual(initial);
    });
  });

  describe('DirectoryStore', () => {
    it('pins a key to a shard and bumps the entry version on every change', async () => {
      const directory = new DirectoryStore(pool, { shards: SHARDS });
      const first = await directory.set('tenant-1', 'shard_002', 'ops');
      const second = await directory.set('tenant-1', 'shard_003', 'ops');
      expect([first.version, second.version]).toEqual([1, 2]);
      expect(await directory.get('tenant-1')).toBe('shard_003');
      expect(await directory.entry('tenant-1')).toMatchObject({ shardId: 'shard_003', updatedBy: 'ops' });
    });

    it('serves reads from its cache until the TTL passes, then sees other writers', async () => {
      let now = 0;
      const reader = new DirectoryStore(pool, { ttlMs: 5_000, now: () => now });
      const writer = new DirectoryStore(pool);
      await writer.set('tenant-2', 'shard_001', 'ops');
      expect(await reader.get('tenant-2')).toBe('shard_001');
      await writer.set('tenant-2', 'shard_002', 'ops');
      now = 4_999;
      expect(await reader.get('tenant-2')).toBe('shard_001');
      now = 5_000;
      expect(await reader.get('tenant-2')).toBe('shard_002');
    });

    it('caches misses too, and forgets its own writes at once', async () => {
      const directory = new DirectoryStore(pool, { ttlMs: 60_000, now: () => 0 });
      expect(await directory.get('tenant-3')).toBeNull();
      await pool.query("insert into catalog.shard_directory (key, shard_id, updated_by) values ('tenant-3', 'shard_003', 'psql')");
      expect(await directory.get('tenant-3')).toBeNull();
      await directory.set('tenant-3', 'shard_002', 'ops');
      expect(await directory.get('tenant-3')).toBe('shard_002');
      await directory.delete('tenant-3');
      expect(await directory.get('tenant-3')).toBeNull();
    });

    it('does not cache what a lookup read before a write committed when the lookup ends after the write was forgotten', async () => {
      // Lookups go through a pool whose answers the test can hold back once they arrived: read
      // before the write commits, handed over after.
      let held: { answered: () => void; until: Promise<void> } | null = null;
      const slowReads = {
        query: (async (...args: unknown[]) => {
          const result: unknown = await (pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
          const hold = held;
          if (hold) {
            hold.answered();
            await hold.until;
          }
          return result;
        }) as unknown as pg.Pool['query'],
      };
      const directory = new DirectoryStore(slowReads, { ttlMs: 60_000, now: () => 0, shards: SHARDS });
      await directory.set('tenant-6', 'shard_001', 'ops');
      const client = await pool.connect();
      let during: string | null;
      try {
        await client.query('begin');
        await directory.set('tenant-6', 'shard_002', 'ops', client);
        let release!: () => void;
        let answered!: () => void;
        const read = new Promise<void>((r) => (answered = r));
        held = { answered, until: new Promise<void>((r) => (release = r)) };
        const lookup = directory.get('tenant-6');
        await read;
        held = null;
        await client.query('commit');
        // What the writer of a transaction does once it committed (the mover does so after its flip).
        directory.invalidate('tenant-6');
        release();
        during = await lookup;
      } finally {
        client.release();
      }

      // Before: the lookup, read before the commit, cached shard_001 after the invalidation, served for its whole TTL.
      expect(during).toBe('shard_001');
      expect(await directory.get('tenant-6')).toBe('shard_002');
    });

    it('keeps a UUID key in its canonical form, so every spelling finds the same pin', async () => {
      const directory = new DirectoryStore(pool, { shards: SHARDS });
      const id = '9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d';
      await directory.set(`{${id.toUpperCase()}}`, 'shard_002', 'ops');
      expect(await new DirectoryStore(pool).get(id)).toBe('shard_002');
      expect((await directory.entry(`urn:uuid:${id}`))?.key).toBe(id);
      expect(await directory.delete(id.replaceAll('-', ''))).toBe(true);
      expect(await new DirectoryStore(pool).get(id)).toBeNull();
    });

    it('refuses a shard that is not configured', async () => {
      await expect(new DirectoryStore(pool, { shards: SHARDS }).set('tenant-4', 'shard_404', 'ops')).rejects.toBeInstanceOf(DirectoryError);
      expect(await new DirectoryStore(pool).get('tenant-4')).toBeNull();
    });

    it('lists entries in key order, per shard, a page at a time', async () => {
      const directory = new DirectoryStore(pool);
      for (const [k, s] of [['b', 'shard_001'], ['a', 'shard_002'], ['c', 'shard_002'], ['d', 'shard_002']] as const) await directory.set(k, s, 'ops');
      const first = await directory.page({ shardId: 'shard_002', limit: 2 });
      expect(first.entries.map((e) => e.key)).toEqual(['a', 'c']);
      expect(first.next).toBe('c');
      expect(await directory.page({ shardId: 'shard_002', after: 'c' })).toMatchObject({ entries: [{ key: 'd' }], next: null });
      expect(await directory.delete('nope')).toBe(false);
    });

    it('reads past the 1,000 entries of a page instead of stopping there', async () => {
      const directory = new DirectoryStore(pool);
      await pool.query(
        `insert into catalog.shard_directory (key, shard_id, updated_by) select 'many-' || lpad(g::text, 4, '0'), 'shard_003', 'test' from generate_series(1, 1205) g`,
      );
      const first = await directory.page({ shardId: 'shard_003' });
      expect(first.entries).toHaveLength(1000);
      expect(first.next).toBe('many-1000');
      expect((await directory.page({ shardId: 'shard_003', after: first.next as string })).entries).toHaveLength(205);
      const all = await directory.all({ shardId: 'shard_003' });
      expect(all.map((e) => e.key)).toEqual(Array.from({ length: 1205 }, (_, i) => `many-${String(i + 1).padStart(4, '0')}`));
      await expect(directory.page({ limit: 1001 })).rejects.toBeInstanceOf(DirectoryError);
    });
  });

  describe('routing through the catalog', () => {
    it('overrides the hash with a directory entry (a hot tenant on its own shard)', async () => {
      const directory = new DirectoryStore(pool);
      const key = 'tenant-hot';
      const hashed = initial.assignments[slotOf(key)] as string;
      const target = SHARDS.find((s) => s !== hashed) as string;
      await directory.set(key, target, 'ops');
      const router = ShardRouter.fromConfig(config(), { slotMap: await new SlotMapStore(pool).initialise(initial), directory });
      expect(await router.resolve(key)).toMatchObject({ shardId: target, source: 'directory', slot: slotOf(key) });
      expect(await router.resolve('tenant-cold')).toMatchObject({ source: 'hash' });
    });

    it('falls back to the hash for keys outside the directory under directory_based', async () => {
      const router = ShardRouter.fromConfig(config({ strategy: 'directory_based', directory: { fallback: 'hash' } }), { directory: new DirectoryStore(pool) });
      expect(await router.resolve('user-x')).toMatchObject({ shardId: initial.assignments[slotOf('user-x')], source: 'hash', strategy: 'directory_based' });
    });

    it('rejects keys outside the directory when the fallback is reject', async () => {
      const directory = new DirectoryStore(pool);
      await directory.set('user-in', 'shard_003', 'ops');
      const router = ShardRouter.fromConfig(config({ strategy: 'directory_based', directory: { fallback: 'reject' } }), { directory });
      expect(await router.resolve('user-in')).toMatchObject({ shardId: 'shard_003', source: 'directory' });
      await expect(router.resolve('user-out')).rejects.toMatchObject({ reason: 'not-in-directory' });
    });

    // The documents.owner_id foreign key fails if a document lands on a shard without its owner.
    it('keeps every user and all their documents on one shard, under the user slot', async () => {
      const ids = ['coloc_a', 'coloc_b'];
      for (const id of ids) await pool.query(`create database ${id}`);
      const shardPools = ids.map((id) => new pg.Pool({ connectionString: server.urlFor(id), max: 2 }));
      try {
        for (const p of shardPools) await runMigrations(p, 'shard', SHARD_MIGRATIONS);
        const coloc = parseShardingConfig({ shards: ids.map((id) => ({ shard_id: id, database_url: server.urlFor(id) })), default_shard: 'coloc_a' });
        const router = ShardRouter.fromConfig(coloc);
        const poolOf = (shardId: string): pg.Pool => shardPools[ids.indexOf(shardId)] as pg.Pool;
        const users = Array.from({ length: 40 }, () => randomUUID());
        for (const userId of users) {
          const user = router.route(userId);
          await poolOf(user.shardId).query("insert into users (id, slot, email, display_name) values ($1, $2, $3, 'u')", [userId, user.slot, `${userId}@example.com`]);
          for (let d = 0; d < 3; d++) {
            const doc = router.routeDocument({ ownerId: userId });
            await poolOf(doc.shardId).query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'doc')", [randomUUID(), userId, doc.slot]);
          }
        }
        const perShard = await Promise.all(
          shardPools.map(async (p) => (await p.query<{ n: number }>('select count(*)::int as n from documents d join users u on u.id = d.owner_id and u.slot = d.slot')).rows[0]?.n),
        );
        expect(perShard.reduce((a, b) => (a ?? 0) + (b ?? 0), 0)).toBe(users.length * 3);
        expect(perShard.every((n) => (n ?? 0) > 0)).toBe(true);
      } finally {
        await Promise.all(shardPools.map((p) => p.end()));
      }
    });
  });
});
