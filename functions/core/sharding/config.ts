/**
 * The sharding configuration: the CA-DMS guide's `ShardingConfig` (strategy, shards with
 * `shard_id`, `database_url`, `weight`, `read_replicas`, and `default_shard`) accepted as it
 * stands, plus what the strategies and the replica router need: `ranges` for `range_based`,
 * the directory's fallback and cache TTL, replica lag bounds and the health-check interval.
 * The guide's environment variables `SHARDING_ENABLED`, `SHARDING_STRATEGY` and
 * `DATABASE_REPLICA_URLS` override the document (see {@link applyShardingEnv}).
 *
 * Invalid configuration is rejected with a {@link ShardingConfigError} that lists every problem.
 * Connection strings are never echoed with their password.
 *
 * @example
 * ```ts
 * const config = loadShardingConfig({
 *   strategy: 'hash_based',
 *   shards: [
 *     { shard_id: 'shard_001', database_url: 'postgresql://app:secret@shard1:5432/ca_dms', read_replicas: [] },
 *     { shard_id: 'shard_002', database_url: 'postgresql://app:secret@shard2:5432/ca_dms' },
 *   ],
 *   default_shard: 'shard_001',
 * }, process.env);
 * ```
 */
import { z } from 'zod';
import { ShardingConfigError } from './errors.js';
import { RANGE_KEY_TYPES, rangeProblems, type RangeSpec } from './strategies/range.js';

export const SHARDING_STRATEGIES = ['hash_based', 'range_based', 'directory_based'] as const;
export type ShardingStrategy = (typeof SHARDING_STRATEGIES)[number];

/**
 * Replaces the password of a connection string (user-info or `password=` parameter) with `***`.
 * Works on strings that are not valid URLs too, so anything echoed in a message is safe; the
 * password runs to the last `@`, so an unescaped `@` in it cannot leak its tail.
 *
 * @example
 * ```ts
 * redactUrl('postgresql://app:s3cret@db:5432/ca_dms'); // 'postgresql://app:***@db:5432/ca_dms'
 * ```
 */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:?#]*:).*@/i, '$1***@').replace(/([?&]password=)[^&#]*/gi, '$1***');
}

/** True for `postgres://` / `postgresql://` URLs with a host. */
export function isPostgresUrl(value: string): boolean {
  try {
    const u = new URL(value);
    return (u.protocol === 'postgres:' || u.protocol === 'postgresql:') && u.hostname.length > 0;
  } catch {
    return false;
  }
}

const pgUrl = z.string().refine(isPostgresUrl, {
  // The value itself is never repeated: it may carry a password.
  message: 'must be a postgres:// or postgresql:// URL with a host',
});

const shardId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'must be 1-63 letters, digits, "_", "." or "-", starting with a letter or digit');

const shardSchema = z.strictObject({
  shard_id: shardId,
  database_url: pgUrl,
  weight: z.number().positive('must be a positive number').finite().default(1),
  read_replicas: z.array(pgUrl).default([]),
});

const rangeBound = z.union([z.number(), z.string()]);
const rangeSchema = z.strictObject({
  shard_id: shardId,
  from: rangeBound.optional(),
  to: rangeBound.optional(),
});

const directorySchema = z.strictObject({
  /** What happens to a key that is not in the directory: route it by hash, or refuse it. */
  fallback: z.enum(['hash', 'reject']).default('hash'),
  /** How long a directory lookup (hit or miss) is cached by each router. */
  cache_ttl_seconds: z.number().min(0).max(3600).default(5),
  /** Whether directory entries also override `hash_based` routing (how a hot tenant gets its own shard). */
  override_hash: z.boolean().default(true),
});

export const shardingConfigSchema = z.strictObject({
  enabled: z.boolean().default(true),
  strategy: z.enum(SHARDING_STRATEGIES).default('hash_based'),
  shards: z.array(shardSchema).min(1, 'at least one shard is required'),
  default_shard: shardId,
  range_key_type: z.enum(RANGE_KEY_TYPES).default('string'),
  ranges: z.array(rangeSchema).default([]),
  directory: directorySchema.default({ fallback: 'hash', cache_ttl_seconds: 5, override_hash: true }),
  /**
   * A replica lagging more than this (by replay timestamp, when the primary is busy) gets no reads.
   * More than 0: a replica is trusted only until the data its last probe saw is this old, which 0
   * would end at once: every replica would be set aside, by accident, as "last known fresh 0.0 s
   * ago, over 0 s", while still being probed.
   */
  max_replica_lag_seconds: z.number().positive('must be more than 0 seconds (no replica is ever 0 s behind; to read from primaries only, list no read_replicas)').default(5),
  /** A replica more than this many WAL bytes behind gets no reads. */
  max_replica_lag_bytes: z.number().int().min(0).default(16 * 1024 * 1024),
  health_check_interval_seconds: z.number().min(0.1).max(3600).default(10),
  health_check_timeout_seconds: z.number().min(0.1).max(60).default(2),
});

export type ShardingConfig = z.output<typeof shardingConfigSchema>;
export type ShardConfig = ShardingConfig['shards'][number];
export type ShardingConfigInput = z.input<typeof shardingConfigSchema>;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Cross-field rules, checked on the raw document so that they are reported together with any
 * field-level problems (zod skips object refinements once a field has failed).
 */
function crossFieldProblems(raw: Record<string, unknown>): string[] {
  const problems: string[] = [];
  const shards = Array.isArray(raw.shards) ? raw.shards : [];
  const ids = new Map<string, number>();
  const urls = new Map<string, string>();
  shards.forEach((s: unknown, i) => {
    if (!isRecord(s)) return;
    if (typeof s.shard_id === 'string') {
      const first = ids.get(s.shard_id);
      if (first !== undefined) problems.push(`shards[${i}].shard_id: duplicate shard id ${JSON.stringify(s.shard_id)} (also shards[${first}])`);
      else ids.set(s.shard_id, i);
    }
    const own: [string, unknown][] = [[`shards[${i}].database_url`, s.database_url]];
    if (Array.isArray(s.read_replicas)) s.read_replicas.forEach((r: unknown, j) => own.push([`shards[${i}].read_replicas[${j}]`, r]));
    for (const [path, url] of own) {
      if (typeof url !== 'string' || !isPostgresUrl(url)) continue;
      const key = normaliseEndpoint(url);
      const other = urls.get(key);
      if (other !== undefined) problems.push(`${path}: same database as ${other} (${redactUrl(url)}); every primary and replica must be a distinct endpoint`);
      else urls.set(key, path);
    }
  });
  if (typeof raw.default_shard === 'string' && shards.length > 0 && !ids.has(raw.default_shard)) {
    problems.push(`default_shard: ${JSON.stringify(raw.default_shard)} is not one of the shards (${[...ids.keys()].join(', ') || 'none valid'})`);
  }
  const ranges = Array.isArray(raw.ranges) ? raw.ranges : [];
  const strategy = raw.strategy ?? 'hash_based';
  if (strategy === 'range_based' && ranges.length === 0) problems.push('ranges: strategy range_based needs at least one range');
  const keyType = raw.range_key_type ?? 'string';
  const specs: RangeSpec[] = [];
  ranges.forEach((r: unknown, i) => {
    if (!isRecord(r)) return;
    if (typeof r.shard_id === 'string' && ids.size > 0 && !ids.has(r.shard_id)) problems.push(`ranges[${i}].shard_id: ${JSON.stringify(r.shard_id)} is not one of the shards`);
    const bound = (v: unknown): number | string | undefined => (typeof v === 'number' || typeof v === 'string' ? v : undefined);
    specs.push({ shard_id: typeof r.shard_id === 'string' ? r.shard_id : '?', from: bound(r.from), to: bound(r.to) });
  });
  if (specs.length === ranges.length && (RANGE_KEY_TYPES as readonly unknown[]).includes(keyType)) {
    problems.push(...rangeProblems(keyType as (typeof RANGE_KEY_TYPES)[number], specs));
  }
  return problems;
}

/** Host, port and database of a URL: two spellings of one endpoint compare equal. */
function normaliseEndpoint(url: string): string {
  const u = new URL(url);
  return `${u.hostname.toLowerCase()}:${u.port || '5432'}${u.pathname}`;
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '') || '(root)';
}

/**
 * Validates a sharding configuration document (already merged with the environment if wanted).
 * Throws {@link ShardingConfigError} listing every problem.
 */
export function parseShardingConfig(raw: unknown): ShardingConfig {
  const result = shardingConfigSchema.safeParse(raw);
  const problems = result.success ? [] : result.error.issues.map((i) => `${formatPath(i.path)}: ${i.message}`);
  if (isRecord(raw)) problems.push(...crossFieldProblems(raw));
  if (problems.length > 0 || !result.success) throw new ShardingConfigError(problems.map(redactUrl), result.success ? {} : { cause: result.error });
  return result.data;
}

/** The environment variables the sharding layer reads. */
export interface ShardingEnv {
  readonly SHARDING_ENABLED?: string | undefined;
  readonly SHARDING_STRATEGY?: string | undefined;
  readonly DATABASE_REPLICA_URLS?: string | undefined;
}

const PAIR = /^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})=([a-z][a-z0-9+.-]*:\/\/.*)$/i;

/**
 * Overlays the guide's environment variables on a raw configuration document, returning a new
 * document (the input is not changed):
 *
 * - `SHARDING_ENABLED`: `true`/`false` (also `1`/`0`, `yes`/`no`) sets `enabled`.
 * - `SHARDING_STRATEGY`: `hash_based` | `range_based` | `directory_based` sets `strategy`.
 * - `DATABASE_REPLICA_URLS`: comma-separated. Either plain URLs, which become the read replicas
 *   of the only shard (an error when there are several), or `shard_id=url` pairs, which replace
 *   the read replicas of each named shard (repeat a shard id for several replicas). An empty
 *   value clears nothing; it is ignored. Multi-host URLs (`postgresql://h1,h2/db`) cannot be
 *   given here; put them in the document.
 *
 * Throws {@link ShardingConfigError} naming every bad variable.
 */
export function applyShardingEnv(raw: unknown, env: ShardingEnv): unknown {
  const { doc, problems } = overlayEnv(raw, env);
  if (problems.length > 0) throw new ShardingConfigError(problems);
  return doc;
}

function overlayEnv(raw: unknown, env: ShardingEnv): { doc: unknown; problems: string[] } {
  if (!isRecord(raw)) return { doc: raw, problems: [] };
  const doc: Record<string, unknown> = { ...raw };
  const problems: string[] = [];
  const enabled = env.SHARDING_ENABLED?.trim().toLowerCase();
  if (enabled !== undefined && enabled !== '') {
    if (['true', '1', 'yes'].includes(enabled)) doc.enabled = true;
    else if (['false', '0', 'no'].includes(enabled)) doc.enabled = false;
    else problems.push(`SHARDING_ENABLED: must be true or false, got ${JSON.stringify(env.SHARDING_ENABLED)}`);
  }
  const strategy = env.SHARDING_STRATEGY?.trim();
  if (strategy !== undefined && strategy !== '') {
    if ((SHARDING_STRATEGIES as readonly string[]).includes(strategy)) doc.strategy = strategy;
    else problems.push(`SHARDING_STRATEGY: must be one of ${SHARDING_STRATEGIES.join(', ')}, got ${JSON.stringify(strategy)}`);
  }
  const replicas = env.DATABASE_REPLICA_URLS?.trim();
  if (replicas !== undefined && replicas !== '') {
    const entries = replicas.split(',').map((e) => e.trim()).filter((e) => e !== '');
    const shards = Array.isArray(doc.shards) ? doc.shards.map((s: unknown) => (isRecord(s) ? { ...s } : s)) : [];
    const byId = new Map<string, Record<string, unknown>>();
    for (const s of shards) if (isRecord(s) && typeof s.shard_id === 'string') byId.set(s.shard_id, s);
    const paired = entries.map((e) => PAIR.exec(e));
    if (paired.every((m) => m !== null)) {
      const assigned = new Map<string, string[]>();
      paired.forEach((m, i) => {
        const [, id, url] = m as RegExpExecArray;
        if (!byId.has(id as string)) problems.push(`DATABASE_REPLICA_URLS: entry ${i + 1} names shard ${JSON.stringify(id)}, which is not configured`);
        else if (!isPostgresUrl(url as string)) problems.push(`DATABASE_REPLICA_URLS: entry ${i + 1} (${redactUrl(url as string)}) is not a postgres:// or postgresql:// URL with a host`);
        else assigned.set(id as string, [...(assigned.get(id as string) ?? []), url as string]);
      });
      for (const [id, urls] of assigned) (byId.get(id) as Record<string, unknown>).read_replicas = urls;
    } else if (paired.some((m) => m !== null)) {
      problems.push('DATABASE_REPLICA_URLS: mixes shard_id=url pairs with plain URLs; use one form');
    } else if (shards.length !== 1) {
      problems.push(`DATABASE_REPLICA_URLS: plain URLs are only allowed with exactly one shard (there are ${shards.length}); use shard_id=url pairs`);
    } else {
      entries.forEach((url, i) => {
        if (!isPostgresUrl(url)) problems.push(`DATABASE_REPLICA_URLS: entry ${i + 1} (${redactUrl(url)}) is not a postgres:// or postgresql:// URL with a host`);
      });
      const only = shards[0];
      if (isRecord(only)) only.read_replicas = entries;
    }
    doc.shards = shards;
  }
  return { doc, problems: problems.map(redactUrl) };
}

/**
 * {@link applyShardingEnv} then {@link parseShardingConfig}, reporting the problems of the
 * environment and of the document together.
 */
export function loadShardingConfig(raw: unknown, env: ShardingEnv): ShardingConfig {
  const { doc, problems } = overlayEnv(raw, env);
  try {
    const config = parseShardingConfig(doc);
    if (problems.length > 0) throw new ShardingConfigError(problems);
    return config;
  } catch (err) {
    if (err instanceof ShardingConfigError && problems.length > 0 && err.problems !== problems) throw new ShardingConfigError([...problems, ...err.problems], { cause: err });
    throw err;
  }
}
