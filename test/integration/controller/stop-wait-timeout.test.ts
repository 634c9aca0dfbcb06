/**
 * POST /stop and configuration writes wait (select ... for share on catalog.service_locks) for an
 * evaluation that holds its service's lock while ECS answers. The catalog login's
 * statement_timeout (10 s, catalog migration 005) bounds that wait; ECS with the SDK's retries
 * (4 attempts, 5 s each) can take longer. The stop is stored by then: its answer must say so.
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { ECSClient, UpdateServiceCommand } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CloudWatchMetricsSource } from '../../../functions/adapters/aws/cloudwatch-metrics.js';
import { EcsScalingTarget } from '../../../functions/adapters/aws/ecs-target.js';
import { startLocalServer, type LocalServer } from '../../../functions/adapters/http/local-server.js';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { HistoryReader } from '../../../functions/adapters/postgres/history-reader.js';
import { createScalingApiPort } from '../../../functions/api/wiring.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { freshMigratedCatalog } from '../../support/migrated-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, givenOneService, ManualClock, mockControllerAws, topologyOf } from '../../support/scaling-fixtures.js';

const aws = mockControllerAws();
const { ecs } = aws;

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const topology = topologyOf(1);
const CONFIG = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {} } };
/** The catalog login's statement_timeout, scaled down from 10 s. */
const STATEMENT_TIMEOUT_MS = 300;

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

async function freshCatalog(): Promise<{ evaluator: CatalogStore; api: CatalogStore; bounded: pg.Pool }> {
  // A copy of the catalog the migrations ran in once on this server (as migrateAll leaves one).
  const name = await freshMigratedCatalog(server, `stop_wait_${++dbCount}`);
  // The controller's login and the API's: the same role, the same statement_timeout.
  const evaluating = new pg.Pool({ connectionString: server.urlFor(name), max: 4, statement_timeout: STATEMENT_TIMEOUT_MS });
  const bounded = new pg.Pool({ connectionString: server.urlFor(name), max: 4, statement_timeout: STATEMENT_TIMEOUT_MS });
  pools.push(evaluating, bounded);
  const defaults = parseScalingConfig(CONFIG);
  return { evaluator: new CatalogStore(evaluating, { defaults }), api: new CatalogStore(bounded, { defaults }), bounded };
}

/** Holds UpdateService (ECS slow: throttled, retried) until `release`. */
function holdUpdate(): { sent: Promise<void>; release: () => void } {
  let reached!: () => void;
  let release!: () => void;
  const sent = new Promise<void>((resolve) => (reached = resolve));
  const gate = new Promise<void>((resolve) => (release = resolve));
  ecs.on(UpdateServiceCommand).callsFake(async () => {
    reached();
    await gate;
    return {};
  });
  return { sent, release };
}

/** The scaling API (the real handler and router) over the catalog whose statements are bounded. */
async function apiOver(api: CatalogStore, bounded: pg.Pool): Promise<LocalServer> {
  const clock = new ManualClock(T0);
  const port = createScalingApiPort({
    catalog: api,
    history: new HistoryReader(async () => bounded),
    controller: controllerFor({ topology, catalog: api, fallback: CONFIG, clock }),
    target: new EcsScalingTarget({ client: new ECSClient({ region: 'eu-west-1' }), topology }),
    metrics: new CloudWatchMetricsSource({ client: new CloudWatchClient({ region: 'eu-west-1' }), topology }),
    clock,
  });
  return startLocalServer({ handler: createApiHandler(() => port), port: 0 });
}

interface Problem {
  readonly status: number;
  readonly detail: string;
}

describe('a stop or a configuration change answered while ECS is slower than the catalog statement timeout', () => {
  const writes = [
    ['POST /stop', '/stop', 'POST', {}, 'the stop'],
    ['POST /stop {"service"}', '/stop', 'POST', { service: 'svc-0' }, 'the stop'],
    ['PATCH /config', '/config', 'PATCH', { dry_run: true }, 'configuration version 1'],
  ] as const;
  for (const [what, path, method, body, stored] of writes) {
    it(`${what} stored while the wait for an evaluation asking ECS runs out says in its 503 that it is stored`, async () => {
      const { evaluator, api, bounded } = await freshCatalog();
      const server = await apiOver(api, bounded);
      try {
        givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });
        const update = holdUpdate();
        const evaluation = controllerFor({ topology, catalog: evaluator, fallback: CONFIG, clock: new ManualClock(T0) }).evaluate({ trigger: 'schedule' });
        await update.sent;

        const res = await fetch(`${server.url}/api/v1/scaling${path}`, {
          method,
          headers: { 'content-type': method === 'PATCH' ? 'application/merge-patch+json' : 'application/json' },
          body: JSON.stringify(body),
        });
        const problem = (await res.json()) as Problem;
        update.release();
        const result = await evaluation;

        expect(res.status).toBe(503);
        expect(problem.detail).toBe(
          `${stored} is stored and in force for every evaluation from now on, but an evaluation that decided a change before it was still asking ECS for it when waiting for that evaluation failed (the catalog's time limit ran out, or the catalog stopped answering): that change may still be applied (GET /history shows its outcome)`,
        );
        const control = await evaluator.loadControl();
        // The evaluation's transaction outlived the statement timeout (idle in it while ECS
        // answered): its change was sent once and recorded as applied.
        expect(ecs.commandCalls(UpdateServiceCommand)).toHaveLength(1);
        expect(result.decisions.map((d) => [d.outcome, d.to])).toEqual([['applied', 4]]);
        expect((await evaluator.listDecisions()).map((d) => d.outcome)).toEqual(['applied']);
        expect(method === 'PATCH' ? control.config.dry_run : 'service' in body ? control.serviceEnabled['svc-0'] : control.globalEnabled).toBe(method === 'PATCH');
      } finally {
        await server.close();
      }
    });
  }
});
