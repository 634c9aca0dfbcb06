/**
 * Local mode as an operator runs it, for benchmarks: `bin/cli.ts start` in a child process on a
 * free loopback port and a given data directory, ready once `GET /status` answers 200.
 *
 * @example
 * ```ts
 * const local = await startLocalProcess(dataDir, ['--shards', '2']);
 * await fetch(`${local.url}/api/v1/scaling/status`);
 * const stopMs = await local.stop();
 * ```
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** A free port on 127.0.0.1 (free when asked; taken again by whoever binds it first). */
export async function freePort(): Promise<number> {
  return new Promise((r, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => r(port));
    });
  });
}

export interface LocalProcess {
  readonly url: string;
  /** Milliseconds from the spawn to the first 200 from /status. */
  readonly readyMs: number;
  /** The process id of the CLI (for profiling or inspection). */
  readonly pid: number;
  /** SIGTERM, then the milliseconds until it exited; rejects unless it exited 0. */
  stop(): Promise<number>;
}

/** Starts local mode; rejects with its output when it exits or is not ready within 120 s. */
export async function startLocalProcess(dataDir: string, extra: readonly string[] = [], nodeFlags: readonly string[] = []): Promise<LocalProcess> {
  const port = await freePort();
  const started = performance.now();
  const child = spawn(process.execPath, [...nodeFlags, '--import', 'tsx', join(ROOT, 'bin/cli.ts'), 'start', '--port', String(port), '--data-dir', dataDir, ...extra], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (output += c.toString('utf8')));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const url = `http://127.0.0.1:${port}`;
  let readyMs: number | undefined;
  while (readyMs === undefined) {
    if (child.exitCode !== null) throw new Error(`local mode exited (${child.exitCode}) before its API was ready:\n${output}`);
    const ok = await fetch(`${url}/api/v1/scaling/status`).then((r) => r.status === 200, () => false);
    if (ok) readyMs = performance.now() - started;
    else await new Promise((r) => setTimeout(r, 50));
    if (performance.now() - started > 120_000) {
      child.kill('SIGTERM');
      throw new Error(`local mode was not ready within 120 s:\n${output}`);
    }
  }
  return {
    url,
    readyMs,
    pid: child.pid as number,
    async stop() {
      const stopping = performance.now();
      child.kill('SIGTERM');
      const code = await exited;
      if (code !== 0) throw new Error(`local mode exited ${code} on SIGTERM:\n${output}`);
      return performance.now() - stopping;
    },
  };
}
