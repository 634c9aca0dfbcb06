import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { applyScalingEnv } from '../../functions/core/scaling/config.js';
import { applyShardingEnv } from '../../functions/core/sharding/config.js';

/** A spelling of a boolean the guide's switches take: the word in any case, with blanks around. */
const switchSpelling = fc
  .tuple(fc.constantFrom('true', 'false', '1', '0', 'yes', 'no'), fc.array(fc.boolean(), { minLength: 1, maxLength: 5 }), fc.constantFrom('', ' ', '\t'), fc.constantFrom('', ' ', '\n'))
  .map(([word, upper, before, after]) => ({ word, text: `${before}${[...word].map((c, i) => (upper[i % upper.length] ? c.toUpperCase() : c)).join('')}${after}` }));

describe("the guide's two on/off switches read a value the same way", () => {
  it('AUTO_SCALING_ENABLED and SHARDING_ENABLED agree on every spelling of true and false', () => {
    fc.assert(
      fc.property(switchSpelling, ({ word, text }) => {
        const expected = word === 'true' || word === '1' || word === 'yes';
        const scaling = applyScalingEnv({}, { AUTO_SCALING_ENABLED: text }).enabled;
        const sharding = (applyShardingEnv({ shards: [], default_shard: 'shard_001' }, { SHARDING_ENABLED: text }) as { enabled?: boolean }).enabled;
        expect({ scaling, sharding }).toEqual({ scaling: expected, sharding: expected });
      }),
    );
  });
});
