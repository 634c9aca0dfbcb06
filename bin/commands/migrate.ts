/**
 * `ca-dms-scaling migrate`: applies the pending migrations, `catalog` and `sharding` on the
 * catalog database and `shard` on every shard primary, the same way the deploy-time custom
 * resource does.
 */
import type pg from 'pg';
import { z } from 'zod';
import { MigrationError } from '../../functions/adapters/postgres/migrate.js';
import { createPool } from '../../functions/handlers/shared/db.js';
import { migrateAll } from '../../functions/handlers/shared/migrations.js';
import { parseShardUrls, ShardUrlsError, type ShardUrl } from '../../functions/handlers/shared/shard-urls.js';
import type { CliCommand, CliIo, FlagTable } from './kit.js';
import { databaseUrl, parseFlags, UsageError } from './kit.js';

const usage = `Usage: ca-dms-scaling migrate [--catalog-url URL] [--shard-url URL ...]

Applies pending forward-only migrations: the catalog and sharding sets on the catalog
database, the shard set on every shard primary. Safe to run again: applied migrations
are skipped, and an edited applied migration is reported instead of ignored.

  --catalog-url URL   the catalog database (default: $CATALOG_DATABASE_URL)
  --shard-url URL     a shard primary, or ID=URL; repeat or comma-separate
                      (default: $SHARD_DATABASE_URLS: a JSON array or comma-separated
                      list of URLs, or of ID=URL pairs; a shard given an id is named
                      by it, the others shard 1, shard 2, ... in order)

URLs are postgresql://user:password@host:port/db; a host other than 127.0.0.1, ::1 or
localhost must carry sslmode=verify-full (TLS is always verified).
`;

const table: FlagTable = {
  'catalog-url': { type: 'string' },
  'shard-url': { type: 'string', multiple: true },
  help: { type: 'boolean', short: 'h' },
};

const flagsSchema = z.object({
  'catalog-url': databaseUrl.optional(),
  'shard-url': z.array(z.string()).optional(),
  help: z.boolean().optional(),
});

/** Resolves flags and environment into validated URLs, naming the flag or variable at fault. */
function resolveTargets(flags: z.infer<typeof flagsSchema>, env: Record<string, string | undefined>): { catalog: string; shards: ShardUrl[] } {
  const catalogRaw = flags['catalog-url'] ?? env['CATALOG_DATABASE_URL'];
  if (catalogRaw === undefined) throw new UsageError('--catalog-url: is required (or set CATALOG_DATABASE_URL)');
  const catalog = databaseUrl.safeParse(catalogRaw);
  if (!catalog.success) throw new UsageError(`CATALOG_DATABASE_URL: ${catalog.error.issues[0]?.message ?? 'invalid'}`);
  // One reading of the list for every reader (shard-urls.ts): the migrate function's, `shards fences`'.
  const fromFlags = flags['shard-url'] !== undefined;
  try {
    const shards = fromFlags ? parseShardUrls(flags['shard-url'] ?? [], '--shard-url') : parseShardUrls(env['SHARD_DATABASE_URLS'] ?? '', 'SHARD_DATABASE_URLS');
    return { catalog: catalog.data, shards };
  } catch (error) {
    if (error instanceof ShardUrlsError) throw new UsageError(error.message, { cause: error });
    throw error;
  }
}

/** Builds the command over an environment (the process's by default). */
export function createMigrateCommand(env: Record<string, string | undefined> = process.env): CliCommand {
  async function run(args: readonly string[], io: CliIo): Promise<number> {
    const flags = parseFlags(args, table, flagsSchema);
    if (flags.help === true) {
      io.stdout(usage);
      return 0;
    }
    const targets = resolveTargets(flags, env);
    const pools: pg.Pool[] = [];
    try {
      const overrides = { max: 1, statement_timeout: 0, query_timeout: 0, connectionTimeoutMillis: 10_000 };
      const catalog = await createPool({ url: targets.catalog }, undefined, overrides);
      pools.push(catalog);
      const shards = await Promise.all(targets.shards.map(({ url }) => createPool({ url }, undefined, overrides)));
      pools.push(...shards);
      const results = await migrateAll({ catalog, shards, shardIds: targets.shards.map((s) => s.id) });
      for (const r of results) {
        const applied = r.applied.length === 0 ? 'up to date' : `applied ${r.applied.join(', ')}`;
        io.stdout(`${r.target.padEnd(9)} ${r.set.padEnd(9)} ${applied} (${r.alreadyApplied} already applied)\n`);
      }
      return 0;
    } catch (error) {
      if (error instanceof MigrationError) {
        io.stderr(`ca-dms-scaling migrate: ${error.message}\n`);
        return 1;
      }
      throw error;
    } finally {
      await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
    }
  }
  return { name: 'migrate', summary: 'apply pending database migrations to the catalog and every shard', usage, run };
}

/** The `migrate` command. */
export const migrateCommand: CliCommand = createMigrateCommand();
