import { describe, expect, it } from 'vitest';
import type { ServiceScalingConfig } from '../../../functions/core/scaling/config.js';
import { finishDecision } from '../../../functions/core/scaling/policies/common.js';
import { simulationConfig } from '../../../functions/core/scaling/simulator/anchors.js';
import { runFleet } from '../../../functions/core/scaling/simulator/fleet.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';
import { oracleController } from '../../../functions/core/scaling/simulator/oracle.js';
import { renderReport } from '../../../functions/core/scaling/simulator/report.js';
import { scoreTimeline } from '../../../functions/core/scaling/simulator/score.js';
import { contestant, droppedMinutes, prepareTrace, simulate } from '../../../functions/core/scaling/simulator/simulate.js';
import { syntheticTrace } from '../../../functions/core/scaling/simulator/synthetic.js';
import type { MetricsSnapshot, PolicyInput, ScalingPolicy, ServiceState } from '../../../functions/core/scaling/types.js';

const model = { ...DEFAULT_MODEL, initialTasks: 2 };

/** A policy that records what it saw and always asks for `want` tasks. */
function recorder(want: number): { policy: ScalingPolicy<ServiceScalingConfig>; seen: Array<PolicyInput<ServiceScalingConfig>> } {
  const seen: Array<PolicyInput<ServiceScalingConfig>> = [];
  const policy: ScalingPolicy<ServiceScalingConfig> = {
    name: 'recorder',
    evaluate: (input) => {
      seen.push(input);
      return { decision: finishDecision({ policy: 'recorder', input, proposed: want, reasons: [] }), state: input.state };
    },
  };
  return { policy, seen };
}

describe('the oracle', () => {
  it('starts tasks two minutes ahead of a step so that it never violates after the first minutes', () => {
    const demand = Float64Array.from([1, 1, 1, 1, 1, 5, 5, 5, 5, 5]);
    const t = runFleet(demand, 0, model, oracleController(demand, model));
    expect(Array.from(t.running)).toEqual([2, 2, 2, 2, 2, 6, 6, 6, 6, 6]);
    expect(scoreTimeline(t, model).sloViolationMinutes).toBe(0);
  });

  it('removes tasks as soon as no minute within the start-up lead needs them', () => {
    const demand = Float64Array.from([5, 5, 5, 1, 1, 1, 1]);
    const t = runFleet(demand, 0, { ...model, initialTasks: 6 }, oracleController(demand, model));
    expect(Array.from(t.running)).toEqual([6, 6, 6, 2, 2, 2, 2]);
  });

  it('cannot avoid violations when demand exceeds what the maximum bound serves', () => {
    const demand = new Float64Array(5).fill(9.5);
    const t = runFleet(demand, 0, { ...model, initialTasks: 10 }, oracleController(demand, model));
    expect(scoreTimeline(t, model).sloViolationMinutes).toBe(5);
  });
});

describe('driving a policy', () => {
  const trace = prepareTrace('flat', syntheticTrace({ kind: 'step', from: 4, to: 4, at: 0 }, 6), { ...model, p99TaskUnits: 1 });

  it('shows the policy the previous minute on the tasks that served it', () => {
    const { policy, seen } = recorder(2);
    simulate(trace, [contestant('recorder', policy, simulationConfig('ca-dms', model))], { ...model, p99TaskUnits: 1 });
    const first = seen[0] as PolicyInput<ServiceScalingConfig>;
    expect(first.now).toBe(trace.startAt + 60_000);
    expect(first.metrics).toMatchObject({ at: trace.startAt + 60_000, cpu: 50, connectionsPerTask: 50 });
    expect(first.tasks).toEqual({ running: 2, pending: 0, desired: 2 });
  });

  it('applies the decision and records it in the state the policy sees next', () => {
    const states: ServiceState[] = [];
    const policy: ScalingPolicy<ServiceScalingConfig> = {
      name: 'once',
      evaluate: (input) => {
        states.push(input.state);
        const proposed = input.state.events.length === 0 ? 3 : input.tasks.desired;
        return { decision: finishDecision({ policy: 'once', input, proposed, reasons: [] }), state: input.state };
      },
    };
    const { result, timelines } = simulate(trace, [contestant('once', policy, simulationConfig('ca-dms', model))], { ...model, p99TaskUnits: 1 });
    expect(result.results[0]?.actions).toBe(1);
    expect(timelines.get('once')?.desired[1]).toBe(3);
    expect(states[1]?.events).toEqual([{ at: trace.startAt + 60_000, from: 2, to: 3 }]);
  });

  it('applies nothing in a dry run', () => {
    const { policy } = recorder(5);
    const config = { ...simulationConfig('ca-dms', model), dry_run: true };
    const { result } = simulate(trace, [contestant('dry', policy, config)], { ...model, p99TaskUnits: 1 });
    expect(result.results[0]?.actions).toBe(0);
    expect(result.results[0]?.maxTasks).toBe(2);
  });

  it('drops the same seeded minutes for every policy, leaving only the timestamp', () => {
    const dropModel = { ...model, p99TaskUnits: 1, missingFraction: 0.5, seed: 42 };
    const a = recorder(2);
    const b = recorder(2);
    simulate(trace, [contestant('a', a.policy, simulationConfig('ca-dms', model)), contestant('b', b.policy, simulationConfig('ca-dms', model))], dropModel);
    const missing = (seen: Array<PolicyInput<ServiceScalingConfig>>): boolean[] => seen.map((s) => (s.metrics as MetricsSnapshot).cpu === undefined);
    expect(missing(a.seen)).toEqual(missing(b.seen));
    expect(missing(a.seen)).toContain(true);
    expect(a.seen.find((s) => s.metrics.cpu === undefined)?.metrics).toEqual({ at: expect.any(Number) });
  });

  it('draws dropped minutes from the seed alone', () => {
    const m = { ...model, missingFraction: 0.3, seed: 9 };
    expect(Array.from(droppedMinutes(50, m))).toEqual(Array.from(droppedMinutes(50, m)));
    expect(Array.from(droppedMinutes(50, m))).not.toEqual(Array.from(droppedMinutes(50, { ...m, seed: 10 })));
  });
});

describe('the result and the report', () => {
  const trace = prepareTrace('step <&>', syntheticTrace({ kind: 'step', from: 1, to: 6, at: 30 }, 60), model);
  const run = simulate(trace, [contestant('never', recorder(2).policy, simulationConfig('ca-dms', model))], model);

  it('has the documented JSON shape', () => {
    const json = JSON.parse(JSON.stringify(run.result)) as Record<string, unknown>;
    expect(Object.keys(json)).toEqual(['trace', 'ticks', 'model', 'results', 'oracle']);
    expect(Object.keys((json['results'] as object[])[0] as object)).toEqual([
      'policy', 'sloViolationMinutes', 'taskMinutes', 'actions', 'reversals', 'accuracyU', 'accuracyO', 'timeshareU', 'timeshareO', 'maxTasks',
    ]);
    expect((json['oracle'] as { policy: string }).policy).toBe('oracle');
  });

  it('renders one self-contained HTML page: the score table, the inlined scripts and a series per policy', () => {
    const html = renderReport(run, { assets: { css: '.u-legend{}', scripts: ['var a = "</script>";'] } });
    const data = JSON.parse(/<script type="application\/json" id="report-data">(.*?)<\/script>/s.exec(html)?.[1] ?? 'null') as { rows: Array<{ name: string }> };

    expect(data.rows.map((r) => r.name)).toEqual(['never', 'oracle']);
    expect(html).toContain('<td>never</td>');
    expect(html).toContain('step &lt;&amp;&gt;');
    expect(html).toContain('var a = "<\\/script>";');
    expect(html).not.toMatch(/src=|href=/);
  });
});
