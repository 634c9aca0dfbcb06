/**
 * Routing keys in their one canonical text form. Keys are hashed as text, so two spellings of
 * the same key (a UUID in upper and in lower case) would land in different slots: a document
 * stored under one spelling and moved under the other is lost by the move's cleanup. Every key
 * therefore passes through {@link canonicalKey} before it is hashed, looked up in the directory
 * or compared against a range (docs/sharding-spec.md, section 1).
 *
 * - A string that is a UUID in any accepted form becomes the lowercase, hyphenated
 *   36-character form. Accepted forms: `8-4-4-4-12` hex in any case, the same in braces
 *   (`{...}`), with a `urn:uuid:` prefix (any case), and 32 hex digits without hyphens:
 *   exactly the unambiguous forms PostgreSQL's `uuid` type reads, plus the RFC 9562 URN.
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
// Groups 1-5: the hyphenated form, bare, braced or as a URN; groups 6-10: 32 bare hex digits.
const UUID_FORMS =
  /^(?:(?:urn:uuid:)?([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})|\{([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})\}|([0-9a-f]{8})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{12}))$/i;

/** The canonical UUID for a string in any accepted UUID form, or `undefined` when it is not a UUID. */
export function uuidForm(text: string): string | undefined {
  // The hot path: keys minted by us are already canonical.
  if (text.length === 36 && CANONICAL_UUID.test(text)) return text;
  if (text.length < 32 || text.length > 45) return undefined;
  const m = UUID_FORMS.exec(text);
  if (m === null) return undefined;
  const parts = m[1] !== undefined ? m.slice(1, 6) : m[6] !== undefined ? m.slice(6, 11) : m.slice(11, 16);
  return parts.join('-').toLowerCase();
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
