/**
 * Where a read-your-writes token points: the one SQL expression the writer
 * (`WRITE_POSITION_SQL`, write-transaction.ts) and `captureWriteToken` (replica-reader.ts) read
 * after a commit. A module of its own so that neither pulls the other into a bundle.
 *
 * @example
 * ```ts
 * const { rows } = await client.query(`select ${TOKEN_POSITION_SQL}::text as lsn`); // after COMMIT
 * ```
 */

/**
 * The position a read-your-writes token carries, read after a commit: the primary's WAL flush
 * position, or its insert position when the session commits with `synchronous_commit = off`.
 * Either is at or past the end of the commit's record: with `synchronous_commit` at any other
 * value (on, local, remote_write, remote_apply) the commit record is flushed before the COMMIT is
 * answered, so the flush position read after it is past its end; with off it is only inserted.
 * The flush position, not the insert position, where it is enough: the insert position includes
 * other sessions' WAL not yet flushed, which a crash of the primary loses, and the primary
 * restarted on the same timeline was then behind the token of a write it holds, a miss with it
 * judged "lost" (410, `pastPrimaryEnd` in replica-reader.ts;
 * test/integration/sharding/timeline-token-crash-restart.test.ts). The flush position survives a
 * crash: a flush ends at a record's end or at a page boundary inside a record still being
 * inserted, and crash recovery that finds such a record cut short goes on writing at the page
 * where its missing part was (PostgreSQL's XLOG_OVERWRITE_CONTRECORD, 15+ and the minor releases
 * of November 2021 on), so the restarted primary's WAL end is never behind it. A replica, which is
 * sent flushed WAL only, can reach it without waiting for WAL a later flush brings. With off the
 * commit may be lost in a crash, and a token past the restarted primary's end then says so
 * rightly. The setting read here is the session's as it stands after the commit, which a
 * transaction that lowered it for itself alone (`SET LOCAL synchronous_commit = off`) no longer
 * shows: the writer and `writeWithToken` read the transaction's own in the COMMIT's round trip
 * ({@link COMMIT_SETTING_SQL}) and take the insert position for such a commit
 * ({@link tokenPositionSql}); `captureWriteToken` after a caller's own COMMIT cannot, and is told
 * it (docs/sharding-spec.md, "Read-your-writes tokens").
 */
export const TOKEN_POSITION_SQL = "case when current_setting('synchronous_commit') = 'off' then pg_current_wal_insert_lsn() else pg_current_wal_flush_lsn() end";

/**
 * The transaction's own `synchronous_commit`, read in the COMMIT's round trip (sent before the
 * COMMIT in one simple query: `inClientTransaction`'s `atCommit`), where a `SET LOCAL` of the
 * transaction still holds. With `off` the COMMIT is answered before its record is flushed, and a
 * flush position read after it may fall short of it: a replica replayed to such a token did not
 * hold the write (test/integration/sharding/read-token-flush-position.test.ts, h133).
 */
export const COMMIT_SETTING_SQL = "select current_setting('synchronous_commit') as synchronous_commit";

/** The setting {@link COMMIT_SETTING_SQL} answered, if it did. */
export function commitSettingOf(answer: { readonly rows?: readonly unknown[] } | undefined): string | undefined {
  const value = (answer?.rows?.[0] as { synchronous_commit?: unknown } | undefined)?.synchronous_commit;
  return typeof value === 'string' ? value : undefined;
}

/**
 * The token's position for a commit whose transaction ran with `synchronous_commit` =
 * `transactionSetting` ({@link COMMIT_SETTING_SQL}; undefined when not read): the insert position
 * for `off` (the commit record is inserted, perhaps not flushed), the flush position for any other
 * value (the commit record was flushed before the COMMIT was answered), and when not read,
 * {@link TOKEN_POSITION_SQL} (by the session's setting after the commit). The transaction's own
 * setting decides both ways: a session whose setting is off (a session-level SET, a role's or a
 * database's) and whose transaction raised it for itself (`SET LOCAL synchronous_commit = on`, a
 * write that must be durable) committed with its record flushed, but the session's setting read
 * after the commit says off, and its token was the insert position: past a primary restarted from
 * a crash that lost other sessions' WAL inserted after the commit, a miss with it answered 410
 * "write lost" from the server that holds the write
 * (test/integration/sharding/timeline-token-crash-restart.test.ts, h142).
 */
export function tokenPositionSql(transactionSetting: string | undefined): string {
  if (transactionSetting === undefined) return TOKEN_POSITION_SQL;
  return synchronousCommitOff(transactionSetting) ? 'pg_current_wal_insert_lsn()' : 'pg_current_wal_flush_lsn()';
}

/**
 * The spellings of `off` PostgreSQL accepts for `synchronous_commit`: besides `off`, the hidden
 * boolean entries of the enum (`false`, `no`, `0`: guc_tables.c's synchronous_commit_options),
 * matched without regard to case, as PostgreSQL matches an enum's names (`SET LOCAL
 * synchronous_commit = 'OFF'` is off). No prefixes, no surrounding blanks: an enum takes none
 * (`'of'`, `'f'`, `'n'`, `' off'` are refused by the server, so they never describe a commit;
 * each of these checked on the embedded PostgreSQL, h149). SHOW and
 * current_setting() answer the canonical `off` for all of them, so {@link COMMIT_SETTING_SQL} reads
 * `off`; a caller that passes its own spelling (`captureWriteToken`'s `transactionSetting`, the
 * value it set) is read alike: taken for on, its token was the flush position, which a commit not
 * flushed yet may lie past (a replica replayed to it lacking the write).
 */
const SYNCHRONOUS_COMMIT_OFF = new Set(['off', 'false', 'no', '0']);

/** Whether `setting` is a spelling of `synchronous_commit = off` ({@link SYNCHRONOUS_COMMIT_OFF}). */
export function synchronousCommitOff(setting: string): boolean {
  return SYNCHRONOUS_COMMIT_OFF.has(setting.toLowerCase());
}
