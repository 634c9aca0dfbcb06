/**
 * Local mode as a child process, the way an operator runs it: `node --import tsx bin/cli.ts
 * start` on a free loopback port with a throwaway data directory. The tests talk to it over
 * HTTP only, stop it with a signal and check that no PostgreSQL process of its data directory is
 * left (found by data directory in /proc, never by name, so nobody else's server is touched).
 *
 * @example
 * ```ts
 * const local = await startLocalProcess({ args: ['--seed-users', '20'] });
 * const status = await (await fetch(`${local.url}/api/v1/scaling/status`)).json();
 * expect(await local.stop('SIGTERM')).toBe(0);
 * expect(postgresProcessesUnder(local.dataDir)).toEqual([]);
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../support/postgres.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const CLI = join(REPO_ROOT, 'bin/cli.ts');

export interface LocalProcess {
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  readonly child: ChildProcess;
  /** Everything printed so far (stdout and stderr). */
  output(): string;
  /** Waits until the output contains `text`. */
  waitFor(text: string | RegExp, timeoutMs?: number): Promise<void>;
  /** Sends `signal` and resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Deletes the data directory (after stop). */
  remove(): Promise<void>;
}

export interface StartLocalProcessOptions {
  readonly args?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** Reuse a data directory (a restart). */
  readonly dataDir?: string;
  readonly port?: number;
  /** Resolve once the process started, without waiting for the banner. */
  readonly waitForBanner?: boolean;
}

/** A fresh data directory the `postgres` OS user can enter (mkdtemp makes it 0700). */
export async function tempDataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ca-dms-local-'));
  await chmod(dir, 0o755);
  return dir;
}

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

export async function startLocalProcess(options: StartLocalProcessOptions = {}): Promise<LocalProcess> {
  const dataDir = options.dataDir ?? (await tempDataDir());
  const port = options.port ?? (await freePort());
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'start', '--port', String(port), '--data-dir', dataDir, ...(options.args ?? [])], {
    cwd: REPO_ROOT,
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
  const local: LocalProcess = {
    url: `http://127.0.0.1:${port}`,
    port,
    dataDir,
    child,
    output: () => out,
    waitFor,
    async stop(signal = 'SIGTERM') {
      if (exitCode === undefined) child.kill(signal);
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

/** Pids of processes whose command line names a path under `dir` (PostgreSQL servers of that data). */
export async function postgresProcessesUnder(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const argv = cmdline.split('\0');
    if (argv.some((a) => a.endsWith('/postgres')) && argv.some((a) => a.startsWith(dir))) pids.push(Number(entry));
  }
  return pids;
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
