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

/** What {@link scan} reports: a member name (with whether its object named it before), or a number literal. */
type Visit = (path: string, token: { readonly name: string; readonly repeated: boolean } | { readonly number: string }) => void;

/**
 * Walks valid JSON text (parse it first) token by token, calling `visit` with the path of each
 * member name and number until `done()`; iterative, so any depth is fine.
 */
function scan(text: string, visit: Visit, done: () => boolean): void {
  const stack: Frame[] = [];
  for (let i = 0; i < text.length && !done(); i++) {
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
        const repeated = top.keys.has(key);
        top.keys.add(key);
        visit(top.path, { name: key, repeated });
        top.key = key;
        top.expectingKey = false;
      }
      i = end;
    } else if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39) /* 0-9 */) {
      let end = i + 1;
      while (end < text.length && /[0-9eE+.-]/.test(text.charAt(end))) end += 1;
      visit(childPath(top), { number: text.slice(i, end) });
      i = end - 1;
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
}

/**
 * The paths of members named a second time in their object, in text order (at most ten).
 * `text` must be valid JSON (parse it first); the scan is iterative, so any depth is fine.
 */
export function duplicateMembers(text: string): string[] {
  const found: string[] = [];
  scan(
    text,
    (path, token) => {
      if ('name' in token && token.repeated) found.push(member(path, token.name));
    },
    () => found.length >= MAX_REPORTED,
  );
  return found;
}

/** A number literal's decimal value as significant digits and exponent (`1.50e1` and `15` give the same), or the text itself when it is not a finite number. */
function decimalValue(literal: string): string {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(literal);
  if (m === null) return literal;
  const digits = `${m[2] ?? ''}${m[3] ?? ''}`;
  // Counted, not matched: /0+$/ retries from every zero of a run that a non-zero digit ends, so a
  // 256 KiB body holding `1000…0001` took 90 s of the event loop.
  let lead = 0;
  while (lead < digits.length && digits.charCodeAt(lead) === 0x30) lead += 1;
  let end = digits.length;
  while (end > lead && digits.charCodeAt(end - 1) === 0x30) end -= 1;
  const significant = digits.slice(lead, end);
  if (significant === '') return '0'; // -0 is 0
  // BigInt: an exponent of 30 digits is still compared exactly.
  return `${m[1] ?? ''}${significant}e${BigInt(m[4] ?? '0') + BigInt((m[2] ?? '').length - lead)}`;
}

/**
 * The numbers of the text that `JSON.parse` does not read as the value written, with what they
 * would become (at most ten, in text order): beyond a double's range (`1e400` becomes
 * `Infinity`, then `null` in `JSON.stringify`), below it (`1e-400` becomes `0`), or with more
 * digits than it holds (`12345678901234567890123`, `0.1000000000000000000001`). A number the
 * shortest form of its double spells with the same value (`1.0`, `1e2`, `-0`, `5e-324`) is exact.
 * `text` must be valid JSON.
 *
 * @example
 * ```ts
 * inexactNumbers('{"a": [1.0, 1e400]}'); // [{ path: 'a[1]', becomes: 'Infinity' }]
 * ```
 */
export function inexactNumbers(text: string): { readonly path: string; readonly becomes: string }[] {
  const found: { path: string; becomes: string }[] = [];
  scan(
    text,
    (path, token) => {
      if (!('number' in token)) return;
      const becomes = String(Number(token.number));
      if (decimalValue(becomes) !== decimalValue(token.number)) found.push({ path, becomes });
    },
    () => found.length >= MAX_REPORTED,
  );
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
