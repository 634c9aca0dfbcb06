/**
 * Range strategy: ordered, contiguous, non-overlapping key ranges `[from, to)` mapped to shards.
 * The first range may be open below (no `from`) and the last open above (no `to`). Keys are
 * numbers, timestamps (ISO 8601 strings, `Date`s or epoch milliseconds, compared as epoch
 * milliseconds) or strings (compared by Unicode code point, as Python compares `str`).
 *
 * @example
 * ```ts
 * const ranges = compileRanges('number', [{ shard_id: 'a', to: 1000 }, { shard_id: 'b', from: 1000 }]);
 * findRange(ranges, 999)?.shardId; // 'a'
 * findRange(ranges, 1000)?.shardId; // 'b'
 * ```
 */
import { uuidForm } from '../keys.js';
import { compareCodePoints } from '../slot-map.js';

export const RANGE_KEY_TYPES = ['number', 'timestamp', 'string'] as const;
export type RangeKeyType = (typeof RANGE_KEY_TYPES)[number];

/** A range as written in the configuration. */
export interface RangeSpec {
  readonly shard_id: string;
  readonly from?: number | string | undefined;
  readonly to?: number | string | undefined;
}

/** A range with its bounds normalised for comparison (`undefined` = open). */
export interface CompiledRange {
  readonly shardId: string;
  readonly from: number | string | undefined;
  readonly to: number | string | undefined;
  /** The range as written, for messages: `shard_a [.., 1000)`. */
  readonly label: string;
}

export type RangeKey = number | string | Date;

/**
 * Normalises one bound or key for `keyType`, or returns a description of why it cannot be.
 * Timestamps become epoch milliseconds; numbers must be finite; strings are kept as they are,
 * but for a UUID in any accepted spelling, which becomes its canonical form (`canonicalKey`).
 */
export function normaliseRangeValue(keyType: RangeKeyType, value: unknown): { ok: true; value: number | string } | { ok: false; why: string } {
  switch (keyType) {
    case 'number':
      if (typeof value === 'number' && Number.isFinite(value)) return { ok: true, value };
      return { ok: false, why: 'must be a finite number' };
    case 'string':
      // A bound is compared as keys are, in canonical form (section 1): a UUID in any spelling is
      // its lower-case 8-4-4-4-12 text, or `{C0...}` would sort above every canonical key.
      if (typeof value === 'string') return { ok: true, value: uuidForm(value) ?? value };
      return { ok: false, why: 'must be a string' };
    case 'timestamp': {
      const ms = value instanceof Date ? value.getTime() : typeof value === 'number' ? value : typeof value === 'string' && ISO_8601.test(value) ? Date.parse(value) : Number.NaN;
      if (Number.isFinite(ms)) return { ok: true, value: ms };
      return { ok: false, why: 'must be an ISO 8601 timestamp with a time zone (e.g. 2026-01-01T00:00:00Z) or epoch milliseconds' };
    }
  }
}

// A time zone is required: a zone-less timestamp would be read in the process's local zone.
const ISO_8601 = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})$|^\d{4}-\d{2}-\d{2}$/;

/** Compares two normalised values of the same key type. */
export function compareRangeValues(a: number | string, b: number | string): number {
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0;
  return compareCodePoints(String(a), String(b));
}

function show(v: number | string | undefined): string {
  return v === undefined ? '..' : JSON.stringify(v);
}

/** Labels a range for messages, e.g. `ranges[1] shard_b [1000, ..)`. */
export function rangeLabel(index: number, spec: RangeSpec): string {
  return `ranges[${index}] ${spec.shard_id} [${show(spec.from)}, ${show(spec.to)})`;
}

/**
 * Checks that ranges are ordered, contiguous and non-overlapping, returning every problem
 * (naming both ranges of a gap or an overlap). Bounds that fail to normalise are reported too.
 */
export function rangeProblems(keyType: RangeKeyType, specs: readonly RangeSpec[]): string[] {
  const problems: string[] = [];
  const norm: { from: number | string | undefined; to: number | string | undefined; bad: boolean }[] = specs.map((spec, i) => {
    let bad = false;
    const conv = (side: 'from' | 'to'): number | string | undefined => {
      const raw = spec[side];
      if (raw === undefined) return undefined;
      const r = normaliseRangeValue(keyType, raw);
      if (r.ok) return r.value;
      problems.push(`ranges[${i}].${side}: ${r.why} for range_key_type ${keyType}`);
      bad = true;
      return undefined;
    };
    const from = conv('from');
    const to = conv('to');
    return { from, to, bad };
  });
  norm.forEach((r, i) => {
    const spec = specs[i] as RangeSpec;
    if (r.bad) return;
    if (r.from !== undefined && r.to !== undefined && compareRangeValues(r.from, r.to) >= 0) problems.push(`${rangeLabel(i, spec)} is empty: from must be below to`);
    if (i > 0 && r.from === undefined) problems.push(`${rangeLabel(i, spec)} is open below, so it overlaps ${rangeLabel(i - 1, specs[i - 1] as RangeSpec)}; only the first range may omit from`);
    if (i < specs.length - 1 && r.to === undefined) problems.push(`${rangeLabel(i, spec)} is open above, so it overlaps ${rangeLabel(i + 1, specs[i + 1] as RangeSpec)}; only the last range may omit to`);
  });
  for (let i = 1; i < specs.length; i++) {
    const prev = norm[i - 1] as (typeof norm)[number];
    const cur = norm[i] as (typeof norm)[number];
    if (prev.bad || cur.bad || prev.to === undefined || cur.from === undefined) continue;
    const c = compareRangeValues(cur.from, prev.to);
    const a = rangeLabel(i - 1, specs[i - 1] as RangeSpec);
    const b = rangeLabel(i, specs[i] as RangeSpec);
    if (c < 0) problems.push(`${a} and ${b} overlap: ranges must be listed in ascending order, each starting where the previous one ends`);
    if (c > 0) problems.push(`${a} and ${b} leave a gap: keys from ${show(prev.to)} up to ${show(cur.from)} belong to no shard`);
  }
  return problems;
}

/** Normalises validated ranges for {@link findRange}. Call {@link rangeProblems} first. */
export function compileRanges(keyType: RangeKeyType, specs: readonly RangeSpec[]): CompiledRange[] {
  return specs.map((spec, i) => {
    const bound = (v: number | string | undefined): number | string | undefined => {
      if (v === undefined) return undefined;
      const r = normaliseRangeValue(keyType, v);
      if (!r.ok) throw new RangeError(`${rangeLabel(i, spec)}: ${r.why}`);
      return r.value;
    };
    return { shardId: spec.shard_id, from: bound(spec.from), to: bound(spec.to), label: rangeLabel(i, spec) };
  });
}

/** Binary search for the range holding `key` (already normalised); `undefined` when no range does. */
export function findRange(ranges: readonly CompiledRange[], key: number | string): CompiledRange | undefined {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const r = ranges[mid] as CompiledRange;
    if (r.from !== undefined && compareRangeValues(key, r.from) < 0) hi = mid - 1;
    else if (r.to !== undefined && compareRangeValues(key, r.to) >= 0) lo = mid + 1;
    else return r;
  }
  return undefined;
}
