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
