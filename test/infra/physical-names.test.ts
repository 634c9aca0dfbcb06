/**
 * Physical names: every name property of every resource in every stack of every shipped
 * configuration (config/*.json, prod with the domain it must have). A fixed name collides
 * when two environments share an account and region (Dev and Prod side by side), or when a
 * resource a failed deploy leaves behind keeps its name for the retry. So each physical name is
 * either absent (CloudFormation names the resource), derived from another resource's generated
 * name, or contains the environment's prefix (`<name>-<environment>`); no two shipped
 * environments share one; and nothing a rolled-back first deploy keeps (`DeletionPolicy: Retain`)
 * is named. Every `…Name`/`…Identifier` property found must be classified below, so a new
 * resource type cannot slip through unjudged.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { deployable, ROOT, synthesize, type Synthesized } from './support/synth.js';


/** Properties that name the resource itself, unique in an account and region (or account-wide). */
const PHYSICAL_NAMES: Readonly<Record<string, readonly string[]>> = {
  'AWS::ApiGateway::RestApi': ['Name'],
  'AWS::CloudWatch::Alarm': ['AlarmName'],
  'AWS::CloudWatch::CompositeAlarm': ['AlarmName'],
  'AWS::CloudWatch::Dashboard': ['DashboardName'],
  'AWS::EC2::SecurityGroup': ['GroupName'],
  'AWS::ECR::Repository': ['RepositoryName'],
  'AWS::ECS::Cluster': ['ClusterName'],
  'AWS::ECS::Service': ['ServiceName'],
  'AWS::ElasticLoadBalancingV2::LoadBalancer': ['Name'],
  'AWS::ElasticLoadBalancingV2::TargetGroup': ['Name'],
  'AWS::Events::Rule': ['Name'],
  'AWS::IAM::ManagedPolicy': ['ManagedPolicyName'],
  'AWS::IAM::Role': ['RoleName'],
  'AWS::KMS::Alias': ['AliasName'],
  'AWS::Lambda::Function': ['FunctionName'],
  'AWS::Logs::LogGroup': ['LogGroupName'],
  'AWS::RDS::DBInstance': ['DBInstanceIdentifier'],
  'AWS::RDS::DBParameterGroup': ['DBParameterGroupName'],
  'AWS::RDS::DBProxy': ['DBProxyName'],
  'AWS::RDS::DBSubnetGroup': ['DBSubnetGroupName'],
  'AWS::S3::Bucket': ['BucketName'],
  'AWS::SNS::Topic': ['TopicName'],
  'AWS::SQS::Queue': ['QueueName'],
  'AWS::SSM::Parameter': ['Name'],
  'AWS::SecretsManager::Secret': ['Name'],
};

/**
 * `…Name`/`…Identifier` properties that are not the resource's own unique name: references to
 * another resource, labels, metric names, engine families, names scoped inside their parent.
 */
const NOT_PHYSICAL: Readonly<Record<string, readonly string[]>> = {
  'AWS::ApiGateway::RequestValidator': ['Name'],
  'AWS::ApiGateway::Stage': ['StageName'],
  'AWS::ApiGateway::Deployment': ['StageName'],
  'AWS::ApiGateway::GatewayResponse': ['RestApiId'],
  'AWS::ApplicationAutoScaling::ScalingPolicy': ['PolicyName'],
  // What the certificate is for, not its name: ACM issues any number of certificates for one domain.
  'AWS::CertificateManager::Certificate': ['DomainName'],
  'AWS::CloudWatch::Alarm': ['MetricName'],
  'AWS::EC2::FlowLog': ['LogGroupName'],
  'AWS::EC2::VPCEndpoint': ['ServiceName'],
  // Task definition families are not unique: a family with the same name only gets a new revision.
  'AWS::ECS::TaskDefinition': ['Family'],
  'AWS::IAM::Policy': ['PolicyName'],
  'AWS::Lambda::EventInvokeConfig': ['FunctionName'],
  'AWS::Lambda::Permission': ['FunctionName'],
  'AWS::Logs::MetricFilter': ['LogGroupName', 'FilterName'],
  'AWS::RDS::DBInstance': ['CACertificateIdentifier', 'DBName', 'DBParameterGroupName', 'DBSubnetGroupName', 'SourceDBInstanceIdentifier'],
  'AWS::RDS::DBParameterGroup': ['Family'],
  'AWS::RDS::DBProxy': ['EngineFamily'],
  'AWS::RDS::DBProxyTargetGroup': ['DBProxyName', 'TargetGroupName'],
  'AWS::Route53::RecordSet': ['Name', 'HostedZoneName'],
  'AWS::SNS::Topic': ['DisplayName'],
};

interface NameUse {
  readonly where: string;
  readonly type: string;
  readonly property: string;
  readonly value: unknown;
  readonly deletionPolicy?: string;
}

const configs = readdirSync(join(ROOT, 'config')).filter((f) => f.endsWith('.json'));

/** Every `…Name`/`…Identifier` property of every resource of the environment's stacks. */
function nameUses(s: Synthesized): NameUse[] {
  return Object.values(s.stacks).flatMap((stack) => {
    const resources = (s.template(stack).toJSON() as { Resources: Record<string, { Type: string; Properties?: Record<string, unknown>; DeletionPolicy?: string }> }).Resources;
    return Object.entries(resources).flatMap(([id, r]) =>
      Object.entries(r.Properties ?? {})
        .filter(([property]) => /(Name|Identifier|Family)$/.test(property))
        .map(([property, value]) => ({ where: `${stack.stackName}/${id}`, type: r.Type, property, value, ...(r.DeletionPolicy ? { deletionPolicy: r.DeletionPolicy } : {}) })),
    );
  });
}

/** A name made from another resource's generated name (`Ref`, `Fn::GetAtt`) or the stack's own. */
function derived(value: unknown): boolean {
  const text = JSON.stringify(value);
  return /"Fn::GetAtt"|"Ref":"(?!AWS::(Region|AccountId|Partition|URLSuffix)")/.test(text);
}

const environments = configs.map((file) => {
  const raw = JSON.parse(readFileSync(join(ROOT, 'config', file), 'utf8')) as { production?: boolean };
  const s = synthesize(deployable(raw));
  const prefix = `${s.config.name}-${s.config.environment}`;
  const uses = nameUses(s);
  const physical = uses.filter((u) => PHYSICAL_NAMES[u.type]?.includes(u.property));
  return { file, s, prefix, uses, physical };
});

describe.each(environments.map((e) => [e.file, e] as const))('config/%s', (_file, env) => {
  it('synthesizes', () => {
    expect(env.s.error).toBeUndefined();
    expect(env.physical.length).toBeGreaterThan(0);
  });

  it('classifies every name property as a physical name or not', () => {
    const unjudged = env.uses.filter((u) => !PHYSICAL_NAMES[u.type]?.includes(u.property) && !NOT_PHYSICAL[u.type]?.includes(u.property)).map((u) => `${u.type}.${u.property} (${u.where})`);
    expect(unjudged).toEqual([]);
  });

  it("gives each physical name the environment's prefix, or leaves it to CloudFormation", () => {
    const offenders = env.physical.filter((u) => !derived(u.value) && !JSON.stringify(u.value).includes(env.prefix)).map((u) => `${u.where} ${u.property}=${JSON.stringify(u.value)}`);
    expect(offenders).toEqual([]);
  });

  it('names nothing that a rolled-back first deploy keeps', () => {
    const kept = env.physical.filter((u) => u.deletionPolicy === 'Retain' && !derived(u.value)).map((u) => `${u.where} ${u.property}`);
    expect(kept).toEqual([]);
  });

  it('leaves the ECS cluster to CloudFormation to name', () => {
    expect(env.uses.filter((u) => u.type === 'AWS::ECS::Cluster' && u.property === 'ClusterName')).toEqual([]);
  });
});

describe('two environments in one account and region', () => {
  it('share no physical name', () => {
    const literal = (e: (typeof environments)[number]): Set<string> => new Set(e.physical.filter((u) => !derived(u.value)).map((u) => `${u.type} ${JSON.stringify(u.value)}`));
    expect(environments.length).toBeGreaterThanOrEqual(2);
    for (const [i, a] of environments.entries()) {
      for (const b of environments.slice(i + 1)) {
        const shared = [...literal(a)].filter((n) => literal(b).has(n));
        expect(shared, `${a.file} and ${b.file}`).toEqual([]);
      }
    }
  });
});
