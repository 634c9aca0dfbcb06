/**
 * Move jobs as recorded in `catalog.move_jobs` (sharding migrations 002 and 003), the errors the
 * mover reports, and the request an operator sends. Shared by the mover (planning, running,
 * cancelling) and its PostgreSQL port (the steps).
 *
 * @example
 * ```ts
 * const { rows } = await catalog.query<JobRow>('select * from catalog.move_jobs where id = $1', [id]);
 * const job = toJob(rows[0]!);
 * ```
 */
import { z } from 'zod';
import { uuidForm } from '../../core/sharding/keys.js';
import { MoveError, type MoveJobView } from '../../core/sharding/move-machine.js';
import type { MoveState, MoveUnitKind } from '../../core/sharding/move-plan.js';

export { MoveError, MoveFenceTimeoutError, MoveLeaseLostError } from '../../core/sharding/move-machine.js';

/** Where the copy is: the table, and the last id copied (one lane) or per lane (several, see `PgMovePort.copy`). */
export interface CopyCursor {
  readonly table: string;
  readonly after: string | null;
  /** With the table copied in several id ranges at once, the last id copied in each (null: none yet). */
  readonly lanes?: readonly (string | null)[];
}

/** Per table: row count and an order-independent checksum of the rows. */
export type TableSummaries = Readonly<Record<string, { readonly rows: number; readonly checksum: string }>>;

export interface MoveJob extends MoveJobView {
  /** The hash slot the unit lives in (for a directory key, the slot of the key). */
  readonly slot: number;
  readonly flipStartedAt: Date | null;
  /** Set once a rollback has been decided (compare-and-set against the flip). */
  readonly rollbackTo: 'failed' | 'cancelled' | null;
  readonly excludedKeys: readonly string[];
  readonly copyCursor: CopyCursor | null;
  readonly rowsCopied: number;
  readonly changesApplied: number;
  readonly rowsDeleted: number;
  /** Times the cutover gave up because the fence could not be held within its budget. */
  readonly fenceTimeouts: number;
  readonly sourceSummary: TableSummaries | null;
  readonly targetSummary: TableSummaries | null;
  readonly mapVersionBefore: number | null;
  readonly mapVersionAfter: number | null;
  readonly createdBy: string;
  readonly reason: string;
  readonly error: string | null;
  /**
   * Why a cancellation of the move was refused (the catalog already routed its unit to the target,
   * see `MoveCancelRefused`), kept for the life of the job (sharding migration 008): `error` says
   * it too, until a later transition clears it. Null when no cancel was refused.
   */
  readonly cancelRefused: string | null;
  readonly createdAt: Date;
  readonly fencedAt: Date | null;
  readonly unfencedAt: Date | null;
  readonly finishedAt: Date | null;
  /**
   * When the job last moved forward (sharding migration 007): a page copied, a batch of source rows
   * deleted, or a state entered that it does not come back from. The catch-up, fence and
   * verification loop does not count until it ends in the flip.
   */
  readonly progressedAt: Date;
  /** How long writes to the unit were fenced, once the fence has been released. */
  readonly fenceMs: number | null;
  /**
   * The source's cluster id the job records (sharding migration 032, `source_cluster_id`): the
   * fence's until the release, then the release's; null where none was recorded (a fence taken
   * without it, its login refused `pg_control_system()` then, or a fence recorded before 032).
   * Read with every row of the job (no round trip of its own): a run that resumes a move past its
   * flip releases a fence recorded without the id without the id too (`PgMovePort.releaseFence`).
   */
  readonly sourceClusterId: string | null;
}

/** Why a move request was refused, for callers that map it to a status (API: 422). */
export type MoveRequestProblem = 'invalid' | 'unknown-shard' | 'same-shard' | 'strategy' | 'not-found' | 'too-large';

/**
 * What is wrong with one field of a {@link MoveRequest} (`slot`, `key`, `to`, ...), in words that
 * do not name the field, so that a caller whose input spells it otherwise (the API's `unit`) can
 * name its own.
 */
export interface MoveRequestIssue {
  readonly field: string;
  readonly reason: string;
}

/** The move request is invalid or cannot be carried out (unknown shard, same source and target, strategy, ...). Nothing was recorded. */
export class MoveRequestError extends MoveError {
  override readonly name = 'MoveRequestError';
  /** For an `invalid` request, the fields at fault; empty when no single field is. */
  readonly issues: readonly MoveRequestIssue[];
  constructor(
    message: string,
    readonly problem: MoveRequestProblem = 'invalid',
    options?: { cause?: unknown; issues?: readonly MoveRequestIssue[] },
  ) {
    super(message, options);
    this.issues = options?.issues ?? [];
  }
}

/** The slot (or the slot of the key) already has an unfinished move. */
export class MoveConflictError extends MoveError {
  override readonly name = 'MoveConflictError';
}

/**
 * A shard the plan's checks had to ask did not answer (a refused or dropped connection, a timeout):
 * the request could be neither planned nor refused, and nothing was recorded. Not a
 * {@link MoveError} (an answer about the move) but a node's failure, which POST /shards/moves
 * answers with a 503 (functions/api/wiring.ts, `reachable`), in this error's words: they name the
 * shard and why the plan asks it, where the driver's own text named an address the operator had to
 * map to a shard, and the API's generic words ("the catalog or a shard did not answer") left them
 * looking at the move's source and target, both answering (h124: a directory move asks every shard
 * of the mover, Mover.checkOtherShardsHoldNoKeyRows; h132: a slot move asks every shard that owned
 * the slot in an earlier map, Mover.checkFormerOwnersHoldNoSlotRows). `cause` is the driver's error,
 * for the log and for failureKind.
 */
export class MovePlanShardUnanswered extends Error {
  override readonly name = 'MovePlanShardUnanswered';
  /**
   * Why the plan asked {@link shard}, in a few words fit for a line of the rebalance check's
   * `unresolved` ("which a directory key's move asks too"), which names the shard as this error does.
   */
  readonly asked: string;
  constructor(
    message: string,
    readonly shard: string,
    options: { cause: unknown; asked: string },
  ) {
    super(message, { cause: options.cause });
    this.asked = options.asked;
  }
}

/**
 * A plan within a request ({@link Mover.plan}'s `until`) found the request's deadline passed before
 * it read or recorded anything more: nothing was recorded, and POST /shards/moves answers 503 in
 * these words (a job recorded then would be answered to no one: API Gateway's 504 comes first).
 */
export class MovePlanOutOfTime extends MoveError {
  override readonly name = 'MovePlanOutOfTime';
}

/**
 * Whether `err` is a login the catalog refused (SQLSTATE class 28: 28P01 a wrong password, 28000
 * no such role or pg_hba.conf; 3D000 no such database): what {@link MovePlanCatalogRefused} calls
 * `credentials`, and the rebalance check's reads of the catalog answer alike (api/wiring.ts).
 */
export function catalogLoginRefused(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^(28...|3D000)$/.test(code);
}

/**
 * Why the catalog refuses a login, as the answers of POST /shards/moves and GET
 * /shards/rebalance-check say it (after the failure's kind, sqlstate.ts failureKind): the
 * configuration, or the one window that ends by itself, a single-user rotation of the login's secret
 * under way. The secret pool (secret-pool.ts) re-reads the secret and retries a refused login once,
 * but between the rotation's setSecret (the catalog has the new password) and its finishSecret (the
 * secret's AWSCURRENT names it), or before RDS Proxy has read the new version, the re-read gives
 * what was refused and the retry is refused too (docs/infrastructure.md, "Rotation behind RDS
 * Proxy"). Before, the words said "trying again does not help until they do" alone, sending the
 * operator after a misconfiguration where the same plan a minute later was recorded (h160,
 * moves-plan-refusals-named.test.ts, "while the catalog login's secret is being rotated").
 */
export const CATALOG_LOGIN_REFUSED_WHY =
  "the catalog login's credentials (the configuration's catalog URL, or the secret the function reads it from) do not match the catalog's, or a rotation of that secret under way has not reached every side yet (its new password set in the catalog before the secret's AWSCURRENT names it, or before RDS Proxy has read it; docs/infrastructure.md, \"Rotation behind RDS Proxy\"), which ends within minutes";

/** How to know whether a rotation runs, for the words after {@link CATALOG_LOGIN_REFUSED_WHY}. */
export const CATALOG_ROTATION_HOW_TO_TELL = "the secret's last rotation date and the rotation function's log say whether one runs";

/**
 * The catalog refused a connection {@link Mover.plan} asked it for (a read of its checks, or the
 * job's transaction), or refused its login, or lost it before answering: nothing was recorded.
 * `fault` says what an operator does about it, and so how POST /shards/moves answers it
 * (functions/api/wiring.ts, `startMove`): `unavailable` (nothing listens at its address: stopped,
 * restarting, failing over; no free connection slot, 53300; the connection lost), a 503 with
 * Retry-After, the catalog answering again in its time; `credentials` (the login refused: 28P01 a
 * wrong password, 28000 no such role or pg_hba.conf, 3D000 no such database), a 500, as a fault of
 * the deployment's configuration no retry mends until someone changes the catalog login's secret
 * or the configuration, or a single-user rotation of that secret ends (between its setSecret and
 * finishSecret, or RDS Proxy's read of the new version, the secret pool's re-read and retry,
 * secret-pool.ts, are refused too: the words name that case, h160). In
 * words that name the catalog and the cause by its kind (sqlstate.ts failureKind: no address, login
 * or server text, which stay with `cause`, the driver's error, for the log). Before, these were the
 * API's generic "the catalog or a shard did not answer (...); try again shortly", naming neither,
 * and a refused login "an internal error occurred" (h156, moves-plan-refusals-named.test.ts).
 */
export class MovePlanCatalogRefused extends MoveError {
  override readonly name = 'MovePlanCatalogRefused';
  constructor(
    message: string,
    readonly fault: 'unavailable' | 'credentials',
    options: { cause: unknown },
  ) {
    super(message, options);
  }
}

/**
 * A shard {@link Mover.plan}'s checks read (the move's source, its target, or one asked beside them)
 * refused the login of a read (SQLSTATE class 28, 3D000), or refused it and its secret pool's
 * re-read of the login's credentials failed (secret-pool.ts CredentialsReadError): nothing was
 * recorded. `fault` as {@link MovePlanCatalogRefused}'s: `credentials` a 500 (the deployment's to
 * mend; the words name the one window that ends by itself, a rotation of the shard login's secret
 * under way), `unavailable` a 503 with Retry-After (the secret's source throttled or not answering
 * in time). In words that name the shard and the cause by its kind, never the role, the address or
 * the secret's ARN (those stay with `cause`, for the log). Before, the driver's or the source's error
 * reached the API bare: "an internal error occurred", naming nothing (h168,
 * moves-plan-catalog-lost.test.ts).
 */
export class MovePlanShardLoginRefused extends MoveError {
  override readonly name = 'MovePlanShardLoginRefused';
  constructor(
    message: string,
    readonly shard: string,
    readonly fault: 'unavailable' | 'credentials',
    options: { cause: unknown },
  ) {
    super(message, options);
  }
}

/**
 * {@link Mover.plan} sent the commit of the job's transaction and the catalog's answer never came
 * (its connection dropped at the request's deadline, lost, or timed out): the job may be recorded
 * (and then run by the moves worker) or not, and the plan cannot tell. POST /shards/moves answers
 * 503 in these words, which say how to find out (plan it again: 409 naming the job where it was
 * recorded), not "nothing was recorded" nor "try again shortly" (h145).
 */
export class MovePlanOutcomeUnknown extends MoveError {
  override readonly name = 'MovePlanOutcomeUnknown';
}

/** Another mover process is running this job right now. */
export class MoveBusyError extends MoveError {
  override readonly name = 'MoveBusyError';
}

/** The job has passed the point of no return (or is finished) and can no longer be cancelled. */
export class MoveNotCancellableError extends MoveError {
  override readonly name = 'MoveNotCancellableError';
}

const shardId = z.string().min(1, 'must not be empty');
/** A move request, as accepted from an operator (CLI, API). */
export const moveRequestSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('slot'), slot: z.number().int().min(0), to: shardId, createdBy: z.string().min(1), reason: z.string().default('') }),
  z.strictObject({
    kind: z.literal('directory'),
    // The key is hashed and compared as text (routing, fence rows, the capture trigger), so it
    // is taken in any spelling the documents API and the router accept and recorded in the one
    // PostgreSQL prints (docs/sharding-spec.md, section 1).
    key: z.string().transform((text, ctx) => {
      const id = uuidForm(text);
      if (id === undefined) ctx.addIssue({ code: 'custom', message: 'directory keys are user ids (UUIDs), e.g. 3f2c1d9e-8a7b-4c6d-9e0f-112233445566' });
      return id ?? z.NEVER;
    }),
    to: shardId,
    createdBy: z.string().min(1),
    reason: z.string().default(''),
  }),
]);
export type MoveRequest = z.input<typeof moveRequestSchema>;

export interface JobRow {
  id: string;
  kind: MoveUnitKind;
  unit_id: string;
  slot: number;
  from_shard: string;
  to_shard: string;
  state: MoveState;
  cancel_requested: boolean;
  flip_started_at: Date | null;
  rollback_to: 'failed' | 'cancelled' | null;
  excluded_keys: string[];
  copy_cursor: CopyCursor | null;
  rows_copied: string;
  changes_applied: string;
  rows_deleted: string;
  fence_timeouts: number;
  source_summary: TableSummaries | null;
  target_summary: TableSummaries | null;
  map_version_before: string | null;
  map_version_after: string | null;
  created_by: string;
  reason: string;
  error: string | null;
  cancel_refused: string | null;
  created_at: Date;
  fenced_at: Date | null;
  unfenced_at: Date | null;
  finished_at: Date | null;
  progressed_at: Date;
  source_cluster_id: string | null;
}

export function toJob(r: JobRow): MoveJob {
  return {
    id: Number(r.id),
    kind: r.kind,
    unitId: r.unit_id,
    slot: r.slot,
    from: r.from_shard,
    to: r.to_shard,
    state: r.state,
    cancelRequested: r.cancel_requested,
    flipStarted: r.flip_started_at !== null,
    flipStartedAt: r.flip_started_at,
    rollbackTo: r.rollback_to,
    excludedKeys: r.excluded_keys,
    copyCursor: r.copy_cursor,
    rowsCopied: Number(r.rows_copied),
    changesApplied: Number(r.changes_applied),
    rowsDeleted: Number(r.rows_deleted),
    fenceTimeouts: r.fence_timeouts,
    sourceSummary: r.source_summary,
    targetSummary: r.target_summary,
    mapVersionBefore: r.map_version_before === null ? null : Number(r.map_version_before),
    mapVersionAfter: r.map_version_after === null ? null : Number(r.map_version_after),
    createdBy: r.created_by,
    reason: r.reason,
    error: r.error,
    cancelRefused: r.cancel_refused,
    createdAt: r.created_at,
    fencedAt: r.fenced_at,
    unfencedAt: r.unfenced_at,
    finishedAt: r.finished_at,
    progressedAt: r.progressed_at,
    fenceMs: r.fenced_at && r.unfenced_at ? r.unfenced_at.getTime() - r.fenced_at.getTime() : null,
    // Absent from a row of a catalog before sharding migration 032: none recorded.
    sourceClusterId: r.source_cluster_id ?? null,
  };
}
