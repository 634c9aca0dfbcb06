/**
 * The documents API over real PostgreSQL: one test server holding a catalog database and two
 * shard databases (migrated), the sharding runtime local mode builds, and the route served by a
 * bare `node:http` server on a loopback port.
 *
 * @example
 * ```ts
 * const docs = await startDocumentsApi();
 * const res = await fetch(`${docs.url}/api/v1/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"email":"a@example.org","display_name":"A"}' });
 * await docs.stop();
 * ```
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { createDocumentsRoute } from '../../../functions/local/documents-api.js';
import { migratedDataDir } from '../../support/migrated-data-dir.js';
import { migrateDatabase, startTestPostgres, withAdmin, type TestPostgres } from '../../support/postgres.js';
import { SilentRelay } from '../sharding/fixtures/silent-relay.js';

const migrations = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations');

export interface DocumentsApi {
  readonly url: string;
  readonly sharding: ShardingRuntime;
  readonly server: TestPostgres;
  /** With `relays`: each shard's relay, which can go silent (its pools reach the shard only through it). */
  readonly relays: ReadonlyMap<string, SilentRelay>;
  /** The primary pool of a shard, for checking rows behind the API (through its relay, if any). */
  primary(shardId: string): pg.Pool;
  /** The relay in front of a shard (with `relays`); throws when it has none. */
  relayOf(shardId: string): SilentRelay;
  /** A new user through the API (201 expected), with the shard it lives on. */
  newUser(displayName: string): Promise<{ id: string; shardId: string }>;
  /** How many documents an owner has, counted on its shard itself (not through its relay). */
  documentsOf(owner: { id: string; shardId: string }): Promise<number>;
  /** JSON request helper: parsed body (or null), status and headers. */
  request(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: any; headers: Headers }>; // eslint-disable-line @typescript-eslint/no-explicit-any -- tests read arbitrary JSON answers
  stop(): Promise<void>;
}

export interface DocumentsApiOptions {
  /** Reach every shard through a {@link SilentRelay} of its own. */
  readonly relays?: boolean;
  /** The API's request deadline (its default otherwise). */
  readonly deadlineMs?: number;
}

const DATABASES = ['catalog', 'shard_001', 'shard_002'] as const;

/** Creates the catalog and the two shard databases on the server of `adminUrl`. */
async function createDatabases(adminUrl: string): Promise<void> {
  await withAdmin(adminUrl, async (admin) => {
    for (const db of DATABASES) await admin.query(`create database ${db}`);
  });
}

/**
 * What {@link startDocumentsApi} makes on its server, for the run-wide migrated data directory
 * (test/support/migrated-data-dir.ts): the three databases, the catalog's `sharding` migrations
 * first (roles belong to the server), then each shard's `shard` migrations.
 */
async function makeDatabases(adminUrl: string, urlFor: (database: string) => string): Promise<void> {
  await createDatabases(adminUrl);
  await migrateDatabase(urlFor('catalog'), 'sharding');
  for (const shard of ['shard_001', 'shard_002']) await migrateDatabase(urlFor(shard), 'shard');
}

export async function startDocumentsApi(onError?: (error: unknown) => void, options: DocumentsApiOptions = {}): Promise<DocumentsApi> {
  // A copy of a data directory these databases were made and migrated in (once per run) when
  // there is one; else they are made here, and the migrations below run in full.
  const migrated = await migratedDataDir('documents-api', {}, (urlFor) => makeDatabases(urlFor('postgres'), urlFor));
  const server = await startTestPostgres(migrated === undefined ? {} : { dataDirTemplate: migrated });
  if (migrated === undefined) await createDatabases(server.url);
  const catalog = new pg.Pool({ connectionString: server.urlFor('catalog'), max: 4 });
  // Up to date already in a migrated copy: the runner finds every migration applied, checksums unchanged.
  await runMigrations(catalog, 'sharding', resolve(migrations, 'sharding'));
  const relays = new Map<string, SilentRelay>();
  if (options.relays === true) for (const id of ['shard_001', 'shard_002']) relays.set(id, await SilentRelay.start(Number(new URL(server.urlFor(id)).port)));
  const config = parseShardingConfig({
    shards: ['shard_001', 'shard_002'].map((id) => ({ shard_id: id, database_url: relays.get(id)?.url(server.urlFor(id)) ?? server.urlFor(id) })),
    default_shard: 'shard_001',
  });
  const sharding = await createShardingRuntime({ config, catalog, actor: 'test', readReplicas: true });
  await Promise.all([...sharding.primaries.values()].map((p) => runMigrations(p, 'shard', resolve(migrations, 'shard'))));
  const { reader, reads } = sharding;
  if (reader === undefined || reads === undefined) throw new Error('the runtime built no replica reader');
  const route = createDocumentsRoute({
    writer: sharding.writer,
    reader,
    reads,
    shardIds: ['shard_001', 'shard_002'],
    ...(onError ? { onError } : {}),
    ...(options.deadlineMs === undefined ? {} : { deadlineMs: options.deadlineMs }),
  });
  const http: Server = createServer((req, res) => {
    void Promise.resolve(route(req, res)).then((handled) => {
      if (!handled) res.writeHead(404).end();
    });
  });
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  const api: DocumentsApi = {
    url,
    sharding,
    server,
    relays,
    primary(shardId) {
      const pool = sharding.primaries.get(shardId);
      if (!pool) throw new Error(`no shard ${shardId}`);
      return pool;
    },
    relayOf(shardId) {
      const relay = relays.get(shardId);
      if (!relay) throw new Error(`no relay for ${shardId}`);
      return relay;
    },
    async newUser(displayName) {
      const r = await api.request('POST', '/api/v1/users', { email: `${randomUUID()}@example.org`, display_name: displayName });
      if (r.status !== 201) throw new Error(`creating a user answered ${r.status}: ${JSON.stringify(r.body)}`);
      return { id: String(r.body.id), shardId: String(r.body.shard_id) };
    },
    async documentsOf(owner) {
      const direct = new pg.Pool({ connectionString: server.urlFor(owner.shardId), max: 1 });
      try {
        const { rows } = await direct.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [owner.id]);
        return rows[0]?.n ?? -1;
      } finally {
        await direct.end();
      }
    },
    async request(method, path, body, headers = {}) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
        ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
      });
      const text = await res.text();
      return { status: res.status, body: text === '' ? null : JSON.parse(text), headers: res.headers };
    },
    async stop() {
      // Silent connections first: a request or a pool waiting on them would wait for ever.
      for (const relay of relays.values()) await relay.stop();
      await new Promise<void>((ok) => http.close(() => ok()));
      await sharding.close();
      await catalog.end();
      await server.stop();
    },
  };
  return api;
}
