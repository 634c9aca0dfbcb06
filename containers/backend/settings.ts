/**
 * The demo backend's settings: the environment the services stack gives every task
 * (lib/stacks/services-stack.ts), validated at start. Each problem names its variable; the
 * server stops with exit 78 (EX_CONFIG) rather than run half-configured.
 *
 * - `SHARDING_CONFIG_JSON`: the guide's ShardingConfig with credential-free URLs
 *   (`?sslmode=verify-full` off loopback), plus the guide's `SHARDING_ENABLED`,
 *   `SHARDING_STRATEGY` and `DATABASE_REPLICA_URLS` on top.
 * - Each shard's login, one of two ways for all shards (`<ID>` is the shard id in capitals, other
 *   characters as `_`: `shard-001` -> `SHARD_001`):
 *   - on AWS, `SHARD_<ID>_DB_SECRET_ARN`: the shard's login secret, read through Secrets Manager
 *     (in the task's region, `AWS_REGION`, which ECS sets) when the task connects and read again
 *     whenever a login is refused for its credentials, as a rotation with alternating users does
 *     to a login one rotation after it stopped being current (see server.ts);
 *   - elsewhere (local runs, the image tests), `SHARD_<ID>_DB_USERNAME` / `SHARD_<ID>_DB_PASSWORD`,
 *     fixed for the life of the process.
 *   Both for one shard, or neither, is refused, naming the variables.
 * - `CATALOG_SHARD_ID`: the shard whose primary database holds the catalog (slot maps and
 *   directory, read to route); default the configuration's `default_shard`.
 * - `DATABASE_CA_BUNDLE`: a PEM file of the certificate authorities every non-loopback
 *   connection is verified against; the image sets it to the RDS bundle it carries.
 *
 * @example
 * ```ts
 * const settings = parseBackendEnv(process.env); // throws BackendConfigError naming each variable
 * settings.logins.kind; // 'secrets-manager' on AWS: logins.ts reads them; 'environment': already in the URLs
 * ```
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { secretArnSchema } from '../../functions/adapters/aws/database-secret.js';
import { shardWithLogin } from '../../functions/adapters/postgres/connection-url.js';
import { parseJsonText } from '../../functions/core/json-text.js';
import { loadShardingConfig, type ShardingConfig } from '../../functions/core/sharding/config.js';
import { ShardingConfigError } from '../../functions/core/sharding/errors.js';

export const SERVICE_ROLES = ['backend-read', 'backend-write', 'frontend', 'worker'] as const;

const wholeNumber = (min: number, max: number, fallback: number, why = '') =>
  z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min, `must be at least ${min}${why}`).max(max, `must be at most ${max}`))
    .default(fallback);

export const backendEnvSchema = z.object({
  PORT: wholeNumber(1024, 65535, 8000, ' (the image runs unprivileged)'),
  /** Which service this task is (the task definitions set it); reported and used as the pools' application_name. */
  CA_DMS_SERVICE: z.enum(SERVICE_ROLES, { error: 'must be backend-read, backend-write, frontend or worker' }).optional(),
  /** The read pool: GET and HEAD only, served by replicas fresh enough. */
  DATABASE_READ_ONLY: z.enum(['true', 'false'], { error: 'must be true or false' }).default('false').transform((v) => v === 'true'),
  /**
   * Idle keep-alive of client connections, in seconds. nginx closes its pooled upstream
   * connections sooner (NGINX_UPSTREAM_KEEPALIVE_TIMEOUT, 4 s, below NGINX_APP_KEEPALIVE_TIMEOUT,
   * 5 s), so it never writes to a connection this server is closing.
   */
  KEEPALIVE_TIMEOUT_SECONDS: wholeNumber(1, 3600, 5),
  SHARDING_CONFIG_JSON: z.string({ error: 'is required: the sharding configuration (the services stack sets it)' }).min(1, 'must not be empty'),
  CATALOG_SHARD_ID: z.string().min(1).optional(),
  DATABASE_CA_BUNDLE: z.string().startsWith('/', 'must be an absolute path').optional(),
  /** Connections per database node (each primary and replica). */
  DATABASE_POOL_SIZE: wholeNumber(1, 100, 10),
  /** How often newer slot maps (published by moves) are looked for, in seconds. */
  SLOT_MAP_REFRESH_SECONDS: wholeNumber(1, 3600, 5),
  /** How long to wait between attempts to reach the shards and the catalog at start, in seconds. */
  DATABASE_RETRY_SECONDS: wholeNumber(1, 300, 5),
  /**
   * How long a documents-API request may wait on the shards, in ms (503 past it, or 504 for a
   * write whose outcome is unknown). Keep it below the sidecar's `NGINX_PROXY_READ_TIMEOUT` (55 s
   * by default), so the client gets the API's answer rather than nginx's.
   */
  DATABASE_REQUEST_DEADLINE_MS: wholeNumber(100, 60_000, 5000),
});

/**
 * Where the shards' logins come from: the environment (already in the sharding configuration's
 * URLs), or each shard's secret in Secrets Manager (the URLs carry none until it is read).
 */
export type LoginSource =
  | { readonly kind: 'environment' }
  | { readonly kind: 'secrets-manager'; readonly region: string; readonly secretArns: ReadonlyMap<string, string> };

/** The validated settings. */
export interface BackendSettings {
  readonly PORT: number;
  readonly CA_DMS_SERVICE?: (typeof SERVICE_ROLES)[number];
  readonly DATABASE_READ_ONLY: boolean;
  readonly KEEPALIVE_TIMEOUT_SECONDS: number;
  readonly DATABASE_POOL_SIZE: number;
  readonly SLOT_MAP_REFRESH_SECONDS: number;
  readonly DATABASE_RETRY_SECONDS: number;
  readonly DATABASE_REQUEST_DEADLINE_MS: number;
  /** The shards; with {@link LoginSource} `environment` their URLs carry the logins. */
  readonly sharding: ShardingConfig;
  /** The shard whose primary database holds the catalog; it is reached with that shard's login. */
  readonly catalogShardId: string;
  readonly logins: LoginSource;
  /** The CAs to verify against; undefined means the RDS bundle compiled in (tls.ts). */
  readonly ca?: readonly string[];
}

export class BackendConfigError extends Error {
  override readonly name = 'BackendConfigError';
}

/** `shard-001` -> `SHARD_001`: the prefix of a shard's credential variables. */
export function shardVariablePrefix(shardId: string): string {
  return shardId.toUpperCase().replace(/[^A-Z0-9]/g, '_');
}

/** The names of a shard's credential variables: its login, or its login's secret. */
export function shardCredentialVariables(shardId: string): { username: string; password: string; secretArn: string } {
  const prefix = shardVariablePrefix(shardId);
  return { username: `${prefix}_DB_USERNAME`, password: `${prefix}_DB_PASSWORD`, secretArn: `${prefix}_DB_SECRET_ARN` };
}

interface Issue {
  readonly variable: string;
  readonly message: string;
}

/** The certificates of a PEM file, or the reason it cannot be used. */
function readCaBundle(path: string): string[] | string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    return `cannot be read: ${(error as Error).message}`;
  }
  const pems = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (pems.length === 0) return 'holds no PEM certificate';
  for (const [i, pem] of pems.entries()) {
    try {
      new X509Certificate(pem);
    } catch (error) {
      return `certificate ${i + 1} does not parse: ${(error as Error).message}`;
    }
  }
  return pems;
}

/**
 * Each shard's login source: its secret's ARN when any shard has one (every shard must then, and
 * none may have a login in the environment), otherwise its user name and password, put into its
 * URLs. Problems go to `issues`, each naming its variable.
 */
function shardLogins(sharding: ShardingConfig, value: (name: string) => string | undefined, issues: Issue[]): { shards: ShardingConfig['shards']; logins: LoginSource } {
  const named = sharding.shards.map((shard) => ({ shard, names: shardCredentialVariables(shard.shard_id) }));
  const withSecret = named.find(({ names }) => value(names.secretArn) !== undefined);
  if (withSecret !== undefined) {
    const secretArns = new Map<string, string>();
    for (const { shard, names } of named) {
      for (const variable of [names.username, names.password]) {
        if (value(variable) !== undefined) issues.push({ variable, message: `must not be set with ${names.secretArn}: the login comes from the secret` });
      }
      const arn = value(names.secretArn);
      if (arn === undefined) {
        issues.push({ variable: names.secretArn, message: `is required: the login secret of shard ${shard.shard_id} (${withSecret.names.secretArn} is set, so every shard's login comes from Secrets Manager)` });
        continue;
      }
      const parsed = secretArnSchema.safeParse(arn);
      if (parsed.success) secretArns.set(shard.shard_id, parsed.data);
      else issues.push({ variable: names.secretArn, message: parsed.error.issues.map((i) => i.message).join('; ') });
    }
    const region = value('AWS_REGION') ?? value('AWS_DEFAULT_REGION');
    if (region === undefined) issues.push({ variable: 'AWS_REGION', message: 'is required with the shards\' secret ARNs: the region of Secrets Manager (ECS sets it in every task)' });
    return { shards: sharding.shards, logins: { kind: 'secrets-manager', region: region ?? '', secretArns } };
  }
  const shards = named.map(({ shard, names }) => {
    const username = value(names.username);
    const password = value(names.password);
    const alternative = `, or give ${names.secretArn} to read the login from Secrets Manager`;
    if (username === undefined) issues.push({ variable: names.username, message: `is required: the login for shard ${shard.shard_id}${alternative}` });
    if (password === undefined) issues.push({ variable: names.password, message: `is required: the password for shard ${shard.shard_id}${alternative}` });
    return username === undefined || password === undefined ? shard : shardWithLogin(shard, { username, password });
  });
  return { shards, logins: { kind: 'environment' } };
}

/** Validates the variables this server reads; throws a {@link BackendConfigError} naming each one at fault. */
export function parseBackendEnv(env: Readonly<Record<string, string | undefined>>): BackendSettings {
  const value = (k: string): string | undefined => (env[k] === '' ? undefined : env[k]);
  const input = Object.fromEntries(Object.keys(backendEnvSchema.shape).map((k) => [k, value(k)]));
  const issues: Issue[] = [];
  const fail = (): never => {
    const lines = issues.map((i) => `  ${i.variable}: ${i.message}${i.variable.endsWith('_PASSWORD') || i.variable === 'SHARDING_CONFIG_JSON' ? '' : ` (got ${JSON.stringify(env[i.variable])})`}`);
    throw new BackendConfigError(`invalid demo backend settings:\n${lines.join('\n')}`);
  };
  const result = backendEnvSchema.safeParse(input);
  if (!result.success) {
    issues.push(...result.error.issues.map((i) => ({ variable: String(i.path[0]), message: i.message })));
    fail();
  }
  const e = result.data!;

  let document: unknown;
  try {
    document = parseJsonText(e.SHARDING_CONFIG_JSON);
  } catch (error) {
    issues.push({ variable: 'SHARDING_CONFIG_JSON', message: `is not valid JSON: ${(error as Error).message}` });
    fail();
  }
  let sharding: ShardingConfig;
  try {
    sharding = loadShardingConfig(document, env);
  } catch (error) {
    if (!(error instanceof ShardingConfigError)) throw error;
    issues.push(...error.problems.map((p) => ({ variable: /^[A-Z_]+:/.test(p) ? p.slice(0, p.indexOf(':')) : 'SHARDING_CONFIG_JSON', message: p })));
    return fail();
  }
  if (!sharding.enabled) issues.push({ variable: 'SHARDING_ENABLED', message: 'the demo backend serves sharded data only; sharding must be enabled' });

  const { shards, logins } = shardLogins(sharding, value, issues);
  const catalogShardId = e.CATALOG_SHARD_ID ?? sharding.default_shard ?? sharding.shards[0]?.shard_id ?? '';
  if (!shards.some((s) => s.shard_id === catalogShardId)) issues.push({ variable: 'CATALOG_SHARD_ID', message: `names no configured shard (${sharding.shards.map((s) => s.shard_id).join(', ')})` });

  let ca: string[] | undefined;
  if (e.DATABASE_CA_BUNDLE !== undefined) {
    const bundle = readCaBundle(e.DATABASE_CA_BUNDLE);
    if (typeof bundle === 'string') issues.push({ variable: 'DATABASE_CA_BUNDLE', message: bundle });
    else ca = bundle;
  }
  if (issues.length > 0) fail();

  return {
    PORT: e.PORT,
    ...(e.CA_DMS_SERVICE === undefined ? {} : { CA_DMS_SERVICE: e.CA_DMS_SERVICE }),
    DATABASE_READ_ONLY: e.DATABASE_READ_ONLY,
    KEEPALIVE_TIMEOUT_SECONDS: e.KEEPALIVE_TIMEOUT_SECONDS,
    DATABASE_POOL_SIZE: e.DATABASE_POOL_SIZE,
    SLOT_MAP_REFRESH_SECONDS: e.SLOT_MAP_REFRESH_SECONDS,
    DATABASE_RETRY_SECONDS: e.DATABASE_RETRY_SECONDS,
    DATABASE_REQUEST_DEADLINE_MS: e.DATABASE_REQUEST_DEADLINE_MS,
    sharding: { ...sharding, shards },
    catalogShardId,
    logins,
    ...(ca === undefined ? {} : { ca }),
  };
}
