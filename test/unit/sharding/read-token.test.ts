import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { clusterIdFromSystemIdentifier, formatReadToken, parseReadToken, ReadTokenError } from '../../../functions/core/sharding/read-token.js';

describe('read-your-writes tokens', () => {
  it('round-trips every token it issues', () => {
    const token = fc.record({
      shardId: fc.stringMatching(/^[a-z][a-z0-9_]{0,20}$/),
      lsn: fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffffffff })).map(([hi, lo]) => `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`),
      timeline: fc.integer({ min: 1, max: 0xffffffff }),
      mapVersion: fc.integer({ min: 0, max: 2 ** 40 }),
    }).chain((t) => fc.option(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), { nil: undefined }).map((id) => (id === undefined ? t : { ...t, clusterId: id.toString(16).padStart(16, '0') })));
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
    ['shard_001@0/3000060;tl=1;v=3;id=6B1713F378951104', /has the cluster id "6B1713F378951104", which is not 16 lower-case hexadecimal digits/],
    ['shard_001@0/3000060;tl=1;v=3;id=6b1713f37895110', /has the cluster id "6b1713f37895110"/],
    ['shard_001@0/3000060;tl=1;v=3;id=', /has the cluster id ""/],
    ['shard_001@0/3000060;tl=1;id=6b1713f378951104;v=3', /a token has exactly ;tl=N;v=N there, in that order, and may end in ;id=<16 hex digits>/],
    ['shard_001@0/3000060;tl=0;v=3;id=6b1713f378951104', /has the timeline "0"/],
  ])('refuses %j, saying why', (text, reason) => {
    expect(() => parseReadToken(text)).toThrow(ReadTokenError);
    expect(() => parseReadToken(text)).toThrow(reason);
  });

  it('writes the position in its canonical form', () => {
    expect(parseReadToken('shard_001@0/3000060;tl=2;v=7')).toEqual({ shardId: 'shard_001', lsn: '0/3000060', timeline: 2, mapVersion: 7 });
    expect(parseReadToken('shard_001@a/3b;tl=1;v=0').lsn).toBe('A/3B');
  });

  // docs/sharding-spec.md's test vectors for the cluster id.
  it('reads the cluster id when there is one, and tokens without it as before', () => {
    expect(parseReadToken('shard_001@0/3000060;tl=1;v=12;id=6b1713f378951104')).toEqual({ shardId: 'shard_001', lsn: '0/3000060', timeline: 1, mapVersion: 12, clusterId: '6b1713f378951104' });
    expect(parseReadToken('shard_001@0/3000060;tl=1;v=12')).not.toHaveProperty('clusterId');
  });

  it.each([
    ['7716658422943650052', '6b1713f378951104'],
    ['1', '0000000000000001'],
    ['-1', 'ffffffffffffffff'],
    ['-9223372036854775808', '8000000000000000'],
    ['9223372036854775807', '7fffffffffffffff'],
    ['9223372036854775808', undefined],
    ['0x10', undefined],
  ])('writes the system identifier %s as the cluster id %s', (text, id) => {
    expect(clusterIdFromSystemIdentifier(text)).toBe(id);
  });
});
