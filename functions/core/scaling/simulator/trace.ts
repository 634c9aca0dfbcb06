/**
 * Workload traces: parsing the `timestamp,value` CSV format of `../shared/traces/`, resampling
 * a series to the simulator's tick by linear interpolation, and rescaling it to task-units.
 * Pure: the caller reads the file.
 */

/** One observation of a trace. */
export interface TracePoint {
  /** Epoch milliseconds. */
  readonly at: number;
  readonly value: number;
}

/** A trace that cannot be used; `line` is the 1-based line of the offending row when known. */
export class TraceError extends Error {
  override readonly name = 'TraceError';
  constructor(
    message: string,
    readonly line?: number,
    options?: { cause?: unknown },
  ) {
    super(line === undefined ? message : `line ${line}: ${message}`, options);
  }
}

const ISO_TIMESTAMP = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$/;
const HAS_ZONE = /(?:Z|[+-]\d{2}:?\d{2})$/;
const EPOCH = /^\d+(?:\.\d+)?$/;
const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
/** Epoch values below this are seconds (it is year 5138 in seconds, 1973 in milliseconds). */
const EPOCH_SECONDS_LIMIT = 1e11;

/**
 * Parses a timestamp: ISO-8601 (a missing zone means UTC), or epoch seconds / milliseconds.
 * Returns epoch milliseconds, or `undefined` when the text is not a timestamp.
 *
 * @example
 * ```ts
 * parseTimestamp('2014-07-01T00:30:00Z'); // 1404174600000
 * parseTimestamp('1404174600'); // 1404174600000 (epoch seconds)
 * ```
 */
export function parseTimestamp(text: string): number | undefined {
  if (EPOCH.test(text)) {
    const n = Number(text);
    return n < EPOCH_SECONDS_LIMIT ? Math.round(n * 1000) : Math.round(n);
  }
  if (!ISO_TIMESTAMP.test(text)) return undefined;
  const normalised = text.replace(' ', 'T');
  const withZone = HAS_ZONE.test(normalised) || normalised.length === 10 ? normalised : `${normalised}Z`;
  const ms = Date.parse(withZone);
  return Number.isFinite(ms) ? ms : undefined;
}

/**
 * Parses a `timestamp,value` CSV (an optional header row, blank lines ignored). Timestamps must
 * strictly increase; values must be finite and non-negative; at least two data rows.
 *
 * @throws {TraceError} naming the line of the first bad row, or when there are fewer than two data rows.
 * @example
 * ```ts
 * parseTraceCsv('timestamp,value\n2014-07-01T00:00:00Z,10844\n2014-07-01T00:30:00Z,8127\n');
 * // [{ at: 1404172800000, value: 10844 }, { at: 1404174600000, value: 8127 }]
 * ```
 */
export function parseTraceCsv(text: string): TracePoint[] {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const points: TracePoint[] = [];
  let previousLine = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = (lines[i] ?? '').trim();
    if (raw === '') continue;
    const lineNo = i + 1;
    const fields = raw.split(',').map((f) => f.trim());
    if (points.length === 0 && previousLine === 0 && isHeader(fields)) {
      previousLine = -1;
      continue;
    }
    if (fields.length !== 2) {
      throw new TraceError(`expected 2 fields "timestamp,value", found ${fields.length}: "${raw}"`, lineNo);
    }
    const [ts, val] = fields as [string, string];
    const at = parseTimestamp(ts);
    if (at === undefined) {
      throw new TraceError(`unparsable timestamp "${ts}" (expected ISO-8601 such as 2014-07-01T00:30:00Z, or epoch seconds/milliseconds)`, lineNo);
    }
    if (!NUMBER.test(val)) throw new TraceError(`value "${val}" is not a number`, lineNo);
    const value = Number(val);
    if (!Number.isFinite(value)) throw new TraceError(`value "${val}" is not a finite number`, lineNo);
    if (value < 0) throw new TraceError(`value ${val} is negative; a workload cannot be`, lineNo);
    const last = points[points.length - 1];
    if (last !== undefined && at <= last.at) {
      throw new TraceError(
        `timestamp ${ts} is not after the previous row's (line ${previousLine}): timestamps must strictly increase`,
        lineNo,
      );
    }
    points.push({ at, value });
    previousLine = lineNo;
  }
  if (points.length === 0) throw new TraceError('the trace has no data rows');
  // One row has no duration: nothing to resample or replay.
  if (points.length === 1) throw new TraceError('the only data row; a trace needs at least two rows to replay', previousLine);
  return points;
}

/** A first row whose fields are not a timestamp and a number is a header. */
function isHeader(fields: readonly string[]): boolean {
  const [ts, val] = fields;
  return ts !== undefined && parseTimestamp(ts) === undefined && (val === undefined || !NUMBER.test(val));
}

/**
 * Linearly interpolates a trace at every tick from its first timestamp to its last.
 *
 * @example
 * ```ts
 * resampleToTicks([{ at: 0, value: 0 }, { at: 120_000, value: 6 }], 60_000); // [0, 3, 6]
 * ```
 */
export function resampleToTicks(points: readonly TracePoint[], tickMs: number): Float64Array {
  const first = points[0];
  const last = points[points.length - 1];
  if (first === undefined || last === undefined) throw new TraceError('the trace has no data rows');
  const ticks = Math.floor((last.at - first.at) / tickMs) + 1;
  const out = new Float64Array(ticks);
  let j = 0;
  for (let k = 0; k < ticks; k++) {
    const t = first.at + k * tickMs;
    while (j + 1 < points.length && (points[j + 1] as TracePoint).at <= t) j++;
    const a = points[j] as TracePoint;
    const b = points[j + 1];
    out[k] = b === undefined || a.at === t ? a.value : a.value + ((b.value - a.value) * (t - a.at)) / (b.at - a.at);
  }
  return out;
}

/**
 * The nearest-rank percentile (0 < p <= 100) of a series.
 *
 * @example
 * ```ts
 * percentile([5, 1, 3, 2, 4], 50); // 3
 * ```
 */
export function percentile(values: ArrayLike<number>, p: number): number {
  const sorted = Float64Array.from(values).sort();
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1] ?? 0;
}

/**
 * Rescales a series so that its 99th percentile equals `p99` (task-units): the shape of a
 * series matters, its units do not.
 *
 * @throws {TraceError} when the series' 99th percentile is zero (nothing to scale).
 * @example
 * ```ts
 * const demand = rescaleToP99(resampleToTicks(points, 60_000), 8); // task-units
 * ```
 */
export function rescaleToP99(values: Float64Array, p99: number): Float64Array {
  const current = percentile(values, 99);
  if (current <= 0) throw new TraceError('the trace\'s 99th percentile is 0, so it cannot be rescaled to task-units');
  const factor = p99 / current;
  return values.map((v) => v * factor);
}
