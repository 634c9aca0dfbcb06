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
    // Integration tests start real PostgreSQL and nginx processes; on a 2-core machine
    // running more than two files at once only adds contention.
    maxWorkers: 2,
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
