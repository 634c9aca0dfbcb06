import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { estimate, priceFileSchema, type Line, type Templates } from '../../../scripts/cost-estimate.js';
import { ROOT } from '../../infra/support/paths.js';

const prices = priceFileSchema.parse(JSON.parse(readFileSync(join(ROOT, 'scripts', 'prices-us-east-1.json'), 'utf8')));
const H = prices.hoursPerMonth;

/** A data stack's shape: one Multi-AZ primary with a replica and a proxy, one service scaled from 3 tasks. */
const TEMPLATES: Templates = [
  {
    name: 'data',
    resources: {
      Primary: { Type: 'AWS::RDS::DBInstance', Properties: { DBInstanceClass: 'db.t4g.medium', MultiAZ: true, AllocatedStorage: '100' } },
      Replica: { Type: 'AWS::RDS::DBInstance', Properties: { DBInstanceClass: 'db.t4g.medium', SourceDBInstanceIdentifier: { 'Fn::Join': ['', ['arn:aws:rds:::db:', { Ref: 'Primary' }]] } } },
      Proxy: { Type: 'AWS::RDS::DBProxy', Properties: {} },
      ProxyTargets: { Type: 'AWS::RDS::DBProxyTargetGroup', Properties: { DBProxyName: { Ref: 'Proxy' }, DBInstanceIdentifiers: [{ Ref: 'Primary' }] } },
      Key: { Type: 'AWS::KMS::Key' },
    },
  },
  {
    name: 'services',
    resources: {
      Task: { Type: 'AWS::ECS::TaskDefinition', Properties: { Cpu: '1024', Memory: '2048', RuntimePlatform: { CpuArchitecture: 'X86_64' } } },
      ReadService12345678: { Type: 'AWS::ECS::Service', Properties: { TaskDefinition: { Ref: 'Task' } } },
      ReadTarget: { Type: 'AWS::ApplicationAutoScaling::ScalableTarget', Properties: { MinCapacity: 3, ResourceId: { 'Fn::Join': ['', ['service/c/', { 'Fn::GetAtt': ['ReadService12345678', 'Name'] }]] } } },
      Alarm: { Type: 'AWS::CloudWatch::Alarm', Properties: { Metrics: [{ MetricStat: {} }, { MetricStat: {} }, { Expression: 'm1+m2' }] } },
      Fn: { Type: 'AWS::Lambda::Function', Properties: { MemorySize: 1024, Architectures: ['arm64'] } },
      Every5: { Type: 'AWS::Events::Rule', Properties: { ScheduleExpression: 'rate(5 minutes)', Targets: [{ Arn: { 'Fn::GetAtt': ['Fn', 'Arn'] } }] } },
    },
  },
];

const line = (lines: readonly Line[], item: string): Line => {
  const found = lines.find((l) => l.item.startsWith(item));
  if (!found) throw new Error(`no line ${item} in ${lines.map((l) => l.item).join(', ')}`);
  return found;
};

describe('cost estimate from synthesized templates', () => {
  const e = estimate(TEMPLATES, prices, { lambdaSeconds: 2 });
  const t4g = prices.rates.rdsInstanceHour['db.t4g.medium']?.usd ?? NaN;

  it('bills a Multi-AZ primary and its storage twice, a replica once with its source\'s storage', () => {
    expect(line(e.fixed, 'RDS PostgreSQL primary db.t4g.medium Multi-AZ').monthly).toBeCloseTo(t4g * 2 * H);
    expect(line(e.fixed, 'RDS gp3 storage (primary, Multi-AZ)').monthly).toBeCloseTo(100 * 0.115 * 2);
    expect(line(e.fixed, 'RDS PostgreSQL read replica db.t4g.medium').monthly).toBeCloseTo(t4g * H);
    expect(line(e.fixed, 'RDS gp3 storage (replica)').monthly).toBeCloseTo(100 * 0.115);
  });

  it('bills a proxy for the vCPUs of the instance behind it', () => {
    expect(line(e.fixed, 'RDS Proxy').monthly).toBeCloseTo(2 * 0.015 * H);
  });

  it('runs each service at its scalable target\'s minimum', () => {
    const read = line(e.fixed, 'Fargate Read');

    expect(read.count).toBe(3);
    expect(read.monthly).toBeCloseTo(3 * (1 * 0.04048 + 2 * 0.004445) * H);
  });

  it('counts one alarm metric per metric an alarm reads, and the scheduled invocations of a function', () => {
    expect(line(e.fixed, 'CloudWatch alarms').monthly).toBeCloseTo(2 * 0.1);
    const invocations = (H * 60) / 5;
    expect(line(e.usage, 'Lambda').monthly).toBeCloseTo((invocations / 1e6) * 0.2 + invocations * 1 * 2 * 0.0000133334);
  });

  it('leaves an instance class without a rate out of the total and names it', () => {
    const unknown: Templates = [{ name: 'x', resources: { Db: { Type: 'AWS::RDS::DBInstance', Properties: { DBInstanceClass: 'db.x9.huge', AllocatedStorage: 20 } } } }];
    const u = estimate(unknown, prices, { lambdaSeconds: 1 });

    expect(u.unpriced).toContain('rdsInstanceHour.db.x9.huge');
    expect(u.fixedTotal).toBeCloseTo(20 * 0.115);
  });
});
