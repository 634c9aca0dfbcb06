import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { duplicateMembers, DuplicateMemberError, inexactNumbers, parseJsonText } from '../../functions/core/json-text.js';

/** JSON text of a value with an object somewhere inside, where `member` is written a second time. */
interface Repeated {
  readonly text: string;
  readonly path: string;
}

/** Builds text for `value`, repeating the first member of the object at `target` (depth-first order). */
function textWithRepeat(value: unknown, target: number, space: string): Repeated | undefined {
  let seen = 0;
  let path: string | undefined;
  const write = (v: unknown, at: string): string => {
    if (Array.isArray(v)) return `[${v.map((x, i) => write(x, `${at}[${i}]`)).join(`,${space}`)}]`;
    if (v !== null && typeof v === 'object') {
      const entries = Object.entries(v as Record<string, unknown>);
      const here = seen++;
      const parts = entries.map(([k, x]) => `${JSON.stringify(k)}:${space}${write(x, at === '' ? k : `${at}.${k}`)}`);
      const first = entries[0];
      if (here === target && first !== undefined) {
        path = at === '' ? first[0] : `${at}.${first[0]}`;
        parts.push(`${JSON.stringify(first[0])}:${space}${JSON.stringify(first[1])}`);
      }
      return `{${parts.join(`,${space}`)}}`;
    }
    return JSON.stringify(v);
  };
  const text = write(value, '');
  return path === undefined ? undefined : { text, path };
}

describe('JSON text with each member once (functions/core/json-text.ts)', () => {
  it('parses exactly as JSON.parse does when no object repeats a member', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.constantFrom('', ' ', '\n  '), (value, space) => {
        const text = JSON.stringify(value, null, space);
        expect(duplicateMembers(text)).toEqual([]);
        expect(parseJsonText(text)).toEqual(JSON.parse(text));
      }),
    );
  });

  it('names the path of a member given twice, at any depth, whatever the names and values around it', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.nat(), fc.constantFrom('', ' '), (value, pick, space) => {
        const objects = JSON.stringify(value).match(/\{"/g)?.length ?? 0;
        fc.pre(objects > 0);
        const repeated = textWithRepeat(value, pick % objects, space);
        fc.pre(repeated !== undefined);
        const { text, path } = repeated as Repeated;
        expect(duplicateMembers(text)).toEqual([path]);
        expect(() => parseJsonText(text)).toThrow(DuplicateMemberError);
      }),
    );
  });

  it('compares member names as decoded, and tells names apart from string values', () => {
    expect(duplicateMembers('{"min": 1, "\\u006din": 2}')).toEqual(['min']);
    expect(duplicateMembers('{"a": "a", "b": ["a", {"a": 1}], "c": {"a": "b", "b": "a"}}')).toEqual([]);
    expect(duplicateMembers('{"a\\"b": 1, "a\\"b": 2}')).toEqual(['a"b']);
  });

  it('is still a SyntaxError for text that is not JSON', () => {
    expect(() => parseJsonText('{"a": 1,}')).toThrow(SyntaxError);
    expect(new DuplicateMemberError(['a'])).toBeInstanceOf(SyntaxError);
  });
});

describe('numbers JSON.parse does not read as written (inexactNumbers)', () => {
  it('finds none in the text JSON.stringify writes for any finite double, at any place', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.double({ noNaN: true, noDefaultInfinity: true }), (value, n) => {
        expect(inexactNumbers(JSON.stringify({ value, n: [n] }))).toEqual([]);
      }),
    );
  });

  /** The integer JavaScript writes for a double holding an integer ("1.2345678901234568e+22" too). */
  const writtenInteger = (n: number): bigint => {
    const [mantissa = '', exponent = '0'] = String(n).split('e');
    const [whole = '', fraction = ''] = mantissa.split('.');
    return BigInt(`${whole}${fraction}`) * 10n ** BigInt(Number(exponent) - fraction.length);
  };

  it('finds an integer exactly when the double it is read as is written as another integer, and says which', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 80n), max: 2n ** 80n }), (b) => {
        const exact = writtenInteger(Number(b)) === b;
        expect(inexactNumbers(`{"a": {"b": [0, ${b}]}}`)).toEqual(exact ? [] : [{ path: 'a.b[1]', becomes: String(Number(b)) }]);
      }),
    );
  });

  it.each([
    ['1e400', 'Infinity'],
    ['-1e400', '-Infinity'],
    ['1e-400', '0'],
    ['0.1000000000000000000001', '0.1'],
    ['1e99999999999999999999999999', 'Infinity'],
  ])('finds %s (it becomes %s)', (literal, becomes) => {
    expect(inexactNumbers(`[${literal}]`)).toEqual([{ path: '[0]', becomes }]);
  });

  it.each(['1.0', '1e2', '-0', '0e5', '5e-324', '1.5E+3', '100e-2', '0.000001', '9007199254740992'])('finds %s exact', (literal) => {
    expect(inexactNumbers(`{"x": ${literal}}`)).toEqual([]);
  });

  it('reads a 256 KiB number whose zeros a non-zero digit ends in one pass (a body of the largest size the API takes)', () => {
    const zeros = '0'.repeat(256 * 1024 - 10);
    expect(inexactNumbers(`{"n": 1${zeros}1}`)).toEqual([{ path: 'n', becomes: 'Infinity' }]);
    expect(inexactNumbers(`{"n": 0.${zeros}1}`)).toEqual([{ path: 'n', becomes: '0' }]);
    expect(inexactNumbers(`{"n": 1${zeros}1e-${zeros.length + 1}}`)).toEqual([{ path: 'n', becomes: '1' }]);
  });

  it('does not read digits inside strings or member names as numbers', () => {
    expect(inexactNumbers('{"12345678901234567890123": "1e400", "x": "-0.1000000000000000000001"}')).toEqual([]);
  });
});
