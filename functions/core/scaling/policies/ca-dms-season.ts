/**
 * The recurring-pattern forecaster of `ca-dms`: load that comes back at the same phase of a
 * period (a cron job every hour, a batch every three hours) cannot be foreseen from the last few
 * minutes, but it can be from the last period.
 *
 * It keeps the demand of the last {@link RING_MINUTES} wall-clock minutes and, for every
 * candidate lag ({@link LAGS}: every whole minute from 10 to 240), a tracked mean absolute
 * difference between each minute's demand and the demand one lag earlier. The lag with the
 * smallest tracked difference is the period; nothing about the trace (name, length, sampling
 * step) is read, only the minutes of `now`. The forecast for `lead` minutes ahead is the largest
 * demand within {@link PHASE_WINDOW} minutes of that phase one period ago (a spike's edges may
 * move a minute or two, and a lag on the 5-minute grid is up to 2 minutes off the true period),
 * plus the change of the level since: the mean of the last {@link LEVEL_MINUTES} minutes less
 * the mean of the same minutes one period earlier.
 *
 * Pure functions over a JSON-serialisable state of about 500 whole numbers (under 3 KB as JSON);
 * whether the forecast is any good is for the caller to judge (ca-dms scores it like its other
 * forecasts and uses it only where it has proven better).
 *
 * An absent value is stored as {@link NONE} (-1; every real value is >= 0), not null: a list of
 * numbers only is kept unboxed by the JavaScript engine, where one null among the numbers makes
 * every element a separately allocated number. This runs at every evaluation of every service
 * (and about a million times in one `bench:policies` job on a two-month trace).
 */

/** Minutes of demand kept: the longest lag plus the level window plus margin. */
export const RING_MINUTES = 256;
/** The candidate periods, in minutes. */
export const LAGS: readonly number[] = Array.from({ length: 231 }, (_, i) => 10 + i);
/** Half-width, in minutes, of the phase window whose largest value one period ago is the forecast. */
export const PHASE_WINDOW = 2;
/**
 * A lag is a period only when its tracked difference is at most this share of the mean at the
 * shorter lags: load that recurs is predicted by its period far better than by a lag that
 * falls short of it, while on noise or a trend no lag beats the shorter ones (on a trend the
 * shortest lag is the best one).
 */
export const RECURRENCE_RATIO = 0.6;
/** Minutes averaged on both sides of the level change since one period ago. */
export const LEVEL_MINUTES = 10;
/**
 * Weight of the newest minute in a lag's tracked difference (about six hours); before that
 * many minutes were compared at a lag, the plain mean of those compared.
 */
const LAG_ERROR_WEIGHT = 1 / 360;
/**
 * Tracked differences are kept in whole units of 1 / ERROR_UNITS of a busy task-unit (short
 * in JSON). Each update is rounded to a whole unit stochastically (down or up with the
 * probabilities that make its expected value the exact one), not to the nearest: a step of
 * the tracker is a 360th of the way to the newest difference, and rounded to the nearest it
 * vanishes whenever it is under half a unit, so the difference could rise but never fall
 * below 180 units. At three decimals, as it was, that floor was 0.18 busy task-units: a lag
 * that missed a spike's edge early on kept the mark for good and could win over the true
 * period, and a perfectly periodic load never showed its period as better than that.
 */
const ERROR_UNITS = 10_000;
/** The fractional part of the golden ratio: successive multiples of it spread evenly over [0, 1). */
const GOLDEN = 0.6180339887498949;
/** `seen` stops counting here: past it every lag's difference is tracked with the fixed weight. */
const SEEN_CAP = 10_000;
const MINUTE_MS = 60_000;
/**
 * Demand is kept in whole thousandths of a busy task-unit (a fine enough grain for busy
 * task-units, and one character per minute shorter in JSON than three decimals).
 */
const DEMAND_UNITS = 1000;
/** An absent value in {@link Season.ringMilli}. */
export const NONE = -1;
/** A lag not measured yet in {@link Season.lagDeltas} (every change there is a whole number). */
export const UNMEASURED = 0.5;

/** The forecaster's memory, as stored in the policy state. */
export interface Season {
  /** The wall-clock minute (epoch ms / 60 000, floored) of the newest ring slot; undefined before the first observation. */
  readonly end: number | undefined;
  /** Minutes observed so far (up to {@link SEEN_CAP}): a lag has been compared about `seen - lag` times. */
  readonly seen: number;
  /**
   * Demand per minute in whole thousandths of a busy task-unit, oldest first, ending at `end`;
   * {@link NONE} where no metric measured the load.
   */
  readonly ringMilli: readonly number[];
  /**
   * Per entry of {@link LAGS}: the tracked mean absolute difference at that lag, in whole units
   * of 1 / {@link ERROR_UNITS} busy task-units, as the change from the previous measured lag's
   * (from 0 for the first); {@link UNMEASURED} before the lag was measured. Adjacent lags'
   * differences are close, so a change is a digit or two shorter in JSON than the difference
   * itself, and reading it back is one addition. Read with {@link lagErrors}.
   */
  readonly lagDeltas: readonly number[];
}

/**
 * The tracked mean absolute difference per entry of {@link LAGS}, in busy task-units, or
 * undefined before the lag was measured (for inspection; the forecaster reads them in one pass).
 */
export function lagErrors(season: Season): Array<number | undefined> {
  let abs = 0;
  return season.lagDeltas.map((z) => {
    if (z === UNMEASURED) return undefined;
    abs += z;
    return abs / ERROR_UNITS;
  });
}

/** A forecaster that has seen nothing yet. */
export const EMPTY_SEASON: Season = { end: undefined, seen: 0, ringMilli: [], lagDeltas: LAGS.map(() => UNMEASURED) };

function finite(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/**
 * Reads a stored state, dropping anything malformed (an older or corrupted state starts afresh
 * rather than failing the evaluation).
 *
 * @example
 * ```ts
 * const season = readSeason(JSON.parse(JSON.stringify(observe(EMPTY_SEASON, 2.5, Date.now()))));
 * ```
 */
export function readSeason(raw: unknown): Season {
  if (typeof raw !== 'object' || raw === null) return EMPTY_SEASON;
  const m = raw as Record<string, unknown>;
  const end = m['end'];
  // A state from before the values were whole units (`ring` and `errors`, in busy task-units)
  // or before the differences were stored as changes (`lagErrors`) has neither: it starts afresh.
  const ring = m['ringMilli'];
  const errors = m['lagDeltas'];
  const seen = m['seen'];
  if (!finite(seen) || seen < 0 || !finite(end) || !Number.isInteger(end) || !Array.isArray(ring) || ring.length > RING_MINUTES || !Array.isArray(errors) || errors.length !== LAGS.length) {
    return EMPTY_SEASON;
  }
  return { end, seen: Math.min(seen, SEEN_CAP), ringMilli: clean(ring), lagDeltas: readDeltas(errors) };
}

/**
 * The stored changes when each is a whole number or {@link UNMEASURED} and every difference
 * they add up to is >= 0, as in a state this module wrote (the list itself, no copy);
 * otherwise none measured: one bad change would misplace every difference after it.
 */
function readDeltas(list: readonly unknown[]): readonly number[] {
  let abs = 0;
  for (const z of list) {
    if (z === UNMEASURED) continue;
    if (typeof z !== 'number' || !Number.isSafeInteger(z)) return EMPTY_SEASON.lagDeltas;
    abs += z;
    if (abs < 0) return EMPTY_SEASON.lagDeltas;
  }
  return list as readonly number[];
}

function valid(v: unknown): v is number {
  return typeof v === 'number' && ((v >= 0 && Number.isSafeInteger(v)) || v === NONE);
}

/**
 * The stored list with anything but a non-negative whole number or {@link NONE} as
 * {@link NONE}: the list itself when it is clean, as a state this module wrote is (no copy:
 * this runs every evaluation, and nothing changes a list in place).
 */
function clean(list: readonly unknown[]): number[] {
  let i = 0;
  while (i < list.length && valid(list[i])) i++;
  if (i === list.length) return list as number[];
  const out = new Array<number>(list.length);
  for (let j = 0; j < list.length; j++) {
    const v = list[j];
    out[j] = valid(v) ? v : NONE;
  }
  return out;
}

/**
 * A number in [0, 1) drawn from the minute (a 32-bit integer hash of it): the same minute
 * always draws the same, so a replay makes the same decisions.
 */
function draw(minute: number): number {
  let h = Math.imul(minute ^ (minute >>> 16), 0x45d9f3b);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  return ((h ^ (h >>> 16)) >>> 0) / 2 ** 32;
}

/** The ring value `back` minutes before the newest slot (thousandths), or {@link NONE} when absent. */
function at(ring: readonly number[], back: number): number {
  const i = ring.length - 1 - back;
  return i >= 0 && i < ring.length ? (ring[i] as number) : NONE;
}

/**
 * Records the demand `demand` measured at `now`. Minutes without an observation stay empty;
 * a second observation within the same minute keeps the larger; an observation older than the
 * newest slot is ignored. Each new minute updates every lag's tracked difference.
 *
 * @example
 * ```ts
 * let s = EMPTY_SEASON;
 * for (let m = 0; m < 600; m++) s = observe(s, m % 60 < 10 ? 7 : 2, m * 60_000);
 * forecast(s, 3); // a spike the hour before is a spike ahead
 * ```
 */
export function observe(season: Season, demand: number, now: number): Season {
  const minute = Math.floor(now / MINUTE_MS);
  const value = Math.round(Math.max(0, demand) * DEMAND_UNITS);
  if (season.end !== undefined && minute < season.end) return season;
  if (season.end !== undefined && minute === season.end) {
    const ring = season.ringMilli.slice();
    // NONE (-1) is below every value; a stored state may have an empty ring.
    if (ring.length === 0) ring.push(value);
    else ring[ring.length - 1] = Math.max(ring[ring.length - 1] as number, value);
    return { ...season, ringMilli: ring };
  }
  const gap = season.end === undefined ? 0 : minute - season.end - 1;
  // After a gap longer than the ring nothing in it is recent enough to keep.
  // One copy of the part that stays (this runs every evaluation).
  const ring = gap >= RING_MINUTES ? [] : season.ringMilli.slice(Math.max(0, season.ringMilli.length + gap + 1 - RING_MINUTES));
  if (gap < RING_MINUTES) for (let i = 0; i < gap; i++) ring.push(NONE);
  ring.push(value);
  const seen = Math.min(season.seen + 1, SEEN_CAP);
  const deltas = season.lagDeltas;
  // A copy written over in place: a list made by slice stays packed, where new Array(n) starts with holes.
  const next = deltas.slice();
  const newest = ring.length - 1;
  // One draw per minute, offset by a golden-ratio step per lag: every lag's rounding is
  // uniform over the minutes, and adjacent lags do not round the same way at once.
  let dither = draw(minute);
  // One pass: decode each lag's difference, update it, encode it against the previous one's new value.
  let oldPrevious = 0;
  let newPrevious = 0;
  for (let i = 0; i < LAGS.length; i++) {
    const lag = LAGS[i] as number;
    const z = deltas[i] as number;
    let old = NONE;
    if (z !== UNMEASURED) {
      old = oldPrevious + z;
      oldPrevious = old;
    }
    let updated = old;
    // LAGS ascend: past the first lag longer than the ring, none is in it.
    if (lag <= newest) {
      dither += GOLDEN;
      if (dither >= 1) dither -= 1;
      const before = ring[newest - lag] as number;
      if (before !== NONE) {
        const diff = Math.abs(value - before) * (ERROR_UNITS / DEMAND_UNITS);
        const compared = seen - lag;
        // 1 / compared is below the fixed weight from that many comparisons on: no division then.
        const weight = compared >= 1 / LAG_ERROR_WEIGHT ? LAG_ERROR_WEIGHT : Math.max(LAG_ERROR_WEIGHT, 1 / Math.max(1, compared));
        updated = old === NONE ? diff : Math.floor(old + weight * (diff - old) + dither);
      }
    }
    if (updated === NONE) next[i] = UNMEASURED;
    else {
      next[i] = updated - newPrevious;
      newPrevious = updated;
    }
  }
  return { end: minute, seen, ringMilli: ring, lagDeltas: next };
}

/**
 * The period (minutes): the lag whose tracked difference is smallest among those long enough
 * to forecast `lead` minutes ahead from the ring and compared over at least one whole lag (a
 * lag first compared a moment ago has seen too little to be trusted over one that has seen a
 * recurrence begin), when it beats the shorter lags by {@link RECURRENCE_RATIO}; undefined when
 * the load does not recur (or not yet).
 */
export function period(season: Season, lead: number): number | undefined {
  // One pass, no allocation: this runs every evaluation over every lag.
  let best: number | undefined;
  let bestError = Infinity;
  let shorterSum = 0;
  let shorterCount = 0;
  let sum = 0;
  let count = 0;
  const shortest = lead + PHASE_WINDOW + 1;
  const longest = Math.min(RING_MINUTES - LEVEL_MINUTES, season.seen / 3);
  // LAGS ascend: the loop ends at the first lag too long.
  let e = 0;
  for (let i = 0; i < LAGS.length && (LAGS[i] as number) <= longest; i++) {
    const lag = LAGS[i] as number;
    const z = season.lagDeltas[i] as number;
    if (z === UNMEASURED) continue;
    e += z;
    if (lag < shortest) continue;
    if (e < bestError) {
      best = lag;
      bestError = e;
      shorterSum = sum;
      shorterCount = count;
    }
    sum += e;
    count++;
  }
  if (best === undefined || shorterCount === 0) return undefined;
  return bestError <= (RECURRENCE_RATIO * shorterSum) / shorterCount ? best : undefined;
}

function mean(ring: readonly number[], from: number, count: number): number | undefined {
  let sum = 0;
  let n = 0;
  for (let b = from; b < from + count; b++) {
    const v = at(ring, b);
    if (v !== NONE) {
      // Each value in busy task-units before summing: the same sum, to the last bit, as when the ring held them so.
      sum += v / DEMAND_UNITS;
      n++;
    }
  }
  return n === 0 ? undefined : sum / n;
}

/**
 * The demand expected `lead` minutes after the newest slot: the largest value within
 * {@link PHASE_WINDOW} minutes of that phase one period ago, plus the level change since.
 * Undefined while no period has been measured or the ring has nothing at that phase. `lag`
 * is the period, when the caller has it already.
 *
 * @example
 * ```ts
 * forecast(season, 3); // e.g. 7.2 busy task-units three minutes from now
 * ```
 */
export function forecast(season: Season, lead: number, lag: number | undefined = period(season, lead)): number | undefined {
  if (lag === undefined) return undefined;
  const ring = season.ringMilli;
  // The phase `lead` minutes ahead, one period ago, is `lag - lead` minutes back from the newest slot.
  let phase: number | undefined;
  for (let back = lag - lead - PHASE_WINDOW; back <= lag - lead + PHASE_WINDOW; back++) {
    const v = at(ring, back);
    if (v !== NONE && (phase === undefined || v > phase)) phase = v;
  }
  if (phase === undefined) return undefined;
  const now = mean(ring, 0, LEVEL_MINUTES);
  const then = mean(ring, lag, LEVEL_MINUTES);
  const shift = now !== undefined && then !== undefined ? now - then : 0;
  return Math.max(0, phase / DEMAND_UNITS + shift);
}
