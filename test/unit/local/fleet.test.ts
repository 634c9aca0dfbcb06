/**
 * The simulated fleet of local mode: the simulator's fleet model behind the controller's ports,
 * on an injected clock.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { SimulatedFleet } from '../../../functions/adapters/sim/fleet.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { ScalingController } from '../../../functions/core/scaling/controller.js';
import { getPolicy } from '../../../functions/core/scaling/policies/index.js';
import { refusedLoopbackPort } from '../../support/refused-port.js';
import { RecordingLog } from '../../support/scaling-fixtures.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';
import type { TracePoint } from '../../../functions/core/scaling/simulator/trace.js';

const MINUTE = 60_000;

/** A trace ramping from 10 to 100 over `minutes` minutes, then flat. */
function ramp(minutes: number): TracePoint[] {
  return Array.from({ length: minutes + 60 }, (_, i) => ({ at: i * MINUTE, value: 10 + (90 * Math.min(i, minutes)) / minutes }));
}

function fleetAt(start = 1_000_000, acceleration = 60, trace = ramp(60)) {
  let now = start;
  const clock = { now: () => now };
  const fleet = new SimulatedFleet({ trace, acceleration, clock, services: [{ service: 'api', p99TaskUnits: 8, phaseMinutes: 0 }] });
  return { fleet, advance: (ms: number) => (now += ms), now: () => now };
}

async function tasks(fleet: SimulatedFleet) {
  const reading = (await fleet.describe(['api'])).get('api');
  if (!reading?.ok) throw new Error('no task counts');
  return reading.tasks;
}

describe('SimulatedFleet', () => {
  it('starts with just enough tasks for the first minute of the trace', async () => {
    const { fleet } = fleetAt();

    expect(await tasks(fleet)).toEqual({ running: 2, pending: 0, desired: 2, deploymentInProgress: false });
  });

  it('serves added tasks only after the model start-up time, shortened by the acceleration', async () => {
    const { fleet, advance } = fleetAt();
    await fleet.setDesired('api', 5);

    advance((DEFAULT_MODEL.startupSeconds * 1000) / 60 - 1);
    const starting = await tasks(fleet);
    advance(1);
    const served = await tasks(fleet);

    expect(starting).toMatchObject({ running: 2, pending: 3, desired: 5 });
    expect(served).toMatchObject({ running: 5, pending: 0, desired: 5 });
  });

  it('removes pending tasks before running ones on a scale-in, as ECS does', async () => {
    const { fleet } = fleetAt();
    await fleet.setDesired('api', 5);

    await fleet.setDesired('api', 3);
    const afterFirst = await tasks(fleet);
    await fleet.setDesired('api', 1);

    expect(afterFirst).toMatchObject({ running: 2, pending: 1, desired: 3 });
    expect(await tasks(fleet)).toMatchObject({ running: 1, pending: 0, desired: 1 });
  });

  it('replays the trace faster by the acceleration, so CPU climbs with the ramp on a fixed fleet', async () => {
    const { fleet, advance, now } = fleetAt();
    const cpuAt = async (): Promise<number> => {
      const r = (await fleet.read(['api'], now())).get('api');
      if (!r?.ok || r.metrics.cpu === undefined) throw new Error('no cpu');
      return r.metrics.cpu;
    };

    const early = await cpuAt();
    advance(30_000); // 30 minutes of trace at 60x
    const later = await cpuAt();

    expect(fleet.traceTimeAt(now())).toBe(30 * MINUTE);
    expect(later).toBeGreaterThan(early);
  });

  it('reports requests beyond the running tasks\' capacity as errors', async () => {
    const { fleet, advance, now } = fleetAt();
    advance(60_000); // the top of the ramp: demand far above 2 tasks

    const r = (await fleet.read(['api'], now())).get('api');

    expect(r?.ok).toBe(true);
    if (!r?.ok) return;
    expect(r.metrics.cpu).toBe(100);
    expect(r.metrics.errorCount).toBeGreaterThan(0);
  });

  it('answers for a service it does not run with an error reading, not a throw', async () => {
    const { fleet, now } = fleetAt();

    const [metrics, counts] = await Promise.all([fleet.read(['nope'], now()), fleet.describe(['nope'])]);

    expect(metrics.get('nope')).toEqual({ ok: false, error: 'the simulated fleet has no service nope' });
    expect(counts.get('nope')).toEqual({ ok: false, error: 'the simulated fleet has no service nope' });
  });

  it('carries the marks of a stop, as ECS tags do, and a controller without its catalog heeds them', async () => {
    const { fleet, advance, now } = fleetAt();
    advance(60_000); // the top of the ramp: CPU at 100 on 2 tasks
    const pool = new pg.Pool({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${await refusedLoopbackPort()}/postgres`, max: 1, connectionTimeoutMillis: 500 });
    pool.on('error', () => undefined);
    const config = parseScalingConfig({ policy: 'threshold', min_instances: 1, max_instances: 10, services: { api: {} } });
    const controller = new ScalingController({
      metrics: fleet,
      target: fleet,
      registry: fleet,
      catalog: new CatalogStore(pool, { defaults: config }),
      clock: { now },
      log: new RecordingLog(),
      policies: getPolicy,
      fallbackConfig: config,
    });
    try {
      await fleet.markStop('api', 'alice at 2026-01-05T12:00:00.000Z');
      const marked = (await fleet.describe(['api'])).get('api');
      const stopped = await controller.evaluate({ trigger: 'schedule' });
      await fleet.markStop('api', undefined);
      const started = await controller.evaluate({ trigger: 'schedule' });

      expect(marked).toMatchObject({ ok: true, stops: [{ scope: 'api', by: 'alice at 2026-01-05T12:00:00.000Z' }] });
      expect(stopped.decisions.map((d) => [d.outcome, d.degraded, d.blocked.map((b) => b.kind)])).toEqual([['blocked', true, ['disabled']]]);
      expect(started.decisions.map((d) => [d.outcome, d.from])).toEqual([['applied', 2]]);
      expect((await tasks(fleet)).desired).toBeGreaterThan(2);
    } finally {
      await pool.end();
    }
  });

  it('refuses a desired count that is not a whole number >= 0', async () => {
    const { fleet } = fleetAt();

    await expect(fleet.setDesired('api', -1)).rejects.toThrow('a desired count is a whole number >= 0, got -1');
  });
});
