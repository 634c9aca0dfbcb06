/**
 * The shards endpoints of an API built without sharding (the Lambda handler builds no sharding
 * runtime for a disabled or absent configuration): their 404 names what left sharding out, not
 * always SHARDING_ENABLED=false, which an operator whose document said "enabled": false, or whose
 * function had no SHARDING_CONFIG_JSON, had not set.
 */
import { describe, expect, it } from 'vitest';
import { ProblemError } from '../../../functions/api/http.js';
import { createScalingApiPort, type ScalingApiDeps } from '../../../functions/api/wiring.js';
import { shardingConfigFromEnv, shardingOffReason } from '../../../functions/handlers/shared/sharding-env.js';

const doc = (enabled: boolean) =>
  JSON.stringify({ enabled, strategy: 'hash_based', default_shard: 'shard_001', shards: [{ shard_id: 'shard_001', database_url: 'postgres://127.0.0.1:5432/db' }] });

/** An API with no sharding; the shards endpoints throw before any other dependency is touched. */
function apiWithout(shardingOff: string | undefined) {
  const unused = new Proxy({}, { get: () => { throw new Error('not used by the shards endpoints'); } });
  return createScalingApiPort({
    catalog: unused, history: unused, controller: unused, target: unused, metrics: unused,
    clock: { now: () => 0 },
    ...(shardingOff === undefined ? {} : { shardingOff }),
  } as unknown as ScalingApiDeps); // the proxies stand for dependencies these endpoints never reach
}

async function notFound(run: () => Promise<unknown>): Promise<string> {
  const err = await run().then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(ProblemError);
  expect((err as ProblemError).status).toBe(404);
  return (err as Error).message;
}

describe('an API without sharding', () => {
  it.each([
    ['no SHARDING_CONFIG_JSON', {}, 'SHARDING_CONFIG_JSON is not set'],
    ['a blank SHARDING_CONFIG_JSON', { SHARDING_CONFIG_JSON: '  ' }, 'SHARDING_CONFIG_JSON is not set'],
    ['SHARDING_ENABLED=false over an enabled document', { SHARDING_CONFIG_JSON: doc(true), SHARDING_ENABLED: 'false' }, 'SHARDING_ENABLED=false'],
    ['SHARDING_ENABLED=0', { SHARDING_CONFIG_JSON: doc(true), SHARDING_ENABLED: '0' }, 'SHARDING_ENABLED=0'],
    ['the document\'s "enabled": false', { SHARDING_CONFIG_JSON: doc(false) }, 'SHARDING_CONFIG_JSON\'s "enabled": false'],
  ] as const)('with %s, names it in the shards endpoints\' 404', async (_, env, reason) => {
    // The same environment gives the handler no configuration: this is the case the reason is for.
    expect(await shardingConfigFromEnv(env, undefined)).toBeUndefined();
    expect(shardingOffReason(env)).toBe(reason);
    const api = apiWithout(shardingOffReason(env));
    for (const call of [() => api.shardStatistics({ exact: false }), () => api.shardHealth(), () => api.route('k')]) {
      expect(await notFound(call)).toBe(`sharding is not enabled (${reason}): there are no shards to report on`);
    }
  });

  it('without a reason given, says no sharding configuration was given, not a variable it cannot know was set', async () => {
    expect(await notFound(() => apiWithout(undefined).shardHealth())).toBe('sharding is not enabled (no sharding configuration was given): there are no shards to report on');
  });
});
