/**
 * A setting given twice in one JSON object is refused, naming it, at every entry point that
 * reads JSON text from outside: the scaling API's bodies, the documents API's bodies, JSON in the
 * functions' environment variables, the CDK deployment configuration file and `simulate
 * --config`. `JSON.parse` alone keeps the last value silently.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createRouter, defineRoute } from '../../functions/api/router.js';
import { EnvironmentError, parseControllerEnv } from '../../functions/handlers/shared/env.js';
import { createDocumentsRoute } from '../../functions/local/documents-api.js';
import { loadDeploymentConfig } from '../../lib/config/load-config.js';
import { DeploymentConfigError } from '../../lib/config/deployment-config.js';
import { CLI_RUN_TIMEOUT_MS } from '../e2e/support/local-process.js';

/** A member name and two values for it, written into `{ ...before, name: first, ...after, name: second }`. */
const repeated = fc.record({
  name: fc.constantFrom('cpu_scale_up', 'min_instances', 'scale_cooldown', 'policy'),
  first: fc.integer({ min: 1, max: 100 }),
  second: fc.integer({ min: 1, max: 100 }),
  nested: fc.boolean(),
});
type Repeated = typeof repeated extends fc.Arbitrary<infer T> ? T : never;

/** The JSON text, and the path of the member given twice. */
function textOf(r: Repeated): { text: string; path: string } {
  const inner = `{"${r.name}": ${r.first}, "max_instances": 10, "${r.name}": ${r.second}}`;
  return r.nested ? { text: `{"services": {"worker": ${inner}}}`, path: `services.worker.${r.name}` } : { text: inner, path: r.name };
}

describe('a JSON member given twice', () => {
  it('is a 400 from the scaling API naming body.<path>, and the handler never runs', async () => {
    let handled = 0;
    const router = createRouter(
      [
        defineRoute({
          method: 'PUT',
          path: '/api/config',
          operationId: 'putConfig',
          summary: 'store a document',
          body: z.record(z.string(), z.unknown()),
          responses: { 200: { description: 'stored', schema: z.object({}) } },
          handle: async () => {
            handled += 1;
            return { status: 200, body: {} };
          },
        }),
      ],
      { onError: () => undefined },
    );
    await fc.assert(
      fc.asyncProperty(repeated, async (r) => {
        const { text, path } = textOf(r);
        const res = await router.dispatch({ method: 'PUT', path: '/api/config', query: {}, headers: { 'content-type': 'application/json' }, body: text, identity: { actor: 't' }, requestId: 'r' });
        const problem = JSON.parse(res.body) as { invalid_params?: { name: string }[] };
        expect(res.status).toBe(400);
        expect(problem.invalid_params?.map((p) => p.name)).toEqual([`body.${path}`]);
      }),
      { numRuns: 30 },
    );
    expect(handled).toBe(0);
  });

  describe('in the documents API', () => {
    let server: Server;
    let base: string;
    beforeAll(async () => {
      const unreachable = new Proxy({}, { get: () => () => Promise.reject(new Error('a refused body must reach no shard')) });
      const route = createDocumentsRoute({ writer: unreachable as never, reader: unreachable as never, reads: unreachable as never, shardIds: ['shard_001'], onError: () => undefined });
      server = createServer((req, res) => void route(req, res));
      await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      await new Promise((done) => server.close(done));
    });

    it('is a 400 naming body.<member> before anything is written', async () => {
      const res = await fetch(`${base}/api/v1/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"email": "a@example.org", "display_name": "A", "email": "b@example.org"}' });
      const problem = (await res.json()) as { invalid_params?: { name: string }[] };
      expect(res.status).toBe(400);
      expect(problem.invalid_params?.map((p) => p.name)).toEqual(['body.email']);
    });
  });

  it('in SCALING_CONFIG_JSON is an EnvironmentError naming the variable and the member', () => {
    fc.assert(
      fc.property(repeated, (r) => {
        const { text, path } = textOf(r);
        let error: unknown;
        try {
          parseControllerEnv({ SCALING_CONFIG_JSON: text, SCALING_TARGETS_JSON: '{"services":{"worker":{"cluster":"c","ecsService":"s"}}}', CATALOG_DATABASE_URL: 'postgresql://127.0.0.1/catalog' });
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(EnvironmentError);
        expect((error as EnvironmentError).issues).toEqual([{ path: 'SCALING_CONFIG_JSON', message: expect.stringContaining(JSON.stringify(path)) }]);
      }),
      { numRuns: 20 },
    );
  });

  it('in the deployment configuration file is a DeploymentConfigError naming the file and the member', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ca-dms-dup-'));
    writeFileSync(join(dir, 'dev.json'), '{"database": {"shards": 2, "replicasPerShard": 1, "shards": 4}}');

    const error = (() => {
      try {
        loadDeploymentConfig({ configDir: dir, context: () => undefined });
      } catch (e) {
        return e;
      }
      return undefined;
    })();

    expect(error).toBeInstanceOf(DeploymentConfigError);
    expect((error as DeploymentConfigError).message).toContain('"database.shards" is given more than once');
  });

  it('in simulate --config is a usage error (exit 2) naming the flag and the member', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ca-dms-dup-'));
    writeFileSync(join(dir, 'config.json'), '{"min_instances": 2, "min_instances": 3}');
    writeFileSync(join(dir, 'trace.csv'), 'timestamp,value\n2026-01-05T00:00:00Z,1\n2026-01-05T00:01:00Z,2\n');
    const cli = resolve(import.meta.dirname, '../../bin/cli.ts');

    const run = await new Promise<{ code: number; stderr: string }>((done) => {
      execFile(cli, ['simulate', '--trace', join(dir, 'trace.csv'), '--config', join(dir, 'config.json')], { timeout: CLI_RUN_TIMEOUT_MS - 5_000 }, (error, _stdout, stderr) => {
        done({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stderr });
      });
    });

    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/--config .*config\.json: not valid JSON .*"min_instances" is given more than once/);
  }, CLI_RUN_TIMEOUT_MS);
});
