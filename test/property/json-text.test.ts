import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { duplicateMembers, DuplicateMemberError, parseJsonText } from '../../functions/core/json-text.js';

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
