import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { simulationConfig } from '../../../functions/core/scaling/simulator/anchors.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';
import { columnStarts, minMaxColumns, renderTradeoffSvg, reportSeries, tradeoffOf } from '../../../functions/core/scaling/simulator/report.js';
import { CA_DMS_RATES } from '../../../functions/core/scaling/simulator/sweep.js';
import { contestant, prepareTrace, simulate } from '../../../functions/core/scaling/simulator/simulate.js';
import { getPolicy } from '../../../functions/core/scaling/policies/index.js';

describe('downsampling for the report', () => {
  it('keeps the lowest and the highest value of every column, whatever the series and the width', () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: 0, max: 1e6, noNaN: true }), { minLength: 1, maxLength: 400 }), fc.integer({ min: 1, max: 120 }), (values, columns) => {
        const starts = columnStarts(values.length, columns);
        const reduced = minMaxColumns(values, starts);

        expect(starts[0]).toBe(0);
        expect(starts[starts.length - 1]).toBe(values.length);
        expect(reduced.length).toBeLessThanOrEqual(2 * columns);
        expect(Math.max(...reduced)).toBe(Math.max(...values));
        expect(Math.min(...reduced)).toBe(Math.min(...values));
        let at = 0;
        for (let c = 0; c + 1 < starts.length; c++) {
          const slice = values.slice(starts[c], starts[c + 1]);
          const width = slice.length;
          expect(reduced.slice(at, at + (width > 1 ? 2 : 1))).toEqual(width > 1 ? [Math.min(...slice), Math.max(...slice)] : slice);
          at += width > 1 ? 2 : 1;
        }
      }),
      { numRuns: 200, verbose: true },
    );
  });

  it('draws every tick of a short trace as it is', () => {
    expect(minMaxColumns([3, 1, 2], columnStarts(3, 10))).toEqual([3, 1, 2]);
  });
});

describe('the report series', () => {
  // Two days of minutes with a spike: far more ticks than columns.
  const points = Array.from({ length: 2 * 1440 }, (_, i) => ({ at: Date.UTC(2026, 0, 5) + i * 60_000, value: 20 + 10 * Math.sin(i / 90) + (i === 1500 ? 400 : 0) }));
  const trace = prepareTrace('two days', points, DEFAULT_MODEL);
  const run = simulate(trace, [contestant('hpa', getPolicy('hpa'), simulationConfig('hpa', DEFAULT_MODEL))], DEFAULT_MODEL);

  it('keeps the spike, shares one time axis, and counts every violation minute once', () => {
    const series = reportSeries(run, ['hpa', 'oracle'], 300);
    const hpa = series.rows[0];

    expect(series.x.length).toBe(600);
    expect(series.demand.length).toBe(600);
    expect(Math.max(...series.demand)).toBeCloseTo(Math.max(...trace.demand), 2);
    expect(series.x[0]).toBe(Date.UTC(2026, 0, 5) / 1000);
    expect(series.ticksPerColumn).toBe(10);
    expect(hpa?.violations.reduce((a, b) => a + b, 0)).toBe(run.result.results[0]?.sloViolationMinutes);
    expect(series.rows.map((r) => r.name)).toEqual(['hpa', 'oracle']);
  });
});

describe('the trade-off data', () => {
  it('draws ca-dms as a line over its target violation rate, beside the six anchor sweeps', () => {
    const points = Array.from({ length: 1440 }, (_, i) => ({ at: Date.UTC(2026, 0, 5) + i * 60_000, value: 20 + 10 * Math.sin(i / 90) }));
    const trace = prepareTrace('one day', points, DEFAULT_MODEL);
    const run = simulate(trace, [contestant('ca-dms', getPolicy('ca-dms'), simulationConfig('ca-dms', DEFAULT_MODEL))], DEFAULT_MODEL);

    const tradeoff = tradeoffOf(run.result, trace, DEFAULT_MODEL);
    const line = tradeoff.curves.find((c) => c.name === 'ca-dms');

    expect(tradeoff.curves.map((c) => c.name)).toEqual(['hpa', 'target-tracking', 'step', 'threshold', 'hpa connections', 'target-tracking connections', 'ca-dms']);
    expect(line?.points.map((p) => p.label)).toEqual(CA_DMS_RATES.map((r) => `ca-dms:ca_dms.target_violation_rate=${r}`));
    // The default rate is on the line: the point the run itself scored.
    const atDefault = line?.points.find((p) => p.label.endsWith('=0.1'));
    expect(atDefault?.taskMinutes).toBe(run.result.results[0]?.taskMinutes);
  });
});

describe('the trade-off chart', () => {
  const svg = renderTradeoffSvg({
    trace: 'a<b',
    curves: [
      { name: 'hpa', points: [{ label: 'hpa:targets.cpu=30', taskMinutes: 900, sloViolationMinutes: 10 }, { label: 'hpa:targets.cpu=90', taskMinutes: 500, sloViolationMinutes: 300 }] },
      { name: 'step', points: [{ label: 's1', taskMinutes: 800, sloViolationMinutes: 40 }, { label: 's2', taskMinutes: 550, sloViolationMinutes: 200 }] },
    ],
    oracle: { label: 'oracle', taskMinutes: 450, sloViolationMinutes: 5 },
    points: [{ label: 'ca-dms', taskMinutes: 600, sloViolationMinutes: 60 }],
  });

  it('labels both axes with their units and draws a line per curve, the oracle and each point', () => {
    expect(svg).toMatch(/class="axis-label x">task-minutes/);
    expect(svg).toMatch(/class="axis-label y">SLO-violation minutes/);
    expect(svg.match(/<g class="curve"/g)).toHaveLength(2);
    expect(svg).toContain('<g class="oracle">');
    expect(svg).toContain('<g class="point" data-name="ca-dms">');
    expect(svg).toContain('<title>hpa:targets.cpu=30: 900 task-minutes, 10 SLO-violation minutes</title>');
    expect(svg).toContain('Trade-off on a&lt;b');
  });

  it('puts cheaper settings further left and fewer violations lower', () => {
    const circle = (label: string) => {
      const m = new RegExp(`<circle cx="([\\d.]+)" cy="([\\d.]+)"[^>]*><title>${label}:`).exec(svg);
      return { x: Number(m?.[1]), y: Number(m?.[2]) };
    };
    const cheap = circle('hpa:targets.cpu=90');
    const dear = circle('hpa:targets.cpu=30');

    expect(cheap.x).toBeLessThan(dear.x);
    expect(dear.y).toBeGreaterThan(cheap.y);
  });
});
