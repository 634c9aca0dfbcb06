/**
 * An evaluation killed between setting a desired count and recording it (a Lambda timed out or
 * ran out of memory, a local-mode process SIGKILLed): the next evaluation, in another process,
 * must find out what happened. Every change of desired count the controller made is in the
 * history, and the cooldown it started holds.
 */
import { spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UpdateServiceCommand } from '@aws-sdk/client-ecs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CatalogStore } from '../../../functions/adapters/postgres/catalog-store.js';
import { parseScalingConfig } from '../../../functions/core/scaling/config.js';
import { freshMigratedCatalog } from '../../support/migrated-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { controllerFor, givenOneService, ManualClock, mockControllerAws, topologyOf } from '../../support/scaling-fixtures.js';

const aws = mockControllerAws();
const child = resolve(dirname(fileURLToPath(import.meta.url)), 'fixtures/evaluate-and-die.ts');
const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const CONFIG = { policy: 'threshold', min_instances: 2, max_instances: 10, scale_cooldown: 300, services: { 'svc-0': {} } };

let server: TestPostgres;
const pools: pg.Pool[] = [];
let databases = 0;

/** A catalog in which an evaluation was killed mid-change, and what it asked ECS for. */
interface AfterKill {
  readonly store: CatalogStore;
  readonly killed: { desired: number; signal: NodeJS.Signals | null; stderr: string };
}
let afterKills: [AfterKill, AfterKill];

beforeAll(async () => {
  server = await startTestPostgres();
  // Both killed runs at once: each child spends most of its life loading its modules.
  const killOne = async (): Promise<AfterKill> => {
    const { url, store } = await freshCatalog();
    return { store, killed: await evaluateAndDie(url, T0) };
  };
  afterKills = await Promise.all([killOne(), killOne()]);
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end()));
  await server?.stop();
});

async function freshCatalog(): Promise<{ url: string; store: CatalogStore }> {
  // A copy of the catalog the migrations ran in once on this server (as migrateAll leaves one).
  const name = await freshMigratedCatalog(server, `crash_${++databases}`);
  const pool = new pg.Pool({ connectionString: server.urlFor(name), max: 1 });
  pools.push(pool);
  return { url: server.urlFor(name), store: new CatalogStore(pool, { defaults: parseScalingConfig(CONFIG) }) };
}

/** Runs evaluate-and-die.ts; resolves with what it asked ECS for once it has been killed. */
function evaluateAndDie(catalogUrl: string, at: number): Promise<{ desired: number; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((done, fail) => {
    const proc = spawn(process.execPath, ['--import', 'tsx', child], {
      env: { ...process.env, CA_DMS_CATALOG_URL: catalogUrl, CA_DMS_EVALUATE_AT: String(at), CA_DMS_CONFIG: JSON.stringify(CONFIG) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    proc.on('error', fail);
    proc.on('exit', (_code, signal) => {
      const asked = /\{"desired":(\d+)\}/.exec(stdout);
      done({ desired: asked ? Number(asked[1]) : NaN, signal, stderr });
    });
  });
}

describe('an evaluation killed between the desired count and its record', () => {
  it('is recorded by the next evaluation as applied when ECS took the change, and its cooldown holds', async () => {
    const { store, killed } = afterKills[0];
    expect({ signal: killed.signal, desired: killed.desired }).toEqual({ signal: 'SIGKILL', desired: 4 });
    // ECS took the change; the load is still high a minute later.
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 4, desired: 4 });

    const next = await controllerFor({ topology: topologyOf(1), catalog: store, fallback: CONFIG, clock: new ManualClock(T0 + 60_000) }).evaluate({ trigger: 'schedule', leaseWaitMs: 10_000 });

    const history = (await store.listDecisions({ service: 'svc-0' })).map((d) => ({ at: d.at, from: d.from, to: d.to, outcome: d.outcome }));
    expect(history).toContainEqual({ at: T0, from: 3, to: 4, outcome: 'applied' });
    // Inside the 300 s cooldown of that scale-out: no second one on top of it.
    expect(next.decisions.map((d) => ({ to: d.to, outcome: d.outcome }))).toEqual([{ to: 4, outcome: 'blocked' }]);
    expect(aws.ecs.commandCalls(UpdateServiceCommand)).toHaveLength(0);
    expect((await store.getServiceState('svc-0'))?.events).toEqual([{ at: T0, from: 3, to: 4 }]);
  });

  it('is recorded as failed when ECS does not show the change, and scaling goes on from what ECS reports', async () => {
    const { store, killed } = afterKills[1];
    expect({ signal: killed.signal, desired: killed.desired }).toEqual({ signal: 'SIGKILL', desired: 4 });
    // The request never took effect (or was undone): ECS still says 3.
    givenOneService(aws, { 'svc-0': { cpu: 93, mem: 50 } }, { running: 3, desired: 3 });

    const next = await controllerFor({ topology: topologyOf(1), catalog: store, fallback: CONFIG, clock: new ManualClock(T0 + 60_000) }).evaluate({ trigger: 'schedule', leaseWaitMs: 10_000 });

    const history = (await store.listDecisions({ service: 'svc-0' })).map((d) => ({ at: d.at, from: d.from, to: d.to, outcome: d.outcome }));
    expect(history).toContainEqual({ at: T0, from: 3, to: 4, outcome: 'failed' });
    expect(next.decisions.map((d) => ({ from: d.from, to: d.to, outcome: d.outcome }))).toEqual([{ from: 3, to: 4, outcome: 'applied' }]);
    expect((await store.getServiceState('svc-0'))?.events).toEqual([{ at: T0 + 60_000, from: 3, to: 4 }]);
  });
});
