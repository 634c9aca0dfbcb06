/**
 * Typed errors of the sharding layer. Each names what is wrong in words an operator can act on
 * and never carries credentials (URLs are redacted before they reach a message).
 *
 * @example
 * ```ts
 * try { parseShardingConfig(raw); } catch (e) {
 *   if (e instanceof ShardingConfigError) console.error(e.problems.join('\n'));
 * }
 * ```
 */

/** The sharding configuration is invalid; `problems` lists every problem found, one per entry. */
export class ShardingConfigError extends Error {
  override readonly name = 'ShardingConfigError';
  readonly problems: readonly string[];
  constructor(problems: readonly string[], options?: { cause?: unknown }) {
    super(`invalid sharding configuration:\n  - ${problems.join('\n  - ')}`, options);
    this.problems = problems;
  }
}

/** A slot map is malformed, or an operation on it (add a shard, move slots) is impossible. */
export class SlotMapError extends Error {
  override readonly name: string = 'SlotMapError';
}

/**
 * Publishing a slot map lost an optimistic-concurrency race, or skipped a version:
 * `next.version` must be exactly `current.version + 1`.
 */
export class SlotMapVersionConflictError extends Error {
  override readonly name = 'SlotMapVersionConflictError';
  readonly expectedVersion: number;
  readonly attemptedVersion: number;
  constructor(expectedVersion: number, attemptedVersion: number, options?: { cause?: unknown }) {
    super(`slot map version conflict: the next version must be ${expectedVersion}, got ${attemptedVersion} (someone else published first, or the map is stale)`, options);
    this.expectedVersion = expectedVersion;
    this.attemptedVersion = attemptedVersion;
  }
}

/** Why a key could not be routed. */
export type RoutingErrorReason = 'not-in-directory' | 'out-of-range' | 'invalid-key' | 'unknown-shard' | 'directory-unavailable';

/** A key cannot be routed to a shard (not in the directory with fallback `reject`, outside every range, ...). */
export class RoutingError extends Error {
  override readonly name = 'RoutingError';
  readonly reason: RoutingErrorReason;
  constructor(reason: RoutingErrorReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

/** The rebalance planner was given inconsistent input (a unit on an unknown shard, a negative size, ...). */
export class RebalancePlanError extends Error {
  override readonly name = 'RebalancePlanError';
}
