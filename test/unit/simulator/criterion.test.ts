import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AnchorCurve } from '../../../functions/core/scaling/simulator/criterion.js';
import {
  combineJudgement,
  curveAt,
  curveCost,
  envelopeAt,
  envelopeCost,
  judgeFrontier,
} from '../../../functions/core/scaling/simulator/criterion.js';
import { getPolicy } from '../../../functions/core/scaling/policies/index.js';
import { thresholdPolicy } from '../../../functions/core/scaling/policies/threshold.js';
import { contestantsFor, simulationConfig } from '../../../functions/core/scaling/simulator/anchors.js';
import { metricsFor } from '../../../functions/core/scaling/simulator/fleet.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';
import { prepareTrace, simulate } from '../../../functions/core/scaling/simulator/simulate.js';
import { ANCHOR_SETTINGS, ANCHOR_SWEEPS, runAnchors } from '../../../functions/core/scaling/simulator/sweep.js';
import { syntheticTrace } from '../../../functions/core/scaling/simulator/synthetic.js';
import { applyVariant, parseVariant } from '../../../functions/core/scaling/simulator/variant.js';
import { initialState } from '../../../functions/core/scaling/types.js';

const p = (knob: number, sloViolationMinutes: number, taskMinutes: number) => ({ knob, sloViolationMinutes, taskMinutes });
const pt = (sloViolationMinutes: number, taskMinutes: number) => ({ sloViolationMinutes, taskMinutes });

/** A curve from 100 task-minutes at 200 violation minutes down to 20 at 300 task-minutes. */
const falling: AnchorCurve = { anchor: 'a', points: [p(90, 200, 100), p(60, 100, 200), p(30, 20, 300)] };

describe('curveAt', () => {
  it('interpolates linearly between adjacent settings', () => {
    expect(curveAt(falling.points, 150)).toBe(150);
    expect(curveAt(falling.points, 250)).toBe(60);
    expect(curveAt(falling.points, 200)).toBe(100);
  });

  it('counts a setting that costs less at every higher cost', () => {
    expect(curveAt(falling.points, 1000)).toBe(20);
  });

  it('is infinite below the cheapest setting', () => {
    expect(curveAt(falling.points, 99)).toBe(Infinity);
  });

  it('joins settings in knob order, not in cost order', () => {
    // knobs 1 and 3 bracket cost 150, knob 2 is costlier: the segment 1-2 spans 150 too.
    const curve = [p(1, 100, 100), p(2, 0, 300), p(3, 50, 200)];
    // segment 1-2 at 150: 100 - 100 * 50 / 200 = 75; segment 2-3 does not reach 150.
    expect(curveAt(curve, 150)).toBe(75);
  });

  it('never rises as cost rises (any cheaper setting counts)', () => {
    const arb = fc.array(fc.record({ v: fc.integer({ min: 0, max: 1000 }), c: fc.integer({ min: 1, max: 1000 }) }), { minLength: 1, maxLength: 8 });
    fc.assert(
      fc.property(arb, fc.integer({ min: 0, max: 1100 }), fc.integer({ min: 0, max: 200 }), (raw, c, dc) => {
        const curve = raw.map((r, i) => p(i, r.v, r.c));
        expect(curveAt(curve, c + dc)).toBeLessThanOrEqual(curveAt(curve, c));
      }),
    );
  });
});

describe('curveCost', () => {
  it('is the inverse of curveAt on a falling curve', () => {
    expect(curveCost(falling.points, 150)).toBe(150);
    expect(curveCost(falling.points, 60)).toBe(250);
    expect(curveCost(falling.points, 200)).toBe(100);
    expect(curveCost(falling.points, 500)).toBe(100);
  });

  it('is infinite when no setting gets that low', () => {
    expect(curveCost(falling.points, 19)).toBe(Infinity);
  });

  it('agrees with curveAt: the curve at C(v) is at most v', () => {
    const arb = fc.array(fc.record({ v: fc.integer({ min: 0, max: 1000 }), c: fc.integer({ min: 1, max: 1000 }) }), { minLength: 1, maxLength: 8 });
    fc.assert(
      fc.property(arb, fc.integer({ min: 0, max: 1000 }), (raw, v) => {
        const curve = raw.map((r, i) => p(i, r.v, r.c));
        const c = curveCost(curve, v);
        if (c === Infinity) expect(Math.min(...curve.map((q) => q.sloViolationMinutes))).toBeGreaterThan(v);
        else {
          expect(curveAt(curve, c)).toBeLessThanOrEqual(v + 1e-9);
          // and nothing cheaper reaches v
          expect(curveAt(curve, c - 1e-6)).toBeGreaterThan(v - 1e-6);
        }
      }),
    );
  });
});

describe('the envelope', () => {
  const other: AnchorCurve = { anchor: 'b', points: [p(1, 300, 50), p(2, 10, 400)] };
  it('is the lowest curve at each cost', () => {
    // other at 150: 300 - 290 * 100 / 350 = 217.1; falling: 150
    expect(envelopeAt([falling, other], 150)).toBe(150);
    // only other reaches 75 task-minutes: 300 - 290 * 25 / 350
    expect(envelopeAt([falling, other], 75)).toBeCloseTo(300 - (290 * 25) / 350, 9);
    expect(envelopeAt([falling, other], 400)).toBe(10);
  });

  it('C(v) is the cheapest of the curves', () => {
    expect(envelopeCost([falling, other], 150)).toBe(150);
    expect(envelopeCost([falling, other], 15)).toBeCloseTo(50 + (350 * 285) / 290, 9);
  });
});

describe('judgeFrontier', () => {
  // F = 10; E(200) = 100, so the avoidable minutes at 200 task-minutes are 90. Beyond 200
  // task-minutes the curve falls steeply, so the cost clause cannot win there.
  const slow: AnchorCurve = { anchor: 's', points: [p(90, 200, 100), p(60, 100, 200), p(30, 0, 205)] };
  it('wins on violations at 70 % of the avoidable minutes, not above', () => {
    const win = judgeFrontier(pt(10 + 63, 200), 10, [slow]);
    expect(win.outcome).toBe('win');
    expect(win.clause).toBe('violations');
    expect(win.violationRatio).toBeCloseTo(0.7, 9);
    const tie = judgeFrontier(pt(10 + 64, 200), 10, [slow]);
    expect(tie.outcome).toBe('tie');
  });

  it('wins on cost at 90 % of the envelope cost for the same violations, not above', () => {
    // v0 = 100: C(100) = 200; 180 task-minutes is 90 %. E(180) = 120, avoidable 110: 90 / 110 = 0.82 > 0.7.
    const win = judgeFrontier(pt(100, 180), 10, [falling]);
    expect(win.outcome).toBe('win');
    expect(win.clause).toBe('cost');
    expect(win.costRatio).toBeCloseTo(0.9, 9);
    expect(judgeFrontier(pt(100, 181), 10, [falling]).outcome).toBe('tie');
  });

  it('loses above the envelope', () => {
    const v = judgeFrontier(pt(160, 150), 10, [falling]);
    expect(v.outcome).toBe('lose');
    expect(v.violationRatio).toBeCloseTo(150 / 140, 9);
    expect(v.costRatio).toBeCloseTo(150 / 140, 9);
  });

  it('ties exactly on the envelope', () => {
    expect(judgeFrontier(pt(150, 150), 10, [falling]).outcome).toBe('tie');
  });

  it('lets only the cost clause win where the envelope is within 5 minutes of the oracle', () => {
    // E(300) = 20 and F = 16: 4 avoidable minutes. v0 = 17 meets the violation clause on
    // paper (1 <= 0.7 x 4); C(17) = 306 keeps the cost clause out.
    const flat: AnchorCurve = { anchor: 'f', points: [...falling.points, p(0, 15, 310)] };
    const near = judgeFrontier(pt(17, 300), 16, [flat]);
    expect(near.outcome).toBe('tie');
    expect(near.clause).toBeUndefined();
    // 6 avoidable minutes (F = 14): the violation clause applies again.
    expect(judgeFrontier(pt(15, 300), 14, [flat]).clause).toBe('violations');
    // Cheaper for the same violations still wins near the oracle: C(17) = 1575 on this curve.
    const dear: AnchorCurve = { anchor: 'd', points: [...falling.points, p(0, 16, 2000)] };
    expect(judgeFrontier(pt(17, 300), 16, [dear]).clause).toBe('cost');
  });

  it('wins on cost when no anchor setting gets its violations that low', () => {
    const v = judgeFrontier(pt(5, 1000), 0, [falling]);
    expect(v.outcome).toBe('win');
    expect(v.envelopeCost).toBe(Infinity);
  });

  it('wins on violations when every anchor setting costs more', () => {
    const v = judgeFrontier(pt(500, 50), 10, [falling]);
    expect(v.envelope).toBe(Infinity);
    expect(v.outcome).toBe('win');
  });
});

describe('combineJudgement', () => {
  const win = judgeFrontier(pt(20, 200), 10, [falling]);
  const lose = judgeFrontier(pt(160, 150), 10, [falling]);
  it('keeps the verdict when the actions and the missing-data rerun pass', () => {
    expect(combineJudgement(win, 10, 10, win).outcome).toBe('win');
  });
  it('loses with more actions than hpa at its defaults', () => {
    expect(combineJudgement(win, 11, 10, win).outcome).toBe('lose');
  });
  it('loses when the missing-data rerun loses', () => {
    expect(combineJudgement(win, 1, 10, lose).outcome).toBe('lose');
  });
});

describe('the anchor sweeps', () => {
  it('are the settings of issue #13', () => {
    const byAnchor = Object.fromEntries(ANCHOR_SWEEPS.map((s) => [s.curve, s.values.map((v) => s.spec(v))]));
    expect(byAnchor['hpa']).toHaveLength(13);
    expect(byAnchor['hpa']?.[0]).toBe('hpa:targets.cpu=30');
    expect(byAnchor['target-tracking']?.at(-1)).toBe('target-tracking:targets.cpu=90');
    expect(byAnchor['step']).toHaveLength(12);
    expect(byAnchor['step']?.at(-1)).toBe('step:step.scale_out_threshold=85,step.scale_in_threshold=55');
    expect(byAnchor['threshold']).toHaveLength(9);
    expect(byAnchor['threshold']?.[0]).toBe(
      'threshold:cpu_scale_up=50,cpu_scale_down=0,memory_scale_up=55,memory_scale_down=30,connections_scale_up=50,connections_scale_down=0',
    );
    expect(byAnchor['hpa connections']).toHaveLength(13);
    expect(byAnchor['hpa connections']?.[0]).toBe('hpa:targets.cpu=null,targets.connections=30');
    expect(byAnchor['target-tracking connections']?.at(-1)).toBe('target-tracking:targets.cpu=null,targets.connections=90');
    expect(ANCHOR_SETTINGS).toBe(73);
  });

  it('sweeps hpa and target-tracking on connections per task, which see past a saturated CPU', () => {
    const T = Date.UTC(2026, 0, 5);
    for (const anchor of ['hpa', 'target-tracking'] as const) {
      const sweep = ANCHOR_SWEEPS.find((s) => s.curve === `${anchor} connections`) as (typeof ANCHOR_SWEEPS)[number];
      const config = sweep.configure(simulationConfig(anchor, DEFAULT_MODEL), 50);
      expect(config.targets).toMatchObject({ cpu: null, connections: 50 });
      // 8 busy tasks on 4: CPU reads 100 % (saturated), connections per task 200, which at a
      // target of 50 asks for 16 tasks (hpa: at most 8 in one 15 s period, twice 4); CPU at
      // 70 % would ask for no more than ceil(4 x 100 / 70) = 6.
      let state = initialState('simulated');
      let to = 4;
      for (let m = 0; m < 4; m++) {
        const out = getPolicy(anchor).evaluate({ config, state, metrics: metricsFor(8, 4, T + m * 60_000, DEFAULT_MODEL), tasks: { running: 4, pending: 0, desired: 4 }, now: T + m * 60_000 });
        state = out.state;
        to = out.decision.to;
      }
      expect(to).toBe(anchor === 'hpa' ? 8 : 10);
    }
  });

  it('names each setting by a variant spec that configures exactly what the sweep replays', () => {
    for (const sweep of ANCHOR_SWEEPS) {
      const base = simulationConfig(sweep.anchor, DEFAULT_MODEL);
      for (const v of sweep.values) expect(applyVariant(base, parseVariant(sweep.spec(v)))).toEqual(sweep.configure(base, v));
    }
  });

  it('moves the threshold anchor where its CPU thresholds say, not where the memory and connection defaults hold it', () => {
    const sweep = ANCHOR_SWEEPS.find((s) => s.anchor === 'threshold');
    const at = (knob: number) => (sweep as (typeof ANCHOR_SWEEPS)[number]).configure(simulationConfig('threshold', DEFAULT_MODEL), knob);
    const T = Date.UTC(2026, 0, 5);
    const decide = (knob: number, busy: number) =>
      thresholdPolicy.evaluate({ config: at(knob), state: initialState('simulated'), metrics: metricsFor(busy * 4, 4, T, DEFAULT_MODEL), tasks: { running: 4, pending: 0, desired: 4 }, now: T }).decision.to;

    // cpu_scale_up 90: 85 % busy is below it (connections 85 would pass the guide's 80)
    expect(decide(90, 0.85)).toBe(4);
    expect(decide(90, 0.95)).toBe(5);
    // cpu_scale_down 30: 25 % busy is below it (memory 42.5 and connections 25 would not pass the guide's 40 and 20)
    expect(decide(80, 0.25)).toBe(3);
    expect(decide(80, 0.35)).toBe(4);
  });
});

describe('runAnchors', () => {
  it('replays every setting of every sweep and takes the actions limit from hpa at 70 % CPU', () => {
    const model = DEFAULT_MODEL;
    const trace = prepareTrace('spikes', syntheticTrace({ kind: 'spikes', base: 2, height: 5, every: 60, width: 10 }, 600), model);
    const run = runAnchors(trace, model);
    expect(run.curves.map((c) => [c.anchor, c.points.length])).toEqual([
      ['hpa', 13],
      ['target-tracking', 13],
      ['step', 12],
      ['threshold', 9],
      ['hpa connections', 13],
      ['target-tracking connections', 13],
    ]);
    const hpa = simulate(trace, contestantsFor(['hpa'], model), model).result.results[0];
    expect(run.hpaActions).toBe(hpa?.actions);
    const hpa70 = run.curves[0]?.points.find((q) => q.knob === 70);
    expect(hpa70).toEqual({ knob: 70, sloViolationMinutes: hpa?.sloViolationMinutes, taskMinutes: hpa?.taskMinutes });
    // A higher CPU target never costs more on this trace: the sweep moved the setting.
    const costs = run.curves[0]?.points.map((q) => q.taskMinutes) ?? [];
    expect(costs[0]).toBeGreaterThan(costs.at(-1) ?? Infinity);
  });
});
