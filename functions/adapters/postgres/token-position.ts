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
 * rightly. The setting is the session's as it stands after the commit: a body that lowers it for
 * its transaction alone (`SET LOCAL synchronous_commit = off`) must not (docs/sharding-spec.md,
 * "Read-your-writes tokens").
 */
export const TOKEN_POSITION_SQL = "case when current_setting('synchronous_commit') = 'off' then pg_current_wal_insert_lsn() else pg_current_wal_flush_lsn() end";
