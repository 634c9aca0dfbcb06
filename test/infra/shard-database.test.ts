/**
 * One ShardDatabase in a bare stack (no cdk-nag, no bundling: fast): what the first deploy and
 * the later ones depend on, for configurations the shipped environment files do not use.
 */
import { Duration, Stack } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as rds from 'aws-cdk-lib/aws-rds';
import { describe, expect, it } from 'vitest';
import { CLASSES_WITHOUT_PERFORMANCE_INSIGHTS, ShardDatabase, supportsPerformanceInsights } from '../../lib/data/shard-database.js';
import { SYNTH_HOOK_TIMEOUT_MS } from './support/synth.js';

function shardStack(props: { instanceClass: string; replicaClass?: string; version: string; autoMinorVersionUpgrade?: boolean; shardId?: string; namePrefix?: string }): Stack {
  const stack = new Stack();
  const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 0, subnetConfiguration: [{ name: 'data', subnetType: ec2.SubnetType.PRIVATE_ISOLATED }] });
  const clients = new ec2.SecurityGroup(stack, 'Clients', { vpc });
  const engine = rds.DatabaseInstanceEngine.postgres({ version: rds.PostgresEngineVersion.of(props.version, props.version.split('.')[0] as string) });
  new ShardDatabase(stack, 'Shard001', {
    vpc,
    subnets: { subnetGroupName: 'data' },
    rotationSubnets: { subnetGroupName: 'data' },
    shardId: props.shardId ?? 'shard-001',
    namePrefix: props.namePrefix ?? 'ca-dms-test',
    engine,
    parameterGroup: new rds.ParameterGroup(stack, 'Parameters', { engine }),
    encryptionKey: new kms.Key(stack, 'Key'),
    instanceType: new ec2.InstanceType(props.instanceClass),
    replicaInstanceType: new ec2.InstanceType(props.replicaClass ?? props.instanceClass),
    replicas: 2,
    availabilityZones: vpc.availabilityZones,
    secretRotation: Duration.days(30),
    clientSecurityGroups: [clients],
    proxyClientSecurityGroups: [clients],
    ...(props.autoMinorVersionUpgrade === undefined ? {} : { autoMinorVersionUpgrade: props.autoMinorVersionUpgrade }),
  });
  return stack;
}

const instances = (t: Template) => Object.values(t.findResources('AWS::RDS::DBInstance')) as Array<{ Properties: Record<string, unknown> }>;

describe('ShardDatabase', () => {
  it('turns Performance Insights off, with a warning, on the classes AWS documents without it, and keeps it elsewhere', () => {
    const stack = shardStack({ instanceClass: 't4g.medium', replicaClass: 't4g.small', version: '17' });
    const [primary, ...replicas] = instances(Template.fromStack(stack));
    expect(primary?.Properties['EnablePerformanceInsights']).toBe(true);
    for (const r of replicas) expect(r.Properties['EnablePerformanceInsights']).toBe(false);
    Annotations.fromStack(stack).hasWarning('/Default/Shard001', Match.stringLikeRegexp('db.t4g.small does not support Performance Insights'));
    expect(CLASSES_WITHOUT_PERFORMANCE_INSIGHTS.filter(supportsPerformanceInsights)).toEqual([]);
    expect(['t4g.medium', 'r7g.large', 'm7g.large'].every(supportsPerformanceInsights)).toBe(true);
  }, SYNTH_HOOK_TIMEOUT_MS);

  it('pins a full engine version with automatic minor upgrades off, so RDS never moves past the template', () => {
    for (const r of instances(Template.fromStack(shardStack({ instanceClass: 'r7g.large', version: '17.6', autoMinorVersionUpgrade: false })))) {
      expect(r.Properties['AutoMinorVersionUpgrade']).toBe(false);
    }
    const t = Template.fromStack(shardStack({ instanceClass: 'r7g.large', version: '17' }));
    t.hasResourceProperties('AWS::RDS::DBInstance', { EngineVersion: '17', AutoMinorVersionUpgrade: true });
  }, SYNTH_HOOK_TIMEOUT_MS);

  it('places a single-AZ primary in the first zone and its replicas round-robin from the next', () => {
    const azs = instances(Template.fromStack(shardStack({ instanceClass: 'r7g.large', version: '17' }))).map((r) => JSON.stringify(r.Properties['AvailabilityZone']));
    const zone = (i: number) => JSON.stringify({ 'Fn::Select': [i, { 'Fn::GetAZs': '' }] });
    expect(azs).toEqual([zone(0), zone(1), zone(0)]);
  }, SYNTH_HOOK_TIMEOUT_MS);

  it("names the admin rotation function after the shard, and refuses a prefix and shard id that make it longer than Lambda's 64 characters", () => {
    // The longest a deployment configuration makes (name 21 + '-' + environment 10): 32 + 1 + 9 + 15 = 57.
    const prefix = `${'n'.repeat(21)}-${'e'.repeat(10)}`;
    const t = Template.fromStack(shardStack({ instanceClass: 't4g.medium', version: '17', namePrefix: prefix }));
    t.hasResourceProperties('AWS::Serverless::Application', { Parameters: Match.objectLike({ functionName: `${prefix}-shard-001-admin-rotation` }) });
    // 32 + 1 + 17 + 15 = 65.
    expect(() => shardStack({ instanceClass: 't4g.medium', version: '17', namePrefix: prefix, shardId: 'shard-00000000001' })).toThrow(/longer than Lambda's 64 characters/);
  });

  it('gives the proxy egress to the primary on its port, and no other egress', () => {
    const t = Template.fromStack(shardStack({ instanceClass: 'r7g.large', version: '17' }));
    const proxySg = Object.entries(t.findResources('AWS::EC2::SecurityGroup')).find(([id]) => id.includes('ProxySg'));
    expect(proxySg?.[1]).not.toHaveProperty('Properties.SecurityGroupEgress');
    const egress = Object.values(t.findResources('AWS::EC2::SecurityGroupEgress')) as Array<{ Properties: Record<string, unknown> }>;
    const fromProxy = egress.filter((e) => JSON.stringify(e.Properties['GroupId']).includes(proxySg?.[0] as string));
    expect(fromProxy).toHaveLength(1);
    expect(fromProxy[0]?.Properties).toMatchObject({ IpProtocol: 'tcp', FromPort: { 'Fn::GetAtt': [expect.stringContaining('Primary'), 'Endpoint.Port'] } });
  }, SYNTH_HOOK_TIMEOUT_MS);
});
