/**
 * The Lambda functions the templates get from elsewhere: CDK's custom-resource handlers (the
 * default security group's restriction, the ECS service-linked role's AwsCustomResource), the
 * hosted rotations the `AWS::SecretsManager` transform creates and the rotation applications the
 * `AWS::Serverless` transform deploys from the Serverless Application Repository.
 *
 * - Logs: such a function writes to `/aws/lambda/<function name>`, which CloudWatch creates at
 *   the first invocation with no expiry (https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-loggroups.html).
 *   Each gets that group from the template, with the configured retention, and whatever invokes
 *   the function first depends on it: invoked first, the function would create the group and the
 *   group's creation would then fail as existing.
 * - Transform inputs: a transform runs before intrinsic functions are evaluated, and AWS
 *   documents no cross-stack reference in a macro's input ("The Fn::ImportValue intrinsic
 *   function isn't currently supported in macros",
 *   https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/template-macros.html). What a
 *   transform reads names only this template's resources (lib/transform-input.ts).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Stack } from 'aws-cdk-lib';
import { beforeAll, describe, expect, it } from 'vitest';
import { resourcesOf, ROOT, SYNTH_HOOK_TIMEOUT_MS, synthesize, type Synthesized } from './support/synth.js';

type Json = Record<string, unknown>;

let s: Synthesized;

beforeAll(() => {
  s = synthesize(JSON.parse(readFileSync(join(ROOT, 'config/dev.json'), 'utf8')) as Json);
  expect(s.error).toBeUndefined();
}, SYNTH_HOOK_TIMEOUT_MS);

const allStacks = (): Stack[] => Object.values(s.stacks);
const resources = (stack: Stack): Record<string, { Type: string; Properties?: Json; DependsOn?: string[] }> =>
  (s.template(stack).toJSON() as { Resources: Record<string, { Type: string; Properties?: Json; DependsOn?: string[] }> }).Resources;

/** The log group of `stack` whose name is `name` (a literal, or `/aws/lambda/` + Ref of a function). */
function logGroupNamed(stack: Stack, name: unknown): [string, Json] | undefined {
  const found = resourcesOf(s.template(stack), 'AWS::Logs::LogGroup').find(([, g]) => JSON.stringify(g.Properties?.['LogGroupName']) === JSON.stringify(name));
  return found && [found[0], found[1].Properties ?? {}];
}

describe('log groups of the functions the templates do not define themselves', () => {
  it('gives every function in a template a log group with the configured retention', () => {
    let checked = 0;
    for (const stack of allStacks()) {
      for (const [id, fn] of Object.entries(resources(stack)).filter(([, r]) => r.Type === 'AWS::Lambda::Function')) {
        const configured = (fn.Properties?.['LoggingConfig'] as Json | undefined)?.['LogGroup'] as { Ref: string } | undefined;
        const group = configured
          ? ([configured.Ref, resources(stack)[configured.Ref]?.Properties ?? {}] as [string, Json])
          : logGroupNamed(stack, { 'Fn::Join': ['', ['/aws/lambda/', { Ref: id }]] });
        expect(group, `${stack.stackName}/${id} has no log group of its own`).toBeDefined();
        expect(group?.[1]['RetentionInDays'], `${stack.stackName}/${id}`).toBe(s.config.logRetentionDays);
        checked++;
      }
    }
    // The 6 control-plane functions and the network stack's 2 CDK handlers.
    expect(checked).toBe(8);
  });

  it("makes each CDK handler's log group before the custom resource that first invokes the handler", () => {
    const network = s.stacks.network;
    const all = resources(network);
    const types = ['Custom::EcsAutoScalingServiceLinkedRole', 'Custom::EcsServiceLinkedRole', 'Custom::VpcRestrictDefaultSG'];
    const customs = Object.entries(all).filter(([, r]) => types.includes(r.Type));
    expect(customs.map(([, r]) => r.Type).sort()).toEqual(types);
    for (const [id, custom] of customs) {
      const handler = (custom.Properties?.['ServiceToken'] as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
      const configured = (all[handler]?.Properties?.['LoggingConfig'] as Json | undefined)?.['LogGroup'] as { Ref: string } | undefined;
      const group = configured ? configured.Ref : logGroupNamed(network, { 'Fn::Join': ['', ['/aws/lambda/', { Ref: handler }]] })?.[0];
      expect(group, `${id}: no log group for ${handler}`).toBeDefined();
      expect(custom.DependsOn ?? [], id).toContain(group);
    }
  });

  // Every environment deployed before these log groups existed has run this handler (the custom
  // resource invokes it when the VPC is created), so /aws/lambda/<its name> already exists there,
  // made by Lambda; the function keeps its name on update, and a template group of that name
  // would fail to create ("already exists") and roll the network stack back.
  it('sends the default security group handler, which deployed environments have already run, to a group CloudFormation names', () => {
    const network = s.stacks.network;
    const all = resources(network);
    const [handler, ...others] = Object.entries(all).filter(([id, r]) => r.Type === 'AWS::Lambda::Function' && id.startsWith('CustomVpcRestrictDefaultSGCustomResourceProviderHandler'));
    expect(others).toEqual([]);
    expect(handler, 'the default security group handler').toBeDefined();
    const [handlerId, fn] = handler ?? ['', {}];
    expect(logGroupNamed(network, { 'Fn::Join': ['', ['/aws/lambda/', { Ref: handlerId }]] }), 'a group named after the handler').toBeUndefined();
    const configured = (fn.Properties?.['LoggingConfig'] as Json | undefined)?.['LogGroup'] as { Ref: string } | undefined;
    expect(configured, 'LoggingConfig.LogGroup').toEqual({ Ref: expect.any(String) });
    const group = all[configured?.Ref ?? ''];
    expect(group?.Type).toBe('AWS::Logs::LogGroup');
    expect(group?.Properties?.['LogGroupName']).toBeUndefined();
    expect(group?.Properties?.['RetentionInDays']).toBe(s.config.logRetentionDays);
  });

  it('names every hosted rotation function and makes its log group, with the retention, before its schedule', () => {
    const controlPlane = s.stacks.controlPlane;
    const schedules = Object.entries(resources(controlPlane)).filter(([, r]) => r.Type === 'AWS::SecretsManager::RotationSchedule');
    // The control login, and the application, monitor and mover logins of both shards.
    expect(schedules).toHaveLength(7);
    const names = new Set<string>();
    for (const [id, schedule] of schedules) {
      const name = (schedule.Properties?.['HostedRotationLambda'] as Json)['RotationLambdaName'];
      expect(typeof name, `${id}: RotationLambdaName`).toBe('string');
      expect(name as string).toMatch(/^ca-dms-dev-[A-Za-z0-9-]+$/);
      expect((name as string).length).toBeLessThanOrEqual(64);
      names.add(name as string);
      const group = logGroupNamed(controlPlane, `/aws/lambda/${name as string}`);
      expect(group, `${id}: no log group /aws/lambda/${name as string}`).toBeDefined();
      expect(group?.[1]['RetentionInDays']).toBe(s.config.logRetentionDays);
      // The schedule's creation runs the first rotation.
      expect(schedule.DependsOn ?? [], id).toContain(group?.[0]);
    }
    expect(names.size).toBe(schedules.length);
  });

  it("names every admin rotation application's function and makes its log group, with the retention, before the application", () => {
    const data = s.stacks.data;
    const applications = Object.entries(resources(data)).filter(([, r]) => r.Type === 'AWS::Serverless::Application');
    expect(applications).toHaveLength(s.config.database.shards);
    for (const [id, application] of applications) {
      const name = (application.Properties?.['Parameters'] as Json)['functionName'];
      expect(name, `${id}: functionName`).toMatch(/^ca-dms-dev-shard-\d{3}-admin-rotation$/);
      const group = logGroupNamed(data, `/aws/lambda/${name as string}`);
      expect(group, `${id}: no log group /aws/lambda/${name as string}`).toBeDefined();
      expect(group?.[1]['RetentionInDays']).toBe(s.config.logRetentionDays);
      expect(application.DependsOn ?? [], id).toContain(group?.[0]);
    }
  });
});

/** Every intrinsic function name in `value`, and every logical ID it refers to. */
function references(value: unknown): { functions: Set<string>; ids: Set<string> } {
  const functions = new Set<string>();
  const ids = new Set<string>();
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) return v.forEach(walk);
    if (v === null || typeof v !== 'object') return;
    for (const [key, inner] of Object.entries(v as Json)) {
      if (key === 'Ref' || key.startsWith('Fn::')) functions.add(key);
      if (key === 'Ref' && typeof inner === 'string' && !inner.startsWith('AWS::')) ids.add(inner);
      if (key === 'Fn::GetAtt' && Array.isArray(inner)) ids.add(String(inner[0]));
      walk(inner);
    }
  };
  walk(value);
  return { functions, ids };
}

describe('what the transforms read', () => {
  const transformed = (): Array<{ stack: Stack; id: string; input: unknown }> =>
    allStacks().flatMap((stack) =>
      Object.entries(resources(stack)).flatMap(([id, r]) => {
        if (r.Type === 'AWS::SecretsManager::RotationSchedule' && r.Properties?.['HostedRotationLambda']) return [{ stack, id, input: r.Properties['HostedRotationLambda'] }];
        if (r.Type === 'AWS::Serverless::Application') return [{ stack, id, input: r.Properties?.['Parameters'] }];
        return [];
      }),
    );

  it('finds the transforms of the control-plane and data stacks', () => {
    const json = (stack: Stack): Json => s.template(stack).toJSON() as Json;
    expect(json(s.stacks.controlPlane)['Transform']).toEqual(['AWS::SecretsManager-2024-09-16']);
    expect(json(s.stacks.data)['Transform']).toEqual(['AWS::Serverless-2016-10-31']);
    // 7 hosted rotations, 2 admin rotation applications.
    expect(transformed()).toHaveLength(9);
  });

  it('gives no transform a reference to another stack, only Ref, Fn::GetAtt and Fn::Join of its own template', () => {
    for (const { stack, id, input } of transformed()) {
      const { functions, ids } = references(input);
      const own = new Set(Object.keys(resources(stack)));
      expect([...functions].filter((f) => !['Ref', 'Fn::GetAtt', 'Fn::Join'].includes(f)), `${stack.stackName}/${id}`).toEqual([]);
      expect([...ids].filter((ref) => !own.has(ref)), `${stack.stackName}/${id}`).toEqual([]);
    }
  });
});
