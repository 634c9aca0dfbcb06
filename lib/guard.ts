/**
 * cfn-guard with the AWS Control Tower proactive rules (`@cdklabs/cdk-validator-cfnguard`, runs
 * offline), and every exemption from them, in this one file. `bin/app.ts` and the infra tests
 * register {@link guardValidator}, so `npm run synth` fails on any failure not exempted here.
 * Each exemption names the rule, the resources it covers (by CloudFormation type and, where the
 * rule depends on the configuration, by the property that decides it) and why the rule does not
 * apply there.
 *
 * @example
 * ```ts
 * new CaDmsStage(app, 'Dev', { config, sources }); // applies the exemptions and the key-grant fix
 * Validations.of(app).addPlugins(guardValidator());
 * ```
 */
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import {
  CfnResource,
  Stack,
  type IPolicyValidationContextBeta1,
  type IPolicyValidationPluginBeta1,
  type PolicyValidationPluginReportBeta1,
} from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import type { Construct } from 'constructs';
import { CfnGuardValidator } from '@cdklabs/cdk-validator-cfnguard';
import { acknowledge } from './nag.js';

/** One accepted rule failure. */
export interface GuardExemption {
  /** The rule's name, as the validator reports it. */
  readonly rule: string;
  /** The CloudFormation resource type it covers. */
  readonly type: string;
  /** Narrows it to the resources whose (resolved) properties make the rule not apply. @default - every resource of `type` */
  readonly when?: (properties: Record<string, unknown>) => boolean;
  readonly reason: string;
}

const LOG_BUCKET_REASON = 'the load balancer access-log bucket is a log sink';

export const GUARD_EXEMPTIONS: readonly GuardExemption[] = [
  {
    rule: 'cloudwatch_log_group_retention_period_check',
    type: 'AWS::Logs::LogGroup',
    when: (p) => typeof p['RetentionInDays'] === 'number' && p['RetentionInDays'] < 365,
    reason: 'Retention is a per-environment cost decision made in the deployment configuration (logRetentionDays, network.flowLogRetentionDays; 90 days by default, config/prod.json keeps application logs 365 days).',
  },
  {
    rule: 'cloudwatch_log_group_encrypted_check',
    type: 'AWS::Logs::LogGroup',
    reason: 'CloudWatch Logs encrypts every log group at rest with service-managed keys; these logs carry no credentials (secrets are never logged), so a customer-managed key would add a key policy and a monthly charge per key without protecting anything more.',
  },
  {
    rule: 'lambda_inside_vpc_check',
    type: 'AWS::Lambda::Function',
    when: (p) => p['VpcConfig'] === undefined,
    reason: "CDK's own custom-resource handlers (default security group restriction, the ECS service-linked role's AwsCustomResource, custom-resource provider framework): they only call AWS APIs and reach nothing in the VPC; the five control-plane functions do run in the VPC.",
  },
  {
    rule: 'lambda_inside_vpc_check',
    type: 'AWS::Lambda::Function',
    when: (p) => inVpc(p['VpcConfig']),
    reason:
      "The five control-plane functions are in the VPC's compute subnets with the functions' security group; both come from the network stack as cross-stack references (Fn::GetStackOutput), and the rule only accepts a plain string or a Ref/GetAtt of the same template.",
  },
  {
    rule: 'lambda_function_public_access_prohibited_check',
    type: 'AWS::Lambda::Permission',
    when: (p) => p['Principal'] === 'apigateway.amazonaws.com',
    reason: "API Gateway's invoke permissions carry a SourceArn naming this REST API, its stage and method (an Fn::Join of the API's id), which the rule only recognises as a plain string or a Ref/GetAtt.",
  },
  {
    rule: 'rds_instance_multi_az_support_check',
    type: 'AWS::RDS::DBInstance',
    when: (p) => p['MultiAZ'] !== true,
    reason: 'Multi-AZ follows database.multiAz (default: the production flag): development primaries are single-AZ to halve their cost; production primaries are Multi-AZ.',
  },
  {
    rule: 'rds_instance_deletion_protection_enabled_check',
    type: 'AWS::RDS::DBInstance',
    when: (p) => p['DeletionProtection'] !== true,
    reason: 'Deletion protection follows database.deletionProtection (default: the production flag): with it on, CloudFormation can neither roll back a failed first create (the stack stops in ROLLBACK_FAILED) nor run `cdk destroy`, which development environments need; production keeps it on.',
  },
  {
    rule: 'rds_instance_enhanced_monitoring_enabled_check',
    type: 'AWS::RDS::DBInstance',
    reason: "The alarms, the dashboard and the controller's shard health read the instance's CloudWatch metrics (CPU, memory, storage, connections, replica lag) and Performance Insights where the class supports it; OS process lists from Enhanced Monitoring are not used and would add CloudWatch Logs ingestion per instance.",
  },
  {
    rule: 'rds_instance_no_default_ports_check',
    type: 'AWS::RDS::DBInstance',
    reason: 'PostgreSQL keeps its default port 5432: a non-standard port is obscurity, not control; the instances sit in isolated subnets and their security group admits only the services, the control-plane functions and the proxy.',
  },
  {
    rule: 'ecs_task_definition_nonroot_user_check',
    type: 'AWS::ECS::TaskDefinition',
    when: (p) => Array.isArray(p['ContainerDefinitions']) && p['ContainerDefinitions'].some((c: unknown) => typeof c === 'object' && c !== null && !('User' in c)),
    reason:
      "Only tasks whose application image is the operator's (an image kind registry or ecr in the configuration): it runs as its image's own USER, and overriding that here would break images whose files belong to another uid. The nginx sidecar and the demo backend run as non-root users set both in their Dockerfiles and on the containers.",
  },
  {
    rule: 'alb_http_to_https_redirection_check',
    type: 'AWS::ElasticLoadBalancingV2::Listener',
    when: (p) => p['Protocol'] === 'HTTP' && JSON.stringify(p['DefaultActions'] ?? []).includes('"forward"'),
    reason: 'Only a development configuration without a domain serves plain HTTP (with a synthesis warning); production refuses to synthesize without a certificate or hosted zone, and then port 80 only redirects.',
  },
  {
    rule: 'elbv2_deletion_protection_enabled_check',
    type: 'AWS::ElasticLoadBalancingV2::LoadBalancer',
    when: (p) => !JSON.stringify(p['LoadBalancerAttributes'] ?? []).includes('"deletion_protection.enabled","Value":"true"'),
    reason: 'Deletion protection follows the production flag: development load balancers must go with `cdk destroy`; the load balancer holds no data either way.',
  },
  {
    rule: 's3_bucket_default_encryption_kms_check',
    type: 'AWS::S3::Bucket',
    reason: `${LOG_BUCKET_REASON}, and Elastic Load Balancing writes access logs only to buckets encrypted with S3-managed keys (SSE-S3), not SSE-KMS.`,
  },
  {
    rule: 's3_bucket_versioning_enabled_check',
    type: 'AWS::S3::Bucket',
    reason: `${LOG_BUCKET_REASON}: objects are written once and expire after logRetentionDays; versions would only keep expired logs.`,
  },
  {
    rule: 's3_bucket_logging_enabled_check',
    type: 'AWS::S3::Bucket',
    reason: `${LOG_BUCKET_REASON} itself; logging its own access would need a second bucket that logs nowhere.`,
  },
  {
    rule: 's3_event_notifications_enabled_check',
    type: 'AWS::S3::Bucket',
    reason: `${LOG_BUCKET_REASON}; nothing consumes events about new log objects.`,
  },
  {
    rule: 's3_bucket_object_lock_enabled_check',
    type: 'AWS::S3::Bucket',
    reason: `${LOG_BUCKET_REASON}, not a compliance archive: its lifecycle rule must be able to expire logs after logRetentionDays.`,
  },
  {
    rule: 'sqs_dlq_check',
    type: 'AWS::SQS::Queue',
    when: (p) => p['RedrivePolicy'] === undefined,
    reason: "These queues are dead-letter queues (failed and undeliverable events of the control-plane functions, and the worker queue's jobs that failed maxReceiveCount times); a dead-letter queue of a dead-letter queue would only move the same messages again.",
  },
];

/**
 * The validator the app and the infra tests register: cfn-guard with the Control Tower rules,
 * every failure reported as an error.
 *
 * Why not the plugin as it comes: its violations carry no severity, and once any violation of a
 * plugin is acknowledged CDK recomputes the plugin's outcome as "no violation of severity
 * error or fatal left", so with one exemption in place every later failure would be printed
 * and the synthesis still succeed.
 */
export function guardValidator(): IPolicyValidationPluginBeta1 {
  return new ControlTowerGuard();
}

/** Where the plugin keeps the Control Tower rules: one `.guard` file per control. */
const CONTROL_TOWER_RULES = join(dirname(createRequire(import.meta.url).resolve('@cdklabs/cdk-validator-cfnguard')), '..', 'rules', 'control-tower', 'cfn-guard');

/**
 * cfn-guard with the Control Tower rules that can apply to the templates: a rule file checks
 * only the resource types it names, so the files naming none of the templates' types are left
 * out (evaluating all 237 costs about twice the CPU time for the same verdict), and each
 * violation is marked as an error (see {@link guardValidator}).
 */
export class ControlTowerGuard implements IPolicyValidationPluginBeta1 {
  private readonly all = new CfnGuardValidator({ controlTowerRulesEnabled: true });
  readonly name = this.all.name;
  readonly version = this.all.version;
  readonly ruleIds = this.all.ruleIds;

  validate(context: IPolicyValidationContextBeta1): PolicyValidationPluginReportBeta1 {
    const types = new Set(
      context.templatePaths.flatMap((path) => {
        const template = JSON.parse(readFileSync(path, 'utf8')) as { Resources?: Record<string, { Type?: unknown }> };
        return Object.values(template.Resources ?? {}).flatMap((r) => (typeof r.Type === 'string' ? [r.Type] : []));
      }),
    );
    const rules = ruleFiles(CONTROL_TOWER_RULES).filter((file) => {
      const text = readFileSync(file, 'utf8');
      return [...types].some((type) => text.includes(type));
    });
    if (rules.length === 0) return { success: true, violations: [] };
    const report = new CfnGuardValidator({ controlTowerRulesEnabled: false, rules }).validate(context);
    return { ...report, violations: report.violations.map((v) => (v.severity === undefined ? { ...v, severity: 'error' } : v)) };
  }
}

function ruleFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? ruleFiles(join(dir, entry.name)) : entry.name.endsWith('.guard') ? [join(dir, entry.name)] : [],
  );
}

/** Whether a (resolved) Lambda `VpcConfig` places the function in subnets with security groups. */
function inVpc(vpcConfig: unknown): boolean {
  if (typeof vpcConfig !== 'object' || vpcConfig === null) return false;
  const nonEmptyList = (v: unknown): boolean => Array.isArray(v) && v.length > 0;
  const c = vpcConfig as Record<string, unknown>;
  return nonEmptyList(c['SubnetIds']) && nonEmptyList(c['SecurityGroupIds']);
}

/**
 * Applies the posture cfn-guard asks for where it is right (key policies refuse grants that are
 * not for AWS resources) and records the exemptions above on the resources they cover.
 */
export function applyGuardPosture(scope: Construct): void {
  for (const construct of scope.node.findAll()) {
    if (construct instanceof kms.Key) {
      construct.addToResourcePolicy(
        new iam.PolicyStatement({
          sid: 'GrantsOnlyForAwsResources',
          effect: iam.Effect.DENY,
          principals: [new iam.AnyPrincipal()],
          actions: ['kms:CreateGrant'],
          resources: ['*'],
          conditions: { BoolIfExists: { 'kms:GrantIsForAWSResource': 'false', 'aws:PrincipalIsAWSService': 'false' } },
        }),
      );
    }
  }
  for (const construct of scope.node.findAll()) {
    if (!(construct instanceof CfnResource)) continue;
    const exemptions = GUARD_EXEMPTIONS.filter((e) => e.type === construct.cfnResourceType);
    if (exemptions.length === 0) continue;
    const properties = resolvedProperties(construct);
    for (const e of exemptions) if (!e.when || e.when(properties)) acknowledge(construct, `cdk-validator-cfnguard::${e.rule}`, e.reason);
  }
}

/** The resource's properties as they will be synthesized (`_toCloudFormation` is CDK's own renderer; no public API gives the rendered properties before synthesis). */
function resolvedProperties(resource: CfnResource): Record<string, unknown> {
  const cfn = Stack.of(resource).resolve((resource as unknown as { _toCloudFormation(): { Resources: Record<string, { Properties?: Record<string, unknown> }> } })._toCloudFormation()) as {
    Resources: Record<string, { Properties?: Record<string, unknown> }>;
  };
  return Object.values(cfn.Resources)[0]?.Properties ?? {};
}
