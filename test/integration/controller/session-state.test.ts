/**
 * What the Lambda code paths send to PostgreSQL, read off the wire between the functions' own
 * pools and a real server: nothing that would pin an RDS Proxy client connection to one
 * database connection for the rest of its session (session `SET`/`RESET`, session advisory
 * locks, `LISTEN`, named prepared statements, `PREPARE`/`DISCARD`/`DECLARE`, temporary
 * objects, `LOAD`, explicit sequence calls) and no startup parameter RDS Proxy does not
 * recognise (it accepts user, database, replication, application_name, client_encoding,
 * DateStyle, TimeZone, extra_float_digits). Transaction-scoped state (`SET LOCAL`,
 * `pg_try_advisory_xact_lock`) is allowed: it ends with its transaction.
 */
import { vi } from 'vitest';

vi.hoisted(() => {
  process.env['POWERTOOLS_LOG_LEVEL'] = 'CRITICAL';
  process.env['POWERTOOLS_TRACE_ENABLED'] = 'false';
  process.env['POWERTOOLS_METRICS_NAMESPACE'] = 'CaDmsScalingTest';
});

import { ApplicationAutoScalingClient } from '@aws-sdk/client-application-auto-scaling';
import { CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeServicesCommand, ECSClient } from '@aws-sdk/client-ecs';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { Context } from 'aws-lambda';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HistoryReader } from '../../../functions/adapters/postgres/history-reader.js';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createAlarmHandler } from '../../../functions/handlers/alarm.js';
import { createEvaluateHandler } from '../../../functions/handlers/evaluate.js';
import { parseControllerEnv } from '../../../functions/handlers/shared/env.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { createControllerRuntime, type ControllerRuntime } from '../../../functions/handlers/shared/runtime.js';
import { startPgWireRecorder, type PgWireRecorder, type RecordedStatement } from '../../support/pg-wire-recorder.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { ecsService, metricsFrom, mockControllerAws } from '../../support/scaling-fixtures.js';

const { cw, ecs } = mockControllerAws();

const TOPOLOGY = {
  services: {
    web: { cluster: 'ca-dms', ecsService: 'ca-dms-web', targetGroup: 'targetgroup/web/00000000000000a1', loadBalancer: 'app/ca-dms/00000000000000aa' },
  },
};
const CONFIG = { policy: 'threshold', services: { web: {} } };
const STARTUP_PARAMETERS = new Set(['user', 'database', 'replication', 'application_name', 'client_encoding', 'DateStyle', 'TimeZone', 'extra_float_digits']);

/** Statements that leave state in the session (what RDS Proxy pins on), by what they are. */
const SESSION_STATE: ReadonlyArray<readonly [RegExp, string]> = [
  [/^set\s+(?!local\b)/i, 'session SET'],
  [/^reset\b/i, 'RESET'],
  [/\bset_config\s*\([^)]*,\s*false\s*\)/i, 'session set_config'],
  [/\bpg_(try_)?advisory_lock(_shared)?\s*\(/i, 'session advisory lock'],
  [/^(listen|unlisten)\b/i, 'LISTEN'],
  [/^(prepare|execute|deallocate|discard)\b/i, 'prepared statement / DISCARD'],
  [/^declare\b/i, 'cursor'],
  [/\bcreate\s+(temp|temporary)\b/i, 'temporary object'],
  [/^load\b/i, 'LOAD'],
  [/\b(nextval|setval|currval)\s*\(/i, 'sequence function'],
];

/** Every session-state statement among `recorded`, named and quoted. */
function sessionState(recorded: readonly RecordedStatement[]): string[] {
  const found: string[] = [];
  for (const r of recorded) {
    if (r.kind === 'parse' && r.name !== '') found.push(`named prepared statement ${r.name}: ${r.sql}`);
    for (const statement of r.sql.split(';').map((s) => s.trim()).filter(Boolean)) {
      for (const [pattern, what] of SESSION_STATE) if (pattern.test(statement)) found.push(`${what}: ${statement}`);
    }
  }
  return found;
}

function unrecognisedStartup(startups: ReadonlyArray<Readonly<Record<string, string>>>): string[] {
  return [...new Set(startups.flatMap((p) => Object.keys(p)).filter((k) => !STARTUP_PARAMETERS.has(k)))];
}

let server: TestPostgres;
let recorder: PgWireRecorder;
let rt: ControllerRuntime;

const context = {
  functionName: 'ca-dms-scaling-evaluate',
  awsRequestId: 'c6af9ac6-7b61-11e6-9a41-93e812345678',
  getRemainingTimeInMillis: () => 30_000,
} as unknown as Context;

beforeAll(async () => {
  server = await startTestPostgres();
  const admin = new pg.Pool({ connectionString: server.url, max: 1 });
  await migrateAll({ catalog: admin, shards: [] });
  await admin.end();
  recorder = await startPgWireRecorder(server.port);
  rt = createControllerRuntime(
    parseControllerEnv({
      SCALING_CONFIG_JSON: JSON.stringify(CONFIG),
      SCALING_TARGETS_JSON: JSON.stringify(TOPOLOGY),
      CATALOG_DATABASE_URL: `postgresql://postgres:postgres@127.0.0.1:${recorder.port}/postgres`,
    }),
    {
      cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }),
      ecs: new ECSClient({ region: 'eu-west-1' }),
      autoscaling: new ApplicationAutoScalingClient({ region: 'eu-west-1' }),
      secrets: new SecretsManagerClient({ region: 'eu-west-1' }),
    },
  );
});
afterAll(async () => {
  await rt.close();
  await recorder.close();
  await server.stop();
});

describe('session state sent by the Lambda code paths (what RDS Proxy would pin on)', () => {
  it('the recorder sees a session SET, a named prepared statement and an unknown startup parameter (the check can fail)', async () => {
    recorder.clear();
    const client = new pg.Client({ connectionString: `postgresql://postgres:postgres@127.0.0.1:${recorder.port}/postgres`, statement_timeout: 5000 });
    await client.connect();
    await client.query('set work_mem = 1024');
    await client.query({ name: 'named', text: 'select $1::int', values: [1] });
    await client.end();

    expect(sessionState(recorder.statements())).toEqual(['session SET: set work_mem = 1024', 'named prepared statement named: select $1::int']);
    expect(unrecognisedStartup(recorder.startups())).toEqual(['statement_timeout']);
  });

  it('evaluations, alarms, catalog reads and writes, and shard health checks issue none', async () => {
    recorder.clear();
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    cw.on(GetMetricDataCommand).callsFake(metricsFrom(['web'], { web: { cpu: 95, mem: 50 } }));
    ecs.on(DescribeServicesCommand).resolves({ services: [ecsService('ca-dms-web', { running: 3, desired: 3 })] });
    const alarm = {
      AlarmName: 'ca-dms-web-cpu-high',
      NewStateValue: 'ALARM',
      NewStateReason: 'Threshold Crossed',
      StateChangeTime: '2026-01-05T12:00:00.000+0000',
      Trigger: { MetricName: 'CPUUtilization', Namespace: 'AWS/ECS', Dimensions: [{ name: 'ClusterName', value: 'ca-dms' }, { name: 'ServiceName', value: 'ca-dms-web' }] },
    };
    const sns = { Records: [{ EventSource: 'aws:sns', EventVersion: '1.0', EventSubscriptionArn: 'arn:aws:sns:eu-west-1:123456789012:a:1', Sns: { Type: 'Notification', MessageId: 'm-1', TopicArn: 'arn:aws:sns:eu-west-1:123456789012:a', Subject: 'ALARM', Message: JSON.stringify(alarm), Timestamp: '2026-01-05T12:00:00.000Z' } }] };
    const scheduled = { version: '0', id: 'e-1', 'detail-type': 'Scheduled Event', source: 'aws.events', account: '123456789012', time: '2026-01-05T12:00:00Z', region: 'eu-west-1', resources: [], detail: {} };

    await createEvaluateHandler(() => rt)(scheduled, context);
    await createAlarmHandler(() => rt)(sns, context);
    const config = await rt.catalog.putConfig(CONFIG, { actor: 'alice' });
    await rt.catalog.setSwitch({ scope: 'web', enabled: true, actor: 'alice', reason: 'test' });
    await Promise.all([rt.catalog.getConfig(), rt.catalog.getSwitches(), rt.catalog.listDecisions({ limit: 5 }), rt.catalog.listServiceStates(), rt.catalog.lastAppliedDecisions(['web'])]);
    const history = await new HistoryReader(rt.db).page({ service: 'web', limit: 5 });
    const pools = ShardPools.fromConfig({ shards: [{ shard_id: 'shard_001', database_url: `postgresql://postgres:postgres@127.0.0.1:${recorder.port}/postgres`, read_replicas: [] }] });
    const health = await new ShardInspector(pools, { timeoutMs: 5000, weights: { shard_001: 1 } }).health();
    await pools.end();
    vi.restoreAllMocks();

    expect(config.version).toBeGreaterThan(0);
    expect(history.items.length).toBeGreaterThan(0);
    expect(health.shards[0]?.status).not.toBe('down');
    expect(recorder.statements().length).toBeGreaterThan(20);
    expect(sessionState(recorder.statements())).toEqual([]);
    expect(unrecognisedStartup(recorder.startups())).toEqual([]);
  });
});
