/**
 * Runs once before any test file: as root, makes sure the `postgres` OS user the test servers
 * run as exists (embedded-cluster.ts creates it when missing), so that parallel test files do
 * not race to create it; then initdb's the data directory every test server is copied from
 * (see TEMPLATE_DATA_DIR_ENV in postgres.ts), removed after the run, also an interrupted one.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, rm, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverUser } from '../../functions/adapters/postgres/embedded-cluster.js';
import { initTemplateDataDir, TEMPLATE_DATA_DIR_ENV } from './postgres.js';

export default async function setup(): Promise<() => Promise<void>> {
  serverUser();
  const root = await mkdtemp(join(tmpdir(), 'ca-dms-pg-template-'));
  // An interrupted run (Ctrl-C, SIGTERM) skips the teardown below: vitest answers those signals
  // with process.exit(), so the directory (some 40 MB) is removed on the way out instead of being
  // left in the temporary directory by every interrupted run.
  const removeOnExit = (): void => rmSync(root, { recursive: true, force: true });
  process.once('exit', removeOnExit);
  // Entered by the `postgres` user when the tests run as root (initdb runs as that user).
  await chmod(root, 0o777);
  const template = join(root, 'data');
  await initTemplateDataDir(template);
  // The workers start after this and inherit it.
  process.env[TEMPLATE_DATA_DIR_ENV] = template;
  return async () => {
    process.off('exit', removeOnExit);
    delete process.env[TEMPLATE_DATA_DIR_ENV];
    await rm(root, { recursive: true, force: true });
  };
}
