/**
 * AWS limits a configuration can break at `cdk deploy` although it synthesizes: each is checked
 * where the configuration is read (or the construct built), so the deployer learns it at synth
 * with the path to change, not half-way through a stack creation. Every limit cites the AWS page
 * that states it.
 */
import { Stack } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as rds from 'aws-cdk-lib/aws-rds';
import { describe, expect, it } from 'vitest';
import { DeploymentConfigError, parseDeploymentConfig, type ConfigIssue } from '../../lib/config/deployment-config.js';
import { minimumMaxAllocatedStorageGiB, ShardDatabase } from '../../lib/data/shard-database.js';

function problemsOf(input: unknown): ConfigIssue[] {
  try {
    parseDeploymentConfig(input);
    return [];
  } catch (error) {
    if (error instanceof DeploymentConfigError) return [...error.issues];
    throw error;
  }
}

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
