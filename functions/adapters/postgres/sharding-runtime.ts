/**
 * The sharding layer assembled over a validated sharding configuration and the catalog's pool:
 * pools for every primary and replica, the slot map and directory stores, the router, the shard
 * writer, the replica reader, the inspector and the mover. Local mode and the API function both
 * build it here, so they run the same layer.
 *
 * @example
 * ```ts
 * const sharding = await createShardingRuntime({ config, catalog: catalogPool, actor: 'scaling-api' });
 * const route = await sharding.router.resolve(userId);
 * await sharding.close();
 * ```
 */
import type pg from 'pg';
import type { ShardingConfig, ShardingEnv } from '../../core/sharding/config.js';
import { moveRoutingOf } from '../../core/sharding/move-machine.js';
import { freshnessBoundsFromConfig } from '../../core/sharding/replica-choice.js';
import { ShardRouter } from '../../core/sharding/router.js';
import { buildSlotMap } from '../../core/sharding/slot-map.js';
import { DirectoryStore } from './directory-store.js';
import { listFences, type FenceReview } from './fence-review.js';
import { LeaseStore } from './lease-store.js';
import { createMovesLookup } from './move-lookup.js';
import type { MovesLookup } from '../../core/sharding/lost-before-move.js';
import { Mover, type MoverOptions } from './mover.js';
import { createShardReader, type ShardReader } from './read-transaction.js';
import { ReplicaReader } from './replica-reader.js';
import { withinRequestDeadline } from './request-deadline.js';
import { otherRoutingsRemark, recordRuntimeRouting } from './runtime-routings.js';
import { ShardInspector, type EndpointFactsSource, type InspectionFailure } from './shard-inspector.js';
import { ShardPools, type ShardPoolOptions } from './shard-pools.js';
import { SlotMapStore } from './slot-map-store.js';
import { createShardWriter, routerForWrites, type ShardWriter } from './write-transaction.js';

export interface ShardingRuntimeOptions {
  readonly config: ShardingConfig;
  /** The catalog database (slot maps, directory, move jobs), already migrated. */
  readonly catalog: pg.Pool;
  /** Recorded as the publisher of the first slot map and of moves, and beside the routing this runtime runs with (`catalog.runtime_routings`). */
  readonly actor: string;
  readonly pools?: ShardPoolOptions;
  /** Start the replica reader's health loop (a long-running process wants it; a Lambda API call does not). */
  readonly readReplicas?: boolean;
  /** RDS/CloudWatch facts merged into health reports (AWS). */
  readonly cloud?: EndpointFactsSource;
  /** How long a move waits for writers older than its change capture before it stops, resumable (the mover's default, 30 s, when absent). */
  readonly moveDrainTimeoutMs?: number;
  /** The mover's {@link MoverOptions.planHook}: tests change the catalog under a plan at a chosen step. */
  readonly movePlanHook?: MoverOptions['planHook'];
  /**
   * Told each failure the inspector and the fence listing report by its kind only, with the
   * driver's error: its text (addresses, logins, relations) is for the log, never for the API's
   * answers (README, "No response carries ... a database's error text").
   */
  readonly onInspectionFailure?: (failure: InspectionFailure) => void;
  /**
   * Told the catalog's error where the routing this runtime runs with could not be recorded
   * (`catalog.runtime_routings`, runtime-routings.ts: a catalog without sharding migration 022
   * during a deploy, a login without its grant). The runtime starts all the same: the record is
   * for `ca-dms-scaling shards fences`, which without it cannot check an operator's routing
   * against this runtime's; routing does not need it.
   */
  readonly onRoutingNotRecorded?: (error: unknown) => void;
  /**
   * The environment `config` was loaded with (its `SHARDING_ENABLED` overrides the document's
   * `enabled`): a move refused because sharding is disabled names which of the two disabled it.
   */
  readonly env?: ShardingEnv;
}

export interface ShardingRuntime {
  readonly config: ShardingConfig;
  readonly pools: ShardPools;
  /** Primary pool of every shard, by shard id. */
  readonly primaries: ReadonlyMap<string, pg.Pool>;
  readonly slotMaps: SlotMapStore;
  readonly directory: DirectoryStore;
  readonly router: ShardRouter;
  readonly writer: ShardWriter;
  /** Present when `readReplicas` was asked for. */
  readonly reader?: ReplicaReader;
  /** Keyed reads that check the unit's fence in their snapshot (see `read-transaction.ts`); present with `reader`. */
  readonly reads?: ShardReader;
  readonly inspector: ShardInspector;
  /**
   * The shards' `write_fences` rows no live move explains, listed as `ca-dms-scaling shards fences`
   * lists them without `--settle`, read without its lock (fence-review.ts `listFences`): on the
   * inspector's pools (the API's monitor login), each shard within `health_check_timeout_seconds`
   * or what the request being served has left, whichever is less (request-deadline.ts).
   */
  readonly fences: { list(options?: { readonly all?: boolean }): Promise<FenceReview & { readonly otherRoutings?: string }> };
  readonly mover: Mover;
  /** The last move of a key's unit off a shard, from the catalog (the documents API's check of a token of another shard). */
  readonly moves: MovesLookup;
  /** Named leases in the catalog (one moves worker at a time). */
  readonly leases: LeaseStore;
  /**
   * Hands a failure that an answer names by its kind only (the API's 503 when the catalog or a
   * shard does not answer a move's request, a recommendation whose rebalance check failed) to
   * {@link ShardingRuntimeOptions.onInspectionFailure}, the inspector's and the fence listing's
   * sink, so that its driver's text reaches the same log; a throwing logger changes no answer.
   */
  reportFailure(failure: InspectionFailure): void;
  /** Stops the replica reader and ends every shard pool (not the catalog's). */
  close(): Promise<void>;
}

/** Builds the layer; publishes the first slot map from the configured weights when there is none. */
export async function createShardingRuntime(options: ShardingRuntimeOptions): Promise<ShardingRuntime> {
  const { config, catalog } = options;
  const routing = moveRoutingOf(config, options.env);
  const pools = ShardPools.fromConfig(config, options.pools ?? {});
  const closers: Array<() => Promise<void>> = [() => pools.end()];
  const closeAll = async (): Promise<void> => {
    await Promise.all(closers.map((c) => c().catch(() => undefined)));
  };
  try {
    const primaries = new Map(pools.shardIds().map((id) => [id, pools.primary(id).pool]));
    // Both stores count a unit's rows on its owner before a change of its owner made outside a
    // move, and refuse it where the rows would be left behind (issue #15; the mover's publications
    // say they carry the rows). A pinned key's rows are left out of a slot's count only where pins
    // route (as the router decides): with override_hash off they go with the slot, and the
    // directory store counts nothing for a pin (it routes no key).
    const pinsOverrideHash = config.strategy === 'directory_based' || (config.strategy === 'hash_based' && config.directory.override_hash);
    const slotMaps = new SlotMapStore(catalog, { shardPools: primaries, pinsOverrideHash });
    if ((await slotMaps.latest()) === null) {
      await slotMaps.initialise(
        buildSlotMap(config.shards.map((s) => ({ shardId: s.shard_id, weight: s.weight }))),
        options.actor,
        `initial map for ${config.shards.length} shard(s)`,
      );
    }
    const directory = new DirectoryStore(catalog, { ttlMs: config.directory.cache_ttl_seconds * 1000, shards: pools.shardIds(), shardPools: primaries, pinsOverrideHash });
    const router = ShardRouter.fromConfig(config, { slotMap: await slotMaps.current(), directory });
    // The routing this runtime runs with, recorded for `shards fences` (runtime-routings.ts), which
    // judges a key's fence rows by it: one autocommit statement per runtime built (a cold start),
    // none per request. A failure is told and the start goes on: a runtime that could not start
    // for want of a record would take down routing for a review's sake (a catalog without
    // sharding migration 022 while a deploy applies it after the code).
    await recordRuntimeRouting(catalog, options.actor, routing).catch((err: unknown) => {
      try {
        options.onRoutingNotRecorded?.(err);
      } catch {
        // A throwing logger changes nothing: the runtime starts.
      }
    });
    const keyRouter = routerForWrites(router, slotMaps, directory);
    const writer = createShardWriter({ router: keyRouter, primaries });
    let reader: ReplicaReader | undefined;
    if (options.readReplicas === true) {
      reader = new ReplicaReader(pools, {
        bounds: freshnessBoundsFromConfig(config),
        intervalMs: config.health_check_interval_seconds * 1000,
        probeTimeoutMs: config.health_check_timeout_seconds * 1000,
      });
      await reader.start();
    }
    // Health checks get their own small pools so they never queue behind application queries
    // (a busy shard must not look dead because its pool was full).
    const inspectionPools = ShardPools.fromConfig(config, {
      max: 2,
      applicationName: 'ca-dms-inspector',
      ...(options.pools?.ca ? { ca: options.pools.ca } : {}),
      ...(options.pools?.credentials ? { credentials: options.pools.credentials } : {}),
    });
    closers.push(() => inspectionPools.end());
    const inspector = new ShardInspector(inspectionPools, {
      timeoutMs: config.health_check_timeout_seconds * 1000,
      weights: Object.fromEntries(config.shards.map((s) => [s.shard_id, s.weight])),
      ...(options.cloud ? { cloud: options.cloud } : {}),
      ...(options.onInspectionFailure ? { onFailure: options.onInspectionFailure } : {}),
    });
    const inspectionPrimaries = new Map(inspectionPools.shardIds().map((id) => [id, inspectionPools.primary(id).pool]));
    const fences: ShardingRuntime['fences'] = {
      // The configuration's routing tells which shard a key's directory rows are judged against.
      // Then, where a runtime recorded another routing recently, a remark that says so
      // (runtime-routings.ts, otherRoutingsRemark): the rows are judged by this runtime's alone.
      list: async (listing = {}) => {
        const review = await listFences({
          catalog,
          shards: inspectionPrimaries,
          // Read by listFences as each of its waits on a shard begins (the shard's fence rows,
          // then, one after another, the rows behind each `moved` row it judges): each within the
          // timeout or what the request being served has left, whichever is less
          // (request-deadline.ts: the API names a silent shard before API Gateway's 504). Read
          // once, the bound would let the counts after the first read run past the deadline.
          get timeoutMs() {
            return withinRequestDeadline(config.health_check_timeout_seconds * 1000);
          },
          all: listing.all === true,
          routing,
          ...(options.onInspectionFailure ? { onFailure: options.onInspectionFailure } : {}),
        });
        const otherRoutings = await otherRoutingsRemark(catalog, routing);
        return otherRoutings === undefined ? review : { ...review, otherRoutings };
      },
    };
    const mover = new Mover({
      catalog,
      shards: primaries,
      slotMaps,
      directory,
      actor: options.actor,
      routing,
      ...(options.moveDrainTimeoutMs !== undefined ? { drainTimeoutMs: options.moveDrainTimeoutMs } : {}),
      ...(options.movePlanHook !== undefined ? { planHook: options.movePlanHook } : {}),
    });
    return {
      config,
      pools,
      primaries,
      slotMaps,
      directory,
      router,
      writer,
      ...(reader ? { reader, reads: createShardReader({ router: keyRouter, reader }) } : {}),
      inspector,
      fences,
      mover,
      moves: createMovesLookup(catalog),
      leases: new LeaseStore(catalog),
      reportFailure(failure) {
        try {
          options.onInspectionFailure?.(failure);
        } catch {
          // The answer states the failure's kind either way.
        }
      },
      async close() {
        reader?.stop();
        await closeAll();
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
