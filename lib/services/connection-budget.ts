/**
 * How many connections each task may hold to each database instance, so that the services at
 * their largest (every service at `max_instances`, during a deployment that starts a new task
 * beside each old one) stay within the instances' `max_connections`.
 *
 * RDS for PostgreSQL sets `max_connections` to `LEAST({DBInstanceClassMemory/9531392}, 5000)` by
 * default (https://docs.aws.amazon.com/prescriptive-guidance/latest/tuning-postgresql-parameters/max-connections.html).
 * `DBInstanceClassMemory` is the class's memory less what RDS keeps for its own processes, and AWS
 * does not publish that share. Measured defaults (`SHOW max_connections`) are 198 on a 2 GiB
 * class, 413 on 4 GiB, 856 on 8 GiB and 1,660 on 15.25 GiB: 88-97% of what the whole memory would
 * give. The estimate here takes {@link CLASS_MEMORY_SHARE} (87.5%) of the class's memory, below
 * every measurement, so the budget errs on the side of fewer connections; it used the whole
 * memory before, 450 on `t4g.medium` against 413, and the 37 missing slots came out of the
 * control plane's {@link RESERVED_CONNECTIONS}. Each task opens up to its pool size to every shard
 * primary and replica it reads, and the first shard's primary also serves the catalog (2 more
 * per task in the demo backend). The pool size reaches the tasks as `DATABASE_POOL_SIZE`; an
 * application image of your own should size its pool by it.
 *
 * @example
 * ```ts
 * connectionBudget({ instanceClasses: ['t4g.medium'], maxTasks: 30, surgePercent: 200 });
 * // { poolSize: 3, maxConnections: 394, peak: 300, ... }
 * ```
 */

/** Memory in GiB by size, for the instance families RDS for PostgreSQL offers. */
const BURSTABLE: Readonly<Record<string, number>> = { micro: 1, small: 2, medium: 4, large: 8, xlarge: 16, '2xlarge': 32 };
const GENERAL: Readonly<Record<string, number>> = { large: 8, xlarge: 16, '2xlarge': 32, '4xlarge': 64, '8xlarge': 128, '12xlarge': 192, '16xlarge': 256, '24xlarge': 384, '32xlarge': 512, '48xlarge': 768 };
const MEMORY: Readonly<Record<string, number>> = { large: 16, xlarge: 32, '2xlarge': 64, '4xlarge': 128, '8xlarge': 256, '12xlarge': 384, '16xlarge': 512, '24xlarge': 768, '32xlarge': 1024 };

/** The share of a class's memory taken for `DBInstanceClassMemory`: below every measured default (see above). */
export const CLASS_MEMORY_SHARE = 0.875;
/** Connections kept out of the tasks' share: the control plane's functions, rotation, operators. */
export const RESERVED_CONNECTIONS = 50;
/** Connections each task holds to the catalog, on the first shard's primary (the demo backend's pool). */
export const CATALOG_CONNECTIONS_PER_TASK = 2;
/** The pool size when the instances have room for it (the demo backend's default). */
export const DEFAULT_POOL_SIZE = 10;

/** The default `max_connections` of an instance class, estimated from below, or undefined for a class this table does not know. */
export function defaultMaxConnections(instanceClass: string): number | undefined {
  const [family = '', size = ''] = instanceClass.split('.');
  const kind = family[0];
  const table = kind === 't' ? BURSTABLE : kind === 'm' ? GENERAL : kind === 'r' || kind === 'x' ? MEMORY : undefined;
  const gib = table?.[size];
  if (gib === undefined) return undefined;
  return Math.min(Math.floor((gib * 2 ** 30 * CLASS_MEMORY_SHARE) / 9_531_392), 5000);
}

export interface ConnectionBudget {
  /** Connections each task may hold to each instance. */
  readonly poolSize: number;
  /** The smallest default `max_connections` among the instance classes, or undefined when one is unknown. */
  readonly maxConnections: number | undefined;
  /** Tasks at the largest: every service at its maximum, times the deployment surge. */
  readonly peakTasks: number;
  /** What those tasks hold on the busiest instance (the catalog's primary) with that pool size. */
  readonly peak: number;
}

/**
 * The pool size for the tasks: {@link DEFAULT_POOL_SIZE}, or less when the instances would run out
 * of connections at the services' largest. Undefined `maxConnections` (a class the table does
 * not know) keeps the default. `poolSize` 0 means even one connection a task does not fit.
 */
export function connectionBudget(input: { readonly instanceClasses: readonly string[]; readonly maxTasks: number; readonly surgePercent: number }): ConnectionBudget {
  const limits = input.instanceClasses.map(defaultMaxConnections);
  const maxConnections = limits.some((l) => l === undefined) ? undefined : Math.min(...(limits as number[]));
  const peakTasks = Math.ceil((input.maxTasks * input.surgePercent) / 100);
  const fits = maxConnections === undefined || peakTasks === 0 ? DEFAULT_POOL_SIZE : Math.floor((maxConnections - RESERVED_CONNECTIONS) / peakTasks) - CATALOG_CONNECTIONS_PER_TASK;
  const poolSize = Math.max(0, Math.min(DEFAULT_POOL_SIZE, fits));
  return { poolSize, maxConnections, peakTasks, peak: peakTasks * (poolSize + CATALOG_CONNECTIONS_PER_TASK) };
}
