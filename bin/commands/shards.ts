/**
 * `ca-dms-scaling shards fences`: lists, per shard, the `write_fences` rows no live move explains
 * (a hand change of the slot map that did not finish, a `moved` row on the shard the map names),
 * each with what it does to the unit's writes; `--settle` fixes those whose fix is provably safe
 * (functions/adapters/postgres/fence-review.ts, docs/sharding-spec.md section 9, "Settling the
 * rows a hand change left").
 */
import type pg from 'pg';
import { z } from 'zod';
import { reviewFences, type FenceReview } from '../../functions/adapters/postgres/fence-review.js';
import { createPool } from '../../functions/handlers/shared/db.js';
import { parseShardUrls, shardUrlsById, ShardUrlsError } from '../../functions/handlers/shared/shard-urls.js';
import type { CliCommand, CliIo, FlagTable } from './kit.js';
import { databaseUrl, EXIT_FAILURE, numberFlag, parseFlags, UsageError } from './kit.js';

const usage = `Usage: ca-dms-scaling shards fences [--settle] [--older-than SECONDS] [--all] [--json]
                                   [--catalog-url URL] [--shard SHARD ...]

Lists, per shard, every write_fences row that no live move explains: a row left 'fenced' by a
slot map published by hand that did not finish, a 'moved' row on the shard the map names (a
hand change inside a caller's transaction), and rows left to the operator, each with its state,
unit, job, moved_to, map version and what it does to the unit's writes.

  --settle            fix the rows whose fix is provably safe: a 'fenced' hand row where the map
                      names another shard is set 'moved' to it; a 'fenced' hand row, or a 'moved'
                      row, on the shard the map names is deleted (the shard takes the slot's writes
                      again) only while no hand change is between its fence and its commit, no move
                      of the slot is unfinished, and the row is older than --older-than. A live
                      move's rows are never touched.
  --older-than SECONDS  seconds since a row was last written before --settle may
                      delete it (default 900)
  --all               list the explained rows too (open rows, a live move's, moved rows on a shard
                      the map does not name)
  --json              print the review as JSON
  --catalog-url URL   the catalog database (default: $CATALOG_DATABASE_URL); a login that may
                      lock catalog.owner_change_review (the control login, or the owner)
  --shard SHARD       a shard as ID=URL (its id, as the sharding configuration names it, and its
                      primary's URL); repeat or comma-separate
                      (default: $SHARD_DATABASE_URLS, a JSON array or comma-separated list of
                      ID=URL pairs; URLs without ids are the shards of $SHARDING_CONFIG_JSON in its
                      order, and refused without it); a login that may write write_fences (the
                      mover's, or the owner) for --settle

Exit code 0 when nothing is left for the operator, 1 when some row still needs them (or a shard
could not be read), 2 for bad flags.
`;

const table: FlagTable = {
  settle: { type: 'boolean' },
  'older-than': { type: 'string' },
  all: { type: 'boolean' },
  json: { type: 'boolean' },
  'catalog-url': { type: 'string' },
  shard: { type: 'string', multiple: true },
  help: { type: 'boolean', short: 'h' },
};

const flagsSchema = z.object({
  settle: z.boolean().optional(),
  'older-than': numberFlag({ min: 0, max: 86_400 * 365, int: true, unit: 'seconds' }).optional(),
  all: z.boolean().optional(),
  json: z.boolean().optional(),
  'catalog-url': databaseUrl.optional(),
  shard: z.array(z.string()).optional(),
  help: z.boolean().optional(),
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

/** The review as lines an operator reads. */
function describe(review: FenceReview, settle: boolean): string {
  const lines: string[] = [`slot map version ${review.mapVersion}; ${review.rows.length} row(s) listed, ${review.explained} explained by a live move or the map`];
  if (review.changeInFlight !== undefined) lines.push(`note: ${review.changeInFlight}`);
  for (const u of review.unreachable) lines.push(`unreachable: ${u}`);
  for (const r of review.rows) {
    lines.push(
      `${r.shard}  ${r.kind} ${r.unitId}  ${r.state}  job ${r.jobId ?? '-'}  moved_to ${r.movedTo ?? '-'}  map_version ${r.mapVersion}  owner ${r.owner ?? '?'}  age ${Math.round(r.ageMs / 1000)} s`,
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
    const catalogRaw = flags['catalog-url'] ?? env['CATALOG_DATABASE_URL'];
    if (catalogRaw === undefined) throw new UsageError('--catalog-url: is required (or set CATALOG_DATABASE_URL)');
    const catalogUrl = databaseUrl.safeParse(catalogRaw);
    if (!catalogUrl.success) throw new UsageError(`CATALOG_DATABASE_URL: ${catalogUrl.error.issues[0]?.message ?? 'invalid'}`);
    const shardUrls = flags.shard !== undefined ? parseShards(flags.shard, '--shard', env) : parseShards(env['SHARD_DATABASE_URLS'] ?? '', 'SHARD_DATABASE_URLS', env);
    const pools: pg.Pool[] = [];
    try {
      const overrides = { max: 2, connectionTimeoutMillis: 10_000 };
      const catalog = await createPool({ url: catalogUrl.data }, undefined, overrides);
      pools.push(catalog);
      const shards = new Map<string, pg.Pool>();
      for (const [id, url] of shardUrls) {
        const pool = await createPool({ url }, undefined, overrides);
        pools.push(pool);
        shards.set(id, pool);
      }
      const settle = flags.settle === true;
      const review = await reviewFences({
        catalog,
        shards,
        settle,
        all: flags.all === true,
        ...(flags['older-than'] === undefined ? {} : { olderThanMs: flags['older-than'] * 1000 }),
      });
      io.stdout(flags.json === true ? `${JSON.stringify(review, null, 2)}\n` : describe(review, settle));
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
