/**
 * The CA-DMS stacks as synthesized from `config/dev.json`: what each stack must contain, and
 * that cdk-nag's AwsSolutions pack and the CloudFormation validation find nothing left
 * unacknowledged.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CfnResource, Stack } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import { CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeAll, describe, expect, it } from 'vitest';
import { CloudWatchMetricsSource } from '../../functions/adapters/aws/cloudwatch-metrics.js';
import { parseTopology, RESPONSE_TIME_STATISTIC } from '../../functions/adapters/aws/topology.js';
import { parseScalingConfig } from '../../functions/core/scaling/config.js';
import { SERVICE_NAMES } from '../../lib/config/deployment-config.js';
import { SCALING_API_ROUTES } from '../../lib/control-plane/scaling-api.js';
import { GUARD_EXEMPTIONS } from '../../lib/guard.js';
import { scalingApiDocument } from '../../functions/api/routes.js';
import { METRICS_SERVICE } from '../../functions/handlers/shared/powertools.js';
import { CONTROLLER_METRICS_SERVICE } from '../../lib/observability/scaling-dashboard.js';
import { RDS_LOG_EXPORTS } from '../../lib/data/shard-database.js';
import { APP_CONTAINER, NGINX_CONTAINER, NGINX_MEMORY_MIB } from '../../lib/services/sidecar-service.js';
import { resourcesOf, ROOT, synthesize, SYNTH_HOOK_TIMEOUT_MS, type Synthesized } from './support/synth.js';

type Json = Record<string, unknown>;

let s: Synthesized;
const devConfig = JSON.parse(readFileSync(join(ROOT, 'config', 'dev.json'), 'utf8')) as Json;

beforeAll(() => {
  s = synthesize(devConfig);
}, SYNTH_HOOK_TIMEOUT_MS);

function logicalId(stack: Stack, construct: { node: { defaultChild?: unknown } }): string {
  return stack.getLogicalId(construct.node.defaultChild as CfnResource);
}

/** Every IAM policy statement of every stack, with where it came from. */
function allStatements(): Array<{ stack: string; policy: string; Action: string | string[]; Resource: unknown }> {
  const out: Array<{ stack: string; policy: string; Action: string | string[]; Resource: unknown }> = [];
  for (const stack of Object.values(s.stacks)) {
    for (const [id, policy] of resourcesOf(s.template(stack), 'AWS::IAM::Policy')) {
      const doc = policy.Properties?.['PolicyDocument'] as { Statement: Array<{ Action: string | string[]; Resource: unknown }> };
      for (const st of doc.Statement) out.push({ stack: stack.stackName, policy: id, Action: st.Action, Resource: st.Resource });
    }
  }
  return out;
}

const asArray = <T>(v: T | T[]): T[] => (Array.isArray(v) ? v : [v]);

describe('synthesis', () => {
  it('succeeds with no unacknowledged cdk-nag finding and no CloudFormation validation error', () => {
    expect(s.violations).toEqual([]);
    expect(s.error).toBeUndefined();
  });

  it("`npm run synth` closes by naming the stage's stacks, not an empty list (aws/aws-cdk-cli#1442: without a selector the CLI selects only top-level stacks, and a Stage's are not)", () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    // The script itself, run by the shell as npm would, on the assembly already synthesized here.
    const run = spawnSync('sh', ['-c', `${pkg.scripts['synth'] ?? 'missing'} --app "${s.outdir}"`], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, PATH: `${join(ROOT, 'node_modules', '.bin')}:${process.env['PATH'] ?? ''}` },
    });
    const output = `${run.stdout}${run.stderr}`;

    expect(run.status, output).toBe(0);
    expect(output).toContain(`Supply a stack id (${['network', 'data', 'services', 'control-plane', 'observability'].map((id) => `${s.stage.stageName}/${id}`).join(', ')})`);
  });

  it('synthesizes offline: the CLI fetches no notices and sends no telemetry', () => {
    const cdkJson = JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')) as { notices?: unknown; context: Record<string, unknown> };
    expect(cdkJson.notices).toBe(false);
    expect(cdkJson.context['cli-telemetry']).toBe(false);
  });

  it('lists every cdk-nag acknowledgement with its reason in docs/cdk-nag.md', () => {
    const doc = readFileSync(join(ROOT, 'docs', 'cdk-nag.md'), 'utf8');
    // Metadata maps each acknowledged rule id to its reason; CDK's own acknowledgements of
    // its CloudFormation validation rules are not ours to document.
    const rules = s.app.node
      .findAll()
      .flatMap((c) => c.node.metadata.filter((m) => m.type === 'aws:cdk:acknowledged-rules'))
      .flatMap((m) => Object.entries(m.data as Record<string, string>))
      .filter(([id]) => id.includes('AwsSolutions-'));
    expect(rules.length).toBeGreaterThan(0);
    for (const [id, reason] of rules) {
      const ruleName = id.replace(/^.*?(AwsSolutions-[A-Za-z0-9]+).*$/, '$1');
      expect(doc, `${id} missing from docs/cdk-nag.md`).toContain(ruleName);
      expect(doc, `reason of ${id} missing from docs/cdk-nag.md`).toContain(reason);
    }
  });
});

describe('services stack without a domain (development)', () => {
  it('serves plain HTTP and says so with a synthesis warning', () => {
    const warnings = s.app.node.findAll().flatMap((c) => c.node.metadata.filter((m) => m.type === 'aws:cdk:warning').map((m) => String(m.data)));
    expect(warnings.some((w) => w.includes('plain HTTP only'))).toBe(true);
    s.template(s.stacks.services).resourceCountIs('AWS::CertificateManager::Certificate', 0);
  });
});

describe('cfn-guard posture (lib/guard.ts)', () => {
  it('lets no KMS key grant to anything but AWS resources (CT.KMS.PR.3)', () => {
    const keys = Object.values(s.stacks).flatMap((stack) => resourcesOf(s.template(stack), 'AWS::KMS::Key'));
    expect(keys.length).toBeGreaterThan(0);
    for (const [, key] of keys) {
      expect((key.Properties?.['KeyPolicy'] as { Statement: Json[] }).Statement).toContainEqual(
        expect.objectContaining({
          Effect: 'Deny',
          Action: 'kms:CreateGrant',
          Condition: { BoolIfExists: { 'kms:GrantIsForAWSResource': 'false', 'aws:PrincipalIsAWSService': 'false' } },
        }),
      );
    }
  });

  it('ran cfn-guard on every stack and left no failure but the exempted ones', () => {
    const report = JSON.parse(readFileSync(join(s.outdir, 'validation-report.json'), 'utf8')) as {
      pluginReports: Array<{ pluginName: string; violations: unknown[]; suppressedViolations?: Array<{ acknowledgedId: string }> }>;
    };
    const guard = report.pluginReports.find((p) => p.pluginName === 'cdk-validator-cfnguard');
    expect(guard?.violations).toEqual([]);
    const exempted = new Set(GUARD_EXEMPTIONS.map((e) => `cdk-validator-cfnguard::${e.rule}`));
    expect(guard?.suppressedViolations?.length).toBeGreaterThan(0);
    for (const v of guard?.suppressedViolations ?? []) expect(exempted).toContain(v.acknowledgedId);
  });

  it('acknowledges each guard exemption with its reason only on resources it covers', () => {
    const acknowledged = s.app.node
      .findAll()
      .flatMap((c) => c.node.metadata.filter((m) => m.type === 'aws:cdk:acknowledged-rules'))
      .flatMap((m) => Object.entries(m.data as Record<string, string>))
      .filter(([id]) => id.startsWith('cdk-validator-cfnguard::'));
    expect(acknowledged.length).toBeGreaterThan(0);
    for (const [id, reason] of acknowledged) {
      expect(GUARD_EXEMPTIONS.filter((e) => `cdk-validator-cfnguard::${e.rule}` === id).map((e) => e.reason)).toContain(reason);
    }
  });
});

describe('data stack', () => {
  it('creates shards x (1 + replicas) database instances', () => {
    const { shards, replicasPerShard } = s.config.database;
    s.template(s.stacks.data).resourceCountIs('AWS::RDS::DBInstance', shards * (1 + replicasPerShard));
  });

  it('encrypts every primary with the data key, snapshots it when it leaves the stack and keeps backups at least 7 days', () => {
    const primaries = resourcesOf(s.template(s.stacks.data), 'AWS::RDS::DBInstance').filter(([, r]) => !r.Properties?.['SourceDBInstanceIdentifier']);
    expect(primaries).toHaveLength(s.config.database.shards);
    for (const [, r] of primaries) {
      expect(r.Properties).toMatchObject({ StorageEncrypted: true, KmsKeyId: expect.anything(), EnablePerformanceInsights: true });
      expect(r.Properties?.['BackupRetentionPeriod']).toBeGreaterThanOrEqual(7);
      expect(r.DeletionPolicy).toBe('Snapshot');
    }
  });

  it('leaves deletion protection off in development, so that a failed first create can roll back and `cdk destroy` works', () => {
    for (const [id, r] of resourcesOf(s.template(s.stacks.data), 'AWS::RDS::DBInstance')) expect(r.Properties?.['DeletionProtection'], id).toBe(false);
  });

  it('replicates every replica from an encrypted, backed-up primary', () => {
    const t = s.template(s.stacks.data);
    const instances = Object.fromEntries(resourcesOf(t, 'AWS::RDS::DBInstance'));
    const replicas = Object.values(instances).filter((r) => r.Properties?.['SourceDBInstanceIdentifier']);
    expect(replicas).toHaveLength(s.config.database.shards * s.config.database.replicasPerShard);
    for (const replica of replicas) {
      expect(replica.Properties).toMatchObject({ EnablePerformanceInsights: true });
      const sourceRef = replica.Properties?.['SourceDBInstanceIdentifier'] as { 'Fn::Join': [string, unknown[]] };
      const sourceId = JSON.stringify(sourceRef).match(/"Ref":"(?!AWS::)([^"]+)"/)?.[1] as string;
      expect(instances[sourceId]?.Properties).toMatchObject({ StorageEncrypted: true });
      expect(instances[sourceId]?.Properties?.['BackupRetentionPeriod']).toBeGreaterThanOrEqual(7);
    }
  });

  it('exports the server and upgrade logs of every instance (CT.RDS.PR.14) to log groups made first, with an expiry', () => {
    const t = s.template(s.stacks.data);
    const instances = resourcesOf(t, 'AWS::RDS::DBInstance');
    const logGroups = resourcesOf(t, 'AWS::Logs::LogGroup');
    for (const [id, instance] of instances) {
      expect(instance.Properties?.['EnableCloudwatchLogsExports']).toEqual([...RDS_LOG_EXPORTS]);
      const name = instance.Properties?.['DBInstanceIdentifier'] as string;
      for (const kind of RDS_LOG_EXPORTS) {
        const group = logGroups.find(([, g]) => g.Properties?.['LogGroupName'] === `/aws/rds/instance/${name}/${kind}`);
        expect(group, `${id}: /aws/rds/instance/${name}/${kind}`).toBeDefined();
        expect(group?.[1].Properties?.['RetentionInDays']).toBe(s.config.logRetentionDays);
        expect(instance.DependsOn).toContain(group?.[0]);
      }
    }
  });

  it('removes the RDS-named log groups with a development environment, so a redeploy does not collide with them', () => {
    for (const [, group] of resourcesOf(s.template(s.stacks.data), 'AWS::Logs::LogGroup')) {
      expect(group.DeletionPolicy).toBe('Delete');
    }
  });

  it('preloads pg_stat_statements and forces TLS in the parameter group', () => {
    s.template(s.stacks.data).hasResourceProperties('AWS::RDS::DBParameterGroup', {
      Parameters: Match.objectLike({ shared_preload_libraries: 'pg_stat_statements', 'rds.force_ssl': '1' }),
    });
  });

  it('puts an RDS Proxy requiring TLS in front of every primary', () => {
    const t = s.template(s.stacks.data);
    t.resourceCountIs('AWS::RDS::DBProxy', s.config.database.shards);
    t.allResourcesProperties('AWS::RDS::DBProxy', { RequireTLS: true, EngineFamily: 'POSTGRESQL' });
  });

  it('gives every login secret what the hosted alternating-users rotation requires: engine, host, port and dbname of its primary (attachment) and masterarn naming its admin secret', () => {
    const t = s.template(s.stacks.data);
    const secrets = resourcesOf(t, 'AWS::SecretsManager::Secret').filter(([id]) => /(App|Monitor|Mover|Control)Secret/.test(id));
    expect(secrets).toHaveLength(3 * s.config.database.shards + 1);
    const attachments = resourcesOf(t, 'AWS::SecretsManager::SecretTargetAttachment');
    for (const [id, secret] of secrets) {
      const shard = /^(Shard\d{3})/.exec(id)?.[1] as string;
      const template = JSON.stringify((secret.Properties?.['GenerateSecretString'] as Json)['SecretStringTemplate']);
      expect(template, id).toMatch(/username/);
      expect(template, id).toMatch(/masterarn/);
      expect(template, id).toContain(`${shard}PrimarySecret`);
      const attachment = attachments.find(([, a]) => JSON.stringify(a.Properties?.['SecretId']) === JSON.stringify({ Ref: id }));
      expect(attachment?.[1].Properties?.['TargetType'], id).toBe('AWS::RDS::DBInstance');
      expect(JSON.stringify(attachment?.[1].Properties?.['TargetId']), id).toContain(`${shard}Primary`);
    }
  });

  it('rotates every shard secret', () => {
    s.template(s.stacks.data).resourceCountIs('AWS::SecretsManager::RotationSchedule', s.config.database.shards);
  });

  it('is termination protected', () => {
    expect(s.stacks.data.terminationProtection).toBe(true);
  });

  it('admits PostgreSQL only from the services, the control-plane functions, the proxy and the rotation function', () => {
    const t = s.template(s.stacks.data);
    const network = s.stacks.network.network;
    for (const shard of s.stacks.data.shards) {
      const sgId = logicalId(s.stacks.data, shard.securityGroup);
      const ingress = resourcesOf(t, 'AWS::EC2::SecurityGroupIngress').filter(([, r]) => JSON.stringify(r.Properties?.['GroupId']).includes(sgId));
      const sources = ingress.map(([, r]) => JSON.stringify(r.Properties?.['SourceSecurityGroupId']));
      const port = (v: unknown): boolean => v === 5432 || JSON.stringify(v).includes('Endpoint.Port');
      expect(ingress.every(([, r]) => port(r.Properties?.['FromPort']) && port(r.Properties?.['ToPort']) && !r.Properties?.['CidrIp'])).toBe(true);
      const admitted = [
        logicalId(s.stacks.network, network.servicesSecurityGroup),
        logicalId(s.stacks.network, network.functionsSecurityGroup),
        'ProxySg',
        'RotationSingleUserSecurityGroup',
      ];
      expect(sources).toHaveLength(admitted.length);
      for (const source of admitted) expect(sources.filter((x) => x.includes(source))).toHaveLength(1);
    }
  });
});

describe('services stack', () => {
  it('enables Container Insights on the cluster', () => {
    s.template(s.stacks.services).hasResourceProperties('AWS::ECS::Cluster', {
      ClusterSettings: [{ Name: 'containerInsights', Value: 'enabled' }],
    });
  });

  it('gives every task definition two containers with the only port mapping on nginx', () => {
    const tasks = resourcesOf(s.template(s.stacks.services), 'AWS::ECS::TaskDefinition');
    expect(tasks).toHaveLength(SERVICE_NAMES.length);
    for (const [, task] of tasks) {
      const containers = task.Properties?.['ContainerDefinitions'] as Json[];
      expect(containers.map((c) => c['Name']).sort()).toEqual([APP_CONTAINER, NGINX_CONTAINER]);
      const app = containers.find((c) => c['Name'] === APP_CONTAINER) as Json;
      const nginx = containers.find((c) => c['Name'] === NGINX_CONTAINER) as Json;
      expect(app['PortMappings']).toBeUndefined();
      expect(nginx['PortMappings']).toEqual([expect.objectContaining({ ContainerPort: s.config.nginx.port })]);
    }
  });

  it('starts nginx only once the application is healthy, with read-only root filesystems and CloudWatch logs', () => {
    for (const [, task] of resourcesOf(s.template(s.stacks.services), 'AWS::ECS::TaskDefinition')) {
      const containers = task.Properties?.['ContainerDefinitions'] as Json[];
      const nginx = containers.find((c) => c['Name'] === NGINX_CONTAINER) as Json;
      expect(nginx['DependsOn']).toEqual([{ ContainerName: APP_CONTAINER, Condition: 'HEALTHY' }]);
      for (const c of containers) {
        expect(c['ReadonlyRootFilesystem']).toBe(true);
        expect(c['LogConfiguration']).toMatchObject({ LogDriver: 'awslogs' });
      }
      expect((nginx['MountPoints'] as Json[]).map((m) => m['ContainerPath'])).toEqual(expect.arrayContaining(['/etc/nginx', '/run', '/var/cache/nginx', '/var/lib/nginx']));
    }
  });

  it('gives every container a memory hard limit (CT.ECS.PR.7): nginx its own, the application the rest of the task', () => {
    for (const [, task] of resourcesOf(s.template(s.stacks.services), 'AWS::ECS::TaskDefinition')) {
      const containers = task.Properties?.['ContainerDefinitions'] as Json[];
      const memory = (name: string) => containers.find((c) => c['Name'] === name)?.['Memory'];
      expect(memory(NGINX_CONTAINER)).toBe(NGINX_MEMORY_MIB);
      expect(Number(memory(APP_CONTAINER)) + NGINX_MEMORY_MIB).toBe(Number(task.Properties?.['Memory']));
    }
  });

  it('gives the application the ARN of each shard\'s login secret to read itself, never a credential: no plain one, none injected at task start (it would not follow the rotation)', () => {
    for (const [, task] of resourcesOf(s.template(s.stacks.services), 'AWS::ECS::TaskDefinition')) {
      const app = (task.Properties?.['ContainerDefinitions'] as Json[]).find((c) => c['Name'] === APP_CONTAINER) as Json;
      expect(app['Secrets']).toBeUndefined();
      const env = (app['Environment'] as Array<{ Name: string }>).map((e) => e.Name);
      expect(env.filter((n) => /PASSWORD|SECRET|USERNAME/.test(n))).toEqual(['SHARD_001_DB_SECRET_ARN', 'SHARD_002_DB_SECRET_ARN']);
    }
  });

  it("gives the tasks each shard's least-privilege application login, never its admin secret", () => {
    for (const [, task] of resourcesOf(s.template(s.stacks.services), 'AWS::ECS::TaskDefinition')) {
      const app = (task.Properties?.['ContainerDefinitions'] as Json[]).find((c) => c['Name'] === APP_CONTAINER) as Json;
      const logins = (app['Environment'] as Array<{ Name: string; Value: unknown }>).filter((e) => e.Name.endsWith('_DB_SECRET_ARN'));
      expect(logins).toHaveLength(2);
      for (const login of logins) {
        const from = JSON.stringify(login.Value);
        const shard = login.Name.replace(/^SHARD_(\d{3})_DB_.*$/, 'Shard$1');
        expect(from, login.Name).toContain(`${shard}AppSecret`);
        expect(from, login.Name).not.toContain('PrimarySecret');
      }
    }
  });

  // The controller's topology takes the generated name (GetAtt Name): iam-coverage.test.ts.
  it('lets CloudFormation name the ECS services (a fixed name collides on a retry soon after a rollback)', () => {
    const services = resourcesOf(s.template(s.stacks.services), 'AWS::ECS::Service');
    expect(services).toHaveLength(SERVICE_NAMES.length);
    for (const [id, service] of services) expect(service.Properties?.['ServiceName'], id).toBeUndefined();
  });

  it('leaves the desired count to the controller and registers each service as a scalable target with its bounds', () => {
    const t = s.template(s.stacks.services);
    for (const [, service] of resourcesOf(t, 'AWS::ECS::Service')) expect(service.Properties?.['DesiredCount']).toBeUndefined();
    for (const name of SERVICE_NAMES) {
      t.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', {
        MinCapacity: s.config.bounds[name].min,
        MaxCapacity: s.config.bounds[name].max,
        ScalableDimension: 'ecs:service:DesiredCount',
        ResourceId: { 'Fn::Join': ['', Match.arrayWith([{ 'Fn::GetAtt': [logicalId(s.stacks.services, s.stacks.services.services[name].service), 'Name'] }])] },
      });
    }
  });

  it('sends GET and HEAD API requests to the read pool, other API methods to the write pool and the rest to the frontend', () => {
    const t = s.template(s.stacks.services);
    const tg = (name: 'backend-read' | 'backend-write' | 'frontend') => ({ Ref: logicalId(s.stacks.services, s.stacks.services.targetGroups[name]) });
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::ListenerRule', {
      Priority: 10,
      Conditions: Match.arrayWith([
        { Field: 'path-pattern', PathPatternConfig: { Values: ['/api/*'] } },
        { Field: 'http-request-method', HttpRequestMethodConfig: { Values: ['GET', 'HEAD'] } },
      ]),
      Actions: [{ Type: 'forward', TargetGroupArn: tg('backend-read') }],
    });
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::ListenerRule', {
      Priority: 20,
      Conditions: [{ Field: 'path-pattern', PathPatternConfig: { Values: ['/api/*'] } }],
      Actions: [{ Type: 'forward', TargetGroupArn: tg('backend-write') }],
    });
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
      DefaultActions: [{ Type: 'forward', TargetGroupArn: tg('frontend') }],
    });
  });

  it('serves plain HTTP only when no certificate is configured', () => {
    const t = s.template(s.stacks.services);
    t.resourceCountIs('AWS::ElasticLoadBalancingV2::Listener', 1);
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', { Port: 80, Protocol: 'HTTP' });
  });

  it('health-checks the read pool on /health/readonly and the others on /health', () => {
    const t = s.template(s.stacks.services);
    const paths = resourcesOf(t, 'AWS::ElasticLoadBalancingV2::TargetGroup').map(([, r]) => r.Properties?.['HealthCheckPath']);
    expect(paths.sort()).toEqual(['/health', '/health', '/health/readonly']);
  });

  it('writes access logs to an encrypted bucket that refuses anything but TLS', () => {
    const t = s.template(s.stacks.services);
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::LoadBalancer', {
      LoadBalancerAttributes: Match.arrayWith([{ Key: 'access_logs.s3.enabled', Value: 'true' }]),
    });
    t.hasResourceProperties('AWS::S3::Bucket', {
      BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
    });
    t.hasResourceProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]) },
    });
  });
});

describe('control plane stack', () => {
  const fnId = (name: 'evaluate' | 'alarm' | 'api' | 'migrate' | 'moves') =>
    logicalId(s.stacks.controlPlane, s.stacks.controlPlane.controlPlane[name].function);
  const fnProps = (name: 'evaluate' | 'alarm' | 'api' | 'migrate' | 'moves'): Json =>
    (s.template(s.stacks.controlPlane).findResources('AWS::Lambda::Function')[fnId(name)] as { Properties: Json }).Properties;
  /** The value of `variable` in the SSM parameter the function's CONFIG_PARAMETERS names for it. */
  /** The value of the SSM parameter a function reads into `variable` (CONFIG_PARAMETERS), if any. */
  const configValue = (name: 'evaluate' | 'alarm' | 'api' | 'migrate' | 'moves', variable: string): unknown => {
    const named = JSON.stringify((fnProps(name)['Environment'] as { Variables: Json }).Variables['CONFIG_PARAMETERS']);
    const id = new RegExp(`\\\\"${variable}\\\\":\\\\"",\\{"Ref":"([A-Za-z0-9]+)"\\}`).exec(named)?.[1];
    if (id === undefined) return undefined;
    return (s.template(s.stacks.controlPlane).findResources('AWS::SSM::Parameter')[id] as { Properties: Json }).Properties['Value'];
  };

  it('runs every function on nodejs24.x, arm64, in the VPC, trusting the RDS certificate authorities', () => {
    const fns = ['evaluate', 'alarm', 'api', 'migrate', 'moves'] as const;
    const t = s.template(s.stacks.controlPlane);
    for (const name of fns) {
      const fn = t.findResources('AWS::Lambda::Function')[fnId(name)] as { Properties: Json };
      expect(fn.Properties).toMatchObject({
        Runtime: 'nodejs24.x',
        Architectures: ['arm64'],
        Handler: 'index.handler',
        TracingConfig: { Mode: 'Active' },
        VpcConfig: expect.objectContaining({ SubnetIds: expect.any(Array) }),
      });
      expect((fn.Properties['Environment'] as { Variables: Json }).Variables['NODE_EXTRA_CA_CERTS']).toBe('/var/runtime/ca-cert.pem');
    }
  });

  it('reserves no concurrency by default: a new account (quota 10, 10 kept unreserved) could not deploy it; the catalog lease serialises runs', () => {
    for (const name of ['evaluate', 'alarm', 'api', 'migrate', 'moves'] as const) expect(fnProps(name)['ReservedConcurrentExecutions']).toBeUndefined();
  });

  it('deploys the five control-plane functions and the migrations provider, and nothing else', () => {
    // Evaluate, Alarm, Api, Migrate, Moves, plus the custom-resource provider's framework function.
    s.template(s.stacks.controlPlane).resourceCountIs('AWS::Lambda::Function', 6);
  });


  it('lets the moves worker run for the Lambda maximum of 15 minutes (a run stops before it and the next tick resumes)', () => {
    expect(fnProps('moves')['Timeout']).toBe(900);
  });

  it('gives the moves worker the memory for the comparison of the largest unit it plans (every row hashed, both sides)', () => {
    expect(fnProps('moves')['MemorySize']).toBe(2048);
  });

  it('invokes the moves worker every minute, with a dead-letter queue for undeliverable ticks', () => {
    s.template(s.stacks.controlPlane).hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'rate(1 minute)',
      Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [fnId('moves'), 'Arn'] }, DeadLetterConfig: Match.objectLike({ Arn: Match.anyValue() }) })],
    });
  });

  it('has exactly two schedules: the evaluator and the moves worker', () => {
    const rules = resourcesOf(s.template(s.stacks.controlPlane), 'AWS::Events::Rule');
    const targetIds = rules.flatMap(([, r]) => (r.Properties?.['Targets'] as Array<{ Arn: { 'Fn::GetAtt': [string, string] } }>).map((tg) => tg.Arn['Fn::GetAtt'][0]));
    expect(targetIds.sort()).toEqual([fnId('evaluate'), fnId('moves')].sort());
  });

  it('never retries a failed or late moves tick (the next tick supersedes it) and sends it to a failure destination', () => {
    s.template(s.stacks.controlPlane).hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: fnId('moves') },
      MaximumRetryAttempts: 0,
      MaximumEventAgeInSeconds: 120,
      DestinationConfig: { OnFailure: { Destination: Match.anyValue() } },
    });
  });

  it('keeps one encrypted failure queue per event-invoked function: evaluator, alarm function, moves worker', () => {
    const queues = resourcesOf(s.template(s.stacks.controlPlane), 'AWS::SQS::Queue');
    expect(queues.map(([id]) => id.replace(/Queue[0-9A-F]{8}$/, '')).sort()).toEqual(['ControlPlaneAlarmFailures', 'ControlPlaneEvaluateFailures', 'ControlPlaneMovesFailures']);
    for (const [, q] of queues) expect(q.Properties?.['SqsManagedSseEnabled']).toBe(true);
  });

  it("gives the moves worker the scaling API's environment (catalog, scaling and sharding configuration), with its own shard logins and the catalog's primary instead of its proxy", () => {
    const env = (name: 'api' | 'moves'): Json => {
      const vars = (fnProps(name)['Environment'] as { Variables: Json }).Variables;
      return { ...vars, POWERTOOLS_SERVICE_NAME: undefined, CONFIG_PARAMETERS: undefined, CONFIG_PARAMETERS_VERSION: undefined };
    };
    // The moves worker cancels catalog statements, which RDS Proxy does not pass on (catalog-route.test.ts).
    expect(env('moves')).toEqual({ ...env('api'), CATALOG_DB_HOST: undefined });
    expect(Object.keys(env('moves'))).toContain('CATALOG_DB_SECRET_ARN');
    expect(Object.keys(env('api'))).toEqual(expect.arrayContaining(['CATALOG_DB_SECRET_ARN', 'CATALOG_DB_HOST']));
    for (const variable of ['SCALING_CONFIG_JSON', 'SCALING_TARGETS_JSON', 'SHARDING_CONFIG_JSON']) expect(configValue('moves', variable)).toEqual(configValue('api', variable));
    expect(JSON.stringify(configValue('api', 'SHARD_DB_SECRET_ARNS'))).toMatch(/Shard001MonitorSecret/);
    expect(JSON.stringify(configValue('moves', 'SHARD_DB_SECRET_ARNS'))).toMatch(/Shard001MoverSecret/);
    expect(JSON.stringify(configValue('moves', 'SHARD_DB_SECRET_ARNS'))).not.toMatch(/PrimarySecret|MonitorSecret/);
  });

  it('lets each function read only the SSM parameters its CONFIG_PARAMETERS names', () => {
    const params = s.stacks.controlPlane.controlPlane.config.parameters;
    const policies = resourcesOf(s.template(s.stacks.controlPlane), 'AWS::IAM::Policy');
    for (const name of ['evaluate', 'alarm', 'api', 'moves', 'migrate'] as const) {
      const roleId = logicalId(s.stacks.controlPlane, s.stacks.controlPlane.controlPlane[name].role);
      const policy = JSON.stringify(policies.filter(([, p]) => JSON.stringify(p.Properties?.['Roles']).includes(roleId)).map(([, p]) => p.Properties?.['PolicyDocument']));
      const named = JSON.stringify((fnProps(name)['Environment'] as { Variables: Json }).Variables['CONFIG_PARAMETERS']);
      for (const [variable, parameter] of Object.entries(params)) {
        const id = logicalId(s.stacks.controlPlane, parameter);
        expect(policy.includes(id), `${name} may read ${variable}`).toBe(named.includes(id));
      }
    }
  });

  it("runs the moves worker in the API's subnets and security group, the one the shard instances and proxies admit", () => {
    const functionsSg = logicalId(s.stacks.network, s.stacks.network.network.functionsSecurityGroup);
    expect(fnProps('moves')['VpcConfig']).toEqual(fnProps('api')['VpcConfig']);
    expect(JSON.stringify((fnProps('moves')['VpcConfig'] as Json)['SecurityGroupIds'])).toContain(functionsSg);
  });

  it("ships the validated scaling configuration in the controller's SSM parameters", () => {
    const shipped = JSON.parse(configValue('evaluate', 'SCALING_CONFIG_JSON') as string) as unknown;
    expect(parseScalingConfig(shipped)).toEqual(s.config.scaling);
  });

  it('gives the scaling API every shard in the guide sharding format, in the order of the shard secrets', () => {
    const sharding = JSON.stringify(configValue('api', 'SHARDING_CONFIG_JSON'));
    const secrets = JSON.stringify(configValue('api', 'SHARD_DB_SECRET_ARNS'));
    for (const shard of s.stacks.data.shards) {
      expect(sharding).toContain(`\\"shard_id\\":\\"${shard.shardId}\\"`);
      expect(sharding).toContain(logicalId(s.stacks.data, shard.primary).slice(0, 20));
    }
    expect(sharding).toContain('sslmode=verify-full');
    expect(secrets.indexOf('Shard001')).toBeLessThan(secrets.indexOf('Shard002'));
  });

  it('schedules the evaluator at the configured interval, with a dead-letter queue', () => {
    s.template(s.stacks.controlPlane).hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: `rate(${s.config.checkIntervalSeconds / 60} minute)`,
      Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [fnId('evaluate'), 'Arn'] }, DeadLetterConfig: Match.objectLike({ Arn: Match.anyValue() }) })],
    });
  });

  it('sends failed asynchronous invocations of the evaluator and the alarm function to a failure destination', () => {
    const t = s.template(s.stacks.controlPlane);
    for (const name of ['evaluate', 'alarm'] as const) {
      t.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
        FunctionName: { Ref: fnId(name) },
        DestinationConfig: { OnFailure: { Destination: Match.anyValue() } },
      });
    }
  });

  it('feeds the alarm function from the KMS-encrypted, TLS-only alarm topic', () => {
    const t = s.template(s.stacks.controlPlane);
    const topicId = logicalId(s.stacks.controlPlane, s.stacks.controlPlane.alarmTopic.topic);
    t.hasResourceProperties('AWS::SNS::Topic', { KmsMasterKeyId: Match.anyValue() });
    t.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]) },
    });
    t.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'lambda',
      TopicArn: { Ref: topicId },
      Endpoint: { 'Fn::GetAtt': [fnId('alarm'), 'Arn'] },
      RedrivePolicy: Match.objectLike({ deadLetterTargetArn: Match.anyValue() }),
    });
  });

  it('lets CloudWatch alarms of this account and region publish to the topic and use its key', () => {
    // enforceSSL's Deny-only topic policy replaces SNS's default one: without this Allow no alarm notifies.
    const t = s.template(s.stacks.controlPlane);
    const fromOwnAlarms = {
      StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } },
      ArnLike: { 'aws:SourceArn': { 'Fn::Join': ['', [`arn:aws:cloudwatch:${s.config.region}:`, { Ref: 'AWS::AccountId' }, ':alarm:*']] } },
    };
    t.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Allow', Principal: { Service: 'cloudwatch.amazonaws.com' }, Action: 'sns:Publish', Condition: fromOwnAlarms }),
        ]),
      },
    });
    t.hasResourceProperties('AWS::KMS::Key', {
      KeyPolicy: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Allow',
            Principal: { Service: 'cloudwatch.amazonaws.com' },
            Action: ['kms:Decrypt', 'kms:GenerateDataKey*'],
            Condition: fromOwnAlarms,
          }),
        ]),
      },
    });
  });

  it("requires IAM authorization on every API method, the fallbacks included, and a request validator on every route's", () => {
    const methods = resourcesOf(s.template(s.stacks.controlPlane), 'AWS::ApiGateway::Method');
    const routes = methods.filter(([, m]) => m.Properties?.['HttpMethod'] !== 'ANY');
    expect(routes).toHaveLength(SCALING_API_ROUTES.length);
    expect(methods.length).toBeGreaterThan(routes.length);
    for (const [, m] of methods) expect(m.Properties).toMatchObject({ AuthorizationType: 'AWS_IAM' });
    for (const [, m] of routes) expect(m.Properties).toMatchObject({ RequestValidatorId: expect.anything() });
  });

  /**
   * Which method of the template API Gateway would run for a request, or `undefined` for its 403
   * "Missing Authentication Token": the path is matched segment by segment from the root, a
   * static child before a path variable before a greedy `{x+}` (which takes the rest), without
   * backtracking; at the resource reached, the request's own method, else ANY.
   */
  function gatewayMethod(method: string, path: string): string | undefined {
    const t = s.template(s.stacks.controlPlane);
    const resources = t.findResources('AWS::ApiGateway::Resource') as Record<string, { Properties: { ParentId: unknown; PathPart: string } }>;
    const idOf = (ref: unknown): string => (ref as { Ref?: string }).Ref ?? 'root';
    const children = (parent: string) => Object.entries(resources).filter(([, r]) => idOf(r.Properties.ParentId) === parent);
    let at = 'root';
    let shown = '';
    const segments = path.split('/').filter((p) => p.length > 0);
    for (const [i, segment] of segments.entries()) {
      const options = children(at);
      const hit =
        options.find(([, r]) => r.Properties.PathPart === segment) ??
        options.find(([, r]) => /^\{[^+]+\}$/.test(r.Properties.PathPart)) ??
        options.find(([, r]) => r.Properties.PathPart.endsWith('+}'));
      if (hit === undefined) return undefined;
      at = hit[0];
      shown = `${shown}/${hit[1].Properties.PathPart}`;
      if (hit[1].Properties.PathPart.endsWith('+}') && i < segments.length) break;
    }
    const methods = resourcesOf(t, 'AWS::ApiGateway::Method').map(([, m]) => m.Properties as { HttpMethod: string; ResourceId: unknown; AuthorizationType: string; Integration: { Type: string } });
    const here = methods.filter((m) => idOf(m.ResourceId) === at || (at === 'root' && (m.ResourceId as { 'Fn::GetAtt'?: unknown })['Fn::GetAtt'] !== undefined));
    const chosen = here.find((m) => m.HttpMethod === method) ?? here.find((m) => m.HttpMethod === 'ANY');
    if (chosen === undefined) return undefined;
    expect([chosen.AuthorizationType, chosen.Integration.Type]).toEqual(['AWS_IAM', 'AWS_PROXY']);
    return `${chosen.HttpMethod} ${shown || '/'}`;
  }

  it("sends unknown paths, other methods and HEAD to the function, whose router answers 404 or 405 with Allow, instead of API Gateway's 403 Missing Authentication Token", () => {
    const requests = [
      ['GET', '/api/v1/scaling/status'],
      ['DELETE', '/api/v1/scaling/status'],
      ['HEAD', '/api/v1/scaling/config'],
      ['OPTIONS', '/api/v1/scaling/stop'],
      ['GET', '/'],
      ['GET', '/nothing-here'],
      ['GET', '/api'],
      ['POST', '/api/v1/scaling'],
      ['GET', '/api/v1/scaling/nothing-here/deeper'],
      ['GET', '/api/v1/scaling/status/extra'],
      ['GET', '/api/v1/scaling/shards/moves/42'],
      ['PUT', '/api/v1/scaling/shards/moves/42'],
      ['GET', '/api/v1/scaling/shards/moves/42/extra/parts'],
    ] as const;
    expect(requests.map(([method, path]) => `${method} ${path} -> ${gatewayMethod(method, path)}`)).toEqual([
      'GET /api/v1/scaling/status -> GET /api/v1/scaling/status',
      'DELETE /api/v1/scaling/status -> ANY /api/v1/scaling/status',
      'HEAD /api/v1/scaling/config -> ANY /api/v1/scaling/config',
      'OPTIONS /api/v1/scaling/stop -> ANY /api/v1/scaling/stop',
      'GET / -> ANY /',
      'GET /nothing-here -> ANY /{proxy+}',
      'GET /api -> ANY /api',
      'POST /api/v1/scaling -> ANY /api/v1/scaling',
      'GET /api/v1/scaling/nothing-here/deeper -> ANY /api/v1/scaling/{proxy+}',
      'GET /api/v1/scaling/status/extra -> ANY /api/v1/scaling/status/{proxy+}',
      'GET /api/v1/scaling/shards/moves/42 -> GET /api/v1/scaling/shards/moves/{id}',
      'PUT /api/v1/scaling/shards/moves/42 -> ANY /api/v1/scaling/shards/moves/{id}',
      'GET /api/v1/scaling/shards/moves/42/extra/parts -> ANY /api/v1/scaling/shards/moves/{id}/{proxy+}',
    ]);
  });

  it('lets API Gateway invoke the API function through one permission for all the fallbacks, not one per method', () => {
    const permissions = resourcesOf(s.template(s.stacks.controlPlane), 'AWS::Lambda::Permission').filter(([, p]) => p.Properties?.['Principal'] === 'apigateway.amazonaws.com');
    expect(permissions).toHaveLength(SCALING_API_ROUTES.length + 1);
  });

  it("lets API Gateway invoke the API function from the deployed stage only, for every method the fallbacks serve, and not from the console's test-invoke-stage", () => {
    const t = s.template(s.stacks.controlPlane);
    const [stageId] = Object.keys(t.findResources('AWS::ApiGateway::Stage'));
    const [apiId] = Object.keys(t.findResources('AWS::ApiGateway::RestApi'));
    /** The SourceArn as text: `${Ref}` for each reference. */
    const render = (v: unknown): string => {
      if (typeof v === 'string') return v;
      const o = v as { Ref?: string; 'Fn::Join'?: [string, unknown[]] };
      if (o.Ref !== undefined) return `\${${o.Ref}}`;
      if (o['Fn::Join']) return o['Fn::Join'][1].map(render).join(o['Fn::Join'][0]);
      throw new Error(`unexpected SourceArn part ${JSON.stringify(v)}`);
    };
    /** Lambda matches a permission's SourceArn with ArnLike: `*` is any run of characters, `/` included. */
    const admits = (pattern: string, arn: string): boolean =>
      new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`).test(arn);
    const sourceArns = resourcesOf(t, 'AWS::Lambda::Permission')
      .filter(([, p]) => p.Properties?.['Principal'] === 'apigateway.amazonaws.com')
      .map(([, p]) => render(p.Properties?.['SourceArn']));
    const api = `arn:aws:execute-api:eu-west-1:\${AWS::AccountId}:\${${apiId}}`;
    const deployed = (method: string, path: string) => `${api}/\${${stageId}}/${method}${path}`;
    for (const arn of sourceArns) expect(arn.startsWith(`${api}/\${${stageId}}/`), arn).toBe(true);
    // What the fallbacks answer (root, unknown paths, other methods) is invoked through the deployed stage.
    for (const [method, path] of [['GET', '/'], ['DELETE', '/api/v1/scaling/status'], ['GET', '/nothing-here/deeper'], ['PUT', '/api/v1/scaling/shards/moves/42']]) {
      expect(sourceArns.some((p) => admits(p, deployed(method as string, path as string))), `${method} ${path}`).toBe(true);
    }
    for (const [method, path] of [['GET', '/'], ['GET', '/api/v1/scaling/status'], ['DELETE', '/api/v1/scaling/status']]) {
      expect(sourceArns.filter((p) => admits(p, `${api}/test-invoke-stage/${method}${path}`)), `test-invoke ${method} ${path}`).toEqual([]);
    }
  });

  it("has exactly the router's routes, path and query parameters included (read off the template's resource tree)", () => {
    const t = s.template(s.stacks.controlPlane);
    const resources = t.findResources('AWS::ApiGateway::Resource') as Record<string, { Properties: { ParentId: unknown; PathPart: string } }>;
    const pathOf = (ref: unknown): string => {
      const id = (ref as { Ref?: string }).Ref;
      const r = id === undefined ? undefined : resources[id];
      return r ? `${pathOf(r.Properties.ParentId)}/${r.Properties.PathPart}` : '';
    };
    const deployed = resourcesOf(t, 'AWS::ApiGateway::Method').filter(([, m]) => m.Properties?.['HttpMethod'] !== 'ANY').map(([, m]) => {
      const props = m.Properties as { HttpMethod: string; ResourceId: unknown; RequestParameters?: Record<string, boolean> };
      return `${props.HttpMethod} ${pathOf(props.ResourceId)} ${Object.keys(props.RequestParameters ?? {}).sort().join(',')}`;
    });
    const doc = scalingApiDocument() as { paths: Record<string, Record<string, { parameters: Array<{ in: string; name: string }> }>> };
    const served = Object.entries(doc.paths).flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => {
        const params = op.parameters.filter((p) => p.in !== 'header').map((p) => `method.request.${p.in === 'path' ? 'path' : 'querystring'}.${p.name}`);
        return `${method.toUpperCase()} ${path} ${params.sort().join(',')}`;
      }),
    );
    expect(deployed.sort()).toEqual(served.sort());
    const paths = deployed.map((d) => d.split(' ').slice(0, 2).join(' '));
    for (const needed of ['POST /api/v1/scaling/evaluate', 'GET /api/v1/scaling/shards/route', 'POST /api/v1/scaling/shards/moves', 'GET /api/v1/scaling/shards/moves/{id}', 'GET /api/v1/scaling/openapi.json']) {
      expect(paths).toContain(needed);
    }
  });

  it("answers API Gateway's own errors (auth, throttling, timeouts, defaults) as application/problem+json", () => {
    const responses = resourcesOf(s.template(s.stacks.controlPlane), 'AWS::ApiGateway::GatewayResponse').map(([, r]) => r.Properties as Json);
    const types = responses.map((r) => r['ResponseType']);
    expect(types).toEqual(expect.arrayContaining(['DEFAULT_4XX', 'DEFAULT_5XX', 'MISSING_AUTHENTICATION_TOKEN', 'RESOURCE_NOT_FOUND', 'ACCESS_DENIED', 'THROTTLED', 'INTEGRATION_TIMEOUT']));
    for (const r of responses) {
      expect(r['ResponseParameters']).toMatchObject({ 'gatewayresponse.header.Content-Type': "'application/problem+json'" });
      const template = (r['ResponseTemplates'] as Record<string, string>)['application/json'] ?? '';
      // Once API Gateway substitutes its quoted strings, the template is a problem document.
      const body = JSON.parse(template.replaceAll('$context.error.messageString', '"Forbidden"').replaceAll('$context.path', '/x').replaceAll('$context.requestId', 'r')) as Json;
      expect(body).toMatchObject({ type: 'about:blank', title: 'Forbidden', detail: 'Forbidden' });
      if (r['StatusCode'] !== undefined) expect(body['status']).toBe(Number(r['StatusCode']));
    }
  });

  it('throttles, traces and writes JSON access logs on the API stage', () => {
    s.template(s.stacks.controlPlane).hasResourceProperties('AWS::ApiGateway::Stage', {
      TracingEnabled: true,
      AccessLogSetting: { DestinationArn: Match.anyValue(), Format: Match.stringLikeRegexp('^\\{.*"requestId".*\\}$') },
      MethodSettings: Match.arrayWith([
        Match.objectLike({ HttpMethod: '*', ResourcePath: '/*', ThrottlingRateLimit: s.config.api.throttlingRateLimit, ThrottlingBurstLimit: s.config.api.throttlingBurstLimit }),
      ]),
    });
  });

  it('runs the migrations on deploy through a custom resource whose hash follows the SQL files', () => {
    s.template(s.stacks.controlPlane).hasResourceProperties('Custom::CaDmsMigrations', {
      MigrationsHash: s.stacks.controlPlane.controlPlane.migrations.hash,
    });
    expect(s.stacks.controlPlane.controlPlane.migrations.hash).toMatch(/^[0-9a-f]{64}$/);
  });

  it('reruns the migrations when a database or login they work on changes (a shard added later gets its schema and logins before its rotations run)', () => {
    const [, resource] = resourcesOf(s.template(s.stacks.controlPlane), 'Custom::CaDmsMigrations')[0] as [string, { Properties?: Json }];
    const targets = (resource.Properties?.['Targets'] as Json[]).map((t) => JSON.stringify(t).replace(/^.*(Shard\d{3})(Primary|App|Monitor|Mover|Control)Secret.*$/, '$1$2'));
    const shards = s.stacks.data.shards.map((_, i) => `Shard${String(i + 1).padStart(3, '0')}`);
    const expected = ['Shard001Control', ...shards.flatMap((sh) => ['Primary', 'App', 'Monitor', 'Mover'].map((k) => `${sh}${k}`))];

    expect([...new Set(targets)].sort()).toEqual(expected.sort());
  });

  it('bundles the migration SQL files with the migration function', () => {
    const fn = s.template(s.stacks.controlPlane).findResources('AWS::Lambda::Function')[fnId('migrate')] as { Properties: { Code: { S3Key: string } } };
    const assetDir = `asset.${fn.Properties.Code.S3Key.replace(/\.zip$/, '')}`;
    const sql = readFileSync(join(s.outdir, assetDir, 'migrations', 'catalog', '001_fixture.sql'), 'utf8');
    expect(sql).toContain('CREATE SCHEMA');
  });

  it('lets the controller change desired counts of the four services only', () => {
    const update = allStatements().filter((st) => asArray(st.Action).includes('ecs:UpdateService'));
    expect(update.length).toBeGreaterThan(0);
    for (const st of update) {
      const resources = asArray(st.Resource);
      expect(resources).toHaveLength(SERVICE_NAMES.length);
      expect(resources).not.toContain('*');
    }
  });

  it("lets each function read only the secrets it logs in with: the controller the catalog's control login, the API also the shards' monitor logins, the moves worker their mover logins", () => {
    const t = s.template(s.stacks.controlPlane);
    const secretReads = (role: string): string[] =>
      resourcesOf(t, 'AWS::IAM::Policy')
        .filter(([id]) => id.startsWith(role))
        .flatMap(([, p]) => (p.Properties?.['PolicyDocument'] as { Statement: Array<{ Action: string | string[]; Resource: unknown }> }).Statement)
        .filter((st) => asArray(st.Action).includes('secretsmanager:GetSecretValue'))
        .flatMap((st) => asArray(st.Resource))
        .map((r) => JSON.stringify(r).replace(/^.*(Shard\d{3})(Primary|App|Monitor|Mover|Control)Secret.*$/, '$1$2'))
        .sort();
    const shards = s.stacks.data.shards.map((_, i) => `Shard${String(i + 1).padStart(3, '0')}`);
    const logins = (kind: string) => shards.map((sh) => `${sh}${kind}`);

    expect(secretReads('ControlPlaneEvaluateRole')).toEqual(['Shard001Control']);
    expect(secretReads('ControlPlaneAlarmRole')).toEqual(['Shard001Control']);
    expect(secretReads('ControlPlaneApiRole')).toEqual(['Shard001Control', ...logins('Monitor')].sort());
    expect(secretReads('ControlPlaneMovesRole')).toEqual(['Shard001Control', ...logins('Mover')].sort());
    // The migrations log in as admin and create every login from its secret.
    expect(secretReads('ControlPlaneMigrateRole')).toEqual(['Shard001Control', ...logins('Primary'), ...logins('App'), ...logins('Monitor'), ...logins('Mover')].sort());
  });

  it('lets no control-plane role but the migrations read a shard admin secret', () => {
    const admins = s.stacks.data.shards.map((shard) => logicalId(s.stacks.data, shard.secret));
    const readers = allStatements()
      .filter((st) => st.stack === s.stacks.controlPlane.stackName && asArray(st.Action).includes('secretsmanager:GetSecretValue'))
      .filter((st) => admins.some((admin) => JSON.stringify(st.Resource).includes(admin)))
      .map((st) => st.policy.replace(/RoleDefaultPolicy.*$/, ''));
    expect([...new Set(readers)]).toEqual(['ControlPlaneMigrate']);
  });

  it("admits the control plane's catalog login at the catalog shard's proxy, beside the admin the migrations use", () => {
    const proxies = resourcesOf(s.template(s.stacks.data), 'AWS::RDS::DBProxy');
    const auth = proxies.map(([, p]) => (p.Properties?.['Auth'] as Array<{ SecretArn: Json }>).map((a) => JSON.stringify(a.SecretArn).replace(/^.*(Shard\d{3})(Primary|Control)Secret.*$/, '$1$2')));
    expect(auth[0]).toEqual(['Shard001Primary', 'Shard001Control']);
    for (const others of auth.slice(1)) expect(others).toHaveLength(1);
  });
});

describe('least-privilege logins', () => {
  /** `Shard001 App` for a reference to a login secret of the data stack (the admin's is `Shard001 Primary`). */
  const loginOf = (ref: unknown): string => JSON.stringify(ref).replace(/^.*(Shard\d{3})(App|Monitor|Mover|Control|Primary)Secret.*$/, '$1 $2');

  it("rotates each shard's application, monitor and mover login with alternating users, logging in with its database's admin secret, once the migrations have made the user", () => {
    const t = s.template(s.stacks.controlPlane);
    const rotations = resourcesOf(t, 'AWS::SecretsManager::RotationSchedule');
    expect(rotations).toHaveLength(1 + 3 * s.config.database.shards);
    const migrations = s.stacks.controlPlane.getLogicalId(s.stacks.controlPlane.controlPlane.migrations.resource.node.defaultChild as CfnResource);
    const rotated = new Set<string>();
    for (const [id, rotation] of rotations) {
      const hosted = rotation.Properties?.['HostedRotationLambda'] as Json;
      const login = loginOf(rotation.Properties?.['SecretId']);
      expect(rotation.DependsOn, id).toContain(migrations);
      rotated.add(login);
      if (login.endsWith(' Control')) continue;
      expect(hosted['RotationType'], id).toBe('PostgreSQLMultiUser');
      // The transform gets the admin secret's ARN through a parameter of its own template (lib/transform-input.ts).
      const relay = (hosted['MasterSecretArn'] as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'];
      expect(relay[1], id).toBe('Value');
      const relayed = (t.toJSON() as { Resources: Record<string, { Type: string; Properties: Json }> }).Resources[relay[0]];
      expect(relayed?.Type, id).toBe('AWS::SSM::Parameter');
      expect(loginOf(relayed?.Properties['Value']), id).toBe(`${login.split(' ')[0]} Primary`);
    }
    expect(rotated.size).toBe(rotations.length);
  });

  it('rotates every secret an RDS Proxy admits with a single user: the proxy knows only the user its current version names, and alternating users would switch it', () => {
    const admitted = resourcesOf(s.template(s.stacks.data), 'AWS::RDS::DBProxy').flatMap(([, p]) => (p.Properties?.['Auth'] as Array<{ SecretArn: Json }>).map((a) => loginOf(a.SecretArn)));
    const rotations = [s.stacks.data, s.stacks.controlPlane].flatMap((stack) => resourcesOf(s.template(stack), 'AWS::SecretsManager::RotationSchedule'));
    const strategyOf = new Map(
      rotations.map(([, r]) => {
        const hosted = r.Properties?.['HostedRotationLambda'] as Json | undefined;
        // CDK's addRotationSingleUser deploys the serverless application instead of a hosted rotation.
        return [loginOf(r.Properties?.['SecretId']), hosted === undefined ? 'serverless application' : String(hosted['RotationType'])] as const;
      }),
    );

    expect(admitted).toContain('Shard001 Control');
    for (const login of admitted) expect([login, strategyOf.get(login)]).toEqual([login, expect.stringMatching(/SingleUser|serverless application/)]);
    expect(strategyOf.get('Shard001 Control')).toBe('PostgreSQLSingleUser');
  });

  it('lets the migrations, and no other control-plane function, read the application secrets it creates the users from', () => {
    const readers = allStatements()
      .filter((st) => st.stack === s.stacks.controlPlane.stackName && asArray(st.Action).includes('secretsmanager:GetSecretValue'))
      .filter((st) => JSON.stringify(st.Resource).includes('AppSecret'))
      .map((st) => st.policy.replace(/RoleDefaultPolicy.*$/, ''));
    expect([...new Set(readers)]).toEqual(['ControlPlaneMigrate']);
  });
});

describe('least privilege', () => {
  /** Actions IAM cannot scope to a resource; each is acknowledged in docs/cdk-nag.md. */
  const WILDCARD_ONLY = new Set([
    'cloudwatch:GetMetricData',
    'application-autoscaling:DescribeScalableTargets',
    'xray:PutTraceSegments',
    'xray:PutTelemetryRecords',
    'ec2:CreateNetworkInterface',
    'ec2:DescribeNetworkInterfaces',
    'ec2:DeleteNetworkInterface',
    'ec2:AssignPrivateIpAddresses',
    'ec2:UnassignPrivateIpAddresses',
    'ecr:GetAuthorizationToken',
  ]);

  it('lets the API, and only the API, describe the RDS instances it merges into shard health', () => {
    const describers = allStatements()
      .filter((st) => asArray(st.Action).includes('rds:DescribeDBInstances'))
      .map((st) => st.policy.replace(/RoleDefaultPolicy.*$/, ''));
    expect([...new Set(describers)]).toEqual(['ControlPlaneApi']);
  });

  it('grants "*" resources only for actions IAM cannot scope', () => {
    const offenders = allStatements()
      .filter((st) => asArray(st.Resource).includes('*'))
      .flatMap((st) => asArray(st.Action).filter((a) => !WILDCARD_ONLY.has(a)).map((a) => `${st.stack}/${st.policy}: ${a}`));
    expect(offenders).toEqual([]);
  });
});

describe('observability stack', () => {
  it('alarms on replica lag, free storage, connections and CPU of every database instance, to the alarm topic', () => {
    const t = s.template(s.stacks.observability);
    const alarms = resourcesOf(t, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties as Json);
    const { shards, replicasPerShard } = s.config.database;
    const count = (metric: string): number => alarms.filter((a) => a['MetricName'] === metric && a['Namespace'] === 'AWS/RDS').length;
    expect(count('ReplicaLag')).toBe(shards * replicasPerShard);
    expect(count('FreeStorageSpace')).toBe(shards * (1 + replicasPerShard));
    expect(count('DatabaseConnections')).toBe(shards * (1 + replicasPerShard));
    expect(count('CPUUtilization')).toBe(shards * (1 + replicasPerShard));
    for (const a of alarms) expect(JSON.stringify(a['AlarmActions'])).toContain('AlarmTopic');
  });

  it('alarms on the response time with the statistic the controller reads', () => {
    const t = s.template(s.stacks.observability);
    const responseTime = resourcesOf(t, 'AWS::CloudWatch::Alarm')
      .map(([, a]) => a.Properties as Json)
      .filter((a) => a['MetricName'] === 'TargetResponseTime');
    expect(responseTime.length).toBeGreaterThan(0);
    for (const a of responseTime) expect(a['ExtendedStatistic'] ?? a['Statistic']).toBe(RESPONSE_TIME_STATISTIC);
  });

  it("alarms on the load balancer's own 5xx answers, to the alarm topic", () => {
    s.template(s.stacks.observability).hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'HTTPCode_ELB_5XX_Count',
      Namespace: 'AWS/ApplicationELB',
      Threshold: s.config.alarms.alb5xxPerMinute,
      AlarmActions: [Match.objectLike({ 'Fn::GetStackOutput': Match.objectLike({ StackName: s.stacks.controlPlane.stackName }) })],
    });
  });

  it('alarms on errors of every control-plane function, the moves worker included, to the alarm topic', () => {
    const t = s.template(s.stacks.observability);
    const errorAlarms = resourcesOf(t, 'AWS::CloudWatch::Alarm')
      .map(([, a]) => a.Properties as Json)
      .filter((a) => a['MetricName'] === 'Errors' && a['Namespace'] === 'AWS/Lambda');
    expect(errorAlarms).toHaveLength(5);
    expect(errorAlarms.map((a) => a['AlarmDescription']).sort()).toEqual(
      ['Alarm', 'Api', 'Evaluate', 'Migrate', 'Moves'].map((name) => `control plane: ${name} function errors`),
    );
    for (const a of errorAlarms) expect(JSON.stringify(a['AlarmActions'])).toContain('AlarmTopic');
  });

  it('alarms when EventBridge fails to invoke the moves worker (its failure queue fills with superseded ticks by design)', () => {
    const t = s.template(s.stacks.observability);
    const alarms = resourcesOf(t, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties as Json);
    const delivery = alarms.filter((a) => a['MetricName'] === 'FailedInvocations' && a['Namespace'] === 'AWS/Events');
    expect(delivery).toHaveLength(1);
    expect(JSON.stringify(delivery[0]?.['Dimensions'])).toContain('MovesSchedule');
    const deadLetters = alarms
      .filter((a) => a['MetricName'] === 'ApproximateNumberOfMessagesVisible' && String(a['AlarmDescription']).startsWith('control plane'))
      .map((a) => a['AlarmDescription']);
    expect(deadLetters.sort()).toEqual(['control plane: failed Alarm events in the dead-letter queue', 'control plane: failed Evaluate events in the dead-letter queue']);
  });

  it('alarms when a shard move step fails, on the metric the moves worker publishes', () => {
    const alarms = resourcesOf(s.template(s.stacks.observability), 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties as Json);
    const moves = alarms.filter((a) => a['MetricName'] === 'MoveFailures');
    expect(moves).toHaveLength(1);
    expect(moves[0]).toMatchObject({ Namespace: 'CaDmsScaling', Dimensions: [{ Name: 'service', Value: METRICS_SERVICE }], Threshold: 1 });
  });

  it('alarms when a shard move the worker ran has made no progress for 30 minutes, whatever the failures say', () => {
    const alarms = resourcesOf(s.template(s.stacks.observability), 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties as Json);
    const stalled = alarms.filter((a) => a['MetricName'] === 'MoveSecondsWithoutProgress');
    expect(stalled).toHaveLength(1);
    expect(stalled[0]).toMatchObject({
      Namespace: 'CaDmsScaling',
      Dimensions: [{ Name: 'service', Value: METRICS_SERVICE }],
      Statistic: 'Maximum',
      Threshold: 30 * 60,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      // One datapoint per run of the worker (up to 13 minutes apart): missing data must not clear it.
      TreatMissingData: 'ignore',
    });
    expect(JSON.stringify(stalled[0]?.['AlarmActions'])).toContain('AlarmTopic');
  });

  it('graphs errors and duration of the moves worker with the other control-plane functions', () => {
    const [[, dash]] = resourcesOf(s.template(s.stacks.observability), 'AWS::CloudWatch::Dashboard') as [[string, { Properties?: Json }]];
    const body = JSON.stringify(dash.Properties?.['DashboardBody']);
    expect(body.match(/\\"label\\":\\"Moves\\"/g) ?? []).toHaveLength(2);
  });

  it('builds one dashboard with a row per service and shard and the control plane', () => {
    const t = s.template(s.stacks.observability);
    const [[, dash]] = resourcesOf(t, 'AWS::CloudWatch::Dashboard') as [[string, { Properties?: Json }]];
    const body = JSON.stringify(dash.Properties?.['DashboardBody']);
    for (const name of SERVICE_NAMES) expect(body).toContain(`Service ${name}`);
    expect(body).toContain('Shard shard-001');
    expect(body).toContain('Control plane');
  });

  it('graphs the controller metrics with every dimension the functions publish them with', () => {
    const [[, dash]] = resourcesOf(s.template(s.stacks.observability), 'AWS::CloudWatch::Dashboard') as [[string, { Properties?: Json }]];
    const body = JSON.stringify(dash.Properties?.['DashboardBody']).replace(/\\/g, '');
    // Powertools adds `service` to every metric, so a graph that leaves it out shows nothing.
    expect(CONTROLLER_METRICS_SERVICE).toBe(METRICS_SERVICE);
    for (const name of SERVICE_NAMES) expect(body).toContain(`"DesiredCount","ScaledService","${name}","service","${METRICS_SERVICE}"`);
    expect(body).toContain(`SEARCH('{CaDmsScaling,Direction,service} MetricName="Decisions" service="${METRICS_SERVICE}"'`);
    expect(body).toContain(`SEARCH('{CaDmsScaling,Outcome,service} MetricName="DecisionOutcomes" service="${METRICS_SERVICE}"'`);
  });

  it('outputs the API URL, the load balancer DNS name and the dashboard URL', () => {
    s.template(s.stacks.controlPlane).hasOutput('ScalingApiUrl', {});
    s.template(s.stacks.services).hasOutput('LoadBalancerDnsName', {});
    s.template(s.stacks.observability).hasOutput('DashboardUrl', {});
  });
});

/**
 * A template value with every cross-stack reference replaced by a stand-in for what it names:
 * `<logicalId>.<attribute>` of the producing stack's resource (ARN suffixes of target groups and
 * load balancers in the shape the topology schema checks). Other intrinsics are not expected.
 */
function resolveCrossStack(value: unknown): string {
  if (typeof value === 'string') return value;
  const v = value as Json;
  if ('Fn::Join' in v) {
    const [separator, parts] = v['Fn::Join'] as [string, unknown[]];
    return parts.map(resolveCrossStack).join(separator);
  }
  if ('Fn::GetStackOutput' in v) {
    const { StackName, OutputName } = v['Fn::GetStackOutput'] as { StackName: string; OutputName: string };
    const producer = Object.values(s.stacks).find((stack) => stack.stackName === StackName);
    if (!producer) throw new Error(`no stack ${StackName}`);
    const output = (s.template(producer).toJSON()['Outputs'] as Record<string, { Value: Json }>)[OutputName]?.Value;
    if (!output) throw new Error(`no output ${OutputName} in ${StackName}`);
    const [id, attribute] = 'Ref' in output ? [output['Ref'] as string, 'Ref'] : (output['Fn::GetAtt'] as [string, string]);
    if (attribute === 'TargetGroupFullName') return `targetgroup/${id.slice(0, 24)}/0123456789abcdef`;
    if (attribute === 'LoadBalancerFullName') return `app/${id.slice(0, 24)}/0123456789abcdef`;
    return `${id}.${attribute}`;
  }
  throw new Error(`unexpected intrinsic ${JSON.stringify(v)}`);
}

describe('worker queue', () => {
  const queueId = () => logicalId(s.stacks.data, s.stacks.data.workerQueue.queue);
  const dlqId = () => logicalId(s.stacks.data, s.stacks.data.workerQueue.deadLetterQueue);
  const queues = () => Object.fromEntries(resourcesOf(s.template(s.stacks.data), 'AWS::SQS::Queue'));

  it('is an SQS queue encrypted with SQS-managed keys that redrives to an encrypted dead-letter queue after the configured receives', () => {
    const all = queues();
    expect(Object.keys(all).sort()).toEqual([dlqId(), queueId()].sort());
    for (const q of Object.values(all)) {
      expect(q.Properties?.['SqsManagedSseEnabled']).toBe(true);
      expect(q.Properties?.['MessageRetentionPeriod']).toBe(14 * 24 * 3600);
    }
    expect(all[queueId()]?.Properties?.['RedrivePolicy']).toEqual({
      deadLetterTargetArn: { 'Fn::GetAtt': [dlqId(), 'Arn'] },
      maxReceiveCount: s.config.workerQueue.maxReceiveCount,
    });
    expect(all[queueId()]?.Properties?.['VisibilityTimeout']).toBe(s.config.workerQueue.visibilityTimeoutSeconds);
  });

  it('refuses anything but TLS on both queues', () => {
    for (const id of [queueId(), dlqId()]) {
      s.template(s.stacks.data).hasResourceProperties('AWS::SQS::QueuePolicy', {
        Queues: [{ Ref: id }],
        PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]) },
      });
    }
  });

  it("gives the worker's application container the queue's URL and name, and no other service either", () => {
    for (const name of SERVICE_NAMES) {
      const task = logicalId(s.stacks.services, s.stacks.services.services[name].taskDefinition);
      const defs = (s.template(s.stacks.services).findResources('AWS::ECS::TaskDefinition')[task] as { Properties: Json }).Properties['ContainerDefinitions'] as Array<{
        Name: string;
        Environment?: Array<{ Name: string; Value: unknown }>;
      }>;
      const env = Object.fromEntries((defs.find((d) => d.Name === APP_CONTAINER)?.Environment ?? []).map((e) => [e.Name, e.Value]));
      if (name === 'worker') {
        expect(resolveCrossStack(env['WORKER_QUEUE_URL'])).toBe(`${queueId()}.Ref`);
        expect(resolveCrossStack(env['WORKER_QUEUE_NAME'])).toBe(`${queueId()}.QueueName`);
      } else {
        expect(Object.keys(env).filter((k) => k.startsWith('WORKER_QUEUE')), name).toEqual([]);
      }
    }
  });

  it('lets the worker task role, and no other role, send, receive, delete and extend jobs of the queue only', () => {
    const workerRole = logicalId(s.stacks.services, s.stacks.services.services.worker.taskDefinition.taskRole);
    // The control plane's own failure queues live in its stack; the worker queue is the only
    // queue of another stack (the data stack).
    const sqsStatements = allStatements().filter((st) => asArray(st.Action).some((a) => a.startsWith('sqs:')) && JSON.stringify(st.Resource).includes('Fn::GetStackOutput'));
    expect(sqsStatements.length).toBeGreaterThan(0);
    const policies = Object.fromEntries(resourcesOf(s.template(s.stacks.services), 'AWS::IAM::Policy'));
    for (const st of sqsStatements) {
      expect(st.stack).toBe(s.stacks.services.stackName);
      expect(JSON.stringify(policies[st.policy]?.Properties?.['Roles'])).toContain(workerRole);
      expect(resolveCrossStack(st.Resource)).toBe(`${queueId()}.Arn`);
    }
    const actions = sqsStatements.flatMap((st) => asArray(st.Action));
    expect(actions).toEqual(expect.arrayContaining(['sqs:SendMessage', 'sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility']));
  });

  it("alarms, on the controller's statistic and threshold, when the waiting jobs per running worker task exceed queue_depth_scale_up", () => {
    const alarms = resourcesOf(s.template(s.stacks.observability), 'AWS::CloudWatch::Alarm').filter(([, a]) => JSON.stringify(a.Properties?.['Metrics'] ?? []).includes('AWS/SQS'));
    expect(alarms).toHaveLength(1);
    const p = alarms[0]?.[1].Properties as Json;
    const worker = parseScalingConfig(JSON.parse(JSON.stringify(s.config.scaling)));
    expect(p['Threshold']).toBe((worker.services['worker']?.queue_depth_scale_up ?? worker.queue_depth_scale_up));
    expect(p['ComparisonOperator']).toBe('GreaterThanThreshold');
    const metrics = p['Metrics'] as Array<{ Id: string; Expression?: string; MetricStat?: { Metric: { Namespace: string; MetricName: string; Dimensions: Array<{ Name: string; Value: unknown }> }; Stat: string } }>;
    expect(metrics.find((m) => m.Expression)?.Expression).toBe('visible / IF(tasks > 0, tasks, 1)');
    const visible = metrics.find((m) => m.Id === 'visible')?.MetricStat;
    expect(visible).toMatchObject({ Metric: { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible' }, Stat: 'Maximum' });
    expect(resolveCrossStack(visible?.Metric.Dimensions[0]?.Value)).toBe(`${queueId()}.QueueName`);
    const tasks = metrics.find((m) => m.Id === 'tasks')?.MetricStat;
    expect(tasks?.Metric).toMatchObject({ Namespace: 'ECS/ContainerInsights', MetricName: 'RunningTaskCount' });
    const serviceDim = tasks?.Metric.Dimensions.find((d) => d.Name === 'ServiceName')?.Value;
    expect(resolveCrossStack(serviceDim)).toBe(`${logicalId(s.stacks.services, s.stacks.services.services.worker.service)}.Name`);
    expect(JSON.stringify(p['AlarmActions'])).toContain(s.stacks.controlPlane.stackName);
  });

  it('alarms to the alarm topic as soon as a job lands in the dead-letter queue', () => {
    const alarms = resourcesOf(s.template(s.stacks.observability), 'AWS::CloudWatch::Alarm').filter(([, a]) => a.Properties?.['Namespace'] === 'AWS/SQS' && JSON.stringify(a.Properties['Dimensions']).includes(s.stacks.data.stackName));
    expect(alarms).toHaveLength(1);
    const p = alarms[0]?.[1].Properties as Json;
    expect(p).toMatchObject({ MetricName: 'ApproximateNumberOfMessagesVisible', Statistic: 'Maximum', Threshold: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold' });
    expect(resolveCrossStack((p['Dimensions'] as Array<{ Value: unknown }>)[0]?.Value)).toBe(`${dlqId()}.QueueName`);
    expect(JSON.stringify(p['AlarmActions'])).toContain(s.stacks.controlPlane.stackName);
  });

  it("makes the controller's GetMetricData query read the visible messages of this queue for the worker", async () => {
    const parameter = s.stacks.controlPlane.controlPlane.config.parameters['SCALING_TARGETS_JSON'];
    if (!parameter) throw new Error('no SCALING_TARGETS_JSON parameter');
    const value = (s.template(s.stacks.controlPlane).findResources('AWS::SSM::Parameter')[logicalId(s.stacks.controlPlane, parameter)] as { Properties: Json }).Properties['Value'];
    const topology = parseTopology(JSON.parse(resolveCrossStack(value)));
    const cw = mockClient(CloudWatchClient);
    try {
      cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });
      await new CloudWatchMetricsSource({ client: new CloudWatchClient({ region: 'eu-west-1' }), topology }).read(['worker'], Date.UTC(2026, 0, 5, 12, 0, 30));
      const queries = cw.commandCalls(GetMetricDataCommand).flatMap((c) => c.args[0].input.MetricDataQueries ?? []);
      const sqsQueries = queries.filter((q) => q.MetricStat?.Metric?.Namespace === 'AWS/SQS');
      expect(sqsQueries.map((q) => q.MetricStat)).toEqual([
        expect.objectContaining({
          Metric: { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible', Dimensions: [{ Name: 'QueueName', Value: `${queueId()}.QueueName` }] },
          Stat: 'Maximum',
        }),
      ]);
    } finally {
      cw.restore();
    }
  });
});

describe('first deploy, rollback and redeploy', () => {
  it('starts the schedules and the alarm subscription only once the migrations have run', () => {
    const t = s.template(s.stacks.controlPlane);
    const migrations = s.stacks.controlPlane.getLogicalId(s.stacks.controlPlane.controlPlane.migrations.resource.node.defaultChild as CfnResource);
    const triggers = [...resourcesOf(t, 'AWS::Events::Rule'), ...resourcesOf(t, 'AWS::SNS::Subscription')];
    expect(triggers).toHaveLength(3);
    for (const [id, trigger] of triggers) expect(trigger.DependsOn, id).toContain(migrations);
  });

  it('updates the functions whose code reads the migrated schemas only after the migrations, and the migrations depend on none of them (no cycle)', () => {
    const stack = s.stacks.controlPlane;
    const cp = stack.controlPlane;
    const resources = s.template(stack).toJSON()['Resources'] as Record<string, { Type: string; DependsOn?: string[]; Properties?: unknown }>;
    const migrations = logicalId(stack, cp.migrations.resource);
    const fnId = (fn: { function: { node: { defaultChild?: unknown } } }): string => logicalId(stack, fn.function);
    // The upgrade window of shard migration 011: new moves code ran on shards still at 010.
    expect(resources[fnId(cp.moves)]?.Type).toBe('AWS::Lambda::Function');
    expect(resources[fnId(cp.moves)]?.DependsOn).toContain(migrations);
    for (const fn of [cp.evaluate, cp.alarm, cp.api]) expect(resources[fnId(fn)]?.DependsOn, fnId(fn)).toContain(migrations);
    expect(resources[fnId(cp.migrate)]?.DependsOn ?? []).not.toContain(migrations);

    // Everything the migrations resource needs before it runs, through DependsOn, Ref and GetAtt.
    const refsOf = (value: unknown): string[] => {
      if (Array.isArray(value)) return value.flatMap(refsOf);
      if (value === null || typeof value !== 'object') return [];
      return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => {
        if (k === 'Ref' && typeof v === 'string') return [v];
        if (k === 'Fn::GetAtt') return [Array.isArray(v) ? String(v[0]) : String(v).split('.')[0] ?? ''];
        return refsOf(v);
      });
    };
    const needed = new Set<string>();
    const pending = [migrations];
    for (let id = pending.pop(); id !== undefined; id = pending.pop()) {
      const r = resources[id];
      if (!r) continue;
      for (const next of [...(r.DependsOn ?? []), ...refsOf(r.Properties)]) {
        if (!needed.has(next)) {
          needed.add(next);
          pending.push(next);
        }
      }
    }
    expect(needed).toContain(fnId(cp.migrate));
    expect(needed).not.toContain(migrations);
    for (const fn of [cp.evaluate, cp.alarm, cp.api, cp.moves]) expect(needed, fnId(fn)).not.toContain(fnId(fn));
  });

  it('retains nothing a rolled-back deploy created: kept resources are RetainExceptOnCreate, but for the log bucket and the account-wide API Gateway logging role', () => {
    const retained = Object.values(s.stacks).flatMap((stack) =>
      Object.entries(s.template(stack).toJSON()['Resources'] as Record<string, { Type: string; DeletionPolicy?: string }>)
        .filter(([, r]) => r.DeletionPolicy === 'Retain')
        .map(([, r]) => r.Type),
    );
    // The bucket may hold log objects by then (a non-empty bucket cannot be deleted); the API
    // Gateway account setting and its role are account-wide, shared with other APIs.
    expect(retained.sort()).toEqual(['AWS::ApiGateway::Account', 'AWS::IAM::Role', 'AWS::S3::Bucket']);
    const exceptOnCreate = Object.values(s.stacks).flatMap((stack) =>
      Object.values(s.template(stack).toJSON()['Resources'] as Record<string, { Type: string; DeletionPolicy?: string }>)
        .filter((r) => r.DeletionPolicy === 'RetainExceptOnCreate')
        .map((r) => r.Type),
    );
    expect(new Set(exceptOnCreate)).toEqual(new Set(['AWS::KMS::Key', 'AWS::Logs::LogGroup', 'AWS::RDS::DBParameterGroup']));
  });

  it("creates Application Auto Scaling's service-linked role for ECS, which every scalable target names, in the first stack, accepting one that exists and never deleting it", () => {
    const t = s.template(s.stacks.network);
    const [created, ...others] = resourcesOf(t, 'Custom::EcsAutoScalingServiceLinkedRole');
    expect(created, 'no Custom::EcsAutoScalingServiceLinkedRole in the network stack').toBeDefined();
    expect(others).toEqual([]);
    const call = JSON.parse(created?.[1].Properties?.['Create'] as string) as Json;
    expect(call).toMatchObject({
      service: 'IAM',
      action: 'createServiceLinkedRole',
      parameters: { AWSServiceName: 'ecs.application-autoscaling.amazonaws.com' },
      ignoreErrorCodesMatching: 'InvalidInput',
    });
    expect(created?.[1].Properties?.['Delete']).toBeUndefined();
    t.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: [
          {
            Action: 'iam:CreateServiceLinkedRole',
            Effect: 'Allow',
            Condition: { StringEquals: { 'iam:AWSServiceName': 'ecs.application-autoscaling.amazonaws.com' } },
            Resource: Match.objectLike({
              'Fn::Join': ['', Match.arrayWith([':role/aws-service-role/ecs.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_ECSService'])],
            }),
          },
        ],
      },
    });
    // The role the services stack's scalable targets are registered with (deployed after this stack).
    const targets = resourcesOf(s.template(s.stacks.services), 'AWS::ApplicationAutoScaling::ScalableTarget');
    expect(targets.length).toBeGreaterThan(0);
    for (const [id, target] of targets) {
      expect(JSON.stringify(target.Properties?.['RoleARN']), id).toContain(':role/aws-service-role/ecs.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_ECSService');
    }
    expect(s.stacks.services.dependencies).toContain(s.stacks.network);
  });

  it("creates ECS's service-linked role in the first stack, accepting one that exists and never deleting it, before any cluster", () => {
    const t = s.template(s.stacks.network);
    const [created, ...others] = resourcesOf(t, 'Custom::EcsServiceLinkedRole');
    expect(others).toEqual([]);
    const call = JSON.parse(created?.[1].Properties?.['Create'] as string) as Json;
    expect(call).toMatchObject({ service: 'IAM', action: 'createServiceLinkedRole', parameters: { AWSServiceName: 'ecs.amazonaws.com' }, ignoreErrorCodesMatching: 'InvalidInput' });
    expect(created?.[1].Properties?.['Delete']).toBeUndefined();
    t.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: [
          {
            Action: 'iam:CreateServiceLinkedRole',
            Effect: 'Allow',
            Condition: { StringEquals: { 'iam:AWSServiceName': 'ecs.amazonaws.com' } },
            Resource: Match.objectLike({ 'Fn::Join': ['', Match.arrayWith([':role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS'])] }),
          },
        ],
      },
    });
    // The cluster and the services are in the services stack, deployed after the network stack.
    expect(resourcesOf(t, 'AWS::ECS::Cluster')).toEqual([]);
    expect(s.stacks.services.dependencies).toContain(s.stacks.network);
  });

  it('names no log group but those RDS names itself and those of the rotation functions, named with the prefix', () => {
    for (const stack of Object.values(s.stacks)) {
      for (const [id, group] of resourcesOf(s.template(stack), 'AWS::Logs::LogGroup')) {
        const name = group.Properties?.['LogGroupName'];
        if (name === undefined) continue;
        // A name made of a generated function name (CDK's custom-resource handlers) cannot collide.
        if (typeof name !== 'string') expect(name, `${stack.stackName}/${id}`).toEqual({ 'Fn::Join': ['', ['/aws/lambda/', { Ref: expect.stringMatching(/^[A-Za-z0-9]+$/) }]] });
        // The rotation functions the transforms create (test/infra/generated-functions.test.ts).
        else if (name.startsWith('/aws/lambda/')) expect(name, `${stack.stackName}/${id}`).toMatch(/^\/aws\/lambda\/ca-dms-dev-[A-Za-z0-9-]+$/);
        else expect(name, `${stack.stackName}/${id}`).toMatch(/^\/aws\/rds\/instance\//);
      }
    }
  });
});
