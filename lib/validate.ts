/**
 * Up-front validation of construct props: every problem is collected and reported in one
 * error, so a user fixes them all in one round instead of one per synth.
 *
 * @example
 * ```ts
 * validateProps('ShardDatabase', [
 *   [props.replicas >= 0, 'replicas must be 0 or more'],
 *   [props.backupRetentionDays >= 7, 'backupRetentionDays must be at least 7'],
 * ]);
 * ```
 */

/** Props rejected by a construct; `problems` lists each one. */
export class InvalidPropsError extends Error {
  override readonly name = 'InvalidPropsError';
  constructor(
    readonly construct: string,
    readonly problems: readonly string[],
  ) {
    super(`invalid ${construct} props:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

/** Throws {@link InvalidPropsError} listing every check that failed. */
export function validateProps(construct: string, checks: ReadonlyArray<readonly [ok: boolean, problem: string]>): void {
  const problems = checks.filter(([ok]) => !ok).map(([, problem]) => problem);
  if (problems.length > 0) throw new InvalidPropsError(construct, problems);
}
