/**
 * IAM and network paths against the code: every AWS API call the runtime code makes is allowed
 * by the role of the Lambda function or ECS task that runs it, on the resources it touches, the
 * role grants nothing much beyond that, and the call has a network path from the subnets the
 * caller runs in (a NAT gateway, or a VPC endpoint that admits the caller).
 *
 * The calls come from the source (support/sdk-calls.ts: every `new XxxCommand(` reachable from
 * the handler's entry file, or from the entry file of a container the services run:
 * {@link CONTAINER_CALLS}). {@link CALLS} says, per handler, which of them it makes and on
 * which resources; {@link NOT_CALLED} names the reachable ones it never makes, with the reason.
 * The two must cover the scan exactly, so a new call, or a call that disappears, fails here
 * until the table (and the role) follow. Each shipped configuration (config/*.json) is
 * synthesized (once per test run, shared with the other infra tests) and every role read
 * from the templates, cross-stack references resolved to the resources they name.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CfnElement } from 'aws-cdk-lib';
import { beforeAll, describe, expect, it } from 'vitest';
import { STOPPED_ALL_TAG, STOPPED_TAG } from '../../functions/adapters/aws/topology.js';
import { APP_CONTAINER } from '../../lib/services/sidecar-service.js';
import { sdkCallsFrom, UnscannableSdkCallError } from './support/sdk-calls.js';
import { deployable, ROOT, SYNTH_HOOK_TIMEOUT_MS, synthesize, type Synthesized } from './support/synth.js';

type Handler = 'evaluate' | 'alarm' | 'api' | 'moves' | 'migrate';
const HANDLERS: readonly Handler[] = ['evaluate', 'alarm', 'api', 'moves', 'migrate'];

/** What a call touches, as the test can find it in the templates. */
type Target =
  /** The action has no resource-level permission in IAM: only `*` can grant it. */
  | { readonly kind: 'any' }
  /** The secrets whose ARNs these variables hold (in the environment or in an SSM parameter of CONFIG_PARAMETERS). */
  | { readonly kind: 'secrets'; readonly variables: readonly string[] }
  /** The SSM parameters the function's CONFIG_PARAMETERS names. */
  | { readonly kind: 'config-parameters' }
  /** Every ECS service of the scaling topology (SCALING_TARGETS_JSON); with `condition`, only a statement with exactly that condition grants it. */
  | { readonly kind: 'scaled-services'; readonly condition?: Json }
  /** The code cannot know the ARN (AWS generates it, or the call lists): the resource, rendered, must match. */
  | { readonly kind: 'pattern'; readonly pattern: RegExp };

const ACCOUNT = '123456789012';
/** The condition that bounds tagging to the two tags a stop leaves (functions/adapters/aws/topology.ts). */
const STOP_TAGS_ONLY = { 'ForAllValues:StringEquals': { 'aws:TagKeys': [STOPPED_TAG, STOPPED_ALL_TAG] }, Null: { 'aws:TagKeys': 'false' } };
const controller = {
  'ssm:GetParameters': { kind: 'config-parameters' },
  'secretsmanager:GetSecretValue': { kind: 'secrets', variables: ['CATALOG_DB_SECRET_ARN'] },
  'cloudwatch:GetMetricData': { kind: 'any' },
  'ecs:DescribeServices': { kind: 'scaled-services' },
  'ecs:UpdateService': { kind: 'scaled-services' },
  'application-autoscaling:DescribeScalableTargets': { kind: 'any' },
  // Scalable-target ARNs end in an id AWS generates at registration.
  'application-autoscaling:RegisterScalableTarget': { kind: 'pattern', pattern: new RegExp(`^arn:aws:application-autoscaling:[a-z0-9-]+:${ACCOUNT}:scalable-target/\\*$`) },
  // An evaluation with the catalog brings the marks of a stop in line with the switches: those tags only.
  'ecs:TagResource': { kind: 'scaled-services', condition: STOP_TAGS_ONLY },
  'ecs:UntagResource': { kind: 'scaled-services', condition: STOP_TAGS_ONLY },
} as const satisfies Record<string, Target>;

/** The calls each handler makes, and on what. */
const CALLS: Readonly<Record<Handler, Readonly<Record<string, Target>>>> = {
  evaluate: controller,
  alarm: controller,
  api: {
    'ssm:GetParameters': { kind: 'config-parameters' },
    // The control plane's catalog login, and the shards' monitor logins for statistics and health.
    'secretsmanager:GetSecretValue': { kind: 'secrets', variables: ['CATALOG_DB_SECRET_ARN', 'SHARD_DB_SECRET_ARNS'] },
    // Service metrics, and the shards' FreeStorageSpace / ReplicaLag (RdsInventory).
    'cloudwatch:GetMetricData': { kind: 'any' },
    'ecs:DescribeServices': { kind: 'scaled-services' },
    // POST /stop and /start mark a stop on the services (for evaluations without the catalog): those tags only.
    'ecs:TagResource': { kind: 'scaled-services', condition: STOP_TAGS_ONLY },
    'ecs:UntagResource': { kind: 'scaled-services', condition: STOP_TAGS_ONLY },
    // RdsInventory lists the account's PostgreSQL instances and matches them by endpoint.
    'rds:DescribeDBInstances': { kind: 'pattern', pattern: new RegExp(`^arn:aws:rds:[a-z0-9-]+:${ACCOUNT}:db:\\*$`) },
  },
  moves: {
    'ssm:GetParameters': { kind: 'config-parameters' },
    'secretsmanager:GetSecretValue': { kind: 'secrets', variables: ['CATALOG_DB_SECRET_ARN', 'SHARD_DB_SECRET_ARNS'] },
  },
  migrate: {
    'ssm:GetParameters': { kind: 'config-parameters' },
    // The admin secrets, and every least-privilege login's, whose users it creates.
    'secretsmanager:GetSecretValue': {
      kind: 'secrets',
      variables: ['CATALOG_DB_SECRET_ARN', 'CATALOG_CONTROL_SECRET_ARN', 'SHARD_DB_SECRET_ARNS', 'SHARD_APP_SECRET_ARNS', 'SHARD_MONITOR_SECRET_ARNS', 'SHARD_MOVER_SECRET_ARNS'],
    },
  },
};

const PREVIEW_ONLY = 'the API builds the controller runtime, but POST /evaluate is controller.preview: it sets no desired count and never touches the scalable-target registry';
const CATALOG_POOL_ONLY = 'the moves worker takes only the catalog pool of the controller runtime; its metrics, ECS and registry adapters are built but never called';

/** Calls reachable from a handler's entry that it never makes, with the reason. */
const NOT_CALLED: Readonly<Record<Handler, Readonly<Record<string, string>>>> = {
  evaluate: {},
  alarm: {},
  api: {
    'ecs:UpdateService': PREVIEW_ONLY,
    'application-autoscaling:DescribeScalableTargets': PREVIEW_ONLY,
    'application-autoscaling:RegisterScalableTarget': PREVIEW_ONLY,
  },
  moves: {
    'cloudwatch:GetMetricData': CATALOG_POOL_ONLY,
    'ecs:DescribeServices': CATALOG_POOL_ONLY,
    'ecs:UpdateService': CATALOG_POOL_ONLY,
    'ecs:TagResource': CATALOG_POOL_ONLY,
    'ecs:UntagResource': CATALOG_POOL_ONLY,
    'application-autoscaling:DescribeScalableTargets': CATALOG_POOL_ONLY,
    'application-autoscaling:RegisterScalableTarget': CATALOG_POOL_ONLY,
  },
  migrate: {},
};

/**
 * The calls of the containers the services run (their entry files), each on the secrets whose
 * ARNs the application container's environment variables matching `secretVariables` hold: the
 * demo backend reads its shards' login secrets with its task role (containers/backend/logins.ts).
 * Every service's task gets them, whatever its image, so every task role must allow them.
 */
const CONTAINER_CALLS: Readonly<Record<string, Readonly<Record<string, { readonly secretVariables: RegExp }>>>> = {
  'containers/backend/server.ts': { 'secretsmanager:GetSecretValue': { secretVariables: /^SHARD_[A-Z0-9_]+_DB_SECRET_ARN$/ } },
  'containers/nginx/cli.ts': {},
};

/** Actions granted with a call because the CDK grant that gives it comes with them (read-only, same resources). */
const COMPANIONS: Readonly<Record<string, readonly string[]>> = {
  'secretsmanager:GetSecretValue': ['secretsmanager:DescribeSecret'],
  'ssm:GetParameters': ['ssm:GetParameter', 'ssm:GetParameterHistory', 'ssm:DescribeParameters'],
};

/**
 * Actions granted with a call, on the same resources, in case AWS authorizes part of the call
 * with them: DescribeServices with `include: ['TAGS']` returns the stop marks, and AWS documents
 * no second action for the tags but does not rule out ecs:ListTagsForResource either.
 */
const AUTHORIZED_WITH: Readonly<Record<string, readonly string[]>> = {
  'ecs:DescribeServices': ['ecs:ListTagsForResource'],
};

/** What Lambda itself does with the execution role of a function in a VPC with tracing on. */
const LAMBDA_SERVICE_ACTIONS = {
  /** Lambda manages the function's network interfaces; EC2 offers no resource-level permission for these. */
  eni: ['ec2:CreateNetworkInterface', 'ec2:DescribeNetworkInterfaces', 'ec2:DeleteNetworkInterface', 'ec2:AssignPrivateIpAddresses', 'ec2:UnassignPrivateIpAddresses'],
  xray: ['xray:PutTraceSegments', 'xray:PutTelemetryRecords'],
  /** On its own log group only. */
  logs: ['logs:CreateLogStream', 'logs:PutLogEvents'],
  /** On its own failure destination only (asynchronous invocations that failed). */
  destination: ['sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'],
};

/**
 * The endpoint service (`com.amazonaws.<region>.<name>`) of each IAM prefix the handlers call.
 * Lambda itself ships the functions' logs and traces outside the VPC.
 */
const ENDPOINT_OF_PREFIX: Readonly<Record<string, string>> = {
  ssm: 'ssm',
  secretsmanager: 'secretsmanager',
  cloudwatch: 'monitoring',
  ecs: 'ecs',
  'application-autoscaling': 'application-autoscaling',
  rds: 'rds',
};

/**
 * What a Fargate task (platform 1.4.0 and later) reaches through its own network interface
 * before and while its containers run: the image (ECR API, ECR Docker registry, and the layers
 * in S3), the secrets the task definition injects, and the awslogs driver
 * (docs.aws.amazon.com/AmazonECS/latest/developerguide/platform-version-migration.html).
 */
const TASK_ENDPOINTS = ['ecr.api', 'ecr.dkr', 's3', 'secretsmanager', 'logs'];

type Json = unknown;
interface Statement {
  readonly Effect: string;
  readonly Action: string | string[];
  readonly Resource: Json;
  readonly Condition?: Json;
}
interface Template {
  readonly Resources: Record<string, { Type: string; Properties?: Record<string, Json> }>;
  readonly Outputs?: Record<string, { Value: Json; Export?: { Name: Json } }>;
}

const PSEUDO = new Set(['AWS::AccountId', 'AWS::Region', 'AWS::Partition', 'AWS::URLSuffix', 'AWS::StackName', 'AWS::StackId', 'AWS::NoValue']);

/** The templates of one synthesis, keyed by stack name, with cross-stack references resolved. */
class Assembly {
  readonly templates = new Map<string, Template>();

  constructor(readonly s: Synthesized) {
    for (const stack of Object.values(s.stacks)) {
      this.templates.set(stack.stackName, JSON.parse(readFileSync(s.templatePath(stack), 'utf8')) as Template);
    }
  }

  template(stackName: string): Template {
    const t = this.templates.get(stackName);
    if (!t) throw new Error(`no template for stack ${stackName}`);
    return t;
  }

  /**
   * `value` with every cross-stack reference replaced by what the other stack outputs, and
   * every Ref / GetAtt qualified with its stack (`stack/LogicalId`), so values from different
   * stacks compare equal exactly when they name the same resource.
   */
  resolve(value: Json, stackName: string): Json {
    if (Array.isArray(value)) return value.map((v) => this.resolve(v, stackName));
    if (typeof value !== 'object' || value === null) return value;
    const o = value as Record<string, Json>;
    const output = o['Fn::GetStackOutput'] as { StackName: string; OutputName: string } | undefined;
    if (output) {
      const out = this.template(output.StackName).Outputs?.[output.OutputName];
      if (!out) throw new Error(`stack ${output.StackName} has no output ${output.OutputName}`);
      return this.resolve(out.Value, output.StackName);
    }
    if (o['Fn::ImportValue'] !== undefined) {
      const name = JSON.stringify(o['Fn::ImportValue']);
      for (const [other, t] of this.templates) {
        for (const out of Object.values(t.Outputs ?? {})) if (JSON.stringify(out.Export?.Name) === name) return this.resolve(out.Value, other);
      }
      throw new Error(`no stack exports ${name}`);
    }
    if (typeof o['Ref'] === 'string' && !PSEUDO.has(o['Ref'])) return { Ref: `${stackName}/${o['Ref']}` };
    const getAtt = o['Fn::GetAtt'];
    if (Array.isArray(getAtt)) return { 'Fn::GetAtt': [`${stackName}/${String(getAtt[0])}`, ...getAtt.slice(1)] };
    return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, this.resolve(v, stackName)]));
  }

  /** Every Allow statement of the role `roleId` (in `stackName`): its policies and inline policies, resolved. */
  statementsOf(stackName: string, roleId: string): Statement[] {
    const t = this.template(stackName);
    const role = t.Resources[roleId];
    expect(role?.Type).toBe('AWS::IAM::Role');
    // A managed policy's content is not in the template: the coverage could not be checked.
    expect(role?.Properties?.['ManagedPolicyArns'] ?? []).toEqual([]);
    const docs: Json[] = ((role?.Properties?.['Policies'] as Array<{ PolicyDocument: Json }> | undefined) ?? []).map((p) => p.PolicyDocument);
    for (const r of Object.values(t.Resources)) {
      if (r.Type !== 'AWS::IAM::Policy') continue;
      const roles = (r.Properties?.['Roles'] as Json[] | undefined) ?? [];
      if (roles.some((x) => JSON.stringify(x) === JSON.stringify({ Ref: roleId }))) docs.push(r.Properties?.['PolicyDocument']);
    }
    return docs
      .flatMap((d) => (d as { Statement: Statement[] }).Statement)
      .filter((st) => st.Effect === 'Allow')
      .map((st) => ({ ...st, Resource: this.resolve(st.Resource, stackName) }));
  }
}

function actionsOf(st: Statement): string[] {
  return Array.isArray(st.Action) ? st.Action : [st.Action];
}

function resourcesOf(st: Statement): Json[] {
  return Array.isArray(st.Resource) ? (st.Resource as Json[]) : [st.Resource];
}

function globMatches(pattern: string, value: string): boolean {
  const re = new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`, 'i');
  return re.test(value);
}

/** A resource as a string: pseudo parameters filled in (the account is {@link ACCOUNT}), other references as `<ref>`. */
function render(value: Json, region: string): string {
  if (typeof value === 'string') return value;
  if (typeof value !== 'object' || value === null) return String(value);
  const o = value as Record<string, Json>;
  const join = o['Fn::Join'] as [string, Json[]] | undefined;
  if (join) return join[1].map((p) => render(p, region)).join(join[0]);
  const ref = o['Ref'];
  if (ref === 'AWS::AccountId') return ACCOUNT;
  if (ref === 'AWS::Region') return region;
  if (ref === 'AWS::Partition') return 'aws';
  if (ref === 'AWS::URLSuffix') return 'amazonaws.com';
  return '<ref>';
}

/** Whether `resource` (from a policy) names `target` (a resolved reference): itself, or an ARN built from it. */
function names(resource: Json, target: Json): boolean {
  const t = JSON.stringify(target);
  if (JSON.stringify(resource) === t) return true;
  const join = (resource as Record<string, Json> | null)?.['Fn::Join'] as [string, Json[]] | undefined;
  return join !== undefined && join[1].some((p) => JSON.stringify(p) === t) && join[1].some((p) => typeof p === 'string' && p.startsWith('arn:'));
}

/** Whether the statements allow `action` on `resource` (a resolved reference, or a rendered pattern check). */
function allows(statements: readonly Statement[], action: string, match: (resource: Json) => boolean, condition?: Json): boolean {
  const conditioned = (st: Statement): boolean => (condition === undefined ? st.Condition === undefined : JSON.stringify(st.Condition) === JSON.stringify(condition));
  return statements.some((st) => conditioned(st) && actionsOf(st).some((a) => globMatches(a, action)) && resourcesOf(st).some(match));
}

/** The references a value holds: the intrinsic objects of a Join (or the value itself). */
function referencesIn(value: Json): Json[] {
  if (typeof value === 'string') return [];
  const join = (value as Record<string, Json>)['Fn::Join'] as [string, Json[]] | undefined;
  if (join) return join[1].filter((p) => typeof p !== 'string');
  return [value];
}

/** The references that follow `"key":"` in a JSON document built by `Stack.toJsonString` (a Join). */
function referencesAfterKey(value: Json, key: string): Json[] {
  const join = (value as Record<string, Json> | null)?.['Fn::Join'] as [string, Json[]] | undefined;
  if (!join) return [];
  const out: Json[] = [];
  join[1].forEach((p, i) => {
    if (typeof p === 'string' && p.endsWith(`"${key}":"`) && typeof join[1][i + 1] !== 'string') out.push(join[1][i + 1]);
  });
  return out;
}

const configFiles = readdirSync(join(ROOT, 'config')).filter((f) => f.endsWith('.json'));

describe('the calls the code makes (static scan of the handlers)', () => {
  it.each(HANDLERS)('%s: every reachable SDK call is either made (CALLS) or explained (NOT_CALLED), and nothing else', (handler) => {
    const scanned = [...sdkCallsFrom(`functions/handlers/${handler}.ts`).keys()].sort();
    const listed = [...Object.keys(CALLS[handler]), ...Object.keys(NOT_CALLED[handler])].sort();
    expect(scanned).toEqual(listed);
  });

  it('finds the calls it is meant to find (a scan that found nothing would prove nothing)', () => {
    const evaluate = sdkCallsFrom('functions/handlers/evaluate.ts');
    expect(evaluate.get('ecs:UpdateService')).toEqual(['functions/adapters/aws/ecs-target.ts']);
    expect(evaluate.get('ssm:GetParameters')).toEqual(['functions/handlers/shared/parameter-env.ts']);
    expect(sdkCallsFrom('functions/handlers/api.ts').get('rds:DescribeDBInstances')).toEqual(['functions/adapters/aws/rds-inventory.ts']);
  });

  it('refuses calls it could not see (a paginator reached through a re-export)', () => {
    expect(() => sdkCallsFrom('test/infra/fixtures/sdk-scan/entry.ts')).toThrow(UnscannableSdkCallError);
  });

  it.each(Object.keys(CONTAINER_CALLS))('the container entry %s makes exactly the calls CONTAINER_CALLS lists', (entry) => {
    expect([...sdkCallsFrom(entry).keys()].sort()).toEqual(Object.keys(CONTAINER_CALLS[entry] ?? {}).sort());
  });
});

describe.each(configFiles)('config/%s: what the runtime code calls is allowed and reachable', (file) => {
  let s: Synthesized;
  let asm: Assembly;
  let cp: string;
  let region: string;

  beforeAll(() => {
    const raw = JSON.parse(readFileSync(join(ROOT, 'config', file), 'utf8')) as { production?: boolean; region?: string };
    s = synthesize(deployable(raw));
    expect(s.error).toBeUndefined();
    asm = new Assembly(s);
    cp = s.stacks.controlPlane.stackName;
    region = s.stacks.controlPlane.region;
  }, SYNTH_HOOK_TIMEOUT_MS);

  /** The function of `handler`, its role and its resolved environment. */
  function functionOf(handler: Handler): { id: string; roleId: string; env: Record<string, Json>; props: Record<string, Json> } {
    const construct = s.stacks.controlPlane.controlPlane[handler].function;
    const id = s.stacks.controlPlane.getLogicalId(construct.node.defaultChild as CfnElement);
    const props = asm.template(cp).Resources[id]?.Properties ?? {};
    const roleId = ((props['Role'] as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'])[0];
    const env = ((props['Environment'] as { Variables?: Record<string, Json> } | undefined)?.Variables ?? {}) as Record<string, Json>;
    return { id, roleId, env: asm.resolve(env, cp) as Record<string, Json>, props };
  }

  /** The SSM parameter holding `variable` for this function (via CONFIG_PARAMETERS), resolved. */
  function parameterOf(env: Record<string, Json>, variable: string): Json | undefined {
    const [ref] = referencesAfterKey(env['CONFIG_PARAMETERS'], variable);
    return ref;
  }

  function valueOf(env: Record<string, Json>, variable: string): Json | undefined {
    if (env[variable] !== undefined) return env[variable];
    const parameter = parameterOf(env, variable) as { Ref?: string } | undefined;
    if (parameter?.Ref === undefined) return undefined;
    const logicalId = parameter.Ref.slice(cp.length + 1);
    return asm.resolve(asm.template(cp).Resources[logicalId]?.Properties?.['Value'], cp);
  }

  /** Every resource the call touches, as predicates on a policy resource, with a label for the message. */
  function targetsOf(handler: Handler, target: Target): Array<{ label: string; match: (resource: Json) => boolean }> {
    const { env } = functionOf(handler);
    switch (target.kind) {
      case 'any':
        return [{ label: '*', match: (r) => r === '*' }];
      case 'pattern':
        return [{ label: String(target.pattern), match: (r) => target.pattern.test(render(r, region)) }];
      case 'config-parameters': {
        const params = referencesIn(env['CONFIG_PARAMETERS']);
        expect(params.length).toBeGreaterThan(0);
        return params.map((p) => ({ label: JSON.stringify(p), match: (r) => names(r, p) }));
      }
      case 'secrets':
        return target.variables.flatMap((variable) => {
          const value = valueOf(env, variable);
          expect(value, `${handler} has no ${variable}`).toBeDefined();
          const refs = referencesIn(value);
          expect(refs.length, `${variable} of ${handler} names no secret`).toBeGreaterThan(0);
          return refs.map((ref) => ({ label: `${variable}: ${JSON.stringify(ref)}`, match: (r: Json) => names(r, ref) }));
        });
      case 'scaled-services': {
        const services = referencesAfterKey(valueOf(env, 'SCALING_TARGETS_JSON'), 'ecsService');
        expect(services.length).toBe(Object.keys(s.config.scaling.services).length);
        return services.map((svc) => {
          // The topology names the service (GetAtt Name); its ARN is the service's Ref.
          const [logical] = (svc as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'];
          return { label: logical, match: (r: Json) => names(r, { Ref: logical }) };
        });
      }
    }
  }

  it.each(HANDLERS)('%s: its role allows every call it makes, on the resources it touches', (handler) => {
    const { roleId } = functionOf(handler);
    const statements = asm.statementsOf(cp, roleId);
    const missing: string[] = [];
    for (const [action, target] of Object.entries(CALLS[handler])) {
      const condition = target.kind === 'scaled-services' ? target.condition : undefined;
      for (const t of targetsOf(handler, target)) {
        if (!allows(statements, action, t.match, condition)) missing.push(`${action} on ${t.label}`);
        for (const other of AUTHORIZED_WITH[action] ?? []) if (!allows(statements, other, t.match)) missing.push(`${other} (with ${action}) on ${t.label}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it.each(HANDLERS)('%s: its role grants nothing beyond its calls and what Lambda does with it', (handler) => {
    const { roleId, props, id } = functionOf(handler);
    const statements = asm.statementsOf(cp, roleId);
    const logGroup = asm.resolve({ 'Fn::GetAtt': [((props['LoggingConfig'] as { LogGroup: { Ref: string } }).LogGroup).Ref, 'Arn'] }, cp);
    const invokeConfig = Object.values(asm.template(cp).Resources).find(
      (r) => r.Type === 'AWS::Lambda::EventInvokeConfig' && JSON.stringify(r.Properties?.['FunctionName']) === JSON.stringify({ Ref: id }),
    );
    const destination = asm.resolve((invokeConfig?.Properties?.['DestinationConfig'] as { OnFailure?: { Destination: Json } } | undefined)?.OnFailure?.Destination, cp);
    const calls = Object.keys(CALLS[handler]);
    const anyResource = new Set([...LAMBDA_SERVICE_ACTIONS.eni, ...LAMBDA_SERVICE_ACTIONS.xray, ...Object.entries(CALLS[handler]).filter(([, t]) => t.kind === 'any').map(([a]) => a)]);
    const extra: string[] = [];
    for (const st of statements) {
      for (const action of actionsOf(st)) {
        expect(action, 'no wildcard actions').not.toContain('*');
        const resources = resourcesOf(st);
        if (calls.includes(action) || calls.some((c) => COMPANIONS[c]?.includes(action) || AUTHORIZED_WITH[c]?.includes(action))) {
          if (resources.includes('*')) expect(anyResource.has(action) || COMPANIONS['ssm:GetParameters']?.includes(action), `${action} on *`).toBe(true);
          continue;
        }
        if (LAMBDA_SERVICE_ACTIONS.eni.includes(action) || LAMBDA_SERVICE_ACTIONS.xray.includes(action)) continue;
        if (LAMBDA_SERVICE_ACTIONS.logs.includes(action) && resources.every((r) => JSON.stringify(r) === JSON.stringify(logGroup))) continue;
        if (LAMBDA_SERVICE_ACTIONS.destination.includes(action) && destination !== undefined && resources.every((r) => JSON.stringify(r) === JSON.stringify(destination))) continue;
        extra.push(`${action} on ${JSON.stringify(resources)}`);
      }
    }
    expect(extra).toEqual([]);
  });

  /** How each caller's subnets reach `com.amazonaws.<region>.<service>`, or why they cannot. */
  function pathTo(subnets: readonly Json[], securityGroups: readonly Json[], service: string): string | undefined {
    const net = s.stacks.network.stackName;
    const t = asm.template(net);
    const resources = Object.entries(t.Resources).map(([id, r]) => ({ id: `${net}/${id}`, ...r, Properties: (asm.resolve(r.Properties ?? {}, net) as Record<string, Json>) }));
    const serviceName = `com.amazonaws.${region}.${service}`;
    const endpoint = resources.find((r) => r.Type === 'AWS::EC2::VPCEndpoint' && render(r.Properties['ServiceName'], region) === serviceName);
    const routeTableOf = (subnet: Json): Json =>
      resources.find((r) => r.Type === 'AWS::EC2::SubnetRouteTableAssociation' && JSON.stringify(r.Properties['SubnetId']) === JSON.stringify(subnet))?.Properties['RouteTableId'];
    const defaultRoute = (table: Json) =>
      resources.find((r) => r.Type === 'AWS::EC2::Route' && r.Properties['DestinationCidrBlock'] === '0.0.0.0/0' && JSON.stringify(r.Properties['RouteTableId']) === JSON.stringify(table));
    const problems: string[] = [];
    if (endpoint?.Properties['VpcEndpointType'] === 'Interface') {
      // With private DNS the service's name resolves to the endpoint in the whole VPC, so the
      // endpoint is the only path: its security group must admit the caller on 443.
      expect(endpoint.Properties['PrivateDnsEnabled'], serviceName).toBe(true);
      const groups = endpoint.Properties['SecurityGroupIds'] as Json[];
      const vpcCidr = { 'Fn::GetAtt': [`${net}/${s.stacks.network.getLogicalId(s.stacks.network.network.vpc.node.defaultChild as CfnElement)}`, 'CidrBlock'] };
      const admits = groups.some((g) => {
        const groupId = JSON.stringify((g as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0]);
        const group = resources.find((r) => JSON.stringify(r.id) === groupId);
        const rules = [
          ...((group?.Properties['SecurityGroupIngress'] as Array<Record<string, Json>> | undefined) ?? []),
          ...resources.filter((r) => r.Type === 'AWS::EC2::SecurityGroupIngress' && JSON.stringify(r.Properties['GroupId']) === JSON.stringify(g)).map((r) => r.Properties),
        ];
        return rules.some(
          (rule) =>
            rule['IpProtocol'] === 'tcp' && Number(rule['FromPort']) <= 443 && Number(rule['ToPort']) >= 443 &&
            (JSON.stringify(rule['CidrIp']) === JSON.stringify(vpcCidr) || securityGroups.some((sg) => JSON.stringify(rule['SourceSecurityGroupId']) === JSON.stringify(sg))),
        );
      });
      return admits ? undefined : `${serviceName}: its interface endpoint does not admit the caller on 443`;
    }
    for (const subnet of subnets) {
      const table = routeTableOf(subnet);
      if (endpoint !== undefined && (endpoint.Properties['RouteTableIds'] as Json[]).some((rt) => JSON.stringify(rt) === JSON.stringify(table))) continue;
      const route = defaultRoute(table);
      const nat = route?.Properties['NatGatewayId'] as { Ref: string } | undefined;
      const natResource = resources.find((r) => r.Type === 'AWS::EC2::NatGateway' && JSON.stringify({ Ref: r.id }) === JSON.stringify(nat));
      const natToInternet = natResource !== undefined && defaultRoute(routeTableOf(natResource.Properties['SubnetId']))?.Properties['GatewayId'] !== undefined;
      if (!natToInternet) problems.push(`${serviceName}: subnet ${JSON.stringify(subnet)} has neither a NAT gateway to the internet nor an endpoint`);
    }
    return problems.length === 0 ? undefined : problems.join('; ');
  }

  it.each(HANDLERS)('%s: every service it calls is reachable from its subnets', (handler) => {
    const { props } = functionOf(handler);
    const vpc = asm.resolve(props['VpcConfig'], cp) as { SubnetIds: Json[]; SecurityGroupIds: Json[] };
    expect(vpc.SubnetIds.length).toBeGreaterThanOrEqual(2);
    const services = new Set(Object.keys(CALLS[handler]).map((action) => ENDPOINT_OF_PREFIX[action.split(':')[0] as string]));
    expect(services.has(undefined), 'an IAM prefix without its endpoint service in ENDPOINT_OF_PREFIX').toBe(false);
    const problems = [...services].map((svc) => pathTo(vpc.SubnetIds, vpc.SecurityGroupIds, svc as string)).filter((p) => p !== undefined);
    expect(problems).toEqual([]);
  });

  it('ECS tasks reach ECR, S3, Secrets Manager and CloudWatch Logs from their subnets, and the worker its SQS queue', () => {
    const services = s.stacks.services.stackName;
    const ecsServices = Object.entries(asm.template(services).Resources).filter(([, r]) => r.Type === 'AWS::ECS::Service');
    expect(ecsServices.length).toBe(Object.keys(s.config.scaling.services).length);
    const worker = s.stacks.services.getLogicalId(s.stacks.services.services.worker.service.node.defaultChild as CfnElement);
    expect(ecsServices.map(([id]) => id)).toContain(worker);
    for (const [id, svc] of ecsServices) {
      const network = (asm.resolve(svc.Properties?.['NetworkConfiguration'], services) as { AwsvpcConfiguration: { Subnets: Json[]; SecurityGroups: Json[]; AssignPublicIp: string } }).AwsvpcConfiguration;
      expect(network.AssignPublicIp).toBe('DISABLED');
      // The worker's application takes jobs from its queue with its task role (see below).
      const endpoints = id === worker ? [...TASK_ENDPOINTS, 'sqs'] : TASK_ENDPOINTS;
      const problems = endpoints.map((e) => pathTo(network.Subnets, network.SecurityGroups, e)).filter((p) => p !== undefined);
      expect(problems).toEqual([]);
    }
  });

  it("ECS tasks: each task role allows the containers' calls on exactly the secrets the application is given, and nothing else but the worker's use of its job queue; the execution roles read no secret", () => {
    const services = s.stacks.services.stackName;
    const t = asm.template(services);
    const tasks = Object.entries(t.Resources).filter(([, r]) => r.Type === 'AWS::ECS::TaskDefinition');
    expect(tasks.length).toBe(Object.keys(s.config.scaling.services).length);
    const workerTask = s.stacks.services.resolve((s.stacks.services.services.worker.taskDefinition.node.defaultChild as CfnElement).logicalId) as string;
    const workerQueue = { 'Fn::GetAtt': [`${s.stacks.data.stackName}/${s.stacks.data.resolve((s.stacks.data.workerQueue.queue.node.defaultChild as CfnElement).logicalId) as string}`, 'Arn'] };
    const workerActions = ['sqs:ReceiveMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueUrl', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes', 'sqs:SendMessage'];
    for (const [id, task] of tasks) {
      const containers = task.Properties?.['ContainerDefinitions'] as Array<{ Name: string; Environment?: Array<{ Name: string; Value: Json }>; Secrets?: Json[] }>;
      const app = containers.find((c) => c.Name === APP_CONTAINER);
      expect(app, `${id} has no app container`).toBeDefined();
      const taskRole = (task.Properties?.['TaskRoleArn'] as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
      const taskGrants = asm.statementsOf(services, taskRole);

      // Every container call, on every secret the application is given.
      const missing: string[] = [];
      const calledActions = new Set<string>();
      const secretsGiven = new Set<string>();
      for (const calls of Object.values(CONTAINER_CALLS)) {
        for (const [action, { secretVariables }] of Object.entries(calls)) {
          calledActions.add(action);
          const variables = (app?.Environment ?? []).filter((e) => secretVariables.test(e.Name));
          expect(variables.length, `${id}: no variable matches ${String(secretVariables)}`).toBe(s.config.database.shards);
          for (const v of variables) {
            const arn = referencesIn(asm.resolve(v.Value, services))[0];
            secretsGiven.add(JSON.stringify(arn));
            if (!allows(taskGrants, action, (r) => names(r, arn))) missing.push(`${action} on ${v.Name}`);
          }
        }
      }
      expect(missing).toEqual([]);

      // Nothing beyond: those calls (and their companions) on exactly those secrets, and the worker's queue.
      const extra: string[] = [];
      for (const st of taskGrants) {
        for (const action of actionsOf(st)) {
          const resources = resourcesOf(st).map((r) => JSON.stringify(r));
          if (calledActions.has(action) || [...calledActions].some((c) => COMPANIONS[c]?.includes(action))) {
            if (!resources.every((r) => secretsGiven.has(r))) extra.push(`${action} on ${resources.join(', ')}`);
          } else if (!(id === workerTask && workerActions.includes(action) && resources.every((r) => r === JSON.stringify(workerQueue)))) {
            extra.push(`${action} on ${resources.join(', ')}`);
          }
        }
      }
      expect(extra).toEqual([]);
      if (id === workerTask) expect(new Set(taskGrants.flatMap(actionsOf).filter((a) => a.startsWith('sqs:')))).toEqual(new Set(workerActions));

      // The execution role pulls images and ships logs; ECS injects no secret, so it reads none.
      expect(containers.flatMap((c) => c.Secrets ?? [])).toEqual([]);
      const executionRole = (task.Properties?.['ExecutionRoleArn'] as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
      const executionActions = asm.statementsOf(services, executionRole).flatMap(actionsOf);
      expect(executionActions.filter((a) => a.startsWith('secretsmanager:') || a.startsWith('kms:'))).toEqual([]);
    }
  });
});
