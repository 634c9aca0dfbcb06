/**
 * How the operator CLI fails: one line naming the problem and what to do, exit 1 (2 for a usage
 * error), the stack trace only with --debug; and the installed command (package.json "bin")
 * runs from any directory.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { refusedLoopbackPort } from '../../support/refused-port.js';

const REPO = resolve(import.meta.dirname, '../../..');

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the package's bin the way npx does: the file named in package.json, from `cwd`. */
async function bin(cwd: string, ...args: string[]): Promise<Run> {
  const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  const entry = join(REPO, pkg.bin['ca-dms-scaling'] ?? '');
  return new Promise((done) => {
    execFile(entry, args, { cwd, timeout: 85_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      done({ code, stdout, stderr });
    });
  });
}

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ca-dms-cli-errors-'));
  const rows = Array.from({ length: 60 }, (_, i) => `${new Date(Date.UTC(2026, 0, 5) + i * 60_000).toISOString()},${10 + i}`);
  await writeFile(join(dir, 'trace.csv'), `timestamp,value\n${rows.join('\n')}\n`);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

// One at a time: each runs a whole CLI process, and a busy machine runs many at once slowly.
describe('ca-dms-scaling failures', { timeout: 90_000 }, () => {
  it('names a missing report folder in one line without a stack trace, exit 1', async () => {
    const run = await bin(dir, 'simulate', '--trace', 'trace.csv', '--report', 'missing/report.html');

    expect(run.code).toBe(1);
    expect(run.stderr).toBe(`ca-dms-scaling simulate: ${join(dir, 'missing/report.html')}: no such file or directory (check the path, and that its folder exists)\n(add --debug for the stack trace)\n`);
  });

  it('prints the stack trace with --debug', async () => {
    const run = await bin(dir, 'simulate', '--debug', '--trace', 'trace.csv', '--report', 'missing/report.html');

    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^Error: ENOENT.*\n\s+at /m);
  });

  it('says the database is not reachable when migrate cannot connect, exit 1', async () => {
    // A privileged port: one taken and released here could be bound by another test process before the CLI connects.
    const port = await refusedLoopbackPort();

    const run = await bin(dir, 'migrate', '--catalog-url', `postgresql://u:p@127.0.0.1:${port}/catalog`);

    expect(run.code).toBe(1);
    expect(run.stderr).toBe(`ca-dms-scaling migrate: cannot connect to 127.0.0.1:${port} (connection refused): is it running, and is the URL right?\n(add --debug for the stack trace)\n`);
  });

  it('says what is wrong with a negative duration, exit 2', async () => {
    const run = await bin(dir, 'load', '--url', 'http://127.0.0.1:1', '--duration', '-1');

    expect(run.code).toBe(2);
    expect(run.stderr).toContain('ca-dms-scaling load: --duration: expected a number of seconds from 1 to 3600, got "-1"');
  });

  it('prints the package version with --version, from any directory', async () => {
    const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };

    const run = await bin(tmpdir(), '--version');

    expect(run).toEqual({ code: 0, stdout: `ca-dms-scaling ${pkg.version}\n`, stderr: '' });
  });
});
