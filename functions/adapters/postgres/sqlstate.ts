/**
 * The PostgreSQL error codes (SQLSTATE) the adapters act on rather than pass up
 * (https://www.postgresql.org/docs/current/errcodes-appendix.html).
 */

/** 42501: the login may not (a privilege, a parameter, a function it may not execute). */
export const INSUFFICIENT_PRIVILEGE = '42501';
/** 23505: a unique index refused a row. */
export const UNIQUE_VIOLATION = '23505';
/** 25006: a write refused by a read-only transaction (every transaction of a server in recovery). */
export const READ_ONLY_SQL_TRANSACTION = '25006';
/** 42883: no such function (a migration that adds it not applied yet, or not on the search_path). */
export const UNDEFINED_FUNCTION = '42883';
/**
 * 22023 (invalid_parameter_value): a catalog function refused its arguments, e.g. a recovery by
 * hand (`catalog.repin_by_hand`, `catalog.publish_slot_map_by_hand`, sharding migration 013) given
 * a blank reason or a shard the catalog does not know. Nothing was written.
 */
export const INVALID_PARAMETER_VALUE = '22023';
/**
 * CAF06 (sharding migration 010): the pin of a key a directory move (or a slot move that
 * kept the key out) wrote fence rows for may not
 * be removed (docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned").
 */
export const PIN_KEPT = 'CAF06';
/**
 * CAF07 (sharding migration 011): the shard of such a key's pin may not be changed but by a
 * mover's publication or `catalog.repin_by_hand` (docs/sharding-spec.md section 9, same section).
 */
export const PIN_OWNER_KEPT = 'CAF07';
/**
 * CAF08 (sharding migration 012): a slot map may not change the owner of a slot a slot move (finished,
 * or past its flip) wrote lasting fence rows for, but by that slot's unfinished move (not past its flip) publishing its target or
 * `catalog.publish_slot_map_by_hand` (docs/sharding-spec.md section 9, "A moved slot keeps its owner").
 * Since sharding migration 013 also the owner of a slot whose slot move is unfinished and has not
 * flipped, but by that move's flip to its target, or by hand in a transaction naming the move in
 * `ca_dms.override_moves` (same section, "While a slot's move is unfinished").
 */
export const SLOT_OWNER_KEPT = 'CAF08';

/** Whether `error` is a PostgreSQL error with one of `codes`. */
export function hasSqlState(error: unknown, ...codes: readonly string[]): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && codes.includes(code);
}
