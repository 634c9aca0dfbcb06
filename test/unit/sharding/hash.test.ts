import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { murmur3_32, murmur3String, SLOT_COUNT, slotOf } from '../../../functions/core/sharding/hash.js';

interface ReferenceVector {
  hexBytes?: string;
  text?: string;
  seed: string;
  hash: string;
}
interface KeyVector {
  key: string;
  utf8Hex: string;
  murmur3: string;
  slot: number;
}
const vectors = JSON.parse(readFileSync(new URL('../../../docs/routing-test-vectors.json', import.meta.url), 'utf8')) as {
  murmur3ReferenceVectors: { vectors: ReferenceVector[] };
  keys: KeyVector[];
};

const bytesOf = (v: ReferenceVector): Uint8Array => (v.hexBytes !== undefined ? Uint8Array.from(Buffer.from(v.hexBytes, 'hex')) : new TextEncoder().encode(v.text));
const label = (v: ReferenceVector): string => `${v.hexBytes !== undefined ? `bytes ${v.hexBytes || '(empty)'}` : JSON.stringify(v.text?.slice(0, 20))} seed ${v.seed}`;

describe('MurmurHash3 x86_32', () => {
  it('documents the SMHasher reference vectors named in the brief', () => {
    const has = (text: string | undefined, hexBytes: string | undefined, seed: string, hash: string): boolean =>
      vectors.murmur3ReferenceVectors.vectors.some((v) => v.text === text && v.hexBytes === hexBytes && v.seed === seed && v.hash === hash);
    expect(has(undefined, '', '0x00000000', '0x00000000')).toBe(true);
    expect(has(undefined, '', '0x00000001', '0x514e28b7')).toBe(true);
    expect(has('Hello, world!', undefined, '0x000004d2', '0xfaf6cdb3')).toBe(true);
  });

  it.each(vectors.murmur3ReferenceVectors.vectors.map((v) => [label(v), v] as const))('matches the reference vector for %s', (_name, v) => {
    expect(murmur3_32(bytesOf(v), Number(v.seed))).toBe(Number(v.hash));
  });

  it.each(vectors.murmur3ReferenceVectors.vectors.filter((v) => v.text !== undefined).map((v) => [label(v), v] as const))(
    'hashes the string %s without encoding it first, to the same value',
    (_name, v) => {
      expect(murmur3String(v.text as string, Number(v.seed))).toBe(Number(v.hash));
    },
  );

  it('agrees between the string fast path and the byte path for any Unicode string', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 40 }), fc.integer({ min: 0, max: 0xffffffff }), (s, seed) => {
        expect(murmur3String(s, seed)).toBe(murmur3_32(new TextEncoder().encode(s), seed));
      }),
      { numRuns: 2000 },
    );
  });

  it('returns unsigned 32-bit integers', () => {
    fc.assert(
      fc.property(fc.string(), (s) => {
        const h = murmur3String(s);
        expect(Number.isInteger(h) && h >= 0 && h <= 0xffffffff).toBe(true);
      }),
    );
  });
});

describe('slots', () => {
  it.each(vectors.keys.map((k) => [JSON.stringify(k.key), k] as const))('routes key %s to its documented hash and slot', (_name, k) => {
    expect(Buffer.from(k.key, 'utf8').toString('hex')).toBe(k.utf8Hex);
    expect(murmur3String(k.key)).toBe(Number(k.murmur3));
    expect(slotOf(k.key)).toBe(k.slot);
  });

  it('puts every key in 0..4095', () => {
    fc.assert(
      fc.property(fc.string(), (s) => {
        const slot = slotOf(s);
        expect(slot >= 0 && slot < SLOT_COUNT && Number.isInteger(slot)).toBe(true);
      }),
    );
  });

  it('spreads UUID keys evenly over the slots', () => {
    const counts = new Array<number>(SLOT_COUNT).fill(0);
    fc.assert(
      fc.property(fc.uuid(), (u) => {
        counts[slotOf(u)] = (counts[slotOf(u)] ?? 0) + 1;
      }),
      { numRuns: 40_960, seed: 42 },
    );
    // Each quarter of the slot space (what one of four equal shards owns) gets a quarter of the keys.
    const quarters = [0, 1, 2, 3].map((q) => counts.slice(q * 1024, (q + 1) * 1024).reduce((a, b) => a + b, 0));
    for (const q of quarters) expect(Math.abs(q - 10_240) / 10_240).toBeLessThan(0.05);
  });
});
