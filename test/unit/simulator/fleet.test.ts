import { describe, expect, it } from 'vitest';
import { metricsFor, runFleet, SimulationError } from '../../../functions/core/scaling/simulator/fleet.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';

const model = { ...DEFAULT_MODEL, initialTasks: 2 };
const flat = (n: number, v = 1): Float64Array => new Float64Array(n).fill(v);

describe('runFleet', () => {
  it('serves with a task added at tick 1 only from tick 3 (120 s start-up)', () => {
    const t = runFleet(flat(5), 0, model, (v) => (v.tick === 1 ? 3 : v.desired));
    expect(Array.from(t.running)).toEqual([2, 2, 2, 3, 3]);
    expect(Array.from(t.starting)).toEqual([0, 1, 1, 0, 0]);
    expect(Array.from(t.desired)).toEqual([2, 3, 3, 3, 3]);
  });

  it('removes tasks at once, pending ones first', () => {
    const t = runFleet(flat(4), 0, model, (v) => (v.tick === 1 ? 4 : v.tick === 2 ? 1 : v.desired));
    // tick 2: 2 pending cancelled, then one running task stopped
    expect(Array.from(t.running)).toEqual([2, 2, 1, 1]);
    expect(Array.from(t.starting)).toEqual([0, 2, 0, 0]);
  });

  it('records every applied change as an action', () => {
    const t = runFleet(flat(4), 0, model, (v) => (v.tick === 1 ? 3 : v.tick === 3 ? 2 : v.desired));
    expect(t.actions).toEqual([
      { tick: 1, from: 2, to: 3 },
      { tick: 3, from: 3, to: 2 },
    ]);
  });

  it('starts with just enough tasks for the first minute when no initial count is given', () => {
    const t = runFleet(Float64Array.of(4.6, 1), 0, { ...DEFAULT_MODEL, initialTasks: null }, (v) => v.desired);
    expect(t.running[0]).toBe(6);
  });

  it('refuses a desired count that is not a whole number', () => {
    expect(() => runFleet(flat(3), 0, model, () => 2.5)).toThrow(SimulationError);
  });

  it('gives the controller the previous minute and the tasks that served it', () => {
    const seen: Array<[number, number]> = [];
    runFleet(Float64Array.of(1, 2, 3), 0, model, (v) => {
      seen.push([v.demand[v.tick - 1] as number, v.pastRunning[v.tick - 1] as number]);
      return v.desired;
    });
    expect(seen).toEqual([
      [1, 2],
      [2, 2],
    ]);
  });
});

describe('metricsFor', () => {
  it('reports utilisation as CPU, memory, response time and connections', () => {
    const m = metricsFor(1, 2, 60_000, DEFAULT_MODEL);
    expect(m).toEqual({ at: 60_000, cpu: 50, memory: 55, responseTimeMs: 200, connectionsPerTask: 50, requestCount: 6000 });
  });

  it('saturates CPU and memory but not connections when demand exceeds the tasks', () => {
    const m = metricsFor(6, 4, 0, DEFAULT_MODEL);
    expect(m.cpu).toBe(100);
    expect(m.memory).toBe(80);
    expect(m.connectionsPerTask).toBe(150);
    expect(m.responseTimeMs).toBe(5000);
  });

  it('caps the response time formula at 99% utilisation', () => {
    expect(metricsFor(1, 1, 0, DEFAULT_MODEL).responseTimeMs).toBeCloseTo(10_000, 6);
  });
});
