/**
 * The /proc scans the local-mode stop tests rely on (test/e2e/support/local-process.ts): every
 * descendant of a process with its command line, and the PostgreSQL processes naming a data
 * directory, found among all the machine's processes; none of another directory, and none once
 * they are gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { descendantsOf, eventually, postgresProcessesUnder } from '../../e2e/support/local-process.js';

let dir: string;
const children: ChildProcess[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ca-dms-scans-'));
  // A stand-in whose argv[0] ends in /postgres (a shell under that name), as the servers' do.
  await symlink('/bin/sh', join(dir, 'postgres'));
});

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

/** Starts `command` with `args`, exiting when the test file ends. */
function start(command: string, args: readonly string[]): ChildProcess {
  const child = spawn(command, args, { stdio: 'ignore' });
  children.push(child);
  return child;
}

it('finds a process\'s children and grandchildren with their command lines, and no other process', async () => {
  // sh -> (sh -> sleep 301) and sleep 302: a grandchild and a child.
  const shell = start('/bin/sh', ['-c', '(sleep 301; :) & sleep 302; wait']);
  const found = await eventually(async () => {
    const all = await descendantsOf(shell.pid as number);
    return all.some((p) => p.cmdline === 'sleep 301 ') && all.some((p) => p.cmdline === 'sleep 302 ') ? all : undefined;
  }, 10_000, 'both sleeps under the shell');
  expect(found.map((p) => p.pid)).not.toContain(process.pid);
  expect(found.map((p) => p.pid)).not.toContain(shell.pid);
  expect(await descendantsOf(found.find((p) => p.cmdline === 'sleep 302 ')?.pid as number)).toEqual([]);
});

it('finds the processes named postgres whose command line names a path under the directory, until they are gone', async () => {
  const data = join(dir, 'data');
  // `sh -c SCRIPT NAME`: the shell's command line keeps NAME (a path) after the script.
  const ours = start(join(dir, 'postgres'), ['-c', 'sleep 303; :', join(data, 'x')]);
  // Named postgres but of another directory; of the directory but not named postgres.
  start(join(dir, 'postgres'), ['-c', 'sleep 304; :', join(dir, 'elsewhere')]);
  start('/bin/sh', ['-c', 'sleep 305; :', join(data, 'y')]);
  expect(await eventually(async () => ((await postgresProcessesUnder(data)).length > 0 ? postgresProcessesUnder(data) : undefined), 10_000, 'the stand-in server')).toEqual([ours.pid]);

  const gone = new Promise((r) => ours.once('exit', r));
  ours.kill('SIGKILL');
  await gone;
  expect(await postgresProcessesUnder(data)).toEqual([]);
});
