/**
 * Property-based fuzzing of live local mode over HTTP, driven by the OpenAPI documents: every
 * operation of the scaling API (`/api/v1/scaling/openapi.json`) and of the documents API
 * (`/api/v1/openapi.json`) gets requests generated from its parameter and body schemas, valid
 * and hostile mixed (`test/support/openapi-fuzz.ts`), sent one at a time to a real local mode
 * (embedded PostgreSQL shards with replicas, the controller, the simulated fleet). For every
 * answer: never a 5xx; an error is an RFC 9457 problem document with no stack trace and no
 * database text; and a refused request (4xx) leaves the stored state (catalog and every shard)
 * exactly as it was. `npm test` sends 25 requests per operation; `npm run fuzz` 1,000
 * (FUZZ_RUNS sets any other number). fast-check prints the seed and the request on a failure.
 */
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scalingApiDocument } from '../../../functions/api/routes.js';
import { documentsApiDocument } from '../../../functions/local/documents-api.js';
import { startLocalMode, type LocalMode } from '../../../functions/local/runtime.js';
import { quietLocalMode } from '../local/local-options.js';
import { tempDataDir } from '../../e2e/support/local-process.js';
import { KnownValues, operationsOf, requestArb, type FuzzRequest } from '../../support/openapi-fuzz.js';

const RUNS = Number(process.env['FUZZ_RUNS'] ?? 25);

/** Text no answer may hold: stack frames, source positions, connection strings, PostgreSQL's own words. */
const LEAK = /postgres(ql)?:\/\/|\.ts:\d+:\d+|\n\s+at |invalid input syntax|violates .* constraint|syntax error at|relation ".*" does not exist|unsupported Unicode escape|Maximum call stack|invalid byte sequence|\bSQLSTATE\b/;

const operations = [...operationsOf(scalingApiDocument()), ...operationsOf(documentsApiDocument())];

/** Identifiers from earlier answers (users, documents, moves, shards, slots), for later requests to name. */
const known = new KnownValues();

/** Answers per operation and status class, printed at the end (the figures of a `npm run fuzz`). */
const tally = new Map<string, Record<string, number>>();

describe('fuzzing live local mode from its OpenAPI documents', () => {
  let local: LocalMode;
  let dataDir: string;
  let catalog: pg.Client;
  let shards: pg.Client[];

  beforeAll(async () => {
    dataDir = await tempDataDir();
    // No scheduled evaluation during the run (quietLocalMode): its decisions would look like changes made by a refused request.
    local = await startLocalMode(quietLocalMode(dataDir, { replicasPerShard: 1, seedUsers: 10, documentsPerUser: 2 }));
    catalog = new pg.Client({ connectionString: local.cluster.catalogUrl });
    shards = local.cluster.shards.map((s) => new pg.Client({ connectionString: s.primaryUrl }));
    await Promise.all([catalog, ...shards].map((c) => c.connect()));
  }, 180_000);

  afterAll(async () => {
    const rows = [...tally].map(([op, counts]) => `${op.padEnd(58)} ${['2xx', '3xx', '4xx', '5xx'].map((c) => String(counts[c] ?? 0).padStart(6)).join('')}`);
    const total = [...tally.values()].reduce((n, c) => n + Object.values(c).reduce((a, b) => a + b, 0), 0);
    console.log([`fuzz: ${total} requests, ${RUNS} per operation`, `${'operation'.padEnd(58)}    2xx   3xx   4xx   5xx`, ...rows].join('\n'));
    await Promise.all([catalog, ...(shards ?? [])].map((c) => c?.end().catch(() => undefined)));
    await local?.stop();
    const { rm } = await import('node:fs/promises');
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }, 60_000);

  /** Everything a refused request must not change, in the catalog and on every shard. */
  async function state(): Promise<string> {
    const { rows } = await catalog.query(`select
      (select coalesce(max(version), 0) from catalog.scaling_config) as config,
      (select count(*) from catalog.switch_events) as switch_events,
      (select coalesce(string_agg(scope || '=' || enabled, ',' order by scope), '') from catalog.scaling_switches) as switches,
      (select count(*) from catalog.scaling_decisions) as decisions,
      (select count(*) from catalog.move_jobs) as moves,
      (select count(*) from catalog.slot_maps) as maps,
      (select count(*) from catalog.shard_directory) as directory`);
    const perShard = await Promise.all(shards.map(async (c) => (await c.query('select (select count(*) from users) as users, (select count(*) from documents) as documents')).rows[0]));
    return JSON.stringify({ catalog: rows[0], shards: perShard });
  }

  async function currentEtag(): Promise<string> {
    const { rows } = await catalog.query<{ v: number }>('select coalesce(max(version), 0)::int as v from catalog.scaling_config');
    return `"v${rows[0]?.v ?? 0}"`;
  }

  /**
   * An accepted move runs in the background: let it finish before the next request is judged.
   * One still running after 30 s fails here, by name, rather than as a "state changed" on
   * whichever request comes next.
   */
  async function settleMove(body: string): Promise<void> {
    const id = (JSON.parse(body) as { id?: string }).id;
    expect(id, `a 202 from the moves endpoint names its job: ${body.slice(0, 300)}`).toBeDefined();
    let state: string | undefined;
    for (let i = 0; i < 300; i++) {
      const res = await fetch(`${local.url}/api/v1/scaling/shards/moves/${id}`);
      state = ((await res.json()) as { state?: string }).state;
      if (state === 'done' || state === 'failed' || state === 'cancelled') return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`move job ${id} accepted by the fuzz run was still ${state ?? 'unknown'} after 30 s`);
  }

  it('serves the OpenAPI documents the requests are generated from', async () => {
    const scaling = await (await fetch(`${local.url}/api/v1/scaling/openapi.json`)).json();
    const documents = await (await fetch(`${local.url}/api/v1/openapi.json`)).json();

    expect(scaling).toEqual(JSON.parse(JSON.stringify(scalingApiDocument())));
    expect(documents).toEqual(documentsApiDocument());
    expect(operations.length).toBeGreaterThanOrEqual(24);
  });

  for (const op of operations) {
    it(`${op.method} ${op.path} (${op.operationId}): never a 5xx, no leak, a refused request changes nothing`, async () => {
      const usesIfMatch = op.parameters.some((p) => p.name === 'if-match');
      let before = await state();
      await fc.assert(
        fc.asyncProperty(requestArb(op, known), fc.boolean(), async (request: FuzzRequest, currentTag) => {
          const headers = { ...request.headers };
          if (usesIfMatch && currentTag) headers['if-match'] = await currentEtag();
          const res = await fetch(`${local.url}${request.target}`, { method: request.method, headers, ...(request.body === undefined ? {} : { body: request.body }) });
          const text = await res.text();
          const after = await state();
          const what = `${request.method} ${request.target} (${request.note}) -> ${res.status} ${text.slice(0, 300)}`;
          const counts = tally.get(`${op.method} ${op.path}`) ?? {};
          const statusClass = `${Math.floor(res.status / 100)}xx`;
          counts[statusClass] = (counts[statusClass] ?? 0) + 1;
          tally.set(`${op.method} ${op.path}`, counts);
          expect(res.status, what).toBeLessThan(500);
          if (res.status >= 400) {
            expect(res.headers.get('content-type'), what).toBe('application/problem+json');
            if (request.method !== 'HEAD') {
              const doc = JSON.parse(text) as { status: number; title: unknown; detail: unknown };
              expect(doc.status, what).toBe(res.status);
              expect(typeof doc.title, what).toBe('string');
              expect(typeof doc.detail, what).toBe('string');
              expect(text, what).not.toMatch(LEAK);
            }
            expect(after, `state changed after ${what}`).toBe(before);
          } else if (res.status === 202 && request.target.startsWith('/api/v1/scaling/shards/moves')) {
            await settleMove(text);
          }
          if (res.status >= 200 && res.status < 300 && text !== '') known.learn(op.path, JSON.parse(text));
          before = await state();
        }),
        { numRuns: RUNS },
      );
    }, 900_000);
  }
});
