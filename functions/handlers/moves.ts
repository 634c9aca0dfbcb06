/**
 * `moves`: the worker that carries shard moves forward. The scaling API only plans a move (a
 * Lambda invocation cannot outlive its response); an EventBridge schedule invokes this function
 * every minute and it runs every planned or unfinished job in order, holding the moves-worker
 * lease in the catalog (not reserved concurrency, which a new account cannot grant): a tick
 * that finds another worker running stands aside and says so. Jobs are resumable, and a job
 * another process is running is left to it. A run stops on its own {@link STOP_BEFORE_TIMEOUT_MS}
 * before the function's timeout, at its next safe point (between copy pages, catch-up passes or clean-up batches,
 * never while the fence is held), and the next invocation resumes it: a long move is a series of
 * invocations that end normally, not timeouts, which Lambda counts as errors (and the moves
 * function's error alarm would report every 15 minutes of a healthy move).
 */
import type { Context } from 'aws-lambda';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { LEASES } from '../adapters/postgres/lease-store.js';
import { ABANDONMENTS_SETTLE_MS, settleAbandonments } from '../adapters/postgres/deadline.js';
import { MoveBusyError, type MoveJob } from '../adapters/postgres/mover.js';
import { isTerminal } from '../core/sharding/move-plan.js';
import { createShardingRuntime, type ShardingRuntime } from '../adapters/postgres/sharding-runtime.js';
import { scheduledEventSchema } from './evaluate.js';
import { awsClients } from './shared/aws.js';
import { withPowertools } from './shared/middleware.js';
import { logger, metrics } from './shared/powertools.js';
import { controllerRuntime } from './shared/runtime.js';
import { logRoutingNotRecorded, shardCredentialsFromEnv, shardingConfigFromEnv } from './shared/sharding-env.js';
import { leaseTtl } from './shared/telemetry.js';
import { loadParameterEnv } from './shared/parameter-env.js';

// The deployment's growing configuration (SSM Parameter Store), read once in the init phase.
await loadParameterEnv();

/**
 * What a run leaves of the invocation after its last safe point: the longest step that cannot stop
 * part-way (the row comparison before the fence reads the whole unit on both shards, then the
 * fence, the verification and the flip), with room for the lease's release and the response.
 */
export const STOP_BEFORE_TIMEOUT_MS = 120_000;

/**
 * When a run must be over, whatever it waits on (a shard gone silent: its statement would never
 * end): its shard connections are closed this long before the function's timeout, which leaves
 * room to record the error and give back the job's and the worker's leases.
 */
export const ABANDON_BEFORE_TIMEOUT_MS = 20_000;

/** What the wait for the given-up connections' abandonments leaves of the invocation: the lease's release and the response. */
const ABANDONMENTS_SETTLE_MARGIN_MS = 1000;

export interface MovesResult {
  readonly accepted: boolean;
  readonly ran: ReadonlyArray<{ id: number; state: string }>;
  readonly busy: readonly number[];
  readonly failed: ReadonlyArray<{ id: number; error: string }>;
  /** Set when another worker held the moves-worker lease: this tick touched nothing. */
  readonly skipped?: { holder: string; since: string; until: string };
  /** Set when the event was refused (not an EventBridge scheduled event): the fields at fault. */
  readonly issues?: ReadonlyArray<{ path: string; message: string }>;
}

/** How long before the function's timeout a run stops at its next safe point, and when it is abandoned. */
export interface MovesHandlerMargins {
  readonly stopBeforeTimeoutMs: number;
  readonly abandonBeforeTimeoutMs: number;
}

const LAMBDA_MARGINS: MovesHandlerMargins = { stopBeforeTimeoutMs: STOP_BEFORE_TIMEOUT_MS, abandonBeforeTimeoutMs: ABANDON_BEFORE_TIMEOUT_MS };

/**
 * Builds the handler around a sharding runtime provider (tests pass their own, and may scale the
 * margins down to prove their wiring in seconds rather than minutes).
 */
export function createMovesHandler(runtime: () => Promise<ShardingRuntime | undefined>, margins: MovesHandlerMargins = LAMBDA_MARGINS) {
  return withPowertools(async (event: unknown, context: Context): Promise<MovesResult> => {
    const parsed = scheduledEventSchema.safeParse(event);
    if (!parsed.success) {
      // As the evaluation function: the fields at fault, in the log and in the answer.
      const issues = parsed.error.issues.map((i) => ({ path: i.path.map(String).join('.') || '(root)', message: i.message }));
      logger.error('rejected event: not an EventBridge scheduled event; no move touched', { issues });
      metrics.addMetric('RejectedEvents', MetricUnit.Count, 1);
      return { accepted: false, ran: [], busy: [], failed: [], issues };
    }
    const sharding = await runtime();
    if (!sharding) {
      logger.info('sharding is not configured; nothing to move');
      return { accepted: true, ran: [], busy: [], failed: [] };
    }
    const lease = await sharding.leases.acquire(LEASES.movesWorker, { owner: 'scaling-moves', ttlMs: leaseTtl(context.getRemainingTimeInMillis()) });
    if (!lease.acquired) {
      const skipped = { holder: lease.holder, since: new Date(lease.since).toISOString(), until: new Date(lease.until).toISOString() };
      logger.info('another moves worker is running; this tick stands aside', skipped);
      return { accepted: true, ran: [], busy: [], failed: [], skipped };
    }
    try {
      const ends = Date.now() + context.getRemainingTimeInMillis();
      return await runAll(sharding, ends - margins.stopBeforeTimeoutMs, ends - margins.abandonBeforeTimeoutMs);
    } finally {
      // A connection the run gave up is cancelled and, if need be, terminated from a timer of its
      // own: the sandbox freezes once this returns, which would hold that back until the next
      // invocation, the given-up backend keeping its locks and the job's permit meanwhile.
      const left = await settleAbandonments(Math.min(ABANDONMENTS_SETTLE_MS, Math.max(0, context.getRemainingTimeInMillis() - ABANDONMENTS_SETTLE_MARGIN_MS)));
      if (left > 0) logger.warn('a given-up shard connection is still being stopped on its server as this invocation ends', { abandonments: left });
      await lease.release().catch((err: unknown) => logger.warn('moves-worker lease not released; it lapses by itself', { error: err as Error }));
    }
  });
}

/**
 * Minutes since `job` last moved forward (see `MoveJob.progressedAt`), 0 once it is finished. A
 * long move makes progress every page or batch; one that runs without failing and without
 * progressing (a catch-up that never gets within its threshold, a verification always over its
 * budget) grows this by one invocation at every tick.
 */
export function minutesWithoutProgress(job: Pick<MoveJob, 'state' | 'progressedAt'>, now: number): number {
  return isTerminal(job.state) ? 0 : Math.max(0, (now - job.progressedAt.getTime()) / 60_000);
}

async function runAll(sharding: ShardingRuntime, until: number, abandonAt: number): Promise<MovesResult> {
  const ran: Array<{ id: number; state: string }> = [];
  const busy: number[] = [];
  const failed: Array<{ id: number; error: string }> = [];
  // Only the jobs this invocation ran: a job queued behind a long one is waiting, not stalled.
  let stalledMinutes = 0;
  const stalled = (job: MoveJob): void => {
    const minutes = minutesWithoutProgress(job, Date.now());
    stalledMinutes = Math.max(stalledMinutes, minutes);
    if (minutes >= 10) logger.warn('move has made no progress', { id: job.id, state: job.state, since: job.progressedAt.toISOString(), minutes: Math.round(minutes) });
  };
  for (const job of await sharding.mover.unfinished()) {
    if (Date.now() >= until) {
      logger.info('this invocation is near its timeout; the next one runs the remaining jobs', { next: job.id });
      break;
    }
    try {
      const done = await sharding.mover.run(job.id, { until, abandonAt });
      ran.push({ id: done.id, state: done.state });
      stalled(done);
      // Rolled back because the two sides differed: the run ended normally, the move did not.
      if (done.state === 'failed') failed.push({ id: done.id, error: done.error ?? 'the move failed and was rolled back' });
      logger.info('move advanced', { id: done.id, kind: done.kind, unit: done.unitId, from: done.from, to: done.to, state: done.state, fenceMs: done.fenceMs });
    } catch (err) {
      if (err instanceof MoveBusyError) {
        busy.push(job.id);
        continue;
      }
      failed.push({ id: job.id, error: (err as Error).message });
      logger.error('move step failed; the job stays resumable', { id: job.id, error: err as Error });
      stalled(await sharding.mover.get(job.id).catch(() => job));
    }
  }
  metrics.addMetric('MovesAdvanced', MetricUnit.Count, ran.length);
  metrics.addMetric('MoveFailures', MetricUnit.Count, failed.length);
  metrics.addMetric('MoveSecondsWithoutProgress', MetricUnit.Seconds, Math.round(stalledMinutes * 60));
  return { accepted: true, ran, busy, failed };
}

let sharding: Promise<ShardingRuntime | undefined> | undefined;

export const handler = createMovesHandler(() => {
  sharding ??= (async () => {
    const config = await shardingConfigFromEnv(process.env, awsClients().secrets);
    // A rotated-away login is re-read from its secret, not kept until the container is recycled.
    const credentials = shardCredentialsFromEnv(process.env, awsClients().secrets);
    return config
      ? createShardingRuntime({ config, env: process.env, catalog: await controllerRuntime().db(), actor: 'scaling-moves', pools: { max: 2, ...(credentials ? { credentials } : {}) }, onRoutingNotRecorded: logRoutingNotRecorded })
      : undefined;
  })().catch((err: unknown) => {
    sharding = undefined;
    throw err;
  });
  return sharding;
});
