/**
 * PostgreSQL WAL positions (LSNs). A read-your-writes token is the primary's WAL flush (or, for
 * a commit with `synchronous_commit = off`, insert) position after a commit, written the way
 * PostgreSQL prints a `pg_lsn` (`16/B374D848`); a replica may serve a read carrying that token
 * once its replay position is at or past it.
 *
 * @example
 * ```ts
 * parseLsn('0/3000148');                        // 50331976n
 * formatLsn(50331976n);                         // '0/3000148'
 * lsnBytesBehind(parseLsn('0/3000148'), parseLsn('0/3000000')); // 328n
 * ```
 */

/** A text that is not a `pg_lsn`. */
export class LsnError extends Error {
  override readonly name = 'LsnError';
}

const LSN_PATTERN = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parses `X/Y` (two hexadecimal 32-bit halves) into a 64-bit byte position. */
export function parseLsn(text: string): bigint {
  const m = LSN_PATTERN.exec(text);
  if (!m || m[1] === undefined || m[2] === undefined) {
    throw new LsnError(`not a WAL position (expected two hexadecimal numbers like 16/B374D848): ${JSON.stringify(text.slice(0, 40))}`);
  }
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** True when `text` is a well-formed `pg_lsn`. */
export function isLsn(text: string): boolean {
  return LSN_PATTERN.test(text);
}

/** Formats a byte position the way PostgreSQL prints a `pg_lsn` (upper-case hex). */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** How many WAL bytes `behind` trails `ahead`; never negative. */
export function lsnBytesBehind(ahead: bigint, behind: bigint): bigint {
  return ahead > behind ? ahead - behind : 0n;
}

/** WAL page size (XLOG_BLCKSZ), fixed when PostgreSQL is compiled; 8 KiB everywhere incl. RDS. */
export const WAL_PAGE_BYTES = 8192n;
const SHORT_PAGE_HEADER = 24n;
const LONG_PAGE_HEADER = 40n;

/**
 * The position a replica's replay position can be compared with. `pg_current_wal_insert_lsn()`
 * points past the page header when the last record ended exactly at a page boundary (always so
 * after a WAL segment switch), while a replica reports the end of the last record, the boundary
 * itself; unnormalised, such a token could never be reached until the next write. No record can
 * end strictly between the boundary and the header's end, so moving the token back to the
 * boundary accepts exactly the same replicas.
 */
export function normalizeWalPosition(lsn: bigint): bigint {
  const offset = lsn % WAL_PAGE_BYTES;
  return offset === SHORT_PAGE_HEADER || offset === LONG_PAGE_HEADER ? lsn - offset : lsn;
}
