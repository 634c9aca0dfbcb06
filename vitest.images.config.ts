import { defineConfig } from 'vitest/config';

/**
 * `npm run test:images`: the sidecar's behaviour tests against the built image, plus the
 * image's own tests. Needs root, podman and the images .ci/images builds; `npm test` leaves
 * these out so a developer machine without podman still passes.
 */
export default defineConfig({
  test: {
    include: [
      'test/images/**/*.test.ts',
      'test/integration/nginx/{routing,cache,limits,edge,harness}.test.ts',
    ],
    globalSetup: ['test/images/setup.ts'],
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    reporters: ['default'],
  },
});
