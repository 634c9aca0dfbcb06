/**
 * Whole and partial updates of the scaling configuration document, so that no request resets a
 * setting it does not mention:
 *
 * - a complete replacement (`PUT /config`) must name every setting; {@link missingSettings}
 *   lists the ones it leaves out;
 * - a partial update (`PATCH /config`) is a JSON Merge Patch (RFC 7396) applied to the current
 *   configuration by {@link applyMergePatch}.
 *
 * @example
 * ```ts
 * missingSettings({ cpu_scale_up: 75 }); // ['enabled', 'dry_run', 'check_interval', ...]
 * applyMergePatch({ a: 1, b: { c: 2, d: 3 } }, { b: { d: null }, e: 4 }); // { a: 1, b: { c: 2 }, e: 4 }
 * ```
 */
import { defaultScalingConfig } from './config.js';

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Objects whose members are optional by design rather than settings with a default: the
 * services (each service listed is scaled; overrides are a subset) and the HPA behaviour rules.
 */
const OPEN_OBJECTS = new Set(['services', 'hpa.behavior']);

/**
 * The dotted paths of every setting a complete configuration document has and `document`
 * lacks, in the order of the configuration schema. Nested settings (`targets.cpu`,
 * `step.scale_out_steps`) count; the members of `services` and `hpa.behavior` do not.
 */
export function missingSettings(document: Record<string, unknown>): string[] {
  const missing: string[] = [];
  const walk = (complete: Record<string, unknown>, given: Record<string, unknown>, prefix: string): void => {
    for (const [key, value] of Object.entries(complete)) {
      const path = prefix === '' ? key : `${prefix}.${key}`;
      if (!Object.hasOwn(given, key)) missing.push(path);
      else if (isObject(value) && isObject(given[key]) && !OPEN_OBJECTS.has(path)) walk(value, given[key], path);
    }
  };
  walk(defaultScalingConfig() as unknown as Record<string, unknown>, document, '');
  return missing;
}

/**
 * RFC 7396 MergePatch(target, patch): members of an object patch replace the target's, `null`
 * removes a member, objects merge recursively, anything else (arrays included) replaces the
 * target whole. Neither argument is modified.
 */
export function applyMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  // A Map, not property assignment: a member named `__proto__` must stay a member.
  const result = new Map(isObject(target) ? Object.entries(target) : []);
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) result.delete(key);
    else result.set(key, applyMergePatch(result.get(key), value));
  }
  return Object.fromEntries(result);
}
