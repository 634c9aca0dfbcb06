/**
 * Local mode as a child process, the way an operator runs it: `node --import tsx bin/cli.ts
 * start --port 0` (local mode binds a free loopback port first and prints it) with a throwaway
 * data directory. The tests talk to it over HTTP only, stop it with a signal and check that no
 * PostgreSQL process of its data directory is left (found by data directory in /proc, never by
 * name, so nobody else's server is touched).
 *
 * @example
 * ```ts
 * const local = await startLocalProcess({ args: ['--seed-users', '20'] });
 * const status = await (await fetch(`${local.url}/api/v1/scaling/status`)).json();
 * expect(await local.stop('SIGTERM')).toBe(0);
 * expect(postgresProcessesUnder(local.dataDir)).toEqual([]);
 * ```
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rm, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const CLI = join(REPO_ROOT, 'bin/cli.ts');

export interface LocalProcess {
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  readonly child: ChildProcess;
  /** The pid of the node process running the CLI (the child itself, or the one npm started). */
  nodePid(): Promise<number>;
  /** Resolves to the child's exit code (null when a signal ended it). */
  readonly exited: Promise<number | null>;
  /** Everything printed so far (stdout and stderr). */
  output(): string;
  /** Waits until the output contains `text`. */
  waitFor(text: string | RegExp, timeoutMs?: number): Promise<void>;
  /** Sends `signal` (to the process group when run through npm) and resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Deletes the data directory (after stop). */
  remove(): Promise<void>;
}

export interface StartLocalProcessOptions {
  /**
   * `node` (default) runs the CLI directly; `npm` runs `npm start -- ...` the way the README
   * says, in its own process group as a terminal would (`child` is then npm, and
   * {@link LocalProcess.nodePid} finds the node process under it).
   */
  readonly via?: 'node' | 'npm';
  readonly args?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** The repository to run from (default this one); see {@link bareCopy}. */
  readonly repo?: string;
  /** Reuse a data directory (a restart). */
  readonly dataDir?: string;
  /** A fixed port (default 0: local mode picks a free one and prints it). */
  readonly port?: number;
  /** Resolve once the port is bound (the API answering 503 "starting"), without waiting for the banner. */
  readonly waitForBanner?: boolean;
}

/** A fresh data directory the `postgres` OS user can enter (mkdtemp makes it 0700). */
export async function tempDataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ca-dms-local-'));
  await chmod(dir, 0o755);
  return dir;
}

/**
 * The time a test that runs the CLI as a process (`runCli`) allows. Starting it means loading the
 * CLI through tsx: about 1 s on a quiet machine, but 6-9 s for a flag error alone under
 * `stress-ng --cpu 12`, and a refused second start ran past 20 s at load 14 with local mode
 * running beside it. The suite's other CLI process tests (test/unit/cli/errors.test.ts) allow 90 s.
 */
export const CLI_RUN_TIMEOUT_MS = 90_000;

/** Runs the CLI with `args` to completion; for quick commands (flag errors, --help). */
export async function runCli(args: readonly string[], env: Readonly<Record<string, string>> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  return { code, stdout, stderr };
}

/** The line local mode prints as soon as its port is bound, with the URL it serves. */
const LISTENING = /listening on (http:\/\/127\.0\.0\.1:\d+) /;

export async function startLocalProcess(options: StartLocalProcessOptions = {}): Promise<LocalProcess> {
  const dataDir = options.dataDir ?? (await tempDataDir());
  // Port 0 unless told: local mode binds it before anything else and prints it, so no other
  // process can take it meanwhile (a free port chosen here could be taken during start-up).
  const startArgs = ['start', '--port', String(options.port ?? 0), '--data-dir', dataDir, ...(options.args ?? [])];
  const viaNpm = options.via === 'npm';
  const repo = options.repo ?? REPO_ROOT;
  const child = viaNpm
    ? spawn('npm', ['start', '--silent', '--', ...startArgs.slice(1)], { cwd: repo, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    : spawn(process.execPath, ['--import', 'tsx', join(repo, 'bin/cli.ts'), ...startArgs], {
        cwd: repo,
        env: { ...process.env, ...options.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
  let out = '';
  const waiters = new Set<() => void>();
  const onData = (c: Buffer): void => {
    out += c.toString('utf8');
    for (const w of waiters) w();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let exitCode: number | null | undefined;
  void exited.then((c) => {
    exitCode = c;
    for (const w of waiters) w();
  });
  const waitFor = (text: string | RegExp, timeoutMs = 60_000): Promise<void> =>
    new Promise((resolveWait, reject) => {
      const check = (): void => {
        if (typeof text === 'string' ? out.includes(text) : text.test(out)) {
          done();
          resolveWait();
        } else if (exitCode !== undefined) {
          done();
          reject(new Error(`local mode exited (${exitCode}) before printing ${String(text)}:\n${out}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`local mode did not print ${String(text)} within ${timeoutMs} ms:\n${out}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });
  try {
    await waitFor(LISTENING, 60_000);
  } catch (error) {
    if (viaNpm) process.kill(-(child.pid as number), 'SIGTERM');
    else child.kill('SIGTERM');
    throw error;
  }
  const url = (LISTENING.exec(out) as RegExpExecArray)[1] as string;
  const local: LocalProcess = {
    url,
    port: Number(new URL(url).port),
    dataDir,
    child,
    exited,
    async nodePid() {
      if (!viaNpm) return child.pid as number;
      const found = (await descendantsOf(child.pid as number)).find((p) => p.cmdline.includes('bin/ca-dms-scaling.js'));
      if (!found) throw new Error(`no node process under npm (pid ${child.pid})`);
      return found.pid;
    },
    output: () => out,
    waitFor,
    async stop(signal = 'SIGTERM') {
      if (exitCode !== undefined) return exited;
      // Through npm: the whole group, as a terminal does, so no node process is orphaned.
      if (viaNpm) process.kill(-(child.pid as number), signal);
      else child.kill(signal);
      return exited;
    },
    async remove() {
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  if (options.waitForBanner !== false) {
    try {
      await waitFor('local mode is up', 90_000);
    } catch (error) {
      await local.stop('SIGTERM');
      throw error;
    }
  }
  return local;
}

/**
 * What a fresh clone holds (the files git tracks or would track) copied under a new temporary
 * folder with nothing beside it (no `../shared`), plus a link to our node_modules standing in
 * for `npm ci`. Returns the copy's path; remove its parent when done.
 */
export async function bareCopy(): Promise<string> {
  const parent = await tempDataDir();
  const repo = join(parent, 'ca-dms-scaling');
  const { stdout } = await promisify(execFile)('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: REPO_ROOT, maxBuffer: 16 * 1024 * 1024 });
  for (const file of stdout.split('\0').filter((f) => f !== '' && existsSync(join(REPO_ROOT, f)))) {
    await mkdir(dirname(join(repo, file)), { recursive: true });
    await copyFile(join(REPO_ROOT, file), join(repo, file));
    await chmod(join(repo, file), (await stat(join(REPO_ROOT, file))).mode & 0o777);
  }
  await symlink(join(REPO_ROOT, 'node_modules'), join(repo, 'node_modules'));
  return repo;
}

/**
 * The contents of a /proc file, or '' when the process is gone. Read synchronously: these files are
 * made by the kernel on read (no disk), and a whole /proc scan awaited file by file cost 40-90 ms
 * of CPU (180-220 processes on the 2-core machine; the promise and thread-pool round trip of each
 * read) against 8-11 ms read like this, in scans the stop tests repeat every 200 ms.
 */
export function procFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** The numeric entries of /proc: every process's pid. */
function pids(): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number);
}

/** Every process below `pid` (children, grandchildren, ...) with its command line, from /proc. */
export async function descendantsOf(pid: number): Promise<Array<{ pid: number; cmdline: string }>> {
  const all: Array<{ pid: number; ppid: number }> = [];
  for (const entry of pids()) {
    const stat = procFile(`/proc/${entry}/stat`);
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    all.push({ pid: entry, ppid });
  }
  const out: Array<{ pid: number; cmdline: string }> = [];
  const parents = new Set([pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) {
      if (parents.has(p.ppid) && !parents.has(p.pid)) {
        parents.add(p.pid);
        // Only the descendants' command lines are read, not every process's.
        out.push({ pid: p.pid, cmdline: procFile(`/proc/${p.pid}/cmdline`).replaceAll('\0', ' ') });
        grew = true;
      }
    }
  }
  return out;
}

/** Pids of processes whose command line names a path under `dir` (PostgreSQL servers of that data). */
export async function postgresProcessesUnder(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of pids()) {
    const argv = procFile(`/proc/${entry}/cmdline`).split('\0');
    if (argv.some((a) => a.endsWith('/postgres')) && argv.some((a) => a.startsWith(dir))) found.push(entry);
  }
  return found;
}

/** GETs a JSON document from the running system. */
export async function getJson<T = unknown>(url: string): Promise<{ status: number; body: T; headers: Headers }> {
  const res = await fetch(url, { headers: { accept: 'application/json' } });
  return { status: res.status, body: (await res.json()) as T, headers: res.headers };
}

/** Polls `probe` until it returns a value (not undefined) or the time runs out. */
export async function eventually<T>(probe: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
