/**
 * The Lambda handlers end to end: middy + Powertools, zod validation of EventBridge, SNS and
 * CloudFormation events, a real PostgreSQL catalog and the AWS SDK clients driven by
 * aws-sdk-client-mock.
 */
import { vi } from 'vitest';

vi.hoisted(() => {
  process.env['POWERTOOLS_LOG_LEVEL'] = 'INFO';
  process.env['POWERTOOLS_TRACE_ENABLED'] = 'false';
  process.env['POWERTOOLS_METRICS_NAMESPACE'] = 'CaDmsScalingTest';
});

import { ApplicationAutoScalingClient } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, ECSClient, UpdateServiceCommand } from '@aws-sdk/client-ecs';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import type { Context } from 'aws-lambda';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createAlarmHandler } from '../../../functions/handlers/alarm.js';
import { createEvaluateHandler } from '../../../functions/handlers/evaluate.js';
import { createMigrateHandler, CustomResourceEventError, PHYSICAL_ID } from '../../../functions/handlers/migrate.js';
import { EnvironmentError, parseControllerEnv, parseMigrationEnv } from '../../../functions/handlers/shared/env.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { createControllerRuntime, type ControllerRuntime } from '../../../functions/handlers/shared/runtime.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { refusedLoopbackPort } from '../../support/refused-port.js';
import { ecsService, metricsFrom, mockControllerAws } from '../../support/scaling-fixtures.js';

const { cw, ecs } = mockControllerAws();

const TOPOLOGY = {
  services: {
    web: { cluster: 'ca-dms', ecsService: 'ca-dms-web', targetGroup: 'targetgroup/web/00000000000000a1', loadBalancer: 'app/ca-dms/00000000000000aa' },
    worker: { cluster: 'ca-dms', ecsService: 'ca-dms-worker' },
  },
};
const CONFIG = { policy: 'threshold', services: { web: {}, worker: {} } };

let server: TestPostgres;
const runtimes: ControllerRuntime[] = [];

beforeAll(async () => {
  server = await startTestPostgres();
  const pool = new pg.Pool({ connectionString: server.url, max: 1 });
  await migrateAll({ catalog: pool, shards: [] });
  await pool.end();
});
afterAll(async () => {
  await Promise.all(runtimes.map((r) => r.close()));
  await server.stop();
});

/** What the functions wrote to stdout (Powertools log lines and EMF metrics), as JSON objects. */
let stdout: Array<Record<string, unknown>> = [];
beforeEach(() => {
  stdout = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    for (const line of String(chunk).split('\n').filter((l) => l.startsWith('{'))) stdout.push(JSON.parse(line) as Record<string, unknown>);
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});
afterEach(() => {
  vi.restoreAllMocks();
});

beforeEach(() => {
  cw.on(GetMetricDataCommand).callsFake(metricsFrom(['web', 'worker'], { web: { cpu: 95, mem: 50 }, worker: { cpu: 50, mem: 50 } }));
  ecs.on(DescribeServicesCommand).resolves({ services: [ecsService('ca-dms-web', { running: 3, desired: 3 }), ecsService('ca-dms-worker', { running: 2, desired: 2 })] });
});

/** A new container's runtime (its own memory), sharing the one catalog. */
function container(extraEnv: Record<string, string> = {}): ControllerRuntime {
  const env = parseControllerEnv({
    SCALING_CONFIG_JSON: JSON.stringify(CONFIG),
    SCALING_TARGETS_JSON: JSON.stringify(TOPOLOGY),
    CATALOG_DATABASE_URL: server.url,
    ...extraEnv,
  });
  const rt = createControllerRuntime(env, {
    cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }),
    ecs: new ECSClient({ region: 'eu-west-1' }),
    autoscaling: new ApplicationAutoScalingClient({ region: 'eu-west-1' }),
    secrets: new SecretsManagerClient({ region: 'eu-west-1' }),
  });
  runtimes.push(rt);
  return rt;
}

const context: Context = {
  callbackWaitsForEmptyEventLoop: false,
  functionName: 'ca-dms-scaling-evaluate',
  functionVersion: '$LATEST',
  invokedFunctionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:ca-dms-scaling-evaluate',
  memoryLimitInMB: '512',
  awsRequestId: 'c6af9ac6-7b61-11e6-9a41-93e812345678',
  logGroupName: '/aws/lambda/ca-dms-scaling-evaluate',
  logStreamName: '2026/01/05/[$LATEST]abcdef',
  getRemainingTimeInMillis: () => 30_000,
  done: () => undefined,
  fail: () => undefined,
  succeed: () => undefined,
};

const scheduled = {
  version: '0',
  id: '53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa',
  'detail-type': 'Scheduled Event',
  source: 'aws.events',
  account: '123456789012',
  time: '2026-01-05T12:00:00Z',
  region: 'eu-west-1',
  resources: ['arn:aws:events:eu-west-1:123456789012:rule/ca-dms-scaling-evaluate'],
  detail: {},
};

function snsEvent(messageId: string, message: unknown): unknown {
  return {
    Records: [
      {
        EventSource: 'aws:sns',
        EventVersion: '1.0',
        EventSubscriptionArn: 'arn:aws:sns:eu-west-1:123456789012:ca-dms-alarms:1',
        Sns: {
          Type: 'Notification',
          MessageId: messageId,
          TopicArn: 'arn:aws:sns:eu-west-1:123456789012:ca-dms-alarms',
          Subject: 'ALARM',
          Message: typeof message === 'string' ? message : JSON.stringify(message),
          Timestamp: '2026-01-05T12:00:00.000Z',
        },
      },
    ],
  };
}

function cpuAlarm(state: 'ALARM' | 'OK' = 'ALARM', name = 'ca-dms-web-cpu-high'): unknown {
  return {
    AlarmName: name,
    NewStateValue: state,
    NewStateReason: 'Threshold Crossed: 1 datapoint [95.0] was greater than the threshold (80.0).',
    StateChangeTime: '2026-01-05T12:00:00.000+0000',
    Trigger: {
      MetricName: 'CPUUtilization',
      Namespace: 'AWS/ECS',
      Dimensions: [
        { name: 'ClusterName', value: 'ca-dms' },
        { name: 'ServiceName', value: 'ca-dms-web' },
      ],
    },
  };
}

async function clearCatalog(): Promise<void> {
  const c = new pg.Client({ connectionString: server.url });
  await c.connect();
  await c.query('truncate catalog.scaling_decisions, catalog.service_state, catalog.scaling_alarms, catalog.scaling_switches, catalog.leases');
  await c.end();
}

describe('evaluate handler', () => {
  beforeEach(clearCatalog);

  it('evaluates every enabled service on a scheduled event', async () => {
    const handler = createEvaluateHandler(() => rt);
    const rt = container();

    const response = await handler(scheduled, context);

    expect(response).toMatchObject({ accepted: true, stopped: false, degraded: false });
    expect(ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input)).toEqual([{ cluster: 'ca-dms', service: 'ca-dms-web', desiredCount: 4 }]);
    expect((await rt.catalog.listDecisions()).map((d) => d.service).sort()).toEqual(['web', 'worker']);
  });

  it('writes one structured log line per decision, with its reasons', async () => {
    const rt = container();

    await createEvaluateHandler(() => rt)(scheduled, context);

    const lines = stdout.filter((l) => l['message'] === 'scaling decision');
    expect(lines).toHaveLength(2);
    const web = lines.find((l) => (l['decision'] as { service: string }).service === 'web');
    expect(web).toMatchObject({ level: 'INFO', function_request_id: context.awsRequestId, decision: { from: 3, to: 4, outcome: 'applied' } });
    expect((web?.['decision'] as { reasons: Array<{ rule: string }> }).reasons.map((r) => r.rule)).toContain('cpu_scale_up_exceeded');
  });

  it('emits EMF metrics: decisions by direction, desired count per service, evaluation duration', async () => {
    const rt = container();

    await createEvaluateHandler(() => rt)(scheduled, context);

    const emf = stdout.filter((l) => '_aws' in l);
    expect(emf).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ Direction: 'out', Decisions: 1 }),
        expect.objectContaining({ Direction: 'none', Decisions: 1 }),
        expect.objectContaining({ ScaledService: 'web', DesiredCount: 4 }),
        expect.objectContaining({ ScaledService: 'worker', DesiredCount: 2 }),
        expect.objectContaining({ EvaluationDuration: expect.any(Number) as unknown as number }),
      ]),
    );
  });

  it('stands aside while another evaluation holds the lease, says who, and counts it', async () => {
    const rt = container({ AWS_LAMBDA_FUNCTION_NAME: 'ca-dms-scaling-alarm' });
    const other = await rt.catalog.acquireLease('scaling-evaluation', { owner: 'ca-dms-scaling-alarm (alarm)', ttlMs: 60_000 });

    const response = await createEvaluateHandler(() => rt)(scheduled, context);

    expect(other.acquired).toBe(true);
    expect(response).toMatchObject({ accepted: true, decisions: [], skipped: { holder: 'ca-dms-scaling-alarm (alarm)' } });
    expect([cw.calls().length, ecs.calls().length]).toEqual([0, 0]);
    expect(stdout.filter((l) => '_aws' in l)).toEqual(expect.arrayContaining([expect.objectContaining({ SkippedEvaluations: 1 })]));
  });

  it('names the function as the lease holder while it evaluates', async () => {
    const rt = container({ AWS_LAMBDA_FUNCTION_NAME: 'ca-dms-scaling-evaluate' });
    // Another container (the function's pool has one connection, busy with the evaluation).
    const probe = container();
    let holder: string | undefined;
    ecs.on(UpdateServiceCommand).callsFake(async () => {
      const seen = await probe.catalog.acquireLease('scaling-evaluation', { owner: 'probe', ttlMs: 1000 });
      holder = seen.acquired ? undefined : seen.holder;
      return {};
    });

    await createEvaluateHandler(() => rt)(scheduled, context);

    expect(holder).toBe('ca-dms-scaling-evaluate (schedule)');
  });

  it('rejects a malformed event, naming the fields, without evaluating anything', async () => {
    const rt = container();
    const handler = createEvaluateHandler(() => rt);

    const response = await handler({ ...scheduled, 'detail-type': 'Object Created', time: 'yesterday' }, context);

    expect(response).toEqual({
      accepted: false,
      issues: [
        { path: 'detail-type', message: expect.stringContaining('Scheduled Event') as unknown as string },
        { path: 'time', message: expect.any(String) as unknown as string },
      ],
    });
    expect([cw.calls().length, ecs.calls().length]).toEqual([0, 0]);
  });
});

describe('alarm handler', () => {
  beforeEach(clearCatalog);

  it('runs an immediate evaluation of the alarm service, recorded with the alarm as actor', async () => {
    const rt = container();
    const handler = createAlarmHandler(() => rt);

    const response = await handler(snsEvent('m-1', cpuAlarm()), context);

    expect(response.records).toEqual([{ messageId: 'm-1', outcome: 'evaluated', service: 'web' }]);
    expect(ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input.desiredCount)).toEqual([4]);
    expect((await rt.catalog.listDecisions())[0]).toMatchObject({ service: 'web', trigger: 'alarm', actor: 'alarm:ca-dms-web-cpu-high' });
  });

  it('skips an alarm cleanly, saying so, when another evaluation still runs after its wait', async () => {
    const rt = container();
    await rt.catalog.acquireLease('scaling-evaluation', { owner: 'ca-dms-scaling-evaluate (schedule)', ttlMs: 60_000 });
    // 4 s left and a 3 s margin: the alarm waits half of the rest, 0.5 s, for the lease.
    const short: Context = { ...context, getRemainingTimeInMillis: () => 4_000 };

    const response = await createAlarmHandler(() => rt)(snsEvent('m-busy', cpuAlarm()), short);

    expect(response.records).toEqual([
      { messageId: 'm-busy', outcome: 'skipped', service: 'web', detail: expect.stringContaining('ca-dms-scaling-evaluate (schedule)') as unknown as string },
    ]);
    expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
    expect((await rt.catalog.listDecisions()).length).toBe(0);
  });

  it('acts once when SNS delivers the same message twice, even to two containers', async () => {
    const first = container();
    const second = container();

    const a = await createAlarmHandler(() => first)(snsEvent('m-dup', cpuAlarm()), context);
    const b = await createAlarmHandler(() => first)(snsEvent('m-dup', cpuAlarm()), context);
    const c = await createAlarmHandler(() => second)(snsEvent('m-dup', cpuAlarm()), context);

    expect([a, b, c].map((r) => r.records[0]?.outcome)).toEqual(['evaluated', 'duplicate', 'duplicate']);
    expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(1);
  });

  it('still evaluates, and de-duplicates within the container, while the catalog is unreachable', async () => {
    const rt = container({ CATALOG_DATABASE_URL: `postgresql://postgres:postgres@127.0.0.1:${await refusedLoopbackPort()}/postgres` });
    const handler = createAlarmHandler(() => rt);

    const first = await handler(snsEvent('m-down', cpuAlarm()), context);
    const again = await handler(snsEvent('m-down', cpuAlarm()), context);

    expect([first, again].map((r) => r.records[0]?.outcome)).toEqual(['evaluated', 'duplicate']);
    expect(ecs.commandCalls(UpdateServiceCommand).map((c) => c.args[0].input.desiredCount)).toEqual([4]);
    expect(rt.controller.pendingBacklog()).toEqual({ held: 1, dropped: 0 });
  });

  it('drops a malformed SNS event without throwing', async () => {
    const rt = container();

    const response = await createAlarmHandler(() => rt)({ Records: [{ EventSource: 'aws:sqs', body: '{}' }] }, context);

    expect(response.records[0]?.outcome).toBe('dropped');
    expect(response.records[0]?.detail).toContain('not an SNS event');
    expect(ecs.calls()).toHaveLength(0);
  });

  it('drops a message that is not JSON or not a CloudWatch alarm', async () => {
    const rt = container();
    const handler = createAlarmHandler(() => rt);

    const notJson = await handler(snsEvent('m-x', 'hello'), context);
    const foreign = await handler(snsEvent('m-y', { Event: 'autoscaling:EC2_INSTANCE_LAUNCH' }), context);

    expect(notJson.records[0]).toMatchObject({ outcome: 'dropped', detail: 'the message is not JSON' });
    expect(foreign.records[0]?.detail).toContain('not a CloudWatch alarm notification: AlarmName');
    expect(ecs.calls()).toHaveLength(0);
    expect(stdout.filter((l) => '_aws' in l && 'DroppedAlarmMessages' in l)).toHaveLength(2);
  });

  it('records an alarm returning to OK without evaluating', async () => {
    const rt = container();

    const response = await createAlarmHandler(() => rt)(snsEvent('m-ok', cpuAlarm('OK')), context);

    expect(response.records[0]).toEqual({ messageId: 'm-ok', outcome: 'recorded', service: 'web' });
    expect(ecs.calls()).toHaveLength(0);
  });

  it('maps an alarm without service dimensions through the configured name mapping', async () => {
    const rt = container({ ALARM_SERVICE_MAP_JSON: JSON.stringify({ 'jobs-backlog': 'worker' }) });
    const alarm = { AlarmName: 'jobs-backlog', NewStateValue: 'ALARM', NewStateReason: 'backlog', Trigger: { MetricName: 'Backlog', Namespace: 'CaDms', Dimensions: [] } };

    const response = await createAlarmHandler(() => rt)(snsEvent('m-map', alarm), context);

    expect(response.records[0]).toEqual({ messageId: 'm-map', outcome: 'evaluated', service: 'worker' });
  });

  it('keeps an alarm that maps to no scaled service in the history, evaluates nothing and does not count it as dropped', async () => {
    // the topic also carries shard, function and load-balancer alarms
    const rt = container();
    const alarm = { AlarmName: 'ca-dms-shard-001-cpu', NewStateValue: 'ALARM', NewStateReason: 'cpu', Trigger: { MetricName: 'CPUUtilization', Namespace: 'AWS/RDS', Dimensions: [{ name: 'DBInstanceIdentifier', value: 'shard-001' }] } };

    const response = await createAlarmHandler(() => rt)(snsEvent('m-shard', alarm), context);

    expect(response.records[0]).toMatchObject({ messageId: 'm-shard', outcome: 'recorded' });
    expect(response.records[0]?.detail).toContain('maps to no scaled service');
    expect(ecs.calls()).toHaveLength(0);
    expect(cw.calls()).toHaveLength(0);
    const db = new pg.Client({ connectionString: server.url });
    await db.connect();
    const { rows } = await db.query(`select alarm_name, service from catalog.scaling_alarms where message_id = 'm-shard'`);
    await db.end();
    expect(rows).toEqual([{ alarm_name: 'ca-dms-shard-001-cpu', service: null }]);
    expect(stdout.filter((l) => '_aws' in l && 'DroppedAlarmMessages' in l)).toEqual([]);
  });
});

describe('function environment', () => {
  it('names every bad variable', () => {
    const error = (() => {
      try {
        parseControllerEnv({ SCALING_TARGETS_JSON: '{"services":{"web":{"cluster":""}}}', CATALOG_DATABASE_URL: 'postgresql://db.example.com/x', SCALING_CONFIG_JSON: '{' });
      } catch (e) {
        return e;
      }
      return undefined;
    })();

    expect(error).toBeInstanceOf(EnvironmentError);
    const paths = (error as EnvironmentError).issues.map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['SCALING_CONFIG_JSON', 'CATALOG_DATABASE_URL']));
  });

  it('lets the guide variables override the shipped configuration, and names them when wrong', () => {
    const base = { SCALING_CONFIG_JSON: JSON.stringify(CONFIG), SCALING_TARGETS_JSON: JSON.stringify(TOPOLOGY), CATALOG_DATABASE_URL: server.url };

    const env = parseControllerEnv({ ...base, AUTO_SCALING_ENABLED: 'false', MAX_INSTANCES: '6' });

    expect([env.fallbackConfig.enabled, env.fallbackConfig.max_instances]).toEqual([false, 6]);
    expect(() => parseControllerEnv({ ...base, MIN_INSTANCES: 'two' })).toThrow('MIN_INSTANCES: must be a whole number');
  });

  it('refuses a scaled service missing from the topology', () => {
    expect(() =>
      parseControllerEnv({ SCALING_CONFIG_JSON: JSON.stringify({ services: { ghost: {} } }), SCALING_TARGETS_JSON: JSON.stringify(TOPOLOGY), CATALOG_DATABASE_URL: server.url }),
    ).toThrow('SCALING_TARGETS_JSON.services.ghost: configured for scaling but missing from the topology');
  });
});

describe('migrate handler (custom resource)', () => {
  let catalogDb: string;
  let shardDb: string;
  beforeAll(async () => {
    const c = new pg.Client({ connectionString: server.url });
    await c.connect();
    await c.query('create database cr_catalog');
    await c.query('create database cr_shard');
    await c.end();
    catalogDb = server.urlFor('cr_catalog');
    shardDb = server.urlFor('cr_shard');
  });
  const base = { ServiceToken: 'arn:aws:lambda:eu-west-1:123456789012:function:provider', ResourceType: 'Custom::SchemaMigrations', LogicalResourceId: 'Migrations', StackId: 'arn:aws:cloudformation:eu-west-1:123456789012:stack/ca-dms/1', RequestId: 'r-1', ResourceProperties: { ServiceToken: 'x', MigrationsHash: 'abc' } };
  const handler = () => createMigrateHandler(() => ({ env: parseMigrationEnv({ CATALOG_DATABASE_URL: catalogDb, SHARD_DATABASE_URLS: JSON.stringify([shardDb]) }), clients: { secrets: new SecretsManagerClient({ region: 'eu-west-1' }) } }));

  it('applies every migration set on Create', async () => {
    const response = await handler()({ ...base, RequestType: 'Create' }, context);

    expect(response.PhysicalResourceId).toBe(PHYSICAL_ID);
    expect(Number(response.Data?.['Applied'])).toBeGreaterThanOrEqual(3);
    const c = new pg.Client({ connectionString: shardDb });
    await c.connect();
    const { rows } = await c.query<{ set_name: string }>('select distinct set_name from catalog.schema_migrations');
    await c.end();
    expect(rows.map((r) => r.set_name)).toEqual(['shard']);
  });

  it('keeps the physical id on Update and applies nothing twice', async () => {
    const response = await handler()({ ...base, RequestType: 'Update', PhysicalResourceId: PHYSICAL_ID, OldResourceProperties: {} }, context);

    expect(response).toEqual({ PhysicalResourceId: PHYSICAL_ID, Data: { Applied: 0, Targets: 2 } });
  });

  it("leaves the directory's slot fill for the next run when the function has less than two minutes left, says so, and answers CloudFormation; with time, fills it", async () => {
    // Pins written before sharding migration 031 (slot NULL), as a restore leaves them: the
    // trigger that gives a new pin its slot is off for the insert.
    const keys = ['fill-a', 'fill-b', 'fill-c'];
    const c = new pg.Client({ connectionString: catalogDb });
    await c.connect();
    const unfilled = async (): Promise<number | undefined> =>
      (await c.query<{ n: number }>('select count(*)::int as n from catalog.shard_directory where key = any($1::text[]) and slot is null', [keys])).rows[0]?.n;
    // A WARN line goes to stderr (console.warn).
    const warned: Array<Record<string, unknown>> = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      for (const line of String(chunk).split('\n').filter((l) => l.startsWith('{'))) warned.push(JSON.parse(line) as Record<string, unknown>);
      return true;
    });
    const fillWarnings = (): Array<Record<string, unknown>> => [...stdout, ...warned].filter((l) => String(l['message']).startsWith('directory slot fill stopped for time'));
    try {
      await c.query('set session_replication_role = replica');
      await c.query(`insert into catalog.shard_directory (key, shard_id, updated_by) select k, 'shard_a', 'restore' from unnest($1::text[]) k`, [keys]);
      await c.query('set session_replication_role = origin');

      // 30 s left: less than the fill's margin (120 s), so no batch is run.
      const short = await handler()({ ...base, RequestType: 'Update', PhysicalResourceId: PHYSICAL_ID, OldResourceProperties: {} }, context);
      expect(short).toEqual({ PhysicalResourceId: PHYSICAL_ID, Data: { Applied: 0, Targets: 2 } });
      expect(await unfilled()).toBe(3);
      expect(fillWarnings()).toMatchObject([{ level: 'WARN', filled: 0 }]);

      stdout = [];
      warned.length = 0;
      const long = await handler()({ ...base, RequestType: 'Update', PhysicalResourceId: PHYSICAL_ID, OldResourceProperties: {} }, { ...context, getRemainingTimeInMillis: () => 840_000 });
      expect(long).toEqual({ PhysicalResourceId: PHYSICAL_ID, Data: { Applied: 0, Targets: 2 } });
      expect(await unfilled()).toBe(0);
      expect(fillWarnings()).toEqual([]);
    } finally {
      await c.query('delete from catalog.shard_directory where key = any($1::text[])', [keys]);
      await c.end();
    }
  });

  it("creates the application's least-privilege login on each shard from its own secret", async () => {
    const appSecret = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shard-1-app-AbCdEf';
    const sm = mockClient(SecretsManagerClient);
    sm.on(GetSecretValueCommand, { SecretId: appSecret }).resolves({ SecretString: JSON.stringify({ username: 'ca_dms_app_user', password: 'app pass', host: '127.0.0.1' }) });
    const withApp = createMigrateHandler(() => ({
      env: parseMigrationEnv({ CATALOG_DATABASE_URL: catalogDb, SHARD_DATABASE_URLS: JSON.stringify([shardDb]), SHARD_APP_SECRET_ARNS: JSON.stringify([appSecret]) }),
      clients: { secrets: new SecretsManagerClient({ region: 'eu-west-1' }) },
    }));

    await withApp({ ...base, RequestType: 'Update', PhysicalResourceId: PHYSICAL_ID, OldResourceProperties: {} }, context);
    sm.restore();
    const app = new pg.Client({ connectionString: `postgresql://ca_dms_app_user:${encodeURIComponent('app pass')}@127.0.0.1:${server.port}/cr_shard` });
    await app.connect();
    const denied = await app.query('drop table documents').then(() => 'ok', (e: { code?: string }) => e.code);
    const { rows } = await app.query<{ n: number }>('select count(*)::int as n from users');
    await app.end();

    expect(rows).toEqual([{ n: 0 }]);
    expect(denied).toBe('42501');
  });

  it("creates every function's own login from its secret: the control plane's on the catalog with its statement timeout, the monitor's and the mover's on each shard", async () => {
    const arn = (name: string) => `arn:aws:secretsmanager:eu-west-1:123456789012:secret:${name}-AbCdEf`;
    const logins = { control: 'ca_dms_control_user', monitor: 'ca_dms_monitor_user', mover: 'ca_dms_mover_user' } as const;
    const sm = mockClient(SecretsManagerClient);
    for (const [name, username] of Object.entries(logins)) {
      sm.on(GetSecretValueCommand, { SecretId: arn(name) }).resolves({ SecretString: JSON.stringify({ username, password: `${name} pass`, host: '127.0.0.1' }) });
    }
    const withLogins = createMigrateHandler(() => ({
      env: parseMigrationEnv({
        CATALOG_DATABASE_URL: catalogDb,
        SHARD_DATABASE_URLS: JSON.stringify([shardDb]),
        CATALOG_CONTROL_SECRET_ARN: arn('control'),
        SHARD_MONITOR_SECRET_ARNS: JSON.stringify([arn('monitor')]),
        SHARD_MOVER_SECRET_ARNS: JSON.stringify([arn('mover')]),
      }),
      clients: { secrets: new SecretsManagerClient({ region: 'eu-west-1' }) },
    }));

    await withLogins({ ...base, RequestType: 'Update', PhysicalResourceId: PHYSICAL_ID, OldResourceProperties: {} }, context);
    sm.restore();
    const as = async (name: keyof typeof logins, db: string, sql: string): Promise<unknown> => {
      const c = new pg.Client({ connectionString: `postgresql://${logins[name]}:${encodeURIComponent(`${name} pass`)}@127.0.0.1:${server.port}/${db}` });
      await c.connect();
      try {
        return (await c.query(sql)).rows[0];
      } finally {
        await c.end();
      }
    };

    expect(await as('control', 'cr_catalog', "select current_setting('statement_timeout') as t, pg_has_role('ca_dms_control', 'member') as member")).toEqual({ t: '10s', member: true });
    expect(await as('monitor', 'cr_shard', "select pg_has_role('ca_dms_monitor', 'member') as member")).toEqual({ member: true });
    expect(await as('mover', 'cr_shard', "select pg_has_role('ca_dms_mover', 'member') as member")).toEqual({ member: true });
  });

  it('refuses application secrets that do not pair up with the shards, naming the variable', () => {
    expect(() => parseMigrationEnv({ CATALOG_DATABASE_URL: server.url, SHARD_DATABASE_URLS: JSON.stringify([server.url]), SHARD_APP_SECRET_ARNS: '[]' })).not.toThrow();
    expect(() =>
      parseMigrationEnv({
        CATALOG_DATABASE_URL: server.url,
        SHARD_DATABASE_URLS: JSON.stringify([server.url]),
        SHARD_APP_SECRET_ARNS: JSON.stringify(['arn:aws:secretsmanager:eu-west-1:123456789012:secret:a-AbCdEf', 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:b-AbCdEf']),
      }),
    ).toThrow(/SHARD_APP_SECRET_ARNS: give one application secret per shard/);
    expect(() =>
      parseMigrationEnv({ CATALOG_DATABASE_URL: server.url, SHARD_DATABASE_URLS: JSON.stringify([server.url]), SHARD_MOVER_SECRET_ARNS: JSON.stringify([]), SHARD_MONITOR_SECRET_ARNS: JSON.stringify(['arn:aws:secretsmanager:eu-west-1:123456789012:secret:a-AbCdEf', 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:b-AbCdEf']) }),
    ).toThrow(/SHARD_MONITOR_SECRET_ARNS: give one monitor secret per shard/);
  });

  it('changes nothing on Delete', async () => {
    const response = await handler()({ ...base, RequestType: 'Delete', PhysicalResourceId: PHYSICAL_ID }, context);

    expect(response).toEqual({ PhysicalResourceId: PHYSICAL_ID });
    const c = new pg.Client({ connectionString: catalogDb });
    await c.connect();
    const { rows } = await c.query<{ n: number }>('select count(*)::int as n from catalog.schema_migrations');
    await c.end();
    expect(rows[0]?.n).toBeGreaterThan(0);
  });

  it('fails with a clear message on a malformed event', async () => {
    await expect(handler()({ RequestType: 'Rename' }, context)).rejects.toBeInstanceOf(CustomResourceEventError);
  });
});
