/**
 * How every AWS SDK client of ours retries and times out, in the functions and in the demo
 * backend's tasks alike: the SDK's standard retry mode (exponential backoff with jitter,
 * throttling-aware), and per-attempt limits so that a hung connection or request becomes a
 * retryable timeout instead of eating the caller's whole budget.
 *
 * @example
 * ```ts
 * const secrets = new SecretsManagerClient({ ...SDK_CLIENT_OPTIONS, region });
 * ```
 */

export const SDK_CLIENT_OPTIONS = {
  /** Attempts per call, first one included. */
  maxAttempts: 4,
  retryMode: 'standard',
  requestHandler: { connectionTimeout: 2_000, requestTimeout: 5_000 },
} as const;

/**
 * Backoff of the SDK's standard retry mode (smithy util-retry, as pinned in package-lock.json):
 * before retry `i` (0-based) it waits a random part of `min(base * 2^i, 20 s)`, the base being
 * 1 s after a throttling error (the longest), and a server's retry-after hint may lengthen one
 * wait by up to 5 s more.
 */
const SDK_THROTTLING_DELAY_BASE_MS = 1_000;
const SDK_MAXIMUM_RETRY_DELAY_MS = 20_000;
const SDK_RETRY_AFTER_EXTRA_MS = 5_000;

/**
 * The longest one SDK call made with `options` can last when every attempt times out (a
 * connection that never opens, then a request that never answers) and every wait before a retry
 * is the longest the standard mode allows: with {@link SDK_CLIENT_OPTIONS}, 4 x (2 s + 5 s) and
 * 1 + 2 + 4 s of backoff with 5 s of retry-after hint each, 50 s. What holds a database lock
 * across such a call (the controller's service lock around ECS UpdateService) must let it last
 * that long.
 */
export function sdkCallBoundMs(options: { readonly maxAttempts: number; readonly requestHandler: { readonly connectionTimeout: number; readonly requestTimeout: number } } = SDK_CLIENT_OPTIONS): number {
  const attempts = options.maxAttempts * (options.requestHandler.connectionTimeout + options.requestHandler.requestTimeout);
  let backoff = 0;
  for (let retry = 0; retry < options.maxAttempts - 1; retry += 1) backoff += Math.min(SDK_THROTTLING_DELAY_BASE_MS * 2 ** retry, SDK_MAXIMUM_RETRY_DELAY_MS) + SDK_RETRY_AFTER_EXTRA_MS;
  return attempts + backoff;
}
