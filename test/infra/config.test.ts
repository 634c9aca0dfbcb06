/**
 * The deployment configuration: defaults for a first deploy, every offending path named when
 * it is invalid, and the way `config/<env>.json`, the CDK context and the guide's environment
 * variables combine.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DeploymentConfigError, mergeConfig, parseDeploymentConfig, type ConfigIssue } from '../../lib/config/deployment-config.js';
import { loadDeploymentConfig } from '../../lib/config/load-config.js';
import { ROOT } from './support/paths.js';
import { problemsOf } from './support/config-issues.js';

function issuesOf(input: unknown): string[] {
  try {
    parseDeploymentConfig(input);
  } catch (error) {
    if (error instanceof DeploymentConfigError) return error.issues.map((i) => i.path);
    throw error;
  }
  throw new Error('expected the configuration to be rejected');
}

function contextOf(values: Record<string, unknown>): (key: string) => unknown {
  return (key) => values[key];
}

describe('parseDeploymentConfig', () => {
  it('accepts an empty document with the guide defaults for a first deploy', () => {
    const config = parseDeploymentConfig({});

    expect(config.database).toMatchObject({ shards: 2, replicasPerShard: 1, backupRetentionDays: 7, postgresVersion: '17' });
    expect(config.bounds.worker).toEqual({ min: 2, max: 10 });
    expect(config.checkIntervalSeconds).toBe(30);
    expect(config.domain).toBeUndefined();
  });

  it('names every offending path at once, including those under scaling', () => {
    const paths = issuesOf({
      database: { shards: 0, backupRetentionDays: 3, instanceClass: 'db.t4g.medium' },
      services: { worker: { cpu: 256, memoryMiB: 4096 } },
      domain: { certificateArn: 'not-an-arn' },
      scaling: { min_instances: 12, max_instances: 4 },
    });

    expect(paths).toEqual(
      expect.arrayContaining([
        'database.shards',
        'database.backupRetentionDays',
        'database.instanceClass',
        'domain.certificateArn',
        'services.worker.memoryMiB',
        'scaling.min_instances',
      ]),
    );
  });

  it('refuses a network without NAT, naming what would be unreachable (no SQS, SSM, ECS or RDS API endpoint)', () => {
    let issues: readonly ConfigIssue[] = [];
    try {
      parseDeploymentConfig({ network: { natGateways: 0 } });
    } catch (error) {
      if (error instanceof DeploymentConfigError) issues = error.issues;
    }
    expect(issues).toEqual([expect.objectContaining({ path: 'network.natGateways', message: expect.stringContaining('SQS') })]);
  });

  it('refuses a private ECR image as a registry image (no pull permission for it), and takes a public one', () => {
    const registry = (uri: string) => ({ services: { frontend: { image: { kind: 'registry', uri } } } });
    for (const uri of ['123456789012.dkr.ecr.eu-west-1.amazonaws.com/ca-dms/frontend:1.2.3', '123456789012.dkr.ecr-fips.us-east-1.amazonaws.com/app@sha256:' + 'a'.repeat(64)]) {
      expect(issuesOf(registry(uri)), uri).toEqual(['services.frontend.image.uri']);
    }
    expect(parseDeploymentConfig(registry('public.ecr.aws/example/frontend:1.2.3')).services.frontend.image).toMatchObject({ kind: 'registry' });
    expect(parseDeploymentConfig(registry('ghcr.io/example/frontend:1.2.3')).services.frontend.image).toMatchObject({ kind: 'registry' });
  });

  it('rejects unknown keys, naming them', () => {
    expect(issuesOf({ databse: { shards: 2 }, network: { maxAZs: 3 } }).sort()).toEqual(['databse', 'network.maxAZs']);
  });

  it('rejects scaling bounds for a service that does not exist', () => {
    expect(issuesOf({ scaling: { services: { 'backend-raed': { min_instances: 1 } } } })).toEqual(['scaling.services.backend-raed']);
  });

  it('takes each service bounds from the scaling configuration', () => {
    const config = parseDeploymentConfig({ scaling: { min_instances: 1, services: { frontend: { max_instances: 4 } } } });

    expect(config.bounds.frontend).toEqual({ min: 1, max: 4 });
    expect(config.bounds['backend-read']).toEqual({ min: 1, max: 10 });
  });

  it('rejects a log retention CloudWatch Logs does not offer', () => {
    expect(issuesOf({ logRetentionDays: 10, network: { flowLogRetentionDays: 45 } }).sort()).toEqual(['logRetentionDays', 'network.flowLogRetentionDays']);
  });

  it('rejects storage autoscaling below the allocated storage', () => {
    expect(issuesOf({ database: { allocatedStorageGiB: 100, maxAllocatedStorageGiB: 50 } })).toEqual(['database.maxAllocatedStorageGiB']);
  });
});

describe('mergeConfig', () => {
  it('merges objects key by key and lets arrays and scalars replace', () => {
    expect(mergeConfig({ a: { b: 1, c: [1, 2] }, d: 1 }, { a: { c: [3] }, d: 2 })).toEqual({ a: { b: 1, c: [3] }, d: 2 });
  });
});

describe('domain and HTTPS', () => {
  it('refuses production without a domain, naming domain', () => {
    expect(problemsOf({ production: true })).toEqual([expect.objectContaining({ path: 'domain', message: expect.stringContaining('HTTPS') })]);
    expect(problemsOf({ production: false })).toEqual([]);
  });

  it('takes a certificate ARN, or a hosted zone with a domain name inside it', () => {
    expect(problemsOf({ production: true, domain: { certificateArn: 'arn:aws:acm:eu-west-1:123456789012:certificate/abc-123' } })).toEqual([]);
    expect(problemsOf({ domain: { domainName: 'dms.example.com', hostedZone: { id: 'Z0123456789ABCDEFGHIJ', name: 'example.com' } } })).toEqual([]);
    expect(problemsOf({ domain: { hostedZone: { id: 'Z0123456789ABCDEFGHIJ', name: 'example.com' } } }).map((i) => i.path)).toEqual(['domain.domainName']);
    expect(problemsOf({ domain: { domainName: 'dms.example.org', hostedZone: { id: 'Z0123456789ABCDEFGHIJ', name: 'example.com' } } })).toEqual([
      expect.objectContaining({ path: 'domain.domainName', message: 'must be in the hosted zone example.com' }),
    ]);
    expect(problemsOf({ domain: { domainName: 'dms.example.com' } }).map((i) => i.path)).toEqual(['domain.certificateArn']);
  });
});

describe('loadDeploymentConfig', () => {
  function configDir(files: Record<string, unknown>): string {
    const dir = mkdtempSync(join(tmpdir(), 'ca-dms-config-'));
    for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), JSON.stringify(content));
    return dir;
  }

  it('reads the file of the environment named in the context', () => {
    const dir = configDir({ 'prod.json': { production: true, database: { shards: 4 }, domain: { certificateArn: 'arn:aws:acm:eu-west-1:123456789012:certificate/abc-123' } } });

    const config = loadDeploymentConfig({ configDir: dir, context: contextOf({ 'ca-dms:environment': 'prod' }) });

    expect(config).toMatchObject({ environment: 'prod', production: true, database: { shards: 4 } });
  });

  it('lays the ca-dms:config context over the file, as an object or as JSON text', () => {
    const dir = configDir({ 'dev.json': { database: { shards: 4, replicasPerShard: 2 } } });

    const fromObject = loadDeploymentConfig({ configDir: dir, context: contextOf({ 'ca-dms:config': { database: { shards: 3 } } }) });
    const fromText = loadDeploymentConfig({ configDir: dir, context: contextOf({ 'ca-dms:config': '{"database":{"shards":5}}' }) });

    expect(fromObject.database).toMatchObject({ shards: 3, replicasPerShard: 2 });
    expect(fromText.database).toMatchObject({ shards: 5, replicasPerShard: 2 });
  });

  it("honours the guide's SCALING_CHECK_INTERVAL, MIN_INSTANCES and MAX_INSTANCES", () => {
    const dir = configDir({ 'dev.json': {} });

    const config = loadDeploymentConfig({
      configDir: dir,
      context: contextOf({}),
      env: { SCALING_CHECK_INTERVAL: '120', MIN_INSTANCES: '3', MAX_INSTANCES: '7' },
    });

    expect(config.checkIntervalSeconds).toBe(120);
    expect(config.bounds.worker).toEqual({ min: 3, max: 7 });
  });

  it('names a malformed environment variable', () => {
    const dir = configDir({ 'dev.json': {} });

    expect(() => loadDeploymentConfig({ configDir: dir, context: contextOf({}), env: { MIN_INSTANCES: 'two' } })).toThrow(/env\.MIN_INSTANCES/);
  });

  it('names the missing file of an unknown environment', () => {
    const dir = configDir({});

    expect(() => loadDeploymentConfig({ configDir: dir, context: contextOf({ 'ca-dms:environment': 'stage' }) })).toThrow(/stage\.json/);
  });

  it('accepts both shipped environment files, prod once given its domain (it ships none)', () => {
    const load = (context: Record<string, unknown>) => () => loadDeploymentConfig({ configDir: join(ROOT, 'config'), context: contextOf(context) });
    expect(load({ 'ca-dms:environment': 'dev' })).not.toThrow();
    expect(load({ 'ca-dms:environment': 'prod' })).toThrow(/domain: production serves HTTPS only/);
    expect(load({ 'ca-dms:environment': 'prod', 'ca-dms:config': { domain: { certificateArn: 'arn:aws:acm:eu-west-1:123456789012:certificate/abc-123' } } })).not.toThrow();
  });
});

describe('bin/app.ts', () => {
  it('fails synthesis naming every offending path of an invalid configuration', () => {
    const result = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'bin', 'app.ts')], {
      cwd: ROOT,
      encoding: 'utf8',
      env: {
        ...process.env,
        CDK_CONTEXT_JSON: JSON.stringify({ 'ca-dms:config': { database: { shards: -1 }, network: { maxAzs: 1 } } }),
        CDK_OUTDIR: mkdtempSync(join(tmpdir(), 'ca-dms-cdk-')),
      },
    });

    expect(result.status).toBe(1);
    expect(result.stderr).toContain('database.shards');
    expect(result.stderr).toContain('network.maxAzs');
    // A child that loads tsx, aws-cdk-lib and the stacks: 7-12 s of its own, over 30 s at load 10.
  }, 90_000);
});
