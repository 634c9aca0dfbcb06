/**
 * Runs every migration set where it belongs: `catalog` and `sharding` on the catalog database,
 * `shard` on each shard primary. Shared by the deploy-time custom resource and `npm run migrate`.
 *
 * @example
 * ```ts
 * const results = await migrateAll({ catalog: catalogPool, shards: [shard1, shard2] });
 * ```
 */
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import type pg from 'pg';
import { fillDirectorySlots } from '../../adapters/postgres/directory-slot-fill.js';
import { runMigrations } from '../../adapters/postgres/migrate.js';

/** Where the migration sets live in the source tree (bundles set MIGRATIONS_DIR instead). */
export const DEFAULT_MIGRATIONS_DIR = fileURLToPath(new URL('../../adapters/postgres/migrations/', import.meta.url));

/** The sets run on the catalog database, in order. */
export const CATALOG_SETS = ['catalog', 'sharding'] as const;
/** The set run on every shard primary. */
export const SHARD_SET = 'shard';

export interface MigrationSummary {
  /** `catalog`, the shard's id where the caller gave one (`SHARD_DATABASE_URLS` as ID=URL), else `shard N` (1-based, in the order given). */
  readonly target: string;
  readonly set: string;
  readonly applied: readonly string[];
  readonly alreadyApplied: number;
}

/** How a shard is named in the summary and the logs: its id where one was given, else its position (`shard N`, 1-based). */
export function shardLabel(i: number, id: string | undefined): string {
  return id ?? `shard ${i + 1}`;
}

/**
 * Applies the pending migrations of every set, then fills the directory's slots left empty
 * (sharding migration 031) until `fillUntil` (epoch ms; unbounded without it); stops at the first
 * failure (MigrationError). `shardIds`, in the order of `shards`, names each shard given an id;
 * `onFillTimeUp` is told the rows filled when `fillUntil` left some for the next run.
 */
export async function migrateAll(opts: {
  catalog: pg.Pool;
  shards: readonly pg.Pool[];
  shardIds?: readonly (string | undefined)[];
  dir?: string;
  fillUntil?: number;
  onFillTimeUp?: (filled: number) => void;
}): Promise<MigrationSummary[]> {
  const dir = opts.dir ?? DEFAULT_MIGRATIONS_DIR;
  const out: MigrationSummary[] = [];
  for (const set of CATALOG_SETS) {
    const r = await runMigrations(opts.catalog, set, join(dir, set));
    out.push({ target: 'catalog', set, applied: r.applied, alreadyApplied: r.alreadyApplied });
  }
  for (const [i, shard] of opts.shards.entries()) {
    const r = await runMigrations(shard, SHARD_SET, join(dir, SHARD_SET));
    out.push({ target: shardLabel(i, opts.shardIds?.[i]), set: SHARD_SET, applied: r.applied, alreadyApplied: r.alreadyApplied });
  }
  // The directory rows written before sharding migration 031 given their slot, a batch a
  // transaction (directory-slot-fill.ts): not in 031's own transaction, which would hold the
  // directory's writers off for the whole fill. Nothing left, it is one statement. After the
  // shards' migrations, so that a long fill cut short by `fillUntil` leaves no migration undone;
  // what it leaves, the next run fills (readers take the NULL rows as their slot's meanwhile).
  await fillDirectorySlots(opts.catalog, {
    ...(opts.fillUntil === undefined ? {} : { until: opts.fillUntil }),
    ...(opts.onFillTimeUp === undefined ? {} : { onTimeUp: opts.onFillTimeUp }),
  });
  return out;
}
