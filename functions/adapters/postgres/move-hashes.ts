/**
 * Row hashes of a move's unit as the mover compares them (see `PgMovePort.preVerify`): one
 * string per table and side, the rows in id order, each a fixed-width record of the row id
 * (36 characters) and its 64-bit `hash_record_extended` (16 hex digits, two's complement), as
 * the database builds it with `string_agg(... order by id)`.
 *
 * Why not a row per row, or a `Map`: for a 100,000-row unit the driver's parsing of one row
 * object per row, and then a map of 100,000 entries a side, took the mover's event loop for
 * over a second at load 8 (and a map build alone 0.7-1.4 s at load 14), and with it the catch-up
 * running alongside the comparison: the catch-up lag peaked there. Sorted records are compared
 * by walking both strings, whole blocks at a time where they are equal, and looked up by
 * binary search.
 *
 * @example
 * ```ts
 * const a = new HashRun('0f6f4a3e-...-...' + '00000000000000ff');
 * a.get('0f6f4a3e-...-...'); // '00000000000000ff'
 * differingIds(a, b);          // ids whose row differs, or is on one side only
 * ```
 */

/** Characters of a row id (a UUID in its canonical text form). */
const ID = 36;
/** Characters of one record: the id and 16 hex digits of the hash. */
export const HASH_RECORD = ID + 16;
/** Records compared at once where both sides are equal. */
const BLOCK = 256;

/** The SQL expression that builds a run from rows `id` (uuid) and `h` (bigint). */
export const HASH_RUN_SQL = `coalesce(string_agg(id::text || lpad(to_hex(h), 16, '0'), '' order by id), '')`;

/** One table's row hashes on one side, in id order. */
export class HashRun {
  readonly size: number;

  constructor(readonly text: string) {
    if (text.length % HASH_RECORD !== 0) throw new Error(`a hash run is made of ${HASH_RECORD}-character records; got ${text.length} characters`);
    this.size = text.length / HASH_RECORD;
  }

  /** The id of record `i`. */
  idAt(i: number): string {
    return this.text.slice(i * HASH_RECORD, i * HASH_RECORD + ID);
  }

  /** The hash (16 hex digits) of record `i`. */
  hashAt(i: number): string {
    return this.text.slice(i * HASH_RECORD + ID, (i + 1) * HASH_RECORD);
  }

  /** The hash of row `id`, or undefined when the row is not in this run. */
  get(id: string): string | undefined {
    let lo = 0;
    let hi = this.size - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const here = this.idAt(mid);
      if (here === id) return this.hashAt(mid);
      if (here < id) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** Every hash, in id order. */
  *hashes(): IterableIterator<string> {
    for (let i = 0; i < this.size; i++) yield this.hashAt(i);
  }
}

/** The signed 64-bit value of a hash as a run holds it (two's complement hex). */
export function hashValue(hex: string): bigint {
  return BigInt.asIntN(64, BigInt(`0x${hex}`));
}

/**
 * Ids whose row differs between the two runs, or is in one only, in id order. Lowercase
 * canonical UUIDs sort as text in the order PostgreSQL sorts the uuid values, so both runs are
 * walked once, side by side.
 */
export function differingIds(a: HashRun, b: HashRun): string[] {
  if (a.text === b.text) return [];
  const out: string[] = [];
  let i = 0;
  let j = 0;
  const at = (run: HashRun, k: number, n = 1): string => run.text.slice(k * HASH_RECORD, (k + n) * HASH_RECORD);
  // Records left to compare one by one after a block that differed (comparing ever-shorter
  // blocks from there would cost the square of the block for each difference).
  let single = 0;
  while (i < a.size && j < b.size) {
    const n = Math.min(BLOCK, a.size - i, b.size - j);
    if (single === 0 && n > 1) {
      if (at(a, i, n) === at(b, j, n)) {
        i += n;
        j += n;
        continue;
      }
      single = n;
    }
    if (single > 0) single -= 1;
    if (at(a, i) === at(b, j)) {
      i += 1;
      j += 1;
      continue;
    }
    const x = a.idAt(i);
    const y = b.idAt(j);
    if (x === y) {
      out.push(x);
      i += 1;
      j += 1;
    } else if (x < y) {
      out.push(x);
      i += 1;
    } else {
      out.push(y);
      j += 1;
    }
  }
  for (; i < a.size; i++) out.push(a.idAt(i));
  for (; j < b.size; j++) out.push(b.idAt(j));
  return out;
}
