/**
 * The controller runtime of a container: the environment, the catalog store on its one-connection
 * pool, the AWS adapters and the {@link ScalingController}, built once and reused by warm
 * invocations (the controller's backlog of decisions taken without the catalog lives here).
 *
 * @example
 * ```ts
 * const runtime = await controllerRuntime();
 * const result = await runtime.controller.evaluate({ trigger: 'schedule' });
 * ```
 */
import type pg from 'pg';
import { ScalingController } from '../../core/scaling/controller.js';
import type { Clock, DecisionLog, DecisionRecord, MetricsSource, ScalingTarget } from '../../core/scaling/ports.js';
import { getPolicy } from '../../core/scaling/policies/index.js';
import { AppAutoScalingRegistry } from '../../adapters/aws/app-autoscaling.js';
import { CloudWatchMetricsSource } from '../../adapters/aws/cloudwatch-metrics.js';
import { EcsScalingTarget } from '../../adapters/aws/ecs-target.js';
import { CatalogStore } from '../../adapters/postgres/catalog-store.js';
import { awsClients, type AwsClients } from './aws.js';
import { createPool } from './db.js';
import { parseControllerEnv, type ControllerEnv } from './env.js';
import { logger } from './powertools.js';

/** Remembers recently seen ids (SNS message ids) in a bounded, insertion-ordered set. */
export class RecentIds {
  private readonly ids = new Set<string>();
  constructor(private readonly capacity = 1000) {}

  /** Adds `id`; returns `false` when it was already there. */
  add(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.capacity) {
      const oldest = this.ids.values().next();
      if (oldest.done !== true) this.ids.delete(oldest.value);
    }
    return true;
  }
}

export interface ControllerRuntime {
  readonly env: ControllerEnv;
  readonly catalog: CatalogStore;
  /** The catalog's pool, built on first use (the API's history reader queries it directly). */
  readonly db: () => Promise<pg.Pool>;
  /** The orchestrator and metrics adapters the controller uses (the API reads them too). */
  readonly target: ScalingTarget;
  readonly metrics: MetricsSource;
  readonly controller: ScalingController;
  /** SNS message ids this container already handled (de-duplication while the catalog is away). */
  readonly seenMessages: RecentIds;
  /** Ends the pool (tests and local mode; Lambda containers simply freeze). */
  close(): Promise<void>;
}

/** Writes one structured log line per decision, with its reasons and blocks. */
export const loggerDecisionLog: DecisionLog = {
  write(record: DecisionRecord): void {
    const line = { decision: record };
    if (record.outcome === 'failed' || record.outcome === 'skipped') logger.warn('scaling decision', line);
    else logger.info('scaling decision', line);
  },
};

const systemClock: Clock = { now: () => Date.now() };

/** Builds a runtime from a validated environment and clients. */
export function createControllerRuntime(env: ControllerEnv, clients: AwsClients, opts: { log?: DecisionLog; clock?: Clock } = {}): ControllerRuntime {
  // The pool is built on first use and rebuilt after a failure, so a Secrets Manager or
  // database outage at cold start only means "catalog unreachable" for that evaluation.
  let pool: Promise<pg.Pool> | undefined;
  const poolSource = (): Promise<pg.Pool> => {
    pool ??= createPool(env.catalog, clients.secrets).catch((err: unknown) => {
      pool = undefined;
      throw err;
    });
    return pool;
  };
  const catalog = new CatalogStore(poolSource, { defaults: env.fallbackConfig });
  const metrics = new CloudWatchMetricsSource({ client: clients.cloudwatch, topology: env.topology });
  const target = new EcsScalingTarget({ client: clients.ecs, topology: env.topology });
  const controller = new ScalingController({
    metrics,
    target,
    registry: new AppAutoScalingRegistry({ client: clients.autoscaling, topology: env.topology }),
    catalog,
    clock: opts.clock ?? systemClock,
    log: opts.log ?? loggerDecisionLog,
    policies: getPolicy,
    fallbackConfig: env.fallbackConfig,
    ...(env.functionName === undefined ? {} : { leaseOwner: env.functionName }),
  });
  return {
    env,
    catalog,
    db: poolSource,
    target,
    metrics,
    controller,
    seenMessages: new RecentIds(),
    async close() {
      const p = pool;
      pool = undefined;
      if (p) await (await p.catch(() => undefined))?.end();
    },
  };
}

let runtime: ControllerRuntime | undefined;

/** The container's runtime, built from `process.env` on first use. */
export function controllerRuntime(): ControllerRuntime {
  runtime ??= createControllerRuntime(parseControllerEnv(process.env), awsClients());
  return runtime;
}
