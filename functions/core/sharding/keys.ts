/**
 * Routing keys in their one canonical text form. Keys are hashed as text, so two spellings of
 * the same key (a UUID in upper and in lower case) would land in different slots: a document
 * stored under one spelling and moved under the other is lost by the move's cleanup. Every key
 * therefore passes through {@link canonicalKey} before it is hashed, looked up in the directory
 * or compared against a range (docs/sharding-spec.md, section 1).
 *
 * - A string that is a UUID in any accepted form becomes the lowercase, hyphenated
 *   36-character form. Accepted forms are exactly those PostgreSQL's `uuid` type reads, plus the
 *   RFC 9562 URN: 32 hex digits in any case, where one hyphen may follow any group of four
 *   digits (never first, never last, never two in a row), optionally in braces around the whole
 *   value (both or neither); and `urn:uuid:` (any case) followed by `8-4-4-4-12` hex digits.
 *   So `{3F2C1D9E8A7B4C6D9E0F112233445566}` and `3f2c-1d9e-8a7b-4c6d-9e0f-1122-3344-5566` are
 *   one key with `3f2c1d9e-8a7b-4c6d-9e0f-112233445566`; ` 3f2c...` (spaces), a lone brace and
 *   a hyphen after three digits are not UUIDs, as PostgreSQL refuses them too.
 * - Any other string is hashed as given (case matters: `Tenant-1` and `tenant-1` are two keys).
 * - Safe integers in decimal; `Date`s as ISO 8601 UTC with milliseconds; other numbers refused.
 *
 * @example
 * ```ts
 * canonicalKey('{3F2C1D9E-8A7B-4C6D-9E0F-112233445566}'); // '3f2c1d9e-8a7b-4c6d-9e0f-112233445566'
 * canonicalUuid('not-a-uuid'); // throws RoutingError (invalid-key)
 * keySlot('URN:UUID:3f2c1d9e-8a7b-4c6d-9e0f-112233445566') === keySlot('3f2c1d9e-8a7b-4c6d-9e0f-112233445566'); // true
 * ```
 */
import { RoutingError } from './errors.js';
import { slotOf } from './hash.js';
import type { RangeKey } from './strategies/range.js';

const CANONICAL_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/**
 * What PostgreSQL's `uuid_in` reads: optional braces (both or neither) around 32 hex digits in
 * eight groups of four, each group but the last optionally followed by one hyphen.
 */
const POSTGRES_UUID = /^(?:\{[0-9a-f]{4}(?:-?[0-9a-f]{4}){7}\}|[0-9a-f]{4}(?:-?[0-9a-f]{4}){7})$/i;
/** The RFC 9562 URN, which PostgreSQL does not read: `urn:uuid:` and the `8-4-4-4-12` form only. */
const URN_UUID = /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const NOT_HEX = /[^0-9a-f]/gi;

/** The canonical UUID for a string in any accepted UUID form, or `undefined` when it is not a UUID. */
export function uuidForm(text: string): string | undefined {
  // The hot path: keys minted by us are already canonical.
  if (text.length === 36 && CANONICAL_UUID.test(text)) return text;
  if (text.length < 32 || text.length > 45) return undefined;
  if (!POSTGRES_UUID.test(text) && !URN_UUID.test(text)) return undefined;
  // 32 hex digits remain once the prefix, braces and hyphens are dropped.
  const hex = (text.length === 45 ? text.slice(9) : text).replace(NOT_HEX, '').toLowerCase();
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The canonical text of a routing key, which is what gets hashed, looked up and stored.
 * Throws {@link RoutingError} (`invalid-key`) for numbers that are not safe integers and invalid `Date`s.
 */
export function canonicalKey(key: RangeKey): string {
  if (typeof key === 'string') return uuidForm(key) ?? key;
  if (typeof key === 'number') {
    if (!Number.isSafeInteger(key)) throw new RoutingError('invalid-key', `numeric keys must be safe integers, got ${key}`);
    return String(key);
  }
  if (Number.isNaN(key.getTime())) throw new RoutingError('invalid-key', 'the key is an invalid Date');
  return key.toISOString();
}

/**
 * A user id (or a document's owner id) in canonical form. User ids are UUIDs; anything else is
 * refused with {@link RoutingError} (`invalid-key`) rather than routed somewhere.
 */
export function canonicalUuid(text: string): string {
  const id = uuidForm(text);
  if (id === undefined) throw new RoutingError('invalid-key', `${JSON.stringify(text.slice(0, 64))} is not a UUID (expected e.g. 3f2c1d9e-8a7b-4c6d-9e0f-112233445566)`);
  return id;
}

/** The hash slot of a key, after normalisation: `slotOf(canonicalKey(key))`. */
export function keySlot(key: RangeKey): number {
  return slotOf(canonicalKey(key));
}
