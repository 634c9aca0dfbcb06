/**
 * `Idempotency-Key` on `POST /api/v1/documents`: a write whose outcome is unknown (a 504, a
 * dropped connection, a client timeout) can be sent again without creating a second document.
 * The key is a record of its own on the owner's shard (`document_keys`, shard migration 021),
 * whose id is derived from the owner and the key, so every attempt meets the first one's record on
 * the primary key of the owner's shard, wherever the owner lives by then, whatever became of the
 * document since.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_RETENTION_MS, idempotencyKeyId, idempotencyKeyOf } from '../../../functions/local/documents-api.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

describe('Idempotency-Key header values', () => {
  const printable = fc.string({ unit: fc.constantFrom(...Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i))), minLength: 1, maxLength: IDEMPOTENCY_KEY_MAX });
  const quote = (key: string): string => `"${key.replace(/[\\"]/g, (c) => `\\${c}`)}"`;

  it('reads every printable key from its Structured Field string form (RFC 8941), escapes and all', () => {
    fc.assert(
      fc.property(printable, (key) => {
        expect(idempotencyKeyOf(quote(key))).toEqual({ key });
      }),
    );
  });

  it('reads a bare key as the same key as its quoted form', () => {
    const bare = fc.string({ unit: fc.constantFrom(...'abcXYZ019-_.:/+=@~!#$%&()*;<>?[]^`{|}'.split('')), minLength: 1, maxLength: 64 });
    fc.assert(
      fc.property(bare, (key) => {
        expect(idempotencyKeyOf(key)).toEqual({ key });
        expect(idempotencyKeyOf(quote(key))).toEqual({ key });
      }),
    );
  });

  it.each([
    { value: '', reason: /must be a quoted string/ },
    { value: '""', reason: /must not be empty/ },
    { value: '"abc', reason: /no closing quote/ },
    { value: '"a", "b"', reason: /more after its closing quote/ },
    { value: 'a, a', reason: /must be a quoted string/ }, // two headers joined by the server
    { value: 'a,b', reason: /must be a quoted string/ },
    { value: 'a b', reason: /must be a quoted string/ },
    { value: '"a\\b"', reason: /backslash that escapes neither/ },
    { value: '"caf\u00e9"', reason: /outside printable ASCII/ },
    { value: 'caf\u00e9', reason: /must be a quoted string/ },
    { value: '"tab\there"', reason: /outside printable ASCII/ },
    { value: 'x'.repeat(IDEMPOTENCY_KEY_MAX + 1), reason: new RegExp(`${IDEMPOTENCY_KEY_MAX + 1} characters long, more than ${IDEMPOTENCY_KEY_MAX}`) },
  ])('refuses $value, saying why', ({ value, reason }) => {
    const r = idempotencyKeyOf(value);
    expect('reason' in r && r.reason).toMatch(reason);
  });

  it('gives each owner its own key ids: the same key of two owners names two records', () => {
    const a = '3f2c1d9e-8a7b-4c6d-9e0f-112233445566';
    const b = '3f2c1d9e-8a7b-4c6d-9e0f-112233445567';
    expect(idempotencyKeyId(a, 'k')).not.toBe(idempotencyKeyId(b, 'k'));
    expect(idempotencyKeyId(a, 'k')).toBe(idempotencyKeyId(a, 'k'));
    expect(idempotencyKeyId(a, 'k')).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});

describe('POST /api/v1/documents with an Idempotency-Key, against real PostgreSQL', () => {
  let api: DocumentsApi;
  beforeAll(async () => {
    api = await startDocumentsApi(() => undefined, { relays: true, deadlineMs: 1000 });
  });
  afterEach(() => {
    for (const relay of api.relays.values()) relay.heal();
  });
  afterAll(async () => {
    await api?.stop();
  });

  const newUser = async (): Promise<{ id: string; shardId: string }> => {
    const r = await api.request('POST', '/api/v1/users', { email: `${randomUUID()}@example.org`, display_name: 'Keyed' });
    expect(r.status).toBe(201);
    return { id: String(r.body.id), shardId: String(r.body.shard_id) };
  };
  /** The owner's documents on every shard's primary, read directly (not through the relays). */
  const documentsOf = async (owner: string): Promise<{ id: string; title: string; shard: string }[]> => {
    const found: { id: string; title: string; shard: string }[] = [];
    for (const shard of ['shard_001', 'shard_002']) {
      const direct = new pg.Pool({ connectionString: api.server.urlFor(shard), max: 1 });
      try {
        const { rows } = await direct.query<{ id: string; title: string }>('select id, title from documents where owner_id = $1 order by id', [owner]);
        found.push(...rows.map((r) => ({ ...r, shard })));
      } finally {
        await direct.end();
      }
    }
    return found;
  };
  /** The owner's key records on every shard's primary, read directly. */
  const keysOf = async (owner: string): Promise<{ id: string; document_id: string; shard: string }[]> => {
    const found: { id: string; document_id: string; shard: string }[] = [];
    for (const shard of ['shard_001', 'shard_002']) {
      const direct = new pg.Pool({ connectionString: api.server.urlFor(shard), max: 1 });
      try {
        const { rows } = await direct.query<{ id: string; document_id: string }>('select id, document_id from document_keys where owner_id = $1 order by id', [owner]);
        found.push(...rows.map((r) => ({ ...r, shard })));
      } finally {
        await direct.end();
      }
    }
    return found;
  };
  const post = (body: unknown, key?: string) => api.request('POST', '/api/v1/documents', body, key === undefined ? {} : { 'idempotency-key': key });

  it('answers a retry with the document the first attempt created (201, Idempotent-Replayed), and stores one', async () => {
    const owner = await newUser();
    const body = { owner_id: owner.id, title: 'once', content: { a: 1, b: [true, null] } };
    const first = await post(body, '"order-7"');
    // The same key bare, the owner in another spelling and the content's members in another
    // order: the same request.
    const again = await post({ ...body, owner_id: `{${owner.id.toUpperCase()}}`, content: { b: [true, null], a: 1 } }, 'order-7');

    expect({ status: first.status, replayed: first.headers.get('idempotent-replayed') }).toEqual({ status: 201, replayed: null });
    expect({ status: again.status, replayed: again.headers.get('idempotent-replayed'), location: again.headers.get('location') }).toEqual({
      status: 201,
      replayed: 'true',
      location: first.headers.get('location'),
    });
    expect(again.body).toEqual(first.body);
    expect(again.headers.get('x-read-token')).toMatch(/^shard_00[12]@/);
    expect(await documentsOf(owner.id)).toEqual([{ id: first.body.id, title: 'once', shard: owner.shardId }]);
  });

  it('refuses the same key with another title or content (422 naming the header) and changes nothing', async () => {
    const owner = await newUser();
    const first = await post({ owner_id: owner.id, title: 'first', content: { v: 1 } }, 'k-1');
    const otherTitle = await post({ owner_id: owner.id, title: 'second', content: { v: 1 } }, 'k-1');
    const otherContent = await post({ owner_id: owner.id, title: 'first', content: { v: 2 } }, 'k-1');

    expect(first.status).toBe(201);
    for (const r of [otherTitle, otherContent]) {
      expect({ status: r.status, invalid: r.body.invalid_params }).toEqual({
        status: 422,
        invalid: [{ name: 'header.idempotency-key', reason: expect.stringMatching(/^was used for another document of this owner/) as unknown as string }],
      });
    }
    expect(await documentsOf(owner.id)).toEqual([{ id: first.body.id, title: 'first', shard: owner.shardId }]);
  });

  it('keeps keys apart per owner, and creates a new document for every POST without a key', async () => {
    const a = await newUser();
    const b = await newUser();
    const ra = await post({ owner_id: a.id, title: 'shared key' }, 'same');
    const rb = await post({ owner_id: b.id, title: 'shared key' }, 'same');
    const plain1 = await post({ owner_id: a.id, title: 'no key' });
    const plain2 = await post({ owner_id: a.id, title: 'no key' });

    expect([ra.status, rb.status, plain1.status, plain2.status]).toEqual([201, 201, 201, 201]);
    expect(ra.body.id).not.toBe(rb.body.id);
    expect(rb.headers.get('idempotent-replayed')).toBeNull();
    expect((await documentsOf(a.id)).length).toBe(3);
    expect((await documentsOf(b.id)).length).toBe(1);
  });

  it('answers a retry whose document was handed to another owner with 409 naming the header, not a 422 blaming the body, and changes nothing', async () => {
    const owner = await newUser();
    let heir = await newUser();
    for (let i = 0; heir.shardId !== owner.shardId && i < 50; i += 1) heir = await newUser();
    const body = { owner_id: owner.id, title: 'handed over' };
    const first = await post(body, 'handed');
    // The application hands the document to another user of the same shard (docs/sharding-spec.md).
    await api.primary(owner.shardId).query('update documents set owner_id = $2, slot = (select slot from users where id = $2) where id = $1', [first.body.id, heir.id]);
    const retried = await post(body, 'handed');

    expect({ status: retried.status, invalid: retried.body.invalid_params }).toEqual({
      status: 409,
      invalid: [{ name: 'header.idempotency-key', reason: expect.stringMatching(/^its document now belongs to another owner/) as unknown as string }],
    });
    expect(JSON.stringify(retried.body)).not.toContain(heir.id);
    expect(await documentsOf(owner.id)).toEqual([]);
    expect(await documentsOf(heir.id)).toEqual([{ id: first.body.id, title: 'handed over', shard: owner.shardId }]);
  });

  it('does not create the document again when a late retry comes after the application deleted it (409 naming the header)', async () => {
    const owner = await newUser();
    const body = { owner_id: owner.id, title: 'deleted later', content: { v: 1 } };
    const first = await post(body, 'deleted-key');
    await api.primary(owner.shardId).query('delete from documents where id = $1', [first.body.id]);
    const late = await post(body, 'deleted-key');

    expect(first.status).toBe(201);
    expect({ status: late.status, invalid: late.body.invalid_params }).toEqual({
      status: 409,
      invalid: [{ name: 'header.idempotency-key', reason: expect.stringMatching(/^its document was deleted\b.*use a new key/) as unknown as string }],
    });
    expect(await documentsOf(owner.id)).toEqual([]);
  });

  it('replays a retry after the application edited the document: the retry is compared with the request, not with the document as it is now', async () => {
    const owner = await newUser();
    const body = { owner_id: owner.id, title: 'as sent', content: { v: 1 } };
    const first = await post(body, 'edited-key');
    await api.primary(owner.shardId).query(`update documents set title = 'edited', content = '{"v": 2}' where id = $1`, [first.body.id]);
    const retried = await post(body, 'edited-key');
    const misused = await post({ ...body, title: 'another' }, 'edited-key');

    expect({ status: retried.status, replayed: retried.headers.get('idempotent-replayed'), id: retried.body.id, title: retried.body.title }).toEqual({
      status: 201,
      replayed: 'true',
      id: first.body.id,
      title: 'edited',
    });
    expect({ status: misused.status, names: misused.body.invalid_params?.map((p: { name: string }) => p.name) }).toEqual({ status: 422, names: ['header.idempotency-key'] });
    expect(await documentsOf(owner.id)).toEqual([{ id: first.body.id, title: 'edited', shard: owner.shardId }]);
  });

  it(`treats a key past its retention (${IDEMPOTENCY_KEY_RETENTION_MS / 3_600_000} h) as new, and prunes the owner's expired keys on its writes`, async () => {
    const owner = await newUser();
    const old = await post({ owner_id: owner.id, title: 'a day ago' }, 'reused');
    const stale = await post({ owner_id: owner.id, title: 'stale' }, 'never-retried');
    const backdate = `update document_keys set created_at = now() - make_interval(secs => $2::double precision + 60) where id = $1`;
    for (const k of ['reused', 'never-retried']) await api.primary(owner.shardId).query(backdate, [idempotencyKeyId(owner.id, k), IDEMPOTENCY_KEY_RETENTION_MS / 1000]);
    const reused = await post({ owner_id: owner.id, title: 'today' }, 'reused');
    const retried = await post({ owner_id: owner.id, title: 'today' }, 'reused');

    expect([old.status, stale.status]).toEqual([201, 201]);
    expect({ status: reused.status, replayed: reused.headers.get('idempotent-replayed') }).toEqual({ status: 201, replayed: null });
    expect(reused.body.id).not.toBe(old.body.id);
    expect({ status: retried.status, replayed: retried.headers.get('idempotent-replayed'), id: retried.body.id }).toEqual({ status: 201, replayed: 'true', id: reused.body.id });
    expect((await documentsOf(owner.id)).map((d) => d.title).sort()).toEqual(['a day ago', 'stale', 'today']);
    expect(await keysOf(owner.id)).toEqual([{ id: idempotencyKeyId(owner.id, 'reused'), document_id: reused.body.id, shard: owner.shardId }]);
  });

  /**
   * A keyed document written before key records existed (before shard migration 021): its id is
   * the key's id, and no record of the key exists. Inserted as that release's API did.
   */
  const legacyDocument = async (owner: { id: string; shardId: string }, key: string, title: string, content: string, ageSeconds = 60): Promise<string> => {
    const id = idempotencyKeyId(owner.id, key);
    await api
      .primary(owner.shardId)
      .query(
        `insert into documents (id, owner_id, slot, title, content, created_at, updated_at)
         select $1, u.id, u.slot, $3, $4::jsonb, now() - make_interval(secs => $5), now() - make_interval(secs => $5) from users u where u.id = $2`,
        [id, owner.id, title, content, ageSeconds],
      );
    return id;
  };

  it('answers a retry of a keyed document written before key records existed with that document, and remembers the key from then on', async () => {
    const owner = await newUser();
    const id = await legacyDocument(owner, 'legacy-key', 'from the last release', '{"v": 1, "w": [1.5]}');
    const retried = await post({ owner_id: owner.id, title: 'from the last release', content: { w: [1.5], v: 1 } }, 'legacy-key');
    await api.primary(owner.shardId).query('delete from documents where id = $1', [id]);
    const afterDelete = await post({ owner_id: owner.id, title: 'from the last release', content: { w: [1.5], v: 1 } }, 'legacy-key');

    expect({ status: retried.status, replayed: retried.headers.get('idempotent-replayed'), id: retried.body.id }).toEqual({ status: 201, replayed: 'true', id });
    // Adopted: the key now has its record, so a retry after the document is deleted does not create it again.
    expect(afterDelete.status).toBe(409);
    expect(await documentsOf(owner.id)).toEqual([]);
    expect(await keysOf(owner.id)).toEqual([{ id, document_id: id, shard: owner.shardId }]);
  });

  it('refuses a retry with another body of a keyed document written before key records existed (422), and creates nothing', async () => {
    const owner = await newUser();
    const id = await legacyDocument(owner, 'legacy-other', 'legacy', '{"v": 1}');
    const other = await post({ owner_id: owner.id, title: 'legacy', content: { v: 2 } }, 'legacy-other');
    const same = await post({ owner_id: owner.id, title: 'legacy', content: { v: 1 } }, 'legacy-other');

    expect({ status: other.status, names: other.body.invalid_params?.map((p: { name: string }) => p.name) }).toEqual({ status: 422, names: ['header.idempotency-key'] });
    expect({ status: same.status, replayed: same.headers.get('idempotent-replayed'), id: same.body.id }).toEqual({ status: 201, replayed: 'true', id });
    expect(await documentsOf(owner.id)).toEqual([{ id, title: 'legacy', shard: owner.shardId }]);
  });

  it('treats the key of a keyed document written before key records existed, past the retention, as a new key', async () => {
    const owner = await newUser();
    const id = await legacyDocument(owner, 'legacy-old', 'two days ago', '{}', (2 * IDEMPOTENCY_KEY_RETENTION_MS) / 1000);
    const reused = await post({ owner_id: owner.id, title: 'today' }, 'legacy-old');

    expect({ status: reused.status, replayed: reused.headers.get('idempotent-replayed') }).toEqual({ status: 201, replayed: null });
    expect(reused.body.id).not.toBe(id);
    expect((await documentsOf(owner.id)).map((d) => d.title).sort()).toEqual(['today', 'two days ago']);
  });

  it('answers a retry whose key names a keyed document written before key records, nested 1,000 levels deep with 1.0 in it (another writer stored it), instead of a 503 that no retry cures', async () => {
    const owner = await newUser();
    // Deeper than this API accepts (32 levels), as a writer without that limit stored it; its
    // digest is computed on every claim of the key (shard migration 023: no stack depth error).
    const id = await legacyDocument(owner, 'legacy-deep', 'deep', `{"a": ${'['.repeat(1000)}1.0${']'.repeat(1000)}}`);
    const retried = await post({ owner_id: owner.id, title: 'deep', content: { a: [1] } }, 'legacy-deep');

    expect({ status: retried.status, names: retried.body.invalid_params?.map((p: { name: string }) => p.name) }).toEqual({ status: 422, names: ['header.idempotency-key'] });
    expect(await documentsOf(owner.id)).toEqual([{ id, title: 'deep', shard: owner.shardId }]);
    expect(await keysOf(owner.id)).toEqual([{ id, document_id: id, shard: owner.shardId }]);
  });

  it('compares numbers by value (RFC 8259): 1.50 and 1.5, 1e2 and 100 are the same request, whoever wrote the first', async () => {
    const owner = await newUser();
    // The first request as the Python backend writes it (docs/sharding-spec.md section 10): the
    // content's text as received, so jsonb keeps each number's scale (1.50, 0.10).
    const keyId = idempotencyKeyId(owner.id, 'numbers');
    const documentId = randomUUID();
    const shard = api.primary(owner.shardId);
    await shard.query(
      `with u as (select id, slot from users where id = $2),
            d as (insert into documents (id, owner_id, slot, title, content) select $3, u.id, u.slot, 't', $4::jsonb from u)
       insert into document_keys (id, owner_id, slot, document_id, request_digest)
       select $1, u.id, u.slot, $3, idempotency_request_digest($5, $4::jsonb) from u`,
      [keyId, owner.id, documentId, '{"n": 1.50, "m": [100, 0.10]}', 't'],
    );
    const legacy = await legacyDocument(owner, 'legacy-numbers', 't', '{"n": 2.0}');
    const retried = await post(`{"owner_id": "${owner.id}", "title": "t", "content": {"m": [1e2, 0.1], "n": 1.5}}`, 'numbers');
    const legacyRetried = await post(`{"owner_id": "${owner.id}", "title": "t", "content": {"n": 2}}`, 'legacy-numbers');
    const other = await post(`{"owner_id": "${owner.id}", "title": "t", "content": {"m": [100, 0.1], "n": 1.51}}`, 'numbers');

    expect({ status: retried.status, replayed: retried.headers.get('idempotent-replayed'), id: retried.body.id }).toEqual({ status: 201, replayed: 'true', id: documentId });
    expect({ status: legacyRetried.status, replayed: legacyRetried.headers.get('idempotent-replayed'), id: legacyRetried.body.id }).toEqual({ status: 201, replayed: 'true', id: legacy });
    expect(other.status).toBe(422);
    expect((await documentsOf(owner.id)).length).toBe(2);
  });

  it('creates one document when many attempts with one key race each other', async () => {
    const owner = await newUser();
    const answers = await Promise.all(Array.from({ length: 12 }, () => post({ owner_id: owner.id, title: 'raced' }, 'race')));

    expect(answers.map((r) => r.status)).toEqual(Array.from({ length: 12 }, () => 201));
    expect(new Set(answers.map((r) => r.body.id)).size).toBe(1);
    expect(answers.filter((r) => r.headers.get('idempotent-replayed') === null)).toHaveLength(1);
    expect(await documentsOf(owner.id)).toHaveLength(1);
  });

  it('refuses a malformed key with a 400 naming the header, before writing anything', async () => {
    const owner = await newUser();
    for (const key of ['a, b', '"unterminated', 'x'.repeat(IDEMPOTENCY_KEY_MAX + 1)]) {
      const r = await post({ owner_id: owner.id, title: 'bad key' }, key);
      expect({ status: r.status, names: r.body.invalid_params?.map((p: { name: string }) => p.name), detail: r.body.detail }).toMatchObject({
        status: 400,
        names: ['header.idempotency-key'],
        detail: expect.not.stringContaining('x'.repeat(40)) as unknown as string, // the value is not echoed
      });
    }
    expect(await documentsOf(owner.id)).toEqual([]);
  });

  it('lets a write whose commit went unanswered (504) be sent again with its key: one document', async () => {
    const owner = await newUser();
    const body = { owner_id: owner.id, title: 'committed, unconfirmed' };
    const relay = api.relays.get(owner.shardId);
    if (!relay) throw new Error(`no relay for ${owner.shardId}`);
    relay.blackholeAfter('commit\u0000');
    const lost = await Promise.race([post(body, 'retry-me'), delay(8000).then(() => undefined)]);
    relay.heal();
    const retried = await post(body, 'retry-me');

    expect({ status: lost?.status, type: lost?.body.type, detail: lost?.body.detail }).toMatchObject({
      status: 504,
      type: 'https://ca-dms-scaling.dev/problems/outcome-unknown',
      detail: expect.stringMatching(/Send it again with the same Idempotency-Key/) as unknown as string,
    });
    expect({ status: retried.status, replayed: retried.headers.get('idempotent-replayed') }).toEqual({ status: 201, replayed: 'true' });
    expect(await documentsOf(owner.id)).toEqual([{ id: retried.body.id, title: body.title, shard: owner.shardId }]);
  }, 30_000);

  it("finds the first attempt's document on the owner's new shard after a move", async () => {
    const owner = await newUser();
    const body = { owner_id: owner.id, title: 'before the move' };
    const first = await post(body, 'moved-key');
    const gone = await post({ owner_id: owner.id, title: 'deleted before the move' }, 'deleted-key');
    await api.primary(owner.shardId).query('delete from documents where id = $1', [gone.body.id]);
    const slot = (await api.primary(owner.shardId).query<{ slot: number }>('select slot from users where id = $1', [owner.id])).rows[0]?.slot;
    if (slot === undefined) throw new Error('the owner has no row');
    const to = owner.shardId === 'shard_001' ? 'shard_002' : 'shard_001';
    const mover = api.sharding.mover;
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    const retried = await post(body, 'moved-key');
    const lateRetry = await post({ owner_id: owner.id, title: 'deleted before the move' }, 'deleted-key');

    expect({ status: retried.status, id: retried.body.id, shard: retried.body.shard_id, replayed: retried.headers.get('idempotent-replayed') }).toEqual({
      status: 201,
      id: first.body.id,
      shard: to,
      replayed: 'true',
    });
    // The key records moved with their owner: the deleted document's key still refuses to create it again.
    expect(lateRetry.status).toBe(409);
    expect(await documentsOf(owner.id)).toEqual([{ id: first.body.id, title: body.title, shard: to }]);
    expect((await keysOf(owner.id)).map((r) => [r.id, r.shard]).sort()).toEqual(
      [
        [idempotencyKeyId(owner.id, 'deleted-key'), to],
        [idempotencyKeyId(owner.id, 'moved-key'), to],
      ].sort(),
    );
  }, 60_000);

  it('adopts on the owner\'s new shard a keyed document written before key records existed, after a move of the owner: the move took it along, no second document', async () => {
    const owner = await newUser();
    const body = { owner_id: owner.id, title: 'from the last release, then moved', content: { v: 1 } };
    const id = await legacyDocument(owner, 'legacy-moved', body.title, '{"v": 1}');
    const slot = (await api.primary(owner.shardId).query<{ slot: number }>('select slot from users where id = $1', [owner.id])).rows[0]?.slot;
    if (slot === undefined) throw new Error('the owner has no row');
    const to = owner.shardId === 'shard_001' ? 'shard_002' : 'shard_001';
    const mover = api.sharding.mover;
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    const retried = await post(body, 'legacy-moved');
    const other = await post({ ...body, content: { v: 2 } }, 'legacy-moved');

    expect({ status: retried.status, id: retried.body.id, shard: retried.body.shard_id, replayed: retried.headers.get('idempotent-replayed') }).toEqual({
      status: 201,
      id,
      shard: to,
      replayed: 'true',
    });
    expect(other.status).toBe(422);
    expect(await documentsOf(owner.id)).toEqual([{ id, title: body.title, shard: to }]);
    expect(await keysOf(owner.id)).toEqual([{ id, document_id: id, shard: to }]);
  }, 60_000);

  it('never creates a second document nor refuses a retry when keyed attempts come at every step of a move', async () => {
    const owner = await newUser();
    const slot = (await api.primary(owner.shardId).query<{ slot: number }>('select slot from users where id = $1', [owner.id])).rows[0]?.slot;
    if (slot === undefined) throw new Error('the owner has no row');
    const to = owner.shardId === 'shard_001' ? 'shard_002' : 'shard_001';
    const body = (key: string) => ({ owner_id: owner.id, title: `made at ${key}`, content: { n: 1.5, key } });
    const keys = ['before'];
    /** Keys whose first attempt's commit went unanswered (504): their document may or may not exist yet. */
    const unconfirmed: string[] = [];
    const first = await post(body('before'), 'before');
    expect(first.status).toBe(201);
    /** Per step: the status of a new key's first attempt, and of a retry of every earlier key. */
    const seen: Record<string, number[]> = {};
    const pending: Promise<void>[] = [];
    const FENCE_HELD = ['fenced', 'verifying', 'published'];
    const atStep = async (point: string): Promise<void> => {
      const attempts = async (): Promise<void> => {
        const earlier = [...keys];
        const [fresh, ...retries] = await Promise.all([post(body(point), point), ...earlier.map((k) => post(body(k), k))]);
        if (fresh?.status === 201) keys.push(point);
        if (fresh?.status === 504) unconfirmed.push(point);
        seen[point] = [fresh?.status ?? 0, ...retries.map((r) => r.status)];
      };
      // While the fence is held the attempts wait for it (the mover must not wait for them).
      if (FENCE_HELD.includes(point)) pending.push(attempts());
      else await attempts();
    };
    const catalog = new pg.Pool({ connectionString: api.server.urlFor('catalog'), max: 2 });
    try {
      const mover = new Mover({ catalog, shards: api.sharding.primaries, slotMaps: api.sharding.slotMaps, directory: api.sharding.directory, actor: 'test', hook: atStep });
      expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');
    } finally {
      await catalog.end();
    }
    await Promise.all(pending);
    const after = await Promise.all(keys.map((k) => post(body(k), k)));
    // Retried with its key, an unconfirmed attempt creates its one document, or answers the one it made.
    const settled = await Promise.all(unconfirmed.map((k) => post(body(k), k)));

    expect(Object.keys(seen).sort()).toEqual(['catching_up', 'cleaned', 'cleaning_up', 'copied', 'copying', 'cutover', 'fenced', 'published', 'verifying']);
    // An attempt that meets the fence waits for it, or passes its 1 s deadline: a 503 saying nothing
    // was written, or (on a loaded machine, its commit sent just before the deadline) a 504 saying
    // the outcome is unknown. Either way its retry is answered with one document (checked below).
    // A retry of a key that another step's retry (waiting on the fence too) is replaying at the same
    // time waits on that one's lock of the key record (the claim's ON CONFLICT locks it) and, still
    // waiting at its deadline (a loaded machine), is the 409 naming a request of the key in flight,
    // nothing written: so since h164 under a login without a lock_timeout (the 503 before; h167).
    for (const [point, statuses] of Object.entries(seen)) {
      expect({ point, statuses }).toEqual({ point, statuses: statuses.map(() => (FENCE_HELD.includes(point) ? expect.toBeOneOf([201, 409, 503, 504]) : 201)) });
    }
    expect(after.map((r) => [r.status, r.headers.get('idempotent-replayed'), r.body.shard_id])).toEqual(keys.map(() => [201, 'true', to]));
    expect(settled.map((r) => [r.status, r.body.shard_id])).toEqual(unconfirmed.map(() => [201, to]));
    const stored = await documentsOf(owner.id);
    const records = await keysOf(owner.id);
    expect(records.map((r) => r.id).sort()).toEqual([...keys, ...unconfirmed].map((k) => idempotencyKeyId(owner.id, k)).sort());
    expect(stored.map((d) => d.id).sort()).toEqual(records.map((r) => r.document_id).sort());
    expect(new Set(stored.map((d) => d.shard))).toEqual(new Set([to]));
    expect(new Set(records.map((r) => r.shard))).toEqual(new Set([to]));
  }, 60_000);

  it('documents the header in the OpenAPI document', async () => {
    const doc = (await api.request('GET', '/api/v1/openapi.json')).body;
    const params = doc.paths['/api/v1/documents'].post.parameters as { name: string; in: string; required: boolean }[];
    expect(params).toContainEqual(expect.objectContaining({ name: 'idempotency-key', in: 'header', required: false }));
  });
});
