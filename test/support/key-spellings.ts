/**
 * Every spelling of a UUID that docs/sharding-spec.md (section 1) says is one key: any letter
 * case, bare, in braces, as a `urn:uuid:` URN (the prefix in any case too), or 32 hex digits
 * without hyphens. Shared by the tests that check each entry point treats them as one key.
 *
 * @example
 * ```ts
 * fc.assert(fc.property(fc.uuid(), keySpelling, (id, s) => canonicalKey(spell(id, s)) === id));
 * ```
 */
import fc from 'fast-check';

export type SpellingForm = 'plain' | 'braced' | 'urn' | 'bare';

/** Which letters are upper-cased (cycled over the text) and which form wraps the id. */
export interface KeySpelling {
  readonly upper: readonly boolean[];
  readonly form: SpellingForm;
}

export const keySpelling: fc.Arbitrary<KeySpelling> = fc.record({
  upper: fc.array(fc.boolean(), { minLength: 1, maxLength: 45 }),
  form: fc.constantFrom<SpellingForm>('plain', 'braced', 'urn', 'bare'),
});

const mixCase = (text: string, upper: readonly boolean[]): string => [...text].map((c, i) => (upper[i % upper.length] ? c.toUpperCase() : c)).join('');

/** The canonical UUID `id` spelled as `s` says. */
export function spell(id: string, s: KeySpelling): string {
  if (s.form === 'urn') return mixCase(`urn:uuid:${id}`, s.upper);
  const body = mixCase(id, s.upper);
  return s.form === 'plain' ? body : s.form === 'braced' ? `{${body}}` : body.replaceAll('-', '');
}
