/**
 * `ca-dms-scaling shards fences`: lists, per shard, the `write_fences` rows no live move explains
 * (a hand change of the slot map or of a pin that did not finish, a `moved` row on the shard the
 * unit routes to), each with what it does to the unit's writes; `--settle` fixes those whose fix
 * is provably safe (functions/adapters/postgres/fence-review.ts, docs/sharding-spec.md section 9,
 * "Settling the rows a hand change left"). A key's `directory` rows are judged by the shard the key
 * routes to, which depends on the sharding configuration (whether pins override the hash): read
 * from `SHARDING_CONFIG_JSON` as the scaling API's function reads it, else the one the runtimes
 * recorded in the catalog (runtime-routings.ts, sharding migration 022) where they recorded one
 * recently; with `--local`, local mode's. Without any they are left to the operator. `--settle` is
 * refused where `SHARDING_CONFIG_JSON`'s routing differs from one a runtime recorded recently.
 */
import { resolve } from 'node:path';
import type pg from 'pg';
import { z } from 'zod';
import { parseJsonText } from '../../functions/core/json-text.js';
import { loadShardingConfig } from '../../functions/core/sharding/config.js';
import { ShardingConfigError } from '../../functions/core/sharding/errors.js';
import { describeRouting, moveRoutingOf, sameRouting, type MoveRouting } from '../../functions/core/sharding/move-machine.js';
import { EmbeddedClusterError, runningEmbeddedCluster } from '../../functions/adapters/postgres/embedded-cluster.js';
import { reviewFences, type FenceReview } from '../../functions/adapters/postgres/fence-review.js';
import { DEFAULT_RECORDED_WITHIN_MS, recordedRoutings, RecordedRoutingsError, routingForReview } from '../../functions/adapters/postgres/runtime-routings.js';
import { createPool } from '../../functions/handlers/shared/db.js';
import { parseShardUrls, shardUrlsById, ShardUrlsError } from '../../functions/handlers/shared/shard-urls.js';
import { localShardingConfig } from '../../functions/local/sharding-config.js';
import { LocalRoutingFileError, readLocalRouting } from '../../functions/local/routing-file.js';
import type { CliCommand, CliIo, FlagTable } from './kit.js';
import { CliError, databaseUrl, EXIT_FAILURE, numberFlag, parseFlags, UsageError } from './kit.js';

const usage = `Usage: ca-dms-scaling shards fences [--settle] [--older-than SECONDS] [--all] [--json]
                                   [--catalog-url URL] [--shard SHARD ...] [--recorded-within SECONDS]
                                   [--ignore-superseded]
                                   | [--local [--data-dir DIR]]

Lists, per shard, every write_fences row that no live move explains: a row left 'fenced' by a
slot map or a pin changed by hand that did not finish, a 'moved' row on the shard the unit
routes to (a hand change inside a caller's transaction), and rows left to the operator, each with
its state, unit, job, moved_to, map version and what it does to the unit's writes.

  --settle            fix the rows whose fix is provably safe: a 'fenced' hand row where the unit
                      routes to another shard is set 'moved' to it; a 'fenced' hand row, or a
                      'moved' row, on the shard the unit routes to is reopened (the shard takes the
                      unit's writes again) only while no hand change is between its fence and its
                      commit, no move of the slot (or key) is unfinished, the row is older than
                      --older-than, and no rows of the unit sit behind a 'moved' row. A key's
                      directory rows are judged by the shard its route names (its pin, else its
                      slot's owner), which needs the sharding configuration's routing:
                      $SHARDING_CONFIG_JSON (as the scaling API's function has it), else the one
                      the runtimes (the API's and the moves worker's functions, local mode)
                      recorded in the catalog within --recorded-within, where they all recorded
                      the same; local mode's with --local; without any they are left to the
                      operator. Refused where $SHARDING_CONFIG_JSON's routing differs from one a
                      runtime recorded (listing still works, saying so). A live move's rows are
                      never touched.
  --older-than SECONDS  seconds since a row was last written before --settle may
                      reopen it (default 900)
  --all               list the explained rows too (open rows, a live move's, moved rows on a shard
                      the unit does not route to)
  --json              print the review as JSON
  --catalog-url URL   the catalog database (default: $CATALOG_DATABASE_URL); a login that may
                      lock catalog.owner_change_review (the control login, or the owner)
  --recorded-within SECONDS  how recently a runtime must have recorded its routing (at its start:
                      a Lambda cold start) for the review to count it (default 86400, a day); narrow
                      it only once every runtime of an older routing has stopped (a deploy since)
  --ignore-superseded  leave out the records of a routing whose actor (scaling-api, scaling-moves,
                      ...) was built with another routing since: say it once every runtime of
                      that actor built before has stopped (a deploy that changed the routing
                      replaced them); another actor's record of the old routing still counts.
                      The listing marks such records "superseded"
  --shard SHARD       a shard as ID=URL (its id, as the sharding configuration names it, and its
                      primary's URL); repeat or comma-separate
                      (default: $SHARD_DATABASE_URLS, a JSON array or comma-separated list of
                      ID=URL pairs; URLs without ids are the shards of $SHARDING_CONFIG_JSON in its
                      order, and refused without it); a login that may write write_fences (the
                      mover's, or the owner) for --settle
  --local             review local mode's running cluster (npm start): its catalog and shards as
                      its manifest and servers say, and the routing start recorded in
                      DIR/routing.json ($SHARDING_STRATEGY and $SHARDING_ENABLED here are
                      refused where they disagree with it); not with --catalog-url or --shard
  --data-dir DIR      with --local: the directory local mode runs in (default .local, as start's)

Exit code 0 when nothing is left for the operator, 1 when some row still needs them (or a shard
could not be read, or no local cluster runs), 2 for bad flags.
`;

const table: FlagTable = {
  settle: { type: 'boolean' },
  'older-than': { type: 'string' },
  all: { type: 'boolean' },
  json: { type: 'boolean' },
  'catalog-url': { type: 'string' },
  shard: { type: 'string', multiple: true },
  local: { type: 'boolean' },
  'data-dir': { type: 'string' },
  'recorded-within': { type: 'string' },
  'ignore-superseded': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

const flagsSchema = z
  .object({
    settle: z.boolean().optional(),
    'older-than': numberFlag({ min: 0, max: 86_400 * 365, int: true, unit: 'seconds' }).optional(),
    all: z.boolean().optional(),
    json: z.boolean().optional(),
    'catalog-url': databaseUrl.optional(),
    shard: z.array(z.string()).optional(),
    local: z.boolean().optional(),
    'data-dir': z.string().min(1, 'expected a directory').optional(),
    'recorded-within': numberFlag({ min: 1, max: 86_400 * 365, int: true, unit: 'seconds' }).optional(),
    'ignore-superseded': z.boolean().optional(),
    help: z.boolean().optional(),
  })
  .superRefine((f, ctx) => {
    // Two sources of the databases at once: which one was meant is not the command's to guess.
    for (const flag of ['catalog-url', 'shard'] as const) {
      if (f.local === true && f[flag] !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['local'], message: `cannot be combined with --${flag}: --local reviews local mode's running cluster, whose catalog and shards its manifest names; drop one of them` });
      }
    }
    for (const flag of ['recorded-within', 'ignore-superseded'] as const) {
      if (f.local === true && f[flag] !== undefined) {
        ctx.addIssue({ code: 'custom', path: [flag], message: "not with --local: --local judges by the routing local mode's start recorded in its routing.json, not by the catalog's records; drop one of them" });
      }
    }
    if (f['data-dir'] !== undefined && f.local !== true) ctx.addIssue({ code: 'custom', path: ['data-dir'], message: 'only with --local (the directory local mode runs in)' });
  });

/**
 * Every shard's URL by its id, from the flag or the variable, read as every reader reads
 * SHARD_DATABASE_URLS (shard-urls.ts): ID=URL pairs, or URLs numbered by SHARDING_CONFIG_JSON's
 * shards; the rows of a URL read under another shard's id would be judged by the map of the other.
 */
function parseShards(raw: string | readonly string[], source: string, env: Record<string, string | undefined>): Map<string, string> {
  try {
    return shardUrlsById(parseShardUrls(raw, source), source, env);
  } catch (error) {
    if (error instanceof ShardUrlsError) throw new UsageError(error.message, { cause: error });
    throw error;
  }
}

/** Where the command reviews: the catalog, the shards' primaries, and how the configuration routes (unknown: undefined). */
interface Target {
  readonly catalogUrl: string;
  readonly shardUrls: ReadonlyMap<string, string>;
  /** Remotely: `SHARDING_CONFIG_JSON`'s, checked against the runtimes' records once the catalog is open. */
  readonly routing: MoveRouting | undefined;
  /** With `--local`: where its routing came from, for the review's routing line. */
  readonly localNote?: string;
}

/** The databases from the flags or the environment, and the routing from `SHARDING_CONFIG_JSON` where set. */
function remoteTarget(flags: { readonly 'catalog-url'?: string | undefined; readonly shard?: readonly string[] | undefined }, env: Record<string, string | undefined>): Target {
  const catalogRaw = flags['catalog-url'] ?? env['CATALOG_DATABASE_URL'];
  if (catalogRaw === undefined) throw new UsageError('--catalog-url: is required (or set CATALOG_DATABASE_URL, or use --local for local mode)');
  const catalogUrl = databaseUrl.safeParse(catalogRaw);
  if (!catalogUrl.success) throw new UsageError(`CATALOG_DATABASE_URL: ${catalogUrl.error.issues[0]?.message ?? 'invalid'}`);
  // The configuration first: its own errors say what is wrong with it, before the shard list's check of ids against it.
  const routing = routingFromEnv(env);
  const shardUrls = flags.shard !== undefined ? parseShards(flags.shard, '--shard', env) : parseShards(env['SHARD_DATABASE_URLS'] ?? '', 'SHARD_DATABASE_URLS', env);
  return { catalogUrl: catalogUrl.data, shardUrls, routing };
}

/**
 * The sharding configuration's routing as the scaling API's function reads it: the document in
 * `SHARDING_CONFIG_JSON` with `SHARDING_STRATEGY`, `SHARDING_ENABLED` and `DATABASE_REPLICA_URLS`
 * on top (its shards' URLs may be without credentials: only the routing is used). Undefined
 * without the variable: the review then leaves directory rows to the operator.
 */
function routingFromEnv(env: Record<string, string | undefined>): MoveRouting | undefined {
  const raw = env['SHARDING_CONFIG_JSON'];
  if (raw === undefined || raw.trim() === '') {
    // Read only on top of that document: dropped unsaid, the operator who set them believed the
    // review judged by them while it judged by the routing the runtimes recorded.
    const set = ROUTING_VARIABLES.filter((name) => env[name] !== undefined);
    if (set.length > 0) {
      throw new UsageError(
        `${set.join(', ')}: set without SHARDING_CONFIG_JSON, on top of which the review reads ${set.length > 1 ? 'them' : 'it'} (as the scaling API's function does): set SHARDING_CONFIG_JSON too, or unset ${set.length > 1 ? 'them' : 'it'} to have the review judge by the routing the runtimes recorded in the catalog`,
      );
    }
    return undefined;
  }
  let doc: unknown;
  try {
    doc = parseJsonText(raw);
  } catch (err) {
    throw new UsageError(`SHARDING_CONFIG_JSON: not valid JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  try {
    return moveRoutingOf(loadShardingConfig(doc, env), env, 'SHARDING_CONFIG_JSON');
  } catch (err) {
    if (err instanceof ShardingConfigError) throw new UsageError(`SHARDING_CONFIG_JSON: ${err.problems.join('; ')}`, { cause: err });
    throw err;
  }
}

/** The sharding variables that change local mode's routing (functions/local/sharding-config.ts). */
const ROUTING_VARIABLES = ['SHARDING_STRATEGY', 'SHARDING_ENABLED'] as const;

/**
 * Local mode's running cluster under `dataDir` (its `pg` directory: the manifest and the servers'
 * `postmaster.pid`), and the routing `start` recorded beside it (functions/local/routing-file.ts),
 * or, where none is recorded, local mode's routing with this shell's sharding variables on top.
 */
async function localTarget(dataDir: string, env: Record<string, string | undefined>): Promise<Target> {
  let running;
  try {
    running = await runningEmbeddedCluster(resolve(dataDir, 'pg'));
  } catch (err) {
    if (err instanceof EmbeddedClusterError) throw new CliError(`--local: ${err.message}`, { cause: err });
    throw err;
  }
  let fromShell: MoveRouting;
  try {
    fromShell = moveRoutingOf(localShardingConfig(running.shards, env), env, "local mode's configuration");
  } catch (err) {
    if (err instanceof ShardingConfigError) throw new UsageError(err.problems.join('\n'), { cause: err });
    throw err;
  }
  // The routing `start` was given is the routers' (routing-file.ts); this shell's variables only
  // where it recorded none (a local mode started before the file existed). A shell that sets them
  // otherwise is refused: which one the operator meant cannot be told.
  let started: MoveRouting | undefined;
  try {
    started = await readLocalRouting(dataDir);
  } catch (err) {
    if (err instanceof LocalRoutingFileError) throw new CliError(`--local: ${err.message}`, { cause: err });
    throw err;
  }
  const shellSets = ROUTING_VARIABLES.filter((name) => env[name] !== undefined);
  if (started !== undefined && shellSets.length > 0 && !sameRouting(started, fromShell)) {
    throw new UsageError(
      `--local: ${shellSets.join(' and ')} in this shell ${shellSets.length > 1 ? 'give' : 'gives'} ${describeRouting(fromShell)}, but local mode under ${dataDir} was started with ${describeRouting(started)}, which its routers use: unset ${shellSets.length > 1 ? 'them' : 'it'} (or set ${shellSets.length > 1 ? 'them' : 'it'} as start had ${shellSets.length > 1 ? 'them' : 'it'}) and run again`,
    );
  }
  const routing = started ?? fromShell;
  const localNote =
    started !== undefined
      ? `judged by the routing local mode under ${dataDir} was started with, ${describeRouting(started)} (routing.json)`
      : `judged by local mode's routing with this shell's sharding variables on top, ${describeRouting(fromShell)}: local mode under ${dataDir} recorded none (started before routing.json existed)`;
  return { catalogUrl: running.catalogUrl, shardUrls: new Map(running.shards.map((s) => [s.shardId, s.primaryUrl])), routing, localNote };
}

/** The review as lines an operator reads; `routing` says what a key's rows were judged by. */
function describe(review: FenceReview, settle: boolean, routing: string): string {
  const lines: string[] = [`slot map version ${review.mapVersion}; ${review.rows.length} row(s) listed, ${review.explained} explained by a live move or the map`, `routing: ${routing}`];
  if (review.changeInFlight !== undefined) lines.push(`note: ${review.changeInFlight}`);
  if (review.ownerHistory !== undefined) lines.push(`note: ${review.ownerHistory}`);
  for (const u of review.unreachable) lines.push(`unreachable: ${u}`);
  for (const r of review.rows) {
    lines.push(
      `${r.shard}  ${r.kind} ${r.unitId}  ${r.state}  job ${r.jobId ?? '-'}  moved_to ${r.movedTo ?? '-'}  map_version ${r.mapVersion}  owner ${r.owner ?? '?'}${r.kind === 'directory' ? `  route ${r.route ?? '?'}` : ''}  age ${Math.round(r.ageMs / 1000)} s`,
      `    ${r.diagnosis}`,
      `    action: ${r.action}${r.withheld === undefined ? '' : ` (withheld: ${r.withheld})`}`,
    );
    if (settle && r.outcome !== undefined) lines.push(`    ${r.outcome}`);
  }
  if (!settle && review.rows.some((r) => r.action !== 'none' && r.withheld === undefined)) lines.push('run again with --settle to fix the rows whose action is not none');
  return `${lines.join('\n')}\n`;
}

/** Builds the command over an environment (the process's by default). */
export function createShardsCommand(env: Record<string, string | undefined> = process.env): CliCommand {
  async function run(args: readonly string[], io: CliIo): Promise<number> {
    const [sub, ...rest] = args;
    if (sub === '--help' || sub === '-h' || sub === 'help') {
      io.stdout(usage);
      return 0;
    }
    if (sub !== 'fences') throw new UsageError(sub === undefined ? 'a subcommand is required: fences' : `unknown subcommand "${sub}"; valid subcommands: fences`);
    const flags = parseFlags(rest, table, flagsSchema);
    if (flags.help === true) {
      io.stdout(usage);
      return 0;
    }
    const target = flags.local === true ? await localTarget(resolve(io.cwd, flags['data-dir'] ?? '.local'), env) : remoteTarget(flags, env);
    const { shardUrls } = target;
    const pools: pg.Pool[] = [];
    try {
      const overrides = { max: 2, connectionTimeoutMillis: 10_000 };
      const catalog = await createPool({ url: target.catalogUrl }, undefined, overrides);
      pools.push(catalog);
      const shards = new Map<string, pg.Pool>();
      for (const [id, url] of shardUrls) {
        const pool = await createPool({ url }, undefined, overrides);
        pools.push(pool);
        shards.set(id, pool);
      }
      const settle = flags.settle === true;
      // Remotely, the routing the runtimes recorded (runtime-routings.ts) decides with
      // SHARDING_CONFIG_JSON's, before any shard is read: a settle judged by a routing some router
      // does not use is refused, nothing touched. Local mode's routing.json is its start's own record.
      let judged: { routing: MoveRouting | undefined; from: string | undefined; note: string; unknown?: string };
      if (target.localNote !== undefined) {
        judged = { routing: target.routing, from: '--local', note: target.localNote };
      } else {
        const withinMs = (flags['recorded-within'] ?? DEFAULT_RECORDED_WITHIN_MS / 1000) * 1000;
        let recorded;
        try {
          recorded = await recordedRoutings(catalog, withinMs);
        } catch (err) {
          if (err instanceof RecordedRoutingsError) throw new CliError(err.message, { cause: err });
          throw err;
        }
        const decided = routingForReview(target.routing, recorded, withinMs, { ignoreSuperseded: flags['ignore-superseded'] === true });
        if (settle && decided.conflict !== undefined) throw new CliError(decided.conflict);
        judged = decided;
      }
      const review = await reviewFences({
        catalog,
        shards,
        settle,
        all: flags.all === true,
        ...(flags['older-than'] === undefined ? {} : { olderThanMs: flags['older-than'] * 1000 }),
        ...(judged.routing === undefined ? {} : { routing: judged.routing }),
        ...(judged.unknown === undefined ? {} : { routingUnknown: judged.unknown }),
      });
      const routing = { judgedBy: judged.routing ?? null, from: judged.from ?? null, note: judged.note };
      io.stdout(flags.json === true ? `${JSON.stringify({ ...review, routing }, null, 2)}\n` : describe(review, settle, judged.note));
      const left = review.rows.some((r) => r.action === 'none' ? r.diagnosis !== 'explained: nothing to settle' : r.outcome === undefined || !r.outcome.startsWith('settled'));
      return left || review.unreachable.length > 0 ? EXIT_FAILURE : 0;
    } finally {
      await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
    }
  }
  return { name: 'shards', summary: "list (and with --settle, fix) the shards' write_fences rows that no live move explains", usage, run };
}

/** The `shards` command. */
export const shardsCommand: CliCommand = createShardsCommand();
