/**
 * The options of an in-process local mode for tests: two shards on free ports, no replicas, no
 * demo data, the shipped trace, and no scheduled evaluation (its decisions would only add noise).
 */
import { SHIPPED_TRACE } from '../../../functions/adapters/sim/trace-file.js';
import type { LocalModeOptions } from '../../../functions/local/runtime.js';

/** {@link LocalModeOptions} for `dataDir`, with `overrides` on top. */
export function quietLocalMode(dataDir: string, overrides: Partial<LocalModeOptions> = {}): LocalModeOptions {
  return {
    dataDir,
    port: 0,
    shards: 2,
    replicasPerShard: 0,
    tracePath: SHIPPED_TRACE,
    acceleration: 60,
    seedUsers: 0,
    documentsPerUser: 0,
    env: { SCALING_CHECK_INTERVAL: '86400' },
    onLine: () => undefined,
    ...overrides,
  };
}
