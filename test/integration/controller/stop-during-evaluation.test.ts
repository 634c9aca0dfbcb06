/**
 * POST /stop (the catalog's switch) or PATCH /config with enabled: false racing an evaluation that
 * has already read them: once the stop has been answered, no evaluation may change a desired count.
 */
import { GetMetricDataCommand, type GetMetricDataCommandInput } from '@aws-sdk/client-cloudwatch';
import { UpdateServiceCommand } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, givenOneService, ManualClock, metricsFrom, mockControllerAws, serviceNames, topologyOf } from '../../support/scaling-fixtures.js';

const aws = mockControllerAws();
const { cw, ecs } = aws;

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const topology = topologyOf(1);
const CONFIG = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {} } };

let server: TestPostgres;
const pools: pg.Pool[] = [];
let dbCount = 0;

beforeAll(async () => {
  server = await startTestPostgres();
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server.stop();
});

async function freshCatalog(): Promise<CatalogStore> {
  const name = `stop_race_${++dbCount}`;
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const pool = new pg.Pool({ connectionString: server.urlFor(name), max: 4 });
  pools.push(pool);
  await migrateAll({ catalog: pool, shards: [] });
  return new CatalogStore(pool, { defaults: parseScalingConfig(CONFIG) });
}

/** Holds CloudWatch's answer (the evaluation has read the switches by then) until `release`. */
function holdMetrics(): { reading: Promise<void>; release: () => void } {
  let reached!: () => void;
  let release!: () => void;
  const reading = new Promise<void>((resolve) => (reached = resolve));
  const gate = new Promise<void>((resolve) => (release = resolve));
  const answer = metricsFrom(serviceNames(1), { 'svc-0': { cpu: 93, mem: 50 } });
  cw.on(GetMetricDataCommand).callsFake(async (input: GetMetricDataCommandInput) => {
    reached();
    await gate;
    return answer(input);
  });
  return { reading, release };
}

describe('stopping scaling while an evaluation runs', () => {
  const stops = [
    ['a stop of the whole controller (POST /stop)', (store: CatalogStore) => store.setSwitch({ scope: '*', enabled: false, actor: 'alice', reason: 'incident' }), 'scaling was stopped by alice'],
    ['a stop of the service (POST /stop {"service"})', (store: CatalogStore) => store.setSwitch({ scope: 'svc-0', enabled: false, actor: 'alice' }), 'scaling of svc-0 was stopped by alice'],
    ['enabled: false stored in the configuration (PATCH /config)', (store: CatalogStore) => store.putConfig({ ...CONFIG, enabled: false }, { actor: 'alice' }), 'scaling was disabled by alice (configuration version 1)'],
    [
      'enabled: false for the service in the configuration',
      (store: CatalogStore) => store.putConfig({ ...CONFIG, services: { 'svc-0': { enabled: false } } }, { actor: 'alice' }),
      'scaling was disabled by alice (configuration version 1)',
    ],
    [
      'a configuration that no longer names the service (PUT /config without it, or PATCH null on it)',
      (store: CatalogStore) => store.putConfig({ ...CONFIG, services: {} }, { actor: 'alice' }),
      'svc-0 was removed from the configuration by alice (configuration version 1)',
    ],
  ] as const;
  for (const [what, stopIt, message] of stops) {
    it(`changes no desired count once ${what} has been answered, and records the decision as blocked`, async () => {
      const store = await freshCatalog();
      givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
      const held = holdMetrics();
      const evaluation = controllerFor({ topology, catalog: store, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
      await held.reading;

      await stopIt(store);
      held.release();
      const result = await evaluation;

      expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
      expect(result.decisions.map((d) => [d.outcome, d.to, d.blocked.map((b) => b.kind)])).toEqual([['blocked', 4, ['disabled']]]);
      expect(result.decisions[0]?.blocked[0]?.message).toBe(`${message} while this evaluation ran: nothing is changed`);
      expect((await store.listDecisions()).map((d) => d.outcome)).toEqual(['blocked']);
      expect((await store.getServiceState('svc-0'))?.events ?? []).toEqual([]);
    });
  }
});
