/**
 * The repository's root and the infrastructure tests' fixtures, for files that need the paths
 * only: importing them from synth.ts would load aws-cdk-lib, cdk-nag and the whole app's
 * constructs (seconds of each isolated file's import time) for two strings.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const FIXTURES = join(ROOT, 'test', 'infra', 'fixtures');
