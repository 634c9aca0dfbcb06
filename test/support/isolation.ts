/**
 * Which integration and end-to-end files need a worker of their own (vitest.config.ts).
 *
 * The others share workers (`isolate: false`): a worker imports the code once and runs file after
 * file in it, instead of starting a fresh process that imports everything again for each file.
 * That import was about 1.4 s of CPU a file, on a suite that keeps both cores busy (measured: 17
 * integration files, 98.6 s of user CPU isolated, 74.4 s shared; system CPU the same).
 *
 * Sharing is safe for a file that leaves nothing behind in the modules it imports or in the
 * process: it starts its servers and stops them in its own hooks (a stray one is stopped at the
 * worker's exit, as before), and it changes no process-wide state. A file that does one of the
 * things {@link SHARED_STATE} matches runs isolated and is listed in {@link ISOLATED_FILES}:
 * test/unit/isolation.test.ts fails for a file that does one without being listed (and for a
 * listed file that is gone), naming it.
 */

/**
 * What a file that shares its worker must not do: set or delete environment variables (a module
 * that reads them once would keep the first file's), mock modules or spy on their exports, stub
 * globals or SDK client prototypes (aws-sdk-client-mock), fake the timers, set `globalThis`
 * properties, or add process listeners. (Reading `process.env`, or passing a child process an
 * environment of its own, is fine.)
 */
export const SHARED_STATE =
  /\bvi\.(mock|doMock|stubEnv|stubGlobal|spyOn|useFakeTimers)\b|\bmockClient\(|process\.env(\.\w+|\[[^\]]+\])\s*=[^=]|delete process\.env|Object\.assign\(process\.env|process\.(on|once|prependListener)\(|globalThis/;

/** The integration and end-to-end files that run isolated, each for the reason given. */
export const ISOLATED_FILES: Readonly<Record<string, string>> = {
  'test/e2e/dashboard.test.ts': 'evaluates the page scripts with globals on globalThis',
  'test/e2e/report.test.ts': 'evaluates the report script with globals on globalThis',
  'test/integration/api/api.test.ts': 'spies on module exports',
  'test/integration/containers/demo-backend-rotation.test.ts': 'stubs SDK clients (aws-sdk-client-mock)',
  'test/integration/controller/db.test.ts': 'stubs SDK clients (aws-sdk-client-mock)',
  'test/integration/controller/handlers.test.ts': 'sets Powertools environment variables, stubs SDK clients and spies on module exports',
  'test/integration/controller/least-privilege.test.ts': 'stubs SDK clients (aws-sdk-client-mock)',
  'test/integration/controller/session-state.test.ts': 'sets Powertools environment variables and spies on module exports',
  'test/integration/local/cancel-other-language.test.ts': 'steps the wall clock (spies on Date.now)',
  'test/integration/local/cluster-manifest-write.test.ts': 'mocks a module',
  'test/integration/local/environment.test.ts': 'sets the scaling environment variables',
  'test/integration/sharding/health.test.ts': 'stubs SDK clients (aws-sdk-client-mock)',
  'test/integration/sharding/listening-client.test.ts': 'adds a process listener',
  'test/integration/sharding/moves-abandon-cancels-query.test.ts': 'spies on module exports',
  'test/integration/sharding/moves-lease.test.ts': 'adds a process listener',
  'test/integration/sharding/moves-progress.test.ts': 'sets Powertools environment variables and spies on module exports',
  'test/integration/sharding/statistics.test.ts': 'stubs SDK clients (aws-sdk-client-mock)',
  'test/integration/sharding/workload-bounds.test.ts': 'adds a process listener',
};
