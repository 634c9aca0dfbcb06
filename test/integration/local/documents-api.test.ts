import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

const nested = (depth: number): string => `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;

describe('documents API against real PostgreSQL: honest answers to bad and hostile input', () => {
  let api: DocumentsApi;
  let owner: { id: string; shard_id: string };
  const logged: unknown[] = [];
  beforeAll(async () => {
    api = await startDocumentsApi((error) => logged.push(error));
    owner = (await api.request('POST', '/api/v1/users', { email: 'owner@example.org', display_name: 'Owner' })).body as { id: string; shard_id: string };
  });
  afterAll(async () => {
    await api?.stop();
  });

  const documentCount = async (): Promise<number> => {
    let n = 0;
    for (const shard of ['shard_001', 'shard_002']) n += Number((await api.primary(shard).query<{ n: string }>('select count(*) as n from documents')).rows[0]?.n);
    return n;
  };

  it.each([
    ['a NUL character in a string', '{"owner_id": "OWNER", "title": "a\\u0000b"}', 'body.title', /NUL/],
    ['a lone surrogate escape PostgreSQL refuses', '{"owner_id": "OWNER", "title": "t", "content": {"x": "\\ud800"}}', 'body.content.x', /well-formed Unicode/],
    ['content nested 30,000 deep', `{"owner_id": "OWNER", "title": "t", "content": ${nested(30_000)}}`, /^body\.content(\.a)+$/, /deeper than 32 levels/],
    ['content that is not an object', '{"owner_id": "OWNER", "title": "t", "content": [1, 2]}', 'body.content', /must be a JSON object/],
  ])('answers %s with 400 naming the field, no database text, nothing stored', async (_what, body, field, reason) => {
    const before = await documentCount();
    const res = await api.request('POST', '/api/v1/documents', body.replace('OWNER', owner.id));
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(res.body.invalid_params[0]).toEqual({ name: expect.stringMatching(field), reason: expect.stringMatching(reason) });
    expect(JSON.stringify(res.body)).not.toMatch(/postgres|sqlstate|syntax|unicode escape|stack/i);
    expect(await documentCount()).toBe(before);
  });

  it('refuses a second user with the same e-mail address, in any letter case (409)', async () => {
    const again = await api.request('POST', '/api/v1/users', { email: 'OWNER@example.org', display_name: 'Impostor' });
    expect(again.status).toBe(409);
    expect(again.body.invalid_params).toEqual([{ name: 'body.email', reason: expect.stringContaining(`/api/v1/users/${owner.id}`) }]);
  });

  it('answers 422 for a document whose owner does not exist, and 409 when the owner given does not own it', async () => {
    const orphan = await api.request('POST', '/api/v1/documents', { owner_id: randomUUID(), title: 't' });
    const doc = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'mine' });
    // Another user on the same shard, so the document is found under the wrong owner.
    let other: { id: string; shard_id: string } | undefined;
    for (let i = 0; other?.shard_id !== owner.shard_id; i += 1) other = (await api.request('POST', '/api/v1/users', { email: `other${i}@example.org`, display_name: 'O' })).body;
    const mismatch = await api.request('GET', `/api/v1/documents/${doc.body.id}?owner=${other.id}`);
    expect(orphan.status).toBe(422);
    expect(orphan.body.invalid_params[0].name).toBe('body.owner_id');
    expect(mismatch.status).toBe(409);
    expect(mismatch.body.invalid_params[0].name).toBe('query.owner');
  });

  it('points Location at routes that answer', async () => {
    const user = await api.request('POST', '/api/v1/users', { email: 'located@example.org', display_name: 'L' });
    const doc = await api.request('POST', '/api/v1/documents', { owner_id: user.body.id, title: 't' });
    for (const created of [user, doc]) {
      const location = created.headers.get('location') ?? '';
      const res = await api.request('GET', location);
      expect(res.status).toBe(200);
      expect(res.body.id).toBe(created.body.id);
    }
  });

  it('refuses a malformed X-Read-After or one naming an unknown shard (400), and honours a valid one', async () => {
    const doc = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 't' });
    const token = doc.headers.get('x-read-token') ?? '';
    const bad = await api.request('GET', `/api/v1/users/${owner.id}/documents`, undefined, { 'x-read-after': 'garbage' });
    const unknown = await api.request('GET', `/api/v1/users/${owner.id}/documents`, undefined, { 'x-read-after': token.replace(/^[^@]+/, 'shard_999') });
    const good = await api.request('GET', `/api/v1/users/${owner.id}/documents`, undefined, { 'x-read-after': token });
    expect([bad.status, unknown.status, good.status]).toEqual([400, 400, 200]);
    expect(unknown.body.invalid_params[0].name).toBe('header.x-read-after');
    expect((good.body.items as { id: string }[]).map((d) => d.id)).toContain(doc.body.id);
  });

  it('answers a malformed percent-escape in the path with 400', async () => {
    const res = await api.request('GET', '/api/v1/users/%zz/documents');
    expect(res.status).toBe(400);
  });

  it('logs an unexpected database error for the operator and answers without its text', async () => {
    await api.primary(owner.shard_id).query('alter table documents add constraint no_secret check (title <> $$secret$$)'.replace('$$secret$$', "'secret'"));
    try {
      const res = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'secret' });
      expect(res.status).toBe(503);
      expect(JSON.stringify(res.body)).not.toMatch(/no_secret|constraint|violates/);
      expect(String((logged.at(-1) as Error).message)).toMatch(/no_secret/);
    } finally {
      await api.primary(owner.shard_id).query('alter table documents drop constraint no_secret');
    }
  });
});
