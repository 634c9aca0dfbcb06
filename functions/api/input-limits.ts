/**
 * Limits every JSON body and request string is held to before anything else reads it, so that
 * hostile input is a 400 naming the field rather than a database error or a stack overflow:
 *
 * - no NUL character (U+0000) in any string or member name: PostgreSQL stores neither in `text`
 *   nor in `jsonb` (`\u0000` is "unsupported Unicode escape sequence");
 * - well-formed Unicode only: a lone surrogate (`"\ud800"`, which `JSON.parse` accepts) is
 *   refused by `jsonb` and silently replaced with U+FFFD in `text`;
 * - at most {@link MAX_JSON_DEPTH} levels of nesting: deeper values overflow the stack of
 *   recursive code (`JSON.stringify`, validators) and PostgreSQL's `max_stack_depth`.
 *
 * The walk is iterative, so a body nested 100,000 deep is measured without recursion.
 *
 * @example
 * ```ts
 * jsonProblems(JSON.parse('{"title": "a\\u0000b"}'), 'body'); // [{ name: 'body.title', reason: 'must not contain the NUL character (U+0000)' }]
 * textProblem('a\u0000b'); // 'must not contain the NUL character (U+0000)'
 * ```
 */
import type { z } from 'zod';
import { inexactNumbers, type DuplicateMemberError } from '../core/json-text.js';
import type { InvalidParam } from './http.js';

/** Deepest nesting accepted in a JSON body: the body itself is level 1. */
export const MAX_JSON_DEPTH = 32;

/** At most this many problems are listed; one is enough to refuse, a few help fix. */
const MAX_PROBLEMS = 10;

// In a `u` regex surrogate pairs are one code point, so this matches only unpaired halves.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/** Why a string cannot be accepted, or `undefined` when it can. */
export function textProblem(text: string): string | undefined {
  if (text.includes('\u0000')) return 'must not contain the NUL character (U+0000)';
  if (LONE_SURROGATE.test(text)) return 'must be well-formed Unicode (it contains a lone UTF-16 surrogate)';
  return undefined;
}

// Paths of deep values are cut short: the field is recognisable from its start.
const join = (path: string, key: string | number): string => (path.length > 200 ? path : `${path}.${key}`);

/**
 * The problems of a parsed JSON value: NUL characters and lone surrogates in strings and member
 * names, and nesting deeper than `maxDepth`, each named by its path under `root`.
 */
export function jsonProblems(value: unknown, root: string, maxDepth = MAX_JSON_DEPTH): InvalidParam[] {
  const problems: InvalidParam[] = [];
  const stack: Array<{ value: unknown; path: string; depth: number }> = [{ value, path: root, depth: 1 }];
  while (stack.length > 0 && problems.length < MAX_PROBLEMS) {
    const item = stack.pop() as { value: unknown; path: string; depth: number };
    if (typeof item.value === 'string') {
      const why = textProblem(item.value);
      if (why) problems.push({ name: item.path, reason: why });
      continue;
    }
    if (typeof item.value !== 'object' || item.value === null) continue;
    if (item.depth > maxDepth) {
      problems.push({ name: item.path, reason: `nests deeper than ${maxDepth} levels, the limit` });
      continue;
    }
    if (Array.isArray(item.value)) {
      for (let i = item.value.length - 1; i >= 0; i -= 1) stack.push({ value: item.value[i], path: join(item.path, i), depth: item.depth + 1 });
      continue;
    }
    const entries = Object.entries(item.value);
    for (let i = entries.length - 1; i >= 0; i -= 1) {
      const [key, member] = entries[i] as [string, unknown];
      const why = textProblem(key);
      // A bad member name is reported without repeating it (it may be unprintable).
      if (why) problems.push({ name: item.path, reason: `a member name ${why}` });
      else stack.push({ value: member, path: join(item.path, key), depth: item.depth + 1 });
    }
  }
  return problems;
}

/** One problem per member a body gave twice (see `parseJsonText`), named by its path under `part`. */
export function duplicateProblems(error: DuplicateMemberError, part: string): InvalidParam[] {
  return error.paths.map((path) => ({ name: path.startsWith('[') ? `${part}${path}` : `${part}.${path}`, reason: 'is given more than once in its object; give each member once' }));
}

/**
 * One problem per number of the JSON `text` that `JSON.parse` reads as another value (see
 * `inexactNumbers`): `1e400` would be stored as null, `1e-400` as 0, `0.1000000000000000000001`
 * as 0.1. Named by its path under `part`; the text must be valid JSON.
 */
export function inexactProblems(text: string, part: string): InvalidParam[] {
  return inexactNumbers(text).map(({ path, becomes }) => ({
    name: shortName(path === '' ? part : path.startsWith('[') ? `${part}${path}` : `${part}.${path}`),
    reason: `is a number that cannot be stored exactly (it would become ${becomes === 'Infinity' || becomes === '-Infinity' ? 'null' : becomes}); send it as a string to keep it as written`,
  }));
}

/** Longest member name a problem repeats: its start is enough to recognise it. */
const MAX_NAME_CHARS = 64;
/** At most this many problems are listed in one answer (one is enough to refuse, a few help fix). */
const MAX_LISTED = 20;

/** A client's member name as a problem repeats it: cut short, so that a hostile body is not echoed back. */
function shortName(name: string): string {
  return name.length <= MAX_NAME_CHARS ? name : `${name.slice(0, MAX_NAME_CHARS)}…(${name.length} characters)`;
}

/**
 * A zod error's issues as problems named by their paths under `prefix`. An unknown member is
 * named by its own path (`body.from: is not a field of this request`) with its name cut short,
 * rather than quoted in the reason, which would repeat a 60,000-character name or thousands of
 * names back to the client.
 */
export function zodProblems(prefix: string, error: z.ZodError): InvalidParam[] {
  return error.issues.flatMap((i) => {
    const path = [prefix, ...i.path.map((p) => shortName(String(p)))].join('.');
    if (i.code === 'unrecognized_keys') return i.keys.map((k) => ({ name: `${path}.${shortName(k)}`, reason: 'is not a field of this request' }));
    return [{ name: path, reason: i.message }];
  });
}

/**
 * The problems an answer lists: the first {@link MAX_LISTED}, each name held to a length (names
 * built elsewhere, such as a member given twice, may be as long as the body), and what to add to
 * the detail for the rest.
 */
export function listedProblems(problems: readonly InvalidParam[]): { listed: InvalidParam[]; more: string } {
  const listed = problems.slice(0, MAX_LISTED).map((p) => (p.name.length <= 4 * MAX_NAME_CHARS ? p : { ...p, name: shortName(p.name) }));
  return { listed, more: problems.length > listed.length ? ` (and ${problems.length - listed.length} more problems)` : '' };
}
