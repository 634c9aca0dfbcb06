import {
  ApplicationAutoScalingClient,
  DescribeScalableTargetsCommand,
  RegisterScalableTargetCommand,
  type ScalableTarget,
} from '@aws-sdk/client-application-auto-scaling';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, describe, expect, it } from 'vitest';
import { AppAutoScalingRegistry } from '../../../functions/adapters/aws/app-autoscaling.js';
import { serviceNames, topologyOf } from '../../support/scaling-fixtures.js';

const aas = mockClient(ApplicationAutoScalingClient);
afterEach(() => aas.reset());

function registry(n: number): AppAutoScalingRegistry {
  return new AppAutoScalingRegistry({ client: new ApplicationAutoScalingClient({ region: 'eu-west-1' }), topology: topologyOf(n) });
}

function registered(service: string, min: number, max: number, suspended: ScalableTarget['SuspendedState'] = {}): ScalableTarget {
  return {
    ServiceNamespace: 'ecs',
    ResourceId: `service/ca-dms/ca-dms-${service}`,
    ScalableDimension: 'ecs:service:DesiredCount',
    MinCapacity: min,
    MaxCapacity: max,
    RoleARN: 'arn:aws:iam::123456789012:role/aws-service-role/ecs.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_ECSService',
    CreationTime: new Date(0),
    SuspendedState: suspended,
  };
}

describe('Application Auto Scaling registry', () => {
  it('registers only the targets whose bounds drifted or that were never registered', async () => {
    aas.on(DescribeScalableTargetsCommand).resolves({ ScalableTargets: [registered('svc-0', 2, 10), registered('svc-1', 2, 8)] });
    aas.on(RegisterScalableTargetCommand).resolves({});

    await registry(3).sync(new Map(serviceNames(3).map((s) => [s, { min: 2, max: 10 }])));

    expect(aas.commandCalls(DescribeScalableTargetsCommand).map((c) => c.args[0].input)).toEqual([
      { ServiceNamespace: 'ecs', ScalableDimension: 'ecs:service:DesiredCount', ResourceIds: ['service/ca-dms/ca-dms-svc-0', 'service/ca-dms/ca-dms-svc-1', 'service/ca-dms/ca-dms-svc-2'] },
    ]);
    const registrations = aas.commandCalls(RegisterScalableTargetCommand).map((c) => c.args[0].input);
    expect(registrations).toEqual(
      expect.arrayContaining([
        { ServiceNamespace: 'ecs', ScalableDimension: 'ecs:service:DesiredCount', ResourceId: 'service/ca-dms/ca-dms-svc-1', MinCapacity: 2, MaxCapacity: 10 },
        { ServiceNamespace: 'ecs', ScalableDimension: 'ecs:service:DesiredCount', ResourceId: 'service/ca-dms/ca-dms-svc-2', MinCapacity: 2, MaxCapacity: 10 },
      ]),
    );
    expect(registrations).toHaveLength(2);
  });

  it('reports suspended dynamic scaling per direction', async () => {
    aas.on(DescribeScalableTargetsCommand).resolves({
      ScalableTargets: [registered('svc-0', 2, 10, { DynamicScalingOutSuspended: true, DynamicScalingInSuspended: false }), registered('svc-1', 2, 10)],
    });

    const { suspensions } = await registry(2).sync(new Map(serviceNames(2).map((s) => [s, { min: 2, max: 10 }])));

    expect(suspensions.get('svc-0')).toEqual({ scaleOut: true, scaleIn: false });
    expect(suspensions.get('svc-1')).toEqual({ scaleOut: false, scaleIn: false });
  });

  it('describes in batches of 50 resource ids and follows NextToken', async () => {
    aas.on(DescribeScalableTargetsCommand).callsFake((input: { ResourceIds?: string[]; NextToken?: string }) =>
      input.NextToken === undefined && input.ResourceIds?.[0] === 'service/ca-dms/ca-dms-svc-0'
        ? { ScalableTargets: [], NextToken: 'more' }
        : { ScalableTargets: (input.ResourceIds ?? []).map((id) => registered(id.split('ca-dms-')[1] ?? '', 2, 10)) },
    );

    await registry(60).sync(new Map(serviceNames(60).map((s) => [s, { min: 2, max: 10 }])));

    const calls = aas.commandCalls(DescribeScalableTargetsCommand).map((c) => c.args[0].input);
    expect(calls.map((c) => [c.ResourceIds?.length, c.NextToken])).toEqual([
      [50, undefined],
      [50, 'more'],
      [10, undefined],
    ]);
    expect(aas.commandCalls(RegisterScalableTargetCommand)).toHaveLength(0);
  });

  it('reports a failed registration as a warning and still returns the suspensions', async () => {
    aas.on(DescribeScalableTargetsCommand).resolves({ ScalableTargets: [] });
    aas.on(RegisterScalableTargetCommand).rejects(Object.assign(new Error('not authorized'), { name: 'AccessDeniedException' }));

    const { suspensions, warnings } = await registry(1).sync(new Map([['svc-0', { min: 2, max: 10 }]]));

    expect(suspensions.get('svc-0')).toEqual({ scaleOut: false, scaleIn: false });
    expect(warnings).toEqual(['could not register service/ca-dms/ca-dms-svc-0 with min 2 and max 10: AccessDeniedException: not authorized']);
  });
});
