/**
 * The scaling API's port implemented over the real system: the controller's catalog and
 * evaluation service, the orchestrator and metrics ports, and (when sharding is enabled) the
 * sharding layer. The Lambda handler and local mode build it with their own adapters.
 *
 * @example
 * ```ts
 * const port = createScalingApiPort({ catalog, history, controller, target, metrics, clock, sharding });
 * const router = createScalingRouter(port);
 * ```
 */
import type { MetricsSource, Clock, ScalingTarget, TasksReading } from '../core/scaling/ports.js';
import { resolveServiceConfig, POLICY_NAMES, type ScalingConfig } from '../core/scaling/config.js';
import { toSnapshot, type ScalingController } from '../core/scaling/controller.js';
import { configMarkValue, disabledByConfig, switchMarkValue } from '../core/scaling/stop-marks.js';
import { lastEventIn } from '../core/scaling/policies/common.js';
import { recommend, type HistoryDecision, type PolicyReplay, type ShardFacts } from '../core/scaling/recommendations.js';
import { contestantsFor } from '../core/scaling/simulator/anchors.js';
import { DEFAULT_MODEL } from '../core/scaling/simulator/model.js';
import { prepareTrace, simulate } from '../core/scaling/simulator/simulate.js';
import type { MetricsSnapshot, ServiceState } from '../core/scaling/types.js';
import { RebalancePlanError, RoutingError } from '../core/sharding/errors.js';
import { canonicalKey } from '../core/sharding/keys.js';
import { summaryWithout } from '../core/sharding/rebalance.js';
import type { ShardRouter } from '../core/sharding/router.js';
import { moveRoutingOf } from '../core/sharding/move-machine.js';
import { CatalogError, ChangeStoredUnsettledError, ConfigVersionConflictError, type CatalogStore, type StoredConfig, type StoredDecision } from '../adapters/postgres/catalog-store.js';
import type { DirectoryStore } from '../adapters/postgres/directory-store.js';
import { InvalidCursorError, type HistoryReader } from '../adapters/postgres/history-reader.js';
import { CATALOG_LOGIN_REFUSED_WHY, CATALOG_ROTATION_HOW_TO_TELL, catalogLoginRefused, MoveBusyError, MoveConflictError, MoveError, MoveNotCancellableError, MovePlanCatalogRefused, MovePlanOutOfTime, MovePlanOutcomeUnknown, MovePlanShardLoginRefused, MovePlanShardUnanswered, MoveRequestError, NodeLoginRefused, shardLoginRefusedWords, unreadableCredentialsWords, type MoveJob, type Mover } from '../adapters/postgres/mover.js';
import { ShardInspectionError, type HealthReport, type InspectionFailure, type RebalanceCensus, type ShardInspector } from '../adapters/postgres/shard-inspector.js';
import { isNodeFailure } from '../adapters/postgres/replica-reader.js';
import { CredentialsReadError } from '../adapters/postgres/secret-pool.js';
import type { ShardingRuntime } from '../adapters/postgres/sharding-runtime.js';
import type { SlotMapStore } from '../adapters/postgres/slot-map-store.js';
import { failureKind } from '../adapters/postgres/sqlstate.js';
import { requestTimeLeftMs, withinRequestDeadline } from '../adapters/postgres/request-deadline.js';
import { SessionTimeoutError, sessionTimeoutOf } from '../adapters/postgres/deadline.js';
import { coalesced } from './coalesce.js';
import { ProblemError } from './http.js';
import { TIMESERIES_MAX_POINTS, TIMESERIES_MAX_WINDOW_SECONDS } from './schemas.js';
import {
  ConflictError,
  NotFoundError,
  StaleVersionError,
  UnavailableError,
  UnknownServiceError,
  type ConfigEnvelope,
  type EvaluationView,
  type HistoryView,
  type MetricsView,
  type MoveJobView,
  type RecommendationsView,
  type ScalingApiPort,
  type StatusView,
  type TimeseriesView,
} from './service.js';

/** The sharding layer, when sharding is enabled. */
export interface ShardingDeps {
  readonly router: ShardRouter;
  readonly slotMaps: Pick<SlotMapStore, 'current' | 'currentIfNewer'>;
  readonly directory: Pick<DirectoryStore, 'all' | 'page'>;
  readonly inspector: ShardInspector;
  /** The fence rows' listing (GET /shards/fences): read-only, each shard within its deadline. */
  readonly fences: ShardingRuntime['fences'];
  readonly mover: Mover;
  /** Replica lag bounds, for the recommendations. */
  readonly maxLagSeconds?: number;
  readonly maxLagBytes?: number;
  /** Runs a planned move to completion in the background (local mode: in-process; AWS: a worker). */
  readonly runMove: (id: number) => void;
  /**
   * Told the driver's or the server's own error of each failure an answer names by its kind only
   * (a 503 when the catalog or a shard does not answer a move's request or the fence listing, a
   * recommendation whose rebalance check failed): its text (addresses, logins, relations) is for
   * the log, never for a response (README). The runtime's sink, the inspector's
   * (`ShardingRuntime.reportFailure`), where built by {@link shardingDepsOf}.
   */
  readonly onFailure?: (failure: InspectionFailure) => void;
}

/** The API's view of an assembled sharding layer; `runMove` decides where moves run. */
export function shardingDepsOf(runtime: ShardingRuntime, runMove: (id: number) => void): ShardingDeps {
  return {
    router: runtime.router,
    slotMaps: runtime.slotMaps,
    directory: runtime.directory,
    inspector: runtime.inspector,
    fences: runtime.fences,
    mover: runtime.mover,
    maxLagSeconds: runtime.config.max_replica_lag_seconds,
    maxLagBytes: runtime.config.max_replica_lag_bytes,
    runMove,
    onFailure: (failure) => runtime.reportFailure(failure),
  };
}

export interface ScalingApiDeps {
  readonly catalog: CatalogStore;
  readonly history: HistoryReader;
  readonly controller: ScalingController;
  readonly target: ScalingTarget;
  readonly metrics: MetricsSource;
  readonly clock: Clock;
  readonly sharding?: ShardingDeps;
  /**
   * Without `sharding`, what left it out, as the shards endpoints' 404 names it
   * (`shardingOffReason`: `SHARDING_CONFIG_JSON` not set, `SHARDING_ENABLED=false`, the document's
   * `"enabled": false`). Default: "no sharding configuration was given".
   */
  readonly shardingOff?: string;
  /** How many recent decisions the recommendations look at (default 2000). */
  readonly recommendationWindow?: number;
  /**
   * Told of each catalog failure answered 503 (the answer names none of the driver's text): the
   * log. Without it, the sharding deps' `onFailure` where there are shards.
   */
  readonly onFailure?: (failure: InspectionFailure) => void;
}

const iso = (ms: number | Date): string => new Date(ms).toISOString();
/** A 400 naming the query or body field at fault. */
const invalid = (name: string, reason: string): ProblemError => new ProblemError(400, `${name}: ${reason}`, { title: 'Invalid request', invalidParams: [{ name, reason }] });

/**
 * Turns storage failures into the API's "unavailable" so callers get 503 and a retry hint. The
 * answer says only that the catalog did not answer; the driver's text (which names addresses and
 * ports) goes to `report`, the log, so that an operator can find why the 503s came.
 */
async function catalogAvailable<T>(what: string, work: () => Promise<T>, report: ((failure: InspectionFailure) => void) | undefined): Promise<T> {
  try {
    return await work();
  } catch (err) {
    // Committed, only the wait for an evaluation already asking ECS failed: "unreachable" would
    // tell the caller that nothing was stored.
    if (err instanceof ChangeStoredUnsettledError) {
      reportSafely(report, { what, error: err.cause ?? err });
      throw unsettledProblem(err);
    }
    if (err instanceof CatalogError) {
      reportSafely(report, { what, error: err.cause ?? err });
      throw new UnavailableError(`${what}: the catalog is unreachable right now`, { cause: err });
    }
    throw err;
  }
}

/**
 * The 503 of a change the catalog committed whose wait for the evaluations in flight failed;
 * `markFailure`, when its marks on the services failed too, is added to it.
 */
function unsettledProblem(err: ChangeStoredUnsettledError, markFailure?: unknown): UnavailableError {
  const marks = markFailure === undefined ? '' : `; besides, ${markFailure instanceof Error ? markFailure.message : String(markFailure)}`;
  return new UnavailableError(
    `${err.what} is stored and in force for every evaluation from now on, but an evaluation that decided a change before it was still asking ECS for it when waiting for that evaluation failed (the catalog's time limit ran out, or the catalog stopped answering): that change may still be applied (GET /history shows its outcome)${marks}`,
    { cause: err },
  );
}

/**
 * Runs a catalog write whose wait for the evaluations in flight may fail after it committed
 * (ChangeStoredUnsettledError): the change is in force all the same, so its caller must still
 * mark it on the services. Answers the stored value, or `unsettled` and no value.
 */
async function committing<T>(
  what: string,
  work: () => Promise<T>,
  report: ((failure: InspectionFailure) => void) | undefined,
): Promise<{ value: T; unsettled?: undefined } | { value?: undefined; unsettled: ChangeStoredUnsettledError }> {
  return catalogAvailable(what, async () => {
    try {
      return { value: await work() };
    } catch (err) {
      if (err instanceof ChangeStoredUnsettledError) {
        // In force all the same: the caller still marks it, then answers 503 (markThenRefuse).
        reportSafely(report, { what, error: err.cause ?? err });
        return { unsettled: err };
      }
      throw err;
    }
  }, report);
}

/**
 * After a committed change whose wait failed: its marks are still made (an evaluation without
 * the catalog would otherwise ignore a stop the answer calls in force), then the 503 saying so.
 */
async function markThenRefuse(unsettled: ChangeStoredUnsettledError, mark: () => Promise<void>): Promise<never> {
  try {
    await mark();
  } catch (err) {
    throw unsettledProblem(unsettled, err);
  }
  throw unsettledProblem(unsettled);
}

/** SQLSTATE query_canceled: the server's `statement_timeout` (57014) ended a statement it could not finish in time. */
const STATEMENT_CANCELED = '57014';

/**
 * The moves endpoints' database failures (the catalog, or a shard while planning, did not answer:
 * a refused or dropped connection, the client's query timeout, the server's statement timeout)
 * as the API's "unavailable": a 503 with a retry hint, not an internal error.
 * The failure is named by its kind (sqlstate.ts `failureKind`): the driver's and the server's own
 * text names addresses and ports (`connect ECONNREFUSED 10.0.3.17:5432`), which goes to `report`
 * (the log: nothing logs a problem's `cause`, and an operator must find why the 503s came).
 */
async function reachable<T>(what: string, work: () => Promise<T>, report: ((failure: InspectionFailure) => void) | undefined): Promise<T> {
  try {
    return await work();
  } catch (err) {
    // `Mover.plan` wraps a failure of the transaction that records the job in a plain MoveError
    // ("could not record the move: ..."), the driver's error as its cause: the catalog not
    // answering there is as unavailable as anywhere else. Its subclasses (a refused request, a
    // conflict) are answers, whatever their cause.
    const failure = err instanceof MoveError && err.name === 'MoveError' ? err.cause : err;
    // A shard the plan's checks had to ask, in the plan's words: they name the shard (by its id,
    // not its address) and why it was asked, where "the catalog or a shard" left the operator
    // looking at the move's source and target (h124: a directory move asks every shard).
    if (failure instanceof MovePlanShardUnanswered) {
      reportSafely(report, { what, shardId: failure.shard, error: failure.cause });
      throw new UnavailableError(`${what}: ${failure.message}`, { cause: err });
    }
    // A statement of the catalog ended by its session's own statement_timeout before the request's
    // deadline (or a lock wait by its lock_timeout; Mover.plan: its checks' reads, the job's transaction), in the plan's words, which
    // name the setting: "a statement ran past its time limit; try again shortly" named none, and
    // trying again meets the same setting (h150).
    if (failure instanceof SessionTimeoutError) {
      reportSafely(report, { what, error: failure });
      throw new UnavailableError(`${what}: ${err instanceof MoveError ? err.message : failure.message}`, { cause: err });
    }
    if (!(failure instanceof MoveError) && (isNodeFailure(failure) || (failure as { code?: unknown } | null)?.code === STATEMENT_CANCELED)) {
      reportSafely(report, { what, error: failure });
      throw new UnavailableError(`${what}: the catalog or a shard did not answer (${failureKind(failure)}); try again shortly`, { cause: err });
    }
    throw err;
  }
}

/**
 * The rebalance check's reads of the catalog (the slot map, the directory, the unfinished moves),
 * `reads`, with a failure of theirs that is the catalog's answered as the plan's checks answer it
 * (Mover.plan, catalogBoundedPool): a statement ended by the catalog session's own
 * statement_timeout or lock_timeout (the login's role or database setting: these reads set none of
 * their own), before the request's deadline, is a 503 naming the catalog and the setting (its cause
 * a SessionTimeoutError); the catalog refusing or losing the connection a 503 naming the catalog
 * and the failure's kind. Before, both reached the API bare: "an internal error occurred" (500)
 * where a table the reads need was held by a lock longer than a login's statement_timeout of
 * 50 ms, naming neither (h156, moves-plan-refusals-named.test.ts). A login the catalog refused
 * (28P01, 28000, 3D000) is a 500 naming the catalog login's credentials and a rotation of its
 * secret under way, as POST /shards/moves answers it (MovePlanCatalogRefused): it too reached the
 * API bare, "an internal error occurred" (h160). The driver's text goes to `report`, the log.
 * Anything else is thrown as it is.
 */
async function rebalanceCatalogReads<T>(reads: Promise<T>, report: ((failure: InspectionFailure) => void) | undefined): Promise<T> {
  const what = 'the rebalance check';
  try {
    return await reads;
  } catch (err) {
    const left = requestTimeLeftMs();
    const setting = left === undefined || left > 0 ? sessionTimeoutOf(err) : undefined;
    if (setting !== undefined) {
      reportSafely(report, { what, error: err });
      throw new UnavailableError(
        `${what}: the catalog ${setting === 'statement_timeout' ? 'cancelled a read of the rebalance check' : 'ended a lock wait of a read of the rebalance check'} (the slot map, the directory or the unfinished moves) by its session's own ${setting} (the catalog login's role or database setting${setting === 'statement_timeout' ? ', 10 s for the control login by catalog migration 005' : ''}; pg_settings' source for ${setting} names where it is set), shorter than what the request had left. A table the read needs held by a lock (a migration's ALTER TABLE, a VACUUM FULL, a LOCK TABLE left open) or a slow catalog keeps such a read. Ask again once that has ended, or raise that ${setting} (ALTER ROLE ... SET ${setting})`,
        { cause: new SessionTimeoutError('the catalog', setting, err) },
      );
    }
    // The login refused and the secret pool's re-read of its credentials failed: the source named,
    // by its failure's name only (the text names the secret's ARN: to the log), a 503 where it
    // passes by itself (throttled, a timeout), else a 500, as POST /shards/moves answers it (h166).
    if (err instanceof CredentialsReadError) {
      reportSafely(report, { what, error: err });
      throw credentialsUnreadable(err);
    }
    if (catalogLoginRefused(err)) {
      reportSafely(report, { what, error: err });
      throw catalogLoginRefusedProblem(err);
    }
    if (isNodeFailure(err) && !(err instanceof UnavailableError)) {
      reportSafely(report, { what, error: err });
      throw new UnavailableError(`${what}: the catalog did not answer a read of the rebalance check (${failureKind(err)}); ask again once it answers`, { cause: err });
    }
    throw err;
  }
}

/**
 * The rebalance check's answer where the catalog refused the login of one of its reads (28P01,
 * 28000, 3D000): its own reads of the catalog, or the move plan's checks it asks (Mover.refusals),
 * alike (h168: those listed every move unchecked, a 200, where the same refusal of the check's own
 * reads, and of the plan, is a 500). No Retry-After (a 500): a client told to retry a wrong
 * password would retry for nothing; the words name the one window that ends by itself, a rotation.
 */
function catalogLoginRefusedProblem(err: unknown): ProblemError {
  return new ProblemError(
    500,
    `the rebalance check: the catalog refused the login of a read of the rebalance check (${failureKind(err)}): ${CATALOG_LOGIN_REFUSED_WHY}. Ask again once the rotation has finished (${CATALOG_ROTATION_HOW_TO_TELL}); otherwise asking again does not help until the credentials match`,
    { cause: err },
  );
}

/**
 * The words of the rebalance check's `unresolved` line for a move whose checks (Mover.refusals)
 * failed with a node's own session timeout or a refused login, as the plan's checks name them
 * (Mover.plan: the node and the setting; the node and its login's credentials), without the
 * driver's text (a role's name); undefined for any other failure. Before, the first was "could not
 * be made (a statement ran past its time limit)", naming neither the node nor the setting, and the
 * second reached the API bare, "an internal error occurred" (h166, moves-plan-catalog-lost.test.ts).
 */
function checksFailureWords(failure: unknown): string | undefined {
  if (failure instanceof SessionTimeoutError) {
    const { nodeId, setting } = failure;
    const catalog = nodeId === 'the catalog';
    const where = catalog
      ? `the catalog login's role or database setting${setting === 'statement_timeout' ? ', 10 s for the control login by catalog migration 005' : ''}`
      : `${nodeId}'s login's role or database setting, or its parameter group's`;
    return `${nodeId} ${setting === 'lock_timeout' ? 'ended a lock wait of a read of them' : 'cancelled a read of them'} by its session's own ${setting} (${where}; pg_settings' source for ${setting} on ${catalog ? 'it' : nodeId} names where it is set), shorter than what the request had left: a table the read needs held by a lock (a migration's ALTER TABLE, a VACUUM FULL, a LOCK TABLE left open) or a slow ${catalog ? 'catalog' : 'shard'} keeps such a read; raise that ${setting} (ALTER ROLE ... SET ${setting}) should it recur`;
  }
  // A shard's (the catalog's fails the whole check: catalogLoginRefusedProblem), its secret's
  // source named where the secret pool's re-read failed (h168), in the plan's words.
  if (failure instanceof NodeLoginRefused) return shardLoginRefusedWords(failure.nodeId, failure.cause, 'a read of them')?.words;
  return undefined;
}

/**
 * The rebalance check's answer where a read of the catalog (its own, or one of the move plan's
 * checks it asks) had its login refused and the secret pool's re-read of the credentials failed
 * (secret-pool.ts CredentialsReadError): the source named by its failure's name only (the text
 * names the secret's ARN: to the log), a 503 where it passes by itself (throttled, a timeout),
 * else a 500, as POST /shards/moves answers it. Before, "an internal error occurred" (h166).
 */
function credentialsUnreadable(err: CredentialsReadError): ProblemError | UnavailableError {
  const words = `the rebalance check: ${unreadableCredentialsWords(err, 'the catalog', "the catalog login's", 'a read of the rebalance check')}`;
  if (err.transient) return new UnavailableError(`${words}; ask again shortly`, { cause: err });
  return new ProblemError(500, `${words}; ask again once the secret can be read (the function's log names it and the source's error)`, { cause: err });
}

/** Hands `failure` to `report`; a throwing logger must not change the answer. */
function reportSafely(report: ((failure: InspectionFailure) => void) | undefined, failure: InspectionFailure): void {
  try {
    report?.(failure);
  } catch {
    // The answer states the failure's kind either way.
  }
}

function why(d: Pick<StoredDecision, 'reasons' | 'blocked' | 'error'>): string {
  const parts = [...d.reasons.map((r) => r.message), ...d.blocked.map((b) => b.message)];
  return parts.length > 0 ? parts.join('; ') : d.error ?? 'no reason recorded';
}

function metricCell(value: number | undefined): { value: number | null; missing: boolean } {
  return value === undefined ? { value: null, missing: true } : { value, missing: false };
}

function metricsView(service: string, snapshot: MetricsSnapshot | null): MetricsView['services'][number] {
  return {
    service,
    timestamp: snapshot ? iso(snapshot.at) : null,
    cpu_percent: metricCell(snapshot?.cpu),
    memory_percent: metricCell(snapshot?.memory),
    response_time_ms: metricCell(snapshot?.responseTimeMs),
    connections_per_task: metricCell(snapshot?.connectionsPerTask),
    request_count: metricCell(snapshot?.requestCount),
    error_rate_percent: metricCell(snapshot?.errorRate),
    queue_depth_per_task: metricCell(snapshot?.queueDepthPerTask),
  };
}

/**
 * The window and step of a time-series query: until defaults to now (the controller's clock),
 * since to an hour before, the step to the window in 360 buckets. 400 naming the parameter when
 * the window is empty or too long, or the step makes too many buckets.
 */
function timeseriesWindow(q: { service?: string; since?: Date; until?: Date; stepSeconds?: number }, now: number): { service?: string; since: Date; until: Date; stepSeconds: number } {
  const until = q.until ?? new Date(now);
  const since = q.since ?? new Date(until.getTime() - 3_600_000);
  const window = (until.getTime() - since.getTime()) / 1000;
  if (!(window > 0)) throw invalid('query.since', 'must be before until');
  if (window > TIMESERIES_MAX_WINDOW_SECONDS) throw invalid('query.since', `the window is at most ${TIMESERIES_MAX_WINDOW_SECONDS / 86_400} days`);
  const stepSeconds = q.stepSeconds ?? Math.max(1, Math.ceil(window / 360));
  if (window / stepSeconds > TIMESERIES_MAX_POINTS) {
    throw invalid('query.step', `makes ${Math.ceil(window / stepSeconds)} buckets; at most ${TIMESERIES_MAX_POINTS} (use a step of at least ${Math.ceil(window / TIMESERIES_MAX_POINTS)} s)`);
  }
  return { ...(q.service === undefined ? {} : { service: q.service }), since, until, stepSeconds };
}

function requireService(config: ScalingConfig, service: string): void {
  const known = Object.keys(config.services);
  if (!known.includes(service)) throw new UnknownServiceError(service, known);
}

/** Demand in task-units reconstructed from recorded CPU and desired counts, one point per decision. */
function replayFor(service: string, configured: string, decisions: readonly HistoryDecision[]): PolicyReplay | undefined {
  const points = decisions
    .filter((d) => d.service === service && d.metrics?.cpu !== undefined)
    .sort((a, b) => a.at - b.at)
    .map((d) => ({ at: d.at, value: ((d.metrics?.cpu ?? 0) / 100) * Math.max(1, d.from) }));
  if (points.length < 30) return undefined;
  const first = points[0];
  const last = points[points.length - 1];
  if (!first || !last || last.at - first.at < 30 * 60_000) return undefined;
  const trace = prepareTrace(`${service} (recorded)`, points, DEFAULT_MODEL);
  const run = simulate(trace, contestantsFor([...POLICY_NAMES], DEFAULT_MODEL), DEFAULT_MODEL);
  return {
    service,
    configured,
    minutes: run.result.ticks,
    results: run.result.results.map((r) => ({ policy: r.policy, sloViolationMinutes: r.sloViolationMinutes, taskMinutes: r.taskMinutes, actions: r.actions })),
  };
}

/** The API's view of a move job: ids are text, and times are ISO 8601 strings as they are in the JSON. */
function jobView(job: MoveJob): MoveJobView {
  const iso = (d: Date | null): string | null => (d === null ? null : d.toISOString());
  // Field by field: the job carries more than the API documents (its schema allows no others).
  const { flipStarted: _flipStarted, ...documented } = job;
  return {
    ...documented,
    id: String(job.id),
    flipStartedAt: iso(job.flipStartedAt),
    createdAt: job.createdAt.toISOString(),
    fencedAt: iso(job.fencedAt),
    unfencedAt: iso(job.unfencedAt),
    finishedAt: iso(job.finishedAt),
    progressedAt: job.progressedAt.toISOString(),
  };
}

/** Builds the port. */
export function createScalingApiPort(deps: ScalingApiDeps): ScalingApiPort {
  const { catalog, controller, target, metrics, clock } = deps;
  const report = deps.onFailure ?? deps.sharding?.onFailure;
  const available = <T>(what: string, work: () => Promise<T>): Promise<T> => catalogAvailable(what, work, report);

  /**
   * Marks on the services (ECS tags) the `enabled: false` a configuration version stores, as a
   * stop is marked, so an evaluation without the catalog heeds it too: every scope the version
   * disables is marked (again: a retried change retries the marks), and a scope the version before
   * disabled (or, for a service, did not name) and this one enables is cleared unless its switch
   * still stops it. After the catalog's
   * write and its wait for the evaluations in flight, like a stop's mark; a refusal answers 503
   * saying the version is stored (the next evaluation with the catalog also repairs the marks).
   */
  const markConfigStops = async (before: ScalingConfig | undefined, stored: StoredConfig): Promise<void> => {
    const markStop = target.markStop?.bind(target);
    if (markStop === undefined) return;
    const scopes = ['*', ...Object.keys(stored.config.services)];
    const marked = scopes.filter((s) => disabledByConfig(stored.config, s));
    // A service the version before did not name at all (taken out, now put back) may still carry
    // the mark of an enabled: false from before it was taken out: cleared as a lifted one.
    const lifted = scopes.filter(
      (s) => !disabledByConfig(stored.config, s) && before !== undefined && (disabledByConfig(before, s) || (s !== '*' && !Object.hasOwn(before.services, s))),
    );
    const failed = { mark: [] as string[], clear: [] as string[] };
    const why = (err: unknown): string => (err instanceof Error ? `${err.name}: ${err.message}` : String(err));
    for (const scope of marked) {
      await markStop(scope, configMarkValue(stored.changedBy, stored.version, stored.changedAt)).catch((err: unknown) => failed.mark.push(why(err)));
    }
    if (lifted.length > 0) {
      try {
        const off = new Set((await catalog.getSwitches()).filter((sw) => !sw.enabled).map((sw) => sw.scope));
        for (const scope of lifted.filter((s) => !off.has(s))) await markStop(scope, undefined).catch((err: unknown) => failed.clear.push(why(err)));
      } catch (err) {
        failed.clear.push(why(err));
      }
    }
    const stated = `configuration version ${stored.version} is stored and in force for every evaluation that reaches the catalog`;
    if (failed.mark.length > 0) {
      throw new UnavailableError(
        `${stated}, but its enabled: false could not be marked on the services, where an evaluation without the catalog looks for it (${failed.mark.join('; ')}): such an evaluation would not see it; send the change again to retry the mark (the next evaluation with the catalog also marks it)`,
      );
    }
    if (failed.clear.length > 0) {
      throw new UnavailableError(
        `${stated}, but the mark of the enabled: false it lifts could not be cleared from the services (${failed.clear.join('; ')}): an evaluation without the catalog leaves them unscaled until the next evaluation with the catalog clears it`,
      );
    }
  };

  /** {@link markConfigStops} for the version the catalog holds now (one whose write's wait failed). */
  const markCurrentConfigStops = async (before: ScalingConfig | undefined): Promise<void> => {
    if (target.markStop === undefined) return;
    const current = await available('reading the configuration', () => catalog.getConfig());
    if (current !== undefined) await markConfigStops(before, current);
  };

  const sharding = (): ShardingDeps => {
    // It named SHARDING_ENABLED=false whatever left sharding out: an operator whose document said
    // "enabled": false, or whose function had no SHARDING_CONFIG_JSON at all, was sent to a
    // variable that was not set.
    if (!deps.sharding) throw new ProblemError(404, `sharding is not enabled (${deps.shardingOff ?? 'no sharding configuration was given'}): there are no shards to report on`);
    return deps.sharding;
  };
  // Another process (a move) may have published a newer map since this one was loaded: every
  // lookup checks, and concurrent lookups share the check (never one begun before they came).
  const adoptNewerMap = coalesced(async () => {
    const s = sharding();
    const newer = await s.slotMaps.currentIfNewer(s.router.slotMap.version);
    if (newer) s.router.setSlotMap(newer);
  });

  /**
   * The shards measured for a rebalance check (a scan of every shard's tables), shared by the
   * checks of every threshold and metric and by the recommendations asked while it runs: each
   * would otherwise scan every shard again, in parallel. A caller joins a measurement under way
   * only when it measures what the caller has just read (the same slot map, directory and
   * unfinished moves), and never waits for one begun after it: no check waits longer than one
   * measurement (each shard's within the inspector's whole-table budget).
   */
  const censuses = new Map<string, Promise<RebalanceCensus>>();
  async function rebalanceCensus(): Promise<{ census: RebalanceCensus; inFlight: number }> {
    const s = sharding();
    const [slotMap, directory, unfinished] = await rebalanceCatalogReads(Promise.all([s.slotMaps.current(), s.directory.all(), s.mover.unfinished()]), s.onFailure);
    // A unit with an unfinished move cannot be started again (409).
    const busySlots = [...new Set(unfinished.map((j) => j.slot))].sort((a, b) => a - b);
    // Those that will end on their target are planned as if done: whoever started the moves a
    // check proposed must not be told to move the same load again while they run.
    const pending = unfinished.filter((j) => !j.cancelRequested && (j.rollbackTo ?? null) === null).map((j) => ({ kind: j.kind, unitId: j.unitId, to: j.to }));
    const key = JSON.stringify([slotMap.version, slotMap.assignments, directory.map((d) => [d.key, d.shardId]), busySlots, pending]);
    let running = censuses.get(key);
    if (running === undefined) {
      running = s.inspector.rebalanceCensus({ slotMap, directory, routing: moveRoutingOf(s.router.config), busySlots: new Set(busySlots), pending }).finally(() => {
        if (censuses.get(key) === running) censuses.delete(key);
      });
      censuses.set(key, running);
    }
    return { census: await running, inFlight: unfinished.length };
  }

  /**
   * The rebalance check's plan ({@link ShardInspector.planRebalance}) without the moves the move
   * plan refuses. Before, the check remembered no refusal: a unit whose move POST /shards/moves
   * refused (409: the source's fence row of the slot says moved or incoming, the target holds rows
   * of the slot behind no row, ...; 400: a key's rows under another slot)
   * was proposed again at every snapshot, and whoever followed the check met the same refusal
   * every health_check_interval (issue #15, rebalance-refused-moves.test.ts). Each move proposed
   * is now put to the plan's own checks ({@link Mover.refusals}: the ones POST /shards/moves runs
   * before it records anything, not a copy of their rules), a move refused is left out and the
   * plan made again without the unit towards that target (towards any, once refused towards two), and the unit is listed under `summary.unresolved` with the plan's
   * own words, so the operator sees what to settle. Nothing is remembered between snapshots: a row
   * settled meanwhile makes the unit proposed again at the next.
   *
   * The cost is bounded by the moves proposed, not by the units: a move is checked once per check
   * whatever the rounds (a unit refused for the first time is asked towards one other shard in the
   * same round too: at most two checks a move proposed) (a few indexed reads on its source and target, its rows not counted again:
   * the census's counts are planned within the mover's maxUnitRows already; the slot map and the
   * directory read once a round, {@link Mover.refusals}), and a round after the first checks only the
   * moves the plan made anew in place of the refused; after {@link REFUSAL_ROUNDS} rounds that each
   * found a refusal, the moves of the next plan not yet checked are left out too, said in
   * `unresolved`, and the summary's figures are those of the moves proposed ({@link summaryWithout}).
   * A move whose checks could not be made (a shard not answering) is left out the same way, at once.
   */
  async function withoutRefusedMoves(census: RebalanceCensus, options: Parameters<ShardInspector['planRebalance']>[1]): Promise<Awaited<ReturnType<ShardInspector['planRebalance']>>> {
    const s = sharding();
    const unitKey = (u: { kind: string; id: string }): string => `${u.kind}:${u.id}`;
    /** The plan's refusals, by unit and target (`unitKey\u0000target`): the line `unresolved` lists. */
    const refused = new Map<string, string>();
    /** The targets each unit was refused towards (by unitKey). */
    const refusedTargets = new Map<string, string[]>();
    const accepted = new Set<string>();
    // The checks' time, every round's together (Mover.refusals: a check not ended by then is
    // a failure, its move not proposed): within the API's request deadline, after the census.
    // What the request has left where that is less (withinRequestDeadline): before, the checks
    // had their 5 s from the census's end whatever was left, and a census ended near the
    // deadline (it is bounded by it) was followed by up to 5 s of checks that API Gateway did not
    // wait for (504; rebalance-refused-moves.test.ts, "gives the move plan's checks what the
    // request has left").
    const budgetMs = withinRequestDeadline(REFUSAL_CHECKS_MS);
    const until = Date.now() + budgetMs;
    let units = census.units;
    for (let round = 1; ; round++) {
      const result = await s.inspector.planRebalance({ ...census, units }, options);
      const unchecked = result.moves.filter((m) => !accepted.has(`${unitKey(m.unit)}\u0000${m.to}`));
      const refusedNow: string[] = [];
      if (round > REFUSAL_ROUNDS && unchecked.length > 0) {
        // Bounded: the plan's moves not yet checked are not proposed unchecked.
        const left = new Set(unchecked.map((m) => unitKey(m.unit)));
        const moves = result.moves.filter((m) => !left.has(unitKey(m.unit)));
        const stopped = `${unchecked.length} more move${unchecked.length === 1 ? ' was' : 's were'} left out unchecked: the check puts its moves to the move plan's checks in at most ${REFUSAL_ROUNDS} rounds, and found refusals in each; settle the units listed, and the next check proposes more`;
        // The summary's figures are those of the moves proposed, not of the plan's: before, they
        // still counted those left out (summaryWithout).
        const summary = summaryWithout(result.summary, result.moves.filter((m) => left.has(unitKey(m.unit))));
        return { ...result, moves, summary: { ...summary, unresolved: [...summary.unresolved, ...refused.values(), stopped] } };
      }
      const verdicts = await s.mover.refusals(
        unchecked.map((m) => (m.unit.kind === 'slot' ? { kind: 'slot', slot: Number(m.unit.id), to: m.to, createdBy: 'rebalance-check' } : { kind: 'directory', key: m.unit.id, to: m.to, createdBy: 'rebalance-check' })),
        { until, budgetMs },
      );
      // Moves whose checks could not be made (a shard that stopped answering since the census, a
      // read past its statement timeout): neither refused nor passed, so not proposed (nothing is
      // proposed unchecked), each named with the failure's kind (the driver's text, which names
      // addresses, goes to onFailure only, as the check's other failures), and no plan is made
      // again: another round would send its new moves to the same shard and wait as long again.
      // Before, the failure was thrown and the whole check failed with it (500, and GET
      // /recommendations lost its shard figures) where, without these checks, it had answered
      // (rebalance-refused-moves.test.ts, "answers where the move plan's checks of a move cannot
      // read a shard"). What is neither a refusal nor a node's failure (a fault of this code) is
      // thrown, as before.
      const uncheckable: string[] = [];
      unchecked.forEach((m, j) => {
        const verdict = verdicts[j];
        if (verdict === undefined) {
          accepted.add(`${unitKey(m.unit)}\u0000${m.to}`);
          return;
        }
        if ('failed' in verdict) {
          const failure = verdict.failed;
          // The catalog's login refused to the checks (or its secret unreadable): the whole check
          // fails as its own reads of the catalog fail so (rebalanceCatalogReads), and as the plan
          // answers it: a 500 naming the credentials (503 where the secret's source is throttled).
          // Listed as unchecked moves, it was a 200 whose every move was "not proposed" (h168);
          // a shard's is listed, as a shard not answering is (the census answered for it).
          const catalogLogin = failure instanceof NodeLoginRefused && failure.nodeId === 'the catalog' ? failure.cause : failure instanceof CredentialsReadError ? failure : undefined;
          if (catalogLogin !== undefined) {
            reportSafely(s.onFailure, { what: "rebalance check (the move plan's checks of its moves)", error: catalogLogin });
            throw catalogLogin instanceof CredentialsReadError ? credentialsUnreadable(catalogLogin) : catalogLoginRefusedProblem(catalogLogin);
          }
          const named = checksFailureWords(failure);
          if (named === undefined && !(isNodeFailure(failure) || (failure as { code?: unknown } | null)?.code === STATEMENT_CANCELED)) throw failure;
          // A refused login's driver text (the role's name) goes to the log, not the answer.
          if (uncheckable.length === 0) reportSafely(s.onFailure, { what: "rebalance check (the move plan's checks of its moves)", error: failure instanceof NodeLoginRefused ? failure.cause : failure });
          // The shard that did not answer is named where the checks knew which (one asked beside the
          // move's source and target: a key move asks every shard, a slot move every former owner of
          // its slot), with why it was asked: before, the line named only the failure's kind, and the
          // operator checked the move's source and target, both answering (h132).
          const kind = named ?? (verdict.unanswered === undefined ? failureKind(failure) : `${verdict.unanswered.shard}, ${verdict.unanswered.asked}, did not answer: ${failureKind(failure)}`);
          uncheckable.push(
            `${m.unit.kind === 'slot' ? 'slot' : 'directory key'} ${m.unit.id} on ${m.from} is not proposed to move to ${m.to}: the move plan's checks of it ${
              'notStarted' in verdict ? `were not made (they stopped at another move's: ${kind})` : `could not be made (${kind})`
            }; the next check asks them again`,
          );
          return;
        }
        refusedNow.push(unitKey(m.unit));
        refusedTargets.set(unitKey(m.unit), [...(refusedTargets.get(unitKey(m.unit)) ?? []), m.to]);
        refused.set(
          `${unitKey(m.unit)}\u0000${m.to}`,
          `${m.unit.kind === 'slot' ? 'slot' : 'directory key'} ${m.unit.id} on ${m.from} is not proposed to move to ${m.to}: the move plan refuses it (POST /shards/moves answers ${verdict.status}): ${verdict.reason}`,
        );
      });
      if (uncheckable.length > 0) {
        // The plan's moves not passed (refused or not checked) are left out, this plan not made
        // again, and the summary's figures are those of the moves proposed (as after the last round).
        const passed = (m: { unit: { kind: string; id: string }; to: string }): boolean => accepted.has(`${unitKey(m.unit)}\u0000${m.to}`);
        const summary = summaryWithout(result.summary, result.moves.filter((m) => !passed(m)));
        return { ...result, moves: result.moves.filter(passed), summary: { ...summary, unresolved: [...summary.unresolved, ...refused.values(), ...uncheckable] } };
      }
      // A unit refused for the first time is asked at once, in this round, towards one other
      // shard (the one the plan leaves lightest against its target): most refusals are of the
      // unit wherever it goes (its source's fence row), and asked one target a round, each such
      // unit spent two of the {@link REFUSAL_ROUNDS} rounds on three shards; three of them spent
      // them all, and the check proposed nothing where the unit after them passed
      // (rebalance-refused-rounds.test.ts). Refused there too, it is left out for every target
      // (two refusals, as below); passed, that move is not asked again should the plan make it.
      // A check that could not be made is neither: the move is asked again if the plan makes it.
      // After the return above: where a shard did not answer, no further check is waited for.
      const probes = unchecked.flatMap((m) => {
        if (refusedTargets.get(unitKey(m.unit))?.length !== 1 || !refusedNow.includes(unitKey(m.unit))) return [];
        const relative = (b: { target: number; after: number }): number => (b.target > 0 ? b.after / b.target : b.after);
        const other = result.summary.shards
          .filter((b) => b.shardId !== m.from && b.shardId !== m.to)
          .sort((a, b) => relative(a) - relative(b) || (a.shardId < b.shardId ? -1 : a.shardId > b.shardId ? 1 : 0))[0];
        return other === undefined ? [] : [{ ...m, to: other.shardId }];
      });
      const probed = await s.mover.refusals(
        probes.map((m) => (m.unit.kind === 'slot' ? { kind: 'slot', slot: Number(m.unit.id), to: m.to, createdBy: 'rebalance-check' } : { kind: 'directory', key: m.unit.id, to: m.to, createdBy: 'rebalance-check' })),
        { until, budgetMs },
      );
      probes.forEach((m, j) => {
        const verdict = probed[j];
        if (verdict === undefined) {
          accepted.add(`${unitKey(m.unit)}\u0000${m.to}`);
          return;
        }
        if ('failed' in verdict) return;
        refusedTargets.set(unitKey(m.unit), [...(refusedTargets.get(unitKey(m.unit)) ?? []), m.to]);
        refused.set(
          `${unitKey(m.unit)}\u0000${m.to}`,
          `${m.unit.kind === 'slot' ? 'slot' : 'directory key'} ${m.unit.id} on ${m.from} is not proposed to move to ${m.to}: the move plan refuses it (POST /shards/moves answers ${verdict.status}): ${verdict.reason}`,
        );
      });
      if (refusedNow.length === 0) {
        return refused.size === 0 ? result : { ...result, summary: { ...result.summary, unresolved: [...result.summary.unresolved, ...refused.values()] } };
      }
      // A refusal may hold for its target only (the target holds rows of the slot behind no fence
      // row: POST /shards/moves to another shard passes), so the unit stays offered to the other
      // shards: before, it was left out for every target, and a shard whose units one target
      // refused was never offered another (rebalance-refused-targets.test.ts: shard_a's slots, each
      // refused towards shard_b, never proposed to shard_c). A unit refused towards two targets is
      // left out for all: most refusals are of the unit wherever it goes (its source's fence row, a
      // key's rows under another slot), and the rounds ({@link REFUSAL_ROUNDS}) are not to be spent
      // asking each shard in turn.
      units = census.units.flatMap((u) => {
        const to = refusedTargets.get(unitKey(u));
        if (to === undefined) return [u];
        return to.length >= 2 ? [] : [{ ...u, refusedTargets: to }];
      });
    }
  }

  /**
   * A service the orchestrator does not know would be stored, listed by /status with an error,
   * and evaluated as skipped forever; a misspelt override (`workr`) would leave `worker`
   * unchanged. 422 naming each one the document adds; those already configured stay allowed.
   */
  function refuseUnscaledServices(document: Record<string, unknown>, configured: Readonly<Record<string, unknown>>): void {
    const known = target.services?.();
    const named = document['services'];
    if (known === undefined || typeof named !== 'object' || named === null) return;
    const unknown = Object.keys(named).filter((s) => !known.includes(s) && !Object.hasOwn(configured, s));
    if (unknown.length === 0) return;
    const reason = `is not a service this deployment scales (it scales ${known.join(', ')})`;
    throw new ProblemError(422, `the configuration names ${unknown.length === 1 ? 'a service' : 'services'} this deployment does not scale: ${unknown.join(', ')}; it scales ${known.join(', ')}`, {
      title: 'Unknown service',
      invalidParams: unknown.map((s) => ({ name: `body.services.${s}`, reason })),
    });
  }

  async function latestDecisions(service: string, limit: number): Promise<StoredDecision[]> {
    return catalog.listDecisions({ service, limit });
  }

  return {
    async status(): Promise<StatusView> {
      const now = clock.now();
      const control = await available('reading the configuration', () => catalog.loadControl());
      const config = control.config;
      // By name: the catalog keeps the configuration as jsonb, which does not keep key order.
      const services = Object.keys(config.services).sort();
      const [tasks, states, lastApplied, lastScheduled] = await Promise.all([
        target.describe(services).catch((err: unknown) => new Map<string, TasksReading>(services.map((s) => [s, { ok: false, error: (err as Error).message }]))),
        available('reading service state', () => catalog.listServiceStates()),
        available('reading the history', () => catalog.lastAppliedDecisions(services)),
        available('reading the history', () => catalog.listDecisions({ limit: 1 })),
      ]);
      const stateOf = new Map<string, ServiceState>(states.map((s) => [s.service, s.state]));
      const lastEvaluation = lastScheduled[0]?.at;
      const enabled = control.globalEnabled && config.enabled;
      return {
        enabled,
        dry_run: config.dry_run,
        config_version: control.version,
        check_interval_seconds: config.check_interval,
        last_evaluation_at: lastEvaluation === undefined ? null : iso(lastEvaluation),
        next_evaluation_at: enabled ? iso(Math.max(now, (lastEvaluation ?? now) + config.check_interval * 1000)) : null,
        services: services.map((service) => {
          const cfg = resolveServiceConfig(config, service);
          const reading = tasks.get(service);
          const t = reading?.ok ? reading.tasks : undefined;
          const state = stateOf.get(service);
          const last = lastApplied.get(service);
          const remaining = (direction: 'out' | 'in', seconds: number): number => {
            const event = state ? lastEventIn(state, direction) : undefined;
            return event ? Math.max(0, Math.round((event.at + seconds * 1000 - now) / 1000)) : 0;
          };
          return {
            service,
            enabled: cfg.enabled && control.serviceEnabled[service] !== false,
            policy: cfg.policy,
            current: t?.running ?? null,
            desired: t?.desired ?? null,
            running: t?.running ?? null,
            pending: t?.pending ?? null,
            min: cfg.min_instances,
            max: cfg.max_instances,
            deployment_in_progress: t ? t.deploymentInProgress === true : null,
            last_action: last
              ? { at: iso(last.at), from: last.from, to: last.to, direction: last.direction, outcome: last.outcome, trigger: last.trigger, why: why(last) }
              : null,
            cooldown_remaining_seconds: { scale_out: remaining('out', cfg.cooldown_out), scale_in: remaining('in', cfg.cooldown_in) },
            ...(reading && !reading.ok ? { orchestrator_error: reading.error } : {}),
          };
        }),
      };
    },

    async metrics(): Promise<MetricsView> {
      const now = clock.now();
      const control = await available('reading the configuration', () => catalog.loadControl());
      const services = Object.keys(control.config.services).sort();
      const [readings, tasks] = await Promise.all([
        metrics.read(services, now).catch(() => new Map()),
        target.describe(services).catch(() => new Map<string, TasksReading>()),
      ]);
      const views = await Promise.all(
        services.map(async (service) => {
          const reading = readings.get(service);
          const t = tasks.get(service);
          if (reading?.ok && t?.ok) return metricsView(service, toSnapshot(reading.metrics, t.tasks.running, now));
          // Live metrics unavailable: show the last snapshot the controller recorded, with its own timestamp.
          const recorded = (await latestDecisions(service, 20).catch(() => [])).find((d) => d.metrics !== null);
          return metricsView(service, recorded?.metrics ?? null);
        }),
      );
      return { services: views };
    },

    async history(query): Promise<HistoryView> {
      try {
        const page = await available('reading the history', () =>
          deps.history.page({
            ...(query.service ? { service: query.service } : {}),
            ...(query.direction ? { direction: query.direction } : {}),
            ...(query.outcome ? { outcome: query.outcome } : {}),
            ...(query.trigger ? { trigger: query.trigger } : {}),
            ...(query.kind ? { kind: query.kind } : {}),
            ...(query.since ? { since: new Date(query.since) } : {}),
            ...(query.until ? { until: new Date(query.until) } : {}),
            ...(query.limit ? { limit: query.limit } : {}),
            ...(query.cursor ? { cursor: query.cursor } : {}),
          }),
        );
        return {
          next_cursor: page.nextCursor,
          items: page.items.map((i) => ({
            id: i.id,
            kind: i.kind,
            at: iso(i.at),
            service: i.service,
            type: i.type,
            trigger: i.trigger,
            policy: i.policy,
            from: i.from,
            to: i.to,
            direction: i.direction,
            outcome: i.outcome,
            dry_run: i.dryRun,
            reasons: i.reasons.map((r) => ({ ...r })),
            blocked: i.blocked.map((b) => ({ kind: b.kind, message: b.message, ...(b.until === undefined ? {} : { until: iso(b.until) }) })),
            actor: i.actor,
            error: i.error,
            detail: i.detail,
          })),
        };
      } catch (err) {
        if (err instanceof InvalidCursorError) {
          throw new ProblemError(400, err.message, { title: 'Invalid request', invalidParams: [{ name: 'query.cursor', reason: err.message }], cause: err });
        }
        throw err;
      }
    },

    async timeseries(query): Promise<TimeseriesView> {
      const q = timeseriesWindow(query, clock.now());
      const control = await available('reading the configuration', () => catalog.loadControl());
      if (q.service !== undefined) requireService(control.config, q.service);
      const services = q.service !== undefined ? [q.service] : Object.keys(control.config.services);
      const { buckets, changes } = await available('reading the history', async () => {
        try {
          return await deps.history.series(q);
        } catch (err) {
          throw new CatalogError('reading the time series', { cause: err });
        }
      });
      return {
        since: iso(q.since),
        until: iso(q.until),
        step_seconds: q.stepSeconds,
        services: services.map((service) => ({
          service,
          points: buckets
            .filter((b) => b.service === service)
            .map((b) => ({ at: iso(b.at), demand: b.demand, demand_max: b.demandMax, cpu: b.cpu, cpu_max: b.cpuMax, tasks: b.tasks })),
          decisions: changes
            .filter((c) => c.service === service)
            .map((c) => ({ at: iso(c.at), from: c.from, to: c.to, direction: c.direction, outcome: c.outcome, trigger: c.trigger, dry_run: c.dryRun, why: why({ ...c, error: c.error ?? undefined }) })),
        })),
      };
    },

    async getConfig(): Promise<ConfigEnvelope> {
      const control = await available('reading the configuration', () => catalog.loadControl());
      const stored = await available('reading the configuration', () => catalog.getConfig());
      return {
        version: control.version,
        updated_at: stored ? iso(stored.changedAt) : null,
        updated_by: stored?.changedBy ?? null,
        config: control.config as unknown as Record<string, unknown>,
      };
    },

    async updateConfig(change, actor, comment): Promise<ConfigEnvelope> {
      let before: ScalingConfig | undefined;
      const written = await committing('writing the configuration', () =>
        catalog.updateConfig(
          (current) => {
            before = current.version > 0 ? current.config : undefined;
            const document = change({ version: current.version, config: current.config as unknown as Record<string, unknown> });
            refuseUnscaledServices(document, current.config.services);
            return document;
          },
          { actor, comment },
        ),
        report,
      );
      // Its wait failed, the version is in force: marked from the configuration stored now.
      if (written.unsettled !== undefined) return markThenRefuse(written.unsettled, () => markCurrentConfigStops(before));
      const stored = written.value;
      await markConfigStops(before, stored);
      return { version: stored.version, updated_at: iso(stored.changedAt), updated_by: stored.changedBy, config: stored.config as unknown as Record<string, unknown> };
    },

    async putConfig(document, expectedVersion, actor, comment = 'PUT /config'): Promise<ConfigEnvelope> {
      const control = await available('reading the configuration', () => catalog.loadControl());
      refuseUnscaledServices(document, control.config.services);
      try {
        const before = control.version > 0 ? control.config : undefined;
        const written = await committing('writing the configuration', () => catalog.putConfig(document, { actor, ifVersion: expectedVersion, comment }), report);
        if (written.unsettled !== undefined) return await markThenRefuse(written.unsettled, () => markCurrentConfigStops(before));
        const stored = written.value;
        await markConfigStops(before, stored);
        return { version: stored.version, updated_at: iso(stored.changedAt), updated_by: stored.changedBy, config: stored.config as unknown as Record<string, unknown> };
      } catch (err) {
        if (err instanceof ConfigVersionConflictError) throw new StaleVersionError(err.expected, err.current);
        throw err;
      }
    },

    async setEnabled(enabled, scope, actor) {
      const control = await available('reading the configuration', () => catalog.loadControl());
      if (scope.service !== undefined) requireService(control.config, scope.service);
      const key = scope.service ?? '*';
      // Whether it changed is decided by the catalog under its lock: a value read here first
      // could be stale by the time the write lands (8 concurrent starts all saw "stopped").
      const written = await committing('recording the switch', () => catalog.setSwitch({ scope: key, enabled, actor, ...(scope.reason ? { reason: scope.reason } : {}) }), report);
      // An evaluation without the catalog cannot read the switch: the stop is also marked on the
      // services (ECS tags), and a start clears that mark. Both after the catalog's write, so a
      // failure leaves the safer state (marked but started) or is reported, and a retry repairs
      // it (the call is idempotent). Marked again even when `changed` is false, for that retry.
      // A stop whose wait for the evaluations in flight failed is in force all the same: marked too.
      const mark = async (): Promise<void> => {
        if (target.markStop === undefined) return;
        try {
          // After a start, `enabled: false` in the configuration still stops the scope: its mark stays.
          const config = enabled ? await catalog.getConfig() : undefined;
          const by = !enabled
            ? switchMarkValue(actor, clock.now())
            : config !== undefined && disabledByConfig(config.config, key)
              ? configMarkValue(config.changedBy, config.version, config.changedAt)
              : undefined;
          await target.markStop(key, by);
        } catch (err) {
          const why = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
          throw new UnavailableError(
            enabled
              ? `the start is stored and in force for every evaluation that reaches the catalog, but the stop's mark could not be cleared from the services (${why}): an evaluation without the catalog leaves them unscaled; POST /start again to retry`
              : `the stop is stored and in force for every evaluation that reaches the catalog, but it could not be marked on the services, where an evaluation without the catalog looks for it (${why}): such an evaluation would not see it; POST /stop again to retry the mark`,
            { cause: err },
          );
        }
      };
      if (written.unsettled !== undefined) return markThenRefuse(written.unsettled, mark);
      await mark();
      return { scope: scope.service ?? 'global', enabled, changed: written.value.changed };
    },

    async recommendations(): Promise<RecommendationsView> {
      const now = clock.now();
      const control = await available('reading the configuration', () => catalog.loadControl());
      const stored = await available('reading the history', () => catalog.listDecisions({ limit: deps.recommendationWindow ?? 2000 }));
      const decisions: HistoryDecision[] = stored.map((d) => ({ at: d.at, service: d.service, direction: d.direction, outcome: d.outcome, from: d.from, to: d.to, metrics: d.metrics }));
      const replays = Object.keys(control.config.services)
        .map((s) => replayFor(s, resolveServiceConfig(control.config, s).policy, decisions))
        .filter((r): r is PolicyReplay => r !== undefined);
      let shards: ShardFacts | undefined;
      if (deps.sharding) {
        const s = deps.sharding;
        const [health, check] = await Promise.all([
          (async () => {
            // As GET /shards/health reports, the slot map included when the catalog answers.
            const slotMap = await s.slotMaps.current().catch(() => undefined);
            return s.inspector.health(slotMap ? { slotMap } : {});
          })().catch(() => undefined),
          (async () => {
            // As GET /shards/rebalance-check plans, from the same measurement.
            const { census, inFlight } = await rebalanceCensus();
            return { result: await withoutRefusedMoves(census, { maxUnitRows: s.mover.maxUnitRows }), inFlight };
          })().catch((err: unknown) => {
            const failed = rebalanceFailure(err);
            // A 503 names its shard (the inspector logged the driver's text); a 409 is a state of
            // the shards. A 500 is the catalog's or the driver's failure, told by its kind only.
            // (A ProblemError's failure, rebalanceCatalogReads's, is logged already.)
            if (failed.status === 500 && !(err instanceof ProblemError)) reportSafely(s.onFailure, { what: 'rebalance check (GET /recommendations)', error: err });
            return { failed };
          }),
        ]);
        shards = {
          ...('failed' in check ? { rebalanceUnavailable: check.failed } : {}),
          ...(health?.slotMap && health.slotMap.unconfigured.length > 0 ? { unconfigured: health.slotMap.unconfigured } : {}),
          ...(!('failed' in check)
            ? {
                imbalance: check.result.imbalance,
                rebalanceNeeded: check.result.needed,
                rebalanceMoves: check.result.moves.length,
                movesInFlight: check.inFlight,
                threshold: check.result.threshold,
                by: check.result.by,
              }
            : {}),
          ...(health ? { nodes: nodesOf(health) } : {}),
          ...(s.maxLagSeconds === undefined ? {} : { maxLagSeconds: s.maxLagSeconds }),
          ...(s.maxLagBytes === undefined ? {} : { maxLagBytes: s.maxLagBytes }),
        };
      }
      const items = recommend({ now, config: control.config, decisions, replays, ...(shards ? { shards } : {}) });
      return { generated_at: iso(now), items: items.map((r) => ({ ...r })) };
    },

    async evaluate(scope, actor): Promise<EvaluationView> {
      const control = await available('reading the configuration', () => catalog.loadControl());
      if (scope.service !== undefined) requireService(control.config, scope.service);
      const preview = await controller.preview({ ...(scope.service ? { services: [scope.service] } : {}), actor });
      return {
        dry_run: true,
        at: iso(preview.at),
        services: preview.decisions.map((d) => ({
          service: d.service,
          policy: d.policy,
          from: d.outcome === 'skipped' ? null : d.from,
          to: d.outcome === 'skipped' ? null : d.to,
          direction: d.outcome === 'skipped' ? null : d.direction,
          would_change: d.direction !== 'none' && d.blocked.every((b) => b.kind === 'dry_run'),
          reasons: d.reasons.map((r) => ({ ...r })),
          blocked: d.blocked.filter((b) => b.kind !== 'dry_run').map((b) => ({ kind: b.kind, message: b.message, ...(b.until === undefined ? {} : { until: iso(b.until) }) })),
          error: d.error ?? null,
        })),
      };
    },

    async shardStatistics({ exact }) {
      const s = sharding();
      // The directory with the map: an exact count then counts each unit's rows where the map or
      // the directory gives it, as the rebalance census does (shard-inspector.ts, ownedRowsSql).
      // Read only for exact counts: estimates do not read it (only a table never analysed is
      // counted exactly then, and reads it), and read whole it takes a round trip a 1,000 pins
      // (2-6 s at 100,000 pins on a loaded machine, bench/statistics-directory.ts).
      const [slotMap, directory] = await Promise.all([s.slotMaps.current(), exact ? s.directory.all() : undefined]);
      return s.inspector.statistics({ exact, slotMap, directory: directory ?? (() => s.directory.all()), routing: moveRoutingOf(s.router.config) });
    },

    async shardHealth() {
      const s = sharding();
      // The nodes' health does not wait on the catalog: without it, the report leaves the map out.
      const slotMap = await s.slotMaps.current().catch(() => undefined);
      return s.inspector.health(slotMap ? { slotMap } : {});
    },

    async rebalanceCheck(options) {
      const s = sharding();
      try {
        // Within the mover's limit: a proposed move it would refuse (422 'too-large') misleads.
        return await withoutRefusedMoves((await rebalanceCensus()).census, { ...options, maxUnitRows: s.mover.maxUnitRows });
      } catch (err) {
        // A plan over an unreachable shard would be blind; shards of unequal weights cannot be
        // balanced towards equal loads. Both are states of the system, not server faults.
        if (err instanceof ShardInspectionError) throw new UnavailableError(err.message, { cause: err });
        if (err instanceof RebalancePlanError) throw new ConflictError(err.message, { cause: err });
        throw err;
      }
    },

    async route(key) {
      const s = sharding();
      await adoptNewerMap();
      let r;
      try {
        r = await s.router.resolve(key);
      } catch (err) {
        if (err instanceof RoutingError) {
          // The directory's own error stays in the logs: no database text reaches a client.
          if (err.reason === 'directory-unavailable') throw new UnavailableError('the shard directory cannot be read right now', { cause: err });
          if (err.reason === 'invalid-key') {
            throw new ProblemError(400, err.message, { title: 'Invalid request', invalidParams: [{ name: 'query.key', reason: err.message }], cause: err });
          }
          // The directory strategy rejects keys it does not hold (when configured to).
          throw new NotFoundError(err.message, { cause: err });
        }
        throw err;
      }
      // The canonical form: the text that was hashed or looked up, and that rows are stored under.
      return { key: canonicalKey(key), shard_id: r.shardId, slot: r.slot, map_version: r.mapVersion, strategy: r.strategy, source: r.source };
    },

    async startMove(request, actor) {
      const s = sharding();
      // The plan's reads of the shards end at the request's deadline (Mover.plan's `until`): a
      // shard table held ACCESS EXCLUSIVE (a migration, a VACUUM FULL) held the request past API
      // Gateway's 504 before, and its read's backend went on waiting (h134). Outside a request
      // (no deadline), unbounded as before.
      const left = requestTimeLeftMs();
      const bound = left === undefined ? {} : { until: Date.now() + left };
      try {
        const job = await reachable('starting the move', () =>
          request.kind === 'slot'
            ? s.mover.plan({ kind: 'slot', slot: slotNumber(request.unit), to: request.to, createdBy: actor, reason: 'POST /shards/moves' }, bound)
            : s.mover.plan({ kind: 'directory', key: request.unit, to: request.to, createdBy: actor, reason: 'POST /shards/moves' }, bound),
          s.onFailure,
        );
        s.runMove(job.id);
        return jobView(job);
      } catch (err) {
        if (err instanceof MoveRequestError) {
          // A well-formed request naming a shard that does not exist, the unit's own shard, a unit
          // the routing strategy does not route by, or one too large for one move cannot be carried
          // out: 422, with the field.
          if (err.problem === 'invalid') throw invalidMoveRequest(err);
          const field = err.problem === 'strategy' ? 'body.kind' : err.problem === 'too-large' ? 'body.unit' : 'body.to';
          throw new ProblemError(422, err.message, { invalidParams: [{ name: field, reason: err.message }], cause: err });
        }
        if (err instanceof MoveConflictError || err instanceof MoveBusyError) throw new ConflictError(err.message, { cause: err });
        // The request's deadline passed before the plan read or recorded anything more (Mover.plan's
        // `until`): 503, nothing recorded. Or its commit was sent and not answered: the job may be
        // recorded (503, in words that say how to find out).
        if (err instanceof MovePlanOutOfTime || err instanceof MovePlanOutcomeUnknown) throw new UnavailableError(`starting the move: ${err.message}`, { cause: err });
        // The catalog refused the plan's connection (nothing listening, no free slot: 503 with
        // Retry-After, it answers again in its time) or its login (a 500: the credentials are the
        // deployment's to fix, and a client told to retry would retry for nothing; the words name
        // the one window that ends by itself, a rotation of the login's secret under way: h160),
        // named with the cause by its kind; the driver's text (address, login) to the log (h156).
        // A shard the checks read refused their login, or its secret could not be read again
        // (h168): as the catalog's, the shard named; a 503 only where the source passes by itself.
        if (err instanceof MovePlanShardLoginRefused) {
          reportSafely(s.onFailure, { what: 'starting the move', shardId: err.shard, error: err.cause ?? err });
          if (err.fault === 'credentials') throw new ProblemError(500, `starting the move: ${err.message}`, { cause: err });
          throw new UnavailableError(`starting the move: ${err.message}`, { cause: err });
        }
        if (err instanceof MovePlanCatalogRefused) {
          reportSafely(s.onFailure, { what: 'starting the move', error: err.cause ?? err });
          if (err.fault === 'credentials') throw new ProblemError(500, `starting the move: ${err.message}`, { cause: err });
          throw new UnavailableError(`starting the move: ${err.message}`, { cause: err });
        }
        throw err;
      }
    },

    async directory(query) {
      const s = sharding();
      let after: string | undefined;
      if (query.cursor !== undefined) {
        const decoded = Buffer.from(query.cursor, 'base64url').toString('utf8');
        // Only what next_cursor hands out: a key encodes back to the same text (bytes that are not
        // UTF-8 would be read as U+FFFD, another key), and holds no NUL, which PostgreSQL's text
        // refuses (a 500 for a forged cursor, not the 400 it is).
        const ours = /^[A-Za-z0-9_-]+$/.test(query.cursor) && Buffer.from(decoded, 'utf8').toString('base64url') === query.cursor && !decoded.includes('\u0000');
        if (!ours || !decoded.startsWith('k:')) throw invalid('query.cursor', 'is not a cursor this API returned');
        after = decoded.slice(2);
      }
      const page = await s.directory.page({ ...(query.shard ? { shardId: query.shard } : {}), ...(after === undefined ? {} : { after }), limit: query.limit ?? 100 });
      return {
        items: page.entries.map((e) => ({ key: e.key, shard_id: e.shardId, version: e.version, updated_at: e.updatedAt.toISOString(), updated_by: e.updatedBy })),
        // Opaque, so that clients do not build cursors of their own: the key, prefixed and base64url-encoded.
        next_cursor: page.next === null ? null : Buffer.from(`k:${page.next}`, 'utf8').toString('base64url'),
      };
    },

    async shardFences({ all }) {
      const s = sharding();
      // A shard that does not answer in time is listed unreachable; the catalog not answering is a 503.
      return reachable('listing the fence rows', () => s.fences.list({ all }), s.onFailure);
    },

    async cancelMove(id) {
      const s = sharding();
      if (!/^\d{1,15}$/.test(id)) throw new NotFoundError(`no move ${id}`);
      try {
        const job = await reachable(`cancelling move ${id}`, () => s.mover.requestCancel(Number(id)), s.onFailure);
        // Where moves run in this process (local mode), the rollback starts now.
        s.runMove(job.id);
        return jobView(job);
      } catch (err) {
        if (err instanceof MoveRequestError) throw new NotFoundError(`no move ${id}`, { cause: err });
        if (err instanceof MoveNotCancellableError) throw new ConflictError(err.message, { cause: err });
        // Changed while cancelling (a run moved it on): asking again decides.
        if (err instanceof MoveError) throw new ConflictError(err.message, { cause: err });
        throw err;
      }
    },

    async getMove(id) {
      const s = sharding();
      if (!/^\d{1,15}$/.test(id)) throw new NotFoundError(`no move ${id}`);
      try {
        return jobView(await reachable(`reading move ${id}`, () => s.mover.get(Number(id)), s.onFailure));
      } catch (err) {
        if (err instanceof MoveRequestError) throw new NotFoundError(`no move ${id}`, { cause: err });
        throw err;
      }
    },
  };
}

/**
 * The mover's request names the unit `slot` or `key`; this API's body names it `unit`. A 400
 * names the body's fields, so a client learns which of its own fields to fix, never the
 * mover's names for them.
 */
const BODY_FIELD_OF_MOVE_FIELD: Readonly<Record<string, string>> = { slot: 'body.unit', key: 'body.unit', to: 'body.to', kind: 'body.kind' };

function invalidMoveRequest(err: MoveRequestError): ProblemError {
  const params = err.issues.map((i) => ({ name: BODY_FIELD_OF_MOVE_FIELD[i.field] ?? 'body', reason: i.reason }));
  if (params.length === 0) params.push({ name: 'body', reason: err.message });
  return new ProblemError(400, params.map((p) => `${p.name}: ${p.reason}`).join('; '), { title: 'Invalid request', invalidParams: params, cause: err });
}

function slotNumber(unit: string): number {
  if (!/^\d{1,5}$/.test(unit)) {
    throw new ProblemError(400, `a slot move needs the slot number as unit, got ${JSON.stringify(unit)}`, {
      title: 'Invalid request',
      invalidParams: [{ name: 'body.unit', reason: 'must be a slot number for kind "slot"' }],
    });
  }
  return Number(unit);
}

/**
 * The most plans the rebalance check makes to leave out the units the move plan refuses: each
 * plan after the first checks only the moves it made anew, and refusals found in this many in a
 * row (units refused by the dozen, none settled) leave the rest for the next snapshot.
 */
const REFUSAL_ROUNDS = 5;

/**
 * The time the rebalance check gives the move plan's checks of its moves, every round's together
 * ({@link Mover.refusals}): about 1 ms a move on a healthy shard (bench/rebalance-refusals.ts), so
 * thousands of moves fit. The shards' pools set no query timeout, and a check waiting on a lock
 * (a migration's ACCESS EXCLUSIVE, an operator's) held the whole check, past the API's request
 * deadline (27 s), with the census already made; now the moves not checked by then are not
 * proposed, and the check answers.
 */
const REFUSAL_CHECKS_MS = 5_000;

/**
 * What GET /shards/rebalance-check answers for a check that failed, for GET /recommendations to say
 * why its shard figures are missing: 409 for a state that refuses to plan, 503 for an unreachable shard.
 */
function rebalanceFailure(err: unknown): { status: number; reason: string } {
  // Both name no address, login or relation of a server's (the inspector states failures by kind).
  if (err instanceof RebalancePlanError) return { status: 409, reason: err.message };
  if (err instanceof ShardInspectionError) return { status: 503, reason: err.message };
  // The check's reads of the catalog ended by its session's own timeout, or its connection refused
  // (rebalanceCatalogReads: in words naming the catalog and the setting or the kind, no server text;
  // the driver's error already logged), as GET /shards/rebalance-check answers them (h156).
  if (err instanceof UnavailableError) return { status: 503, reason: err.message };
  // Its reads' login refused by the catalog (rebalanceCatalogReads: the credentials or a rotation
  // under way, named; the driver's error already logged; h160).
  if (err instanceof ProblemError) return { status: err.status, reason: err.detail };
  // The catalog's or the driver's own text is not for a response (README): its kind only.
  return { status: 500, reason: `the check failed: ${failureKind(err)}` };
}

function nodesOf(health: HealthReport): ShardFacts['nodes'] {
  return health.shards.flatMap((shard) =>
    [shard.primary, ...shard.replicas].map((n) => ({
      nodeId: n.nodeId,
      shardId: n.shardId,
      role: n.role,
      lagSeconds: n.facts.replication?.lagSeconds ?? null,
      lagBytes: n.facts.replication?.lagBytes ?? null,
      connections: n.facts.connections ?? null,
      maxConnections: n.facts.maxConnections ?? null,
    })),
  );
}
