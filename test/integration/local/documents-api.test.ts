import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createDocumentsRoute, userIdForEmail } from '../../../functions/local/documents-api.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
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

  it.each([
    ['a 200,000-character unknown member', () => `{"owner_id": "OWNER", "title": "t", "${'k'.repeat(200_000)}": 1}`, /^body\.k{64}…/, /not a field/],
    ['20,000 unknown members', () => `{"owner_id": "OWNER", "title": "t", ${Array.from({ length: 20_000 }, (_, i) => `"x${i}": 1`).join(', ')}}`, /^body\.x0$/, /not a field/],
    ['a 100,000-character member given twice', () => `{"owner_id": "OWNER", "title": "t", "content": {"${'k'.repeat(100_000)}": 1, "${'k'.repeat(100_000)}": 2}}`, /^body\.content\.k+…/, /more than once/],
  ] as const)('answers %s with a short 400 naming the member, not the body echoed back, and stores nothing', async (_what, body, field, reason) => {
    const before = await documentCount();
    const text = body().replace('OWNER', owner.id);
    const res = await fetch(`${api.url}/api/v1/documents`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: text });
    const answer = await res.text();
    expect(res.status).toBe(400);
    const problem = JSON.parse(answer) as { invalid_params: Array<{ name: string; reason: string }> };
    expect(problem.invalid_params[0]).toEqual({ name: expect.stringMatching(field), reason: expect.stringMatching(reason) });
    expect(answer.length, answer.slice(0, 300)).toBeLessThan(4096);
    expect(await documentCount()).toBe(before);
  });

  it.each([
    ['/api/v1/documents', (tail: Buffer) => Buffer.concat([Buffer.from(`{"owner_id": "${owner.id}", "title": "caf`), tail, Buffer.from('"}')]), 'body'],
    ['/api/v1/users', (tail: Buffer) => Buffer.concat([Buffer.from('{"email": "latin1@example.org", "display_name": "J'), tail, Buffer.from('rg"}')]), 'body'],
  ])('refuses a body to %s that is not UTF-8 (400), rather than store U+FFFD in place of its bytes', async (path, body) => {
    const before = await documentCount();
    const res = await fetch(`${api.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(Buffer.from([0xe9])) });
    const problem = (await res.json()) as { detail: string };
    const user = await api.request('GET', `/api/v1/users/${userIdForEmail('latin1@example.org')}`);

    expect({ status: res.status, detail: problem.detail }).toEqual({ status: 400, detail: expect.stringMatching(/^the body is not valid UTF-8/) as unknown as string });
    expect(user.status).toBe(404);
    expect(await documentCount()).toBe(before);
  });

  it('stores a content member named __proto__ as sent, like any other member', async () => {
    const res = await api.request('POST', '/api/v1/documents', `{"owner_id": "${owner.id}", "title": "proto", "content": {"__proto__": {"x": 1}, "y": 2}}`);
    const stored = (await api.primary(owner.shard_id).query<{ content: string }>('select content::text as content from documents where id = $1', [res.body.id])).rows[0]?.content;

    expect(res.status).toBe(201);
    expect(stored).toBe('{"y": 2, "__proto__": {"x": 1}}');
  });

  it.each([
    ['beyond the range of a double', '1e400', 'body.content.big'],
    ['below the smallest double', '1e-400', 'body.content.big'],
    ['with more digits than a double holds', '12345678901234567890123', 'body.content.big'],
    ['with a fraction a double rounds', '0.1000000000000000000001', 'body.content.list[1]'],
  ])('refuses a number %s (400 naming it), rather than store another number', async (_what, n, field) => {
    const before = await documentCount();
    const content = field.endsWith('[1]') ? `{"list": [1, ${n}]}` : `{"big": ${n}}`;
    const res = await api.request('POST', '/api/v1/documents', `{"owner_id": "${owner.id}", "title": "numbers", "content": ${content}}`);

    expect({ status: res.status, invalid: res.body.invalid_params }).toEqual({ status: 400, invalid: [{ name: field, reason: expect.stringMatching(/cannot be stored exactly.*as a string/) as unknown as string }] });
    expect(await documentCount()).toBe(before);
  });

  it('refuses a body that starts with a byte order mark with a 400 that says so, not an invisible unexpected token', async () => {
    const before = await documentCount();
    const res = await api.request('POST', '/api/v1/documents', `\ufeff{"owner_id": "${owner.id}", "title": "bom"}`);

    expect({ status: res.status, detail: res.body.detail }).toEqual({ status: 400, detail: expect.stringMatching(/^the body starts with a byte order mark \(U\+FEFF\)/) as unknown as string });
    expect(await documentCount()).toBe(before);
  });

  it('refuses a number of 256 KiB of zeros ended by a 1 (400 naming it) in one pass, not after a minute of a blocked server', async () => {
    const before = await documentCount();
    const head = `{"owner_id": "${owner.id}", "title": "numbers", "content": {"big": 1`;
    const res = await api.request('POST', '/api/v1/documents', `${head}${'0'.repeat(256 * 1024 - head.length - 4)}1}}`);

    expect({ status: res.status, invalid: res.body.invalid_params }).toEqual({ status: 400, invalid: [{ name: 'body.content.big', reason: expect.stringMatching(/cannot be stored exactly \(it would become null\)/) as unknown as string }] });
    expect(await documentCount()).toBe(before);
  });

  it('stores numbers a double holds exactly as sent, whatever their spelling (1.0, 1e2, -0, 5e-324, 2^53)', async () => {
    const res = await api.request('POST', '/api/v1/documents', `{"owner_id": "${owner.id}", "title": "exact", "content": {"a": 1.0, "b": 1e2, "c": -0, "d": 5e-324, "e": 9007199254740992, "f": 0.1, "g": 1.5E+3}}`);

    expect(res.status).toBe(201);
    expect(res.body.content).toEqual({ a: 1, b: 100, c: 0, d: 5e-324, e: 9007199254740992, f: 0.1, g: 1500 });
  });

  it('refuses a second user with the same e-mail address, in any letter case (409)', async () => {
    const again = await api.request('POST', '/api/v1/users', { email: 'OWNER@example.org', display_name: 'Impostor' });
    expect(again.status).toBe(409);
    expect(again.body.invalid_params).toEqual([{ name: 'body.email', reason: expect.stringContaining(`/api/v1/users/${owner.id}`) }]);
  });

  // Another spelling of the same address either is the same user (letter case) or is refused
  // (400 naming body.email): never a second user (docs/sharding-spec.md section 9, the e-mail rule).
  it.each([
    ['a leading space', ' owner@example.org'],
    ['a trailing space', 'owner@example.org '],
    ['a trailing line break', 'owner@example.org\n'],
    ['a full-width at sign', 'owner\uff20example.org'],
    ['a decomposed accent (NFD)', 'owne\u0301r@example.org'],
    ['a composed accent (NFC)', 'own\u00e9r@example.org'],
    ['a trailing dot in the domain', 'owner@example.org.'],
  ])('refuses an e-mail address with %s (400 naming body.email), creating no second user', async (_what, email) => {
    const res = await api.request('POST', '/api/v1/users', { email, display_name: 'Another form' });
    expect({ status: res.status, invalid: res.body.invalid_params }).toEqual({ status: 400, invalid: [{ name: 'body.email', reason: 'must be an e-mail address' }] });
  });

  it('derives a user id from the lower-cased address, as the spec vector says (UUID v5, URL name-space)', () => {
    expect(userIdForEmail('Alice@Example.COM')).toBe('aa006163-b22e-5d26-8740-b3bfb50ec29c');
    expect(userIdForEmail('alice@example.com')).toBe('aa006163-b22e-5d26-8740-b3bfb50ec29c');
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

  it.each([
    ['a negative map version', (t: string) => t.replace(/;v=\d+/, ';v=-1'), /map version "-1"/],
    ['an empty map version (cut short)', (t: string) => t.replace(/;v=\d+/, ';v='), /map version ""/],
    ['timeline 0', (t: string) => t.replace(/;tl=\d+/, ';tl=0'), /timeline "0"/],
    ['a negative timeline', (t: string) => t.replace(/;tl=\d+/, ';tl=-1'), /timeline "-1"/],
    ['a WAL position cut short', (t: string) => t.replace(/@[^;]+/, '@1/'), /WAL position "1\/"/],
    ['a WAL position of more than 64 bits', (t: string) => t.replace(/@[^;]+/, '@1/123456789'), /WAL position "1\/123456789"/],
    ['an upper-case token', (t: string) => t.toUpperCase(), /lower-case/],
    ['a shard id that is no shard id', (t: string) => `shard 1${t.slice(t.indexOf('@'))}`, /shard "shard 1"/],
    ['two tokens in one header', (t: string) => `${t}, ${t}`, /exactly ;tl=N;v=N/],
  ])('refuses an X-Read-After with %s (400), naming the part that is wrong', async (_what, mangle, reason) => {
    const doc = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'mangled token' });
    const token = mangle(doc.headers.get('x-read-token') ?? '');
    const answers = await Promise.all(
      [`/api/v1/users/${owner.id}`, `/api/v1/users/${owner.id}/documents`, `/api/v1/documents/${String(doc.body.id)}`].map((path) => api.request('GET', path, undefined, { 'x-read-after': token })),
    );

    expect(answers.map((r) => [r.status, r.body.invalid_params?.[0]?.name])).toEqual(Array.from({ length: 3 }, () => [400, 'header.x-read-after']));
    for (const r of answers) expect(r.body.invalid_params[0].reason).toMatch(reason);
  });

  it('reads on the primary with ?consistency=primary, and refuses any other value (400 naming query.consistency)', async () => {
    const doc = await api.request('POST', '/api/v1/documents', { owner_id: owner.id, title: 'on the primary' });
    const reads = await Promise.all([
      `/api/v1/users/${owner.id}?consistency=primary`,
      `/api/v1/users/${owner.id}/documents?consistency=primary`,
      `/api/v1/documents/${doc.body.id}?owner=${owner.id}&consistency=primary`,
      `/api/v1/documents/${doc.body.id}?consistency=primary`,
    ].map((path) => api.request('GET', path)));
    const refused = await Promise.all([`/api/v1/users/${owner.id}?consistency=replica`, `/api/v1/documents/${doc.body.id}?consistency=`].map((path) => api.request('GET', path)));

    expect(reads.map((r) => [r.status, r.body.served_by])).toEqual(Array.from({ length: 4 }, () => [200, `${owner.shard_id}/primary`]));
    expect(refused.map((r) => [r.status, r.body.invalid_params?.[0]?.name])).toEqual([
      [400, 'query.consistency'],
      [400, 'query.consistency'],
    ]);
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

describe('documents API over shards with streaming replicas: read-your-writes tokens', () => {
  let cluster: TestShardCluster;
  let catalogServer: TestPostgres;
  let catalog: pg.Pool;
  let sharding: ShardingRuntime;
  let http: Server;
  let url: string;
  beforeAll(async () => {
    [catalogServer, cluster] = await Promise.all([startTestPostgres(), startShardCluster({ shards: 2, replicasPerShard: 1, schema: true })]);
    catalog = new pg.Pool({ connectionString: catalogServer.url, max: 4 });
    await runMigrations(catalog, 'sharding', resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations/sharding'));
    sharding = await createShardingRuntime({ config: parseShardingConfig({ ...cluster.config, health_check_interval_seconds: 1 }), catalog, actor: 'test', readReplicas: true });
    const { reader, reads } = sharding;
    if (reader === undefined || reads === undefined) throw new Error('the runtime built no replica reader');
    const route = createDocumentsRoute({ writer: sharding.writer, reader, reads, shardIds: ['shard_001', 'shard_002'] });
    http = createServer((req, res) => void Promise.resolve(route(req, res)).then((handled) => (handled ? undefined : res.writeHead(404).end())));
    await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
    url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  }, 120_000);
  afterAll(async () => {
    await new Promise<void>((ok) => (http ? http.close(() => ok()) : ok()));
    await sharding?.close();
    await catalog?.end();
    await Promise.all([cluster?.stop(), catalogServer?.stop()]);
  });

  async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
    const res = await fetch(`${url}${path}`, { method, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
  }

  it('a token of another timeline than the shard is on (a failover the reader has not probed yet) is read on the primary, with or without ?owner=', async () => {
    const user = await call('POST', '/api/v1/users', { email: 'timeline@example.org', display_name: 'T' });
    const doc = await call('POST', '/api/v1/documents', { owner_id: user.body['id'], title: 'before the failover' });
    const token = doc.headers.get('x-read-token') ?? '';
    const shardId = String(doc.body['shard_id']);
    const primary = `${shardId}/primary`;
    // The replica has replayed the write, and the reader knows it: the token is served there.
    let servedBy = primary;
    for (let i = 0; i < 100 && servedBy === primary; i++) {
      servedBy = String((await call('GET', `/api/v1/documents/${String(doc.body['id'])}`, undefined, { 'x-read-after': token })).body['served_by']);
      if (servedBy === primary) await new Promise((r) => setTimeout(r, 100));
    }
    expect(servedBy, 'a replica serves the token of its own timeline').not.toBe(primary);
    // The same position on a timeline this shard is not on (as the writer saw it, after a
    // promotion): a replica's replay position says nothing about that timeline's WAL.
    const otherTimeline = token.replace(/;tl=(\d+)/, (_m, tl: string) => `;tl=${Number(tl) + 1}`);
    expect(otherTimeline).not.toBe(token);
    const withOwner = await call('GET', `/api/v1/documents/${String(doc.body['id'])}?owner=${String(user.body['id'])}`, undefined, { 'x-read-after': otherTimeline });
    const withoutOwner = await call('GET', `/api/v1/documents/${String(doc.body['id'])}`, undefined, { 'x-read-after': otherTimeline });
    expect({ withOwner: withOwner.body['served_by'], withoutOwner: withoutOwner.body['served_by'] }).toEqual({ withOwner: primary, withoutOwner: primary });
  }, 60_000);
});
