/**
 * Local mode: the whole product on one machine. This module assembles, from the same pieces the
 * AWS deployment uses, a running system:
 *
 * - embedded PostgreSQL (a catalog server and the shards, each a primary with streaming
 *   replicas) under `<dataDir>/pg`, migrated (`catalog` + `sharding` sets on the catalog, `shard`
 *   on every primary), with the first slot map published and demo data seeded once;
 * - the sharding layer over it: router, shard writer, replica reader, inspector, mover;
 * - the real {@link ScalingController} against a {@link SimulatedFleet} driven by a trace, run
 *   every `check_interval` seconds (the catalog's configuration; `SCALING_CHECK_INTERVAL` and the
 *   guide's other variables are written into it at start);
 * - the scaling API (the Lambda handler, through the local HTTP adapter), the documents API and
 *   the dashboard on one loopback port.
 *
 * The first start writes a local configuration (version 1) whose check interval and cooldowns
 * suit an accelerated trace; an operator changes it like any other, through `PATCH /config`.
 *
 * @example
 * ```ts
 * const local = await startLocalMode({ dataDir: '.local', port: 3000, shards: 2, replicasPerShard: 1, tracePath, acceleration: 60, env: process.env, onLine: console.log });
 * console.log(local.url);
 * await local.stop();
 * ```
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { applyScalingEnv, defaultScalingConfig, ScalingConfigError, type ScalingConfig } from '../core/scaling/config.js';
import { ScalingController } from '../core/scaling/controller.js';
import { getPolicy } from '../core/scaling/policies/index.js';
import type { Clock, DecisionLog, DecisionRecord } from '../core/scaling/ports.js';
import type { ShardingConfig } from '../core/sharding/config.js';
import { createScalingApiPort, shardingDepsOf } from '../api/wiring.js';
import { createScalingRouter } from '../api/routes.js';
import { bindLocalServer } from '../adapters/http/local-server.js';
import { createDashboardRoute } from '../adapters/http/dashboard.js';
import { CatalogStore } from '../adapters/postgres/catalog-store.js';
import { startEmbeddedCluster, type EmbeddedCluster } from '../adapters/postgres/embedded-cluster.js';
import { HistoryReader } from '../adapters/postgres/history-reader.js';
import { fillDirectorySlots } from '../adapters/postgres/directory-slot-fill.js';
import { runMigrations, type MigrationResult } from '../adapters/postgres/migrate.js';
import { CATALOG_QUERY_TIMEOUT_MS, CATALOG_STATEMENT_TIMEOUT_MS } from '../adapters/postgres/statement-bounds.js';
import { ListeningClient } from '../adapters/postgres/listening-client.js';
import { MoveBusyError } from '../adapters/postgres/mover.js';
import { isTerminal } from '../core/sharding/move-plan.js';
import { moveRoutingOf } from '../core/sharding/move-machine.js';
import { createShardingRuntime } from '../adapters/postgres/sharding-runtime.js';
import { SimulatedFleet } from '../adapters/sim/fleet.js';
import { LiveLoad } from '../adapters/sim/live-load.js';
import { readTraceFile } from '../adapters/sim/trace-file.js';
import { createDocumentsRoute, DEFAULT_REQUEST_DEADLINE_MS } from './documents-api.js';
import { seedDemoData, type SeedOutcome } from './seed.js';
import { LocalEnvironmentError } from './environment-error.js';
import { localShardingConfig } from './sharding-config.js';
import { writeLocalRouting } from './routing-file.js';

const MIGRATIONS = resolve(dirname(fileURLToPath(import.meta.url)), '../adapters/postgres/migrations');

/** The configuration local mode writes on its first start (the guide's defaults otherwise). */
/** How often local mode resumes unfinished moves (the moves function's schedule on AWS is every minute). */
export const LOCAL_MOVES_RESUME_MS = 15_000;
/**
 * How long stopping local mode waits for running moves to reach their next safe point (asked at
 * the start of the stop; a copy page, a catch-up pass, a fenced step held to its budget). A run
 * still going then (a comparison before the fence, a shard gone silent) is cut off when the
 * servers stop, and its job resumes at the next start all the same.
 */
const MOVES_STOP_WAIT_MS = 10_000;
/** Past a request's deadline, how long stopping local mode still waits for its answer to be written. */
const DRAIN_MARGIN_MS = 1_000;
/**
 * How long stopping local mode waits for an evaluation round, and for a pool to end: a catalog
 * that stopped answering (a hung or SIGSTOPped server) holds their queries until the catalog
 * pool's query timeout (12 s), longer than a stop may take. Past it the servers are stopped
 * anyway (killed, if they do not act on signals), which ends those connections.
 */
const STOP_STEP_WAIT_MS = 3_000;

/** Settles with `promise`, or after `ms` (never rejects): for the steps of a stop. */
function within(ms: number, promise: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.then(
      () => undefined,
      () => undefined,
    ),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const LOCAL_CONFIG_DOCUMENT: Readonly<Record<string, unknown>> = {
  // A trace replayed 60x faster changes in seconds, not minutes: evaluate and cool down accordingly.
  check_interval: 5,
  scale_cooldown: 60,
  stabilization_window: 60,
};

export interface LocalModeOptions {
  /** Root of everything local mode keeps (`.local`): PostgreSQL data, logs, the lock file. */
  readonly dataDir: string;
  /** Loopback port of the API and the dashboard (0: any free port). */
  readonly port: number;
  readonly shards: number;
  readonly replicasPerShard: number;
  /** A `timestamp,value` CSV workload trace. */
  readonly tracePath: string;
  /** Seconds of trace time per wall-clock second. */
  readonly acceleration: number;
  /** Demo users to seed on a fresh start, with their documents. */
  readonly seedUsers: number;
  readonly documentsPerUser: number;
  /** The process environment: the guide's scaling and sharding variables are honoured. */
  readonly env: Record<string, string | undefined>;
  /** One line of operator output (progress, decisions). */
  readonly onLine: (line: string) => void;
  readonly clock?: Clock;
  /** The documents API's request deadline, in ms (default its `DEFAULT_REQUEST_DEADLINE_MS`, 5 s). */
  readonly requestDeadlineMs?: number;
  /** Requests per second of live traffic that keep one simulated task busy (default {@link LIVE_REQUESTS_PER_TASK}). */
  readonly liveRequestsPerTask?: number;
  /** How often unfinished moves are resumed, in ms (default {@link LOCAL_MOVES_RESUME_MS}). */
  readonly movesResumeMs?: number;
  /** How long a move waits for writers older than its change capture before it stops, resumable (default the mover's, 30 s). */
  readonly moveDrainTimeoutMs?: number;
}

/**
 * Live requests per second one simulated task serves at 100 % CPU: small, so that a load test
 * from a laptop (`npm run load`, a few hundred requests per second) visibly moves the fleet.
 */
export const LIVE_REQUESTS_PER_TASK = 20;

export interface LocalMode {
  readonly url: string;
  readonly port: number;
  readonly cluster: EmbeddedCluster;
  readonly seed: SeedOutcome;
  readonly config: ScalingConfig;
  readonly shardingConfig: ShardingConfig;
  /** Milliseconds from the call to a serving API. */
  readonly startupMs: number;
  /** Stops the loop, the server, the pools and every PostgreSQL server. Safe to call twice. */
  stop(): Promise<void>;
}

const systemClock: Clock = { now: () => Date.now() };

const LINE_REASON_CHARS = 110;

/** One compact line for a decision: time, service, task counts, outcome and the gist of why. */
export function formatDecision(d: DecisionRecord): string {
  const time = new Date(d.at).toISOString().slice(11, 19);
  const counts = d.from === d.to ? `${d.from}` : `${d.from} -> ${d.to}`;
  const reasons = [...d.blocked.map((b) => b.message), ...d.reasons.map((r) => r.message)];
  let why = reasons.join('; ') || d.error || '';
  if (why.length > LINE_REASON_CHARS) why = `${why.slice(0, LINE_REASON_CHARS - 1)}…`;
  return `${time}  ${d.service.padEnd(13)} ${counts.padEnd(8)} ${d.outcome.padEnd(8)} ${why}`;
}

/**
 * Prints decisions worth telling: every change (applied or failed) and every new hold-back;
 * "no change" and a hold-back repeated round after round stay in the history only.
 */
export function decisionPrinter(say: (line: string) => void): DecisionLog {
  const lastHold = new Map<string, string>();
  return {
    write(d) {
      if (d.outcome === 'unchanged') {
        lastHold.delete(d.service);
        return;
      }
      if (d.outcome === 'blocked' || d.outcome === 'skipped') {
        const key = `${d.outcome}:${d.from}:${d.to}:${d.blocked.map((b) => b.kind).join(',')}:${d.error ?? ''}`;
        if (lastHold.get(d.service) === key) return;
        lastHold.set(d.service, key);
      } else {
        lastHold.delete(d.service);
      }
      say(formatDecision(d));
    },
  };
}

/** Starts local mode. On failure, everything already started is stopped before it rejects. */
export async function startLocalMode(options: LocalModeOptions): Promise<LocalMode> {
  const started = Date.now();
  const clock = options.clock ?? systemClock;
  const say = options.onLine;
  const cleanup: Array<() => Promise<void> | void> = [];
  const stopAll = async (): Promise<void> => {
    for (const step of cleanup.reverse()) await Promise.resolve(step()).catch(() => undefined);
    cleanup.length = 0;
  };
  try {
    // The port first: it is ours from here on (a parallel process cannot take it during the
    // seconds PostgreSQL takes), and every request is a 503 "starting" until the routes exist.
    const server = await bindLocalServer({ port: options.port });
    cleanup.push(() => server.close());
    say(`listening on ${server.url} (answering 503 until the start-up finishes)`);
    const trace = await readTraceFile(options.tracePath);
    const cluster = await startEmbeddedCluster({ root: join(options.dataDir, 'pg'), shards: options.shards, replicasPerShard: options.replicasPerShard, onProgress: (m) => say(`  postgres: ${m}`) });
    cleanup.push(() => cluster.stop());

    // Migrations on a pool of their own without a client deadline (one long index build is
    // legitimate; they lift the server's per transaction), as the migrate function's on AWS.
    const migrationPool = new pg.Pool({ connectionString: cluster.catalogUrl, max: 1, connectionTimeoutMillis: 3000, Client: ListeningClient });
    migrationPool.on('error', () => undefined);
    // Data kept from an older version is brought up to date here: each migration that runs is
    // said, so that an upgrade shows what it changed where (a fresh start's are its creation).
    const sayApplied = (server: string, result: MigrationResult): void => {
      if (!cluster.fresh) for (const name of result.applied) say(`  postgres: ${server}: applied ${result.set} migration ${name}`);
    };
    try {
      sayApplied('catalog', await runMigrations(migrationPool, 'catalog', join(MIGRATIONS, 'catalog')));
      sayApplied('catalog', await runMigrations(migrationPool, 'sharding', join(MIGRATIONS, 'sharding')));
      // As migrateAll does: the directory rows written before sharding migration 031 given their slot, a batch a transaction.
      const filled = await fillDirectorySlots(migrationPool);
      if (filled > 0) say(`  postgres: catalog: gave ${filled} directory pin(s) their slot (sharding migration 031)`);
    } finally {
      await within(STOP_STEP_WAIT_MS, migrationPool.end());
    }
    // Every catalog statement bounded as the AWS functions bound theirs: by the server
    // (`statement_timeout`, here a startup parameter: no RDS Proxy in between), and by the
    // client a little later, for a server that cannot answer at all (hung, SIGSTOPped).
    const catalogPool = new pg.Pool({
      connectionString: cluster.catalogUrl,
      max: 10,
      connectionTimeoutMillis: 3000,
      statement_timeout: CATALOG_STATEMENT_TIMEOUT_MS,
      query_timeout: CATALOG_QUERY_TIMEOUT_MS,
      Client: ListeningClient,
    });
    catalogPool.on('error', () => undefined);
    cleanup.push(() => within(STOP_STEP_WAIT_MS, catalogPool.end()));

    const shardingConfig = localShardingConfig(cluster.shards, options.env);
    // `shards fences --local` judges fence rows by this routing, not by its own shell's variables.
    await writeLocalRouting(options.dataDir, moveRoutingOf(shardingConfig, options.env));
    const sharding = await createShardingRuntime({ config: shardingConfig, env: options.env, catalog: catalogPool, actor: 'local-mode', pools: { max: 10, applicationName: 'ca-dms-local' },
      readReplicas: true,
      // The API's answers name a failure by its kind only (a shard's, or the catalog's behind a
      // 503 of the moves endpoints); the driver's text is printed here.
      onInspectionFailure: ({ what, nodeId, shardId, error }) => {
        const where = nodeId ?? shardId;
        say(`failed: ${what}${where === undefined ? '' : ` of ${where}`}: ${error instanceof Error ? error.message : String(error)}`);
      },
      onRoutingNotRecorded: (error) => say(`note: the routing was not recorded in catalog.runtime_routings (${error instanceof Error ? error.message : String(error)}); local mode runs all the same, and shards fences --local reads it from routing.json`),
      ...(options.moveDrainTimeoutMs !== undefined ? { moveDrainTimeoutMs: options.moveDrainTimeoutMs } : {}),
    });
    cleanup.push(() => within(STOP_STEP_WAIT_MS, sharding.close()));
    const { primaries, router, writer, slotMaps, mover, pools } = sharding;
    const { reader, reads, moves: movesLookup } = sharding;
    if (!reader || !reads) throw new Error('unreachable: the runtime was asked for a replica reader');
    await Promise.all([...primaries].map(async ([shardId, p]) => sayApplied(`${shardId}/primary`, await runMigrations(p, 'shard', join(MIGRATIONS, 'shard')))));

    const seed = await seedDemoData({ writer, primaries, users: options.seedUsers, documentsPerUser: options.documentsPerUser, pendingMarker: join(options.dataDir, 'pg', 'seeding') });

    // Scaling: the local configuration on first start, then the guide's variables on top.
    const catalog = new CatalogStore(catalogPool, { defaults: defaultScalingConfig() });
    const stored = await catalog.getConfig();
    const baseDocument = stored?.document ?? { ...LOCAL_CONFIG_DOCUMENT };
    let config: ScalingConfig;
    try {
      config = applyScalingEnv(baseDocument, options.env);
    } catch (error) {
      // The flags' check took each variable alone; here one meets the stored configuration, or
      // on fresh data the local defaults (MIN_INSTANCES=15 alone passes the flags' check).
      if (!(error instanceof ScalingConfigError)) throw error;
      const names = ['AUTO_SCALING_ENABLED', 'SCALING_CHECK_INTERVAL', 'MIN_INSTANCES', 'MAX_INSTANCES'].filter((n) => options.env[n] !== undefined);
      const against = stored ? `the stored scaling configuration (version ${stored.version})` : 'the default scaling configuration of fresh data';
      throw new LocalEnvironmentError(
        `${names.map((n) => `${n}=${options.env[n] ?? ''}`).join(' ')} does not fit ${against}: ` +
          `${error.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}; change the variable, or the configuration (PATCH /api/v1/scaling/config)`,
        { cause: error },
      );
    }
    const envDocument = { ...baseDocument, ...Object.fromEntries(Object.entries(envKeys(config, options.env))) };
    if (!stored || JSON.stringify(envDocument) !== JSON.stringify(stored.document)) {
      await catalog.putConfig(envDocument, { actor: 'local-mode', comment: stored ? 'environment variables at start' : 'local mode defaults', ifVersion: stored?.version ?? 0 });
    }

    // What `npm run load` sends to the documents API becomes demand of the fleet.
    const liveLoad = new LiveLoad({ clock, requestsPerTask: options.liveRequestsPerTask ?? LIVE_REQUESTS_PER_TASK });
    const fleet = new SimulatedFleet({ trace: trace.points, acceleration: options.acceleration, clock, extraDemand: (service, now) => liveLoad.taskUnits(service, now) });
    const log = decisionPrinter(say);
    const controller = new ScalingController({ metrics: fleet, target: fleet, registry: fleet, catalog, clock, log, policies: getPolicy, fallbackConfig: config });
    const history = new HistoryReader(async () => catalogPool);
    const moves = new Set<Promise<unknown>>();
    const runningMoves = new Set<number>();
    // Aborted when local mode stops: every run stops at its next safe point (never while it holds
    // a fence) and gives its job back, instead of being cut off by the servers stopping under it.
    const stopMoves = new AbortController();
    // Local mode has no moves function: a move runs in this process, in the background, one run
    // per job at a time.
    const resumeEveryMs = options.movesResumeMs ?? LOCAL_MOVES_RESUME_MS;
    const runMove = (id: number): void => {
      if (runningMoves.has(id) || stopMoves.signal.aborted) return;
      runningMoves.add(id);
      const run = mover.run(id, { stop: stopMoves.signal }).then(
        (job) => {
          const what = `move ${job.id} (${job.kind} ${job.unitId} ${job.from} -> ${job.to})`;
          say(isTerminal(job.state) || !stopMoves.signal.aborted ? `${what} ${job.state}` : `${what} paused in ${job.state} by the stop; the next start resumes it`);
        },
        (err: unknown) => {
          if (err instanceof MoveBusyError) return;
          say(`move ${id} stopped, to be tried again ${stopMoves.signal.aborted ? 'at the next start' : `in ${resumeEveryMs / 1000} s`}: ${(err as Error).message}`);
        },
      );
      moves.add(run);
      void run.finally(() => {
        moves.delete(run);
        runningMoves.delete(id);
      });
    };
    // What the moves function's schedule does on AWS: a run that stopped (writers older than the
    // capture, a fence not held in time, a dropped connection) is resumed later.
    const resumeUnfinished = (): void => {
      void mover.unfinished().then(
        (jobs) => jobs.forEach((job) => runMove(job.id)),
        () => undefined,
      );
    };
    const resumeMoves = setInterval(resumeUnfinished, resumeEveryMs);
    resumeMoves.unref();
    // A job an earlier session in this data directory left unfinished (killed outright, say in
    // the cutover, its unit's writes refused until a run releases the fence) is resumed as soon
    // as the API serves, not after its dead run's lease (30 s) and the next round: that session
    // is gone (the lock file and the servers started here say so), and with it every run.
    const orphaned = await mover.endLeasesOfDeadRuns();
    if (orphaned.length > 0) say(`resuming move${orphaned.length === 1 ? '' : 's'} ${orphaned.join(', ')}, left running by a run that did not stop cleanly`);
    const port = createScalingApiPort({
      catalog,
      history,
      controller,
      target: fleet,
      metrics: fleet,
      clock,
      sharding: shardingDepsOf(sharding, runMove),
    });

    // The route table served directly: the Lambda handler's wrapping (middy, Powertools, and the
    // X-Ray SDK's async hooks, which tax every promise in the process) is for AWS only.
    const api = createScalingRouter(port, {
      snapshots: { shardsMaxAgeMs: shardingConfig.health_check_interval_seconds * 1000 },
      onError: (err, request) => say(`api: unexpected error serving ${request.method} ${request.path} (request id ${request.requestId}): ${(err as Error).message}`),
    });
    server.serve({
      dispatch: (request) => api.dispatch(request),
      changes: () => api.changes(),
      extraRoutes: [
        liveLoad.route(),
        createDashboardRoute(),
        createDocumentsRoute({ writer, reader, reads, moves: movesLookup, shardIds: pools.shardIds(), ...(options.requestDeadlineMs === undefined ? {} : { deadlineMs: options.requestDeadlineMs }) }),
      ],
    });

    resumeUnfinished();

    // The scheduled evaluation, at the interval the catalog's configuration says (re-read each round).
    let timer: NodeJS.Timeout | undefined;
    let running = true;
    let round: Promise<void> = Promise.resolve();
    const schedule = (seconds: number): void => {
      if (!running) return;
      timer = setTimeout(() => {
        round = (async () => {
          let next = seconds;
          try {
            const result = await controller.evaluate({ trigger: 'schedule' });
            for (const w of result.warnings) say(`warning: ${w}`);
            // Moves publish new slot maps; the router adopts them between rounds.
            const newer = await slotMaps.currentIfNewer(router.slotMap.version).catch(() => null);
            if (newer) router.setSlotMap(newer);
            next = (await catalog.getConfig().catch(() => undefined))?.config.check_interval ?? seconds;
          } catch (err) {
            say(`evaluation failed: ${(err as Error).message}`);
          }
          schedule(next);
        })();
      }, seconds * 1000);
    };
    schedule(config.check_interval);
    const drainMs = (options.requestDeadlineMs ?? DEFAULT_REQUEST_DEADLINE_MS) + DRAIN_MARGIN_MS;
    cleanup.push(async () => {
      running = false;
      if (timer) clearTimeout(timer);
      clearInterval(resumeMoves);
      // Moves are asked to stop first, so they reach their safe points while requests drain.
      stopMoves.abort();
      const movesStopped = within(MOVES_STOP_WAIT_MS, Promise.allSettled([...moves]));
      // The port first: no new request, and every request under way answered (a write holds its
      // shard connection until its commit's answer, at most its deadline) before anything below
      // it is stopped, so a committed write is not cut off unanswered.
      await server.close({ drainMs });
      await within(STOP_STEP_WAIT_MS, round);
      await movesStopped;
    });

    return {
      url: server.url,
      port: server.port,
      cluster,
      seed,
      config,
      shardingConfig,
      startupMs: Date.now() - started,
      stop: stopAll,
    };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

/** The configuration keys the guide's environment variables set (only those present). */
function envKeys(config: ScalingConfig, env: Record<string, string | undefined>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (env.AUTO_SCALING_ENABLED !== undefined) out.enabled = config.enabled;
  if (env.SCALING_CHECK_INTERVAL !== undefined) out.check_interval = config.check_interval;
  if (env.MIN_INSTANCES !== undefined) out.min_instances = config.min_instances;
  if (env.MAX_INSTANCES !== undefined) out.max_instances = config.max_instances;
  return out;
}
