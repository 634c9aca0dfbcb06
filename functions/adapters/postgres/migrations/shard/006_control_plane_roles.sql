-- The control-plane functions' privileges on a shard, each the least its code path needs; the
-- master user stays with the migrations function alone. Their login users (and the `_clone`
-- users of the alternating-users rotation) are created by the migrations function from their
-- own secrets as members of these roles (functions/adapters/postgres/app-role.ts).
--
-- ca_dms_monitor: the scaling API's shard health, statistics and rebalance check
-- (shard-inspector.ts). It reads pg_stat_database, pg_stat_activity, pg_stat_wal_receiver,
-- pg_stat_statements, the WAL and replay positions and pg_database_size (pg_monitor: without it
-- other sessions' rows and the statements' text are hidden), the sharded tables' sizes from
-- pg_class, and counts the rows of users and documents per slot and key (SELECT). It writes
-- nothing.
--
-- ca_dms_mover: the moves worker (move-port.ts). It reads and writes the unit's rows on both
-- shards (SELECT for COPY TO and the checksums, INSERT for COPY FROM and the upserts, UPDATE for
-- the upserts, DELETE for the resumed page and the clean-up after verification), opens, fences
-- and releases fence rows (write_fences), starts and stops the change capture (move_captures)
-- and applies then deletes captured changes (move_changes; its own writes are captured too
-- while a capture runs, hence the sequence). Its drain waits for writers older than the
-- capture by reading other sessions' xact_start and backend_xid in pg_stat_activity, which are
-- NULL to a role without pg_read_all_stats: without it the drain would see no writer and the
-- copy could miss one's rows. No DDL, no TRUNCATE, nothing outside these tables.
--
-- Roles are per cluster and several databases of one cluster may run this at once (the catalog
-- lives beside shard 1): creating them tolerates another having done it.
do $$
begin
  begin
    create role ca_dms_monitor nologin;
  exception when duplicate_object or unique_violation then
    null;
  end;
  begin
    create role ca_dms_mover nologin;
  exception when duplicate_object or unique_violation then
    null;
  end;
  execute format('grant usage on schema %I to ca_dms_monitor, ca_dms_mover', current_schema());
end
$$;

grant pg_monitor to ca_dms_monitor;
grant select on users, documents to ca_dms_monitor;

grant pg_read_all_stats to ca_dms_mover;
grant select, insert, update, delete on users, documents, write_fences, move_captures, move_changes to ca_dms_mover;
grant usage on sequence move_changes_seq_seq to ca_dms_mover;

-- The mover's bulk transactions skip row triggers where its login may set
-- session_replication_role (move-port.ts bulkBegin); a superuser can grant that. RDS's master
-- user is no superuser and may be refused: the mover then runs the same statements with the
-- triggers firing, slower but the same result.
do $$
begin
  execute 'grant set on parameter session_replication_role to ca_dms_mover';
exception when insufficient_privilege then
  raise notice 'session_replication_role not granted to ca_dms_mover: the mover''s bulk writes fire row triggers';
end
$$;
