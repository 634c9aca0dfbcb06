/**
 * `ca-dms-scaling start` (`npm start`): local mode. Embedded PostgreSQL shards with streaming
 * replicas, the scaling controller against a simulated fleet replaying a workload trace, the
 * scaling API, the documents API and the live dashboard on one loopback port. Runs until Ctrl-C,
 * SIGTERM or SIGHUP, then stops everything, PostgreSQL included; data stays under the data
 * directory.
 */
import { constants } from 'node:fs';
import { access, rm, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { applyScalingEnv, ScalingConfigError } from '../../functions/core/scaling/config.js';
import { ShardingConfigError } from '../../functions/core/sharding/errors.js';
import { PortInUseError, PortNotPermittedError } from '../../functions/adapters/http/local-server.js';
import { ClusterLayoutError, EmbeddedClusterError } from '../../functions/adapters/postgres/embedded-cluster.js';
import { MigrationError, MigrationNewerError } from '../../functions/adapters/postgres/migrate.js';
import { SHIPPED_TRACE, TraceFileError } from '../../functions/adapters/sim/trace-file.js';
import { AlreadyRunningError, acquireLocalLock } from '../../functions/local/lock.js';
import { checkLocalShardingEnv } from '../../functions/local/sharding-config.js';
import { DEFAULT_REQUEST_DEADLINE_MS } from '../../functions/local/documents-api.js';
import { MAX_SEED_USERS, SeedMarkerError } from '../../functions/local/seed.js';
import type { LocalMode } from '../../functions/local/runtime.js';
import { LocalEnvironmentError } from '../../functions/local/environment-error.js';
import type { CliCommand, CliIo, FlagTable } from './kit.js';
import { numberFlag, parseFlags, UsageError } from './kit.js';

/** The NASA trace shipped in the repository. */
export const DEFAULT_TRACE = SHIPPED_TRACE;

const usage = `Usage: ca-dms-scaling start [--port N] [--data-dir DIR] [--shards N] [--replicas N]
                             [--trace FILE] [--acceleration X] [--seed-users N]
                             [--request-deadline S] [--wipe]

Runs the whole system on this machine (no AWS): embedded PostgreSQL shards with streaming
replicas, the scaling controller against a simulated fleet driven by a workload trace, the
scaling API, a small documents API and the live dashboard, all on 127.0.0.1.

  --port N            port of the API and the dashboard (default 3000; 0 picks a free one,
                      printed at once: the API answers 503 until the start-up finishes)
  --data-dir DIR      where the PostgreSQL data, logs and the lock live (default .local)
  --shards N          shard primaries, 1 to 8 (default 2)
  --replicas N        streaming replicas per shard, 0 to 3 (default 1)
  --trace FILE        timestamp,value CSV workload trace, plain or gzip (default the NASA
                      1995 trace shipped in data/traces/)
  --acceleration X    seconds of trace time per second, 1 to 3600 (default 60)
  --seed-users N      demo users seeded on a fresh start, 5 documents each (default 200)
  --request-deadline S  how long a documents-API request may wait on the shards, 0.1 to 60
                      seconds (default 5); past it the answer is a 503 (nothing written, retry)
                      or a 504 (a write whose outcome is unknown)
  --wipe              delete the data directory's PostgreSQL data first

Environment: SCALING_CHECK_INTERVAL, AUTO_SCALING_ENABLED, MIN_INSTANCES, MAX_INSTANCES (written
into the scaling configuration at start), SHARDING_STRATEGY.
Ctrl-C, SIGTERM or SIGHUP stops everything within 10 s; the data stays in the data directory
for the next start. Should the process be killed outright, its PostgreSQL servers shut down too.
`;

const table: FlagTable = {
  port: { type: 'string' },
  'data-dir': { type: 'string' },
  shards: { type: 'string' },
  replicas: { type: 'string' },
  trace: { type: 'string' },
  acceleration: { type: 'string' },
  'seed-users': { type: 'string' },
  'request-deadline': { type: 'string' },
  wipe: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

const flagsSchema = z.object({
  help: z.boolean().optional(),
  port: numberFlag({ min: 0, max: 65_535, int: true }).optional(),
  'data-dir': z.string().min(1, 'expected a directory').optional(),
  shards: numberFlag({ min: 1, max: 8, int: true }).optional(),
  replicas: numberFlag({ min: 0, max: 3, int: true }).optional(),
  trace: z.string().min(1, 'expected a file').optional(),
  acceleration: numberFlag({ min: 1, max: 3600, unit: 'trace seconds per second' }).optional(),
  'seed-users': numberFlag({ min: 0, max: MAX_SEED_USERS, int: true }).optional(),
  'request-deadline': numberFlag({ min: 0.1, max: 60, unit: 'seconds' }).optional(),
  wipe: z.boolean().optional(),
});

/** The validated options of a start. */
export interface StartOptions {
  readonly port: number;
  readonly dataDir: string;
  readonly shards: number;
  readonly replicasPerShard: number;
  readonly tracePath: string;
  readonly acceleration: number;
  readonly seedUsers: number;
  /** The documents API's request deadline. */
  readonly requestDeadlineMs: number;
  readonly wipe: boolean;
}

/** Parses the flags and checks the environment; throws {@link UsageError} naming what is wrong. */
export function parseStartOptions(args: readonly string[], cwd: string, env: Record<string, string | undefined>): StartOptions | 'help' {
  const f = parseFlags(args, table, flagsSchema);
  if (f.help === true) return 'help';
  try {
    // Each variable on its own, and MIN_INSTANCES against MAX_INSTANCES when both are set: the
    // other bound of one set alone is the stored configuration's (an operator may have raised
    // max_instances past the guide's 10), which the start checks once it has read it.
    const bounds: Record<string, unknown> = {};
    if (env.MIN_INSTANCES !== undefined && env.MAX_INSTANCES === undefined) bounds.max_instances = Number.MAX_SAFE_INTEGER;
    if (env.MAX_INSTANCES !== undefined && env.MIN_INSTANCES === undefined) bounds.min_instances = 0;
    applyScalingEnv(bounds, env);
  } catch (error) {
    if (error instanceof ScalingConfigError) throw new UsageError(error.issues.map((i) => `${i.path.replace(/^env\./, '')}: ${i.message}`).join('\n'), { cause: error });
    throw error;
  }
  const shards = f.shards ?? 2;
  // The sharding variables too, before anything is bound or created: local mode applies them
  // only once its PostgreSQL servers run, and a mistake found there would leave them initialised.
  try {
    checkLocalShardingEnv(shards, env);
  } catch (error) {
    if (error instanceof ShardingConfigError) throw new UsageError(error.problems.map((p) => (p.startsWith('ranges:') ? `SHARDING_STRATEGY=range_based: local mode configures no key ranges; use hash_based or directory_based (${p})` : p)).join('\n'), { cause: error });
    throw error;
  }
  return {
    port: f.port ?? 3000,
    dataDir: resolve(cwd, f['data-dir'] ?? '.local'),
    shards,
    replicasPerShard: f.replicas ?? 1,
    tracePath: f.trace === undefined ? DEFAULT_TRACE : resolve(cwd, f.trace),
    acceleration: f.acceleration ?? 60,
    seedUsers: f['seed-users'] ?? 200,
    requestDeadlineMs: f['request-deadline'] === undefined ? DEFAULT_REQUEST_DEADLINE_MS : Math.round(f['request-deadline'] * 1000),
    wipe: f.wipe === true,
  };
}

function banner(local: LocalMode, options: StartOptions): string {
  const u = local.url;
  const s = local.seed;
  const users = Object.entries(s.usersByShard).map(([id, n]) => `${id} ${n}`).join(', ');
  const nodes = local.cluster.nodes().map((n) => `${n.id}:${n.port}`).join('  ');
  return `
CA-DMS scaling: local mode is up (${(local.startupMs / 1000).toFixed(1)} s${local.cluster.fresh ? ', fresh data' : ', data reused'})

  Dashboard      ${u}/
  Scaling API    ${u}/api/v1/scaling/status   (OpenAPI: ${u}/api/v1/scaling/openapi.json)
  Documents API  ${u}/api/v1/users, ${u}/api/v1/documents
  PostgreSQL     ${nodes}
  Data           ${options.dataDir} (${s.seeded ? 'seeded' : 'kept'}: users ${users}; ${s.documents} documents)
  Workload       ${(options.tracePath.split('/').pop() ?? options.tracePath).replace(/\.gz$/, '')} at ${options.acceleration}x; controller every ${local.config.check_interval} s

Try:
  curl -s ${u}/api/v1/scaling/status
  curl -s ${u}/api/v1/scaling/metrics
  curl -s '${u}/api/v1/scaling/history?limit=5'
  curl -s ${u}/api/v1/scaling/shards/health
  curl -s ${u}/api/v1/scaling/shards/statistics
  curl -s -X POST ${u}/api/v1/scaling/stop -H 'content-type: application/json' -d '{"reason":"trying it"}'
  npm run load -- --url ${u} --duration 10

Scaling decisions (time, service, tasks, outcome, reason) follow. Ctrl-C stops everything.
`;
}

/** Ctrl-C, a supervisor's stop, the terminal closing. */
const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * Resolves on the first stop signal. Later ones are absorbed until `dispose`: one stop often
 * arrives twice (Ctrl-C reaches npm, which passes it on, and us), and a second signal must not
 * kill the process half-way through stopping its servers.
 */
function nextStopSignal(say: (line: string) => void): { promise: Promise<NodeJS.Signals>; dispose: () => void } {
  let dispose = (): void => undefined;
  const promise = new Promise<NodeJS.Signals>((resolveSignal) => {
    let first: NodeJS.Signals | undefined;
    const on = (signal: NodeJS.Signals): void => {
      if (first === undefined) {
        first = signal;
        resolveSignal(signal);
      } else {
        say(`${signal}: already stopping (after ${first}) ...`);
      }
    };
    for (const s of STOP_SIGNALS) process.on(s, on);
    dispose = () => {
      for (const s of STOP_SIGNALS) process.off(s, on);
    };
  });
  return { promise, dispose };
}

/** How long a start-up may still run after a stop signal before its servers are shut down at once. */
const STARTUP_STOP_GRACE_MS = 5_000;

async function run(args: readonly string[], io: CliIo): Promise<number> {
  const options = parseStartOptions(args, io.cwd, process.env);
  if (options === 'help') {
    io.stdout(usage);
    return 0;
  }
  // A trace that is not there is a mistake in the command: said before anything is created or bound.
  try {
    await access(options.tracePath, constants.R_OK);
  } catch (error) {
    throw new UsageError(`--trace: ${options.tracePath}: no such file, or not readable`, { cause: error });
  }
  try {
    await mkdir(options.dataDir, { recursive: true });
  } catch (error) {
    // A file where the directory should be (or above it): the flag is wrong, nothing is created.
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ENOTDIR') throw new UsageError(`--data-dir: ${options.dataDir} is not a directory (a file is in the way)`, { cause: error });
    throw error;
  }
  let lock;
  try {
    lock = await acquireLocalLock(join(options.dataDir, 'local.lock'));
  } catch (error) {
    if (error instanceof AlreadyRunningError) {
      io.stderr(`ca-dms-scaling start: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
  if (lock.replaced) io.stdout(`${lock.replaced}\n`);
  const signal = nextStopSignal((line) => io.stdout(`${line}\n`));
  try {
    if (options.wipe) {
      await rm(join(options.dataDir, 'pg'), { recursive: true, force: true });
      io.stdout(`wiped ${join(options.dataDir, 'pg')}\n`);
    }
    io.stdout(`starting local mode in ${options.dataDir} ...\n`);
    // The API handler's Powertools Logger and Metrics read these when first imported: in a
    // terminal, a JSON line per request and an EMF blob per call would bury the decisions.
    process.env.POWERTOOLS_LOG_LEVEL ??= 'WARN';
    process.env.POWERTOOLS_METRICS_DISABLED ??= 'true';
    const { startLocalMode } = await import('../../functions/local/runtime.js');
    const starting = startLocalMode({
      dataDir: options.dataDir,
      port: options.port,
      shards: options.shards,
      replicasPerShard: options.replicasPerShard,
      tracePath: options.tracePath,
      acceleration: options.acceleration,
      seedUsers: options.seedUsers,
      documentsPerUser: 5,
      requestDeadlineMs: options.requestDeadlineMs,
      env: process.env,
      onLine: (line) => io.stdout(`${line}\n`),
    });
    const first = await Promise.race([starting.then((local) => ({ local })), signal.promise.then((sig) => ({ sig }))]);
    if (!('local' in first)) {
      // A signal during start-up: a start cannot be cut half-way, so it gets a few seconds to
      // finish and stop in order; past that the process exits, and every server it started
      // gets an immediate shutdown (the embedded cluster's exit hook and parent-death signal).
      io.stdout(`${first.sig}: stopping once the start-up finishes ...\n`);
      const timer = setTimeout(() => {
        io.stderr(`ca-dms-scaling start: interrupted during start-up; PostgreSQL servers shut down immediately (the next start checks the data)\n`);
        lock.releaseSync();
        process.exit(1);
      }, STARTUP_STOP_GRACE_MS);
      try {
        await (await starting).stop();
      } finally {
        clearTimeout(timer);
      }
      return 0;
    }
    const local = first.local;
    await lock.update({ url: local.url });
    io.stdout(banner(local, options));
    const sig = await signal.promise;
    io.stdout(`\n${sig}: stopping the controller, the API and PostgreSQL ...\n`);
    await local.stop();
    io.stdout(`stopped; data kept in ${options.dataDir}\n`);
    return 0;
  } catch (error) {
    if (error instanceof PortNotPermittedError) {
      io.stderr(`ca-dms-scaling start: ${error.message}\n`);
      return 1;
    }
    if (error instanceof LocalEnvironmentError) {
      io.stderr(`ca-dms-scaling start: ${error.message}\n`);
      return 2;
    }
    if (error instanceof PortInUseError || error instanceof ClusterLayoutError || error instanceof TraceFileError || error instanceof ShardingConfigError || error instanceof SeedMarkerError) {
      const hint = error instanceof TraceFileError ? '\n(choose a timestamp,value CSV, plain or gzip, with --trace FILE, or leave --trace out for the NASA trace shipped in data/traces/)' : '';
      io.stderr(`ca-dms-scaling start: ${error.message}${hint}\n`);
      return error instanceof PortInUseError ? 1 : 2;
    }
    if (error instanceof MigrationError || error instanceof EmbeddedClusterError) {
      const hint =
        error instanceof MigrationNewerError
          ? `\n(the data in ${options.dataDir} was migrated by a newer version of ca-dms-scaling: start it with that version, or add --wipe to delete the data and start from fresh data)`
          : error instanceof MigrationError
            ? `\n(the data in ${options.dataDir} was migrated by another version; add --wipe to rebuild it)`
            : '';
      io.stderr(`ca-dms-scaling start: ${error.message}${hint}\n`);
      return 1;
    }
    throw error;
  } finally {
    signal.dispose();
    await lock.release();
  }
}

export const startCommand: CliCommand = { name: 'start', summary: 'run the whole system locally: embedded shards, controller, API, dashboard', usage, run };
