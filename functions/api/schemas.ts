/**
 * The zod schemas of the scaling API: every query, header, body and response. The router
 * validates against them and the OpenAPI document is generated from them.
 */
import { z } from 'zod';
import { POLICY_NAMES } from '../core/scaling/config.js';
import { uuidForm } from '../core/sharding/keys.js';
import { MOVE_STATES } from '../core/sharding/move-plan.js';

const isoTime = z.string().datetime({ offset: true }).describe('an ISO 8601 timestamp');
/**
 * A timestamp in a query string. There a `+` means a space, so an offset sent as is
 * (`since=2026-11-27T10:00:00+01:00`) arrives as `...10:00:00 01:00`: the reason says so.
 */
const queryTime = z
  .string()
  .datetime({
    offset: true,
    error: (issue) =>
      typeof issue.input === 'string' && /^\d{4}-\d\d-\d\dT[\d:.]+ \d\d(?::?\d\d)?$/.test(issue.input)
        ? 'has a space where its time zone offset\'s + should be: a + in a query string is read as a space, so send it as %2B (2026-11-27T10:00:00%2B01:00) or give the time in UTC (2026-11-27T09:00:00Z)'
        : 'must be an ISO 8601 timestamp with a time zone, e.g. 2026-11-27T09:00:00Z or 2026-11-27T10:00:00%2B01:00',
  })
  .describe('an ISO 8601 timestamp with a time zone (Z, or an offset with its + sent as %2B)');
const serviceName = z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, 'service names are lower-case letters, digits and dashes');

export const reasonSchema = z.object({
  metric: z.string(),
  value: z.number().optional(),
  threshold: z.number().optional(),
  rule: z.string(),
  message: z.string(),
});
export const blockSchema = z.object({
  kind: z.string(),
  message: z.string(),
  until: isoTime.optional(),
});

export const lastActionSchema = z.object({
  at: isoTime,
  from: z.number().int(),
  to: z.number().int(),
  direction: z.enum(['out', 'in', 'none']),
  outcome: z.string(),
  trigger: z.string(),
  why: z.string(),
});

export const serviceStatusSchema = z.object({
  service: z.string(),
  enabled: z.boolean(),
  policy: z.enum(POLICY_NAMES),
  current: z.number().int().nullable().describe('running tasks, null when the orchestrator could not be read'),
  desired: z.number().int().nullable(),
  running: z.number().int().nullable(),
  pending: z.number().int().nullable(),
  min: z.number().int(),
  max: z.number().int(),
  deployment_in_progress: z.boolean().nullable(),
  last_action: lastActionSchema.nullable(),
  cooldown_remaining_seconds: z.object({ scale_out: z.number().min(0), scale_in: z.number().min(0) }),
  orchestrator_error: z.string().optional(),
});

export const statusSchema = z.object({
  enabled: z.boolean(),
  dry_run: z.boolean(),
  config_version: z.number().int(),
  check_interval_seconds: z.number().int(),
  last_evaluation_at: isoTime.nullable(),
  next_evaluation_at: isoTime.nullable(),
  services: z.array(serviceStatusSchema),
});

const metricValue = z.object({ value: z.number().nullable(), missing: z.boolean() });
export const serviceMetricsSchema = z.object({
  service: z.string(),
  timestamp: isoTime.nullable().describe('end of the period the metrics describe; null when none were ever read'),
  cpu_percent: metricValue,
  memory_percent: metricValue,
  response_time_ms: metricValue,
  connections_per_task: metricValue,
  request_count: metricValue,
  error_rate_percent: metricValue,
  queue_depth_per_task: metricValue,
});
export const metricsSchema = z.object({ services: z.array(serviceMetricsSchema) });

/** The longest window `GET /timeseries` answers, and the most buckets per service. */
export const TIMESERIES_MAX_WINDOW_SECONDS = 7 * 86_400;
export const TIMESERIES_MAX_POINTS = 2000;

export const timeseriesQuerySchema = z.strictObject({
  service: serviceName.optional().describe('one service; every configured service when absent'),
  since: queryTime.optional().describe('start of the window (default: one hour before until)'),
  until: queryTime.optional().describe('end of the window (default: now)'),
  step: z
    .string()
    .regex(/^\d+$/, 'must be a whole number of seconds')
    .transform(Number)
    .pipe(z.number().int().min(1).max(86_400))
    .optional()
    .describe(`seconds per bucket (default: the window in at most 360 buckets; at most ${TIMESERIES_MAX_POINTS} buckets)`),
});
export type TimeseriesQuery = z.output<typeof timeseriesQuerySchema>;

const timeseriesPointSchema = z.object({
  at: isoTime.describe('start of the bucket'),
  demand: z.number().nullable().describe('requests per minute, mean of the evaluations in the bucket'),
  demand_max: z.number().nullable().describe('requests per minute, highest in the bucket'),
  cpu: z.number().nullable().describe('CPU %, mean of the evaluations in the bucket'),
  cpu_max: z.number().nullable().describe('CPU %, highest in the bucket'),
  tasks: z.number().int().describe('desired tasks after the last evaluation of the bucket'),
});
const timeseriesDecisionSchema = z.object({
  at: isoTime,
  from: z.number().int(),
  to: z.number().int(),
  direction: z.enum(['out', 'in', 'none']),
  outcome: z.enum(['applied', 'failed']),
  trigger: z.string(),
  dry_run: z.boolean(),
  why: z.string().describe('the reasons the policy gave (and what blocked or failed)'),
});
export const timeseriesSchema = z.object({
  since: isoTime,
  until: isoTime,
  step_seconds: z.number().int(),
  services: z.array(
    z.object({
      service: z.string(),
      points: z.array(timeseriesPointSchema).describe('buckets with at least one evaluation, oldest first'),
      decisions: z.array(timeseriesDecisionSchema).describe('changes of the desired count (applied or failed), oldest first'),
    }),
  ),
});

export const historyQuerySchema = z.strictObject({
  service: serviceName.optional().describe("only this service's decisions and events"),
  direction: z.enum(['out', 'in', 'none']).optional().describe('only decisions that scaled out, in, or kept the count (none)'),
  outcome: z.enum(['applied', 'unchanged', 'blocked', 'failed', 'skipped']).optional().describe('only decisions with this outcome'),
  trigger: z.enum(['schedule', 'alarm', 'api']).optional().describe('only decisions of evaluations started by the schedule, an alarm, or the API'),
  kind: z.enum(['decision', 'event']).optional().describe('only decisions, or only events (configuration changes, starts and stops, alarms, gaps in the record)'),
  since: queryTime.optional(),
  until: queryTime.optional(),
  limit: z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(1).max(200))
    .optional()
    .describe('items per page, 1 to 200 (default 50)'),
  cursor: z.string().max(200).optional().describe("the previous page's next_cursor"),
});
export type HistoryQuery = z.output<typeof historyQuerySchema>;

export const historyItemSchema = z.object({
  id: z.string(),
  kind: z.enum(['decision', 'event']),
  at: isoTime,
  service: z.string().nullable(),
  type: z.string().describe('for decisions "decision"; for events what happened, e.g. config_changed, stopped, started, alarm, gap'),
  trigger: z.string().nullable(),
  policy: z.string().nullable(),
  from: z.number().int().nullable(),
  to: z.number().int().nullable(),
  direction: z.enum(['out', 'in', 'none']).nullable(),
  outcome: z.string().nullable(),
  dry_run: z.boolean().nullable(),
  reasons: z.array(reasonSchema),
  blocked: z.array(blockSchema),
  actor: z.string().nullable(),
  error: z.string().nullable(),
  detail: z.record(z.string(), z.unknown()).nullable(),
});
export const historySchema = z.object({ items: z.array(historyItemSchema), next_cursor: z.string().nullable() });

export const configEnvelopeSchema = z.object({
  version: z.number().int().describe('0 while only the defaults are in force'),
  updated_at: isoTime.nullable(),
  updated_by: z.string().nullable(),
  config: z.record(z.string(), z.unknown()).describe('the whole runtime scaling configuration with defaults applied'),
});

/** `If-Match` is checked by the handler so that a missing header gets 428 rather than 400. */
export const ifMatchHeadersSchema = z.object({
  'if-match': z
    .string()
    .max(100)
    .optional()
    .describe('the ETag of GET /config ("v3"), a comma-separated list of them, or *: a stale or weak one gets 412. Required by PUT (428 without), optional for PATCH'),
});

/**
 * PUT /config accepts any JSON object; the scaling configuration schema validates it in the handler.
 * Kept as parsed: z.record would rebuild it by assignment, and a member named __proto__ would set
 * the copy's prototype and vanish instead of being named as an unknown setting.
 */
export const configBodySchema = z
  .custom<Record<string, unknown>>((value) => typeof value === 'object' && value !== null && !Array.isArray(value), { error: 'must be a JSON object' })
  .meta({ type: 'object', additionalProperties: {} });

export const startStopBodySchema = z.strictObject({
  service: serviceName.optional().describe('one service; omit for the whole controller'),
  reason: z.string().max(500).optional(),
});
export const startStopResultSchema = z.object({
  scope: z.string().describe('"global" or the service name'),
  enabled: z.boolean(),
  changed: z.boolean().describe('false when it was already in that state (the call is idempotent)'),
});

export const recommendationSchema = z.object({
  id: z.string(),
  category: z.enum([
    'flapping',
    'max_reached',
    'min_unused',
    'thresholds_close',
    'better_policy',
    'shard_imbalance',
    'shard_rebalance_unavailable',
    'replica_lag',
    'connection_saturation',
  ]),
  severity: z.enum(['info', 'warning', 'critical']),
  service: z.string().nullable(),
  shard: z.string().nullable(),
  title: z.string(),
  advice: z.string(),
  evidence: z.record(z.string(), z.unknown()),
});
export const recommendationsSchema = z.object({ generated_at: isoTime, items: z.array(recommendationSchema) });

export const evaluateBodySchema = z.strictObject({ service: serviceName.optional() });
export const evaluationSchema = z.object({
  dry_run: z.literal(true),
  at: isoTime,
  services: z.array(
    z.object({
      service: z.string(),
      policy: z.string(),
      from: z.number().int().nullable(),
      to: z.number().int().nullable(),
      direction: z.enum(['out', 'in', 'none']).nullable(),
      would_change: z.boolean(),
      reasons: z.array(reasonSchema),
      blocked: z.array(blockSchema),
      error: z.string().nullable(),
    }),
  ),
});

export const routeQuerySchema = z
  .strictObject({
    key: z.string().min(1).max(512).describe('the routing key: a user id, the owner id of a document, or any other key the configured strategy routes'),
    kind: z
      .enum(['key', 'user', 'document_owner'])
      .optional()
      .describe('what the key is (default key: any key, in its canonical form). user and document_owner must be a UUID (docs/sharding-spec.md section 1); all three route the same way'),
  })
  .superRefine((query, ctx) => {
    // The spec refuses a non-UUID wherever a user id is expected: answering where `user-1` would
    // live, had it been a user, tells a caller that an id they got wrong is fine.
    if (query.kind !== undefined && query.kind !== 'key' && uuidForm(query.key) === undefined) {
      ctx.addIssue({ code: 'custom', path: ['key'], message: `is not a UUID, which a ${query.kind === 'user' ? 'user id' : 'document owner id'} is (e.g. 3f2c1d9e-8a7b-4c6d-9e0f-112233445566)` });
    }
  });
export const routeResultSchema = z.object({
  key: z.string().describe('the key in its canonical form (a UUID in lower case 8-4-4-4-12), which is what is routed'),
  shard_id: z.string(),
  slot: z.number().int().nullable(),
  map_version: z.number().int().nullable(),
  strategy: z.string(),
  source: z.string(),
});

export const directoryQuerySchema = z.strictObject({
  shard: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'is not a shard id').optional().describe('only keys placed on this shard, e.g. shard_002'),
  limit: z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(1).max(1000))
    .optional()
    .describe('keys per page, 1 to 1000 (default 100)'),
  cursor: z.string().max(1024).optional().describe("the previous page's next_cursor"),
});
export type DirectoryQuery = z.output<typeof directoryQuerySchema>;
export const directoryPageSchema = z.object({
  items: z.array(
    z.object({
      key: z.string(),
      shard_id: z.string(),
      version: z.number().int(),
      updated_at: z.string(),
      updated_by: z.string(),
    }),
  ),
  next_cursor: z.string().nullable().describe('pass as cursor for the next page; null on the last page'),
});

export const rebalanceQuerySchema = z.strictObject({
  threshold: z
    .string()
    .regex(/^\d+(\.\d+)?$/, 'must be a number such as 0.1')
    .transform(Number)
    .pipe(z.number().gt(0).lt(1))
    .optional()
    .describe('allowed distance from the mean as a fraction, above 0 and below 1 (default 0.1)'),
  by: z.enum(['bytes', 'rows']).optional().describe('compare the shards by bytes or by rows (default bytes)'),
});

export const moveRequestSchema = z.strictObject({
  kind: z.enum(['slot', 'directory']),
  unit: z.string().min(1).max(512).describe('the slot number, or the directory key'),
  to: z.string().min(1).max(100).describe('the target shard id'),
});
export const moveIdParamsSchema = z.strictObject({ id: z.string().regex(/^[0-9a-zA-Z-]{1,64}$/, 'is not a move id').describe('the id POST /shards/moves answered with') });

// The shard reports below mirror the sharding layer's types (core/sharding, adapters/postgres)
// field for field, in their camelCase, so the published contract is what the layer produces.

const healthStatus = z.enum(['healthy', 'degraded', 'down']);
const nodeRole = z.enum(['primary', 'replica']);

export const healthReasonSchema = z.object({
  code: z.string().describe('stable, for alerting'),
  status: z.enum(['degraded', 'down']),
  message: z.string(),
  nodeId: z.string().optional().describe('the node the reason is about (set on shard-level reasons)'),
});

export const databaseRatesSchema = z.object({
  intervalSeconds: z.number(),
  commitsPerSecond: z.number(),
  rollbacksPerSecond: z.number(),
  rowsReadPerSecond: z.number(),
  rowsWrittenPerSecond: z.number(),
  blocksReadPerSecond: z.number(),
  tempBytesPerSecond: z.number(),
  deadlocks: z.number().describe('deadlocks detected during the interval (a count)'),
  cacheHitRatio: z.number().nullable().describe('null when there were no block requests in the interval'),
  blockRequests: z.number(),
});

export const replicationFactsSchema = z.object({
  lagSeconds: z.number().nullable(),
  lagBytes: z.number().nullable().describe('null when the primary is unreachable'),
  replayLsn: z.string().nullable(),
  receiveLsn: z.string().nullable(),
  replayPaused: z.boolean(),
  streaming: z.boolean(),
});

/** How a response names a failed database call (sqlstate.ts `failureKind`; README: no response carries a database's error text). */
const FAILURE_KIND =
  "the kind of failure and what to do where it is known ('connection error ECONNREFUSED', 'no answer within 2000 ms', 'the login was refused (SQLSTATE 28P01: ...)'), never the driver's or the server's own text (addresses, logins, relations), which is logged";

export const rdsFactsSchema = z.object({
  status: z.string(),
  freeStorageBytes: z.number().nullable(),
  allocatedStorageBytes: z.number().nullable(),
  replicaLagSeconds: z.number().nullable(),
});

export const nodeFactsSchema = z.object({
  nodeId: z.string(),
  shardId: z.string(),
  role: nodeRole.describe('the role the configuration gives the node'),
  reachable: z.boolean(),
  error: z.string().optional().describe(`why the node could not be measured: ${FAILURE_KIND}`),
  inRecovery: z.boolean().optional(),
  connections: z.number().int().optional(),
  maxConnections: z.number().int().optional(),
  databaseSizeBytes: z.number().optional(),
  rates: databaseRatesSchema.nullable().optional().describe('null until two usable samples exist'),
  cumulativeCacheHitRatio: z.number().nullable().optional(),
  replication: replicationFactsSchema.optional(),
  rds: rdsFactsSchema.optional().describe('present on AWS when the cloud inventory knows the instance'),
  schemaCreators: z
    .array(z.string())
    .optional()
    .describe("a primary's: who besides the schema's owner may create objects in the shard's schema (PUBLIC, ca_dms_app); any makes the node degraded (schema_open_to_create)"),
});

export const statementStatSchema = z.object({
  queryId: z.string(),
  query: z.string().describe('normalised text, cut to 200 characters'),
  calls: z.number(),
  totalExecMs: z.number(),
  meanExecMs: z.number(),
  rows: z.number(),
});

export const statementsReportSchema = z.discriminatedUnion('available', [
  z.object({ available: z.literal(true), top: z.array(statementStatSchema) }),
  z.object({ available: z.literal(false), reason: z.string().describe('not installed, not loaded, or not readable by this login; the server\'s own text is logged') }),
]);

export const nodeReportSchema = z.object({
  nodeId: z.string(),
  shardId: z.string(),
  role: nodeRole,
  endpoint: z.string().describe('host:port/db, no credentials'),
  status: healthStatus,
  reasons: z.array(healthReasonSchema),
  checkMs: z.number().describe('how long the check of this node took'),
  facts: nodeFactsSchema,
  statements: statementsReportSchema.optional(),
});

const unconfiguredOwnerSchema = z.object({
  shardId: z.string(),
  slotsOwned: z.number().int(),
  slotRanges: z.array(z.tuple([z.number().int(), z.number().int()])).describe('the slots it is given, as inclusive [first, last] runs'),
});

export const healthReportSchema = z.object({
  status: healthStatus,
  checkedAt: isoTime,
  durationMs: z.number(),
  shards: z.array(
    z.object({
      shardId: z.string(),
      status: healthStatus,
      reasons: z.array(healthReasonSchema),
      primary: nodeReportSchema,
      replicas: z.array(nodeReportSchema),
    }),
  ),
  cloud: z
    .object({ available: z.boolean(), error: z.string().optional().describe("the call that failed and the SDK's error name; the SDK's message is logged") })
    .optional()
    .describe('present when a cloud inventory is configured: whether its facts could be read'),
  slotMap: z
    .object({ version: z.number().int(), unconfigured: z.array(unconfiguredOwnerSchema), reasons: z.array(healthReasonSchema) })
    .optional()
    .describe('the current slot map: shards it gives slots to that are not configured make the report down (the routers refuse the map); absent when the catalog could not be read'),
});

const LIVE_BYTES = 'live data: bytes of the live rows (tuple headers and stored values, TOASTed ones at their stored size), what balance is judged by; free space, dead rows and indexes left out';
const DISK_BYTES = 'on-disk size (pg_total_relation_size: heap, TOAST, indexes, free space): what the storage holds; it does not shrink when rows are deleted or vacuumed';
export const statisticsReportSchema = z.object({
  shards: z.array(
    z.object({
      shardId: z.string(),
      weight: z.number(),
      slotsOwned: z.number().int(),
      tables: z.array(
        z.object({
          table: z.string(),
          rows: z.number(),
          bytes: z.number().describe(LIVE_BYTES),
          diskBytes: z.number().describe(DISK_BYTES),
          method: z.enum(['estimate', 'exact']),
        }),
      ),
      users: z.number(),
      documents: z.number(),
      rows: z.number(),
      bytes: z.number().describe(LIVE_BYTES),
      diskBytes: z.number().describe(DISK_BYTES),
      shareOfRows: z.number(),
      shareOfBytes: z.number(),
      targetShare: z.number().describe('the fraction the shard should hold by weight'),
    }),
  ),
  totals: z.object({ rows: z.number(), bytes: z.number().describe(LIVE_BYTES), diskBytes: z.number().describe(DISK_BYTES), users: z.number(), documents: z.number(), slots: z.number().int() }),
  imbalance: z.object({ rows: z.number(), bytes: z.number().describe('by live data bytes') }).describe('largest over mean of the weight-normalised load; 1 is perfect balance'),
  complete: z.boolean().describe('false when a shard could not be measured (unreachable, or given slots by the slot map but not configured): totals, shares and imbalance leave it out'),
  unreachable: z.array(z.object({ shardId: z.string(), error: z.string().describe(`why the shard could not be measured: ${FAILURE_KIND}`) })),
  unconfigured: z
    .array(unconfiguredOwnerSchema)
    .describe('shards the current slot map gives slots to that are not in the configured shard list: none of their rows is measured, and totals.slots leaves their slots out'),
});

const balanceMetric = z.enum(['bytes', 'rows']);
export const rebalanceCheckSchema = z.object({
  by: balanceMetric,
  threshold: z.number(),
  imbalance: z.number().describe('max over mean of the chosen metric now'),
  needed: z.boolean(),
  moves: z.array(
    z.object({
      unit: z.object({ kind: z.enum(['slot', 'directory']), id: z.string() }),
      from: z.string(),
      to: z.string(),
      rows: z.number(),
      bytes: z.number().describe(LIVE_BYTES),
    }),
  ),
  summary: z.object({
    by: balanceMetric,
    threshold: z.number(),
    mean: z.number(),
    imbalanceBefore: z.number(),
    imbalanceAfter: z.number(),
    balancedBefore: z.boolean(),
    balancedAfter: z.boolean(),
    movedRows: z.number(),
    movedBytes: z.number(),
    shards: z.array(z.object({ shardId: z.string(), target: z.number(), before: z.number(), after: z.number() })),
    unresolved: z.array(z.string()).describe('shards left outside the threshold, each with the reason; and each unit not proposed because the move plan refuses its move (POST /shards/moves would answer 400, 409 or 422), with the plan\'s own message'),
  }),
});

/** The most rows one page of GET /shards/fences holds, and its default (see {@link fencesQuerySchema}). */
export const FENCE_PAGE_MAX_ROWS = 1000;

export const fencesQuerySchema = z.strictObject({
  all: z.enum(['true', 'false']).optional().describe('true lists the explained rows too: open rows, a live move\'s, a moved row on a shard the map does not name (default false)'),
  // Paged, as the directory is: every key a directory move took off its slot's owner leaves a
  // listed row there, and all=true lists every row of every shard, so a listing grows with the
  // moves made; whole, past about 14,000 rows it was more than the 6 MB a Lambda function may
  // answer, and API Gateway answered 502 (hand-changes-rds-logins.test.ts).
  limit: z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(1).max(FENCE_PAGE_MAX_ROWS))
    .optional()
    .describe(`rows per page, 1 to ${FENCE_PAGE_MAX_ROWS} (default ${FENCE_PAGE_MAX_ROWS})`),
  cursor: z.string().max(1024).optional().describe("the previous page's next_cursor (with the same all)"),
});
export const fenceListingSchema = z.object({
  mapVersion: z.number().int().describe('the latest slot map\'s version, which the rows were judged against'),
  rows: z.array(
    z.object({
      shard: z.string().describe('the shard whose write_fences holds the row'),
      kind: z.enum(['slot', 'directory']),
      unitId: z.string().describe('the slot (as text) or the directory key'),
      state: z.string().describe('fenced, moved, incoming or open'),
      jobId: z.string().nullable().describe('the move job that wrote the row; null for a hand change of the slot map or of a pin'),
      movedTo: z.string().nullable(),
      mapVersion: z.string().describe('the slot map version the row was written for'),
      ageMs: z.number().describe('milliseconds since the row was last written, by the shard\'s clock'),
      owner: z.string().optional().describe('the shard the latest slot map names for the slot (a directory row: its key\'s slot); absent for a slot the map does not have'),
      route: z.string().optional().describe('a directory row: the shard its key routes to (its pin, else its slot\'s owner by hash) under the sharding configuration, which the row is judged against; absent where the configuration routes no key by pin (hash_based with directory.override_hash off, range_based, sharding disabled)'),
      diagnosis: z.string().describe('what the row does to the unit\'s writes, and why it is there'),
      action: z.enum(['reopen', 'set moved', 'none']).describe('what ca-dms-scaling shards fences --settle would do with it: none for a row left to a move or the operator'),
      withheld: z.string().optional().describe('why --settle would not take the action now (a move of the slot unfinished, the row younger than --settle\'s default 900 s)'),
    }),
  ),
  explained: z.number().int().describe('rows not listed (without all=true): open rows, a live move\'s, a moved row on a shard the map does not name'),
  unreachable: z.array(z.string()).describe(`shards whose rows could not be read in time, each as "shard (reason)", the reason ${FAILURE_KIND}: their rows are not listed`),
  ownerHistory: z
    .string()
    .optional()
    .describe(
      "set where the owners of fenced slots were read from every slot map since their rows' versions (slow: seconds at thousands of maps), not from the slots' owner history, because maps are missing from its list (catalog.slot_owner_history_maps: inserted with the triggers off, a restore) or sharding migration 028 is not applied: how many maps and slots, and the repair (select catalog.slot_owner_history_repair(); as the migration login)",
    ),
  otherRoutings: z
    .string()
    .optional()
    .describe("set where a runtime (the API's or the moves worker's function, local mode) recorded a routing other than this API's within the last day (catalog.runtime_routings: a change of the routing whose earlier runtimes may still run), naming it and who recorded it: the directory rows' route and action are judged by this API's routing alone, and ca-dms-scaling shards fences --settle leaves them to the operator until the routings agree"),
});
/** One page of the listing: its rows in (shard, kind, unit) order, code point by code point, and where the next page starts. */
export const fencePageSchema = fenceListingSchema.extend({
  rows: fenceListingSchema.shape.rows.describe(`the page's rows, in order of shard, kind and unit (code point by code point); at most limit (default ${FENCE_PAGE_MAX_ROWS})`),
  next_cursor: z.string().nullable().describe('pass as cursor (with the same all) for the next page; null on the last page. mapVersion, explained and unreachable are those of the listing each page was cut from'),
});

const tableSummaries = z.record(z.string(), z.object({ rows: z.number(), checksum: z.string() }));
export const moveJobSchema = z.object({
  id: z.string(),
  kind: z.enum(['slot', 'directory']),
  unitId: z.string().describe('the slot (as text) or the directory key'),
  slot: z.number().int(),
  from: z.string(),
  to: z.string(),
  state: z.enum(MOVE_STATES),
  cancelRequested: z.boolean(),
  flipStartedAt: isoTime.nullable(),
  excludedKeys: z.array(z.string()),
  copyCursor: z
    .object({
      table: z.string(),
      after: z.string().nullable(),
      lanes: z.array(z.string().nullable()).optional().describe('with the table copied in several id ranges at once, the last id copied in each'),
    })
    .nullable(),
  rowsCopied: z.number(),
  changesApplied: z.number(),
  rowsDeleted: z.number(),
  fenceTimeouts: z.number().int().describe('times the cutover gave up because the write fence could not be held within its budget (writes were released each time)'),
  rollbackTo: z.enum(['failed', 'cancelled']).nullable().describe('set once a rollback has been decided: the state the move ends in'),
  sourceSummary: tableSummaries.nullable(),
  targetSummary: tableSummaries.nullable(),
  mapVersionBefore: z.number().int().nullable(),
  mapVersionAfter: z.number().int().nullable(),
  createdBy: z.string(),
  reason: z.string(),
  error: z.string().nullable(),
  cancelRefused: z
    .string()
    .nullable()
    .describe('why a cancellation of the move was refused (the catalog already routes its unit to the target, where the move then finished); kept for the life of the job, whereas `error` is cleared by the next step'),
  createdAt: isoTime,
  fencedAt: isoTime.nullable(),
  unfencedAt: isoTime.nullable(),
  finishedAt: isoTime.nullable(),
  progressedAt: isoTime.describe('when the job last moved forward: a page copied, a batch of source rows deleted (or of the copy, in a rollback), or a state it does not come back from (the catch-up, fence and verification loop counts only when it ends in the flip)'),
  fenceMs: z.number().nullable().describe('how long writes to the unit were fenced, once the fence has been released'),
  sourceClusterId: z
    .string()
    .nullable()
    .describe("the source's PostgreSQL cluster id (16 hex digits, pg_control_system()'s system identifier) the move recorded with its fence, then with its release; null where none was: the mover's login may not read it, or the fence was recorded before this field existed (the fence is then released without it and judged by timeline alone; docs/sharding-spec.md, read-your-writes tokens)"),
});
