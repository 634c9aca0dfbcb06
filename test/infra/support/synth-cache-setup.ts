/**
 * Runs once before any test file: makes the directory the infrastructure tests share their
 * syntheses in (test/infra/support/synth.ts: each distinct configuration is synthesized once per
 * run), named to the workers through SYNTH_CACHE_ENV, and removes it after the run, also an
 * interrupted one. A directory per run: no synthesis outlives the sources it was made from.
 *
 * Nothing here imports the CDK: this runs in vitest's own process.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The same name as SYNTH_CACHE_ENV in synth.ts (which imports aws-cdk-lib, not loaded here). */
const SYNTH_CACHE_ENV = 'CA_DMS_TEST_SYNTH_CACHE';

export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), 'ca-dms-synth-'));
  const remove = (): void => rmSync(root, { recursive: true, force: true });
  // vitest answers Ctrl-C and SIGTERM with process.exit(), skipping the teardown below.
  process.once('exit', remove);
  // The workers start after this and inherit it.
  process.env[SYNTH_CACHE_ENV] = root;
  return () => {
    process.off('exit', remove);
    delete process.env[SYNTH_CACHE_ENV];
    remove();
  };
}
