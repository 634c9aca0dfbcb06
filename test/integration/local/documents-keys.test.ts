import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keySlot } from '../../../functions/core/sharding/keys.js';
import { keySpelling, spell } from '../../support/key-spellings.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

describe('documents API: every spelling of an owner id is one owner', () => {
  let api: DocumentsApi;
  beforeAll(async () => {
    api = await startDocumentsApi();
  });
  afterAll(async () => {
    await api?.stop();
  });

  it('stores, routes and lists documents the same whichever form of the owner id a request uses', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(keySpelling, { minLength: 1, maxLength: 3 }), keySpelling, async (writeForms, readForm) => {
        const user = await api.request('POST', '/api/v1/users', { email: `u${Math.random().toString(36).slice(2)}@example.org`, display_name: 'U' });
        expect(user.status).toBe(201);
        const id = user.body.id as string;
        const created: string[] = [];
        for (const form of writeForms) {
          const doc = await api.request('POST', '/api/v1/documents', { owner_id: spell(id, form), title: 't' });
          expect(doc.status).toBe(201);
          expect(doc.body.owner_id).toBe(id);
          expect(doc.body.shard_id).toBe(user.body.shard_id);
          created.push(doc.body.id as string);
        }
        const list = await api.request('GET', `/api/v1/users/${encodeURIComponent(spell(id, readForm))}/documents`);
        expect(list.status).toBe(200);
        expect(list.body.owner_id).toBe(id);
        expect((list.body.items as { id: string }[]).map((d) => d.id).sort()).toEqual([...created].sort());
        // Behind the API: every row sits on the owner's shard, in the slot of the canonical id.
        const { rows } = await api.primary(user.body.shard_id as string).query<{ slot: number }>('select slot from documents where owner_id = $1', [id]);
        expect(rows.map((r) => r.slot)).toEqual(created.map(() => keySlot(id)));
      }),
      { numRuns: 25 },
    );
  });

  it('refuses an owner id that is not a UUID, naming the field', async () => {
    const res = await api.request('GET', '/api/v1/users/3f2c1d9e-8a7b-4c6d-9e0f-11223344556/documents');
    expect(res.status).toBe(400);
    expect(res.body.invalid_params).toEqual([{ name: 'path.id', reason: expect.stringMatching(/must be a UUID/) }]);
  });
});
