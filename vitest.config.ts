import { defineConfig } from 'vitest/config';

const NOT_RUN = ['**/node_modules/**', 'test/images/**'];
/**
 * Unit and property tests that share nothing through modules: run without isolation, each
 * worker imports the code once instead of once per file (about a second a file). test/unit/aws
 * stubs the SDK clients' prototypes (aws-sdk-client-mock), so it runs isolated.
 */
const SHARED_MODULES = ['test/unit/!(aws)/**/*.test.ts', 'test/property/**/*.test.ts'];

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
          name: 'isolated',
          // The built images' tests need root and podman: `npm run test:images` (vitest.images.config.ts).
          include: ['test/**/*.test.ts'],
          exclude: [...NOT_RUN, ...SHARED_MODULES],
          // Once per run, in this project only (a root-level one runs again for every project):
          // as root, the postgres OS user the test servers run as, and the data directory they
          // are copied from; then the directory the infrastructure tests share their syntheses in.
          globalSetup: ['test/support/global-setup.ts', 'test/infra/support/synth-cache-setup.ts'],
        },
      },
    ],
  },
});
