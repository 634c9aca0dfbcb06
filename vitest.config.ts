import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The built images' tests need root and podman: `npm run test:images` (vitest.images.config.ts).
    exclude: ['**/node_modules/**', 'test/images/**'],
    // As root: the postgres OS user the test servers run as, created once before the workers start.
    globalSetup: ['test/support/global-setup.ts'],
    // Integration tests start real PostgreSQL and nginx processes; on a 2-core machine
    // running more than two files at once only adds contention.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    reporters: ['default'],
  },
});
