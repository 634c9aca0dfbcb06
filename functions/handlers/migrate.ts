/**
 * `migrate`: the deploy-time custom resource (CDK `custom_resources.Provider` onEvent handler).
 * Create and Update apply every pending migration (`catalog` and `sharding` on the catalog
 * database, `shard` on each shard primary) and keep the same physical id; Delete changes
 * nothing, because migrations are forward-only and the data outlives the stack. A failure
 * throws, so the Provider reports FAILED with the message and CloudFormation rolls back.
 */
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import type { Context } from 'aws-lambda';
import type pg from 'pg';
import { z } from 'zod';
import { issuesOf } from '../core/scaling/config.js';
import { APPLICATION_ROLE, CONTROL_ROLE, ensureLogin, MONITOR_ROLE, MOVER_ROLE, type LoginGrant } from '../adapters/postgres/app-role.js';
import { awsClients, type AwsClients } from './shared/aws.js';
import { CATALOG_STATEMENT_TIMEOUT_MS, createPool, readSecret } from './shared/db.js';
import { parseMigrationEnv, type MigrationEnv } from './shared/env.js';
import { withPowertools } from './shared/middleware.js';
import { migrateAll, shardLabel, type MigrationSummary } from './shared/migrations.js';
import { logger, metrics } from './shared/powertools.js';
import { loadParameterEnv } from './shared/parameter-env.js';

// The deployment's growing configuration (SSM Parameter Store), read once in the init phase.
await loadParameterEnv();

/** The physical id of the one migrations resource. */
export const PHYSICAL_ID = 'ca-dms-schema-migrations';

/**
 * The migrations function's time the directory's slot fill leaves unused (migrateAll's
 * `fillUntil`): the least-privilege logins after it (a few statements a shard) and the answer to
 * CloudFormation, with room for a slow batch (the longest seen, 0.3 s; a statement's own bound is
 * the login's, lifted for migrations).
 */
const FILL_MARGIN_MS = 120_000;

const base = { ServiceToken: z.string().optional(), ResourceType: z.string(), LogicalResourceId: z.string(), StackId: z.string(), RequestId: z.string(), ResourceProperties: z.record(z.string(), z.unknown()) };

export const customResourceEventSchema = z.discriminatedUnion('RequestType', [
  z.object({ ...base, RequestType: z.literal('Create') }),
  z.object({ ...base, RequestType: z.literal('Update'), PhysicalResourceId: z.string().min(1) }),
  z.object({ ...base, RequestType: z.literal('Delete'), PhysicalResourceId: z.string().min(1) }),
]);

/** The custom resource event could not be understood. */
export class CustomResourceEventError extends Error {
  override readonly name = 'CustomResourceEventError';
}

export interface ProviderResponse {
  readonly PhysicalResourceId: string;
  readonly Data?: Record<string, string | number>;
}

/** Builds the handler around its environment and clients (tests pass their own). */
export function createMigrateHandler(deps: () => { env: MigrationEnv; clients: Pick<AwsClients, 'secrets'> }) {
  return withPowertools(async (event: unknown, context: Context): Promise<ProviderResponse> => {
    const parsed = customResourceEventSchema.safeParse(event);
    if (!parsed.success) {
      throw new CustomResourceEventError(`not a CloudFormation custom resource event: ${issuesOf(parsed.error).map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`);
    }
    const e = parsed.data;
    if (e.RequestType === 'Delete') {
      logger.info('migrations resource deleted: schemas and data are kept (migrations are forward-only)');
      return { PhysicalResourceId: e.PhysicalResourceId };
    }
    const { env, clients } = deps();
    const pools: pg.Pool[] = [];
    try {
      // Migrations lift the statement timeout per transaction (runMigrations); no client-side
      // query deadline either, since one long index build is legitimate.
      const overrides = { query_timeout: 0, connectionTimeoutMillis: 10_000 };
      const catalog = await createPool(env.catalog, clients.secrets, overrides);
      pools.push(catalog);
      const shards: pg.Pool[] = [];
      for (const location of env.shards) {
        const pool = await createPool(location, clients.secrets, overrides);
        pools.push(pool);
        shards.push(pool);
      }
      const shardIds = env.shards.map((s) => s.id);
      const results: MigrationSummary[] = await migrateAll({
        catalog,
        shards,
        shardIds,
        ...(env.migrationsDir === undefined ? {} : { dir: env.migrationsDir }),
        // The directory's slot fill stops with FILL_MARGIN_MS of the function's time left, for the
        // logins below and the answer to CloudFormation; the next deploy fills the rest.
        fillUntil: Date.now() + context.getRemainingTimeInMillis() - FILL_MARGIN_MS,
        onFillTimeUp: (filled) =>
          logger.warn('directory slot fill stopped for time: the rest is filled by the next run of this function; reads take the unfilled pins as their slot\'s meanwhile', { filled }),
      });
      const applied = results.flatMap((r) => r.applied.map((name) => `${r.target}: ${r.set}/${name}`));
      logger.info('migrations applied', { requestType: e.RequestType, applied });
      // Every other function's least-privilege login, each from its own secret: only this
      // function gets the master credentials.
      const ensure = async (pool: pg.Pool, arn: string, grant: LoginGrant, where: string): Promise<void> => {
        const login = await readSecret(clients.secrets, arn);
        const done = await ensureLogin(pool, { username: login.username, password: login.password }, grant);
        logger.info('least-privilege login', { where, role: grant.role, user: login.username, outcome: done });
      };
      if (env.controlSecret !== undefined) {
        // The catalog's statement timeout is each login's own default (catalog migration 005).
        await ensure(catalog, env.controlSecret, { role: CONTROL_ROLE, settings: { statement_timeout: `${CATALOG_STATEMENT_TIMEOUT_MS}ms` } }, 'catalog');
      }
      for (const [i, shard] of shards.entries()) {
        for (const [arns, role] of [
          [env.appSecrets, APPLICATION_ROLE],
          [env.monitorSecrets, MONITOR_ROLE],
          [env.moverSecrets, MOVER_ROLE],
        ] as const) {
          const arn = arns[i];
          if (arn !== undefined) await ensure(shard, arn, { role }, shardLabel(i, shardIds[i]));
        }
      }
      metrics.addMetric('MigrationsApplied', MetricUnit.Count, applied.length);
      return { PhysicalResourceId: e.RequestType === 'Update' ? e.PhysicalResourceId : PHYSICAL_ID, Data: { Applied: applied.length, Targets: 1 + shards.length } };
    } finally {
      await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
    }
  });
}

let cached: { env: MigrationEnv; clients: Pick<AwsClients, 'secrets'> } | undefined;

export const handler = createMigrateHandler(() => {
  cached ??= { env: parseMigrationEnv(process.env), clients: awsClients() };
  return cached;
});
