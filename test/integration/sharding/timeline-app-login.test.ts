import { randomUUID } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APPLICATION_ROLE, ensureLogin, MONITOR_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { emulateRdsMaster } from '../../support/rds-master.js';
import { startTestReplica, type TestReplica } from '../../support/replica.js';

const SHARD = 'shard_001';
const DATABASE = 'ca_dms_1';
const MASTER = 'ca_dms_admin';
const MASTER_PASSWORD = 'rds master';
const APP_USER = 'ca_dms_app_user';
const APP_PASSWORD = 'app';
const MONITOR_USER = 'ca_dms_monitor_user';
const MONITOR_PASSWORD = 'monitor';
const shardMigrationsDir = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations/shard');
/** One shard, every key in slot 7: the unit under test is the replica's timeline, not routing. */
const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId: SHARD, slot: 7, version: 1, viaDirectory: false }) };

/**
 * After a failover, a replica re-pointed at the promoted primary streams its timeline at once, and
 * the application login (a member of ca_dms_app only, no pg_read_all_stats) must see so at once:
 * it cannot read the WAL receiver's `received_tli` itself, and the control file moves to the new
 * timeline only at the replica's next restartpoint (up to checkpoint_timeout). Shard migration
 * 017's function reads it for the application. The migrations run as an emulated RDS master user
 * (not a superuser), who therefore owns that function on the primary and on its replicas.
 */
describe('a replica of the promoted primary, seen by the application login', () => {
  let primary: TestPostgres;
  let promoted: TestReplica;
  let follower: TestReplica;
  const closers: (() => Promise<void>)[] = [];
  const appUrl = (port: number): string => `postgresql://${APP_USER}:${APP_PASSWORD}@127.0.0.1:${port}/${DATABASE}`;
  const monitorUrl = (port: number): string => `postgresql://${MONITOR_USER}:${MONITOR_PASSWORD}@127.0.0.1:${port}/${DATABASE}`;
  const readerFor = async (urlOf: (port: number) => string): Promise<ReplicaReader> => {
    const pools = ShardPools.fromConfig({ shards: [{ shard_id: SHARD, database_url: urlOf(promoted.port), read_replicas: [urlOf(follower.port)] }] }, { max: 2, connectionTimeoutMillis: 2000 });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 5, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 25_000 }, intervalMs: 60_000, probeTimeoutMs: 2000 });
    closers.push(async () => {
      reader.stop();
      await pools.end();
    });
    await reader.refresh();
    return reader;
  };

  beforeAll(async () => {
    primary = await startTestPostgres();
    await emulateRdsMaster(primary.url, { master: MASTER, password: MASTER_PASSWORD, databases: [DATABASE] });
    const master = new pg.Pool({ connectionString: `postgresql://${MASTER}:${encodeURIComponent(MASTER_PASSWORD)}@127.0.0.1:${primary.port}/${DATABASE}`, max: 1 });
    try {
      await runMigrations(master, 'shard', shardMigrationsDir);
      await ensureLogin(master, { username: APP_USER, password: APP_PASSWORD }, { role: APPLICATION_ROLE });
      await ensureLogin(master, { username: MONITOR_USER, password: MONITOR_PASSWORD }, { role: MONITOR_ROLE });
    } finally {
      await master.end();
    }
    promoted = await startTestReplica(primary, { name: `tl_app_promoted_${process.pid}` });
    follower = await startTestReplica(primary, { name: `tl_app_follower_${process.pid}` });
  }, 120_000);
  afterAll(async () => {
    for (const close of closers.splice(0)) await close().catch(() => undefined);
    await follower?.stop();
    await promoted?.stop();
    await primary?.stop();
  });

  it('is eligible for reads, on timeline 2, right after it has caught up rather than after its next restartpoint, also to a process that probed it before migration 017', async () => {
    await Promise.all([promoted.waitForCatchUp(), follower.waitForCatchUp()]);
    // The primary fails (a clean stop: both replicas have all of its WAL, so the follower can
    // follow the promoted one's new timeline), one replica is promoted, the other re-pointed.
    await primary.stop();
    await withClient(promoted.url, async (c) => {
      await c.query('select pg_promote(true, 60)');
      await c.query('select pg_create_physical_replication_slot($1)', [follower.slotName]);
    });
    await withClient(follower.url, async (c) => {
      await c.query(`alter system set primary_conninfo = 'host=127.0.0.1 port=${promoted.port} user=postgres password=postgres application_name=tl_app_follower'`);
      await c.query('select pg_reload_conf()');
    });

    const newPrimary = new pg.Pool({ connectionString: appUrl(promoted.port), max: 2 });
    newPrimary.on('error', () => undefined);
    closers.push(() => newPrimary.end());
    const id = randomUUID();
    const written = await createShardWriter({ router, primaries: new Map([[SHARD, newPrimary]]) }).withShardWrite(id, ({ client }) =>
      client.query("insert into users (id, slot, email, display_name) values ($1, 7, 'new@example.org', 'on timeline 2')", [id]),
    );
    /** Waits until the follower streams timeline 2 and has replayed all the new primary wrote; answers its control file's timeline. */
    const replayed = async (): Promise<number | undefined> => {
      const target = await withClient(promoted.url, async (c) => (await c.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn')).rows[0]?.lsn);
      const deadline = Date.now() + 30_000;
      return withClient(follower.url, async (c) => {
        for (;;) {
          const { rows } = await c.query<{ ok: boolean }>(
            "select coalesce((select received_tli = 2 and status = 'streaming' from pg_stat_wal_receiver), false) and pg_last_wal_replay_lsn() >= $1::pg_lsn as ok",
            [target],
          );
          if (rows[0]?.ok) break;
          if (Date.now() > deadline) throw new Error(`the follower did not replay timeline 2 up to ${target}`);
          await sleep(25);
        }
        const { rows } = await c.query<{ tli: number }>('select greatest((pg_control_checkpoint()).timeline_id, nullif((pg_control_recovery()).min_recovery_end_timeline, 0)) as tli');
        return rows[0]?.tli;
      });
    };
    // A process whose first probe ran before migration 017 had reached the replica (the code
    // deployed first, which the migration allows): refused the function then, it must not keep
    // the control file's timeline once the function is there.
    const masterUrl = `postgresql://${MASTER}:${encodeURIComponent(MASTER_PASSWORD)}@127.0.0.1:${promoted.port}/${DATABASE}`;
    await withClient(masterUrl, (c) => c.query('alter function wal_receiver_timeline() rename to wal_receiver_timeline_later'));
    await replayed();
    const early = await readerFor(appUrl);
    const earlyBefore = early.replicaStates(SHARD)[0]?.state.timeline;
    await withClient(masterUrl, (c) => c.query('alter function wal_receiver_timeline_later() rename to wal_receiver_timeline'));
    // The follower streams timeline 2 and has replayed the write.
    const control = await replayed();
    await early.refresh();
    const [earlyAfter] = early.replicaStates(SHARD);
    // What the application login sees by itself: the receiver's row, its timeline hidden.
    const hidden = await withClient(appUrl(follower.port), async (c) => (await c.query<{ tli: number | null }>('select received_tli as tli from pg_stat_wal_receiver')).rows);
    const fn = await withClient(appUrl(follower.port), async (c) =>
      (
        await c.query<{ owner: string; definer: boolean; config: string[]; executors: string[] }>(
          `select p.proowner::regrole::text as owner, p.prosecdef as definer, p.proconfig as config,
                  array(select distinct a.grantee::regrole::text from aclexplode(p.proacl) a where a.privilege_type = 'EXECUTE' order by 1) as executors
             from pg_proc p where p.proname = 'wal_receiver_timeline'`,
        )
      ).rows,
    );

    // Shard migration 027 as the emulated RDS master, who may not run pg_read_file: the promoted
    // primary's timeline with a NULL history, for the application login, which reads then keep
    // the answer they gave before the migration (docs/sharding-spec.md, a write lost in a failover).
    const history = await withClient(appUrl(promoted.port), async (c) => (await c.query<{ timeline: number; history: string | null }>('select timeline::int as timeline, history from timeline_history()')).rows);
    const reader = await readerFor(appUrl);
    const [state] = reader.replicaStates(SHARD);
    const reads = createShardReader({ router, reader });
    const count = async ({ client }: { client: pg.PoolClient }) => (await client.query<{ n: number }>('select count(*)::int as n from users where id = $1', [id])).rows[0]?.n ?? 0;
    const withToken = await reads.withShardRead(id, count, { token: written.readToken });
    const plain = await reads.withShardRead(id, count);
    // The monitor holds pg_read_all_stats and no EXECUTE on the function: refused it, it reads the view.
    const [monitored] = (await readerFor(monitorUrl)).replicaStates(SHARD);

    expect(history).toEqual([{ timeline: 2, history: null }]);
    // The premise: without the function the application login would see timeline 1 here.
    expect(control).toBe(1);
    expect(hidden).toEqual([{ tli: null }]);
    expect(fn).toEqual([{ owner: MASTER, definer: true, config: ['search_path=pg_catalog, pg_temp'], executors: [MASTER, APPLICATION_ROLE].sort() }]);
    expect(written.readToken.timeline).toBe(2);
    expect({ timeline: state?.state.timeline, primaryTimeline: state?.state.primaryTimeline, ineligible: state?.ineligible }).toEqual({ timeline: 2, primaryTimeline: 2, ineligible: null });
    expect({ servedBy: withToken.servedBy, found: withToken.value }).toEqual({ servedBy: `${SHARD}/replica-1`, found: 1 });
    expect({ timeline: monitored?.state.timeline, ineligible: monitored?.ineligible }).toEqual({ timeline: 2, ineligible: null });
    expect({ servedBy: plain.servedBy, found: plain.value }).toEqual({ servedBy: `${SHARD}/replica-1`, found: 1 });
    expect(earlyBefore).toBe(1);
    expect({ timeline: earlyAfter?.state.timeline, ineligible: earlyAfter?.ineligible }).toEqual({ timeline: 2, ineligible: null });
  }, 120_000);
});
