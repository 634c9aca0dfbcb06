/**
 * The routing local mode was started with, kept beside its cluster (`<dataDir>/routing.json`) so
 * that `shards fences --local` judges each fence row by the routing the running routers use, not
 * by whatever sharding variables the review's own shell happens to have (`start` applies
 * `SHARDING_STRATEGY` and `SHARDING_ENABLED` from its environment: a review from another shell
 * without them took hash routing with directory overrides for a local mode started with
 * `SHARDING_STRATEGY=directory_based`, and settled directory rows by the wrong route).
 *
 * @example
 * ```ts
 * await writeLocalRouting('.local', moveRoutingOf(shardingConfig)); // by start, before it serves
 * const routing = await readLocalRouting('.local');                 // undefined: not recorded
 * ```
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import type { MoveRouting } from '../core/sharding/move-machine.js';

const ROUTING_FILE = 'routing.json';

const routingSchema = z
  .object({
    strategy: z.enum(['hash_based', 'range_based', 'directory_based']),
    overrideHash: z.boolean(),
    fallback: z.enum(['hash', 'reject']),
    enabled: z.boolean().optional(),
  })
  .strict();

/** Thrown when the recorded routing cannot be read (not JSON, or not a routing). */
export class LocalRoutingFileError extends Error {
  override readonly name = 'LocalRoutingFileError';
}

/** Records `routing` as local mode's, replacing the file atomically (a reader never sees half of it). */
export async function writeLocalRouting(dataDir: string, routing: MoveRouting): Promise<void> {
  const path = join(dataDir, ROUTING_FILE);
  const partial = `${path}.${process.pid}.tmp`;
  // The routing's fields only (routingSchema): where a disabled routing came from is said on reading.
  const { strategy, overrideHash, fallback, enabled } = routing;
  await writeFile(partial, `${JSON.stringify({ strategy, overrideHash, fallback, ...(enabled === undefined ? {} : { enabled }) }, null, 2)}\n`, { mode: 0o644 });
  await rename(partial, path);
}

/**
 * The routing local mode under `dataDir` was started with, or undefined where none is recorded
 * (a local mode started before this file existed). Throws {@link LocalRoutingFileError} naming
 * the file and what is wrong with it.
 */
export async function readLocalRouting(dataDir: string): Promise<MoveRouting | undefined> {
  const path = join(dataDir, ROUTING_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new LocalRoutingFileError(`${path}: cannot be read: ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new LocalRoutingFileError(`${path}: not valid JSON (${(err as Error).message}); start local mode again to rewrite it`, { cause: err });
  }
  const parsed = routingSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new LocalRoutingFileError(`${path}: ${issue?.path.join('.') || 'the document'}: ${issue?.message ?? 'not a routing'}; start local mode again to rewrite it`);
  }
  const { enabled, ...rest } = parsed.data;
  if (enabled === undefined) return rest;
  // Local mode's own configuration enables sharding: only start's SHARDING_ENABLED disables it.
  return enabled ? { ...rest, enabled } : { ...rest, enabled, disabledBy: `SHARDING_ENABLED=false in the environment local mode was started with, recorded in ${path}` };
}
