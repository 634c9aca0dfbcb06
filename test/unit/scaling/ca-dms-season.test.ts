import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Season } from '../../../functions/core/scaling/policies/ca-dms-season.js';
import { EMPTY_SEASON, forecast, lagErrors, LAGS, NONE, observe, period, readSeason, RING_MINUTES, UNMEASURED } from '../../../functions/core/scaling/policies/ca-dms-season.js';
import { mulberry32 } from '../../../functions/core/scaling/simulator/prng.js';

const MIN = 60_000;
const T0 = Date.UTC(2026, 0, 5);

/** Rectangular spikes: `base`, and `base + height` for `width` minutes at the start of every `every` minutes (from the second period on). */
function spikes(base: number, height: number, every: number, width: number): (m: number) => number {
  return (m) => (m >= every && m % every < width ? base + height : base);
}

function feed(minutes: number, value: (m: number) => number, from: Season = EMPTY_SEASON, start = 0): Season {
  let s = from;
  for (let m = start; m < start + minutes; m++) s = observe(s, value(m), T0 + m * MIN);
  return s;
}

describe('ca-dms seasonal forecaster', () => {
  it('finds the period of hourly spikes and foresees the next one from the minutes before it', () => {
    const load = spikes(2, 5, 60, 10);
    // up to 3 minutes before the fifth spike (minute 300)
    const s = feed(297, load);
    expect(period(s, 3)).toBe(60);
    // the newest slot is minute 296: 3 minutes ahead is minute 299, whose phase window one period ago reaches minute 241 (a spike)
    expect(forecast(s, 3)).toBeCloseTo(7, 5);
    // in the middle of the flat stretch nothing is expected beyond the base
    expect(forecast(feed(30, load, s, 297), 3)).toBeCloseTo(2, 5);
  });

  it('follows a level change since the last period', () => {
    const load = spikes(2, 5, 60, 10);
    const s = feed(297, (m) => load(m) + (m >= 250 ? 1 : 0));
    // the spike one period ago was 7; the level has risen by 1 since
    expect(forecast(s, 3)).toBeCloseTo(8, 5);
  });

  it('property: a recurring spike of any period it can hold is foreseen in full once it has recurred a few times', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 15, max: 120 }),
        fc.integer({ min: 3, max: 12 }),
        fc.double({ min: 0.5, max: 5, noNaN: true }),
        fc.double({ min: 1, max: 8, noNaN: true }),
        (every, width, base, height) => {
          fc.pre(width < every - 5);
          const load = spikes(base, height, every, width);
          const spikeAt = every * Math.max(6, Math.ceil(600 / every));
          const s = feed(spikeAt - 2, load);
          // the newest slot is spikeAt - 3: three minutes ahead is the spike's first minute
          expect(forecast(s, 3)).toBeGreaterThanOrEqual(base + height - 1e-3);
        },
      ),
      { numRuns: 40, verbose: true },
    );
  });

  it('keeps a bounded JSON state that survives the round trip through the catalog', () => {
    const random = mulberry32(3);
    // two minutes without a measurement at the end
    const s = observe(feed(5000, () => 10 * random()), 4, T0 + 5002 * MIN);
    expect(s.ringMilli.length).toBe(RING_MINUTES);
    expect(s.lagDeltas.length).toBe(LAGS.length);
    const json = JSON.stringify(s);
    // demand in whole thousandths, differences as changes from the previous lag's: about 2.4 KB here (2.9 KB with three decimals)
    expect(json.length).toBeLessThan(2500);
    // numbers only (an absent value is NONE or UNMEASURED, not null), so the engine keeps the lists unboxed
    expect(json).not.toContain('null');
    const back = readSeason(JSON.parse(json));
    expect(forecast(back, 3)).toBe(forecast(s, 3));
    expect(observe(back, 4, T0 + 5003 * MIN)).toEqual(observe(s, 4, T0 + 5003 * MIN));
  });

  it('starts afresh from a malformed state rather than failing', () => {
    for (const raw of [null, 3, 'x', {}, { end: 1.5, seen: 1, ring: [], errors: [] }, { end: 1, seen: 1, ringMilli: new Array(RING_MINUTES + 1).fill(1), lagDeltas: LAGS.map(() => 0) }]) {
      expect(readSeason(raw)).toEqual(EMPTY_SEASON);
    }
    const s = readSeason({ end: 10, seen: 3, ringMilli: [1, 'x', -2, null, NONE, Infinity, 1.5], lagDeltas: LAGS.map(() => 'bad') });
    expect(s.ringMilli).toEqual([1, NONE, NONE, NONE, NONE, NONE, NONE]);
    expect(s.lagDeltas.every((e) => e === UNMEASURED)).toBe(true);
    // changes that add up to a negative difference are not a state this module wrote: the differences start afresh
    const negative = readSeason({ end: 10, seen: 3, ringMilli: [1], lagDeltas: LAGS.map((_, i) => (i === 0 ? 2 : i === 1 ? -3 : UNMEASURED)) });
    expect(negative.ringMilli).toEqual([1]);
    expect(negative.lagDeltas).toEqual(EMPTY_SEASON.lagDeltas);
    expect(lagErrors(readSeason({ end: 10, seen: 3, ringMilli: [1], lagDeltas: LAGS.map((_, i) => (i === 0 ? 2 : i === 2 ? -2 : UNMEASURED)) })).slice(0, 3)).toEqual([2e-4, undefined, 0]);
    // a state from before the differences were whole units starts afresh
    expect(readSeason({ end: 10, seen: 3, ring: [1.5], errors: LAGS.map(() => 0.5) })).toEqual(EMPTY_SEASON);
    // a stored state with an empty ring takes a second observation in its newest minute
    expect(observe(readSeason({ end: 10, seen: 1, ringMilli: [], lagDeltas: LAGS.map(() => UNMEASURED) }), 2, 10 * MIN).ringMilli).toEqual([2000]);
  });

  it('leaves minutes without a measurement empty, keeps the larger of two in one minute and ignores an older one', () => {
    let s = observe(EMPTY_SEASON, 1, T0);
    s = observe(s, 3, T0 + 3 * MIN);
    expect(s.ringMilli).toEqual([1000, NONE, NONE, 3000]);
    s = observe(s, 2, T0 + 3 * MIN + 30_000);
    expect(s.ringMilli).toEqual([1000, NONE, NONE, 3000]);
    expect(observe(s, 9, T0 + MIN)).toBe(s);
    // a gap longer than the ring restarts it
    s = observe(s, 5, T0 + (RING_MINUTES + 10) * MIN);
    expect(s.ringMilli).toEqual([5000]);
  });

  it('forecasts nothing before the load has recurred, nor on load that does not recur', () => {
    const load = spikes(2, 5, 60, 10);
    // the second spike (minute 120) has not been seen yet
    expect(forecast(feed(120, load), 3)).toBeUndefined();
    expect(forecast(feed(240, load), 3)).toBeDefined();
    const random = mulberry32(5);
    const noise = feed(2000, () => 3 + random());
    expect(period(noise, 3)).toBeUndefined();
    // a trend: every lag is beaten by the shorter ones
    expect(period(feed(2000, (m) => m / 100), 3)).toBeUndefined();
  });

  /** The tracked difference at `lag`, in busy task-units. */
  function lagError(s: Season, lag: number): number {
    return lagErrors(s)[LAGS.indexOf(lag)] as number;
  }

  it('property: on a perfectly periodic load the difference at its period decays towards 0 after any start', () => {
    fc.assert(
      fc.property(fc.integer({ min: 20, max: 120 }), fc.integer({ min: 1, max: 1000 }), (every, seed) => {
        const random = mulberry32(seed);
        const load = spikes(0.5, 0.5, every, 5);
        // noise for the first 300 minutes gives the lag a large difference to start from
        const s = feed(300 + 12 * 360, (m) => (m < 300 ? 2 * random() : load(m)));
        // about 12 time constants: what is left of the start is far below a thousandth
        expect(lagError(s, every)).toBeLessThan(0.001);
      }),
      { numRuns: 10, verbose: true },
    );
  });

  it('follows a lag whose mean difference falls, however small it is', () => {
    // a blip of 0.01 every 10 minutes, then every 20: at lag 11 the mean difference goes from 0.002 to 0.001
    const blips = (m: number, every: number): number => (m % every === 0 ? 1.01 : 1);
    const s = feed(3000, (m) => blips(m, 10));
    expect(lagError(s, 11)).toBeCloseTo(0.002, 3);
    let after = s;
    let sum = 0;
    for (let m = 3000; m < 9000; m++) {
      after = observe(after, blips(m, 20), T0 + m * MIN);
      if (m >= 6000) sum += lagError(after, 11);
    }
    // rounded to the nearest unit each step, it would have stayed at 0.002 (each step is under half a unit)
    expect(sum / 3000).toBeGreaterThan(0.0008);
    expect(sum / 3000).toBeLessThan(0.0012);
  });
});
