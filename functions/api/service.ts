/**
 * What the scaling API needs from the rest of the system, in the API's own terms. The routes
 * depend only on this port; `functions/api/wiring.ts` implements it over the controller's
 * catalog and the sharding layer, and tests can implement it over anything real.
 */
import type { z } from 'zod';
import type {
  configEnvelopeSchema,
  directoryPageSchema,
  DirectoryQuery,
  evaluationSchema,
  fenceListingSchema,
  fencePageSchema,
  healthReportSchema,
  historySchema,
  HistoryQuery,
  metricsSchema,
  moveJobSchema,
  moveRequestSchema,
  rebalanceCheckSchema,
  recommendationsSchema,
  routeResultSchema,
  startStopResultSchema,
  statisticsReportSchema,
  statusSchema,
  timeseriesSchema,
} from './schemas.js';

/**
 * A response body's type, read-only all the way down, so that the sharding layer's readonly
 * reports satisfy it as they are (a mutable value satisfies it too).
 */
type DeepReadonly<T> = T extends readonly (infer E)[] ? readonly DeepReadonly<E>[] : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;

export type StatusView = z.input<typeof statusSchema>;
export type MetricsView = z.input<typeof metricsSchema>;
export type HistoryView = z.input<typeof historySchema>;
export type TimeseriesView = z.input<typeof timeseriesSchema>;
export type ConfigEnvelope = z.input<typeof configEnvelopeSchema>;
export type StartStopResult = z.input<typeof startStopResultSchema>;
export type RecommendationsView = z.input<typeof recommendationsSchema>;
export type EvaluationView = z.input<typeof evaluationSchema>;
export type RouteView = z.input<typeof routeResultSchema>;
export type DirectoryPageView = z.input<typeof directoryPageSchema>;
export type MoveRequest = z.output<typeof moveRequestSchema>;
export type ShardHealthView = DeepReadonly<z.input<typeof healthReportSchema>>;
export type ShardStatisticsView = DeepReadonly<z.input<typeof statisticsReportSchema>>;
export type RebalanceCheckView = DeepReadonly<z.input<typeof rebalanceCheckSchema>>;
export type FenceListingView = DeepReadonly<z.input<typeof fenceListingSchema>>;
/** One page of a {@link FenceListingView}, as GET /shards/fences answers it. */
export type FencePageView = DeepReadonly<z.input<typeof fencePageSchema>>;
/** A move job; `id` is text and times are ISO 8601 strings, as in the JSON. */
export type MoveJobView = DeepReadonly<z.input<typeof moveJobSchema>>;

/** A service name the configuration does not know. */
export class UnknownServiceError extends Error {
  override readonly name = 'UnknownServiceError';
  constructor(
    readonly service: string,
    readonly known: readonly string[],
  ) {
    super(`unknown service ${service}; known services: ${known.join(', ')}`);
  }
}

/** An optimistic-concurrency conflict: the configuration changed since the caller read it. */
export class StaleVersionError extends Error {
  override readonly name = 'StaleVersionError';
  constructor(
    readonly expected: number,
    readonly current: number,
  ) {
    super(`the configuration is at version ${current}, not ${expected}; GET it again and retry with the new ETag`);
  }
}

/** A resource that does not exist (a move id, a key in no shard). */
export class NotFoundError extends Error {
  override readonly name = 'NotFoundError';
}

/** A request that is well-formed but cannot be carried out in the current state. */
export class ConflictError extends Error {
  override readonly name = 'ConflictError';
}

/** A dependency (catalog, a shard) is unavailable right now. */
export class UnavailableError extends Error {
  override readonly name = 'UnavailableError';
}

/** The operations behind the scaling API's endpoints. */
export interface ScalingApiPort {
  status(): Promise<StatusView>;
  metrics(): Promise<MetricsView>;
  history(query: HistoryQuery): Promise<HistoryView>;
  /**
   * Per service, demand, CPU and tasks bucketed over a window (default: the hour before now), and
   * the changes in it. A window or step out of bounds is a 400 naming the parameter.
   */
  timeseries(query: { service?: string; since?: Date; until?: Date; stepSeconds?: number }): Promise<TimeseriesView>;
  getConfig(): Promise<ConfigEnvelope>;
  /**
   * Replaces the configuration with `document` (already validated by the route; stored as
   * written, so defaults stay defaults) when `expectedVersion` is current; throws
   * {@link StaleVersionError} otherwise.
   */
  putConfig(document: Record<string, unknown>, expectedVersion: number, actor: string, comment?: string): Promise<ConfigEnvelope>;
  /**
   * Stores `change(current)` as the next version, writers serialised from the read to the write,
   * so that concurrent changes all apply, in turn (PATCH). `current` is the configuration as GET
   * /config returns it; what `change` throws is thrown unchanged and nothing is stored.
   */
  updateConfig(change: (current: { readonly version: number; readonly config: Record<string, unknown> }) => Record<string, unknown>, actor: string, comment: string): Promise<ConfigEnvelope>;
  setEnabled(enabled: boolean, scope: { service?: string; reason?: string }, actor: string): Promise<StartStopResult>;
  recommendations(): Promise<RecommendationsView>;
  evaluate(scope: { service?: string }, actor: string): Promise<EvaluationView>;
  shardStatistics(options: { exact: boolean }): Promise<ShardStatisticsView>;
  shardHealth(): Promise<ShardHealthView>;
  rebalanceCheck(options: { threshold?: number; by?: 'bytes' | 'rows' }): Promise<RebalanceCheckView>;
  route(key: string): Promise<RouteView>;
  /** One page of the shard directory in key order; a malformed cursor is a 400 naming `query.cursor`. */
  directory(query: DirectoryQuery): Promise<DirectoryPageView>;
  /**
   * The shards' write_fences rows no live move explains (with `all`, every row), as
   * `ca-dms-scaling shards fences` lists them without --settle; read without locking anything.
   */
  shardFences(options: { all: boolean }): Promise<FenceListingView>;
  startMove(request: MoveRequest, actor: string): Promise<MoveJobView>;
  getMove(id: string): Promise<MoveJobView>;
  /** Asks for a move to be cancelled: 404 unknown, 409 past the flip or finished. */
  cancelMove(id: string): Promise<MoveJobView>;
}
