/**
 * A small CA-DMS-like documents API served by local mode beside the scaling API, so the sharding
 * layer carries real traffic (and the load test has something to load):
 *
 * - `GET  /api/v1/users?limit=N[&cursor=C]`       a page of users of every shard, oldest first; `next_cursor` leads on
 * - `POST /api/v1/users`                          `{email, display_name}` -> 201 (409 when the e-mail is taken)
 * - `GET  /api/v1/users/{id}`                     one user
 * - `GET  /api/v1/users/{id}/documents?limit=N`   a user's documents (routed by the user id)
 * - `POST /api/v1/documents`                      `{owner_id, title, content?}` -> 201 (`Idempotency-Key` makes a retry safe)
 * - `GET  /api/v1/documents/{id}[?owner=UUID]`    one document (asks every shard without `owner`)
 * - `GET  /api/v1/openapi.json`                   this API's OpenAPI document, from the same zod schemas
 *
 * Writes go through `withShardWrite` on the owner's shard; reads of one owner's rows go through
 * `withShardRead`, which checks the unit's fence in the read's snapshot (a read never lands on
 * a shard the owner has moved away from), the others through the replica reader. A write
 * answers with `X-Read-Token: <shard_id>@<lsn>;tl=<timeline>;v=<map version>`; a read sent with
 * that value in `X-Read-After` sees the write (read-your-writes), whichever replica serves it,
 * across a move or a failover; a write a failover lost (acknowledged by the old primary, never
 * received by the replica promoted since) answers 410 `write-lost` rather than 404 or a list
 * without it. `?consistency=primary` reads on the primaries only (the `check`
 * of a write whose outcome is unknown asks for it: a lagging replica's 404 would have the client
 * write twice). Every input is
 * validated with zod; errors are RFC 9457 problem documents naming the field. Bodies are held
 * to the limits of `functions/api/input-limits.ts` (no NUL, well-formed Unicode, 32 levels of
 * nesting), to UTF-8, to numbers a double holds exactly, and to 256 KiB; no database text ever
 * reaches a client (it is logged instead).
 *
 * @example
 * ```ts
 * const route = createDocumentsRoute({ writer, reader, reads, shardIds: ['shard_001', 'shard_002'] });
 * await startLocalServer({ handler, port: 3000, extraRoutes: [route] });
 * ```
 */
import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { uuidForm } from '../core/sharding/keys.js';
import type { ExtraRoute } from '../adapters/http/local-server.js';
import { ReadCancelledError, type ReadOptions, type ReplicaReader } from '../adapters/postgres/replica-reader.js';
import { DeadlinePassedError, SessionTimeoutError } from '../adapters/postgres/deadline.js';
import { ShardWriteError, type ShardWriteContext, type ShardWriteResult, type ShardWriter } from '../adapters/postgres/write-transaction.js';
import { NOT_OWNED_STATES_SQL, readOptionsFor, rowFenceStateSql, ShardReadError, type ShardReader } from '../adapters/postgres/read-transaction.js';
import { formatReadToken, parseReadToken, READ_TOKEN_EXAMPLE, ReadTokenError, type ReadToken } from '../core/sharding/read-token.js';
import { lostBeforeMove, type MovesLookup } from '../core/sharding/lost-before-move.js';
import { lostWriteMessage, type LostWrite } from '../core/sharding/timeline-history.js';
import { duplicateProblems, inexactProblems, jsonProblems, listedProblems, MAX_JSON_DEPTH, zodProblems } from '../api/input-limits.js';
import { DuplicateMemberError, parseJsonText } from '../core/json-text.js';
import { parametersOf, toSchema } from '../api/openapi.js';
import { RoutingError } from '../core/sharding/errors.js';

export interface DocumentsApiDeps {
  readonly writer: ShardWriter;
  /** `primaryTimeline` and `primaryClusterId` (when given) send token reads to the primary after a failover or a blue/green switchover, as `withShardRead` does. */
  readonly reader: Pick<ReplicaReader, 'query'> & Partial<Pick<ReplicaReader, 'primaryTimeline' | 'primaryClusterId' | 'maxLagSeconds'>>;
  /** Reads of one owner's rows (fence-checked, read-your-writes). */
  readonly reads: ShardReader;
  readonly shardIds: readonly string[];
  /**
   * The last move of a key's unit off a shard (adapters/postgres/move-lookup.ts): a read with a
   * token of another shard than the one read, that finds nothing or lists, asks it whether a
   * failover of the token's shard lost the write before the unit moved (410). Absent: such a
   * token is not checked (the read answers 404 or the list).
   */
  readonly moves?: MovesLookup;
  /** Where unexpected errors go, with their database text (clients never see it). Default: one JSON line on stderr. */
  readonly onError?: (error: unknown, request: { method: string; path: string }) => void;
  /**
   * How long a request's database work may take, from when its input is read (default
   * {@link DEFAULT_REQUEST_DEADLINE_MS}). Held on the client too, so a shard that stops answering
   * costs a request this and a moment, not for ever.
   */
  readonly deadlineMs?: number;
}

/**
 * The default request deadline: longer than a move's fence (2 s by default, which a write
 * meeting it waits out), well under a client's patience.
 */
export const DEFAULT_REQUEST_DEADLINE_MS = 5000;

const PREFIX = '/api/v1';
const MAX_BODY = 256 * 1024;

// Every spelling of a UUID (any case, braces, urn:uuid:) becomes the canonical form the router
// hashes: the same user must never be looked up on one shard and stored on another.
const uuid = z
  .string()
  .meta({ format: 'uuid' })
  .transform((text, ctx) => {
    const id = uuidForm(text);
    if (id === undefined) ctx.addIssue({ code: 'custom', message: 'must be a UUID, e.g. 3f2c1d9e-8a7b-4c6d-9e0f-112233445566' });
    return id ?? z.NEVER;
  });
const limit = z.string().regex(/^\d+$/, 'must be a whole number').transform(Number).pipe(z.number().int().min(1).max(200)).optional();
const readAfterSchema = z
  .string()
  .transform((text, ctx): ReadToken => {
    try {
      return parseReadToken(text);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: error instanceof ReadTokenError ? `must be a token from X-Read-Token: ${error.message}` : `must be a token from X-Read-Token, e.g. ${READ_TOKEN_EXAMPLE}` });
      return z.NEVER;
    }
  })
  .optional();

const newUserSchema = z.strictObject({
  email: z.email({ message: 'must be an e-mail address' }).max(320),
  display_name: z.string().min(1).max(200),
});
const newDocumentSchema = z.strictObject({
  owner_id: uuid,
  title: z.string().min(1).max(500),
  // A document's content is an object of fields; other JSON values are refused rather than wrapped.
  // The object is kept as parsed: a schema that rebuilt it (z.record, z.looseObject) would assign
  // a member named __proto__, which sets the copy's prototype and drops the member unseen.
  content: z
    .custom<Record<string, unknown>>((value) => typeof value === 'object' && value !== null && !Array.isArray(value), { error: 'must be a JSON object, e.g. {"body": "text"}' })
    .meta({ type: 'object', additionalProperties: {} })
    .default({}),
});

/**
 * Where a read of one user's or one document's rows may be served: `bounded` (the default) by a
 * replica within max_replica_lag_seconds, or the primary; `primary` by the shard primary only,
 * so that "not found" is an answer about what is committed (the `check` of a 504 asks for it). A
 * primary that cannot be reached is then a 503, never an answer from a replica.
 */
const CONSISTENCIES = ['bounded', 'primary'] as const;
const consistency = z
  .enum(CONSISTENCIES, { error: `must be one of ${CONSISTENCIES.join(', ')}` })
  .optional()
  .describe("`primary`: read on the shard primary only (a miss is then authoritative; 503 when the primary cannot be reached). Default `bounded`: a replica within the freshness bound may answer");
/** Where a page of the users listing ends: the last user's `created_at` (to the microsecond) and id. */
interface UsersPosition {
  readonly createdAt: string;
  readonly id: string;
}
const USERS_CURSOR = /^u1:(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z),([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;
const usersCursorOf = (p: UsersPosition): string => Buffer.from(`u1:${p.createdAt},${p.id}`, 'utf8').toString('base64url');
const usersCursor = z
  .string()
  .max(200)
  .transform((text, ctx): UsersPosition => {
    const m = /^[A-Za-z0-9_-]+$/.test(text) ? USERS_CURSOR.exec(Buffer.from(text, 'base64url').toString('utf8')) : null;
    if (m === null) {
      ctx.addIssue({ code: 'custom', message: "must be a next_cursor of an earlier page of this listing, as it was handed out" });
      return z.NEVER;
    }
    return { createdAt: m[1] as string, id: m[2] as string };
  });
const usersQuery = z.strictObject({
  limit: limit.describe('users to list, 1 to 200 (default 20): a page holds that many when that many are left'),
  cursor: usersCursor.optional().describe("the previous page's next_cursor: the page after it"),
});
const userQuery = z.strictObject({ consistency });
const documentsQuery = z.strictObject({ limit: limit.describe('documents to list, newest first, 1 to 200 (default 50)'), consistency });
const documentQuery = z.strictObject({ owner: uuid.optional().describe("the document's owner: only the owner's shard is asked (every shard without it)"), consistency });
const userIdParams = z.strictObject({ id: uuid.describe('the user id (a UUID, in any of the forms of docs/sharding-spec.md)') });
const documentIdParams = z.strictObject({ id: uuid.describe('the document id (a UUID)') });
const readAfterHeaders = z.object({ 'x-read-after': readAfterSchema.describe('a token from X-Read-Token: the read sees that write') });

/** The longest `Idempotency-Key` accepted, in characters. */
export const IDEMPOTENCY_KEY_MAX = 255;

/**
 * How long an `Idempotency-Key` is remembered, from its first use (its row's `created_at`, on
 * the owner's shard's clock): 24 hours, past any client's retries. An expired key is a new key
 * (its record is replaced); expired records are pruned by their owner's next keyed writes
 * ({@link IDEMPOTENCY_KEY_PRUNE_BATCH} at a time) and go with the owner.
 */
export const IDEMPOTENCY_KEY_RETENTION_MS = 24 * 60 * 60 * 1000;

/** At most this many of an owner's expired key records are deleted by each of the owner's keyed writes. */
export const IDEMPOTENCY_KEY_PRUNE_BATCH = 16;
const IDEMPOTENCY_KEY_FORM = `a quoted string ("...", with \\" and \\\\ escaped) or printable characters without spaces, quotes or commas, 1 to ${IDEMPOTENCY_KEY_MAX} of them, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324"`;

/**
 * The key of an `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header): a
 * Structured Field string (RFC 8941: `"..."`, printable ASCII, `\"` and `\\` escaped) or, as many
 * clients send it, the bare key. A comma or a space outside quotes is refused: it is what two
 * headers joined into one look like, and one request has one key.
 */
export function idempotencyKeyOf(text: string): { readonly key: string } | { readonly reason: string } {
  const value = text.trim();
  let key: string;
  if (value.startsWith('"')) {
    let out = '';
    let i = 1;
    for (; i < value.length; i += 1) {
      const c = value.charCodeAt(i);
      if (c === 0x22) break;
      if (c < 0x20 || c > 0x7e) return { reason: `has a character outside printable ASCII at ${i}; must be ${IDEMPOTENCY_KEY_FORM}` };
      if (c === 0x5c) {
        const next = value[i + 1];
        if (next !== '"' && next !== '\\') return { reason: `has a backslash that escapes neither " nor \\ at ${i}; must be ${IDEMPOTENCY_KEY_FORM}` };
        out += next;
        i += 1;
      } else out += value[i];
    }
    if (i >= value.length) return { reason: `has no closing quote; must be ${IDEMPOTENCY_KEY_FORM}` };
    if (i !== value.length - 1) return { reason: `has more after its closing quote (one request has one key); must be ${IDEMPOTENCY_KEY_FORM}` };
    key = out;
  } else {
    if (!/^[\x21-\x7e]*$/.test(value) || /["\\,]/.test(value)) return { reason: `must be ${IDEMPOTENCY_KEY_FORM}` };
    key = value;
  }
  if (key.length === 0) return { reason: `must not be empty; must be ${IDEMPOTENCY_KEY_FORM}` };
  if (key.length > IDEMPOTENCY_KEY_MAX) return { reason: `is ${key.length} characters long, more than ${IDEMPOTENCY_KEY_MAX}` };
  return { key };
}

const idempotencyKey = z
  .string()
  .transform((text, ctx) => {
    const r = idempotencyKeyOf(text);
    if ('reason' in r) {
      ctx.addIssue({ code: 'custom', message: r.reason });
      return z.NEVER;
    }
    return r.key;
  })
  .optional();
const createDocumentHeaders = z.object({
  'idempotency-key': idempotencyKey.describe(
    `makes the POST safe to send again: a retry with the same key and the same body answers the document the first attempt created, as it is now (201, \`Idempotent-Replayed: true\`) instead of creating a second; the same key with another body (title and content, compared with the first request's, not with the document) is a 422; a 409 once the document was deleted or belongs to another owner, or while an earlier request with the key is still being written and this one cannot wait for it within its deadline (one wait ended by the deadline, or each ended by the shard login's own lock_timeout); a 503 naming body.owner_id while the owner's row is held by a deletion not committed yet, a 422 once it is. Keys belong to the owner and are remembered for ${IDEMPOTENCY_KEY_RETENTION_MS / 3_600_000} hours from their first use, whatever becomes of the document; an expired key is a new key. ${IDEMPOTENCY_KEY_FORM}`,
  ),
});

type JsonSchema = Record<string, unknown>;
const jsonSchema = (schema: z.ZodType): JsonSchema => toSchema(schema, 'input');

/**
 * The documents API's OpenAPI 3.0 document, built from the schemas the handlers validate with
 * (served at `GET /api/v1/openapi.json`; the fuzz tests generate their requests from it).
 */
export function documentsApiDocument(): JsonSchema {
  const problem = { description: 'an RFC 9457 problem document', content: { 'application/problem+json': { schema: { type: 'object' } } } };
  // What a request past its deadline answers (see `unexpected`): the client must tell a retry from a look.
  const unavailable = (write: boolean) => ({
    description: write
      ? "the shard did not answer within the request's deadline (or is being moved, or cancelled the write at another session's request or by a statement_timeout or lock_timeout of its own, shorter than the deadline): nothing was written; retry after Retry-After seconds"
      : "the shard did not answer within the request's deadline (or is being moved, or cancelled the read at another session's request or by a statement_timeout or lock_timeout of its own, shorter than the deadline, or, for a `consistency=primary` read, its primary cannot be reached); retry after Retry-After seconds",
    headers: { 'Retry-After': { description: 'seconds to wait before retrying', schema: { type: 'integer', minimum: 0 } } },
    content: problem.content,
  });
  const outcomeUnknown = {
    description: `the write's commit was sent but not confirmed (no answer by the request's deadline, or the connection failed): it may have been committed. Not to be retried blindly: look for it at \`check\` first (problem type ${OUTCOME_UNKNOWN_TYPE})`,
    content: {
      'application/problem+json': {
        schema: { type: 'object', properties: { type: { type: 'string', enum: [OUTCOME_UNKNOWN_TYPE] }, check: { type: 'string', description: 'where to GET what the write may have created: a read on the shard primary (`consistency=primary`), whose 404 means it was not committed' } }, required: ['type', 'check'] },
      },
    },
  };
  const writeLostResponse = {
    description: `the X-Read-After token names a write the shard acknowledged and then lost in a failover (the replica promoted since had not received it): not a 404, the write existed (problem type ${WRITE_LOST_TYPE}; members shard_id, lsn, timeline, fork_lsn, current_timeline). Send the write again if it is still wanted`,
    content: {
      'application/problem+json': {
        schema: {
          type: 'object',
          properties: {
            type: { type: 'string', enum: [WRITE_LOST_TYPE] },
            shard_id: { type: 'string' },
            lsn: { type: 'string', description: "the token's WAL position" },
            timeline: { type: 'integer', description: "the token's timeline" },
            fork_lsn: { type: 'string', description: "where the token's timeline ends in the primary's timeline's past (for a token of the primary's own timeline number that another server issued, where the primary's WAL on it ends)" },
            current_timeline: { type: 'integer' },
          },
          required: ['type', 'shard_id', 'lsn', 'timeline', 'fork_lsn', 'current_timeline'],
        },
      },
    },
  };
  const op = (operationId: string, summary: string, parts: { params?: z.ZodType; query?: z.ZodType; headers?: z.ZodType; body?: z.ZodType }, ok: number): JsonSchema => ({
    operationId,
    summary,
    parameters: [
      ...parametersOf(parts.params, 'path'),
      ...parametersOf(parts.query, 'query'),
      ...parametersOf(parts.headers, 'header'),
    ],
    ...(parts.body ? { requestBody: { required: true, content: { 'application/json': { schema: jsonSchema(parts.body) } } } } : {}),
    responses: {
      [ok]: { description: ok === 201 ? 'created, with X-Read-Token and Location' : 'found' },
      ...(parts.headers === readAfterHeaders ? { 410: writeLostResponse } : {}),
      503: unavailable(parts.body !== undefined),
      ...(parts.body ? { 504: outcomeUnknown } : {}),
      default: problem,
    },
  });
  return {
    openapi: '3.0.3',
    info: { title: 'CA-DMS documents API (local mode)', version: '1.0.0' },
    paths: {
      [`${PREFIX}/users`]: {
        get: op('listUsers', 'A page of the users of every shard, oldest first (by created_at, then id); next_cursor (null on the last page) leads to the next', { query: usersQuery }, 200),
        post: op('createUser', 'Create a user (409 when the e-mail is taken)', { body: newUserSchema }, 201),
      },
      [`${PREFIX}/users/{id}`]: { get: op('getUser', 'One user', { params: userIdParams, query: userQuery, headers: readAfterHeaders }, 200) },
      [`${PREFIX}/users/{id}/documents`]: { get: op('listUserDocuments', "A user's documents", { params: userIdParams, query: documentsQuery, headers: readAfterHeaders }, 200) },
      [`${PREFIX}/documents`]: { post: op('createDocument', 'Create a document on its owner\'s shard', { headers: createDocumentHeaders, body: newDocumentSchema }, 201) },
      [`${PREFIX}/documents/{id}`]: { get: op('getDocument', 'One document', { params: documentIdParams, query: documentQuery, headers: readAfterHeaders }, 200) },
    },
  };
}

/**
 * A user's id is derived from the e-mail address (UUID version 5 of its lower-case form), so
 * two sign-ups with one address route to one shard and meet on the primary key there: the
 * duplicate is refused atomically, with no cross-shard lookup to race.
 */
export function userIdForEmail(email: string): string {
  return uuidV5(Buffer.from('6ba7b8119dad11d180b400c04fd430c8', 'hex'), email.toLowerCase()); // RFC 9562 name-space for URLs and mail
}

/**
 * The name-space of the ids of `Idempotency-Key` records (a fixed UUID of this API's own): the
 * same owner and key give the same id on every server, before and after a move.
 */
const DOCUMENT_KEY_NAMESPACE = Buffer.from('2b8c7e0a5f3d4b6e9a1c0d2e4f6a8b0c', 'hex');

/**
 * The id of an owner's `Idempotency-Key` record in `document_keys` (shard migration 021): UUID
 * version 5 of `<owner>:<key>` (the owner in its canonical 36-character form, so the name is
 * unambiguous; docs/sharding-spec.md section 10). Every attempt with the key computes the same
 * id and meets the first attempt's record on the primary key of the owner's shard, so two
 * attempts never both create a document. The document itself gets a random id: the key's record,
 * not the document, remembers the key (a deleted document is not created again, and a key used
 * again after it expired creates a new document without meeting the old one's id).
 *
 * @example
 * ```ts
 * idempotencyKeyId('3f2c1d9e-8a7b-4c6d-9e0f-112233445566', 'order-7'); // the same on every server
 * ```
 */
export function idempotencyKeyId(ownerId: string, key: string): string {
  return uuidV5(DOCUMENT_KEY_NAMESPACE, `${ownerId}:${key}`);
}

/**
 * The request digest a key record keeps (SQL, of the SQL expressions `title` and `content`):
 * the shard's `idempotency_request_digest(title, content)` (shard migration 022), sha-256 of the
 * UTF-8 jsonb text of `{"title": title, "content": content}` with numbers by value (1.50 as 1.5).
 * Computed by PostgreSQL, so every writer (in any language) canonicalises alike: jsonb orders
 * members and keeps one of each, the function trims each number's scale.
 */
const requestDigestSql = (title: string, content: string): string => `idempotency_request_digest(${title}::text, ${content}::jsonb)`;

/**
 * Claims an owner's key for this request: a new record, or an expired one renewed in place (an
 * expired key is a new key). Answers the record's `document_id` when this attempt claimed it,
 * none when a live record holds the key (another attempt's, committed; one in flight is waited
 * for by the primary key). `$1` key id, `$2` owner, `$3` slot, `$4` the new document's id, `$5`
 * title, `$6` content, `$7` the retention in seconds.
 *
 * A keyed document written before key records existed (before shard migration 021) has the
 * key's id as its own, and no record: one look at that id on the primary key (`legacy`) adopts
 * it, within the retention from its `created_at`, as the key's document, with the digest of what
 * it holds (the comparison of that release, with the document as it is now). The record then
 * answers `document_id` = the key id, not `$4`: the caller creates nothing and answers as for a
 * live record. Whatever its owner now: one handed over is answered 409, as before.
 */
const CLAIM_KEY_SQL = `with legacy as (
    select d.id, d.created_at, ${requestDigestSql('d.title', 'd.content')} as request_digest from documents d
     where d.id = $1::uuid and d.created_at > pg_catalog.now() - pg_catalog.make_interval(secs => $7::double precision))
  insert into document_keys as k (id, owner_id, slot, document_id, request_digest, created_at)
  select $1::uuid, $2::uuid, $3::integer, coalesce(l.id, $4::uuid), coalesce(l.request_digest, ${requestDigestSql('$5', '$6')}), coalesce(l.created_at, pg_catalog.now())
    from (values (1)) as one (n) left join legacy l on true
  on conflict (id) do update set document_id = excluded.document_id, request_digest = excluded.request_digest, created_at = excluded.created_at
    where k.created_at <= pg_catalog.now() - pg_catalog.make_interval(secs => $7::double precision)
  returning k.document_id`;

/** A live record of the key, and whether its request was this one (`$1` key id, `$2` title, `$3` content). */
const KEY_RECORD_SQL = `select k.document_id, k.request_digest = ${requestDigestSql('$2', '$3')} as same from document_keys k where k.id = $1`;

/**
 * Deletes a few of an owner's expired key records (`$1` owner, `$2` retention in seconds, `$3`
 * how many): only the owner's, whose unit this write holds, so the fence never refuses it.
 * Only records still expired as deleted, and none another transaction holds (`skip locked`): a
 * record expired in this statement's snapshot may be being claimed again by another request of
 * its key (CLAIM_KEY_SQL's update: a new document, `created_at` now). Until h159 the prune chose
 * records by its snapshot and deleted them by id alone: it waited for that claim and, once it
 * committed, deleted the live record all the same (READ COMMITTED re-checks the new row version
 * against the DELETE's own condition, which was `id = any(...)` alone), and a retry of that
 * request created a second document (keyed-retry-role-lock-timeout.test.ts). Skipped, a held
 * record is pruned by a later write: a prune is the owner's housekeeping, never worth a wait (under
 * a login's short lock_timeout the wait failed the write, a different key's). Run last in the write,
 * just before its commit (h164): the records it deletes are held only from there to the commit.
 */
const PRUNE_KEYS_SQL = `delete from document_keys d where d.id = any(array(
  select k.id from document_keys k where k.owner_id = $1 and k.created_at <= pg_catalog.now() - pg_catalog.make_interval(secs => $2::double precision)
   order by k.created_at limit $3 for update skip locked))
  and d.owner_id = $1 and d.created_at <= pg_catalog.now() - pg_catalog.make_interval(secs => $2::double precision)`;

/** RFC 9562 UUID version 5 (SHA-1) of `name` (UTF-8) in `namespace`. */
function uuidV5(namespace: Buffer, name: string): string {
  const hash = createHash('sha1').update(namespace).update(name, 'utf8').digest();
  hash[6] = ((hash[6] as number) & 0x0f) | 0x50;
  hash[8] = ((hash[8] as number) & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

interface Problem {
  readonly status: number;
  readonly detail: string;
  readonly invalid?: ReadonlyArray<{ name: string; reason: string }>;
  /** A problem type URI (`about:blank`, the status alone, otherwise) and its title. */
  readonly type?: { readonly uri: string; readonly title: string };
  /** Where the client can look for what the request may have created (extension member `check`). */
  readonly check?: string;
  /** Further extension members (RFC 9457, 3.2), after the standard ones. */
  readonly extensions?: Readonly<Record<string, string | number>>;
  readonly headers?: Readonly<Record<string, string>>;
}

/** The problem type of a write that may or may not have been committed. */
export const OUTCOME_UNKNOWN_TYPE = 'https://ca-dms-scaling.dev/problems/outcome-unknown';

/** The problem type of a read whose `X-Read-After` token names a write a failover lost (410). */
export const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';

/**
 * A write whose commit was sent but not confirmed, by the deadline or before its connection
 * failed ({@link ShardWriteError} `outcome-unknown`): `check` is where the client looks before it sends the write again.
 */
class WriteOutcomeUnknownError extends Error {
  override readonly name = 'WriteOutcomeUnknownError';
  constructor(
    readonly check: string,
    /** The write carried an `Idempotency-Key`: sending it again with the key is safe. */
    readonly keyed: boolean,
    cause: ShardWriteError,
  ) {
    super(cause.message, { cause });
  }
}

class HttpProblem extends Error {
  override readonly name = 'HttpProblem';
  constructor(readonly problem: Problem) {
    super(problem.detail);
  }
}

const TITLES: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  404: 'Not Found',
  410: 'Gone',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/**
 * A read whose token names a write the shard's primary does not hold, its timeline having taken
 * over from the token's before the token's position (docs/sharding-spec.md, read-your-writes
 * tokens): the write was acknowledged, then lost in a failover. Answered instead of a 404 or a
 * list without it; the members name the shard, the token and the fork point.
 */
function writeLost(lost: LostWrite): HttpProblem {
  return new HttpProblem({
    status: 410,
    type: { uri: WRITE_LOST_TYPE, title: 'Write Lost' },
    detail: lostWriteMessage(lost),
    extensions: { shard_id: lost.shardId, lsn: lost.lsn, timeline: lost.timeline, fork_lsn: lost.forkLsn, current_timeline: lost.currentTimeline },
  });
}

function invalid(part: string, error: z.ZodError): HttpProblem {
  return problemList(zodProblems(part, error));
}

/** A 400 listing the problems (a few of them, names held to a length: see `listedProblems`). */
function problemList(problems: readonly { name: string; reason: string }[]): HttpProblem {
  const { listed, more } = listedProblems(problems);
  return new HttpProblem({ status: 400, detail: `${listed.map((p) => `${p.name}: ${p.reason}`).join('; ')}${more}`, invalid: listed });
}

function parse<T extends z.ZodType>(schema: T, value: unknown, part: string): z.output<T> {
  const r = schema.safeParse(value);
  if (!r.success) throw invalid(part, r.error);
  return r.data;
}

/**
 * Writes a JSON answer with its length: a HEAD is answered by its GET's handler, and Node leaves
 * the body out of a HEAD's answer, so the length said is the one the GET would send (RFC 9110, 8.6).
 */
function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers, 'content-length': String(Buffer.byteLength(text)) });
  res.end(text);
}

function sendProblem(res: ServerResponse, p: Problem): void {
  const text = JSON.stringify({
    type: p.type?.uri ?? 'about:blank',
    title: p.type?.title ?? TITLES[p.status] ?? 'Error',
    status: p.status,
    detail: p.detail,
    ...(p.invalid ? { invalid_params: p.invalid } : {}),
    ...(p.check === undefined ? {} : { check: p.check }),
    ...p.extensions,
  });
  res.writeHead(p.status, { 'content-type': 'application/problem+json', 'cache-control': 'no-store', ...p.headers, 'content-length': String(Buffer.byteLength(text)) });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/json\b/i.test(type)) throw new HttpProblem({ status: 415, detail: 'send the body as application/json' });
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new HttpProblem({ status: 413, detail: `the body is larger than ${MAX_BODY} bytes` });
    chunks.push(chunk as Buffer);
  }
  let text: string;
  try {
    // Fatal: a byte that is not UTF-8 (a Latin-1 body) would otherwise become U+FFFD and be stored so.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Buffer.concat(chunks));
  } catch {
    throw new HttpProblem({ status: 400, detail: 'the body is not valid UTF-8; send JSON text encoded as UTF-8 (RFC 8259)' });
  }
  // Kept (ignoreBOM) and refused by name: JSON.parse would blame an invisible "unexpected token".
  if (text.charCodeAt(0) === 0xfeff) throw new HttpProblem({ status: 400, detail: 'the body starts with a byte order mark (U+FEFF); send the JSON text without one (RFC 8259, section 8.1)' });
  let parsed: unknown;
  try {
    parsed = parseJsonText(text);
  } catch (error) {
    if (error instanceof DuplicateMemberError) {
      throw problemList(duplicateProblems(error, 'body'));
    }
    throw new HttpProblem({ status: 400, detail: `the body is not valid JSON: ${(error as Error).message}` });
  }
  const hostile = jsonProblems(parsed, 'body', MAX_JSON_DEPTH);
  if (hostile.length > 0) throw problemList(hostile);
  // A number JSON.parse rounds would be stored as another number than the one sent.
  const inexact = inexactProblems(text, 'body');
  if (inexact.length > 0) throw problemList(inexact);
  return parsed;
}

/**
 * The rows a keyed write waits on that another transaction holds: a `document_keys` record
 * (another request of the owner's key in flight, uncommitted: a retry of the same key meeting the
 * first attempt's record on the primary key, "while inserting index tuple (0,1) in relation
 * "document_keys"", pg's innermost context, whose tuple id and relation name stay as they are in
 * every lc_messages language; or a prune of an expired record the other holds), or the owner's
 * `users` row, which the write takes first ("while locking tuple (0,1) in relation "users""): a
 * deletion of the user, not committed yet.
 */
type HeldRelation = 'document_keys' | 'users';

/** The relation pg's error (its innermost context) names a tuple of, among {@link HeldRelation}'s. */
function heldRelationOf(pgError: unknown): HeldRelation | undefined {
  const where = (pgError as { where?: unknown } | null)?.where;
  const innermost = typeof where === 'string' ? (where.split('\n', 1)[0] ?? '') : '';
  if (!/\(\d+,\d+\)/.test(innermost)) return undefined;
  if (innermost.includes('"document_keys"')) return 'document_keys';
  if (innermost.includes('"users"')) return 'users';
  return undefined;
}

/**
 * The row a keyed write was waiting on when the session's own `lock_timeout` (a role's setting,
 * shorter than the request's deadline) ended the wait; undefined for any other failure.
 */
function rowWaitEndedByLogin(error: unknown): HeldRelation | undefined {
  if (!(error instanceof ShardWriteError) || error.reason !== 'cancelled') return undefined;
  const timeout = error.cause;
  if (!(timeout instanceof SessionTimeoutError) || timeout.setting !== 'lock_timeout') return undefined;
  return heldRelationOf(timeout.cause);
}

/**
 * The row a keyed write was still waiting on when it ended at the request's deadline (nothing
 * committed): PostgreSQL's lock_timeout of the time left, the statement_timeout beside it or the
 * deadline's cancel request ended that wait, pg's error its cause, its innermost context naming
 * the relation as {@link heldRelationOf} reads it. Not a shard that answered nothing by the
 * deadline and its grace (the cause a `DeadlinePassedError`, the connection dropped): that is the
 * shard's, a 503. The wait may be the request's only one (a login without a lock_timeout of its
 * own, the default: until h164 answered as the deadline's 503 "the shard did not answer"), or the
 * last of attempts sent again after the login's own lock_timeout ended the others, with less
 * time left than that setting (300 ms, say, under a 1 s deadline: until h159 that 503 too), where
 * a login at 1 ms got the 409 naming the request in flight (keyed-retry-role-lock-timeout.test.ts).
 */
function rowWaitEndedByDeadline(error: unknown): HeldRelation | undefined {
  if (!(error instanceof ShardWriteError) || error.reason !== 'deadline-exceeded') return undefined;
  return heldRelationOf(error.cause);
}

/**
 * Whether a write's attempt was refused by PostgreSQL's deadlock detection (SQLSTATE 40P01, pg's
 * error itself or the cause of the writer's error): the attempt's transaction was rolled back,
 * nothing of it committed (an error a COMMIT reports is a rollback too).
 */
function deadlockRefused(error: unknown): boolean {
  const codeOf = (e: unknown): unknown => (e as { code?: unknown } | null)?.code;
  return codeOf(error) === '40P01' || (error instanceof ShardWriteError && error.reason !== 'outcome-unknown' && codeOf(error.cause) === '40P01');
}

/** How much of the request's deadline a keyed write's retry keeps past its back-off to be sent again (see createDocument). */
const KEY_RECORD_WAIT_MARGIN_MS = 25;

/** A request's deadline: an instant, and what is left of it as a `deadlineMs`. */
interface Deadline {
  readonly at: number;
  left(): number;
}

/** The request's deadline passed on its way to the database, or there: nothing was written. */
function passedDeadline(error: unknown): boolean {
  if (error instanceof ShardWriteError || error instanceof ShardReadError) return error.reason === 'deadline-exceeded';
  // A read on every shard, through the replica reader: its node fell silent, or its statement was
  // cancelled at the deadline (both DeadlinePassedError). A session's or role's own
  // statement_timeout or lock_timeout, shorter than the deadline, is not this: the reader says so
  // (SessionTimeoutError, answered below as a cancel before the deadline). A raw 57014 is one
  // the reader could not tell (a server whose lc_messages is not English, before the deadline):
  // answered as the deadline's, as it always was.
  return error instanceof DeadlinePassedError || (error as { code?: unknown }).code === '57014';
}

/**
 * A problem for an error no handler expected: the client learns what kind of failure it was,
 * never the database's words (those go to `onError`). `kind`: whether the request writes (only a
 * write's answer says whether something was written).
 */
function unexpected(error: unknown, deadlineMs: number, kind: 'read' | 'write'): Problem {
  // Not "retry": a second attempt could write twice. 504: the database behind the API did not answer in time.
  if (error instanceof WriteOutcomeUnknownError) {
    return {
      status: 504,
      type: { uri: OUTCOME_UNKNOWN_TYPE, title: 'Write Outcome Unknown' },
      detail: error.keyed
        ? `the shard did not confirm the write after its commit was sent (no answer within the request's ${deadlineMs} ms deadline, or its connection failed): it may have been committed. Send it again with the same Idempotency-Key (a retry answers what the first attempt created), or look for it (GET ${error.check})`
        : `the shard did not confirm the write after its commit was sent (no answer within the request's ${deadlineMs} ms deadline, or its connection failed): it may have been committed. Look for it (GET ${error.check}) before sending it again`,
      check: error.check,
    };
  }
  if (passedDeadline(error)) {
    const detail =
      kind === 'write'
        ? `the shard did not answer within the request's ${deadlineMs} ms deadline; nothing was written; retry`
        : `the shard did not answer the read within the request's ${deadlineMs} ms deadline; retry`;
    return { status: 503, detail, headers: { 'retry-after': '1' } };
  }
  // Cancelled on the server before the deadline, not by it: by someone else (an operator's
  // pg_cancel_backend), or by the session's own statement_timeout or lock_timeout (a role's
  // default, shorter than the deadline: SessionTimeoutError, which onError logs naming the
  // setting; before h147 a role's lock_timeout was answered as any unexpected failure). Nothing was
  // committed, or read. The same 503 and Retry-After as a deadline's: only the detail, which said
  // the deadline passed when it had not, differs.
  if (error instanceof ShardWriteError && error.reason === 'cancelled') return { status: 503, detail: 'the shard cancelled the write before its deadline; nothing was written; retry', headers: { 'retry-after': '1' } };
  if ((error instanceof ShardReadError && error.reason === 'cancelled') || error instanceof ReadCancelledError || error instanceof SessionTimeoutError) {
    return { status: 503, detail: 'the shard cancelled the read before its deadline; retry', headers: { 'retry-after': '1' } };
  }
  if (error instanceof RoutingError) return { status: 400, detail: error.message };
  if (error instanceof URIError) return { status: 400, detail: 'the path has a malformed percent-escape' };
  // Every 503 says when to retry (the OpenAPI document promises Retry-After on it).
  if (error instanceof ShardWriteError && error.reason === 'fence-timeout') return { status: 503, detail: 'the data is being moved to another shard right now; retry in a few seconds', headers: { 'retry-after': '2' } };
  if (error instanceof ShardReadError && error.reason !== 'deadline-exceeded') return { status: 503, detail: 'the data is being moved to another shard right now; retry in a few seconds', headers: { 'retry-after': '2' } };
  const code = (error as { code?: unknown }).code;
  // Class 22 is "data exception": a value the database refused (input checks should have caught it).
  if (typeof code === 'string' && code.startsWith('22')) return { status: 400, detail: 'a value in the request cannot be stored' };
  return { status: 503, detail: 'the shard could not serve the request right now; retry', headers: { 'retry-after': '1' } };
}

interface DocumentRow {
  id: string;
  owner_id: string;
  title: string;
  content: Record<string, unknown>;
  created_at: Date;
  updated_at: Date;
}
interface UserRow {
  id: string;
  email: string;
  display_name: string;
  created_at: Date;
}

const DOC_COLUMNS = 'id, owner_id, title, content, created_at, updated_at';

/**
 * Reads that ask every shard (a listing, a document looked up without its owner) cannot route
 * by key, so each shard answers only for rows of units it owns, judged by the fence rows in the
 * statement's own snapshot (the rule of withShardRead and of the write trigger): a unit being
 * copied in (`incoming`) or already handed over (`moved`, rows not yet cleaned up, or a replica
 * not yet past the clean-up) is left out. Each row also says whether its unit is `fenced`, for
 * `oneCopyEach`.
 */
const USER_STATE = rowFenceStateSql('u.id', 'u.slot');
/**
 * A shard's owned users after a position, oldest first (`$1` how many, `$2` created_at, `$3` id),
 * each with its position (`created_at` to the microsecond, UTC: the cursor's, and the order of the
 * merge) and its unit's state. `extra` narrows the rows further (`and ...`).
 */
const usersPageSql = (extra: string): string => `select u.id, u.email, u.display_name,
    to_char(u.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position, ${USER_STATE} as unit_state
  from users u where (u.created_at, u.id) > ($2::timestamptz, $3::uuid) and ${USER_STATE} not in ${NOT_OWNED_STATES_SQL}${extra}
  order by u.created_at, u.id limit $1`;
/**
 * A replica's page and its fence rows, in one statement (one snapshot, one node): which units this
 * node says are in transit (`moved`, `incoming`), and which it owns (`open`, `fenced`). With `$4`
 * (seconds; null: every row) only the rows that can still matter: every `incoming` and `fenced`
 * one (a move under way, or one a dead mover left: few), the others changed within `$4`, and the
 * `open` row of each unit this node captures the changes of (`move_captures`: the source of a move
 * under way, a handful). `moved` and `open` rows accumulate, one per unit ever moved (a listing
 * used to read them all); see {@link settledAfterSeconds} for why older ones can be left out.
 * Not the source's: while a move copies, its target says `incoming` (read however old), and the
 * source's `open` row, unchanged since before the move or since its start, is the only one saying
 * who owns the unit. Left out once older than `$4`, the unit went unresolved, and every page read
 * every shard's primary for as long as the move lasted. Indexes: shard migration 025; the
 * captures join by write_fences' primary key.
 */
const LIST_USERS_SQL = `select (select coalesce(json_agg(p), '[]') from (${usersPageSql('')}) p) as users,
  (select coalesce(json_agg(json_build_array(f.kind, f.unit_id, f.state)), '[]') from (
    select f.kind, f.unit_id, f.state from write_fences f
     where $4::float8 is null or f.state in ('incoming', 'fenced') or f.updated_at >= now() - pg_catalog.make_interval(secs => $4::float8)
    union
    select f.kind, f.unit_id, f.state from move_captures c join write_fences f on f.kind = c.kind and f.unit_id = c.unit_id
     where $4::float8 is not null and f.state = 'open') f) as fences`;
/** Margin on the replicas' lag bound for the clocks of the nodes (each row's time is its primary's) and commits that follow their statement. */
const SETTLE_MARGIN_SECONDS = 60;
/**
 * How long after its last change a `moved` or `open` fence row stops mattering to a listing, for
 * a reader whose replicas serve data at most `maxLagSeconds` old; undefined (read every row) when
 * the reader does not say its bound. The listing needs a `moved` row only while the unit's new
 * owner may not list it yet, i.e. while some replica may not have replayed the opening there. A
 * move inserts the target's `incoming` row before it marks the source `moved`, so once that mark
 * is older than the bound, every replica serving reads shows the target `incoming` (still read,
 * whatever its age: the unit's users are then read on the primaries, as before) or later: `open`
 * (its replica lists them), or gone on to another move (whose rows are newer). A settled unit's
 * primaries agree with its replicas. Leaving an `open` row out can only send its unit to the
 * primaries, which answer exactly.
 */
function settledAfterSeconds(maxLagSeconds: number | undefined): number | null {
  return maxLagSeconds === undefined ? null : maxLagSeconds + SETTLE_MARGIN_SECONDS;
}
/** A primary's page of the users of units in transit (`$4` slots, `$5` directory-placed keys). */
const LIST_USERS_IN_TRANSIT_SQL = usersPageSql(' and (u.slot = any ($4::int[]) or u.id = any ($5::uuid[]))');
const CANONICAL_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DOC_STATE = rowFenceStateSql('d.owner_id', 'd.slot');
// Every copy of the id (one row per shard at most), with its unit's state: a copy of a unit in
// transit (`moved`, `incoming`) is not an answer, but says the document exists.
const DOCUMENT_ANY_OWNER_SQL = `select ${DOC_COLUMNS}, ${DOC_STATE} as unit_state from documents d where id = $1`;
const NOT_OWNED_STATES: ReadonlySet<string> = new Set(['moved', 'incoming']);

/** A row as one shard answered it, and whether its unit is fenced there. */
interface Copy<T> {
  readonly item: T;
  readonly fenced: boolean;
}

/**
 * One copy of each row, in the order first seen. After the filters above, two shards answer for
 * the same row only when one of the nodes asked lags a move: the mover marks the source `moved`
 * before it opens the target, so on primaries an open target means a source left out. A `fenced`
 * copy (a replica of the source that has not replayed the release) may miss writes the target
 * has acknowledged since, so the open copy wins; two open copies (a replica behind a whole move)
 * are resolved by asking the owner through withShardRead (undefined: the row is gone). Between
 * the release's two commits neither shard answers for the unit: a listing then misses it for
 * those milliseconds, and a lookup by id answers 404, rather than serve a stale copy.
 */
async function oneCopyEach<T>(copies: readonly Copy<T>[], idOf: (item: T) => string, resolve: (item: T) => Promise<T | undefined>): Promise<T[]> {
  const byId = new Map<string, Copy<T>[]>();
  for (const c of copies) {
    const id = idOf(c.item);
    const seen = byId.get(id);
    if (seen) seen.push(c);
    else byId.set(id, [c]);
  }
  const picked: (T | undefined)[] = await Promise.all(
    [...byId.values()].map(async (same) => {
      if (same.length === 1) return (same[0] as Copy<T>).item;
      const open = same.filter((c) => !c.fenced);
      if (open.length === 1) return (open[0] as Copy<T>).item;
      return resolve((same[0] as Copy<T>).item);
    }),
  );
  return picked.filter((item): item is T => item !== undefined);
}

/** The methods a known path answers (HEAD wherever GET, as the scaling API), or undefined for an unknown path. */
function allowedMethods(path: string): string | undefined {
  if (path === `${PREFIX}/users` || path === `${PREFIX}/documents`) return path.endsWith('users') ? 'GET, HEAD, POST' : 'POST';
  if (/^\/api\/v1\/users\/[^/]+(\/documents)?$/.test(path) || /^\/api\/v1\/documents\/[^/]+$/.test(path)) return 'GET, HEAD';
  return undefined;
}

/** Builds the route; it answers every path under `/api/v1/users` and `/api/v1/documents`. */
export function createDocumentsRoute(deps: DocumentsApiDeps): ExtraRoute {
  const onError =
    deps.onError ??
    ((error: unknown, request: { method: string; path: string }) => {
      process.stderr.write(`${JSON.stringify({ level: 'error', message: 'documents API request failed', ...request, error: error instanceof Error ? { name: error.name, message: error.message, code: (error as { code?: unknown }).code } : String(error) })}\n`);
    });
  /**
   * How a read of every shard honours an `X-Read-After` token, by the rule of `withShardRead`
   * (`readOptionsFor`): on the shard and timeline the token names, a replica must have replayed
   * its position (and be on that timeline); on another shard (the write was made before a move)
   * or another timeline (a failover since, which this reader may not have probed yet) the
   * position means nothing there, so the read goes to the primary (with the token, on its own
   * shard: the primary tells a write a failover lost from one that never existed).
   */
  const tokenFor = (shardId: string, token: ReadToken | undefined): ReadOptions => readOptionsFor(shardId, token, deps.reader.primaryTimeline?.bind(deps.reader), deps.reader.primaryClusterId?.bind(deps.reader));
  const deadlineMs = deps.deadlineMs ?? DEFAULT_REQUEST_DEADLINE_MS;
  /** The request's deadline, from now: called once its input is read and checked. */
  const startDeadline = (): Deadline => {
    const at = Date.now() + deadlineMs;
    return { at, left: () => at - Date.now() };
  };
  /** A write held to the request's deadline; one that may have been committed names where to look for it (`check`). */
  const write = async <T>(key: string, check: string, fn: (ctx: ShardWriteContext) => Promise<T>, keyed = false, deadline: Deadline = startDeadline()): Promise<ShardWriteResult<T>> => {
    try {
      return await deps.writer.withShardWrite(key, fn, { deadlineMs: deadline.left() });
    } catch (error) {
      if (error instanceof ShardWriteError && error.reason === 'outcome-unknown') throw new WriteOutcomeUnknownError(check, keyed, error);
      throw error;
    }
  };
  /** The token header, refused (400) when it names no configured shard. */
  /**
   * The write of `after`, a token of another shard than `readOn` (the key's unit moved since),
   * lost in a failover of the token's shard before the unit moved off it ({@link lostBeforeMove}).
   * Asked only when a read found nothing or lists: a read that finds its row pays nothing.
   */
  const lostBeforeMoveOf = async (after: ReadToken | undefined, readOn: string, key: string, deadline: Deadline): Promise<LostWrite | undefined> => {
    if (after === undefined || after.shardId === readOn || deps.moves === undefined) return undefined;
    // Held to what is left of the request's deadline, as the read before it: a catalog that does
    // not answer (a lock on move_jobs, a silent node) is a retryable 503, not a request hung past it.
    const lost = lostBeforeMove(after, await deps.moves.lastMoveOff(after.shardId, key, { deadlineMs: deadline.left() }));
    // Copied off the token's shard by an earlier move, before the failover the newest move tells
    // of (sharding migration 015): not lost. Asked only on the way to a 410.
    if (lost === undefined || deps.moves.writeCopiedOff === undefined) return lost;
    return (await deps.moves.writeCopiedOff(after, key, { deadlineMs: deadline.left() })) ? undefined : lost;
  };
  const readAfter = (req: IncomingMessage): ReadToken | undefined => {
    const header = parse(readAfterSchema, req.headers['x-read-after'], 'header.x-read-after');
    if (header !== undefined && !deps.shardIds.includes(header.shardId)) {
      const reason = `names shard ${header.shardId}, which is not one of ${deps.shardIds.join(', ')}`;
      throw new HttpProblem({ status: 400, detail: `header.x-read-after: ${reason}`, invalid: [{ name: 'header.x-read-after', reason }] });
    }
    return header;
  };

  /**
   * A page of users, oldest first (created_at, then id), after `cursor`: the first `n` of every
   * shard's owned users, merged. Each shard is asked for `n + 1` (the page cannot be filled by
   * fewer, whatever the spread across shards; one more says whether there is a next page).
   *
   * Replicas of different shards lag independently: past a move, the source's may say `moved`
   * while the target's has not replayed the copy, or its opening (`incoming`), and neither lists
   * the unit's users. So each replica also says which units it holds in transit and which it owns
   * (its fence rows that can still matter, in the page's snapshot: LIST_USERS_SQL): the users of a unit some replica holds in transit
   * and none owns are read on the primaries, where one shard owns it (but for the milliseconds
   * between a release's two commits), and those copies replace any a replica gave.
   */
  async function listUsers(url: URL, res: ServerResponse): Promise<void> {
    const q = parse(usersQuery, Object.fromEntries(url.searchParams), 'query');
    const deadline = startDeadline();
    const n = q.limit ?? 20;
    const after = q.cursor ?? { createdAt: '-infinity', id: '00000000-0000-0000-0000-000000000000' };
    type PageRow = Omit<UserRow, 'created_at'> & { position: string; unit_state: string };
    type Listed = Omit<UserRow, 'created_at'> & { position: string; shard_id: string };
    const listed = ({ unit_state: _state, ...u }: PageRow, shardId: string): Listed => ({ ...u, shard_id: shardId });
    const parts = await Promise.all(
      deps.shardIds.map(async (shardId) => {
        const r = await deps.reader.query<{ users: PageRow[]; fences: [string, string, string][] }>(shardId, LIST_USERS_SQL, [n + 1, after.createdAt, after.id, settledAfterSeconds(deps.reader.maxLagSeconds)], {
          deadlineAt: deadline.at,
        });
        const page = r.rows[0] ?? { users: [], fences: [] };
        return { copies: page.users.map((u) => ({ item: listed(u, shardId), fenced: u.unit_state === 'fenced' })), fences: page.fences };
      }),
    );
    const owned = new Set<string>();
    const inTransit = new Map<string, { kind: string; unit: string }>();
    for (const { fences } of parts) {
      for (const [kind, unit, state] of fences) {
        if (NOT_OWNED_STATES.has(state)) inTransit.set(`${kind}:${unit}`, { kind, unit });
        else owned.add(`${kind}:${unit}`);
      }
    }
    const unresolved = [...inTransit.entries()].filter(([key]) => !owned.has(key)).map(([, u]) => u);
    const fromReplicas = await oneCopyEach(
      parts.flatMap((p) => p.copies),
      (u) => u.id,
      async (u) => {
        const r = await deps.reads.withShardRead(
          u.id,
          async ({ client }) => (await client.query<Omit<UserRow, 'created_at'> & { position: string }>(`select id, email, display_name, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position from users where id = $1`, [u.id])).rows[0],
          { deadlineMs: deadline.left() },
        );
        return r.value ? { ...r.value, shard_id: r.shardId } : undefined;
      },
    );
    let fromPrimaries: Listed[] = [];
    if (unresolved.length > 0) {
      const slots = unresolved.filter((u) => u.kind === 'slot').map((u) => Number(u.unit));
      const keys = unresolved.filter((u) => u.kind === 'directory' && CANONICAL_UUID.test(u.unit)).map((u) => u.unit);
      const pages = await Promise.all(
        deps.shardIds.map(async (shardId) => {
          const r = await deps.reader.query<PageRow>(shardId, LIST_USERS_IN_TRANSIT_SQL, [n + 1, after.createdAt, after.id, slots, keys], { primary: true, deadlineAt: deadline.at });
          return r.rows.map((u) => listed(u, shardId));
        }),
      );
      fromPrimaries = pages.flat();
    }
    const onPrimaries = new Set(fromPrimaries.map((u) => u.id));
    const merged = [...fromReplicas.filter((u) => !onPrimaries.has(u.id)), ...fromPrimaries].sort((a, b) =>
      a.position === b.position ? (a.id < b.id ? -1 : a.id > b.id ? 1 : 0) : a.position < b.position ? -1 : 1,
    );
    const items = merged.slice(0, n);
    const last = items.at(-1);
    const next = merged.length > n && last !== undefined ? usersCursorOf({ createdAt: last.position, id: last.id }) : null;
    send(res, 200, { items: items.map(({ position, ...u }) => ({ ...u, created_at: new Date(position) })), next_cursor: next });
  }

  async function createUser(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = parse(newUserSchema, await readJson(req), 'body');
    const id = userIdForEmail(body.email);
    const result = await write(id, `${PREFIX}/users/${id}?consistency=primary`, async ({ client, slot }) => {
      const { rows } = await client.query<UserRow>(
        'insert into users (id, slot, email, display_name) values ($1, $2, $3, $4) on conflict (id) do nothing returning id, email, display_name, created_at',
        [id, slot, body.email, body.display_name],
      );
      return rows[0];
    });
    if (!result.value) {
      const reason = `a user with this e-mail address already exists (${PREFIX}/users/${id})`;
      throw new HttpProblem({ status: 409, detail: `body.email: ${reason}`, invalid: [{ name: 'body.email', reason }] });
    }
    send(res, 201, { ...result.value, shard_id: result.shardId }, { 'x-read-token': formatReadToken(result.readToken), location: `${PREFIX}/users/${id}` });
  }

  async function getUser(userId: string, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const id = parse(uuid, userId, 'path.id');
    const q = parse(userQuery, Object.fromEntries(url.searchParams), 'query');
    const after = readAfter(req);
    const deadline = startDeadline();
    const r = await deps.reads.withShardRead(id, async ({ client }) => (await client.query<UserRow>('select id, email, display_name, created_at from users where id = $1', [id])).rows, {
      ...(after ? { token: after } : {}),
      ...(q.consistency === 'primary' ? { primary: true } : {}),
      deadlineMs: deadline.left(),
    });
    if (!r.value[0]) {
      const lost = r.lostWrite ?? (await lostBeforeMoveOf(after, r.shardId, id, deadline));
      throw lost ? writeLost(lost) : new HttpProblem({ status: 404, detail: `no user ${id}` });
    }
    send(res, 200, { ...r.value[0], shard_id: r.shardId, served_by: r.servedBy });
  }

  async function userDocuments(userId: string, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const id = parse(uuid, userId, 'path.id');
    const q = parse(documentsQuery, Object.fromEntries(url.searchParams), 'query');
    const after = readAfter(req);
    const deadline = startDeadline();
    const r = await deps.reads.withShardRead(
      id,
      async ({ client }) => (await client.query<DocumentRow>(`select ${DOC_COLUMNS} from documents where owner_id = $1 order by created_at desc, id limit $2`, [id, q.limit ?? 50])).rows,
      { ...(after ? { token: after } : {}), ...(q.consistency === 'primary' ? { primary: true } : {}), deadlineMs: deadline.left() },
    );
    // Which document the token wrote is not known: the list may lack it, whatever else it holds.
    // A token told lost only by being past the primary's WAL end on its own timeline is not
    // answered here: the primary's own crash restart puts its WAL end behind tokens of writes it
    // holds (LostWrite.pastWalEnd); a list answered 410 for a document it held, and told the
    // client to send it again (timeline-token-crash-restart.test.ts). A miss of one row still is.
    const lost = (r.lostWrite?.pastWalEnd === true ? undefined : r.lostWrite) ?? (await lostBeforeMoveOf(after, r.shardId, id, deadline));
    if (lost) throw writeLost(lost);
    send(res, 200, { owner_id: id, shard_id: r.shardId, served_by: r.servedBy, items: r.value });
  }

  async function createDocument(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = parse(newDocumentSchema, await readJson(req), 'body');
    const key = parse(idempotencyKey, req.headers['idempotency-key'], 'header.idempotency-key');
    const id = randomUUID();
    const location = `${PREFIX}/documents/${id}?owner=${body.owner_id}`;
    const content = JSON.stringify(body.content);
    const retentionSeconds = IDEMPOTENCY_KEY_RETENTION_MS / 1000;
    type Outcome =
      | { readonly kind: 'created'; readonly row: DocumentRow }
      | { readonly kind: 'replayed'; readonly row: DocumentRow | undefined; readonly documentId: string }
      | { readonly kind: 'misused'; readonly documentId: string }
      | { readonly kind: 'released' };
    const deadline = startDeadline();
    const attempt = (): Promise<ShardWriteResult<Outcome | undefined>> => write(
      body.owner_id,
      `${location}&consistency=primary`,
      async ({ client, slot }): Promise<Outcome | undefined> => {
        // The owner's row is taken first (`for key share`, as the documents' and key records'
        // foreign keys take it anyway later in the write), so the owner cannot be deleted under
        // the write and a deletion in flight is waited for here, on the owner, and not on the
        // owner's key records it cascades to: a keyed write that read the owner as present, then
        // waited on its key's record a deletion held, failed its foreign key once the deletion
        // committed (503 "could not serve") or, held past its deadline, answered the 409 naming
        // a request of its key or a prune that did not exist (h164; keyed-retry-role-lock-timeout.test.ts).
        // Once the deletion committed, the row is not there (READ COMMITTED): the 422 "no user".
        // The same order as a deletion's (the user, then its cascade): the two never deadlock. A
        // deletion that deletes the owner's key records itself before the user, in one transaction
        // (children first), does: the write waits on a key record it deleted, it on the owner's row
        // the write holds. PostgreSQL ends it after deadlock_timeout, refusing the one that waited
        // first: the write, sent again then (see deadlockRefused), or the deletion, which fails
        // (h167, docs/sharding-spec.md; until h164 both went through). Delete users by the cascade.
        const owner = await client.query('select 1 from users where id = $1 for key share', [body.owner_id]);
        if (owner.rowCount === 0) return undefined;
        const insertDocument = async (): Promise<Outcome> => {
          const { rows } = await client.query<DocumentRow>(`insert into documents (id, owner_id, slot, title, content) values ($1, $2, $3, $4, $5) returning ${DOC_COLUMNS}`, [
            id,
            body.owner_id,
            slot,
            body.title,
            content,
          ]);
          return { kind: 'created', row: rows[0] as DocumentRow };
        };
        if (key === undefined) return insertDocument();
        const keyId = idempotencyKeyId(body.owner_id, key);
        const claim = async (): Promise<Outcome> => {
          // In the same transaction as the document: the record exists exactly when the document was
          // created (or, for a document of the key written before key records, adopted: see CLAIM_KEY_SQL).
          const claimed = await client.query<{ document_id: string }>(CLAIM_KEY_SQL, [keyId, body.owner_id, slot, id, body.title, content, retentionSeconds]);
          // Another document id: a document of the key written before key records, adopted.
          if (claimed.rows[0]?.document_id === id) return insertDocument();
          const record = (await client.query<{ document_id: string; same: boolean }>(KEY_RECORD_SQL, [keyId, body.title, content])).rows[0];
          // Claimed by nobody and held by nobody: the record expired and was pruned between the two
          // statements (its owner cannot be deleted meanwhile: its row is held). Nothing was
          // created: the retry claims it afresh.
          if (!record) return { kind: 'released' };
          if (!record.same) return { kind: 'misused', documentId: record.document_id };
          const { rows } = await client.query<DocumentRow>(`select ${DOC_COLUMNS} from documents where id = $1`, [record.document_id]);
          return { kind: 'replayed', row: rows[0], documentId: record.document_id };
        };
        const outcome = await claim();
        // Last, just before the commit: the records it deletes stay locked until the commit, and
        // another request of the owner claiming one of those keys again waits on it that long.
        // Until h164 the prune came first, and the records were held for the whole write (its own
        // claim's wait on a request of its key in flight included): that other request waited
        // as long, up to its deadline (keyed-retry-role-lock-timeout.test.ts). The same
        // statements, in another order: no round trip more.
        await client.query(PRUNE_KEYS_SQL, [body.owner_id, retentionSeconds, IDEMPOTENCY_KEY_PRUNE_BATCH]);
        return outcome;
      },
      key !== undefined,
      deadline,
    );
    // A retry of a request still in flight waits on the primary key for the first attempt's key
    // record, uncommitted, and answers what that attempt made once it commits (or claims the key
    // itself once it rolls back). A shard login whose role sets a short lock_timeout (an
    // operator's limit on every lock wait: 1 ms, say) ended that wait at once, and the retry was
    // a 503 "the shard cancelled the write" where a login without the setting got its 201
    // (keyed-retry-role-lock-timeout.test.ts; h155, issue #15). So the write is sent again, each
    // wait within the login's limit, after a short back-off, as the writer does for a fence row
    // (write-transaction.ts, lockWaitOnFenceRow), until the request's deadline; at it, a 409 naming
    // the attempt in flight (draft-ietf-httpapi-idempotency-key-header: a request whose key is
    // being processed), not a 503 blaming the shard. Nothing was written by any of these attempts.
    let result: ShardWriteResult<Outcome | undefined>;
    // The record waited on may also be an expired one that another request of the owner is
    // deleting (PRUNE_KEYS_SQL, last in that request's transaction, held until its commit): pg's
    // error names a row of document_keys either way (the wait is on the holder's transaction,
    // whatever it does to the row), so the words name both. Until h161 they named a request with
    // this key alone, where none was in flight: the client looked for a request it never sent
    // (keyed-retry-role-lock-timeout.test.ts). `byLogin`: some wait was ended by the login's own
    // lock_timeout (otherwise the one wait was the deadline's).
    const inFlight = (byLogin: boolean): HttpProblem => {
      const reason = `an earlier request with this key is still being written (its key record on the owner's shard is not committed yet), or, the key's record having expired, another request of this owner is deleting it (each keyed write prunes its owner's expired key records) and has not committed; this one could not wait for it within its ${deadlineMs} ms deadline${byLogin ? ", each wait ended by the shard login's own lock_timeout" : ''}; nothing was written by this request: send it again once that request has been answered`;
      return new HttpProblem({ status: 409, detail: `header.idempotency-key: ${reason}`, invalid: [{ name: 'header.idempotency-key', reason }], headers: { 'retry-after': '1' } });
    };
    // The owner's row held (the write takes it first, `for key share`): by a deletion of the user
    // not committed yet, or by another session locking it or changing its key. Not the key's
    // doing, nor the shard's silence: a 503 naming the owner, nothing written; once the deletion
    // commits, the same request answers the 422 "no user".
    const ownerHeld = (): HttpProblem => {
      const reason = `the owner's user row (users ${body.owner_id}) is held by another transaction not committed yet (the user being deleted, or the row locked or its key changed by another session), and this write could not wait for it within its ${deadlineMs} ms deadline; nothing was written by this request: send it again in a moment (once the user is deleted, it answers 422)`;
      return new HttpProblem({ status: 503, detail: `body.owner_id: ${reason}`, invalid: [{ name: 'body.owner_id', reason }], headers: { 'retry-after': '1' } });
    };
    const heldAtDeadline = (on: HeldRelation): HttpProblem => (on === 'users' ? ownerHeld() : inFlight(waitedByLogin));
    /** Whether an attempt of this request had its wait on a held row ended by the login's own lock_timeout (see {@link rowWaitEndedByLogin}). */
    let waitedByLogin = false;
    for (let backoffMs = 2; ; backoffMs = Math.min(backoffMs * 2, 50)) {
      try {
        result = await attempt();
        break;
      } catch (error) {
        // A write without a key takes the owner's row first too (and waits there on a deletion of
        // the user not committed yet, as it waited in its foreign key's check before h164): that
        // wait ended by the deadline is the same 503 naming the owner's row held, not the
        // deadline's "the shard did not answer" it was until h167, blaming a shard that answered
        // every statement (keyed-retry-role-lock-timeout.test.ts). Such a write touches no key
        // record, and is not sent again (a wait its login's own lock_timeout ended is answered as
        // that setting's).
        if (key === undefined) throw rowWaitEndedByDeadline(error) === 'users' ? ownerHeld() : error;
        // An attempt whose wait on a key record or on the owner's row was ended by the deadline
        // (the login without a lock_timeout of its own, or one longer than what was left: the
        // attempt's lock_timeout that time left): the request in flight, the same 409, or the owner
        // held, nothing written ('deadline-exceeded' is never said of a commit that may have been
        // made: that is 'outcome-unknown'). Until h164 this was so only of an attempt sent again
        // after a wait the login's lock_timeout ended: a login without one (the default) waited
        // once, until the deadline, and answered the deadline's 503 "the shard did not answer".
        const ended = rowWaitEndedByDeadline(error);
        if (ended !== undefined) throw heldAtDeadline(ended);
        // A deadlock PostgreSQL ended by refusing this attempt (40P01: its transaction rolled back,
        // nothing written, whatever statement it was): a deletion of the user that deleted the
        // owner's key records before the user, in one transaction, while this attempt (holding the
        // owner's row, taken first) waited on one of them. Sent again, the attempt waits on the
        // owner's row the deletion now holds and answers what is so once it ends (the 422 "no user"
        // after a commit). Until h167 the 503 "the shard could not serve the request right now"
        // (keyed-retry-role-lock-timeout.test.ts). Not once too little is left to meet the row.
        if (deadlockRefused(error)) {
          if (deadline.left() <= backoffMs + KEY_RECORD_WAIT_MARGIN_MS) throw error;
          await new Promise((resolve) => setTimeout(resolve, backoffMs));
          continue;
        }
        const byLogin = rowWaitEndedByLogin(error);
        if (byLogin === undefined) throw error;
        waitedByLogin = true;
        // Not sent again once too little is left for an attempt to meet the row before the
        // deadline does (a timer's lateness on a loaded host included): that attempt would end
        // as the deadline's, telling nothing of the holder unless it ends waiting on the row (above).
        if (deadline.left() <= backoffMs + KEY_RECORD_WAIT_MARGIN_MS) throw heldAtDeadline(byLogin);
        await new Promise((resolve) => setTimeout(resolve, backoffMs));
      }
    }
    if (!result.value) throw new HttpProblem({ status: 422, detail: `body.owner_id: there is no user ${body.owner_id}; create the user first`, invalid: [{ name: 'body.owner_id', reason: 'no such user' }] });
    const outcome = result.value;
    const headers = { 'x-read-token': formatReadToken(result.readToken) };
    if (outcome.kind === 'created') {
      send(res, 201, { ...outcome.row, shard_id: result.shardId }, { ...headers, location });
      return;
    }
    if (outcome.kind === 'released') {
      throw new HttpProblem({ status: 503, detail: 'the key expired while this request used it; nothing was written; send it again', headers: { 'retry-after': '0' } });
    }
    const firstLocation = `${PREFIX}/documents/${outcome.documentId}?owner=${body.owner_id}`;
    if (outcome.kind === 'misused') {
      const reason = `was used for another document of this owner (${firstLocation}), with a different title or content; use a new key for a new document`;
      throw new HttpProblem({ status: 422, detail: `header.idempotency-key: ${reason}`, invalid: [{ name: 'header.idempotency-key', reason }] });
    }
    if (!outcome.row) {
      // The key outlives its document: a late retry must not undo the application's delete.
      const reason = `its document was deleted (or handed to an owner on another shard); use a new key for a new document`;
      throw new HttpProblem({ status: 409, detail: `header.idempotency-key: ${reason}`, invalid: [{ name: 'header.idempotency-key', reason }] });
    }
    if (outcome.row.owner_id !== body.owner_id) {
      // Handed to another user since (docs/sharding-spec.md): not this owner's to answer with, nor a key misused.
      const reason = 'its document now belongs to another owner; use a new key for a new document';
      throw new HttpProblem({ status: 409, detail: `header.idempotency-key: ${reason}`, invalid: [{ name: 'header.idempotency-key', reason }] });
    }
    send(res, 201, { ...outcome.row, shard_id: result.shardId }, { ...headers, location: firstLocation, 'idempotent-replayed': 'true' });
  }

  async function getDocument(docId: string, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const id = parse(uuid, docId, 'path.id');
    const q = parse(documentQuery, Object.fromEntries(url.searchParams), 'query');
    const after = readAfter(req);
    const deadline = startDeadline();
    const onPrimary = q.consistency === 'primary';
    /** Set by any read that found the token's write lost in a failover: a miss then answers 410. */
    let lost: LostWrite | undefined;
    const ownerRead = async (owner: string) =>
      deps.reads
        .withShardRead(owner, async ({ client }) => (await client.query<DocumentRow>(`select ${DOC_COLUMNS} from documents where id = $1`, [id])).rows[0], {
          ...(after ? { token: after } : {}),
          ...(onPrimary ? { primary: true } : {}),
          deadlineMs: deadline.left(),
        })
        .then(async (r) => {
          lost ??= r.lostWrite ?? (r.value ? undefined : await lostBeforeMoveOf(after, r.shardId, owner, deadline));
          return r.value ? { ...r.value, shard_id: r.shardId, served_by: r.servedBy } : undefined;
        });
    // A document lives with its owner; without the owner every shard is asked at once, and only
    // the shard that owns the document's unit answers (see DOCUMENT_ANY_OWNER_SQL).
    const owner = q.owner;
    type Found = DocumentRow & { shard_id: string; served_by: string };
    /** The owned copies, resolved to one; and the owners of copies in units in transit. */
    const everyShard = async (primary: boolean): Promise<{ found: Found[]; inTransit: string[] }> => {
      const rows = await Promise.all(
        deps.shardIds.map(async (shardId) => {
          const r = await deps.reader.query<DocumentRow & { unit_state: string }>(shardId, DOCUMENT_ANY_OWNER_SQL, [id], {
            ...tokenFor(shardId, after),
            ...(primary ? { primary: true } : {}),
            deadlineAt: deadline.at,
          });
          lost ??= r.lostWrite;
          return r.rows.map(({ unit_state, ...d }) => ({ item: { ...d, shard_id: shardId, served_by: r.servedBy }, state: unit_state }));
        }),
      );
      const owned = rows.flat().filter((c) => !NOT_OWNED_STATES.has(c.state));
      const inTransit = rows.flat().filter((c) => NOT_OWNED_STATES.has(c.state)).map((c) => c.item.owner_id);
      const found = await oneCopyEach(owned.map((c) => ({ item: c.item, fenced: c.state === 'fenced' })), (d) => d.id, async (d) => ownerRead(d.owner_id));
      return { found, inTransit };
    };
    let first: { found: Found[]; inTransit: string[] } | undefined;
    let found: (Found | undefined)[];
    if (owner === undefined) {
      first = await everyShard(onPrimary);
      found = first.found;
    } else found = [await ownerRead(owner)];
    // Replicas of different shards lag independently: one of the source, past a move, leaves the
    // row out while one of the target has not replayed the move in yet. A miss is confirmed on
    // the primaries, where a unit is owned by one shard at all times, but for the release's two
    // commits (the source 'moved', the target not yet open): a copy in transit is then read
    // through its owner, which waits for the target to open (or answers a retryable 503), rather
    // than answer 404 for a document that exists.
    if (owner === undefined && found.length === 0) {
      const onPrimaries = onPrimary && first !== undefined ? first : await everyShard(true);
      found = onPrimaries.found;
      // Copies in transit may name different owners (a former owner's copy waiting for its
      // clean-up, the current owner's in a release): each is asked, and a read that could not be
      // served (a retryable 503) outranks another owner's miss.
      let unavailable: { readonly error: unknown } | undefined;
      for (const transitOwner of new Set(onPrimaries.inTransit)) {
        if (found.some((d) => d !== undefined)) break;
        try {
          found = [await ownerRead(transitOwner)];
        } catch (error) {
          unavailable ??= { error };
        }
      }
      if (!found.some((d) => d !== undefined) && unavailable !== undefined) throw unavailable.error;
    }
    const doc = found.find((d) => d !== undefined);
    if (!doc) throw lost ? writeLost(lost) : new HttpProblem({ status: 404, detail: `no document ${id}` });
    if (q.owner !== undefined && doc.owner_id !== q.owner) {
      const reason = `document ${id} belongs to another owner than ${q.owner}`;
      throw new HttpProblem({ status: 409, detail: `query.owner: ${reason}`, invalid: [{ name: 'query.owner', reason }] });
    }
    send(res, 200, doc);
  }

  const openApi = JSON.stringify(documentsApiDocument());
  return async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const path = url.pathname.replace(/\/+$/, '');
    const method = req.method ?? 'GET';
    if (path === `${PREFIX}/openapi.json` && (method === 'GET' || method === 'HEAD')) {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'private, max-age=3600' });
      res.end(method === 'HEAD' ? undefined : openApi);
      return true;
    }
    if (!path.startsWith(`${PREFIX}/users`) && !path.startsWith(`${PREFIX}/documents`)) return false;
    // HEAD is served wherever GET is (RFC 9110, 9.3.2), as the scaling API's router does: the GET's
    // handler answers it, and Node sends its status and headers without the body.
    const as = method === 'HEAD' ? 'GET' : method;
    try {
      let m: RegExpExecArray | null;
      if (path === `${PREFIX}/users` && as === 'GET') await listUsers(url, res);
      else if (path === `${PREFIX}/users` && method === 'POST') await createUser(req, res);
      else if ((m = /^\/api\/v1\/users\/([^/]+)$/.exec(path)) && as === 'GET') await getUser(decodeURIComponent(m[1] ?? ''), url, req, res);
      else if ((m = /^\/api\/v1\/users\/([^/]+)\/documents$/.exec(path)) && as === 'GET') await userDocuments(decodeURIComponent(m[1] ?? ''), url, req, res);
      else if (path === `${PREFIX}/documents` && method === 'POST') await createDocument(req, res);
      else if ((m = /^\/api\/v1\/documents\/([^/]+)$/.exec(path)) && as === 'GET') await getDocument(decodeURIComponent(m[1] ?? ''), url, req, res);
      else {
        const allowed = allowedMethods(path);
        if (allowed) {
          res.setHeader('allow', allowed);
          sendProblem(res, { status: 405, detail: `${method} is not allowed on ${path}; allowed: ${allowed}` });
        } else sendProblem(res, { status: 404, detail: `no route ${method} ${path}; see the README for the documents API` });
      }
    } catch (error) {
      if (error instanceof HttpProblem) sendProblem(res, error.problem);
      else {
        onError(error, { method, path });
        sendProblem(res, unexpected(error, deadlineMs, method === 'POST' ? 'write' : 'read'));
      }
    }
    return true;
  };
}
