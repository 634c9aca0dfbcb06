/**
 * The deadline of the request being served, where there is one: the scaling API's handler
 * (functions/handlers/api.ts) sets it for each request, from what API Gateway and the function's
 * own timeout leave it (API Gateway answers 504 at 29 s, whatever the function is still doing).
 * The shard reports' waits on the shards (ShardInspector: health, statistics, the rebalance
 * census; the fence listing) are `health_check_timeout_seconds` each (up to 60 s) or less: never
 * past this deadline, so that a route answers in time, naming the shard that did not, instead of
 * API Gateway's 504 naming nothing (issue #15).
 *
 * Carried by the request's async context (AsyncLocalStorage, as mover-catalog.ts carries its
 * holder): between the handler and the shards lie the routes, their snapshots (a report coalesced
 * for several readers keeps the deadline of the request that began it, the earliest), the port
 * and the runtime, none of which has a deadline to pass. Read only where a wait is bounded for a
 * report (ShardInspector, sharding-runtime.ts's fence listing), not by every node wait
 * (withNodeDeadline): work a request starts and that outlives it by design (local mode runs a
 * planned move in-process, from the request's context) keeps its own bounds.
 *
 * @example
 * ```ts
 * const response = await withRequestDeadline(Date.now() + 27_000, () => router.dispatch(request));
 * // inside, as a wait begins:
 * const budgetMs = withinRequestDeadline(config.health_check_timeout_seconds * 1000);
 * ```
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { checkDeadlineMs } from './deadline.js';

const deadlines = new AsyncLocalStorage<number>();

/** Runs `work` as a request whose deadline is `deadlineAt` (`Date.now()` ms); refused (InvalidDeadlineError) if no timer could hold it. */
export function withRequestDeadline<T>(deadlineAt: number, work: () => Promise<T>): Promise<T> {
  checkDeadlineMs('deadlineAt (from now)', deadlineAt - Date.now());
  return deadlines.run(deadlineAt, work);
}

/** The time the request being served has left (0 once its deadline has passed); undefined outside such a request. */
export function requestTimeLeftMs(now: number = Date.now()): number | undefined {
  const deadlineAt = deadlines.getStore();
  return deadlineAt === undefined ? undefined : Math.max(0, deadlineAt - now);
}

/** `budgetMs`, or the time the request being served has left where that is less: a wait's budget, read as the wait begins. */
export function withinRequestDeadline(budgetMs: number, now: number = Date.now()): number {
  const left = requestTimeLeftMs(now);
  return left === undefined ? budgetMs : Math.min(budgetMs, left);
}
