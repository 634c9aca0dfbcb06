import { defineConfig } from 'vitest/config';
import { ISOLATED_FILES } from './test/support/isolation.js';

const NOT_RUN = ['**/node_modules/**', 'test/images/**'];
/**
 * Unit and property tests that share nothing through modules: run without isolation, each
 * worker imports the code once instead of once per file (about a second a file). test/unit/aws
 * stubs the SDK clients' prototypes (aws-sdk-client-mock), so it runs isolated.
 */
const SHARED_MODULES = ['test/unit/!(aws)/**/*.test.ts', 'test/property/**/*.test.ts'];
/**
 * The infrastructure tests, also without isolation: a fresh worker spends about 3 s of CPU
 * importing aws-cdk-lib, cdk-nag and the stacks, and about 9 s more loading the CloudFormation
 * schemas at its first validated synthesis; shared, that is once a worker, not once a file.
 * (vitest queues projects by name: in a full run these files start first.) They share nothing through
 * modules: no file sets an environment variable (config.test.ts gives its child process an
 * environment of its own), none calls vi.mock or vi.stubEnv, the stacks and test/infra/support
 * keep no state between calls but the synthesis cache (test/infra/support/synth.ts, meant to be
 * shared), each file builds its own App, and the one SDK stub (stacks.test.ts, aws-sdk-client-mock
 * on CloudWatchClient) is restored in a `finally` by the test that makes it.
 */
const INFRA = ['test/infra/**/*.test.ts'];
/**
 * The integration and end-to-end tests, also without isolation, but for the files that change
 * process-wide state (test/support/isolation.ts says which and why, and a unit test keeps the list
 * true): worker start-ups and the code's import were about 1.4 s of CPU a file, on a suite that
 * keeps both cores busy.
 */
const INTEGRATION = ['test/integration/**/*.test.ts', 'test/e2e/**/*.test.ts'];
const ISOLATED = [...Object.keys(ISOLATED_FILES), 'test/unit/aws/**/*.test.ts'];

export default defineConfig({
  test: {
    exclude: NOT_RUN,
    // Integration tests start real PostgreSQL and nginx processes, and spend much of their time
    // waiting on them (timeouts, bounds, restarts): on a 2-core machine a third file at once
    // fills that time. The same 2237 tests on an idle 2-core machine (.ci/run from a fresh clone):
    // 733 s of vitest with two (one file alone or none running for 476 s of it), 561 s with three.
    maxWorkers: 3,
    testTimeout: 30_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    reporters: ['default'],
    projects: [
      { extends: true, test: { name: 'unit', include: SHARED_MODULES, isolate: false } },
      {
        extends: true,
        test: {
          name: 'infra',
          include: INFRA,
          isolate: false,
          // Once per run, in this project only (a root-level one runs again for every project): the
          // directory the infrastructure tests share their syntheses in. Nothing else reads it, and
          // these tests start no PostgreSQL server (no test/support/global-setup.ts).
          globalSetup: ['test/infra/support/synth-cache-setup.ts'],
        },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: INTEGRATION,
          exclude: [...NOT_RUN, ...ISOLATED],
          isolate: false,
          // As root, the postgres OS user the test servers run as, and the data directory they are
          // copied from: made once per run for both projects that start servers (see the module).
          globalSetup: ['test/support/global-setup.ts'],
        },
      },
      {
        extends: true,
        test: {
          name: 'isolated',
          // The built images' tests need root and podman: `npm run test:images` (vitest.images.config.ts).
          include: ISOLATED,
          exclude: NOT_RUN,
          globalSetup: ['test/support/global-setup.ts'],
        },
      },
    ],
  },
});
