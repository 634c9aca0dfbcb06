/**
 * The demo backend: what the services run when the configuration names no image of its own
 * (`{ "kind": "demo" }`). It is the documents API of local mode (functions/local/documents-api.ts)
 * over the sharding layer, against the shards the task is given (settings.ts), so a first
 * deploy carries real traffic to real shards before the CA-DMS application exists.
 *
 * - `GET /health`, `GET /health/readonly`: the container health check and the load balancer's.
 *   They answer 200 as soon as the server listens, whatever the databases do: on a first deploy
 *   the services start before the control plane has migrated the shards, and a task that failed
 *   its health check then would be replaced in a loop until the deployment rolled back. The body
 *   says whether the shards are reachable (`database`: `connecting` or `ready`).
 * - `/api/v1/users...`, `/api/v1/documents...`: the documents API. Until the shards and the
 *   catalog's first slot map are reachable it answers 503 with `Retry-After`; the read pool
 *   (`DATABASE_READ_ONLY=true`) refuses writes with 405.
 * - `/`: what this is; anything else is an RFC 9457 404.
 *
 * Invalid settings stop it with exit 78 (EX_CONFIG) and a line naming each variable. On AWS the
 * shards' logins are secrets (logins.ts): read when it connects (a refused read is the reason it
 * waits, retried every DATABASE_RETRY_SECONDS), and read again by a pool whose new connection is
 * refused for its credentials after a rotation; connections already open are kept.
 *
 * @example
 * ```sh
 * PORT=8000 CA_DMS_SERVICE=backend-write SHARDING_CONFIG_JSON="$(cat sharding.json)" \
 *   SHARD_001_DB_USERNAME=app SHARD_001_DB_PASSWORD=... node server.mjs
 * curl -X POST -H 'content-type: application/json' -d '{"email":"a@example.com","display_name":"A"}' \
 *   http://127.0.0.1:8000/api/v1/users
 * ```
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { pathToFileURL } from 'node:url';
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type pg from 'pg';
import { createShardingRuntime, type ShardingRuntime } from '../../functions/adapters/postgres/sharding-runtime.js';
import { SlotMapStore } from '../../functions/adapters/postgres/slot-map-store.js';
import { createNodePool, type ShardPools } from '../../functions/adapters/postgres/shard-pools.js';
import type { ExtraRoute } from '../../functions/adapters/http/local-server.js';
import { createDocumentsRoute } from '../../functions/local/documents-api.js';
import { readShardLogins, secretsClientFor, type ShardLogins } from './logins.js';
import { HEALTH_PATHS } from './health.js';
import { BackendConfigError, parseBackendEnv, type BackendSettings } from './settings.js';

export { BackendConfigError, parseBackendEnv, type BackendSettings } from './settings.js';

const EX_CONFIG = 78;

export { HEALTH_PATHS } from './health.js';

const DOCUMENT_PATHS = /^\/api\/v1\/(users|documents)(\/|$)/;

/** One line of JSON on stderr (CloudWatch Logs keeps each as an event). */
export type BackendLog = (level: 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>) => void;

const stderrLog: BackendLog = (level, message, fields = {}) => {
  process.stderr.write(`${JSON.stringify({ level, message, ...fields })}\n`);
};

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': status >= 400 ? 'application/problem+json' : 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

function problem(res: ServerResponse, status: number, title: string, detail: string, headers: Record<string, string> = {}): void {
  sendJson(res, status, { type: 'about:blank', title, status, detail }, headers);
}

/**
 * The shards as this process reaches them: the sharding runtime once the catalog holds a slot
 * map and the databases answer, retried until then; newer slot maps adopted as moves publish
 * them.
 */
export class ShardConnection {
  #runtime: ShardingRuntime | undefined;
  #route: ExtraRoute | undefined;
  #logins: ShardLogins | undefined;
  #catalog: pg.Pool | undefined;
  #stopped = false;
  #timer: NodeJS.Timeout | undefined;
  #lastProblem = '';
  #connecting: Promise<void> | undefined;
  /** Why the shards are not reachable yet, for the 503 and the health body. */
  waitingFor = 'the first connection to the shards';

  /**
   * @param secrets Reads the shards' login secrets when the settings say they are secrets
   *   (default: a client for the settings' region, {@link secretsClientFor}).
   */
  constructor(
    private readonly settings: BackendSettings,
    private readonly log: BackendLog = stderrLog,
    private readonly secrets: SecretsManagerClient | undefined = secretsClientFor(settings),
  ) {}

  /** The shards' pools once connected (what a rotation is observed through). */
  get pools(): ShardPools | undefined {
    return this.#runtime?.pools;
  }

  /** The documents API's route, once the shards are reachable. */
  get route(): ExtraRoute | undefined {
    return this.#route;
  }

  /** Starts connecting in the background; resolves when the first attempt has ended. */
  start(): Promise<void> {
    this.#connecting ??= this.#attempt();
    return this.#connecting;
  }

  async #attempt(): Promise<void> {
    if (this.#stopped) return;
    try {
      await this.#connect();
      this.log('info', 'connected to the shards', { shards: this.settings.sharding.shards.map((s) => s.shard_id), slot_map_version: this.#runtime?.router.slotMap.version });
      this.#schedule(this.settings.SLOT_MAP_REFRESH_SECONDS, () => this.#refreshSlotMap());
    } catch (error) {
      this.waitingFor = (error as Error).message;
      // One line per new reason: a task waiting for the migrations must not flood its log group.
      if (this.waitingFor !== this.#lastProblem) this.log('warn', 'the shards are not reachable yet; retrying', { reason: this.waitingFor, retry_seconds: this.settings.DATABASE_RETRY_SECONDS });
      this.#lastProblem = this.waitingFor;
      this.#schedule(this.settings.DATABASE_RETRY_SECONDS, () => this.#attempt());
    }
  }

  async #connect(): Promise<void> {
    // Read once; the pools read a secret again themselves when a rotation refuses its login.
    this.#logins ??= await readShardLogins(this.settings, this.secrets);
    const logins = this.#logins;
    const ca = this.settings.ca ? { ca: this.settings.ca } : {};
    this.#catalog ??= this.#catalogPool(logins, ca);
    // The slot map is published by the control plane (the scaling API or the moves function),
    // never here: the application's role may read the catalog, not write it.
    if ((await new SlotMapStore(this.#catalog).latest()) === null) {
      throw new Error('the catalog has no slot map yet (the control plane publishes the first once the migrations have run)');
    }
    const runtime = await createShardingRuntime({
      config: logins.sharding,
      catalog: this.#catalog,
      actor: `demo-backend ${this.settings.CA_DMS_SERVICE ?? ''}`.trim(),
      pools: { max: this.settings.DATABASE_POOL_SIZE, applicationName: 'ca-dms-demo-backend', ...ca, ...(logins.credentials ? { credentials: logins.credentials } : {}) },
      readReplicas: true,
    });
    if (this.#stopped) {
      await runtime.close();
      return;
    }
    const { reader, reads } = runtime;
    if (!reader || !reads) throw new Error('unreachable: the runtime was asked for a replica reader');
    this.#runtime = runtime;
    this.#route = createDocumentsRoute({
      writer: runtime.writer,
      reader,
      reads,
      shardIds: runtime.pools.shardIds(),
      deadlineMs: this.settings.DATABASE_REQUEST_DEADLINE_MS,
      onError: (error, request) => this.log('error', 'documents API request failed', { ...request, error: error instanceof Error ? { name: error.name, message: error.message, code: (error as { code?: unknown }).code } : String(error) }),
    });
  }

  /** The catalog shard's primary, with that shard's login (re-read like the shard pools'). */
  #catalogPool(logins: ShardLogins, ca: { ca?: readonly string[] }): pg.Pool {
    const shardId = this.settings.catalogShardId;
    const shard = logins.sharding.shards.find((s) => s.shard_id === shardId);
    if (!shard) throw new Error(`unreachable: the settings checked that shard ${shardId} is configured`);
    const credentials = logins.credentials;
    const pool = createNodePool(
      shard.database_url,
      { max: 2, connectionTimeoutMillis: 3000, applicationName: `ca-dms-demo-backend${this.settings.CA_DMS_SERVICE ? `-${this.settings.CA_DMS_SERVICE}` : ''}`, ...ca },
      credentials && (() => credentials(shardId)),
    );
    pool.on('error', () => undefined);
    return pool;
  }

  async #refreshSlotMap(): Promise<void> {
    const router = this.#runtime?.router;
    if (!router) return;
    try {
      const newer = await this.#runtime?.slotMaps.currentIfNewer(router.slotMap.version);
      if (newer && router.setSlotMap(newer)) this.log('info', 'adopted a newer slot map', { version: newer.version });
    } catch (error) {
      this.log('warn', 'could not look for a newer slot map', { reason: (error as Error).message });
    }
    this.#schedule(this.settings.SLOT_MAP_REFRESH_SECONDS, () => this.#refreshSlotMap());
  }

  #schedule(seconds: number, fn: () => Promise<void>): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void fn(), seconds * 1000);
  }

  /** Stops retrying and refreshing, and closes every pool. */
  async close(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#connecting;
    await this.#runtime?.close();
    await this.#catalog?.end();
  }
}

/** The request handler (exported for tests that do not start a process). */
export async function handle(settings: BackendSettings, shards: Pick<ShardConnection, 'route' | 'waitingFor'>, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://backend').pathname;
  const method = req.method ?? 'GET';
  const identity = { service: settings.CA_DMS_SERVICE ?? null, read_only: settings.DATABASE_READ_ONLY };
  if (DOCUMENT_PATHS.test(path)) {
    if (settings.DATABASE_READ_ONLY && method !== 'GET' && method !== 'HEAD') {
      problem(res, 405, 'Method Not Allowed', `this task is the read pool (DATABASE_READ_ONLY=true): ${method} ${path} goes to the write pool`, { allow: 'GET, HEAD' });
      return;
    }
    const route = shards.route;
    if (!route) {
      problem(res, 503, 'Service Unavailable', `the shards are not reachable yet: ${shards.waitingFor}`, { 'retry-after': String(settings.DATABASE_RETRY_SECONDS) });
      return;
    }
    if (!(await route(req, res))) problem(res, 404, 'Not Found', `no route ${method} ${path}`);
    return;
  }
  const known = path === '/' || (HEALTH_PATHS as readonly string[]).includes(path);
  if (!known) {
    problem(res, 404, 'Not Found', `the demo backend has no ${path}; it serves /, /health, /health/readonly and the documents API under /api/v1/users and /api/v1/documents`);
    return;
  }
  if (method !== 'GET' && method !== 'HEAD') {
    problem(res, 405, 'Method Not Allowed', `${method} is not allowed on ${path}`, { allow: 'GET, HEAD' });
    return;
  }
  const database = shards.route ? 'ready' : 'connecting';
  if (path === '/') {
    sendJson(res, 200, { name: 'ca-dms demo backend', ...identity, database, endpoints: ['/health', '/health/readonly', '/api/v1/users', '/api/v1/documents'] });
  } else {
    sendJson(res, 200, { status: 'ok', ...identity, database });
  }
}

/** Starts listening on `host:settings.PORT`. */
export async function startBackendServer(settings: BackendSettings, shards: Pick<ShardConnection, 'route' | 'waitingFor'>, host = '0.0.0.0', log: BackendLog = stderrLog): Promise<Server> {
  const server = createServer((req, res) => {
    handle(settings, shards, req, res).catch((error: unknown) => {
      log('error', 'request failed', { path: req.url, error: (error as Error).message });
      if (!res.headersSent) problem(res, 500, 'Internal Server Error', 'the request failed; see the task log');
      else res.destroy();
    });
  });
  server.keepAliveTimeout = settings.KEEPALIVE_TIMEOUT_SECONDS * 1000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(settings.PORT, host, () => resolve());
  });
  return server;
}

async function main(): Promise<number> {
  let settings: BackendSettings;
  try {
    settings = parseBackendEnv(process.env);
  } catch (error) {
    if (error instanceof BackendConfigError) {
      console.error(`demo-backend: ${error.message}`);
      return EX_CONFIG;
    }
    throw error;
  }
  const shards = new ShardConnection(settings);
  const server = await startBackendServer(settings, shards);
  stderrLog('info', `listening on ${settings.PORT}`, { service: settings.CA_DMS_SERVICE ?? null, read_only: settings.DATABASE_READ_ONLY });
  void shards.start();
  // ECS sends SIGTERM on stop: finish what is in flight, then exit 0.
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  server.closeIdleConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await shards.close();
  return 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main();
}
