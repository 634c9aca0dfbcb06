/**
 * JSON text as every outside input is read (request bodies, configuration files, JSON in
 * environment variables): `JSON.parse`, and a refusal of any object that names a member twice.
 * RFC 8259 leaves duplicate names to the parser; `JSON.parse` keeps the last one silently, so
 * `{"min_instances": 2, "max_instances": 10, "min_instances": 8}` would set 8 while whoever
 * reads the file (or another parser: some keep the first) sees 2. I-JSON (RFC 7493) forbids
 * them, and a setting given twice is a mistake to name, not a choice to make for the user.
 *
 * @example
 * ```ts
 * parseJsonText('{"a": 1, "b": {"c": 2}}');  // { a: 1, b: { c: 2 } }
 * parseJsonText('{"a": 1, "a": 2}');          // throws DuplicateMemberError: paths ['a']
 * duplicateMembers('[{"id": 1, "id": 2}]');   // ['[0].id']
 * ```
 */

/** At most this many duplicates are named; one is enough to refuse. */
const MAX_REPORTED = 10;

/** An object of the text names a member more than once. A `SyntaxError`, as `JSON.parse`'s own errors are. */
export class DuplicateMemberError extends SyntaxError {
  override readonly name = 'DuplicateMemberError';
  /** Where each repeated member is, e.g. `services.worker.min_instances` or `[0].id` (at most ten). */
  readonly paths: readonly string[];
  constructor(paths: readonly string[]) {
    super(`${paths.map((p) => JSON.stringify(p)).join(', ')} ${paths.length === 1 ? 'is' : 'are'} given more than once in the same object; give each member once`);
    this.paths = paths;
  }
}

type Frame = { kind: 'object'; path: string; keys: Set<string>; key: string; expectingKey: boolean } | { kind: 'array'; path: string; index: number };

const member = (path: string, key: string): string => (path === '' ? key : `${path}.${key}`);

/** The path of the value that starts at the current position, inside `top`. */
function childPath(top: Frame | undefined): string {
  if (top === undefined) return '';
  return top.kind === 'object' ? member(top.path, top.key) : `${top.path}[${top.index}]`;
}

/**
 * The paths of members named a second time in their object, in text order (at most ten).
 * `text` must be valid JSON (parse it first); the scan is iterative, so any depth is fine.
 */
export function duplicateMembers(text: string): string[] {
  const found: string[] = [];
  const stack: Frame[] = [];
  for (let i = 0; i < text.length && found.length < MAX_REPORTED; i++) {
    const c = text.charCodeAt(i);
    const top = stack[stack.length - 1];
    if (c === 0x22 /* " */) {
      let end = i + 1;
      let escaped = false;
      for (let d = text.charCodeAt(end); d !== 0x22; d = text.charCodeAt(end)) {
        if (d === 0x5c /* \ */) {
          escaped = true;
          end += 2;
        } else end += 1;
      }
      if (top?.kind === 'object' && top.expectingKey) {
        // Names are compared as decoded: "a" and "\u0061" are one member.
        const key = escaped ? (JSON.parse(text.slice(i, end + 1)) as string) : text.slice(i + 1, end);
        if (top.keys.has(key)) found.push(member(top.path, key));
        else top.keys.add(key);
        top.key = key;
        top.expectingKey = false;
      }
      i = end;
    } else if (c === 0x7b /* { */) {
      stack.push({ kind: 'object', path: childPath(top), keys: new Set(), key: '', expectingKey: true });
    } else if (c === 0x5b /* [ */) {
      stack.push({ kind: 'array', path: childPath(top), index: 0 });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */ && top !== undefined) {
      if (top.kind === 'object') top.expectingKey = true;
      else top.index += 1;
    }
  }
  return found;
}

/**
 * `JSON.parse(text)`, refusing duplicate member names. Throws `SyntaxError` for text that is not
 * JSON and {@link DuplicateMemberError} (also a `SyntaxError`) for a member given twice.
 */
export function parseJsonText(text: string): unknown {
  const value = JSON.parse(text) as unknown;
  const paths = duplicateMembers(text);
  if (paths.length > 0) throw new DuplicateMemberError(paths);
  return value;
}
