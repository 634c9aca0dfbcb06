/**
 * Shards as a deployment gives them to the demo backend (containers/backend): one test
 * PostgreSQL server with two shard databases, the catalog in the first one's database (as on
 * AWS, where it lives on the first shard's primary), every migration applied, and the
 * application's least-privilege login (shard migration 003), which the backend gets beside a
 * credential-free `SHARDING_CONFIG_JSON`: as `SHARD_<ID>_DB_USERNAME` / `_PASSWORD`, or as the
 * ARN of each shard's secret (`SHARD_<ID>_DB_SECRET_ARN`) as the services stack gives it.
 *
 * @example
 * ```ts
 * const shards = await startDemoShards();
 * const env = shards.backendEnv(); // give it to the backend
 * await shards.publishSlotMap();    // what the control plane does after the migrations
 * await shards.stop();
 * ```
 */
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ensureApplicationLogin } from '../../functions/adapters/postgres/app-role.js';
import { runMigrations } from '../../functions/adapters/postgres/migrate.js';
import { SlotMapStore } from '../../functions/adapters/postgres/slot-map-store.js';
import { buildSlotMap } from '../../functions/core/sharding/slot-map.js';
import { migratedDataDir } from './migrated-data-dir.js';
import { startTestPostgres, type StartTestPostgresOptions, type TestPostgres } from './postgres.js';

const MIGRATIONS = resolve(dirname(fileURLToPath(import.meta.url)), '../../functions/adapters/postgres/migrations');

export const DEMO_SHARD_IDS = ['shard_001', 'shard_002'] as const;
const APP_LOGIN = { username: 'ca_dms_app_demo', password: 'demo p@ss/word' };

export interface DemoShards {
  readonly server: TestPostgres;
  /** The master's pool on a shard's database (checks behind the API's back). */
  admin(shardId: (typeof DEMO_SHARD_IDS)[number]): pg.Pool;
  /** The application login the migrations made (its `_clone` twin exists too, with a password nobody knows). */
  readonly login: { readonly username: string; readonly password: string };
  /**
   * The backend's environment for these shards: the URLs reach `host` (default 127.0.0.1) and
   * carry `sslmode=verify-full` when asked, as the deployed ones do. The logins are
   * `SHARD_<ID>_DB_USERNAME` / `_PASSWORD`, or with `secretArns` (shard id -> ARN) each shard's
   * secret, as the services stack gives them, and the region ECS sets.
   */
  backendEnv(options?: { host?: string; verifyFull?: boolean; secretArns?: ReadonlyMap<string, string> }): Record<string, string>;
  /** Publishes the first slot map from the shards' weights, as the control plane does. */
  publishSlotMap(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Migrates the shard databases (`pools`: shard id -> pool), the catalog's migrations in the first,
 * and makes the application login: on a copy of a server this already ran on, every migration is
 * found applied and the login's password set again.
 */
async function migrateDemoShards(pools: ReadonlyMap<string, pg.Pool>): Promise<void> {
  for (const pool of pools.values()) await runMigrations(pool, 'shard', resolve(MIGRATIONS, 'shard'));
  const catalog = pools.get(DEMO_SHARD_IDS[0])!;
  await runMigrations(catalog, 'catalog', resolve(MIGRATIONS, 'catalog'));
  await runMigrations(catalog, 'sharding', resolve(MIGRATIONS, 'sharding'));
  await ensureApplicationLogin(catalog, APP_LOGIN);
}

/** Creates the shard databases on the server of `adminUrl`. */
async function createDemoDatabases(adminUrl: string): Promise<void> {
  const setup = new pg.Client({ connectionString: adminUrl });
  await setup.connect();
  try {
    for (const id of DEMO_SHARD_IDS) await setup.query(`create database ${id}`);
  } finally {
    await setup.end();
  }
}

/**
 * The data directory of a server {@link startDemoShards} set up with default options, made once
 * per run (test/support/migrated-data-dir.ts); undefined outside a vitest run.
 */
function migratedDemoShards(): Promise<string | undefined> {
  return migratedDataDir('demo-shards', {}, async (urlFor) => {
    await createDemoDatabases(urlFor('postgres'));
    const pools = new Map(DEMO_SHARD_IDS.map((id) => [id as string, new pg.Pool({ connectionString: urlFor(id), max: 1 })]));
    try {
      await migrateDemoShards(pools);
    } finally {
      await Promise.all([...pools.values()].map((p) => p.end()));
    }
  });
}

export async function startDemoShards(options: StartTestPostgresOptions = {}): Promise<DemoShards> {
  // With the default options, a copy of a server set up once per run (a server with settings of
  // its own, TLS say, is set up here).
  const migrated = Object.keys(options).length === 0 ? await migratedDemoShards() : undefined;
  const server = await startTestPostgres(migrated === undefined ? options : { dataDirTemplate: migrated });
  const pools = new Map<string, pg.Pool>();
  try {
    if (migrated === undefined) await createDemoDatabases(server.url);
    for (const id of DEMO_SHARD_IDS) {
      const pool = new pg.Pool({ connectionString: server.urlFor(id), max: 2 });
      pool.on('error', () => undefined);
      pools.set(id, pool);
    }
    await migrateDemoShards(pools);
  } catch (error) {
    await Promise.all([...pools.values()].map((p) => p.end()));
    await server.stop();
    throw error;
  }
  return {
    server,
    login: APP_LOGIN,
    admin(shardId) {
      return pools.get(shardId)!;
    },
    backendEnv({ host = '127.0.0.1', verifyFull = false, secretArns } = {}) {
      const url = (id: string): string => `postgresql://${host}:${server.port}/${id}${verifyFull ? '?sslmode=verify-full' : ''}`;
      return {
        SHARDING_CONFIG_JSON: JSON.stringify({
          strategy: 'hash_based',
          default_shard: DEMO_SHARD_IDS[0],
          shards: DEMO_SHARD_IDS.map((id) => ({ shard_id: id, database_url: url(id), weight: 1, read_replicas: [] })),
        }),
        ...(secretArns === undefined
          ? Object.fromEntries(DEMO_SHARD_IDS.flatMap((id) => [[`${id.toUpperCase()}_DB_USERNAME`, APP_LOGIN.username], [`${id.toUpperCase()}_DB_PASSWORD`, APP_LOGIN.password]]))
          : { ...Object.fromEntries(DEMO_SHARD_IDS.map((id) => [`${id.toUpperCase()}_DB_SECRET_ARN`, secretArns.get(id) ?? ''])), AWS_REGION: 'eu-west-1' }),
        CATALOG_SHARD_ID: DEMO_SHARD_IDS[0],
        DATABASE_RETRY_SECONDS: '1',
        SLOT_MAP_REFRESH_SECONDS: '1',
      };
    },
    async publishSlotMap() {
      await new SlotMapStore(pools.get(DEMO_SHARD_IDS[0])!).initialise(buildSlotMap(DEMO_SHARD_IDS.map((shardId) => ({ shardId, weight: 1 }))), 'test control plane');
    },
    async stop() {
      await Promise.all([...pools.values()].map((p) => p.end()));
      await server.stop();
    },
  };
}
