/**
 * The lock of test/support/migrated-data-dir.ts when its owner is gone: a worker that ended
 * while making a directory (its file's hook timed out, and the worker was recycled) left the lock
 * folder behind; every later file asking for that directory then waited 120 s, vitest's
 * hookTimeout, and failed its beforeAll instead of making the directory itself.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { expect, it } from 'vitest';
import { migratedDataDir } from '../../support/migrated-data-dir.js';
import { TEMPLATE_DATA_DIR_ENV, withAdmin } from '../../support/postgres.js';

/** The pid of a process that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '']);
  if (child.pid === undefined) throw new Error('could not start a child process');
  return child.pid;
}

it('makes the directory when the lock was left by a process that is gone', async () => {
  const base = process.env[TEMPLATE_DATA_DIR_ENV];
  if (base === undefined) throw new Error(`${TEMPLATE_DATA_DIR_ENV} is not set: run under vitest's global setup`);
  const name = `orphaned-lock-${process.pid}`;
  const target = join(dirname(base), `migrated-${name}`);
  const lock = `${target}.lock`;
  await mkdir(lock);
  await writeFile(join(lock, 'owner'), String(deadPid()));
  let prepared = 0;

  const dir = await migratedDataDir(name, {}, async (urlFor) => {
    prepared += 1;
    await withAdmin(urlFor('postgres'), (c) => c.query('create database made_here'));
  });

  expect(dir).toBe(target);
  expect(prepared).toBe(1);
  expect(existsSync(join(target, 'PG_VERSION'))).toBe(true);
  expect(existsSync(lock)).toBe(false);
});

it('uses the directory another maker put in place while this one made it', async () => {
  const base = process.env[TEMPLATE_DATA_DIR_ENV];
  if (base === undefined) throw new Error(`${TEMPLATE_DATA_DIR_ENV} is not set: run under vitest's global setup`);
  const name = `made-twice-${process.pid}`;
  const target = join(dirname(base), `migrated-${name}`);

  const dir = await migratedDataDir(name, {}, async () => {
    // What a second maker (one that took this one's lock for orphaned) leaves in place meanwhile.
    await mkdir(target);
    await writeFile(join(target, 'PG_VERSION'), '17\n');
  });

  expect(dir).toBe(target);
});
