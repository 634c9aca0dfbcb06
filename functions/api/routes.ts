/**
 * The scaling API's route table (prefix `/api/v1/scaling`): the CA-DMS guide's endpoints
 * exactly as it names them, the ones its troubleshooting section uses, and a few beyond.
 *
 * @example
 * ```ts
 * const router = createScalingRouter(port);
 * const response = await router.dispatch(request);
 * ```
 */
import { z } from 'zod';
import { ScalingConfigError, parseScalingConfig } from '../core/scaling/config.js';
import { applyMergePatch, missingSettings } from '../core/scaling/config-document.js';
import { ProblemError, type ApiRequest } from './http.js';
import { fenceCursorAfter, fencePage } from './fence-pages.js';
import { buildOpenApi } from './openapi.js';
import { createRouter, defineRoute, type RouteResult, type RouteSpec, type Router, type RouterOptions } from './router.js';
import { noneMatch, Snapshot, SnapshotMap, type SnapshotRead } from './snapshot.js';
import {
  configBodySchema,
  configEnvelopeSchema,
  evaluateBodySchema,
  evaluationSchema,
  FENCE_PAGE_MAX_ROWS,
  fencePageSchema,
  fencesQuerySchema,
  healthReportSchema,
  historyQuerySchema,
  historySchema,
  ifMatchHeadersSchema,
  metricsSchema,
  moveIdParamsSchema,
  directoryPageSchema,
  directoryQuerySchema,
  moveJobSchema,
  moveRequestSchema,
  rebalanceCheckSchema,
  rebalanceQuerySchema,
  recommendationsSchema,
  routeQuerySchema,
  routeResultSchema,
  startStopBodySchema,
  startStopResultSchema,
  statisticsReportSchema,
  statusSchema,
  TIMESERIES_MAX_POINTS,
  TIMESERIES_MAX_WINDOW_SECONDS,
  timeseriesQuerySchema,
  timeseriesSchema,
} from './schemas.js';
import {
  ConflictError,
  NotFoundError,
  StaleVersionError,
  UnavailableError,
  UnknownServiceError,
  type ConfigEnvelope,
  type DirectoryPageView,
  type FenceListingView,
  type FencePageView,
  type HistoryView,
  type RebalanceCheckView,
  type RouteView,
  type ScalingApiPort,
  type TimeseriesView,
} from './service.js';

export const API_PREFIX = '/api/v1/scaling';

const noQuery = z.strictObject({});
const statisticsQuery = z.strictObject({ exact: z.enum(['true', 'false']).optional().describe('exact row counts instead of estimates') });

/** What an `If-Match` header asks for: any current version (`*`), or one of these versions. */
type Precondition = { readonly any: true } | { readonly any: false; readonly versions: readonly number[] };

const MERGE_PATCH = 'application/merge-patch+json';

/**
 * Parses `If-Match` (RFC 9110 section 13.1.1): `*`, or a list of entity tags. It uses the strong
 * comparison, so a weak tag (`W/"v3"`) never matches: 412, saying so. A well-formed tag that is
 * not one of ours (`"abc"`) never matches either; a header that is not a list of tags is a 400.
 */
function parseIfMatch(value: string): Precondition {
  const text = value.trim();
  if (text === '*') return { any: true };
  const tags = text.split(',').map((t) => t.trim());
  if (tags.some((t) => !/^(?:W\/)?"[\x21\x23-\x7e]*"$/.test(t))) {
    throw new ProblemError(400, `If-Match must be * or a list of entity tags like "v3" (got ${JSON.stringify(value.slice(0, 100))})`, {
      title: 'Invalid request',
      type: 'https://ca-dms-scaling.dev/problems/validation',
      invalidParams: [{ name: 'headers.if-match', reason: 'must be * or a list of entity tags like "v3"' }],
    });
  }
  const weak = tags.filter((t) => t.startsWith('W/'));
  const versions = tags.flatMap((t) => {
    const m = /^"v(\d{1,9})"$/.exec(t);
    return m ? [Number(m[1])] : [];
  });
  if (versions.length === 0) {
    throw new ProblemError(
      412,
      weak.length > 0
        ? `If-Match compares entity tags strongly (RFC 9110), so the weak tag ${weak[0]} never matches; send the strong ETag from GET /config, e.g. "v3"`
        : `If-Match ${JSON.stringify(value.slice(0, 100))} names no configuration ETag (expected a value like "v3" from GET /config)`,
    );
  }
  return { any: false, versions };
}

/**
 * The current configuration, once `If-Match` holds for it; 412 otherwise. Preconditions are
 * evaluated before the content is (RFC 9110 section 13.2.1), so a stale writer learns that first.
 */
async function currentMatching(precondition: Precondition | undefined, port: ScalingApiPort): Promise<ConfigEnvelope> {
  const current = await guard(() => port.getConfig());
  requireMatch(precondition, current.version);
  return current;
}

/** 412 unless `If-Match` holds for `version`. */
function requireMatch(precondition: Precondition | undefined, version: number): void {
  if (precondition !== undefined && !precondition.any && !precondition.versions.includes(version)) {
    throw new ProblemError(412, `the configuration is at version ${version}, not ${precondition.versions.map((v) => `"v${v}"`).join(' or ')}; GET it again and retry with the new ETag`);
  }
}

/** Validates a whole configuration document; a 400 naming every invalid path (`body.` + path) otherwise. */
function validateConfig(document: unknown): void {
  try {
    parseScalingConfig(document);
  } catch (err) {
    if (!(err instanceof ScalingConfigError)) throw err;
    throw new ProblemError(400, err.message, {
      title: 'Invalid configuration',
      type: 'https://ca-dms-scaling.dev/problems/validation',
      invalidParams: err.issues.map((i) => ({ name: i.path ? `body.${i.path}` : 'body', reason: i.message })),
      cause: err,
    });
  }
}

const etagOf = (version: number): string => `"v${version}"`;

/** Maps the port's typed errors onto problem documents; anything else stays a 500. */
async function guard<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof UnknownServiceError)
      throw new ProblemError(400, err.message, { invalidParams: [{ name: 'service', reason: err.message }], title: 'Invalid request', cause: err });
    if (err instanceof StaleVersionError) throw new ProblemError(412, err.message, { cause: err });
    if (err instanceof NotFoundError) throw new ProblemError(404, err.message, { cause: err });
    if (err instanceof ConflictError) throw new ProblemError(409, err.message, { cause: err });
    if (err instanceof UnavailableError) throw new ProblemError(503, err.message, { cause: err, headers: { 'retry-after': '5' } });
    throw err;
  }
}

/**
 * How long the snapshots behind the reads live. Every read endpoint is served from a snapshot
 * (one per set of query parameters), so a burst of readers costs one computation per lifetime,
 * not one per request; `Age`, `ETag` and `Cache-Control` say how old it is.
 */
export interface ReadSnapshotOptions {
  /** Shard health, (estimated) statistics and the rebalance check: the sharding `health_check_interval` (default 10 s). */
  readonly shardsMaxAgeMs?: number;
  /**
   * Status, metrics, history, time series and configuration (default 1 s); any change made
   * through this API renews them at once.
   */
  readonly statusMaxAgeMs?: number;
  /** Recommendations, which replay the last decisions (default 10 s); renewed by changes too. */
  readonly recommendationsMaxAgeMs?: number;
  /**
   * How many lifetimes the shard snapshots and the recommendations may go on being served while
   * their refreshes fail (default {@link STALE_LIFETIMES}): past that a read waits for a refresh
   * and answers its error (a 503 naming the shard that could not be measured), not a plan of
   * moves taken before the shards changed.
   */
  readonly staleLifetimes?: number;
  readonly now?: () => number;
  /** Called whenever answers given before may no longer hold (a change made through the API, a move seen done). */
  readonly onRenew?: () => void;
}

/** See {@link ReadSnapshotOptions.staleLifetimes}. */
export const STALE_LIFETIMES = 3;

const NOT_MODIFIED = { description: 'the snapshot named in If-None-Match is still current (no body)' };
const SNAPSHOT_HEADERS = {
  etag: 'entity tag of this snapshot; send it back in If-None-Match for a 304',
  age: 'seconds since the snapshot was taken',
  'cache-control': 'private, max-age: seconds until the next snapshot is due',
};

/** Serves a snapshot read: 304 when the client has it already, else the body serialised once. */
async function fromSnapshot<T>(snapshot: Snapshot<T> | (() => Promise<SnapshotRead<T>>), request: ApiRequest): Promise<RouteResult> {
  const read = await guard(() => (snapshot instanceof Snapshot ? snapshot.read() : snapshot()));
  const headers = { etag: read.etag, age: String(read.ageSeconds), 'cache-control': `private, max-age=${read.maxAgeSeconds}` };
  if (noneMatch(request.headers['if-none-match'], read.etag)) return { status: 304, headers };
  return { status: 200, body: read.value, json: read.json, headers, reuseForMs: read.reusableMs };
}

/** The route table over a port. */
export function scalingRoutes(port: ScalingApiPort, snapshots: ReadSnapshotOptions = {}): RouteSpec[] {
  const now = snapshots.now ?? Date.now;
  const live = { maxAgeMs: snapshots.statusMaxAgeMs ?? 1000, now };
  const stale = snapshots.staleLifetimes ?? STALE_LIFETIMES;
  const shardsMaxAgeMs = snapshots.shardsMaxAgeMs ?? 10_000;
  const recommendationsMaxAgeMs = snapshots.recommendationsMaxAgeMs ?? 10_000;
  const shards = { maxAgeMs: shardsMaxAgeMs, maxStaleMs: stale * shardsMaxAgeMs, now };
  const statusSnapshot = new Snapshot(() => port.status(), live);
  const metricsSnapshot = new Snapshot(() => port.metrics(), live);
  const configSnapshot = new Snapshot(() => port.getConfig(), { ...live, etag: (envelope) => etagOf(envelope.version) });
  const historyPages = new SnapshotMap<HistoryView>(live);
  const timeseriesWindows = new SnapshotMap<TimeseriesView>(live);
  const recommendationsSnapshot = new Snapshot(() => port.recommendations(), { maxAgeMs: recommendationsMaxAgeMs, maxStaleMs: stale * recommendationsMaxAgeMs, now });
  const healthSnapshot = new Snapshot(() => port.shardHealth(), shards);
  const statisticsSnapshot = new Snapshot(() => port.shardStatistics({ exact: false }), shards);
  const rebalanceChecks = new SnapshotMap<RebalanceCheckView>(shards);
  // One per key looked up (hostile clients included): more of them, so as not to evict the usual ones.
  const routeAnswers = new SnapshotMap<RouteView>({ ...live, maxKeys: 256 });
  const directoryPages = new SnapshotMap<DirectoryPageView>(live);
  const fenceListings = new SnapshotMap<FenceListingView>(live);
  // A page of a listing (GET /shards/fences): its own snapshot (its own ETag), cut from the
  // listing's, so that reading every page reads the shards once a second, not once a page.
  const fencePages = new SnapshotMap<FencePageView>(live);
  /** Where keys live changes when a move is done: whoever saw it done reads the new place next. */
  const renewPlacement = (): void => {
    routeAnswers.invalidate();
    directoryPages.invalidate();
    // A move done has released or cleaned its fence rows.
    fenceListings.invalidate();
    fencePages.invalidate();
    snapshots.onRenew?.();
  };
  /**
   * A move started, cancelled or seen done changes which units the rebalance check may propose
   * (a unit with an unfinished move is refused, 409; a moved one is elsewhere): whoever asks next
   * gets a check made after it, not the proposal they have just followed.
   */
  const movesSeenDone = new Set<string>();
  const renewMovePlans = (): void => {
    rebalanceChecks.invalidate();
    recommendationsSnapshot.invalidate();
    snapshots.onRenew?.();
  };
  /** What a change made through this API may have changed: read again on the next request. */
  const renew = (): void => {
    statusSnapshot.invalidate();
    metricsSnapshot.invalidate();
    configSnapshot.invalidate();
    historyPages.invalidate();
    timeseriesWindows.invalidate();
    recommendationsSnapshot.invalidate();
    renewPlacement();
  };
  const routes: RouteSpec[] = [
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/status`,
      operationId: 'getStatus',
      summary: 'Get auto-scaling status',
      tags: ['scaling'],
      query: noQuery,
      responses: {
        200: { description: 'enabled or stopped, dry run, and per service its counts, bounds, policy, last action and cooldowns (a snapshot at most 1 s old, renewed by any change made through this API)', schema: statusSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ request }) => fromSnapshot(statusSnapshot, request),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/metrics`,
      operationId: 'getMetrics',
      summary: 'Get current system metrics',
      tags: ['scaling'],
      query: noQuery,
      responses: {
        200: { description: 'the latest metrics per service; missing ones marked missing (a snapshot at most 1 s old)', schema: metricsSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ request }) => fromSnapshot(metricsSnapshot, request),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/history`,
      operationId: 'getHistory',
      summary: 'Get scaling event history',
      description: 'Decisions and events, newest first, with cursor pagination.',
      tags: ['scaling'],
      query: historyQuerySchema,
      responses: { 200: { description: 'a page of history (a snapshot at most 1 s old)', schema: historySchema, headers: SNAPSHOT_HEADERS }, 304: NOT_MODIFIED },
      handle: async ({ query, request }) => {
        if (query.since && query.until && Date.parse(query.since) > Date.parse(query.until)) {
          throw new ProblemError(400, 'since must not be after until', {
            title: 'Invalid request',
            invalidParams: [{ name: 'query.since', reason: 'must not be after until' }],
          });
        }
        return fromSnapshot(() => historyPages.read(JSON.stringify(query), () => port.history(query)), request);
      },
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/timeseries`,
      operationId: 'getTimeseries',
      summary: 'Get demand, CPU, tasks and decisions over a time window',
      description: `Per service, the evaluations recorded in the window reduced to buckets (demand in requests/min and CPU %, mean and highest; desired tasks), and every change of the desired count with its reasons. Default window: the last hour. At most ${TIMESERIES_MAX_WINDOW_SECONDS / 86_400} days and ${TIMESERIES_MAX_POINTS} buckets.`,
      tags: ['scaling'],
      query: timeseriesQuerySchema,
      responses: { 200: { description: 'the series per service (a snapshot at most 1 s old)', schema: timeseriesSchema, headers: SNAPSHOT_HEADERS }, 304: NOT_MODIFIED },
      handle: async ({ query, request }) =>
        fromSnapshot(
          () =>
            timeseriesWindows.read(JSON.stringify(query), () =>
              port.timeseries({
                ...(query.service ? { service: query.service } : {}),
                ...(query.since ? { since: new Date(query.since) } : {}),
                ...(query.until ? { until: new Date(query.until) } : {}),
                ...(query.step ? { stepSeconds: query.step } : {}),
              }),
            ),
          request,
        ),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/config`,
      operationId: 'getConfig',
      summary: 'Get the scaling configuration',
      tags: ['scaling'],
      query: noQuery,
      responses: {
        200: {
          description: 'the configuration and its version (a snapshot at most 1 s old, renewed by any change made through this API)',
          schema: configEnvelopeSchema,
          headers: { ...SNAPSHOT_HEADERS, etag: 'the version, for If-Match (and If-None-Match)' },
        },
        304: NOT_MODIFIED,
      },
      handle: async ({ request }) => fromSnapshot(configSnapshot, request),
    }),
    defineRoute({
      method: 'PUT',
      path: `${API_PREFIX}/config`,
      operationId: 'putConfig',
      summary: 'Replace the scaling configuration',
      description:
        'Replaces the whole configuration: the body must name every setting (GET /config returns a complete document to edit); 422 lists the missing ones. To change some settings, use PATCH. Requires If-Match with the ETag from GET (or *): 428 without it, 412 when it is stale or weak.',
      tags: ['scaling'],
      query: noQuery,
      headers: ifMatchHeadersSchema,
      body: configBodySchema,
      responses: { 200: { description: 'the stored configuration and its new version', schema: configEnvelopeSchema, headers: { etag: 'the new version' } } },
      handle: async ({ headers, body, identity }) => {
        const ifMatch = headers['if-match'];
        if (ifMatch === undefined) throw new ProblemError(428, 'send If-Match with the ETag from GET /config so concurrent changes cannot overwrite each other');
        const current = await currentMatching(parseIfMatch(ifMatch), port);
        const missing = missingSettings(body);
        if (missing.length > 0) {
          throw new ProblemError(422, `PUT replaces the whole configuration and this document leaves out ${missing.length} setting(s): ${missing.join(', ')}. Send the complete document (as GET /config returns it), or change some settings with PATCH and ${MERGE_PATCH}`, {
            title: 'Incomplete configuration',
            type: 'https://ca-dms-scaling.dev/problems/incomplete-configuration',
            invalidParams: missing.map((path) => ({ name: `body.${path}`, reason: 'is missing; PUT takes the complete configuration' })),
          });
        }
        validateConfig(body);
        const stored = await guard(() => port.putConfig(body, current.version, identity.actor, 'PUT /config'));
        return { status: 200, body: stored, headers: { etag: etagOf(stored.version) } };
      },
    }),
    defineRoute({
      method: 'PATCH',
      path: `${API_PREFIX}/config`,
      operationId: 'patchConfig',
      summary: 'Change some scaling settings',
      description: `A JSON Merge Patch (RFC 7396, ${MERGE_PATCH}) of the configuration as GET /config returns it: the settings it names change, every other stays as it is; null resets a setting to its default. If-Match (the ETag from GET, or *) is optional: without it the patch applies to whatever version is current. A service the deployment does not scale (a misspelt name under services) is refused with 422 naming it, as by PUT.`,
      tags: ['scaling'],
      query: noQuery,
      headers: ifMatchHeadersSchema,
      body: configBodySchema,
      contentTypes: [MERGE_PATCH],
      responses: { 200: { description: 'the stored configuration and its new version', schema: configEnvelopeSchema, headers: { etag: 'the new version' } } },
      handle: async ({ headers, body, identity }) => {
        const ifMatch = headers['if-match'];
        const precondition = ifMatch === undefined ? undefined : parseIfMatch(ifMatch);
        // Read, checked and written with writers serialised: without If-Match a concurrent writer
        // only means the patch applies to the newer version, never a 412 the client did not ask for.
        const stored = await guard(() =>
          port.updateConfig(
            (current) => {
              requireMatch(precondition, current.version);
              const merged = applyMergePatch(current.config, body) as Record<string, unknown>;
              validateConfig(merged);
              return merged;
            },
            identity.actor,
            'PATCH /config',
          ),
        );
        return { status: 200, body: stored, headers: { etag: etagOf(stored.version) } };
      },
    }),
    ...(['start', 'stop'] as const).map((verb) =>
      defineRoute({
        method: 'POST',
        path: `${API_PREFIX}/${verb}`,
        operationId: `${verb}Scaling`,
        summary: verb === 'start' ? 'Start auto-scaling' : 'Stop auto-scaling',
        description: 'Globally, or for one service with {"service": "..."}. Idempotent; recorded in the history with the caller.',
        tags: ['scaling'],
        query: noQuery,
        body: startStopBodySchema,
        bodyRequired: false,
        responses: { 200: { description: 'the resulting state', schema: startStopResultSchema } },
        handle: async ({ body, identity }) => ({
          status: 200,
          body: await guard(() =>
            port.setEnabled(verb === 'start', { ...(body.service ? { service: body.service } : {}), ...(body.reason ? { reason: body.reason } : {}) }, identity.actor),
          ),
        }),
      }),
    ),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/recommendations`,
      operationId: 'getRecommendations',
      summary: 'Get scaling recommendations',
      tags: ['scaling'],
      query: noQuery,
      responses: {
        200: { description: 'advice with its evidence (a snapshot at most 10 s old, renewed by any change made through this API)', schema: recommendationsSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ request }) => fromSnapshot(recommendationsSnapshot, request),
    }),
    defineRoute({
      method: 'POST',
      path: `${API_PREFIX}/evaluate`,
      operationId: 'evaluateNow',
      summary: 'Dry-run an evaluation now',
      description: 'What the controller would do for each service right now, and why or why not. Changes nothing.',
      tags: ['scaling'],
      query: noQuery,
      body: evaluateBodySchema,
      bodyRequired: false,
      responses: { 200: { description: 'the would-be decisions', schema: evaluationSchema } },
      handle: async ({ body, identity }) => ({
        status: 200,
        body: await guard(() => port.evaluate(body.service ? { service: body.service } : {}, identity.actor)),
      }),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/statistics`,
      operationId: 'getShardStatistics',
      summary: 'Get shard statistics',
      tags: ['shards'],
      query: statisticsQuery,
      responses: {
        200: { description: 'rows and bytes per shard and table, users, documents, slots, shares and imbalance; estimates come from a snapshot refreshed every health_check_interval, exact=true counts now', schema: statisticsReportSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ query, request }) =>
        query.exact === 'true' ? { status: 200, body: await guard(() => port.shardStatistics({ exact: true })) } : fromSnapshot(statisticsSnapshot, request),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/health`,
      operationId: 'getShardHealth',
      summary: 'Get shard health status',
      tags: ['shards'],
      query: noQuery,
      responses: {
        200: { description: 'every primary and replica: reachability, role, connections, performance, storage, lag, status; a snapshot refreshed every health_check_interval', schema: healthReportSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ request }) => fromSnapshot(healthSnapshot, request),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/rebalance-check`,
      operationId: 'getRebalanceCheck',
      summary: 'Check whether shards need rebalancing',
      tags: ['shards'],
      query: rebalanceQuerySchema,
      responses: {
        200: { description: 'the imbalance and the moves that would fix it (a snapshot refreshed every health_check_interval)', schema: rebalanceCheckSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ query, request }) =>
        fromSnapshot(
          () =>
            rebalanceChecks.read(JSON.stringify(query), () =>
              port.rebalanceCheck({ ...(query.threshold !== undefined ? { threshold: query.threshold } : {}), ...(query.by ? { by: query.by } : {}) }),
            ),
          request,
        ),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/route`,
      operationId: 'routeKey',
      summary: 'Where a key lives',
      tags: ['shards'],
      query: routeQuerySchema,
      responses: {
        200: { description: 'the shard, slot and map version for the key (a snapshot at most 1 s old, renewed once a move is seen done)', schema: routeResultSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ query, request }) => fromSnapshot(() => routeAnswers.read(JSON.stringify(query), () => port.route(query.key)), request),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/directory`,
      operationId: 'listDirectory',
      summary: 'List the shard directory, a page at a time',
      description: 'Directory entries (key -> shard) in key order, optionally of one shard; next_cursor leads to the next page.',
      tags: ['shards'],
      query: directoryQuerySchema,
      responses: {
        200: { description: 'one page of entries (a snapshot at most 1 s old, renewed once a move is seen done)', schema: directoryPageSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ query, request }) => fromSnapshot(() => directoryPages.read(JSON.stringify(query), () => port.directory(query)), request),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/fences`,
      operationId: 'listFences',
      summary: 'List the write fence rows no live move explains',
      description:
        "Per shard, the write_fences rows no live move explains (a hand change of the slot map or of a pin that did not finish, a moved row on the shard the map names, rows left to the operator), each with what it does to the unit's writes and what `ca-dms-scaling shards fences --settle` would do with it or why it would not; all=true lists the explained rows too. The same listing as the CLI without --settle, read without its lock: it never holds up a hand change, and so cannot tell whether one is in flight (--settle checks that before it reopens a row). Each shard is read within health_check_timeout_seconds; one that does not answer is listed under unreachable. A page at a time (limit, default and at most 1000 rows; next_cursor leads to the next page), in order of shard, kind and unit: a listing grows with the moves made (every key a directory move took off its slot's owner leaves a listed row there), and whole it outgrew the 6 MB a Lambda function may answer. Changes nothing: settling stays with the CLI (docs/sharding-spec.md section 9).",
      tags: ['shards'],
      query: fencesQuerySchema,
      responses: {
        200: { description: 'a page of the listing (a snapshot at most 1 s old, renewed once a move is seen done)', schema: fencePageSchema, headers: SNAPSHOT_HEADERS },
        304: NOT_MODIFIED,
      },
      handle: async ({ query, request }) => {
        const after = query.cursor === undefined ? undefined : fenceCursorAfter(query.cursor);
        if (query.cursor !== undefined && after === undefined) {
          throw new ProblemError(400, 'query.cursor: is not a cursor this API returned', { title: 'Invalid request', invalidParams: [{ name: 'query.cursor', reason: 'is not a cursor this API returned' }] });
        }
        const all = query.all === 'true';
        const limit = query.limit ?? FENCE_PAGE_MAX_ROWS;
        const listing = async (): Promise<FenceListingView> => (await fenceListings.read(JSON.stringify({ all }), () => port.shardFences({ all }))).value;
        return fromSnapshot(() => fencePages.read(JSON.stringify({ all, limit, cursor: query.cursor ?? null }), async () => fencePage(await listing(), { limit, after })), request);
      },
    }),
    defineRoute({
      method: 'POST',
      path: `${API_PREFIX}/shards/moves`,
      operationId: 'startMove',
      summary: 'Start moving a slot or a directory key to another shard',
      tags: ['shards'],
      query: noQuery,
      body: moveRequestSchema,
      responses: { 202: { description: 'the move job, started', schema: moveJobSchema, headers: { location: 'where to follow the move' } } },
      handle: async ({ body, identity }) => {
        // Refused (409: the unit is moving) or started, the check's last answer may propose it.
        const job = await guard(() => port.startMove(body, identity.actor)).finally(renewMovePlans);
        return { status: 202, body: job, headers: { location: `${API_PREFIX}/shards/moves/${job.id}` } };
      },
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/moves/{id}`,
      operationId: 'getMove',
      summary: 'Follow a move',
      tags: ['shards'],
      params: moveIdParamsSchema,
      query: noQuery,
      responses: { 200: { description: 'the move job and its progress', schema: moveJobSchema } },
      handle: async ({ params }) => {
        const job = await guard(() => port.getMove(params.id));
        // Read-your-writes for whoever follows a move: once it is done, the next route and directory reads are fresh.
        if (job.state === 'done') {
          renewPlacement();
          // Once per move: following a finished move again must not cost a new check each time.
          if (!movesSeenDone.has(job.id)) {
            if (movesSeenDone.size >= 1024) movesSeenDone.clear();
            movesSeenDone.add(job.id);
            // The slots each shard owns (and its rows, once counted again) changed with the flip.
            statisticsSnapshot.invalidate();
            renewMovePlans();
          }
        }
        return { status: 200, body: job };
      },
    }),
    defineRoute({
      method: 'DELETE',
      path: `${API_PREFIX}/shards/moves/{id}`,
      operationId: 'cancelMove',
      summary: 'Cancel a move',
      description:
        'Records the cancellation; the moves worker rolls the move back (the copy on the target is deleted, the source stays the owner), so the answer comes at once and GET shows the move reach cancelled. Refused (409) once the new owner is published: the move can then only finish; refused too (409, saying why) while the catalog already routes the unit to the move\'s target (an operator\'s pin, a map published by hand): a rollback would hide the rows found there, so the move finishes on the target.',
      tags: ['shards'],
      params: moveIdParamsSchema,
      query: noQuery,
      responses: { 202: { description: 'the move job, its cancellation recorded (cancelRequested)', schema: moveJobSchema, headers: { location: 'where to follow the move' } } },
      handle: async ({ params }) => {
        const job = await guard(() => port.cancelMove(params.id)).finally(renewMovePlans);
        return { status: 202, body: job, headers: { location: `${API_PREFIX}/shards/moves/${job.id}` } };
      },
    }),
  ];
  const openapi = defineRoute({
    method: 'GET',
    path: `${API_PREFIX}/openapi.json`,
    operationId: 'getOpenApi',
    summary: 'This API\'s OpenAPI 3 document',
    tags: ['meta'],
    query: noQuery,
    responses: {
      200: { description: 'the OpenAPI document', schema: z.record(z.string(), z.unknown()), headers: { etag: 'entity tag of the document', 'cache-control': 'how long it may be kept' } },
      304: NOT_MODIFIED,
    },
    // Built once, with the routes: it changes only with a new version of this code.
    handle: async ({ request }) => fromSnapshot(openApiSnapshot, request),
  });
  // A change made through the API shows in the very next read.
  const renewing = routes.map((r): RouteSpec => (r.method === 'GET' ? r : { ...r, handle: (ctx) => r.handle(ctx).finally(renew) }));
  const all = [...renewing, openapi];
  const openApiDocument = buildOpenApi(all, OPENAPI_INFO);
  const openApiSnapshot = new Snapshot(async () => openApiDocument, { maxAgeMs: 3600_000, now });
  return all;
}

const OPENAPI_INFO = {
  title: 'CA-DMS scaling API',
  version: '1.0.0',
  description: 'Watch and steer CA-DMS horizontal scaling: auto-scaling status, metrics, history, configuration, recommendations and database shards.',
};

/** A port for reading the route table's shape only: every call is refused. */
const shapeOnlyPort = new Proxy({} as ScalingApiPort, {
  get: (_target, name) => () => Promise.reject(new Error(`the route table was built to read its shape; ${String(name)} cannot be served`)),
});

/**
 * This API's OpenAPI document, without a port to serve it: the CDK app builds API Gateway's
 * resources and methods from it, so the gateway and the router cannot drift apart.
 */
export function scalingApiDocument(): ReturnType<typeof buildOpenApi> {
  return buildOpenApi(scalingRoutes(shapeOnlyPort), OPENAPI_INFO);
}

/** The scaling API's router, and how often the answers it gave may have stopped holding. */
export interface ScalingRouter extends Router {
  /** Raised whenever answers given before may no longer hold; a server keeping answers drops older ones. */
  changes(): number;
}

/** The router for the scaling API. */
export function createScalingRouter(port: ScalingApiPort, options: RouterOptions & { snapshots?: ReadSnapshotOptions } = {}): ScalingRouter {
  let changes = 0;
  const onRenew = options.snapshots?.onRenew;
  const router = createRouter(
    scalingRoutes(port, {
      ...options.snapshots,
      onRenew: () => {
        changes++;
        onRenew?.();
      },
    }),
    options,
  );
  return { ...router, changes: () => changes };
}
