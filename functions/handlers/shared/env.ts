/**
 * The control-plane functions' environment, validated once with zod. The CDK app sets these;
 * a missing or malformed variable fails the cold start with a message naming it, instead of a
 * confusing error at the first evaluation.
 *
 * @example
 * ```ts
 * const env = parseControllerEnv(process.env);
 * env.topology.services['worker']?.cluster;
 * ```
 */
import { z } from 'zod';
import { secretArnSchema as secretArn } from '../../adapters/aws/database-secret.js';
import { applyScalingEnv, issuesOf, ScalingConfigError, type ScalingConfig } from '../../core/scaling/config.js';
import { parseJsonText } from '../../core/json-text.js';
import { parseTopology, TopologyError, type Topology } from '../../adapters/aws/topology.js';
import { shardUrlsSchema } from './shard-urls.js';

/** An environment variable is missing or malformed; `issues` names each one. */
export class EnvironmentError extends Error {
  override readonly name = 'EnvironmentError';
  constructor(
    readonly issues: ReadonlyArray<{ path: string; message: string }>,
    options?: { cause?: unknown },
  ) {
    super(`invalid function environment: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, options);
  }
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

/** A PostgreSQL URL. Only loopback URLs (local mode, tests) may go without TLS. */
const databaseUrl = z.url({ protocol: /^postgres(ql)?$/ }).refine(
  (raw) => {
    const u = new URL(raw);
    return LOOPBACK.has(u.hostname) || u.searchParams.get('sslmode') === 'verify-full';
  },
  { message: 'a non-loopback database URL must use sslmode=verify-full (TLS is always verified)' },
);

const jsonText = <T extends z.ZodType>(inner: T) =>
  z.string().transform((raw, ctx) => {
    try {
      return parseJsonText(raw);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `not valid JSON: ${(err as Error).message}` });
      return z.NEVER;
    }
  }).pipe(inner);


const catalogRequired = {
  message: 'set CATALOG_DB_SECRET_ARN (or CATALOG_DATABASE_URL for local mode)',
  path: ['CATALOG_DB_SECRET_ARN'],
};

/** What every function that talks to the catalog needs. */
const databaseShape = {
  /** The catalog's credentials (RDS-managed secret: username, password, host, port, dbname). */
  CATALOG_DB_SECRET_ARN: secretArn.optional(),
  /** Overrides the secret's host, e.g. with an RDS Proxy endpoint. */
  CATALOG_DB_HOST: z.string().min(1).optional(),
  /** A full URL instead of a secret (local mode and tests). */
  CATALOG_DATABASE_URL: databaseUrl.optional(),
};

const migrationSchema = z
  .object({
    ...databaseShape,
    /** Shard primaries' secrets (JSON array of ARNs). */
    SHARD_DB_SECRET_ARNS: jsonText(z.array(secretArn)).default([]),
    /**
     * Shard primaries' URLs instead of secrets (local mode and tests): a JSON array, or
     * comma-separated, of URLs or ID=URL pairs, read as every other reader reads it (shard-urls.ts).
     */
    SHARD_DATABASE_URLS: shardUrlsSchema.default([]),
    /**
     * The CA-DMS application's login per shard (JSON array of secret ARNs, in the order of
     * SHARD_DB_SECRET_ARNS): the migrations create each user as a member of `ca_dms_app`.
     */
    SHARD_APP_SECRET_ARNS: jsonText(z.array(secretArn)).default([]),
    /** The scaling API's login per shard (`ca_dms_monitor`), in the same order (JSON array of ARNs). */
    SHARD_MONITOR_SECRET_ARNS: jsonText(z.array(secretArn)).default([]),
    /** The moves worker's login per shard (`ca_dms_mover`), in the same order (JSON array of ARNs). */
    SHARD_MOVER_SECRET_ARNS: jsonText(z.array(secretArn)).default([]),
    /** The control plane's login on the catalog (`ca_dms_control`). */
    CATALOG_CONTROL_SECRET_ARN: secretArn.optional(),
    /** Where the migration sets are (`catalog/`, `sharding/`, `shard/`); the bundle copies them. */
    MIGRATIONS_DIR: z.string().min(1).optional(),
  })
  .refine((e) => e.CATALOG_DB_SECRET_ARN !== undefined || e.CATALOG_DATABASE_URL !== undefined, catalogRequired)
  .superRefine((e, ctx) => {
    const shards = e.SHARD_DB_SECRET_ARNS.length + e.SHARD_DATABASE_URLS.length;
    for (const [variable, role] of [
      ['SHARD_APP_SECRET_ARNS', 'application'],
      ['SHARD_MONITOR_SECRET_ARNS', 'monitor'],
      ['SHARD_MOVER_SECRET_ARNS', 'mover'],
    ] as const) {
      if (e[variable].length !== 0 && e[variable].length !== shards) {
        ctx.addIssue({ code: 'custom', message: `give one ${role} secret per shard (SHARD_DB_SECRET_ARNS, then SHARD_DATABASE_URLS), in the same order`, path: [variable] });
      }
    }
  });

const schema = z
  .object({
    ...databaseShape,
    /**
     * The runtime scaling configuration shipped at deploy time: the fallback while the catalog
     * is unreachable. The guide's AUTO_SCALING_ENABLED, SCALING_CHECK_INTERVAL, MIN_INSTANCES
     * and MAX_INSTANCES override it.
     */
    SCALING_CONFIG_JSON: jsonText(z.record(z.string(), z.unknown())).default({}),
    /** Where each service lives in AWS (see `topology.ts`). */
    SCALING_TARGETS_JSON: jsonText(z.unknown()),
    /** Alarm name to service, for alarms whose dimensions do not name the service. */
    ALARM_SERVICE_MAP_JSON: jsonText(z.record(z.string(), z.string().regex(/^[a-z][a-z0-9-]{0,62}$/))).default({}),
    /** Milliseconds kept back from the function's remaining time for recording and flushing. */
    EVALUATION_SAFETY_MARGIN_MS: z.string().regex(/^\d+$/, 'must be a whole number of milliseconds').transform(Number).default(3000),
    /** Set by the Lambda runtime; names the holder of the evaluation lease. */
    AWS_LAMBDA_FUNCTION_NAME: z.string().min(1).optional(),
  })
  .refine((e) => e.CATALOG_DB_SECRET_ARN !== undefined || e.CATALOG_DATABASE_URL !== undefined, catalogRequired);

/** Where the catalog is: a secret (Lambda) or a URL (local mode, tests). */
export interface DatabaseLocation {
  readonly secretArn?: string;
  readonly host?: string;
  readonly url?: string;
}

function catalogLocation(e: { CATALOG_DB_SECRET_ARN?: string | undefined; CATALOG_DB_HOST?: string | undefined; CATALOG_DATABASE_URL?: string | undefined }): DatabaseLocation {
  return {
    ...(e.CATALOG_DB_SECRET_ARN === undefined ? {} : { secretArn: e.CATALOG_DB_SECRET_ARN }),
    ...(e.CATALOG_DB_HOST === undefined ? {} : { host: e.CATALOG_DB_HOST }),
    ...(e.CATALOG_DATABASE_URL === undefined ? {} : { url: e.CATALOG_DATABASE_URL }),
  };
}

export interface MigrationEnv {
  readonly catalog: DatabaseLocation;
  /** `SHARD_DB_SECRET_ARNS`, then `SHARD_DATABASE_URLS` (with the id its entry gives, if any), in order. */
  readonly shards: ReadonlyArray<DatabaseLocation & { readonly id?: string }>;
  /** Per shard (same order as `shards`, or empty): the application login's secret. */
  readonly appSecrets: readonly string[];
  /** Per shard (same order as `shards`, or empty): the scaling API's monitor login's secret. */
  readonly monitorSecrets: readonly string[];
  /** Per shard (same order as `shards`, or empty): the moves worker's login's secret. */
  readonly moverSecrets: readonly string[];
  /** The control plane's catalog login's secret, when there is one. */
  readonly controlSecret?: string;
  readonly migrationsDir?: string;
}

/** Validates the migration function's environment. Throws {@link EnvironmentError}. */
export function parseMigrationEnv(env: Record<string, string | undefined>): MigrationEnv {
  const parsed = migrationSchema.safeParse(env);
  if (!parsed.success) throw new EnvironmentError(issuesOf(parsed.error), { cause: parsed.error });
  const e = parsed.data;
  return {
    catalog: catalogLocation(e),
    shards: [...e.SHARD_DB_SECRET_ARNS.map((secretArn) => ({ secretArn })), ...e.SHARD_DATABASE_URLS.map((s) => (s.id === undefined ? { url: s.url } : { url: s.url, id: s.id }))],
    appSecrets: e.SHARD_APP_SECRET_ARNS,
    monitorSecrets: e.SHARD_MONITOR_SECRET_ARNS,
    moverSecrets: e.SHARD_MOVER_SECRET_ARNS,
    ...(e.CATALOG_CONTROL_SECRET_ARN === undefined ? {} : { controlSecret: e.CATALOG_CONTROL_SECRET_ARN }),
    ...(e.MIGRATIONS_DIR === undefined ? {} : { migrationsDir: e.MIGRATIONS_DIR }),
  };
}

export interface ControllerEnv {
  readonly fallbackConfig: ScalingConfig;
  readonly topology: Topology;
  readonly alarmServiceMap: Readonly<Record<string, string>>;
  readonly catalog: DatabaseLocation;
  readonly safetyMarginMs: number;
  /** The function's name (Lambda) or undefined (local mode, tests). */
  readonly functionName?: string;
}

/** Validates the environment. Throws {@link EnvironmentError} naming every bad variable. */
export function parseControllerEnv(env: Record<string, string | undefined>): ControllerEnv {
  const parsed = schema.safeParse(env);
  if (!parsed.success) throw new EnvironmentError(issuesOf(parsed.error), { cause: parsed.error });
  const e = parsed.data;
  const issues: Array<{ path: string; message: string }> = [];
  let fallbackConfig: ScalingConfig | undefined;
  let topology: Topology | undefined;
  try {
    // The guide's variables (AUTO_SCALING_ENABLED, MIN_INSTANCES, ...) override the document.
    fallbackConfig = applyScalingEnv(e.SCALING_CONFIG_JSON, env);
  } catch (err) {
    if (!(err instanceof ScalingConfigError)) throw err;
    issues.push(...err.issues.map((i) => ({ path: i.path.startsWith('env.') ? i.path.slice(4) : `SCALING_CONFIG_JSON.${i.path}`, message: i.message })));
  }
  try {
    topology = parseTopology(e.SCALING_TARGETS_JSON);
  } catch (err) {
    if (!(err instanceof TopologyError)) throw err;
    issues.push(...err.issues.map((i) => ({ path: `SCALING_TARGETS_JSON.${i.path}`, message: i.message })));
  }
  if (fallbackConfig && topology) {
    for (const service of Object.keys(fallbackConfig.services)) {
      if (!topology.services[service]) issues.push({ path: `SCALING_TARGETS_JSON.services.${service}`, message: 'configured for scaling but missing from the topology' });
    }
  }
  if (issues.length > 0 || !fallbackConfig || !topology) throw new EnvironmentError(issues);
  return {
    fallbackConfig,
    topology,
    alarmServiceMap: e.ALARM_SERVICE_MAP_JSON,
    catalog: catalogLocation(e),
    safetyMarginMs: e.EVALUATION_SAFETY_MARGIN_MS,
    ...(e.AWS_LAMBDA_FUNCTION_NAME === undefined ? {} : { functionName: e.AWS_LAMBDA_FUNCTION_NAME }),
  };
}
