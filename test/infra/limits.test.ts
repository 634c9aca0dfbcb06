/**
 * AWS limits a configuration can break at `cdk deploy` although it synthesizes: each is checked
 * where the configuration is read (or the construct built), so the deployer learns it at synth
 * with the path to change, not half-way through a stack creation. Every limit cites the AWS page
 * that states it.
 */
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { App, Stack } from 'aws-cdk-lib';
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as rds from 'aws-cdk-lib/aws-rds';
import { describe, expect, it } from 'vitest';
import type { ConfigIssue } from '../../lib/config/deployment-config.js';
import { minimumMaxAllocatedStorageGiB, ShardDatabase } from '../../lib/data/shard-database.js';
import { DEFAULT_DB_INSTANCE_QUOTA, MAX_STACK_RESOURCES, type DataStack } from '../../lib/stacks/data-stack.js';
import { ALB_IDLE_TIMEOUT_SECONDS } from '../../containers/nginx/render.js';
import { deployable, ROOT, SYNTH_HOOK_TIMEOUT_MS, synthesize, unbundledStage } from './support/synth.js';
import { configIssuesOf, problemsOf } from './support/config-issues.js';


describe('RDS storage autoscaling (USER_PIOPS.Autoscaling: the ceiling at least 10% above the allocated storage)', () => {
  // https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_PIOPS.Autoscaling.html
  it('refuses a ceiling less than 10% above the allocated storage, naming the lowest RDS accepts', () => {
    expect(problemsOf({ database: { allocatedStorageGiB: 200 } })).toEqual([
      expect.objectContaining({ path: 'database.maxAllocatedStorageGiB', message: expect.stringContaining('at least 220') }),
    ]);
    expect(problemsOf({ database: { allocatedStorageGiB: 100, maxAllocatedStorageGiB: 109 } }).map((i) => i.path)).toEqual(['database.maxAllocatedStorageGiB']);
  });

  it('accepts a ceiling exactly 10% above, and the defaults', () => {
    expect(problemsOf({ database: { allocatedStorageGiB: 100, maxAllocatedStorageGiB: 110 } })).toEqual([]);
    expect(problemsOf({})).toEqual([]);
  });

  it('is enforced by ShardDatabase itself, for stacks built without the configuration', () => {
    const stack = new Stack();
    const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 0, subnetConfiguration: [{ name: 'data', subnetType: ec2.SubnetType.PRIVATE_ISOLATED }] });
    const engine = rds.DatabaseInstanceEngine.postgres({ version: rds.PostgresEngineVersion.of('17', '17') });
    const build = (): ShardDatabase =>
      new ShardDatabase(stack, 'Shard001', {
        vpc,
        subnets: { subnetGroupName: 'data' },
        rotationSubnets: { subnetGroupName: 'data' },
        shardId: 'shard-001',
        namePrefix: 'ca-dms-test',
        engine,
        parameterGroup: new rds.ParameterGroup(stack, 'Parameters', { engine }),
        encryptionKey: new kms.Key(stack, 'Key'),
        instanceType: new ec2.InstanceType('t4g.medium'),
        allocatedStorageGiB: 100,
        maxAllocatedStorageGiB: 105,
        clientSecurityGroups: [new ec2.SecurityGroup(stack, 'Clients', { vpc })],
        proxyClientSecurityGroups: [],
      });
    // One attempt only: a second would collide with the construct ids the first left behind.
    expect(build).toThrow(/invalid ShardDatabase props:\n {2}- maxAllocatedStorageGiB \(105\) must be at least 110/);
  });

  it('rounds the lowest ceiling up to whole GiB', () => {
    expect([20, 50, 1000, 65536].map(minimumMaxAllocatedStorageGiB)).toEqual([22, 55, 1100, 72090]);
  });
});

describe('the HTTPS certificate (acm-regions: ACM certificates are regional and cannot be copied between regions)', () => {
  // https://docs.aws.amazon.com/acm/latest/userguide/acm-regions.html
  const certificate = (region: string) => `arn:aws:acm:${region}:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0`;

  it("refuses a certificate of another region than the load balancer's, naming both", () => {
    expect(problemsOf({ region: 'eu-west-1', domain: { certificateArn: certificate('us-east-1') } })).toEqual([
      expect.objectContaining({ path: 'domain.certificateArn', message: expect.stringMatching(/us-east-1.*eu-west-1/) }),
    ]);
  });

  it("accepts a certificate of the load balancer's region", () => {
    expect(problemsOf({ region: 'eu-central-1', production: true, domain: { certificateArn: certificate('eu-central-1') } })).toEqual([]);
  });
});

describe('the nginx sidecar, which refuses at start what it cannot run (containers/nginx/render.ts): on ECS no task would start', () => {
  // https://docs.aws.amazon.com/elasticloadbalancing/latest/application/edit-load-balancer-attributes.html#connection-idle-timeout
  it("refuses a keep-alive no longer than the load balancer's 60 s idle timeout (502s), naming nginx.keepaliveTimeout", () => {
    expect(ALB_IDLE_TIMEOUT_SECONDS).toBe(60);
    for (const keepaliveTimeout of [30, 60]) {
      expect(problemsOf({ nginx: { keepaliveTimeout } })).toEqual([expect.objectContaining({ path: 'nginx.keepaliveTimeout', message: expect.stringContaining('NGINX_KEEPALIVE_TIMEOUT') })]);
    }
    expect(problemsOf({ nginx: { keepaliveTimeout: 61 } })).toEqual([]);
  });

  it('refuses the worker settings and the port the sidecar refuses, each at its path', () => {
    expect(problemsOf({ nginx: { workerConnections: 64, workerProcesses: 300, port: 8081 } }).map((i) => i.path).sort()).toEqual(['nginx.port', 'nginx.workerConnections', 'nginx.workerProcesses']);
    expect(problemsOf({ nginx: { workerConnections: 128, workerProcesses: 256, port: 8090 } })).toEqual([]);
  });
});

describe("the demo backend's health check", () => {
  it('refuses a health check path the demo backend does not answer (no task would become healthy), and takes one for an image of your own', () => {
    expect(problemsOf({ services: { 'backend-read': { healthCheckPath: '/healthz' } } })).toEqual([
      expect.objectContaining({ path: 'services.backend-read.healthCheckPath', message: expect.stringContaining('/health and /health/readonly') }),
    ]);
    expect(problemsOf({ services: { 'backend-read': { healthCheckPath: '/health/readonly' } } })).toEqual([]);
    expect(problemsOf({ services: { 'backend-read': { healthCheckPath: '/healthz', image: { kind: 'registry', uri: 'public.ecr.aws/org/app:1.0.0' } } } })).toEqual([]);
  });
});

/**
 * The data stack of a stage for `database` (unbundled: fast): the other stacks add rules to its
 * security groups, so it is counted within its stage.
 */
function dataStack(database: Record<string, unknown>): DataStack {
  return unbundledStage({ database }).data;
}

const dataStackError = (database: Record<string, unknown>): ConfigIssue[] => configIssuesOf(() => dataStack(database));

describe('shards of one data stack (cloudformation-limits: 500 resources a stack; CHAP_Limits: 40 DB instances a region by default)', () => {
  // https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html
  it('refuses more shards than one stack holds, naming database.shards and the most that fit, which do fit', () => {
    // Not far beyond: from 20 shards the sharding configuration outgrows its SSM parameter first.
    const [issue, ...others] = dataStackError({ shards: 16, replicasPerShard: 1 });
    expect(others).toEqual([]);
    expect(issue).toMatchObject({ path: 'database.shards', message: expect.stringMatching(/^16 shards of 2 instances \(database.replicasPerShard 1\) make \d+ resources .* at most \d+ shards with this many replicas$/) });
    const fitting = Number(/at most (\d+) shards/.exec(issue?.message ?? '')?.[1]);

    // The most that fit do fit: the stage synthesizes (CDK refuses a template over 500), and
    // the template has at most 500 resources.
    const largest = dataStack({ shards: fitting, replicasPerShard: 1 });
    const assembly = App.of(largest)?.synth().getNestedAssembly('assembly-Dev');
    try {
      const template = assembly?.getStackArtifact(largest.artifactId).template as { Resources: object } | undefined;
      expect(Object.keys(template?.Resources ?? {}).length).toBeGreaterThan(MAX_STACK_RESOURCES - 40);
      expect(Object.keys(template?.Resources ?? {}).length).toBeLessThanOrEqual(MAX_STACK_RESOURCES);
    } finally {
      if (assembly) rmSync(dirname(assembly.directory), { recursive: true, force: true });
    }
    expect(dataStackError({ shards: fitting + 1, replicasPerShard: 1 }).map((i) => i.path)).toEqual(['database.shards']);
  }, SYNTH_HOOK_TIMEOUT_MS);

  // https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_Limits.html
  it('warns when the shards need more DB instances than the default RDS quota, and not below it', () => {
    const over = dataStack({ shards: 7, replicasPerShard: 5 });
    expect(7 * 6).toBeGreaterThan(DEFAULT_DB_INSTANCE_QUOTA);
    Annotations.fromStack(over).hasWarning('/Dev/data', Match.stringLikeRegexp('42 DB instances .*RDS allows 40 a region by default'));
    expect(Annotations.fromStack(dataStack({ shards: 8, replicasPerShard: 4 })).findWarning('/Dev/data', Match.stringLikeRegexp('DB instances'))).toEqual([]);
  }, SYNTH_HOOK_TIMEOUT_MS);
});

/**
 * The shipped environments (config/*.json; prod with the domain it must have),
 * synthesized once each per test run (shared with the other infra tests), against the quotas a first deploy in a new account meets. Each limit is the
 * documented one; references are counted at {@link TOKEN_SIZE}, above any ARN or name they
 * resolve to here.
 */
const TOKEN_SIZE = 256;
const configs = readdirSync(join(ROOT, 'config')).filter((f) => f.endsWith('.json'));

interface CfnTemplate {
  readonly Description?: string;
  readonly Resources: Record<string, { Type: string; Properties?: Record<string, unknown> }>;
  readonly Outputs?: Record<string, unknown>;
  readonly Parameters?: Record<string, unknown>;
  readonly Mappings?: Record<string, unknown>;
}

/** The characters of `value` as JSON without whitespace, each reference at {@link TOKEN_SIZE}. */
function resolvedJsonLength(value: unknown): number {
  if (typeof value === 'string') return value.length + 2;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value).length;
  if (Array.isArray(value)) return value.reduce((sum: number, v) => sum + resolvedJsonLength(v) + 1, 1);
  if (typeof value === 'object' && value !== null) {
    const keys = Object.keys(value);
    const join = (value as Record<string, unknown>)['Fn::Join'];
    if (keys.length === 1 && Array.isArray(join) && Array.isArray(join[1])) {
      return (join[1] as unknown[]).reduce((sum: number, part) => sum + (typeof part === 'string' ? part.length : TOKEN_SIZE), 2);
    }
    if (keys.length === 1 && (keys[0] === 'Ref' || keys[0]?.startsWith('Fn::'))) return TOKEN_SIZE;
    return Object.entries(value).reduce((sum: number, [k, v]) => sum + k.length + 3 + resolvedJsonLength(v), 1);
  }
  return 0;
}

describe.each(configs)('config/%s within the quotas of a first deploy', (file) => {
  const raw = JSON.parse(readFileSync(join(ROOT, 'config', file), 'utf8')) as { production?: boolean };
  const s = synthesize(deployable(raw));
  const templates = Object.values(s.stacks).map((stack) => ({ name: stack.stackName, path: s.templatePath(stack), t: s.template(stack).toJSON() as CfnTemplate }));
  const resources = (type: string) => templates.flatMap(({ name, t }) => Object.entries(t.Resources).filter(([, r]) => r.Type === type).map(([id, r]) => ({ id: `${name}/${id}`, p: r.Properties ?? {} })));

  it('synthesizes', () => {
    expect(s.error).toBeUndefined();
  });

  // https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html
  it('keeps every template within CloudFormation: 500 resources, 200 outputs, parameters and mappings, 1 MB, 60 dynamic references, 255-character logical ids', () => {
    for (const { name, path, t } of templates) {
      expect(Object.keys(t.Resources).length, name).toBeLessThanOrEqual(500);
      expect(Object.keys(t.Outputs ?? {}).length, name).toBeLessThanOrEqual(200);
      expect(Object.keys(t.Parameters ?? {}).length, name).toBeLessThanOrEqual(200);
      expect(Object.keys(t.Mappings ?? {}).length, name).toBeLessThanOrEqual(200);
      expect(statSync(path).size, name).toBeLessThanOrEqual(1_000_000);
      expect(Buffer.byteLength(t.Description ?? '', 'utf8'), name).toBeLessThanOrEqual(1024);
      expect(JSON.stringify(t).split('{{resolve:').length - 1, name).toBeLessThanOrEqual(60);
      for (const id of [...Object.keys(t.Resources), ...Object.keys(t.Outputs ?? {})]) expect(id.length, `${name}/${id}`).toBeLessThanOrEqual(255);
    }
  });

  // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html: a role's
  // inline policies together at most 10,240 characters (whitespace not counted); 10 managed
  // policies per role by default.
  it("keeps every role's inline policies within 10,240 characters and its managed policies within 10", () => {
    const inline = new Map<string, number>();
    for (const { id, p } of resources('AWS::IAM::Policy')) {
      for (const role of (p['Roles'] as Array<{ Ref?: string }> | undefined) ?? []) {
        const key = `${id.split('/')[0]}/${role.Ref ?? JSON.stringify(role)}`;
        inline.set(key, (inline.get(key) ?? 0) + resolvedJsonLength(p['PolicyDocument']));
      }
    }
    for (const { id, p } of resources('AWS::IAM::Role')) {
      const own = ((p['Policies'] as Array<{ PolicyDocument: unknown }> | undefined) ?? []).reduce((sum, x) => sum + resolvedJsonLength(x.PolicyDocument), 0);
      inline.set(id, (inline.get(id) ?? 0) + own);
      expect(((p['ManagedPolicyArns'] as unknown[] | undefined) ?? []).length, id).toBeLessThanOrEqual(10);
    }
    expect(inline.size).toBeGreaterThan(5);
    for (const [role, size] of inline) expect(size, role).toBeLessThanOrEqual(10_240);
  });

  // https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html: 60 inbound and 60
  // outbound rules per security group, 5 security groups per network interface (defaults).
  it('keeps every security group within 60 rules each way, and every network interface within 5 groups', () => {
    const rules = new Map<string, { in: number; out: number }>();
    const count = (group: unknown, way: 'in' | 'out', n: number) => {
      const key = JSON.stringify(group);
      const r = rules.get(key) ?? { in: 0, out: 0 };
      r[way] += n;
      rules.set(key, r);
    };
    for (const { name, t } of templates) {
      for (const [id, r] of Object.entries(t.Resources)) {
        const p = r.Properties ?? {};
        if (r.Type === 'AWS::EC2::SecurityGroup') {
          const self = { 'Fn::GetAtt': [id, 'GroupId'], stack: name };
          count(self, 'in', ((p['SecurityGroupIngress'] as unknown[] | undefined) ?? []).length);
          count(self, 'out', ((p['SecurityGroupEgress'] as unknown[] | undefined) ?? []).length);
        }
        if (r.Type === 'AWS::EC2::SecurityGroupIngress') count({ ...(p['GroupId'] as object), stack: name }, 'in', 1);
        if (r.Type === 'AWS::EC2::SecurityGroupEgress') count({ ...(p['GroupId'] as object), stack: name }, 'out', 1);
      }
    }
    expect(rules.size).toBeGreaterThan(5);
    for (const [group, r] of rules) {
      expect(r.in, group).toBeLessThanOrEqual(60);
      expect(r.out, group).toBeLessThanOrEqual(60);
    }
    const groupsPerInterface = [
      ...resources('AWS::Lambda::Function').map(({ id, p }) => [id, (p['VpcConfig'] as { SecurityGroupIds?: unknown[] } | undefined)?.SecurityGroupIds] as const),
      ...resources('AWS::ECS::Service').map(({ id, p }) => [id, (p['NetworkConfiguration'] as { AwsvpcConfiguration: { SecurityGroups?: unknown[] } }).AwsvpcConfiguration.SecurityGroups] as const),
      ...resources('AWS::RDS::DBInstance').map(({ id, p }) => [id, p['VPCSecurityGroups'] as unknown[] | undefined] as const),
      ...resources('AWS::RDS::DBProxy').map(({ id, p }) => [id, p['VpcSecurityGroupIds'] as unknown[] | undefined] as const),
      ...resources('AWS::EC2::VPCEndpoint').map(({ id, p }) => [id, p['SecurityGroupIds'] as unknown[] | undefined] as const),
    ];
    for (const [id, groups] of groupsPerInterface) expect((groups ?? []).length, id).toBeLessThanOrEqual(5);
  });

  // https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html:
  // for a period under an hour, Period x EvaluationPeriods at most one day; DatapointsToAlarm
  // at most EvaluationPeriods.
  it('keeps every alarm within one day of evaluation, with no more datapoints to alarm than it evaluates', () => {
    const alarms = resources('AWS::CloudWatch::Alarm');
    expect(alarms.length).toBeGreaterThan(10);
    for (const { id, p } of alarms) {
      const evaluations = p['EvaluationPeriods'] as number;
      const periods = [p['Period'] as number | undefined, ...((p['Metrics'] as Array<{ MetricStat?: { Period: number } }> | undefined) ?? []).map((m) => m.MetricStat?.Period)].filter((x): x is number => x !== undefined);
      expect(periods.length, id).toBeGreaterThan(0);
      for (const period of periods) expect(period * evaluations, id).toBeLessThanOrEqual(period < 3600 ? 86_400 : 604_800);
      expect((p['DatapointsToAlarm'] as number | undefined) ?? evaluations, id).toBeLessThanOrEqual(evaluations);
    }
  });

  // API Gateway's REST integrations time out after 29 s by default
  // (https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html): a longer
  // function would keep running after the caller got a 504.
  it("lets no API Gateway-invoked function run past API Gateway's 29 s integration timeout", () => {
    const invoked = new Set(
      resources('AWS::ApiGateway::Method').map(({ p }) => JSON.stringify(((p['Integration'] as { Uri?: { 'Fn::Join': [string, unknown[]] } }).Uri?.['Fn::Join'][1] ?? [])[1])),
    );
    const functions = resources('AWS::Lambda::Function').filter(({ id }) => invoked.has(JSON.stringify({ 'Fn::GetAtt': [id.split('/')[1], 'Arn'] })));
    expect(functions).toHaveLength(1);
    for (const { id, p } of functions) expect(p['Timeout'] as number, id).toBeLessThanOrEqual(29);
  });
});
