/**
 * The middy stack every control-plane handler uses, in a deliberate order: the tracer first
 * (so the segment spans everything), then the logger (Lambda context on every line), then
 * metrics (flushed after the handler, cold start captured), and error logging last, so its
 * `onError` runs first and logs the error with the context before middy rethrows it.
 *
 * @example
 * ```ts
 * export const handler = withPowertools(async (event: unknown) => evaluate(event));
 * ```
 */
import middy, { type MiddlewareObj } from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import { captureLambdaHandler } from '@aws-lambda-powertools/tracer/middleware';
import type { Context } from 'aws-lambda';
import { logger, metrics, tracer } from './powertools.js';

/** Logs an unhandled error once, with its cause chain, and lets middy rethrow it. */
export function logUnhandledErrors<E, R>(): MiddlewareObj<E, R> {
  return {
    onError: (request) => {
      logger.error('unhandled error', { error: request.error });
    },
  };
}

/** Wraps a handler with tracer, logger, metrics and error logging. */
export function withPowertools<E, R>(fn: (event: E, context: Context) => Promise<R>) {
  return middy<E, R>(fn)
    .use(captureLambdaHandler(tracer))
    .use(injectLambdaContext(logger, { resetKeys: true }))
    .use(logMetrics(metrics, { captureColdStartMetric: true }))
    .use(logUnhandledErrors<E, R>());
}
