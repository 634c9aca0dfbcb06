import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { differingIds, HashRun, hashValue } from '../../../functions/adapters/postgres/move-hashes.js';

/** A run as the database builds it: records in id order. */
function runOf(rows: ReadonlyMap<string, string>): HashRun {
  return new HashRun(
    [...rows]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([id, h]) => id + h)
      .join(''),
  );
}

const hex16 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((v) => v.toString(16).padStart(16, '0'));
// Few distinct ids and hashes, so that both sides share rows, differ in some and each has its own.
const side = fc.array(fc.tuple(fc.uuid(), fc.constantFrom('0000000000000001', 'ffffffffffffffff', '00000000000000aa')), { maxLength: 600 });

describe('hash runs (the mover comparison before the fence)', () => {
  it('finds exactly the ids whose row differs or is on one side only, in id order', () => {
    fc.assert(
      fc.property(side, side, fc.array(fc.nat(599), { maxLength: 40 }), (shared, mine, changed) => {
        const a = new Map<string, string>(shared);
        const b = new Map<string, string>(shared);
        // Most rows equal on both sides (the walk skips equal blocks), some changed, some on one side.
        for (const [id, h] of mine) (id.charCodeAt(0) % 2 === 0 ? a : b).set(id, h);
        const ids = [...a.keys()];
        for (const k of changed) if (ids.length > 0) b.set(ids[k % ids.length] as string, '0123456789abcdef');
        const expected = [...new Set([...a.keys(), ...b.keys()])].filter((id) => a.get(id) !== b.get(id)).sort();
        expect(differingIds(runOf(a), runOf(b))).toEqual(expected);
      }),
      { numRuns: 300 },
    );
  });

  it('looks up each row by id, and nothing for an id it does not hold', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.uuid(), hex16), { maxLength: 300 }), fc.uuid(), (rows, other) => {
        const map = new Map(rows);
        const run = runOf(map);
        for (const [id, h] of map) expect(run.get(id)).toBe(h);
        expect(run.get(other)).toBe(map.get(other));
        expect([...run.hashes()].length).toBe(map.size);
      }),
    );
  });

  it("reads a hash as the signed 64-bit value PostgreSQL summed (two's complement)", () => {
    expect(hashValue('ffffffffffffffff')).toBe(-1n);
    expect(hashValue('8000000000000000')).toBe(-(2n ** 63n));
    expect(hashValue('7fffffffffffffff')).toBe(2n ** 63n - 1n);
  });

  it('refuses text that is not whole records', () => {
    expect(() => new HashRun('x'.repeat(53))).toThrow(/52-character records/);
  });
});
