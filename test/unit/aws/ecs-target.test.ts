import { DescribeServicesCommand, ECSClient, TagResourceCommand, UntagResourceCommand, UpdateServiceCommand, type DescribeServicesCommandInput } from '@aws-sdk/client-ecs';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, describe, expect, it } from 'vitest';
import { EcsScalingTarget, EcsTagError, EcsUpdateError } from '../../../functions/adapters/aws/ecs-target.js';
import { parseTopology } from '../../../functions/adapters/aws/topology.js';
import { ecsService, serviceNames, topologyOf } from '../../support/scaling-fixtures.js';

const ecs = mockClient(ECSClient);
afterEach(() => ecs.reset());

function target(topology = topologyOf(23)): EcsScalingTarget {
  return new EcsScalingTarget({ client: new ECSClient({ region: 'eu-west-1' }), topology });
}

function answerAll(): void {
  ecs.on(DescribeServicesCommand).callsFake((input: DescribeServicesCommandInput) => ({
    services: (input.services ?? []).map((name) => ecsService(name, { running: 3, desired: 3 })),
    failures: [],
  }));
}

describe('ECS scaling target', () => {
  it('describes services in batches of at most 10 per cluster', async () => {
    answerAll();

    const readings = await target().describe(serviceNames(23));

    const calls = ecs.commandCalls(DescribeServicesCommand).map((c) => c.args[0].input);
    expect(calls.map((c) => c.services?.length)).toEqual([10, 10, 3]);
    expect(calls[0]).toEqual({ cluster: 'ca-dms', services: serviceNames(10).map((s) => `ca-dms-${s}`), include: ['TAGS'] });
    expect(readings.size).toBe(23);
  });

  it('groups services by cluster before batching', async () => {
    answerAll();
    const topology = parseTopology({
      services: { a: { cluster: 'one', ecsService: 'a' }, b: { cluster: 'two', ecsService: 'b' }, c: { cluster: 'one', ecsService: 'c' } },
    });

    await target(topology).describe(['a', 'b', 'c']);

    const calls = ecs.commandCalls(DescribeServicesCommand).map((c) => c.args[0].input);
    expect(calls).toEqual([
      { cluster: 'one', services: ['a', 'c'], include: ['TAGS'] },
      { cluster: 'two', services: ['b'], include: ['TAGS'] },
    ]);
  });

  it('reports running, pending and desired counts and a deployment in progress', async () => {
    ecs.on(DescribeServicesCommand).resolves({
      services: [ecsService('ca-dms-svc-0', { running: 2, pending: 1, desired: 3, deploying: true }), ecsService('ca-dms-svc-1', { running: 4, desired: 4 })],
    });

    const readings = await target(topologyOf(2)).describe(['svc-0', 'svc-1']);

    expect(readings.get('svc-0')).toEqual({ ok: true, tasks: { running: 2, pending: 1, desired: 3, deploymentInProgress: true } });
    expect(readings.get('svc-1')).toEqual({ ok: true, tasks: { running: 4, pending: 0, desired: 4, deploymentInProgress: false } });
  });

  it('reports a service ECS does not know as unavailable with the reason', async () => {
    ecs.on(DescribeServicesCommand).resolves({
      services: [ecsService('ca-dms-svc-0', { running: 2, desired: 2 })],
      failures: [{ arn: 'arn:aws:ecs:eu-west-1:123456789012:service/ca-dms/ca-dms-svc-1', reason: 'MISSING' }],
    });

    const readings = await target(topologyOf(2)).describe(['svc-0', 'svc-1']);

    expect(readings.get('svc-1')).toEqual({ ok: false, error: 'ECS does not report ca-dms/ca-dms-svc-1: MISSING' });
  });

  it('reports every service of a failed DescribeServices call as unavailable', async () => {
    ecs.on(DescribeServicesCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));

    const readings = await target(topologyOf(2)).describe(['svc-0', 'svc-1']);

    expect(readings.get('svc-0')).toEqual({ ok: false, error: 'ECS DescribeServices failed: ThrottlingException: Rate exceeded' });
  });

  it('sets the desired count with UpdateService', async () => {
    ecs.on(UpdateServiceCommand).resolves({});

    await target(topologyOf(1)).setDesired('svc-0', 5);

    expect(ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input)).toEqual([{ cluster: 'ca-dms', service: 'ca-dms-svc-0', desiredCount: 5 }]);
  });

  it('throws a typed error with the cause when UpdateService fails', async () => {
    const refusal = Object.assign(new Error('service is draining'), { name: 'InvalidParameterException' });
    ecs.on(UpdateServiceCommand).rejects(refusal);

    const error = await target(topologyOf(1)).setDesired('svc-0', 5).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(EcsUpdateError);
    expect((error as EcsUpdateError).message).toBe('ECS UpdateService ca-dms/ca-dms-svc-0 desiredCount=5 failed: InvalidParameterException: service is draining');
    expect((error as EcsUpdateError).cause).toBe(refusal);
  });

  it('reports the stops tagged on a service, its own and the global one, and ignores other tags', async () => {
    ecs.on(DescribeServicesCommand).resolves({
      services: [
        {
          ...ecsService('ca-dms-svc-0', { running: 3, desired: 3 }),
          tags: [
            { key: 'ca-dms-scaling:stopped', value: 'alice at 2026-01-05T12:00:00.000Z' },
            { key: 'ca-dms-scaling:stopped-all', value: 'bob at 2026-01-05T12:01:00.000Z' },
            { key: 'team', value: 'docs' },
          ],
        },
        ecsService('ca-dms-svc-1', { running: 3, desired: 3 }),
      ],
    });

    const readings = await target(topologyOf(2)).describe(['svc-0', 'svc-1']);

    expect(readings.get('svc-0')).toMatchObject({
      ok: true,
      stops: [
        { scope: 'svc-0', by: 'alice at 2026-01-05T12:00:00.000Z' },
        { scope: '*', by: 'bob at 2026-01-05T12:01:00.000Z' },
      ],
    });
    expect(readings.get('svc-1')).not.toHaveProperty('stops');
  });

  it('marks a global stop on every service and a service stop on that service, with a value ECS accepts', async () => {
    answerAll();

    await target(topologyOf(2)).markStop('*', 'arn:aws:iam::123456789012:user/alice (cli), at 2026-01-05T12:00:00.000Z');
    await target(topologyOf(2)).markStop('svc-1', undefined);

    expect(ecs.commandCalls(TagResourceCommand).map((c) => c.args[0].input)).toEqual([
      { resourceArn: 'arn:aws:ecs:eu-west-1:123456789012:service/ca-dms/ca-dms-svc-0', tags: [{ key: 'ca-dms-scaling:stopped-all', value: 'arn:aws:iam::123456789012:user/alice _cli__ at 2026-01-05T12:00:00.000Z' }] },
      { resourceArn: 'arn:aws:ecs:eu-west-1:123456789012:service/ca-dms/ca-dms-svc-1', tags: [{ key: 'ca-dms-scaling:stopped-all', value: 'arn:aws:iam::123456789012:user/alice _cli__ at 2026-01-05T12:00:00.000Z' }] },
    ]);
    expect(ecs.commandCalls(UntagResourceCommand).map((c) => c.args[0].input)).toEqual([
      { resourceArn: 'arn:aws:ecs:eu-west-1:123456789012:service/ca-dms/ca-dms-svc-1', tagKeys: ['ca-dms-scaling:stopped'] },
    ]);
  });

  it('tries every service and names each one ECS refused to tag', async () => {
    answerAll();
    ecs.on(TagResourceCommand, { resourceArn: 'arn:aws:ecs:eu-west-1:123456789012:service/ca-dms/ca-dms-svc-1' }).rejects(Object.assign(new Error('denied'), { name: 'AccessDeniedException' }));

    const error = await target(topologyOf(3)).markStop('*', 'alice').catch((e: unknown) => e);

    expect(error).toBeInstanceOf(EcsTagError);
    expect((error as EcsTagError).message).toBe('ECS TagResource ca-dms/ca-dms-svc-1 failed: AccessDeniedException: denied');
    expect(ecs.commandCalls(TagResourceCommand)).toHaveLength(3);
  });
});
