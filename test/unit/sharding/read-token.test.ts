import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatReadToken, parseReadToken, ReadTokenError } from '../../../functions/core/sharding/read-token.js';

describe('read-your-writes tokens', () => {
  it('round-trips every token it issues', () => {
    const token = fc.record({
      shardId: fc.stringMatching(/^[a-z][a-z0-9_]{0,20}$/),
      lsn: fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffffffff })).map(([hi, lo]) => `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`),
      timeline: fc.integer({ min: 1, max: 0xffffffff }),
      mapVersion: fc.integer({ min: 0, max: 2 ** 40 }),
    });
    fc.assert(
      fc.property(token, (t) => {
        expect(parseReadToken(formatReadToken(t))).toEqual(t);
      }),
      { verbose: true },
    );
  });

  it.each([
    ['garbage', /has no shard/],
    ['shard_001@0/3000060', /lacks the timeline \(;tl=N\) or the map version/],
    ['shard_001@0/3000060;tl=1', /lacks the timeline \(;tl=N\) or the map version/],
    ['shard_001@0/3000060;tl=0;v=3', /has the timeline "0", which is not a whole number from 1/],
    ['shard_001@0/3000060;tl=01;v=3', /has the timeline "01"/],
    ['shard_001@0/3000060;tl=1;v=-3', /has the map version "-3", which is not a whole number from 0/],
    ['shard_001@0/3000060;tl=1;v=1000000000000000', /has the map version "1000000000000000"/],
    ['shard_001@0/3000060;v=3;tl=1', /has "v=3;tl=1" after its WAL position; a token has exactly ;tl=N;v=N there, in that order/],
    ['shard_001@0/3000060;tl=1;v=3;x=1', /has "tl=1;v=3;x=1" after its WAL position/],
    ['shard_001@0/30000601234;tl=1;v=3', /has the WAL position "0\/30000601234", which is not two hexadecimal numbers/],
    ['shard_001@0/3000060;tl=4294967296;v=3', /beyond PostgreSQL's 32-bit timelines/],
    ['shard 001@0/3000060;tl=1;v=3', /names the shard "shard 001", which is not a shard id/],
    ['shard_001@@0/3000060;tl=1;v=3', /has the WAL position "@0\/3000060"/],
    ['SHARD_001@0/3000060;TL=1;V=3', /lacks the timeline .* \(their names are lower-case\)/],
    [`${'s'.repeat(5000)}@0/0;tl=1;v=1`, /names the shard "s{40}…", which is not a shard id/],
  ])('refuses %j, saying why', (text, reason) => {
    expect(() => parseReadToken(text)).toThrow(ReadTokenError);
    expect(() => parseReadToken(text)).toThrow(reason);
  });

  it('writes the position in its canonical form', () => {
    expect(parseReadToken('shard_001@0/3000060;tl=2;v=7')).toEqual({ shardId: 'shard_001', lsn: '0/3000060', timeline: 2, mapVersion: 7 });
    expect(parseReadToken('shard_001@a/3b;tl=1;v=0').lsn).toBe('A/3B');
  });
});
