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
    ['shard_001@0/3000060;tl=0;v=3', /not of the form/],
    ['shard_001@0/3000060;v=3;tl=1', /not of the form/],
    ['shard_001@0/3000060;tl=1;v=3;x=1', /not of the form/],
    ['shard_001@0/30000601234;tl=1;v=3', /not of the form/],
    ['shard_001@0/3000060;tl=4294967296;v=3', /beyond PostgreSQL's 32-bit timelines/],
    ['shard 001@0/3000060;tl=1;v=3', /not of the form/],
  ])('refuses %j, saying why', (text, reason) => {
    expect(() => parseReadToken(text)).toThrow(ReadTokenError);
    expect(() => parseReadToken(text)).toThrow(reason);
  });

  it('writes the position in its canonical form', () => {
    expect(parseReadToken('shard_001@0/3000060;tl=2;v=7')).toEqual({ shardId: 'shard_001', lsn: '0/3000060', timeline: 2, mapVersion: 7 });
    expect(parseReadToken('shard_001@a/3b;tl=1;v=0').lsn).toBe('A/3B');
  });
});
