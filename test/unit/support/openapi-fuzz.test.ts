/**
 * The fuzzer's request generation: identifiers learned from earlier answers come back in the
 * requests that name things (`/{id}`, `owner_id`, a move's `to` and `unit`), so the handlers
 * behind them get requests they can answer with a 2xx, not only 404s for random UUIDs.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KnownValues, requestArb, type Operation } from '../../support/openapi-fuzz.js';

const uuid = { type: 'string', format: 'uuid' };
const getDocument: Operation = { method: 'GET', path: '/api/v1/documents/{id}', operationId: 'getDocument', parameters: [{ name: 'id', in: 'path', required: true, schema: uuid }] };
const getMove: Operation = { method: 'GET', path: '/api/v1/scaling/shards/moves/{id}', operationId: 'getMove', parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string', pattern: '^[0-9a-zA-Z-]{1,64}$' } }] };
const postDocument: Operation = {
  method: 'POST',
  path: '/api/v1/documents',
  operationId: 'createDocument',
  parameters: [],
  body: { required: true, contentTypes: ['application/json'], schema: { type: 'object', properties: { owner_id: uuid, title: { type: 'string', minLength: 1 } }, required: ['owner_id', 'title'] } },
};
const startMove: Operation = {
  method: 'POST',
  path: '/api/v1/scaling/shards/moves',
  operationId: 'startMove',
  parameters: [],
  body: { required: true, contentTypes: ['application/json'], schema: { type: 'object', properties: { kind: { type: 'string', enum: ['slot', 'directory'] }, unit: { type: 'string' }, to: { type: 'string' } }, required: ['kind', 'unit', 'to'] } },
};

/** The share of `samples` requests generated for `op` for which `names` holds. */
function share(op: Operation, known: KnownValues, names: (r: { target: string; body: string | undefined }) => boolean, samples = 400): number {
  return fc.sample(requestArb(op, known), { numRuns: samples, seed: 42 }).filter(names).length / samples;
}

describe('KnownValues in generated requests', () => {
  const known = new KnownValues();
  known.learn('/api/v1/documents', { id: 'd0c0ffee-0000-4000-8000-000000000001', owner_id: 'a0c0ffee-0000-4000-8000-000000000002', title: 't' });
  known.learn('/api/v1/scaling/shards/moves', { id: '17', kind: 'slot', unit: '5', from: 'shard_001', to: 'shard_002' });
  known.learn('/api/v1/scaling/shards/route', { key: 'k', shard_id: 'shard_002', slot: 911, map_version: 3 });
  known.learn('/api/v1/scaling/shards/health', { shards: [{ shardId: 'shard_001', primary: { nodeId: 'n' } }] });

  it('learns ids by the collection of the answering path, and shards and slots by field name', () => {
    expect([known.count('documents'), known.count('users'), known.count('moves'), known.count('shards'), known.count('slots')]).toEqual([1, 1, 1, 2, 1]);
    expect(known.pick('shards', 1)).toBe('shard_001');
  });

  it('names known documents and moves in most by-id requests, and in none without them', () => {
    expect(share(getDocument, known, (r) => r.target === '/api/v1/documents/d0c0ffee-0000-4000-8000-000000000001')).toBeGreaterThan(0.3);
    expect(share(getMove, known, (r) => r.target === '/api/v1/scaling/shards/moves/17')).toBeGreaterThan(0.3);
    expect(share(getMove, new KnownValues(), (r) => r.target === '/api/v1/scaling/shards/moves/17')).toBe(0);
  });

  it("fills a body's owner_id, a move's unit and its target shard from known values", () => {
    const bodyOf = (r: { body: string | undefined }): Record<string, unknown> => {
      try {
        return JSON.parse(r.body ?? 'null') as Record<string, unknown>;
      } catch {
        return {};
      }
    };
    expect(share(postDocument, known, (r) => bodyOf(r)?.['owner_id'] === 'a0c0ffee-0000-4000-8000-000000000002')).toBeGreaterThan(0.3);
    expect(share(startMove, known, (r) => bodyOf(r)?.['unit'] === '911' && ['shard_001', 'shard_002'].includes(String(bodyOf(r)?.['to'])))).toBeGreaterThan(0.15);
  });
});
