/**
 * The controller over the real AWS adapters (SDK clients driven by aws-sdk-client-mock) with
 * a catalog that cannot be reached (a closed loopback port): everything here must work without
 * the catalog. Behaviours that need the catalog are in test/integration/controller.
 */
import { DescribeScalableTargetsCommand, RegisterScalableTargetCommand } from '@aws-sdk/client-application-auto-scaling';
import { GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, UpdateServiceCommand } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { getPolicy } from '../../../functions/core/scaling/policies/index.js';
import { refusedLoopbackPort } from '../../support/refused-port.js';
import { controllerFor, ecsService, givenOneService, ManualClock, metricsFrom, mockControllerAws, RecordingLog, topologyOf } from '../../support/scaling-fixtures.js';

const aws = mockControllerAws();
const { cw, ecs, aas } = aws;

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const topology = topologyOf(1);
const FALLBACK = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {} } };

let pool: pg.Pool;
let unreachable: CatalogStore;

beforeAll(async () => {
  pool = new pg.Pool({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${await refusedLoopbackPort()}/postgres`, max: 1, connectionTimeoutMillis: 500 });
  pool.on('error', () => undefined);
  unreachable = new CatalogStore(pool, { defaults: parseScalingConfig({}) });
});
afterAll(async () => {
  await pool.end();
});

function controller(fallback: Record<string, unknown> = FALLBACK, log = new RecordingLog(), clock = new ManualClock(T0)) {
  return controllerFor({ topology, catalog: unreachable, fallback, clock, log });
}

function updates(): unknown[] {
  return ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input);
}

describe('controller without its catalog', () => {
  it('scales out from what ECS reports, using the shipped configuration', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });

    const result = await controller().evaluate({ trigger: 'schedule' });

    expect(result.degraded).toBe(true);
    expect(updates()).toEqual([{ cluster: 'ca-dms', service: 'ca-dms-svc-0', desiredCount: 4 }]);
    expect(result.decisions[0]).toMatchObject({ service: 'svc-0', from: 3, to: 4, outcome: 'applied', degraded: true, trigger: 'schedule' });
  });

  it('never scales in', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 5, mem: 10, conn: 3 } }, { running: 6, desired: 6 });

    const result = await controller().evaluate({ trigger: 'schedule' });

    expect(updates()).toEqual([]);
    expect(result.decisions[0]?.outcome).toBe('blocked');
    expect(result.decisions[0]?.blocked.map((b) => b.kind)).toContain('missing_data');
  });

  it('writes every decision as a structured log record and holds it for the catalog', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });
    const log = new RecordingLog();
    const c = controller(FALLBACK, log);

    await c.evaluate({ trigger: 'schedule' });

    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]?.reasons.map((r) => r.rule)).toContain('cpu_scale_up_exceeded');
    expect(c.pendingBacklog()).toEqual({ held: 1, dropped: 0 });
  });

  it('counts decisions beyond the backlog limit as dropped rather than forgetting them', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 50, mem: 50 } }, { running: 3, desired: 3 });
    const c = controllerFor({ topology, catalog: unreachable, fallback: FALLBACK, clock: new ManualClock(T0), backlogLimit: 2 });

    for (let i = 0; i < 5; i++) await c.evaluate({ trigger: 'schedule' });

    expect(c.pendingBacklog()).toEqual({ held: 2, dropped: 3 });
  });
});

describe('controller safety rules', () => {
  it('takes no decision for a service whose metrics are throttled, and records why', async () => {
    cw.on(GetMetricDataCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));
    ecs.on(DescribeServicesCommand).resolves({ services: [ecsService('ca-dms-svc-0', { running: 3, desired: 3 })] });

    const result = await controller().evaluate({ trigger: 'schedule' });

    expect(updates()).toEqual([]);
    expect(result.decisions[0]).toMatchObject({
      outcome: 'skipped',
      from: 3,
      to: 3,
      metrics: null,
      error: 'CloudWatch GetMetricData failed: ThrottlingException: Rate exceeded',
    });
  });

  it('records a refused UpdateService as failed and starts the next evaluation from the real ECS counts', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });
    ecs.on(UpdateServiceCommand).rejectsOnce(Object.assign(new Error('service is draining'), { name: 'InvalidParameterException' })).resolves({});
    const clock = new ManualClock(T0);
    const c = controller(FALLBACK, new RecordingLog(), clock);

    const first = await c.evaluate({ trigger: 'schedule' });
    clock.advance(30_000);
    const second = await c.evaluate({ trigger: 'schedule' });

    expect(first.decisions[0]).toMatchObject({ outcome: 'failed', from: 3, to: 4 });
    expect(first.decisions[0]?.error).toContain('InvalidParameterException: service is draining');
    expect(second.decisions[0]).toMatchObject({ outcome: 'applied', from: 3, to: 4 });
    expect(updates()).toEqual([
      { cluster: 'ca-dms', service: 'ca-dms-svc-0', desiredCount: 4 },
      { cluster: 'ca-dms', service: 'ca-dms-svc-0', desiredCount: 4 },
    ]);
  });

  it('does nothing at all when the configuration stops scaling', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });

    const result = await controller({ ...FALLBACK, enabled: false }).evaluate({ trigger: 'schedule' });

    expect(result.stopped).toBe(true);
    expect(result.decisions).toEqual([]);
    expect(cw.calls()).toHaveLength(0);
    expect(ecs.calls()).toHaveLength(0);
    expect(aas.calls()).toHaveLength(0);
  });

  it('does not touch a service whose own switch is off', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });

    const result = await controller({ ...FALLBACK, services: { 'svc-0': { enabled: false } } }).evaluate({ trigger: 'schedule' });

    expect(result.decisions).toEqual([]);
    expect(ecs.calls()).toHaveLength(0);
  });

  it('records a dry-run decision and changes nothing', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });

    const result = await controller({ ...FALLBACK, dry_run: true }).evaluate({ trigger: 'schedule' });

    expect(updates()).toEqual([]);
    expect(result.decisions[0]).toMatchObject({ from: 3, to: 4, outcome: 'blocked', dryRun: true });
    expect(result.decisions[0]?.blocked.filter((b) => b.kind === 'dry_run')).toHaveLength(1);
  });

  it('respects a scale-out suspended on the scalable target', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });
    aas.on(DescribeScalableTargetsCommand).resolves({
      ScalableTargets: [
        {
          ServiceNamespace: 'ecs',
          ResourceId: 'service/ca-dms/ca-dms-svc-0',
          ScalableDimension: 'ecs:service:DesiredCount',
          MinCapacity: 2,
          MaxCapacity: 10,
          RoleARN: 'arn:aws:iam::123456789012:role/r',
          CreationTime: new Date(0),
          SuspendedState: { DynamicScalingOutSuspended: true },
        },
      ],
    });

    const result = await controller().evaluate({ trigger: 'schedule' });

    expect(updates()).toEqual([]);
    expect(result.decisions[0]).toMatchObject({ outcome: 'blocked', to: 4 });
    expect(result.decisions[0]?.blocked.map((b) => b.kind)).toEqual(['suspended']);
  });

  it('keeps the configured bounds registered on the scalable target', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 50, mem: 50 } }, { running: 3, desired: 3 });

    await controller({ ...FALLBACK, services: { 'svc-0': { min_instances: 3, max_instances: 12 } } }).evaluate({ trigger: 'schedule' });

    expect(aas.commandCalls(RegisterScalableTargetCommand).map((c) => c.args[0].input)).toEqual([
      { ServiceNamespace: 'ecs', ScalableDimension: 'ecs:service:DesiredCount', ResourceId: 'service/ca-dms/ca-dms-svc-0', MinCapacity: 3, MaxCapacity: 12 },
    ]);
  });

  it('skips a service whose policy fails and still evaluates the others', async () => {
    const two = topologyOf(2);
    cw.on(GetMetricDataCommand).callsFake(metricsFrom(['svc-0', 'svc-1'], { 'svc-0': { cpu: 95, mem: 50 }, 'svc-1': { cpu: 95, mem: 50 } }));
    ecs.on(DescribeServicesCommand).resolves({ services: [ecsService('ca-dms-svc-0', { running: 3, desired: 3 }), ecsService('ca-dms-svc-1', { running: 3, desired: 3 })] });
    const c = controllerFor({
      topology: two,
      catalog: unreachable,
      fallback: { ...FALLBACK, services: { 'svc-0': { policy: 'step' }, 'svc-1': {} } },
      clock: new ManualClock(T0),
      policies: (name) => {
        if (name === 'step') throw new Error('step policy exploded');
        return getPolicy(name);
      },
    });

    const result = await c.evaluate({ trigger: 'schedule' });

    expect(result.decisions.map((d) => [d.service, d.outcome, d.error])).toEqual([
      ['svc-0', 'skipped', 'policy step failed: Error: step policy exploded'],
      ['svc-1', 'applied', undefined],
    ]);
    expect(updates()).toEqual([{ cluster: 'ca-dms', service: 'ca-dms-svc-1', desiredCount: 4 }]);
  });

  it('goes on when the scalable-target registry fails, with a warning', async () => {
    givenOneService(aws, { 'svc-0': { cpu: 95, mem: 50 } }, { running: 3, desired: 3 });
    aas.on(DescribeScalableTargetsCommand).rejects(new Error('unavailable'));

    const result = await controller().evaluate({ trigger: 'schedule' });

    expect(updates()).toHaveLength(1);
    expect(result.warnings.some((w) => w.startsWith('scalable targets could not be described'))).toBe(true);
  });
});
