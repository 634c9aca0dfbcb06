import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DeadlinePassedError } from '../../../functions/adapters/postgres/deadline.js';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { captureWriteToken, ReplicaReader, writeWithToken, type FailoverEvent } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { withAdmin } from '../../support/postgres.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { keysInSlot, seedUsers } from './fixtures/move-env.js';

const SHARD = 'shard_001';
const REPLICA_1 = `${SHARD}/replica-1`;
const REPLICA_2 = `${SHARD}/replica-2`;
const PRIMARY = `${SHARD}/primary`;
const generous: FreshnessBounds = { maxLagSeconds: 60, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 60_000 };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Waits until `holds()` (polled every 25 ms) or until `ms` have passed, whichever comes first. */
const within = async (ms: number, holds: () => boolean): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!holds() && Date.now() < deadline) await sleep(25);
};
const migrations = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations');

describe('reads from streaming replicas', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;
  const readers: ReplicaReader[] = [];

  const newReader = (bounds: FreshnessBounds, intervalMs = 60_000, onFailover?: (e: FailoverEvent) => void): ReplicaReader => {
    const reader = new ReplicaReader(pools, { bounds, intervalMs, probeTimeoutMs: 1000, ...(onFailover ? { onFailover } : {}) });
    readers.push(reader);
    return reader;
  };
  const replica = (i: number) => {
    const r = cluster.shards[0]?.replicas[i];
    if (!r) throw new Error('cluster has no such replica');
    return r;
  };
  const insertUser = async (): Promise<{ id: string; token: string }> => {
    const id = randomUUID();
    const { token } = await writeWithToken(pools.primary(SHARD).pool, (c) =>
      c.query("insert into users (id, slot, email, display_name) values ($1, 7, 'a@example.org', 'A')", [id]),
    );
    return { id, token };
  };
  const catchUpAll = async (): Promise<void> => {
    await Promise.all(cluster.shards.flatMap((s) => s.replicas.map((r) => r.waitForCatchUp())));
  };

  /**
   * The cluster of the block 'with a shard of its own whose primary goes down' (at the end),
   * started beside this one instead of after every other test: its hook awaits it.
   */
  let singleStarting: Promise<TestShardCluster> | undefined;
  beforeAll(async () => {
    singleStarting = startShardCluster({ shards: 1, replicasPerShard: 1 });
    singleStarting.catch(() => undefined); // awaited (and so reported) by that block's hook
    cluster = await startShardCluster({ shards: 2, replicasPerShard: 2, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 4, connectionTimeoutMillis: 1000 });
  });
  afterEach(async () => {
    for (const r of readers.splice(0)) r.stop();
    for (const r of cluster.shards.flatMap((s) => s.replicas)) {
      await r.startReplica();
      await r.resumeReplay();
    }
    await catchUpAll();
  });
  afterAll(async () => {
    await pools?.end();
    await cluster?.stop();
    // Stopped by its block's afterAll unless that block never ran (a filtered run).
    await (await singleStarting?.catch(() => undefined))?.stop();
  });

  it('builds replicas that are in recovery and replay what the primary commits', async () => {
    const { id } = await insertUser();
    await replica(0).waitForCatchUp();
    const client = new pg.Client({ connectionString: replica(0).url });
    await client.connect();
    const { rows } = await client.query<{ rec: boolean; n: number }>('select pg_is_in_recovery() as rec, (select count(*)::int from users where id = $1) as n', [id]);
    await client.end();
    expect(rows[0]).toEqual({ rec: true, n: 1 });
  });

  it('serves reads from a caught-up replica even after the primary has been idle longer than the lag bound', async () => {
    await catchUpAll();
    const reader = newReader({ ...generous, maxLagSeconds: 1 });
    await sleep(1500);
    await reader.refresh();
    const { servedBy } = await reader.query(SHARD, 'select 1 as one');
    expect(servedBy).toMatch(/^shard_001\/replica-\d$/);
    expect(reader.replicaStates(SHARD).map((s) => s.state.lagSeconds)).toEqual([0, 0]);
  });

  it('sends reads to the least lagged replica when replay is paused on the other', async () => {
    await replica(0).pauseReplay();
    await insertUser();
    await replica(1).waitForCatchUp();
    const reader = newReader(generous);
    await reader.refresh();
    const { servedBy } = await reader.query(SHARD, 'select 1');
    expect(servedBy).toBe(REPLICA_2);
    const lagging = reader.replicaStates(SHARD).find((s) => s.state.nodeId === REPLICA_1);
    expect(lagging?.state.lagBytes).toBeGreaterThan(0n);
  });

  it('sends reads to the primary when every replica lags more bytes than allowed', async () => {
    await Promise.all([replica(0).pauseReplay(), replica(1).pauseReplay()]);
    await insertUser();
    await sleep(300); // let the replicas receive (not replay) the WAL
    const reader = newReader({ ...generous, maxLagBytes: 0 });
    await reader.refresh();
    const { servedBy } = await reader.query(SHARD, 'select 1');
    expect(servedBy).toBe(PRIMARY);
    expect(reader.replicaStates(SHARD).map((s) => s.ineligible)).toEqual([expect.stringMatching(/^lag \d+ bytes/), expect.stringMatching(/^lag \d+ bytes/)]);
  });

  it('sends reads to the primary when every replica lags more seconds than allowed', async () => {
    await insertUser();
    await catchUpAll();
    await Promise.all([replica(0).pauseReplay(), replica(1).pauseReplay()]);
    await sleep(1100);
    await insertUser();
    await sleep(300);
    const reader = newReader({ ...generous, maxLagSeconds: 1 });
    await reader.refresh();
    const { servedBy } = await reader.query(SHARD, 'select 1');
    expect(servedBy).toBe(PRIMARY);
    expect(reader.replicaStates(SHARD).every((s) => (s.state.lagSeconds ?? 0) > 1)).toBe(true);
  });

  it('sends reads to the primary when the replicas lost their WAL receiver, though they replayed all they received', async () => {
    await catchUpAll();
    // Point each standby at a port nobody listens on: its receiver restarts and cannot connect.
    const restore = await Promise.all([replica(0), replica(1)].map((r) => cutWalReceiver(r.url)));
    try {
      await insertUser();
      await sleep(1200);
      await insertUser(); // a few hundred bytes: far inside the byte bound
      const reader = newReader({ ...generous, maxLagSeconds: 1 });
      await reader.refresh();
      const { servedBy } = await reader.query(SHARD, 'select 1');
      expect(servedBy).toBe(PRIMARY);
      expect(reader.replicaStates(SHARD).map((s) => s.ineligible)).toEqual([expect.stringMatching(/^lag [\d.]+ s over 1 s$/), expect.stringMatching(/^lag [\d.]+ s over 1 s$/)]);
    } finally {
      for (const undo of restore) await undo();
    }
  });

  it('does not let a read carrying a write token see a replica that has not replayed the write', async () => {
    await Promise.all([replica(0).pauseReplay(), replica(1).pauseReplay()]);
    const { id, token } = await insertUser();
    const reader = newReader(generous);
    await reader.refresh();

    const withoutToken = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id]);
    const withToken = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id], { token });

    expect(withoutToken.servedBy).toMatch(/replica/);
    expect(withoutToken.rows[0]?.n).toBe(0);
    expect(withToken.servedBy).toBe(PRIMARY);
    expect(withToken.rows[0]?.n).toBe(1);
  });

  it('serves a read carrying a write token from a replica once it has replayed past the token', async () => {
    await replica(0).pauseReplay();
    const { id, token } = await insertUser();
    const reader = newReader(generous);
    await reader.refresh(); // replica-1 is paused behind the token, replica-2 is not known to be past it yet
    await replica(1).waitForCatchUp();

    const result = await reader.query<{ n: number }>(SHARD, 'select count(*)::int as n from users where id = $1', [id], { token });

    expect(result.servedBy).toBe(REPLICA_2);
    expect(result.rows[0]?.n).toBe(1);
  });

  it('retries a read on another node, without an error, when the chosen replica has just gone down', async () => {
    const events: FailoverEvent[] = [];
    const reader = newReader(generous, 60_000, (e) => events.push(e));
    await reader.refresh();
    const first = reader.plan(SHARD)[0];
    const chosen = first?.kind === 'replica' ? first.nodeId : '';
    await replica(chosen === REPLICA_1 ? 0 : 1).stopReplica();

    const { rows, servedBy } = await reader.query<{ one: number }>(SHARD, 'select 1 as one');

    expect(rows).toEqual([{ one: 1 }]);
    expect(servedBy).not.toBe(chosen);
    expect(events.map((e) => e.nodeId)).toEqual([chosen]);
  });

  it('stops sending reads to a stopped replica within one health interval', async () => {
    const intervalMs = 300;
    const reader = newReader(generous, intervalMs);
    await reader.start();
    await replica(0).stopReplica();
    // Within one interval plus one probe timeout: polled, checked as soon as the reader says so.
    await within(intervalMs + 1000 + 100, () => reader.replicaStates(SHARD).find((s) => s.state.nodeId === REPLICA_1)?.ineligible === 'down');

    const states = reader.replicaStates(SHARD);
    const served = await Promise.all(Array.from({ length: 10 }, () => reader.query(SHARD, 'select 1')));

    expect(states.find((s) => s.state.nodeId === REPLICA_1)?.ineligible).toBe('down');
    expect(new Set(served.map((r) => r.servedBy))).toEqual(new Set([REPLICA_2]));
  });

  it('stops sending reads to a replica that falls behind within one health interval', async () => {
    const intervalMs = 300;
    const reader = newReader({ ...generous, maxLagBytes: 0 }, intervalMs);
    await reader.start();
    await replica(0).pauseReplay();
    await insertUser();
    await replica(1).waitForCatchUp();
    // Within one interval plus one probe timeout: polled, checked as soon as the reader says so.
    await within(intervalMs + 1000 + 100, () => /^lag (\d+ bytes|unknown)/.test(reader.replicaStates(SHARD).find((s) => s.state.nodeId === REPLICA_1)?.ineligible ?? ''));

    const served = await Promise.all(Array.from({ length: 10 }, () => reader.query(SHARD, 'select 1')));

    // 'lag unknown' when the replica has not replayed any transaction since it started.
    expect(reader.replicaStates(SHARD).find((s) => s.state.nodeId === REPLICA_1)?.ineligible).toMatch(/^lag (\d+ bytes|unknown)/);
    expect(new Set(served.map((r) => r.servedBy))).toEqual(new Set([REPLICA_2]));
  });

  it('sends reads to a restarted replica again at the next health check', async () => {
    await replica(0).stopReplica();
    const reader = newReader(generous);
    await reader.refresh();
    await replica(1).stopReplica();
    await replica(0).startReplica();
    await replica(0).waitForCatchUp();

    await reader.refresh();
    const { servedBy } = await reader.query(SHARD, 'select 1');

    expect(servedBy).toBe(REPLICA_1);
  });

  it('throws SQL errors as they are instead of retrying them elsewhere', async () => {
    const events: FailoverEvent[] = [];
    const reader = newReader(generous, 60_000, (e) => events.push(e));
    await reader.refresh();

    await expect(reader.query(SHARD, 'select * from no_such_table')).rejects.toMatchObject({ code: '42P01' });
    expect(events).toEqual([]);
  });

  it('cancels a replica read at its deadline and gives its connection back to the pool, usable', async () => {
    // One replica with one connection, so the same backend serves every read of the replica.
    const oneReplica = { shards: cluster.config.shards.map((s) => ({ ...s, read_replicas: s.read_replicas.slice(0, 1) })) };
    const own = ShardPools.fromConfig(oneReplica, { max: 1, connectionTimeoutMillis: 1000 });
    try {
      const reader = new ReplicaReader(own, { bounds: generous, intervalMs: 60_000, probeTimeoutMs: 1000 });
      readers.push(reader);
      await reader.refresh();
      const backend = async (): Promise<string> => {
        const r = await reader.query<{ pid: number }>(SHARD, 'select pg_backend_pid() as pid');
        return `${r.servedBy} pid ${r.rows[0]?.pid}`;
      };
      const before = await backend();
      // The deadline's, not the driver's raw 57014 (h139), on the replica: the read gives up there
      // (the primary, tried after it, would have failed with the deadline's 'connect' naming it).
      const slow = await reader.query(SHARD, 'select pg_sleep(5)', [], { deadlineAt: Date.now() + 500 }).then(
        () => 'answered',
        (e: unknown) => (e instanceof DeadlinePassedError ? `${e.name} ${e.phase} on ${e.nodeId} (${String((e.cause as { code?: unknown } | undefined)?.code)})` : String(e)),
      );
      const after = await backend();

      expect({ servedByReplica: before.startsWith(REPLICA_1), slow, sameConnection: after === before }).toEqual({
        servedByReplica: true,
        slow: `DeadlinePassedError cancelled on ${REPLICA_1} (57014)`,
        sameConnection: true,
      });
    } finally {
      await own.end();
    }
  });

  it('returns a token that is the primary WAL insert position after the commit', async () => {
    const { token } = await insertUser();
    const after = await captureWriteToken(pools.primary(SHARD).pool);
    const { rows } = await pools.primary(SHARD).pool.query<{ ok: boolean }>('select $1::pg_lsn <= $2::pg_lsn as ok', [token, after]);
    expect(token).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(rows[0]?.ok).toBe(true);
  });

  /**
   * A replica of a move's new owner that lags the move (within the freshness bound) has replayed
   * neither the target's 'incoming' fence row nor the copy: without a row it would take itself
   * for the unit's owner and answer "nothing" (docs/sharding-spec.md, section 9, Readers).
   */
  describe('fence-checked reads of a unit a move brought to a lagging replica', () => {
    const defaults: FreshnessBounds = { maxLagSeconds: 5, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 25_000 };
    let catalog: pg.Pool;
    let slotMaps: SlotMapStore;
    let directory: DirectoryStore;
    beforeAll(async () => {
      await withAdmin(cluster.shards[0]?.primary.url, (c) => c.query('create database catalog'));
      catalog = new pg.Pool({ connectionString: cluster.shards[0]?.primary.urlFor('catalog'), max: 4 });
      await runMigrations(catalog, 'sharding', resolve(migrations, 'sharding'));
      const config = parseShardingConfig(cluster.config);
      slotMaps = new SlotMapStore(catalog);
      await slotMaps.initialise(buildSlotMap(config.shards.map((s) => ({ shardId: s.shard_id, weight: 1 }))), 'test', 'two shards');
      directory = new DirectoryStore(catalog, { ttlMs: 0 });
    });
    afterAll(async () => {
      await catalog?.end();
    });

    const primaries = (): Map<string, pg.Pool> => new Map(pools.shardIds().map((id) => [id, pools.primary(id).pool]));
    const move = async (slot: number, to: string): Promise<void> => {
      const mover = new Mover({ catalog, shards: primaries(), slotMaps, directory, readerGraceMs: 0 });
      const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
      expect(job.state).toBe('done');
    };
    const replicasOf = (shardId: string) => cluster.shards.find((s) => s.shardId === shardId)?.replicas ?? [];
    /** A reader over the shards' replicas, routing with the map it is built with (moves refresh it). */
    const readsWith = async (reader: ReplicaReader, maxIncomingWaitMs?: number) => {
      const router = ShardRouter.fromConfig(parseShardingConfig(cluster.config), { slotMap: await slotMaps.current(), directory });
      return createShardReader({ router: routerForWrites(router, slotMaps, directory), reader, ...(maxIncomingWaitMs === undefined ? {} : { maxIncomingWaitMs }) });
    };
    const countDocs = (user: string) => async ({ client }: { client: pg.PoolClient }) =>
      (await client.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n;

    it("reads a moved unit on the new owner's primary, not as nothing, while its replicas have not replayed the move", async () => {
      const slot = 100;
      const from = (await slotMaps.current()).assignments[slot] as string;
      const to = from === 'shard_001' ? 'shard_002' : 'shard_001';
      const [user] = keysInSlot(slot, 1) as [string];
      await seedUsers(pools.primary(from).pool, slot, [user], 3);
      await catchUpAll();
      const reader = newReader(defaults);
      await reader.refresh();
      const reads = await readsWith(reader);
      const before = await reads.withShardRead(user, countDocs(user));

      // The new owner's replicas fall a second or so behind (well within 5 s) while the move completes.
      await Promise.all(replicasOf(to).map((r) => r.pauseReplay()));
      await move(slot, to);
      // The old owner's replicas have replayed its 'moved' row (else a read may, rightly, still be
      // answered there from a snapshot of before the release: ordinary bounded staleness).
      await Promise.all(replicasOf(from).map((r) => r.waitForCatchUp()));
      await reader.refresh();
      const eligible = reader.replicaStates(to).map((s) => s.ineligible);
      const during = await reads.withShardRead(user, countDocs(user));
      // Once they have replayed the move, the replicas serve the unit again.
      await Promise.all(replicasOf(to).map((r) => r.resumeReplay()));
      await catchUpAll();
      await reader.refresh();
      const after = await reads.withShardRead(user, countDocs(user));

      expect({ n: before.value, servedBy: before.servedBy }).toEqual({ n: 3, servedBy: expect.stringMatching(new RegExp(`^${from}/replica-\\d$`)) });
      expect(eligible).toEqual([null, null]);
      expect({ n: during.value, shardId: during.shardId, servedBy: during.servedBy }).toEqual({ n: 3, shardId: to, servedBy: `${to}/primary` });
      expect({ n: after.value, shardId: after.shardId, servedBy: after.servedBy }).toEqual({ n: 3, shardId: to, servedBy: expect.stringMatching(new RegExp(`^${to}/replica-\\d$`)) });
    }, 60_000);

    it("reads a unit that moved away and back on its owner's primary while the owner's replicas still show it 'moved'", async () => {
      const slot = 101;
      const home = (await slotMaps.current()).assignments[slot] as string;
      const away = home === 'shard_001' ? 'shard_002' : 'shard_001';
      const [user] = keysInSlot(slot, 1) as [string];
      await seedUsers(pools.primary(home).pool, slot, [user], 3);
      await move(slot, away);
      await catchUpAll();
      const reader = newReader(defaults);
      await reader.refresh();
      const reads = await readsWith(reader);

      // Back home while home's replicas lag: they still say 'moved' (to away), and away's say 'moved' too.
      await Promise.all(replicasOf(home).map((r) => r.pauseReplay()));
      await move(slot, home);
      await Promise.all(replicasOf(away).map((r) => r.waitForCatchUp()));
      await reader.refresh();
      const eligible = reader.replicaStates(home).map((s) => s.ineligible);
      const during = await reads.withShardRead(user, countDocs(user));

      expect(eligible).toEqual([null, null]);
      expect({ n: during.value, shardId: during.shardId, servedBy: during.servedBy }).toEqual({ n: 3, shardId: home, servedBy: `${home}/primary` });
    }, 60_000);

    /**
     * A replica of the target that has replayed the move's 'incoming' fence row but not yet its
     * opening (a second behind, well within a 30 s bound) answers 'incoming' for a unit its primary
     * has owned since. On a replica 'incoming' says nothing about now: the read belongs on the
     * primary, not in a wait that lasts as long as the replica lags (and then a 503).
     */
    it("reads a unit on the new owner's primary at once while its replicas still show the move 'incoming'", async () => {
      const slot = 102;
      const from = (await slotMaps.current()).assignments[slot] as string;
      const to = from === 'shard_001' ? 'shard_002' : 'shard_001';
      const [user] = keysInSlot(slot, 1) as [string];
      await seedUsers(pools.primary(from).pool, slot, [user], 3);
      // The move copies and stops before its catch-up: the target holds 'incoming' and the copy.
      const stopping = new Mover({ catalog, shards: primaries(), slotMaps, directory, readerGraceMs: 0, hook: (point) => (point === 'catching_up' ? Promise.reject(new Error('test: the mover stops at catching_up')) : undefined) });
      const job = await stopping.plan({ kind: 'slot', slot, to, createdBy: 'test' });
      await expect(stopping.run(job.id)).rejects.toThrow(/stops at/);
      await catchUpAll();
      // The target's replicas replay the 'incoming' row, then fall a little behind; the move finishes.
      await Promise.all(replicasOf(to).map((r) => r.pauseReplay()));
      expect((await new Mover({ catalog, shards: primaries(), slotMaps, directory, readerGraceMs: 0 }).run(job.id)).state).toBe('done');
      await Promise.all(replicasOf(from).map((r) => r.waitForCatchUp()));
      // An operator's bound of 30 s (replicas on RDS under a long report query can lag that much).
      const reader = newReader({ ...defaults, maxLagSeconds: 30, maxStateAgeMs: 120_000 });
      await reader.refresh();
      const eligible = reader.replicaStates(to).map((s) => s.ineligible);
      const reads = await readsWith(reader, 3000);
      const started = Date.now();
      const outcome = await reads.withShardRead(user, countDocs(user)).then(
        (r) => ({ n: r.value, shardId: r.shardId, servedBy: r.servedBy }),
        (error: unknown) => ({ error: error instanceof Error ? error.message : String(error) }),
      );
      const tookMs = Date.now() - started;

      expect(eligible).toEqual([null, null]);
      expect(outcome).toEqual({ n: 3, shardId: to, servedBy: `${to}/primary` });
      expect(tookMs).toBeLessThan(1000);
    }, 60_000);
  });

  describe('with a shard of its own whose primary goes down', () => {
    // Its own cluster, awaited in a hook (started in the file's first one): building a primary and
    // a replica took more than the 30 s a test gets on a loaded machine (3 runs of 3 timed out
    // beside stress-ng --cpu 8).
    let single: TestShardCluster | undefined;
    let singlePools: ShardPools | undefined;
    beforeAll(async () => {
      single = await singleStarting;
      if (!single) throw new Error('the single-shard cluster was not started (the first beforeAll of the file)');
      singlePools = ShardPools.fromConfig(single.config, { max: 2, connectionTimeoutMillis: 1000 });
    });
    afterAll(async () => {
      await singlePools?.end();
      await single?.stop();
    });

    it('serves reads from a replica, after trying the primary, when the primary is down', async () => {
      if (!single || !singlePools) throw new Error('the single-shard cluster did not start');
      const reader = new ReplicaReader(singlePools, { bounds: generous, intervalMs: 60_000, probeTimeoutMs: 1000 });
      await single.shards[0]?.replicas[0]?.waitForCatchUp();
      await single.shards[0]?.primary.stop();
      await reader.refresh();

      const { rows, servedBy } = await reader.query<{ rec: boolean }>(SHARD, 'select pg_is_in_recovery() as rec');

      expect(servedBy).toBe(REPLICA_1);
      expect(rows).toEqual([{ rec: true }]);
    });
  });
});
