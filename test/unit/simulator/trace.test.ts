import { describe, expect, it } from 'vitest';
import { parseTimestamp, parseTraceCsv, percentile, rescaleToP99, resampleToTicks, TraceError } from '../../../functions/core/scaling/simulator/trace.js';

const T0 = Date.UTC(2014, 6, 1);

describe('parseTraceCsv', () => {
  it('reads ISO-8601 rows after a header and skips blank lines', () => {
    const points = parseTraceCsv('timestamp,value\n2014-07-01T00:00:00Z,10\n\n2014-07-01T00:30:00Z,8.5\n');
    expect(points).toEqual([
      { at: T0, value: 10 },
      { at: T0 + 30 * 60_000, value: 8.5 },
    ]);
  });

  it('reads epoch seconds and epoch milliseconds', () => {
    const points = parseTraceCsv(`${T0 / 1000},1\n${T0 + 60_000},2\n`);
    expect(points.map((p) => p.at)).toEqual([T0, T0 + 60_000]);
  });

  it('treats an ISO timestamp without a zone as UTC', () => {
    expect(parseTimestamp('2014-07-01 00:00:00')).toBe(T0);
  });

  it('names the line of a non-numeric value', () => {
    expect(() => parseTraceCsv('timestamp,value\n2014-07-01T00:00:00Z,1\n2014-07-01T00:01:00Z,abc\n')).toThrow(
      /line 3: value "abc" is not a number/,
    );
  });

  it('names the line of an unparsable timestamp', () => {
    expect(() => parseTraceCsv('timestamp,value\n2014-07-01T00:00:00Z,1\nyesterday,2\n')).toThrow(/line 3: unparsable timestamp "yesterday"/);
  });

  it('rejects timestamps out of order, naming both lines', () => {
    expect(() => parseTraceCsv('2014-07-01T00:05:00Z,1\n2014-07-01T00:01:00Z,2\n')).toThrow(/line 2: .*previous row's \(line 1\)/);
  });

  it('rejects a repeated timestamp, naming its line and the earlier one', () => {
    expect(() => parseTraceCsv('t,v\n2014-07-01T00:05:00Z,1\n2014-07-01T00:05:00Z,2\n')).toThrow(/line 3: timestamp 2014-07-01T00:05:00Z is not after the previous row's \(line 2\)/);
  });

  it('rejects a trace with a single data row, naming its line', () => {
    expect(() => parseTraceCsv('timestamp,value\n\n2014-07-01T00:05:00Z,1\n')).toThrow(/line 3: the only data row; a trace needs at least two rows/);
  });

  it('rejects a row with the wrong number of fields', () => {
    expect(() => parseTraceCsv('2014-07-01T00:05:00Z,1,2\n')).toThrow(/line 1: expected 2 fields/);
  });

  it('rejects a negative value', () => {
    expect(() => parseTraceCsv('2014-07-01T00:05:00Z,-1\n')).toThrow(/line 1: value -1 is negative/);
  });

  it('rejects a trace with only a header', () => {
    expect(() => parseTraceCsv('timestamp,value\n')).toThrow(/no data rows/);
  });

  it('carries the line number on the error', () => {
    try {
      parseTraceCsv('2014-07-01T00:00:00Z,1\n2014-07-01T00:01:00Z,x\n');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(TraceError);
      expect((error as TraceError).line).toBe(2);
    }
  });
});

describe('resampleToTicks', () => {
  it('interpolates linearly between coarser points', () => {
    const ticks = resampleToTicks([{ at: 0, value: 0 }, { at: 180_000, value: 6 }], 60_000);
    expect(Array.from(ticks)).toEqual([0, 2, 4, 6]);
  });

  it('samples down a finer trace at the tick', () => {
    const points = [0, 1, 2, 3, 4].map((v, i) => ({ at: i * 30_000, value: v }));
    expect(Array.from(resampleToTicks(points, 60_000))).toEqual([0, 2, 4]);
  });
});

describe('rescaleToP99', () => {
  it('makes the 99th percentile equal the requested task-units', () => {
    const values = Float64Array.from({ length: 100 }, (_, i) => i + 1);
    const scaled = rescaleToP99(values, 8);
    expect(percentile(scaled, 99)).toBeCloseTo(8, 10);
    expect(scaled[0]).toBeCloseTo(8 / 99, 10);
  });

  it('refuses a series whose 99th percentile is zero', () => {
    expect(() => rescaleToP99(new Float64Array(10), 8)).toThrow(/99th percentile is 0/);
  });
});
